//! The chat request as the gateway sees it: the client's JSON object kept
//! whole (so fields the gateway does not know reach the upstream untouched)
//! plus the few fields it reads to admit, classify and route.
//!
//! Fields that tell a proxy where to send a request or how to authenticate
//! it ([`is_routing_field`]: `api_base`, `base_url`, `api_key`, ...) are
//! removed at parse time: no client field decides where the gateway, or an
//! upstream proxy behind it, connects, or with which credentials.

use axum::http::HeaderMap;
use serde_json::{Map, Value};

use super::ApiError;
use crate::privacy::{is_opaque_part, Class};
use crate::routing::{Capabilities, Policy};

/// Header with which a client tags a request's privacy class.
pub const PRIVACY_HEADER: &str = "x-privacy-class";

/// Tokens charged per message for role and framing, on top of its text.
const TOKENS_PER_MESSAGE: u32 = 4;

/// Tokens counted for a content part that is not text: about the most a
/// high-detail image costs at OpenAI (85 + 170 per 512-pixel tile of an
/// image scaled to 768 × 2048 is 1,445; patch-priced models reach about
/// 2,500). Audio and files can cost more; their backends' own context check
/// is the last word.
const MEDIA_PART_TOKENS: u32 = 2_500;

/// Most choices (`n`) one request may ask for: OpenAI's own limit.
pub const MAX_CHOICES: u32 = 128;

/// Longest `model` accepted, in characters.
pub const MAX_MODEL_CHARS: usize = 256;

/// Body fields never forwarded: in OpenAI-compatible proxies (LiteLLM,
/// OpenRouter and others) they choose the upstream URL, its credentials,
/// extra headers, or other providers or models to send the request to.
const ROUTING_FIELDS: &[&str] = &[
    "api_base",
    "api_key",
    "api_type",
    "api_version",
    "azure_ad_token",
    "base_url",
    "context_window_fallbacks",
    "custom_llm_provider",
    "deployment_id",
    "extra_body",
    "extra_headers",
    "extra_query",
    "fallbacks",
    "headers",
    "model_list",
    "models",
    "organization",
    "provider",
    "proxy",
    "proxies",
    "route",
    "router_settings",
    "user_config",
];

/// Prefixes of provider credential and routing fields (`aws_secret_access_key`,
/// `vertex_credentials`, `litellm_params`, ...).
const ROUTING_PREFIXES: &[&str] = &["aws_", "azure_", "vertex_", "litellm_", "api_"];

/// Whether a top-level body field steers an upstream proxy and so is never
/// forwarded. Case-insensitive.
#[must_use]
pub fn is_routing_field(name: &str) -> bool {
    let lower = name.trim().to_ascii_lowercase();
    ROUTING_FIELDS.contains(&lower.as_str())
        || ROUTING_PREFIXES.iter().any(|p| lower.starts_with(p))
}

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
    /// What a backend must support to answer it faithfully.
    pub needs: Capabilities,
    /// How many choices it asks for (`n`): each may run to `max_tokens`,
    /// so its worst case, and what it is charged against tokens/min, is
    /// that many answers.
    pub choices: u32,
    /// The answer's expected length in tokens, without `max_tokens`: the
    /// tenant policy's, once applied.
    pub expected_output_tokens: u32,
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
        let Value::Object(mut body) = value else {
            return Err(ApiError::bad_request(
                "The request body must be a JSON object.",
                "invalid_request_body",
                None,
            ));
        };
        body.retain(|name, _| !is_routing_field(name));
        let model = match body.get("model") {
            Some(Value::String(m))
                if !m.is_empty()
                    && m.chars().count() <= MAX_MODEL_CHARS
                    && !m.chars().any(char::is_control) =>
            {
                m.clone()
            }
            _ => {
                return Err(bad(
                    "`model` must be a non-empty string of at most 256 characters without control characters.",
                    "invalid_request_body",
                    "model",
                ))
            }
        };
        if body
            .get("messages")
            .and_then(Value::as_array)
            .is_none_or(Vec::is_empty)
        {
            return Err(bad(
                "`messages` must be a non-empty array.",
                "invalid_messages",
                "messages",
            ));
        }
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
        let choices = match body.get("n") {
            None | Some(Value::Null) => 1,
            Some(v) => match v.as_u64().and_then(|n| u32::try_from(n).ok()) {
                Some(n @ 1..=MAX_CHOICES) => n,
                _ => {
                    return Err(bad(
                        format!("`n` must be an integer from 1 to {MAX_CHOICES}."),
                        "invalid_value",
                        "n",
                    ))
                }
            },
        };
        let prompt_estimate = estimate(&body);
        let tag = tag(&body, headers)?;
        let needs = needs(&body);
        Ok(ChatRequest {
            body,
            model,
            stream,
            include_usage,
            max_tokens,
            prompt_estimate,
            tag,
            needs,
            choices,
            expected_output_tokens: Policy::default().expected_output_tokens,
        })
    }

    /// Applies the tenant's policy: `store: true` is forwarded only where
    /// the policy allows it, and the policy says how long an answer is
    /// expected to run.
    pub fn apply_policy(&mut self, policy: &Policy) {
        self.expected_output_tokens = policy.expected_output_tokens;
        if !policy.allow_store {
            self.body.remove("store");
        }
    }

    /// The body to send upstream: the client's, with `model` set to the
    /// upstream's name and, for streams, usage requested (the gateway needs
    /// token counts; the proxy strips the usage chunk again if the client
    /// did not ask for it). Nothing else is added: the privacy classifier
    /// saw every other byte of it.
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
                        format!("`{field}` must be an integer from 1 to {}.", u32::MAX),
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

/// A conservative prompt size: it decides whether a prompt fits a
/// backend's context, so it must not undercount scripts and code that
/// tokenize densely. ASCII letters, digits and spaces count four to a
/// token, ASCII punctuation two, and every byte of a non-ASCII character
/// one (byte-level BPE never needs more tokens than bytes). Tools and
/// schemas are prompt text too, so every string of the body counts, plus
/// framing per message. A content part that is not text (an image, audio,
/// a file) counts [`MEDIA_PART_TOKENS`], not the characters of its URL or
/// base64 data, which would count a picture as a long book.
fn estimate(body: &Map<String, Value>) -> u32 {
    let mut texts = Vec::new();
    let mut media = 0usize;
    body.values()
        .for_each(|v| collect_strings(v, false, &mut texts, &mut media));
    let (mut words, mut punct, mut other) = (0usize, 0usize, 0usize);
    for text in texts {
        for b in text.bytes() {
            match b {
                b if b.is_ascii_alphanumeric() || b.is_ascii_whitespace() => words += 1,
                b if b.is_ascii() => punct += 1,
                _ => other += 1,
            }
        }
    }
    let tokens = words.div_ceil(4)
        + punct.div_ceil(2)
        + other
        + media.saturating_mul(MEDIA_PART_TOKENS as usize);
    let messages = body
        .get("messages")
        .and_then(Value::as_array)
        .map_or(0, Vec::len);
    u32::try_from(tokens).unwrap_or(u32::MAX).saturating_add(
        u32::try_from(messages)
            .unwrap_or(u32::MAX)
            .saturating_mul(TOKENS_PER_MESSAGE),
    )
}

/// The strings of `v`; the parts of a `content` array (`in_content`) that
/// are not text are counted in `media` instead.
fn collect_strings<'a>(v: &'a Value, in_content: bool, out: &mut Vec<&'a str>, media: &mut usize) {
    match v {
        Value::String(s) => out.push(s),
        Value::Array(items) => {
            for i in items {
                if in_content && is_opaque_part(i) {
                    *media += 1;
                } else {
                    collect_strings(i, false, out, media);
                }
            }
        }
        Value::Object(map) => {
            for (k, i) in map {
                collect_strings(i, k == "content", out, media);
            }
        }
        _ => {}
    }
}

/// Tools (or legacy functions) that the model may call, unless the caller
/// switched calling off; a JSON response format.
fn needs(body: &Map<String, Value>) -> Capabilities {
    let offered = |list: &str, choice: &str| {
        body.get(list)
            .and_then(Value::as_array)
            .is_some_and(|l| !l.is_empty())
            && body.get(choice).and_then(Value::as_str) != Some("none")
    };
    let json = body
        .get("response_format")
        .and_then(|f| f.get("type"))
        .and_then(Value::as_str)
        .is_some_and(|t| t == "json_object" || t == "json_schema");
    Capabilities {
        tools: offered("tools", "tool_choice") || offered("functions", "function_call"),
        json_schema: json,
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
    // Every value of every copy of the header counts (a proxy may append
    // a stricter class to the client's), the strictest winning; so does
    // the header spelt with underscores (`x_privacy_class`).
    let mut from_header = None;
    let copies = headers
        .iter()
        .filter(|(name, _)| is_privacy_key(name.as_str(), "xprivacyclass"))
        .map(|(_, v)| v);
    for value in copies {
        let value = value.to_str().map_err(|_| invalid(PRIVACY_HEADER))?;
        for class in value.split(',') {
            let class = class
                .parse::<Class>()
                .map_err(|_| invalid(PRIVACY_HEADER))?;
            from_header = from_header.max(Some(class));
        }
    }
    // `metadata.privacy_class` in any spelling (`Privacy_Class`,
    // `privacyClass`, `privacy class`, a zero-width space inside), or the
    // same key beside `metadata`: a tag spelt otherwise is still a tag,
    // not a stray field.
    let mut from_body = None;
    let metadata = match body.get("metadata") {
        Some(Value::Object(metadata)) => Some(metadata.iter()),
        _ => None,
    };
    let tag = body
        .iter()
        .chain(metadata.into_iter().flatten())
        .filter(|(k, _)| is_privacy_key(k, "privacyclass"))
        .map(|(_, v)| v);
    for v in tag.filter(|v| !v.is_null()) {
        let class = v
            .as_str()
            .and_then(|s| s.parse::<Class>().ok())
            .ok_or_else(|| invalid("metadata.privacy_class"))?;
        from_body = from_body.max(Some(class));
    }
    Ok(from_header.max(from_body))
}

/// Whether `key`'s letters and digits, in lower case, spell `folded`
/// (whatever separators, case or invisible characters it has).
fn is_privacy_key(key: &str, folded: &str) -> bool {
    let mut letters = key
        .chars()
        .filter(|c| c.is_alphanumeric())
        .flat_map(char::to_lowercase);
    folded.chars().all(|c| letters.next() == Some(c)) && letters.next().is_none()
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
            (
                r#"{"model":"a\u0000b","messages":[{}]}"#,
                "invalid_request_body",
            ),
            (
                r#"{"model":"a\nb","messages":[{}]}"#,
                "invalid_request_body",
            ),
            (r#"{"model":7,"messages":[{}]}"#, "invalid_request_body"),
        ];
        for (body, code) in cases {
            let err = parse(body).unwrap_err();
            assert_eq!(err.code(), code, "{body}");
            assert_eq!(err.status().as_u16(), 400);
        }
    }

    #[test]
    fn needs_follow_tools_and_response_format() {
        let cases = [
            (r"{}", false, false),
            (r#"{"tools":[{"type":"function"}]}"#, true, false),
            (
                r#"{"tools":[{"type":"function"}],"tool_choice":"none"}"#,
                false,
                false,
            ),
            (r#"{"tools":[]}"#, false, false),
            (r#"{"functions":[{"name":"f"}]}"#, true, false),
            (r#"{"response_format":{"type":"json_object"}}"#, false, true),
            (
                r#"{"response_format":{"type":"json_schema","json_schema":{}}}"#,
                false,
                true,
            ),
            (r#"{"response_format":{"type":"text"}}"#, false, false),
        ];
        for (extra, tools, json) in cases {
            let mut body: Map<String, Value> = serde_json::from_str(extra).unwrap();
            body.insert("model".into(), "m".into());
            body.insert("messages".into(), serde_json::json!([{"content": "x"}]));
            let req = parse(&Value::Object(body).to_string()).unwrap();
            assert_eq!(
                (req.needs.tools, req.needs.json_schema),
                (tools, json),
                "{extra}"
            );
        }
    }

    #[test]
    fn model_length_is_capped() {
        let ok = format!(
            r#"{{"model":"{}","messages":[{{}}]}}"#,
            "m".repeat(MAX_MODEL_CHARS)
        );
        assert!(parse(&ok).is_ok());
        let long = format!(
            r#"{{"model":"{}","messages":[{{}}]}}"#,
            "m".repeat(MAX_MODEL_CHARS + 1)
        );
        assert_eq!(parse(&long).unwrap_err().code(), "invalid_request_body");
    }

    #[test]
    fn routing_fields_and_store_are_never_forwarded() {
        let mut req = parse(
            r#"{"model":"m","messages":[{"content":"hi"}],"api_base":"http://169.254.169.254",
                "Base_URL":"http://evil","api_key":"sk-x","api_version":"1","extra_headers":{"a":"b"},
                "organization":"o","aws_secret_access_key":"k","vertex_credentials":"c",
                "litellm_params":{},"custom_llm_provider":"openai","store":true,"user":"u",
                "user_config":{"model_list":[{"litellm_params":{"api_base":"https://evil"}}]},
                "provider":{"order":["x"]},"models":["a","b"],"fallbacks":["c"]}"#,
        )
        .unwrap();
        req.apply_policy(&Policy::default());
        let sent: Map<String, Value> = serde_json::from_slice(&req.upstream_body("up")).unwrap();
        let mut keys: Vec<&str> = sent.keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(keys, ["messages", "model", "user"]);

        let mut req = parse(r#"{"model":"m","messages":[{}],"store":true}"#).unwrap();
        req.apply_policy(&Policy {
            allow_store: true,
            ..Policy::default()
        });
        let sent: Value = serde_json::from_slice(&req.upstream_body("up")).unwrap();
        assert_eq!(sent["store"], true);
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
        // The metadata key in another case or with a hyphen is the tag.
        for key in [
            "Privacy_Class",
            "PRIVACY-CLASS",
            "privacy-class",
            "privacyClass",
            "privacy class",
            "privacy_class\\u200b",
        ] {
            let body = format!(
                r#"{{"model":"m","messages":[{{"content":"a"}}],"metadata":{{"{key}":"confidential"}}}}"#
            );
            let tagged = ChatRequest::parse(body.as_bytes(), &HeaderMap::new()).unwrap();
            assert_eq!(tagged.tag, Some(Class::Confidential), "{key}");
        }
        // Beside `metadata`, and the header spelt with underscores.
        let body = r#"{"model":"m","messages":[{"content":"a"}],"privacy_class":"confidential"}"#;
        let tagged = ChatRequest::parse(body.as_bytes(), &HeaderMap::new()).unwrap();
        assert_eq!(tagged.tag, Some(Class::Confidential));
        let mut underscored = HeaderMap::new();
        underscored.insert("x_privacy_class", HeaderValue::from_static("confidential"));
        let body = r#"{"model":"m","messages":[{"content":"a"}]}"#;
        let tagged = ChatRequest::parse(body.as_bytes(), &underscored).unwrap();
        assert_eq!(tagged.tag, Some(Class::Confidential));
        let body = r#"{"model":"m","messages":[{"content":"a"}],"metadata":{"privacy_klass":"confidential"}}"#;
        let other = ChatRequest::parse(body.as_bytes(), &HeaderMap::new()).unwrap();
        assert_eq!(other.tag, None);
        // "m" and "abcdefgh": 9 letters, three tokens.
        assert_eq!(req.prompt_estimate, 3 + TOKENS_PER_MESSAGE);
    }

    #[test]
    fn n_is_counted_and_checked() {
        let with = |n: &str| parse(&format!(r#"{{"model":"m","messages":[{{}}],"n":{n}}}"#));
        assert_eq!(
            parse(r#"{"model":"m","messages":[{}]}"#).unwrap().choices,
            1
        );
        assert_eq!(with("null").unwrap().choices, 1);
        assert_eq!(with("3").unwrap().choices, 3);
        assert_eq!(with("128").unwrap().choices, 128);
        for bad in ["0", "-1", "129", "1.5", "\"2\"", "true", "4294967297"] {
            let e = with(bad).unwrap_err();
            assert_eq!(e.code(), "invalid_value", "{bad}");
        }
    }

    #[test]
    fn every_copy_and_value_of_the_privacy_header_counts() {
        let body = br#"{"model":"m","messages":[{"content":"a"}]}"#;
        let mut h = HeaderMap::new();
        h.append(PRIVACY_HEADER, HeaderValue::from_static("public"));
        h.append(PRIVACY_HEADER, HeaderValue::from_static("confidential"));
        assert_eq!(
            ChatRequest::parse(body, &h).unwrap().tag,
            Some(Class::Confidential)
        );
        let mut h = HeaderMap::new();
        h.insert(PRIVACY_HEADER, HeaderValue::from_static("public, internal"));
        assert_eq!(
            ChatRequest::parse(body, &h).unwrap().tag,
            Some(Class::Internal)
        );
        // One bad value among good ones is refused, not skipped.
        for bad in [&b"public, secret"[..], b"public,", b"\xff"] {
            let mut h = HeaderMap::new();
            h.append(PRIVACY_HEADER, HeaderValue::from_static("public"));
            h.append(PRIVACY_HEADER, HeaderValue::from_bytes(bad).unwrap());
            assert!(ChatRequest::parse(body, &h).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_media_part_counts_a_fixed_allowance_not_its_data() {
        let data = "A".repeat(400_000);
        let with_image = parse(&format!(
            r#"{{"model":"m","messages":[{{"content":[{{"type":"text","text":"what is this"}},
                {{"type":"image_url","image_url":{{"url":"data:image/png;base64,{data}"}}}}]}}]}}"#
        ))
        .unwrap();
        let text_only = parse(
            r#"{"model":"m","messages":[{"content":[{"type":"text","text":"what is this"}]}]}"#,
        )
        .unwrap();
        assert_eq!(
            with_image.prompt_estimate,
            text_only.prompt_estimate + MEDIA_PART_TOKENS
        );
        // The same characters as text do count.
        let as_text = parse(&format!(
            r#"{{"model":"m","messages":[{{"content":[{{"type":"text","text":"{data}"}}]}}]}}"#
        ))
        .unwrap();
        assert!(
            as_text.prompt_estimate >= 100_000,
            "{}",
            as_text.prompt_estimate
        );
    }

    #[test]
    fn the_estimate_never_undercounts_dense_scripts() {
        // Each of these characters is three UTF-8 bytes and counts three
        // tokens: at least what any byte-level tokenizer needs.
        let cjk = "\u{6f22}".repeat(100);
        let req = parse(&format!(
            r#"{{"model":"m","messages":[{{"content":"{cjk}"}}]}}"#
        ))
        .unwrap();
        assert!(req.prompt_estimate >= 300, "{}", req.prompt_estimate);
        let code = "{}();".repeat(40);
        let req = parse(&format!(
            r#"{{"model":"m","messages":[{{"content":"{code}"}}]}}"#
        ))
        .unwrap();
        assert!(req.prompt_estimate >= 100, "{}", req.prompt_estimate);
    }
}
