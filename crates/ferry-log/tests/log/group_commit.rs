//! Group commit on the real file system: concurrent appenders share fdatasyncs.

use crate::common::{payload, read_all};
use ferry_log::{LockHold, Log, LogFile, LogOptions, LogStorage, Lsn, RealStorage};
use std::io;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// The real file system, counting fdatasyncs of files.
#[derive(Debug, Default)]
struct CountingStorage {
    syncs: Arc<AtomicU64>,
}

struct CountingFile {
    inner: Box<dyn LogFile>,
    syncs: Arc<AtomicU64>,
}

impl LogFile for CountingFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.inner.read_at(buf, offset)
    }
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.inner.write_all_at(buf, offset)
    }
    fn sync_data(&self) -> io::Result<()> {
        self.syncs.fetch_add(1, Ordering::SeqCst);
        self.inner.sync_data()
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.inner.set_len(len)
    }
    fn size(&self) -> io::Result<u64> {
        self.inner.size()
    }
}

impl CountingStorage {
    fn wrap(&self, f: io::Result<Box<dyn LogFile>>) -> io::Result<Box<dyn LogFile>> {
        Ok(Box::new(CountingFile {
            inner: f?,
            syncs: self.syncs.clone(),
        }))
    }
}

impl LogStorage for CountingStorage {
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        RealStorage.create_dir_all(path)
    }
    fn list_dir(&self, path: &Path) -> io::Result<Vec<String>> {
        RealStorage.list_dir(path)
    }
    fn open_read(&self, path: &Path) -> io::Result<Box<dyn LogFile>> {
        self.wrap(RealStorage.open_read(path))
    }
    fn open_write(&self, path: &Path) -> io::Result<Box<dyn LogFile>> {
        self.wrap(RealStorage.open_write(path))
    }
    fn create(&self, path: &Path) -> io::Result<Box<dyn LogFile>> {
        self.wrap(RealStorage.create(path))
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        RealStorage.rename(from, to)
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        RealStorage.remove_file(path)
    }
    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        RealStorage.sync_dir(path)
    }
    fn try_lock(&self, path: &Path) -> io::Result<Option<Box<dyn LockHold>>> {
        RealStorage.try_lock(path)
    }
}

#[test]
fn concurrent_appenders_share_fdatasyncs() {
    let dir = tempfile::tempdir().unwrap();
    let storage = Arc::new(CountingStorage::default());
    let syncs = storage.syncs.clone();
    let opts = LogOptions {
        segment_bytes: 256 * 1024,
        ..LogOptions::default()
    };
    let log = Arc::new(Log::open_with(storage, dir.path(), "t", opts).unwrap());
    let at_open = syncs.load(Ordering::SeqCst);
    let threads = 32u64;
    let per_thread = 100u64;
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let log = log.clone();
            std::thread::spawn(move || {
                (0..per_thread)
                    .map(|i| {
                        let p = payload(t, i, 100);
                        (log.append(&p).unwrap(), p)
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut acked: Vec<(Lsn, Vec<u8>)> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    acked.sort();
    let n = threads * per_thread;
    // Dense and unique.
    assert_eq!(
        acked.iter().map(|(l, _)| *l).collect::<Vec<_>>(),
        (1..=n).map(Lsn).collect::<Vec<_>>()
    );
    // Each LSN holds the payload its appender was told it holds.
    assert_eq!(read_all(&log), acked);
    let used = syncs.load(Ordering::SeqCst) - at_open;
    assert!(
        used * 4 <= n,
        "{used} fdatasyncs for {n} appends: group commit is not grouping"
    );
}
