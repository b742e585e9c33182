//! Text in a disguise a model takes off on request: ROT13, or written
//! backwards.
//!
//! ROT13 moves each ASCII letter 13 places along the alphabet
//! (`CONFIDENTIAL` is `PBASVQRAGVNY`, `password: hunter2` is `cnffjbeq:
//! uhagre2`); text written backwards reads `LAITNEDIFNOC`, `moc tod elpmaxe
//! ta bob`. A model asked to reads either back as easily as base64. What
//! they hide are the words detectors start from: banners, password and
//! key labels, key prefixes, an at sign or a dot spelt out. Three things
//! read them:
//!
//! - [`suspected`] finds those words disguised (one automaton of literal
//!   words), and [`Disguise::undo`] takes the disguise off the stretch
//!   around each, which is scanned again in full (every detector and every
//!   view). Undoing every text in every disguise would treble every scan.
//! - [`Disguise::pattern`]: an operator's pattern disguised, compiled as a
//!   twin of the rule, so that a rule the gate knows nothing of is read in
//!   each disguise too.
//! - The IBAN validator reads an IBAN's letters back from ROT13
//!   ([`rot13_byte`]): its shape and digits are unchanged.
//!
//! Other shifts of the alphabet (Caesar, Atbash, ROT47) are read by
//! [`super::shifted`], from long words only: this gate also knows short
//! labels and key prefixes, which ROT13, the common one, hides.
//!
//! Each disguise is its own inverse, so one function puts it on or takes
//! it off. Addresses with an at sign and card numbers, written backwards,
//! are read by the cheaper [`super::reversed`] view; in ROT13 they need no
//! reading (it leaves at signs and digits as they are).

use std::ops::Range;
use std::sync::LazyLock;

use aho_corasick::{AhoCorasick, AhoCorasickKind};
use regex_syntax::hir::{Capture, Class, ClassBytes, ClassBytesRange, Hir, HirKind, Repetition};
use regex_syntax::hir::{ClassUnicode, ClassUnicodeRange};

/// A rewriting that is its own inverse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Disguise {
    /// Each ASCII letter 13 places along the alphabet.
    Rot13,
    /// The characters in reverse order.
    Backwards,
}

/// The words the builtin detectors whose patterns hold letters start
/// from, as written, in any case: the gate looks for these disguised. A
/// superset is harmless (a text it passes is scanned once more for
/// nothing); a word missing lets that detector's findings through unseen
/// in a disguise, which the tests check for every finding of the
/// detectors' table. Words that read as common ones disguised are left
/// out or kept with what follows them (`top` is `pot` backwards, `pin` is
/// `nip`, a key prefix `sk` at a word's start is `ks` at a word's end, as
/// in `thanks`, `de` is `ed`): each would send most texts to be scanned
/// twice.
const WORDS: &[&str] = &[
    // Banners.
    "conf",
    "c0nf",
    "con-f",
    "dential",
    "dent1al",
    "d3nt",
    "vertraulich",
    "riservato",
    "geheim",
    "classifi",
    "secret",
    "s3cr3t",
    "secr3t",
    "s3cret",
    "sensitive",
    "internal",
    "do not",
    "do_not",
    "do-not",
    "do.not",
    "donot",
    "not for",
    "not_for",
    "not-for",
    "notfor",
    "noforn",
    "propriet",
    "restrict",
    // Password labels, in the languages the detectors know.
    "pass",
    "p@ss",
    "pa$$",
    "p4ss",
    "pa55",
    "p455",
    "word",
    "w0rd",
    "wort",
    "woord",
    "contrase",
    "senha",
    "senord",
    "haslo",
    "hasło",
    "salasana",
    "sifre",
    "şifre",
    "parola",
    "adgangskode",
    "heslo",
    "jelsz",
    "pin code",
    // Key labels and credentials on a command line or in a header.
    "token",
    "credential",
    "api_key",
    "api-key",
    "apikey",
    "access",
    "private",
    "auth",
    "cookie",
    "session",
    "login",
    "logon",
    "creds",
    "bearer",
    "basic",
    "mysql",
    "mariadb",
    "curl",
    "wget",
    "http",
    "begin",
    // A key by what it opens, in prose (`the wifi key is …`).
    "key is",
    "key was",
    // A domain's comma or space for a dot. Not ` org` (` bet` in ROT13),
    // `, net` (`, arg`), ` net` or ` edu` (`ten `, `ude ` backwards).
    ",com",
    ", com",
    " com",
    ",org",
    ",edu",
    ", edu",
    ",gov",
    ", gov",
    " gov",
    "social",
];

/// Words that count only at a word's start (not after a letter or digit),
/// as their detectors want them: short labels before their value, key
/// prefixes, a social security number's label. Anywhere, `hf_` in ROT13
/// (`us_`) would be every `status_`.
const WORD_STARTS: &[&str] = &[
    "pw:", "pw=", "pw :", "pw =", "pw ", "pwd", "pin:", "pin=", "pin :", "pin =", "pin\"", "cvv",
    "cvc:", "cvc=", "cvc :", "cvc =", "otp:", "otp=", "otp :", "otp =", "mdp:", "mdp=", "mdp :",
    "mdp =", "sk-", "sk_", "rk_", "akia", "ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github",
    "glpat", "hf_", "npm_", "pypi", "xapp", "xoxa", "xoxb", "xoxp", "xoxr", "xoxs", "aiza", "gw-",
    "eyj", "ssn",
];

/// An at sign or a dot spelt out: each word between spaces, `_`, `-`,
/// or brackets.
const SPELT: &[&str] = &[
    "at", "arroba", "arobase", "chez", "dot", "punto", "point", "punkt", "ponto",
];

/// An at sign written as `a` in brackets (`john.doe(a)example.com`):
/// it counts only glued to a letter or digit on both sides, or ROT13's
/// `(n)` would be every `O(n)`.
const BRACKETED_A: &[&str] = &["(a)", "[a]", "{a}", "<a>", "/a/"];

/// What ROT13 leaves as it is (and detectors find) but writing backwards
/// hides: a URL (its password), banners and password labels outside
/// ASCII.
const BACKWARDS_ONLY: &[&str] = &[
    "://",
    "секретно",
    "СЕКРЕТНО",
    "конфид",
    "КОНФИД",
    "пароль",
    "ПАРОЛЬ",
    "Пароль",
    "机密",
    "機密",
    "绝密",
    "絕密",
    "極秘",
    "社外秘",
    "部外秘",
    "密码",
    "パスワード",
    "κωδικός",
    "συνθηματικό",
    "סיסמ",
    "كلمة",
    "비밀번호",
    "암호",
    "mật khẩu",
    "รหัสผ่าน",
    "पासवर्ड",
];

/// Where a word of the gate counts, as written (before a disguise).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Bound {
    Anywhere,
    /// Not after a letter or digit ([`WORD_STARTS`]).
    WordStart,
    /// Between letters or digits on both sides ([`BRACKETED_A`]).
    Glued,
}

/// One automaton over the words of every disguise, and the disguise and
/// the bound of each of its patterns.
struct Gate {
    words: AhoCorasick,
    of: Vec<(Disguise, Bound)>,
}

/// The gate, built once (`None` if it could not be, as the unit tests rule
/// out: every text is then undone in every disguise).
static GATE: LazyLock<Option<Gate>> = LazyLock::new(|| {
    let spelt = SPELT.iter().flat_map(|w| {
        [
            format!(" {w} "),
            format!("_{w}_"),
            format!("-{w}-"),
            format!("({w})"),
            format!("[{w}]"),
            format!("{{{w}}}"),
            format!("<{w}>"),
            format!("/{w}/"),
        ]
    });
    let bound = |words: &'static [&'static str], bound: Bound| {
        words.iter().map(move |w| ((*w).to_owned(), bound))
    };
    let words: Vec<(String, Bound)> = bound(WORDS, Bound::Anywhere)
        .chain(spelt.map(|w| (w, Bound::Anywhere)))
        .chain(bound(WORD_STARTS, Bound::WordStart))
        .chain(bound(BRACKETED_A, Bound::Glued))
        .collect();
    let backwards_only: Vec<(String, Bound)> = bound(BACKWARDS_ONLY, Bound::Anywhere).collect();
    let mut patterns = Vec::new();
    let mut of = Vec::new();
    for disguise in Disguise::ALL {
        let only: &[(String, Bound)] = match disguise {
            Disguise::Rot13 => &[],
            Disguise::Backwards => &backwards_only,
        };
        for (word, bound) in words.iter().chain(only) {
            patterns.push(disguise.undo(word));
            of.push((disguise, *bound));
        }
    }
    AhoCorasick::builder()
        .ascii_case_insensitive(true)
        .kind(Some(AhoCorasickKind::DFA))
        .build(&patterns)
        .ok()
        .map(|words| Gate { words, of })
});

/// Builds the gate now rather than on the first text.
pub(super) fn warm_up() {
    LazyLock::force(&GATE);
}

/// How far around a word of the gate its disguise is taken off: more
/// than any builtin finding spans from its word (a credential after its
/// label, a key after its prefix are a few hundred bytes at most).
pub(super) const REACH: usize = 1 << 10;

/// Where `text` may hold a detector's words in each disguise, in the order
/// of [`Disguise::ALL`]: the stretches within [`REACH`] of each word of
/// the gate, merged, in order. Only these are undone and scanned again, so
/// noise and random base64, where disguised words turn up by chance every
/// few kilobytes, cost a stretch for each rather than the whole text again.
/// One pass of an automaton of literal words, a nanosecond or two a byte.
pub(super) fn suspected(text: &str) -> [Vec<Range<usize>>; 2] {
    let mut found: [Vec<Range<usize>>; 2] = [Vec::new(), Vec::new()];
    let Some(gate) = GATE.as_ref() else {
        return [0..text.len(), 0..text.len()].map(|all| vec![all]);
    };
    for hit in gate.words.find_overlapping_iter(text) {
        let (disguise, bound) = gate.of[hit.pattern().as_usize()];
        let mut before = text[..hit.start()].chars().next_back();
        let mut after = text[hit.end()..].chars().next();
        // Written backwards, what stood before a word stands after it.
        if disguise == Disguise::Backwards {
            std::mem::swap(&mut before, &mut after);
        }
        let counts = match bound {
            Bound::Anywhere => true,
            // An ASCII word boundary, as the detectors' (`é` is one).
            Bound::WordStart => !before.is_some_and(|c| c.is_ascii_alphanumeric()),
            Bound::Glued => {
                before.is_some_and(char::is_alphanumeric)
                    && after.is_some_and(char::is_alphanumeric)
            }
        };
        if !counts {
            continue;
        }
        let mut from = hit.start().saturating_sub(REACH);
        while !text.is_char_boundary(from) {
            from -= 1;
        }
        let mut to = (hit.end() + REACH).min(text.len());
        while !text.is_char_boundary(to) {
            to += 1;
        }
        let stretches = &mut found[disguise.index()];
        match stretches.last_mut() {
            // Hits come in order of their ends, and each reaches as far
            // back as the one before: a stretch that overlaps the last
            // one extends it.
            Some(last) if from <= last.end => last.end = last.end.max(to),
            _ => stretches.push(from..to),
        }
    }
    found
}

impl Disguise {
    pub(super) const ALL: [Disguise; 2] = [Disguise::Rot13, Disguise::Backwards];

    /// `s` with the disguise put on or taken off.
    pub(super) fn undo(self, s: &str) -> String {
        match self {
            Disguise::Rot13 => s.chars().map(rot13).collect(),
            Disguise::Backwards => s.chars().rev().collect(),
        }
    }

    /// Its place in [`Disguise::ALL`].
    fn index(self) -> usize {
        match self {
            Disguise::Rot13 => 0,
            Disguise::Backwards => 1,
        }
    }

    /// `pattern` disguised: a pattern that matches what `pattern` matches
    /// in this disguise, or `None` if it does not parse or reads the same
    /// disguised (the twin would be the rule itself).
    pub(super) fn pattern(self, pattern: &str) -> Option<String> {
        // The parser's default nesting limit bounds the recursion.
        let hir = regex_syntax::Parser::new().parse(pattern).ok()?;
        let disguised = self.hir(&hir);
        (disguised != hir).then(|| disguised.to_string())
    }

    fn hir(self, hir: &Hir) -> Hir {
        let is_rot13 = self == Disguise::Rot13;
        match hir.kind() {
            HirKind::Empty => Hir::empty(),
            // A literal's bytes are UTF-8 (the parser rejects patterns that
            // could match anything else): ROT13 turns its ASCII bytes and
            // leaves the others' (all 0x80 and above) as they are.
            HirKind::Literal(literal) if is_rot13 => Hir::literal(
                literal
                    .0
                    .iter()
                    .map(|&b| rot13(char::from(b)) as u8)
                    .collect::<Vec<u8>>(),
            ),
            HirKind::Literal(literal) => {
                let text = String::from_utf8_lossy(&literal.0);
                Hir::literal(text.chars().rev().collect::<String>().into_bytes())
            }
            HirKind::Class(Class::Unicode(class)) if is_rot13 => {
                Hir::class(Class::Unicode(rot13_class(class)))
            }
            HirKind::Class(Class::Bytes(class)) if is_rot13 => {
                Hir::class(Class::Bytes(rot13_bytes(class)))
            }
            HirKind::Class(class) => Hir::class(class.clone()),
            HirKind::Look(look) if is_rot13 => Hir::look(*look),
            HirKind::Look(look) => Hir::look(look.reversed()),
            HirKind::Repetition(rep) => Hir::repetition(Repetition {
                sub: Box::new(self.hir(&rep.sub)),
                ..rep.clone()
            }),
            HirKind::Capture(capture) => Hir::capture(Capture {
                sub: Box::new(self.hir(&capture.sub)),
                ..capture.clone()
            }),
            HirKind::Concat(subs) => {
                let mut subs: Vec<Hir> = subs.iter().map(|sub| self.hir(sub)).collect();
                if !is_rot13 {
                    subs.reverse();
                }
                Hir::concat(subs)
            }
            HirKind::Alternation(subs) => {
                Hir::alternation(subs.iter().map(|sub| self.hir(sub)).collect())
            }
        }
    }
}

/// One byte in ROT13: ASCII letters 13 places on, the rest as it is.
pub(super) fn rot13_byte(b: u8) -> u8 {
    rot13(char::from(b)) as u8
}

/// One character in ROT13: ASCII letters 13 places on, the rest as it is.
fn rot13(c: char) -> char {
    match c {
        'a'..='m' | 'A'..='M' => char::from(c as u8 + 13),
        'n'..='z' | 'N'..='Z' => char::from(c as u8 - 13),
        _ => c,
    }
}

/// The halves of the alphabet and how far ROT13 moves each.
const HALVES: [(u8, u8, i8); 4] = [
    (b'A', b'M', 13),
    (b'N', b'Z', -13),
    (b'a', b'm', 13),
    (b'n', b'z', -13),
];

/// A class with its ASCII letters in ROT13.
fn rot13_class(class: &ClassUnicode) -> ClassUnicode {
    let mut out = class.clone();
    let mut moved = ClassUnicode::empty();
    let by = |c: char, by: i8| char::from((c as u8).wrapping_add_signed(by));
    for (from, to, step) in HALVES {
        let mut half = ClassUnicode::new([ClassUnicodeRange::new(from.into(), to.into())]);
        out.difference(&half);
        half.intersect(class);
        moved.union(&ClassUnicode::new(half.iter().map(|r| {
            ClassUnicodeRange::new(by(r.start(), step), by(r.end(), step))
        })));
    }
    out.union(&moved);
    out
}

/// A class of bytes with its ASCII letters in ROT13.
fn rot13_bytes(class: &ClassBytes) -> ClassBytes {
    let mut out = class.clone();
    let mut moved = ClassBytes::empty();
    for (from, to, step) in HALVES {
        let mut half = ClassBytes::new([ClassBytesRange::new(from, to)]);
        out.difference(&half);
        half.intersect(class);
        moved.union(&ClassBytes::new(half.iter().map(|r| {
            ClassBytesRange::new(
                r.start().wrapping_add_signed(step),
                r.end().wrapping_add_signed(step),
            )
        })));
    }
    out.union(&moved);
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::Disguise::{Backwards, Rot13};
    use super::*;

    #[test]
    fn text_is_disguised_both_ways() {
        assert_eq!(
            Rot13.undo("CONFIDENTIAL: hunter2!"),
            "PBASVQRAGVNY: uhagre2!"
        );
        assert_eq!(Backwards.undo("bob at café"), "éfac ta bob");
        for disguise in Disguise::ALL {
            let text = "Zürich, 4539 ABC xyz";
            assert_eq!(disguise.undo(&disguise.undo(text)), text);
        }
    }

    /// A disguised pattern matches what the pattern matches, disguised,
    /// and not what it matches undisguised (none of these reads the same
    /// either way).
    #[test]
    fn patterns_are_disguised_with_their_classes_cases_and_bounds() {
        for (disguise, pattern, matches, misses) in [
            (
                Rot13,
                r"(?i)project\s+falcon",
                "Cebwrpg  SNYPBA",
                "project falcon",
            ),
            (Rot13, r"\bPRJ-[0-9]{4}\b", "x CEW-1234 y", "PRJ-1234"),
            (Rot13, r"[a-f]{3}x|[^a-z]z", "nopk 9m", "abcx"),
            (Rot13, r"(?-u:[A-Ca-c0-9])+q", "NOPnop9d", "abcq"),
            (Rot13, r"(?i)ümlaut", "ÜZYNHG", "ümlaut"),
            (
                Backwards,
                r"(?i)project\s+falcon",
                "NOCLAF tcejorp",
                "project falcon",
            ),
            (Backwards, r"\bPRJ-[0-9]{3}x\b", "x x123-JRP y", "PRJ-123x"),
            (Backwards, r"^ab(?:c|de)+$", "cedba", "abcde"),
            (Backwards, r"(?i)größe", "EßöRG", "größe"),
        ] {
            let disguised = disguise.pattern(pattern).unwrap();
            let regex = regex::Regex::new(&disguised).unwrap();
            assert!(regex.is_match(matches), "{pattern} → {disguised}");
            assert!(!regex.is_match(misses), "{pattern} → {disguised}");
        }
        assert_eq!(Rot13.pattern("[0-9]{4}-[0-9]+"), None, "nothing to turn");
        assert_eq!(Backwards.pattern("(?i)abba"), None, "a palindrome");
        assert_eq!(Rot13.pattern("(unclosed"), None);
    }

    #[test]
    fn the_gate_finds_the_words_disguised() {
        assert!(GATE.is_some());
        for text in [
            "CONFIDENTIAL",
            "password: x",
            "The cat sat on the mat, O(n).",
        ] {
            assert!(suspected(text).iter().all(Vec::is_empty), "{text}");
        }
        for (text, disguise) in [
            ("CONFIDENTIAL", Rot13),
            ("Password: x", Rot13),
            ("SK-proj", Backwards),
            ("bob at example", Backwards),
            ("bob at example", Rot13),
            ("\u{41f}\u{430}\u{440}\u{43e}\u{43b}\u{44c}: x", Backwards),
        ] {
            let disguised = disguise.undo(text);
            let found = suspected(&disguised);
            let all = 0..disguised.len();
            assert_eq!(found[disguise.index()], vec![all], "{disguise:?}: {text}");
        }
    }
}
