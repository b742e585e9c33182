//! Standalone SVG charts for the scenario reports: a time axis in seconds,
//! a value axis from zero, vertical markers (phase changes, events) and a
//! legend. Plain SVG with inline styles, so a report opens the same in a
//! browser, a Markdown viewer or an image viewer, with no script or font.

use std::fmt::Write as _;

const W: f64 = 760.0;
const H: f64 = 260.0;
const LEFT: f64 = 64.0;
const RIGHT: f64 = 16.0;
const TOP: f64 = 34.0;
const BOTTOM: f64 = 48.0;

/// One series: its label, its colour, and a value per x position
/// (`None`: no value there, the line breaks).
pub struct Series<'a> {
    pub label: &'a str,
    pub color: &'a str,
    pub values: Vec<Option<f64>>,
}

/// A vertical line at `x` seconds with a short label.
pub struct Marker {
    pub x: f64,
    pub label: String,
}

/// How the series are drawn.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// One line per series.
    Lines,
    /// Bars stacked by series, one stack per x position.
    Stacked,
}

/// A chart of `series` over the x positions `xs` (seconds from the start,
/// equally spaced), with `unit` on the value axis.
#[must_use]
pub fn chart(
    title: &str,
    unit: &str,
    kind: Kind,
    xs: &[f64],
    series: &[Series<'_>],
    markers: &[Marker],
) -> String {
    let tops: Vec<f64> = match kind {
        Kind::Lines => series
            .iter()
            .flat_map(|s| s.values.iter().flatten().copied())
            .collect(),
        Kind::Stacked => (0..xs.len())
            .map(|i| {
                series
                    .iter()
                    .filter_map(|s| s.values.get(i).copied().flatten())
                    .map(|v| v.max(0.0))
                    .sum()
            })
            .collect(),
    };
    let area = Area {
        x_max: xs.last().copied().unwrap_or(1.0).max(1e-9),
        y_max: nice_max(tops.into_iter().fold(0.0, f64::max)),
    };
    let mut svg = String::new();
    let _ = write!(
        svg,
        r##"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {W} {H}" width="{W}" height="{H}" font-family="sans-serif" font-size="11"><rect width="100%" height="100%" fill="#ffffff"/><text x="{LEFT}" y="18" font-size="14" font-weight="bold">{}</text>"##,
        escape(title)
    );
    area.axes(&mut svg, unit);
    area.markers(&mut svg, markers);
    match kind {
        Kind::Lines => area.lines(&mut svg, xs, series),
        Kind::Stacked => area.stacks(&mut svg, xs, series),
    }
    legend(&mut svg, series);
    svg.push_str("</svg>\n");
    svg
}

/// The plot area's scale: the largest x and y values it shows.
struct Area {
    x_max: f64,
    y_max: f64,
}

const PW: f64 = W - LEFT - RIGHT;
const PH: f64 = H - TOP - BOTTOM;

impl Area {
    fn px(&self, x: f64) -> f64 {
        LEFT + PW * x / self.x_max
    }

    fn py(&self, v: f64) -> f64 {
        TOP + PH - PH * v.max(0.0) / self.y_max
    }

    fn axes(&self, svg: &mut String, unit: &str) {
        for i in 0..=4 {
            let v = self.y_max * f64::from(i) / 4.0;
            let y = self.py(v);
            let _ = write!(
                svg,
                r##"<line x1="{LEFT}" x2="{:.1}" y1="{y:.1}" y2="{y:.1}" stroke="#e4e7ec"/><text x="{:.1}" y="{:.1}" text-anchor="end" fill="#555">{}</text>"##,
                W - RIGHT,
                LEFT - 6.0,
                y + 4.0,
                number(v)
            );
        }
        let mid = TOP + PH / 2.0;
        let _ = write!(
            svg,
            r##"<text x="14" y="{mid:.1}" transform="rotate(-90 14 {mid:.1})" text-anchor="middle" fill="#555">{}</text>"##,
            escape(unit)
        );
        for i in 0..=5 {
            let x = self.x_max * f64::from(i) / 5.0;
            let _ = write!(
                svg,
                r##"<text x="{:.1}" y="{:.1}" text-anchor="middle" fill="#555">{} s</text>"##,
                self.px(x),
                TOP + PH + 14.0,
                number(x)
            );
        }
    }

    fn markers(&self, svg: &mut String, markers: &[Marker]) {
        for m in markers {
            let x = self.px(m.x.clamp(0.0, self.x_max));
            let _ = write!(
                svg,
                r##"<line x1="{x:.1}" x2="{x:.1}" y1="{TOP}" y2="{:.1}" stroke="#98a2b3" stroke-dasharray="4 3"/><text x="{:.1}" y="{:.1}" fill="#475467">{}</text>"##,
                TOP + PH,
                x + 3.0,
                TOP + 10.0,
                escape(&m.label)
            );
        }
    }

    fn lines(&self, svg: &mut String, xs: &[f64], series: &[Series<'_>]) {
        for s in series {
            let mut d = String::new();
            let mut pen_up = true;
            for (x, v) in xs.iter().zip(&s.values) {
                if let Some(v) = v {
                    let pen = if pen_up { "M" } else { "L" };
                    let _ = write!(d, "{pen}{:.1},{:.1} ", self.px(*x), self.py(*v));
                    pen_up = false;
                } else {
                    pen_up = true;
                }
            }
            let _ = write!(
                svg,
                r#"<path d="{}" fill="none" stroke="{}" stroke-width="2"/>"#,
                d.trim_end(),
                s.color
            );
        }
    }

    /// One stack per x, ending at x (each x is the end of its window).
    fn stacks(&self, svg: &mut String, xs: &[f64], series: &[Series<'_>]) {
        let slot = PW / xs.len().max(1) as f64;
        for (i, x) in xs.iter().enumerate() {
            let mut base = 0.0;
            for s in series {
                let v = s.values.get(i).copied().flatten().unwrap_or(0.0).max(0.0);
                if v > 0.0 {
                    let (top, bottom) = (self.py(base + v), self.py(base));
                    let _ = write!(
                        svg,
                        r#"<rect x="{:.1}" y="{top:.1}" width="{:.1}" height="{:.1}" fill="{}"><title>{} at {} s: {}</title></rect>"#,
                        self.px(*x) - slot * 0.9,
                        (slot * 0.8).max(0.5),
                        bottom - top,
                        s.color,
                        escape(s.label),
                        number(*x),
                        number(v)
                    );
                }
                base += v;
            }
        }
    }
}

fn legend(svg: &mut String, series: &[Series<'_>]) {
    let mut lx = LEFT;
    for s in series {
        let _ = write!(
            svg,
            r#"<rect x="{lx:.1}" y="{:.1}" width="10" height="10" fill="{}"/><text x="{:.1}" y="{:.1}">{}</text>"#,
            H - 16.0,
            s.color,
            lx + 14.0,
            H - 7.0,
            escape(s.label)
        );
        lx += 24.0 + 6.5 * s.label.chars().count() as f64;
    }
}

/// The smallest 1, 2, 2.5 or 5 times a power of ten at or above `v`.
fn nice_max(v: f64) -> f64 {
    if !v.is_finite() || v <= 0.0 {
        return 1.0;
    }
    let magnitude = 10f64.powf(v.log10().floor());
    [1.0, 2.0, 2.5, 5.0, 10.0]
        .into_iter()
        .map(|step| step * magnitude)
        .find(|m| v <= *m)
        .unwrap_or(10.0 * magnitude)
}

/// A short label for a tick: no more digits than it needs.
fn number(v: f64) -> String {
    let a = v.abs();
    if a == 0.0 {
        "0".to_owned()
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 1.0 {
        format!("{v:.1}").trim_end_matches(".0").to_owned()
    } else if a >= 0.001 {
        format!("{v:.3}").trim_end_matches('0').to_owned()
    } else {
        format!("{v:.1e}")
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
#[allow(clippy::float_cmp)]
mod tests {
    use super::*;

    #[test]
    fn lines_break_at_gaps_and_labels_are_escaped() {
        let svg = chart(
            "<p99>",
            "ms",
            Kind::Lines,
            &[1.0, 2.0, 3.0, 4.0],
            &[Series {
                label: "a&b",
                color: "#123456",
                values: vec![Some(1.0), None, Some(3.0), Some(4.0)],
            }],
            &[Marker {
                x: 2.0,
                label: "kill".into(),
            }],
        );
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("&lt;p99&gt;") && svg.contains("a&amp;b"));
        // Two runs of the line: one before the gap, one after.
        let path = svg.split("<path d=\"").nth(1).unwrap();
        let d = &path[..path.find('"').unwrap()];
        assert_eq!(d.matches('M').count(), 2, "{d}");
        assert_eq!(d.matches('L').count(), 1, "{d}");
        assert!(svg.contains(">kill</text>"));
    }

    #[test]
    fn stacks_scale_to_the_tallest_and_skip_zeros() {
        let svg = chart(
            "split",
            "requests/s",
            Kind::Stacked,
            &[1.0, 2.0],
            &[
                Series {
                    label: "edge",
                    color: "#1",
                    values: vec![Some(3.0), Some(0.0)],
                },
                Series {
                    label: "cloud",
                    color: "#2",
                    values: vec![Some(1.0), Some(4.5)],
                },
            ],
            &[],
        );
        // Three bars (the zero is skipped) plus two legend swatches and the background.
        assert_eq!(svg.matches("<rect").count(), 6, "{svg}");
        assert_eq!(nice_max(4.5), 5.0);
        assert_eq!(nice_max(0.0), 1.0);
        assert_eq!(nice_max(120.0), 200.0);
        assert_eq!(number(0.25), "0.25");
        assert_eq!(number(12.0), "12");
    }
}
