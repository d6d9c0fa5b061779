//! Reading a source's log from the binary: positions for `ferry status`, records for
//! `ferry log inspect`, and the adapter that feeds the shipper.

use anyhow::Context;
use ferry_core::{Lsn, Record};
use std::path::Path;

/// (log id, durable LSN, lowest consumer position) of the log in `dir`, read-only.
pub fn log_positions(dir: &Path) -> anyhow::Result<(String, u64, u64)> {
    let log = ferry_log::open_read_only(dir)
        .with_context(|| format!("opening the log in {}", dir.display()))?;
    let durable = log.durable_lsn()?;
    let shipped = log
        .consumers()?
        .into_iter()
        .filter(|(name, _)| name == crate::logview::SHIPPER_CONSUMER)
        .map(|(_, lsn)| lsn.0)
        .min()
        .unwrap_or(0);
    Ok((log.log_id().to_string(), durable.0, shipped))
}

/// The consumer name the shipper registers its position under.
pub const SHIPPER_CONSUMER: &str = "shipper";

/// Decodes one payload, naming the LSN when it does not decode.
pub fn decode(lsn: Lsn, payload: &[u8]) -> anyhow::Result<Record> {
    Record::decode(payload).with_context(|| format!("record at LSN {lsn}"))
}

/// The log as the shipper sees it: the in-process writer (`ferry run`) or a read-only view
/// of a log another process writes (`ferry ship` beside `ferry capture`).
pub enum LogHandle {
    #[allow(dead_code)] // `ferry run` ships from its own writer (issue 5)
    Writer(std::sync::Arc<ferry_log::Log>),
    ReadOnly(ferry_log::ReadOnlyLog),
}

impl LogHandle {
    pub fn log_id(&self) -> String {
        match self {
            LogHandle::Writer(l) => l.log_id().to_string(),
            LogHandle::ReadOnly(l) => l.log_id().to_string(),
        }
    }

    pub fn durable_lsn(&self) -> Result<Lsn, ferry_log::LogError> {
        match self {
            LogHandle::Writer(l) => Ok(l.durable_lsn()),
            LogHandle::ReadOnly(l) => l.durable_lsn(),
        }
    }

    fn wait_for(
        &self,
        after: Lsn,
        timeout: std::time::Duration,
    ) -> Result<Lsn, ferry_log::LogError> {
        match self {
            LogHandle::Writer(l) => Ok(l.wait_for(after, timeout)),
            LogHandle::ReadOnly(l) => l.wait_for(after, timeout),
        }
    }

    pub fn reader(&self, from: Lsn) -> Result<ferry_log::LogReader, ferry_log::LogError> {
        match self {
            LogHandle::Writer(l) => l.reader(from),
            LogHandle::ReadOnly(l) => l.reader(from),
        }
    }

    pub fn set_consumer(&self, name: &str, lsn: Lsn) -> Result<(), ferry_log::LogError> {
        match self {
            LogHandle::Writer(l) => l.set_consumer(name, lsn),
            LogHandle::ReadOnly(l) => l.set_consumer(name, lsn),
        }
    }
}

/// Adapts the log to the shipper's [`ferry_pg::RecordSource`]. Reading is blocking file I/O,
/// so the shipper's calls run it on tokio's blocking pool (via `block_in_place`).
pub struct LogRecordSource {
    log: std::sync::Arc<LogHandle>,
    /// The open reader and the next LSN it yields.
    reader: Option<(Lsn, ferry_log::LogReader)>,
    /// Nothing after this LSN is shipped: the source's cutover record (`u64::MAX`: none).
    /// Set from `cutover.json` at start, by the cutover, and when a `Cutover` record is read.
    limit: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

/// A shared "ship nothing after this LSN" limit with none set.
pub fn no_ship_limit() -> std::sync::Arc<std::sync::atomic::AtomicU64> {
    std::sync::Arc::new(std::sync::atomic::AtomicU64::new(u64::MAX))
}

impl LogRecordSource {
    pub fn with_limit(
        log: std::sync::Arc<LogHandle>,
        limit: std::sync::Arc<std::sync::atomic::AtomicU64>,
    ) -> Self {
        LogRecordSource {
            log,
            reader: None,
            limit,
        }
    }

    fn read_blocking(
        &mut self,
        after: Lsn,
        max_records: usize,
        wait: std::time::Duration,
    ) -> Result<Vec<(Lsn, Record)>, ferry_pg::RecordSourceError> {
        let err = |what: &str, e: ferry_log::LogError| {
            ferry_pg::RecordSourceError::with_source(what.to_string(), e)
        };
        use std::sync::atomic::Ordering;
        if after.0 >= self.limit.load(Ordering::SeqCst) {
            // Cut over: PostgreSQL is authoritative; later SQLite writes stay in the log.
            std::thread::sleep(wait.min(std::time::Duration::from_millis(200)));
            return Ok(Vec::new());
        }
        let mut durable = self
            .log
            .durable_lsn()
            .map_err(|e| err("reading the durable LSN", e))?;
        if durable <= after {
            durable = self
                .log
                .wait_for(after, wait)
                .map_err(|e| err("waiting for new records", e))?;
            if durable <= after {
                return Ok(Vec::new());
            }
        }
        let from = after.next();
        if self.reader.as_ref().is_none_or(|(next, _)| *next != from) {
            let r = self
                .log
                .reader(from)
                .map_err(|e| err(&format!("opening a reader at LSN {from}"), e))?;
            self.reader = Some((from, r));
        }
        let mut out = Vec::new();
        while out.len() < max_records {
            let Some((next, reader)) = self.reader.as_mut() else {
                break;
            };
            match reader.next() {
                Some(Ok((lsn, payload))) => {
                    if lsn.0 > self.limit.load(Ordering::SeqCst) {
                        self.reader = None;
                        break;
                    }
                    let record = Record::decode(&payload).map_err(|e| {
                        ferry_pg::RecordSourceError::with_source(
                            format!("record at LSN {lsn} does not decode"),
                            e,
                        )
                    })?;
                    *next = lsn.next();
                    let is_cutover = matches!(record, Record::Cutover(_));
                    out.push((lsn, record));
                    if is_cutover {
                        self.limit.fetch_min(lsn.0, Ordering::SeqCst);
                        break;
                    }
                }
                Some(Err(e)) => return Err(err("reading the log", e)),
                None => {
                    // This reader has reached the durable end it knew; a fresh one sees more.
                    self.reader = None;
                    break;
                }
            }
        }
        Ok(out)
    }
}

impl ferry_pg::RecordSource for LogRecordSource {
    fn log_id(&self) -> String {
        self.log.log_id()
    }

    fn read_batch(
        &mut self,
        after: Lsn,
        max_records: usize,
        wait: std::time::Duration,
    ) -> Result<Vec<(Lsn, Record)>, ferry_pg::RecordSourceError> {
        match tokio::runtime::Handle::try_current() {
            Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(|| self.read_blocking(after, max_records, wait))
            }
            _ => self.read_blocking(after, max_records, wait),
        }
    }
}
