//! Progress of a verify (`ferry verify`, the cutover's verify): on a terminal a bar of tables;
//! off a terminal (a service's journal, CI, a pipe), where indicatif draws nothing, log lines
//! instead — one every [`LOG_INTERVAL`] while rows are compared (so a long table is visibly
//! alive), and one at the end with the totals. Rows are counted as SQLite's side is read.

use std::io::IsTerminal;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How often a terminal-less verify logs where it is (the initial load's interval).
pub const LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Rows between two looks at the clock: counting stays one atomic add per row.
const ROWS_PER_CLOCK_CHECK: u64 = 1024;

pub struct VerifyProgress {
    bar: Option<indicatif::ProgressBar>,
    rows: RowProgress,
}

/// The per-row side of [`VerifyProgress`], handed to the comparison of one table.
pub struct RowProgress {
    /// Whether to write log lines (off a terminal).
    log_lines: bool,
    tables_total: usize,
    tables_done: AtomicU64,
    rows: AtomicU64,
    table: Mutex<String>,
    started: Instant,
    last_log: Mutex<Instant>,
}

impl VerifyProgress {
    /// A bar when stderr is a terminal, log lines otherwise.
    pub fn new(tables_total: usize) -> VerifyProgress {
        VerifyProgress::with_log_lines(tables_total, !std::io::stderr().is_terminal())
    }

    /// Neither bar nor log lines: comparisons that are one step of a larger report (the
    /// cutover's comparisons by key).
    pub fn quiet(tables_total: usize) -> VerifyProgress {
        let mut p = VerifyProgress::with_log_lines(tables_total, false);
        p.bar = None;
        p
    }

    fn with_log_lines(tables_total: usize, log_lines: bool) -> VerifyProgress {
        let bar = (!log_lines).then(|| {
            indicatif::ProgressBar::new(tables_total as u64).with_style(
                indicatif::ProgressStyle::with_template("verify {bar:30} {pos}/{len} tables {msg}")
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            )
        });
        let now = Instant::now();
        VerifyProgress {
            bar,
            rows: RowProgress {
                log_lines,
                tables_total,
                tables_done: AtomicU64::new(0),
                rows: AtomicU64::new(0),
                table: Mutex::new(String::new()),
                started: now,
                last_log: Mutex::new(now),
            },
        }
    }

    pub fn start_table(&self, name: &str) {
        if let Some(bar) = &self.bar {
            bar.set_message(name.to_string());
        }
        if let Ok(mut t) = self.rows.table.lock() {
            name.clone_into(&mut t);
        }
    }

    /// What the comparison of the current table counts its rows into.
    pub fn rows(&self) -> &RowProgress {
        &self.rows
    }

    pub fn table_done(&self) {
        if let Some(bar) = &self.bar {
            bar.inc(1);
        }
        self.rows.tables_done.fetch_add(1, Ordering::Relaxed);
        self.rows.log_if_due();
    }

    /// Clears the bar, or logs the totals.
    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
        if self.rows.log_lines {
            tracing::info!(
                tables = self.rows.tables_total,
                rows = self.rows.rows.load(Ordering::Relaxed),
                seconds = self.rows.started.elapsed().as_secs_f64(),
                "verify: compared every table"
            );
        }
    }
}

impl RowProgress {
    /// One SQLite row read.
    pub fn row(&self) {
        let n = self.rows.fetch_add(1, Ordering::Relaxed) + 1;
        if n.is_multiple_of(ROWS_PER_CLOCK_CHECK) {
            self.log_if_due();
        }
    }

    fn log_if_due(&self) {
        if !self.log_lines {
            return;
        }
        let Ok(mut last) = self.last_log.lock() else {
            return;
        };
        if last.elapsed() < LOG_INTERVAL {
            return;
        }
        *last = Instant::now();
        let rows = self.rows.load(Ordering::Relaxed);
        let secs = self.started.elapsed().as_secs_f64();
        let table = self.table.lock().map(|t| t.clone()).unwrap_or_default();
        tracing::info!(
            table = %table,
            tables_done = self.tables_done.load(Ordering::Relaxed),
            tables = self.tables_total,
            rows,
            rows_per_sec = (rows as f64 / secs.max(1e-3)).round(),
            "verify: comparing"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_rows_and_tables_without_a_terminal() {
        let p = VerifyProgress::with_log_lines(2, true);
        assert!(p.bar.is_none(), "no bar off a terminal");
        p.start_table("a");
        for _ in 0..3000 {
            p.rows().row();
        }
        p.table_done();
        assert_eq!(p.rows.rows.load(Ordering::Relaxed), 3000);
        assert_eq!(p.rows.tables_done.load(Ordering::Relaxed), 1);
        assert_eq!(*p.rows.table.lock().unwrap(), "a");
        // Logging is due once the interval passed: the clock is reset by a line.
        *p.rows.last_log.lock().unwrap() = Instant::now() - LOG_INTERVAL;
        p.rows.log_if_due();
        assert!(p.rows.last_log.lock().unwrap().elapsed() < LOG_INTERVAL);
    }
}
