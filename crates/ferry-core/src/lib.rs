//! ferry's event model.
//!
//! Every stage of ferry meets here and nowhere else: the SQLite and sled capture stages
//! produce [`Record`]s, the durable log stores their encoded bytes under dense [`Lsn`]s, and
//! the PostgreSQL shipper, `verify` and `restore` consume them. Nothing in this crate does
//! I/O or is async.
//!
//! Invariants the types carry:
//! - an [`Lsn`] is dense: the log assigns `n + 1` to the record after `n`; `Lsn::ZERO` means
//!   "before the first record";
//! - a [`Transaction`] is exactly one source commit: schema changes first, then row changes,
//!   each row change carrying its key and full before/after images in the column order of the
//!   table schema in force after the transaction's schema changes;
//! - text values are kept as bytes ([`Value::Text`]) so that invalid UTF-8 survives until a
//!   policy at the sink decides what to do with it.

pub mod compare;
pub mod fold;
pub mod json;
mod lsn;
mod position;
mod record;
mod schema;
pub mod state_dir;
mod value;

pub use lsn::Lsn;
pub use position::{SourceId, SourceKind, SourcePosition, WalPosition};
pub use record::{
    CutoverRecord, DecodeError, Heartbeat, Op, RECORD_FORMAT_VERSION, Record, RowChange,
    SchemaChange, SchemaChangeKind, SchemaRow, SnapshotBegin, SnapshotEnd, SnapshotRow,
    SnapshotRows, Transaction,
};
pub use schema::{Affinity, Column, ForeignKey, Generated, KeyColumns, ROWID_COLUMN, TableSchema};
pub use value::Value;

/// Microseconds since the Unix epoch, UTC. Capture and apply times are carried in this unit.
pub type UnixMicros = i64;

/// The current time as [`UnixMicros`].
pub fn now_micros() -> UnixMicros {
    use std::time::{SystemTime, UNIX_EPOCH};
    match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_micros()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_micros()).unwrap_or(i64::MAX),
    }
}
