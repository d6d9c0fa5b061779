use serde::{Deserialize, Serialize};
use std::fmt;

/// The configured name of a source; defaults to the database file's stem.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SourceId(pub String);

impl SourceId {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SourceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What kind of embedded database a source is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SourceKind {
    Sqlite,
    Sled,
}

impl fmt::Display for SourceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SourceKind::Sqlite => "sqlite",
            SourceKind::Sled => "sled",
        })
    }
}

/// Where in a SQLite WAL a commit ends.
///
/// The WAL is identified by its salts (they change whenever SQLite restarts the WAL) and a
/// frame by its 1-based index; the cumulative checksum after the commit frame lets a restarted
/// tailer prove the WAL it finds is the one it left. Ordered only within one pair of salts,
/// so it deliberately does not implement `Ord`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct WalPosition {
    pub salt1: u32,
    pub salt2: u32,
    /// 1-based index of the commit frame.
    pub frame: u32,
    pub checksum1: u32,
    pub checksum2: u32,
    /// Database size in pages after the commit (the commit frame's field).
    pub db_pages: u32,
}

/// The position in its source at which a record was captured, attached to the record so that
/// no reordering can separate a change from where it came from.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SourcePosition {
    /// A commit read from a SQLite WAL.
    SqliteWal(WalPosition),
    /// A state of the database file itself (rollback-journal databases, a fully backfilled
    /// WAL, a resync): the file change counter at header offset 24 and, when the read went
    /// through a WAL, the WAL position it read to.
    SqliteFile {
        change_counter: u32,
        wal: Option<WalPosition>,
    },
    /// A position in a sled source's outbox.
    SledOutbox { seq: u64 },
    /// No source position (records made by ferry itself, such as cutover markers).
    None,
}

impl fmt::Display for SourcePosition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SourcePosition::SqliteWal(w) => {
                write!(f, "wal:{:08x}-{:08x}:{}", w.salt1, w.salt2, w.frame)
            }
            SourcePosition::SqliteFile {
                change_counter,
                wal,
            } => match wal {
                Some(w) => write!(
                    f,
                    "file:{}+wal:{:08x}-{:08x}:{}",
                    change_counter, w.salt1, w.salt2, w.frame
                ),
                None => write!(f, "file:{change_counter}"),
            },
            SourcePosition::SledOutbox { seq } => write!(f, "sled:{seq}"),
            SourcePosition::None => f.write_str("-"),
        }
    }
}
