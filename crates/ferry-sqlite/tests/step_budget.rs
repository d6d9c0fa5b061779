//! Bounded work per call: with a writer committing as fast as it can, `step` returns after
//! about its budget with `caught_up == false` instead of chasing the writer forever, and once
//! the writer stops, steps reach `caught_up == true` with the log equal to the database.

mod common;
use common::*;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

#[test]
fn step_returns_within_its_budget_while_a_writer_outpaces_it() {
    let env = Env::new();
    let app = env.app(4096);
    app.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT, n INT);")
        .unwrap();
    let log = env.log();
    let mut cap = env.capture(log);
    let first = cap.step(Duration::from_millis(100)).unwrap();
    assert!(first.snapshot_taken);
    assert!(first.caught_up);

    let stop = Arc::new(AtomicBool::new(false));
    let started = Arc::new(AtomicBool::new(false));
    let db = env.db.clone();
    let (s, st) = (stop.clone(), started.clone());
    let writer = std::thread::spawn(move || {
        let c = rusqlite::Connection::open(&db).unwrap();
        c.busy_timeout(Duration::from_secs(10)).unwrap();
        c.execute_batch("PRAGMA synchronous=NORMAL;").unwrap();
        let mut n = 0i64;
        // No pacing at all: small transactions back to back.
        while !s.load(Ordering::SeqCst) {
            c.execute_batch("BEGIN").unwrap();
            c.execute("INSERT INTO t(v, n) VALUES (?1, 0)", [format!("row-{n}")])
                .unwrap();
            c.execute("UPDATE t SET n = n + 1 WHERE id = ?1", [n / 2 + 1])
                .unwrap();
            if n % 5 == 0 {
                c.execute("DELETE FROM t WHERE id = ?1", [n / 3 + 1])
                    .unwrap();
            }
            c.execute_batch("COMMIT").unwrap();
            n += 1;
            st.store(true, Ordering::SeqCst);
        }
        n
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    while !started.load(Ordering::SeqCst) {
        assert!(Instant::now() < deadline, "the writer never committed");
        std::thread::yield_now();
    }

    // While the writer runs: steps keep returning, and at least one with work still waiting.
    let mut behind = 0;
    let mut steps = 0;
    let mut slowest = Duration::ZERO;
    let busy_until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < busy_until {
        let t = Instant::now();
        let s = cap.step(Duration::from_millis(100)).unwrap();
        slowest = slowest.max(t.elapsed());
        steps += 1;
        if !s.caught_up {
            behind += 1;
        }
    }
    stop.store(true, Ordering::SeqCst);
    let writes = writer.join().unwrap();
    eprintln!("writes={writes} steps={steps} behind={behind} slowest={slowest:?}");
    assert!(
        behind >= 1,
        "no step returned with work waiting while the writer ran ({steps} steps)"
    );
    // A liveness bound, not a speed test: an unbounded step would run until the writer
    // stopped (3 s); a bounded one stops after its 100 ms budget plus one batch.
    assert!(
        slowest < Duration::from_millis(2500),
        "a 100 ms step took {slowest:?}"
    );

    // After the writer stops, steps reach the end.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let s = cap.step(Duration::from_millis(100)).unwrap();
        if s.caught_up {
            break;
        }
        assert!(Instant::now() < deadline, "capture never caught up");
    }
    assert_eq!(cap.stats().resyncs, 0);
    drop(cap);
    assert_fold_matches(&env.log_path, &env.db);
}
