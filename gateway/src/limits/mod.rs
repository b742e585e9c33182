//! Per-key admission limits: requests per minute, tokens per minute, budget.
//!
//! [`Limiter`] is a trait so a Redis-backed implementation can share counters
//! between gateway replicas later; [`InProcessLimiter`] keeps them in this
//! process, which is exact for a single gateway. Rate limits use `governor`
//! (GCRA), one direct limiter per key, rebuilt if the key's limit changes.
//!
//! Tokens are charged at admission with the request's estimate (prompt plus
//! expected output), because the real count is only known after the answer
//! and a limit that only bites afterwards does not protect the backends.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

/// The limits of one key, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyLimits {
    pub key_id: String,
    /// `None`: unlimited.
    pub requests_per_min: Option<u32>,
    pub tokens_per_min: Option<u32>,
}

/// Why a request is refused. Each variant maps to a 429 with the OpenAI
/// error code from [`LimitExceeded::code`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LimitExceeded {
    #[error("request rate limit reached; retry after {retry_after_s}s")]
    Requests { retry_after_s: u64 },
    #[error("token rate limit reached; retry after {retry_after_s}s")]
    Tokens { retry_after_s: u64 },
    /// The request alone needs more tokens than the key may use per minute;
    /// retrying cannot help.
    #[error("request needs more tokens than the key's per-minute limit")]
    TokensOverLimit,
    #[error("budget exhausted")]
    Budget,
}

impl LimitExceeded {
    /// Seconds for the `Retry-After` header, when waiting can help.
    #[must_use]
    pub fn retry_after_s(self) -> Option<u64> {
        match self {
            LimitExceeded::Requests { retry_after_s } | LimitExceeded::Tokens { retry_after_s } => {
                Some(retry_after_s)
            }
            LimitExceeded::TokensOverLimit | LimitExceeded::Budget => None,
        }
    }

    /// OpenAI error code.
    #[must_use]
    pub fn code(self) -> &'static str {
        match self {
            LimitExceeded::Budget => "insufficient_quota",
            _ => "rate_limit_exceeded",
        }
    }
}

/// Admission checks for one request.
pub trait Limiter: Send + Sync {
    /// Counts one request against the key's requests/min.
    fn check_request(&self, key: &KeyLimits) -> Result<(), LimitExceeded>;
    /// Charges `tokens` against the key's tokens/min.
    fn check_tokens(&self, key: &KeyLimits, tokens: u32) -> Result<(), LimitExceeded>;
}

/// Rejects once `spent_usd` has reached `budget_usd`; no budget means none.
pub fn check_budget(budget_usd: Option<f64>, spent_usd: f64) -> Result<(), LimitExceeded> {
    match budget_usd {
        Some(budget) if spent_usd >= budget => Err(LimitExceeded::Budget),
        _ => Ok(()),
    }
}

type Buckets = Mutex<HashMap<String, (u32, Arc<DefaultDirectRateLimiter>)>>;

/// In-process limiter: exact for one gateway, per replica when scaled out.
#[derive(Default)]
pub struct InProcessLimiter {
    requests: Buckets,
    tokens: Buckets,
}

impl InProcessLimiter {
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }
}

/// The key's limiter for `per_min`, created (or replaced when the limit
/// changed). The lock is held only for the map lookup.
fn bucket(buckets: &Buckets, key_id: &str, per_min: NonZeroU32) -> Arc<DefaultDirectRateLimiter> {
    let mut map = buckets.lock().unwrap_or_else(PoisonError::into_inner);
    match map.get(key_id) {
        Some((limit, limiter)) if *limit == per_min.get() => Arc::clone(limiter),
        _ => {
            let limiter = Arc::new(RateLimiter::direct(Quota::per_minute(per_min)));
            map.insert(key_id.to_owned(), (per_min.get(), Arc::clone(&limiter)));
            limiter
        }
    }
}

fn ceil_secs(d: Duration) -> u64 {
    (d.as_secs() + u64::from(d.subsec_nanos() > 0)).max(1)
}

impl Limiter for InProcessLimiter {
    fn check_request(&self, key: &KeyLimits) -> Result<(), LimitExceeded> {
        let Some(rpm) = key.requests_per_min.and_then(NonZeroU32::new) else {
            return Ok(());
        };
        bucket(&self.requests, &key.key_id, rpm)
            .check()
            .map_err(|not_until| LimitExceeded::Requests {
                retry_after_s: ceil_secs(not_until.wait_time_from(DefaultClock::default().now())),
            })
    }

    fn check_tokens(&self, key: &KeyLimits, tokens: u32) -> Result<(), LimitExceeded> {
        let (Some(tpm), Some(n)) = (
            key.tokens_per_min.and_then(NonZeroU32::new),
            NonZeroU32::new(tokens),
        ) else {
            return Ok(());
        };
        match bucket(&self.tokens, &key.key_id, tpm).check_n(n) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(not_until)) => Err(LimitExceeded::Tokens {
                retry_after_s: ceil_secs(not_until.wait_time_from(DefaultClock::default().now())),
            }),
            Err(_) => Err(LimitExceeded::TokensOverLimit),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn key(id: &str, rpm: Option<u32>, tpm: Option<u32>) -> KeyLimits {
        KeyLimits {
            key_id: id.into(),
            requests_per_min: rpm,
            tokens_per_min: tpm,
        }
    }

    #[test]
    fn requests_per_minute_with_retry_after() {
        let l = InProcessLimiter::new();
        let k = key("a", Some(2), None);
        assert_eq!(l.check_request(&k), Ok(()));
        assert_eq!(l.check_request(&k), Ok(()));
        let err = l.check_request(&k).unwrap_err();
        // One request replenishes every 30 s.
        let retry = err.retry_after_s().unwrap();
        assert!((1..=30).contains(&retry), "{retry}");
        assert_eq!(err.code(), "rate_limit_exceeded");
        // Keys do not share buckets, and no limit means unlimited.
        assert_eq!(l.check_request(&key("b", Some(2), None)), Ok(()));
        for _ in 0..100 {
            assert_eq!(l.check_request(&key("c", None, None)), Ok(()));
        }
    }

    #[test]
    fn raising_a_limit_takes_effect() {
        let l = InProcessLimiter::new();
        assert_eq!(l.check_request(&key("a", Some(1), None)), Ok(()));
        assert!(l.check_request(&key("a", Some(1), None)).is_err());
        assert_eq!(l.check_request(&key("a", Some(5), None)), Ok(()));
    }

    #[test]
    fn tokens_per_minute() {
        let l = InProcessLimiter::new();
        let k = key("a", None, Some(1000));
        assert_eq!(l.check_tokens(&k, 600), Ok(()));
        assert!(
            matches!(l.check_tokens(&k, 600), Err(LimitExceeded::Tokens { retry_after_s }) if retry_after_s >= 1)
        );
        assert_eq!(
            l.check_tokens(&k, 1001),
            Err(LimitExceeded::TokensOverLimit)
        );
        assert_eq!(l.check_tokens(&k, 0), Ok(()));
    }

    #[test]
    fn budget_table() {
        let cases = [
            (None, 1e9, true),
            (Some(10.0), 0.0, true),
            (Some(10.0), 9.99, true),
            (Some(10.0), 10.0, false),
            (Some(0.0), 0.0, false),
        ];
        for (budget, spent, ok) in cases {
            assert_eq!(
                check_budget(budget, spent).is_ok(),
                ok,
                "{budget:?} {spent}"
            );
        }
        assert_eq!(
            check_budget(Some(1.0), 2.0).unwrap_err().code(),
            "insufficient_quota"
        );
    }
}
