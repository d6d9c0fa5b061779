//! The outbox: where a captured write records itself, inside the writer's own sled transaction.
//!
//! Layout (all inside the application's sled database, so that sled's atomic transactions
//! cover data and record together):
//!
//! ```text
//! tree "__ferry_outbox"
//!   key ""                 → u64 big-endian: the last sequence number handed out (the counter)
//!   key <seq: u64 BE>      → one entry: every change of one committed sled transaction
//! tree "__ferry_tables"
//!   key <tree name>        → ""  (the tree's table is announced in the log)
//! ```
//!
//! Invariants:
//! - **One entry per transaction, allocated in the transaction.** A captured transaction
//!   reads the counter, writes `counter + 1` back and stores its entry under that number, all
//!   in the same sled transaction as its data. Two transactions that both commit therefore
//!   both read and wrote the counter key, so sled's serializability orders them, and the
//!   sequence numbers are dense and strictly increasing in commit order. (sled 0.34.7 goes
//!   further and runs every transaction under one process-wide write lock, but nothing here
//!   depends on that.) A crash can never separate a write from its entry: sled recovers a
//!   transaction's writes together or not at all.
//! - **Net effect per key.** An entry holds, per `(tree, key)` the transaction touched, the
//!   value before the transaction and the value after it (the after-image of a merge or a
//!   compare-and-swap, never the operation), so the log's strict fold can check every
//!   before-image. A key written and then removed within one transaction, or rewritten with
//!   its old value, leaves no change.
//! - The empty key sorts before every 8-byte sequence key, so the counter never shows up when
//!   the entries are scanned from `FIRST_SEQ_KEY`.
//!
//! Entry encoding (format 1, big-endian):
//!
//! ```text
//! entry  := 0x01  captured_at:i64  n:u32  change{n}
//! change := tree_len:u16 tree  key_len:u32 key  image(before)  image(after)
//! image  := 0x00 | 0x01 len:u32 bytes
//! ```

use crate::error::CaptureError;
use ferry_core::UnixMicros;
use sled::IVec;
use std::collections::HashMap;

/// Name of the tree holding the outbox (and its counter).
pub const OUTBOX_TREE: &str = "__ferry_outbox";
/// Name of the tree recording which trees' tables are announced in the log.
pub const TABLES_TREE: &str = "__ferry_tables";
/// Trees whose names start with this are ferry's own and never captured.
pub const RESERVED_PREFIX: &str = "__ferry_";

/// The outbox key of the sequence counter.
pub(crate) const COUNTER_KEY: &[u8] = b"";
/// The smallest entry key.
pub(crate) const FIRST_SEQ_KEY: [u8; 8] = [0; 8];

const ENTRY_FORMAT: u8 = 1;

pub(crate) fn seq_key(seq: u64) -> [u8; 8] {
    seq.to_be_bytes()
}

/// Reads a big-endian u64 stored by this module (a counter or an entry key).
pub(crate) fn decode_u64(bytes: &[u8], what: &'static str) -> Result<u64, CaptureError> {
    let arr: [u8; 8] = bytes.try_into().map_err(|_| CaptureError::CorruptOutbox {
        detail: format!("{what} is {} bytes long, expected 8", bytes.len()),
    })?;
    Ok(u64::from_be_bytes(arr))
}

/// The net change of one key in one transaction, as stored in the outbox.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutboxChange {
    pub tree: Vec<u8>,
    pub key: Vec<u8>,
    pub before: Option<Vec<u8>>,
    pub after: Option<Vec<u8>>,
}

/// One outbox entry: one committed sled transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutboxEntry {
    pub captured_at: UnixMicros,
    pub changes: Vec<OutboxChange>,
}

impl OutboxEntry {
    pub fn decode(seq: u64, bytes: &[u8]) -> Result<OutboxEntry, CaptureError> {
        let mut r = EntryReader { seq, bytes, at: 0 };
        let format = r.u8()?;
        if format != ENTRY_FORMAT {
            return Err(r.corrupt(format!(
                "entry format {format} is unknown (this build writes {ENTRY_FORMAT})"
            )));
        }
        let captured_at = i64::from_be_bytes(r.array::<8>()?);
        let n = u32::from_be_bytes(r.array::<4>()?) as usize;
        let mut changes = Vec::with_capacity(n.min(4096));
        for _ in 0..n {
            let tree_len = u16::from_be_bytes(r.array::<2>()?) as usize;
            let tree = r.take(tree_len)?.to_vec();
            let key_len = u32::from_be_bytes(r.array::<4>()?) as usize;
            let key = r.take(key_len)?.to_vec();
            let before = r.image()?;
            let after = r.image()?;
            changes.push(OutboxChange {
                tree,
                key,
                before,
                after,
            });
        }
        if r.at != bytes.len() {
            return Err(r.corrupt(format!(
                "{} trailing bytes after {n} changes",
                bytes.len() - r.at
            )));
        }
        Ok(OutboxEntry {
            captured_at,
            changes,
        })
    }
}

struct EntryReader<'a> {
    seq: u64,
    bytes: &'a [u8],
    at: usize,
}

impl<'a> EntryReader<'a> {
    fn corrupt(&self, detail: String) -> CaptureError {
        CaptureError::CorruptOutbox {
            detail: format!("entry {} at byte {}: {detail}", self.seq, self.at),
        }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], CaptureError> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.bytes.len());
        match end {
            Some(end) => {
                let s = &self.bytes[self.at..end];
                self.at = end;
                Ok(s)
            }
            None => Err(self.corrupt(format!("truncated: {n} more bytes expected"))),
        }
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], CaptureError> {
        let s = self.take(N)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u8(&mut self) -> Result<u8, CaptureError> {
        Ok(self.array::<1>()?[0])
    }

    fn image(&mut self) -> Result<Option<Vec<u8>>, CaptureError> {
        match self.u8()? {
            0 => Ok(None),
            1 => {
                let len = u32::from_be_bytes(self.array::<4>()?) as usize;
                Ok(Some(self.take(len)?.to_vec()))
            }
            t => Err(self.corrupt(format!("image tag {t} is neither 0 nor 1"))),
        }
    }
}

/// Encodes an entry from its parts; used by the write path without building an
/// [`OutboxEntry`] first.
pub(crate) struct EntryWriter {
    buf: Vec<u8>,
    count: u32,
}

impl EntryWriter {
    pub fn new(captured_at: UnixMicros, capacity: usize) -> Self {
        let mut buf = Vec::with_capacity(17 + capacity);
        buf.push(ENTRY_FORMAT);
        buf.extend_from_slice(&captured_at.to_be_bytes());
        buf.extend_from_slice(&0u32.to_be_bytes());
        EntryWriter { buf, count: 0 }
    }

    pub fn push(
        &mut self,
        tree: &[u8],
        key: &[u8],
        before: Option<&[u8]>,
        after: Option<&[u8]>,
    ) -> Result<(), CaptureError> {
        let tree_len = u16::try_from(tree.len()).map_err(|_| CaptureError::TooLarge {
            what: "tree name",
            len: tree.len(),
        })?;
        self.buf.extend_from_slice(&tree_len.to_be_bytes());
        self.buf.extend_from_slice(tree);
        put_bytes(&mut self.buf, key, "key")?;
        for image in [before, after] {
            match image {
                None => self.buf.push(0),
                Some(v) => {
                    self.buf.push(1);
                    put_bytes(&mut self.buf, v, "value")?;
                }
            }
        }
        self.count += 1;
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    pub fn finish(mut self) -> Vec<u8> {
        self.buf[9..13].copy_from_slice(&self.count.to_be_bytes());
        self.buf
    }
}

fn put_bytes(buf: &mut Vec<u8>, bytes: &[u8], what: &'static str) -> Result<(), CaptureError> {
    let len = u32::try_from(bytes.len()).map_err(|_| CaptureError::TooLarge {
        what,
        len: bytes.len(),
    })?;
    buf.extend_from_slice(&len.to_be_bytes());
    buf.extend_from_slice(bytes);
    Ok(())
}

/// Up to this many changes, a [`ChangeSet`] finds a key by scanning its changes; beyond, by
/// a hash index. Most transactions touch a few keys, and for them building a hash map
/// (allocating it, hashing every key with SipHash) cost more than the scan — measurably, next
/// to a one-key sled write.
const SCAN_LIMIT: usize = 16;

/// The changes a transaction has made so far, reduced to their net effect per key.
///
/// The first write to a key fixes its before-image (the value the key had when the
/// transaction began); later writes only replace the after-image.
#[derive(Default)]
pub(crate) struct ChangeSet {
    changes: Vec<PendingChange>,
    /// Empty until the set holds [`SCAN_LIMIT`] changes; then every change's position.
    index: HashMap<(usize, IVec), usize>,
    tree_names: Vec<IVec>,
}

struct PendingChange {
    tree: usize,
    key: IVec,
    before: Option<IVec>,
    after: Option<IVec>,
}

impl ChangeSet {
    /// Registers a tree name and returns its index in this set.
    pub fn tree_index(&mut self, name: &[u8]) -> usize {
        match self.tree_names.iter().position(|n| n.as_ref() == name) {
            Some(i) => i,
            None => {
                self.tree_names.push(IVec::from(name));
                self.tree_names.len() - 1
            }
        }
    }

    /// Records that `key` of `tree` held `old` just before this write and holds `new` after it.
    pub fn record(&mut self, tree: usize, key: IVec, old: Option<IVec>, new: Option<IVec>) {
        if let Some(i) = self.position(tree, &key) {
            self.changes[i].after = new;
            return;
        }
        if !self.index.is_empty() {
            self.index.insert((tree, key.clone()), self.changes.len());
        } else if self.changes.len() == SCAN_LIMIT {
            // From here on a scan would cost more than hashing: index what is there.
            for (i, c) in self.changes.iter().enumerate() {
                self.index.insert((c.tree, c.key.clone()), i);
            }
            self.index.insert((tree, key.clone()), self.changes.len());
        }
        self.changes.push(PendingChange {
            tree,
            key,
            before: old,
            after: new,
        });
    }

    /// Where `key` of `tree` is in `changes`, if this transaction touched it already.
    fn position(&self, tree: usize, key: &IVec) -> Option<usize> {
        if self.index.is_empty() {
            self.changes
                .iter()
                .position(|c| c.tree == tree && c.key == *key)
        } else {
            self.index.get(&(tree, key.clone())).copied()
        }
    }

    /// The encoded entry, or `None` when the transaction changed nothing.
    pub fn encode(&self, captured_at: UnixMicros) -> Result<Option<Vec<u8>>, CaptureError> {
        let mut w = EntryWriter::new(captured_at, 64 * self.changes.len());
        for c in &self.changes {
            if c.before == c.after {
                continue;
            }
            w.push(
                &self.tree_names[c.tree],
                &c.key,
                c.before.as_deref(),
                c.after.as_deref(),
            )?;
        }
        Ok(if w.is_empty() { None } else { Some(w.finish()) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_round_trips() {
        let mut w = EntryWriter::new(42, 0);
        w.push(b"t", b"k1", None, Some(b"v")).unwrap();
        w.push(b"tree two", b"", Some(b""), None).unwrap();
        let bytes = w.finish();
        let e = OutboxEntry::decode(7, &bytes).unwrap();
        assert_eq!(e.captured_at, 42);
        assert_eq!(
            e.changes,
            vec![
                OutboxChange {
                    tree: b"t".to_vec(),
                    key: b"k1".to_vec(),
                    before: None,
                    after: Some(b"v".to_vec()),
                },
                OutboxChange {
                    tree: b"tree two".to_vec(),
                    key: vec![],
                    before: Some(vec![]),
                    after: None,
                },
            ]
        );
    }

    #[test]
    fn truncated_and_trailing_entries_are_refused() {
        let mut w = EntryWriter::new(1, 0);
        w.push(b"t", b"k", None, Some(b"value")).unwrap();
        let bytes = w.finish();
        for cut in 0..bytes.len() {
            assert!(OutboxEntry::decode(1, &bytes[..cut]).is_err(), "cut {cut}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        let err = OutboxEntry::decode(9, &longer).unwrap_err().to_string();
        assert!(err.contains("entry 9"), "{err}");
    }

    #[test]
    fn change_set_keeps_first_before_and_last_after() {
        let mut cs = ChangeSet::default();
        let t = cs.tree_index(b"t");
        cs.record(t, IVec::from(b"a"), None, Some(IVec::from(b"1")));
        cs.record(
            t,
            IVec::from(b"a"),
            Some(IVec::from(b"1")),
            Some(IVec::from(b"2")),
        );
        // Written and removed again: no net change.
        cs.record(t, IVec::from(b"b"), None, Some(IVec::from(b"x")));
        cs.record(t, IVec::from(b"b"), Some(IVec::from(b"x")), None);
        // Rewritten with its old value: no net change.
        cs.record(
            t,
            IVec::from(b"c"),
            Some(IVec::from(b"same")),
            Some(IVec::from(b"new")),
        );
        cs.record(
            t,
            IVec::from(b"c"),
            Some(IVec::from(b"new")),
            Some(IVec::from(b"same")),
        );
        let e = OutboxEntry::decode(1, &cs.encode(5).unwrap().unwrap()).unwrap();
        assert_eq!(e.changes.len(), 1);
        assert_eq!(e.changes[0].key, b"a");
        assert_eq!(e.changes[0].before, None);
        assert_eq!(e.changes[0].after.as_deref(), Some(&b"2"[..]));

        // Past the scan limit, keys are found through the index, old and new ones alike.
        let mut many = ChangeSet::default();
        let t = many.tree_index(b"t");
        let u = many.tree_index(b"u");
        for round in 0..2u8 {
            for i in 0..(SCAN_LIMIT as u32 * 2) {
                let k = IVec::from(&i.to_be_bytes()[..]);
                let before = (round > 0).then(|| IVec::from(&[round - 1][..]));
                many.record(t, k.clone(), before.clone(), Some(IVec::from(&[round][..])));
                many.record(u, k, before, Some(IVec::from(&[round][..])));
            }
        }
        let e = OutboxEntry::decode(1, &many.encode(5).unwrap().unwrap()).unwrap();
        assert_eq!(e.changes.len(), SCAN_LIMIT * 4);
        assert!(
            e.changes
                .iter()
                .all(|c| c.before.is_none() && c.after.as_deref() == Some(&[1u8][..])),
            "every key keeps its first before-image and its last after-image"
        );

        let mut empty = ChangeSet::default();
        let t = empty.tree_index(b"t");
        empty.record(t, IVec::from(b"k"), None, None);
        assert_eq!(empty.encode(1).unwrap(), None);
    }
}
