//! `ferry capture`: tails a SQLite database into the durable log until SIGTERM/SIGINT
//! (finishing the batch in hand, which is durable when it returns), or with `--once`, takes
//! the initial snapshot (first run) and everything committed so far, then exits.

use crate::cli::CaptureArgs;
use crate::pipeline::{check_source_meta, open_log};
use anyhow::Context;
use ferry_core::SourceId;
use ferry_core::state_dir::{StateDir, sanitize_source_id, source_id_from_path};
use ferry_sqlite::LogSink;
use ferry_sqlite::{CaptureOptions, SqliteCapture};
use std::process::ExitCode;
use std::sync::Arc;

pub fn run(args: CaptureArgs) -> anyhow::Result<ExitCode> {
    let dir = StateDir::new(&args.state_dir);
    let id = match &args.source_id {
        Some(s) => SourceId(sanitize_source_id(s)),
        None => source_id_from_path(&args.source),
    };
    anyhow::ensure!(
        args.source.is_file(),
        "{} does not exist or is not a file",
        args.source.display()
    );
    check_source_meta(&dir, &id, "sqlite", &args.source)?;
    let log = open_log(&dir, &id)?;
    let opts = CaptureOptions {
        source_id: id.0.clone(),
        ..CaptureOptions::default()
    };
    let mut capture = SqliteCapture::open(
        &args.source,
        &dir.capture_dir(&id),
        Arc::new(LogSink(log.clone())),
        opts,
    )
    .with_context(|| format!("starting capture of {}", args.source.display()))?;
    let stop = crate::signals::stop_flag();
    // The archive, as `ferry run` keeps it: its own thread copies sealed segments and bases;
    // this one only writes base images (after the snapshot, when due).
    let archive = match &args.archive_dir {
        Some(d) => {
            let config = crate::config::ArchiveConfig {
                dir: d.clone(),
                base_interval: args.base_interval.clone(),
                retention: None,
                keep_bases: None,
                seal_after: None,
            };
            config.options()?;
            Some(
                crate::archiving::ArchiveWorker::spawn(
                    config,
                    id.as_str(),
                    &dir.log_dir(&id),
                    log.clone(),
                    &dir.capture_dir(&id),
                    crate::archiving::Reporting {
                        metrics: None,
                        status: None,
                    },
                )
                .context("starting the archiver")?,
            )
        }
        None => {
            crate::archiving::release_archive_consumer(&log, id.as_str());
            None
        }
    };
    let step_once = |capture: &mut SqliteCapture| -> anyhow::Result<ferry_sqlite::CaptureStep> {
        let step = capture
            .step(std::time::Duration::from_millis(200))
            .with_context(|| format!("capturing {}", args.source.display()))?;
        if let Some(a) = &archive {
            a.after_step(capture, step.snapshot_taken)?;
        }
        Ok(step)
    };
    // The first step takes the initial snapshot if the log has none; `--once` then captures
    // what is committed (a writer faster than capture makes that a moving target, so it
    // stops on a signal too).
    let step = step_once(&mut capture)?;
    if step.snapshot_taken {
        tracing::info!(source = %id, rows = step.snapshot_rows, "initial snapshot taken");
    }
    if args.once {
        let mut caught_up = step.caught_up;
        while !caught_up && !stop.load(std::sync::atomic::Ordering::SeqCst) {
            caught_up = step_once(&mut capture)?.caught_up;
        }
    } else if archive.is_some() {
        tracing::info!(source = %id, db = %args.source.display(), "capturing and archiving; stop with SIGTERM or Ctrl-C");
        while !stop.load(std::sync::atomic::Ordering::SeqCst) {
            if step_once(&mut capture)?.caught_up {
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
        }
    } else {
        tracing::info!(source = %id, db = %args.source.display(), "capturing; stop with SIGTERM or Ctrl-C");
        capture
            .run(&stop)
            .with_context(|| format!("capturing {}", args.source.display()))?;
    }
    if let Some(a) = archive {
        // The archive opens on the archiver's thread: a run as short as `--once` can end
        // before it did, with the base after the snapshot (or a scheduled one) still owed.
        if a.wait_open(std::time::Duration::from_secs(30)) {
            a.after_step(&mut capture, false)?;
        } else {
            tracing::warn!(source = %id, "the archive did not open within 30 s; the log keeps every change for the next run to archive");
        }
        // Seals the open segment and archives everything (the last changes included).
        a.finish(std::time::Duration::from_secs(60));
    }
    let s = capture.stats();
    println!(
        "source {id}: log at LSN {}; {} snapshot rows, {} transactions ({} inserts, {} updates, {} deletes), {} resyncs",
        log.durable_lsn(),
        s.snapshot_rows,
        s.transactions,
        s.inserts,
        s.updates,
        s.deletes,
        s.resyncs
    );
    Ok(ExitCode::SUCCESS)
}
