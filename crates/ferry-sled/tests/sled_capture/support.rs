//! What the tests share: reading a source's log back, folding it, and comparing the fold with
//! the sled trees.

use ferry_core::fold::Fold;
use ferry_core::state_dir::StateDir;
use ferry_core::{Lsn, Record, SourceId, Value};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

pub type Contents = BTreeMap<String, BTreeMap<Vec<u8>, Vec<u8>>>;

/// Every record of the log of `source` in `state_dir`, in LSN order, checked to be dense.
pub fn read_log(state_dir: &Path, source: &str) -> Vec<Record> {
    let dir = StateDir::new(state_dir).log_dir(&SourceId(source.to_string()));
    let log = ferry_log::open_read_only(&dir).expect("open the log read-only");
    let mut out = Vec::new();
    let mut expected = Lsn::FIRST;
    for item in log.reader(Lsn::FIRST).expect("a log reader") {
        let (lsn, payload) = item.expect("a log record");
        assert_eq!(lsn, expected, "LSNs are dense");
        expected = lsn.next();
        out.push(Record::decode(&payload).expect("a record that decodes"));
    }
    out
}

/// The strict fold of `records`; a lost or doubled change fails here.
pub fn fold(records: &[Record]) -> Fold {
    let mut f = Fold::new();
    for (i, r) in records.iter().enumerate() {
        if let Err(e) = f.apply(r) {
            panic!("record {} ({}) does not fold: {e}", i + 1, r.type_name());
        }
    }
    assert!(!f.in_snapshot, "the log ends inside a snapshot");
    f
}

/// The fold's tables as raw key/value bytes (for the default `key BLOB, value BLOB` schema),
/// empty tables left out.
pub fn fold_contents(f: &Fold) -> Contents {
    let mut out = Contents::new();
    for (name, t) in &f.tables {
        let mut rows = BTreeMap::new();
        for (key, row) in &t.rows {
            let [Value::Blob(k)] = key.as_slice() else {
                panic!("table {name}: key {key:?} is not one blob");
            };
            let [Value::Blob(k2), Value::Blob(v)] = row.as_slice() else {
                panic!("table {name}: row {row:?} is not (blob, blob)");
            };
            assert_eq!(k, k2, "table {name}: key column differs from the row's key");
            rows.insert(k.clone(), v.clone());
        }
        if !rows.is_empty() {
            out.insert(name.clone(), rows);
        }
    }
    out
}

/// Every tree of `db` except ferry's own, as raw bytes, empty trees left out.
pub fn sled_contents(db: &sled::Db) -> Contents {
    let mut out = Contents::new();
    for name in db.tree_names() {
        if name.starts_with(b"__ferry_") {
            continue;
        }
        let tree = db.open_tree(&name).expect("open tree");
        let rows: BTreeMap<Vec<u8>, Vec<u8>> = tree
            .iter()
            .map(|kv| {
                let (k, v) = kv.expect("read sled");
                (k.to_vec(), v.to_vec())
            })
            .collect();
        if !rows.is_empty() {
            // Named as the capture names its table (non-UTF-8 names hex-escaped).
            out.insert(ferry_sled::tree_name(&name), rows);
        }
    }
    out
}

/// Asserts the folded log equals the sled trees, naming the first difference.
pub fn assert_same(log: &Contents, sled: &Contents) {
    let tables: std::collections::BTreeSet<&String> = log.keys().chain(sled.keys()).collect();
    for t in tables {
        let (l, s) = (log.get(t), sled.get(t));
        let empty = BTreeMap::new();
        let (l, s) = (l.unwrap_or(&empty), s.unwrap_or(&empty));
        for k in l.keys().chain(s.keys()) {
            assert_eq!(
                l.get(k).map(|v| hex(v)),
                s.get(k).map(|v| hex(v)),
                "table {t:?} key {}: log (left) and sled (right) differ",
                hex(k)
            );
        }
    }
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Polls `cond` until it holds or `deadline` passes.
pub fn wait_until(what: &str, deadline: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < deadline,
            "timed out after {deadline:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Seeds for randomized tests: `FERRY_SLED_SEED` runs one, otherwise `FERRY_SLED_CASES`
/// (default `default_cases`) seeds derived from the test name.
pub fn seeds(name: &str, default_cases: u64) -> Vec<u64> {
    if let Ok(s) = std::env::var("FERRY_SLED_SEED") {
        return vec![s.parse().expect("FERRY_SLED_SEED is a number")];
    }
    let cases = std::env::var("FERRY_SLED_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(default_cases);
    let base = name.bytes().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100000001b3)
    });
    (0..cases).map(|i| base.wrapping_add(i)).collect()
}
