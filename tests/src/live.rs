//! A live `ferry run` process and what the tests ask it: `/status` through `ferry status`,
//! `/metrics` over HTTP the way Prometheus asks, a clean stop with SIGTERM.

use crate::{SampleApp, expect_exit, ferry, wait_until};
use std::ffi::OsStr;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// The `Accept` header Prometheus sends when it scrapes.
pub const PROMETHEUS_ACCEPT: &str = "application/openmetrics-text;version=1.0.0;q=0.5,application/openmetrics-text;version=0.0.1;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2";

pub struct FerryRun {
    child: Option<Child>,
    pub state: PathBuf,
}

impl FerryRun {
    /// `ferry run --state-dir <state> --admin-addr 127.0.0.1:0 <args…>`; waits for `run.json`.
    pub fn start<I, S>(state: &Path, args: I) -> FerryRun
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        FerryRun::start_with_env(state, args, std::iter::empty::<(&str, &str)>())
    }

    /// [`FerryRun::start`] with extra environment variables (`FERRY_…`).
    pub fn start_with_env<I, S, E, K, V>(state: &Path, args: I, env: E) -> FerryRun
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
        E: IntoIterator<Item = (K, V)>,
        K: AsRef<OsStr>,
        V: AsRef<OsStr>,
    {
        let child = ferry()
            .arg("run")
            .arg("--state-dir")
            .arg(state)
            .args(["--admin-addr", "127.0.0.1:0"])
            .args(args)
            .envs(env)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("starting ferry run: {e}"));
        let mut run = FerryRun {
            child: Some(child),
            state: state.to_path_buf(),
        };
        let run_json = state.join("run.json");
        let deadline = Instant::now() + Duration::from_secs(60);
        while !run_json.is_file() {
            if let Some(c) = run.child.as_mut()
                && let Ok(Some(st)) = c.try_wait()
            {
                panic!("ferry run exited early: {st}");
            }
            assert!(
                Instant::now() < deadline,
                "ferry run did not write run.json"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        run
    }

    /// One SQLite source, create mode.
    pub fn sqlite(db: &Path, target: &str, state: &Path) -> FerryRun {
        FerryRun::start(
            state,
            [
                OsStr::new("--source"),
                db.as_os_str(),
                OsStr::new("--target"),
                OsStr::new(target),
            ],
        )
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    pub fn admin_addr(&self) -> String {
        let text = std::fs::read_to_string(self.state.join("run.json"))
            .unwrap_or_else(|e| panic!("run.json: {e}"));
        let v: serde_json::Value =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("run.json {text:?}: {e}"));
        v["admin_addr"]
            .as_str()
            .unwrap_or_else(|| panic!("run.json without admin_addr: {text}"))
            .to_string()
    }

    /// `ferry status --json`: (exit code, report).
    pub fn status(&self) -> (i32, serde_json::Value) {
        status_of(&self.state)
    }

    /// The first source's entry of the status report.
    pub fn source_status(&self) -> serde_json::Value {
        self.status().1["sources"][0].clone()
    }

    /// Waits until every source streams, capture has read each SQLite source to its end
    /// after this call began (so call it once the writers stopped), and PostgreSQL has
    /// applied everything captured. Without the read-to-the-end condition, captured ==
    /// shipped can hold for a moment before capture's next poll sees the last commits.
    pub fn wait_caught_up(&self, timeout: Duration) {
        let called_at = ferry_core::json::micros_to_rfc3339(ferry_core::now_micros());
        wait_until("ferry run to stream with no lag", timeout, || {
            let (_, r) = self.status();
            let sources = r["sources"].as_array().cloned().unwrap_or_default();
            !sources.is_empty()
                && sources.iter().all(|s| {
                    let read_to_end = s["kind"] != "sqlite"
                        || s["source_read_at"]
                            .as_str()
                            .is_some_and(|t| t >= called_at.as_str());
                    s["state"] == "streaming"
                        && read_to_end
                        && s["shipped_lsn"].as_u64() == s["captured_lsn"].as_u64()
                        && s["captured_lsn"].as_u64().unwrap_or(0) > 0
                })
        });
    }

    /// Waits until every source streams with at most a few records of lag: the condition to
    /// wait for while writers are still running (exact equality may never be observed then).
    pub fn wait_streaming(&self, timeout: Duration) {
        wait_until("ferry run to stream with little lag", timeout, || {
            let (_, r) = self.status();
            let sources = r["sources"].as_array().cloned().unwrap_or_default();
            !sources.is_empty()
                && sources.iter().all(|s| {
                    s["state"] == "streaming"
                        && s["shipped_lsn"].as_u64().unwrap_or(0) > 0
                        && s["lag_records"].as_u64().is_some_and(|l| l <= 100)
                })
        });
    }

    /// A scrape the way Prometheus does it: (content type, body).
    pub fn scrape(&self) -> (String, String) {
        let (code, ctype, body) = http_get(&self.admin_addr(), "/metrics", Some(PROMETHEUS_ACCEPT));
        assert_eq!(code, 200, "/metrics answered {code}: {body}");
        (ctype, body)
    }

    /// SIGTERM, then waits (up to 60 s) for the exit.
    pub fn stop(mut self) -> ExitStatus {
        let mut child = self
            .child
            .take()
            .unwrap_or_else(|| panic!("already stopped"));
        // SAFETY: signalling our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(st)) = child.try_wait() {
                return st;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("ferry run did not stop within 60 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for FerryRun {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// `ferry status --state-dir <state> --json`: (exit code, report).
pub fn status_of(state: &Path) -> (i32, serde_json::Value) {
    let out = ferry()
        .args(["status", "--json", "--state-dir"])
        .arg(state)
        .output()
        .unwrap_or_else(|e| panic!("ferry status: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "ferry status --json printed {stdout:?} ({e}); stderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code().unwrap_or(-1), report)
}

/// A minimal HTTP/1.1 GET: (status, content type, body).
pub fn http_get(addr: &str, path: &str, accept: Option<&str>) -> (u16, String, String) {
    let mut s =
        std::net::TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
    let accept = accept
        .map(|a| format!("Accept: {a}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\n{accept}Connection: close\r\n\r\n"
    )
    .unwrap_or_else(|e| panic!("GET {path}: {e}"));
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)
        .unwrap_or_else(|e| panic!("GET {path}: {e}"));
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {head:?}"));
    let ctype = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-type")
                .then(|| v.trim().to_string())
        })
        .unwrap_or_default();
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    (code, ctype, body)
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// A sample application with extra arguments (e.g. `--checkpoint-every`).
pub fn start_app(db: &Path, rate: u64, seed: u64, extra: &[&str]) -> SampleApp {
    let child = ferry()
        .args([
            "sample-app",
            "--initial-users",
            "0",
            "--rate",
            &rate.to_string(),
            "--seed",
            &seed.to_string(),
        ])
        .args(extra)
        .arg("--db")
        .arg(db)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("starting sample-app: {e}"));
    SampleApp { child: Some(child) }
}

impl SampleApp {
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Waits for the application to exit by itself (e.g. stopped by a cutover's switch
    /// command) and returns its JSON summary.
    pub fn wait(mut self, timeout: Duration) -> serde_json::Value {
        let mut child = self
            .child
            .take()
            .unwrap_or_else(|| panic!("already stopped"));
        let deadline = Instant::now() + timeout;
        while child.try_wait().ok().flatten().is_none() {
            assert!(
                Instant::now() < deadline,
                "the sample application did not exit"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let out = child
            .wait_with_output()
            .unwrap_or_else(|e| panic!("sample-app: {e}"));
        let stdout = expect_exit(&out, 0, "sample-app");
        serde_json::from_str(stdout.trim())
            .unwrap_or_else(|e| panic!("sample-app summary {stdout:?}: {e}"))
    }
}
