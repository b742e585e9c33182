//! The Lua scripts behind [`super::SharedLimiter`]: each check or update is
//! one script, so it is atomic in Redis however many gateways call it at
//! once. Time is Redis's own (`TIME`), so gateway clocks need not agree.
//!
//! Keys, under the configured prefix plus `limits:`:
//!
//! | key | type | what |
//! |---|---|---|
//! | `rpm:{key_id}`, `tpm:{key_id}` | string | GCRA theoretical arrival time (µs), expiring when idle |
//! | `budget:{key_id}` | hash | `spent` (seeded from the store, raised to it, plus settlements) and `reserved` (sum of holds), nano-USD |
//! | `holds:{key_id}` | hash | request id → `"{nano-USD} {gateway id} {deadline ms}"` |
//! | `holders` | set | key ids with outstanding holds, for the reconciler |
//! | `settled:{request_id}` | string | a request settled, expiring after [`SETTLED_TTL_MS`]: a settlement counts once |
//! | `gateway:{id}` | string | a gateway's heartbeat, expiring when it stops beating |
//! | `gateways` | sorted set | gateway id → last beat (ms), to count the live ones |
//!
//! The reconciler reads keys it builds from the prefix, so the scripts
//! assume one Redis (or one cluster slot), not a sharded cluster.

use std::sync::LazyLock;
use std::time::Duration;

use redis::aio::ConnectionLike;
use redis::{RedisResult, Script};

use super::Settlement;

/// Key names under one prefix.
#[derive(Debug, Clone)]
pub struct Keys {
    /// `{prefix}limits:`
    base: String,
}

impl Keys {
    #[must_use]
    pub fn new(prefix: &str) -> Keys {
        Keys {
            base: format!("{prefix}limits:"),
        }
    }

    fn rpm(&self, key_id: &str) -> String {
        format!("{}rpm:{key_id}", self.base)
    }

    fn tpm(&self, key_id: &str) -> String {
        format!("{}tpm:{key_id}", self.base)
    }

    fn account(&self, key_id: &str) -> String {
        format!("{}budget:{key_id}", self.base)
    }

    fn holds(&self, key_id: &str) -> String {
        format!("{}holds:{key_id}", self.base)
    }

    fn holders(&self) -> String {
        format!("{}holders", self.base)
    }

    fn settled(&self, request_id: &str) -> String {
        format!("{}settled:{request_id}", self.base)
    }

    fn gateway(&self, id: &str) -> String {
        format!("{}gateway:{id}", self.base)
    }

    fn gateways(&self) -> String {
        format!("{}gateways", self.base)
    }
}

/// GCRA over one key: `limit` per minute, a burst of `limit`, charging
/// `n`. Returns `{1, 0}` when admitted, `{0, wait_us}` when not.
static GCRA: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tau = interval * tonumber(ARGV[2])
local n = tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]))
if (not tat) or tat < now then tat = now end
local new_tat = tat + n * interval
local allow_at = new_tat - tau
if allow_at > now then
  return {0, math.ceil(allow_at - now)}
end
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', math.ceil((new_tat - now) / 1000) + 1)
return {1, 0}
",
    )
});

/// How long a settlement is remembered, so that it counts once. A call
/// that timed out may still run: a stalled Redis runs the commands queued
/// on its connections when it resumes, while the gateway, which could not
/// know, sends the settlement again once Redis answers a heartbeat (within
/// a second of coming back, plus the time to send what it queued). Two
/// minutes covers both, for one short key per request.
pub const SETTLED_TTL_MS: u64 = 120_000;

/// Holds `worst` for a request if the budget allows it (see
/// [`super::check_budget`], the same rule). Idempotent per request id, and
/// a no-op for a request already settled (a timed-out reserve that Redis
/// ran late, after the request ended on a fallback hold). Also marks the
/// calling gateway alive, so no reconciler can release the hold before the
/// gateway's first heartbeat.
static RESERVE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local account, holds, holders, gateway, settled = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local key_id, request_id, worst, budget, stored = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[5]
local gateway_id, gateway_ttl, hold_ttl = ARGV[6], tonumber(ARGV[7]), tonumber(ARGV[8])
if redis.call('EXISTS', gateway) == 0 then
  redis.call('SET', gateway, '1', 'PX', gateway_ttl)
end
redis.call('HSETNX', account, 'spent', stored)
local spent = tonumber(redis.call('HGET', account, 'spent'))
if tonumber(stored) > spent then
  redis.call('HSET', account, 'spent', stored)
  spent = tonumber(stored)
end
local reserved = tonumber(redis.call('HGET', account, 'reserved') or '0')
if redis.call('HEXISTS', holds, request_id) == 1 or redis.call('EXISTS', settled) == 1 then
  return {1, spent, reserved}
end
if spent >= budget or spent + reserved + worst > budget then
  return {0, spent, reserved}
end
local t = redis.call('TIME')
local deadline = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + hold_ttl
redis.call('HINCRBY', account, 'reserved', ARGV[3])
redis.call('HSET', holds, request_id, ARGV[3] .. ' ' .. gateway_id .. ' ' .. string.format('%.0f', deadline))
redis.call('SADD', holders, key_id)
return {1, spent, reserved + worst}
",
    )
});

/// Releases a request's hold (if still there) and adds its actual spend,
/// but only to a spend figure that exists: a restarted Redis seeds the
/// figure again from the store, which will hold this spend. Only the first
/// settlement of a request counts (see [`SETTLED_TTL_MS`]). Returns the
/// amount released.
static SETTLE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local account, holds, holders, settled = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local key_id, request_id, actual = ARGV[1], ARGV[2], ARGV[3]
if not redis.call('SET', settled, '1', 'NX', 'PX', ARGV[4]) then
  return 0
end
local released = 0
local hold = redis.call('HGET', holds, request_id)
if hold then
  released = tonumber(string.match(hold, '^(%d+)')) or 0
  redis.call('HDEL', holds, request_id)
  local left = redis.call('HINCRBY', account, 'reserved', -released)
  if left < 0 then redis.call('HSET', account, 'reserved', '0') end
end
if tonumber(actual) > 0 and redis.call('HEXISTS', account, 'spent') == 1 then
  redis.call('HINCRBY', account, 'spent', actual)
end
if redis.call('HLEN', holds) == 0 then
  redis.call('SREM', holders, key_id)
end
return released
",
    )
});

/// Releases every hold whose deadline passed and, when `ARGV[2]` is `1`,
/// every hold whose gateway stopped beating (killed). Returns how many it
/// released.
static RECONCILE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local holders, base, release_dead = KEYS[1], ARGV[1], ARGV[2] == '1'
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local released = 0
for _, key_id in ipairs(redis.call('SMEMBERS', holders)) do
  local holds = base .. 'holds:' .. key_id
  local account = base .. 'budget:' .. key_id
  local all = redis.call('HGETALL', holds)
  for i = 1, #all, 2 do
    local amount, gateway, deadline = string.match(all[i + 1], '^(%d+) (%S+) (%d+)$')
    if (not amount) or tonumber(deadline) < now
        or (release_dead and redis.call('EXISTS', base .. 'gateway:' .. gateway) == 0) then
      redis.call('HDEL', holds, all[i])
      if amount then
        local left = redis.call('HINCRBY', account, 'reserved', -tonumber(amount))
        if left < 0 then redis.call('HSET', account, 'reserved', '0') end
      end
      released = released + 1
    end
  end
  if redis.call('HLEN', holds) == 0 then
    redis.call('SREM', holders, key_id)
  end
end
return released
",
    )
});

/// Marks a gateway alive for `ttl` ms and returns how many gateways beat
/// within the last `ttl` ms (itself included).
static HEARTBEAT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local gateway, gateways, id, ttl = KEYS[1], KEYS[2], ARGV[1], tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('SET', gateway, '1', 'PX', ttl)
redis.call('ZADD', gateways, now, id)
redis.call('ZREMRANGEBYSCORE', gateways, '-inf', now - ttl)
return redis.call('ZCARD', gateways)
",
    )
});

/// One key's limit for [`gcra`].
#[derive(Debug, Clone, Copy)]
pub enum Rate {
    Requests,
    Tokens,
}

/// Charges `n` against `limit` per minute on `key_id`'s bucket. `Ok(None)`:
/// admitted; `Ok(Some(wait))`: refused until `wait` has passed.
pub async fn gcra<C: ConnectionLike + Send>(
    con: &mut C,
    keys: &Keys,
    rate: Rate,
    key_id: &str,
    limit: u32,
    n: u32,
) -> RedisResult<Option<Duration>> {
    let key = match rate {
        Rate::Requests => keys.rpm(key_id),
        Rate::Tokens => keys.tpm(key_id),
    };
    let interval_us = 60_000_000.0 / f64::from(limit.max(1));
    let (admitted, wait_us): (i64, i64) = GCRA
        .key(key)
        .arg(interval_us)
        .arg(limit)
        .arg(n)
        .invoke_async(con)
        .await?;
    Ok((admitted == 0).then(|| Duration::from_micros(wait_us.max(0).cast_unsigned())))
}

/// What [`reserve`] is asked to hold, all money in nano-USD.
#[derive(Debug, Clone, Copy)]
pub struct Hold<'a> {
    pub key_id: &'a str,
    pub request_id: &'a str,
    pub budget: i64,
    pub stored_spent: i64,
    pub worst: i64,
    pub gateway_id: &'a str,
    /// How long the gateway's mark lives if it has none yet.
    pub gateway_ttl_ms: u64,
    /// How long the hold may outlive its request before the reconciler
    /// releases it anyway.
    pub hold_ttl_ms: u64,
}

/// The answer of [`reserve`]: whether the hold was made, and the key's
/// figures seen (before this hold when refused, after it when made).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reserved {
    pub admitted: bool,
    pub spent: i64,
    pub reserved: i64,
}

pub async fn reserve<C: ConnectionLike + Send>(
    con: &mut C,
    keys: &Keys,
    hold: &Hold<'_>,
) -> RedisResult<Reserved> {
    let (admitted, spent, reserved): (i64, i64, i64) = RESERVE
        .key(keys.account(hold.key_id))
        .key(keys.holds(hold.key_id))
        .key(keys.holders())
        .key(keys.gateway(hold.gateway_id))
        .key(keys.settled(hold.request_id))
        .arg(hold.key_id)
        .arg(hold.request_id)
        .arg(hold.worst)
        .arg(hold.budget)
        .arg(hold.stored_spent)
        .arg(hold.gateway_id)
        .arg(hold.gateway_ttl_ms)
        .arg(hold.hold_ttl_ms)
        .invoke_async(con)
        .await?;
    Ok(Reserved {
        admitted: admitted == 1,
        spent,
        reserved,
    })
}

/// Releases the hold of `s` and counts its spend, once per request however
/// often it is sent; returns the amount released (0 when the hold was
/// already gone, or the request already settled).
pub async fn settle<C: ConnectionLike + Send>(
    con: &mut C,
    keys: &Keys,
    s: &Settlement,
) -> RedisResult<i64> {
    SETTLE
        .key(keys.account(&s.key_id))
        .key(keys.holds(&s.key_id))
        .key(keys.holders())
        .key(keys.settled(&s.request_id))
        .arg(&s.key_id)
        .arg(&s.request_id)
        .arg(s.actual_nusd)
        .arg(SETTLED_TTL_MS)
        .invoke_async(con)
        .await
}

/// Releases the holds past their deadline and, with `release_dead`, those
/// of gateways that stopped beating.
pub async fn reconcile<C: ConnectionLike + Send>(
    con: &mut C,
    keys: &Keys,
    release_dead: bool,
) -> RedisResult<i64> {
    RECONCILE
        .key(keys.holders())
        .arg(&keys.base)
        .arg(if release_dead { "1" } else { "0" })
        .invoke_async(con)
        .await
}

/// Beats for `gateway_id`; returns the number of live gateways.
pub async fn heartbeat<C: ConnectionLike + Send>(
    con: &mut C,
    keys: &Keys,
    gateway_id: &str,
    ttl_ms: u64,
) -> RedisResult<u32> {
    HEARTBEAT
        .key(keys.gateway(gateway_id))
        .key(keys.gateways())
        .arg(gateway_id)
        .arg(ttl_ms)
        .invoke_async(con)
        .await
}

/// Removes a stopping gateway from the live set at once.
pub async fn leave<C: ConnectionLike + Send>(
    con: &mut C,
    keys: &Keys,
    gateway_id: &str,
) -> RedisResult<()> {
    redis::pipe()
        .del(keys.gateway(gateway_id))
        .zrem(keys.gateways(), gateway_id)
        .query_async(con)
        .await
}

/// A key's `(spent, reserved)` in nano-USD, if Redis has an account for it.
pub async fn figures<C: ConnectionLike + Send>(
    con: &mut C,
    keys: &Keys,
    key_id: &str,
) -> RedisResult<Option<(i64, i64)>> {
    let (spent, reserved): (Option<i64>, Option<i64>) = redis::cmd("HMGET")
        .arg(keys.account(key_id))
        .arg("spent")
        .arg("reserved")
        .query_async(con)
        .await?;
    Ok(spent.map(|s| (s, reserved.unwrap_or(0))))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    //! Against the real Redis (`TEST_REDIS_URL`, default
    //! `redis://127.0.0.1:6379`), each test under a prefix of its own.

    use redis::aio::MultiplexedConnection;

    use super::*;

    async fn redis() -> (MultiplexedConnection, Keys) {
        let url =
            std::env::var("TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
        let client = redis::Client::open(url).unwrap();
        let con = client
            .get_multiplexed_async_connection()
            .await
            .expect("Redis must run for these tests (scripts/services.sh starts it)");
        let prefix = format!("test:{}:", uuid::Uuid::new_v4().simple());
        (con, Keys::new(&prefix))
    }

    fn hold<'a>(request_id: &'a str, gateway_id: &'a str, worst: i64) -> Hold<'a> {
        Hold {
            key_id: "k",
            request_id,
            budget: 100,
            stored_spent: 0,
            worst,
            gateway_id,
            gateway_ttl_ms: 60_000,
            hold_ttl_ms: 60_000,
        }
    }

    fn settlement(request_id: &str, actual: i64) -> Settlement {
        Settlement {
            key_id: "k".into(),
            request_id: request_id.into(),
            actual_nusd: actual,
        }
    }

    #[tokio::test]
    async fn gcra_admits_the_burst_then_says_how_long_to_wait() {
        let (mut con, keys) = redis().await;
        for _ in 0..3 {
            let r = gcra(&mut con, &keys, Rate::Requests, "k", 3, 1)
                .await
                .unwrap();
            assert_eq!(r, None);
        }
        let wait = gcra(&mut con, &keys, Rate::Requests, "k", 3, 1)
            .await
            .unwrap()
            .expect("the fourth request in a minute is refused");
        // One request replenishes every 20 s.
        assert!(
            wait > Duration::from_secs(15) && wait <= Duration::from_secs(20),
            "{wait:?}"
        );
        // Tokens are a separate bucket, charged n at a time.
        assert_eq!(
            gcra(&mut con, &keys, Rate::Tokens, "k", 100, 60)
                .await
                .unwrap(),
            None
        );
        assert!(gcra(&mut con, &keys, Rate::Tokens, "k", 100, 60)
            .await
            .unwrap()
            .is_some());
        assert_eq!(
            gcra(&mut con, &keys, Rate::Tokens, "k", 100, 40)
                .await
                .unwrap(),
            None
        );
        // Another key has its own bucket.
        assert_eq!(
            gcra(&mut con, &keys, Rate::Requests, "other", 3, 1)
                .await
                .unwrap(),
            None
        );
    }

    #[tokio::test]
    async fn gcra_is_atomic_under_concurrent_callers() {
        let (con, keys) = redis().await;
        let calls = (0..50).map(|_| {
            let (mut con, keys) = (con.clone(), keys.clone());
            async move {
                gcra(&mut con, &keys, Rate::Requests, "k", 10, 1)
                    .await
                    .unwrap()
            }
        });
        let admitted = futures::future::join_all(calls)
            .await
            .into_iter()
            .filter(Option::is_none)
            .count();
        assert_eq!(admitted, 10);
    }

    #[tokio::test]
    async fn reserve_settle_and_the_budget_rule() {
        let (mut con, keys) = redis().await;
        // Budget 100: holds of 40 and 40 fit, a third does not.
        assert!(
            reserve(&mut con, &keys, &hold("a", "g1", 40))
                .await
                .unwrap()
                .admitted
        );
        assert!(
            reserve(&mut con, &keys, &hold("b", "g1", 40))
                .await
                .unwrap()
                .admitted
        );
        let refused = reserve(&mut con, &keys, &hold("c", "g1", 40))
            .await
            .unwrap();
        assert_eq!(
            refused,
            Reserved {
                admitted: false,
                spent: 0,
                reserved: 80
            }
        );
        // Reserving the same request twice holds once.
        assert!(
            reserve(&mut con, &keys, &hold("a", "g1", 40))
                .await
                .unwrap()
                .admitted
        );
        assert_eq!(figures(&mut con, &keys, "k").await.unwrap(), Some((0, 80)));
        // `a` cost 10: 40 released, 10 spent; settling again (a retry of a
        // call that timed out but ran) releases and counts nothing, and a
        // reserve that Redis runs after the settlement holds nothing.
        assert_eq!(
            settle(&mut con, &keys, &settlement("a", 10)).await.unwrap(),
            40
        );
        assert_eq!(figures(&mut con, &keys, "k").await.unwrap(), Some((10, 40)));
        assert_eq!(
            settle(&mut con, &keys, &settlement("a", 10)).await.unwrap(),
            0
        );
        assert!(
            reserve(&mut con, &keys, &hold("a", "g1", 40))
                .await
                .unwrap()
                .admitted
        );
        assert_eq!(figures(&mut con, &keys, "k").await.unwrap(), Some((10, 40)));
        assert!(
            reserve(&mut con, &keys, &hold("c", "g1", 50))
                .await
                .unwrap()
                .admitted
        );
        assert!(
            !reserve(&mut con, &keys, &hold("d", "g1", 1))
                .await
                .unwrap()
                .admitted
        );
        // The stored figure raises spend, never lowers it.
        let mut raised = hold("e", "g1", 1);
        raised.stored_spent = 60;
        let r = reserve(&mut con, &keys, &raised).await.unwrap();
        assert_eq!((r.admitted, r.spent), (false, 60));
        raised.stored_spent = 5;
        assert_eq!(reserve(&mut con, &keys, &raised).await.unwrap().spent, 60);
    }

    #[tokio::test]
    async fn reserve_is_exact_under_concurrent_callers() {
        let (con, keys) = redis().await;
        let ids: Vec<String> = (0..60).map(|i| format!("r{i}")).collect();
        let calls = ids.iter().map(|id| {
            let (mut con, keys) = (con.clone(), keys.clone());
            async move {
                reserve(&mut con, &keys, &hold(id, "g1", 10))
                    .await
                    .unwrap()
                    .admitted
            }
        });
        let admitted = futures::future::join_all(calls)
            .await
            .into_iter()
            .filter(|a| *a)
            .count();
        assert_eq!(admitted, 10);
    }

    #[tokio::test]
    async fn spend_is_not_counted_into_a_figure_redis_lost() {
        let (mut con, keys) = redis().await;
        // No account (a restarted Redis): the settlement only releases.
        assert_eq!(
            settle(&mut con, &keys, &settlement("x", 10)).await.unwrap(),
            0
        );
        assert_eq!(figures(&mut con, &keys, "k").await.unwrap(), None);
    }

    #[tokio::test]
    async fn the_reconciler_releases_holds_of_dead_gateways_and_past_deadlines() {
        let (mut con, keys) = redis().await;
        assert_eq!(
            heartbeat(&mut con, &keys, "alive", 60_000).await.unwrap(),
            1
        );
        assert!(
            reserve(&mut con, &keys, &hold("a", "alive", 10))
                .await
                .unwrap()
                .admitted
        );
        // A gateway whose mark expires, as a SIGKILLed one's does.
        let mut dying = hold("b", "dead", 20);
        dying.gateway_ttl_ms = 1;
        assert!(reserve(&mut con, &keys, &dying).await.unwrap().admitted);
        // A live gateway's hold past its deadline.
        let mut late = hold("c", "alive", 30);
        late.hold_ttl_ms = 0;
        assert!(reserve(&mut con, &keys, &late).await.unwrap().admitted);
        assert_eq!(figures(&mut con, &keys, "k").await.unwrap(), Some((0, 60)));
        // Redis expires the dead gateway's mark within milliseconds.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while std::time::Instant::now() < deadline {
            let exists: bool = redis::cmd("EXISTS")
                .arg(keys.gateway("dead"))
                .query_async(&mut con)
                .await
                .unwrap();
            if !exists {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Until the caller has seen Redis answer steadily, a missing mark
        // may be a Redis stall's, not a death: only the deadline counts.
        assert_eq!(reconcile(&mut con, &keys, false).await.unwrap(), 1);
        assert_eq!(figures(&mut con, &keys, "k").await.unwrap(), Some((0, 30)));
        assert_eq!(reconcile(&mut con, &keys, true).await.unwrap(), 1);
        assert_eq!(figures(&mut con, &keys, "k").await.unwrap(), Some((0, 10)));
        // The live one's hold stays until settled, then the holder set empties.
        assert_eq!(
            settle(&mut con, &keys, &settlement("a", 7)).await.unwrap(),
            10
        );
        assert_eq!(reconcile(&mut con, &keys, true).await.unwrap(), 0);
        let holders: Vec<String> = redis::cmd("SMEMBERS")
            .arg(keys.holders())
            .query_async(&mut con)
            .await
            .unwrap();
        assert!(holders.is_empty());
        assert_eq!(figures(&mut con, &keys, "k").await.unwrap(), Some((7, 0)));
    }

    #[tokio::test]
    async fn heartbeats_count_live_gateways_and_leave_removes_one() {
        let (mut con, keys) = redis().await;
        assert_eq!(heartbeat(&mut con, &keys, "g1", 60_000).await.unwrap(), 1);
        assert_eq!(heartbeat(&mut con, &keys, "g2", 60_000).await.unwrap(), 2);
        assert_eq!(heartbeat(&mut con, &keys, "g1", 60_000).await.unwrap(), 2);
        leave(&mut con, &keys, "g2").await.unwrap();
        assert_eq!(heartbeat(&mut con, &keys, "g1", 60_000).await.unwrap(), 1);
    }
}
