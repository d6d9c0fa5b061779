//! Folding a log into table contents.
//!
//! The fold is the meaning of a log: applying its records in LSN order gives, for every
//! table, the rows the source held at the last applied record. Tests use it as the oracle
//! against SQLite's own `SELECT`, `restore` uses it, and it is deliberately strict — an insert
//! of a key that exists, an update or delete of a key that does not, or a before-image that
//! differs from the folded row is an error, because each of those means a change was lost or
//! doubled somewhere upstream.

use crate::{
    KeyColumns, Op, Record, RowChange, SchemaChange, SchemaChangeKind, TableSchema, Value,
};
use std::collections::BTreeMap;

/// A table's folded rows, keyed by the table's key values.
#[derive(Clone, Debug, PartialEq)]
pub struct FoldedTable {
    pub schema: TableSchema,
    pub rows: BTreeMap<Vec<Value>, Vec<Value>>,
}

/// The contents of every table after a sequence of records.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Fold {
    pub tables: BTreeMap<String, FoldedTable>,
    /// Records applied so far.
    pub records: u64,
    /// A snapshot has begun but not ended.
    pub in_snapshot: bool,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum FoldError {
    #[error("change to unknown table {table:?}")]
    UnknownTable { table: String },
    #[error("insert into {table:?} of key {key:?} which already exists")]
    DuplicateInsert { table: String, key: Vec<Value> },
    #[error("{op} in {table:?} of key {key:?} which does not exist")]
    MissingRow {
        table: String,
        op: &'static str,
        key: Vec<Value>,
    },
    #[error(
        "{op} in {table:?} of key {key:?}: before-image {before:?} differs from the folded row {folded:?}"
    )]
    BeforeImageMismatch {
        table: String,
        op: &'static str,
        key: Vec<Value>,
        before: Vec<Value>,
        folded: Vec<Value>,
    },
    #[error("{op} in {table:?} lacks its {which} image")]
    MissingImage {
        table: String,
        op: &'static str,
        which: &'static str,
    },
    #[error("schema change for {table:?} without the parsed schema")]
    MissingSchema { table: String },
    #[error("snapshot rows for {table:?} outside a snapshot")]
    RowsOutsideSnapshot { table: String },
}

impl Fold {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn apply(&mut self, record: &Record) -> Result<(), FoldError> {
        self.records += 1;
        match record {
            Record::SnapshotBegin(s) => {
                // A snapshot replaces everything known before it.
                self.tables = s
                    .tables
                    .iter()
                    .map(|t| {
                        (
                            t.name.clone(),
                            FoldedTable {
                                schema: t.clone(),
                                rows: BTreeMap::new(),
                            },
                        )
                    })
                    .collect();
                self.in_snapshot = true;
            }
            Record::SnapshotRows(rows) => {
                if !self.in_snapshot {
                    return Err(FoldError::RowsOutsideSnapshot {
                        table: rows.table.clone(),
                    });
                }
                let t = self.table_mut(&rows.table)?;
                for r in &rows.rows {
                    let key = t.schema.key_of(&r.values, r.rowid);
                    if t.rows.insert(key.clone(), r.values.clone()).is_some() {
                        return Err(FoldError::DuplicateInsert {
                            table: rows.table.clone(),
                            key,
                        });
                    }
                }
            }
            Record::SnapshotEnd(_) => self.in_snapshot = false,
            Record::Transaction(txn) => {
                for sc in &txn.schema_changes {
                    self.apply_schema_change(sc)?;
                }
                for ch in &txn.changes {
                    self.apply_change(ch)?;
                }
            }
            Record::Heartbeat(_) | Record::Cutover(_) => {}
        }
        Ok(())
    }

    fn table_mut(&mut self, name: &str) -> Result<&mut FoldedTable, FoldError> {
        self.tables
            .get_mut(name)
            .ok_or_else(|| FoldError::UnknownTable {
                table: name.to_string(),
            })
    }

    fn apply_schema_change(&mut self, sc: &SchemaChange) -> Result<(), FoldError> {
        let need_schema = || {
            sc.schema.clone().ok_or_else(|| FoldError::MissingSchema {
                table: sc.table.clone(),
            })
        };
        match &sc.kind {
            SchemaChangeKind::CreateTable => {
                let schema = need_schema()?;
                self.tables.insert(
                    sc.table.clone(),
                    FoldedTable {
                        schema,
                        rows: BTreeMap::new(),
                    },
                );
            }
            SchemaChangeKind::DropTable => {
                self.tables.remove(&sc.table);
            }
            SchemaChangeKind::AlterTable => {
                let schema = need_schema()?;
                let old = self.tables.remove(&sc.table);
                self.tables
                    .insert(sc.table.clone(), carry_over(old, schema));
            }
            SchemaChangeKind::RenameTable { from } => {
                let schema = need_schema()?;
                let old = self.tables.remove(from);
                self.tables
                    .insert(sc.table.clone(), carry_over(old, schema));
            }
            SchemaChangeKind::Other => {}
        }
        Ok(())
    }

    fn apply_change(&mut self, ch: &RowChange) -> Result<(), FoldError> {
        let table = ch.table.clone();
        let t = self.table_mut(&ch.table)?;
        let op = ch.op.as_str();
        match ch.op {
            Op::Insert => {
                let after = ch.after.clone().ok_or(FoldError::MissingImage {
                    table: table.clone(),
                    op,
                    which: "after",
                })?;
                if t.rows.contains_key(&ch.key) {
                    return Err(FoldError::DuplicateInsert {
                        table,
                        key: ch.key.clone(),
                    });
                }
                t.rows.insert(ch.key.clone(), after);
            }
            Op::Update | Op::Delete => {
                let before = ch.before.as_ref().ok_or(FoldError::MissingImage {
                    table: table.clone(),
                    op,
                    which: "before",
                })?;
                let Some(folded) = t.rows.get(&ch.key) else {
                    return Err(FoldError::MissingRow {
                        table,
                        op,
                        key: ch.key.clone(),
                    });
                };
                if folded != before {
                    return Err(FoldError::BeforeImageMismatch {
                        table,
                        op,
                        key: ch.key.clone(),
                        before: before.clone(),
                        folded: folded.clone(),
                    });
                }
                if ch.op == Op::Update {
                    let after = ch.after.clone().ok_or(FoldError::MissingImage {
                        table,
                        op,
                        which: "after",
                    })?;
                    t.rows.insert(ch.key.clone(), after);
                } else {
                    t.rows.remove(&ch.key);
                }
            }
        }
        Ok(())
    }
}

/// Carries the rows of `old` over to `schema` by column name; columns the old rows lack take
/// the new column's default value (NULL when it has none or it is not a constant). Keys are
/// recomputed, since the key columns may have moved.
fn carry_over(old: Option<FoldedTable>, schema: TableSchema) -> FoldedTable {
    let mut rows = BTreeMap::new();
    if let Some(old) = old {
        let map: Vec<Option<usize>> = schema
            .columns
            .iter()
            .map(|c| old.schema.column_index(&c.name))
            .collect();
        let old_rowid_key = matches!(old.schema.key, KeyColumns::Rowid);
        for (key, values) in old.rows {
            let new_values: Vec<Value> = map
                .iter()
                .zip(&schema.columns)
                .map(|(src, col)| match src {
                    Some(i) => values.get(*i).cloned().unwrap_or(Value::Null),
                    None => col.default_value.clone().unwrap_or(Value::Null),
                })
                .collect();
            let rowid = if old_rowid_key {
                key.first().and_then(Value::as_i64)
            } else {
                old.schema
                    .rowid_alias
                    .and_then(|i| values.get(i))
                    .and_then(Value::as_i64)
            };
            let new_key = schema.key_of(&new_values, rowid);
            rows.insert(new_key, new_values);
        }
    }
    FoldedTable { schema, rows }
}
