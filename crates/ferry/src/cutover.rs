//! The cutover, run by `ferry run` on request over the control socket (proto/admin-api.md).
//!
//! Order of operations, and why:
//! 1. **pre-verify** every table at the current position, while the application still
//!    writes (so the long part happens before any write pause); a difference whose key
//!    changed while it read is set aside (a change in flight), every other one stops the
//!    cutover. Then, still live, the rows changed during that read are compared by key, round
//!    after round, until about a second's worth of keys is left;
//! 2. **catch up** until the lag is below the bound, so the drain under the fence is short;
//! 3. **fence** every source at once (SQLite's write lock; the application's writers wait);
//!    from here on, a failure before the switch releases the fences and leaves the
//!    application on SQLite, as it was;
//! 4. **drain**: capture reads everything committed before the fence; the shipper applies it;
//! 5. **verify under the fence**: row counts of every table, and a comparison by key of every
//!    row changed since the last live comparison (`full`, or a schema change: every row). The
//!    pause therefore grows with the write rate, not with the size of the tables;
//! 6. **sequences** move past the highest ids, so the application's next insert on
//!    PostgreSQL gets a fresh id;
//! 7. **switch**: the client runs the operator's command; on its success the fence stays
//!    held for as long as `ferry run` runs (and is taken again by every later run), so the
//!    old application cannot commit to SQLite behind PostgreSQL's back;
//! 8. **record** the cutover in `ferry.progress`, in the log (a `Cutover` record: shipping
//!    never goes past it) and in `sources/<id>/cutover.json`. Only after the switch, so a
//!    failed switch leaves replication exactly as it was. The window is fence → done.

use crate::cmd::run::{RunContext, SourceRuntime};
use crate::cmd::verify::{ChangedKeys, Rows};
use crate::control::{self, Event, Request};
use crate::status::SourceState;
use anyhow::Context;
use ferry_core::{CutoverRecord, Lsn, Record};
use ferry_pg::mapping::MapOptions;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub async fn serve_control(listener: tokio::net::UnixListener, ctx: Arc<RunContext>) {
    loop {
        let Ok(mut conv) = control::accept(&listener).await else {
            continue;
        };
        let ctx = ctx.clone();
        tokio::spawn(async move {
            let req = match conv.next_request().await {
                Ok(Some(r)) => r,
                _ => return,
            };
            match req {
                Request::Cutover {
                    full,
                    max_lag_records,
                    lag_wait_seconds,
                } => {
                    let r = cutover(
                        &ctx,
                        &mut conv,
                        full,
                        max_lag_records,
                        Duration::from_secs_f64(lag_wait_seconds),
                    )
                    .await;
                    if let Err(e) = r {
                        // After a successful switch the fence is kept whatever fails next.
                        let switched = e.downcast_ref::<AfterSwitch>().is_some();
                        if switched {
                            tracing::error!(error = %format!("{e:#}"), "the application was switched to PostgreSQL, but recording the cutover failed; SQLite stays fenced while ferry runs");
                        } else {
                            tracing::error!(error = %format!("{e:#}"), "cutover aborted; the application stays on SQLite");
                        }
                        for s in &ctx.sources {
                            ctx.metrics
                                .cutover_state
                                .get_or_create(&crate::metrics::SourceLabel {
                                    source: s.id.clone(),
                                })
                                .set(if switched { 2 } else { 3 });
                        }
                        let _ = conv
                            .send(&Event::Error {
                                message: format!("{e:#}"),
                                fence_released: !switched,
                            })
                            .await;
                    }
                }
                Request::BackupNow => {
                    let event = match backup_now(&ctx).await {
                        Ok(detail) => Event::Done { detail },
                        Err(e) => Event::Error {
                            message: format!("{e:#}"),
                            fence_released: false,
                        },
                    };
                    let _ = conv.send(&event).await;
                }
                Request::Switched { .. } => {
                    let _ = conv
                        .send(&Event::Error {
                            message: "no cutover is waiting for a switch".into(),
                            fence_released: false,
                        })
                        .await;
                }
            }
        });
    }
}

/// `ferry backup now`: every source's capture thread takes a base into the archive.
async fn backup_now(
    ctx: &RunContext,
) -> anyhow::Result<serde_json::Map<String, serde_json::Value>> {
    let mut detail = serde_json::Map::new();
    for src in &ctx.sources {
        let (tx, rx) = std::sync::mpsc::channel();
        src.capture_tx
            .send(crate::cmd::run::CaptureRequest::BackupNow(tx))
            .map_err(|_| anyhow::anyhow!("source {}: capture is not running", src.id))?;
        let base = tokio::task::spawn_blocking(move || rx.recv_timeout(Duration::from_secs(600)))
            .await?
            .map_err(|_| anyhow::anyhow!("source {}: no base within 10 minutes", src.id))?
            .map_err(|e| anyhow::anyhow!("source {}: {e}", src.id))?;
        detail.insert(src.id.clone(), base);
    }
    Ok(detail)
}

async fn step(conv: &mut control::Conversation, step: &str, message: String) -> anyhow::Result<()> {
    tracing::info!(step, "{message}");
    conv.send(&Event::Step {
        step: step.into(),
        message,
    })
    .await?;
    Ok(())
}

fn map_options(src: &SourceRuntime) -> MapOptions {
    MapOptions {
        schema: src.ship_options.schema.clone(),
        table_prefix: src.ship_options.table_prefix.clone(),
        keep_case: src.ship_options.keep_case,
        type_overrides: Default::default(),
    }
}

/// Runs verify for one source on a thread of its own (verify drives its own runtime): every
/// row of the tables the source ships, or (`keys`) only those keys.
async fn verify_source(
    ctx: &RunContext,
    src: &SourceRuntime,
    keys: Option<(ChangedKeys, HashSet<String>)>,
) -> anyhow::Result<Vec<crate::cmd::verify::TableResult>> {
    let target = ctx.target.clone();
    let path = src.path.clone();
    let opts = map_options(src);
    let filter = src.ship_options.clone();
    tokio::task::spawn_blocking(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        let rows = match &keys {
            Some((keys, whole)) => Rows::Keys { keys, whole },
            None => Rows::All,
        };
        // Live rounds read in chunks (the application's checkpoints must not wait on them);
        // under the fence nothing moves and chunks cost nothing either.
        crate::cmd::verify::verify_tables(
            &rt,
            &target,
            &path,
            &opts,
            &|t| filter.includes(t),
            rows,
            crate::cmd::verify::Reading::Chunks,
        )
    })
    .await?
}

fn first_difference(results: &[crate::cmd::verify::TableResult]) -> Option<String> {
    results.iter().find(|r| !r.is_equal()).map(|r| {
        let c = &r.comparison;
        format!(
            "table {}: {} rows, {} missing, {} extra, {} different, {} in flight",
            r.table, c.left_rows, c.missing, c.extra, c.different, r.in_flight
        )
    })
}

/// Asks the capture thread to read everything committed now; returns the durable LSN.
async fn drain(src: &SourceRuntime) -> anyhow::Result<Lsn> {
    let (tx, rx) = std::sync::mpsc::channel();
    src.capture_tx
        .send(crate::cmd::run::CaptureRequest::Drain(tx))
        .map_err(|_| anyhow::anyhow!("source {}: capture is not running", src.id))?;
    tokio::task::spawn_blocking(move || rx.recv_timeout(Duration::from_secs(30)))
        .await?
        .map_err(|_| anyhow::anyhow!("source {}: capture did not drain within 30 s", src.id))?
        .map_err(|e| anyhow::anyhow!("source {}: capture failed while draining: {e}", src.id))
}

fn applied_lsn(src: &SourceRuntime) -> Lsn {
    src.ship_status
        .lock()
        .ok()
        .and_then(|s| s.clone())
        .and_then(|h| h.lock().ok().map(|s| s.applied_lsn))
        .unwrap_or(Lsn::ZERO)
}

async fn wait_applied(src: &SourceRuntime, lsn: Lsn, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    while applied_lsn(src) < lsn {
        anyhow::ensure!(
            Instant::now() < deadline,
            "source {}: PostgreSQL did not reach LSN {lsn} within {timeout:?}",
            src.id
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(())
}

/// Keys changed by the records in (from, to], per table (schema changes included: a table
/// whose schema changed is compared whole).
fn keys_changed_between(src: &SourceRuntime, from: Lsn, to: Lsn) -> anyhow::Result<ChangedKeys> {
    if to <= from {
        return Ok(ChangedKeys::new());
    }
    crate::cmd::verify::keys_changed(src.log.reader(from.next())?, to)
}

/// Whether the records in (from, to] changed a table's schema or snapshot the source again
/// (the comparison by key then does not cover what changed: every row is compared).
fn schema_changed_between(src: &SourceRuntime, from: Lsn, to: Lsn) -> anyhow::Result<bool> {
    if to <= from {
        return Ok(false);
    }
    for item in src.log.reader(from.next())? {
        let (lsn, payload) = item?;
        if lsn > to {
            break;
        }
        match Record::decode(&payload)? {
            Record::Transaction(t) if !t.schema_changes.is_empty() => return Ok(true),
            Record::SnapshotBegin(_) | Record::SnapshotRows(_) => return Ok(true),
            _ => {}
        }
    }
    Ok(false)
}

/// Splits changed keys into tables compared by key and tables compared whole: reading a
/// third of a table by key costs more than reading all of it in order.
fn by_key_or_whole(
    keys: ChangedKeys,
    table_rows: &HashMap<String, u64>,
) -> (ChangedKeys, HashSet<String>) {
    let whole = keys
        .iter()
        .filter(|(t, k)| (k.len() as u64) * 3 >= table_rows.get(*t).copied().unwrap_or(0))
        .map(|(t, _)| t.clone())
        .collect();
    (keys, whole)
}

/// How long each step under the fence took (the window, itemised for the operator).
struct Phases {
    last: Instant,
    laps: Vec<(&'static str, Duration)>,
}

impl Phases {
    fn new(start: Instant) -> Phases {
        Phases {
            last: start,
            laps: Vec::new(),
        }
    }

    /// Ends the step `name` now; a step run once per source adds up.
    fn lap(&mut self, name: &'static str) {
        let now = Instant::now();
        let took = now - self.last;
        self.last = now;
        match self.laps.iter_mut().find(|(n, _)| *n == name) {
            Some((_, d)) => *d += took,
            None => self.laps.push((name, took)),
        }
    }

    fn to_json(&self) -> serde_json::Value {
        serde_json::Value::Object(
            self.laps
                .iter()
                .map(|(n, d)| {
                    (
                        (*n).to_string(),
                        serde_json::json!(d.as_secs_f64() * 1000.0),
                    )
                })
                .collect(),
        )
    }
}

/// Under the fence the cutover compares the keys changed since the last live comparison;
/// before fencing, live rounds compare by key what changed during the previous one, until
/// fewer keys than this are left for the fence.
const FENCE_KEYS: usize = 2_000;
/// Live rounds at most (a source written faster than a round compares stops converging).
const LIVE_ROUNDS: usize = 4;

/// The position a live comparison read at (`at`: the log's durable LSN, applied, before the
/// read) holds for every key not changed after it. A difference whose key changed while the
/// comparison read may be a change in flight: it is set aside, since the next comparison (by
/// key, or under the fence) covers every key changed after `at`. Any other difference is real
/// and stops the cutover before the fence.
async fn settle(
    src: &SourceRuntime,
    mut results: Vec<crate::cmd::verify::TableResult>,
    at: Lsn,
    lag_wait: Duration,
) -> anyhow::Result<Lsn> {
    if first_difference(&results).is_some() {
        let end = drain(src).await?;
        wait_applied(src, end, lag_wait).await?;
        let changed = keys_changed_between(src, at, end)?;
        crate::cmd::verify::set_aside_in_flight(&mut results, &changed);
    }
    if let Some(bad) = first_difference(&results) {
        anyhow::bail!(
            "source {}: {bad} before the fence; run `ferry verify` for the keys",
            src.id
        );
    }
    Ok(at)
}

async fn cutover(
    ctx: &Arc<RunContext>,
    conv: &mut control::Conversation,
    full: bool,
    max_lag: u64,
    lag_wait: Duration,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        ctx.held_fences
            .lock()
            .map(|f| f.is_empty())
            .unwrap_or(false),
        "this ferry has already cut over"
    );
    // ferry can only fence what it reads from outside the application: a sled database is
    // written by the one process that embeds it.
    if let Some(s) = ctx
        .status
        .report()
        .sources
        .iter()
        .find(|s| s.kind != "sqlite")
    {
        anyhow::bail!(
            "source {} is a {} source, which ferry cannot fence (its application embeds it): move it by stopping the application's writes and waiting until `ferry status` shows lag 0; cut the SQLite sources over from a ferry run without it",
            s.source,
            s.kind
        );
    }
    for s in &ctx.sources {
        ctx.metrics
            .cutover_state
            .get_or_create(&crate::metrics::SourceLabel {
                source: s.id.clone(),
            })
            .set(1);
        let st = ctx.status.report();
        let state = st
            .sources
            .iter()
            .find(|x| x.source == s.id)
            .map(|x| x.state);
        anyhow::ensure!(
            state == Some(SourceState::Streaming),
            "source {} is not streaming ({state:?}); wait until the initial load is done and no error is reported",
            s.id
        );
    }
    // 1. pre-verify
    let mut pre_lsn = Vec::new();
    let mut table_rows = Vec::new();
    for src in &ctx.sources {
        wait_applied(src, src.log.durable_lsn(), lag_wait).await?;
        let at = src.log.durable_lsn();
        wait_applied(src, at, lag_wait).await?;
        step(
            conv,
            "pre_verify",
            format!(
                "source {}: verifying every table (PostgreSQL at LSN {at})",
                src.id
            ),
        )
        .await?;
        let results = verify_source(ctx, src, None).await?;
        table_rows.push(
            results
                .iter()
                .map(|r| (r.table.clone(), r.comparison.left_rows))
                .collect::<HashMap<_, _>>(),
        );
        let rows_of = table_rows.last().cloned().unwrap_or_default();
        let mut verified_at = settle(src, results, at, lag_wait).await?;
        // 1b. What changed during the pre-verify, compared by key while the application
        // still writes, so that the fence is left with about a second's worth of keys.
        for _ in 0..LIVE_ROUNDS {
            let now = src.log.durable_lsn();
            wait_applied(src, now, lag_wait).await?;
            if schema_changed_between(src, verified_at, now)? {
                break;
            }
            let keys = keys_changed_between(src, verified_at, now)?;
            let n: usize = keys.values().map(|k| k.len()).sum();
            if n <= FENCE_KEYS {
                break;
            }
            step(
                conv,
                "pre_verify",
                format!(
                    "source {}: comparing the {n} rows changed since LSN {verified_at}",
                    src.id
                ),
            )
            .await?;
            let results = verify_source(ctx, src, Some(by_key_or_whole(keys, &rows_of))).await?;
            verified_at = settle(src, results, now, lag_wait).await?;
        }
        pre_lsn.push(verified_at);
    }
    // 2. catch up
    let deadline = Instant::now() + lag_wait;
    for src in &ctx.sources {
        while src.log.durable_lsn().0.saturating_sub(applied_lsn(src).0) > max_lag {
            anyhow::ensure!(
                Instant::now() < deadline,
                "source {}: lag stayed above {max_lag} records for {lag_wait:?}",
                src.id
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    step(conv, "catch_up", "lag is within bounds".into()).await?;
    let mut sequence_plans = Vec::new();
    let mut planned_at = Vec::new();
    for src in &ctx.sources {
        planned_at.push(src.log.durable_lsn());
        sequence_plans.push(plan_sequences(ctx, src).await?);
    }
    // 3. fence every source
    let fenced_at = Instant::now();
    let fenced_wall = ferry_core::now_micros();
    let mut fences = Vec::new();
    for src in &ctx.sources {
        let path = src.path.clone();
        let f = tokio::task::spawn_blocking(move || {
            crate::fence::Fence::acquire(&path, Duration::from_secs(5))
        })
        .await??;
        fences.push(f);
    }
    // From here, an error drops `fences`, releasing SQLite's lock.
    let mut phases = Phases::new(fenced_at);
    phases.lap("fence");
    step(
        conv,
        "fence",
        format!("write lock held on {} sources", fences.len()),
    )
    .await?;
    let sqlite_counts: Vec<_> = ctx.sources.iter().map(|s| start_sqlite_counts(s)).collect();
    // 4. drain
    let mut drained = Vec::new();
    for src in &ctx.sources {
        let (tx, rx) = std::sync::mpsc::channel();
        src.capture_tx
            .send(crate::cmd::run::CaptureRequest::Drain(tx))
            .map_err(|_| anyhow::anyhow!("source {}: capture is not running", src.id))?;
        let end = tokio::task::spawn_blocking(move || rx.recv_timeout(Duration::from_secs(30)))
            .await?
            .map_err(|_| anyhow::anyhow!("capture did not drain within 30 s"))?
            .map_err(|e| anyhow::anyhow!("capture failed while draining: {e}"))?;
        wait_applied(src, end, Duration::from_secs(30)).await?;
        drained.push(end);
    }
    phases.lap("drain");
    step(
        conv,
        "drain",
        format!(
            "applied through LSN {:?}",
            drained.iter().map(|l| l.0).collect::<Vec<_>>()
        ),
    )
    .await?;
    // 5. verify under the fence: nothing moves, so every comparison is exact. The counts
    // run beside the comparison by key.
    for ((i, src), sqlite_counts) in ctx.sources.iter().enumerate().zip(sqlite_counts) {
        let sqlite_counts = sqlite_counts.await??;
        let counts = counts_equal(ctx, src, sqlite_counts);
        let compare = async {
            let whole = full || schema_changed_between(src, pre_lsn[i], drained[i])?;
            if whole {
                return anyhow::Ok((
                    verify_source(ctx, src, None).await?,
                    "every row".to_string(),
                ));
            }
            let keys = keys_changed_between(src, pre_lsn[i], drained[i])?;
            let n: usize = keys.values().map(|k| k.len()).sum();
            let results = if n == 0 {
                vec![]
            } else {
                verify_source(ctx, src, Some(by_key_or_whole(keys, &table_rows[i]))).await?
            };
            Ok((
                results,
                format!("the {n} rows changed since LSN {}", pre_lsn[i]),
            ))
        };
        let (counted, compared) = tokio::join!(counts, compare);
        let (results, what) = compared?;
        if let Some(bad) = first_difference(&results) {
            anyhow::bail!("source {}: {bad} under the fence", src.id);
        }
        counted?;
        phases.lap("verify");
        step(
            conv,
            "verify",
            format!("source {}: row counts equal; {what} equal", src.id),
        )
        .await?;
    }
    // 6. sequences (planned again if a schema changed since the plan)
    let mut moved = 0;
    for ((i, src), plan) in ctx.sources.iter().enumerate().zip(&mut sequence_plans) {
        if schema_changed_between(src, planned_at[i], drained[i])? {
            *plan = plan_sequences(ctx, src).await?;
        }
        moved += plan.run().await?;
    }
    phases.lap("sequences");
    step(
        conv,
        "sequences",
        format!("{moved} sequences moved past the highest ids"),
    )
    .await?;
    // 7. switch: the operator's command moves the application to PostgreSQL. Nothing is
    // recorded before it succeeds, so a failed switch leaves replication exactly as it was.
    conv.send(&Event::Switch {
        message: "PostgreSQL is authoritative; run the switch now".into(),
    })
    .await?;
    let switched = tokio::time::timeout(Duration::from_secs(600), conv.next_request()).await;
    match switched {
        Ok(Ok(Some(Request::Switched { ok: true, .. }))) => {}
        Ok(Ok(Some(Request::Switched { ok: false, output }))) => {
            anyhow::bail!("the switch command failed: {output}")
        }
        _ => anyhow::bail!("the cutover client went away before the switch"),
    }
    phases.lap("switch");
    // From here on the application is on PostgreSQL: whatever happens, SQLite stays fenced.
    if let Ok(mut held) = ctx.held_fences.lock() {
        held.extend(fences);
    }
    // 8. record the cutover: ferry.progress, the log's Cutover record (the end of the
    // SQLite history; shipping never passes it) and cutover.json for later runs.
    record_cutover(ctx, &drained, &sequence_plans).await.map_err(|e| {
        anyhow::Error::new(AfterSwitch(format!(
            "the switch succeeded, but recording the cutover failed: {e:#}; SQLite stays fenced while this ferry runs — record it before restarting ferry"
        )))
    })?;
    phases.lap("record");
    let window = fenced_at.elapsed();
    report_done(ctx, conv, window, fenced_wall, &phases)
        .await
        .map_err(|e| {
            anyhow::Error::new(AfterSwitch(format!(
                "the cutover is done, but reporting it failed: {e:#}"
            )))
        })
}

/// An error after the application was switched: the fence is kept.
#[derive(Debug)]
struct AfterSwitch(String);

impl std::fmt::Display for AfterSwitch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for AfterSwitch {}

/// Records the cutover on the connections opened before the fence (one per source).
async fn record_cutover(
    ctx: &Arc<RunContext>,
    drained: &[Lsn],
    plans: &[SequencePlan],
) -> anyhow::Result<()> {
    for ((i, src), plan) in ctx.sources.iter().enumerate().zip(plans) {
        plan.client
            .execute(
                "UPDATE ferry.progress SET cutover_at = now() WHERE source_id = $1",
                &[&src.id],
            )
            .await?;
        let rec = Record::Cutover(CutoverRecord {
            at: ferry_core::now_micros(),
            last_applied: drained[i],
            note: "cutover".into(),
        });
        let log = src.log.clone();
        let cutover_lsn = tokio::task::spawn_blocking(move || log.append(&rec.encode())).await??;
        // From here on nothing after the cutover record is shipped (this run or any later).
        src.ship_limit
            .fetch_min(cutover_lsn.0, std::sync::atomic::Ordering::SeqCst);
        if let Ok(mut c) = src.cutover_lsn.lock() {
            *c = Some(cutover_lsn);
        }
        crate::cutover_mark::CutoverMark {
            cutover_lsn: cutover_lsn.0,
            last_applied: drained[i].0,
            at: ferry_core::json::micros_to_rfc3339(ferry_core::now_micros()),
        }
        .write(
            &ctx.state_dir
                .source_dir(&ferry_core::SourceId(src.id.clone())),
        )
        .with_context(|| format!("recording the cutover of source {}", src.id))?;
    }
    Ok(())
}

async fn report_done(
    ctx: &Arc<RunContext>,
    conv: &mut control::Conversation,
    window: Duration,
    fenced_wall: i64,
    phases: &Phases,
) -> anyhow::Result<()> {
    for src in &ctx.sources {
        ctx.status.update(&src.id, |s| {
            s.state = SourceState::CutOver;
            s.cutover_at = Some(ferry_core::json::micros_to_rfc3339(ferry_core::now_micros()));
        });
        ctx.metrics
            .cutover_state
            .get_or_create(&crate::metrics::SourceLabel {
                source: src.id.clone(),
            })
            .set(2);
    }
    let mut detail = serde_json::Map::new();
    detail.insert(
        "window_ms".into(),
        serde_json::json!(window.as_secs_f64() * 1000.0),
    );
    detail.insert("phases_ms".into(), phases.to_json());
    detail.insert(
        "fenced_at".into(),
        serde_json::json!(ferry_core::json::micros_to_rfc3339(fenced_wall)),
    );
    detail.insert(
        "done_at".into(),
        serde_json::json!(ferry_core::json::micros_to_rfc3339(ferry_core::now_micros())),
    );
    tracing::info!(
        window_ms = window.as_secs_f64() * 1000.0,
        "cutover done; SQLite stays fenced while ferry runs"
    );
    conv.send(&Event::Done { detail }).await?;
    Ok(())
}

/// SQLite's `count(*)` of every shipped table, in one read transaction on a thread of its
/// own: started as soon as the fence holds (nothing moves in SQLite from then on), while the
/// drain runs.
fn start_sqlite_counts(
    src: &SourceRuntime,
) -> tokio::task::JoinHandle<anyhow::Result<Vec<(String, i64)>>> {
    let path = src.path.clone();
    let filter = src.ship_options.clone();
    tokio::task::spawn_blocking(move || {
        let conn = crate::sqlite_read::open_read_only(&path)?;
        conn.execute_batch("BEGIN")?;
        let mut out = Vec::new();
        for t in crate::sqlite_read::tables(&conn)? {
            if !filter.includes(&t.name) {
                continue;
            }
            let n: i64 = conn.query_row(
                &format!(
                    "SELECT count(*) FROM {}",
                    crate::sqlite_read::quote(&t.name)
                ),
                [],
                |r| r.get(0),
            )?;
            out.push((t.name, n));
        }
        conn.execute_batch("COMMIT")?;
        Ok(out)
    })
}

/// PostgreSQL's `count(*)` of these tables, each on a connection of its own (the counts of
/// the largest tables are most of the cutover's pause), compared with SQLite's.
async fn counts_equal(
    ctx: &RunContext,
    src: &SourceRuntime,
    sqlite: Vec<(String, i64)>,
) -> anyhow::Result<()> {
    let opts = map_options(src);
    let mut pg_counts = tokio::task::JoinSet::new();
    for (i, (table, _)) in sqlite.iter().enumerate() {
        let q = format!(
            "SELECT count(*) FROM {}",
            ferry_pg::ident::qualified(&opts.schema, &opts.target_table_name(table))
        );
        let target = ctx.target.clone();
        pg_counts.spawn(async move {
            let client = target.connect().await?;
            let n: i64 = client
                .query_one(&q, &[])
                .await
                .map_err(|e| anyhow::anyhow!("counting {q}: {e}"))?
                .get(0);
            anyhow::Ok((i, n))
        });
    }
    let mut pg = vec![0i64; sqlite.len()];
    while let Some(r) = pg_counts.join_next().await {
        let (i, n) = r??;
        pg[i] = n;
    }
    for ((table, n), p) in sqlite.iter().zip(pg) {
        anyhow::ensure!(
            p == *n,
            "source {}: table {table} has {n} rows in SQLite but {p} in PostgreSQL",
            src.id
        );
    }
    Ok(())
}

/// What moving a source's sequences needs, looked up before the fence (SQLite's schemas,
/// PostgreSQL's catalog, a connection), so that under the fence only the moves run.
struct SequencePlan {
    client: tokio_postgres::Client,
    maps: Vec<ferry_pg::mapping::TableMap>,
    sqlite_sequence: Option<ferry_pg::mapping::TableMap>,
}

impl SequencePlan {
    async fn run(&self) -> anyhow::Result<usize> {
        let moved =
            ferry_pg::advance_sequences(&self.client, &self.maps, self.sqlite_sequence.as_ref())
                .await?;
        Ok(moved.len())
    }
}

async fn plan_sequences(ctx: &RunContext, src: &SourceRuntime) -> anyhow::Result<SequencePlan> {
    let path = src.path.clone();
    let (schemas, seq_schema) = tokio::task::spawn_blocking(
        move || -> anyhow::Result<(Vec<ferry_core::TableSchema>, Option<ferry_core::TableSchema>)> {
            let conn = crate::sqlite_read::open_read_only(&path)?;
            let tables = crate::sqlite_read::tables(&conn)?;
            let schemas = tables
                .iter()
                .map(|t| crate::sqlite_read::table_schema(&conn, t).map_err(anyhow::Error::from))
                .collect::<anyhow::Result<Vec<_>>>()?;
            // sqlite_sequence (AUTOINCREMENT counters) is shipped like a table keyed by rowid.
            let has_seq: bool = conn.query_row(
                "SELECT count(*) > 0 FROM sqlite_schema WHERE type = 'table' AND name = 'sqlite_sequence'",
                [],
                |r| r.get(0),
            )?;
            let seq = if has_seq {
                let t = crate::sqlite_read::VerifyTable {
                    name: "sqlite_sequence".into(),
                    columns: vec!["name".into(), "seq".into()],
                    decl_types: vec![String::new(), String::new()],
                    key: vec![],
                };
                Some(crate::sqlite_read::table_schema(&conn, &t)?)
            } else {
                None
            };
            Ok((schemas, seq))
        },
    )
    .await??;
    let client = ctx.target.connect().await?;
    let opts = map_options(src);
    let mut maps = Vec::new();
    for s in &schemas {
        if !src.ship_options.includes(&s.name) {
            continue;
        }
        let name = opts.target_table_name(&s.name);
        if let Some(ct) = ferry_pg::find_table(&client, &opts.schema, &name).await? {
            let mut problems = Vec::new();
            if let Some(m) = ferry_pg::map_onto(s, &ct, opts.keep_case, &mut problems) {
                maps.push(m);
            }
        }
    }
    let mut sqlite_sequence = None;
    if let Some(seq) = &seq_schema {
        let name = opts.target_table_name("sqlite_sequence");
        if let Some(ct) = ferry_pg::find_table(&client, &opts.schema, &name).await? {
            let mut problems = Vec::new();
            sqlite_sequence = ferry_pg::map_onto(seq, &ct, opts.keep_case, &mut problems);
        }
    }
    Ok(SequencePlan {
        client,
        maps,
        sqlite_sequence,
    })
}
