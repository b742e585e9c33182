//! The spill file: ledger rows the store could not take yet, kept on disk
//! in order until it can.
//!
//! # Format
//!
//! JSON Lines: one [`LedgerEntry`] per line, as `serde_json` writes it
//! (which escapes every newline inside a string, so a row is always one
//! line). A line counts only once its `\n` is in the file. Rows are
//! appended at the end and read from the front; once every row has been
//! stored the file is truncated to nothing.
//!
//! # Crashes
//!
//! - A torn last line (the process or the machine died mid-append) has no
//!   `\n`; opening the file cuts it off, so the next append starts on a
//!   line of its own. Only that unfinished row is lost, and only a machine
//!   crash can leave one: a process crash keeps everything `write` returned
//!   for.
//! - Rows stored but not yet cut from the file (a crash between the commit
//!   and the truncation) are replayed on the next start and skipped by the
//!   store as already present: the ledger is idempotent by request id.
//! - A complete line that does not parse (a manual edit, a format from a
//!   future version) is moved to `ledger-spill.rejected` beside the file,
//!   never silently dropped, and logged.
//!
//! # Durability
//!
//! Each append is one `write` of all the rows being spilled followed by
//! one `fdatasync`, so an acknowledged spill survives a power cut, at the
//! cost of one sync per spill (spills happen at most once per retry of an
//! unreachable store, or when memory is over its bound), never per row.
//!
//! # One owner
//!
//! The file is locked (an advisory exclusive lock) for the life of the
//! gateway: two gateways sharing a spill directory would replay and cut
//! each other's rows, so the second refuses to start.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::store::LedgerEntry;

/// File name of the spill inside the spill directory.
pub const SPILL_FILE: &str = "ledger-spill.jsonl";
/// Lines that could not be read back, kept for an operator.
pub const REJECTED_FILE: &str = "ledger-spill.rejected";

/// Why the spill file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SpillError {
    #[error("cannot open the ledger spill file {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the ledger spill file {0} is in use by another gateway")]
    Locked(PathBuf),
}

/// The open, locked spill file and where its unread rows are.
pub(super) struct Spill {
    file: File,
    dir: PathBuf,
    /// Bytes in the file: complete lines only.
    len: u64,
    /// Start of the first row not yet stored.
    read_pos: u64,
    /// Complete lines from `read_pos` to `len`.
    unread: u64,
}

/// Rows read from the front of the file; `end` is where the next unread
/// row starts once these are stored.
pub(super) struct FileBatch {
    pub rows: Vec<LedgerEntry>,
    /// Lines read, including any that did not parse.
    pub lines: u64,
    pub end: u64,
}

impl Spill {
    /// Opens (creating) the spill file in `dir`, locks it, cuts a torn
    /// last line, and counts the rows waiting in it.
    pub fn open(dir: &Path) -> Result<Spill, SpillError> {
        let path = dir.join(SPILL_FILE);
        let open_err = |source| SpillError::Open {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(open_err)?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(open_err)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => return Err(SpillError::Locked(path)),
            Err(TryLockError::Error(e)) => return Err(open_err(e)),
        }
        let mut spill = Spill {
            file,
            dir: dir.to_owned(),
            len: 0,
            read_pos: 0,
            unread: 0,
        };
        let (len, lines) = spill.scan().map_err(open_err)?;
        let on_disk = spill.file.metadata().map_err(open_err)?.len();
        if on_disk > len {
            tracing::warn!(
                path = %path.display(),
                bytes = on_disk - len,
                "ledger spill file ends in a torn line (a crash mid-write); cutting it off"
            );
            spill.file.set_len(len).map_err(open_err)?;
            spill.file.sync_data().map_err(open_err)?;
        }
        spill.len = len;
        spill.unread = lines;
        Ok(spill)
    }

    /// Length of the complete lines and their number.
    fn scan(&mut self) -> std::io::Result<(u64, u64)> {
        self.file.seek(SeekFrom::Start(0))?;
        let mut reader = BufReader::new(&mut self.file);
        let (mut len, mut lines) = (0u64, 0u64);
        let mut line = Vec::new();
        loop {
            line.clear();
            let n = reader.read_until(b'\n', &mut line)?;
            if n == 0 || line.last() != Some(&b'\n') {
                return Ok((len, lines));
            }
            len += n as u64;
            lines += 1;
        }
    }

    /// Rows not yet stored.
    pub fn unread(&self) -> u64 {
        self.unread
    }

    /// Bytes the file takes on disk (stored rows are cut only when the
    /// whole file has been stored).
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Appends `rows` in order with one write and one sync; on error the
    /// file is cut back to where it was, so no half row stays behind.
    pub fn append(&mut self, rows: &[LedgerEntry]) -> std::io::Result<()> {
        let mut buf = Vec::with_capacity(rows.len() * 1024);
        for row in rows {
            serde_json::to_writer(&mut buf, row).map_err(std::io::Error::other)?;
            buf.push(b'\n');
        }
        let written = self
            .file
            .seek(SeekFrom::Start(self.len))
            .and_then(|_| self.file.write_all(&buf))
            .and_then(|()| self.file.sync_data());
        if let Err(e) = written {
            let _ = self.file.set_len(self.len);
            return Err(e);
        }
        self.len += buf.len() as u64;
        self.unread += rows.len() as u64;
        Ok(())
    }

    /// Reads up to `max` rows from the first unread one, without marking
    /// them stored (see [`Spill::commit`]). Lines that do not parse are
    /// moved to the rejected file and counted in `lines` but not returned.
    pub fn read(&mut self, max: usize) -> std::io::Result<FileBatch> {
        self.file.seek(SeekFrom::Start(self.read_pos))?;
        let mut reader = BufReader::new((&mut self.file).take(self.len - self.read_pos));
        let mut batch = FileBatch {
            rows: Vec::with_capacity(max.min(1024)),
            lines: 0,
            end: self.read_pos,
        };
        let mut rejected = Vec::new();
        let mut line = Vec::new();
        while batch.rows.len() < max {
            line.clear();
            let n = reader.read_until(b'\n', &mut line)?;
            if n == 0 {
                break;
            }
            batch.end += n as u64;
            batch.lines += 1;
            match serde_json::from_slice::<LedgerEntry>(&line) {
                Ok(mut row) => {
                    // Written scrubbed by this version; maybe not by an
                    // older one.
                    row.scrub_nul();
                    batch.rows.push(row);
                }
                Err(e) => {
                    tracing::error!(error = %e, offset = batch.end - n as u64,
                        "unreadable ledger spill line; moved to {REJECTED_FILE}");
                    rejected.extend_from_slice(&line);
                }
            }
        }
        if !rejected.is_empty() {
            metrics::counter!("gateway_ledger_spill_rejected_lines_total").increment(1);
            let mut out = OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.dir.join(REJECTED_FILE))?;
            out.write_all(&rejected)?;
            out.sync_data()?;
        }
        Ok(batch)
    }

    /// Marks the rows of a [`FileBatch`] stored; once none is left the
    /// file is cut to nothing.
    pub fn commit(&mut self, batch: &FileBatch) -> std::io::Result<()> {
        self.read_pos = batch.end;
        if batch.lines == 0 {
            // Nothing was left to read although rows were counted (the
            // file was cut behind our back): start afresh.
            self.read_pos = self.len;
        }
        self.unread = self.unread.saturating_sub(batch.lines);
        if self.read_pos >= self.len {
            // Not synced: should a machine crash undo the cut, the rows
            // come back and are skipped as already stored.
            self.file.set_len(0)?;
            self.len = 0;
            self.read_pos = 0;
            self.unread = 0;
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::privacy::Class;
    use crate::store::LedgerStatus;

    fn row(id: &str) -> LedgerEntry {
        LedgerEntry {
            id: id.to_owned(),
            tenant_id: "t".into(),
            key_id: "k".into(),
            requested_model: "m\nwith a newline".into(),
            resolved_model: None,
            backend: Some("b".into()),
            route_reason: None,
            privacy_class: Class::Internal,
            detectors: vec!["email".into()],
            predicted_latency_ms: None,
            predicted_energy_j: None,
            predicted_cost_usd: None,
            latency_ms: Some(f64::NAN),
            ttft_ms: None,
            prompt_tokens: Some(3),
            completion_tokens: Some(4),
            usage_estimated: false,
            joules: None,
            usd: Some(0.25),
            status: LedgerStatus::Ok,
            http_status: Some(200),
            error_code: None,
            stream: false,
            decision: crate::store::DecisionJson::new(&serde_json::json!({"chosen": "b"})),
            created_at: 7,
            placement: crate::store::Placement::default(),
        }
    }

    fn ids(batch: &FileBatch) -> Vec<&str> {
        batch.rows.iter().map(|r| r.id.as_str()).collect()
    }

    #[test]
    fn rows_come_back_in_order_and_the_file_empties_once_stored() {
        let dir = tempfile::tempdir().unwrap();
        let mut spill = Spill::open(dir.path()).unwrap();
        spill.append(&[row("a"), row("b")]).unwrap();
        spill.append(&[row("c")]).unwrap();
        assert_eq!(spill.unread(), 3);
        let first = spill.read(2).unwrap();
        assert_eq!(ids(&first), ["a", "b"]);
        // Not committed: read again from the same place.
        assert_eq!(ids(&spill.read(2).unwrap()), ["a", "b"]);
        spill.commit(&first).unwrap();
        assert_eq!(spill.unread(), 1);
        let rest = spill.read(10).unwrap();
        assert_eq!(ids(&rest), ["c"]);
        // NaN is not JSON: it comes back as unknown.
        assert_eq!(rest.rows[0].latency_ms, None);
        assert_eq!(rest.rows[0].requested_model, "m\nwith a newline");
        spill.commit(&rest).unwrap();
        assert_eq!((spill.unread(), spill.len()), (0, 0));
        let path = dir.path().join(SPILL_FILE);
        assert_eq!(std::fs::metadata(path).unwrap().len(), 0);
    }

    #[test]
    fn a_torn_last_line_is_cut_and_the_next_row_starts_clean() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut spill = Spill::open(dir.path()).unwrap();
            spill.append(&[row("a"), row("b")]).unwrap();
        }
        let path = dir.path().join(SPILL_FILE);
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(br#"{"id":"torn","tenant_id":"#).unwrap();
        drop(f);
        let mut spill = Spill::open(dir.path()).unwrap();
        assert_eq!(spill.unread(), 2);
        spill.append(&[row("c")]).unwrap();
        assert_eq!(ids(&spill.read(10).unwrap()), ["a", "b", "c"]);
    }

    #[test]
    fn an_unreadable_line_is_set_aside_not_lost() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(SPILL_FILE);
        let mut text = serde_json::to_string(&row("a")).unwrap();
        text.push_str("\nnot json at all\n");
        text.push_str(&serde_json::to_string(&row("b")).unwrap());
        text.push('\n');
        std::fs::write(&path, text).unwrap();
        let mut spill = Spill::open(dir.path()).unwrap();
        assert_eq!(spill.unread(), 3);
        let batch = spill.read(10).unwrap();
        assert_eq!((ids(&batch), batch.lines), (vec!["a", "b"], 3));
        spill.commit(&batch).unwrap();
        assert_eq!(spill.unread(), 0);
        let rejected = std::fs::read_to_string(dir.path().join(REJECTED_FILE)).unwrap();
        assert_eq!(rejected, "not json at all\n");
    }

    #[test]
    fn a_second_owner_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let _first = Spill::open(dir.path()).unwrap();
        assert!(matches!(
            Spill::open(dir.path()),
            Err(SpillError::Locked(_))
        ));
    }
}
