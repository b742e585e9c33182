//! Addresses, card numbers and IBANs written backwards, read forwards.
//!
//! A model reverses `moc.elpmaxe@bob`, `7646 3430 8841 9354` or
//! `00 0310 2350 4400 4073 98ED` on request, so each is as readable to it
//! as written forwards. [`turned`] finds the places where one may stand
//! backwards and turns only them:
//!
//! - each word (between white space) with a dot before its at sign, as an
//!   address's domain is turned (`moc.elpmaxe@bob`), white space around
//!   the at sign taken out first (`moc.elpmaxe @ bob`);
//! - each run of 13 to 19 digits, apart by at most one separator, that is a
//!   card number whole once turned ([`super::builtin::card_number`]; the
//!   card detector tries every card-length window of a longer run, which
//!   turned would find one in an IBAN's digits or an order number as often
//!   as forwards);
//! - each run of letters and digits, apart by at most one separator, that
//!   ends in two digits and a country's code turned (`98ED`) and is an IBAN
//!   whole once turned ([`super::builtin::iban_at_start`]).
//!
//! The rest of the text is not turned: a finding that stands backwards
//! stands whole in one of these, and turning a whole text would double the
//! scan of every text. (At signs and dots spelt out, `moc tod elpmaxe ta
//! bob`, are words the backwards disguise looks for, [`super::disguise`].)
//!
//! Only the detectors of [`DETECTORS`] read what this gives: other shapes
//! turned (a date, a version, a phone number ending in 0) would pass for
//! phone numbers or addresses.

use std::borrow::Cow;
use std::sync::LazyLock;

use regex::Regex;

use super::builtin::{card_number, iban_at_start, iban_countries};

/// The detectors that read the turned text.
pub(super) const DETECTORS: &[&str] = &["card", "email", "iban"];

/// What may stand between the digits of a run (one at a time).
const SEPARATORS: &[char] = &[' ', '-', '.', '/', '_', ','];

/// The most characters an IBAN has.
const IBAN_MAX: usize = 34;

/// Matches wherever [`turned`] could turn anything: a dot and an at sign
/// after it in one word (or white space before the at sign), 13 digits
/// apart by at most one separator each, or two digits and a country's code
/// turned. Run in the detectors' one pass.
pub(super) fn gate() -> &'static str {
    static GATE: LazyLock<String> = LazyLock::new(|| {
        format!(
            r"\.[^\s@]*\s*@|[0-9](?:[ \-./_,]?[0-9]){{12}}|[0-9]{{2}}(?i:{})",
            countries_turned().join("|")
        )
    });
    &GATE
}

/// The IBAN countries' codes, each turned (`ED` for `DE`).
fn countries_turned() -> Vec<String> {
    iban_countries()
        .map(|c| c.chars().rev().collect())
        .collect()
}

/// White space around an at sign.
static SPACED_AT: LazyLock<Option<Regex>> = LazyLock::new(|| Regex::new(r"\s+@\s*|@\s+").ok());

/// Two digits and a country's code turned: where an IBAN written
/// backwards ends.
static IBAN_END: LazyLock<Option<Regex>> =
    LazyLock::new(|| Regex::new(&format!("[0-9]{{2}}(?i:{})", countries_turned().join("|"))).ok());

/// The words of `s` with a dot before an at sign, its digit runs that are
/// card numbers turned, and its runs that are IBANs turned, each turned
/// (its characters in reverse order), a line each; nothing if it has none.
pub(super) fn turned(s: &str) -> Vec<String> {
    let mut out = String::new();
    let turn = |out: &mut String, span: &str| {
        out.extend(span.chars().rev());
        out.push('\n');
    };
    let domain_first = |w: &&str| {
        w.split_once('@')
            .is_some_and(|(head, _)| head.contains('.'))
    };
    let squeezed = SPACED_AT
        .as_ref()
        .map_or(Cow::Borrowed(s), |at| at.replace_all(s, "@"));
    for word in squeezed.split(char::is_whitespace).filter(domain_first) {
        turn(&mut out, word);
    }
    // The digit run being read (where it starts and ends) and its first
    // 20 digits: a run of more is no card number.
    let mut run: Option<(usize, usize)> = None;
    let mut digits: Vec<u32> = Vec::with_capacity(20);
    let mut last_was_digit = false;
    for (at, c) in s.char_indices().chain(std::iter::once((s.len(), '\n'))) {
        if let Some(d) = c.to_digit(10) {
            run = Some((run.map_or(at, |(start, _)| start), at + 1));
            if digits.len() < 20 {
                digits.push(d);
            }
            last_was_digit = true;
            continue;
        }
        let goes_on = last_was_digit && SEPARATORS.contains(&c);
        last_was_digit = false;
        if !goes_on {
            if let Some((start, end)) = run.take() {
                digits.reverse();
                if card_number(&digits) {
                    turn(&mut out, &s[start..end]);
                }
            }
            digits.clear();
        }
    }
    for end in IBAN_END.iter().flat_map(|r| r.find_iter(s)) {
        if let Some(iban) = iban_before(&s[..end.end()]) {
            out.push_str(&iban);
            out.push('\n');
        }
    }
    if out.is_empty() {
        Vec::new()
    } else {
        vec![out]
    }
}

/// The IBAN that `s` ends with written backwards, turned: its letters and
/// digits read from the end, apart by at most one separator, as many as
/// its country's IBANs have.
fn iban_before(s: &str) -> Option<String> {
    let mut compact: Vec<u8> = Vec::with_capacity(IBAN_MAX);
    let mut apart = false;
    for c in s.chars().rev() {
        if c.is_ascii_alphanumeric() {
            compact.push(c.to_ascii_uppercase() as u8);
            apart = false;
            if compact.len() == IBAN_MAX {
                break;
            }
        } else if SEPARATORS.contains(&c) && !apart {
            apart = true;
        } else {
            break;
        }
    }
    let len = iban_at_start(&compact)?;
    Some(compact[..len].iter().map(|&b| char::from(b)).collect())
}

#[cfg(test)]
mod tests {
    use super::turned;

    #[test]
    fn addresses_and_digit_runs_are_turned() {
        assert_eq!(turned("mail moc.elpmaxe@bob today"), ["bob@example.com\n"]);
        assert_eq!(
            turned("card: 7646 3430 8841 9354."),
            ["4539 1488 0343 6467\n"]
        );
        assert_eq!(turned("7646-3430-8841-9354"), ["4539-1488-0343-6467\n"]);
        // Two separators in a row end a run; short runs, and runs that
        // are no card number turned, are not turned.
        assert!(turned("7646  3430 8841 9354").is_empty());
        assert!(turned("call 555 0123, order 12345").is_empty());
        assert!(turned("order 1234 5678 9012 3456").is_empty());
        assert!(turned("DE88 3704 0044 0532 0130 00").is_empty());
        assert!(turned("").is_empty());
        assert!(turned("plain prose without either").is_empty());
        assert!(turned("ask @support or bob@example.com").is_empty());
    }

    #[test]
    fn addresses_with_white_space_around_the_at_sign_are_turned() {
        for text in [
            "mail moc.elpmaxe @ bob today",
            "mail moc.elpmaxe@ bob today",
            "mail moc.elpmaxe @bob today",
            "mail moc.elpmaxe\t@\nbob today",
        ] {
            assert_eq!(turned(text), ["bob@example.com\n"], "{text:?}");
        }
        // A sentence's dot is no domain's.
        assert!(turned("ask Mr. Smith @ noon").is_empty());
    }

    #[test]
    fn ibans_written_backwards_are_turned() {
        let backwards = |s: &str| s.chars().rev().collect::<String>();
        for (iban, compact) in [
            ("DE89 3704 0044 0532 0130 00", "DE89370400440532013000"),
            ("GB82 WEST 1234 5698 7654 32", "GB82WEST12345698765432"),
            ("NL91 ABNA 0417 1643 00", "NL91ABNA0417164300"),
            (
                "fr14 2004 1010 0505 0001 3m02 606",
                "FR1420041010050500013M02606",
            ),
            ("DE89-3704-0044-0532-0130-00", "DE89370400440532013000"),
        ] {
            for text in [
                format!("my iban is {} thanks", backwards(iban)),
                format!("sent to{}", backwards(&format!("{iban}, ok"))),
                backwards(&format!("myiban{}xyz", iban.replace(' ', ""))),
            ] {
                assert_eq!(turned(&text), [format!("{compact}\n")], "{text:?}");
            }
        }
        // A wrong check digit, times of day and ordinals, an IBAN forwards.
        for text in [
            "00 0310 2350 4400 4073 88ED",
            "at 10am on the 12th, 90ed",
            "DE89 3704 0044 0532 0130 00",
            "98ED",
        ] {
            assert!(turned(text).is_empty(), "{text:?}");
        }
    }
}
