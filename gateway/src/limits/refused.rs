//! Keys whose requests/min refuses every request until a known instant.
//!
//! A refusal for requests/min says when the key's bucket admits its next
//! request, and a refused request takes nothing from the bucket, so until
//! then every request of the key would be refused the same way. The gateway
//! keeps that instant and refuses the key's requests before their bodies
//! are scanned and routed: a key past its rate costs almost nothing to
//! turn away, however large the bodies it sends. A request refused from
//! here leaves the same `rejected` row, with the same 429, as one refused
//! by the limiter.
//!
//! The instant is kept with the limit it was computed under, so a changed
//! limit is asked of the limiter at once. With Redis, other gateways can
//! only draw the key's bucket further: the instant is never too late.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::{KeyLimits, LimitExceeded};

/// Past this many keys, a new refusal first drops the ones that ended.
const PRUNE_AT: usize = 4_096;

/// Per key: its requests/min and until when it refuses.
#[derive(Debug, Default)]
pub struct Refusals {
    until: Mutex<HashMap<String, (u32, Instant)>>,
}

impl Refusals {
    #[must_use]
    pub fn new() -> Refusals {
        Refusals::default()
    }

    /// Keeps a refusal for requests/min that lasts `wait` from `now`.
    pub fn note(&self, limits: &KeyLimits, wait: Duration, now: Instant) {
        let Some(rpm) = limits.requests_per_min else {
            return;
        };
        let mut map = self.until.lock().unwrap_or_else(PoisonError::into_inner);
        if map.len() >= PRUNE_AT {
            map.retain(|_, (_, until)| *until > now);
        }
        map.insert(limits.key_id.clone(), (rpm, now + wait));
    }

    /// The refusal the limiter would give the key's next request now, if
    /// one is known.
    pub fn check(&self, limits: &KeyLimits, now: Instant) -> Result<(), LimitExceeded> {
        let Some(rpm) = limits.requests_per_min else {
            return Ok(());
        };
        let map = self.until.lock().unwrap_or_else(PoisonError::into_inner);
        match map.get(&limits.key_id) {
            Some(&(limit, until)) if limit == rpm && until > now => {
                Err(LimitExceeded::Requests { wait: until - now })
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn key(id: &str, rpm: Option<u32>) -> KeyLimits {
        KeyLimits {
            key_id: id.into(),
            requests_per_min: rpm,
            tokens_per_min: None,
        }
    }

    #[test]
    fn a_refusal_holds_until_its_instant_under_its_limit() {
        let r = Refusals::new();
        let t0 = Instant::now();
        let k = key("a", Some(2));
        assert_eq!(r.check(&k, t0), Ok(()));
        r.note(&k, Duration::from_millis(1_500), t0);
        let at = t0 + Duration::from_millis(500);
        assert_eq!(
            r.check(&k, at),
            Err(LimitExceeded::Requests {
                wait: Duration::from_secs(1)
            })
        );
        assert_eq!(r.check(&k, at).unwrap_err().retry_after_s(), Some(1));
        // Ended.
        assert_eq!(r.check(&k, t0 + Duration::from_millis(1_500)), Ok(()));
        // Another key, or the same key under another limit, is not refused.
        assert_eq!(r.check(&key("b", Some(2)), at), Ok(()));
        assert_eq!(r.check(&key("a", Some(3)), at), Ok(()));
        assert_eq!(r.check(&key("a", None), at), Ok(()));
        // A key without requests/min is never kept.
        r.note(&key("c", None), Duration::from_secs(9), t0);
        assert_eq!(r.check(&key("c", Some(1)), at), Ok(()));
    }

    #[test]
    fn ended_refusals_are_dropped_when_the_map_is_full() {
        let r = Refusals::new();
        let t0 = Instant::now();
        for i in 0..PRUNE_AT {
            r.note(&key(&i.to_string(), Some(1)), Duration::from_millis(10), t0);
        }
        let later = t0 + Duration::from_secs(1);
        r.note(&key("new", Some(1)), Duration::from_secs(5), later);
        let map = r.until.lock().unwrap();
        assert_eq!(map.len(), 1, "only the refusal still running is kept");
        assert!(map.contains_key("new"));
    }
}
