//! Snapshot read rate: the initial snapshot of a SQLite database into the log (MB/s of
//! database file), against `sqlite3 <db> .dump` of the same file in the same run.
//!
//! cargo bench -p ferry-bench --bench capture_snapshot -- --size-mb 200
//! (`--size-mb` sets the database size, default 200; other arguments are ignored.)

use ferry_sqlite::{CaptureOptions, RecordFile, SqliteCapture};
use std::time::{Duration, Instant};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let size_mb: u64 = args
        .iter()
        .position(|a| a == "--size-mb")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    let c = rusqlite::Connection::open(&db).unwrap();
    c.execute_batch(
        "PRAGMA journal_mode=WAL; PRAGMA synchronous=OFF;
         CREATE TABLE events(id INTEGER PRIMARY KEY, kind TEXT, payload TEXT, n INT, score REAL);
         CREATE TABLE tags(name TEXT PRIMARY KEY, n INT) WITHOUT ROWID;",
    )
    .unwrap();
    let target = size_mb << 20;
    let mut i: i64 = 0;
    loop {
        c.execute_batch("BEGIN").unwrap();
        {
            let mut st = c
                .prepare("INSERT INTO events(kind, payload, n, score) VALUES ('click', ?1, ?2, ?3)")
                .unwrap();
            let mut tg = c.prepare("INSERT INTO tags VALUES (?1, ?2)").unwrap();
            for _ in 0..10_000 {
                st.execute(rusqlite::params![
                    format!("payload-{i:012}-{}", "x".repeat((i % 200) as usize)),
                    i,
                    i as f64 / 3.0
                ])
                .unwrap();
                if i % 10 == 0 {
                    tg.execute(rusqlite::params![format!("tag-{i:012}"), i])
                        .unwrap();
                }
                i += 1;
            }
        }
        c.execute_batch("COMMIT").unwrap();
        if std::fs::metadata(&db).unwrap().len()
            + std::fs::metadata(dir.path().join("app.db-wal"))
                .map(|m| m.len())
                .unwrap_or(0)
            >= target
        {
            break;
        }
    }
    c.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);").unwrap();
    let bytes = std::fs::metadata(&db).unwrap().len();
    let mb = bytes as f64 / (1 << 20) as f64;
    eprintln!("database: {mb:.0} MiB, {i} rows in events");

    // sqlite3 .dump (the CLI that is installed), output discarded.
    let t = Instant::now();
    let dump = std::process::Command::new("sqlite3")
        .arg(&db)
        .arg(".dump")
        .stdout(std::process::Stdio::null())
        .status();
    let dump_time = t.elapsed();
    match dump {
        Ok(s) if s.success() => eprintln!(
            "sqlite3 .dump:      {dump_time:>10.2?}  {:>7.1} MiB/s",
            mb / dump_time.as_secs_f64()
        ),
        other => eprintln!("sqlite3 .dump could not run: {other:?}"),
    }

    // ferry's initial snapshot into a log file (fsync per batch), from a cold capture.
    let log = std::sync::Arc::new(RecordFile::open(&dir.path().join("log.bin")).unwrap());
    let opts = CaptureOptions {
        watch: false,
        bound_wal: false,
        ..CaptureOptions::default()
    };
    let t = Instant::now();
    let mut cap = SqliteCapture::open(&db, &dir.path().join("capture"), log, opts).unwrap();
    let step = cap.step(Duration::from_secs(3600)).unwrap();
    let snap_time = t.elapsed();
    assert!(step.snapshot_taken);
    assert_eq!(step.snapshot_rows as i64, i + i / 10);
    eprintln!(
        "ferry snapshot:     {snap_time:>10.2?}  {:>7.1} MiB/s  ({} rows, {:.0} rows/s)",
        mb / snap_time.as_secs_f64(),
        step.snapshot_rows,
        step.snapshot_rows as f64 / snap_time.as_secs_f64()
    );
    eprintln!(
        "ratio ferry/.dump time: {:.2}",
        snap_time.as_secs_f64() / dump_time.as_secs_f64()
    );
}
