//! A base file as the snapshot records capture would have logged for it.
//!
//! A base is a page-exact copy of the database at one LSN. Reading it with capture's own
//! decoder (not with SQL) gives the very `TableSchema`s and values that capture puts in the
//! log: the same tables skipped (internal, virtual and their shadow tables), the same keys,
//! the same defaults for rows older than an `ADD COLUMN`. So a restore into PostgreSQL is
//! "snapshot of the base, then the log", exactly as replication would have done it, and the
//! records the base becomes fold to the same contents as the log up to the base's LSN.
//!
//! Production is deterministic (tables in `sqlite_schema` order, rows in key order, chunks cut
//! by the same row and byte bounds), so counting the records first and producing them later,
//! or producing them twice, yields the same sequence.

use crate::ArchiveError;
use ferry_core::{
    Record, SnapshotBegin, SnapshotEnd, SnapshotRows, SourcePosition, UnixMicros, Value,
};
use ferry_sqlite::decode::Decoder;
use ferry_sqlite::format::DbHeader;
use ferry_sqlite::pages::{FilePages, read_full_at};
use std::fs::File;
use std::path::{Path, PathBuf};

/// Rows and approximate bytes per `SnapshotRows` record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Chunking {
    pub rows: usize,
    pub bytes: usize,
}

impl Default for Chunking {
    fn default() -> Self {
        Chunking {
            rows: 2_000,
            bytes: 4 << 20,
        }
    }
}

/// An opened base file.
pub struct BaseFile {
    path: PathBuf,
    file: File,
    page_size: usize,
    pages: u32,
}

impl BaseFile {
    pub fn open(path: &Path) -> Result<BaseFile, ArchiveError> {
        let file = File::open(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => ArchiveError::MissingFile {
                what: "archived base",
                path: path.to_path_buf(),
            },
            _ => ArchiveError::io("opening", path, e),
        })?;
        let mut first = [0u8; 100];
        read_full_at(&file, &mut first, 0).map_err(|e| ArchiveError::io("reading", path, e))?;
        let header = DbHeader::parse(&first).map_err(|e| ArchiveError::CorruptBase {
            path: path.to_path_buf(),
            reason: format!("not a SQLite database: {e}"),
        })?;
        let len = file
            .metadata()
            .map_err(|e| ArchiveError::io("reading the size of", path, e))?
            .len();
        let by_size = u32::try_from(len / header.page_size as u64).unwrap_or(u32::MAX);
        let pages = if header.version_valid_for == header.change_counter && header.page_count > 0 {
            header.page_count.min(by_size)
        } else {
            by_size
        };
        Ok(BaseFile {
            path: path.to_path_buf(),
            file,
            page_size: header.page_size,
            pages,
        })
    }

    fn pages(&self) -> FilePages<'_> {
        FilePages {
            file: &self.file,
            path: &self.path,
            page_size: self.page_size,
            count: self.pages,
        }
    }

    fn decode_err(&self) -> impl Fn(ferry_sqlite::decode::DecodeError) -> ArchiveError + '_ {
        |source| ArchiveError::BaseDecode {
            path: self.path.clone(),
            source,
        }
    }

    /// The captured tables of the base, as capture describes them.
    pub fn tables(&self) -> Result<Vec<ferry_core::TableSchema>, ArchiveError> {
        let decoder = Decoder::build(&self.pages()).map_err(self.decode_err())?;
        Ok(decoder.catalog.tables())
    }

    /// Produces the base's snapshot records in order, calling `emit` for each; stops early
    /// (returning `Ok(false)`) when `emit` returns false.
    pub fn produce(
        &self,
        captured_at: UnixMicros,
        chunking: Chunking,
        emit: &mut dyn FnMut(Record) -> bool,
    ) -> Result<bool, ArchiveError> {
        let src = self.pages();
        let decoder = Decoder::build(&src).map_err(self.decode_err())?;
        let tables = decoder.catalog.tables();
        if !emit(Record::SnapshotBegin(SnapshotBegin {
            position: SourcePosition::None,
            captured_at,
            tables: tables.clone(),
            schema_rows: decoder.catalog.rows.clone(),
        })) {
            return Ok(false);
        }
        let mut counts = Vec::with_capacity(tables.len());
        for t in &tables {
            let mut chunk = Vec::new();
            let mut chunk_bytes = 0usize;
            let mut n = 0u64;
            let mut open = true;
            decoder
                .scan_table(&src, &t.name, &mut |row| {
                    if !open {
                        return Ok(());
                    }
                    chunk_bytes += row.values.iter().map(Value::approx_size).sum::<usize>();
                    chunk.push(row);
                    n += 1;
                    if chunk.len() >= chunking.rows.max(1) || chunk_bytes >= chunking.bytes {
                        chunk_bytes = 0;
                        open = emit(Record::SnapshotRows(SnapshotRows {
                            table: t.name.clone(),
                            rows: std::mem::take(&mut chunk),
                        }));
                    }
                    Ok(())
                })
                .map_err(self.decode_err())?;
            if !open {
                return Ok(false);
            }
            if !chunk.is_empty()
                && !emit(Record::SnapshotRows(SnapshotRows {
                    table: t.name.clone(),
                    rows: chunk,
                }))
            {
                return Ok(false);
            }
            counts.push((t.name.clone(), n));
        }
        Ok(emit(Record::SnapshotEnd(SnapshotEnd {
            position: SourcePosition::None,
            captured_at,
            row_counts: counts,
        })))
    }

    /// How many records [`BaseFile::produce`] makes, and how many rows they carry.
    pub fn count_records(&self, chunking: Chunking) -> Result<(u64, u64), ArchiveError> {
        let mut records = 0u64;
        let mut rows = 0u64;
        self.produce(0, chunking, &mut |r| {
            records += 1;
            if let Record::SnapshotRows(s) = &r {
                rows += s.rows.len() as u64;
            }
            true
        })?;
        Ok((records, rows))
    }
}
