//! Capture for Rust programs that embed sled (0.34.7).
//!
//! sled 0.34 takes an exclusive lock on its database, so no other process can read it while
//! the application runs: capture happens inside the application, as this library. The
//! application writes through [`CapturedDb`] / [`CapturedTree`] (or records its own sled
//! transactions with [`TxRecorder`]); a background thread, the mover, appends the changes to
//! the source's durable log at `<state-dir>/sources/<source-id>/log`, from which `ferry ship`
//! replays them into PostgreSQL like any other source.
//!
//! ```text
//!  application ── CapturedTree::insert/remove/merge/cas, CapturedDb::transaction ──┐
//!                                                                                   ▼
//!     one sled transaction: data trees + "__ferry_outbox" entry <seq> (net changes)
//!                                                                                   │ mover thread
//!                                                                                   ▼
//!     sled flush → log.append_batch(Transaction{SledOutbox{seq}}…) → delete entries
//! ```
//!
//! Invariants (each module's design comment says how it keeps them):
//! - a write and its outbox entry commit in one sled transaction ([`outbox`], `db`);
//! - outbox sequence numbers are dense and strictly increasing in commit order, one entry per
//!   transaction, so per-key order and transaction atomicity carry over to the log;
//! - the log never holds an entry sled could still lose (sled is flushed first) and never
//!   holds one twice (restart resumes after the log's last `SledOutbox { seq }`);
//! - the log starts with a snapshot of every tree at an outbox position `P`, followed by
//!   exactly the entries after `P` (`snapshot`);
//! - memory is bounded: the mover works in bounded batches; writers wait when the outbox
//!   holds [`CaptureOptions::outbox_limit`] entries (default [`DEFAULT_OUTBOX_LIMIT`]) —
//!   while the initial snapshot runs, [`CaptureOptions::snapshot_outbox_bytes`] bytes — and
//!   fail with [`CaptureError::Backpressure`] after
//!   [`CaptureOptions::backpressure_timeout`].
//!
//! Not captured: writes made directly on the `sled::Db`/`sled::Tree` (bypassing the
//! wrappers), `Db::drop_tree`, `Tree::clear`, `fetch_and_update`/`update_and_fetch` (use
//! [`CapturedDb::transaction`]). sled 0.34's known space growth under insert/delete churn
//! (spacejam/sled#1333) applies to the outbox tree too.

mod db;
pub mod decoder;
mod error;
mod mover;
pub mod outbox;
mod sink;
mod snapshot;
mod source_meta;

pub use db::{
    Batch, CaptureOptions, CapturedDb, CapturedTransaction, CapturedTree, CapturedTxTree,
    DEFAULT_BACKPRESSURE_TIMEOUT, DEFAULT_MOVER_INTERVAL, DEFAULT_OUTBOX_LIMIT,
    DEFAULT_SNAPSHOT_OUTBOX_BYTES, MAX_ENTRY_BYTES, MergeFn, TransactionError, TxError, TxOpError,
    TxRecorder, abort,
};
pub use decoder::{BytesDecoder, DecoderError, JsonTextDecoder, TreeDecoder};
pub use error::CaptureError;
pub use mover::{NON_UTF8_TREE_PREFIX, tree_name};
pub use sink::{DurableSink, MemorySink};

use db::{Handle, Shared};
use ferry_core::SourceId;
use ferry_core::state_dir::{StateDir, sanitize_source_id};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

impl CapturedDb {
    /// Opens (or creates) the sled database at `path` and captures it into the log of
    /// `state_dir` (`<state_dir>/sources/<source-id>/log`, the source id defaulting to the
    /// database directory's name). Starts the mover, which takes the initial snapshot if the
    /// log has none.
    pub fn open(
        path: impl AsRef<Path>,
        state_dir: impl AsRef<Path>,
        opts: CaptureOptions,
    ) -> Result<CapturedDb, CaptureError> {
        let db = open_waiting_for_lock(path.as_ref(), LOCK_WAIT)?;
        CapturedDb::with_db(db, path, state_dir, opts)
    }

    /// Like [`CapturedDb::open`], for a database the application opened itself (with its own
    /// `sled::Config`); `path` is the directory it was opened at.
    pub fn with_db(
        db: sled::Db,
        path: impl AsRef<Path>,
        state_dir: impl AsRef<Path>,
        opts: CaptureOptions,
    ) -> Result<CapturedDb, CaptureError> {
        let path = absolute(path.as_ref())?;
        let state_dir = StateDir::new(state_dir.as_ref());
        let id = match &opts.source_id {
            Some(id) => SourceId(sanitize_source_id(id.as_str())),
            None => default_source_id(&path),
        };
        source_meta::ensure(&state_dir, &id, &path)?;
        let log = ferry_log::Log::open(
            &state_dir.log_dir(&id),
            &log_identity(&path),
            ferry_log::LogOptions::default(),
        )?;
        let mut opts = opts;
        opts.snapshot_staging
            .get_or_insert_with(|| state_dir.capture_dir(&id).join("snapshot"));
        CapturedDb::with_sink(db, log, opts)
    }

    /// Captures `db` into any [`DurableSink`] (for tests of the library, or a log of the
    /// application's own). Without [`CaptureOptions::snapshot_staging`], a crash inside the
    /// initial snapshot leaves an unfinished snapshot in the sink (see the `snapshot` module).
    pub fn with_sink(
        db: sled::Db,
        sink: impl DurableSink,
        opts: CaptureOptions,
    ) -> Result<CapturedDb, CaptureError> {
        let staging = opts
            .snapshot_staging
            .clone()
            .map(|dir| snapshot::SnapshotStaging {
                dir,
                identity: "ferry-sled snapshot staging".to_string(),
            });
        let shared = Arc::new(Shared::new(db, opts)?);
        let mover = mover::Mover::new(shared.clone(), sink, staging);
        let join = std::thread::Builder::new()
            .name("ferry-sled-mover".into())
            .spawn(move || mover.run())
            .map_err(CaptureError::Spawn)?;
        Ok(CapturedDb {
            handle: Arc::new(Handle {
                shared,
                mover: Mutex::new(Some(join)),
            }),
        })
    }
}

/// The identity the source's log is created with (and checked against on every open).
pub fn log_identity(db_path: &Path) -> String {
    format!("sled:{}", db_path.display())
}

/// The source id of a sled database directory: its name, restricted to `[A-Za-z0-9_.-]`.
pub fn default_source_id(db_path: &Path) -> SourceId {
    let name = db_path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "sled".to_string());
    SourceId(sanitize_source_id(&name))
}

fn absolute(path: &Path) -> Result<PathBuf, CaptureError> {
    std::path::absolute(path).map_err(|source| CaptureError::StateDir {
        path: path.to_path_buf(),
        source,
    })
}

/// How long [`CapturedDb::open`] waits for sled's file lock. sled releases it only when its
/// background flusher lets go of the last handle, some time after the application dropped its
/// `Db`: an in-process reopen (an application restarting its storage, a test) would otherwise
/// fail at random.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

fn open_waiting_for_lock(path: &Path, wait: std::time::Duration) -> Result<sled::Db, CaptureError> {
    let deadline = std::time::Instant::now() + wait;
    let mut pause = std::time::Duration::from_millis(5);
    loop {
        match sled::Config::new().path(path).open() {
            Ok(db) => return Ok(db),
            Err(sled::Error::Io(e)) if is_lock_contention(&e) => {
                if std::time::Instant::now() >= deadline {
                    return Err(CaptureError::Locked {
                        path: path.to_path_buf(),
                        waited: wait,
                    });
                }
                std::thread::sleep(pause);
                pause = (pause * 2).min(std::time::Duration::from_millis(200));
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// sled reports a held lock as a custom `Other` error whose text names the lock (0.34.7,
/// `Config::try_lock`); the underlying `WouldBlock` survives only in that text.
fn is_lock_contention(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::WouldBlock
        || (e.kind() == std::io::ErrorKind::Other
            && e.to_string().contains("could not acquire lock"))
}

#[cfg(test)]
mod lock_tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn a_held_lock_is_waited_for_then_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("db");
        let holder = sled::open(&path).expect("open");
        let started = Instant::now();
        let err = open_waiting_for_lock(&path, Duration::from_millis(300)).expect_err("locked");
        assert!(started.elapsed() >= Duration::from_millis(300));
        assert!(matches!(err, CaptureError::Locked { .. }), "{err}");
        assert!(err.to_string().contains("stayed locked"), "{err}");

        // Released while we wait: the open succeeds.
        let release = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            drop(holder);
        });
        let db = open_waiting_for_lock(&path, Duration::from_secs(20)).expect("opens once free");
        release.join().expect("release thread");
        db.insert(b"k", b"v".to_vec()).expect("usable");
    }
}
