//! Readers of SQLite's own file formats: the database header, b-tree pages and cells,
//! records and varints, overflow chains, freelist trunk pages, ptrmap pages, and the WAL.
//!
//! Every reader takes bytes it does not trust. Each access is bounds-checked and a malformed
//! structure is a [`FormatError::Malformed`] naming the page and the byte offset within it, so
//! that a corrupt or truncated file (or a page we misidentified) is reported, never a panic
//! and never an out-of-bounds read. References: <https://www.sqlite.org/fileformat2.html>
//! (sections 1.3 header, 1.6 b-tree pages, 2.1 records, 4 WAL).

pub mod btree;
pub mod header;
pub mod record;
pub mod varint;
pub mod wal;

pub use btree::{BtreePage, PageKind};
pub use header::DbHeader;
pub use record::{TextEncoding, decode_record};
pub use wal::{WalFrameHeader, WalHeader};

/// A malformed structure in a SQLite file.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum FormatError {
    #[error(
        "malformed SQLite data on page {page} at offset {offset}: {problem} (the file is corrupt, truncated, or not a SQLite database)"
    )]
    Malformed {
        page: u32,
        offset: usize,
        problem: String,
    },
}

impl FormatError {
    pub fn at(page: u32, offset: usize, problem: impl Into<String>) -> FormatError {
        FormatError::Malformed {
            page,
            offset,
            problem: problem.into(),
        }
    }
}

/// Bounds-checked slice access, reporting the page and offset on failure.
pub(crate) fn slice(
    data: &[u8],
    page: u32,
    offset: usize,
    len: usize,
) -> Result<&[u8], FormatError> {
    offset
        .checked_add(len)
        .and_then(|end| data.get(offset..end))
        .ok_or_else(|| {
            FormatError::at(
                page,
                offset,
                format!("{len} bytes needed but the page has {}", data.len()),
            )
        })
}

pub(crate) fn be_u16(data: &[u8], page: u32, offset: usize) -> Result<u16, FormatError> {
    let b = slice(data, page, offset, 2)?;
    Ok(u16::from_be_bytes([b[0], b[1]]))
}

pub(crate) fn be_u32(data: &[u8], page: u32, offset: usize) -> Result<u32, FormatError> {
    let b = slice(data, page, offset, 4)?;
    Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

/// The local-payload rule of fileformat2 §1.6: how many bytes of a payload of `payload`
/// bytes are stored in the cell itself, for a table leaf (`table_leaf`) or an index page.
pub fn local_payload_size(usable: usize, payload: u64, table_leaf: bool) -> usize {
    let u = usable as u64;
    let x = if table_leaf {
        u - 35
    } else {
        ((u - 12) * 64 / 255) - 23
    };
    if payload <= x {
        return payload as usize;
    }
    let m = ((u - 12) * 32 / 255) - 23;
    let k = m + ((payload - m) % (u - 4));
    if k <= x { k as usize } else { m as usize }
}

/// Ptrmap entry types (fileformat2 §1.7), present only in auto-vacuum databases.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PtrmapType {
    RootPage,
    FreePage,
    Overflow1,
    Overflow2,
    Btree,
}

/// The page numbers holding ptrmap entries for a database of `usable` bytes per page,
/// up to `page_count` pages: page 2 and every `usable/5 + 1` pages after it.
pub fn ptrmap_pages(usable: usize, page_count: u32) -> Vec<u32> {
    let per = (usable / 5) as u32;
    let mut out = Vec::new();
    let mut p = 2u32;
    while p <= page_count {
        out.push(p);
        match p.checked_add(per + 1) {
            Some(n) => p = n,
            None => break,
        }
    }
    out
}

/// Reads the ptrmap entry for `target` from the ptrmap page `ptrmap_page` holding it.
pub fn ptrmap_entry(
    data: &[u8],
    ptrmap_page: u32,
    target: u32,
) -> Result<(PtrmapType, u32), FormatError> {
    let idx = target
        .checked_sub(ptrmap_page + 1)
        .ok_or_else(|| FormatError::at(ptrmap_page, 0, "page precedes its ptrmap page"))?
        as usize;
    let off = idx * 5;
    let b = slice(data, ptrmap_page, off, 5)?;
    let kind = match b[0] {
        1 => PtrmapType::RootPage,
        2 => PtrmapType::FreePage,
        3 => PtrmapType::Overflow1,
        4 => PtrmapType::Overflow2,
        5 => PtrmapType::Btree,
        t => {
            return Err(FormatError::at(
                ptrmap_page,
                off,
                format!("unknown ptrmap entry type {t}"),
            ));
        }
    };
    Ok((kind, u32::from_be_bytes([b[1], b[2], b[3], b[4]])))
}

/// A freelist trunk page: the next trunk and the leaf pages it lists.
pub fn freelist_trunk(
    data: &[u8],
    page: u32,
    usable: usize,
) -> Result<(u32, Vec<u32>), FormatError> {
    let next = be_u32(data, page, 0)?;
    let count = be_u32(data, page, 4)? as usize;
    if count > usable / 4 - 2 {
        return Err(FormatError::at(
            page,
            4,
            format!("freelist trunk lists {count} leaves, more than a page holds"),
        ));
    }
    let mut leaves = Vec::with_capacity(count);
    for i in 0..count {
        leaves.push(be_u32(data, page, 8 + 4 * i)?);
    }
    Ok((next, leaves))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_payload_matches_the_research_measurement() {
        // exp1 T3: 4096-byte pages, P=10018 gives 1834 bytes local (M=489).
        assert_eq!(local_payload_size(4096, 10018, true), 1834);
        assert_eq!(local_payload_size(4096, 4061, true), 4061);
        // K = M + (P - M) % (U - 4) = 4062 exceeds X = 4061, so only M stays local.
        assert_eq!(local_payload_size(4096, 4062, true), 489);
        // K = 489 + (8000 - 489) % 4092 = 3908 fits.
        assert_eq!(local_payload_size(4096, 8000, true), 3908);
    }

    #[test]
    fn ptrmap_layout() {
        // Each ptrmap page maps the next U/5 = 819 pages; the next ptrmap page follows them.
        assert_eq!(ptrmap_pages(4096, 2000), vec![2, 822, 1642]);
        let mut page = vec![0u8; 4096];
        page[5..10].copy_from_slice(&[5, 0, 0, 0, 3]);
        assert_eq!(ptrmap_entry(&page, 2, 4).unwrap(), (PtrmapType::Btree, 3));
        page[0] = 9;
        assert!(ptrmap_entry(&page, 2, 3).is_err());
    }
}
