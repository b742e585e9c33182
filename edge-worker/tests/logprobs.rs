//! Token log-probabilities in OpenAI's shape: one entry per generated token,
//! natural logarithms of the model's own distribution (so greedy decoding
//! picks the top entry), the same streamed or not, nothing when not asked
//! for, and OpenAI's 400s for a bad `top_logprobs`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
// Greedy decoding picks the most likely token: its logprob is the top
// entry's, the same number, compared exactly on purpose.
#![allow(clippy::float_cmp)]

use crate::common;

use common::{greedy, sse_events, Worker};
use serde_json::{json, Value};

/// The chat template's end of turn: generated, counted in the usage, and
/// reported like any other token, but never part of the text.
const END_OF_TURN: &str = "<|im_end|>";

fn with_logprobs(mut body: Value, top: u32) -> Value {
    body["logprobs"] = json!(true);
    body["top_logprobs"] = json!(top);
    body
}

/// A token's text and log-probability, checked to be OpenAI-shaped: a
/// string, a finite number at most 0, and the token's bytes.
fn token(entry: &Value) -> (String, f64, Vec<u8>) {
    let text = entry["token"].as_str().unwrap_or_else(|| panic!("{entry}"));
    let logprob = entry["logprob"]
        .as_f64()
        .unwrap_or_else(|| panic!("logprob not a number: {entry}"));
    assert!(logprob.is_finite() && logprob <= 0.0, "{entry}");
    let bytes: Vec<u8> = entry["bytes"]
        .as_array()
        .unwrap_or_else(|| panic!("{entry}"))
        .iter()
        .map(|b| u8::try_from(b.as_u64().unwrap()).unwrap())
        .collect();
    if !text.contains('\u{fffd}') {
        assert_eq!(text.as_bytes(), bytes, "{entry}");
    }
    (text.to_owned(), logprob, bytes)
}

/// Checks every entry of a greedy answer and returns them as (token,
/// logprob, bytes).
fn greedy_entries(content: &[Value], top: usize) -> Vec<(String, f64, Vec<u8>)> {
    content
        .iter()
        .map(|entry| {
            let chosen = token(entry);
            let alternatives: Vec<_> = entry["top_logprobs"]
                .as_array()
                .unwrap_or_else(|| panic!("{entry}"))
                .iter()
                .map(token)
                .collect();
            assert_eq!(alternatives.len(), top, "{entry}");
            assert!(
                alternatives.windows(2).all(|w| w[0].1 >= w[1].1),
                "top_logprobs not most likely first: {entry}"
            );
            let probability: f64 = alternatives.iter().map(|t| t.1.exp()).sum();
            assert!(probability <= 1.0 + 1e-4, "{entry}");
            // Greedy: the chosen token is the most likely one.
            assert_eq!(chosen.0, alternatives[0].0, "{entry}");
            assert_eq!(chosen.1, alternatives[0].1, "{entry}");
            chosen
        })
        .collect()
}

/// The entries' bytes joined, less the end of turn, are the answer's text
/// (which starts at its first non-space character), but for the start of a
/// character that `max_tokens` cut off, which the text leaves out.
fn assert_spells(entries: &[(String, f64, Vec<u8>)], finish: &str, text: &str) {
    let mut tokens = entries;
    if finish == "stop" {
        let (last, rest) = entries.split_last().unwrap();
        assert_eq!(last.0, END_OF_TURN);
        tokens = rest;
    }
    let bytes: Vec<u8> = tokens.iter().flat_map(|t| t.2.clone()).collect();
    let whole = match std::str::from_utf8(&bytes) {
        Ok(joined) => joined,
        Err(e) => {
            assert_eq!(finish, "length", "{e}: {bytes:?}");
            assert!(e.error_len().is_none(), "{e}: {bytes:?}");
            std::str::from_utf8(&bytes[..e.valid_up_to()]).unwrap()
        }
    };
    assert_eq!(whole.trim_start(), text);
}

#[tokio::test]
async fn one_logprob_per_token_with_the_greedy_choice_on_top() {
    let w = Worker::start(&[]).await;
    // One answer cut by max_tokens, one that ends its turn (whose last
    // token adds no text).
    greedy_answer(&w, "Name three colours of the rainbow.", 24, "length").await;
    greedy_answer(&w, "Hi", 40, "stop").await;
}

async fn greedy_answer(w: &Worker, prompt: &str, max_tokens: u32, finish: &str) {
    let plain = greedy(prompt, max_tokens);
    let body = with_logprobs(plain.clone(), 2);

    let r: Value = w.chat(&body).await.json().await.unwrap();
    let choice = &r["choices"][0];
    let text = choice["message"]["content"].as_str().unwrap();
    assert_eq!(choice["finish_reason"], finish, "{r}");
    assert!(!text.is_empty(), "{r}");
    assert_eq!(choice["logprobs"]["refusal"], Value::Null, "{r}");
    let content = choice["logprobs"]["content"].as_array().unwrap();
    assert_eq!(
        content.len() as u64,
        r["usage"]["completion_tokens"].as_u64().unwrap(),
        "{r}"
    );
    let entries = greedy_entries(content, 2);
    assert_spells(&entries, finish, text);
    // Real probabilities of the model, not of the greedy choice (which
    // would be certain): the answer was not all certain.
    assert!(entries.iter().any(|t| t.1 < -0.01), "{r}");

    // Asking changes nothing about the answer.
    let without: Value = w.chat(&plain).await.json().await.unwrap();
    assert_eq!(without["choices"][0]["message"]["content"], text);
    assert_eq!(
        without["usage"]["completion_tokens"],
        r["usage"]["completion_tokens"]
    );

    // Streamed: each chunk carries its own tokens' entries, and together
    // they are the whole answer's.
    let mut stream_body = body.clone();
    stream_body["stream"] = json!(true);
    stream_body["stream_options"] = json!({"include_usage": true});
    let events = sse_events(w.chat(&stream_body).await).await;
    assert_eq!(events.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    let mut streamed_text = String::new();
    let mut streamed = Vec::new();
    for chunk in &chunks {
        let Some(choice) = chunk["choices"].get(0) else {
            continue;
        };
        if choice["finish_reason"].is_string() {
            assert_eq!(choice["logprobs"], Value::Null, "{chunk}");
            continue;
        }
        let entries = choice["logprobs"]["content"].as_array().unwrap();
        assert!(!entries.is_empty(), "a chunk without its tokens: {chunk}");
        streamed.extend(entries.iter().cloned());
        streamed_text.push_str(choice["delta"]["content"].as_str().unwrap_or_default());
    }
    let usage = &chunks.last().unwrap()["usage"];
    assert_eq!(
        streamed.len() as u64,
        usage["completion_tokens"].as_u64().unwrap()
    );
    assert_eq!(streamed_text, text);
    let streamed = greedy_entries(&streamed, 2);
    assert_spells(&streamed, finish, &streamed_text);
    for (s, whole) in streamed.iter().zip(&entries) {
        assert_eq!(s.0, whole.0);
        assert!((s.1 - whole.1).abs() < 1e-3, "{} vs {}", s.1, whole.1);
    }
}

/// A character split over several tokens (Japanese here) is held back
/// until it is whole, but each of its tokens still gets an entry, and their
/// bytes add up to the character; an answer cut in the middle of one still
/// reports every token.
#[tokio::test]
async fn tokens_that_hold_part_of_a_character_keep_their_entries() {
    let w = Worker::start(&[]).await;
    // Six tokens end inside the fourth character (the bundled model's
    // greedy answer).
    let body = with_logprobs(greedy("Write the word hello in Japanese.", 6), 0);
    let r: Value = w.chat(&body).await.json().await.unwrap();
    let choice = &r["choices"][0];
    let text = choice["message"]["content"].as_str().unwrap();
    let content = choice["logprobs"]["content"].as_array().unwrap();
    let entries: Vec<_> = content.iter().map(token).collect();
    assert!(
        entries
            .iter()
            .any(|t| String::from_utf8(t.2.clone()).is_err()),
        "no token held part of a character in {r}"
    );
    assert_eq!(
        entries.len() as u64,
        r["usage"]["completion_tokens"].as_u64().unwrap()
    );
    assert!(content.iter().all(|e| e["top_logprobs"] == json!([])));
    assert_spells(&entries, choice["finish_reason"].as_str().unwrap(), text);

    let mut stream_body = body.clone();
    stream_body["stream"] = json!(true);
    stream_body["stream_options"] = json!({"include_usage": true});
    let events = sse_events(w.chat(&stream_body).await).await;
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    let streamed: Vec<Value> = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["logprobs"]["content"].as_array())
        .flatten()
        .cloned()
        .collect();
    assert_eq!(streamed.len(), entries.len());
    let usage = &chunks.last().unwrap()["usage"];
    assert_eq!(
        streamed.len() as u64,
        usage["completion_tokens"].as_u64().unwrap()
    );
    let streamed_text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(streamed_text, text);
}

/// A grammar-constrained answer rules most tokens out at some positions;
/// their log-probabilities are reported as OpenAI does, -9999, never as a
/// JSON null or an infinity.
#[tokio::test]
async fn constrained_answers_report_numbers_only() {
    let w = Worker::start(&[]).await;
    let mut body = with_logprobs(greedy("Give me a JSON object about a cat.", 24), 5);
    body["response_format"] = json!({"type": "json_object"});
    let r: Value = w.chat(&body).await.json().await.unwrap();
    let content = r["choices"][0]["logprobs"]["content"].as_array().unwrap();
    assert_eq!(
        content.len() as u64,
        r["usage"]["completion_tokens"].as_u64().unwrap()
    );
    for entry in content {
        token(entry);
        for alternative in entry["top_logprobs"].as_array().unwrap() {
            let (_, logprob, _) = token(alternative);
            assert!(logprob >= -9999.0, "{entry}");
        }
    }
}

#[tokio::test]
async fn logprobs_are_null_unless_asked_for() {
    let w = Worker::start(&[]).await;
    let mut body = greedy("Say hello.", 6);
    body["logprobs"] = json!(false);
    let r: Value = w.chat(&body).await.json().await.unwrap();
    let choice = r["choices"][0].as_object().unwrap();
    assert_eq!(choice["logprobs"], Value::Null, "{r}");

    body["stream"] = json!(true);
    let events = sse_events(w.chat(&body).await).await;
    for event in &events[..events.len() - 1] {
        let chunk: Value = serde_json::from_str(event).unwrap();
        let choice = chunk["choices"][0].as_object().unwrap();
        assert_eq!(choice["logprobs"], Value::Null, "{chunk}");
    }
}

#[tokio::test]
async fn a_bad_top_logprobs_is_a_400_naming_it() {
    let w = Worker::start(&[]).await;
    for (logprobs, top) in [
        (json!(null), json!(2)),
        (json!(false), json!(2)),
        (json!(false), json!(0)),
        (json!(true), json!(21)),
        (json!(true), json!(-1)),
    ] {
        let mut body = greedy("Say hello.", 4);
        body["logprobs"] = logprobs.clone();
        body["top_logprobs"] = top.clone();
        let response = w.chat(&body).await;
        assert_eq!(response.status(), 400, "logprobs {logprobs}, top {top}");
        let error: Value = response.json().await.unwrap();
        assert_eq!(error["error"]["type"], "invalid_request_error", "{error}");
        assert_eq!(error["error"]["param"], "top_logprobs", "{error}");
        assert_eq!(error["error"]["code"], "invalid_value", "{error}");
    }
    // The edges of the range are fine.
    for top in [0, 20] {
        let response = w.chat(&with_logprobs(greedy("Say hello.", 2), top)).await;
        assert_eq!(response.status(), 200, "top_logprobs {top}");
    }
}
