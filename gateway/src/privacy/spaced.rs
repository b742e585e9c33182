//! Words written a character at a time, read joined.
//!
//! `P A S S W O R D`, `C.O.N.F.I.D.E.N.T.I.A.L`, `b o b @ e x a m p l e .
//! c o m`: a model reads through the gaps, a pattern does not. [`joined`]
//! rewrites every run of at least [`MIN_RUN`] single characters, each apart
//! from the next, as one word:
//! - apart by white space (one to three spaces, tabs or line breaks),
//!   each a letter, a digit or one of `@ . : _ -` (the last may have
//!   punctuation after it: `d:`): the narrowest gap of the run goes, a
//!   wider one stays as one space, since it is how such text marks a
//!   word's end (`T O P  S E C R E T` is `TOP SECRET`);
//! - apart by one punctuation character, the same through the run
//!   (`C.O.N.F`, `4-5-3-9`, `j_o_h_n_._d_o_e`): the separators go.
//!
//! White space is joined first, then punctuation on what that gives, so
//! `C . O . N . F` is `CONF` too.

/// The fewest single characters in a row that are joined.
const MIN_RUN: usize = 4;

/// The punctuation that may stand between single characters.
const PUNCTUATION: &[char] = &['.', '-', '_', '*', '/', '|', '+', ',', ':', ';', '~', '\''];

/// A character a word spelt out one at a time is made of: a letter, a
/// digit, or what joins the parts of an address or a key (`@ . : _ -`).
fn spelled_out(c: char) -> bool {
    c.is_alphanumeric() || matches!(c, '@' | '.' | ':' | '_' | '-')
}

/// Matches wherever [`joined`] could find a run to join with a letter or a
/// digit and three more characters in it, and in more places (a superset:
/// the first and last characters may be ends of longer words). Run in the
/// detectors' one pass, it spares the rewriting of text with no such run
/// (a rule of dashes or dots has nothing to join).
pub(super) const GATE: &str = concat!(
    r"[\p{L}\p{N}](?:\s{1,3}[\p{L}\p{N}@.:_\-]){3}",
    r"|[\p{L}\p{N}](?:[.\-_*/|+,:;~'][\p{L}\p{N}@.:_\-]){3}",
);

/// `s` with its runs of single characters joined (see the module's
/// documentation): the text with white space joined, and that text with
/// punctuation joined, each if it changed anything.
pub(super) fn joined(s: &str) -> Vec<String> {
    let mut views = Vec::new();
    let spaces = join_spaces(s);
    let punctuation = join_punctuation(spaces.as_deref().unwrap_or(s));
    views.extend(spaces);
    views.extend(punctuation);
    views
}

/// `s` with its runs of single characters apart by one to three spaces or
/// tabs joined, if it has any.
fn join_spaces(s: &str) -> Option<String> {
    // The words of `s` between spaces and tabs, with their byte ranges.
    let mut words: Vec<(usize, usize)> = Vec::new();
    let mut start = None;
    for (at, c) in s.char_indices() {
        let blank = matches!(c, ' ' | '\t' | '\n' | '\r');
        match (blank, start) {
            (true, Some(from)) => {
                words.push((from, at));
                start = None;
            }
            (false, None) => start = Some(at),
            _ => {}
        }
    }
    if let Some(from) = start {
        words.push((from, s.len()));
    }
    // One character, or one and the punctuation after it (`d:` in `p a s
    // s w o r d: …`).
    let single = |(from, to): (usize, usize)| {
        let mut chars = s[from..to].chars();
        chars.next().is_some_and(spelled_out) && chars.all(|c| !c.is_alphanumeric())
    };
    let mut out = String::new();
    let mut written = 0;
    let mut i = 0;
    while i < words.len() {
        // The run of single characters from word `i`, apart by at most
        // three blanks each.
        let mut j = i;
        while single(words[j])
            && words
                .get(j + 1)
                .is_some_and(|next| single(*next) && next.0 - words[j].1 <= 3)
        {
            j += 1;
        }
        if single(words[i]) && j + 1 - i >= MIN_RUN {
            // The narrowest gap of the run is between letters; a wider one
            // ends a word.
            let gap = |k: usize| words[k].0 - words[k - 1].1;
            let narrowest = (i + 1..=j).map(gap).min().unwrap_or(1);
            out.push_str(&s[written..words[i].0]);
            for k in i..=j {
                if k > i && gap(k) > narrowest {
                    out.push(' ');
                }
                out.push_str(&s[words[k].0..words[k].1]);
            }
            written = words[j].1;
        }
        i = j + 1;
    }
    (written > 0).then(|| {
        out.push_str(&s[written..]);
        out
    })
}

/// `s` with its runs of single characters apart by one punctuation
/// character (the same through the run) joined, if it has any: letters and
/// digits, and the other characters of an address other than the
/// separator (`j_o_h_n_._d_o_e_@_…`).
fn join_punctuation(s: &str) -> Option<String> {
    let chars: Vec<(usize, char)> = s.char_indices().collect();
    let at = |k: usize| chars.get(k).map(|&(_, c)| c);
    let mut out = String::new();
    let mut written = 0;
    let mut k = 0;
    while k < chars.len() {
        let Some(separator) = at(k + 1).filter(|c| PUNCTUATION.contains(c)) else {
            k += 1;
            continue;
        };
        let token = |j: usize| at(j).is_some_and(|c| spelled_out(c) && c != separator);
        let alphanumeric = |j: usize| at(j).is_some_and(char::is_alphanumeric);
        // A single character: no letter or digit before it.
        if !token(k) || (k > 0 && alphanumeric(k - 1)) {
            k += 1;
            continue;
        }
        let mut end = k;
        while at(end + 1) == Some(separator) && token(end + 2) && !alphanumeric(end + 3) {
            end += 2;
        }
        if (end - k) / 2 + 1 >= MIN_RUN {
            out.push_str(&s[written..chars[k].0]);
            for (_, c) in chars[k..=end].iter().step_by(2) {
                out.push(*c);
            }
            written = chars[end].0 + chars[end].1.len_utf8();
        }
        k = end + 1;
    }
    (written > 0).then(|| {
        out.push_str(&s[written..]);
        out
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::{joined, GATE};

    #[test]
    fn single_characters_are_joined() {
        for (text, want) in [
            ("P A S S W O R D : hunter2", &["PASSWORD: hunter2"][..]),
            ("T O P  S E C R E T", &["TOP SECRET"]),
            ("C.O.N.F.I.D.E.N.T.I.A.L report", &["CONFIDENTIAL report"]),
            ("C . O . N . F", &["C.O.N.F", "CONF"]),
            (
                "mail b o b @ e x a m p l e . c o m now",
                &["mail bob@example.com now"],
            ),
            ("A\tK\tI\tA", &["AKIA"]),
            ("4-5-3-9 1488", &["4539 1488"]),
            ("П А Р О Л Ь", &["ПАРОЛЬ"]),
            ("p a s s w o r d: hunter2!x", &["password: hunter2!x"]),
            ("p_a_s_s_w_o_r_d: hunter2!x", &["password: hunter2!x"]),
            ("A  K  I  A  I  O", &["AKIAIO"]),
            ("C\nO\nN\nF", &["CONF"]),
            ("j_o_h_n_._d_o_e_@_e_x_._c_o_m", &["john.doe@ex.com"]),
        ] {
            assert_eq!(joined(text), want, "{text}");
        }
    }

    #[test]
    fn words_are_left_alone() {
        for text in [
            "I am a big fan of it",
            "version 1.2.3 of x/y",
            "a b c",
            "x = y + z",
            "A-B-C-DE",
            "one two three four",
            "a b\n\n\n\nc d",
            "",
        ] {
            assert!(joined(text).is_empty(), "{text}");
        }
    }

    /// The gate is a superset of what is joined, and prose passes it by.
    #[test]
    fn the_gate_lets_every_joined_text_through() {
        let gate = regex::Regex::new(GATE).unwrap();
        for text in [
            "P A S S W O R D",
            "T O P  S E C R E T",
            "C.O.N.F",
            "b o b @ e x",
            "A\tK\tI\tA",
            "П А Р О",
            "x a_b_c_d",
            "p a s s w o r d: x",
            "C\nO\nN\nF",
            "j_o_h_n_._d",
        ] {
            assert!(!joined(text).is_empty(), "{text}");
            assert!(gate.is_match(text), "{text}");
        }
        assert!(!gate.is_match("The gateway routes each request, and a log of it."));
        assert!(!gate.is_match("-----\n....\n___"));
    }
}
