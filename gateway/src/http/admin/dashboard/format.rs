//! Numbers as people read them.

/// Milliseconds: `850 ms`, `2.4 s`.
pub fn ms(v: f64) -> String {
    if !v.is_finite() {
        return "—".to_owned();
    }
    if v.abs() < 1000.0 {
        format!("{v:.0} ms")
    } else {
        format!("{:.1} s", v / 1000.0)
    }
}

/// US dollars with enough digits for fractions of a cent.
pub fn usd(v: f64) -> String {
    if !v.is_finite() {
        return "—".to_owned();
    }
    let a = v.abs();
    if a == 0.0 {
        "$0".to_owned()
    } else if a < 0.01 {
        format!("${v:.6}")
    } else if a < 100.0 {
        format!("${v:.4}")
    } else {
        format!("${v:.0}")
    }
}

/// Joules, switching to kJ and MJ.
pub fn joules(v: f64) -> String {
    scaled(v, "J")
}

/// Grams of CO₂, switching to kg and t.
pub fn grams(v: f64) -> String {
    if v.abs() >= 1e6 {
        format!("{:.2} t", v / 1e6)
    } else if v.abs() >= 1e3 {
        format!("{:.2} kg", v / 1e3)
    } else if v.abs() >= 1.0 || v.abs() < 1e-12 {
        format!("{v:.2} g")
    } else {
        format!("{:.2} mg", v * 1e3)
    }
}

/// A count on an axis: whole numbers plainly, fractions with one decimal.
pub fn tick(v: f64) -> String {
    if (v - v.round()).abs() < 1e-9 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

fn scaled(v: f64, unit: &str) -> String {
    if !v.is_finite() {
        return "—".to_owned();
    }
    let a = v.abs();
    if a >= 1e6 {
        format!("{:.2} M{unit}", v / 1e6)
    } else if a >= 1e3 {
        format!("{:.2} k{unit}", v / 1e3)
    } else {
        format!("{v:.2} {unit}")
    }
}

/// An optional value, or a dash.
pub fn opt(v: Option<f64>, f: fn(f64) -> String) -> String {
    v.map_or_else(|| "—".to_owned(), f)
}

/// A count with thin thousands separators.
pub fn count(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A unix-ms time as `HH:MM:SS` UTC (the dashboard's clock is UTC).
pub fn clock(at_ms: i64) -> String {
    let secs = at_ms.div_euclid(1000).rem_euclid(86_400);
    format!("{:02}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readable_numbers() {
        assert_eq!(ms(850.2), "850 ms");
        assert_eq!(ms(2400.0), "2.4 s");
        assert_eq!(usd(0.000_25), "$0.000250");
        assert_eq!(usd(1.5), "$1.5000");
        assert_eq!(joules(2500.0), "2.50 kJ");
        assert_eq!(count(1_234_567), "1,234,567");
        assert_eq!(clock(3_723_000), "01:02:03");
        assert_eq!(grams(1500.0), "1.50 kg");
        assert_eq!(grams(0.0042), "4.20 mg");
        assert_eq!((tick(2.0), tick(2.5)), ("2".to_owned(), "2.5".to_owned()));
    }
}
