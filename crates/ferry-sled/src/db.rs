//! The write side: sled wrappers that record every change in the outbox, in the same sled
//! transaction as the change.
//!
//! Every captured write is a sled transaction over the data tree(s) and the outbox tree
//! (see [`crate::outbox`] for the layout and its invariants). Plain sled `insert`/`remove`
//! are not transactions; through the wrapper they become one-write transactions, which is
//! what makes a write and its record inseparable. `merge` and `compare_and_swap` are
//! computed inside the transaction (read, apply the operator or compare, write) so the
//! record holds the resulting value.
//!
//! Order of operations of one write:
//! 1. admission: if the outbox holds `outbox_limit` entries or more, wait (bounded by
//!    `backpressure_timeout`) for the mover to make room — never inside the sled
//!    transaction, where waiting would hold sled's locks against the mover;
//! 2. the sled transaction: data writes, then the entry under `counter + 1`;
//! 3. after commit: publish the sequence number and wake the mover.
//!
//! Durability is sled's: a committed write is durable after sled's next flush (its
//! `flush_every_ms`, 500 ms by default), or before the call returns with
//! [`CaptureOptions::flush_on_commit`]. The mover flushes sled before it appends anything to
//! the log, so the log never describes a write that sled could still lose.

use crate::decoder::{BytesDecoder, TreeDecoder};
use crate::error::CaptureError;
use crate::outbox::{
    COUNTER_KEY, ChangeSet, EntryWriter, OUTBOX_TREE, RESERVED_PREFIX, TABLES_TREE, decode_u64,
    seq_key,
};
use ferry_core::{SourceId, now_micros};
use sled::transaction::{
    ConflictableTransactionError, TransactionalTree, UnabortableTransactionError,
};
use sled::{CompareAndSwapError, IVec, Transactional};
use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

/// Default bound of the outbox, in entries (one entry per captured transaction).
pub const DEFAULT_OUTBOX_LIMIT: u64 = 100_000;
/// Default bound of the outbox while the initial snapshot runs, in bytes of entries written
/// since the snapshot's position ([`CaptureOptions::snapshot_outbox_bytes`]).
pub const DEFAULT_SNAPSHOT_OUTBOX_BYTES: u64 = 256 << 20;
/// Default time a writer waits for room in a full outbox before it fails.
pub const DEFAULT_BACKPRESSURE_TIMEOUT: Duration = Duration::from_secs(30);

/// The largest encoded outbox entry a captured transaction may produce, by default and at
/// most: half the log's record limit (`ferry_log::format::MAX_PAYLOAD_BYTES`). The log record
/// the mover makes of an entry repeats each key (key columns, before row, after row) and tags
/// every value; half the limit leaves room for that, so a transaction that would make a
/// record the log refuses fails when it is written instead of stopping the mover for good.
pub const MAX_ENTRY_BYTES: usize = ferry_log::format::MAX_PAYLOAD_BYTES / 2;

/// Default shortest time between two mover cycles ([`CaptureOptions::mover_interval`]).
pub const DEFAULT_MOVER_INTERVAL: Duration = Duration::from_millis(50);

/// A merge operator, as sled defines one: `(key, old value, merged bytes) -> new value`.
pub type MergeFn = dyn Fn(&[u8], Option<&[u8]>, &[u8]) -> Option<Vec<u8>> + Send + Sync;

/// How a capture behaves. `Default` gives the documented defaults.
#[derive(Clone)]
pub struct CaptureOptions {
    /// The source's name in the state directory and in PostgreSQL's progress table; by
    /// default the sled directory's file name.
    pub source_id: Option<SourceId>,
    /// How trees become tables ([`BytesDecoder`] by default).
    pub decoder: Arc<dyn TreeDecoder>,
    /// Flush sled before each captured write returns (sled's `TransactionalTree::flush`).
    /// Off by default, like sled itself: a write is then durable at sled's next flush.
    pub flush_on_commit: bool,
    /// Writers wait when this many outbox entries are waiting for the mover. Admission is
    /// checked before the transaction without a lock, so each concurrently writing thread
    /// may get one entry past it. Not applied while the initial snapshot runs (see
    /// [`CaptureOptions::snapshot_outbox_bytes`]), nor to the entries that piled up during it.
    pub outbox_limit: u64,
    /// The bound of the outbox while the initial snapshot runs, in encoded bytes of the
    /// entries committed since the snapshot's position. The mover moves nothing while it
    /// snapshots (the log must hold the whole snapshot first), so an entry count would make
    /// writers of a large database wait and fail; bytes bound what the snapshot holds in
    /// memory instead: its undo map keeps the keys of those entries (not their values). The
    /// outbox itself is on disk, in sled. The entries that piled up are moved after the
    /// snapshot without counting against `outbox_limit`.
    pub snapshot_outbox_bytes: u64,
    /// How long a writer waits for room before it fails with
    /// [`CaptureError::Backpressure`].
    pub backpressure_timeout: Duration,
    /// The largest encoded outbox entry (all the before- and after-images of one
    /// transaction) a captured write may produce; a larger one fails with
    /// [`CaptureError::TransactionTooLarge`] and writes nothing. Values above
    /// [`MAX_ENTRY_BYTES`] count as [`MAX_ENTRY_BYTES`].
    pub max_entry_bytes: usize,
    /// Entries the mover moves per log append, at most.
    pub mover_batch_entries: usize,
    /// Encoded outbox bytes the mover moves per log append, at most (one entry may exceed it).
    pub mover_batch_bytes: usize,
    /// The shortest time between two of the mover's cycles while writes keep coming. Each
    /// cycle flushes sled once (which blocks sled transactions for the flush's fsync), so
    /// this bounds what the mover costs the writers; it adds up to this much to the lag of
    /// the log. A writer waiting for room or a [`CapturedDb::sync`] cuts the wait short.
    pub mover_interval: Duration,
    /// How often an idle mover looks at the outbox even without a wake-up (writes recorded
    /// through [`TxRecorder`] inside the application's own transactions wake it only if the
    /// application calls [`CapturedDb::note_committed`]).
    pub mover_poll: Duration,
    /// Rows per `SnapshotRows` record, at most.
    pub snapshot_chunk_rows: usize,
    /// Key and value bytes per `SnapshotRows` record, at most (one row may exceed it).
    pub snapshot_chunk_bytes: usize,
    /// Trees that are neither snapshotted nor captured (ferry's own `__ferry_*` trees never
    /// are).
    pub exclude_trees: Vec<Vec<u8>>,
    /// Where the initial snapshot is staged before it is copied into the log. `open` and
    /// `with_db` default to `<state-dir>/sources/<id>/capture/snapshot`; `with_sink` stages
    /// only if this is set.
    pub snapshot_staging: Option<std::path::PathBuf>,
}

impl Default for CaptureOptions {
    fn default() -> Self {
        CaptureOptions {
            source_id: None,
            decoder: Arc::new(BytesDecoder),
            flush_on_commit: false,
            outbox_limit: DEFAULT_OUTBOX_LIMIT,
            snapshot_outbox_bytes: DEFAULT_SNAPSHOT_OUTBOX_BYTES,
            backpressure_timeout: DEFAULT_BACKPRESSURE_TIMEOUT,
            max_entry_bytes: MAX_ENTRY_BYTES,
            mover_batch_entries: 1024,
            mover_batch_bytes: 4 << 20,
            mover_interval: DEFAULT_MOVER_INTERVAL,
            mover_poll: Duration::from_millis(100),
            snapshot_chunk_rows: 1000,
            snapshot_chunk_bytes: 1 << 20,
            exclude_trees: Vec::new(),
            snapshot_staging: None,
        }
    }
}

impl std::fmt::Debug for CaptureOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaptureOptions")
            .field("source_id", &self.source_id)
            .field("flush_on_commit", &self.flush_on_commit)
            .field("outbox_limit", &self.outbox_limit)
            .field("snapshot_outbox_bytes", &self.snapshot_outbox_bytes)
            .field("backpressure_timeout", &self.backpressure_timeout)
            .field("mover_batch_entries", &self.mover_batch_entries)
            .field("mover_batch_bytes", &self.mover_batch_bytes)
            .field("mover_interval", &self.mover_interval)
            .field("snapshot_chunk_rows", &self.snapshot_chunk_rows)
            .field("snapshot_chunk_bytes", &self.snapshot_chunk_bytes)
            .finish_non_exhaustive()
    }
}

impl CaptureOptions {
    pub(crate) fn is_captured(&self, tree: &[u8]) -> bool {
        !tree.starts_with(RESERVED_PREFIX.as_bytes())
            && !self.exclude_trees.iter().any(|t| t.as_slice() == tree)
    }
}

/// The merge operator of a tree, shared by all its handles.
type MergeSlot = Arc<RwLock<Option<Arc<MergeFn>>>>;

/// State shared by the writers and the mover.
pub(crate) struct Shared {
    pub db: sled::Db,
    pub outbox: sled::Tree,
    pub tables: sled::Tree,
    pub opts: CaptureOptions,
    /// Highest sequence number known to be committed.
    pub committed: AtomicU64,
    /// Every entry up to here is durable in the log (or covered by its snapshot).
    pub moved: AtomicU64,
    /// The initial snapshot is being taken: admission is by `snapshot_bytes`, not entries.
    pub snapshotting: AtomicBool,
    /// Encoded bytes of the entries after the snapshot's position that it has scanned.
    pub snapshot_bytes: AtomicU64,
    /// Entries up to here (the backlog of a snapshot) do not count against `outbox_limit`.
    pub admit_floor: AtomicU64,
    pub mover_sleeping: AtomicBool,
    pub state: Mutex<MoverState>,
    /// Writers → mover: there is work.
    pub work: Condvar,
    /// Mover → writers: `moved` advanced, or the mover stopped.
    pub progress: Condvar,
    merge_ops: Mutex<HashMap<IVec, MergeSlot>>,
}

#[derive(Default)]
pub(crate) struct MoverState {
    pub stop: bool,
    pub error: Option<Arc<CaptureError>>,
    pub snapshot_done: bool,
    /// Someone waits for the mover (a writer for room, a `sync` for the log): skip pacing.
    pub hurry: bool,
}

impl Shared {
    pub(crate) fn new(db: sled::Db, opts: CaptureOptions) -> Result<Shared, CaptureError> {
        let outbox = db.open_tree(OUTBOX_TREE)?;
        let tables = db.open_tree(TABLES_TREE)?;
        let counter = read_counter(&outbox)?;
        // Entries still in the outbox are waiting; everything before the first is moved.
        let moved = match outbox.range(crate::outbox::FIRST_SEQ_KEY..).next() {
            Some(kv) => decode_u64(&kv?.0, "an outbox key")?.saturating_sub(1),
            None => counter,
        };
        Ok(Shared {
            db,
            outbox,
            tables,
            opts,
            committed: AtomicU64::new(counter),
            moved: AtomicU64::new(moved),
            snapshotting: AtomicBool::new(false),
            snapshot_bytes: AtomicU64::new(0),
            admit_floor: AtomicU64::new(0),
            mover_sleeping: AtomicBool::new(false),
            state: Mutex::new(MoverState::default()),
            work: Condvar::new(),
            progress: Condvar::new(),
            merge_ops: Mutex::new(HashMap::new()),
        })
    }

    pub(crate) fn lock_state(&self) -> MutexGuard<'_, MoverState> {
        // The state is plain flags; a panic elsewhere does not make it inconsistent.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the mover has been asked to stop (long work checks this between steps).
    pub(crate) fn stopping(&self) -> bool {
        self.lock_state().stop
    }

    /// Entries waiting that count against `outbox_limit`, and whether there is room for one
    /// more. While the snapshot runs, room is measured in bytes instead (see
    /// [`CaptureOptions::snapshot_outbox_bytes`]).
    fn room(&self) -> (u64, bool) {
        let counted_from = self
            .moved
            .load(Ordering::SeqCst)
            .max(self.admit_floor.load(Ordering::SeqCst));
        let pending = self
            .committed
            .load(Ordering::SeqCst)
            .saturating_sub(counted_from);
        if self.snapshotting.load(Ordering::SeqCst) {
            let bytes = self.snapshot_bytes.load(Ordering::SeqCst);
            return (pending, bytes < self.opts.snapshot_outbox_bytes);
        }
        (pending, pending < self.opts.outbox_limit)
    }

    /// Waits until the outbox has room for another entry.
    pub(crate) fn admit(&self) -> Result<(), CaptureError> {
        let limit = self.opts.outbox_limit;
        if self.room().1 {
            return Ok(());
        }
        let started = Instant::now();
        let mut state = self.lock_state();
        loop {
            let (p, room) = self.room();
            if room {
                return Ok(());
            }
            if let Some(e) = &state.error {
                return Err(CaptureError::MoverStopped(e.clone()));
            }
            if state.stop {
                return Err(CaptureError::Closed);
            }
            state.hurry = true;
            self.work.notify_all();
            let waited = started.elapsed();
            let Some(left) = self.opts.backpressure_timeout.checked_sub(waited) else {
                return Err(CaptureError::Backpressure {
                    pending: p,
                    limit,
                    waited,
                });
            };
            state = match self.progress.wait_timeout(state, left) {
                Ok((s, _)) => s,
                Err(e) => e.into_inner().0,
            };
        }
    }

    /// Publishes a committed sequence number and wakes the mover if it sleeps.
    pub(crate) fn note_committed(&self, seq: u64) {
        self.committed.fetch_max(seq, Ordering::SeqCst);
        if self.mover_sleeping.load(Ordering::SeqCst) {
            let _state = self.lock_state();
            self.work.notify_one();
        }
    }

    fn merge_slot(&self, tree: &IVec) -> MergeSlot {
        let mut ops = self.merge_ops.lock().unwrap_or_else(|e| e.into_inner());
        ops.entry(tree.clone()).or_default().clone()
    }
}

pub(crate) fn read_counter(outbox: &sled::Tree) -> Result<u64, CaptureError> {
    match outbox.get(COUNTER_KEY)? {
        Some(v) => decode_u64(&v, "the outbox counter"),
        None => Ok(0),
    }
}

/// Stores an encoded entry under the next sequence number, inside the caller's transaction.
/// An entry too large for the log aborts the transaction (see [`MAX_ENTRY_BYTES`]).
fn append_entry(
    shared: &Shared,
    outbox: &TransactionalTree,
    entry: Vec<u8>,
    flush: bool,
) -> Result<u64, ConflictableTransactionError<CaptureError>> {
    let max = shared.opts.max_entry_bytes.min(MAX_ENTRY_BYTES);
    if entry.len() > max {
        return Err(ConflictableTransactionError::Abort(
            CaptureError::TransactionTooLarge {
                len: entry.len(),
                max,
            },
        ));
    }
    let last = match outbox.get(COUNTER_KEY)? {
        Some(v) => {
            decode_u64(&v, "the outbox counter").map_err(ConflictableTransactionError::Abort)?
        }
        None => 0,
    };
    let seq = last + 1;
    outbox.insert(COUNTER_KEY, &seq.to_be_bytes()[..])?;
    outbox.insert(&seq_key(seq)[..], entry)?;
    if flush {
        outbox.flush();
    }
    Ok(seq)
}

/// The handle a [`CapturedDb`] and its trees share; dropping the last one stops the mover.
pub(crate) struct Handle {
    pub shared: Arc<Shared>,
    pub mover: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Handle {
    pub(crate) fn stop_mover(&self) {
        {
            let mut state = self.shared.lock_state();
            state.stop = true;
            self.shared.work.notify_all();
            self.shared.progress.notify_all();
        }
        let join = self.mover.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(j) = join {
            // A panicking mover has already recorded nothing more we could use.
            let _ = j.join();
        }
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.stop_mover();
    }
}

/// A sled database whose writes are captured. Clones share the database and the mover.
#[derive(Clone)]
pub struct CapturedDb {
    pub(crate) handle: Arc<Handle>,
}

impl CapturedDb {
    /// The underlying database, for reads and for anything not captured. Writes made
    /// directly on it (or its trees) are **not** captured and make PostgreSQL diverge.
    pub fn sled(&self) -> &sled::Db {
        &self.handle.shared.db
    }

    /// Opens a tree for captured writes.
    pub fn open_tree(&self, name: impl AsRef<[u8]>) -> Result<CapturedTree, CaptureError> {
        let shared = &self.handle.shared;
        let tree = shared.db.open_tree(name.as_ref())?;
        let name = tree.name();
        let merge = shared.merge_slot(&name);
        Ok(CapturedTree {
            captured: shared.opts.is_captured(&name),
            name,
            tree,
            merge,
            handle: self.handle.clone(),
        })
    }

    /// Runs `f` as one sled transaction over `trees` (all opened from this database); every
    /// change it makes is captured as one log transaction. `f` may run more than once, like
    /// any sled transaction closure.
    pub fn transaction<A, E, F>(
        &self,
        trees: &[&CapturedTree],
        f: F,
    ) -> Result<A, TransactionError<E>>
    where
        F: Fn(&CapturedTransaction<'_>) -> Result<A, TxError<E>>,
    {
        let shared = &self.handle.shared;
        if let Some(t) = trees
            .iter()
            .find(|t| !Arc::ptr_eq(&t.handle.shared, shared))
        {
            return Err(TransactionError::Capture(CaptureError::Sled(
                sled::Error::Unsupported(format!(
                    "tree {:?} belongs to another CapturedDb",
                    String::from_utf8_lossy(&t.name)
                )),
            )));
        }
        shared.admit().map_err(TransactionError::Capture)?;
        let flush = shared.opts.flush_on_commit;
        // One attempt of the closure over the data trees' views and the outbox's view.
        let attempt = |data: &[TransactionalTree], outbox: &TransactionalTree| {
            let tx = CapturedTransaction {
                trees,
                views: data,
                recorder: TxRecorder {
                    outbox,
                    changes: RefCell::new(ChangeSet::default()),
                    shared,
                    flush,
                },
            };
            let a = f(&tx).map_err(TxError::into_conflictable)?;
            let seq = tx
                .recorder
                .finish_inner()
                .map_err(|e| e.map_abort(Abort::Capture))?;
            Ok((a, seq))
        };
        let result = match trees {
            // The common one-tree transaction goes through sled's tuple form, as
            // `CapturedTree`'s own writes do: sled's slice form costs a vector of trees here
            // and a clone of the vector of views on every attempt, measurable next to a
            // one-key write.
            [tree] => (&tree.tree, &shared.outbox)
                .transaction(|(data, outbox)| attempt(std::slice::from_ref(data), outbox)),
            _ => {
                let mut all: Vec<&sled::Tree> = trees.iter().map(|t| &t.tree).collect();
                all.push(&shared.outbox);
                all.as_slice()
                    .transaction(|views: &Vec<TransactionalTree>| {
                        let Some((outbox, data)) = views.split_last() else {
                            return Err(ConflictableTransactionError::Storage(
                                sled::Error::ReportableBug(
                                    "a captured transaction without its outbox".into(),
                                ),
                            ));
                        };
                        attempt(data, outbox)
                    })
            }
        };
        match result {
            Ok((a, seq)) => {
                if let Some(seq) = seq {
                    shared.note_committed(seq);
                }
                Ok(a)
            }
            Err(sled::transaction::TransactionError::Abort(Abort::User(e))) => {
                Err(TransactionError::Abort(e))
            }
            Err(sled::transaction::TransactionError::Abort(Abort::Capture(e))) => {
                Err(TransactionError::Capture(e))
            }
            Err(sled::transaction::TransactionError::Storage(e)) => {
                Err(TransactionError::Capture(CaptureError::Sled(e)))
            }
        }
    }

    /// The outbox tree, for applications that write in their own sled transactions: include
    /// it in the transaction and record the changes with [`CapturedDb::recorder`].
    pub fn outbox_tree(&self) -> &sled::Tree {
        &self.handle.shared.outbox
    }

    /// A recorder for one attempt of the application's own sled transaction, which must
    /// include [`CapturedDb::outbox_tree`] (`outbox` is its view). Call
    /// [`CapturedDb::wait_for_room`] before the transaction and
    /// [`CapturedDb::note_committed`] after it.
    pub fn recorder<'a>(&'a self, outbox: &'a TransactionalTree) -> TxRecorder<'a> {
        TxRecorder {
            outbox,
            changes: RefCell::new(ChangeSet::default()),
            shared: &self.handle.shared,
            flush: self.handle.shared.opts.flush_on_commit,
        }
    }

    /// Waits (bounded by `backpressure_timeout`) until the outbox has room. The wrappers do
    /// this themselves; applications using [`TxRecorder`] call it before their transaction —
    /// never inside it.
    ///
    /// The outbox's counter is read here first: entries committed through [`TxRecorder`]
    /// count against the bound whether or not the application called
    /// [`CapturedDb::note_committed`] (the wrappers publish theirs on commit, so their own
    /// admission skips this read).
    pub fn wait_for_room(&self) -> Result<(), CaptureError> {
        let shared = &self.handle.shared;
        let counter = read_counter(&shared.outbox)?;
        shared.committed.fetch_max(counter, Ordering::SeqCst);
        shared.admit()
    }

    /// Tells the mover that the application's own transaction committed entry `seq` (what
    /// [`TxRecorder::finish`] returned), so it moves it without waiting for its next poll.
    /// Optional: without it the mover finds the entry at its next poll
    /// ([`CaptureOptions::mover_poll`]), and admission counts it anyway.
    pub fn note_committed(&self, seq: u64) {
        self.handle.shared.note_committed(seq);
    }

    /// The last sequence number committed to the outbox.
    pub fn committed_seq(&self) -> Result<u64, CaptureError> {
        read_counter(&self.handle.shared.outbox)
    }

    /// Every outbox entry up to this sequence number is durable in the log (or covered by
    /// its initial snapshot).
    pub fn moved_seq(&self) -> u64 {
        self.handle.shared.moved.load(Ordering::SeqCst)
    }

    /// Entries waiting in the outbox.
    pub fn pending(&self) -> u64 {
        let s = &self.handle.shared;
        s.committed
            .load(Ordering::SeqCst)
            .max(read_counter(&s.outbox).unwrap_or(0))
            .saturating_sub(s.moved.load(Ordering::SeqCst))
    }

    /// The error that stopped the mover, if it stopped.
    pub fn mover_error(&self) -> Option<Arc<CaptureError>> {
        self.handle.shared.lock_state().error.clone()
    }

    /// Whether the initial snapshot is in the log.
    pub fn snapshot_done(&self) -> bool {
        self.handle.shared.lock_state().snapshot_done
    }

    /// Waits until everything committed before this call is durable in the log. Fails if the
    /// mover stopped, or with [`CaptureError::Backpressure`] after `timeout`.
    pub fn sync(&self, timeout: Duration) -> Result<u64, CaptureError> {
        let shared = &self.handle.shared;
        let target = read_counter(&shared.outbox)?;
        shared.committed.fetch_max(target, Ordering::SeqCst);
        let started = Instant::now();
        let mut state = shared.lock_state();
        state.hurry = true;
        shared.work.notify_all();
        loop {
            let moved = shared.moved.load(Ordering::SeqCst);
            if moved >= target && state.snapshot_done {
                return Ok(target);
            }
            if let Some(e) = &state.error {
                return Err(CaptureError::MoverStopped(e.clone()));
            }
            if state.stop {
                return Err(CaptureError::Closed);
            }
            let waited = started.elapsed();
            let Some(left) = timeout.checked_sub(waited) else {
                return Err(CaptureError::Backpressure {
                    pending: target.saturating_sub(moved),
                    limit: shared.opts.outbox_limit,
                    waited,
                });
            };
            state = match shared.progress.wait_timeout(state, left) {
                Ok((s, _)) => s,
                Err(e) => e.into_inner().0,
            };
        }
    }

    /// Moves everything committed so far into the log, stops the mover and flushes sled.
    pub fn close(self, timeout: Duration) -> Result<(), CaptureError> {
        let synced = self.sync(timeout);
        self.handle.stop_mover();
        self.handle.shared.db.flush()?;
        synced.map(|_| ())
    }
}

/// An error of a captured transaction.
#[derive(Debug, thiserror::Error)]
pub enum TransactionError<E> {
    /// The closure aborted with this error; nothing was written.
    #[error("transaction aborted: {0}")]
    Abort(E),
    #[error(transparent)]
    Capture(CaptureError),
}

/// What a closure given to [`CapturedDb::transaction`] returns on failure. `?` converts the
/// errors of [`CapturedTxTree`]'s operations; return [`TxError::Abort`] (or use [`abort`])
/// to roll back with an error of your own.
#[derive(Debug)]
pub enum TxError<E> {
    Abort(E),
    Op(TxOpError),
}

/// Aborts a captured transaction with `e`.
pub fn abort<A, E>(e: E) -> Result<A, TxError<E>> {
    Err(TxError::Abort(e))
}

impl<E> From<TxOpError> for TxError<E> {
    fn from(e: TxOpError) -> Self {
        TxError::Op(e)
    }
}

impl<E> From<UnabortableTransactionError> for TxError<E> {
    fn from(e: UnabortableTransactionError) -> Self {
        TxError::Op(TxOpError::Sled(e))
    }
}

enum Abort<E> {
    User(E),
    Capture(CaptureError),
}

impl<E> TxError<E> {
    fn into_conflictable(self) -> ConflictableTransactionError<Abort<E>> {
        match self {
            TxError::Abort(e) => ConflictableTransactionError::Abort(Abort::User(e)),
            TxError::Op(op) => op.into_conflictable(Abort::Capture),
        }
    }
}

/// An operation inside a captured transaction failed.
#[derive(Debug, thiserror::Error)]
pub enum TxOpError {
    #[error(transparent)]
    Sled(UnabortableTransactionError),
    #[error(transparent)]
    Capture(CaptureError),
}

impl From<UnabortableTransactionError> for TxOpError {
    fn from(e: UnabortableTransactionError) -> Self {
        TxOpError::Sled(e)
    }
}

impl TxOpError {
    fn into_conflictable<T>(
        self,
        wrap: impl FnOnce(CaptureError) -> T,
    ) -> ConflictableTransactionError<T> {
        match self {
            TxOpError::Sled(UnabortableTransactionError::Conflict) => {
                ConflictableTransactionError::Conflict
            }
            TxOpError::Sled(UnabortableTransactionError::Storage(e)) => {
                ConflictableTransactionError::Storage(e)
            }
            TxOpError::Capture(e) => ConflictableTransactionError::Abort(wrap(e)),
        }
    }
}

/// For applications' own transactions: `?` on a [`TxOpError`] inside a closure whose abort
/// type can hold a [`CaptureError`].
impl<E: From<CaptureError>> From<TxOpError> for ConflictableTransactionError<E> {
    fn from(e: TxOpError) -> Self {
        e.into_conflictable(E::from)
    }
}

trait MapAbort<A> {
    fn map_abort<B>(self, f: impl FnOnce(A) -> B) -> ConflictableTransactionError<B>;
}

impl<A> MapAbort<A> for ConflictableTransactionError<A> {
    fn map_abort<B>(self, f: impl FnOnce(A) -> B) -> ConflictableTransactionError<B> {
        match self {
            ConflictableTransactionError::Abort(a) => ConflictableTransactionError::Abort(f(a)),
            ConflictableTransactionError::Conflict => ConflictableTransactionError::Conflict,
            ConflictableTransactionError::Storage(e) => ConflictableTransactionError::Storage(e),
        }
    }
}

/// Records changes made inside one attempt of a sled transaction that includes the outbox.
///
/// Each write method performs the write on the given transactional tree and records its
/// before- and after-image; [`TxRecorder::record`] records a write the application made
/// itself. [`TxRecorder::finish`] must be the last thing the transaction does: it stores the
/// entry and returns its sequence number (`None` if nothing changed). A recorder belongs to
/// one attempt of the closure: create it inside the closure.
pub struct TxRecorder<'a> {
    outbox: &'a TransactionalTree,
    changes: RefCell<ChangeSet>,
    shared: &'a Shared,
    flush: bool,
}

impl TxRecorder<'_> {
    /// `tree.insert(key, value)`, recorded under `tree_name`.
    pub fn insert(
        &self,
        tree: &TransactionalTree,
        tree_name: impl AsRef<[u8]>,
        key: impl AsRef<[u8]>,
        value: impl Into<IVec>,
    ) -> Result<Option<IVec>, UnabortableTransactionError> {
        let key = IVec::from(key.as_ref());
        let value = value.into();
        let old = tree.insert(key.clone(), value.clone())?;
        self.record_ivec(tree_name.as_ref(), key, old.clone(), Some(value));
        Ok(old)
    }

    /// `tree.remove(key)`, recorded under `tree_name`.
    pub fn remove(
        &self,
        tree: &TransactionalTree,
        tree_name: impl AsRef<[u8]>,
        key: impl AsRef<[u8]>,
    ) -> Result<Option<IVec>, UnabortableTransactionError> {
        let key = IVec::from(key.as_ref());
        let old = tree.remove(key.clone())?;
        self.record_ivec(tree_name.as_ref(), key, old.clone(), None);
        Ok(old)
    }

    /// Records that the application changed `key` of `tree_name` from `before` to `after` in
    /// this transaction (it made the write itself). The images must be exact: the log's fold
    /// checks them.
    pub fn record(
        &self,
        tree_name: impl AsRef<[u8]>,
        key: impl AsRef<[u8]>,
        before: Option<&[u8]>,
        after: Option<&[u8]>,
    ) {
        self.record_ivec(
            tree_name.as_ref(),
            IVec::from(key.as_ref()),
            before.map(IVec::from),
            after.map(IVec::from),
        );
    }

    fn record_ivec(&self, tree: &[u8], key: IVec, old: Option<IVec>, new: Option<IVec>) {
        if !self.shared.opts.is_captured(tree) {
            return;
        }
        let mut changes = self.changes.borrow_mut();
        let t = changes.tree_index(tree);
        changes.record(t, key, old, new);
    }

    /// Stores the entry; returns its sequence number, or `None` when nothing changed.
    pub fn finish(self) -> Result<Option<u64>, TxOpError> {
        self.finish_inner().map_err(|e| match e {
            ConflictableTransactionError::Abort(e) => TxOpError::Capture(e),
            ConflictableTransactionError::Conflict => {
                TxOpError::Sled(UnabortableTransactionError::Conflict)
            }
            ConflictableTransactionError::Storage(e) => {
                TxOpError::Sled(UnabortableTransactionError::Storage(e))
            }
        })
    }

    fn finish_inner(&self) -> Result<Option<u64>, ConflictableTransactionError<CaptureError>> {
        let entry = self
            .changes
            .borrow()
            .encode(now_micros())
            .map_err(ConflictableTransactionError::Abort)?;
        match entry {
            Some(entry) => Ok(Some(append_entry(
                self.shared,
                self.outbox,
                entry,
                self.flush,
            )?)),
            None => Ok(None),
        }
    }
}

/// The view of a captured transaction that [`CapturedDb::transaction`] gives its closure.
pub struct CapturedTransaction<'a> {
    trees: &'a [&'a CapturedTree],
    views: &'a [TransactionalTree],
    recorder: TxRecorder<'a>,
}

impl<'a> CapturedTransaction<'a> {
    /// The `i`-th tree of the transaction, in the order they were passed.
    ///
    /// # Panics
    /// If `i` is not less than the number of trees passed (a programming error, like
    /// indexing a slice out of bounds).
    pub fn tree(&self, i: usize) -> CapturedTxTree<'_> {
        CapturedTxTree {
            tx: self,
            tree: self.trees[i],
            view: &self.views[i],
        }
    }
}

/// One tree inside a captured transaction: sled's transactional operations, plus `merge` and
/// `compare_and_swap`, each recorded.
pub struct CapturedTxTree<'a> {
    tx: &'a CapturedTransaction<'a>,
    tree: &'a CapturedTree,
    view: &'a TransactionalTree,
}

impl CapturedTxTree<'_> {
    pub fn get(&self, key: impl AsRef<[u8]>) -> Result<Option<IVec>, TxOpError> {
        Ok(self.view.get(key)?)
    }

    pub fn insert(
        &self,
        key: impl AsRef<[u8]>,
        value: impl Into<IVec>,
    ) -> Result<Option<IVec>, TxOpError> {
        Ok(self
            .tx
            .recorder
            .insert(self.view, &self.tree.name, key, value)?)
    }

    pub fn remove(&self, key: impl AsRef<[u8]>) -> Result<Option<IVec>, TxOpError> {
        Ok(self.tx.recorder.remove(self.view, &self.tree.name, key)?)
    }

    /// Like [`sled::Tree::compare_and_swap`], inside the transaction.
    pub fn compare_and_swap(
        &self,
        key: impl AsRef<[u8]>,
        old: Option<impl AsRef<[u8]>>,
        new: Option<impl Into<IVec>>,
    ) -> Result<Result<(), CompareAndSwapError>, TxOpError> {
        let key = key.as_ref();
        let current = self.view.get(key)?;
        if current.as_deref() != old.as_ref().map(AsRef::as_ref) {
            return Ok(Err(CompareAndSwapError {
                current,
                proposed: new.map(Into::into),
            }));
        }
        match new {
            Some(v) => self.insert(key, v)?,
            None => self.remove(key)?,
        };
        Ok(Ok(()))
    }

    /// Like [`sled::Tree::merge`] with the tree's merge operator, inside the transaction;
    /// records the resulting value.
    pub fn merge(
        &self,
        key: impl AsRef<[u8]>,
        value: impl AsRef<[u8]>,
    ) -> Result<Option<IVec>, TxOpError> {
        let op = self.tree.merge_operator().map_err(TxOpError::Capture)?;
        let key = key.as_ref();
        let current = self.view.get(key)?;
        let new = op(key, current.as_deref(), value.as_ref()).map(IVec::from);
        match &new {
            Some(v) => self.insert(key, v.clone())?,
            None => self.remove(key)?,
        };
        Ok(new)
    }

    /// Applies a [`Batch`] inside the transaction.
    pub fn apply_batch(&self, batch: &Batch) -> Result<(), TxOpError> {
        for (k, v) in &batch.writes {
            match v {
                Some(v) => self.insert(k, v.clone())?,
                None => self.remove(k)?,
            };
        }
        Ok(())
    }
}

/// A set of inserts and removes applied atomically by [`CapturedTree::apply_batch`]; the
/// last write of a key wins, as in [`sled::Batch`].
#[derive(Clone, Debug, Default)]
pub struct Batch {
    writes: BTreeMap<IVec, Option<IVec>>,
}

impl Batch {
    pub fn insert(&mut self, key: impl Into<IVec>, value: impl Into<IVec>) {
        self.writes.insert(key.into(), Some(value.into()));
    }

    pub fn remove(&mut self, key: impl Into<IVec>) {
        self.writes.insert(key.into(), None);
    }

    pub fn len(&self) -> usize {
        self.writes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.writes.is_empty()
    }
}

/// A tree whose writes are captured. Reads go straight to sled ([`CapturedTree::sled`]).
#[derive(Clone)]
pub struct CapturedTree {
    name: IVec,
    tree: sled::Tree,
    captured: bool,
    merge: MergeSlot,
    handle: Arc<Handle>,
}

impl CapturedTree {
    /// The underlying sled tree, for reads. Writes made directly on it are **not** captured.
    pub fn sled(&self) -> &sled::Tree {
        &self.tree
    }

    pub fn name(&self) -> &[u8] {
        &self.name
    }

    pub fn get(&self, key: impl AsRef<[u8]>) -> Result<Option<IVec>, CaptureError> {
        Ok(self.tree.get(key)?)
    }

    /// Sets the merge operator [`CapturedTree::merge`] uses, for every handle of this tree
    /// (and on the sled tree itself).
    pub fn set_merge_operator(
        &self,
        op: impl Fn(&[u8], Option<&[u8]>, &[u8]) -> Option<Vec<u8>> + Send + Sync + 'static,
    ) {
        let op: Arc<MergeFn> = Arc::new(op);
        let for_sled = op.clone();
        self.tree
            .set_merge_operator(move |k: &[u8], old: Option<&[u8]>, v: &[u8]| for_sled(k, old, v));
        *self.merge.write().unwrap_or_else(|e| e.into_inner()) = Some(op);
    }

    fn merge_operator(&self) -> Result<Arc<MergeFn>, CaptureError> {
        self.merge
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or_else(|| CaptureError::NoMergeOperator {
                tree: String::from_utf8_lossy(&self.name).into_owned(),
            })
    }

    /// Runs one write on this tree as a captured transaction. `write` returns the key's
    /// value before and after, and the caller's result.
    fn write_one<R>(
        &self,
        key: &[u8],
        write: impl Fn(&TransactionalTree) -> Result<(Option<IVec>, Option<IVec>, R), TxOpError>,
    ) -> Result<R, CaptureError> {
        let shared = &self.handle.shared;
        if !self.captured {
            // An excluded tree: the same write, not recorded.
            return self
                .tree
                .transaction(|t| {
                    let (_, _, out) = write(t).map_err(|e| e.into_conflictable(|e| e))?;
                    Ok(out)
                })
                .map_err(CaptureError::from);
        }
        shared.admit()?;
        let flush = shared.opts.flush_on_commit;
        let (out, seq) = (&self.tree, &shared.outbox)
            .transaction(|(t, outbox)| {
                let (old, new, out) = write(t).map_err(|e| e.into_conflictable(|e| e))?;
                if old == new {
                    return Ok((out, None));
                }
                let mut w = EntryWriter::new(now_micros(), key.len() + 64);
                w.push(&self.name, key, old.as_deref(), new.as_deref())
                    .map_err(ConflictableTransactionError::Abort)?;
                let seq = append_entry(shared, outbox, w.finish(), flush)?;
                Ok((out, Some(seq)))
            })
            .map_err(CaptureError::from)?;
        if let Some(seq) = seq {
            shared.note_committed(seq);
        }
        Ok(out)
    }

    /// `insert`, captured. Returns the previous value.
    pub fn insert(
        &self,
        key: impl AsRef<[u8]>,
        value: impl Into<IVec>,
    ) -> Result<Option<IVec>, CaptureError> {
        let key = key.as_ref();
        let value: IVec = value.into();
        self.write_one(key, |t| {
            let old = t.insert(key, value.clone())?;
            Ok((old.clone(), Some(value.clone()), old))
        })
    }

    /// `remove`, captured. Returns the previous value.
    pub fn remove(&self, key: impl AsRef<[u8]>) -> Result<Option<IVec>, CaptureError> {
        let key = key.as_ref();
        self.write_one(key, |t| {
            let old = t.remove(key)?;
            Ok((old.clone(), None, old))
        })
    }

    /// `compare_and_swap`, captured; the log gets the resulting value.
    pub fn compare_and_swap(
        &self,
        key: impl AsRef<[u8]>,
        old: Option<impl AsRef<[u8]>>,
        new: Option<impl Into<IVec>>,
    ) -> Result<Result<(), CompareAndSwapError>, CaptureError> {
        let key = key.as_ref();
        let old: Option<&[u8]> = old.as_ref().map(AsRef::as_ref);
        let new: Option<IVec> = new.map(Into::into);
        self.write_one(key, |t| {
            let current = t.get(key)?;
            if current.as_deref() != old {
                return Ok((
                    current.clone(),
                    current.clone(),
                    Err(CompareAndSwapError {
                        current,
                        proposed: new.clone(),
                    }),
                ));
            }
            match &new {
                Some(v) => t.insert(key, v.clone())?,
                None => t.remove(key)?,
            };
            Ok((current, new.clone(), Ok(())))
        })
    }

    /// `merge` with this tree's merge operator, captured; the log gets the resulting value.
    /// Returns the new value, like [`sled::Tree::merge`].
    pub fn merge(
        &self,
        key: impl AsRef<[u8]>,
        value: impl AsRef<[u8]>,
    ) -> Result<Option<IVec>, CaptureError> {
        let op = self.merge_operator()?;
        let key = key.as_ref();
        let value = value.as_ref();
        self.write_one(key, |t| {
            let current = t.get(key)?;
            let new = op(key, current.as_deref(), value).map(IVec::from);
            match &new {
                Some(v) => t.insert(key, v.clone())?,
                None => t.remove(key)?,
            };
            Ok((current, new.clone(), new))
        })
    }

    /// Applies `batch` atomically, captured as one transaction.
    pub fn apply_batch(&self, batch: &Batch) -> Result<(), CaptureError> {
        let db = CapturedDb {
            handle: self.handle.clone(),
        };
        db.transaction(&[self], |tx| {
            tx.tree(0).apply_batch(batch)?;
            Ok::<_, TxError<std::convert::Infallible>>(())
        })
        .map_err(|e| match e {
            TransactionError::Capture(e) => e,
            TransactionError::Abort(never) => match never {},
        })
    }
}
