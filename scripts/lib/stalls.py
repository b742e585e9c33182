#!/usr/bin/env python3
"""Slow requests in a `loadgen --compare … --series FILE` run, and when they
were due.

Side B's slowest requests, those above B's own p99 (or --threshold-us),
the ones that make its tail, are grouped into stalls: slow requests due within --gap-ms of each other. Printed: how
many, how long, and the time between the starts of consecutive stalls in
the same round (B's requests come in rounds, between A's). A cause with a
period (a timer, a batch written every N ms) shows as intervals clustered
near that period; causes without one spread them out.

Usage: python3 scripts/lib/stalls.py SERIES.csv [--threshold-us N] [--gap-ms N]
"""

import argparse
import csv
import statistics

BUCKETS_MS = [5, 20, 45, 70, 100, 200, 500, 1000, 2500]


def percentile(sorted_values, q):
    if not sorted_values:
        return 0
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("series")
    ap.add_argument("--threshold-us", type=int)
    ap.add_argument("--gap-ms", type=float, default=2.0)
    args = ap.parse_args()

    a, b = [], []
    with open(args.series) as f:
        for row in csv.DictReader(f):
            sample = (int(row["due_us"]), int(row["latency_us"]))
            (a if row["side"] == "a" else b).append(sample)
    b.sort()
    a_latencies = sorted(latency for _, latency in a)
    b_latencies = sorted(latency for _, latency in b)
    threshold = args.threshold_us or percentile(b_latencies, 0.99)

    # Rounds: B's due times, split where A's round left a gap.
    round_of, round_no, last = {}, 0, None
    for due, _ in b:
        if last is not None and due - last > 100_000:
            round_no += 1
        round_of[due] = round_no
        last = due

    stalls = []  # [first due, last due, requests, worst latency]
    for due, latency in b:
        if latency <= threshold:
            continue
        if stalls and due - stalls[-1][1] <= args.gap_ms * 1000 and round_of[due] == round_of[stalls[-1][0]]:
            stall = stalls[-1]
            stall[1], stall[2], stall[3] = due, stall[2] + 1, max(stall[3], latency)
        else:
            stalls.append([due, due, 1, latency])

    slow = sum(s[2] for s in stalls)
    print(f"B: {len(b)} requests, {slow} over {threshold} us (B's p50 {percentile(b_latencies, 0.5)} us, "
          f"A's p50 / p99 {percentile(a_latencies, 0.5)} / {percentile(a_latencies, 0.99)} us), "
          f"in {len(stalls)} stalls")
    if not stalls:
        return
    sizes = sorted(s[2] for s in stalls)
    spans = sorted((s[1] - s[0]) / 1000 for s in stalls)
    worst = sorted(s[3] for s in stalls)
    print(f"  requests per stall: median {statistics.median(sizes)}, max {sizes[-1]}; "
          f"span ms: median {statistics.median(spans):.1f}, max {spans[-1]:.1f}; "
          f"worst latency us: median {statistics.median(worst)}, max {worst[-1]}")
    intervals = [
        (later[0] - earlier[0]) / 1000
        for earlier, later in zip(stalls, stalls[1:])
        if round_of[earlier[0]] == round_of[later[0]]
    ]
    if not intervals:
        return
    counts = [0] * (len(BUCKETS_MS) + 1)
    for ms in intervals:
        counts[next((i for i, top in enumerate(BUCKETS_MS) if ms < top), len(BUCKETS_MS))] += 1
    labels = [f"<{top}" for top in BUCKETS_MS] + [f">={BUCKETS_MS[-1]}"]
    print(f"  ms between stall starts (same round): median {statistics.median(intervals):.1f}; "
          + ", ".join(f"{label}: {n}" for label, n in zip(labels, counts)))


if __name__ == "__main__":
    main()
