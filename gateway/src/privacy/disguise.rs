//! Text in a disguise a model takes off on request: ROT13, or written
//! backwards.
//!
//! ROT13 moves each ASCII letter 13 places along the alphabet
//! (`CONFIDENTIAL` is `PBASVQRAGVNY`, `password: hunter2` is `cnffjbeq:
//! uhagre2`); text written backwards reads `LAITNEDIFNOC`, `moc.elpmaxe ta
//! bob`. A model asked to reads either back as easily as base64. What they
//! hide are the words detectors start from: banners, password and key
//! labels, key prefixes, an at sign or a dot spelt out, an IBAN's letters
//! and the order of its digits, an IPv6 address's hex letters. Two things read them:
//!
//! - [`Disguise::undo`]: a text with the disguise taken off, scanned again
//!   in full (every detector and every view) when [`Disguise::gate`] finds
//!   one of those words disguised in it. Undoing every disguise of every
//!   text would treble every scan.
//! - [`Disguise::pattern`]: an operator's pattern disguised, compiled as a
//!   twin of the rule, so that a rule the gates know nothing of is read in
//!   each disguise too.
//!
//! Each disguise is its own inverse, so one function puts it on or takes
//! it off. Addresses with an at sign and card numbers, written backwards,
//! are read by the cheaper [`super::reversed`] view; in ROT13 they need no
//! reading (it leaves at signs and digits as they are).

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
/// from, as written: each gate is these disguised. A superset is harmless
/// (a text it passes is scanned once more for nothing); a word missing
/// lets that detector's findings through unseen in a disguise, which the
/// tests check for every finding of the detectors' table. Words that read
/// as common ones disguised are left out (`top` is `pot` backwards, a key
/// prefix `sk` at a word's start is `ks` at a word's end, as in `thanks`):
/// each would send most texts to be scanned twice.
const WORDS: &str = concat!(
    r"(?i)",
    // Banners.
    r"c[o0]n-?f|d[e3]n-?t[i1l|!]-?[a4@]l|vertraulich|riservato|geheim|classifi|s[e3]cr[e3]t|sensitive|internal",
    r"|d[o0][\s_.\-]{0,3}n[o0]t|n[o0]t[\s_.\-]{0,3}f[o0]r|noforn|propriet|restrict",
    // Password labels, in the languages the detectors know.
    r"|p[a@4][s$5]{2}|w[o0]r[dt]|kennwort|contrase|senha|wachtwoord|l[oö]senord|has[lł]o|salasana|[sş]ifre",
    r"|parola|adgangskode|heslo|jelsz|(?-u:\b)(?:pw|pwd|pin|cvv|cvc|otp|mdp)[\s\x22'>]*(?:[:=>]|->)",
    // Key labels and credentials on a command line or in a header.
    r"|token|credential|api[_-]?key|access|private|auth|cookie|session|login|logon|creds|bearer|basic",
    r"|mysql|mariadb|curl|wget|http",
    // Key prefixes.
    r"|(?-u:\b)(?:sk-|[sr]k_|akia|gh[pousr]_|github|glpat|hf_|npm_|pypi|xapp|xox[abprs]|aiza|gw-|eyj)",
    r"|begin",
    // An at sign or a dot spelt out.
    r"|(?:(?-u:\b)|_)(?:at|arroba|arobase|chez|dot|punto|point|punkt|ponto)(?:(?-u:\b)|_)",
    r"|(?-u:\w)\s*[(\[{</]\s*a\s*[)\]}>/]\s*(?-u:\w)",
    // A comma or a space for a common domain's dot.
    r"|@[^\s,@]+(?:\s*,\s*|\s+)(?:com|org|net|edu|gov|io|de|uk|fr)(?-u:\b)",
    // An IPv6 address's hex letters: a group with a letter and a digit.
    r"|:[0-9a-f]*(?:[a-f][0-9a-f]*[0-9]|[0-9][0-9a-f]*[a-f])[0-9a-f]*:",
    r"|(?-u:\b)[a-f][0-9a-f]*[0-9][0-9a-f]*::",
    // A social security number's label; an IBAN's country and check
    // digits, and six digits of its account soon after.
    r"|(?-u:\b)ssn|social|[a-z]{2}[0-9]{2}(?:[\s.\-]{0,2}[a-z0-9]){0,8}?[0-9](?:[\s.\-]?[0-9]){5}",
);

/// What ROT13 leaves as it is (and detectors find) but writing backwards
/// hides: an at sign with space around it before a domain's dot (without
/// the space, [`super::reversed`] reads it), a password in a URL, banners
/// and password labels outside ASCII.
const BACKWARDS_ONLY: &str = concat!(
    r"|://[^\s/?#:@]{0,64}:[^\s/?#@]{1,128}@",
    r"|@\s*[^\s@.]+\s*\.",
    r"|секретно|конфиденциально|机密|機密|绝密|絕密|極秘|社外秘|部外秘",
    r"|пароль|密码|パスワード|κωδικός|συνθηματικό|סיסמ|كلمة|비밀번호|암호|mật khẩu|รหัสผ่าน|पासवर्ड",
);

impl Disguise {
    pub(super) const ALL: [Disguise; 2] = [Disguise::Rot13, Disguise::Backwards];

    /// `s` with the disguise put on or taken off.
    pub(super) fn undo(self, s: &str) -> String {
        match self {
            Disguise::Rot13 => s.chars().map(rot13).collect(),
            Disguise::Backwards => s.chars().rev().collect(),
        }
    }

    /// Matches wherever a text may hold a detector's words in this
    /// disguise (see [`WORDS`]). Run in the detectors' one pass.
    pub(super) fn gate(self) -> &'static str {
        // A `WORDS` that could not be disguised (the tests rule it out)
        // sends every text to be undone and scanned again.
        fn gate_of(disguise: Disguise) -> String {
            let words = match disguise {
                Disguise::Rot13 => WORDS.to_owned(),
                Disguise::Backwards => format!("{WORDS}{BACKWARDS_ONLY}"),
            };
            disguise
                .pattern(&words)
                .unwrap_or_else(|| "(?s:.)".to_owned())
        }
        static ROT13: std::sync::LazyLock<String> =
            std::sync::LazyLock::new(|| gate_of(Disguise::Rot13));
        static BACKWARDS: std::sync::LazyLock<String> =
            std::sync::LazyLock::new(|| gate_of(Disguise::Backwards));
        match self {
            Disguise::Rot13 => &ROT13,
            Disguise::Backwards => &BACKWARDS,
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
    fn the_gates_are_the_words_disguised() {
        for disguise in Disguise::ALL {
            assert_ne!(disguise.gate(), "(?s:.)");
            let gate = regex::Regex::new(disguise.gate()).unwrap();
            for text in ["CONFIDENTIAL", "password: x", "The cat sat on the mat."] {
                assert!(!gate.is_match(text), "{disguise:?}: {text}");
            }
            for text in ["CONFIDENTIAL", "password: x", "SK-proj", "bob at example"] {
                assert!(gate.is_match(&disguise.undo(text)), "{disguise:?}: {text}");
            }
        }
    }
}
