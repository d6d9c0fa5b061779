//! The reading side: what an archive can restore, and the plan for one restore.
//!
//! A point (an LSN) is restorable when some base at LSN `B <= N` exists and archived segments
//! hold every LSN in `B+1 ..= N` without a gap, each file present. Ranges are computed from
//! the manifest, checking that each named file exists (its content is checked when the
//! restore reads it). A point in a gap or outside every range is refused with the reason (the
//! missing file, the LSNs no segment holds, what retention removed) and the nearest
//! restorable points on either side.
//!
//! A time is resolved to the last record captured at or before it. A time later than the
//! newest capture time the archive knows is refused: changes after it may exist and not be
//! archived yet, and restoring an older state under a later time would be a silent lie.

use crate::ArchiveError;
use crate::archiver::check_source_id;
use crate::manifest::{BaseEntry, Manifest, SegmentEntry};
use crate::segment_file::SegmentRecords;
use ferry_core::{Lsn, UnixMicros};
use serde::Serialize;
use std::fmt;
use std::path::{Path, PathBuf};

/// One point a restore can reach.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RestorablePoint {
    pub lsn: Lsn,
    /// Capture time of the record at `lsn`, when known (for segment ends, the newest capture
    /// time in the segment).
    pub captured_at: Option<UnixMicros>,
}

impl fmt::Display for RestorablePoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.captured_at {
            Some(t) => write!(
                f,
                "LSN {} ({})",
                self.lsn,
                ferry_core::json::micros_to_rfc3339(t)
            ),
            None => write!(f, "LSN {}", self.lsn),
        }
    }
}

/// A contiguous run of restorable points.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RestorableRange {
    pub from: RestorablePoint,
    pub to: RestorablePoint,
    /// Why the range ends where it does (`None`: it is the end of what is archived).
    pub ends_because: Option<String>,
}

/// Where a restore should go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RestoreTarget {
    Lsn(Lsn),
    /// The last record captured at or before this time.
    Time(UnixMicros),
    Latest,
}

impl fmt::Display for RestoreTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RestoreTarget::Lsn(l) => write!(f, "LSN {l}"),
            RestoreTarget::Time(t) => write!(f, "{}", ferry_core::json::micros_to_rfc3339(*t)),
            RestoreTarget::Latest => f.write_str("the latest point"),
        }
    }
}

/// What one restore reads: a base, then the archived records after it up to `target`.
#[derive(Clone, Debug, PartialEq)]
pub struct RestorePlan {
    pub source_id: String,
    pub log_id: String,
    pub base: BaseEntry,
    pub base_path: PathBuf,
    /// The segments holding `base.lsn + 1 ..= target`, in order (empty when target = base).
    pub segments: Vec<(SegmentEntry, PathBuf)>,
    pub target: Lsn,
    /// Newer bases at or before the target that the manifest lists but whose file is missing
    /// (the plan uses an older one; restores say so).
    pub missing_bases: Vec<PathBuf>,
}

impl RestorePlan {
    /// Checks every file the plan reads against its manifest entry before anything is
    /// written: the base is present with the recorded size (and, with `base_crc`, the
    /// recorded CRC-32C of the whole file: a restore that copies the base checks the CRC
    /// while copying instead of reading it twice); every segment is present and has the
    /// recorded size, whole-file CRC-32C, log id, first and last LSN and record count, and
    /// reads whole through its frame checks. The first problem stops the restore, naming the
    /// file and what is wrong.
    pub fn verify(&self, base_crc: bool) -> Result<(), ArchiveError> {
        let meta = std::fs::metadata(&self.base_path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => ArchiveError::MissingFile {
                what: "archived base",
                path: self.base_path.clone(),
            },
            _ => ArchiveError::io("reading the size of", &self.base_path, e),
        })?;
        if meta.len() != self.base.bytes {
            return Err(ArchiveError::CorruptBase {
                path: self.base_path.clone(),
                reason: format!(
                    "{} bytes, the manifest says {}",
                    meta.len(),
                    self.base.bytes
                ),
            });
        }
        for (entry, path) in &self.segments {
            verify_segment(entry, path, &self.log_id)?;
        }
        if base_crc {
            let (crc, bytes) = crate::fsio::file_crc(&self.base_path)?;
            if crc != self.base.crc32c || bytes != self.base.bytes {
                return Err(ArchiveError::CorruptBase {
                    path: self.base_path.clone(),
                    reason: format!(
                        "CRC-32C {crc:08x} over {bytes} bytes, the manifest says {:08x} over {} bytes",
                        self.base.crc32c, self.base.bytes
                    ),
                });
            }
        }
        Ok(())
    }
}

/// One archived segment against its manifest entry (see [`RestorePlan::verify`]).
pub fn verify_segment(entry: &SegmentEntry, path: &Path, log_id: &str) -> Result<(), ArchiveError> {
    let seg = SegmentRecords::open(path, entry.first_lsn)?;
    let wrong = |reason: String| ArchiveError::CorruptSegment {
        path: path.to_path_buf(),
        offset: 0,
        reason,
    };
    let (crc, bytes) = seg.crc_and_len();
    if bytes != entry.bytes || crc != entry.crc32c {
        return Err(wrong(format!(
            "CRC-32C {crc:08x} over {bytes} bytes, the manifest says {:08x} over {} bytes",
            entry.crc32c, entry.bytes
        )));
    }
    let s = &seg.summary;
    if s.log_id.to_string() != log_id {
        return Err(wrong(format!(
            "it belongs to log {}, the archive to log {log_id}",
            s.log_id
        )));
    }
    if s.last_lsn != entry.last_lsn || s.records != entry.records {
        return Err(wrong(format!(
            "it holds LSNs {}..={} ({} records), the manifest says {}..={} ({} records)",
            s.first_lsn, s.last_lsn, s.records, entry.first_lsn, entry.last_lsn, entry.records
        )));
    }
    Ok(())
}

/// One source's archive, opened for reading.
#[derive(Clone, Debug)]
pub struct Archive {
    source_dir: PathBuf,
    manifest: Manifest,
}

/// How far the segments after a base reach, and why they stop.
struct Reach {
    to: Lsn,
    to_time: Option<UnixMicros>,
    ends_because: Option<String>,
}

impl Archive {
    /// The source ids archived in `archive_dir` (subdirectories holding a manifest).
    pub fn sources(archive_dir: &Path) -> Result<Vec<String>, ArchiveError> {
        let entries = std::fs::read_dir(archive_dir)
            .map_err(|e| ArchiveError::io("listing the archive directory", archive_dir, e))?;
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| ArchiveError::io("listing", archive_dir, e))?;
            if Manifest::path(&entry.path()).is_file() {
                out.push(entry.file_name().to_string_lossy().into_owned());
            }
        }
        out.sort();
        Ok(out)
    }

    /// Opens the archive of `source_id` in `archive_dir`; without a source id, the archive
    /// must hold exactly one source.
    pub fn open(archive_dir: &Path, source_id: Option<&str>) -> Result<Archive, ArchiveError> {
        let id = match source_id {
            Some(id) => {
                check_source_id(id)?;
                id.to_string()
            }
            None => {
                let sources = Self::sources(archive_dir)?;
                match sources.as_slice() {
                    [one] => one.clone(),
                    [] => {
                        return Err(ArchiveError::Manifest {
                            path: archive_dir.to_path_buf(),
                            reason: "no source is archived here (no <source-id>/manifest.json)"
                                .into(),
                        });
                    }
                    many => {
                        return Err(ArchiveError::Options(format!(
                            "{} archives several sources ({}): name one with --source-id",
                            archive_dir.display(),
                            many.join(", ")
                        )));
                    }
                }
            }
        };
        let source_dir = archive_dir.join(&id);
        let manifest = Manifest::load(&source_dir)?.ok_or_else(|| ArchiveError::Manifest {
            path: Manifest::path(&source_dir),
            reason: format!("source {id:?} has no archive here"),
        })?;
        Ok(Archive {
            source_dir,
            manifest,
        })
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    pub fn source_dir(&self) -> &Path {
        &self.source_dir
    }

    fn reach_from(&self, base: &BaseEntry) -> Reach {
        let mut reach = Reach {
            to: base.lsn,
            to_time: base.lsn_captured_at,
            ends_because: None,
        };
        for s in &self.manifest.segments {
            if s.last_lsn <= reach.to {
                continue;
            }
            if s.first_lsn > reach.to.next() {
                reach.ends_because = Some(format!(
                    "no archived segment holds LSNs {}..{} (the log lost them before the archive took them, or they were removed)",
                    reach.to.next(),
                    s.first_lsn.0 - 1
                ));
                return reach;
            }
            let path = self.source_dir.join(&s.file);
            if !path.is_file() {
                reach.ends_because = Some(format!(
                    "archived segment {} (LSNs {}..{}) is listed in the manifest but missing",
                    path.display(),
                    s.first_lsn,
                    s.last_lsn
                ));
                return reach;
            }
            // A new snapshot of the source (capture lost its state) is a break: replaying
            // the log across it from an older base would mix two unrelated histories.
            if let Some(&snap) = s.snapshots.iter().find(|&&l| l > reach.to) {
                let before = Lsn(snap.0 - 1);
                if before > reach.to {
                    reach.to = before;
                    reach.to_time = None;
                }
                reach.ends_because = Some(format!(
                    "the source was snapshotted again at LSN {snap} (capture lost its state): points from there on are restorable only from a base taken after that snapshot"
                ));
                return reach;
            }
            reach.to = s.last_lsn;
            reach.to_time = s.last_captured_at.or(reach.to_time);
        }
        reach
    }

    /// Files the manifest lists that are missing or have another size than recorded (a stat
    /// each, no reading): `backup list` shows them, so a damaged archive never just looks
    /// smaller.
    pub fn problems(&self) -> Vec<String> {
        let bases = self
            .manifest
            .bases
            .iter()
            .map(|b| ("base", &b.file, b.bytes));
        let segs = self
            .manifest
            .segments
            .iter()
            .map(|s| ("segment", &s.file, s.bytes));
        bases
            .chain(segs)
            .filter_map(|(what, file, bytes)| {
                let path = self.source_dir.join(file);
                match std::fs::metadata(&path) {
                    Ok(m) if m.len() == bytes => None,
                    Ok(m) => Some(format!(
                        "{what} {} has {} bytes, the manifest says {bytes}",
                        path.display(),
                        m.len()
                    )),
                    Err(_) => Some(format!(
                        "{what} {} is listed in the manifest but missing",
                        path.display()
                    )),
                }
            })
            .collect()
    }

    /// Every restorable range, oldest first.
    pub fn ranges(&self) -> Vec<RestorableRange> {
        let mut out: Vec<RestorableRange> = Vec::new();
        for b in &self.manifest.bases {
            if !self.source_dir.join(&b.file).is_file() {
                continue;
            }
            let reach = self.reach_from(b);
            let from = RestorablePoint {
                lsn: b.lsn,
                captured_at: b.lsn_captured_at,
            };
            let to = RestorablePoint {
                lsn: reach.to,
                captured_at: reach.to_time,
            };
            match out.last_mut() {
                Some(prev) if b.lsn <= prev.to.lsn => {
                    if reach.to > prev.to.lsn {
                        prev.to = to;
                        prev.ends_because = reach.ends_because;
                    }
                }
                _ => out.push(RestorableRange {
                    from,
                    to,
                    ends_because: reach.ends_because,
                }),
            }
        }
        out
    }

    /// The points nearest to `lsn` on either side, for error messages.
    fn nearest(&self, ranges: &[RestorableRange], lsn: Lsn) -> Vec<RestorablePoint> {
        let below = ranges
            .iter()
            .filter(|r| r.to.lsn < lsn)
            .map(|r| r.to.clone())
            .next_back();
        let above = ranges
            .iter()
            .find(|r| r.from.lsn > lsn)
            .map(|r| r.from.clone());
        below.into_iter().chain(above).collect()
    }

    fn refuse(&self, requested: RestoreTarget, reason: String, near: Lsn) -> ArchiveError {
        let ranges = self.ranges();
        ArchiveError::NotRestorable {
            requested: requested.to_string(),
            reason,
            nearest: self.nearest(&ranges, near),
        }
    }

    /// The plan for restoring to `target`, or a refusal naming why and the nearest points.
    pub fn plan(&self, target: RestoreTarget) -> Result<RestorePlan, ArchiveError> {
        let ranges = self.ranges();
        let lsn = match target {
            RestoreTarget::Lsn(l) => l,
            RestoreTarget::Latest => match ranges.iter().map(|r| r.to.lsn).max() {
                Some(l) => l,
                None => {
                    return Err(ArchiveError::NotRestorable {
                        requested: target.to_string(),
                        reason: "the archive holds no base".into(),
                        nearest: vec![],
                    });
                }
            },
            RestoreTarget::Time(t) => self.resolve_time(t, &ranges)?,
        };
        let Some(range) = ranges.iter().find(|r| r.from.lsn <= lsn && lsn <= r.to.lsn) else {
            let reason = if let Some(prev) = ranges.iter().rfind(|r| r.to.lsn < lsn) {
                match &prev.ends_because {
                    Some(why) => format!("LSN {lsn} is beyond a break in the archive: {why}"),
                    None => format!(
                        "the archive reaches only LSN {} (later records are in segments not sealed or archived yet)",
                        prev.to.lsn
                    ),
                }
            } else if ranges.is_empty() {
                "the archive holds no base yet".to_string()
            } else {
                format!(
                    "LSN {lsn} precedes the oldest base still archived (older bases and segments were removed by retention, or never taken)"
                )
            };
            return Err(ArchiveError::NotRestorable {
                requested: target.to_string(),
                reason,
                nearest: self.nearest(&ranges, lsn),
            });
        };
        // The newest base at or below the point whose segments reach it (a newer one whose
        // file is missing is named in the plan, not silently passed over).
        let missing_bases: Vec<PathBuf> = self
            .manifest
            .bases
            .iter()
            .filter(|b| b.lsn <= lsn && b.lsn >= range.from.lsn)
            .map(|b| self.source_dir.join(&b.file))
            .filter(|p| !p.is_file())
            .collect();
        let base = self
            .manifest
            .bases
            .iter()
            .rev()
            .filter(|b| b.lsn <= lsn && b.lsn >= range.from.lsn)
            .find(|b| self.source_dir.join(&b.file).is_file() && self.reach_from(b).to >= lsn)
            .cloned()
            .ok_or_else(|| {
                self.refuse(target, "no archived base reaches this point".into(), lsn)
            })?;
        let segments = self
            .manifest
            .segments
            .iter()
            .filter(|s| s.last_lsn > base.lsn && s.first_lsn <= lsn)
            .map(|s| (s.clone(), self.source_dir.join(&s.file)))
            .collect();
        let missing_bases = missing_bases
            .into_iter()
            .filter(|p| *p > self.source_dir.join(&base.file))
            .collect::<Vec<_>>();
        for p in &missing_bases {
            tracing::warn!(file = %p.display(), base = %base.lsn, "a newer base the manifest lists is missing; restoring from an older one");
        }
        Ok(RestorePlan {
            missing_bases,
            source_id: self.manifest.source_id.clone(),
            log_id: self.manifest.log_id.clone(),
            base_path: self.source_dir.join(&base.file),
            base,
            segments,
            target: lsn,
        })
    }

    /// The LSN of the last record captured at or before `t`.
    fn resolve_time(&self, t: UnixMicros, ranges: &[RestorableRange]) -> Result<Lsn, ArchiveError> {
        let requested = RestoreTarget::Time(t);
        let newest_known = self
            .manifest
            .segments
            .iter()
            .filter_map(|s| s.last_captured_at)
            .chain(self.manifest.bases.iter().filter_map(|b| b.lsn_captured_at))
            .max();
        let latest = ranges.iter().map(|r| r.to.lsn).max().unwrap_or(Lsn::ZERO);
        match newest_known {
            Some(newest) if t > newest => {
                return Err(self.refuse(
                    requested,
                    format!(
                        "the newest change in the archive was captured at {}; later changes may exist and are not archived yet (segments are archived when sealed)",
                        ferry_core::json::micros_to_rfc3339(newest)
                    ),
                    latest.next(),
                ));
            }
            None => {
                return Err(self.refuse(
                    requested,
                    "the archive holds no record with a capture time".into(),
                    latest.next(),
                ));
            }
            Some(_) => {}
        }
        let mut best: Option<Lsn> = self
            .manifest
            .bases
            .iter()
            .filter(|b| b.lsn_captured_at.is_some_and(|c| c <= t))
            .map(|b| b.lsn)
            .max();
        let candidate = self
            .manifest
            .segments
            .iter()
            .rfind(|s| s.first_captured_at.is_some_and(|c| c <= t));
        if let Some(s) = candidate {
            let path = self.source_dir.join(&s.file);
            let seg = SegmentRecords::open(&path, s.first_lsn)?;
            let mut found = None;
            for r in seg.records(s.first_lsn, s.last_lsn) {
                let (lsn, record) = r?;
                match record.captured_at() {
                    Some(c) if c > t => break,
                    // Records without a time (snapshot rows) belong to the one before.
                    _ => found = Some(lsn),
                }
            }
            best = best.max(found);
        }
        best.ok_or_else(|| {
            let first = ranges.first().map_or(Lsn::ZERO, |r| r.from.lsn);
            self.refuse(
                requested,
                "it precedes every change the archive holds".into(),
                Lsn(first.0.saturating_sub(1)),
            )
        })
    }
}

/// Parses an RFC 3339 time (`2026-11-22T10:00:00Z`, `…+01:00`, fractional seconds allowed).
pub fn parse_time(s: &str) -> Result<UnixMicros, ArchiveError> {
    chrono::DateTime::parse_from_rfc3339(s.trim())
        .map(|d| d.timestamp_micros())
        .map_err(|e| {
            ArchiveError::Options(format!(
                "--to-time {s:?} is not an RFC 3339 time such as 2026-11-22T10:00:00Z ({e})"
            ))
        })
}
