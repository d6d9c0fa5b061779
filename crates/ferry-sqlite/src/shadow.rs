//! The shadow: a page-exact copy of the source database as of the last captured
//! transaction, kept in the capture directory, and the journal that keeps it consistent with
//! the log across crashes.
//!
//! Files in the capture directory:
//! - `shadow.db`: page `n` at byte `(n-1) * page_size`, exactly `page_count` pages.
//! - `shadow.state`: where the durable `shadow.db` stands — the resume point in the source
//!   (salts, frame, running checksum, database size, change counter) and the LSN of the log
//!   record that brought it there. Replaced by temp → fsync → rename → directory fsync.
//! - `shadow.journal`: redo entries for the batches since the last checkpoint, one per
//!   transaction: the LSN its record will have, its resume point and its page images; each
//!   entry framed as length,
//!   CRC32C, body. A page's first image in a batch is stored whole; a later image of the same
//!   page in the same batch is stored as the byte ranges that differ from the previous one
//!   (a hot leaf rewritten by every small transaction costs a few dozen bytes, not a page),
//!   so redo reads the entries in order and rebuilds each image from the one before.
//!
//! Order of a batch (so that a crash at any instant leaves the shadow never ahead of the log,
//! and the log never ahead of what the shadow can be brought to):
//! 1. append the batch's entries to the journal and fsync it;
//! 2. append the records to the log (durable on return);
//! 3. write the pages into `shadow.db` and set its length (no fsync: the journal holds them,
//!    and only pages of transactions the log holds are ever written there).
//!
//! A checkpoint — at most every [`CHECKPOINT_INTERVAL`], when the journal passes
//! [`CHECKPOINT_JOURNAL_BYTES`], after recovery and when capture closes — makes `shadow.db`
//! durable (fsync), writes `shadow.state` (temp, fsync, rename, fsync dir) and truncates the
//! journal. A batch thus costs two fsyncs (journal, log) instead of five: each fsync of
//! capture's files also commits the file system's journal, which the application's own
//! fsyncs then wait behind.
//!
//! On open, entries whose LSN the log holds (and whose log record carries the entry's source
//! position) are redone in order, the rest discarded; then a checkpoint runs. Redo is
//! idempotent: entries are whole page images, or deltas from an earlier image of the same
//! batch. Pages written to `shadow.db` after the last checkpoint belong to entries the log
//! holds, all of them in the journal, so redo rewrites every one of them.

use crate::pages::{FilePages, Page, read_full_at};
use crate::sink::RecordSink;
use ferry_core::{Lsn, SourcePosition};
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum ShadowError {
    #[error("shadow I/O on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "shadow state file {path} is corrupt ({problem}); delete the capture directory to take a new snapshot"
    )]
    Corrupt { path: PathBuf, problem: String },
    #[error(transparent)]
    Sink(#[from] crate::sink::SinkError),
}

/// Where in the source the shadow (or a transaction) stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResumePoint {
    /// The WAL generation, `None` when the state was read from the database file without WAL
    /// frames (rollback mode, or no WAL header).
    pub salts: Option<(u32, u32)>,
    /// Last consumed frame (0: only the header).
    pub frame: u32,
    pub checksum: (u32, u32),
    pub db_pages: u32,
    pub change_counter: u32,
}

impl ResumePoint {
    const LEN: usize = 1 + 4 * 7;

    fn encode(&self, out: &mut Vec<u8>) {
        out.push(u8::from(self.salts.is_some()));
        let (s1, s2) = self.salts.unwrap_or((0, 0));
        for v in [
            s1,
            s2,
            self.frame,
            self.checksum.0,
            self.checksum.1,
            self.db_pages,
            self.change_counter,
        ] {
            out.extend_from_slice(&v.to_le_bytes());
        }
    }

    fn decode(b: &[u8]) -> Option<ResumePoint> {
        if b.len() < Self::LEN {
            return None;
        }
        let w =
            |i: usize| u32::from_le_bytes([b[1 + 4 * i], b[2 + 4 * i], b[3 + 4 * i], b[4 + 4 * i]]);
        Some(ResumePoint {
            salts: (b[0] == 1).then(|| (w(0), w(1))),
            frame: w(2),
            checksum: (w(3), w(4)),
            db_pages: w(5),
            change_counter: w(6),
        })
    }

    /// The source position records carry for this point.
    pub fn position(&self, from_file: bool) -> SourcePosition {
        let wal = self.salts.map(|(salt1, salt2)| ferry_core::WalPosition {
            salt1,
            salt2,
            frame: self.frame,
            checksum1: self.checksum.0,
            checksum2: self.checksum.1,
            db_pages: self.db_pages,
        });
        match wal {
            Some(w) if !from_file && w.frame > 0 => SourcePosition::SqliteWal(w),
            wal => SourcePosition::SqliteFile {
                change_counter: self.change_counter,
                wal,
            },
        }
    }
}

/// The persisted state of the shadow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShadowState {
    pub point: ResumePoint,
    pub lsn: Lsn,
    pub page_size: u32,
}

/// One transaction's redo entry.
pub struct JournalEntry<'a> {
    pub lsn: Lsn,
    pub point: ResumePoint,
    pub position: &'a SourcePosition,
    pub pages: &'a HashMap<u32, Page>,
}

pub struct Shadow {
    dir: PathBuf,
    db_path: PathBuf,
    db: File,
    journal: File,
    /// Where `shadow.db`'s pages stand (ahead of `shadow.state` between checkpoints).
    pub state: Option<ShadowState>,
    /// Bytes appended to the journal since the last checkpoint.
    journal_bytes: u64,
    /// When the first batch after the last checkpoint was applied.
    unsynced_since: Option<std::time::Instant>,
}

/// A checkpoint at least this often while batches arrive (redo work after a crash).
pub const CHECKPOINT_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);
/// A checkpoint once the journal holds this much.
pub const CHECKPOINT_JOURNAL_BYTES: u64 = 16 << 20;

const STATE_MAGIC: &[u8; 8] = b"FRYSHST1";

impl Shadow {
    /// Opens the shadow in `dir`, recovering an interrupted batch against `sink`.
    pub fn open(dir: &Path, sink: &dyn RecordSink) -> Result<Shadow, ShadowError> {
        let io = |p: &Path| {
            let p = p.to_path_buf();
            move |source| ShadowError::Io {
                path: p.clone(),
                source,
            }
        };
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let db_path = dir.join("shadow.db");
        let db = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&db_path)
            .map_err(io(&db_path))?;
        let jpath = dir.join("shadow.journal");
        let journal = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&jpath)
            .map_err(io(&jpath))?;
        let state = read_state(&dir.join("shadow.state"))?;
        let mut s = Shadow {
            dir: dir.to_path_buf(),
            db_path,
            db,
            journal,
            state,
            journal_bytes: 0,
            unsynced_since: None,
        };
        s.recover(sink)?;
        Ok(s)
    }

    fn io(&self, p: &Path) -> impl Fn(std::io::Error) -> ShadowError {
        let p = p.to_path_buf();
        move |source| ShadowError::Io {
            path: p.clone(),
            source,
        }
    }

    pub fn pages(&self) -> Option<FilePages<'_>> {
        let st = self.state?;
        Some(FilePages {
            file: &self.db,
            path: &self.db_path,
            page_size: st.page_size as usize,
            count: st.point.db_pages,
        })
    }

    /// Pages of the shadow file with an explicit geometry (while a snapshot is being built).
    pub fn raw_pages(&self, page_size: usize, count: u32) -> FilePages<'_> {
        FilePages {
            file: &self.db,
            path: &self.db_path,
            page_size,
            count,
        }
    }

    fn recover(&mut self, sink: &dyn RecordSink) -> Result<(), ShadowError> {
        let jpath = self.dir.join("shadow.journal");
        let mut buf = Vec::new();
        {
            use std::io::{Read, Seek, SeekFrom};
            let mut j = &self.journal;
            j.seek(SeekFrom::Start(0)).map_err(self.io(&jpath))?;
            j.read_to_end(&mut buf).map_err(self.io(&jpath))?;
        }
        if buf.is_empty() {
            return Ok(());
        }
        let Some(state) = self.state else {
            // A snapshot never completed: the journal belongs to nothing.
            self.journal.set_len(0).map_err(self.io(&jpath))?;
            return Ok(());
        };
        let durable = sink.durable_lsn();
        let mut pos = 0usize;
        let mut applied: HashMap<u32, Vec<u8>> = HashMap::new();
        // Every page's latest image in the journal so far: the base of the next delta.
        let mut images: HashMap<u32, Vec<u8>> = HashMap::new();
        let mut new_state = state;
        while pos + 8 <= buf.len() {
            let len =
                u32::from_le_bytes([buf[pos], buf[pos + 1], buf[pos + 2], buf[pos + 3]]) as usize;
            let crc = u32::from_le_bytes([buf[pos + 4], buf[pos + 5], buf[pos + 6], buf[pos + 7]]);
            let Some(body) = buf.get(pos + 8..pos + 8 + len) else {
                break;
            };
            if crc32c::crc32c(body) != crc {
                break;
            }
            pos += 8 + len;
            let Some(entry) = parse_entry(body, state.page_size as usize, &mut images) else {
                break;
            };
            if entry.lsn <= state.lsn {
                continue;
            }
            if entry.lsn > durable {
                break;
            }
            // The log must hold this very transaction at that LSN.
            let holds = matches!(sink.record_at(entry.lsn)?, Some(ferry_core::Record::Transaction(t)) if t.position == entry.position);
            if !holds {
                break;
            }
            for pg in entry.pages {
                if let Some(data) = images.get(&pg) {
                    applied.insert(pg, data.clone());
                }
            }
            new_state = ShadowState {
                point: entry.point,
                lsn: entry.lsn,
                page_size: state.page_size,
            };
        }
        let pages: HashMap<u32, Page> = applied
            .into_iter()
            .map(|(k, v)| (k, Arc::from(v)))
            .collect();
        self.apply(&pages, new_state)?;
        self.checkpoint()
    }

    /// Step 1: journal a batch durably.
    pub fn journal_batch(&mut self, entries: &[JournalEntry<'_>]) -> Result<(), ShadowError> {
        self.journal_bytes += self.append_journal(entries)?;
        Ok(())
    }

    fn append_journal(&self, entries: &[JournalEntry<'_>]) -> Result<u64, ShadowError> {
        let jpath = self.dir.join("shadow.journal");
        let mut out = Vec::new();
        let mut latest: HashMap<u32, &Page> = HashMap::new();
        for e in entries {
            let frame_at = out.len();
            out.extend_from_slice(&[0u8; 8]);
            let body_at = out.len();
            out.extend_from_slice(&e.lsn.0.to_le_bytes());
            e.point.encode(&mut out);
            let pos = postcard_position(e.position);
            out.extend_from_slice(&(pos.len() as u32).to_le_bytes());
            out.extend_from_slice(&pos);
            out.extend_from_slice(&(e.pages.len() as u32).to_le_bytes());
            for (pg, data) in e.pages {
                out.extend_from_slice(&pg.to_le_bytes());
                match latest.get(pg) {
                    Some(prev) if prev.len() == data.len() => {
                        out.push(PAGE_DELTA);
                        encode_delta(prev, data, &mut out);
                    }
                    _ => {
                        out.push(PAGE_WHOLE);
                        out.extend_from_slice(data);
                    }
                }
                latest.insert(*pg, data);
            }
            let len = (out.len() - body_at) as u32;
            let crc = crc32c::crc32c(&out[body_at..]);
            out[frame_at..frame_at + 4].copy_from_slice(&len.to_le_bytes());
            out[frame_at + 4..frame_at + 8].copy_from_slice(&crc.to_le_bytes());
        }
        let mut j = &self.journal;
        use std::io::{Seek, SeekFrom};
        j.seek(SeekFrom::End(0)).map_err(self.io(&jpath))?;
        j.write_all(&out).map_err(self.io(&jpath))?;
        self.journal.sync_data().map_err(self.io(&jpath))?;
        Ok(out.len() as u64)
    }

    /// Step 3: apply pages to the shadow and move its state; a checkpoint when one is due.
    pub fn apply(
        &mut self,
        pages: &HashMap<u32, Page>,
        state: ShadowState,
    ) -> Result<(), ShadowError> {
        let ps = state.page_size as u64;
        for (&pg, data) in pages {
            if pg == 0 || pg > state.point.db_pages {
                continue;
            }
            self.db
                .write_all_at(data, u64::from(pg - 1) * ps)
                .map_err(self.io(&self.db_path))?;
        }
        self.db
            .set_len(u64::from(state.point.db_pages) * ps)
            .map_err(self.io(&self.db_path))?;
        self.state = Some(state);
        let since = *self
            .unsynced_since
            .get_or_insert_with(std::time::Instant::now);
        if self.journal_bytes >= CHECKPOINT_JOURNAL_BYTES || since.elapsed() >= CHECKPOINT_INTERVAL
        {
            self.checkpoint()?;
        }
        Ok(())
    }

    /// Makes `shadow.db` durable, records its state in `shadow.state` and empties the
    /// journal. Nothing to do when no batch was applied since the last one.
    pub fn checkpoint(&mut self) -> Result<(), ShadowError> {
        let Some(state) = self.state else {
            return Ok(());
        };
        if self.unsynced_since.is_none() && self.journal_bytes == 0 {
            return Ok(());
        }
        self.db.sync_data().map_err(self.io(&self.db_path))?;
        self.write_state(state)?;
        self.empty_journal()
    }

    /// Truncates the journal: nothing since the last checkpoint remains to redo.
    fn empty_journal(&mut self) -> Result<(), ShadowError> {
        let jpath = self.dir.join("shadow.journal");
        self.journal.set_len(0).map_err(self.io(&jpath))?;
        self.journal_bytes = 0;
        self.unsynced_since = None;
        Ok(())
    }

    /// Copies the shadow's pages (exactly its state's page count) into `out` and returns the
    /// bytes written. The copy is a database file in rollback (DELETE) journal mode: when the
    /// header's file-format versions (bytes 18 and 19) say WAL (2), they are written as 1, so
    /// the copy opens without a `-wal` file. The caller owns `out`'s durability and naming.
    pub fn copy_to(&self, out: &File, out_path: &Path) -> Result<u64, ShadowError> {
        let st = self.state.ok_or_else(|| ShadowError::Corrupt {
            path: self.dir.join("shadow.state"),
            problem: "no state to copy".into(),
        })?;
        let total = u64::from(st.point.db_pages) * u64::from(st.page_size);
        let chunk = (1u64 << 20).max(u64::from(st.page_size)) as usize;
        let mut buf = vec![0u8; chunk];
        let mut off = 0u64;
        while off < total {
            let n = ((total - off) as usize).min(chunk);
            let b = &mut buf[..n];
            read_full_at(&self.db, b, off).map_err(self.io(&self.db_path))?;
            if off == 0 && n >= 20 {
                for v in &mut b[18..20] {
                    if *v == 2 {
                        *v = 1;
                    }
                }
            }
            out.write_all_at(b, off).map_err(self.io(out_path))?;
            off += n as u64;
        }
        Ok(total)
    }

    /// Writes a whole page into the shadow file (snapshot copy), without moving the state.
    pub fn write_page(
        &mut self,
        pg: u32,
        page_size: usize,
        data: &[u8],
    ) -> Result<(), ShadowError> {
        self.db
            .write_all_at(data, u64::from(pg - 1) * page_size as u64)
            .map_err(self.io(&self.db_path))
    }

    /// Forgets the state (a new snapshot starts).
    pub fn reset(&mut self) -> Result<(), ShadowError> {
        let spath = self.dir.join("shadow.state");
        match std::fs::remove_file(&spath) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(ShadowError::Io {
                    path: spath,
                    source: e,
                });
            }
        }
        self.state = None;
        self.db.set_len(0).map_err(self.io(&self.db_path))?;
        self.empty_journal()
    }

    pub fn finish_snapshot(&mut self, state: ShadowState) -> Result<(), ShadowError> {
        self.db
            .set_len(u64::from(state.point.db_pages) * u64::from(state.page_size))
            .map_err(self.io(&self.db_path))?;
        self.db.sync_all().map_err(self.io(&self.db_path))?;
        self.write_state(state)
    }

    fn write_state(&mut self, state: ShadowState) -> Result<(), ShadowError> {
        let path = self.dir.join("shadow.state");
        let tmp = self.dir.join("shadow.state.tmp");
        let mut b = Vec::new();
        b.extend_from_slice(STATE_MAGIC);
        state.point.encode(&mut b);
        b.extend_from_slice(&state.lsn.0.to_le_bytes());
        b.extend_from_slice(&state.page_size.to_le_bytes());
        let crc = crc32c::crc32c(&b);
        b.extend_from_slice(&crc.to_le_bytes());
        {
            let mut f = File::create(&tmp).map_err(self.io(&tmp))?;
            f.write_all(&b).map_err(self.io(&tmp))?;
            f.sync_all().map_err(self.io(&tmp))?;
        }
        std::fs::rename(&tmp, &path).map_err(self.io(&path))?;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(self.io(&self.dir))?;
        self.state = Some(state);
        Ok(())
    }

    /// Reads one page of the shadow (for tests and verification).
    pub fn read_page(&self, pg: u32, buf: &mut [u8]) -> Result<(), ShadowError> {
        let ps = buf.len() as u64;
        read_full_at(&self.db, buf, u64::from(pg - 1) * ps).map_err(self.io(&self.db_path))
    }
}

fn postcard_position(p: &SourcePosition) -> Vec<u8> {
    // The record encoding of a heartbeat carries exactly the position; reuse it so the
    // journal needs no second serialisation format.
    ferry_core::Record::Heartbeat(ferry_core::Heartbeat {
        at: 0,
        position: p.clone(),
    })
    .encode()
}

struct ParsedEntry {
    lsn: Lsn,
    point: ResumePoint,
    position: SourcePosition,
    /// The pages the entry wrote; their images are left in the caller's map.
    pages: Vec<u32>,
}

const PAGE_WHOLE: u8 = 0;
const PAGE_DELTA: u8 = 1;

/// Ranges of `cur` that differ from `prev` (equal lengths): a count, then per range its
/// start, length and bytes. Ranges closer than a range header are merged.
fn encode_delta(prev: &[u8], cur: &[u8], out: &mut Vec<u8>) {
    const GAP: usize = 8;
    let count_at = out.len();
    out.extend_from_slice(&0u32.to_le_bytes());
    let mut count = 0u32;
    let n = cur.len();
    let mut i = 0;
    while i < n {
        i = equal_prefix(prev, cur, i);
        while i < n && prev[i] == cur[i] {
            i += 1;
        }
        if i >= n {
            break;
        }
        let start = i;
        let mut end = i;
        let mut equal_run = 0;
        while i < n && equal_run < GAP {
            if prev[i] == cur[i] {
                equal_run += 1;
            } else {
                equal_run = 0;
                end = i + 1;
            }
            i += 1;
        }
        out.extend_from_slice(&(start as u32).to_le_bytes());
        out.extend_from_slice(&((end - start) as u32).to_le_bytes());
        out.extend_from_slice(&cur[start..end]);
        count += 1;
        i = end;
    }
    out[count_at..count_at + 4].copy_from_slice(&count.to_le_bytes());
}

/// The first position at or after `from` where `a` and `b` may differ, skipping equal bytes
/// 32 at a time (a page rewritten by a small transaction is mostly equal to its last
/// version); the caller compares the rest byte by byte.
fn equal_prefix(a: &[u8], b: &[u8], from: usize) -> usize {
    let (a, b) = (&a[from.min(a.len())..], &b[from.min(b.len())..]);
    let mut skipped = 0;
    for (x, y) in a.chunks_exact(32).zip(b.chunks_exact(32)) {
        let word = |s: &[u8], k: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&s[k..k + 8]);
            u64::from_ne_bytes(w)
        };
        let diff = (word(x, 0) ^ word(y, 0))
            | (word(x, 8) ^ word(y, 8))
            | (word(x, 16) ^ word(y, 16))
            | (word(x, 24) ^ word(y, 24));
        if diff != 0 {
            break;
        }
        skipped += 32;
    }
    from + skipped
}

/// Applies ranges written by [`encode_delta`] at `b[pos..]` to `img`; returns the new
/// position, `None` if the ranges do not fit.
fn apply_delta(b: &[u8], mut pos: usize, img: &mut [u8]) -> Option<usize> {
    let u32_at =
        |p: usize| -> Option<u32> { Some(u32::from_le_bytes(b.get(p..p + 4)?.try_into().ok()?)) };
    let count = u32_at(pos)?;
    pos += 4;
    for _ in 0..count {
        let start = u32_at(pos)? as usize;
        let len = u32_at(pos + 4)? as usize;
        pos += 8;
        let src = b.get(pos..pos.checked_add(len)?)?;
        img.get_mut(start..start.checked_add(len)?)?
            .copy_from_slice(src);
        pos += len;
    }
    Some(pos)
}

fn parse_entry(
    b: &[u8],
    page_size: usize,
    images: &mut HashMap<u32, Vec<u8>>,
) -> Option<ParsedEntry> {
    let lsn = Lsn(u64::from_le_bytes(b.get(0..8)?.try_into().ok()?));
    let point = ResumePoint::decode(b.get(8..)?)?;
    let mut pos = 8 + ResumePoint::LEN;
    let plen = u32::from_le_bytes(b.get(pos..pos + 4)?.try_into().ok()?) as usize;
    pos += 4;
    let position = match ferry_core::Record::decode(b.get(pos..pos + plen)?).ok()? {
        ferry_core::Record::Heartbeat(h) => h.position,
        _ => return None,
    };
    pos += plen;
    let n = u32::from_le_bytes(b.get(pos..pos + 4)?.try_into().ok()?) as usize;
    pos += 4;
    let mut pages = Vec::with_capacity(n.min(1 << 16));
    for _ in 0..n {
        let pg = u32::from_le_bytes(b.get(pos..pos + 4)?.try_into().ok()?);
        let kind = *b.get(pos + 4)?;
        pos += 5;
        match kind {
            PAGE_WHOLE => {
                images.insert(pg, b.get(pos..pos + page_size)?.to_vec());
                pos += page_size;
            }
            PAGE_DELTA => {
                let img = images.get_mut(&pg)?;
                pos = apply_delta(b, pos, img)?;
            }
            _ => return None,
        }
        pages.push(pg);
    }
    Some(ParsedEntry {
        lsn,
        point,
        position,
        pages,
    })
}

fn read_state(path: &Path) -> Result<Option<ShadowState>, ShadowError> {
    let b = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(ShadowError::Io {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    let corrupt = |problem: &str| ShadowError::Corrupt {
        path: path.to_path_buf(),
        problem: problem.to_string(),
    };
    let body_len = 8 + ResumePoint::LEN + 8 + 4;
    if b.len() != body_len + 4 || &b[..8] != STATE_MAGIC {
        return Err(corrupt("wrong size or magic"));
    }
    let crc = u32::from_le_bytes([
        b[body_len],
        b[body_len + 1],
        b[body_len + 2],
        b[body_len + 3],
    ]);
    if crc32c::crc32c(&b[..body_len]) != crc {
        return Err(corrupt("checksum mismatch"));
    }
    let point = ResumePoint::decode(&b[8..]).ok_or_else(|| corrupt("short"))?;
    let o = 8 + ResumePoint::LEN;
    let lsn = Lsn(u64::from_le_bytes(
        b[o..o + 8].try_into().map_err(|_| corrupt("short"))?,
    ));
    let page_size = u32::from_le_bytes(b[o + 8..o + 12].try_into().map_err(|_| corrupt("short"))?);
    Ok(Some(ShadowState {
        point,
        lsn,
        page_size,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn delta_rebuilds_the_page(
            prev in proptest::collection::vec(any::<u8>(), 512..600),
            edits in proptest::collection::vec((0usize..512, any::<u8>(), 1usize..40), 0..20),
        ) {
            let mut cur = prev[..512].to_vec();
            let prev = &prev[..512];
            for (at, v, len) in edits {
                for b in cur.iter_mut().skip(at).take(len) {
                    *b = v;
                }
            }
            let mut enc = vec![9u8; 3];
            encode_delta(prev, &cur, &mut enc);
            let mut img = prev.to_vec();
            let end = apply_delta(&enc, 3, &mut img);
            prop_assert_eq!(end, Some(enc.len()));
            prop_assert_eq!(img, cur);
        }

        #[test]
        fn truncated_deltas_are_refused_not_panics(
            bytes in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let mut img = vec![0u8; 32];
            let _ = apply_delta(&bytes, 0, &mut img);
        }
    }
}
