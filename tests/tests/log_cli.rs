//! `ferry log inspect` and `ferry log verify` on a log produced by the log library.

use ferry_e2e::sample_log::write_log;
use ferry_e2e::{expect_exit, run_ferry};
use serde_json::json;

#[test]
fn inspect_json_shows_every_record_with_named_columns() {
    let dir = tempfile::tempdir().unwrap();
    write_log(dir.path());
    let out = run_ferry(&["log", "inspect", "--json", dir.path().to_str().unwrap()]);
    let stdout = expect_exit(&out, 0, "log inspect --json");
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 5, "{stdout}");
    let types: Vec<&str> = lines.iter().map(|l| l["type"].as_str().unwrap()).collect();
    assert_eq!(
        types,
        [
            "snapshot_begin",
            "snapshot_rows",
            "snapshot_end",
            "txn",
            "txn"
        ]
    );
    assert_eq!(lines[3]["lsn"], json!(4));
    assert_eq!(
        lines[3]["captured_at"],
        json!("2023-11-14T22:13:20.500000Z")
    );
    let ins = &lines[3]["changes"][0];
    assert_eq!(ins["op"], json!("insert"));
    assert_eq!(ins["key"], json!({"id": 2}));
    assert_eq!(
        ins["after"],
        json!({"id": 2, "name": {"$text_hex": "ff41"}, "avatar": {"$blob": "0102"}})
    );
    assert_eq!(ins["before"], json!(null));
    let upd = &lines[3]["changes"][1];
    assert_eq!(upd["op"], json!("update"));
    assert_eq!(upd["before"]["name"], json!("ann"));
    assert_eq!(upd["after"]["name"], json!("Ann"));
    let del = &lines[4]["changes"][0];
    assert_eq!(
        (del["op"].clone(), del["after"].clone()),
        (json!("delete"), json!(null))
    );
    // The --state-dir form and the readable table agree on the record count.
    let out = run_ferry(&[
        "log",
        "inspect",
        "--state-dir",
        dir.path().to_str().unwrap(),
    ]);
    let table = expect_exit(&out, 0, "log inspect (table)");
    assert_eq!(
        table
            .lines()
            .filter(|l| l.trim_start().starts_with(char::is_numeric))
            .count(),
        5,
        "{table}"
    );
    assert!(table.contains("+1 ~1 -0"), "{table}");
}

#[test]
fn verify_passes_then_names_a_corrupt_segment() {
    let dir = tempfile::tempdir().unwrap();
    write_log(dir.path());
    let state = dir.path().to_str().unwrap();
    let out = run_ferry(&["log", "verify", state]);
    let stdout = expect_exit(&out, 0, "log verify");
    assert!(stdout.contains("5 records"), "{stdout}");
    // Flip a byte inside the second record's payload (not a torn tail: valid records follow).
    let log_dir = dir.path().join("sources/app/log");
    let seg = std::fs::read_dir(&log_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "seg"))
        .expect("a segment file");
    let mut bytes = std::fs::read(&seg).unwrap();
    let needle = b"ann";
    let pos = bytes
        .windows(3)
        .position(|w| w == needle)
        .expect("payload bytes in the segment");
    bytes[pos] ^= 0x20;
    std::fs::write(&seg, &bytes).unwrap();
    let out = run_ferry(&["log", "verify", state]);
    expect_exit(&out, 2, "log verify on a corrupt log");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let name = seg.file_name().unwrap().to_string_lossy().into_owned();
    assert!(
        stderr.contains(&name),
        "error does not name the segment {name}: {stderr}"
    );
}

#[test]
fn inspect_without_a_state_dir_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_ferry(&["log", "inspect", dir.path().to_str().unwrap()]);
    expect_exit(&out, 2, "inspect of an empty directory");
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a ferry state directory"));
}

#[test]
fn status_without_a_running_process_reports_the_log() {
    let dir = tempfile::tempdir().unwrap();
    write_log(dir.path());
    let out = run_ferry(&["status", "--json", dir.path().to_str().unwrap()]);
    let stdout = expect_exit(&out, 0, "status --json (offline)");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["pid"], json!(0));
    let s = &report["sources"][0];
    assert_eq!(
        (s["source"].clone(), s["state"].clone()),
        (json!("app"), json!("stopped"))
    );
    assert_eq!(
        (
            s["captured_lsn"].clone(),
            s["shipped_lsn"].clone(),
            s["lag_records"].clone()
        ),
        (json!(5), json!(0), json!(5))
    );
    let out = run_ferry(&["status", dir.path().to_str().unwrap()]);
    let table = expect_exit(&out, 0, "status (table)");
    assert!(table.contains("no ferry process is running"), "{table}");
}
