//! The 100-byte database header at the start of page 1 (fileformat2 §1.3).

use super::{FormatError, be_u32, slice};
use crate::format::record::TextEncoding;

pub const MAGIC: &[u8; 16] = b"SQLite format 3\0";

/// The header fields capture relies on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DbHeader {
    pub page_size: usize,
    /// 1 = rollback journal, 2 = WAL.
    pub write_version: u8,
    pub read_version: u8,
    pub reserved: u8,
    pub change_counter: u32,
    pub page_count: u32,
    pub first_freelist_trunk: u32,
    pub freelist_count: u32,
    pub schema_cookie: u32,
    pub schema_format: u32,
    /// Non-zero in auto-vacuum and incremental-vacuum databases (ptrmap pages exist).
    pub largest_root: u32,
    pub encoding: TextEncoding,
    pub incremental_vacuum: bool,
    pub version_valid_for: u32,
}

impl DbHeader {
    pub fn parse(page1: &[u8]) -> Result<DbHeader, FormatError> {
        let magic = slice(page1, 1, 0, 16)?;
        if magic != MAGIC {
            return Err(FormatError::at(
                1,
                0,
                "not a SQLite 3 database (bad magic string)",
            ));
        }
        let h = slice(page1, 1, 0, 100)?;
        let raw_size = u16::from_be_bytes([h[16], h[17]]);
        let page_size = match raw_size {
            1 => 65536,
            n if n >= 512 && n.is_power_of_two() => usize::from(n),
            n => {
                return Err(FormatError::at(1, 16, format!("invalid page size {n}")));
            }
        };
        let reserved = h[20];
        if page_size - usize::from(reserved) < 480 {
            return Err(FormatError::at(
                1,
                20,
                format!("{reserved} reserved bytes leave too little of a {page_size}-byte page"),
            ));
        }
        let encoding = match be_u32(h, 1, 56)? {
            0 | 1 => TextEncoding::Utf8,
            2 => TextEncoding::Utf16Le,
            3 => TextEncoding::Utf16Be,
            e => return Err(FormatError::at(1, 56, format!("unknown text encoding {e}"))),
        };
        Ok(DbHeader {
            page_size,
            write_version: h[18],
            read_version: h[19],
            reserved,
            change_counter: be_u32(h, 1, 24)?,
            page_count: be_u32(h, 1, 28)?,
            first_freelist_trunk: be_u32(h, 1, 32)?,
            freelist_count: be_u32(h, 1, 36)?,
            schema_cookie: be_u32(h, 1, 40)?,
            schema_format: be_u32(h, 1, 44)?,
            largest_root: be_u32(h, 1, 52)?,
            encoding,
            incremental_vacuum: be_u32(h, 1, 64)? != 0,
            version_valid_for: be_u32(h, 1, 92)?,
        })
    }

    /// Usable bytes per page (page size minus reserved bytes).
    pub fn usable_size(&self) -> usize {
        self.page_size - usize::from(self.reserved)
    }

    pub fn is_wal(&self) -> bool {
        self.write_version == 2 || self.read_version == 2
    }

    /// The page that holds byte 2^30 of the file: never used by SQLite.
    pub fn lock_page(&self) -> u32 {
        ((1u64 << 30) / self.page_size as u64 + 1) as u32
    }
}
