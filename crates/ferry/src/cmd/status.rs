//! `ferry status`: asks the running process (found through `run.json`) for `/status`; when
//! none runs, reports what the state directory says. Exit 2 when a source is in error or
//! nothing can be found.

use crate::cli::StatusArgs;
use crate::runfile::RunFile;
use crate::status::{SourceState, StatusReport};
use anyhow::Context;
use ferry_core::state_dir::StateDir;
use std::process::ExitCode;

pub fn run(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let dir = StateDir::new(args.state_dir.get()?);
    if !dir.root().is_dir() {
        anyhow::bail!("state directory {} does not exist", dir.root().display());
    }
    let report = match RunFile::read_live(&dir.run_json()) {
        Some(rf) => {
            let (code, _, body) = crate::admin::http_get(&rf.admin_addr, "/status", None)
                .with_context(|| {
                    format!(
                        "asking the running ferry (pid {}) at {}",
                        rf.pid, rf.admin_addr
                    )
                })?;
            anyhow::ensure!(
                code == 200,
                "the running ferry answered /status with HTTP {code}"
            );
            let report: StatusReport = serde_json::from_str(&body).context("decoding /status")?;
            Some(report)
        }
        None => None,
    };
    let report = match report {
        Some(r) => r,
        None => offline_report(&dir)?,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_table(&report);
    }
    Ok(if report.any_error() {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    })
}

/// What the state directory alone says: each source's log position and its consumers'.
fn offline_report(dir: &StateDir) -> anyhow::Result<StatusReport> {
    let mut sources = Vec::new();
    let entries = std::fs::read_dir(dir.sources_dir()).with_context(|| {
        format!(
            "{} holds no sources (no `sources/` directory)",
            dir.root().display()
        )
    })?;
    for e in entries {
        let e = e?;
        let id = ferry_core::SourceId(e.file_name().to_string_lossy().into_owned());
        let meta: serde_json::Value = std::fs::read(dir.source_meta(&id))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or(serde_json::Value::Null);
        let mut s = crate::status::SourceStatus::new(
            id.as_str(),
            meta["kind"].as_str().unwrap_or("sqlite"),
            meta["path"].as_str().unwrap_or("?"),
        );
        s.state = SourceState::Stopped;
        match crate::logview::log_positions(&dir.log_dir(&id)) {
            Ok((log_id, durable, shipped)) => {
                s.log_id = Some(log_id);
                s.captured_lsn = durable;
                s.shipped_lsn = shipped;
                s.lag_records = durable.saturating_sub(shipped);
            }
            Err(e) => {
                s.state = SourceState::Error;
                s.last_error = Some(format!("{e:#}"));
            }
        }
        // A cut-over source: its SQLite history ends at the cutover record, so the lag ends
        // there too; anything captured after it is a write behind PostgreSQL's back.
        match crate::cutover_mark::CutoverMark::read(&dir.source_dir(&id)) {
            Ok(Some(mark)) => {
                if s.state != SourceState::Error {
                    s.state = SourceState::CutOver;
                }
                s.cutover_at = Some(mark.at.clone());
                s.lag_records = mark.last_applied.saturating_sub(s.shipped_lsn);
                if s.captured_lsn > mark.cutover_lsn {
                    s.writes_after_cutover = s.captured_lsn - mark.cutover_lsn;
                    s.last_error = Some(format!(
                        "the log holds {} records after the cutover (LSN {}): something wrote to SQLite after the cutover",
                        s.captured_lsn - mark.cutover_lsn,
                        mark.cutover_lsn
                    ));
                }
            }
            Ok(None) => {}
            Err(e) => {
                s.state = SourceState::Error;
                s.last_error = Some(format!("{e:#}"));
            }
        }
        sources.push(s);
    }
    sources.sort_by(|a, b| a.source.cmp(&b.source));
    Ok(StatusReport {
        pid: 0,
        version: env!("CARGO_PKG_VERSION").into(),
        started_at: String::new(),
        sources,
    })
}

fn print_table(r: &StatusReport) {
    if r.pid != 0 {
        println!(
            "ferry {} running as pid {} since {}",
            r.version, r.pid, r.started_at
        );
    } else {
        println!("no ferry process is running; positions from the state directory");
    }
    println!(
        "{:<20} {:<8} {:<13} {:>12} {:>12} {:>10} {:>9}  last error",
        "source", "kind", "state", "captured", "shipped", "lag", "lag s"
    );
    for s in &r.sources {
        println!(
            "{:<20} {:<8} {:<13} {:>12} {:>12} {:>10} {:>9.2}  {}",
            s.source,
            s.kind,
            format!("{:?}", s.state).to_lowercase(),
            s.captured_lsn,
            s.shipped_lsn,
            s.lag_records,
            s.lag_seconds,
            s.last_error.as_deref().unwrap_or("-")
        );
    }
}
