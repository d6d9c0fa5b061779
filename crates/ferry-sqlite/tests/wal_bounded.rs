//! The WAL stays bounded under a sustained writer that relies only on its autocheckpoint,
//! while ferry tails it with hand-over-hand readers (which alone would starve the WAL reset).
//! `FERRY_WAL_BOUND_SECS` sets the duration (default 60).

mod common;
use common::*;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[test]
fn wal_stays_under_the_limit_with_a_sustained_writer() {
    let secs: u64 = std::env::var("FERRY_WAL_BOUND_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60);
    let env = Env::new();
    let app = env.app(4096);
    app.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, pad BLOB);")
        .unwrap();
    drop(app);
    let limit: u64 = 64 << 20;
    let log = env.log();
    let opts = ferry_sqlite::CaptureOptions {
        wal_limit_bytes: limit,
        watch: true,
        ..Default::default()
    };
    let mut cap = ferry_sqlite::SqliteCapture::open(&env.db, &env.work, log, opts).unwrap();
    cap.catch_up().unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let max_wal = Arc::new(AtomicU64::new(0));
    let db = env.db.clone();
    let s = stop.clone();
    let writer = std::thread::spawn(move || {
        let c = rusqlite::Connection::open(&db).unwrap();
        c.busy_timeout(Duration::from_secs(10)).unwrap();
        c.execute_batch("PRAGMA synchronous=NORMAL;").unwrap();
        let mut n = 0u64;
        let end = Instant::now() + Duration::from_secs(secs);
        while Instant::now() < end {
            c.execute("INSERT INTO t(pad) VALUES (?1)", [vec![5u8; 3000]])
                .unwrap();
            n += 1;
            // A sustained but paced writer (about 1.5 MB/s of WAL): capture must keep up with
            // the writer for any mechanism to bound the WAL, and unoptimised test builds
            // decode several times slower than release builds.
            std::thread::sleep(Duration::from_micros(700));
            if n.is_multiple_of(4) {
                c.execute("DELETE FROM t WHERE id = ?1", [n as i64 / 2])
                    .unwrap();
            }
        }
        s.store(true, Ordering::SeqCst);
        n
    });
    let wal_path = env.dir.path().join("app.db-wal");
    let (s2, m2) = (stop.clone(), max_wal.clone());
    let monitor = std::thread::spawn(move || {
        while !s2.load(Ordering::SeqCst) {
            if let Ok(md) = std::fs::metadata(&wal_path) {
                m2.fetch_max(md.len(), Ordering::SeqCst);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    });
    let s3 = stop.clone();
    let runner = std::thread::spawn(move || {
        cap.run(&s3).unwrap();
        cap
    });
    let writes = writer.join().unwrap();
    monitor.join().unwrap();
    let mut cap = runner.join().unwrap();
    cap.catch_up().unwrap();
    let st = cap.stats();
    drop(cap);
    let max = max_wal.load(Ordering::SeqCst);
    eprintln!(
        "writes={writes} max_wal={}MiB rounds={} failures={} lock_hold_max={:?} resyncs={}",
        max >> 20,
        st.wal_bound_rounds,
        st.wal_bound_failures,
        st.lock_hold_max,
        st.resyncs
    );
    assert!(
        max < limit,
        "the -wal file reached {max} bytes, over the {limit}-byte limit"
    );
    assert_eq!(st.resyncs, 0);
    assert!(
        st.lock_hold_max < Duration::from_millis(50),
        "write lock held {:?}",
        st.lock_hold_max
    );
    assert_fold_matches(&env.log_path, &env.db);
}
