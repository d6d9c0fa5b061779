use serde::{Deserialize, Serialize};

/// Name of the pseudo-column that carries the rowid of a table without a declared primary
/// key, both in row keys and as the primary key ferry gives such a table in PostgreSQL.
pub const ROWID_COLUMN: &str = "_sqlite_rowid";

/// SQLite's column affinity, derived from the declared type by the rules of
/// <https://www.sqlite.org/datatype3.html> §3.1.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Affinity {
    Integer,
    Text,
    Blob,
    Real,
    Numeric,
}

impl Affinity {
    /// The affinity SQLite gives a column declared with `decl_type`.
    pub fn from_declared_type(decl_type: &str) -> Affinity {
        let t = decl_type.to_ascii_uppercase();
        if t.contains("INT") {
            Affinity::Integer
        } else if t.contains("CHAR") || t.contains("CLOB") || t.contains("TEXT") {
            Affinity::Text
        } else if t.contains("BLOB") || t.trim().is_empty() {
            Affinity::Blob
        } else if t.contains("REAL") || t.contains("FLOA") || t.contains("DOUB") {
            Affinity::Real
        } else {
            Affinity::Numeric
        }
    }
}

/// One column of a table as SQLite declares it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Column {
    pub name: String,
    /// The declared type exactly as written (may be empty).
    pub decl_type: String,
    pub affinity: Affinity,
    pub not_null: bool,
    /// The DEFAULT expression as SQL text, if any. Rows written before an `ADD COLUMN` are
    /// shorter than the schema; readers fill the missing fields from this.
    pub default_sql: Option<String>,
    /// The default evaluated to a constant value, when it is a constant (what SQLite returns
    /// for a row shorter than the schema).
    pub default_value: Option<crate::Value>,
    /// 1-based position in the declared primary key, 0 if not part of it.
    pub pk_position: u32,
    /// A generated column (not stored in the record when VIRTUAL).
    pub generated: Option<Generated>,
    /// Declared collation, if any (matters for key order in verify).
    pub collation: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Generated {
    Virtual,
    Stored,
}

/// Which columns identify a row.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum KeyColumns {
    /// The declared primary key: indexes into [`TableSchema::columns`], in key order. For an
    /// `INTEGER PRIMARY KEY` rowid table this is the one column aliasing the rowid.
    PrimaryKey(Vec<usize>),
    /// No primary key is declared (or it is unusable, e.g. it holds NULLs): the rowid is the
    /// key, named [`ROWID_COLUMN`].
    Rowid,
}

/// A table as SQLite declares it, parsed from its `CREATE TABLE` statement.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TableSchema {
    pub name: String,
    pub columns: Vec<Column>,
    pub key: KeyColumns,
    /// Index of the column that is an alias of the rowid (`INTEGER PRIMARY KEY`), if any.
    pub rowid_alias: Option<usize>,
    pub without_rowid: bool,
    pub strict: bool,
    /// Uses AUTOINCREMENT (so `sqlite_sequence` holds its counter).
    pub autoincrement: bool,
    /// UNIQUE constraints other than the primary key, as lists of column indexes.
    pub unique: Vec<Vec<usize>>,
    /// Foreign keys declared on this table.
    pub foreign_keys: Vec<ForeignKey>,
    /// The `CREATE TABLE` statement as stored in `sqlite_schema`.
    pub sql: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ForeignKey {
    pub columns: Vec<String>,
    pub parent_table: String,
    /// Empty means "the parent's primary key".
    pub parent_columns: Vec<String>,
    pub on_delete: Option<String>,
    pub on_update: Option<String>,
}

impl TableSchema {
    /// Names of the key columns, in key order ([`ROWID_COLUMN`] for rowid-keyed tables).
    pub fn key_names(&self) -> Vec<&str> {
        match &self.key {
            KeyColumns::PrimaryKey(idx) => {
                idx.iter().map(|&i| self.columns[i].name.as_str()).collect()
            }
            KeyColumns::Rowid => vec![ROWID_COLUMN],
        }
    }

    pub fn column_index(&self, name: &str) -> Option<usize> {
        self.columns
            .iter()
            .position(|c| c.name.eq_ignore_ascii_case(name))
    }

    /// Whether the rowid is the key (no usable declared primary key).
    pub fn keyed_by_rowid(&self) -> bool {
        matches!(self.key, KeyColumns::Rowid)
    }

    /// Extracts the key of a full row image. `rowid` is needed only for rowid-keyed tables.
    pub fn key_of(&self, row: &[crate::Value], rowid: Option<i64>) -> Vec<crate::Value> {
        match &self.key {
            KeyColumns::PrimaryKey(idx) => idx
                .iter()
                .map(|&i| row.get(i).cloned().unwrap_or(crate::Value::Null))
                .collect(),
            KeyColumns::Rowid => vec![rowid.map_or(crate::Value::Null, crate::Value::Integer)],
        }
    }

    /// True for SQLite's internal tables and FTS shadow tables, which ferry does not capture
    /// (`sqlite_sequence` is captured: PostgreSQL sequences follow it).
    pub fn is_internal_name(name: &str) -> bool {
        let lower = name.to_ascii_lowercase();
        if lower == "sqlite_sequence" {
            return false;
        }
        lower.starts_with("sqlite_")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn affinity_rules() {
        assert_eq!(Affinity::from_declared_type("BIGINT"), Affinity::Integer);
        assert_eq!(Affinity::from_declared_type("VARCHAR(20)"), Affinity::Text);
        assert_eq!(Affinity::from_declared_type(""), Affinity::Blob);
        assert_eq!(
            Affinity::from_declared_type("DOUBLE PRECISION"),
            Affinity::Real
        );
        assert_eq!(
            Affinity::from_declared_type("DECIMAL(10,2)"),
            Affinity::Numeric
        );
        assert_eq!(Affinity::from_declared_type("DATETIME"), Affinity::Numeric);
        // "FLOATING POINT" contains "INT": SQLite says INTEGER.
        assert_eq!(
            Affinity::from_declared_type("FLOATING POINT"),
            Affinity::Integer
        );
    }
}
