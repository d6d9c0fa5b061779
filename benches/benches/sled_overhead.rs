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
/// median printed. The mover drains the outbox (`sync`) before each plain round, so only the
/// captured rounds pay for it.
fn interleaved_ratios(dir: &std::path::Path) {
    const ROUNDS: usize = 40;
    const WRITES: u64 = 2000;
    let plain_db = sled::open(dir.join("ratio-plain")).expect("sled");
    let plain = plain_db.open_tree("t").expect("tree");
    let db = CapturedDb::open(
        dir.join("ratio-captured"),
        dir.join("ratio-state"),
        CaptureOptions::default(),
    )
    .expect("capture");
    let captured = db.open_tree("t").expect("tree");
    let time = |f: &mut dyn FnMut(u64)| {
        let start = std::time::Instant::now();
        for i in 0..WRITES {
            f(i);
        }
        start.elapsed().as_secs_f64() / WRITES as f64
    };
    let (mut vs_tx, mut vs_insert, mut per_write) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        db.sync(Duration::from_secs(300)).expect("sync");
        let insert = time(&mut |i| {
            plain.insert(key(i), &VALUE[..]).expect("insert");
        });
        let tx = time(&mut |i| {
            plain
                .transaction(|t| {
                    t.insert(&key(i)[..], &VALUE[..])?;
                    Ok::<_, sled::transaction::ConflictableTransactionError<()>>(())
                })
                .expect("transaction");
        });
        let cap = time(&mut |i| {
            captured
                .insert(key(i), &VALUE[..])
                .expect("captured insert");
        });
        vs_tx.push(cap / tx);
        vs_insert.push(cap / insert);
        per_write.push((insert, tx, cap));
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let mut ins: Vec<f64> = per_write.iter().map(|p| p.0).collect();
    let mut txs: Vec<f64> = per_write.iter().map(|p| p.1).collect();
    let mut caps: Vec<f64> = per_write.iter().map(|p| p.2).collect();
    eprintln!(
        "interleaved, median of {ROUNDS} rounds of {WRITES} writes: plain insert {:.2} µs, plain transaction {:.2} µs, captured insert {:.2} µs; captured / plain transaction = {:.2}, captured / plain insert = {:.2}",
        median(&mut ins) * 1e6,
        median(&mut txs) * 1e6,
        median(&mut caps) * 1e6,
        median(&mut vs_tx),
        median(&mut vs_insert),
    );
    drop(captured);
    db.close(Duration::from_secs(300)).expect("close");
}

criterion_group!(benches, bench);
criterion_main!(benches);
