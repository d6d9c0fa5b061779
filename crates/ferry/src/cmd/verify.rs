//! `ferry verify`: proves row by row that PostgreSQL holds what SQLite holds.
//!
//! Both sides are streamed in key order — SQLite from one read snapshot, PostgreSQL by
//! keyset pages with text keys in `COLLATE "C"` (SQLite's BINARY order) — and merged with
//! `ferry_core::compare::compare_sorted`; a pair of rows is equal when converting the SQLite
//! values the way the shipper does gives PostgreSQL's values (ferry-pg's `row_matches`), so a
//! faithful conversion is never reported as a difference and a real one never hidden.
//!
//! Against a live source replicated by `ferry run` (`--state-dir`), the two sides are read
//! at different moments, so a change in flight looks like a difference. The log says which
//! keys changed: verify notes the log's durable LSN before reading (and waits until
//! PostgreSQL has applied it), reads, waits until capture has read the source to its end
//! after the read (the status's `source_read_at`) and PostgreSQL has applied that, and sets
//! aside the differences whose keys were changed by a record in between. A key no record touched
//! held one value in SQLite for the whole read and PostgreSQL had applied it, so its
//! comparison is exact. (The cutover re-verifies the tables that changed under its fence,
//! where nothing moves.)
//!
//! Exit codes: 0 equal, 1 different, 2 error.

use crate::cli::VerifyArgs;
use crate::sqlite_read::{self, VerifyTable};
use anyhow::Context;
use ferry_core::compare::{Comparison, compare_sorted_keeping};
use ferry_core::{Lsn, TableSchema, Value};
use ferry_pg::mapping::{MapOptions, TableMap};
use ferry_pg::{PgTarget, TargetRowReader, find_table, map_onto};
use std::collections::{HashMap, HashSet};
use std::process::ExitCode;
use std::time::{Duration, Instant};

const PAGE: usize = 5_000;
/// Differing keys kept per table; beyond this a table simply counts as different.
pub const MAX_DIFF_KEYS: usize = 100_000;

pub type ChangedKeys = HashMap<String, HashSet<Vec<Value>>>;

pub struct TableResult {
    pub table: String,
    pub target: String,
    pub comparison: Comparison<Vec<Value>>,
    pub map: Option<TableMap>,
    /// Differences whose keys changed in the log while verify read (live mode), already
    /// taken out of the comparison's counts.
    pub in_flight: u64,
}

impl TableResult {
    /// Equal, once the differences in flight are set aside.
    pub fn is_equal(&self) -> bool {
        self.comparison.is_equal()
    }
}

/// Keys of every row change in the log records read from `reader` up to `to`, per table.
pub fn keys_changed(
    reader: impl Iterator<Item = Result<(Lsn, Vec<u8>), ferry_log::LogError>>,
    to: Lsn,
) -> anyhow::Result<ChangedKeys> {
    let mut out = ChangedKeys::new();
    for item in reader {
        let (lsn, payload) = item?;
        if lsn > to {
            break;
        }
        if let ferry_core::Record::Transaction(t) = ferry_core::Record::decode(&payload)? {
            for c in t.changes {
                out.entry(c.table).or_default().insert(c.key);
            }
        }
    }
    Ok(out)
}

/// Sets aside the differences whose keys are in `changed`.
pub fn set_aside_in_flight(results: &mut [TableResult], changed: &ChangedKeys) {
    for r in results {
        let Some(keys) = changed.get(&r.table) else {
            continue;
        };
        // Too many differences to have kept every key: no claim about flight (None).
        if let Some(n) = r.comparison.set_aside(|k| keys.contains(k)) {
            r.in_flight += n;
        }
    }
}

/// Live mode re-checks the keys set aside as in flight this many times before it gives up
/// on them (a key written on every pass is reported as unsettled, not as equal).
const SETTLE_ROUNDS: usize = 8;

pub fn run(args: VerifyArgs) -> anyhow::Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let target = crate::cmd::ship::target(&args.target)?;
    let map_opts = MapOptions {
        schema: args.target.schema.clone(),
        table_prefix: args.target.table_prefix.clone(),
        keep_case: false,
        type_overrides: Default::default(),
    };
    let filter = ferry_pg::ShipOptions {
        include: args.include.clone(),
        exclude: args.exclude.clone(),
        ..Default::default()
    };
    let includes = |t: &str| filter.includes(t);
    let live = args.state_dir.as_ref().and_then(|d| {
        crate::runfile::RunFile::read_live(&d.join("run.json")).map(|rf| (d.clone(), rf))
    });
    let mut unsettled = 0;
    let mut results = match live {
        None => verify_tables(&rt, &target, &args.source, &map_opts, &includes, Rows::All)?,
        Some((dir, rf)) => {
            let log_dir = crate::cmd::log::log_dir(dir, args.source_id.as_deref())?;
            let log = ferry_log::open_read_only(&log_dir)
                .with_context(|| format!("opening the log in {}", log_dir.display()))?;
            let pass = |rows: Rows<'_>| -> anyhow::Result<(Vec<TableResult>, ChangedKeys)> {
                let l0 = log.durable_lsn()?;
                wait_for_shipped(&rf.admin_addr, l0, Duration::from_secs(120))?;
                let results =
                    verify_tables(&rt, &target, &args.source, &map_opts, &includes, rows)?;
                // Every commit SQLite's read saw must be in the log before `l1` is taken, or
                // its key would not be set aside: wait for a capture pass that began after the
                // read and found nothing unread. (A fixed pause was not enough on a loaded
                // machine, where capture can wait seconds for the application's checkpoint.)
                let read_done = ferry_core::json::micros_to_rfc3339(ferry_core::now_micros());
                wait_for_read_after(&rf.admin_addr, &read_done, Duration::from_secs(120))?;
                let l1 = log.durable_lsn()?;
                wait_for_shipped(&rf.admin_addr, l1, Duration::from_secs(120))?;
                Ok((results, keys_changed(log.reader(l0.next())?, l1)?))
            };
            let (mut results, changed) = pass(Rows::All)?;
            // A difference whose key changed while verify read may be a change in flight, or a
            // real difference on a busy row: compare those keys again, by key, until they
            // were not written during a pass.
            let mut pending = in_flight_keys(&results, &changed);
            set_aside_in_flight(&mut results, &changed);
            for _ in 0..SETTLE_ROUNDS {
                if pending.values().all(HashSet::is_empty) {
                    break;
                }
                let (again, changed) = pass(Rows::Keys(&pending))?;
                let still = in_flight_keys(&again, &changed);
                for r in again {
                    let Some(total) = results.iter_mut().find(|t| t.table == r.table) else {
                        continue;
                    };
                    let mut c = r.comparison;
                    // Keys still in flight stay pending; the rest is settled: a difference
                    // there is real.
                    c.set_aside(|k| still.get(&r.table).is_some_and(|s| s.contains(k)));
                    total.comparison.absorb_differences(c);
                }
                pending = still;
            }
            for r in &mut results {
                r.in_flight = pending.get(&r.table).map_or(0, |k| k.len() as u64);
            }
            unsettled = pending.values().map(HashSet::len).sum::<usize>();
            results
        }
    };
    results.sort_by(|a, b| a.table.cmp(&b.table));
    print_report(&results);
    if unsettled > 0 {
        println!(
            "{unsettled} rows changed during each of {SETTLE_ROUNDS} re-checks and could not be compared at rest; \
             the cutover compares them under its fence (or run verify again)"
        );
    }
    let equal = results.iter().all(TableResult::is_equal);
    Ok(if equal {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// The differing keys of `results` that `changed` touched: differences that may be changes
/// in flight.
fn in_flight_keys(results: &[TableResult], changed: &ChangedKeys) -> ChangedKeys {
    let mut out = ChangedKeys::new();
    for r in results {
        let Some(keys) = changed.get(&r.table) else {
            continue;
        };
        for (_, k) in &r.comparison.differing_keys {
            if keys.contains(k) {
                out.entry(r.table.clone()).or_default().insert(k.clone());
            }
        }
    }
    out
}

/// Waits until capture has read every SQLite source to its end in a pass that began at or
/// after `instant` (RFC 3339, the format of the status's `source_read_at`, which compares as
/// text).
fn wait_for_read_after(admin: &str, instant: &str, timeout: Duration) -> anyhow::Result<()> {
    wait_for_status(
        admin,
        timeout,
        "capture to read the source to its end after verify read it",
        |s| s.kind != "sqlite" || s.source_read_at.as_deref().is_some_and(|t| t >= instant),
    )
}

fn wait_for_shipped(admin: &str, lsn: Lsn, timeout: Duration) -> anyhow::Result<()> {
    wait_for_status(
        admin,
        timeout,
        &format!("PostgreSQL to reach LSN {lsn}"),
        |s| s.shipped_lsn >= lsn.0,
    )
}

/// Polls the running ferry's `/status` until every source satisfies `done`; a source in
/// error or the timeout ends the wait with an error naming `what`.
fn wait_for_status(
    admin: &str,
    timeout: Duration,
    what: &str,
    done: impl Fn(&crate::status::SourceStatus) -> bool,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let (code, _, body) = crate::admin::http_get(admin, "/status", None)
            .context("asking the running ferry for its position")?;
        anyhow::ensure!(
            code == 200,
            "the running ferry answered /status with HTTP {code}"
        );
        let r: crate::status::StatusReport = serde_json::from_str(&body)?;
        if let Some(e) = r.sources.iter().find_map(|s| s.last_error.clone()) {
            anyhow::bail!("the running ferry reports an error: {e}");
        }
        if r.sources.iter().all(&done) {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "waited {timeout:?} for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Which rows verify compares.
#[derive(Clone, Copy)]
pub enum Rows<'a> {
    /// Every row of every table.
    All,
    /// Only these keys; a table without an entry is not read. The cutover compares under its
    /// fence only what changed since its full pre-verify, so its write pause does not grow
    /// with the tables.
    Keys(&'a ChangedKeys),
}

/// Compares the tables of `db` that `includes` selects (the tables `ferry run` ships) with
/// PostgreSQL: every row, or only some keys.
pub fn verify_tables(
    rt: &tokio::runtime::Runtime,
    target: &PgTarget,
    db: &std::path::Path,
    map_opts: &MapOptions,
    includes: &dyn Fn(&str) -> bool,
    rows: Rows<'_>,
) -> anyhow::Result<Vec<TableResult>> {
    let conn = sqlite_read::open_read_only(db)
        .with_context(|| format!("opening {} read-only", db.display()))?;
    // One read transaction: every table from the same snapshot.
    conn.execute_batch("BEGIN")?;
    let tables: Vec<VerifyTable> = sqlite_read::tables(&conn)?
        .into_iter()
        .filter(|t| includes(&t.name))
        .filter(|t| match rows {
            Rows::All => true,
            Rows::Keys(keys) => keys.get(&t.name).is_some_and(|k| !k.is_empty()),
        })
        .collect();
    let client = rt
        .block_on(target.connect())
        .context("connecting to PostgreSQL")?;
    let progress = indicatif::ProgressBar::new(tables.len() as u64).with_style(
        indicatif::ProgressStyle::with_template("verify {bar:30} {pos}/{len} tables {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    if matches!(rows, Rows::Keys(_)) {
        progress.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let mut out = Vec::new();
    for t in &tables {
        progress.set_message(t.name.clone());
        let schema: TableSchema = sqlite_read::table_schema(&conn, t)?;
        let target_name = map_opts.target_table_name(&t.name);
        let found = rt.block_on(find_table(&client, &map_opts.schema, &target_name))?;
        let mut problems = Vec::new();
        let map = found
            .as_ref()
            .and_then(|ct| map_onto(&schema, ct, map_opts.keep_case, &mut problems));
        if map.is_none() && !problems.is_empty() {
            eprintln!("table {:?}: {}", t.name, problems.join("; "));
        }
        let comparison = match (rows, &map) {
            (Rows::Keys(keys), map) => {
                let keys = keys.get(&t.name).cloned().unwrap_or_default();
                compare_keys(rt, &client, &conn, t, map.as_ref(), keys)?
            }
            (Rows::All, None) => {
                // The table (or its columns) is not in PostgreSQL: every row is missing.
                let mut c = Comparison::default();
                sqlite_read::for_each_row(&conn, t, |k, _| {
                    c.left_rows += 1;
                    c.missing += 1;
                    if c.differing_keys.len() < MAX_DIFF_KEYS {
                        c.differing_keys
                            .push((ferry_core::compare::DiffKind::Missing, k.clone()));
                    }
                    if c.first_missing.len() < ferry_core::compare::EXAMPLE_KEYS {
                        c.first_missing.push(k);
                    }
                    Ok(())
                })?;
                c
            }
            (Rows::All, Some(map)) => compare_table(rt, &client, &conn, t, map)?,
        };
        out.push(TableResult {
            table: t.name.clone(),
            target: map.as_ref().map_or_else(
                || format!("{}.{} (missing)", map_opts.schema, target_name),
                TableMap::qualified,
            ),
            comparison,
            map,
            in_flight: 0,
        });
        progress.inc(1);
    }
    progress.finish_and_clear();
    conn.execute_batch("COMMIT")?;
    Ok(out)
}

/// The comparison rule: converting the SQLite row the way the shipper does gives
/// PostgreSQL's values. For rowid-keyed tables the rowid is not in the row image: the key
/// carries it.
fn same_row(
    map: &TableMap,
) -> impl Fn(&(Vec<Value>, Vec<Value>), &Vec<ferry_pg::types::Datum>) -> bool + '_ {
    let keyed_by_rowid = map.source.keyed_by_rowid();
    move |l, r| {
        let rowid = if keyed_by_rowid {
            l.0.first().and_then(Value::as_i64)
        } else {
            None
        };
        ferry_pg::row_matches(map, &l.1, rowid, r)
    }
}

/// Compares the rows of `t` with these keys: SQLite's read by key inside the caller's read
/// transaction, PostgreSQL's by key in chunks; both sorted by key and merged.
fn compare_keys(
    rt: &tokio::runtime::Runtime,
    client: &tokio_postgres::Client,
    conn: &rusqlite::Connection,
    t: &VerifyTable,
    map: Option<&TableMap>,
    keys: HashSet<Vec<Value>>,
) -> anyhow::Result<Comparison<Vec<Value>>> {
    let mut keys: Vec<Vec<Value>> = keys.into_iter().collect();
    keys.sort();
    let mut stmt = conn.prepare(&sqlite_read::select_by_key(t))?;
    let mut left: Vec<(Vec<Value>, Vec<Value>)> = Vec::new();
    for k in &keys {
        let mut rows = stmt.query(rusqlite::params_from_iter(k.iter().map(sqlite_read::param)))?;
        if let Some(r) = rows.next()? {
            left.push(sqlite_read::key_and_row(t, r)?);
        }
    }
    left.sort_by(|a, b| a.0.cmp(&b.0));
    left.dedup_by(|a, b| a.0 == b.0);
    let mut right = match map {
        Some(map) => rt.block_on(ferry_pg::rows_with_keys(client, map, &keys, PAGE))?,
        None => Vec::new(),
    };
    right.sort_by(|a, b| a.0.cmp(&b.0));
    let left = left
        .into_iter()
        .map(|(k, v)| Ok::<_, anyhow::Error>((k.clone(), (k, v))));
    let right = right.into_iter().map(Ok::<_, anyhow::Error>);
    let result = match map {
        Some(map) => {
            compare_sorted_keeping(left, right, |a, b| a.cmp(b), same_row(map), MAX_DIFF_KEYS)
        }
        None => compare_sorted_keeping(left, right, |a, b| a.cmp(b), |_, _| false, MAX_DIFF_KEYS),
    };
    match result {
        Ok(c) => Ok(c),
        Err(ferry_core::compare::CompareError::Stream(e)) => Err(e),
        Err(e) => Err(anyhow::anyhow!("{e} in table {}", t.name)),
    }
}

fn compare_table(
    rt: &tokio::runtime::Runtime,
    client: &tokio_postgres::Client,
    conn: &rusqlite::Connection,
    t: &VerifyTable,
    map: &TableMap,
) -> anyhow::Result<Comparison<Vec<Value>>> {
    // PostgreSQL's pages from a scoped thread into a bounded channel; SQLite's rows read here
    // (a rusqlite connection cannot be shared between threads).
    std::thread::scope(|scope| {
        let (tx, rx) = std::sync::mpsc::sync_channel::<anyhow::Result<ferry_pg::TargetRow>>(PAGE);
        let pg_map = map.clone();
        scope.spawn(move || {
            let mut pg = TargetRowReader::new(pg_map, PAGE);
            loop {
                match rt.block_on(pg.next_page(client)) {
                    Ok(rows) if rows.is_empty() => return,
                    Ok(rows) => {
                        for row in rows {
                            if tx.send(Ok(row)).is_err() {
                                return;
                            }
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Err(anyhow::Error::new(e)));
                        return;
                    }
                }
            }
        });
        let mut stmt = conn.prepare(&sqlite_read::select_in_key_order(t))?;
        let mut rows = stmt.query([])?;
        let left = std::iter::from_fn(|| match rows.next() {
            Ok(Some(r)) => Some(
                sqlite_read::key_and_row(t, r)
                    .map(|(k, v)| (k.clone(), (k, v)))
                    .map_err(anyhow::Error::new),
            ),
            Ok(None) => None,
            Err(e) => Some(Err(anyhow::Error::new(e))),
        });
        let result = compare_sorted_keeping(
            left,
            rx,
            |a: &Vec<Value>, b: &Vec<Value>| a.cmp(b),
            same_row(map),
            MAX_DIFF_KEYS,
        );
        match result {
            Ok(c) => Ok(c),
            Err(ferry_core::compare::CompareError::Stream(e)) => Err(e),
            Err(e) => Err(anyhow::anyhow!("{e} in table {}", t.name)),
        }
    })
}

fn print_report(results: &[TableResult]) {
    println!(
        "{:<28} {:<36} {:>10} {:>10} {:>8} {:>8} {:>9} {:>9}",
        "table", "PostgreSQL", "sqlite", "postgres", "missing", "extra", "different", "in flight"
    );
    for r in results {
        let c = &r.comparison;
        println!(
            "{:<28} {:<36} {:>10} {:>10} {:>8} {:>8} {:>9} {:>9}",
            r.table,
            r.target,
            c.left_rows,
            c.right_rows,
            c.missing,
            c.extra,
            c.different,
            r.in_flight
        );
        if r.is_equal() {
            continue;
        }
        let describe = |k: &Vec<Value>| match &r.map {
            Some(m) => m.describe_key(k),
            None => format!("{k:?}"),
        };
        for (what, keys) in [
            ("missing in PostgreSQL", &c.first_missing),
            ("only in PostgreSQL", &c.first_extra),
            ("different", &c.first_different),
        ] {
            if !keys.is_empty() {
                let shown: Vec<String> = keys.iter().map(describe).collect();
                println!("    {what}: {}", shown.join(", "));
            }
        }
    }
    let diff = results.iter().filter(|r| !r.is_equal()).count();
    let flight: u64 = results.iter().map(|r| r.in_flight).sum();
    let note = if flight > 0 {
        format!(" ({flight} keys changed while verifying were set aside)")
    } else {
        String::new()
    };
    if diff == 0 {
        println!("equal: {} tables{note}", results.len());
    } else {
        println!("DIFFERENT: {diff} of {} tables{note}", results.len());
    }
}
