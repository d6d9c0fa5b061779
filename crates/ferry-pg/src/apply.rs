//! Set-wise application of a batch's net effect to PostgreSQL.
//!
//! A batch is folded to its net effect per (table, key): a key that ends present is an
//! upsert of its last image, a key that ends absent and existed before the batch is a
//! delete, a key inserted and deleted inside the batch is nothing. Inside a SQLite
//! transaction there is no order, and across the transactions of a batch only the end state
//! matters, so the fold loses nothing PostgreSQL could show.
//!
//! Per table, the rows go by binary COPY into a temporary staging table (`_op` 0 = delete,
//! 1 = upsert, columns `c0..cN` in the wire types), then:
//! 1. deletes, children first: `DELETE FROM t USING stage WHERE _op = 0 AND key matches`;
//! 2. upserts, parents first: `INSERT … SELECT … FROM stage WHERE _op = 1 ON CONFLICT (key)
//!    DO UPDATE` (the `DeleteInsert` strategy deletes every staged key first and inserts
//!    plainly: the fallback for unique values that swap against constraints that cannot be
//!    deferred, i.e. an application's own schema).
//!
//! Types ferry does not know travel as text and are cast by the server (`c3::mood`).
//! The caller runs all of it, plus the progress update, in one transaction.

use crate::error::PgError;
use crate::ident::quote_ident;
use crate::mapping::TableMap;
use crate::types::{Datum, PgType};
use ferry_core::{Lsn, Op, RowChange, Value};
use postgres_types::{ToSql, Type};
use std::collections::{BTreeMap, BTreeSet};
use tokio_postgres::binary_copy::BinaryCopyInWriter;

/// The net effect of a batch on one table.
#[derive(Debug, Default)]
pub struct TableDelta {
    pub upserts: BTreeMap<Vec<Value>, Vec<Value>>,
    pub deletes: BTreeSet<Vec<Value>>,
}

impl TableDelta {
    pub fn is_empty(&self) -> bool {
        self.upserts.is_empty() && self.deletes.is_empty()
    }
}

/// Whether a key existed before the batch, and its image at the end (None: absent).
type NetChange = (bool, Option<Vec<Value>>);

/// Folds row changes (in log order) to their net effect per table and key.
pub fn fold_changes<'a>(
    changes: impl IntoIterator<Item = &'a RowChange>,
) -> BTreeMap<String, TableDelta> {
    // (existed before the batch, final image)
    let mut per: BTreeMap<String, BTreeMap<Vec<Value>, NetChange>> = BTreeMap::new();
    for ch in changes {
        let t = per.entry(ch.table.clone()).or_default();
        let e = t
            .entry(ch.key.clone())
            .or_insert((ch.op != Op::Insert, None));
        e.1 = match ch.op {
            Op::Delete => None,
            _ => ch.after.clone(),
        };
    }
    per.into_iter()
        .map(|(table, keys)| {
            let mut d = TableDelta::default();
            for (key, (existed, fin)) in keys {
                match fin {
                    Some(row) => {
                        d.upserts.insert(key, row);
                    }
                    None if existed => {
                        d.deletes.insert(key);
                    }
                    None => {}
                }
            }
            (table, d)
        })
        .collect()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Strategy {
    Upsert,
    DeleteInsert,
}

/// The statements for one table's staging, derived from its map.
pub(crate) struct StagedSql {
    pub create_stage: String,
    pub copy: String,
    pub delete: String,
    pub delete_all: String,
    pub upsert: String,
    pub insert: String,
    /// Rows already in the target with a staged key: (all, differing from the staged row,
    /// up to 20 differing keys described as `(id=1)`).
    pub existing_summary: String,
    pub types: Vec<Type>,
}

fn stage_name(map: &TableMap) -> String {
    // A name per (table, column types): a schema change makes a new staging table.
    let mut h: u64 = 0xcbf29ce484222325;
    let mut feed = |s: &str| {
        for b in s.bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x100000001b3);
        }
        h ^= 0xff;
        h = h.wrapping_mul(0x100000001b3);
    };
    feed(&map.qualified());
    for c in &map.columns {
        feed(&c.target);
        feed(&c.pg_type.sql_name());
    }
    format!("ferry_stage_{h:016x}")
}

fn cast_expr(col: usize, t: &PgType) -> String {
    match t {
        PgType::Other(name) => format!("s.c{col}::{name}"),
        _ => format!("s.c{col}"),
    }
}

pub(crate) fn staged_sql(map: &TableMap) -> StagedSql {
    let stage = stage_name(map);
    let mut stage_cols = vec!["_op smallint".to_string()];
    let mut types = vec![Type::INT2];
    for (i, c) in map.columns.iter().enumerate() {
        stage_cols.push(format!("c{i} {}", c.pg_type.wire_sql_name()));
        types.push(c.pg_type.wire_type());
    }
    let copy_cols: Vec<String> = std::iter::once("_op".to_string())
        .chain((0..map.columns.len()).map(|i| format!("c{i}")))
        .collect();
    let key_match: Vec<String> = map
        .key
        .iter()
        .map(|&k| {
            format!(
                "t.{} = {}",
                quote_ident(&map.columns[k].target),
                cast_expr(k, &map.columns[k].pg_type)
            )
        })
        .collect();
    let target_cols: Vec<String> = map.columns.iter().map(|c| quote_ident(&c.target)).collect();
    let select_cols: Vec<String> = map
        .columns
        .iter()
        .enumerate()
        .map(|(i, c)| cast_expr(i, &c.pg_type))
        .collect();
    let key_cols: Vec<String> = map
        .key
        .iter()
        .map(|&k| quote_ident(&map.columns[k].target))
        .collect();
    let updates: Vec<String> = map
        .columns
        .iter()
        .enumerate()
        .filter(|(i, _)| !map.key.contains(i))
        .map(|(_, c)| format!("{0} = EXCLUDED.{0}", quote_ident(&c.target)))
        .collect();
    let on_conflict = if updates.is_empty() {
        format!("ON CONFLICT ({}) DO NOTHING", key_cols.join(", "))
    } else {
        format!(
            "ON CONFLICT ({}) DO UPDATE SET {}",
            key_cols.join(", "),
            updates.join(", ")
        )
    };
    let insert_head = format!(
        "INSERT INTO {} ({}) OVERRIDING SYSTEM VALUE SELECT {} FROM pg_temp.{} s WHERE s._op = 1",
        map.qualified(),
        target_cols.join(", "),
        select_cols.join(", "),
        stage
    );
    StagedSql {
        create_stage: format!(
            "CREATE TEMP TABLE IF NOT EXISTS {stage} ({}) ON COMMIT DELETE ROWS",
            stage_cols.join(", ")
        ),
        copy: format!(
            "COPY pg_temp.{stage} ({}) FROM STDIN (FORMAT binary)",
            copy_cols.join(", ")
        ),
        delete: format!(
            "DELETE FROM {} t USING pg_temp.{stage} s WHERE s._op = 0 AND {}",
            map.qualified(),
            key_match.join(" AND ")
        ),
        delete_all: format!(
            "DELETE FROM {} t USING pg_temp.{stage} s WHERE {}",
            map.qualified(),
            key_match.join(" AND ")
        ),
        upsert: format!("{insert_head} {on_conflict}"),
        insert: insert_head,
        existing_summary: existing_summary_sql(map, &stage, &key_match),
        types,
    }
}

/// A query over the target and its staging table: how many staged rows already exist, how
/// many of those differ from the staged row (what a load really replaces), and the first
/// differing keys, spelled like [`TableMap::describe_key`]. Types without an equality
/// operator (json, unknown types) compare by their text.
fn existing_summary_sql(map: &TableMap, stage: &str, key_match: &[String]) -> String {
    let side = |i: usize, c: &crate::mapping::ColumnMap| -> (String, String) {
        let t = format!("t.{}", quote_ident(&c.target));
        match c.pg_type {
            PgType::Json | PgType::Other(_) => (
                format!("{t}::text"),
                format!("{}::text", cast_expr(i, &c.pg_type)),
            ),
            _ => (t, cast_expr(i, &c.pg_type)),
        }
    };
    let (left, right): (Vec<String>, Vec<String>) = map
        .columns
        .iter()
        .enumerate()
        .filter(|(i, _)| !map.key.contains(i))
        .map(|(i, c)| side(i, c))
        .unzip();
    let differs = if left.is_empty() {
        "false".to_string()
    } else {
        format!(
            "ROW({}, NULL) IS DISTINCT FROM ROW({}, NULL)",
            left.join(", "),
            right.join(", ")
        )
    };
    let key_text: Vec<String> = map
        .key
        .iter()
        .map(|&k| {
            let c = &map.columns[k];
            format!(
                "{} || coalesce(t.{}::text, 'NULL')",
                crate::mapping::quote_literal(&format!("{}=", c.source_name)),
                quote_ident(&c.target)
            )
        })
        .collect();
    format!(
        "SELECT count(*), count(*) FILTER (WHERE d), \
                coalesce((array_agg(k ORDER BY k) FILTER (WHERE d))[1:20], '{{}}'::text[]) \
         FROM (SELECT {differs} AS d, '(' || concat_ws(', ', {}) || ')' AS k \
               FROM {} t JOIN pg_temp.{stage} s ON s._op = 1 AND {}) x",
        key_text.join(", "),
        map.qualified(),
        key_match.join(" AND ")
    )
}

/// Converts one row for the staging table: `_op`, then every target column. Deletes carry
/// only the key. A value that does not fit is the source-stopping [`PgError::BadValue`].
pub(crate) fn stage_row(
    map: &TableMap,
    key: &[Value],
    row: Option<&[Value]>,
    applied: Lsn,
) -> Result<Vec<Datum>, PgError> {
    let mut out = Vec::with_capacity(map.columns.len() + 1);
    out.push(Datum::Int2(i16::from(row.is_some())));
    let rowid = if map.source.keyed_by_rowid() {
        key.first().and_then(Value::as_i64)
    } else {
        None
    };
    for (i, c) in map.columns.iter().enumerate() {
        let v = match row {
            Some(r) => map.value_of(c, r, rowid),
            None => match map.key.iter().position(|&k| k == i) {
                Some(kpos) => key.get(kpos).cloned().unwrap_or(Value::Null),
                None => {
                    out.push(Datum::Null);
                    continue;
                }
            },
        };
        let d = c
            .pg_type
            .convert(&v, c.affinity)
            .map_err(|e| bad_value(map, key, c, &v, &e.to_string(), applied))?;
        if d == Datum::Null && c.is_key {
            return Err(bad_value(
                map,
                key,
                c,
                &v,
                "a key column cannot be NULL in PostgreSQL",
                applied,
            ));
        }
        out.push(d);
    }
    Ok(out)
}

pub(crate) fn bad_value(
    map: &TableMap,
    key: &[Value],
    c: &crate::mapping::ColumnMap,
    v: &Value,
    reason: &str,
    applied: Lsn,
) -> PgError {
    PgError::BadValue(Box::new(crate::error::BadValue {
        table: map.source.name.clone(),
        key: map.describe_key(key),
        column: c.source_name.clone(),
        value: crate::types::truncate_for_message(&format!("{v} ({})", v.type_name())),
        pg_type: c.pg_type.sql_name(),
        reason: reason.to_string(),
        applied,
    }))
}

/// Copies converted rows into the table's staging table.
pub(crate) async fn copy_rows(
    tx: &tokio_postgres::Transaction<'_>,
    sql: &StagedSql,
    rows: impl IntoIterator<Item = Vec<Datum>>,
    context: &str,
) -> Result<u64, PgError> {
    tx.batch_execute(&sql.create_stage)
        .await
        .map_err(|e| PgError::pg(format!("creating the staging table for {context}"), e))?;
    let sink = tx
        .copy_in(&sql.copy)
        .await
        .map_err(|e| PgError::pg(format!("starting COPY into staging for {context}"), e))?;
    let writer = BinaryCopyInWriter::new(sink, &sql.types);
    let mut writer = std::pin::pin!(writer);
    for row in rows {
        let refs: Vec<&(dyn ToSql + Sync)> = row.iter().map(|d| d as &(dyn ToSql + Sync)).collect();
        writer
            .as_mut()
            .write(&refs)
            .await
            .map_err(|e| PgError::pg(format!("COPY into staging for {context}"), e))?;
    }
    writer
        .finish()
        .await
        .map_err(|e| PgError::pg(format!("finishing COPY into staging for {context}"), e))
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ApplyCounts {
    pub upserted: u64,
    pub deleted: u64,
}

/// Applies folded deltas in one open transaction: stage every table, deletes children
/// first, then upserts parents first.
pub(crate) async fn apply_deltas(
    tx: &tokio_postgres::Transaction<'_>,
    maps: &BTreeMap<String, TableMap>,
    parents_first: &[String],
    deltas: &BTreeMap<String, TableDelta>,
    strategy: Strategy,
    applied: Lsn,
) -> Result<ApplyCounts, PgError> {
    let mut counts = ApplyCounts::default();
    let mut staged: Vec<(&String, StagedSql)> = Vec::new();
    // Stage in children-first order, deleting as we go.
    for name in parents_first.iter().rev() {
        let Some(delta) = deltas.get(name) else {
            continue;
        };
        if delta.is_empty() {
            continue;
        }
        let Some(map) = maps.get(name) else {
            continue;
        };
        let sql = staged_sql(map);
        let mut rows = Vec::with_capacity(delta.upserts.len() + delta.deletes.len());
        for key in &delta.deletes {
            rows.push(stage_row(map, key, None, applied)?);
        }
        for (key, row) in &delta.upserts {
            rows.push(stage_row(map, key, Some(row), applied)?);
        }
        copy_rows(tx, &sql, rows, &map.qualified()).await?;
        let del = match strategy {
            Strategy::Upsert if delta.deletes.is_empty() => Ok(0),
            Strategy::Upsert => tx.execute(&sql.delete, &[]).await,
            Strategy::DeleteInsert => tx.execute(&sql.delete_all, &[]).await,
        }
        .map_err(|e| PgError::pg(format!("deleting from {}", map.qualified()), e))?;
        counts.deleted += del.min(delta.deletes.len() as u64);
        staged.push((name, sql));
    }
    staged.reverse();
    for (name, sql) in &staged {
        let delta = &deltas[*name];
        if delta.upserts.is_empty() {
            continue;
        }
        let stmt = match strategy {
            Strategy::Upsert => &sql.upsert,
            Strategy::DeleteInsert => &sql.insert,
        };
        let n = tx
            .execute(stmt, &[])
            .await
            .map_err(|e| PgError::pg(format!("applying rows to {}", maps[*name].qualified()), e))?;
        counts.upserted += n;
    }
    Ok(counts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fold_nets_out() {
        let k = |i: i64| vec![Value::Integer(i)];
        let r = |i: i64, v: i64| vec![Value::Integer(i), Value::Integer(v)];
        let changes = vec![
            RowChange::insert("t", k(1), r(1, 10)),
            RowChange::update("t", k(1), r(1, 10), r(1, 11)),
            RowChange::insert("t", k(2), r(2, 20)),
            RowChange::delete("t", k(2), r(2, 20)),
            RowChange::delete("t", k(3), r(3, 30)),
            RowChange::delete("t", k(4), r(4, 40)),
            RowChange::insert("t", k(4), r(4, 41)),
        ];
        let d = fold_changes(&changes);
        let t = &d["t"];
        assert_eq!(t.upserts.get(&k(1)), Some(&r(1, 11)));
        assert!(!t.upserts.contains_key(&k(2)) && !t.deletes.contains(&k(2)));
        assert!(t.deletes.contains(&k(3)));
        assert_eq!(t.upserts.get(&k(4)), Some(&r(4, 41)));
        assert!(!t.deletes.contains(&k(4)));
    }
}
