//! Cursors over the durable records of a log.
//!
//! A reader never yields a record above the durable LSN it knows: the writer's in-memory
//! value in the same process, the published `durable` file from another process. Records at
//! or below the durable LSN were completely written before that LSN was raised, but bytes the
//! reader buffered *earlier* may predate them. So a buffer is trusted only for LSNs that were
//! already durable when it was filled; reaching a record beyond that refills the buffer from
//! the file first. A frame that is still bad after a fresh read is corruption.
//!
//! Positioning: the segment holding `from` is the one with the greatest first LSN at or
//! below it (segments are named by first LSN); the reader scans that segment from its header
//! to `from`, then moves from segment to segment by name (`<last + 1>.seg`) at each seal
//! trailer.

use crate::format::{self, DURABLE_FILE, Frame};
use crate::segment::{self, Chunked};
use crate::storage::LogStorage;
use crate::writer::Shared;
use crate::{LogError, LogId};
use ferry_core::Lsn;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;

/// Where a reader learns the durable LSN.
pub(crate) enum DurableSource {
    Writer(Arc<Shared>),
    Published,
}

/// Reads the published durable LSN of the log in `dir`. A torn concurrent read is retried;
/// a missing file means nothing was published yet.
pub(crate) fn read_published_durable(
    storage: &dyn LogStorage,
    dir: &Path,
    log_id: LogId,
) -> Result<Lsn, LogError> {
    let path = dir.join(DURABLE_FILE);
    let mut last_err = String::new();
    for _ in 0..100 {
        let file = match storage.open_read(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Lsn::ZERO),
            Err(e) => return Err(LogError::io("opening", &path, e)),
        };
        let mut buf = [0u8; format::DURABLE_BYTES];
        let got = file
            .read_at(&mut buf, 0)
            .map_err(|e| LogError::io("reading", &path, e))?;
        match format::decode_durable(&buf[..got]) {
            Some((id, lsn)) if id == log_id => return Ok(lsn),
            Some((id, _)) => {
                return Err(LogError::WrongLog {
                    dir: dir.to_path_buf(),
                    reason: format!("{} names log {id}, not {log_id}", path.display()),
                });
            }
            None => last_err = format!("{got} bytes that do not decode"),
        }
        std::thread::yield_now();
    }
    Err(LogError::BadFile {
        path,
        reason: format!("the published durable LSN is unreadable ({last_err})"),
    })
}

struct ReaderSegment {
    path: PathBuf,
    chunk: Chunked,
    /// Offset of the next frame, and the LSN it must carry.
    offset: u64,
    expected: u64,
    /// The durable LSN when the buffer was last (re)filled: buffered frames up to this LSN
    /// are complete.
    buffered_durable: u64,
}

/// A cursor over durable records: `Iterator<Item = Result<(Lsn, payload), LogError>>`.
///
/// `next()` returns `None` when the cursor has caught up with the durable LSN; calling it
/// again later continues with records made durable since. After an error it returns `None`.
pub struct LogReader {
    storage: Arc<dyn LogStorage>,
    dir: PathBuf,
    log_id: LogId,
    durable: DurableSource,
    known_durable: u64,
    next: u64,
    seg: Option<ReaderSegment>,
    failed: bool,
}

impl LogReader {
    pub(crate) fn new(
        storage: Arc<dyn LogStorage>,
        dir: PathBuf,
        log_id: LogId,
        durable: DurableSource,
        from: Lsn,
    ) -> Result<LogReader, LogError> {
        let segs = segment::list_segments(&*storage, &dir)?;
        let oldest = segs.first().map_or(Lsn::FIRST, |(l, _)| *l);
        let start = if from == Lsn::ZERO { oldest } else { from };
        if start < oldest {
            return Err(LogError::Gone {
                requested: from,
                first: oldest,
            });
        }
        Ok(LogReader {
            storage,
            dir,
            log_id,
            durable,
            known_durable: 0,
            next: start.0,
            seg: None,
            failed: false,
        })
    }

    /// The LSN the next yielded record will have.
    pub fn next_lsn(&self) -> Lsn {
        Lsn(self.next)
    }

    fn refresh_durable(&mut self) -> Result<(), LogError> {
        self.known_durable = match &self.durable {
            DurableSource::Writer(shared) => shared.durable.load(Ordering::Acquire),
            DurableSource::Published => {
                read_published_durable(&*self.storage, &self.dir, self.log_id)?.0
            }
        };
        Ok(())
    }

    fn open_segment(&self, first: Lsn, path: PathBuf) -> Result<ReaderSegment, LogError> {
        let file = self.storage.open_read(&path).map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                LogError::corrupt(
                    &path,
                    0,
                    format!("the segment holding LSN {first} is missing"),
                )
            } else {
                LogError::io("opening", &path, e)
            }
        })?;
        let (header, header_len) = segment::read_header(&*file, &path, first)?;
        if header.log_id != self.log_id {
            return Err(LogError::WrongLog {
                dir: self.dir.clone(),
                reason: format!(
                    "segment {} belongs to log {}, not {}",
                    path.display(),
                    header.log_id,
                    self.log_id
                ),
            });
        }
        Ok(ReaderSegment {
            path,
            chunk: Chunked::new(file),
            offset: header_len,
            expected: first.0,
            buffered_durable: 0,
        })
    }

    /// Opens the segment that holds LSN `lsn`.
    fn locate(&self, lsn: u64) -> Result<ReaderSegment, LogError> {
        let segs = segment::list_segments(&*self.storage, &self.dir)?;
        match segs.iter().rev().find(|(first, _)| first.0 <= lsn) {
            Some((first, path)) => self.open_segment(*first, path.clone()),
            None => Err(LogError::Gone {
                requested: Lsn(lsn),
                first: segs.first().map_or(Lsn::ZERO, |(l, _)| *l),
            }),
        }
    }

    fn advance(&mut self) -> Result<Option<(Lsn, Vec<u8>)>, LogError> {
        if self.next > self.known_durable {
            self.refresh_durable()?;
            if self.next > self.known_durable {
                return Ok(None);
            }
        }
        loop {
            let seg = match &mut self.seg {
                Some(seg) => seg,
                None => {
                    let opened = self.locate(self.next)?;
                    self.seg.insert(opened)
                }
            };
            if seg.buffered_durable < seg.expected {
                seg.chunk.invalidate();
                seg.buffered_durable = self.known_durable;
            }
            let frame = seg
                .chunk
                .frame_at(seg.offset)
                .map_err(|e| LogError::io("reading", &seg.path, e))?;
            match frame {
                Frame::Record {
                    lsn,
                    payload_start,
                    payload_len,
                } => {
                    if lsn.0 != seg.expected {
                        return Err(LogError::corrupt(
                            &seg.path,
                            seg.offset,
                            format!(
                                "expected the record of LSN {}, found LSN {lsn}",
                                seg.expected
                            ),
                        ));
                    }
                    let at = seg.offset;
                    seg.offset += (format::FRAME_HEADER_BYTES + payload_len) as u64;
                    seg.expected += 1;
                    if lsn.0 < self.next {
                        continue;
                    }
                    let payload = seg
                        .chunk
                        .bytes(at + payload_start as u64, payload_len)
                        .to_vec();
                    self.next += 1;
                    return Ok(Some((lsn, payload)));
                }
                Frame::Trailer { last_lsn, .. } => {
                    if last_lsn.0 + 1 != seg.expected {
                        return Err(LogError::corrupt(
                            &seg.path,
                            seg.offset,
                            format!(
                                "the seal trailer names LSN {last_lsn} as last, but the segment ends at LSN {}",
                                seg.expected - 1
                            ),
                        ));
                    }
                    let first = Lsn(seg.expected);
                    let path = self.dir.join(format::segment_file_name(first));
                    self.seg = None;
                    let opened = self.open_segment(first, path)?;
                    self.seg = Some(opened);
                }
                Frame::Incomplete { .. } => {
                    return Err(LogError::corrupt(
                        &seg.path,
                        seg.offset,
                        format!(
                            "the file ends before the record of LSN {}, which is durable",
                            seg.expected
                        ),
                    ));
                }
                Frame::Invalid(why) => {
                    return Err(LogError::corrupt(
                        &seg.path,
                        seg.offset,
                        format!("{why} (the record of LSN {})", seg.expected),
                    ));
                }
            }
        }
    }
}

impl Iterator for LogReader {
    type Item = Result<(Lsn, Vec<u8>), LogError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        match self.advance() {
            Ok(Some(r)) => Some(Ok(r)),
            Ok(None) => None,
            Err(e) => {
                self.failed = true;
                Some(Err(e))
            }
        }
    }
}

impl std::fmt::Debug for LogReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogReader")
            .field("dir", &self.dir)
            .field("next", &self.next)
            .finish()
    }
}
