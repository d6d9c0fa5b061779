//! The archive against a real SQLite application, a real capture, a real log and a real
//! PostgreSQL: every recorded point restores to exactly the recorded content; what cannot be
//! restored is refused with the reason and the nearest points; damage is found and named.

mod common;

use common::{Harness, dump_file, steps};
use ferry_archive::{
    Archive, ArchiveError, PgRestoreOptions, RestoreTarget, restore_to_postgres, restore_to_sqlite,
};
use ferry_core::Lsn;
use ferry_core::fold::Fold;
use ferry_pg::mapping::MapOptions;
use ferry_pg::{TargetRowReader, find_table, map_onto, row_matches};
use ferry_testkit::pg::TestDb;
use std::time::{Duration, SystemTime};

fn restore_and_compare(h: &Harness, archive: &Archive, lsn: Lsn, tag: &str) {
    let plan = archive
        .plan(RestoreTarget::Lsn(lsn))
        .unwrap_or_else(|e| panic!("plan for LSN {lsn}: {e}"));
    assert_eq!(plan.target, lsn);
    assert!(plan.base.lsn <= lsn);
    let out = h.dir.path().join(format!("restored-{tag}-{lsn}.db"));
    let summary =
        restore_to_sqlite(&plan, &out).unwrap_or_else(|e| panic!("restore to {lsn}: {e}"));
    assert_eq!(summary.target, lsn);
    let want = &h.points[&lsn].content;
    let got = dump_file(&out);
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>(),
        "tables at LSN {lsn}"
    );
    for (table, rows) in want {
        assert_eq!(
            &got[table], rows,
            "table {table} at LSN {lsn} (base {})",
            plan.base.lsn
        );
    }
    // The application's trigger is back, and did not fire during the replay (audit equal).
    let c = rusqlite::Connection::open(&out).unwrap();
    let triggers: i64 = c
        .query_row(
            "SELECT count(*) FROM sqlite_schema WHERE type = 'trigger' AND name = 'users_ai'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(triggers, 1, "trigger restored at LSN {lsn}");
}

async fn compare_pg(db: &TestDb, fold: &Fold) {
    let client = db.connect().await;
    let map_opts = MapOptions {
        schema: "public".into(),
        table_prefix: String::new(),
        keep_case: false,
        type_overrides: Default::default(),
    };
    for (name, table) in &fold.tables {
        let target = map_opts.target_table_name(name);
        let schema = if name == "sqlite_sequence" {
            "ferry"
        } else {
            "public"
        };
        let target = if name == "sqlite_sequence" {
            "sqlite_sequence_app".to_string()
        } else {
            target
        };
        let ct = find_table(&client, schema, &target)
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("table {schema}.{target} missing in PostgreSQL"));
        let mut problems = Vec::new();
        let map = map_onto(&table.schema, &ct, false, &mut problems)
            .unwrap_or_else(|| panic!("{name}: {problems:?}"));
        let mut reader = TargetRowReader::new(map.clone(), 500);
        let mut back = Vec::new();
        loop {
            let page = reader.next_page(&client).await.unwrap();
            if page.is_empty() {
                break;
            }
            back.extend(page);
        }
        assert_eq!(back.len(), table.rows.len(), "row count of {name}");
        for ((_, pg), (key, row)) in back.iter().zip(&table.rows) {
            let rowid = if table.schema.keyed_by_rowid() {
                key[0].as_i64()
            } else {
                None
            };
            assert!(
                row_matches(&map, row, rowid, pg),
                "{name}: {row:?} vs {pg:?}"
            );
        }
    }
}

#[test]
fn every_recorded_point_restores_exactly_to_sqlite_and_postgres() {
    let mut h = Harness::new(7, |_| {});
    h.run(steps(240), 60);
    let archive = Archive::open(&h.archive_dir, None).unwrap();
    let m = archive.manifest();
    assert!(
        m.segments.len() >= 4,
        "small segments: {} archived",
        m.segments.len()
    );
    assert_eq!(h.bases.len(), m.bases.len());
    let first_base = h.bases[0];
    let ranges = archive.ranges();
    assert_eq!(ranges.len(), 1, "{ranges:?}");
    assert_eq!(ranges[0].from.lsn, first_base);
    assert_eq!(ranges[0].to.lsn, h.log.durable_lsn());

    // Every point from the first base on (a sample of them when the run is long), each base,
    // and the last.
    let restorable: Vec<Lsn> = h
        .points
        .keys()
        .copied()
        .filter(|l| *l >= first_base)
        .collect();
    let stride = (restorable.len() / 40).max(1);
    let mut chosen: Vec<Lsn> = restorable.iter().copied().step_by(stride).collect();
    chosen.extend(h.bases.iter().copied());
    chosen.extend(restorable.last().copied());
    chosen.sort();
    chosen.dedup();
    for &lsn in &chosen {
        restore_and_compare(&h, &archive, lsn, "lsn");
    }

    // Points before the first base are refused, naming it as the nearest restorable point.
    let early = *h.points.keys().next().unwrap();
    assert!(early < first_base);
    let err = archive.plan(RestoreTarget::Lsn(early)).unwrap_err();
    assert!(err.is_not_restorable(), "{err}");
    let msg = err.to_string();
    assert!(msg.contains(&format!("LSN {first_base}")), "{msg}");
    // Beyond the archive's end: refused, naming the last point.
    let end = h.log.durable_lsn();
    let err = archive.plan(RestoreTarget::Lsn(end.next())).unwrap_err();
    assert!(err.to_string().contains(&format!("LSN {end}")), "{err}");

    // A time resolves to the last record captured at or before it.
    let mid = restorable[restorable.len() / 2];
    let at = h.points[&mid]
        .captured_at
        .expect("transactions carry a capture time");
    let plan = archive.plan(RestoreTarget::Time(at)).unwrap();
    assert_eq!(plan.target, mid);
    let plan = archive.plan(RestoreTarget::Time(at - 1)).unwrap();
    assert!(plan.target < mid);
    let latest = archive.plan(RestoreTarget::Latest).unwrap();
    assert_eq!(latest.target, end);
    let err = archive
        .plan(RestoreTarget::Time(
            h.points[&end].captured_at.unwrap() + 60_000_000,
        ))
        .unwrap_err();
    assert!(err.to_string().contains("not archived yet"), "{err}");

    // PostgreSQL through the shipper: at the first base, in the middle, and at the end.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    // Many recorded points (the bases among them), each into its own database, compared with
    // the log folded to that point (which the SQLite restores above equal row for row).
    let mut pg_points: Vec<Lsn> = chosen
        .iter()
        .copied()
        .step_by((chosen.len() / 10).max(1))
        .collect();
    pg_points.extend([first_base, mid, end]);
    pg_points.sort();
    pg_points.dedup();
    assert!(
        pg_points.len() >= 10,
        "{} PostgreSQL points",
        pg_points.len()
    );
    for lsn in pg_points {
        let plan = archive.plan(RestoreTarget::Lsn(lsn)).unwrap();
        let fold = h.fold_to(lsn);
        rt.block_on(async {
            let db = TestDb::new().await;
            let summary = restore_to_postgres(&plan, &PgRestoreOptions::new(db.url()))
                .await
                .unwrap_or_else(|e| panic!("restore to PostgreSQL at {lsn}: {e}"));
            if summary.progress_log_id == m.log_id {
                assert_eq!(summary.progress_lsn, lsn, "progress pairs with the archive");
            } else {
                // Shifted LSNs (a base earlier than its snapshot is long) carry another id.
                assert!(summary.progress_lsn > lsn);
            }
            compare_pg(&db, &fold).await;
            let client = db.connect().await;
            let p = ferry_pg::read_progress(&client, "app")
                .await
                .unwrap()
                .unwrap();
            assert_eq!(p.lsn, summary.progress_lsn);
            assert_eq!(p.log_id, summary.progress_log_id);
        });
    }
}

#[test]
fn retention_keeps_what_kept_bases_need_and_refuses_older_points() {
    let mut h = Harness::new(11, |o| o.keep_bases = 2);
    h.run(steps(160), 35);
    assert!(h.bases.len() >= 4, "{} bases", h.bases.len());
    let before = Archive::open(&h.archive_dir, None)
        .unwrap()
        .manifest()
        .clone();
    let step = h.archiver.apply_retention(SystemTime::now()).unwrap();
    let kept_from = h.bases[h.bases.len() - 2];
    assert_eq!(step.bases_removed, h.bases[..h.bases.len() - 2].to_vec());
    assert!(step.segments_removed > 0);
    let archive = Archive::open(&h.archive_dir, None).unwrap();
    let m = archive.manifest();
    assert_eq!(
        m.bases.iter().map(|b| b.lsn).collect::<Vec<_>>(),
        h.bases[h.bases.len() - 2..].to_vec()
    );
    // Every segment holding a record after the oldest kept base is still there.
    for s in before.segments.iter().filter(|s| s.last_lsn > kept_from) {
        assert!(m.segments.contains(s), "segment {} was needed", s.file);
        assert!(archive.source_dir().join(&s.file).is_file());
    }
    for s in before.segments.iter().filter(|s| s.last_lsn <= kept_from) {
        assert!(
            !archive.source_dir().join(&s.file).exists(),
            "{} kept",
            s.file
        );
    }
    // Every point inside the window restores; one before it is refused clearly.
    let inside: Vec<Lsn> = h
        .points
        .keys()
        .copied()
        .filter(|l| *l >= kept_from)
        .collect();
    for &lsn in inside.iter().step_by((inside.len() / 8).max(1)) {
        restore_and_compare(&h, &archive, lsn, "kept");
    }
    let old = *h.points.keys().rfind(|l| **l < kept_from).unwrap();
    let err = archive.plan(RestoreTarget::Lsn(old)).unwrap_err();
    let msg = err.to_string();
    assert!(err.is_not_restorable(), "{msg}");
    assert!(msg.contains("retention"), "{msg}");
    assert!(msg.contains(&format!("LSN {kept_from}")), "{msg}");

    // A new base makes the oldest kept one unneeded: exactly it goes, with the segments
    // only it needed, and every point from the next base on still restores.
    h.step();
    let newest = h.take_base();
    h.step();
    h.seal_and_archive();
    let next_kept = h.bases[h.bases.len() - 2];
    let again = h.archiver.apply_retention(SystemTime::now()).unwrap();
    assert_eq!(again.bases_removed, vec![kept_from]);
    let archive = Archive::open(&h.archive_dir, None).unwrap();
    assert_eq!(
        archive
            .manifest()
            .bases
            .iter()
            .map(|b| b.lsn)
            .collect::<Vec<_>>(),
        vec![next_kept, newest]
    );
    assert!(archive.plan(RestoreTarget::Lsn(kept_from)).is_err());
    let last = *h.points.keys().last().unwrap();
    restore_and_compare(&h, &archive, next_kept, "kept-again");
    restore_and_compare(&h, &archive, last, "kept-again");
}

#[test]
fn time_window_retention_keeps_the_base_before_the_window() {
    let mut h = Harness::new(5, |o| {
        o.keep_bases = 1;
        o.keep_for = Some(Duration::from_secs(3600));
    });
    h.run(steps(80), 20);
    assert!(h.bases.len() >= 3);
    // Everything is inside the hour: nothing may go.
    let step = h.archiver.apply_retention(SystemTime::now()).unwrap();
    assert!(step.bases_removed.is_empty(), "{step:?}");
    assert_eq!(step.segments_removed, 0);
    // Two hours later, only the newest base (keep_bases = 1) is needed for the window.
    let later = SystemTime::now() + Duration::from_secs(7200);
    let step = h.archiver.apply_retention(later).unwrap();
    assert_eq!(step.bases_removed.len(), h.bases.len() - 1);
}

#[test]
fn a_missing_segment_is_refused_naming_it_and_the_nearest_points() {
    let mut h = Harness::new(3, |_| {});
    h.run(steps(120), 40);
    let archive = Archive::open(&h.archive_dir, None).unwrap();
    let base = h.bases[0];
    let segs: Vec<_> = archive
        .manifest()
        .segments
        .iter()
        .filter(|s| s.first_lsn > base)
        .cloned()
        .collect();
    assert!(segs.len() >= 3, "{} segments after the base", segs.len());
    let victim = &segs[1];
    let path = archive.source_dir().join(&victim.file);
    std::fs::remove_file(&path).unwrap();

    let beyond = *h.points.keys().find(|l| **l > victim.last_lsn).unwrap();
    let err = archive.plan(RestoreTarget::Lsn(beyond)).unwrap_err();
    let msg = err.to_string();
    assert!(err.is_not_restorable(), "{msg}");
    assert!(
        msg.contains(&victim.file),
        "the missing file is named: {msg}"
    );
    assert!(
        msg.contains(&format!("LSN {}", Lsn(victim.first_lsn.0 - 1))),
        "the last point before the gap is named: {msg}"
    );
    // Points before the hole still restore.
    let before = *h
        .points
        .keys()
        .rfind(|l| **l < victim.first_lsn && **l >= base)
        .unwrap();
    restore_and_compare(&h, &archive, before, "before-hole");
    // A new base after the hole makes later points restorable again.
    h.step();
    let new_base = h.take_base();
    h.step();
    h.seal_and_archive();
    let archive = Archive::open(&h.archive_dir, None).unwrap();
    restore_and_compare(&h, &archive, new_base, "after-hole");
    let last = *h.points.keys().last().unwrap();
    restore_and_compare(&h, &archive, last, "after-hole");
    let err = archive.plan(RestoreTarget::Lsn(beyond)).unwrap_err();
    let msg = err.to_string();
    let next_base = h.bases.iter().find(|b| **b > beyond).copied().unwrap();
    assert!(next_base <= new_base);
    assert!(msg.contains(&format!("LSN {next_base}")), "{msg}");
}

#[test]
fn a_corrupt_archived_segment_is_detected_and_named() {
    let mut h = Harness::new(9, |_| {});
    h.run(steps(100), 40);
    let archive = Archive::open(&h.archive_dir, None).unwrap();
    let base = h.bases[0];
    let victim = archive
        .manifest()
        .segments
        .iter()
        .find(|s| s.first_lsn > base && s.records >= 2)
        .cloned()
        .unwrap();
    let path = archive.source_dir().join(&victim.file);
    let mut bytes = std::fs::read(&path).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x40;
    std::fs::write(&path, &bytes).unwrap();

    let last = *h.points.keys().last().unwrap();
    let plan = archive.plan(RestoreTarget::Lsn(last)).unwrap();
    let out = h.dir.path().join("corrupt.db");
    let err = restore_to_sqlite(&plan, &out).unwrap_err();
    assert!(err.is_corrupt(), "{err}");
    assert!(
        matches!(err, ArchiveError::CorruptSegment { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains(&victim.file), "{err}");
    assert!(!out.exists(), "nothing is left at the output path");
    // A point before the damaged segment is unaffected.
    let before = *h
        .points
        .keys()
        .rfind(|l| **l < victim.first_lsn && **l >= base)
        .unwrap();
    restore_and_compare(&h, &archive, before, "before-corrupt");
}

#[test]
fn the_log_keeps_what_the_archive_has_not_taken() {
    let mut h = Harness::new(13, |_| {});
    for _ in 0..60 {
        h.step();
    }
    h.take_base();
    // Another consumer that has applied everything: retention may only delete what the
    // archive has already taken.
    h.log.set_consumer("shipper", h.log.durable_lsn()).unwrap();
    let report = h.log.apply_retention().unwrap();
    assert!(report.removed.is_empty(), "{report:?}");
    let step = h.archiver.archive_sealed().unwrap();
    assert!(step.segments > 0);
    let report = h.log.apply_retention().unwrap();
    assert!(!report.removed.is_empty());
    let first_kept = h.log.first_lsn();
    assert!(first_kept <= step.archived_through.next());
    // The archive covers what the log no longer has.
    let archive = Archive::open(&h.archive_dir, None).unwrap();
    assert_eq!(archive.manifest().segments[0].first_lsn, Lsn::FIRST);
    let status = h.archiver.status();
    assert_eq!(status.archived_through_lsn, step.archived_through);
    assert_eq!(status.bases, 1);
    assert!(status.archive_bytes > 0);
}

/// The fold's tables in the form of [`common::dump`]: every table's rows, sorted.
fn fold_as_dump(fold: &Fold) -> common::Dump {
    fold.tables
        .iter()
        .map(|(name, t)| {
            let mut rows: Vec<_> = t.rows.values().cloned().collect();
            rows.sort();
            (name.clone(), rows)
        })
        .collect()
}

#[test]
fn bases_taken_while_the_application_writes_continuously_are_consistent() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let mut h = Harness::new(17, |_| {});
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let db = h.db.clone();
        let stop = stop.clone();
        std::thread::spawn(move || {
            let c = rusqlite::Connection::open(&db).unwrap();
            c.busy_timeout(Duration::from_secs(10)).unwrap();
            let mut n = 0u64;
            // Writes until the bases are taken (paced, so capture and the bases interleave
            // with commits on any machine speed).
            while !stop.load(Ordering::SeqCst) {
                n += 1;
                std::thread::sleep(Duration::from_micros(500));
                c.execute_batch(&format!(
                    "BEGIN;
                     INSERT INTO users(name, score) VALUES ('w{n}', {n});
                     UPDATE users SET score = score + 1 WHERE id = (SELECT max(id) FROM users) - 3;
                     INSERT INTO tags(name, n) VALUES ('k{}', 1) ON CONFLICT(name) DO UPDATE SET n = n + 1;
                     COMMIT;",
                    n % 50
                ))
                .unwrap();
            }
            n
        })
    };
    // Capture in short steps while the writer runs; a base every few steps.
    let mut rounds = 0;
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while h.bases.len() < 4 {
        assert!(
            std::time::Instant::now() < deadline,
            "only {} bases in 120 s",
            h.bases.len()
        );
        h.cap.step(Duration::from_millis(20)).unwrap();
        rounds += 1;
        let since = h.bases.last().map_or(Lsn::ZERO, |b| *b);
        if rounds % 8 == 0 && h.log.durable_lsn().0 > since.0 + 20 {
            h.take_base();
        }
        h.archiver.archive_sealed().unwrap();
    }
    stop.store(true, Ordering::SeqCst);
    let written = writer.join().unwrap();
    assert!(
        written > 10,
        "the writer wrote while bases were taken ({written})"
    );
    let last = h.capture_and_record();
    h.seal_and_archive();
    let archive = Archive::open(&h.archive_dir, None).unwrap();
    for &b in &h.bases {
        let plan = archive.plan(RestoreTarget::Lsn(b)).unwrap();
        assert_eq!(plan.base.lsn, b);
        let out = h.dir.path().join(format!("live-{b}.db"));
        restore_to_sqlite(&plan, &out).unwrap();
        assert_eq!(
            dump_file(&out),
            fold_as_dump(&h.fold_to(b)),
            "the base at LSN {b} equals the log folded to it"
        );
    }
    restore_and_compare(&h, &archive, last, "live-last");
}

fn reopen(h: &mut Harness) -> Result<(), ArchiveError> {
    let opts = h.archiver.options().clone();
    h.archiver = ferry_archive::Archiver::open(opts, "app", &h.log_dir)?;
    Ok(())
}

fn archive_files(h: &Harness) -> Vec<String> {
    let mut out = Vec::new();
    for sub in ["bases", "segments"] {
        for e in std::fs::read_dir(h.archive_dir.join("app").join(sub)).unwrap() {
            out.push(format!(
                "{sub}/{}",
                e.unwrap().file_name().to_string_lossy()
            ));
        }
    }
    out.sort();
    out
}

#[test]
fn a_lost_manifest_is_rebuilt_from_the_files_and_nothing_is_deleted() {
    let mut h = Harness::new(21, |_| {});
    h.run(steps(90), 30);
    let before = Archive::open(&h.archive_dir, None)
        .unwrap()
        .manifest()
        .clone();
    let files = archive_files(&h);
    assert_eq!(files.len(), before.bases.len() + before.segments.len());
    std::fs::remove_file(h.archive_dir.join("app/manifest.json")).unwrap();
    reopen(&mut h).unwrap();
    assert_eq!(archive_files(&h), files, "every file is still there");
    let archive = Archive::open(&h.archive_dir, None).unwrap();
    let m = archive.manifest();
    assert_eq!(
        m.bases
            .iter()
            .map(|b| (b.lsn, b.crc32c, b.bytes))
            .collect::<Vec<_>>(),
        before
            .bases
            .iter()
            .map(|b| (b.lsn, b.crc32c, b.bytes))
            .collect::<Vec<_>>()
    );
    assert_eq!(
        m.segments
            .iter()
            .map(|s| (s.first_lsn, s.last_lsn, s.crc32c, s.records))
            .collect::<Vec<_>>(),
        before
            .segments
            .iter()
            .map(|s| (s.first_lsn, s.last_lsn, s.crc32c, s.records))
            .collect::<Vec<_>>()
    );
    let last = *h.points.keys().last().unwrap();
    restore_and_compare(&h, &archive, last, "rebuilt");
    restore_and_compare(&h, &archive, h.bases[0], "rebuilt");
}

#[test]
fn an_older_manifest_copy_never_deletes_newer_files() {
    let mut h = Harness::new(23, |_| {});
    h.run(steps(60), 30);
    let old_manifest = std::fs::read(h.archive_dir.join("app/manifest.json")).unwrap();
    let old = Archive::open(&h.archive_dir, None)
        .unwrap()
        .manifest()
        .clone();
    h.run(steps(60), 20);
    let files = archive_files(&h);
    let newer = Archive::open(&h.archive_dir, None)
        .unwrap()
        .manifest()
        .clone();
    assert!(newer.segments.len() > old.segments.len());
    assert!(newer.bases.len() > old.bases.len());
    // The operator puts back a copy of the manifest from before the second half of the run.
    std::fs::write(h.archive_dir.join("app/manifest.json"), &old_manifest).unwrap();
    reopen(&mut h).unwrap();
    assert_eq!(archive_files(&h), files, "no newer file was deleted");
    let archive = Archive::open(&h.archive_dir, None).unwrap();
    assert_eq!(
        archive
            .manifest()
            .bases
            .iter()
            .map(|b| b.lsn)
            .collect::<Vec<_>>(),
        newer.bases.iter().map(|b| b.lsn).collect::<Vec<_>>(),
        "the newer bases are adopted again"
    );
    assert_eq!(
        archive.manifest().archived_through(),
        newer.archived_through()
    );
    let last = *h.points.keys().last().unwrap();
    restore_and_compare(&h, &archive, last, "older-copy");

    // What retention dropped from the manifest but had not deleted is still cleaned up.
    let oldest = archive.manifest().bases[0].clone();
    let kept = h.dir.path().join("old-base.db");
    std::fs::copy(archive.source_dir().join(&oldest.file), &kept).unwrap();
    let mut opts = h.archiver.options().clone();
    opts.keep_bases = 1;
    h.archiver = ferry_archive::Archiver::open(opts, "app", &h.log_dir).unwrap();
    let step = h.archiver.apply_retention(SystemTime::now()).unwrap();
    assert!(step.bases_removed.contains(&oldest.lsn));
    std::fs::copy(&kept, archive.source_dir().join(&oldest.file)).unwrap();
    reopen(&mut h).unwrap();
    assert!(
        !archive.source_dir().join(&oldest.file).exists(),
        "a base older than the manifest's oldest is retention's leftover"
    );
}

#[test]
fn bases_without_a_manifest_or_segments_are_refused_not_deleted() {
    let mut h = Harness::new(25, |_| {});
    for _ in 0..10 {
        h.step();
    }
    h.take_base();
    let app = h.archive_dir.join("app");
    std::fs::remove_file(app.join("manifest.json")).unwrap();
    for e in std::fs::read_dir(app.join("segments")).unwrap() {
        std::fs::remove_file(e.unwrap().path()).unwrap();
    }
    let files = archive_files(&h);
    assert_eq!(files.len(), 1);
    let err = reopen(&mut h).map(|_| ()).unwrap_err();
    assert!(
        matches!(err, ArchiveError::ManifestMissing { .. }),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(msg.contains(&app.display().to_string()), "{msg}");
    assert!(msg.contains("manifest.json"), "{msg}");
    assert_eq!(archive_files(&h), files, "the base is untouched");
    assert!(!app.join("manifest.json").exists());
}

/// PostgreSQL holds nothing of the source: no progress row, no table.
async fn pg_untouched(db: &TestDb) {
    let client = db.connect().await;
    let tables: i64 = client
        .query_one(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(tables, 0, "no table was created");
    let progress = ferry_pg::read_progress(&client, "app").await;
    assert!(
        !matches!(progress, Ok(Some(_))),
        "no progress row: {progress:?}"
    );
}

#[test]
fn damaged_or_missing_files_are_named_before_either_restore_starts() {
    let mut h = Harness::new(27, |_| {});
    h.run(steps(100), 40);
    let archive = Archive::open(&h.archive_dir, None).unwrap();
    let last = *h.points.keys().last().unwrap();
    let plan = archive.plan(RestoreTarget::Lsn(last)).unwrap();
    assert!(plan.segments.len() >= 2, "{} segments", plan.segments.len());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let pg_err = |plan: &ferry_archive::RestorePlan| {
        rt.block_on(async {
            let db = TestDb::new().await;
            let err = restore_to_postgres(plan, &PgRestoreOptions::new(db.url()))
                .await
                .unwrap_err();
            pg_untouched(&db).await;
            err
        })
    };
    let sqlite_err = |plan: &ferry_archive::RestorePlan, tag: &str| {
        let out = h.dir.path().join(format!("damaged-{tag}.db"));
        let err = restore_to_sqlite(plan, &out).unwrap_err();
        assert!(!out.exists(), "nothing at the output path");
        err
    };

    // A segment whose bytes disagree with its manifest entry (CRC, size, last LSN).
    let victim = plan.segments[1].1.clone();
    let mut wrong = plan.clone();
    wrong.segments[1].0.crc32c ^= 1;
    for err in [pg_err(&wrong), sqlite_err(&wrong, "crc")] {
        assert!(
            matches!(err, ArchiveError::CorruptSegment { .. }),
            "{err:?}"
        );
        let msg = err.to_string();
        assert!(msg.contains(&victim.display().to_string()), "{msg}");
        assert!(msg.contains("the manifest says"), "{msg}");
    }
    let mut wrong = plan.clone();
    wrong.segments[1].0.last_lsn = Lsn(wrong.segments[1].0.last_lsn.0 + 1);
    let err = pg_err(&wrong);
    assert!(err.to_string().contains("records"), "{err}");

    // A corrupt base: PostgreSQL checks the CRC before loading anything, SQLite while copying.
    let base_copy = h.dir.path().join("base-copy.db");
    std::fs::copy(&plan.base_path, &base_copy).unwrap();
    let mut bytes = std::fs::read(&plan.base_path).unwrap();
    let at = bytes.len() - 100;
    bytes[at] ^= 0x01;
    std::fs::write(&plan.base_path, &bytes).unwrap();
    for err in [pg_err(&plan), sqlite_err(&plan, "base")] {
        assert!(matches!(err, ArchiveError::CorruptBase { .. }), "{err:?}");
        assert!(
            err.to_string()
                .contains(&plan.base_path.display().to_string()),
            "{err}"
        );
    }
    std::fs::copy(&base_copy, &plan.base_path).unwrap();

    // A segment corrupted or removed after the plan was made.
    let (entry, path) = plan.segments.last().cloned().unwrap();
    let saved = std::fs::read(&path).unwrap();
    let mut bytes = saved.clone();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x20;
    std::fs::write(&path, &bytes).unwrap();
    for err in [pg_err(&plan), sqlite_err(&plan, "seg")] {
        assert!(err.is_corrupt(), "{err:?}");
        assert!(err.to_string().contains(&entry.file), "{err}");
    }
    std::fs::remove_file(&path).unwrap();
    for err in [pg_err(&plan), sqlite_err(&plan, "gone")] {
        assert!(matches!(err, ArchiveError::MissingFile { .. }), "{err:?}");
        assert!(err.to_string().contains(&entry.file), "{err}");
    }
    std::fs::write(&path, &saved).unwrap();

    // A newer base whose file is gone: the plan says so and uses the one before.
    h.step();
    let newer = h.take_base();
    h.step();
    h.seal_and_archive();
    let archive = Archive::open(&h.archive_dir, None).unwrap();
    let newest = *h.points.keys().last().unwrap();
    let newer_path = archive
        .source_dir()
        .join(ferry_archive::manifest::base_file_name(newer));
    std::fs::remove_file(&newer_path).unwrap();
    let plan = archive.plan(RestoreTarget::Lsn(newest)).unwrap();
    assert!(plan.base.lsn < newer);
    assert_eq!(plan.missing_bases, vec![newer_path.clone()]);
    assert!(
        archive
            .problems()
            .iter()
            .any(|p| p.contains(&newer_path.display().to_string()) && p.contains("missing")),
        "{:?}",
        archive.problems()
    );
    restore_and_compare(&h, &archive, newest, "older-base");
}

#[test]
fn a_new_snapshot_breaks_the_range_and_restores_refuse_to_cross_it() {
    let mut h = Harness::new(29, |_| {});
    h.run(steps(40), 20);
    let first_base = h.bases[0];
    let before_snapshot = h.log.durable_lsn();
    // Capture loses its state (shadow gone): it snapshots the source again into the log.
    let capture_dir = h.dir.path().join("capture");
    let cap = ferry_sqlite::SqliteCapture::open(
        &h.db,
        &h.dir.path().join("capture-2"),
        std::sync::Arc::new(ferry_sqlite::LogSink(h.log.clone())),
        ferry_sqlite::CaptureOptions {
            watch: false,
            source_id: "app".into(),
            ..Default::default()
        },
    )
    .unwrap();
    drop(std::mem::replace(&mut h.cap, cap));
    std::fs::remove_dir_all(&capture_dir).unwrap();
    let snapshot_end = h.capture_and_record();
    assert!(
        snapshot_end.0 > before_snapshot.0 + 1,
        "a new snapshot was logged"
    );
    // The base forced right after it.
    let second_base = h.take_base();
    assert_eq!(second_base, snapshot_end);
    for _ in 0..20 {
        h.step();
    }
    h.seal_and_archive();
    let archive = Archive::open(&h.archive_dir, None).unwrap();
    let snap = Lsn(before_snapshot.0 + 1);
    assert!(
        archive
            .manifest()
            .segments
            .iter()
            .any(|s| s.snapshots.contains(&snap)),
        "the manifest records the snapshot at LSN {snap}"
    );
    let ranges = archive.ranges();
    assert_eq!(ranges.len(), 2, "{ranges:?}");
    assert_eq!(ranges[0].from.lsn, first_base);
    assert_eq!(
        ranges[0].to.lsn, before_snapshot,
        "the range stops before the snapshot"
    );
    assert!(
        ranges[0]
            .ends_because
            .as_deref()
            .is_some_and(|w| w.contains("snapshotted again")),
        "{ranges:?}"
    );
    assert_eq!(ranges[1].from.lsn, second_base);
    // Inside the snapshot: refused by the plan, before any restore starts.
    for lsn in [snap, Lsn(second_base.0 - 1)] {
        let err = archive.plan(RestoreTarget::Lsn(lsn)).unwrap_err();
        let msg = err.to_string();
        assert!(err.is_not_restorable(), "{msg}");
        assert!(msg.contains("snapshotted again"), "{msg}");
        assert!(msg.contains(&format!("LSN {second_base}")), "{msg}");
        assert!(msg.contains(&format!("LSN {before_snapshot}")), "{msg}");
    }
    // Either side restores exactly.
    restore_and_compare(&h, &archive, before_snapshot, "before-snapshot");
    restore_and_compare(&h, &archive, second_base, "snapshot-base");
    let last = *h.points.keys().last().unwrap();
    restore_and_compare(&h, &archive, last, "after-snapshot");
}

#[test]
fn age_retention_with_the_window_starting_between_two_bases() {
    let mut h = Harness::new(31, |o| {
        o.keep_bases = 1;
        o.keep_for = Some(Duration::from_secs(3600));
    });
    for _ in 0..5 {
        h.step();
        std::thread::sleep(Duration::from_millis(5));
        h.take_base();
        for _ in 0..12 {
            h.step();
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    h.seal_and_archive();
    let m = Archive::open(&h.archive_dir, None)
        .unwrap()
        .manifest()
        .clone();
    assert_eq!(m.bases.len(), 5);
    let time = |i: usize| {
        m.bases[i]
            .lsn_captured_at
            .expect("the log held the base's record")
    };
    // The window starts between the third and the fourth base.
    let start = (time(2) + time(3)) / 2;
    assert!(time(2) < start && start < time(3));
    let now = SystemTime::UNIX_EPOCH + Duration::from_micros((start + 3_600_000_000) as u64);
    let step = h.archiver.apply_retention(now).unwrap();
    // The third base is the newest at or before the window's start: it and the later ones stay.
    assert_eq!(step.bases_removed, vec![h.bases[0], h.bases[1]]);
    let archive = Archive::open(&h.archive_dir, None).unwrap();
    let kept = h.bases[2];
    // Every recorded point captured inside the window restores (a sample), and the base
    // before it.
    let inside: Vec<Lsn> = h
        .points
        .iter()
        .filter(|(l, p)| **l >= kept && p.captured_at.is_some_and(|c| c >= start))
        .map(|(l, _)| *l)
        .collect();
    assert!(inside.len() > 10);
    for &lsn in inside.iter().step_by(inside.len() / 6) {
        restore_and_compare(&h, &archive, lsn, "window");
    }
    restore_and_compare(&h, &archive, kept, "window-base");
    // Points before the kept base are refused, naming retention and the kept base.
    for (&lsn, _) in h.points.iter().filter(|(l, _)| **l < kept).step_by(7) {
        let err = archive.plan(RestoreTarget::Lsn(lsn)).unwrap_err();
        let msg = err.to_string();
        assert!(err.is_not_restorable(), "{msg}");
        assert!(msg.contains("retention"), "{msg}");
        assert!(msg.contains(&format!("LSN {kept}")), "{msg}");
    }
    // So is a time before the window.
    let err = archive
        .plan(RestoreTarget::Time(time(1)))
        .map(|p| p.target)
        .unwrap_err();
    assert!(err.is_not_restorable(), "{err}");
}

#[test]
fn foreign_key_actions_do_not_fire_again_when_restoring() {
    let mut h = Harness::new(33, |_| {});
    h.app
        .execute_batch(
            "PRAGMA foreign_keys=ON;
             CREATE TABLE parent(id INTEGER PRIMARY KEY, name TEXT);
             CREATE TABLE child(id INTEGER PRIMARY KEY,
                                parent_id INT REFERENCES parent(id) ON DELETE CASCADE ON UPDATE CASCADE,
                                v TEXT);
             INSERT INTO parent VALUES (1, 'a'), (2, 'b'), (3, 'c');
             INSERT INTO child VALUES (10, 1, 'x'), (11, 1, 'y'), (20, 2, 'z'), (30, 3, 'w');",
        )
        .unwrap();
    h.capture_and_record();
    let base = h.take_base();
    let fk_on: i64 = h
        .app
        .query_row("PRAGMA foreign_keys", [], |r| r.get(0))
        .unwrap();
    assert_eq!(fk_on, 1);
    // An update of a parent's other column (replayed as delete + write by key: a cascade
    // firing then would delete its children), a cascading delete, a cascading key update.
    for sql in [
        "UPDATE parent SET name = 'a2' WHERE id = 1",
        "DELETE FROM parent WHERE id = 2",
        "UPDATE parent SET id = 4 WHERE id = 3",
        "BEGIN; UPDATE parent SET name = 'a3' WHERE id = 1; INSERT INTO child VALUES (12, 1, 'n'); COMMIT;",
    ] {
        h.app.execute_batch(sql).unwrap();
        h.capture_and_record();
    }
    let children: i64 = h
        .app
        .query_row("SELECT count(*) FROM child", [], |r| r.get(0))
        .unwrap();
    assert_eq!(children, 4, "the source's own cascades ran");
    h.seal_and_archive();
    let archive = Archive::open(&h.archive_dir, None).unwrap();
    let points: Vec<Lsn> = h.points.keys().copied().filter(|l| *l >= base).collect();
    assert_eq!(points.len(), 5);
    for lsn in points {
        restore_and_compare(&h, &archive, lsn, "fk");
    }
}
