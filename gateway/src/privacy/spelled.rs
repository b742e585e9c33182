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

/// What a number word stands for.
#[derive(Clone, Copy)]
enum Word {
    /// A digit: `four`, `vier`, `четыре`.
    Digit(u8),
    /// Ten to nineteen: `twelve`.
    Teen(u8),
    /// A multiple of ten, which a digit word may follow: `forty`
    /// (`forty-five` is 45).
    Tens(u8),
    /// Repeats the digit word after it: `double`, `triple`.
    Repeat(usize),
}

/// Number words in lower case: the digits in English, German, French,
/// Spanish, Italian, Portuguese, Dutch, Swedish, Polish, Turkish and
/// Russian; English teens, tens and repeats.
const WORDS: &[(&str, Word)] = {
    use Word::{Digit, Repeat, Teen, Tens};
    &[
        ("zero", Digit(0)),
        ("oh", Digit(0)),
        ("nought", Digit(0)),
        ("null", Digit(0)),
        ("zéro", Digit(0)),
        ("cero", Digit(0)),
        ("nul", Digit(0)),
        ("noll", Digit(0)),
        ("sıfır", Digit(0)),
        ("ноль", Digit(0)),
        ("нуль", Digit(0)),
        ("one", Digit(1)),
        ("eins", Digit(1)),
        ("un", Digit(1)),
        ("une", Digit(1)),
        ("uno", Digit(1)),
        ("una", Digit(1)),
        ("um", Digit(1)),
        ("uma", Digit(1)),
        ("een", Digit(1)),
        ("één", Digit(1)),
        ("ett", Digit(1)),
        ("en", Digit(1)),
        ("jeden", Digit(1)),
        ("bir", Digit(1)),
        ("один", Digit(1)),
        ("одна", Digit(1)),
        ("two", Digit(2)),
        ("zwei", Digit(2)),
        ("zwo", Digit(2)),
        ("deux", Digit(2)),
        ("dos", Digit(2)),
        ("due", Digit(2)),
        ("dois", Digit(2)),
        ("duas", Digit(2)),
        ("twee", Digit(2)),
        ("två", Digit(2)),
        ("dwa", Digit(2)),
        ("iki", Digit(2)),
        ("два", Digit(2)),
        ("две", Digit(2)),
        ("three", Digit(3)),
        ("drei", Digit(3)),
        ("trois", Digit(3)),
        ("tres", Digit(3)),
        ("tre", Digit(3)),
        ("três", Digit(3)),
        ("drie", Digit(3)),
        ("trzy", Digit(3)),
        ("üç", Digit(3)),
        ("три", Digit(3)),
        ("four", Digit(4)),
        ("vier", Digit(4)),
        ("quatre", Digit(4)),
        ("cuatro", Digit(4)),
        ("quattro", Digit(4)),
        ("quatro", Digit(4)),
        ("fyra", Digit(4)),
        ("cztery", Digit(4)),
        ("dört", Digit(4)),
        ("четыре", Digit(4)),
        ("five", Digit(5)),
        ("fünf", Digit(5)),
        ("fuenf", Digit(5)),
        ("cinq", Digit(5)),
        ("cinco", Digit(5)),
        ("cinque", Digit(5)),
        ("vijf", Digit(5)),
        ("fem", Digit(5)),
        ("pięć", Digit(5)),
        ("beş", Digit(5)),
        ("пять", Digit(5)),
        ("six", Digit(6)),
        ("sechs", Digit(6)),
        ("seis", Digit(6)),
        ("sei", Digit(6)),
        ("zes", Digit(6)),
        ("sex", Digit(6)),
        ("sześć", Digit(6)),
        ("altı", Digit(6)),
        ("шесть", Digit(6)),
        ("seven", Digit(7)),
        ("sieben", Digit(7)),
        ("sept", Digit(7)),
        ("siete", Digit(7)),
        ("sette", Digit(7)),
        ("sete", Digit(7)),
        ("zeven", Digit(7)),
        ("sju", Digit(7)),
        ("siedem", Digit(7)),
        ("yedi", Digit(7)),
        ("семь", Digit(7)),
        ("eight", Digit(8)),
        ("acht", Digit(8)),
        ("huit", Digit(8)),
        ("ocho", Digit(8)),
        ("otto", Digit(8)),
        ("oito", Digit(8)),
        ("åtta", Digit(8)),
        ("osiem", Digit(8)),
        ("sekiz", Digit(8)),
        ("восемь", Digit(8)),
        ("nine", Digit(9)),
        ("neun", Digit(9)),
        ("neuf", Digit(9)),
        ("nueve", Digit(9)),
        ("nove", Digit(9)),
        ("negen", Digit(9)),
        ("nio", Digit(9)),
        ("dziewięć", Digit(9)),
        ("dokuz", Digit(9)),
        ("девять", Digit(9)),
        ("ten", Teen(10)),
        ("eleven", Teen(11)),
        ("twelve", Teen(12)),
        ("thirteen", Teen(13)),
        ("fourteen", Teen(14)),
        ("fifteen", Teen(15)),
        ("sixteen", Teen(16)),
        ("seventeen", Teen(17)),
        ("eighteen", Teen(18)),
        ("nineteen", Teen(19)),
        ("twenty", Tens(2)),
        ("thirty", Tens(3)),
        ("forty", Tens(4)),
        ("fourty", Tens(4)),
        ("fifty", Tens(5)),
        ("sixty", Tens(6)),
        ("seventy", Tens(7)),
        ("eighty", Tens(8)),
        ("ninety", Tens(9)),
        ("double", Repeat(2)),
        ("triple", Repeat(3)),
    ]
};

/// The longest number word, in bytes.
const LONGEST_WORD: usize = 16;

/// The pattern of [`gate`]: any number word or run of digits and
/// look-alikes, then three more, each after one to three characters that
/// are not letters, digits or a line break.
fn gate_pattern() -> String {
    let mut words: Vec<&str> = WORDS.iter().map(|(w, _)| *w).collect();
    // Longest first, so an alternation never stops at a prefix.
    words.sort_by_key(|w| std::cmp::Reverse(w.len()));
    let token = format!(r"(?:{}|[0-9oil|]+)", words.join("|"));
    format!(r"(?i){token}(?:[^\p{{L}}\p{{N}}|]{{1,3}}{token}){{3}}")
}

/// Matches wherever [`digits`] could find a run to rewrite, and in more
/// places (it is a superset: any case, no token boundaries): [`MIN_RUN`]
/// number words or runs of digits and look-alikes, one to three other
/// characters between each and the next. Run in the
/// detectors' one pass, it spares the tokenising of text with no such run.
pub(super) fn gate() -> &'static str {
    static GATE: std::sync::LazyLock<String> = std::sync::LazyLock::new(gate_pattern);
    &GATE
}

/// A number-like token of the text: its byte range, its digits, and
/// whether it was read out (a single digit, or number words), so that it
/// joins the read-out tokens next to it.
struct Token {
    from: usize,
    to: usize,
    digits: String,
    read_out: bool,
    /// A multiple of ten in words, which a digit word may still complete.
    tens: bool,
}

/// `s` with its runs of number-like tokens as digits, if it has any that
/// needed rewriting. Digits read out one by one (`4 5 3 9`, `four five`,
/// `forty-five`, `double eight`, one a line) with only white space between
/// are joined, as a number read out is; other separators between them are
/// kept (`one two three - four five` is `123 - 45`), and if one was, the
/// same again with every separator joined too (`4-5-3-9`, `four, five`).
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

/// One rewriting of `s` (see [`digits`]), separators between read-out
/// digits joined or kept; `kept_separator` says whether one was kept.
fn rewritten(s: &str, join_all: bool, kept_separator: &mut bool) -> Option<String> {
    let mut out = String::new();
    let mut written = 0;
    let mut run: Vec<Token> = Vec::new();
    let mut write = |run: &mut Vec<Token>, out: &mut String, written: &mut usize| {
        rewrite(s, run, join_all, kept_separator, out, written);
        run.clear();
    };
    // A repeat word (`double`) waiting for the digit it repeats.
    let mut repeat: Option<(usize, usize, usize)> = None;
    for (from, to) in tokens(s) {
        // A bar on its own is a separator (`4 | 5 | 3`), not a 1.
        if s[from..to].bytes().all(|b| b == b'|') {
            continue;
        }
        let word = word(&s[from..to]);
        if let Some(Word::Repeat(times)) = word {
            if repeat.is_some() {
                write(&mut run, &mut out, &mut written);
            }
            repeat = Some((from, to, times));
            continue;
        }
        let Some(mut token) = number(&s[from..to], word, from, to) else {
            write(&mut run, &mut out, &mut written);
            repeat = None;
            continue;
        };
        if let Some((first, last, times)) = repeat.take() {
            if token.read_out && token.digits.len() == 1 && near(&s[last..from]) {
                token.digits = token.digits.repeat(times);
                token.from = first;
            } else {
                // The repeat word repeats nothing: it is a word, and ends
                // the run.
                write(&mut run, &mut out, &mut written);
            }
        }
        // A digit word completes the multiple of ten before it: `forty-five`.
        if let Some(prev) = run.last_mut() {
            if prev.tens && token.read_out && token.digits.len() == 1 && near(&s[prev.to..from]) {
                prev.digits.pop();
                prev.digits.push_str(&token.digits);
                prev.to = token.to;
                prev.tens = false;
                continue;
            }
        }
        // A run goes on over at most three characters, a line break only
        // between read-out digits.
        let joined = run.last().is_none_or(|prev| {
            let gap = &s[prev.to..token.from];
            gap.chars().count() <= 3 && (!gap.contains('\n') || (prev.read_out && token.read_out))
        });
        if !joined {
            write(&mut run, &mut out, &mut written);
        }
        run.push(token);
    }
    write(&mut run, &mut out, &mut written);
    if written == 0 {
        return None;
    }
    out.push_str(&s[written..]);
    Some(out)
}

/// Whether two words of one number stand this close: a space or a hyphen
/// (`forty-five`, `double eight`).
fn near(gap: &str) -> bool {
    matches!(gap, " " | "-")
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
/// digits and read-out digits joined, if the run is long enough and that
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
        prev.read_out && t.read_out && (join_all || s[prev.to..t.from].trim().is_empty())
    };
    // Read-out digits apart by more than white space (`4, 5, 3, 9`) ask
    // for the rewriting that joins every separator, whether or not this
    // one changes anything.
    *kept_separator |= run
        .windows(2)
        .any(|w| w[0].read_out && w[1].read_out && !s[w[0].to..w[1].from].trim().is_empty());
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
            _ => out.push_str(gap),
        }
        out.push_str(&t.digits);
        *written = t.to;
        prev = Some(t);
    }
}

/// The number-like token `s[from..to]` (`word` is what it says as a number
/// word): a number word, or digits and look-alike letters with at least
/// one digit or four or more look-alikes (`OOOO`). (Not `S`, `B`, `D`:
/// hex would then read as digits everywhere, a view of every hex run for
/// every detector.)
fn number(token: &str, word: Option<Word>, from: usize, to: usize) -> Option<Token> {
    let read = |digits: String, tens: bool| Token {
        from,
        to,
        digits,
        read_out: true,
        tens,
    };
    match word {
        Some(Word::Digit(d)) => return Some(read(char::from(b'0' + d).to_string(), false)),
        Some(Word::Teen(n)) => return Some(read(n.to_string(), false)),
        Some(Word::Tens(d)) => return Some(read(format!("{d}0"), true)),
        Some(Word::Repeat(_)) | None => {}
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
    let digit_count = token.bytes().filter(u8::is_ascii_digit).count();
    // `I` and `lol` are words; `OOOO` in a run of digits is zeros.
    if !(digit_count > 0 || token.len() >= 4) {
        return None;
    }
    Some(Token {
        from,
        to,
        digits: token.chars().filter_map(digit).collect(),
        read_out: digit_count == 1 && token.len() == 1,
        tens: false,
    })
}

/// What a number word says, in any case (see [`WORDS`]).
fn word(token: &str) -> Option<Word> {
    static BY_NAME: std::sync::LazyLock<std::collections::HashMap<&str, Word>> =
        std::sync::LazyLock::new(|| WORDS.iter().copied().collect());
    if !(2..=LONGEST_WORD).contains(&token.len()) {
        return None;
    }
    let word = if token.is_ascii() {
        let mut lower = [0u8; LONGEST_WORD];
        for (l, b) in lower.iter_mut().zip(token.bytes()) {
            *l = b.to_ascii_lowercase();
        }
        BY_NAME.get(std::str::from_utf8(&lower[..token.len()]).ok()?)
    } else {
        // `FÜNF`, `ЧЕТЫРЕ`: letters outside ASCII lowered by Unicode's rules.
        BY_NAME.get(token.to_lowercase().as_str())
    };
    word.copied()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::{digits, gate, LONGEST_WORD, WORDS};

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
            ("4, 5, 3, 9, 1, 4", &["453914"]),
            ("4 | 5 | 3 | 9", &["4539"]),
            // Tens, teens and repeats, as a number is read out in pairs.
            ("forty-five thirty-nine fourteen eighty eight", &["45391488"]),
            ("four double eight one triple three", &["4881333"]),
            ("twenty twelve 7 8", &["201278"]),
            // More languages.
            ("vier vijf drie negen", &["4539"]),
            ("fyra fem tre nio", &["4539"]),
            ("четыре пять три девять", &["4539"]),
            ("ЧЕТЫРЕ ПЯТЬ ТРИ ДЕВЯТЬ", &["4539"]),
            ("quatro cinco duas zwo", &["4522"]),
        ] {
            assert_eq!(digits(text), want, "{text}");
        }
    }

    /// The gate is a superset of what is rewritten: it matches every text
    /// that [`digits`] rewrites, and compiles.
    #[test]
    fn the_gate_lets_every_rewritten_text_through() {
        let gate = regex::Regex::new(gate()).unwrap();
        for text in [
            "four five three nine one four eight eight",
            "card: Four-Five-Three-Nine 1488",
            "4539 l488 O343 6467",
            "55OO OOOO OOOO OOO4",
            "vier fünf drei neun, eins",
            "Zéro un deux trois",
            "tres três tre trois",
            "x |1 2 3 4",
            "4\n5\n3\n9",
            "4, 5, 3, 9",
            "forty-five thirty-nine fourteen eighty",
            "double eight one two three",
            "четыре пять три девять",
            "quatro duas zwo dos",
            "dziewięć osiem siedem sześć",
        ] {
            assert!(!digits(text).is_empty(), "{text}");
            assert!(gate.is_match(text), "{text}");
        }
        assert!(!gate.is_match("the gateway routes each request"));
    }

    /// Every word is in lower case (they are looked up lowered) and no
    /// longer than the lookup's buffer.
    #[test]
    fn number_words_are_lower_case_and_short() {
        for (w, _) in WORDS {
            assert_eq!(*w, w.to_lowercase(), "{w}");
            assert!(w.len() <= LONGEST_WORD, "{w}");
        }
    }

    #[test]
    fn prose_is_left_alone() {
        for text in [
            "one or two of the three",
            "I think Ollie and I will go",
            "4539 1488 0343 6467",
            "one apple, two pears, three figs, four",
            "SBD DSB BBS ZZZ",
            "a double bed, a triple room, one two",
            "",
        ] {
            assert!(digits(text).is_empty(), "{text}");
        }
    }
}
