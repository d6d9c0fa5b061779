//! The mover: a background thread that moves outbox entries into the durable log.
//!
//! It works in *cycles*. One cycle:
//! 1. read the outbox counter `C`: every entry up to `C` has committed;
//! 2. `sled::Db::flush` — once for the whole cycle. The log must never describe a write sled
//!    could still lose, or a crash would leave the log ahead of the database. Every entry up
//!    to `C` committed before the flush began, so the flush makes all of them durable;
//! 3. in batches of at most `mover_batch_entries` entries or `mover_batch_bytes` bytes, up to
//!    `C`:
//!    a. read the next entries, expecting exactly `last_logged + 1, + 2, …` (sequence numbers
//!    are dense; a gap means an entry was lost and stops the mover);
//!    b. decode them into `Record::Transaction`s (one per entry, position
//!    `SledOutbox { seq }`); a tree seen for the first time gets a `CreateTable` schema
//!    change ahead of its rows ("announced");
//!    c. append the records (durable on return) and publish `moved`;
//!    d. record the newly announced trees in `__ferry_tables`, then delete the entries.
//!    Neither needs to be atomic with the other or with the append: the log is already
//!    durable, and recovery (below) redoes both from the log's last position. The deletes
//!    are single-key removes, not one transaction, because a sled transaction (or batch)
//!    takes sled's process-wide write lock and would stall every writer while it runs;
//! 4. pace: wait until `mover_interval` has passed since the cycle began before the next
//!    one, unless a writer is waiting for room or a caller of `sync` for the log. sled's
//!    `flush` holds sled's concurrency lock in read mode through its fsync, which blocks
//!    every transaction, captured or not, for that long; pacing bounds how often the mover
//!    does that (the cost measured in `benches/benches/sled_overhead.rs`). When the outbox is
//!    empty the mover sleeps until the next write wakes it (or `mover_poll`).
//!
//! Recovery (on every start), from the log's last record:
//! - none, or a snapshot that never ended: take the initial snapshot ([`crate::snapshot`]);
//! - `SnapshotEnd`/`Transaction`/`Heartbeat` at `SledOutbox { seq }`: everything up to `seq`
//!   is in the log; entries `<= seq` still in the outbox (a crash between steps 3c and 3d)
//!   are deleted without being appended again, and the trees they touched count as
//!   announced (they were, in the log, before step 3d could record it);
//! - a position beyond the outbox counter: the database lost writes the log already has
//!   (restored from a backup, or copied without a flush): refused, never papered over.
//!
//! Errors stop the mover (a log that failed to fsync cannot be retried safely); writers keep
//! going until the outbox reaches its bound, then get [`CaptureError::MoverStopped`].

use crate::db::{Shared, read_counter};
use crate::error::CaptureError;
use crate::outbox::{FIRST_SEQ_KEY, OutboxEntry, decode_u64, seq_key};
use crate::sink::DurableSink;
use crate::snapshot::SnapshotStaging;
use ferry_core::{
    KeyColumns, Record, RowChange, SchemaChange, SchemaChangeKind, SchemaRow, SourcePosition,
    TableSchema, Transaction, Value,
};
use sled::Transactional;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

pub(crate) struct Mover<S: DurableSink> {
    pub shared: Arc<Shared>,
    pub sink: S,
    /// Trees whose tables the log has announced (by tree name).
    pub announced: HashSet<String>,
    pub schemas: SchemaCache,
    /// Where the initial snapshot is staged before it is copied into the log (so that the log
    /// never holds an unfinished snapshot); `None` writes it straight into the sink.
    pub staging: Option<SnapshotStaging>,
    /// The last sequence number the log holds (or its snapshot covers).
    pub last_logged: u64,
}

impl<S: DurableSink> Mover<S> {
    pub fn new(shared: Arc<Shared>, sink: S, staging: Option<SnapshotStaging>) -> Self {
        Mover {
            shared,
            sink,
            announced: HashSet::new(),
            schemas: SchemaCache::default(),
            staging,
            last_logged: 0,
        }
    }

    /// The thread body: runs until stopped or failed, and records a failure for the writers.
    pub fn run(mut self) {
        let result = self.run_until_stopped();
        // A snapshot that did not finish lifts the entry bound no longer: writers fall back to
        // `outbox_limit`, and then to the error below.
        self.shared.snapshotting.store(false, Ordering::SeqCst);
        let mut state = self.shared.lock_state();
        match result {
            // Asked to stop in the middle of long work (a snapshot): not a failure; the next
            // start takes up the snapshot again.
            Err(CaptureError::Closed) if state.stop => {}
            Err(e) => state.error = Some(Arc::new(e)),
            Ok(()) => {}
        }
        state.stop = true;
        self.shared.progress.notify_all();
    }

    fn run_until_stopped(&mut self) -> Result<(), CaptureError> {
        self.recover()?;
        loop {
            if self.shared.lock_state().stop {
                return Ok(());
            }
            let started = Instant::now();
            if self.move_committed()? == 0 {
                self.wait_for_work();
            } else {
                self.pace(started);
            }
        }
    }

    /// Waits until `mover_interval` has passed since `started`, unless the capture stops, a
    /// writer waits for room, a `sync` waits for the log, or the outbox is half full.
    fn pace(&self, started: Instant) {
        let shared = &self.shared;
        let deadline = started + shared.opts.mover_interval;
        let half_full = || {
            shared
                .committed
                .load(Ordering::SeqCst)
                .saturating_sub(self.last_logged)
                >= shared.opts.outbox_limit / 2
        };
        let mut state = shared.lock_state();
        loop {
            if state.stop || state.hurry || half_full() {
                state.hurry = false;
                return;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            state = match shared.work.wait_timeout(state, left) {
                Ok((s, _)) => s,
                Err(e) => e.into_inner().0,
            };
        }
    }

    /// One cycle (steps 1–3 of the module comment): moves every entry committed when it
    /// starts; returns how many it moved.
    fn move_committed(&mut self) -> Result<u64, CaptureError> {
        let shared = self.shared.clone();
        let target = read_counter(&shared.outbox)?;
        if target <= self.last_logged {
            return Ok(0);
        }
        shared.db.flush()?;
        let first = self.last_logged;
        while self.last_logged < target {
            if shared.stopping() {
                break;
            }
            self.move_batch(target)?;
        }
        Ok(self.last_logged - first)
    }

    fn wait_for_work(&self) {
        let shared = &self.shared;
        let state = shared.lock_state();
        if state.stop {
            return;
        }
        shared.mover_sleeping.store(true, Ordering::SeqCst);
        // Checked after announcing that we sleep: a writer that committed before this load
        // is seen here, one that commits after it sees `mover_sleeping` and notifies.
        if shared.committed.load(Ordering::SeqCst) <= self.last_logged {
            let _ = shared.work.wait_timeout(state, shared.opts.mover_poll);
        }
        shared.mover_sleeping.store(false, Ordering::SeqCst);
    }

    pub(crate) fn publish_moved(&self, seq: u64) {
        let shared = &self.shared;
        shared.moved.fetch_max(seq, Ordering::SeqCst);
        let _state = shared.lock_state();
        shared.progress.notify_all();
    }

    fn recover(&mut self) -> Result<(), CaptureError> {
        let last = self.sink.last_record()?;
        let position = match &last {
            None | Some(Record::SnapshotBegin(_)) | Some(Record::SnapshotRows(_)) => None,
            Some(Record::Cutover(_)) => return Err(CaptureError::CutOver),
            Some(r) => match r.position() {
                Some(SourcePosition::SledOutbox { seq }) => Some(*seq),
                other => {
                    return Err(CaptureError::ForeignLog {
                        found: format!(
                            "{} at {}",
                            r.type_name(),
                            other.map_or_else(|| "-".to_string(), |p| p.to_string())
                        ),
                    });
                }
            },
        };
        let Some(seq) = position else {
            return self.take_snapshot();
        };
        if let Some(staging) = &self.staging {
            // Left behind by a crash after the snapshot was copied into the log.
            staging.remove()?;
        }
        let counter = read_counter(&self.shared.outbox)?;
        if seq > counter {
            return Err(CaptureError::LogAheadOfSource {
                logged: seq,
                counter,
            });
        }
        self.last_logged = seq;
        self.announced = self.read_announced()?;
        // After a snapshot, entries up to its position are covered by it, not appended: the
        // trees they touched are in the snapshot already.
        let appended = !matches!(last, Some(Record::SnapshotEnd(_)));
        self.delete_through(seq, appended)?;
        self.shared.lock_state().snapshot_done = true;
        self.publish_moved(seq);
        Ok(())
    }

    pub(crate) fn read_announced(&self) -> Result<HashSet<String>, CaptureError> {
        let mut out = HashSet::new();
        for kv in self.shared.tables.iter() {
            let (k, _) = kv?;
            out.insert(tree_name(&k));
        }
        Ok(out)
    }

    /// Deletes every outbox entry up to `seq`, in bounded transactions; with `announce`, the
    /// trees they touched are recorded as announced in the same transactions.
    pub(crate) fn delete_through(&mut self, seq: u64, announce: bool) -> Result<(), CaptureError> {
        let shared = self.shared.clone();
        loop {
            let mut keys = Vec::new();
            let mut trees = HashSet::new();
            for kv in shared.outbox.range(FIRST_SEQ_KEY..=seq_key(seq)) {
                let (k, v) = kv?;
                if announce {
                    let entry = OutboxEntry::decode(decode_u64(&k, "an outbox key")?, &v)?;
                    for c in entry.changes {
                        if shared.opts.is_captured(&c.tree) {
                            trees.insert(tree_name(&c.tree));
                        }
                    }
                }
                keys.push(k);
                if keys.len() >= shared.opts.mover_batch_entries.max(1) {
                    break;
                }
            }
            if keys.is_empty() {
                return Ok(());
            }
            (&shared.outbox, &shared.tables)
                .transaction(|(outbox, tables)| {
                    for k in &keys {
                        outbox.remove(k)?;
                    }
                    for t in &trees {
                        tables.insert(t.as_bytes(), &[][..])?;
                    }
                    Ok::<_, sled::transaction::ConflictableTransactionError<CaptureError>>(())
                })
                .map_err(CaptureError::from)?;
            self.announced.extend(trees);
        }
    }

    /// Moves one batch of entries after `last_logged`, up to `target` (which sled has made
    /// durable); steps 3a–3d of the module comment.
    fn move_batch(&mut self, target: u64) -> Result<(), CaptureError> {
        let shared = self.shared.clone();
        let opts = &shared.opts;
        let mut entries = Vec::new();
        let mut bytes = 0usize;
        for kv in shared
            .outbox
            .range(seq_key(self.last_logged + 1)..=seq_key(target))
        {
            let (k, v) = kv?;
            let seq = decode_u64(&k, "an outbox key")?;
            let expected = self.last_logged + 1 + entries.len() as u64;
            if seq != expected {
                return Err(missing_entry(expected, Some(seq)));
            }
            bytes += v.len();
            entries.push((seq, v));
            if entries.len() >= opts.mover_batch_entries.max(1) || bytes >= opts.mover_batch_bytes {
                break;
            }
        }
        let Some(&(last_seq, _)) = entries.last() else {
            // The counter said `target` committed, so its entries must be here.
            return Err(missing_entry(self.last_logged + 1, None));
        };
        let mut newly_announced = Vec::new();
        let mut records = Vec::with_capacity(entries.len());
        for (seq, v) in &entries {
            let entry = OutboxEntry::decode(*seq, v)?;
            records.push(self.transaction_record(*seq, entry, &mut newly_announced)?);
        }
        self.sink.append(&records)?;
        self.last_logged = last_seq;
        self.publish_moved(last_seq);
        for t in &newly_announced {
            shared.tables.insert(t.as_bytes(), &[][..])?;
        }
        for (seq, _) in &entries {
            shared.outbox.remove(&seq_key(*seq)[..])?;
        }
        Ok(())
    }

    /// The log record of one outbox entry.
    fn transaction_record(
        &mut self,
        seq: u64,
        entry: OutboxEntry,
        newly_announced: &mut Vec<String>,
    ) -> Result<Vec<u8>, CaptureError> {
        let mut txn = Transaction {
            position: SourcePosition::SledOutbox { seq },
            captured_at: entry.captured_at,
            schema_changes: Vec::new(),
            changes: Vec::with_capacity(entry.changes.len()),
            resync: false,
        };
        for c in entry.changes {
            if !self.shared.opts.is_captured(&c.tree) {
                continue;
            }
            let name = tree_name(&c.tree);
            let schema = self.schemas.get(&self.shared, &name)?;
            if !self.announced.contains(&name) {
                txn.schema_changes.push(create_table(&schema));
                self.announced.insert(name.clone());
                newly_announced.push(name.clone());
            }
            let before = c
                .before
                .map(|v| decode_row(&self.shared, &name, &schema, &c.key, &v))
                .transpose()?;
            let after = c
                .after
                .map(|v| decode_row(&self.shared, &name, &schema, &c.key, &v))
                .transpose()?;
            let table = schema.name.clone();
            let change = match (before, after) {
                (None, Some(a)) => RowChange::insert(table, schema.key_of(&a, None), a),
                (Some(b), Some(a)) => RowChange::update(table, schema.key_of(&a, None), b, a),
                (Some(b), None) => RowChange::delete(table, schema.key_of(&b, None), b),
                (None, None) => continue,
            };
            txn.changes.push(change);
        }
        Ok(Record::Transaction(txn).encode())
    }
}

fn missing_entry(expected: u64, found: Option<u64>) -> CaptureError {
    let next = found.map_or_else(
        || "there is none".to_string(),
        |f| format!("the next entry is {f}"),
    );
    CaptureError::CorruptOutbox {
        detail: format!(
            "entry {expected} is missing ({next}); was the outbox tree written by something else?"
        ),
    }
}

/// The decoder's schema per tree, checked for usability on first use.
#[derive(Default)]
pub(crate) struct SchemaCache {
    schemas: HashMap<String, TableSchema>,
}

impl SchemaCache {
    pub fn get(&mut self, shared: &Shared, tree: &str) -> Result<TableSchema, CaptureError> {
        if let Some(s) = self.schemas.get(tree) {
            return Ok(s.clone());
        }
        let schema = shared.opts.decoder.table_schema(tree);
        check_schema(tree, &schema)?;
        self.schemas.insert(tree.to_string(), schema.clone());
        Ok(schema)
    }
}

/// One sled entry as a row of its table, checked against the schema's width.
pub(crate) fn decode_row(
    shared: &Shared,
    tree: &str,
    schema: &TableSchema,
    key: &[u8],
    value: &[u8],
) -> Result<Vec<Value>, CaptureError> {
    let row = shared
        .opts
        .decoder
        .decode(tree, key, value)
        .map_err(|source| CaptureError::Decode {
            tree: tree.to_string(),
            key_hex: hex_prefix(key),
            source,
        })?;
    if row.len() != schema.columns.len() {
        return Err(CaptureError::BadSchema {
            tree: tree.to_string(),
            detail: format!(
                "the decoder returned {} values for key {} but the schema has {} columns",
                row.len(),
                hex_prefix(key),
                schema.columns.len()
            ),
        });
    }
    Ok(row)
}

fn check_schema(tree: &str, schema: &TableSchema) -> Result<(), CaptureError> {
    let bad = |detail: String| CaptureError::BadSchema {
        tree: tree.to_string(),
        detail,
    };
    match &schema.key {
        KeyColumns::PrimaryKey(idx) if idx.is_empty() => {
            Err(bad("the primary key has no columns".into()))
        }
        KeyColumns::PrimaryKey(idx) => match idx.iter().find(|&&i| i >= schema.columns.len()) {
            Some(i) => Err(bad(format!(
                "key column {i} does not exist ({} columns)",
                schema.columns.len()
            ))),
            None => Ok(()),
        },
        KeyColumns::Rowid => Err(bad(
            "a sled table needs a primary key made of columns (KeyColumns::PrimaryKey)".into(),
        )),
    }
}

/// The schema change that announces a tree's table.
pub(crate) fn create_table(schema: &TableSchema) -> SchemaChange {
    SchemaChange {
        kind: SchemaChangeKind::CreateTable,
        table: schema.name.clone(),
        before: None,
        after: Some(SchemaRow {
            kind: "table".into(),
            name: schema.name.clone(),
            tbl_name: schema.name.clone(),
            rootpage: 0,
            sql: Some(schema.sql.clone()),
        }),
        schema: Some(schema.clone()),
    }
}

/// Table names of trees whose names are not UTF-8 start with this, followed by the name's
/// bytes in hex.
pub const NON_UTF8_TREE_PREFIX: &str = "__sled_hex_";

/// A tree name as a table name. sled names trees with any bytes; a table needs text, so a
/// name that is not UTF-8 becomes [`NON_UTF8_TREE_PREFIX`] followed by its bytes in hex
/// (lossless, and stable across restarts, which the log's table names must be). UTF-8 names,
/// including those this function made, map to themselves.
pub fn tree_name(name: &[u8]) -> String {
    match std::str::from_utf8(name) {
        Ok(s) => s.to_string(),
        Err(_) => {
            let hex: String = name.iter().map(|b| format!("{b:02x}")).collect();
            format!("{NON_UTF8_TREE_PREFIX}{hex}")
        }
    }
}

/// Hex of at most the first 32 bytes, for error messages (no full values in errors).
pub(crate) fn hex_prefix(bytes: &[u8]) -> String {
    let mut s: String = bytes.iter().take(32).map(|b| format!("{b:02x}")).collect();
    if bytes.len() > 32 {
        s.push('…');
    }
    s
}
