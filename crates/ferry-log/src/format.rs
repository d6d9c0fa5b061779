//! The log's bytes, exactly as `proto/log-format.md` specifies them (version 1).
//!
//! All integers are little-endian. CRCs are CRC-32C (Castagnoli, as in iSCSI/ext4), computed
//! with the `crc32c` crate (hardware instructions where available).
//!
//! Segment header (at offset 0 of every `<first-lsn:020>.seg`), `H = 50 + n` bytes:
//!
//! ```text
//! 0    8  magic "FERRYLOG"
//! 8    2  format version (1)
//! 10   2  header length H, CRC included
//! 12   16 log id
//! 28   8  first LSN (equals the number in the file name)
//! 36   8  created at, microseconds since the Unix epoch (i64)
//! 44   2  n = byte length of the source identity (at most 4096)
//! 46   n  source identity, UTF-8
//! 46+n 4  CRC-32C of bytes [0, 46+n)
//! ```
//!
//! Then records, each framed as (`16 + len` bytes):
//!
//! ```text
//! 0  4   len: payload length (at most MAX_PAYLOAD_BYTES; 0xFFFFFFFF marks the trailer)
//! 4  4   CRC-32C of bytes [0, 4) ++ [8, 16 + len): length, LSN and payload
//! 8  8   LSN
//! 16 len payload (opaque to the log)
//! ```
//!
//! The CRC covers the length so that a damaged length is caught by the CRC, not only by
//! running off the end of the file; and the LSN so that a stale record cannot pass for
//! another. A sealed segment ends with a 24-byte trailer and nothing after it:
//!
//! ```text
//! 0  4  0xFFFFFFFF
//! 4  4  CRC-32C of bytes [0, 4) ++ [8, 24)
//! 8  8  last LSN in the segment
//! 16 8  sealed at, microseconds since the Unix epoch (i64)
//! ```
//!
//! `durable` (36 bytes, pwrite'd in place): "FERRYDUR", log id, durable LSN, CRC-32C of
//! [0, 32). `consumers/<name>` (44 bytes, replaced by rename): "FERRYCUR", log id, applied
//! LSN, updated at (µs), CRC-32C of [0, 40).

use crate::LogId;
use ferry_core::Lsn;

pub const SEGMENT_MAGIC: [u8; 8] = *b"FERRYLOG";
pub const SEGMENT_FORMAT_VERSION: u16 = 1;
pub const SEGMENT_SUFFIX: &str = ".seg";
pub const MAX_SOURCE_IDENTITY_BYTES: usize = 4096;
/// Header bytes before the source identity.
pub const HEADER_FIXED_BYTES: usize = 46;
/// Bytes of framing before each payload.
pub const FRAME_HEADER_BYTES: usize = 16;
/// The largest payload a record may carry (256 MiB). A length above this is damage.
pub const MAX_PAYLOAD_BYTES: usize = 256 * 1024 * 1024;
pub const TRAILER_MARKER: u32 = u32::MAX;
pub const TRAILER_BYTES: usize = 24;

pub const DURABLE_FILE: &str = "durable";
pub const DURABLE_MAGIC: [u8; 8] = *b"FERRYDUR";
pub const DURABLE_BYTES: usize = 36;

pub const CONSUMERS_DIR: &str = "consumers";
pub const CONSUMER_MAGIC: [u8; 8] = *b"FERRYCUR";
pub const CONSUMER_BYTES: usize = 44;

pub const LOCK_FILE: &str = "LOCK";

/// `00000000000000000001.seg` for LSN 1.
pub fn segment_file_name(first_lsn: Lsn) -> String {
    format!("{:020}{SEGMENT_SUFFIX}", first_lsn.0)
}

/// The first LSN named by a segment file name, if `name` is one.
pub fn parse_segment_file_name(name: &str) -> Option<Lsn> {
    let digits = name.strip_suffix(SEGMENT_SUFFIX)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok().map(Lsn)
}

/// The header at the start of every segment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentHeader {
    pub log_id: LogId,
    pub first_lsn: Lsn,
    pub created_at_micros: i64,
    pub source_identity: String,
}

/// Why a header does not decode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HeaderError {
    /// Fewer bytes than the header needs.
    Truncated,
    BadMagic,
    UnsupportedVersion(u16),
    Malformed(&'static str),
    BadCrc,
}

impl HeaderError {
    pub fn describe(&self) -> String {
        match self {
            HeaderError::Truncated => "the segment header is cut short".into(),
            HeaderError::BadMagic => "the segment does not start with \"FERRYLOG\"".into(),
            HeaderError::UnsupportedVersion(v) => format!("unknown segment format version {v}"),
            HeaderError::Malformed(why) => format!("malformed segment header: {why}"),
            HeaderError::BadCrc => "the segment header fails its CRC".into(),
        }
    }
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

impl SegmentHeader {
    /// The encoded header. The identity must be at most [`MAX_SOURCE_IDENTITY_BYTES`] (the
    /// writer checks before calling).
    pub fn encode(&self) -> Vec<u8> {
        let id = self.source_identity.as_bytes();
        let n = id.len().min(MAX_SOURCE_IDENTITY_BYTES);
        let total = HEADER_FIXED_BYTES + n + 4;
        let mut out = Vec::with_capacity(total);
        out.extend_from_slice(&SEGMENT_MAGIC);
        out.extend_from_slice(&SEGMENT_FORMAT_VERSION.to_le_bytes());
        out.extend_from_slice(&(total as u16).to_le_bytes());
        out.extend_from_slice(&self.log_id.0);
        out.extend_from_slice(&self.first_lsn.0.to_le_bytes());
        out.extend_from_slice(&self.created_at_micros.to_le_bytes());
        out.extend_from_slice(&(n as u16).to_le_bytes());
        out.extend_from_slice(&id[..n]);
        let crc = crc32c::crc32c(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    /// Decodes the header at the start of `bytes`; returns it and its length.
    pub fn decode(bytes: &[u8]) -> Result<(SegmentHeader, usize), HeaderError> {
        if bytes.len() < 12 {
            return Err(HeaderError::Truncated);
        }
        if bytes[..8] != SEGMENT_MAGIC {
            return Err(HeaderError::BadMagic);
        }
        let version = u16_at(bytes, 8);
        if version != SEGMENT_FORMAT_VERSION {
            return Err(HeaderError::UnsupportedVersion(version));
        }
        let total = u16_at(bytes, 10) as usize;
        if total < HEADER_FIXED_BYTES + 4 {
            return Err(HeaderError::Malformed("header length too small"));
        }
        if bytes.len() < total {
            return Err(HeaderError::Truncated);
        }
        let n = u16_at(bytes, 44) as usize;
        if n > MAX_SOURCE_IDENTITY_BYTES || HEADER_FIXED_BYTES + n + 4 != total {
            return Err(HeaderError::Malformed(
                "identity length does not match header length",
            ));
        }
        let crc = u32_at(bytes, total - 4);
        if crc32c::crc32c(&bytes[..total - 4]) != crc {
            return Err(HeaderError::BadCrc);
        }
        let mut log_id = [0u8; 16];
        log_id.copy_from_slice(&bytes[12..28]);
        let source_identity =
            std::str::from_utf8(&bytes[HEADER_FIXED_BYTES..HEADER_FIXED_BYTES + n])
                .map_err(|_| HeaderError::Malformed("source identity is not UTF-8"))?
                .to_string();
        Ok((
            SegmentHeader {
                log_id: LogId(log_id),
                first_lsn: Lsn(u64_at(bytes, 28)),
                created_at_micros: u64_at(bytes, 36) as i64,
                source_identity,
            },
            total,
        ))
    }
}

/// Appends the frame of one record to `out`.
pub fn encode_frame(out: &mut Vec<u8>, lsn: Lsn, payload: &[u8]) {
    let len = (payload.len() as u32).to_le_bytes();
    let lsn = lsn.0.to_le_bytes();
    let crc = crc32c::crc32c_append(crc32c::crc32c_append(crc32c::crc32c(&len), &lsn), payload);
    out.extend_from_slice(&len);
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(&lsn);
    out.extend_from_slice(payload);
}

/// The seal trailer of a segment whose last record is `last_lsn`.
pub fn encode_trailer(last_lsn: Lsn, sealed_at_micros: i64) -> [u8; TRAILER_BYTES] {
    let mut out = [0u8; TRAILER_BYTES];
    out[..4].copy_from_slice(&TRAILER_MARKER.to_le_bytes());
    out[8..16].copy_from_slice(&last_lsn.0.to_le_bytes());
    out[16..24].copy_from_slice(&sealed_at_micros.to_le_bytes());
    let crc = crc32c::crc32c_append(crc32c::crc32c(&out[..4]), &out[8..24]);
    out[4..8].copy_from_slice(&crc.to_le_bytes());
    out
}

/// What the bytes at a frame position hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    /// A record: its LSN, and where its payload lies relative to the frame start.
    Record {
        lsn: Lsn,
        payload_start: usize,
        payload_len: usize,
    },
    /// The seal trailer.
    Trailer {
        last_lsn: Lsn,
        sealed_at_micros: i64,
    },
    /// `bytes` ends before the frame does; `needed` is the frame's total length when known
    /// (otherwise the length of the frame header).
    Incomplete { needed: usize },
    /// Not a valid frame.
    Invalid(&'static str),
}

impl Frame {
    /// Bytes the frame occupies (records and trailers only).
    pub fn total_len(&self) -> usize {
        match self {
            Frame::Record { payload_len, .. } => FRAME_HEADER_BYTES + payload_len,
            Frame::Trailer { .. } => TRAILER_BYTES,
            _ => 0,
        }
    }
}

/// Parses the frame at the start of `bytes`, checking its CRC.
pub fn parse_frame(bytes: &[u8]) -> Frame {
    if bytes.len() < FRAME_HEADER_BYTES {
        return Frame::Incomplete {
            needed: FRAME_HEADER_BYTES,
        };
    }
    let len = u32_at(bytes, 0);
    let crc = u32_at(bytes, 4);
    if len == TRAILER_MARKER {
        if bytes.len() < TRAILER_BYTES {
            return Frame::Incomplete {
                needed: TRAILER_BYTES,
            };
        }
        let want = crc32c::crc32c_append(crc32c::crc32c(&bytes[..4]), &bytes[8..24]);
        if want != crc {
            return Frame::Invalid("seal trailer fails its CRC");
        }
        return Frame::Trailer {
            last_lsn: Lsn(u64_at(bytes, 8)),
            sealed_at_micros: u64_at(bytes, 16) as i64,
        };
    }
    let len = len as usize;
    if len > MAX_PAYLOAD_BYTES {
        return Frame::Invalid("record length exceeds the maximum payload size");
    }
    let total = FRAME_HEADER_BYTES + len;
    if bytes.len() < total {
        return Frame::Incomplete { needed: total };
    }
    let want = crc32c::crc32c_append(crc32c::crc32c(&bytes[..4]), &bytes[8..total]);
    if want != crc {
        return Frame::Invalid("record fails its CRC");
    }
    Frame::Record {
        lsn: Lsn(u64_at(bytes, 8)),
        payload_start: FRAME_HEADER_BYTES,
        payload_len: len,
    }
}

/// The published durable LSN.
pub fn encode_durable(log_id: LogId, durable: Lsn) -> [u8; DURABLE_BYTES] {
    let mut out = [0u8; DURABLE_BYTES];
    out[..8].copy_from_slice(&DURABLE_MAGIC);
    out[8..24].copy_from_slice(&log_id.0);
    out[24..32].copy_from_slice(&durable.0.to_le_bytes());
    let crc = crc32c::crc32c(&out[..32]);
    out[32..36].copy_from_slice(&crc.to_le_bytes());
    out
}

/// Decodes `durable`: `None` if the bytes are not a valid durable record (a torn concurrent
/// read, or damage).
pub fn decode_durable(bytes: &[u8]) -> Option<(LogId, Lsn)> {
    if bytes.len() != DURABLE_BYTES || bytes[..8] != DURABLE_MAGIC {
        return None;
    }
    if crc32c::crc32c(&bytes[..32]) != u32_at(bytes, 32) {
        return None;
    }
    let mut id = [0u8; 16];
    id.copy_from_slice(&bytes[8..24]);
    Some((LogId(id), Lsn(u64_at(bytes, 24))))
}

/// A consumer cursor file.
pub fn encode_consumer(
    log_id: LogId,
    applied: Lsn,
    updated_at_micros: i64,
) -> [u8; CONSUMER_BYTES] {
    let mut out = [0u8; CONSUMER_BYTES];
    out[..8].copy_from_slice(&CONSUMER_MAGIC);
    out[8..24].copy_from_slice(&log_id.0);
    out[24..32].copy_from_slice(&applied.0.to_le_bytes());
    out[32..40].copy_from_slice(&updated_at_micros.to_le_bytes());
    let crc = crc32c::crc32c(&out[..40]);
    out[40..44].copy_from_slice(&crc.to_le_bytes());
    out
}

/// Decodes a consumer cursor file: log id, applied LSN, updated at.
pub fn decode_consumer(bytes: &[u8]) -> Option<(LogId, Lsn, i64)> {
    if bytes.len() != CONSUMER_BYTES || bytes[..8] != CONSUMER_MAGIC {
        return None;
    }
    if crc32c::crc32c(&bytes[..40]) != u32_at(bytes, 40) {
        return None;
    }
    let mut id = [0u8; 16];
    id.copy_from_slice(&bytes[8..24]);
    Some((LogId(id), Lsn(u64_at(bytes, 24)), u64_at(bytes, 32) as i64))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> SegmentHeader {
        SegmentHeader {
            log_id: LogId([7; 16]),
            first_lsn: Lsn(42),
            created_at_micros: 1_700_000_000_000_000,
            source_identity: "sqlite:/srv/app.db".into(),
        }
    }

    #[test]
    fn header_round_trips_and_detects_damage() {
        let h = header();
        let bytes = h.encode();
        assert_eq!(
            bytes.len(),
            HEADER_FIXED_BYTES + h.source_identity.len() + 4
        );
        assert_eq!(SegmentHeader::decode(&bytes), Ok((h.clone(), bytes.len())));
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x10;
            assert!(
                SegmentHeader::decode(&b).is_err(),
                "flip at {i} went unnoticed"
            );
        }
        assert_eq!(
            SegmentHeader::decode(&bytes[..bytes.len() - 1]),
            Err(HeaderError::Truncated)
        );
    }

    #[test]
    fn frames_round_trip_and_detect_damage() {
        let mut buf = Vec::new();
        encode_frame(&mut buf, Lsn(9), b"hello");
        assert_eq!(
            parse_frame(&buf),
            Frame::Record {
                lsn: Lsn(9),
                payload_start: 16,
                payload_len: 5
            }
        );
        for i in 0..buf.len() {
            let mut b = buf.clone();
            b[i] ^= 0x01;
            assert!(
                !matches!(parse_frame(&b), Frame::Record { .. }),
                "flip at {i} went unnoticed"
            );
        }
        assert_eq!(parse_frame(&buf[..20]), Frame::Incomplete { needed: 21 });
        let t = encode_trailer(Lsn(9), 5);
        assert_eq!(
            parse_frame(&t),
            Frame::Trailer {
                last_lsn: Lsn(9),
                sealed_at_micros: 5
            }
        );
        let mut bad = t;
        bad[12] ^= 1;
        assert!(matches!(parse_frame(&bad), Frame::Invalid(_)));
    }

    #[test]
    fn segment_names() {
        assert_eq!(segment_file_name(Lsn(1)), "00000000000000000001.seg");
        assert_eq!(
            parse_segment_file_name("00000000000000004711.seg"),
            Some(Lsn(4711))
        );
        assert_eq!(parse_segment_file_name("4711.seg"), None);
        assert_eq!(
            parse_segment_file_name(".00000000000000004711.seg.tmp"),
            None
        );
    }

    #[test]
    fn small_files_round_trip() {
        let id = LogId([3; 16]);
        assert_eq!(
            decode_durable(&encode_durable(id, Lsn(77))),
            Some((id, Lsn(77)))
        );
        let mut d = encode_durable(id, Lsn(77));
        d[30] ^= 4;
        assert_eq!(decode_durable(&d), None);
        assert_eq!(
            decode_consumer(&encode_consumer(id, Lsn(5), 123)),
            Some((id, Lsn(5), 123))
        );
    }
}
