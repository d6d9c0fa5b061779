//! Every metric ferry exports, in one place (names and meanings: `proto/metrics.md`).
//!
//! Stages do not touch the registry: they keep their own counters (capture stats, apply
//! stats), and the pipeline copies those into these families. That keeps the library crates
//! free of any metrics dependency, and an event that is counted here is one the stage also
//! logged.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabel {
    pub source: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum OpLabel {
    insert,
    update,
    delete,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceOp {
    pub source: String,
    pub op: OpLabel,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceError {
    pub source: String,
    pub stage: String,
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceState {
    pub source: String,
    pub state: String,
}

type HistogramFamily = Family<SourceLabel, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 100 µs … ~6.5 s
    Histogram::new(exponential_buckets(0.0001, 2.0, 17))
}

fn batch_size_histogram() -> Histogram {
    // 1 … 65536 records
    Histogram::new(exponential_buckets(1.0, 2.0, 17))
}

/// All of ferry's metric families.
pub struct Metrics {
    pub registry: Registry,
    pub source_up: Family<SourceLabel, Gauge>,
    pub source_errors: Family<SourceError, Counter>,
    pub captured_transactions: Family<SourceLabel, Counter>,
    pub captured_rows: Family<SourceOp, Counter>,
    pub capture_lsn: Family<SourceLabel, Gauge>,
    pub log_bytes: Family<SourceLabel, Gauge>,
    pub log_segments: Family<SourceLabel, Gauge>,
    pub log_fsync_duration: HistogramFamily,
    pub shipped_lsn: Family<SourceLabel, Gauge>,
    pub applied_rows: Family<SourceOp, Counter>,
    pub apply_batch_records: HistogramFamily,
    pub apply_batch_duration: HistogramFamily,
    pub replication_lag_records: Family<SourceLabel, Gauge>,
    pub replication_lag_seconds: Family<SourceLabel, Gauge<f64, AtomicU64>>,
    pub snapshot_rows: Family<SourceLabel, Counter>,
    pub snapshot_tables: Family<SourceState, Gauge>,
    pub source_wal_bytes: Family<SourceLabel, Gauge>,
    pub wal_lock_hold: HistogramFamily,
    pub wal_resets: Family<SourceLabel, Counter>,
    pub resyncs: Family<SourceLabel, Counter>,
    pub cutover_state: Family<SourceLabel, Gauge>,
    pub writes_after_cutover: Family<SourceLabel, Counter>,
    pub archive_last_base_timestamp: Family<SourceLabel, Gauge>,
    pub archive_last_base_lsn: Family<SourceLabel, Gauge>,
    pub archive_lag_segments: Family<SourceLabel, Gauge>,
    pub archive_bytes: Family<SourceLabel, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut r = Registry::default();
        r.register(
            "ferry_build",
            "Build information",
            Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
        );
        macro_rules! reg {
            ($name:literal, $help:literal, $fam:expr) => {{
                let f = $fam;
                r.register($name, $help, f.clone());
                f
            }};
        }
        let hist = |f: fn() -> Histogram| HistogramFamily::new_with_constructor(f);
        Metrics {
            source_up: reg!(
                "ferry_source_up",
                "1 while the source's pipeline runs without error",
                Family::default()
            ),
            source_errors: reg!(
                "ferry_source_errors",
                "Errors by stage and kind",
                Family::default()
            ),
            captured_transactions: reg!(
                "ferry_captured_transactions",
                "Source commits captured into the log",
                Family::default()
            ),
            captured_rows: reg!(
                "ferry_captured_rows",
                "Row changes captured",
                Family::default()
            ),
            capture_lsn: reg!(
                "ferry_capture_lsn",
                "Last LSN durable in the log",
                Family::default()
            ),
            log_bytes: reg!(
                "ferry_log_bytes",
                "Bytes of log segments on disk",
                Family::default()
            ),
            log_segments: reg!(
                "ferry_log_segments",
                "Log segments on disk",
                Family::default()
            ),
            log_fsync_duration: reg!(
                "ferry_log_fsync_duration_seconds",
                "Duration of each group-commit fdatasync",
                hist(latency_histogram)
            ),
            shipped_lsn: reg!(
                "ferry_shipped_lsn",
                "Last LSN applied to PostgreSQL",
                Family::default()
            ),
            applied_rows: reg!(
                "ferry_applied_rows",
                "Row changes applied to PostgreSQL",
                Family::default()
            ),
            apply_batch_records: reg!(
                "ferry_apply_batch_records",
                "Log records per apply transaction",
                hist(batch_size_histogram)
            ),
            apply_batch_duration: reg!(
                "ferry_apply_batch_duration_seconds",
                "Duration of each apply transaction",
                hist(latency_histogram)
            ),
            replication_lag_records: reg!(
                "ferry_replication_lag_records",
                "Captured records not yet applied",
                Family::default()
            ),
            replication_lag_seconds: reg!(
                "ferry_replication_lag_seconds",
                "Age of the oldest captured change not yet applied",
                Family::default()
            ),
            snapshot_rows: reg!(
                "ferry_snapshot_rows",
                "Rows loaded by the initial load",
                Family::default()
            ),
            snapshot_tables: reg!(
                "ferry_snapshot_tables",
                "Tables per load state",
                Family::default()
            ),
            source_wal_bytes: reg!(
                "ferry_source_wal_bytes",
                "Size of the source's -wal file",
                Family::default()
            ),
            wal_lock_hold: reg!(
                "ferry_wal_lock_hold_seconds",
                "How long ferry held SQLite's write lock to let the WAL restart",
                hist(latency_histogram)
            ),
            wal_resets: reg!(
                "ferry_wal_resets",
                "WAL restarts observed",
                Family::default()
            ),
            resyncs: reg!(
                "ferry_resyncs",
                "Resyncs by page comparison",
                Family::default()
            ),
            cutover_state: reg!(
                "ferry_cutover_state",
                "0 none, 1 in progress, 2 done, 3 aborted",
                Family::default()
            ),
            writes_after_cutover: reg!(
                "ferry_writes_after_cutover",
                "Commits detected in SQLite after cutover",
                Family::default()
            ),
            archive_last_base_timestamp: reg!(
                "ferry_archive_last_base_timestamp_seconds",
                "Unix time of the newest base snapshot",
                Family::default()
            ),
            archive_last_base_lsn: reg!(
                "ferry_archive_last_base_lsn",
                "LSN of the newest base snapshot",
                Family::default()
            ),
            archive_lag_segments: reg!(
                "ferry_archive_lag_segments",
                "Sealed segments not yet archived",
                Family::default()
            ),
            archive_bytes: reg!(
                "ferry_archive_bytes",
                "Bytes in the archive",
                Family::default()
            ),
            registry: r,
        }
    }

    /// Makes every per-source series exist (at zero) so dashboards and alerts see the source
    /// from its first scrape.
    /// Error kinds are a closed set so the series stay bounded.
    pub const ERROR_KINDS: [&'static str; 6] =
        ["io", "format", "log", "connection", "data", "schema"];
    pub const STAGES: [&'static str; 3] = ["capture", "ship", "archive"];

    pub fn register_source(&self, source: &str, with_archive: bool) {
        let l = SourceLabel {
            source: source.to_string(),
        };
        self.source_up.get_or_create(&l).set(1);
        let _ = self.captured_transactions.get_or_create(&l);
        let _ = self.capture_lsn.get_or_create(&l);
        let _ = self.log_bytes.get_or_create(&l);
        let _ = self.log_segments.get_or_create(&l);
        let _ = self.log_fsync_duration.get_or_create(&l);
        let _ = self.shipped_lsn.get_or_create(&l);
        let _ = self.apply_batch_records.get_or_create(&l);
        let _ = self.apply_batch_duration.get_or_create(&l);
        let _ = self.replication_lag_records.get_or_create(&l);
        let _ = self.replication_lag_seconds.get_or_create(&l);
        let _ = self.snapshot_rows.get_or_create(&l);
        let _ = self.source_wal_bytes.get_or_create(&l);
        let _ = self.wal_lock_hold.get_or_create(&l);
        let _ = self.wal_resets.get_or_create(&l);
        let _ = self.resyncs.get_or_create(&l);
        let _ = self.cutover_state.get_or_create(&l);
        let _ = self.writes_after_cutover.get_or_create(&l);
        for op in [OpLabel::insert, OpLabel::update, OpLabel::delete] {
            let so = SourceOp {
                source: source.to_string(),
                op: op.clone(),
            };
            let _ = self.captured_rows.get_or_create(&so);
            let _ = self.applied_rows.get_or_create(&so);
        }
        for stage in Self::STAGES {
            for kind in Self::ERROR_KINDS {
                let _ = self.source_errors.get_or_create(&SourceError {
                    source: source.to_string(),
                    stage: stage.into(),
                    kind: kind.into(),
                });
            }
        }
        if with_archive {
            let _ = self.archive_last_base_timestamp.get_or_create(&l);
            let _ = self.archive_last_base_lsn.get_or_create(&l);
            let _ = self.archive_lag_segments.get_or_create(&l);
            let _ = self.archive_bytes.get_or_create(&l);
        }
        for state in ["loading", "streaming"] {
            let _ = self.snapshot_tables.get_or_create(&SourceState {
                source: source.to_string(),
                state: state.into(),
            });
        }
    }

    /// The exposition in OpenMetrics text format (which Prometheus negotiates and parses).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// Content type of [`Metrics::encode`]'s output.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_documented_metric_is_exported() {
        let m = Metrics::new();
        m.register_source("app", true);
        let text = m.encode();
        let spec = include_str!("../../../proto/metrics.md");
        let names: Vec<&str> = spec
            .lines()
            .filter_map(|l| l.strip_prefix("| `"))
            .filter_map(|l| l.split('`').next())
            .filter(|n| n.starts_with("ferry_"))
            .collect();
        assert!(
            names.len() > 20,
            "metrics table not found in proto/metrics.md"
        );
        for n in names {
            // OpenMetrics names a counter family without `_total` and an info family without
            // `_info` in its TYPE line; a family with no series yet shows only that line.
            let family = n
                .strip_suffix("_total")
                .or_else(|| n.strip_suffix("_info"))
                .unwrap_or(n);
            assert!(
                text.contains(&format!("# TYPE {family} ")) && text.contains(&format!("\n{n}")),
                "metric {n} from proto/metrics.md is not exported:\n{text}"
            );
        }
    }
}
