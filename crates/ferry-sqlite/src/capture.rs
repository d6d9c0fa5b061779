//! The capture loop: initial snapshot, WAL tailing with hand-over-hand read transactions,
//! gap resync, rollback-journal polling, keeping the WAL bounded, and base copies.
//!
//! Invariants and why they hold:
//! - **Nothing committed is missed while ferry runs.** Two read-only-in-practice connections
//!   take turns holding a read transaction. A poll opens a read transaction on the idle
//!   connection, reads the WAL to its last commit frame, makes what it read durable, and only
//!   then ends the other connection's read transaction. While a read transaction is held,
//!   SQLite neither backfills frames past its read mark nor restarts the WAL if the mark is
//!   above 0, and with mark 0 it cannot backfill at all; so if a scan finds new salts while the
//!   previous reader was held, the old generation ended exactly where the last scan stopped
//!   (frames appended after that could not have been backfilled, and a restart needs them
//!   backfilled). `continuous` records that a reader has been held since the resume point was
//!   established; only then is a new generation read from its first frame.
//! - **Except while the WAL is let go.** Held readers starve SQLite's WAL restart, so when
//!   the WAL grows past a trigger ([`SqliteCapture::bound_wal`]), and while the application
//!   runs a blocking (FULL/RESTART/TRUNCATE) checkpoint that waits for ferry's read slot
//!   (`SqliteCapture::yield_to_checkpoint`), ferry holds no reader for a moment and proves
//!   continuity afterwards: with the wal-index's commit counter recorded at the release
//!   (commits counted since = commits still readable in the old generation's tail and the
//!   current generation; exact even after a TRUNCATE emptied the file), or, without a
//!   readable wal-index, from the salts (one restart = salt-1 plus one). A proof that fails
//!   is a resync, never a silent loss.
//! - **Anything else is a resync.** At start-up (no reader was held while ferry was down), a
//!   resume point that the WAL no longer proves (other salts, a missing or different frame)
//!   means the application may have checkpointed and restarted its WAL in between. Capture
//!   then compares every page of the database (file overlaid with the WAL's committed frames,
//!   read under a read transaction) with the shadow and decodes the differing pages as one
//!   transaction marked `resync`. The shadow equals the state the log describes (its journal
//!   is redone up to the log's last record on open), so nothing is lost or doubled.
//! - **One long-lived descriptor per file.** The database file and the `-wal` file are opened
//!   once and kept: closing any descriptor of the database file in this process would drop
//!   the POSIX locks SQLite holds through its own descriptors. The `-shm` file is opened once
//!   per process and never closed, only read and lock-probed (`F_OFD_GETLK`, which takes no
//!   lock; see [`crate::wal_index`]). Every connection sets `SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE`.
//! - **The source is never written** and ferry runs no checkpoints: keeping the WAL bounded
//!   only lets the application's own autocheckpoint complete.
//! - **Work per call is bounded**: [`SqliteCapture::step`] returns after about its budget
//!   (checked between batches), so a caller can stop, drain for a cutover, or take a base
//!   copy ([`SqliteCapture::write_base`]) while a writer outpaces capture.

use crate::decode::{DecodeError, Decoder, differing_pages};
use crate::format::wal::WalHeader;
use crate::format::{DbHeader, FormatError};
use crate::pages::{FilePages, Overlay, Page, PageError, PageSource, read_full_at};
use crate::shadow::{JournalEntry, ResumePoint, Shadow, ShadowError, ShadowState};
use crate::sink::{RecordSink, SinkError};
use crate::wal_index::{IndexHeader, WalIndex};
use crate::wal_tail::{
    ScanOutcome, ScanStart, WalTxn, count_commits, frame_salts, scan, scan_generation,
};
use ferry_core::{
    Lsn, Op, Record, SnapshotBegin, SnapshotEnd, SnapshotRows, SourcePosition, Transaction,
    now_micros,
};
use rusqlite::{Connection, OpenFlags};
use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("{path} is not a SQLite database: {source}")]
    NotADatabase {
        path: PathBuf,
        #[source]
        source: FormatError,
    },
    #[error("opening {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("I/O on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("SQLite on {path}: {source}")]
    Sqlite {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("decoding {path}: {source}")]
    Decode {
        path: PathBuf,
        #[source]
        source: DecodeError,
    },
    #[error(transparent)]
    Shadow(#[from] ShadowError),
    #[error(transparent)]
    Sink(#[from] SinkError),
    #[error(
        "{path} was replaced or deleted while ferry captured it (inode {was} is now {now}); the capture cannot continue against a different file"
    )]
    Replaced { path: PathBuf, was: u64, now: u64 },
    #[error(
        "capture state in {dir} is locked by another process (is another ferry capturing this source?)"
    )]
    Locked { dir: PathBuf },
    #[error(
        "no base copy of {path} can be written yet: capture has not taken its initial snapshot (call step first)"
    )]
    NoSnapshotYet { path: PathBuf },
}

/// A consistent copy of the source database written by [`SqliteCapture::write_base`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BaseCopy {
    /// The LSN of the last log record the copy reflects: the copy equals the fold of the log
    /// up to and including this record.
    pub lsn: Lsn,
    /// That record's source position.
    pub position: SourcePosition,
    /// Size of the copy in bytes (page count × page size).
    pub bytes: u64,
    pub page_size: u32,
    pub taken_at_micros: i64,
}

/// Options of one SQLite capture.
#[derive(Clone, Debug)]
pub struct CaptureOptions {
    pub source_id: String,
    /// Longest wait between polls when no file event arrives.
    pub poll_interval: Duration,
    /// Shortest time between two polls in a row while transactions keep arriving (batches
    /// gather more transactions per fsync; this is the latency it adds at most).
    pub min_poll_gap: Duration,
    /// The `-wal` size ferry keeps the WAL under: it lets the WAL restart once what it has
    /// read passes a quarter of this (see [`SqliteCapture::bound_wal`]).
    pub wal_limit_bytes: u64,
    /// Rows per `SnapshotRows` record (also bounded by `snapshot_chunk_bytes`).
    pub snapshot_chunk_rows: usize,
    pub snapshot_chunk_bytes: usize,
    /// Page bytes decoded per batch (one journal fsync and one log append per batch).
    pub batch_bytes: usize,
    /// Watch the database's directory for change hints.
    pub watch: bool,
    /// Run the bounded-WAL checkpoint when the WAL grows past its trigger.
    pub bound_wal: bool,
    /// Let go of the readers while the application runs a FULL, RESTART or TRUNCATE
    /// checkpoint, which otherwise waits for them (see `SqliteCapture::yield_to_checkpoint`).
    pub yield_to_checkpoints: bool,
    /// Unused since the bounded-WAL mechanism takes no lock (kept so configurations that
    /// set it still build).
    pub lock_acquire_timeout: Duration,
}

impl Default for CaptureOptions {
    fn default() -> Self {
        CaptureOptions {
            source_id: "source".to_string(),
            poll_interval: Duration::from_millis(100),
            min_poll_gap: Duration::from_millis(10),
            wal_limit_bytes: 64 << 20,
            snapshot_chunk_rows: 1000,
            snapshot_chunk_bytes: 1 << 20,
            batch_bytes: 8 << 20,
            watch: true,
            bound_wal: true,
            yield_to_checkpoints: true,
            lock_acquire_timeout: Duration::from_secs(2),
        }
    }
}

/// What a call to [`SqliteCapture::step`] or [`SqliteCapture::catch_up`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CaptureStep {
    /// Everything committed when the step last looked has been captured (false: the budget
    /// ran out with more waiting).
    pub caught_up: bool,
    pub snapshot_taken: bool,
    pub snapshot_rows: u64,
    pub transactions: u64,
    pub rows: u64,
    pub resynced: bool,
}

#[derive(Clone, Debug, Default)]
pub struct CaptureStats {
    pub transactions: u64,
    pub inserts: u64,
    pub updates: u64,
    pub deletes: u64,
    pub schema_changes: u64,
    pub snapshot_rows: u64,
    /// Resyncs after a gap (should be 0 while ferry runs undisturbed on a WAL database).
    pub resyncs: u64,
    /// Rollback-journal polls that found a change.
    pub rollback_polls: u64,
    pub wal_bytes: u64,
    pub wal_frames_read: u64,
    /// Times ferry let go of its readers so that the WAL could restart.
    pub wal_bound_rounds: u64,
    /// Of those, the ones whose continuity proof failed (each also counted as a resync).
    pub wal_bound_failures: u64,
    /// New WAL generations read from their first frame (restarts seen while tailing).
    pub wal_resets: u64,
    /// Times ferry let go of its readers for the application's blocking checkpoint.
    pub checkpoint_yields: u64,
    /// The longest of those waits without a reader.
    pub checkpoint_yield_max: Duration,
    /// ferry's holds of SQLite's write lock (none since the bounded-WAL mechanism takes no
    /// lock; the cutover fence is held elsewhere).
    pub lock_hold_max: Duration,
    pub lock_hold_total: Duration,
    pub last_position: Option<SourcePosition>,
    pub last_lsn: Lsn,
    pub rollback_mode: bool,
}

pub struct SqliteCapture {
    db_path: PathBuf,
    wal_path: PathBuf,
    opts: CaptureOptions,
    sink: Arc<dyn RecordSink>,
    db_file: File,
    db_ino: u64,
    wal_file: Option<File>,
    /// Reader connections, used hand over hand.
    conns: [Connection; 2],
    /// Set while ferry holds no reader so that the application can restart the WAL or finish
    /// a checkpoint (see [`SqliteCapture::bound_wal`]): where it let go.
    released: Option<Release>,
    /// The `-shm` view (opened once a reader has made SQLite create it).
    wal_index: Option<WalIndex>,
    /// No yield to a checkpoint before this (after one that did not end in time).
    yield_backoff_until: Option<Instant>,
    /// The generation and frame of a release that saw no restart (the next one waits for
    /// the WAL to grow further).
    release_retry: Option<((u32, u32), u32)>,
    /// Which connection holds a read transaction.
    held: Option<usize>,
    /// A read transaction has been held continuously since `point` was established.
    continuous: bool,
    shadow: Shadow,
    decoder: Option<Decoder>,
    stats: CaptureStats,
    events: Option<ChangeHints>,
    _lock: File,
}

fn sqlite_err(path: &Path) -> impl Fn(rusqlite::Error) -> CaptureError {
    let p = path.to_path_buf();
    move |source| CaptureError::Sqlite {
        path: p.clone(),
        source,
    }
}

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> CaptureError + use<> {
    let p = path.to_path_buf();
    move |source| CaptureError::Io {
        path: p.clone(),
        source,
    }
}

fn open_conn(path: &Path) -> Result<Connection, CaptureError> {
    let c = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(sqlite_err(path))?;
    c.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE,
        true,
    )
    .map_err(sqlite_err(path))?;
    c.busy_timeout(Duration::from_secs(5))
        .map_err(sqlite_err(path))?;
    Ok(c)
}

impl SqliteCapture {
    /// Opens (or resumes) capture of `db_path` into `sink`, keeping the shadow and its journal
    /// in `work_dir` (a per-source directory the caller owns).
    pub fn open(
        db_path: &Path,
        work_dir: &Path,
        sink: Arc<dyn RecordSink>,
        opts: CaptureOptions,
    ) -> Result<SqliteCapture, CaptureError> {
        let db_file = File::open(db_path).map_err(|source| CaptureError::Open {
            path: db_path.to_path_buf(),
            source,
        })?;
        let mut first = [0u8; 100];
        read_full_at(&db_file, &mut first, 0).map_err(|source| CaptureError::Io {
            path: db_path.to_path_buf(),
            source,
        })?;
        let header = DbHeader::parse(&first).map_err(|source| CaptureError::NotADatabase {
            path: db_path.to_path_buf(),
            source,
        })?;
        let db_ino = db_file
            .metadata()
            .map_err(|source| CaptureError::Io {
                path: db_path.to_path_buf(),
                source,
            })?
            .ino();
        std::fs::create_dir_all(work_dir).map_err(|source| CaptureError::Io {
            path: work_dir.to_path_buf(),
            source,
        })?;
        let lock_path = work_dir.join("capture.lock");
        let lock = File::create(&lock_path).map_err(|source| CaptureError::Io {
            path: lock_path.clone(),
            source,
        })?;
        // SAFETY: flock on a descriptor we own; no memory is shared with the call.
        let rc = unsafe {
            libc::flock(
                std::os::fd::AsRawFd::as_raw_fd(&lock),
                libc::LOCK_EX | libc::LOCK_NB,
            )
        };
        if rc != 0 {
            return Err(CaptureError::Locked {
                dir: work_dir.to_path_buf(),
            });
        }
        let conns = [open_conn(db_path)?, open_conn(db_path)?];
        let mut wal_path = db_path.as_os_str().to_owned();
        wal_path.push("-wal");
        let wal_path = PathBuf::from(wal_path);
        let shadow = Shadow::open(work_dir, sink.as_ref())?;
        let events = if opts.watch {
            ChangeHints::new(db_path)
        } else {
            None
        };
        let mut cap = SqliteCapture {
            db_path: db_path.to_path_buf(),
            wal_path,
            opts,
            sink,
            db_file,
            db_ino,
            wal_file: None,
            conns,
            released: None,
            wal_index: None,
            yield_backoff_until: None,
            release_retry: None,
            held: None,
            continuous: false,
            shadow,
            decoder: None,
            stats: CaptureStats::default(),
            events,
            _lock: lock,
        };
        cap.stats.rollback_mode = !header.is_wal();
        if cap.stats.rollback_mode {
            tracing::warn!(
                db = %cap.db_path.display(),
                "database is in rollback-journal mode: ferry polls its change counter and compares pages under a brief shared lock, which stalls the application's commits for a time proportional to the database size and collapses commits between polls; switching it to WAL (--switch-to-wal, persistent) gives per-commit capture without stalls"
            );
        }
        Ok(cap)
    }

    pub fn stats(&self) -> CaptureStats {
        self.stats.clone()
    }

    fn decode_err(&self) -> impl Fn(DecodeError) -> CaptureError {
        let p = self.db_path.clone();
        move |source| CaptureError::Decode {
            path: p.clone(),
            source,
        }
    }

    fn io_err(&self, path: &Path) -> impl Fn(std::io::Error) -> CaptureError {
        let p = path.to_path_buf();
        move |source| CaptureError::Io {
            path: p.clone(),
            source,
        }
    }

    /// Captures every transaction committed before this call, and returns as soon as it has
    /// (it does not chase commits made meanwhile, so it returns even while a writer outpaces
    /// capture): polls until one poll reaches the end of the WAL as it was when that poll
    /// began. The cutover's drain. Needs the initial snapshot taken (a first `step`).
    pub fn drain(&mut self) -> Result<CaptureStep, CaptureError> {
        let before = self.stats.clone();
        let mut step = CaptureStep::default();
        if self.shadow.state.is_none() || self.decoder.is_none() {
            return self.step(Duration::ZERO);
        }
        while self.poll_once()? {}
        step.transactions = self.stats.transactions - before.transactions;
        step.rows = (self.stats.inserts + self.stats.updates + self.stats.deletes)
            - (before.inserts + before.updates + before.deletes);
        step.resynced = self.stats.resyncs > before.resyncs;
        Ok(step)
    }

    /// Takes the initial snapshot if the log has none yet, then captures everything committed
    /// so far (repeating [`SqliteCapture::step`] until it is caught up); returns what it did.
    ///
    /// With a writer that outpaces capture this may not return for a long time: loops that
    /// must stay responsive call `step` with a budget instead.
    pub fn catch_up(&mut self) -> Result<CaptureStep, CaptureError> {
        let mut total = CaptureStep::default();
        loop {
            let s = self.step(Duration::from_millis(200))?;
            total.snapshot_taken |= s.snapshot_taken;
            total.snapshot_rows += s.snapshot_rows;
            total.transactions += s.transactions;
            total.rows += s.rows;
            total.resynced |= s.resynced;
            if s.caught_up {
                total.caught_up = true;
                return Ok(total);
            }
        }
    }

    /// Captures what is committed, but returns after about `budget` of work even if more is
    /// waiting (`caught_up == false`). Everything a step logged is durable when it returns.
    ///
    /// The budget is checked between batches: one batch (at most `batch_bytes` of page
    /// images) is never cut short, and the initial snapshot, when the log has none yet, is
    /// taken whole by the first step.
    pub fn step(&mut self, budget: Duration) -> Result<CaptureStep, CaptureError> {
        let started = Instant::now();
        let mut step = CaptureStep::default();
        if self.shadow.state.is_none() {
            step.snapshot_rows = self.snapshot()?;
            step.snapshot_taken = true;
        } else if self.decoder.is_none() {
            let pages = self.shadow.pages().ok_or_else(|| ShadowError::Corrupt {
                path: self.db_path.clone(),
                problem: "no state".into(),
            })?;
            self.decoder = Some(Decoder::build(&pages).map_err(self.decode_err())?);
        }
        if let Some(h) = &self.events {
            h.fired.store(false, Ordering::SeqCst);
        }
        let before = self.stats.clone();
        // Caught up means a poll found nothing new: a poll that found transactions is
        // followed by another, because a writer may have committed more meanwhile (the
        // fsyncs of a batch take long enough for that), and the next batch is then larger.
        let mut last_poll: Option<Instant> = None;
        loop {
            let seen = self.stats.transactions;
            if let Some(t) = last_poll {
                // Every batch costs a handful of fsyncs (journal, log, shadow), which compete
                // with the application's own: a short gap between polls that find little lets
                // the next batch gather more transactions (at most this much added latency).
                let gap = t.elapsed();
                if gap < self.opts.min_poll_gap {
                    std::thread::sleep(self.opts.min_poll_gap - gap);
                }
            }
            let more = self.poll_once()?;
            last_poll = (!more).then(Instant::now);
            if !more && self.stats.transactions == seen {
                step.caught_up = true;
                break;
            }
            if started.elapsed() >= budget {
                break;
            }
        }
        step.transactions = self.stats.transactions - before.transactions;
        step.rows = (self.stats.inserts + self.stats.updates + self.stats.deletes)
            - (before.inserts + before.updates + before.deletes);
        step.resynced = self.stats.resyncs > before.resyncs;
        if !step.caught_up
            && let Some(h) = &mut self.events
        {
            // Busy: the next step polls at once, so hints are of no use, and every write
            // the application makes to a watched directory costs it an inotify event and a
            // wake-up (about a quarter of a small-transaction writer's throughput, measured
            // with benches/capture_overhead). Waiting watches again.
            h.disarm();
        }
        Ok(step)
    }

    /// Calls `f` (from another thread) on the first change hint after each step, for a
    /// caller that waits on something else than [`SqliteCapture::wait_for_change`]. Hints
    /// come only while watching: see [`SqliteCapture::watch_for_changes`].
    pub fn on_change_hint(&mut self, f: Box<dyn Fn() + Send>) {
        if let Some(h) = &self.events
            && let Ok(mut cb) = h.callback.lock()
        {
            *cb = Some(f);
        }
    }

    /// Watches the directory for change hints again (a busy step stops watching). True when
    /// it was not watching: a change made since the last poll raised no hint, so poll once
    /// more before waiting.
    pub fn watch_for_changes(&mut self) -> bool {
        self.events.as_mut().is_some_and(ChangeHints::arm)
    }

    /// Runs until `stop` is set (checked between steps of at most about 100 ms): finishes
    /// the batch in hand, which is durable when a step returns, and returns.
    pub fn run(&mut self, stop: &AtomicBool) -> Result<(), CaptureError> {
        while !stop.load(Ordering::SeqCst) {
            let s = self.step(Duration::from_millis(100))?;
            if s.caught_up {
                self.wait_for_change(self.opts.poll_interval, stop);
            }
        }
        Ok(())
    }

    /// Waits up to `timeout` for a change: returns early on a file-notification hint (when
    /// watching) or when `stop` is set. Events are hints only (writes to `-shm` raise none,
    /// inotify merges events), so callers poll again after every wait whatever woke them.
    pub fn wait_for_change(&mut self, timeout: Duration, stop: &AtomicBool) {
        let deadline = Instant::now() + timeout;
        if self.watch_for_changes() {
            // The watch was off while capture was busy: a change made since the last poll
            // raised no hint, so return for one more poll (now watched) instead of sleeping
            // through it.
            return;
        }
        match self.events.as_ref().map(|h| &h.rx) {
            Some(rx) => {
                // Drain the hints that arrived before this wait: the step that precedes it
                // has already seen their changes.
                while rx.try_recv().is_ok() {}
                while !stop.load(Ordering::SeqCst) {
                    let now = Instant::now();
                    if now >= deadline {
                        return;
                    }
                    let slice = (deadline - now).min(Duration::from_millis(20));
                    if rx.recv_timeout(slice).is_ok() {
                        return;
                    }
                }
            }
            None => {
                while !stop.load(Ordering::SeqCst) {
                    let now = Instant::now();
                    if now >= deadline {
                        return;
                    }
                    std::thread::park_timeout((deadline - now).min(Duration::from_millis(10)));
                }
            }
        }
    }

    fn check_not_replaced(&self) -> Result<(), CaptureError> {
        match std::fs::metadata(&self.db_path) {
            Ok(m) if m.ino() == self.db_ino => Ok(()),
            Ok(m) => Err(CaptureError::Replaced {
                path: self.db_path.clone(),
                was: self.db_ino,
                now: m.ino(),
            }),
            Err(source) => Err(CaptureError::Io {
                path: self.db_path.clone(),
                source,
            }),
        }
    }

    fn begin_read(&mut self, i: usize) -> Result<(), CaptureError> {
        let c = &self.conns[i];
        c.execute_batch("BEGIN DEFERRED")
            .map_err(sqlite_err(&self.db_path))?;
        // Reading the schema cookie opens the read transaction (and takes the read mark).
        c.query_row("PRAGMA schema_version", [], |r| r.get::<_, i64>(0))
            .map_err(sqlite_err(&self.db_path))?;
        Ok(())
    }

    fn end_read(&mut self, i: usize) -> Result<(), CaptureError> {
        let c = &self.conns[i];
        if !c.is_autocommit() {
            c.execute_batch("COMMIT")
                .map_err(sqlite_err(&self.db_path))?;
        }
        Ok(())
    }

    /// Opens a read transaction on the idle connection; returns its index.
    fn take_new_reader(&mut self) -> Result<usize, CaptureError> {
        let i = match self.held {
            Some(h) => 1 - h,
            None => 0,
        };
        self.begin_read(i)?;
        Ok(i)
    }

    /// Hands over: the new reader becomes the held one, the old one is released.
    fn hand_over(&mut self, new: usize) -> Result<(), CaptureError> {
        if let Some(old) = self.held
            && old != new
        {
            self.end_read(old)?;
        }
        self.held = Some(new);
        Ok(())
    }

    fn release_all(&mut self) -> Result<(), CaptureError> {
        for i in 0..2 {
            self.end_read(i)?;
        }
        self.held = None;
        self.continuous = false;
        self.released = None;
        Ok(())
    }

    fn wal(&mut self) -> Result<Option<&File>, CaptureError> {
        if self.wal_file.is_none() {
            match File::open(&self.wal_path) {
                Ok(f) => self.wal_file = Some(f),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                Err(source) => {
                    return Err(CaptureError::Io {
                        path: self.wal_path.clone(),
                        source,
                    });
                }
            }
        }
        Ok(self.wal_file.as_ref())
    }

    fn read_db_header(&self) -> Result<DbHeader, CaptureError> {
        let mut first = [0u8; 100];
        read_full_at(&self.db_file, &mut first, 0).map_err(self.io_err(&self.db_path))?;
        DbHeader::parse(&first).map_err(|source| CaptureError::NotADatabase {
            path: self.db_path.clone(),
            source,
        })
    }

    /// The database state visible now (file overlaid with every committed WAL frame), read
    /// under the caller's read transaction: pages from the WAL, the resume point, page size.
    ///
    /// A WAL restart during the read (possible only when our reader got read mark 0, and then
    /// only once) would mix two generations, so the read is repeated until the WAL header was
    /// the same before and after it.
    fn current_state(&mut self) -> Result<(HashMap<u32, Page>, ResumePoint, usize), CaptureError> {
        loop {
            let salts_before = self.wal_salts()?;
            let state = self.current_state_once()?;
            if self.wal_salts()? == salts_before {
                return Ok(state);
            }
        }
    }

    fn wal_salts(&mut self) -> Result<Option<(u32, u32, u32, u32)>, CaptureError> {
        let path = self.wal_path.clone();
        match self.wal()? {
            Some(w) => Ok(crate::wal_tail::read_header(w)
                .map_err(|source| CaptureError::Io { path, source })?
                .map(|h| (h.salt1, h.salt2, h.checksum.0, h.checksum.1))),
            None => Ok(None),
        }
    }

    fn current_state_once(
        &mut self,
    ) -> Result<(HashMap<u32, Page>, ResumePoint, usize), CaptureError> {
        let hdr = self.read_db_header()?;
        let file_len = self
            .db_file
            .metadata()
            .map_err(self.io_err(&self.db_path))?
            .len();
        let file_pages = (file_len / hdr.page_size as u64) as u32;
        let mut point = ResumePoint {
            salts: None,
            frame: 0,
            checksum: (0, 0),
            db_pages: if hdr.version_valid_for == hdr.change_counter && hdr.page_count > 0 {
                hdr.page_count
            } else {
                file_pages
            },
            change_counter: hdr.change_counter,
        };
        let mut pages = HashMap::new();
        if hdr.is_wal() {
            let cc = hdr.change_counter;
            if let Some(wal) = self.wal()? {
                match scan(wal, ScanStart::Beginning, cc, usize::MAX).map_err(|s| {
                    CaptureError::Io {
                        path: self.wal_path.clone(),
                        source: s,
                    }
                })? {
                    ScanOutcome::Frames { header, txns, .. } => {
                        point.salts = Some((header.salt1, header.salt2));
                        point.checksum = header.checksum;
                        for t in txns {
                            pages.extend(t.pages);
                            pages.retain(|&p, _| p <= t.point.db_pages);
                            point = t.point;
                        }
                    }
                    ScanOutcome::NoHeader | ScanOutcome::NotContinuous => {}
                }
            }
        }
        Ok((pages, point, hdr.page_size))
    }

    /// The initial snapshot: a page copy of one read transaction's state into the shadow,
    /// then every captured table's rows decoded from that copy.
    fn snapshot(&mut self) -> Result<u64, CaptureError> {
        self.release_all()?;
        self.shadow.reset()?;
        let r = self.take_new_reader()?;
        let (wal_pages, point, page_size) = self.current_state()?;
        // Copy the state into the shadow.
        for pg in 1..=point.db_pages {
            let data: Page = match wal_pages.get(&pg) {
                Some(p) => p.clone(),
                None => FilePages {
                    file: &self.db_file,
                    path: &self.db_path,
                    page_size,
                    count: point.db_pages,
                }
                .page(pg)
                .map_err(|e| self.decode_err()(DecodeError::from(e)))?,
            };
            self.shadow.write_page(pg, page_size, &data)?;
        }
        drop(wal_pages);
        let src = self.shadow.raw_pages(page_size, point.db_pages);
        let decoder = Decoder::build(&src).map_err(self.decode_err())?;
        let position = point.position(true);
        let tables = decoder.catalog.tables();
        let mut records = vec![Record::SnapshotBegin(SnapshotBegin {
            position: position.clone(),
            captured_at: now_micros(),
            tables: tables.clone(),
            schema_rows: decoder.catalog.rows.clone(),
        })];
        let mut counts = Vec::new();
        let mut total = 0u64;
        let sink = self.sink.clone();
        for t in &tables {
            let mut chunk = Vec::new();
            let mut chunk_bytes = 0usize;
            let mut n = 0u64;
            let (rows_max, bytes_max) = (
                self.opts.snapshot_chunk_rows.max(1),
                self.opts.snapshot_chunk_bytes,
            );
            decoder
                .scan_table(&src, &t.name, &mut |row| {
                    chunk_bytes += row.values.iter().map(|v| v.approx_size()).sum::<usize>();
                    chunk.push(row);
                    n += 1;
                    if chunk.len() >= rows_max || chunk_bytes >= bytes_max {
                        records.push(Record::SnapshotRows(SnapshotRows {
                            table: t.name.clone(),
                            rows: std::mem::take(&mut chunk),
                        }));
                        chunk_bytes = 0;
                        if records.len() >= 16 {
                            sink.append_batch(&records).map_err(|e| {
                                DecodeError::Page(PageError::Io {
                                    path: PathBuf::from("log"),
                                    pgno: 0,
                                    source: std::io::Error::other(e),
                                })
                            })?;
                            records.clear();
                        }
                    }
                    Ok(())
                })
                .map_err(self.decode_err())?;
            if !chunk.is_empty() {
                records.push(Record::SnapshotRows(SnapshotRows {
                    table: t.name.clone(),
                    rows: chunk,
                }));
            }
            counts.push((t.name.clone(), n));
            total += n;
        }
        records.push(Record::SnapshotEnd(SnapshotEnd {
            position: position.clone(),
            captured_at: now_micros(),
            row_counts: counts,
        }));
        let lsn = self.sink.append_batch(&records)?;
        self.shadow.finish_snapshot(ShadowState {
            point,
            lsn,
            page_size: page_size as u32,
        })?;
        self.decoder = Some(decoder);
        self.held = Some(r);
        self.continuous = true;
        if !self.read_db_header()?.is_wal() {
            // In rollback-journal mode a held read transaction is a SHARED lock that blocks
            // the application's commits: never keep one between polls.
            self.release_all()?;
        }
        self.stats.snapshot_rows += total;
        self.stats.last_position = Some(position);
        self.stats.last_lsn = lsn;
        Ok(total)
    }

    /// One poll: opens the next reader, captures every committed transaction, hands over.
    /// Returns whether there may be more to read right away.
    fn poll_once(&mut self) -> Result<bool, CaptureError> {
        self.check_not_replaced()?;
        let hdr = self.read_db_header()?;
        let state = self.shadow.state.ok_or_else(|| ShadowError::Corrupt {
            path: self.db_path.clone(),
            problem: "no state".into(),
        })?;
        if !hdr.is_wal() {
            self.stats.rollback_mode = true;
            return self.poll_rollback(hdr, state);
        }
        self.stats.rollback_mode = false;
        let more = self.poll_wal()?;
        // Also when capture is behind: a release lets the WAL restart right away, and what
        // is left of the old generation is read whole when the reader is taken again.
        if self.opts.bound_wal {
            self.bound_wal()?;
        }
        if self.opts.yield_to_checkpoints && !more {
            self.yield_to_checkpoint()?;
        }
        Ok(more)
    }

    /// A WAL poll: opens the next reader, reads what is committed, hands over.
    fn poll_wal(&mut self) -> Result<bool, CaptureError> {
        if let Some(old) = self.released {
            return self.poll_released(old);
        }
        let new = self.take_new_reader()?;
        let more = match self.read_committed(self.opts.batch_bytes)? {
            Committed::Txns { txns, more } => {
                self.apply_batch(txns)?;
                more
            }
            Committed::Nothing => false,
            Committed::Gap => {
                self.resync()?;
                false
            }
        };
        if let Some(w) = &self.wal_file {
            self.stats.wal_bytes = w.metadata().map(|m| m.len()).unwrap_or(0);
        }
        self.hand_over(new)?;
        self.continuous = true;
        Ok(more)
    }

    /// Reads the committed transactions after the shadow's point (at most about `max_bytes`
    /// of page images). The caller holds a read transaction.
    ///
    /// A WAL with other salts than the point's is a new generation: when a reader has been
    /// held since the point was established (`continuous`), the old generation ended exactly
    /// at the point (see the module comment) and the new one is read from its first frame;
    /// otherwise it is a gap.
    fn read_committed(&mut self, max_bytes: usize) -> Result<Committed, CaptureError> {
        let state = self.shadow.state.ok_or_else(|| ShadowError::Corrupt {
            path: self.db_path.clone(),
            problem: "no state".into(),
        })?;
        let start = if self.continuous && state.point.salts.is_none() {
            ScanStart::Beginning
        } else {
            ScanStart::After(state.point)
        };
        let cc = state.point.change_counter;
        self.wal()?;
        let wal_path = self.wal_path.clone();
        let io = move |source| CaptureError::Io {
            path: wal_path.clone(),
            source,
        };
        let outcome = match self.wal_file.as_ref() {
            Some(wal) => scan(wal, start, cc, max_bytes).map_err(&io)?,
            None => ScanOutcome::NoHeader,
        };
        Ok(match outcome {
            ScanOutcome::Frames { txns, more, .. } => Committed::Txns { txns, more },
            ScanOutcome::NotContinuous if self.continuous && state.point.salts.is_some() => {
                let wal = self.wal_file.as_ref().ok_or_else(|| CaptureError::Io {
                    path: self.wal_path.clone(),
                    source: std::io::Error::other("WAL vanished"),
                })?;
                match scan(wal, ScanStart::Beginning, cc, max_bytes).map_err(&io)? {
                    ScanOutcome::Frames { txns, more, .. } if !txns.is_empty() => {
                        self.stats.wal_resets += 1;
                        Committed::Txns { txns, more }
                    }
                    _ => Committed::Nothing,
                }
            }
            ScanOutcome::NoHeader if self.continuous => Committed::Nothing,
            ScanOutcome::NotContinuous | ScanOutcome::NoHeader => Committed::Gap,
        })
    }

    /// Decodes a batch of transactions, then journal → log → shadow.
    fn apply_batch(&mut self, txns: Vec<WalTxn>) -> Result<(), CaptureError> {
        if txns.is_empty() {
            return Ok(());
        }
        let state = self.shadow.state.ok_or_else(|| ShadowError::Corrupt {
            path: self.db_path.clone(),
            problem: "no state".into(),
        })?;
        let page_size = state.page_size as usize;
        let mut decoder = self.decoder.take().ok_or_else(|| ShadowError::Corrupt {
            path: self.db_path.clone(),
            problem: "no decoder".into(),
        })?;
        let result = (|| {
            let base = self.shadow.pages().ok_or_else(|| ShadowError::Corrupt {
                path: self.db_path.clone(),
                problem: "no state".into(),
            })?;
            let mut pending: HashMap<u32, Page> = HashMap::new();
            let mut count = state.point.db_pages;
            let mut records = Vec::with_capacity(txns.len());
            let mut lsn = self.sink.durable_lsn();
            let mut entries_meta = Vec::with_capacity(txns.len());
            for t in &txns {
                let before = Overlay {
                    base: &base,
                    pages: &pending,
                    count,
                };
                let after = Overlay {
                    base: &before,
                    pages: &t.pages,
                    count: t.point.db_pages,
                };
                let changed: crate::decode::PageSet = t.pages.keys().copied().collect();
                let d = decoder
                    .decode(&before, &after, &changed)
                    .map_err(self.decode_err())?;
                for (k, v) in &t.pages {
                    pending.insert(*k, v.clone());
                }
                count = t.point.db_pages;
                pending.retain(|&p, _| p <= count);
                lsn = lsn.next();
                let position = t.point.position(false);
                count_changes(&mut self.stats, &d.changes, d.schema_changes.len());
                self.stats.wal_frames_read += u64::from(t.frames);
                records.push(Record::Transaction(Transaction {
                    position: position.clone(),
                    captured_at: now_micros(),
                    schema_changes: d.schema_changes,
                    changes: d.changes,
                    resync: false,
                }));
                entries_meta.push((lsn, t.point, position));
            }
            let entries: Vec<JournalEntry<'_>> = entries_meta
                .iter()
                .zip(&txns)
                .map(|((lsn, point, position), t)| JournalEntry {
                    lsn: *lsn,
                    point: *point,
                    position,
                    pages: &t.pages,
                })
                .collect();
            self.shadow.journal_batch(&entries)?;
            let got = self.sink.append_batch(&records)?;
            if got != lsn {
                return Err(CaptureError::Sink(SinkError::Other(
                    format!("the log assigned LSN {got} where capture expected {lsn}: another writer appends to this source's log").into(),
                )));
            }
            let last = txns.last().map(|t| t.point).unwrap_or(state.point);
            self.shadow.apply(
                &pending,
                ShadowState {
                    point: last,
                    lsn,
                    page_size: page_size as u32,
                },
            )?;
            self.stats.transactions += txns.len() as u64;
            self.stats.last_position = Some(last.position(false));
            self.stats.last_lsn = lsn;
            Ok(())
        })();
        match result {
            Ok(()) => {
                self.decoder = Some(decoder);
                Ok(())
            }
            Err(e) => {
                // The decoder may have advanced past the shadow: rebuild it on the next call.
                self.decoder = None;
                Err(e)
            }
        }
    }

    /// Compares the whole current state with the shadow and logs the difference as one
    /// coarse transaction. The caller holds a read transaction.
    fn resync(&mut self) -> Result<(), CaptureError> {
        let (pages, point, page_size) = self.current_state()?;
        let n = self.apply_state_diff(pages, point, page_size, true)?;
        self.stats.resyncs += 1;
        tracing::warn!(db = %self.db_path.display(), changes = n, "resynchronised with the database after a gap in the WAL (ferry was not running while the application checkpointed)");
        Ok(())
    }

    /// Decodes the difference between the shadow and a full state and logs it.
    fn apply_state_diff(
        &mut self,
        wal_pages: HashMap<u32, Page>,
        point: ResumePoint,
        page_size: usize,
        from_gap: bool,
    ) -> Result<usize, CaptureError> {
        let state = self.shadow.state.ok_or_else(|| ShadowError::Corrupt {
            path: self.db_path.clone(),
            problem: "no state".into(),
        })?;
        if page_size != state.page_size as usize {
            return Err(self.decode_err()(DecodeError::PageSizeChanged {
                from: state.page_size as usize,
                to: page_size,
            }));
        }
        if self.decoder.is_none() {
            let pages = self.shadow.pages().ok_or_else(|| ShadowError::Corrupt {
                path: self.db_path.clone(),
                problem: "no state".into(),
            })?;
            self.decoder = Some(Decoder::build(&pages).map_err(self.decode_err())?);
        }
        let mut decoder = self.decoder.take().ok_or_else(|| ShadowError::Corrupt {
            path: self.db_path.clone(),
            problem: "no decoder".into(),
        })?;
        let result = (|| {
            let base = self.shadow.pages().ok_or_else(|| ShadowError::Corrupt {
                path: self.db_path.clone(),
                problem: "no state".into(),
            })?;
            let file = FilePages {
                file: &self.db_file,
                path: &self.db_path,
                page_size,
                count: point.db_pages,
            };
            let now = Overlay {
                base: &file,
                pages: &wal_pages,
                count: point.db_pages,
            };
            let changed = differing_pages(&base, &now).map_err(self.decode_err())?;
            let mut diff_pages: HashMap<u32, Page> = HashMap::new();
            for &p in &changed {
                if p <= point.db_pages {
                    diff_pages.insert(p, now.page(p).map_err(|e| self.decode_err()(e.into()))?);
                }
            }
            let after = Overlay {
                base: &base,
                pages: &diff_pages,
                count: point.db_pages,
            };
            let d = decoder
                .decode(&base, &after, &changed)
                .map_err(self.decode_err())?;
            let n = d.changes.len();
            let lsn = self.sink.durable_lsn().next();
            let position = point.position(true);
            let entry = JournalEntry {
                lsn,
                point,
                position: &position,
                pages: &diff_pages,
            };
            self.shadow.journal_batch(&[entry])?;
            count_changes(&mut self.stats, &d.changes, d.schema_changes.len());
            let rec = Record::Transaction(Transaction {
                position: position.clone(),
                captured_at: now_micros(),
                schema_changes: d.schema_changes,
                changes: d.changes,
                resync: true,
            });
            let got = self.sink.append_batch(&[rec])?;
            self.shadow.apply(
                &diff_pages,
                ShadowState {
                    point,
                    lsn: got,
                    page_size: page_size as u32,
                },
            )?;
            self.stats.transactions += 1;
            self.stats.last_position = Some(position);
            self.stats.last_lsn = got;
            let _ = from_gap;
            Ok(n)
        })();
        match result {
            Ok(n) => {
                self.decoder = Some(decoder);
                Ok(n)
            }
            Err(e) => {
                self.decoder = None;
                Err(e)
            }
        }
    }

    /// Rollback-journal mode: when the change counter moved, compare every page under a
    /// shared lock (a read transaction) and log the difference.
    fn poll_rollback(&mut self, hdr: DbHeader, state: ShadowState) -> Result<bool, CaptureError> {
        if hdr.change_counter == state.point.change_counter {
            return Ok(false);
        }
        self.release_all()?;
        let r = self.take_new_reader()?;
        let res = (|| {
            let (pages, point, ps) = self.current_state()?;
            self.apply_state_diff(pages, point, ps, false)
        })();
        self.end_read(r)?;
        res?;
        self.stats.rollback_polls += 1;
        Ok(false)
    }

    /// Writes a consistent copy of the database as of the last captured transaction (the
    /// shadow: a valid SQLite file in rollback/DELETE journal mode, no `-wal` needed) to
    /// `dest`, and returns the LSN of the last log record it reflects and that record's
    /// source position.
    ///
    /// Durability and naming are handled here: the copy is written to `dest` with `.tmp`
    /// appended (in the same directory), fsynced, renamed over `dest`, and the directory is
    /// fsynced; `dest` therefore never holds a partial copy. Called between steps (it takes
    /// `&mut self`), when the shadow's journal is empty and the shadow equals the log's
    /// state at its LSN. Never touches the application's database.
    pub fn write_base(&mut self, dest: &Path) -> Result<BaseCopy, CaptureError> {
        let Some(state) = self.shadow.state else {
            return Err(CaptureError::NoSnapshotYet {
                path: self.db_path.clone(),
            });
        };
        // The record the shadow's state names carries the exact position (a snapshot's is
        // marked as read from the file); other records appended to the log by its owner
        // after it do not change the tables.
        let position = match self.sink.record_at(state.lsn)? {
            Some(Record::Transaction(t)) => t.position,
            Some(Record::SnapshotEnd(e)) => e.position,
            _ => state.point.position(false),
        };
        let mut tmp = dest.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        let out = File::create(&tmp).map_err(self.io_err(&tmp))?;
        let bytes = self.shadow.copy_to(&out, &tmp)?;
        out.set_len(bytes).map_err(self.io_err(&tmp))?;
        out.sync_all().map_err(self.io_err(&tmp))?;
        drop(out);
        std::fs::rename(&tmp, dest).map_err(self.io_err(dest))?;
        let dir = dest
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(self.io_err(dir))?;
        Ok(BaseCopy {
            lsn: state.lsn,
            position,
            bytes,
            page_size: state.page_size,
            taken_at_micros: now_micros(),
        })
    }

    /// Keeps the WAL bounded. Readers held just behind a sustained writer keep SQLite from
    /// ever restarting the WAL: a restart needs every frame backfilled, and backfilling stops
    /// at the lowest reader's mark, so the application's autocheckpoint never completes. When
    /// the WAL that ferry has read passes a quarter of `wal_limit_bytes`, ferry (having just
    /// read everything committed) lets go of its readers. The application's next
    /// autocheckpoint then backfills everything and its next write restarts the WAL — the
    /// same work, by the same thread, as without ferry. No lock is taken and nothing is
    /// written to the source.
    ///
    /// ferry waits (at most `RELEASE_WAIT`, less when nobody writes) for the restart,
    /// watching the WAL header, then takes a reader again (`SqliteCapture::poll_released`),
    /// whether or not the restart came. For that window continuity is proven rather than
    /// enforced:
    /// SQLite increments salt-1 by one at every restart, so a header whose salt-1 is the old
    /// one plus one means exactly one restart; ferry pins the new generation with a reader at
    /// once (its mark blocks any further restart), reads what is left of the old generation
    /// after its point — frames the new generation has not reached, which it writes in order
    /// from the first — and checks that the new generation has not reached the first frame
    /// after the point. Anything else (two restarts, a truncated or overwritten WAL) is a gap
    /// and resyncs, never a silent loss. The new generation grows from frame 1 and ferry
    /// polls within milliseconds, so under an undisturbed run this never happens.
    ///
    /// (A brief write lock during which ferry backfills the rest itself was tried first: the
    /// checkpoint it must run under the lock syncs the WAL and the database, and on a shared
    /// disk those fsyncs made the lock hold 10–100 ms.)
    pub fn bound_wal(&mut self) -> Result<(), CaptureError> {
        if self.released.is_some() {
            return Ok(());
        }
        let Some(state) = self.shadow.state else {
            return Ok(());
        };
        if self.held.is_none() {
            return Ok(());
        }
        let Some(h) = self.header_of_our_generation(&state)? else {
            return Ok(());
        };
        let frame_size = h.frame_size() as u64;
        let trigger = (self.opts.wal_limit_bytes / 4)
            .min(APP_AUTOCHECKPOINT_FRAMES * frame_size)
            .max(frame_size);
        let mut due = trigger;
        if let Some((salts, frame)) = self.release_retry
            && state.point.salts == Some(salts)
        {
            // An earlier release in this generation saw no restart: try again once the WAL
            // has grown by another sixteenth of the limit.
            due = due.max(u64::from(frame) * frame_size + self.opts.wal_limit_bytes / 16);
        }
        if u64::from(state.point.frame) * frame_size < due {
            return Ok(());
        }
        // (`release_mark` opened the wal-index the wait below probes.)
        let mark = self.release_mark(&h, state.point.frame)?;
        self.end_read(0)?;
        self.end_read(1)?;
        self.held = None;
        let release = Release { header: h, mark };
        self.released = Some(release);
        self.stats.wal_bound_rounds += 1;
        // Wait (briefly) for the restart, watching the header; give up early when neither
        // the WAL nor the database file has changed for a while (nobody is writing or
        // checkpointing, so no restart is coming soon). Then take a reader again either way:
        // the readerless window is bounded by this wait.
        let files = [self.wal_file.as_ref(), Some(&self.db_file)];
        let modified = || files.map(|f| f.and_then(|f| f.metadata().ok()?.modified().ok()));
        let started = Instant::now();
        let mut last_change = (started, modified());
        let mut restarted = false;
        loop {
            let now = Instant::now();
            // The application's checkpoint is what the wait is for: while one runs (its
            // fsyncs can take seconds on a busy disk, with no file changing meanwhile), a
            // reader taken now would pin the WAL the checkpoint is about to let restart.
            let checkpointing = self
                .wal_index
                .as_ref()
                .is_some_and(|i| i.checkpoint_running().unwrap_or(false));
            let salts = match files[0] {
                Some(w) => crate::wal_tail::read_header(w)
                    .map_err(self.io_err(&self.wal_path))?
                    .map(|x| (x.salt1, x.salt2)),
                None => None,
            };
            if salts != Some((h.salt1, h.salt2)) {
                restarted = true;
                break;
            }
            let cap = if checkpointing {
                RELEASE_WAIT_CHECKPOINTING
            } else {
                RELEASE_WAIT
            };
            if now - started >= cap {
                break;
            }
            let m = modified();
            if m != last_change.1 || checkpointing {
                last_change = (now, m);
            } else if now - last_change.0 >= RELEASE_IDLE {
                break;
            }
            std::thread::sleep(Duration::from_micros(500));
        }
        self.release_retry = if restarted {
            None
        } else {
            state.point.salts.map(|s| (s, state.point.frame))
        };
        self.poll_released(release)?;
        Ok(())
    }

    /// The WAL's header when the WAL holds the generation the shadow's state is in (`None`:
    /// no WAL, no header, or another generation — a release would prove nothing then).
    fn header_of_our_generation(
        &self,
        state: &ShadowState,
    ) -> Result<Option<crate::format::wal::WalHeader>, CaptureError> {
        let Some(wal) = self.wal_file.as_ref() else {
            return Ok(None);
        };
        let header = crate::wal_tail::read_header(wal).map_err(self.io_err(&self.wal_path))?;
        Ok(header.filter(|h| state.point.salts == Some((h.salt1, h.salt2))))
    }

    /// Gets out of the way of the application's blocking checkpoint. A FULL, RESTART or
    /// TRUNCATE checkpoint takes SQLite's checkpointer and writer locks, then waits in the
    /// application's busy handler for exclusive locks on read slots: to advance a read mark
    /// below the WAL's end, and (RESTART/TRUNCATE) on every slot but 0 to restart the WAL.
    /// Hand-over-hand readers never free their slot — once the writer is stuck inside its
    /// checkpoint the WAL's end no longer moves, so each new reader joins the old one's slot
    /// before the old one lets go — and the checkpoint would wait for its whole busy
    /// timeout, holding the writer lock (every commit, and ferry's cutover fence, waits).
    ///
    /// So when a poll has read everything committed and one process holds both locks
    /// (`WalIndex::blocking_checkpoint`), ferry lets go of both readers, waits until the
    /// checkpointer lock is free (at most `CHECKPOINT_YIELD_WAIT`) and takes a reader again.
    /// Continuity is proven as after [`SqliteCapture::bound_wal`], with the wal-index's
    /// commit counter recorded at the release: after a restart, the commits counted since
    /// must all be in what is left of the old generation after ferry's point plus the new
    /// generation — exact even when a TRUNCATE cut the file to nothing. (No commit happens
    /// while the checkpoint holds the writer lock, so normally there are none.) A wait that
    /// ran out without the checkpoint ending means something else holds it up: ferry then
    /// keeps its readers for a while before yielding again.
    fn yield_to_checkpoint(&mut self) -> Result<(), CaptureError> {
        if self.released.is_some() || self.held.is_none() {
            return Ok(());
        }
        if self.yield_backoff_until.is_some_and(|t| Instant::now() < t) {
            return Ok(());
        }
        let Some(state) = self.shadow.state else {
            return Ok(());
        };
        self.open_wal_index()?;
        let blocking = match self.wal_index.as_ref() {
            Some(idx) => idx.blocking_checkpoint().map_err(io_err(idx.path()))?,
            None => false,
        };
        if !blocking {
            return Ok(());
        }
        // An empty WAL (no header): readers take slot 0 and hold up no checkpoint.
        let Some(h) = self.header_of_our_generation(&state)? else {
            return Ok(());
        };
        // Only when caught up (the next poll reads the rest first).
        let Some(mark) = self.release_mark(&h, state.point.frame)? else {
            return Ok(());
        };
        if mark.mx_frame != state.point.frame {
            return Ok(());
        }
        self.end_read(0)?;
        self.end_read(1)?;
        self.held = None;
        let release = Release {
            header: h,
            mark: Some(mark),
        };
        self.released = Some(release);
        self.stats.checkpoint_yields += 1;
        let started = Instant::now();
        let mut ended = false;
        // Take a reader again as soon as the checkpoint is over or has restarted the WAL
        // (the wal-index header changed): the application commits again right after, and
        // a second restart while ferry holds no reader would lose what it wrote in between.
        while started.elapsed() < CHECKPOINT_YIELD_WAIT {
            let Some(idx) = self.wal_index.as_ref() else {
                break;
            };
            let err = io_err(idx.path());
            if !idx.blocking_checkpoint().map_err(&err)?
                || idx.header().map_err(&err)? != Some(mark)
            {
                ended = true;
                break;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        let waited = started.elapsed();
        self.stats.checkpoint_yield_max = self.stats.checkpoint_yield_max.max(waited);
        self.yield_backoff_until = (!ended).then(|| Instant::now() + CHECKPOINT_YIELD_BACKOFF);
        if !ended {
            tracing::debug!(db = %self.db_path.display(), ?waited, "the application's checkpoint did not end while ferry held no reader");
        }
        self.poll_released(release)?;
        Ok(())
    }

    /// The `-shm` view, opened on first use (after a reader has made SQLite create it).
    fn open_wal_index(&mut self) -> Result<(), CaptureError> {
        if self.wal_index.is_none() {
            self.wal_index = WalIndex::open(&self.db_path).map_err(io_err(&self.db_path))?;
        }
        Ok(())
    }

    /// The wal-index header of generation `h` once it shows at least `frame` (its header is
    /// written just after the commit frame), read under a held reader; `None` without a
    /// wal-index, or when it does not settle at once.
    fn release_mark(
        &mut self,
        h: &WalHeader,
        frame: u32,
    ) -> Result<Option<IndexHeader>, CaptureError> {
        self.open_wal_index()?;
        let Some(idx) = self.wal_index.as_ref() else {
            return Ok(None);
        };
        for _ in 0..20 {
            let Some(ih) = idx.header().map_err(io_err(idx.path()))? else {
                return Ok(None);
            };
            if ih.salts != (h.salt1, h.salt2) {
                return Ok(None);
            }
            if ih.mx_frame >= frame {
                return Ok(Some(ih));
            }
            std::thread::sleep(Duration::from_micros(100));
        }
        Ok(None)
    }

    /// Takes a reader again after a release that recorded the wal-index header (`mark`),
    /// and proves from its commit counter that nothing was lost meanwhile.
    ///
    /// Order: pin a reader, read what the old generation holds after `point` (frames are
    /// taken only where its salts and checksum chain still hold), then read the wal-index
    /// header. Same salts as the mark: the WAL has not restarted since the release, so the
    /// old generation was untouched while it was read and the tail is complete. Otherwise
    /// (one restart or several, TRUNCATEd or not, the new header written or not yet) the
    /// commits counted since the mark must equal the tail's commits after the mark's frame
    /// plus the current generation's commits through its last commit frame; then nothing
    /// more can be lost either: under the pinned reader the current generation's commits
    /// cannot be restarted away (with a read mark above 0 nothing restarts; with mark 0
    /// nothing is backfilled, and a restart needs every frame backfilled), so the next read
    /// takes the current generation from its first frame. A count that does not match is a
    /// resync (commits went by in a generation that no longer exists).
    fn poll_released_counted(
        &mut self,
        old: WalHeader,
        point: ResumePoint,
        mark: IndexHeader,
    ) -> Result<bool, CaptureError> {
        let io = io_err(&self.wal_path);
        let tail = match self.wal_file.as_ref() {
            Some(wal) => match scan_generation(
                wal,
                old,
                ScanStart::After(point),
                point.change_counter,
                usize::MAX,
            )
            .map_err(&io)?
            {
                ScanOutcome::Frames { txns, .. } => txns,
                _ => Vec::new(),
            },
            None => Vec::new(),
        };
        let now = match self.wal_index.as_ref() {
            Some(idx) => idx.header().map_err(io_err(idx.path()))?,
            None => None,
        };
        let Some(now) = now else {
            return self.resync_held();
        };
        if now.salts == mark.salts {
            self.apply_batch(tail)?;
            self.continuous = true;
            return Ok(false);
        }
        // The counter was read at the mark's frame: the tail must reach it.
        let covered =
            mark.mx_frame == point.frame || tail.iter().any(|t| t.point.frame == mark.mx_frame);
        let tail_commits = tail
            .iter()
            .filter(|t| t.point.frame > mark.mx_frame)
            .count() as u64;
        let wal = self.wal_file.as_ref();
        let current = match wal {
            Some(w) => crate::wal_tail::read_header(w).map_err(&io)?,
            None => None,
        };
        let new_commits = match (wal, current) {
            (Some(w), Some(cur)) if (cur.salt1, cur.salt2) == now.salts => {
                match count_commits(w, &cur, now.mx_frame).map_err(&io)? {
                    (n, true) => Some(n),
                    _ => None,
                }
            }
            // A generation's header is written with its first frame.
            _ if now.mx_frame == 0 => Some(0),
            _ => None,
        };
        let counted = now.change.wrapping_sub(mark.change);
        if !covered || new_commits.map(|n| n + tail_commits) != Some(u64::from(counted)) {
            tracing::debug!(
                ?mark,
                ?now,
                tail_commits,
                ?new_commits,
                "commits went by unseen while ferry held no reader"
            );
            return self.resync_held();
        }
        self.apply_batch(tail)?;
        self.continuous = true;
        self.read_after_restart()
    }

    /// Takes a reader again after [`SqliteCapture::bound_wal`] or
    /// `SqliteCapture::yield_to_checkpoint` let go, and proves that nothing was lost
    /// meanwhile (see there); reads what the old generation holds after the point and, if
    /// the WAL restarted, the new generation from its first frame.
    fn poll_released(&mut self, release: Release) -> Result<bool, CaptureError> {
        let old = release.header;
        let state = self.shadow.state.ok_or_else(|| ShadowError::Corrupt {
            path: self.db_path.clone(),
            problem: "no state".into(),
        })?;
        let cc = state.point.change_counter;
        // Pin first: from here on at most one more restart can happen, and only if our
        // reader got mark 0, i.e. only with nothing unread at the moment it began.
        let r = self.take_new_reader()?;
        self.held = Some(r);
        self.released = None;
        self.wal()?;
        if let Some(mark) = release.mark
            && self.wal_index.is_some()
        {
            return self.poll_released_counted(old, state.point, mark);
        }
        // Without the wal-index: the salts alone.
        let wal_path = self.wal_path.clone();
        let io = move |source| CaptureError::Io {
            path: wal_path.clone(),
            source,
        };
        let salts_now = |cap: &Self| -> Result<Option<(u32, u32)>, CaptureError> {
            Ok(match cap.wal_file.as_ref() {
                Some(w) => crate::wal_tail::read_header(w)
                    .map_err(&io)?
                    .map(|h| (h.salt1, h.salt2)),
                None => None,
            })
        };
        let seen = salts_now(self)?;
        let old_salts = Some((old.salt1, old.salt2));
        let restarted_once = match seen {
            s if s == old_salts => false,
            Some((salt1, _)) if salt1 == old.salt1.wrapping_add(1) => true,
            _ => return self.resync_held(),
        };
        let Some(wal) = self.wal_file.as_ref() else {
            return self.resync_held();
        };
        // What the old generation holds after our point: frames the new one (if any) has
        // not reached — it writes them in order from the first.
        let tail = match scan_generation(wal, old, ScanStart::After(state.point), cc, usize::MAX)
            .map_err(&io)?
        {
            ScanOutcome::Frames { txns, .. } => txns,
            _ => return self.resync_held(),
        };
        if restarted_once && frame_salts(wal, &old, state.point.frame + 1).map_err(&io)? == seen {
            // The new generation reached the first frame after our point: the old one may
            // have ended anywhere in what it overwrote.
            return self.resync_held();
        }
        if salts_now(self)? != seen {
            // A restart while we read (our reader got mark 0): the frames we read are real
            // and in order, but where the old generation ended is not proven.
            self.apply_batch(tail)?;
            return self.resync_held();
        }
        self.apply_batch(tail)?;
        self.continuous = true;
        if !restarted_once {
            return Ok(false);
        }
        self.read_new_generation(seen)
    }

    /// After a proven restart: the new generation from its first frame (read_committed sees
    /// other salts with a reader held since the old generation's end was established).
    /// `seen`: the WAL header's salts when the proof began.
    fn read_new_generation(&mut self, seen: Option<(u32, u32)>) -> Result<bool, CaptureError> {
        let more = match self.read_committed(self.opts.batch_bytes)? {
            Committed::Txns { txns, more } => {
                self.apply_batch(txns)?;
                more
            }
            Committed::Nothing => false,
            Committed::Gap => {
                self.resync()?;
                false
            }
        };
        // As above: an unchanged header proves the new generation's frames were read whole.
        if self.wal_header_salts()? != seen {
            return self.resync_held();
        }
        Ok(more)
    }

    /// The current generation after a restart proven by the commit counter (see
    /// [`SqliteCapture::poll_released_counted`]).
    fn read_after_restart(&mut self) -> Result<bool, CaptureError> {
        Ok(match self.read_committed(self.opts.batch_bytes)? {
            Committed::Txns { txns, more } => {
                self.apply_batch(txns)?;
                more
            }
            Committed::Nothing => false,
            Committed::Gap => {
                self.resync()?;
                false
            }
        })
    }

    fn wal_header_salts(&self) -> Result<Option<(u32, u32)>, CaptureError> {
        Ok(match self.wal_file.as_ref() {
            Some(w) => crate::wal_tail::read_header(w)
                .map_err(self.io_err(&self.wal_path))?
                .map(|h| (h.salt1, h.salt2)),
            None => None,
        })
    }

    fn resync_held(&mut self) -> Result<bool, CaptureError> {
        self.stats.wal_bound_failures += 1;
        self.resync()?;
        self.continuous = true;
        Ok(false)
    }
}

/// How long [`SqliteCapture::bound_wal`] holds no reader at most, waiting for the
/// application's autocheckpoint to backfill and its next write to restart the WAL; and how
/// long without a write to the WAL ends the wait early.
const RELEASE_WAIT: Duration = Duration::from_millis(300);

/// How long `SqliteCapture::yield_to_checkpoint` holds no reader at most, waiting for the
/// application's checkpoint to end: longer than SQLite's default busy handler sleeps between
/// two tries (100 ms at most), plus the checkpoint's own work. And how long it keeps its
/// readers after a wait that ran out before yielding again.
const CHECKPOINT_YIELD_WAIT: Duration = Duration::from_millis(300);
const CHECKPOINT_YIELD_BACKOFF: Duration = Duration::from_secs(1);

/// Where ferry let go of its readers: the WAL header of the generation it had read up to
/// the shadow's point, and the wal-index header then (its commit counter proves afterwards
/// how many commits went by; `None` without a readable wal-index).
#[derive(Clone, Copy, Debug)]
struct Release {
    header: WalHeader,
    mark: Option<IndexHeader>,
}
const RELEASE_IDLE: Duration = Duration::from_millis(100);

/// How long [`SqliteCapture::bound_wal`] keeps waiting while the application's checkpoint
/// runs: on a disk busy with other work its fsyncs took seconds, and giving up before it
/// ended pinned the WAL again (the bounded-WAL test, beside a writer of fsynced 200 MB files,
/// saw the WAL reach 99 MiB of a 64 MiB limit with 60 of 110 releases missing their
/// restart). Capture reads nothing meanwhile: this is lag, not loss.
const RELEASE_WAIT_CHECKPOINTING: Duration = Duration::from_secs(5);

/// SQLite's default `wal_autocheckpoint`: the WAL size at which the application itself would
/// checkpoint and restart. Releasing there keeps the application's checkpoints as they are
/// without ferry; held past it, every commit's autocheckpoint attempt backfills (and syncs)
/// a little, which costs the writer.
const APP_AUTOCHECKPOINT_FRAMES: u64 = 1000;

/// What [`SqliteCapture::read_committed`] found.
enum Committed {
    Txns {
        txns: Vec<WalTxn>,
        more: bool,
    },
    Nothing,
    /// The WAL no longer proves the shadow's point: compare states.
    Gap,
}

fn count_changes(stats: &mut CaptureStats, changes: &[ferry_core::RowChange], schema: usize) {
    for c in changes {
        match c.op {
            Op::Insert => stats.inserts += 1,
            Op::Update => stats.updates += 1,
            Op::Delete => stats.deletes += 1,
        }
    }
    stats.schema_changes += schema as u64;
}

impl Drop for SqliteCapture {
    fn drop(&mut self) {
        let _ = self.release_all();
        // Not needed for correctness (the journal redoes what the last checkpoint missed),
        // but a cleanly closed capture opens without redo.
        let _ = self.shadow.checkpoint();
    }
}

/// File-notification hints on the database's directory, watched only while capture waits
/// (see [`SqliteCapture::run`]).
struct ChangeHints {
    watcher: notify::RecommendedWatcher,
    rx: mpsc::Receiver<()>,
    dir: PathBuf,
    watching: bool,
    /// Called on the first hint after each step (see [`SqliteCapture::on_change_hint`]).
    callback: Arc<std::sync::Mutex<Option<HintCallback>>>,
    fired: Arc<AtomicBool>,
}

type HintCallback = Box<dyn Fn() + Send>;

impl ChangeHints {
    fn new(db_path: &Path) -> Option<ChangeHints> {
        let (tx, rx) = mpsc::sync_channel::<()>(1);
        let callback: Arc<std::sync::Mutex<Option<HintCallback>>> = Arc::default();
        let fired = Arc::new(AtomicBool::new(false));
        let (cb, f) = (callback.clone(), fired.clone());
        // Only the database's own files (`app.db`, `-wal`, `-shm`, `-journal`) give hints:
        // other files in the directory, ferry's own log among them when the state
        // directory is there, must not wake capture.
        let db_name = db_path.file_name()?.to_os_string();
        let watcher = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
            // Opening, closing or a metadata change alters no page (capture's own
            // connections cause those); writes, creations, removals and renames do.
            let ours = ev.as_ref().map_or(true, |ev| {
                use notify::EventKind as K;
                use notify::event::ModifyKind as M;
                matches!(
                    ev.kind,
                    K::Modify(M::Data(_) | M::Name(_) | M::Any | M::Other)
                        | K::Create(_)
                        | K::Remove(_)
                        | K::Any
                        | K::Other
                ) && ev.paths.iter().any(|p| {
                    p.file_name().is_some_and(|n| {
                        n.as_encoded_bytes().starts_with(db_name.as_encoded_bytes())
                    })
                })
            });
            if !ours {
                return;
            }
            let _ = tx.try_send(());
            if !f.swap(true, Ordering::SeqCst)
                && let Ok(cb) = cb.lock()
                && let Some(cb) = cb.as_ref()
            {
                cb();
            }
        })
        .ok()?;
        let dir = db_path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .to_path_buf();
        let mut hints = ChangeHints {
            watcher,
            rx,
            dir,
            watching: false,
            callback,
            fired,
        };
        // A directory that cannot be watched means no hints at all: polling alone.
        hints.arm();
        hints.watching.then_some(hints)
    }

    /// Starts watching; true when it was not watching before.
    fn arm(&mut self) -> bool {
        use notify::Watcher;
        if self.watching {
            return false;
        }
        self.watching = self
            .watcher
            .watch(&self.dir, notify::RecursiveMode::NonRecursive)
            .is_ok();
        self.watching
    }

    fn disarm(&mut self) {
        use notify::Watcher;
        if self.watching {
            let _ = self.watcher.unwatch(&self.dir);
            self.watching = false;
        }
    }
}
