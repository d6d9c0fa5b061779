//! The JSON form of records, as `ferry log inspect --json` prints them (one object per line).
//!
//! Values: JSON null, numbers (integers exact; reals as numbers, or `{"$real": "inf"}` /
//! `"-inf"` / `"nan"` where JSON has no number), strings for valid UTF-8 text,
//! `{"$text_hex": "<hex>"}` for text that is not valid UTF-8, and `{"$blob": "<hex>"}`.
//! Column names come from the schemas the log itself carries (snapshot and schema-change
//! records); a [`Catalog`] follows them while records pass.

use crate::{Lsn, Record, RowChange, SchemaChange, SchemaChangeKind, TableSchema, Value};
use serde_json::{Map, Value as Json, json};
use std::collections::HashMap;

/// JSON form of one value.
pub fn value_to_json(v: &Value) -> Json {
    match v {
        Value::Null => Json::Null,
        Value::Integer(i) => json!(i),
        Value::Real(r) => {
            if r.is_finite() {
                json!(r)
            } else if r.is_nan() {
                json!({"$real": "nan"})
            } else if *r > 0.0 {
                json!({"$real": "inf"})
            } else {
                json!({"$real": "-inf"})
            }
        }
        Value::Text(b) => match std::str::from_utf8(b) {
            Ok(s) => json!(s),
            Err(_) => json!({"$text_hex": hex::encode(b)}),
        },
        Value::Blob(b) => json!({"$blob": hex::encode(b)}),
    }
}

/// Parses the JSON form of a value back (the inverse of [`value_to_json`]).
pub fn value_from_json(j: &Json) -> Option<Value> {
    Some(match j {
        Json::Null => Value::Null,
        Json::Number(n) => match n.as_i64() {
            Some(i) => Value::Integer(i),
            None => Value::Real(n.as_f64()?),
        },
        Json::String(s) => Value::text(s.as_str()),
        Json::Object(o) if o.len() == 1 => {
            let (k, v) = o.iter().next()?;
            let s = v.as_str()?;
            match k.as_str() {
                "$blob" => Value::Blob(hex::decode(s).ok()?),
                "$text_hex" => Value::Text(hex::decode(s).ok()?),
                "$real" => Value::Real(match s {
                    "inf" => f64::INFINITY,
                    "-inf" => f64::NEG_INFINITY,
                    "nan" => f64::NAN,
                    _ => return None,
                }),
                _ => return None,
            }
        }
        _ => return None,
    })
}

/// The table schemas in force at the current point of a log.
#[derive(Clone, Debug, Default)]
pub struct Catalog {
    tables: HashMap<String, TableSchema>,
}

impl Catalog {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn get(&self, table: &str) -> Option<&TableSchema> {
        self.tables.get(table)
    }

    /// Follows the schema information a record carries.
    pub fn observe(&mut self, record: &Record) {
        match record {
            Record::SnapshotBegin(s) => {
                self.tables = s
                    .tables
                    .iter()
                    .map(|t| (t.name.clone(), t.clone()))
                    .collect();
            }
            Record::Transaction(t) => {
                for sc in &t.schema_changes {
                    self.observe_schema_change(sc);
                }
            }
            _ => {}
        }
    }

    fn observe_schema_change(&mut self, sc: &SchemaChange) {
        match &sc.kind {
            SchemaChangeKind::DropTable => {
                self.tables.remove(&sc.table);
            }
            SchemaChangeKind::RenameTable { from } => {
                self.tables.remove(from);
                if let Some(s) = &sc.schema {
                    self.tables.insert(sc.table.clone(), s.clone());
                }
            }
            SchemaChangeKind::CreateTable | SchemaChangeKind::AlterTable => {
                if let Some(s) = &sc.schema {
                    self.tables.insert(sc.table.clone(), s.clone());
                }
            }
            SchemaChangeKind::Other => {}
        }
    }

    fn image(&self, table: &str, values: &[Value]) -> Json {
        let mut m = Map::new();
        let schema = self.tables.get(table);
        for (i, v) in values.iter().enumerate() {
            let name = schema
                .and_then(|s| s.columns.get(i))
                .map_or_else(|| format!("${i}"), |c| c.name.clone());
            m.insert(name, value_to_json(v));
        }
        Json::Object(m)
    }

    fn key(&self, table: &str, key: &[Value]) -> Json {
        let mut m = Map::new();
        let names: Vec<String> = match self.tables.get(table) {
            Some(s) => s.key_names().into_iter().map(String::from).collect(),
            None => (0..key.len()).map(|i| format!("$key{i}")).collect(),
        };
        for (i, v) in key.iter().enumerate() {
            let name = names.get(i).cloned().unwrap_or_else(|| format!("$key{i}"));
            m.insert(name, value_to_json(v));
        }
        Json::Object(m)
    }

    fn change(&self, ch: &RowChange) -> Json {
        json!({
            "table": ch.table,
            "op": ch.op.as_str(),
            "key": self.key(&ch.table, &ch.key),
            "after": ch.after.as_ref().map(|a| self.image(&ch.table, a)),
            "before": ch.before.as_ref().map(|b| self.image(&ch.table, b)),
        })
    }

    /// The JSON object for one record at `lsn`. Call [`Catalog::observe`] with the record
    /// first, so that a transaction's own schema changes name its columns.
    pub fn record_to_json(&self, lsn: Lsn, record: &Record) -> Json {
        let mut o = Map::new();
        o.insert("lsn".into(), json!(lsn.0));
        o.insert("type".into(), json!(record.type_name()));
        if let Some(p) = record.position() {
            o.insert("position".into(), json!(p.to_string()));
        }
        if let Some(at) = record.captured_at() {
            o.insert("captured_at".into(), json!(micros_to_rfc3339(at)));
        }
        match record {
            Record::Transaction(t) => {
                if !t.schema_changes.is_empty() {
                    let scs: Vec<Json> = t
                        .schema_changes
                        .iter()
                        .map(|sc| {
                            json!({
                                "kind": format!("{:?}", sc.kind),
                                "table": sc.table,
                                "sql": sc.after.as_ref().and_then(|r| r.sql.clone()),
                                "columns": sc.schema.as_ref().map(|s| s.columns.iter().map(|c| json!({"name": c.name, "type": c.decl_type})).collect::<Vec<_>>()),
                            })
                        })
                        .collect();
                    o.insert("schema_changes".into(), Json::Array(scs));
                }
                if t.resync {
                    o.insert("resync".into(), json!(true));
                }
                o.insert(
                    "changes".into(),
                    Json::Array(t.changes.iter().map(|c| self.change(c)).collect()),
                );
            }
            Record::SnapshotBegin(s) => {
                o.insert(
                    "tables".into(),
                    json!(s.tables.iter().map(|t| t.name.clone()).collect::<Vec<_>>()),
                );
            }
            Record::SnapshotRows(r) => {
                o.insert("table".into(), json!(r.table));
                let schema = self.tables.get(&r.table);
                let changes: Vec<Json> = r
                    .rows
                    .iter()
                    .map(|row| {
                        let key =
                            schema.map_or_else(Vec::new, |s| s.key_of(&row.values, row.rowid));
                        json!({
                            "table": r.table,
                            "op": "insert",
                            "key": self.key(&r.table, &key),
                            "after": self.image(&r.table, &row.values),
                            "before": Json::Null,
                        })
                    })
                    .collect();
                o.insert("changes".into(), Json::Array(changes));
            }
            Record::SnapshotEnd(s) => {
                let counts: Map<String, Json> = s
                    .row_counts
                    .iter()
                    .map(|(t, n)| (t.clone(), json!(n)))
                    .collect();
                o.insert("row_counts".into(), Json::Object(counts));
            }
            Record::Heartbeat(_) => {}
            Record::Cutover(c) => {
                o.insert("last_applied".into(), json!(c.last_applied.0));
                o.insert("note".into(), json!(c.note));
            }
        }
        Json::Object(o)
    }
}

/// Formats microseconds since the epoch as RFC 3339 UTC with microseconds.
pub fn micros_to_rfc3339(us: i64) -> String {
    let secs = us.div_euclid(1_000_000);
    let micros = us.rem_euclid(1_000_000);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{micros:06}Z",
        sod / 3600,
        (sod % 3600) / 60,
        sod % 60
    )
}

// Howard Hinnant's days-to-civil algorithm.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip_through_json() {
        for v in [
            Value::Null,
            Value::Integer(i64::MIN),
            Value::Integer(i64::MAX),
            Value::Real(1.5),
            Value::Real(f64::INFINITY),
            Value::text("héllo"),
            Value::Text(vec![0xff, 0xfe]),
            Value::Blob(vec![]),
            Value::Blob(vec![0, 1, 2]),
        ] {
            assert_eq!(
                value_from_json(&value_to_json(&v)),
                Some(v.clone()),
                "{v:?}"
            );
        }
        assert_eq!(
            value_to_json(&Value::Text(vec![0xff])),
            json!({"$text_hex": "ff"})
        );
    }

    #[test]
    fn rfc3339() {
        assert_eq!(micros_to_rfc3339(0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(
            micros_to_rfc3339(1_700_000_000_123_456),
            "2023-11-14T22:13:20.123456Z"
        );
    }
}
