#!/usr/bin/env python3
"""The edge worker's prefix cache: time to first token when requests share a
long system prompt, and what the cache costs in memory.

Two edge workers on the same GGUF and thread count, one with the prefix
cache (the default) and one without (`--prefix-cache-sequences 0`), get the
same requests in interleaved rounds: a system prompt of about 240 tokens
shared by every request, and a different short question each time. Reports
median TTFT and peak RSS of each, with ratios (cache on / cache off). Peak
RSS is read after a burst of 8 concurrent requests on each.

Usage: .venv/bin/python scripts/bench-prefix-cache.py [--threads 2] [--rounds 3]
"""

import argparse
import importlib.util
import pathlib
import statistics

HERE = pathlib.Path(__file__).resolve().parent
_spec = importlib.util.spec_from_file_location("bench_edge", HERE / "bench-edge.py")
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)

SYSTEM = "You are a helpful assistant for a bakery. " + " ".join(
    f"Rule {i}: be polite, answer briefly and mention fresh bread when it fits." for i in range(12))


def messages(i):
    return [{"role": "system", "content": SYSTEM},
            {"role": "user", "content": f"Question {i}: what do you sell?"}]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()

    servers = {"cache on": bench.start_edge(args.threads),
               "cache off": bench.start_edge(args.threads, ("--prefix-cache-sequences", "0"))}
    ttft = {k: [] for k in servers}
    rss = {}
    try:
        question = 0
        for _ in range(args.rounds):
            for name, (_, base, model) in servers.items():
                for _ in range(3):
                    question += 1
                    t, _, _, _ = bench.one_request(base, model, 4, messages(question))
                    ttft[name].append(t * 1000)
        for name, (proc, base, model) in servers.items():
            bench.concurrent_run(base, model, 8, 64)
            rss[name] = bench.peak_rss_mib(proc.pid)
    finally:
        for proc, _, _ in servers.values():
            proc.terminate()
            proc.wait(timeout=60)

    on, off = "cache on", "cache off"
    print(f"shared system prompt, {args.threads} threads, {args.rounds} interleaved rounds of 3 (medians)")
    print(f"{'metric':<34}{on:>12}{off:>12}{'ratio':>8}")
    for label, a, b in [("TTFT ms, shared system prompt", statistics.median(ttft[on]), statistics.median(ttft[off])),
                        ("peak RSS MiB after 8 concurrent", rss[on], rss[off])]:
        print(f"{label:<34}{a:>12.1f}{b:>12.1f}{a / b:>8.2f}")


if __name__ == "__main__":
    main()
