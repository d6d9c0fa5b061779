//! `/metrics` of a live `ferry run`, scraped the way Prometheus does (its `Accept` header)
//! and parsed with an OpenMetrics parser: every documented metric is exposed, every metric
//! the Grafana dashboard queries is there with data, the counters and histograms match what
//! was replicated (before and after an outage), an outage of PostgreSQL shows as an error
//! (source down, errors counted, `ferry status` failing) while lag rises, and all of it
//! clears when PostgreSQL returns. A client without that `Accept` gets the Prometheus text
//! format, which the Prometheus text parser reads.

use ferry_e2e::live::{FerryRun, start_app};
use ferry_e2e::{SampleApp, wait_until};
use ferry_pgserver::{LocalServer, ServerOptions};
use openmetrics_parser::{MetricsExposition, OpenMetricsType, OpenMetricsValue};
use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::path::Path;
use std::time::Duration;

type Exposition = MetricsExposition<OpenMetricsType, OpenMetricsValue>;

fn parse(content_type: &str, body: &str) -> Exposition {
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "Prometheus asked for OpenMetrics first; got {content_type:?}"
    );
    openmetrics_parser::openmetrics::parse_openmetrics(body)
        .unwrap_or_else(|e| panic!("the scrape does not parse as OpenMetrics: {e:?}\n{body}"))
}

fn scrape(run: &FerryRun) -> Exposition {
    let (ctype, body) = run.scrape();
    parse(&ctype, &body)
}

/// The samples of `family` for `source="app"` (and `label=value` when given).
fn samples<'a>(
    m: &'a Exposition,
    family: &str,
    label: Option<(&str, &str)>,
) -> Vec<&'a OpenMetricsValue> {
    let fam = m
        .families
        .get(family)
        .unwrap_or_else(|| panic!("no metric family {family}"));
    fam.iter_samples()
        .filter(|s| {
            let labels = s
                .get_labelset()
                .unwrap_or_else(|e| panic!("{family}: labels: {e:?}"));
            labels.get_label_value("source") == Some("app")
                && label.is_none_or(|(k, v)| labels.get_label_value(k) == Some(v))
        })
        .map(|s| &s.value)
        .collect()
}

/// The value of a counter or gauge `family` for `source="app"`, summed over the series that
/// match `label` (all of them when None).
fn sum(m: &Exposition, family: &str, label: Option<(&str, &str)>) -> f64 {
    let found = samples(m, family, label);
    assert!(
        !found.is_empty(),
        "{family} has no sample for source=app {label:?}"
    );
    found
        .iter()
        .map(|v| match v {
            OpenMetricsValue::Gauge(n) | OpenMetricsValue::Unknown(n) => n.as_f64(),
            OpenMetricsValue::Counter(c) => c.value.as_f64(),
            other => panic!("{family}: unexpected value {other:?}"),
        })
        .sum()
}

fn value(m: &Exposition, family: &str, op: Option<&str>) -> f64 {
    sum(m, family, op.map(|op| ("op", op)))
}

/// (count, sum) of the histogram `family` for `source="app"`.
fn histogram(m: &Exposition, family: &str) -> (u64, f64) {
    match samples(m, family, None).as_slice() {
        [OpenMetricsValue::Histogram(h)] => (
            h.count.unwrap_or_else(|| panic!("{family}: no _count")),
            h.sum
                .as_ref()
                .map_or_else(|| panic!("{family}: no _sum"), |s| s.as_f64()),
        ),
        other => panic!("{family}: expected one histogram for source=app, got {other:?}"),
    }
}

/// Failed shipping attempts counted so far (`stage="ship"`, `kind="connection"`).
fn ship_connection_errors(m: &Exposition) -> f64 {
    let fam = m
        .families
        .get("ferry_source_errors")
        .unwrap_or_else(|| panic!("no ferry_source_errors"));
    fam.iter_samples()
        .filter(|s| {
            let l = s.get_labelset().unwrap();
            l.get_label_value("source") == Some("app")
                && l.get_label_value("stage") == Some("ship")
                && l.get_label_value("kind") == Some("connection")
        })
        .map(|s| match &s.value {
            OpenMetricsValue::Counter(c) => c.value.as_f64(),
            other => panic!("ferry_source_errors: {other:?}"),
        })
        .sum()
}

/// Metric names documented in proto/metrics.md (the first column of its table).
fn documented_metrics() -> BTreeSet<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../proto/metrics.md");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split('`').next())
        .filter(|n| n.starts_with("ferry_"))
        .map(String::from)
        .collect()
}

/// The family name an OpenMetrics parser gives a documented metric name.
fn family_of(name: &str) -> &str {
    name.strip_suffix("_total")
        .or_else(|| name.strip_suffix("_info"))
        .unwrap_or(name)
}

/// The metric families the Grafana dashboard queries: every `ferry_…` name in its PromQL,
/// histogram series reduced to their family, counters and info without `_total`/`_info`.
fn dashboard_families() -> BTreeSet<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/grafana/ferry.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let dashboard: serde_json::Value = serde_json::from_str(&text).unwrap();
    fn exprs(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(o) => {
                for (k, v) in o {
                    match (k.as_str(), v) {
                        ("expr" | "query", serde_json::Value::String(s)) => out.push(s.clone()),
                        _ => exprs(v, out),
                    }
                }
            }
            serde_json::Value::Array(a) => a.iter().for_each(|v| exprs(v, out)),
            _ => {}
        }
    }
    let mut all = Vec::new();
    exprs(&dashboard, &mut all);
    assert!(
        all.len() > 20,
        "few queries found in the dashboard: {all:?}"
    );
    let mut families = BTreeSet::new();
    for e in &all {
        let mut rest = e.as_str();
        while let Some(at) = rest.find("ferry_") {
            let before_ok = at == 0
                || !rest[..at]
                    .chars()
                    .next_back()
                    .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
            let name: String = rest[at..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            rest = &rest[at + name.len()..];
            if !before_ok || name == "ferry_" {
                continue;
            }
            let family = ["_bucket", "_sum", "_count", "_total", "_info"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .unwrap_or(&name);
            families.insert(family.to_string());
        }
    }
    families
}

/// Whether a family has data for this test's source: a positive sum, or a positive count
/// for a histogram (`ferry_build` has no source label: one sample of 1).
fn has_data(m: &Exposition, family: &str) -> bool {
    if family == "ferry_build" {
        return m
            .families
            .get(family)
            .is_some_and(|f| f.iter_samples().count() == 1);
    }
    samples(m, family, None).iter().any(|v| match v {
        OpenMetricsValue::Gauge(n) | OpenMetricsValue::Unknown(n) => n.as_f64() > 0.0,
        OpenMetricsValue::Counter(c) => c.value.as_f64() > 0.0,
        OpenMetricsValue::Histogram(h) => h.count.unwrap_or(0) > 0,
        _ => false,
    })
}

fn total_rows(db: &Path) -> i64 {
    let c = rusqlite::Connection::open(db).unwrap();
    let tables: Vec<String> = c
        .prepare("SELECT name FROM sqlite_schema WHERE type = 'table'")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    tables
        .iter()
        .map(|t| {
            c.query_row(&format!("SELECT count(*) FROM \"{t}\""), [], |r| {
                r.get::<_, i64>(0)
            })
            .unwrap()
        })
        .sum()
}

/// The counters that follow from what the application committed: every commit is one
/// captured transaction and one record applied by streaming (the initial rows are the
/// snapshot's), so the batch-size histogram sums to the commits, and it has one observation
/// per committed batch (the duration histogram as many).
fn assert_counts_match(m: &Exposition, commits: f64, initial_rows: i64) {
    assert_eq!(value(m, "ferry_captured_transactions", None), commits);
    assert_eq!(value(m, "ferry_snapshot_rows", None), initial_rows as f64);
    let (batches, records) = histogram(m, "ferry_apply_batch_records");
    let (durations, seconds) = histogram(m, "ferry_apply_batch_duration_seconds");
    assert_eq!(
        records, commits,
        "every applied record is in the batch-size histogram"
    );
    assert_eq!(batches, durations, "one size and one duration per batch");
    assert!(
        batches >= 1 && batches as f64 <= commits && seconds > 0.0,
        "{batches} batches for {commits} commits, {seconds} s"
    );
    let captured: f64 = ["insert", "update", "delete"]
        .iter()
        .map(|op| value(m, "ferry_captured_rows", Some(op)))
        .sum();
    assert!(
        captured >= initial_rows as f64 + commits,
        "every commit changes a row"
    );
    // Applied rows are net per batch (folded): at most what was captured after the load.
    let applied = value(m, "ferry_applied_rows", Some("upsert"))
        + value(m, "ferry_applied_rows", Some("delete"));
    assert!(
        applied >= batches as f64 && applied <= captured - initial_rows as f64,
        "applied {applied}, captured {captured}, {batches} batches"
    );
    assert_eq!(
        value(m, "ferry_capture_lsn", None),
        value(m, "ferry_shipped_lsn", None)
    );
    let (syncs, _) = histogram(m, "ferry_log_fsync_duration_seconds");
    assert!(syncs > 0, "the log's fdatasyncs are observed");
}

#[test]
fn scrape_parses_counts_match_and_lag_follows_postgres() {
    let mut server = LocalServer::start(ServerOptions::default()).unwrap();
    server.psql("postgres", "CREATE DATABASE m").unwrap();
    let target = server.url("m");
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    let state = dir.path().join("state");
    let archive = dir.path().join("archive");
    SampleApp::prepare(&db, 150);
    let initial_rows = total_rows(&db);
    let run = FerryRun::start(
        &state,
        [
            OsStr::new("--source"),
            db.as_os_str(),
            OsStr::new("--target"),
            OsStr::new(&target),
            OsStr::new("--archive-dir"),
            archive.as_os_str(),
        ],
    );
    run.wait_caught_up(Duration::from_secs(120));
    let summary = start_app(
        &db,
        100,
        5,
        &[
            "--seconds",
            "2",
            "--checkpoint-every",
            "40",
            "--checkpoint-mode",
            "truncate",
        ],
    )
    .wait(Duration::from_secs(60));
    let commits = summary["commits"].as_u64().unwrap() as f64;
    run.wait_caught_up(Duration::from_secs(60));

    let m = scrape(&run);
    let missing: Vec<String> = documented_metrics()
        .into_iter()
        .filter(|n| !m.families.contains_key(family_of(n)))
        .collect();
    assert!(
        missing.is_empty(),
        "documented metrics missing from a live scrape: {missing:?}"
    );
    assert_counts_match(&m, commits, initial_rows);
    let status = run.source_status();
    assert_eq!(
        value(&m, "ferry_capture_lsn", None),
        status["captured_lsn"].as_f64().unwrap()
    );
    // The load's progress: every row of the snapshot handed to COPY, out of as many.
    assert_eq!(
        value(&m, "ferry_snapshot_copy_rows", None),
        initial_rows as f64
    );
    assert_eq!(
        value(&m, "ferry_snapshot_expected_rows", None),
        initial_rows as f64
    );
    let wal_resets = value(&m, "ferry_wal_resets", None);
    eprintln!(
        "checkpoints {} (TRUNCATE), WAL restarts captured {wal_resets}",
        summary["checkpoints"]
    );
    assert!(
        wal_resets > 0.0,
        "the application truncated its WAL {} times; capture saw no restart",
        summary["checkpoints"]
    );
    assert_eq!(value(&m, "ferry_replication_lag_records", None), 0.0);
    assert_eq!(value(&m, "ferry_replication_lag_seconds", None), 0.0);
    assert_eq!(value(&m, "ferry_source_up", None), 1.0);
    assert_eq!(run.status().0, 0, "ferry status before the outage");

    // A client that does not ask for OpenMetrics gets the Prometheus text format, which the
    // Prometheus text parser reads with the same counts.
    let (code, ctype, body) = ferry_e2e::live::http_get(&run.admin_addr(), "/metrics", None);
    assert_eq!(code, 200);
    assert!(ctype.starts_with("text/plain; version=0.0.4"), "{ctype}");
    let text = openmetrics_parser::prometheus::parse_prometheus(&body)
        .unwrap_or_else(|e| panic!("the text scrape does not parse: {e:?}\n{body}"));
    let fam = text
        .families
        .get("ferry_captured_transactions_total")
        .or_else(|| text.families.get("ferry_captured_transactions"))
        .unwrap_or_else(|| panic!("no captured transactions in {:?}", text.families.keys()));
    let in_text: f64 = fam
        .iter_samples()
        .map(|s| match &s.value {
            openmetrics_parser::PrometheusValue::Counter(c) => c.value.as_f64(),
            other => panic!("captured transactions: {other:?}"),
        })
        .sum();
    assert_eq!(in_text, commits);

    // PostgreSQL goes away while the application writes: lag rises, the source is in error,
    // the failed attempt is counted (one per reconnect cycle: a reconnect itself waits up to
    // the target's connect_wait for the server), `ferry status` fails, and the shipped
    // position does not go back.
    let errors_before = ship_connection_errors(&m);
    let shipped_before = value(&m, "ferry_shipped_lsn", None);
    server.shutdown_keep_data();
    let app = start_app(&db, 100, 6, &[]);
    let mut shipped_seen = shipped_before;
    wait_until(
        "lag to rise and the error to show while PostgreSQL is down",
        Duration::from_secs(60),
        || {
            let m = scrape(&run);
            let shipped = value(&m, "ferry_shipped_lsn", None);
            assert!(
                shipped >= shipped_seen,
                "shipped position went back from {shipped_seen} to {shipped}"
            );
            shipped_seen = shipped;
            value(&m, "ferry_replication_lag_records", None) > 0.0
                && value(&m, "ferry_replication_lag_seconds", None) > 0.5
                && value(&m, "ferry_source_up", None) == 0.0
                && ship_connection_errors(&m) > errors_before
        },
    );
    let (code, report) = run.status();
    let source = &report["sources"][0];
    assert_eq!(code, 2, "ferry status during the outage: {report}");
    assert_eq!(source["state"], "error", "{report}");
    assert!(
        source["last_error"]
            .as_str()
            .is_some_and(|e| e.starts_with("shipping to PostgreSQL") && e.contains("retrying")),
        "{report}"
    );
    let second = app.stop();
    let commits = commits + second["commits"].as_u64().unwrap() as f64;
    server.restart().unwrap();
    wait_until("lag to fall back to 0", Duration::from_secs(120), || {
        let m = scrape(&run);
        value(&m, "ferry_replication_lag_records", None) == 0.0
            && value(&m, "ferry_replication_lag_seconds", None) == 0.0
    });
    // The error is over: the source streams again and `ferry status` says so.
    run.wait_caught_up(Duration::from_secs(60));
    let (code, report) = run.status();
    assert_eq!(code, 0, "ferry status after the outage: {report}");
    assert!(report["sources"][0]["last_error"].is_null(), "{report}");
    let m = scrape(&run);
    assert_eq!(value(&m, "ferry_source_up", None), 1.0);
    // Counters kept counting through the outage and the reconnects.
    assert_counts_match(&m, commits, initial_rows);
    let errors_after = ship_connection_errors(&m);
    eprintln!(
        "failed shipping attempts during the outage: {}",
        errors_after - errors_before
    );
    assert!(errors_after > errors_before);

    // Every metric the dashboard queries is in the scrape, and has data unless this test
    // does not exercise its path.
    let not_exercised = BTreeSet::from([
        // 0 once caught up (their rise during the outage is checked above).
        "ferry_replication_lag_seconds",
        "ferry_replication_lag_records",
        // No cutover here (tests/tests/run_cutover.rs).
        "ferry_cutover_state",
        "ferry_writes_after_cutover",
        // 0 on an undisturbed WAL database.
        "ferry_resyncs",
        // The segments of the log are all archived and the base is at LSN > 0 only once
        // taken; archive behaviour is tests/tests/run_archive.rs's.
        "ferry_archive_lag_segments",
    ]);
    let families = dashboard_families();
    let absent: Vec<&String> = families
        .iter()
        .filter(|f| !m.families.contains_key(f.as_str()))
        .collect();
    assert!(
        absent.is_empty(),
        "the dashboard queries metrics a live scrape lacks: {absent:?}"
    );
    let empty: Vec<&String> = families
        .iter()
        .filter(|f| !not_exercised.contains(f.as_str()) && !has_data(&m, f))
        .collect();
    assert!(
        empty.is_empty(),
        "dashboard metrics without data after a load, writes and an outage: {empty:?}"
    );
    assert!(run.stop().success());
}
