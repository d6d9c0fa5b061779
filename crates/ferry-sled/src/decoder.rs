//! How a sled tree becomes a table: the [`TreeDecoder`] hook.
//!
//! sled stores opaque bytes; the log (and PostgreSQL after it) wants rows. By default every
//! tree is a table `key BLOB PRIMARY KEY, value BLOB` ([`BytesDecoder`]). An application
//! whose values are, say, JSON documents implements [`TreeDecoder`] to map them to columns,
//! or uses [`JsonTextDecoder`], which keeps the value as one text column declared `JSON`
//! (the PostgreSQL side maps it to `jsonb`).
//!
//! Contract: decoding runs on the mover thread, never on the application's write path, and
//! must be a pure function of `(tree, key, value)`. The key columns of the schema must be
//! derived from the sled key alone and differ for different sled keys — the log's changes are
//! keyed by them. A decoder error stops the mover with an error naming tree and key; the
//! change stays in the outbox until the decoder is fixed.

use ferry_core::{Affinity, Column, KeyColumns, TableSchema, Value};

/// The error a decoder returns for a value it cannot map.
pub type DecoderError = Box<dyn std::error::Error + Send + Sync>;

/// Maps a sled tree to a table and its entries to rows. See the module documentation for the
/// contract.
pub trait TreeDecoder: Send + Sync + 'static {
    /// The table a tree becomes. Called once per tree per mover start (and at a snapshot).
    fn table_schema(&self, tree: &str) -> TableSchema;

    /// The row of one entry, in the column order of [`TreeDecoder::table_schema`].
    fn decode(&self, tree: &str, key: &[u8], value: &[u8]) -> Result<Vec<Value>, DecoderError>;
}

/// A column declared by a sled capture (not null only for key columns).
pub fn column(name: &str, decl_type: &str, pk_position: u32) -> Column {
    Column {
        name: name.to_string(),
        decl_type: decl_type.to_string(),
        affinity: Affinity::from_declared_type(decl_type),
        not_null: pk_position > 0,
        default_sql: None,
        default_value: None,
        pk_position,
        generated: None,
        collation: None,
    }
}

/// A table keyed by its first column, with a `CREATE TABLE` text describing it.
pub fn keyed_table(name: &str, columns: Vec<Column>) -> TableSchema {
    let cols: Vec<String> = columns
        .iter()
        .map(|c| {
            let mut s = format!("\"{}\" {}", c.name.replace('"', "\"\""), c.decl_type);
            if c.pk_position > 0 {
                s.push_str(" PRIMARY KEY NOT NULL");
            }
            s
        })
        .collect();
    let sql = format!(
        "CREATE TABLE \"{}\" ({}) WITHOUT ROWID",
        name.replace('"', "\"\""),
        cols.join(", ")
    );
    TableSchema {
        name: name.to_string(),
        columns,
        key: KeyColumns::PrimaryKey(vec![0]),
        rowid_alias: None,
        without_rowid: true,
        strict: false,
        autoincrement: false,
        unique: Vec::new(),
        foreign_keys: Vec::new(),
        sql,
    }
}

/// The default: every tree is `key BLOB PRIMARY KEY, value BLOB`, named like the tree.
#[derive(Clone, Copy, Debug, Default)]
pub struct BytesDecoder;

impl TreeDecoder for BytesDecoder {
    fn table_schema(&self, tree: &str) -> TableSchema {
        keyed_table(
            tree,
            vec![column("key", "BLOB", 1), column("value", "BLOB", 0)],
        )
    }

    fn decode(&self, _tree: &str, key: &[u8], value: &[u8]) -> Result<Vec<Value>, DecoderError> {
        Ok(vec![Value::Blob(key.to_vec()), Value::Blob(value.to_vec())])
    }
}

/// Every tree is `key BLOB PRIMARY KEY, value JSON`: the value must be a UTF-8 JSON document
/// and is kept as text (the PostgreSQL side maps the `JSON` declared type to `jsonb`).
#[derive(Clone, Copy, Debug, Default)]
pub struct JsonTextDecoder;

impl TreeDecoder for JsonTextDecoder {
    fn table_schema(&self, tree: &str) -> TableSchema {
        let mut value = column("value", "JSON", 0);
        // SQLite's rules would give "JSON" NUMERIC affinity; the column only ever holds text.
        value.affinity = Affinity::Text;
        keyed_table(tree, vec![column("key", "BLOB", 1), value])
    }

    fn decode(&self, _tree: &str, key: &[u8], value: &[u8]) -> Result<Vec<Value>, DecoderError> {
        serde_json::from_slice::<serde::de::IgnoredAny>(value)?;
        Ok(vec![Value::Blob(key.to_vec()), Value::Text(value.to_vec())])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_decoder_schema_is_key_blob_value_blob() {
        let s = BytesDecoder.table_schema("users");
        assert_eq!(s.key_names(), vec!["key"]);
        assert_eq!(s.columns[0].affinity, Affinity::Blob);
        assert_eq!(s.columns[1].decl_type, "BLOB");
        let row = BytesDecoder.decode("users", b"k", b"v").unwrap();
        assert_eq!(s.key_of(&row, None), vec![Value::Blob(b"k".to_vec())]);
    }

    #[test]
    fn json_decoder_refuses_what_is_not_json() {
        assert!(JsonTextDecoder.decode("t", b"k", b"{\"a\":1}").is_ok());
        assert!(JsonTextDecoder.decode("t", b"k", b"{\"a\":").is_err());
        assert_eq!(
            JsonTextDecoder.table_schema("t").columns[1].affinity,
            Affinity::Text
        );
    }
}
