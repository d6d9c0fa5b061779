//! B-tree pages and their cells (fileformat2 §1.6).
//!
//! A page's b-tree header starts at offset 100 on page 1 and 0 elsewhere: type byte
//! (0x02 index interior, 0x05 table interior, 0x0a index leaf, 0x0d table leaf), first
//! freeblock, cell count, cell-content start, fragmented bytes, and on interior pages the
//! right-most child. The cell-pointer array follows, in key order. Cells whose payload is
//! larger than the local maximum keep a prefix locally and chain the rest through overflow
//! pages; [`BtreePage::cell`] returns the local part and the first overflow page, and
//! [`assemble_payload`] follows the chain.

use super::{FormatError, be_u16, be_u32, local_payload_size, slice, varint};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PageKind {
    IndexInterior,
    TableInterior,
    IndexLeaf,
    TableLeaf,
}

impl PageKind {
    pub fn is_leaf(self) -> bool {
        matches!(self, PageKind::IndexLeaf | PageKind::TableLeaf)
    }
    pub fn is_table(self) -> bool {
        matches!(self, PageKind::TableLeaf | PageKind::TableInterior)
    }
}

/// A parsed b-tree page header over borrowed page bytes.
#[derive(Clone, Copy, Debug)]
pub struct BtreePage<'a> {
    pub pgno: u32,
    pub data: &'a [u8],
    pub kind: PageKind,
    pub cell_count: usize,
    pub right_child: Option<u32>,
    hdr_off: usize,
    usable: usize,
}

/// One cell. For table interior cells `payload_size` is 0 and `local` empty.
#[derive(Clone, Copy, Debug)]
pub struct Cell<'a> {
    pub left_child: Option<u32>,
    /// The rowid (table pages); 0 on index pages.
    pub rowid: i64,
    pub payload_size: u64,
    pub local: &'a [u8],
    pub first_overflow: Option<u32>,
}

impl<'a> BtreePage<'a> {
    pub fn parse(pgno: u32, data: &'a [u8], usable: usize) -> Result<BtreePage<'a>, FormatError> {
        let hdr_off = if pgno == 1 { 100 } else { 0 };
        let data = data.get(..usable).unwrap_or(data);
        let t = *slice(data, pgno, hdr_off, 1)?
            .first()
            .ok_or_else(|| FormatError::at(pgno, hdr_off, "empty page"))?;
        let kind = match t {
            0x02 => PageKind::IndexInterior,
            0x05 => PageKind::TableInterior,
            0x0a => PageKind::IndexLeaf,
            0x0d => PageKind::TableLeaf,
            t => {
                return Err(FormatError::at(
                    pgno,
                    hdr_off,
                    format!("byte 0x{t:02x} is not a b-tree page type"),
                ));
            }
        };
        let cell_count = usize::from(be_u16(data, pgno, hdr_off + 3)?);
        let right_child = if kind.is_leaf() {
            None
        } else {
            Some(be_u32(data, pgno, hdr_off + 8)?)
        };
        let hdr_len = if kind.is_leaf() { 8 } else { 12 };
        // The pointer array must fit in the page.
        slice(data, pgno, hdr_off + hdr_len, cell_count * 2)?;
        Ok(BtreePage {
            pgno,
            data,
            kind,
            cell_count,
            right_child,
            hdr_off: hdr_off + hdr_len,
            usable,
        })
    }

    pub fn cell_offset(&self, i: usize) -> Result<usize, FormatError> {
        let off = usize::from(be_u16(self.data, self.pgno, self.hdr_off + 2 * i)?);
        if off < self.hdr_off || off >= self.data.len() {
            return Err(FormatError::at(
                self.pgno,
                self.hdr_off + 2 * i,
                format!("cell pointer {off} outside the cell area"),
            ));
        }
        Ok(off)
    }

    #[inline(always)]
    pub fn cell(&self, i: usize) -> Result<Cell<'a>, FormatError> {
        if self.kind == PageKind::TableLeaf
            && let Some(c) = self.local_table_leaf_cell(i)
        {
            return Ok(c);
        }
        self.any_cell(i)
    }

    /// The common case of a table leaf's cell, which the decoder parses for every cell of
    /// every leaf a transaction writes: varints of at most 8 bytes and a payload that lies
    /// wholly on the page. `None` sends the cell to [`Self::any_cell`], which also names
    /// what is wrong with a malformed one; for a well-formed cell both give the same answer.
    #[inline(always)]
    fn local_table_leaf_cell(&self, i: usize) -> Option<Cell<'a>> {
        let d = self.data;
        let ptr = self.hdr_off + 2 * i;
        let off = usize::from(u16::from_be_bytes([*d.get(ptr)?, *d.get(ptr + 1)?]));
        if off < self.hdr_off {
            return None;
        }
        let cell = d.get(off..)?;
        let (payload_size, a) = short_varint(cell)?;
        let (rowid, b) = short_varint(cell.get(a..)?)?;
        // At most the table-leaf local maximum: the payload is all here (fileformat2 §1.6).
        if payload_size > self.usable as u64 - 35 {
            return None;
        }
        let start = a + b;
        let local = cell.get(start..start + payload_size as usize)?;
        Some(Cell {
            left_child: None,
            rowid: rowid as i64,
            payload_size,
            local,
            first_overflow: None,
        })
    }

    #[inline(never)]
    fn any_cell(&self, i: usize) -> Result<Cell<'a>, FormatError> {
        let p = self.pgno;
        let d = self.data;
        let mut off = self.cell_offset(i)?;
        let left_child = if self.kind.is_leaf() {
            None
        } else {
            let c = be_u32(d, p, off)?;
            off += 4;
            Some(c)
        };
        if self.kind == PageKind::TableInterior {
            let (rowid, _) = varint::read(d, p, off)?;
            return Ok(Cell {
                left_child,
                rowid: rowid as i64,
                payload_size: 0,
                local: &[],
                first_overflow: None,
            });
        }
        let (payload_size, n) = varint::read(d, p, off)?;
        off += n;
        let mut rowid = 0;
        if self.kind == PageKind::TableLeaf {
            let (r, n) = varint::read(d, p, off)?;
            rowid = r as i64;
            off += n;
        }
        let local_len =
            local_payload_size(self.usable, payload_size, self.kind == PageKind::TableLeaf);
        let local = slice(d, p, off, local_len)?;
        let first_overflow = if (local_len as u64) < payload_size {
            let o = be_u32(d, p, off + local_len)?;
            if o == 0 {
                return Err(FormatError::at(p, off + local_len, "overflow pointer is 0"));
            }
            Some(o)
        } else {
            None
        };
        Ok(Cell {
            left_child,
            rowid,
            payload_size,
            local,
            first_overflow,
        })
    }

    /// Child page numbers of an interior page, left to right (right-most last).
    pub fn children(&self) -> Result<Vec<u32>, FormatError> {
        let mut out = Vec::with_capacity(self.cell_count + 1);
        for i in 0..self.cell_count {
            if let Some(c) = self.cell(i)?.left_child {
                out.push(c);
            }
        }
        if let Some(r) = self.right_child {
            out.push(r);
        }
        Ok(out)
    }
}

/// Reassembles a cell's payload, reading overflow pages through `read_page`; returns the
/// payload and the overflow pages it used, in chain order.
pub fn assemble_payload<E>(
    cell: &Cell<'_>,
    usable: usize,
    max_page: u32,
    mut read_page: impl FnMut(u32) -> Result<std::sync::Arc<[u8]>, E>,
) -> Result<(Vec<u8>, Vec<u32>), E>
where
    E: From<FormatError>,
{
    let total = usize::try_from(cell.payload_size).unwrap_or(usize::MAX);
    let mut out = Vec::with_capacity(total.min(1 << 24));
    out.extend_from_slice(cell.local);
    let mut pages = Vec::new();
    let mut next = cell.first_overflow;
    while out.len() < total {
        let Some(pg) = next else {
            return Err(FormatError::at(
                pages.last().copied().unwrap_or(0),
                0,
                "overflow chain ends before the payload does",
            )
            .into());
        };
        if pg == 0 || pg > max_page || pages.len() > total / (usable - 4) + 1 {
            return Err(FormatError::at(
                pg,
                0,
                format!("overflow page {pg} out of range or chain loops"),
            )
            .into());
        }
        let data = read_page(pg)?;
        let n = be_u32(&data, pg, 0)?;
        let want = (total - out.len()).min(usable - 4);
        out.extend_from_slice(slice(&data, pg, 4, want)?);
        pages.push(pg);
        next = if n == 0 { None } else { Some(n) };
    }
    Ok((out, pages))
}

/// A varint of at most 8 bytes (every payload size and every non-negative rowid below
/// 2^56), or `None` for a 9-byte one or one that runs past `b`.
#[inline(always)]
fn short_varint(b: &[u8]) -> Option<(u64, usize)> {
    let mut v = 0u64;
    for (i, &x) in b.iter().take(8).enumerate() {
        v = (v << 7) | u64::from(x & 0x7f);
        if x < 0x80 {
            return Some((v, i + 1));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// On leaves SQLite itself wrote, the fast path takes the common cells (short and 2-byte
    /// payload sizes) and leaves the others (an overflowing payload, a negative rowid's 9-byte
    /// varint) to the general parser, and agrees with it on every cell it takes. (The
    /// property test below checks agreement on arbitrary bytes, where valid cells are rare.)
    #[test]
    fn leaf_fast_path_takes_common_cells_of_real_pages() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("t.db");
        let c = rusqlite::Connection::open(&path).expect("open");
        c.execute_batch(
            "PRAGMA page_size = 4096;
             CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB);
             WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < 200)
               INSERT INTO t SELECT i, randomblob(CASE WHEN i % 2 THEN 10 ELSE 200 END) FROM s;
             INSERT INTO t VALUES (-5, x'01'), (1000, randomblob(6000));",
        )
        .expect("fill");
        drop(c);
        let file = std::fs::read(&path).expect("read");
        let (mut fast, mut general) = (0, 0);
        for (i, data) in file.chunks_exact(4096).enumerate() {
            let pgno = i as u32 + 1;
            let Ok(page) = BtreePage::parse(pgno, data, 4096) else {
                continue;
            };
            if page.kind != PageKind::TableLeaf {
                continue;
            }
            for i in 0..page.cell_count {
                let slow = page.any_cell(i).expect("SQLite's own cell parses");
                match page.local_table_leaf_cell(i) {
                    Some(c) => {
                        fast += 1;
                        assert_eq!(
                            (c.rowid, c.payload_size, c.local, c.first_overflow),
                            (
                                slow.rowid,
                                slow.payload_size,
                                slow.local,
                                slow.first_overflow
                            )
                        );
                    }
                    None => {
                        general += 1;
                        assert!(
                            slow.rowid < 0 || slow.first_overflow.is_some(),
                            "a common cell missed the fast path: {slow:?}"
                        );
                    }
                }
            }
        }
        assert!(fast >= 200, "fast path took {fast} cells");
        assert_eq!(general, 2, "the overflowing and the negative-rowid cells");
    }

    proptest! {
        #[test]
        fn random_pages_never_panic(pgno in 1u32..4, data in proptest::collection::vec(any::<u8>(), 0..1024)) {
            if let Ok(p) = BtreePage::parse(pgno, &data, 512) {
                for i in 0..p.cell_count {
                    if let Ok(c) = p.cell(i) {
                        let _ = assemble_payload::<FormatError>(&c, 512, 10, |_| Ok(std::sync::Arc::from(data.clone())));
                    }
                }
                let _ = p.children();
            }
        }

        /// The table-leaf fast path agrees with the general parser on every cell it takes,
        /// however the bytes around it look.
        #[test]
        fn leaf_fast_path_agrees_with_the_general_parser(
            mut data in proptest::collection::vec(any::<u8>(), 16..1024),
            count in 0u16..40,
            usable in prop_oneof![Just(480usize), Just(512), Just(1024)],
        ) {
            data[0] = 0x0d;
            data[3..5].copy_from_slice(&count.to_be_bytes());
            if let Ok(p) = BtreePage::parse(2, &data, usable) {
                for i in 0..p.cell_count {
                    if let Some(fast) = p.local_table_leaf_cell(i) {
                        let slow = p.any_cell(i);
                        prop_assert!(slow.is_ok(), "{slow:?}");
                        let slow = slow.unwrap();
                        prop_assert_eq!(fast.rowid, slow.rowid);
                        prop_assert_eq!(fast.payload_size, slow.payload_size);
                        prop_assert_eq!(fast.local, slow.local);
                        prop_assert_eq!(fast.first_overflow, slow.first_overflow);
                        prop_assert_eq!(fast.left_child, slow.left_child);
                    }
                }
            }
        }
    }
}
