//! `ferry run --archive-dir` while an application writes: scheduled and on-demand base
//! backups, sealed segments archived (also at shutdown), and `ferry restore` rebuilding the
//! database exactly as the application left it.

use ferry_e2e::live::{FerryRun, start_app};
use ferry_e2e::{SampleApp, expect_exit, run_ferry, sqlite_tables};
use ferry_testkit::pg::TestDb;
use std::ffi::OsStr;
use std::time::Duration;

#[test]
fn run_archives_and_restore_rebuilds_the_latest_state() {
    let pg = TestDb::new_blocking();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    let state = dir.path().join("state");
    let archive = dir.path().join("archive");
    SampleApp::prepare(&db, 200);
    let app = start_app(&db, 100, 11, &[]);
    let run = FerryRun::start(
        &state,
        [
            OsStr::new("--source"),
            db.as_os_str(),
            OsStr::new("--target"),
            OsStr::new(pg.url()),
            OsStr::new("--archive-dir"),
            archive.as_os_str(),
            OsStr::new("--base-interval"),
            OsStr::new("1h"),
        ],
    );
    run.wait_streaming(Duration::from_secs(120));

    // A base on demand, through the control socket, while the application writes.
    let out = run_ferry(&["backup", "now", "--state-dir", state.to_str().unwrap()]);
    let text = expect_exit(&out, 0, "ferry backup now");
    let taken: serde_json::Value = serde_json::from_str(text.trim())
        .unwrap_or_else(|e| panic!("backup now printed {text:?}: {e}"));
    assert!(
        taken["app"]["lsn"].as_u64().is_some_and(|l| l > 0),
        "the base names its LSN: {taken}"
    );

    std::thread::sleep(Duration::from_millis(500));
    let summary = app.stop();
    assert!(summary["commits"].as_u64().unwrap() > 0);
    run.wait_caught_up(Duration::from_secs(60));
    assert!(run.stop().success(), "ferry run stops cleanly");

    let out = run_ferry(&[
        "backup",
        "list",
        "--archive-dir",
        archive.to_str().unwrap(),
        "--json",
    ]);
    let listing = expect_exit(&out, 0, "ferry backup list");
    assert!(listing.contains("\"app\""), "{listing}");

    // The latest point is what the application left: the shutdown sealed and archived it.
    // A bare file name: relative to the current directory.
    let restored = dir.path().join("restored.db");
    let out = ferry_e2e::ferry()
        .current_dir(dir.path())
        .args(["restore", "--archive-dir"])
        .arg(&archive)
        .args(["--latest", "--output", "restored.db"])
        .output()
        .unwrap();
    expect_exit(&out, 0, "ferry restore --latest");
    assert_eq!(
        sqlite_tables(&restored),
        sqlite_tables(&db),
        "the restored database equals the application's"
    );
}
