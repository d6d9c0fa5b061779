//! Two applications' databases into one PostgreSQL database with one `ferry run --config`:
//! one into its own schema, the other into another schema with a table prefix (the layout
//! Posit Connect's core and instrumentation databases need), then one cutover for both.

use ferry_e2e::live::{FerryRun, start_app};
use ferry_e2e::{SampleApp, expect_exit, run_ferry};
use ferry_testkit::pg::TestDb;
use std::time::Duration;

#[test]
fn two_sources_two_schemas_and_a_prefix_then_one_cutover() {
    let pg = TestDb::new_blocking();
    let dir = tempfile::tempdir().unwrap();
    let core = dir.path().join("core.db");
    let inst = dir.path().join("instrumentation.db");
    let state = dir.path().join("state");
    SampleApp::prepare(&core, 120);
    SampleApp::prepare(&inst, 80);
    let config = dir.path().join("ferry.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[target]
url = "{url}"

[[source]]
name = "core"
path = "{core}"
schema = "connect"

[[source]]
name = "instrumentation"
path = "{inst}"
schema = "metrics"
table_prefix = "inst_"
exclude = ["events"]
"#,
            url = pg.url(),
            core = core.display(),
            inst = inst.display()
        ),
    )
    .unwrap();
    let app_core = start_app(&core, 80, 1, &[]);
    let app_inst = start_app(&inst, 80, 2, &[]);
    let run = FerryRun::start(&state, ["--config", config.to_str().unwrap()]);
    run.wait_streaming(Duration::from_secs(120));
    let (_, report) = run.status();
    let names: Vec<&str> = report["sources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["source"].as_str().unwrap())
        .collect();
    assert_eq!(names.len(), 2, "{report}");
    assert!(names.contains(&"core") && names.contains(&"instrumentation"));

    let mut client = pg.connect_blocking();
    assert!(client.query_i64("SELECT count(*) FROM connect.users") >= 120);
    assert!(client.query_i64("SELECT count(*) FROM metrics.inst_users") >= 80);
    assert_eq!(
        client.query_i64(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'metrics' AND table_name NOT LIKE 'inst\\_%'"
        ),
        0,
        "every table of the prefixed source carries the prefix"
    );
    assert_eq!(
        client.query_i64(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'metrics' AND table_name = 'inst_events'"
        ),
        0,
        "the excluded table is not shipped"
    );

    // A live verify of the filtered source compares what it ships (the excluded table is
    // not reported missing); without the filter, the excluded table is.
    let inst_s = inst.to_str().unwrap();
    let state_s = state.to_str().unwrap();
    let verify_inst = |extra: &[&str]| {
        let mut args = vec![
            "verify",
            "--source",
            inst_s,
            "--target",
            pg.url(),
            "--schema",
            "metrics",
            "--table-prefix",
            "inst_",
            "--state-dir",
            state_s,
            "--source-id",
            "instrumentation",
        ];
        args.extend_from_slice(extra);
        run_ferry(&args)
    };
    let out = verify_inst(&["--exclude", "events"]);
    let report = expect_exit(&out, 0, "live verify of the filtered source");
    assert!(!report.contains("events"), "{report}");
    let out = verify_inst(&[]);
    let report = expect_exit(&out, 1, "live verify without the source's filter");
    assert!(report.contains("events"), "{report}");

    // One cutover fences and switches both sources.
    let out = run_ferry(&[
        "cutover",
        "--state-dir",
        state.to_str().unwrap(),
        "--then",
        &format!("kill -TERM {} {}", app_core.pid(), app_inst.pid()),
    ]);
    let text = expect_exit(&out, 0, "cutover of two sources");
    assert!(text.contains("write lock held on 2 sources"), "{text}");
    app_core.wait(Duration::from_secs(30));
    app_inst.wait(Duration::from_secs(30));
    for (db, schema, prefix) in [(&core, "connect", ""), (&inst, "metrics", "inst_")] {
        let out = run_ferry(&[
            "verify",
            "--source",
            db.to_str().unwrap(),
            "--target",
            pg.url(),
            "--schema",
            schema,
            "--table-prefix",
            prefix,
            "--exclude",
            if prefix.is_empty() { "" } else { "events" },
        ]);
        expect_exit(&out, 0, &format!("verify {}", db.display()));
    }
    let (_, report) = run.status();
    for s in report["sources"].as_array().unwrap() {
        assert_eq!(s["state"], "cut_over", "{s}");
    }
    assert!(run.stop().success());
}

/// With `--config`, the per-source settings give way to `FERRY_…` variables (one source), a
/// password file comes from `FERRY_PASSWORD_FILE` (a path with a space and a quote), and with
/// several sources such a variable is refused as ambiguous.
#[test]
fn ferry_variables_override_the_configuration() {
    let pg = TestDb::new_blocking();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    let state = dir.path().join("state");
    SampleApp::prepare(&db, 30);
    let secret_dir = dir.path().join("it's secret");
    std::fs::create_dir(&secret_dir).unwrap();
    let password_file = secret_dir.join("pg password");
    std::fs::write(&password_file, "hunter2-not-printed\n").unwrap();
    let config = dir.path().join("ferry.toml");
    std::fs::write(
        &config,
        format!(
            "[target]\nurl = \"{url}\"\n\n[[source]]\nname = \"app\"\npath = \"{db}\"\nschema = \"from_config\"\n",
            url = pg.url(),
            db = db.display()
        ),
    )
    .unwrap();
    let run = FerryRun::start_with_env(
        &state,
        ["--config", config.to_str().unwrap()],
        [
            ("FERRY_SCHEMA", "from_env"),
            ("FERRY_TABLE_PREFIX", "x_"),
            ("FERRY_PASSWORD_FILE", password_file.to_str().unwrap()),
        ],
    );
    run.wait_streaming(Duration::from_secs(120));
    let mut client = pg.connect_blocking();
    assert_eq!(
        client.query_i64("SELECT count(*) FROM from_env.x_users"),
        30
    );
    assert_eq!(
        client.query_i64(
            "SELECT count(*) FROM information_schema.schemata WHERE schema_name = 'from_config'"
        ),
        0
    );
    let (_, status) = run.status();
    assert!(!status.to_string().contains("hunter2"), "{status}");
    assert!(run.stop().success());

    // Two sources: a per-source variable is ambiguous.
    let two = dir.path().join("two.toml");
    std::fs::write(
        &two,
        format!(
            "[target]\nurl = \"{url}\"\n\n[[source]]\nname = \"a\"\npath = \"{db}\"\n\n[[source]]\nname = \"b\"\npath = \"{db}\"\nschema = \"b\"\n",
            url = pg.url(),
            db = db.display()
        ),
    )
    .unwrap();
    let out = ferry_e2e::ferry()
        .args(["run", "--config", two.to_str().unwrap(), "--state-dir"])
        .arg(dir.path().join("state2"))
        .env("FERRY_SCHEMA", "from_env")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("2 sources"), "{stderr}");
}
