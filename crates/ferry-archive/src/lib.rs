//! Log-consistent backups and point-in-time restore.
//!
//! Every change of a source passes through its durable log, so a consistent copy of the
//! database at a known LSN (a *base*) plus the log records after it describe the database at
//! every later LSN. The archive keeps both, per source, in a directory that may live on
//! another (mounted) file system; `proto/archive.md` specifies its layout byte for byte:
//!
//! ```text
//! <archive>/<source-id>/manifest.json            what every file covers (temp -> fsync -> rename)
//! <archive>/<source-id>/bases/<lsn:020>.db        a SQLite file equal to the database at <lsn>
//! <archive>/<source-id>/segments/<first:020>.seg  a sealed log segment, byte for byte
//! <archive>/<source-id>/.<anything>.tmp           files being written; removed on open
//! ```
//!
//! Invariants and the order of operations that keeps them:
//! - **The manifest never names a file that is not complete and synced.** A file is written
//!   under a temporary name, fsynced, re-read and checked (every frame's CRC for a segment,
//!   the CRC-32C of the whole file for a base), renamed, and the directory fsynced; only then
//!   is the manifest replaced (temp -> fsync -> rename -> fsync dir). A crash leaves at most
//!   an orphan file, which the next [`Archiver::open`] removes.
//! - **The log never deletes what the archive has not taken.** The archiver is the log
//!   consumer `archive`; its cursor advances only after a segment is in the manifest.
//! - **Retention deletes from the manifest first, files second**, and never a segment that
//!   a kept base needs (every segment whose records follow the oldest kept base stays).
//! - **Nothing damaged is skipped.** Restore reads each archived segment through its frame
//!   CRCs and the LSN chain; a missing file, a CRC failure or a gap in the LSNs stops it with
//!   the file named, and a point that the archive cannot reach is refused with the nearest
//!   restorable points.
//!
//! Layers: [`manifest`] (the JSON file), [`segment_file`] (checking and reading archived
//! segment bytes), [`Archiver`] (the writing side, driven by an archiver thread beside capture),
//! [`Archive`] (the reading side: coverage, restore plans), [`restore_sqlite`] and
//! [`restore_pg`] (the two ways out), [`base_snapshot`] (a base file as snapshot records).

pub mod archiver;
pub mod base_snapshot;
pub mod coverage;
mod error;
mod fsio;
pub mod manifest;
pub mod restore_pg;
pub mod restore_sqlite;
pub mod segment_file;

pub use archiver::{
    ARCHIVE_CONSUMER, ArchiveOptions, ArchiveStatus, ArchivedStep, Archiver, BaseMeta,
    RetentionStep,
};
pub use coverage::{
    Archive, RestorablePoint, RestorableRange, RestorePlan, RestoreTarget, parse_time,
};
pub use error::ArchiveError;
pub use manifest::{BaseEntry, MANIFEST_FORMAT_VERSION, Manifest, SegmentEntry};
pub use restore_pg::{PgRestoreOptions, PgRestoreSummary, restore_to_postgres};
pub use restore_sqlite::{SqliteRestoreSummary, restore_to_sqlite};
