//! ferry's PostgreSQL side: connecting (libpq conventions, TLS), mapping SQLite types and
//! names to PostgreSQL, creating the schema, the initial load with binary COPY, the
//! exactly-once streaming apply with its progress table, sequences, and the read-back that
//! `verify` compares.
//!
//! The input is a [`RecordSource`] (the binary adapts the durable log to it); nothing here
//! knows about SQLite files or the log's format.

mod error;
pub mod ident;
mod secret;
mod source;
mod target;
pub mod types;

pub use error::PgError;
pub use secret::Secret;
pub use source::{RecordSource, RecordSourceError, VecRecordSource};
pub use target::{PgTarget, SslMode, TargetEnv, redact_target};
