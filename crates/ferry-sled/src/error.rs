use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// An error of the capture library: a write that could not be captured, or the background
/// mover that could not move captured changes into the log.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("sled: {0}")]
    Sled(#[from] sled::Error),

    #[error(
        "the sled database {path:?} stayed locked for {waited:?}: another process (or a sled::Db of this one that is still open) uses it; stop it, or hand its Db to CapturedDb::with_db"
    )]
    Locked { path: PathBuf, waited: Duration },

    #[error(
        "the outbox in the sled database is corrupt ({detail}); it was written by another program or a newer ferry-sled"
    )]
    CorruptOutbox { detail: String },

    #[error("{what} of {len} bytes is too large to capture")]
    TooLarge { what: &'static str, len: usize },

    #[error(
        "the transaction's changes take {len} bytes in the outbox, more than the {max} one log record can hold; split it into smaller transactions (nothing was written)"
    )]
    TransactionTooLarge { len: usize, max: usize },

    #[error(
        "merge on tree {tree:?} without a merge operator: call CapturedTree::set_merge_operator first"
    )]
    NoMergeOperator { tree: String },

    #[error(
        "the decoder refused {tree:?} key {key_hex} (hex): {source}; fix the decoder, then reopen (the change stays in the outbox)"
    )]
    Decode {
        tree: String,
        key_hex: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    #[error("the decoder's schema for tree {tree:?} is unusable: {detail}")]
    BadSchema { tree: String, detail: String },

    #[error(
        "the outbox holds {pending} entries (limit {limit}) and the mover has not caught up within {waited:?}; check that the log's disk is writable and not full"
    )]
    Backpressure {
        pending: u64,
        limit: u64,
        waited: Duration,
    },

    #[error("the background mover stopped: {0}")]
    MoverStopped(#[source] Arc<CaptureError>),

    #[error("the capture is closed")]
    Closed,

    #[error("the durable log: {0}")]
    Log(#[from] ferry_log::LogError),

    #[error("the durable log: {0}")]
    Sink(#[source] Box<dyn std::error::Error + Send + Sync>),

    #[error(
        "the log's last record ({found}) is not from a sled source; is the state directory shared with another source?"
    )]
    ForeignLog { found: String },

    #[error(
        "the log already holds outbox entry {logged} but the sled database has only reached {counter}: the database lost writes the log has (restored from a backup, or copied without a flush); start a new state directory for it"
    )]
    LogAheadOfSource { logged: u64, counter: u64 },

    #[error(
        "the log ends inside the initial snapshot and it cannot be completed ({detail}; staging log {dir}); delete the source's directory in the state directory and drop its PostgreSQL tables to start over"
    )]
    UnfinishedSnapshot { dir: PathBuf, detail: String },

    #[error(
        "the log holds a cutover marker: this source was cut over to PostgreSQL and must not be written any more"
    )]
    CutOver,

    #[error("state directory {path}: {source}")]
    StateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error(
        "state directory {path} belongs to a different source ({detail}); use another --state-dir or source id"
    )]
    SourceMismatch { path: PathBuf, detail: String },

    #[error("a log record does not decode: {0}")]
    Record(#[from] ferry_core::DecodeError),

    #[error("could not start the mover thread: {0}")]
    Spawn(#[source] std::io::Error),
}

impl From<sled::transaction::TransactionError<CaptureError>> for CaptureError {
    fn from(e: sled::transaction::TransactionError<CaptureError>) -> Self {
        match e {
            sled::transaction::TransactionError::Abort(e) => e,
            sled::transaction::TransactionError::Storage(e) => CaptureError::Sled(e),
        }
    }
}
