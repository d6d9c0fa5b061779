//! The shipper: initial load, then exactly-once streaming apply, resumed from
//! `ferry.progress` after any failure.
//!
//! Order of operations and why:
//! 1. Connect; try `session_replication_role = replica` (foreign-key triggers and user
//!    triggers off while applying states the source already validated); a role that may not
//!    set it applies with deferrable constraints instead. Create `ferry.progress` if missing.
//! 2. Read `ferry.progress`. A different log id is refused. No row: the log's first record
//!    decides — a `SnapshotBegin` starts the initial load, anything else streams from the
//!    start (tables come from `CreateTable` schema changes).
//! 3. Initial load (`create` mode): a first pass over the snapshot range profiles every
//!    column and picks its type; one transaction creates the tables (with primary keys) and
//!    the progress rows (`loading`); a second pass COPYs each table in its own transaction
//!    on one of several connections and marks it `loaded` in that same transaction; at
//!    `SnapshotEnd` one transaction adds UNIQUE constraints, indexes and foreign keys, moves
//!    sequences and sets the source `streaming` at the snapshot's last LSN. A crash anywhere
//!    reloads only tables not yet `loaded` (each table's load is one transaction, so an
//!    unfinished table holds nothing). `existing` mode maps onto the application's tables
//!    (every unmatched column reported before a row is copied) and upserts by key,
//!    reconciling rows the application inserted itself.
//! 4. Streaming: batches of whole source transactions (bounded by records, bytes and time;
//!    a transaction with schema changes starts a batch of its own), folded to the net effect
//!    and applied set-wise with the progress advance (compare-and-set on the previous LSN)
//!    in ONE PostgreSQL transaction. On a unique or foreign-key violation the batch is
//!    retried one source transaction at a time, and a single transaction that still
//!    violates is applied by delete-then-insert.
//! 5. Any transient failure (connection lost, server restarting, a COMMIT whose outcome is
//!    unknown) drops the connection and restarts from step 1 with backoff: re-reading
//!    `ferry.progress` is what resolves an unknown commit outcome — if the commit happened
//!    the LSN says so and the batch is not applied again.

use crate::apply::{self, ApplyCounts, Strategy, TableDelta};
use crate::catalog;
use crate::error::PgError;
use crate::ident::{qualified, quote_ident};
use crate::mapping::{self, IndexDef, MapNotice, MapOptions, TableMap};
use crate::progress::{self, NewProgress, Progress, SourceState, TableState};
use crate::source::RecordSource;
use crate::status::{LoadProgress, ShipEvent, ShipStats, ShipStatus, ShipSummary, TableStatus};
use crate::target::PgTarget;
use crate::types::ColumnProfile;
use ferry_core::{
    Lsn, Record, SchemaChange, SchemaChangeKind, SnapshotBegin, SnapshotRow, TableSchema,
    Transaction,
};
use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio_postgres::Client;

/// Where the tables come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TargetMode {
    /// ferry creates the schema from SQLite's.
    Create,
    /// The application created its schema in PostgreSQL; ferry maps onto it.
    Existing,
}

impl TargetMode {
    pub fn as_str(self) -> &'static str {
        match self {
            TargetMode::Create => "create",
            TargetMode::Existing => "existing",
        }
    }
}

/// Defaults for [`ShipOptions`].
pub const DEFAULT_BATCH_MAX_RECORDS: usize = 10_000;
pub const DEFAULT_BATCH_MAX_BYTES: usize = 16 << 20;
pub const DEFAULT_BATCH_MAX_DELAY: Duration = Duration::from_millis(100);
pub const DEFAULT_LOAD_CONNECTIONS: usize = 4;
/// How long the first pass over a snapshot waits for a log that stopped growing inside it.
const SNAPSHOT_WRITER_SILENCE: Duration = Duration::from_secs(60);

#[derive(Clone, Debug)]
pub struct ShipOptions {
    /// Target schema (default `public`).
    pub schema: String,
    pub table_prefix: String,
    pub mode: TargetMode,
    /// Keep SQLite's identifier case instead of lower-casing.
    pub keep_case: bool,
    /// Only these SQLite tables (empty: all). Case-insensitive.
    pub include: Vec<String>,
    pub exclude: Vec<String>,
    pub batch_max_records: usize,
    pub batch_max_bytes: usize,
    pub batch_max_delay: Duration,
    /// `table.column` → PostgreSQL type, overriding the mapping.
    pub type_overrides: BTreeMap<String, String>,
    /// The source's name; the key of its `ferry.progress` row.
    pub source_id: String,
    /// Connections used in parallel by the initial load.
    pub load_connections: usize,
    /// Profile the snapshot's values to pick column types (a second read of the snapshot).
    pub profile_types: bool,
    /// Try `session_replication_role = replica` when applying.
    pub use_replica_role: bool,
    /// Reconnect attempts in a row before giving up.
    pub max_retries: u32,
}

impl Default for ShipOptions {
    fn default() -> Self {
        ShipOptions {
            schema: "public".into(),
            table_prefix: String::new(),
            mode: TargetMode::Create,
            keep_case: false,
            include: vec![],
            exclude: vec![],
            batch_max_records: DEFAULT_BATCH_MAX_RECORDS,
            batch_max_bytes: DEFAULT_BATCH_MAX_BYTES,
            batch_max_delay: DEFAULT_BATCH_MAX_DELAY,
            type_overrides: BTreeMap::new(),
            source_id: "default".into(),
            load_connections: DEFAULT_LOAD_CONNECTIONS,
            profile_types: true,
            use_replica_role: true,
            max_retries: 30,
        }
    }
}

impl ShipOptions {
    fn map_options(&self) -> MapOptions {
        MapOptions {
            schema: self.schema.clone(),
            table_prefix: self.table_prefix.clone(),
            keep_case: self.keep_case,
            type_overrides: self.type_overrides.clone(),
        }
    }

    /// Whether a SQLite table is shipped.
    pub fn includes(&self, table: &str) -> bool {
        if table.eq_ignore_ascii_case("sqlite_sequence") {
            return true;
        }
        if TableSchema::is_internal_name(table) {
            return false;
        }
        let m = |l: &Vec<String>| l.iter().any(|t| t.eq_ignore_ascii_case(table));
        (self.include.is_empty() || m(&self.include)) && !m(&self.exclude)
    }

    /// Where a SQLite table lands: `sqlite_sequence` goes to the `ferry` schema (ferry keeps
    /// it for sequences, it is not the application's).
    fn target_of(&self, table: &str) -> (String, String) {
        if table.eq_ignore_ascii_case("sqlite_sequence") {
            (
                "ferry".into(),
                format!("sqlite_sequence_{}", self.source_id.to_lowercase()),
            )
        } else {
            (
                self.schema.clone(),
                self.map_options().target_table_name(table),
            )
        }
    }
}

/// Reads from a record source without stalling the runtime's other tasks.
fn read_source(
    source: &mut dyn RecordSource,
    after: Lsn,
    max: usize,
    wait: Duration,
) -> Result<Vec<(Lsn, Record)>, PgError> {
    let r = match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => {
            tokio::task::block_in_place(|| source.read_batch(after, max, wait))
        }
        _ => source.read_batch(after, max, wait),
    }?;
    let mut expect = after.next();
    for (lsn, _) in &r {
        if *lsn != expect {
            return Err(PgError::LogGap {
                expected: expect,
                found: *lsn,
            });
        }
        expect = lsn.next();
    }
    Ok(r)
}

/// Ships one source into PostgreSQL.
pub struct Shipper {
    target: PgTarget,
    opts: ShipOptions,
    client: Option<Client>,
    replica_role: bool,
    maps: BTreeMap<String, TableMap>,
    order: Vec<String>,
    applied: Lsn,
    status: Arc<Mutex<ShipStatus>>,
    /// Row counts of the snapshot's `SnapshotEnd`, seen by the profile pass.
    snapshot_row_counts: Option<Vec<(String, u64)>>,
    /// The snapshot's first record as this session read it, with its LSN.
    snapshot_begin: Option<(Lsn, SnapshotBegin)>,
    /// Told of every committed batch and every failed attempt (see [`ShipEvent`]).
    observer: Option<ShipObserver>,
}

type ShipObserver = Box<dyn Fn(&ShipEvent) + Send + Sync>;

const MAX_NOTICES: usize = 200;

/// A DDL statement and the SQLite table it is for (for notices).
type TableStatement = (String, String);

/// See [`Shipper::post_load_plan`].
#[derive(Default)]
struct PostLoadPlan {
    /// By SQLite table name: UNIQUE constraints and indexes.
    per_table: BTreeMap<String, Vec<String>>,
    /// `(table, statement)`: primary keys and UNIQUE constraints made of the indexes built
    /// in `per_table`, for the final transaction (see [`mapping::attaches_index`]).
    attach: Vec<TableStatement>,
    /// `(table, statement)`, for the final transaction.
    foreign_keys: Vec<TableStatement>,
    notices: Vec<MapNotice>,
}

/// Snapshot records read at a time by the load's two passes: each holds up to a few
/// thousand rows, so this (with the loader's channels) bounds the load's memory.
const SNAPSHOT_READ_RECORDS: usize = 8;

/// How often the initial load logs where it is.
const LOAD_LOG_INTERVAL: Duration = Duration::from_secs(10);

impl Shipper {
    /// Connects (waiting for a starting server) and makes sure `ferry.progress` exists.
    /// Failed authentication, a missing database or an unreachable host are errors here; a
    /// connection lost during setup is retried by `run`.
    pub async fn new(target: PgTarget, opts: ShipOptions) -> Result<Shipper, PgError> {
        let mut target = target;
        target.set_application_name(&format!("ferry-ship:{}", opts.source_id));
        let mut s = Shipper {
            target,
            opts,
            client: None,
            replica_role: false,
            maps: BTreeMap::new(),
            order: Vec::new(),
            applied: Lsn::ZERO,
            snapshot_row_counts: None,
            snapshot_begin: None,
            observer: None,
            status: Arc::new(Mutex::new(ShipStatus {
                phase: "starting".into(),
                ..ShipStatus::default()
            })),
        };
        match s.connect().await {
            Ok(()) => {}
            // A connection lost while setting up (a restart, a COMMIT whose answer never
            // came) is retried by `run` like any other; bad credentials or a missing
            // database fail here, at once.
            Err(e) if e.is_transient() => {
                tracing::warn!(source = %s.opts.source_id, "PostgreSQL failure while connecting, will retry: {e}");
                s.client = None;
            }
            Err(e) => return Err(e),
        }
        Ok(s)
    }

    /// Calls `observe` for every committed batch and every failed attempt, on the
    /// shipper's task, right after the event: it must return quickly (update a metric).
    pub fn set_observer(&mut self, observe: impl Fn(&ShipEvent) + Send + Sync + 'static) {
        self.observer = Some(Box::new(observe));
    }

    fn observe(&self, event: ShipEvent) {
        if let Some(observe) = &self.observer {
            observe(&event);
        }
    }

    /// A handle to the live status (updated after every commit).
    pub fn status_handle(&self) -> Arc<Mutex<ShipStatus>> {
        self.status.clone()
    }

    pub fn status(&self) -> ShipStatus {
        self.status.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// The current table maps (source table → target), for verify and sequences.
    pub fn table_maps(&self) -> Vec<TableMap> {
        self.maps.values().cloned().collect()
    }

    /// Moves every identity/serial sequence of the shipped tables past the highest id
    /// (and SQLite's `sqlite_sequence` counter): what the cutover calls, and `ferry ship
    /// --advance-sequences` on demand.
    pub async fn advance_sequences(
        &mut self,
    ) -> Result<Vec<crate::sequences::SequenceAdvance>, PgError> {
        if self.client.is_none() {
            self.connect().await?;
        }
        if self.maps.is_empty() {
            let p =
                progress::read_progress(client_of(&mut self.client)?, &self.opts.source_id).await?;
            if let Some(p) = p {
                self.load_maps(&p).await?;
            }
        }
        let seq_map = self
            .maps
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("sqlite_sequence"))
            .map(|(_, v)| v.clone());
        let user_maps: Vec<TableMap> = self
            .maps
            .values()
            .filter(|m| m.target_schema != "ferry")
            .cloned()
            .collect();
        let client = client_of(&mut self.client)?;
        crate::sequences::advance_sequences(&*client, &user_maps, seq_map.as_ref()).await
    }

    fn update_status(&self, f: impl FnOnce(&mut ShipStatus)) {
        if let Ok(mut s) = self.status.lock() {
            f(&mut s);
        }
    }

    /// Starts a step of the initial load's progress.
    fn load_step(&self, step: &str, rows_total: u64, tables_total: usize) {
        self.update_status(|s| {
            s.load = Some(LoadProgress {
                step: step.into(),
                rows_total,
                rows_done: 0,
                tables_total,
                tables_started: 0,
                step_started: Some(Instant::now()),
            })
        });
    }

    /// Counts rows into the current load step; every `LOAD_LOG_INTERVAL` a log line says
    /// where the load is (what a terminal-less run shows instead of a bar).
    fn load_rows(&self, rows: u64, table_started: bool, last_log: &mut Instant) {
        let mut line = None;
        self.update_status(|s| {
            if let Some(l) = s.load.as_mut() {
                l.rows_done += rows;
                l.tables_started += usize::from(table_started);
                if last_log.elapsed() >= LOAD_LOG_INTERVAL {
                    line = Some(l.line());
                }
            }
        });
        if let Some(line) = line {
            *last_log = Instant::now();
            tracing::info!(source = %self.opts.source_id, "initial load: {line}");
        }
    }

    fn notice(&self, n: impl Into<String>) {
        let n = n.into();
        tracing::warn!(source = %self.opts.source_id, "{n}");
        self.update_status(|s| {
            s.notices.push(n);
            if s.notices.len() > MAX_NOTICES {
                s.notices.remove(0);
            }
        });
    }

    fn map_notices(&self, notices: Vec<MapNotice>) {
        for n in notices {
            match n.column {
                Some(c) => self.notice(format!(
                    "table {:?}, column {:?}: {}",
                    n.table, c, n.message
                )),
                None => self.notice(format!("table {:?}: {}", n.table, n.message)),
            }
        }
    }

    async fn connect(&mut self) -> Result<(), PgError> {
        let mut client = self.target.connect().await?;
        self.replica_role = false;
        if self.opts.use_replica_role {
            match client
                .batch_execute("SET session_replication_role = replica")
                .await
            {
                Ok(()) => self.replica_role = true,
                Err(e) if e.code().map(|c| c.code()) == Some("42501") => {
                    tracing::info!(
                        "role may not set session_replication_role; applying with deferred constraints"
                    );
                }
                Err(e) => return Err(PgError::pg("setting session_replication_role", e)),
            }
        }
        progress::ensure_progress_tables(&mut client).await?;
        self.client = Some(client);
        let rr = self.replica_role;
        self.update_status(|s| s.replica_role = rr);
        Ok(())
    }
}

fn client_of(client: &mut Option<Client>) -> Result<&mut Client, PgError> {
    {
        match client.as_mut() {
            Some(c) => Ok(c),
            None => Err(PgError::Table {
                table: String::new(),
                reason: "internal: no PostgreSQL connection".into(),
            }),
        }
    }
}

impl Shipper {
    /// Ships until `stop` becomes true. Transient failures are retried with backoff.
    pub async fn run(
        &mut self,
        source: &mut dyn RecordSource,
        stop: watch::Receiver<bool>,
    ) -> Result<ShipSummary, PgError> {
        self.run_loop(source, Some(stop), None).await
    }

    /// Ships until everything up to `end_lsn` is applied, then returns.
    pub async fn run_until_caught_up(
        &mut self,
        source: &mut dyn RecordSource,
        end_lsn: Lsn,
    ) -> Result<ShipSummary, PgError> {
        self.run_loop(source, None, Some(end_lsn)).await
    }

    async fn run_loop(
        &mut self,
        source: &mut dyn RecordSource,
        stop: Option<watch::Receiver<bool>>,
        end: Option<Lsn>,
    ) -> Result<ShipSummary, PgError> {
        let mut attempts = 0u32;
        let mut delay = Duration::from_millis(100);
        loop {
            let before = self.applied;
            let r = self.session(source, stop.as_ref(), end).await;
            match r {
                Ok(()) => {
                    self.update_status(|s| s.phase = "stopped".into());
                    let stats = self.status().stats;
                    return Ok(ShipSummary {
                        applied_lsn: self.applied,
                        stats,
                    });
                }
                Err(e) if e.is_transient() && attempts < self.opts.max_retries => {
                    if self.applied > before {
                        attempts = 0;
                        delay = Duration::from_millis(100);
                    }
                    attempts += 1;
                    tracing::warn!(source = %self.opts.source_id, attempt = attempts, "PostgreSQL failure, reconnecting: {e}");
                    let msg = e.to_string();
                    self.observe(ShipEvent::Retrying {
                        attempt: attempts,
                        error: msg.clone(),
                    });
                    self.update_status(|s| {
                        s.phase = "retrying".into();
                        s.last_error = Some(msg);
                        s.stats.reconnects += 1;
                    });
                    self.client = None;
                    if stop.as_ref().is_some_and(|s| *s.borrow()) {
                        return Err(e);
                    }
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
                Err(e) => {
                    let msg = e.to_string();
                    self.update_status(|s| {
                        s.phase = "failed".into();
                        s.last_error = Some(msg);
                    });
                    if e.is_transient() {
                        return Err(PgError::RetriesExhausted {
                            attempts,
                            last: Box::new(e),
                        });
                    }
                    return Err(e);
                }
            }
        }
    }

    /// One connection's worth of work: (re)connect, resume from progress, load, stream.
    async fn session(
        &mut self,
        source: &mut dyn RecordSource,
        stop: Option<&watch::Receiver<bool>>,
        end: Option<Lsn>,
    ) -> Result<(), PgError> {
        if self.client.is_none() {
            self.connect().await?;
        }
        let source_id = self.opts.source_id.clone();
        let log_id = source.log_id();
        let progress = progress::read_progress(client_of(&mut self.client)?, &source_id).await?;
        let progress = match progress {
            Some(p) => {
                if p.log_id != log_id {
                    return Err(PgError::LogIdMismatch {
                        source_id,
                        recorded: p.log_id,
                        found: log_id,
                    });
                }
                p
            }
            None => {
                let first = read_source(source, Lsn::ZERO, 1, Duration::from_millis(0));
                // The log may begin after LSN 1 (retention); accept where it begins.
                let first = match first {
                    Err(PgError::LogGap { found, .. }) => {
                        source.read_batch(Lsn(found.0 - 1), 1, Duration::ZERO)?
                    }
                    other => other?,
                };
                let Some((lsn, rec)) = first.into_iter().next() else {
                    if end.is_some_and(|e| e == Lsn::ZERO) {
                        return Ok(());
                    }
                    // Nothing logged yet: wait for the first record (or a stop request).
                    loop {
                        if stop.is_some_and(|s| *s.borrow()) {
                            return Ok(());
                        }
                        let wait = Duration::from_millis(200);
                        let read_at = Instant::now();
                        let waited = source.read_batch(Lsn::ZERO, 1, wait)?;
                        if !waited.is_empty() {
                            return Box::pin(self.session(source, stop, end)).await;
                        }
                        pause_while_idle(stop, wait.saturating_sub(read_at.elapsed())).await;
                    }
                };
                self.begin_source(source, lsn, &rec, &log_id).await?
            }
        };
        self.applied = progress.lsn;
        let applied = self.applied;
        self.update_status(|s| {
            s.applied_lsn = applied;
            s.stats.applied_lsn = applied;
            // PostgreSQL answered: an error of an earlier attempt is over, even when there
            // is nothing to apply (an idle source would otherwise keep reporting it).
            s.last_error = None;
        });
        self.load_maps(&progress).await?;
        if progress.state == SourceState::Loading {
            self.update_status(|s| s.phase = "loading".into());
            self.load_snapshot(source, &progress).await?;
        }
        self.update_status(|s| s.phase = "streaming".into());
        self.stream(source, stop, end).await
    }

    /// Creates the progress rows (and in create mode, the tables) for a new source.
    async fn begin_source(
        &mut self,
        source: &mut dyn RecordSource,
        first_lsn: Lsn,
        first: &Record,
        log_id: &str,
    ) -> Result<Progress, PgError> {
        let source_id = self.opts.source_id.clone();
        let mode = self.opts.mode;
        match first {
            Record::SnapshotBegin(begin) => {
                let (end_lsn, profiles) = self.profile_snapshot(source, first_lsn, begin).await?;
                let mut notices = Vec::new();
                let mut maps = BTreeMap::new();
                let mut problems = Vec::new();
                for t in &begin.tables {
                    if !self.opts.includes(&t.name) {
                        continue;
                    }
                    let (tschema, tname) = self.opts.target_of(&t.name);
                    let is_seq = t.name.eq_ignore_ascii_case("sqlite_sequence");
                    let map = if mode == TargetMode::Create || is_seq {
                        mapping::create_mode_map(
                            t,
                            profiles.get(&t.name).map(Vec::as_slice),
                            &self.opts.map_options(),
                            &tschema,
                            &tname,
                            &mut notices,
                        )
                    } else {
                        let found =
                            catalog::find_table(client_of(&mut self.client)?, &tschema, &tname)
                                .await?;
                        let Some(ct) = found else {
                            problems.push(format!(
                                "SQLite table {:?} has no table {tschema}.{tname} in PostgreSQL",
                                t.name
                            ));
                            continue;
                        };
                        match catalog::map_onto(t, &ct, self.opts.keep_case, &mut problems) {
                            Some(m) => m,
                            None => continue,
                        }
                    };
                    maps.insert(t.name.clone(), map);
                }
                if !problems.is_empty() {
                    return Err(PgError::SchemaMismatch { problems });
                }
                check_name_collisions(&maps)?;
                for key in self.opts.type_overrides.keys() {
                    let matched = maps.values().any(|m| {
                        m.source.columns.iter().any(|c| {
                            format!("{}.{}", m.source.name, c.name).eq_ignore_ascii_case(key)
                        })
                    });
                    if !matched {
                        notices.push(MapNotice {
                            table: key.split('.').next().unwrap_or_default().to_string(),
                            column: None,
                            message: format!(
                                "type override {key:?} matches no column of a shipped table (write it as \"table.column\" with SQLite's names); ignored"
                            ),
                        });
                    }
                }
                let client = client_of(&mut self.client)?;
                let tx = client
                    .transaction()
                    .await
                    .map_err(|e| PgError::pg("starting the schema transaction", e))?;
                if mode == TargetMode::Create {
                    tx.batch_execute(&format!(
                        "CREATE SCHEMA IF NOT EXISTS {}",
                        quote_ident(&self.opts.schema)
                    ))
                    .await
                    .map_err(|e| PgError::pg("creating the target schema", e))?;
                }
                for map in maps.values() {
                    if mode == TargetMode::Create || map.target_schema == "ferry" {
                        let with_key =
                            mode != TargetMode::Create || !mapping::key_built_after_load(map);
                        let sql = mapping::create_table_sql(map, with_key, &mut notices);
                        tx.batch_execute(&sql).await.map_err(|e| {
                            PgError::pg(format!("creating table {}", map.qualified()), e)
                        })?;
                    }
                }
                progress::insert_progress(
                    &tx,
                    &NewProgress {
                        source_id: &source_id,
                        log_id,
                        lsn: Lsn(first_lsn.0 - 1),
                        state: SourceState::Loading,
                        snapshot_begin_lsn: Some(first_lsn),
                        snapshot_end_lsn: Some(end_lsn),
                        target_schema: &self.opts.schema,
                        table_prefix: &self.opts.table_prefix,
                        mode: mode.as_str(),
                    },
                )
                .await?;
                for map in maps.values() {
                    progress::upsert_table(
                        &tx,
                        &source_id,
                        &map.source.name,
                        &map.target_schema,
                        &map.target_table,
                        TableState::Loading,
                        &map.source,
                    )
                    .await?;
                }
                tx.commit()
                    .await
                    .map_err(|e| PgError::pg("committing the schema transaction", e))?;
                self.map_notices(notices);
            }
            _ => {
                let client = client_of(&mut self.client)?;
                progress::insert_progress(
                    &*client,
                    &NewProgress {
                        source_id: &source_id,
                        log_id,
                        lsn: Lsn(first_lsn.0 - 1),
                        state: SourceState::Streaming,
                        snapshot_begin_lsn: None,
                        snapshot_end_lsn: None,
                        target_schema: &self.opts.schema,
                        table_prefix: &self.opts.table_prefix,
                        mode: mode.as_str(),
                    },
                )
                .await?;
            }
        }
        progress::read_progress(client_of(&mut self.client)?, &source_id)
            .await?
            .ok_or_else(|| PgError::Table {
                table: String::new(),
                reason: "ferry.progress row vanished after it was created".into(),
            })
    }

    /// First pass over the snapshot: the LSN of its end and, in create mode, what every
    /// column holds.
    async fn profile_snapshot(
        &mut self,
        source: &mut dyn RecordSource,
        begin_lsn: Lsn,
        begin: &SnapshotBegin,
    ) -> Result<(Lsn, BTreeMap<String, Vec<ColumnProfile>>), PgError> {
        let profile = self.opts.mode == TargetMode::Create && self.opts.profile_types;
        if let Some(summary) = source.snapshot_summary(begin_lsn, profile)? {
            // The source stays just after the SnapshotBegin: the load goes on from there
            // with this copy of it. (After a full first pass, a source rewinds to the start,
            // which one-shot sources support, and the load reads the SnapshotBegin again.)
            self.snapshot_begin = Some((begin_lsn, begin.clone()));
            self.snapshot_row_counts = Some(summary.row_counts);
            return Ok((summary.end_lsn, summary.profiles));
        }
        let mut profiles: BTreeMap<String, Vec<ColumnProfile>> = BTreeMap::new();
        if profile {
            for t in &begin.tables {
                profiles.insert(
                    t.name.clone(),
                    t.columns.iter().map(ColumnProfile::new).collect(),
                );
            }
        }
        let schemas: BTreeMap<&str, &TableSchema> =
            begin.tables.iter().map(|t| (t.name.as_str(), t)).collect();
        let shipped = begin
            .tables
            .iter()
            .filter(|t| self.opts.includes(&t.name))
            .count();
        self.load_step("profiling", 0, shipped);
        let mut last_log = Instant::now();
        let mut last_table = String::new();
        let mut after = begin_lsn;
        let mut last_record = Instant::now();
        loop {
            let recs = read_source(source, after, SNAPSHOT_READ_RECORDS, Duration::from_secs(1))?;
            if recs.is_empty() {
                // Capture may still be writing the snapshot (a large table, a slow disk): wait
                // while it makes progress; a log that stays still inside a snapshot is an
                // abandoned one.
                if last_record.elapsed() < SNAPSHOT_WRITER_SILENCE {
                    continue;
                }
                return Err(PgError::Record {
                    lsn: after.next(),
                    reason: format!(
                        "the snapshot has no SnapshotEnd and nothing was added to the log for {}s (the capture that wrote it stopped, or the log ends inside it); start ferry ship once the snapshot is complete",
                        SNAPSHOT_WRITER_SILENCE.as_secs()
                    ),
                });
            }
            last_record = Instant::now();
            for (lsn, rec) in recs {
                after = lsn;
                if let Record::SnapshotRows(rows) = &rec
                    && self.opts.includes(&rows.table)
                {
                    let new_table = rows.table != last_table;
                    if new_table {
                        last_table.clone_from(&rows.table);
                    }
                    self.load_rows(rows.rows.len() as u64, new_table, &mut last_log);
                }
                match rec {
                    Record::SnapshotRows(rows) if profile => {
                        let (Some(p), Some(schema)) = (
                            profiles.get_mut(&rows.table),
                            schemas.get(rows.table.as_str()),
                        ) else {
                            continue;
                        };
                        for r in &rows.rows {
                            for (i, prof) in p.iter_mut().enumerate() {
                                let v = r.values.get(i).cloned().unwrap_or_else(|| {
                                    schema.columns[i]
                                        .default_value
                                        .clone()
                                        .unwrap_or(ferry_core::Value::Null)
                                });
                                prof.observe(&v, schema.columns[i].affinity);
                            }
                        }
                    }
                    Record::SnapshotEnd(e) => {
                        self.snapshot_row_counts = Some(e.row_counts);
                        return Ok((lsn, profiles));
                    }
                    Record::SnapshotRows(_) => {}
                    other => {
                        return Err(PgError::Record {
                            lsn,
                            reason: format!(
                                "a {} record inside the snapshot range",
                                other.type_name()
                            ),
                        });
                    }
                }
            }
        }
    }

    /// Builds the table maps from `ferry.table_progress` (the SQLite schemas) and the
    /// catalog (the PostgreSQL types).
    async fn load_maps(&mut self, progress: &Progress) -> Result<(), PgError> {
        let _ = progress;
        let tables =
            progress::read_table_progress(client_of(&mut self.client)?, &self.opts.source_id)
                .await?;
        let mut maps = BTreeMap::new();
        let mut problems = Vec::new();
        let mut statuses = Vec::new();
        for t in tables {
            let ct = catalog::find_table(
                client_of(&mut self.client)?,
                &t.target_schema,
                &t.target_table,
            )
            .await?;
            let Some(ct) = ct else {
                problems.push(format!(
                    "table {}.{} (of SQLite table {:?}) is missing in PostgreSQL",
                    t.target_schema, t.target_table, t.source_table
                ));
                continue;
            };
            if let Some(m) = catalog::map_onto_with(
                &t.source_schema,
                &ct,
                self.opts.keep_case,
                // Create mode builds the key after the rows: until the table streams,
                // its absence is expected.
                self.opts.mode == TargetMode::Create && t.state != TableState::Streaming,
                &mut problems,
            ) {
                statuses.push(TableStatus {
                    source_table: t.source_table.clone(),
                    target: m.qualified(),
                    state: t.state,
                    rows_loaded: u64::try_from(t.rows_loaded).unwrap_or(0),
                });
                maps.insert(t.source_table.clone(), m);
            }
        }
        if !problems.is_empty() {
            return Err(PgError::SchemaMismatch { problems });
        }
        self.order = mapping::parents_first(&maps);
        self.maps = maps;
        self.update_status(|s| s.tables = statuses);
        Ok(())
    }

    /// Second pass over the snapshot: COPY the rows of every table not yet loaded, tables in
    /// parallel; then finish (constraints, indexes, sequences, state `streaming`).
    async fn load_snapshot(
        &mut self,
        source: &mut dyn RecordSource,
        progress: &Progress,
    ) -> Result<(), PgError> {
        let (Some(begin), Some(end)) = (progress.snapshot_begin_lsn, progress.snapshot_end_lsn)
        else {
            return Err(PgError::Record {
                lsn: progress.lsn,
                reason: "ferry.progress says loading but records no snapshot range".into(),
            });
        };
        let states: BTreeMap<String, TableState> =
            progress::read_table_progress(client_of(&mut self.client)?, &self.opts.source_id)
                .await?
                .into_iter()
                .map(|t| (t.source_table, t.state))
                .collect();
        let mut load = crate::load::Loader::new(
            &self.target,
            self.opts.load_connections.max(1),
            &self.opts.source_id,
            self.opts.mode,
            self.replica_role,
        )
        .await?;
        // The SnapshotBegin itself, for its index definitions: kept when the source
        // summarised the snapshot (it was not read through), else read again.
        let begin_record: Option<SnapshotBegin> = match self.snapshot_begin.take() {
            Some((lsn, b)) if lsn == begin => Some(b),
            _ => match read_source(source, Lsn(begin.0 - 1), 1, Duration::from_secs(1))?
                .into_iter()
                .next()
            {
                Some((_, Record::SnapshotBegin(b))) => Some(b),
                _ => None,
            },
        };
        let mut plan = self.post_load_plan(begin_record.as_ref());
        let ddl = if plan.per_table.is_empty() {
            None
        } else {
            let runner =
                crate::load::DdlRunner::connect(&self.target, self.opts.load_connections.max(1))
                    .await?;
            load.after_load(runner.clone(), std::mem::take(&mut plan.per_table));
            Some(runner)
        };
        // The snapshot's own row counts give the bar its total (the profile pass saw them;
        // after a restart, read its last record).
        let row_counts = match self.snapshot_row_counts.take() {
            Some(c) => c,
            None => match read_source(source, Lsn(end.0 - 1), 1, Duration::from_secs(1))?
                .into_iter()
                .next()
            {
                Some((_, Record::SnapshotEnd(e))) => e.row_counts,
                _ => Vec::new(),
            },
        };
        let rows_total = row_counts
            .iter()
            .filter(|(t, _)| states.get(t) == Some(&TableState::Loading))
            .map(|(_, n)| n)
            .sum();
        let to_load = states
            .values()
            .filter(|s| **s == TableState::Loading)
            .count();
        self.load_step("copying", rows_total, to_load);
        let mut last_log = Instant::now();
        let mut last_table = String::new();
        let mut after = begin;
        let mut row_counts: Vec<(String, u64)> = Vec::new();
        while after < end {
            let recs = read_source(
                source,
                after,
                (end.0 - after.0).min(SNAPSHOT_READ_RECORDS as u64) as usize,
                Duration::from_secs(1),
            )?;
            if recs.is_empty() {
                return Err(PgError::Record {
                    lsn: after.next(),
                    reason: "the log ended inside the snapshot range it had before".into(),
                });
            }
            for (lsn, rec) in recs {
                after = lsn;
                match rec {
                    Record::SnapshotRows(rows) => {
                        let Some(map) = self.maps.get(&rows.table) else {
                            continue;
                        };
                        if states.get(&rows.table) != Some(&TableState::Loading) {
                            continue;
                        }
                        let n = rows.rows.len() as u64;
                        let new_table = rows.table != last_table;
                        if new_table {
                            last_table.clone_from(&rows.table);
                        }
                        load.send(map, rows.rows, lsn).await?;
                        self.load_rows(n, new_table, &mut last_log);
                    }
                    Record::SnapshotEnd(e) => row_counts = e.row_counts,
                    _ => {}
                }
            }
        }
        let loaded = load.finish().await?;
        for (table, n) in &loaded.rows {
            if let Some((_, expected)) = row_counts.iter().find(|(t, _)| t == table)
                && expected != n
            {
                return Err(PgError::Table {
                    table: table.clone(),
                    reason: format!(
                        "the snapshot says {expected} rows but {n} were read from the log; the log's snapshot is incomplete"
                    ),
                });
            }
        }
        for n in loaded.notices {
            self.notice(n);
        }
        let total: u64 = loaded.rows.values().sum();
        self.update_status(|s| {
            s.stats.rows_loaded += total;
            for t in &mut s.tables {
                if let Some(n) = loaded.rows.get(&t.source_table) {
                    t.rows_loaded = *n;
                    t.state = TableState::Loaded;
                }
            }
        });
        tracing::info!(source = %self.opts.source_id, rows = total, "initial load: rows copied; adding constraints, indexes and foreign keys");
        // Indexing keeps the copy's counts: the bar stays full while constraints build.
        self.update_status(|s| {
            if let Some(l) = s.load.as_mut() {
                l.step = "indexing".into();
            }
        });
        self.finish_load(plan, ddl, loaded.unstarted, end).await?;
        self.update_status(|s| {
            if let Some(l) = s.load.as_mut() {
                l.step = "done".into();
            }
        });
        Ok(())
    }

    /// What runs after the data (create mode): per table, its UNIQUE constraints and
    /// indexes (independent of other tables: each runs as soon as its table is loaded); and
    /// the foreign keys, which need both their tables and go in the final transaction.
    fn post_load_plan(&self, begin: Option<&SnapshotBegin>) -> PostLoadPlan {
        let mut plan = PostLoadPlan::default();
        if self.opts.mode != TargetMode::Create {
            return plan;
        }
        let indexes: Vec<IndexDef> = begin
            .map(|b| {
                b.schema_rows
                    .iter()
                    .filter(|r| r.kind == "index")
                    .filter_map(|r| {
                        let sql = r.sql.as_deref()?;
                        match mapping::parse_index(sql) {
                            Ok(i) => Some(i),
                            Err(why) => {
                                plan.notices.push(MapNotice {
                                    table: r.tbl_name.clone(),
                                    column: None,
                                    message: format!("index {:?} not created: {why}", r.name),
                                });
                                None
                            }
                        }
                    })
                    .collect()
            })
            .unwrap_or_default();
        for map in self.maps.values() {
            if map.target_schema == "ferry" {
                continue;
            }
            let idx: Vec<IndexDef> = indexes
                .iter()
                .filter(|i| i.table.eq_ignore_ascii_case(&map.source.name))
                .cloned()
                .collect();
            let mut own = Vec::new();
            let table = &map.source.name;
            if mapping::key_built_after_load(map) {
                let [build, attach] = mapping::primary_key_statements(map);
                own.push(build);
                plan.attach.push((table.clone(), attach));
            }
            for s in mapping::post_load_statements(map, &idx, &self.maps, &mut plan.notices) {
                if s.contains(" FOREIGN KEY ") {
                    plan.foreign_keys.push((table.clone(), s));
                } else if mapping::attaches_index(&s) {
                    plan.attach.push((table.clone(), s));
                } else {
                    own.push(s);
                }
            }
            if !own.is_empty() {
                plan.per_table.insert(map.source.name.clone(), own);
            }
        }
        plan
    }

    /// After the data: the rest of the constraints and indexes (create mode: `unstarted`, the
    /// statements of tables the load did not copy, go to `ddl` too), sequences, state
    /// streaming.
    async fn finish_load(
        &mut self,
        plan: PostLoadPlan,
        ddl: Option<crate::load::DdlRunner>,
        unstarted: BTreeMap<String, Vec<String>>,
        end: Lsn,
    ) -> Result<(), PgError> {
        let PostLoadPlan {
            attach,
            foreign_keys,
            mut notices,
            ..
        } = plan;
        let maps = self.maps.clone();
        let source_id = self.opts.source_id.clone();
        let applied = self.applied;
        // UNIQUE constraints and indexes not started yet (tables loaded by an earlier
        // attempt, empty tables), then wait for all of them. Idempotent — a statement an
        // earlier attempt already ran finds its object and counts as done — so a crash
        // before the final transaction below just runs them again.
        if let Some(runner) = ddl {
            for (table, stmts) in unstarted {
                runner.spawn_table(&table, stmts);
            }
            notices.extend(runner.finish().await?);
        }
        let client = client_of(&mut self.client)?;
        let tx = client
            .transaction()
            .await
            .map_err(|e| PgError::pg("starting the post-load transaction", e))?;
        // The keys and UNIQUE constraints on their built indexes, one at a time (each takes
        // the table's exclusive lock for a moment), then the foreign keys that need them
        // (create mode only: both empty otherwise).
        for (table, stmt) in attach.into_iter().chain(foreign_keys) {
            run_final_ddl(&tx, table, &stmt, &mut notices).await?;
        }
        let seq_map = maps
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("sqlite_sequence"))
            .map(|(_, v)| v.clone());
        let user_maps: Vec<TableMap> = maps
            .values()
            .filter(|m| m.target_schema != "ferry")
            .cloned()
            .collect();
        crate::sequences::advance_sequences(&tx, &user_maps, seq_map.as_ref()).await?;
        progress::set_all_tables_streaming(&tx, &source_id).await?;
        progress::set_state(&tx, &source_id, SourceState::Streaming).await?;
        progress::advance(&tx, &source_id, applied, end, "", None).await?;
        tx.commit()
            .await
            .map_err(|e| PgError::pg("committing the end of the initial load", e))?;
        self.applied = end;
        self.map_notices(notices);
        self.update_status(|s| {
            s.applied_lsn = end;
            s.stats.applied_lsn = end;
            for t in &mut s.tables {
                t.state = TableState::Streaming;
            }
        });
        Ok(())
    }

    /// Streams batches until stopped or caught up with `end`.
    async fn stream(
        &mut self,
        source: &mut dyn RecordSource,
        stop: Option<&watch::Receiver<bool>>,
        end: Option<Lsn>,
    ) -> Result<(), PgError> {
        let mut pending: VecDeque<(Lsn, Record)> = VecDeque::new();
        loop {
            if stop.is_some_and(|s| *s.borrow()) {
                return Ok(());
            }
            if end.is_some_and(|e| self.applied >= e) {
                return Ok(());
            }
            let started = Instant::now();
            let mut batch: Vec<(Lsn, Record)> = Vec::new();
            let mut bytes = 0usize;
            let mut last = self.applied;
            loop {
                if pending.is_empty() {
                    let remaining = if batch.is_empty() {
                        Duration::from_millis(200)
                    } else {
                        self.opts.batch_max_delay.saturating_sub(started.elapsed())
                    };
                    let want = self
                        .opts
                        .batch_max_records
                        .saturating_sub(batch.len())
                        .max(1);
                    let read_at = Instant::now();
                    let recs = read_source(source, last, want, remaining)?;
                    if recs.is_empty() {
                        if batch.is_empty() {
                            // Idle. Give the runtime back before reading again: the task
                            // that sets `stop` (or a future joined with this one) must
                            // get to run, and a source that returns at once must not turn
                            // this loop into a busy spin.
                            pause_while_idle(stop, remaining.saturating_sub(read_at.elapsed()))
                                .await;
                            if stop.is_some_and(|s| *s.borrow()) {
                                return Ok(());
                            }
                            if end.is_some_and(|e| self.applied >= e) {
                                return Ok(());
                            }
                            continue;
                        }
                        break;
                    }
                    pending.extend(recs);
                }
                let Some((lsn, rec)) = pending.pop_front() else {
                    break;
                };
                let schema_txn =
                    matches!(&rec, Record::Transaction(t) if !t.schema_changes.is_empty());
                if (schema_txn || matches!(rec, Record::SnapshotBegin(_))) && !batch.is_empty() {
                    pending.push_front((lsn, rec));
                    break;
                }
                if let Record::SnapshotBegin(_) = rec {
                    return Err(PgError::Record {
                        lsn,
                        reason: "a second snapshot in the log (a re-snapshot of the source); ferry ship does not reload a streaming target: drop the target tables and ferry.progress rows for this source and ship again".into(),
                    });
                }
                bytes += record_size(&rec);
                last = lsn;
                batch.push((lsn, rec));
                if batch.len() >= self.opts.batch_max_records
                    || bytes >= self.opts.batch_max_bytes
                    || started.elapsed() >= self.opts.batch_max_delay
                    || end.is_some_and(|e| last >= e)
                {
                    break;
                }
            }
            if batch.is_empty() {
                continue;
            }
            self.apply_batch(batch, bytes).await?;
        }
    }

    /// Applies one batch; on a constraint violation, one source transaction at a time.
    async fn apply_batch(
        &mut self,
        batch: Vec<(Lsn, Record)>,
        bytes: usize,
    ) -> Result<(), PgError> {
        let started = Instant::now();
        let n = batch.len();
        let result = self.apply_in_tx(&batch, Strategy::Upsert).await;
        let counts = match result {
            Ok(c) => c,
            Err(e) if is_constraint(&e) => {
                self.update_status(|s| s.stats.batches_split += 1);
                let mut total = ApplyCounts::default();
                for one in batch.chunks(1) {
                    let c = match self.apply_in_tx(one, Strategy::Upsert).await {
                        Ok(c) => c,
                        Err(e) if is_constraint(&e) => {
                            self.apply_in_tx(one, Strategy::DeleteInsert).await?
                        }
                        Err(e) => return Err(e),
                    };
                    total.upserted += c.upserted;
                    total.deleted += c.deleted;
                }
                total
            }
            Err(e) => return Err(e),
        };
        let elapsed = started.elapsed();
        let changes: u64 = batch
            .iter()
            .map(|(_, r)| match r {
                Record::Transaction(t) => t.changes.len() as u64,
                _ => 0,
            })
            .sum();
        let captured = batch.iter().rev().find_map(|(_, r)| r.captured_at());
        let applied = self.applied;
        self.update_status(|s| {
            s.applied_lsn = applied;
            s.last_error = None;
            s.phase = "streaming".into();
            let st: &mut ShipStats = &mut s.stats;
            st.applied_lsn = applied;
            st.rows_upserted += counts.upserted;
            st.rows_deleted += counts.deleted;
            st.changes_read += changes;
            st.records_applied += n as u64;
            st.batches += 1;
            st.last_batch_records = n as u64;
            st.last_batch_bytes = bytes as u64;
            st.last_batch_duration = elapsed;
            st.total_apply_time += elapsed;
            if captured.is_some() {
                st.applied_captured_at = captured;
            }
            st.applied_at = Some(ferry_core::now_micros());
        });
        self.observe(ShipEvent::BatchApplied {
            records: n as u64,
            rows_upserted: counts.upserted,
            rows_deleted: counts.deleted,
            duration: elapsed,
        });
        Ok(())
    }

    /// One PostgreSQL transaction: schema changes of the first record, the folded row
    /// changes, the cutover mark, the progress advance.
    async fn apply_in_tx(
        &mut self,
        batch: &[(Lsn, Record)],
        strategy: Strategy,
    ) -> Result<ApplyCounts, PgError> {
        let Some(last) = batch.last().map(|(l, _)| *l) else {
            return Ok(ApplyCounts::default());
        };
        let applied = self.applied;
        let source_id = self.opts.source_id.clone();
        let opts = self.opts.clone();
        let mut maps = self.maps.clone();
        let mut notices: Vec<String> = Vec::new();
        let txns: Vec<&Transaction> = batch
            .iter()
            .filter_map(|(_, r)| match r {
                Record::Transaction(t) => Some(t),
                _ => None,
            })
            .collect();
        let position = batch
            .iter()
            .rev()
            .find_map(|(_, r)| r.position())
            .map(|p| p.to_string())
            .unwrap_or_default();
        let captured = batch.iter().rev().find_map(|(_, r)| r.captured_at());
        let cutover = batch.iter().find_map(|(_, r)| match r {
            Record::Cutover(c) => Some(c.at),
            _ => None,
        });
        let client = self.client.as_mut().ok_or_else(|| PgError::Table {
            table: String::new(),
            reason: "internal: no PostgreSQL connection".into(),
        })?;
        let tx = client
            .transaction()
            .await
            .map_err(|e| PgError::pg("starting an apply transaction", e))?;
        let mut schema_changed = false;
        if let Some(first) = txns.first() {
            for sc in &first.schema_changes {
                schema_changed |=
                    apply_schema_change(&tx, sc, &mut maps, &opts, &mut notices).await?;
            }
        }
        let order = if schema_changed {
            mapping::parents_first(&maps)
        } else {
            self.order.clone()
        };
        let mut deltas: BTreeMap<String, TableDelta> = apply::fold_changes(
            txns.iter()
                .flat_map(|t| t.changes.iter())
                .filter(|c| opts.includes(&c.table)),
        );
        for table in deltas.keys() {
            if !maps.contains_key(table) {
                return Err(PgError::Table {
                    table: table.clone(),
                    reason: format!(
                        "the log changes rows of a table ferry does not know (no schema for it at LSN {last}); exclude the table or recreate the target"
                    ),
                });
            }
        }
        deltas.retain(|_, d| !d.is_empty());
        let counts = apply::apply_deltas(&tx, &maps, &order, &deltas, strategy, applied).await?;
        if let Some(at) = cutover {
            progress::set_cutover(&tx, &source_id, at).await?;
        }
        progress::advance(&tx, &source_id, applied, last, &position, captured).await?;
        tx.commit()
            .await
            .map_err(|e| PgError::pg(format!("committing the batch up to LSN {last}"), e))?;
        self.applied = last;
        if schema_changed {
            self.maps = maps;
            self.order = order;
            let statuses: Vec<TableStatus> = self
                .maps
                .values()
                .map(|m| TableStatus {
                    source_table: m.source.name.clone(),
                    target: m.qualified(),
                    state: TableState::Streaming,
                    rows_loaded: 0,
                })
                .collect();
            self.update_status(|s| s.tables = statuses);
        }
        for n in notices {
            self.notice(n);
        }
        Ok(counts)
    }
}

/// Waits up to `left` (at least one scheduler turn) or until `stop` changes: the idle
/// step of the streaming loop, so that an idle shipper yields to the runtime.
async fn pause_while_idle(stop: Option<&watch::Receiver<bool>>, left: Duration) {
    let left = left.min(IDLE_PAUSE_MAX);
    if left.is_zero() {
        tokio::task::yield_now().await;
        return;
    }
    match stop {
        Some(s) => {
            let mut s = s.clone();
            // A closed channel means nobody can ask us to stop any more: just wait.
            let _ = tokio::time::timeout(left, async {
                if s.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            })
            .await;
        }
        None => tokio::time::sleep(left).await,
    }
}

/// Longest idle pause: bounds how stale a stop request or new record can be.
const IDLE_PAUSE_MAX: Duration = Duration::from_millis(50);

/// One statement of the initial load's final transaction, under a savepoint: one PostgreSQL
/// rejects is undone and handled as [`crate::load::rejected_ddl`] says. An attach whose
/// index is missing (42704) was already reported when its build failed.
async fn run_final_ddl(
    tx: &tokio_postgres::Transaction<'_>,
    table: String,
    stmt: &str,
    notices: &mut Vec<MapNotice>,
) -> Result<(), PgError> {
    tx.batch_execute("SAVEPOINT ferry_ddl")
        .await
        .map_err(|e| PgError::pg("savepoint", e))?;
    match tx.batch_execute(stmt).await {
        Ok(()) => Ok(()),
        Err(e) if e.as_db_error().is_some() && !crate::error::is_transient_pg(&e) => {
            let index_missing =
                mapping::attaches_index(stmt) && e.code().map(|c| c.code()) == Some("42704");
            let notice = crate::load::rejected_ddl(table, stmt, &e)?;
            if !index_missing {
                notices.push(notice);
            }
            tx.batch_execute("ROLLBACK TO SAVEPOINT ferry_ddl")
                .await
                .map_err(|e| PgError::pg("rollback to savepoint", e))
        }
        Err(e) => Err(PgError::pg(format!("running `{stmt}`"), e)),
    }
}

fn is_constraint(e: &PgError) -> bool {
    matches!(e.sqlstate(), Some("23505") | Some("23503") | Some("23P01"))
}

fn record_size(r: &Record) -> usize {
    match r {
        Record::Transaction(t) => 64 + t.changes.iter().map(|c| c.approx_size()).sum::<usize>(),
        Record::SnapshotRows(rows) => rows
            .rows
            .iter()
            .map(|r| r.values.iter().map(|v| v.approx_size()).sum::<usize>())
            .sum(),
        _ => 64,
    }
}

fn check_name_collisions(maps: &BTreeMap<String, TableMap>) -> Result<(), PgError> {
    let mut seen: BTreeMap<String, &str> = BTreeMap::new();
    for (src, m) in maps {
        if let Some(other) = seen.insert(m.qualified(), src) {
            return Err(PgError::Table {
                table: src.clone(),
                reason: format!(
                    "SQLite tables {other:?} and {src:?} both map to {}; use keep_case or exclude one",
                    m.qualified()
                ),
            });
        }
        let mut cols: BTreeMap<&str, &str> = BTreeMap::new();
        for c in &m.columns {
            if let Some(o) = cols.insert(c.target.as_str(), c.source_name.as_str()) {
                return Err(PgError::Table {
                    table: src.clone(),
                    reason: format!(
                        "columns {o:?} and {:?} both map to {:?}; use keep_case",
                        c.source_name, c.target
                    ),
                });
            }
        }
    }
    Ok(())
}

/// Existing mode: maps a SQLite table onto the PostgreSQL table the application created
/// (`missing` is the error when there is none), records it as streaming and adds the map.
async fn map_onto_existing(
    tx: &tokio_postgres::Transaction<'_>,
    opts: &ShipOptions,
    schema: &ferry_core::TableSchema,
    tschema: &str,
    tname: &str,
    missing: String,
    maps: &mut BTreeMap<String, TableMap>,
) -> Result<(), PgError> {
    let Some(ct) = catalog::find_table(tx, tschema, tname).await? else {
        return Err(PgError::SchemaMismatch {
            problems: vec![missing],
        });
    };
    let mut problems = Vec::new();
    let Some(m) = catalog::map_onto(schema, &ct, opts.keep_case, &mut problems) else {
        return Err(PgError::SchemaMismatch { problems });
    };
    progress::upsert_table(
        tx,
        &opts.source_id,
        &schema.name,
        tschema,
        &m.target_table,
        TableState::Streaming,
        schema,
    )
    .await?;
    maps.insert(schema.name.clone(), m);
    Ok(())
}

/// Applies one schema change inside the batch's transaction; returns whether the maps
/// changed. Create mode changes PostgreSQL; existing mode reports and follows by name.
async fn apply_schema_change(
    tx: &tokio_postgres::Transaction<'_>,
    sc: &SchemaChange,
    maps: &mut BTreeMap<String, TableMap>,
    opts: &ShipOptions,
    notices: &mut Vec<String>,
) -> Result<bool, PgError> {
    let pg = |what: String| move |e| PgError::pg(what, e);
    let need_schema = || {
        sc.schema.clone().ok_or_else(|| PgError::Table {
            table: sc.table.clone(),
            reason: "schema change without the parsed schema".into(),
        })
    };
    if !opts.includes(&sc.table) && !matches!(sc.kind, SchemaChangeKind::RenameTable { .. }) {
        return Ok(false);
    }
    let create = opts.mode == TargetMode::Create;
    let mut map_notices = Vec::new();
    match &sc.kind {
        SchemaChangeKind::Other => {
            // Indexes: mirror CREATE/DROP INDEX in create mode.
            if !create {
                return Ok(false);
            }
            // `sc.table` names the index itself; its table is the row's `tbl_name` (after
            // the change: a table rename that came first in this transaction moved it).
            let row = sc.after.as_ref().or(sc.before.as_ref());
            if row.is_none_or(|r| r.kind != "index") {
                return Ok(false);
            }
            let Some(map) = row.and_then(|r| {
                maps.iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case(&r.tbl_name))
                    .map(|(_, m)| m)
            }) else {
                return Ok(false);
            };
            if let Some(before) = &sc.before
                && let Some(Ok(idx)) = before.sql.as_deref().map(mapping::parse_index)
            {
                // The index was named after the table it was created on, which may have
                // been renamed since.
                let mut names = vec![mapping::index_target_name(&map.target_table, &idx)];
                let (_, old_table) = opts.target_of(&before.tbl_name);
                names.push(mapping::index_target_name(&old_table, &idx));
                names.dedup();
                for name in names {
                    tx.batch_execute(&format!(
                        "ALTER TABLE {} DROP CONSTRAINT IF EXISTS {}; DROP INDEX IF EXISTS {}",
                        map.qualified(),
                        quote_ident(&name),
                        qualified(&map.target_schema, &name)
                    ))
                    .await
                    .map_err(pg(format!("dropping index {name}")))?;
                }
            }
            if let Some(after) = &sc.after {
                match after.sql.as_deref().map(mapping::parse_index) {
                    Some(Ok(idx)) => {
                        let mut only = map.clone();
                        only.source.unique.clear();
                        only.source.foreign_keys.clear();
                        for stmt in
                            mapping::post_load_statements(&only, &[idx], maps, &mut map_notices)
                        {
                            tx.batch_execute(&stmt)
                                .await
                                .map_err(pg(format!("running `{stmt}`")))?;
                        }
                    }
                    Some(Err(why)) => notices.push(format!(
                        "table {:?}: index {:?} not created: {why}",
                        sc.table, after.name
                    )),
                    None => {}
                }
            }
            Ok(false)
        }
        SchemaChangeKind::CreateTable => {
            let schema = need_schema()?;
            let (tschema, tname) = opts.target_of(&schema.name);
            if !create && tschema != "ferry" {
                let missing = format!(
                    "the application created table {:?} in SQLite; {tschema}.{tname} does not exist in PostgreSQL (existing mode: run the application's migration on PostgreSQL, then restart ferry)",
                    schema.name
                );
                map_onto_existing(tx, opts, &schema, &tschema, &tname, missing, maps).await?;
                notices.push(format!(
                    "table {:?} created in SQLite; mapped onto {tschema}.{tname}",
                    schema.name
                ));
                return Ok(true);
            }
            let map = mapping::create_mode_map(
                &schema,
                None,
                &opts.map_options(),
                &tschema,
                &tname,
                &mut map_notices,
            );
            tx.batch_execute(&format!(
                "CREATE SCHEMA IF NOT EXISTS {}",
                quote_ident(&tschema)
            ))
            .await
            .map_err(pg("creating the target schema".into()))?;
            tx.batch_execute(&format!("DROP TABLE IF EXISTS {} CASCADE", map.qualified()))
                .await
                .map_err(pg(format!("dropping a stale {}", map.qualified())))?;
            tx.batch_execute(&mapping::create_table_sql(&map, true, &mut map_notices))
                .await
                .map_err(pg(format!("creating table {}", map.qualified())))?;
            let mut all = maps.clone();
            all.insert(schema.name.clone(), map.clone());
            for stmt in mapping::post_load_statements(&map, &[], &all, &mut map_notices) {
                tx.batch_execute(&stmt)
                    .await
                    .map_err(pg(format!("running `{stmt}`")))?;
            }
            progress::upsert_table(
                tx,
                &opts.source_id,
                &schema.name,
                &tschema,
                &tname,
                TableState::Streaming,
                &schema,
            )
            .await?;
            maps.insert(schema.name.clone(), map);
            for n in map_notices {
                notices.push(format!("table {:?}: {}", n.table, n.message));
            }
            Ok(true)
        }
        SchemaChangeKind::DropTable => {
            let Some(map) = maps.remove(&sc.table) else {
                return Ok(false);
            };
            if create || map.target_schema == "ferry" {
                tx.batch_execute(&format!("DROP TABLE IF EXISTS {} CASCADE", map.qualified()))
                    .await
                    .map_err(pg(format!("dropping {}", map.qualified())))?;
            } else {
                notices.push(format!(
                    "table {:?} was dropped in SQLite; {} is left as it is (existing mode: the application's migrations decide)",
                    sc.table,
                    map.qualified()
                ));
            }
            progress::delete_table(tx, &opts.source_id, &sc.table).await?;
            Ok(true)
        }
        SchemaChangeKind::AlterTable | SchemaChangeKind::RenameTable { .. } => {
            let schema = need_schema()?;
            let from = match &sc.kind {
                SchemaChangeKind::RenameTable { from } => from.clone(),
                _ => sc.table.clone(),
            };
            let Some(old) = maps.remove(&from) else {
                return Ok(false);
            };
            if from != schema.name {
                progress::delete_table(tx, &opts.source_id, &from).await?;
            }
            let (tschema, tname) = opts.target_of(&schema.name);
            if !create && old.target_schema != "ferry" {
                notices.push(format!(
                    "table {:?} changed in SQLite ({}); existing mode follows columns by name — check that {} matches",
                    schema.name,
                    if from != schema.name { format!("renamed from {from:?}") } else { "altered".into() },
                    old.qualified()
                ));
                let missing = format!(
                    "table {tschema}.{tname} (for SQLite table {:?}) does not exist",
                    schema.name
                );
                map_onto_existing(tx, opts, &schema, &tschema, &tname, missing, maps).await?;
                return Ok(true);
            }
            let new_map =
                alter_table(tx, &old, &schema, opts, &tschema, &tname, &mut map_notices).await?;
            progress::upsert_table(
                tx,
                &opts.source_id,
                &schema.name,
                &tschema,
                &tname,
                TableState::Streaming,
                &schema,
            )
            .await?;
            maps.insert(schema.name.clone(), new_map);
            for n in map_notices {
                notices.push(format!("table {:?}: {}", n.table, n.message));
            }
            Ok(true)
        }
    }
}

/// Create mode: brings a PostgreSQL table from `old`'s shape to `schema`'s. Rows are carried
/// over by column name, as the fold does: dropped columns go, new columns take their
/// default, kept columns keep their PostgreSQL type unless the declared type's mapping
/// changed.
async fn alter_table(
    tx: &tokio_postgres::Transaction<'_>,
    old: &TableMap,
    schema: &TableSchema,
    opts: &ShipOptions,
    tschema: &str,
    tname: &str,
    notices: &mut Vec<MapNotice>,
) -> Result<TableMap, PgError> {
    let pg = |what: String| move |e| PgError::pg(what, e);
    if old.source.keyed_by_rowid() != schema.keyed_by_rowid() {
        return Err(PgError::Table {
            table: schema.name.clone(),
            reason: "the table changed between rowid-keyed and declared-primary-key; ferry cannot alter that in place: re-create the target table (drop it and its ferry.table_progress row) and ship again".into(),
        });
    }
    let mut cur = old.qualified();
    if old.target_table != tname || old.target_schema != tschema {
        tx.batch_execute(&format!(
            "ALTER TABLE {cur} RENAME TO {}",
            quote_ident(tname)
        ))
        .await
        .map_err(pg(format!("renaming {cur}")))?;
        cur = qualified(&old.target_schema, tname);
        if old.target_schema != tschema {
            tx.batch_execute(&format!(
                "ALTER TABLE {cur} SET SCHEMA {}",
                quote_ident(tschema)
            ))
            .await
            .map_err(pg(format!("moving {cur}")))?;
            cur = qualified(tschema, tname);
        }
    }
    let mut new_map =
        mapping::create_mode_map(schema, None, &opts.map_options(), tschema, tname, notices);
    let mut old = old.clone();
    if let Some((i, from, to)) = renamed_column(&old.source, schema)
        && let Some(k) = old.columns.iter().position(|c| c.source_name == from)
        && let Some(target) = new_map
            .columns
            .iter()
            .find(|c| c.source_name == to)
            .map(|c| c.target.clone())
    {
        // SQLite's RENAME COLUMN changes a name only: rename it in PostgreSQL too, so the
        // column keeps its place (a drop and an add would move it to the end; its values
        // come again as updates either way).
        if old.columns[k].target != target {
            tx.batch_execute(&format!(
                "ALTER TABLE {cur} RENAME COLUMN {} TO {}",
                quote_ident(&old.columns[k].target),
                quote_ident(&target)
            ))
            .await
            .map_err(pg(format!(
                "renaming column {} of {cur}",
                old.columns[k].target
            )))?;
        }
        old.columns[k].source_name = to.clone();
        old.columns[k].target = target;
        old.source.columns[i].name = to;
    }
    let old = &old;
    // Keep the existing PostgreSQL type for columns that stay, unless the declared mapping
    // itself changed (a rebuild that changed the type).
    for c in &mut new_map.columns {
        if let Some(oc) = old.columns.iter().find(|o| o.source_name == c.source_name) {
            let old_decl = old
                .source
                .columns
                .iter()
                .find(|x| x.name == c.source_name)
                .map(|x| x.decl_type.clone());
            let new_decl = schema
                .columns
                .iter()
                .find(|x| x.name == c.source_name)
                .map(|x| x.decl_type.clone());
            if old_decl == new_decl {
                c.pg_type = oc.pg_type.clone();
            }
        }
    }
    for oc in &old.columns {
        if !new_map
            .columns
            .iter()
            .any(|c| c.source_name == oc.source_name)
        {
            tx.batch_execute(&format!(
                "ALTER TABLE {cur} DROP COLUMN IF EXISTS {}",
                quote_ident(&oc.target)
            ))
            .await
            .map_err(pg(format!("dropping column {} of {cur}", oc.target)))?;
        }
    }
    let create_sql = mapping::create_table_sql(&new_map, true, notices);
    for c in &new_map.columns {
        match old.columns.iter().find(|o| o.source_name == c.source_name) {
            None => {
                // The column's definition as CREATE TABLE would write it (default included).
                let def = create_sql
                    .lines()
                    .map(str::trim)
                    .find(|l| l.starts_with(&format!("{} ", quote_ident(&c.target))))
                    .map(|l| l.trim_end_matches(',').to_string())
                    .unwrap_or_else(|| {
                        format!("{} {}", quote_ident(&c.target), c.pg_type.sql_name())
                    });
                tx.batch_execute(&format!("ALTER TABLE {cur} ADD COLUMN {def}"))
                    .await
                    .map_err(pg(format!("adding column {} to {cur}", c.target)))?;
            }
            Some(o) if o.pg_type != c.pg_type => {
                tx.batch_execute(&format!(
                    "ALTER TABLE {cur} ALTER COLUMN {0} TYPE {1} USING {0}::{1}",
                    quote_ident(&c.target),
                    c.pg_type.sql_name()
                ))
                .await
                .map_err(pg(format!("changing the type of {}.{}", cur, c.target)))?;
            }
            Some(_) => {}
        }
    }
    let old_key: Vec<&str> = old
        .key
        .iter()
        .map(|&i| old.columns[i].source_name.as_str())
        .collect();
    let new_key: Vec<&str> = new_map
        .key
        .iter()
        .map(|&i| new_map.columns[i].source_name.as_str())
        .collect();
    if old_key != new_key {
        let pk_name: Option<String> = tx
            .query_opt(
                "SELECT conname::text FROM pg_constraint WHERE conrelid = $1::text::regclass AND contype = 'p'",
                &[&cur],
            )
            .await
            .map_err(pg(format!("reading the primary key of {cur}")))?
            .map(|r| r.get(0));
        if let Some(pk) = pk_name {
            tx.batch_execute(&format!(
                "ALTER TABLE {cur} DROP CONSTRAINT {}",
                quote_ident(&pk)
            ))
            .await
            .map_err(pg(format!("dropping the primary key of {cur}")))?;
        }
        let cols: Vec<String> = new_map
            .key
            .iter()
            .map(|&i| quote_ident(&new_map.columns[i].target))
            .collect();
        tx.batch_execute(&format!(
            "ALTER TABLE {cur} ADD PRIMARY KEY ({})",
            cols.join(", ")
        ))
        .await
        .map_err(pg(format!("adding the primary key of {cur}")))?;
    }
    Ok(new_map)
}

/// The one column `new` renamed in `old` — same columns in the same places with the same
/// declared types, one name changed to a name `old` does not have — as (index, from, to).
fn renamed_column(old: &TableSchema, new: &TableSchema) -> Option<(usize, String, String)> {
    if old.columns.len() != new.columns.len() {
        return None;
    }
    let mut renamed = None;
    for (i, (o, n)) in old.columns.iter().zip(&new.columns).enumerate() {
        if !o.decl_type.eq_ignore_ascii_case(&n.decl_type) {
            return None;
        }
        if o.name != n.name {
            if renamed.is_some() || old.columns.iter().any(|c| c.name == n.name) {
                return None;
            }
            renamed = Some((i, o.name.clone(), n.name.clone()));
        }
    }
    renamed
}

/// Reads a source's progress: what PostgreSQL has applied (None: never shipped here).
pub async fn read_progress(client: &Client, source_id: &str) -> Result<Option<Progress>, PgError> {
    progress::read_progress(client, source_id).await
}

/// Rows of one snapshot chunk, for the loader.
pub(crate) type SnapshotChunk = Vec<SnapshotRow>;
