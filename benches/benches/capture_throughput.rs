//! Capture throughput: how many small committed transactions (and rows) per second the SQLite
//! capture decodes on one core, from a WAL another connection wrote while capture held its
//! reader. Also prints the capture process's peak RSS. Target: ≥ 40,000 small txn/s.
//!
//! Each iteration also times the writer that produced the WAL (one connection, the same
//! transactions, synchronous=NORMAL: the fastest a single SQLite writer goes here) and prints
//! decode rate / writer rate: "keeps up with the fastest single writer" as a ratio taken in
//! the same moment, which the machine's drift does not move the way it moves either rate.
//!
//! cargo bench -p ferry-bench --bench capture_throughput

use criterion::{Criterion, criterion_group, criterion_main};
use ferry_sqlite::{CaptureOptions, RecordFile, SqliteCapture};
use std::sync::Arc;
use std::time::{Duration, Instant};

const TXNS: i64 = 20_000;

/// The capture, with the WAL it has to read, and how long the writer took to write it.
fn prepare(dir: &std::path::Path) -> (SqliteCapture, Duration) {
    let db = dir.join("app.db");
    let c = rusqlite::Connection::open(&db).unwrap();
    c.execute_batch(
        "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;
         CREATE TABLE events(id INTEGER PRIMARY KEY, kind TEXT, payload TEXT, n INT);",
    )
    .unwrap();
    let log = Arc::new(RecordFile::open(&dir.join("log.bin")).unwrap());
    let opts = CaptureOptions {
        watch: false,
        bound_wal: false,
        ..CaptureOptions::default()
    };
    let mut cap = SqliteCapture::open(&db, &dir.join("work"), log, opts).unwrap();
    cap.catch_up().unwrap();
    // The application: small transactions (insert + update of an earlier row).
    let mut st = c
        .prepare("INSERT INTO events(kind, payload, n) VALUES ('click', ?1, 0)")
        .unwrap();
    let mut up = c
        .prepare("UPDATE events SET n = n + 1 WHERE id = ?1")
        .unwrap();
    let t = Instant::now();
    for i in 1..=TXNS {
        c.execute_batch("BEGIN").unwrap();
        st.execute([format!("payload-{i:08}")]).unwrap();
        up.execute([i / 2 + 1]).unwrap();
        c.execute_batch("COMMIT").unwrap();
    }
    (cap, t.elapsed())
}

fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("capture_throughput");
    g.sample_size(10).measurement_time(Duration::from_secs(20));
    g.throughput(criterion::Throughput::Elements(TXNS as u64));
    g.bench_function("decode_20k_small_txns", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let dir = tempfile::tempdir().unwrap();
                let (mut cap, written_in) = prepare(dir.path());
                let t = Instant::now();
                let step = cap.catch_up().unwrap();
                total += t.elapsed();
                assert_eq!(step.transactions, TXNS as u64);
                let decode_rate = step.transactions as f64 / t.elapsed().as_secs_f64();
                let write_rate = TXNS as f64 / written_in.as_secs_f64();
                eprintln!(
                    "  {} txn, {} rows in {:?}: {:.0} txn/s, {:.0} rows/s; writer {:.0} txn/s, decode/writer {:.2}; peak RSS {} MiB",
                    step.transactions,
                    step.rows,
                    t.elapsed(),
                    decode_rate,
                    step.rows as f64 / t.elapsed().as_secs_f64(),
                    write_rate,
                    decode_rate / write_rate,
                    peak_rss_kib() / 1024
                );
            }
            total
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
