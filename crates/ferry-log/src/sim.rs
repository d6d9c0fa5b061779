//! A simulated file system for crash tests (feature `sim`; re-exported by ferry-testkit).
//!
//! Model. Every file (inode) keeps its durable contents and the list of writes made since
//! its last `sync_data`; its visible contents are the durable contents with those writes
//! applied. Directory entries exist twice: the visible namespace, and the durable namespace
//! that `sync_dir(d)` copies the visible entries of `d` into. Directories themselves are
//! durable once created (the log creates them before anything that matters).
//!
//! [`SimFs::crash`] is a power cut: the visible namespace becomes the durable one, every
//! file loses its unsynced writes, locks are released, and every handle opened before the
//! crash fails from then on (the crashed process is gone). With `tear`, each file keeps a
//! random prefix of its unsynced writes, the last one cut at a random byte, which is how a
//! disk leaves a write that was in flight. [`SimFs::crash_after`] arms a crash that happens
//! inside the n-th later mutating operation (that operation then fails), so tests can crash
//! at every kind of point, including in the middle of a write.
//!
//! The counters ([`SimFs::sync_count`]) let tests check how many fdatasyncs group commit
//! made.

use crate::storage::{LockHold, LogFile, LogStorage};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

/// The simulated file system. Cheap to clone; clones share the same files.
#[derive(Clone, Debug)]
pub struct SimFs {
    inner: Arc<Mutex<SimState>>,
}

#[derive(Debug)]
enum PendingOp {
    Write { offset: u64, bytes: Vec<u8> },
    SetLen(u64),
}

#[derive(Debug, Default)]
struct Inode {
    data: Vec<u8>,
    synced: Vec<u8>,
    pending: Vec<PendingOp>,
}

#[derive(Debug)]
struct SimState {
    epoch: u64,
    dirs: BTreeSet<PathBuf>,
    visible: BTreeMap<PathBuf, u64>,
    durable: BTreeMap<PathBuf, u64>,
    inodes: HashMap<u64, Inode>,
    next_inode: u64,
    locks: BTreeSet<PathBuf>,
    rng: u64,
    syncs: u64,
    dir_syncs: u64,
    crash_in: Option<(u64, bool)>,
    fail_next_sync: bool,
    crashes: u64,
}

impl SimState {
    fn random(&mut self) -> u64 {
        // splitmix64
        self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.random() % n }
    }

    fn crash(&mut self, tear: bool) {
        self.epoch += 1;
        self.crashes += 1;
        self.locks.clear();
        self.crash_in = None;
        self.visible = self.durable.clone();
        let ids: Vec<u64> = self.inodes.keys().copied().collect();
        for id in ids {
            let Some(mut inode) = self.inodes.remove(&id) else {
                continue;
            };
            let mut data = inode.synced.clone();
            if tear && !inode.pending.is_empty() {
                let keep = self.below(inode.pending.len() as u64 + 1) as usize;
                for (k, op) in inode.pending.iter().enumerate() {
                    if k > keep {
                        break;
                    }
                    match op {
                        PendingOp::Write { offset, bytes } => {
                            let n = if k == keep {
                                self.below(bytes.len() as u64 + 1) as usize
                            } else {
                                bytes.len()
                            };
                            apply_write(&mut data, *offset, &bytes[..n]);
                        }
                        PendingOp::SetLen(len) if k < keep => data.resize(*len as usize, 0),
                        PendingOp::SetLen(_) => {}
                    }
                }
            }
            inode.synced = data.clone();
            inode.data = data;
            inode.pending.clear();
            self.inodes.insert(id, inode);
        }
    }

    /// Counts a mutating operation; `Err` if an armed crash happens now.
    fn tick(&mut self) -> io::Result<()> {
        if let Some((n, tear)) = self.crash_in {
            if n <= 1 {
                self.crash(tear);
                return Err(crashed());
            }
            self.crash_in = Some((n - 1, tear));
        }
        Ok(())
    }
}

fn apply_write(data: &mut Vec<u8>, offset: u64, bytes: &[u8]) {
    let end = offset as usize + bytes.len();
    if data.len() < end {
        data.resize(end, 0);
    }
    data[offset as usize..end].copy_from_slice(bytes);
}

fn crashed() -> io::Error {
    io::Error::other("simulated crash: this process's file handles are gone")
}

fn not_found(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!(
            "{}: no such file in the simulated file system",
            path.display()
        ),
    )
}

impl SimFs {
    /// An empty file system; `seed` drives the random choices of torn crashes.
    pub fn new(seed: u64) -> SimFs {
        let mut dirs = BTreeSet::new();
        dirs.insert(PathBuf::from("/"));
        SimFs {
            inner: Arc::new(Mutex::new(SimState {
                epoch: 0,
                dirs,
                visible: BTreeMap::new(),
                durable: BTreeMap::new(),
                inodes: HashMap::new(),
                next_inode: 1,
                locks: BTreeSet::new(),
                rng: seed,
                syncs: 0,
                dir_syncs: 0,
                crash_in: None,
                fail_next_sync: false,
                crashes: 0,
            })),
        }
    }

    fn state(&self) -> MutexGuard<'_, SimState> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A power cut now (see the module documentation).
    pub fn crash(&self, tear: bool) {
        self.state().crash(tear);
    }

    /// Arms a crash inside the `ops`-th mutating operation from now (write, sync, set_len,
    /// create, rename, remove, directory sync); `ops` of 0 or 1 means the next one.
    pub fn crash_after(&self, ops: u64, tear: bool) {
        self.state().crash_in = Some((ops.max(1), tear));
    }

    /// Whether an armed crash is still waiting.
    pub fn crash_pending(&self) -> bool {
        self.state().crash_in.is_some()
    }

    /// How many crashes happened so far.
    pub fn crash_count(&self) -> u64 {
        self.state().crashes
    }

    /// The next `sync_data` fails with an I/O error (and syncs nothing).
    pub fn fail_next_sync(&self) {
        self.state().fail_next_sync = true;
    }

    /// `sync_data` calls so far.
    pub fn sync_count(&self) -> u64 {
        self.state().syncs
    }

    /// `sync_dir` calls so far.
    pub fn dir_sync_count(&self) -> u64 {
        self.state().dir_syncs
    }

    /// The visible contents of a file.
    pub fn read_file(&self, path: &Path) -> Option<Vec<u8>> {
        let st = self.state();
        let id = st.visible.get(path)?;
        st.inodes.get(id).map(|i| i.data.clone())
    }

    /// Replaces a file's contents, durably (for tests that damage a log).
    pub fn write_file_durably(&self, path: &Path, contents: &[u8]) -> io::Result<()> {
        let mut st = self.state();
        let id = *st.visible.get(path).ok_or_else(|| not_found(path))?;
        let inode = st.inodes.get_mut(&id).ok_or_else(|| not_found(path))?;
        inode.data = contents.to_vec();
        inode.synced = contents.to_vec();
        inode.pending.clear();
        Ok(())
    }

    fn open(&self, path: &Path) -> io::Result<Box<dyn LogFile>> {
        let st = self.state();
        let inode = *st.visible.get(path).ok_or_else(|| not_found(path))?;
        Ok(Box::new(SimFile {
            fs: self.clone(),
            inode,
            epoch: st.epoch,
        }))
    }
}

struct SimFile {
    fs: SimFs,
    inode: u64,
    epoch: u64,
}

impl SimFile {
    fn with<T>(&self, f: impl FnOnce(&mut SimState, u64) -> io::Result<T>) -> io::Result<T> {
        let mut st = self.fs.state();
        if st.epoch != self.epoch {
            return Err(crashed());
        }
        f(&mut st, self.inode)
    }
}

fn inode(st: &mut SimState, id: u64) -> io::Result<&mut Inode> {
    st.inodes
        .get_mut(&id)
        .ok_or_else(|| io::Error::other("simulated inode vanished"))
}

impl LogFile for SimFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.with(|st, id| {
            let data = &inode(st, id)?.data;
            if offset >= data.len() as u64 {
                return Ok(0);
            }
            let n = buf.len().min(data.len() - offset as usize);
            buf[..n].copy_from_slice(&data[offset as usize..offset as usize + n]);
            Ok(n)
        })
    }

    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.with(|st, id| {
            if let Some((1, tear)) = st.crash_in {
                // Crash in the middle of this write: it may be partly on disk.
                let node = inode(st, id)?;
                apply_write(&mut node.data, offset, buf);
                node.pending.push(PendingOp::Write {
                    offset,
                    bytes: buf.to_vec(),
                });
                st.crash(tear);
                return Err(crashed());
            }
            st.tick()?;
            let node = inode(st, id)?;
            apply_write(&mut node.data, offset, buf);
            node.pending.push(PendingOp::Write {
                offset,
                bytes: buf.to_vec(),
            });
            Ok(())
        })
    }

    fn sync_data(&self) -> io::Result<()> {
        self.with(|st, id| {
            st.tick()?;
            if st.fail_next_sync {
                st.fail_next_sync = false;
                return Err(io::Error::other("simulated fdatasync failure (EIO)"));
            }
            st.syncs += 1;
            let node = inode(st, id)?;
            node.synced = node.data.clone();
            node.pending.clear();
            Ok(())
        })
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.with(|st, id| {
            st.tick()?;
            let node = inode(st, id)?;
            node.data.resize(len as usize, 0);
            node.pending.push(PendingOp::SetLen(len));
            Ok(())
        })
    }

    fn size(&self) -> io::Result<u64> {
        self.with(|st, id| Ok(inode(st, id)?.data.len() as u64))
    }
}

struct SimLock {
    fs: SimFs,
    path: PathBuf,
    epoch: u64,
}

impl LockHold for SimLock {}

impl Drop for SimLock {
    fn drop(&mut self) {
        let mut st = self.fs.state();
        if st.epoch == self.epoch {
            st.locks.remove(&self.path);
        }
    }
}

fn parent(path: &Path) -> io::Result<PathBuf> {
    path.parent()
        .map(Path::to_path_buf)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path without a parent"))
}

impl LogStorage for SimFs {
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        let mut st = self.state();
        for a in path.ancestors() {
            st.dirs.insert(a.to_path_buf());
        }
        Ok(())
    }

    fn list_dir(&self, path: &Path) -> io::Result<Vec<String>> {
        let st = self.state();
        if !st.dirs.contains(path) {
            return Err(not_found(path));
        }
        let files = st.visible.keys();
        let dirs = st.dirs.iter();
        Ok(files
            .chain(dirs)
            .filter(|p| p.parent() == Some(path))
            .filter_map(|p| p.file_name()?.to_str().map(str::to_string))
            .collect())
    }

    fn open_read(&self, path: &Path) -> io::Result<Box<dyn LogFile>> {
        self.open(path)
    }

    fn open_write(&self, path: &Path) -> io::Result<Box<dyn LogFile>> {
        self.open(path)
    }

    fn create(&self, path: &Path) -> io::Result<Box<dyn LogFile>> {
        {
            let mut st = self.state();
            if !st.dirs.contains(&parent(path)?) {
                return Err(not_found(path));
            }
            st.tick()?;
            match st.visible.get(path).copied() {
                Some(id) => {
                    let node = inode(&mut st, id)?;
                    node.data.clear();
                    node.pending.push(PendingOp::SetLen(0));
                }
                None => {
                    let id = st.next_inode;
                    st.next_inode += 1;
                    st.inodes.insert(id, Inode::default());
                    st.visible.insert(path.to_path_buf(), id);
                }
            }
        }
        self.open(path)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut st = self.state();
        st.tick()?;
        let id = st.visible.remove(from).ok_or_else(|| not_found(from))?;
        st.visible.insert(to.to_path_buf(), id);
        Ok(())
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let mut st = self.state();
        st.tick()?;
        st.visible.remove(path).ok_or_else(|| not_found(path))?;
        Ok(())
    }

    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        let mut st = self.state();
        st.tick()?;
        st.dir_syncs += 1;
        let in_dir = |p: &PathBuf| p.parent() == Some(path);
        st.durable.retain(|p, _| !in_dir(p));
        let entries: Vec<(PathBuf, u64)> = st
            .visible
            .iter()
            .filter(|(p, _)| in_dir(p))
            .map(|(p, id)| (p.clone(), *id))
            .collect();
        st.durable.extend(entries);
        Ok(())
    }

    fn try_lock(&self, path: &Path) -> io::Result<Option<Box<dyn LockHold>>> {
        let mut st = self.state();
        if !st.locks.insert(path.to_path_buf()) {
            return Ok(None);
        }
        Ok(Some(Box::new(SimLock {
            fs: self.clone(),
            path: path.to_path_buf(),
            epoch: st.epoch,
        })))
    }
}
