//! What capture costs a sled application, measured so that the shared machine's drift cancels
//! out: one 64-byte write through ferry-sled's wrappers against the same write in a plain sled
//! transaction (the target: at most 1.5×) and against a plain, non-transactional `insert`.
//!
//! `cargo bench -p ferry-bench --bench sled_overhead`
//!
//! Design (why it is not criterion): on a 2-core machine shared with other builds, variants
//! measured one after the other see different machines. Here every *round* runs every variant
//! for `FERRY_SLED_ROUND_SECS` (default 3 s) each, in an order that rotates from round to
//! round, and each round's ratios are computed from that round's numbers only; the medians
//! and the spread (min–max) of those per-round ratios are what is reported.
//!
//! Rounds are several seconds long — several times sled's own 500 ms flush period and many
//! times the mover's `mover_interval` — so each side pays its steady-state flushing inside
//! its window, not just whatever happens to fall into a short burst. Each variant's window
//! ends with making its writes durable (`flush` for plain sled, `sync` for captured writes:
//! sled flushed and the entries in the log), timed separately: the *call* cost is the window's
//! time per write, the *durable* cost adds the closing flush, so a variant cannot look cheap
//! by leaving its I/O to whoever runs next.
//!
//! Environment: `FERRY_SLED_ROUNDS` (default 7), `FERRY_SLED_ROUND_SECS` (3),
//! `FERRY_SLED_MOVER_INTERVAL_MS` (the library's default if unset).

use ferry_sled::{CaptureOptions, CapturedDb, CapturedTree, TxError};
use std::convert::Infallible;
use std::time::{Duration, Instant};

/// Writes cycle over this many keys (prefilled), so every variant overwrites existing keys
/// and the trees stay the same size.
const KEYS: u64 = 10_000;
const VALUE: [u8; 64] = [0x5a; 64];

fn key(i: u64) -> [u8; 8] {
    (i % KEYS).to_be_bytes()
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[derive(Clone, Copy, PartialEq)]
enum Variant {
    PlainInsert,
    PlainTx,
    CapturedInsert,
    CapturedTx,
}

const VARIANTS: [Variant; 4] = [
    Variant::PlainInsert,
    Variant::PlainTx,
    Variant::CapturedInsert,
    Variant::CapturedTx,
];

impl Variant {
    fn name(self) -> &'static str {
        match self {
            Variant::PlainInsert => "sled insert (no transaction)",
            Variant::PlainTx => "sled transaction, one insert",
            Variant::CapturedInsert => "CapturedTree::insert",
            Variant::CapturedTx => "CapturedDb::transaction, one insert",
        }
    }
}

struct Plain {
    db: sled::Db,
    tree: sled::Tree,
}

struct Captured {
    db: CapturedDb,
    tree: CapturedTree,
}

/// One variant's window: writes for `secs`, then makes them durable. Returns (writes, call
/// seconds, closing-flush seconds).
fn window(
    v: Variant,
    secs: f64,
    next: &mut u64,
    plain: &Plain,
    plain_tx: &Plain,
    cap: &Captured,
    cap_tx: &Captured,
) -> (u64, f64, f64) {
    let start = Instant::now();
    let until = start + Duration::from_secs_f64(secs);
    let mut n = 0u64;
    // The clock is read every 64 writes so that reading it costs nothing measurable.
    while !n.is_multiple_of(64) || Instant::now() < until {
        let i = *next;
        *next += 1;
        match v {
            Variant::PlainInsert => {
                plain.tree.insert(key(i), &VALUE[..]).expect("insert");
            }
            Variant::PlainTx => {
                plain_tx
                    .tree
                    .transaction(|t| {
                        t.insert(&key(i)[..], &VALUE[..])?;
                        Ok::<_, sled::transaction::ConflictableTransactionError<()>>(())
                    })
                    .expect("transaction");
            }
            Variant::CapturedInsert => {
                cap.tree
                    .insert(key(i), &VALUE[..])
                    .expect("captured insert");
            }
            Variant::CapturedTx => {
                cap_tx
                    .db
                    .transaction(&[&cap_tx.tree], |tx| {
                        tx.tree(0).insert(key(i), &VALUE[..])?;
                        Ok::<_, TxError<Infallible>>(())
                    })
                    .expect("captured transaction");
            }
        }
        n += 1;
    }
    let call = start.elapsed();
    let settle = Instant::now();
    match v {
        Variant::PlainInsert => drop(plain.db.flush().expect("flush")),
        Variant::PlainTx => drop(plain_tx.db.flush().expect("flush")),
        Variant::CapturedInsert => drop(cap.db.sync(Duration::from_secs(600)).expect("sync")),
        Variant::CapturedTx => drop(cap_tx.db.sync(Duration::from_secs(600)).expect("sync")),
    }
    (n, call.as_secs_f64(), settle.elapsed().as_secs_f64())
}

fn prefill(tree: &sled::Tree) {
    for i in 0..KEYS {
        tree.insert(key(i), &VALUE[..]).expect("prefill");
    }
}

fn median_min_max(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    (v[v.len() / 2], v[0], v[v.len() - 1])
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing: run one short
    // round then, so the bench is at least exercised.
    let is_bench = std::env::args().any(|a| a == "--bench");
    let rounds: usize = env_or("FERRY_SLED_ROUNDS", if is_bench { 7 } else { 1 });
    let secs: f64 = env_or("FERRY_SLED_ROUND_SECS", if is_bench { 3.0 } else { 0.2 });
    let mut opts = CaptureOptions::default();
    if let Some(ms) = std::env::var("FERRY_SLED_MOVER_INTERVAL_MS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        opts.mover_interval = Duration::from_millis(ms);
    }

    let dir = tempfile::tempdir().expect("tempdir");
    let open_plain = |name: &str| {
        let db = sled::open(dir.path().join(name)).expect("sled");
        let tree = db.open_tree("t").expect("tree");
        prefill(&tree);
        db.flush().expect("flush");
        Plain { db, tree }
    };
    let open_captured = |name: &str| {
        // Prefilled before capture starts: the initial snapshot takes them.
        {
            let db = sled::open(dir.path().join(name)).expect("sled");
            prefill(&db.open_tree("t").expect("tree"));
            db.flush().expect("flush");
        }
        let db = CapturedDb::open(
            dir.path().join(name),
            dir.path().join(format!("{name}-state")),
            opts.clone(),
        )
        .expect("capture");
        let tree = db.open_tree("t").expect("tree");
        db.sync(Duration::from_secs(600)).expect("initial snapshot");
        Captured { db, tree }
    };
    let plain = open_plain("plain");
    let plain_tx = open_plain("plain-tx");
    let cap = open_captured("captured");
    let cap_tx = open_captured("captured-tx");

    eprintln!(
        "sled_overhead: {rounds} rounds x 4 variants x {secs} s, mover_interval {:?}",
        opts.mover_interval
    );
    // Per round, per variant: (call µs/write, durable µs/write).
    let mut results: Vec<[(f64, f64); 4]> = Vec::new();
    let mut next = 0u64;
    for r in 0..rounds {
        let mut row = [(0.0, 0.0); 4];
        for k in 0..VARIANTS.len() {
            let vi = (k + r) % VARIANTS.len();
            let (n, call, settle) = window(
                VARIANTS[vi],
                secs,
                &mut next,
                &plain,
                &plain_tx,
                &cap,
                &cap_tx,
            );
            row[vi] = (call / n as f64 * 1e6, (call + settle) / n as f64 * 1e6);
        }
        eprintln!(
            "round {r}: call µs/write {:.2} {:.2} {:.2} {:.2} | durable {:.2} {:.2} {:.2} {:.2} | captured/tx call {:.2} {:.2}",
            row[0].0,
            row[1].0,
            row[2].0,
            row[3].0,
            row[0].1,
            row[1].1,
            row[2].1,
            row[3].1,
            row[2].0 / row[1].0,
            row[3].0 / row[1].0,
        );
        results.push(row);
    }

    println!(
        "\nsled_overhead: median (min–max) of {rounds} alternated rounds, {secs} s per variant per round, mover_interval {:?}",
        opts.mover_interval
    );
    println!(
        "  µs per write            call                      durable (with closing flush/sync)"
    );
    for (vi, v) in VARIANTS.iter().enumerate() {
        let (cm, cl, ch) = median_min_max(results.iter().map(|r| r[vi].0).collect());
        let (dm, dl, dh) = median_min_max(results.iter().map(|r| r[vi].1).collect());
        println!(
            "  {:<38} {cm:>6.2} ({cl:.2}–{ch:.2})   {dm:>7.2} ({dl:.2}–{dh:.2})",
            v.name()
        );
    }
    println!("  per-round ratios         call                      durable");
    for (num, den, label) in [
        (2, 1, "CapturedTree::insert / sled transaction"),
        (3, 1, "CapturedDb::transaction / sled transaction"),
        (2, 0, "CapturedTree::insert / sled insert"),
        (3, 0, "CapturedDb::transaction / sled insert"),
    ] {
        let (cm, cl, ch) = median_min_max(results.iter().map(|r| r[num].0 / r[den].0).collect());
        let (dm, dl, dh) = median_min_max(results.iter().map(|r| r[num].1 / r[den].1).collect());
        println!("  {label:<44} {cm:.2} ({cl:.2}–{ch:.2})   {dm:.2} ({dl:.2}–{dh:.2})");
    }

    drop(cap.tree);
    cap.db.close(Duration::from_secs(600)).expect("close");
    drop(cap_tx.tree);
    cap_tx.db.close(Duration::from_secs(600)).expect("close");
}
