//! Requests in flight per key. One key may hold at most
//! `max_in_flight_per_key` of the gateway's `max_in_flight` request slots,
//! so that one client (a batch job gone wide, or one trickling its bodies
//! in) cannot take every slot from the other tenants. Counted in each
//! gateway, from the key check to the request's end (a stream's last
//! event); past it the key's request gets 429 at once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

/// The keys' counts of requests in flight.
#[derive(Debug)]
pub struct KeyInFlight {
    limit: u32,
    counts: Mutex<HashMap<String, u32>>,
}

/// One request of a key in flight; the count drops with it.
#[derive(Debug)]
pub struct KeyPermit {
    owner: Arc<KeyInFlight>,
    key_id: String,
}

impl KeyInFlight {
    #[must_use]
    pub fn new(limit: usize) -> Arc<KeyInFlight> {
        Arc::new(KeyInFlight {
            limit: u32::try_from(limit).unwrap_or(u32::MAX),
            counts: Mutex::new(HashMap::new()),
        })
    }

    /// A permit for one more request of `key_id`, unless it has `limit`
    /// in flight already.
    pub fn acquire(self: &Arc<Self>, key_id: &str) -> Option<KeyPermit> {
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        let count = counts.entry(key_id.to_owned()).or_insert(0);
        if *count >= self.limit {
            return None;
        }
        *count += 1;
        Some(KeyPermit {
            owner: Arc::clone(self),
            key_id: key_id.to_owned(),
        })
    }
}

impl Drop for KeyPermit {
    fn drop(&mut self) {
        let mut counts = self
            .owner
            .counts
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = counts.get_mut(&self.key_id) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                counts.remove(&self.key_id);
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_key_holds_at_most_its_limit_and_others_are_not_affected() {
        let flights = KeyInFlight::new(2);
        let a1 = flights.acquire("a");
        let a2 = flights.acquire("a");
        assert!(a1.is_some() && a2.is_some());
        assert!(flights.acquire("a").is_none());
        let b = flights.acquire("b");
        assert!(b.is_some());
        drop(a1);
        assert_eq!(flights.counts.lock().unwrap().get("a"), Some(&1));
        let a3 = flights.acquire("a");
        assert!(a3.is_some());
        drop((a2, a3, b));
        // Nothing is kept for keys with nothing in flight.
        assert!(flights.counts.lock().unwrap().is_empty());
    }
}
