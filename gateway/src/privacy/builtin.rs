//! The builtin detector table.
//!
//! Each entry is a regex that finds *candidates* cheaply and an optional
//! validator that rejects look-alikes (a digit run with no Luhn-valid card
//! in it, a version string shaped like an IPv4 address). Several entries
//! may share a detector name: "secret" is a family of token shapes.
//!
//! Every builtin raises a request to `confidential`: personal data (e-mail
//! addresses, phone numbers, network addresses) must not leave the premises
//! any more than card numbers or keys do, unless the tenant decides so. A
//! tenant lowers one detector with a builtin rule row
//! (`gateway privacy rule add --builtin --name email --class internal
//! --tenant acme`).
//!
//! The patterns run on normalised text (see [`super::normalize`]), whose
//! digits are ASCII, accept any short run of separators between digit
//! groups (any whitespace, any ASCII punctuation, Unicode dashes and
//! bullets) and are case-insensitive where the format is. The separator
//! class is spelt out rather than "anything but a letter or digit": a
//! negated Unicode class repeated this often compiles past the regex size
//! limit. They err towards finding: a false finding keeps a request
//! on the premises, a missed one leaks it.
//!
//! Word boundaries are ASCII ones (`(?-u:\b)`): a letter outside ASCII
//! next to a token counts as a boundary, so `SchlüsseléAKIA…` is still
//! found (a Unicode `\b` sees no boundary between two letters). They also
//! keep the scan on the regex crate's DFA, which gives up on Unicode word
//! boundaries as soon as the text holds a byte outside ASCII and falls
//! back to a slower engine (the whole scan of such text took 205 ns a byte
//! with Unicode boundaries, 44 with ASCII ones; `benches/privacy_scan.rs`).

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
pub const BUILTIN_NAMES: &[&str] = &[
    "card",
    "email",
    "iban",
    "ip_address",
    "marker",
    "media",
    "national_id",
    "phone",
    "secret",
];

const IPV4: &str = r"(?-u:\b)(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(?-u:\b)";

pub(super) const BUILTINS: &[Builtin] = &[
    Builtin {
        // An address as written, or written to get past a filter: the at
        // sign spaced or spelt in brackets (`bob @ example.com`, `bob (at)
        // example [dot] com`), dots spaced or spelt, in any case.
        name: "email",
        pattern: concat!(
            r"(?i)[\p{L}\p{N}._%+'-]+(?:\s*@\s*|\s*[(\[{<]\s*(?:at|@)\s*[)\]}>]\s*)",
            r"[\p{L}\p{N}-]+(?:(?:\s*\.\s*|\s*[(\[{<]\s*(?:dot|\.)\s*[)\]}>]\s*|\s+dot\s+)[\p{L}\p{N}-]+)*",
            r"(?:\s*\.\s*|\s*[(\[{<]\s*(?:dot|\.)\s*[)\]}>]\s*|\s+dot\s+)\p{L}{2,}",
        ),
        validate: None,
        class: Class::Confidential,
    },
    Builtin {
        // The at sign spelt as a bare word (`bob at example dot com`): the
        // last dot must be spelt too, or "look at example.com" would be an
        // address.
        name: "email",
        pattern: concat!(
            r"(?i)[\p{L}\p{N}._%+'-]+\s+at\s+",
            r"[\p{L}\p{N}-]+(?:(?:\s*\.\s*|\s*[(\[{<]\s*(?:dot|\.)\s*[)\]}>]\s*|\s+dot\s+)[\p{L}\p{N}-]+)*",
            r"(?:\s*[(\[{<]\s*(?:dot|\.)\s*[)\]}>]\s*|\s+dot\s+)\p{L}{2,}",
        ),
        validate: None,
        class: Class::Confidential,
    },
    Builtin {
        name: "phone",
        // International form (+ then 7-15 digits in groups), North American
        // forms, three groups of 3-3-4 digits, with any separators, and
        // national forms behind a trunk 0.
        pattern: concat!(
            r"\+[\s!-/:-@\[-`{-~\u{2010}-\u{2015}\u{b7}\u{2022}\u{2212}\u{30fc}\u{3001}\u{ff64}]{0,2}[0-9]",
            r"(?:[\s!-/:-@\[-`{-~\u{2010}-\u{2015}\u{b7}\u{2022}\u{2212}\u{30fc}\u{3001}\u{ff64}]{0,3}[0-9]){6,14}",
            r"|\([0-9]{3}\)[\s!-/:-@\[-`{-~\u{2010}-\u{2015}\u{b7}\u{2022}\u{2212}\u{30fc}\u{3001}\u{ff64}]{0,3}[0-9]{3}",
            r"[\s!-/:-@\[-`{-~\u{2010}-\u{2015}\u{b7}\u{2022}\u{2212}\u{30fc}\u{3001}\u{ff64}]{0,3}[0-9]{4}",
            r"|[0-9]{3}[\s!-/:-@\[-`{-~\u{2010}-\u{2015}\u{b7}\u{2022}\u{2212}\u{30fc}\u{3001}\u{ff64}]{1,3}[0-9]{3}",
            r"[\s!-/:-@\[-`{-~\u{2010}-\u{2015}\u{b7}\u{2022}\u{2212}\u{30fc}\u{3001}\u{ff64}]{1,3}[0-9]{4}",
            // National forms behind a trunk 0, in groups (020 7946 0958,
            // 07700 900123, 01 23 45 67 89); the validator wants 10 or 11
            // digits.
            r"|(?-u:\b)0[0-9]{1,4}(?:[\s.\-\u{2010}-\u{2015}]{1,2}[0-9]{2,6}){1,4}(?-u:\b)",
        ),
        validate: Some(phone_digits),
        class: Class::Confidential,
    },
    Builtin {
        name: "card",
        // A run of 13 or more digits with up to six separator characters
        // between any two (a line break and an indent, the cells of a
        // table); the validator tries every card-length window.
        pattern: r"[0-9](?:[\s!-/:-@\[-`{-~\u{2010}-\u{2015}\u{b7}\u{2022}\u{2212}\u{30fc}\u{3001}\u{ff64}]{0,6}[0-9]){12,}",
        validate: Some(card),
        class: Class::Confidential,
    },
    Builtin {
        name: "iban",
        pattern: r"(?i)[A-Z]{2}[0-9]{2}(?:[\s!-/:-@\[-`{-~\u{2010}-\u{2015}\u{b7}\u{2022}\u{2212}\u{30fc}\u{3001}\u{ff64}]{0,2}[A-Z0-9]){11,32}",
        validate: Some(iban),
        class: Class::Confidential,
    },
    Builtin {
        // A US social security number in its written form (3-2-4 digits,
        // separated); the validator drops numbers never issued.
        name: "national_id",
        pattern: r"(?-u:\b)[0-9]{3}[\s\-\u{2010}-\u{2015}.][0-9]{2}[\s\-\u{2010}-\u{2015}.][0-9]{4}(?-u:\b)",
        validate: Some(ssn),
        class: Class::Confidential,
    },
    Builtin {
        // A document's classification banner, in capitals as banners are
        // written; "confidential" in lower case is prose.
        name: "marker",
        pattern: r"(?-u:\b)(?:(?:STRICTLY |HIGHLY )?CONFIDENTIAL|INTERNAL USE ONLY|DO NOT (?:DISTRIBUTE|FORWARD|SHARE)|NOT FOR (?:DISTRIBUTION|EXTERNAL USE)|PRIVILEGED (?:AND|&) CONFIDENTIAL)(?-u:\b)",
        validate: None,
        class: Class::Confidential,
    },
    Builtin {
        name: "ip_address",
        pattern: IPV4,
        validate: Some(not_in_dotted_run),
        class: Class::Confidential,
    },
    Builtin {
        name: "ip_address",
        pattern: r"(?i)[0-9a-f:]*:[0-9a-f]*:[0-9a-f:.]*",
        validate: Some(ipv6),
        class: Class::Confidential,
    },
    Builtin {
        name: "secret",
        pattern: r"(?i)-----BEGIN [A-Z ]*PRIVATE KEY-----",
        validate: None,
        class: Class::Confidential,
    },
    Builtin {
        name: "secret",
        pattern: r"(?i)(?-u:\b)(?:sk-(?:proj-|ant-)?[A-Za-z0-9_-]{20,}|AKIA[0-9A-Z]{16}|gh[pousr]_[A-Za-z0-9]{36,}|xox[abprs]-[A-Za-z0-9-]{10,}|AIza[0-9A-Za-z_-]{35}|gw-[0-9a-f]{64})(?-u:\b)",
        validate: None,
        class: Class::Confidential,
    },
    Builtin {
        // A credential written as an assignment (`password: hunter2`,
        // `api_key=...`), whatever its shape.
        name: "secret",
        pattern: r"(?i)(?-u:\b)(?:password|passwd|passphrase|pwd|secret|api[_-]?key|access[_-]?key|auth[_-]?token|client[_-]?secret)[\s\x22']*[:=][\s\x22']*[^\s\x22',;]{4,}",
        validate: None,
        class: Class::Confidential,
    },
    Builtin {
        name: "secret",
        pattern: r"(?-u:\b)eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}",
        validate: None,
        class: Class::Confidential,
    },
    Builtin {
        name: "secret",
        pattern: r"[A-Za-z0-9+/_=-]{32,}",
        validate: Some(high_entropy),
        class: Class::Confidential,
    },
    Builtin {
        // Content no detector can read (an image, audio or file part, a
        // remote image, a `data:` URL), which the extractor stands in for
        // with U+FFFC ([`super::extract::OPAQUE`]): unscanned, so it stays
        // on the premises unless the tenant lowers this detector.
        name: "media",
        pattern: "\u{fffc}",
        validate: None,
        class: Class::Confidential,
    },
];

fn digits(s: &str) -> Vec<u32> {
    s.chars().filter_map(|c| c.to_digit(10)).collect()
}

/// 7 to 15 digits; 10 or 11 behind a trunk 0, the length of national
/// numbers, which a date (`01.12.2024`) is not.
fn phone_digits(text: &str, start: usize, end: usize) -> bool {
    let n = digits(&text[start..end]).len();
    if text[start..].starts_with('0') {
        (10..=11).contains(&n)
    } else {
        (7..=15).contains(&n)
    }
}

/// An SSN as issued: no area 000, 666 or 900-999, no group 00, no serial
/// 0000.
fn ssn(text: &str, start: usize, end: usize) -> bool {
    let d = digits(&text[start..end]);
    let area = d[0] * 100 + d[1] * 10 + d[2];
    area != 0 && area != 666 && area < 900 && d[3..5] != [0, 0] && d[5..] != [0, 0, 0, 0]
}

/// Some window of 13 to 19 consecutive digits passes Luhn. A window of one
/// repeated digit is a placeholder, not a card.
fn card(text: &str, start: usize, end: usize) -> bool {
    let d = digits(&text[start..end]);
    (13..=19.min(d.len())).any(|len| d.windows(len).any(luhn))
}

fn luhn(d: &[u32]) -> bool {
    if d.iter().all(|&x| x == d[0]) {
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

/// ISO 13616 mod-97 on the letters and digits of the hit. The regex may
/// swallow characters after the IBAN's end, so every prefix of a valid
/// IBAN length is tried; and it may start before it (at `AB12` in
/// `AB12, IBAN GB40…`, a leftmost match that then covers the IBAN), so
/// every start of the hit's shape (two letters, two digits) is tried too.
fn iban(text: &str, start: usize, end: usize) -> bool {
    let compact: Vec<u8> = text[start..end]
        .bytes()
        .filter(u8::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_uppercase())
        .collect();
    (0..compact.len().saturating_sub(14)).any(|from| {
        let rest = &compact[from..];
        rest[..2].iter().all(u8::is_ascii_alphabetic)
            && rest[2..4].iter().all(u8::is_ascii_digit)
            && (15..=rest.len().min(34)).any(|n| iban_checksum(&rest[..n]))
    })
}

fn iban_checksum(compact: &[u8]) -> bool {
    if !(15..=34).contains(&compact.len()) {
        return false;
    }
    let (head, tail) = compact.split_at(4);
    let mut rem: u32 = 0;
    for &c in tail.iter().chain(head) {
        let Some(v) = char::from(c).to_digit(36) else {
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
///
/// A hit glued to a word on its left is read as a label and its colon
/// (`IPv6:2001:db8::1`, `ip:fe80::1`): what follows the hit's first colon
/// is the candidate.
fn ipv6(text: &str, start: usize, end: usize) -> bool {
    let is_ident = |c: char| c.is_alphanumeric() || c == '_';
    if text[end..].chars().next().is_some_and(is_ident) {
        return false;
    }
    let mut candidate = &text[start..end];
    if text[..start].chars().next_back().is_some_and(is_ident) {
        let Some((_, after)) = candidate.split_once(':') else {
            return false;
        };
        candidate = after;
    }
    let candidate = candidate.trim_end_matches(['.', ':']);
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
    #[allow(clippy::too_many_lines)]
    fn detectors_table() {
        let cases: &[(&str, &[&str])] = &[
            ("write to jane.doe@corp.example.com today", &["email"]),
            ("not an email: user@localhost", &[]),
            ("write to bob @ example.com", &["email"]),
            ("write to bob@example . com", &["email"]),
            ("write to bob (at) example (dot) com", &["email"]),
            ("write to bob[at]example[dot]co[dot]uk", &["email"]),
            ("write to bob {AT} example {DOT} com", &["email"]),
            ("write to bob <at> example.com", &["email"]),
            ("write to bob [@] example [.] com", &["email"]),
            ("write to bob@example(dot)com", &["email"]),
            ("write to bob at example dot com", &["email"]),
            ("write to bob AT example DOT org", &["email"]),
            ("write to bob at mail.example (dot) com", &["email"]),
            ("look at example.com for the docs", &[]),
            ("the file is at src.main and the other at lib", &[]),
            ("meet at noon, then dinner at eight", &[]),
            ("see @mention and @team in the thread", &[]),
            ("call +1 415 555 0132", &["phone"]),
            ("call (415) 555-0132", &["phone"]),
            ("call 415-555-0132", &["phone"]),
            ("call 415 555 0132", &["phone"]),
            ("call 415/555/0132", &["phone"]),
            ("call +44 (20) 7946-0958", &["phone"]),
            ("call +33.1.23.45.67.89", &["phone"]),
            ("call 020 7946 0958", &["phone"]),
            ("call 07700 900123", &["phone"]),
            ("appelez le 01 23 45 67 89", &["phone"]),
            ("due 01.12.2024 at noon", &[]),
            ("ssn 078-05-1120 on file", &["national_id"]),
            ("ssn 078 05 1120 on file", &["national_id"]),
            ("never issued 666-05-1120 or 078-00-1120", &[]),
            ("CONFIDENTIAL: board minutes", &["marker"]),
            ("Privileged & Confidential", &[]),
            ("PRIVILEGED AND CONFIDENTIAL", &["marker"]),
            ("this is confidential between us", &[]),
            ("password: hunter2!Secret", &["secret"]),
            ("set API_KEY=\"abcd1234\" first", &["secret"]),
            ("the password field is required", &[]),
            ("write to jöhn.müller@beispiel.de", &["email"]),
            ("write to O'Brien@corp.example", &["email"]),
            ("pay with 4111 1111 1111 1111", &["card"]),
            ("pay with 5500-0000-0000-0004", &["card"]),
            ("pay with 378282246310005", &["card"]),
            // Every card-length window of a digit run is tried: this
            // 16-digit run fails Luhn, its last 13 digits pass.
            ("order 4111111111111112 shipped", &["card"]),
            ("ref 20240315120001 shipped", &[]),
            ("pay 4111.1111.1111.1111", &["card"]),
            ("pay 4111/1111/1111/1111", &["card"]),
            ("pay 4111_1111_1111_1111", &["card"]),
            ("pay 4111 - 1111 - 1111 - 1111", &["card"]),
            ("pay 4111\n1111\n1111\n1111", &["card"]),
            ("card:\n    4111\n    1111\n    1111\n    1111", &["card"]),
            ("pay 4111    1111    1111    1111", &["card"]),
            ("| 4111  | 1111  | 1111  | 1111  |", &["card"]),
            ("pay 4111\u{2212}1111\u{2212}1111\u{2212}1111", &["card"]),
            ("pay 4111\u{30fc}1111\u{30fc}1111\u{30fc}1111", &["card"]),
            ("pay 4111\u{3001}1111\u{3001}1111\u{3001}1111", &["card"]),
            ("pay 99 4111 1111 1111 1111 88 77", &["card"]),
            ("zeros 0000 0000 0000 0000", &[]),
            // An IBAN's digits are also a long digit run, and some
            // card-length window of it passes Luhn: the card detector fires
            // too (both are confidential). A wrong checksum leaves only that.
            ("iban DE89 3704 0044 0532 0130 00 please", &["card", "iban"]),
            ("iban GB82WEST12345698765432", &["card", "iban"]),
            ("iban de89 3704 0044 0532 0130 00", &["card", "iban"]),
            ("iban DE89.3704.0044.0532.0130.00", &["card", "iban"]),
            ("myibanDE89370400440532013000xyz", &["card", "iban"]),
            // A code of the same shape first: the match starts there and
            // covers the IBAN, which is still found.
            ("Invoice AB12, IBAN GB40 WEST 5260 1815 9083 01", &["iban"]),
            ("FY24 payment to GB40 WEST 5260 1815 9083 01", &["iban"]),
            ("iban DE88 3704 0044 0532 0130 00", &["card"]),
            ("host 192.168.10.4 is down", &["ip_address"]),
            ("version 1.2.3.4.5 released", &[]),
            ("octets 300.1.1.1 are invalid", &[]),
            ("v6 2001:db8::8a2e:370:7334 up", &["ip_address"]),
            ("link fe80::1 up", &["ip_address"]),
            ("IPv6:2001:db8::8a2e:370:7334", &["ip_address"]),
            ("ip:fe80::1", &["ip_address"]),
            ("let v = Vec::new(); crate::ab::f", &[]),
            ("use std::fmt::Display and a::b", &[]),
            ("at 10:30:45 sharp", &[]),
            ("mac 00:1a:2b:3c:4d:5e", &[]),
            ("key sk-proj-abcdefghijklmnopqrstuvwx", &["secret"]),
            ("aws AKIAIOSFODNN7EXAMPLE here", &["secret"]),
            ("gh ghp_abcdefghijklmnopqrstuvwxyz0123456789", &["secret"]),
            ("-----BEGIN RSA PRIVATE KEY-----\nMIIE", &["secret"]),
            ("-----begin private key-----", &["secret"]),
            ("key SK-PROJ-ABCDEFGHIJKLMNOPQRSTUVWX", &["secret"]),
            ("token Zx9Qp2LmN7vB4tR8wK1sY6hJ3gF5dC0aE", &["secret"]),
            (
                "sha 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
                &[],
            ),
            ("a plain sentence about the weather in spring", &[]),
            // Glued to letters outside ASCII: a word boundary between
            // "é" and "A" is ASCII's, not Unicode's (where both are word
            // characters and the token would go unseen).
            ("SchlüsseléAKIAIOSFODNN7EXAMPLEü", &["secret"]),
            ("clésk-proj-abcdefghijklmnopqrstuvwx", &["secret"]),
            ("hôté192.168.10.4é", &["ip_address"]),
            (
                "jetonéeyJhbGciOiJIUzI1.eyJzdWIiOiIxMjM0.SflKxwRJSMeKKF2QT4",
                &["secret"],
            ),
        ];
        for (text, expected) in cases {
            let expected: Vec<String> = expected.iter().map(|s| (*s).to_owned()).collect();
            assert_eq!(fired(text), expected, "text: {text:?}");
        }
    }

    #[test]
    fn every_builtin_is_confidential_by_default() {
        let rules = RuleSet::compile(&[]).unwrap();
        let cases = [
            ("a@b.io", "email"),
            ("call +1 415 555 0132", "phone"),
            ("10.0.0.1", "ip_address"),
            ("fe80::1", "ip_address"),
            ("4111 1111 1111 1111", "card"),
            ("GB82WEST12345698765432", "iban"),
            ("078-05-1120", "national_id"),
            ("STRICTLY CONFIDENTIAL", "marker"),
            ("AKIAIOSFODNN7EXAMPLE", "secret"),
            // What the extractor puts for a part no detector can read.
            ("\u{fffc}", "media"),
        ];
        for (text, name) in cases {
            let got = classify([text], Class::Public, None, &rules);
            assert!(
                got.fired.contains(&name.to_owned()),
                "{text}: {:?}",
                got.fired
            );
            assert_eq!(got.class, Class::Confidential, "{text}");
        }
        let names: Vec<&str> = cases.iter().map(|(_, n)| *n).collect();
        for builtin in super::BUILTIN_NAMES {
            assert!(names.contains(builtin), "{builtin} has no case");
        }
    }

    #[test]
    fn normalisation_defeats_evasions() {
        let cases = [
            (
                "pay \u{ff14}\u{ff11}\u{ff11}\u{ff11} \u{ff11}\u{ff11}\u{ff11}\u{ff11} 1111 1111",
                "card",
            ),
            ("pay 4111\u{200b}1111\u{200b}1111\u{200b}1111", "card"),
            ("pay \u{664}\u{661}\u{661}\u{661}111111111111", "card"),
            ("bob\u{200b}@example\u{ad}.com", "email"),
            ("bob\u{ff20}example.com", "email"),
            ("AKIA\u{2060}IOSFODNN7EXAMPLE", "secret"),
        ];
        let rules = RuleSet::compile(&[]).unwrap();
        for (text, name) in cases {
            let got = classify([text], Class::Public, None, &rules);
            assert_eq!(got.fired, vec![name.to_owned()], "{text:?}");
        }
    }
}
