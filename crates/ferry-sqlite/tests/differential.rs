//! Differential property test: random workloads written by the application's own
//! connection, captured, and the log folded from the start compared with `SELECT *` of every
//! table, row for row. `FERRY_PROPTEST_CASES` scales the number of cases.

mod common;
use common::*;
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rusqlite::{Connection, params};

fn cases() -> u32 {
    std::env::var("FERRY_PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64)
}

struct Gen {
    rng: StdRng,
    page_size: usize,
    /// Columns added by ADD COLUMN per table (names), so they can be dropped or renamed.
    added: Vec<Vec<String>>,
    next_col: u32,
}

const TABLES: [&str; 4] = ["r", "t", "w", "n"];

impl Gen {
    fn payload_len(&mut self) -> usize {
        let u = self.page_size;
        let table_x = u - 35;
        let index_x = ((u - 12) * 64 / 255) - 23;
        let m = ((u - 12) * 32 / 255) - 23;
        let base = match self.rng.random_range(0..6) {
            0 => self.rng.random_range(0..40),
            1 => table_x,
            2 => index_x,
            3 => m,
            4 => u * 2 + 100,
            _ => self.rng.random_range(0..u),
        };
        let jitter: i64 = self.rng.random_range(-24..24);
        (base as i64 + jitter).max(0) as usize
    }

    fn payload(&mut self) -> Vec<u8> {
        let n = self.payload_len();
        let b: u8 = self.rng.random();
        (0..n).map(|i| b.wrapping_add(i as u8)).collect()
    }

    fn key(&mut self) -> i64 {
        self.rng.random_range(1..120)
    }

    fn stmt(&mut self, c: &Connection) {
        let t = self.rng.random_range(0..4);
        let k = self.key();
        let p = self.payload();
        let op = self.rng.random_range(0..7);
        let name = format!("n{}", self.rng.random_range(0..150));
        let _ = match (t, op) {
            (0, 0) => c.execute("INSERT OR IGNORE INTO r(id, name, v, payload) VALUES (?1, ?2, ?3, ?4)", params![k, name, k as f64, p]),
            (0, 1) => c.execute("UPDATE r SET payload = ?2, v = v + 0.5 WHERE id = ?1", params![k, p]),
            (0, 2) => c.execute("DELETE FROM r WHERE id BETWEEN ?1 AND ?1 + 3", params![k]),
            (0, 3) => c.execute("REPLACE INTO r(id, name, v, payload) VALUES (?1, ?2, 2.0, ?3)", params![k, name, p]),
            (0, 4) => c.execute("INSERT INTO r(id, name, payload) VALUES (?1, ?2, ?3) ON CONFLICT(id) DO UPDATE SET payload = excluded.payload", params![k, name, p]),
            (0, 5) => c.execute("UPDATE OR IGNORE r SET id = id + 200 WHERE id = ?1", params![k]),
            (0, _) => c.execute("INSERT OR IGNORE INTO r(name, payload) VALUES (?1, ?2)", params![name, p]),
            (1, 0 | 6) => c.execute("INSERT OR REPLACE INTO t(k, payload) VALUES (?1, ?2)", params![format!("k{k}"), p]),
            (1, 1) => c.execute("UPDATE t SET payload = ?2 WHERE k = ?1", params![format!("k{k}"), p]),
            (1, 2) => c.execute("DELETE FROM t WHERE k = ?1", params![format!("k{k}")]),
            (1, 3) => c.execute("UPDATE OR IGNORE t SET k = ?2 WHERE k = ?1", params![format!("k{k}"), format!("k{}", k + 1)]),
            (1, _) => c.execute("INSERT INTO t(k, payload) VALUES (?1, ?2) ON CONFLICT(k) DO UPDATE SET payload = excluded.payload", params![format!("k{k}"), p]),
            (2, 0 | 4 | 6) => c.execute("INSERT OR REPLACE INTO w(a, b, payload) VALUES (?1, ?2, ?3)", params![k % 7, format!("b{}", k % 17), p]),
            (2, 1) => c.execute("UPDATE w SET payload = ?3 WHERE a = ?1 AND b = ?2", params![k % 7, format!("b{}", k % 17), p]),
            (2, 2) => c.execute("DELETE FROM w WHERE a = ?1", params![k % 7]),
            (2, _) => c.execute("UPDATE OR IGNORE w SET a = a + 1 WHERE b = ?1", params![format!("b{}", k % 17)]),
            (_, 0 | 1 | 6) => c.execute("INSERT INTO n(x, payload) VALUES (?1, ?2)", params![k, p]),
            (_, 2) => c.execute("DELETE FROM n WHERE x = ?1", params![k]),
            (_, _) => c.execute("UPDATE n SET payload = ?2 WHERE x = ?1", params![k, p]),
        };
    }

    fn ddl(&mut self, c: &Connection) {
        let ti = self.rng.random_range(0..4);
        let t = TABLES[ti];
        match self.rng.random_range(0..5) {
            0 => {
                self.next_col += 1;
                let col = format!("c{}", self.next_col);
                let def = match self.rng.random_range(0..3) {
                    0 => "TEXT DEFAULT 'dflt'",
                    1 => "REAL DEFAULT 3",
                    _ => "INTEGER",
                };
                c.execute_batch(&format!("ALTER TABLE {t} ADD COLUMN {col} {def}"))
                    .unwrap();
                self.added[ti].push(col);
            }
            1 if !self.added[ti].is_empty() => {
                let col = self.added[ti].remove(0);
                c.execute_batch(&format!("ALTER TABLE {t} DROP COLUMN {col}"))
                    .unwrap();
            }
            2 if !self.added[ti].is_empty() => {
                self.next_col += 1;
                let new = format!("c{}", self.next_col);
                let old = std::mem::replace(&mut self.added[ti][0], new.clone());
                c.execute_batch(&format!("ALTER TABLE {t} RENAME COLUMN {old} TO {new}"))
                    .unwrap();
            }
            3 => {
                // The 12-step rebuild migration tools use, in one transaction.
                let create: String = c
                    .query_row("SELECT sql FROM sqlite_schema WHERE name = ?1", [t], |r| {
                        r.get(0)
                    })
                    .unwrap();
                let body = &create[create.find('(').unwrap()..];
                let create_new = format!("CREATE TABLE {t}_new{body}");
                c.execute_batch(&format!(
                    "BEGIN; {create_new}; INSERT INTO {t}_new SELECT * FROM {t}; DROP TABLE {t}; ALTER TABLE {t}_new RENAME TO {t}; COMMIT;"
                ))
                .unwrap();
            }
            _ => {
                c.execute_batch("VACUUM").unwrap();
            }
        }
    }
}

fn schema(c: &Connection, auto_vacuum: &str) {
    c.execute_batch(&format!(
        "PRAGMA auto_vacuum={auto_vacuum};
         CREATE TABLE r(id INTEGER PRIMARY KEY, name TEXT UNIQUE, v REAL, payload BLOB);
         CREATE TABLE t(k TEXT PRIMARY KEY, payload BLOB);
         CREATE TABLE w(a INT, b TEXT, payload BLOB, PRIMARY KEY (b, a)) WITHOUT ROWID;
         CREATE TABLE n(x, payload);
         CREATE TABLE s(id INTEGER PRIMARY KEY AUTOINCREMENT, x);"
    ))
    .unwrap();
}

fn run_case(seed: u64, page_size: usize, auto_vacuum: &str, steps: usize) {
    let env = Env::fast();
    let app = env.app(page_size as u32);
    schema(&app, auto_vacuum);
    if auto_vacuum != "NONE" {
        // auto_vacuum must be set before the first table; VACUUM makes it stick in WAL mode too.
        app.execute_batch("VACUUM").unwrap();
    }
    app.execute_batch("PRAGMA cache_size=8; PRAGMA wal_autocheckpoint=50;")
        .unwrap();
    let mut g = Gen {
        rng: StdRng::seed_from_u64(seed),
        page_size,
        added: vec![Vec::new(); 4],
        next_col: 0,
    };
    let log = env.log();
    let mut cap = None;
    let snapshot_at = g.rng.random_range(0..steps / 2 + 1);
    for step in 0..steps {
        if step == snapshot_at {
            let mut c = env.capture(log.clone());
            c.catch_up().unwrap();
            cap = Some(c);
        }
        match g.rng.random_range(0..100) {
            0..=59 => {
                let n = g.rng.random_range(1..12);
                app.execute_batch("BEGIN").unwrap();
                for _ in 0..n {
                    g.stmt(&app);
                }
                if g.rng.random_range(0..10) == 0 {
                    app.execute_batch("ROLLBACK").unwrap();
                } else {
                    app.execute_batch("COMMIT").unwrap();
                }
            }
            60..=69 => {
                g.stmt(&app);
                let _ = app.execute("INSERT INTO s(x) VALUES (1)", []);
            }
            70..=75 => g.ddl(&app),
            76..=81 => {
                let mode = ["PASSIVE", "FULL", "RESTART", "TRUNCATE"][g.rng.random_range(0..4)];
                // Our reader may make RESTART/TRUNCATE wait; the application gives up quickly.
                app.busy_timeout(std::time::Duration::from_millis(20))
                    .unwrap();
                let _ = app.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |_| Ok(()));
                app.busy_timeout(std::time::Duration::from_secs(10))
                    .unwrap();
            }
            82..=84 if auto_vacuum == "INCREMENTAL" => {
                let _ = app.execute_batch("PRAGMA incremental_vacuum(5)");
            }
            _ => {
                if let Some(c) = cap.as_mut() {
                    c.catch_up().unwrap();
                }
            }
        }
    }
    let mut c = cap.unwrap_or_else(|| env.capture(log.clone()));
    c.catch_up().unwrap();
    assert_eq!(
        c.stats().resyncs,
        0,
        "no resync while capture ran undisturbed"
    );
    drop(c);
    assert_fold_matches(&env.log_path, &env.db);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn folded_log_equals_database(
        seed: u64,
        page_size in prop_oneof![Just(512usize), Just(4096), Just(65536)],
        auto_vacuum in prop_oneof![Just("NONE"), Just("FULL"), Just("INCREMENTAL")],
        steps in 5usize..60,
    ) {
        run_case(seed, page_size, auto_vacuum, steps);
    }
}

#[test]
fn a_fixed_long_case_per_page_size() {
    for (i, ps) in [512usize, 4096, 65536].into_iter().enumerate() {
        run_case(1000 + i as u64, ps, ["NONE", "FULL", "INCREMENTAL"][i], 150);
    }
}
