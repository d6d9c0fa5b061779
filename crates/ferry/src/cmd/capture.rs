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
    // The first step takes the initial snapshot if the log has none; `--once` then captures
    // what is committed (a writer faster than capture makes that a moving target, so it
    // stops on a signal too).
    let step = capture
        .step(std::time::Duration::from_millis(200))
        .with_context(|| format!("capturing {}", args.source.display()))?;
    if step.snapshot_taken {
        tracing::info!(source = %id, rows = step.snapshot_rows, "initial snapshot taken");
    }
    if args.once {
        let mut caught_up = step.caught_up;
        while !caught_up && !stop.load(std::sync::atomic::Ordering::SeqCst) {
            caught_up = capture
                .step(std::time::Duration::from_millis(200))
                .with_context(|| format!("capturing {}", args.source.display()))?
                .caught_up;
        }
    } else {
        tracing::info!(source = %id, db = %args.source.display(), "capturing; stop with SIGTERM or Ctrl-C");
        capture
            .run(&stop)
            .with_context(|| format!("capturing {}", args.source.display()))?;
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
