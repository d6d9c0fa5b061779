use ferry_log::{Log, LogOptions, Lsn};
use std::path::Path;

/// How many cases a randomized test runs: `default`, or `FERRY_PROPTEST_CASES`.
pub fn cases(default: u32) -> u32 {
    std::env::var("FERRY_PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A deterministic payload for `lsn` of `len` bytes, so a test can recompute what it wrote.
pub fn payload(tag: u64, lsn: u64, len: usize) -> Vec<u8> {
    let mut x =
        tag.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ lsn.wrapping_mul(0xD6E8_FEB8_6659_FD93) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

pub fn small_segments(bytes: u64) -> LogOptions {
    LogOptions {
        segment_bytes: bytes,
        ..LogOptions::default()
    }
}

/// Every record from the oldest on; panics on a read error.
pub fn read_all(log: &Log) -> Vec<(Lsn, Vec<u8>)> {
    log.reader(Lsn::ZERO)
        .expect("reader")
        .collect::<Result<Vec<_>, _>>()
        .expect("reading the whole log")
}

pub fn seg_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .expect("read_dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    v.sort();
    v
}
