//! The initial load's progress bar on a terminal (`ferry snapshot`, `ferry ship`): rows
//! copied of the snapshot's rows, the step (profiling, copying, indexing), rate and ETA, read
//! from the shipper's status. Off a terminal indicatif draws nothing and the shipper's own
//! periodic log lines say the same.

use ferry_pg::ShipStatus;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Draws until the returned task is aborted (or the load is done).
pub fn spawn(status: Arc<Mutex<ShipStatus>>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let bar = indicatif::ProgressBar::new(0).with_style(
            indicatif::ProgressStyle::with_template("{prefix:>9} {bar:30} {pos}/{len} rows {msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let load = status.lock().ok().and_then(|s| s.load.clone());
            let Some(load) = load else { continue };
            if load.step == "done" {
                bar.finish_and_clear();
                return;
            }
            bar.set_prefix(load.step.clone());
            bar.set_length(load.rows_total);
            bar.set_position(load.rows_done);
            let eta = load
                .eta()
                .map(|d| format!(", ETA {}s", d.as_secs()))
                .unwrap_or_default();
            bar.set_message(format!(
                "({:.0} rows/s{eta}; {}/{} tables)",
                load.rows_per_sec(),
                load.tables_started,
                load.tables_total
            ));
        }
    })
}
