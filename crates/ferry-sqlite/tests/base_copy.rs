//! Base copies for the archive: `write_base` between steps, with the application writing
//! all the while, gives files that real SQLite opens without a `-wal`, that pass
//! `PRAGMA integrity_check`, and whose tables equal the log folded up to the copy's LSN.

mod common;
use common::*;
use ferry_core::{Lsn, Record, SourcePosition};
use ferry_sqlite::RecordSink;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

#[test]
fn base_copies_taken_while_a_writer_runs_equal_the_log_at_their_lsn() {
    let env = Env::new();
    let app = env.app(4096);
    app.execute_batch(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT, big BLOB);
         CREATE TABLE kv(k TEXT PRIMARY KEY, v INT) WITHOUT ROWID;",
    )
    .unwrap();
    let log = env.log();
    let mut cap = env.capture(log.clone());
    let bases = tempfile::tempdir().unwrap();
    // Before the snapshot there is nothing to copy: a clear error, not a panic.
    let err = cap.write_base(&bases.path().join("early.db")).unwrap_err();
    assert!(err.to_string().contains("initial snapshot"), "{err}");
    cap.step(Duration::from_millis(100)).unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let db = env.db.clone();
    let s = stop.clone();
    let writer = std::thread::spawn(move || {
        let c = rusqlite::Connection::open(&db).unwrap();
        c.busy_timeout(Duration::from_secs(10)).unwrap();
        c.execute_batch("PRAGMA synchronous=NORMAL;").unwrap();
        let mut n = 0i64;
        while !s.load(Ordering::SeqCst) {
            c.execute_batch("BEGIN").unwrap();
            // Some rows spill to overflow pages, so copies cover overflow chains too.
            let big = vec![(n % 251) as u8; if n % 10 == 0 { 9000 } else { 40 }];
            c.execute(
                "INSERT INTO t(v, big) VALUES (?1, ?2)",
                rusqlite::params![format!("v{n}"), big],
            )
            .unwrap();
            c.execute(
                "INSERT INTO kv VALUES (?1, 1) ON CONFLICT(k) DO UPDATE SET v = v + 1",
                [format!("k{}", n % 97)],
            )
            .unwrap();
            if n % 7 == 0 {
                c.execute("DELETE FROM t WHERE id = ?1", [n / 2]).unwrap();
            }
            if n == 120 {
                c.execute_batch("ALTER TABLE t ADD COLUMN extra INT DEFAULT 5")
                    .unwrap();
            }
            c.execute_batch("COMMIT").unwrap();
            n += 1;
            // Paced so that several bases fall between the writer's transactions.
            std::thread::sleep(Duration::from_micros(200));
        }
        n
    });

    let mut copies = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    for i in 0..6 {
        // Let the writer commit some more, then capture it and take a base.
        let want = cap.stats().transactions + 50;
        while cap.stats().transactions < want {
            cap.step(Duration::from_millis(100)).unwrap();
            assert!(
                Instant::now() < deadline,
                "the writer's commits never arrived"
            );
        }
        let dest = bases.path().join(format!("base-{i}.db"));
        let b = cap.write_base(&dest).unwrap();
        assert_eq!(b.lsn, cap.stats().last_lsn);
        assert_eq!(Some(&b.position), cap.stats().last_position.as_ref());
        assert!(matches!(b.position, SourcePosition::SqliteWal(_)));
        assert_eq!(b.page_size, 4096);
        assert_eq!(std::fs::metadata(&dest).unwrap().len(), b.bytes);
        copies.push((dest, b));
    }
    stop.store(true, Ordering::SeqCst);
    let writes = writer.join().unwrap();
    assert!(writes > 300, "the writer made only {writes} transactions");

    let all: Vec<(Lsn, Record)> = log.read_all().unwrap();
    assert_eq!(all.last().map(|(l, _)| *l), Some(log.durable_lsn()));
    let mut lsns = Vec::new();
    for (dest, b) in &copies {
        let head = std::fs::read(dest).unwrap();
        assert_eq!(&head[..16], b"SQLite format 3\0");
        assert_eq!(
            (head[18], head[19]),
            (1, 1),
            "the copy must not need a -wal"
        );
        let c = rusqlite::Connection::open(dest).unwrap();
        let ok: String = c
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(ok, "ok", "{}", dest.display());
        let mode: String = c
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "delete");
        drop(c);
        let mut wal = dest.as_os_str().to_owned();
        wal.push("-wal");
        assert!(!std::path::Path::new(&wal).exists());
        let upto = all.iter().take_while(|(l, _)| *l <= b.lsn).map(|(_, r)| r);
        assert_fold_equals_db(&fold_of(upto), dest);
        // The record at the copy's LSN is the transaction at the copy's position.
        match &all[(b.lsn.0 - 1) as usize].1 {
            Record::Transaction(t) => assert_eq!(t.position, b.position),
            other => panic!("record at {} is {other:?}", b.lsn),
        }
        lsns.push(b.lsn);
    }
    assert!(lsns.windows(2).all(|w| w[0] < w[1]), "{lsns:?}");
    cap.catch_up().unwrap();
    assert_eq!(cap.stats().resyncs, 0);
    drop(cap);
    assert_fold_matches(&env.log_path, &env.db);
}
