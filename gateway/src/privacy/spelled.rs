//! Digits written as words or as look-alike letters, read as digits.
//!
//! `four five three nine one four eight eight…` and `4539 l488 O343 6467`
//! are a card number to a model. [`digits`] rewrites a run of at least
//! [`MIN_RUN`] number-like tokens (digit words in the languages the
//! credential detector knows, digits, tokens of digits and the letters
//! that pass for them: `O`/`o` for 0, `I`/`l`/`|` for 1) with each token
//! as its digits, so that the digit detectors see the number. A shorter run
//! is left alone: "one or two", "I", "Ollie".

/// The fewest number-like tokens in a row that are read as digits.
const MIN_RUN: usize = 4;

/// Matches wherever [`digits`] could find a run to rewrite, and in more
/// places (it is a superset: any case, no token boundaries): [`MIN_RUN`]
/// digit words or runs of digits and look-alikes, one to three other
/// characters (not a line break) between each and the next. Run in the
/// detectors' one pass, it spares the tokenising of text with no such run.
pub(super) const GATE: &str = concat!(
    r"(?i)(?:zero|oh|nought|null|zéro|cero|one|eins|un|uno|um|two|zwei|deux|dos|due|dois",
    r"|three|drei|trois|tres|tre|três|four|vier|quatre|cuatro|quattro|quatro|five|fünf|fuenf",
    r"|cinq|cinco|cinque|six|sechs|seis|sei|seven|sieben|sept|siete|sette|sete|eight|acht",
    r"|huit|ocho|otto|oito|nine|neun|neuf|nueve|nove|[0-9oil|]+)",
    r"(?:[^\p{L}\p{N}|\n]{1,3}(?:zero|oh|nought|null|zéro|cero|one|eins|un|uno|um|two|zwei",
    r"|deux|dos|due|dois|three|drei|trois|tres|tre|três|four|vier|quatre|cuatro|quattro",
    r"|quatro|five|fünf|fuenf|cinq|cinco|cinque|six|sechs|seis|sei|seven|sieben|sept|siete",
    r"|sette|sete|eight|acht|huit|ocho|otto|oito|nine|neun|neuf|nueve|nove|[0-9oil|]+)){3}",
);

/// Whether [`GATE`] matches `text`, compiled on its own for text the one
/// pass gave up on (if it could not be compiled, as the unit tests rule
/// out: yes, so the text is tokenised anyway).
pub(super) fn gate_matches(text: &str) -> bool {
    static GATE_ALONE: std::sync::LazyLock<Option<regex::Regex>> =
        std::sync::LazyLock::new(|| regex::Regex::new(GATE).ok());
    GATE_ALONE.as_ref().is_none_or(|gate| gate.is_match(text))
}

/// A number-like token of the text: its byte range and its digits.
struct Token {
    from: usize,
    to: usize,
    digits: String,
}

/// `s` with its runs of number-like tokens as digits, if it has any that
/// needed rewriting. Single digits with only white space between (`4 5 3
/// 9`, `four five`, one a line) are joined, as a number read out digit by
/// digit is; other separators between them are kept (`one two three - four
/// five` is `123 - 45`), and if one was, the same again with every
/// separator joined too (`4-5-3-9`, `four, five`).
pub(super) fn digits(s: &str) -> Vec<String> {
    let mut views = Vec::new();
    let mut kept_separator = false;
    if let Some(view) = rewritten(s, false, &mut kept_separator) {
        views.push(view);
    }
    if kept_separator {
        views.extend(rewritten(s, true, &mut kept_separator));
    }
    views
}

/// One rewriting of `s` (see [`digits`]), separators between single digits
/// joined or kept; `kept_separator` says whether one was kept.
fn rewritten(s: &str, join_all: bool, kept_separator: &mut bool) -> Option<String> {
    let mut out = String::new();
    let mut written = 0;
    let mut run: Vec<Token> = Vec::new();
    let mut write = |run: &mut Vec<Token>, out: &mut String, written: &mut usize| {
        rewrite(s, run, join_all, kept_separator, out, written);
        run.clear();
    };
    for (from, to) in tokens(s) {
        let Some(digits) = as_digits(&s[from..to]) else {
            write(&mut run, &mut out, &mut written);
            continue;
        };
        // A run goes on over at most three characters, a line break only
        // between single digits.
        let joined = run.last().is_none_or(|prev| {
            let gap = &s[prev.to..from];
            gap.chars().count() <= 3
                && (!gap.contains('\n') || (prev.digits.len() == 1 && digits.len() == 1))
        });
        if !joined {
            write(&mut run, &mut out, &mut written);
        }
        run.push(Token { from, to, digits });
    }
    write(&mut run, &mut out, &mut written);
    if written == 0 {
        return None;
    }
    out.push_str(&s[written..]);
    Some(out)
}

/// The byte ranges of the tokens of `s`: runs of letters, digits and `|`.
fn tokens(s: &str) -> impl Iterator<Item = (usize, usize)> + '_ {
    let bytes = s.as_bytes();
    // The length of the token character at `at` (0 if it is none).
    let token_char = move |at: usize| -> usize {
        match bytes[at] {
            b if b.is_ascii_alphanumeric() || b == b'|' => 1,
            b if b.is_ascii() => 0,
            _ => s[at..]
                .chars()
                .next()
                .filter(|c| c.is_alphanumeric())
                .map_or(0, char::len_utf8),
        }
    };
    let mut at = 0;
    std::iter::from_fn(move || {
        // Skip what is not a token (whole characters at a time).
        while at < bytes.len() && token_char(at) == 0 {
            at += 1;
            while at < bytes.len() && !s.is_char_boundary(at) {
                at += 1;
            }
        }
        if at == bytes.len() {
            return None;
        }
        let from = at;
        loop {
            let len = if at < bytes.len() { token_char(at) } else { 0 };
            if len == 0 {
                return Some((from, at));
            }
            at += len;
        }
    })
}

/// Writes `s` up to the end of `run` to `out`, the run's tokens as their
/// digits and single digits joined, if the run is long enough and that
/// changes anything.
fn rewrite(
    s: &str,
    run: &[Token],
    join_all: bool,
    kept_separator: &mut bool,
    out: &mut String,
    written: &mut usize,
) {
    if run.len() < MIN_RUN {
        return;
    }
    let joins = |prev: &Token, t: &Token| {
        prev.digits.len() == 1
            && t.digits.len() == 1
            && (join_all || s[prev.to..t.from].trim().is_empty())
    };
    let changes = run.iter().any(|t| t.digits != s[t.from..t.to])
        || run.windows(2).any(|w| joins(&w[0], &w[1]));
    if !changes {
        return;
    }
    let mut prev: Option<&Token> = None;
    for t in run {
        let gap = &s[*written..t.from];
        match prev {
            Some(p) if joins(p, t) => {}
            Some(p) => {
                *kept_separator |= p.digits.len() == 1 && t.digits.len() == 1;
                out.push_str(gap);
            }
            None => out.push_str(gap),
        }
        out.push_str(&t.digits);
        *written = t.to;
        prev = Some(t);
    }
}

/// The digits a token stands for: a digit word's, or digits and look-alike
/// letters with at least one digit or four or more look-alikes (`OOOO`).
fn as_digits(token: &str) -> Option<String> {
    if let Some(d) = word_digit(token) {
        return Some(char::from(b'0' + d).to_string());
    }
    let digit = |c: char| match c {
        '0'..='9' => Some(c),
        'O' | 'o' => Some('0'),
        'I' | 'i' | 'l' | 'L' | '|' => Some('1'),
        _ => None,
    };
    if !token.chars().all(|c| digit(c).is_some()) {
        return None;
    }
    let real = token.bytes().filter(u8::is_ascii_digit).count();
    // `I` and `lol` are words; `OOOO` in a run of digits is zeros.
    (real > 0 || token.len() >= 4).then(|| token.chars().filter_map(digit).collect())
}

/// The digit a digit word stands for, in any case: English, German,
/// French, Spanish, Italian, Portuguese.
fn word_digit(token: &str) -> Option<u8> {
    if !(2..=7).contains(&token.len()) {
        return None;
    }
    if token.is_ascii() {
        ascii_word_digit(token)
    } else {
        // `FÜNF`, `ZÉRO`: letters outside ASCII lowered by Unicode's rules.
        ascii_word_digit(&token.to_lowercase())
    }
}

/// [`word_digit`] for a token lowered, or to be lowered, in ASCII only.
fn ascii_word_digit(token: &str) -> Option<u8> {
    if !(2..=7).contains(&token.len()) {
        return None;
    }
    let mut lower = [0u8; 7];
    for (l, b) in lower.iter_mut().zip(token.bytes()) {
        *l = b.to_ascii_lowercase();
    }
    Some(match &lower[..token.len()] {
        b"zero" | b"oh" | b"nought" | b"null" | b"z\xc3\xa9ro" | b"cero" => 0,
        b"one" | b"eins" | b"un" | b"une" | b"uno" | b"una" | b"um" | b"uma" => 1,
        b"two" | b"zwei" | b"zwo" | b"deux" | b"dos" | b"due" | b"dois" | b"duas" => 2,
        b"three" | b"drei" | b"trois" | b"tres" | b"tre" | b"tr\xc3\xaas" => 3,
        b"four" | b"vier" | b"quatre" | b"cuatro" | b"quattro" | b"quatro" => 4,
        b"five" | b"f\xc3\xbcnf" | b"fuenf" | b"cinq" | b"cinco" | b"cinque" => 5,
        b"six" | b"sechs" | b"seis" | b"sei" => 6,
        b"seven" | b"sieben" | b"sept" | b"siete" | b"sette" | b"sete" => 7,
        b"eight" | b"acht" | b"huit" | b"ocho" | b"otto" | b"oito" => 8,
        b"nine" | b"neun" | b"neuf" | b"nueve" | b"nove" => 9,
        _ => return None,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::{digits, GATE};

    #[test]
    fn words_and_look_alikes_become_digits() {
        for (text, want) in [
            (
                "four five three nine one four eight eight zero three four three six four six seven",
                &["4539148803436467"][..],
            ),
            (
                "card: Four-Five-Three-Nine 1488",
                &["card: 4-5-3-9 1488", "card: 4539 1488"],
            ),
            ("one two three - four five", &["123 - 45", "12345"]),
            ("4539 l488 O343 6467", &["4539 1488 0343 6467"]),
            ("55OO OOOO OOOO OOO4", &["5500 0000 0000 0004"]),
            ("vier fünf drei neun, eins", &["4539, 1", "45391"]),
            ("FÜNF VIER ZÉRO TRÊS", &["5403"]),
            ("cuatro cinco tres nueve", &["4539"]),
            ("card: 4 5 3 9 1 4 8 8", &["card: 45391488"]),
            ("4539 1 4 8 8 0343 6467", &["4539 1488 0343 6467"]),
            ("4\n5\n3\n9", &["4539"]),
            ("four, five / three_nine", &["4, 5 / 3_9", "4539"]),
        ] {
            assert_eq!(digits(text), want, "{text}");
        }
    }

    /// The gate is a superset of what is rewritten: it matches every text
    /// that [`digits`] rewrites, and compiles.
    #[test]
    fn the_gate_lets_every_rewritten_text_through() {
        let gate = regex::Regex::new(GATE).unwrap();
        for text in [
            "four five three nine one four eight eight",
            "card: Four-Five-Three-Nine 1488",
            "4539 l488 O343 6467",
            "55OO OOOO OOOO OOO4",
            "vier fünf drei neun, eins",
            "Zéro un deux trois",
            "tres três tre trois",
            "x |1 2 3 4",
        ] {
            assert!(!digits(text).is_empty(), "{text}");
            assert!(gate.is_match(text), "{text}");
        }
        assert!(!gate.is_match("the gateway routes each request"));
    }

    #[test]
    fn prose_is_left_alone() {
        for text in [
            "one or two of the three",
            "I think Ollie and I will go",
            "4539 1488 0343 6467",
            "one apple, two pears, three figs, four",
            "",
        ] {
            assert!(digits(text).is_empty(), "{text}");
        }
    }
}
