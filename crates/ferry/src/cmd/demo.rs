//! `ferry demo`: the whole story in one command, with real processes.
//!
//! 1. a throwaway PostgreSQL from the installed server binaries (installing them with apt
//!    where we can, when they are missing);
//! 2. a sample application (`ferry sample-app`, its own process) creating and then changing a
//!    SQLite database;
//! 3. `ferry run` replicating it live, watched through its `/status` endpoint (rows, lag);
//! 4. `ferry verify` proving equality while the application still writes;
//! 5. `ferry cutover`, whose switch command moves the application to PostgreSQL, where it
//!    keeps writing, and the measured window beside the application's own longest stall;
//! 6. a new row inserted into PostgreSQL by hand, taking the next id;
//! 7. clean-up, unless `--keep`.
//!
//! Each step is the same command an operator would run, so the demo is also an end-to-end
//! check of them.

use crate::cli::DemoArgs;
use crate::runfile::RunFile;
use anyhow::{Context, bail};
use ferry_pgserver::{LocalServer, ServerOptions};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

fn ferry_exe() -> anyhow::Result<std::path::PathBuf> {
    std::env::current_exe().context("locating the ferry executable")
}

fn try_install_postgres() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return;
    }
    eprintln!(
        "demo: PostgreSQL server binaries are missing; installing them (apt-get install -y postgresql)…"
    );
    let ok = Command::new("apt-get")
        .args(["update", "-qq"])
        .status()
        .is_ok_and(|s| s.success())
        && Command::new("apt-get")
            .args(["install", "-y", "-qq", "postgresql"])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .is_ok_and(|s| s.success());
    if !ok {
        eprintln!("demo: installing PostgreSQL failed");
    }
}

struct Guard(Option<Child>, &'static str);
impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            // SAFETY: signalling our own child; SIGTERM lets it finish cleanly.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(15);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            eprintln!("demo: {} did not stop in time; killing it", self.1);
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub fn run(args: DemoArgs) -> anyhow::Result<ExitCode> {
    let exe = ferry_exe()?;
    println!("ferry demo: a live application moves from SQLite to PostgreSQL\n");

    // 1. PostgreSQL
    if ferry_pgserver::find_bin_dir().is_err() {
        try_install_postgres();
    }
    print!("1. starting a throwaway PostgreSQL… ");
    let server = LocalServer::start(ServerOptions {
        fsync: false,
        outlive_parent: args.keep,
        ..ServerOptions::default()
    })
    .context("starting the demo's PostgreSQL")?;
    server
        .psql("postgres", "CREATE DATABASE demo")
        .context("creating database demo")?;
    let target = server.url("demo");
    println!("{target}");

    let work = tempfile::Builder::new()
        .prefix("ferry-demo-")
        .tempdir()
        .context("creating the demo directory")?;
    let db = work.path().join("app.db");
    let state = work.path().join("state");

    // 2. the application
    print!(
        "2. the sample application creates {} and starts writing… ",
        db.display()
    );
    let st = Command::new(&exe)
        .args([
            "sample-app",
            "--prepare-only",
            "--initial-users",
            "5000",
            "--db",
        ])
        .arg(&db)
        .status()?;
    if !st.success() {
        bail!("the sample application could not prepare its database");
    }
    let app = Command::new(&exe)
        .args([
            "sample-app",
            "--initial-users",
            "0",
            "--rate",
            "300",
            "--switch-to",
            &target,
            "--db",
        ])
        .arg(&db)
        .stdout(Stdio::piped())
        .spawn()
        .context("starting the sample application")?;
    let mut app = Guard(Some(app), "the sample application");
    println!("300 transactions/s");

    // 3. ferry run
    println!("3. ferry run: initial load, then streaming");
    let run = Command::new(&exe)
        .args(["run", "--admin-addr", "127.0.0.1:0", "--source"])
        .arg(&db)
        .arg("--target")
        .arg(&target)
        .arg("--state-dir")
        .arg(&state)
        .env("FERRY_LOG", "warn")
        .spawn()
        .context("starting ferry run")?;
    let mut run = Guard(Some(run), "ferry run");
    let run_json = state.join("run.json");
    let started = Instant::now();
    let rf = loop {
        if let Some(rf) = RunFile::read_live(&run_json) {
            break rf;
        }
        if let Some(c) = run.0.as_mut()
            && let Ok(Some(status)) = c.try_wait()
        {
            bail!("ferry run exited early ({status})");
        }
        if started.elapsed() > Duration::from_secs(60) {
            bail!("ferry run did not come up within 60 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let watch_until = Instant::now() + Duration::from_secs(args.seconds);
    // Rows written into PostgreSQL (inserted, updated, deleted) per second, and each table's
    // rows there, beside ferry's own positions.
    let written = "SELECT coalesce(sum(n_tup_ins + n_tup_upd + n_tup_del), 0) FROM pg_stat_user_tables WHERE schemaname = 'public'";
    let counts = "SELECT string_agg(format('%s %s', c.relname, (xpath('/row/n/text()', query_to_xml(format('SELECT count(*) AS n FROM public.%I', c.relname), false, true, '')))[1]), ', ' ORDER BY c.relname) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'public' AND c.relkind = 'r'";
    let mut last = (Instant::now(), 0u64);
    while Instant::now() < watch_until {
        std::thread::sleep(Duration::from_secs(1));
        if let Ok((200, _, body)) = crate::admin::http_get(&rf.admin_addr, "/status", None)
            && let Ok(report) = serde_json::from_str::<crate::status::StatusReport>(&body)
            && let Some(s) = report.sources.first()
        {
            let rows: u64 = server
                .psql("demo", written)
                .ok()
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(last.1);
            let rate = rows.saturating_sub(last.1) as f64 / last.0.elapsed().as_secs_f64();
            last = (Instant::now(), rows);
            let tables = server.psql("demo", counts).unwrap_or_default();
            println!(
                "   {:<12} lag {:>5} records / {:>5.2} s  {:>6.0} rows/s  PostgreSQL: {}",
                format!("{:?}", s.state).to_lowercase(),
                s.lag_records,
                s.lag_seconds,
                rate,
                tables.trim()
            );
            if let Some(e) = &s.last_error {
                bail!("ferry run reports an error: {e}");
            }
        }
    }

    // 4. verify while the application writes
    println!("4. ferry verify (the application is still writing)");
    let st = Command::new(&exe)
        .args(["verify", "--source"])
        .arg(&db)
        .arg("--target")
        .arg(&target)
        .arg("--state-dir")
        .arg(&state)
        .status()?;
    match st.code() {
        Some(0) => println!("   equal"),
        Some(1) => bail!("verify found differences"),
        _ => bail!("verify failed ({st})"),
    }

    // 5. cutover; the switch command moves the application to PostgreSQL (SIGUSR1: the
    // sample application reconnects there and keeps writing; a real one would be restarted
    // with its PostgreSQL configuration).
    println!("5. ferry cutover");
    let app_pid = app.0.as_ref().map(|c| c.id()).unwrap_or(0);
    let st = Command::new(&exe)
        .args(["cutover", "--state-dir"])
        .arg(&state)
        .arg("--then")
        .arg(format!("kill -USR1 {app_pid}"))
        .status()?;
    if !st.success() {
        bail!("cutover failed ({st})");
    }
    std::thread::sleep(Duration::from_secs(1));
    if let Some(c) = app.0.take() {
        // SAFETY: signalling our own child; it stops between transactions.
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        let out = c.wait_with_output()?;
        let summary: serde_json::Value =
            serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
        println!(
            "   the application's own view: {} commits on SQLite, then {} on PostgreSQL; its longest stall {:.1} ms",
            summary["commits"]
                .as_u64()
                .unwrap_or(0)
                .saturating_sub(summary["pg_commits"].as_u64().unwrap_or(0)),
            summary["pg_commits"],
            summary["longest_stall_ms"].as_f64().unwrap_or(f64::NAN)
        );
    }

    // 6. PostgreSQL carries on
    let id = server
        .psql("demo", "INSERT INTO users (email, name) VALUES ('after-cutover@example.com', 'New on PostgreSQL') RETURNING id")
        .context("inserting into PostgreSQL after the cutover")?;
    println!(
        "6. PostgreSQL takes new writes: users.id {} assigned by its identity",
        id.trim()
    );

    if args.keep {
        let pid = run.0.as_ref().map(|c| c.id()).unwrap_or(0);
        println!(
            "\n--keep: everything stays up.\n  psql {target}\n  ferry status --state-dir {}\n  ferry run pid {pid}; PostgreSQL data in {}",
            state.display(),
            server.data_dir().display()
        );
        std::mem::forget(run);
        std::mem::forget(server);
        let _ = work.keep();
        return Ok(ExitCode::SUCCESS);
    }
    drop(run);
    drop(server);
    println!(
        "\ndone; everything cleaned up. Try it on your own application: ferry run --source <your.db> --target <postgres-url> --state-dir <dir>"
    );
    Ok(ExitCode::SUCCESS)
}
