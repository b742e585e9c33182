//! Which texts of a request the detectors see.
//!
//! The rule is "nothing reaches an upstream that the classifier did not
//! see": every string value *and every object key* anywhere in the body the
//! upstream would receive, whatever the field (messages, tools and their
//! JSON schemas, `response_format`, `prediction`, `metadata`, `user`,
//! `stop`, fields the gateway does not know). No client header is
//! forwarded, so none needs scanning.
//!
//! Text split over several strings of one item is scanned joined as well:
//! a card number spread over two content parts of one message, a secret
//! spread over two stop sequences. An item is one element of a top-level
//! array (a message, a tool) or one other top-level field; its strings are
//! joined per field name (all `text` parts of a message, all `arguments`
//! of its tool calls), in document order, so the labels between them
//! (`"type":"text"`) do not break a number apart.

use std::borrow::Cow;

use serde_json::{Map, Value};

/// The texts to classify for `body`.
#[must_use]
pub fn request_texts(body: &Map<String, Value>) -> Vec<Cow<'_, str>> {
    let mut out: Vec<Cow<'_, str>> = Vec::new();
    let mut item: Vec<(&str, &str)> = Vec::new();
    for (key, value) in body {
        out.push(Cow::Borrowed(key));
        match value {
            Value::Array(items) => {
                for element in items {
                    collect(key, element, &mut item, &mut out);
                    join(&mut item, &mut out);
                }
                // A list of plain strings (`stop`) is scanned joined too.
                let strings: Vec<&str> = items.iter().filter_map(Value::as_str).collect();
                if strings.len() > 1 {
                    out.push(Cow::Owned(strings.concat()));
                }
            }
            other => {
                collect(key, other, &mut item, &mut out);
                join(&mut item, &mut out);
            }
        }
    }
    out
}

/// Adds one item's strings joined per field name, for every field with
/// several strings, and clears the item.
fn join<'a>(item: &mut Vec<(&'a str, &'a str)>, out: &mut Vec<Cow<'a, str>>) {
    if item.len() > 1 {
        // A stable sort keeps each field's strings in document order;
        // grouping after it keeps the work at n log n however many
        // distinct field names one item holds (a filter per field was
        // quadratic in them).
        item.sort_by_key(|(field, _)| *field);
        for group in item.chunk_by(|a, b| a.0 == b.0) {
            if group.len() > 1 {
                out.push(Cow::Owned(group.iter().map(|(_, s)| *s).collect()));
            }
        }
    }
    item.clear();
}

/// Every string (with the name of the field holding it) and every object
/// key in `v`, depth first, in document order. Keys go to `out` directly;
/// strings go to both.
fn collect<'a>(
    field: &'a str,
    v: &'a Value,
    item: &mut Vec<(&'a str, &'a str)>,
    out: &mut Vec<Cow<'a, str>>,
) {
    match v {
        Value::String(s) => {
            out.push(Cow::Borrowed(s));
            item.push((field, s));
        }
        Value::Array(items) => items.iter().for_each(|i| collect(field, i, item, out)),
        Value::Object(map) => {
            for (k, v) in map {
                out.push(Cow::Borrowed(k));
                collect(k, v, item, out);
            }
        }
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
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
}
