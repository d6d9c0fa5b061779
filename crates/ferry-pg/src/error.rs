//! The crate's error type.
//!
//! Classification is by kind, never by message text: [`PgError::is_transient`] says whether
//! retrying after a reconnect can help (connection lost, server shutting down or starting,
//! serialization failures); everything else stops the source with the error as written.
//! Passwords never enter an error: the target is always described by host, port, user and
//! database only.

use crate::source::RecordSourceError;
use ferry_core::Lsn;

#[derive(Debug, thiserror::Error)]
pub enum PgError {
    #[error("invalid PostgreSQL target {target:?}: {reason}")]
    InvalidTarget { target: String, reason: String },

    #[error("cannot read the password file {path}: {source}")]
    PasswordFile {
        path: String,
        #[source]
        source: std::io::Error,
    },

    #[error("TLS setup for {target}: {reason}")]
    Tls { target: String, reason: String },

    #[error(
        "PostgreSQL at {target} rejected the credentials of user {user:?}: check PGPASSWORD, ~/.pgpass or password_file, and pg_hba.conf"
    )]
    AuthFailed {
        target: String,
        user: String,
        #[source]
        source: tokio_postgres::Error,
    },

    #[error(
        "database {database:?} does not exist on {target}: create it (createdb {database}) or fix the database name in the URL"
    )]
    DatabaseMissing {
        target: String,
        database: String,
        #[source]
        source: tokio_postgres::Error,
    },

    #[error("PostgreSQL at {target} did not accept connections within {waited_secs} s: {source}")]
    Unreachable {
        target: String,
        waited_secs: u64,
        #[source]
        source: tokio_postgres::Error,
    },

    #[error("{context}: {source}")]
    Postgres {
        context: String,
        #[source]
        source: tokio_postgres::Error,
    },

    #[error(
        "source {source_id:?}: the log's id is {found} but ferry.progress in PostgreSQL recorded log {recorded}; this is a different log (recreated state directory?). Refusing to ship: point ferry at the original state directory, or drop the target schema and ferry.progress rows for this source to start over"
    )]
    LogIdMismatch {
        source_id: String,
        recorded: String,
        found: String,
    },

    #[error("{0}")]
    BadValue(Box<BadValue>),

    #[error("the PostgreSQL schema does not match the SQLite source:\n  {}\nfix the schema (or include/exclude tables) before shipping; no row was copied", problems.join("\n  "))]
    SchemaMismatch { problems: Vec<String> },

    #[error("table {table:?}: {reason}")]
    Table { table: String, reason: String },

    #[error(
        "the log has a gap: expected LSN {expected}, got {found}; the log is damaged or was truncated past what PostgreSQL applied"
    )]
    LogGap { expected: Lsn, found: Lsn },

    #[error(
        "ferry.progress for source {source_id:?} is at LSN {found}, expected {expected}: another shipper is writing to this target for the same source"
    )]
    ConcurrentShipper {
        source_id: String,
        expected: Lsn,
        found: Lsn,
    },

    #[error("log record at LSN {lsn}: {reason}")]
    Record { lsn: Lsn, reason: String },

    #[error(transparent)]
    Source(#[from] RecordSourceError),

    #[error("ship stopped after {attempts} attempts to reach PostgreSQL: {last}")]
    RetriesExhausted {
        attempts: u32,
        #[source]
        last: Box<PgError>,
    },
}

/// A value PostgreSQL cannot hold: where it is and why.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error(
    "table {table:?}, key {key}, column {column:?}: value {value} cannot be stored as PostgreSQL {pg_type}: {reason}. Nothing was applied past LSN {applied}; fix the column's type mapping (a type override) and restart, the log keeps every change"
)]
pub struct BadValue {
    pub table: String,
    pub key: String,
    pub column: String,
    pub value: String,
    pub pg_type: String,
    pub reason: String,
    pub applied: Lsn,
}

impl PgError {
    pub(crate) fn pg(context: impl Into<String>, source: tokio_postgres::Error) -> PgError {
        PgError::Postgres {
            context: context.into(),
            source,
        }
    }

    /// Whether a reconnect-and-resume may succeed where this failed.
    pub fn is_transient(&self) -> bool {
        match self {
            PgError::Postgres { source, .. } | PgError::Unreachable { source, .. } => {
                is_transient_pg(source)
            }
            _ => false,
        }
    }

    /// The SQLSTATE code, when the error came from the server.
    pub fn sqlstate(&self) -> Option<&str> {
        match self {
            PgError::Postgres { source, .. }
            | PgError::AuthFailed { source, .. }
            | PgError::DatabaseMissing { source, .. }
            | PgError::Unreachable { source, .. } => source.code().map(|c| c.code()),
            _ => None,
        }
    }
}

/// Connection-class failures and server shutdowns are worth a retry after reconnecting.
pub(crate) fn is_transient_pg(e: &tokio_postgres::Error) -> bool {
    if e.is_closed() {
        return true;
    }
    match e.code() {
        Some(code) => {
            let c = code.code();
            c.starts_with("08")
                || c == "57P01" // admin_shutdown (includes pg_terminate_backend)
                || c == "57P02" // crash_shutdown
                || c == "57P03" // cannot_connect_now (starting up)
                || c == "40001" // serialization_failure
                || c == "40P01" // deadlock_detected
                || c == "53300" // too_many_connections
        }
        // No SQLSTATE: an I/O error, a refused connection, a closed socket.
        None => {
            let mut src: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
            while let Some(s) = src {
                if s.is::<std::io::Error>() {
                    return true;
                }
                src = s.source();
            }
            false
        }
    }
}
