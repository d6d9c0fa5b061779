//! A small application for the crash-loop test: it writes sequence-numbered transactions
//! through ferry-sled's wrappers and prints `committed <i>` after each one returns, until it
//! is killed (SIGKILL) or has written `--count` of them.
//!
//! Transaction `i` (1-based) is, atomically:
//! - `seq[i BE] = "v<i>"`;
//! - `meta["total"]` merged with +1 (a u64 counter: the number of committed transactions);
//! - if `i % 3 == 0`, remove `seq[i - 2]`;
//! - if `i % 7 == 0`, compare-and-swap `seq[i - 1]` from `"v<i-1>"` to `"w<i-1>"`;
//! - if `i % 11 == 0`, a separate captured `insert` into `side[i BE]` after the transaction
//!   (so kills also land between two captured writes; a restart completes it).
//!
//! After the first commit that finds the initial snapshot in the log it prints
//! `snapshot done`.
//!
//! So the database after `n` transactions is a pure function of `n`, which the test
//! recomputes; on restart the application resumes at `meta["total"] + 1`.
//!
//! Usage: `ferry-sled-crash-app <sled-dir> <state-dir> <flush|noflush> [--count N] [--sync-first]`
//! (`--sync-first`: wait until the log has caught up before the first write).

use ferry_sled::{CaptureOptions, CapturedDb, TxError};
use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

fn add_u64(_key: &[u8], old: Option<&[u8]>, add: &[u8]) -> Option<Vec<u8>> {
    let old = old
        .and_then(|o| <[u8; 8]>::try_from(o).ok())
        .map_or(0, u64::from_be_bytes);
    let add = <[u8; 8]>::try_from(add).map_or(0, u64::from_be_bytes);
    Some((old + add).to_be_bytes().to_vec())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ferry-sled-crash-app: {e}");
            ExitCode::from(2)
        }
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 4 {
        return Err(
            "usage: ferry-sled-crash-app <sled-dir> <state-dir> <flush|noflush> [--count N] [--sync-first]"
                .into(),
        );
    }
    let flush = match args[3].as_str() {
        "flush" => true,
        "noflush" => false,
        other => return Err(format!("mode must be flush or noflush, not {other:?}").into()),
    };
    let mut count = u64::MAX;
    let mut sync_first = false;
    let mut rest = args[4..].iter();
    while let Some(a) = rest.next() {
        match a.as_str() {
            "--count" => count = rest.next().ok_or("--count needs a number")?.parse()?,
            "--sync-first" => sync_first = true,
            other => return Err(format!("unknown argument {other:?}").into()),
        }
    }
    let opts = CaptureOptions {
        flush_on_commit: flush,
        // Small chunks and batches so that kills land inside snapshots and batches.
        snapshot_chunk_rows: 50,
        mover_batch_entries: 16,
        ..CaptureOptions::default()
    };
    let db = CapturedDb::open(&args[1], &args[2], opts)?;
    let seq = db.open_tree("seq")?;
    let meta = db.open_tree("meta")?;
    let side = db.open_tree("side")?;
    meta.set_merge_operator(add_u64);

    let total = meta
        .get("total")?
        .and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
        .map_or(0, u64::from_be_bytes);
    // A kill between transaction `total` and its side insert left the side insert undone.
    if total > 0 && total % 11 == 0 && side.get(total.to_be_bytes())?.is_none() {
        side.insert(total.to_be_bytes(), &b"side"[..])?;
    }
    if sync_first {
        // Start writing only once the initial snapshot (and the outbox left by an earlier
        // run) is in the log.
        db.sync(Duration::from_secs(120))?;
    }
    let mut out = std::io::stdout().lock();
    writeln!(out, "resumed {total}")?;
    out.flush()?;
    let mut snapshot_reported = false;
    for i in total + 1..=total.saturating_add(count) {
        db.transaction(&[&seq, &meta], |tx| {
            let (s, m) = (tx.tree(0), tx.tree(1));
            s.insert(i.to_be_bytes(), format!("v{i}").into_bytes())?;
            m.merge("total", 1u64.to_be_bytes())?;
            if i % 3 == 0 {
                s.remove((i - 2).to_be_bytes())?;
            }
            if i % 7 == 0 {
                let prev = (i - 1).to_be_bytes();
                let _swapped = s.compare_and_swap(
                    prev,
                    Some(format!("v{}", i - 1)),
                    Some(format!("w{}", i - 1).into_bytes()),
                )?;
            }
            Ok::<_, TxError<std::convert::Infallible>>(())
        })?;
        if i % 11 == 0 {
            side.insert(i.to_be_bytes(), &b"side"[..])?;
        }
        writeln!(out, "committed {i}")?;
        if !snapshot_reported && db.snapshot_done() {
            // The test waits for this to kill the app at a point after the initial snapshot.
            writeln!(out, "snapshot done")?;
            snapshot_reported = true;
        }
        out.flush()?;
    }
    db.close(Duration::from_secs(60))?;
    Ok(())
}
