//! `manifest.json`: what one source's archive holds (specified in `proto/archive.md`).
//!
//! The manifest is the archive's only index: a file the manifest does not name is not part
//! of the archive (it is an interrupted write or a leftover of retention), and a file it names
//! must exist and match its checksum. It is replaced whole (temp -> fsync -> rename -> fsync
//! dir), after the files it newly names are in place, and before the files it stops naming
//! are deleted. Paths inside it are relative to the source's archive directory.

use crate::ArchiveError;
use crate::fsio;
use ferry_core::{Lsn, UnixMicros};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The manifest format this build writes and reads.
pub const MANIFEST_FORMAT_VERSION: u32 = 1;
pub const MANIFEST_FILE: &str = "manifest.json";
pub const BASES_DIR: &str = "bases";
pub const SEGMENTS_DIR: &str = "segments";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format_version: u32,
    pub source_id: String,
    /// The log's id (32 hex digits): LSNs mean something only within one log.
    pub log_id: String,
    /// The source identity the log's segment headers carry (e.g. `sqlite:/srv/app.db`).
    pub source_identity: String,
    /// Oldest first (by LSN).
    pub bases: Vec<BaseEntry>,
    /// Oldest first (by first LSN); not necessarily contiguous (see `proto/archive.md`).
    pub segments: Vec<SegmentEntry>,
    pub updated_at: UnixMicros,
}

/// A base snapshot: a SQLite database file equal to the source as of log record `lsn`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BaseEntry {
    /// `bases/<lsn:020>.db`.
    pub file: String,
    pub lsn: Lsn,
    /// When the copy was made.
    pub taken_at: UnixMicros,
    /// Capture time of the record at `lsn`, when the archiver could read it.
    pub lsn_captured_at: Option<UnixMicros>,
    pub bytes: u64,
    /// CRC-32C of the whole file.
    pub crc32c: u32,
    pub page_size: Option<u32>,
}

/// A sealed log segment, copied byte for byte.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SegmentEntry {
    /// `segments/<first_lsn:020>.seg`.
    pub file: String,
    pub first_lsn: Lsn,
    pub last_lsn: Lsn,
    pub records: u64,
    pub bytes: u64,
    /// CRC-32C of the whole file (every frame inside also carries its own CRC).
    pub crc32c: u32,
    /// Smallest and largest capture time of the records that carry one.
    pub first_captured_at: Option<UnixMicros>,
    pub last_captured_at: Option<UnixMicros>,
    /// LSNs of the `SnapshotBegin` records in the segment: the source was snapshotted again
    /// there (capture lost its state), so no restore replays across one (see
    /// `proto/archive.md`, "Range breaks"). Absent when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub snapshots: Vec<Lsn>,
    pub sealed_at: UnixMicros,
    pub archived_at: UnixMicros,
}

impl Manifest {
    pub fn new(source_id: &str, log_id: &str, source_identity: &str) -> Manifest {
        Manifest {
            format_version: MANIFEST_FORMAT_VERSION,
            source_id: source_id.to_string(),
            log_id: log_id.to_string(),
            source_identity: source_identity.to_string(),
            bases: Vec::new(),
            segments: Vec::new(),
            updated_at: ferry_core::now_micros(),
        }
    }

    pub fn path(source_dir: &Path) -> PathBuf {
        source_dir.join(MANIFEST_FILE)
    }

    /// Reads the manifest of the source archived in `source_dir`; `None` if there is none.
    pub fn load(source_dir: &Path) -> Result<Option<Manifest>, ArchiveError> {
        let path = Self::path(source_dir);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(ArchiveError::io("reading", &path, e)),
        };
        let probe: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|e| ArchiveError::Manifest {
                path: path.clone(),
                reason: format!("not valid JSON ({e})"),
            })?;
        let version = probe.get("format_version").and_then(|v| v.as_u64());
        if version != Some(u64::from(MANIFEST_FORMAT_VERSION)) {
            return Err(ArchiveError::Manifest {
                path,
                reason: format!(
                    "format_version {} is not one this ferry reads (it reads {MANIFEST_FORMAT_VERSION}): upgrade ferry",
                    version.map_or("missing".to_string(), |v| v.to_string())
                ),
            });
        }
        let m: Manifest = serde_json::from_value(probe).map_err(|e| ArchiveError::Manifest {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        m.check()
            .map_err(|reason| ArchiveError::Manifest { path, reason })?;
        Ok(Some(m))
    }

    /// Replaces the manifest in `source_dir` (temp -> fsync -> rename -> fsync dir).
    pub fn store(&mut self, source_dir: &Path) -> Result<(), ArchiveError> {
        self.updated_at = ferry_core::now_micros();
        self.bases.sort_by_key(|b| b.lsn);
        self.segments.sort_by_key(|s| s.first_lsn);
        let bytes = serde_json::to_vec_pretty(self).map_err(|e| ArchiveError::Manifest {
            path: Self::path(source_dir),
            reason: format!("does not serialize: {e}"),
        })?;
        fsio::write_atomically(&Self::path(source_dir), &bytes)
    }

    /// Internal consistency: sorted, non-overlapping segments with sane ranges.
    fn check(&self) -> Result<(), String> {
        let mut prev_last: Option<Lsn> = None;
        for s in &self.segments {
            if s.last_lsn < s.first_lsn {
                return Err(format!("segment {} ends before it starts", s.file));
            }
            if prev_last.is_some_and(|p| s.first_lsn <= p) {
                return Err(format!("segment {} overlaps the segment before it", s.file));
            }
            prev_last = Some(s.last_lsn);
        }
        if self.bases.windows(2).any(|w| w[0].lsn >= w[1].lsn) {
            return Err("bases are not in increasing LSN order".into());
        }
        Ok(())
    }

    /// The last LSN of the newest archived segment (`Lsn::ZERO` when none).
    pub fn archived_through(&self) -> Lsn {
        self.segments.last().map_or(Lsn::ZERO, |s| s.last_lsn)
    }

    pub fn total_bytes(&self) -> u64 {
        self.bases.iter().map(|b| b.bytes).sum::<u64>()
            + self.segments.iter().map(|s| s.bytes).sum::<u64>()
    }
}

pub fn base_file_name(lsn: Lsn) -> String {
    format!("{BASES_DIR}/{:020}.db", lsn.0)
}

pub fn segment_file_name(first: Lsn) -> String {
    format!(
        "{SEGMENTS_DIR}/{}",
        ferry_log::format::segment_file_name(first)
    )
}
