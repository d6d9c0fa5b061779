//! Read-only access to a log that another process may be writing: no lock is taken, nothing
//! is repaired, and the durable LSN comes from the published `durable` file (which may lag
//! the writer, never lead it). Used by `ferry log inspect/verify`, and by consumers in other
//! processes, which may also record their cursors here.

use crate::reader::{DurableSource, LogReader, read_published_durable};
use crate::segment;
use crate::storage::{LogStorage, RealStorage};
use crate::{LogError, LogId, SegmentInfo, consumers};
use ferry_core::Lsn;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A log opened for reading only.
#[derive(Debug)]
pub struct ReadOnlyLog {
    storage: Arc<dyn LogStorage>,
    dir: PathBuf,
    log_id: LogId,
    source_identity: String,
}

/// Bytes at the end of the newest segment that do not form a valid frame: a write in flight,
/// or the torn tail of a crashed writer (which its next open truncates).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TornTail {
    pub segment: PathBuf,
    pub offset: u64,
    pub bytes: u64,
    pub reason: String,
}

/// What [`ReadOnlyLog::verify`] checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifyReport {
    pub segments: usize,
    pub records: u64,
    /// Oldest and newest valid record (`Lsn::ZERO` for both when there is none).
    pub first_lsn: Lsn,
    pub last_lsn: Lsn,
    pub durable_lsn: Lsn,
    pub bytes: u64,
    pub torn_tail: Option<TornTail>,
}

/// Opens the log in `dir` for reading without taking its lock.
pub fn open_read_only(dir: &Path) -> Result<ReadOnlyLog, LogError> {
    open_read_only_with(Arc::new(RealStorage), dir)
}

/// [`open_read_only`] on any storage.
pub fn open_read_only_with(
    storage: Arc<dyn LogStorage>,
    dir: &Path,
) -> Result<ReadOnlyLog, LogError> {
    // Retention may delete the oldest segment between listing and opening it: list again.
    for _ in 0..10 {
        let segs = match segment::list_segments(&*storage, dir) {
            Err(LogError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                return Err(LogError::NotALog {
                    path: dir.to_path_buf(),
                    reason: "the directory does not exist".into(),
                });
            }
            other => other?,
        };
        let Some((first, path)) = segs.first() else {
            return Err(LogError::NotALog {
                path: dir.to_path_buf(),
                reason: "it holds no segment files (<first-lsn>.seg)".into(),
            });
        };
        let file = match storage.open_read(path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(LogError::io("opening", path, e)),
        };
        let (header, _) = segment::read_header(&*file, path, *first)?;
        return Ok(ReadOnlyLog {
            storage,
            dir: dir.to_path_buf(),
            log_id: header.log_id,
            source_identity: header.source_identity,
        });
    }
    Err(LogError::NotALog {
        path: dir.to_path_buf(),
        reason: "its segments kept disappearing while it was opened".into(),
    })
}

impl ReadOnlyLog {
    pub fn log_id(&self) -> LogId {
        self.log_id
    }

    pub fn source_identity(&self) -> &str {
        &self.source_identity
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The durable LSN the writer last published.
    pub fn durable_lsn(&self) -> Result<Lsn, LogError> {
        read_published_durable(&*self.storage, &self.dir, self.log_id)
    }

    /// The oldest retained record (`Lsn::ZERO` when nothing is durable).
    pub fn first_lsn(&self) -> Result<Lsn, LogError> {
        if self.durable_lsn()? == Lsn::ZERO {
            return Ok(Lsn::ZERO);
        }
        let segs = segment::list_segments(&*self.storage, &self.dir)?;
        Ok(segs.first().map_or(Lsn::ZERO, |(l, _)| *l))
    }

    /// A cursor over the published-durable records from `from` (`Lsn::ZERO`: the oldest).
    pub fn reader(&self, from: Lsn) -> Result<LogReader, LogError> {
        LogReader::new(
            self.storage.clone(),
            self.dir.clone(),
            self.log_id,
            DurableSource::Published,
            from,
        )
    }

    /// Polls the published durable LSN (short sleeps, growing to 10 ms) until it exceeds
    /// `after` or `timeout` passes; returns it.
    pub fn wait_for(&self, after: Lsn, timeout: Duration) -> Result<Lsn, LogError> {
        let deadline = Instant::now() + timeout;
        let mut pause = Duration::from_micros(200);
        loop {
            let durable = self.durable_lsn()?;
            let now = Instant::now();
            if durable > after || now >= deadline {
                return Ok(durable);
            }
            std::thread::sleep(pause.min(deadline - now));
            pause = (pause * 2).min(Duration::from_millis(10));
        }
    }

    /// Every segment on disk, oldest first.
    pub fn segments(&self) -> Result<Vec<SegmentInfo>, LogError> {
        let durable = self.durable_lsn()?;
        segment::describe_segments(&*self.storage, &self.dir, self.log_id, durable)
    }

    pub fn consumers(&self) -> Result<Vec<(String, Lsn)>, LogError> {
        consumers::list(&*self.storage, &self.dir, self.log_id)
    }

    /// Records a consumer's cursor from this process (the writer's retention honours it).
    pub fn set_consumer(&self, name: &str, applied: Lsn) -> Result<(), LogError> {
        let durable = self.durable_lsn()?;
        consumers::set(
            &*self.storage,
            &self.dir,
            self.log_id,
            name,
            applied,
            durable,
        )
    }

    /// Reads every segment completely: headers, every record's CRC, LSN density within and
    /// across segments, seal trailers. Damage is an error naming segment and offset. Invalid
    /// bytes after the last valid record of the newest segment are reported as a torn tail
    /// (not an error) when every durable record precedes them and no valid frame follows.
    pub fn verify(&self) -> Result<VerifyReport, LogError> {
        let durable = self.durable_lsn()?;
        let segs = segment::list_segments(&*self.storage, &self.dir)?;
        let mut report = VerifyReport {
            segments: segs.len(),
            records: 0,
            first_lsn: Lsn::ZERO,
            last_lsn: Lsn::ZERO,
            durable_lsn: durable,
            bytes: 0,
            torn_tail: None,
        };
        let mut expected_first: Option<u64> = None;
        let mut end = Lsn::ZERO;
        for (i, (first, path)) in segs.iter().enumerate() {
            let newest = i + 1 == segs.len();
            let file = self
                .storage
                .open_read(path)
                .map_err(|e| LogError::io("opening", path, e))?;
            let (scan, chunk) = segment::scan_full(file, path, *first)?;
            if scan.header.log_id != self.log_id
                || scan.header.source_identity != self.source_identity
            {
                return Err(LogError::corrupt(
                    path,
                    12,
                    format!(
                        "segment of log {} (source {:?}) among segments of log {} (source {:?})",
                        scan.header.log_id,
                        scan.header.source_identity,
                        self.log_id,
                        self.source_identity
                    ),
                ));
            }
            if let Some(e) = expected_first
                && e != first.0
            {
                return Err(LogError::corrupt(
                    path,
                    28,
                    format!(
                        "the segment starts at LSN {first}, but the previous one ended at LSN {}",
                        e - 1
                    ),
                ));
            }
            if let Some((offset, reason)) = &scan.bad {
                let file = chunk.into_file();
                let durable_after = newest && scan.last_lsn >= durable;
                let follows = segment::valid_frame_after(
                    &*file,
                    path,
                    *offset,
                    scan.file_len,
                    scan.last_lsn,
                )?;
                if !durable_after || follows.is_some() {
                    return Err(LogError::corrupt(path, *offset, reason.clone()));
                }
                report.torn_tail = Some(TornTail {
                    segment: path.clone(),
                    offset: *offset,
                    bytes: scan.file_len - offset,
                    reason: reason.clone(),
                });
            } else if !newest && scan.sealed_at.is_none() {
                return Err(LogError::corrupt(
                    path,
                    scan.file_len,
                    "a segment that is not the newest must end with a seal trailer, and this one does not",
                ));
            }
            if scan.records > 0 {
                if report.first_lsn == Lsn::ZERO {
                    report.first_lsn = *first;
                }
                report.last_lsn = scan.last_lsn;
            }
            end = scan.last_lsn;
            report.records += scan.records;
            report.bytes += scan.file_len;
            expected_first = Some(scan.last_lsn.0 + 1);
        }
        if durable > end {
            return Err(LogError::BadFile {
                path: self.dir.join(crate::format::DURABLE_FILE),
                reason: format!(
                    "the writer published LSN {durable} as durable, but the log ends at LSN {end}: records are missing"
                ),
            });
        }
        Ok(report)
    }
}
