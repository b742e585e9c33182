//! The OpenAI error body.

use serde::{Deserialize, Serialize};

/// `{"error":{"message","type","param","code"}}`: what the official SDKs
/// parse into their typed exceptions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorObject,
}

/// The inner object of an [`ErrorBody`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorObject {
    /// Human-readable; never carries secrets, paths or upstream text.
    pub message: String,
    /// OpenAI's `type` (`invalid_request_error`, `server_error`, ...).
    #[serde(rename = "type")]
    pub kind: String,
    /// The request parameter at fault, if one is.
    pub param: Option<String>,
    /// Machine-readable code; also used as a low-cardinality metric label.
    pub code: Option<String>,
}

impl ErrorBody {
    #[must_use]
    pub fn new(message: &str, kind: &str, param: Option<&str>, code: &str) -> ErrorBody {
        ErrorBody {
            error: ErrorObject {
                message: message.to_owned(),
                kind: kind.to_owned(),
                param: param.map(str::to_owned),
                code: Some(code.to_owned()),
            },
        }
    }

    /// The body as JSON text.
    #[must_use]
    pub fn to_json(&self) -> String {
        // Serialising a struct of strings cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// The body as one SSE event (`data: {...}\n\n`), the way a stream that
    /// fails after its first event ends.
    #[must_use]
    pub fn sse_event(&self) -> String {
        format!("data: {}\n\n", self.to_json())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn shape_matches_openai() {
        let body = ErrorBody::new(
            "nope",
            "invalid_request_error",
            Some("model"),
            "model_not_found",
        );
        let v: serde_json::Value = serde_json::from_str(&body.to_json()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"error": {"message": "nope", "type": "invalid_request_error",
                "param": "model", "code": "model_not_found"}})
        );
        let event = ErrorBody::new("x", "server_error", None, "upstream_error").sse_event();
        assert!(event.starts_with("data: {\"error\":") && event.ends_with("}\n\n"));
        assert!(event.contains("\"param\":null"));
    }
}
