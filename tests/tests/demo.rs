//! `ferry demo` runs to completion non-interactively: its own PostgreSQL, a live sample
//! application, ferry run, verify, cutover, and a write on PostgreSQL afterwards.

use ferry_e2e::{expect_exit, ferry};

#[test]
fn demo_runs_to_completion() {
    let out = ferry()
        .args(["demo", "--seconds", "3"])
        .output()
        .unwrap_or_else(|e| panic!("ferry demo: {e}"));
    let text = expect_exit(&out, 0, "ferry demo");
    for step in [
        "1. starting a throwaway PostgreSQL",
        "3. ferry run: initial load, then streaming",
        "4. ferry verify",
        "   equal",
        "cut over: write-unavailability window",
        "6. PostgreSQL takes new writes",
        "everything cleaned up",
    ] {
        assert!(text.contains(step), "missing {step:?} in:\n{text}");
    }
    // The live view: rows/s and each table's rows in PostgreSQL.
    assert!(
        text.lines()
            .any(|l| l.contains("rows/s") && l.contains("PostgreSQL: ") && l.contains("users ")),
        "{text}"
    );
    // The application moved to PostgreSQL and kept writing there.
    let moved = text
        .split("commits on SQLite, then ")
        .nth(1)
        .and_then(|t| t.split(" on PostgreSQL").next())
        .and_then(|n| n.trim().parse::<u64>().ok())
        .unwrap_or_else(|| panic!("no commits on PostgreSQL in:\n{text}"));
    assert!(moved > 0, "{text}");
}

/// What `--keep` leaves behind, cleaned up however the test ends.
struct KeptDemo {
    ferry_pid: i32,
    data_dir: std::path::PathBuf,
}

impl Drop for KeptDemo {
    fn drop(&mut self) {
        // SAFETY: signalling processes this test's demo started.
        unsafe { libc::kill(self.ferry_pid, libc::SIGTERM) };
        let postmaster = std::fs::read_to_string(self.data_dir.join("postmaster.pid"))
            .ok()
            .and_then(|s| s.lines().next().and_then(|l| l.trim().parse::<i32>().ok()));
        if let Some(pid) = postmaster {
            // SAFETY: as above; SIGINT is PostgreSQL's fast shutdown.
            unsafe { libc::kill(pid, libc::SIGINT) };
        }
        std::thread::sleep(std::time::Duration::from_secs(2));
        if let Some(work) = self.data_dir.parent() {
            let _ = std::fs::remove_dir_all(work);
        }
    }
}

#[test]
fn demo_keep_leaves_postgresql_and_ferry_running() {
    // Its output goes to a file: the processes it leaves running keep a pipe open.
    let out_dir = tempfile::tempdir().unwrap();
    let out_path = out_dir.path().join("demo.out");
    let status = ferry()
        .args(["demo", "--seconds", "2", "--keep"])
        .stdout(std::fs::File::create(&out_path).unwrap())
        .status()
        .unwrap_or_else(|e| panic!("ferry demo --keep: {e}"));
    let text = std::fs::read_to_string(&out_path).unwrap();
    assert!(status.success(), "ferry demo --keep: {status}\n{text}");
    let after = |prefix: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(prefix).map(str::to_string))
            .unwrap_or_else(|| panic!("no {prefix:?} in:\n{text}"))
    };
    let url = after("psql ");
    let state = after("ferry status --state-dir ");
    let run_line = after("ferry run pid ");
    let (pid, data) = run_line
        .split_once("; PostgreSQL data in ")
        .unwrap_or_else(|| panic!("{run_line}"));
    let kept = KeptDemo {
        ferry_pid: pid.parse().unwrap(),
        data_dir: data.into(),
    };
    // ferry run still answers, and tells the cutover.
    let out = ferry()
        .args(["status", "--json", "--state-dir", &state])
        .output()
        .unwrap();
    let report: serde_json::Value =
        serde_json::from_str(&expect_exit(&out, 0, "ferry status after --keep")).unwrap();
    assert_eq!(
        report["pid"].as_i64(),
        Some(i64::from(kept.ferry_pid)),
        "{report}"
    );
    assert_eq!(report["sources"][0]["state"], "cut_over", "{report}");
    // PostgreSQL still runs and holds the application's data.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let users: i64 = rt.block_on(async {
        let target = ferry_pg::PgTarget::parse(&url).unwrap();
        let client = target.connect().await.unwrap();
        client
            .query_one("SELECT count(*) FROM users", &[])
            .await
            .unwrap()
            .get(0)
    });
    assert!(users >= 5000, "{users} users");
    drop(kept);
}
