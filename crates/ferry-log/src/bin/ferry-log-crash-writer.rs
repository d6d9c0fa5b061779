//! Test helper for the SIGKILL crash test: appends records to a log from several threads and
//! prints `<lsn> <thread> <seq>` on stdout after each acknowledged append, forever (until
//! killed). The payload of (thread, seq) is `expected_payload(thread, seq)`, which the test
//! recomputes to check what survived.
//!
//! Usage: ferry-log-crash-writer <dir> <threads> <segment-bytes> <run-id>

use ferry_log::{Log, LogOptions};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

/// Deterministic payload of size 0..4096: the identity of the append, then filler.
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

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 5 {
        eprintln!("usage: ferry-log-crash-writer <dir> <threads> <segment-bytes> <run-id>");
        return ExitCode::from(2);
    }
    let dir = PathBuf::from(&args[1]);
    let parse = |s: &str| s.parse::<u64>().map_err(|e| format!("{s:?}: {e}"));
    let (threads, segment_bytes, run) = match (parse(&args[2]), parse(&args[3]), parse(&args[4])) {
        (Ok(t), Ok(s), Ok(r)) => (t, s, r),
        (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => {
            eprintln!("bad argument {e}");
            return ExitCode::from(2);
        }
    };
    let opts = LogOptions {
        segment_bytes,
        ..LogOptions::default()
    };
    let log = match Log::open(&dir, "crash-test", opts) {
        Ok(l) => Arc::new(l),
        Err(e) => {
            eprintln!("open failed: {e}");
            return ExitCode::from(1);
        }
    };
    println!("open {}", log.durable_lsn());
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let log = log.clone();
            std::thread::spawn(move || {
                for seq in 0.. {
                    let payload = expected_payload(run, t, seq);
                    match log.append(&payload) {
                        Ok(lsn) => {
                            let mut out = std::io::stdout().lock();
                            if writeln!(out, "{lsn} {t} {seq}")
                                .and_then(|()| out.flush())
                                .is_err()
                            {
                                return;
                            }
                        }
                        Err(e) => {
                            eprintln!("append failed: {e}");
                            return;
                        }
                    }
                }
            })
        })
        .collect();
    for h in handles {
        let _ = h.join();
    }
    ExitCode::from(1)
}
