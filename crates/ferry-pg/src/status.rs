//! What a running shipper reports: state per table, applied position, the last error, and
//! apply statistics the binary turns into metrics.

use crate::progress::TableState;
use ferry_core::{Lsn, UnixMicros};
use std::time::Duration;

/// Counters and gauges of the apply path. Counters only grow for the life of a `Shipper`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ShipStats {
    /// Rows written by the initial load.
    pub rows_loaded: u64,
    /// Rows inserted or updated by streaming (net, after folding).
    pub rows_upserted: u64,
    /// Rows deleted by streaming (net, after folding).
    pub rows_deleted: u64,
    /// Row changes read from the log (before folding).
    pub changes_read: u64,
    /// Log records applied (transactions, heartbeats, snapshot records…).
    pub records_applied: u64,
    /// PostgreSQL transactions committed by streaming.
    pub batches: u64,
    /// Batches that hit a constraint and were retried one source transaction at a time.
    pub batches_split: u64,
    pub last_batch_records: u64,
    pub last_batch_bytes: u64,
    pub last_batch_duration: Duration,
    pub total_apply_time: Duration,
    /// Reconnects after a transient failure.
    pub reconnects: u64,
    /// Last LSN whose effect is committed in PostgreSQL.
    pub applied_lsn: Lsn,
    /// Capture time of the last applied record (lag = now − this).
    pub applied_captured_at: Option<UnixMicros>,
    /// Apply (commit) time of the last batch.
    pub applied_at: Option<UnixMicros>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct TableStatus {
    pub source_table: String,
    pub target: String,
    pub state: TableState,
    pub rows_loaded: u64,
}

/// A snapshot of a shipper's state.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ShipStatus {
    /// `starting`, `loading`, `streaming`, `retrying`, `stopped`, `failed`.
    pub phase: String,
    pub applied_lsn: Lsn,
    pub tables: Vec<TableStatus>,
    pub last_error: Option<String>,
    /// Warnings (widened columns, skipped indexes, replaced rows, schema changes in
    /// `existing` mode), newest last; bounded.
    pub notices: Vec<String>,
    /// Whether the apply connection runs with `session_replication_role = replica`.
    pub replica_role: bool,
    pub stats: ShipStats,
}

/// What a finished `run` did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ShipSummary {
    pub applied_lsn: Lsn,
    pub stats: ShipStats,
}
