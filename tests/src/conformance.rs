//! One conformance suite for every source (SQLite, sled): the checks a source's log must
//! pass, whatever produced it, and a driver that runs them against a source.
//!
//! A source under test implements [`ConformanceSource`]: it commits *numbered* transactions
//! (commit `k` inserts row `k` into a ledger table and changes a few rows of its data
//! tables, every after-image carrying `k`), runs its capture into the log of a state
//! directory, and reads its own contents back through its own API (SQLite's `SELECT`, sled's
//! iterators). The ledger is what makes the checks source-agnostic: a transaction record
//! must hold exactly one ledger insert, so the ledger numbers in the log show, without
//! knowing anything about the source's positions, whether a commit was split, merged, lost
//! or doubled, and whether the stream continues exactly where the snapshot stopped.
//!
//! The checks ([`check_log`]):
//! 1. LSNs are dense from 1;
//! 2. the log starts with exactly one `SnapshotBegin … SnapshotEnd` (only `SnapshotRows`
//!    between), and no other snapshot marker follows;
//! 3. every `Transaction` after it is one whole source commit: exactly one ledger insert,
//!    every marked after-image carrying that ledger number; the ledger numbers continue
//!    densely from the highest one in the snapshot (no gap, no duplicate, commit order).
//!    The one exception is a record flagged `resync` (SQLite, when its WAL restarted while
//!    capture was stopped, DESIGN.md "Gaps"): a consecutive run of whole commits. While
//!    capture runs undisturbed there must be none;
//! 4. source positions never repeat, and comparable positions (sled outbox sequence
//!    numbers; WAL frames under the same salts) strictly increase;
//! 5. the strict fold of the log equals the source's contents;
//!
//! and, through ferry-pg's shipper ([`ship_and_compare`]):
//! 6. after shipping the log, PostgreSQL equals the fold, row by row, by the shipper's own
//!    conversion rule ([`ferry_pg::row_matches`]);
//!
//! and, in the driver ([`run_suite`]):
//! 7. after the capture is stopped and started again (and, where the source allows it,
//!    written while stopped), the old log is an unchanged prefix of the new one, all of the
//!    above hold for the whole log, and shipping resumes from PostgreSQL's progress row.

use ferry_core::fold::Fold;
use ferry_core::state_dir::StateDir;
use ferry_core::{Lsn, Op, Record, SourceId, SourcePosition, Value};
use ferry_pg::{PgTarget, ShipOptions, Shipper, TargetRowReader, VecRecordSource, row_matches};
use ferry_testkit::pg::TestDb;
use rand::SeedableRng;
use rand::rngs::StdRng;
use std::cmp::Ordering;
use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::time::Duration;

/// Table name → primary key → full row, as the fold holds them.
pub type Tables = BTreeMap<String, BTreeMap<Vec<Value>, Vec<Value>>>;

/// A source the suite can drive.
pub trait ConformanceSource {
    /// For messages: `"sqlite"`, `"sled"`.
    fn kind(&self) -> &'static str;
    fn state_dir(&self) -> &Path;
    fn source_id(&self) -> &str;
    /// The table that gets one row per commit.
    fn ledger_table(&self) -> &str;
    /// The commit number of a ledger row.
    fn ledger_commit(&self, row: &[Value]) -> Option<u64>;
    /// The commit number an after-image of a data table carries, if the table marks rows.
    fn marker(&self, table: &str, row: &[Value]) -> Option<u64>;
    /// Commits one source transaction numbered `commit` (increasing by one per call, also
    /// while capture is stopped if [`ConformanceSource::writes_while_stopped`]).
    fn commit(&mut self, commit: u64, rng: &mut StdRng);
    /// Starts (or restarts) capture; writes may follow at once and race the snapshot.
    fn start_capture(&mut self);
    /// Returns once everything committed before the call is durable in the log.
    fn sync_capture(&mut self);
    /// Stops capture cleanly.
    fn stop_capture(&mut self);
    /// Whether the application can commit while capture is stopped (SQLite: yes; sled: its
    /// writes go through the capture library, so no).
    fn writes_while_stopped(&self) -> bool;
    /// The source's contents, read through its own API, in the fold's form (empty tables
    /// may be left out).
    fn contents(&mut self) -> Tables;
}

/// A source's log, read back.
pub struct ReadLog {
    pub log_id: String,
    pub records: Vec<(Lsn, Record)>,
}

/// Reads the whole log of `source_id` in `state_dir` (read-only, while capture may run).
pub fn read_log(state_dir: &Path, source_id: &str) -> ReadLog {
    let dir = StateDir::new(state_dir).log_dir(&SourceId(source_id.to_string()));
    let log = ferry_log::open_read_only(&dir)
        .unwrap_or_else(|e| panic!("opening the log {}: {e}", dir.display()));
    let mut records = Vec::new();
    let reader = log
        .reader(Lsn::FIRST)
        .unwrap_or_else(|e| panic!("a reader of {}: {e}", dir.display()));
    for item in reader {
        let (lsn, payload) = item.unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()));
        let record = Record::decode(&payload)
            .unwrap_or_else(|e| panic!("record {lsn} of {} does not decode: {e}", dir.display()));
        records.push((lsn, record));
    }
    ReadLog {
        log_id: log.log_id().to_string(),
        records,
    }
}

/// What [`check_log`] learnt about a log.
#[derive(Debug)]
pub struct LogSummary {
    /// The highest commit number in the snapshot (0 when it holds none).
    pub snapshot_commit: u64,
    /// The commit numbers of the transaction records, in log order.
    pub streamed_commits: Vec<u64>,
    /// Coarse resync records (each a run of whole commits).
    pub resyncs: usize,
    pub fold: Fold,
}

/// Checks 1–5 of the module comment; `contents` is the source's own view (check 5).
pub fn check_log(src: &dyn ConformanceSource, log: &ReadLog, contents: &Tables) -> LogSummary {
    let kind = src.kind();
    // 1. Dense LSNs.
    for (i, (lsn, _)) in log.records.iter().enumerate() {
        assert_eq!(*lsn, Lsn(i as u64 + 1), "{kind}: LSNs are not dense");
    }
    // 2. Exactly one snapshot, first.
    let records: Vec<&Record> = log.records.iter().map(|(_, r)| r).collect();
    assert!(
        matches!(records.first(), Some(Record::SnapshotBegin(_))),
        "{kind}: the log does not start with SnapshotBegin: {:?}",
        records.first().map(|r| r.type_name())
    );
    let end = records
        .iter()
        .position(|r| matches!(r, Record::SnapshotEnd(_)))
        .unwrap_or_else(|| panic!("{kind}: the snapshot never ends"));
    for (i, r) in records.iter().enumerate().take(end).skip(1) {
        assert!(
            matches!(r, Record::SnapshotRows(_)),
            "{kind}: record {} inside the snapshot is {}",
            i + 1,
            r.type_name()
        );
    }
    for (i, r) in records.iter().enumerate().skip(end + 1) {
        assert!(
            matches!(r, Record::Transaction(_) | Record::Heartbeat(_)),
            "{kind}: record {} after the snapshot is {} (one snapshot, then streaming)",
            i + 1,
            r.type_name()
        );
    }
    // 5 (first half). The strict fold: a lost or doubled change fails here.
    let mut fold = Fold::new();
    let mut snapshot_commit = None;
    for (i, r) in records.iter().enumerate() {
        if let Err(e) = fold.apply(r) {
            panic!(
                "{kind}: record {} ({}) does not fold: {e}",
                i + 1,
                r.type_name()
            );
        }
        if i == end {
            let ledger = fold.tables.get(src.ledger_table());
            snapshot_commit = Some(ledger.map_or(0, |t| {
                t.rows
                    .values()
                    .filter_map(|row| src.ledger_commit(row))
                    .max()
                    .unwrap_or(0)
            }));
        }
    }
    let snapshot_commit = snapshot_commit.unwrap_or(0);
    // 3. One record per commit, whole, densely numbered after the snapshot.
    let mut streamed_commits = Vec::new();
    let mut resyncs = 0;
    for (i, r) in records.iter().enumerate().skip(end + 1) {
        let Record::Transaction(txn) = r else {
            continue;
        };
        let ledger: Vec<u64> = txn
            .changes
            .iter()
            .filter(|c| c.table == src.ledger_table() && c.op == Op::Insert)
            .map(|c| {
                c.after
                    .as_deref()
                    .and_then(|row| src.ledger_commit(row))
                    .unwrap_or_else(|| {
                        panic!("{kind}: record {}: a ledger row without a number", i + 1)
                    })
            })
            .collect();
        // A resync (SQLite, after its WAL restarted behind a stopped capture) is one coarse
        // record of several whole commits: a consecutive run of them, never part of one.
        let expected = streamed_commits.last().map_or(snapshot_commit, |&c| c) + 1;
        let run_ok = if txn.resync {
            !ledger.is_empty() && ledger.iter().zip(expected..).all(|(&c, e)| c == e)
        } else {
            ledger == [expected]
        };
        assert!(
            run_ok,
            "{kind}: record {} (resync: {}) holds ledger inserts {ledger:?}, expected {}: a source commit must be exactly one record, in order, without gaps or duplicates",
            i + 1,
            txn.resync,
            if txn.resync {
                format!("a run starting at {expected}")
            } else {
                format!("[{expected}]")
            }
        );
        if txn.resync {
            resyncs += 1;
        }
        for c in &txn.changes {
            if let Some(after) = &c.after
                && let Some(m) = src.marker(&c.table, after)
            {
                assert!(
                    ledger.contains(&m),
                    "{kind}: record {} (commits {ledger:?}) holds a row of {} written by commit {m}",
                    i + 1,
                    c.table
                );
            }
        }
        streamed_commits.extend(ledger);
    }
    // 4. Positions never repeat; comparable ones increase.
    let mut seen = HashSet::new();
    let mut previous: Option<&SourcePosition> = None;
    for (i, r) in records.iter().enumerate().skip(end) {
        let Some(p) = r.position() else { continue };
        if !matches!(r, Record::Transaction(_) | Record::SnapshotEnd(_)) {
            continue;
        }
        assert!(
            matches!(r, Record::SnapshotEnd(_)) || seen.insert(p.to_string()),
            "{kind}: record {} repeats position {p}",
            i + 1
        );
        if let Some(prev) = previous
            && let Some(ord) = position_order(prev, p)
        {
            assert_eq!(
                ord,
                Ordering::Less,
                "{kind}: record {} at {p} does not come after {prev}",
                i + 1
            );
        }
        previous = Some(p);
    }
    // 5. The fold equals the source.
    assert_tables_equal(kind, &fold_tables(&fold), contents);
    LogSummary {
        snapshot_commit,
        streamed_commits,
        resyncs,
        fold,
    }
}

/// The order of two positions where the source defines one: sled outbox sequence numbers;
/// WAL commits under the same salts (a WAL restart changes the salts and starts the frames
/// again, so positions across it are not comparable by themselves).
pub fn position_order(a: &SourcePosition, b: &SourcePosition) -> Option<Ordering> {
    match (a, b) {
        (SourcePosition::SledOutbox { seq: x }, SourcePosition::SledOutbox { seq: y }) => {
            Some(x.cmp(y))
        }
        (SourcePosition::SqliteWal(x), SourcePosition::SqliteWal(y))
            if (x.salt1, x.salt2) == (y.salt1, y.salt2) =>
        {
            Some(x.frame.cmp(&y.frame))
        }
        _ => None,
    }
}

/// The fold's tables, empty ones left out.
pub fn fold_tables(fold: &Fold) -> Tables {
    fold.tables
        .iter()
        .filter(|(_, t)| !t.rows.is_empty())
        .map(|(n, t)| (n.clone(), t.rows.clone()))
        .collect()
}

/// Asserts two table sets are equal (empty tables equal missing ones), naming the first
/// difference.
pub fn assert_tables_equal(kind: &str, log: &Tables, source: &Tables) {
    let empty = BTreeMap::new();
    let names: std::collections::BTreeSet<&String> = log.keys().chain(source.keys()).collect();
    for name in names {
        let l = log.get(name).unwrap_or(&empty);
        let s = source.get(name).unwrap_or(&empty);
        if l == s {
            continue;
        }
        let first = l
            .iter()
            .find(|(k, v)| s.get(*k) != Some(v))
            .map(|(k, _)| k)
            .or_else(|| s.keys().find(|k| !l.contains_key(*k)));
        panic!(
            "{kind}: table {name}: the log's fold has {} rows, the source {}; first difference at key {first:?}: log {:?}, source {:?}",
            l.len(),
            s.len(),
            first.and_then(|k| l.get(k)),
            first.and_then(|k| s.get(k)),
        );
    }
}

/// Check 6: ships `log` into `pg` with ferry-pg's shipper (resuming from PostgreSQL's
/// progress row, as after a restart) and compares every shipped table with `fold`.
pub fn ship_and_compare(kind: &str, source_id: &str, log: &ReadLog, fold: &Fold, pg: &TestDb) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("a tokio runtime: {e}"));
    rt.block_on(async {
        let records: Vec<Record> = log.records.iter().map(|(_, r)| r.clone()).collect();
        let mut source = VecRecordSource::new(log.log_id.clone(), records);
        let last = source.last_lsn();
        let opts = ShipOptions {
            source_id: source_id.to_string(),
            batch_max_delay: Duration::from_millis(10),
            load_connections: 2,
            ..ShipOptions::default()
        };
        let target = PgTarget::parse(pg.url()).unwrap_or_else(|e| panic!("target: {e}"));
        let mut shipper = Shipper::new(target, opts)
            .await
            .unwrap_or_else(|e| panic!("{kind}: starting the shipper: {e}"));
        let summary = shipper
            .run_until_caught_up(&mut source, last)
            .await
            .unwrap_or_else(|e| panic!("{kind}: shipping: {e}"));
        assert_eq!(summary.applied_lsn, last, "{kind}: PostgreSQL has not applied the whole log");
        let client = pg.connect().await;
        let mut shipped = 0;
        for map in shipper.table_maps() {
            let name = map.source_name().to_string();
            let Some(table) = fold.tables.get(&name) else {
                panic!("{kind}: PostgreSQL has table {name}, the log does not");
            };
            let mut reader = TargetRowReader::new(map.clone(), 500);
            let mut rows = 0usize;
            loop {
                let page = reader
                    .next_page(&client)
                    .await
                    .unwrap_or_else(|e| panic!("{kind}: reading {}: {e}", map.qualified()));
                if page.is_empty() {
                    break;
                }
                for (key, datums) in &page {
                    rows += 1;
                    let Some(row) = table.rows.get(key) else {
                        panic!("{kind}: {} has key {key:?}, the fold does not", map.qualified());
                    };
                    let rowid = match key.as_slice() {
                        [Value::Integer(i)] => Some(*i),
                        _ => None,
                    };
                    assert!(
                        row_matches(&map, row, rowid, datums),
                        "{kind}: {} key {key:?}: PostgreSQL {datums:?} differs from the fold {row:?}",
                        map.qualified()
                    );
                }
            }
            assert_eq!(
                rows,
                table.rows.len(),
                "{kind}: {} has {rows} rows, the fold {}",
                map.qualified(),
                table.rows.len()
            );
            shipped += 1;
        }
        assert_eq!(
            shipped,
            fold.tables.len(),
            "{kind}: every table of the log is shipped"
        );
    });
}

/// How much [`run_suite`] writes.
#[derive(Clone, Debug)]
pub struct SuiteSize {
    /// Commits before capture starts (they reach the log through the snapshot).
    pub before_capture: u64,
    /// Commits right after capture starts (they race the snapshot).
    pub racing_snapshot: u64,
    /// Commits while capture is stopped (sources that allow it).
    pub while_stopped: u64,
    /// Commits after the restart.
    pub after_restart: u64,
}

impl SuiteSize {
    /// The default sizes times `FERRY_CONFORMANCE_SCALE` (1 when unset), for longer runs.
    pub fn from_env() -> SuiteSize {
        let scale: u64 = std::env::var("FERRY_CONFORMANCE_SCALE")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(1)
            .max(1);
        let d = SuiteSize::default();
        SuiteSize {
            before_capture: d.before_capture * scale,
            racing_snapshot: d.racing_snapshot * scale,
            while_stopped: d.while_stopped * scale,
            after_restart: d.after_restart * scale,
        }
    }
}

impl Default for SuiteSize {
    fn default() -> Self {
        SuiteSize {
            before_capture: 60,
            racing_snapshot: 120,
            while_stopped: 40,
            after_restart: 80,
        }
    }
}

/// Runs every check against `src`, shipping into `pg`; `seed` drives the workload.
pub fn run_suite(src: &mut dyn ConformanceSource, pg: &TestDb, size: &SuiteSize, seed: u64) {
    let kind = src.kind();
    eprintln!("{kind} conformance, seed {seed}");
    let mut rng = StdRng::seed_from_u64(seed);
    let mut commit = 0u64;
    let mut write = |src: &mut dyn ConformanceSource, n: u64, rng: &mut StdRng| {
        for _ in 0..n {
            commit += 1;
            src.commit(commit, rng);
        }
        commit
    };

    write(src, size.before_capture, &mut rng);
    src.start_capture();
    let mut last = write(src, size.racing_snapshot, &mut rng);
    src.sync_capture();
    let first = read_log(src.state_dir(), src.source_id());
    let contents = src.contents();
    let summary = check_log(src, &first, &contents);
    assert_eq!(
        summary
            .streamed_commits
            .last()
            .copied()
            .unwrap_or(summary.snapshot_commit),
        last,
        "{kind}: the log does not reach the last commit"
    );
    assert_eq!(
        summary.resyncs, 0,
        "{kind}: capture resynced while it ran undisturbed"
    );
    assert!(
        summary.snapshot_commit >= size.before_capture,
        "{kind}: the snapshot misses commits made before capture started"
    );
    ship_and_compare(kind, src.source_id(), &first, &summary.fold, pg);

    // 7. Restart.
    src.stop_capture();
    if src.writes_while_stopped() {
        write(src, size.while_stopped, &mut rng);
    }
    src.start_capture();
    last = write(src, size.after_restart, &mut rng);
    src.sync_capture();
    let second = read_log(src.state_dir(), src.source_id());
    assert_eq!(
        second.log_id, first.log_id,
        "{kind}: the restart made a new log"
    );
    assert!(
        second.records.len() >= first.records.len()
            && second.records[..first.records.len()] == first.records[..],
        "{kind}: the log before the restart is not a prefix of the log after it"
    );
    let contents = src.contents();
    let summary = check_log(src, &second, &contents);
    assert_eq!(
        summary
            .streamed_commits
            .last()
            .copied()
            .unwrap_or(summary.snapshot_commit),
        last,
        "{kind}: after the restart the log does not reach the last commit"
    );
    ship_and_compare(kind, src.source_id(), &second, &summary.fold, pg);
    src.stop_capture();
}
