//! Power cuts on the simulated file system: several threads append (single records and
//! batches) while a crash is armed to hit a random later file operation, sometimes tearing the
//! writes in flight; some crashes hit recovery itself. After every restart each acknowledged
//! append must be there with its payload, LSNs must be dense, and every record must be one
//! that some thread really tried to append, whole.

use crate::common::{cases, payload};
use ferry_log::sim::SimFs;
use ferry_log::{Log, LogOptions, Lsn};
use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};

struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

/// Payload of append `seq` by `thread` in generation `gen`: its identity and filler.
fn attempt_payload(gen_: u64, thread: u64, seq: u64) -> Vec<u8> {
    let tag = (gen_ << 40) | (thread << 32) | seq;
    let mut p = tag.to_le_bytes().to_vec();
    p.extend(payload(
        tag,
        0,
        (tag.wrapping_mul(2654435761) % 3000) as usize,
    ));
    p
}

fn check_log(log: &Log, acked: &BTreeMap<Lsn, Vec<u8>>, attempted: &HashSet<Vec<u8>>) {
    let all = crate::common::read_all(log);
    for (i, (lsn, p)) in all.iter().enumerate() {
        assert_eq!(*lsn, Lsn(i as u64 + 1), "LSNs are not dense");
        assert!(attempted.contains(p), "record {lsn} was never appended");
    }
    for (lsn, p) in acked {
        let got = all.get(lsn.0 as usize - 1).map(|(_, p)| p);
        assert_eq!(
            got,
            Some(p),
            "acknowledged record {lsn} was lost or changed"
        );
    }
    assert_eq!(log.durable_lsn(), Lsn(all.len() as u64));
}

#[test]
fn acknowledged_appends_survive_power_cuts() {
    for case in 0..cases(40) as u64 {
        let mut rng = Rng(0x5eed ^ (case + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let fs = SimFs::new(case);
        let dir = Path::new("/state/sources/app/log");
        let opts = LogOptions {
            segment_bytes: 512 + rng.below(16 * 1024),
            ..LogOptions::default()
        };
        let acked = Arc::new(Mutex::new(BTreeMap::<Lsn, Vec<u8>>::new()));
        let mut attempted = HashSet::new();
        for gen_ in 0..4u64 {
            // Sometimes the power fails again during recovery.
            if rng.below(4) == 0 {
                fs.crash_after(1 + rng.below(6), rng.below(2) == 0);
                if Log::open_with(Arc::new(fs.clone()), dir, "sim", opts.clone()).is_ok() {
                    // Recovery needed fewer operations than the crash was armed for.
                    fs.crash(false);
                }
            }
            let log = Arc::new(
                Log::open_with(Arc::new(fs.clone()), dir, "sim", opts.clone())
                    .unwrap_or_else(|e| panic!("case {case} gen {gen_}: recovery failed: {e}")),
            );
            check_log(&log, &acked.lock().unwrap(), &attempted);

            let threads = 1 + rng.below(4);
            let per_thread = 1 + rng.below(60);
            for t in 0..threads {
                for s in 0..per_thread {
                    attempted.insert(attempt_payload(gen_, t, s));
                }
            }
            fs.crash_after(
                1 + rng.below(40 * threads * per_thread / 8 + 10),
                rng.below(3) > 0,
            );
            let handles: Vec<_> = (0..threads)
                .map(|t| {
                    let log = log.clone();
                    let acked = acked.clone();
                    let batch_every = t % 2;
                    std::thread::spawn(move || {
                        let mut s = 0;
                        while s < per_thread {
                            if batch_every == 1 && s + 3 <= per_thread {
                                let batch: Vec<Vec<u8>> =
                                    (s..s + 3).map(|i| attempt_payload(gen_, t, i)).collect();
                                let Ok(range) = log.append_batch(&batch) else {
                                    return;
                                };
                                let mut a = acked.lock().unwrap();
                                for (lsn, p) in (range.start().0..=range.end().0).zip(batch) {
                                    a.insert(Lsn(lsn), p);
                                }
                                s += 3;
                            } else {
                                let p = attempt_payload(gen_, t, s);
                                let Ok(lsn) = log.append(&p) else {
                                    return;
                                };
                                acked.lock().unwrap().insert(lsn, p);
                                s += 1;
                            }
                            if t == 0 && s % 17 == 0 && log.seal().is_err() {
                                return;
                            }
                        }
                    })
                })
                .collect();
            for h in handles {
                h.join().unwrap();
            }
            drop(log);
            if fs.crash_pending() {
                fs.crash(rng.below(2) == 0);
            }
        }
        let log = Log::open_with(Arc::new(fs.clone()), dir, "sim", opts).unwrap();
        check_log(&log, &acked.lock().unwrap(), &attempted);
        assert!(fs.crash_count() >= 4);
    }
}
