//! Reading segment files: headers, frames in chunks, the full scan used by recovery and
//! `verify`, the quick check of sealed segments, and the torn-tail test.
//!
//! The torn-tail rule (proto/log-format.md, "Recovery"): when the newest segment holds an
//! invalid frame at offset X, the bytes from X to the end of the file are a torn tail if no
//! valid frame starts anywhere after X (a record whose LSN could follow the last good one, or a
//! seal trailer). A crashed writer can only leave a prefix of its last unsynced write, so a
//! valid frame after an invalid one means the bytes were damaged after they were written:
//! corruption, reported and never truncated.

use crate::format::{
    self, FRAME_HEADER_BYTES, Frame, HEADER_FIXED_BYTES, HeaderError, MAX_SOURCE_IDENTITY_BYTES,
    SegmentHeader, TRAILER_BYTES, TRAILER_MARKER,
};
use crate::storage::{LogFile, LogStorage};
use crate::{LogError, LogId, SegmentInfo, micros_to_system_time};
use ferry_core::Lsn;
use std::io;
use std::path::{Path, PathBuf};

/// How much a chunked reader reads at once.
const CHUNK_BYTES: usize = 256 * 1024;

/// Reads a file through a buffer of [`CHUNK_BYTES`], by offset.
pub(crate) struct Chunked {
    file: Box<dyn LogFile>,
    buf: Vec<u8>,
    start: u64,
}

impl Chunked {
    pub fn new(file: Box<dyn LogFile>) -> Self {
        Chunked {
            file,
            buf: Vec::new(),
            start: 0,
        }
    }

    pub fn into_file(self) -> Box<dyn LogFile> {
        self.file
    }

    /// Forgets the buffered bytes (they may be older than bytes written since).
    pub fn invalidate(&mut self) {
        self.buf.clear();
        self.start = 0;
    }

    /// Up to `n` bytes at `offset` (fewer only at the end of the file).
    pub fn get(&mut self, offset: u64, n: usize) -> io::Result<&[u8]> {
        let have = offset >= self.start
            && offset + n as u64 <= self.start + self.buf.len() as u64
            && !self.buf.is_empty();
        if !have {
            let want = n.max(CHUNK_BYTES);
            self.buf.resize(want, 0);
            let got = self.file.read_at(&mut self.buf, offset)?;
            self.buf.truncate(got);
            self.start = offset;
        }
        let from = (offset - self.start) as usize;
        let to = (from + n).min(self.buf.len());
        Ok(&self.buf[from..to])
    }

    /// The frame at `offset`, with its whole extent buffered (see [`Chunked::bytes`]).
    pub fn frame_at(&mut self, offset: u64) -> io::Result<Frame> {
        let mut need = TRAILER_BYTES;
        loop {
            let bytes = self.get(offset, need)?;
            let got = bytes.len();
            match format::parse_frame(bytes) {
                Frame::Incomplete { needed } if got == need && needed > need => need = needed,
                frame => return Ok(frame),
            }
        }
    }

    /// `len` bytes at `offset`; they must have been buffered by the last `frame_at`.
    pub fn bytes(&self, offset: u64, len: usize) -> &[u8] {
        let from = (offset - self.start) as usize;
        &self.buf[from..from + len]
    }
}

/// Reads and checks the header of the segment at `path` (named for `name_lsn`).
pub(crate) fn read_header(
    file: &dyn LogFile,
    path: &Path,
    name_lsn: Lsn,
) -> Result<(SegmentHeader, u64), LogError> {
    let mut buf = vec![0u8; HEADER_FIXED_BYTES + MAX_SOURCE_IDENTITY_BYTES + 4];
    let got = file
        .read_at(&mut buf, 0)
        .map_err(|e| LogError::io("reading the header of", path, e))?;
    buf.truncate(got);
    match SegmentHeader::decode(&buf) {
        Ok((h, len)) => {
            if h.first_lsn != name_lsn {
                return Err(LogError::corrupt(
                    path,
                    28,
                    format!(
                        "the header says the segment starts at LSN {}, its file name says {}",
                        h.first_lsn, name_lsn
                    ),
                ));
            }
            Ok((h, len as u64))
        }
        Err(HeaderError::UnsupportedVersion(v)) => Err(LogError::UnsupportedVersion {
            path: path.to_path_buf(),
            found: v,
            known: format::SEGMENT_FORMAT_VERSION,
        }),
        Err(e) => Err(LogError::corrupt(path, 0, e.describe())),
    }
}

/// Segment files of `dir`, oldest first.
pub(crate) fn list_segments(
    storage: &dyn LogStorage,
    dir: &Path,
) -> Result<Vec<(Lsn, PathBuf)>, LogError> {
    let names = storage
        .list_dir(dir)
        .map_err(|e| LogError::io("listing", dir, e))?;
    let mut segs: Vec<(Lsn, PathBuf)> = names
        .iter()
        .filter_map(|n| format::parse_segment_file_name(n).map(|lsn| (lsn, dir.join(n))))
        .collect();
    segs.sort();
    Ok(segs)
}

/// The seal trailer at the end of a file of `len` bytes whose header is `header_len` long.
pub(crate) fn read_trailer(
    file: &dyn LogFile,
    path: &Path,
    header_len: u64,
    len: u64,
) -> Result<Option<(Lsn, i64)>, LogError> {
    if len < header_len + TRAILER_BYTES as u64 {
        return Ok(None);
    }
    let mut buf = [0u8; TRAILER_BYTES];
    let got = file
        .read_at(&mut buf, len - TRAILER_BYTES as u64)
        .map_err(|e| LogError::io("reading the trailer of", path, e))?;
    if got < TRAILER_BYTES {
        return Ok(None);
    }
    match format::parse_frame(&buf) {
        Frame::Trailer {
            last_lsn,
            sealed_at_micros,
        } => Ok(Some((last_lsn, sealed_at_micros))),
        _ => Ok(None),
    }
}

/// The result of reading a whole segment frame by frame.
pub(crate) struct FullScan {
    pub header: SegmentHeader,
    pub file_len: u64,
    /// The last valid record (`first_lsn - 1` when none).
    pub last_lsn: Lsn,
    pub records: u64,
    /// Offset just after the last valid record or trailer.
    pub valid_end: u64,
    pub sealed_at: Option<i64>,
    /// The first invalid frame: offset and why.
    pub bad: Option<(u64, String)>,
}

/// Reads every frame of a segment, checking CRCs and LSN density, up to the first bad frame.
pub(crate) fn scan_full(
    file: Box<dyn LogFile>,
    path: &Path,
    name_lsn: Lsn,
) -> Result<(FullScan, Chunked), LogError> {
    let (header, header_len) = read_header(&*file, path, name_lsn)?;
    let file_len = file
        .size()
        .map_err(|e| LogError::io("reading the length of", path, e))?;
    let mut chunk = Chunked::new(file);
    let mut off = header_len;
    let mut expected = header.first_lsn.0;
    let mut sealed_at = None;
    let mut bad = None;
    while off < file_len {
        if sealed_at.is_some() {
            bad = Some((off, "bytes after the seal trailer".to_string()));
            break;
        }
        let frame = chunk
            .frame_at(off)
            .map_err(|e| LogError::io("reading", path, e))?;
        match frame {
            Frame::Record { lsn, .. } if lsn.0 == expected => {
                off += frame.total_len() as u64;
                expected += 1;
            }
            Frame::Record { lsn, .. } => {
                bad = Some((
                    off,
                    format!("expected the record of LSN {expected}, found LSN {lsn}"),
                ));
                break;
            }
            Frame::Trailer {
                last_lsn,
                sealed_at_micros,
            } if last_lsn.0 + 1 == expected => {
                off += TRAILER_BYTES as u64;
                sealed_at = Some(sealed_at_micros);
            }
            Frame::Trailer { last_lsn, .. } => {
                bad = Some((
                    off,
                    format!(
                        "the seal trailer names LSN {last_lsn} as last, but the segment ends at LSN {}",
                        expected - 1
                    ),
                ));
                break;
            }
            Frame::Incomplete { .. } => {
                bad = Some((off, "the file ends inside a record".to_string()));
                break;
            }
            Frame::Invalid(why) => {
                bad = Some((off, why.to_string()));
                break;
            }
        }
    }
    let first = header.first_lsn.0;
    Ok((
        FullScan {
            header,
            file_len,
            last_lsn: Lsn(expected - 1),
            records: expected - first,
            valid_end: off,
            sealed_at,
            bad,
        },
        chunk,
    ))
}

/// Whether a valid frame that could follow `last_good` starts anywhere after `bad_offset`:
/// the difference between a torn tail and corruption. Returns the offset of the first one.
pub(crate) fn valid_frame_after(
    file: &dyn LogFile,
    path: &Path,
    bad_offset: u64,
    file_len: u64,
    last_good: Lsn,
) -> Result<Option<u64>, LogError> {
    let start = bad_offset + 1;
    if start >= file_len {
        return Ok(None);
    }
    let mut rest = vec![0u8; (file_len - start) as usize];
    let got = file
        .read_at(&mut rest, start)
        .map_err(|e| LogError::io("reading", path, e))?;
    rest.truncate(got);
    // A real record after the bad one has an LSN between last_good + 1 and
    // last_good + (number of frames that fit): a cheap filter before the CRC.
    let max_lsn = last_good.0 + (rest.len() / FRAME_HEADER_BYTES) as u64 + 1;
    for p in 0..rest.len().saturating_sub(FRAME_HEADER_BYTES - 1) {
        let b = &rest[p..];
        let len = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        let mut lsn = [0u8; 8];
        lsn.copy_from_slice(&b[8..16]);
        let lsn = u64::from_le_bytes(lsn);
        let plausible = if len == TRAILER_MARKER {
            lsn >= last_good.0 && lsn <= max_lsn
        } else {
            lsn > last_good.0 && lsn <= max_lsn
        };
        if !plausible {
            continue;
        }
        if matches!(
            format::parse_frame(b),
            Frame::Record { .. } | Frame::Trailer { .. }
        ) {
            return Ok(Some(start + p as u64));
        }
    }
    Ok(None)
}

/// Header and seal trailer of a segment that is not the newest: such a segment must be sealed.
pub(crate) struct SealedCheck {
    pub header: SegmentHeader,
    pub last_lsn: Lsn,
}

pub(crate) fn check_sealed(
    storage: &dyn LogStorage,
    path: &Path,
    name_lsn: Lsn,
) -> Result<SealedCheck, LogError> {
    let file = storage
        .open_read(path)
        .map_err(|e| LogError::io("opening", path, e))?;
    let (header, header_len) = read_header(&*file, path, name_lsn)?;
    let len = file
        .size()
        .map_err(|e| LogError::io("reading the length of", path, e))?;
    match read_trailer(&*file, path, header_len, len)? {
        Some((last_lsn, _)) if last_lsn >= header.first_lsn => Ok(SealedCheck { header, last_lsn }),
        Some((last_lsn, _)) => Err(LogError::corrupt(
            path,
            len - TRAILER_BYTES as u64,
            format!(
                "the seal trailer names LSN {last_lsn} as last, before the segment's first LSN {}",
                header.first_lsn
            ),
        )),
        None => Err(LogError::corrupt(
            path,
            len.saturating_sub(TRAILER_BYTES as u64),
            "a segment that is not the newest must end with a seal trailer, and this one does not",
        )),
    }
}

/// Describes every segment of `dir` from the files themselves; `durable` bounds the newest.
pub(crate) fn describe_segments(
    storage: &dyn LogStorage,
    dir: &Path,
    log_id: LogId,
    durable: Lsn,
) -> Result<Vec<SegmentInfo>, LogError> {
    let segs = list_segments(storage, dir)?;
    let mut out = Vec::with_capacity(segs.len());
    for (i, (first, path)) in segs.iter().enumerate() {
        let file = match storage.open_read(path) {
            Ok(f) => f,
            // Deleted by retention since the listing.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(LogError::io("opening", path, e)),
        };
        let (header, header_len) = read_header(&*file, path, *first)?;
        if header.log_id != log_id {
            return Err(LogError::WrongLog {
                dir: dir.to_path_buf(),
                reason: format!(
                    "segment {} belongs to log {}, not {}",
                    path.display(),
                    header.log_id,
                    log_id
                ),
            });
        }
        let bytes = file
            .size()
            .map_err(|e| LogError::io("reading the length of", path, e))?;
        let trailer = read_trailer(&*file, path, header_len, bytes)?;
        let last_lsn = match (segs.get(i + 1), trailer) {
            (_, Some((last, _))) => last,
            (Some((next_first, _)), None) => Lsn(next_first.0 - 1),
            (None, None) => Lsn(durable.0.max(first.0 - 1)),
        };
        out.push(SegmentInfo {
            path: path.clone(),
            first_lsn: *first,
            last_lsn,
            records: last_lsn.0 + 1 - first.0,
            bytes,
            sealed: trailer.is_some(),
            created_at: micros_to_system_time(header.created_at_micros),
            sealed_at: trailer.map(|(_, at)| micros_to_system_time(at)),
        });
    }
    Ok(out)
}
