//! `ferry log inspect` and `ferry log verify`.

use crate::cli::{LogInspectArgs, LogVerifyArgs};
use anyhow::Context;
use ferry_core::json::Catalog;
use ferry_core::state_dir::StateDir;
use ferry_core::{Lsn, Record, SourceId};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

/// The log directory of the chosen source (or the only one).
pub fn log_dir(state_dir: PathBuf, source: Option<&str>) -> anyhow::Result<PathBuf> {
    let dir = StateDir::new(state_dir);
    if let Some(s) = source {
        let p = dir.log_dir(&SourceId(s.to_string()));
        anyhow::ensure!(
            p.is_dir(),
            "source {s:?} has no log in {}",
            dir.root().display()
        );
        return Ok(p);
    }
    let mut ids: Vec<String> = std::fs::read_dir(dir.sources_dir())
        .with_context(|| {
            format!(
                "{} is not a ferry state directory (no `sources/`)",
                dir.root().display()
            )
        })?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    ids.sort();
    match ids.as_slice() {
        [one] => Ok(dir.log_dir(&SourceId(one.clone()))),
        [] => anyhow::bail!("{} holds no sources yet", dir.root().display()),
        many => anyhow::bail!(
            "{} holds several sources ({}); choose one with --source-id",
            dir.root().display(),
            many.join(", ")
        ),
    }
}

pub fn inspect(args: LogInspectArgs) -> anyhow::Result<ExitCode> {
    let dir = log_dir(args.state_dir.get()?, args.source_id.as_deref())?;
    let log = ferry_log::open_read_only(&dir)
        .with_context(|| format!("opening the log in {}", dir.display()))?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut catalog = Catalog::new();
    let from = Lsn(args.from.max(1));
    // Column names come from schema records; read from the start to follow them even when
    // printing begins later.
    let first = log.first_lsn()?;
    let start = if first.0 == 0 { Lsn(1) } else { first };
    if !args.json {
        writeln!(
            out,
            "log {} of source {:?}",
            log.log_id(),
            log.source_identity()
        )?;
        writeln!(
            out,
            "{:>10}  {:<15} {:<28} {:<28} changes",
            "lsn", "type", "position", "captured_at"
        )?;
    }
    let mut printed = 0u64;
    for item in log.reader(start)? {
        let (lsn, payload) = item?;
        let record = crate::logview::decode(lsn, &payload)?;
        catalog.observe(&record);
        if lsn < from {
            continue;
        }
        if args.limit.is_some_and(|l| printed >= l) {
            break;
        }
        printed += 1;
        if args.json {
            serde_json::to_writer(&mut out, &catalog.record_to_json(lsn, &record))?;
            writeln!(out)?;
        } else {
            let j = catalog.record_to_json(lsn, &record);
            let changes = match &record {
                Record::Transaction(t) => format!(
                    "{} ({})",
                    t.changes.len(),
                    summarize_ops(t.changes.iter().map(|c| c.op.as_str()))
                ),
                Record::SnapshotRows(r) => format!("{} rows of {}", r.rows.len(), r.table),
                Record::SnapshotBegin(s) => format!("{} tables", s.tables.len()),
                _ => String::new(),
            };
            writeln!(
                out,
                "{:>10}  {:<15} {:<28} {:<28} {}",
                lsn.0,
                record.type_name(),
                j["position"].as_str().unwrap_or("-"),
                j["captured_at"].as_str().unwrap_or("-"),
                changes
            )?;
        }
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

fn summarize_ops<'a>(ops: impl Iterator<Item = &'a str>) -> String {
    let (mut i, mut u, mut d) = (0, 0, 0);
    for op in ops {
        match op {
            "insert" => i += 1,
            "update" => u += 1,
            _ => d += 1,
        }
    }
    format!("+{i} ~{u} -{d}")
}

pub fn verify(args: LogVerifyArgs) -> anyhow::Result<ExitCode> {
    let dir = log_dir(args.state_dir.get()?, args.source_id.as_deref())?;
    let log = ferry_log::open_read_only(&dir)
        .with_context(|| format!("opening the log in {}", dir.display()))?;
    let report = log
        .verify()
        .with_context(|| format!("verifying the log in {}", dir.display()))?;
    // Every payload must also decode as a record this ferry understands.
    let mut records = 0u64;
    for item in log.reader(log.first_lsn()?.max(Lsn(1)))? {
        let (lsn, payload) = item?;
        crate::logview::decode(lsn, &payload)?;
        records += 1;
    }
    println!(
        "log {} of source {:?}: ok — {} segments, {} records (LSN {}..={}), {} bytes; every CRC checks and {records} records decode",
        log.log_id(),
        log.source_identity(),
        report.segments,
        report.records,
        report.first_lsn,
        report.last_lsn,
        report.bytes
    );
    if let Some(t) = &report.torn_tail {
        println!(
            "note: a torn tail ({t:?}) will be truncated by the next writer; no acknowledged record is in it"
        );
    }
    Ok(ExitCode::SUCCESS)
}
