//! `ferry ship` on the state directory the sled capture library writes: an application
//! (here, in the test process, as `crates/ferry-sled/examples/sled_app.rs` does) writes
//! through ferry-sled with a decoder that maps one tree to `jsonb` and one to an integer
//! column; the real `ferry` binary ships the log into a real PostgreSQL; PostgreSQL must
//! equal the sled trees. Then the application writes more and `ferry ship` resumes.

use ferry_core::{Affinity, TableSchema, Value};
use ferry_e2e::{expect_exit, run_ferry};
use ferry_sled::decoder::{column, keyed_table};
use ferry_sled::{
    Batch, BytesDecoder, CaptureOptions, CapturedDb, DecoderError, TreeDecoder, TxError,
};
use ferry_testkit::pg::TestDb;
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// `users` → `(id TEXT, doc JSON)`, `counters` → `(name TEXT, count INTEGER)`, everything
/// else `(key BLOB, value BLOB)`: the example application's mapping.
struct AppDecoder;

impl TreeDecoder for AppDecoder {
    fn table_schema(&self, tree: &str) -> TableSchema {
        match tree {
            "users" => {
                let mut doc = column("doc", "JSON", 0);
                doc.affinity = Affinity::Text;
                keyed_table("users", vec![column("id", "TEXT", 1), doc])
            }
            "counters" => keyed_table(
                "counters",
                vec![column("name", "TEXT", 1), column("count", "INTEGER", 0)],
            ),
            other => BytesDecoder.table_schema(other),
        }
    }

    fn decode(&self, tree: &str, key: &[u8], value: &[u8]) -> Result<Vec<Value>, DecoderError> {
        match tree {
            "users" => {
                serde_json::from_slice::<serde_json::Value>(value)?;
                Ok(vec![Value::Text(key.to_vec()), Value::Text(value.to_vec())])
            }
            "counters" => {
                let n = u64::from_be_bytes(value.try_into()?);
                Ok(vec![
                    Value::Text(key.to_vec()),
                    Value::Integer(i64::try_from(n)?),
                ])
            }
            other => BytesDecoder.decode(other, key, value),
        }
    }
}

fn add_u64(_key: &[u8], old: Option<&[u8]>, add: &[u8]) -> Option<Vec<u8>> {
    let old = old
        .and_then(|o| <[u8; 8]>::try_from(o).ok())
        .map_or(0, u64::from_be_bytes);
    let add = <[u8; 8]>::try_from(add).map_or(0, u64::from_be_bytes);
    Some(old.wrapping_add(add).to_be_bytes().to_vec())
}

/// The example application's workload: transactions over two trees with a merge, batches
/// that insert and remove, compare-and-swap, plain removes.
fn write(db: &CapturedDb, from: u64, count: u64) {
    let users = db.open_tree("users").expect("users");
    let counters = db.open_tree("counters").expect("counters");
    let sessions = db.open_tree("sessions").expect("sessions");
    counters.set_merge_operator(add_u64);
    for i in from..from + count {
        let id = format!("user-{:04}", i % 300);
        db.transaction(&[&users, &counters], |tx| {
            let doc = format!(r#"{{"name":"User {i}","visits":{i},"tags":["a","b"]}}"#);
            tx.tree(0).insert(id.as_bytes(), doc.into_bytes())?;
            tx.tree(1).merge("writes", 1u64.to_be_bytes())?;
            tx.tree(1)
                .merge(format!("bucket-{}", i % 7), i.to_be_bytes())?;
            Ok::<_, TxError<Infallible>>(())
        })
        .expect("transaction");
        let mut batch = Batch::default();
        batch.insert(
            format!("s{i}").into_bytes(),
            vec![i as u8; (i % 50) as usize],
        );
        if i >= 10 {
            batch.remove(format!("s{}", i - 10).into_bytes());
        }
        sessions.apply_batch(&batch).expect("batch");
        if i % 7 == 0
            && let Some(current) = users.get(id.as_bytes()).expect("get")
        {
            let marked = format!(r#"{{"name":"User {i}","visits":{i},"vip":true}}"#);
            users
                .compare_and_swap(id.as_bytes(), Some(current), Some(marked.into_bytes()))
                .expect("cas")
                .expect("nothing else writes");
        }
        if i % 11 == 0 {
            users
                .remove(format!("user-{:04}", (i * 7) % 300).as_bytes())
                .expect("remove");
        }
    }
}

/// The sled trees as PostgreSQL should hold them: users as JSON, counters as numbers,
/// sessions as bytes.
#[derive(Debug, PartialEq)]
struct Expected {
    users: BTreeMap<String, serde_json::Value>,
    counters: BTreeMap<String, i64>,
    sessions: BTreeMap<Vec<u8>, Vec<u8>>,
}

fn from_sled(db: &sled::Db) -> Expected {
    let tree = |n: &str| db.open_tree(n).expect("tree");
    let utf8 = |b: &[u8]| String::from_utf8(b.to_vec()).expect("utf-8 key");
    Expected {
        users: tree("users")
            .iter()
            .map(|kv| {
                let (k, v) = kv.expect("read");
                (utf8(&k), serde_json::from_slice(&v).expect("json"))
            })
            .collect(),
        counters: tree("counters")
            .iter()
            .map(|kv| {
                let (k, v) = kv.expect("read");
                let n = u64::from_be_bytes(v.as_ref().try_into().expect("8 bytes"));
                (utf8(&k), i64::try_from(n).expect("fits"))
            })
            .collect(),
        sessions: tree("sessions")
            .iter()
            .map(|kv| {
                let (k, v) = kv.expect("read");
                (k.to_vec(), v.to_vec())
            })
            .collect(),
    }
}

async fn from_pg(pg: &TestDb) -> Expected {
    let c = pg.connect().await;
    // The decoder's types as PostgreSQL declares them: the JSON column is jsonb (not text),
    // the default mapping `key bytea primary key, value bytea`.
    let types: Vec<(String, String, String)> = c
        .query(
            "SELECT table_name::text, column_name::text, data_type::text \
             FROM information_schema.columns WHERE table_schema = 'public' \
             AND table_name IN ('users', 'sessions') ORDER BY table_name, ordinal_position",
            &[],
        )
        .await
        .expect("column types")
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    let t = |a: &str, b: &str, c: &str| (a.to_string(), b.to_string(), c.to_string());
    assert_eq!(
        types,
        [
            t("sessions", "key", "bytea"),
            t("sessions", "value", "bytea"),
            t("users", "id", "text"),
            t("users", "doc", "jsonb"),
        ]
    );
    let pk: Vec<String> = c
        .query(
            "SELECT a.attname::text FROM pg_index i JOIN pg_attribute a \
             ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) \
             WHERE i.indrelid = 'public.sessions'::regclass AND i.indisprimary",
            &[],
        )
        .await
        .expect("primary key")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(pk, ["key"], "sessions' primary key");
    let users = c
        .query("SELECT id, doc::text FROM public.users", &[])
        .await
        .expect("users");
    let counters = c
        .query("SELECT name, count::bigint FROM public.counters", &[])
        .await
        .expect("counters");
    let sessions = c
        .query("SELECT key, value FROM public.sessions", &[])
        .await
        .expect("sessions");
    Expected {
        users: users
            .iter()
            .map(|r| {
                let doc: String = r.get(1);
                (r.get(0), serde_json::from_str(&doc).expect("jsonb as text"))
            })
            .collect(),
        counters: counters.iter().map(|r| (r.get(0), r.get(1))).collect(),
        sessions: sessions.iter().map(|r| (r.get(0), r.get(1))).collect(),
    }
}

fn ship(state: &Path, pg: &TestDb) -> String {
    let out = run_ferry(&[
        "ship",
        "--state-dir",
        &state.to_string_lossy(),
        "--target",
        pg.url(),
        "--once",
    ]);
    expect_exit(&out, 0, "ferry ship --once on a sled state directory")
}

#[test]
fn ferry_ship_replays_a_sled_state_dir_into_postgresql_and_resumes() {
    let pg = TestDb::new_blocking();
    let dir = tempfile::tempdir().expect("tempdir");
    let (path, state) = (dir.path().join("app"), dir.path().join("state"));
    let sled_db = sled::open(&path).expect("sled");
    let opts = CaptureOptions {
        decoder: Arc::new(AppDecoder),
        ..CaptureOptions::default()
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");

    // Rows that exist before capture starts reach PostgreSQL through the snapshot.
    sled_db
        .open_tree("sessions")
        .expect("tree")
        .insert("before-capture", &b"old"[..])
        .expect("insert");
    let db = CapturedDb::with_db(sled_db.clone(), &path, &state, opts.clone()).expect("capture");
    write(&db, 0, 400);
    db.close(Duration::from_secs(60)).expect("close");

    ship(&state, &pg);
    let want = from_sled(&sled_db);
    assert!(want.users.len() > 100 && want.counters.len() == 8 && want.sessions.len() > 5);
    assert_eq!(
        rt.block_on(from_pg(&pg)),
        want,
        "PostgreSQL differs from sled"
    );

    // The application carries on; ship resumes from PostgreSQL's progress row.
    let db = CapturedDb::with_db(sled_db.clone(), &path, &state, opts).expect("reopen");
    write(&db, 400, 300);
    db.close(Duration::from_secs(60)).expect("close");
    ship(&state, &pg);
    assert_eq!(
        rt.block_on(from_pg(&pg)),
        from_sled(&sled_db),
        "PostgreSQL differs from sled after resuming"
    );
}

/// `ferry run` with a `kind = "sled"` source ships the library's state directory
/// continuously while the application writes, and reports it in `ferry status`.
#[test]
fn ferry_run_ships_a_sled_source_while_the_application_writes() {
    use ferry_e2e::live::FerryRun;
    let pg = TestDb::new_blocking();
    let dir = tempfile::tempdir().expect("tempdir");
    let (path, state) = (dir.path().join("app"), dir.path().join("sled-state"));
    let run_state = dir.path().join("run-state");
    let sled_db = sled::open(&path).expect("sled");
    let opts = CaptureOptions {
        decoder: Arc::new(AppDecoder),
        ..CaptureOptions::default()
    };
    let db = CapturedDb::with_db(sled_db.clone(), &path, &state, opts).expect("capture");
    write(&db, 0, 100);
    let config = dir.path().join("ferry.toml");
    std::fs::write(
        &config,
        format!(
            "[target]\nurl = \"{}\"\n\n[[source]]\nkind = \"sled\"\npath = \"{}\"\n",
            pg.url(),
            state.display()
        ),
    )
    .expect("config");
    let run = FerryRun::start(&run_state, ["--config", config.to_str().expect("utf-8")]);
    write(&db, 100, 300);
    db.close(Duration::from_secs(60)).expect("close");
    run.wait_caught_up(Duration::from_secs(120));
    let st = run.source_status();
    assert_eq!(st["kind"], "sled", "{st}");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    assert_eq!(
        rt.block_on(from_pg(&pg)),
        from_sled(&sled_db),
        "PostgreSQL differs from sled under ferry run"
    );
    // A sled source cannot be fenced from outside its application: the cutover refuses,
    // saying how to move it, and replication goes on.
    let out = ferry_e2e::run_ferry(&[
        "cutover",
        "--state-dir",
        run_state.to_str().expect("utf-8"),
        "--then",
        "true",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("cannot fence"), "{stderr}");
    assert_eq!(run.source_status()["state"], "streaming");
    assert!(run.stop().success());
}

/// The example application of `crates/ferry-sled/examples/sled_app.rs` (the binary the test
/// command's `cargo build --workspace --all-targets` puts next to `ferry`), run with the
/// arguments of the README's walk-through, then the README's `ferry log inspect` and
/// `ferry ship --once`: PostgreSQL holds what the example wrote, and a second run of the
/// example carries on in the same log.
#[test]
fn the_readme_walk_through_with_the_example_application() {
    let pg = TestDb::new_blocking();
    let dir = tempfile::tempdir().expect("tempdir");
    let (app, state) = (dir.path().join("app"), dir.path().join("state"));
    let example = ferry_e2e::ferry_bin()
        .parent()
        .expect("the ferry binary's directory")
        .join("examples")
        .join("sled_app");
    assert!(
        example.is_file(),
        "{} not found: build it first (`cargo build -p ferry-sled --examples`)",
        example.display()
    );
    let run_example = || {
        let out = std::process::Command::new(&example)
            .args(["--db", &app.to_string_lossy()])
            .args(["--state-dir", &state.to_string_lossy()])
            .args(["--count", "1000"])
            .output()
            .expect("run the example");
        expect_exit(&out, 0, "the sled_app example")
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let state_s = state.to_string_lossy().into_owned();

    let said = run_example();
    assert!(said.contains("wrote 1000 transactions"), "{said}");
    assert!(state.join("sources/app/source.json").is_file());
    assert!(state.join("sources/app/log").is_dir());

    let inspected = expect_exit(
        &run_ferry(&["log", "inspect", "--state-dir", &state_s, "--limit", "20"]),
        0,
        "ferry log inspect",
    );
    for tree in ["users", "counters", "sessions"] {
        assert!(inspected.contains(tree), "no {tree} in:\n{inspected}");
    }

    let check = |runs: i64| {
        ship(&state, &pg);
        let (users, writes, sessions, vip) = rt.block_on(async {
            let c = pg.connect().await;
            let one = |sql: &'static str| {
                let c = &c;
                async move { c.query_one(sql, &[]).await.expect(sql).get::<_, i64>(0) }
            };
            (
                one("SELECT count(*) FROM public.users").await,
                one("SELECT count::bigint FROM public.counters WHERE name = 'writes'").await,
                one("SELECT count(*) FROM public.sessions").await,
                one("SELECT count(*) FROM public.users WHERE (doc->>'vip')::boolean").await,
            )
        });
        // 500 user ids, one counter merge per transaction, the last 10 sessions kept, and
        // the users the example's compare-and-swap marked (every seventh write's user).
        assert_eq!(users, 500, "users after {runs} run(s)");
        assert_eq!(writes, 1000 * runs, "the merge counter after {runs} run(s)");
        assert_eq!(sessions, 10, "sessions after {runs} run(s)");
        assert!(vip > 0, "no user marked by compare_and_swap");
    };
    check(1);
    run_example();
    check(2);
}
