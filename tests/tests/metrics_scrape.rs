//! `/metrics` of a live `ferry run`, scraped the way Prometheus does (its `Accept` header)
//! and parsed with an OpenMetrics parser: every documented metric is exposed, the counters
//! match what was replicated, and lag rises while PostgreSQL is down and returns to 0 after.

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

/// The value of `family` for `source="app"` (and `op` when given).
fn value(m: &Exposition, family: &str, op: Option<&str>) -> f64 {
    let fam = m
        .families
        .get(family)
        .unwrap_or_else(|| panic!("no metric family {family}"));
    let mut found = None;
    for s in fam.iter_samples() {
        let labels = s
            .get_labelset()
            .unwrap_or_else(|e| panic!("{family}: labels: {e:?}"));
        if labels.get_label_value("source") != Some("app") {
            continue;
        }
        if op.is_some() && labels.get_label_value("op") != op {
            continue;
        }
        found = Some(match &s.value {
            OpenMetricsValue::Gauge(n) | OpenMetricsValue::Unknown(n) => n.as_f64(),
            OpenMetricsValue::Counter(c) => c.value.as_f64(),
            other => panic!("{family}: unexpected value {other:?}"),
        });
    }
    found.unwrap_or_else(|| panic!("{family} has no sample for source=app op={op:?}"))
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
    let summary = start_app(&db, 100, 5, &["--seconds", "2"]).wait(Duration::from_secs(60));
    let commits = summary["commits"].as_u64().unwrap() as f64;
    run.wait_caught_up(Duration::from_secs(60));

    let (ctype, body) = run.scrape();
    let m = parse(&ctype, &body);
    let missing: Vec<String> = documented_metrics()
        .into_iter()
        .filter(|n| !m.families.contains_key(family_of(n)))
        .collect();
    assert!(
        missing.is_empty(),
        "documented metrics missing from a live scrape: {missing:?}"
    );
    assert_eq!(value(&m, "ferry_captured_transactions", None), commits);
    assert_eq!(value(&m, "ferry_snapshot_rows", None), initial_rows as f64);
    assert_eq!(
        value(&m, "ferry_capture_lsn", None),
        value(&m, "ferry_shipped_lsn", None)
    );
    let status = run.source_status();
    assert_eq!(
        value(&m, "ferry_capture_lsn", None),
        status["captured_lsn"].as_f64().unwrap()
    );
    let captured: f64 = ["insert", "update", "delete"]
        .iter()
        .map(|op| value(&m, "ferry_captured_rows", Some(op)))
        .sum();
    assert!(
        captured >= initial_rows as f64 + commits,
        "every commit changes a row"
    );
    assert!(value(&m, "ferry_applied_rows", Some("insert")) > 0.0);
    assert_eq!(value(&m, "ferry_replication_lag_records", None), 0.0);
    assert_eq!(value(&m, "ferry_replication_lag_seconds", None), 0.0);
    assert_eq!(value(&m, "ferry_source_up", None), 1.0);

    // PostgreSQL goes away while the application writes: lag rises.
    server.shutdown_keep_data();
    let app = start_app(&db, 100, 6, &[]);
    wait_until(
        "lag to rise while PostgreSQL is down",
        Duration::from_secs(60),
        || {
            let (ctype, body) = run.scrape();
            let m = parse(&ctype, &body);
            value(&m, "ferry_replication_lag_records", None) > 0.0
                && value(&m, "ferry_replication_lag_seconds", None) > 0.5
        },
    );
    app.stop();
    server.restart().unwrap();
    wait_until("lag to fall back to 0", Duration::from_secs(120), || {
        let (ctype, body) = run.scrape();
        let m = parse(&ctype, &body);
        value(&m, "ferry_replication_lag_records", None) == 0.0
            && value(&m, "ferry_replication_lag_seconds", None) == 0.0
    });
    // The error is over: the source streams again and `ferry status` says so.
    run.wait_caught_up(Duration::from_secs(60));
    assert!(run.source_status()["last_error"].is_null());
    let (ctype, body) = run.scrape();
    let m = parse(&ctype, &body);
    assert!(
        m.families
            .get("ferry_source_errors")
            .is_some_and(|f| f.iter_samples().count() > 0),
        "the outage was counted as an error"
    );
    assert!(run.stop().success());
}
