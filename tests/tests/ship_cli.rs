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
