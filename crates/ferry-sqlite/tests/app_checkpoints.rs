//! The application's own blocking checkpoints (TRUNCATE, RESTART) still complete promptly
//! while capture runs: capture notices the checkpointer waiting for its read slot and lets
//! go, without losing or doubling a commit.

mod common;
use common::*;
use ferry_core::{Op, Record, Value};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// The application's busy handler: retry every millisecond for up to 60 s (what the lead's
/// sample application does), so a checkpoint that waits for ferry shows as a long stall
/// rather than an error.
fn patient(attempt: i32) -> bool {
    if attempt >= 60_000 {
        return false;
    }
    std::thread::sleep(Duration::from_millis(1));
    true
}

struct WriterReport {
    commits: i64,
    checkpoints: u32,
    failed_checkpoints: u32,
    longest_checkpoint: Duration,
    wal_empty_seen: u32,
}

fn write_and_checkpoint(db: &std::path::Path, mode: &str, n: i64, every: i64) -> WriterReport {
    let mut c = rusqlite::Connection::open(db).unwrap();
    c.busy_handler(Some(patient)).unwrap();
    c.execute_batch("PRAGMA synchronous=NORMAL;").unwrap();
    let mut wal = db.as_os_str().to_owned();
    wal.push("-wal");
    let wal = std::path::PathBuf::from(wal);
    let mut r = WriterReport {
        commits: 0,
        checkpoints: 0,
        failed_checkpoints: 0,
        longest_checkpoint: Duration::ZERO,
        wal_empty_seen: 0,
    };
    for i in 1..=n {
        c.execute(
            "INSERT INTO seq(i, pad) VALUES (?1, ?2)",
            rusqlite::params![i, vec![7u8; (i as usize * 37) % 1500]],
        )
        .unwrap();
        r.commits += 1;
        if i % every == 0 {
            let t = Instant::now();
            let busy: i64 = c
                .query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |row| {
                    row.get(0)
                })
                .unwrap();
            r.longest_checkpoint = r.longest_checkpoint.max(t.elapsed());
            r.checkpoints += 1;
            if busy != 0 {
                r.failed_checkpoints += 1;
            } else if std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0) == 0 {
                r.wal_empty_seen += 1;
            }
        }
        // A paced application: capture is caught up and idle between commits, which is
        // when its hand-over-hand readers sit on the read slot the checkpoint needs.
        std::thread::sleep(Duration::from_millis(2));
    }
    r
}

fn run_with_capture(mode: &'static str, n: i64, every: i64) {
    let env = Env::new();
    let app = env.app(4096);
    app.execute_batch("CREATE TABLE seq(i INTEGER PRIMARY KEY, pad BLOB);")
        .unwrap();
    drop(app);
    let log = env.log();
    // As `ferry run` captures: woken by file events, so it rotates its readers often.
    let opts = ferry_sqlite::CaptureOptions {
        watch: true,
        ..Default::default()
    };
    let mut cap = ferry_sqlite::SqliteCapture::open(&env.db, &env.work, log.clone(), opts).unwrap();
    cap.catch_up().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    let runner = std::thread::spawn(move || {
        cap.run(&stop2).unwrap();
        cap
    });
    let db = env.db.clone();
    let writer = std::thread::spawn(move || write_and_checkpoint(&db, mode, n, every));
    let report = writer.join().unwrap();
    stop.store(true, Ordering::SeqCst);
    let mut cap = runner.join().unwrap();
    cap.catch_up().unwrap();
    let stats = cap.stats();
    drop(cap);
    eprintln!(
        "{mode}: {} checkpoints, longest {:?}, -wal empty after {}, yields {} (longest {:?}), bound rounds {}, resyncs {}",
        report.checkpoints,
        report.longest_checkpoint,
        report.wal_empty_seen,
        stats.checkpoint_yields,
        stats.checkpoint_yield_max,
        stats.wal_bound_rounds,
        stats.resyncs
    );
    assert_eq!(report.failed_checkpoints, 0, "a {mode} checkpoint failed");
    assert!(
        report.longest_checkpoint < Duration::from_millis(500),
        "the application's {mode} checkpoint stalled for {:?}",
        report.longest_checkpoint
    );
    if mode == "TRUNCATE" {
        assert!(
            report.wal_empty_seen > 0,
            "no TRUNCATE emptied the -wal file"
        );
    }
    assert!(
        stats.checkpoint_yields > 0,
        "capture never had to yield: the test did not exercise the stall"
    );
    assert_eq!(stats.resyncs, 0, "a resync while ferry ran undisturbed");

    // Exactly one record per commit, in commit order, and the fold equals the database.
    let recs = records(&env.log_path);
    let seqs: Vec<Vec<i64>> = recs
        .iter()
        .filter_map(|r| match r {
            Record::Transaction(t) => {
                assert!(!t.resync);
                Some(
                    t.changes
                        .iter()
                        .filter(|c| c.op == Op::Insert)
                        .filter_map(|c| c.key.first().and_then(Value::as_i64))
                        .collect(),
                )
            }
            _ => None,
        })
        .collect();
    assert_eq!(seqs.len() as i64, report.commits, "one record per commit");
    for (expect, s) in (1..).zip(&seqs) {
        assert_eq!(s, &vec![expect], "each record is exactly the next commit");
    }
    assert_fold_matches(&env.log_path, &env.db);
}

#[test]
fn application_truncate_checkpoints_do_not_wait_for_capture() {
    run_with_capture("TRUNCATE", 1500, 10);
}

#[test]
fn application_restart_checkpoints_do_not_wait_for_capture() {
    run_with_capture("RESTART", 600, 10);
}
