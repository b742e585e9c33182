#!/usr/bin/env python3
"""How long a process's threads waited for a CPU once woken, and who held it.

Reads `perf sched timehist` output (one line per context switch: the task
switched out, how long it waited for a CPU after its wake-up, the "sch
delay", and how long it then ran). For the threads of one process it prints
the wake-up delays' percentiles and how many exceeded each threshold, and,
over the delays above --slow-ms, which tasks were running on that CPU while
the thread waited (their run time overlapping the wait, summed by name).

Usage: perf sched timehist -i sched.data | python3 scripts/lib/schedwait.py --pid PID [--slow-ms 0.25]
"""

import argparse
import collections
import re
import sys

from stalls import percentile

LINE = re.compile(
    r"^\s*(?P<time>\d+\.\d+)\s+\[(?P<cpu>\d+)\]\s+(?P<comm>.*?)\[(?P<tid>\d+)(?:/(?P<pid>\d+))?\]"
    r"\s+(?P<wait>[\d.]+)\s+(?P<delay>[\d.]+)\s+(?P<run>[\d.]+)"
)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--pid", type=int, required=True, help="the process whose threads to report")
    ap.add_argument("--slow-ms", type=float, default=0.25)
    args = ap.parse_args()

    # Per CPU, the switches in time order: (switch-out time, comm, pid, run ms).
    per_cpu = collections.defaultdict(list)
    mine = []  # (switch-in time, cpu, delay ms, comm)
    for line in sys.stdin:
        m = LINE.match(line)
        if not m:
            continue
        t = float(m["time"])
        cpu = int(m["cpu"])
        pid = int(m["pid"] or m["tid"])
        run = float(m["run"])
        comm = m["comm"].strip()
        per_cpu[cpu].append((t, comm, pid, run))
        if pid == args.pid:
            # The thread was switched in `run` ms before this line; it had
            # waited `delay` ms for the CPU before that.
            mine.append((t - run / 1000.0, cpu, float(m["delay"]), comm))

    if not mine:
        sys.exit(f"no context switches of pid {args.pid} in the input")
    delays = sorted(d for _, _, d, _ in mine)
    n = len(delays)
    print(f"{n} switch-ins of pid {args.pid}'s threads; wake-up delay (ms) "
          f"p50 {percentile(delays, 0.5):.3f}, p90 {percentile(delays, 0.9):.3f}, "
          f"p99 {percentile(delays, 0.99):.3f}, max {delays[-1]:.3f}")
    for threshold in (0.1, 0.25, 0.5, 1.0, 2.0):
        k = sum(1 for d in delays if d > threshold)
        print(f"  over {threshold:>4} ms: {k:6d} ({100.0 * k / n:.2f}%)")

    # Who ran on the CPU during each slow wait.
    held = collections.Counter()
    slow = [(t_in, cpu, d) for t_in, cpu, d, _ in mine if d > args.slow_ms]
    for t_in, cpu, d in slow:
        start = t_in - d / 1000.0
        for t_out, comm, pid, run in per_cpu[cpu]:
            t_from = t_out - run / 1000.0
            overlap = min(t_out, t_in) - max(t_from, start)
            if overlap > 0 and pid != args.pid:
                held[comm] += overlap * 1000.0
            elif overlap > 0:
                held[f"{comm} (same process)"] += overlap * 1000.0
    if slow:
        total = sum(held.values()) or 1.0
        print(f"during the {len(slow)} waits over {args.slow_ms} ms, the CPU ran (ms, share):")
        for comm, ms in held.most_common(10):
            print(f"  {comm:<32} {ms:9.1f}  {100.0 * ms / total:5.1f}%")


if __name__ == "__main__":
    main()
