//! Test-only driver: captures a database into a `RecordFile` log until SIGTERM/SIGINT or
//! until it is killed. The crash-loop test kills it with SIGKILL at random moments.
//!
//! Usage: ferry-sqlite-capture-test <db> <work-dir> <log-file> [--once]

use ferry_sqlite::{CaptureOptions, RecordFile, SqliteCapture};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 4 {
        eprintln!("usage: {} <db> <work-dir> <log-file> [--once]", args[0]);
        std::process::exit(2);
    }
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
    }
    let result = (|| -> Result<(), Box<dyn std::error::Error>> {
        let log = Arc::new(RecordFile::open(std::path::Path::new(&args[3]))?);
        let opts = CaptureOptions {
            poll_interval: std::time::Duration::from_millis(20),
            ..CaptureOptions::default()
        };
        let mut cap = SqliteCapture::open(args[1].as_ref(), args[2].as_ref(), log, opts)?;
        if args.get(4).map(String::as_str) == Some("--once") {
            cap.catch_up()?;
        } else {
            cap.run(&STOP)?;
        }
        let s = cap.stats();
        println!("transactions={} resyncs={}", s.transactions, s.resyncs);
        Ok(())
    })();
    if let Err(e) = result {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
