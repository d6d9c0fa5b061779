//! The public API on the real file system (and the simulated one for fsync failures).

use crate::common::{payload, read_all, seg_files, small_segments};
use ferry_log::format::{self, SegmentHeader};
use ferry_log::sim::SimFs;
use ferry_log::{Log, LogError, LogOptions, Lsn, open_read_only};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[test]
fn append_read_reopen_and_identity() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), "sqlite:/srv/app.db", LogOptions::default()).unwrap();
    assert_eq!(log.durable_lsn(), Lsn::ZERO);
    assert_eq!(log.first_lsn(), Lsn::ZERO);
    assert_eq!(read_all(&log), vec![]);
    assert_eq!(log.append(b"one").unwrap(), Lsn(1));
    assert_eq!(log.append(b"").unwrap(), Lsn(2));
    let range = log
        .append_batch(&[b"three".to_vec(), b"four".to_vec()])
        .unwrap();
    assert_eq!(range, Lsn(3)..=Lsn(4));
    let empty = log.append_batch(&[]).unwrap();
    assert!(empty.is_empty());
    assert_eq!(log.durable_lsn(), Lsn(4));
    assert_eq!(log.first_lsn(), Lsn(1));
    let id = log.log_id();
    drop(log);

    let log = Log::open(dir.path(), "sqlite:/srv/app.db", LogOptions::default()).unwrap();
    assert_eq!(log.log_id(), id);
    assert_eq!(log.durable_lsn(), Lsn(4));
    assert!(log.recovered_torn_tail().is_none());
    let all = read_all(&log);
    let want: Vec<(Lsn, Vec<u8>)> = vec![
        (Lsn(1), b"one".to_vec()),
        (Lsn(2), b"".to_vec()),
        (Lsn(3), b"three".to_vec()),
        (Lsn(4), b"four".to_vec()),
    ];
    assert_eq!(all, want);
    assert_eq!(log.append(b"five").unwrap(), Lsn(5));
    drop(log);

    match Log::open(dir.path(), "sqlite:/srv/other.db", LogOptions::default()) {
        Err(LogError::WrongLog { reason, .. }) => assert!(reason.contains("other.db"), "{reason}"),
        other => panic!("expected WrongLog, got {other:?}"),
    }
    let ro = open_read_only(dir.path()).unwrap();
    assert_eq!(ro.log_id(), id);
    assert_eq!(ro.source_identity(), "sqlite:/srv/app.db");
    assert_eq!(ro.durable_lsn().unwrap(), Lsn(5));
}

#[test]
fn reader_from_any_lsn_across_segments() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), "t", small_segments(700)).unwrap();
    let n = 120u64;
    for lsn in 1..=n {
        let p = payload(1, lsn, (lsn as usize * 37) % 300);
        assert_eq!(log.append(&p).unwrap(), Lsn(lsn));
    }
    let segs = log.segments().unwrap();
    assert!(segs.len() > 10, "only {} segments", segs.len());
    // Segments tile the LSNs densely, all but the newest sealed.
    let mut next = 1;
    for (i, s) in segs.iter().enumerate() {
        assert_eq!(s.first_lsn, Lsn(next));
        assert_eq!(s.records, s.last_lsn.0 + 1 - s.first_lsn.0);
        assert_eq!(s.sealed, i + 1 < segs.len(), "{s:?}");
        assert!(s.sealed_at.is_some() == s.sealed);
        assert!(s.bytes <= 700 + 300 + 16 + 24 || s.records == 1, "{s:?}");
        next = s.last_lsn.0 + 1;
    }
    assert_eq!(next, n + 1);
    for from in [1u64, 2, 17, 59, 60, 61, 119, 120] {
        let got: Vec<(Lsn, Vec<u8>)> = log
            .reader(Lsn(from))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let want: Vec<(Lsn, Vec<u8>)> = (from..=n)
            .map(|l| (Lsn(l), payload(1, l, (l as usize * 37) % 300)))
            .collect();
        assert_eq!(got, want, "from {from}");
    }
    // Beyond the end: nothing yet, then the next record once it is appended.
    let mut r = log.reader(Lsn(n + 1)).unwrap();
    assert!(r.next().is_none());
    log.append(b"later").unwrap();
    let (lsn, p) = r.next().unwrap().unwrap();
    assert_eq!((lsn, p.as_slice()), (Lsn(n + 1), &b"later"[..]));
    // The same from another "process".
    let ro = open_read_only(dir.path()).unwrap();
    let got: Vec<_> = ro
        .reader(Lsn(33))
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    assert_eq!(got.len() as u64, n + 1 - 32);
    assert_eq!(got[0].0, Lsn(33));
    let report = ro.verify().unwrap();
    assert_eq!(report.records, n + 1);
    assert_eq!((report.first_lsn, report.last_lsn), (Lsn(1), Lsn(n + 1)));
    assert_eq!(report.torn_tail, None);
}

#[test]
fn wait_for_wakes_on_append() {
    let dir = tempfile::tempdir().unwrap();
    let log = Arc::new(Log::open(dir.path(), "t", LogOptions::default()).unwrap());
    let waiter = {
        let log = log.clone();
        std::thread::spawn(move || log.wait_for(Lsn::ZERO, Duration::from_secs(30)))
    };
    // The waiter may or may not be waiting yet; either way it must see the append.
    log.append(b"x").unwrap();
    assert_eq!(waiter.join().unwrap(), Lsn(1));
    // A timeout returns the unchanged durable LSN.
    assert_eq!(log.wait_for(Lsn(1), Duration::from_millis(20)), Lsn(1));

    let ro = open_read_only(dir.path()).unwrap();
    let ro_waiter = std::thread::spawn(move || ro.wait_for(Lsn(1), Duration::from_secs(30)));
    log.append(b"y").unwrap();
    assert_eq!(ro_waiter.join().unwrap().unwrap(), Lsn(2));
}

/// Appends a complete, valid frame for `lsn` to the newest segment behind the writer's back,
/// like a write in flight whose fdatasync has not returned.
fn plant_undurable_frame(dir: &Path, lsn: u64) {
    use std::io::Write;
    let newest = seg_files(dir).pop().unwrap();
    let mut frame = Vec::new();
    format::encode_frame(&mut frame, Lsn(lsn), b"not durable");
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(newest)
        .unwrap();
    f.write_all(&frame).unwrap();
}

#[test]
fn readers_never_pass_the_durable_lsn() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), "t", LogOptions::default()).unwrap();
    for i in 1..=3u64 {
        log.append(&payload(2, i, 10)).unwrap();
    }
    plant_undurable_frame(dir.path(), 4);
    let ro = open_read_only(dir.path()).unwrap();
    assert_eq!(ro.durable_lsn().unwrap(), Lsn(3));
    let lsns: Vec<Lsn> = ro
        .reader(Lsn::ZERO)
        .unwrap()
        .map(|r| r.unwrap().0)
        .collect();
    assert_eq!(lsns, vec![Lsn(1), Lsn(2), Lsn(3)]);
    let lsns: Vec<Lsn> = log
        .reader(Lsn::ZERO)
        .unwrap()
        .map(|r| r.unwrap().0)
        .collect();
    assert_eq!(lsns, vec![Lsn(1), Lsn(2), Lsn(3)]);
    drop(log);
    // A valid frame that was never acknowledged is still a whole record: recovery keeps it
    // (the writer crashed after writing it, before it could acknowledge it).
    let log = Log::open(dir.path(), "t", LogOptions::default()).unwrap();
    assert_eq!(log.durable_lsn(), Lsn(4));
    assert_eq!(read_all(&log)[3].1, b"not durable".to_vec());
}

#[test]
fn verify_finds_a_flipped_byte() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), "t", small_segments(600)).unwrap();
    for i in 1..=40u64 {
        log.append(&payload(3, i, 50)).unwrap();
    }
    drop(log);
    let ro = open_read_only(dir.path()).unwrap();
    assert_eq!(ro.verify().unwrap().records, 40);
    let victim = seg_files(dir.path())[1].clone();
    let mut bytes = std::fs::read(&victim).unwrap();
    let header_len = SegmentHeader::decode(&bytes).unwrap().1;
    let at = header_len + 16 + 50 + 20; // inside the payload of the segment's second record
    bytes[at] ^= 0x40;
    std::fs::write(&victim, &bytes).unwrap();
    match ro.verify() {
        Err(LogError::Corrupt {
            segment, offset, ..
        }) => {
            assert_eq!(segment, victim);
            assert_eq!(offset, (header_len + 16 + 50) as u64);
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
    // Reading through the damage reports it too, after the records before it.
    let mut r = ro.reader(Lsn::ZERO).unwrap();
    let mut ok = 0;
    let err = loop {
        match r.next() {
            Some(Ok(_)) => ok += 1,
            Some(Err(e)) => break e,
            None => panic!("the reader ran past a damaged record"),
        }
    };
    assert!(err.is_corrupt(), "{err}");
    assert!(err.to_string().contains("ferry log verify"), "{err}");
    assert!(ok >= 1);
    assert!(r.next().is_none());
}

#[test]
fn second_writer_is_locked_out_until_the_first_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), "t", LogOptions::default()).unwrap();
    let err = Log::open(dir.path(), "t", LogOptions::default()).unwrap_err();
    assert!(err.is_locked(), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("LOCK") && msg.contains("--state-dir"), "{msg}");
    // A read-only opener does not need the lock.
    open_read_only(dir.path()).unwrap();
    drop(log);
    Log::open(dir.path(), "t", LogOptions::default()).unwrap();
}

#[test]
fn seal_and_age_roll() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), "t", LogOptions::default()).unwrap();
    log.seal().unwrap(); // nothing to seal in an empty segment
    assert_eq!(log.segments().unwrap().len(), 1);
    log.append_batch(&[b"a".to_vec(), b"b".to_vec(), b"c".to_vec()])
        .unwrap();
    log.seal().unwrap();
    let segs = log.segments().unwrap();
    assert_eq!(segs.len(), 1);
    assert!(segs[0].sealed);
    assert_eq!((segs[0].first_lsn, segs[0].last_lsn), (Lsn(1), Lsn(3)));
    drop(log);
    // A sealed newest segment survives a restart; the next append starts a new one.
    let log = Log::open(dir.path(), "t", LogOptions::default()).unwrap();
    assert_eq!(log.append(b"d").unwrap(), Lsn(4));
    let segs = log.segments().unwrap();
    assert_eq!(segs.len(), 2);
    assert_eq!(segs[1].first_lsn, Lsn(4));
    assert!(!segs[1].sealed);
    drop(log);

    // With a zero age limit every append after the first in a segment rolls it.
    let dir = tempfile::tempdir().unwrap();
    let opts = LogOptions {
        segment_max_age: Some(Duration::ZERO),
        ..LogOptions::default()
    };
    let log = Log::open(dir.path(), "t", opts).unwrap();
    for i in 1..=5u64 {
        log.append(&payload(4, i, 8)).unwrap();
    }
    let segs = log.segments().unwrap();
    assert_eq!(segs.len(), 5);
    assert!(segs.iter().take(4).all(|s| s.sealed && s.records == 1));
    assert_eq!(read_all(&log).len(), 5);
}

#[test]
fn retention_follows_the_slowest_consumer() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), "t", small_segments(400)).unwrap();
    for i in 1..=100u64 {
        log.append(&payload(5, i, 40)).unwrap();
    }
    let before = log.segments().unwrap();
    // No consumer: nothing is deleted.
    let r = log.apply_retention().unwrap();
    assert_eq!((r.min_consumer_lsn, r.removed.len()), (None, 0));
    assert!(matches!(
        log.set_consumer("shipper", Lsn(101)),
        Err(LogError::ConsumerAhead { .. })
    ));
    assert!(matches!(
        log.set_consumer("../x", Lsn(1)),
        Err(LogError::InvalidConsumerName { .. })
    ));
    log.set_consumer("shipper", Lsn(60)).unwrap();
    log.set_consumer("archive", Lsn(20)).unwrap();
    assert_eq!(
        log.consumers().unwrap(),
        vec![
            ("archive".to_string(), Lsn(20)),
            ("shipper".to_string(), Lsn(60))
        ]
    );
    let r = log.apply_retention().unwrap();
    assert_eq!(r.min_consumer_lsn, Some(Lsn(20)));
    let removed: Vec<_> = before
        .iter()
        .take_while(|s| s.last_lsn <= Lsn(20))
        .map(|s| s.path.clone())
        .collect();
    assert!(!removed.is_empty());
    assert_eq!(r.removed, removed);
    let first = log.first_lsn();
    assert!(first <= Lsn(21) && first > Lsn(1), "{first}");
    assert_eq!(r.first_lsn, first);
    // Everything from the first retained record on still reads; older records are gone.
    let got: Vec<_> = log
        .reader(first)
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    assert_eq!(got.len() as u64, 101 - first.0);
    assert!(matches!(log.reader(Lsn(1)), Err(LogError::Gone { .. })));

    // A consumer in another process records its cursor; the writer's retention honours it.
    let ro = open_read_only(dir.path()).unwrap();
    ro.set_consumer("archive", Lsn(100)).unwrap();
    log.set_consumer("shipper", Lsn(100)).unwrap();
    let r = log.apply_retention().unwrap();
    assert!(!r.removed.is_empty());
    let segs = log.segments().unwrap();
    assert_eq!(segs.len(), 1, "only the newest segment is kept: {segs:?}");
    log.remove_consumer("archive").unwrap();
    log.remove_consumer("archive").unwrap();
    assert_eq!(
        log.consumers().unwrap(),
        vec![("shipper".to_string(), Lsn(100))]
    );
    let next = log.append(b"after retention").unwrap();
    assert_eq!(next, Lsn(101));
    drop(log);
    let log = Log::open(dir.path(), "t", small_segments(400)).unwrap();
    assert_eq!(log.durable_lsn(), Lsn(101));
    let all = read_all(&log);
    assert_eq!(all.last().unwrap().0, Lsn(101));
    assert_eq!(all.first().unwrap().0, log.first_lsn());
    assert_eq!(
        open_read_only(dir.path())
            .unwrap()
            .verify()
            .unwrap()
            .last_lsn,
        Lsn(101)
    );
}

#[test]
fn a_failed_fsync_poisons_the_log() {
    let fs = SimFs::new(7);
    let dir = Path::new("/state/log");
    let log = Log::open_with(Arc::new(fs.clone()), dir, "t", LogOptions::default()).unwrap();
    log.append(b"kept").unwrap();
    fs.fail_next_sync();
    let err = log.append(b"lost").unwrap_err();
    assert!(matches!(err, LogError::Io { .. }), "{err}");
    let err = log.append(b"refused").unwrap_err();
    assert!(matches!(err, LogError::Poisoned { .. }), "{err}");
    assert!(err.to_string().contains("restart"), "{err}");
    assert!(matches!(log.seal(), Err(LogError::Poisoned { .. })));
    assert_eq!(log.durable_lsn(), Lsn(1));
    drop(log);
    fs.crash(false);
    let log = Log::open_with(Arc::new(fs.clone()), dir, "t", LogOptions::default()).unwrap();
    assert_eq!(read_all(&log), vec![(Lsn(1), b"kept".to_vec())]);
}

#[test]
fn sync_interval_still_acknowledges_only_durable_records() {
    let fs = SimFs::new(8);
    let dir = Path::new("/log");
    let opts = LogOptions {
        sync: ferry_log::SyncPolicy::Interval(Duration::from_millis(5)),
        ..LogOptions::default()
    };
    let log = Arc::new(Log::open_with(Arc::new(fs.clone()), dir, "t", opts.clone()).unwrap());
    let started = Instant::now();
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let log = log.clone();
            std::thread::spawn(move || {
                (0..25u64)
                    .map(|i| log.append(&payload(t, i, 20)).unwrap())
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut lsns: Vec<Lsn> = threads
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    lsns.sort();
    assert_eq!(lsns, (1..=100).map(Lsn).collect::<Vec<_>>());
    // At most one sync started per 5 ms (plus the first).
    let elapsed_ms = started.elapsed().as_millis() as u64;
    assert!(
        log.sync_count() <= elapsed_ms / 5 + 2,
        "{} syncs in {elapsed_ms} ms",
        log.sync_count()
    );
    drop(log);
    fs.crash(true);
    let log = Log::open_with(Arc::new(fs), dir, "t", opts).unwrap();
    assert_eq!(read_all(&log).len(), 100);
}
