//! The conformance suite (`ferry_e2e::conformance`) against the sled source: an application
//! writing through `ferry_sled`'s captured transactions (inserts, removes,
//! compare-and-swap, merges) into a real sled database, its mover writing the real log of a
//! state directory, shipped into a real PostgreSQL.

use ferry_core::Value;
use ferry_e2e::conformance::{ConformanceSource, SuiteSize, Tables, run_suite};
use ferry_sled::{CaptureOptions, CapturedDb, CapturedTree, TxError};
use ferry_testkit::pg::TestDb;
use rand::Rng;
use rand::rngs::StdRng;
use sled::Transactional;
use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::time::Duration;

const TREES: [&str; 3] = ["ledger", "items", "tags"];

/// `tags` counts how often a tag was merged; the value is `commit (8 bytes) ‖ count (8)`.
fn count_merge(_key: &[u8], old: Option<&[u8]>, merged: &[u8]) -> Option<Vec<u8>> {
    let count = old
        .and_then(|o| o.get(8..16))
        .and_then(|c| <[u8; 8]>::try_from(c).ok())
        .map_or(0, u64::from_be_bytes);
    let mut v = merged.get(..8)?.to_vec();
    v.extend_from_slice(&(count + 1).to_be_bytes());
    Some(v)
}

enum SledOp {
    Insert(u16, Vec<u8>),
    Remove(u16),
    /// Compare-and-swap the current value of an item to a new one.
    Swap(u16, Vec<u8>),
    Merge(u8),
}

struct SledSource {
    _dir: tempfile::TempDir,
    path: PathBuf,
    state: PathBuf,
    sled: sled::Db,
    capture: Option<(CapturedDb, Vec<CapturedTree>)>,
}

impl SledSource {
    fn new() -> SledSource {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("app");
        let state = dir.path().join("state");
        let sled = sled::open(&path).expect("open sled");
        SledSource {
            _dir: dir,
            path,
            state,
            sled,
            capture: None,
        }
    }

    /// Commits before capture starts go to sled directly: the snapshot must find them.
    fn commit_uncaptured(&self, commit: u64, ops: &[SledOp]) {
        let tree = |n: &str| self.sled.open_tree(n).expect("tree");
        let (ledger, items, tags) = (tree("ledger"), tree("items"), tree("tags"));
        tags.set_merge_operator(count_merge);
        (&ledger, &items, &tags)
            .transaction(|(l, i, t)| {
                l.insert(&commit.to_be_bytes()[..], &b"commit"[..])?;
                for op in ops {
                    match op {
                        SledOp::Insert(k, v) | SledOp::Swap(k, v) => {
                            i.insert(&k.to_be_bytes()[..], v.clone())?;
                        }
                        SledOp::Remove(k) => {
                            i.remove(&k.to_be_bytes()[..])?;
                        }
                        SledOp::Merge(tag) => {
                            let old = t.get([*tag])?;
                            if let Some(v) =
                                count_merge(&[*tag], old.as_deref(), &commit.to_be_bytes())
                            {
                                t.insert(&[*tag][..], v)?;
                            }
                        }
                    }
                }
                Ok::<_, sled::transaction::ConflictableTransactionError<Infallible>>(())
            })
            .expect("uncaptured transaction");
    }
}

fn marked(commit: u64, rng: &mut StdRng) -> Vec<u8> {
    let mut v = commit.to_be_bytes().to_vec();
    v.extend((0..rng.random_range(0..200)).map(|_| rng.random::<u8>()));
    v
}

impl ConformanceSource for SledSource {
    fn kind(&self) -> &'static str {
        "sled"
    }

    fn state_dir(&self) -> &Path {
        &self.state
    }

    fn source_id(&self) -> &str {
        "app"
    }

    fn ledger_table(&self) -> &str {
        "ledger"
    }

    fn ledger_commit(&self, row: &[Value]) -> Option<u64> {
        match row.first() {
            Some(Value::Blob(k)) => Some(u64::from_be_bytes(k.as_slice().try_into().ok()?)),
            _ => None,
        }
    }

    fn marker(&self, table: &str, row: &[Value]) -> Option<u64> {
        match (table, row.get(1)) {
            ("items" | "tags", Some(Value::Blob(v))) => {
                Some(u64::from_be_bytes(v.get(..8)?.try_into().ok()?))
            }
            _ => None,
        }
    }

    fn commit(&mut self, commit: u64, rng: &mut StdRng) {
        let ops: Vec<SledOp> = (0..rng.random_range(0..5))
            .map(|_| match rng.random_range(0..5) {
                0 | 1 => SledOp::Insert(rng.random_range(0..150), marked(commit, rng)),
                2 => SledOp::Remove(rng.random_range(0..150)),
                3 => SledOp::Swap(rng.random_range(0..150), marked(commit, rng)),
                _ => SledOp::Merge(rng.random_range(0..40)),
            })
            .collect();
        let Some((db, trees)) = &self.capture else {
            self.commit_uncaptured(commit, &ops);
            return;
        };
        let refs: Vec<&CapturedTree> = trees.iter().collect();
        db.transaction(&refs, |tx| {
            tx.tree(0).insert(commit.to_be_bytes(), &b"commit"[..])?;
            for op in &ops {
                match op {
                    SledOp::Insert(k, v) => {
                        tx.tree(1).insert(k.to_be_bytes(), v.clone())?;
                    }
                    SledOp::Remove(k) => {
                        tx.tree(1).remove(k.to_be_bytes())?;
                    }
                    SledOp::Swap(k, v) => {
                        let current = tx.tree(1).get(k.to_be_bytes())?;
                        tx.tree(1)
                            .compare_and_swap(k.to_be_bytes(), current, Some(v.clone()))?
                            .expect("nothing else writes inside the transaction");
                    }
                    SledOp::Merge(tag) => {
                        tx.tree(2).merge([*tag], commit.to_be_bytes())?;
                    }
                }
            }
            Ok::<_, TxError<Infallible>>(())
        })
        .expect("captured transaction");
    }

    fn start_capture(&mut self) {
        let db = CapturedDb::with_db(
            self.sled.clone(),
            &self.path,
            &self.state,
            CaptureOptions {
                snapshot_chunk_rows: 16,
                ..CaptureOptions::default()
            },
        )
        .expect("open the capture");
        let trees: Vec<CapturedTree> = TREES
            .iter()
            .map(|t| db.open_tree(t).expect("tree"))
            .collect();
        trees[2].set_merge_operator(count_merge);
        self.capture = Some((db, trees));
    }

    fn sync_capture(&mut self) {
        let (db, _) = self.capture.as_ref().expect("capture is running");
        db.sync(Duration::from_secs(60)).expect("sync");
    }

    fn stop_capture(&mut self) {
        if let Some((db, trees)) = self.capture.take() {
            drop(trees);
            db.close(Duration::from_secs(60)).expect("close");
        }
    }

    fn writes_while_stopped(&self) -> bool {
        false
    }

    fn contents(&mut self) -> Tables {
        let mut out = Tables::new();
        for name in TREES {
            let tree = self.sled.open_tree(name).expect("tree");
            let rows: std::collections::BTreeMap<Vec<Value>, Vec<Value>> = tree
                .iter()
                .map(|kv| {
                    let (k, v) = kv.expect("read sled");
                    (
                        vec![Value::Blob(k.to_vec())],
                        vec![Value::Blob(k.to_vec()), Value::Blob(v.to_vec())],
                    )
                })
                .collect();
            if !rows.is_empty() {
                out.insert(name.to_string(), rows);
            }
        }
        out
    }
}

#[test]
fn sled_source_passes_the_conformance_suite() {
    let pg = TestDb::new_blocking();
    let mut src = SledSource::new();
    let seed = std::env::var("FERRY_CONFORMANCE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_0002);
    run_suite(&mut src, &pg, &SuiteSize::from_env(), seed);
}
