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
//! | `settled:{id}` | string | a settlement (a request's, or a batch's of leased requests) or a lease's give-back done, expiring after [`SETTLED_TTL_MS`]: each counts once |
//! | `settled:lease:{grant id}` | string | `granted` once a lease grant ran, `revoked` once revoked (it can no longer run); same expiry |
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

    pub(crate) fn holds(&self, key_id: &str) -> String {
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

/// Every admission check of one request, all or nothing: the key's
/// requests/min and tokens/min (GCRA: `limit` per minute, a burst of
/// `limit`) and its budget hold. Nothing is written unless all pass, so a
/// request refused by one check costs the others nothing, and the request
/// path waits on Redis once.
///
/// `KEYS`: rpm, tpm, account, holds, holders, gateway, settled. `ARGV`:
/// the rpm interval (µs) and limit (0: none), the tpm interval, limit and
/// tokens, then the hold (see [`Hold`]; an empty key id: no hold).
///
/// The hold follows [`super::check_budget`]'s rule. It is idempotent per
/// request id, and a no-op for a request already settled (an admission
/// that timed out and that Redis ran late, after the request ended on a
/// fallback hold). It also marks the calling gateway alive, so no
/// reconciler can release it before the gateway's first heartbeat.
///
/// Returns `{0, spent, reserved}` when admitted (reserved after the hold),
/// `{1, wait_µs}` or `{2, wait_µs}` when the requests or tokens rate
/// refuses, and `{3, spent, reserved}` when the budget does.
static ADMIT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{PRELUDE}{}",
        r"
local rpm_tat, tpm_tat, wait
if tonumber(ARGV[2]) > 0 then
  rpm_tat, wait = gcra(KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2]), 1)
  if not rpm_tat then return {1, wait} end
end
if tonumber(ARGV[4]) > 0 then
  tpm_tat, wait = gcra(KEYS[2], tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5]))
  if not tpm_tat then return {2, wait} end
end
local spent, reserved = 0, 0
local key_id = ARGV[6]
if key_id ~= '' then
  local account, holds, holders, settled = KEYS[3], KEYS[4], KEYS[5], KEYS[7]
  local request_id, worst, budget = ARGV[7], tonumber(ARGV[8]), tonumber(ARGV[9])
  local gateway_id, hold_ttl = ARGV[11], tonumber(ARGV[13])
  mark_alive(KEYS[6], ARGV[12])
  spent, reserved = figures(account, ARGV[10])
  if redis.call('HEXISTS', holds, request_id) == 0 and redis.call('EXISTS', settled) == 0 then
    if spent >= budget or spent + reserved + worst > budget then
      return {3, spent, reserved}
    end
    redis.call('HINCRBY', account, 'reserved', ARGV[8])
    redis.call('HSET', holds, request_id, hold_value(ARGV[8], gateway_id, hold_ttl))
    redis.call('SADD', holders, key_id)
    reserved = reserved + worst
  end
end
charge(KEYS[1], rpm_tat)
charge(KEYS[2], tpm_tat)
return {0, spent, reserved}
"
    ))
});

/// The functions [`ADMIT`], [`LEASE`] and [`UNLEASE`] share: Redis's time
/// in µs, the GCRA step (`limit` per minute as one emission every
/// `interval` µs, a burst of `limit`; the new arrival time, or nothing and
/// the wait), writing an arrival time back, a gateway's mark, a budget's
/// figures (spend seeded from the store's figure and raised to it), and a
/// hold's value.
const PRELUDE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local function gcra(key, interval, limit, n)
  local tat = tonumber(redis.call('GET', key))
  if (not tat) or tat < now then tat = now end
  local new_tat = tat + n * interval
  local allow_at = new_tat - interval * limit
  if allow_at > now then return nil, math.ceil(allow_at - now) end
  return new_tat
end
local function charge(key, tat)
  if tat then
    redis.call('SET', key, string.format('%.0f', tat), 'PX', math.ceil((tat - now) / 1000) + 1)
  end
end
local function mark_alive(gateway, ttl)
  if redis.call('EXISTS', gateway) == 0 then
    redis.call('SET', gateway, '1', 'PX', ttl)
  end
end
local function figures(account, stored)
  redis.call('HSETNX', account, 'spent', stored)
  local spent = tonumber(redis.call('HGET', account, 'spent'))
  if tonumber(stored) > spent then
    redis.call('HSET', account, 'spent', stored)
    spent = tonumber(stored)
  end
  return spent, tonumber(redis.call('HGET', account, 'reserved') or '0')
end
local function hold_value(amount, gateway_id, ttl_ms)
  if type(amount) == 'number' then amount = string.format('%.0f', amount) end
  local deadline = math.floor(now / 1000) + ttl_ms
  return amount .. ' ' .. gateway_id .. ' ' .. string.format('%.0f', deadline)
end
";

/// The functions [`SETTLE`], [`UNLEASE`] and [`RECONCILE`] share:
/// releasing an amount from a key's reserved sum (never below 0, and
/// nothing for 0: Lua writes minus zero as `-0`, which Redis refuses as an
/// integer), and taking up to an amount from a lease hold, whose value keeps
/// its gateway and deadline (what was taken and what is left; nothing for a
/// hold that is missing or malformed).
const HOLD_FNS: &str = r"
local function unreserve(account, amount)
  if amount > 0 then
    local left = redis.call('HINCRBY', account, 'reserved', -amount)
    if left < 0 then redis.call('HSET', account, 'reserved', '0') end
  end
end
local function draw_lease(holds, field, amount)
  local held, gateway_id, deadline =
    string.match(redis.call('HGET', holds, field) or '', '^(%d+) (%S+) (%d+)$')
  if not held then return 0, nil end
  local taken = math.min(tonumber(held), amount)
  local rest = tonumber(held) - taken
  redis.call('HSET', holds, field, string.format('%.0f', rest) .. ' ' .. gateway_id .. ' ' .. deadline)
  return taken, rest
end
";

/// A lease: a slice of a key's rates and budget granted to one gateway
/// ahead of need, from which it admits requests without a round trip
/// (`super::lease`). All or nothing, like [`ADMIT`]: each rate is charged
/// the slice's count at once (GCRA, as if that many requests arrived now),
/// and the budget slice is added to the gateway's lease hold, a hold like a
/// request's (field `lease:{gateway id}` of `holds:{key_id}`, the same
/// value format, so the reconciler releases a dead gateway's lease as it
/// releases its requests' holds), which also takes a fresh deadline. A
/// slice of nothing still checks its limit: a lease of no budget is only
/// granted while spend is below the budget.
///
/// Each grant is named, and its marker (`settled:lease:{grant id}`) says
/// whether it ran: `granted`, or `revoked` by a later [`UNLEASE`] in revoke
/// mode. A call that timed out may still run (a stalled Redis runs what
/// queued once it resumes), and the gateway, which took it for refused,
/// would never give that slice back: it revokes the grant instead, which
/// gives the slice back if the grant ran and stops it from running later
/// if not.
///
/// `KEYS`: rpm, tpm, account, holds, holders, gateway, the grant's marker.
/// `ARGV`: the rpm
/// interval, limit (0: none) and slice; the tpm interval, limit and slice;
/// then the key id (empty: no budget), the lease's field, the budget slice,
/// the budget, the stored spend, the gateway id, its mark's ttl and the
/// hold's ttl (ms).
///
/// Returns `{0, spent, reserved, lost}` when granted, where `lost` is 1 if
/// the gateway had no lease hold (never had one, gave it back, or Redis
/// lost it), `{1 | 2, wait_µs}` when a rate refuses, `{3, spent, reserved}`
/// when the budget does, `{4}` when the grant was revoked before it ran.
static LEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{PRELUDE}{}{SETTLED_TTL_MS}{}",
        r"
if redis.call('EXISTS', KEYS[7]) == 1 then return {4} end
local rpm_tat, tpm_tat, wait
if tonumber(ARGV[2]) > 0 and tonumber(ARGV[3]) > 0 then
  rpm_tat, wait = gcra(KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]))
  if not rpm_tat then return {1, wait} end
end
if tonumber(ARGV[5]) > 0 and tonumber(ARGV[6]) > 0 then
  tpm_tat, wait = gcra(KEYS[2], tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6]))
  if not tpm_tat then return {2, wait} end
end
local spent, reserved, lost = 0, 0, 0
local key_id = ARGV[7]
if key_id ~= '' then
  local account, holds, field = KEYS[3], KEYS[4], ARGV[8]
  local slice, budget = tonumber(ARGV[9]), tonumber(ARGV[10])
  mark_alive(KEYS[6], ARGV[13])
  spent, reserved = figures(account, ARGV[11])
  if spent >= budget or spent + reserved + slice > budget then
    return {3, spent, reserved}
  end
  local held = 0
  local lease = redis.call('HGET', holds, field)
  if lease then held = tonumber(string.match(lease, '^(%d+)')) or 0 else lost = 1 end
  if slice > 0 then
    redis.call('HINCRBY', account, 'reserved', ARGV[9])
    reserved = reserved + slice
  end
  redis.call('HSET', holds, field, hold_value(held + slice, ARGV[12], tonumber(ARGV[14])))
  redis.call('SADD', KEYS[5], key_id)
end
charge(KEYS[1], rpm_tat)
charge(KEYS[2], tpm_tat)
redis.call('SET', KEYS[7], 'granted', 'PX', ",
        r"
)
return {0, spent, reserved, lost}
"
    ))
});

/// Gives back what a lease did not use: each rate's arrival time moves
/// back by the unused count (never before now), and the unused budget
/// leaves the lease hold and the key's reserved sum; a lease hold left at
/// nothing is removed. Each give-back counts once, like a settlement (a
/// call that timed out may have run, and is sent again).
///
/// In revoke mode (`ARGV[9]` is `1`) it gives back a whole grant whose
/// answer was lost, but only if [`LEASE`] ran it; either way the grant's
/// marker then says `revoked`, so the grant can no longer run and a second
/// revoke gives back nothing.
///
/// `KEYS`: rpm, tpm, account, holds, holders, the marker (the give-back's,
/// or in revoke mode the grant's). `ARGV`: the rpm interval and unused
/// requests, the tpm interval and unused tokens, the key id, the lease's
/// field, the unused budget, the marker's ttl and the mode.
static UNLEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{PRELUDE}{HOLD_FNS}{}",
        r"
if ARGV[9] == '1' then
  local was = redis.call('GET', KEYS[6])
  redis.call('SET', KEYS[6], 'revoked', 'PX', ARGV[8])
  if was ~= 'granted' then return 0 end
elseif not redis.call('SET', KEYS[6], '1', 'NX', 'PX', ARGV[8]) then
  return 0
end
local function give_back(key, interval, n)
  local tat = tonumber(redis.call('GET', key))
  if n <= 0 or not tat then return end
  local back = tat - n * interval
  if back <= now then
    redis.call('DEL', key)
  else
    charge(key, back)
  end
end
give_back(KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2]))
give_back(KEYS[2], tonumber(ARGV[3]), tonumber(ARGV[4]))
local holds, field = KEYS[4], ARGV[6]
local back, rest = draw_lease(holds, field, tonumber(ARGV[7]))
unreserve(KEYS[3], back)
if rest == 0 then
  redis.call('HDEL', holds, field)
end
if redis.call('HLEN', holds) == 0 then
  redis.call('SREM', KEYS[5], ARGV[5])
end
return 0
"
    ))
});

/// How long a settlement is remembered, so that it counts once. A call
/// that timed out may still run: a stalled Redis runs the commands queued
/// on its connections when it resumes, while the gateway, which could not
/// know, sends the settlement again once Redis answers a heartbeat (within
/// a second of coming back, plus the time to send what it queued). Two
/// minutes covers both, for one short key per request.
pub const SETTLED_TTL_MS: u64 = 120_000;

/// Releases a request's hold (if still there) and adds its actual spend,
/// but only to a spend figure that exists: a restarted Redis seeds the
/// figure again from the store, which will hold this spend. Only the first
/// settlement of a request counts (see [`SETTLED_TTL_MS`]). A request
/// admitted from a lease (`ARGV[5]`, the lease's field, not empty) had no
/// hold of its own: its worst case (`ARGV[6]`) leaves the lease hold
/// instead, which stays, however small, until the gateway gives it back or
/// the reconciler releases it. Returns the amount released.
///
/// A hold of nothing (a request whose backends are all free) is released
/// without `HINCRBY` ([`HOLD_FNS`]' `unreserve`, which the reconciler and
/// the give-back use too).
static SETTLE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{HOLD_FNS}{}",
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
elseif ARGV[5] ~= '' then
  released = draw_lease(holds, ARGV[5], tonumber(ARGV[6]))
end
unreserve(account, released)
if tonumber(actual) > 0 and redis.call('HEXISTS', account, 'spent') == 1 then
  redis.call('HINCRBY', account, 'spent', actual)
end
if redis.call('HLEN', holds) == 0 then
  redis.call('SREM', holders, key_id)
end
return released
"
    ))
});

/// Releases every hold whose deadline passed and, when `ARGV[2]` is `1`,
/// every hold whose gateway stopped beating (killed). Returns how many it
/// released.
static RECONCILE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{HOLD_FNS}{}",
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
      unreserve(account, tonumber(amount) or 0)
      released = released + 1
    end
  end
  if redis.call('HLEN', holds) == 0 then
    redis.call('SREM', holders, key_id)
  end
end
return released
"
    ))
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

/// A budget hold for [`admit`]: the request's worst case, in nano-USD.
#[derive(Debug, Clone, Copy)]
pub struct Hold<'a> {
    pub request_id: &'a str,
    pub worst: i64,
    pub terms: BudgetTerms<'a>,
}

/// What [`admit`] checks for one request of one key.
#[derive(Debug, Clone, Copy)]
pub struct Admit<'a> {
    pub key_id: &'a str,
    /// The key's requests/min, if limited.
    pub requests_per_min: Option<u32>,
    /// The key's tokens/min, if limited, and the tokens to charge.
    pub tokens: Option<(u32, u32)>,
    pub hold: Option<Hold<'a>>,
}

/// The answer of [`admit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Admitted; the key's budget figures after the hold (both 0 without
    /// a hold).
    Admitted { spent: i64, reserved: i64 },
    /// The requests rate refused; admitted again after the wait.
    Requests(Duration),
    /// The tokens rate refused.
    Tokens(Duration),
    /// The budget refused; its figures as they stand.
    Budget { spent: i64, reserved: i64 },
}

/// Runs every check of `a` in one round trip (see [`ADMIT`]).
pub async fn admit<C: ConnectionLike + Send>(
    con: &mut C,
    keys: &Keys,
    a: &Admit<'_>,
) -> RedisResult<Verdict> {
    let rpm = a.requests_per_min.unwrap_or(0);
    let (tpm, tokens) = a.tokens.unwrap_or((0, 0));
    // Without a hold its keys are named all the same (the script leaves
    // them alone), so every call passes the same seven.
    let (request_id, gateway_id) = a
        .hold
        .map_or(("", ""), |h| (h.request_id, h.terms.gateway_id));
    let mut call = ADMIT.key(keys.rpm(a.key_id));
    call.key(keys.tpm(a.key_id))
        .key(keys.account(a.key_id))
        .key(keys.holds(a.key_id))
        .key(keys.holders())
        .key(keys.gateway(gateway_id))
        .key(keys.settled(request_id))
        .arg(interval_us(rpm))
        .arg(rpm)
        .arg(interval_us(tpm))
        .arg(tpm)
        .arg(tokens);
    match a.hold {
        Some(h) => call
            .arg(a.key_id)
            .arg(h.request_id)
            .arg(h.worst)
            .arg(h.terms.budget)
            .arg(h.terms.stored_spent)
            .arg(h.terms.gateway_id)
            .arg(h.terms.gateway_ttl_ms)
            .arg(h.terms.hold_ttl_ms),
        None => call.arg(""),
    };
    Ok(verdict(&call.invoke_async::<Vec<i64>>(con).await?))
}

/// Reads the answer of [`ADMIT`] or [`LEASE`].
fn verdict(answer: &[i64]) -> Verdict {
    let at = |i: usize| answer.get(i).copied().unwrap_or(0);
    let wait = || Duration::from_micros(at(1).max(0).cast_unsigned());
    match at(0) {
        1 => Verdict::Requests(wait()),
        2 => Verdict::Tokens(wait()),
        3 => Verdict::Budget {
            spent: at(1),
            reserved: at(2),
        },
        _ => Verdict::Admitted {
            spent: at(1),
            reserved: at(2),
        },
    }
}

/// Settles every one of `batch` in one round trip: a pipeline that loads
/// the script first (so a restarted Redis cannot answer `NOSCRIPT`), then
/// runs it once per settlement. An error may leave some settled and some
/// not; sending them again is safe, since each counts once. Settlements
/// drawn from a lease draw from `gateway_id`'s.
pub async fn settle_batch<C: ConnectionLike + Send>(
    con: &mut C,
    keys: &Keys,
    batch: &[Settlement],
    gateway_id: &str,
) -> RedisResult<()> {
    let lease = lease_field(gateway_id);
    let calls: Vec<_> = batch.iter().map(|s| settle_call(keys, s, &lease)).collect();
    let mut pipe = redis::pipe();
    pipe.load_script(&SETTLE).ignore();
    for call in &calls {
        pipe.invoke_script(call).ignore();
    }
    pipe.query_async(con).await
}

fn settle_call<'a>(keys: &Keys, s: &Settlement, lease: &str) -> redis::ScriptInvocation<'a> {
    let mut call = SETTLE.key(keys.account(&s.key_id));
    call.key(keys.holds(&s.key_id))
        .key(keys.holders())
        .key(keys.settled(&s.request_id))
        .arg(&s.key_id)
        .arg(&s.request_id)
        .arg(s.actual_nusd)
        .arg(SETTLED_TTL_MS);
    match s.drawn {
        Some(drawn) => call.arg(lease).arg(drawn),
        None => call.arg("").arg(0),
    };
    call
}

/// The field of `holds:{key_id}` that holds a gateway's lease of the key's
/// budget.
#[must_use]
pub fn lease_field(gateway_id: &str) -> String {
    format!("lease:{gateway_id}")
}

/// One rate's part of a lease: the key's limit per minute and a count
/// (requests or tokens).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RateSlice {
    pub limit: u32,
    pub count: u64,
}

/// The parts of a lease (asked for, granted, left or given back); `None`:
/// the lease has no such part.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Slices {
    pub requests: Option<RateSlice>,
    pub tokens: Option<RateSlice>,
    /// Nano-USD.
    pub budget: Option<i64>,
}

/// The terms a budget hold or lease is made on, money in nano-USD.
#[derive(Debug, Clone, Copy)]
pub struct BudgetTerms<'a> {
    pub budget: i64,
    pub stored_spent: i64,
    pub gateway_id: &'a str,
    /// How long the gateway's mark lives if it has none yet.
    pub gateway_ttl_ms: u64,
    /// How long the hold may outlive its request (or the lease its last
    /// renewal) before the reconciler releases it anyway.
    pub hold_ttl_ms: u64,
}

fn interval_us(limit: u32) -> f64 {
    60_000_000.0 / f64::from(limit.max(1))
}

/// Asks for a lease of `ask` on `key_id` in one round trip (see
/// [`LEASE`]); the budget slice only with `terms`. `grant` names this ask:
/// if its answer is lost, [`unlease`] with [`GiveBack::Revoke`] of the
/// same name undoes it. The
/// answer reads as [`admit`]'s, and says whether the gateway had no lease
/// hold before this one (so that whatever it thinks is left of one is not
/// there); `None`: the grant was revoked before it ran.
pub async fn lease<C: ConnectionLike + Send>(
    con: &mut C,
    keys: &Keys,
    key_id: &str,
    grant: &str,
    ask: &Slices,
    terms: Option<&BudgetTerms<'_>>,
) -> RedisResult<Option<(Verdict, bool)>> {
    let rpm = ask.requests.unwrap_or_default();
    let tpm = ask.tokens.unwrap_or_default();
    let gateway_id = terms.map_or("", |t| t.gateway_id);
    let mut call = LEASE.key(keys.rpm(key_id));
    call.key(keys.tpm(key_id))
        .key(keys.account(key_id))
        .key(keys.holds(key_id))
        .key(keys.holders())
        .key(keys.gateway(gateway_id))
        .key(grant_marker(keys, grant))
        .arg(interval_us(rpm.limit))
        .arg(rpm.limit)
        .arg(rpm.count)
        .arg(interval_us(tpm.limit))
        .arg(tpm.limit)
        .arg(tpm.count);
    match terms {
        Some(t) => call
            .arg(key_id)
            .arg(lease_field(t.gateway_id))
            .arg(ask.budget.unwrap_or(0))
            .arg(t.budget)
            .arg(t.stored_spent)
            .arg(t.gateway_id)
            .arg(t.gateway_ttl_ms)
            .arg(t.hold_ttl_ms),
        None => call.arg(""),
    };
    let answer: Vec<i64> = call.invoke_async(con).await?;
    if answer.first() == Some(&4) {
        return Ok(None);
    }
    Ok(Some((verdict(&answer), answer.get(3) == Some(&1))))
}

fn grant_marker(keys: &Keys, grant: &str) -> String {
    keys.settled(&format!("lease:{grant}"))
}

/// What goes back to Redis from a lease: the unused rest of one that
/// ended, or the whole of a grant whose answer was lost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GiveBack {
    /// The unused rest of `gateway_id`'s lease; the id makes it count
    /// once.
    Rest(String),
    /// Everything a grant of this name asked for, if it ran at all.
    Revoke(String),
}

/// Gives `slices` of `gateway_id`'s lease on `key_id` back (see
/// [`UNLEASE`]).
pub async fn unlease<C: ConnectionLike + Send>(
    con: &mut C,
    keys: &Keys,
    key_id: &str,
    slices: &Slices,
    gateway_id: &str,
    what: &GiveBack,
) -> RedisResult<()> {
    let rpm = slices.requests.unwrap_or_default();
    let tpm = slices.tokens.unwrap_or_default();
    let (marker, revoke) = match what {
        GiveBack::Rest(id) => (keys.settled(&format!("unlease:{id}")), "0"),
        GiveBack::Revoke(grant) => (grant_marker(keys, grant), "1"),
    };
    let _: i64 = UNLEASE
        .key(keys.rpm(key_id))
        .key(keys.tpm(key_id))
        .key(keys.account(key_id))
        .key(keys.holds(key_id))
        .key(keys.holders())
        .key(marker)
        .arg(interval_us(rpm.limit))
        .arg(rpm.count)
        .arg(interval_us(tpm.limit))
        .arg(tpm.count)
        .arg(key_id)
        .arg(lease_field(gateway_id))
        .arg(slices.budget.unwrap_or(0))
        .arg(SETTLED_TTL_MS)
        .arg(revoke)
        .invoke_async(con)
        .await?;
    Ok(())
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

    /// A budget of 100 nano-USD, nothing spent, marks and holds that live
    /// a minute.
    fn terms(gateway_id: &str) -> BudgetTerms<'_> {
        BudgetTerms {
            budget: 100,
            stored_spent: 0,
            gateway_id,
            gateway_ttl_ms: 60_000,
            hold_ttl_ms: 60_000,
        }
    }

    fn hold<'a>(request_id: &'a str, gateway_id: &'a str, worst: i64) -> Hold<'a> {
        Hold {
            request_id,
            worst,
            terms: terms(gateway_id),
        }
    }

    /// Settles `s` alone; returns the amount released (0 when the hold was
    /// already gone, or the request already settled).
    async fn settle(
        con: &mut MultiplexedConnection,
        keys: &Keys,
        s: &Settlement,
    ) -> RedisResult<i64> {
        settle_call(keys, s, "").invoke_async(con).await
    }

    #[derive(Debug, Clone, Copy)]
    enum Rate {
        Requests,
        Tokens,
    }

    /// [`admit`] with one rate only: `None` when admitted, else the wait.
    async fn gcra(
        con: &mut MultiplexedConnection,
        keys: &Keys,
        rate: Rate,
        key_id: &str,
        limit: u32,
        n: u32,
    ) -> RedisResult<Option<Duration>> {
        let a = Admit {
            key_id,
            requests_per_min: matches!(rate, Rate::Requests).then_some(limit),
            tokens: matches!(rate, Rate::Tokens).then_some((limit, n)),
            hold: None,
        };
        Ok(match admit(con, keys, &a).await? {
            Verdict::Requests(wait) | Verdict::Tokens(wait) => Some(wait),
            Verdict::Admitted { .. } | Verdict::Budget { .. } => None,
        })
    }

    #[derive(Debug, PartialEq, Eq)]
    struct Answer {
        admitted: bool,
        spent: i64,
        reserved: i64,
    }

    /// [`admit`] with key `k`'s budget hold only.
    async fn reserve(
        con: &mut MultiplexedConnection,
        keys: &Keys,
        hold: &Hold<'_>,
    ) -> RedisResult<Answer> {
        let a = Admit {
            key_id: "k",
            requests_per_min: None,
            tokens: None,
            hold: Some(*hold),
        };
        Ok(match admit(con, keys, &a).await? {
            Verdict::Admitted { spent, reserved } => Answer {
                admitted: true,
                spent,
                reserved,
            },
            Verdict::Budget { spent, reserved } => Answer {
                admitted: false,
                spent,
                reserved,
            },
            other => panic!("a hold alone was refused by a rate: {other:?}"),
        })
    }

    fn settlement(request_id: &str, actual: i64) -> Settlement {
        Settlement {
            key_id: "k".into(),
            request_id: request_id.into(),
            actual_nusd: actual,
            drawn: None,
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
    async fn admission_is_all_or_nothing() {
        let (mut con, keys) = redis().await;
        let all = |request_id: &'static str, tokens: u32, worst: i64| Admit {
            key_id: "k",
            requests_per_min: Some(2),
            tokens: Some((100, tokens)),
            hold: Some(hold(request_id, "g1", worst)),
        };
        // The budget refuses (101 > 100): neither rate is charged.
        assert_eq!(
            admit(&mut con, &keys, &all("a", 60, 101)).await.unwrap(),
            Verdict::Budget {
                spent: 0,
                reserved: 0
            }
        );
        // The tokens rate refuses (60 + 60 > 100): no request is counted
        // and nothing is held.
        assert_eq!(
            admit(&mut con, &keys, &all("b", 60, 10)).await.unwrap(),
            Verdict::Admitted {
                spent: 0,
                reserved: 10
            }
        );
        assert!(matches!(
            admit(&mut con, &keys, &all("c", 60, 10)).await.unwrap(),
            Verdict::Tokens(wait) if wait > Duration::ZERO
        ));
        assert_eq!(figures(&mut con, &keys, "k").await.unwrap(), Some((0, 10)));
        // So the key still has its second request of the minute, and the
        // third is refused by the requests rate before anything else.
        assert_eq!(
            admit(&mut con, &keys, &all("d", 40, 10)).await.unwrap(),
            Verdict::Admitted {
                spent: 0,
                reserved: 20
            }
        );
        assert!(matches!(
            admit(&mut con, &keys, &all("e", 0, 10)).await.unwrap(),
            Verdict::Requests(wait) if wait > Duration::from_secs(20)
        ));
        assert_eq!(figures(&mut con, &keys, "k").await.unwrap(), Some((0, 20)));
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
            Answer {
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
        raised.terms.stored_spent = 60;
        let r = reserve(&mut con, &keys, &raised).await.unwrap();
        assert_eq!((r.admitted, r.spent), (false, 60));
        raised.terms.stored_spent = 5;
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
    async fn a_hold_of_nothing_settles_and_reconciles() {
        // A request whose backends are all free holds 0; releasing it
        // must not fail (Redis refuses "-0" as an integer).
        let (mut con, keys) = redis().await;
        assert!(
            reserve(&mut con, &keys, &hold("free", "g1", 0))
                .await
                .unwrap()
                .admitted
        );
        assert_eq!(
            settle(&mut con, &keys, &settlement("free", 0))
                .await
                .unwrap(),
            0
        );
        let mut dying = hold("free-2", "dead", 0);
        dying.terms.hold_ttl_ms = 0;
        assert!(reserve(&mut con, &keys, &dying).await.unwrap().admitted);
        // Past its deadline (the millisecond it was made in).
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert_eq!(reconcile(&mut con, &keys, false).await.unwrap(), 1);
        assert_eq!(figures(&mut con, &keys, "k").await.unwrap(), Some((0, 0)));
    }

    #[tokio::test]
    async fn a_batch_settles_each_once() {
        let (mut con, keys) = redis().await;
        for (id, worst) in [("a", 30), ("b", 20), ("free", 0)] {
            assert!(
                reserve(&mut con, &keys, &hold(id, "g1", worst))
                    .await
                    .unwrap()
                    .admitted
            );
        }
        let batch = [
            settlement("a", 10),
            settlement("b", 5),
            settlement("free", 0),
            settlement("never-held", 7),
        ];
        settle_batch(&mut con, &keys, &batch, "g1").await.unwrap();
        // Each counted once, sent again or not: 10 + 5 + 7 spent, nothing
        // held.
        settle_batch(&mut con, &keys, &batch, "g1").await.unwrap();
        assert_eq!(figures(&mut con, &keys, "k").await.unwrap(), Some((22, 0)));
        assert_eq!(
            settle(&mut con, &keys, &settlement("a", 10)).await.unwrap(),
            0
        );
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
        dying.terms.gateway_ttl_ms = 1;
        assert!(reserve(&mut con, &keys, &dying).await.unwrap().admitted);
        // A live gateway's hold past its deadline.
        let mut late = hold("c", "alive", 30);
        late.terms.hold_ttl_ms = 0;
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

    /// Admits requests of `k` (10 a minute) one at a time until one is
    /// refused; how many were.
    async fn requests_left(con: &mut MultiplexedConnection, keys: &Keys) -> usize {
        let mut n = 0;
        while gcra(con, keys, Rate::Requests, "k", 10, 1)
            .await
            .unwrap()
            .is_none()
        {
            n += 1;
            assert!(n <= 10, "more than the limit admitted");
        }
        n
    }

    /// A lease of `ask` on key `k` under a grant name of its own, not
    /// revoked.
    async fn grant(
        con: &mut MultiplexedConnection,
        keys: &Keys,
        ask: &Slices,
        terms: Option<&BudgetTerms<'_>>,
    ) -> RedisResult<(Verdict, bool)> {
        let name = uuid::Uuid::new_v4().simple().to_string();
        let answer = lease(con, keys, "k", &name, ask, terms).await?;
        Ok(answer.expect("a grant never revoked runs"))
    }

    fn lease_of(requests: u64, tokens: u64, budget: i64) -> Slices {
        Slices {
            requests: Some(RateSlice {
                limit: 10,
                count: requests,
            }),
            tokens: Some(RateSlice {
                limit: 1000,
                count: tokens,
            }),
            budget: Some(budget),
        }
    }

    #[tokio::test]
    async fn a_lease_is_charged_when_granted_and_given_back_when_unused() {
        let (mut con, keys) = redis().await;
        let g1 = terms("g1");
        assert_eq!(
            grant(&mut con, &keys, &lease_of(4, 400, 40), Some(&g1))
                .await
                .unwrap(),
            (
                Verdict::Admitted {
                    spent: 0,
                    reserved: 40
                },
                true
            )
        );
        // Renewed: the lease hold grows, under one field.
        assert_eq!(
            grant(&mut con, &keys, &lease_of(0, 0, 10), Some(&g1))
                .await
                .unwrap(),
            (
                Verdict::Admitted {
                    spent: 0,
                    reserved: 50
                },
                false
            )
        );
        // Everyone else sees the limits less the lease: 6 requests of 10,
        // 600 tokens of 1000, 50 nano-USD of 100.
        assert_eq!(
            gcra(&mut con, &keys, Rate::Tokens, "k", 1000, 601)
                .await
                .unwrap()
                .map(|w| w > Duration::ZERO),
            Some(true)
        );
        assert_eq!(
            gcra(&mut con, &keys, Rate::Tokens, "k", 1000, 600)
                .await
                .unwrap(),
            None
        );
        assert!(
            !reserve(&mut con, &keys, &hold("a", "g2", 51))
                .await
                .unwrap()
                .admitted
        );
        assert!(
            reserve(&mut con, &keys, &hold("a", "g2", 50))
                .await
                .unwrap()
                .admitted
        );
        assert_eq!(requests_left(&mut con, &keys).await, 6);
        // A request the lease admitted (worst 20, cost 5) settles from the
        // lease hold; settling it again counts nothing.
        let drawn = Settlement {
            drawn: Some(20),
            ..settlement("from-lease", 5)
        };
        settle_batch(&mut con, &keys, std::slice::from_ref(&drawn), "g1")
            .await
            .unwrap();
        settle_batch(&mut con, &keys, &[drawn], "g1").await.unwrap();
        assert_eq!(figures(&mut con, &keys, "k").await.unwrap(), Some((5, 80)));
        let field: String = redis::cmd("HGET")
            .arg(keys.holds("k"))
            .arg(lease_field("g1"))
            .query_async(&mut con)
            .await
            .unwrap();
        assert!(field.starts_with("30 g1 "), "{field}");
        // The unused rest given back: the lease hold goes, and so does the
        // charge of the four unused requests.
        let rest = lease_of(4, 400, 30);
        let once = GiveBack::Rest("g1:1".into());
        unlease(&mut con, &keys, "k", &rest, "g1", &once)
            .await
            .unwrap();
        // Sent again (a call that timed out but ran): counted once.
        unlease(&mut con, &keys, "k", &rest, "g1", &once)
            .await
            .unwrap();
        assert_eq!(figures(&mut con, &keys, "k").await.unwrap(), Some((5, 50)));
        assert_eq!(requests_left(&mut con, &keys).await, 4);
        let fields: Vec<String> = redis::cmd("HKEYS")
            .arg(keys.holds("k"))
            .query_async(&mut con)
            .await
            .unwrap();
        assert_eq!(fields, vec!["a".to_owned()]);
        // So the next lease starts afresh, and says so.
        assert!(
            grant(&mut con, &keys, &lease_of(0, 0, 10), Some(&g1))
                .await
                .unwrap()
                .1
        );
    }

    #[tokio::test]
    async fn a_lease_is_all_or_nothing_and_checks_a_budget_even_for_free() {
        let (mut con, keys) = redis().await;
        let g1 = terms("g1");
        // The budget refuses 101: no rate is charged.
        assert_eq!(
            grant(&mut con, &keys, &lease_of(4, 400, 101), Some(&g1))
                .await
                .unwrap()
                .0,
            Verdict::Budget {
                spent: 0,
                reserved: 0
            }
        );
        // The requests rate refuses 11: nothing is held.
        assert!(matches!(
            grant(&mut con, &keys, &lease_of(11, 0, 10), Some(&g1)).await.unwrap().0,
            Verdict::Requests(wait) if wait > Duration::ZERO
        ));
        assert_eq!(figures(&mut con, &keys, "k").await.unwrap(), Some((0, 0)));
        assert_eq!(requests_left(&mut con, &keys).await, 10);
        // A lease of no budget is only granted while spend is below it.
        let mut spent = g1;
        spent.stored_spent = 100;
        assert!(matches!(
            grant(&mut con, &keys, &lease_of(0, 0, 0), Some(&spent))
                .await
                .unwrap()
                .0,
            Verdict::Budget { spent: 100, .. }
        ));
    }

    #[tokio::test]
    async fn a_grant_whose_answer_was_lost_is_revoked_whether_it_ran_or_not() {
        let (mut con, keys) = redis().await;
        let g1 = terms("g1");
        grant(&mut con, &keys, &lease_of(2, 200, 40), Some(&g1))
            .await
            .unwrap();
        // A renewal that ran, though its caller timed out: Redis holds 10
        // more than the gateway knows of, and charged 2 more requests.
        let ran = lease_of(2, 200, 10);
        assert!(lease(&mut con, &keys, "k", "ran", &ran, Some(&g1))
            .await
            .unwrap()
            .is_some());
        assert_eq!(figures(&mut con, &keys, "k").await.unwrap(), Some((0, 50)));
        // Revoked: all of it comes back, once however often it is sent.
        let revoke = GiveBack::Revoke("ran".into());
        for _ in 0..2 {
            unlease(&mut con, &keys, "k", &ran, "g1", &revoke)
                .await
                .unwrap();
            assert_eq!(figures(&mut con, &keys, "k").await.unwrap(), Some((0, 40)));
        }
        // So the give-back of what the gateway knows of empties the hold.
        let rest = lease_of(2, 200, 40);
        let once = GiveBack::Rest("g1:1".into());
        unlease(&mut con, &keys, "k", &rest, "g1", &once)
            .await
            .unwrap();
        assert_eq!(figures(&mut con, &keys, "k").await.unwrap(), Some((0, 0)));
        let fields: i64 = redis::cmd("HLEN")
            .arg(keys.holds("k"))
            .query_async(&mut con)
            .await
            .unwrap();
        assert_eq!(fields, 0);
        // A grant revoked before it ran (still queued in a stalled Redis)
        // gives back nothing, and no longer runs when it arrives.
        let late = lease_of(2, 200, 10);
        unlease(
            &mut con,
            &keys,
            "k",
            &late,
            "g1",
            &GiveBack::Revoke("late".into()),
        )
        .await
        .unwrap();
        assert_eq!(figures(&mut con, &keys, "k").await.unwrap(), Some((0, 0)));
        assert_eq!(
            lease(&mut con, &keys, "k", "late", &late, Some(&g1))
                .await
                .unwrap(),
            None
        );
        assert_eq!(figures(&mut con, &keys, "k").await.unwrap(), Some((0, 0)));
        // Every request charged was given back, and the late grant charged
        // none.
        assert_eq!(requests_left(&mut con, &keys).await, 10);
    }

    #[tokio::test]
    async fn a_dead_gateways_lease_is_released_by_the_reconciler() {
        let (mut con, keys) = redis().await;
        let mut dying = terms("dead");
        dying.gateway_ttl_ms = 1;
        assert!(matches!(
            grant(&mut con, &keys, &lease_of(0, 0, 70), Some(&dying))
                .await
                .unwrap()
                .0,
            Verdict::Admitted { reserved: 70, .. }
        ));
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(reconcile(&mut con, &keys, true).await.unwrap(), 1);
        assert_eq!(figures(&mut con, &keys, "k").await.unwrap(), Some((0, 0)));
        // A request it admitted, settled afterwards, counts its spend and
        // releases nothing more.
        let late = Settlement {
            drawn: Some(20),
            ..settlement("late", 5)
        };
        settle_batch(&mut con, &keys, &[late], "dead")
            .await
            .unwrap();
        assert_eq!(figures(&mut con, &keys, "k").await.unwrap(), Some((5, 0)));
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
