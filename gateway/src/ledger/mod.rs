//! The ledger writer: request handlers hand finished rows to an inbox; one
//! background task, on a thread and runtime of its own, stores them in
//! batches, each in one transaction with the spend it adds to each key.
//!
//! Why a writer task: a request's answer must not wait on a database
//! write, and one writer batching rows costs the store far less than one
//! insert per handler. Handlers never wait on it. Why a thread of its
//! own: see [`Ledger::start`].
//!
//! # When the store is down
//!
//! Rows wait, in order, in memory up to `ledger_queue` rows (or
//! `ledger_queue_bytes`), then in an append-only spill file
//! (`ledger_spill_dir`, at most `ledger_spill_max_bytes`; see [`spill`]).
//! The writer retries with backoff for as long as the store is unreachable
//! and writes the backlog, oldest first, when it returns (see [`writer`]).
//! At shutdown, rows that cannot be stored go to the file; at start the
//! file is replayed. Storing is idempotent by request id, so a row that
//! was stored but whose acknowledgement was lost, or a file replayed after
//! a crash, neither duplicates a row nor adds its cost twice.
//!
//! What bounds memory and disk is admission: once the backlog is full
//! ([`Ledger::is_full`]), new requests are refused with 503 before they
//! are admitted (see `http::chat`), and `/readyz` says unready. A backlog
//! alone does not make the gateway unready: a database outage hits every
//! gateway alike, and taking them all out of the load balancer would turn
//! a ledger delay into an outage of the API.
//!
//! Rows come from [`Record`], a guard each admitted request owns; its `Drop`
//! sends the row exactly once, whether the request finished, failed, or was
//! dropped because the client went away.
//!
//! [`Ledger::written`] counts stored rows (a `watch`), which is the flush
//! signal tests and shutdown wait on instead of sleeping.

mod record;
pub mod spill;
mod writer;

use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::{mpsc, watch};
use tokio_util::task::TaskTracker;

pub use record::{Pricing, Record, RecordInit};
pub use spill::SpillError;

use crate::config::Config;
use crate::store::{now_ms, LedgerEntry, Store};

/// Why the ledger could not start.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error(transparent)]
    Spill(#[from] SpillError),
    #[error("cannot start the ledger writer")]
    Writer(#[source] std::io::Error),
}

/// How the ledger holds rows the store has not taken yet.
#[derive(Debug, Clone)]
pub struct LedgerOptions {
    /// Rows held in memory before they go to the spill file.
    pub memory_rows: u64,
    /// The same bound in (approximate) bytes.
    pub memory_bytes: u64,
    /// Most rows stored in one transaction.
    pub batch: usize,
    /// Directory of the spill file; `None` keeps rows in memory only.
    pub spill_dir: Option<PathBuf>,
    /// Size of the spill file past which admission refuses requests.
    pub spill_max_bytes: u64,
}

impl LedgerOptions {
    #[must_use]
    pub fn from_config(config: &Config) -> LedgerOptions {
        LedgerOptions {
            memory_rows: config.ledger_queue as u64,
            memory_bytes: config.ledger_queue_bytes as u64,
            batch: config.ledger_batch,
            spill_dir: config.ledger_spill_dir.clone(),
            spill_max_bytes: config.ledger_spill_max_bytes,
        }
    }
}

/// The sending side, shared by all handlers.
#[derive(Clone)]
pub struct Ledger {
    inner: Arc<Inner>,
}

struct Inner {
    /// Taken at shutdown so the writer sees the inbox close once the last
    /// in-flight [`Record`] is gone. Unbounded on purpose: a row must never
    /// wait or be dropped; admission ([`Ledger::is_full`]) is the bound.
    tx: Mutex<Option<mpsc::UnboundedSender<LedgerEntry>>>,
    shared: Arc<Shared>,
    options: LedgerOptions,
}

/// Counters the writer and the handlers share.
pub(crate) struct Shared {
    /// Rows handed to the ledger by this process.
    enqueued: AtomicU64,
    /// Rows found in the spill file at start.
    recovered: u64,
    /// Rows (and their approximate bytes) in the inbox or in memory.
    memory_rows: AtomicU64,
    memory_bytes: AtomicU64,
    /// Unread rows in the spill file, and the file's size.
    spill_rows: AtomicU64,
    spill_bytes: AtomicU64,
    /// `created_at` of the oldest row not yet stored (0: none).
    oldest_ms: AtomicI64,
    /// The last attempt's outcome: 0 none yet, 1 stored, 2 unreachable.
    reachable: AtomicU8,
    /// Rows stored or given up, recovered ones included.
    written_tx: watch::Sender<u64>,
}

impl Shared {
    fn memory_left(&self, rows: u64, bytes: u64) {
        self.memory_rows.fetch_sub(rows, Ordering::AcqRel);
        self.memory_bytes.fetch_sub(bytes, Ordering::AcqRel);
    }

    fn spill_is(&self, rows: u64, bytes: u64) {
        self.spill_rows.store(rows, Ordering::Release);
        self.spill_bytes.store(bytes, Ordering::Release);
    }

    fn set_reachable(&self, yes: bool) {
        self.reachable
            .store(if yes { 1 } else { 2 }, Ordering::Release);
    }

    fn reachable(&self) -> Option<bool> {
        match self.reachable.load(Ordering::Acquire) {
            1 => Some(true),
            2 => Some(false),
            _ => None,
        }
    }
}

/// Rows not yet stored, for `/readyz` and `/metrics`.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Backlog {
    /// Rows waiting in memory (the writer's inbox included).
    pub memory_rows: u64,
    pub memory_bytes: u64,
    /// Rows in the spill file, and its size on disk.
    pub spill_rows: u64,
    pub spill_bytes: u64,
    /// Age of the oldest row not yet stored, from its admission.
    pub oldest_age_seconds: Option<f64>,
    /// Whether the last write reached the store (`None` before the first).
    pub store_reachable: Option<bool>,
    /// Admission refuses new requests ([`Ledger::is_full`]).
    pub full: bool,
}

/// What a [`Record`] holds to send its row.
#[derive(Clone)]
pub(crate) struct Sink {
    tx: mpsc::UnboundedSender<LedgerEntry>,
    ledger: Ledger,
}

impl Sink {
    /// Hands a row to the writer, its text fields scrubbed of NUL (see
    /// [`LedgerEntry::scrub_nul`]). Never waits and never drops the row
    /// while the writer runs.
    pub(crate) fn send(&self, mut entry: LedgerEntry) {
        entry.scrub_nul();
        let shared = &self.ledger.inner.shared;
        shared.enqueued.fetch_add(1, Ordering::AcqRel);
        shared.memory_rows.fetch_add(1, Ordering::AcqRel);
        shared
            .memory_bytes
            .fetch_add(entry.approx_bytes() as u64, Ordering::AcqRel);
        if let Err(mpsc::error::SendError(entry)) = self.tx.send(entry) {
            tracing::error!(id = %entry.id, "ledger writer stopped; a row was lost");
        }
    }
}

impl Ledger {
    /// Opens the spill file (replaying what it holds) and starts the
    /// writer; `tracker` waits for it to end.
    ///
    /// The writer runs on a thread of its own, on a runtime of its own.
    /// Encoding a batch of rows is a burst of CPU that does not yield: on
    /// the request runtime's workers it held up every request queued
    /// behind it, on its own thread the kernel shares the cores fairly.
    /// The store's pool is shared with the request runtime: SQLite
    /// connections run on threads of their own anyway, and a Postgres
    /// connection works from either runtime while both run.
    pub fn start(
        store: Store,
        options: LedgerOptions,
        tracker: &TaskTracker,
    ) -> Result<Ledger, LedgerError> {
        let spill = options
            .spill_dir
            .as_deref()
            .map(spill::Spill::open)
            .transpose()?;
        let (spill_rows, spill_bytes) = spill.as_ref().map_or((0, 0), |s| (s.unread(), s.len()));
        if spill_rows > 0 {
            tracing::info!(
                rows = spill_rows,
                bytes = spill_bytes,
                "replaying the ledger spill file"
            );
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let (written_tx, _) = watch::channel(0);
        let shared = Arc::new(Shared {
            enqueued: AtomicU64::new(0),
            recovered: spill_rows,
            memory_rows: AtomicU64::new(0),
            memory_bytes: AtomicU64::new(0),
            spill_rows: AtomicU64::new(spill_rows),
            spill_bytes: AtomicU64::new(spill_bytes),
            oldest_ms: AtomicI64::new(0),
            reachable: AtomicU8::new(0),
            written_tx,
        });
        let writer = writer::Writer {
            store,
            rx,
            shared: Arc::clone(&shared),
            spill: spill.map(|s| Arc::new(Mutex::new(s))),
            batch: options.batch.max(1),
            memory_rows: options.memory_rows,
            memory_bytes: options.memory_bytes,
            spill_max_bytes: options.spill_max_bytes,
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(LedgerError::Writer)?;
        let (ended_tx, ended_rx) = tokio::sync::oneshot::channel::<()>();
        std::thread::Builder::new()
            .name("ledger-writer".into())
            .spawn(move || {
                runtime.block_on(writer.run());
                drop(runtime);
                let _ = ended_tx.send(());
            })
            .map_err(LedgerError::Writer)?;
        tracker.spawn(async move {
            let _ = ended_rx.await;
        });
        Ok(Ledger {
            inner: Arc::new(Inner {
                tx: Mutex::new(Some(tx)),
                shared,
                options,
            }),
        })
    }

    pub(crate) fn sink(&self) -> Option<Sink> {
        let tx = self
            .inner
            .tx
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()?;
        Some(Sink {
            tx,
            ledger: self.clone(),
        })
    }

    /// Rows stored (or given up) so far, rows replayed from the spill file
    /// included.
    #[must_use]
    pub fn written(&self) -> watch::Receiver<u64> {
        self.inner.shared.written_tx.subscribe()
    }

    /// Rows handed to the ledger by this process so far.
    #[must_use]
    pub fn enqueued(&self) -> u64 {
        self.inner.shared.enqueued.load(Ordering::Acquire)
    }

    /// Rows found in the spill file at start.
    #[must_use]
    pub fn recovered(&self) -> u64 {
        self.inner.shared.recovered
    }

    /// Rows not yet stored: in memory or in the spill file.
    #[must_use]
    pub fn depth(&self) -> u64 {
        (self.enqueued() + self.recovered()).saturating_sub(*self.inner.shared.written_tx.borrow())
    }

    /// Whether new requests must be refused: the spill file is at its
    /// size cap, or memory is over twice its bound (the file cannot take
    /// rows fast enough, or fails); without a spill file, memory at its
    /// bound.
    #[must_use]
    pub fn is_full(&self) -> bool {
        let s = &self.inner.shared;
        let o = &self.inner.options;
        let (rows, bytes) = (
            s.memory_rows.load(Ordering::Acquire),
            s.memory_bytes.load(Ordering::Acquire),
        );
        if o.spill_dir.is_none() {
            return rows >= o.memory_rows || bytes >= o.memory_bytes;
        }
        s.spill_bytes.load(Ordering::Acquire) >= o.spill_max_bytes
            || rows >= o.memory_rows.saturating_mul(2)
            || bytes >= o.memory_bytes.saturating_mul(2)
    }

    /// The backlog now.
    #[must_use]
    pub fn backlog(&self) -> Backlog {
        let s = &self.inner.shared;
        let oldest = s.oldest_ms.load(Ordering::Acquire);
        Backlog {
            memory_rows: s.memory_rows.load(Ordering::Acquire),
            memory_bytes: s.memory_bytes.load(Ordering::Acquire),
            spill_rows: s.spill_rows.load(Ordering::Acquire),
            spill_bytes: s.spill_bytes.load(Ordering::Acquire),
            oldest_age_seconds: (oldest > 0)
                .then(|| (now_ms().saturating_sub(oldest)).max(0) as f64 / 1000.0),
            store_reachable: s.reachable(),
            full: self.is_full(),
        }
    }

    /// Waits until every row queued (or recovered) before the call is
    /// stored. While the store is unreachable this waits for it.
    pub async fn flush(&self) {
        let target = self.enqueued() + self.recovered();
        let mut rx = self.written();
        let _ = rx.wait_for(|n| *n >= target).await;
    }

    /// Stops accepting new senders; the writer ends after the last row is
    /// stored or spilled.
    pub fn close(&self) {
        self.inner
            .tx
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::store::{DecisionJson, LedgerStatus};

    fn row(i: usize) -> LedgerEntry {
        LedgerEntry {
            status: LedgerStatus::Ok,
            http_status: Some(200),
            ..LedgerEntry::new(
                format!("r{i}"),
                "t".into(),
                "k".into(),
                "m".into(),
                false,
                i64::try_from(i).unwrap() + 1,
            )
        }
    }

    fn options(spill: &Path) -> LedgerOptions {
        LedgerOptions {
            memory_rows: 1_000,
            memory_bytes: 1 << 20,
            batch: 8,
            spill_dir: Some(spill.to_owned()),
            spill_max_bytes: 1 << 20,
        }
    }

    async fn store(path: &Path) -> Store {
        let store = Store::connect(None, path).await.unwrap();
        store.migrate().await.unwrap();
        store
    }

    /// A store that fails at once (a closed pool) leaves the rows in
    /// memory (not silent for a second yet), so it is the shutdown that
    /// must put them in the file; the next start stores them.
    #[tokio::test]
    async fn rows_the_store_cannot_take_at_shutdown_are_spilled_then_replayed() {
        let dir = tempfile::tempdir().unwrap();
        let (db, spill) = (dir.path().join("gateway.db"), dir.path().join("spill"));
        let closed = store(&db).await;
        closed.close().await;
        let tasks = TaskTracker::new();
        let ledger = Ledger::start(closed, options(&spill), &tasks).unwrap();
        let sink = ledger.sink().unwrap();
        for i in 0..5 {
            sink.send(row(i));
        }
        drop(sink);
        ledger.close();
        tasks.close();
        tasks.wait().await;
        assert_eq!(*ledger.written().borrow(), 0, "nothing was stored");
        assert_eq!(ledger.backlog().memory_rows, 0);

        let open = store(&db).await;
        let tasks = TaskTracker::new();
        let ledger = Ledger::start(open.clone(), options(&spill), &tasks).unwrap();
        assert_eq!(ledger.recovered(), 5);
        ledger.flush().await;
        let ids: Vec<String> = open
            .recent_ledger(None, 10)
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.id)
            .collect();
        assert_eq!(ids, ["r4", "r3", "r2", "r1", "r0"]);
        assert_eq!(ledger.backlog().spill_rows, 0);
        ledger.close();
        tasks.close();
        tasks.wait().await;
    }

    /// A row dropped unfinished says what the client saw: `cancelled` and
    /// 499 when the client went away, an error and 500 when the handler
    /// panicked (the panic layer's answer).
    #[tokio::test]
    async fn an_unfinished_row_tells_a_panic_from_a_client_gone() {
        let dir = tempfile::tempdir().unwrap();
        let db = store(&dir.path().join("gateway.db")).await;
        let tasks = TaskTracker::new();
        let ledger = Ledger::start(db.clone(), options(&dir.path().join("spill")), &tasks).unwrap();
        let record = |id: &str| {
            super::Record::new(
                super::RecordInit {
                    id: id.to_owned(),
                    tenant_id: "t".into(),
                    key_id: "k".into(),
                    requested_model: "m".into(),
                    stream: false,
                    created_at: 1,
                },
                ledger.sink(),
            )
        };
        drop(record("gone"));
        let panicked = record("panicked");
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
            let _row = panicked;
            panic!("a handler's bug");
        }));
        assert!(caught.is_err());
        ledger.flush().await;
        let gone = db.ledger_entry("gone").await.unwrap().unwrap();
        assert_eq!(
            (gone.status, gone.http_status),
            (LedgerStatus::Cancelled, Some(499))
        );
        let panicked = db.ledger_entry("panicked").await.unwrap().unwrap();
        assert_eq!(
            (
                panicked.status,
                panicked.http_status,
                panicked.error_code.as_deref()
            ),
            (LedgerStatus::Error, Some(500), Some("internal_error"))
        );
        ledger.close();
        tasks.close();
        tasks.wait().await;
    }

    /// Client text can hold NUL, which Postgres refuses: the sink scrubs
    /// every row it is handed, so the writer stores them as they come.
    #[tokio::test]
    async fn rows_are_scrubbed_of_nul_on_their_way_in() {
        let dir = tempfile::tempdir().unwrap();
        let db = store(&dir.path().join("gateway.db")).await;
        let tasks = TaskTracker::new();
        let ledger = Ledger::start(db.clone(), options(&dir.path().join("spill")), &tasks).unwrap();
        let mut r = row(0);
        r.requested_model = "a\0b".into();
        r.decision = DecisionJson::new(&serde_json::json!({"k\0": "v\0"}));
        ledger.sink().unwrap().send(r);
        ledger.flush().await;
        let stored = db.ledger_entry("r0").await.unwrap().unwrap();
        assert_eq!(stored.requested_model, "a\u{fffd}b");
        assert_eq!(
            stored.decision.and_then(|d| d.value()),
            Some(serde_json::json!({"k\u{fffd}": "v\u{fffd}"}))
        );
        ledger.close();
        tasks.close();
        tasks.wait().await;
    }
}
