//! Prefix affinity: which edge workers recently served a leading prompt.
//!
//! An edge worker keeps the keys and values of its recent sequences in a
//! prefix cache and prefills a prompt that starts the same way several
//! times faster. Routing cannot see those caches, so the gateway remembers
//! where it sent each leading prompt (the system and developer messages at
//! the start of `messages`, when they are long enough to matter) and tells
//! routing which candidates probably hold it. Routing weighs that against
//! load: a cached prefix only shortens the predicted prefill, so a busy
//! worker still loses to an idle one when its queue costs more than the
//! prefill saves.
//!
//! Each gateway learns its own map; entries expire after [`TTL`] (the
//! worker's cache is small and turns over), and the map is bounded. Where a
//! worker reports its cache's capacity (sequences and tokens), a prefix also
//! counts as held only while the requests this gateway sent the worker since
//! then would not have pushed it out: the cache keeps every finished
//! sequence, least recently used out first. Other gateways' requests push
//! entries out too, unseen here, so with several gateways this still
//! overestimates what a worker holds.

use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde_json::{Map, Value};

use crate::routing::PrefixKey;
use wire::PrefixCache;

/// How long a worker is assumed to keep a prefix it served.
pub const TTL: Duration = Duration::from_secs(120);

/// Prefixes remembered at most.
const CAPACITY: usize = 4_096;

/// Workers remembered per prefix.
const WORKERS_PER_PREFIX: usize = 4;

/// Leading prompts shorter than this (estimated tokens) are not worth
/// steering: their prefill is a few milliseconds anyway.
pub const MIN_PREFIX_TOKENS: u32 = 32;

/// Characters per token assumed for the estimate, as for the prompt.
const CHARS_PER_TOKEN: usize = 4;

/// Requests remembered per worker, newest first: more than any worker's
/// prefix cache holds.
const RECENT_PER_WORKER: usize = 256;

/// Workers whose recent requests are remembered at most. Workers come and
/// go under new ids (a restarted pod registers under its new name), so the
/// map is bounded like the prefixes': those sent nothing within [`TTL`]
/// go first, since no prefix they served is still counted as held.
const WORKERS: usize = 1_024;

/// Prefix hash → the workers that served it, and when; and per worker the
/// requests it was sent, newest first.
#[derive(Default)]
pub struct Affinity {
    seen: Mutex<HashMap<u64, Vec<(String, Instant)>>>,
    recent: Mutex<HashMap<String, Recent>>,
}

/// What one worker was sent, newest first, and when it was last sent one.
struct Recent {
    last: Instant,
    sent: VecDeque<Sent>,
}

/// A request sent to a worker, as its prefix cache will keep it.
struct Sent {
    prefix: Option<u64>,
    /// Its prompt and answer, at most (what the cache keeps of it).
    tokens: u64,
}

impl Affinity {
    #[must_use]
    pub fn new() -> Affinity {
        Affinity::default()
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Vec<(String, Instant)>>> {
        self.seen.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// `backend_id` is being sent a request of at most `tokens` (prompt and
    /// answer) that starts with `prefix`, if it has one worth steering.
    pub fn sent(&self, prefix: Option<PrefixKey>, backend_id: &str, tokens: u64, now: Instant) {
        {
            let mut recent = self.recent.lock().unwrap_or_else(PoisonError::into_inner);
            // The worker's id is copied once, when it is first sent a request.
            if !recent.contains_key(backend_id) {
                super::make_room(&mut recent, WORKERS, |r| {
                    now.saturating_duration_since(r.last) < TTL
                });
                recent.insert(
                    backend_id.to_owned(),
                    Recent {
                        last: now,
                        sent: VecDeque::new(),
                    },
                );
            }
            let Some(worker) = recent.get_mut(backend_id) else {
                return;
            };
            worker.last = now;
            worker.sent.push_front(Sent {
                prefix: prefix.map(|p| p.hash),
                tokens,
            });
            worker.sent.truncate(RECENT_PER_WORKER);
        }
        if let Some(prefix) = prefix {
            self.served(prefix, backend_id, now);
        }
    }

    fn served(&self, prefix: PrefixKey, backend_id: &str, now: Instant) {
        let fresh = |at: &Instant| now.saturating_duration_since(*at) < TTL;
        let mut map = self.map();
        if !map.contains_key(&prefix.hash) {
            super::make_room(&mut map, CAPACITY, |workers| {
                workers.iter().any(|(_, at)| fresh(at))
            });
        }
        let workers = map.entry(prefix.hash).or_default();
        workers.retain(|(id, at)| id != backend_id && fresh(at));
        workers.insert(0, (backend_id.to_owned(), now));
        workers.truncate(WORKERS_PER_PREFIX);
    }

    /// Whether `backend_id` served `prefix` within the last [`TTL`], and,
    /// when its `cache` capacity is known, whether what it was sent since
    /// would have left it in the cache.
    #[must_use]
    pub fn holds(
        &self,
        prefix: PrefixKey,
        backend_id: &str,
        now: Instant,
        cache: Option<PrefixCache>,
    ) -> bool {
        let recent_enough = self.map().get(&prefix.hash).is_some_and(|workers| {
            workers
                .iter()
                .any(|(id, at)| id == backend_id && now.saturating_duration_since(*at) < TTL)
        });
        let Some(cache) = cache.filter(|_| recent_enough) else {
            return recent_enough;
        };
        let recent = self.recent.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(worker) = recent.get(backend_id) else {
            return false;
        };
        let (mut sequences, mut tokens) = (0u64, 0u64);
        for s in &worker.sent {
            sequences += 1;
            tokens = tokens.saturating_add(s.tokens);
            if sequences > u64::from(cache.sequences) || tokens > cache.tokens {
                return false;
            }
            if s.prefix == Some(prefix.hash) {
                return true;
            }
        }
        false
    }
}

/// The leading prompt of a chat body: the text of the system and developer
/// messages before the first other message. `None` when there is none or
/// it is shorter than [`MIN_PREFIX_TOKENS`].
#[must_use]
pub fn prefix_of(body: &Map<String, Value>) -> Option<PrefixKey> {
    let messages = body.get("messages")?.as_array()?;
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    let mut chars = 0usize;
    for m in messages {
        let role = m.get("role").and_then(Value::as_str).unwrap_or("");
        if role != "system" && role != "developer" {
            break;
        }
        let content = m.get("content")?;
        role.hash(&mut hasher);
        // The content as the client sent it: a string, or parts.
        let text = content.to_string();
        chars += text.chars().count();
        text.hash(&mut hasher);
    }
    let tokens = u32::try_from(chars / CHARS_PER_TOKEN).unwrap_or(u32::MAX);
    (tokens >= MIN_PREFIX_TOKENS).then(|| PrefixKey {
        hash: hasher.finish(),
        tokens,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use serde_json::json;

    use super::*;

    fn body(system: &str, user: &str) -> Map<String, Value> {
        object(json!({"messages": [
            {"role": "system", "content": system},
            {"role": "user", "content": user},
        ]}))
    }

    fn object(v: Value) -> Map<String, Value> {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn the_leading_system_prompt_is_the_key() {
        let long = "You are a careful assistant. ".repeat(10);
        let a = prefix_of(&body(&long, "one")).unwrap();
        let b = prefix_of(&body(&long, "two")).unwrap();
        assert_eq!(a, b, "the user's turn is not part of the prefix");
        assert!(a.tokens >= MIN_PREFIX_TOKENS);
        let other = prefix_of(&body(&format!("{long}!"), "one")).unwrap();
        assert_ne!(a.hash, other.hash);
        assert_eq!(prefix_of(&body("short", "x")), None);
        assert_eq!(
            prefix_of(&object(
                json!({"messages": [{"role": "user", "content": long}]})
            )),
            None
        );
    }

    #[test]
    fn workers_are_remembered_per_prefix_until_the_ttl() {
        let aff = Affinity::new();
        let p = PrefixKey {
            hash: 7,
            tokens: 100,
        };
        let now = Instant::now();
        assert!(!aff.holds(p, "w1", now, None));
        aff.sent(Some(p), "w1", 200, now);
        aff.sent(Some(p), "w2", 200, now);
        assert!(aff.holds(p, "w1", now, None) && aff.holds(p, "w2", now, None));
        assert!(!aff.holds(p, "w3", now, None));
        assert!(!aff.holds(p, "w1", now + TTL, None));
    }

    /// The worker's cache keeps `sequences` finished requests and `tokens`
    /// tokens of them: a prefix is held until the requests sent after it
    /// would have pushed it out, whichever bound they pass first.
    #[test]
    fn a_prefix_is_held_while_the_worker_cache_has_room_for_it() {
        let aff = Affinity::new();
        let p = PrefixKey {
            hash: 7,
            tokens: 100,
        };
        let cache = Some(PrefixCache {
            sequences: 3,
            tokens: 1_000,
        });
        let now = Instant::now();
        aff.sent(Some(p), "w1", 300, now);
        aff.sent(None, "w1", 300, now);
        aff.sent(None, "w2", 900, now);
        assert!(aff.holds(p, "w1", now, cache), "2 sequences, 600 tokens");
        aff.sent(None, "w1", 300, now);
        assert!(aff.holds(p, "w1", now, cache), "3 sequences, 900 tokens");
        aff.sent(None, "w1", 50, now);
        assert!(!aff.holds(p, "w1", now, cache), "4 sequences");
        assert!(aff.holds(p, "w1", now, None), "without a capacity, the TTL");

        // A long answer fills the cache before the count does.
        aff.sent(Some(p), "w1", 300, now);
        assert!(aff.holds(p, "w1", now, cache));
        aff.sent(None, "w1", 701, now);
        assert!(!aff.holds(p, "w1", now, cache), "1,001 tokens");
        // Sent again, it is the newest entry and held again.
        aff.sent(Some(p), "w1", 300, now);
        assert!(aff.holds(p, "w1", now, cache));
    }

    /// Workers that stop being sent requests (a restarted pod under a new
    /// id) do not accumulate: past the bound, those idle for the TTL go.
    #[test]
    fn workers_that_left_are_forgotten_past_the_bound() {
        let aff = Affinity::new();
        let now = Instant::now();
        for i in 0..WORKERS {
            aff.sent(None, &format!("gone-{i}"), 10, now);
        }
        let workers = || aff.recent.lock().unwrap().len();
        assert_eq!(workers(), WORKERS);
        // Within the TTL they are all live: one makes room for the next.
        aff.sent(None, "live", 10, now + TTL / 2);
        assert_eq!(workers(), WORKERS);
        aff.sent(None, "new", 10, now + TTL);
        assert_eq!(
            workers(),
            2,
            "only the workers sent something within the TTL"
        );
        let p = PrefixKey {
            hash: 9,
            tokens: 100,
        };
        let cache = Some(PrefixCache {
            sequences: 3,
            tokens: 1_000,
        });
        aff.sent(Some(p), "new", 10, now + TTL);
        assert!(aff.holds(p, "new", now + TTL, cache));
    }
}
