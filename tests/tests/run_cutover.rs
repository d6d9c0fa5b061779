//! The operator's workflow end to end, with real processes: a sample application writing
//! (and checkpointing) its SQLite database, `ferry run` replicating it into a real
//! PostgreSQL, `ferry verify` while it writes, `ferry cutover` under load, and what happens
//! when SQLite is written after the cutover.

use ferry_e2e::live::{FerryRun, start_app, status_of};
use ferry_e2e::{SampleApp, expect_exit, run_ferry, wait_until};
use ferry_testkit::pg::TestDb;
use std::time::Duration;

#[test]
fn run_verify_cutover_under_load_then_writes_after_cutover_are_reported() {
    let pg = TestDb::new_blocking();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    let state = dir.path().join("state");
    SampleApp::prepare(&db, 300);
    // TRUNCATE: the application's own blocking checkpoints must complete while ferry
    // captures (ferry lets go of its read slot for them) and must not hold up the cutover.
    // The switch command moves the application to PostgreSQL (SIGUSR1), where it keeps
    // writing: its stall is measured by the application itself, from the first write the
    // fence held up to its first commit on PostgreSQL.
    let app = start_app(
        &db,
        150,
        7,
        &[
            "--checkpoint-every",
            "200",
            "--checkpoint-mode",
            "truncate",
            "--switch-to",
            pg.url(),
        ],
    );
    let run = FerryRun::sqlite(&db, pg.url(), &state);
    run.wait_streaming(Duration::from_secs(120));

    // Verify while the application writes: equal.
    let db_s = db.to_str().unwrap();
    let state_s = state.to_str().unwrap();
    let out = run_ferry(&[
        "verify",
        "--source",
        db_s,
        "--target",
        pg.url(),
        "--state-dir",
        state_s,
    ]);
    let report = expect_exit(&out, 0, "live verify");
    assert!(report.contains("equal: 4 tables"), "{report}");

    // A deliberate difference in PostgreSQL is found and named by its key.
    let mut client = pg.connect_blocking();
    client.execute(
        "INSERT INTO users (id, email, name) VALUES (987654321, 'ghost@example.com', 'ghost')",
    );
    let out = run_ferry(&[
        "verify",
        "--source",
        db_s,
        "--target",
        pg.url(),
        "--state-dir",
        state_s,
    ]);
    let report = expect_exit(&out, 1, "verify with a row only in PostgreSQL");
    assert!(
        report.contains("987654321"),
        "the extra key is named: {report}"
    );
    client.execute("DELETE FROM users WHERE id = 987654321");

    // Cutover under load: the switch command moves the application to PostgreSQL.
    let cutover_began = ferry_core::now_micros();
    let out = run_ferry(&[
        "cutover",
        "--state-dir",
        state_s,
        "--then",
        &format!("kill -USR1 {}", app.pid()),
    ]);
    let text = expect_exit(&out, 0, "cutover");
    let window_ms: f64 = text
        .split("write-unavailability window ")
        .nth(1)
        .and_then(|t| t.split(" ms").next())
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no window in the cutover output: {text}"));
    let cutover_ended = ferry_core::now_micros();
    // The application writes on PostgreSQL for a while, then stops.
    std::thread::sleep(Duration::from_millis(800));
    let summary = app.stop();
    let switched = summary["switched_unix_micros"]
        .as_i64()
        .unwrap_or_else(|| panic!("the application moved to PostgreSQL: {summary}"));
    // The app acts on the signal at its next transaction, which can come just after the
    // cutover command returned.
    assert!(
        (cutover_began..=cutover_ended + 1_000_000).contains(&switched),
        "it moved at the cutover's switch: {summary}"
    );
    let pg_commits = summary["pg_commits"].as_i64().unwrap();
    assert!(pg_commits > 0, "it kept writing on PostgreSQL: {summary}");
    // The stalls that overlap the cutover command's run are the fence's; on a loaded machine
    // the application also stalls on its own (its checkpoints' fsyncs, CPU starvation), at
    // other moments, and those say nothing about the cutover.
    let stall = summary["stalls"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|st| {
            let began = st["began_unix_micros"].as_i64().unwrap();
            let ms = st["ms"].as_f64().unwrap();
            began <= cutover_ended && began + (ms * 1000.0) as i64 >= cutover_began
        })
        .map(|st| st["ms"].as_f64().unwrap())
        .fold(0.0, f64::max);
    assert!(
        stall <= window_ms + 100.0,
        "the application stalled {stall} ms during the cutover, more than the reported window {window_ms} ms + 100 ms: {summary}"
    );
    assert!(
        stall > 0.0 || window_ms < 50.0,
        "the fence held {window_ms} ms but the application never waited on it: {summary}"
    );
    assert!(
        summary["checkpoints"].as_u64().unwrap() >= 1,
        "the application checkpointed itself: {summary}"
    );

    // PostgreSQL holds every row the application committed, on SQLite and then on
    // PostgreSQL, whose new jobs got ids past SQLite's (the sequences were moved).
    let last_job = summary["last_job_id"].as_i64().unwrap();
    assert!(last_job > 0);
    assert_eq!(
        client.query_i64(&format!("SELECT count(*) FROM jobs WHERE id = {last_job}")),
        1,
        "the last job the application committed to SQLite is in PostgreSQL"
    );
    let pg_jobs: Vec<i64> = summary["pg_job_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect();
    assert_eq!(pg_jobs.len() as i64, pg_commits);
    assert!(
        pg_jobs.iter().all(|&id| id > last_job),
        "jobs inserted on PostgreSQL got fresh ids past {last_job}: {pg_jobs:?}"
    );
    assert_eq!(
        client.query_i64("SELECT max(id) FROM jobs"),
        *pg_jobs.iter().max().unwrap()
    );
    assert_eq!(
        client.query_i64("SELECT count(*) FROM ferry.progress WHERE cutover_at IS NOT NULL"),
        1,
        "the cutover is recorded in ferry.progress"
    );
    let sqlite =
        rusqlite::Connection::open_with_flags(&db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    for t in ["users", "jobs", "events"] {
        let n: i64 = sqlite
            .query_row(&format!("SELECT count(*) FROM {t}"), [], |r| r.get(0))
            .unwrap();
        let added_on_postgres = if t == "jobs" { pg_commits } else { 0 };
        assert_eq!(
            client.query_i64(&format!("SELECT count(*) FROM {t}")),
            n + added_on_postgres,
            "row count of {t}"
        );
    }
    drop(sqlite);
    // Sequences moved: the next insert gets a fresh id.
    let new_id = client
        .query_i64("INSERT INTO jobs (user_id, state) VALUES (1, 'new-on-postgres') RETURNING id");
    assert!(new_id > last_job, "new id {new_id} after {last_job}");
    let st = run.source_status();
    assert_eq!(st["state"], "cut_over", "{st}");

    // SQLite is fenced while ferry runs: a write times out.
    {
        let c = rusqlite::Connection::open(&db).unwrap();
        c.busy_timeout(Duration::from_millis(300)).unwrap();
        let e = c
            .execute("INSERT INTO settings (key, value) VALUES ('late', 'x')", [])
            .unwrap_err();
        assert!(e.to_string().contains("locked"), "{e}");
    }

    // Stopped, then written behind ferry's back, then started again: the write is captured,
    // reported, and never shipped over PostgreSQL.
    assert!(run.stop().success());
    {
        let c = rusqlite::Connection::open(&db).unwrap();
        c.execute(
            "INSERT INTO settings (key, value) VALUES ('written-after-cutover', 'x')",
            [],
        )
        .unwrap();
    }
    let run = FerryRun::sqlite(&db, pg.url(), &state);
    wait_until(
        "the write after cutover to be reported",
        Duration::from_secs(60),
        || run.source_status()["writes_after_cutover"].as_u64() == Some(1),
    );
    let (code, report) = status_of(&state);
    assert_eq!(code, 2, "status exits non-zero: {report}");
    let st = &report["sources"][0];
    assert_eq!(st["state"], "cut_over");
    assert!(
        st["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("after the cutover")),
        "{st}"
    );
    let (_, metrics) = run.scrape();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("ferry_writes_after_cutover_total{") && l.ends_with(" 1")),
        "the counter shows it:\n{metrics}"
    );
    assert_eq!(
        client.query_i64("SELECT count(*) FROM settings WHERE key = 'written-after-cutover'"),
        0,
        "a write after the cutover is never shipped over PostgreSQL"
    );
    assert!(run.stop().success());
    // With no ferry running, status still tells the cutover and the write after it.
    let (code, report) = status_of(&state);
    assert_eq!(code, 2, "{report}");
    let st = &report["sources"][0];
    assert_eq!(st["state"], "cut_over", "{st}");
    assert!(st["cutover_at"].is_string(), "{st}");
    assert!(st["writes_after_cutover"].as_u64().unwrap() >= 1, "{st}");
}

/// A failing switch command, or a difference between the two sides, aborts the cutover: the
/// fence is released (or never taken), the application keeps writing to SQLite, and
/// replication carries on.
#[test]
fn failing_switch_or_a_difference_aborts_and_releases_the_fence() {
    let pg = TestDb::new_blocking();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    let state = dir.path().join("state");
    SampleApp::prepare(&db, 100);
    let app = start_app(&db, 100, 3, &[]);
    let run = FerryRun::sqlite(&db, pg.url(), &state);
    run.wait_streaming(Duration::from_secs(120));
    // A cutover that must abort: exit 2, the fence released; its stderr.
    let aborted_cutover = |then: &str, what: &str| {
        let out = run_ferry(&[
            "cutover",
            "--state-dir",
            state.to_str().unwrap(),
            "--then",
            then,
        ]);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(2), "{what}: {stderr}");
        assert!(
            stderr.contains("released"),
            "says the fence was released: {stderr}"
        );
        stderr
    };
    // The application writes again (its commits keep growing) and ferry keeps replicating.
    let replication_goes_on = |what: &str| {
        let before = run.source_status()["captured_lsn"].as_u64().unwrap();
        wait_until(what, Duration::from_secs(30), || {
            run.source_status()["shipped_lsn"].as_u64().unwrap() > before + 20
        });
    };

    let stderr = aborted_cutover("echo switching failed >&2; exit 3", "cutover fails");
    assert!(stderr.contains("switching failed"), "{stderr}");
    replication_goes_on("new commits after the aborted cutover");
    let st = run.source_status();
    assert_eq!(st["state"], "streaming", "{st}");
    assert!(
        !state
            .join("sources")
            .join("app")
            .join("cutover.json")
            .exists()
    );

    // The cutover client dies while its switch command runs: the run process aborts the
    // cutover and releases the fence (the application writes again).
    let mut dying = ferry_e2e::ferry()
        .args([
            "cutover",
            "--state-dir",
            state.to_str().unwrap(),
            "--then",
            "sleep 60",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::BufRead;
        let out = std::io::BufReader::new(dying.stdout.take().unwrap());
        let mut seen = String::new();
        for line in out.lines() {
            let line = line.unwrap();
            seen.push_str(&line);
            seen.push('\n');
            if line.contains("running \"sleep 60\"") {
                break;
            }
        }
        assert!(
            seen.contains("sleep 60"),
            "the client reached the switch: {seen}"
        );
    }
    dying.kill().unwrap();
    dying.wait().unwrap();
    replication_goes_on("commits after the cutover client died");
    let st = run.source_status();
    assert_eq!(st["state"], "streaming", "{st}");
    assert!(
        !state
            .join("sources")
            .join("app")
            .join("cutover.json")
            .exists()
    );

    // A difference between the two sides aborts the cutover too, naming the table.
    let mut client = pg.connect_blocking();
    client.execute("INSERT INTO settings (key, value) VALUES ('only-in-postgres', 'x')");
    let stderr = aborted_cutover("true", "cutover refuses");
    assert!(stderr.contains("settings"), "names the table: {stderr}");
    replication_goes_on("commits after the refused cutover");
    client.execute("DELETE FROM settings WHERE key = 'only-in-postgres'");
    let summary = app.stop();
    assert!(summary["commits"].as_u64().unwrap() > 0);
    run.wait_caught_up(Duration::from_secs(60));
    let out = run_ferry(&[
        "verify",
        "--source",
        db.to_str().unwrap(),
        "--target",
        pg.url(),
    ]);
    expect_exit(&out, 0, "offline verify after the aborted cutover");
    assert!(run.stop().success());
}
