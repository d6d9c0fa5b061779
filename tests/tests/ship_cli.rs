//! `ferry ship --once` replays a log into PostgreSQL, exactly once.

use ferry_e2e::sample_log::write_log;
use ferry_e2e::{expect_exit, run_ferry};
use ferry_testkit::pg::TestDb;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ship_once_applies_the_folded_log_and_is_idempotent() {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    write_log(dir.path());
    let state = dir.path().to_str().unwrap().to_string();
    let url = db.url().to_string();
    let ship = move || {
        let (state, url) = (state.clone(), url.clone());
        move || run_ferry(&["ship", "--once", "--state-dir", &state, "--target", &url])
    };
    let out = tokio::task::spawn_blocking(ship()).await.unwrap();
    let stdout = expect_exit(&out, 0, "ferry ship --once");
    assert!(stdout.contains("through LSN 5"), "{stdout}");
    let client = db.connect().await;
    let rows = client
        .query("SELECT id, name, avatar FROM public.users ORDER BY id", &[])
        .await
        .unwrap();
    assert_eq!(rows.len(), 1, "the inserted-then-deleted row must be gone");
    let (id, name, avatar): (i64, String, Option<Vec<u8>>) =
        (rows[0].get(0), rows[0].get(1), rows[0].get(2));
    assert_eq!((id, name.as_str(), avatar), (1, "Ann", None));
    let applied: i64 = client
        .query_one(
            "SELECT lsn FROM ferry.progress WHERE source_id = 'app'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(applied, 5);
    // Running again applies nothing twice.
    let out = tokio::task::spawn_blocking(ship()).await.unwrap();
    expect_exit(&out, 0, "second ferry ship --once");
    let n: i64 = client
        .query_one("SELECT count(*) FROM public.users", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1);
}

/// `ALTER TABLE … RENAME COLUMN` in SQLite, captured from the real WAL and shipped: the
/// PostgreSQL column is renamed in place (it keeps its position and its values), and later
/// writes to it arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renamed_sqlite_column_is_renamed_in_postgresql_in_place() {
    let pg = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    let state = dir.path().join("state");
    let app = rusqlite::Connection::open(&db).unwrap();
    app.execute_batch(
        "PRAGMA journal_mode=WAL;
         CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT, qty INTEGER);
         INSERT INTO items VALUES (1, 'a', 10), (2, 'b', 20);",
    )
    .unwrap();
    let (db_s, state_s, url) = (
        db.to_str().unwrap().to_string(),
        state.to_str().unwrap().to_string(),
        pg.url().to_string(),
    );
    let round = || {
        let (db_s, state_s, url) = (db_s.clone(), state_s.clone(), url.clone());
        tokio::task::spawn_blocking(move || {
            let out = run_ferry(&[
                "capture",
                "--source",
                &db_s,
                "--state-dir",
                &state_s,
                "--once",
            ]);
            expect_exit(&out, 0, "ferry capture --once");
            let out = run_ferry(&["ship", "--once", "--state-dir", &state_s, "--target", &url]);
            expect_exit(&out, 0, "ferry ship --once");
        })
    };
    round().await.unwrap();
    app.execute_batch(
        "ALTER TABLE items RENAME COLUMN name TO title;
         UPDATE items SET title = 'b2' WHERE id = 2;
         INSERT INTO items VALUES (3, 'c', 30);",
    )
    .unwrap();
    round().await.unwrap();
    let client = pg.connect().await;
    let cols: Vec<String> = ferry_testkit::pg::table_columns(&client, "public.items")
        .await
        .into_iter()
        .map(|(name, _)| name)
        .collect();
    assert_eq!(cols, ["id", "title", "qty"], "renamed in place");
    let rows: Vec<(i64, String, i64)> = client
        .query("SELECT id, title, qty FROM public.items ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(
        rows,
        vec![
            (1, "a".to_string(), 10),
            (2, "b2".to_string(), 20),
            (3, "c".to_string(), 30)
        ]
    );
}
