//! Helpers for the end-to-end tests: the real `ferry` binary, run as a separate process
//! against real SQLite files (written by a separate sample-application process) and a real
//! PostgreSQL (a fresh database per test from `ferry_testkit::pg`).

pub mod live;

pub mod conformance;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The `ferry` binary of this build: `FERRY_BIN`, or `target/<profile>/ferry` next to the
/// test executable's `deps/` directory (the test command builds the whole workspace first).
pub fn ferry_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("FERRY_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().unwrap_or_else(|e| panic!("current_exe: {e}"));
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .unwrap_or_else(|| panic!("unexpected test executable location {}", exe.display()));
    let bin = profile_dir.join("ferry");
    assert!(
        bin.is_file(),
        "{} not found: build it first (`cargo build -p ferry`) or set FERRY_BIN",
        bin.display()
    );
    bin
}

pub fn ferry() -> Command {
    let mut c = Command::new(ferry_bin());
    c.env("FERRY_LOG", "info,tokio_postgres=warn")
        .stdin(Stdio::null());
    c
}

/// Runs `ferry args…` to completion and returns its output; panics with both streams when
/// it cannot be started.
pub fn run_ferry(args: &[&str]) -> Output {
    ferry()
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running ferry {args:?}: {e}"))
}

/// Asserts the exit code and returns stdout.
pub fn expect_exit(out: &Output, code: i32, what: &str) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(code),
        "{what}: expected exit {code}, got {:?}\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        out.status
    );
    stdout
}

/// A sample application writing to `db` in its own process.
pub struct SampleApp {
    child: Option<Child>,
}

impl SampleApp {
    /// Creates the schema and initial rows, without writing further.
    pub fn prepare(db: &Path, initial_users: u64) {
        let out = ferry()
            .args([
                "sample-app",
                "--prepare-only",
                "--initial-users",
                &initial_users.to_string(),
                "--db",
            ])
            .arg(db)
            .output()
            .unwrap_or_else(|e| panic!("sample-app: {e}"));
        expect_exit(&out, 0, "sample-app --prepare-only");
    }

    pub fn start(db: &Path, rate: u64, seed: u64) -> SampleApp {
        let child = ferry()
            .args([
                "sample-app",
                "--initial-users",
                "0",
                "--rate",
                &rate.to_string(),
                "--seed",
                &seed.to_string(),
                "--db",
            ])
            .arg(db)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("starting sample-app: {e}"));
        SampleApp { child: Some(child) }
    }

    /// Stops it with SIGTERM and returns its JSON summary.
    pub fn stop(mut self) -> serde_json::Value {
        let child = self
            .child
            .take()
            .unwrap_or_else(|| panic!("sample app already stopped"));
        // SAFETY: signalling our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let out = child
            .wait_with_output()
            .unwrap_or_else(|e| panic!("sample-app: {e}"));
        let stdout = expect_exit(&out, 0, "sample-app");
        serde_json::from_str(stdout.trim())
            .unwrap_or_else(|e| panic!("sample-app summary {stdout:?}: {e}"))
    }
}

impl Drop for SampleApp {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Polls `cond` until it holds or `timeout` passes; panics with `what` on timeout.
pub fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Every row of every user table of a SQLite file, as `table -> sorted rows of JSON values`,
/// read by SQLite itself (the oracle).
pub fn sqlite_tables(db: &Path) -> std::collections::BTreeMap<String, Vec<Vec<serde_json::Value>>> {
    use rusqlite::types::ValueRef;
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap_or_else(|e| panic!("opening {}: {e}", db.display()));
    let names: Vec<String> = conn
        .prepare("SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name")
        .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
        .unwrap_or_else(|e| panic!("listing tables: {e}"));
    let mut out = std::collections::BTreeMap::new();
    for t in names {
        let mut stmt = conn
            .prepare(&format!("SELECT * FROM \"{}\"", t.replace('"', "\"\"")))
            .unwrap_or_else(|e| panic!("{t}: {e}"));
        let n = stmt.column_count();
        let mut rows: Vec<Vec<serde_json::Value>> = stmt
            .query_map([], |r| {
                (0..n)
                    .map(|i| {
                        Ok(match r.get_ref(i)? {
                            ValueRef::Null => serde_json::Value::Null,
                            ValueRef::Integer(v) => serde_json::json!(v),
                            ValueRef::Real(v) => serde_json::json!(v),
                            ValueRef::Text(b) => serde_json::json!(String::from_utf8_lossy(b)),
                            ValueRef::Blob(b) => serde_json::json!({"$blob": b.len()}),
                        })
                    })
                    .collect()
            })
            .and_then(|m| m.collect())
            .unwrap_or_else(|e| panic!("{t}: {e}"));
        rows.sort_by_key(|r| serde_json::to_string(r).unwrap_or_default());
        out.insert(t, rows);
    }
    out
}

/// A small log written with the log library: a snapshot of `users` (one row), then a
/// transaction with an insert (invalid UTF-8 text, a blob) and an update, then a delete.
/// Folded, `users` holds exactly `(1, 'Ann', NULL)`.
pub mod sample_log {
    use ferry_core::state_dir::StateDir;
    use ferry_core::{
        Affinity, Column, KeyColumns, Lsn, Record, RowChange, SnapshotBegin, SnapshotEnd,
        SnapshotRow, SnapshotRows, SourceId, SourcePosition, TableSchema, Transaction, Value,
        WalPosition,
    };

    fn column(name: &str, decl: &str, pk: u32) -> Column {
        Column {
            name: name.into(),
            decl_type: decl.into(),
            affinity: Affinity::from_declared_type(decl),
            not_null: false,
            default_sql: None,
            default_value: None,
            pk_position: pk,
            generated: None,
            collation: None,
        }
    }

    pub fn users() -> TableSchema {
        TableSchema {
            name: "users".into(),
            columns: vec![
                column("id", "INTEGER", 1),
                column("name", "TEXT", 0),
                column("avatar", "BLOB", 0),
            ],
            key: KeyColumns::PrimaryKey(vec![0]),
            rowid_alias: Some(0),
            without_rowid: false,
            strict: false,
            autoincrement: false,
            unique: vec![],
            foreign_keys: vec![],
            sql: "CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT, avatar BLOB)".into(),
        }
    }

    fn wal(frame: u32) -> SourcePosition {
        SourcePosition::SqliteWal(WalPosition {
            salt1: 1,
            salt2: 2,
            frame,
            checksum1: 3,
            checksum2: 4,
            db_pages: 5,
        })
    }

    /// Writes a small log into `<state>/sources/app/log` and returns the state dir.
    pub fn write_log(state: &std::path::Path) {
        let sd = StateDir::new(state);
        let id = SourceId("app".into());
        let log = ferry_log::Log::open(&sd.log_dir(&id), "app", ferry_log::LogOptions::default())
            .unwrap();
        let records = [
            Record::SnapshotBegin(SnapshotBegin {
                position: wal(1),
                captured_at: 1_700_000_000_000_000,
                tables: vec![users()],
                schema_rows: vec![],
            }),
            Record::SnapshotRows(SnapshotRows {
                table: "users".into(),
                rows: vec![SnapshotRow {
                    rowid: Some(1),
                    values: vec![Value::Integer(1), Value::text("ann"), Value::Null],
                }],
            }),
            Record::SnapshotEnd(SnapshotEnd {
                position: wal(1),
                captured_at: 1_700_000_000_000_001,
                row_counts: vec![("users".into(), 1)],
            }),
            Record::Transaction(Transaction {
                position: wal(7),
                captured_at: 1_700_000_000_500_000,
                schema_changes: vec![],
                resync: false,
                changes: vec![
                    RowChange::insert(
                        "users",
                        vec![Value::Integer(2)],
                        vec![
                            Value::Integer(2),
                            Value::Text(vec![0xff, 0x41]),
                            Value::Blob(vec![1, 2]),
                        ],
                    ),
                    RowChange::update(
                        "users",
                        vec![Value::Integer(1)],
                        vec![Value::Integer(1), Value::text("ann"), Value::Null],
                        vec![Value::Integer(1), Value::text("Ann"), Value::Null],
                    ),
                ],
            }),
            Record::Transaction(Transaction {
                position: wal(9),
                captured_at: 1_700_000_001_000_000,
                schema_changes: vec![],
                resync: false,
                changes: vec![RowChange::delete(
                    "users",
                    vec![Value::Integer(2)],
                    vec![
                        Value::Integer(2),
                        Value::Text(vec![0xff, 0x41]),
                        Value::Blob(vec![1, 2]),
                    ],
                )],
            }),
        ];
        let payloads: Vec<Vec<u8>> = records.iter().map(Record::encode).collect();
        let range = log.append_batch(&payloads).unwrap();
        assert_eq!(*range.end(), Lsn(5));
    }
}
