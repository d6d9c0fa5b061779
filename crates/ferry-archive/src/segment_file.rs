//! Checking and reading archived segments.
//!
//! An archived segment is a byte-for-byte copy of a sealed segment of the source's log
//! (`proto/log-format.md`): header, frames, seal trailer. [`check_segment`] reads a file
//! completely and accepts it only if the header decodes, every frame passes its CRC, the LSNs
//! are dense from the header's first LSN, and the file ends with exactly one valid trailer
//! naming the last LSN. The archiver runs it on the copy (after fsync, before the rename), and
//! restore runs it again on every segment it reads: damage that happened in the archive is
//! found with the file and offset, never skipped.

use crate::ArchiveError;
use ferry_core::{Lsn, Record, UnixMicros};
use ferry_log::LogId;
use ferry_log::format::{Frame, SegmentHeader, parse_frame};
use std::path::{Path, PathBuf};

/// What a checked segment holds.
#[derive(Clone, Debug, PartialEq)]
pub struct SegmentSummary {
    pub log_id: LogId,
    pub source_identity: String,
    pub first_lsn: Lsn,
    pub last_lsn: Lsn,
    pub records: u64,
    pub sealed_at: UnixMicros,
    pub first_captured_at: Option<UnixMicros>,
    pub last_captured_at: Option<UnixMicros>,
    /// LSNs of the `SnapshotBegin` records (where the source was snapshotted again).
    pub snapshots: Vec<Lsn>,
}

/// A checked segment's records, in memory.
pub struct SegmentRecords {
    pub path: PathBuf,
    pub summary: SegmentSummary,
    bytes: Vec<u8>,
    /// (lsn, payload start, payload len) of every record.
    frames: Vec<(Lsn, usize, usize)>,
}

impl SegmentRecords {
    /// Reads and checks the segment at `path`; `expected_first` is the LSN its name promises.
    pub fn open(path: &Path, expected_first: Lsn) -> Result<SegmentRecords, ArchiveError> {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(ArchiveError::MissingFile {
                    what: "archived segment",
                    path: path.to_path_buf(),
                });
            }
            Err(e) => return Err(ArchiveError::io("reading", path, e)),
        };
        let corrupt = |offset: usize, reason: String| ArchiveError::CorruptSegment {
            path: path.to_path_buf(),
            offset: offset as u64,
            reason,
        };
        let (header, header_len) =
            SegmentHeader::decode(&bytes).map_err(|e| corrupt(0, e.describe()))?;
        if header.first_lsn != expected_first {
            return Err(corrupt(
                28,
                format!(
                    "the header says the first LSN is {}, the manifest says {expected_first}",
                    header.first_lsn
                ),
            ));
        }
        let mut frames = Vec::new();
        let mut offset = header_len;
        let mut expected = header.first_lsn.0;
        let mut first_captured_at: Option<UnixMicros> = None;
        let mut last_captured_at: Option<UnixMicros> = None;
        let mut snapshots = Vec::new();
        let sealed_at = loop {
            match parse_frame(&bytes[offset..]) {
                Frame::Record {
                    lsn,
                    payload_start,
                    payload_len,
                } => {
                    if lsn.0 != expected {
                        return Err(corrupt(
                            offset,
                            format!("expected the record of LSN {expected}, found LSN {lsn}"),
                        ));
                    }
                    let start = offset + payload_start;
                    let payload = &bytes[start..start + payload_len];
                    let record =
                        Record::decode(payload).map_err(|source| ArchiveError::Decode {
                            lsn,
                            path: path.to_path_buf(),
                            source,
                        })?;
                    if matches!(record, Record::SnapshotBegin(_)) {
                        snapshots.push(lsn);
                    }
                    if let Some(at) = record.captured_at() {
                        first_captured_at = Some(first_captured_at.map_or(at, |f| f.min(at)));
                        last_captured_at = Some(last_captured_at.map_or(at, |l| l.max(at)));
                    }
                    frames.push((lsn, start, payload_len));
                    offset = start + payload_len;
                    expected += 1;
                }
                Frame::Trailer {
                    last_lsn,
                    sealed_at_micros,
                } => {
                    if last_lsn.0 + 1 != expected || frames.is_empty() {
                        return Err(corrupt(
                            offset,
                            format!(
                                "the seal trailer names LSN {last_lsn} as last, but the records end at LSN {}",
                                expected - 1
                            ),
                        ));
                    }
                    if offset + ferry_log::format::TRAILER_BYTES != bytes.len() {
                        return Err(corrupt(
                            offset + ferry_log::format::TRAILER_BYTES,
                            "bytes follow the seal trailer".into(),
                        ));
                    }
                    break sealed_at_micros;
                }
                Frame::Incomplete { .. } => {
                    return Err(corrupt(
                        offset,
                        format!(
                            "the file ends before its seal trailer (after LSN {}): the copy is truncated",
                            expected - 1
                        ),
                    ));
                }
                Frame::Invalid(why) => {
                    return Err(corrupt(
                        offset,
                        format!("{why} (the record of LSN {expected})"),
                    ));
                }
            }
        };
        let summary = SegmentSummary {
            log_id: header.log_id,
            source_identity: header.source_identity,
            first_lsn: header.first_lsn,
            last_lsn: Lsn(expected - 1),
            records: frames.len() as u64,
            sealed_at,
            first_captured_at,
            last_captured_at,
            snapshots,
        };
        Ok(SegmentRecords {
            path: path.to_path_buf(),
            summary,
            bytes,
            frames,
        })
    }

    /// CRC-32C and length of the whole file as read.
    pub fn crc_and_len(&self) -> (u32, u64) {
        (crc32c::crc32c(&self.bytes), self.bytes.len() as u64)
    }

    /// The records with `lsn` in `from..=to`, decoded, in order.
    pub fn records(
        &self,
        from: Lsn,
        to: Lsn,
    ) -> impl Iterator<Item = Result<(Lsn, Record), ArchiveError>> + '_ {
        self.frames
            .iter()
            .filter(move |(lsn, _, _)| *lsn >= from && *lsn <= to)
            .map(|&(lsn, start, len)| {
                Record::decode(&self.bytes[start..start + len])
                    .map(|r| (lsn, r))
                    .map_err(|source| ArchiveError::Decode {
                        lsn,
                        path: self.path.clone(),
                        source,
                    })
            })
    }
}

/// Reads and checks the whole segment at `path` (see the module comment).
pub fn check_segment(path: &Path, expected_first: Lsn) -> Result<SegmentSummary, ArchiveError> {
    SegmentRecords::open(path, expected_first).map(|s| s.summary)
}
