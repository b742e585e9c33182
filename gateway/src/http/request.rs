//! The chat request as the gateway sees it: the client's JSON object kept
//! whole (so fields the gateway does not know reach the upstream untouched)
//! plus the few fields it reads to admit, classify and route.

use axum::http::HeaderMap;
use serde_json::{Map, Value};

use super::ApiError;
use crate::privacy::Class;

/// Header with which a client tags a request's privacy class.
pub const PRIVACY_HEADER: &str = "x-privacy-class";

/// Tokens charged per message for role and framing, on top of its text.
const TOKENS_PER_MESSAGE: u32 = 4;

#[derive(Debug)]
pub struct ChatRequest {
    /// The client's body; only `model` (and, for streams,
    /// `stream_options.include_usage`) is rewritten before sending.
    pub body: Map<String, Value>,
    pub model: String,
    pub stream: bool,
    /// The client asked for the usage chunk of a stream.
    pub include_usage: bool,
    /// `max_completion_tokens`, else `max_tokens`.
    pub max_tokens: Option<u32>,
    /// Prompt tokens estimated as bytes/4 plus framing: the gateway has no
    /// tokenizer for every upstream, and routing needs only the magnitude.
    pub prompt_estimate: u32,
    /// The class the client tagged (header or `metadata.privacy_class`),
    /// the higher of the two if both.
    pub tag: Option<Class>,
}

fn bad(message: impl Into<String>, code: &'static str, param: &'static str) -> ApiError {
    ApiError::bad_request(message, code, Some(param))
}

impl ChatRequest {
    /// Parses and checks the body. Only what the gateway itself needs is
    /// checked; the upstream validates the rest and its 400 is passed on.
    pub fn parse(bytes: &[u8], headers: &HeaderMap) -> Result<ChatRequest, ApiError> {
        let value: Value = serde_json::from_slice(bytes).map_err(|e| {
            ApiError::bad_request(
                format!("We could not parse the JSON body of your request: {e}"),
                "invalid_json",
                None,
            )
        })?;
        let Value::Object(body) = value else {
            return Err(ApiError::bad_request(
                "The request body must be a JSON object.",
                "invalid_request_body",
                None,
            ));
        };
        let model = match body.get("model") {
            Some(Value::String(m)) if !m.is_empty() => m.clone(),
            _ => {
                return Err(bad(
                    "`model` must be a non-empty string.",
                    "invalid_request_body",
                    "model",
                ))
            }
        };
        let messages = match body.get("messages") {
            Some(Value::Array(m)) if !m.is_empty() => m,
            _ => {
                return Err(bad(
                    "`messages` must be a non-empty array.",
                    "invalid_messages",
                    "messages",
                ))
            }
        };
        let stream = match body.get("stream") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => {
                return Err(bad(
                    "`stream` must be a boolean.",
                    "invalid_value",
                    "stream",
                ))
            }
        };
        let include_usage = match body.get("stream_options") {
            None | Some(Value::Null) => false,
            Some(Value::Object(o)) => o.get("include_usage").and_then(Value::as_bool) == Some(true),
            Some(_) => {
                return Err(bad(
                    "`stream_options` must be an object.",
                    "invalid_value",
                    "stream_options",
                ))
            }
        };
        let max_tokens = max_tokens(&body)?;
        let prompt_estimate = estimate(messages);
        let tag = tag(&body, headers)?;
        Ok(ChatRequest {
            body,
            model,
            stream,
            include_usage,
            max_tokens,
            prompt_estimate,
            tag,
        })
    }

    /// Every string inside `messages` (contents, parts, tool arguments,
    /// names), for the privacy detectors.
    #[must_use]
    pub fn texts(&self) -> Vec<&str> {
        let mut out = Vec::new();
        if let Some(m) = self.body.get("messages") {
            collect_strings(m, &mut out);
        }
        out
    }

    /// The body to send upstream: the client's, with `model` set to the
    /// upstream's name and, for streams, usage requested (the gateway needs
    /// token counts; the proxy strips the usage chunk again if the client
    /// did not ask for it).
    #[must_use]
    pub fn upstream_body(&mut self, upstream_model: &str) -> Vec<u8> {
        self.body
            .insert("model".to_owned(), Value::String(upstream_model.to_owned()));
        if self.stream {
            let options = self
                .body
                .entry("stream_options")
                .or_insert_with(|| Value::Object(Map::new()));
            if let Value::Object(o) = options {
                o.insert("include_usage".to_owned(), Value::Bool(true));
            }
        }
        serde_json::to_vec(&self.body).unwrap_or_default()
    }
}

fn max_tokens(body: &Map<String, Value>) -> Result<Option<u32>, ApiError> {
    for field in ["max_completion_tokens", "max_tokens"] {
        match body.get(field) {
            None | Some(Value::Null) => {}
            Some(v) => {
                return match v.as_u64().and_then(|n| u32::try_from(n).ok()) {
                    Some(n) if n >= 1 => Ok(Some(n)),
                    _ => Err(ApiError::bad_request(
                        format!("`{field}` must be a positive integer."),
                        "invalid_max_tokens",
                        Some(if field == "max_tokens" {
                            "max_tokens"
                        } else {
                            "max_completion_tokens"
                        }),
                    )),
                };
            }
        }
    }
    Ok(None)
}

fn estimate(messages: &[Value]) -> u32 {
    let mut total: u32 = 0;
    for m in messages {
        let mut texts = Vec::new();
        collect_strings(m, &mut texts);
        let bytes: usize = texts.iter().map(|t| t.len()).sum();
        let tokens = u32::try_from(bytes.div_ceil(4)).unwrap_or(u32::MAX);
        total = total
            .saturating_add(tokens)
            .saturating_add(TOKENS_PER_MESSAGE);
    }
    total
}

fn collect_strings<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
    match v {
        Value::String(s) => out.push(s),
        Value::Array(items) => items.iter().for_each(|i| collect_strings(i, out)),
        Value::Object(map) => map.values().for_each(|i| collect_strings(i, out)),
        _ => {}
    }
}

fn tag(body: &Map<String, Value>, headers: &HeaderMap) -> Result<Option<Class>, ApiError> {
    let invalid = |param| {
        ApiError::bad_request(
            "Privacy class must be public, internal or confidential.",
            "invalid_privacy_class",
            Some(param),
        )
    };
    let from_header = match headers.get(PRIVACY_HEADER) {
        None => None,
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|s| s.parse::<Class>().ok())
                .ok_or_else(|| invalid(PRIVACY_HEADER))?,
        ),
    };
    let from_body = match body.get("metadata").and_then(|m| m.get("privacy_class")) {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            v.as_str()
                .and_then(|s| s.parse::<Class>().ok())
                .ok_or_else(|| invalid("metadata.privacy_class"))?,
        ),
    };
    Ok(from_header.max(from_body))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn parse(body: &str) -> Result<ChatRequest, ApiError> {
        ChatRequest::parse(body.as_bytes(), &HeaderMap::new())
    }

    #[test]
    fn malformed_bodies_get_specific_codes() {
        let cases = [
            ("{", "invalid_json"),
            ("[]", "invalid_request_body"),
            (
                r#"{"messages":[{"role":"user","content":"hi"}]}"#,
                "invalid_request_body",
            ),
            (r#"{"model":"m"}"#, "invalid_messages"),
            (r#"{"model":"m","messages":[]}"#, "invalid_messages"),
            (
                r#"{"model":"m","messages":[{}],"stream":"yes"}"#,
                "invalid_value",
            ),
            (
                r#"{"model":"m","messages":[{}],"max_tokens":0}"#,
                "invalid_max_tokens",
            ),
            (
                r#"{"model":"m","messages":[{}],"max_tokens":-3}"#,
                "invalid_max_tokens",
            ),
            (
                r#"{"model":"m","messages":[{}],"metadata":{"privacy_class":"secret"}}"#,
                "invalid_privacy_class",
            ),
        ];
        for (body, code) in cases {
            let err = parse(body).unwrap_err();
            assert_eq!(err.code(), code, "{body}");
            assert_eq!(err.status().as_u16(), 400);
        }
    }

    #[test]
    fn upstream_body_keeps_unknown_fields_and_forces_usage_for_streams() {
        let mut req = parse(
            r#"{"model":"auto","messages":[{"role":"user","content":"hi"}],"stream":true,
                "logit_bias":{"42":-1},"x_vendor":{"deep":[1,2]}}"#,
        )
        .unwrap();
        assert!(req.stream && !req.include_usage);
        let sent: Value = serde_json::from_slice(&req.upstream_body("up-model")).unwrap();
        assert_eq!(sent["model"], "up-model");
        assert_eq!(sent["logit_bias"]["42"], -1);
        assert_eq!(sent["x_vendor"]["deep"][1], 2);
        assert_eq!(sent["stream_options"]["include_usage"], true);
    }

    #[test]
    fn tag_is_the_higher_of_header_and_metadata() {
        let mut h = HeaderMap::new();
        h.insert(PRIVACY_HEADER, HeaderValue::from_static("internal"));
        let body = r#"{"model":"m","messages":[{"content":"a"}],"metadata":{"privacy_class":"confidential"}}"#;
        let req = ChatRequest::parse(body.as_bytes(), &h).unwrap();
        assert_eq!(req.tag, Some(Class::Confidential));
        let req = ChatRequest::parse(br#"{"model":"m","messages":[{"content":"abcdefgh"}]}"#, &h)
            .unwrap();
        assert_eq!(req.tag, Some(Class::Internal));
        assert_eq!(req.prompt_estimate, 2 + TOKENS_PER_MESSAGE);
    }
}
