//! Restore into PostgreSQL through the shipper's own apply path.
//!
//! The restore is a [`RecordSource`] the unchanged shipper consumes: the base as snapshot
//! records (exactly what capture would have logged for it, see [`crate::base_snapshot`]),
//! then the archived records after the base up to the target. So the type mapping, the
//! binary COPY load, indexes, foreign keys, sequences and the exactly-once progress row are
//! the replication's, not a second implementation.
//!
//! LSNs: the snapshot records are numbered to end exactly at the base's LSN `B` (they take
//! LSNs `B-k+1 ..= B`), and archived records keep their own LSNs, so `ferry.progress` ends
//! at the target LSN with the archive's log id — the same pairing a live replica has, and
//! `ferry ship` could continue from it while the log still holds the next records. When the
//! base's snapshot needs more records than `B` (a base very early in a log, with many
//! tables), every LSN is shifted by the difference and the progress row gets a log id that
//! is not the archive's (its bytes XOR 0xA5), so nothing can mistake the shifted LSNs for the
//! log's.
//!
//! The shipper reads the snapshot twice (profiling column types, then loading): asking for
//! its first record again restarts the producer, which reads the base again from the start
//! (production is deterministic). The producer runs on its own thread behind a bounded
//! channel, so memory stays bounded whatever the base's size.

use crate::ArchiveError;
use crate::base_snapshot::{BaseFile, Chunking};
use crate::coverage::RestorePlan;
use crate::segment_file::SegmentRecords;
use ferry_core::{Lsn, Record};
use ferry_pg::{PgTarget, RecordSource, RecordSourceError, ShipOptions, Shipper};
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender};
use std::time::{Duration, Instant};

/// Snapshot records in flight between the base reader and the shipper.
const RECORDS_IN_FLIGHT: usize = 8;

/// How to restore into PostgreSQL.
#[derive(Clone, Debug)]
pub struct PgRestoreOptions {
    /// libpq URL or key=value string of the target database.
    pub target: String,
    /// Target schema (`public` by default).
    pub schema: String,
    /// The `ferry.progress` row's key; default: the archived source's id.
    pub progress_source_id: Option<String>,
    pub chunking: Chunking,
}

impl PgRestoreOptions {
    pub fn new(target: impl Into<String>) -> PgRestoreOptions {
        PgRestoreOptions {
            target: target.into(),
            schema: "public".into(),
            progress_source_id: None,
            chunking: Chunking::default(),
        }
    }
}

/// What a restore into PostgreSQL did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PgRestoreSummary {
    pub base_lsn: Lsn,
    pub target: Lsn,
    /// What `ferry.progress` records now (see the module comment on shifted LSNs).
    pub progress_source_id: String,
    pub progress_log_id: String,
    pub progress_lsn: Lsn,
    pub snapshot_rows: u64,
    pub log_records: u64,
    pub duration: Duration,
}

/// Builds PostgreSQL as of `plan.target`. The target must not already hold this source
/// (a `ferry.progress` row for it): a restore never merges into a replica.
pub async fn restore_to_postgres(
    plan: &RestorePlan,
    opts: &PgRestoreOptions,
) -> Result<PgRestoreSummary, ArchiveError> {
    let started = Instant::now();
    // Every file, the base's CRC included, is checked before PostgreSQL is touched.
    plan.verify(true)?;
    let progress_id = opts
        .progress_source_id
        .clone()
        .unwrap_or_else(|| plan.source_id.clone());
    let target = PgTarget::parse(&opts.target)?;
    {
        let client = target.connect().await?;
        if let Some(p) = ferry_pg::read_progress(&client, &progress_id).await? {
            return Err(ArchiveError::Options(format!(
                "the target already holds source {progress_id:?} (ferry.progress at LSN {} of log {}): restore into an empty database, or choose another progress source id",
                p.lsn, p.log_id
            )));
        }
    }
    let base = BaseFile::open(&plan.base_path)?;
    let (k, snapshot_rows) = base.count_records(opts.chunking)?;
    drop(base);
    let b = plan.base.lsn.0;
    let shift = k.saturating_sub(b);
    let log_id = if shift == 0 {
        plan.log_id.clone()
    } else {
        shifted_log_id(&plan.log_id)
    };
    let mut source = RestoreSource {
        plan: plan.clone(),
        chunking: opts.chunking,
        captured_at: plan.base.lsn_captured_at.unwrap_or(plan.base.taken_at),
        log_id: log_id.clone(),
        snapshot_first: Lsn(b + shift - k + 1),
        snapshot_last: Lsn(b + shift),
        shift,
        producer: None,
        segment: None,
        log_records: 0,
    };
    let ship = ShipOptions {
        schema: opts.schema.clone(),
        source_id: progress_id.clone(),
        max_retries: 5,
        ..ShipOptions::default()
    };
    let mut shipper = Shipper::new(target, ship).await?;
    let end = Lsn(plan.target.0 + shift);
    let summary = shipper.run_until_caught_up(&mut source, end).await?;
    Ok(PgRestoreSummary {
        base_lsn: plan.base.lsn,
        target: plan.target,
        progress_source_id: progress_id,
        progress_log_id: log_id,
        progress_lsn: summary.applied_lsn,
        snapshot_rows,
        log_records: source.log_records,
        duration: started.elapsed(),
    })
}

/// The id marking a progress row whose LSNs are shifted from the archive's.
fn shifted_log_id(log_id: &str) -> String {
    match log_id.parse::<ferry_log::LogId>() {
        Ok(id) => ferry_log::LogId(id.0.map(|b| b ^ 0xA5)).to_string(),
        Err(_) => format!("{log_id}-restored"),
    }
}

struct Producer {
    rx: Receiver<Result<Record, String>>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// The LSN the next received record gets.
    next: Lsn,
}

impl Drop for Producer {
    fn drop(&mut self) {
        // Dropping the receiver makes the producer's next send fail, which stops it.
        let (_, dead) = std::sync::mpsc::sync_channel(1);
        drop(std::mem::replace(&mut self.rx, dead));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct RestoreSource {
    plan: RestorePlan,
    chunking: Chunking,
    captured_at: ferry_core::UnixMicros,
    log_id: String,
    snapshot_first: Lsn,
    snapshot_last: Lsn,
    shift: u64,
    producer: Option<Producer>,
    /// The archived segment being read (index into the plan's segments).
    segment: Option<(usize, SegmentRecords)>,
    log_records: u64,
}

fn start_producer(path: PathBuf, chunking: Chunking, captured_at: i64, first: Lsn) -> Producer {
    let (tx, rx): (SyncSender<Result<Record, String>>, _) =
        std::sync::mpsc::sync_channel(RECORDS_IN_FLIGHT);
    let thread = std::thread::spawn(move || {
        let result = BaseFile::open(&path)
            .and_then(|base| base.produce(captured_at, chunking, &mut |r| tx.send(Ok(r)).is_ok()));
        if let Err(e) = result {
            let _ = tx.send(Err(e.to_string()));
        }
    });
    Producer {
        rx,
        thread: Some(thread),
        next: first,
    }
}

impl RestoreSource {
    fn read_snapshot(
        &mut self,
        from: Lsn,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<(Lsn, Record)>, RecordSourceError> {
        let from = from.max(self.snapshot_first);
        if self.producer.as_ref().is_none_or(|p| p.next != from) {
            if from != self.snapshot_first {
                return Err(RecordSourceError::new(format!(
                    "the restore cannot re-read the base's snapshot from LSN {from}; run the restore again"
                )));
            }
            self.producer = None;
            self.producer = Some(start_producer(
                self.plan.base_path.clone(),
                self.chunking,
                self.captured_at,
                self.snapshot_first,
            ));
        }
        let Some(p) = self.producer.as_mut() else {
            return Ok(vec![]);
        };
        let mut out = Vec::new();
        let deadline = Instant::now() + wait.max(Duration::from_secs(30));
        while out.len() < max && p.next <= self.snapshot_last {
            let item = if out.is_empty() {
                p.rx.recv_timeout(deadline.saturating_duration_since(Instant::now()))
            } else {
                p.rx.try_recv().map_err(|_| RecvTimeoutError::Timeout)
            };
            match item {
                Ok(Ok(r)) => {
                    out.push((p.next, r));
                    p.next = p.next.next();
                }
                Ok(Err(e)) => {
                    return Err(RecordSourceError::new(format!(
                        "reading base {}: {e}",
                        self.plan.base_path.display()
                    )));
                }
                Err(RecvTimeoutError::Timeout) => break,
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(RecordSourceError::new(format!(
                        "base {} produced fewer snapshot records than counted (it changed during the restore?)",
                        self.plan.base_path.display()
                    )));
                }
            }
        }
        Ok(out)
    }

    fn read_log(&mut self, from: Lsn, max: usize) -> Result<Vec<(Lsn, Record)>, RecordSourceError> {
        let mut out = Vec::new();
        let mut real = Lsn(from.0 - self.shift);
        while out.len() < max && real <= self.plan.target {
            let idx = self
                .plan
                .segments
                .iter()
                .position(|(s, _)| s.first_lsn <= real && real <= s.last_lsn)
                .ok_or_else(|| {
                    RecordSourceError::new(format!(
                        "no archived segment of the restore plan holds LSN {real}"
                    ))
                })?;
            if self.segment.as_ref().is_none_or(|(i, _)| *i != idx) {
                let (entry, path) = &self.plan.segments[idx];
                let seg = SegmentRecords::open(path, entry.first_lsn).map_err(|e| {
                    RecordSourceError::with_source(format!("reading {}", path.display()), e)
                })?;
                self.segment = Some((idx, seg));
            }
            let Some((_, seg)) = &self.segment else {
                break;
            };
            let to = seg.summary.last_lsn.min(self.plan.target);
            let before = out.len();
            for r in seg.records(real, to).take(max - out.len()) {
                let (lsn, record) = r.map_err(|e| {
                    RecordSourceError::with_source(format!("reading {}", seg.path.display()), e)
                })?;
                out.push((Lsn(lsn.0 + self.shift), record));
            }
            if out.len() == before {
                break;
            }
            real = Lsn(out.last().map_or(real.0, |(l, _)| l.0 - self.shift) + 1);
        }
        self.log_records += out.len() as u64;
        Ok(out)
    }
}

impl RecordSource for RestoreSource {
    fn log_id(&self) -> String {
        self.log_id.clone()
    }

    fn read_batch(
        &mut self,
        after: Lsn,
        max_records: usize,
        wait: Duration,
    ) -> Result<Vec<(Lsn, Record)>, RecordSourceError> {
        let from = after.next();
        if from <= self.snapshot_last {
            return self.read_snapshot(from, max_records.max(1), wait);
        }
        // Reading the log part: the snapshot is complete, its producer can go.
        self.producer = None;
        let out = self.read_log(from, max_records.max(1))?;
        if out.is_empty() {
            std::thread::sleep(wait.min(Duration::from_millis(10)));
        }
        Ok(out)
    }
}
