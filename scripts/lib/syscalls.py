#!/usr/bin/env python3
"""System calls per request, from a `perf trace -s` summary on stdin.

The summary has one block per thread ("serve-0 (4242), 1234 events, 5.0%")
followed by a row per system call (name, calls, errors, times). This sums
the calls of every thread by system call and by thread (threads named
alike, such as serve-0 and serve-1, counted together as serve-*) and
divides by --requests.
"""

import argparse
import re
import sys
from collections import Counter

THREAD = re.compile(r"^\s*(.+?) \((\d+)\), \d+ events")
ROW = re.compile(r"^\s+([a-z_0-9]+)\s+(\d+)\s+(\d+)\s+[\d.]+")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, required=True)
    ap.add_argument("--top", type=int, default=15)
    args = ap.parse_args()
    by_call: Counter[str] = Counter()
    by_thread: Counter[str] = Counter()
    thread = "?"
    for line in sys.stdin:
        if m := THREAD.match(line):
            thread = re.sub(r"-\d+$", "-*", m.group(1))
            continue
        if (m := ROW.match(line)) and m.group(1) != "syscall":
            calls = int(m.group(2))
            by_call[m.group(1)] += calls
            by_thread[thread] += calls
    n = max(args.requests, 1)
    total = sum(by_call.values())
    print(f"{total / n:.2f} system calls per request ({total} in all)")
    print(f"{'system call':<20} {'per request':>11}")
    for name, calls in by_call.most_common(args.top):
        print(f"{name:<20} {calls / n:>11.3f}")
    print(f"{'thread':<20} {'per request':>11}")
    for name, calls in by_thread.most_common():
        print(f"{name:<20} {calls / n:>11.3f}")


if __name__ == "__main__":
    main()
