//! A throwaway local PostgreSQL server, started from the installed server binaries.
//!
//! `ferry demo` and the test kit need a real PostgreSQL without asking the user to set one
//! up. This module finds the server binaries (`pg_config --bindir`, `PATH`,
//! `/usr/lib/postgresql/*/bin`, newest version first), runs `initdb` into a private
//! directory, and starts `postgres` itself (not `pg_ctl`, so the server is our child and
//! stopping it really stops it) on a free TCP port of 127.0.0.1 with a private unix socket
//! directory.
//!
//! PostgreSQL refuses to run as root; when we are root, `initdb` and `postgres` run as the
//! `postgres` OS user (uid/gid switched in the child, so signals reach the server itself, not
//! a wrapper such as `runuser` that would not forward them).
//!
//! Lifetime: [`LocalServer::stop`] (also on drop) sends SIGINT (fast shutdown), waits, then
//! SIGKILLs the process group, and removes the directory. So that a crashed owner does not
//! leave servers behind, the server is spawned from a thread that lives as long as the
//! process, with `PR_SET_PDEATHSIG`: when the owning process dies, the server is told to quit.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(
        "no PostgreSQL server binaries (initdb, postgres) found in `pg_config --bindir`, PATH or /usr/lib/postgresql/*/bin; install them with `apt-get install -y postgresql` (Debian/Ubuntu) or point FERRY_PG_BINDIR at the directory that holds them"
    )]
    BinariesNotFound,
    #[error(
        "running as root, but there is no `postgres` OS user to run the server as; create one (`useradd -r postgres`) or run ferry as an ordinary user"
    )]
    NoPostgresUser,
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("initdb failed (exit {status}); its output:\n{output}")]
    InitdbFailed { status: String, output: String },
    #[error(
        "the PostgreSQL server did not become ready within {secs} s; last lines of its log ({log}):\n{tail}"
    )]
    NotReady {
        secs: u64,
        log: PathBuf,
        tail: String,
    },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ServerError {
    let what = what.into();
    move |source| ServerError::Io { what, source }
}

/// Options for [`LocalServer::start`].
#[derive(Clone, Debug)]
pub struct ServerOptions {
    /// Keep durability on (`fsync=on`). Tests of exactly-once behaviour need it; the demo
    /// does not.
    pub fsync: bool,
    /// Extra `-c name=value` settings.
    pub settings: Vec<(String, String)>,
    /// Where to put the cluster; a fresh temporary directory when `None`.
    pub parent_dir: Option<PathBuf>,
    /// How long to wait for the server to accept connections.
    pub ready_timeout: Duration,
    /// Let the server outlive this process (`ferry demo --keep`). By default it is killed
    /// when the process that started it dies, so a crashed test leaves no server behind.
    pub outlive_parent: bool,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            fsync: true,
            settings: Vec::new(),
            parent_dir: None,
            ready_timeout: Duration::from_secs(60),
            outlive_parent: false,
        }
    }
}

/// A running throwaway PostgreSQL server. The superuser is `postgres` with trust
/// authentication on 127.0.0.1 and the private socket only.
#[derive(Debug)]
pub struct LocalServer {
    port: u16,
    dir: Option<tempfile::TempDir>,
    data_dir: PathBuf,
    socket_dir: PathBuf,
    bin_dir: PathBuf,
    pid: i32,
    exited: Option<mpsc::Receiver<()>>,
}

/// Finds the directory holding `initdb` and `postgres`.
pub fn find_bin_dir() -> Result<PathBuf, ServerError> {
    let has_server = |d: &Path| d.join("initdb").is_file() && d.join("postgres").is_file();
    if let Some(d) = std::env::var_os("FERRY_PG_BINDIR") {
        let d = PathBuf::from(d);
        if has_server(&d) {
            return Ok(d);
        }
    }
    if let Ok(out) = Command::new("pg_config")
        .arg("--bindir")
        .stderr(Stdio::null())
        .output()
        && out.status.success()
    {
        let d = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if has_server(&d) {
            return Ok(d);
        }
    }
    if let Some(path) = std::env::var_os("PATH") {
        for d in std::env::split_paths(&path) {
            if has_server(&d) {
                return Ok(d);
            }
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v: u32 = e.file_name().to_str()?.parse().ok()?;
            Some((v, e.path().join("bin")))
        })
        .filter(|(_, d)| has_server(d))
        .collect();
    versions.sort();
    versions
        .pop()
        .map(|(_, d)| d)
        .ok_or(ServerError::BinariesNotFound)
}

/// The uid/gid to run the server as: `postgres` when we are root, ourselves otherwise.
fn server_identity() -> Result<Option<(u32, u32)>, ServerError> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(None);
    }
    let name = c"postgres";
    // SAFETY: getpwnam reads a static buffer; we copy the two ids out immediately and do not
    // call it concurrently from this crate.
    let pw = unsafe { libc::getpwnam(name.as_ptr()) };
    if pw.is_null() {
        return Err(ServerError::NoPostgresUser);
    }
    // SAFETY: pw is non-null and points at a valid passwd struct.
    let (uid, gid) = unsafe { ((*pw).pw_uid, (*pw).pw_gid) };
    Ok(Some((uid, gid)))
}

fn chown(path: &Path, ids: Option<(u32, u32)>) -> Result<(), ServerError> {
    if let Some((uid, gid)) = ids {
        std::os::unix::fs::chown(path, Some(uid), Some(gid))
            .map_err(io(format!("chown {}", path.display())))?;
    }
    Ok(())
}

fn as_server_user(cmd: &mut Command, ids: Option<(u32, u32)>) {
    // std drops root's supplementary groups itself when it switches the uid.
    if let Some((uid, gid)) = ids {
        cmd.uid(uid).gid(gid);
    }
}

fn free_port() -> Result<u16, ServerError> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(io("looking for a free TCP port"))?;
    let port = l
        .local_addr()
        .map_err(io("looking for a free TCP port"))?
        .port();
    Ok(port)
}

impl LocalServer {
    /// initdb + start. Blocks until the server accepts connections.
    pub fn start(opts: ServerOptions) -> Result<LocalServer, ServerError> {
        let bin_dir = find_bin_dir()?;
        let ids = server_identity()?;
        let dir = match &opts.parent_dir {
            Some(p) => tempfile::Builder::new().prefix("ferry-pg-").tempdir_in(p),
            None => tempfile::Builder::new().prefix("ferry-pg-").tempdir(),
        }
        .map_err(io("creating a directory for the throwaway PostgreSQL"))?;
        let root = dir.path().to_path_buf();
        // The server user must be able to reach its directory even when the temp parent is
        // root's private one.
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755))
            .map_err(io(format!("chmod {}", root.display())))?;
        chown(&root, ids)?;
        let data_dir = root.join("data");
        let socket_dir = root.join("socket");
        std::fs::create_dir(&socket_dir).map_err(io("creating the socket directory"))?;
        chown(&socket_dir, ids)?;

        let mut initdb = Command::new(bin_dir.join("initdb"));
        initdb
            .arg("-D")
            .arg(&data_dir)
            .args([
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ])
            .current_dir(&root)
            .stdin(Stdio::null());
        as_server_user(&mut initdb, ids);
        let out = initdb
            .output()
            .map_err(io(format!("running {}", bin_dir.join("initdb").display())))?;
        if !out.status.success() {
            return Err(ServerError::InitdbFailed {
                status: out.status.to_string(),
                output: format!(
                    "{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                ),
            });
        }

        let mut server = LocalServer {
            port: 0,
            dir: Some(dir),
            data_dir,
            socket_dir,
            bin_dir,
            pid: 0,
            exited: None,
        };
        let mut last_err = None;
        // The probed port can be taken between the probe and the server's bind: retry.
        for _attempt in 0..5 {
            server.port = free_port()?;
            let (pid, exited) = Self::spawn_postgres(
                &server.bin_dir,
                &server.data_dir,
                &server.socket_dir,
                &root,
                server.port,
                &opts,
                ids,
            )?;
            server.pid = pid;
            server.exited = Some(exited);
            match server.wait_ready(opts.ready_timeout) {
                Ok(()) => return Ok(server),
                Err(e) => {
                    server.kill_and_wait();
                    last_err = Some(e);
                }
            }
        }
        Err(last_err.unwrap_or(ServerError::BinariesNotFound))
    }

    fn spawn_postgres(
        bin_dir: &Path,
        data_dir: &Path,
        socket_dir: &Path,
        root: &Path,
        port: u16,
        opts: &ServerOptions,
        ids: Option<(u32, u32)>,
    ) -> Result<(i32, mpsc::Receiver<()>), ServerError> {
        let log_path = root.join("postgres.log");
        let log = std::fs::File::create(&log_path)
            .map_err(io(format!("creating {}", log_path.display())))?;
        chown(&log_path, ids)?;
        let log2 = log
            .try_clone()
            .map_err(io("duplicating the log descriptor"))?;
        let mut cmd = Command::new(bin_dir.join("postgres"));
        cmd.arg("-D")
            .arg(data_dir)
            .arg("-p")
            .arg(port.to_string())
            .arg("-k")
            .arg(socket_dir)
            .args(["-c", "listen_addresses=127.0.0.1"])
            .args([
                "-c",
                &format!("fsync={}", if opts.fsync { "on" } else { "off" }),
            ])
            .args(["-c", "max_connections=200"])
            .args(["-c", "shared_buffers=64MB"])
            .args(["-c", "max_wal_size=1GB"]);
        for (k, v) in &opts.settings {
            cmd.arg("-c").arg(format!("{k}={v}"));
        }
        cmd.current_dir(root)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log2))
            .process_group(0);
        as_server_user(&mut cmd, ids);
        let outlive_parent = opts.outlive_parent;
        // SAFETY: prctl is async-signal-safe; it runs in the child before exec.
        unsafe {
            cmd.pre_exec(move || {
                if outlive_parent {
                    return Ok(());
                }
                libc::prctl(
                    libc::PR_SET_PDEATHSIG,
                    libc::SIGQUIT as libc::c_ulong,
                    0,
                    0,
                    0,
                );
                Ok(())
            });
        }
        // PDEATHSIG fires when the *thread* that forked dies, so fork from a thread that lives
        // until the server has exited.
        let (pid_tx, pid_rx) = mpsc::channel::<Result<i32, std::io::Error>>();
        let (exit_tx, exit_rx) = mpsc::channel::<()>();
        std::thread::Builder::new()
            .name(format!("postgres-{port}"))
            .spawn(move || match cmd.spawn() {
                Ok(mut child) => {
                    let _ = pid_tx.send(Ok(child.id() as i32));
                    let _ = wait_child(&mut child);
                    let _ = exit_tx.send(());
                }
                Err(e) => {
                    let _ = pid_tx.send(Err(e));
                }
            })
            .map_err(io("starting the server supervisor thread"))?;
        let pid = pid_rx
            .recv()
            .map_err(|_| ServerError::Io {
                what: "starting postgres".into(),
                source: std::io::Error::other("supervisor thread ended"),
            })?
            .map_err(io(format!(
                "starting {}",
                bin_dir.join("postgres").display()
            )))?;
        Ok((pid, exit_rx))
    }

    fn wait_ready(&mut self, timeout: Duration) -> Result<(), ServerError> {
        let deadline = Instant::now() + timeout;
        let pid_file = self.data_dir.join("postmaster.pid");
        loop {
            // postmaster.pid line 8 says "ready" once the server accepts connections. Line 1
            // must be the server we started: a killed server leaves its file behind, still
            // saying "ready".
            if let Ok(f) = std::fs::File::open(&pid_file) {
                let lines: Vec<String> = BufReader::new(f).lines().map_while(Result::ok).collect();
                let ours = lines
                    .first()
                    .and_then(|l| l.trim().parse::<i32>().ok())
                    .is_some_and(|pid| pid == self.pid);
                if ours && lines.get(7).is_some_and(|l| l.trim() == "ready") {
                    return Ok(());
                }
            }
            let exited = self.exited.as_ref().is_some_and(|rx| rx.try_recv().is_ok());
            if exited || Instant::now() > deadline {
                if exited {
                    self.exited = None;
                }
                let log = self.log_path();
                let tail = std::fs::read_to_string(&log)
                    .map(|s| {
                        s.lines()
                            .rev()
                            .take(20)
                            .collect::<Vec<_>>()
                            .into_iter()
                            .rev()
                            .collect::<Vec<_>>()
                            .join("\n")
                    })
                    .unwrap_or_default();
                return Err(ServerError::NotReady {
                    secs: timeout.as_secs(),
                    log,
                    tail,
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn socket_dir(&self) -> &Path {
        &self.socket_dir
    }

    pub fn bin_dir(&self) -> &Path {
        &self.bin_dir
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    pub fn log_path(&self) -> PathBuf {
        self.data_dir
            .parent()
            .map_or_else(|| PathBuf::from("postgres.log"), |p| p.join("postgres.log"))
    }

    /// A libpq URL for `database` as the superuser `postgres` over TCP.
    pub fn url(&self, database: &str) -> String {
        format!("postgresql://postgres@127.0.0.1:{}/{}", self.port, database)
    }

    /// Stops the server (fast shutdown, then SIGKILL after 10 s) and removes its files.
    pub fn stop(&mut self) {
        if self.exited.is_some() {
            // SAFETY: kill with a pid we spawned; harmless if it already exited.
            unsafe { libc::kill(self.pid, libc::SIGINT) };
            let done = self
                .exited
                .as_ref()
                .is_some_and(|rx| rx.recv_timeout(Duration::from_secs(10)).is_ok());
            if !done {
                self.kill_and_wait();
            }
            self.exited = None;
        }
        if let Some(d) = self.dir.take() {
            let _ = d.close();
        }
    }

    /// Kills the server hard (SIGKILL to its process group), as a crash would. The data
    /// directory stays; [`LocalServer::restart`] starts it again on the same port.
    pub fn kill_and_wait(&mut self) {
        // SAFETY: the server runs in its own process group whose id is its pid.
        unsafe { libc::kill(-self.pid, libc::SIGKILL) };
        if let Some(rx) = self.exited.take() {
            let _ = rx.recv_timeout(Duration::from_secs(10));
        }
        // The postmaster's exit is not the end of its children: a backend that has not yet
        // exited still holds the shared memory, and a new postmaster on this data directory
        // then refuses to start ("pre-existing shared memory block is still in use").
        // A backend forked while the group was being killed can miss the signal: kill the
        // group again for as long as anything of it runs.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while group_has_live_process(self.pid) && std::time::Instant::now() < deadline {
            // SAFETY: as above.
            unsafe { libc::kill(-self.pid, libc::SIGKILL) };
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Stops the server with a fast shutdown and keeps its data, so it can be restarted.
    pub fn shutdown_keep_data(&mut self) {
        if let Some(rx) = self.exited.take() {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(self.pid, libc::SIGINT) };
            if rx.recv_timeout(Duration::from_secs(10)).is_err() {
                // SAFETY: as above.
                unsafe { libc::kill(-self.pid, libc::SIGKILL) };
                let _ = rx.recv_timeout(Duration::from_secs(10));
            }
        }
    }

    /// Starts a stopped or killed server again on the same port and data directory.
    pub fn restart(&mut self) -> Result<(), ServerError> {
        if self.exited.is_some() {
            self.shutdown_keep_data();
        }
        let ids = server_identity()?;
        let root = self
            .data_dir
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        let (pid, exited) = Self::spawn_postgres(
            &self.bin_dir,
            &self.data_dir,
            &self.socket_dir,
            &root,
            self.port,
            &ServerOptions::default(),
            ids,
        )?;
        self.pid = pid;
        self.exited = Some(exited);
        self.wait_ready(Duration::from_secs(60))
    }

    /// Runs `psql`-like SQL through the server's own `psql` binary; used by setup scripts and
    /// the demo. Returns stdout.
    pub fn psql(&self, database: &str, sql: &str) -> Result<String, ServerError> {
        let out = Command::new(self.bin_dir.join("psql"))
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d"])
            .arg(self.url(database))
            .arg("-c")
            .arg(sql)
            .output()
            .map_err(io("running psql"))?;
        if !out.status.success() {
            return Err(ServerError::Io {
                what: format!("psql -c {sql:?}"),
                source: std::io::Error::other(String::from_utf8_lossy(&out.stderr).into_owned()),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

/// Whether a process of process group `pgid` still runs (zombies, which hold no shared
/// memory, do not count; whoever reaps them is not ours to wait for).
fn group_has_live_process(pgid: i32) -> bool {
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return false;
    };
    procs.flatten().any(|e| {
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            return false;
        };
        // Fields after the command name, which is in parentheses and may contain spaces:
        // state, ppid, pgrp, ...
        let Some(after) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
            return false;
        };
        let mut f = after.split_whitespace();
        let (state, _ppid, pgrp) = (f.next(), f.next(), f.next());
        state != Some("Z") && pgrp.and_then(|p| p.parse::<i32>().ok()) == Some(pgid)
    })
}

fn wait_child(child: &mut Child) -> std::io::Result<()> {
    child.wait().map(|_| ())
}

impl Drop for LocalServer {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn killed_means_every_process_gone_and_it_restarts_at_once() {
        let mut server = LocalServer::start(ServerOptions {
            fsync: false,
            ..ServerOptions::default()
        })
        .unwrap();
        // A client session: one more backend that must be gone too.
        let mut session = std::process::Command::new(server.bin_dir.join("psql"))
            .args(["-X", "-q", "-d"])
            .arg(server.url("postgres"))
            .args(["-c", "select pg_sleep(30)"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(300));
        let pid = server.pid;
        server.kill_and_wait();
        assert!(
            !group_has_live_process(pid),
            "a process of the killed server still runs"
        );
        server.restart().unwrap();
        let out = server.psql("postgres", "select 1").unwrap();
        assert_eq!(out.trim(), "1");
        let _ = session.kill();
        let _ = session.wait();
    }

    #[test]
    fn starts_answers_and_really_stops() {
        let mut server = LocalServer::start(ServerOptions {
            fsync: false,
            ..ServerOptions::default()
        })
        .unwrap();
        let out = server.psql("postgres", "select 40 + 2").unwrap();
        assert_eq!(out.trim(), "42");
        let pid = server.pid;
        let dir = server.data_dir().to_path_buf();
        server.stop();
        // SAFETY: signal 0 only checks for existence.
        let alive = unsafe { libc::kill(pid, 0) } == 0;
        assert!(!alive, "postgres {pid} still running after stop");
        assert!(
            !dir.exists(),
            "data directory {} not removed",
            dir.display()
        );
    }
}
