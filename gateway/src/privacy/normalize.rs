//! Text normalisation before the detectors run.
//!
//! A detector that matches the raw text is bypassed by the first trick an
//! attacker tries: fullwidth digits (`４１１１`), a zero-width space inside a
//! card number, Arabic-Indic digits, a soft hyphen in an e-mail address. So
//! every text is normalised first:
//!
//! 1. format characters (Unicode category `Cf`: zero-width spaces and
//!    joiners, soft hyphens, bidi controls, tag characters, ...) are removed;
//! 2. the rest is brought to NFKC, which folds compatibility forms
//!    (fullwidth letters and digits, ligatures, `＠`, mathematical digits)
//!    onto their plain forms;
//! 3. decimal digits of every script become ASCII digits, so the digit-based
//!    validators (Luhn, mod-97) see them.
//!
//! ASCII text is already in that form and is returned borrowed: the common
//! case costs one scan for non-ASCII bytes.

use std::borrow::Cow;

use unicode_normalization::UnicodeNormalization;
use unicode_properties::{GeneralCategory, UnicodeGeneralCategory};

/// `text` with format characters removed, in NFKC, with ASCII digits.
#[must_use]
pub fn normalize(text: &str) -> Cow<'_, str> {
    if text.is_ascii() {
        return Cow::Borrowed(text);
    }
    Cow::Owned(
        text.chars()
            .filter(|c| c.general_category() != GeneralCategory::Format)
            .nfkc()
            .filter(|c| c.general_category() != GeneralCategory::Format)
            .map(ascii_digit)
            .collect(),
    )
}

/// A decimal digit of any script as its ASCII digit; other characters as
/// they are.
///
/// Unicode assigns every decimal digit (`Nd`) in runs of ten consecutive
/// code points, zero to nine, so a digit's value is how many `Nd` code
/// points precede it in its run, modulo ten (adjacent runs, as in the
/// mathematical digits, are each ten long).
fn ascii_digit(c: char) -> char {
    if c.is_ascii() || c.general_category() != GeneralCategory::DecimalNumber {
        return c;
    }
    let mut value = 0u32;
    let mut code = u32::from(c);
    while let Some(prev) = code.checked_sub(1).and_then(char::from_u32) {
        if prev.general_category() != GeneralCategory::DecimalNumber {
            break;
        }
        value += 1;
        code -= 1;
    }
    char::from_digit(value % 10, 10).unwrap_or(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folds_the_usual_evasions() {
        let cases = [
            ("plain ascii 4111", "plain ascii 4111"),
            // Fullwidth digits and at sign.
            ("４１１１ bob＠example.com", "4111 bob@example.com"),
            // Zero-width space, zero-width joiner, soft hyphen, BOM, word joiner.
            ("41\u{200b}11\u{200d}1\u{ad}1\u{feff}1\u{2060}1", "41111111"),
            // Bidi override and a tag character.
            ("a\u{202e}b\u{e0041}c", "abc"),
            // Arabic-Indic, Devanagari and mathematical bold digits.
            ("\u{664}\u{661}\u{661}\u{661}", "4111"),
            ("\u{96a}\u{967}", "41"),
            ("\u{1d7d2}\u{1d7cf}", "41"),
            // Ligature and fullwidth Latin letters.
            ("\u{fb01}le ＡＫＩＡ", "file AKIA"),
        ];
        for (input, want) in cases {
            assert_eq!(normalize(input), want, "{input:?}");
        }
    }

    #[test]
    fn ascii_is_borrowed() {
        assert!(matches!(normalize("hello"), Cow::Borrowed(_)));
    }
}
