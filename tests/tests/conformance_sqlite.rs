//! The conformance suite (`ferry_e2e::conformance`) against the SQLite source: a real SQLite
//! file written by rusqlite in WAL mode, captured by `ferry_sqlite::SqliteCapture` on its own
//! thread into a real `ferry_log::Log`, shipped into a real PostgreSQL.

use ferry_core::state_dir::StateDir;
use ferry_core::{SourceId, Value};
use ferry_e2e::conformance::{ConformanceSource, SuiteSize, Tables, run_suite};
use ferry_sqlite::{CaptureOptions, LogSink, SqliteCapture};
use ferry_testkit::pg::TestDb;
use rand::Rng;
use rand::rngs::StdRng;
use rusqlite::Connection;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

struct Running {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<SqliteCapture>,
}

struct SqliteSource {
    _dir: tempfile::TempDir,
    db: PathBuf,
    state: PathBuf,
    app: Connection,
    running: Option<Running>,
}

impl SqliteSource {
    fn new() -> SqliteSource {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = dir.path().join("app.db");
        let state = dir.path().join("state");
        let app = Connection::open(&db).expect("open the database");
        app.busy_timeout(Duration::from_secs(10)).expect("busy");
        app.execute_batch(
            "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;
             CREATE TABLE ledger(id INTEGER PRIMARY KEY, note TEXT NOT NULL);
             CREATE TABLE items(id INTEGER PRIMARY KEY, commit_no INTEGER NOT NULL, name TEXT, score REAL, data BLOB);
             CREATE TABLE tags(name TEXT PRIMARY KEY, commit_no INTEGER NOT NULL) WITHOUT ROWID;",
        )
        .expect("schema");
        SqliteSource {
            _dir: dir,
            db,
            state,
            app,
            running: None,
        }
    }

    fn id() -> SourceId {
        SourceId("app".into())
    }

    fn spawn(&mut self, mut cap: SqliteCapture) {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            if let Err(e) = cap.run(&flag) {
                panic!("capture failed: {e}");
            }
            cap
        });
        self.running = Some(Running { stop, thread });
    }

    fn join(&mut self) -> Option<SqliteCapture> {
        let r = self.running.take()?;
        r.stop.store(true, Ordering::SeqCst);
        Some(r.thread.join().expect("the capture thread panicked"))
    }
}

use ferry_sqlite::value_of as to_value;

impl ConformanceSource for SqliteSource {
    fn kind(&self) -> &'static str {
        "sqlite"
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
            Some(Value::Integer(i)) => u64::try_from(*i).ok(),
            _ => None,
        }
    }

    fn marker(&self, table: &str, row: &[Value]) -> Option<u64> {
        match (table, row.get(1)) {
            ("items" | "tags", Some(Value::Integer(i))) => u64::try_from(*i).ok(),
            _ => None,
        }
    }

    fn commit(&mut self, commit: u64, rng: &mut StdRng) {
        let k = commit as i64;
        let tx = self.app.transaction().expect("begin");
        tx.execute(
            "INSERT INTO ledger VALUES (?1, ?2)",
            rusqlite::params![k, format!("commit {k}")],
        )
        .expect("ledger");
        for _ in 0..rng.random_range(0..5) {
            match rng.random_range(0..4) {
                0 | 1 => {
                    let data: Vec<u8> = (0..rng.random_range(0..300))
                        .map(|_| rng.random())
                        .collect();
                    tx.execute(
                        "INSERT INTO items VALUES (?1, ?2, ?3, ?4, ?5)
                         ON CONFLICT(id) DO UPDATE SET commit_no = ?2, name = ?3, score = ?4, data = ?5",
                        rusqlite::params![
                            rng.random_range(1..150i64),
                            k,
                            format!("item {}", rng.random::<u16>()),
                            rng.random::<f64>() * 1000.0,
                            data
                        ],
                    )
                    .expect("upsert item");
                }
                2 => {
                    tx.execute(
                        "DELETE FROM items WHERE id = ?1",
                        [rng.random_range(1..150i64)],
                    )
                    .expect("delete item");
                }
                _ => {
                    let name = format!("tag{}", rng.random_range(0..40));
                    if rng.random_bool(0.7) {
                        tx.execute(
                            "INSERT INTO tags VALUES (?1, ?2) ON CONFLICT(name) DO UPDATE SET commit_no = ?2",
                            rusqlite::params![name, k],
                        )
                        .expect("upsert tag");
                    } else {
                        tx.execute("DELETE FROM tags WHERE name = ?1", [name])
                            .expect("delete tag");
                    }
                }
            }
        }
        tx.commit().expect("commit");
    }

    fn start_capture(&mut self) {
        let sd = StateDir::new(&self.state);
        let log = ferry_log::Log::open(
            &sd.log_dir(&Self::id()),
            &format!("sqlite:{}", self.db.display()),
            ferry_log::LogOptions::default(),
        )
        .expect("open the log");
        let opts = CaptureOptions {
            source_id: "app".into(),
            watch: false,
            poll_interval: Duration::from_millis(10),
            ..CaptureOptions::default()
        };
        let cap = SqliteCapture::open(
            &self.db,
            &sd.capture_dir(&Self::id()),
            Arc::new(LogSink(Arc::new(log))),
            opts,
        )
        .expect("open the capture");
        self.spawn(cap);
    }

    fn sync_capture(&mut self) {
        let mut cap = self.join().expect("capture is running");
        cap.catch_up().expect("catch up");
        self.spawn(cap);
    }

    fn stop_capture(&mut self) {
        // Dropping the capture releases its connections, lock and log.
        drop(self.join());
    }

    fn writes_while_stopped(&self) -> bool {
        true
    }

    fn contents(&mut self) -> Tables {
        let mut out = Tables::new();
        for (table, key_cols) in [("ledger", 1), ("items", 1), ("tags", 1)] {
            let mut st = self
                .app
                .prepare(&format!("SELECT * FROM {table}"))
                .expect("select");
            let n = st.column_count();
            let rows = st
                .query_map([], |r| {
                    (0..n)
                        .map(|i| r.get_ref(i).map(to_value))
                        .collect::<Result<Vec<Value>, _>>()
                })
                .expect("query")
                .collect::<Result<Vec<_>, _>>()
                .expect("rows");
            let rows: std::collections::BTreeMap<Vec<Value>, Vec<Value>> = rows
                .into_iter()
                .map(|r| (r[..key_cols].to_vec(), r))
                .collect();
            if !rows.is_empty() {
                out.insert(table.to_string(), rows);
            }
        }
        out
    }
}

#[test]
fn sqlite_source_passes_the_conformance_suite() {
    let pg = TestDb::new_blocking();
    let mut src = SqliteSource::new();
    let seed = std::env::var("FERRY_CONFORMANCE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_0001);
    run_suite(&mut src, &pg, &SuiteSize::from_env(), seed);
}
