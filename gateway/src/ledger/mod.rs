//! The ledger writer: request handlers hand finished rows to a bounded
//! queue; one background task stores them in batches and adds their cost to
//! each key's spend.
//!
//! Why a queue: a request's answer must not wait on a database write, and
//! one writer batching rows costs the store far less than one insert per
//! handler. Handlers never wait on it: a row that finds the queue full is
//! handed to a tracked task that waits for room, so no row is lost. What
//! bounds memory is admission: past `ledger_queue` rows (or
//! `ledger_queue_bytes` bytes) not yet stored, new requests are refused
//! with 503 before they are admitted (see `http::chat`).
//!
//! A row that cannot be stored is retried only while the store is
//! unreachable. Any other failure (a value the database refuses) is not
//! retried: the row is stored once more with its free-form fields replaced
//! ([`LedgerEntry::minimal`]), so its status, timing and spend survive.
//!
//! Rows come from [`Record`], a guard each admitted request owns; its `Drop`
//! sends the row exactly once, whether the request finished, failed, or was
//! dropped because the client went away.
//!
//! [`Ledger::written`] counts stored rows (a `watch`), which is the flush
//! signal tests and shutdown wait on instead of sleeping.

mod record;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio_util::task::TaskTracker;

pub use record::{Pricing, Record, RecordInit};

use crate::store::{LedgerEntry, Store, StoreError};

/// Attempts per row before it is given up (and logged with its id).
const MAX_ATTEMPTS: u32 = 5;

/// How long the writer waits for a batch to fill once a row is waiting.
/// Under load this turns hundreds of one-row writes a second into a few
/// dozen batches; it delays when a row becomes visible, never an answer.
const LINGER: Duration = Duration::from_millis(10);

/// The sending side, shared by all handlers.
#[derive(Clone)]
pub struct Ledger {
    inner: Arc<Inner>,
}

struct Inner {
    /// Taken at shutdown so the writer sees the channel close once the last
    /// in-flight [`Record`] is gone.
    tx: Mutex<Option<mpsc::Sender<LedgerEntry>>>,
    enqueued: AtomicU64,
    /// Approximate bytes of rows queued and not yet stored.
    queued_bytes: Arc<AtomicU64>,
    written: watch::Receiver<u64>,
    /// Sends that found the queue full run here, so they can be awaited at
    /// shutdown.
    tracker: TaskTracker,
}

/// What a [`Record`] holds to send its row.
#[derive(Clone)]
pub(crate) struct Sink {
    tx: mpsc::Sender<LedgerEntry>,
    ledger: Ledger,
}

impl Sink {
    /// Queues a row: at once when there is room, otherwise from a tracked
    /// task that waits for room. Never drops the row while the writer runs.
    pub(crate) fn send(&self, entry: LedgerEntry) {
        self.ledger.inner.enqueued.fetch_add(1, Ordering::AcqRel);
        self.ledger
            .inner
            .queued_bytes
            .fetch_add(entry.approx_bytes() as u64, Ordering::AcqRel);
        match self.tx.try_send(entry) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(entry)) => {
                let tx = self.tx.clone();
                self.ledger.inner.tracker.spawn(async move {
                    if tx.send(entry).await.is_err() {
                        tracing::error!("ledger writer stopped; a row was lost");
                    }
                });
            }
            Err(mpsc::error::TrySendError::Closed(entry)) => {
                tracing::error!(id = %entry.id, "ledger writer stopped; a row was lost");
            }
        }
    }
}

impl Ledger {
    /// Starts the writer on `tracker`.
    #[must_use]
    pub fn start(store: Store, capacity: usize, batch: usize, tracker: &TaskTracker) -> Ledger {
        let (tx, rx) = mpsc::channel(capacity);
        let (written_tx, written) = watch::channel(0);
        let queued_bytes = Arc::new(AtomicU64::new(0));
        tracker.spawn(writer(
            store,
            rx,
            batch,
            written_tx,
            Arc::clone(&queued_bytes),
        ));
        Ledger {
            inner: Arc::new(Inner {
                tx: Mutex::new(Some(tx)),
                enqueued: AtomicU64::new(0),
                queued_bytes,
                written,
                tracker: tracker.clone(),
            }),
        }
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

    /// Rows stored (or given up) so far.
    #[must_use]
    pub fn written(&self) -> watch::Receiver<u64> {
        self.inner.written.clone()
    }

    /// Rows handed to the queue so far.
    #[must_use]
    pub fn enqueued(&self) -> u64 {
        self.inner.enqueued.load(Ordering::Acquire)
    }

    /// Rows queued but not yet stored.
    #[must_use]
    pub fn depth(&self) -> u64 {
        self.enqueued().saturating_sub(*self.inner.written.borrow())
    }

    /// Approximate bytes of rows queued but not yet stored.
    #[must_use]
    pub fn queued_bytes(&self) -> u64 {
        self.inner.queued_bytes.load(Ordering::Acquire)
    }

    /// Waits until every row queued before the call is stored.
    pub async fn flush(&self) {
        let target = self.enqueued();
        let mut rx = self.written();
        let _ = rx.wait_for(|n| *n >= target).await;
    }

    /// Stops accepting new senders; the writer ends after the last row.
    pub fn close(&self) {
        self.inner
            .tx
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
    }
}

async fn writer(
    store: Store,
    mut rx: mpsc::Receiver<LedgerEntry>,
    batch: usize,
    written: watch::Sender<u64>,
    queued_bytes: Arc<AtomicU64>,
) {
    let mut buf = Vec::with_capacity(batch);
    while rx.recv_many(&mut buf, batch).await > 0 {
        let deadline = tokio::time::Instant::now() + LINGER;
        while buf.len() < batch {
            let room = batch - buf.len();
            match tokio::time::timeout_at(deadline, rx.recv_many(&mut buf, room)).await {
                // More rows came; wait for the rest of the batch.
                Ok(n) if n > 0 => {}
                // Closed (the rows so far are stored, then the loop ends)
                // or the linger is over.
                _ => break,
            }
        }
        let mut spend: HashMap<String, f64> = HashMap::new();
        let bytes: usize = buf.iter().map(LedgerEntry::approx_bytes).sum();
        buf.iter_mut().for_each(LedgerEntry::scrub_nul);
        for entry in &buf {
            if let Some(usd) = entry.usd.filter(|u| *u > 0.0) {
                *spend.entry(entry.key_id.clone()).or_default() += usd;
            }
        }
        store_rows(&store, &buf).await;
        for (key_id, usd) in spend {
            if let Err(e) = store.add_spend(&key_id, usd).await {
                tracing::error!(error = %e, key_id, "cannot add spend");
            }
        }
        let n = buf.len() as u64;
        buf.clear();
        queued_bytes.fetch_sub(bytes as u64, Ordering::AcqRel);
        written.send_modify(|w| *w += n);
        metrics::counter!("gateway_ledger_rows_total").increment(n);
    }
}

/// Stores a batch in one transaction; if that fails (a duplicate id left by
/// an earlier timed-out attempt, a database blip, one row the database
/// refuses), row by row, so one bad row cannot take the others down with
/// it.
async fn store_rows(store: &Store, rows: &[LedgerEntry]) {
    let Err(e) = store.insert_ledger_batch(rows).await else {
        return;
    };
    tracing::warn!(error = %e, rows = rows.len(), "ledger batch failed; storing rows one by one");
    for entry in rows {
        store_row(store, entry).await;
    }
}

/// One row: retried with backoff while the store is unreachable; on any
/// other failure stored once more in its minimal form, then given up.
async fn store_row(store: &Store, entry: &LedgerEntry) {
    let mut attempt = 1;
    loop {
        match store.insert_ledger(entry).await {
            // A retry after a timeout may find the first insert landed.
            Ok(()) | Err(StoreError::Conflict(_)) => return,
            Err(e @ StoreError::Unavailable(_)) if attempt < MAX_ATTEMPTS => {
                tracing::warn!(error = %e, id = %entry.id, attempt, "ledger insert failed; retrying");
                tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
                attempt += 1;
            }
            Err(e @ StoreError::Unavailable(_)) => {
                tracing::error!(error = %e, id = %entry.id, "ledger insert failed; row given up");
                metrics::counter!("gateway_ledger_write_failures_total").increment(1);
                return;
            }
            Err(e) => {
                tracing::error!(error = %e, id = %entry.id, "ledger row refused; storing it without its free-form fields");
                metrics::counter!("gateway_ledger_rows_scrubbed_total").increment(1);
                if let Err(e) = store.insert_ledger(&entry.minimal()).await {
                    tracing::error!(error = %e, id = %entry.id, "ledger row given up");
                    metrics::counter!("gateway_ledger_write_failures_total").increment(1);
                }
                return;
            }
        }
    }
}
