//! The builtin detector table.
//!
//! Each entry is a regex that finds *candidates* cheaply and an optional
//! validator that rejects look-alikes (a 16-digit order number that fails the
//! Luhn check, a version string shaped like an IPv4 address). Several entries
//! may share a detector name: "secret" is a family of token shapes.
//!
//! Default classes, and why:
//! - `card`, `iban`, `secret`: confidential. Leaking one is a direct financial
//!   or security incident, so such a request must stay on premises.
//! - `email`, `phone`, `ip_address`: internal. They are personal or network
//!   data worth keeping off public-class routes, but they are so common in
//!   ordinary business text that pinning every such request to the edge would
//!   defeat cloud overflow. Operators who disagree raise them to confidential
//!   with a builtin rule row.

use std::net::Ipv6Addr;

use super::Class;

/// Decides whether a regex hit is a real finding. Gets the whole text and
/// the hit's byte range so it can look at the surrounding characters.
pub(super) type Validator = fn(text: &str, start: usize, end: usize) -> bool;

/// One row of the builtin table.
pub(super) struct Builtin {
    pub name: &'static str,
    pub pattern: &'static str,
    pub validate: Option<Validator>,
    pub class: Class,
}

/// Every builtin detector name, for validating operator rule rows.
pub const BUILTIN_NAMES: &[&str] = &["card", "email", "iban", "ip_address", "phone", "secret"];

const IPV4: &str =
    r"\b(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\b";

pub(super) const BUILTINS: &[Builtin] = &[
    Builtin {
        name: "email",
        pattern: r"(?i)\b[a-z0-9._%+-]+@[a-z0-9-]+(?:\.[a-z0-9-]+)*\.[a-z]{2,}\b",
        validate: None,
        class: Class::Internal,
    },
    Builtin {
        name: "phone",
        pattern: r"\+\d{1,3}[ .-]?(?:\(\d{1,4}\)[ .-]?)?\d{1,4}(?:[ .-]?\d{2,4}){1,4}\b|\(\d{3}\) ?\d{3}[ .-]\d{4}\b|\b\d{3}[.-]\d{3}[.-]\d{4}\b",
        validate: Some(phone_digits),
        class: Class::Internal,
    },
    Builtin {
        name: "card",
        pattern: r"\b(?:\d[ -]?){12,18}\d\b",
        validate: Some(card),
        class: Class::Confidential,
    },
    Builtin {
        name: "iban",
        pattern: r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}\b",
        validate: Some(iban),
        class: Class::Confidential,
    },
    Builtin {
        name: "ip_address",
        pattern: IPV4,
        validate: Some(not_in_dotted_run),
        class: Class::Internal,
    },
    Builtin {
        name: "ip_address",
        pattern: r"(?i)[0-9a-f:]*:[0-9a-f]*:[0-9a-f:.]*",
        validate: Some(ipv6),
        class: Class::Internal,
    },
    Builtin {
        name: "secret",
        pattern: r"-----BEGIN [A-Z ]*PRIVATE KEY-----",
        validate: None,
        class: Class::Confidential,
    },
    Builtin {
        name: "secret",
        pattern: r"\b(?:sk-(?:proj-|ant-)?[A-Za-z0-9_-]{20,}|AKIA[0-9A-Z]{16}|gh[pousr]_[A-Za-z0-9]{36,}|xox[abprs]-[A-Za-z0-9-]{10,}|AIza[0-9A-Za-z_-]{35}|gw-[0-9a-f]{64})\b",
        validate: None,
        class: Class::Confidential,
    },
    Builtin {
        name: "secret",
        pattern: r"\beyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}",
        validate: None,
        class: Class::Confidential,
    },
    Builtin {
        name: "secret",
        pattern: r"[A-Za-z0-9+/_=-]{32,}",
        validate: Some(high_entropy),
        class: Class::Confidential,
    },
];

fn digits(s: &str) -> Vec<u32> {
    s.chars().filter_map(|c| c.to_digit(10)).collect()
}

fn phone_digits(text: &str, start: usize, end: usize) -> bool {
    (7..=15).contains(&digits(&text[start..end]).len())
}

/// Luhn over 13-19 digits; a run of one repeated digit is a placeholder, not
/// a card.
fn card(text: &str, start: usize, end: usize) -> bool {
    let d = digits(&text[start..end]);
    if !(13..=19).contains(&d.len()) || d.iter().all(|&x| x == d[0]) {
        return false;
    }
    let sum: u32 = d
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &x)| match (i % 2 == 1, x * 2) {
            (true, doubled) if doubled > 9 => doubled - 9,
            (true, doubled) => doubled,
            (false, _) => x,
        })
        .sum();
    sum.is_multiple_of(10)
}

/// ISO 13616 mod-97. The regex may swallow a trailing word after the last
/// space-separated group, so shorter prefixes ending at a group boundary are
/// tried as well.
fn iban(text: &str, start: usize, end: usize) -> bool {
    let hit = &text[start..end];
    let groups: Vec<&str> = hit.split(' ').collect();
    (1..=groups.len())
        .rev()
        .any(|n| iban_checksum(&groups[..n].concat()))
}

fn iban_checksum(compact: &str) -> bool {
    if !(15..=34).contains(&compact.len()) || !compact.is_ascii() {
        return false;
    }
    let (head, tail) = compact.split_at(4);
    let mut rem: u32 = 0;
    for c in tail.chars().chain(head.chars()) {
        let Some(v) = c.to_digit(36) else {
            return false;
        };
        rem = if v < 10 {
            (rem * 10 + v) % 97
        } else {
            (rem * 100 + v) % 97
        };
    }
    rem == 1
}

/// Rejects `1.2.3.4` inside `1.2.3.4.5` (version strings, OIDs): an address
/// is not preceded or followed by a dot that continues the dotted run.
fn not_in_dotted_run(text: &str, start: usize, end: usize) -> bool {
    let before = text[..start].chars().next_back();
    let mut after = text[end..].chars();
    let dotted_before = before == Some('.')
        && text[..start - 1]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_ascii_digit());
    let dotted_after =
        after.next() == Some('.') && after.next().is_some_and(|c| c.is_ascii_digit());
    !dotted_before && !dotted_after
}

/// The regex only finds runs of hex digits and colons; the standard parser
/// decides. Identifier-adjacent runs (`std::fmt`) and two-group shapes such
/// as `d::f` are rejected so Rust or C++ paths in prose do not fire.
fn ipv6(text: &str, start: usize, end: usize) -> bool {
    let is_ident = |c: char| c.is_alphanumeric() || c == '_';
    if text[..start].chars().next_back().is_some_and(is_ident)
        || text[end..].chars().next().is_some_and(is_ident)
    {
        return false;
    }
    let candidate = text[start..end].trim_end_matches(['.', ':']);
    if candidate.parse::<Ipv6Addr>().is_err() {
        return false;
    }
    let groups: Vec<&str> = candidate.split(':').filter(|g| !g.is_empty()).collect();
    groups.len() >= 3 || groups.first().is_some_and(|g| g.len() >= 3)
}

/// Long tokens with high Shannon entropy and a mix of letters and digits.
/// The 4.2 bits/char threshold sits above pure hex (at most 4 bits), so
/// commit hashes and checksums in prose do not fire; hex-encoded secrets are
/// caught by the prefixed shapes above instead.
fn high_entropy(text: &str, start: usize, end: usize) -> bool {
    let token = &text[start..end];
    let has_digit = token.bytes().any(|b| b.is_ascii_digit());
    let has_upper = token.bytes().any(|b| b.is_ascii_uppercase());
    let has_lower = token.bytes().any(|b| b.is_ascii_lowercase());
    if !(has_digit && has_upper && has_lower) {
        return false;
    }
    let mut counts = [0u32; 256];
    for b in token.bytes() {
        counts[usize::from(b)] += 1;
    }
    let len = token.len() as f64;
    let entropy: f64 = counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = f64::from(c) / len;
            -p * p.log2()
        })
        .sum();
    entropy >= 4.2
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::super::{classify, Class, RuleSet};

    fn fired(text: &str) -> Vec<String> {
        let rules = RuleSet::compile(&[]).unwrap();
        classify([text], Class::Public, None, &rules).fired
    }

    #[test]
    fn detectors_table() {
        let cases: &[(&str, &[&str])] = &[
            ("write to jane.doe@corp.example.com today", &["email"]),
            ("not an email: user@localhost", &[]),
            ("call +1 415 555 0132", &["phone"]),
            ("call (415) 555-0132", &["phone"]),
            ("call 415-555-0132", &["phone"]),
            ("pay with 4111 1111 1111 1111", &["card"]),
            ("pay with 5500-0000-0000-0004", &["card"]),
            ("pay with 378282246310005", &["card"]),
            ("order 4111111111111112 shipped", &[]),
            ("zeros 0000 0000 0000 0000", &[]),
            ("iban DE89 3704 0044 0532 0130 00 please", &["iban"]),
            ("iban GB82WEST12345698765432", &["iban"]),
            ("iban DE88 3704 0044 0532 0130 00", &[]),
            ("host 192.168.10.4 is down", &["ip_address"]),
            ("version 1.2.3.4.5 released", &[]),
            ("octets 300.1.1.1 are invalid", &[]),
            ("v6 2001:db8::8a2e:370:7334 up", &["ip_address"]),
            ("link fe80::1 up", &["ip_address"]),
            ("use std::fmt::Display and a::b", &[]),
            ("at 10:30:45 sharp", &[]),
            ("mac 00:1a:2b:3c:4d:5e", &[]),
            ("key sk-proj-abcdefghijklmnopqrstuvwx", &["secret"]),
            ("aws AKIAIOSFODNN7EXAMPLE here", &["secret"]),
            ("gh ghp_abcdefghijklmnopqrstuvwxyz0123456789", &["secret"]),
            ("-----BEGIN RSA PRIVATE KEY-----\nMIIE", &["secret"]),
            ("token Zx9Qp2LmN7vB4tR8wK1sY6hJ3gF5dC0aE", &["secret"]),
            (
                "sha 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
                &[],
            ),
            ("a plain sentence about the weather in spring", &[]),
        ];
        for (text, expected) in cases {
            let expected: Vec<String> = expected.iter().map(|s| (*s).to_owned()).collect();
            assert_eq!(fired(text), expected, "text: {text:?}");
        }
    }

    #[test]
    fn default_classes() {
        let rules = RuleSet::compile(&[]).unwrap();
        let cases = [
            ("a@b.io", Class::Internal),
            ("10.0.0.1", Class::Internal),
            ("4111 1111 1111 1111", Class::Confidential),
            ("GB82WEST12345698765432", Class::Confidential),
            ("AKIAIOSFODNN7EXAMPLE", Class::Confidential),
        ];
        for (text, class) in cases {
            assert_eq!(
                classify([text], Class::Public, None, &rules).class,
                class,
                "{text}"
            );
        }
    }
}
