//! The real model generates, deterministically when greedy, identically
//! whether streamed or not, with honest usage and energy figures.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
// Counters are whole numbers read from the exposition text as floats;
// the metrics test compares them exactly on purpose.
#![allow(clippy::float_cmp)]

use crate::common;

use common::{greedy, sse_chunks, sse_events, Worker, MODEL};
use serde_json::{json, Value};

#[tokio::test]
async fn greedy_generation_is_deterministic_and_streaming_matches() {
    let w = Worker::start(&[]).await;
    let body = greedy("Name three colours of the rainbow.", 24);

    let first: Value = w.chat(&body).await.json().await.unwrap();
    let second: Value = w.chat(&body).await.json().await.unwrap();
    let text = first["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(!text.trim().is_empty(), "empty completion: {first}");
    assert_eq!(
        text,
        second["choices"][0]["message"]["content"].as_str().unwrap()
    );
    assert_eq!(first["object"], "chat.completion");
    assert_eq!(first["model"], MODEL);
    assert_eq!(first["choices"][0]["message"]["role"], "assistant");

    // Usage: finish by length means exactly max_tokens were generated.
    let usage = &first["usage"];
    let finish = first["choices"][0]["finish_reason"].as_str().unwrap();
    let completion = usage["completion_tokens"].as_u64().unwrap();
    if finish == "length" {
        assert_eq!(completion, 24);
    } else {
        assert_eq!(finish, "stop");
        assert!(completion <= 24);
    }
    assert_eq!(
        usage["total_tokens"].as_u64().unwrap(),
        usage["prompt_tokens"].as_u64().unwrap() + completion
    );
    assert!(usage["energy_joules"].as_f64().unwrap() > 0.0, "{usage}");

    // Streaming with usage: chunks concatenate to the same text.
    let mut stream_body = body.clone();
    stream_body["stream"] = json!(true);
    stream_body["stream_options"] = json!({"include_usage": true});
    let response = w.chat(&stream_body).await;
    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let (chunks, streamed) = sse_chunks(response).await;
    assert_eq!(streamed, text);
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let finish_chunk = &chunks[chunks.len() - 2];
    assert_eq!(finish_chunk["choices"][0]["finish_reason"], finish);
    let usage_chunk = chunks.last().unwrap();
    assert_eq!(usage_chunk["choices"].as_array().unwrap().len(), 0);
    assert_eq!(
        usage_chunk["usage"]["completion_tokens"],
        usage["completion_tokens"]
    );
    assert_eq!(
        usage_chunk["usage"]["prompt_tokens"],
        usage["prompt_tokens"]
    );
    // A streamed answer carries its joules too, measured as the whole one's.
    assert!(
        usage_chunk["usage"]["energy_joules"].as_f64().unwrap() > 0.0,
        "{usage_chunk}"
    );
    assert_eq!(
        usage_chunk["usage"]["energy_method"],
        usage["energy_method"]
    );

    // Without include_usage no usage chunk is sent.
    stream_body["stream_options"] = json!({"include_usage": false});
    let events = sse_events(w.chat(&stream_body).await).await;
    assert!(events.iter().all(|e| !e.contains("\"usage\"")));
}

#[tokio::test]
async fn stop_sequences_and_max_tokens_are_honoured() {
    let w = Worker::start(&[]).await;
    let r: Value = w
        .chat(&greedy("Count from 1 to 20.", 5))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(r["usage"]["completion_tokens"], 5);
    assert_eq!(r["choices"][0]["finish_reason"], "length");

    // Learn the greedy text, then stop on a word inside it.
    let full: Value = w
        .chat(&greedy("Count from 1 to 20.", 40))
        .await
        .json()
        .await
        .unwrap();
    let text = full["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_string();
    let word = text
        .split_whitespace()
        .nth(3)
        .expect("at least four words")
        .to_string();
    let mut body = greedy("Count from 1 to 20.", 40);
    body["stop"] = json!([word.clone()]);
    let stopped: Value = w.chat(&body).await.json().await.unwrap();
    let content = stopped["choices"][0]["message"]["content"]
        .as_str()
        .unwrap();
    assert_eq!(stopped["choices"][0]["finish_reason"], "stop", "{stopped}");
    assert!(
        content.len() < text.len(),
        "stop `{word}` did not shorten `{text}` → `{content}`"
    );
    assert!(
        !content.contains(&word),
        "`{content}` still contains the stop `{word}`"
    );
}

/// `max_tokens` that ends inside a character (this model spells a kana in
/// two byte tokens): the answer is exactly `max_tokens` tokens, finished by
/// length, with the incomplete character left out, streamed or not. It used
/// to be a 500 on odd counts, and two tokens for `max_tokens: 1`.
#[tokio::test]
async fn max_tokens_inside_a_character_is_honoured() {
    let w = Worker::start(&[]).await;
    let prompt = "Write the Japanese word for cat in kanji, nothing else: 猫. Repeat it: ";
    let full: Value = w.chat(&greedy(prompt, 8)).await.json().await.unwrap();
    let text = full["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(
        text.chars().any(|c| c.len_utf8() > 1),
        "the greedy answer has no multi-byte character to cut: `{text}`"
    );
    for max_tokens in 1..=5 {
        let r = w.chat(&greedy(prompt, max_tokens)).await;
        assert_eq!(r.status(), 200, "max_tokens {max_tokens}");
        let r: Value = r.json().await.unwrap();
        assert_eq!(r["usage"]["completion_tokens"], max_tokens, "{r}");
        assert_eq!(r["choices"][0]["finish_reason"], "length", "{r}");
        let content = r["choices"][0]["message"]["content"].as_str().unwrap();
        assert!(
            text.starts_with(content) && !content.contains('\u{fffd}'),
            "max_tokens {max_tokens}: `{content}` is not a clean prefix of `{text}`"
        );

        let mut body = greedy(prompt, max_tokens);
        body["stream"] = json!(true);
        body["stream_options"] = json!({"include_usage": true});
        let (chunks, streamed) = sse_chunks(w.chat(&body).await).await;
        assert_eq!(streamed, content, "max_tokens {max_tokens}: {chunks:?}");
        let usage = &chunks.last().unwrap()["usage"];
        assert_eq!(usage["completion_tokens"], max_tokens, "{chunks:?}");
    }
}

/// A prompt that shares a long prefix (a system prompt) with an earlier one
/// is prefilled from the prefix cache; its greedy answer must be the one a
/// worker without the cache computes from scratch.
#[tokio::test]
async fn prefix_cache_hits_answer_as_a_cold_prefill_does() {
    let system = "You answer for a bakery. Be polite, answer briefly, and mention \
                  fresh bread when it fits. Opening hours are seven to six.";
    let body = |question: &str| {
        let mut b = greedy(question, 24);
        b["messages"] = json!([
            {"role": "system", "content": system},
            {"role": "user", "content": question},
        ]);
        b
    };
    let content = |v: Value| {
        v["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let cached = Worker::start(&[]).await;
    let cold = Worker::start(&["--prefix-cache-sequences", "0"]).await;
    // Fills the cache with the system prompt's prefix.
    assert_eq!(cached.chat(&body("What do you sell?")).await.status(), 200);
    for question in ["What do you sell?", "When do you open?"] {
        let hit = content(cached.chat(&body(question)).await.json().await.unwrap());
        let fresh = content(cold.chat(&body(question)).await.json().await.unwrap());
        assert!(!hit.is_empty());
        assert_eq!(hit, fresh, "{question}");
    }
}

/// A follow-up turn repeats the earlier conversation token for token, up to
/// the answer's last token, which was sampled but never run through the
/// model: the cache holds one position fewer than the conversation's tokens,
/// and a hit must not read the position it lacks.
#[tokio::test]
async fn a_follow_up_turn_answers_as_a_cold_prefill_does() {
    let cached = Worker::start(&[]).await;
    let cold = Worker::start(&["--prefix-cache-sequences", "0"]).await;
    let question = "Name a fruit that is yellow.";
    let answer = cached.content(&greedy(question, 12)).await;
    let mut follow_up = greedy("", 16);
    follow_up["messages"] = json!([
        {"role": "user", "content": question},
        {"role": "assistant", "content": answer},
        {"role": "user", "content": "And one that is red?"},
    ]);
    let hit = cached.content(&follow_up).await;
    assert!(!hit.is_empty());
    assert_eq!(hit, cold.content(&follow_up).await);
}

/// With a seed, sampled output (temperature 1) is reproducible: the same
/// request with the same seed gives the same text, alone or batched with
/// other sampled requests, and other seeds give other text.
#[tokio::test]
async fn a_seed_pins_sampled_output() {
    let w = Worker::start(&[]).await;
    let sampled = |seed: i64| {
        let mut b = greedy("Invent a name for a cat and say why.", 24);
        b["temperature"] = json!(1.0);
        b["seed"] = json!(seed);
        b
    };
    let first = w.content(&sampled(7)).await;
    assert_eq!(w.content(&sampled(7)).await, first);

    let bodies = [7, -3, 11, 12].map(sampled);
    let mut texts = futures::future::join_all(bodies.iter().map(|b| w.content(b))).await;
    let others = texts.split_off(1);
    let beside = texts.remove(0);
    assert_eq!(beside, first, "batched with other requests");
    assert!(
        others.iter().any(|text| *text != first),
        "three other seeds all gave {first:?}"
    );
}

#[tokio::test]
async fn models_metrics_and_load_report() {
    let w = Worker::start(&[]).await;
    let models: Value = w
        .client
        .get(w.url("/v1/models"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(models["object"], "list");
    assert_eq!(models["data"][0]["id"], MODEL);

    let resp = w.chat(&greedy("Hello!", 8)).await;
    assert_eq!(resp.status(), 200);
    let joules: f64 = resp.headers()["x-energy-joules"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(joules > 0.0);
    // Which meter depends on the host (tests/energy.rs runs both); the
    // answer names the one the load report names.
    let method = resp.headers()["x-energy-method"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(resp.headers().contains_key("x-request-id"));

    let load = w.load().await;
    assert_eq!(load["energy_method"], method);
    assert_eq!(load["model"], MODEL);
    assert_eq!(load["quantization"], "Q4_1");
    assert_eq!(load["context_length"], 8192);
    assert_eq!(load["active_sequences"], 0);
    assert_eq!(load["ready"], true);
    for key in [
        "prefill_tokens_per_s",
        "decode_tokens_per_s",
        "joules_per_prompt_token",
        "joules_per_output_token",
    ] {
        assert!(load[key].as_f64().unwrap() > 0.0, "{key} in {load}");
    }

    // Metrics count what was served: after three more known requests
    // (two answers, one stream), each counter moved by exactly what the
    // answers reported, and the histograms counted each request.
    let before = Metrics::read(&w).await;
    let mut prompt = 0.0;
    let mut completion = 0.0;
    let mut millijoules = 0.0;
    for (i, stream) in [(0, false), (1, false), (2, true)] {
        let mut body = greedy(&format!("Name a colour, please ({i})."), 6);
        body["stream"] = json!(stream);
        if stream {
            body["stream_options"] = json!({"include_usage": true});
        }
        let resp = w.chat(&body).await;
        assert_eq!(resp.status(), 200);
        let usage = if stream {
            let events = sse_events(resp).await;
            let last: Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
            last["usage"].clone()
        } else {
            resp.json::<Value>().await.unwrap()["usage"].clone()
        };
        prompt += usage["prompt_tokens"].as_f64().unwrap();
        completion += usage["completion_tokens"].as_f64().unwrap();
        millijoules += (usage["energy_joules"].as_f64().unwrap() * 1000.0).round();
    }
    let after = Metrics::read(&w).await;
    let moved = |name: &str| after.get(name) - before.get(name);
    assert_eq!(
        moved("edge_requests_total{path=\"/v1/chat/completions\",status=\"200\"}"),
        3.0
    );
    assert_eq!(moved("edge_generations_total{outcome=\"completed\"}"), 3.0);
    assert_eq!(moved("edge_prompt_tokens_total"), prompt);
    assert_eq!(moved("edge_completion_tokens_total"), completion);
    assert_eq!(moved("edge_ttft_seconds_count"), 3.0);
    assert_eq!(moved("edge_request_joules_count"), 3.0);
    // One decode interval per piece of text after the first of each
    // answer: at most one per token (a final token may carry no text).
    let intervals = moved("edge_decode_token_seconds_count");
    assert!(
        intervals >= 3.0 && intervals <= completion - 3.0,
        "{intervals} decode intervals for {completion} tokens in 3 answers"
    );
    // Rounded per request, as the counter is: within a millijoule each.
    assert!(
        (moved("edge_energy_millijoules_total") - millijoules).abs() <= 3.0,
        "{} vs {millijoules}",
        moved("edge_energy_millijoules_total")
    );
    assert_eq!(after.get("edge_active_sequences"), 0.0);
    assert_eq!(after.get("edge_waiting_sequences"), 0.0);
    assert!(after.get("edge_decode_tokens_per_second") > 0.0);
}

/// One scrape of `/metrics`: sample name (with labels) → value.
struct Metrics(std::collections::HashMap<String, f64>);

impl Metrics {
    async fn read(w: &Worker) -> Metrics {
        let text = w.metrics().await;
        Metrics(
            text.lines()
                .filter(|l| !l.starts_with('#'))
                .filter_map(|l| {
                    let (name, value) = l.rsplit_once(' ')?;
                    Some((name.to_owned(), value.parse().ok()?))
                })
                .collect(),
        )
    }

    /// A sample's value; 0 for one not exported yet (a counter at zero).
    fn get(&self, name: &str) -> f64 {
        self.0.get(name).copied().unwrap_or(0.0)
    }
}
