//! Bounded memory: a log slower than the writers. The outbox (inside sled) stops growing at
//! its bound, writers wait for room instead of failing, the mover's batches stay within
//! their entry and byte limits, and nothing is lost.

use crate::support::*;
use ferry_core::state_dir::StateDir;
use ferry_core::{Record, SourceId};
use ferry_sled::{CaptureError, CaptureOptions, CapturedDb, DurableSink};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The real log behind a slow disk (each append takes `delay` longer); records the largest
/// append it was given.
struct SlowLog {
    log: ferry_log::Log,
    delay: Duration,
    largest: Arc<Mutex<(usize, usize)>>,
}

impl DurableSink for SlowLog {
    fn append(&mut self, records: &[Vec<u8>]) -> Result<(), CaptureError> {
        {
            let mut l = self.largest.lock().expect("stats");
            let bytes = records.iter().map(Vec::len).sum();
            *l = (l.0.max(records.len()), l.1.max(bytes));
        }
        // Not a synchronisation: the slowness of the disk under test.
        std::thread::sleep(self.delay);
        DurableSink::append(&mut self.log, records)
    }

    fn last_record(&mut self) -> Result<Option<Record>, CaptureError> {
        self.log.last_record()
    }

    fn last_lsn(&mut self) -> Result<ferry_core::Lsn, CaptureError> {
        self.log.last_lsn()
    }
}

#[test]
fn a_slow_log_bounds_the_outbox_and_the_movers_batches_while_writers_wait() {
    const LIMIT: u64 = 100;
    const WRITERS: u64 = 4;
    const WRITES: u64 = 250;
    const BATCH_ENTRIES: usize = 16;
    const BATCH_BYTES: usize = 8 << 10;
    const MAX_VALUE: usize = 2000;
    let dir = tempfile::tempdir().expect("tempdir");
    let (path, state) = (dir.path().join("app"), dir.path().join("state"));
    let sled_db = sled::open(&path).expect("sled");
    let largest = Arc::new(Mutex::new((0, 0)));
    let abs = std::path::absolute(&path).expect("absolute");
    let log = ferry_log::Log::open(
        &StateDir::new(&state).log_dir(&SourceId("app".into())),
        &ferry_sled::log_identity(&abs),
        ferry_log::LogOptions::default(),
    )
    .expect("open log");
    let sink = SlowLog {
        log,
        delay: Duration::from_millis(4),
        largest: largest.clone(),
    };
    let opts = CaptureOptions {
        outbox_limit: LIMIT,
        mover_batch_entries: BATCH_ENTRIES,
        mover_batch_bytes: BATCH_BYTES,
        backpressure_timeout: Duration::from_secs(60),
        ..CaptureOptions::default()
    };
    let db = CapturedDb::with_sink(sled_db.clone(), sink, opts).expect("capture");
    wait_until("the snapshot", Duration::from_secs(30), || {
        db.snapshot_done()
    });

    let done = Arc::new(AtomicBool::new(false));
    // Inserts the writers have finished: the monitor's scan of the outbox is not a snapshot
    // (sled's `len` walks the tree while writers insert and the mover deletes), so entries
    // inserted during a scan can be counted besides the ones they come after.
    let inserted = Arc::new(AtomicU64::new(0));
    let most_pending = Arc::new(AtomicU64::new(0));
    let most_in_outbox = Arc::new(AtomicU64::new(0));
    let monitor = {
        let (db, done) = (db.clone(), done.clone());
        let (most_pending, most_in_outbox) = (most_pending.clone(), most_in_outbox.clone());
        let inserted = inserted.clone();
        let outbox = sled_db
            .open_tree(ferry_sled::outbox::OUTBOX_TREE)
            .expect("outbox");
        std::thread::spawn(move || {
            while !done.load(Ordering::SeqCst) {
                most_pending.fetch_max(db.pending(), Ordering::SeqCst);
                // The counter key is in the tree too. Entries inserted while the scan ran
                // (finished ones, and at most one in flight per writer) are not counted
                // against the bound.
                let before = inserted.load(Ordering::SeqCst);
                let scanned = outbox.len() as u64;
                let during = inserted.load(Ordering::SeqCst) - before + WRITERS;
                most_in_outbox.fetch_max(
                    scanned.saturating_sub(1).saturating_sub(during),
                    Ordering::SeqCst,
                );
                std::thread::yield_now();
            }
        })
    };
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let t = db.open_tree(format!("t{w}")).expect("tree");
            let inserted = inserted.clone();
            std::thread::spawn(move || {
                let mut rng = StdRng::seed_from_u64(w);
                for i in 0..WRITES {
                    let value: Vec<u8> = vec![w as u8; rng.random_range(0..MAX_VALUE)];
                    t.insert(i.to_be_bytes(), value)
                        .expect("a writer waits for room, it does not fail");
                    inserted.fetch_add(1, Ordering::SeqCst);
                }
            })
        })
        .collect();
    for w in writers {
        w.join().expect("writer");
    }
    db.sync(Duration::from_secs(60))
        .expect("the mover catches up");
    done.store(true, Ordering::SeqCst);
    monitor.join().expect("monitor");

    // Admission is checked before the transaction, so each concurrent writer may be let in
    // once past the bound: at most `outbox_limit + writers` entries wait for the mover. The
    // tree may also still hold the batch the mover has just logged and not yet deleted.
    let (pending, in_outbox) = (
        most_pending.load(Ordering::SeqCst),
        most_in_outbox.load(Ordering::SeqCst),
    );
    assert!(
        pending <= LIMIT + WRITERS && in_outbox <= LIMIT + WRITERS + BATCH_ENTRIES as u64,
        "the outbox grew past its bound: {pending} pending, {in_outbox} entries in the tree"
    );
    assert!(
        pending >= LIMIT - WRITERS,
        "the log was never slow enough to reach the bound ({pending} pending at most): the test did not test backpressure"
    );
    let (records, bytes) = *largest.lock().expect("stats");
    assert!(records <= BATCH_ENTRIES, "an append of {records} records");
    // One entry may take a batch past its byte limit; a record is an entry plus its framing.
    assert!(
        bytes <= BATCH_BYTES + MAX_VALUE + 512,
        "an append of {bytes} bytes"
    );
    db.close(Duration::from_secs(60)).expect("close");
    let records = read_log(&state, "app");
    let transactions = records
        .iter()
        .filter(|r| matches!(r, Record::Transaction(_)))
        .count() as u64;
    assert_eq!(transactions, WRITERS * WRITES, "one record per write");
    assert_same(&fold_contents(&fold(&records)), &sled_contents(&sled_db));
}
