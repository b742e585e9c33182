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

/// The first card number made of groups apart in `s`, its groups apart by
/// a space, if it has one. One is enough: only the card detector reads it,
/// and it fires once a request; more would only make the scan dearer.
pub(super) fn joined(s: &str) -> Vec<String> {
    // The groups of the current run.
    let mut groups: Vec<&str> = Vec::new();
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
        let group = GROUP.contains(&(i - start));
        if !near || !group {
            // A gap too wide, or a number of another length, ends the run.
            if let Some(card) = first_card(&groups) {
                return vec![card];
            }
            groups.clear();
            last_end = None;
        }
        if group {
            groups.push(&s[start..i]);
            last_end = Some(i);
            // A long run is checked as it goes, keeping the groups a card
            // number could still start in (it has at most four).
            if groups.len() >= 64 {
                if let Some(card) = first_card(&groups) {
                    return vec![card];
                }
                groups.drain(..groups.len() - 3);
            }
        }
    }
    first_card(&groups).into_iter().collect()
}

/// The first run of `groups` in a row that is a card number whole, its
/// groups apart by a space.
fn first_card(groups: &[&str]) -> Option<String> {
    let mut digits: Vec<u32> = Vec::with_capacity(24);
    for from in 0..groups.len() {
        digits.clear();
        for (k, group) in groups[from..].iter().enumerate() {
            digits.extend(group.bytes().map(|b| u32::from(b - b'0')));
            if digits.len() > 19 {
                break;
            }
            if k >= 2 && card_number(&digits) {
                return Some(groups[from..=from + k].join(" "));
            }
        }
    }
    None
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
            assert_eq!(joined(text), ["4539 1488 0343 6467"], "{text}");
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
        // In a long run, a card number is found wherever it stands.
        for at in [0, 60, 61, 62, 63, 64, 200] {
            let mut groups = vec!["1000"; 300];
            groups.splice(at..at + 4, ["4539", "1488", "0343", "6467"]);
            let text = groups.join(" and ");
            assert_eq!(joined(&text), ["4539 1488 0343 6467"], "at {at}");
        }
    }
}
