//! The privacy scan's cost against the body's size: every text of a chat
//! body gathered, normalised and run through the builtin detectors
//! (`request_texts` then `classify`, as the chat handler does), at 1 KB,
//! 100 KB and 1 MB, for several shapes of body. The peer in the same run is
//! `serde_json`'s parse of the same bytes, which the gateway does anyway and
//! which is linear: the scan's cost per byte, and its ratio to the parse's,
//! must stay flat from 1 KB to 1 MB.
//!
//!     cargo bench -p gateway --bench privacy_scan
//!     cargo build --release --all-targets && target/release/deps/privacy_scan-* --bench
//!     SHAPES=hex,base64 target/release/deps/privacy_scan-* --bench   # some shapes only
//!
//! Shapes: English prose in one message; the same prose with non-ASCII
//! letters, so that every text is normalised (NFKC); many short messages;
//! one message of thousands of content parts; one tool whose JSON schema
//! has thousands of distinct keys (the shape that was quadratic); digits
//! everywhere, so the card and IBAN validators run on every candidate;
//! and two shapes an attacker would send to make the scan slow: escapes
//! everywhere (`\u0040`, `%2540`, `&#64;`, which the extractor decodes), and
//! near-misses of every detector (at signs, spelt "at" and "dot", colons,
//! dotted numbers and separators that start a match and never finish one),
//! and long unbroken runs of random base64, hex, hex with colons and
//! capitals with digits (secret-, hash-, IPv6- and IBAN-like all the way),
//! noise of letters, digits, punctuation and spaces, of every printable
//! character, and random bytes percent-escaped: the shapes on
//! which all detectors in one automaton reach a new state nearly every
//! byte.
//!
//! The scan's memory of texts seen before (`privacy_memo`) is off for the
//! shapes, so that each row is what a text costs the first time; the load
//! generator's body and a chat with a long system prompt are measured both
//! ways, and again with a question never asked before each time (`new`):
//! what the memory costs where it does not help.

use std::hint::black_box;
use std::time::{Duration, Instant};

use gateway::privacy::{classify_with, request_texts, Class, Memo, RuleSet};
use serde_json::{json, Map, Value};

const SIZES: [(usize, &str); 3] = [(1 << 10, "1 KB"), (100 << 10, "100 KB"), (1 << 20, "1 MB")];

const WORDS: &[&str] = &[
    "the", "gateway", "routes", "each", "request", "to", "an", "edge", "worker", "or", "cloud",
    "by", "cost", "latency", "energy", "and", "privacy", "model", "answer", "quickly", "with",
    "care", "for", "data", "that", "never", "leaves", "premises",
];

/// Text of about `len` bytes from `word(i)`, separated by spaces.
fn text(len: usize, word: impl Fn(usize) -> String) -> String {
    let mut s = String::with_capacity(len + 16);
    let mut i = 0;
    while s.len() < len {
        s.push_str(&word(i));
        s.push(' ');
        i += 1;
    }
    s
}

fn prose(i: usize) -> String {
    WORDS[(i * 7 + i / 3) % WORDS.len()].to_owned()
}

fn accented(i: usize) -> String {
    ["café", "naïve", "Ørsted", "straße", "ｆｕｌｌ", "déjà"][i % 6].to_owned() + &prose(i)
}

fn digits(i: usize) -> String {
    // Card-like and IBAN-like runs that fail their checksums, so every
    // candidate is validated and none fires.
    match i % 3 {
        0 => format!("4111 1111 1111 {:04}", ((i * 37) % 10_000) | 1),
        1 => format!("DE{:02}37040044053201300{:01}", i % 97, i % 9),
        _ => format!("{}", i * 7_919),
    }
}

fn escapes(i: usize) -> String {
    ["\\u0040x", "%2540y", "&#64;z", "\\x40w", "%40%2E", "&#x2e;"][i % 6].to_owned() + &prose(i)
}

fn near_misses(i: usize) -> String {
    match i % 8 {
        0 => "a @ b".to_owned(),
        1 => format!("{} at {} dot", prose(i), prose(i + 1)),
        2 => "x:y::z".to_owned(),
        3 => format!("{}.{}.{}", i % 256, (i * 3) % 256, (i * 7) % 1000),
        4 => "+ 1 - 2 ( 3".to_owned(),
        5 => "(at) [dot]".to_owned(),
        6 => format!("{:03}-{:02}", i % 1000, i % 100),
        _ => prose(i),
    }
}

/// Deterministic noise: the `i`th value of a small linear congruential
/// generator, enough to make runs no detector's literal prefix can skip.
fn noise(i: usize) -> u64 {
    let x = (i as u64 ^ 0x9e37_79b9_7f4a_7c15).wrapping_mul(6_364_136_223_846_793_005);
    (x ^ (x >> 29)).wrapping_mul(1_442_695_040_888_963_407) >> 17
}

/// A run of `len` characters drawn from `alphabet` by `noise`.
fn run_of(alphabet: &[u8], len: usize, seed: usize) -> String {
    (0..len)
        .map(|k| alphabet[noise(seed * 131 + k) as usize % alphabet.len()] as char)
        .collect()
}

const BASE64: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
const HEX: &[u8] = b"0123456789abcdef";
const HEX_COLON: &[u8] = b"0123456789abcdef:";
const UPPER_DIGITS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
const NOISE: &[u8] = b"abc .,:;@-_/ 123";
const PRINTABLE: &[u8] =
    b" !\"#$%&'()*+,-./0123456789:;<=>?@ABCDEFGHIJKLMNOPQRSTUVWXYZ[\\]^_`abcdefghijklmnopqrstuvwxyz{|}~ ";

fn chat(messages: &[Value]) -> Value {
    json!({"model": "m", "messages": messages, "max_tokens": 16})
}

/// The body of one shape at about `size` bytes.
fn body(shape: &str, size: usize) -> Vec<u8> {
    let v = match shape {
        "prose" => chat(&[json!({"role": "user", "content": text(size, prose)})]),
        "non-ascii" => chat(&[json!({"role": "user", "content": text(size, accented)})]),
        "digits" => chat(&[json!({"role": "user", "content": text(size, digits)})]),
        "escapes" => chat(&[json!({"role": "user", "content": text(size, escapes)})]),
        "near-misses" => chat(&[json!({"role": "user", "content": text(size, near_misses)})]),
        // Long unbroken runs that look like secrets, hashes, addresses or
        // account numbers all the way: the shapes that keep every detector
        // and the entropy windows busy.
        "base64" => chat(&[json!({"role": "user", "content": run_of(BASE64, size, 1)})]),
        "hex" => chat(&[json!({"role": "user", "content": run_of(HEX, size, 2)})]),
        "ipv6-like" => chat(&[json!({"role": "user", "content": run_of(HEX_COLON, size, 3)})]),
        "iban-like" => chat(&[json!({"role": "user", "content": run_of(UPPER_DIGITS, size, 4)})]),
        "noise" => chat(&[json!({"role": "user", "content": run_of(NOISE, size, 5)})]),
        "printable" => chat(&[json!({"role": "user", "content": run_of(PRINTABLE, size, 6)})]),
        // Random bytes percent-escaped, as binary in a URL is.
        "percent-noise" => {
            let hex = run_of(HEX, size * 2 / 3, 7);
            let mut escaped = String::with_capacity(hex.len() * 3 / 2);
            for pair in hex.as_bytes().chunks(2) {
                escaped.push('%');
                escaped.push_str(&String::from_utf8_lossy(pair));
            }
            chat(&[json!({"role": "user", "content": escaped})])
        }
        "messages" => chat(
            &(0..size / 100)
                .map(|i| json!({"role": "user", "content": text(80, |j| prose(i + j))}))
                .collect::<Vec<_>>(),
        ),
        "parts" => chat(&[json!({"role": "user", "content": (0..size / 60)
            .map(|i| json!({"type": "text", "text": text(20, |j| prose(i + j))}))
            .collect::<Vec<_>>()})]),
        "schema-keys" => {
            let properties: Map<String, Value> = (0..size / 40)
                .map(|i| {
                    (
                        format!("field_{i}"),
                        json!({"type": "string", "description": prose(i)}),
                    )
                })
                .collect();
            json!({"model": "m", "messages": [{"role": "user", "content": "hi"}],
                "tools": [{"type": "function", "function": {"name": "f",
                    "parameters": {"type": "object", "properties": properties}}}]})
        }
        other => unreachable!("unknown shape {other}"),
    };
    serde_json::to_vec(&v).unwrap_or_default()
}

/// The best time per call of `f` over a few batches of about 0.2 s each.
fn best(mut f: impl FnMut()) -> Duration {
    f();
    let mut best = Duration::MAX;
    for _ in 0..5 {
        let start = Instant::now();
        let mut n = 0u32;
        while start.elapsed() < Duration::from_millis(200) || n < 2 {
            f();
            n += 1;
        }
        best = best.min(start.elapsed() / n);
    }
    best
}

fn parse(bytes: &[u8]) -> Map<String, Value> {
    match serde_json::from_slice(bytes) {
        Ok(Value::Object(map)) => map,
        _ => Map::new(),
    }
}

fn main() {
    // `cargo test --benches` runs this with no `--bench` flag: a quick
    // smoke run only.
    let quick = !std::env::args().any(|a| a == "--bench");
    // `SHAPES=hex,base64` runs only those.
    let only = std::env::var("SHAPES").ok();
    let Some(rules) = RuleSet::builtins() else {
        eprintln!("the builtin detectors did not compile");
        std::process::exit(1);
    };
    println!(
        "{:<12} {:>7} {:>10} {:>10} {:>9} {:>9} {:>11} {:>10}",
        "shape", "size", "parse µs", "scan µs", "parse ns/B", "scan ns/B", "scan/parse", "vs 1 KB"
    );
    if only
        .as_ref()
        .is_none_or(|o| o.split(',').any(|s| s == "request"))
    {
        whole_bodies(rules);
    }
    for shape in [
        "prose",
        "non-ascii",
        "digits",
        "escapes",
        "near-misses",
        "base64",
        "hex",
        "ipv6-like",
        "iban-like",
        "noise",
        "printable",
        "percent-noise",
        "messages",
        "parts",
        "schema-keys",
    ] {
        if only
            .as_ref()
            .is_some_and(|o| !o.split(',').any(|s| s == shape))
        {
            continue;
        }
        let mut first_per_byte = None;
        for (size, label) in SIZES {
            if quick && size > 1 << 10 {
                continue;
            }
            let bytes = body(shape, size);
            report(shape, label, &bytes, rules, None, Some(&mut first_per_byte));
        }
    }
}

/// The load generator's body, at its own size: what every request of the
/// gateway benchmarks pays; and a chat with a 2 KB system prompt, as
/// applications send with every request. Each scanned afresh, with its
/// texts' findings remembered (as the gateway does by default), and with
/// a new question each time, without and with the memory.
fn whole_bodies(rules: &RuleSet) {
    let question = "Say something short about load testing.";
    let bodies = [
        ("request", json!([{"role": "user", "content": question}])),
        (
            "system",
            json!([
                {"role": "system", "content": text(2 << 10, prose)},
                {"role": "user", "content": question},
            ]),
        ),
    ];
    let chat = |messages: &Value| {
        json!({
            "model": "mock-model",
            "messages": messages,
            "max_tokens": 16,
            "stream": true,
        })
    };
    for (shape, messages) in bodies {
        let bytes = serde_json::to_vec(&chat(&messages)).unwrap_or_default();
        let label = format!("{} B", bytes.len());
        report(shape, &label, &bytes, rules, None, None);
        let memo = Memo::default();
        report(
            &format!("{shape}, kept"),
            &label,
            &bytes,
            rules,
            Some(&memo),
            None,
        );
        // The same body with a question never asked before: what the
        // memory costs when what it keeps is not asked for again (the
        // body is built anew in both rows alike).
        let unique = |n: u64| {
            let mut messages = messages.clone();
            if let Some(last) = messages.as_array_mut().and_then(|m| m.last_mut()) {
                last["content"] = json!(format!("{question} ({n} times)"));
            }
            match chat(&messages) {
                Value::Object(map) => map,
                _ => Map::new(),
            }
        };
        let once = |label: &str, memo: Option<&Memo>| {
            let mut n = 0u64;
            let t = best(|| {
                n += 1;
                let map = unique(n);
                let texts = request_texts(&map);
                black_box(classify_with(texts, Class::Public, None, rules, memo));
            });
            println!(
                "{:<12} {:>7} {:>10} {:>10.1}",
                label,
                "",
                "",
                t.as_secs_f64() * 1e6
            );
        };
        once(&format!("{shape}, new"), None);
        once(&format!("{shape}, new, kept"), Some(&Memo::default()));
    }
}

/// Times the parse and the scan of `bytes` and prints a row; `first_per_byte`
/// holds the shape's scan per byte at its first size, for the last column.
fn report(
    shape: &str,
    label: &str,
    bytes: &[u8],
    rules: &RuleSet,
    memo: Option<&Memo>,
    first_per_byte: Option<&mut Option<f64>>,
) {
    let map = parse(bytes);
    let parse_t = best(|| {
        black_box(parse(black_box(bytes)));
    });
    let scan_t = best(|| {
        black_box(classify_with(
            request_texts(black_box(&map)),
            Class::Public,
            None,
            rules,
            memo,
        ));
    });
    let per_byte = |t: Duration| t.as_nanos() as f64 / bytes.len() as f64;
    let scan_pb = per_byte(scan_t);
    let first = first_per_byte.map_or(scan_pb, |f| *f.get_or_insert(scan_pb));
    println!(
        "{:<12} {:>7} {:>10.1} {:>10.1} {:>9.2} {:>9.2} {:>11.2} {:>9.2}x",
        shape,
        label,
        parse_t.as_secs_f64() * 1e6,
        scan_t.as_secs_f64() * 1e6,
        per_byte(parse_t),
        scan_pb,
        scan_t.as_secs_f64() / parse_t.as_secs_f64(),
        scan_pb / first,
    );
}
