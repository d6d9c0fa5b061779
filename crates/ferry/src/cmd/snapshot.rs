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
        let answer = summarize(&conn, &tables, &schemas, profile).map(|(summary, weights)| {
            // Largest tables first: their COPY and then their index builds are the long
            // poles, and the small tables load beside those builds.
            order.sort_by_key(|&i| std::cmp::Reverse(weights[i]));
            summary
        });
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

/// The producer's side of [`RecordSource::snapshot_summary`].
struct SummaryChannel {
    asked: Receiver<bool>,
    answer: SyncSender<anyhow::Result<SnapshotSummary>>,
}

/// One pass over every table without materialising rows: counts them (so the records the
/// producer will send, and the `SnapshotEnd`'s LSN, are known) and, if `profile`, feeds every
/// value to its column's profile. Values are decoded into per-column buffers reused from row
/// to row. Also returns each table's weight (bytes of values when profiling, else rows).
fn summarize(
    conn: &rusqlite::Connection,
    tables: &[sqlite_read::VerifyTable],
    schemas: &[TableSchema],
    profile: bool,
) -> anyhow::Result<(SnapshotSummary, Vec<u64>)> {
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
        let (n, weight) = if profile {
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
            (n, n)
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
}

impl ChannelSource {
    fn start(db: &std::path::Path) -> ChannelSource {
        let (tx, rx) = std::sync::mpsc::sync_channel(RECORDS_IN_FLIGHT);
        let (ask, asked) = std::sync::mpsc::sync_channel(1);
        let (answer_tx, answer) = std::sync::mpsc::sync_channel(1);
        let path = db.to_path_buf();
        let producer = std::thread::spawn(move || {
            let summary = SummaryChannel {
                asked,
                answer: answer_tx,
            };
            let r = produce(&path, tx.clone(), summary);
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
        }
    }

    fn finish(&mut self) -> anyhow::Result<()> {
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
            let mut fresh = ChannelSource::start(&self.db);
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
    let result = rt.block_on(async {
        let target = crate::cmd::ship::target(&args.target)?;
        let mut opts =
            crate::cmd::ship::ship_options(&args.target, &format!("snapshot:{source_id}"));
        opts.max_retries = 0;
        let mut shipper = Shipper::new(target, opts)
            .await
            .context("connecting to PostgreSQL")?;
        let mut source = ChannelSource::start(&args.source);
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
        let summary = shipper.run(&mut source, stop_rx).await;
        watcher.abort();
        bar.abort();
        let produced = source.finish();
        anyhow::Ok((summary, shipper.status(), produced))
    });
    let (summary, status, produced) = result?;
    produced?;
    let summary = summary.context("loading the snapshot into PostgreSQL")?;
    println!(
        "copied {} rows of {} tables in {:.1} s",
        summary.stats.rows_loaded,
        status.tables.len(),
        started.elapsed().as_secs_f64()
    );
    for n in status.notices {
        println!("note: {n}");
    }
    Ok(ExitCode::SUCCESS)
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
            let mut source = ChannelSource::start(&db);
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
