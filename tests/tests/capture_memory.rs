//! The initial snapshot streams: `ferry capture --once` of a database far larger than its
//! memory bound keeps its peak RSS under that bound (the issue's 128 MiB, "regardless of
//! database size").

use ferry_e2e::{expect_exit, run_ferry};

/// Peak resident set of the largest child this (test) process has waited for, in bytes.
/// nextest runs every test in its own process, so that is the `ferry` run below.
fn children_peak_rss() -> u64 {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes a whole `rusage` into the pointer it is given.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, usage.as_mut_ptr()) };
    assert_eq!(rc, 0, "getrusage: {}", std::io::Error::last_os_error());
    // SAFETY: getrusage succeeded, so the struct is initialised.
    let usage = unsafe { usage.assume_init() };
    u64::try_from(usage.ru_maxrss).unwrap_or(0) * 1024
}

#[test]
fn the_initial_snapshot_of_a_large_table_stays_in_bounded_memory() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("big.db");
    let conn = rusqlite::Connection::open(&db).unwrap();
    // ~300 MB in one table (rows of 3000 bytes, larger than a quarter page: one overflow
    // page each), plus a table whose rows fit on their leaves.
    conn.execute_batch(
        "PRAGMA journal_mode = WAL;
         CREATE TABLE big (id INTEGER PRIMARY KEY, body BLOB);
         CREATE TABLE small (id INTEGER PRIMARY KEY, v TEXT);
         WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < 100000)
           INSERT INTO big SELECT i, randomblob(3000) FROM s;
         WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < 100000)
           INSERT INTO small SELECT i, 'row ' || i FROM s;
         PRAGMA wal_checkpoint(TRUNCATE);",
    )
    .unwrap();
    drop(conn);
    let size = std::fs::metadata(&db).unwrap().len();
    assert!(size > 300_000_000, "the database is {size} bytes");
    let out = run_ferry(&[
        "capture",
        "--once",
        "--source",
        db.to_str().unwrap(),
        "--state-dir",
        dir.path().join("state").to_str().unwrap(),
    ]);
    let stdout = expect_exit(&out, 0, "ferry capture --once");
    assert!(stdout.contains("200000 snapshot rows"), "{stdout}");
    let peak = children_peak_rss();
    assert!(
        peak < 128 << 20,
        "ferry capture of a {size}-byte database peaked at {} MiB",
        peak >> 20
    );
}
