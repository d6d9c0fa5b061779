//! Limits that must fail a write clearly, or must not fail it at all: a transaction too large
//! for one log record, admission of entries recorded in the application's own transactions,
//! tree names that are not UTF-8, and a long initial snapshot of a large database while the
//! application keeps writing.

use crate::postgres::ship_and_read_back;
use crate::recovery::{GatedLog, check_log_equals_sled, open_log};
use crate::support::*;
use ferry_sled::{
    CaptureError, CaptureOptions, CapturedDb, MAX_ENTRY_BYTES, TransactionError, TxError,
};
use ferry_testkit::pg::TestDb;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sled::Transactional;
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

#[test]
fn a_transaction_too_large_for_one_log_record_fails_when_written_and_the_mover_goes_on() {
    // The default leaves the log's record limit room for what the record adds to the entry.
    const { assert!(MAX_ENTRY_BYTES * 2 <= ferry_log::format::MAX_PAYLOAD_BYTES) };
    assert_eq!(CaptureOptions::default().max_entry_bytes, MAX_ENTRY_BYTES);

    let dir = tempfile::tempdir().expect("tempdir");
    let (path, state) = (dir.path().join("app"), dir.path().join("state"));
    let opts = CaptureOptions {
        max_entry_bytes: 4096,
        ..CaptureOptions::default()
    };
    let db = CapturedDb::open(&path, &state, opts).expect("open");
    let sled_db = db.sled().clone();
    // After the snapshot, so that every write below is a transaction of the log.
    db.sync(Duration::from_secs(30)).expect("the snapshot");
    let t = db.open_tree("t").expect("tree");
    t.insert("small", "v").expect("a small write");
    let before = db.committed_seq().expect("counter");

    let err = t.insert("big", vec![1u8; 5000]).expect_err("too large");
    assert!(
        matches!(err, CaptureError::TransactionTooLarge { max: 4096, len } if len > 5000),
        "{err}"
    );
    assert!(err.to_string().contains("split it"), "{err}");
    // Each write fits; together they do not.
    let err = db
        .transaction(&[&t], |tx| {
            tx.tree(0).insert("a", vec![2u8; 3000])?;
            tx.tree(0).insert("b", vec![3u8; 3000])?;
            Ok::<_, TxError<Infallible>>(())
        })
        .expect_err("too large together");
    assert!(
        matches!(
            err,
            TransactionError::Capture(CaptureError::TransactionTooLarge { .. })
        ),
        "{err}"
    );
    // Nothing of either was written, no sequence number was used.
    for k in ["big", "a", "b"] {
        assert_eq!(t.get(k).expect("get"), None, "{k}");
    }
    assert_eq!(db.committed_seq().expect("counter"), before);

    // The mover did not stop: later writes reach the log.
    t.insert("after", vec![4u8; 3000]).expect("fits");
    db.sync(Duration::from_secs(30)).expect("sync");
    assert!(db.mover_error().is_none());
    drop(t);
    db.close(Duration::from_secs(30)).expect("close");
    let records = check_log_equals_sled(&state, &sled_db);
    assert_eq!(
        records
            .iter()
            .filter(|r| matches!(r, ferry_core::Record::Transaction(_)))
            .count(),
        2,
        "small and after"
    );
}

/// Entries recorded in the application's own transactions count against the outbox bound
/// even when the application never calls `note_committed`.
#[test]
fn recorder_entries_count_against_the_bound_without_note_committed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (path, state) = (dir.path().join("app"), dir.path().join("state"));
    let sled_db = sled::open(&path).expect("sled");
    let gate = Arc::new((Mutex::new(true), Condvar::new()));
    let opts = CaptureOptions {
        outbox_limit: 5,
        backpressure_timeout: Duration::from_millis(300),
        ..CaptureOptions::default()
    };
    let sink = GatedLog {
        log: open_log(&state, &path),
        gate: gate.clone(),
    };
    let db = CapturedDb::with_sink(sled_db.clone(), sink, opts).expect("capture");
    wait_until("the snapshot", Duration::from_secs(30), || {
        db.snapshot_done()
    });
    *gate.0.lock().expect("gate") = false;

    let tree = sled_db.open_tree("own").expect("tree");
    let mut accepted = 0u32;
    let err = loop {
        if let Err(e) = db.wait_for_room() {
            break e;
        }
        let seq = (&tree, db.outbox_tree())
            .transaction(|(t, outbox)| {
                let rec = db.recorder(outbox);
                rec.insert(t, "own", accepted.to_be_bytes(), &b"v"[..])?;
                Ok::<_, sled::transaction::ConflictableTransactionError<CaptureError>>(
                    rec.finish()?,
                )
            })
            .expect("own transaction");
        assert!(seq.is_some());
        // Deliberately no db.note_committed(seq).
        accepted += 1;
        assert!(accepted <= 100, "the outbox bound ignores recorder entries");
    };
    assert!(
        matches!(err, CaptureError::Backpressure { limit: 5, .. }),
        "{err}"
    );
    assert_eq!(accepted, 5, "exactly outbox_limit entries wait");

    {
        let (open, cv) = &*gate;
        *open.lock().expect("gate") = true;
        cv.notify_all();
    }
    db.sync(Duration::from_secs(30))
        .expect("the mover catches up");
    db.wait_for_room().expect("room again");
    db.close(Duration::from_secs(30)).expect("close");
    let records = check_log_equals_sled(&state, &sled_db);
    assert_eq!(
        records
            .iter()
            .filter(|r| matches!(r, ferry_core::Record::Transaction(_)))
            .count(),
        5
    );
}

#[test]
fn trees_named_with_bytes_that_are_not_utf8_become_hex_named_tables() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (path, state) = (dir.path().join("app"), dir.path().join("state"));
    let old_name: &[u8] = b"\xff\x00old";
    {
        let db = sled::open(&path).expect("sled");
        let t = db.open_tree(old_name).expect("tree");
        t.insert("k1", "in the snapshot").expect("insert");
        db.flush().expect("flush");
    }
    let db = CapturedDb::open(&path, &state, CaptureOptions::default()).expect("open");
    let sled_db = db.sled().clone();
    db.sync(Duration::from_secs(30))
        .expect("the snapshot does not fail");
    db.open_tree(old_name)
        .expect("tree")
        .insert("k2", "captured")
        .expect("insert");
    db.open_tree(b"new\xfe")
        .expect("tree")
        .insert("k", "announced later")
        .expect("insert");
    db.close(Duration::from_secs(30)).expect("close");

    let contents = fold_contents(&fold(&read_log(&state, "app")));
    assert_eq!(
        contents.keys().map(String::as_str).collect::<Vec<_>>(),
        ["__sled_hex_6e6577fe", "__sled_hex_ff006f6c64"]
    );
    assert_eq!(contents["__sled_hex_ff006f6c64"].len(), 2);
    assert_same(&contents, &sled_contents(&sled_db));
    assert_eq!(ferry_sled::tree_name(b"plain"), "plain");
}

/// A database far larger than the outbox bound, snapshotted while a writer keeps writing to
/// the same tree (overwrites, removes, new keys): the writer never fails or stalls for the
/// snapshot, more entries than `outbox_limit` pile up during it, and the log — and
/// PostgreSQL after shipping it — equals the tree.
#[test]
fn a_long_snapshot_of_a_large_database_fails_no_writer() {
    const ROWS: u32 = 200_000;
    let pg = TestDb::new_blocking();
    let dir = tempfile::tempdir().expect("tempdir");
    let (path, state) = (dir.path().join("app"), dir.path().join("state"));
    {
        let db = sled::open(&path).expect("sled");
        let t = db.open_tree("big").expect("tree");
        let mut batch = sled::Batch::default();
        for i in 0..ROWS {
            batch.insert(
                &i.to_be_bytes()[..],
                format!("value {i} from years ago").as_bytes(),
            );
        }
        t.apply_batch(batch).expect("prefill");
        db.flush().expect("flush");
    }
    let opts = CaptureOptions {
        // The old bound failed writers after this many entries and this long a wait.
        outbox_limit: 1000,
        backpressure_timeout: Duration::from_secs(2),
        ..CaptureOptions::default()
    };
    let started = Instant::now();
    let db = CapturedDb::open(&path, &state, opts).expect("open");
    let sled_db = db.sled().clone();
    let tree = db.open_tree("big").expect("tree");
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (db, tree, stop) = (db.clone(), tree.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut rng = StdRng::seed_from_u64(8);
            let (mut during, mut after, mut slowest) = (0u64, 0u64, Duration::ZERO);
            while !stop.load(Ordering::SeqCst) {
                let k = rng.random_range(0..ROWS + 50_000).to_be_bytes();
                let t = Instant::now();
                if rng.random_bool(0.1) {
                    tree.remove(k).expect("remove during the snapshot");
                } else {
                    tree.insert(k, rng.random::<u64>().to_be_bytes().to_vec())
                        .expect("insert during the snapshot");
                }
                slowest = slowest.max(t.elapsed());
                // A steady writer (a few thousand writes a second), not one that takes every
                // cycle the snapshot could use.
                std::thread::sleep(Duration::from_micros(300));
                if db.snapshot_done() {
                    after += 1;
                } else {
                    during += 1;
                }
            }
            (during, after, slowest)
        })
    };
    wait_until("the snapshot", Duration::from_secs(120), || {
        db.snapshot_done()
    });
    let snapshot_took = started.elapsed();
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::SeqCst);
    let (during, after, slowest) = writer.join().expect("the writer failed");
    eprintln!(
        "snapshot of {ROWS} rows took {snapshot_took:?}; {during} writes during it, {after} after, slowest write {slowest:?}"
    );
    assert!(
        during > 1000,
        "only {during} writes completed during the snapshot: the writer was held at outbox_limit"
    );
    assert!(after > 0, "writes go on after the snapshot");
    drop(tree);
    db.close(Duration::from_secs(120)).expect("close");

    let records = read_log(&state, "app");
    let begins = records
        .iter()
        .filter(|r| matches!(r, ferry_core::Record::SnapshotBegin(_)))
        .count();
    assert_eq!(begins, 1);
    let want = sled_contents(&sled_db);
    assert!(want["big"].len() > ROWS as usize / 2);
    assert_same(&fold_contents(&fold(&records)), &want);
    assert_same(&ship_and_read_back(&state, &pg), &want);
}
