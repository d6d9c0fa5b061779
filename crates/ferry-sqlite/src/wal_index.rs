//! A read-only view of SQLite's wal-index (the `-shm` file): its header, and who holds its
//! locks. ferry never writes to it and never takes one of its locks.
//!
//! Layout (`src/wal.c`, all words in the machine's byte order):
//! - bytes 0..48 and 48..96: two copies of the wal-index header — `iChange` at 8 (a counter
//!   every commit increments by one; a WAL restart does not touch it, only recovery resets
//!   it to 0), `isInit` at 12, `mxFrame` at 16 (the last commit frame), `nPage` at 20,
//!   `aSalt` at 32 (the WAL header's salt bytes, big-endian) and a checksum of the first 40
//!   bytes at 40. A writer updates the second copy, then the first; a reader that sees two
//!   equal copies with a valid checksum has a header that was whole at one instant.
//! - bytes 96..120: the checkpoint info (`nBackfill`, `aReadMark[5]`).
//! - bytes 120..128: the lock bytes (POSIX advisory locks, never written): 120 the writer
//!   lock, 121 the checkpointer lock, 122 recovery, 123 + i read slot i.
//!
//! Why this exists: a RESTART/TRUNCATE (or FULL) checkpoint takes the checkpointer lock and
//! then the writer lock, and then waits (in the application's busy handler) for read slots
//! that ferry's hand-over-hand readers keep occupied; seeing both locks held by one process
//! is how capture notices it and gets out of the way (see `capture.rs`). `iChange` is how it
//! proves afterwards that no commit went by unseen: the number of commits between two
//! headers is exact, whatever the WAL file looks like now (a TRUNCATE cuts it to 0 bytes).
//!
//! Descriptors: closing *any* descriptor of a file drops every POSIX lock this process holds
//! on it — the locks of the application's connections if it runs in this process, and of
//! ferry's own readers. So the `-shm` is opened once per process and file (inode) and kept
//! open for the life of the process (one descriptor per database captured). Locks are probed
//! with `F_OFD_GETLK` on Linux, which takes no lock and, unlike `F_GETLK`, also reports locks
//! held by other threads of this process (POSIX locks of one process never conflict with
//! each other, but they do conflict with an open-file-description probe).

use std::collections::HashMap;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

const HEADER_COPY: usize = 48;
const WRITE_LOCK_BYTE: i64 = 120;
const CKPT_LOCK_BYTE: i64 = 121;

/// The wal-index header fields capture uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IndexHeader {
    /// Commits so far (wrapping; reset only by recovery).
    pub change: u32,
    /// The last commit frame of the current WAL generation (0: none yet).
    pub mx_frame: u32,
    /// The current generation's salts (what its WAL header holds or will hold).
    pub salts: (u32, u32),
}

/// A process's hold on one lock byte of the wal-index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LockHolder {
    /// The holder's process id (-1 for an open-file-description lock, whose owner is unknown).
    pub pid: i32,
}

pub struct WalIndex {
    file: Arc<File>,
    path: PathBuf,
}

/// Descriptors opened by this process, by `-shm` path, never closed while the file is
/// still the one at that path (see the module comment).
fn open_files() -> &'static Mutex<HashMap<PathBuf, Arc<File>>> {
    static FILES: OnceLock<Mutex<HashMap<PathBuf, Arc<File>>>> = OnceLock::new();
    FILES.get_or_init(|| Mutex::new(HashMap::new()))
}

impl WalIndex {
    /// The wal-index of the WAL-mode database at `db_path`; `None` when it has no `-shm`
    /// file (no connection has used the WAL yet, or the application keeps it in heap memory).
    pub fn open(db_path: &Path) -> std::io::Result<Option<WalIndex>> {
        let mut p = db_path.as_os_str().to_owned();
        p.push("-shm");
        let path = PathBuf::from(p);
        let meta = match std::fs::metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let mut files = open_files()
            .lock()
            .map_err(|_| std::io::Error::other("wal-index descriptor table poisoned"))?;
        if let Some(f) = files.get(&path) {
            let held = f.metadata()?;
            if (held.dev(), held.ino()) == (meta.dev(), meta.ino()) {
                return Ok(Some(WalIndex {
                    file: f.clone(),
                    path,
                }));
            }
            // The file at that path is another one: SQLite deletes the `-shm` only when no
            // connection anywhere uses it, so no lock of this process is on the old inode
            // and its descriptor may close (when the last user lets go of it).
            files.remove(&path);
        }
        let f = match File::open(&path) {
            Ok(f) => Arc::new(f),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        files.insert(path.clone(), f.clone());
        Ok(Some(WalIndex { file: f, path }))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The header as one writer left it; `None` when the wal-index is not initialised (yet)
    /// or kept changing over many attempts.
    pub fn header(&self) -> std::io::Result<Option<IndexHeader>> {
        let mut b = [0u8; 2 * HEADER_COPY];
        for _ in 0..1000 {
            let n = self.file.read_at(&mut b, 0)?;
            if n < b.len() {
                return Ok(None);
            }
            if let Some(h) = parse_header(&b) {
                return Ok(Some(h));
            }
            std::thread::yield_now();
        }
        Ok(None)
    }

    /// Who holds `byte` (any lock), if anyone; takes no lock.
    fn holder(&self, byte: i64) -> std::io::Result<Option<LockHolder>> {
        // SAFETY: an all-zero `flock` is a valid value of this plain C struct.
        let mut fl: libc::flock = unsafe { std::mem::zeroed() };
        fl.l_type = libc::F_WRLCK as libc::c_short;
        fl.l_whence = libc::SEEK_SET as libc::c_short;
        fl.l_start = byte as libc::off_t;
        fl.l_len = 1;
        #[cfg(target_os = "linux")]
        let cmd = libc::F_OFD_GETLK;
        #[cfg(not(target_os = "linux"))]
        let cmd = libc::F_GETLK;
        // SAFETY: F_(OFD_)GETLK only reads and fills the `flock` we pass; the descriptor is
        // ours and open.
        let rc = unsafe { libc::fcntl(self.file.as_raw_fd(), cmd, &mut fl) };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        if fl.l_type == libc::F_UNLCK as libc::c_short {
            return Ok(None);
        }
        Ok(Some(LockHolder { pid: fl.l_pid }))
    }

    /// Whether someone holds the checkpointer lock (a checkpoint of any mode is running).
    pub fn checkpoint_running(&self) -> std::io::Result<bool> {
        Ok(self.holder(CKPT_LOCK_BYTE)?.is_some())
    }

    /// Whether a blocking checkpoint (FULL, RESTART or TRUNCATE) is under way: one process
    /// holds both the checkpointer and the writer lock. Such a checkpoint waits (in its busy
    /// handler) for readers, and no commit can happen until it ends. A PASSIVE checkpoint
    /// takes only the checkpointer lock and never waits; a writer in its transaction takes
    /// only the writer lock.
    pub fn blocking_checkpoint(&self) -> std::io::Result<bool> {
        let Some(ckpt) = self.holder(CKPT_LOCK_BYTE)? else {
            return Ok(false);
        };
        let Some(write) = self.holder(WRITE_LOCK_BYTE)? else {
            return Ok(false);
        };
        Ok(ckpt.pid == write.pid && ckpt.pid > 0)
    }
}

fn ne(b: &[u8], off: usize) -> u32 {
    u32::from_ne_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}

fn be(b: &[u8], off: usize) -> u32 {
    u32::from_be_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}

/// Both copies equal, initialised, and their checksum (SQLite's WAL checksum over the first
/// 40 bytes, native byte order) right.
fn parse_header(b: &[u8; 2 * HEADER_COPY]) -> Option<IndexHeader> {
    let (first, second) = b.split_at(HEADER_COPY);
    if first != second || first[12] != 1 {
        return None;
    }
    let (mut s1, mut s2) = (0u32, 0u32);
    for pair in first[..40].chunks_exact(8) {
        s1 = s1.wrapping_add(ne(pair, 0)).wrapping_add(s2);
        s2 = s2.wrapping_add(ne(pair, 4)).wrapping_add(s1);
    }
    if (s1, s2) != (ne(first, 40), ne(first, 44)) {
        return None;
    }
    Some(IndexHeader {
        change: ne(first, 8),
        mx_frame: ne(first, 16),
        salts: (be(first, 32), be(first, 36)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_of_a_real_wal_index_counts_commits() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("a.db");
        let c = rusqlite::Connection::open(&db).unwrap();
        c.execute_batch("PRAGMA journal_mode=WAL; CREATE TABLE t(x);")
            .unwrap();
        let idx = WalIndex::open(&db).unwrap().unwrap();
        let h0 = idx.header().unwrap().unwrap();
        for i in 0..5 {
            c.execute("INSERT INTO t VALUES (?1)", [i]).unwrap();
        }
        let h1 = idx.header().unwrap().unwrap();
        assert_eq!(h1.change.wrapping_sub(h0.change), 5);
        assert_eq!(h1.mx_frame, h0.mx_frame + 5);
        // A TRUNCATE restarts the generation (salt-1 + 1, no frame) but counts no commit.
        c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
            r.get::<_, i64>(0)
        })
        .unwrap();
        let h2 = idx.header().unwrap().unwrap();
        assert_eq!(h2.change, h1.change);
        assert_eq!(h2.mx_frame, 0);
        assert_eq!(h2.salts.0, h1.salts.0.wrapping_add(1));
        // The salts are the WAL header's once the next commit writes it.
        c.execute("INSERT INTO t VALUES (9)", []).unwrap();
        let h3 = idx.header().unwrap().unwrap();
        let wal = File::open(dir.path().join("a.db-wal")).unwrap();
        let wh = crate::wal_tail::read_header(&wal).unwrap().unwrap();
        assert_eq!(h3.salts, (wh.salt1, wh.salt2));
        assert_eq!(h3.salts, h2.salts);
        assert_eq!(h3.mx_frame, 1);
        // The same descriptor is handed out again.
        let again = WalIndex::open(&db).unwrap().unwrap();
        assert!(Arc::ptr_eq(&again.file, &idx.file));
    }

    #[test]
    fn lock_probe_sees_a_checkpointer_in_this_process() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("a.db");
        let c = rusqlite::Connection::open(&db).unwrap();
        c.execute_batch("PRAGMA journal_mode=WAL; CREATE TABLE t(x); INSERT INTO t VALUES (1);")
            .unwrap();
        let idx = WalIndex::open(&db).unwrap().unwrap();
        assert!(!idx.checkpoint_running().unwrap());
        assert!(!idx.blocking_checkpoint().unwrap());
        // A writer in its transaction holds the writer lock only.
        c.execute_batch("BEGIN IMMEDIATE; INSERT INTO t VALUES (2);")
            .unwrap();
        assert!(!idx.blocking_checkpoint().unwrap());
        assert!(idx.holder(WRITE_LOCK_BYTE).unwrap().is_some());
        c.execute_batch("COMMIT").unwrap();
        // A reader on another connection makes a TRUNCATE wait in its busy handler, holding
        // both locks meanwhile; the probe sees it from this very process.
        let reader = rusqlite::Connection::open(&db).unwrap();
        reader.execute_batch("BEGIN").unwrap();
        reader
            .query_row("SELECT count(*) FROM t", [], |r| r.get::<_, i64>(0))
            .unwrap();
        c.execute("INSERT INTO t VALUES (3)", []).unwrap();
        let db2 = db.clone();
        let ckpt = std::thread::spawn(move || {
            let w = rusqlite::Connection::open(&db2).unwrap();
            w.busy_timeout(std::time::Duration::from_secs(10)).unwrap();
            w.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
                r.get::<_, i64>(0)
            })
            .unwrap()
        });
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !idx.blocking_checkpoint().unwrap() {
            assert!(
                std::time::Instant::now() < deadline,
                "checkpointer never seen"
            );
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        reader.execute_batch("COMMIT").unwrap();
        assert_eq!(
            ckpt.join().unwrap(),
            0,
            "the TRUNCATE succeeds once the reader ends"
        );
        assert!(!idx.checkpoint_running().unwrap());
    }
}
