//! Ships a deterministic record stream into PostgreSQL and exits 0 once caught up: the
//! process the exactly-once tests kill with SIGKILL and restart.
//!
//! Usage: `ferry-pg-ship-test <postgres-url> <source-id> <seed> <transactions> <batch-records>`

mod workload;

use ferry_pg::{PgTarget, ShipOptions, Shipper, VecRecordSource};
use std::time::Duration;

fn usage() -> ! {
    eprintln!(
        "usage: ferry-pg-ship-test <postgres-url> <source-id> <seed> <transactions> <batch-records>"
    );
    std::process::exit(2)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 6 {
        usage();
    }
    let (Ok(seed), Ok(txns), Ok(batch)) = (
        args[3].parse::<u64>(),
        args[4].parse::<usize>(),
        args[5].parse::<usize>(),
    ) else {
        usage()
    };
    let records = workload::records(seed, txns);
    let last = workload::last_lsn(&records);
    let mut source = VecRecordSource::new(workload::log_id(seed), records);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tokio runtime: {e}");
            std::process::exit(1)
        }
    };
    let result = rt.block_on(async {
        let target = PgTarget::parse(&args[1])?;
        let opts = ShipOptions {
            source_id: args[2].clone(),
            batch_max_records: batch,
            batch_max_delay: Duration::from_millis(20),
            load_connections: 2,
            ..ShipOptions::default()
        };
        let mut shipper = Shipper::new(target, opts).await?;
        shipper.run_until_caught_up(&mut source, last).await
    });
    match result {
        Ok(summary) => {
            println!("caught up at LSN {}", summary.applied_lsn);
        }
        Err(e) => {
            eprintln!("ferry-pg-ship-test: {e}");
            std::process::exit(1)
        }
    }
}
