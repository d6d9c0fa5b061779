//! Checks of the files in `deploy/` against the metric contract in `proto/metrics.md`.
//!
//! The dashboard and the alert rules are only as good as the names they query: a typo, a
//! histogram queried by its family name (no such series: only `_bucket`/`_sum`/`_count`
//! exist), or a counter without `_total` gives an empty panel or an alert that can never fire,
//! and nothing else would notice. So:
//!
//! - every `ferry_…` name in the dashboard's PromQL, in the alert rules and in their promtool
//!   tests is in the table of `proto/metrics.md` (histogram series reduced to their family);
//! - the dashboard shows every documented metric, filters every per-source query by
//!   `$source`, and applies `rate`/`increase` only to counters and `deriv`/`predict_linear`
//!   only to gauges;
//! - the dashboard's groupings and legends use only labels the metrics have;
//! - every dashboard expression parses as PromQL (`promtool check rules` on a generated rules
//!   file) and returns data on series generated from the table (`promtool test rules`, one
//!   `absent()` per query), every alert has a promtool test that makes it fire, and the
//!   README's Prometheus configs pass `promtool check config`;
//! - the systemd unit has the hardening the notes promise and passes `systemd-analyze verify`
//!   (where systemd is installed), the example config agrees with the unit, and every flag and
//!   `FERRY_…` variable the unit, the container and the Kubernetes manifest pass is one that
//!   `ferry run --help` lists.
//!
//! promtool is required (scripts/ensure-deps installs it); `FERRY_WITH_PROMTOOL=0` is the
//! explicit opt-out. The extraction functions (`documented_metrics`, `deploy_metric_names`,
//! `dashboard_expressions`, `ferry_metric_names`, `metric_names_in_exposition`) are written to
//! be reused by the live check: a scrape of a running `ferry run`'s `/metrics` must contain
//! every name the dashboard and the alerts use, i.e.
//! `deploy_metric_names().is_subset(&metric_names_in_exposition(&scrape))`.
//!
//! The YAML files are checked structurally by promtool (scripts/test runs `promtool check
//! rules` and `promtool test rules`); here they are read as text, on purpose without a YAML
//! parser dependency.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Suffixes of the series a histogram family exposes.
const HISTOGRAM_SERIES_SUFFIXES: [&str; 3] = ["_bucket", "_sum", "_count"];

/// The metric kinds of the `type` column of `proto/metrics.md`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetricKind {
    Counter,
    Gauge,
    Histogram,
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn read_repo_file(relative: &str) -> String {
    let path = repo_root().join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// The metric names of the table in `proto/metrics.md` (as queried: counters with `_total`,
/// histograms by family name), with their kind.
pub fn documented_metrics(metrics_md: &str) -> BTreeMap<String, MetricKind> {
    let mut names = BTreeMap::new();
    for line in metrics_md.lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        // "| `name` | type | labels | meaning |" splits into ["", name, type, labels, meaning, ""].
        if cells.len() < 4 {
            continue;
        }
        let Some(name) = cells[1]
            .strip_prefix('`')
            .and_then(|n| n.strip_suffix('`'))
            .filter(|n| n.starts_with("ferry_"))
        else {
            continue;
        };
        let kind = if cells[2].starts_with("counter") {
            MetricKind::Counter
        } else if cells[2].starts_with("histogram") {
            MetricKind::Histogram
        } else if cells[2].starts_with("gauge") {
            MetricKind::Gauge
        } else {
            panic!(
                "proto/metrics.md: {name} has an unknown type {:?}",
                cells[2]
            );
        };
        names.insert(name.to_string(), kind);
    }
    names
}

/// The labels of each metric in the table of `proto/metrics.md` (the backticked names of the
/// labels column; the value lists in parentheses are left out).
pub fn documented_labels(metrics_md: &str) -> BTreeMap<String, BTreeSet<String>> {
    documented_label_values(metrics_md)
        .into_iter()
        .map(|(metric, labels)| (metric, labels.into_keys().collect()))
        .collect()
}

/// The labels of each metric with the values the table lists for them in parentheses, e.g.
/// `op` → insert, update, delete (empty when the table lists none).
pub fn documented_label_values(
    metrics_md: &str,
) -> BTreeMap<String, BTreeMap<String, Vec<String>>> {
    let mut out = BTreeMap::new();
    for line in metrics_md.lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        if cells.len() < 5 || !cells[1].starts_with("`ferry_") {
            continue;
        }
        let mut labels: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut last_label = String::new();
        let mut depth = 0;
        for (i, part) in cells[3].split('`').enumerate() {
            if i % 2 == 0 {
                depth += part.matches('(').count();
                depth -= part.matches(')').count().min(depth);
            } else if depth == 0 {
                last_label = part.to_string();
                labels.insert(last_label.clone(), Vec::new());
            } else if let Some(values) = labels.get_mut(&last_label) {
                values.push(part.to_string());
            }
        }
        out.insert(cells[1].trim_matches('`').to_string(), labels);
    }
    out
}

/// Every metric name the dashboard and the alert rules query, spelled as in
/// `proto/metrics.md`: what a live `/metrics` must offer.
pub fn deploy_metric_names() -> BTreeSet<String> {
    let documented = load_documented();
    let mut text = dashboard_expressions(&load_dashboard()).join("\n");
    text.push_str(&read_repo_file("deploy/prometheus/ferry-alerts.yml"));
    ferry_metric_names(&text, &documented)
}

/// Every PromQL expression of a Grafana dashboard: each string under an `expr` key anywhere in
/// the document (panels, panels nested in collapsed rows, annotations), and the query of each
/// query-type template variable.
pub fn dashboard_expressions(dashboard: &serde_json::Value) -> Vec<String> {
    fn walk(value: &serde_json::Value, out: &mut Vec<String>) {
        match value {
            serde_json::Value::Object(map) => {
                for (key, v) in map {
                    match (key.as_str(), v) {
                        ("expr", serde_json::Value::String(expr)) => out.push(expr.clone()),
                        _ => walk(v, out),
                    }
                }
            }
            serde_json::Value::Array(items) => items.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(dashboard, &mut out);
    for var in template_variables(dashboard) {
        if var["type"] == "query"
            && let Some(q) = var["query"]["query"].as_str().or(var["query"].as_str())
        {
            out.push(q.to_string());
        }
    }
    out
}

/// Every `ferry_[a-z0-9_]+` token of a text, in order, with its byte offset.
pub fn ferry_tokens(text: &str) -> Vec<(usize, &str)> {
    let bytes = text.as_bytes();
    let is_name_byte = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_';
    let mut out = Vec::new();
    let mut i = 0;
    while let Some(found) = text[i..].find("ferry_") {
        let start = i + found;
        let mut end = start + "ferry_".len();
        while end < bytes.len() && is_name_byte(bytes[end]) {
            end += 1;
        }
        // `my_ferry_x` or `Xferry_` is not a ferry metric.
        let preceded_by_name =
            start > 0 && (bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        if !preceded_by_name && end > start + "ferry_".len() {
            out.push((start, &text[start..end]));
        }
        i = end;
    }
    out
}

/// A series name reduced to the name `proto/metrics.md` documents: histogram series lose their
/// `_bucket`/`_sum`/`_count` suffix when the family is documented.
pub fn documented_name<'a>(series: &'a str, documented: &BTreeMap<String, MetricKind>) -> &'a str {
    if documented.contains_key(series) {
        return series;
    }
    for suffix in HISTOGRAM_SERIES_SUFFIXES {
        if let Some(family) = series.strip_suffix(suffix)
            && documented.get(family) == Some(&MetricKind::Histogram)
        {
            return family;
        }
    }
    series
}

/// The `ferry_…` metric names a text uses, histogram series reduced to their family.
pub fn ferry_metric_names(
    text: &str,
    documented: &BTreeMap<String, MetricKind>,
) -> BTreeSet<String> {
    ferry_tokens(text)
        .into_iter()
        .map(|(_, t)| documented_name(t, documented).to_string())
        .collect()
}

/// The metric names a Prometheus text / OpenMetrics exposition offers, spelled as
/// `proto/metrics.md` spells them: read from the `# TYPE` lines (counters get `_total` where
/// OpenMetrics leaves it off the family, `info` families get `_info`).
pub fn metric_names_in_exposition(exposition: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in exposition.lines() {
        let mut words = line.split_whitespace();
        if (words.next(), words.next()) != (Some("#"), Some("TYPE")) {
            continue;
        }
        let (Some(family), Some(kind)) = (words.next(), words.next()) else {
            continue;
        };
        let name = match kind {
            "counter" if !family.ends_with("_total") => format!("{family}_total"),
            "info" => format!("{family}_info"),
            _ => family.to_string(),
        };
        names.insert(name);
    }
    names
}

fn template_variables(dashboard: &serde_json::Value) -> Vec<serde_json::Value> {
    dashboard["templating"]["list"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// Every panel, rows' nested panels included.
fn all_panels(dashboard: &serde_json::Value) -> Vec<&serde_json::Value> {
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().into_iter().flatten() {
        out.push(panel);
        out.extend(panel["panels"].as_array().into_iter().flatten());
    }
    out
}

fn load_dashboard() -> serde_json::Value {
    let text = read_repo_file("deploy/grafana/ferry.json");
    serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("deploy/grafana/ferry.json is not valid JSON: {e}"))
}

fn load_documented() -> BTreeMap<String, MetricKind> {
    let documented = documented_metrics(&read_repo_file("proto/metrics.md"));
    // Guards against a reformatted table silently making every check below vacuous.
    assert!(
        documented.len() >= 20
            && documented.contains_key("ferry_replication_lag_seconds")
            && documented.get("ferry_apply_batch_duration_seconds") == Some(&MetricKind::Histogram)
            && documented.get("ferry_source_errors_total") == Some(&MetricKind::Counter),
        "could not read the metric table of proto/metrics.md: got {documented:?}"
    );
    documented
}

/// Names used in `text` that the table does not document, with the text around each.
fn undocumented_uses(text: &str, documented: &BTreeMap<String, MetricKind>) -> Vec<String> {
    ferry_tokens(text)
        .into_iter()
        .filter(|(_, t)| !documented.contains_key(documented_name(t, documented)))
        .map(|(at, t)| {
            let line = text[..at].lines().count().max(1);
            format!("{t} (line {line})")
        })
        .collect()
}

/// Names of histogram families used bare, where no series of that name exists.
fn bare_histogram_uses(text: &str, documented: &BTreeMap<String, MetricKind>) -> Vec<String> {
    ferry_tokens(text)
        .into_iter()
        .filter(|(_, t)| documented.get(*t) == Some(&MetricKind::Histogram))
        .map(|(_, t)| t.to_string())
        .collect()
}

/// Functions whose argument must be a counter (or a histogram's cumulative series), and
/// functions whose argument must be a gauge.
const COUNTER_FUNCTIONS: [&str; 3] = ["rate(", "irate(", "increase("];
const GAUGE_FUNCTIONS: [&str; 3] = ["deriv(", "predict_linear(", "delta("];

/// Function applications to the wrong kind of metric, e.g. `rate(ferry_log_bytes[5m])`.
fn misapplied_functions(expr: &str, documented: &BTreeMap<String, MetricKind>) -> Vec<String> {
    let mut problems = Vec::new();
    for (at, token) in ferry_tokens(expr) {
        // The innermost function applied to this selector: the last `name(` before it, with
        // nothing but its own opening parenthesis in between.
        let before = expr[..at].trim_end();
        let Some(call) = before.strip_suffix('(') else {
            continue;
        };
        let function = call
            .rsplit(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .next()
            .unwrap_or("");
        let call = format!("{function}(");
        let family = documented_name(token, documented);
        let kind = documented.get(family);
        let is_cumulative = kind == Some(&MetricKind::Counter)
            || (kind == Some(&MetricKind::Histogram) && token != family);
        if COUNTER_FUNCTIONS.contains(&call.as_str()) && !is_cumulative {
            problems.push(format!("{call}{token}…) needs a counter: {expr}"));
        }
        if GAUGE_FUNCTIONS.contains(&call.as_str()) && kind != Some(&MetricKind::Gauge) {
            problems.push(format!("{call}{token}…) needs a gauge: {expr}"));
        }
    }
    problems
}

#[test]
fn metric_table_is_read_with_kinds() {
    let documented = load_documented();
    assert_eq!(
        documented.get("ferry_capture_lsn"),
        Some(&MetricKind::Gauge)
    );
    assert_eq!(
        documented.get("ferry_apply_batch_duration_seconds"),
        Some(&MetricKind::Histogram)
    );
    assert_eq!(
        documented.get("ferry_build_info"),
        Some(&MetricKind::Gauge),
        "build info is documented as a gauge (1)"
    );
    let counters: Vec<_> = documented
        .iter()
        .filter(|(_, k)| **k == MetricKind::Counter)
        .map(|(n, _)| n)
        .collect();
    assert!(
        counters.iter().all(|n| n.ends_with("_total")),
        "every counter in proto/metrics.md ends in _total: {counters:?}"
    );
}

#[test]
fn extraction_reduces_histogram_series_and_skips_lookalikes() {
    let documented = load_documented();
    let expr = r#"histogram_quantile(0.99, sum by (le) (rate(ferry_apply_batch_duration_seconds_bucket{source=~"$source"}[5m])))
        / my_ferry_thing + ferry_capture_lsn - ferry_shipped_lsn_count + ferry_"#;
    let names = ferry_metric_names(expr, &documented);
    assert_eq!(
        names,
        BTreeSet::from([
            "ferry_apply_batch_duration_seconds".to_string(),
            "ferry_capture_lsn".to_string(),
            // a gauge has no _count series: left as is, so the membership check rejects it
            "ferry_shipped_lsn_count".to_string(),
        ])
    );
    assert_eq!(
        undocumented_uses(expr, &documented),
        vec!["ferry_shipped_lsn_count (line 2)".to_string()]
    );
    assert_eq!(
        misapplied_functions("rate(ferry_log_bytes[5m]) + deriv(ferry_resyncs_total[1h])", &documented),
        vec![
            "rate(ferry_log_bytes…) needs a counter: rate(ferry_log_bytes[5m]) + deriv(ferry_resyncs_total[1h])".to_string(),
            "deriv(ferry_resyncs_total…) needs a gauge: rate(ferry_log_bytes[5m]) + deriv(ferry_resyncs_total[1h])".to_string(),
        ]
    );
}

#[test]
fn exposition_names_are_spelled_as_documented() {
    // The shapes prometheus-client writes in OpenMetrics, and the 0.0.4 text format's counter.
    let exposition = "\
# HELP ferry_build Build information.
# TYPE ferry_build info
ferry_build_info{version=\"0.1.0\"} 1
# HELP ferry_resyncs Resyncs.
# TYPE ferry_resyncs counter
ferry_resyncs_total{source=\"connect\"} 0
# TYPE ferry_wal_resets_total counter
ferry_wal_resets_total{source=\"connect\"} 3
# TYPE ferry_apply_batch_duration_seconds histogram
ferry_apply_batch_duration_seconds_sum{source=\"connect\"} 0.5
ferry_apply_batch_duration_seconds_count{source=\"connect\"} 4
ferry_apply_batch_duration_seconds_bucket{le=\"+Inf\",source=\"connect\"} 4
# TYPE ferry_capture_lsn gauge
ferry_capture_lsn{source=\"connect\"} 12
# EOF
";
    assert_eq!(
        metric_names_in_exposition(exposition),
        BTreeSet::from(
            [
                "ferry_build_info",
                "ferry_resyncs_total",
                "ferry_wal_resets_total",
                "ferry_apply_batch_duration_seconds",
                "ferry_capture_lsn",
            ]
            .map(String::from)
        )
    );
}

#[test]
fn dashboard_queries_only_documented_metrics() {
    let documented = load_documented();
    let dashboard = load_dashboard();
    let exprs = dashboard_expressions(&dashboard);
    assert!(
        exprs.len() >= 20,
        "expected the dashboard's PromQL expressions, found {}",
        exprs.len()
    );
    let mut problems = Vec::new();
    for expr in &exprs {
        if ferry_tokens(expr).is_empty() {
            problems.push(format!("queries no ferry metric: {expr}"));
        }
        for name in undocumented_uses(expr, &documented) {
            problems.push(format!("not in proto/metrics.md: {name} in {expr}"));
        }
        for name in bare_histogram_uses(expr, &documented) {
            problems.push(format!(
                "{name} is a histogram: query its _bucket/_sum/_count series: {expr}"
            ));
        }
        problems.extend(misapplied_functions(expr, &documented));
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn deploy_metric_names_are_the_documented_ones() {
    let documented = load_documented();
    let used = deploy_metric_names();
    assert_eq!(
        used,
        documented.keys().cloned().collect::<BTreeSet<_>>(),
        "the deploy artifacts together query exactly the documented metrics"
    );
}

#[test]
fn dashboard_shows_every_documented_metric() {
    let documented = load_documented();
    let used = ferry_metric_names(
        &dashboard_expressions(&load_dashboard()).join("\n"),
        &documented,
    );
    let missing: Vec<_> = documented.keys().filter(|n| !used.contains(*n)).collect();
    assert!(
        missing.is_empty(),
        "metrics in proto/metrics.md without a panel in deploy/grafana/ferry.json: {missing:?}"
    );
}

#[test]
fn dashboard_variables_and_layout() {
    let dashboard = load_dashboard();
    let schema = dashboard["schemaVersion"].as_u64().unwrap_or(0);
    assert!(schema >= 38, "schemaVersion {schema} < 38");
    assert!(dashboard["uid"].as_str().is_some_and(|u| !u.is_empty()));

    let vars = template_variables(&dashboard);
    let var = |name: &str| {
        vars.iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("no template variable ${name}"))
    };
    let ds = var("datasource");
    assert_eq!(ds["type"], "datasource");
    assert_eq!(ds["query"], "prometheus");
    let source = var("source");
    assert_eq!(source["type"], "query");
    let query = source["query"]["query"]
        .as_str()
        .or(source["query"].as_str())
        .unwrap_or("");
    assert_eq!(query, "label_values(ferry_capture_lsn, source)");
    assert_eq!(source["datasource"]["uid"], "${datasource}");

    let panels = all_panels(&dashboard);
    let mut ids = BTreeSet::new();
    let mut cells: BTreeMap<(u64, u64), String> = BTreeMap::new();
    for panel in &panels {
        let title = panel["title"].as_str().unwrap_or("<untitled>");
        let id = panel["id"]
            .as_u64()
            .unwrap_or_else(|| panic!("{title}: no id"));
        assert!(ids.insert(id), "{title}: panel id {id} used twice");
        let pos = &panel["gridPos"];
        let [x, y, w, h] = ["x", "y", "w", "h"].map(|k| {
            pos[k]
                .as_u64()
                .unwrap_or_else(|| panic!("{title}: gridPos.{k} missing"))
        });
        assert!(w > 0 && h > 0 && x + w <= 24, "{title}: gridPos {pos}");
        for cx in x..x + w {
            for cy in y..y + h {
                if let Some(other) = cells.insert((cx, cy), title.to_string()) {
                    panic!("panels {other:?} and {title:?} overlap at ({cx}, {cy})");
                }
            }
        }
        if panel["type"] == "row" {
            continue;
        }
        assert_eq!(
            panel["datasource"]["uid"], "${datasource}",
            "{title}: use the $datasource variable"
        );
        let targets = panel["targets"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        assert!(!targets.is_empty(), "{title}: no queries");
        let mut ref_ids = BTreeSet::new();
        for target in targets {
            let expr = target["expr"].as_str().unwrap_or("");
            assert!(!expr.trim().is_empty(), "{title}: a query without expr");
            assert!(
                ref_ids.insert(target["refId"].as_str().unwrap_or("").to_string()),
                "{title}: refIds must be distinct"
            );
        }
    }
    assert!(panels.len() >= 20, "only {} panels", panels.len());
}

#[test]
fn labels_table_is_read_without_value_lists() {
    let labels = documented_labels(&read_repo_file("proto/metrics.md"));
    let set = |names: &[&str]| names.iter().map(|n| n.to_string()).collect::<BTreeSet<_>>();
    assert_eq!(
        labels.get("ferry_source_errors_total"),
        Some(&set(&["source", "stage", "kind"]))
    );
    assert_eq!(
        labels.get("ferry_captured_rows_total"),
        Some(&set(&["source", "op"]))
    );
    assert_eq!(labels.get("ferry_build_info"), Some(&set(&["version"])));
    assert_eq!(labels.len(), load_documented().len());
    let values = documented_label_values(&read_repo_file("proto/metrics.md"));
    assert_eq!(
        values["ferry_captured_rows_total"]["op"],
        vec!["insert", "update", "delete"]
    );
    assert_eq!(
        values["ferry_snapshot_tables"]["state"],
        vec!["loading", "streaming"]
    );
    assert!(values["ferry_source_errors_total"]["kind"].is_empty());
}

#[test]
fn dashboard_groups_and_legends_use_labels_the_metrics_have() {
    let documented = load_documented();
    let labels = documented_labels(&read_repo_file("proto/metrics.md"));
    let dashboard = load_dashboard();
    let mut problems = Vec::new();
    for panel in all_panels(&dashboard) {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().unwrap_or("");
            // Labels every scraped series has, plus the bucket bound of histogram series.
            let mut allowed: BTreeSet<String> = ["instance", "job", "le"].map(String::from).into();
            for name in ferry_metric_names(expr, &documented) {
                allowed.extend(labels.get(&name).into_iter().flatten().cloned());
            }
            let grouped = expr
                .split("by (")
                .skip(1)
                .filter_map(|rest| rest.split_once(')'))
                .flat_map(|(list, _)| list.split(',').map(str::trim));
            let legend = target["legendFormat"].as_str().unwrap_or("");
            let in_legend = legend
                .split("{{")
                .skip(1)
                .filter_map(|rest| rest.split_once("}}"))
                .map(|(label, _)| label.trim());
            for label in grouped.chain(in_legend) {
                if !allowed.contains(label) {
                    problems.push(format!(
                        "{:?}: label {label:?} is not a label of {expr}",
                        panel["title"]
                    ));
                }
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn dashboard_filters_every_per_source_query_by_source() {
    let documented = load_documented();
    let mut problems = Vec::new();
    for expr in dashboard_expressions(&load_dashboard()) {
        for (at, token) in ferry_tokens(&expr) {
            // ferry_build_info has no source label; the variable's own query lists all sources.
            if token == "ferry_build_info" || expr.starts_with("label_values(") {
                continue;
            }
            let rest = &expr[at + token.len()..];
            let matchers = rest
                .strip_prefix('{')
                .and_then(|r| r.split_once('}'))
                .map(|(m, _)| m)
                .unwrap_or("");
            if !matchers.contains(r#"source=~"$source""#) {
                problems.push(format!(
                    "{} lacks source=~\"$source\": {expr}",
                    documented_name(token, &documented)
                ));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// Runs promtool, or says why it cannot. `FERRY_WITH_PROMTOOL=0` is the explicit opt-out that
/// scripts/ensure-deps also honours; otherwise a missing promtool is a failure, not a skip.
fn promtool(args: &[&str]) -> Option<std::process::Output> {
    match Command::new("promtool").args(args).output() {
        Ok(out) => Some(out),
        Err(e) if std::env::var("FERRY_WITH_PROMTOOL").as_deref() == Ok("0") => {
            eprintln!("promtool not run ({e}); FERRY_WITH_PROMTOOL=0");
            None
        }
        Err(e) => panic!(
            "promtool: {e}. Install it (apt-get install prometheus, or scripts/ensure-deps \
             --tests), or set FERRY_WITH_PROMTOOL=0 to skip the PromQL checks"
        ),
    }
}

/// Input series for a promtool test, shaped as ferry exposes its metrics: one series per
/// combination of the values the table lists for each label (`source="connect"`, `"x"` for a
/// label without a list), counters rising by 60 a minute, gauges rising by 1 a minute from 1
/// (positive and changing), histograms as cumulative `_bucket`s with `_sum` and `_count`.
/// 21 samples, one a minute.
fn synthetic_series(
    documented: &BTreeMap<String, MetricKind>,
    label_values: &BTreeMap<String, BTreeMap<String, Vec<String>>>,
) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (name, kind) in documented {
        let mut label_sets: Vec<Vec<String>> = vec![Vec::new()];
        for (label, values) in label_values.get(name).into_iter().flatten() {
            let values: Vec<&str> = match (label.as_str(), values.is_empty()) {
                ("source", _) => vec!["connect"],
                (_, true) => vec!["x"],
                (_, false) => values.iter().map(String::as_str).collect(),
            };
            label_sets = label_sets
                .iter()
                .flat_map(|set| {
                    values.iter().map(move |v| {
                        let mut set = set.clone();
                        set.push(format!("{label}=\"{v}\""));
                        set
                    })
                })
                .collect();
        }
        for set in label_sets {
            let with = |extra: Option<String>| {
                let mut all = set.clone();
                all.extend(extra);
                format!("{{{}}}", all.join(", "))
            };
            match kind {
                MetricKind::Counter => {
                    out.push((format!("{name}{}", with(None)), "0+60x20".into()))
                }
                MetricKind::Gauge => out.push((format!("{name}{}", with(None)), "1+1x20".into())),
                MetricKind::Histogram => {
                    for (le, per_minute) in [("0.001", 10), ("0.01", 20), ("1", 30), ("+Inf", 40)] {
                        let series = with(Some(format!("le=\"{le}\"")));
                        out.push((
                            format!("{name}_bucket{series}"),
                            format!("0+{per_minute}x20"),
                        ));
                    }
                    out.push((format!("{name}_sum{}", with(None)), "0+2x20".into()));
                    out.push((format!("{name}_count{}", with(None)), "0+40x20".into()));
                }
            }
        }
    }
    out
}

#[test]
fn dashboard_queries_parse_and_show_data() {
    let documented = load_documented();
    let label_values = documented_label_values(&read_repo_file("proto/metrics.md"));
    let exprs = dashboard_expressions(&load_dashboard());
    let mut rules = String::from("groups:\n  - name: ferry-dashboard\n    rules:\n");
    for (i, expr) in exprs.iter().enumerate() {
        // Grafana's label_values(metric, label) asks the series API, not PromQL; check the
        // equivalent query.
        let expr = match expr
            .strip_prefix("label_values(")
            .and_then(|r| r.strip_suffix(')'))
            .and_then(|r| r.rsplit_once(','))
        {
            Some((metric, label)) => format!("group by ({}) ({metric})", label.trim()),
            None => expr.clone(),
        };
        // Grafana substitutes these before Prometheus sees the query.
        let promql = expr
            .replace("$__rate_interval", "5m")
            .replace("$__interval", "1m")
            .replace("$source", ".*");
        assert!(
            !promql.contains('$'),
            "an unknown dashboard variable in {expr}"
        );
        rules.push_str(&format!(
            "      - record: ferry_dashboard:expr{i}\n        expr: |\n          {promql}\n"
        ));
    }
    // Each query, evaluated on the synthetic series, returns something: absent() of it is
    // empty. An empty panel (wrong label, a filter that can never pass, a series ferry does
    // not export) fails here with the query's number.
    let mut tests = String::from(
        "rule_files: [dashboard-rules.yml]\nevaluation_interval: 1m\ntests:\n  - interval: 1m\n    input_series:\n",
    );
    for (series, values) in synthetic_series(&documented, &label_values) {
        tests.push_str(&format!(
            "      - series: '{series}'\n        values: '{values}'\n"
        ));
    }
    tests.push_str("    promql_expr_test:\n");
    for i in 0..exprs.len() {
        tests.push_str(&format!(
            "      - expr: absent(ferry_dashboard:expr{i})\n        eval_time: 10m\n        exp_samples: []\n"
        ));
    }
    let dir = std::env::temp_dir().join(format!("ferry-dashboard-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let rules_path = dir.join("dashboard-rules.yml");
    let tests_path = dir.join("dashboard-tests.yml");
    std::fs::write(&rules_path, &rules).unwrap();
    std::fs::write(&tests_path, &tests).unwrap();
    let check = promtool(&["check", "rules", rules_path.to_str().unwrap()]);
    let test = check
        .as_ref()
        .filter(|c| c.status.success())
        .and_then(|_| promtool(&["test", "rules", tests_path.to_str().unwrap()]));
    std::fs::remove_dir_all(&dir).ok();
    let Some(check) = check else { return };
    let stdout = String::from_utf8_lossy(&check.stdout);
    assert!(
        check.status.success(),
        "promtool rejects a dashboard query:\n{stdout}{}\nrules:\n{rules}",
        String::from_utf8_lossy(&check.stderr)
    );
    assert!(
        stdout.contains(&format!("{} rules found", exprs.len())),
        "{stdout}"
    );
    let test = test.expect("promtool ran for check, so it runs for test");
    assert!(
        test.status.success(),
        "a dashboard query returns no data on series shaped like ferry's:\n{}{}\nrules:\n{rules}",
        String::from_utf8_lossy(&test.stdout),
        String::from_utf8_lossy(&test.stderr)
    );
}

#[test]
fn alert_rules_and_their_tests_use_only_documented_metrics() {
    let documented = load_documented();
    for file in [
        "deploy/prometheus/ferry-alerts.yml",
        "deploy/prometheus/tests/ferry-alerts.test.yml",
    ] {
        let text = read_repo_file(file);
        let used = ferry_metric_names(&text, &documented);
        assert!(used.len() >= 8, "{file}: only {used:?}");
        let mut problems: Vec<String> = undocumented_uses(&text, &documented)
            .into_iter()
            .map(|u| format!("not in proto/metrics.md: {u}"))
            .collect();
        problems.extend(
            bare_histogram_uses(&text, &documented)
                .into_iter()
                .map(|n| format!("{n} is a histogram: use its _bucket/_sum/_count series")),
        );
        // Every function call in these files sits on one line (runbook prose included).
        for line in text.lines() {
            problems.extend(misapplied_functions(line, &documented));
        }
        assert!(problems.is_empty(), "{file}:\n{}", problems.join("\n"));
    }
}

/// The rules of the alert file: (name, the text of its rule block).
fn alert_blocks(rules: &str) -> Vec<(String, String)> {
    let mut blocks: Vec<(String, String)> = Vec::new();
    for line in rules.lines() {
        if let Some(name) = line.trim_start().strip_prefix("- alert:") {
            blocks.push((name.trim().to_string(), String::new()));
        } else if let Some((_, block)) = blocks.last_mut() {
            block.push_str(line);
            block.push('\n');
        }
    }
    blocks
}

#[test]
fn every_alert_has_severity_runbook_text_and_a_firing_test() {
    let rules = read_repo_file("deploy/prometheus/ferry-alerts.yml");
    let tests = read_repo_file("deploy/prometheus/tests/ferry-alerts.test.yml");
    let blocks = alert_blocks(&rules);
    let names: BTreeSet<&str> = blocks.iter().map(|(n, _)| n.as_str()).collect();
    for required in [
        "FerryReplicationLagHigh",
        "FerryReplicationLagCritical",
        "FerryShippingStalled",
        "FerrySourceError",
        "FerryWritesAfterCutover",
        "FerryLogDiskGrowing",
        "FerryArchiveStale",
    ] {
        assert!(names.contains(required), "no alert {required}: {names:?}");
    }
    let test_lines: Vec<&str> = tests.lines().map(str::trim).collect();
    for (name, block) in &blocks {
        assert!(
            block.contains("severity: warning") || block.contains("severity: critical"),
            "{name}: severity must be warning or critical"
        );
        assert!(block.contains("summary:"), "{name}: no summary");
        assert!(
            (block.contains("description:") && block.contains("{{ $labels.source }}"))
                || name == "FerryDown",
            "{name}: the description must name the source"
        );
        let fires = test_lines
            .windows(2)
            .any(|w| w[0] == format!("alertname: {name}") && w[1] == "exp_alerts:");
        assert!(fires, "{name}: no promtool test expects it to fire");
    }
    let quiet = test_lines
        .windows(2)
        .filter(|w| w[0].starts_with("alertname: ") && w[1] == "exp_alerts: []")
        .count();
    assert!(
        quiet >= blocks.len() / 2,
        "too few not-firing cases: {quiet}"
    );
    assert!(
        rules.contains("ferry_replication_lag_seconds > 30")
            && rules.contains("increase(ferry_writes_after_cutover_total[5m]) > 0")
            && rules.contains("ferry_source_up == 0"),
        "the thresholds named in issue 6 are missing"
    );
}

#[test]
fn alert_rules_pass_promtool() {
    let rules = repo_root().join("deploy/prometheus/ferry-alerts.yml");
    let tests = repo_root().join("deploy/prometheus/tests/ferry-alerts.test.yml");
    let Some(check) = promtool(&["check", "rules", rules.to_str().unwrap()]) else {
        return;
    };
    assert!(
        check.status.success(),
        "promtool check rules:\n{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    let Some(test) = promtool(&["test", "rules", tests.to_str().unwrap()]) else {
        return;
    };
    assert!(
        test.status.success(),
        "promtool test rules:\n{}{}",
        String::from_utf8_lossy(&test.stdout),
        String::from_utf8_lossy(&test.stderr)
    );
}

/// `key=value` lines of a systemd unit, with their section, in order (comments dropped).
fn unit_directives(unit: &str) -> Vec<(String, String, String)> {
    let mut section = String::new();
    let mut out = Vec::new();
    for line in unit.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.to_string();
        } else if let Some((key, value)) = line.split_once('=') {
            out.push((section.clone(), key.trim().into(), value.trim().into()));
        } else {
            panic!("ferry.service: not a directive: {line:?}");
        }
    }
    out
}

#[test]
fn systemd_unit_is_hardened() {
    let unit = read_repo_file("deploy/systemd/ferry.service");
    let directives = unit_directives(&unit);
    let values = |section: &str, key: &str| -> Vec<&str> {
        directives
            .iter()
            .filter(|(s, k, _)| s == section && k == key)
            .map(|(_, _, v)| v.as_str())
            .collect()
    };
    for (key, expected) in [
        (
            "ExecStart",
            "/usr/local/bin/ferry run --config /etc/ferry/ferry.toml",
        ),
        ("User", "ferry"),
        ("StateDirectory", "ferry"),
        ("StateDirectoryMode", "0700"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("NoNewPrivileges", "yes"),
        ("Restart", "on-failure"),
        ("KillSignal", "SIGTERM"),
        ("CapabilityBoundingSet", ""),
    ] {
        assert_eq!(values("Service", key), vec![expected], "[Service] {key}=");
    }
    for key in [
        "RestartSec",
        "TimeoutStopSec",
        "SupplementaryGroups",
        "ReadWritePaths",
    ] {
        assert!(
            values("Service", key).iter().any(|v| !v.is_empty()),
            "[Service] {key}= is missing"
        );
    }
    // A private user namespace unmaps the supplementary group (the database becomes
    // unreadable), and a dynamic user would own the -wal/-shm files it creates only
    // transiently: the unit's comments explain both.
    for key in ["PrivateUsers", "DynamicUser"] {
        assert!(
            values("Service", key).iter().all(|v| *v == "no"),
            "{key}= must stay off: see the comment in ferry.service"
        );
    }
    for key in ["StartLimitIntervalSec", "StartLimitBurst"] {
        assert!(
            values("Service", key).is_empty(),
            "{key}= belongs in [Unit]"
        );
    }
    assert_eq!(values("Install", "WantedBy"), vec!["multi-user.target"]);
}

#[test]
fn systemd_unit_passes_systemd_analyze_verify() {
    let unit = read_repo_file("deploy/systemd/ferry.service");
    // verify checks that ExecStart's binary exists: point it at the one cargo just built.
    let built = env!("CARGO_BIN_EXE_ferry");
    let copy = unit.replace("/usr/local/bin/ferry", built);
    assert_ne!(copy, unit);
    let dir = std::env::temp_dir().join(format!("ferry-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("ferry.service");
    std::fs::write(&path, copy).unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", path.to_str().unwrap()])
        .output();
    std::fs::remove_dir_all(&dir).ok();
    let out = match out {
        Ok(out) => out,
        // Not every build host has systemd; the directive checks above still ran there.
        Err(e) => {
            eprintln!("systemd-analyze not run: {e}");
            return;
        }
    };
    // verify exits 0 on unknown or misplaced directives and only warns: any output fails.
    let output = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && output.trim().is_empty(),
        "systemd-analyze verify ferry.service:\n{output}"
    );
}

#[test]
fn example_config_matches_the_unit() {
    let text = read_repo_file("deploy/systemd/ferry.toml.example");
    let config: toml::Table = text
        .parse()
        .unwrap_or_else(|e| panic!("ferry.toml.example: {e}"));
    // The keys crates/ferry/src/config.rs accepts (it denies unknown fields).
    let allowed_top = ["state_dir", "admin_addr", "target", "source", "archive"];
    let allowed_target = ["url", "password_file"];
    let allowed_source = [
        "name",
        "path",
        "kind",
        "schema",
        "table_prefix",
        "mode",
        "include",
        "exclude",
    ];
    for key in config.keys() {
        assert!(allowed_top.contains(&key.as_str()), "unknown key {key}");
    }
    assert_eq!(config["admin_addr"].as_str(), Some("127.0.0.1:9731"));
    assert_eq!(config["state_dir"].as_str(), Some("/var/lib/ferry"));

    let target = config["target"].as_table().expect("[target]");
    for key in target.keys() {
        assert!(
            allowed_target.contains(&key.as_str()),
            "unknown target.{key}"
        );
    }
    let url = target["url"].as_str().expect("target.url");
    let userinfo = url
        .split_once("://")
        .and_then(|(_, rest)| rest.split_once('@'))
        .map(|(u, _)| u)
        .unwrap_or("");
    assert!(
        !userinfo.contains(':') && !url.contains("password="),
        "no password in target.url: {url}"
    );
    let password_file = target["password_file"]
        .as_str()
        .expect("target.password_file");

    let sources = config["source"].as_array().expect("[[source]]");
    assert_eq!(sources.len(), 2);
    let mut names = BTreeSet::new();
    let mut schemas = BTreeSet::new();
    let mut dirs = BTreeSet::new();
    for source in sources {
        let source = source.as_table().expect("[[source]] table");
        for key in source.keys() {
            assert!(
                allowed_source.contains(&key.as_str()),
                "unknown source.{key}"
            );
        }
        names.insert(source["name"].as_str().expect("name").to_string());
        schemas.insert(source["schema"].as_str().expect("schema").to_string());
        let path = Path::new(source["path"].as_str().expect("path"));
        assert!(path.is_absolute(), "{}", path.display());
        dirs.insert(path.parent().unwrap().to_str().unwrap().to_string());
    }
    assert_eq!(names.len(), 2, "distinct source names");
    assert_eq!(schemas.len(), 2, "each source in its own schema");

    // The unit must let ferry write next to each database, and hand it the password file.
    let unit = read_repo_file("deploy/systemd/ferry.service");
    let directives = unit_directives(&unit);
    let read_write: BTreeSet<&str> = directives
        .iter()
        .filter(|(_, k, _)| k == "ReadWritePaths")
        .flat_map(|(_, _, v)| v.split_whitespace())
        .map(|p| p.trim_start_matches('-'))
        .collect();
    for dir in &dirs {
        assert!(
            read_write.contains(dir.as_str()),
            "{dir} is not in the unit's ReadWritePaths: {read_write:?}"
        );
    }
    let (credential, source_file) = directives
        .iter()
        .find(|(_, k, _)| k == "LoadCredential")
        .and_then(|(_, _, v)| v.split_once(':'))
        .expect("LoadCredential=name:path in ferry.service");
    assert_eq!(
        password_file,
        format!("/run/credentials/ferry.service/{credential}")
    );
    assert!(source_file.starts_with("/etc/ferry/"), "{source_file}");
}

/// `ferry run --help` of the binary cargo built, to check that the service files only use
/// flags and environment variables ferry accepts.
fn run_help() -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["run", "--help"])
        .output()
        .expect("running ferry run --help");
    assert!(out.status.success(), "ferry run --help failed");
    String::from_utf8(out.stdout).expect("help is UTF-8")
}

/// The `--flag`s of an argument list, and whether `ferry run --help` knows each.
fn unknown_flags<'a>(args: impl IntoIterator<Item = &'a str>, help: &str) -> Vec<String> {
    args.into_iter()
        .filter(|a| a.starts_with("--"))
        .map(|a| a.split('=').next().unwrap_or(a))
        .filter(|flag| !help.contains(&format!("{flag} <")) && !help.contains(&format!("{flag} ")))
        .map(String::from)
        .collect()
}

#[test]
fn systemd_exec_start_uses_flags_ferry_run_accepts() {
    let unit = read_repo_file("deploy/systemd/ferry.service");
    let exec = unit_directives(&unit)
        .into_iter()
        .find(|(_, k, _)| k == "ExecStart")
        .map(|(_, _, v)| v)
        .expect("ExecStart");
    let args: Vec<&str> = exec.split_whitespace().collect();
    assert_eq!(args[1], "run");
    assert_eq!(unknown_flags(args, &run_help()), Vec::<String>::new());
}

#[test]
fn container_file_builds_locked_and_runs_unprivileged() {
    let text = read_repo_file("deploy/container/Containerfile");
    let instructions: Vec<&str> = text
        .lines()
        .filter(|l| !l.trim_start().starts_with('#') && !l.trim().is_empty())
        .collect();
    let from: Vec<&str> = instructions
        .iter()
        .filter_map(|l| l.strip_prefix("FROM "))
        .collect();
    assert_eq!(
        from,
        vec![
            "docker.io/library/rust:1-bookworm AS build",
            "docker.io/library/debian:bookworm-slim"
        ]
    );
    assert!(text.contains("cargo build --release --locked -p ferry"));
    assert!(text.contains("--no-install-recommends ca-certificates"));
    assert!(text.contains("COPY --from=build /usr/local/bin/ferry /usr/local/bin/ferry"));
    let user = instructions
        .iter()
        .filter_map(|l| l.strip_prefix("USER "))
        .next_back()
        .expect("a USER instruction");
    let uid = user.split(':').next().unwrap_or("");
    assert!(
        uid.parse::<u32>().is_ok_and(|u| u != 0),
        "the image must run as a numeric non-root UID (Kubernetes runAsNonRoot checks it): {user}"
    );
    assert_eq!(
        instructions.last().copied(),
        Some("CMD [\"--help\"]"),
        "CMD last"
    );
    assert!(instructions.contains(&"ENTRYPOINT [\"ferry\"]"));
    // Deliberately none (the comment at the top says why): probes come from the orchestrator.
    assert!(!instructions.iter().any(|l| l.starts_with("HEALTHCHECK")));
    let ignore = read_repo_file("deploy/container/Containerfile.dockerignore");
    assert!(
        ignore.lines().any(|l| l.trim() == "target"),
        "target/ in the context"
    );
}

#[test]
fn kubernetes_sidecar_probes_shares_the_database_and_uses_real_flags() {
    let text = read_repo_file("deploy/kubernetes/sidecar.yaml");
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .collect();
    let after = |key: &str, want: &str| {
        lines
            .iter()
            .position(|l| *l == key)
            .is_some_and(|i| lines[i..].iter().take(4).any(|l| *l == want))
    };
    assert!(
        after("readinessProbe:", "path: /readyz"),
        "readiness on /readyz"
    );
    assert!(
        after("livenessProbe:", "path: /healthz"),
        "liveness on /healthz"
    );
    assert!(lines.contains(&"containerPort: 9731"));
    assert!(
        lines.contains(&"type: Recreate"),
        "never two pods on one database"
    );
    assert_eq!(
        lines.iter().filter(|l| **l == "mountPath: /data").count(),
        2,
        "the application and ferry both mount the database volume at /data"
    );
    for required in [
        "runAsNonRoot: true",
        "readOnlyRootFilesystem: true",
        "allowPrivilegeEscalation: false",
        "prometheus.io/scrape: \"true\"",
        "prometheus.io/port: \"9731\"",
        "secretKeyRef:",
    ] {
        assert!(lines.contains(&required), "missing {required}");
    }
    assert!(
        lines.iter().any(|l| l.starts_with("fsGroup: ")),
        "a pod fsGroup shared by both containers"
    );
    // The sidecar's args: the list items after `args:` (comments skipped), up to the next key.
    let start = lines.iter().position(|l| *l == "args:").expect("args:") + 1;
    let args: Vec<&str> = lines[start..]
        .iter()
        .map_while(|l| l.strip_prefix("- "))
        .collect();
    assert_eq!(
        args,
        vec![
            "run",
            "--source",
            "/data/app.db",
            "--state-dir",
            "/var/lib/ferry",
            "--admin-addr",
            "0.0.0.0:9731"
        ]
    );
    let help = run_help();
    assert_eq!(unknown_flags(args, &help), Vec::<String>::new());
    for env in lines
        .iter()
        .filter_map(|l| l.strip_prefix("- name: FERRY_"))
    {
        assert!(
            help.contains(&format!("[env: FERRY_{env}=")),
            "ferry run does not read FERRY_{env}"
        );
    }
    assert!(
        lines.contains(&"- name: FERRY_TARGET"),
        "target from the Secret"
    );
}

#[test]
fn readme_prometheus_configs_pass_promtool() {
    let readme = read_repo_file("deploy/README.md");
    let configs: Vec<&str> = readme
        .split("```yaml\n")
        .skip(1)
        .filter_map(|rest| rest.split_once("```").map(|(block, _)| block))
        .filter(|block| block.contains("scrape_configs:"))
        .collect();
    assert_eq!(configs.len(), 2, "a static and a Kubernetes scrape config");
    let dir = std::env::temp_dir().join(format!("ferry-prom-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // The configs load the rules by a path relative to prometheus.yml.
    std::fs::copy(
        repo_root().join("deploy/prometheus/ferry-alerts.yml"),
        dir.join("ferry-alerts.yml"),
    )
    .unwrap();
    let mut results = Vec::new();
    for (i, config) in configs.iter().enumerate() {
        // Debian's promtool is built without Kubernetes discovery and rejects the key; a static
        // target in its place still checks the job, its relabelling regexes and the rules.
        let config = config.replace(
            "kubernetes_sd_configs:\n      - role: endpoints",
            "static_configs:\n      - targets: [\"placeholder:9731\"]",
        );
        assert!(!config.contains("kubernetes_sd_configs"), "{config}");
        let path = dir.join(format!("prometheus-{i}.yml"));
        std::fs::write(&path, &config).unwrap();
        results.push((
            config,
            promtool(&["check", "config", path.to_str().unwrap()]),
        ));
    }
    std::fs::remove_dir_all(&dir).ok();
    for (config, out) in results {
        let Some(out) = out else { return };
        assert!(
            out.status.success(),
            "promtool check config:\n{}{}\n{config}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("1 rule files found"),
            "the config must load ferry-alerts.yml"
        );
    }
}
