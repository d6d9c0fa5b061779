//! Where capture puts its records: the narrow seam between capture and the durable log.
//!
//! [`RecordSink`] is all capture needs from a log: append a batch durably and learn its LSNs,
//! know the last durable LSN, and read back one record (to check, after a crash, which of the
//! shadow journal's transactions the log really holds). The durable log implements it through
//! [`LogSink`]; [`RecordFile`] is a minimal single-file implementation (length, CRC32C, payload;
//! fsync per batch; a torn tail is cut on open) that this crate's tests and crash-test
//! binary use, with the same durability contract.

use ferry_core::{Lsn, Record};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("log I/O on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("log record {lsn} does not decode: {source}")]
    Decode {
        lsn: Lsn,
        #[source]
        source: ferry_core::DecodeError,
    },
    #[error("log error: {0}")]
    Other(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// A durable, append-only sequence of records with dense LSNs starting at 1.
///
/// Contract: `append_batch` returns only once every record of the batch is durable, and
/// assigns them consecutive LSNs after `durable_lsn()`; after a crash, a prefix of an
/// in-flight batch may be durable, never a record without all records before it.
pub trait RecordSink: Send + Sync {
    /// Appends `records` durably; returns the LSN of the last one.
    fn append_batch(&self, records: &[Record]) -> Result<Lsn, SinkError>;
    /// The LSN of the last durable record, `Lsn::ZERO` when empty.
    fn durable_lsn(&self) -> Lsn;
    /// The record at `lsn`, if the log holds it.
    fn record_at(&self, lsn: Lsn) -> Result<Option<Record>, SinkError>;
}

/// A single-file record log for tests and the crash-test binary.
pub struct RecordFile {
    path: PathBuf,
    inner: Mutex<RecordFileInner>,
}

struct RecordFileInner {
    file: File,
    offsets: Vec<u64>,
    end: u64,
}

impl RecordFile {
    pub fn open(path: &Path) -> Result<RecordFile, SinkError> {
        let io = |source| SinkError::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(path)
            .map_err(io)?;
        let mut buf = Vec::new();
        file.seek(SeekFrom::Start(0)).map_err(io)?;
        file.read_to_end(&mut buf).map_err(io)?;
        let mut offsets = Vec::new();
        let mut pos = 0usize;
        while pos + 8 <= buf.len() {
            let len =
                u32::from_le_bytes([buf[pos], buf[pos + 1], buf[pos + 2], buf[pos + 3]]) as usize;
            let crc = u32::from_le_bytes([buf[pos + 4], buf[pos + 5], buf[pos + 6], buf[pos + 7]]);
            let Some(payload) = buf.get(pos + 8..pos + 8 + len) else {
                break;
            };
            if crc32c::crc32c(payload) != crc {
                break;
            }
            offsets.push(pos as u64);
            pos += 8 + len;
        }
        if pos < buf.len() {
            file.set_len(pos as u64).map_err(io)?;
            file.sync_all().map_err(io)?;
        }
        Ok(RecordFile {
            path: path.to_path_buf(),
            inner: Mutex::new(RecordFileInner {
                file,
                offsets,
                end: pos as u64,
            }),
        })
    }

    /// Every record, in order.
    pub fn read_all(&self) -> Result<Vec<(Lsn, Record)>, SinkError> {
        let n = self.durable_lsn().0;
        (1..=n)
            .map(|i| {
                let r = self
                    .record_at(Lsn(i))?
                    .ok_or_else(|| SinkError::Other(format!("record {i} vanished").into()))?;
                Ok((Lsn(i), r))
            })
            .collect()
    }
}

impl RecordSink for RecordFile {
    fn append_batch(&self, records: &[Record]) -> Result<Lsn, SinkError> {
        let io = |source| SinkError::Io {
            path: self.path.clone(),
            source,
        };
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let mut buf = Vec::new();
        let mut offs = Vec::with_capacity(records.len());
        for r in records {
            let payload = r.encode();
            offs.push(g.end + buf.len() as u64);
            buf.extend_from_slice(&(payload.len() as u32).to_le_bytes());
            buf.extend_from_slice(&crc32c::crc32c(&payload).to_le_bytes());
            buf.extend_from_slice(&payload);
        }
        g.file.write_all(&buf).map_err(io)?;
        g.file.sync_data().map_err(io)?;
        g.end += buf.len() as u64;
        g.offsets.extend(offs);
        Ok(Lsn(g.offsets.len() as u64))
    }

    fn durable_lsn(&self) -> Lsn {
        let g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        Lsn(g.offsets.len() as u64)
    }

    fn record_at(&self, lsn: Lsn) -> Result<Option<Record>, SinkError> {
        use std::os::unix::fs::FileExt;
        let io = |source| SinkError::Io {
            path: self.path.clone(),
            source,
        };
        let g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let Some(&off) = (lsn.0 as usize)
            .checked_sub(1)
            .and_then(|i| g.offsets.get(i))
        else {
            return Ok(None);
        };
        let mut hdr = [0u8; 8];
        g.file.read_exact_at(&mut hdr, off).map_err(io)?;
        let len = u32::from_le_bytes([hdr[0], hdr[1], hdr[2], hdr[3]]) as usize;
        let mut payload = vec![0u8; len];
        g.file.read_exact_at(&mut payload, off + 8).map_err(io)?;
        Record::decode(&payload)
            .map(Some)
            .map_err(|source| SinkError::Decode { lsn, source })
    }
}

/// The durable log as capture's sink: records are encoded and appended as one durable batch.
pub struct LogSink(pub std::sync::Arc<ferry_log::Log>);

impl RecordSink for LogSink {
    fn append_batch(&self, records: &[Record]) -> Result<Lsn, SinkError> {
        if records.is_empty() {
            return Ok(self.0.durable_lsn());
        }
        let payloads: Vec<Vec<u8>> = records.iter().map(Record::encode).collect();
        self.0
            .append_batch(&payloads)
            .map(|r| *r.end())
            .map_err(|e| SinkError::Other(Box::new(e)))
    }

    fn durable_lsn(&self) -> Lsn {
        self.0.durable_lsn()
    }

    fn record_at(&self, lsn: Lsn) -> Result<Option<Record>, SinkError> {
        if lsn == Lsn::ZERO || lsn > self.0.durable_lsn() {
            return Ok(None);
        }
        let mut reader = self
            .0
            .reader(lsn)
            .map_err(|e| SinkError::Other(Box::new(e)))?;
        match reader.next() {
            Some(Ok((l, payload))) if l == lsn => Record::decode(&payload)
                .map(Some)
                .map_err(|source| SinkError::Decode { lsn, source }),
            Some(Ok(_)) | None => Ok(None),
            Some(Err(e)) => Err(SinkError::Other(Box::new(e))),
        }
    }
}
