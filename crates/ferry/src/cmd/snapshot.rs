//! `ferry snapshot`: the one-shot copy of a SQLite database into PostgreSQL (what pgloader
//! does), without the log. SQLite is read inside one read transaction and streamed as
//! snapshot records through a bounded channel into the same shipper `ferry run` uses, so the
//! type mapping, binary COPY load, indexes and foreign keys are exactly the replication's.

use crate::cli::SnapshotArgs;
use crate::sqlite_read;
use anyhow::Context;
use ferry_core::{
    Lsn, Record, SnapshotBegin, SnapshotEnd, SnapshotRow, SnapshotRows, SourcePosition,
    TableSchema, Value,
};
use ferry_pg::types::ColumnProfile;
use ferry_pg::{RecordSource, RecordSourceError, Shipper, SnapshotSummary};
use std::process::ExitCode;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender};
use std::time::Duration;

/// Rows per snapshot record, and records in flight: bounds memory whatever the table sizes.
const ROWS_PER_RECORD: usize = 2_000;
const RECORDS_IN_FLIGHT: usize = 8;

/// Reads every table of `db` inside one read transaction and sends the snapshot records.
/// After the `SnapshotBegin`, it waits for the shipper's question (see
/// [`RecordSource::snapshot_summary`]): when asked, it first profiles every value where it
/// reads it, in the same transaction, and answers; then it streams the rows.
fn produce(
    db: &std::path::Path,
    tx: SyncSender<anyhow::Result<Record>>,
    summary: SummaryChannel,
    speculation: &Speculation,
) -> anyhow::Result<()> {
    let conn = sqlite_read::open_read_only(db)
        .with_context(|| format!("opening {} read-only", db.display()))?;
    conn.execute_batch("BEGIN")?;
    let change_counter: u32 = conn
        .query_row("PRAGMA data_version", [], |r| r.get::<_, i64>(0))
        .map(|v| v as u32)?;
    let tables = sqlite_read::tables(&conn)?;
    let schemas: Vec<TableSchema> = tables
        .iter()
        .map(|t| sqlite_read::table_schema(&conn, t))
        .collect::<Result<_, _>>()?;
    let mut schema_rows = Vec::new();
    {
        let mut stmt =
            conn.prepare("SELECT type, name, tbl_name, rootpage, sql FROM sqlite_schema")?;
        let rows = stmt.query_map([], |r| {
            Ok(ferry_core::SchemaRow {
                kind: r.get(0)?,
                name: r.get(1)?,
                tbl_name: r.get(2)?,
                rootpage: r.get::<_, Option<i64>>(3)?.unwrap_or(0),
                sql: r.get(4)?,
            })
        })?;
        for r in rows {
            schema_rows.push(r?);
        }
    }
    let position = SourcePosition::SqliteFile {
        change_counter,
        wal: None,
    };
    let send = |r: Record| {
        tx.send(Ok(r))
            .map_err(|_| anyhow::anyhow!("the shipper stopped"))
    };
    send(Record::SnapshotBegin(SnapshotBegin {
        position: position.clone(),
        captured_at: ferry_core::now_micros(),
        tables: schemas.clone(),
        schema_rows,
    }))?;
    // Nothing asked (the sender dropped) or `false`: no summary.
    let mut order: Vec<usize> = (0..tables.len()).collect();
    if let Ok(profile) = summary.asked.recv() {
        let speculate = profile && speculation.enabled;
        let answer = summarize(&conn, &tables, &schemas, profile, speculate).map(
            |(summary, weights, speculated)| {
                // Largest tables first: their COPY and then their index builds are the long
                // poles, and the small tables load beside those builds.
                order.sort_by_key(|&i| std::cmp::Reverse(weights[i]));
                if let Ok(mut s) = speculation.tables.lock() {
                    *s = speculated;
                }
                summary
            },
        );
        let failed = answer.is_err();
        let _ = summary.answer.send(answer);
        if failed {
            return Ok(());
        }
    }
    let mut counts = Vec::new();
    for (t, schema) in order.iter().map(|&i| (&tables[i], &schemas[i])) {
        let mut chunk = Vec::with_capacity(ROWS_PER_RECORD);
        let mut n = 0u64;
        sqlite_read::for_each_row(&conn, t, |key, values| {
            let rowid = if schema.keyed_by_rowid() {
                key.first().and_then(Value::as_i64)
            } else {
                schema
                    .rowid_alias
                    .and_then(|i| values.get(i))
                    .and_then(Value::as_i64)
            };
            chunk.push(SnapshotRow { rowid, values });
            n += 1;
            if chunk.len() >= ROWS_PER_RECORD {
                send(Record::SnapshotRows(SnapshotRows {
                    table: t.name.clone(),
                    rows: std::mem::take(&mut chunk),
                }))?;
            }
            Ok(())
        })?;
        if !chunk.is_empty() {
            send(Record::SnapshotRows(SnapshotRows {
                table: t.name.clone(),
                rows: chunk,
            }))?;
        }
        counts.push((t.name.clone(), n));
    }
    send(Record::SnapshotEnd(SnapshotEnd {
        position,
        captured_at: ferry_core::now_micros(),
        row_counts: counts,
    }))?;
    conn.execute_batch("COMMIT")?;
    Ok(())
}

/// Whether the summary may type tables by their declarations without reading their values,
/// and the tables it typed so (see [`typed_by_declaration`]).
#[derive(Clone, Default)]
struct Speculation {
    enabled: bool,
    tables: std::sync::Arc<std::sync::Mutex<std::collections::BTreeSet<String>>>,
}

/// Whether a column can be created with its declared type's mapping before its values are
/// read. Profiling would pick that same type whenever every value converts to it, and a value
/// that does not convert stops the COPY with an error naming it, after which `run` profiles
/// and loads again: the result is the same, and in the common case (applications that store
/// what they declare) the profiling read of the largest tables, during which PostgreSQL has
/// nothing to do, is gone. Not so for untyped columns (profiling makes an empty one text) or
/// columns declared as bytes (profiling makes one that holds only text a text column).
fn typed_by_declaration(col: &ferry_core::Column) -> bool {
    !col.decl_type.trim().is_empty()
        && ferry_pg::types::declared_mapping(col).0 != ferry_pg::types::PgType::Bytea
}

/// The producer's side of [`RecordSource::snapshot_summary`].
struct SummaryChannel {
    asked: Receiver<bool>,
    answer: SyncSender<anyhow::Result<SnapshotSummary>>,
}

/// One pass over every table without materialising rows: counts them (so the records the
/// producer will send, and the `SnapshotEnd`'s LSN, are known) and, if `profile`, feeds every
/// value to its column's profile. Values are decoded into per-column buffers reused from row
/// to row. With `speculate`, a table whose every column is [`typed_by_declaration`] is only
/// counted, its profiles left empty (so they choose the declared mapping), and named in the
/// returned set. Also returns each table's weight (bytes of values when profiling, bytes of
/// pages when speculating, else rows).
fn summarize(
    conn: &rusqlite::Connection,
    tables: &[sqlite_read::VerifyTable],
    schemas: &[TableSchema],
    profile: bool,
    speculate: bool,
) -> anyhow::Result<(
    SnapshotSummary,
    Vec<u64>,
    std::collections::BTreeSet<String>,
)> {
    let mut speculated = std::collections::BTreeSet::new();
    let mut profiles = std::collections::BTreeMap::new();
    let mut row_counts = Vec::new();
    let mut weights = Vec::new();
    // SnapshotBegin is LSN 1; SnapshotEnd follows the last rows record.
    let mut end = 2u64;
    for (t, schema) in tables.iter().zip(schemas) {
        let mut prof: Vec<ColumnProfile> = if profile {
            schema.columns.iter().map(ColumnProfile::new).collect()
        } else {
            Vec::new()
        };
        let typed = speculate && schema.columns.iter().all(typed_by_declaration);
        let (n, weight) = if profile && !typed {
            let cols: Vec<String> = t.columns.iter().map(|c| sqlite_read::quote(c)).collect();
            let sql = format!(
                "SELECT {} FROM {}",
                cols.join(", "),
                sqlite_read::quote(&t.name)
            );
            let mut stmt = conn.prepare(&sql)?;
            let mut rows = stmt.query([])?;
            let mut scratch = vec![Value::Null; cols.len()];
            let mut n = 0u64;
            let mut bytes = 0u64;
            while let Some(r) = rows.next()? {
                for (i, (p, slot)) in prof.iter_mut().zip(&mut scratch).enumerate() {
                    set_value(slot, r.get_ref(i)?);
                    bytes += match slot {
                        Value::Text(b) | Value::Blob(b) => b.len() as u64,
                        _ => 8,
                    };
                    p.observe(slot, schema.columns[i].affinity);
                }
                n += 1;
            }
            (n, bytes)
        } else {
            let n = conn
                .query_row(
                    &format!("SELECT count(*) FROM {}", sqlite_read::quote(&t.name)),
                    [],
                    |r| r.get::<_, i64>(0),
                )
                .map(|n| n as u64)?;
            let bytes = if typed {
                speculated.insert(t.name.clone());
                conn.query_row(
                    "SELECT coalesce(sum(pgsize), 0) FROM dbstat WHERE name = ?1",
                    [&t.name],
                    |r| r.get::<_, i64>(0),
                )
                .map(|b| b as u64)
                .unwrap_or(n.saturating_mul(64))
            } else {
                n
            };
            (n, bytes)
        };
        weights.push(weight);
        end += n.div_ceil(ROWS_PER_RECORD as u64);
        row_counts.push((t.name.clone(), n));
        if profile {
            profiles.insert(t.name.clone(), prof);
        }
    }
    Ok((
        SnapshotSummary {
            end_lsn: Lsn(end),
            profiles,
            row_counts,
        },
        weights,
        speculated,
    ))
}

/// Decodes `v` into `slot`, reusing its buffer when it already holds text or a blob.
fn set_value(slot: &mut Value, v: rusqlite::types::ValueRef<'_>) {
    use rusqlite::types::ValueRef;
    match (slot, v) {
        (Value::Text(buf), ValueRef::Text(b)) | (Value::Blob(buf), ValueRef::Blob(b)) => {
            buf.clear();
            buf.extend_from_slice(b);
        }
        (slot, v) => *slot = sqlite_read::value_of(v),
    }
}

/// The snapshot as a record source: records numbered from 1 as they arrive. Asked for LSN 1
/// again (the shipper reads the snapshot twice: once to profile column types, once to load),
/// it reads SQLite again from the start; any other rewind is an error and the operator reruns
/// the snapshot.
struct ChannelSource {
    db: std::path::PathBuf,
    rx: Receiver<anyhow::Result<Record>>,
    producer: Option<std::thread::JoinHandle<anyhow::Result<()>>>,
    next: Lsn,
    done: bool,
    /// The last LSN, once the snapshot has been read to its end (0 before).
    last: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// Asks the producer for a summary (dropped once asked, or once rows are read).
    ask: Option<SyncSender<bool>>,
    answer: Receiver<anyhow::Result<SnapshotSummary>>,
    speculation: Speculation,
}

impl ChannelSource {
    fn start(db: &std::path::Path, speculation: Speculation) -> ChannelSource {
        let (tx, rx) = std::sync::mpsc::sync_channel(RECORDS_IN_FLIGHT);
        let (ask, asked) = std::sync::mpsc::sync_channel(1);
        let (answer_tx, answer) = std::sync::mpsc::sync_channel(1);
        let path = db.to_path_buf();
        let producer_speculation = speculation.clone();
        let producer = std::thread::spawn(move || {
            let summary = SummaryChannel {
                asked,
                answer: answer_tx,
            };
            let r = produce(&path, tx.clone(), summary, &producer_speculation);
            if let Err(e) = &r {
                let _ = tx.send(Err(anyhow::anyhow!("{e:#}")));
            }
            r
        });
        ChannelSource {
            db: db.to_path_buf(),
            rx,
            producer: Some(producer),
            next: Lsn(1),
            done: false,
            last: Default::default(),
            ask: Some(ask),
            answer,
            speculation,
        }
    }

    fn finish(&mut self) -> anyhow::Result<()> {
        // A reader blocked on a full channel (the shipper stopped early) or on the summary
        // question stops at once when these ends go.
        let (_, closed) = std::sync::mpsc::sync_channel(0);
        drop(std::mem::replace(&mut self.rx, closed));
        drop(self.ask.take());
        match self.producer.take() {
            Some(p) => p
                .join()
                .map_err(|_| anyhow::anyhow!("the SQLite reader panicked"))?,
            None => Ok(()),
        }
    }
}

impl RecordSource for ChannelSource {
    fn snapshot_summary(
        &mut self,
        begin_lsn: Lsn,
        profile: bool,
    ) -> Result<Option<SnapshotSummary>, RecordSourceError> {
        let Some(ask) = self.ask.take() else {
            return Ok(None);
        };
        if begin_lsn != Lsn(1) || self.next != Lsn(2) || ask.send(profile).is_err() {
            return Ok(None);
        }
        match self.answer.recv() {
            Ok(Ok(s)) => Ok(Some(s)),
            Ok(Err(e)) => Err(RecordSourceError::new(format!(
                "profiling SQLite's values: {e:#}"
            ))),
            // The producer failed before answering; its error comes with the next read.
            Err(_) => Ok(None),
        }
    }

    fn log_id(&self) -> String {
        // A one-shot snapshot has no durable log; a fixed id marks its progress row.
        "00000000000000000000000000000000".into()
    }

    fn read_batch(
        &mut self,
        after: Lsn,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<(Lsn, Record)>, RecordSourceError> {
        if after == Lsn::ZERO && self.next != Lsn(1) {
            // Dropping the receiver stops the old producer at its next send.
            let mut fresh = ChannelSource::start(&self.db, self.speculation.clone());
            fresh.last = self.last.clone();
            fresh.last.store(0, std::sync::atomic::Ordering::SeqCst);
            let old = std::mem::replace(self, fresh);
            // Both of the old producer's waits must end before joining it: for room in the
            // record channel, and for the summary question after its SnapshotBegin.
            drop(old.rx);
            drop(old.ask);
            if let Some(p) = old.producer {
                let _ = p.join();
            }
        }
        if after.next() != self.next {
            return Err(RecordSourceError::new(format!(
                "the one-shot snapshot cannot re-read from LSN {} (it is at {}); run `ferry snapshot` again",
                after.next(),
                self.next
            )));
        }
        if self.next > Lsn(1) {
            // Rows are wanted without a summary: let the producer go on.
            drop(self.ask.take());
        }
        let mut out = Vec::new();
        while out.len() < max && !self.done {
            let item = if out.is_empty() {
                self.rx.recv_timeout(wait)
            } else {
                self.rx.try_recv().map_err(|_| RecvTimeoutError::Timeout)
            };
            match item {
                Ok(Ok(r)) => {
                    out.push((self.next, r));
                    self.next = self.next.next();
                }
                Ok(Err(e)) => return Err(RecordSourceError::new(format!("reading SQLite: {e:#}"))),
                Err(RecvTimeoutError::Timeout) => break,
                Err(RecvTimeoutError::Disconnected) => {
                    self.done = true;
                    self.last
                        .store(self.next.0 - 1, std::sync::atomic::Ordering::SeqCst);
                }
            }
        }
        if out.is_empty() && self.done {
            // Nothing more will come: wait as asked rather than spin.
            std::thread::sleep(wait);
        }
        Ok(out)
    }
}

pub fn run(args: SnapshotArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(
        args.source.is_file(),
        "{} does not exist or is not a file",
        args.source.display()
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let source_id = ferry_core::state_dir::source_id_from_path(&args.source).0;
    let started = std::time::Instant::now();
    let mut retyped = None;
    let attempt = rt.block_on(async {
        let first = load_once(&args, &source_id, true).await?;
        match &first.shipped {
            // A table typed by its declarations met a value they cannot hold: what this run
            // created goes, and the load starts again with every value profiled.
            Err(ferry_pg::PgError::BadValue(b)) if first.speculated.contains(&b.table) => {
                let why = format!(
                    "table {:?}: column {:?} holds {}, which its declared type's mapping ({}) cannot hold; every value was profiled and the load started again",
                    b.table, b.column, b.value, b.pg_type
                );
                tracing::info!("{why}");
                retyped = Some(why);
                discard_attempt(&args, &source_id).await?;
                load_once(&args, &source_id, false).await
            }
            _ => Ok(first),
        }
    })?;
    let summary = attempt
        .shipped
        .context("loading the snapshot into PostgreSQL")?;
    attempt.produced?;
    println!(
        "copied {} rows of {} tables in {:.1} s",
        summary.stats.rows_loaded,
        attempt.status.tables.len(),
        started.elapsed().as_secs_f64()
    );
    for n in retyped.into_iter().chain(attempt.status.notices) {
        println!("note: {n}");
    }
    Ok(ExitCode::SUCCESS)
}

/// What one load of the snapshot did.
struct Attempt {
    shipped: Result<ferry_pg::ShipSummary, ferry_pg::PgError>,
    status: ferry_pg::ShipStatus,
    /// The SQLite reader's outcome (its error matters only when shipping succeeded: a
    /// shipper that stopped stops the reader too).
    produced: anyhow::Result<()>,
    /// Tables created with their declared types' mappings, values unread.
    speculated: std::collections::BTreeSet<String>,
}

async fn load_once(
    args: &SnapshotArgs,
    source_id: &str,
    speculate: bool,
) -> anyhow::Result<Attempt> {
    let target = crate::cmd::ship::target(&args.target)?;
    let mut opts = crate::cmd::ship::ship_options(&args.target, &progress_id(source_id));
    opts.max_retries = 0;
    let mut shipper = Shipper::new(target, opts)
        .await
        .context("connecting to PostgreSQL")?;
    let speculation = Speculation {
        enabled: speculate,
        ..Speculation::default()
    };
    let mut source = ChannelSource::start(&args.source, speculation.clone());
    // The snapshot's last LSN is unknown until it is read: ship until the shipper has
    // applied the last record the source produced.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let last = source.last.clone();
    let status = shipper.status_handle();
    let watcher = tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let end = last.load(std::sync::atomic::Ordering::SeqCst);
            let applied = status.lock().map(|s| s.applied_lsn.0).unwrap_or(0);
            if end > 0 && applied >= end {
                let _ = stop_tx.send(true);
                return;
            }
        }
    });
    let bar = crate::load_bar::spawn(shipper.status_handle());
    let shipped = shipper.run(&mut source, stop_rx).await;
    watcher.abort();
    bar.abort();
    let produced = source.finish();
    let speculated = speculation
        .tables
        .lock()
        .map(|s| s.clone())
        .unwrap_or_default();
    Ok(Attempt {
        shipped,
        status: shipper.status(),
        produced,
        speculated,
    })
}

/// The `ferry.progress` key of a one-shot snapshot of the source `source_id`.
fn progress_id(source_id: &str) -> String {
    format!("snapshot:{source_id}")
}

/// Drops the tables a failed load created and its progress rows, so that the next load
/// starts afresh. Only called after a load that created them itself (it asked for the
/// summary, which only a new source does).
async fn discard_attempt(args: &SnapshotArgs, source_id: &str) -> anyhow::Result<()> {
    let target = crate::cmd::ship::target(&args.target)?;
    let mut client = target.connect().await.context("connecting to PostgreSQL")?;
    let progress_id = progress_id(source_id);
    let tx = client.transaction().await?;
    let tables = tx
        .query(
            "SELECT target_schema, target_table FROM ferry.table_progress WHERE source_id = $1",
            &[&progress_id],
        )
        .await
        .context("reading the failed load's tables")?;
    for row in tables {
        let (schema, table): (String, String) = (row.try_get(0)?, row.try_get(1)?);
        tx.batch_execute(&format!(
            "DROP TABLE IF EXISTS {}.{} CASCADE",
            ferry_pg::ident::quote_ident(&schema),
            ferry_pg::ident::quote_ident(&table)
        ))
        .await
        .with_context(|| format!("dropping {schema}.{table}, which the failed load created"))?;
    }
    tx.execute(
        "DELETE FROM ferry.progress WHERE source_id = $1",
        &[&progress_id],
    )
    .await
    .context("forgetting the failed load's progress")?;
    tx.commit().await.context("discarding the failed load")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shipper re-reads from LSN 0 when its first, non-waiting read found nothing (a
    /// loaded machine): the source starts a fresh producer and must not wait forever for the
    /// old one, which sits waiting for the summary question after its SnapshotBegin.
    #[test]
    fn rewinding_after_the_snapshot_begin_restarts_without_hanging() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = dir.path().join("app.db");
        let conn = rusqlite::Connection::open(&db).expect("open");
        conn.execute_batch("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT); INSERT INTO t VALUES (1, 'a'), (2, 'b');")
            .expect("setup");
        drop(conn);
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut source = ChannelSource::start(&db, Speculation::default());
            let wait = Duration::from_secs(10);
            let first = source.read_batch(Lsn::ZERO, 1, wait).map(|r| r.len());
            let again = source.read_batch(Lsn::ZERO, 1, wait);
            let summary = source.snapshot_summary(Lsn(1), true);
            let _ = done_tx.send((
                first,
                again.map(|r| r.len()),
                summary.map(|s| s.map(|s| s.end_lsn)),
            ));
        });
        let (first, again, summary) = done_rx
            .recv_timeout(Duration::from_secs(60))
            .expect("the rewind hung");
        assert_eq!(first.expect("first read"), 1);
        assert_eq!(again.expect("read after the rewind"), 1);
        // Begin, one rows record, End.
        assert_eq!(summary.expect("summary"), Some(Lsn(3)));
    }
}
