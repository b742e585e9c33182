#!/usr/bin/env python3
"""What Redis cost each request's admission, read from gateways' /metrics.

    python3 scripts/lib/redis-wait.py NAME=URL [NAME=URL ...]

Each gateway times what a request's admission waited on Redis into the
histogram `gateway_limits_redis_seconds`: 0 when the gateway's lease of the
key admitted it, else the one Redis call of the exact path (both rates and
the budget hold, one script). This prints, per gateway, how many admissions
it timed, how many of them its leases admitted, and the bucket bounds that
hold their median and 99th percentile: "p99 <= 25 us" means at least 99% of
admissions waited on Redis for at most 25 microseconds.
"""
import sys
import urllib.request


def scrape(url):
    """The histogram's cumulative buckets, and the admissions decided on the
    gateway's local share instead (Redis down, slow or failing)."""
    text = urllib.request.urlopen(url + "/metrics", timeout=10).read().decode()
    out, fallback, leased = [], 0.0, 0.0
    for line in text.splitlines():
        if line.startswith("gateway_limits_redis_seconds_bucket{"):
            le = line.split('le="', 1)[1].split('"', 1)[0]
            out.append((float("inf") if le == "+Inf" else float(le), float(line.rsplit(" ", 1)[1])))
        elif line.startswith("gateway_limits_fallback_total{"):
            fallback += float(line.rsplit(" ", 1)[1])
        elif line.startswith("gateway_limits_leased_total"):
            leased += float(line.rsplit(" ", 1)[1])
    return sorted(out), fallback, leased


def bound(cumulative, q):
    total = cumulative[-1][1]
    for le, n in cumulative:
        if n >= q * total:
            return le
    return float("inf")


def micros(le):
    return "over 100 ms" if le == float("inf") else f"<= {le * 1e6:.0f} us"


for arg in sys.argv[1:]:
    name, url = arg.split("=", 1)
    b, fallback, leased = scrape(url)
    if not b or b[-1][1] == 0:
        print(f"{name}: no admission timed on Redis")
        continue
    print(
        f"{name}: Redis wait per admission over {b[-1][1]:.0f} admissions "
        f"({leased:.0f} from a lease): "
        f"p50 {micros(bound(b, 0.5))}, p99 {micros(bound(b, 0.99))}, "
        f"p99.9 {micros(bound(b, 0.999))}; checks decided on the local share "
        f"instead: {fallback:.0f}"
    )
    print(f"  buckets (le us: admissions): " + ", ".join(
        f"{'inf' if le == float('inf') else f'{le * 1e6:.0f}'}: {n:.0f}" for le, n in b))
