//! Text in a shift cipher: every letter moved the same number of places
//! along the alphabet (a Caesar shift, ROT1 to ROT25), the alphabet
//! mirrored and shifted (Atbash and its shifts), or every printable ASCII
//! character moved along the 94 of them (ROT47 and its kin); each of them
//! also written backwards. A model asked to reads these back as it reads
//! ROT13 ([`super::disguise`], whose gate knows short words and prefixes
//! too).
//!
//! A shift keeps the differences between neighbouring letters: `password`
//! and `qbttxpse` (ROT1) step by the same amounts, `-15 +18 0 +4 -8 +3 -14`
//! modulo 26; a mirror negates them, writing backwards reverses and
//! negates them. So the text is read once as the differences between
//! neighbours, in each alphabet, and one automaton of the gate's words'
//! differences finds a word in every shift at once; the first letter of a
//! hit says by how much it was moved. The stretch around each hit is
//! undone and scanned again in full, as ROT13's are.
//!
//! The words are long ones (six letters or more) so that the differences
//! of ordinary text match them by chance rarely: banners, password and key
//! labels in the languages the detectors know, and the letters of each
//! operator rule's pattern ([`words_of`]), so that a rule is read shifted
//! as well. Vigenère and other ciphers whose key changes along the text
//! keep no differences and are not read.

use std::ops::Range;

use aho_corasick::{AhoCorasick, AhoCorasickKind, MatchKind};
use regex_syntax::hir::{Class, Hir, HirKind};

use super::disguise::REACH;

/// The gate's words, in lower case: what the detectors whose patterns hold
/// letters start from, long enough that their differences are rare in
/// ordinary text.
pub(super) const WORDS: &[&str] = &[
    "confidential",
    "confidentiel",
    "confidencial",
    "confidenziale",
    "vertraulich",
    "riservato",
    "geheim",
    "classified",
    "secret",
    "sensitive",
    "internal",
    "proprietary",
    "restricted",
    "noforn",
    "password",
    "passwort",
    "passphrase",
    "passcode",
    "passwd",
    "kennwort",
    "contrasena",
    "wachtwoord",
    "losenord",
    "salasana",
    "adgangskode",
    "passord",
    "jelszo",
    "credential",
    "apikey",
    "api_key",
    "access_key",
    "private",
    "authorization",
    "bearer",
    "cookie",
    "session",
    "github",
    "mysqldump",
];

/// The shortest word the gate takes (an operator's shorter ones are left
/// out): five differences, and a chance match once in 26⁵ places for each.
const SHORTEST: usize = 6;

/// The alphabet a shift moves characters along.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(super) enum Alphabet {
    /// The 26 ASCII letters, case kept; other characters stay.
    Letters,
    /// The 94 printable ASCII characters but space (`!` to `~`), as ROT47
    /// moves them; space and other characters stay.
    Printable,
}

impl Alphabet {
    fn size(self) -> u8 {
        match self {
            Alphabet::Letters => 26,
            Alphabet::Printable => 94,
        }
    }

    /// A byte's place in the alphabet (letters in either case alike).
    fn place(self, b: u8) -> Option<u8> {
        let place = self.table()[usize::from(b)];
        (place != NONE).then_some(place)
    }

    /// [`Alphabet::places`], built once.
    fn table(self) -> &'static [u8; 256] {
        static PLACES: [[u8; 256]; 2] = [Alphabet::Letters.places(), Alphabet::Printable.places()];
        &PLACES[usize::from(self == Alphabet::Printable)]
    }

    /// The byte the difference `d` between two neighbours is written as in
    /// the read-out: letters' differences and printables' fall in two ranges
    /// apart, so one automaton reads both read-outs.
    fn step(self, d: u8) -> u8 {
        match self {
            Alphabet::Letters => b'a' + d,
            Alphabet::Printable => d,
        }
    }

    /// What stands in the read-out where a character has no neighbour in
    /// the alphabet before it: no pattern holds it.
    fn gap(self) -> u8 {
        match self {
            Alphabet::Letters => 0xFE,
            Alphabet::Printable => 0xFF,
        }
    }

    /// Each byte's place in the alphabet, or [`NONE`].
    const fn places(self) -> [u8; 256] {
        let mut places = [NONE; 256];
        let mut b = 0;
        while b < 256 {
            let byte = b as u8;
            places[b] = match self {
                Alphabet::Letters if byte.is_ascii_alphabetic() => byte.to_ascii_lowercase() - b'a',
                Alphabet::Printable if byte >= b'!' && byte <= b'~' => byte - b'!',
                _ => NONE,
            };
            b += 1;
        }
        places
    }

    /// `text`'s differences between neighbours, a byte for each of its
    /// bytes (the first of each run a gap), into `out`.
    fn steps(self, text: &[u8], out: &mut [u8]) {
        let places = self.table();
        let (n, gap, zero) = (self.size(), self.gap(), self.step(0));
        let mut before = NONE;
        for (o, &b) in out.iter_mut().zip(text) {
            let c = places[usize::from(b)];
            *o = if c == NONE || before == NONE {
                gap
            } else if c >= before {
                zero + (c - before)
            } else {
                zero + (c + n - before)
            };
            before = c;
        }
    }
}

/// No place in the alphabet.
const NONE: u8 = 0xFF;

/// One shift cipher: `x ↦ by + x` along the alphabet, or `x ↦ by − x`
/// when mirrored (Atbash is the letters mirrored by 25), and written
/// backwards or not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(super) struct Shift {
    pub(super) alphabet: Alphabet,
    pub(super) by: u8,
    pub(super) mirrored: bool,
    pub(super) backwards: bool,
}

impl Shift {
    /// `s` with the shift taken off.
    pub(super) fn undo(self, s: &str) -> String {
        let one = |c| self.moved(c, false);
        if self.backwards {
            s.chars().rev().map(one).collect()
        } else {
            s.chars().map(one).collect()
        }
    }

    /// `s` with the shift put on (the tests' inverse of [`Shift::undo`]).
    #[cfg(test)]
    pub(super) fn put_on(self, s: &str) -> String {
        let shifted = s.chars().map(|c| self.moved(c, true));
        if self.backwards {
            shifted.rev().collect()
        } else {
            shifted.collect()
        }
    }

    /// `c` moved along the alphabet, `on` or off (a mirror is the same
    /// both ways); a capital stays one, other characters stay.
    fn moved(self, c: char, on: bool) -> char {
        let n = self.alphabet.size();
        let Some(place) = u8::try_from(c).ok().and_then(|b| self.alphabet.place(b)) else {
            return c;
        };
        let to = match (self.mirrored, on) {
            (true, _) => (self.by + n - place) % n,
            (false, true) => (place + self.by) % n,
            (false, false) => (place + n - self.by) % n,
        };
        char::from(match self.alphabet {
            Alphabet::Letters if c.is_ascii_uppercase() => b'A' + to,
            Alphabet::Letters => b'a' + to,
            Alphabet::Printable => b'!' + to,
        })
    }
}

/// A word of the gate in one form: its characters as they stand before
/// the shift (mirrored and written backwards already, when the form is).
#[derive(Debug)]
struct Form {
    alphabet: Alphabet,
    first: u8,
    /// The word's first letter, which a printable form leaves out.
    left_out: Option<u8>,
    mirrored: bool,
    backwards: bool,
}

/// One automaton over the differences of every form of every word.
pub(super) struct ShiftGate {
    steps: AhoCorasick,
    forms: Vec<Form>,
}

impl std::fmt::Debug for ShiftGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShiftGate")
            .field("forms", &self.forms.len())
            .finish_non_exhaustive()
    }
}

impl ShiftGate {
    /// The gate for the builtins' words and `more` (an operator's words;
    /// those shorter than six letters or with other characters than ASCII
    /// letters and `_` are left out). `None` if the automaton could not be
    /// built.
    pub(super) fn new(more: &[String]) -> Option<ShiftGate> {
        let words = WORDS
            .iter()
            .map(|w| (*w).to_owned())
            .chain(more.iter().map(|w| w.to_ascii_lowercase()))
            .filter(|w| {
                w.len() >= SHORTEST && w.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
            });
        let mut patterns: Vec<Vec<u8>> = Vec::new();
        let mut forms = Vec::new();
        // `chars` as written (turned, when backwards); a mirrored form's
        // steps are its mirror's, and its first character the original.
        let mut add = |chars: Vec<u8>,
                       left_out: Option<u8>,
                       alphabet: Alphabet,
                       mirrored: bool,
                       backwards: bool| {
            let mut steps = vec![0; chars.len()];
            if mirrored {
                let mirror: Vec<u8> = chars.iter().map(|b| b'a' + (b'z' - b)).collect();
                alphabet.steps(&mirror, &mut steps);
            } else {
                alphabet.steps(&chars, &mut steps);
            }
            // The first character's step is a gap: the pattern starts after
            // it, and the hit's first character says the shift.
            steps.remove(0);
            if steps.contains(&alphabet.gap()) {
                return;
            }
            patterns.push(steps);
            forms.push(Form {
                alphabet,
                first: chars[0],
                left_out,
                mirrored,
                backwards,
            });
        };
        for word in words {
            for backwards in [false, true] {
                let turn = |mut chars: Vec<u8>| {
                    if backwards {
                        chars.reverse();
                    }
                    chars
                };
                // Letters: `_` is no letter, so each run of a word's letters
                // is a word of its own.
                for part in word.split('_').filter(|p| p.len() >= SHORTEST) {
                    let lower = part.as_bytes().to_vec();
                    add(
                        turn(lower.clone()),
                        None,
                        Alphabet::Letters,
                        false,
                        backwards,
                    );
                    add(turn(lower), None, Alphabet::Letters, true, backwards);
                }
                // Printable: a word's first letter may be a capital where
                // the rest is not, so it is left out. Capitals stand 32
                // places from their small letters, so a word steps alike in
                // either case: one form serves both, and a hit is undone
                // as each ([`ShiftGate::suspected`]).
                let (left_out, rest) = (word.as_bytes()[0], &word.as_bytes()[1..]);
                add(
                    turn(rest.to_vec()),
                    Some(left_out),
                    Alphabet::Printable,
                    false,
                    backwards,
                );
            }
        }
        AhoCorasick::builder()
            .kind(Some(AhoCorasickKind::DFA))
            .match_kind(MatchKind::Standard)
            .build(&patterns)
            .ok()
            .map(|steps| ShiftGate { steps, forms })
    }

    /// Where `text` may hold a word of the gate in a shift cipher, and in
    /// which: the stretches within [`REACH`] of each hit, merged per
    /// shift. A word as written (no shift) is no hit; in ROT13 or written
    /// backwards unshifted it is, though [`super::disguise`] reads those
    /// too (a word in both gates is undone twice, which costs a scan and
    /// loses nothing).
    pub(super) fn suspected(&self, text: &str) -> Vec<(Shift, Range<usize>)> {
        let bytes = text.as_bytes();
        let mut found: Vec<(Shift, Range<usize>)> = Vec::new();
        if bytes.len() < SHORTEST {
            return found;
        }
        let (steps, runs) = read_out(bytes);
        for hit in self.steps.find_overlapping_iter(&steps) {
            let form = &self.forms[hit.pattern().as_usize()];
            // The run the hit is in, and where it stands in the text.
            let run = runs[runs.partition_point(|r| r.at <= hit.start()) - 1];
            let start = run.from + (hit.start() - run.at);
            // The character before the first step is the word's first (a
            // run's first step is a gap, so it is in the run).
            let first_at = start - 1;
            let alphabet = form.alphabet;
            let (Some(t), Some(x)) = (alphabet.place(bytes[first_at]), alphabet.place(form.first))
            else {
                continue;
            };
            let n = alphabet.size();
            let by = |x: u8| {
                if form.mirrored {
                    (t + x) % n
                } else {
                    (t + n - x) % n
                }
            };
            // The form is in small letters; in printable ASCII the same
            // steps are the word in capitals too, moved 32 places less.
            // Both are read: a Caesar shift of `internal only` is also a
            // printable shift of `INTERNAL ONLY`, a banner, and which one
            // was meant cannot be told; a text in a cipher that reads as
            // a banner stays on the premises.
            let capitals = (alphabet == Alphabet::Printable).then(|| by((x + n - 32) % n));
            let end = start + hit.len();
            // Where a printable form's left-out first letter stands.
            let left_out = form.left_out.and_then(|letter| {
                let at = if form.backwards {
                    Some(end)
                } else {
                    first_at.checked_sub(1)
                };
                Some((letter, *bytes.get(at?)?))
            });
            if !form.mirrored && (by(x) == 0 || capitals == Some(0)) {
                // The word's letters stand as written, in one case or the
                // other: it is no disguise, unless its first letter (left
                // out of the form) is moved, as a printable shift of 32 or
                // 62 moves the rest of a word into the other case.
                let moved = left_out.is_some_and(|(letter, b)| !b.eq_ignore_ascii_case(&letter));
                if !moved {
                    continue;
                }
            }
            let mut from = first_at.saturating_sub(REACH);
            while !text.is_char_boundary(from) {
                from -= 1;
            }
            let mut to = (end + REACH).min(text.len());
            while !text.is_char_boundary(to) {
                to += 1;
            }
            for by in std::iter::once(by(x)).chain(capitals) {
                if by == 0 && !form.mirrored {
                    continue;
                }
                let shift = Shift {
                    alphabet,
                    by,
                    mirrored: form.mirrored,
                    backwards: form.backwards,
                };
                found.push((shift, from..to));
            }
        }
        found.sort_by_key(|(shift, stretch)| (*shift, stretch.start));
        found.dedup_by(|(shift, next), (last_shift, last)| {
            let overlaps = shift == last_shift && next.start <= last.end;
            if overlaps {
                last.end = last.end.max(next.end);
            }
            overlaps
        });
        found
    }
}

/// Where a run of the read-out stands: at `at` in the read-out, from
/// `from` in the text.
#[derive(Debug, Clone, Copy)]
struct Run {
    at: usize,
    from: usize,
}

/// The differences between neighbours in the runs of `text` long enough
/// to hold a word of the gate: runs of at least six letters, and of at
/// least five printable characters (a printable form leaves a word's
/// first letter out), each read in its alphabet and followed by a gap.
/// Short words and spaces, most of ordinary text, are left out, so the
/// automaton reads about as many bytes as the text holds, not twice as
/// many.
fn read_out(bytes: &[u8]) -> (Vec<u8>, Vec<Run>) {
    let mut steps = Vec::with_capacity(bytes.len() + 64);
    let mut runs = Vec::new();
    for (alphabet, shortest) in [
        (Alphabet::Letters, SHORTEST),
        (Alphabet::Printable, SHORTEST - 1),
    ] {
        let table = alphabet.table();
        let mut i = 0;
        while i < bytes.len() {
            if table[usize::from(bytes[i])] == NONE {
                i += 1;
                continue;
            }
            let from = i;
            while i < bytes.len() && table[usize::from(bytes[i])] != NONE {
                i += 1;
            }
            if i - from >= shortest {
                let at = steps.len();
                steps.resize(at + i - from, 0);
                alphabet.steps(&bytes[from..i], &mut steps[at..]);
                steps.push(alphabet.gap());
                runs.push(Run { at, from });
            }
        }
    }
    (steps, runs)
}

/// The words an operator's pattern spells out: each run of at least six
/// letters it must match in a row, in lower case, whether written as
/// literals or as a letter in either case (`(?i)falcon`, `[Ff]alcon`).
/// Words inside an alternation or a repetition are taken too: a word the
/// pattern may match is one to look for. An empty list if the pattern
/// does not parse.
pub(super) fn words_of(pattern: &str) -> Vec<String> {
    let Ok(hir) = regex_syntax::Parser::new().parse(pattern) else {
        return Vec::new();
    };
    let mut words = Vec::new();
    let mut run = String::new();
    spell(&hir, &mut run, &mut words);
    end_run(&mut run, &mut words);
    words.sort();
    words.dedup();
    words
}

fn end_run(run: &mut String, words: &mut Vec<String>) {
    if run.len() >= SHORTEST {
        words.push(std::mem::take(run));
    }
    run.clear();
}

/// Adds to `run` the letters `hir` matches one after another, ending the
/// run at anything else.
fn spell(hir: &Hir, run: &mut String, words: &mut Vec<String>) {
    match hir.kind() {
        HirKind::Literal(literal) => {
            for &b in &literal.0 {
                if b.is_ascii_alphabetic() {
                    run.push(char::from(b.to_ascii_lowercase()));
                } else {
                    end_run(run, words);
                }
            }
        }
        HirKind::Class(class) => match one_letter(class) {
            Some(letter) => run.push(letter),
            None => end_run(run, words),
        },
        HirKind::Concat(subs) => {
            for sub in subs {
                spell(sub, run, words);
            }
        }
        HirKind::Capture(capture) => spell(&capture.sub, run, words),
        // Look-arounds match no character: the run goes on.
        HirKind::Look(_) | HirKind::Empty => {}
        HirKind::Repetition(rep) => {
            end_run(run, words);
            spell(&rep.sub, run, words);
            end_run(run, words);
        }
        HirKind::Alternation(subs) => {
            end_run(run, words);
            for sub in subs {
                spell(sub, run, words);
                end_run(run, words);
            }
        }
    }
}

/// The letter a class holds in one case or both, and nothing else but
/// the characters outside ASCII that case folding adds (`(?i)k` holds the
/// Kelvin sign, `(?i)s` the long s).
fn one_letter(class: &Class) -> Option<char> {
    let mut members: Vec<u32> = match class {
        Class::Unicode(class) => class
            .iter()
            .flat_map(|r| r.start()..=r.end())
            .take(4)
            .map(u32::from)
            .collect(),
        Class::Bytes(class) => class
            .iter()
            .flat_map(|r| r.start()..=r.end())
            .take(4)
            .map(u32::from)
            .collect(),
    };
    if members.len() > 3 {
        return None;
    }
    members.retain(|&c| c < 0x80);
    let mut letters: Vec<u8> = members
        .into_iter()
        .filter_map(|c| u8::try_from(c).ok())
        .map(|b| b.to_ascii_lowercase())
        .collect();
    letters.dedup();
    match letters[..] {
        [b] if b.is_ascii_lowercase() => Some(char::from(b)),
        _ => None,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn gate() -> ShiftGate {
        ShiftGate::new(&["falcon".to_owned()]).unwrap()
    }

    /// Every shift of every alphabet, mirrored or not, backwards or not.
    fn every_shift() -> impl Iterator<Item = Shift> {
        [Alphabet::Letters, Alphabet::Printable]
            .into_iter()
            .flat_map(|alphabet| {
                (0..alphabet.size()).flat_map(move |by| {
                    [(false, false), (false, true), (true, false), (true, true)]
                        .into_iter()
                        .filter(move |(mirrored, _)| !mirrored || alphabet == Alphabet::Letters)
                        .map(move |(mirrored, backwards)| Shift {
                            alphabet,
                            by,
                            mirrored,
                            backwards,
                        })
                })
            })
    }

    #[test]
    fn shifts_are_undone() {
        let rot1 = Shift {
            alphabet: Alphabet::Letters,
            by: 1,
            mirrored: false,
            backwards: false,
        };
        assert_eq!(rot1.put_on("Password: Zz9!"), "Qbttxpse: Aa9!");
        let atbash = Shift {
            by: 25,
            mirrored: true,
            ..rot1
        };
        assert_eq!(atbash.put_on("CONFIDENTIAL abc"), "XLMURWVMGRZO zyx");
        let rot47 = Shift {
            alphabet: Alphabet::Printable,
            by: 47,
            mirrored: false,
            backwards: false,
        };
        assert_eq!(
            rot47.put_on("My password: hunter2!"),
            "|J A2DDH@C5i 9F?E6CaP"
        );
        for shift in every_shift() {
            let text = "Zürich: CONFIDENTIAL password ~!{}";
            assert_eq!(shift.undo(&shift.put_on(text)), text, "{shift:?}");
        }
    }

    /// Each word in every shift is found, with the shift it was put in and
    /// a stretch covering it; as written, it is not.
    #[test]
    fn the_gate_finds_every_shift_of_its_words() {
        let gate = gate();
        for text in [
            "Strictly Confidential",
            "my password is x",
            "PROJECT FALCON",
        ] {
            for shift in every_shift() {
                let shifted = format!("say {} now", shift.put_on(text));
                let found = gate.suspected(&shifted);
                // The same letters in the other case (a printable shift of
                // 32 or 62 on a word in one case) are no disguise either;
                // written backwards unshifted is [`super::super::disguise`]'s.
                let lower = shifted.to_lowercase();
                let lower_text = text.to_lowercase();
                let identity = lower.contains(&lower_text)
                    || lower
                        .chars()
                        .rev()
                        .collect::<String>()
                        .contains(&lower_text)
                    || (shift.by == 0 && !shift.mirrored);
                if identity {
                    assert!(
                        found.iter().all(|(s, _)| *s != shift),
                        "{shift:?} {shifted}"
                    );
                    continue;
                }
                assert!(
                    found
                        .iter()
                        .any(|(s, stretch)| { s.undo(&shifted[stretch.clone()]).contains(text) }),
                    "{shift:?} {shifted:?}: {found:?}"
                );
            }
        }
    }

    /// Ordinary text's differences match no word by chance: each match
    /// would be a stretch scanned once more for nothing.
    #[test]
    fn ordinary_text_passes() {
        let gate = gate();
        for text in [
            include_str!("../../../vendor/candle-core/LICENSE"),
            include_str!("../../../vendor/openai-harmony/README.md"),
        ] {
            assert_eq!(gate.suspected(text), vec![]);
        }
    }

    #[test]
    fn words_are_read_from_patterns() {
        for (pattern, words) in [
            (r"(?i)\bproject\s+falcon\b", &["falcon", "project"][..]),
            (
                r"[Hh]ermes[-_ ]?(?:alpha|BRAVO99|charlie)",
                &["charlie", "hermes"],
            ),
            (r"PRJ-[0-9]{4}", &[]),
            (r"(?:top)+secret", &["secret"]),
            (r"(unclosed", &[]),
        ] {
            assert_eq!(words_of(pattern), words, "{pattern}");
        }
    }
}
