//! A real application database, a real capture into a real log with small segments, and an
//! archiver fed between workload steps; the content of the database is recorded (a SELECT of
//! every table) at every LSN the workload reaches, as the oracle restores are compared with.
#![allow(dead_code)]

use ferry_archive::{ArchiveOptions, Archiver, BaseMeta};
use ferry_core::fold::Fold;
use ferry_core::{Lsn, Record, Value};
use ferry_log::{Log, LogOptions, SyncPolicy};
use ferry_sqlite::{CaptureOptions, LogSink, SqliteCapture};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rusqlite::Connection;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Every table's rows, each table sorted (rows compared by value, hidden rowids aside).
pub type Dump = BTreeMap<String, Vec<Vec<Value>>>;

use ferry_sqlite::value_of;

pub fn dump(conn: &Connection) -> Dump {
    let names: Vec<String> = conn
        .prepare(
            "SELECT name FROM sqlite_schema WHERE type = 'table' AND (name NOT LIKE 'sqlite%' OR name = 'sqlite_sequence') ORDER BY name",
        )
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let mut out = Dump::new();
    for name in names {
        let mut stmt = conn
            .prepare(&format!("SELECT * FROM \"{}\"", name.replace('"', "\"\"")))
            .unwrap();
        let n = stmt.column_count();
        let mut rows: Vec<Vec<Value>> = stmt
            .query_map([], |r| {
                (0..n)
                    .map(|i| r.get_ref(i).map(value_of))
                    .collect::<Result<Vec<_>, _>>()
            })
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        rows.sort();
        out.insert(name, rows);
    }
    out
}

pub fn dump_file(path: &Path) -> Dump {
    let c = Connection::open(path).unwrap();
    dump(&c)
}

/// A recorded state: the database content right after the record at its LSN.
#[derive(Clone, Debug)]
pub struct Point {
    pub lsn: Lsn,
    pub captured_at: Option<i64>,
    pub content: Dump,
}

pub struct Harness {
    pub dir: tempfile::TempDir,
    pub db: PathBuf,
    pub log_dir: PathBuf,
    pub archive_dir: PathBuf,
    pub app: Connection,
    pub log: Arc<Log>,
    pub cap: SqliteCapture,
    pub archiver: Archiver,
    pub points: BTreeMap<Lsn, Point>,
    pub bases: Vec<Lsn>,
    rng: StdRng,
    next_user: u64,
    extra_tables: Vec<String>,
    extra_counter: u32,
    altered: bool,
}

/// A directory on tmpfs when there is one (fsync is free there; the files and calls are the
/// same), else a normal temporary directory.
fn test_dir() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        tempfile::tempdir_in(shm).unwrap()
    } else {
        tempfile::tempdir().unwrap()
    }
}

impl Harness {
    pub fn new(seed: u64, opts: impl FnOnce(&mut ArchiveOptions)) -> Harness {
        let dir = test_dir();
        let db = dir.path().join("app.db");
        let log_dir = dir.path().join("log");
        let archive_dir = dir.path().join("archive");
        let app = Connection::open(&db).unwrap();
        app.execute_batch(
            "PRAGMA page_size=4096; PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;
             CREATE TABLE users(id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL UNIQUE, score REAL, bio BLOB);
             CREATE TABLE tags(name TEXT PRIMARY KEY, n INT) WITHOUT ROWID;
             CREATE TABLE nokey(a, b);
             CREATE INDEX nokey_a ON nokey(a);
             CREATE TABLE audit(id INTEGER PRIMARY KEY, user_id INT, what TEXT);
             CREATE TRIGGER users_ai AFTER INSERT ON users BEGIN
                 INSERT INTO audit(user_id, what) VALUES (new.id, 'insert');
             END;
             INSERT INTO users(name, score) VALUES ('seed0', 1.5), ('seed1', NULL);",
        )
        .unwrap();
        app.busy_timeout(std::time::Duration::from_secs(10))
            .unwrap();
        let log = Arc::new(
            Log::open(
                &log_dir,
                "sqlite:app.db",
                LogOptions {
                    segment_bytes: 12 * 1024,
                    segment_max_age: None,
                    sync: SyncPolicy::EveryAppend,
                },
            )
            .unwrap(),
        );
        let cap = SqliteCapture::open(
            &db,
            &dir.path().join("capture"),
            Arc::new(LogSink(log.clone())),
            CaptureOptions {
                watch: false,
                source_id: "app".into(),
                ..CaptureOptions::default()
            },
        )
        .unwrap();
        let mut o = ArchiveOptions::new(&archive_dir);
        opts(&mut o);
        let archiver = Archiver::open(o, "app", &log_dir).unwrap();
        let mut h = Harness {
            dir,
            db,
            log_dir,
            archive_dir,
            app,
            log,
            cap,
            archiver,
            points: BTreeMap::new(),
            bases: Vec::new(),
            rng: StdRng::seed_from_u64(seed),
            next_user: 2,
            extra_tables: Vec::new(),
            extra_counter: 0,
            altered: false,
        };
        h.capture_and_record();
        h
    }

    /// Captures everything committed and records the content at the log's durable LSN.
    pub fn capture_and_record(&mut self) -> Lsn {
        self.cap.catch_up().unwrap();
        let lsn = self.log.durable_lsn();
        let captured_at = self.captured_at(lsn);
        let content = dump(&self.app);
        self.points.insert(
            lsn,
            Point {
                lsn,
                captured_at,
                content,
            },
        );
        lsn
    }

    pub fn captured_at(&self, lsn: Lsn) -> Option<i64> {
        let mut r = self.log.reader(lsn).unwrap();
        let (l, payload) = r.next()?.unwrap();
        assert_eq!(l, lsn);
        Record::decode(&payload).unwrap().captured_at()
    }

    /// A base from capture's shadow, added to the archive; checks that it equals the content
    /// recorded at its LSN.
    pub fn take_base(&mut self) -> Lsn {
        let tmp = self.dir.path().join("base.tmp.db");
        let copy = self.cap.write_base(&tmp).unwrap();
        if let Some(p) = self.points.get(&copy.lsn) {
            assert_eq!(dump_file(&tmp), p.content, "base at LSN {}", copy.lsn);
        }
        self.archiver
            .add_base(
                &tmp,
                BaseMeta {
                    lsn: copy.lsn,
                    taken_at: copy.taken_at_micros,
                    page_size: Some(copy.page_size),
                },
            )
            .unwrap();
        std::fs::remove_file(&tmp).unwrap();
        self.bases.push(copy.lsn);
        copy.lsn
    }

    /// One random application transaction (or checkpoint), then capture and record.
    pub fn step(&mut self) -> Lsn {
        let roll = self.rng.random_range(0..100);
        let users: Vec<i64> = self
            .app
            .prepare("SELECT id FROM users ORDER BY id")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let pick = |rng: &mut StdRng| users[rng.random_range(0..users.len())];
        match roll {
            0..=24 => {
                let n = self.rng.random_range(1..4);
                let tx = self.app.transaction().unwrap();
                for _ in 0..n {
                    self.next_user += 1;
                    let bio: Option<Vec<u8>> = self
                        .rng
                        .random_bool(0.5)
                        .then(|| vec![self.rng.random::<u8>(); self.rng.random_range(0..3000)]);
                    tx.execute(
                        "INSERT INTO users(name, score, bio) VALUES (?1, ?2, ?3)",
                        rusqlite::params![
                            format!("user{}", self.next_user),
                            self.rng.random_range(-1000.0..1000.0f64),
                            bio
                        ],
                    )
                    .unwrap();
                }
                tx.commit().unwrap();
            }
            25..=39 if !users.is_empty() => {
                let id = pick(&mut self.rng);
                self.app
                    .execute(
                        "UPDATE users SET score = ?1 WHERE id = ?2",
                        rusqlite::params![self.rng.random_range(0..50i64), id],
                    )
                    .unwrap();
            }
            40..=47 if users.len() >= 2 => {
                // Two rows swap a UNIQUE value inside one transaction.
                let a = pick(&mut self.rng);
                let b = pick(&mut self.rng);
                if a != b {
                    let tx = self.app.transaction().unwrap();
                    let na: String = tx
                        .query_row("SELECT name FROM users WHERE id = ?1", [a], |r| r.get(0))
                        .unwrap();
                    let nb: String = tx
                        .query_row("SELECT name FROM users WHERE id = ?1", [b], |r| r.get(0))
                        .unwrap();
                    tx.execute("UPDATE users SET name = 'swap' WHERE id = ?1", [a])
                        .unwrap();
                    tx.execute(
                        "UPDATE users SET name = ?1 WHERE id = ?2",
                        rusqlite::params![na, b],
                    )
                    .unwrap();
                    tx.execute(
                        "UPDATE users SET name = ?1 WHERE id = ?2",
                        rusqlite::params![nb, a],
                    )
                    .unwrap();
                    tx.commit().unwrap();
                }
            }
            48..=55 if users.len() > 3 => {
                let id = pick(&mut self.rng);
                self.app
                    .execute("DELETE FROM users WHERE id = ?1", [id])
                    .unwrap();
            }
            56..=67 => {
                let k = format!("t{}", self.rng.random_range(0..30));
                if self.rng.random_bool(0.7) {
                    self.app
                        .execute(
                            "INSERT INTO tags(name, n) VALUES (?1, 1) ON CONFLICT(name) DO UPDATE SET n = n + 1",
                            [&k],
                        )
                        .unwrap();
                } else {
                    self.app
                        .execute("DELETE FROM tags WHERE name = ?1", [&k])
                        .unwrap();
                }
            }
            68..=79 => {
                if self.rng.random_bool(0.75) {
                    self.app
                        .execute(
                            "INSERT INTO nokey(a, b) VALUES (?1, ?2)",
                            rusqlite::params![
                                self.rng.random_range(0..10i64),
                                format!("b{}", self.rng.random::<u16>())
                            ],
                        )
                        .unwrap();
                } else {
                    self.app
                        .execute(
                            "DELETE FROM nokey WHERE rowid = (SELECT min(rowid) FROM nokey)",
                            [],
                        )
                        .unwrap();
                }
            }
            80..=84 => {
                self.extra_counter += 1;
                let name = format!("extra_{}", self.extra_counter);
                self.app
                    .execute_batch(&format!(
                        "BEGIN; CREATE TABLE {name}(k INTEGER PRIMARY KEY, v TEXT);
                         INSERT INTO {name}(v) VALUES ('one'), ('two'); COMMIT;"
                    ))
                    .unwrap();
                self.extra_tables.push(name);
            }
            85..=87 if !self.extra_tables.is_empty() => {
                let name = self.extra_tables.remove(0);
                self.app
                    .execute_batch(&format!("DROP TABLE {name}"))
                    .unwrap();
            }
            88..=89 if !self.altered => {
                self.altered = true;
                self.app
                    .execute_batch("ALTER TABLE nokey ADD COLUMN c TEXT DEFAULT 'x'")
                    .unwrap();
            }
            90..=94 => {
                self.app
                    .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
                    .unwrap();
            }
            _ => {
                self.app
                    .execute(
                        "UPDATE tags SET n = n * 2 WHERE name IN (SELECT name FROM tags LIMIT 3)",
                        [],
                    )
                    .unwrap();
            }
        }
        self.capture_and_record()
    }

    /// Runs `steps` steps, taking a base every `base_every` steps and archiving sealed
    /// segments as they appear; seals and archives the rest at the end.
    pub fn run(&mut self, steps: usize, base_every: usize) {
        for i in 0..steps {
            self.step();
            if i % base_every == base_every / 2 {
                self.take_base();
            }
            if i % 5 == 0 {
                self.archiver.archive_sealed().unwrap();
            }
        }
        self.seal_and_archive();
    }

    pub fn seal_and_archive(&mut self) {
        self.log.seal().unwrap();
        self.archiver.archive_sealed().unwrap();
    }

    /// The fold of the source's own log up to `lsn`.
    pub fn fold_to(&self, lsn: Lsn) -> Fold {
        let mut fold = Fold::new();
        for r in self.log.reader(Lsn::FIRST).unwrap() {
            let (l, payload) = r.unwrap();
            if l > lsn {
                break;
            }
            fold.apply(&Record::decode(&payload).unwrap())
                .unwrap_or_else(|e| panic!("fold at LSN {l}: {e}"));
        }
        fold
    }
}

/// How many steps randomized tests run (FERRY_ARCHIVE_STEPS scales them up).
pub fn steps(default: usize) -> usize {
    std::env::var("FERRY_ARCHIVE_STEPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}
