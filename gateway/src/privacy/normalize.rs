//! Text normalisation before the detectors run.
//!
//! A detector that matches the raw text is bypassed by the first trick an
//! attacker tries: fullwidth digits (`４１１１`), a zero-width space inside a
//! card number, Arabic-Indic digits, a soft hyphen in an e-mail address. So
//! every text is normalised first:
//!
//! 1. format characters (Unicode category `Cf`: zero-width spaces and
//!    joiners, soft hyphens, bidi controls, ...) are removed, except the
//!    tag characters (U+E0020 to U+E007E), which become the ASCII they
//!    shadow: invisible, yet a model reads text written in them;
//! 2. the rest is brought to NFKC, which folds compatibility forms
//!    (fullwidth letters and digits, ligatures, `＠`, mathematical digits)
//!    onto their plain forms;
//! 3. what is still invisible is removed: format characters, combining
//!    marks NFKC did not compose into a letter (the combining grapheme
//!    joiner, variation selectors, a keycap around a digit), control
//!    characters other than tab and line breaks, and the fillers that
//!    render blank (Hangul fillers, the blank Braille pattern). Each would
//!    otherwise sit between two digits or before an `@` and break a match
//!    while the model reads straight through it;
//! 4. decimal digits of every script become ASCII digits, so the digit-based
//!    validators (Luhn, mod-97) see them, and so do the digits NFKC leaves
//!    alone: the dingbat and double-circled digits (`❹`, `➍`, `⓸`) and the
//!    CJK numerals (`四五三九`);
//! 5. punctuation and symbols outside ASCII become `.`, which every
//!    detector takes as a separator and the e-mail detector as a dot: a
//!    table's box-drawing bar or an arrow between digit groups, a CJK full
//!    stop (`。`, which IDNA reads as a dot) in an address. (Not U+FFFC,
//!    which stands for what no detector could read.) A dash or the minus
//!    sign beside a dot or a dash of Morse code (`·—·`, `— · —`) becomes
//!    `-` instead ([`morse_dashes`]); elsewhere it is a dot like the rest
//!    (`bob@example—com`, `10—0—0—1`).
//!
//! Before all that, text in Braille cells (U+2801 to U+28FF) is read as
//! the letters, digits and signs it spells in English Braille, grade 1
//! ([`unbraille`]): to a pattern it is symbols, to a model `⠃⠕⠃⠈⠁…` is
//! `bob@…`. A blank cell between cells is a space there.
//!
//! Printable ASCII text (with tabs and line breaks) is already in that form
//! and is returned borrowed: the common case costs one scan of its bytes.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::LazyLock;

use unicode_normalization::UnicodeNormalization;
use unicode_properties::{GeneralCategory, UnicodeGeneralCategory};
use unicode_security::confusable_detection::skeleton;

/// `text` in NFKC, without invisible characters, with ASCII digits.
#[must_use]
pub fn normalize(text: &str) -> Cow<'_, str> {
    if text
        .bytes()
        .all(|b| (0x20..0x7f).contains(&b) || matches!(b, b'\t' | b'\n' | b'\r'))
    {
        return Cow::Borrowed(text);
    }
    let read = unbraille(text);
    let read = morse_dashes(&read);
    Cow::Owned(
        read.chars()
            .map(untag)
            .map(unparenthesise)
            .filter(|c| c.general_category() != GeneralCategory::Format)
            .nfkc()
            .filter(|c| !invisible(*c))
            .map(ascii_digit)
            .map(ascii_letter)
            .map(ascii_space)
            .map(ascii_punctuation)
            .collect(),
    )
}

/// The letters `a` to `z` in English Braille, as the dots of their cells
/// (bit `n - 1` for dot `n`); the first ten are the digits `1` to `0`
/// after the number sign.
const BRAILLE_LETTERS: [u8; 26] = [
    0x01, 0x03, 0x09, 0x19, 0x11, 0x0b, 0x1b, 0x13, 0x0a, 0x1a, 0x05, 0x07, 0x0d, 0x1d, 0x15, 0x0f,
    0x1f, 0x17, 0x0e, 0x1e, 0x25, 0x27, 0x3a, 0x2d, 0x3d, 0x35,
];

/// English Braille's signs that are not letters: the number sign, the
/// capital sign, the prefix of `@` (dot 4), and the punctuation that
/// stands in addresses and numbers.
const BRAILLE_NUMBER: u8 = 0x3c;
const BRAILLE_CAPITAL: u8 = 0x20;
const BRAILLE_AT_PREFIX: u8 = 0x08;
const BRAILLE_SIGNS: [(u8, char); 6] = [
    (0x32, '.'),
    (0x24, '-'),
    (0x02, ','),
    (0x12, ':'),
    (0x2c, '/'),
    (0x06, ';'),
];

/// The dots of a Braille cell, if `c` is one (the blank cell included).
fn braille_dots(c: char) -> Option<u8> {
    u32::from(c)
        .checked_sub(0x2800)
        .and_then(|d| u8::try_from(d).ok())
}

/// `text` with its Braille read (see the module's documentation); borrowed
/// when it has no cell but the blank one. Cells that spell nothing here
/// stay as they are (and become `.` in step 5).
fn unbraille(text: &str) -> Cow<'_, str> {
    if !text
        .chars()
        .any(|c| braille_dots(c).is_some_and(|d| d != 0))
    {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    let mut number = false;
    let mut capitals = 0u8;
    let mut after_cell = false;
    while let Some(c) = chars.next() {
        let Some(dots) = braille_dots(c) else {
            out.push(c);
            number = false;
            capitals = 0;
            after_cell = false;
            continue;
        };
        let letter = BRAILLE_LETTERS
            .iter()
            .position(|&l| l == dots)
            .and_then(|i| u8::try_from(i).ok());
        match (dots, letter) {
            (0, _) => {
                out.push(if after_cell { ' ' } else { c });
                number = false;
                capitals = 0;
            }
            (BRAILLE_NUMBER, _) => number = true,
            (BRAILLE_CAPITAL, _) => capitals = capitals.saturating_add(1),
            (BRAILLE_AT_PREFIX, _)
                if chars.peek().copied().and_then(braille_dots) == Some(BRAILLE_LETTERS[0]) =>
            {
                chars.next();
                out.push('@');
                number = false;
            }
            (_, Some(i)) if number && i < 10 => out.push(char::from(b'0' + (i + 1) % 10)),
            (_, Some(i)) => {
                number = false;
                let l = char::from(b'a' + i);
                out.push(if capitals > 0 {
                    l.to_ascii_uppercase()
                } else {
                    l
                });
                if capitals == 1 {
                    capitals = 0;
                }
            }
            _ => {
                capitals = 0;
                if let Some(&(_, sign)) = BRAILLE_SIGNS.iter().find(|(d, _)| *d == dots) {
                    // A point or comma within a number keeps it a number.
                    number &= matches!(sign, '.' | ',');
                    out.push(sign);
                } else {
                    number = false;
                    out.push(c);
                }
            }
        }
        after_cell = true;
    }
    Cow::Owned(out)
}

/// `text` in English Braille as [`unbraille`] reads it (capital letters
/// one sign each, digits after the number sign); `None` if it holds a
/// character not written here.
#[cfg(test)]
pub(super) fn braille(text: &str) -> Option<String> {
    let cell = |dots: u8| char::from_u32(0x2800 + u32::from(dots));
    let mut out = String::new();
    let mut number = false;
    for c in text.chars() {
        let lower = c.to_ascii_lowercase();
        if let Some(d) = c.to_digit(10) {
            if !number {
                out.extend(cell(BRAILLE_NUMBER));
                number = true;
            }
            out.extend(cell(BRAILLE_LETTERS[(d as usize + 9) % 10]));
            continue;
        }
        if c.is_ascii_alphabetic() {
            if number && lower <= 'j' {
                // A letter a to j after digits is read as a digit.
                return None;
            }
            if c.is_ascii_uppercase() {
                out.extend(cell(BRAILLE_CAPITAL));
            }
            out.extend(cell(BRAILLE_LETTERS[usize::from(lower as u8 - b'a')]));
        } else if c == ' ' {
            out.extend(cell(0));
        } else if c == '@' {
            out.extend(cell(BRAILLE_AT_PREFIX));
            out.extend(cell(BRAILLE_LETTERS[0]));
        } else {
            let dots = BRAILLE_SIGNS.iter().find(|(_, s)| *s == c)?.0;
            out.extend(cell(dots));
            if !matches!(c, '.' | ',') {
                number = false;
            }
            continue;
        }
        number = false;
    }
    Some(out)
}

/// A dash outside ASCII: dash punctuation, or the minus sign.
fn unicode_dash(c: char) -> bool {
    c == '\u{2212}' || (!c.is_ascii() && c.general_category() == GeneralCategory::DashPunctuation)
}

/// `text` with each dash outside ASCII whose nearest neighbour on either
/// side, past white space and slashes, is a mark of Morse code (a dot,
/// `·`, `•`, `∙`, a dash, `_`) written `-`, so that Morse typeset with
/// `·` and `—` keeps its dashes; borrowed if it has no such dash. A dash
/// between letters or digits is left to become a dot.
fn morse_dashes(text: &str) -> Cow<'_, str> {
    if !text.chars().any(unicode_dash) {
        return Cow::Borrowed(text);
    }
    let mark = |c: &char| matches!(c, '.' | '-' | '_' | '·' | '•' | '∙') || unicode_dash(*c);
    let gap = |c: &&char| matches!(c, ' ' | '\t' | '/');
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    for (i, &c) in chars.iter().enumerate() {
        let beside_a_mark = unicode_dash(c)
            && (chars[..i].iter().rev().find(|c| !gap(c)).is_some_and(mark)
                || chars[i + 1..].iter().find(|c| !gap(c)).is_some_and(mark));
        out.push(if beside_a_mark { '-' } else { c });
    }
    Cow::Owned(out)
}

/// A parenthesised letter or digit (`⒞`, `⑷`) as the letter or digit: NFKC
/// would write it `(c)`, which breaks the word it spells.
fn unparenthesise(c: char) -> char {
    let code = u32::from(c);
    match code {
        0x249c..=0x24b5 => char::from_u32(u32::from(b'a') + code - 0x249c).unwrap_or(c),
        0x2474..=0x247c => char::from_u32(u32::from(b'1') + code - 0x2474).unwrap_or(c),
        _ => c,
    }
}

/// A letter NFKC leaves as a symbol as its capital: regional indicators
/// (`🇨`, which pair into flags), negative squared and negative circled
/// letters (`🅲`). Symbols would otherwise read as a dot (step 5).
fn ascii_letter(c: char) -> char {
    let code = u32::from(c);
    let first = match code {
        0x1f1e6..=0x1f1ff => 0x1f1e6,
        0x1f170..=0x1f189 => 0x1f170,
        0x1f150..=0x1f169 => 0x1f150,
        _ => return c,
    };
    char::from_u32(u32::from(b'A') + code - first).unwrap_or(c)
}

/// Any space (the Ogham space mark, which NFKC leaves) as a space, and the
/// line and paragraph separators as a line break.
fn ascii_space(c: char) -> char {
    match c {
        '\u{2028}' | '\u{2029}' => '\n',
        c if !c.is_ascii() && c.general_category() == GeneralCategory::SpaceSeparator => ' ',
        c => c,
    }
}

/// A Unicode tag character (U+E0020 to U+E007E) as the ASCII character it
/// shadows: invisible, but a model reads `bob@…` written in them.
fn untag(c: char) -> char {
    match u32::from(c) {
        code @ 0xe0020..=0xe007e => char::from_u32(code - 0xe0000).unwrap_or(c),
        _ => c,
    }
}

/// A character that renders as nothing (or as blank space that is not
/// white space) where it stands: see step 3 of the module's documentation.
fn invisible(c: char) -> bool {
    match c.general_category() {
        GeneralCategory::Format
        | GeneralCategory::NonspacingMark
        | GeneralCategory::EnclosingMark => true,
        GeneralCategory::Control => !matches!(c, '\t' | '\n' | '\r'),
        _ => matches!(
            c,
            '\u{115f}' | '\u{1160}' | '\u{3164}' | '\u{ffa0}' | '\u{2800}'
        ),
    }
}

/// Punctuation or a symbol outside ASCII as `.`; other characters as they
/// are.
fn ascii_punctuation(c: char) -> char {
    // U+FFFC stands for content no detector can read (the extractor's
    // `OPAQUE`): it stays what it is.
    if c.is_ascii() || c == '\u{fffc}' {
        return c;
    }
    match c.general_category() {
        GeneralCategory::ConnectorPunctuation
        | GeneralCategory::DashPunctuation
        | GeneralCategory::OpenPunctuation
        | GeneralCategory::ClosePunctuation
        | GeneralCategory::InitialPunctuation
        | GeneralCategory::FinalPunctuation
        | GeneralCategory::OtherPunctuation
        | GeneralCategory::MathSymbol
        | GeneralCategory::CurrencySymbol
        | GeneralCategory::ModifierSymbol
        | GeneralCategory::OtherSymbol => '.',
        _ => c,
    }
}

/// A digit NFKC leaves as it is and that is not a decimal digit (`Nd`):
/// the dingbat digits in circles (three styles, one to ten), the
/// double-circled ones, the negative-circled zeros and the CJK numerals.
fn other_digit(c: char) -> Option<u32> {
    let code = u32::from(c);
    let ten = |first: u32| {
        (first..first + 10)
            .contains(&code)
            .then(|| (code - first + 1) % 10)
    };
    match code {
        0x24ff | 0x1f10b | 0x1f10c | 0x3007 | 0x96f6 => Some(0),
        0x2776..=0x2793 => Some(((code - 0x2776) % 10 + 1) % 10),
        0x24f5..=0x24fe => ten(0x24f5),
        // The numerals, then their financial forms (simplified and
        // traditional where they differ).
        _ => "一二三四五六七八九"
            .chars()
            .chain("壹贰叁肆伍陆柒捌玖".chars())
            .chain("壹貳參肆伍陸柒捌玖".chars())
            .position(|n| n == c)
            .map(|i| i as u32 % 9 + 1),
    }
}

/// A decimal digit of any script as its ASCII digit; other characters as
/// they are.
///
/// Unicode assigns every decimal digit (`Nd`) in runs of ten consecutive
/// code points, zero to nine, so a digit's value is how many `Nd` code
/// points precede it in its run, modulo ten (adjacent runs, as in the
/// mathematical digits, are each ten long).
fn ascii_digit(c: char) -> char {
    if c.is_ascii() {
        return c;
    }
    if c.general_category() != GeneralCategory::DecimalNumber {
        return other_digit(c)
            .and_then(|d| char::from_digit(d, 10))
            .unwrap_or(c);
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

/// `text` with its letters and digits outside ASCII that pass for ASCII
/// ones written as those (Cyrillic `С`, `О`, `Т`, Greek `Ο`, Cherokee `Ꮯ`,
/// Cyrillic `З` for 3), if it has any: `СОNFIDENTIAL` with a Cyrillic `С`
/// and `О` reads to a model as the banner it imitates.
///
/// What passes for what is Unicode's confusables table (UTS #39's
/// skeleton), taken for the characters it maps onto ASCII letters or
/// digits. Its prototype of `I` is `l`; a capital that passes for `l` is
/// written `I`. A view beside the text, not a replacement: text in those
/// scripts is scanned as it is too (a Russian password label).
#[must_use]
pub fn look_alikes_folded(text: &str) -> Option<String> {
    if text.is_ascii() {
        return None;
    }
    let table = look_alike_table();
    let mut out = String::with_capacity(text.len());
    let mut changed = false;
    for c in text.chars() {
        match table.get(&c) {
            Some(ascii) => {
                out.push_str(ascii);
                changed = true;
            }
            None => out.push(c),
        }
    }
    changed.then_some(out)
}

/// The blocks whose letters and digits are looked up in the confusables
/// table: Latin-1 to Armenian (Greek and Cyrillic among them), Cherokee,
/// phonetic extensions, Latin Extended Additional, Greek Extended,
/// letterlike symbols, Latin Extended-C, the Cyrillic and Latin extensions
/// from U+A640 to U+A7FF and U+AB30 to U+ABBF, Deseret and Osage. (NFKC has
/// already folded fullwidth and mathematical forms.)
const LOOK_ALIKE_BLOCKS: &[(u32, u32)] = &[
    (0x80, 0x58f),
    (0x13a0, 0x13ff),
    (0x1d00, 0x1dbf),
    (0x1e00, 0x1fff),
    (0x2100, 0x218f),
    (0x2c60, 0x2c7f),
    (0xa640, 0xa7ff),
    (0xab30, 0xabbf),
    (0x10400, 0x104ff),
];

/// The small capitals and the capitals they stand for (there is no
/// small capital X).
const SMALL_CAPITALS: &[(char, char)] = &[
    ('\u{1d00}', 'A'),
    ('\u{299}', 'B'),
    ('\u{1d04}', 'C'),
    ('\u{1d05}', 'D'),
    ('\u{1d07}', 'E'),
    ('\u{a730}', 'F'),
    ('\u{262}', 'G'),
    ('\u{29c}', 'H'),
    ('\u{26a}', 'I'),
    ('\u{1d0a}', 'J'),
    ('\u{1d0b}', 'K'),
    ('\u{29f}', 'L'),
    ('\u{1d0d}', 'M'),
    ('\u{274}', 'N'),
    ('\u{1d0f}', 'O'),
    ('\u{1d18}', 'P'),
    ('\u{a7af}', 'Q'),
    ('\u{280}', 'R'),
    ('\u{a731}', 'S'),
    ('\u{1d1b}', 'T'),
    ('\u{1d1c}', 'U'),
    ('\u{1d20}', 'V'),
    ('\u{1d21}', 'W'),
    ('\u{28f}', 'Y'),
    ('\u{1d22}', 'Z'),
];

/// Each letter or digit of [`LOOK_ALIKE_BLOCKS`] whose skeleton is one or
/// two ASCII letters or digits, with that skeleton; built once.
fn look_alike_table() -> &'static HashMap<char, String> {
    static TABLE: LazyLock<HashMap<char, String>> = LazyLock::new(|| {
        let mut table = HashMap::new();
        let mut buf = [0u8; 4];
        for &(first, last) in LOOK_ALIKE_BLOCKS {
            for c in (first..=last).filter_map(char::from_u32) {
                if !c.is_alphanumeric() {
                    continue;
                }
                // Marks on letters outside Latin-1 and Latin Extended-A
                // (`Ȧ`, `Ḋ`: not how French or Polish is written) are
                // dropped: a dot above does not hide the letter.
                let drop_marks = u32::from(c) > 0x17f;
                let ascii: String = skeleton(c.encode_utf8(&mut buf))
                    .filter(|m| {
                        !(drop_marks && m.general_category() == GeneralCategory::NonspacingMark)
                    })
                    .collect();
                if ascii.is_empty()
                    || ascii.len() > 2
                    || !ascii.bytes().all(|b| b.is_ascii_alphanumeric())
                {
                    continue;
                }
                let capital_i = c.is_uppercase() && ascii == "l";
                table.insert(c, if capital_i { "I".to_owned() } else { ascii });
            }
        }
        // Small capitals read as capitals, and Turkish dotted and dotless
        // i as i.
        for &(small, capital) in SMALL_CAPITALS {
            table.insert(small, capital.to_string());
        }
        table.insert('\u{130}', "I".to_owned());
        table.insert('\u{131}', "i".to_owned());
        table
    });
    &TABLE
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
            // A bidi override; a tag character reads as what it shadows.
            ("a\u{202e}b\u{e0041}c", "abAc"),
            // Arabic-Indic, Devanagari and mathematical bold digits.
            ("\u{664}\u{661}\u{661}\u{661}", "4111"),
            ("\u{96a}\u{967}", "41"),
            ("\u{1d7d2}\u{1d7cf}", "41"),
            // Ligature and fullwidth Latin letters.
            ("\u{fb01}le ＡＫＩＡ", "file AKIA"),
            // Combining grapheme joiner, variation selectors (basic and
            // supplementary), a keycap, a Mongolian free variation selector.
            (
                "41\u{34f}11\u{fe0f}1\u{e0100}1\u{20e3}1\u{180b}1",
                "41111111",
            ),
            // Control characters, ASCII and C1; tab and line breaks stay.
            ("41\u{0}1\u{1b}1\u{7f}1\u{85}1\t\n\r", "411111\t\n\r"),
            // Blank fillers: Hangul (three forms) and the Braille blank.
            ("4\u{115f}1\u{1160}1\u{3164}1\u{ffa0}1\u{2800}1", "411111"),
            // Braille: letters, the capital and number signs, `@` and `.`,
            // a blank cell between cells as a space; a cell that spells
            // nothing here as a dot.
            (
                "⠃⠕⠃⠈⠁⠑⠭⠁⠍⠏⠇⠑⠲⠉⠕⠍ ⠠⠁⠅⠊⠁⠀⠼⠙⠁⠁⠁⠀⠼⠁⠃⠲⠉ ⣿",
                "bob@example.com Akia 4111 12.3 .",
            ),
            ("⠠⠠⠁⠅⠊⠁ ⠼⠁⠃⠁", "AKIA 121"),
            // Dashes beside Morse marks stay dashes; others are dots.
            ("·—· —·— / —", ".-. -.- / -"),
            (
                "bob@example—com 10−0–0—1 a — b",
                "bob@example.com 10.0.0.1 a . b",
            ),
            // Composed letters keep their accents.
            ("e\u{301}t\u{e9}", "\u{e9}t\u{e9}"),
            // Digits NFKC leaves alone: dingbats (three styles), double
            // circles, negative-circled zero, CJK numerals.
            ("\u{2779}\u{277a}\u{2778}\u{277e}\u{277f}", "45390"),
            ("\u{278d}\u{278e}\u{278c}\u{2792}\u{2793}", "45390"),
            ("\u{2783}\u{24f8}\u{24fe}\u{24ff}", "4400"),
            ("四五三九 一四八八 〇三四三", "4539 1488 0343"),
            ("肆伍叁玖 壹肆捌捌 零叁肆叁 陸肆陸柒", "4539 1488 0343 6467"),
            // Tag characters shadowing ASCII.
            ("bob\u{e0040}example", "bob@example"),
            // Punctuation and symbols outside ASCII: a box-drawing bar, an
            // arrow, a multiplication sign, a CJK full stop (and its
            // halfwidth form, which NFKC folds onto it), a middle dot.
            (
                "4539\u{2502}1488\u{2192}0343\u{d7}6467",
                "4539.1488.0343.6467",
            ),
            (
                "bob@example\u{3002}com bob@example\u{ff61}co\u{b7}uk",
                "bob@example.com bob@example.co.uk",
            ),
            // Letters outside ASCII stay letters.
            ("straße ℃", "straße .C"),
            // Parenthesised, negative squared and regional indicator
            // letters; the Ogham space mark and the line separator.
            ("\u{249e}\u{24aa}\u{2478}", "co5"),
            ("\u{1f172}\u{1f17e} \u{1f1e8}\u{1f1f4}", "CO CO"),
            ("A\u{1680}K\u{2028}I", "A K\nI"),
        ];
        for (input, want) in cases {
            assert_eq!(normalize(input), want, "{input:?}");
        }
    }

    #[test]
    fn look_alikes_are_read_as_ascii() {
        for (input, want) in [
            // Cyrillic С, О and І; Greek Ο and Ι.
            ("\u{421}\u{41e}NF\u{406}DENTIAL", Some("CONFIDENTIAL")),
            ("T\u{39f}P SECRET \u{399}D", Some("TOP SECRET ID")),
            // Cyrillic lower case in an address; Cherokee capitals.
            ("b\u{43e}b@ex\u{430}mple.com", Some("bob@example.com")),
            ("\u{13df}\u{13aa}\u{13f4}", Some("CAB")),
            // Cyrillic Ze for 3.
            ("45\u{417}9", Some("4539")),
            // Small capitals, letters with a dot above, Turkish I.
            ("\u{1d04}\u{1d0f}\u{274}\u{a730}", Some("CONF")),
            ("\u{226}K\u{130}\u{226}", Some("AKIA")),
            // Armenian.
            ("\u{555}\u{54f}", Some("OS")),
            // Nothing to fold; letters without a Latin double stay.
            ("plain", None),
            ("stra\u{df}e \u{436}", None),
        ] {
            assert_eq!(look_alikes_folded(input).as_deref(), want, "{input:?}");
        }
    }

    /// Only characters outside ASCII are folded, onto ASCII letters and
    /// digits.
    #[test]
    fn the_look_alike_table_maps_non_ascii_onto_ascii() {
        for (c, ascii) in look_alike_table() {
            assert!(!c.is_ascii(), "{c:?}");
            assert!(ascii.bytes().all(|b| b.is_ascii_alphanumeric()), "{c:?}");
        }
    }

    #[test]
    fn ascii_is_borrowed() {
        assert!(matches!(normalize("hello"), Cow::Borrowed(_)));
    }
}
