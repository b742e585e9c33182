//! Per-key admission limits: requests per minute, tokens per minute, budget.
//!
//! [`Limiter`] is the admission interface, used as `Arc<dyn Limiter>`:
//!
//! - [`InProcessLimiter`] (no Redis): `governor` GCRA buckets and a budget
//!   [`Book`] in this process. Exact for a single gateway.
//! - [`SharedLimiter`] (with `redis_url`): the same checks as Lua scripts in
//!   Redis ([`scripts`]), so every gateway of a fleet draws on one bucket
//!   and one budget; a busy key's requests are admitted from slices of its
//!   limits that Redis leased to the gateway ahead of need, without a round
//!   trip. When Redis is slow or down it falls back to an in-process
//!   limiter holding this gateway's share of each limit.
//!
//! Tokens are charged at admission with the request's estimate (prompt plus
//! expected output), because the real count is only known after the answer
//! and a limit that only bites afterwards does not protect the backends.
//!
//! Budgets are reserved, not merely checked: admission holds the request's
//! worst case ([`worst_case_usd`]) and admits only if spend plus every
//! outstanding hold plus this one stays within the budget. The hold is a
//! [`BudgetHold`] owned by the request's ledger record, which settles it
//! with the row's actual cost when the row is finished (releasing the hold
//! and counting the spend). So concurrent requests, on one gateway or many,
//! cannot together admit more than the budget pays for. Money is counted
//! in integer nano-USD so that holds and releases cancel exactly.

mod book;
mod in_flight;
mod lease;
mod local;
mod refused;
pub mod scripts;
mod shared;

use std::sync::Arc;

pub use book::Book;
pub use in_flight::{KeyInFlight, KeyPermit};
pub use local::InProcessLimiter;
pub use refused::Refusals;
pub use shared::{SharedLimiter, SharedLimiterError};

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
    /// `wait`: until the key's bucket admits its next request.
    #[error("request rate limit reached; retry after {}s", ceil_secs(*wait))]
    Requests { wait: std::time::Duration },
    #[error("token rate limit reached; retry after {retry_after_s}s")]
    Tokens { retry_after_s: u64 },
    /// The request alone needs more tokens than the key may use per minute;
    /// retrying cannot help.
    #[error("request needs more tokens than the key's per-minute limit")]
    TokensOverLimit,
    #[error("budget exhausted")]
    Budget,
    /// The request sets no `max_tokens`, so its worst case runs to the end
    /// of the context, and that does not fit what is left of the budget.
    #[error(
        "budget too low for a request without max_tokens: its answer could run to the end of \
         the context; set max_tokens"
    )]
    BudgetUnbounded,
    /// The key has `max_in_flight_per_key` requests in flight already.
    #[error("too many requests of this key in flight; retry after 1s")]
    Concurrent,
    /// The client's address presented too many unknown credentials
    /// (`auth_guesses_per_minute`); `wait`: what is left of its minute.
    #[error("too many unknown API keys from this address; retry after {}s", ceil_secs(*wait))]
    Guesses { wait: std::time::Duration },
}

impl LimitExceeded {
    /// Seconds for the `Retry-After` header, when waiting can help.
    #[must_use]
    pub fn retry_after_s(self) -> Option<u64> {
        match self {
            LimitExceeded::Requests { wait } | LimitExceeded::Guesses { wait } => {
                Some(ceil_secs(wait))
            }
            LimitExceeded::Tokens { retry_after_s } => Some(retry_after_s),
            LimitExceeded::Concurrent => Some(1),
            LimitExceeded::TokensOverLimit
            | LimitExceeded::Budget
            | LimitExceeded::BudgetUnbounded => None,
        }
    }

    /// OpenAI error code.
    #[must_use]
    pub fn code(self) -> &'static str {
        match self {
            LimitExceeded::Budget | LimitExceeded::BudgetUnbounded => "insufficient_quota",
            _ => "rate_limit_exceeded",
        }
    }
}

/// A budget reservation to make at admission.
#[derive(Debug, Clone, Copy)]
pub struct BudgetAsk<'a> {
    pub key_id: &'a str,
    /// The ledger row's id, which names the hold.
    pub request_id: &'a str,
    pub budget_usd: f64,
    /// The key's spend as the store last said (the key cache). Holders only
    /// ever raise their figure to it, so spend written by other means (or
    /// lost by a restarted Redis) is picked up without counting twice.
    pub stored_spent_usd: f64,
    /// The most this request can cost ([`worst_case_usd`]).
    pub worst_usd: f64,
}

/// Everything a request is admitted against: its key's rates and, when
/// the key has a budget, a hold.
#[derive(Debug, Clone, Copy)]
pub struct Admission<'a> {
    pub limits: &'a KeyLimits,
    /// Tokens charged against tokens/min: the prompt plus the expected
    /// output.
    pub tokens: u32,
    pub budget: Option<BudgetAsk<'a>>,
}

/// Admission checks for one request.
#[async_trait::async_trait]
pub trait Limiter: Send + Sync {
    /// Counts one request against the key's requests/min, charges its
    /// tokens against tokens/min, and holds its worst case against the
    /// key's budget ([`LimitExceeded::Budget`] when spend plus outstanding
    /// holds plus this one would pass it). The hold, when asked for, is
    /// returned to be settled by the ledger row.
    async fn admit(&self, a: Admission<'_>) -> Result<Option<BudgetHold>, LimitExceeded>;
}

/// How a hold ends: released, with the actual spend counted. Called from
/// `Drop`, so it must not block.
pub trait Settle: Send + Sync {
    fn settle(&self, settlement: Settlement);
}

/// One finished hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settlement {
    pub key_id: String,
    pub request_id: String,
    /// What the request actually cost, in nano-USD.
    pub actual_nusd: i64,
    /// For a request admitted from its gateway's lease (no hold of its
    /// own): the worst case it drew from the lease, in nano-USD.
    pub drawn: Option<i64>,
}

/// A budget reservation owned by one request. [`BudgetHold::settle`] ends
/// it with the actual cost; dropped unsettled, it is released with none
/// (the request never reached a backend).
pub struct BudgetHold {
    settlement: Option<Settlement>,
    settler: Arc<dyn Settle>,
}

impl BudgetHold {
    pub(crate) fn new(key_id: &str, request_id: &str, settler: Arc<dyn Settle>) -> BudgetHold {
        BudgetHold::drawn(key_id, request_id, None, settler)
    }

    /// A hold of `drawn` nano-USD taken from the gateway's lease of the
    /// key's budget rather than held in its own name.
    pub(crate) fn drawn(
        key_id: &str,
        request_id: &str,
        drawn: Option<i64>,
        settler: Arc<dyn Settle>,
    ) -> BudgetHold {
        BudgetHold {
            settlement: Some(Settlement {
                key_id: key_id.to_owned(),
                request_id: request_id.to_owned(),
                actual_nusd: 0,
                drawn,
            }),
            settler,
        }
    }

    /// Releases the hold and counts `actual_usd` as spent.
    pub fn settle(mut self, actual_usd: f64) {
        if let Some(mut s) = self.settlement.take() {
            s.actual_nusd = to_nusd(actual_usd);
            self.settler.settle(s);
        }
    }
}

impl Drop for BudgetHold {
    fn drop(&mut self) {
        if let Some(s) = self.settlement.take() {
            self.settler.settle(s);
        }
    }
}

impl std::fmt::Debug for BudgetHold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BudgetHold")
            .field("settlement", &self.settlement)
            .finish_non_exhaustive()
    }
}

/// USD as integer nano-USD, rounded to the nearest (0 for NaN, negatives).
#[must_use]
pub fn to_nusd(usd: f64) -> i64 {
    // `as` saturates: NaN and negatives become 0 after the max.
    (usd * 1e9).round().max(0.0) as i64
}

/// The most a request can cost: its prompt at the dearest input price and
/// `output_tokens` (its `max_tokens`, or the policy's expected output) at
/// the dearest output price among the backends it may be sent to (the
/// routing decision's candidates, failover included). `prices` are
/// `(input, output)` USD per 1000 tokens.
#[must_use]
pub fn worst_case_usd(
    prompt_tokens: u32,
    output_tokens: u32,
    prices: impl IntoIterator<Item = (f64, f64)>,
) -> f64 {
    let (price_in, price_out) = prices
        .into_iter()
        .fold((0.0_f64, 0.0_f64), |(i, o), (pi, po)| {
            (i.max(finite_or_zero(pi)), o.max(finite_or_zero(po)))
        });
    f64::from(prompt_tokens) / 1000.0 * price_in + f64::from(output_tokens) / 1000.0 * price_out
}

fn finite_or_zero(x: f64) -> f64 {
    if x.is_finite() {
        x
    } else {
        0.0
    }
}

/// Admits a hold of `worst` when nothing is spent past the budget and
/// `spent + reserved + worst` stays within it (all in nano-USD). The Lua
/// reservation script applies the same rule.
pub fn check_budget(
    budget: i64,
    spent: i64,
    reserved: i64,
    worst: i64,
) -> Result<(), LimitExceeded> {
    if spent >= budget || spent.saturating_add(reserved).saturating_add(worst) > budget {
        return Err(LimitExceeded::Budget);
    }
    Ok(())
}

/// A budget in nano-USD, rounded down (a hold must fit entirely).
#[must_use]
pub fn budget_nusd(usd: f64) -> i64 {
    (usd * 1e9).floor().max(0.0) as i64
}

/// Rounds a wait up to whole seconds, at least one (`Retry-After`).
pub(crate) fn ceil_secs(d: std::time::Duration) -> u64 {
    (d.as_secs() + u64::from(d.subsec_nanos() > 0)).max(1)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn budget_table() {
        // (budget, spent, reserved, worst, admitted)
        let cases = [
            (10, 0, 0, 0, true),
            (10, 0, 0, 10, true),
            (10, 0, 0, 11, false),
            (10, 9, 0, 1, true),
            (10, 9, 1, 1, false),
            (10, 4, 5, 1, true),
            (10, 10, 0, 0, false),
            (0, 0, 0, 0, false),
            (i64::MAX - 1, i64::MAX - 2, i64::MAX, 1, false),
        ];
        for (budget, spent, reserved, worst, ok) in cases {
            assert_eq!(
                check_budget(budget, spent, reserved, worst).is_ok(),
                ok,
                "{budget} {spent} {reserved} {worst}"
            );
        }
        assert_eq!(
            check_budget(1, 2, 0, 0).unwrap_err().code(),
            "insufficient_quota"
        );
    }

    #[test]
    fn worst_case_takes_the_dearest_prices_of_all_candidates() {
        // 1000 prompt tokens at the dearest input (0.5) and 2000 output
        // tokens at the dearest output (3.0), even from different backends.
        let usd = worst_case_usd(1000, 2000, [(0.5, 1.0), (0.1, 3.0), (f64::NAN, 0.0)]);
        assert!((usd - 6.5).abs() < 1e-12, "{usd}");
        assert!(worst_case_usd(1000, 1000, []).abs() < f64::EPSILON);
    }

    #[test]
    fn nano_usd_conversions() {
        assert_eq!(to_nusd(0.008), 8_000_000);
        assert_eq!(to_nusd(-1.0), 0);
        assert_eq!(to_nusd(f64::NAN), 0);
        assert_eq!(budget_nusd(0.08), 80_000_000);
        assert_eq!(budget_nusd(1e-10), 0);
    }

    struct Recorder(std::sync::Mutex<Vec<Settlement>>);

    impl Settle for Recorder {
        fn settle(&self, s: Settlement) {
            self.0.lock().unwrap().push(s);
        }
    }

    #[test]
    fn a_hold_settles_once_and_releases_when_dropped() {
        let rec = Arc::new(Recorder(std::sync::Mutex::new(Vec::new())));
        let settler: Arc<dyn Settle> = rec.clone();
        BudgetHold::new("k", "r1", Arc::clone(&settler)).settle(0.25);
        drop(BudgetHold::new("k", "r2", settler));
        let got = rec.0.lock().unwrap().clone();
        assert_eq!(got.len(), 2);
        assert_eq!(
            (got[0].request_id.as_str(), got[0].actual_nusd),
            ("r1", 250_000_000)
        );
        assert_eq!((got[1].request_id.as_str(), got[1].actual_nusd), ("r2", 0));
    }
}
