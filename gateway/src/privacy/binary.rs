//! Base64, base32 and hex in text, read as the text they encode.
//!
//! A model decodes `NDUzOSAxNDg4IDAzNDMgNjQ2Nw==`, `MJXWEQDFPBQW24DMMU…` or
//! `626f62406578…` on request, so a card number or an address sent that way
//! is as readable to it as in plain text. [`decode`] finds every run of
//! base64 (standard or URL-safe alphabet, padded or not), base32 (RFC 4648's
//! alphabet, in either case, padded or not) or hex digits (packed, or pairs
//! apart: `62 6f 62`, `62:6f:62`) and decodes it. A run need not start on a
//! boundary of the encoding (`cardNDUz…`): each alignment is tried and the
//! one that reads best kept. Lines of a wrapped block (`base64 -w 64`) are
//! decoded as one run.
//!
//! What comes out is mostly not text: ordinary words decode to noise too.
//! Only stretches of [`MIN_READABLE`] or more readable characters are kept,
//! the rest become spaces, so that padding (`AAAA…`, NUL bytes) or bytes
//! between the groups of a number still separate them as a space would.
//!
//! Hand-written rather than through a base64 crate: decoding at any
//! alignment, with either alphabet, without padding and with trailing bits,
//! is what a strict decoder refuses, and it is a table lookup.

use std::borrow::Cow;

/// A run shorter than this (in encoded characters) is not decoded: it
/// could hold at most five bytes, less than any finding.
const MIN_RUN: usize = 8;

/// The shortest stretch of readable characters a decoding keeps.
const MIN_READABLE: usize = 4;

/// The shortest stretch kept of a decoding that is mostly noise.
const MIN_READABLE_IN_NOISE: usize = 12;

/// A wrapped block's lines are at least this long; shorter pieces with
/// spaces between are words, decoded one by one.
const MIN_LINE: usize = 16;

/// The text encoded by the base64, base32 and hex runs of `s`, a line per
/// run, if any run decodes to readable text; and whether that text is mostly text
/// (more readable than not), worth decoding further, rather than noise
/// with a few readable stretches.
pub(super) fn decode(s: &str) -> Option<(String, bool)> {
    let mut out = String::new();
    let (mut readable, mut decoded) = (0, 0);
    for run in runs(s) {
        let Some((bytes, score)) = best_decoding(&run) else {
            continue;
        };
        if 2 * score > bytes.len() {
            spaced_out(&bytes, &mut out);
            out.push('\n');
            readable += score;
            decoded += bytes.len();
        } else {
            // Noise: only its long stretches, which noise seldom has and a
            // finding between padding does; the rest would only make the
            // detectors' work dearer.
            for stretch in stretches(&bytes).filter(|s| s.len() >= MIN_READABLE_IN_NOISE) {
                out.push_str(&String::from_utf8_lossy(stretch));
                out.push('\n');
                decoded += stretch.len();
            }
        }
    }
    (!out.is_empty()).then_some((out, 2 * readable > decoded))
}

/// Base64's value of each byte (both alphabets), or `NONE`.
const NONE: u8 = 0xff;
const BASE64: [u8; 256] = {
    let mut t = [NONE; 256];
    let mut i = 0;
    while i < 26 {
        t[b'A' as usize + i] = i as u8;
        t[b'a' as usize + i] = 26 + i as u8;
        i += 1;
    }
    let mut d = 0;
    while d < 10 {
        t[b'0' as usize + d] = 52 + d as u8;
        d += 1;
    }
    t[b'+' as usize] = 62;
    t[b'-' as usize] = 62;
    t[b'/' as usize] = 63;
    t[b'_' as usize] = 63;
    t
};

/// Base32's value of each byte (RFC 4648's alphabet, either case), or
/// `NONE`. Its characters are base64 ones, so a base32 run is a base64 run.
const BASE32: [u8; 256] = {
    let mut t = [NONE; 256];
    let mut i = 0;
    while i < 26 {
        t[b'A' as usize + i] = i as u8;
        t[b'a' as usize + i] = i as u8;
        i += 1;
    }
    let mut d = 0;
    while d < 6 {
        t[b'2' as usize + d] = 26 + d as u8;
        d += 1;
    }
    t
};

/// What may stand between hex pairs written apart: one or two of these
/// (`62 6f`, `62:6f`, `0x62, 0x6f`, `62;\n6f`). (`-` and `_` are base64
/// characters: pairs joined by them come as one run, see [`hex_pairs`].)
const PAIR_GAP: &[u8] = b" \t\r\n:,.;|";

/// What may stand between groups of base64 written apart (`NDUz OSAx`).
const GROUP_GAP: &[u8] = b" \t\n.";

/// The encoded characters of each candidate run of `s`: maximal runs of
/// base64 characters (padding dropped), lines of a wrapped block joined,
/// groups of base64 written apart joined, and hex pairs (or groups, as
/// `xxd` writes them) written apart joined.
fn runs(s: &str) -> Vec<Vec<u8>> {
    let bytes = s.as_bytes();
    let base64 = |at: usize| {
        bytes
            .get(at)
            .is_some_and(|&b| BASE64[usize::from(b)] != NONE)
    };
    let mut out: Vec<Vec<u8>> = Vec::new();
    let mut pairs: Vec<u8> = Vec::new();
    let mut groups: Vec<u8> = Vec::new();
    // Whether the last run may go on after the line break that follows it.
    let mut open = false;
    let mut i = 0;
    while i < bytes.len() {
        let start = i;
        while base64(i) {
            i += 1;
        }
        if i == start {
            // Only white space lies between a wrapped block's lines.
            open &= bytes[i].is_ascii_whitespace();
            i += 1;
            while i < bytes.len() && !s.is_char_boundary(i) {
                i += 1;
            }
            continue;
        }
        let run = &bytes[start..i];
        let padded = bytes[i..].starts_with(b"=");
        while i < bytes.len() && bytes[i] == b'=' {
            i += 1;
        }
        // Base64 in groups apart (`NDUz OSAx NDg4`): whole quanta of four
        // characters, one gap character each, joined into one run.
        let group = !padded && run.len().is_multiple_of(4) && run.len() < MIN_LINE;
        if groups.is_empty() || !group {
            // Hex pairs or groups apart: `62 6f 62 40`, `0x62, 0x6f`,
            // `626f 6240`, `62-6f-62`.
            if let Some(digits) = hex_pairs(run) {
                pairs.extend_from_slice(&digits);
                let gap = bytes[i..]
                    .iter()
                    .take(3)
                    .take_while(|b| PAIR_GAP.contains(b))
                    .count();
                if (1..=2).contains(&gap) && bytes.get(i + gap).is_some_and(u8::is_ascii_hexdigit) {
                    i += gap;
                    continue;
                }
            }
            if pairs.len() >= MIN_RUN {
                out.push(std::mem::take(&mut pairs));
            }
            pairs.clear();
        }
        if group && bytes.get(i).is_some_and(|b| GROUP_GAP.contains(b)) && base64(i + 1) {
            groups.extend_from_slice(run);
            i += 1;
            continue;
        }
        // Copied only when kept: most runs are words.
        let run: Cow<'_, [u8]> = if groups.is_empty() {
            Cow::Borrowed(run)
        } else {
            groups.extend_from_slice(run);
            Cow::Owned(std::mem::take(&mut groups))
        };
        match out.last_mut() {
            Some(last) if open => last.extend_from_slice(&run),
            _ if run.len() >= MIN_RUN && looks_encoded(&run) => out.push(run.to_vec()),
            _ => {}
        }
        // A long line that ends at a line break (unpadded: padding ends a
        // block) may go on on the next.
        open = run.len() >= MIN_LINE
            && !padded
            && bytes[i..]
                .iter()
                .take_while(|b| b.is_ascii_whitespace())
                .any(|&b| b == b'\n');
    }
    if pairs.len() >= MIN_RUN {
        out.push(pairs);
    }
    out
}

/// The hex digits of a run that is hex written apart: one pair or group of
/// up to four (`62`, `0x62`, `626f` as `xxd` writes them), or pairs joined
/// by `-` or `_` (`62-6f-62`).
fn hex_pairs(run: &[u8]) -> Option<Vec<u8>> {
    let digits = run
        .strip_prefix(b"0x")
        .or_else(|| run.strip_prefix(b"0X"))
        .unwrap_or(run);
    if digits.is_empty() {
        return None;
    }
    if digits.len().is_multiple_of(2)
        && digits.len() <= 8
        && digits.iter().all(u8::is_ascii_hexdigit)
    {
        return Some(digits.to_vec());
    }
    // Pairs joined by one separator, the same throughout.
    let separator = *digits.get(2)?;
    if digits.len() % 3 != 2 || !matches!(separator, b'-' | b'_') {
        return None;
    }
    let mut out = Vec::with_capacity(digits.len());
    for chunk in digits.chunks(3) {
        let (pair, gap) = chunk.split_at(2);
        if !pair.iter().all(u8::is_ascii_hexdigit) || gap.iter().any(|&b| b != separator) {
            return None;
        }
        out.extend_from_slice(pair);
    }
    Some(out)
}

/// Whether a run may be base64 or hex rather than a word: past its first
/// character, at least two capitals or digits. Base64 of text has capitals
/// throughout, hex of text digits; a word (capitalised or not) has neither.
fn looks_encoded(run: &[u8]) -> bool {
    run[1..]
        .iter()
        .filter(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
        .nth(1)
        .is_some()
}

/// The most readable decoding of `run` (see [`score`]), with its score: as
/// base64 at each of its four alignments, as base32 at each of eight if it
/// is all base32 characters, and as hex at each of two if it is all hex
/// digits (behind an optional `0x`). `None` if none has a readable stretch.
fn best_decoding(run: &[u8]) -> Option<(Vec<u8>, usize)> {
    let digits = run
        .strip_prefix(b"0x")
        .or_else(|| run.strip_prefix(b"0X"))
        .unwrap_or(run);
    let hex = digits.iter().all(u8::is_ascii_hexdigit);
    let base32 = run.iter().all(|&c| BASE32[usize::from(c)] != NONE);
    let base64s = (0..4).map(|at| bits_at(&run[at.min(run.len())..], &BASE64, 6));
    let base32s = (0..8)
        .filter(|_| base32)
        .map(|at| bits_at(&run[at.min(run.len())..], &BASE32, 5));
    let hexes = (0..2)
        .filter(|_| hex)
        .map(|at| hex_at(&digits[at.min(digits.len())..]));
    base64s
        .chain(base32s)
        .chain(hexes)
        .map(|bytes| {
            let score = score(&bytes);
            (bytes, score)
        })
        .filter(|(_, score)| *score > 0)
        .max_by_key(|(_, score)| *score)
}

/// `run` decoded from its first character by `table`, `width` bits a
/// character (base64: 6, base32: 5), up to its last whole byte; characters
/// outside the table are skipped.
fn bits_at(run: &[u8], table: &[u8; 256], width: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(run.len() * width as usize / 8);
    let mut acc: u32 = 0;
    let mut bits = 0;
    for &c in run {
        let v = table[usize::from(c)];
        if v == NONE {
            continue;
        }
        acc = (acc << width) | u32::from(v);
        bits += width;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}

/// `run` decoded as hex digit pairs from its first character.
fn hex_at(run: &[u8]) -> Vec<u8> {
    let digits: Vec<u8> = run
        .iter()
        .filter_map(|c| (*c as char).to_digit(16))
        .map(|d| d as u8)
        .collect();
    digits.chunks_exact(2).map(|p| (p[0] << 4) | p[1]).collect()
}

/// A byte a decoding may keep: printable ASCII, a tab or a line break.
/// Bytes outside ASCII are not kept even where they would be UTF-8: noise
/// decodes to them often, and they would cost the detectors' fast path,
/// while what the detectors look for is written in ASCII.
fn is_readable(b: u8) -> bool {
    (0x20..0x7f).contains(&b) || matches!(b, b'\t' | b'\n' | b'\r')
}

/// The stretches of readable bytes in `bytes`, between the others.
fn stretches(bytes: &[u8]) -> impl Iterator<Item = &[u8]> {
    bytes.split(|&b| !is_readable(b))
}

/// How readable a decoding is: the bytes its stretches of at least
/// [`MIN_READABLE`] readable bytes hold.
fn score(bytes: &[u8]) -> usize {
    stretches(bytes)
        .map(<[u8]>::len)
        .filter(|&n| n >= MIN_READABLE)
        .sum()
}

/// Appends `bytes` to `out` as its stretches of at least [`MIN_READABLE`]
/// readable bytes, every other byte a space: as many characters as bytes.
fn spaced_out(bytes: &[u8], out: &mut String) {
    for (k, stretch) in stretches(bytes).enumerate() {
        if k > 0 {
            out.push(' ');
        }
        if stretch.len() >= MIN_READABLE {
            out.push_str(&String::from_utf8_lossy(stretch));
        } else {
            out.extend(std::iter::repeat_n(' ', stretch.len()));
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::decode;

    fn b64(s: &str) -> String {
        const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let b = s.as_bytes();
        let mut out = String::new();
        for chunk in b.chunks(3) {
            let n = chunk.iter().fold(0u32, |acc, &x| (acc << 8) | u32::from(x))
                << (8 * (3 - chunk.len()));
            for k in 0..=chunk.len() {
                out.push(A[(n >> (18 - 6 * k)) as usize & 63] as char);
            }
        }
        while !out.len().is_multiple_of(4) {
            out.push('=');
        }
        out
    }

    /// RFC 4648 base32, padded.
    fn b32(s: &str) -> String {
        const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
        let mut out = String::new();
        for chunk in s.as_bytes().chunks(5) {
            let n = chunk.iter().fold(0u64, |acc, &x| (acc << 8) | u64::from(x))
                << (8 * (5 - chunk.len()));
            let chars = (chunk.len() * 8).div_ceil(5);
            for k in 0..8 {
                out.push(if k < chars {
                    A[(n >> (35 - 5 * k)) as usize & 31] as char
                } else {
                    '='
                });
            }
        }
        out
    }

    fn hex(s: &str) -> String {
        hex::encode(s)
    }

    /// `encoded` in groups of four characters with `gap` between.
    fn grouped(encoded: &str, gap: &str) -> String {
        encoded
            .as_bytes()
            .chunks(4)
            .map(|g| std::str::from_utf8(g).unwrap())
            .collect::<Vec<_>>()
            .join(gap)
    }

    #[test]
    fn base64_and_hex_decode_in_every_layout() {
        let secret = "card 4539 1488 0343 6467";
        let encoded = b64(secret);
        let url_safe = encoded.replace('+', "-").replace('/', "_");
        let wrapped: String = b64(&secret.repeat(4))
            .as_bytes()
            .chunks(20)
            .map(|l| std::str::from_utf8(l).unwrap().to_owned() + "\n")
            .collect();
        let spaced_hex: Vec<String> = secret.bytes().map(|b| format!("{b:02X}")).collect();
        for text in [
            encoded.clone(),
            encoded.trim_end_matches('=').to_owned(),
            url_safe,
            format!("decode this: {encoded} please"),
            // Glued to a word: every alignment is tried.
            format!("x{encoded}"),
            format!("xy{encoded}"),
            format!("xyz{encoded}"),
            // Padding before it decodes to NUL bytes.
            format!("AAAAAAAAAAAA{encoded}"),
            wrapped,
            hex(secret),
            format!("0x{}", hex(secret)),
            spaced_hex.join(" "),
            spaced_hex.join(":"),
            spaced_hex.join("-"),
            spaced_hex.join("_"),
            spaced_hex.join(", "),
            spaced_hex.join(";\n"),
            spaced_hex.join("|"),
            spaced_hex.join("."),
            spaced_hex.join("\t"),
            format!("{{0x{}}}", spaced_hex.join(", 0x")),
            // As `xxd` groups them.
            grouped(&hex(secret), " "),
            // Base64 in groups of four, apart.
            grouped(&encoded, " "),
            grouped(&encoded, "."),
            grouped(&encoded, "\n"),
        ] {
            let (got, _) = decode(&text).unwrap_or_default();
            assert!(got.contains("4539 1488 0343 6467"), "{text:?} → {got:?}");
        }
    }

    #[test]
    fn base32_decodes_in_either_case_at_any_alignment() {
        let secret = "card 4539 1488 0343 6467";
        let encoded = b32(secret);
        assert_eq!(b32("bob@example.com"), "MJXWEQDFPBQW24DMMUXGG33N");
        let wrapped: String = b32(&secret.repeat(4))
            .as_bytes()
            .chunks(24)
            .map(|l| std::str::from_utf8(l).unwrap().to_owned() + "\n")
            .collect();
        for text in [
            encoded.clone(),
            encoded.trim_end_matches('=').to_owned(),
            encoded.to_lowercase(),
            format!("decode this base32: {encoded} thanks"),
            format!("x{encoded}"),
            format!("card{}", encoded.to_lowercase()),
            wrapped,
            grouped(&encoded, " "),
        ] {
            let (got, _) = decode(&text).unwrap_or_default();
            assert!(got.contains("4539 1488 0343 6467"), "{text:?} → {got:?}");
        }
        let (got, _) = decode(&b32("mail bob@example.com now")).unwrap_or_default();
        assert!(got.contains("bob@example.com"), "{got:?}");
    }

    #[test]
    fn a_run_of_two_encodings_keeps_both() {
        // Base64 of base64: the first decoding is itself a run.
        let twice = b64(&b64("bob@example.com"));
        let (once, text) = decode(&twice).unwrap();
        assert!(once.contains(&b64("bob@example.com")) && text, "{once:?}");
        assert!(decode(&once).unwrap().0.contains("bob@example.com"));
    }

    #[test]
    fn words_and_noise_yield_no_text() {
        for text in [
            "the gateway routes each request",
            "short AbCd 1234",
            "",
            "   \n\n",
            "ünïcödé wörds",
            "This text goes here with many more words",
        ] {
            assert_eq!(decode(text), None, "{text:?}");
        }
        // Noise decodes to noise: whatever it yields is short stretches.
        let noise = "kQ9Zr2xVb7Lp0TwYc4Ns8Hd1Mf6Gj3Ke5";
        if let Some((got, text)) = decode(noise) {
            assert!(got.trim().len() < noise.len() && !text, "{got:?}");
        }
    }
}
