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
    let live = args.state_dir.as_ref().and_then(|d| {
        crate::runfile::RunFile::read_live(&d.join("run.json")).map(|rf| (d.clone(), rf))
    });
    let mut results = match live {
        None => verify_tables(&rt, &target, &args.source, &map_opts, None)?,
        Some((dir, rf)) => {
            let log_dir = crate::cmd::log::log_dir(dir, None)?;
            let log = ferry_log::open_read_only(&log_dir)
                .with_context(|| format!("opening the log in {}", log_dir.display()))?;
            let l0 = log.durable_lsn()?;
            wait_for_shipped(&rf.admin_addr, l0, Duration::from_secs(120))?;
            let mut results = verify_tables(&rt, &target, &args.source, &map_opts, None)?;
            // Every commit SQLite's read saw must be in the log before `l1` is taken, or its
            // key would not be set aside: wait for a capture pass that began after the read
            // and found nothing unread. (A fixed pause was not enough on a loaded machine,
            // where capture can wait seconds for the application's checkpoint.)
            let read_done = ferry_core::json::micros_to_rfc3339(ferry_core::now_micros());
            wait_for_read_after(&rf.admin_addr, &read_done, Duration::from_secs(120))?;
            let l1 = log.durable_lsn()?;
            wait_for_shipped(&rf.admin_addr, l1, Duration::from_secs(120))?;
            let changed = keys_changed(log.reader(l0.next())?, l1)?;
            set_aside_in_flight(&mut results, &changed);
            results
        }
    };
    results.sort_by(|a, b| a.table.cmp(&b.table));
    print_report(&results);
    let equal = results.iter().all(TableResult::is_equal);
    Ok(if equal {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
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

/// Compares every table (or `only` these) of `db` with PostgreSQL.
pub fn verify_tables(
    rt: &tokio::runtime::Runtime,
    target: &PgTarget,
    db: &std::path::Path,
    map_opts: &MapOptions,
    only: Option<&[String]>,
) -> anyhow::Result<Vec<TableResult>> {
    let conn = sqlite_read::open_read_only(db)
        .with_context(|| format!("opening {} read-only", db.display()))?;
    // One read transaction: every table from the same snapshot.
    conn.execute_batch("BEGIN")?;
    let tables: Vec<VerifyTable> = sqlite_read::tables(&conn)?
        .into_iter()
        .filter(|t| only.is_none_or(|o| o.contains(&t.name)))
        .collect();
    let client = rt
        .block_on(target.connect())
        .context("connecting to PostgreSQL")?;
    let progress = crate::verify_progress::VerifyProgress::new(tables.len());
    let mut out = Vec::new();
    for t in &tables {
        progress.start_table(&t.name);
        let schema: TableSchema = sqlite_read::table_schema(&conn, t)?;
        let target_name = map_opts.target_table_name(&t.name);
        let found = rt.block_on(find_table(&client, &map_opts.schema, &target_name))?;
        let mut problems = Vec::new();
        let map = found
            .as_ref()
            .and_then(|ct| map_onto(&schema, ct, map_opts.keep_case, &mut problems));
        let comparison = match &map {
            None => {
                // The table (or its columns) is not in PostgreSQL: every row is missing.
                let mut c = Comparison::default();
                sqlite_read::for_each_row(&conn, t, |k, _| {
                    progress.rows().row();
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
                if !problems.is_empty() {
                    tracing::warn!(table = %t.name, "{}", problems.join("; "));
                }
                c
            }
            Some(map) => compare_table(rt, &client, &conn, t, map, progress.rows())?,
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
        progress.table_done();
    }
    progress.finish();
    conn.execute_batch("COMMIT")?;
    Ok(out)
}

fn compare_table(
    rt: &tokio::runtime::Runtime,
    client: &tokio_postgres::Client,
    conn: &rusqlite::Connection,
    t: &VerifyTable,
    map: &TableMap,
    progress: &crate::verify_progress::RowProgress,
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
            Ok(Some(r)) => Some({
                progress.row();
                sqlite_read::key_and_row(t, r)
                    .map(|(k, v)| (k.clone(), (k, v)))
                    .map_err(anyhow::Error::new)
            }),
            Ok(None) => None,
            Err(e) => Some(Err(anyhow::Error::new(e))),
        });
        let keyed_by_rowid = map.source.keyed_by_rowid();
        let result = compare_sorted_keeping(
            left,
            rx,
            |a: &Vec<Value>, b: &Vec<Value>| a.cmp(b),
            |l: &(Vec<Value>, Vec<Value>), r: &Vec<ferry_pg::types::Datum>| {
                // For rowid-keyed tables the rowid is not in the row image: the key carries it.
                let rowid = if keyed_by_rowid {
                    l.0.first().and_then(Value::as_i64)
                } else {
                    None
                };
                ferry_pg::row_matches(map, &l.1, rowid, r)
            },
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
