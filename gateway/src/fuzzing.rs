//! Entry points for the fuzz targets (`fuzz/`), kept in the library so the
//! targets and the corpus replay test (`tests/fuzz_corpus.rs`) run the very
//! same code. Each takes arbitrary bytes and must neither panic nor hang nor
//! allocate without bound; each also checks the properties it can.

use http::HeaderMap;

use crate::http::chat::request::{is_routing_field, ChatRequest};
use crate::http::chat::sse::SseReader;
use crate::privacy::{classify, request_texts, Class, RuleSet};

/// Request validation, then classification of what would be forwarded.
pub fn request(data: &[u8]) {
    let Ok(mut req) = ChatRequest::parse(data, &HeaderMap::new()) else {
        return;
    };
    if let Some(rules) = RuleSet::builtins() {
        let _ = classify(request_texts(&req.body), Class::Public, None, rules);
    }
    let sent = req.upstream_body("upstream-model");
    // What leaves is a JSON object whose fields are the client's, minus the
    // ones that steer a proxy.
    let sent: Result<serde_json::Map<String, serde_json::Value>, _> = serde_json::from_slice(&sent);
    assert!(
        sent.is_ok_and(|body| !body.keys().any(|k| is_routing_field(k))),
        "the upstream body is not a JSON object free of routing fields"
    );
}

/// The SSE reader, with the input cut into chunks at points taken from its
/// first bytes: the events read must not depend on where the stream was
/// split.
pub fn sse(data: &[u8]) {
    let Some((&cuts, stream)) = data.split_first() else {
        return;
    };
    let whole = read_events(&[stream]);
    let step = usize::from(cuts % 7) + 1;
    let chunks: Vec<&[u8]> = stream.chunks(step).collect();
    assert_eq!(read_events(&chunks), whole, "split every {step} bytes");
}

fn read_events(chunks: &[&[u8]]) -> Result<Vec<String>, ()> {
    let mut reader = SseReader::new(4096);
    let mut out = Vec::new();
    for chunk in chunks {
        reader.push(chunk, &mut out).map_err(|_| ())?;
    }
    Ok(out)
}

/// The privacy detectors on arbitrary text, normalisation included.
pub fn detectors(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Some(rules) = RuleSet::builtins() {
        let got = classify([text.as_ref()], Class::Public, None, rules);
        assert!(got.fired.iter().all(|f| !f.is_empty()));
    }
}
