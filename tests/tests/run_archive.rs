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

    // Archiving turned off: the log's `archive` consumer no longer holds its segments.
    let consumer = find_file(&state, "consumers", "archive").expect("the archive consumer");
    let run = FerryRun::start(
        &state,
        [
            OsStr::new("--source"),
            db.as_os_str(),
            OsStr::new("--target"),
            OsStr::new(pg.url()),
        ],
    );
    ferry_e2e::wait_until(
        "the archive consumer to go",
        Duration::from_secs(60),
        || !consumer.exists(),
    );
    assert!(run.stop().success());
}

/// `<dir>/…/<parent>/<name>`, searched recursively.
fn find_file(dir: &std::path::Path, parent: &str, name: &str) -> Option<std::path::PathBuf> {
    for e in std::fs::read_dir(dir).ok()?.flatten() {
        let p = e.path();
        if p.is_dir() {
            if let Some(f) = find_file(&p, parent, name) {
                return Some(f);
            }
        } else if p.file_name().is_some_and(|n| n == name)
            && p.parent()
                .and_then(|d| d.file_name())
                .is_some_and(|d| d == parent)
        {
            return Some(p);
        }
    }
    None
}

fn manifest(archive: &std::path::Path) -> Option<serde_json::Value> {
    let text = std::fs::read_to_string(archive.join("app/manifest.json")).ok()?;
    serde_json::from_str(&text).ok()
}

/// An archive that cannot be reached stops neither capture nor replication (the error is in
/// `/status`); once it is back, the archiver catches up by itself. A short `base_interval`
/// gives several scheduled bases, and `seal_after` brings a quiet source's last changes into
/// the archive without a shutdown.
#[test]
fn an_unreachable_archive_leaves_replication_running_and_catches_up_when_back() {
    let pg = TestDb::new_blocking();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    let state = dir.path().join("state");
    let archive = dir.path().join("archive");
    // A file where the archive directory should be: every attempt to open it fails.
    std::fs::write(&archive, "not a directory").unwrap();
    let config = dir.path().join("ferry.toml");
    std::fs::write(
        &config,
        format!(
            "[target]\nurl = \"{}\"\n\n[[source]]\nname = \"app\"\npath = \"{}\"\n\n[archive]\ndir = \"{}\"\nbase_interval = \"1s\"\nseal_after = \"1s\"\nkeep_bases = 100\n",
            pg.url(),
            db.display(),
            archive.display()
        ),
    )
    .unwrap();
    SampleApp::prepare(&db, 100);
    let app = start_app(&db, 100, 5, &[]);
    let run = FerryRun::start(&state, [OsStr::new("--config"), config.as_os_str()]);
    run.wait_streaming(Duration::from_secs(120));
    ferry_e2e::wait_until(
        "the archive error in /status",
        Duration::from_secs(60),
        || run.source_status()["archive_error"].is_string(),
    );
    let st = run.source_status();
    assert_eq!(st["state"], "streaming", "{st}");
    assert!(
        st["archive_error"].as_str().unwrap().contains("archive"),
        "{st}"
    );
    let before = st["shipped_lsn"].as_u64().unwrap();
    ferry_e2e::wait_until("replication to go on", Duration::from_secs(60), || {
        run.source_status()["shipped_lsn"].as_u64().unwrap_or(0) > before
    });

    // The archive comes back: bases every second, segments as they are sealed.
    std::fs::remove_file(&archive).unwrap();
    ferry_e2e::wait_until("three scheduled bases", Duration::from_secs(120), || {
        manifest(&archive).is_some_and(|m| m["bases"].as_array().is_some_and(|b| b.len() >= 3))
    });
    let summary = app.stop();
    assert!(summary["commits"].as_u64().unwrap() > 0);
    run.wait_caught_up(Duration::from_secs(60));
    let captured = run.source_status()["captured_lsn"].as_u64().unwrap();
    // Quiet now: the open segment is sealed after a second and archived, no shutdown needed.
    ferry_e2e::wait_until(
        "the last changes in the archive",
        Duration::from_secs(60),
        || {
            manifest(&archive).is_some_and(|m| {
                m["segments"]
                    .as_array()
                    .and_then(|s| s.last())
                    .and_then(|s| s["last_lsn"].as_u64())
                    .is_some_and(|l| l >= captured)
            })
        },
    );
    assert!(run.source_status()["archive_error"].is_null());
    let restored = dir.path().join("restored.db");
    let out = run_ferry(&[
        "restore",
        "--archive-dir",
        archive.to_str().unwrap(),
        "--latest",
        "--output",
        restored.to_str().unwrap(),
    ]);
    expect_exit(&out, 0, "ferry restore --latest while ferry runs");
    assert_eq!(sqlite_tables(&restored), sqlite_tables(&db));
    assert!(run.stop().success());
}
