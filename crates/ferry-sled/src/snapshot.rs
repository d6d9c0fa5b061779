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
//!    `(tree, key) → value at P`, taken from the before-image of the first change to that key
//!    after `P` (the first one seen, which is the first one: entries are scanned in order).
//! 4. Emit the chunk's key range at `P`: for each key in the chunk or in the undo map within
//!    the range, the undo map's value if the key is there (possibly "absent"), otherwise the
//!    value read.
//!
//! Why this is exact: a key's value read at time `t` differs from its value at `P` only if a
//! transaction after `P` changed it before `t`. That transaction's outbox entry committed
//! atomically with the change, so before `t`, so the scan that follows the read sees it, and
//! the key is in the undo map with its value at `P`. A key the read missed (removed after `P`,
//! or not yet reached) is in the undo map too if it existed at `P` and was changed; if it was
//! never changed after `P`, the read saw it. Keys of ranges already emitted are never looked
//! up again, so their undo entries are dropped (memory: the rows of one chunk, plus the keys
//! changed ahead of the scan — bounded by the outbox limit, since entries `> P` stay in the
//! outbox until the snapshot ends).
//!
//! 5. Append `SnapshotEnd(P)`; delete outbox entries `<= P` (the snapshot covers them; a
//!    restart whose log ends with `SnapshotEnd(P)` deletes them again). The mover then
//!    appends entries from `P + 1` on.
//!
//! A crash before `SnapshotEnd` is durable leaves a log whose last record is a snapshot
//! record: the next start takes the whole snapshot again (at a new `P`), and its
//! `SnapshotBegin` supersedes the unfinished one (a fold resets at every `SnapshotBegin`).

use crate::error::CaptureError;
use crate::mover::{Mover, tree_name};
use crate::outbox::{COUNTER_KEY, OutboxEntry, decode_u64, seq_key};
use crate::sink::DurableSink;
use ferry_core::{
    Record, SnapshotBegin, SnapshotEnd, SnapshotRow, SnapshotRows, SourcePosition, TableSchema,
    now_micros,
};
use sled::IVec;
use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;

struct SnapshotTree {
    name: IVec,
    table: String,
    schema: TableSchema,
}

/// The value at `P` of each key changed after `P`, by (tree index, key).
type UndoMap = BTreeMap<(usize, Vec<u8>), Option<Vec<u8>>>;

impl<S: DurableSink> Mover<S> {
    pub(crate) fn take_snapshot(&mut self) -> Result<(), CaptureError> {
        let shared = self.shared.clone();
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
            let table = tree_name(&name)?.to_string();
            let schema = self.schema(&table)?.clone();
            trees.push(SnapshotTree {
                name,
                table,
                schema,
            });
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
                    tables.insert(t.table.as_bytes(), &[][..])?;
                }
                Ok::<_, sled::transaction::ConflictableTransactionError<CaptureError>>(())
            })
            .map_err(CaptureError::from)?;
        self.announced = trees.iter().map(|t| t.table.clone()).collect();
        shared.db.flush()?;

        let position = SourcePosition::SledOutbox { seq: p };
        self.sink.append(&[Record::SnapshotBegin(SnapshotBegin {
            position: position.clone(),
            captured_at: now_micros(),
            tables: trees.iter().map(|t| t.schema.clone()).collect(),
            schema_rows: trees
                .iter()
                .filter_map(|t| crate::mover::create_table(&t.schema).after)
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
        let mut row_counts = Vec::with_capacity(trees.len());
        for (ti, t) in trees.iter().enumerate() {
            let tree = shared.db.open_tree(&t.name)?;
            let mut lower: Option<IVec> = None;
            let mut count = 0u64;
            loop {
                let mut rows = Vec::new();
                let mut bytes = 0usize;
                let mut complete = true;
                let iter = match &lower {
                    None => tree.iter(),
                    Some(l) => {
                        tree.range::<&[u8], _>((Bound::Excluded(l.as_ref()), Bound::Unbounded))
                    }
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
                scanned = self.scan_undo(scanned, &index, ti, lower.as_deref(), &mut undo)?;

                let range_lo = match &lower {
                    None => Bound::Included((ti, Vec::new())),
                    Some(l) => Bound::Excluded((ti, l.to_vec())),
                };
                let range_hi = match &upper {
                    None => Bound::Excluded((ti + 1, Vec::new())),
                    Some(u) => Bound::Included((ti, u.to_vec())),
                };
                let changed: Vec<(Vec<u8>, Option<Vec<u8>>)> = undo
                    .range((range_lo, range_hi))
                    .map(|((_, k), v)| (k.clone(), v.clone()))
                    .collect();
                for (k, _) in &changed {
                    undo.remove(&(ti, k.clone()));
                }
                let at_p = merge_at_p(rows, changed);
                let mut chunk = Vec::with_capacity(at_p.len());
                for (k, v) in at_p {
                    chunk.push(SnapshotRow {
                        rowid: None,
                        values: self.decode_row(&t.table, &t.schema, &k, &v)?,
                    });
                }
                if !chunk.is_empty() {
                    count += chunk.len() as u64;
                    self.sink.append(&[Record::SnapshotRows(SnapshotRows {
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

        self.sink.append(&[Record::SnapshotEnd(SnapshotEnd {
            position,
            captured_at: now_micros(),
            row_counts,
        })
        .encode()])?;
        self.last_logged = p;
        self.delete_through(p, false)?;
        shared.lock_state().snapshot_done = true;
        self.publish_moved(p);
        Ok(())
    }

    /// Adds to `undo` every change of entries after `scanned` to a key not yet emitted:
    /// trees after the current one, or keys of the current one above `lower`.
    fn scan_undo(
        &self,
        scanned: u64,
        index: &HashMap<Vec<u8>, usize>,
        current: usize,
        lower: Option<&[u8]>,
        undo: &mut UndoMap,
    ) -> Result<u64, CaptureError> {
        let mut last = scanned;
        for kv in self.shared.outbox.range(seq_key(scanned + 1)..) {
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
                    undo.entry((ti, c.key)).or_insert(c.before);
                }
            }
            last = seq;
        }
        Ok(last)
    }
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
