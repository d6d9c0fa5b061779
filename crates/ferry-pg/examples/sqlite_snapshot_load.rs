//! Loads a SQLite file into PostgreSQL through ferry-pg's initial-load path (profile, create,
//! parallel binary COPY, constraints, indexes, foreign keys, sequences), timing it; or
//! measures the streaming apply rate. A stand-in for `ferry snapshot` until the binary has
//! it: the SQLite file is read with rusqlite (schema from PRAGMAs, not from ferry's own
//! SQLite reader) and served to the shipper as a lazily produced record stream.
//!
//! Usage:
//!   sqlite_snapshot_load load <app.db> <postgres-url> [--no-profile]
//!   sqlite_snapshot_load stream <postgres-url> <transactions> <rows-per-transaction>
//!   sqlite_snapshot_load lag <postgres-url> <transactions-per-second> <seconds>

use ferry_core::{
    Affinity, Column, ForeignKey, KeyColumns, Lsn, Record, RowChange, SchemaRow, SnapshotBegin,
    SnapshotEnd, SnapshotRow, SnapshotRows, SourcePosition, TableSchema, Transaction, Value,
};
use ferry_pg::{PgTarget, RecordSource, RecordSourceError, ShipOptions, Shipper, VecRecordSource};
use std::sync::mpsc::{Receiver, sync_channel};
use std::time::{Duration, Instant};

/// A snapshot record holds at most this many rows, or this many bytes of values (as the
/// capture chunks its snapshot): large rows make small records, so memory stays bounded.
const CHUNK: usize = 2000;
const CHUNK_BYTES: usize = 1 << 20;

fn schemas(conn: &rusqlite::Connection) -> rusqlite::Result<(Vec<TableSchema>, Vec<SchemaRow>)> {
    let mut rows_stmt = conn.prepare(
        "SELECT type, name, tbl_name, rootpage, sql FROM sqlite_schema WHERE name NOT LIKE 'sqlite_autoindex%' ORDER BY rowid",
    )?;
    let schema_rows: Vec<SchemaRow> = rows_stmt
        .query_map([], |r| {
            Ok(SchemaRow {
                kind: r.get(0)?,
                name: r.get(1)?,
                tbl_name: r.get(2)?,
                rootpage: r.get(3)?,
                sql: r.get(4)?,
            })
        })?
        .collect::<Result<_, _>>()?;
    let mut tables = Vec::new();
    for sr in schema_rows.iter().filter(|r| r.kind == "table") {
        if sr.name.starts_with("sqlite_") {
            continue;
        }
        let sql = sr.sql.clone().unwrap_or_default();
        let mut cols = Vec::new();
        let mut st = conn.prepare(&format!(
            "PRAGMA table_info(\"{}\")",
            sr.name.replace('"', "\"\"")
        ))?;
        let info: Vec<(String, String, bool, Option<String>, u32)> = st
            .query_map([], |r| {
                Ok((
                    r.get(1)?,
                    r.get(2)?,
                    r.get::<_, i64>(3)? != 0,
                    r.get(4)?,
                    r.get::<_, i64>(5)? as u32,
                ))
            })?
            .collect::<Result<_, _>>()?;
        for (name, decl, not_null, default_sql, pk) in info {
            let default_value = default_sql.as_deref().and_then(|d| {
                d.parse::<i64>().ok().map(Value::Integer).or_else(|| {
                    d.strip_prefix('\'')
                        .and_then(|x| x.strip_suffix('\''))
                        .map(|s| Value::text(s.replace("''", "'")))
                })
            });
            cols.push(Column {
                affinity: Affinity::from_declared_type(&decl),
                name,
                decl_type: decl,
                not_null,
                default_sql,
                default_value,
                pk_position: pk,
                generated: None,
                collation: None,
            });
        }
        let mut pk: Vec<(u32, usize)> = cols
            .iter()
            .enumerate()
            .filter(|(_, c)| c.pk_position > 0)
            .map(|(i, c)| (c.pk_position, i))
            .collect();
        pk.sort();
        let pk: Vec<usize> = pk.into_iter().map(|(_, i)| i).collect();
        let without_rowid = sql.to_ascii_uppercase().contains("WITHOUT ROWID");
        let rowid_alias = (!without_rowid
            && pk.len() == 1
            && cols[pk[0]].decl_type.eq_ignore_ascii_case("INTEGER"))
        .then(|| pk[0]);
        let mut unique = Vec::new();
        let mut il = conn.prepare(&format!(
            "PRAGMA index_list(\"{}\")",
            sr.name.replace('"', "\"\"")
        ))?;
        let idx: Vec<(String, bool, String)> = il
            .query_map([], |r| Ok((r.get(1)?, r.get::<_, i64>(2)? != 0, r.get(3)?)))?
            .collect::<Result<_, _>>()?;
        for (iname, uniq, origin) in idx {
            if uniq && origin == "u" {
                let mut ii = conn.prepare(&format!(
                    "PRAGMA index_info(\"{}\")",
                    iname.replace('"', "\"\"")
                ))?;
                let cols_of: Vec<usize> = ii
                    .query_map([], |r| r.get::<_, i64>(1))?
                    .filter_map(Result::ok)
                    .map(|c| c as usize)
                    .collect();
                unique.push(cols_of);
            }
        }
        let mut fkl = conn.prepare(&format!(
            "PRAGMA foreign_key_list(\"{}\")",
            sr.name.replace('"', "\"\"")
        ))?;
        let fks: Vec<(String, String, Option<String>)> = fkl
            .query_map([], |r| Ok((r.get(2)?, r.get(3)?, r.get(4)?)))?
            .collect::<Result<_, _>>()?;
        let foreign_keys = fks
            .into_iter()
            .map(|(parent, from, to)| ForeignKey {
                columns: vec![from],
                parent_table: parent,
                parent_columns: to.into_iter().collect(),
                on_delete: None,
                on_update: None,
            })
            .collect();
        tables.push(TableSchema {
            name: sr.name.clone(),
            key: if pk.is_empty() {
                KeyColumns::Rowid
            } else {
                KeyColumns::PrimaryKey(pk)
            },
            columns: cols,
            rowid_alias,
            without_rowid,
            strict: false,
            autoincrement: sql.to_ascii_uppercase().contains("AUTOINCREMENT"),
            unique,
            foreign_keys,
            sql,
        });
    }
    Ok((tables, schema_rows))
}

/// Streams the snapshot of a SQLite file as records, LSN 1 = SnapshotBegin. Re-reading from
/// an earlier LSN restarts the scan (the shipper reads the snapshot twice: profile, load).
struct SqliteSnapshotSource {
    path: std::path::PathBuf,
    tables: Vec<TableSchema>,
    schema_rows: Vec<SchemaRow>,
    next: Lsn,
    rx: Option<Receiver<Record>>,
}

impl SqliteSnapshotSource {
    fn start(&mut self) {
        let (tx, rx) = sync_channel::<Record>(8);
        let path = self.path.clone();
        let tables = self.tables.clone();
        let schema_rows = self.schema_rows.clone();
        std::thread::spawn(move || {
            let Ok(conn) = rusqlite::Connection::open_with_flags(
                &path,
                rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
            ) else {
                return;
            };
            let _ = tx.send(Record::SnapshotBegin(SnapshotBegin {
                position: SourcePosition::None,
                captured_at: 0,
                tables: tables.clone(),
                schema_rows,
            }));
            let mut counts = Vec::new();
            for t in &tables {
                let cols: Vec<String> = t
                    .columns
                    .iter()
                    .map(|c| format!("\"{}\"", c.name.replace('"', "\"\"")))
                    .collect();
                let rowid = if t.without_rowid { "NULL" } else { "rowid" };
                let Ok(mut st) = conn.prepare(&format!(
                    "SELECT {rowid}, {} FROM \"{}\"",
                    cols.join(", "),
                    t.name
                )) else {
                    return;
                };
                let Ok(mut rows) = st.query([]) else { return };
                let mut chunk = Vec::with_capacity(CHUNK);
                let mut chunk_bytes = 0usize;
                let mut n = 0u64;
                while let Ok(Some(r)) = rows.next() {
                    let rid = r.get::<_, Option<i64>>(0).ok().flatten();
                    let values: Vec<Value> = (1..=t.columns.len())
                        .map(|i| {
                            r.get_ref(i)
                                .map(ferry_sqlite::value_of)
                                .unwrap_or(Value::Null)
                        })
                        .collect();
                    chunk_bytes += values.iter().map(Value::approx_size).sum::<usize>();
                    chunk.push(SnapshotRow { rowid: rid, values });
                    n += 1;
                    if chunk.len() == CHUNK || chunk_bytes >= CHUNK_BYTES {
                        chunk_bytes = 0;
                        let rows = std::mem::take(&mut chunk);
                        let rec = Record::SnapshotRows(SnapshotRows {
                            table: t.name.clone(),
                            rows,
                        });
                        if tx.send(rec).is_err() {
                            return;
                        }
                    }
                }
                if !chunk.is_empty()
                    && tx
                        .send(Record::SnapshotRows(SnapshotRows {
                            table: t.name.clone(),
                            rows: chunk,
                        }))
                        .is_err()
                {
                    return;
                }
                counts.push((t.name.clone(), n));
            }
            let _ = tx.send(Record::SnapshotEnd(SnapshotEnd {
                position: SourcePosition::None,
                captured_at: 0,
                row_counts: counts,
            }));
        });
        self.rx = Some(rx);
        self.next = Lsn(1);
    }
}

impl RecordSource for SqliteSnapshotSource {
    fn log_id(&self) -> String {
        "5eed5eed5eed5eed5eed5eed5eed5eed".into()
    }

    fn read_batch(
        &mut self,
        after: Lsn,
        max: usize,
        _wait: Duration,
    ) -> Result<Vec<(Lsn, Record)>, RecordSourceError> {
        if self.rx.is_none() || after.next() != self.next {
            self.start();
            while self.next <= after {
                match self.rx.as_ref().and_then(|rx| rx.recv().ok()) {
                    Some(_) => self.next = self.next.next(),
                    None => return Ok(vec![]),
                }
            }
        }
        let mut out = Vec::new();
        while out.len() < max {
            let Some(rx) = self.rx.as_ref() else { break };
            match rx.recv() {
                Ok(r) => {
                    out.push((self.next, r));
                    self.next = self.next.next();
                }
                Err(_) => break,
            }
        }
        Ok(out)
    }
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

async fn load(path: &str, url: &str, profile: bool) -> Result<(), Box<dyn std::error::Error>> {
    let conn =
        rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let (tables, schema_rows) = schemas(&conn)?;
    drop(conn);
    let mut source = SqliteSnapshotSource {
        path: path.into(),
        tables,
        schema_rows,
        next: Lsn(1),
        rx: None,
    };
    let started = Instant::now();
    let opts = ShipOptions {
        source_id: "bench".into(),
        profile_types: profile,
        ..ShipOptions::default()
    };
    let mut shipper = Shipper::new(PgTarget::parse(url)?, opts).await?;
    // Done = the snapshot is loaded and the shipper streams at its end; the source has
    // nothing after the snapshot, so stop then.
    let status = shipper.status_handle();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let watcher = tokio::spawn(async move {
        let mut last_line = Instant::now();
        loop {
            let (phase, load) = match status.lock() {
                Ok(s) => (s.phase.clone(), s.load.clone()),
                Err(_) => break,
            };
            if phase == "streaming" || phase == "failed" || phase == "stopped" {
                break;
            }
            if let Some(l) = load
                && last_line.elapsed() >= Duration::from_secs(2)
            {
                eprintln!("  {}", l.line());
                last_line = Instant::now();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _ = stop_tx.send(true);
    });
    let summary = shipper.run(&mut source, stop_rx).await?;
    watcher.await?;
    let secs = started.elapsed().as_secs_f64();
    println!(
        "ferry load: {} rows in {:.2} s ({:.0} rows/s), peak RSS {} MiB",
        summary.stats.rows_loaded,
        secs,
        summary.stats.rows_loaded as f64 / secs,
        rss_kib() / 1024
    );
    for n in shipper.status().notices {
        eprintln!("notice: {n}");
    }
    Ok(())
}

fn kv_schema() -> TableSchema {
    TableSchema {
        name: "kv".into(),
        columns: vec![
            Column {
                name: "id".into(),
                decl_type: "INTEGER".into(),
                affinity: Affinity::Integer,
                not_null: false,
                default_sql: None,
                default_value: None,
                pk_position: 1,
                generated: None,
                collation: None,
            },
            Column {
                name: "v".into(),
                decl_type: "TEXT".into(),
                affinity: Affinity::Text,
                not_null: false,
                default_sql: None,
                default_value: None,
                pk_position: 0,
                generated: None,
                collation: None,
            },
            Column {
                name: "n".into(),
                decl_type: "REAL".into(),
                affinity: Affinity::Real,
                not_null: false,
                default_sql: None,
                default_value: None,
                pk_position: 0,
                generated: None,
                collation: None,
            },
        ],
        key: KeyColumns::PrimaryKey(vec![0]),
        rowid_alias: Some(0),
        without_rowid: false,
        strict: false,
        autoincrement: false,
        unique: vec![],
        foreign_keys: vec![],
        sql: String::new(),
    }
}

fn empty_snapshot() -> Vec<Record> {
    vec![
        Record::SnapshotBegin(SnapshotBegin {
            position: SourcePosition::None,
            captured_at: 0,
            tables: vec![kv_schema()],
            schema_rows: vec![],
        }),
        Record::SnapshotEnd(SnapshotEnd {
            position: SourcePosition::None,
            captured_at: 0,
            row_counts: vec![],
        }),
    ]
}

async fn stream(url: &str, txns: usize, per: usize) -> Result<(), Box<dyn std::error::Error>> {
    let schema = kv_schema();
    let mut recs = vec![
        Record::SnapshotBegin(SnapshotBegin {
            position: SourcePosition::None,
            captured_at: 0,
            tables: vec![schema],
            schema_rows: vec![],
        }),
        Record::SnapshotEnd(SnapshotEnd {
            position: SourcePosition::None,
            captured_at: 0,
            row_counts: vec![],
        }),
    ];
    // Inserts, then updates of the same keys, then deletes: every change is a row to apply.
    let row = |id: i64, generation: i64| {
        vec![
            Value::Integer(id),
            Value::text(format!(
                "value {id} generation {generation} padding padding"
            )),
            Value::Real(id as f64 * 0.5 + generation as f64),
        ]
    };
    let third = (txns / 3).max(1);
    let mut total_changes = 0usize;
    for t in 0..third * 3 {
        let phase = t / third;
        let mut changes = Vec::with_capacity(per);
        for j in 0..per {
            let k = ((t % third) * per + j) as i64;
            let key = vec![Value::Integer(k)];
            changes.push(match phase {
                0 => RowChange::insert("kv", key, row(k, 0)),
                1 => RowChange::update("kv", key, row(k, 0), row(k, 1)),
                _ => RowChange::delete("kv", key, row(k, 1)),
            });
        }
        total_changes += changes.len();
        recs.push(Record::Transaction(Transaction {
            position: SourcePosition::None,
            captured_at: ferry_core::now_micros(),
            schema_changes: vec![],
            changes,
            resync: false,
        }));
    }
    let txns = third * 3;
    let mut source = VecRecordSource::new("5eed5eed5eed5eed5eed5eed5eed5eee", recs);
    let last = source.last_lsn();
    let opts = ShipOptions {
        source_id: "stream".into(),
        ..ShipOptions::default()
    };
    let mut shipper = Shipper::new(PgTarget::parse(url)?, opts).await?;
    let started = Instant::now();
    let s = shipper.run_until_caught_up(&mut source, last).await?;
    let secs = started.elapsed().as_secs_f64();
    println!(
        "ferry stream: {txns} transactions, {total_changes} row changes in {secs:.2} s: {:.0} rows/s, {:.0} txn/s, {} batches",
        total_changes as f64 / secs,
        txns as f64 / secs,
        s.stats.batches
    );
    Ok(())
}

/// A log that a writer thread appends to while the shipper reads it; `read_batch` waits
/// for records like the durable log does.
#[derive(Clone, Default)]
struct PacedLog {
    inner: std::sync::Arc<(std::sync::Mutex<Vec<Record>>, std::sync::Condvar)>,
}

impl RecordSource for PacedLog {
    fn log_id(&self) -> String {
        "1a91a91a91a91a91a91a91a91a91a91a".into()
    }

    fn read_batch(
        &mut self,
        after: Lsn,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<(Lsn, Record)>, RecordSourceError> {
        let (m, cv) = &*self.inner;
        let deadline = Instant::now() + wait;
        let mut v = m
            .lock()
            .map_err(|_| RecordSourceError::new("log lock poisoned"))?;
        while v.len() as u64 <= after.0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(vec![]);
            }
            v = cv
                .wait_timeout(v, left)
                .map_err(|_| RecordSourceError::new("log lock poisoned"))?
                .0;
        }
        Ok(v.iter()
            .enumerate()
            .skip(after.0 as usize)
            .take(max)
            .map(|(i, r)| (Lsn(i as u64 + 1), r.clone()))
            .collect())
    }
}

/// Lag at a steady rate: a writer appends `rate` one-row transactions per second for
/// `seconds`; a poller notes when each LSN became applied (the shipper's status moves after
/// PostgreSQL's COMMIT returned, so the row is visible by then). Lag of a transaction =
/// applied time − append time; prints p50, p99 and max.
async fn lag(url: &str, rate: u64, seconds: u64) -> Result<(), Box<dyn std::error::Error>> {
    let log = PacedLog::default();
    {
        let (m, _) = &*log.inner;
        m.lock().map_err(|_| "lock")?.extend(empty_snapshot());
    }
    let base = empty_snapshot().len() as u64;
    let opts = ShipOptions {
        source_id: "lag".into(),
        ..ShipOptions::default()
    };
    let mut shipper = Shipper::new(PgTarget::parse(url)?, opts).await?;
    let status = shipper.status_handle();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut reader = log.clone();
    let run = tokio::spawn(async move { shipper.run(&mut reader, stop_rx).await });
    // Wait for the (empty) load to finish before pacing.
    while status.lock().map(|s| s.applied_lsn.0).unwrap_or(0) < base {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let total = rate * seconds;
    let writer_log = log.clone();
    let writer = std::thread::spawn(move || {
        let start = Instant::now();
        let mut appended_at = Vec::with_capacity(total as usize);
        for i in 0..total {
            let due = start + Duration::from_secs_f64(i as f64 / rate as f64);
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            let k = (i % 100_000) as i64;
            let rec = Record::Transaction(Transaction {
                position: SourcePosition::None,
                captured_at: ferry_core::now_micros(),
                schema_changes: vec![],
                changes: vec![RowChange {
                    table: "kv".into(),
                    op: ferry_core::Op::Update,
                    key: vec![Value::Integer(k)],
                    before: None,
                    after: Some(vec![
                        Value::Integer(k),
                        Value::text(format!("v{i}")),
                        Value::Real(i as f64),
                    ]),
                }],
                resync: false,
            });
            let (m, cv) = &*writer_log.inner;
            if let Ok(mut v) = m.lock() {
                v.push(rec);
                appended_at.push(Instant::now());
                cv.notify_all();
            }
        }
        appended_at
    });
    let mut applied: Vec<(Lsn, Instant)> = Vec::new();
    let last = Lsn(base + total);
    let mut seen = Lsn::ZERO;
    while seen < last {
        let now = status.lock().map(|s| s.applied_lsn).unwrap_or(Lsn::ZERO);
        if now > seen {
            applied.push((now, Instant::now()));
            seen = now;
        }
        tokio::time::sleep(Duration::from_micros(500)).await;
    }
    let _ = stop_tx.send(true);
    run.await??;
    let appended_at = writer.join().map_err(|_| "writer panicked")?;
    let mut lags: Vec<f64> = Vec::with_capacity(appended_at.len());
    let mut j = 0usize;
    for (i, at) in appended_at.iter().enumerate() {
        let lsn = Lsn(base + i as u64 + 1);
        while applied[j].0 < lsn {
            j += 1;
        }
        lags.push(applied[j].1.saturating_duration_since(*at).as_secs_f64());
    }
    lags.sort_by(f64::total_cmp);
    let q = |p: f64| lags[((lags.len() as f64 * p) as usize).min(lags.len() - 1)] * 1000.0;
    println!(
        "ferry lag: {total} one-row transactions at {rate}/s: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        q(0.5),
        q(0.99),
        q(1.0)
    );
    Ok(())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the tokio runtime: {e}");
            std::process::exit(2);
        }
    };
    let r = rt.block_on(async {
        match args.get(1).map(String::as_str) {
            Some("load") if args.len() >= 4 => load(&args[2], &args[3], !args.iter().any(|a| a == "--no-profile")).await,
            Some("stream") if args.len() == 5 => stream(&args[2], args[3].parse()?, args[4].parse()?).await,
            Some("lag") if args.len() == 5 => lag(&args[2], args[3].parse()?, args[4].parse()?).await,
            _ => Err("usage: sqlite_snapshot_load load <app.db> <url> [--no-profile] | stream <url> <txns> <rows-per-txn> | lag <url> <txns-per-second> <seconds>".into()),
        }
    });
    if let Err(e) = r {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
