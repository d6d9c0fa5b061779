//! File-notification hints: capture watches the database's directory only while it waits
//! (each write the application makes to a watched directory costs it an inotify event), a
//! hint wakes a waiting capture, and a caller's hint callback fires once per step.

mod common;

use common::Env;
use ferry_sqlite::{CaptureOptions, SqliteCapture};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

fn watching_capture(env: &Env) -> SqliteCapture {
    let opts = CaptureOptions {
        watch: true,
        poll_interval: Duration::from_secs(30),
        ..CaptureOptions::default()
    };
    SqliteCapture::open(&env.db, &env.work, env.log(), opts).unwrap()
}

/// A database with a table, and a watching capture caught up with it.
fn idle_capture() -> (Env, rusqlite::Connection, SqliteCapture) {
    let env = Env::new();
    let app = env.app(4096);
    app.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB)")
        .unwrap();
    let mut cap = watching_capture(&env);
    assert!(cap.step(Duration::from_secs(5)).unwrap().caught_up);
    (env, app, cap)
}

fn insert(c: &rusqlite::Connection, n: usize) {
    c.execute_batch("BEGIN").unwrap();
    for _ in 0..n {
        c.execute("INSERT INTO t(v) VALUES (randomblob(100))", [])
            .unwrap();
    }
    c.execute_batch("COMMIT").unwrap();
}

/// Waits (bounded) for `f` to hold.
fn eventually(what: &str, f: impl Fn() -> bool) {
    let end = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn a_hint_wakes_a_waiting_capture_long_before_its_poll_interval() {
    let (env, _app, mut cap) = idle_capture();
    let db = env.db.clone();
    let writer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        let c = rusqlite::Connection::open(db).unwrap();
        insert(&c, 1);
    });
    let stop = AtomicBool::new(false);
    let t = Instant::now();
    cap.wait_for_change(Duration::from_secs(30), &stop);
    let waited = t.elapsed();
    writer.join().unwrap();
    assert!(
        waited < Duration::from_secs(15),
        "woken by the hint, not the 30 s poll interval: waited {waited:?}"
    );
    let s = cap.step(Duration::from_secs(5)).unwrap();
    assert_eq!(s.transactions, 1);
}

/// Runs steps with no budget while a writer keeps committing, until one cannot catch up.
fn make_busy(cap: &mut SqliteCapture, env: &Env) -> bool {
    let stop_writer = Arc::new(AtomicBool::new(false));
    let (db, s) = (env.db.clone(), stop_writer.clone());
    let writer = std::thread::spawn(move || {
        let c = rusqlite::Connection::open(db).unwrap();
        while !s.load(Ordering::SeqCst) {
            insert(&c, 5);
        }
    });
    let mut busy = false;
    for _ in 0..500 {
        if !cap.step(Duration::ZERO).unwrap().caught_up {
            busy = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    stop_writer.store(true, Ordering::SeqCst);
    writer.join().unwrap();
    busy
}

#[test]
fn a_busy_step_stops_watching_and_waiting_watches_again() {
    let (env, _app, mut cap) = idle_capture();
    assert!(
        !cap.watch_for_changes(),
        "an idle capture keeps watching (armed when opened)"
    );
    assert!(
        make_busy(&mut cap, &env),
        "a step found the writer ahead of it"
    );
    assert!(
        cap.watch_for_changes(),
        "the busy step stopped watching, so watching again is new"
    );
    assert!(!cap.watch_for_changes(), "and then it is watching");
    // Waiting right after a busy step returns at once (for one more poll), whatever the
    // timeout: changes made while unwatched raised no hint.
    assert!(make_busy(&mut cap, &env));
    let t = Instant::now();
    cap.wait_for_change(Duration::from_secs(30), &AtomicBool::new(false));
    assert!(t.elapsed() < Duration::from_secs(15), "{:?}", t.elapsed());
    while !cap.step(Duration::from_secs(5)).unwrap().caught_up {}
    common::assert_fold_matches(&env.log_path, &env.db);
}

#[test]
fn the_hint_callback_fires_once_per_step() {
    let (_env, app, mut cap) = idle_capture();
    let fired = Arc::new(AtomicUsize::new(0));
    let f = fired.clone();
    cap.on_change_hint(Box::new(move || {
        f.fetch_add(1, Ordering::SeqCst);
    }));
    for _ in 0..5 {
        insert(&app, 3);
    }
    eventually("the first hint", || fired.load(Ordering::SeqCst) >= 1);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        fired.load(Ordering::SeqCst),
        1,
        "coalesced until the next step"
    );
    assert!(cap.step(Duration::from_secs(5)).unwrap().caught_up);
    insert(&app, 1);
    eventually("a hint after the step", || {
        fired.load(Ordering::SeqCst) >= 2
    });
    assert!(cap.step(Duration::from_secs(5)).unwrap().transactions >= 1);
}
