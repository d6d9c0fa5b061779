//! Archiving as the capture thread does it, between capture steps.
//!
//! Why there: a base must be a copy of capture's shadow at a known LSN, which is only true
//! between steps (`SqliteCapture::write_base` takes `&mut`), and the archive's other work
//! (copying sealed segments, retention) is short and bounded, so doing it on the same thread
//! needs no locking and can never race a base against the shadow.
//!
//! Order within one tick:
//! 1. seal the log's newest segment if it holds records and is older than `seal_after`, so
//!    a quiet source's last changes reach the archive (the log seals by size and age only
//!    when it appends);
//! 2. archive every sealed segment (`Archiver::archive_sealed`: copy, check, manifest, then
//!    the `archive` consumer cursor);
//! 3. when a base is due (schedule) or forced (`ferry backup now`): `write_base` into the
//!    scratch directory (local disk, beside the capture state), `add_base` (copied into the
//!    archive and checked), then the scratch file is removed;
//! 4. retention.

use ferry_archive::{ArchivedStep, Archiver, BaseEntry, BaseMeta, RetentionStep};
use ferry_sqlite::SqliteCapture;
use std::path::Path;
use std::time::{Duration, SystemTime};

/// Default age after which a quiet source's open segment is sealed for the archive.
pub const DEFAULT_SEAL_AFTER: Duration = Duration::from_secs(60);

/// What one tick did (for metrics and logs).
#[derive(Clone, Debug, Default)]
pub struct ArchiveTick {
    pub sealed: bool,
    pub archived: ArchivedStep,
    pub base: Option<BaseEntry>,
    pub retention: RetentionStep,
}

/// One round of archiving for a SQLite source; call it from the capture thread between
/// steps. `scratch_dir` is a local directory for the base being written (e.g. the source's
/// capture directory); `force_base` takes a base now (`ferry backup now`).
pub fn archive_tick(
    archiver: &mut Archiver,
    capture: &mut SqliteCapture,
    log: &ferry_log::Log,
    scratch_dir: &Path,
    seal_after: Duration,
    force_base: bool,
) -> anyhow::Result<ArchiveTick> {
    let mut tick = ArchiveTick::default();
    let now = SystemTime::now();
    if let Some(newest) = log.segments()?.last()
        && !newest.sealed
        && newest.records > 0
        && now
            .duration_since(newest.created_at)
            .is_ok_and(|age| age >= seal_after)
    {
        log.seal()?;
        tick.sealed = true;
    }
    tick.archived = archiver.archive_sealed()?;
    if force_base || archiver.base_due(now) {
        let tmp = scratch_dir.join("archive-base.tmp.db");
        let copy = capture.write_base(&tmp)?;
        let added = archiver.add_base(
            &tmp,
            BaseMeta {
                lsn: copy.lsn,
                taken_at: copy.taken_at_micros,
                page_size: Some(copy.page_size),
            },
        );
        // The scratch copy is ours whatever happened to the archive's.
        let _ = std::fs::remove_file(&tmp);
        tick.base = Some(added?);
    }
    tick.retention = archiver.apply_retention(now)?;
    Ok(tick)
}
