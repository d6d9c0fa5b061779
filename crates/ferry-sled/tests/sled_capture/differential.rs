//! Random workloads through the wrappers, concurrently with the initial snapshot; the folded
//! log must equal the sled trees byte for byte.

use crate::support::*;
use ferry_core::{Record, SourcePosition};
use ferry_sled::{Batch, CaptureOptions, CapturedDb, CapturedTree, abort};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sled::Transactional;
use std::time::Duration;

const TREES: [&str; 3] = ["users", "orders", "counters"];

/// Appends the merged bytes; a merged `[0]` deletes the key (merge operators may delete).
fn concat_or_delete(_k: &[u8], old: Option<&[u8]>, merged: &[u8]) -> Option<Vec<u8>> {
    if merged == [0] {
        return None;
    }
    let mut v = old.map(<[u8]>::to_vec).unwrap_or_default();
    v.extend_from_slice(merged);
    Some(v)
}

fn key(rng: &mut StdRng) -> Vec<u8> {
    // A small key space so that writes collide; some keys are empty or long.
    match rng.random_range(0..20) {
        0 => Vec::new(),
        1 => vec![b'k'; 300],
        _ => format!("k{:02}", rng.random_range(0..48)).into_bytes(),
    }
}

fn value(rng: &mut StdRng) -> Vec<u8> {
    let len = match rng.random_range(0..10) {
        0 => 0,
        1 => rng.random_range(100..3000),
        _ => rng.random_range(1..24),
    };
    (0..len).map(|_| rng.random()).collect()
}

/// One random captured operation.
pub fn random_op(rng: &mut StdRng, db: &CapturedDb, trees: &[CapturedTree]) {
    let t = &trees[rng.random_range(0..trees.len())];
    match rng.random_range(0..100) {
        0..30 => {
            t.insert(key(rng), value(rng)).expect("insert");
        }
        30..42 => {
            t.remove(key(rng)).expect("remove");
        }
        42..54 => {
            let k = key(rng);
            let current = t.get(&k).expect("get");
            let expected = match rng.random_range(0..3) {
                0 => current.map(|v| v.to_vec()),
                1 => None,
                _ => Some(value(rng)),
            };
            let new = if rng.random_bool(0.2) {
                None
            } else {
                Some(value(rng))
            };
            let _ = t.compare_and_swap(&k, expected, new).expect("cas");
        }
        54..70 => {
            let merged = if rng.random_bool(0.1) {
                vec![0]
            } else {
                value(rng)
            };
            if merged.is_empty() {
                return;
            }
            t.merge(key(rng), merged).expect("merge");
        }
        70..80 => {
            let mut b = Batch::default();
            for _ in 0..rng.random_range(1..8) {
                if rng.random_bool(0.7) {
                    b.insert(key(rng), value(rng));
                } else {
                    b.remove(key(rng));
                }
            }
            t.apply_batch(&b).expect("batch");
        }
        80..94 => {
            // A multi-tree transaction, aborted one time in five.
            let ops: Vec<(usize, u8, Vec<u8>, Vec<u8>)> = (0..rng.random_range(1..7))
                .map(|_| {
                    (
                        rng.random_range(0..trees.len()),
                        rng.random_range(0..4),
                        key(rng),
                        value(rng),
                    )
                })
                .collect();
            let aborts = rng.random_bool(0.2);
            let refs: Vec<&CapturedTree> = trees.iter().collect();
            let r = db.transaction(&refs, |tx| {
                for (ti, op, k, v) in &ops {
                    let tt = tx.tree(*ti);
                    match op {
                        0 => {
                            tt.insert(k.as_slice(), v.as_slice())?;
                        }
                        1 => {
                            tt.remove(k.as_slice())?;
                        }
                        2 if !v.is_empty() => {
                            tt.merge(k.as_slice(), v.as_slice())?;
                        }
                        _ => {
                            let cur = tt.get(k.as_slice())?;
                            let _ = tt.compare_and_swap(k.as_slice(), cur, Some(v.as_slice()))?;
                        }
                    }
                }
                if aborts {
                    return abort("rolled back on purpose");
                }
                Ok(())
            });
            match r {
                Ok(()) => assert!(!aborts),
                Err(ferry_sled::TransactionError::Abort(_)) => assert!(aborts),
                Err(e) => panic!("transaction: {e}"),
            }
        }
        _ => {
            // The application's own sled transaction, recorded with the hook.
            let (a, b) = (&trees[0], &trees[1]);
            let (k1, v1, k2) = (key(rng), value(rng), key(rng));
            db.wait_for_room().expect("room");
            let seq =
                (a.sled(), b.sled(), db.outbox_tree())
                    .transaction(|(ta, tb, outbox)| {
                        let rec = db.recorder(outbox);
                        rec.insert(ta, a.name(), k1.as_slice(), v1.as_slice())?;
                        // A write the application makes itself, then records.
                        let old = tb.remove(k2.as_slice())?;
                        rec.record(b.name(), k2.as_slice(), old.as_deref(), None);
                        Ok::<
                            _,
                            sled::transaction::ConflictableTransactionError<
                                ferry_sled::CaptureError,
                            >,
                        >(rec.finish()?)
                    })
                    .expect("own transaction");
            if let Some(seq) = seq {
                db.note_committed(seq);
            }
        }
    }
}

pub fn open_trees(db: &CapturedDb) -> Vec<CapturedTree> {
    TREES
        .iter()
        .map(|n| {
            let t = db.open_tree(n).expect("open tree");
            t.set_merge_operator(concat_or_delete);
            t
        })
        .collect()
}

/// Years of data written before capture started, in the trees the workload uses and in one
/// it never touches.
pub fn prepopulate(path: &std::path::Path, rng: &mut StdRng, rows: usize) {
    let db = sled::open(path).expect("open sled");
    for name in TREES.iter().chain(["legacy"].iter()) {
        let t = db.open_tree(name).expect("tree");
        for i in 0..rows {
            let k = if i % 2 == 0 {
                format!("k{:02}", i % 48).into_bytes()
            } else {
                format!("old{i:05}").into_bytes()
            };
            t.insert(k, value(rng)).expect("insert");
        }
    }
    db.flush().expect("flush");
}

#[test]
fn random_workloads_fold_to_the_sled_trees() {
    for seed in seeds("random_workloads_fold_to_the_sled_trees", 3) {
        eprintln!("seed {seed} (rerun with FERRY_SLED_SEED={seed})");
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("app");
        let state = dir.path().join("state");
        let mut rng = StdRng::seed_from_u64(seed);
        prepopulate(&path, &mut rng, 600);

        let opts = CaptureOptions {
            snapshot_chunk_rows: 7,
            mover_batch_entries: rng.random_range(1..64),
            ..CaptureOptions::default()
        };
        let db = CapturedDb::open(&path, &state, opts.clone()).expect("open capture");
        let sled_db = db.sled().clone();
        let trees = open_trees(&db);

        // Two writers race each other and the snapshot.
        let mut committed_when_snapshot_done = 0;
        std::thread::scope(|s| {
            for w in 0..2u64 {
                let (db, trees) = (&db, &trees);
                let mut rng = StdRng::seed_from_u64(seed ^ (w + 1).wrapping_mul(0x9e37_79b9));
                s.spawn(move || {
                    // At least 400 operations, and on until the snapshot is done: on a loaded
                    // machine the mover may start only after 400 operations are over, and
                    // then nothing would race the snapshot. Past 400 the writers slow down
                    // (a write rate, not a synchronisation): flat-out writers hold sled's
                    // global lock so often that the snapshot's reads starve.
                    let mut n = 0;
                    while n < 400 || (!db.snapshot_done() && n < 20_000) {
                        random_op(&mut rng, db, trees);
                        n += 1;
                        if n > 400 {
                            std::thread::sleep(Duration::from_micros(500));
                        }
                    }
                });
            }
            wait_until("the snapshot", Duration::from_secs(60), || {
                db.snapshot_done()
            });
            committed_when_snapshot_done = db.committed_seq().expect("counter");
        });
        drop(trees);
        db.close(Duration::from_secs(60)).expect("close");

        let records = read_log(&state, "app");
        let snapshot_at = records
            .iter()
            .find_map(|r| match r {
                Record::SnapshotEnd(e) => match e.position {
                    SourcePosition::SledOutbox { seq } => Some(seq),
                    _ => None,
                },
                _ => None,
            })
            .expect("a SnapshotEnd");
        assert!(
            committed_when_snapshot_done > snapshot_at,
            "the workload did not overlap the snapshot (P = {snapshot_at}, committed {committed_when_snapshot_done}); the test proves nothing"
        );
        let f = fold(&records);
        assert_same(&fold_contents(&f), &sled_contents(&sled_db));
        assert!(
            f.tables.contains_key("legacy"),
            "untouched trees are snapshotted too"
        );

        // A restart continues the same log: no second snapshot, nothing doubled.
        drop(sled_db);
        let db = CapturedDb::open(&path, &state, opts).expect("reopen capture");
        let sled_db = db.sled().clone();
        let trees = open_trees(&db);
        let extra = db.open_tree("created_later").expect("new tree");
        let mut rng = StdRng::seed_from_u64(seed.wrapping_mul(31));
        for _ in 0..200 {
            random_op(&mut rng, &db, &trees);
        }
        extra.insert("a", "b").expect("insert into a new tree");
        drop((trees, extra));
        db.close(Duration::from_secs(60)).expect("close");

        let records = read_log(&state, "app");
        let snapshots = records
            .iter()
            .filter(|r| matches!(r, Record::SnapshotBegin(_)))
            .count();
        assert_eq!(snapshots, 1, "a restart must not take the snapshot again");
        let mut last = 0;
        for r in &records {
            if let Record::Transaction(t) = r {
                let SourcePosition::SledOutbox { seq } = t.position else {
                    panic!("position {:?}", t.position)
                };
                assert!(seq > last, "outbox positions increase: {seq} after {last}");
                last = seq;
            }
        }
        let f = fold(&records);
        assert_same(&fold_contents(&f), &sled_contents(&sled_db));
        assert!(f.tables.contains_key("created_later"));
    }
}
