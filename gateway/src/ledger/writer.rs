//! The writer task: takes rows from the handlers' inbox, keeps them in
//! order in memory or in the spill file, and stores them in batches.
//!
//! # Order
//!
//! Every row in the spill file is older than every row in memory: memory
//! is moved to the end of the file whole, never in part, and a batch is
//! taken from the file while it holds rows, from memory only once it is
//! empty. A batch taken from memory goes back to the front of memory if the
//! store cannot be reached, before anything is spilled; a batch read from
//! the file is simply read again. So rows reach the store in the order the
//! writer received them, outage or not.
//!
//! # Retries
//!
//! While the store is unreachable ([`StoreError::Unavailable`]), the batch
//! is retried with exponential backoff (with jitter, capped) for as long as
//! it takes. Once the outage has lasted [`SPILL_AFTER`], memory is spilled
//! to the file before each wait, so a gateway killed during an outage
//! loses at most the rows received since the last retry; a shorter blip is
//! ridden out in memory. Memory over its bounds is spilled at any time. Retrying is safe because appending is idempotent by
//! request id and adds spend only for the rows actually inserted.
//!
//! Any other failure is about the rows: the batch is stored row by row; a
//! row the database refuses is stored once more in its minimal form
//! ([`LedgerEntry::minimal`]), and given up (logged with its id) only if
//! that fails too.
//!
//! # Shutdown
//!
//! Once the inbox is closed and empty, what is in memory is stored if the
//! store answers and the file is empty; otherwise it is appended to the
//! file, which the next start replays. The file itself is not drained at
//! shutdown, so shutdown is bounded by one store attempt.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::mpsc;

use super::spill::{FileBatch, Spill};
use super::Shared;
use crate::store::{LedgerEntry, Store, StoreError};

/// How long the writer lets a batch gather once a row is waiting. Under
/// load this turns a thousand one-row writes a second into twenty
/// batches; it delays when a row becomes visible, never an answer. Each
/// batch costs a transaction, a commit and round trips to the store
/// whatever its size: at 1,000 requests/s, 50 ms against 10 ms took the
/// gateway's CPU per request from 409 to 346 µs on embedded SQLite.
const LINGER: Duration = Duration::from_millis(50);

/// First and longest wait between attempts while the store is unreachable.
/// Each attempt against a stopped Postgres also waits out the pool's
/// acquire timeout, so the cap bounds how long after the database is back
/// the backlog starts to drain.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// How long the store must have been unreachable before memory is spilled
/// at every retry: a blip is ridden out in memory, an outage goes to disk.
const SPILL_AFTER: Duration = Duration::from_secs(1);

/// How often memory is spilled while the store does not answer.
const SPILL_TICK: Duration = Duration::from_millis(200);

pub(super) struct Writer {
    pub store: Store,
    pub rx: mpsc::UnboundedReceiver<LedgerEntry>,
    pub shared: Arc<Shared>,
    /// `None` without a spill directory: rows then wait in memory only.
    pub spill: Option<Arc<Mutex<Spill>>>,
    pub batch: usize,
    /// Past these, memory is moved to the spill file.
    pub memory_rows: u64,
    pub memory_bytes: u64,
    pub spill_max_bytes: u64,
}

/// Rows being stored, and where they came from.
enum Taken {
    Memory(Vec<LedgerEntry>),
    File(FileBatch),
}

impl Taken {
    fn rows(&self) -> &[LedgerEntry] {
        match self {
            Taken::Memory(rows) => rows,
            Taken::File(b) => &b.rows,
        }
    }
}

/// How storing a batch went.
enum Stored {
    /// Every row is in the store (or was given up as unstorable).
    Done,
    /// The store cannot be reached; nothing is known to be stored.
    Unreachable,
}

impl Writer {
    pub async fn run(mut self) {
        let mut memory: VecDeque<LedgerEntry> = VecDeque::new();
        let mut open = true;
        let mut backoff = BACKOFF_MIN;
        let mut unreachable_since: Option<tokio::time::Instant> = None;
        loop {
            open &= self.absorb(&mut memory);
            if memory.is_empty() && self.file_unread() == 0 {
                self.shared.oldest_ms.store(0, Ordering::Release);
                if !open {
                    return;
                }
                let Some(row) = self.rx.recv().await else {
                    open = false;
                    continue;
                };
                memory.push_back(row);
                self.linger(&mut memory).await;
                continue;
            }
            if !open && (self.file_unread() > 0 || self.shared.reachable() == Some(false)) {
                // Shutting down with a backlog on disk or no store: leave
                // the rest to the next start.
                self.final_spill(&mut memory).await;
                return;
            }
            let taken = match self.take(&mut memory).await {
                Ok(taken) => taken,
                Err(e) => {
                    tracing::error!(error = %e, "cannot read the ledger spill file; retrying");
                    tokio::time::sleep(BACKOFF_MAX).await;
                    continue;
                }
            };
            if let Some(first) = taken.rows().first() {
                self.shared
                    .oldest_ms
                    .store(first.created_at.max(1), Ordering::Release);
            }
            let (outcome, copied) = self
                .attempt(&taken, &mut memory, &mut open, unreachable_since)
                .await;
            match (outcome, taken) {
                (Stored::Done, taken) => {
                    self.shared.set_reachable(true);
                    backoff = BACKOFF_MIN;
                    unreachable_since = None;
                    if copied {
                        // Also in the file: counted when the copy is
                        // replayed (and skipped as already stored).
                        self.left_memory(taken.rows());
                    } else {
                        self.stored(taken).await;
                    }
                }
                (Stored::Unreachable, taken) => {
                    self.shared.set_reachable(false);
                    metrics::counter!("gateway_ledger_store_retries_total").increment(1);
                    match taken {
                        Taken::Memory(rows) if copied => self.left_memory(&rows),
                        Taken::Memory(rows) => {
                            for row in rows.into_iter().rev() {
                                memory.push_front(row);
                            }
                        }
                        Taken::File(_) => {}
                    }
                    if !open {
                        continue;
                    }
                    let since = *unreachable_since.get_or_insert_with(tokio::time::Instant::now);
                    if since.elapsed() >= SPILL_AFTER {
                        self.spill(Vec::new(), &mut memory, false).await;
                    }
                    open &= self.wait_absorbing(&mut memory, jitter(backoff)).await;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
            if self.over_bounds() {
                self.spill(Vec::new(), &mut memory, false).await;
            }
        }
    }

    /// Stores `taken` while taking in new rows. Meanwhile memory is
    /// spilled when over its bounds, or every [`SPILL_TICK`] once the
    /// store has not answered for [`SPILL_AFTER`] (counted from
    /// `unreachable_since`, or from the start of this attempt): a store
    /// that hangs must not hold rows in memory, nor make admission refuse
    /// requests. A batch taken from memory is then copied to the file
    /// first, to keep the order; the second value says so.
    async fn attempt(
        &mut self,
        taken: &Taken,
        memory: &mut VecDeque<LedgerEntry>,
        open: &mut bool,
        unreachable_since: Option<tokio::time::Instant>,
    ) -> (Stored, bool) {
        let store = self.store.clone();
        let call = store_rows(&store, taken.rows());
        tokio::pin!(call);
        let since = unreachable_since.unwrap_or_else(tokio::time::Instant::now);
        let mut tick = tokio::time::interval(SPILL_TICK);
        let mut buf = Vec::new();
        let mut copied = false;
        loop {
            let due = tokio::select! {
                biased;
                outcome = &mut call => return (outcome, copied),
                n = self.rx.recv_many(&mut buf, self.batch), if *open => {
                    if n == 0 {
                        *open = false;
                    }
                    memory.extend(buf.drain(..));
                    self.over_bounds()
                }
                _ = tick.tick() => {
                    let silent = since.elapsed() >= SPILL_AFTER;
                    if silent {
                        // Not failed yet, but not answering either.
                        self.shared.set_reachable(false);
                    }
                    silent
                }
            };
            let in_flight = match taken {
                Taken::Memory(rows) if !copied => rows.as_slice(),
                _ => &[],
            };
            if due && !(memory.is_empty() && in_flight.is_empty()) {
                let before = in_flight.to_vec();
                if self.spill(before, memory, false).await && !in_flight.is_empty() {
                    copied = true;
                }
            }
        }
    }

    fn left_memory(&self, rows: &[LedgerEntry]) {
        let bytes: usize = rows.iter().map(LedgerEntry::approx_bytes).sum();
        self.shared.memory_left(rows.len() as u64, bytes as u64);
    }

    /// Moves every row waiting in the inbox to memory; false once the
    /// inbox is closed and empty.
    fn absorb(&mut self, memory: &mut VecDeque<LedgerEntry>) -> bool {
        loop {
            match self.rx.try_recv() {
                Ok(row) => memory.push_back(row),
                Err(mpsc::error::TryRecvError::Empty) => return true,
                Err(mpsc::error::TryRecvError::Disconnected) => return false,
            }
        }
    }

    /// Lets a batch gather for [`LINGER`] unless one is already waiting.
    /// It sleeps rather than waits on the inbox: a wait on the inbox would
    /// wake this task (and often a parked worker thread) for every row
    /// sent meanwhile, hundreds of wake-ups a second under load, where
    /// sleeping costs one.
    async fn linger(&mut self, memory: &mut VecDeque<LedgerEntry>) {
        if memory.len() < self.batch {
            tokio::time::sleep(LINGER).await;
            self.absorb(memory);
        }
    }

    /// Sleeps for `wait` while taking in new rows (and spilling them when
    /// memory is over its bounds); false if the inbox closed meanwhile.
    async fn wait_absorbing(&mut self, memory: &mut VecDeque<LedgerEntry>, wait: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + wait;
        let mut buf = Vec::new();
        loop {
            match tokio::time::timeout_at(deadline, self.rx.recv_many(&mut buf, self.batch)).await {
                Ok(0) => return false,
                Ok(_) => {
                    memory.extend(buf.drain(..));
                    if self.over_bounds() {
                        self.spill(Vec::new(), memory, false).await;
                    }
                }
                Err(_) => return true,
            }
        }
    }

    fn file_unread(&self) -> u64 {
        self.shared.spill_rows.load(Ordering::Acquire)
    }

    fn over_bounds(&self) -> bool {
        self.shared.memory_rows.load(Ordering::Acquire) > self.memory_rows
            || self.shared.memory_bytes.load(Ordering::Acquire) > self.memory_bytes
    }

    /// The next batch: from the file while it holds rows, else from memory.
    async fn take(&mut self, memory: &mut VecDeque<LedgerEntry>) -> std::io::Result<Taken> {
        if let (Some(spill), true) = (&self.spill, self.file_unread() > 0) {
            let max = self.batch;
            let batch = on_spill(spill, move |s| s.read(max)).await?;
            return Ok(Taken::File(batch));
        }
        let n = memory.len().min(self.batch);
        Ok(Taken::Memory(memory.drain(..n).collect()))
    }

    /// Accounts for a stored batch.
    async fn stored(&mut self, taken: Taken) {
        let n = match taken {
            Taken::Memory(rows) => {
                let bytes: usize = rows.iter().map(LedgerEntry::approx_bytes).sum();
                self.shared.memory_left(rows.len() as u64, bytes as u64);
                rows.len() as u64
            }
            Taken::File(batch) => {
                let Some(spill) = &self.spill else {
                    return;
                };
                let rows = batch.rows.len() as u64;
                let lines = batch.lines;
                // A failed cut leaves the rows in the file to be stored
                // again, which the store skips; counted all the same.
                let counts = on_spill(spill, move |s| {
                    s.commit(&batch).map(|()| (s.unread(), s.len()))
                })
                .await;
                match counts {
                    Ok((unread, len)) => self.shared.spill_is(unread, len),
                    Err(e) => tracing::error!(error = %e, "cannot update the ledger spill file"),
                }
                metrics::counter!("gateway_ledger_replayed_rows_total").increment(rows);
                lines
            }
        };
        self.shared.written_tx.send_modify(|w| *w += n);
    }

    /// Appends `before` (rows of a batch in flight, still counted in
    /// memory), then every row in memory, to the spill file; true if they
    /// are there. Rows stay in memory if there is no file, it is full, or
    /// the write fails. `at_shutdown` ignores the size cap: going over it
    /// beats losing the rows.
    async fn spill(
        &mut self,
        before: Vec<LedgerEntry>,
        memory: &mut VecDeque<LedgerEntry>,
        at_shutdown: bool,
    ) -> bool {
        let Some(spill) = &self.spill else {
            return false;
        };
        if (memory.is_empty() && before.is_empty())
            || (!at_shutdown
                && self.shared.spill_bytes.load(Ordering::Acquire) >= self.spill_max_bytes)
        {
            return false;
        }
        let from_memory = memory.len();
        let mut rows = before;
        rows.extend(memory.drain(..));
        let result = on_spill(spill, move |s| {
            let appended = s.append(&rows);
            (appended.map(|()| (s.unread(), s.len())), rows)
        })
        .await;
        match result {
            (Ok((unread, len)), rows) => {
                let moved = &rows[rows.len() - from_memory..];
                self.left_memory(moved);
                self.shared.spill_is(unread, len);
                metrics::counter!("gateway_ledger_spilled_rows_total").increment(rows.len() as u64);
                true
            }
            (Err(e), mut rows) => {
                tracing::error!(error = %e, rows = rows.len(), "cannot write the ledger spill file; rows stay in memory");
                metrics::counter!("gateway_ledger_spill_write_failures_total").increment(1);
                memory.extend(rows.drain(rows.len() - from_memory..));
                false
            }
        }
    }

    /// At shutdown: whatever is in memory goes to the file, or is lost
    /// (and said so) when there is no file.
    async fn final_spill(&mut self, memory: &mut VecDeque<LedgerEntry>) {
        self.spill(Vec::new(), memory, true).await;
        if memory.is_empty() {
            return;
        }
        tracing::error!(
            rows = memory.len(),
            "ledger rows lost at shutdown: the store is unreachable and no spill file could take them"
        );
        metrics::counter!("gateway_ledger_write_failures_total").increment(memory.len() as u64);
        let lost: Vec<LedgerEntry> = memory.drain(..).collect();
        self.left_memory(&lost);
        self.shared
            .written_tx
            .send_modify(|w| *w += lost.len() as u64);
    }
}

/// Runs `f` on the spill file on the blocking pool (file writes and syncs
/// must not stall the runtime's workers).
async fn on_spill<T, F>(spill: &Arc<Mutex<Spill>>, f: F) -> T
where
    F: FnOnce(&mut Spill) -> T + Send + 'static,
    T: Send + 'static,
{
    let spill = Arc::clone(spill);
    let run = move || f(&mut spill.lock().unwrap_or_else(PoisonError::into_inner));
    match tokio::task::spawn_blocking(run).await {
        Ok(t) => t,
        // The closures above do not panic; a panic would be a bug worth
        // surfacing rather than hiding behind a made-up result.
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

/// `d` ± 25%, so gateways that lost the same database do not retry in step.
fn jitter(d: Duration) -> Duration {
    let quarter = d / 4;
    let nanos = u64::try_from(quarter.as_nanos()).unwrap_or(u64::MAX).max(1);
    d.saturating_sub(quarter) + Duration::from_nanos(rand::random_range(0..nanos * 2))
}

/// Stores a batch in one transaction; if that fails for a reason other
/// than an unreachable store (one row the database refuses), row by row,
/// so one bad row cannot take the others down with it. Rows arrive
/// scrubbed of NUL (by the sink, or when read from the spill file).
async fn store_rows(store: &Store, rows: &[LedgerEntry]) -> Stored {
    match store.insert_ledger_batch(rows).await {
        Ok(appended) => {
            count_appended(appended.inserted, appended.duplicates);
            return Stored::Done;
        }
        Err(e @ StoreError::Unavailable(_)) => {
            tracing::warn!(error = %e, rows = rows.len(), "ledger store unreachable; rows wait");
            return Stored::Unreachable;
        }
        Err(e) => {
            tracing::warn!(error = %e, rows = rows.len(), "ledger batch failed; storing rows one by one");
        }
    }
    for entry in rows {
        if let Stored::Unreachable = store_row(store, entry).await {
            // Rows stored one by one so far are skipped when the batch is
            // retried.
            return Stored::Unreachable;
        }
    }
    Stored::Done
}

/// One row; on a refusal, once more in its minimal form, then given up.
async fn store_row(store: &Store, entry: &LedgerEntry) -> Stored {
    let e = match store.insert_ledger(entry).await {
        Ok(a) => {
            count_appended(a.inserted, a.duplicates);
            return Stored::Done;
        }
        Err(StoreError::Unavailable(_)) => return Stored::Unreachable,
        Err(e) => e,
    };
    tracing::error!(error = %e, id = %entry.id, "ledger row refused; storing it without its free-form fields");
    metrics::counter!("gateway_ledger_rows_scrubbed_total").increment(1);
    match store.insert_ledger(&entry.minimal()).await {
        Ok(a) => count_appended(a.inserted, a.duplicates),
        Err(StoreError::Unavailable(_)) => return Stored::Unreachable,
        Err(e) => {
            tracing::error!(error = %e, id = %entry.id, "ledger row given up");
            metrics::counter!("gateway_ledger_write_failures_total").increment(1);
        }
    }
    Stored::Done
}

fn count_appended(inserted: u64, duplicates: u64) {
    metrics::counter!("gateway_ledger_rows_total").increment(inserted);
    if duplicates > 0 {
        metrics::counter!("gateway_ledger_duplicate_rows_total").increment(duplicates);
    }
}
