//! Which texts of a request the detectors see.
//!
//! The rule is "nothing reaches an upstream that the classifier did not
//! see": every string value, every number (as the decimal text it is
//! forwarded as) *and every object key* anywhere in the body the upstream
//! would receive, whatever the field (messages, tools and their JSON
//! schemas, `response_format`, `prediction`, `metadata`, `user`, `stop`,
//! fields the gateway does not know). No client header is forwarded, so
//! none needs scanning.
//!
//! Text split over several strings is scanned joined as well:
//! - within one item (one element of a top-level array, a message or a
//!   tool, or one other top-level field), its strings and numbers joined
//!   per field name (all `text` parts of a message, all `arguments` of its
//!   tool calls, all values of an `enum`), in document order, so the labels
//!   between them (`"type":"text"`) do not break a number apart;
//! - across the messages of one array, what they say (`content`, `text`,
//!   `refusal`) joined per `role`, a line per text: a card number whose
//!   second half comes in the user's next message;
//! - across the whole body, every string and number a line each, labels
//!   (`role`, `type`) left out and of a long string only its ends, in both
//!   orders (keys come sorted, so two fields' halves may be reversed):
//!   halves in a message's `name` and `content`, in two `metadata` values,
//!   in the system's and the user's messages; the same with each value
//!   behind its key (a number whose first half is a key); and the keys
//!   alone (halves in `logit_bias` keys, in a schema's property names).
//!
//! Text the model reads decoded is scanned decoded too:
//! - a string that is itself JSON (a tool call's `arguments`, a tool's
//!   answer), which serialisers write with `\uXXXX` escapes: its strings,
//!   numbers and keys as they decode, to [`MAX_NESTING`] levels;
//! - a string with escapes no parser would decode (JSON cut short, `\x40`
//!   in a language's literal, `&#64;` or `&commat;` in markup, `\.` in
//!   Markdown), with percent-escapes (`%20`, a URL's query) or
//!   quoted-printable ones (`=40`, `=\n` for a soft line break, a mail's
//!   body), or with markup
//!   (`bob<span>@</span>…`, `**`), decoded, and decoded again on what that
//!   gives (an escape of a percent-escape of an entity), to [`MAX_DECODE`]
//!   rounds.
//!
//! Content the detectors cannot read (an image, audio or file part, a
//! remote image URL, a `data:` URL) is not text at all: each such part
//! adds [`OPAQUE`], which the builtin `media` detector finds, so that what
//! nobody scanned stays on the premises unless the tenant lowers that
//! detector.

use std::borrow::Cow;
use std::collections::HashMap;

use serde_json::{Map, Value};

/// Stands for one part of a request whose content the detectors cannot
/// read: U+FFFC, the object replacement character.
pub const OPAQUE: &str = "\u{fffc}";

/// How deep JSON inside strings is decoded (a string of JSON whose strings
/// hold JSON...).
const MAX_NESTING: usize = 3;

/// Content part types that are text; any other type (`image_url`,
/// `input_audio`, `file`, and types not known yet) is opaque.
const TEXT_PARTS: &[&str] = &["text", "refusal", "input_text", "output_text"];

/// Fields whose values label what is around them rather than say anything.
const LABELS: &[&str] = &["role", "type"];

/// The fields of a message that hold what it says.
const MESSAGE_TEXTS: &[&str] = &["content", "text", "refusal"];

/// Keys whose value is content other than text wherever they appear, in
/// lower case without `_` or `-` (so `image_url`, `imageUrl` and
/// `Image-URL` are all one).
const MEDIA_KEYS: &[&str] = &[
    "images",
    "imageurl",
    "inputaudio",
    "file",
    "filedata",
    "fileid",
    "fileurl",
    "image",
    "audiourl",
    "video",
    "videourl",
    "inputimage",
    "inputfile",
];

/// Whether `key` names media, in any case and spelling (see [`MEDIA_KEYS`]).
fn is_media_key(key: &str) -> bool {
    let mut folded = [0u8; 16];
    let mut n = 0;
    for b in key.bytes().filter(|b| !matches!(b, b'_' | b'-')) {
        let Some(slot) = folded.get_mut(n) else {
            return false;
        };
        *slot = b.to_ascii_lowercase();
        n += 1;
    }
    MEDIA_KEYS.iter().any(|m| m.as_bytes() == &folded[..n])
}

/// The texts to classify for `body`.
#[must_use]
pub fn request_texts(body: &Map<String, Value>) -> Vec<Cow<'_, str>> {
    let mut out: Vec<Cow<'_, str>> = Vec::new();
    let mut item: Vec<(&str, Cow<'_, str>)> = Vec::new();
    for (key, value) in body {
        out.push(Cow::Borrowed(key));
        match value {
            Value::Array(items) => {
                // The texts of messages, per role, a line per text, and
                // how many messages they came from.
                let mut by_role: HashMap<&str, (String, usize)> = HashMap::new();
                for element in items {
                    collect(key, element, &mut item, &mut out, 0);
                    let role = element.get("role").and_then(Value::as_str).unwrap_or("");
                    let mut texts = item
                        .iter()
                        .filter(|(field, _)| MESSAGE_TEXTS.contains(field))
                        .peekable();
                    if texts.peek().is_some() {
                        let (joined, messages) = by_role.entry(role).or_default();
                        *messages += 1;
                        for (_, text) in texts {
                            joined.push_str(text);
                            joined.push('\n');
                        }
                    }
                    join(&mut item, &mut out);
                }
                // One message's texts are scanned joined already.
                out.extend(
                    by_role
                        .into_values()
                        .filter(|(_, messages)| *messages > 1)
                        .map(|(joined, _)| Cow::Owned(joined)),
                );
                // A list of plain strings (`stop`) is scanned joined too.
                let strings: Vec<&str> = items.iter().filter_map(Value::as_str).collect();
                if strings.len() > 1 {
                    out.push(Cow::Owned(strings.concat()));
                }
            }
            other => {
                collect(key, other, &mut item, &mut out, 0);
                join(&mut item, &mut out);
            }
        }
    }
    // Every string and number of the body, a line each, in document order:
    // what is split over fields, roles or tools (a card number's halves in
    // a message's `name` and its `content`, an address's in two `metadata`
    // values) is adjacent here. Only a long string's ends can join a
    // neighbour's, so its middle is left out (it is scanned on its own):
    // this costs a few hundred bytes a string, not a second scan of the body.
    // The same again with each value behind its key (a number whose first
    // half is a `metadata` key and the rest its value), and the keys alone
    // (halves in `logit_bias` keys or a schema's property names).
    // Object keys come sorted, not in the order the client wrote them (nor
    // the one an upstream renders them in), so the values are joined in
    // both orders: halves in two fields are adjacent in one of them.
    // The strings are glued too, without the line breaks, in both orders:
    // an address, a key or a word cut mid-way (`bob@exam` and `ple.com`,
    // `CONFI` and `DENTIAL`) reads whole only so. Not the numbers, whose
    // digits would run into their neighbours' (the line-joined text has
    // them), nor the model's name, which names a model the gateway knows
    // or the request is refused.
    let mut joined = Joined::default();
    for (key, value) in body {
        joined.glue = key != "model";
        joined.add(value);
    }
    for (pieces, separator) in [(&joined.values, "\n"), (&joined.glued, "")] {
        if pieces.len() > 1 {
            let join = |it: &mut dyn Iterator<Item = &Cow<'_, str>>| -> String {
                it.flat_map(|p| [p.as_ref(), separator]).collect()
            };
            out.push(Cow::Owned(join(&mut pieces.iter())));
            out.push(Cow::Owned(join(&mut pieces.iter().rev())));
        }
    }
    out.push(Cow::Owned(joined.keyed));
    out.push(Cow::Owned(joined.keys));
    out
}

/// How much of each end of a string the joined text keeps: more than the
/// longest builtin finding split over two strings could take on one side
/// (a card number with separators, about 130 characters; an e-mail
/// address, at most 254).
const JOINED_EDGE: usize = 256;

/// Stands for a long string's middle in the joined text: eight line
/// breaks, more separators than any builtin detector allows in a row.
/// ASCII, so the joined text stays on the scan's fast path.
const ELIDED: &str = "\n\n\n\n\n\n\n\n";

/// The body's strings and numbers (of a long string, its ends), to be
/// joined a line each; the same each behind its key, and the keys alone.
#[derive(Default)]
struct Joined<'a> {
    values: Vec<Cow<'a, str>>,
    /// The strings alone (of a long one, its ends), to be glued.
    glued: Vec<Cow<'a, str>>,
    /// Whether the strings being added are glued.
    glue: bool,
    keyed: String,
    keys: String,
}

impl<'a> Joined<'a> {
    /// Adds every string and number in `v`; of a string longer than twice
    /// [`JOINED_EDGE`], its ends.
    fn add(&mut self, v: &'a Value) {
        match v {
            Value::String(s) => {
                push_ends(s, &mut self.keyed);
                self.values.push(ends(s));
                if self.glue {
                    self.glued.push(ends(s));
                }
            }
            Value::Number(n) => {
                let n = n.to_string();
                push_ends(&n, &mut self.keyed);
                self.values.push(Cow::Owned(n));
            }
            Value::Array(items) => items.iter().for_each(|i| self.add(i)),
            // Labels (`"role":"user"`, `"type":"text"`) would stand between
            // two messages' halves; they are scanned on their own.
            Value::Object(map) => {
                for (k, v) in map {
                    push_ends(k, &mut self.keys);
                    if !LABELS.contains(&k.as_str()) {
                        push_ends(k, &mut self.keyed);
                        self.add(v);
                    }
                }
            }
            Value::Null | Value::Bool(_) => {}
        }
    }
}

/// Appends `s` (of a long one, its [`ends`]) and a line break to `joined`.
fn push_ends(s: &str, joined: &mut String) {
    joined.push_str(&ends(s));
    joined.push('\n');
}

/// `s`, or of a string longer than twice [`JOINED_EDGE`], its ends with
/// [`ELIDED`] between, cut at character boundaries.
fn ends(s: &str) -> Cow<'_, str> {
    if s.len() <= 2 * JOINED_EDGE {
        return Cow::Borrowed(s);
    }
    let mut head = JOINED_EDGE;
    while !s.is_char_boundary(head) {
        head -= 1;
    }
    let mut tail = s.len() - JOINED_EDGE;
    while !s.is_char_boundary(tail) {
        tail += 1;
    }
    Cow::Owned([&s[..head], ELIDED, &s[tail..]].concat())
}

/// Adds one item's strings joined per field name, for every field with
/// several strings, and clears the item.
fn join<'a>(item: &mut Vec<(&'a str, Cow<'a, str>)>, out: &mut Vec<Cow<'a, str>>) {
    if item.len() > 1 {
        // A stable sort keeps each field's strings in document order;
        // grouping after it keeps the work at n log n however many
        // distinct field names one item holds (a filter per field was
        // quadratic in them).
        item.sort_by_key(|(field, _)| *field);
        for group in item.chunk_by(|a, b| a.0 == b.0) {
            if group.len() > 1 {
                out.push(Cow::Owned(group.iter().map(|(_, s)| s.as_ref()).collect()));
            }
        }
    }
    item.clear();
}

/// Every string and number (with the name of the field holding it) and
/// every object key in `v`, depth first, in document order. Keys go to
/// `out` directly; strings and numbers go to both, and what they decode to
/// (see the module's documentation) to `out`. `depth` counts the JSON
/// strings `v` lies inside.
fn collect<'a>(
    field: &'a str,
    v: &'a Value,
    item: &mut Vec<(&'a str, Cow<'a, str>)>,
    out: &mut Vec<Cow<'a, str>>,
    depth: usize,
) {
    match v {
        Value::String(s) => {
            decoded(s, out, depth);
            out.push(Cow::Borrowed(s));
            item.push((field, Cow::Borrowed(s)));
        }
        Value::Number(n) => {
            let text = n.to_string();
            out.push(Cow::Owned(text.clone()));
            item.push((field, Cow::Owned(text)));
        }
        Value::Array(items) => {
            for i in items {
                if field == "content" && is_opaque_part(i) {
                    out.push(Cow::Borrowed(OPAQUE));
                }
                collect(field, i, item, out, depth);
            }
        }
        Value::Object(map) => {
            // Content as one part rather than a list of them.
            if field == "content" && is_opaque_part(v) {
                out.push(Cow::Borrowed(OPAQUE));
            }
            for (k, v) in map {
                out.push(Cow::Borrowed(k));
                if is_media_key(k) && !v.is_null() {
                    out.push(Cow::Borrowed(OPAQUE));
                }
                collect(k, v, item, out, depth);
            }
        }
        Value::Null | Value::Bool(_) => {}
    }
}

/// A content part that is not text: of another type, or of none and not
/// plain `{"text": ...}`.
#[must_use]
pub fn is_opaque_part(part: &Value) -> bool {
    let Value::Object(map) = part else {
        return false;
    };
    match map.get("type") {
        Some(t) => !t
            .as_str()
            .is_some_and(|t| TEXT_PARTS.iter().any(|p| p.eq_ignore_ascii_case(t))),
        None => !(map.len() == 1 && map.get("text").is_some_and(Value::is_string)),
    }
}

/// What `s` decodes to, as the model would read it: a `data:` URL (at the
/// start or inside the text) is opaque; JSON's strings, numbers and keys;
/// escapes, percent-escapes and markup decoded in turn, again on what that
/// gives, until nothing changes (an escape of a percent-escape of an
/// entity), to [`MAX_DECODE`] rounds.
fn decoded(s: &str, out: &mut Vec<Cow<'_, str>>, depth: usize) {
    let trimmed = s.trim_start_matches(|c: char| c.is_whitespace() || c == '\u{feff}');
    if has_data_url(s) {
        out.push(Cow::Borrowed(OPAQUE));
    }
    if trimmed.starts_with('{') || trimmed.starts_with('[') {
        if let Ok(inner) = serde_json::from_str::<Value>(trimmed) {
            if depth >= MAX_NESTING {
                // Nested deeper than it is decoded: not read, so opaque.
                out.push(Cow::Borrowed(OPAQUE));
                return;
            }
            let mut item = Vec::new();
            let mut texts = Vec::new();
            collect("", &inner, &mut item, &mut texts, depth + 1);
            join(&mut item, &mut texts);
            out.extend(texts.into_iter().map(|t| Cow::Owned(t.into_owned())));
        }
    }
    // Markup is stripped from each round's text as a view of its own: a
    // tag's attribute (`<a href='mailto:bob&#64;…'>`) is text the model
    // reads once its escapes are decoded, and must not go with the tag.
    if let Some(stripped) = strip_markup(s) {
        out.push(Cow::Owned(stripped));
    }
    let Some(mut text) = decode_once(s) else {
        binary(s, out, depth);
        return;
    };
    // A long text gets fewer rounds: each is a copy of it to scan, and
    // escaped noise changes at every round. One still changing when its
    // rounds run out is not read to its end, so it is opaque.
    let rounds = if s.len() > LONG_TEXT { 2 } else { MAX_DECODE };
    for round in 1..=rounds {
        if let Some(stripped) = strip_markup(&text) {
            out.push(Cow::Owned(stripped));
        }
        let Some(next) = decode_once(&text) else {
            break;
        };
        if round == rounds {
            out.push(Cow::Borrowed(OPAQUE));
            break;
        }
        out.push(Cow::Owned(std::mem::replace(&mut text, next)));
    }
    binary(&text, out, depth);
    out.push(Cow::Owned(text));
}

/// The text that base64, base32 and hex runs of `s` encode
/// ([`super::binary`]),
/// and what that decodes to in turn (base64 of base64, of percent-escapes,
/// of JSON), as deep as JSON in strings is decoded.
fn binary(s: &str, out: &mut Vec<Cow<'_, str>>, depth: usize) {
    if let Some((text, mostly_text)) = super::binary::decode(s) {
        // Noise (random bytes, encoded) yields a few readable stretches:
        // scanned as they are, not decoded again, so noise cannot multiply.
        if mostly_text {
            if depth >= MAX_NESTING {
                // Encoded deeper than it is decoded: not read, so opaque.
                out.push(Cow::Borrowed(OPAQUE));
                return;
            }
            let mut texts = Vec::new();
            decoded(&text, &mut texts, depth + 1);
            out.extend(texts.into_iter().map(|t| Cow::Owned(t.into_owned())));
        }
        out.push(Cow::Owned(text));
    }
}

/// How many rounds of decoding [`decoded`] applies.
const MAX_DECODE: usize = 6;

/// A text longer than this gets two rounds of decoding, not
/// [`MAX_DECODE`].
const LONG_TEXT: usize = 16 << 10;

/// `s` with one round of decoding applied, if it changes anything:
/// character escapes, then percent-escapes, then quoted-printable ones.
fn decode_once(s: &str) -> Option<String> {
    let mut text = Cow::Borrowed(s);
    if let Some(t) = unescape(&text) {
        text = Cow::Owned(t);
    }
    for mark in [b'%', b'='] {
        if text.as_bytes().contains(&mark) {
            if let Some(t) = hex_decode(&text, mark) {
                text = Cow::Owned(t);
            }
        }
    }
    match text {
        Cow::Owned(t) => Some(t),
        Cow::Borrowed(_) => None,
    }
}

/// `s` with its escapes of text by `mark` and two hex digits decoded, if
/// it has any: percent-escapes (`%40`) or quoted-printable ones (`=40`,
/// whose soft line breaks, `=` at a line's end, are taken out with them).
/// Escapes of printable ASCII, white space and whole UTF-8 characters are
/// decoded. Escapes of other bytes (control characters, broken UTF-8:
/// escaped binary) are left as they are; decoded, noise would only turn
/// into more noise for every later round to decode and scan.
fn hex_decode(s: &str, mark: u8) -> Option<String> {
    let bytes = s.as_bytes();
    let byte_at = |at: usize| -> Option<u8> {
        match bytes.get(at..at + 3)? {
            [m, hi, lo] if *m == mark => Some(
                u8::try_from((*hi as char).to_digit(16)? * 16 + (*lo as char).to_digit(16)?)
                    .ok()?,
            ),
            _ => None,
        }
    };
    let mut out: Vec<u8> = Vec::with_capacity(bytes.len());
    let mut changed = false;
    let mut at = 0;
    while at < bytes.len() {
        if mark == b'=' && bytes[at] == b'=' {
            let soft = [&b"=\r\n"[..], b"=\n"]
                .into_iter()
                .find(|brk| bytes[at..].starts_with(brk));
            // Taken out, but no reason alone to scan the text again: a
            // line of code may end in `=`.
            if let Some(brk) = soft {
                at += brk.len();
                continue;
            }
        }
        let Some(first) = byte_at(at) else {
            out.push(bytes[at]);
            at += 1;
            continue;
        };
        // The escaped bytes of one character: its lead byte says how many.
        let len = match first {
            0x20..=0x7e | b'\t' | b'\n' | b'\r' => 1,
            0xc2..=0xdf => 2,
            0xe0..=0xef => 3,
            0xf0..=0xf4 => 4,
            _ => 0,
        };
        let char_bytes: Option<Vec<u8>> = (0..len).map(|k| byte_at(at + 3 * k)).collect();
        if let Some(b) = char_bytes.filter(|b| len > 0 && std::str::from_utf8(b).is_ok()) {
            out.extend_from_slice(&b);
            at += 3 * len;
            changed = true;
        } else {
            out.push(bytes[at]);
            at += 1;
        }
    }
    changed.then(|| String::from_utf8(out).ok()).flatten()
}

/// Whether `s` holds a `data:` URL: `data:` and a media type
/// (`data:image/svg+xml,…`, `data:image/png;base64,…`), in any case,
/// anywhere.
fn has_data_url(s: &str) -> bool {
    s.match_indices(':').any(|(at, _)| {
        let scheme = at
            .checked_sub(4)
            .and_then(|start| s.get(start..at))
            .is_some_and(|w| w.eq_ignore_ascii_case("data"));
        scheme && is_media_type(&s[at + 1..])
    })
}

/// Whether `rest` starts with a media type and the `,` or `;` after it.
fn is_media_type(rest: &str) -> bool {
    let token = |c: u8| c.is_ascii_alphanumeric() || b".+-_".contains(&c);
    let bytes = rest.as_bytes();
    let kind = bytes
        .iter()
        .take_while(|&&c| c.is_ascii_alphabetic())
        .count();
    if kind == 0 || bytes.get(kind) != Some(&b'/') {
        return false;
    }
    let sub = bytes[kind + 1..].iter().take_while(|&&c| token(c)).count();
    sub > 0 && matches!(bytes.get(kind + 1 + sub), Some(b',' | b';'))
}

/// `s` without the markup a model reads through, if it has any: HTML tags
/// (`bob<span>@</span>example.com`), Markdown's emphasis markers
/// (`bob@**example**.com`, `CONF*IDENTIAL*`) and links' brackets and
/// targets (`[4539](http://a)`).
fn strip_markup(s: &str) -> Option<String> {
    let tags = s.contains('<') && s.contains('>');
    let emphasis = ["*", "__", "~~", "`"].iter().any(|m| s.contains(m));
    let links = s.contains("](");
    if !tags && !emphasis && !links {
        return None;
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(at) = rest.find(['<', '*', '_', '~', '`', '[', ']']) {
        out.push_str(&rest[..at]);
        rest = &rest[at..];
        let skip = match rest.as_bytes() {
            [b'<', next, ..] if next.is_ascii_alphabetic() || b"/!".contains(next) => rest
                .bytes()
                .take(MAX_TAG)
                .skip(1)
                .position(|c| c == b'>' || c == b'<')
                .filter(|&end| rest.as_bytes()[end + 1] == b'>')
                .map_or(0, |end| end + 2),
            [b'*', b'*', ..] | [b'_', b'_', ..] | [b'~', b'~', ..] => 2,
            // A link's target: `[4539](http://a)` reads as `4539`.
            [b']', b'(', ..] => rest
                .bytes()
                .take(MAX_TAG)
                .position(|c| c == b')')
                .map_or(1, |end| end + 1),
            [b'`' | b'*' | b'[' | b']', ..] => 1,
            _ => 0,
        };
        if skip == 0 {
            out.push_str(&rest[..1]);
            rest = &rest[1..];
        } else {
            rest = &rest[skip..];
        }
    }
    out.push_str(rest);
    (out != s).then_some(out)
}

/// The longest HTML tag [`strip_markup`] takes out.
const MAX_TAG: usize = 64;

/// HTML's named character references that stand for ASCII punctuation or
/// space (the ones a separator or an address is written with).
const ENTITIES: &[(&str, char)] = &[
    ("nbsp", ' '),
    // Invisible ones, which normalisation then removes.
    ("shy", '\u{ad}'),
    ("zwj", '\u{200d}'),
    ("zwnj", '\u{200c}'),
    ("ZeroWidthSpace", '\u{200b}'),
    ("NoBreak", '\u{2060}'),
    ("ensp", ' '),
    ("emsp", ' '),
    ("thinsp", ' '),
    ("amp", '&'),
    ("lt", '<'),
    ("gt", '>'),
    ("quot", '"'),
    ("apos", '\''),
    ("commat", '@'),
    ("period", '.'),
    ("comma", ','),
    ("colon", ':'),
    ("semi", ';'),
    ("sol", '/'),
    ("bsol", '\\'),
    ("hyphen", '-'),
    ("dash", '-'),
    ("ndash", '-'),
    ("mdash", '-'),
    ("minus", '-'),
    ("plus", '+'),
    ("equals", '='),
    ("num", '#'),
    ("percnt", '%'),
    ("lowbar", '_'),
    ("lpar", '('),
    ("rpar", ')'),
    ("lsqb", '['),
    ("rsqb", ']'),
    ("middot", '.'),
    ("bull", '.'),
];

/// `s` with its character escapes decoded, if it has any: JSON's and
/// JavaScript's `\uXXXX` (surrogate pairs joined) and `\u{X…}`, Python's
/// `\xXX` and `\UXXXXXXXX`, octal `\NNN`, a backslash before punctuation
/// (`\.`, `\@`: Markdown's and regular expressions'), IIS's `%uXXXX`, and
/// HTML's numeric (`&#64;`, `&#x40;`, with or without the semicolon) and
/// named (`&nbsp;`, `&commat;`) references. Escapes appear in text that is
/// JSON cut short (a tool call's arguments truncated by `max_tokens`), in
/// a language's string literals and in markup, where no parser decodes
/// them but a model reads through them.
fn unescape(s: &str) -> Option<String> {
    if !s.contains(['\\', '&']) && !s.contains("%u") && !s.contains("%U") {
        return None;
    }
    let hex = |t: &str| u32::from_str_radix(t, 16).ok();
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    let mut changed = false;
    while let Some(at) = rest.find(['\\', '&', '%']) {
        out.push_str(&rest[..at]);
        rest = &rest[at..];
        let (code, len) = escape(rest, hex);
        let Some(mut code) = code else {
            out.push_str(&rest[..1]);
            rest = &rest[1..];
            continue;
        };
        rest = &rest[len..];
        // A high surrogate followed by a low one is one character.
        if (0xd800..0xdc00).contains(&code) && rest.starts_with("\\u") {
            if let Some(low) = rest
                .get(2..6)
                .and_then(hex)
                .filter(|l| (0xdc00..0xe000).contains(l))
            {
                code = 0x10000 + ((code - 0xd800) << 10) + (low - 0xdc00);
                rest = &rest[6..];
            }
        }
        out.push(char::from_u32(code).unwrap_or(char::REPLACEMENT_CHARACTER));
        changed = true;
    }
    out.push_str(rest);
    changed.then_some(out)
}

/// The character an escape at the start of `rest` stands for, and the
/// escape's length; `None` if `rest` does not start with one.
fn escape(rest: &str, hex: impl Fn(&str) -> Option<u32>) -> (Option<u32>, usize) {
    let bytes = rest.as_bytes();
    let braced = |from: usize| {
        let end = rest[from..].find('}').filter(|&e| (1..=6).contains(&e))?;
        Some((hex(&rest[from..from + end])?, from + end + 1))
    };
    match bytes {
        [b'\\', b'u' | b'x', b'{', ..] => braced(3).map_or((None, 0), |(c, l)| (Some(c), l)),
        [b'\\', b'u', ..] | [b'%', b'u' | b'U', ..] => (rest.get(2..6).and_then(&hex), 6),
        [b'\\', b'U', ..] => (rest.get(2..10).and_then(&hex), 10),
        [b'\\', b'x', ..] => (rest.get(2..4).and_then(&hex), 4),
        [b'\\', a @ b'0'..=b'3', b @ b'0'..=b'7', c @ b'0'..=b'7', ..] => (
            Some(u32::from(a - b'0') * 64 + u32::from(b - b'0') * 8 + u32::from(c - b'0')),
            4,
        ),
        [b'\\', p, ..] if p.is_ascii_punctuation() => (Some(u32::from(*p)), 2),
        [b'&', b'#', b'x' | b'X', ..] => {
            let digits = bytes[3..]
                .iter()
                .take_while(|c| c.is_ascii_hexdigit())
                .count();
            let semi = usize::from(bytes.get(3 + digits) == Some(&b';'));
            match digits {
                1..=10 => (hex(&rest[3..3 + digits]), 3 + digits + semi),
                _ => (None, 0),
            }
        }
        [b'&', b'#', ..] => {
            let digits = bytes[2..].iter().take_while(|c| c.is_ascii_digit()).count();
            let semi = usize::from(bytes.get(2 + digits) == Some(&b';'));
            match digits {
                1..=10 => (rest[2..2 + digits].parse().ok(), 2 + digits + semi),
                _ => (None, 0),
            }
        }
        [b'&', ..] => {
            let name = bytes[1..]
                .iter()
                .take_while(|c| c.is_ascii_alphabetic())
                .count();
            let entity = (bytes.get(1 + name) == Some(&b';'))
                .then(|| &rest[1..=name])
                .and_then(|n| ENTITIES.iter().find(|(e, _)| e.eq_ignore_ascii_case(n)));
            entity.map_or((None, 0), |(_, c)| (Some(u32::from(*c)), name + 2))
        }
        _ => (None, 0),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn texts(body: &str) -> Vec<String> {
        let Value::Object(map) = serde_json::from_str(body).unwrap() else {
            unreachable!("test bodies are objects")
        };
        request_texts(&map)
            .into_iter()
            .map(Cow::into_owned)
            .collect()
    }

    #[test]
    fn every_key_and_string_of_every_field_is_seen() {
        let got = texts(
            r#"{"model":"m","messages":[{"role":"user","content":[
                {"type":"text","text":"4111 1111"},{"type":"text","text":" 1111 1111"}]}],
               "tools":[{"type":"function","function":{"name":"lookup","description":"d",
                 "parameters":{"properties":{"bob@example.com":{"type":"string"}}}}}],
               "user":"u1","stop":["s1","s2"],"x_unknown":{"deep":{"k":"v"}},"n":1}"#,
        );
        for want in [
            "model",
            "m",
            "messages",
            "content",
            "4111 1111",
            "tools",
            "lookup",
            "bob@example.com",
            "user",
            "u1",
            "s1s2",
            "x_unknown",
            "deep",
            "k",
            "v",
            "n",
        ] {
            assert!(
                got.iter().any(|t| t.contains(want)),
                "{want:?} not among {got:?}"
            );
        }
        assert!(
            got.iter().any(|t| t.contains("4111 1111 1111 1111")),
            "{got:?}"
        );
    }

    #[test]
    fn long_strings_are_cut_at_character_boundaries() {
        // Two- and three-byte characters at every offset around the cuts.
        for pad in 0..3 {
            let text = format!("{}{}", "a".repeat(pad), "é€".repeat(400));
            let body = serde_json::json!({"a": text, "b": text});
            let Value::Object(map) = body else {
                unreachable!("the body is an object")
            };
            let texts = request_texts(&map);
            let joined = texts.iter().find(|t| t.contains(ELIDED)).unwrap();
            assert!(joined.contains(ELIDED), "{pad}");
            assert!(
                joined.len() < 2 * (2 * JOINED_EDGE + ELIDED.len() + 8),
                "{pad}"
            );
        }
    }

    #[test]
    fn one_field_is_joined_in_document_order_among_many_fields() {
        // Thousands of distinct keys in one tool schema: every string of
        // one field name is joined in the order it came, whatever fields
        // lie between (the grouping sorts by field name, stably).
        let mut properties = Map::new();
        for i in 0..5_000 {
            properties.insert(
                format!("p{i:05}"),
                serde_json::json!({"description": format!("<{i}>"), "title": "t"}),
            );
        }
        let body = serde_json::json!({"tools": [{"type": "function", "function":
            {"name": "f", "parameters": {"properties": properties}}}]});
        let Value::Object(map) = body else {
            unreachable!("the body is an object")
        };
        let got = request_texts(&map);
        let want = (0..5_000)
            .map(|i| format!("<{i}>"))
            .collect::<Vec<_>>()
            .concat();
        assert!(got.iter().any(|t| *t == want), "no joined descriptions");
        assert!(
            got.iter().any(|t| *t == "t".repeat(5_000)),
            "no joined titles"
        );
        assert!(got.iter().any(|t| *t == "p04999"), "a key was not seen");
    }

    /// The class the builtin detectors give `body`.
    fn class_of(body: &str) -> (super::super::Class, Vec<String>) {
        let Value::Object(map) = serde_json::from_str(body).unwrap() else {
            unreachable!("test bodies are objects")
        };
        let rules = super::super::RuleSet::builtins().unwrap();
        let c = super::super::classify(
            request_texts(&map),
            super::super::Class::Public,
            None,
            rules,
        );
        (c.class, c.fired)
    }

    /// Every way of carrying content past the detectors that a client
    /// could use by accident or on purpose is scanned: numbers, JSON inside
    /// strings (escaped as serialisers write it), percent-escapes, text
    /// split over one role's messages.
    #[test]
    #[allow(clippy::too_many_lines)]
    fn content_in_every_form_is_seen() {
        use super::super::Class::{Confidential, Public};
        let cases = [
            // A card as a number, in a schema's enum and in an unknown field.
            (
                r#"{"response_format":{"json_schema":{"schema":{"enum":[4111111111111111]}}}}"#,
                "card",
            ),
            (r#"{"x_crm":{"acct":5555555555554444}}"#, "card"),
            // Split over the numbers of one field.
            (r#"{"metadata":{"parts":[4111,1111,1111,1111]}}"#, "card"),
            // JSON in a tool call's arguments and in a tool's answer, with
            // \u00a0 escapes between the digit groups.
            (
                r#"{"messages":[{"role":"assistant","tool_calls":[{"function":{"name":"charge","arguments":"{\"card\": \"4111\\u00a01111\\u00a01111\\u00a01111\"}"}}]}]}"#,
                "card",
            ),
            (
                r#"{"messages":[{"role":"tool","content":"{\"mail\": \"bob\\u0040example.com\"}"}]}"#,
                "email",
            ),
            // JSON in JSON.
            (
                r#"{"x":"{\"y\":\"{\\\"z\\\":\\\"bob\\\\u0040example.com\\\"}\"}"}"#,
                "email",
            ),
            // Percent-escapes, in a URL's query.
            (
                r#"{"messages":[{"role":"user","content":"see https://x.example/?c=4111%201111%201111%201111"}]}"#,
                "card",
            ),
            (
                r#"{"messages":[{"role":"user","content":"bob%40example.com"}]}"#,
                "email",
            ),
            // Quoted-printable, as in a mail's body, and percent-escapes
            // of it.
            (
                r#"{"messages":[{"role":"user","content":"bob=40example=2Ecom"}]}"#,
                "email",
            ),
            (
                r#"{"messages":[{"role":"user","content":"my p=61ss=\nword is hunter2!"}]}"#,
                "secret",
            ),
            (
                r#"{"messages":[{"role":"user","content":"bob%3D40example.com"}]}"#,
                "email",
            ),
            // Split over the user's messages, an answer between.
            (
                r#"{"messages":[{"role":"user","content":"my card is 4111 1111"},{"role":"assistant","content":"and the rest?"},{"role":"user","content":"1111 1111"}]}"#,
                "card",
            ),
            // Split over a message's content parts.
            (
                r#"{"messages":[{"role":"user","content":[{"type":"text","text":"4111 1111"},{"type":"text","text":"1111 1111"}]}]}"#,
                "card",
            ),
            // Split over fields and roles: a message's name and content,
            // two metadata values, the system's and the user's messages.
            (
                r#"{"messages":[{"role":"user","name":"4111-1111","content":"1111-1111"}]}"#,
                "card",
            ),
            (r#"{"metadata":{"a":"4111 1111","b":"1111 1111"}}"#, "card"),
            // The same at the ends of long strings.
            (
                &format!(
                    r#"{{"metadata":{{"a":"{} 4111 1111","b":"1111 1111 {}"}}}}"#,
                    "x ".repeat(2000),
                    "y ".repeat(2000)
                ),
                "card",
            ),
            (
                r#"{"messages":[{"role":"system","content":"4111 1111"},{"role":"user","content":"1111 1111"}]}"#,
                "card",
            ),
            // JSON cut short (arguments truncated by max_tokens), so no
            // parser decodes its escapes.
            (
                r#"{"messages":[{"role":"assistant","tool_calls":[{"function":{"name":"f","arguments":"{\"card\": \"4111\\u00a01111\\u00a01111\\u00a01111\", \"note\": "}}]}]}"#,
                "card",
            ),
            // Escapes in plain text: JSON's, Python's, HTML's.
            (
                r#"{"messages":[{"role":"user","content":"alice.smith\\u0040example.com"}]}"#,
                "email",
            ),
            (
                r#"{"messages":[{"role":"tool","content":"{'mail': 'alice\\x40example.com'}"}]}"#,
                "email",
            ),
            (
                r#"{"messages":[{"role":"user","content":"alice&#64;example.com and bob&#x40;example.org"}]}"#,
                "email",
            ),
            // A byte-order mark before JSON; percent-escapes twice over.
            (
                "{\"messages\":[{\"role\":\"tool\",\"content\":\"\u{feff}{\\\"m\\\": \\\"bob\\\\u0040example.com\\\"}\"}]}",
                "email",
            ),
            (
                r#"{"messages":[{"role":"user","content":"bob%2540example.com"}]}"#,
                "email",
            ),
            // Named references, markup and escaped punctuation.
            (
                r#"{"messages":[{"role":"user","content":"4539&nbsp;1488&nbsp;0343&nbsp;6467"}]}"#,
                "card",
            ),
            (r#"{"messages":[{"role":"user","content":"bob&commat;example&period;com"}]}"#, "email"),
            (r#"{"messages":[{"role":"user","content":"bob<span>@</span>example.com"}]}"#, "email"),
            (r#"{"messages":[{"role":"user","content":"bob@**example**.com"}]}"#, "email"),
            (r#"{"messages":[{"role":"user","content":"**CONF**IDEN*TIAL*"}]}"#, "marker"),
            (r#"{"messages":[{"role":"user","content":"card [4539](http://a) [1488](http://b) [0343](http://c) [6467](http://d)"}]}"#, "card"),
            (r#"{"messages":[{"role":"user","content":"AKIA&shy;IOSFODNN7EXAMPLE"}]}"#, "secret"),
            (r#"{"messages":[{"role":"user","content":"bob\\@example\\.com"}]}"#, "email"),
            (r#"{"messages":[{"role":"user","content":"bob&#64example.com"}]}"#, "email"),
            (r#"{"messages":[{"role":"user","content":"bob\\u{40}example.com"}]}"#, "email"),
            (r#"{"messages":[{"role":"user","content":"bob%u0040example.com"}]}"#, "email"),
            // Encodings layered over each other, and four levels of
            // percent-escapes.
            (r#"{"messages":[{"role":"user","content":"bob\\u002540example.com"}]}"#, "email"),
            (r#"{"messages":[{"role":"user","content":"bob&#37;40example.com"}]}"#, "email"),
            (r#"{"messages":[{"role":"user","content":"bob%26%2364%3Bexample.com"}]}"#, "email"),
            (r#"{"messages":[{"role":"user","content":"bob&amp;#64;example.com"}]}"#, "email"),
            (r#"{"messages":[{"role":"user","content":"bob%25252540example.com"}]}"#, "email"),
            // Escapes inside a tag's attributes and in escaped markup.
            (r#"{"messages":[{"role":"user","content":"<a href='mailto:bob&#64;example.com'>mail</a>"}]}"#, "email"),
            (r#"{"messages":[{"role":"user","content":"card: <i 4539&nbsp;1488&nbsp;0343&nbsp;6467>"}]}"#, "card"),
            (r#"{"messages":[{"role":"user","content":"&lt;bob&#64;example.com&gt;"}]}"#, "email"),
            // Halves in a key and its value, in keys alone, and in two
            // fields whose sorted order reverses them.
            (r#"{"metadata":{"4539 1488":"0343 6467"}}"#, "card"),
            (r#"{"logit_bias":{"4539":1,"1488":1,"0343":1,"6467":1}}"#, "card"),
            (r#"{"metadata":{"b":"4539 1488","a":"0343 6467"}}"#, "card"),
            (
                r#"{"messages":[{"role":"user","name":"1111-1111","content":"4111-1111"}]}"#,
                "card",
            ),
            // Base64 and hex, plain, wrapped, layered, glued to a word.
            (r#"{"messages":[{"role":"user","content":"decode: Y2FyZCA0NTM5IDE0ODggMDM0MyA2NDY3"}]}"#, "card"),
            (r#"{"messages":[{"role":"user","content":"dGhlIGFjY291bnQ6IDQ1\nMzkgMTQ4OCAwMzQzIDY0\nNjcsIHRoYW5rcw=="}]}"#, "card"),
            (r#"{"messages":[{"role":"user","content":"xd3JpdGUgdG8gYm9iQGV4YW1wbGUuY29t"}]}"#, "email"),
            (r#"{"messages":[{"role":"user","content":"WW05aVFHVjRZVzF3YkdVdVkyOXQ="}]}"#, "email"),
            (r#"{"messages":[{"role":"user","content":"Ym9iJTQwZXhhbXBsZS5jb20="}]}"#, "email"),
            (r#"{"metadata":{"blob":"0x626f62406578616d706c652e636f6d"}}"#, "email"),
            // Base32, in capitals with padding, or in lower case without.
            (r#"{"messages":[{"role":"user","content":"base32: MNQXEZBAGQ2TGOJAGE2DQOBAGAZTIMZAGY2DMNY="}]}"#, "card"),
            (r#"{"metadata":{"note":"o5zgs5dfeb2g6idcn5reazlymfwxa3dffzrw63i"}}"#, "email"),
            // An address cut in two messages, or in two fields.
            (
                r#"{"messages":[{"role":"user","content":"write to bob@exam"},{"role":"user","content":"ple.com please"}]}"#,
                "email",
            ),
            (r#"{"metadata":{"a":"bob@exam","b":"ple.com"}}"#, "email"),
            // Hex pairs in a C array; base64 in groups of four; letters
            // one at a time; look-alike letters; spelt-out digits in pairs.
            (r#"{"messages":[{"role":"user","content":"{0x62, 0x6f, 0x62, 0x40, 0x65, 0x78, 0x61, 0x6d, 0x70, 0x6c, 0x65, 0x2e, 0x63, 0x6f, 0x6d}"}]}"#, "email"),
            (r#"{"messages":[{"role":"user","content":"Ym9i QGV4 YW1w bGUu Y29t"}]}"#, "email"),
            (r#"{"messages":[{"role":"user","content":"b o b @ e x a m p l e . c o m"}]}"#, "email"),
            (r#"{"messages":[{"role":"user","content":"СОNFIDENTIAL minutes"}]}"#, "marker"),
            (r#"{"messages":[{"role":"user","content":"forty-five thirty-nine fourteen eighty-eight zero three four three sixty-four sixty-seven"}]}"#, "card"),
        ];
        for (body, detector) in cases {
            let (class, fired) = class_of(body);
            assert_eq!(class, Confidential, "{body}");
            assert!(fired.iter().any(|f| f == detector), "{body}: {fired:?}");
        }
        // What carries nothing stays public: plain numbers, plain JSON,
        // ordinary text parts.
        for body in [
            r#"{"model":"m","max_tokens":256,"temperature":0.7,"n":1,"logit_bias":{"50256":-100}}"#,
            r#"{"messages":[{"role":"assistant","tool_calls":[{"function":{"name":"f","arguments":"{\"city\":\"Paris\",\"days\":3}"}}]}]}"#,
            r#"{"messages":[{"role":"user","content":[{"type":"text","text":"100% sure"}]}]}"#,
        ] {
            assert_eq!(class_of(body), (Public, vec![]), "{body}");
        }
    }

    /// Percent-escapes of text are decoded, whole UTF-8 characters
    /// included; escapes of other bytes (binary, broken UTF-8) are left.
    #[test]
    fn percent_escapes_of_text_only_are_decoded() {
        assert_eq!(
            super::hex_decode("bob%40x.com", b'%').as_deref(),
            Some("bob@x.com")
        );
        assert_eq!(
            super::hex_decode("caf%C3%A9", b'%').as_deref(),
            Some("café")
        );
        assert_eq!(
            super::hex_decode("%A7%3F%00%C3", b'%').as_deref(),
            Some("%A7?%00%C3")
        );
        assert_eq!(super::hex_decode("100% sure", b'%'), None);
        assert_eq!(super::hex_decode("%ZZ%4", b'%'), None);
        // Quoted-printable: the same escapes after `=`, and soft line
        // breaks taken out.
        assert_eq!(
            super::hex_decode("bob=40exam=\r\nple=2Ecom", b'=').as_deref(),
            Some("bob@example.com")
        );
        assert_eq!(
            super::hex_decode("p=61ss=\nword: x", b'=').as_deref(),
            Some("password: x")
        );
        assert_eq!(super::hex_decode("a = b, c=d", b'='), None);
        assert_eq!(super::hex_decode("let x =\n    5;", b'='), None);
        assert_eq!(super::hex_decode("x=1F&y=%40", b'='), None);
    }

    /// A part no detector can read (an image, audio, a file, a part of an
    /// unknown type, a remote image URL or a `data:` URL anywhere) fires
    /// `media`; text parts do not.
    #[test]
    fn what_no_detector_can_read_fires_media() {
        for body in [
            r#"{"messages":[{"role":"user","content":[{"type":"text","text":"what is this?"},{"type":"image_url","image_url":{"url":"https://files.example.com/passport.png"}}]}]}"#,
            r#"{"messages":[{"role":"user","content":[{"type":"input_audio","input_audio":{"data":"AAAA","format":"wav"}}]}]}"#,
            r#"{"messages":[{"role":"user","content":[{"type":"file","file":{"file_id":"file-1"}}]}]}"#,
            r#"{"messages":[{"role":"user","content":[{"type":"video","video":"v"}]}]}"#,
            r#"{"messages":[{"role":"user","content":[{"image_url":"https://x.example/a.png"}]}]}"#,
            r#"{"messages":[{"role":"user","content":[{"text":"hi","data":"AAAA"}]}]}"#,
            r#"{"messages":[{"role":"user","content":[{"type":7,"text":"hi"}]}]}"#,
            r#"{"attachment":"data:application/pdf;base64,AAAA"}"#,
            "{\"attachment\":\"\u{feff}data:image/bmp;base64,Qk0\"}",
            r#"{"messages":[{"role":"user","content":"look: data:image/png;base64,iVBORw0KGgo="}]}"#,
            r#"{"x":{"image":{"b":1}}}"#,
            r#"{"messages":[{"role":"user","content":"hi","images":["Qk0AAAAAAAAAAAAA"]}]}"#,
            r#"{"messages":[{"role":"user","content":{"type":"image","source":{"data":"Qk0AAAA"}}}]}"#,
            // A data: URL inside text without base64, media keys in other
            // spellings.
            r#"{"messages":[{"role":"user","content":"look: data:image/svg+xml,%3Csvg%3E"}]}"#,
            r#"{"messages":[{"role":"user","content":"hi","imageUrl":"https://x.example/a.png"}]}"#,
            r#"{"messages":[{"role":"user","content":"hi","Image-URL":"https://x.example/a.png"}]}"#,
        ] {
            let (class, fired) = class_of(body);
            assert_eq!(class, super::super::Class::Confidential, "{body}");
            assert!(fired.iter().any(|f| f == "media"), "{body}: {fired:?}");
        }
        let (_, fired) = class_of(
            r#"{"messages":[{"role":"user","content":[{"type":"text","text":"hi"},{"text":"ho"},{"type":"TEXT","text":"he"}]}],
                "response_format":{"type":"json_schema"},"tools":[{"type":"function"}]}"#,
        );
        assert!(!fired.iter().any(|f| f == "media"), "{fired:?}");
    }

    /// JSON inside strings is decoded [`MAX_NESTING`] levels deep; deeper
    /// still, it is opaque.
    #[test]
    fn json_in_strings_is_decoded_to_a_bounded_depth_and_opaque_beyond() {
        // The e-mail address only shows once every level is decoded: its
        // `@` is escaped in the innermost JSON.
        let nested = |levels: usize| {
            let mut s = r#"{"mail":"bob\u0040example.com"}"#.to_owned();
            for _ in 1..levels {
                s = serde_json::json!({ "v": s }).to_string();
            }
            serde_json::json!({ "x": s }).to_string()
        };
        let (class, fired) = class_of(&nested(MAX_NESTING));
        assert_eq!(class, super::super::Class::Confidential);
        assert_eq!(fired, vec!["email".to_owned()]);
        // One level deeper the JSON is not parsed but opaque; the escapes
        // decoded as plain text show the address too.
        let (class, fired) = class_of(&nested(MAX_NESTING + 1));
        assert_eq!(class, super::super::Class::Confidential);
        assert!(fired.contains(&"media".to_owned()), "{fired:?}");
    }
}
