use ferry_core::Lsn;
use std::io;
use std::path::PathBuf;

/// Everything that can go wrong with a log. Variants carry the file and, for corruption, the
/// byte offset, so an operator can find the problem; I/O errors keep their source.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LogError {
    #[error("I/O error while {op} {path}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error(
        "another ferry process holds {lock}: stop it first, or use a different --state-dir",
        lock = dir.join("LOCK").display()
    )]
    Locked { dir: PathBuf },

    #[error(
        "log segment {segment} is corrupt at byte offset {offset}: {reason}; run `ferry log verify`; the log is not modified",
        segment = segment.display()
    )]
    Corrupt {
        segment: PathBuf,
        offset: u64,
        reason: String,
    },

    #[error("{path} is damaged: {reason}; the log is not modified", path = path.display())]
    BadFile { path: PathBuf, reason: String },

    #[error(
        "the log in {dir} is not the one expected: {reason}",
        dir = dir.display()
    )]
    WrongLog { dir: PathBuf, reason: String },

    #[error("{path} is not a ferry log: {reason}", path = path.display())]
    NotALog { path: PathBuf, reason: String },

    #[error(
        "{path} was written in log format version {found}; this ferry reads up to version {known}: upgrade ferry",
        path = path.display()
    )]
    UnsupportedVersion {
        path: PathBuf,
        found: u16,
        known: u16,
    },

    #[error(
        "the log refuses further writes because an earlier write or fsync failed ({reason}); restart ferry so it re-reads what is on disk"
    )]
    Poisoned { reason: String },

    #[error(
        "records from LSN {requested} on are no longer in the log: retention deleted everything before LSN {first}"
    )]
    Gone { requested: Lsn, first: Lsn },

    #[error("a log record is at most {max} bytes, this payload has {len}")]
    PayloadTooLarge { len: usize, max: usize },

    #[error(
        "consumer name {name:?} is not allowed: use 1 to 64 characters from [A-Za-z0-9_.-], not starting with '.'"
    )]
    InvalidConsumerName { name: String },

    #[error(
        "consumer {name:?} cannot have applied LSN {applied}: the log is durable only up to LSN {durable}"
    )]
    ConsumerAhead {
        name: String,
        applied: Lsn,
        durable: Lsn,
    },

    #[error("invalid log options: {reason}")]
    InvalidOptions { reason: String },
}

impl LogError {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> LogError {
        LogError::Io {
            op,
            path: path.into(),
            source,
        }
    }

    pub(crate) fn corrupt(
        segment: impl Into<PathBuf>,
        offset: u64,
        reason: impl Into<String>,
    ) -> Self {
        LogError::Corrupt {
            segment: segment.into(),
            offset,
            reason: reason.into(),
        }
    }

    /// The log's bytes are damaged (a record, header or trailer failed its checks).
    pub fn is_corrupt(&self) -> bool {
        matches!(self, LogError::Corrupt { .. } | LogError::BadFile { .. })
    }

    /// Another process (or another `Log` in this one) is the writer.
    pub fn is_locked(&self) -> bool {
        matches!(self, LogError::Locked { .. })
    }
}
