#!/usr/bin/env python3
"""Prefix affinity: time to first token when tenants' system prompts go to
the edge worker that holds them in its prefix cache.

Two real edge workers, each with a small prefix cache
(`--prefix-cache-sequences 2`), serve four long system prompts (about 240
tokens each, one per "tenant") through the gateway, two clients at a time,
a different short question each time. With predicted placement (the
default) a prompt goes to the worker that served it last, unless that
worker's queue costs more than the cache saves; with naive placement
(`GATEWAY_PREDICTED_PLACEMENT=false`, routing on the load reports alone)
the requests go wherever the score says, and four prompts thrash two
two-sequence caches. Each mode gets fresh workers (empty caches) and the
same request sequence; the modes alternate for --rounds rounds. Reports
median and p90 TTFT of each, and their ratio.

Usage: python3 scripts/bench-affinity.py [--requests 24] [--rounds 2]
"""

import argparse
import importlib.util
import json
import os
import pathlib
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = pathlib.Path(__file__).resolve().parent
_spec = importlib.util.spec_from_file_location("overload", HERE / "bench-overload.py")
ov = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ov)

PROMPTS = [f"You are the assistant of shop number {t}. " + " ".join(
    f"Rule {i} of shop {t}: be polite, answer briefly and name the shop when it fits."
    for i in range(12)) for t in range(4)]


def ttft(base, key, system, question):
    body = {"model": ov.MODEL, "max_tokens": 4, "temperature": 0, "stream": True,
            "messages": [{"role": "system", "content": system},
                         {"role": "user", "content": question}]}
    import http.client
    import urllib.parse
    u = urllib.parse.urlsplit(base)
    c = http.client.HTTPConnection(u.hostname, u.port, timeout=300)
    t0 = time.perf_counter()
    c.request("POST", "/v1/chat/completions", body=json.dumps(body),
              headers={"content-type": "application/json", "authorization": f"Bearer {key}"})
    r = c.getresponse()
    backend = r.getheader("x-gateway-backend")
    first = None
    while True:
        line = r.readline()
        if not line:
            break
        line = line.decode().strip()
        if first is None and line.startswith("data:") and '"content"' in line:
            first = (time.perf_counter() - t0) * 1000
    c.close()
    return first, backend


def run_mode(mode, requests, seed, model, work):
    workers = [ov.start([str(ov.BIN / "edge-worker"), "--model-path", model, "--listen",
                         "127.0.0.1:0", "--threads", "1", "--prefix-cache-sequences", "2"],
                        {"EDGE_WORKER_TOKEN": ov.TOKEN}, "listening") for _ in range(2)]
    try:
        for _, url in workers:
            ov.wait_ready(url + "/readyz")
        db = pathlib.Path(work) / f"{mode}-{seed}.db"
        env = {"GATEWAY_SQLITE_PATH": str(db), "GATEWAY_WORKER_TOKEN": ov.TOKEN,
               "GATEWAY_POLL_INTERVAL_MS": "200"}
        if mode == "naive":
            env["GATEWAY_PREDICTED_PLACEMENT"] = "false"
        gw = str(ov.BIN / "gateway")

        def admin(*a):
            r = subprocess.run([gw, *a], env={**os.environ, **env}, capture_output=True,
                               text=True, check=True)
            return r.stdout

        admin("migrate")
        admin("tenant", "create", "bench")
        for i, (_, url) in enumerate(workers):
            admin("backend", "add", "--name", f"edge-{i}", "--kind", "edge", "--url", url,
                  "--model", ov.MODEL)
        key = json.loads(admin("key", "create", "--tenant", "bench"))["api_key"]
        proc, base = ov.start([gw, "serve", "--listen", "127.0.0.1:0"], env, "listening")
        try:
            ov.wait_ready(base + "/healthz")
            time.sleep(0.5)  # the first load reports are in
            rng = random.Random(seed)
            jobs = [(rng.choice(PROMPTS), f"Question {i}: what do you sell?")
                    for i in range(requests)]
            out, lock = [], threading.Lock()

            def client(part):
                for system, q in part:
                    t, b = ttft(base, key, system, q)
                    with lock:
                        out.append((t, b))

            threads = [threading.Thread(target=client, args=(jobs[k::2],)) for k in range(2)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            return out
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
    finally:
        for p, _ in workers:
            p.terminate()
            p.wait(timeout=60)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=24)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    model = subprocess.run([str(HERE / "fetch-model.sh")], capture_output=True, text=True,
                           check=True).stdout.strip()
    results = {"predicted": [], "naive": []}
    with tempfile.TemporaryDirectory() as work:
        for r in range(args.rounds):
            for mode in ("naive", "predicted"):
                got = run_mode(mode, args.requests, seed=r, model=model, work=work)
                results[mode] += [t for t, _ in got if t is not None]
                spread = {b: sum(1 for _, x in got if x == b) for _, b in got}
                print(f"round {r} {mode:9s}: median TTFT {statistics.median([t for t, _ in got if t]):.0f} ms, "
                      f"spread {spread}", flush=True)
    med = {m: statistics.median(v) for m, v in results.items()}
    p90 = {m: sorted(v)[int(0.9 * (len(v) - 1))] for m, v in results.items()}
    print(f"CPU: {ov.cpu_model()}")
    print("| metric | predicted (affinity) | naive | ratio |")
    print("|---|---:|---:|---:|")
    print(f"| TTFT median ms | {med['predicted']:.0f} | {med['naive']:.0f} | "
          f"{med['predicted'] / med['naive']:.2f} |")
    print(f"| TTFT p90 ms | {p90['predicted']:.0f} | {p90['naive']:.0f} | "
          f"{p90['predicted'] / p90['naive']:.2f} |")


if __name__ == "__main__":
    main()
