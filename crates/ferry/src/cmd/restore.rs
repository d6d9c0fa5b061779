//! `ferry restore`: rebuild a source as of one point from its archive, into a new SQLite
//! file or into PostgreSQL. The planning, the refusals and both rebuilds live in
//! `ferry-archive`; this module parses the target point and prints what happened.

use crate::cli::RestoreArgs;
use anyhow::{Context, bail};
use ferry_archive::{
    Archive, PgRestoreOptions, RestoreTarget, parse_time, restore_to_postgres, restore_to_sqlite,
};
use ferry_core::Lsn;
use serde_json::json;
use std::process::ExitCode;

fn point(a: &RestoreArgs) -> anyhow::Result<RestoreTarget> {
    Ok(match (a.to_lsn, &a.to_time, a.latest) {
        (Some(l), None, false) => RestoreTarget::Lsn(Lsn(l)),
        (None, Some(t), false) => RestoreTarget::Time(parse_time(t)?),
        (None, None, true) => RestoreTarget::Latest,
        _ => bail!(
            "say where to restore to: exactly one of --to-lsn N, --to-time <RFC 3339>, --latest"
        ),
    })
}

pub fn run(a: RestoreArgs) -> anyhow::Result<ExitCode> {
    let target = point(&a)?;
    if a.output.is_some() == a.target.is_some() {
        bail!(
            "say what to rebuild: exactly one of --output <file.db> (a SQLite file) or --target <postgres-url> (PostgreSQL)"
        );
    }
    let archive = Archive::open(&a.archive_dir, a.source_id.as_deref())?;
    let plan = archive.plan(target)?;
    let source = plan.source_id.clone();
    for p in &plan.missing_bases {
        eprintln!(
            "warning: base {} is listed in the manifest but missing; restoring from the base at LSN {}",
            p.display(),
            plan.base.lsn
        );
    }
    let report = if let Some(output) = &a.output {
        let s = restore_to_sqlite(&plan, output)?;
        if !a.json {
            println!(
                "restored source {source} to LSN {} into {}: base at LSN {} ({} bytes), {} log records ({} row changes) replayed, integrity_check ok, in {:.2} s",
                s.target,
                s.output.display(),
                s.base_lsn,
                s.base_bytes,
                s.records_replayed,
                s.row_changes,
                s.duration.as_secs_f64()
            );
        }
        Report {
            kind: "sqlite",
            json: json!({
                "source_id": source,
                "kind": "sqlite",
                "output": s.output.display().to_string(),
                "target_lsn": s.target.0,
                "base_lsn": s.base_lsn.0,
                "base_bytes": s.base_bytes,
                "log_records": s.records_replayed,
                "row_changes": s.row_changes,
                "duration_seconds": s.duration.as_secs_f64(),
            }),
            duration: s.duration.as_secs_f64(),
            bytes: s.base_bytes,
            records: s.records_replayed,
        }
    } else {
        let url = a.target.clone().unwrap_or_default();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?;
        let mut opts = PgRestoreOptions::new(url);
        opts.schema = a.schema.clone();
        let s = rt
            .block_on(restore_to_postgres(&plan, &opts))
            .context("restoring into PostgreSQL")?;
        if !a.json {
            println!(
                "restored source {source} to LSN {} into PostgreSQL (schema {}): base at LSN {} ({} rows loaded), {} log records applied, in {:.2} s; ferry.progress[{}] = LSN {} of log {}",
                s.target,
                a.schema,
                s.base_lsn,
                s.snapshot_rows,
                s.log_records,
                s.duration.as_secs_f64(),
                s.progress_source_id,
                s.progress_lsn,
                s.progress_log_id
            );
        }
        Report {
            kind: "postgres",
            json: json!({
                "source_id": source,
                "kind": "postgres",
                "schema": a.schema,
                "target_lsn": s.target.0,
                "base_lsn": s.base_lsn.0,
                "base_bytes": plan.base.bytes,
                "snapshot_rows": s.snapshot_rows,
                "log_records": s.log_records,
                "duration_seconds": s.duration.as_secs_f64(),
                "progress": {"source_id": s.progress_source_id, "lsn": s.progress_lsn.0, "log_id": s.progress_log_id},
            }),
            duration: s.duration.as_secs_f64(),
            bytes: plan.base.bytes,
            records: s.log_records,
        }
    };
    if a.json {
        println!("{}", serde_json::to_string(&report.json)?);
    }
    if let Some(path) = &a.metrics_file {
        write_metrics(path, &source, &report)
            .with_context(|| format!("writing the restore metrics to {}", path.display()))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// What one restore did, for `--json` and `--metrics-file`.
struct Report {
    kind: &'static str,
    json: serde_json::Value,
    duration: f64,
    bytes: u64,
    records: u64,
}

/// The restore's metrics in the Prometheus text format (proto/metrics.md), replacing `path`
/// atomically so a collector never reads half a file.
fn write_metrics(path: &std::path::Path, source: &str, r: &Report) -> anyhow::Result<()> {
    let labels = format!(
        "source=\"{}\",kind=\"{}\"",
        source.replace(['"', '\\'], "_"),
        r.kind
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    let text = format!(
        "# HELP ferry_restore_duration_seconds Wall time of the last ferry restore.\n\
         # TYPE ferry_restore_duration_seconds gauge\n\
         ferry_restore_duration_seconds{{{labels}}} {}\n\
         # HELP ferry_restore_base_bytes Size of the base the last ferry restore started from.\n\
         # TYPE ferry_restore_base_bytes gauge\n\
         ferry_restore_base_bytes{{{labels}}} {}\n\
         # HELP ferry_restore_log_records Archived log records the last ferry restore replayed.\n\
         # TYPE ferry_restore_log_records gauge\n\
         ferry_restore_log_records{{{labels}}} {}\n\
         # HELP ferry_restore_completed_timestamp_seconds When the last ferry restore completed.\n\
         # TYPE ferry_restore_completed_timestamp_seconds gauge\n\
         ferry_restore_completed_timestamp_seconds{{{labels}}} {now:.3}\n",
        r.duration, r.bytes, r.records
    );
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}
