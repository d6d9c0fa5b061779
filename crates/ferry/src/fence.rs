//! The cutover fence: SQLite's own write lock, held by ferry so the application's writers
//! wait (a busy wait under their busy timeout, not an error) while the last transactions are
//! drained and PostgreSQL becomes authoritative.
//!
//! One of the three things ferry ever does to the application's database besides reading
//! (DESIGN.md). `BEGIN IMMEDIATE` takes the RESERVED lock (in WAL mode: the WAL write lock)
//! without writing anything; readers carry on. The connection sets
//! `SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE`, so releasing the fence can never checkpoint or delete
//! the WAL, and it is opened without `SQLITE_OPEN_CREATE`, so a wrong path is an error, not a
//! new empty database.
//!
//! Acquisition must not be starved by a hot writer: SQLite's default busy handler sleeps in
//! growing steps, during which the application's next transaction can slip in. We retry
//! `BEGIN IMMEDIATE` ourselves every ~100 µs until a deadline, so the lock is taken in the
//! first gap between two of the application's transactions.

use rusqlite::{Connection, OpenFlags, config::DbConfig};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum FenceError {
    #[error("opening {path} for the cutover fence: {source}")]
    Open {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error(
        "could not take SQLite's write lock on {path} within {waited:?}: the application kept it busy; retry the cutover"
    )]
    Timeout { path: PathBuf, waited: Duration },
    #[error("taking SQLite's write lock on {path}: {source}")]
    Lock {
        path: PathBuf,
        source: rusqlite::Error,
    },
}

/// A held write lock. Dropping it releases the lock (ROLLBACK of an empty transaction).
pub struct Fence {
    conn: Option<Connection>,
}

impl Fence {
    pub fn acquire(db: &Path, timeout: Duration) -> Result<Fence, FenceError> {
        let open_err = |source| FenceError::Open {
            path: db.into(),
            source,
        };
        let conn = Connection::open_with_flags(
            db,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(open_err)?;
        conn.set_db_config(DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, true)
            .map_err(open_err)?;
        // We poll ourselves; SQLite must return BUSY at once.
        conn.busy_timeout(Duration::ZERO).map_err(open_err)?;
        let start = Instant::now();
        loop {
            match conn.execute_batch("BEGIN IMMEDIATE") {
                Ok(()) => {
                    return Ok(Fence { conn: Some(conn) });
                }
                Err(e) if is_busy(&e) => {
                    if start.elapsed() >= timeout {
                        return Err(FenceError::Timeout {
                            path: db.into(),
                            waited: start.elapsed(),
                        });
                    }
                    std::thread::sleep(Duration::from_micros(100));
                }
                Err(source) => {
                    return Err(FenceError::Lock {
                        path: db.into(),
                        source,
                    });
                }
            }
        }
    }

    /// Releases the lock; the application's waiting writers proceed (also on drop).
    #[cfg(test)]
    pub fn release(mut self) {
        self.release_inner();
    }

    fn release_inner(&mut self) {
        if let Some(conn) = self.conn.take() {
            let _ = conn.execute_batch("ROLLBACK");
            let _ = conn.close();
        }
    }
}

impl Drop for Fence {
    fn drop(&mut self) {
        self.release_inner();
    }
}

fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db(dir: &Path) -> PathBuf {
        let p = dir.join("app.db");
        let c = Connection::open(&p).unwrap();
        c.pragma_update(None, "journal_mode", "wal").unwrap();
        c.execute_batch("CREATE TABLE t (x); INSERT INTO t VALUES (1);")
            .unwrap();
        p
    }

    #[test]
    fn writers_wait_while_fenced_and_proceed_after() {
        let d = tempfile::tempdir().unwrap();
        let p = db(d.path());
        let fence = Fence::acquire(&p, Duration::from_secs(5)).unwrap();
        let p2 = p.clone();
        let writer = std::thread::spawn(move || {
            let c = Connection::open(&p2).unwrap();
            c.busy_timeout(Duration::from_secs(10)).unwrap();
            let t = Instant::now();
            c.execute("INSERT INTO t VALUES (2)", []).unwrap();
            t.elapsed()
        });
        std::thread::sleep(Duration::from_millis(300));
        // Readers are not blocked by the fence.
        let r = Connection::open_with_flags(&p, OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
        let n: i64 = r
            .query_row("SELECT count(*) FROM t", [], |row| row.get(0))
            .unwrap();
        assert_eq!(n, 1, "the writer committed through the fence");
        fence.release();
        let waited = writer.join().unwrap();
        assert!(
            waited >= Duration::from_millis(250),
            "writer did not wait: {waited:?}"
        );
        let n: i64 = r
            .query_row("SELECT count(*) FROM t", [], |row| row.get(0))
            .unwrap();
        assert_eq!(n, 2);
        // Releasing the fence did not checkpoint away the WAL.
        assert!(p.with_extension("db-wal").exists());
    }

    #[test]
    fn a_missing_database_is_an_error_not_a_new_file() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("missing.db");
        assert!(matches!(
            Fence::acquire(&p, Duration::from_millis(10)),
            Err(FenceError::Open { .. })
        ));
        assert!(!p.exists());
    }

    #[test]
    fn times_out_against_a_held_lock() {
        let d = tempfile::tempdir().unwrap();
        let p = db(d.path());
        let holder = Connection::open(&p).unwrap();
        holder.execute_batch("BEGIN IMMEDIATE").unwrap();
        let e = Fence::acquire(&p, Duration::from_millis(50)).err().unwrap();
        assert!(matches!(e, FenceError::Timeout { .. }), "{e}");
    }
}
