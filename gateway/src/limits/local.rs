//! The in-process limiter: exact for one gateway. Rate limits use
//! `governor` (GCRA), one direct limiter per key, rebuilt if the key's limit
//! changes; budgets use a [`Book`].

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, PoisonError};

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

use super::{
    budget_nusd, ceil_secs, to_nusd, Admission, Book, BudgetAsk, BudgetHold, KeyLimits,
    LimitExceeded, Limiter, Settle,
};

type Buckets = Mutex<HashMap<String, (u32, Arc<DefaultDirectRateLimiter>)>>;

/// In-process limiter: exact for one gateway, per replica when scaled out.
pub struct InProcessLimiter {
    requests: Buckets,
    tokens: Buckets,
    book: Arc<Book>,
}

impl Default for InProcessLimiter {
    fn default() -> Self {
        InProcessLimiter {
            requests: Buckets::default(),
            tokens: Buckets::default(),
            book: Arc::new(Book::new()),
        }
    }
}

impl InProcessLimiter {
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Counts one request against `key`'s requests/min, now.
    pub fn request(&self, key: &KeyLimits) -> Result<(), LimitExceeded> {
        let Some(rpm) = key.requests_per_min.and_then(NonZeroU32::new) else {
            return Ok(());
        };
        bucket(&self.requests, &key.key_id, rpm)
            .check()
            .map_err(|not_until| LimitExceeded::Requests {
                wait: not_until.wait_time_from(DefaultClock::default().now()),
            })
    }

    /// Charges `tokens` against `key`'s tokens/min, now.
    pub fn tokens(&self, key: &KeyLimits, tokens: u32) -> Result<(), LimitExceeded> {
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

impl InProcessLimiter {
    /// Holds `ask`'s worst case against its key's budget.
    pub fn reserve(&self, ask: &BudgetAsk<'_>) -> Result<BudgetHold, LimitExceeded> {
        self.book.reserve(
            ask.key_id,
            ask.request_id,
            budget_nusd(ask.budget_usd),
            to_nusd(ask.stored_spent_usd),
            worst_nusd(ask.worst_usd),
        )?;
        let settler: Arc<dyn Settle> = self.book.clone();
        Ok(BudgetHold::new(ask.key_id, ask.request_id, settler))
    }
}

/// The checks in turn, the budget first: its hold is released if a later
/// check refuses, so a request refused for its budget uses none of the
/// key's requests or tokens per minute. Of those two, one refused stops
/// the other, but requests/min stays counted when tokens/min refuses.
#[async_trait::async_trait]
impl Limiter for InProcessLimiter {
    async fn admit(&self, a: Admission<'_>) -> Result<Option<BudgetHold>, LimitExceeded> {
        let hold = a.budget.map(|ask| self.reserve(&ask)).transpose()?;
        self.request(a.limits)?;
        self.tokens(a.limits, a.tokens)?;
        Ok(hold)
    }
}

/// A worst case in nano-USD, rounded up so a hold never covers less.
pub(crate) fn worst_nusd(usd: f64) -> i64 {
    (usd * 1e9).ceil().max(0.0) as i64
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
        assert_eq!(l.request(&k), Ok(()));
        assert_eq!(l.request(&k), Ok(()));
        let err = l.request(&k).unwrap_err();
        // One request replenishes every 30 s.
        let retry = err.retry_after_s().unwrap();
        assert!((1..=30).contains(&retry), "{retry}");
        assert_eq!(err.code(), "rate_limit_exceeded");
        // Keys do not share buckets, and no limit means unlimited.
        assert_eq!(l.request(&key("b", Some(2), None)), Ok(()));
        for _ in 0..100 {
            assert_eq!(l.request(&key("c", None, None)), Ok(()));
        }
    }

    #[test]
    fn raising_a_limit_takes_effect() {
        let l = InProcessLimiter::new();
        assert_eq!(l.request(&key("a", Some(1), None)), Ok(()));
        assert!(l.request(&key("a", Some(1), None)).is_err());
        assert_eq!(l.request(&key("a", Some(5), None)), Ok(()));
    }

    #[test]
    fn tokens_per_minute() {
        let l = InProcessLimiter::new();
        let k = key("a", None, Some(1000));
        assert_eq!(l.tokens(&k, 600), Ok(()));
        assert!(
            matches!(l.tokens(&k, 600), Err(LimitExceeded::Tokens { retry_after_s }) if retry_after_s >= 1)
        );
        assert_eq!(l.tokens(&k, 1001), Err(LimitExceeded::TokensOverLimit));
        assert_eq!(l.tokens(&k, 0), Ok(()));
    }

    #[test]
    fn budget_holds_are_exact_under_concurrency() {
        // 100 concurrent requests, each worth 1/10 of the budget: exactly
        // ten are held, and a settled one frees room for one more.
        let l = Arc::new(InProcessLimiter::new());
        let ids: Vec<String> = (0..100).map(|i| format!("r{i}")).collect();
        let mut holds = Vec::new();
        for id in &ids {
            let ask = BudgetAsk {
                key_id: "k",
                request_id: id,
                budget_usd: 1.0,
                stored_spent_usd: 0.0,
                worst_usd: 0.1,
            };
            if let Ok(h) = l.reserve(&ask) {
                holds.push(h);
            }
        }
        assert_eq!(holds.len(), 10);
        holds.pop().unwrap().settle(0.05);
        let ask = |id: &'static str| BudgetAsk {
            key_id: "k",
            request_id: id,
            budget_usd: 1.0,
            stored_spent_usd: 0.0,
            worst_usd: 0.05,
        };
        let x = l.reserve(&ask("x")).unwrap();
        assert_eq!(l.reserve(&ask("y")).unwrap_err(), LimitExceeded::Budget);
        assert_eq!(l.book.figures("k"), Some((50_000_000, 950_000_000)));
        // Dropped unsettled, holds are released with no spend.
        drop((holds, x));
        assert_eq!(l.book.figures("k"), Some((50_000_000, 0)));
    }

    #[tokio::test]
    async fn admission_runs_every_check_and_holds_only_with_a_budget() {
        let l = InProcessLimiter::new();
        let k = key("a", Some(1), Some(100));
        let ask = BudgetAsk {
            key_id: "a",
            request_id: "r1",
            budget_usd: 1.0,
            stored_spent_usd: 0.0,
            worst_usd: 0.5,
        };
        let hold = l
            .admit(Admission {
                limits: &k,
                tokens: 50,
                budget: Some(ask),
            })
            .await
            .unwrap();
        assert!(hold.is_some());
        assert_eq!(l.book.figures("a"), Some((0, 500_000_000)));
        // The second request of the minute is refused before its budget.
        let second = Admission {
            limits: &k,
            tokens: 10,
            budget: None,
        };
        assert!(matches!(
            l.admit(second).await,
            Err(LimitExceeded::Requests { .. })
        ));
        // A request refused for its budget uses none of requests/min; one
        // refused for requests/min leaves no hold.
        let k = key("c", Some(1), None);
        let admit = |request_id: &'static str, budget_usd: f64| {
            l.admit(Admission {
                limits: &k,
                tokens: 10,
                budget: Some(BudgetAsk {
                    key_id: "c",
                    request_id,
                    budget_usd,
                    stored_spent_usd: 0.0,
                    worst_usd: 0.5,
                }),
            })
        };
        let refused = admit("r2", 0.1).await;
        assert!(
            refused
                .as_ref()
                .is_err_and(|e| e.code() == "insufficient_quota"),
            "{refused:?}"
        );
        drop(admit("r3", 1.0).await.unwrap());
        let refused = admit("r4", 1.0).await;
        assert!(matches!(refused, Err(LimitExceeded::Requests { .. })));
        assert_eq!(l.book.figures("c"), Some((0, 0)), "no hold left behind");
        let unlimited = key("b", None, None);
        let free = Admission {
            limits: &unlimited,
            tokens: 10,
            budget: None,
        };
        assert!(l.admit(free).await.unwrap().is_none());
    }
}
