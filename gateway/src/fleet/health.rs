//! Backend health shared by the gateways of a fleet: a [`LiveView`] that
//! keeps every answer local (routing never waits on Redis) and mirrors the
//! circuit state through Redis, so that the failures one gateway sees open
//! the circuit on all of them.
//!
//! Each gateway still judges for itself: its poller and its requests feed
//! its local [`InProcessLive`] exactly as a single gateway's would. On top,
//! [`HealthSync`] pushes each failure, and each recovery of a failing
//! backend, to a Redis hash `<prefix>health:<backend id>` (failures, end of
//! the rest in Redis's clock, a version bumped on every change), and every
//! [`PULL_EVERY`] pulls all hashes and adopts any whose version it has not
//! seen. A backend with a push of this gateway still under way is skipped
//! on that pull, so a pull cannot undo a failure just recorded here.
//! Rests are carried as "milliseconds left" against Redis's clock, so the
//! gateways' clocks need not agree.
//!
//! When Redis is slow or down, pushes and pulls fail within
//! `redis_timeout_ms` and are dropped: each gateway carries on with its own
//! view, and the states meet again with the next changes once Redis is back.
//! Hashes expire after the longest rest plus a margin without a change.
//! Half-open trials stay per gateway: each may send one trial per rest.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::Redis;
use crate::live::{BackendLive, InFlight, InProcessLive, LiveView, MAX_BACKOFF_DOUBLINGS};
use crate::routing::WorkerLoad;

/// How often each gateway reads the shared health.
pub const PULL_EVERY: Duration = Duration::from_millis(200);

/// Changes waiting to be pushed; beyond this they are dropped (the local
/// view has them anyway).
const QUEUE: usize = 1024;

/// One failure: counts it, opens or lengthens the rest, bumps the version.
const FAIL_SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local f = redis.call('HINCRBY', KEYS[1], 'failures', 1)
local after = tonumber(ARGV[2])
if f >= after then
  local d = math.min(f - after, tonumber(ARGV[4]))
  redis.call('HSET', KEYS[1], 'open_until', now + tonumber(ARGV[3]) * math.pow(2, d))
end
redis.call('HINCRBY', KEYS[1], 'version', 1)
redis.call('PEXPIRE', KEYS[1], ARGV[5])
redis.call('SADD', KEYS[2], ARGV[1])
return f
";

/// A recovery: closes the circuit for everyone, if anyone had opened it.
const RESET_SCRIPT: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('HSET', KEYS[1], 'failures', 0, 'open_until', 0)
  redis.call('HINCRBY', KEYS[1], 'version', 1)
end
return 1
";

/// Every backend's (id, failures, ms of rest left, version), flattened;
/// index entries whose hash expired are dropped.
const PULL_SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local out = {}
for _, id in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local v = redis.call('HMGET', ARGV[1] .. id, 'failures', 'open_until', 'version')
  if v[3] then
    local left = math.max(0, (tonumber(v[2]) or 0) - now)
    table.insert(out, id)
    table.insert(out, tostring(tonumber(v[1]) or 0))
    table.insert(out, tostring(math.floor(left)))
    table.insert(out, v[3])
  else
    redis.call('SREM', KEYS[1], id)
  end
end
return out
";

enum Change {
    Failure(String),
    Reset(String),
}

/// Pushes under way, per backend id.
type Pending = Mutex<HashMap<String, u32>>;

/// The fleet's [`LiveView`]: local answers, shared circuit state.
pub struct SharedLive {
    local: Arc<InProcessLive>,
    changes: mpsc::Sender<Change>,
    pending: Arc<Pending>,
}

/// The task that pushes this gateway's changes and pulls the others'.
pub struct HealthSync {
    redis: Redis,
    local: Arc<InProcessLive>,
    changes: mpsc::Receiver<Change>,
    pending: Arc<Pending>,
    unhealthy_after: u32,
    cooldown: Duration,
    /// The version of each backend's hash this gateway last adopted.
    seen: HashMap<String, u64>,
}

impl SharedLive {
    /// A view whose circuit state is shared through `redis`, and the task
    /// that does the sharing (spawn [`HealthSync::run`]).
    #[must_use]
    pub fn new(redis: Redis, unhealthy_after: u32, cooldown: Duration) -> (SharedLive, HealthSync) {
        let local = Arc::new(InProcessLive::new(unhealthy_after, cooldown));
        let (tx, rx) = mpsc::channel(QUEUE);
        let pending = Arc::new(Pending::default());
        let sync = HealthSync {
            redis,
            local: Arc::clone(&local),
            changes: rx,
            pending: Arc::clone(&pending),
            unhealthy_after: unhealthy_after.max(1),
            cooldown,
            seen: HashMap::new(),
        };
        (
            SharedLive {
                local,
                changes: tx,
                pending,
            },
            sync,
        )
    }

    fn push(&self, change: Change) {
        let id = match &change {
            Change::Failure(id) | Change::Reset(id) => id.clone(),
        };
        *lock(&self.pending).entry(id.clone()).or_default() += 1;
        if self.changes.try_send(change).is_err() {
            metrics::counter!("gateway_redis_errors_total", "op" => "health_queue_full")
                .increment(1);
            done(&self.pending, &id);
        }
    }

    /// Whether the backend is failing here, so that its recovery is news.
    fn failing(&self, backend_id: &str) -> bool {
        self.local.get(backend_id).failures > 0
    }
}

impl LiveView for SharedLive {
    fn get(&self, backend_id: &str) -> BackendLive {
        self.local.get(backend_id)
    }

    fn report(&self, backend_id: &str, load: WorkerLoad) {
        let recovered = self.failing(backend_id);
        self.local.report(backend_id, load);
        if recovered {
            self.push(Change::Reset(backend_id.to_owned()));
        }
    }

    fn failure(&self, backend_id: &str) {
        self.local.failure(backend_id);
        self.push(Change::Failure(backend_id.to_owned()));
    }

    fn success(&self, backend_id: &str) {
        let recovered = self.failing(backend_id);
        self.local.success(backend_id);
        if recovered {
            self.push(Change::Reset(backend_id.to_owned()));
        }
    }

    fn claim_trial(&self, backend_id: &str) -> bool {
        self.local.claim_trial(backend_id)
    }

    fn in_flight(&self, backend_id: &str) -> u32 {
        self.local.in_flight(backend_id)
    }

    fn begin(&self, backend_id: &str) -> InFlight {
        self.local.begin(backend_id)
    }

    fn changes(&self) -> watch::Receiver<u64> {
        self.local.changes()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn done(pending: &Pending, id: &str) {
    let mut map = lock(pending);
    if let Some(n) = map.get_mut(id) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            map.remove(id);
        }
    }
}

impl HealthSync {
    /// Pushes and pulls until `stop` fires.
    pub async fn run(mut self, stop: CancellationToken) {
        let mut tick = tokio::time::interval(PULL_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                Some(change) = self.changes.recv() => self.push(change).await,
                _ = tick.tick() => self.pull().await,
            }
        }
    }

    fn longest_rest_ms(&self) -> u64 {
        let rest = self.cooldown * (1 << MAX_BACKOFF_DOUBLINGS) + Duration::from_secs(10);
        u64::try_from(rest.as_millis()).unwrap_or(u64::MAX)
    }

    async fn push(&mut self, change: Change) {
        let (id, failed) = match change {
            Change::Failure(id) => (id, true),
            Change::Reset(id) => (id, false),
        };
        let hash = self.redis.key(&format!("health:{id}"));
        let index = self.redis.key("health");
        let (after, cooldown, ttl) = (
            self.unhealthy_after,
            u64::try_from(self.cooldown.as_millis()).unwrap_or(u64::MAX),
            self.longest_rest_ms(),
        );
        let member = id.clone();
        // A failed push is counted by `Redis::run` and otherwise dropped:
        // the local view already holds the change.
        let _ = if failed {
            self.redis
                .run("health_failure", |mut c| async move {
                    redis::Script::new(FAIL_SCRIPT)
                        .key(hash)
                        .key(index)
                        .arg(member)
                        .arg(after)
                        .arg(cooldown)
                        .arg(MAX_BACKOFF_DOUBLINGS)
                        .arg(ttl)
                        .invoke_async::<i64>(&mut c)
                        .await
                })
                .await
        } else {
            self.redis
                .run("health_reset", |mut c| async move {
                    redis::Script::new(RESET_SCRIPT)
                        .key(hash)
                        .invoke_async::<i64>(&mut c)
                        .await
                })
                .await
        };
        done(&self.pending, &id);
    }

    async fn pull(&mut self) {
        let index = self.redis.key("health");
        let prefix = self.redis.key("health:");
        let Ok(flat) = self
            .redis
            .run("health_pull", |mut c| async move {
                redis::Script::new(PULL_SCRIPT)
                    .key(index)
                    .arg(prefix)
                    .invoke_async::<Vec<String>>(&mut c)
                    .await
            })
            .await
        else {
            return;
        };
        let now = Instant::now();
        for entry in flat.chunks_exact(4) {
            let [id, failures, left_ms, version] = entry else {
                continue;
            };
            let (Ok(failures), Ok(left_ms), Ok(version)) = (
                failures.parse::<f64>(),
                left_ms.parse::<u64>(),
                version.parse::<u64>(),
            ) else {
                continue;
            };
            if lock(&self.pending).contains_key(id) || self.seen.get(id) == Some(&version) {
                continue;
            }
            self.seen.insert(id.clone(), version);
            let failures = failures.max(0.0) as u32;
            let retry_at =
                (failures >= self.unhealthy_after).then(|| now + Duration::from_millis(left_ms));
            self.local.adopt(id, failures, retry_at);
        }
    }
}
