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

pub use error::{BadValue, PgError};
pub use secret::Secret;
pub use source::{RecordSource, RecordSourceError, SnapshotSummary, VecRecordSource};
pub use target::{PgTarget, SslMode, TargetEnv, redact_target};
mod apply;
mod catalog;
mod load;
pub mod mapping;
mod progress;
mod sequences;
mod shipper;
mod status;
pub mod verify;

pub use apply::{TableDelta, fold_changes};
pub use catalog::{CatalogTable, find_table, map_onto};
pub use progress::{
    PROGRESS_DDL, PROGRESS_FORMAT_VERSION, Progress, SourceState, TableProgress, TableState,
    ensure_progress_tables, read_table_progress,
};
pub use sequences::{SequenceAdvance, advance_sequences};
pub use shipper::{
    DEFAULT_BATCH_MAX_BYTES, DEFAULT_BATCH_MAX_DELAY, DEFAULT_BATCH_MAX_RECORDS,
    DEFAULT_LOAD_CONNECTIONS, ShipOptions, Shipper, TargetMode, read_progress,
};
pub use status::{LoadProgress, ShipEvent, ShipStats, ShipStatus, ShipSummary, TableStatus};
pub use verify::{TargetRow, TargetRowReader, row_matches, rows_with_keys};
