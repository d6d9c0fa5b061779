//! A real writer process (`ferry-log-crash-writer`) killed with SIGKILL mid-append, many
//! times over the same log: every append it acknowledged (printed) must survive with its
//! payload. Also: a SIGKILLed lock holder never blocks the next writer.

use ferry_log::{Log, LogOptions, Lsn, open_read_only};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, ChildStdout, Command, Stdio};

const WRITER: &str = env!("CARGO_BIN_EXE_ferry-log-crash-writer");

/// Must match `expected_payload` in `src/bin/ferry-log-crash-writer.rs`.
fn expected_payload(run: u64, thread: u64, seq: u64) -> Vec<u8> {
    let mut x = run
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add(thread << 32)
        .wrapping_add(seq);
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let len = (next() % 4096) as usize;
    let mut p = format!("{run}/{thread}/{seq}/").into_bytes();
    while p.len() < len {
        p.push(next() as u8);
    }
    p
}

fn spawn_writer(dir: &Path, threads: u32, run: u64) -> (Child, BufReader<ChildStdout>) {
    let mut child = Command::new(WRITER)
        .arg(dir)
        .arg(threads.to_string())
        .arg("65536")
        .arg(run.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawning the crash writer");
    let out = BufReader::new(child.stdout.take().expect("stdout"));
    (child, out)
}

fn read_line(out: &mut BufReader<ChildStdout>) -> Option<String> {
    let mut line = String::new();
    match out.read_line(&mut line) {
        Ok(0) | Err(_) => None,
        Ok(_) => Some(line.trim_end().to_string()),
    }
}

#[test]
fn acknowledged_appends_survive_sigkill() {
    let iterations: u64 = std::env::var("FERRY_CRASH_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    let dir = tempfile::tempdir().unwrap();
    let mut acked: BTreeMap<u64, (u64, u64, u64)> = BTreeMap::new();
    let mut rng = 0x2545_F491_4F6C_DD1Du64;
    for run in 0..iterations {
        let (mut child, mut out) = spawn_writer(dir.path(), 4, run);
        let first = read_line(&mut out).expect("the writer printed nothing");
        let reopened: u64 = first
            .strip_prefix("open ")
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("unexpected first line {first:?}"));
        let max_acked = acked.keys().next_back().copied().unwrap_or(0);
        assert!(
            reopened >= max_acked,
            "run {run}: reopened at {reopened} < acknowledged {max_acked}"
        );
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let kill_after = 1 + rng % 300;
        let mut seen = 0;
        let mut record = |line: &str| {
            let f: Vec<u64> = line.split(' ').map(|x| x.parse().unwrap()).collect();
            assert_eq!(f.len(), 3, "{line:?}");
            let prev = acked.insert(f[0], (run, f[1], f[2]));
            assert!(prev.is_none(), "LSN {} acknowledged twice", f[0]);
        };
        while seen < kill_after {
            let Some(line) = read_line(&mut out) else {
                panic!("run {run}: the writer stopped by itself");
            };
            record(&line);
            seen += 1;
        }
        child.kill().expect("SIGKILL");
        // Lines already printed were acknowledged before the kill.
        while let Some(line) = read_line(&mut out) {
            record(&line);
        }
        child.wait().expect("reaping the writer");
    }
    let log = Log::open(dir.path(), "crash-test", LogOptions::default()).unwrap();
    let all: BTreeMap<u64, Vec<u8>> = log
        .reader(Lsn::ZERO)
        .unwrap()
        .map(|r| r.map(|(l, p)| (l.0, p)))
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(
        all.keys().copied().collect::<Vec<_>>(),
        (1..=all.len() as u64).collect::<Vec<_>>()
    );
    for (lsn, (run, thread, seq)) in &acked {
        assert_eq!(
            all.get(lsn),
            Some(&expected_payload(*run, *thread, *seq)),
            "acknowledged LSN {lsn} (run {run} thread {thread} seq {seq}) is missing or wrong"
        );
    }
    assert!(acked.len() as u64 >= iterations);
    drop(log);
    let report = open_read_only(dir.path()).unwrap().verify().unwrap();
    assert_eq!(report.records, all.len() as u64);
}

#[test]
fn a_killed_lock_holder_does_not_block_the_next_writer() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, mut out) = spawn_writer(dir.path(), 1, 0);
    let first = read_line(&mut out).expect("the writer printed nothing");
    assert!(first.starts_with("open "), "{first:?}");
    let err = Log::open(dir.path(), "crash-test", LogOptions::default()).unwrap_err();
    assert!(err.is_locked(), "{err}");
    child.kill().unwrap();
    child.wait().unwrap();
    drop(out);
    let log = Log::open(dir.path(), "crash-test", LogOptions::default()).unwrap();
    let durable = log.durable_lsn();
    assert_eq!(log.append(b"next writer").unwrap(), Lsn(durable.0 + 1));
}
