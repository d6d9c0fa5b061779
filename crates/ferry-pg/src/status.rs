//! What a running shipper reports: state per table, applied position, the last error, and
//! apply statistics the binary turns into metrics.

use crate::progress::TableState;
use ferry_core::{Lsn, UnixMicros};
use std::time::{Duration, Instant};

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

/// Live progress of the initial load: what a progress bar (rows/s, ETA) or a periodic log
/// line shows. Rows count when the reader hands them to a COPY connection; at most a few
/// chunks per connection are in flight, so the count runs ahead of PostgreSQL by little.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LoadProgress {
    /// `profiling` (first pass: what the columns hold), `copying`, `indexing` (constraints,
    /// indexes, foreign keys after the data), `done`.
    pub step: String,
    /// Rows of the shipped tables in the snapshot (from its `SnapshotEnd`); 0 while unknown.
    pub rows_total: u64,
    /// Rows read (profiling) or handed to COPY (copying) so far in this step.
    pub rows_done: u64,
    pub tables_total: usize,
    /// Tables whose COPY has started (the earlier ones are complete or committing).
    pub tables_started: usize,
    /// When this step started.
    pub step_started: Option<Instant>,
}

impl LoadProgress {
    /// Rows per second in this step so far.
    pub fn rows_per_sec(&self) -> f64 {
        let secs = self.step_started.map_or(0.0, |t| t.elapsed().as_secs_f64());
        if secs <= 0.0 {
            0.0
        } else {
            self.rows_done as f64 / secs
        }
    }

    /// Time left in this step at the current rate; None while the total or the rate is
    /// unknown.
    pub fn eta(&self) -> Option<Duration> {
        let rate = self.rows_per_sec();
        if self.rows_total == 0 || rate <= 0.0 {
            return None;
        }
        let left = self.rows_total.saturating_sub(self.rows_done) as f64;
        Some(Duration::from_secs_f64(left / rate))
    }

    /// One line for logs and non-terminal output: `copying 1200000/2005100 rows (59%),
    /// 412000 rows/s, ETA 2s, table 3 of 5`.
    pub fn line(&self) -> String {
        let pct = (self.rows_done.min(self.rows_total) * 100)
            .checked_div(self.rows_total)
            .map(|p| format!(" ({p}%)"))
            .unwrap_or_default();
        let eta = self
            .eta()
            .map(|d| format!(", ETA {}s", d.as_secs()))
            .unwrap_or_default();
        format!(
            "{} {}/{} rows{pct}, {:.0} rows/s{eta}, table {} of {}",
            self.step,
            self.rows_done,
            self.rows_total,
            self.rows_per_sec(),
            self.tables_started,
            self.tables_total
        )
    }
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
    /// The initial load's progress (None when this shipper did not load).
    pub load: Option<LoadProgress>,
    pub stats: ShipStats,
}

/// One event of the apply path, handed to the observer set with
/// [`crate::Shipper::set_observer`] as it happens, so that a histogram sees every batch and a
/// counter every failed attempt (a status polled now and then would see only the last one).
#[derive(Clone, Debug, PartialEq)]
pub enum ShipEvent {
    /// A streaming batch committed (its progress advance included).
    BatchApplied {
        /// Log records in the batch.
        records: u64,
        /// Rows inserted or updated (net, after folding: one upsert per key).
        rows_upserted: u64,
        /// Rows deleted (net, after folding).
        rows_deleted: u64,
        /// The apply, from the first statement to the commit (retries of a split batch
        /// included).
        duration: Duration,
    },
    /// An attempt failed with a transient error; the shipper reconnects and retries.
    Retrying {
        /// Attempts in a row without progress, this one included.
        attempt: u32,
        error: String,
    },
}

/// What a finished `run` did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ShipSummary {
    pub applied_lsn: Lsn,
    pub stats: ShipStats,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_progress_rate_eta_and_line() {
        let mut l = LoadProgress {
            step: "copying".into(),
            rows_total: 1000,
            rows_done: 500,
            tables_total: 3,
            tables_started: 2,
            step_started: Some(Instant::now() - Duration::from_secs(5)),
        };
        let rate = l.rows_per_sec();
        assert!((90.0..=100.0).contains(&rate), "{rate}");
        let eta = l.eta().unwrap().as_secs_f64();
        assert!((4.5..=5.6).contains(&eta), "{eta}");
        let line = l.line();
        assert!(
            line.starts_with("copying 500/1000 rows (50%), ") && line.ends_with("table 2 of 3"),
            "{line}"
        );
        l.rows_total = 0;
        assert_eq!(l.eta(), None, "no total, no ETA");
        assert!(!l.line().contains('%'));
    }
}
