//! Read-back for `ferry verify`: a PostgreSQL table's rows in key order, in a form
//! `ferry_core::compare::compare_sorted` can merge against SQLite's rows, and the
//! comparison rule.
//!
//! The rule is the shipper's own conversion: a SQLite value equals a PostgreSQL value when
//! converting it for the column's type ([`crate::types::PgType::convert`]) gives the same
//! [`Datum`] (NaN stored by SQLite as NULL, −0.0 in REAL columns, integral reals, booleans
//! 0/1, timestamps from text/Julian day/Unix time all follow from that one function).
//!
//! Key order: rows are read by keyset pagination ordered by the key columns, text keys with
//! `COLLATE "C"` (byte order of UTF-8, which is SQLite's BINARY collation); integer, real
//! and blob keys order as in SQLite. Keys come back as SQLite-comparable values.

use crate::error::PgError;
use crate::ident::quote_ident;
use crate::mapping::TableMap;
use crate::types::{Datum, PgType};
use ferry_core::Value;
use postgres_types::ToSql;
use tokio_postgres::GenericClient;

/// One row read back: its key (SQLite-comparable) and its column values in map order.
pub type TargetRow = (Vec<Value>, Vec<Datum>);

fn is_texty(t: &PgType) -> bool {
    matches!(t, PgType::Text | PgType::Varchar(_) | PgType::Other(_))
}

fn select_expr(t: &PgType, col: &str) -> String {
    match t {
        PgType::Other(_) => format!("{}::text", quote_ident(col)),
        _ => quote_ident(col),
    }
}

/// Reads rows of a mapped table in key order, `limit` at a time, after `after` (the key of
/// the last row of the previous page, as returned in [`TargetRow`]'s datums).
pub struct TargetRowReader {
    map: TableMap,
    last_key: Option<Vec<Datum>>,
    page: i64,
    done: bool,
}

impl TargetRowReader {
    pub fn new(map: TableMap, page: usize) -> TargetRowReader {
        TargetRowReader {
            map,
            last_key: None,
            page: i64::try_from(page.max(1)).unwrap_or(10_000),
            done: false,
        }
    }

    /// The next page of rows (empty when the table is exhausted).
    pub async fn next_page<C: GenericClient>(
        &mut self,
        client: &C,
    ) -> Result<Vec<TargetRow>, PgError> {
        if self.done {
            return Ok(vec![]);
        }
        let m = &self.map;
        let cols = select_list(m);
        let key_exprs: Vec<String> = m
            .key
            .iter()
            .map(|&k| {
                let c = &m.columns[k];
                if is_texty(&c.pg_type) {
                    format!("{}::text COLLATE \"C\"", quote_ident(&c.target))
                } else {
                    quote_ident(&c.target)
                }
            })
            .collect();
        let mut sql = format!("SELECT {} FROM {}", cols.join(", "), m.qualified());
        let params: Vec<&(dyn ToSql + Sync)>;
        let key_params: Vec<Datum>;
        if let Some(last) = &self.last_key {
            let ph: Vec<String> = m
                .key
                .iter()
                .enumerate()
                .map(|(i, &k)| {
                    let c = &m.columns[k];
                    if is_texty(&c.pg_type) {
                        format!("${}::text COLLATE \"C\"", i + 1)
                    } else {
                        format!("${}::{}", i + 1, c.pg_type.sql_name())
                    }
                })
                .collect();
            sql.push_str(&format!(
                " WHERE ({}) > ({})",
                key_exprs.join(", "),
                ph.join(", ")
            ));
            key_params = last.clone();
            params = key_params
                .iter()
                .map(|d| d as &(dyn ToSql + Sync))
                .collect();
        } else {
            params = vec![];
        }
        sql.push_str(&format!(
            " ORDER BY {} LIMIT {}",
            key_exprs.join(", "),
            self.page
        ));
        let rows = client
            .query(&sql, &params)
            .await
            .map_err(|e| PgError::pg(format!("reading {} for verify", m.qualified()), e))?;
        let out = decode_rows(m, &rows)?;
        if (rows.len() as i64) < self.page {
            self.done = true;
        }
        if let Some((_, d)) = out.last() {
            self.last_key = Some(m.key.iter().map(|&k| d[k].clone()).collect());
        }
        Ok(out)
    }
}

/// The rows of a mapped table whose keys are among `keys` (SQLite key values, in key order
/// of the map), read by key in one statement per `chunk` keys: the cutover compares only what
/// changed since its full pre-verify, so its write pause does not grow with the table. A key
/// that cannot be converted to the column's type cannot be in PostgreSQL and is not asked for.
/// Rows come back in no particular order.
pub async fn rows_with_keys<C: GenericClient>(
    client: &C,
    map: &TableMap,
    keys: &[Vec<Value>],
    chunk: usize,
) -> Result<Vec<TargetRow>, PgError> {
    let m = map;
    let cols = select_list(m);
    let key_exprs: Vec<String> = m
        .key
        .iter()
        .map(|&k| {
            let c = &m.columns[k];
            match c.pg_type {
                PgType::Other(_) => format!("{}::text", quote_ident(&c.target)),
                _ => quote_ident(&c.target),
            }
        })
        .collect();
    let arrays: Vec<String> = m
        .key
        .iter()
        .enumerate()
        .map(|(i, &k)| {
            let c = &m.columns[k];
            let element = match c.pg_type {
                PgType::Other(_) => "text".to_string(),
                ref t => t.sql_name(),
            };
            format!("${}::{element}[]", i + 1)
        })
        .collect();
    let sql = format!(
        "SELECT {} FROM {} WHERE ({}) IN (SELECT * FROM unnest({}))",
        cols.join(", "),
        m.qualified(),
        key_exprs.join(", "),
        arrays.join(", ")
    );
    let stmt = client
        .prepare(&sql)
        .await
        .map_err(|e| PgError::pg(format!("reading {} by key for verify", m.qualified()), e))?;
    let mut out = Vec::with_capacity(keys.len());
    for part in keys.chunks(chunk.max(1)) {
        // One array per key column; keys whose values PostgreSQL cannot hold are left out.
        let mut columns: Vec<Vec<Datum>> = vec![Vec::with_capacity(part.len()); m.key.len()];
        'keys: for key in part {
            let mut datums = Vec::with_capacity(m.key.len());
            for (pos, &k) in m.key.iter().enumerate() {
                let c = &m.columns[k];
                let Some(v) = key.get(pos) else {
                    continue 'keys;
                };
                match c.pg_type.convert(v, c.affinity) {
                    Ok(Datum::Null) | Err(_) => continue 'keys,
                    Ok(d) => datums.push(d),
                }
            }
            for (column, d) in columns.iter_mut().zip(datums) {
                column.push(d);
            }
        }
        if columns.first().is_none_or(Vec::is_empty) {
            continue;
        }
        let params: Vec<&(dyn ToSql + Sync)> =
            columns.iter().map(|c| c as &(dyn ToSql + Sync)).collect();
        let rows = client
            .query(&stmt, &params)
            .await
            .map_err(|e| PgError::pg(format!("reading {} by key for verify", m.qualified()), e))?;
        out.extend(decode_rows(m, &rows)?);
    }
    Ok(out)
}

/// The select list of a mapped table's columns, in map order.
fn select_list(m: &TableMap) -> Vec<String> {
    m.columns
        .iter()
        .map(|c| select_expr(&c.pg_type, &c.target))
        .collect()
}

/// Rows of [`select_list`] as [`TargetRow`]s: their datums, and their keys as SQLite values.
fn decode_rows(m: &TableMap, rows: &[tokio_postgres::Row]) -> Result<Vec<TargetRow>, PgError> {
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let mut datums = Vec::with_capacity(m.columns.len());
        for i in 0..m.columns.len() {
            let d: Datum = r
                .try_get(i)
                .map_err(|e| PgError::pg(format!("decoding a row of {}", m.qualified()), e))?;
            datums.push(d);
        }
        let key: Vec<Value> = m.key.iter().map(|&k| datums[k].to_value()).collect();
        out.push((key, datums));
    }
    Ok(out)
}

/// Whether a SQLite row (full image; `rowid` for rowid-keyed tables) equals a row read back
/// from PostgreSQL, by the shipper's conversion rule.
pub fn row_matches(map: &TableMap, sqlite_row: &[Value], rowid: Option<i64>, pg: &[Datum]) -> bool {
    map.columns.iter().zip(pg).all(|(c, d)| {
        let v = map.value_of(c, sqlite_row, rowid);
        match c.pg_type.convert(&v, c.affinity) {
            Ok(conv) => match (&c.pg_type, &conv) {
                // Other types come back as the server's text form; compare as given.
                (PgType::Other(_), _) => conv.same_as(d) || other_text_equal(&conv, d),
                _ => conv.same_as(d),
            },
            Err(_) => false,
        }
    })
}

fn other_text_equal(a: &Datum, b: &Datum) -> bool {
    match (a, b) {
        (Datum::Text(x), Datum::Text(y)) => x.trim() == y.trim(),
        _ => false,
    }
}
