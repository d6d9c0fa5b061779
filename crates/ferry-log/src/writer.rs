//! The single writer: recovery on open, group-commit append, rolling and sealing segments,
//! retention.
//!
//! Group commit. Appenders frame their records into one shared pending buffer under the
//! state mutex (assigning LSNs there, so LSN order is file order) and then wait on a condvar
//! until the durable LSN covers their last record. A waiting appender takes whichever of two
//! roles is free, so no dedicated thread is needed:
//! - the *write role* takes the whole pending buffer and the open segment, releases the mutex
//!   and writes the frames with positional writes (rolling segments as needed), without
//!   syncing;
//! - the *sync role* calls `fdatasync` once on the current segment for everything written so
//!   far, publishes that LSN to `durable`, then re-takes the mutex, raises the durable LSN and
//!   wakes the appenders of the batches it covered.
//!
//! The two roles run at the same time: the next batch is copied into the page cache while the
//! previous one's fdatasync waits for the disk, so the disk never idles while the CPU writes
//! (with one leader doing write then sync, the write time was lost: about a quarter of each
//! round for 1 MiB batches). Appends arriving meanwhile fill the next buffer, so under load
//! each sync covers everything written during the previous one. A role that frees up while
//! its holder has nothing left to wait for wakes one appender to take it. The pending buffer
//! is bounded ([`MAX_PENDING_BYTES`]): appenders wait while it is full, which pushes back on
//! capture instead of growing memory.
//!
//! Order of operations on disk, and why:
//! - new segment: header to `.<name>.tmp`, fdatasync, rename to `<name>`, fsync(dir); only
//!   then are records written into it, so a named segment always has a durable header and an
//!   acknowledged record's segment cannot vanish with its directory entry;
//! - roll/seal: trailer after the last record, fdatasync, and only then the next segment; so
//!   every segment but the newest is sealed and fully durable, and only the newest can have a
//!   torn tail;
//! - durable LSN: raised in memory and in `durable` strictly after the fdatasync returned,
//!   and only to the last LSN whose frame was completely written before that fdatasync
//!   started (the sync role reads it under the mutex when it starts); frames written while the
//!   sync runs wait for the next one. Every frame not yet synced is in the current segment: a
//!   roll syncs the full segment (its trailer) before the next one is created;
//! - `Log::seal` stops appenders from taking new roles, waits for the running ones, then
//!   writes what is pending and seals, its trailer's fdatasync covering everything;
//! - retention: unlink whole sealed segments oldest first, then fsync(dir).
//!
//! A failed write or fsync poisons the log (every later call errors): after a failed fsync
//! the kernel may already have dropped the dirty pages, so retrying could acknowledge data
//! that is not on disk (the PostgreSQL "fsyncgate" lesson; raft-engine does the same).

use crate::consumers;
use crate::format::{self, CONSUMERS_DIR, DURABLE_FILE, LOCK_FILE, MAX_PAYLOAD_BYTES};
use crate::reader::{DurableSource, LogReader};
use crate::segment::{self, FullScan};
use crate::storage::{LockHold, LogFile, LogStorage, RealStorage};
use crate::{
    LogError, LogId, LogOptions, RetentionReport, SegmentInfo, SyncPolicy, TornTail, now_micros,
};
use ferry_core::Lsn;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Appenders wait while this many framed bytes are waiting for the running sync.
pub const MAX_PENDING_BYTES: usize = 64 * 1024 * 1024;

/// Appenders wait on `batch_done[batch id % BATCH_SLOTS]`. Batches in flight (being synced,
/// written and waiting for a sync, being written, filling) rarely number more; if they do, a
/// wake-up meant for another batch is spurious, never lost (waiters re-check the durable LSN).
const BATCH_SLOTS: usize = 4;

/// A batch buffer larger than this is freed after its sync instead of being reused.
const SPARE_BUFFER_KEEP_BYTES: usize = 8 * 1024 * 1024;

type SyncObserver = Box<dyn Fn(Duration) + Send + Sync>;

/// The log's single writer. `Send + Sync`: share it with `Arc` between appenders, readers
/// and the retention task. Async callers use `spawn_blocking`.
pub struct Log {
    shared: Arc<Shared>,
    torn_tail: Option<TornTail>,
    // Dropped last: the lock is released only after everything else is closed.
    _lock: Box<dyn LockHold>,
}

pub(crate) struct Shared {
    pub storage: Arc<dyn LogStorage>,
    pub dir: PathBuf,
    pub log_id: LogId,
    source_identity: String,
    opts: LogOptions,
    state: Mutex<WriterState>,
    /// Appenders wait for their batch here (see [`BATCH_SLOTS`]), so finishing a batch wakes
    /// its own appenders, not the ones of the next batch; a free role wakes one of them.
    batch_done: [Condvar; BATCH_SLOTS],
    /// The durable LSN advanced, a role was released while a seal waits, or the log was
    /// poisoned (for `wait_for` and `seal`).
    advanced: Condvar,
    /// The pending buffer was taken (for appenders held back by [`MAX_PENDING_BYTES`]).
    space: Condvar,
    /// Mirrors `WriterState::durable` for lock-free reads.
    pub durable: AtomicU64,
    durable_file: Box<dyn LogFile>,
    retention: Mutex<()>,
    sync_observer: Mutex<Option<SyncObserver>>,
    syncs: AtomicU64,
}

struct OpenSegment {
    path: PathBuf,
    /// Shared with the sync role, which syncs it while the write role appends the next batch.
    file: Arc<dyn LogFile>,
    first_lsn: u64,
    records: u64,
    /// Write offset: the file's length.
    end: u64,
    created_at_micros: i64,
}

struct WriterState {
    next_lsn: u64,
    durable: u64,
    /// Framed records waiting for the next sync, and where each frame starts.
    pending: Vec<u8>,
    pending_starts: Vec<usize>,
    pending_first: u64,
    /// Emptied buffers kept for reuse.
    spare: Vec<u8>,
    spare_starts: Vec<usize>,
    /// An appender holds the write role: it took a batch and the current segment.
    writing: bool,
    /// An appender holds the sync role. One at a time: with the write of the next batch
    /// already overlapping the sync, a second concurrent fdatasync of the same file measured
    /// no gain (ext4 on virtio, 16 and 256 producers, 2 and 3 tried).
    syncing: bool,
    /// The highest LSN a started sync covers.
    sync_started: u64,
    /// `Log::seal` calls waiting for the roles to be free or sealing; no new role is taken
    /// meanwhile.
    seal_waiting: u32,
    /// Id of the batch now filling; the writer takes it and starts the next id.
    batch_id: u64,
    /// The appenders of every batch with a lower id have been told their records are durable.
    done_batch_end: u64,
    /// Frames written but not yet covered by a finished sync.
    unsynced: Option<Unsynced>,
    /// `None` while the writer has it, or when the newest segment is sealed.
    current: Option<OpenSegment>,
    /// First LSN of the oldest segment.
    oldest_first: u64,
    poisoned: Option<String>,
    last_sync_started: Option<Instant>,
}

/// Written frames waiting for a sync. They are all in `file` (the current segment) or in
/// sealed segments, which were synced when sealed.
#[derive(Clone)]
struct Unsynced {
    file: Arc<dyn LogFile>,
    path: PathBuf,
    /// Every frame up to this LSN is written.
    written: u64,
    /// The batches below this id are written.
    batch_end: u64,
}

/// A batch taken from the pending buffer by the write role (or a seal).
struct TakenBatch {
    bytes: Vec<u8>,
    starts: Vec<usize>,
    /// LSN of the first frame.
    first: u64,
    id: u64,
}

fn batch_slot(id: u64) -> usize {
    (id % BATCH_SLOTS as u64) as usize
}

/// Written frames wait for a sync and nobody syncs (a waiting seal takes over instead).
fn sync_available(st: &WriterState) -> bool {
    !st.syncing
        && st.seal_waiting == 0
        && st
            .unsynced
            .as_ref()
            .is_some_and(|u| u.written > st.durable.max(st.sync_started))
}

/// Frames are pending and nobody writes. Writing does not wait for the running sync: the
/// next sync then covers every batch written meanwhile.
fn write_available(st: &WriterState) -> bool {
    !st.writing && st.seal_waiting == 0 && !st.pending_starts.is_empty()
}

fn lock_state(m: &Mutex<WriterState>) -> MutexGuard<'_, WriterState> {
    // A panic while holding this lock happens only in a bug; the state it protects is still
    // consistent at every await point, so keep going rather than cascade panics.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Log {
    /// Opens the log in `dir` (on the real file system), creating it if absent.
    ///
    /// Takes `<dir>/LOCK` (`LogError::Locked` if another writer holds it). Checks every
    /// segment header, the seal trailers of all but the newest segment and every record of the
    /// newest; truncates a torn tail of the newest segment (see [`Log::recovered_torn_tail`]);
    /// refuses anything else that is damaged with `LogError::Corrupt` naming segment and
    /// offset, modifying nothing. A log made for another `source_identity` is refused with
    /// `LogError::WrongLog`.
    pub fn open(dir: &Path, source_identity: &str, opts: LogOptions) -> Result<Log, LogError> {
        Log::open_with(Arc::new(RealStorage), dir, source_identity, opts)
    }

    /// [`Log::open`] on any storage (the simulated file system in crash tests).
    pub fn open_with(
        storage: Arc<dyn LogStorage>,
        dir: &Path,
        source_identity: &str,
        opts: LogOptions,
    ) -> Result<Log, LogError> {
        if opts.segment_bytes == 0 {
            return Err(LogError::InvalidOptions {
                reason: "segment_bytes must be greater than 0".into(),
            });
        }
        if source_identity.len() > format::MAX_SOURCE_IDENTITY_BYTES {
            return Err(LogError::InvalidOptions {
                reason: format!(
                    "the source identity is {} bytes, at most {} are allowed",
                    source_identity.len(),
                    format::MAX_SOURCE_IDENTITY_BYTES
                ),
            });
        }
        storage
            .create_dir_all(dir)
            .map_err(|e| LogError::io("creating", dir, e))?;
        let lock_path = dir.join(LOCK_FILE);
        let lock = storage
            .try_lock(&lock_path)
            .map_err(|e| LogError::io("locking", &lock_path, e))?
            .ok_or_else(|| LogError::Locked {
                dir: dir.to_path_buf(),
            })?;
        let cdir = dir.join(CONSUMERS_DIR);
        storage
            .create_dir_all(&cdir)
            .map_err(|e| LogError::io("creating", &cdir, e))?;
        remove_temp_files(&*storage, dir)?;
        remove_temp_files(&*storage, &cdir)?;

        let segs = segment::list_segments(&*storage, dir)?;
        let recovered = if segs.is_empty() {
            create_log(&*storage, dir, source_identity)?
        } else {
            recover(&*storage, dir, source_identity, &segs)?
        };

        let published = format::encode_durable(recovered.log_id, Lsn(recovered.durable));
        let durable_file = open_durable_file(&*storage, dir, &published)?;

        let state = WriterState {
            next_lsn: recovered.durable + 1,
            durable: recovered.durable,
            pending: Vec::new(),
            pending_starts: Vec::new(),
            pending_first: recovered.durable + 1,
            spare: Vec::new(),
            spare_starts: Vec::new(),
            writing: false,
            syncing: false,
            sync_started: recovered.durable,
            seal_waiting: 0,
            batch_id: 0,
            done_batch_end: 0,
            unsynced: None,
            current: recovered.current,
            oldest_first: recovered.oldest_first,
            poisoned: None,
            last_sync_started: None,
        };
        Ok(Log {
            shared: Arc::new(Shared {
                storage,
                dir: dir.to_path_buf(),
                log_id: recovered.log_id,
                source_identity: source_identity.to_string(),
                opts,
                state: Mutex::new(state),
                batch_done: std::array::from_fn(|_| Condvar::new()),
                advanced: Condvar::new(),
                space: Condvar::new(),
                durable: AtomicU64::new(recovered.durable),
                durable_file,
                retention: Mutex::new(()),
                sync_observer: Mutex::new(None),
                syncs: AtomicU64::new(0),
            }),
            torn_tail: recovered.torn_tail,
            _lock: lock,
        })
    }

    pub fn log_id(&self) -> LogId {
        self.shared.log_id
    }

    pub fn source_identity(&self) -> &str {
        &self.shared.source_identity
    }

    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    /// The torn tail that [`Log::open`] truncated, if any (worth a log line and a metric).
    pub fn recovered_torn_tail(&self) -> Option<&TornTail> {
        self.torn_tail.as_ref()
    }

    /// Appends one record; returns its LSN once it is durable. Many concurrent appenders
    /// share one fdatasync.
    pub fn append(&self, payload: &[u8]) -> Result<Lsn, LogError> {
        let range = self.append_frames(std::slice::from_ref(&payload))?;
        Ok(*range.end())
    }

    /// Appends records under consecutive LSNs with one durability wait. An empty batch
    /// returns the empty range `durable+1 ..= durable`.
    pub fn append_batch(&self, payloads: &[Vec<u8>]) -> Result<RangeInclusive<Lsn>, LogError> {
        let slices: Vec<&[u8]> = payloads.iter().map(|p| p.as_slice()).collect();
        self.append_frames(&slices)
    }

    fn append_frames(&self, payloads: &[&[u8]]) -> Result<RangeInclusive<Lsn>, LogError> {
        for p in payloads {
            if p.len() > MAX_PAYLOAD_BYTES {
                return Err(LogError::PayloadTooLarge {
                    len: p.len(),
                    max: MAX_PAYLOAD_BYTES,
                });
            }
        }
        let sh = &*self.shared;
        let mut st = lock_state(&sh.state);
        loop {
            if let Some(reason) = &st.poisoned {
                return Err(LogError::Poisoned {
                    reason: reason.clone(),
                });
            }
            if payloads.is_empty() {
                return Ok(Lsn(st.durable + 1)..=Lsn(st.durable));
            }
            // With no writer and no syncer at work nobody would empty a full buffer, so this
            // appender adds to it and then writes it itself.
            if st.pending.len() < MAX_PENDING_BYTES
                || !(st.writing || st.syncing || st.seal_waiting > 0)
            {
                break;
            }
            st = sh.space.wait(st).unwrap_or_else(|p| p.into_inner());
        }
        let first = st.next_lsn;
        if st.pending_starts.is_empty() {
            st.pending_first = first;
        }
        for p in payloads {
            let start = st.pending.len();
            st.pending_starts.push(start);
            let lsn = Lsn(st.next_lsn);
            format::encode_frame(&mut st.pending, lsn, p);
            st.next_lsn += 1;
        }
        let last = st.next_lsn - 1;
        let my_slot = batch_slot(st.batch_id);
        loop {
            if let Some(reason) = &st.poisoned {
                return Err(LogError::Poisoned {
                    reason: reason.clone(),
                });
            }
            if st.durable >= last {
                // Work this appender leaves behind must not wait for an unrelated wake-up.
                self.kick(&st);
                return Ok(Lsn(first)..=Lsn(last));
            }
            // Any waiting appender does whatever is free: the sync first (it is what everyone
            // waits for), else writing the next batch while a sync runs.
            if sync_available(&st) {
                st = self.sync_role(st)?;
                continue;
            }
            if write_available(&st) {
                st = self.write_role(st)?;
                continue;
            }
            st = sh.batch_done[my_slot]
                .wait(st)
                .unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Wakes one appender for each role that is free and wanted, so that a sync or a write
    /// never waits for an appender that happens to wake up. Called with the state locked.
    fn kick(&self, st: &WriterState) {
        let sh = &*self.shared;
        if sync_available(st)
            && let Some(u) = &st.unsynced
        {
            // Appenders of the newest written batch wait for this sync.
            sh.batch_done[batch_slot(u.batch_end - 1)].notify_one();
        }
        if write_available(st) {
            sh.batch_done[batch_slot(st.batch_id)].notify_one();
        }
    }

    /// Takes the pending batch and its batch id, leaving an empty buffer to fill.
    fn take_batch(&self, st: &mut WriterState) -> TakenBatch {
        let mut bytes = std::mem::take(&mut st.spare);
        let mut starts = std::mem::take(&mut st.spare_starts);
        std::mem::swap(&mut bytes, &mut st.pending);
        std::mem::swap(&mut starts, &mut st.pending_starts);
        let first = st.pending_first;
        st.pending_first = st.next_lsn;
        let id = st.batch_id;
        st.batch_id += 1;
        // Appenders held back by a full buffer may fill the next batch now.
        self.shared.space.notify_all();
        TakenBatch {
            bytes,
            starts,
            first,
            id,
        }
    }

    /// Keeps a written batch's buffers for reuse, unless a burst made them large.
    fn recycle(st: &mut WriterState, mut batch: TakenBatch) {
        batch.bytes.clear();
        batch.starts.clear();
        if batch.bytes.capacity() <= SPARE_BUFFER_KEEP_BYTES {
            st.spare = batch.bytes;
            st.spare_starts = batch.starts;
        }
    }

    /// The writer role: writes the pending batch into the segments (rolling them as needed)
    /// without syncing it; the sync role makes it durable. Called with the state locked and
    /// `write_available`.
    fn write_role<'a>(
        &'a self,
        mut st: MutexGuard<'a, WriterState>,
    ) -> Result<MutexGuard<'a, WriterState>, LogError> {
        let sh = &*self.shared;
        st.writing = true;
        let batch = self.take_batch(&mut st);
        let mut current = st.current.take();
        self.kick(&st);
        drop(st);

        let result = self.write_batch(&mut current, &batch.bytes, &batch.starts, batch.first);
        let target = batch.first + batch.starts.len() as u64 - 1;
        let batch_end = batch.id + 1;

        let mut st = lock_state(&sh.state);
        st.writing = false;
        Self::recycle(&mut st, batch);
        if st.seal_waiting > 0 {
            sh.advanced.notify_all();
        }
        match result {
            Ok(()) => {
                // Every frame up to `target` is now either in a sealed (synced) segment or in
                // the current one: syncing the current segment's file makes them durable.
                st.unsynced = current.as_ref().map(|seg| Unsynced {
                    file: seg.file.clone(),
                    path: seg.path.clone(),
                    written: target,
                    batch_end,
                });
                st.current = current;
                Ok(st)
            }
            Err(e) => Err(self.poison(st, e)),
        }
    }

    /// The sync role: one fdatasync of the newest segment for everything written so far, then
    /// the durable LSN is raised and the covered batches' appenders are woken. Called with the
    /// state locked and `sync_available`.
    fn sync_role<'a>(
        &'a self,
        mut st: MutexGuard<'a, WriterState>,
    ) -> Result<MutexGuard<'a, WriterState>, LogError> {
        let sh = &*self.shared;
        st.syncing = true;
        if let SyncPolicy::Interval(every) = sh.opts.sync {
            // The interval counts from the last sync; a wake-up before it is due only checks
            // for poisoning.
            while let Some(due) = st.last_sync_started.map(|last| last + every) {
                let now = Instant::now();
                if now >= due || st.poisoned.is_some() {
                    break;
                }
                st = sh
                    .advanced
                    .wait_timeout(st, due - now)
                    .map(|(g, _)| g)
                    .unwrap_or_else(|p| p.into_inner().0);
            }
        }
        // Another sync may have started during the wait and covered everything.
        let Some(u) = st
            .unsynced
            .as_ref()
            .filter(|u| u.written > st.durable.max(st.sync_started))
            .cloned()
        else {
            st.syncing = false;
            return Ok(st);
        };
        st.last_sync_started = Some(Instant::now());
        st.sync_started = u.written;
        // Someone else writes the next batch while this thread is inside fdatasync.
        self.kick(&st);
        drop(st);

        let started = Instant::now();
        let result = u
            .file
            .sync_data()
            .map_err(|e| LogError::io("syncing", &u.path, e))
            .and_then(|()| self.published_sync(started, u.written));

        let mut st = lock_state(&sh.state);
        st.syncing = false;
        if st.seal_waiting > 0 {
            sh.advanced.notify_all();
        }
        match result {
            // After another sync failed, a later one that succeeds proves nothing: the kernel
            // may have dropped the failed pages and marked them clean.
            Ok(()) if st.poisoned.is_some() => Ok(st),
            Ok(()) => {
                self.raise_durable(&mut st, u.written, u.batch_end);
                Ok(st)
            }
            Err(e) => Err(self.poison(st, e)),
        }
    }

    /// Counts and times a sync that made everything up to `target` durable, and publishes
    /// `target` in `durable` (only now: the file may lag the truth, never lead it).
    fn published_sync(&self, started: Instant, target: u64) -> Result<(), LogError> {
        let sh = &*self.shared;
        sh.syncs.fetch_add(1, Ordering::Relaxed);
        if let Some(observe) = &*sh.sync_observer.lock().unwrap_or_else(|p| p.into_inner()) {
            observe(started.elapsed());
        }
        let path = sh.dir.join(DURABLE_FILE);
        sh.durable_file
            .write_all_at(&format::encode_durable(sh.log_id, Lsn(target)), 0)
            .map_err(|e| LogError::io("writing", path, e))
    }

    /// Raises the durable LSN to `target` after the sync covering it, and wakes the appenders
    /// of the batches below `batch_end`.
    fn raise_durable(&self, st: &mut WriterState, target: u64, batch_end: u64) {
        let sh = &*self.shared;
        if target > st.durable {
            st.durable = target;
            sh.durable.store(target, Ordering::Release);
        }
        if st
            .unsynced
            .as_ref()
            .is_some_and(|u| u.written <= st.durable)
        {
            st.unsynced = None;
        }
        let from = st
            .done_batch_end
            .max(batch_end.saturating_sub(BATCH_SLOTS as u64));
        for id in from..batch_end {
            sh.batch_done[batch_slot(id)].notify_all();
        }
        st.done_batch_end = st.done_batch_end.max(batch_end);
        sh.advanced.notify_all();
    }

    /// Marks the log poisoned after a failed write or sync and wakes everyone to see it.
    fn poison(&self, mut st: MutexGuard<'_, WriterState>, e: LogError) -> LogError {
        let sh = &*self.shared;
        st.poisoned = Some(e.to_string());
        for cv in sh.batch_done.iter().chain([&sh.advanced, &sh.space]) {
            cv.notify_all();
        }
        e
    }

    /// Writes `batch` (frames starting at `starts`, the first with LSN `first`) into the
    /// segments, rolling them as needed. A roll seals (and so syncs) the full segment before
    /// the next one is created, so only the current segment can hold unsynced frames.
    fn write_batch(
        &self,
        current: &mut Option<OpenSegment>,
        batch: &[u8],
        starts: &[usize],
        first: u64,
    ) -> Result<(), LogError> {
        let sh = &*self.shared;
        let n = starts.len();
        let frame_end = |k: usize| {
            if k + 1 < n {
                starts[k + 1]
            } else {
                batch.len()
            }
        };
        let max_age = sh
            .opts
            .segment_max_age
            .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX));
        let mut i = 0;
        while i < n {
            let seg = match current {
                Some(seg) => seg,
                None => current.insert(create_segment(
                    &*sh.storage,
                    &sh.dir,
                    sh.log_id,
                    &sh.source_identity,
                    first + i as u64,
                )?),
            };
            let frame_len = (frame_end(i) - starts[i]) as u64;
            let aged = max_age
                .is_some_and(|age| now_micros().saturating_sub(seg.created_at_micros) >= age);
            if seg.records > 0 && (seg.end + frame_len > sh.opts.segment_bytes || aged) {
                seal_segment(seg)?;
                *current = None;
                continue;
            }
            let mut j = i + 1;
            let mut end = seg.end + frame_len;
            while j < n {
                let next = (frame_end(j) - starts[j]) as u64;
                if end + next > sh.opts.segment_bytes {
                    break;
                }
                end += next;
                j += 1;
            }
            seg.file
                .write_all_at(&batch[starts[i]..frame_end(j - 1)], seg.end)
                .map_err(|e| LogError::io("writing", &seg.path, e))?;
            seg.end = end;
            seg.records += (j - i) as u64;
            i = j;
        }
        Ok(())
    }

    /// The highest LSN that is durable (`Lsn::ZERO` when the log is empty).
    pub fn durable_lsn(&self) -> Lsn {
        Lsn(self.shared.durable.load(Ordering::Acquire))
    }

    /// The oldest retained record: `Lsn::ZERO` when the log has never held one; when
    /// retention removed every record, the LSN the next record will get.
    pub fn first_lsn(&self) -> Lsn {
        let st = lock_state(&self.shared.state);
        if st.durable == 0 {
            Lsn::ZERO
        } else {
            Lsn(st.oldest_first)
        }
    }

    /// A cursor over the durable records from `from` on (`Lsn::ZERO`: from the oldest
    /// retained). It ends (returns `None`) when it catches up with the durable LSN; call
    /// `next()` again after [`Log::wait_for`] to continue.
    pub fn reader(&self, from: Lsn) -> Result<LogReader, LogError> {
        let sh = &self.shared;
        LogReader::new(
            sh.storage.clone(),
            sh.dir.clone(),
            sh.log_id,
            DurableSource::Writer(sh.clone()),
            from,
        )
    }

    /// Blocks until the durable LSN exceeds `after` or `timeout` passes; returns the durable
    /// LSN. Returns early (with the unchanged LSN) if the log is poisoned.
    pub fn wait_for(&self, after: Lsn, timeout: Duration) -> Lsn {
        let sh = &*self.shared;
        let deadline = Instant::now() + timeout;
        let mut st = lock_state(&sh.state);
        while st.durable <= after.0 && st.poisoned.is_none() {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            st = sh
                .advanced
                .wait_timeout(st, deadline - now)
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
        }
        Lsn(st.durable)
    }

    /// Seals the current segment now (after making everything appended so far durable): it
    /// gets its trailer and is never written again; the next append starts a new segment. A
    /// segment without records is left open (sealing it would add nothing).
    pub fn seal(&self) -> Result<(), LogError> {
        let sh = &*self.shared;
        let mut st = lock_state(&sh.state);
        // Appenders take no new role while a seal waits, so the running ones finish and the
        // seal gets both: it writes what is pending and its trailer's sync covers everything.
        st.seal_waiting += 1;
        loop {
            if let Some(reason) = st.poisoned.clone() {
                st.seal_waiting -= 1;
                return Err(LogError::Poisoned { reason });
            }
            if !st.writing && !st.syncing {
                break;
            }
            st = sh.advanced.wait(st).unwrap_or_else(|p| p.into_inner());
        }
        // `seal_waiting` stays raised while this seal writes and syncs: no role is taken.
        let batch = self.take_batch(&mut st);
        let mut current = st.current.take();
        let written_before = st.unsynced.as_ref().map(|u| (u.written, u.batch_end));
        let durable_before = (st.durable, st.done_batch_end);
        drop(st);

        let n = batch.starts.len() as u64;
        let started = Instant::now();
        let result = self
            .write_batch(&mut current, &batch.bytes, &batch.starts, batch.first)
            .and_then(|()| {
                let Some(seg) = current.as_mut().filter(|seg| seg.records > 0) else {
                    return Ok(false);
                };
                seal_segment(seg)?;
                current = None;
                Ok(true)
            });
        let (target, batch_end) = if n > 0 {
            (batch.first + n - 1, batch.id + 1)
        } else {
            written_before.unwrap_or(durable_before)
        };
        let result = result.and_then(|sealed| {
            if sealed {
                self.published_sync(started, target)?;
            }
            Ok(sealed)
        });

        let mut st = lock_state(&sh.state);
        st.seal_waiting -= 1;
        Self::recycle(&mut st, batch);
        match result {
            Ok(sealed) => {
                st.current = current;
                if sealed {
                    st.unsynced = None;
                    self.raise_durable(&mut st, target, batch_end);
                } else {
                    sh.advanced.notify_all();
                }
                self.kick(&st);
                Ok(())
            }
            Err(e) => Err(self.poison(st, e)),
        }
    }

    /// Records that consumer `name` has applied everything up to `applied` (durably, before
    /// returning). `applied` may not exceed the durable LSN.
    pub fn set_consumer(&self, name: &str, applied: Lsn) -> Result<(), LogError> {
        let sh = &self.shared;
        consumers::set(
            &*sh.storage,
            &sh.dir,
            sh.log_id,
            name,
            applied,
            self.durable_lsn(),
        )
    }

    /// Every registered consumer and its applied LSN, by name.
    pub fn consumers(&self) -> Result<Vec<(String, Lsn)>, LogError> {
        consumers::list(&*self.shared.storage, &self.shared.dir, self.shared.log_id)
    }

    /// Forgets a consumer (retention no longer waits for it). Removing an unknown one is not
    /// an error.
    pub fn remove_consumer(&self, name: &str) -> Result<(), LogError> {
        consumers::remove(&*self.shared.storage, &self.shared.dir, name)
    }

    /// Deletes the sealed segments whose records every registered consumer has applied,
    /// oldest first; never the newest segment. With no consumer registered nothing is deleted.
    pub fn apply_retention(&self) -> Result<RetentionReport, LogError> {
        let sh = &*self.shared;
        let _one_at_a_time = sh.retention.lock().unwrap_or_else(|p| p.into_inner());
        let cons = self.consumers()?;
        let Some(min) = cons.iter().map(|(_, l)| *l).min() else {
            return Ok(RetentionReport {
                min_consumer_lsn: None,
                first_lsn: self.first_lsn(),
                ..RetentionReport::default()
            });
        };
        let segs = segment::list_segments(&*sh.storage, &sh.dir)?;
        let mut report = RetentionReport {
            min_consumer_lsn: Some(min),
            ..RetentionReport::default()
        };
        for pair in segs.windows(2) {
            let (_, path) = &pair[0];
            let next_first = pair[1].0;
            if next_first.0 - 1 > min.0 {
                break;
            }
            let bytes = sh
                .storage
                .open_read(path)
                .and_then(|f| f.size())
                .map_err(|e| LogError::io("reading the length of", path, e))?;
            sh.storage
                .remove_file(path)
                .map_err(|e| LogError::io("removing", path, e))?;
            report.removed.push(path.clone());
            report.bytes_freed += bytes;
            let mut st = lock_state(&sh.state);
            st.oldest_first = next_first.0;
        }
        if !report.removed.is_empty() {
            sh.storage
                .sync_dir(&sh.dir)
                .map_err(|e| LogError::io("syncing the directory", &sh.dir, e))?;
        }
        report.first_lsn = self.first_lsn();
        Ok(report)
    }

    /// Every segment on disk, oldest first.
    pub fn segments(&self) -> Result<Vec<SegmentInfo>, LogError> {
        let sh = &self.shared;
        segment::describe_segments(&*sh.storage, &sh.dir, sh.log_id, self.durable_lsn())
    }

    /// How many group-commit syncs this `Log` has made.
    pub fn sync_count(&self) -> u64 {
        self.shared.syncs.load(Ordering::Relaxed)
    }

    /// Calls `observe` with the duration of every group-commit fdatasync (for the
    /// `ferry_log_fsync_duration_seconds` histogram; the write of the next batch overlaps it
    /// and is not included, except in `seal`, which writes and syncs as one step). Replaces an
    /// earlier observer.
    pub fn set_sync_observer(&self, observe: impl Fn(Duration) + Send + Sync + 'static) {
        *self
            .shared
            .sync_observer
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(Box::new(observe));
    }
}

impl std::fmt::Debug for Log {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Log")
            .field("dir", &self.shared.dir)
            .field("log_id", &self.shared.log_id)
            .field("durable_lsn", &self.durable_lsn())
            .finish()
    }
}

/// What recovery found.
struct Recovered {
    log_id: LogId,
    durable: u64,
    oldest_first: u64,
    current: Option<OpenSegment>,
    torn_tail: Option<TornTail>,
}

fn remove_temp_files(storage: &dyn LogStorage, dir: &Path) -> Result<(), LogError> {
    let names = storage
        .list_dir(dir)
        .map_err(|e| LogError::io("listing", dir, e))?;
    for name in names
        .iter()
        .filter(|n| n.starts_with('.') && n.ends_with(".tmp"))
    {
        let path = dir.join(name);
        storage
            .remove_file(&path)
            .map_err(|e| LogError::io("removing the leftover temporary file", &path, e))?;
    }
    Ok(())
}

fn create_log(
    storage: &dyn LogStorage,
    dir: &Path,
    source_identity: &str,
) -> Result<Recovered, LogError> {
    let durable_path = dir.join(DURABLE_FILE);
    if storage.open_read(&durable_path).is_ok() {
        return Err(LogError::WrongLog {
            dir: dir.to_path_buf(),
            reason: format!(
                "{} exists but there are no segment files: segments were deleted by hand; move the directory away to start a new log",
                durable_path.display()
            ),
        });
    }
    let log_id = LogId::random();
    let seg = create_segment(storage, dir, log_id, source_identity, 1)?;
    Ok(Recovered {
        log_id,
        durable: 0,
        oldest_first: 1,
        current: Some(seg),
        torn_tail: None,
    })
}

fn recover(
    storage: &dyn LogStorage,
    dir: &Path,
    source_identity: &str,
    segs: &[(Lsn, PathBuf)],
) -> Result<Recovered, LogError> {
    let mut log_id: Option<LogId> = None;
    let mut expected_first: Option<u64> = None;
    let check_identity = |path: &Path,
                          header: &format::SegmentHeader,
                          log_id: &mut Option<LogId>|
     -> Result<(), LogError> {
        if header.source_identity != source_identity {
            return Err(LogError::WrongLog {
                dir: dir.to_path_buf(),
                reason: format!(
                    "it was made for source {:?}, not {:?} ({})",
                    header.source_identity,
                    source_identity,
                    path.display()
                ),
            });
        }
        match log_id {
            Some(id) if *id != header.log_id => Err(LogError::corrupt(
                path,
                12,
                format!(
                    "segment of log {} among segments of log {id}",
                    header.log_id
                ),
            )),
            Some(_) => Ok(()),
            None => {
                *log_id = Some(header.log_id);
                Ok(())
            }
        }
    };
    let check_first = |path: &Path, first: Lsn, expected: Option<u64>| match expected {
        Some(e) if e != first.0 => Err(LogError::corrupt(
            path,
            28,
            format!(
                "the segment starts at LSN {first}, but the previous segment ended at LSN {}: records are missing",
                e - 1
            ),
        )),
        _ => Ok(()),
    };

    let (newest_first, newest_path) = &segs[segs.len() - 1];
    for (first, path) in &segs[..segs.len() - 1] {
        let sealed = segment::check_sealed(storage, path, *first)?;
        check_identity(path, &sealed.header, &mut log_id)?;
        check_first(path, *first, expected_first)?;
        expected_first = Some(sealed.last_lsn.0 + 1);
    }

    let file = storage
        .open_write(newest_path)
        .map_err(|e| LogError::io("opening", newest_path, e))?;
    let (scan, chunk): (FullScan, _) = segment::scan_full(file, newest_path, *newest_first)?;
    check_identity(newest_path, &scan.header, &mut log_id)?;
    check_first(newest_path, *newest_first, expected_first)?;
    let file: Arc<dyn LogFile> = Arc::from(chunk.into_file());
    let mut torn_tail = None;
    if let Some((offset, reason)) = &scan.bad {
        if let Some(good) =
            segment::valid_frame_after(&*file, newest_path, *offset, scan.file_len, scan.last_lsn)?
        {
            return Err(LogError::corrupt(
                newest_path,
                *offset,
                format!(
                    "{reason}, and a valid record follows at offset {good}, so this is not a torn write"
                ),
            ));
        }
        file.set_len(*offset)
            .map_err(|e| LogError::io("truncating the torn tail of", newest_path, e))?;
        file.sync_data()
            .map_err(|e| LogError::io("syncing", newest_path, e))?;
        torn_tail = Some(TornTail {
            segment: newest_path.clone(),
            offset: *offset,
            bytes: scan.file_len - offset,
            reason: reason.clone(),
        });
    }
    let log_id = log_id.unwrap_or(scan.header.log_id);
    if scan.sealed_at.is_some() && scan.records == 0 {
        return Err(LogError::corrupt(
            newest_path,
            scan.valid_end - format::TRAILER_BYTES as u64,
            "the segment is sealed but holds no record (ferry never seals an empty segment)",
        ));
    }
    let current = if scan.sealed_at.is_some() {
        None
    } else {
        Some(OpenSegment {
            path: newest_path.clone(),
            file,
            first_lsn: newest_first.0,
            records: scan.records,
            end: scan.valid_end,
            created_at_micros: scan.header.created_at_micros,
        })
    };
    Ok(Recovered {
        log_id,
        durable: scan.last_lsn.0,
        oldest_first: segs[0].0.0,
        current,
        torn_tail,
    })
}

fn create_segment(
    storage: &dyn LogStorage,
    dir: &Path,
    log_id: LogId,
    source_identity: &str,
    first_lsn: u64,
) -> Result<OpenSegment, LogError> {
    let name = format::segment_file_name(Lsn(first_lsn));
    let tmp = dir.join(format!(".{name}.tmp"));
    let path = dir.join(&name);
    let created_at_micros = now_micros();
    let header = format::SegmentHeader {
        log_id,
        first_lsn: Lsn(first_lsn),
        created_at_micros,
        source_identity: source_identity.to_string(),
    }
    .encode();
    let file = storage
        .create(&tmp)
        .map_err(|e| LogError::io("creating", &tmp, e))?;
    file.write_all_at(&header, 0)
        .map_err(|e| LogError::io("writing", &tmp, e))?;
    file.sync_data()
        .map_err(|e| LogError::io("syncing", &tmp, e))?;
    storage
        .rename(&tmp, &path)
        .map_err(|e| LogError::io("renaming into place", &path, e))?;
    storage
        .sync_dir(dir)
        .map_err(|e| LogError::io("syncing the directory", dir, e))?;
    Ok(OpenSegment {
        path,
        file: Arc::from(file),
        first_lsn,
        records: 0,
        end: header.len() as u64,
        created_at_micros,
    })
}

fn seal_segment(seg: &mut OpenSegment) -> Result<(), LogError> {
    let last = Lsn(seg.first_lsn + seg.records - 1);
    let trailer = format::encode_trailer(last, now_micros());
    seg.file
        .write_all_at(&trailer, seg.end)
        .map_err(|e| LogError::io("writing the seal trailer of", &seg.path, e))?;
    seg.end += trailer.len() as u64;
    seg.file
        .sync_data()
        .map_err(|e| LogError::io("syncing", &seg.path, e))
}

/// Opens `durable` and writes `contents` into it; creates it if absent.
fn open_durable_file(
    storage: &dyn LogStorage,
    dir: &Path,
    contents: &[u8],
) -> Result<Box<dyn LogFile>, LogError> {
    let path = dir.join(DURABLE_FILE);
    if let Ok(f) = storage.open_write(&path) {
        f.write_all_at(contents, 0)
            .map_err(|e| LogError::io("writing", &path, e))?;
        return Ok(f);
    }
    // First open: create it whole under a temporary name so readers never see a short file.
    let tmp = dir.join(format!(".{DURABLE_FILE}.tmp"));
    let file = storage
        .create(&tmp)
        .map_err(|e| LogError::io("creating", &tmp, e))?;
    file.write_all_at(contents, 0)
        .map_err(|e| LogError::io("writing", &tmp, e))?;
    file.sync_data()
        .map_err(|e| LogError::io("syncing", &tmp, e))?;
    storage
        .rename(&tmp, &path)
        .map_err(|e| LogError::io("renaming into place", &path, e))?;
    storage
        .sync_dir(dir)
        .map_err(|e| LogError::io("syncing the directory", dir, e))?;
    Ok(file)
}
