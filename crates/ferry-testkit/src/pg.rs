//! A fresh PostgreSQL database per test.
//!
//! One server per test process: the server `FERRY_TEST_PG_URL` names (the test command starts
//! one and exports it, since cargo-nextest runs every test in its own process and an initdb
//! per test would be slow), or else a throwaway server started from the installed binaries on
//! first use and stopped when the process exits. Every [`TestDb`] is a new, uniquely named
//! database on that server, dropped (with `FORCE`) when the `TestDb` is dropped, so tests run
//! in parallel without seeing each other. If there is neither a URL nor server binaries, the
//! test fails with the message that says how to install them — it never skips silently.

use ferry_pgserver::{LocalServer, ServerOptions};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};
use tokio_postgres::NoTls;

static SERVER: OnceLock<Result<String, String>> = OnceLock::new();
static OWNED_SERVER: Mutex<Option<LocalServer>> = Mutex::new(None);
static COUNTER: AtomicU32 = AtomicU32::new(0);

extern "C" fn stop_owned_server() {
    if let Ok(mut guard) = OWNED_SERVER.lock()
        && let Some(mut s) = guard.take()
    {
        s.stop();
    }
}

/// The base URL (of the maintenance database `postgres`) of this process's test server.
pub fn server_url() -> String {
    let r = SERVER.get_or_init(|| {
        if let Ok(url) = std::env::var("FERRY_TEST_PG_URL") {
            return Ok(url);
        }
        match LocalServer::start(ServerOptions::default()) {
            Ok(server) => {
                let url = server.url("postgres");
                *OWNED_SERVER.lock().unwrap_or_else(|e| e.into_inner()) = Some(server);
                // SAFETY: registering a plain extern "C" function with no captured state.
                unsafe { libc::atexit(stop_owned_server) };
                Ok(url)
            }
            Err(e) => Err(format!(
                "cannot start a throwaway PostgreSQL for the tests: {e}"
            )),
        }
    });
    match r {
        Ok(u) => u.clone(),
        Err(e) => panic!("{e}"),
    }
}

/// Replaces the database name in a libpq URL.
pub fn with_database(url: &str, db: &str) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some((s, r)) => (s, r),
        None => return format!("{url} dbname={db}"),
    };
    let (authority, query) = match rest.split_once('?') {
        Some((a, q)) => (a, Some(q)),
        None => (rest, None),
    };
    let host_part = authority.split('/').next().unwrap_or(authority);
    match query {
        Some(q) => format!("{scheme}://{host_part}/{db}?{q}"),
        None => format!("{scheme}://{host_part}/{db}"),
    }
}

/// A fresh database, dropped when this value is dropped.
pub struct TestDb {
    name: String,
    url: String,
    admin_url: String,
}

/// The columns of `table` (a name as `regclass` reads it: `public.items`, `"S"."T"`), as
/// (name, type as `format_type` writes it), in column order.
pub async fn table_columns(client: &tokio_postgres::Client, table: &str) -> Vec<(String, String)> {
    client
        .query(
            "SELECT attname::text, format_type(atttypid, atttypmod) FROM pg_attribute
             WHERE attrelid = $1::text::regclass AND attnum > 0 AND NOT attisdropped
             ORDER BY attnum",
            &[&table],
        )
        .await
        .unwrap_or_else(|e| panic!("columns of {table}: {e}"))
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

impl TestDb {
    pub async fn new() -> TestDb {
        let admin_url = server_url();
        let name = format!(
            "ferry_test_{}_{}_{:08x}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed),
            rand::random::<u32>()
        );
        let (client, conn) = tokio_postgres::connect(&admin_url, NoTls)
            .await
            .unwrap_or_else(|e| panic!("connecting to the test server {admin_url}: {e}"));
        let task = tokio::spawn(conn);
        client
            .batch_execute(&format!("CREATE DATABASE \"{name}\""))
            .await
            .unwrap_or_else(|e| panic!("CREATE DATABASE {name}: {e}"));
        drop(client);
        let _ = task.await;
        let url = with_database(&admin_url, &name);
        TestDb {
            name,
            url,
            admin_url,
        }
    }

    /// For synchronous tests: creates the database on a private runtime.
    pub fn new_blocking() -> TestDb {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("tokio runtime: {e}"));
        rt.block_on(TestDb::new())
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// libpq URL of this database.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// libpq URL of the server's maintenance database (for CREATE ROLE and the like).
    pub fn admin_url(&self) -> &str {
        &self.admin_url
    }

    pub fn config(&self) -> tokio_postgres::Config {
        self.url
            .parse()
            .unwrap_or_else(|e| panic!("test URL {} does not parse: {e}", self.url))
    }

    /// A client connected to this database (its connection task runs on the current runtime).
    pub async fn connect(&self) -> tokio_postgres::Client {
        let (client, conn) = tokio_postgres::connect(&self.url, NoTls)
            .await
            .unwrap_or_else(|e| panic!("connecting to {}: {e}", self.url));
        tokio::spawn(async move {
            let _ = conn.await;
        });
        client
    }
}

impl TestDb {
    /// A client for synchronous tests, on a private runtime.
    pub fn connect_blocking(&self) -> BlockingClient {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("tokio runtime: {e}"));
        let client = rt.block_on(self.connect());
        BlockingClient { rt, client }
    }
}

/// A PostgreSQL client for synchronous tests: every call panics with the SQL on failure.
pub struct BlockingClient {
    rt: tokio::runtime::Runtime,
    client: tokio_postgres::Client,
}

impl BlockingClient {
    /// Runs statements; returns the rows affected by the last one.
    pub fn execute(&mut self, sql: &str) -> u64 {
        self.rt
            .block_on(self.client.execute(sql, &[]))
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    /// The first column of the one row `sql` returns, as an i64 (NULL: panics).
    pub fn query_i64(&mut self, sql: &str) -> i64 {
        self.rt
            .block_on(self.client.query_one(sql, &[]))
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
            .get(0)
    }

    pub fn client(&self) -> &tokio_postgres::Client {
        &self.client
    }

    pub fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let admin = self.admin_url.clone();
        let name = self.name.clone();
        // Drop may run inside a runtime; do the blocking work on a thread of its own.
        let dropper = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                if let Ok((client, conn)) = tokio_postgres::connect(&admin, NoTls).await {
                    tokio::spawn(conn);
                    let _ = client
                        .batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                        .await;
                }
            });
        });
        let _ = dropper.join();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_database_replacement() {
        assert_eq!(
            with_database("postgresql://u@h:5/postgres?sslmode=disable", "x"),
            "postgresql://u@h:5/x?sslmode=disable"
        );
        assert_eq!(with_database("postgres://h", "x"), "postgres://h/x");
    }

    #[tokio::test]
    async fn fresh_databases_are_separate_and_dropped() {
        let a = TestDb::new().await;
        let b = TestDb::new().await;
        assert_ne!(a.name(), b.name());
        let ca = a.connect().await;
        ca.batch_execute("CREATE TABLE t (id int)").await.unwrap();
        let cb = b.connect().await;
        let n: i64 = cb
            .query_one("SELECT count(*) FROM pg_tables WHERE tablename = 't'", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 0, "database b sees a's table");
        let name = a.name().to_string();
        drop(ca);
        drop(a);
        let exists: i64 = cb
            .query_one(
                "SELECT count(*) FROM pg_database WHERE datname = $1",
                &[&name],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(exists, 0, "database {name} not dropped");
    }
}
