//! `ferry restore`: rebuild a source as of one point from its archive, into a new SQLite
//! file or into PostgreSQL. The planning, the refusals and both rebuilds live in
//! `ferry-archive`; this module parses the target point and prints what happened.

use crate::cli::RestoreArgs;
use anyhow::{Context, bail};
use ferry_archive::{
    Archive, PgRestoreOptions, RestoreTarget, parse_time, restore_to_postgres, restore_to_sqlite,
};
use ferry_core::Lsn;
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
    if let Some(output) = &a.output {
        let s = restore_to_sqlite(&plan, output)?;
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
        return Ok(ExitCode::SUCCESS);
    }
    let url = a.target.clone().unwrap_or_default();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let mut opts = PgRestoreOptions::new(url);
    opts.schema = a.schema.clone();
    let s = rt
        .block_on(restore_to_postgres(&plan, &opts))
        .context("restoring into PostgreSQL")?;
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
    Ok(ExitCode::SUCCESS)
}
