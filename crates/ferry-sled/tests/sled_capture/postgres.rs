//! The log of a sled source, shipped into a real PostgreSQL by ferry-pg's shipper: each tree
//! is a `key bytea primary key, value bytea` table equal to the tree.

use crate::differential::{open_trees, prepopulate, random_op};
use crate::support::*;
use ferry_core::SourceId;
use ferry_core::state_dir::StateDir;
use ferry_pg::{PgTarget, ShipOptions, Shipper, VecRecordSource};
use ferry_sled::{CaptureOptions, CapturedDb, CapturedTree};
use ferry_testkit::pg::TestDb;
use rand::SeedableRng;
use rand::rngs::StdRng;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Ships the whole log of source `app` (resuming where PostgreSQL says it is) and returns
/// every shipped table's rows, empty tables left out.
pub fn ship_and_read_back(state: &Path, db: &TestDb) -> Contents {
    let records = read_log(state, "app");
    let dir = StateDir::new(state).log_dir(&SourceId("app".into()));
    let log_id = ferry_log::open_read_only(&dir)
        .expect("open the log")
        .log_id()
        .to_string();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let mut source = VecRecordSource::new(log_id, records);
        let last = source.last_lsn();
        let opts = ShipOptions {
            source_id: "app".into(),
            batch_max_delay: Duration::from_millis(10),
            load_connections: 2,
            ..ShipOptions::default()
        };
        let target = PgTarget::parse(db.url()).expect("target");
        let mut shipper = Shipper::new(target, opts).await.expect("shipper");
        shipper
            .run_until_caught_up(&mut source, last)
            .await
            .unwrap_or_else(|e| panic!("shipping: {e}"));
        let client = db.connect().await;
        let mut out = Contents::new();
        for map in shipper.table_maps() {
            let names: Vec<&str> = map.columns.iter().map(|c| c.target.as_str()).collect();
            assert_eq!(names, ["key", "value"], "table {}", map.qualified());
            // The default mapping: `key bytea primary key, value bytea`, as PostgreSQL sees it.
            let columns: Vec<(String, String, bool)> = client
                .query(
                    "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod), \
                            coalesce((SELECT true FROM pg_index i WHERE i.indrelid = a.attrelid \
                                      AND i.indisprimary AND a.attnum = ANY(i.indkey)), false) \
                     FROM pg_attribute a \
                     WHERE a.attrelid = $1::text::regclass AND a.attnum > 0 AND NOT a.attisdropped \
                     ORDER BY a.attnum",
                    &[&map.qualified()],
                )
                .await
                .unwrap_or_else(|e| panic!("columns of {}: {e}", map.qualified()))
                .iter()
                .map(|r| (r.get(0), r.get(1), r.get(2)))
                .collect();
            assert_eq!(
                columns,
                [
                    ("key".to_string(), "bytea".to_string(), true),
                    ("value".to_string(), "bytea".to_string(), false)
                ],
                "table {}",
                map.qualified()
            );
            let rows = client
                .query(&format!("SELECT key, value FROM {}", map.qualified()), &[])
                .await
                .unwrap_or_else(|e| panic!("reading {}: {e}", map.qualified()));
            let rows: BTreeMap<Vec<u8>, Vec<u8>> = rows
                .iter()
                .map(|r| (r.get::<_, Vec<u8>>(0), r.get::<_, Vec<u8>>(1)))
                .collect();
            if !rows.is_empty() {
                out.insert(map.source_name().to_string(), rows);
            }
        }
        out
    })
}

/// Several seeds; two writers race the initial snapshot (asserted: some of their writes
/// completed before it was in the log) and each other; PostgreSQL after the initial load, and
/// again after streaming more writes (and a tree created after the load), equals the trees.
#[test]
fn shipped_postgresql_tables_equal_the_sled_trees() {
    for seed in seeds("shipped_postgresql_tables_equal_the_sled_trees", 3) {
        eprintln!("seed {seed} (rerun with FERRY_SLED_SEED={seed})");
        let pg = TestDb::new_blocking();
        let dir = tempfile::tempdir().expect("tempdir");
        let (path, state) = (dir.path().join("app"), dir.path().join("state"));
        let mut rng = StdRng::seed_from_u64(seed);
        prepopulate(&path, &mut rng, 3000);

        let opts = CaptureOptions {
            snapshot_chunk_rows: 11,
            ..CaptureOptions::default()
        };
        // Writes race the snapshot; then the initial load.
        let db = CapturedDb::open(&path, &state, opts.clone()).expect("open");
        let sled_db = db.sled().clone();
        let trees = open_trees(&db);
        let during = AtomicU64::new(0);
        two_writers(seed, &db, &trees, 300, &during);
        let during = during.load(Ordering::SeqCst);
        eprintln!("{during} of 600 writes completed during the snapshot");
        assert!(during > 0, "no write overlapped the snapshot");
        db.sync(Duration::from_secs(60)).expect("sync");
        assert_same(&ship_and_read_back(&state, &pg), &sled_contents(&sled_db));

        // Streaming: more writes, including a tree created after the load.
        two_writers(seed ^ 1, &db, &trees, 300, &AtomicU64::new(0));
        db.open_tree("late")
            .expect("tree")
            .insert("k", "v")
            .expect("insert");
        drop(trees);
        db.close(Duration::from_secs(60)).expect("close");
        assert_same(&ship_and_read_back(&state, &pg), &sled_contents(&sled_db));
    }
}

/// Two threads, `ops` random captured operations each; counts in `during` the operations
/// that completed while the initial snapshot was not yet in the log.
fn two_writers(seed: u64, db: &CapturedDb, trees: &[CapturedTree], ops: usize, during: &AtomicU64) {
    std::thread::scope(|s| {
        for w in 0..2u64 {
            s.spawn(move || {
                let mut rng = StdRng::seed_from_u64(seed.wrapping_add(w + 1));
                for _ in 0..ops {
                    random_op(&mut rng, db, trees);
                    if !db.snapshot_done() {
                        during.fetch_add(1, Ordering::SeqCst);
                    }
                }
            });
        }
    });
}
