//! A small application that embeds sled and writes through ferry-sled, so that `ferry ship`
//! can replay its trees into PostgreSQL. Walk-through: `crates/ferry-sled/README.md`.
//!
//! ```sh
//! cargo run -p ferry-sled --example sled_app -- \
//!     --db /tmp/ferry-sled-demo/app --state-dir /tmp/ferry-sled-demo/state --count 1000
//! ```
//!
//! Trees and the tables they become (see `AppDecoder`):
//! - `users`: key = user id (UTF-8), value = a JSON document → `users (id TEXT PRIMARY KEY,
//!   doc JSON)`, `doc` a `jsonb` column in PostgreSQL;
//! - `counters`: key = counter name, value = u64 big-endian, updated with a merge operator →
//!   `counters (name TEXT PRIMARY KEY, count INTEGER)`;
//! - `sessions`: opaque bytes → the default `sessions (key BLOB PRIMARY KEY, value BLOB)`.

use ferry_core::{TableSchema, Value};
use ferry_sled::decoder::{column, keyed_table};
use ferry_sled::{
    Batch, BytesDecoder, CaptureOptions, CapturedDb, DecoderError, TreeDecoder, TxError,
};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

struct AppDecoder;

impl TreeDecoder for AppDecoder {
    fn table_schema(&self, tree: &str) -> TableSchema {
        match tree {
            "users" => {
                let mut doc = column("doc", "JSON", 0);
                doc.affinity = ferry_core::Affinity::Text;
                keyed_table("users", vec![column("id", "TEXT", 1), doc])
            }
            "counters" => keyed_table(
                "counters",
                vec![column("name", "TEXT", 1), column("count", "INTEGER", 0)],
            ),
            other => BytesDecoder.table_schema(other),
        }
    }

    fn decode(&self, tree: &str, key: &[u8], value: &[u8]) -> Result<Vec<Value>, DecoderError> {
        match tree {
            "users" => {
                // Refuse what is not JSON: the mover stops and names the key, nothing is lost.
                serde_json::from_slice::<serde_json::Value>(value)?;
                Ok(vec![Value::Text(key.to_vec()), Value::Text(value.to_vec())])
            }
            "counters" => {
                let n = u64::from_be_bytes(value.try_into()?);
                Ok(vec![
                    Value::Text(key.to_vec()),
                    Value::Integer(i64::try_from(n)?),
                ])
            }
            other => BytesDecoder.decode(other, key, value),
        }
    }
}

fn add_u64(_key: &[u8], old: Option<&[u8]>, add: &[u8]) -> Option<Vec<u8>> {
    let old = old
        .and_then(|o| <[u8; 8]>::try_from(o).ok())
        .map_or(0, u64::from_be_bytes);
    let add = <[u8; 8]>::try_from(add).map_or(0, u64::from_be_bytes);
    Some(old.wrapping_add(add).to_be_bytes().to_vec())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut db_path = None;
    let mut state_dir = None;
    let mut count = 1000u64;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--db" => db_path = args.next(),
            "--state-dir" => state_dir = args.next(),
            "--count" => count = args.next().ok_or("--count needs a number")?.parse()?,
            other => return Err(format!("unknown argument {other:?}").into()),
        }
    }
    let (Some(db_path), Some(state_dir)) = (db_path, state_dir) else {
        return Err("usage: sled_app --db DIR --state-dir DIR [--count N]".into());
    };

    let opts = CaptureOptions {
        decoder: Arc::new(AppDecoder),
        ..CaptureOptions::default()
    };
    let db = CapturedDb::open(&db_path, &state_dir, opts)?;
    let users = db.open_tree("users")?;
    let counters = db.open_tree("counters")?;
    let sessions = db.open_tree("sessions")?;
    counters.set_merge_operator(add_u64);

    for i in 0..count {
        let id = format!("user-{:05}", i % 500);
        // A user and the signup counter change together, or not at all.
        db.transaction(&[&users, &counters], |tx| {
            let doc = format!(r#"{{"name":"User {i}","visits":{i}}}"#);
            tx.tree(0).insert(id.as_bytes(), doc.into_bytes())?;
            tx.tree(1).merge("writes", 1u64.to_be_bytes())?;
            Ok::<_, TxError<Infallible>>(())
        })?;
        // Sessions come and go.
        let mut batch = Batch::default();
        batch.insert(format!("s{i}").into_bytes(), i.to_be_bytes().to_vec());
        if i >= 10 {
            batch.remove(format!("s{}", i - 10).into_bytes());
        }
        sessions.apply_batch(&batch)?;
        // An optimistic update: mark every seventh user, if nobody changed it meanwhile.
        if i % 7 == 0
            && let Some(current) = users.get(id.as_bytes())?
        {
            let marked = format!(r#"{{"name":"User {i}","visits":{i},"vip":true}}"#);
            let _ =
                users.compare_and_swap(id.as_bytes(), Some(current), Some(marked.into_bytes()))?;
        }
    }
    let moved = db.sync(Duration::from_secs(60))?;
    println!(
        "wrote {count} transactions; outbox position {moved} is in the log under {state_dir}/sources/{}/log",
        ferry_sled::default_source_id(&std::path::absolute(&db_path)?)
    );
    db.close(Duration::from_secs(60))?;
    Ok(())
}
