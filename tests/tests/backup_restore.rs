//! `ferry restore` and `ferry backup list` end to end, on an archive the archive library
//! wrote from a real capture of a real SQLite application: exit codes, messages, restored
//! contents compared with what SQLite held at each point, and the PostgreSQL pairing.

use ferry_archive::{ArchiveOptions, Archiver, BaseMeta};
use ferry_core::{Lsn, Record};
use ferry_e2e::{expect_exit, run_ferry, sqlite_tables};
use ferry_log::{Log, LogOptions, SyncPolicy};
use ferry_sqlite::{CaptureOptions, LogSink, SqliteCapture};
use rusqlite::Connection;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

type Tables = BTreeMap<String, Vec<Vec<serde_json::Value>>>;

struct Archived {
    dir: tempfile::TempDir,
    archive: PathBuf,
    /// LSN -> (capture time, the application's tables right after that record).
    points: BTreeMap<Lsn, (i64, Tables)>,
    bases: Vec<Lsn>,
    log_id: String,
}

/// An application writes 60 transactions (with a trigger and a checkpoint now and then)
/// while capture logs them into small segments; bases at steps 10 and 35.
fn archived_application() -> Archived {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    let log_dir = dir.path().join("log");
    let archive = dir.path().join("archive");
    let app = Connection::open(&db).unwrap();
    app.execute_batch(
        "PRAGMA journal_mode=WAL;
         CREATE TABLE users(id INTEGER PRIMARY KEY, name TEXT NOT NULL, score REAL);
         CREATE TABLE audit(id INTEGER PRIMARY KEY, user_id INT);
         CREATE TRIGGER users_ai AFTER INSERT ON users BEGIN INSERT INTO audit(user_id) VALUES (new.id); END;",
    )
    .unwrap();
    let log = Arc::new(
        Log::open(
            &log_dir,
            "sqlite:app.db",
            LogOptions {
                segment_bytes: 2048,
                segment_max_age: None,
                sync: SyncPolicy::EveryAppend,
            },
        )
        .unwrap(),
    );
    let mut cap = SqliteCapture::open(
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
    cap.catch_up().unwrap();
    let mut archiver = Archiver::open(ArchiveOptions::new(&archive), "app", &log_dir).unwrap();
    let mut points = BTreeMap::new();
    let mut bases = Vec::new();
    for i in 0..60i64 {
        match i % 6 {
            0..=2 => app
                .execute(
                    "INSERT INTO users(name, score) VALUES (?1, ?2)",
                    rusqlite::params![format!("user{i}"), i as f64 / 3.0],
                )
                .map(drop)
                .unwrap(),
            3 => app
                .execute("UPDATE users SET score = score + 1 WHERE id % 2 = 0", [])
                .map(drop)
                .unwrap(),
            4 => app
                .execute(
                    "DELETE FROM users WHERE id = (SELECT min(id) FROM users)",
                    [],
                )
                .map(drop)
                .unwrap(),
            _ => app
                .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
                .unwrap(),
        }
        cap.catch_up().unwrap();
        let lsn = log.durable_lsn();
        let mut r = log.reader(lsn).unwrap();
        let (_, payload) = r.next().unwrap().unwrap();
        let at = Record::decode(&payload).unwrap().captured_at().unwrap();
        points.insert(lsn, (at, sqlite_tables(&db)));
        if i == 10 || i == 35 {
            let tmp = dir.path().join("base.db");
            let copy = cap.write_base(&tmp).unwrap();
            archiver
                .add_base(
                    &tmp,
                    BaseMeta {
                        lsn: copy.lsn,
                        taken_at: copy.taken_at_micros,
                        page_size: Some(copy.page_size),
                    },
                )
                .unwrap();
            bases.push(copy.lsn);
        }
        archiver.archive_sealed().unwrap();
    }
    log.seal().unwrap();
    archiver.archive_sealed().unwrap();
    let log_id = log.log_id().to_string();
    Archived {
        dir,
        archive,
        points,
        bases,
        log_id,
    }
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn restore_to_files_and_refusals_through_the_binary() {
    let a = archived_application();
    let dir = s(&a.archive);
    let out_dir = a.dir.path();
    let restorable: Vec<Lsn> = a
        .points
        .keys()
        .copied()
        .filter(|l| *l >= a.bases[0])
        .collect();
    for (i, lsn) in restorable.iter().step_by(7).enumerate() {
        let out = out_dir.join(format!("r{i}.db"));
        let o = run_ferry(&[
            "restore",
            "--archive-dir",
            dir,
            "--to-lsn",
            &lsn.to_string(),
            "--output",
            s(&out),
        ]);
        let stdout = expect_exit(&o, 0, "restore --to-lsn");
        assert!(stdout.contains(&format!("to LSN {lsn}")), "{stdout}");
        assert_eq!(sqlite_tables(&out), a.points[lsn].1, "content at LSN {lsn}");
    }
    // By time, and the latest point.
    let mid = restorable[restorable.len() / 2];
    let at = ferry_core::json::micros_to_rfc3339(a.points[&mid].0);
    let out = out_dir.join("by-time.db");
    let o = run_ferry(&[
        "restore",
        "--archive-dir",
        dir,
        "--to-time",
        &at,
        "--output",
        s(&out),
    ]);
    let stdout = expect_exit(&o, 0, "restore --to-time");
    assert!(stdout.contains(&format!("to LSN {mid}")), "{stdout}");
    assert_eq!(sqlite_tables(&out), a.points[&mid].1);
    let last = *a.points.keys().last().unwrap();
    let out = out_dir.join("latest.db");
    let o = run_ferry(&[
        "restore",
        "--archive-dir",
        dir,
        "--latest",
        "--output",
        s(&out),
    ]);
    expect_exit(&o, 0, "restore --latest");
    assert_eq!(sqlite_tables(&out), a.points[&last].1);

    // --json and --metrics-file: what the restore did, as a one-shot command reports it.
    let out = out_dir.join("latest-json.db");
    let prom = out_dir.join("restore.prom");
    let o = run_ferry(&[
        "restore",
        "--archive-dir",
        dir,
        "--latest",
        "--output",
        s(&out),
        "--json",
        "--metrics-file",
        s(&prom),
    ]);
    let stdout = expect_exit(&o, 0, "restore --latest --json");
    let j: serde_json::Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("--json printed {stdout:?}: {e}"));
    assert_eq!(j["target_lsn"].as_u64(), Some(last.0), "{j}");
    assert_eq!(j["kind"], "sqlite");
    let base_lsn = j["base_lsn"].as_u64().unwrap();
    assert_eq!(j["log_records"].as_u64(), Some(last.0 - base_lsn), "{j}");
    assert!(j["base_bytes"].as_u64().is_some_and(|b| b >= 4096), "{j}");
    assert!(
        j["duration_seconds"].as_f64().is_some_and(|d| d > 0.0),
        "{j}"
    );
    let text = std::fs::read_to_string(&prom).unwrap();
    let records = format!(
        "ferry_restore_log_records{{source=\"app\",kind=\"sqlite\"}} {}",
        last.0 - base_lsn
    );
    assert!(text.contains(&records), "{text}");
    assert!(
        text.contains("# TYPE ferry_restore_duration_seconds gauge"),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "ferry_restore_base_bytes{{source=\"app\",kind=\"sqlite\"}} {}",
            j["base_bytes"]
        )),
        "{text}"
    );

    // Refusals: exit 2 with what and the nearest points.
    let early = *a.points.keys().next().unwrap();
    let o = run_ferry(&[
        "restore",
        "--archive-dir",
        dir,
        "--to-lsn",
        &early.to_string(),
        "--output",
        s(&out_dir.join("early.db")),
    ]);
    expect_exit(&o, 2, "restore before the first base");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(&format!("cannot restore to LSN {early}")),
        "{err}"
    );
    assert!(
        err.contains(&format!("nearest restorable points: LSN {}", a.bases[0])),
        "{err}"
    );
    assert!(!out_dir.join("early.db").exists());
    let o = run_ferry(&[
        "restore",
        "--archive-dir",
        dir,
        "--latest",
        "--output",
        s(&out),
    ]);
    expect_exit(&o, 2, "restore over an existing file");
    assert!(String::from_utf8_lossy(&o.stderr).contains("already exists"));
    let o = run_ferry(&["restore", "--archive-dir", dir, "--latest"]);
    expect_exit(&o, 2, "restore without --output or --target");
    assert!(String::from_utf8_lossy(&o.stderr).contains("exactly one of --output"));
    let o = run_ferry(&[
        "restore",
        "--archive-dir",
        dir,
        "--to-time",
        "yesterday",
        "--output",
        "x.db",
    ]);
    expect_exit(&o, 2, "restore with a bad time");
    assert!(String::from_utf8_lossy(&o.stderr).contains("RFC 3339"));

    // A damaged segment stops the restore and is named.
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(a.archive.join("app/manifest.json")).unwrap())
            .unwrap();
    let seg = manifest["segments"]
        .as_array()
        .unwrap()
        .iter()
        .rfind(|s| s["records"].as_u64().unwrap() >= 2)
        .unwrap();
    let file = seg["file"].as_str().unwrap();
    let path = a.archive.join("app").join(file);
    let mut bytes = std::fs::read(&path).unwrap();
    let n = bytes.len();
    bytes[n - 40] ^= 0x01;
    std::fs::write(&path, bytes).unwrap();
    let o = run_ferry(&[
        "restore",
        "--archive-dir",
        dir,
        "--latest",
        "--output",
        s(&out_dir.join("damaged.db")),
    ]);
    expect_exit(&o, 2, "restore across a damaged segment");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains(file) && err.contains("corrupt"), "{err}");
}

#[test]
fn backup_list_shows_bases_ranges_and_the_postgres_pairing() {
    let a = archived_application();
    let dir = s(&a.archive);
    let last = *a.points.keys().last().unwrap();
    let o = run_ferry(&["backup", "list", "--archive-dir", dir]);
    let table = expect_exit(&o, 0, "backup list");
    assert!(table.contains("BASE LSN"), "{table}");
    assert!(
        table.contains(&format!("restorable: LSN {}", a.bases[0])),
        "{table}"
    );
    let o = run_ferry(&["backup", "list", "--archive-dir", dir, "--json"]);
    let j: serde_json::Value =
        serde_json::from_str(&expect_exit(&o, 0, "backup list --json")).unwrap();
    let src = &j["sources"][0];
    assert_eq!(src["source_id"], "app");
    assert_eq!(src["log_id"], a.log_id.as_str());
    let base_lsns: Vec<u64> = src["bases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["lsn"].as_u64().unwrap())
        .collect();
    assert_eq!(base_lsns, a.bases.iter().map(|l| l.0).collect::<Vec<_>>());
    assert_eq!(src["restorable"][0]["from"]["lsn"], a.bases[0].0);
    assert_eq!(src["restorable"][0]["to"]["lsn"], last.0);

    // Restore into PostgreSQL, then the pairing: ferry.progress reflects the restored LSN of
    // this archive's log.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let db = rt.block_on(ferry_testkit::pg::TestDb::new());
    let o = run_ferry(&[
        "restore",
        "--archive-dir",
        dir,
        "--latest",
        "--target",
        db.url(),
    ]);
    let stdout = expect_exit(&o, 0, "restore --target");
    assert!(
        stdout.contains(&format!("to LSN {last} into PostgreSQL")),
        "{stdout}"
    );
    let users: i64 = rt.block_on(async {
        db.connect()
            .await
            .query_one("SELECT count(*) FROM public.users", &[])
            .await
            .unwrap()
            .get(0)
    });
    assert_eq!(users as usize, a.points[&last].1["users"].len());
    let o = run_ferry(&[
        "backup",
        "list",
        "--archive-dir",
        dir,
        "--target",
        db.url(),
        "--json",
    ]);
    let j: serde_json::Value =
        serde_json::from_str(&expect_exit(&o, 0, "backup list --target")).unwrap();
    let pg = &j["sources"][0]["postgres"];
    assert_eq!(pg["found"], true, "{pg}");
    assert_eq!(pg["lsn"], last.0, "{pg}");
    assert_eq!(pg["same_log"], true, "{pg}");
    assert_eq!(pg["restorable"], true, "{pg}");
    // Restoring again into the same database is refused (it never merges).
    let o = run_ferry(&[
        "restore",
        "--archive-dir",
        dir,
        "--latest",
        "--target",
        db.url(),
    ]);
    expect_exit(&o, 2, "restore into a database that holds the source");
    assert!(String::from_utf8_lossy(&o.stderr).contains("already holds source"));
    // An archive directory without sources is an error, not an empty list.
    let empty = tempfile::tempdir().unwrap();
    let o = run_ferry(&["backup", "list", "--archive-dir", s(empty.path())]);
    expect_exit(&o, 2, "backup list of an empty directory");
}

/// `ferry capture --archive-dir` archives like `ferry run`: a base after the initial snapshot,
/// and on exit the open segment sealed and archived, so the latest point restores to exactly
/// what the database held, through two runs of `--once`.
#[test]
fn ferry_capture_archives_bases_and_segments() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    let state = dir.path().join("state");
    let archive = dir.path().join("archive");
    ferry_e2e::SampleApp::prepare(&db, 40);
    let capture_once = || {
        let out = run_ferry(&[
            "capture",
            "--once",
            "--source",
            s(&db),
            "--state-dir",
            s(&state),
            "--archive-dir",
            s(&archive),
        ]);
        expect_exit(&out, 0, "ferry capture --once --archive-dir");
    };
    capture_once();
    {
        let c = rusqlite::Connection::open(&db).unwrap();
        c.execute_batch(
            "INSERT INTO settings (key, value) VALUES ('after-the-base', 'x');
             UPDATE users SET name = 'renamed' WHERE id = 7;
             DELETE FROM jobs WHERE id = 3;",
        )
        .unwrap();
    }
    capture_once();
    let out = run_ferry(&["backup", "list", "--archive-dir", s(&archive), "--json"]);
    let list: serde_json::Value =
        serde_json::from_str(&expect_exit(&out, 0, "backup list")).unwrap();
    assert!(
        list["sources"][0]["bases"]
            .as_array()
            .is_some_and(|b| !b.is_empty()),
        "a base was archived: {list}"
    );
    let restored = dir.path().join("restored.db");
    let out = run_ferry(&[
        "restore",
        "--archive-dir",
        s(&archive),
        "--latest",
        "--output",
        s(&restored),
    ]);
    expect_exit(&out, 0, "restore --latest of what ferry capture archived");
    assert_eq!(sqlite_tables(&restored), sqlite_tables(&db));
}
