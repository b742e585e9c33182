//! Checks a chat request and translates it for the engine: every client
//! mistake becomes a 400 naming the parameter at fault, and every parameter
//! the worker cannot honour is refused rather than silently ignored.

use serde_json::Value;

use crate::engine::{self, EngineMessage, GenerateParams, OutputFormat};
use crate::error::ApiError;
use crate::openai::{ChatMessage, ChatRequest, Content};

/// A request checked and translated for the engine.
pub(super) struct Validated {
    pub stream: bool,
    pub include_usage: bool,
    /// `None` when the client left it to the worker's default.
    pub max_tokens: Option<usize>,
    pub params: GenerateParams,
}

/// Roles the chat template understands. `developer` is OpenAI's newer name
/// for `system`.
fn engine_role(role: &str) -> Option<&'static str> {
    match role {
        "system" | "developer" => Some("system"),
        "user" => Some("user"),
        "assistant" => Some("assistant"),
        _ => None,
    }
}

/// Checks roles and content and renders messages as the engine takes them.
fn convert_messages(messages: Option<Vec<ChatMessage>>) -> Result<Vec<EngineMessage>, ApiError> {
    let Some(messages) = messages.filter(|m| !m.is_empty()) else {
        return Err(ApiError::invalid(
            "messages",
            "invalid_messages",
            "`messages` must be a non-empty array",
        ));
    };
    let mut out = Vec::with_capacity(messages.len());
    for (i, m) in messages.into_iter().enumerate() {
        let Some(role) = engine_role(&m.role) else {
            return Err(ApiError::invalid(
                format!("messages[{i}].role"),
                "unsupported_role",
                format!(
                    "role `{}` is not supported; use system, developer, user or assistant",
                    m.role
                ),
            ));
        };
        let text = match m.content {
            None => String::new(),
            Some(Content::Text(t)) => t,
            Some(Content::Parts(parts)) => {
                let mut text = String::new();
                for p in parts {
                    if p.kind != "text" {
                        return Err(ApiError::invalid(
                            format!("messages[{i}].content"),
                            "unsupported_content",
                            format!("content part type `{}` is not supported; only text", p.kind),
                        ));
                    }
                    text.push_str(p.text.as_deref().unwrap_or_default());
                }
                text
            }
        };
        out.push(engine::message(role, text));
    }
    Ok(out)
}

/// Tool calling is not implemented: a request that offers tools would get
/// an answer that never calls them, so it is refused. `tool_choice: "none"`
/// (and `null`) ask for no call and pass.
fn refuse_tools(req: &ChatRequest) -> Result<(), ApiError> {
    let offered = |v: &Option<Value>| match v {
        None | Some(Value::Null) => false,
        Some(Value::Array(items)) => !items.is_empty(),
        Some(_) => true,
    };
    let chosen = |v: &Option<Value>| match v {
        None | Some(Value::Null) => false,
        Some(Value::String(s)) => s != "none",
        Some(_) => true,
    };
    let refused = [
        ("tools", offered(&req.tools)),
        ("tool_choice", chosen(&req.tool_choice)),
        ("functions", offered(&req.functions)),
        ("function_call", chosen(&req.function_call)),
    ];
    match refused.into_iter().find(|(_, refused)| *refused) {
        Some((param, _)) => Err(ApiError::invalid(
            param,
            "unsupported_parameter",
            format!("`{param}`: tool calling is not supported by this worker"),
        )),
        None => Ok(()),
    }
}

/// The most `top_logprobs` OpenAI accepts.
const MAX_TOP_LOGPROBS: i64 = 20;

/// `logprobs` and `top_logprobs`: `None` when not asked for, else how many
/// of the most likely tokens to return per position. `top_logprobs` needs
/// `logprobs: true`, as OpenAI requires.
fn logprobs(logprobs: Option<bool>, top: Option<i64>) -> Result<Option<usize>, ApiError> {
    let asked = logprobs.unwrap_or(false);
    match top {
        Some(n) if !(0..=MAX_TOP_LOGPROBS).contains(&n) => Err(ApiError::invalid(
            "top_logprobs",
            "invalid_value",
            format!("top_logprobs must be between 0 and {MAX_TOP_LOGPROBS}, got {n}"),
        )),
        Some(_) if !asked => Err(ApiError::invalid(
            "top_logprobs",
            "invalid_value",
            "top_logprobs requires logprobs to be true",
        )),
        n => Ok(asked.then(|| usize::try_from(n.unwrap_or(0)).unwrap_or(0))),
    }
}

fn bad_format(message: impl Into<String>) -> ApiError {
    ApiError::invalid("response_format", "invalid_value", message)
}

/// `response_format`: `text` (the default), `json_object` (any JSON
/// object) or `json_schema` (JSON matching the given schema). Both JSON
/// forms are enforced by constrained decoding, `strict` or not; whether the
/// schema compiles is checked by the engine before admission.
fn output_format(value: Option<Value>) -> Result<OutputFormat, ApiError> {
    let Some(value) = value.filter(|v| !v.is_null()) else {
        return Ok(OutputFormat::Text);
    };
    let Value::Object(mut format) = value else {
        return Err(bad_format("`response_format` must be an object"));
    };
    match format.get("type").and_then(Value::as_str) {
        Some("text") => Ok(OutputFormat::Text),
        Some("json_object") => Ok(OutputFormat::JsonSchema(
            serde_json::json!({"type": "object"}),
        )),
        Some("json_schema") => {
            let Some(Value::Object(mut spec)) = format.remove("json_schema") else {
                return Err(bad_format(
                    "`response_format.json_schema` must be an object with a `schema`",
                ));
            };
            match spec.remove("schema") {
                Some(schema @ Value::Object(_)) => Ok(OutputFormat::JsonSchema(schema)),
                _ => Err(bad_format(
                    "`response_format.json_schema.schema` must be a JSON Schema object",
                )),
            }
        }
        Some(other) => Err(bad_format(format!(
            "`response_format.type` `{other}` is not supported; use text, json_object or json_schema"
        ))),
        None => Err(bad_format("`response_format.type` is required")),
    }
}

pub(super) fn validate(
    req: ChatRequest,
    default_max_tokens: usize,
    model_id: &str,
) -> Result<Validated, ApiError> {
    if req.model != model_id {
        return Err(ApiError::ModelNotFound(req.model));
    }
    refuse_tools(&req)?;
    let messages = convert_messages(req.messages)?;
    if let Some(n) = req.n.filter(|n| *n != 1) {
        return Err(ApiError::invalid(
            "n",
            "unsupported_parameter",
            format!("only n=1 is supported, got {n}"),
        ));
    }
    let max_tokens = match req.max_completion_tokens.or(req.max_tokens) {
        None => None,
        Some(n) if n < 1 => {
            return Err(ApiError::invalid(
                "max_tokens",
                "invalid_max_tokens",
                format!("max_tokens must be at least 1, got {n}"),
            ))
        }
        Some(n) => Some(usize::try_from(n).unwrap_or(usize::MAX)),
    };
    if let Some(t) = req.temperature.filter(|t| !(0.0..=2.0).contains(t)) {
        return Err(ApiError::invalid(
            "temperature",
            "invalid_value",
            format!("temperature must be between 0 and 2, got {t}"),
        ));
    }
    if let Some(p) = req.top_p.filter(|p| !(*p > 0.0 && *p <= 1.0)) {
        return Err(ApiError::invalid(
            "top_p",
            "invalid_value",
            format!("top_p must be in (0, 1], got {p}"),
        ));
    }
    let logprobs = logprobs(req.logprobs, req.top_logprobs)?;
    let stop = req
        .stop
        .map(crate::openai::Stop::into_vec)
        .unwrap_or_default();
    if stop.len() > 4 || stop.iter().any(String::is_empty) {
        return Err(ApiError::invalid(
            "stop",
            "invalid_value",
            "stop takes up to 4 non-empty strings",
        ));
    }
    let format = output_format(req.response_format)?;
    let stream = req.stream.unwrap_or(false);
    Ok(Validated {
        stream,
        include_usage: stream && req.stream_options.is_some_and(|o| o.include_usage),
        max_tokens,
        params: GenerateParams {
            messages,
            max_tokens: max_tokens.unwrap_or(default_max_tokens),
            temperature: req.temperature,
            top_p: req.top_p,
            stop,
            frequency_penalty: req.frequency_penalty,
            presence_penalty: req.presence_penalty,
            seed: req.seed.map(i64::cast_unsigned),
            format,
            logprobs,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn format_error(v: Value) -> String {
        match output_format(Some(v)) {
            Err(ApiError::InvalidParam { param, code, .. }) => format!("{param}/{code}"),
            other => format!("{other:?}"),
        }
    }

    #[test]
    fn response_formats_map_to_output_formats() {
        assert_eq!(output_format(None).unwrap(), OutputFormat::Text);
        assert_eq!(
            output_format(Some(Value::Null)).unwrap(),
            OutputFormat::Text
        );
        assert_eq!(
            output_format(Some(json!({"type": "text"}))).unwrap(),
            OutputFormat::Text
        );
        assert_eq!(
            output_format(Some(json!({"type": "json_object"}))).unwrap(),
            OutputFormat::JsonSchema(json!({"type": "object"}))
        );
        let schema = json!({"type": "object", "properties": {"a": {"type": "string"}}});
        assert_eq!(
            output_format(Some(json!({"type": "json_schema",
                "json_schema": {"name": "x", "schema": schema.clone(), "strict": true}})))
            .unwrap(),
            OutputFormat::JsonSchema(schema)
        );
        for bad in [
            json!("json"),
            json!({}),
            json!({"type": "yaml"}),
            json!({"type": "json_schema"}),
            json!({"type": "json_schema", "json_schema": {"name": "x"}}),
            json!({"type": "json_schema", "json_schema": {"name": "x", "schema": true}}),
        ] {
            assert_eq!(
                format_error(bad.clone()),
                "response_format/invalid_value",
                "{bad}"
            );
        }
    }

    fn request(extra: &Value) -> ChatRequest {
        let mut body = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        serde_json::from_value(body).unwrap()
    }

    #[test]
    fn logprobs_are_asked_for_with_an_optional_top_count() {
        for (extra, want) in [
            (json!({}), Ok(None)),
            (json!({"logprobs": false}), Ok(None)),
            (json!({"logprobs": null, "top_logprobs": null}), Ok(None)),
            (json!({"logprobs": true}), Ok(Some(0))),
            (json!({"logprobs": true, "top_logprobs": 0}), Ok(Some(0))),
            (json!({"logprobs": true, "top_logprobs": 20}), Ok(Some(20))),
            (json!({"top_logprobs": 2}), Err("top_logprobs")),
            (
                json!({"logprobs": false, "top_logprobs": 0}),
                Err("top_logprobs"),
            ),
            (
                json!({"logprobs": true, "top_logprobs": 21}),
                Err("top_logprobs"),
            ),
            (
                json!({"logprobs": true, "top_logprobs": -1}),
                Err("top_logprobs"),
            ),
        ] {
            let req = request(&extra);
            let got = match logprobs(req.logprobs, req.top_logprobs) {
                Ok(n) => Ok(n),
                Err(ApiError::InvalidParam { param, code, .. }) => {
                    assert_eq!(code, "invalid_value");
                    Err(param)
                }
                Err(e) => panic!("{e:?}"),
            };
            assert_eq!(got, want.map_err(String::from), "{extra}");
        }
    }

    #[test]
    fn tool_calling_is_refused_by_name() {
        let tool = json!([{"type": "function", "function": {"name": "f", "parameters": {}}}]);
        for (extra, param) in [
            (json!({"tools": tool}), Some("tools")),
            (json!({"tools": tool, "tool_choice": "none"}), Some("tools")),
            (json!({"tool_choice": "auto"}), Some("tool_choice")),
            (
                json!({"tool_choice": {"type": "function", "function": {"name": "f"}}}),
                Some("tool_choice"),
            ),
            (json!({"functions": [{"name": "f"}]}), Some("functions")),
            (json!({"function_call": "auto"}), Some("function_call")),
            (json!({"tools": [], "tool_choice": "none"}), None),
            (json!({"tools": null, "tool_choice": null}), None),
        ] {
            let got = match refuse_tools(&request(&extra)) {
                Ok(()) => None,
                Err(ApiError::InvalidParam { param, code, .. }) => {
                    assert_eq!(code, "unsupported_parameter");
                    Some(param)
                }
                Err(e) => panic!("{e:?}"),
            };
            assert_eq!(got.as_deref(), param, "{extra}");
        }
    }
}
