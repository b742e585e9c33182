//! The retry budget: failover attempts may add at most a share of the
//! requests seen in the last ten seconds (plus a small floor per second),
//! so a fleet that fails everything is not hit with three times the load.
//!
//! The same rule as Finagle's and Envoy's retry budgets: each request
//! deposits `ratio` of a retry, each retry spends one, and a floor of
//! `min_per_s` retries per second lets a quiet gateway still fail over.
//! Counted per gateway, in one-second buckets over a ten-second window.

use std::sync::{Mutex, PoisonError};
use std::time::Instant;

const WINDOW_S: u64 = 10;

#[derive(Debug, Default, Clone, Copy)]
struct Bucket {
    /// Seconds since the budget was made; which second this bucket counts.
    second: u64,
    requests: u64,
    retries: u64,
}

#[derive(Debug)]
pub struct RetryBudget {
    ratio: f64,
    min_per_s: f64,
    origin: Instant,
    buckets: Mutex<[Bucket; WINDOW_S as usize]>,
}

impl RetryBudget {
    /// `ratio`: retries allowed per request (0.2 = 20%); `min_per_s`:
    /// retries allowed per second whatever the traffic.
    #[must_use]
    pub fn new(ratio: f64, min_per_s: f64) -> Self {
        Self {
            ratio: ratio.max(0.0),
            min_per_s: min_per_s.max(0.0),
            origin: Instant::now(),
            buckets: Mutex::new([Bucket::default(); WINDOW_S as usize]),
        }
    }

    /// Counts a request (its first attempt).
    pub fn request(&self) {
        self.request_at(Instant::now());
    }

    /// Asks to make one more attempt for a request; `true` (and counted)
    /// while retries stay within the budget.
    pub fn try_retry(&self) -> bool {
        self.try_retry_at(Instant::now())
    }

    fn request_at(&self, now: Instant) {
        let second = self.second(now);
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        current(&mut buckets, second).requests += 1;
    }

    fn try_retry_at(&self, now: Instant) -> bool {
        let second = self.second(now);
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        let (requests, retries) = buckets
            .iter()
            .filter(|b| b.second + WINDOW_S > second && b.second <= second)
            .fold((0, 0), |(q, r), b| (q + b.requests, r + b.retries));
        let allowed = self.ratio * requests as f64 + self.min_per_s * WINDOW_S as f64;
        if (retries as f64) < allowed.floor() {
            current(&mut buckets, second).retries += 1;
            true
        } else {
            false
        }
    }

    fn second(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.origin).as_secs()
    }
}

/// The bucket of `second`, emptied first if it last counted an older one.
fn current(buckets: &mut [Bucket; WINDOW_S as usize], second: u64) -> &mut Bucket {
    let slot = &mut buckets[(second % WINDOW_S) as usize];
    if slot.second != second {
        *slot = Bucket {
            second,
            ..Bucket::default()
        };
    }
    slot
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn retries_are_a_share_of_requests() {
        let b = RetryBudget::new(0.2, 0.0);
        let t = b.origin;
        assert!(!b.try_retry_at(t), "no requests, no floor: no retry");
        for _ in 0..100 {
            b.request_at(t);
        }
        let granted = (0..100).filter(|_| b.try_retry_at(t)).count();
        assert_eq!(granted, 20);
        // Five more requests earn one more retry.
        for _ in 0..5 {
            b.request_at(t);
        }
        assert!(b.try_retry_at(t));
        assert!(!b.try_retry_at(t));
    }

    #[test]
    fn the_floor_allows_retries_on_a_quiet_gateway() {
        let b = RetryBudget::new(0.2, 1.0);
        let t = b.origin;
        // One retry a second over the ten-second window.
        assert_eq!((0..50).filter(|_| b.try_retry_at(t)).count(), 10);
    }

    #[test]
    fn the_window_forgets_after_ten_seconds() {
        let b = RetryBudget::new(0.5, 0.0);
        let t = b.origin;
        for _ in 0..10 {
            b.request_at(t);
        }
        assert_eq!((0..10).filter(|_| b.try_retry_at(t)).count(), 5);
        // Nine seconds on, the old requests and retries still count.
        let later = t + Duration::from_secs(9);
        assert!(!b.try_retry_at(later));
        // Ten seconds on they are gone: nothing earned, nothing spent.
        let much_later = t + Duration::from_secs(10);
        assert!(!b.try_retry_at(much_later));
        for _ in 0..4 {
            b.request_at(much_later);
        }
        assert_eq!((0..10).filter(|_| b.try_retry_at(much_later)).count(), 2);
    }
}
