#!/usr/bin/env python3
"""Edge worker vs llama.cpp on the same GGUF, thread count and client.

Both run as OpenAI-compatible HTTP servers on loopback (our edge worker, and
llama.cpp through `llama_cpp.server`), driven by the same streaming client,
in interleaved rounds so that machine noise hits both alike. Reports decode
tokens/s and TTFT at concurrency 1, aggregate tokens/s at concurrency 8, CPU
time per output token at concurrency 1 (what energy per token follows when
the watts per busy core are the same), and resident memory (after loading,
after the c=1 and c=8 requests, at the end, and at its peak), with ratios
(edge worker / llama.cpp).

Usage: .venv/bin/python scripts/bench-edge.py [--threads 2] [--rounds 3]
           [--variant NAME="EDGE-WORKER ARGS"]... [--baseline PATH]
           [--edge-binary PATH] [--llama-python PATH] [--simd LABEL]

Each --variant adds another edge worker with extra arguments to the same
interleaved rounds, e.g. --variant q8_0="--requantize q8_0", to compare
settings of the worker against each other and against llama.cpp in one run.
--baseline PATH adds an edge worker from another build (an older binary),
to compare two builds in one run. --edge-binary and --llama-python replace
the edge worker under test and the Python (with llama-cpp-python) that runs
llama.cpp: `scripts/bench-edge-avx2.sh` passes builds of both restricted to
AVX2, and --simd names the instruction set they were built for.
"""

import argparse
import concurrent.futures as cf
import itertools
import json
import os
import pathlib
import shlex
import socket
import statistics
import subprocess
import sys
import time

import httpx

ROOT = pathlib.Path(__file__).resolve().parents[1]
MODEL = ROOT / ".cache/models/SmolLM2-135M-Instruct.Q4_1.gguf"
PROMPT = "Write a long, detailed story about a dragon who learns to bake bread."
_SERIAL = itertools.count(1)


def fresh_prompt():
    """The prompt under a new serial number at its start. Both servers keep
    the KV of earlier prompts (llama_cpp.server the previous prompt's, the
    edge worker its prefix cache), so a repeated prompt would measure a cache
    hit, not a prefill."""
    return f"Story number {next(_SERIAL)}. {PROMPT}"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url, timeout=180):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    sys.exit(f"{url} not ready")


def start_edge(threads, extra=(), binary=ROOT / "target/release/edge-worker"):
    port = free_port()
    proc = subprocess.Popen(
        [str(binary), "--model-path", str(MODEL),
         "--listen", f"127.0.0.1:{port}", "--threads", str(threads),
         "--max-running", "8", "--max-waiting", "8", *extra],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    wait_ready(base + "/readyz")
    return proc, base, "smollm2-135m-instruct"


def start_llama(threads, python=sys.executable):
    port = free_port()
    proc = subprocess.Popen(
        [python, "-m", "llama_cpp.server", "--model", str(MODEL),
         "--host", "127.0.0.1", "--port", str(port), "--n_threads", str(threads),
         "--n_threads_batch", str(threads), "--n_ctx", "2048", "--model_alias", "smol",
         # By default a new request aborts the running one; queue instead.
         "--interrupt_requests", "False"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    wait_ready(base + "/v1/models")
    return proc, base, "smol"


def one_request(base, model, max_tokens, messages=None):
    """Streams one greedy completion; returns (ttft_s, decode_tok_s, tokens, wall_s)."""
    messages = messages or [{"role": "user", "content": fresh_prompt()}]
    body = {"model": model, "messages": messages,
            "temperature": 0, "max_tokens": max_tokens, "stream": True}
    start = time.perf_counter()
    stamps = []
    with httpx.stream("POST", base + "/v1/chat/completions", json=body, timeout=300) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith("data:") or line.endswith("[DONE]"):
                continue
            chunk = json.loads(line[5:])
            if chunk.get("choices") and chunk["choices"][0]["delta"].get("content"):
                stamps.append(time.perf_counter())
    end = time.perf_counter()
    ttft = stamps[0] - start
    decode = (len(stamps) - 1) / (stamps[-1] - stamps[0]) if len(stamps) > 1 else 0.0
    return ttft, decode, len(stamps), end - start


def concurrent_run(base, model, n, max_tokens):
    start = time.perf_counter()
    with cf.ThreadPoolExecutor(n) as pool:
        results = list(pool.map(lambda _: one_request(base, model, max_tokens), range(n)))
    wall = time.perf_counter() - start
    return sum(r[2] for r in results) / wall


IN_PROCESS = """
import statistics, sys, time
from llama_cpp import Llama
model, threads, max_tokens, runs, serial, prompt = sys.argv[1:]
llm = Llama(model_path=model, n_threads=int(threads), n_threads_batch=int(threads),
            n_ctx=2048, verbose=False)
rates = []
for i in range(int(runs)):
    stamps = []
    for chunk in llm.create_chat_completion(
            messages=[{"role": "user", "content": f"Story number {int(serial) + i}. {prompt}"}],
            temperature=0, max_tokens=int(max_tokens), stream=True):
        if chunk["choices"][0]["delta"].get("content"):
            stamps.append(time.perf_counter())
    rates.append((len(stamps) - 1) / (stamps[-1] - stamps[0]))
print(statistics.median(rates))
"""


def in_process_llama(threads, max_tokens, python=sys.executable, runs=3):
    """llama.cpp through its Python bindings, no HTTP: the floor of what
    llama.cpp costs. Returns the median decode tokens/s. Runs in a child
    process of the Python that holds the llama.cpp build under test, with
    prompts numbered on from the served rounds' (see `fresh_prompt`)."""
    serial = next(_SERIAL)
    for _ in range(runs - 1):
        next(_SERIAL)
    out = subprocess.run([python, "-c", IN_PROCESS, str(MODEL), str(threads), str(max_tokens),
                          str(runs), str(serial), PROMPT],
                         capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def cpu_seconds(pid):
    """User + system CPU time of a process, all threads."""
    stat = pathlib.Path(f"/proc/{pid}/stat").read_text()
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mib(pid, field="VmRSS"):
    """Resident memory now (VmRSS) or at its peak so far (VmHWM)."""
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def peak_rss_mib(pid):
    return rss_mib(pid, "VmHWM")


def cpu_model():
    """The CPU's name, family and SIMD level: the development machine's CPU
    varies between runs, and absolute figures only compare on the same CPU
    (the family tells AMD's generations apart where the name does not:
    25 is Zen 3 and Zen 4, 26 is Zen 5)."""
    info = pathlib.Path("/proc/cpuinfo").read_text()
    name = next((l.split(":", 1)[1].strip() for l in info.splitlines()
                 if l.startswith("model name")), "unknown CPU")
    family = next((l.split(":", 1)[1].strip() for l in info.splitlines()
                   if l.startswith("cpu family")), "?")
    name = f"{name}, family {family}"
    flags = set(next((l.split(":", 1)[1].split() for l in info.splitlines()
                      if l.startswith("flags")), []))
    simd = "AVX-512 VNNI" if "avx512_vnni" in flags else "AVX-512" if "avx512f" in flags \
        else "AVX2" if "avx2" in flags else "no AVX2"
    return f"{name} ({simd})"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--variant", action="append", default=[], metavar='NAME="ARGS"',
                    help="another edge worker with these extra arguments")
    ap.add_argument("--edge-binary", metavar="PATH", default=ROOT / "target/release/edge-worker",
                    help="the edge worker under test (default: the release build)")
    ap.add_argument("--llama-python", metavar="PATH", default=sys.executable,
                    help="a Python whose llama-cpp-python is the llama.cpp build to compare")
    ap.add_argument("--simd", metavar="LABEL",
                    help="the instruction set both builds were restricted to, for the report")
    ap.add_argument("--baseline", metavar="PATH",
                    help="another edge worker from this binary (an older build)")
    args = ap.parse_args()

    servers = {"edge-worker": start_edge(args.threads, binary=args.edge_binary)}
    for variant in args.variant:
        name, _, extra = variant.partition("=")
        servers[name] = start_edge(args.threads, shlex.split(extra), binary=args.edge_binary)
    if args.baseline:
        servers["baseline"] = start_edge(args.threads, binary=args.baseline)
    servers["llama.cpp"] = start_llama(args.threads, args.llama_python)
    try:
        samples = {k: {"ttft": [], "decode": [], "agg8": [], "cpu_ms": [], "rss_c1": [],
                       "rss_c8": []} for k in servers}
        loaded = {}
        for name, (proc, base, model) in servers.items():
            one_request(base, model, 8)  # warm-up, not measured
            loaded[name] = rss_mib(proc.pid)
        for _ in range(args.rounds):
            for name, (proc, base, model) in servers.items():
                cpu_before, tokens = cpu_seconds(proc.pid), 0
                for _ in range(3):
                    ttft, decode, n, _ = one_request(base, model, args.max_tokens)
                    samples[name]["ttft"].append(ttft * 1000)
                    samples[name]["decode"].append(decode)
                    tokens += n
                cpu = cpu_seconds(proc.pid) - cpu_before
                samples[name]["cpu_ms"].append(cpu * 1000 / max(tokens, 1))
                samples[name]["rss_c1"].append(rss_mib(proc.pid))
                samples[name]["agg8"].append(concurrent_run(base, model, 8, args.max_tokens))
                samples[name]["rss_c8"].append(rss_mib(proc.pid))
        report = {}
        for name, (proc, _, _) in servers.items():
            s = samples[name]
            report[name] = {
                "decode_tok_s_c1": statistics.median(s["decode"]),
                "ttft_ms_c1": statistics.median(s["ttft"]),
                "aggregate_tok_s_c8": statistics.median(s["agg8"]),
                "cpu_ms_per_token_c1": statistics.median(s["cpu_ms"]),
                "rss_loaded_mib": loaded[name],
                # The first round's: later rounds' c=1 figures follow a c=8 run.
                "rss_after_c1_mib": s["rss_c1"][0],
                "rss_after_c8_mib": s["rss_c8"][0],
                "rss_after_run_mib": rss_mib(proc.pid),
                "peak_rss_mib": peak_rss_mib(proc.pid),
            }
    finally:
        for proc, _, _ in servers.values():
            proc.terminate()
            proc.wait(timeout=60)

    # After the servers stop, so it runs alone.
    report["llama.cpp"]["decode_tok_s_c1_in_process"] = in_process_llama(
        args.threads, args.max_tokens, args.llama_python)
    cpu = cpu_model() + (f"; both built for {args.simd} only" if args.simd else "")
    if args.json:
        print(json.dumps({"cpu": cpu, **report}, indent=2))
        return
    ours = [name for name in report if name != "llama.cpp"]
    l = report["llama.cpp"]
    print(f"CPU {cpu}")
    print(f"model {MODEL.name}, {args.threads} threads, greedy, max_tokens {args.max_tokens}, "
          f"{args.rounds} interleaved rounds (medians); ratio = ours / llama.cpp")
    head = "".join(f"{n:>14}" for n in ours) + f"{'llama.cpp':>14}"
    head += "".join(f"{'ratio ' + n if len(ours) > 1 else 'ratio':>20}" for n in ours)
    print(f"{'metric':<24}{head}")
    for key, label in [("decode_tok_s_c1", "decode tok/s (c=1)"), ("ttft_ms_c1", "TTFT ms (c=1)"),
                       ("aggregate_tok_s_c8", "aggregate tok/s (c=8)"),
                       ("cpu_ms_per_token_c1", "CPU ms/token (c=1)"),
                       ("rss_loaded_mib", "RSS MiB, loaded"), ("rss_after_c1_mib", "RSS MiB, after c=1"),
                       ("rss_after_c8_mib", "RSS MiB, after c=8"), ("rss_after_run_mib", "RSS MiB, at the end"),
                       ("peak_rss_mib", "peak RSS MiB")]:
        row = "".join(f"{report[n][key]:>14.1f}" for n in ours) + f"{l[key]:>14.1f}"
        row += "".join(f"{report[n][key] / l[key]:>20.2f}" for n in ours)
        print(f"{label:<24}{row}")
    raw = l["decode_tok_s_c1_in_process"]
    print(f"decode tok/s, llama.cpp in-process (no HTTP): {raw:.1f}; ratio "
          + ", ".join(f"{n} {report[n]['decode_tok_s_c1'] / raw:.2f}" for n in ours))

if __name__ == "__main__":
    main()
