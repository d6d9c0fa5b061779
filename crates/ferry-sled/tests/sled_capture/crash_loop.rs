//! The application killed with SIGKILL at random points while it writes, and restarted:
//! afterwards the folded log equals the sled trees (nothing lost between sled and the log,
//! nothing doubled), the trees are exactly what the committed transactions made them, and
//! PostgreSQL — shipped to incrementally between kills, and once more at the end — equals the
//! log at each step and the trees at the end.
//!
//! What is promised, and tested: with `flush_on_commit`, every transaction the application
//! saw commit survives the kill (the `flush` runs); without it, a kill may lose sled's
//! unflushed tail — exactly as with plain sled — but sled and the log stay consistent
//! (the mover flushes sled before it appends, so the log is never ahead of the database).

use crate::postgres::ship_and_read_back;
use crate::support::*;
use ferry_core::SourceId;
use ferry_core::state_dir::StateDir;
use ferry_sled::{CaptureOptions, CapturedDb};
use ferry_testkit::pg::TestDb;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The trees after transactions `1..=n` of `ferry-sled-crash-app` (see its documentation).
fn expected_after(n: u64) -> Contents {
    let mut seq: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
    let mut side = BTreeMap::new();
    for i in 1..=n {
        seq.insert(i.to_be_bytes().to_vec(), format!("v{i}").into_bytes());
        if i % 3 == 0 {
            seq.remove((i - 2).to_be_bytes().as_slice());
        }
        if i % 7 == 0 {
            let prev = (i - 1).to_be_bytes().to_vec();
            if seq.get(&prev) == Some(&format!("v{}", i - 1).into_bytes()) {
                seq.insert(prev, format!("w{}", i - 1).into_bytes());
            }
        }
        if i % 11 == 0 {
            side.insert(i.to_be_bytes().to_vec(), b"side".to_vec());
        }
    }
    let mut out = Contents::new();
    if n > 0 {
        out.insert("seq".into(), seq);
        out.insert(
            "meta".into(),
            BTreeMap::from([(b"total".to_vec(), n.to_be_bytes().to_vec())]),
        );
    }
    if !side.is_empty() {
        out.insert("side".into(), side);
    }
    out
}

fn total_of(contents: &Contents) -> u64 {
    contents
        .get("meta")
        .and_then(|m| m.get(b"total".as_slice()))
        .map_or(0, |v| {
            u64::from_be_bytes(v.as_slice().try_into().expect("8 bytes"))
        })
}

/// Runs the app until it has printed `committed` `stop_after` times (or exits), then kills
/// it with SIGKILL; with `after_snapshot`, counts only the commits after it printed
/// `snapshot done`. Returns the last sequence number it printed as committed.
fn run_and_kill(
    path: &Path,
    state: &Path,
    mode: &str,
    stop_after: u64,
    after_snapshot: bool,
    delay: Duration,
) -> Option<u64> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ferry-sled-crash-app"))
        .arg(path)
        .arg(state)
        .arg(mode)
        .args(after_snapshot.then_some("--sync-first"))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the crash app");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = None;
    let mut seen = 0;
    let mut counting = !after_snapshot;
    if stop_after == 0 {
        // A random kill point inside start-up (sled recovery, mover recovery, snapshot,
        // copy): the delay picks the point, nothing waits on it.
        std::thread::sleep(delay);
    }
    while seen < stop_after {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                if let Some(n) = line.strip_prefix("committed ") {
                    last = Some(n.parse().expect("a number"));
                    if counting {
                        seen += 1;
                    }
                } else if line == "snapshot done" {
                    counting = true;
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => panic!("the crash app stalled"),
        }
    }
    child.kill().expect("SIGKILL");
    let status = child.wait().expect("wait");
    assert!(
        !status.success(),
        "the app was killed, not finished: {status}"
    );
    // Lines printed before the kill landed still count as committed.
    reader.join().expect("reader");
    while let Ok(line) = rx.try_recv() {
        if let Some(n) = line.strip_prefix("committed ") {
            last = Some(n.parse().expect("a number"));
        }
    }
    last
}

/// Whether the log of source `app` exists and holds a complete initial snapshot.
fn log_has_snapshot(state: &Path) -> bool {
    let dir = StateDir::new(state).log_dir(&SourceId("app".into()));
    dir.is_dir()
        && read_log(state, "app")
            .iter()
            .any(|r| matches!(r, ferry_core::Record::SnapshotEnd(_)))
}

#[test]
fn killed_application_loses_and_doubles_nothing() {
    let iterations: u64 = std::env::var("FERRY_CRASH_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    for seed in seeds("killed_application_loses_and_doubles_nothing", 1) {
        eprintln!("seed {seed} (rerun with FERRY_SLED_SEED={seed})");
        let mut rng = StdRng::seed_from_u64(seed);
        for mode in ["flush", "noflush"] {
            let pg = TestDb::new_blocking();
            let mut shipped_between_kills = 0;
            let dir = tempfile::tempdir().expect("tempdir");
            let (path, state) = (dir.path().join("app"), dir.path().join("state"));
            // Data from before capture started, so that early kills land in the snapshot.
            {
                let db = sled::open(&path).expect("sled");
                let t = db.open_tree("legacy").expect("tree");
                for i in 0..3_000u32 {
                    t.insert(i.to_be_bytes(), vec![7u8; 40]).expect("insert");
                }
                db.flush().expect("flush");
            }
            let mut printed_max = 0;
            for it in 0..iterations {
                // Sometimes kill before the first commit (inside open, snapshot, recovery).
                let stop_after = if rng.random_bool(0.25) {
                    0
                } else {
                    rng.random_range(1..120)
                };
                let delay = Duration::from_millis(rng.random_range(0..400));
                // Every fourth run gets past the initial snapshot before it is killed, so that
                // kills also land in steady streaming and there is a log to ship in between.
                let after_snapshot = it % 4 == 3;
                if let Some(n) = run_and_kill(
                    &path,
                    &state,
                    mode,
                    if after_snapshot {
                        stop_after.max(1)
                    } else {
                        stop_after
                    },
                    after_snapshot,
                    delay,
                ) {
                    printed_max = printed_max.max(n);
                }
                // What survived must be the state after some prefix of transactions.
                let db = sled::open(&path).expect("reopen sled after the kill");
                let mut got = sled_contents(&db);
                got.remove("legacy");
                let n = total_of(&got);
                let mut expected = expected_after(n);
                if n.is_multiple_of(11)
                    && got
                        .get("side")
                        .is_none_or(|s| !s.contains_key(n.to_be_bytes().as_slice()))
                {
                    // Killed between transaction n and its separate side insert, which the
                    // next start completes.
                    if let Some(side) = expected.get_mut("side") {
                        side.remove(n.to_be_bytes().as_slice());
                        if side.is_empty() {
                            expected.remove("side");
                        }
                    }
                }
                assert_same(&got, &expected);
                if mode == "flush" {
                    assert!(
                        n >= printed_max,
                        "iteration {it}: the app saw {printed_max} commit with flush_on_commit, sled kept {n}"
                    );
                }
                // Without flush_on_commit a kill may take back what was printed.
                printed_max = printed_max.min(n);
                drop(db);

                // Ship what the log holds so far (once it holds the snapshot): PostgreSQL
                // equals the log's fold, however often shipping resumes between kills.
                if it % 4 == 3 && log_has_snapshot(&state) {
                    let records = read_log(&state, "app");
                    let shipped = ship_and_read_back(&state, &pg);
                    assert_same(&shipped, &fold_contents(&fold(&records)));
                    shipped_between_kills += 1;
                }
            }
            // A clean run moves what the kills left in the outbox.
            let db = CapturedDb::open(&path, &state, CaptureOptions::default()).expect("open");
            let sled_db = db.sled().clone();
            db.close(Duration::from_secs(60)).expect("close");
            let records = read_log(&state, "app");
            let begins = records
                .iter()
                .filter(|r| matches!(r, ferry_core::Record::SnapshotBegin(_)))
                .count();
            assert_eq!(
                begins, 1,
                "{mode}: exactly one snapshot, however often it was interrupted"
            );
            let f = fold(&records);
            let contents = sled_contents(&sled_db);
            assert_same(&fold_contents(&f), &contents);
            // And PostgreSQL, resuming from where the last shipping between kills stopped.
            assert_same(&ship_and_read_back(&state, &pg), &contents);
            assert!(
                iterations < 8 || shipped_between_kills > 0,
                "{mode}: no shipping between kills happened"
            );
            assert!(
                total_of(&contents) > 0,
                "{mode}: no transaction ever committed"
            );
            eprintln!(
                "{mode}: {iterations} kills, {} transactions survived, {} log records",
                total_of(&contents),
                records.len()
            );
        }
    }
}
