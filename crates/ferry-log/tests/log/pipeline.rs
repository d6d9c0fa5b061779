//! The write role and the sync role overlap: a batch is written while the previous batch's
//! fdatasync runs. A storage wrapper holds segment fdatasyncs at a gate so the test can crash
//! the simulated disk at exactly that point and check that only synced records were
//! acknowledged and that recovery keeps them.

use crate::common::read_all;
use ferry_log::sim::SimFs;
use ferry_log::{LockHold, Log, LogFile, LogOptions, LogStorage, Lsn};
use std::io;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, Default)]
struct Gate {
    state: Mutex<GateState>,
    changed: Condvar,
}

#[derive(Debug, Default)]
struct GateState {
    /// Segment fdatasyncs allowed through; `None`: all.
    permits: Option<u32>,
    /// Segment fdatasyncs waiting at the gate.
    waiting: u32,
    /// Segment writes made so far.
    writes: u32,
}

impl Gate {
    fn wait_until(&self, what: &str, cond: impl Fn(&GateState) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut st = self.state.lock().unwrap();
        while !cond(&st) {
            let now = Instant::now();
            assert!(now < deadline, "timed out waiting for {what}: {st:?}");
            st = self.changed.wait_timeout(st, deadline - now).unwrap().0;
        }
    }

    fn set_permits(&self, permits: Option<u32>) {
        self.state.lock().unwrap().permits = permits;
        self.changed.notify_all();
    }
}

#[derive(Debug)]
struct GatedStorage {
    fs: SimFs,
    gate: Arc<Gate>,
}

struct GatedFile {
    inner: Box<dyn LogFile>,
    gate: Option<Arc<Gate>>,
}

impl LogFile for GatedFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.inner.read_at(buf, offset)
    }
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.inner.write_all_at(buf, offset)?;
        if let Some(gate) = &self.gate {
            gate.state.lock().unwrap().writes += 1;
            gate.changed.notify_all();
        }
        Ok(())
    }
    fn sync_data(&self) -> io::Result<()> {
        if let Some(gate) = &self.gate {
            let mut st = gate.state.lock().unwrap();
            st.waiting += 1;
            gate.changed.notify_all();
            while st.permits == Some(0) {
                st = gate.changed.wait(st).unwrap();
            }
            if let Some(p) = &mut st.permits {
                *p -= 1;
            }
            st.waiting -= 1;
            gate.changed.notify_all();
        }
        self.inner.sync_data()
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.inner.set_len(len)
    }
    fn size(&self) -> io::Result<u64> {
        self.inner.size()
    }
}

impl GatedStorage {
    fn wrap(&self, path: &Path, f: io::Result<Box<dyn LogFile>>) -> io::Result<Box<dyn LogFile>> {
        // A segment is created as `.<name>.seg.tmp` and renamed: the handle keeps the gate.
        let is_segment = path.to_string_lossy().contains(".seg");
        Ok(Box::new(GatedFile {
            inner: f?,
            gate: is_segment.then(|| self.gate.clone()),
        }))
    }
}

impl LogStorage for GatedStorage {
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        self.fs.create_dir_all(path)
    }
    fn list_dir(&self, path: &Path) -> io::Result<Vec<String>> {
        self.fs.list_dir(path)
    }
    fn open_read(&self, path: &Path) -> io::Result<Box<dyn LogFile>> {
        self.wrap(path, self.fs.open_read(path))
    }
    fn open_write(&self, path: &Path) -> io::Result<Box<dyn LogFile>> {
        self.wrap(path, self.fs.open_write(path))
    }
    fn create(&self, path: &Path) -> io::Result<Box<dyn LogFile>> {
        self.wrap(path, self.fs.create(path))
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.fs.rename(from, to)
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        self.fs.remove_file(path)
    }
    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        self.fs.sync_dir(path)
    }
    fn try_lock(&self, path: &Path) -> io::Result<Option<Box<dyn LockHold>>> {
        self.fs.try_lock(path)
    }
}

#[test]
fn a_batch_written_during_a_sync_is_acknowledged_only_by_its_own_sync() {
    for seed in 0..8u64 {
        let fs = SimFs::new(seed);
        let gate = Arc::new(Gate::default());
        let storage = Arc::new(GatedStorage {
            fs: fs.clone(),
            gate: gate.clone(),
        });
        let dir = Path::new("/log");
        let log = Arc::new(Log::open_with(storage, dir, "t", LogOptions::default()).unwrap());

        // A's sync is held at the gate.
        gate.set_permits(Some(0));
        let a = {
            let log = log.clone();
            std::thread::spawn(move || log.append(b"first"))
        };
        gate.wait_until("A's sync", |st| st.waiting == 1);
        let writes_before_b = gate.state.lock().unwrap().writes;

        // B is written while A's sync is still running.
        let b = {
            let log = log.clone();
            std::thread::spawn(move || log.append_batch(&[b"second".to_vec(), b"third".to_vec()]))
        };
        gate.wait_until("B's write", |st| st.writes > writes_before_b);
        assert_eq!(log.durable_lsn(), Lsn::ZERO, "nothing is synced yet");

        // Let A's sync through; B's own sync then waits at the gate.
        gate.set_permits(Some(1));
        assert_eq!(a.join().unwrap().unwrap(), Lsn(1));
        gate.wait_until("B's sync", |st| st.waiting == 1 && st.permits == Some(0));
        assert_eq!(
            log.durable_lsn(),
            Lsn(1),
            "A's sync started before B was written, so it must not acknowledge B"
        );

        // Power cut before B's sync: tear B's write at a random point.
        fs.crash(true);
        gate.set_permits(None);
        assert!(b.join().unwrap().is_err(), "B was never synced");
        drop(log);

        let log = Log::open_with(Arc::new(fs.clone()), dir, "t", LogOptions::default()).unwrap();
        let records = read_all(&log);
        assert_eq!(records[0], (Lsn(1), b"first".to_vec()), "seed {seed}");
        let b_records = [(Lsn(2), b"second".to_vec()), (Lsn(3), b"third".to_vec())];
        assert_eq!(
            records[1..],
            b_records[..records.len() - 1],
            "seed {seed}: only a whole prefix of B may survive"
        );
        assert_eq!(log.durable_lsn(), Lsn(records.len() as u64));
    }
}
