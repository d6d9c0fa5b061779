//! What capture costs a sled application: one write through ferry-sled's wrapper (a sled
//! transaction over the data tree and the outbox, with the mover moving entries into a real
//! log in the background) against the same write in a plain sled transaction (the target:
//! at most 1.5×) and against a plain, non-transactional `insert` — in the same run.
//!
//! `cargo bench -p ferry-bench --bench sled_overhead`

use criterion::{Criterion, criterion_group, criterion_main};
use ferry_sled::{CaptureOptions, CapturedDb, TxError};
use std::convert::Infallible;
use std::time::Duration;

/// Writes cycle over this many keys, so every variant overwrites existing keys at the same
/// rate and the trees stay the same size.
const KEYS: u64 = 10_000;
const VALUE: [u8; 64] = [0x5a; 64];

fn key(i: u64) -> [u8; 8] {
    (i % KEYS).to_be_bytes()
}

/// Writes out what a variant left unflushed, outside any measurement: sled's I/O threads are
/// shared by every database of the process, so a backlog left by one variant would otherwise
/// slow down the next.
fn settle(db: &sled::Db) {
    db.flush().expect("flush");
}

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut g = c.benchmark_group("sled_write");
    g.measurement_time(Duration::from_secs(5));
    let mut i = 0u64;
    // Each variant gets a fresh database, so none pays for another's garbage.
    let fresh = |name: &str| sled::open(dir.path().join(name)).expect("sled");

    // sled switches every operation of the process to a lock-protected path at its first
    // transaction, for good: measure the cheapest write first, as an application that never
    // uses transactions sees it.
    let db = fresh("plain-before-any-transaction");
    let tree = db.open_tree("t").expect("tree");
    g.bench_function("plain_insert_no_transactions_in_process", |b| {
        b.iter(|| {
            i += 1;
            tree.insert(key(i), &VALUE[..]).expect("insert")
        })
    });
    settle(&db);
    drop((tree, db));

    let db = fresh("plain");
    let tree = db.open_tree("t").expect("tree");
    tree.transaction(|t| {
        t.insert(&b"switch"[..], &b"on"[..])?;
        Ok::<_, sled::transaction::ConflictableTransactionError<()>>(())
    })
    .expect("first transaction");
    g.bench_function("plain_insert", |b| {
        b.iter(|| {
            i += 1;
            tree.insert(key(i), &VALUE[..]).expect("insert")
        })
    });
    settle(&db);
    drop((tree, db));

    let db = fresh("plain-tx");
    let tree = db.open_tree("t").expect("tree");
    g.bench_function("plain_transaction_insert", |b| {
        b.iter(|| {
            i += 1;
            tree.transaction(|t| {
                t.insert(&key(i)[..], &VALUE[..])?;
                Ok::<_, sled::transaction::ConflictableTransactionError<()>>(())
            })
            .expect("transaction")
        })
    });
    settle(&db);
    drop((tree, db));

    let captured = |name: &str| {
        CapturedDb::open(
            dir.path().join(name),
            dir.path().join(format!("{name}-state")),
            CaptureOptions::default(),
        )
        .expect("capture")
    };
    let db = captured("captured");
    let tree = db.open_tree("t").expect("tree");
    g.bench_function("captured_insert", |b| {
        b.iter(|| {
            i += 1;
            tree.insert(key(i), &VALUE[..]).expect("captured insert")
        })
    });
    drop(tree);
    db.close(Duration::from_secs(300))
        .expect("the mover drains the outbox");

    let db = captured("captured-tx");
    let tree = db.open_tree("t").expect("tree");
    g.bench_function("captured_transaction_insert", |b| {
        b.iter(|| {
            i += 1;
            db.transaction(&[&tree], |tx| {
                tx.tree(0).insert(key(i), &VALUE[..])?;
                Ok::<_, TxError<Infallible>>(())
            })
            .expect("captured transaction")
        })
    });
    drop(tree);
    db.close(Duration::from_secs(300))
        .expect("the mover drains the outbox");
    g.finish();
    interleaved_ratios(dir.path());
}

/// The same comparison, robust against a machine whose load drifts while criterion measures
/// one variant after the other: rounds that alternate the variants, each round's ratio, the
/// median printed.
///
/// Two costs per variant. The *call* cost is the time the write call takes. The *durable*
/// cost adds what it takes afterwards until the round's writes are safe: `flush` for plain
/// sled, `sync` (sled flushed by the mover and the entries in the log) for captured writes.
/// The distinction matters: every sled transaction seals and writes an I/O buffer of its
/// own (with `sync_file_range`) on sled's background threads, so a plain transaction call
/// returns long before its write is on disk and the backlog is paid at the next flush;
/// captured writes pay part of it during the round, because the mover flushes sled before
/// it may log anything.
fn interleaved_ratios(dir: &std::path::Path) {
    // A round is long enough (tens of ms) to include the mover's steady pace of one cycle per
    // `mover_interval`, not just the cycle that an idle mover starts at the first write.
    const ROUNDS: usize = 15;
    const WRITES: u64 = 20_000;
    let plain_db = sled::open(dir.join("ratio-plain")).expect("sled");
    let plain = plain_db.open_tree("t").expect("tree");
    let plain_tx_db = sled::open(dir.join("ratio-plain-tx")).expect("sled");
    let plain_tx = plain_tx_db.open_tree("t").expect("tree");
    let db = CapturedDb::open(
        dir.join("ratio-captured"),
        dir.join("ratio-state"),
        CaptureOptions::default(),
    )
    .expect("capture");
    let captured = db.open_tree("t").expect("tree");
    let per_write = |d: std::time::Duration| d.as_secs_f64() / WRITES as f64;
    let time = |f: &mut dyn FnMut(u64), settle: &mut dyn FnMut()| {
        let start = std::time::Instant::now();
        for i in 0..WRITES {
            f(i);
        }
        let call = start.elapsed();
        settle();
        (per_write(call), per_write(start.elapsed()))
    };
    let mut rows: Vec<[f64; 6]> = Vec::new();
    for _ in 0..ROUNDS {
        let (insert, insert_durable) = time(
            &mut |i| {
                plain.insert(key(i), &VALUE[..]).expect("insert");
            },
            &mut || {
                plain_db.flush().expect("flush");
            },
        );
        let (tx, tx_durable) = time(
            &mut |i| {
                plain_tx
                    .transaction(|t| {
                        t.insert(&key(i)[..], &VALUE[..])?;
                        Ok::<_, sled::transaction::ConflictableTransactionError<()>>(())
                    })
                    .expect("transaction");
            },
            &mut || {
                plain_tx_db.flush().expect("flush");
            },
        );
        let (cap, cap_durable) = time(
            &mut |i| {
                captured
                    .insert(key(i), &VALUE[..])
                    .expect("captured insert");
            },
            &mut || {
                db.sync(Duration::from_secs(300)).expect("sync");
            },
        );
        rows.push([insert, insert_durable, tx, tx_durable, cap, cap_durable]);
    }
    let median = |f: &dyn Fn(&[f64; 6]) -> f64| {
        let mut v: Vec<f64> = rows.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    eprintln!(
        "interleaved, median of {ROUNDS} rounds of {WRITES} writes (call / durable, µs per write):\n  \
         plain insert {:.2} / {:.2}\n  plain transaction {:.2} / {:.2}\n  captured insert {:.2} / {:.2}\n  \
         captured / plain transaction: call {:.2}, durable {:.2}\n  \
         captured / plain insert: call {:.2}, durable {:.2}",
        median(&|r| r[0]) * 1e6,
        median(&|r| r[1]) * 1e6,
        median(&|r| r[2]) * 1e6,
        median(&|r| r[3]) * 1e6,
        median(&|r| r[4]) * 1e6,
        median(&|r| r[5]) * 1e6,
        median(&|r| r[4] / r[2]),
        median(&|r| r[5] / r[3]),
        median(&|r| r[4] / r[0]),
        median(&|r| r[5] / r[1]),
    );
    drop(captured);
    db.close(Duration::from_secs(300)).expect("close");
}

criterion_group!(benches, bench);
criterion_main!(benches);
