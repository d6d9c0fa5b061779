//! `ferry ship`: replays a state directory's log into PostgreSQL, exactly once (the shipper
//! resumes from what `ferry.progress` says PostgreSQL has). Reads the log read-only, so it
//! can run beside a `ferry capture` writing the same state directory.

use crate::cli::{ShipArgs, TargetArgs, TargetModeArg};
use crate::logview::{LogHandle, LogRecordSource, SHIPPER_CONSUMER};
use anyhow::Context;
use ferry_core::Lsn;
use ferry_pg::{PgTarget, ShipOptions, Shipper, TargetMode};
use std::process::ExitCode;
use std::sync::Arc;

/// The PostgreSQL target from `--target`/`FERRY_TARGET`, else libpq's environment alone.
pub fn target(args: &TargetArgs) -> anyhow::Result<PgTarget> {
    let url = args.target.clone().unwrap_or_default();
    PgTarget::parse(&url).context("the PostgreSQL target")
}

pub fn ship_options(args: &TargetArgs, source_id: &str) -> ShipOptions {
    ShipOptions {
        schema: args.schema.clone(),
        table_prefix: args.table_prefix.clone(),
        mode: match args.mode {
            TargetModeArg::Create => TargetMode::Create,
            TargetModeArg::Existing => TargetMode::Existing,
        },
        source_id: source_id.to_string(),
        ..ShipOptions::default()
    }
}

pub fn run(args: ShipArgs) -> anyhow::Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(run_async(args))
}

async fn run_async(args: ShipArgs) -> anyhow::Result<ExitCode> {
    let log_dir = crate::cmd::log::log_dir(args.state_dir.clone(), args.source_id.as_deref())?;
    let ro = ferry_log::open_read_only(&log_dir)
        .with_context(|| format!("opening the log in {}", log_dir.display()))?;
    let source_id = ro.source_identity().to_string();
    let log = Arc::new(LogHandle::ReadOnly(ro));
    let target = target(&args.target)?;
    let mut shipper = Shipper::new(target, ship_options(&args.target, &source_id))
        .await
        .context("connecting to PostgreSQL")?;
    let limit = crate::logview::no_ship_limit();
    let source_dir = log_dir.parent().unwrap_or(&log_dir);
    if let Some(mark) = crate::cutover_mark::CutoverMark::read(source_dir)? {
        let durable = log.durable_lsn()?;
        tracing::warn!(source = %source_id, cutover_lsn = mark.cutover_lsn, at = %mark.at, "this source was cut over: nothing after its cutover record is shipped");
        if durable > mark.lsn() {
            eprintln!(
                "warning: source {source_id:?} was cut over at {} (LSN {}), but its log holds {} records after that: writes that reached SQLite after the cutover. They stay in the log (`ferry log inspect`) and are not shipped over what the application has written to PostgreSQL since.",
                mark.at,
                mark.cutover_lsn,
                durable.0 - mark.cutover_lsn
            );
        }
        limit.store(mark.cutover_lsn, std::sync::atomic::Ordering::SeqCst);
    }
    let mut source = LogRecordSource::with_limit(log.clone(), limit.clone());
    let bar = crate::load_bar::spawn(shipper.status_handle());
    let summary = if args.once {
        let end = log
            .durable_lsn()?
            .min(Lsn(limit.load(std::sync::atomic::Ordering::SeqCst)));
        tracing::info!(source = %source_id, end = %end, "shipping until caught up");
        shipper.run_until_caught_up(&mut source, end).await
    } else {
        let (tx, rx) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            crate::signals::wait_for_shutdown().await;
            let _ = tx.send(true);
        });
        shipper.run(&mut source, rx).await
    };
    bar.abort();
    let status = shipper.status();
    let summary = summary.with_context(|| format!("shipping source {source_id:?} (the log keeps every change; fix the cause and run ship again)"))?;
    log.set_consumer(SHIPPER_CONSUMER, summary.applied_lsn)?;
    println!(
        "shipped source {source_id:?} through LSN {}: {} rows loaded, {} upserted, {} deleted in {} batches",
        summary.applied_lsn,
        summary.stats.rows_loaded,
        summary.stats.rows_upserted,
        summary.stats.rows_deleted,
        summary.stats.batches
    );
    for n in status.notices {
        println!("note: {n}");
    }
    Ok(ExitCode::SUCCESS)
}
