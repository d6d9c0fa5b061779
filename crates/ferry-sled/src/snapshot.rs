//! The initial snapshot: every tree's contents as of one outbox position `P`, written as
//! `SnapshotBegin(P)`, `SnapshotRows`…, `SnapshotEnd(P)`, after which the log continues with
//! the outbox entries `P + 1, P + 2, …` — no gap, no duplicate — without pausing writers.
//!
//! sled has no read snapshots, so the trees are read while the application keeps writing,
//! and each row is brought back to its value at `P` with the outbox's before-images:
//!
//! 1. `P` := the outbox counter, read in a sled transaction (so every transaction `<= P` has
//!    committed and every later one will get a number `> P`).
//! 2. List the trees and record them as announced in `__ferry_tables`; flush sled, so that
//!    state `P` and that record are durable before the log describes them (were the record
//!    lost after `SnapshotEnd`, a later write would announce a tree again, and a
//!    `CreateTable` empties a table in the fold); append `SnapshotBegin(P)`.
//! 3. For each tree, in key order, read a chunk of rows (bounded by rows and bytes), then
//!    scan every outbox entry committed since the last scan into the *undo map*:
//!    `(tree, key) → seq` of the first change to that key after `P` (the first one seen,
//!    which is the first one: entries are scanned in order), whose before-image is the key's
//!    value at `P`.
//! 4. Emit the chunk's key range at `P`: for each key in the chunk or in the undo map within
//!    the range, the before-image read back from the undo map's entry if the key is there
//!    (possibly "absent"), otherwise the value read.
//!
//! Why this is exact: a key's value read at time `t` differs from its value at `P` only if a
//! transaction after `P` changed it before `t`. That transaction's outbox entry committed
//! atomically with the change, so before `t`, so the scan that follows the read sees it, and
//! the key is in the undo map with its value at `P`. A key the read missed (removed after `P`,
//! or not yet reached) is in the undo map too if it existed at `P` and was changed; if it was
//! never changed after `P`, the read saw it. Keys of ranges already emitted are never looked
//! up again, so their undo entries are dropped. Memory: the rows of one chunk, plus the keys
//! (not values) changed ahead of the scan — at most the keys of the entries `> P`, which
//! admission bounds in bytes while the snapshot runs (`CaptureOptions::snapshot_outbox_bytes`;
//! the entry bound `outbox_limit` is lifted, since nothing can leave the outbox before the
//! snapshot is in the log and a long snapshot would otherwise fail the writers). Entries
//! `> P` stay in the outbox until the snapshot ends, so the values can be read back.
//!
//! 5. Append `SnapshotEnd(P)`; delete outbox entries `<= P` (the snapshot covers them; a
//!    restart whose log ends with `SnapshotEnd(P)` deletes them again). The mover then
//!    appends entries from `P + 1` on.
//!
//! **Staging.** The snapshot takes many appends, and a crash between them must not leave an
//! unfinished snapshot in the log (a shipper that began loading it could not go on). So
//! [`CapturedDb::open`](crate::CapturedDb::open) writes it first into a staging log of its
//! own (`<state-dir>/sources/<id>/capture/snapshot`), and only a complete one is copied into
//! the source's log, record by record with the same LSNs (the source's log is empty when a
//! snapshot is taken). After a crash:
//! - the source's log is empty: the staging log is discarded and the snapshot taken again
//!   (at a new `P`);
//! - the source's log holds part of the copy: the copy resumes after the source's last LSN
//!   (its last record is checked to equal the staged one) — entries `> P` are still in the
//!   outbox, since nothing is deleted before `SnapshotEnd` is in the source's log;
//! - the source's log holds the whole snapshot: the staging log is deleted.
//!
//! [`CapturedDb::with_sink`](crate::CapturedDb::with_sink) has no staging: a crash inside
//! its snapshot leaves an unfinished one, and the next start appends a new `SnapshotBegin`
//! (a fold resets at every `SnapshotBegin`; ferry-pg's shipper refuses it).

use crate::db::{Shared, read_counter};
use crate::error::CaptureError;
use crate::mover::{Mover, SchemaCache, create_table, decode_row, tree_name};
use crate::outbox::{COUNTER_KEY, OutboxEntry, decode_u64, seq_key};
use crate::sink::DurableSink;
use ferry_core::{
    Lsn, Record, SnapshotBegin, SnapshotEnd, SnapshotRow, SnapshotRows, SourcePosition,
    TableSchema, now_micros,
};
use sled::IVec;
use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::path::PathBuf;
use std::sync::atomic::Ordering;

/// Where a snapshot is staged: a log directory of its own and the identity it is made with.
pub(crate) struct SnapshotStaging {
    pub dir: PathBuf,
    pub identity: String,
}

/// Records copied from the staging log per append.
const COPY_BATCH: usize = 64;

impl SnapshotStaging {
    fn open(&self) -> Result<ferry_log::Log, CaptureError> {
        Ok(ferry_log::Log::open(
            &self.dir,
            &self.identity,
            ferry_log::LogOptions::default(),
        )?)
    }

    pub fn remove(&self) -> Result<(), CaptureError> {
        match std::fs::remove_dir_all(&self.dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(CaptureError::StateDir {
                path: self.dir.clone(),
                source,
            }),
        }
    }
}

impl<S: DurableSink> Mover<S> {
    /// Takes the initial snapshot into the log (through the staging log, if there is one),
    /// then deletes the entries it covers. Called when the log holds no complete snapshot.
    pub(crate) fn take_snapshot(&mut self) -> Result<(), CaptureError> {
        // Nothing moves until the snapshot is in the log: admit writers by the bytes the
        // snapshot has to keep track of, not by an entry count a long snapshot would exceed.
        self.shared.snapshot_bytes.store(0, Ordering::SeqCst);
        self.shared.snapshotting.store(true, Ordering::SeqCst);
        let p = match &self.staging {
            None => write_snapshot(&self.shared, &mut self.schemas, &mut self.sink)?,
            Some(staging) => {
                let main_last = self.sink.last_lsn()?;
                if main_last == Lsn::ZERO {
                    staging.remove()?;
                    let mut stage = staging.open()?;
                    write_snapshot(&self.shared, &mut self.schemas, &mut stage)?;
                }
                let p = copy_staged(&self.shared, staging, &mut self.sink, main_last)?;
                staging.remove()?;
                p
            }
        };
        self.announced = self.read_announced()?;
        self.last_logged = p;
        self.delete_through(p, false)?;
        // The entries that piled up during the snapshot are moved now, without holding back
        // the writers that come after them: the floor goes up before the byte bound goes.
        let backlog = read_counter(&self.shared.outbox)?;
        self.shared.admit_floor.fetch_max(backlog, Ordering::SeqCst);
        self.shared.snapshotting.store(false, Ordering::SeqCst);
        self.shared.lock_state().snapshot_done = true;
        self.publish_moved(p);
        Ok(())
    }
}

/// Copies the staged snapshot into `sink` after its record `main_last`; returns `P`.
fn copy_staged(
    shared: &Shared,
    staging: &SnapshotStaging,
    sink: &mut dyn DurableSink,
    main_last: Lsn,
) -> Result<u64, CaptureError> {
    let unfinished = |detail: String| CaptureError::UnfinishedSnapshot {
        dir: staging.dir.clone(),
        detail,
    };
    if !staging.dir.is_dir() {
        return Err(unfinished("its staging log is gone".into()));
    }
    let mut stage = staging.open()?;
    let p = match stage.last_record()? {
        Some(Record::SnapshotEnd(SnapshotEnd {
            position: SourcePosition::SledOutbox { seq },
            ..
        })) => seq,
        other => {
            return Err(unfinished(format!(
                "the staging log ends with {}",
                other.map_or("nothing", |r| r.type_name())
            )));
        }
    };
    let staged_last = stage.durable_lsn();
    if main_last > staged_last {
        return Err(unfinished(format!(
            "the log has {main_last} records, the staging log only {staged_last}"
        )));
    }
    if main_last > Lsn::ZERO {
        let staged = stage
            .reader(main_last)?
            .next()
            .transpose()?
            .map(|(_, payload)| Record::decode(&payload))
            .transpose()?;
        if staged != sink.last_record()? {
            return Err(unfinished(format!(
                "record {main_last} of the log differs from the staged one"
            )));
        }
    }
    let mut batch = Vec::with_capacity(COPY_BATCH);
    for item in stage.reader(main_last.next())? {
        batch.push(item?.1);
        if batch.len() >= COPY_BATCH {
            if shared.stopping() {
                return Err(CaptureError::Closed);
            }
            sink.append(&batch)?;
            batch.clear();
        }
    }
    if !batch.is_empty() {
        sink.append(&batch)?;
    }
    Ok(p)
}

struct SnapshotTree {
    name: IVec,
    tree: String,
    schema: TableSchema,
}

/// Each key changed after `P`, by (tree index, key): the sequence number of the first entry
/// after `P` that changed it, whose before-image is the key's value at `P`. Values are not
/// held here but read back from that entry when the key's range is emitted (entries after
/// `P` stay in the outbox until the snapshot is in the log), so the map holds keys only:
/// its memory is bounded by the entries scanned, which admission bounds in bytes
/// (`CaptureOptions::snapshot_outbox_bytes`).
type UndoMap = BTreeMap<(usize, Vec<u8>), u64>;

/// Writes a complete snapshot (steps 1–5 above, except deleting the covered entries) into
/// `out`; returns `P`.
fn write_snapshot(
    shared: &Shared,
    schemas: &mut SchemaCache,
    out: &mut dyn DurableSink,
) -> Result<u64, CaptureError> {
    let opts = &shared.opts;
    let p = shared
        .outbox
        .transaction(|outbox| {
            Ok::<_, sled::transaction::ConflictableTransactionError<CaptureError>>(
                outbox.get(COUNTER_KEY)?,
            )
        })
        .map_err(CaptureError::from)?;
    let p = match p {
        Some(v) => decode_u64(&v, "the outbox counter")?,
        None => 0,
    };

    let mut trees = Vec::new();
    let mut names: Vec<IVec> = shared
        .db
        .tree_names()
        .into_iter()
        .filter(|n| opts.is_captured(n))
        .collect();
    names.sort();
    for name in names {
        let tree = tree_name(&name);
        let schema = schemas.get(shared, &tree)?;
        trees.push(SnapshotTree { name, tree, schema });
    }

    // Which trees the log will know.
    let old: Vec<IVec> = shared
        .tables
        .iter()
        .keys()
        .collect::<Result<_, sled::Error>>()?;
    shared
        .tables
        .transaction(|tables| {
            for k in &old {
                tables.remove(k)?;
            }
            for t in &trees {
                tables.insert(t.tree.as_bytes(), &[][..])?;
            }
            Ok::<_, sled::transaction::ConflictableTransactionError<CaptureError>>(())
        })
        .map_err(CaptureError::from)?;
    shared.db.flush()?;

    let position = SourcePosition::SledOutbox { seq: p };
    out.append(&[Record::SnapshotBegin(SnapshotBegin {
        position: position.clone(),
        captured_at: now_micros(),
        tables: trees.iter().map(|t| t.schema.clone()).collect(),
        schema_rows: trees
            .iter()
            .filter_map(|t| create_table(&t.schema).after)
            .collect(),
    })
    .encode()])?;

    let index: HashMap<Vec<u8>, usize> = trees
        .iter()
        .enumerate()
        .map(|(i, t)| (t.name.to_vec(), i))
        .collect();
    let mut undo = UndoMap::new();
    let mut scanned = p;
    let mut scanned_bytes = 0u64;
    let mut flushed = std::time::Instant::now();
    let mut row_counts = Vec::with_capacity(trees.len());
    for (ti, t) in trees.iter().enumerate() {
        let tree = shared.db.open_tree(&t.name)?;
        let mut lower: Option<IVec> = None;
        let mut count = 0u64;
        loop {
            if shared.stopping() {
                return Err(CaptureError::Closed);
            }
            // Flush sled at the mover's pace while the snapshot runs, as the mover's cycles do
            // otherwise: every sled transaction leaves I/O behind, and the first flush after a
            // long snapshot would otherwise pay all of it at once while blocking every writer
            // (seconds, measured with 200k rows and a writer at full speed).
            if flushed.elapsed() >= opts.mover_interval {
                shared.db.flush()?;
                flushed = std::time::Instant::now();
            }
            let mut rows = Vec::new();
            let mut bytes = 0usize;
            let mut complete = true;
            let iter = match &lower {
                None => tree.iter(),
                Some(l) => tree.range::<&[u8], _>((Bound::Excluded(l.as_ref()), Bound::Unbounded)),
            };
            for kv in iter {
                let (k, v) = kv?;
                bytes += k.len() + v.len();
                rows.push((k, v));
                if rows.len() >= opts.snapshot_chunk_rows.max(1)
                    || bytes >= opts.snapshot_chunk_bytes
                {
                    complete = false;
                    break;
                }
            }
            let upper: Option<IVec> = if complete {
                None
            } else {
                rows.last().map(|(k, _)| k.clone())
            };
            (scanned, scanned_bytes) = scan_undo(
                shared,
                (scanned, scanned_bytes),
                &index,
                ti,
                lower.as_deref(),
                &mut undo,
            )?;

            let range_lo = match &lower {
                None => Bound::Included((ti, Vec::new())),
                Some(l) => Bound::Excluded((ti, l.to_vec())),
            };
            let range_hi = match &upper {
                None => Bound::Excluded((ti + 1, Vec::new())),
                Some(u) => Bound::Included((ti, u.to_vec())),
            };
            let changed_seqs: Vec<(Vec<u8>, u64)> = undo
                .range((range_lo, range_hi))
                .map(|((_, k), seq)| (k.clone(), *seq))
                .collect();
            for (k, _) in &changed_seqs {
                undo.remove(&(ti, k.clone()));
            }
            let changed = values_at_p(shared, &t.name, changed_seqs)?;
            let at_p = merge_at_p(rows, changed);
            let mut chunk = Vec::with_capacity(at_p.len());
            for (k, v) in at_p {
                chunk.push(SnapshotRow {
                    rowid: None,
                    values: decode_row(shared, &t.tree, &t.schema, &k, &v)?,
                });
            }
            if !chunk.is_empty() {
                count += chunk.len() as u64;
                out.append(&[Record::SnapshotRows(SnapshotRows {
                    table: t.schema.name.clone(),
                    rows: chunk,
                })
                .encode()])?;
            }
            match upper {
                Some(u) => lower = Some(u),
                None => break,
            }
        }
        row_counts.push((t.schema.name.clone(), count));
    }

    out.append(&[Record::SnapshotEnd(SnapshotEnd {
        position,
        captured_at: now_micros(),
        row_counts,
    })
    .encode()])?;
    Ok(p)
}

/// Adds to `undo` every change of entries after `scanned` to a key not yet emitted: trees
/// after the current one, or keys of the current one above `lower`. Returns the last entry
/// scanned and the bytes of all entries scanned so far (also published for admission).
fn scan_undo(
    shared: &Shared,
    (scanned, scanned_bytes): (u64, u64),
    index: &HashMap<Vec<u8>, usize>,
    current: usize,
    lower: Option<&[u8]>,
    undo: &mut UndoMap,
) -> Result<(u64, u64), CaptureError> {
    let mut last = scanned;
    let mut bytes = scanned_bytes;
    for kv in shared.outbox.range(seq_key(scanned + 1)..) {
        let (k, v) = kv?;
        let seq = decode_u64(&k, "an outbox key")?;
        let entry = OutboxEntry::decode(seq, &v)?;
        for c in entry.changes {
            let Some(&ti) = index.get(c.tree.as_slice()) else {
                // Not a snapshotted tree: created after the listing, so empty at P; its
                // entries announce it after the snapshot.
                continue;
            };
            let emitted =
                ti < current || (ti == current && lower.is_some_and(|l| c.key.as_slice() <= l));
            if !emitted {
                undo.entry((ti, c.key)).or_insert(seq);
            }
        }
        bytes += v.len() as u64;
        last = seq;
    }
    shared.snapshot_bytes.store(bytes, Ordering::SeqCst);
    Ok((last, bytes))
}

/// A key and its value at `P` (`None`: absent at `P`).
type KeyAtP = (Vec<u8>, Option<Vec<u8>>);

/// The values at `P` of `changed` keys of tree `tree` (sorted by key), each the before-image
/// in the entry that first changed it after `P`. Each entry is read and decoded once.
fn values_at_p(
    shared: &Shared,
    tree: &[u8],
    changed: Vec<(Vec<u8>, u64)>,
) -> Result<Vec<KeyAtP>, CaptureError> {
    let mut by_seq: BTreeMap<u64, Vec<usize>> = BTreeMap::new();
    for (i, (_, seq)) in changed.iter().enumerate() {
        by_seq.entry(*seq).or_default().push(i);
    }
    let mut values: Vec<Option<Option<Vec<u8>>>> = vec![None; changed.len()];
    for (seq, wanted) in by_seq {
        let Some(bytes) = shared.outbox.get(seq_key(seq))? else {
            return Err(CaptureError::CorruptOutbox {
                detail: format!(
                    "entry {seq}, written after the snapshot's position, left the outbox before the snapshot ended"
                ),
            });
        };
        let entry = OutboxEntry::decode(seq, &bytes)?;
        let mut befores: HashMap<&[u8], &Option<Vec<u8>>> = HashMap::new();
        for c in &entry.changes {
            if c.tree == tree {
                befores.entry(c.key.as_slice()).or_insert(&c.before);
            }
        }
        for i in wanted {
            let key = changed[i].0.as_slice();
            let Some(before) = befores.get(key) else {
                return Err(CaptureError::CorruptOutbox {
                    detail: format!("entry {seq} no longer holds the change it was scanned with"),
                });
            };
            values[i] = Some((*before).clone());
        }
    }
    Ok(changed
        .into_iter()
        .zip(values)
        .map(|((k, _), v)| (k, v.flatten()))
        .collect())
}

/// The rows of one key range at `P`: the rows read, overridden by the values at `P` of the
/// keys changed since. Both inputs are sorted by key; so is the output.
fn merge_at_p(
    read: Vec<(IVec, IVec)>,
    changed: Vec<(Vec<u8>, Option<Vec<u8>>)>,
) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut out = Vec::with_capacity(read.len() + changed.len());
    let mut read = read.into_iter().peekable();
    let mut changed = changed.into_iter().peekable();
    loop {
        let take_changed = match (read.peek(), changed.peek()) {
            (None, None) => break,
            (Some(_), None) => false,
            (None, Some(_)) => true,
            (Some((rk, _)), Some((ck, _))) => {
                if rk.as_ref() == ck.as_slice() {
                    // The read value is superseded by the value at P.
                    read.next();
                    true
                } else {
                    ck.as_slice() < rk.as_ref()
                }
            }
        };
        if take_changed {
            if let Some((k, Some(v))) = changed.next() {
                out.push((k, v));
            }
        } else if let Some((k, v)) = read.next() {
            out.push((k.to_vec(), v.to_vec()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_at_p_override_values_read() {
        let read = vec![
            (IVec::from(b"a"), IVec::from(b"1")),
            (IVec::from(b"c"), IVec::from(b"3-new")),
            (IVec::from(b"d"), IVec::from(b"inserted after P")),
        ];
        let changed = vec![
            (b"b".to_vec(), Some(b"removed after P".to_vec())),
            (b"c".to_vec(), Some(b"3".to_vec())),
            (b"d".to_vec(), None),
            (b"e".to_vec(), None),
        ];
        let out = merge_at_p(read, changed);
        assert_eq!(
            out,
            vec![
                (b"a".to_vec(), b"1".to_vec()),
                (b"b".to_vec(), b"removed after P".to_vec()),
                (b"c".to_vec(), b"3".to_vec()),
            ]
        );
    }
}
