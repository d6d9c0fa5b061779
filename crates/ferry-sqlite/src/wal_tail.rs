//! Reading committed transactions out of a WAL file through one long-lived descriptor.
//!
//! A scan starts at a [`ResumePoint`] (salts, last consumed frame, running checksum) and
//! validates every following frame (salts and the cumulative checksum chain); it stops at
//! the first invalid frame and returns only transactions that end in a commit frame, since
//! frames of an open or rolled-back transaction can sit in the file with valid checksums and
//! be rewritten later. Whether a WAL with other salts is a continuation or a gap is the
//! caller's call ([`ScanStart`]): only the tailer knows whether it held a read transaction
//! the whole time (see `capture.rs`).

use crate::format::wal::{FRAME_HEADER_SIZE, WAL_HEADER_SIZE, WalFrameHeader, WalHeader};
use crate::pages::Page;
use crate::shadow::ResumePoint;
use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

/// One committed transaction: the last image of each page it wrote, cut to its database size.
pub struct WalTxn {
    pub pages: HashMap<u32, Page>,
    pub point: ResumePoint,
    pub frames: u32,
}

pub enum ScanStart {
    /// Continue after `from`: valid only in the same WAL generation.
    After(ResumePoint),
    /// Read the current generation from its first frame (a continuation proven by the caller).
    Beginning,
}

pub enum ScanOutcome {
    /// Transactions found (possibly none) and the header they were read under.
    Frames {
        header: WalHeader,
        txns: Vec<WalTxn>,
        more: bool,
    },
    /// The WAL has no valid header (never written, or truncated by a TRUNCATE checkpoint).
    NoHeader,
    /// The WAL is not the one `from` was read from, or no longer holds `from`'s frame.
    NotContinuous,
}

/// Reads the WAL header.
pub fn read_header(wal: &File) -> std::io::Result<Option<WalHeader>> {
    let mut b = [0u8; WAL_HEADER_SIZE];
    let len = wal.metadata()?.len();
    if len < WAL_HEADER_SIZE as u64 {
        return Ok(None);
    }
    wal.read_exact_at(&mut b, 0)?;
    Ok(WalHeader::parse(&b).ok().flatten())
}

/// Scans committed transactions, stopping after `max_bytes` of page images (at a commit).
pub fn scan(
    wal: &File,
    start: ScanStart,
    change_counter: u32,
    max_bytes: usize,
) -> std::io::Result<ScanOutcome> {
    let Some(header) = read_header(wal)? else {
        return Ok(ScanOutcome::NoHeader);
    };
    scan_generation(wal, header, start, change_counter, max_bytes)
}

/// Like [`scan`], but for the generation `header` describes, which may no longer be the
/// file's current one: the frames left of an ended generation, beyond what the new one has
/// overwritten, still validate against its salts and checksum chain.
pub fn scan_generation(
    wal: &File,
    header: WalHeader,
    start: ScanStart,
    change_counter: u32,
    max_bytes: usize,
) -> std::io::Result<ScanOutcome> {
    let fsize = header.frame_size();
    let (mut frame, mut cksum) = match start {
        ScanStart::Beginning => (0u32, header.checksum),
        ScanStart::After(p) => {
            if p.salts != Some((header.salt1, header.salt2)) {
                return Ok(ScanOutcome::NotContinuous);
            }
            if p.frame > 0 {
                // The frame we stopped at must still be there, with the checksum we saw.
                let mut fh = [0u8; FRAME_HEADER_SIZE];
                let off = header.frame_offset(p.frame);
                if wal.read_at(&mut fh, off)? < FRAME_HEADER_SIZE {
                    return Ok(ScanOutcome::NotContinuous);
                }
                match WalFrameHeader::parse(&fh) {
                    Some(h)
                        if h.salt1 == header.salt1
                            && h.salt2 == header.salt2
                            && h.checksum == p.checksum => {}
                    _ => return Ok(ScanOutcome::NotContinuous),
                }
            } else if p.checksum != header.checksum {
                return Ok(ScanOutcome::NotContinuous);
            }
            (p.frame, p.checksum)
        }
    };
    let file_len = wal.metadata()?.len();
    let mut txns = Vec::new();
    let mut cur: HashMap<u32, Page> = HashMap::new();
    let mut cur_frames = 0u32;
    let mut bytes = 0usize;
    let mut cc = change_counter;
    const CHUNK_FRAMES: u64 = 256;
    let mut buf = Vec::new();
    loop {
        let off = header.frame_offset(frame + 1);
        if off + fsize as u64 > file_len {
            return Ok(ScanOutcome::Frames {
                header,
                txns,
                more: false,
            });
        }
        let n = ((file_len - off) / fsize as u64).min(CHUNK_FRAMES) as usize;
        buf.resize(n * fsize, 0);
        let got = read_up_to(wal, &mut buf, off)?;
        let n = got / fsize;
        if n == 0 {
            return Ok(ScanOutcome::Frames {
                header,
                txns,
                more: false,
            });
        }
        for i in 0..n {
            let f = &buf[i * fsize..(i + 1) * fsize];
            let Some((fh, c)) = WalFrameHeader::validate(f, &header, cksum) else {
                return Ok(ScanOutcome::Frames {
                    header,
                    txns,
                    more: false,
                });
            };
            cksum = c;
            frame += 1;
            cur_frames += 1;
            let page: Page = Arc::from(&f[FRAME_HEADER_SIZE..]);
            if fh.pgno == 1 && page.len() >= 28 {
                cc = u32::from_be_bytes([page[24], page[25], page[26], page[27]]);
            }
            cur.insert(fh.pgno, page);
            if fh.commit != 0 {
                let mut pages = std::mem::take(&mut cur);
                pages.retain(|&p, _| p <= fh.commit);
                bytes += pages.len() * header.page_size;
                txns.push(WalTxn {
                    pages,
                    point: ResumePoint {
                        salts: Some((header.salt1, header.salt2)),
                        frame,
                        checksum: cksum,
                        db_pages: fh.commit,
                        change_counter: cc,
                    },
                    frames: cur_frames,
                });
                cur_frames = 0;
                if bytes >= max_bytes {
                    return Ok(ScanOutcome::Frames {
                        header,
                        txns,
                        more: true,
                    });
                }
            }
        }
    }
}

fn read_up_to(f: &File, buf: &mut [u8], off: u64) -> std::io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        let n = f.read_at(&mut buf[done..], off + done as u64)?;
        if n == 0 {
            break;
        }
        done += n;
    }
    Ok(done)
}

/// The salts in the header of frame `n` as the file holds it now, `None` past its end.
pub fn frame_salts(wal: &File, header: &WalHeader, n: u32) -> std::io::Result<Option<(u32, u32)>> {
    let mut fh = [0u8; FRAME_HEADER_SIZE];
    if wal.read_at(&mut fh, header.frame_offset(n))? < FRAME_HEADER_SIZE {
        return Ok(None);
    }
    Ok(WalFrameHeader::parse(&fh).map(|h| (h.salt1, h.salt2)))
}

/// The commits of generation `header` in the file from its first frame through frame
/// `upto` (validated like a scan, pages not kept): how many, and whether one ends exactly
/// at `upto` (true for `upto == 0`).
pub fn count_commits(wal: &File, header: &WalHeader, upto: u32) -> std::io::Result<(u64, bool)> {
    let fsize = header.frame_size();
    let file_len = wal.metadata()?.len();
    let mut cksum = header.checksum;
    let mut commits = 0u64;
    let mut buf = vec![0u8; fsize];
    for frame in 1..=upto {
        let off = header.frame_offset(frame);
        if off + fsize as u64 > file_len || read_up_to(wal, &mut buf, off)? < fsize {
            return Ok((commits, false));
        }
        let Some((fh, c)) = WalFrameHeader::validate(&buf, header, cksum) else {
            return Ok((commits, false));
        };
        cksum = c;
        if fh.commit != 0 {
            commits += 1;
        } else if frame == upto {
            return Ok((commits, false));
        }
    }
    Ok((commits, true))
}
