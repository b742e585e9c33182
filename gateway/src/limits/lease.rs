//! Leases: slices of a key's rates and budget that Redis grants this
//! gateway ahead of need ([`super::scripts::lease`]), so that most
//! admissions are decided in process, with no round trip.
//!
//! A lease is charged in Redis when it is granted: each rate as if the
//! slice's requests (or tokens) arrived at once, the budget slice as a hold
//! in the gateway's name. So whatever a lease admits was already counted
//! against the key for the whole fleet, and the fleet never admits more
//! than the key's limits and budget allow; what a lease strands (granted
//! to one gateway, unused, while another refuses) is bounded by the slice
//! sizes, which the caller keeps small against each limit, and given back
//! when the lease ends.
//!
//! A lease is for one set of the key's limits ([`Terms`]): when an admin
//! changes a limit or the budget, the next request finds no lease for the
//! new terms and takes the exact path while a new lease is asked for; the
//! old one is no longer used and is given back when its life ends.
//!
//! Each key's lease is renewed in the background before it runs low (below
//! half of a part's slice) or old (past half its life), one renewal at a
//! time; an admission never waits for one. A lease not renewed within its
//! life is no longer used, and its rest is given back. A renewal that
//! cannot be granted (a limit near its end, or slices too small to be worth
//! it) leaves the key on the exact path, one round trip per request, and is
//! tried again after half a life.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::scripts::{RateSlice, Slices};

/// What one admission needs from a lease: a request of the key's
/// requests/min, tokens of its tokens/min, its worst case from the budget
/// (nano-USD); `None` where the key has no such limit.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Need {
    pub requests: Option<u32>,
    pub tokens: Option<u32>,
    pub budget: Option<i64>,
}

/// The limits a lease was granted under: a key's requests/min,
/// tokens/min and budget (nano-USD), as the request saw them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Terms {
    pub requests_per_min: Option<u32>,
    pub tokens_per_min: Option<u32>,
    pub budget: Option<i64>,
}

/// What [`Leases::take`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Take {
    /// Admitted from the lease.
    pub admitted: bool,
    /// The caller should renew the lease (it is now marked as renewing).
    pub renew: bool,
}

#[derive(Debug, Default)]
struct Lease {
    left: Slices,
    /// The slices of the last renewal.
    size: Slices,
    /// When the lease stops being used; `None` before its first grant.
    until: Option<Instant>,
    renewing: bool,
    /// No renewal before this (after one was refused).
    retry_at: Option<Instant>,
}

/// This gateway's leases, by key id and then by terms (one, but for the
/// moments after a change of the key's limits).
#[derive(Debug)]
pub(super) struct Leases {
    life: Duration,
    map: Mutex<HashMap<String, Vec<(Terms, Lease)>>>,
}

/// The lease of `key_id` under `terms`, created if missing (always
/// `Some`; an `Option` only because the map is searched twice).
fn entry<'a>(
    map: &'a mut HashMap<String, Vec<(Terms, Lease)>>,
    key_id: &str,
    terms: Terms,
) -> Option<&'a mut Lease> {
    if !map.contains_key(key_id) {
        map.insert(key_id.to_owned(), Vec::new());
    }
    let leases = map.get_mut(key_id)?;
    if !leases.iter().any(|(t, _)| *t == terms) {
        leases.push((terms, Lease::default()));
    }
    leases
        .iter_mut()
        .find(|(t, _)| *t == terms)
        .map(|(_, lease)| lease)
}

impl Leases {
    /// Leases that live `life` after each renewal; none at all for zero.
    pub fn new(life: Duration) -> Leases {
        Leases {
            life,
            map: Mutex::new(HashMap::new()),
        }
    }

    pub fn enabled(&self) -> bool {
        !self.life.is_zero()
    }

    /// Admits `need` from `key_id`'s lease if every part it needs has
    /// enough left, and says whether the lease should be renewed.
    pub fn take(&self, key_id: &str, terms: Terms, need: Need, now: Instant) -> Take {
        let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(lease) = entry(&mut map, key_id, terms) else {
            return Take {
                admitted: false,
                renew: false,
            };
        };
        let live = lease.until.is_some_and(|u| u > now);
        let admitted = live && fits(&lease.left, need);
        if admitted {
            let left = &mut lease.left;
            if let (Some(r), Some(_)) = (left.requests.as_mut(), need.requests) {
                r.count -= 1;
            }
            if let (Some(t), Some(n)) = (left.tokens.as_mut(), need.tokens) {
                t.count -= u64::from(n);
            }
            if let (Some(b), Some(worst)) = (left.budget.as_mut(), need.budget) {
                *b -= worst;
            }
        }
        let low = !admitted
            || lease.until.is_none_or(|u| u < now + self.life / 2)
            || runs_low(&lease.left, &lease.size);
        let renew = low && !lease.renewing && lease.retry_at.is_none_or(|r| now >= r);
        if renew {
            lease.renewing = true;
        }
        Take { admitted, renew }
    }

    /// What a renewal to `size` must ask for: each part of `size` less
    /// what is left of it.
    pub fn lacking(&self, key_id: &str, terms: Terms, size: &Slices) -> Slices {
        let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        let left = entry(&mut map, key_id, terms)
            .map(|l| l.left)
            .unwrap_or_default();
        let rate = |size: Option<RateSlice>, left: Option<RateSlice>| {
            size.map(|s| RateSlice {
                limit: s.limit,
                count: s.count.saturating_sub(left.map_or(0, |l| l.count)),
            })
        };
        Slices {
            requests: rate(size.requests, left.requests),
            tokens: rate(size.tokens, left.tokens),
            budget: size
                .budget
                .map(|s| s.saturating_sub(left.budget.unwrap_or(0)).max(0)),
        }
    }

    /// Adds a granted renewal (`granted`, toward `size`) to the lease,
    /// which lives `life` from `now`. With `lost_budget`, Redis held no
    /// budget for the lease before this grant, so only the grant is left
    /// of it.
    pub fn granted(
        &self,
        key_id: &str,
        terms: Terms,
        granted: &Slices,
        size: Slices,
        lost_budget: bool,
        now: Instant,
    ) {
        let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(lease) = entry(&mut map, key_id, terms) else {
            return;
        };
        if lost_budget {
            lease.left.budget = None;
        }
        let add = |left: &mut Option<RateSlice>, granted: Option<RateSlice>| {
            if let Some(g) = granted {
                let l = left.get_or_insert(RateSlice {
                    limit: g.limit,
                    count: 0,
                });
                l.limit = g.limit;
                l.count += g.count;
            }
        };
        add(&mut lease.left.requests, granted.requests);
        add(&mut lease.left.tokens, granted.tokens);
        if let Some(b) = granted.budget {
            *lease.left.budget.get_or_insert(0) += b;
        }
        lease.size = size;
        lease.until = Some(now + self.life);
        lease.renewing = false;
        lease.retry_at = None;
    }

    /// A renewal was refused or failed: none before half a life.
    pub fn refused(&self, key_id: &str, terms: Terms, now: Instant) {
        let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(lease) = entry(&mut map, key_id, terms) {
            lease.renewing = false;
            lease.retry_at = Some(now + self.life / 2);
        }
    }

    /// Removes the leases past their life (and not being renewed) and
    /// keys that never got one and are not trying; returns what the leases
    /// had left, to give back.
    pub fn expired(&self, now: Instant) -> Vec<(String, Slices)> {
        let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        let mut out = Vec::new();
        map.retain(|key_id, leases| {
            leases.retain(|(_, lease)| {
                let over = !lease.renewing
                    && lease.until.is_none_or(|u| u <= now)
                    && lease.retry_at.is_none_or(|r| r <= now);
                if over && lease.until.is_some() {
                    out.push((key_id.clone(), lease.left));
                }
                !over
            });
            !leases.is_empty()
        });
        out
    }

    /// Removes every lease (on stop); returns what each had left.
    pub fn drain(&self) -> Vec<(String, Slices)> {
        let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        map.drain()
            .flat_map(|(k, leases)| {
                leases
                    .into_iter()
                    .filter(|(_, l)| l.until.is_some())
                    .map(move |(_, l)| (k.clone(), l.left))
            })
            .collect()
    }
}

fn fits(left: &Slices, need: Need) -> bool {
    let rate_fits = |left: Option<RateSlice>, n: Option<u32>| {
        n.is_none_or(|n| left.is_some_and(|l| l.count >= u64::from(n)))
    };
    rate_fits(left.requests, need.requests.map(|_| 1))
        && rate_fits(left.tokens, need.tokens)
        && need
            .budget
            .is_none_or(|worst| left.budget.is_some_and(|b| b >= worst))
}

/// Whether any part is below half its slice.
fn runs_low(left: &Slices, size: &Slices) -> bool {
    let rate_low = |left: Option<RateSlice>, size: Option<RateSlice>| matches!((left, size), (Some(l), Some(s)) if l.count < s.count / 2);
    rate_low(left.requests, size.requests)
        || rate_low(left.tokens, size.tokens)
        || matches!((left.budget, size.budget), (Some(l), Some(s)) if l < s / 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIFE: Duration = Duration::from_secs(2);
    const T: Terms = Terms {
        requests_per_min: Some(600),
        tokens_per_min: Some(60_000),
        budget: Some(1_000),
    };

    fn slices(requests: u64, tokens: u64, budget: i64) -> Slices {
        Slices {
            requests: Some(RateSlice {
                limit: 600,
                count: requests,
            }),
            tokens: Some(RateSlice {
                limit: 60_000,
                count: tokens,
            }),
            budget: Some(budget),
        }
    }

    fn need(tokens: u32, worst: i64) -> Need {
        Need {
            requests: Some(600),
            tokens: Some(tokens),
            budget: Some(worst),
        }
    }

    #[test]
    fn a_key_without_a_lease_asks_for_one_once() {
        let leases = Leases::new(LIFE);
        let now = Instant::now();
        let first = leases.take("k", T, need(10, 5), now);
        assert_eq!(
            first,
            Take {
                admitted: false,
                renew: true
            }
        );
        // The renewal is under way: no second one.
        assert!(!leases.take("k", T, need(10, 5), now).renew);
        // Refused: none before half a life, then one again.
        leases.refused("k", T, now);
        assert!(!leases.take("k", T, need(10, 5), now + LIFE / 4).renew);
        assert!(leases.take("k", T, need(10, 5), now + LIFE / 2).renew);
    }

    #[test]
    fn a_lease_admits_what_it_has_and_renews_at_half() {
        let leases = Leases::new(LIFE);
        let now = Instant::now();
        let size = slices(4, 100, 40);
        leases.granted("k", T, &size, size, false, now);
        // Each admission takes a request, its tokens and its worst case.
        let t = leases.take("k", T, need(10, 10), now);
        assert_eq!(
            t,
            Take {
                admitted: true,
                renew: false
            }
        );
        assert_eq!(leases.lacking("k", T, &size), slices(1, 10, 10));
        // Two of four requests left: not below half yet; the third takes
        // the requests below half and asks for a renewal.
        assert!(!leases.take("k", T, need(10, 10), now).renew);
        let t = leases.take("k", T, need(10, 10), now);
        assert!(t.admitted && t.renew, "{t:?}");
        // The fourth still fits; a fifth does not.
        assert!(leases.take("k", T, need(10, 10), now).admitted);
        assert!(!leases.take("k", T, need(10, 10), now).admitted);
        // A renewal of what it lacks tops each part up to its slice.
        let lacking = leases.lacking("k", T, &size);
        assert_eq!(lacking, slices(4, 40, 40));
        leases.granted("k", T, &lacking, size, false, now);
        assert_eq!(leases.lacking("k", T, &size), slices(0, 0, 0));
        // A grant on a lease hold Redis no longer had: the budget left is
        // the grant's alone.
        leases.granted("k", T, &slices(0, 0, 5), size, true, now);
        assert_eq!(leases.lacking("k", T, &size), slices(0, 0, 35));
    }

    #[test]
    fn a_part_short_of_the_need_refuses_the_whole_admission() {
        let leases = Leases::new(LIFE);
        let now = Instant::now();
        let size = slices(10, 100, 40);
        leases.granted("k", T, &size, size, false, now);
        // Too many tokens, then too dear: nothing is taken from any part.
        assert!(!leases.take("k", T, need(101, 1), now).admitted);
        assert!(!leases.take("k", T, need(1, 41), now).admitted);
        assert_eq!(leases.lacking("k", T, &size), slices(0, 0, 0));
        // A limit the lease was not granted for (a budget added since) is
        // not admitted from it either.
        let rates_only = Slices {
            budget: None,
            ..size
        };
        leases.granted("r", T, &rates_only, rates_only, false, now);
        assert!(!leases.take("r", T, need(1, 1), now).admitted);
        let no_budget = Need {
            budget: None,
            ..need(1, 0)
        };
        assert!(leases.take("r", T, no_budget, now).admitted);
    }

    #[test]
    fn a_lease_ends_with_its_life_and_gives_back_its_rest() {
        let leases = Leases::new(LIFE);
        let now = Instant::now();
        let size = slices(10, 100, 40);
        leases.granted("k", T, &size, size, false, now);
        assert!(leases.take("k", T, need(10, 10), now).admitted);
        // Past half its life it asks to be renewed; past its life it
        // admits nothing more.
        assert!(leases.take("k", T, need(10, 10), now + LIFE * 3 / 4).renew);
        leases.refused("k", T, now + LIFE * 3 / 4);
        assert!(!leases.take("k", T, need(10, 10), now + LIFE).admitted);
        assert!(leases.expired(now + LIFE / 2).is_empty());
        assert_eq!(
            leases.expired(now + LIFE * 2),
            vec![("k".to_owned(), slices(8, 80, 20))]
        );
        assert!(leases.drain().is_empty());
        // Drained on stop, whatever their age.
        leases.granted("k", T, &size, size, false, now);
        assert_eq!(leases.drain(), vec![("k".to_owned(), size)]);
    }

    #[test]
    fn a_change_of_limits_leaves_the_old_lease_unused_until_given_back() {
        let leases = Leases::new(LIFE);
        let now = Instant::now();
        let size = slices(10, 100, 40);
        leases.granted("k", T, &size, size, false, now);
        // The budget lowered: nothing is admitted from the old lease, and a
        // lease for the new terms is asked for.
        let lowered = Terms {
            budget: Some(500),
            ..T
        };
        let t = leases.take("k", lowered, need(1, 1), now);
        assert_eq!(
            t,
            Take {
                admitted: false,
                renew: true
            }
        );
        assert_eq!(leases.lacking("k", T, &size), slices(0, 0, 0));
        // Both end with their lives; the old one's rest is given back whole.
        leases.refused("k", lowered, now);
        assert_eq!(leases.expired(now + LIFE * 2), vec![("k".to_owned(), size)]);
        assert!(leases.drain().is_empty());
    }

    #[test]
    fn zero_life_means_no_leases() {
        assert!(!Leases::new(Duration::ZERO).enabled());
        assert!(Leases::new(LIFE).enabled());
    }
}
