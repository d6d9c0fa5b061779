//! A sample application that keeps changing a SQLite database, the way the applications
//! ferry serves do: users, jobs that move through states, settings upserted, an append-only
//! event table without a primary key, some blobs large enough to overflow a page.
//!
//! It runs as its own process (`ferry sample-app`), because ferry must never share a process
//! with the application's connections (closing any descriptor of the database file in a
//! process drops that process's SQLite locks). It measures what an application would feel:
//! its longest commit stall (busy waits included), so the cutover's write-unavailability
//! window can be checked independently. On SIGTERM/SIGINT it stops between transactions and
//! prints a JSON summary on stdout.

use anyhow::Context;
use rusqlite::{Connection, TransactionBehavior, params};
use serde::Serialize;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

pub const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS users (
    id INTEGER PRIMARY KEY,
    email TEXT NOT NULL UNIQUE,
    name TEXT,
    created_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP,
    active BOOLEAN NOT NULL DEFAULT 1
);
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id INTEGER NOT NULL REFERENCES users(id),
    state TEXT NOT NULL,
    payload BLOB,
    score REAL,
    updated_at TEXT
);
CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs(state);
CREATE TABLE IF NOT EXISTS settings (key TEXT PRIMARY KEY, value TEXT) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS events (ts REAL, kind TEXT, detail TEXT);
";

#[derive(Debug, Serialize, Default)]
pub struct SampleAppSummary {
    pub commits: u64,
    pub checkpoints: u64,
    pub busy_retries: u64,
    pub longest_stall_ms: f64,
    /// The longest stalls (at least [`STALL_RECORD_MS`], at most [`STALLS_KEPT`] of them),
    /// with when they began, so a stall can be attributed to what happened at that moment
    /// (a cutover's fence, or the machine's own hiccups).
    pub stalls: Vec<Stall>,
    pub last_job_id: i64,
    pub stopped_by: String,
    /// When the application moved to PostgreSQL (`--switch-to`), and what it committed there.
    pub switched_unix_micros: Option<i64>,
    pub pg_commits: u64,
    /// Jobs the application inserted on PostgreSQL.
    pub pg_job_ids: Vec<i64>,
}

#[derive(Debug, Serialize, Clone, Copy)]
pub struct Stall {
    /// Microseconds since the Unix epoch when the transaction began.
    pub began_unix_micros: i64,
    pub ms: f64,
}

/// Stalls shorter than this are not listed.
pub const STALL_RECORD_MS: f64 = 20.0;
/// How many of the longest stalls are listed.
pub const STALLS_KEPT: usize = 64;

pub struct SampleAppOptions {
    /// Transactions per second (0: as fast as possible).
    pub rate: u64,
    /// Stop after this long (None: until signalled).
    pub duration: Option<Duration>,
    /// Rows to create before the timed run (initial data for the snapshot).
    pub initial_users: u64,
    pub seed: u64,
    /// A checkpoint after every N commits (0: never).
    pub checkpoint_every: u64,
    /// PASSIVE, FULL, RESTART or TRUNCATE.
    pub checkpoint_mode: String,
    /// PostgreSQL URL and schema to move to when the flag is set (a cutover's switch).
    pub switch_to: Option<(String, String, Arc<AtomicBool>)>,
}

/// Creates the schema and initial data (idempotent).
pub fn prepare(db: &Path, initial_users: u64) -> anyhow::Result<()> {
    let conn = Connection::open(db).with_context(|| format!("opening {}", db.display()))?;
    conn.pragma_update(None, "journal_mode", "wal")?;
    conn.execute_batch(SCHEMA)?;
    let have: i64 = conn.query_row("SELECT count(*) FROM users", [], |r| r.get(0))?;
    if have == 0 && initial_users > 0 {
        let tx = conn.unchecked_transaction()?;
        for i in 0..initial_users as i64 {
            tx.execute(
                "INSERT INTO users (email, name, active) VALUES (?1, ?2, ?3)",
                params![
                    format!("user{i}@example.com"),
                    format!("User {i}"),
                    i % 7 != 0
                ],
            )?;
            tx.execute(
                "INSERT INTO jobs (user_id, state, payload, score, updated_at) VALUES (?1, 'queued', ?2, ?3, datetime('now'))",
                params![i + 1, vec![(i % 251) as u8; (i as usize * 37) % 3000], (i as f64) * 0.5],
            )?;
        }
        tx.execute(
            "INSERT OR REPLACE INTO settings VALUES ('schema_version', '1')",
            [],
        )?;
        tx.commit()?;
    }
    Ok(())
}

/// xorshift: deterministic per seed, no dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

pub fn run(
    db: &Path,
    opts: &SampleAppOptions,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<SampleAppSummary> {
    prepare(db, opts.initial_users)?;
    let mut conn = Connection::open(db).with_context(|| format!("opening {}", db.display()))?;
    // A long busy wait: during the cutover fence the application waits, it does not fail;
    // a stop request ends the wait (the stall so far still counts).
    STOP_BUSY_WAIT.store(false, Ordering::SeqCst);
    conn.busy_handler(Some(wait_while_busy))?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    let mut rng = Rng(opts.seed.max(1));
    let mut summary = SampleAppSummary::default();
    let started = Instant::now();
    let mut n: u64 = 0;
    let switch = opts.switch_to.as_ref().map(|(_, _, f)| f.clone());
    let watcher = {
        let stop = stop.clone();
        let switch = switch.clone();
        std::thread::spawn(move || {
            // Ends when asked to stop or to switch (a write SQLite holds up gives up: the
            // application moves on), or when the run ends by itself (duration).
            let switching = || switch.as_ref().is_some_and(|f| f.load(Ordering::SeqCst));
            while !stop.load(Ordering::SeqCst)
                && !STOP_BUSY_WAIT.load(Ordering::SeqCst)
                && !switching()
            {
                std::thread::sleep(Duration::from_millis(1));
            }
            STOP_BUSY_WAIT.store(true, Ordering::SeqCst);
        })
    };
    // A stall lasts from the start of the first attempt that did not commit to the next
    // commit, wherever that is (a write given up during a switch continues on PostgreSQL).
    let mut stall_began: Option<(Instant, i64)> = None;
    let mut on_postgres: Option<PgApp> = None;
    loop {
        if stop.load(Ordering::Relaxed) {
            summary.stopped_by = "signal".into();
            break;
        }
        if opts.duration.is_some_and(|d| started.elapsed() >= d) {
            summary.stopped_by = "duration".into();
            break;
        }
        if opts.rate > 0 {
            let due = started + Duration::from_secs_f64(n as f64 / opts.rate as f64);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        }
        n += 1;
        let (t0, began_unix_micros) =
            stall_began.unwrap_or_else(|| (Instant::now(), ferry_core::now_micros()));
        if on_postgres.is_none()
            && let (Some((url, schema, flag)), Some(_)) = (&opts.switch_to, &switch)
            && flag.load(Ordering::SeqCst)
        {
            on_postgres = Some(PgApp::connect(url, schema)?);
            summary.switched_unix_micros = Some(ferry_core::now_micros());
        }
        let result = match &mut on_postgres {
            Some(pg) => match pg.one_transaction(&mut rng, n) {
                Ok(job) => {
                    summary.pg_commits += 1;
                    summary.pg_job_ids.push(job);
                    Ok(0)
                }
                Err(e) => return Err(e).context("sample application transaction on PostgreSQL"),
            },
            None => one_transaction(&mut conn, &mut rng, n),
        };
        if result.as_ref().is_err_and(is_busy) {
            // Not committed: the stall goes on.
            stall_began = Some((t0, began_unix_micros));
            summary.busy_retries += 1;
            continue;
        }
        stall_began = None;
        let stall = t0.elapsed().as_secs_f64() * 1000.0;
        // A transaction that waited and then gave up (stopped, or busy past the limit) was
        // a stall too: the application could not write for that long.
        if stall > summary.longest_stall_ms {
            summary.longest_stall_ms = stall;
        }
        if stall >= STALL_RECORD_MS {
            summary.stalls.push(Stall {
                began_unix_micros,
                ms: stall,
            });
            if summary.stalls.len() > STALLS_KEPT {
                summary.stalls.sort_by(|a, b| b.ms.total_cmp(&a.ms));
                summary.stalls.truncate(STALLS_KEPT);
            }
        }
        match result {
            Ok(last_job) => {
                summary.commits += 1;
                if last_job > 0 {
                    summary.last_job_id = last_job;
                }
                if opts.checkpoint_every > 0
                    && on_postgres.is_none()
                    && summary.commits.is_multiple_of(opts.checkpoint_every)
                {
                    let sql = format!("PRAGMA wal_checkpoint({})", opts.checkpoint_mode);
                    match conn.query_row(&sql, [], |r| r.get::<_, i64>(0)) {
                        Ok(_) => summary.checkpoints += 1,
                        Err(e) if is_busy(&e) => summary.busy_retries += 1,
                        Err(e) => return Err(e).context("sample application checkpoint"),
                    }
                }
            }
            Err(e) => return Err(e).context("sample application transaction"),
        }
    }
    STOP_BUSY_WAIT.store(true, Ordering::SeqCst);
    let _ = watcher.join();
    Ok(summary)
}

/// Set when the application is asked to stop: a busy wait in progress gives up.
static STOP_BUSY_WAIT: AtomicBool = AtomicBool::new(false);

/// SQLite's busy handler: retry every millisecond for up to 60 s, unless stopping.
fn wait_while_busy(attempt: i32) -> bool {
    if STOP_BUSY_WAIT.load(Ordering::SeqCst) || attempt >= 60_000 {
        return false;
    }
    std::thread::sleep(Duration::from_millis(1));
    true
}

fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
    )
}

fn one_transaction(conn: &mut Connection, rng: &mut Rng, n: u64) -> Result<i64, rusqlite::Error> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let users: i64 = tx.query_row("SELECT coalesce(max(id), 0) FROM users", [], |r| r.get(0))?;
    if users == 0 || rng.below(5) == 0 {
        tx.execute(
            "INSERT INTO users (email, name) VALUES (?1, ?2)",
            params![
                format!("new{}-{}@example.com", users + 1, rng.next() % 1_000_000),
                format!("New user {n}")
            ],
        )?;
    }
    let users: i64 = tx.query_row("SELECT max(id) FROM users", [], |r| r.get(0))?;
    let payload_len = if rng.below(20) == 0 {
        5000 + rng.below(10_000)
    } else {
        rng.below(200)
    } as usize;
    tx.execute(
        "INSERT INTO jobs (user_id, state, payload, score, updated_at) VALUES (?1, 'queued', ?2, ?3, datetime('now'))",
        params![1 + rng.below(users as u64) as i64, vec![(n % 256) as u8; payload_len], rng.below(1000) as f64 / 8.0],
    )?;
    let job = tx.last_insert_rowid();
    let target = 1 + rng.below(job as u64) as i64;
    let next = ["running", "done", "failed"][rng.below(3) as usize];
    tx.execute(
        "UPDATE jobs SET state = ?1, updated_at = datetime('now') WHERE id = ?2",
        params![next, target],
    )?;
    tx.execute(
        "INSERT INTO events (ts, kind, detail) VALUES (julianday('now'), ?1, ?2)",
        params![next, format!("job {target}")],
    )?;
    if rng.below(10) == 0 {
        tx.execute(
            "DELETE FROM events WHERE rowid IN (SELECT rowid FROM events ORDER BY rowid LIMIT 3)",
            [],
        )?;
    }
    if rng.below(4) == 0 {
        tx.execute(
            "INSERT INTO settings (key, value) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            params![format!("k{}", rng.below(20)), format!("v{n}")],
        )?;
    }
    if rng.below(50) == 0 {
        tx.execute(
            "UPDATE users SET active = NOT active WHERE id = ?1",
            params![1 + rng.below(users as u64) as i64],
        )?;
    }
    tx.commit()?;
    Ok(job)
}

/// The sample application after its switch: the same kind of work on PostgreSQL, the way the
/// real application continues after a cutover (new jobs take ids from the sequences the
/// cutover moved past SQLite's highest ids).
struct PgApp {
    rt: tokio::runtime::Runtime,
    client: tokio_postgres::Client,
    schema: String,
}

impl PgApp {
    fn connect(url: &str, schema: &str) -> anyhow::Result<PgApp> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (client, connection) = rt
            .block_on(tokio_postgres::connect(url, tokio_postgres::NoTls))
            .context("the sample application connecting to PostgreSQL")?;
        rt.spawn(connection);
        Ok(PgApp {
            rt,
            client,
            schema: schema.to_string(),
        })
    }

    fn one_transaction(&mut self, rng: &mut Rng, n: u64) -> anyhow::Result<i64> {
        let s = crate::sqlite_read::quote(&self.schema);
        let user = 1 + rng.below(50) as i64;
        let payload = vec![(n % 256) as u8; rng.below(200) as usize];
        let score = rng.below(1000) as f64 / 8.0;
        let next = ["running", "done", "failed"][rng.below(3) as usize];
        let setting = format!("k{}", rng.below(20));
        let value = format!("v{n}");
        self.rt.block_on(async {
            let tx = self.client.transaction().await?;
            let job: i64 = tx
                .query_one(
                    &format!("INSERT INTO {s}.jobs (user_id, state, payload, score, updated_at) VALUES ($1, 'queued', $2, $3, now()::text) RETURNING id"),
                    &[&user, &payload, &score],
                )
                .await?
                .get(0);
            tx.execute(
                &format!("UPDATE {s}.jobs SET state = $1, updated_at = now()::text WHERE id = $2"),
                &[&next, &(1 + (rng.below(job as u64) as i64))],
            )
            .await?;
            tx.execute(
                &format!("INSERT INTO {s}.settings (key, value) VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET value = excluded.value"),
                &[&setting, &value],
            )
            .await?;
            tx.commit().await?;
            anyhow::Ok(job)
        })
    }
}
