//! The initial load's parallel COPY.
//!
//! One table is loaded in one transaction on one of `k` connections: `TRUNCATE` (create
//! mode: the table is ferry's own and must be empty after a crash anyway), binary `COPY`
//! straight into the table, `ferry.table_progress` set to `loaded`, commit. In `existing`
//! mode, and for types that travel as text, the rows go through a staging table and are
//! upserted by key, so rows the application inserted itself are replaced (and counted)
//! rather than duplicated or failing the load.
//!
//! Memory is bounded: the reader hands each table's rows to its worker over a channel of
//! at most `CHANNEL_CHUNKS` snapshot chunks, and at most `k` tables load at once; the
//! reader waits for a free connection before it starts the next table. Tables arrive one
//! after another (the snapshot's rows of a table are contiguous), so a table is complete
//! when the next one starts.

use crate::apply::{self, StagedSql};
use crate::error::PgError;
use crate::ident::quote_ident;
use crate::mapping::ColumnSource;
use crate::mapping::{MapNotice, TableMap};
use crate::progress;
use crate::shipper::{SnapshotChunk, TargetMode};
use crate::target::PgTarget;
use crate::types::{Datum, PgType};
use bytes::{BufMut, Bytes, BytesMut};
use ferry_core::Lsn;
use ferry_core::Value;
use futures_util::SinkExt;
use postgres_types::ToSql;
use std::collections::{BTreeMap, BTreeSet};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_postgres::Client;
use tokio_postgres::CopyInSink;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::Type;

const CHANNEL_CHUNKS: usize = 4;

type WorkerResult = Result<(String, u64, Replaced), PgError>;

/// Rows the application had already put in a table that the load met by key.
#[derive(Clone, Debug, Default)]
pub(crate) struct Replaced {
    /// Rows equal to SQLite's: kept as they were.
    pub identical: u64,
    /// Rows that differed: replaced by SQLite's.
    pub differing: u64,
    /// The first differing keys, as `(id=1)`.
    pub keys: Vec<String>,
}

pub(crate) struct Loader {
    pool_tx: mpsc::Sender<Client>,
    pool_rx: mpsc::Receiver<Client>,
    current: Option<(String, mpsc::Sender<SnapshotChunk>)>,
    handles: Vec<JoinHandle<WorkerResult>>,
    done: Vec<(String, u64, Replaced)>,
    started: BTreeSet<String>,
    source_id: String,
    mode: TargetMode,
    /// Where a table's post-load statements go once its rows are committed.
    after_load: Option<(DdlRunner, BTreeMap<String, Vec<String>>)>,
}

pub(crate) struct LoadResult {
    pub rows: BTreeMap<String, u64>,
    pub notices: Vec<String>,
    /// The post-load statements of tables this load did not copy (no rows, or loaded by an
    /// earlier attempt): not handed over yet.
    pub unstarted: BTreeMap<String, Vec<String>>,
}

impl Loader {
    pub async fn new(
        target: &PgTarget,
        connections: usize,
        source_id: &str,
        mode: TargetMode,
        replica_role: bool,
    ) -> Result<Loader, PgError> {
        let (pool_tx, pool_rx) = mpsc::channel(connections);
        for _ in 0..connections {
            let client = target.connect().await?;
            let mut setup = String::from("SET synchronous_commit = off;");
            if replica_role {
                setup.push_str("SET session_replication_role = replica;");
            }
            client
                .batch_execute(&setup)
                .await
                .map_err(|e| PgError::pg("preparing a load connection", e))?;
            pool_tx.send(client).await.map_err(|_| PgError::Table {
                table: String::new(),
                reason: "internal: load connection pool closed".into(),
            })?;
        }
        Ok(Loader {
            pool_tx,
            pool_rx,
            current: None,
            handles: Vec::new(),
            done: Vec::new(),
            started: BTreeSet::new(),
            source_id: source_id.to_string(),
            mode,
            after_load: None,
        })
    }

    /// Hands each table's `statements` (by SQLite table name) to `runner` as soon as that
    /// table's rows are committed.
    pub fn after_load(&mut self, runner: DdlRunner, statements: BTreeMap<String, Vec<String>>) {
        self.after_load = Some((runner, statements));
    }

    /// Hands a chunk of a table's snapshot rows to that table's worker.
    pub async fn send(
        &mut self,
        map: &TableMap,
        rows: SnapshotChunk,
        lsn: Lsn,
    ) -> Result<(), PgError> {
        let name = map.source.name.clone();
        if self.current.as_ref().map(|(n, _)| n) != Some(&name) {
            self.current = None;
            if !self.started.insert(name.clone()) {
                return Err(PgError::Record {
                    lsn,
                    reason: format!(
                        "snapshot rows of table {name:?} resume after another table's rows; the snapshot's rows of a table must be contiguous"
                    ),
                });
            }
            self.check_finished().await?;
            let client = self.pool_rx.recv().await.ok_or_else(|| PgError::Table {
                table: name.clone(),
                reason: "internal: load connection pool closed".into(),
            })?;
            let (tx, rx) = mpsc::channel(CHANNEL_CHUNKS);
            let after = self
                .after_load
                .as_mut()
                .and_then(|(runner, stmts)| stmts.remove(&name).map(|s| (runner.clone(), s)));
            let handle = tokio::spawn(load_table(
                client,
                map.clone(),
                rx,
                self.source_id.clone(),
                self.mode,
                self.pool_tx.clone(),
                lsn,
                after,
            ));
            self.handles.push(handle);
            self.current = Some((name.clone(), tx));
        }
        if let Some((_, tx)) = &self.current
            && tx.send(rows).await.is_err()
        {
            // The worker stopped early: its error is the one to report.
            self.current = None;
            return match self.handles.pop() {
                Some(h) => match join(h).await {
                    Err(e) => Err(e),
                    Ok(_) => Err(PgError::Table {
                        table: name,
                        reason: "internal: the load worker stopped before its rows ended".into(),
                    }),
                },
                None => Ok(()),
            };
        }
        Ok(())
    }

    async fn check_finished(&mut self) -> Result<(), PgError> {
        let mut i = 0;
        while i < self.handles.len() {
            if self.handles[i].is_finished() {
                let h = self.handles.remove(i);
                let r = join(h).await?;
                self.done.push(r);
            } else {
                i += 1;
            }
        }
        Ok(())
    }

    pub async fn finish(mut self) -> Result<LoadResult, PgError> {
        self.current = None;
        let mut rows = BTreeMap::new();
        let mut notices = Vec::new();
        let mut first_err = None;
        let mut results: Vec<WorkerResult> = self.done.drain(..).map(Ok).collect();
        for h in self.handles.drain(..) {
            results.push(join(h).await);
        }
        for r in results {
            match r {
                Ok((table, n, replaced)) => {
                    if replaced.differing > 0 {
                        let more = replaced
                            .differing
                            .saturating_sub(replaced.keys.len() as u64);
                        notices.push(format!(
                            "table {table:?}: {} rows the application had already inserted in PostgreSQL were replaced by SQLite's rows with the same key: {}{}",
                            replaced.differing,
                            replaced.keys.join(", "),
                            if more > 0 { format!(" and {more} more") } else { String::new() }
                        ));
                    }
                    if replaced.identical > 0 {
                        notices.push(format!(
                            "table {table:?}: {} rows already in PostgreSQL were identical to SQLite's and kept",
                            replaced.identical
                        ));
                    }
                    rows.insert(table, n);
                }
                Err(e) => {
                    if first_err.is_none() {
                        first_err = Some(e);
                    }
                }
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(LoadResult {
                rows,
                notices,
                unstarted: self.after_load.map(|(_, s)| s).unwrap_or_default(),
            }),
        }
    }
}

async fn join(h: JoinHandle<WorkerResult>) -> WorkerResult {
    match h.await {
        Ok(r) => r,
        Err(e) => Err(PgError::Table {
            table: String::new(),
            reason: format!("internal: a load worker panicked: {e}"),
        }),
    }
}

#[allow(clippy::too_many_arguments)]
async fn load_table(
    mut client: Client,
    map: TableMap,
    rx: mpsc::Receiver<SnapshotChunk>,
    source_id: String,
    mode: TargetMode,
    pool: mpsc::Sender<Client>,
    lsn: Lsn,
    after: Option<(DdlRunner, Vec<String>)>,
) -> WorkerResult {
    let r = load_table_in(&mut client, &map, rx, &source_id, mode, lsn).await;
    let _ = pool.send(client).await;
    if r.is_ok()
        && let Some((runner, statements)) = after
    {
        runner.spawn_table(&map.source.name, statements);
    }
    r.map(|(n, replaced)| (map.source.name.clone(), n, replaced))
}

async fn load_table_in(
    client: &mut Client,
    map: &TableMap,
    rx: mpsc::Receiver<SnapshotChunk>,
    source_id: &str,
    mode: TargetMode,
    lsn: Lsn,
) -> Result<(u64, Replaced), PgError> {
    let q = map.qualified();
    let direct = (mode == TargetMode::Create || map.target_schema == "ferry")
        && !map
            .columns
            .iter()
            .any(|c| matches!(c.pg_type, PgType::Other(_)));
    let tx = client
        .transaction()
        .await
        .map_err(|e| PgError::pg(format!("starting the load of {q}"), e))?;
    let staged: Option<StagedSql> = (!direct).then(|| apply::staged_sql(map));
    let sink = if direct {
        tx.batch_execute(&format!("TRUNCATE {q}"))
            .await
            .map_err(|e| PgError::pg(format!("emptying {q} before loading it"), e))?;
        let cols: Vec<String> = map.columns.iter().map(|c| quote_ident(&c.target)).collect();
        tx.copy_in(&format!(
            "COPY {q} ({}) FROM STDIN (FORMAT binary, FREEZE)",
            cols.join(", ")
        ))
        .await
        .map_err(|e| PgError::pg(format!("starting COPY into {q}"), e))?
    } else {
        let s = staged.as_ref().ok_or_else(|| PgError::Table {
            table: map.source.name.clone(),
            reason: "internal: no staging SQL".into(),
        })?;
        tx.batch_execute(&s.create_stage)
            .await
            .map_err(|e| PgError::pg(format!("creating the staging table for {q}"), e))?;
        tx.copy_in(&s.copy)
            .await
            .map_err(|e| PgError::pg(format!("starting COPY into staging for {q}"), e))?
    };
    let n = if direct {
        copy_direct(map, sink, rx, lsn).await?
    } else {
        let types = staged.as_ref().map(|s| s.types.clone()).unwrap_or_default();
        copy_staged(map, sink, &types, rx, lsn).await?
    };
    let mut replaced = Replaced::default();
    if let Some(s) = &staged {
        let row = tx
            .query_one(&s.existing_summary, &[])
            .await
            .map_err(|e| PgError::pg(format!("comparing with the rows already in {q}"), e))?;
        let (existing, differing, keys): (i64, i64, Vec<String>) =
            (row.get(0), row.get(1), row.get(2));
        replaced = Replaced {
            identical: u64::try_from(existing - differing).unwrap_or(0),
            differing: u64::try_from(differing).unwrap_or(0),
            keys,
        };
        tx.execute(&s.upsert, &[])
            .await
            .map_err(|e| PgError::pg(format!("loading rows into {q}"), e))?;
    }
    progress::set_table_loaded(
        &tx,
        source_id,
        &map.source.name,
        i64::try_from(n).unwrap_or(i64::MAX),
        i64::try_from(replaced.differing).unwrap_or(i64::MAX),
    )
    .await?;
    tx.commit()
        .await
        .map_err(|e| PgError::pg(format!("committing the load of {q}"), e))?;
    Ok((n, replaced))
}

/// Flush the encoded COPY stream to the server in pieces of about this size.
const COPY_FLUSH_BYTES: usize = 256 * 1024;

/// The binary COPY header: signature, flags, header-extension length.
const COPY_HEADER: &[u8] = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0";

/// Streams a table's snapshot rows straight into its own columns as binary COPY, encoding
/// each value from the snapshot row (no per-row `Datum`s or copies of text and blobs: the
/// initial load's hot loop). Returns the rows written.
async fn copy_direct(
    map: &TableMap,
    sink: CopyInSink<Bytes>,
    mut rx: mpsc::Receiver<SnapshotChunk>,
    lsn: Lsn,
) -> Result<u64, PgError> {
    let q = map.qualified();
    let mut sink = std::pin::pin!(sink);
    let ncols = i16::try_from(map.columns.len()).map_err(|_| PgError::Table {
        table: map.source.name.clone(),
        reason: "more than 32767 columns".into(),
    })?;
    let by_rowid = map.source.keyed_by_rowid();
    let mut buf = BytesMut::with_capacity(COPY_FLUSH_BYTES + 64 * 1024);
    buf.put_slice(COPY_HEADER);
    let mut n = 0u64;
    while let Some(chunk) = rx.recv().await {
        for row in &chunk {
            let rowid = if by_rowid { row.rowid } else { None };
            buf.put_i16(ncols);
            for c in &map.columns {
                let rowid_value;
                let v = match c.source {
                    ColumnSource::Column(i) => match row.values.get(i) {
                        Some(v) => v,
                        None => c.default_value.as_ref().unwrap_or(&Value::Null),
                    },
                    ColumnSource::Rowid => {
                        rowid_value = rowid.map_or(Value::Null, Value::Integer);
                        &rowid_value
                    }
                };
                let bad = |reason: &str| {
                    let key = map.source.key_of(&row.values, row.rowid);
                    apply::bad_value(map, &key, c, v, reason, lsn_before(lsn))
                };
                match c.pg_type.encode_copy_field(v, c.affinity, &mut buf) {
                    Ok(true) if c.is_key => {
                        return Err(bad("a key column cannot be NULL in PostgreSQL"));
                    }
                    Ok(_) => {}
                    Err(e) => return Err(bad(&e.to_string())),
                }
            }
            n += 1;
            if buf.len() >= COPY_FLUSH_BYTES {
                sink.send(buf.split().freeze())
                    .await
                    .map_err(|e| PgError::pg(format!("COPY into {q}"), e))?;
            }
        }
    }
    buf.put_i16(-1);
    sink.send(buf.split().freeze())
        .await
        .map_err(|e| PgError::pg(format!("COPY into {q}"), e))?;
    sink.as_mut()
        .finish()
        .await
        .map_err(|e| PgError::pg(format!("finishing COPY into {q}"), e))?;
    Ok(n)
}

/// Streams a table's snapshot rows into its staging table (operation, columns as their
/// wire types) with tokio-postgres's binary COPY writer.
async fn copy_staged(
    map: &TableMap,
    sink: CopyInSink<Bytes>,
    types: &[Type],
    mut rx: mpsc::Receiver<SnapshotChunk>,
    lsn: Lsn,
) -> Result<u64, PgError> {
    let q = map.qualified();
    let writer = BinaryCopyInWriter::new(sink, types);
    let mut writer = std::pin::pin!(writer);
    let mut n = 0u64;
    while let Some(chunk) = rx.recv().await {
        for row in chunk {
            let key = map.source.key_of(&row.values, row.rowid);
            let mut datums: Vec<Datum> =
                apply::stage_row(map, &key, Some(&row.values), lsn_before(lsn))?;
            if map.source.keyed_by_rowid() {
                // The rowid column comes from the snapshot row, not a change key.
                if let Some(pos) = map.key.first() {
                    datums[pos + 1] = row.rowid.map_or(Datum::Null, Datum::Int8);
                }
            }
            let refs: Vec<&(dyn ToSql + Sync)> =
                datums.iter().map(|d| d as &(dyn ToSql + Sync)).collect();
            writer
                .as_mut()
                .write(&refs)
                .await
                .map_err(|e| PgError::pg(format!("COPY into {q}"), e))?;
            n += 1;
        }
    }
    writer
        .finish()
        .await
        .map_err(|e| PgError::pg(format!("finishing COPY into {q}"), e))?;
    Ok(n)
}

fn lsn_before(lsn: Lsn) -> Lsn {
    Lsn(lsn.0.saturating_sub(1))
}

/// Memory for index builds on the post-load connections (PostgreSQL's default is 64 MB).
const INDEX_BUILD_MEMORY: &str = "256MB";

/// Runs independent DDL statements (UNIQUE constraints, indexes), each in its own
/// transaction, on a pool of connections, as they are handed over: the initial load hands a
/// table's statements over as soon as that table's rows are committed, so its indexes build
/// while other tables still load. A statement whose object already exists (an earlier
/// attempt ran it) is done; one PostgreSQL rejects (the SQLite data violates a UNIQUE
/// constraint SQLite did not have, say) becomes a notice and is skipped; a connection
/// failure is returned by [`DdlRunner::finish`], to retry the whole step.
#[derive(Clone)]
pub(crate) struct DdlRunner {
    inner: std::sync::Arc<DdlShared>,
}

struct DdlShared {
    permits: tokio::sync::Semaphore,
    idle: std::sync::Mutex<Vec<Client>>,
    jobs: std::sync::Mutex<tokio::task::JoinSet<Result<Option<MapNotice>, PgError>>>,
}

impl DdlRunner {
    pub async fn connect(target: &PgTarget, connections: usize) -> Result<DdlRunner, PgError> {
        let n = connections.max(1);
        let mut idle = Vec::with_capacity(n);
        for _ in 0..n {
            let client = target.connect().await?;
            client
                .batch_execute(&format!(
                    "SET maintenance_work_mem = '{INDEX_BUILD_MEMORY}'"
                ))
                .await
                .map_err(|e| PgError::pg("preparing an index-build connection", e))?;
            idle.push(client);
        }
        Ok(DdlRunner {
            inner: std::sync::Arc::new(DdlShared {
                permits: tokio::sync::Semaphore::new(n),
                idle: std::sync::Mutex::new(idle),
                jobs: std::sync::Mutex::new(tokio::task::JoinSet::new()),
            }),
        })
    }

    /// Starts `table`'s statements; each waits for a free connection.
    pub fn spawn_table(&self, table: &str, statements: Vec<String>) {
        let mut jobs = lock(&self.inner.jobs);
        for stmt in statements {
            let shared = self.inner.clone();
            let table = table.to_string();
            jobs.spawn(async move {
                let _permit = shared.permits.acquire().await.map_err(|_| PgError::Table {
                    table: table.clone(),
                    reason: "internal: index-build connection pool closed".into(),
                })?;
                // A permit guarantees an idle connection.
                let client = lock(&shared.idle).pop().ok_or_else(|| PgError::Table {
                    table: table.clone(),
                    reason: "internal: no idle index-build connection".into(),
                })?;
                let r = client.batch_execute(&stmt).await;
                lock(&shared.idle).push(client);
                ddl_outcome(table, &stmt, r)
            });
        }
    }

    /// Waits for every statement handed over; the notices, or the first failure.
    pub async fn finish(self) -> Result<Vec<MapNotice>, PgError> {
        let mut jobs = std::mem::take(&mut *lock(&self.inner.jobs));
        let mut notices = Vec::new();
        let mut first_err = None;
        while let Some(r) = jobs.join_next().await {
            match r {
                Ok(Ok(Some(n))) => notices.push(n),
                Ok(Ok(None)) => {}
                Ok(Err(e)) => {
                    first_err.get_or_insert(e);
                }
                Err(e) => {
                    first_err.get_or_insert(PgError::Table {
                        table: String::new(),
                        reason: format!("internal: an index build task failed: {e}"),
                    });
                }
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(notices),
        }
    }
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding one of these short locks cannot leave the data half-changed.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn ddl_outcome(
    table: String,
    stmt: &str,
    r: Result<(), tokio_postgres::Error>,
) -> Result<Option<MapNotice>, PgError> {
    match r {
        Ok(()) => Ok(None),
        // 42P07 duplicate_table (the index exists), 42710 duplicate_object (the constraint
        // exists): done by an earlier attempt.
        Err(e) if matches!(e.code().map(|c| c.code()), Some("42P07" | "42710")) => Ok(None),
        Err(e) if e.as_db_error().is_some() && !crate::error::is_transient_pg(&e) => {
            rejected_ddl(table, stmt, &e).map(Some)
        }
        Err(e) => Err(PgError::pg(format!("running `{stmt}`"), e)),
    }
}

/// What a post-load statement PostgreSQL rejected means: most are reported and the load goes
/// on without them (the data breaks a constraint SQLite did not enforce, say); a primary key
/// stops the load — SQLite enforced its key, so rows that break it mean a damaged database
/// or a mapping that merged distinct keys, and the streaming apply needs the key.
pub(crate) fn rejected_ddl(
    table: String,
    stmt: &str,
    e: &tokio_postgres::Error,
) -> Result<MapNotice, PgError> {
    let why = e
        .as_db_error()
        .map(|d| d.message().to_string())
        .unwrap_or_default();
    if crate::mapping::makes_primary_key(stmt) {
        return Err(PgError::Table {
            table,
            reason: format!(
                "making its primary key after the load failed (`{stmt}`): {why}; check the key column's type mapping (or the SQLite database's integrity) and load again"
            ),
        });
    }
    Ok(MapNotice {
        table,
        column: None,
        message: format!("could not run `{stmt}`: {why}; skipped"),
    })
}
