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

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum OpLabel {
    /// Captured rows: a row inserted in SQLite (snapshot rows included).
    insert,
    /// Captured rows: a row updated in SQLite.
    update,
    /// Captured and applied rows: a row deleted.
    delete,
    /// Applied rows: a row written by `INSERT … ON CONFLICT DO UPDATE`. After folding a
    /// batch, PostgreSQL alone knows whether the key existed, so applied inserts and updates
    /// are one count rather than a guess.
    upsert,
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
    pub snapshot_copy_rows: Family<SourceLabel, Gauge>,
    pub snapshot_expected_rows: Family<SourceLabel, Gauge>,
    pub source_wal_bytes: Family<SourceLabel, Gauge>,
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
            snapshot_copy_rows: reg!(
                "ferry_snapshot_copy_rows",
                "Rows handed to COPY so far by this run's initial load",
                Family::default()
            ),
            snapshot_expected_rows: reg!(
                "ferry_snapshot_expected_rows",
                "Rows of the shipped tables in the snapshot this run loads (0 while unknown)",
                Family::default()
            ),
            source_wal_bytes: reg!(
                "ferry_source_wal_bytes",
                "Size of the source's -wal file",
                Family::default()
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
        let _ = self.snapshot_copy_rows.get_or_create(&l);
        let _ = self.snapshot_expected_rows.get_or_create(&l);
        let _ = self.wal_resets.get_or_create(&l);
        let _ = self.resyncs.get_or_create(&l);
        let _ = self.cutover_state.get_or_create(&l);
        let _ = self.writes_after_cutover.get_or_create(&l);
        for op in [OpLabel::insert, OpLabel::update, OpLabel::delete] {
            let _ = self.captured_rows.get_or_create(&SourceOp {
                source: source.to_string(),
                op,
            });
        }
        for op in [OpLabel::upsert, OpLabel::delete] {
            let _ = self.applied_rows.get_or_create(&SourceOp {
                source: source.to_string(),
                op,
            });
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

    /// The exposition in OpenMetrics text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// The exposition in the format an HTTP `Accept` header asks for, with its content type.
    pub fn encode_for(&self, accept: Option<&str>) -> (&'static str, String) {
        let openmetrics = self.encode();
        match ExpositionFormat::negotiate(accept) {
            ExpositionFormat::OpenMetrics => (OPENMETRICS_CONTENT_TYPE, openmetrics),
            ExpositionFormat::PrometheusText => (
                PROMETHEUS_TEXT_CONTENT_TYPE,
                openmetrics_to_prometheus_text(&openmetrics),
            ),
        }
    }
}

/// Content type of the OpenMetrics exposition.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Content type of the classic Prometheus text exposition.
pub const PROMETHEUS_TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The two text formats `/metrics` serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExpositionFormat {
    OpenMetrics,
    PrometheusText,
}

impl ExpositionFormat {
    /// OpenMetrics when the client lists `application/openmetrics-text` with a quality above
    /// zero (Prometheus does, first, since 2.x); the Prometheus text format otherwise — what
    /// a client that sends no `Accept` or `*/*` (curl, older scrapers) can always read.
    pub fn negotiate(accept: Option<&str>) -> ExpositionFormat {
        let wants_openmetrics = accept.is_some_and(|a| {
            a.split(',').any(|range| {
                let mut parts = range.split(';').map(str::trim);
                let media = parts.next().unwrap_or("");
                let refused = parts.any(|p| {
                    p.strip_prefix("q=")
                        .and_then(|q| q.parse::<f64>().ok())
                        .is_some_and(|q| q <= 0.0)
                });
                media.eq_ignore_ascii_case("application/openmetrics-text") && !refused
            })
        });
        if wants_openmetrics {
            ExpositionFormat::OpenMetrics
        } else {
            ExpositionFormat::PrometheusText
        }
    }
}

/// Rewrites prometheus-client's OpenMetrics text (it writes no other text format) as the
/// Prometheus text format 0.0.4. The two differ, for what ferry exports, in: the `# EOF`
/// terminator and `# UNIT` lines (absent in 0.0.4); a counter family's `TYPE` line, which
/// names the family without `_total` in OpenMetrics and the sample name with it in 0.0.4;
/// and the `info` type, which 0.0.4 does not have (it is a gauge of 1 named `…_info`).
/// Samples, labels, escaping and histogram series are written the same way in both.
pub fn openmetrics_to_prometheus_text(openmetrics: &str) -> String {
    let kinds: std::collections::HashMap<&str, &str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.split_once(' '))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, ""));
            match kind {
                "counter" => out.push_str(&format!("# TYPE {name}_total counter\n")),
                "info" => out.push_str(&format!("# TYPE {name}_info gauge\n")),
                _ => {
                    out.push_str(line);
                    out.push('\n');
                }
            }
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            // HELP names the same metric as TYPE does.
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            let name = match kinds.get(name).copied() {
                Some("counter") => format!("{name}_total"),
                Some("info") => format!("{name}_info"),
                _ => name.to_string(),
            };
            out.push_str(&format!("# HELP {name} {help}\n"));
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiation_follows_the_accept_header() {
        // What Prometheus 2.x/3.x sends (scrape_protocols defaults).
        let prometheus = "application/openmetrics-text;version=1.0.0;q=0.5,application/openmetrics-text;version=0.0.1;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2";
        assert_eq!(
            ExpositionFormat::negotiate(Some(prometheus)),
            ExpositionFormat::OpenMetrics
        );
        for other in [
            None,
            Some("*/*"),
            Some("text/plain;version=0.0.4"),
            Some("application/openmetrics-text;q=0, text/plain"),
        ] {
            assert_eq!(
                ExpositionFormat::negotiate(other),
                ExpositionFormat::PrometheusText,
                "{other:?}"
            );
        }
    }

    #[test]
    fn prometheus_text_names_counters_and_info_by_their_samples() {
        let m = Metrics::new();
        m.register_source("app", false);
        m.captured_transactions
            .get_or_create(&SourceLabel {
                source: "app".into(),
            })
            .inc_by(7);
        let (ctype, text) = m.encode_for(None);
        assert_eq!(ctype, PROMETHEUS_TEXT_CONTENT_TYPE);
        assert!(
            !text.contains("# EOF") && !text.contains("# UNIT"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE ferry_captured_transactions_total counter\n")
                && text.contains("# HELP ferry_captured_transactions_total ")
                && text.contains("ferry_captured_transactions_total{source=\"app\"} 7\n"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE ferry_build_info gauge\n")
                && text.contains("# TYPE ferry_apply_batch_duration_seconds histogram\n"),
            "{text}"
        );
        // Every sample line belongs to the family its preceding TYPE line names (what the
        // text-format parser of Prometheus checks).
        let mut family = String::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                family = rest.split(' ').next().unwrap_or("").to_string();
            } else if !line.starts_with('#') {
                let name = line.split(['{', ' ']).next().unwrap_or("");
                let base = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| name.strip_suffix(s))
                    .unwrap_or(name);
                assert!(
                    name == family || base == family,
                    "{line} after TYPE {family}"
                );
            }
        }
    }

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
