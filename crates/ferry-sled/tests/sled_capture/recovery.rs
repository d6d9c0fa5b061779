//! Faults around the mover: a log append that fails before or after it made the records
//! durable, a slow log (backpressure), a database older than its log, a decoder that refuses
//! a value.

use crate::support::*;
use ferry_core::state_dir::StateDir;
use ferry_core::{Record, SourceId, SourcePosition, TableSchema, Value};
use ferry_sled::decoder::{column, keyed_table};
use ferry_sled::{
    CaptureError, CaptureOptions, CapturedDb, DecoderError, DurableSink, TreeDecoder,
};
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

pub fn open_log(state: &Path, sled_path: &Path) -> ferry_log::Log {
    let dir = StateDir::new(state).log_dir(&SourceId("app".into()));
    let abs = std::path::absolute(sled_path).expect("absolute");
    ferry_log::Log::open(
        &dir,
        &ferry_sled::log_identity(&abs),
        ferry_log::LogOptions::default(),
    )
    .expect("open log")
}

/// The real log, with faults injected after a number of good appends.
struct FaultyLog {
    log: ferry_log::Log,
    good_appends: u32,
    /// Append the failing batch to the log before failing (a crash after the log made the
    /// records durable but before the mover heard of it).
    append_then_fail: bool,
}

#[derive(Debug, thiserror::Error)]
#[error("injected append failure")]
struct Injected;

impl DurableSink for FaultyLog {
    fn append(&mut self, records: &[Vec<u8>]) -> Result<(), CaptureError> {
        if self.good_appends > 0 {
            self.good_appends -= 1;
            return DurableSink::append(&mut self.log, records);
        }
        if self.append_then_fail {
            DurableSink::append(&mut self.log, records)?;
        }
        Err(CaptureError::Sink(Box::new(Injected)))
    }

    fn last_record(&mut self) -> Result<Option<Record>, CaptureError> {
        self.log.last_record()
    }

    fn last_lsn(&mut self) -> Result<ferry_core::Lsn, CaptureError> {
        self.log.last_lsn()
    }
}

fn wait_for_mover_error(db: &CapturedDb) -> Arc<CaptureError> {
    let mut err = None;
    wait_until("the mover to stop", Duration::from_secs(30), || {
        err = db.mover_error();
        err.is_some()
    });
    err.expect("checked above")
}

pub fn check_log_equals_sled(state: &Path, db: &sled::Db) -> Vec<Record> {
    let records = read_log(state, "app");
    let mut last = 0;
    for r in &records {
        if let Record::Transaction(t) = r {
            let SourcePosition::SledOutbox { seq } = t.position else {
                panic!("position {:?}", t.position)
            };
            assert!(seq > last, "seq {seq} appended again after {last}");
            last = seq;
        }
    }
    assert_same(&fold_contents(&fold(&records)), &sled_contents(db));
    records
}

/// The mover crashes after the log made a batch durable but before it deleted the batch from
/// the outbox (the log append "fails" after writing); the next start must skip those
/// entries, not append them again.
#[test]
fn entries_already_in_the_log_are_not_appended_again() {
    for append_then_fail in [true, false] {
        let dir = tempfile::tempdir().expect("tempdir");
        let (path, state) = (dir.path().join("app"), dir.path().join("state"));
        let sled_db = sled::open(&path).expect("sled");
        let opts = CaptureOptions {
            mover_batch_entries: 5,
            ..CaptureOptions::default()
        };
        CapturedDb::with_db(sled_db.clone(), &path, &state, opts.clone())
            .and_then(|db| db.close(Duration::from_secs(30)))
            .unwrap_or_else(|e| panic!("first open: {e}"));
        // The first open above took the (empty) snapshot; now three good batches, then the fault.
        let sink = FaultyLog {
            log: open_log(&state, &path),
            good_appends: 3,
            append_then_fail,
        };
        let db = CapturedDb::with_sink(sled_db.clone(), sink, opts.clone()).expect("capture");
        let t = db.open_tree("t").expect("tree");
        for i in 0..40u32 {
            t.insert(i.to_be_bytes(), format!("v{i}").into_bytes())
                .expect("insert");
            // One entry at a time, so the batches are predictable.
            if i < 20 {
                wait_until("the entry to move", Duration::from_secs(30), || {
                    db.moved_seq() > u64::from(i) || db.mover_error().is_some()
                });
            }
        }
        let err = wait_for_mover_error(&db);
        assert!(matches!(&*err, CaptureError::Sink(_)), "{err}");
        let pending = db.pending();
        assert!(pending > 0, "the failed batch stays in the outbox");
        drop(t);
        drop(db);

        let db = CapturedDb::with_sink(sled_db.clone(), open_log(&state, &path), opts)
            .expect("capture again");
        let t = db.open_tree("t").expect("tree");
        t.remove(0u32.to_be_bytes()).expect("remove");
        db.sync(Duration::from_secs(30)).expect("sync");
        assert_eq!(db.pending(), 0);
        drop(t);
        db.close(Duration::from_secs(30)).expect("close");
        let records = check_log_equals_sled(&state, &sled_db);
        let txns = records
            .iter()
            .filter(|r| matches!(r, Record::Transaction(_)))
            .count();
        assert_eq!(txns, 41, "40 inserts and one remove, each exactly once");
    }
}

/// A log that blocks until opened: writers may fill the outbox up to its bound, then wait,
/// then fail; when the log moves again they go on.
pub struct GatedLog {
    pub log: ferry_log::Log,
    pub gate: Arc<(Mutex<bool>, Condvar)>,
}

impl DurableSink for GatedLog {
    fn append(&mut self, records: &[Vec<u8>]) -> Result<(), CaptureError> {
        let (open, cv) = &*self.gate;
        let mut g = open.lock().expect("gate");
        while !*g {
            g = cv.wait(g).expect("gate");
        }
        drop(g);
        DurableSink::append(&mut self.log, records)
    }

    fn last_record(&mut self) -> Result<Option<Record>, CaptureError> {
        self.log.last_record()
    }

    fn last_lsn(&mut self) -> Result<ferry_core::Lsn, CaptureError> {
        self.log.last_lsn()
    }
}

#[test]
fn a_full_outbox_holds_writers_back_until_the_log_catches_up() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (path, state) = (dir.path().join("app"), dir.path().join("state"));
    let sled_db = sled::open(&path).expect("sled");
    let gate = Arc::new((Mutex::new(true), Condvar::new()));
    let opts = CaptureOptions {
        outbox_limit: 20,
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

    let t = db.open_tree("t").expect("tree");
    let mut accepted = 0u32;
    let err = loop {
        match t.insert(accepted.to_be_bytes(), &b"x"[..]) {
            Ok(_) => accepted += 1,
            Err(e) => break e,
        }
        assert!(accepted <= 1000, "the outbox bound is not enforced");
    };
    assert!(
        matches!(err, CaptureError::Backpressure { limit: 20, .. }),
        "{err}"
    );
    assert_eq!(
        accepted, 20,
        "exactly outbox_limit entries wait for the mover"
    );
    assert_eq!(db.pending(), 20);

    {
        let (open, cv) = &*gate;
        *open.lock().expect("gate") = true;
        cv.notify_all();
    }
    db.sync(Duration::from_secs(30))
        .expect("the mover catches up");
    t.insert(accepted.to_be_bytes(), &b"x"[..])
        .expect("room again");
    drop(t);
    db.close(Duration::from_secs(30)).expect("close");
    check_log_equals_sled(&state, &sled_db);
}

#[test]
fn a_stopped_mover_fails_writers_at_the_bound_and_loses_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (path, state) = (dir.path().join("app"), dir.path().join("state"));
    let sled_db = sled::open(&path).expect("sled");
    let opts = CaptureOptions {
        outbox_limit: 10,
        ..CaptureOptions::default()
    };
    // Snapshot: SnapshotBegin and SnapshotEnd succeed (an empty database has no rows), then
    // every append fails.
    let sink = FaultyLog {
        log: open_log(&state, &path),
        good_appends: 2,
        append_then_fail: false,
    };
    let db = CapturedDb::with_sink(sled_db.clone(), sink, opts.clone()).expect("capture");
    // Writes racing the snapshot would land in it (as rows) rather than in the outbox.
    wait_until("the snapshot", Duration::from_secs(30), || {
        db.snapshot_done()
    });
    let t = db.open_tree("t").expect("tree");
    let mut accepted = 0u32;
    let err = loop {
        match t.insert(accepted.to_be_bytes(), &b"y"[..]) {
            Ok(_) => accepted += 1,
            Err(e) => break e,
        }
        assert!(accepted <= 1000, "the outbox bound is not enforced");
    };
    assert!(matches!(err, CaptureError::MoverStopped(_)), "{err}");
    assert_eq!(accepted, 10);
    drop(t);
    drop(db);

    let db = CapturedDb::with_sink(sled_db.clone(), open_log(&state, &path), opts).expect("again");
    db.close(Duration::from_secs(30)).expect("close");
    let records = check_log_equals_sled(&state, &sled_db);
    assert_eq!(
        records
            .iter()
            .filter(|r| matches!(r, Record::Transaction(_)))
            .count(),
        10
    );
}

#[test]
fn a_database_older_than_its_log_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (path, state) = (dir.path().join("app"), dir.path().join("state"));
    let old = dir.path().join("app-backup");
    let write = |from: u32, to: u32| {
        let db = CapturedDb::open(&path, &state, CaptureOptions::default()).expect("open");
        let t = db.open_tree("t").expect("tree");
        for i in from..to {
            t.insert(i.to_be_bytes(), &b"z"[..]).expect("insert");
        }
        drop(t);
        db.close(Duration::from_secs(30)).expect("close");
    };
    write(0, 5);
    copy_dir(&path, &old);
    write(5, 10);
    std::fs::remove_dir_all(&path).expect("remove");
    copy_dir(&old, &path);

    let db = CapturedDb::open(&path, &state, CaptureOptions::default()).expect("open");
    let err = wait_for_mover_error(&db);
    assert!(
        matches!(
            &*err,
            CaptureError::LogAheadOfSource {
                logged: 10,
                counter: 5
            }
        ),
        "{err}"
    );
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from).expect("read_dir") {
        let e = e.expect("entry");
        let target = to.join(e.file_name());
        if e.file_type().expect("type").is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).expect("copy");
        }
    }
}

#[test]
fn a_state_dir_refuses_another_database_under_the_same_source_id() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    let a = dir.path().join("one").join("app");
    let b = dir.path().join("two").join("app");
    CapturedDb::open(&a, &state, CaptureOptions::default())
        .expect("first")
        .close(Duration::from_secs(30))
        .expect("close");
    let err = CapturedDb::open(&b, &state, CaptureOptions::default())
        .err()
        .expect("a second database under source id \"app\" is refused");
    assert!(matches!(err, CaptureError::SourceMismatch { .. }), "{err}");
}

/// Values are JSON documents `{"name": …, "age": …}`, mapped to columns.
struct PeopleDecoder {
    strict: bool,
}

impl TreeDecoder for PeopleDecoder {
    fn table_schema(&self, tree: &str) -> TableSchema {
        keyed_table(
            &format!("{tree}_rows"),
            vec![
                column("id", "TEXT", 1),
                column("name", "TEXT", 0),
                column("age", "INTEGER", 0),
            ],
        )
    }

    fn decode(&self, _tree: &str, key: &[u8], value: &[u8]) -> Result<Vec<Value>, DecoderError> {
        let doc: serde_json::Value = match serde_json::from_slice(value) {
            Ok(d) => d,
            Err(e) if self.strict => return Err(Box::new(e)),
            Err(_) => serde_json::Value::Null,
        };
        Ok(vec![
            Value::Text(key.to_vec()),
            doc.get("name")
                .and_then(|n| n.as_str())
                .map_or(Value::Null, Value::text),
            doc.get("age")
                .and_then(|a| a.as_i64())
                .map_or(Value::Null, Value::Integer),
        ])
    }
}

#[test]
fn a_decoder_maps_values_to_columns_and_a_refusal_stops_the_mover_without_loss() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (path, state) = (dir.path().join("app"), dir.path().join("state"));
    let strict = CaptureOptions {
        decoder: Arc::new(PeopleDecoder { strict: true }),
        ..CaptureOptions::default()
    };
    let db = CapturedDb::open(&path, &state, strict).expect("open");
    let people = db.open_tree("people").expect("tree");
    people
        .insert("ada", r#"{"name":"Ada","age":36}"#)
        .expect("insert");
    people.insert("bob", r#"{"name":"Bob"}"#).expect("insert");
    db.sync(Duration::from_secs(30)).expect("sync");
    people
        .insert("bad", "not json")
        .expect("the write itself succeeds");
    people.remove("bob").expect("remove");
    let err = wait_for_mover_error(&db);
    let CaptureError::Decode { tree, key_hex, .. } = &*err else {
        panic!("expected a decode error, got {err}");
    };
    assert_eq!((tree.as_str(), key_hex.as_str()), ("people", "626164"));
    drop(people);
    drop(db);

    let lenient = CaptureOptions {
        decoder: Arc::new(PeopleDecoder { strict: false }),
        ..CaptureOptions::default()
    };
    let db = CapturedDb::open(&path, &state, lenient).expect("reopen");
    db.close(Duration::from_secs(30)).expect("close");
    let f = fold(&read_log(&state, "app"));
    let rows = &f.tables.get("people_rows").expect("the table").rows;
    let got: Vec<&Vec<Value>> = rows.values().collect();
    assert_eq!(
        got,
        vec![
            &vec![Value::text("ada"), Value::text("Ada"), Value::Integer(36)],
            &vec![Value::text("bad"), Value::Null, Value::Null],
        ]
    );
}

#[test]
fn excluded_trees_are_neither_snapshotted_nor_captured() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (path, state) = (dir.path().join("app"), dir.path().join("state"));
    {
        let db = sled::open(&path).expect("sled");
        db.open_tree("cache")
            .expect("t")
            .insert("old", "x")
            .expect("insert");
        db.open_tree("kept")
            .expect("t")
            .insert("old", "y")
            .expect("insert");
        db.flush().expect("flush");
    }
    let opts = CaptureOptions {
        exclude_trees: vec![b"cache".to_vec()],
        ..CaptureOptions::default()
    };
    let db = CapturedDb::open(&path, &state, opts).expect("open");
    db.open_tree("cache")
        .expect("t")
        .insert("new", "x")
        .expect("insert");
    db.open_tree("kept")
        .expect("t")
        .insert("new", "y")
        .expect("insert");
    db.close(Duration::from_secs(30)).expect("close");
    let f = fold(&read_log(&state, "app"));
    assert!(!f.tables.contains_key("cache"));
    assert_eq!(f.tables.get("kept").map(|t| t.rows.len()), Some(2));
}

/// A crash while the staged snapshot is copied into the log: the next start finishes the
/// copy; the log holds exactly one, complete snapshot.
#[test]
fn a_crash_while_copying_the_staged_snapshot_resumes_the_copy() {
    for append_then_fail in [false, true] {
        let dir = tempfile::tempdir().expect("tempdir");
        let (path, state) = (dir.path().join("app"), dir.path().join("state"));
        let staging = dir.path().join("staging");
        let sled_db = sled::open(&path).expect("sled");
        let t = sled_db.open_tree("t").expect("tree");
        for i in 0..500u32 {
            t.insert(i.to_be_bytes(), vec![1u8; 10]).expect("insert");
        }
        let opts = CaptureOptions {
            snapshot_chunk_rows: 5,
            snapshot_staging: Some(staging.clone()),
            ..CaptureOptions::default()
        };
        // 102 staged records (begin, 100 chunks, end) are copied 64 at a time: the first
        // copy succeeds, the second fails (before or after reaching the log).
        let sink = FaultyLog {
            log: open_log(&state, &path),
            good_appends: 1,
            append_then_fail,
        };
        let db = CapturedDb::with_sink(sled_db.clone(), sink, opts.clone()).expect("capture");
        let err = wait_for_mover_error(&db);
        assert!(matches!(&*err, CaptureError::Sink(_)), "{err}");
        // Writes keep landing in the outbox meanwhile.
        db.open_tree("t")
            .expect("tree")
            .remove(3u32.to_be_bytes())
            .expect("remove");
        drop(db);
        let copied = read_log(&state, "app");
        let expected_len = if append_then_fail { 102 } else { 64 };
        assert_eq!(copied.len(), expected_len);
        assert!(staging.is_dir(), "the staging log outlives the failed copy");

        let db = CapturedDb::with_sink(sled_db.clone(), open_log(&state, &path), opts)
            .expect("capture again");
        db.close(Duration::from_secs(30)).expect("close");
        let records = check_log_equals_sled(&state, &sled_db);
        let begins = records
            .iter()
            .filter(|r| matches!(r, Record::SnapshotBegin(_)))
            .count();
        assert_eq!(begins, 1);
        assert!(!staging.exists(), "the staging log is deleted once copied");
        assert_eq!(
            records
                .iter()
                .filter(|r| matches!(r, Record::Transaction(_)))
                .count(),
            1,
            "the remove made during the failed copy follows the snapshot"
        );
    }
}

/// Closing the application in the middle of a long initial snapshot does not wait for the
/// snapshot; the next start takes it up, and the log gets exactly one complete snapshot.
#[test]
fn dropping_the_capture_interrupts_the_snapshot_and_the_next_start_completes_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (path, state) = (dir.path().join("app"), dir.path().join("state"));
    {
        let db = sled::open(&path).expect("sled");
        let t = db.open_tree("big").expect("tree");
        for i in 0..5000u32 {
            t.insert(i.to_be_bytes(), vec![9u8; 16]).expect("insert");
        }
        db.flush().expect("flush");
    }
    // One row per chunk: thousands of durable appends, far longer than the drop below.
    let opts = CaptureOptions {
        snapshot_chunk_rows: 1,
        ..CaptureOptions::default()
    };
    let db = CapturedDb::open(&path, &state, opts.clone()).expect("open");
    drop(db);
    let records = read_log(&state, "app");
    assert!(
        !records.iter().any(|r| matches!(r, Record::SnapshotEnd(_))),
        "the drop waited for the whole snapshot ({} records)",
        records.len()
    );

    let db = CapturedDb::open(&path, &state, CaptureOptions::default()).expect("reopen");
    let sled_db = db.sled().clone();
    db.close(Duration::from_secs(120)).expect("close");
    let records = check_log_equals_sled(&state, &sled_db);
    assert_eq!(
        records
            .iter()
            .filter(|r| matches!(r, Record::SnapshotBegin(_)))
            .count(),
        1
    );
}
