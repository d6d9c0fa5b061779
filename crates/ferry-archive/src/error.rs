use crate::coverage::RestorablePoint;
use ferry_core::Lsn;
use std::path::PathBuf;

/// Everything that can go wrong while archiving or restoring. Each variant names the file,
/// LSN or point involved and, where there is one, what the operator can do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ArchiveError {
    #[error("I/O error while {op} {path}: {source}", path = path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("archive manifest {path} is unusable: {reason}", path = path.display())]
    Manifest { path: PathBuf, reason: String },

    #[error(
        "the archive in {dir} belongs to log {archived}, but the log in use is {log}: the log was recreated (LSNs restarted); archive this source into a new directory or under a new source id",
        dir = dir.display()
    )]
    WrongLog {
        dir: PathBuf,
        archived: String,
        log: String,
    },

    #[error(
        "the archive directory {dir} holds {bases} base file(s) but no manifest.json, and no archived segment that proves which log their LSNs belong to: put back manifest.json from a copy, or move bases/ aside (ferry never deletes archive files it cannot account for)",
        dir = dir.display()
    )]
    ManifestMissing { dir: PathBuf, bases: usize },

    #[error(
        "archived segment {path} is corrupt at byte offset {offset}: {reason}; it is never skipped: restore an earlier point, or copy the segment again from the source's log if it still holds it",
        path = path.display()
    )]
    CorruptSegment {
        path: PathBuf,
        offset: u64,
        reason: String,
    },

    #[error(
        "archived base {path} does not match the manifest: {reason}; restore from another base (an earlier or later point)",
        path = path.display()
    )]
    CorruptBase { path: PathBuf, reason: String },

    #[error(
        "{what} {path} is listed in the manifest but missing from the archive",
        path = path.display()
    )]
    MissingFile { what: &'static str, path: PathBuf },

    #[error(
        "cannot restore to {requested}: {reason}; {nearest}",
        nearest = describe_nearest(nearest)
    )]
    NotRestorable {
        requested: String,
        reason: String,
        nearest: Vec<RestorablePoint>,
    },

    #[error("the log: {0}")]
    Log(#[from] ferry_log::LogError),

    #[error("log record {lsn} in {path} does not decode: {source}", path = path.display())]
    Decode {
        lsn: Lsn,
        path: PathBuf,
        #[source]
        source: ferry_core::DecodeError,
    },

    #[error("reading base {path}: {source}", path = path.display())]
    BaseDecode {
        path: PathBuf,
        #[source]
        source: ferry_sqlite::decode::DecodeError,
    },

    #[error("SQLite on {path} while {op}: {source}", path = path.display())]
    Sqlite {
        op: String,
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },

    #[error("replaying log record {lsn}: {reason}")]
    Replay { lsn: Lsn, reason: String },

    #[error("restored database {path} fails PRAGMA integrity_check: {report}", path = path.display())]
    Integrity { path: PathBuf, report: String },

    #[error("PostgreSQL: {0}")]
    Pg(#[from] ferry_pg::PgError),

    #[error("invalid archive options: {0}")]
    Options(String),
}

fn describe_nearest(points: &[RestorablePoint]) -> String {
    if points.is_empty() {
        return "the archive holds no restorable point yet (it needs a base: `ferry backup now`)"
            .to_string();
    }
    let list: Vec<String> = points.iter().map(|p| p.to_string()).collect();
    format!("nearest restorable points: {}", list.join(", "))
}

impl ArchiveError {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        ArchiveError::Io {
            op,
            path: path.into(),
            source,
        }
    }

    pub(crate) fn sqlite(
        op: impl Into<String>,
        path: impl Into<PathBuf>,
    ) -> impl Fn(rusqlite::Error) -> ArchiveError {
        let op = op.into();
        let path = path.into();
        move |source| ArchiveError::Sqlite {
            op: op.clone(),
            path: path.clone(),
            source,
        }
    }

    /// The requested point is outside what the archive covers (or behind a gap or damage).
    pub fn is_not_restorable(&self) -> bool {
        matches!(self, ArchiveError::NotRestorable { .. })
    }

    /// Archived bytes failed a check.
    pub fn is_corrupt(&self) -> bool {
        matches!(
            self,
            ArchiveError::CorruptSegment { .. }
                | ArchiveError::CorruptBase { .. }
                | ArchiveError::MissingFile { .. }
        )
    }
}
