//! `ferry run`: capture and shipping in one process, for one or many sources.
//!
//! Per source: a capture thread (blocking SQLite and file I/O) appends to the source's log;
//! a shipper task applies the log to PostgreSQL exactly once; a monitor copies both stages'
//! counters into `/status` and the metrics. Around them: the read-only admin endpoint, the
//! private control socket (cutover), `run.json`, and a clean shutdown on SIGTERM/SIGINT
//! (capture finishes the batch in hand, the shipper its transaction; exit 0).
//!
//! Errors do not end the process: a stage that fails reports the error (`/status`,
//! `ferry_source_up 0`, a log line) and retries with backoff, while the log keeps every
//! change. Only what makes running impossible (state directory locked, bad configuration)
//! exits with status 2.

use crate::cli::{RunArgs, TargetModeArg};
use crate::config::{Config, DEFAULT_ADMIN_ADDR, SourceConfig};
use crate::logview::{LogHandle, LogRecordSource, SHIPPER_CONSUMER};
use crate::metrics::{Metrics, OpLabel, SourceLabel, SourceOp};
use crate::pipeline::{check_source_meta, open_log};
use crate::status::{RunStatus, SourceState, SourceStatus};
use anyhow::Context;
use ferry_core::state_dir::StateDir;
use ferry_core::{Lsn, SourceId};
use ferry_pg::{PgTarget, ShipEvent, ShipOptions, Shipper, TargetMode};
use ferry_sqlite::LogSink;
use ferry_sqlite::{CaptureOptions, CaptureStats, SqliteCapture};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What one source needs at run time.
pub struct SourceRuntime {
    pub id: String,
    pub path: PathBuf,
    pub log: Arc<ferry_log::Log>,
    pub capture_stats: Arc<Mutex<CaptureStats>>,
    /// Requests the capture thread serves between steps: drain (cutover) and backup now.
    pub capture_tx: std::sync::mpsc::Sender<CaptureRequest>,
    pub ship_status: Arc<Mutex<Option<Arc<Mutex<ferry_pg::ShipStatus>>>>>,
    pub ship_options: ShipOptions,
    /// LSN of the source's `Cutover` record once it is cut over (this run or an earlier one).
    pub cutover_lsn: Mutex<Option<Lsn>>,
    /// The shipper's "nothing after this LSN" limit (the cutover record; `u64::MAX`: none).
    pub ship_limit: Arc<std::sync::atomic::AtomicU64>,
}

/// What other parts of `ferry run` ask of a source's capture thread.
pub enum CaptureRequest {
    /// Read everything committed now; answer with the durable LSN.
    Drain(std::sync::mpsc::Sender<Result<Lsn, String>>),
    /// Take a base backup into the archive now; answer with what was archived.
    BackupNow(std::sync::mpsc::Sender<Result<serde_json::Value, String>>),
    /// A file-notification hint: the database may have changed; poll now.
    Changed,
}

pub struct RunContext {
    pub state_dir: StateDir,
    pub target: PgTarget,
    pub sources: Vec<Arc<SourceRuntime>>,
    pub status: Arc<RunStatus>,
    pub metrics: Arc<Metrics>,
    /// Fences taken by a completed cutover: held until the process ends.
    pub held_fences: Mutex<Vec<crate::fence::Fence>>,
}

fn merge_config(args: &RunArgs) -> anyhow::Result<Config> {
    let mut cfg = match &args.config {
        Some(p) => Config::load(p)?,
        None => Config {
            state_dir: None,
            admin_addr: None,
            target: Default::default(),
            sources: vec![],
            archive: None,
        },
    };
    if let Some(s) = &args.source {
        cfg.sources = vec![SourceConfig {
            name: None,
            path: s.clone(),
            kind: "sqlite".into(),
            schema: args.target.schema.clone(),
            table_prefix: args.target.table_prefix.clone(),
            mode: match args.target.mode {
                TargetModeArg::Create => "create".into(),
                TargetModeArg::Existing => "existing".into(),
            },
            include: vec![],
            exclude: vec![],
        }];
    }
    if args.source.is_none() {
        // With --config, the per-source flags (and their FERRY_ variables) override the one
        // source's settings; with several sources they would be ambiguous.
        let t = &args.target;
        let overridden = t.schema != "public"
            || !t.table_prefix.is_empty()
            || !matches!(t.mode, TargetModeArg::Create);
        if overridden {
            anyhow::ensure!(
                cfg.sources.len() == 1,
                "--schema, --table-prefix and --mode (FERRY_SCHEMA, FERRY_TABLE_PREFIX, FERRY_MODE) set one source's target, but the configuration has {} sources: set them in each [[source]]",
                cfg.sources.len()
            );
            let src = &mut cfg.sources[0];
            if t.schema != "public" {
                src.schema = t.schema.clone();
            }
            if !t.table_prefix.is_empty() {
                src.table_prefix = t.table_prefix.clone();
            }
            if let TargetModeArg::Existing = t.mode {
                src.mode = "existing".into();
            }
        }
    }
    if let Some(p) = &args.password_file {
        cfg.target.password_file = Some(p.clone());
    }
    if let Some(d) = &args.state_dir {
        cfg.state_dir = Some(d.clone());
    }
    if let Some(a) = &args.admin_addr {
        cfg.admin_addr = Some(a.clone());
    }
    if let Some(t) = &args.target.target {
        cfg.target.url = Some(t.clone());
    }
    if let Some(d) = &args.archive_dir {
        let a = cfg
            .archive
            .get_or_insert_with(|| crate::config::ArchiveConfig {
                dir: d.clone(),
                base_interval: None,
                retention: None,
                keep_bases: None,
                seal_after: None,
            });
        a.dir = d.clone();
        if let Some(b) = &args.base_interval {
            a.base_interval = Some(b.clone());
        }
    }
    anyhow::ensure!(
        !cfg.sources.is_empty(),
        "no source: pass --source <db> or --config with [[source]] entries"
    );
    anyhow::ensure!(
        cfg.state_dir.is_some(),
        "no state directory: pass --state-dir or set state_dir in the config"
    );
    cfg.validate()?;
    Ok(cfg)
}

fn target_of(cfg: &Config) -> anyhow::Result<PgTarget> {
    let mut url = cfg.target.url.clone().unwrap_or_default();
    if let Some(pf) = &cfg.target.password_file {
        let pf = pf.to_string_lossy();
        if url.contains("://") {
            url.push(if url.contains('?') { '&' } else { '?' });
            url.push_str(&format!("password_file={}", percent_encode(&pf)));
        } else {
            // libpq's key=value form: single quotes, with \ and ' escaped.
            let quoted = pf.replace('\\', "\\\\").replace('\'', "\\'");
            url.push_str(&format!(" password_file='{quoted}'"));
        }
    }
    PgTarget::parse(&url).context("the PostgreSQL target")
}

/// Percent-encodes everything but RFC 3986's unreserved characters and `/`.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

pub fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let cfg = merge_config(&args)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(run_async(cfg))
}

async fn run_async(cfg: Config) -> anyhow::Result<ExitCode> {
    let dir = StateDir::new(cfg.state_dir.clone().unwrap_or_default());
    std::fs::create_dir_all(dir.root())
        .with_context(|| format!("creating {}", dir.root().display()))?;
    let lock = std::fs::File::create(dir.run_lock())?;
    lock.try_lock().map_err(|_| {
        anyhow::anyhow!(
            "another ferry is running with state directory {}: stop it first",
            dir.root().display()
        )
    })?;
    let target = target_of(&cfg)?;
    let metrics = Arc::new(Metrics::new());
    let status = Arc::new(RunStatus::new());
    let stop = Arc::new(AtomicBool::new(false));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);

    let mut sources = Vec::new();
    let mut refences = Vec::new();
    let mut capture_threads = Vec::new();
    let mut ship_tasks = Vec::new();
    let mut shipped_only = Vec::new();
    for (i, sc) in cfg.sources.iter().enumerate() {
        if sc.kind == "sled" {
            let src = shipped_only_source(sc, &status, &metrics).with_context(|| {
                format!("source[{i}] (sled, state directory {})", sc.path.display())
            })?;
            ship_tasks.push(tokio::spawn(ship_loop(
                target.clone(),
                src.ship_input(),
                status.clone(),
                metrics.clone(),
                stop_rx.clone(),
            )));
            shipped_only.push(src);
            continue;
        }
        let id = SourceId(cfg.source_name(i));
        check_source_meta(&dir, &id, &sc.kind, &sc.path)?;
        let log = open_log(&dir, &id)?;
        status.insert(SourceStatus::new(
            id.as_str(),
            &sc.kind,
            &sc.path.to_string_lossy(),
        ));
        status.update(id.as_str(), |s| s.log_id = Some(log.log_id().to_string()));
        metrics.register_source(id.as_str(), cfg.archive.is_some());
        {
            // Every group-commit fdatasync as it happens, on the writer's thread (the
            // histogram is shared, so no family lookup per sync).
            let fsync = metrics
                .log_fsync_duration
                .get_or_create(&SourceLabel {
                    source: id.0.clone(),
                })
                .clone();
            log.set_sync_observer(move |took| fsync.observe(took.as_secs_f64()));
        }
        let mark = crate::cutover_mark::CutoverMark::read(&dir.source_dir(&id))?;
        let ship_limit = crate::logview::no_ship_limit();
        if let Some(m) = &mark {
            ship_limit.store(m.cutover_lsn, Ordering::SeqCst);
            tracing::warn!(source = %id, cutover_lsn = m.cutover_lsn, at = %m.at, "this source was cut over to PostgreSQL: SQLite is fenced again, and anything it received since is captured and reported, never shipped");
            status.update(id.as_str(), |s| {
                s.state = SourceState::CutOver;
                s.cutover_at = Some(m.at.clone());
            });
            metrics
                .cutover_state
                .get_or_create(&SourceLabel {
                    source: id.0.clone(),
                })
                .set(2);
        }
        let (capture_tx, capture_rx) = std::sync::mpsc::channel();
        let ship_options = ship_options_of(sc, &id.0);
        let src = Arc::new(SourceRuntime {
            id: id.0.clone(),
            path: sc.path.clone(),
            log: log.clone(),
            capture_stats: Default::default(),
            capture_tx,
            ship_status: Default::default(),
            ship_options,
            cutover_lsn: Mutex::new(mark.as_ref().map(|m| m.lsn())),
            ship_limit,
        });
        if mark.is_some() {
            // SQLite stays fenced while ferry runs after a cutover, as it was before the restart.
            match crate::fence::Fence::acquire(&sc.path, Duration::from_secs(5)) {
                Ok(f) => refences.push(f),
                Err(e) => {
                    tracing::error!(source = %id, error = %e, "could not fence SQLite again after the earlier cutover; writes to it will be reported")
                }
            }
        }
        capture_threads.push(spawn_capture(
            &dir,
            src.clone(),
            status.clone(),
            metrics.clone(),
            stop.clone(),
            capture_rx,
            cfg.archive.clone(),
        ));
        ship_tasks.push(tokio::spawn(ship_loop(
            target.clone(),
            ShipInput {
                id: src.id.clone(),
                log: Arc::new(LogHandle::Writer(src.log.clone())),
                ship_status: src.ship_status.clone(),
                options: src.ship_options.clone(),
                limit: src.ship_limit.clone(),
            },
            status.clone(),
            metrics.clone(),
            stop_rx.clone(),
        )));
        sources.push(src);
    }
    let ctx = Arc::new(RunContext {
        state_dir: dir.clone(),
        target,
        sources,
        status: status.clone(),
        metrics: metrics.clone(),
        held_fences: Mutex::new(refences),
    });
    // The monitor reads the log (lag age, segments, writes after cutover): blocking I/O, so
    // it gets its own thread rather than a runtime worker the shipper needs.
    let monitor = {
        let (ctx, stop) = (ctx.clone(), stop.clone());
        std::thread::Builder::new()
            .name("monitor".into())
            .spawn(move || monitor_loop(ctx, shipped_only, stop))
            .context("starting the monitor thread")?
    };
    let admin_addr = cfg
        .admin_addr
        .clone()
        .unwrap_or_else(|| DEFAULT_ADMIN_ADDR.into());
    let bound = crate::admin::serve(
        &admin_addr,
        crate::admin::AdminState {
            status: status.clone(),
            metrics: metrics.clone(),
        },
    )
    .await?;
    let listener = crate::control::bind(&dir.control_socket())?;
    let control = tokio::spawn(crate::cutover::serve_control(listener, ctx.clone()));
    let rf = crate::runfile::RunFile {
        pid: std::process::id(),
        admin_addr: bound.to_string(),
        control_socket: dir.control_socket().to_string_lossy().into_owned(),
        started_at: status.report().started_at,
        version: env!("CARGO_PKG_VERSION").into(),
        sources: ctx.sources.iter().map(|s| s.id.clone()).collect(),
    };
    rf.write(&dir.run_json())?;
    tracing::info!(admin = %bound, state_dir = %dir.root().display(), sources = ?rf.sources, "ferry run started");

    crate::signals::wait_for_shutdown().await;
    tracing::info!("stopping: finishing the batches in hand");
    stop.store(true, Ordering::SeqCst);
    let _ = stop_tx.send(true);
    for t in ship_tasks {
        let _ = tokio::time::timeout(Duration::from_secs(30), t).await;
    }
    for t in capture_threads {
        let _ = tokio::task::spawn_blocking(move || t.join()).await;
    }
    let _ = monitor.join();
    control.abort();
    // Remove run.json and the socket only while they are still ours: a process that stops
    // slowly must not delete the files of its successor.
    let ours = std::fs::read(dir.run_json())
        .ok()
        .and_then(|b| serde_json::from_slice::<crate::runfile::RunFile>(&b).ok())
        .is_some_and(|r| r.pid == std::process::id());
    if ours {
        let _ = std::fs::remove_file(dir.run_json());
        let _ = std::fs::remove_file(dir.control_socket());
    }
    for s in &ctx.sources {
        let _ = s.log.seal();
    }
    drop(lock);
    Ok(ExitCode::SUCCESS)
}

fn spawn_capture(
    dir: &StateDir,
    src: Arc<SourceRuntime>,
    status: Arc<RunStatus>,
    metrics: Arc<Metrics>,
    stop: Arc<AtomicBool>,
    requests: std::sync::mpsc::Receiver<CaptureRequest>,
    archive: Option<crate::config::ArchiveConfig>,
) -> std::thread::JoinHandle<()> {
    let work_dir = dir.capture_dir(&SourceId(src.id.clone()));
    let log_dir = dir.log_dir(&SourceId(src.id.clone()));
    std::thread::Builder::new()
        .name(format!("capture-{}", src.id))
        .spawn(move || {
            if archive.is_none() {
                crate::archiving::release_archive_consumer(&src.log, &src.id);
            }
            // The archiver thread outlives capture's restarts (and its failures stop neither).
            let worker = archive.and_then(|a| {
                let reporting = crate::archiving::Reporting {
                    metrics: Some(metrics.clone()),
                    status: Some(status.clone()),
                };
                crate::archiving::ArchiveWorker::spawn(a, &src.id, &log_dir, src.log.clone(), &work_dir, reporting)
                    .inspect_err(|e| tracing::error!(source = %src.id, error = %e, "could not start archiving; capture goes on without it"))
                    .ok()
            });
            capture_with_retries(&src, &status, &metrics, &stop, &requests, &work_dir, worker.as_ref());
            if let Some(w) = worker {
                w.finish(Duration::from_secs(60));
            }
        })
        .unwrap_or_else(|e| panic!("spawning a capture thread: {e}"))
}

fn capture_with_retries(
    src: &Arc<SourceRuntime>,
    status: &Arc<RunStatus>,
    metrics: &Arc<Metrics>,
    stop: &Arc<AtomicBool>,
    requests: &std::sync::mpsc::Receiver<CaptureRequest>,
    work_dir: &std::path::Path,
    archive: Option<&crate::archiving::ArchiveWorker>,
) {
    let mut backoff = Duration::from_millis(500);
    while !stop.load(Ordering::SeqCst) {
        // A capture re-opened after an error counts from 0: what the ones before it counted
        // is carried, so the published counters never go back.
        let carried = src
            .capture_stats
            .lock()
            .map(|s| s.clone())
            .unwrap_or_default();
        let opts = CaptureOptions {
            source_id: src.id.clone(),
            poll_interval: Duration::from_millis(50),
            ..CaptureOptions::default()
        };
        let result = SqliteCapture::open(
            &src.path,
            work_dir,
            Arc::new(LogSink(src.log.clone())),
            opts,
        )
        .map_err(anyhow::Error::from)
        .and_then(|mut cap| {
            let hints = src.capture_tx.clone();
            cap.on_change_hint(Box::new(move || {
                let _ = hints.send(CaptureRequest::Changed);
            }));
            let mut ctx = CaptureContext {
                carried,
                src,
                status,
                metrics,
                archive,
            };
            let ended = capture_loop(&mut cap, &mut ctx, stop, requests);
            // What the failing step counted before it failed.
            ctx.publish_stats(&cap);
            ended
        });
        match result {
            Ok(()) => return,
            Err(e) => {
                let msg = format!("capture of {}: {e:#}", src.path.display());
                tracing::error!(source = %src.id, error = %msg, "capture failed; retrying");
                status.update(&src.id, |s| {
                    s.state = SourceState::Error;
                    s.last_error = Some(msg.clone());
                });
                let kind = if msg.contains("I/O") || msg.contains("open") {
                    "io"
                } else {
                    "format"
                };
                metrics
                    .source_errors
                    .get_or_create(&crate::metrics::SourceError {
                        source: src.id.clone(),
                        stage: "capture".into(),
                        kind: kind.into(),
                    })
                    .inc();
                let deadline = Instant::now() + backoff;
                while Instant::now() < deadline && !stop.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(50));
                }
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    }
}

/// What the capture thread works with besides the capture itself.
struct CaptureContext<'a> {
    /// Counters of this run's earlier captures of the source (see [`carried_over`]).
    carried: CaptureStats,
    src: &'a SourceRuntime,
    status: &'a RunStatus,
    metrics: &'a Metrics,
    /// The source's archiver thread (see `crate::archiving`), when an archive is configured.
    archive: Option<&'a crate::archiving::ArchiveWorker>,
}

impl CaptureContext<'_> {
    /// Publishes the capture's statistics, counted since `ferry run` started.
    fn publish_stats(&self, cap: &SqliteCapture) {
        if let Ok(mut s) = self.src.capture_stats.lock() {
            *s = carried_over(&self.carried, &cap.stats());
        }
    }
}

fn capture_loop(
    cap: &mut SqliteCapture,
    ctx: &mut CaptureContext<'_>,
    stop: &AtomicBool,
    requests: &std::sync::mpsc::Receiver<CaptureRequest>,
) -> anyhow::Result<()> {
    let (src, status) = (ctx.src, ctx.status);
    let mut cleared_error = false;
    loop {
        // Bounded work per step: a writer faster than capture must not keep this thread
        // from stopping, draining for a cutover or taking a base.
        let step_started = ferry_core::now_micros();
        let step = cap.step(Duration::from_millis(200))?;
        ctx.publish_stats(cap);
        if step.caught_up {
            // The step's last poll, later than its start, found nothing new; what it read is
            // durable now. So everything committed before `step_started` is in the log.
            let durable = src.log.durable_lsn().0;
            status.update(&src.id, |s| {
                s.captured_lsn = s.captured_lsn.max(durable);
                s.source_read_at = Some(ferry_core::json::micros_to_rfc3339(step_started));
            });
        }
        if !cleared_error {
            // A successful pass clears an earlier capture error.
            status.update(&src.id, |s| {
                if s.state == SourceState::Error
                    && s.last_error
                        .as_deref()
                        .is_some_and(|e| e.starts_with("capture"))
                {
                    s.state = SourceState::Starting;
                    s.last_error = None;
                }
            });
            cleared_error = true;
        }
        // A new snapshot (capture lost its state) forces a base: points after it are
        // restorable only from a base taken after it.
        if let Some(Err(e)) = ctx.archive.map(|a| a.after_step(cap, step.snapshot_taken)) {
            // The log keeps every change; the base is taken again at the next step.
            tracing::error!(source = %src.id, error = %format!("{e:#}"), "base image for the archive failed; retrying");
            ctx.metrics
                .source_errors
                .get_or_create(&crate::metrics::SourceError {
                    source: src.id.clone(),
                    stage: "archive".into(),
                    kind: "io".into(),
                })
                .inc();
        }
        if stop.load(Ordering::SeqCst) {
            // (On shutdown the archiver thread seals the open segment and archives it.)
            return Ok(());
        }
        // Caught up: wait for a request, a change hint or the poll interval. A step that
        // was busy stopped watching (watching costs the application a notification per
        // write); watching again, poll once more first for what came meanwhile.
        let wait = if step.caught_up && !cap.watch_for_changes() {
            Duration::from_millis(50)
        } else {
            Duration::ZERO
        };
        match requests.recv_timeout(wait) {
            Ok(CaptureRequest::Drain(reply)) => {
                // Everything committed before this request is captured when drain returns.
                let r = cap
                    .drain()
                    .map(|_| src.log.durable_lsn())
                    .map_err(|e| e.to_string());
                ctx.publish_stats(cap);
                let _ = reply.send(r);
            }
            Ok(CaptureRequest::BackupNow(reply)) => {
                // The base reflects what is captured so far; it need not wait for a writer
                // that outpaces capture.
                match (cap.step(Duration::from_millis(500)), ctx.archive) {
                    (Ok(_), Some(a)) => a.backup_now(cap, reply),
                    (Ok(_), None) => {
                        let _ = reply.send(Err("no archive is configured: start ferry run with --archive-dir or an [archive] section".into()));
                    }
                    (Err(e), _) => {
                        let _ = reply.send(Err(format!("capturing before the base: {e}")));
                    }
                }
            }
            Ok(CaptureRequest::Changed) | Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return Ok(()),
        }
    }
}

/// `now`'s counters added to `before`'s (the captures this run opened earlier); gauges and
/// positions are `now`'s.
fn carried_over(before: &CaptureStats, now: &CaptureStats) -> CaptureStats {
    CaptureStats {
        transactions: before.transactions + now.transactions,
        inserts: before.inserts + now.inserts,
        updates: before.updates + now.updates,
        deletes: before.deletes + now.deletes,
        schema_changes: before.schema_changes + now.schema_changes,
        snapshot_rows: before.snapshot_rows + now.snapshot_rows,
        resyncs: before.resyncs + now.resyncs,
        rollback_polls: before.rollback_polls + now.rollback_polls,
        wal_frames_read: before.wal_frames_read + now.wal_frames_read,
        wal_bound_rounds: before.wal_bound_rounds + now.wal_bound_rounds,
        wal_bound_failures: before.wal_bound_failures + now.wal_bound_failures,
        wal_resets: before.wal_resets + now.wal_resets,
        checkpoint_yields: before.checkpoint_yields + now.checkpoint_yields,
        checkpoint_yield_max: before.checkpoint_yield_max.max(now.checkpoint_yield_max),
        lock_hold_max: before.lock_hold_max.max(now.lock_hold_max),
        lock_hold_total: before.lock_hold_total + now.lock_hold_total,
        ..now.clone()
    }
}

/// What a shipper reports as it happens goes straight into the metrics: every batch into
/// the apply histograms and row counters, every failed attempt into the error counter.
/// (Sampling the status instead would see one batch per tick, and a shipper rebuilt after
/// an outage starts its counts again at 0.)
fn ship_observer(metrics: &Metrics, source: &str) -> impl Fn(&ShipEvent) + Send + Sync + 'static {
    let l = SourceLabel {
        source: source.to_string(),
    };
    let op = |op| SourceOp {
        source: source.to_string(),
        op,
    };
    let records = metrics.apply_batch_records.get_or_create(&l).clone();
    let duration = metrics.apply_batch_duration.get_or_create(&l).clone();
    let upserted = metrics
        .applied_rows
        .get_or_create(&op(OpLabel::upsert))
        .clone();
    let deleted = metrics
        .applied_rows
        .get_or_create(&op(OpLabel::delete))
        .clone();
    // Only transient errors are retried, and those are the connection's (lost, refused,
    // server restarting).
    let failed_attempts = metrics
        .source_errors
        .get_or_create(&crate::metrics::SourceError {
            source: source.to_string(),
            stage: "ship".into(),
            kind: "connection".into(),
        })
        .clone();
    move |event| match event {
        ShipEvent::BatchApplied {
            records: n,
            rows_upserted,
            rows_deleted,
            duration: took,
        } => {
            records.observe(*n as f64);
            duration.observe(took.as_secs_f64());
            upserted.inc_by(*rows_upserted);
            deleted.inc_by(*rows_deleted);
        }
        // The shipper logs the attempt itself.
        ShipEvent::Retrying { .. } => {
            failed_attempts.inc();
        }
    }
}

/// What a shipper task needs: the log to read, where to publish its status, how to ship.
struct ShipInput {
    id: String,
    log: Arc<LogHandle>,
    ship_status: Arc<Mutex<Option<Arc<Mutex<ferry_pg::ShipStatus>>>>>,
    options: ShipOptions,
    limit: Arc<std::sync::atomic::AtomicU64>,
}

async fn ship_loop(
    target: PgTarget,
    input: ShipInput,
    status: Arc<RunStatus>,
    metrics: Arc<Metrics>,
    stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut backoff = Duration::from_millis(500);
    while !*stop.borrow() {
        let result = async {
            tracing::debug!(source = %input.id, "connecting the shipper");
            let mut shipper = Shipper::new(target.clone(), input.options.clone()).await?;
            shipper.set_observer(ship_observer(&metrics, &input.id));
            tracing::debug!(source = %input.id, "shipper connected");
            if let Ok(mut slot) = input.ship_status.lock() {
                *slot = Some(shipper.status_handle());
            }
            let mut source = LogRecordSource::with_limit(input.log.clone(), input.limit.clone());
            shipper.run(&mut source, stop.clone()).await
        }
        .await;
        match result {
            Ok(summary) => {
                let _ = input
                    .log
                    .set_consumer(SHIPPER_CONSUMER, summary.applied_lsn);
                return;
            }
            Err(e) => {
                let msg = format!("shipping to PostgreSQL: {e}");
                tracing::error!(source = %input.id, error = %msg, "shipping stopped; the log keeps every change; retrying");
                status.update(&input.id, |s| {
                    s.state = SourceState::Error;
                    s.last_error = Some(msg.clone());
                });
                let kind = if e.is_transient() {
                    "connection"
                } else {
                    "data"
                };
                metrics
                    .source_errors
                    .get_or_create(&crate::metrics::SourceError {
                        source: input.id.clone(),
                        stage: "ship".into(),
                        kind: kind.into(),
                    })
                    .inc();
                let mut s = stop.clone();
                let _ = tokio::time::timeout(backoff, s.changed()).await;
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    }
}

/// How a configured source ships: schema, prefix, mode and table filters.
fn ship_options_of(sc: &SourceConfig, source_id: &str) -> ShipOptions {
    ShipOptions {
        schema: sc.schema.clone(),
        table_prefix: sc.table_prefix.clone(),
        mode: if sc.mode == "existing" {
            TargetMode::Existing
        } else {
            TargetMode::Create
        },
        include: sc.include.clone(),
        exclude: sc.exclude.clone(),
        source_id: source_id.to_string(),
        ..ShipOptions::default()
    }
}

/// A source `ferry run` only ships: sled, whose capture runs inside the application (the
/// ferry-sled library writes the log in its own state directory).
struct ShippedOnlySource {
    id: String,
    log: Arc<LogHandle>,
    ship_status: Arc<Mutex<Option<Arc<Mutex<ferry_pg::ShipStatus>>>>>,
    options: ShipOptions,
}

impl ShippedOnlySource {
    fn ship_input(&self) -> ShipInput {
        ShipInput {
            id: self.id.clone(),
            log: self.log.clone(),
            ship_status: self.ship_status.clone(),
            options: self.options.clone(),
            limit: crate::logview::no_ship_limit(),
        }
    }
}

fn shipped_only_source(
    sc: &SourceConfig,
    status: &RunStatus,
    metrics: &Metrics,
) -> anyhow::Result<ShippedOnlySource> {
    let log_dir = crate::cmd::log::log_dir(sc.path.clone(), sc.name.as_deref())?;
    let ro = ferry_log::open_read_only(&log_dir)
        .with_context(|| format!("opening the log in {}", log_dir.display()))?;
    let id = ro.source_identity().to_string();
    status.insert(SourceStatus::new(&id, &sc.kind, &sc.path.to_string_lossy()));
    status.update(&id, |s| s.log_id = Some(ro.log_id().to_string()));
    metrics.register_source(&id, false);
    Ok(ShippedOnlySource {
        options: ship_options_of(sc, &id),
        id,
        log: Arc::new(LogHandle::ReadOnly(ro)),
        ship_status: Default::default(),
    })
}

/// Status and metrics of a shipped-only source: positions and lag from its log and shipper.
fn monitor_shipped_only(src: &ShippedOnlySource, ctx: &RunContext) {
    let Ok(durable) = src.log.durable_lsn() else {
        return;
    };
    let ship = src
        .ship_status
        .lock()
        .ok()
        .and_then(|s| s.clone())
        .and_then(|h| h.lock().ok().map(|s| s.clone()));
    let applied = ship.as_ref().map_or(Lsn::ZERO, |s| s.applied_lsn);
    let lag_records = durable.0.saturating_sub(applied.0);
    let lag_seconds = if lag_records == 0 {
        0.0
    } else {
        oldest_unapplied_age(src.log.reader(applied.next()))
    };
    let l = SourceLabel {
        source: src.id.clone(),
    };
    let m = &ctx.metrics;
    m.capture_lsn.get_or_create(&l).set(durable.0 as i64);
    m.shipped_lsn.get_or_create(&l).set(applied.0 as i64);
    m.replication_lag_records
        .get_or_create(&l)
        .set(lag_records as i64);
    m.replication_lag_seconds.get_or_create(&l).set(lag_seconds);
    let mut up = true;
    ctx.status.update(&src.id, |s| {
        // The capture thread may have published a newer LSN since `durable` was read.
        s.captured_lsn = s.captured_lsn.max(durable.0);
        s.shipped_lsn = applied.0;
        s.lag_records = lag_records;
        s.lag_seconds = lag_seconds;
        if let Some(st) = &ship {
            apply_ship_state(s, st);
        }
        up = s.state != SourceState::Error;
    });
    m.source_up.get_or_create(&l).set(i64::from(up));
}

/// Counter values last copied into the metrics, per source, so counters grow by deltas.
#[derive(Default)]
struct Published {
    transactions: u64,
    inserts: u64,
    updates: u64,
    deletes: u64,
    resyncs: u64,
    wal_resets: u64,
    loaded: u64,
    /// The status of the shipper whose `rows_loaded` `loaded` is: a shipper rebuilt after
    /// an outage counts from 0 again.
    ship_handle: Option<Arc<Mutex<ferry_pg::ShipStatus>>>,
    /// The highest applied position seen (or recorded in the log as the shipper's consumer
    /// position at start): a rebuilt shipper reports 0 until it has read `ferry.progress`,
    /// which is not PostgreSQL going back.
    shipped: Lsn,
}

/// How much a counter copied from a stage grew since `before`. A smaller value means the
/// stage's counts started again (a new capture or shipper): all of `now` is new then.
fn counter_delta(now: u64, before: u64) -> u64 {
    if now >= before { now - before } else { now }
}

/// The rows a load status says were handed to COPY, and the rows it expects: (0, 0) before
/// the copy starts (the profiling pass counts what it reads, not what is loaded).
fn load_rows(load: Option<&ferry_pg::LoadProgress>) -> (u64, u64) {
    match load {
        Some(l) if matches!(l.step.as_str(), "copying" | "indexing" | "done") => {
            (l.rows_done, l.rows_total)
        }
        _ => (0, 0),
    }
}

/// The state and error `/status` shows for a source, from the shipper's phase. Errors of
/// capture are capture's to set and clear (see `capture_loop`); a shipping error — the
/// shipper failed, or retries a lost PostgreSQL — lasts until a shipper reaches PostgreSQL
/// again (phase `loading` or `streaming`).
fn apply_ship_state(s: &mut SourceStatus, ship: &ferry_pg::ShipStatus) {
    let capture_error = s.state == SourceState::Error
        && s.last_error
            .as_deref()
            .is_some_and(|e| e.starts_with("capture"));
    if s.state == SourceState::CutOver || capture_error {
        return;
    }
    match ship.phase.as_str() {
        "failed" => {
            s.state = SourceState::Error;
            s.last_error = ship.last_error.clone();
        }
        "retrying" => {
            s.state = SourceState::Error;
            s.last_error = Some(format!(
                "shipping to PostgreSQL: {} (retrying; the log keeps every change)",
                ship.last_error.as_deref().unwrap_or("connection lost")
            ));
        }
        "loading" | "streaming" => {
            s.state = if ship.phase == "streaming" {
                SourceState::Streaming
            } else {
                SourceState::Snapshotting
            };
            s.last_error = None;
        }
        // `starting` (connecting) and `stopped` say nothing new: an earlier error stays
        // until PostgreSQL answers.
        _ => {
            if matches!(s.state, SourceState::Starting) {
                s.state = SourceState::Snapshotting;
            }
        }
    }
}

/// Transactions found in the log after the cutover record, counted incrementally.
#[derive(Default)]
struct AfterCutover {
    scanned_to: Lsn,
    transactions: u64,
}

impl AfterCutover {
    fn scan(&mut self, log: &ferry_log::Log, cutover: Lsn, durable: Lsn) -> u64 {
        let from = self.scanned_to.max(cutover).next();
        if from > durable {
            return self.transactions;
        }
        if let Ok(reader) = log.reader(from) {
            for item in reader {
                let Ok((lsn, payload)) = item else { break };
                if lsn > durable {
                    break;
                }
                if matches!(
                    ferry_core::Record::decode(&payload),
                    Ok(ferry_core::Record::Transaction(_))
                ) {
                    self.transactions += 1;
                }
                self.scanned_to = lsn;
            }
        }
        self.transactions
    }
}

fn monitor_loop(ctx: Arc<RunContext>, shipped_only: Vec<ShippedOnlySource>, stop: Arc<AtomicBool>) {
    let mut published: Vec<Published> = ctx
        .sources
        .iter()
        .map(|src| Published {
            shipped: shipper_consumer_position(&src.log),
            ..Published::default()
        })
        .collect();
    let mut consumer_written: Vec<Lsn> = published.iter().map(|p| p.shipped).collect();
    let mut after: Vec<AfterCutover> = ctx
        .sources
        .iter()
        .map(|_| AfterCutover::default())
        .collect();
    while !stop.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(250));
        for src in &shipped_only {
            monitor_shipped_only(src, &ctx);
        }
        for (i, src) in ctx.sources.iter().enumerate() {
            let l = SourceLabel {
                source: src.id.clone(),
            };
            let cap = src
                .capture_stats
                .lock()
                .map(|s| s.clone())
                .unwrap_or_default();
            let handle = src.ship_status.lock().ok().and_then(|s| s.clone());
            let ship = handle
                .as_ref()
                .and_then(|h| h.lock().ok().map(|s| s.clone()));
            let p = &mut published[i];
            let m = &ctx.metrics;
            let durable = src.log.durable_lsn();
            let applied = ship
                .as_ref()
                .map_or(Lsn::ZERO, |s| s.applied_lsn)
                .max(p.shipped);
            p.shipped = applied;
            let cutover = src.cutover_lsn.lock().ok().and_then(|g| *g);
            // After a cutover nothing past the cutover record is shipped, so lag counts only
            // up to it; what SQLite received later is reported as writes after cutover.
            let shippable = cutover.map_or(durable, |c| durable.min(c));
            let lag_records = shippable.0.saturating_sub(applied.0);
            let lag_seconds = if lag_records == 0 {
                0.0
            } else {
                oldest_unapplied_age(src.log.reader(applied.next()))
            };
            m.captured_transactions
                .get_or_create(&l)
                .inc_by(counter_delta(cap.transactions, p.transactions));
            p.transactions = cap.transactions;
            for (op, now, before) in [
                (
                    OpLabel::insert,
                    cap.inserts + cap.snapshot_rows,
                    &mut p.inserts,
                ),
                (OpLabel::update, cap.updates, &mut p.updates),
                (OpLabel::delete, cap.deletes, &mut p.deletes),
            ] {
                m.captured_rows
                    .get_or_create(&SourceOp {
                        source: src.id.clone(),
                        op,
                    })
                    .inc_by(counter_delta(now, *before));
                *before = now;
            }
            m.resyncs
                .get_or_create(&l)
                .inc_by(counter_delta(cap.resyncs, p.resyncs));
            p.resyncs = cap.resyncs;
            m.wal_resets
                .get_or_create(&l)
                .inc_by(counter_delta(cap.wal_resets, p.wal_resets));
            p.wal_resets = cap.wal_resets;
            m.capture_lsn.get_or_create(&l).set(durable.0 as i64);
            m.shipped_lsn.get_or_create(&l).set(applied.0 as i64);
            m.replication_lag_records
                .get_or_create(&l)
                .set(lag_records as i64);
            m.replication_lag_seconds.get_or_create(&l).set(lag_seconds);
            m.source_wal_bytes
                .get_or_create(&l)
                .set(cap.wal_bytes as i64);
            if let Ok(segs) = src.log.segments() {
                m.log_segments.get_or_create(&l).set(segs.len() as i64);
                m.log_bytes
                    .get_or_create(&l)
                    .set(segs.iter().map(|s| s.bytes as i64).sum());
            }
            let same_shipper = match (&handle, &p.ship_handle) {
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                (None, None) => true,
                _ => false,
            };
            if !same_shipper {
                // A new shipper: first the rows the one before it loaded since the last
                // tick, then count the new one's from 0.
                let last = p
                    .ship_handle
                    .as_ref()
                    .and_then(|h| h.lock().ok().map(|s| s.stats.rows_loaded));
                if let Some(last) = last {
                    m.snapshot_rows
                        .get_or_create(&l)
                        .inc_by(counter_delta(last, p.loaded));
                }
                p.loaded = 0;
                p.ship_handle = handle.clone();
            }
            if let Some(ship) = &ship {
                let st = &ship.stats;
                m.snapshot_rows
                    .get_or_create(&l)
                    .inc_by(counter_delta(st.rows_loaded, p.loaded));
                p.loaded = st.rows_loaded;
                let (copied, expected) = load_rows(ship.load.as_ref());
                m.snapshot_copy_rows.get_or_create(&l).set(copied as i64);
                m.snapshot_expected_rows
                    .get_or_create(&l)
                    .set(expected as i64);
                let (mut loading, streaming) =
                    ship.tables.iter().fold((0i64, 0i64), |(a, b), t| {
                        if t.state == ferry_pg::TableState::Streaming {
                            (a, b + 1)
                        } else {
                            (a + 1, b)
                        }
                    });
                // The first pass of a new source's load (profiling) runs before its tables
                // exist in PostgreSQL: they are loading all the same (alerts leave loading
                // sources alone, however long the load).
                if let Some(load) = ship.load.as_ref().filter(|l| l.step != "done")
                    && ship.tables.is_empty()
                {
                    loading = load.tables_total as i64;
                }
                m.snapshot_tables
                    .get_or_create(&crate::metrics::SourceState {
                        source: src.id.clone(),
                        state: "loading".into(),
                    })
                    .set(loading);
                m.snapshot_tables
                    .get_or_create(&crate::metrics::SourceState {
                        source: src.id.clone(),
                        state: "streaming".into(),
                    })
                    .set(streaming);
                if applied > consumer_written[i] {
                    let _ = src.log.set_consumer(SHIPPER_CONSUMER, applied);
                    consumer_written[i] = applied;
                }
            }
            // Writes that reach SQLite after the cutover (the fence was bypassed, or ferry was
            // stopped and restarted): counted and reported loudly.
            let after_cutover = cutover.map(|c| after[i].scan(&src.log, c, durable));
            let mut up = true;
            ctx.status.update(&src.id, |s| {
                s.captured_lsn = durable.0;
                s.shipped_lsn = applied.0;
                s.lag_records = lag_records;
                s.lag_seconds = lag_seconds;
                if let Some(n) = after_cutover {
                    if n > s.writes_after_cutover {
                        tracing::error!(source = %src.id, writes = n, "WRITES TO SQLITE AFTER CUTOVER: the application still writes to the old database; these changes are captured but the application is supposed to be on PostgreSQL");
                        m.writes_after_cutover.get_or_create(&l).inc_by(n - s.writes_after_cutover);
                        s.last_error = Some(format!(
                            "{n} transactions reached SQLite after the cutover (log records after LSN {}); they are kept in the log and not shipped: PostgreSQL is authoritative. Find what still writes to {}; `ferry log inspect` shows the changes",
                            cutover.map_or(0, |c| c.0),
                            src.path.display()
                        ));
                    }
                    s.writes_after_cutover = n;
                }
                if let Some(st) = &ship {
                    apply_ship_state(s, st);
                }
                up = s.state != SourceState::Error;
            });
            m.source_up.get_or_create(&l).set(i64::from(up));
        }
    }
}

/// Where the log says the shipper had got to (0 when it never recorded a position).
fn shipper_consumer_position(log: &ferry_log::Log) -> Lsn {
    log.consumers()
        .ok()
        .and_then(|c| c.into_iter().find(|(name, _)| name == SHIPPER_CONSUMER))
        .map_or(Lsn::ZERO, |(_, lsn)| lsn)
}

/// Seconds since the capture of the oldest record not yet applied.
/// `reader` starts at the first record not yet applied.
fn oldest_unapplied_age(reader: Result<ferry_log::LogReader, ferry_log::LogError>) -> f64 {
    let Ok(mut reader) = reader else {
        return 0.0;
    };
    match reader.next() {
        Some(Ok((_, payload))) => match ferry_core::Record::decode(&payload)
            .ok()
            .and_then(|r| r.captured_at())
        {
            Some(at) => ((ferry_core::now_micros() - at).max(0) as f64) / 1e6,
            None => 0.0,
        },
        _ => 0.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_counter_that_starts_again_counts_all_of_its_new_value() {
        assert_eq!(counter_delta(15, 10), 5);
        assert_eq!(counter_delta(10, 10), 0);
        // A new shipper or capture at 3 after the old one had reached 10: 3 new events.
        assert_eq!(counter_delta(3, 10), 3);
    }

    #[test]
    fn capture_counters_carry_over_a_reopened_capture() {
        let before = CaptureStats {
            transactions: 10,
            inserts: 7,
            wal_resets: 2,
            wal_bytes: 4096,
            lock_hold_max: Duration::from_millis(5),
            ..CaptureStats::default()
        };
        let now = CaptureStats {
            transactions: 3,
            inserts: 1,
            wal_resets: 1,
            wal_bytes: 512,
            lock_hold_max: Duration::from_millis(2),
            ..CaptureStats::default()
        };
        let c = carried_over(&before, &now);
        assert_eq!((c.transactions, c.inserts, c.wal_resets), (13, 8, 3));
        assert_eq!(c.wal_bytes, 512, "a gauge is the live capture's");
        assert_eq!(c.lock_hold_max, Duration::from_millis(5));
    }

    fn ship(phase: &str, error: Option<&str>) -> ferry_pg::ShipStatus {
        ferry_pg::ShipStatus {
            phase: phase.into(),
            last_error: error.map(String::from),
            ..Default::default()
        }
    }

    #[test]
    fn a_retrying_shipper_is_an_error_until_postgres_answers() {
        let mut s = SourceStatus::new("app", "sqlite", "/x/app.db");
        apply_ship_state(&mut s, &ship("streaming", None));
        assert_eq!(s.state, SourceState::Streaming);
        apply_ship_state(&mut s, &ship("retrying", Some("connection refused")));
        assert_eq!(s.state, SourceState::Error);
        let e = s.last_error.clone().unwrap_or_default();
        assert!(
            e.starts_with("shipping to PostgreSQL: connection refused") && e.contains("retrying"),
            "{e}"
        );
        // A rebuilt shipper still connecting says nothing new.
        apply_ship_state(&mut s, &ship("starting", None));
        assert_eq!(s.state, SourceState::Error);
        apply_ship_state(&mut s, &ship("streaming", None));
        assert_eq!(
            (s.state, s.last_error.as_deref()),
            (SourceState::Streaming, None)
        );
        // A capture error is capture's to clear, and a cut-over source stays cut over.
        s.state = SourceState::Error;
        s.last_error = Some("capture of /x/app.db: gone".into());
        apply_ship_state(&mut s, &ship("streaming", None));
        assert_eq!(s.state, SourceState::Error);
        s.state = SourceState::CutOver;
        apply_ship_state(&mut s, &ship("retrying", Some("refused")));
        assert_eq!(s.state, SourceState::CutOver);
    }

    #[test]
    fn load_rows_count_from_the_copy_on() {
        let mut l = ferry_pg::LoadProgress {
            step: "profiling".into(),
            rows_total: 0,
            rows_done: 500,
            ..Default::default()
        };
        assert_eq!(
            load_rows(Some(&l)),
            (0, 0),
            "profiling reads, loads nothing"
        );
        l.step = "copying".into();
        l.rows_total = 1000;
        l.rows_done = 400;
        assert_eq!(load_rows(Some(&l)), (400, 1000));
        l.step = "done".into();
        l.rows_done = 1000;
        assert_eq!(load_rows(Some(&l)), (1000, 1000));
        assert_eq!(load_rows(None), (0, 0));
    }
}
