//! The shipper's input: a narrow trait over the durable log, so that the binary can adapt the
//! log to it and tests can feed records directly.

use crate::types::ColumnProfile;
use ferry_core::{Lsn, Record};
use std::collections::BTreeMap;
use std::time::Duration;

/// A source of log records in LSN order.
///
/// Contract:
/// - records come with dense, increasing LSNs (`n`, `n + 1`, …); a gap is an error the
///   shipper refuses to step over;
/// - `read_batch(after, ..)` returns records with `lsn > after`, at most `max_records` of
///   them, starting at `after + 1`; it may return none when `wait` elapses without new
///   records;
/// - the same LSN always yields the same record (the shipper re-reads after a crash and
///   relies on it for exactly-once);
/// - in a snapshot (`SnapshotBegin` … `SnapshotEnd`) the rows of one table are contiguous:
///   once rows of another table have started, the first table's rows are complete.
pub trait RecordSource: Send {
    /// The log's identity: 32 hex characters. The shipper refuses a log whose id differs
    /// from the one `ferry.progress` recorded.
    fn log_id(&self) -> String;

    /// Records with `lsn > after`, in order, at most `max_records`, waiting up to `wait` for
    /// the first one.
    fn read_batch(
        &mut self,
        after: Lsn,
        max_records: usize,
        wait: Duration,
    ) -> Result<Vec<(Lsn, Record)>, RecordSourceError>;

    /// What the shipper's first pass over a snapshot would learn, if this source can tell it
    /// more cheaply than by handing over every record twice (a one-shot snapshot reading
    /// SQLite profiles the values where it reads them). Asked once, right after the
    /// `SnapshotBegin` at `begin_lsn` was read; `profile` says whether column profiles are
    /// wanted. `None` (the default): the shipper reads the snapshot range itself.
    fn snapshot_summary(
        &mut self,
        begin_lsn: Lsn,
        profile: bool,
    ) -> Result<Option<SnapshotSummary>, RecordSourceError> {
        let _ = (begin_lsn, profile);
        Ok(None)
    }
}

/// See [`RecordSource::snapshot_summary`].
#[derive(Clone, Debug)]
pub struct SnapshotSummary {
    /// The LSN of the snapshot's `SnapshotEnd`.
    pub end_lsn: Lsn,
    /// Per table, one profile per column in schema order (empty unless asked for).
    pub profiles: BTreeMap<String, Vec<ColumnProfile>>,
    /// What the `SnapshotEnd` will say.
    pub row_counts: Vec<(String, u64)>,
}

/// A failure of the record source (the log): what went wrong, with its cause.
#[derive(Debug, thiserror::Error)]
#[error("reading the log: {message}")]
pub struct RecordSourceError {
    pub message: String,
    #[source]
    pub source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl RecordSourceError {
    pub fn new(message: impl Into<String>) -> Self {
        RecordSourceError {
            message: message.into(),
            source: None,
        }
    }

    pub fn with_source(
        message: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        RecordSourceError {
            message: message.into(),
            source: Some(Box::new(source)),
        }
    }
}

/// An in-memory record source: records numbered from LSN 1. For tests and for the one-shot
/// snapshot path, which has no log.
#[derive(Clone, Debug)]
pub struct VecRecordSource {
    log_id: String,
    records: Vec<Record>,
}

impl VecRecordSource {
    pub fn new(log_id: impl Into<String>, records: Vec<Record>) -> Self {
        VecRecordSource {
            log_id: log_id.into(),
            records,
        }
    }

    pub fn push(&mut self, record: Record) -> Lsn {
        self.records.push(record);
        Lsn(self.records.len() as u64)
    }

    /// The LSN of the last record (ZERO when empty).
    pub fn last_lsn(&self) -> Lsn {
        Lsn(self.records.len() as u64)
    }

    pub fn records(&self) -> &[Record] {
        &self.records
    }
}

impl RecordSource for VecRecordSource {
    fn log_id(&self) -> String {
        self.log_id.clone()
    }

    fn read_batch(
        &mut self,
        after: Lsn,
        max_records: usize,
        _wait: Duration,
    ) -> Result<Vec<(Lsn, Record)>, RecordSourceError> {
        let start = usize::try_from(after.0).unwrap_or(usize::MAX);
        Ok(self
            .records
            .iter()
            .enumerate()
            .skip(start)
            .take(max_records)
            .map(|(i, r)| (Lsn(i as u64 + 1), r.clone()))
            .collect())
    }
}
