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
        ]);
        expect_exit(&out, 0, &format!("verify {}", db.display()));
    }
    let (_, report) = run.status();
    for s in report["sources"].as_array().unwrap() {
        assert_eq!(s["state"], "cut_over", "{s}");
    }
    assert!(run.stop().success());
}
