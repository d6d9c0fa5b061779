//! Reading table definitions back from PostgreSQL's catalog: the target types of a table
//! ferry created (after a restart the catalog, not a re-profile, is the truth) and the
//! application's own tables in `existing` mode, matched to SQLite's by name.

use crate::error::PgError;
use crate::ident::target_name;
use crate::mapping::{ColumnMap, ColumnSource, TableMap};
use crate::types::PgType;
use ferry_core::{Affinity, ROWID_COLUMN, TableSchema};
use tokio_postgres::GenericClient;

#[derive(Clone, Debug)]
pub struct CatalogColumn {
    pub name: String,
    pub type_name: String,
    pub not_null: bool,
    pub has_default: bool,
    /// `a` (always), `d` (by default) or empty.
    pub identity: String,
}

#[derive(Clone, Debug)]
pub struct CatalogTable {
    pub schema: String,
    pub name: String,
    pub columns: Vec<CatalogColumn>,
    pub primary_key: Vec<String>,
    /// Unique indexes (column lists), the primary key's included.
    pub unique_keys: Vec<Vec<String>>,
}

/// Finds a table by exact name, or failing that, case-insensitively.
pub async fn find_table<C: GenericClient>(
    client: &C,
    schema: &str,
    name: &str,
) -> Result<Option<CatalogTable>, PgError> {
    let rows = client
        .query(
            "SELECT c.oid, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname = $1 AND lower(c.relname) = lower($2) AND c.relkind IN ('r', 'p')
             ORDER BY c.relname = $2 DESC, c.relname",
            &[&schema, &name],
        )
        .await
        .map_err(|e| PgError::pg(format!("looking up table {schema}.{name}"), e))?;
    let Some(row) = rows.first() else {
        return Ok(None);
    };
    let oid: u32 = row.get(0);
    let relname: String = row.get(1);
    let cols = client
        .query(
            "SELECT a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull, a.atthasdef,
                    a.attidentity::text
             FROM pg_attribute a
             WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''
             ORDER BY a.attnum",
            &[&oid],
        )
        .await
        .map_err(|e| PgError::pg(format!("reading the columns of {schema}.{relname}"), e))?;
    let columns = cols
        .iter()
        .map(|r| CatalogColumn {
            name: r.get(0),
            type_name: r.get(1),
            not_null: r.get(2),
            has_default: r.get(3),
            identity: r.get(4),
        })
        .collect();
    let idx = client
        .query(
            "SELECT i.indisprimary,
                    array(SELECT a.attname FROM unnest(i.indkey::int2[]) WITH ORDINALITY k(attnum, ord)
                          JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
                          ORDER BY k.ord)::text[]
             FROM pg_index i
             WHERE i.indrelid = $1 AND i.indisunique AND i.indpred IS NULL AND i.indexprs IS NULL",
            &[&oid],
        )
        .await
        .map_err(|e| PgError::pg(format!("reading the keys of {schema}.{relname}"), e))?;
    let mut primary_key = Vec::new();
    let mut unique_keys = Vec::new();
    for r in idx {
        let primary: bool = r.get(0);
        let cols: Vec<String> = r.get(1);
        if primary {
            primary_key = cols.clone();
        }
        unique_keys.push(cols);
    }
    Ok(Some(CatalogTable {
        schema: schema.to_string(),
        name: relname,
        columns,
        primary_key,
        unique_keys,
    }))
}

fn find_col<'a>(table: &'a CatalogTable, wanted: &str) -> Option<&'a CatalogColumn> {
    table.columns.iter().find(|c| c.name == wanted).or_else(|| {
        table
            .columns
            .iter()
            .find(|c| c.name.eq_ignore_ascii_case(wanted))
    })
}

/// Maps a SQLite table onto an existing PostgreSQL table by column name (exact, then
/// case-insensitive). Problems are collected, not returned one at a time, so the operator
/// sees all of them before any row is copied.
pub fn map_onto(
    source: &TableSchema,
    table: &CatalogTable,
    keep_case: bool,
    problems: &mut Vec<String>,
) -> Option<TableMap> {
    map_onto_with(source, table, keep_case, false, problems)
}

/// [`map_onto`], where `key_follows` says that the table's key index is built after the
/// initial load (see [`crate::mapping::key_built_after_load`]) and need not exist yet.
pub fn map_onto_with(
    source: &TableSchema,
    table: &CatalogTable,
    keep_case: bool,
    key_follows: bool,
    problems: &mut Vec<String>,
) -> Option<TableMap> {
    let mut columns = Vec::new();
    let mut key = Vec::new();
    let start_problems = problems.len();
    if source.keyed_by_rowid() {
        match find_col(table, ROWID_COLUMN) {
            Some(c) => {
                key.push(0);
                columns.push(ColumnMap {
                    source_name: ROWID_COLUMN.into(),
                    source: ColumnSource::Rowid,
                    affinity: Affinity::Integer,
                    target: c.name.clone(),
                    pg_type: PgType::parse(&c.type_name),
                    is_key: true,
                    default_value: None,
                })
            }
            None => problems.push(format!(
                "table {:?} has no declared primary key in SQLite, so rows are identified by rowid; {}.{} needs a {ROWID_COLUMN} column (or declare the key)",
                source.name, table.schema, table.name
            )),
        }
    }
    let key_names: Vec<String> = source.key_names().iter().map(|s| s.to_string()).collect();
    for (i, col) in source.columns.iter().enumerate() {
        let wanted = target_name(&col.name, keep_case);
        match find_col(table, &wanted) {
            Some(c) => {
                let is_key = key_names.iter().any(|k| k.eq_ignore_ascii_case(&col.name));
                columns.push(ColumnMap {
                    source_name: col.name.clone(),
                    source: ColumnSource::Column(i),
                    affinity: col.affinity,
                    target: c.name.clone(),
                    pg_type: PgType::parse(&c.type_name),
                    is_key,
                    default_value: col.default_value.clone(),
                });
            }
            None => problems.push(format!(
                "column {:?} of SQLite table {:?} has no column in {}.{} (columns there: {})",
                col.name,
                source.name,
                table.schema,
                table.name,
                table
                    .columns
                    .iter()
                    .map(|c| c.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        }
    }
    if !source.keyed_by_rowid() {
        for k in &key_names {
            if let Some(pos) = columns
                .iter()
                .position(|c| c.source_name.eq_ignore_ascii_case(k))
            {
                key.push(pos);
            }
        }
    }
    for c in &table.columns {
        let mapped = columns.iter().any(|m| m.target == c.name);
        if !mapped && c.not_null && !c.has_default && c.identity.is_empty() {
            problems.push(format!(
                "column {}.{}.{} is NOT NULL without a default and SQLite table {:?} has nothing for it",
                table.schema, table.name, c.name, source.name
            ));
        }
    }
    let mut key_targets: Vec<String> = key.iter().map(|&i| columns[i].target.clone()).collect();
    key_targets.sort();
    let covered = table.unique_keys.iter().any(|u| {
        let mut u = u.clone();
        u.sort();
        u == key_targets
    });
    if !key_targets.is_empty() && !covered && !key_follows {
        problems.push(format!(
            "{}.{} has no primary key or unique index on ({}), the key of SQLite table {:?}; ferry needs one to apply updates by key",
            table.schema,
            table.name,
            key_targets.join(", "),
            source.name
        ));
    }
    if problems.len() > start_problems {
        return None;
    }
    Some(TableMap {
        source: source.clone(),
        target_schema: table.schema.clone(),
        target_table: table.name.clone(),
        columns,
        key,
    })
}
