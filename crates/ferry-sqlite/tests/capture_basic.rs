mod common;
use common::*;

#[test]
fn snapshot_then_stream_inserts_updates_deletes() {
    let env = Env::new();
    let app = env.app(4096);
    app.execute_batch(
        "CREATE TABLE users(id INTEGER PRIMARY KEY, name TEXT NOT NULL, score REAL, bio BLOB);
         CREATE TABLE tags(name TEXT PRIMARY KEY, n INT) WITHOUT ROWID;
         CREATE TABLE nokey(a, b);",
    )
    .unwrap();
    for i in 0..200 {
        app.execute(
            "INSERT INTO users(name, score, bio) VALUES (?1, ?2, ?3)",
            rusqlite::params![format!("u{i}"), i as f64, vec![7u8; (i * 37) % 5000]],
        )
        .unwrap();
    }
    let log = env.log();
    let mut cap = env.capture(log.clone());
    let step = cap.catch_up().unwrap();
    assert!(step.snapshot_taken);
    assert_eq!(step.snapshot_rows, 200);
    assert_fold_matches(&env.log_path, &env.db);

    app.execute_batch("BEGIN; UPDATE users SET score = 3 WHERE id % 3 = 0; DELETE FROM users WHERE id % 7 = 0; INSERT INTO tags VALUES ('a', 1), ('b', 2); INSERT INTO nokey VALUES (1, 'x'); COMMIT;").unwrap();
    app.execute(
        "INSERT INTO users(name, bio) VALUES ('big', ?1)",
        [vec![1u8; 20000]],
    )
    .unwrap();
    app.execute_batch(
        "UPDATE tags SET n = n + 10; DELETE FROM nokey; INSERT INTO nokey VALUES (2, 'y');",
    )
    .unwrap();
    let step = cap.catch_up().unwrap();
    assert_eq!(step.transactions, 5);
    assert_fold_matches(&env.log_path, &env.db);
    assert_eq!(cap.stats().resyncs, 0);
}
