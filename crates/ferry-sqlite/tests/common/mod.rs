//! Shared test support: real SQLite files, a real capture, and the fold-vs-SELECT oracle.
#![allow(dead_code)]

use ferry_core::fold::Fold;
use ferry_core::{Record, Value};
use ferry_sqlite::{CaptureOptions, RecordFile, SqliteCapture};
use rusqlite::Connection;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub struct Env {
    pub dir: tempfile::TempDir,
    pub db: PathBuf,
    pub work: PathBuf,
    pub log_path: PathBuf,
}

impl Env {
    /// A directory on a disk file system (fsync really waits).
    pub fn new() -> Env {
        Self::in_dir(tempfile::tempdir().unwrap())
    }

    /// A directory on tmpfs when there is one: the same files and calls, but fsync is free,
    /// so randomized tests can run many cases.
    pub fn fast() -> Env {
        let shm = std::path::Path::new("/dev/shm");
        if shm.is_dir() {
            Self::in_dir(tempfile::tempdir_in(shm).unwrap())
        } else {
            Self::new()
        }
    }

    fn in_dir(dir: tempfile::TempDir) -> Env {
        let db = dir.path().join("app.db");
        let work = dir.path().join("capture");
        let log_path = dir.path().join("log.bin");
        Env {
            dir,
            db,
            work,
            log_path,
        }
    }

    /// The application's connection: WAL mode, synchronous NORMAL.
    pub fn app(&self, page_size: u32) -> Connection {
        let c = Connection::open(&self.db).unwrap();
        c.execute_batch(&format!(
            "PRAGMA page_size={page_size}; PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;"
        ))
        .unwrap();
        c.busy_timeout(std::time::Duration::from_secs(10)).unwrap();
        c
    }

    pub fn log(&self) -> Arc<RecordFile> {
        Arc::new(RecordFile::open(&self.log_path).unwrap())
    }

    pub fn capture(&self, log: Arc<RecordFile>) -> SqliteCapture {
        let opts = CaptureOptions {
            watch: false,
            ..CaptureOptions::default()
        };
        SqliteCapture::open(&self.db, &self.work, log, opts).unwrap()
    }
}

pub fn records(log_path: &Path) -> Vec<Record> {
    let f = RecordFile::open(log_path).unwrap();
    f.read_all().unwrap().into_iter().map(|(_, r)| r).collect()
}

pub fn fold(log_path: &Path) -> Fold {
    let mut fold = Fold::new();
    for (i, r) in records(log_path).iter().enumerate() {
        if let Err(e) = fold.apply(r) {
            panic!("fold failed at record {}: {e}\nrecord: {r:?}", i + 1);
        }
    }
    fold
}

use ferry_sqlite::value_of as to_value;

/// Asserts that the log, folded, equals `SELECT *` of every captured table.
pub fn assert_fold_matches(log_path: &Path, db: &Path) {
    assert_fold_equals_db(&fold(log_path), db);
}

/// Folds `records` in order.
pub fn fold_of<'a>(records: impl IntoIterator<Item = &'a Record>) -> Fold {
    let mut fold = Fold::new();
    for (i, r) in records.into_iter().enumerate() {
        if let Err(e) = fold.apply(r) {
            panic!("fold failed at record {}: {e}\nrecord: {r:?}", i + 1);
        }
    }
    fold
}

/// Asserts that `fold` equals `SELECT *` of every captured table of `db`.
pub fn assert_fold_equals_db(fold: &Fold, db: &Path) {
    let c = Connection::open(db).unwrap();
    let mut names: Vec<String> = c
        .prepare("SELECT name FROM sqlite_schema WHERE type='table' AND sql NOT LIKE 'CREATE VIRTUAL%' AND (name NOT LIKE 'sqlite_%' OR name = 'sqlite_sequence')")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    names.sort();
    let folded: Vec<String> = fold.tables.keys().cloned().collect();
    assert_eq!(folded, names, "captured tables differ from the database's");
    for name in names {
        let t = &fold.tables[&name];
        let quoted = format!("\"{}\"", name.replace('"', "\"\""));
        let sql = if t.schema.without_rowid {
            format!("SELECT * FROM {quoted}")
        } else {
            format!("SELECT _rowid_, * FROM {quoted}")
        };
        let mut st = c.prepare(&sql).unwrap();
        let n = st.column_count();
        let mut rows = st.query([]).unwrap();
        let mut expect: BTreeMap<Vec<Value>, Vec<Value>> = BTreeMap::new();
        while let Some(r) = rows.next().unwrap() {
            let (rowid, start) = if t.schema.without_rowid {
                (None, 0)
            } else {
                (r.get::<_, i64>(0).ok(), 1)
            };
            let vals: Vec<Value> = (start..n)
                .map(|i| to_value(r.get_ref(i).unwrap()))
                .collect();
            expect.insert(t.schema.key_of(&vals, rowid), vals);
        }
        if expect != t.rows {
            let missing: Vec<_> = expect
                .iter()
                .filter(|(k, v)| t.rows.get(*k) != Some(v))
                .take(3)
                .collect();
            let extra: Vec<_> = t
                .rows
                .iter()
                .filter(|(k, v)| expect.get(*k) != Some(v))
                .take(3)
                .collect();
            panic!(
                "table {name}: fold has {} rows, database {}; first differences: db {missing:?} vs fold {extra:?}",
                t.rows.len(),
                expect.len()
            );
        }
    }
}
