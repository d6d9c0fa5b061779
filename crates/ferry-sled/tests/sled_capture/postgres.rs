//! The log of a sled source, shipped into a real PostgreSQL by ferry-pg's shipper: each tree
//! is a `key bytea primary key, value bytea` table equal to the tree.

use crate::differential::{open_trees, prepopulate, random_op};
use crate::support::*;
use ferry_core::SourceId;
use ferry_core::state_dir::StateDir;
use ferry_pg::{PgTarget, ShipOptions, Shipper, VecRecordSource};
use ferry_sled::{CaptureOptions, CapturedDb};
use ferry_testkit::pg::TestDb;
use rand::SeedableRng;
use rand::rngs::StdRng;
use std::collections::BTreeMap;
use std::path::Path;
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

#[test]
fn shipped_postgresql_tables_equal_the_sled_trees() {
    let pg = TestDb::new_blocking();
    let seed = seeds("shipped_postgresql_tables_equal_the_sled_trees", 1)[0];
    eprintln!("seed {seed} (rerun with FERRY_SLED_SEED={seed})");
    let dir = tempfile::tempdir().expect("tempdir");
    let (path, state) = (dir.path().join("app"), dir.path().join("state"));
    let mut rng = StdRng::seed_from_u64(seed);
    prepopulate(&path, &mut rng, 300);

    let opts = CaptureOptions {
        snapshot_chunk_rows: 11,
        ..CaptureOptions::default()
    };
    // Writes race the snapshot; then the initial load.
    let db = CapturedDb::open(&path, &state, opts.clone()).expect("open");
    let sled_db = db.sled().clone();
    let trees = open_trees(&db);
    for _ in 0..300 {
        random_op(&mut rng, &db, &trees);
    }
    db.sync(Duration::from_secs(60)).expect("sync");
    assert_same(&ship_and_read_back(&state, &pg), &sled_contents(&sled_db));

    // Streaming: more writes, including a tree created after the load.
    for _ in 0..300 {
        random_op(&mut rng, &db, &trees);
    }
    db.open_tree("late")
        .expect("tree")
        .insert("k", "v")
        .expect("insert");
    drop(trees);
    db.close(Duration::from_secs(60)).expect("close");
    assert_same(&ship_and_read_back(&state, &pg), &sled_contents(&sled_db));
}
