//! The command-line contract: exit codes and clear errors.

use ferry_e2e::{expect_exit, run_ferry};

#[test]
fn help_and_version_succeed() {
    let out = run_ferry(&["--help"]);
    let stdout = expect_exit(&out, 0, "ferry --help");
    for cmd in [
        "run", "capture", "ship", "snapshot", "status", "verify", "cutover", "demo", "log",
        "backup", "restore",
    ] {
        assert!(
            stdout.contains(cmd),
            "--help does not list {cmd}:\n{stdout}"
        );
    }
    expect_exit(&run_ferry(&["--version"]), 0, "ferry --version");
}

#[test]
fn usage_errors_exit_2() {
    let out = run_ferry(&["no-such-command"]);
    expect_exit(&out, 2, "unknown subcommand");
    let out = run_ferry(&["capture"]);
    expect_exit(&out, 2, "capture without --source");
}

#[test]
fn sample_app_writes_and_reports_its_stalls() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    let out = run_ferry(&[
        "sample-app",
        "--db",
        db.to_str().unwrap(),
        "--seconds",
        "0.5",
        "--rate",
        "100",
        "--initial-users",
        "50",
    ]);
    let stdout = expect_exit(&out, 0, "sample-app");
    let summary: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert!(summary["commits"].as_u64().unwrap() > 10, "{summary}");
    assert!(
        summary["longest_stall_ms"].as_f64().unwrap() > 0.0,
        "{summary}"
    );
    let tables = ferry_e2e::sqlite_tables(&db);
    assert!(tables["users"].len() >= 50);
    assert!(tables["jobs"].len() as u64 >= 50 + summary["commits"].as_u64().unwrap());
}
