//! The mover: a background thread that moves outbox entries into the durable log.
//!
//! Order of operations for one batch (at most `mover_batch_entries` entries or
//! `mover_batch_bytes` bytes):
//! 1. read the next entries, expecting exactly `last_logged + 1, + 2, …` (sequence numbers
//!    are dense; a gap means an entry was lost and stops the mover);
//! 2. decode them into `Record::Transaction`s (one per entry, position
//!    `SledOutbox { seq }`); a tree seen for the first time gets a `CreateTable` schema change
//!    ahead of its rows ("announced");
//! 3. `sled::Db::flush` — the log must never describe a write sled could still lose, or a
//!    crash would leave the log ahead of the database;
//! 4. append the records (durable on return) and publish `moved`;
//! 5. in one sled transaction: delete the entries and record the newly announced trees in
//!    `__ferry_tables`.
//!
//! Recovery (on every start), from the log's last record:
//! - none, or a snapshot that never ended: take the initial snapshot ([`crate::snapshot`]);
//! - `SnapshotEnd`/`Transaction`/`Heartbeat` at `SledOutbox { seq }`: everything up to `seq`
//!   is in the log; entries `<= seq` still in the outbox (a crash between steps 4 and 5) are
//!   deleted without being appended again, and the trees they touched count as announced
//!   (they were, in the log, before step 5 could record it);
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
            if self.move_batch()? == 0 {
                self.wait_for_work();
            }
        }
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
            out.insert(tree_name(&k)?.to_string());
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
                            trees.insert(tree_name(&c.tree)?.to_string());
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

    /// Moves one batch; returns how many entries it moved.
    fn move_batch(&mut self) -> Result<usize, CaptureError> {
        let shared = self.shared.clone();
        let opts = &shared.opts;
        let mut entries = Vec::new();
        let mut bytes = 0usize;
        for kv in shared.outbox.range(seq_key(self.last_logged + 1)..) {
            let (k, v) = kv?;
            let seq = decode_u64(&k, "an outbox key")?;
            let expected = self.last_logged + 1 + entries.len() as u64;
            if seq != expected {
                return Err(CaptureError::CorruptOutbox {
                    detail: format!(
                        "entry {expected} is missing (the next entry is {seq}); was the outbox tree written by something else?"
                    ),
                });
            }
            bytes += v.len();
            entries.push((seq, v));
            if entries.len() >= opts.mover_batch_entries.max(1) || bytes >= opts.mover_batch_bytes {
                break;
            }
        }
        let Some(&(last_seq, _)) = entries.last() else {
            return Ok(0);
        };
        let mut newly_announced = Vec::new();
        let mut records = Vec::with_capacity(entries.len());
        for (seq, v) in &entries {
            let entry = OutboxEntry::decode(*seq, v)?;
            records.push(self.transaction_record(*seq, entry, &mut newly_announced)?);
        }
        shared.db.flush()?;
        self.sink.append(&records)?;
        self.last_logged = last_seq;
        self.publish_moved(last_seq);
        (&shared.outbox, &shared.tables)
            .transaction(|(outbox, tables)| {
                for (seq, _) in &entries {
                    outbox.remove(&seq_key(*seq)[..])?;
                }
                for t in &newly_announced {
                    tables.insert(t.as_bytes(), &[][..])?;
                }
                Ok::<_, sled::transaction::ConflictableTransactionError<CaptureError>>(())
            })
            .map_err(CaptureError::from)?;
        Ok(entries.len())
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
            let name = tree_name(&c.tree)?.to_string();
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

/// A tree name as a table name: it must be UTF-8.
pub(crate) fn tree_name(name: &[u8]) -> Result<&str, CaptureError> {
    std::str::from_utf8(name).map_err(|_| CaptureError::TreeNameNotUtf8 {
        name_hex: hex_prefix(name),
    })
}

/// Hex of at most the first 32 bytes, for error messages (no full values in errors).
pub(crate) fn hex_prefix(bytes: &[u8]) -> String {
    let mut s: String = bytes.iter().take(32).map(|b| format!("{b:02x}")).collect();
    if bytes.len() > 32 {
        s.push('…');
    }
    s
}
