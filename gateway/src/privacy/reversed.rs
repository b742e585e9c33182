//! Addresses, card numbers and IBANs written backwards, read forwards.
//!
//! A model reverses `moc.elpmaxe@bob`, `7646 3430 8841 9354` or
//! `00 0310 2350 4400 4073 98ED` on request, so each is as readable to it
//! as written forwards. [`turned`] finds the places where one may stand
//! backwards and turns only them:
//!
//! - each word (between white space) with a dot before its at sign, as an
//!   address's domain is turned (`moc.elpmaxe@bob`), white space around
//!   the at sign taken out first (`moc.elpmaxe @ bob`), when what stands
//!   before its first dot is a top-level domain turned (so not
//!   `config.yaml @alice`);
//! - each run of 13 to 19 digits, apart by at most one separator, that is a
//!   card number whole once turned ([`super::builtin::card_number`]; the
//!   card detector tries every card-length window of a longer run, which
//!   turned would find one in an IBAN's digits or an order number as often
//!   as forwards);
//! - each run of letters and digits, apart by at most one separator, that
//!   ends in two digits and a country's code turned (`98ED`) and is an IBAN
//!   whole once turned ([`super::builtin::iban_at_start`]), in a text that
//!   holds 13 digits in a row somewhere (the gate's), as most IBANs do in
//!   their account numbers; a Dutch IBAN's ten do not suffice.
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

/// Matches wherever [`turned`] could turn anything: a letter, a dot and
/// an at sign after it (white space before the at sign allowed, not after
/// the dot: `Thanks. @bob` is no address), or 13 digits apart by at most
/// one separator each, which most IBANs hold too (their account numbers).
/// Run in the detectors' one pass. (The end of an IBAN written backwards,
/// two digits and a country's code turned, is not in it: any such pattern
/// made the one pass half as fast again on escaped text.)
pub(super) const GATE: &str = r"[A-Za-z]\.[^\s@]+\s*@|[0-9](?:[ \-./_,]?[0-9]){12}";

/// White space around an at sign, and the character before it, when that
/// is no dot ending a sentence.
static SPACED_AT: LazyLock<Option<Regex>> =
    LazyLock::new(|| Regex::new(r"(?P<c>[^\s.])\s+@\s*|@\s+").ok());

/// Two digits and a country's code turned, not followed by a hex digit:
/// where an IBAN written backwards ends. (In hex, `12ed` is everywhere.)
static IBAN_END: LazyLock<Option<Regex>> = LazyLock::new(|| {
    let countries: Vec<String> = iban_countries()
        .map(|c| c.chars().rev().collect())
        .collect();
    Regex::new(&format!(
        r"[0-9]{{2}}(?i:{})(?:[^0-9A-Fa-f]|\z)",
        countries.join("|")
    ))
    .ok()
});

/// The words of `s` with a dot before an at sign, its digit runs that are
/// card numbers turned, and its runs that are IBANs turned, each turned
/// (its characters in reverse order), a line each; nothing if it has none.
pub(super) fn turned(s: &str) -> Vec<String> {
    let mut out = String::new();
    let turn = |out: &mut String, span: &str| {
        out.extend(span.chars().rev());
        out.push('\n');
    };
    // A letter a dot (`m.o.c.e.l.p.m.a.x.e@b.o.b`) has no telling where
    // the top-level domain ends.
    let domain_first = |w: &&str| {
        w.split_once('@').is_some_and(|(head, _)| {
            head.split_once('.').is_some_and(|(tld, _)| {
                top_level_turned(tld) || head.split('.').all(|part| part.chars().count() <= 1)
            })
        })
    };
    let squeezed = SPACED_AT
        .as_ref()
        .map_or(Cow::Borrowed(s), |at| at.replace_all(s, "${c}@"));
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
        // Where the code ends, not the character after it.
        if let Some(iban) = iban_before(&s[..end.start() + 4]) {
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

/// Top-level domains beyond the countries', turned.
const GENERIC_TLDS_TURNED: &[&str] = &[
    "moc", "gro", "ten", "ude", "vog", "lim", "tni", "ofni", "zib", "eman", "orp", "oi", "ia",
    "ppa", "ved", "zyx", "enilno", "etis", "hcet", "erots", "duolc", "liame", "liam", "pohs",
    "golb", "swen", "kroc", "proc", "lacol", "lanretni", "nal", "emoh", "tset", "elpmaxe",
];

/// Whether `word`, turned, is a top-level domain: a country's (any two
/// letters) or a common generic one. What stands before a word's first
/// dot is, turned, an address's top-level domain: `moc` in
/// `moc.elpmaxe@bob`; not `file` in `file.txt @bob`, which turned would
/// pass for an address (`bob@txt.elif`).
fn top_level_turned(word: &str) -> bool {
    (word.len() == 2 && word.bytes().all(|b| b.is_ascii_alphabetic()))
        || GENERIC_TLDS_TURNED
            .iter()
            .any(|t| t.eq_ignore_ascii_case(word))
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
        for text in [
            "mail moc.elpmaxe.liam @ bob",
            "mail ed.elpmaxe@ bob",
            "mail lanretni.proc @bob",
        ] {
            assert_eq!(turned(text).len(), 1, "{text:?}");
        }
        // A sentence's dot is no domain's, and a file's name is not a
        // domain turned.
        for text in [
            "ask Mr. Smith @ noon",
            "Thanks. @bob",
            "fixed in config.yaml @alice",
            "see README.md @team",
            "file.txt@bob",
        ] {
            assert!(turned(text).is_empty(), "{text:?}");
        }
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
            // In hex, a country's code turned is no end.
            "00031023504400407398edab",
        ] {
            assert!(turned(text).is_empty(), "{text:?}");
        }
    }
}
