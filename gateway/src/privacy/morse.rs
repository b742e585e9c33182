//! Text in Morse code, read as letters.
//!
//! `-... --- -... .--.-. . -..- .- -- .--. .-.. . .-.-.- -.-. --- --` is
//! `bob@example.com` to a model, and dots and dashes to a pattern. [`letters`]
//! reads every run of at least [`MIN_RUN`] Morse symbols (ITU letters,
//! digits and punctuation, `@` included) as what it spells, in place among
//! the text around it, so a label in plain text still stands before its
//! value in code.
//!
//! - A symbol is one to seven marks: `.` for a dot, `-` or `_` for a dash.
//!   Normalisation has already made `·`, `•` and `∙` dots, and `–`, `—` and
//!   `−` dashes.
//! - Symbols stand apart by white space or `/`. A gap of one space (or one
//!   `/` in a run whose gaps are all slashes) parts letters; a wider gap, a
//!   line break, or a slash in a run spaced otherwise parts words.
//! - A mark beside a letter or a digit is not Morse (`a.-b`), and a run
//!   ends at the first group that is not a symbol.
//!
//! Morse has no case, so the text comes back twice: in lower case and in
//! upper case, for the detectors whose words or prefixes have one case;
//! and where it spells single characters apart (`s s n : 2 1 9 …`), joined
//! as well ([`super::spaced`]).

/// The fewest symbols in a row that are read.
const MIN_RUN: usize = 4;

/// The longest symbol (`$`, `...-..-`).
const MAX_MARKS: usize = 7;

/// Matches wherever [`letters`] could find a run of [`MIN_RUN`] symbols,
/// and in more places. Run in the detectors' one pass, it spares the
/// rewriting of text without one.
pub(super) const GATE: &str = r"[.\-_]{1,7}(?:[\s/]{1,5}[.\-_]{1,7}){3}";

/// The ITU symbols, dots and dashes, and what each stands for.
const SYMBOLS: &[(&str, char)] = &[
    (".-", 'a'),
    ("-...", 'b'),
    ("-.-.", 'c'),
    ("-..", 'd'),
    (".", 'e'),
    ("..-.", 'f'),
    ("--.", 'g'),
    ("....", 'h'),
    ("..", 'i'),
    (".---", 'j'),
    ("-.-", 'k'),
    (".-..", 'l'),
    ("--", 'm'),
    ("-.", 'n'),
    ("---", 'o'),
    (".--.", 'p'),
    ("--.-", 'q'),
    (".-.", 'r'),
    ("...", 's'),
    ("-", 't'),
    ("..-", 'u'),
    ("...-", 'v'),
    (".--", 'w'),
    ("-..-", 'x'),
    ("-.--", 'y'),
    ("--..", 'z'),
    ("-----", '0'),
    (".----", '1'),
    ("..---", '2'),
    ("...--", '3'),
    ("....-", '4'),
    (".....", '5'),
    ("-....", '6'),
    ("--...", '7'),
    ("---..", '8'),
    ("----.", '9'),
    (".-.-.-", '.'),
    ("--..--", ','),
    ("..--..", '?'),
    (".----.", '\''),
    ("-.-.--", '!'),
    ("-..-.", '/'),
    ("-.--.", '('),
    ("-.--.-", ')'),
    (".-...", '&'),
    ("---...", ':'),
    ("-.-.-.", ';'),
    ("-...-", '='),
    (".-.-.", '+'),
    ("-....-", '-'),
    ("..--.-", '_'),
    (".-..-.", '"'),
    ("...-..-", '$'),
    (".--.-.", '@'),
];

fn is_mark(b: u8) -> bool {
    matches!(b, b'.' | b'-' | b'_')
}

fn is_gap(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r' | b'/')
}

/// What the marks `group` stand for, if they are a symbol.
fn symbol(group: &[u8]) -> Option<char> {
    if group.len() > MAX_MARKS {
        return None;
    }
    // Dots and dashes as the bits of a number, after a leading one that
    // keeps the length: `.-` is 0b110.
    let code = |marks: &[u8]| {
        marks
            .iter()
            .fold(1u16, |acc, &b| acc << 1 | u16::from(b != b'.'))
    };
    let wanted = code(group);
    SYMBOLS
        .iter()
        .find(|(marks, _)| code(marks.as_bytes()) == wanted)
        .map(|&(_, c)| c)
}

/// One run of symbols from `start`: what it spells (words apart by one
/// space) and where it ends, if it holds at least [`MIN_RUN`] symbols.
fn run(bytes: &[u8], start: usize) -> Option<(String, usize)> {
    // The symbols with the gap before each (empty for the first).
    let mut symbols: Vec<(char, &[u8])> = Vec::new();
    let mut end = start;
    let mut at = start;
    loop {
        let gap_start = at;
        while at < bytes.len() && is_gap(bytes[at]) && at - gap_start < 5 {
            at += 1;
        }
        let gap = &bytes[gap_start..at];
        if !symbols.is_empty() && gap.is_empty() {
            break;
        }
        let from = at;
        while at < bytes.len() && is_mark(bytes[at]) {
            at += 1;
        }
        // A group must end at a gap, the text's end, or punctuation that
        // is not a mark (`,` or `)` after the last symbol).
        let ends_clean = bytes
            .get(at)
            .is_none_or(|&b| is_gap(b) || !b.is_ascii_alphanumeric());
        let Some(c) = (from < at && ends_clean)
            .then(|| symbol(&bytes[from..at]))
            .flatten()
        else {
            break;
        };
        symbols.push((c, gap));
        end = at;
    }
    if symbols.len() < MIN_RUN {
        return None;
    }
    let slashed = symbols[1..]
        .iter()
        .all(|(_, gap)| gap.iter().all(|&b| b == b'/'));
    let mut out = String::with_capacity(symbols.len() + 8);
    for (k, (c, gap)) in symbols.iter().enumerate() {
        let word_break = k > 0
            && if slashed {
                gap.len() > 1
            } else {
                gap.len() > 1 || gap.iter().any(|&b| matches!(b, b'/' | b'\n' | b'\r'))
            };
        if word_break {
            out.push(' ');
        }
        out.push(*c);
    }
    Some((out, end))
}

/// Text kept on each side of a run, for a label before it (`password:`)
/// or a domain after it: more than any finding spans.
const CONTEXT: usize = 256;

/// The stretches of `s` around its runs of Morse, the runs read (see the
/// module's documentation), in lower case and in upper case, if it has
/// any. Stretches apart in `s` stand on lines of their own; the rest of
/// `s` is left out, so that text which only now and then holds a few
/// dots and dashes (noise) is not scanned again whole.
pub(super) fn letters(s: &str) -> Vec<String> {
    let bytes = s.as_bytes();
    let mut runs: Vec<(usize, usize, String)> = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let starts = is_mark(bytes[at])
            && (at == 0 || !(bytes[at - 1].is_ascii_alphanumeric() || is_mark(bytes[at - 1])));
        if starts {
            if let Some((spelt, end)) = run(bytes, at) {
                runs.push((at, end, spelt));
                at = end;
                continue;
            }
        }
        at += 1;
    }
    if runs.is_empty() {
        return Vec::new();
    }
    let floor = |mut i: usize| {
        while !s.is_char_boundary(i) {
            i -= 1;
        }
        i
    };
    let mut out = String::new();
    let mut copied = 0;
    for (k, (start, end, spelt)) in runs.iter().enumerate() {
        let before = floor(start.saturating_sub(CONTEXT)).max(copied);
        if k > 0 && before > copied {
            out.push('\n');
        }
        out.push_str(&s[before..*start]);
        out.push_str(spelt);
        let next = runs.get(k + 1).map_or(s.len(), |r| r.0);
        let after = floor((end + CONTEXT).min(next));
        out.push_str(&s[*end..after]);
        copied = after;
    }
    let upper = out.to_uppercase();
    let joined: Vec<String> = [&out, &upper]
        .into_iter()
        .flat_map(|text| super::spaced::joined(text))
        .collect();
    [out, upper].into_iter().chain(joined).collect()
}

/// `text` in Morse: letters apart by a space, words by ` / `; `None`
/// if it holds a character Morse has no symbol for.
#[cfg(test)]
pub(super) fn encode(text: &str) -> Option<String> {
    let words: Option<Vec<String>> = text
        .split(' ')
        .filter(|w| !w.is_empty())
        .map(|word| {
            let symbols: Option<Vec<&str>> = word
                .chars()
                .map(|c| {
                    let c = c.to_ascii_lowercase();
                    SYMBOLS.iter().find(|s| s.1 == c).map(|s| s.0)
                })
                .collect();
            symbols.map(|s| s.join(" "))
        })
        .collect();
    words.map(|w| w.join(" / "))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::{encode, letters, symbol, GATE, SYMBOLS};

    #[test]
    fn every_symbol_is_read_back() {
        for &(marks, c) in SYMBOLS {
            assert_eq!(symbol(marks.as_bytes()), Some(c), "{marks}");
            assert_eq!(symbol(marks.replace('-', "_").as_bytes()), Some(c));
        }
        assert_eq!(symbol(b"........"), None);
        assert_eq!(symbol(b"------"), None);
    }

    #[test]
    fn runs_are_read_in_place() {
        let gate = regex::Regex::new(GATE).unwrap();
        for (text, want) in [
            (
                "mail -... --- -... .--.-. . -..- .- -- .--. .-.. . .-.-.- -.-. --- -- now",
                "mail bob@example.com now",
            ),
            (
                ".--. .- ... ... .-- --- .-. -.. / .. ... / .... ..- -. - . .-. ..---",
                "password is hunter2",
            ),
            ("password: .... ..- -. - . .-. ..---", "password: hunter2"),
            ("-.../---/-.../.--.-./.../.-.-.-/--/---", "bob@s.mo"),
            ("..-. .- ..  .--. ---", "fai po"),
            ("_... ._ .. _.", "bain"),
            ("-.-. .- .-. -..\n....- .---- .---- .----", "card 4111"),
            ("(-.-. --- -.. .)", "(code)"),
        ] {
            let got = letters(text);
            assert_eq!(got, vec![want.to_owned(), want.to_uppercase()], "{text}");
            assert!(gate.is_match(text), "{text}");
        }
    }

    /// Far apart, runs are read each with the text around it, on lines of
    /// their own; the text between is left out.
    #[test]
    fn far_runs_are_read_in_stretches() {
        let filler = "x".repeat(600);
        let text = format!("a: .- -... -.-. -.. {filler} b: -.. -.-. -... .-");
        let got = letters(&text);
        let tail = &filler[..256 - 1];
        let head = &filler[..256 - 4];
        assert_eq!(got[0], format!("a: abcd {tail}\n{head} b: dcba"));
    }

    #[test]
    fn other_text_is_left_alone() {
        for text in [
            "Wait... what - is this?",
            "| --- | --- | --- |",
            "----------------",
            "a.- -... -.-. -..",
            "... ...",
            "i-- j-- k-- l--",
            "",
        ] {
            assert!(letters(text).is_empty(), "{text}");
        }
        let gate = regex::Regex::new(GATE).unwrap();
        assert!(!gate.is_match("The gateway routes each request... and logs it - always."));
        assert!(!gate.is_match("| --- | --- | --- |"));
    }

    #[test]
    fn encoded_text_is_read_back() {
        let text = "write to jane.doe@corp.example.com today";
        let morse = encode(text).unwrap();
        assert_eq!(letters(&morse)[0], text);
    }
}
