//! Capture overhead: the application's writer alone, with ferry's SQLite capture tailing
//! it, and with change-log triggers (what trigger-based tools do), in one run, on the same
//! kind of fresh database. Target: with capture ≥ 0.95× the writer alone, and clearly ahead
//! of triggers.
//!
//! The writer: small transactions (insert + update of an earlier row, a delete every tenth),
//! WAL mode, synchronous=NORMAL, its own autocheckpoint, for a fixed time per phase. The
//! writer alone runs first and last (the mean of both is the baseline), so drift of the
//! machine during the run shows as the difference between the two.
//!
//! cargo bench -p ferry-bench --bench capture_overhead -- --measurement-time 5
//! (FERRY_BENCH_ROUNDS=N repeats the phases N times and prints the median ratios.)
//! (`--measurement-time` sets the seconds per phase, default 5; other arguments are ignored.)

use ferry_sqlite::{CaptureOptions, RecordFile, SqliteCapture};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

fn open_app(db: &Path) -> rusqlite::Connection {
    let c = rusqlite::Connection::open(db).unwrap();
    c.execute_batch(
        "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;
         CREATE TABLE IF NOT EXISTS events(id INTEGER PRIMARY KEY, kind TEXT, payload TEXT, n INT);",
    )
    .unwrap();
    c
}

/// Runs the writer for `secs`; returns its committed transactions.
fn write_for(c: &rusqlite::Connection, secs: f64) -> u64 {
    let mut ins = c
        .prepare("INSERT INTO events(kind, payload, n) VALUES ('click', ?1, 0)")
        .unwrap();
    let mut up = c
        .prepare("UPDATE events SET n = n + 1 WHERE id = ?1")
        .unwrap();
    let mut del = c.prepare("DELETE FROM events WHERE id = ?1").unwrap();
    let end = Instant::now() + Duration::from_secs_f64(secs);
    let mut i: i64 = 0;
    while Instant::now() < end {
        c.execute_batch("BEGIN").unwrap();
        ins.execute([format!("payload-{i:08}")]).unwrap();
        up.execute([i / 2 + 1]).unwrap();
        if i % 10 == 9 {
            del.execute([i / 3 + 1]).unwrap();
        }
        c.execute_batch("COMMIT").unwrap();
        i += 1;
    }
    i as u64
}

fn alone(secs: f64) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let c = open_app(&dir.path().join("app.db"));
    let n = write_for(&c, secs);
    n as f64 / secs
}

fn with_capture(secs: f64) -> (f64, u64, ferry_sqlite::CaptureStats) {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    let c = open_app(&db);
    // FERRY_BENCH_CAPTURE_DIR puts capture's own files (log, shadow) elsewhere, e.g. on
    // tmpfs, to tell the cost of its fsyncs from the cost of its CPU.
    let state = match std::env::var_os("FERRY_BENCH_CAPTURE_DIR") {
        Some(d) => tempfile::tempdir_in(d).unwrap(),
        None => tempfile::tempdir_in(dir.path()).unwrap(),
    };
    let log = Arc::new(RecordFile::open(&state.path().join("log.bin")).unwrap());
    // Knobs for experiments (defaults: ferry's own): FERRY_BENCH_WATCH=0 turns the file
    // notifications off, FERRY_BENCH_WAL_LIMIT_MB and FERRY_BENCH_MIN_POLL_GAP_MS set those
    // options.
    let env_u64 = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<u64>().ok());
    let defaults = CaptureOptions::default();
    let opts = CaptureOptions {
        source_id: "bench".into(),
        watch: env_u64("FERRY_BENCH_WATCH").map_or(defaults.watch, |v| v != 0),
        wal_limit_bytes: env_u64("FERRY_BENCH_WAL_LIMIT_MB")
            .map_or(defaults.wal_limit_bytes, |m| m << 20),
        min_poll_gap: env_u64("FERRY_BENCH_MIN_POLL_GAP_MS")
            .map_or(defaults.min_poll_gap, Duration::from_millis),
        ..defaults
    };
    let mut cap = SqliteCapture::open(&db, &state.path().join("capture"), log, opts).unwrap();
    cap.catch_up().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    let runner = std::thread::spawn(move || {
        cap.run(&s).unwrap();
        cap
    });
    let n = write_for(&c, secs);
    stop.store(true, Ordering::SeqCst);
    let mut cap = runner.join().unwrap();
    let t = Instant::now();
    cap.catch_up().unwrap();
    let behind = t.elapsed();
    let st = cap.stats();
    assert_eq!(st.transactions, n, "capture must see every commit");
    eprintln!("  (capture finished {behind:?} after the writer stopped)");
    (n as f64 / secs, n, st)
}

/// The control: the writer while another thread keeps the second core busy (no capture).
/// How much of capture's overhead is just sharing a 2-core machine.
fn with_busy_core(secs: f64) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let c = open_app(&dir.path().join("app.db"));
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    let hog = std::thread::spawn(move || {
        let mut x = 0u64;
        while !s.load(Ordering::Relaxed) {
            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
        }
    });
    let n = write_for(&c, secs);
    stop.store(true, Ordering::SeqCst);
    hog.join().unwrap();
    n as f64 / secs
}

fn with_triggers(secs: f64) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let c = open_app(&dir.path().join("app.db"));
    c.execute_batch(
        "CREATE TABLE changelog(seq INTEGER PRIMARY KEY, tbl TEXT, op TEXT, row_id INT, data TEXT);
         CREATE TRIGGER events_i AFTER INSERT ON events BEGIN
           INSERT INTO changelog(tbl, op, row_id, data) VALUES ('events', 'I', NEW.id,
             json_object('id', NEW.id, 'kind', NEW.kind, 'payload', NEW.payload, 'n', NEW.n));
         END;
         CREATE TRIGGER events_u AFTER UPDATE ON events BEGIN
           INSERT INTO changelog(tbl, op, row_id, data) VALUES ('events', 'U', NEW.id,
             json_object('id', NEW.id, 'kind', NEW.kind, 'payload', NEW.payload, 'n', NEW.n));
         END;
         CREATE TRIGGER events_d AFTER DELETE ON events BEGIN
           INSERT INTO changelog(tbl, op, row_id, data) VALUES ('events', 'D', OLD.id, NULL);
         END;",
    )
    .unwrap();
    let n = write_for(&c, secs);
    n as f64 / secs
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let secs: f64 = args
        .iter()
        .position(|a| a == "--measurement-time")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(5.0);
    // FERRY_BENCH_ROUNDS (default 1) repeats alone → capture → triggers → busy; every phase
    // is compared with the mean of the "alone" phases just before and after it, so the
    // machine's drift over the run (large on a shared machine) cancels out of each ratio.
    let rounds: usize = std::env::var("FERRY_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
        .max(1);
    eprintln!("capture_overhead: {secs} s per phase, {rounds} round(s)");
    let mut ratios: [Vec<f64>; 3] = Default::default();
    let mut before = alone(secs);
    eprintln!("writer alone:           {before:>9.0} txn/s");
    for _ in 0..rounds {
        let (cap, n, st) = with_capture(secs);
        eprintln!(
            "writer with capture:    {cap:>9.0} txn/s  ({n} txn captured, {} rows; WAL resets {}, releases {}, resyncs {})",
            st.inserts + st.updates + st.deletes,
            st.wal_resets,
            st.wal_bound_rounds,
            st.resyncs
        );
        let trg = with_triggers(secs);
        eprintln!("writer with triggers:   {trg:>9.0} txn/s");
        let busy = with_busy_core(secs);
        eprintln!(
            "writer, other core busy:{busy:>9.0} txn/s  (control: no capture, a spinning thread)"
        );
        let after = alone(secs);
        eprintln!("writer alone:           {after:>9.0} txn/s");
        let base = (before + after) / 2.0;
        for (r, v) in ratios.iter_mut().zip([cap, trg, busy]) {
            r.push(v / base);
        }
        eprintln!(
            "ratios vs alone (mean {base:.0} txn/s): capture {:.3}, triggers {:.3}, other core busy {:.3}",
            cap / base,
            trg / base,
            busy / base
        );
        before = after;
    }
    if rounds > 1 {
        let median = |v: &[f64]| {
            let mut v = v.to_vec();
            v.sort_by(f64::total_cmp);
            let m = v.len() / 2;
            if v.len() % 2 == 1 {
                v[m]
            } else {
                (v[m - 1] + v[m]) / 2.0
            }
        };
        eprintln!(
            "median of {rounds} rounds: capture {:.3}, triggers {:.3}, other core busy {:.3}",
            median(&ratios[0]),
            median(&ratios[1]),
            median(&ratios[2])
        );
    }
}
