//! Human-readable reports: one aligned block per run, and a side-by-side
//! table for a comparison with the difference B − A in its own column.

use std::collections::BTreeMap;
use std::fmt;

use super::report::{Added, CompareReport, Percentiles, RunReport};

fn errors_line(errors: &BTreeMap<String, u64>) -> String {
    if errors.is_empty() {
        return "none".to_owned();
    }
    errors
        .iter()
        .map(|(k, v)| format!("{k}: {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn percentile_rows(f: &mut fmt::Formatter<'_>, name: &str, p: &Percentiles) -> fmt::Result {
    writeln!(
        f,
        "{name:<14} p50 {:>8}  p90 {:>8}  p99 {:>8}  p99.9 {:>8}  max {:>8}  mean {:>10.1}",
        p.p50_us, p.p90_us, p.p99_us, p.p999_us, p.max_us, p.mean_us
    )
}

impl fmt::Display for RunReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mode = if self.stream {
            "streaming"
        } else {
            "non-streaming"
        };
        writeln!(f, "target         {} ({mode})", self.target)?;
        writeln!(
            f,
            "rate           {:.1}/s requested, {:.1}/s sent, {:.1}/s ok over {:.1} s",
            self.rate, self.sent_rate, self.achieved_rate, self.duration_s
        )?;
        writeln!(
            f,
            "requests       scheduled {}  sent {}  ok {}  dropped {}",
            self.scheduled, self.sent, self.ok, self.dropped
        )?;
        writeln!(f, "errors         {}", errors_line(&self.errors))?;
        writeln!(f, "latency in microseconds, from the scheduled send time:")?;
        percentile_rows(f, "  total", &self.latency)?;
        if let Some(ttft) = &self.ttft {
            percentile_rows(f, "  first event", ttft)?;
        }
        percentile_rows(f, "  send lag", &self.send_lag)
    }
}

fn compare_rows(
    f: &mut fmt::Formatter<'_>,
    name: &str,
    a: &Percentiles,
    b: &Percentiles,
) -> fmt::Result {
    let added = Added::between(a, b);
    writeln!(f, "{name}")?;
    let rows = [
        ("p50", a.p50_us, b.p50_us, added.p50_us),
        ("p90", a.p90_us, b.p90_us, added.p90_us),
        ("p99", a.p99_us, b.p99_us, added.p99_us),
        ("p99.9", a.p999_us, b.p999_us, added.p999_us),
    ];
    for (label, a, b, d) in rows {
        writeln!(f, "  {label:<8} {a:>12} {b:>12} {d:>+12}")?;
    }
    writeln!(f, "  {:<8} {:>12} {:>12}", "max", a.max_us, b.max_us)?;
    writeln!(
        f,
        "  {:<8} {:>12.1} {:>12.1} {:>+12.1}",
        "mean", a.mean_us, b.mean_us, added.mean_us
    )
}

impl fmt::Display for CompareReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (a, b) = (&self.a, &self.b);
        writeln!(f, "A = {}", a.target)?;
        writeln!(f, "B = {}", b.target)?;
        writeln!(
            f,
            "{} rounds each, {:.1}/s requested, {}",
            self.rounds,
            a.rate,
            if a.stream {
                "streaming"
            } else {
                "non-streaming"
            }
        )?;
        writeln!(f, "{:<10} {:>12} {:>12} {:>12}", "", "A", "B", "B - A")?;
        writeln!(f, "{:<10} {:>12} {:>12}", "ok", a.ok, b.ok)?;
        writeln!(f, "{:<10} {:>12} {:>12}", "dropped", a.dropped, b.dropped)?;
        writeln!(
            f,
            "{:<10} {:>12.1} {:>12.1}",
            "ok/s", a.achieved_rate, b.achieved_rate
        )?;
        writeln!(f, "errors A: {}", errors_line(&a.errors))?;
        writeln!(f, "errors B: {}", errors_line(&b.errors))?;
        compare_rows(
            f,
            "latency (us, from scheduled send)",
            &a.latency,
            &b.latency,
        )?;
        if let (Some(ta), Some(tb)) = (&a.ttft, &b.ttft) {
            compare_rows(f, "first event (us)", ta, tb)?;
        }
        compare_rows(f, "send lag (us)", &a.send_lag, &b.send_lag)
    }
}
