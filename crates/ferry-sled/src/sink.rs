//! The seam between the mover and the durable log.
//!
//! The mover needs exactly two things from a log: append records durably, and tell which
//! record was appended last (to resume after a crash without appending a sequence number
//! twice). [`DurableSink`] is that contract; `ferry_log::Log` implements it in production,
//! [`MemorySink`] in tests that need a sink that fails on demand.

use crate::error::CaptureError;
use ferry_core::{Lsn, Record};
use std::sync::{Arc, Mutex};

/// Where the mover puts records.
///
/// Contract:
/// - `append` writes the records in order after every record appended before; when it
///   returns `Ok`, all of them are durable (survive a crash of this process and of the
///   machine). When it returns `Err`, any prefix of them may have become durable — the mover
///   finds out which through `last_record` when it starts again, and never retries in
///   place.
/// - `last_record` returns the last durable record, decoded, or `None` for an empty log;
///   `last_lsn` its LSN (`Lsn::ZERO` for an empty log). LSNs are dense from 1.
pub trait DurableSink: Send + 'static {
    fn append(&mut self, records: &[Vec<u8>]) -> Result<(), CaptureError>;
    fn last_record(&mut self) -> Result<Option<Record>, CaptureError>;
    fn last_lsn(&mut self) -> Result<Lsn, CaptureError>;
}

/// An in-memory sink: "durable" means "in this vector". For tests of the capture library
/// itself; it can be told to fail the next appends.
#[derive(Clone, Default)]
pub struct MemorySink {
    inner: Arc<Mutex<MemorySinkState>>,
}

#[derive(Default)]
struct MemorySinkState {
    records: Vec<Vec<u8>>,
    fail_appends: u32,
}

#[derive(Debug, thiserror::Error)]
#[error("MemorySink was told to fail this append")]
struct InjectedFailure;

impl MemorySink {
    pub fn new() -> Self {
        Self::default()
    }

    /// Every record appended so far, decoded.
    pub fn records(&self) -> Result<Vec<Record>, CaptureError> {
        let state = lock(&self.inner);
        state
            .records
            .iter()
            .map(|r| Record::decode(r).map_err(CaptureError::from))
            .collect()
    }

    /// Makes the next `n` appends fail without storing anything.
    pub fn fail_next_appends(&self, n: u32) {
        lock(&self.inner).fail_appends = n;
    }
}

fn lock(m: &Mutex<MemorySinkState>) -> std::sync::MutexGuard<'_, MemorySinkState> {
    // A panic while holding this lock leaves plain data behind; keep going.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl DurableSink for MemorySink {
    fn append(&mut self, records: &[Vec<u8>]) -> Result<(), CaptureError> {
        let mut state = lock(&self.inner);
        if state.fail_appends > 0 {
            state.fail_appends -= 1;
            return Err(CaptureError::Sink(Box::new(InjectedFailure)));
        }
        state.records.extend(records.iter().cloned());
        Ok(())
    }

    fn last_lsn(&mut self) -> Result<Lsn, CaptureError> {
        Ok(Lsn(lock(&self.inner).records.len() as u64))
    }

    fn last_record(&mut self) -> Result<Option<Record>, CaptureError> {
        let state = lock(&self.inner);
        match state.records.last() {
            Some(r) => Ok(Some(Record::decode(r)?)),
            None => Ok(None),
        }
    }
}

impl DurableSink for ferry_log::Log {
    fn last_lsn(&mut self) -> Result<Lsn, CaptureError> {
        Ok(self.durable_lsn())
    }

    fn append(&mut self, records: &[Vec<u8>]) -> Result<(), CaptureError> {
        self.append_batch(records)?;
        Ok(())
    }

    fn last_record(&mut self) -> Result<Option<Record>, CaptureError> {
        let durable = self.durable_lsn();
        if durable == Lsn::ZERO {
            return Ok(None);
        }
        match self.reader(durable)?.next() {
            Some(r) => Ok(Some(Record::decode(&r?.1)?)),
            None => Ok(None),
        }
    }
}
