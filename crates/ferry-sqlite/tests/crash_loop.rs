//! kill -9 of a capture process at random moments while the application writes; afterwards
//! the folded log equals the database (the fold is strict: a lost or doubled change fails it).

mod common;
use common::*;
use rand::{Rng, SeedableRng};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

fn kills() -> usize {
    std::env::var("FERRY_CRASH_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50)
}

#[test]
fn kill_9_at_random_moments_loses_and_doubles_nothing() {
    let env = Env::new();
    let app = env.app(4096);
    app.execute_batch(
        "CREATE TABLE seq(i INTEGER PRIMARY KEY, pad BLOB, n INT DEFAULT 0);
         CREATE TABLE kv(k TEXT PRIMARY KEY, v) WITHOUT ROWID;",
    )
    .unwrap();
    drop(app);
    let done = Arc::new(AtomicBool::new(false));
    let db = env.db.clone();
    let done2 = done.clone();
    let writer = std::thread::spawn(move || {
        let c = rusqlite::Connection::open(&db).unwrap();
        c.busy_timeout(Duration::from_secs(10)).unwrap();
        c.execute_batch("PRAGMA synchronous=NORMAL; PRAGMA wal_autocheckpoint=200;")
            .unwrap();
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        let mut i = 0i64;
        while !done2.load(Ordering::SeqCst) {
            i += 1;
            c.execute_batch("BEGIN").unwrap();
            c.execute(
                "INSERT INTO seq(i, pad) VALUES (?1, ?2)",
                rusqlite::params![i, vec![2u8; rng.random_range(0..5000)]],
            )
            .unwrap();
            c.execute(
                "UPDATE seq SET n = n + 1 WHERE i = ?1",
                [rng.random_range(1..=i)],
            )
            .unwrap();
            c.execute(
                "INSERT OR REPLACE INTO kv VALUES (?1, ?2)",
                rusqlite::params![format!("k{}", i % 97), i],
            )
            .unwrap();
            if i % 13 == 0 {
                c.execute("DELETE FROM seq WHERE i = ?1", [rng.random_range(1..=i)])
                    .unwrap();
            }
            c.execute_batch("COMMIT").unwrap();
            if i % 300 == 0 {
                let _ = c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
            }
            std::thread::sleep(Duration::from_micros(300));
        }
        i
    });
    let bin = env!("CARGO_BIN_EXE_ferry-sqlite-capture-test");
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    for _ in 0..kills() {
        let mut child = Command::new(bin)
            .args([&env.db, &env.work, &env.log_path])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // The fault: a random moment in the capture's life (start-up, snapshot, batches);
        // now and then after a shadow checkpoint (one per second while batches arrive), so a
        // journal that a checkpoint has already emptied once is redone too.
        let life = if rng.random_bool(0.15) {
            rng.random_range(1_100..1_800)
        } else {
            rng.random_range(5..250)
        };
        let deadline = Instant::now() + Duration::from_millis(life);
        while Instant::now() < deadline {
            if let Some(status) = child.try_wait().unwrap() {
                let mut err = String::new();
                std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
                let kept = env.dir.keep();
                panic!(
                    "capture exited early with {status}: {err} (state kept in {})",
                    kept.display()
                );
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        child.kill().unwrap();
        child.wait().unwrap();
    }
    done.store(true, Ordering::SeqCst);
    let total = writer.join().unwrap();
    assert!(total > 100);
    let out = Command::new(bin)
        .args([&env.db, &env.work, &env.log_path])
        .arg("--once")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_fold_matches(&env.log_path, &env.db);
}
