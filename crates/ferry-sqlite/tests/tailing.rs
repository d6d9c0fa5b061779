//! The tailer against a writer on its own connection in another thread: every committed
//! transaction exactly once under a checkpoint storm, rolled-back transactions never, gaps
//! resynced, rollback-journal databases polled.

mod common;
use common::*;
use ferry_core::{Op, Record, SourcePosition, Value};
use rand::{Rng, SeedableRng};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

fn seq_of(r: &Record) -> Option<Vec<i64>> {
    match r {
        Record::Transaction(t) => Some(
            t.changes
                .iter()
                .filter(|c| c.table == "seq" && c.op == Op::Insert)
                .filter_map(|c| c.key.first().and_then(Value::as_i64))
                .collect(),
        ),
        _ => None,
    }
}

#[test]
fn every_commit_exactly_once_under_a_checkpoint_storm() {
    let env = Env::new();
    let app = env.app(4096);
    app.execute_batch(
        "CREATE TABLE seq(i INTEGER PRIMARY KEY, pad BLOB); CREATE TABLE junk(x BLOB);
         PRAGMA wal_autocheckpoint=100;",
    )
    .unwrap();
    drop(app);
    let log = env.log();
    let mut cap = env.capture(log.clone());
    cap.catch_up().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let db = env.db.clone();
    const N: i64 = 3000;
    let writer = std::thread::spawn(move || {
        let c = rusqlite::Connection::open(&db).unwrap();
        c.busy_timeout(Duration::from_secs(10)).unwrap();
        c.execute_batch(
            "PRAGMA synchronous=NORMAL; PRAGMA cache_size=10; PRAGMA wal_autocheckpoint=100;",
        )
        .unwrap();
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut rolled_back = 0;
        for i in 1..=N {
            c.execute(
                "INSERT INTO seq(i, pad) VALUES (?1, ?2)",
                rusqlite::params![i, vec![1u8; rng.random_range(0..3000)]],
            )
            .unwrap();
            if i % 40 == 0 {
                let mode = ["PASSIVE", "FULL", "RESTART", "TRUNCATE"][rng.random_range(0..4)];
                let _ = c.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |_| Ok(()));
            }
            if i % 500 == 0 {
                // A transaction large enough to spill frames into the WAL, then rolled back.
                c.execute_batch("BEGIN").unwrap();
                for _ in 0..300 {
                    c.execute("INSERT INTO junk(x) VALUES (?1)", [vec![9u8; 4000]])
                        .unwrap();
                }
                c.execute_batch("ROLLBACK").unwrap();
                rolled_back += 1;
            }
        }
        rolled_back
    });
    let stop2 = stop.clone();
    let runner = std::thread::spawn(move || {
        cap.run(&stop2).unwrap();
        cap
    });
    let rolled_back = writer.join().unwrap();
    assert!(rolled_back > 0);
    stop.store(true, Ordering::SeqCst);
    let mut cap = runner.join().unwrap();
    cap.catch_up().unwrap();
    let stats = cap.stats();
    assert_eq!(stats.resyncs, 0, "a resync while ferry ran undisturbed");
    drop(cap);

    let recs = records(&env.log_path);
    let txns: Vec<&Record> = recs
        .iter()
        .filter(|r| matches!(r, Record::Transaction(_)))
        .collect();
    assert_eq!(txns.len() as i64, N, "one record per source commit");
    let mut last: Option<(u32, u32, u32)> = None;
    for (expect, r) in (1..).zip(txns.iter()) {
        let seqs = seq_of(r).unwrap();
        assert_eq!(seqs, vec![expect], "each record is exactly the next commit");
        if let Record::Transaction(t) = r {
            assert!(!t.resync);
            assert!(
                t.changes.iter().all(|c| c.table != "junk"),
                "a rolled-back transaction was emitted"
            );
            let SourcePosition::SqliteWal(w) = &t.position else {
                panic!("not a WAL position: {:?}", t.position)
            };
            if let Some((s1, s2, f)) = last
                && (s1, s2) == (w.salt1, w.salt2)
            {
                assert!(
                    w.frame > f,
                    "positions strictly increase within a WAL generation"
                );
            }
            last = Some((w.salt1, w.salt2, w.frame));
        }
    }
    assert_fold_matches(&env.log_path, &env.db);
}

#[test]
fn gap_while_ferry_was_down_is_resynced() {
    let env = Env::new();
    let app = env.app(4096);
    app.execute_batch("CREATE TABLE a(id INTEGER PRIMARY KEY, v TEXT); CREATE TABLE b(k TEXT PRIMARY KEY, v) WITHOUT ROWID;").unwrap();
    for i in 0..100 {
        app.execute("INSERT INTO a(v) VALUES (?1)", [format!("v{i}")])
            .unwrap();
    }
    let log = env.log();
    let mut cap = env.capture(log.clone());
    cap.catch_up().unwrap();
    app.execute_batch("UPDATE a SET v = 'x' WHERE id < 10")
        .unwrap();
    cap.catch_up().unwrap();
    drop(cap);
    drop(log);
    // ferry is down: the application writes, checkpoints and restarts its WAL.
    app.execute_batch("DELETE FROM a WHERE id > 90; INSERT INTO b VALUES ('k', 1);")
        .unwrap();
    app.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
        r.get::<_, i64>(0)
    })
    .unwrap();
    app.execute_batch("UPDATE a SET v = 'after' WHERE id = 50; INSERT INTO b VALUES ('z', 2);")
        .unwrap();
    app.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
        r.get::<_, i64>(0)
    })
    .unwrap();
    app.execute_batch("INSERT INTO a(v) VALUES ('new');")
        .unwrap();
    let log = env.log();
    let mut cap = env.capture(log.clone());
    let step = cap.catch_up().unwrap();
    assert!(step.resynced);
    assert_eq!(cap.stats().resyncs, 1);
    // And streaming continues normally afterwards.
    app.execute_batch("INSERT INTO a(v) VALUES ('later');")
        .unwrap();
    cap.catch_up().unwrap();
    assert_eq!(cap.stats().resyncs, 1);
    drop(cap);
    assert_fold_matches(&env.log_path, &env.db);
    let resync_records = records(&env.log_path)
        .iter()
        .filter(|r| matches!(r, Record::Transaction(t) if t.resync))
        .count();
    assert_eq!(resync_records, 1);
}

#[test]
fn restart_without_gap_needs_no_resync() {
    let env = Env::new();
    let app = env.app(4096);
    app.execute_batch("CREATE TABLE a(id INTEGER PRIMARY KEY, v TEXT);")
        .unwrap();
    let log = env.log();
    let mut cap = env.capture(log.clone());
    cap.catch_up().unwrap();
    app.execute_batch("INSERT INTO a(v) VALUES ('1');").unwrap();
    cap.catch_up().unwrap();
    drop(cap);
    app.execute_batch("INSERT INTO a(v) VALUES ('2'); INSERT INTO a(v) VALUES ('3');")
        .unwrap();
    let mut cap = env.capture(log.clone());
    let step = cap.catch_up().unwrap();
    assert!(!step.resynced);
    assert_eq!(step.transactions, 2);
    drop(cap);
    assert_fold_matches(&env.log_path, &env.db);
}

#[test]
fn rollback_journal_database_with_several_commits_between_polls() {
    let env = Env::new();
    let app = rusqlite::Connection::open(&env.db).unwrap();
    app.execute_batch(
        "PRAGMA journal_mode=DELETE; CREATE TABLE a(id INTEGER PRIMARY KEY, v TEXT, b BLOB);",
    )
    .unwrap();
    for i in 0..50 {
        app.execute(
            "INSERT INTO a(v, b) VALUES (?1, ?2)",
            rusqlite::params![format!("v{i}"), vec![3u8; i * 100]],
        )
        .unwrap();
    }
    let log = env.log();
    let mut cap = env.capture(log.clone());
    cap.catch_up().unwrap();
    assert!(cap.stats().rollback_mode);
    for round in 0..5 {
        for j in 0..4 {
            app.execute(
                "UPDATE a SET v = ?1 WHERE id % 5 = ?2",
                rusqlite::params![format!("r{round}"), j],
            )
            .unwrap();
            app.execute("INSERT INTO a(v, b) VALUES ('n', ?1)", [vec![1u8; 5000]])
                .unwrap();
        }
        app.execute("DELETE FROM a WHERE id % 11 = ?1", [round])
            .unwrap();
        let step = cap.catch_up().unwrap();
        assert_eq!(
            step.transactions, 1,
            "commits between polls collapse into one"
        );
        assert_fold_matches(&env.log_path, &env.db);
    }
    assert_eq!(cap.stats().rollback_polls, 5);
    assert_eq!(cap.stats().resyncs, 0);
    // Nothing changed: no transaction.
    assert_eq!(cap.catch_up().unwrap().transactions, 0);
}

#[test]
fn not_a_database_and_second_capture_are_clear_errors() {
    let env = Env::new();
    std::fs::write(&env.db, b"hello, this is not a database at all, just some text that is long enough to hold a header.....").unwrap();
    let err = ferry_sqlite::SqliteCapture::open(&env.db, &env.work, env.log(), Default::default())
        .err()
        .unwrap();
    assert!(
        err.to_string().contains("is not a SQLite database"),
        "{err}"
    );
    std::fs::remove_file(&env.db).unwrap();
    let app = env.app(4096);
    app.execute_batch("CREATE TABLE a(x)").unwrap();
    let _first = env.capture(env.log());
    let err = ferry_sqlite::SqliteCapture::open(&env.db, &env.work, env.log(), Default::default())
        .err()
        .unwrap();
    assert!(
        err.to_string().contains("locked by another process"),
        "{err}"
    );
}
