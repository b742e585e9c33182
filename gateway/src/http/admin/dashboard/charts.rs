//! Charts as inline SVG, drawn on the server: no script or library, the
//! same picture in every browser, and colours from the stylesheet (each
//! series has a CSS class, `s-edge`, `s-cloud`, …).

use maud::{html, Markup};

const W: f64 = 720.0;
const H: f64 = 200.0;
const PAD_L: f64 = 56.0;
const PAD_B: f64 = 22.0;
const PAD_T: f64 = 10.0;

/// One bar of a stacked chart: its label and its parts (class, value).
pub struct Stack {
    pub label: String,
    pub parts: Vec<(&'static str, f64)>,
}

/// A legend entry: class and label.
pub type Legend<'a> = &'a [(&'static str, &'a str)];

fn legend(items: Legend<'_>) -> Markup {
    html! {
        ul.legend {
            @for (class, label) in items {
                li { span class={ "swatch " (class) } {} (label) }
            }
        }
    }
}

fn nice_max(v: f64) -> f64 {
    if !v.is_finite() || v <= 0.0 {
        return 1.0;
    }
    let magnitude = 10f64.powf(v.log10().floor());
    for step in [1.0, 2.0, 2.5, 5.0, 10.0] {
        if v <= step * magnitude {
            return step * magnitude;
        }
    }
    10.0 * magnitude
}

fn axis(max: f64, fmt: fn(f64) -> String) -> Markup {
    let plot_h = H - PAD_B - PAD_T;
    html! {
        @for i in 0..=4 {
            @let v = max * f64::from(i) / 4.0;
            @let y = H - PAD_B - plot_h * f64::from(i) / 4.0;
            line.gridline x1=(PAD_L) x2=(W) y1=(y) y2=(y) {}
            text.tick x=(PAD_L - 6.0) y=(y + 4.0) text-anchor="end" { (fmt(v)) }
        }
    }
}

/// Bars stacked by series, one per time bucket.
pub fn stacked(title: &str, stacks: &[Stack], items: Legend<'_>, fmt: fn(f64) -> String) -> Markup {
    let max = nice_max(
        stacks
            .iter()
            .map(|s| s.parts.iter().map(|(_, v)| v.max(0.0)).sum::<f64>())
            .fold(0.0, f64::max),
    );
    let plot_w = W - PAD_L;
    let plot_h = H - PAD_B - PAD_T;
    let slot = plot_w / stacks.len().max(1) as f64;
    let bar = (slot * 0.7).max(1.0);
    let label_every = (stacks.len() / 8).max(1);
    // (x, top, height, class, tooltip) of every non-empty part.
    let mut rects = Vec::new();
    let mut ticks = Vec::new();
    for (i, s) in stacks.iter().enumerate() {
        let x = PAD_L + slot * i as f64 + (slot - bar) / 2.0;
        let mut y = H - PAD_B;
        for (class, v) in &s.parts {
            let h = plot_h * v.max(0.0) / max;
            if h > 0.0 {
                y -= h;
                rects.push((x, y, h, *class, format!("{}: {}", s.label, fmt(*v))));
            }
        }
        if i % label_every == 0 {
            ticks.push((x + bar / 2.0, s.label.as_str()));
        }
    }
    html! {
        figure.chart {
            figcaption { (title) }
            svg viewBox={ "0 0 " (W) " " (H) } role="img" aria-label=(title) {
                (axis(max, fmt))
                @for (x, y, h, class, tip) in &rects {
                    rect class={ "bar " (class) } x=(x) y=(y) width=(bar) height=(h) {
                        title { (tip) }
                    }
                }
                @for (x, label) in &ticks {
                    text.tick x=(x) y=(H - 6.0) text-anchor="middle" { (label) }
                }
                @if stacks.is_empty() {
                    text.empty x=(W / 2.0) y=(H / 2.0) text-anchor="middle" { "No requests in this window yet" }
                }
            }
            (legend(items))
        }
    }
}

/// One line of a line chart.
pub struct Series<'a> {
    pub class: &'static str,
    pub label: &'a str,
    pub points: Vec<f64>,
}

/// Lines over shared x positions labelled `labels`.
pub fn lines(
    title: &str,
    labels: &[String],
    series: &[Series<'_>],
    fmt: fn(f64) -> String,
) -> Markup {
    let max = nice_max(
        series
            .iter()
            .flat_map(|s| s.points.iter().copied())
            .fold(0.0, f64::max),
    );
    let n = labels.len().max(2);
    // Room on the right for the last label.
    let plot_w = W - PAD_L - 24.0;
    let plot_h = H - PAD_B - PAD_T;
    let x = |i: usize| PAD_L + plot_w * i as f64 / (n - 1) as f64;
    let y = |v: f64| H - PAD_B - plot_h * v.max(0.0) / max;
    let label_every = (labels.len() / 8).max(1);
    let items: Vec<(&'static str, &str)> = series.iter().map(|s| (s.class, s.label)).collect();
    html! {
        figure.chart {
            figcaption { (title) }
            svg viewBox={ "0 0 " (W) " " (H) } role="img" aria-label=(title) {
                (axis(max, fmt))
                @for s in series {
                    path class={ "line " (s.class) } d=(path_of(&s.points, x, y)) {}
                    @for (i, v) in s.points.iter().enumerate() {
                        circle class={ "dot " (s.class) } cx=(x(i)) cy=(y(*v)) r="2.5" {
                            title { (s.label) " " (labels.get(i).map_or("", String::as_str)) ": " (fmt(*v)) }
                        }
                    }
                }
                @for (i, l) in labels.iter().enumerate() {
                    @if i % label_every == 0 {
                        text.tick x=(x(i)) y=(H - 6.0) text-anchor="middle" { (l) }
                    }
                }
                @if labels.is_empty() {
                    text.empty x=(W / 2.0) y=(H / 2.0) text-anchor="middle" { "No requests in this window yet" }
                }
            }
            (legend(&items))
        }
    }
}

/// An SVG path through the points.
fn path_of(points: &[f64], x: impl Fn(usize) -> f64, y: impl Fn(f64) -> f64) -> String {
    use std::fmt::Write as _;
    let mut d = String::new();
    for (i, v) in points.iter().enumerate() {
        let _ = write!(
            d,
            "{}{:.1},{:.1}",
            if i == 0 { "M" } else { " L" },
            x(i),
            y(*v)
        );
    }
    d
}

/// Horizontal bars comparing a few values of one measure (what-if).
pub fn compare(title: &str, bars: &[(&'static str, &str, f64)], fmt: fn(f64) -> String) -> Markup {
    let max = bars.iter().map(|(_, _, v)| v.max(0.0)).fold(0.0, f64::max);
    let max = if max > 0.0 { max } else { 1.0 };
    let row = 34.0;
    let height = row * bars.len() as f64 + 8.0;
    let label_w = 120.0;
    let width = 360.0;
    html! {
        figure.chart.small {
            figcaption { (title) }
            svg viewBox={ "0 0 " (width) " " (height) } role="img" aria-label=(title) {
                @for (i, (class, label, v)) in bars.iter().enumerate() {
                    @let y = 4.0 + row * i as f64;
                    @let w = (width - label_w - 90.0) * v.max(0.0) / max;
                    text.tick x="0" y=(y + 18.0) { (label) }
                    rect class={ "bar " (class) } x=(label_w) y=(y + 4.0) width=(w.max(1.0)) height="20" rx="3" {}
                    text.value x=(label_w + w.max(1.0) + 6.0) y=(y + 18.0) { (fmt(*v)) }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(v: f64) -> String {
        format!("{v:.0}")
    }

    #[test]
    #[allow(clippy::float_cmp)]
    fn stacked_bars_scale_to_the_tallest_and_skip_empty_parts() {
        let stacks = vec![
            Stack {
                label: "a".into(),
                parts: vec![("s-edge", 3.0), ("s-cloud", 1.0)],
            },
            Stack {
                label: "b".into(),
                parts: vec![("s-edge", 0.0), ("s-cloud", 2.0)],
            },
        ];
        let svg = stacked("t", &stacks, &[("s-edge", "Edge")], f).into_string();
        assert_eq!(svg.matches("<rect").count(), 3, "{svg}");
        assert!(svg.contains("a: 3"));
        assert_eq!(nice_max(4.0), 5.0);
        assert_eq!(nice_max(0.0), 1.0);
        assert_eq!(nice_max(120.0), 200.0);
    }

    #[test]
    fn lines_have_one_path_per_series_and_escape_labels() {
        let svg = lines(
            "t",
            &["<b>".to_owned(), "x".to_owned()],
            &[Series {
                class: "s-edge",
                label: "Edge",
                points: vec![1.0, 2.0],
            }],
            f,
        )
        .into_string();
        assert_eq!(svg.matches("<path").count(), 1);
        assert!(svg.contains("&lt;b&gt;") && !svg.contains("<b>"));
    }
}
