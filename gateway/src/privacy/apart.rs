//! A card number's groups with words between them, read joined.
//!
//! `first half 4539 1488, second half 0343 6467` or `4539, then 1488, then
//! 0343, then 6467`: the card detector allows a few separator characters
//! between digits, not words, and a model joins the groups all the same.
//! [`joined`] reads each run of groups of [`GROUP`] digits, each apart from
//! the next by at most [`MAX_GAP`] characters with no digit among them, and
//! keeps the groups in a row that make a card number whole
//! ([`super::builtin::card_number`]: 13 to 19 digits, an issuer's first
//! digits and Luhn's check). Numbers with words between them are common,
//! so only a whole card number counts, not a window of one (as the card
//! detector's windows of a digit run do), and only the card detector
//! reads what this gives ([`DETECTORS`]).

use super::builtin::card_number;

/// The detectors that read the joined groups.
pub(super) const DETECTORS: &[&str] = &["card"];

/// How many digits a group may have: cards are printed in groups of four
/// to six (`4539 1488 0343 6467`, `3782 822463 10005`). Not three: lists of
/// prices or room numbers are, and five of them make a card number's
/// length.
const GROUP: std::ops::RangeInclusive<usize> = 4..=6;

/// The most characters between two groups of one number.
const MAX_GAP: usize = 40;

/// Matches wherever [`joined`] could find groups to join: four digits in
/// a row. Run in the detectors' one pass; the rewriting itself is one pass
/// over the text.
pub(super) const GATE: &str = r"[0-9]{4}";

/// The card numbers made of groups apart in `s`, their groups apart by a
/// space, a line each; nothing if it has none.
pub(super) fn joined(s: &str) -> Vec<String> {
    // The groups of the current run.
    let mut groups: Vec<&str> = Vec::new();
    let mut out = String::new();
    let bytes = s.as_bytes();
    let mut i = 0;
    // Where the last group ended, to measure the gap to the next.
    let mut last_end: Option<usize> = None;
    while i < bytes.len() {
        if !bytes[i].is_ascii_digit() {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && bytes[i].is_ascii_digit() {
            i += 1;
        }
        let near = last_end.is_some_and(|end| start - end <= MAX_GAP);
        if !near {
            find_cards(&groups, &mut out);
            groups.clear();
        }
        if GROUP.contains(&(i - start)) {
            groups.push(&s[start..i]);
            last_end = Some(i);
        } else {
            // A number of another length ends the run.
            find_cards(&groups, &mut out);
            groups.clear();
            last_end = None;
        }
    }
    find_cards(&groups, &mut out);
    if out.is_empty() {
        Vec::new()
    } else {
        vec![out]
    }
}

/// Appends to `out` each run of `groups` in a row that is a card number
/// whole, its groups apart by a space, a line each.
fn find_cards(groups: &[&str], out: &mut String) {
    if groups.len() < 3 {
        return;
    }
    let mut digits: Vec<u32> = Vec::with_capacity(24);
    for from in 0..groups.len() {
        digits.clear();
        for (k, group) in groups[from..].iter().enumerate() {
            digits.extend(group.bytes().map(|b| u32::from(b - b'0')));
            if digits.len() > 19 {
                break;
            }
            if k >= 2 && card_number(&digits) {
                out.push_str(&groups[from..=from + k].join(" "));
                out.push('\n');
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::joined;

    #[test]
    fn groups_with_words_between_are_joined_when_a_card_number() {
        for text in [
            "first half 4539 1488, second half 0343 6467",
            "the first four digits are 4539, then 1488, then 0343, then 6467.",
            "4539 is the start; 1488 follows; 0343 and finally 6467",
            "order 12, card 4539 x 1488 y 0343 z 6467",
        ] {
            assert_eq!(joined(text), ["4539 1488 0343 6467\n"], "{text}");
        }
        for text in [
            // Groups too far apart, a number of another length between,
            // numbers that make no card number, too few groups.
            "4539 1488 and then, after a long pause of many many words, 0343 6467",
            "4539 1488 then 12345678 then 0343 6467",
            "in 2019, 2020, 2021 and 2022 we sold 1200 units",
            "rooms 301, 302, 415, 520 and 611 at $450, $320 or $275",
            "4539 then 1488",
            "",
        ] {
            assert!(joined(text).is_empty(), "{text}: {:?}", joined(text));
        }
    }
}
