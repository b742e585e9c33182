//! Response bodies in `OpenAI`'s wire format, built with as few allocations as
//! the format allows: a completion is one `serde_json::to_vec` of borrowed
//! fields, and a whole SSE stream is one contiguous buffer whose event
//! boundaries are remembered, so pacing it later only slices that buffer.

use bytes::{BufMut, Bytes, BytesMut};
use serde::Serialize;

use super::text::Filler;

/// What every body of one answer shares.
pub struct Answer<'a> {
    /// Response id, `chatcmpl-…`.
    pub id: &'a str,
    /// Unix seconds.
    pub created: u64,
    /// The model name echoed from the request.
    pub model: &'a str,
    /// Prompt tokens counted from the request.
    pub prompt_tokens: u32,
    /// Tokens in the answer.
    pub completion_tokens: u32,
    /// `"stop"` or `"length"`.
    pub finish_reason: &'static str,
    /// `None` unless the request asked for `logprobs`; then how many
    /// `top_logprobs` each token lists.
    pub logprobs: Option<u32>,
}

/// Every token's log-probability in the mock's answers; the alternatives
/// listed in `top_logprobs` (the next filler words) are less likely by
/// [`TOP_LOGPROB_STEP`] each.
pub const TOKEN_LOGPROB: f64 = -0.1;
/// See [`TOKEN_LOGPROB`].
pub const TOP_LOGPROB_STEP: f64 = 3.0;

#[derive(Serialize)]
struct Logprobs {
    content: Vec<TokenEntry>,
    refusal: Option<()>,
}

#[derive(Serialize)]
struct TokenEntry {
    token: &'static str,
    logprob: f64,
    bytes: &'static [u8],
    top_logprobs: Vec<TopLogprob>,
}

#[derive(Serialize)]
struct TopLogprob {
    token: &'static str,
    logprob: f64,
    bytes: &'static [u8],
}

/// Token `i`'s entry, with `top` alternatives: itself first.
fn entry(i: u32, top: u32) -> TokenEntry {
    let filler = Filler::get();
    let token = filler.piece(i);
    TokenEntry {
        token,
        logprob: TOKEN_LOGPROB,
        bytes: token.as_bytes(),
        top_logprobs: (0..top)
            .map(|k| {
                let token = filler.piece(i.saturating_add(k));
                TopLogprob {
                    token,
                    logprob: f64::from(k).mul_add(-TOP_LOGPROB_STEP, TOKEN_LOGPROB),
                    bytes: token.as_bytes(),
                }
            })
            .collect(),
    }
}

// The field names are the wire format's.
#[allow(clippy::struct_field_names)]
#[derive(Serialize)]
struct Usage {
    prompt_tokens: u32,
    completion_tokens: u32,
    total_tokens: u32,
}

impl Answer<'_> {
    fn usage(&self) -> Usage {
        Usage {
            prompt_tokens: self.prompt_tokens,
            completion_tokens: self.completion_tokens,
            total_tokens: self.prompt_tokens.saturating_add(self.completion_tokens),
        }
    }
}

#[derive(Serialize)]
struct Completion<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: [Choice<'a>; 1],
    usage: Usage,
    system_fingerprint: Option<&'static str>,
}

#[derive(Serialize)]
struct Choice<'a> {
    index: u32,
    message: Message<'a>,
    logprobs: Option<Logprobs>,
    finish_reason: &'static str,
}

#[derive(Serialize)]
struct Message<'a> {
    role: &'static str,
    content: &'a str,
    refusal: Option<()>,
}

/// The JSON body of a non-streaming chat completion.
pub fn completion(answer: &Answer<'_>) -> Result<Vec<u8>, serde_json::Error> {
    serde_json::to_vec(&Completion {
        id: answer.id,
        object: "chat.completion",
        created: answer.created,
        model: answer.model,
        choices: [Choice {
            index: 0,
            message: Message {
                role: "assistant",
                content: Filler::get().prefix(answer.completion_tokens),
                refusal: None,
            },
            logprobs: answer.logprobs.map(|top| Logprobs {
                content: (0..answer.completion_tokens)
                    .map(|i| entry(i, top))
                    .collect(),
                refusal: None,
            }),
            finish_reason: answer.finish_reason,
        }],
        usage: answer.usage(),
        system_fingerprint: None,
    })
}

/// A whole SSE answer: `data: …\n\n` events in one buffer.
pub struct SseBody {
    /// Every event, back to back.
    pub bytes: Bytes,
    /// Byte offset where each event ends.
    pub ends: Vec<usize>,
}

const ROLE_CHOICE: &[u8] =
    br#"{"index":0,"delta":{"role":"assistant","content":"","refusal":null},"logprobs":null,"finish_reason":null}"#;
const CONTENT_OPEN: &[u8] = br#"{"index":0,"delta":{"content":""#;
const CONTENT_CLOSE: &[u8] = br#""},"logprobs":null,"finish_reason":null}"#;
const LOGPROBS_OPEN: &[u8] = br#""},"logprobs":{"content":["#;
const LOGPROBS_CLOSE: &[u8] = br#"],"refusal":null},"finish_reason":null}"#;

/// Builds the stream `OpenAI` sends: a role chunk, one chunk per token, a chunk
/// with the finish reason, with `include_usage` a chunk with empty `choices`
/// and the usage (every earlier chunk then carries `"usage":null`), and
/// `data: [DONE]`.
pub fn sse(answer: &Answer<'_>, include_usage: bool) -> Result<SseBody, serde_json::Error> {
    let mut head = Vec::with_capacity(160);
    head.extend_from_slice(br#"data: {"id":"#);
    serde_json::to_writer(&mut head, answer.id)?;
    head.extend_from_slice(br#","object":"chat.completion.chunk","created":"#);
    head.extend_from_slice(answer.created.to_string().as_bytes());
    head.extend_from_slice(br#","model":"#);
    serde_json::to_writer(&mut head, answer.model)?;
    head.extend_from_slice(br#","system_fingerprint":null,"choices":["#);
    let tail: &[u8] = if include_usage {
        b"],\"usage\":null}\n\n"
    } else {
        b"]}\n\n"
    };

    let n = answer.completion_tokens;
    let events = n as usize + 3 + usize::from(include_usage);
    let mut buf = BytesMut::with_capacity(events * (head.len() + 64));
    let mut ends = Vec::with_capacity(events);
    let mut event = |buf: &mut BytesMut, choice: &[&[u8]]| {
        buf.put_slice(&head);
        for part in choice {
            buf.put_slice(part);
        }
        buf.put_slice(tail);
        ends.push(buf.len());
    };

    event(&mut buf, &[ROLE_CHOICE]);
    let filler = Filler::get();
    for i in 0..n {
        // Filler words are plain ASCII letters, so they need no JSON escaping.
        let piece = filler.piece(i).as_bytes();
        match answer.logprobs {
            None => event(&mut buf, &[CONTENT_OPEN, piece, CONTENT_CLOSE]),
            Some(top) => {
                let entry = serde_json::to_vec(&entry(i, top))?;
                event(
                    &mut buf,
                    &[CONTENT_OPEN, piece, LOGPROBS_OPEN, &entry, LOGPROBS_CLOSE],
                );
            }
        }
    }
    let finish = format!(
        r#"{{"index":0,"delta":{{}},"logprobs":null,"finish_reason":"{}"}}"#,
        answer.finish_reason
    );
    event(&mut buf, &[finish.as_bytes()]);
    if include_usage {
        buf.put_slice(&head);
        buf.put_slice(b"],\"usage\":");
        buf.put_slice(&serde_json::to_vec(&answer.usage())?);
        buf.put_slice(b"}\n\n");
        ends.push(buf.len());
    }
    buf.put_slice(b"data: [DONE]\n\n");
    ends.push(buf.len());
    Ok(SseBody {
        bytes: buf.freeze(),
        ends,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn answer(n: u32) -> Answer<'static> {
        Answer {
            id: "chatcmpl-1",
            created: 7,
            model: "m\"odel",
            prompt_tokens: 3,
            completion_tokens: n,
            finish_reason: "length",
            logprobs: None,
        }
    }

    fn events(body: &SseBody) -> Vec<&str> {
        let mut start = 0;
        body.ends
            .iter()
            .map(|&end| {
                let event = std::str::from_utf8(&body.bytes[start..end]).unwrap();
                start = end;
                event
            })
            .collect()
    }

    #[test]
    fn sse_events_are_json_and_end_with_done() {
        let body = sse(&answer(2), true).unwrap();
        let events = events(&body);
        assert_eq!(events.len(), 2 + 3 + 1);
        assert_eq!(*events.last().unwrap(), "data: [DONE]\n\n");
        let mut text = String::new();
        for event in &events[..events.len() - 1] {
            let json = event
                .strip_prefix("data: ")
                .unwrap()
                .strip_suffix("\n\n")
                .unwrap();
            let value: serde_json::Value = serde_json::from_str(json).unwrap();
            assert_eq!(value["model"], "m\"odel");
            if let Some(piece) = value["choices"][0]["delta"]["content"].as_str() {
                text.push_str(piece);
            }
        }
        assert_eq!(text, Filler::get().prefix(2));
        let usage: serde_json::Value = serde_json::from_str(
            events[events.len() - 2]
                .trim_start_matches("data: ")
                .trim_end(),
        )
        .unwrap();
        assert_eq!(usage["choices"], serde_json::json!([]));
        assert_eq!(usage["usage"]["total_tokens"], 5);
    }

    #[test]
    fn logprobs_come_one_per_token_when_asked_for() {
        let asked = Answer {
            logprobs: Some(2),
            ..answer(3)
        };
        let body = sse(&asked, false).unwrap();
        let mut tokens = 0;
        for event in &events(&body)[..body.ends.len() - 1] {
            let json = event.trim_start_matches("data: ").trim_end();
            let value: serde_json::Value = serde_json::from_str(json).unwrap();
            let choice = &value["choices"][0];
            let Some(piece) = choice["delta"]["content"]
                .as_str()
                .filter(|p| !p.is_empty())
            else {
                assert_eq!(choice["logprobs"], serde_json::Value::Null);
                continue;
            };
            let entry = &choice["logprobs"]["content"][0];
            assert_eq!(entry["token"], piece);
            assert_eq!(entry["logprob"], TOKEN_LOGPROB);
            assert_eq!(entry["top_logprobs"][0]["token"], piece);
            assert_eq!(
                entry["top_logprobs"][1]["logprob"],
                TOKEN_LOGPROB - TOP_LOGPROB_STEP
            );
            tokens += 1;
        }
        assert_eq!(tokens, 3);

        let whole: serde_json::Value =
            serde_json::from_slice(&completion(&asked).unwrap()).unwrap();
        let content = whole["choices"][0]["logprobs"]["content"]
            .as_array()
            .unwrap();
        assert_eq!(content.len(), 3);
        assert_eq!(content[2]["bytes"], serde_json::json!(b" says".to_vec()));
        let plain: serde_json::Value =
            serde_json::from_slice(&completion(&answer(3)).unwrap()).unwrap();
        assert_eq!(plain["choices"][0]["logprobs"], serde_json::Value::Null);
    }

    #[test]
    fn completion_carries_usage() {
        let body: serde_json::Value =
            serde_json::from_slice(&completion(&answer(4)).unwrap()).unwrap();
        assert_eq!(body["object"], "chat.completion");
        assert_eq!(body["choices"][0]["finish_reason"], "length");
        assert_eq!(body["usage"]["completion_tokens"], 4);
        assert_eq!(body["usage"]["total_tokens"], 7);
    }
}
