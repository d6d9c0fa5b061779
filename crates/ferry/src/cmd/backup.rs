//! `ferry backup list` (what an archive holds, what it can restore, and which archived LSN a
//! PostgreSQL target reflects) and `ferry backup now` (asks the running `ferry run` for a base
//! over its control socket).
//!
//! The pairing: `ferry.progress` holds, in the same transaction as the rows, the LSN of the
//! last log record PostgreSQL reflects. A PostgreSQL backup (pg_dump, a base backup) taken at
//! any moment therefore equals the archive restored to the LSN `ferry.progress` holds in that
//! backup; `backup list --target` shows that LSN now and whether the archive can restore it.

use crate::cli::{BackupListArgs, BackupNowArgs};
use crate::control::{Client, Event, Request};
use anyhow::Context;
use ferry_archive::{Archive, RestorableRange};
use ferry_core::json::micros_to_rfc3339;
use serde_json::{Value as Json, json};
use std::process::ExitCode;

fn time(t: Option<i64>) -> Json {
    t.map_or(Json::Null, |t| Json::String(micros_to_rfc3339(t)))
}

fn range_json(r: &RestorableRange) -> Json {
    json!({
        "from": {"lsn": r.from.lsn.0, "captured_at": time(r.from.captured_at)},
        "to": {"lsn": r.to.lsn.0, "captured_at": time(r.to.captured_at)},
        "ends_because": r.ends_because,
    })
}

fn size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// What PostgreSQL reflects for one source, as `ferry.progress` says.
async fn pairing(url: &str, source_id: &str, archive: &Archive) -> anyhow::Result<Json> {
    let target = ferry_pg::PgTarget::parse(url).context("the PostgreSQL target")?;
    let client = target.connect().await?;
    let Some(p) = ferry_pg::read_progress(&client, source_id).await? else {
        return Ok(json!({"source_id": source_id, "found": false}));
    };
    let same_log = p.log_id == archive.manifest().log_id;
    let restorable = same_log
        && archive
            .ranges()
            .iter()
            .any(|r| r.from.lsn <= p.lsn && p.lsn <= r.to.lsn);
    Ok(json!({
        "source_id": source_id,
        "found": true,
        "lsn": p.lsn.0,
        "log_id": p.log_id,
        "state": format!("{:?}", p.state).to_lowercase(),
        "captured_at": time(p.captured_at),
        "applied_at": time(Some(p.applied_at)),
        "same_log": same_log,
        "restorable": restorable,
    }))
}

pub fn list(a: BackupListArgs) -> anyhow::Result<ExitCode> {
    let sources = match &a.source_id {
        Some(id) => vec![id.clone()],
        None => Archive::sources(&a.archive_dir)?,
    };
    if sources.is_empty() {
        anyhow::bail!(
            "{} holds no archived source (no <source-id>/manifest.json): is it the [archive] dir of a running ferry?",
            a.archive_dir.display()
        );
    }
    let rt = match &a.target {
        Some(_) => Some(
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?,
        ),
        None => None,
    };
    let mut out = Vec::new();
    for id in &sources {
        let archive = Archive::open(&a.archive_dir, Some(id))?;
        let m = archive.manifest();
        let ranges = archive.ranges();
        let pg = match (&rt, &a.target) {
            (Some(rt), Some(url)) => Some(rt.block_on(pairing(url, id, &archive))?),
            _ => None,
        };
        out.push(json!({
            "source_id": id,
            "log_id": m.log_id,
            "source_identity": m.source_identity,
            "archived_through": m.archived_through().0,
            "archive_bytes": m.total_bytes(),
            "segments": m.segments.len(),
            "bases": m.bases.iter().map(|b| json!({
                "lsn": b.lsn.0,
                "taken_at": time(Some(b.taken_at)),
                "state_as_of": time(b.lsn_captured_at),
                "bytes": b.bytes,
                "file": b.file,
            })).collect::<Vec<_>>(),
            "restorable": ranges.iter().map(range_json).collect::<Vec<_>>(),
            "problems": archive.problems(),
            "postgres": pg,
        }));
    }
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({ "sources": out }))?
        );
        return Ok(ExitCode::SUCCESS);
    }
    for s in &out {
        println!(
            "source {}  (log {}, archived through LSN {}, {} in {} bases + {} segments)",
            s["source_id"].as_str().unwrap_or_default(),
            s["log_id"].as_str().unwrap_or_default(),
            s["archived_through"],
            size(s["archive_bytes"].as_u64().unwrap_or(0)),
            s["bases"].as_array().map_or(0, Vec::len),
            s["segments"]
        );
        println!(
            "  {:>12}  {:<28}  {:<28}  {:>10}",
            "BASE LSN", "TAKEN AT", "STATE AS OF", "SIZE"
        );
        for b in s["bases"].as_array().into_iter().flatten() {
            println!(
                "  {:>12}  {:<28}  {:<28}  {:>10}",
                b["lsn"],
                b["taken_at"].as_str().unwrap_or("-"),
                b["state_as_of"].as_str().unwrap_or("-"),
                size(b["bytes"].as_u64().unwrap_or(0))
            );
        }
        for p in s["problems"].as_array().into_iter().flatten() {
            println!("  PROBLEM: {}", p.as_str().unwrap_or_default());
        }
        let ranges = s["restorable"].as_array().cloned().unwrap_or_default();
        if ranges.is_empty() {
            println!("  restorable: nothing yet (no base: `ferry backup now`)");
        }
        for r in &ranges {
            let point = |p: &Json| match p["captured_at"].as_str() {
                Some(t) => format!("LSN {} ({t})", p["lsn"]),
                None => format!("LSN {}", p["lsn"]),
            };
            println!(
                "  restorable: {} .. {}{}",
                point(&r["from"]),
                point(&r["to"]),
                r["ends_because"]
                    .as_str()
                    .map(|w| format!("  [ends: {w}]"))
                    .unwrap_or_default()
            );
        }
        if let Some(pg) = s.get("postgres").filter(|p| !p.is_null()) {
            if pg["found"].as_bool() == Some(true) {
                println!(
                    "  PostgreSQL reflects LSN {} (captured {}, {}): a PostgreSQL backup taken now pairs with archive LSN {}{}",
                    pg["lsn"],
                    pg["captured_at"].as_str().unwrap_or("-"),
                    pg["state"].as_str().unwrap_or("-"),
                    pg["lsn"],
                    if pg["same_log"].as_bool() != Some(true) {
                        " — but it follows another log than this archive"
                    } else if pg["restorable"].as_bool() == Some(true) {
                        " (restorable from this archive)"
                    } else {
                        " (not restorable from this archive yet)"
                    }
                );
            } else {
                println!("  PostgreSQL: no ferry.progress row for this source");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn now(a: BackupNowArgs) -> anyhow::Result<ExitCode> {
    let socket = ferry_core::state_dir::StateDir::new(&a.state_dir).control_socket();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let mut client = Client::connect(&socket).await?;
        client.send(&Request::BackupNow).await?;
        while let Some(event) = client.next_event().await? {
            match event {
                Event::Step { message, .. } | Event::Switch { message } => {
                    eprintln!("{message}")
                }
                Event::Done { detail } => {
                    println!("{}", serde_json::to_string(&detail)?);
                    return Ok(ExitCode::SUCCESS);
                }
                Event::Error { message, .. } => anyhow::bail!("backup failed: {message}"),
            }
        }
        anyhow::bail!("the running ferry closed the connection without finishing the backup")
    })
}
