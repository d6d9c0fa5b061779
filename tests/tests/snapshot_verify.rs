//! `ferry snapshot` copies a SQLite database written by an application into PostgreSQL;
//! `ferry verify` proves equality, and names the keys of deliberate differences.

use ferry_e2e::{SampleApp, expect_exit, run_ferry};
use ferry_testkit::pg::TestDb;

/// `ferry <command> --source <source> --target <target>` (snapshot or verify), off the
/// async runtime.
async fn ferry_on(command: &str, source: &str, target: &str) -> std::process::Output {
    let args: Vec<String> = [command, "--source", source, "--target", target]
        .iter()
        .map(|a| a.to_string())
        .collect();
    tokio::task::spawn_blocking(move || {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        run_ferry(&a)
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_then_verify_equal_then_differences_named() {
    let pg = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    SampleApp::prepare(&db, 300);
    // Some history: updates, deletes, upserts, overflowing blobs.
    let out = run_ferry(&[
        "sample-app",
        "--db",
        db.to_str().unwrap(),
        "--seconds",
        "0.5",
        "--rate",
        "400",
        "--initial-users",
        "0",
    ]);
    expect_exit(&out, 0, "sample-app");
    let src = db.to_str().unwrap().to_string();
    let url = pg.url().to_string();

    let out = ferry_on("snapshot", &src, &url).await;
    let stdout = expect_exit(&out, 0, "ferry snapshot");
    assert!(stdout.contains("of 4 tables"), "{stdout}");

    let verify = || ferry_on("verify", &src, &url);
    let out = verify().await;
    let report = expect_exit(&out, 0, "verify after snapshot");
    assert!(report.contains("equal: 4 tables"), "{report}");

    // Deliberate differences: a changed value, a deleted row, an extra row.
    let c = pg.connect().await;
    c.batch_execute(
        "UPDATE public.users SET name = 'tampered' WHERE id = 7;
         DELETE FROM public.settings WHERE key = 'schema_version';
         INSERT INTO public.events (_sqlite_rowid, ts, kind, detail) VALUES (999999, 1.0, 'x', 'y');",
    )
    .await
    .unwrap();
    let out = verify().await;
    let report = expect_exit(&out, 1, "verify after tampering");
    assert!(report.contains("different: (id=7)"), "{report}");
    assert!(
        report.contains("missing in PostgreSQL: (key='schema_version')"),
        "{report}"
    );
    assert!(
        report.contains("only in PostgreSQL: (_sqlite_rowid=999999)"),
        "{report}"
    );
    assert!(report.contains("DIFFERENT: 3 of 4 tables"), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_never_prints_the_password() {
    let pg = TestDb::new().await;
    let c = pg.connect().await;
    let role = format!("ferry_pw_{}", std::process::id());
    c.batch_execute(&format!("CREATE ROLE {role} LOGIN PASSWORD 'right'"))
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    SampleApp::prepare(&db, 3);
    // The test server trusts every local connection, so a wrong password only shows against a
    // server that checks; what we check here is that no password is ever printed.
    let url = pg
        .url()
        .replace("postgres@", &format!("{role}:s3cret-value@"));
    let out = ferry_on("verify", db.to_str().unwrap(), &url).await;
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !all.contains("s3cret-value"),
        "a password was printed: {all}"
    );
}

/// The one-shot snapshot profiles values where it reads them (one pass over SQLite): the
/// types it picks are those the values need, row counts at chunk boundaries arrive whole,
/// and verify finds both sides equal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_profiles_values_in_one_read_and_picks_types_that_hold_them() {
    let pg = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("mixed.db");
    let conn = rusqlite::Connection::open(&db).unwrap();
    conn.execute_batch(
        "CREATE TABLE mixed (id INTEGER PRIMARY KEY, n INTEGER, at DATETIME, bad_at DATETIME,
                             flag BOOLEAN, r REAL);
         CREATE TABLE empty (id INTEGER PRIMARY KEY, v TEXT);
         CREATE TABLE exact (id INTEGER PRIMARY KEY, v TEXT);
         CREATE TABLE over (k TEXT PRIMARY KEY, v BLOB) WITHOUT ROWID;
         BEGIN;
         WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < 2000)
           INSERT INTO exact SELECT i, 'row ' || i FROM s;
         WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < 4001)
           INSERT INTO over SELECT printf('k%05d', i), randomblob(i % 50) FROM s;
         WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < 3000)
           INSERT INTO mixed SELECT i, i * 7, '2024-01-02 03:04:05', '2024-01-02', i % 2, i / 4.0
           FROM s;
         UPDATE mixed SET n = 'not a number' WHERE id = 2999;
         UPDATE mixed SET bad_at = 'someday' WHERE id = 2500;
         COMMIT;",
    )
    .unwrap();
    drop(conn);
    let src = db.to_str().unwrap().to_string();
    let url = pg.url().to_string();
    let out = ferry_on("snapshot", &src, &url).await;
    let stdout = expect_exit(&out, 0, "ferry snapshot");
    assert!(stdout.contains("copied 9001 rows of 4 tables"), "{stdout}");

    let client = pg.connect().await;
    let types: std::collections::BTreeMap<String, String> =
        ferry_testkit::pg::table_columns(&client, "public.mixed")
            .await
            .into_iter()
            .collect();
    // A text in the INTEGER column widens it; the DATETIME column whose every value parses
    // is a timestamp; the one with 'someday' stays text; 0/1 is boolean.
    assert_eq!(types["n"], "text", "{types:?}");
    assert_eq!(types["at"], "timestamp without time zone", "{types:?}");
    assert_eq!(types["bad_at"], "text", "{types:?}");
    assert_eq!(types["flag"], "boolean", "{types:?}");
    assert_eq!(types["r"], "double precision", "{types:?}");
    assert!(
        stdout.contains("table \"mixed\", column \"n\"") && stdout.contains("widened to text"),
        "the widening is reported: {stdout}"
    );
    // `mixed` was first created with its declared types without reading its values; the
    // COPY met the first value they cannot hold (row 2500's 'someday' comes before row
    // 2999's text), and the load started again, profiled.
    assert!(
        stdout.contains("table \"mixed\": column \"bad_at\" holds 'someday'")
            && stdout.contains("every value was profiled and the load started again"),
        "the second, profiled load is reported: {stdout}"
    );
    for (table, n) in [
        ("mixed", 3000i64),
        ("empty", 0),
        ("exact", 2000),
        ("over", 4001),
    ] {
        let got: i64 = client
            .query_one(&format!("SELECT count(*) FROM public.{table}"), &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(got, n, "{table}");
    }
    let out = ferry_on("verify", &src, &url).await;
    let report = expect_exit(&out, 0, "verify after snapshot");
    assert!(report.contains("equal: 4 tables"), "{report}");
}

/// The target's DDL carries what SQLite's schema declares: NOT NULL, constant defaults,
/// UNIQUE columns, indexes, foreign keys with their actions, identity keys. A foreign key
/// the data breaks (SQLite does not enforce them unless asked) is skipped with a notice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_creates_the_constraints_sqlite_declares() {
    let pg = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    let conn = rusqlite::Connection::open(&db).unwrap();
    conn.execute_batch(
        "PRAGMA foreign_keys = OFF; -- as SQLite's own default is
         CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT UNIQUE,
                             name TEXT NOT NULL DEFAULT 'anon');
         CREATE TABLE events (id INTEGER PRIMARY KEY,
                              user_id INTEGER REFERENCES users(id) ON DELETE CASCADE, kind TEXT);
         CREATE INDEX events_kind ON events (kind);
         CREATE TABLE orphans (id INTEGER PRIMARY KEY, user_id INTEGER REFERENCES users(id));
         INSERT INTO users VALUES (1, 'a@x', 'a'), (2, NULL, 'b');
         INSERT INTO events VALUES (1, 1, 'login'), (2, 2, 'view');
         INSERT INTO orphans VALUES (1, 42);",
    )
    .unwrap();
    drop(conn);
    let out = ferry_on("snapshot", db.to_str().unwrap(), pg.url()).await;
    let stdout = expect_exit(&out, 0, "ferry snapshot");
    let all = format!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        all.contains("orphans") && all.contains("FOREIGN KEY") && all.contains("skipped"),
        "the broken foreign key is reported: {all}"
    );
    // Every value fits its declared type: one load, its tables typed without a profiling read.
    assert!(
        !all.contains("load started again"),
        "no second load was needed: {all}"
    );
    let client = pg.connect().await;
    let constraints: Vec<String> = client
        .query(
            "SELECT conrelid::regclass::text || ' ' || pg_get_constraintdef(oid) FROM pg_constraint
             WHERE connamespace = 'public'::regnamespace ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    for want in [
        "events FOREIGN KEY (user_id) REFERENCES users(id) ON DELETE CASCADE DEFERRABLE INITIALLY DEFERRED",
        "users UNIQUE (email) DEFERRABLE INITIALLY DEFERRED",
        // Primary keys are built after the rows (COPY into a table without an index),
        // then made the key in the load's last transaction.
        "users PRIMARY KEY (id)",
        "events PRIMARY KEY (id)",
        "orphans PRIMARY KEY (id)",
    ] {
        assert!(
            constraints.iter().any(|c| c == want),
            "{want:?} in {constraints:#?}"
        );
    }
    assert!(
        !constraints
            .iter()
            .any(|c| c.starts_with("orphans FOREIGN KEY")),
        "{constraints:#?}"
    );
    let name: (bool, Option<String>) = client
        .query_one(
            "SELECT is_nullable = 'NO', column_default FROM information_schema.columns
             WHERE table_schema = 'public' AND table_name = 'users' AND column_name = 'name'",
            &[],
        )
        .await
        .map(|r| (r.get(0), r.get(1)))
        .unwrap();
    assert_eq!(name, (true, Some("'anon'::text".to_string())));
    let index: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_indexes WHERE schemaname = 'public' AND tablename = 'events'
             AND indexdef LIKE '%(kind)'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(index, 1);
    let identity: String = client
        .query_one(
            "SELECT is_identity FROM information_schema.columns
             WHERE table_schema = 'public' AND table_name = 'users' AND column_name = 'id'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(identity, "YES");
}

/// `--log-format json`: every line `ferry snapshot` and `ferry verify` write to stderr (run as
/// a service would, stderr not a terminal) is a JSON object with a level and a message, and
/// verify's progress comes as log lines with its row count instead of a bar.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_are_json_lines_with_verify_progress() {
    let pg = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    SampleApp::prepare(&db, 200);
    let rows: u64 = {
        let c = rusqlite::Connection::open(&db).unwrap();
        ["users", "settings", "events", "jobs"]
            .iter()
            .map(|t| {
                c.query_row(&format!("SELECT count(*) FROM {t}"), [], |r| {
                    r.get::<_, i64>(0)
                })
                .unwrap() as u64
            })
            .sum()
    };
    let (src, url) = (db.to_str().unwrap().to_string(), pg.url().to_string());
    for command in ["snapshot", "verify"] {
        let args: Vec<String> = [
            command,
            "--log-format",
            "json",
            "--source",
            &src,
            "--target",
            &url,
        ]
        .iter()
        .map(|a| a.to_string())
        .collect();
        let out = tokio::task::spawn_blocking(move || {
            let a: Vec<&str> = args.iter().map(String::as_str).collect();
            run_ferry(&a)
        })
        .await
        .unwrap();
        expect_exit(&out, 0, command);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let lines: Vec<serde_json::Value> = stderr
            .lines()
            .map(|l| {
                serde_json::from_str(l).unwrap_or_else(|e| {
                    panic!("ferry {command}: stderr line {l:?} is not JSON: {e}")
                })
            })
            .collect();
        assert!(!lines.is_empty(), "ferry {command} logged nothing");
        for l in &lines {
            assert!(
                l["level"].is_string() && l["fields"]["message"].is_string(),
                "ferry {command}: {l}"
            );
        }
        if command == "verify" {
            let done = lines
                .iter()
                .find(|l| l["fields"]["message"] == "verify: compared every table")
                .unwrap_or_else(|| panic!("no progress line from verify: {stderr}"));
            assert_eq!(done["fields"]["tables"], 4, "{done}");
            assert_eq!(done["fields"]["rows"].as_u64(), Some(rows), "{done}");
        }
    }
}
