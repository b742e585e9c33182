//! OpenAI chat-completions wire types, as far as this worker supports them.
//! Unknown request fields are ignored, as OpenAI-compatible servers do, so
//! SDKs that send newer optional fields keep working; fields that change
//! what the answer must be (`response_format`, tools) are read, and honoured
//! or refused.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::engine::{TokenLogprob, TokenLogprobs};

#[derive(Debug, Deserialize)]
pub struct ChatRequest {
    pub model: String,
    /// Optional in the type so a missing list gets its own error code
    /// rather than a generic deserialisation message.
    #[serde(default)]
    pub messages: Option<Vec<ChatMessage>>,
    #[serde(default)]
    pub stream: Option<bool>,
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
    #[serde(default)]
    pub max_tokens: Option<i64>,
    /// The newer name of `max_tokens`; wins when both are given.
    #[serde(default)]
    pub max_completion_tokens: Option<i64>,
    #[serde(default)]
    pub temperature: Option<f64>,
    #[serde(default)]
    pub top_p: Option<f64>,
    #[serde(default)]
    pub stop: Option<Stop>,
    /// Pins sampled output: the same request with the same seed gives the same
    /// tokens (greedy decoding, temperature 0, needs no seed).
    #[serde(default)]
    pub seed: Option<i64>,
    #[serde(default)]
    pub n: Option<i64>,
    #[serde(default)]
    pub frequency_penalty: Option<f32>,
    #[serde(default)]
    pub presence_penalty: Option<f32>,
    /// `{"type": "text" | "json_object" | "json_schema", ...}`; kept as JSON
    /// so that a malformed one gets an error naming `response_format`.
    #[serde(default)]
    pub response_format: Option<Value>,
    /// Tool calling is not supported; these are read only to refuse it.
    #[serde(default)]
    pub tools: Option<Value>,
    #[serde(default)]
    pub tool_choice: Option<Value>,
    /// The deprecated forms of `tools` and `tool_choice`.
    #[serde(default)]
    pub functions: Option<Value>,
    #[serde(default)]
    pub function_call: Option<Value>,
    /// Return each output token's log-probability.
    #[serde(default)]
    pub logprobs: Option<bool>,
    /// How many of the most likely tokens to return at each position, 0 to
    /// 20; only with `logprobs: true`.
    #[serde(default)]
    pub top_logprobs: Option<i64>,
}

#[derive(Debug, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    #[serde(default)]
    pub content: Option<Content>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Debug, Deserialize)]
pub struct ContentPart {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub text: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

impl Stop {
    pub fn into_vec(self) -> Vec<String> {
        match self {
            Self::One(s) => vec![s],
            Self::Many(v) => v,
        }
    }
}

/// Token counts plus this worker's energy extension. Clients that do not
/// know `energy_joules` ignore it.
#[derive(Debug, Clone, Serialize)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub total_tokens: usize,
    /// Joules attributed to this request (see `docs/energy.md`).
    pub energy_joules: f64,
    /// `rapl` or `cpu_time`: how `energy_joules` was measured.
    pub energy_method: &'static str,
}

#[derive(Debug, Serialize)]
pub struct ChatCompletion<'a> {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub model: String,
    pub system_fingerprint: &'static str,
    pub choices: Vec<Choice<'a>>,
    pub usage: Usage,
}

#[derive(Debug, Serialize)]
pub struct Choice<'a> {
    pub index: u32,
    pub message: AssistantMessage,
    pub finish_reason: String,
    /// `null` unless the request asked for `logprobs`.
    pub logprobs: Option<Logprobs<'a>>,
}

/// A choice's `logprobs`: one entry per generated token, in order (in a
/// stream, the tokens of that chunk).
#[derive(Debug, Serialize)]
pub struct Logprobs<'a> {
    pub content: Vec<LogprobEntry<'a>>,
    /// OpenAI's log-probabilities of refusal tokens; this worker has none.
    pub refusal: Option<()>,
}

#[derive(Debug, Serialize)]
pub struct LogprobEntry<'a> {
    pub token: &'a str,
    /// Natural logarithm of the token's probability.
    pub logprob: f64,
    /// The token's exact bytes (part of a character when `token` shows
    /// U+FFFD).
    pub bytes: &'a [u8],
    /// The most likely tokens at this position, most likely first; as many
    /// as `top_logprobs` asked for.
    pub top_logprobs: Vec<TopLogprob<'a>>,
}

#[derive(Debug, Serialize)]
pub struct TopLogprob<'a> {
    pub token: &'a str,
    pub logprob: f64,
    pub bytes: &'a [u8],
}

impl<'a> Logprobs<'a> {
    pub fn of(tokens: &'a [TokenLogprobs]) -> Self {
        let top = |t: &'a TokenLogprob| TopLogprob {
            token: &t.text,
            logprob: t.logprob,
            bytes: &t.bytes,
        };
        Self {
            content: tokens
                .iter()
                .map(|t| LogprobEntry {
                    token: &t.chosen.text,
                    logprob: t.chosen.logprob,
                    bytes: &t.chosen.bytes,
                    top_logprobs: t.top.iter().map(top).collect(),
                })
                .collect(),
            refusal: None,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct AssistantMessage {
    pub role: &'static str,
    pub content: String,
}

#[derive(Debug, Serialize)]
pub struct ChatChunk<'a> {
    pub id: &'a str,
    pub object: &'static str,
    pub created: u64,
    pub model: &'a str,
    pub system_fingerprint: &'static str,
    pub choices: Vec<ChunkChoice<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
}

#[derive(Debug, Serialize)]
pub struct ChunkChoice<'a> {
    pub index: u32,
    pub delta: Delta<'a>,
    pub finish_reason: Option<&'a str>,
    pub logprobs: Option<Logprobs<'a>>,
}

#[derive(Debug, Serialize, Default)]
pub struct Delta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<&'a str>,
}

#[derive(Debug, Serialize)]
pub struct ModelList {
    pub object: &'static str,
    pub data: Vec<ModelCard>,
}

#[derive(Debug, Serialize)]
pub struct ModelCard {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub owned_by: &'static str,
    /// Extension: the model's context window, in tokens.
    pub context_length: usize,
}

pub const SYSTEM_FINGERPRINT: &str = concat!("edge-worker-", env!("CARGO_PKG_VERSION"));
