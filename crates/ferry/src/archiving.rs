//! Archiving beside capture: an archiver thread per source, fed by the capture thread.
//!
//! Why a thread of its own: the capture thread holds a read transaction on the application's
//! database between steps, so anything slow it does there keeps SQLite's WAL from restarting
//! and the application's checkpoints waiting. Copying segments to an archive that may be a
//! slow or hung remote file system, reading copies back for their checks, and retention are
//! therefore done here, never on the capture thread. The one thing that must happen on the
//! capture thread is the base image: it is a copy of capture's shadow at a known LSN, which
//! is only true between steps (`SqliteCapture::write_base` takes `&mut`). That copy goes to a
//! local scratch directory (beside the capture state) and is handed over; the archiver
//! copies it into the archive, checks it and records it, then deletes the scratch file.
//! (The readers are kept during the local copy: letting them go would need the continuity
//! proof of a release, and an application that restarts its WAL twice during a long copy
//! would turn that into a full resync.)
//!
//! Why failures are not fatal: the log keeps every change the archive has not taken (its
//! `archive` consumer cursor moves only after a segment is in the manifest), so an
//! unreachable or failing archive only makes the archive lag. Capture and replication go on;
//! the archiver reports the error (log, `archive_error` in `/status`, the `archive` stage of
//! `ferry_source_errors_total`) and retries with a growing pause.
//!
//! One round of the archiver thread (every second, or at once on a request):
//! 1. open the archive if it is not open yet (`Archiver::open`);
//! 2. seal the log's newest segment if it holds records and is older than `seal_after`, so
//!    a quiet source's last changes reach the archive (the log seals by size and age only
//!    when it appends);
//! 3. archive every sealed segment (`Archiver::archive_sealed`: copy, check, manifest, then
//!    the `archive` consumer cursor);
//! 4. add the bases the capture thread handed over;
//! 5. retention; then status and metrics.

use crate::config::ArchiveConfig;
use crate::metrics::{Metrics, SourceLabel};
use ferry_archive::{Archiver, BaseMeta};
use ferry_sqlite::SqliteCapture;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

/// Default age after which a quiet source's open segment is sealed for the archive.
pub const DEFAULT_SEAL_AFTER: Duration = Duration::from_secs(60);

/// How often the archiver thread looks for sealed segments and applies retention.
const ROUND: Duration = Duration::from_secs(1);

/// Longest pause between attempts after failures.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// Where a base taken for `ferry backup now` is answered: the base's manifest entry as JSON,
/// or the error.
pub type BaseReply = Sender<Result<serde_json::Value, String>>;

enum Job {
    /// A base the capture thread wrote to `file` (a scratch file the archiver deletes).
    Base {
        file: PathBuf,
        meta: BaseMeta,
        reply: Option<BaseReply>,
    },
    /// Seal the log's open segment and archive everything sealed now (shutdown); answered
    /// when done.
    Flush(Sender<()>),
}

/// What the archiver thread publishes for the capture thread and for `ferry status`.
#[derive(Default)]
struct Shared {
    /// Whether the archive is open.
    open: bool,
    /// Capture time of the newest archived base (µs).
    last_base_at: Option<i64>,
    /// A base was asked for (forced, or a handed-over one failed) and is not archived yet.
    base_wanted: bool,
    /// Bases handed over and not yet archived (no new scheduled base meanwhile).
    bases_pending: usize,
}

/// The capture thread's handle on a source's archiver thread.
pub struct ArchiveWorker {
    source_id: String,
    jobs: Sender<Job>,
    shared: Arc<Mutex<Shared>>,
    base_interval: Option<Duration>,
    scratch_dir: PathBuf,
    scratch_seq: AtomicU64,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Where the archiver thread reports errors besides its log.
pub struct Reporting {
    pub metrics: Option<Arc<Metrics>>,
    pub status: Option<Arc<crate::status::RunStatus>>,
}

struct Worker {
    source_id: String,
    config: ArchiveConfig,
    log_dir: PathBuf,
    log: Arc<ferry_log::Log>,
    seal_after: Duration,
    shared: Arc<Mutex<Shared>>,
    reporting: Reporting,
    archiver: Option<Archiver>,
    /// Bases received while the archive could not take them yet: retried each round.
    pending: Vec<(PathBuf, BaseMeta, Option<BaseReply>)>,
    backoff: Duration,
    next_attempt: Instant,
}

impl ArchiveWorker {
    /// Starts the archiver thread of `source_id`. `scratch_dir` is a local directory for
    /// base images on their way to the archive (the source's capture directory).
    pub fn spawn(
        config: ArchiveConfig,
        source_id: &str,
        log_dir: &Path,
        log: Arc<ferry_log::Log>,
        scratch_dir: &Path,
        reporting: Reporting,
    ) -> std::io::Result<ArchiveWorker> {
        let (tx, rx) = std::sync::mpsc::channel();
        let shared = Arc::new(Mutex::new(Shared::default()));
        let base_interval = config.options().ok().and_then(|o| o.base_interval);
        let seal_after = config
            .seal_after()
            .ok()
            .flatten()
            .unwrap_or(DEFAULT_SEAL_AFTER);
        remove_scratch_bases(scratch_dir);
        // The log keeps what the archive has not taken even while the archive cannot be
        // opened (first run with the archive unreachable): hold it from its first record.
        let registered = log
            .consumers()
            .map_err(std::io::Error::other)?
            .iter()
            .any(|(name, _)| name == ferry_archive::ARCHIVE_CONSUMER);
        if !registered {
            let hold = ferry_core::Lsn(log.first_lsn().0.saturating_sub(1));
            log.set_consumer(ferry_archive::ARCHIVE_CONSUMER, hold)
                .map_err(std::io::Error::other)?;
        }
        let worker = Worker {
            source_id: source_id.to_string(),
            config,
            log_dir: log_dir.to_path_buf(),
            log,
            seal_after,
            shared: shared.clone(),
            reporting,
            archiver: None,
            pending: Vec::new(),
            backoff: Duration::from_millis(500),
            next_attempt: Instant::now(),
        };
        let thread = std::thread::Builder::new()
            .name(format!("archive-{source_id}"))
            .spawn(move || worker.run(rx))?;
        Ok(ArchiveWorker {
            source_id: source_id.to_string(),
            jobs: tx,
            shared,
            base_interval,
            scratch_dir: scratch_dir.to_path_buf(),
            scratch_seq: AtomicU64::new(0),
            thread: Some(thread),
        })
    }

    fn shared(&self) -> std::sync::MutexGuard<'_, Shared> {
        // A panic on the archiver thread poisons the lock; its data is still what it wrote.
        self.shared
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether a scheduled base is due: the archive is open and has no base, the newest is
    /// older than `base_interval`, or a base was asked for and is not archived yet. Never
    /// while handed-over bases wait (a slow archive must not collect scratch copies).
    pub fn base_due(&self, now: SystemTime) -> bool {
        let s = self.shared();
        if !s.open || s.bases_pending > 0 {
            return false;
        }
        if s.base_wanted {
            return true;
        }
        let Some(last) = s.last_base_at else {
            return true;
        };
        let Some(interval) = self.base_interval else {
            return false;
        };
        let now = ferry_archive::archiver::micros_since_epoch(now);
        now.saturating_sub(last) >= i64::try_from(interval.as_micros()).unwrap_or(i64::MAX)
    }

    /// Waits until the archiver thread has opened the archive (it opens it on its own
    /// thread, retrying); false when `wait` passed first.
    pub fn wait_open(&self, wait: Duration) -> bool {
        let deadline = Instant::now() + wait;
        loop {
            if self.shared().open {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Called by the capture thread between steps: takes a base image when one is due or
    /// `force`d (a new snapshot of the source was just taken: points after it are restorable
    /// only from a base taken after it) and hands it to the archiver thread. Only the local
    /// image is written here.
    pub fn after_step(&self, cap: &mut SqliteCapture, force: bool) -> anyhow::Result<()> {
        if force {
            self.shared().base_wanted = true;
        }
        if self.base_due(SystemTime::now()) {
            self.take_base(cap, None)?;
        }
        Ok(())
    }

    /// `ferry backup now`: a base image now, answered on `reply` once it is archived.
    pub fn backup_now(&self, cap: &mut SqliteCapture, reply: BaseReply) {
        if let Err(e) = self.take_base(cap, Some(reply.clone())) {
            let _ = reply.send(Err(format!("{e:#}")));
        }
    }

    fn take_base(&self, cap: &mut SqliteCapture, reply: Option<BaseReply>) -> anyhow::Result<()> {
        let n = self.scratch_seq.fetch_add(1, Ordering::SeqCst);
        let file = self
            .scratch_dir
            .join(format!("{SCRATCH_PREFIX}{}-{n}.db", std::process::id()));
        let copy = match cap.write_base(&file) {
            Ok(c) => c,
            Err(e) => {
                let _ = std::fs::remove_file(&file);
                return Err(e.into());
            }
        };
        let meta = BaseMeta {
            lsn: copy.lsn,
            taken_at: copy.taken_at_micros,
            page_size: Some(copy.page_size),
        };
        {
            let mut s = self.shared();
            s.bases_pending += 1;
            s.base_wanted = false;
        }
        if self.jobs.send(Job::Base { file, meta, reply }).is_err() {
            anyhow::bail!("the archiver thread of {} has stopped", self.source_id);
        }
        Ok(())
    }

    /// Shutdown: seals the log's open segment and archives everything sealed (and the bases
    /// handed over), waiting at most `wait`; then stops the thread. An archive that does not
    /// answer in time is left behind: the log keeps what it has not taken.
    pub fn finish(mut self, wait: Duration) {
        let (tx, rx) = std::sync::mpsc::channel();
        let flushed = self.jobs.send(Job::Flush(tx)).is_ok() && rx.recv_timeout(wait).is_ok();
        if !flushed {
            tracing::warn!(source = %self.source_id, "the archive did not take the last segment in time; the log keeps it and the next run archives it");
            return;
        }
        // Dropping the sender ends the thread's loop.
        let (dead, _) = std::sync::mpsc::channel();
        drop(std::mem::replace(&mut self.jobs, dead));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Scratch base images are named `archive-base-<pid>-<n>.db` in the scratch directory.
const SCRATCH_PREFIX: &str = "archive-base-";

/// Scratch images left by an earlier process (it stopped before handing them over).
fn remove_scratch_bases(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with(SCRATCH_PREFIX) || name == "archive-base.tmp.db" {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

impl Worker {
    fn run(mut self, jobs: Receiver<Job>) {
        let mut flush: Option<Sender<()>> = None;
        loop {
            match jobs.recv_timeout(ROUND) {
                Ok(Job::Base { file, meta, reply }) => self.pending.push((file, meta, reply)),
                Ok(Job::Flush(done)) => flush = Some(done),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            // Requests that arrived meanwhile are taken in the same round.
            while let Ok(job) = jobs.try_recv() {
                match job {
                    Job::Base { file, meta, reply } => self.pending.push((file, meta, reply)),
                    Job::Flush(done) => flush = Some(done),
                }
            }
            if flush.is_some() {
                // A flush is the last request: try now, not after the backoff.
                self.next_attempt = Instant::now();
            }
            if Instant::now() >= self.next_attempt {
                match self.round(flush.is_some()) {
                    Ok(()) => {
                        self.backoff = Duration::from_millis(500);
                        self.report_ok();
                    }
                    Err(e) => self.failed(e),
                }
            }
            if let Some(done) = flush.take() {
                let _ = done.send(());
            }
        }
        for (file, _, reply) in self.pending.drain(..) {
            let _ = std::fs::remove_file(&file);
            if let Some(r) = reply {
                let _ = r.send(Err("ferry stopped before the base was archived".into()));
            }
        }
    }

    fn shared(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.shared
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn round(&mut self, flush: bool) -> anyhow::Result<()> {
        if self.archiver.is_none() {
            let opts = self.config.options()?;
            let archiver = Archiver::open(opts, &self.source_id, &self.log_dir)?;
            let mut s = self.shared();
            s.open = true;
            s.last_base_at = archiver.manifest().bases.last().map(|b| b.taken_at);
            drop(s);
            self.archiver = Some(archiver);
        }
        let shared = self.shared.clone();
        let lock = || {
            shared
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
        };
        let Some(archiver) = self.archiver.as_mut() else {
            return Ok(());
        };
        let now = SystemTime::now();
        if let Some(newest) = self.log.segments()?.last()
            && !newest.sealed
            && newest.records > 0
            && (flush
                || now
                    .duration_since(newest.created_at)
                    .is_ok_and(|age| age >= self.seal_after))
        {
            self.log.seal()?;
        }
        archiver.archive_sealed()?;
        while let Some((file, meta, reply)) = self.pending.first().cloned() {
            match archiver.add_base(&file, meta) {
                Ok(entry) => {
                    tracing::info!(source = %self.source_id, lsn = %entry.lsn, bytes = entry.bytes, "base backup archived");
                    let _ = std::fs::remove_file(&file);
                    self.pending.remove(0);
                    let mut s = lock();
                    s.bases_pending = s.bases_pending.saturating_sub(1);
                    s.last_base_at = Some(entry.taken_at);
                    drop(s);
                    if let Some(r) = reply {
                        let _ = r.send(Ok(serde_json::to_value(&entry).unwrap_or_default()));
                    }
                }
                Err(e) => {
                    // The image stays for the next attempt, unless it is the file that is
                    // wrong: then a new one is taken.
                    if !matches!(e, ferry_archive::ArchiveError::Io { .. }) {
                        let _ = std::fs::remove_file(&file);
                        self.pending.remove(0);
                        let mut s = lock();
                        s.bases_pending = s.bases_pending.saturating_sub(1);
                        s.base_wanted = true;
                        drop(s);
                        if let Some(r) = reply {
                            let _ = r.send(Err(e.to_string()));
                        }
                    } else if let Some(r) = reply {
                        let _ = r.send(Err(format!("{e} (retrying in the background)")));
                        self.pending[0].2 = None;
                    }
                    return Err(e.into());
                }
            }
        }
        archiver.apply_retention(now)?;
        Ok(())
    }

    fn failed(&mut self, e: anyhow::Error) {
        let msg = format!("archive of {}: {e:#}", self.source_id);
        tracing::error!(source = %self.source_id, error = %msg, retry_in = ?self.backoff, "archiving failed; capture and replication go on, the log keeps what the archive has not taken");
        if let Some(m) = &self.reporting.metrics {
            m.source_errors
                .get_or_create(&crate::metrics::SourceError {
                    source: self.source_id.clone(),
                    stage: "archive".into(),
                    kind: "io".into(),
                })
                .inc();
        }
        if let Some(st) = &self.reporting.status {
            st.update(&self.source_id, |s| s.archive_error = Some(msg.clone()));
        }
        // A failed open is tried again from the start (the archive may have come back).
        if matches!(
            e.downcast_ref::<ferry_archive::ArchiveError>(),
            Some(ferry_archive::ArchiveError::Io { .. })
        ) && self.shared().open
        {
            self.archiver = None;
            self.shared().open = false;
        }
        self.next_attempt = Instant::now() + self.backoff;
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
    }

    fn report_ok(&self) {
        if let Some(st) = &self.reporting.status {
            st.update(&self.source_id, |s| s.archive_error = None);
        }
        let (Some(m), Some(archiver)) = (&self.reporting.metrics, &self.archiver) else {
            return;
        };
        let st = archiver.status();
        let l = SourceLabel {
            source: self.source_id.clone(),
        };
        if let Some(at) = st.last_base_at {
            m.archive_last_base_timestamp
                .get_or_create(&l)
                .set(at / 1_000_000);
        }
        if let Some(lsn) = st.last_base_lsn {
            m.archive_last_base_lsn.get_or_create(&l).set(lsn.0 as i64);
        }
        m.archive_bytes
            .get_or_create(&l)
            .set(st.archive_bytes as i64);
        let behind = self
            .log
            .segments()
            .map(|segs| {
                segs.iter()
                    .filter(|s| s.sealed && s.last_lsn > st.archived_through_lsn)
                    .count()
            })
            .unwrap_or(0);
        m.archive_lag_segments.get_or_create(&l).set(behind as i64);
    }
}

/// Archiving is off for this source: a consumer cursor `archive` left by an earlier run
/// with an archive would keep the log from ever deleting a segment. It is removed, loudly:
/// turning archiving on again later leaves a gap in the archive, which restores cannot cross
/// until a base is taken after it (on the schedule, or with `ferry backup now`).
pub fn release_archive_consumer(log: &ferry_log::Log, source_id: &str) {
    let Ok(consumers) = log.consumers() else {
        return;
    };
    let Some((_, at)) = consumers
        .iter()
        .find(|(name, _)| name == ferry_archive::ARCHIVE_CONSUMER)
    else {
        return;
    };
    tracing::warn!(source = %source_id, archived_through = %at, "archiving is off for this source: removing the log's `archive` consumer so the log can delete what it no longer needs (if the archive is turned on again, it has a gap from here until its next base: take one with `ferry backup now`)");
    if let Err(e) = log.remove_consumer(ferry_archive::ARCHIVE_CONSUMER) {
        tracing::error!(source = %source_id, error = %e, "could not remove the log's `archive` consumer: the log keeps every segment until it is removed");
    }
}
