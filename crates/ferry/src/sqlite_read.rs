//! Reading a SQLite database through SQLite itself, for `verify`: every user table in key
//! order, inside one read transaction (one consistent snapshot), with values exactly as
//! SQLite's `SELECT` returns them — the oracle the shipper's conversions are checked against.
//!
//! The connection is read-only and sets `SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE`, so closing it
//! can never checkpoint or remove the application's WAL.

use ferry_core::Value;
use rusqlite::{Connection, OpenFlags, config::DbConfig};
use std::path::Path;

/// A table as verify needs it: columns and key, from SQLite's own `PRAGMA table_xinfo`.
#[derive(Clone, Debug, PartialEq)]
pub struct VerifyTable {
    pub name: String,
    pub columns: Vec<String>,
    pub decl_types: Vec<String>,
    /// Column indexes of the key in key order; empty = keyed by rowid.
    pub key: Vec<usize>,
}

pub fn open_read_only(db: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(
        db,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, true)?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    Ok(conn)
}

pub fn quote(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

/// The user tables (no `sqlite_*` internals except `sqlite_sequence`, no virtual tables or
/// their shadow tables).
pub fn tables(conn: &Connection) -> rusqlite::Result<Vec<VerifyTable>> {
    let mut stmt = conn.prepare(
        "SELECT name, sql FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' ORDER BY name",
    )?;
    let rows: Vec<(String, Option<String>)> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    let virtual_tables: Vec<String> = rows
        .iter()
        .filter(|(_, sql)| {
            sql.as_deref().is_some_and(|s| {
                s.trim_start()
                    .to_ascii_uppercase()
                    .starts_with("CREATE VIRTUAL")
            })
        })
        .map(|(n, _)| n.clone())
        .collect();
    let mut out = Vec::new();
    for (name, _) in rows {
        let shadow = virtual_tables
            .iter()
            .any(|v| name.starts_with(&format!("{v}_")));
        if virtual_tables.contains(&name) || shadow {
            continue;
        }
        let mut info = conn.prepare(&format!("PRAGMA table_xinfo({})", quote(&name)))?;
        let mut columns = Vec::new();
        let mut decl_types = Vec::new();
        let mut pk: Vec<(i64, usize)> = Vec::new();
        let cols = info.query_map([], |r| {
            Ok((
                r.get::<_, String>(1)?,
                r.get::<_, Option<String>>(2)?,
                r.get::<_, i64>(5)?,
                r.get::<_, i64>(6)?,
            ))
        })?;
        for c in cols {
            let (cname, ctype, pk_pos, hidden) = c?;
            // hidden: 1 = virtual table hidden column, 2/3 = generated columns (still selectable).
            if hidden == 1 {
                continue;
            }
            if pk_pos > 0 {
                pk.push((pk_pos, columns.len()));
            }
            columns.push(cname);
            decl_types.push(ctype.unwrap_or_default());
        }
        pk.sort();
        out.push(VerifyTable {
            name,
            columns,
            decl_types,
            key: pk.into_iter().map(|(_, i)| i).collect(),
        });
    }
    Ok(out)
}

pub use ferry_sqlite::value_of;

/// The query that reads `t` in key order (SQLite's BINARY order, which PostgreSQL
/// reproduces with `COLLATE "C"`); rowid-keyed tables select the rowid first.
pub fn select_in_key_order(t: &VerifyTable) -> String {
    let cols: Vec<String> = t.columns.iter().map(|c| quote(c)).collect();
    let (select, order) = if t.key.is_empty() {
        (format!("rowid, {}", cols.join(", ")), "rowid".to_string())
    } else {
        (
            cols.join(", "),
            t.key
                .iter()
                .map(|&i| cols[i].clone())
                .collect::<Vec<_>>()
                .join(", "),
        )
    };
    format!("SELECT {select} FROM {} ORDER BY {order}", quote(&t.name))
}

/// The query that reads the row of `t` with one key (parameters: the key's values in key
/// order), selecting what [`select_in_key_order`] selects, so [`key_and_row`] reads it.
pub fn select_by_key(t: &VerifyTable) -> String {
    let cols: Vec<String> = t.columns.iter().map(|c| quote(c)).collect();
    let (select, filter) = if t.key.is_empty() {
        (
            format!("rowid, {}", cols.join(", ")),
            "rowid = ?1".to_string(),
        )
    } else {
        (
            cols.join(", "),
            t.key
                .iter()
                .enumerate()
                .map(|(n, &i)| format!("{} = ?{}", cols[i], n + 1))
                .collect::<Vec<_>>()
                .join(" AND "),
        )
    };
    format!("SELECT {select} FROM {} WHERE {filter}", quote(&t.name))
}

/// A key value as a SQLite parameter, in the storage class it was read with (text that is
/// not UTF-8 stays bytes).
pub fn param(v: &Value) -> rusqlite::types::ToSqlOutput<'_> {
    use rusqlite::types::{ToSqlOutput, ValueRef};
    ToSqlOutput::Borrowed(match v {
        Value::Null => ValueRef::Null,
        Value::Integer(i) => ValueRef::Integer(*i),
        Value::Real(f) => ValueRef::Real(*f),
        Value::Text(t) => ValueRef::Text(t),
        Value::Blob(b) => ValueRef::Blob(b),
    })
}

/// (key, row) of one result row of [`select_in_key_order`].
pub fn key_and_row(
    t: &VerifyTable,
    r: &rusqlite::Row<'_>,
) -> rusqlite::Result<(Vec<Value>, Vec<Value>)> {
    let offset = usize::from(t.key.is_empty());
    let values: Vec<Value> = (0..t.columns.len())
        .map(|i| r.get_ref(i + offset).map(value_of))
        .collect::<Result<_, _>>()?;
    let key = if t.key.is_empty() {
        vec![value_of(r.get_ref(0)?)]
    } else {
        t.key.iter().map(|&i| values[i].clone()).collect()
    };
    Ok((key, values))
}

/// Calls `f(key, row)` for every row of `t` in key order.
pub fn for_each_row(
    conn: &Connection,
    t: &VerifyTable,
    mut f: impl FnMut(Vec<Value>, Vec<Value>) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let mut stmt = conn.prepare(&select_in_key_order(t))?;
    let mut rows = stmt.query([])?;
    while let Some(r) = rows.next()? {
        let (key, values) = key_and_row(t, r)?;
        f(key, values)?;
    }
    Ok(())
}

/// A `ferry_core::TableSchema` for `t`, keyed the way capture keys rows: the declared primary
/// key, the rowid where none is declared. It is capture's own parse of the `CREATE TABLE`
/// (NOT NULL, defaults, UNIQUE, foreign keys, collations: what the target's DDL is made of)
/// whenever that parse names the same columns and key as SQLite's catalog; otherwise the
/// catalog's columns and key alone, which is all `verify` needs.
pub fn table_schema(
    conn: &Connection,
    t: &VerifyTable,
) -> rusqlite::Result<ferry_core::TableSchema> {
    let sql: String = conn.query_row(
        "SELECT coalesce(sql, '') FROM sqlite_schema WHERE type = 'table' AND name = ?1",
        [&t.name],
        |r| r.get(0),
    )?;
    let from_catalog = catalog_schema(t, sql);
    match ferry_sqlite::schema::parse_create_table(&t.name, &from_catalog.sql) {
        Ok(parsed)
            if parsed.key == from_catalog.key
                && parsed.columns.len() == t.columns.len()
                && parsed
                    .columns
                    .iter()
                    .zip(&t.columns)
                    .all(|(c, n)| &c.name == n) =>
        {
            Ok(parsed)
        }
        Ok(_) => {
            tracing::warn!(table = %t.name, "the CREATE TABLE statement parses to other columns than SQLite's catalog lists; only columns and key are mapped (no NOT NULL, defaults, UNIQUE or foreign keys)");
            Ok(from_catalog)
        }
        Err(e) => {
            tracing::warn!(table = %t.name, error = %e, "cannot parse the CREATE TABLE statement; only columns and key are mapped (no NOT NULL, defaults, UNIQUE or foreign keys)");
            Ok(from_catalog)
        }
    }
}

fn catalog_schema(t: &VerifyTable, sql: String) -> ferry_core::TableSchema {
    use ferry_core::{Affinity, Column, KeyColumns, TableSchema};
    let upper = sql.to_ascii_uppercase();
    let without_rowid = upper
        .split_whitespace()
        .collect::<Vec<_>>()
        .windows(2)
        .any(|w| w == ["WITHOUT", "ROWID"]);
    let columns: Vec<Column> = t
        .columns
        .iter()
        .zip(&t.decl_types)
        .enumerate()
        .map(|(i, (name, decl))| Column {
            name: name.clone(),
            decl_type: decl.clone(),
            affinity: Affinity::from_declared_type(decl),
            not_null: false,
            default_sql: None,
            default_value: None,
            pk_position: t
                .key
                .iter()
                .position(|&k| k == i)
                .map_or(0, |p| p as u32 + 1),
            generated: None,
            collation: None,
        })
        .collect();
    let rowid_alias = match t.key.as_slice() {
        [k] if !without_rowid && t.decl_types[*k].eq_ignore_ascii_case("INTEGER") => Some(*k),
        _ => None,
    };
    TableSchema {
        name: t.name.clone(),
        columns,
        key: if t.key.is_empty() {
            KeyColumns::Rowid
        } else {
            KeyColumns::PrimaryKey(t.key.clone())
        },
        rowid_alias,
        without_rowid,
        strict: false,
        autoincrement: upper.contains("AUTOINCREMENT"),
        unique: vec![],
        foreign_keys: vec![],
        sql,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_keys_and_order() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("a.db");
        let c = Connection::open(&p).unwrap();
        c.execute_batch(
            "CREATE TABLE u (id INTEGER PRIMARY KEY, name TEXT);
             CREATE TABLE w (a TEXT, b INT, c REAL, PRIMARY KEY (c, a)) WITHOUT ROWID;
             CREATE TABLE n (x, y);
             CREATE TABLE s (id INTEGER PRIMARY KEY AUTOINCREMENT, v);
             INSERT INTO u VALUES (2, 'b'), (1, 'a');
             INSERT INTO w VALUES ('z', 1, 2.0), ('a', 2, 2.0), ('q', 3, 1.5);
             INSERT INTO n VALUES (1, 2), (3, 4);
             INSERT INTO s (v) VALUES (1);",
        )
        .unwrap();
        drop(c);
        let conn = open_read_only(&p).unwrap();
        let ts = tables(&conn).unwrap();
        let names: Vec<&str> = ts.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(
            names,
            ["n", "s", "u", "w"],
            "sqlite_sequence is internal here"
        );
        let w = ts.iter().find(|t| t.name == "w").unwrap();
        assert_eq!(w.key, [2, 0]);
        let n = ts.iter().find(|t| t.name == "n").unwrap();
        assert!(n.key.is_empty(), "keyed by rowid");
        let mut keys = Vec::new();
        for_each_row(&conn, w, |k, _| {
            keys.push(k);
            Ok(())
        })
        .unwrap();
        assert_eq!(
            keys,
            vec![
                vec![Value::Real(1.5), Value::text("q")],
                vec![Value::Real(2.0), Value::text("a")],
                vec![Value::Real(2.0), Value::text("z")]
            ]
        );
        let mut rows = Vec::new();
        for_each_row(&conn, n, |k, r| {
            rows.push((k, r));
            Ok(())
        })
        .unwrap();
        assert_eq!(
            rows[1],
            (
                vec![Value::Integer(2)],
                vec![Value::Integer(3), Value::Integer(4)]
            )
        );
    }

    #[test]
    fn table_schema_carries_constraints_the_target_ddl_needs() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("a.db");
        let c = Connection::open(&p).unwrap();
        c.execute_batch(
            "CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT UNIQUE, name TEXT NOT NULL DEFAULT 'x');
             CREATE TABLE ev (id INTEGER PRIMARY KEY, user_id INTEGER REFERENCES users(id) ON DELETE CASCADE, g INT GENERATED ALWAYS AS (id * 2) VIRTUAL);",
        )
        .unwrap();
        drop(c);
        let conn = open_read_only(&p).unwrap();
        let ts = tables(&conn).unwrap();
        let users = table_schema(&conn, ts.iter().find(|t| t.name == "users").unwrap()).unwrap();
        assert_eq!(users.unique, vec![vec![1]], "email UNIQUE");
        assert!(users.columns[2].not_null, "name NOT NULL");
        assert_eq!(users.columns[2].default_value, Some(Value::text("x")));
        assert_eq!(users.rowid_alias, Some(0));
        let ev = table_schema(&conn, ts.iter().find(|t| t.name == "ev").unwrap()).unwrap();
        assert_eq!(ev.foreign_keys.len(), 1);
        assert_eq!(ev.foreign_keys[0].parent_table, "users");
        assert_eq!(ev.foreign_keys[0].on_delete.as_deref(), Some("CASCADE"));
        assert_eq!(
            ev.columns
                .iter()
                .map(|c| c.name.as_str())
                .collect::<Vec<_>>(),
            ["id", "user_id", "g"],
            "the same columns the snapshot's SELECT reads"
        );
    }
}
