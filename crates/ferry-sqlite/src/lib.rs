//! ferry's SQLite capture: reading SQLite's own files without the application's help.
//!
//! Layers, bottom up: [`format`](mod@format) (header, b-tree pages, records, overflow, WAL: bytes to
//! structures, never trusting a byte), [`schema`] (`CREATE TABLE` to `TableSchema`),
//! [`pages`] (database states as page sources), [`decode`] (per-transaction, per-b-tree row
//! diffs), [`shadow`] (the page-exact copy and its journal), [`wal_tail`] (committed
//! transactions out of the WAL), [`wal_index`] (the `-shm` header and lock probes), and [`capture`] (snapshot, hand-over-hand tailing, resync,
//! rollback-journal polling, bounded WAL), which writes records into a [`sink::RecordSink`].

pub mod capture;
pub mod decode;
pub mod format;
pub mod pages;
pub mod schema;
pub mod shadow;
pub mod sink;
pub mod wal_index;
pub mod wal_tail;

pub use capture::{
    BaseCopy, CaptureError, CaptureOptions, CaptureStats, CaptureStep, SqliteCapture,
};
pub use sink::{LogSink, RecordFile, RecordSink, SinkError};

/// A value as rusqlite reads it, as ferry's [`ferry_core::Value`] (text kept as bytes).
pub fn value_of(v: rusqlite::types::ValueRef<'_>) -> ferry_core::Value {
    use ferry_core::Value;
    use rusqlite::types::ValueRef;
    match v {
        ValueRef::Null => Value::Null,
        ValueRef::Integer(i) => Value::Integer(i),
        ValueRef::Real(r) => Value::Real(r),
        ValueRef::Text(t) => Value::Text(t.to_vec()),
        ValueRef::Blob(b) => Value::Blob(b.to_vec()),
    }
}
