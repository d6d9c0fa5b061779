//! Log records and their encoding.
//!
//! A record's payload, as stored by the log, is one format-version byte followed by the
//! record in postcard 1.x encoding (see `proto/log-format.md`, "Record payload"). A newer
//! ferry decodes every older version; a record of a version newer than this build knows is
//! refused with [`DecodeError::UnknownVersion`], never guessed at.

use crate::{Lsn, SourcePosition, TableSchema, UnixMicros, Value};
use serde::{Deserialize, Serialize};

/// The record encoding this build writes. Version history lives in `proto/log-format.md`.
pub const RECORD_FORMAT_VERSION: u8 = 1;

/// One entry of a source's durable log.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Record {
    /// One source commit.
    Transaction(Transaction),
    /// Start of a consistent initial snapshot: every table's schema at `position`.
    SnapshotBegin(SnapshotBegin),
    /// Rows of one table read inside the snapshot; a table's rows may span many records.
    SnapshotRows(SnapshotRows),
    /// End of the snapshot; streaming continues from exactly the snapshot's position.
    SnapshotEnd(SnapshotEnd),
    /// A source position with no change (the format keeps it; no source writes one today:
    /// replication lag is read from the capture times of unapplied records, see
    /// `proto/metrics.md`, so an idle source needs no heartbeat to show 0).
    Heartbeat(Heartbeat),
    /// The source was cut over to PostgreSQL.
    Cutover(CutoverRecord),
}

/// What `ferry log inspect --json` calls the record's `type`.
impl Record {
    pub fn type_name(&self) -> &'static str {
        match self {
            Record::Transaction(t) if !t.schema_changes.is_empty() => "schema",
            Record::Transaction(_) => "txn",
            Record::SnapshotBegin(_) => "snapshot_begin",
            Record::SnapshotRows(_) => "snapshot_rows",
            Record::SnapshotEnd(_) => "snapshot_end",
            Record::Heartbeat(_) => "heartbeat",
            Record::Cutover(_) => "cutover",
        }
    }

    /// The capture time carried by the record, if it has one.
    pub fn captured_at(&self) -> Option<UnixMicros> {
        match self {
            Record::Transaction(t) => Some(t.captured_at),
            Record::SnapshotBegin(s) => Some(s.captured_at),
            Record::SnapshotEnd(s) => Some(s.captured_at),
            Record::Heartbeat(h) => Some(h.at),
            Record::Cutover(c) => Some(c.at),
            Record::SnapshotRows(_) => None,
        }
    }

    /// The source position carried by the record, if it has one.
    pub fn position(&self) -> Option<&SourcePosition> {
        match self {
            Record::Transaction(t) => Some(&t.position),
            Record::SnapshotBegin(s) => Some(&s.position),
            Record::SnapshotEnd(s) => Some(&s.position),
            Record::Heartbeat(h) => Some(&h.position),
            Record::Cutover(_) | Record::SnapshotRows(_) => None,
        }
    }

    /// Encodes the record as a log payload: version byte, then postcard.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        out.push(RECORD_FORMAT_VERSION);
        // Serializing owned data into a Vec cannot fail except on out-of-memory.
        match postcard::to_extend(self, out) {
            Ok(v) => v,
            Err(e) => panic!("postcard encoding of an in-memory record failed: {e}"),
        }
    }

    /// Decodes a log payload written by this or any older ferry.
    pub fn decode(payload: &[u8]) -> Result<Record, DecodeError> {
        let (&version, body) = payload.split_first().ok_or(DecodeError::Empty)?;
        match version {
            1 => postcard::from_bytes(body)
                .map_err(|source| DecodeError::Malformed { version, source }),
            v => Err(DecodeError::UnknownVersion {
                found: v,
                known: RECORD_FORMAT_VERSION,
            }),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("empty record payload")]
    Empty,
    #[error(
        "record format version {found} is newer than this ferry understands (up to {known}); upgrade ferry to read this log"
    )]
    UnknownVersion { found: u8, known: u8 },
    #[error("record payload of format version {version} does not decode")]
    Malformed {
        version: u8,
        #[source]
        source: postcard::Error,
    },
}

/// One source commit, with its net effect.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Transaction {
    pub position: SourcePosition,
    pub captured_at: UnixMicros,
    /// Schema changes made by this commit, applied before its row changes.
    pub schema_changes: Vec<SchemaChange>,
    pub changes: Vec<RowChange>,
    /// This transaction was reconstructed by comparing two database states (after a gap, or
    /// for a rollback-journal database), so it may collapse several source commits.
    pub resync: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Op {
    Insert,
    Update,
    Delete,
}

impl Op {
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Insert => "insert",
            Op::Update => "update",
            Op::Delete => "delete",
        }
    }
}

/// The net change of one row in one transaction.
///
/// `key` holds the values of the table's key columns ([`TableSchema::key_names`]); `before`
/// and `after` are full images in the column order of the table's schema in force after the
/// transaction's schema changes. Insert has only `after`, delete only `before`, update both.
/// A change of the key is a delete of the old key plus an insert of the new one.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RowChange {
    pub table: String,
    pub op: Op,
    pub key: Vec<Value>,
    pub before: Option<Vec<Value>>,
    pub after: Option<Vec<Value>>,
}

impl RowChange {
    pub fn insert(table: impl Into<String>, key: Vec<Value>, after: Vec<Value>) -> Self {
        RowChange {
            table: table.into(),
            op: Op::Insert,
            key,
            before: None,
            after: Some(after),
        }
    }

    pub fn update(
        table: impl Into<String>,
        key: Vec<Value>,
        before: Vec<Value>,
        after: Vec<Value>,
    ) -> Self {
        RowChange {
            table: table.into(),
            op: Op::Update,
            key,
            before: Some(before),
            after: Some(after),
        }
    }

    pub fn delete(table: impl Into<String>, key: Vec<Value>, before: Vec<Value>) -> Self {
        RowChange {
            table: table.into(),
            op: Op::Delete,
            key,
            before: Some(before),
            after: None,
        }
    }

    pub fn approx_size(&self) -> usize {
        let img = |i: &Option<Vec<Value>>| {
            i.as_ref()
                .map_or(0, |v| v.iter().map(Value::approx_size).sum())
        };
        self.table.len()
            + self.key.iter().map(Value::approx_size).sum::<usize>()
            + img(&self.before)
            + img(&self.after)
    }
}

/// A row of `sqlite_schema`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SchemaRow {
    /// `table`, `index`, `view` or `trigger`.
    pub kind: String,
    pub name: String,
    pub tbl_name: String,
    pub rootpage: i64,
    pub sql: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SchemaChangeKind {
    CreateTable,
    DropTable,
    /// The table's definition changed (ADD/DROP/RENAME COLUMN, a rebuild, a VACUUM that
    /// moved its root). Existing rows are carried over to the new schema by column name;
    /// columns the old rows lack take the column's default.
    AlterTable,
    /// The table was renamed from `from` (it may also have been altered).
    RenameTable {
        from: String,
    },
    /// An index, view or trigger was created, changed or dropped; carried for the sinks that
    /// mirror them, no rows change.
    Other,
}

/// One schema change: the `sqlite_schema` rows before and after, and for tables the parsed
/// schema after the change.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SchemaChange {
    pub kind: SchemaChangeKind,
    /// The affected table's name after the change (before it, for drops).
    pub table: String,
    pub before: Option<SchemaRow>,
    pub after: Option<SchemaRow>,
    pub schema: Option<TableSchema>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SnapshotBegin {
    pub position: SourcePosition,
    pub captured_at: UnixMicros,
    /// Every captured table, in `sqlite_schema` order.
    pub tables: Vec<TableSchema>,
    /// Every row of `sqlite_schema` (indexes, views, triggers included), for the sinks that
    /// rebuild them.
    pub schema_rows: Vec<SchemaRow>,
}

/// A row image in a snapshot: the rowid (for rowid tables) and the full column values.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SnapshotRow {
    pub rowid: Option<i64>,
    pub values: Vec<Value>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SnapshotRows {
    pub table: String,
    pub rows: Vec<SnapshotRow>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SnapshotEnd {
    pub position: SourcePosition,
    pub captured_at: UnixMicros,
    /// Rows written per table, so a consumer can check it saw the whole snapshot.
    pub row_counts: Vec<(String, u64)>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub at: UnixMicros,
    /// The source position the capture had reached when the heartbeat was written.
    pub position: SourcePosition,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CutoverRecord {
    pub at: UnixMicros,
    /// The LSN of the last record applied to PostgreSQL before the switch.
    pub last_applied: Lsn,
    pub note: String,
}
