#!/usr/bin/env python3
"""The overload scenario: edge and cloud together against either alone.

One real edge worker (the bundled model) and the mock cloud standing in for
a paid API (realistic TTFT, decode speed and price), behind a fresh gateway
per policy, all in one run so that the machine's noise hits every policy
alike:

- all-edge:   the edge worker only (overflow is refused);
- all-cloud:  the cloud only (confidential requests have no route);
- naive:      edge and cloud, routed on the load reports as they are
              (GATEWAY_PREDICTED_PLACEMENT=false, the behaviour before
              prediction);
- predicted:  edge and cloud, routed on the predicted queue wait, with the
              power-of-two choice and prefix affinity (the default);
- hedged:     predicted, plus hedging: a request the edge has not started
              answering by its predicted first token plus HEDGE_MARGIN_MS
              also starts in the cloud, and the first answer wins;
- energy:     predicted, with the policy's energy weight raised from 0.2
              to ENERGY_WEIGHT: requests stay on the backend with fewer
              joules per token (here the edge) as long as it keeps the SLO.
              Not in the default set: --policies predicted,energy.
- <policy>-base: that policy served by the gateway binary BASELINE_GATEWAY
              names (an earlier build), against the same edge worker, for
              a before/after comparison in one run.

First the edge worker's capacity is measured (closed loop, as many clients
as it has running slots, requests of the benchmark's shape, straight to the
worker). Then each policy gets open-loop Poisson traffic at 0.5x, 1x and 2x
that capacity, with a privacy mix (50% public, 30% internal, 20%
confidential, tagged with x-privacy-class). Reported per policy and load:
p50/p95/p99 TTFT and end-to-end latency, errors, edge share, joules and USD
per request (from the ledger), confidential requests served in the cloud
(must be 0), and how well the edge's energy was predicted: the joules per
token the gateway chose times the request's real token counts, against the
joules the worker measured, for the requests it served (a gateway that
records no rates in its decisions shows none); the joules as predicted at
routing (for the answer and prompt lengths the gateway expected); and the edge's queue
wait as predicted against as measured. Writes results.json, a Markdown table and
SVG plots to --out.

Usage: python3 scripts/bench-overload.py [--duration 30] [--out docs/overload]
Needs the release binaries (cargo build --release --workspace --all-targets)
and the model (scripts/fetch-model.sh). Standard library only.
"""

import argparse
import json
import os
import pathlib
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import http.client
import urllib.parse

ROOT = pathlib.Path(__file__).resolve().parent.parent
BIN = pathlib.Path(os.environ.get("BENCH_BIN_DIR", ROOT / "target/release"))
TOKEN = "bench-worker-token-" + os.urandom(8).hex()
MODEL = "smollm2-135m-instruct"

# The cloud: a small hosted model's published figures (TTFT about half a
# second, 60 tokens/s streamed, USD 0.15 / 0.60 per million tokens in / out)
# and an assumed energy per token for a datacenter GPU serving it.
CLOUD = {"ttft_ms": 500, "tps": 60, "price_in": 0.00015, "price_out": 0.0006,
         "j_prompt": 0.03, "j_output": 0.3, "rtt_ms": 80}
MIX = [("public", 0.5), ("internal", 0.3), ("confidential", 0.2)]
MAX_TOKENS = 32
POLICIES = ["all-edge", "all-cloud", "naive", "predicted", "hedged"]
HEDGE_MARGIN_MS = 300
# Against the default energy reference (50 J), a request of the benchmark's
# shape is a few joules cheaper on the edge than in the cloud; weighted 5,
# each joule saved scores as much as 0.1 of the SLO in latency.
ENERGY_WEIGHT = 5.0


def question(rng):
    topics = ["bread", "tea", "rain", "maps", "clocks", "bees", "ships", "salt"]
    return f"In one sentence, why do people like {rng.choice(topics)} ({rng.randrange(10**6)})?"


def start(args, env=None, prefix=None):
    """Starts a binary and returns (process, the URL it announces)."""
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            env={**os.environ, **(env or {})}, text=True)
    line = proc.stdout.readline().strip()
    if prefix not in line:
        proc.kill()
        sys.exit(f"{args[0]} did not start: {line!r}")
    return proc, line.split()[-1]


def wait_ready(url, timeout=180):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if request("GET", url)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    sys.exit(f"{url} not ready")


def request(method, url, body=None, headers=None):
    u = urllib.parse.urlsplit(url)
    c = http.client.HTTPConnection(u.hostname, u.port, timeout=300)
    c.request(method, u.path, body=json.dumps(body) if body is not None else None,
              headers={"content-type": "application/json", **(headers or {})})
    r = c.getresponse()
    data = r.read()
    c.close()
    return r.status, data


def stream_chat(base, key, klass, rng_q):
    """One streamed request; returns a result dict (times in ms)."""
    u = urllib.parse.urlsplit(base)
    body = {"model": MODEL, "messages": [{"role": "user", "content": rng_q}],
            "max_tokens": MAX_TOKENS, "temperature": 0, "stream": True}
    t0 = time.perf_counter()
    out = {"class": klass, "status": None, "backend": None, "ttft": None, "e2e": None,
           "ledger": None, "error": None}
    try:
        c = http.client.HTTPConnection(u.hostname, u.port, timeout=300)
        c.request("POST", "/v1/chat/completions", body=json.dumps(body),
                  headers={"content-type": "application/json",
                           "authorization": f"Bearer {key}", "x-privacy-class": klass})
        r = c.getresponse()
        out["status"] = r.status
        out["backend"] = r.getheader("x-gateway-backend")
        out["ledger"] = r.getheader("x-gateway-ledger-id")
        if r.status != 200:
            r.read()
            out["error"] = f"http {r.status}"
        else:
            while True:
                line = r.readline()
                if not line:
                    break
                line = line.decode().strip()
                if not line.startswith("data:") or line.endswith("[DONE]"):
                    continue
                chunk = json.loads(line[5:])
                if "error" in chunk:
                    out["error"] = "stream error"
                if out["ttft"] is None and chunk.get("choices") and \
                        chunk["choices"][0].get("delta", {}).get("content"):
                    out["ttft"] = (time.perf_counter() - t0) * 1000
        c.close()
    except OSError as e:
        out["error"] = type(e).__name__
    out["e2e"] = (time.perf_counter() - t0) * 1000
    if out["ttft"] is None and out["error"] is None:
        out["ttft"] = out["e2e"]
    return out


def calibrate(edge, slots, seconds):
    """Closed loop, `slots` clients straight to the worker: requests/s and
    mean end-to-end latency."""
    rng = random.Random(7)
    done, lat = [], []
    stop = time.time() + seconds
    lock = threading.Lock()

    def client():
        while time.time() < stop:
            t = time.perf_counter()
            status, _ = request("POST", edge + "/v1/chat/completions",
                                {"model": MODEL, "max_tokens": MAX_TOKENS, "temperature": 0,
                                 "messages": [{"role": "user", "content": question(rng)}]},
                                {"authorization": f"Bearer {TOKEN}"})
            with lock:
                if status == 200:
                    done.append(time.time())
                    lat.append((time.perf_counter() - t) * 1000)

    start_t = time.time()
    threads = [threading.Thread(target=client) for _ in range(slots)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return len(done) / (time.time() - start_t), sum(lat) / max(len(lat), 1)


def gateway_for(policy, load, edge, cloud, slo_ms, workdir):
    db = pathlib.Path(workdir) / f"{policy}-{load}.db"
    env = {"GATEWAY_SQLITE_PATH": str(db), "GATEWAY_WORKER_TOKEN": TOKEN,
           "GATEWAY_POLL_INTERVAL_MS": "200", "CLOUD_API_KEY": "mock-key"}
    # `<policy>-base`: the same policy served by the gateway binary named in
    # BASELINE_GATEWAY (an earlier build), against the same edge worker.
    gw = str(BIN / "gateway")
    if policy.endswith("-base"):
        gw = os.environ.get("BASELINE_GATEWAY") or sys.exit(f"{policy} needs BASELINE_GATEWAY")
        policy = policy.removesuffix("-base")
    if policy == "naive":
        env["GATEWAY_PREDICTED_PLACEMENT"] = "false"

    def admin(*a):
        r = subprocess.run([gw, *a], env={**os.environ, **env}, capture_output=True, text=True)
        if r.returncode != 0:
            sys.exit(f"gateway {a}: {r.stderr}")
        return r.stdout

    admin("migrate")
    admin("tenant", "create", "bench")
    if policy != "all-cloud":
        admin("backend", "add", "--name", "edge", "--kind", "edge", "--url", edge,
              "--model", MODEL, "--j-prompt", "0.01", "--j-output", "0.1")
    # The cloud is registered in every policy, all-edge included, so every
    # row has its all-cloud counterfactual; all-edge forbids its use.
    admin("backend", "add", "--name", "cloud", "--kind", "cloud", "--url", cloud,
          "--model", f"{MODEL}=cloud-model", "--api-key-env", "CLOUD_API_KEY",
          "--price-in", str(CLOUD["price_in"]), "--price-out", str(CLOUD["price_out"]),
          "--j-prompt", str(CLOUD["j_prompt"]), "--j-output", str(CLOUD["j_output"]),
          "--rtt-ms", str(CLOUD["rtt_ms"] + CLOUD["ttft_ms"]), "--prefill-tps", "5000",
          "--decode-tps", str(CLOUD["tps"]))
    admin("policy", "set", "--tenant", "bench", "--slo-ms", str(slo_ms),
          "--expected-output-tokens", str(MAX_TOKENS),
          "--allow-cloud", "false" if policy == "all-edge" else "true",
          *(["--hedge-margin-ms", str(HEDGE_MARGIN_MS)] if policy == "hedged" else []),
          *(["--w-energy", str(ENERGY_WEIGHT)] if policy == "energy" else []))
    key = json.loads(admin("key", "create", "--tenant", "bench"))["api_key"]
    proc, url = start([gw, "serve", "--listen", "127.0.0.1:0"], env, "listening")
    wait_ready(url + "/healthz")
    if policy != "all-cloud":
        time.sleep(0.5)  # two polls: the first load report is in
    return proc, url, key, db


def run_load(url, key, rate, seconds, seed):
    rng = random.Random(seed)
    results, threads = [], []
    lock = threading.Lock()
    t_start = time.perf_counter()
    t = 0.0
    while True:
        t += rng.expovariate(rate)
        if t > seconds:
            break
        klass = rng.choices([c for c, _ in MIX], [w for _, w in MIX])[0]
        q = question(rng)
        delay = t_start + t - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        sent = time.perf_counter() - t_start

        def one(klass=klass, q=q, sent=sent):
            r = stream_chat(url, key, klass, q)
            r["sent"] = sent
            with lock:
                results.append(r)

        th = threading.Thread(target=one, daemon=True)
        th.start()
        threads.append(th)
    for th in threads:
        th.join(timeout=300)
    return results


def pct(values, p):
    if not values:
        return float("nan")
    v = sorted(values)
    return v[min(len(v) - 1, int(round(p / 100 * (len(v) - 1))))]


def mean(values):
    return sum(values) / len(values) if values else 0.0


def summarise(results, db):
    rows = {}
    con = sqlite3.connect(db)
    waits = []
    for rid, backend, klass, joules, usd, status, decision, prompt, completion, wait_p, wait_a, \
            routed_j in con.execute(
            "SELECT id, backend, privacy_class, joules, usd, status, decision, prompt_tokens, "
            "completion_tokens, predicted_wait_ms, actual_wait_ms, predicted_energy_j "
            "FROM request_ledger"):
        if backend == "edge" and wait_p is not None and wait_a is not None:
            waits.append((wait_p, wait_a))
        # The energy the gateway would have predicted had it known the token
        # counts: the joules per token it chose (at the load it expected)
        # times the tokens the request really had. Separates the energy
        # rates' error from the output length's (it assumes max_tokens).
        p = (json.loads(decision or "{}").get("chosen") or {}).get("prediction") or {}
        predicted_j = None
        if "joules_per_output_token" in p and prompt is not None and completion is not None:
            predicted_j = (prompt * p["joules_per_prompt_token"]
                           + completion * p["joules_per_output_token"])
        rows[rid] = (backend, klass, joules, usd, status, predicted_j, routed_j)
    con.close()
    ok = [r for r in results if r["error"] is None and r["status"] == 200]
    refused_conf = [r for r in results if r["class"] == "confidential" and r["status"] == 503]
    errors = [r for r in results if r not in ok and r not in refused_conf]
    served = [rows[r["ledger"]] for r in ok if r["ledger"] in rows]
    edge = sum(1 for s in served if s[0] == "edge")
    conf_cloud = sum(1 for s in rows.values() if s[1] == "confidential" and s[0] == "cloud")
    j = [s[2] for s in served if s[2] is not None]
    usd = [s[3] for s in served if s[3] is not None]
    # How well the edge's energy was predicted (at the real token counts)
    # against the joules the worker measured, per request.
    edge_j = [(s[5], s[2]) for s in served if s[0] == "edge" and s[2] and s[5] is not None]
    # The same, as predicted at routing, before the answer's length was known.
    routed_j = [(s[6], s[2]) for s in served if s[0] == "edge" and s[2] and s[6] is not None]
    ttft = [r["ttft"] for r in ok]
    e2e = [r["e2e"] for r in ok]
    return {
        "requests": len(results), "ok": len(ok), "errors": len(errors),
        "confidential_refused": len(refused_conf),
        "edge_share": edge / len(served) if served else 0.0,
        "ttft_p50": pct(ttft, 50), "ttft_p95": pct(ttft, 95), "ttft_p99": pct(ttft, 99),
        "e2e_p50": pct(e2e, 50), "e2e_p95": pct(e2e, 95), "e2e_p99": pct(e2e, 99),
        "j_per_req": mean(j),
        "usd_per_req": mean(usd),
        "confidential_in_cloud": conf_cloud,
        "edge_j_predicted": mean([p for p, _ in edge_j]),
        "edge_j_measured": mean([m for _, m in edge_j]),
        "edge_j_abs_error": mean([abs(p - m) / m for p, m in edge_j]),
        "edge_j_routed": mean([p for p, _ in routed_j]),
        "edge_j_routed_abs_error": mean([abs(p - m) / m for p, m in routed_j]),
        # The edge's queue wait as predicted at routing and as the worker
        # measured it: the means, and the mean absolute difference.
        "edge_wait_predicted": mean([p for p, _ in waits]),
        "edge_wait_measured": mean([a for _, a in waits]),
        "edge_wait_abs_error": mean([abs(p - a) for p, a in waits]),
    }


# --- SVG plots --------------------------------------------------------------

COLORS = {"all-edge": "#1b9e77", "all-cloud": "#d95f02", "naive": "#7570b3",
          "predicted": "#e7298a", "hedged": "#66a61e"}


def svg_plot(path, title, xlabel, ylabel, series, points_only=False):
    """series: {name: [(x, y), ...]} → a small SVG line (or dot) chart."""
    w, h, ml, mr, mt, mb = 640, 400, 70, 150, 40, 50
    xs = [x for s in series.values() for x, _ in s] or [0, 1]
    ys = [y for s in series.values() for _, y in s if y == y] or [0, 1]
    x0, x1 = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1
    y0, y1 = 0, max(ys) * 1.05 if max(ys) > 0 else 1

    def px(x):
        return ml + (x - x0) / (x1 - x0) * (w - ml - mr)

    def py(y):
        return h - mb - (y - y0) / (y1 - y0) * (h - mt - mb)

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" '
           f'font-family="sans-serif" font-size="12">',
           f'<rect width="{w}" height="{h}" fill="white"/>',
           f'<text x="{w / 2}" y="20" text-anchor="middle" font-size="14">{title}</text>',
           f'<line x1="{ml}" y1="{h - mb}" x2="{w - mr}" y2="{h - mb}" stroke="black"/>',
           f'<line x1="{ml}" y1="{mt}" x2="{ml}" y2="{h - mb}" stroke="black"/>',
           f'<text x="{(ml + w - mr) / 2}" y="{h - 12}" text-anchor="middle">{xlabel}</text>',
           f'<text x="16" y="{(mt + h - mb) / 2}" text-anchor="middle" '
           f'transform="rotate(-90 16 {(mt + h - mb) / 2})">{ylabel}</text>']
    for i in range(6):
        yv = y0 + (y1 - y0) * i / 5
        xv = x0 + (x1 - x0) * i / 5
        out.append(f'<text x="{ml - 6}" y="{py(yv) + 4}" text-anchor="end">{yv:.3g}</text>')
        out.append(f'<line x1="{ml}" y1="{py(yv)}" x2="{w - mr}" y2="{py(yv)}" stroke="#eee"/>')
        out.append(f'<text x="{px(xv)}" y="{h - mb + 16}" text-anchor="middle">{xv:.3g}</text>')
    for k, (name, pts) in enumerate(series.items()):
        color = COLORS.get(name, "#333")
        pts = [(x, y) for x, y in pts if y == y]
        if points_only:
            out += [f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="2" fill="{color}" '
                    f'fill-opacity="0.6"/>' for x, y in pts]
        elif pts:
            d = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in pts)
            out.append(f'<polyline points="{d}" fill="none" stroke="{color}" stroke-width="2"/>')
            out += [f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="3" fill="{color}"/>'
                    for x, y in pts]
        ly = mt + 10 + 18 * k
        out.append(f'<rect x="{w - mr + 12}" y="{ly - 9}" width="12" height="12" fill="{color}"/>')
        out.append(f'<text x="{w - mr + 30}" y="{ly + 1}">{name}</text>')
    out.append("</svg>")
    pathlib.Path(path).write_text("\n".join(out))


def cpu_model():
    for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=float, default=30.0, help="seconds per policy and load")
    ap.add_argument("--loads", default="0.5,1,2", help="multiples of the edge's capacity")
    ap.add_argument("--policies", default=",".join(POLICIES))
    ap.add_argument("--threads", type=int, default=2, help="edge worker compute threads")
    ap.add_argument("--slots", type=int, default=2, help="edge worker --max-running")
    ap.add_argument("--slo-ms", type=float, default=0, help="policy SLO; default 3x the "
                    "edge's mean latency at capacity")
    ap.add_argument("--out", default=str(ROOT / "docs/overload"))
    ap.add_argument("--cloud-ttft-ms", type=int, default=CLOUD["ttft_ms"],
                    help="the mock cloud's time to first token")
    ap.add_argument("--cloud-tps", type=int, default=CLOUD["tps"],
                    help="the mock cloud's output tokens per second")
    args = ap.parse_args()
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    loads = [float(x) for x in args.loads.split(",")]
    CLOUD.update(ttft_ms=args.cloud_ttft_ms, tps=args.cloud_tps)
    policies = args.policies.split(",")

    model = subprocess.run([str(ROOT / "scripts/fetch-model.sh")], capture_output=True,
                           text=True, check=True).stdout.strip()
    procs = []
    try:
        cloud_proc, cloud = start(
            [str(BIN / "mock-cloud"), "--addr", "127.0.0.1:0", "--models", "cloud-model",
             "--api-key", "mock-key", "--ttft-ms", str(CLOUD["ttft_ms"]),
             "--tokens-per-second", str(CLOUD["tps"]), "--completion-tokens", str(MAX_TOKENS)],
            prefix="listening")
        procs.append(cloud_proc)
        cloud = cloud.removesuffix("/v1")
        edge_proc, edge = start(
            [str(BIN / "edge-worker"), "--model-path", model, "--listen", "127.0.0.1:0",
             "--threads", str(args.threads), "--max-running", str(args.slots)],
            {"EDGE_WORKER_TOKEN": TOKEN}, "listening")
        procs.append(edge_proc)
        wait_ready(edge + "/readyz")
        calibrate(edge, args.slots, 3)  # warm-up
        capacity, edge_lat = calibrate(edge, args.slots, 20)
        slo = args.slo_ms or round(3 * edge_lat, -2)
        print(f"edge capacity {capacity:.2f} req/s (mean latency {edge_lat:.0f} ms at "
              f"{args.slots} concurrent); SLO {slo:.0f} ms; CPU {cpu_model()}", flush=True)
        results = {}
        with tempfile.TemporaryDirectory() as work:
            for load in loads:
                for policy in policies:
                    proc, url, key, db = gateway_for(policy, load, edge, cloud, slo, work)
                    try:
                        raw = run_load(url, key, load * capacity, args.duration,
                                       seed=int(load * 100))
                    finally:
                        proc.send_signal(signal.SIGTERM)
                        proc.wait(timeout=60)
                    s = summarise(raw, db)
                    s["raw"] = [{k: r[k] for k in ("sent", "ttft", "e2e", "backend", "class",
                                                   "status")} for r in raw]
                    results[f"{policy}@{load}"] = s
                    print(f"{policy:10s} {load:>4}x  n={s['requests']:4d} ok={s['ok']:4d} "
                          f"err={s['errors']:3d} conf-refused={s['confidential_refused']:3d} "
                          f"edge={s['edge_share']:.2f} ttft p50/p95/p99 = {s['ttft_p50']:.0f}/"
                          f"{s['ttft_p95']:.0f}/{s['ttft_p99']:.0f} ms  e2e p50/p95/p99 = "
                          f"{s['e2e_p50']:.0f}/{s['e2e_p95']:.0f}/{s['e2e_p99']:.0f} ms  "
                          f"J/req={s['j_per_req']:.2f} USD/req={s['usd_per_req']:.6f} "
                          f"conf-in-cloud={s['confidential_in_cloud']} edge J predicted/"
                          f"measured={s['edge_j_predicted']:.2f}/{s['edge_j_measured']:.2f} "
                          f"(mean |error| {s['edge_j_abs_error']:.0%}) as routed "
                          f"{s['edge_j_routed']:.2f} (mean |error| "
                          f"{s['edge_j_routed_abs_error']:.0%}) edge wait predicted/"
                          f"measured={s['edge_wait_predicted']:.0f}/{s['edge_wait_measured']:.0f}"
                          f" ms (mean |error| {s['edge_wait_abs_error']:.0f} ms)", flush=True)
    finally:
        for p in procs:
            p.terminate()
            p.wait(timeout=60)

    meta = {"capacity_rps": capacity, "edge_mean_latency_ms": edge_lat, "slo_ms": slo,
            "cpu": cpu_model(), "threads": args.threads, "slots": args.slots,
            "duration_s": args.duration, "cloud": CLOUD, "mix": MIX, "max_tokens": MAX_TOKENS}
    (out / "results.json").write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    table = ["| policy | load | requests | errors | confidential refused | edge share | "
             "TTFT p50 / p95 / p99 (ms) | e2e p50 / p95 / p99 (ms) | J / req | USD / req | "
             "confidential in cloud | edge J predicted / measured (mean abs. error) | "
             "edge J as routed (mean abs. error) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for load in loads:
        for policy in policies:
            s = results[f"{policy}@{load}"]
            table.append(
                f"| {policy} | {load}x | {s['requests']} | {s['errors']} | "
                f"{s['confidential_refused']} | {s['edge_share']:.0%} | {s['ttft_p50']:.0f} / "
                f"{s['ttft_p95']:.0f} / {s['ttft_p99']:.0f} | {s['e2e_p50']:.0f} / "
                f"{s['e2e_p95']:.0f} / {s['e2e_p99']:.0f} | {s['j_per_req']:.2f} | "
                f"{s['usd_per_req']:.6f} | {s['confidential_in_cloud']} | "
                f"{s['edge_j_predicted']:.2f} / {s['edge_j_measured']:.2f} "
                f"({s['edge_j_abs_error']:.0%}) | {s['edge_j_routed']:.2f} "
                f"({s['edge_j_routed_abs_error']:.0%}) |")
    (out / "table.md").write_text("\n".join(table) + "\n")
    print("\n".join(table))

    top = max(loads)
    svg_plot(out / "ttft-over-time.svg", f"TTFT over time at {top}x capacity", "time (s)",
             "TTFT (ms)", {p: [(r["sent"], r["ttft"]) for r in results[f"{p}@{top}"]["raw"]
                               if r["ttft"] is not None] for p in policies}, points_only=True)
    split = {}
    for p in policies:
        raw = results[f"{p}@{top}"]["raw"]
        bins = {}
        for r in raw:
            if r["backend"]:
                b = bins.setdefault(int(r["sent"] // 3) * 3, [0, 0])
                b[0] += r["backend"] == "edge"
                b[1] += 1
        split[p] = [(t, e / n) for t, (e, n) in sorted(bins.items())]
    svg_plot(out / "edge-share-over-time.svg", f"Edge share over time at {top}x capacity",
             "time (s)", "share served at the edge", split)
    svg_plot(out / "ttft-p95-vs-load.svg", "p95 TTFT against offered load",
             "offered load (x edge capacity)", "p95 TTFT (ms)",
             {p: [(l, results[f"{p}@{l}"]["ttft_p95"]) for l in loads] for p in policies})
    svg_plot(out / "e2e-p50-vs-load.svg", "Median end-to-end latency against offered load",
             "offered load (x edge capacity)", "p50 e2e (ms)",
             {p: [(l, results[f"{p}@{l}"]["e2e_p50"]) for l in loads] for p in policies})


if __name__ == "__main__":
    main()
