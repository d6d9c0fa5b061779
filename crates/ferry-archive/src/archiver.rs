//! The writing side of the archive, driven by a thread beside capture (never by the capture
//! thread itself, which holds a reader on the application's database: see `ferry`'s
//! `archiving` module).
//!
//! Order of operations for a sealed segment (why: a crash at any point leaves the manifest
//! naming only complete, checked files, and the log still holding whatever the archive has
//! not recorded):
//! 1. copy the log's segment to `segments/.<name>.tmp` and fsync it;
//! 2. read the copy back and check every frame (CRC, dense LSNs, trailer) and its log id;
//! 3. rename it into place and fsync `segments/`;
//! 4. replace the manifest (temp -> fsync -> rename -> fsync);
//! 5. only then advance the log consumer `archive` to the segment's last LSN, which lets the
//!    log's retention delete the segment.
//!
//! A base follows the same steps 1, 3, 4 (its check is the CRC-32C of the whole file read
//! back, and the SQLite header). Retention (4 before unlinking): the manifest stops naming
//! files first, the files are deleted second; files the manifest does not name are removed
//! when the archiver opens.

use crate::ArchiveError;
use crate::fsio;
use crate::manifest::{
    BASES_DIR, BaseEntry, Manifest, SEGMENTS_DIR, SegmentEntry, base_file_name, segment_file_name,
};
use crate::segment_file::check_segment;
use ferry_core::{Lsn, Record, UnixMicros};
use ferry_log::ReadOnlyLog;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// The archiver's name among the log's consumers.
pub const ARCHIVE_CONSUMER: &str = "archive";

/// Default [`ArchiveOptions::keep_bases`].
pub const DEFAULT_KEEP_BASES: usize = 2;

/// How a source is archived.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArchiveOptions {
    /// The archive's root directory; each source gets `<dir>/<source-id>/`.
    pub dir: PathBuf,
    /// Take a base this often ([`Archiver::base_due`]); `None`: only on demand (and the first).
    pub base_interval: Option<Duration>,
    /// Keep at least this many of the newest bases (at least 1).
    pub keep_bases: usize,
    /// Keep every point of this window restorable (bases taken in it, the newest base before
    /// it, and every segment after the oldest kept base). `None`: count only.
    pub keep_for: Option<Duration>,
}

impl ArchiveOptions {
    pub fn new(dir: impl Into<PathBuf>) -> ArchiveOptions {
        ArchiveOptions {
            dir: dir.into(),
            base_interval: None,
            keep_bases: DEFAULT_KEEP_BASES,
            keep_for: None,
        }
    }
}

/// What the caller knows about a base file it has just written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BaseMeta {
    /// The file equals the database as of this log record.
    pub lsn: Lsn,
    pub taken_at: UnixMicros,
    pub page_size: Option<u32>,
}

/// What [`Archiver::archive_sealed`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ArchivedStep {
    pub segments: usize,
    pub bytes: u64,
    /// Last LSN of the newest archived segment.
    pub archived_through: Lsn,
    /// Last LSN of the newest sealed segment of the log (archive lag is the difference).
    pub newest_sealed: Lsn,
    /// Sealed segments the log no longer had when the archiver looked for them (a gap the
    /// archive will report at restore time): `(first, last)` LSNs missing.
    pub missed: Option<(Lsn, Lsn)>,
}

/// What [`Archiver::apply_retention`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RetentionStep {
    pub bases_removed: Vec<Lsn>,
    pub segments_removed: usize,
    pub bytes_freed: u64,
}

/// The archive's state, for metrics and `ferry status`.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct ArchiveStatus {
    pub source_id: String,
    pub last_base_at: Option<UnixMicros>,
    pub last_base_lsn: Option<Lsn>,
    pub archived_through_lsn: Lsn,
    /// Last LSN of the newest sealed segment seen in the log (the lag is the difference).
    pub newest_sealed_lsn: Lsn,
    pub archive_bytes: u64,
    pub bases: usize,
    pub segments: usize,
}

/// Archives one source's log into `<dir>/<source-id>/`.
pub struct Archiver {
    opts: ArchiveOptions,
    source_id: String,
    source_dir: PathBuf,
    log: ReadOnlyLog,
    manifest: Manifest,
    newest_sealed: Lsn,
}

/// A source id becomes a directory name: keep it to one safe path component.
pub(crate) fn check_source_id(id: &str) -> Result<(), ArchiveError> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(ArchiveError::Options(format!(
            "source id {id:?} cannot name an archive directory: use 1 to 128 characters from [A-Za-z0-9_.-], not starting with '.'"
        )))
    }
}

impl Archiver {
    /// Opens (creating if needed) the archive of `source_id` for the log in `log_dir`, removes
    /// leftovers of interrupted writes, and registers the log consumer `archive` so the log
    /// keeps every segment not yet archived.
    pub fn open(
        opts: ArchiveOptions,
        source_id: &str,
        log_dir: &Path,
    ) -> Result<Archiver, ArchiveError> {
        check_source_id(source_id)?;
        if opts.keep_bases == 0 {
            return Err(ArchiveError::Options(
                "keep_bases must be at least 1 (a restore needs a base)".into(),
            ));
        }
        let log = ferry_log::open_read_only(log_dir)?;
        let source_dir = opts.dir.join(source_id);
        for d in [
            source_dir.clone(),
            source_dir.join(BASES_DIR),
            source_dir.join(SEGMENTS_DIR),
        ] {
            fsio::create_dir(&d)?;
            fsio::remove_temporaries(&d)?;
        }
        let log_id = log.log_id().to_string();
        let loaded = Manifest::load(&source_dir)?;
        let rebuilding = loaded.is_none();
        let mut manifest = match loaded {
            Some(m) => {
                if m.log_id != log_id {
                    return Err(ArchiveError::WrongLog {
                        dir: source_dir,
                        archived: m.log_id,
                        log: log_id,
                    });
                }
                m
            }
            None => Manifest::new(source_id, &log_id, log.source_identity()),
        };
        let found = reconcile_files(&source_dir, &mut manifest, &log_id, rebuilding)?;
        if rebuilding && found.segments == 0 && found.bases > 0 {
            // Nothing proves which log the bases' LSNs belong to: refuse rather than guess.
            return Err(ArchiveError::ManifestMissing {
                dir: source_dir,
                bases: found.bases,
            });
        }
        for b in manifest
            .bases
            .iter_mut()
            .filter(|b| b.lsn_captured_at.is_none())
        {
            b.lsn_captured_at = captured_at_in(&log, b.lsn);
        }
        if rebuilding || found.bases + found.segments > 0 {
            if rebuilding && found.bases + found.segments > 0 {
                tracing::warn!(
                    dir = %source_dir.display(),
                    bases = found.bases,
                    segments = found.segments,
                    "the archive had no manifest.json: rebuilt it from the checked files it holds"
                );
            }
            manifest.store(&source_dir)?;
        }
        // Until a segment is archived, hold the log at what it has now.
        let cursor = if manifest.segments.is_empty() {
            Lsn(log.first_lsn()?.0.saturating_sub(1))
        } else {
            manifest.archived_through()
        };
        let durable = log.durable_lsn()?;
        log.set_consumer(ARCHIVE_CONSUMER, cursor.min(durable))?;
        manifest.source_identity = log.source_identity().to_string();
        Ok(Archiver {
            opts,
            source_id: source_id.to_string(),
            source_dir,
            log,
            manifest,
            newest_sealed: Lsn::ZERO,
        })
    }

    pub fn source_dir(&self) -> &Path {
        &self.source_dir
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    pub fn options(&self) -> &ArchiveOptions {
        &self.opts
    }

    /// Copies every sealed segment of the log not yet archived (oldest first), checks each
    /// copy, records it in the manifest and then advances the `archive` consumer.
    pub fn archive_sealed(&mut self) -> Result<ArchivedStep, ArchiveError> {
        let mut step = ArchivedStep::default();
        let segments = self.log.segments()?;
        for seg in segments.iter().filter(|s| s.sealed) {
            self.newest_sealed = self.newest_sealed.max(seg.last_lsn);
            let through = self.manifest.archived_through();
            if seg.last_lsn <= through {
                continue;
            }
            if seg.first_lsn <= through {
                // The log and the archive disagree on segment boundaries: never guess.
                return Err(ArchiveError::Manifest {
                    path: Manifest::path(&self.source_dir),
                    reason: format!(
                        "the log's segment {} starts at LSN {} inside the archived range (archived through {through})",
                        seg.path.display(),
                        seg.first_lsn
                    ),
                });
            }
            if through != Lsn::ZERO && seg.first_lsn > through.next() {
                let missed = (through.next(), Lsn(seg.first_lsn.0 - 1));
                tracing::warn!(
                    source = %self.source_id,
                    from = %missed.0,
                    to = %missed.1,
                    "the log no longer holds LSNs the archive never received; restores cannot cross this gap"
                );
                step.missed = Some(missed);
            }
            let entry = self.copy_segment(&seg.path, seg.first_lsn)?;
            step.segments += 1;
            step.bytes += entry.bytes;
            let last = entry.last_lsn;
            self.manifest.segments.push(entry);
            self.manifest.store(&self.source_dir)?;
            self.log.set_consumer(ARCHIVE_CONSUMER, last)?;
            tracing::debug!(source = %self.source_id, first = %seg.first_lsn, last = %last, "segment archived");
        }
        step.archived_through = self.manifest.archived_through();
        step.newest_sealed = self.newest_sealed;
        Ok(step)
    }

    fn copy_segment(&self, from: &Path, first: Lsn) -> Result<SegmentEntry, ArchiveError> {
        let rel = segment_file_name(first);
        let dest = self.source_dir.join(&rel);
        let (tmp, crc, bytes) = fsio::copy_to_temp(from, &dest)?;
        let checked = check_segment(&tmp, first).and_then(|summary| {
            let (reread, _) = fsio::file_crc(&tmp)?;
            if reread != crc {
                return Err(ArchiveError::CorruptSegment {
                    path: tmp.clone(),
                    offset: 0,
                    reason: "the copy read back differs from the bytes written".into(),
                });
            }
            if summary.log_id.to_string() != self.manifest.log_id {
                return Err(ArchiveError::WrongLog {
                    dir: self.source_dir.clone(),
                    archived: self.manifest.log_id.clone(),
                    log: summary.log_id.to_string(),
                });
            }
            Ok(summary)
        });
        let summary = match checked {
            Ok(s) => s,
            Err(e) => {
                let _ = fsio::remove_if_present(&tmp);
                return Err(e);
            }
        };
        fsio::rename_into_place(&tmp, &dest)?;
        Ok(SegmentEntry {
            file: rel,
            first_lsn: summary.first_lsn,
            last_lsn: summary.last_lsn,
            records: summary.records,
            bytes,
            crc32c: crc,
            first_captured_at: summary.first_captured_at,
            last_captured_at: summary.last_captured_at,
            snapshots: summary.snapshots,
            sealed_at: summary.sealed_at,
            archived_at: ferry_core::now_micros(),
        })
    }

    /// Whether a scheduled base is due at `now`: there is no base yet, or the newest is older
    /// than `base_interval`.
    pub fn base_due(&self, now: SystemTime) -> bool {
        let Some(last) = self.manifest.bases.last() else {
            return true;
        };
        let Some(interval) = self.opts.base_interval else {
            return false;
        };
        let now = micros_of(now);
        now.saturating_sub(last.taken_at) >= i64::try_from(interval.as_micros()).unwrap_or(i64::MAX)
    }

    /// Adds the base the caller has just written to `written_file` (a SQLite database file
    /// equal to the source as of `meta.lsn`): copied into the archive, checked, recorded. The
    /// caller keeps ownership of `written_file`. Adding a base at an LSN that already has
    /// one returns the existing entry.
    pub fn add_base(
        &mut self,
        written_file: &Path,
        meta: BaseMeta,
    ) -> Result<BaseEntry, ArchiveError> {
        if let Some(b) = self.manifest.bases.iter().find(|b| b.lsn == meta.lsn) {
            return Ok(b.clone());
        }
        let rel = base_file_name(meta.lsn);
        let dest = self.source_dir.join(&rel);
        let (tmp, crc, bytes) = fsio::copy_to_temp(written_file, &dest)?;
        let checked = (|| {
            let (reread, len) = fsio::file_crc(&tmp)?;
            if reread != crc || len != bytes {
                return Err(ArchiveError::CorruptBase {
                    path: tmp.clone(),
                    reason: "the copy read back differs from the bytes written".into(),
                });
            }
            sqlite_page_size(&tmp)
        })();
        let page_size = match checked {
            Ok(p) => p,
            Err(e) => {
                let _ = fsio::remove_if_present(&tmp);
                return Err(e);
            }
        };
        fsio::rename_into_place(&tmp, &dest)?;
        let entry = BaseEntry {
            file: rel,
            lsn: meta.lsn,
            taken_at: meta.taken_at,
            lsn_captured_at: self.captured_at_of(meta.lsn),
            bytes,
            crc32c: crc,
            page_size: meta.page_size.or(Some(page_size)),
        };
        self.manifest.bases.push(entry.clone());
        self.manifest.store(&self.source_dir)?;
        tracing::info!(source = %self.source_id, lsn = %meta.lsn, bytes, "base archived");
        Ok(entry)
    }

    /// The capture time of the record at `lsn`, if the log still holds it.
    fn captured_at_of(&self, lsn: Lsn) -> Option<UnixMicros> {
        captured_at_in(&self.log, lsn)
    }

    /// Deletes the bases and segments no kept point needs (see [`ArchiveOptions`]): the
    /// manifest first, then the files.
    pub fn apply_retention(&mut self, now: SystemTime) -> Result<RetentionStep, ArchiveError> {
        let mut step = RetentionStep::default();
        let bases = &self.manifest.bases;
        if bases.is_empty() {
            return Ok(step);
        }
        let keep_from_count = bases.len().saturating_sub(self.opts.keep_bases);
        let keep_from_window = match self.opts.keep_for {
            None => bases.len(),
            Some(window) => {
                let start = micros_of(now)
                    .saturating_sub(i64::try_from(window.as_micros()).unwrap_or(i64::MAX));
                // The newest base at or before the window's start restores its first point.
                let time_of = |b: &BaseEntry| b.lsn_captured_at.unwrap_or(b.taken_at);
                bases
                    .iter()
                    .rposition(|b| time_of(b) <= start)
                    .unwrap_or_default()
            }
        };
        let first_kept = keep_from_count.min(keep_from_window);
        if first_kept == 0 {
            return Ok(step);
        }
        let oldest_kept = bases[first_kept].lsn;
        let removed_bases: Vec<BaseEntry> = self.manifest.bases.drain(..first_kept).collect();
        let (removed_segments, kept): (Vec<SegmentEntry>, Vec<SegmentEntry>) = self
            .manifest
            .segments
            .drain(..)
            .partition(|s| s.last_lsn <= oldest_kept);
        self.manifest.segments = kept;
        self.manifest.store(&self.source_dir)?;
        for b in &removed_bases {
            fsio::remove_if_present(&self.source_dir.join(&b.file))?;
            step.bases_removed.push(b.lsn);
            step.bytes_freed += b.bytes;
        }
        for s in &removed_segments {
            fsio::remove_if_present(&self.source_dir.join(&s.file))?;
            step.segments_removed += 1;
            step.bytes_freed += s.bytes;
        }
        fsio::sync_dir(&self.source_dir.join(BASES_DIR))?;
        fsio::sync_dir(&self.source_dir.join(SEGMENTS_DIR))?;
        tracing::info!(
            source = %self.source_id,
            bases = step.bases_removed.len(),
            segments = step.segments_removed,
            bytes = step.bytes_freed,
            oldest_kept_base = %oldest_kept,
            "archive retention"
        );
        Ok(step)
    }

    pub fn status(&self) -> ArchiveStatus {
        let last = self.manifest.bases.last();
        ArchiveStatus {
            source_id: self.source_id.clone(),
            last_base_at: last.map(|b| b.taken_at),
            last_base_lsn: last.map(|b| b.lsn),
            archived_through_lsn: self.manifest.archived_through(),
            newest_sealed_lsn: self.newest_sealed,
            archive_bytes: self.manifest.total_bytes(),
            bases: self.manifest.bases.len(),
            segments: self.manifest.segments.len(),
        }
    }
}

/// µs since the Unix epoch of `t` (negative before it).
pub fn micros_since_epoch(t: SystemTime) -> UnixMicros {
    micros_of(t)
}

pub(crate) fn micros_of(t: SystemTime) -> UnixMicros {
    match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_micros()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_micros()).unwrap_or(i64::MAX),
    }
}

/// The page size of a SQLite database file, checking its magic: a base must be one.
fn sqlite_page_size(path: &Path) -> Result<u32, ArchiveError> {
    let mut head = [0u8; 100];
    let f = std::fs::File::open(path).map_err(|e| ArchiveError::io("opening", path, e))?;
    std::os::unix::fs::FileExt::read_exact_at(&f, &mut head, 0).map_err(|_| {
        ArchiveError::CorruptBase {
            path: path.to_path_buf(),
            reason: "shorter than a SQLite header (100 bytes)".into(),
        }
    })?;
    if &head[..16] != b"SQLite format 3\0" {
        return Err(ArchiveError::CorruptBase {
            path: path.to_path_buf(),
            reason: "not a SQLite database (bad magic)".into(),
        });
    }
    let raw = u32::from(u16::from_be_bytes([head[16], head[17]]));
    Ok(if raw == 1 { 65536 } else { raw })
}

/// The capture time of the record at `lsn`, if `log` still holds it.
fn captured_at_in(log: &ReadOnlyLog, lsn: Lsn) -> Option<UnixMicros> {
    if lsn == Lsn::ZERO {
        return None;
    }
    let mut reader = log.reader(lsn).ok()?;
    match reader.next() {
        Some(Ok((l, payload))) if l == lsn => Record::decode(&payload).ok()?.captured_at(),
        _ => None,
    }
}

/// Files [`reconcile_files`] added to the manifest.
#[derive(Debug, Default)]
struct Adopted {
    bases: usize,
    segments: usize,
}

/// `<20 digits><ext>` -> the number.
fn lsn_of_name(name: &str, ext: &str) -> Option<Lsn> {
    let digits = name.strip_suffix(ext)?;
    (digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok().map(Lsn))
        .flatten()
}

fn mtime_micros(path: &Path) -> UnixMicros {
    std::fs::metadata(path)
        .and_then(|m| m.modified())
        .map_or_else(|_| ferry_core::now_micros(), micros_of)
}

/// Brings the manifest and the files in `bases/` and `segments/` into agreement, deleting only
/// what is provably garbage:
/// - a file older than everything the manifest names (a base below its oldest base, a segment
///   below its first segment) is what retention dropped from the manifest and had not deleted
///   yet: removed;
/// - any other file the manifest does not name is **adopted** once it passes the same checks
///   the archiver made before renaming it into place (a crash between the rename and the
///   manifest's replacement, or a manifest restored from an older copy, leaves such files):
///   a base must be a SQLite file, a segment must check whole and belong to `log_id`. A file
///   that fails is kept and reported, never deleted: it may be the only copy of something.
///
/// With `rebuilding` (there was no manifest) nothing is older than the manifest, so every
/// file is a candidate for adoption and nothing is deleted.
fn reconcile_files(
    source_dir: &Path,
    manifest: &mut Manifest,
    log_id: &str,
    rebuilding: bool,
) -> Result<Adopted, ArchiveError> {
    let mut adopted = Adopted::default();
    let named: BTreeSet<String> = manifest
        .bases
        .iter()
        .map(|b| b.file.clone())
        .chain(manifest.segments.iter().map(|s| s.file.clone()))
        .collect();
    let oldest_base = manifest.bases.first().map(|b| b.lsn);
    let first_segment = manifest.segments.first().map(|s| s.first_lsn);
    for sub in [BASES_DIR, SEGMENTS_DIR] {
        let dir = source_dir.join(sub);
        let entries = std::fs::read_dir(&dir).map_err(|e| ArchiveError::io("listing", &dir, e))?;
        let mut names: Vec<String> = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| ArchiveError::io("listing", &dir, e))?;
            names.push(entry.file_name().to_string_lossy().into_owned());
        }
        names.sort();
        for name in names {
            let rel = format!("{sub}/{name}");
            if named.contains(&rel) {
                continue;
            }
            let path = dir.join(&name);
            if sub == BASES_DIR {
                let Some(lsn) = lsn_of_name(&name, ".db") else {
                    tracing::warn!(file = %path.display(), "a file in the archive that is not an archive file name: left alone");
                    continue;
                };
                if !rebuilding && oldest_base.is_some_and(|o| lsn < o) {
                    tracing::info!(file = %rel, "removing a base retention dropped from the manifest");
                    fsio::remove_if_present(&path)?;
                    continue;
                }
                let checked = sqlite_page_size(&path)
                    .and_then(|ps| fsio::file_crc(&path).map(|(crc, bytes)| (ps, crc, bytes)));
                match checked {
                    Ok((page_size, crc32c, bytes)) => {
                        tracing::warn!(file = %rel, "adopting a base the manifest did not name (written just before a crash, or the manifest is an older copy)");
                        manifest.bases.push(BaseEntry {
                            file: rel,
                            lsn,
                            taken_at: mtime_micros(&path),
                            lsn_captured_at: None,
                            bytes,
                            crc32c,
                            page_size: Some(page_size),
                        });
                        adopted.bases += 1;
                    }
                    Err(e) => {
                        tracing::error!(file = %path.display(), error = %e, "a base the manifest does not name fails its checks: kept, not used");
                    }
                }
            } else {
                let Some(first) = lsn_of_name(&name, ".seg") else {
                    tracing::warn!(file = %path.display(), "a file in the archive that is not an archive file name: left alone");
                    continue;
                };
                if !rebuilding && first_segment.is_some_and(|f| first < f) {
                    tracing::info!(file = %rel, "removing a segment retention dropped from the manifest");
                    fsio::remove_if_present(&path)?;
                    continue;
                }
                let checked = check_segment(&path, first)
                    .and_then(|summary| fsio::file_crc(&path).map(|c| (summary, c)));
                match checked {
                    Ok((summary, (crc32c, bytes))) => {
                        if summary.log_id.to_string() != log_id {
                            return Err(ArchiveError::WrongLog {
                                dir: source_dir.to_path_buf(),
                                archived: summary.log_id.to_string(),
                                log: log_id.to_string(),
                            });
                        }
                        let overlaps = manifest.segments.iter().any(|s| {
                            s.first_lsn <= summary.last_lsn && summary.first_lsn <= s.last_lsn
                        });
                        if overlaps {
                            tracing::error!(file = %path.display(), "a segment the manifest does not name overlaps one it names: kept, not used");
                            continue;
                        }
                        tracing::warn!(file = %rel, "adopting a segment the manifest did not name (written just before a crash, or the manifest is an older copy)");
                        manifest.segments.push(SegmentEntry {
                            file: rel,
                            first_lsn: summary.first_lsn,
                            last_lsn: summary.last_lsn,
                            records: summary.records,
                            bytes,
                            crc32c,
                            first_captured_at: summary.first_captured_at,
                            last_captured_at: summary.last_captured_at,
                            snapshots: summary.snapshots,
                            sealed_at: summary.sealed_at,
                            archived_at: ferry_core::now_micros(),
                        });
                        manifest.segments.sort_by_key(|s| s.first_lsn);
                        adopted.segments += 1;
                    }
                    Err(e) => {
                        tracing::error!(file = %path.display(), error = %e, "a segment the manifest does not name fails its checks: kept, not used");
                    }
                }
            }
        }
    }
    manifest.bases.sort_by_key(|b| b.lsn);
    Ok(adopted)
}
