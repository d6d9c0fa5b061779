//! Append throughput of ferry's durable log with group commit, against the raw sequential
//! write + fdatasync bandwidth of the same disk, measured in the same run.
//!
//! A record counts only once the fdatasync covering it has returned: every producer thread
//! calls `Log::append`, which returns only then. Each sample opens a fresh log (default
//! options: 64 MiB segments, sync on every group) in `FERRY_BENCH_DIR` (default: the system
//! temp dir), starts the producers behind a barrier, and times from the barrier to the last
//! acknowledgement. Targets: >= 500,000 records/s of 100 bytes with 256 producers; >= 80 % of
//! raw bandwidth for 4 KiB records.
//!
//! A second group repeats the producers with 32 records per durability wait (pipelined
//! producers, like capture's one `append_batch` per step).
//!
//! Run: `cargo bench -p ferry-bench --bench log_append`.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use ferry_log::{Log, LogOptions};
use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

fn bench_dir() -> tempfile::TempDir {
    let base = std::env::var_os("FERRY_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    tempfile::tempdir_in(base).expect("creating a benchmark directory")
}

/// Appends at least `records` records of `size` bytes from `producers` threads, each
/// producer handing the log `in_flight` records per durability wait (1: one `append` at a
/// time; more: one `append_batch`, as capture does with the transactions of one step);
/// returns the time per `records` records.
fn timed_appends(records: u64, size: usize, producers: u64, in_flight: u64) -> Duration {
    let dir = bench_dir();
    let log = Arc::new(Log::open(dir.path(), "bench", LogOptions::default()).expect("open"));
    let per_producer = records.div_ceil(producers).div_ceil(in_flight) * in_flight;
    let start = Arc::new(Barrier::new(producers as usize + 1));
    let threads: Vec<_> = (0..producers)
        .map(|p| {
            let log = log.clone();
            let start = start.clone();
            std::thread::spawn(move || {
                let payload = vec![p as u8; size];
                let batch = vec![payload.clone(); in_flight as usize];
                start.wait();
                if in_flight == 1 {
                    for _ in 0..per_producer {
                        log.append(&payload).expect("append");
                    }
                } else {
                    for _ in 0..per_producer / in_flight {
                        log.append_batch(&batch).expect("append_batch");
                    }
                }
            })
        })
        .collect();
    start.wait();
    let began = Instant::now();
    for t in threads {
        t.join().expect("producer panicked");
    }
    let elapsed = began.elapsed();
    let done = per_producer * producers;
    elapsed.mul_f64(records as f64 / done as f64)
}

/// Writes `chunks` chunks of `chunk` bytes sequentially, fdatasync after each.
fn timed_raw_writes(chunks: u64, chunk: usize) -> Duration {
    let dir = bench_dir();
    let file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(dir.path().join("raw"))
        .expect("creating the raw file");
    let buf = vec![0x5a; chunk];
    let began = Instant::now();
    for i in 0..chunks {
        file.write_all_at(&buf, i * chunk as u64).expect("write");
        file.sync_data().expect("fdatasync");
    }
    began.elapsed()
}

fn log_append(c: &mut Criterion) {
    let mut raw = c.benchmark_group("raw_write_fdatasync");
    raw.sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4));
    // 4 KiB: the latency of one small write + fdatasync, the floor of a group-commit round
    // (N synchronous producers can reach at most N / latency records per second).
    for chunk in [4096usize, 1 << 20, 8 << 20] {
        raw.throughput(Throughput::Bytes(chunk as u64));
        raw.bench_with_input(
            BenchmarkId::from_parameter(format!("{}KiB", chunk >> 10)),
            &chunk,
            |b, &chunk| b.iter_custom(|iters| timed_raw_writes(iters, chunk)),
        );
    }
    raw.finish();

    // "log_append": one record per durability wait. "log_append_32_in_flight": 32 records
    // per wait, as capture hands over the transactions of one step. A synchronous producer
    // has one record per fdatasync, so N of them reach at most N / (sync latency) records/s;
    // producers that pipeline are bounded by bandwidth instead.
    for (name, in_flight) in [("log_append", 1u64), ("log_append_32_in_flight", 32)] {
        let mut group = c.benchmark_group(name);
        group
            .sample_size(10)
            .warm_up_time(Duration::from_secs(1))
            .measurement_time(Duration::from_secs(4));
        for size in [100usize, 4096] {
            for producers in [1u64, 16, 256] {
                group.throughput(Throughput::Elements(1));
                group.bench_with_input(
                    BenchmarkId::new(format!("{size}B"), format!("{producers}producers")),
                    &(size, producers),
                    |b, &(size, producers)| {
                        b.iter_custom(|iters| timed_appends(iters, size, producers, in_flight))
                    },
                );
            }
        }
        group.finish();
    }
}

criterion_group!(benches, log_append);
criterion_main!(benches);
