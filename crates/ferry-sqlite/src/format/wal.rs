//! The WAL file (fileformat2 §4): a 32-byte header, then frames of a 24-byte header plus one
//! page. A frame is valid iff its salts equal the header's and the cumulative checksum,
//! computed over the header's first 24 bytes and then each frame's first 8 header bytes and
//! page data in order, matches. Checksum words are big-endian when the magic's low bit is set,
//! little-endian otherwise.

use super::FormatError;

pub const WAL_HEADER_SIZE: usize = 32;
pub const FRAME_HEADER_SIZE: usize = 24;
const MAGIC_LE: u32 = 0x377f_0682;
const MAGIC_BE: u32 = 0x377f_0683;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WalHeader {
    pub big_endian: bool,
    pub version: u32,
    pub page_size: usize,
    pub checkpoint_seq: u32,
    pub salt1: u32,
    pub salt2: u32,
    pub checksum: (u32, u32),
}

fn be(b: &[u8], off: usize) -> u32 {
    u32::from_be_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}

impl WalHeader {
    /// Parses and verifies the header. `Ok(None)` when the bytes are not (yet) a valid header:
    /// SQLite writes the header lazily, so an empty or zeroed file is normal.
    pub fn parse(b: &[u8]) -> Result<Option<WalHeader>, FormatError> {
        if b.len() < WAL_HEADER_SIZE {
            return Ok(None);
        }
        let magic = be(b, 0);
        let big_endian = match magic {
            MAGIC_LE => false,
            MAGIC_BE => true,
            _ => return Ok(None),
        };
        let raw_ps = be(b, 8);
        let page_size = match raw_ps {
            65536 => 65536,
            n if (512..=32768).contains(&n) && n.is_power_of_two() => n as usize,
            n => {
                return Err(FormatError::at(
                    0,
                    8,
                    format!("WAL header page size {n} invalid"),
                ));
            }
        };
        let checksum = (be(b, 24), be(b, 28));
        if checksum_words(big_endian, (0, 0), &b[..24]) != checksum {
            return Ok(None);
        }
        Ok(Some(WalHeader {
            big_endian,
            version: be(b, 4),
            page_size,
            checkpoint_seq: be(b, 12),
            salt1: be(b, 16),
            salt2: be(b, 20),
            checksum,
        }))
    }

    pub fn frame_size(&self) -> usize {
        FRAME_HEADER_SIZE + self.page_size
    }

    /// Byte offset of 1-based frame `n`.
    pub fn frame_offset(&self, n: u32) -> u64 {
        WAL_HEADER_SIZE as u64 + u64::from(n - 1) * self.frame_size() as u64
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WalFrameHeader {
    pub pgno: u32,
    /// Database size in pages after the commit on a commit frame, else 0.
    pub commit: u32,
    pub salt1: u32,
    pub salt2: u32,
    pub checksum: (u32, u32),
}

impl WalFrameHeader {
    pub fn parse(b: &[u8]) -> Option<WalFrameHeader> {
        if b.len() < FRAME_HEADER_SIZE {
            return None;
        }
        Some(WalFrameHeader {
            pgno: be(b, 0),
            commit: be(b, 4),
            salt1: be(b, 8),
            salt2: be(b, 12),
            checksum: (be(b, 16), be(b, 20)),
        })
    }

    /// Validates a whole frame (header + page) against the WAL header and the running
    /// checksum `prev`; returns the new running checksum when valid.
    pub fn validate(
        frame: &[u8],
        hdr: &WalHeader,
        prev: (u32, u32),
    ) -> Option<(WalFrameHeader, (u32, u32))> {
        let fh = WalFrameHeader::parse(frame)?;
        if frame.len() != hdr.frame_size()
            || fh.salt1 != hdr.salt1
            || fh.salt2 != hdr.salt2
            || fh.pgno == 0
        {
            return None;
        }
        let c = checksum_words(hdr.big_endian, prev, &frame[..8]);
        let c = checksum_words(hdr.big_endian, c, &frame[FRAME_HEADER_SIZE..]);
        (c == fh.checksum).then_some((fh, c))
    }
}

/// SQLite's WAL checksum over `data` (a multiple of 8 bytes), continuing from `s`.
pub fn checksum_words(big_endian: bool, s: (u32, u32), data: &[u8]) -> (u32, u32) {
    let (mut s0, mut s1) = s;
    for ch in data.chunks_exact(8) {
        let (x0, x1) = if big_endian {
            (be(ch, 0), be(ch, 4))
        } else {
            (
                u32::from_le_bytes([ch[0], ch[1], ch[2], ch[3]]),
                u32::from_le_bytes([ch[4], ch[5], ch[6], ch[7]]),
            )
        };
        s0 = s0.wrapping_add(x0).wrapping_add(s1);
        s1 = s1.wrapping_add(x1).wrapping_add(s0);
    }
    (s0, s1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn header(big: bool) -> Vec<u8> {
        let mut h = Vec::new();
        h.extend_from_slice(&(if big { MAGIC_BE } else { MAGIC_LE }).to_be_bytes());
        h.extend_from_slice(&3_007_000u32.to_be_bytes());
        h.extend_from_slice(&512u32.to_be_bytes());
        h.extend_from_slice(&0u32.to_be_bytes());
        h.extend_from_slice(&7u32.to_be_bytes());
        h.extend_from_slice(&9u32.to_be_bytes());
        let c = checksum_words(big, (0, 0), &h);
        h.extend_from_slice(&c.0.to_be_bytes());
        h.extend_from_slice(&c.1.to_be_bytes());
        h
    }

    #[test]
    fn frames_validate_in_both_byte_orders() {
        for big in [false, true] {
            let h = header(big);
            let wh = WalHeader::parse(&h).unwrap().unwrap();
            let mut f = Vec::new();
            f.extend_from_slice(&1u32.to_be_bytes());
            f.extend_from_slice(&1u32.to_be_bytes());
            f.extend_from_slice(&7u32.to_be_bytes());
            f.extend_from_slice(&9u32.to_be_bytes());
            let page = vec![0xabu8; 512];
            let c = checksum_words(big, wh.checksum, &f[..8]);
            let c = checksum_words(big, c, &page);
            f.extend_from_slice(&c.0.to_be_bytes());
            f.extend_from_slice(&c.1.to_be_bytes());
            f.extend_from_slice(&page);
            let (fh, c2) = WalFrameHeader::validate(&f, &wh, wh.checksum).unwrap();
            assert_eq!((fh.pgno, fh.commit, c2), (1, 1, c));
            // A flipped page byte breaks the chain.
            f[100] ^= 1;
            assert!(WalFrameHeader::validate(&f, &wh, wh.checksum).is_none());
        }
    }

    proptest! {
        #[test]
        fn random_headers_never_panic(b in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = WalHeader::parse(&b);
            let _ = WalFrameHeader::parse(&b);
        }
    }
}
