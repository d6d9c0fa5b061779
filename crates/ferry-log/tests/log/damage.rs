//! Damaged files on the real file system: a log is written, then one segment is cut at a
//! random byte or has a random byte flipped. Recovery must yield exactly the durable prefix
//! for a cut in the newest segment (a torn tail), and report corruption with segment and
//! offset for anything else, never silently dropping or inventing records.

use crate::common::{cases, payload};
use ferry_log::format::{self, Frame, SegmentHeader};
use ferry_log::{Log, LogError, LogOptions, Lsn, open_read_only};
use proptest::prelude::*;
use proptest::sample::Index;
use std::path::{Path, PathBuf};

struct FrameLoc {
    start: u64,
    end: u64,
    /// `None` for the seal trailer.
    lsn: Option<u64>,
}

struct SegLayout {
    path: PathBuf,
    header_len: u64,
    len: u64,
    frames: Vec<FrameLoc>,
}

fn layout(dir: &Path) -> Vec<SegLayout> {
    crate::common::seg_files(dir)
        .into_iter()
        .map(|path| {
            let bytes = std::fs::read(&path).unwrap();
            let header_len = SegmentHeader::decode(&bytes).unwrap().1;
            let mut frames = Vec::new();
            let mut off = header_len;
            while off < bytes.len() {
                let f = format::parse_frame(&bytes[off..]);
                let lsn = match f {
                    Frame::Record { lsn, .. } => Some(lsn.0),
                    Frame::Trailer { .. } => None,
                    other => panic!("a fresh log has a bad frame: {other:?}"),
                };
                let end = off + f.total_len();
                frames.push(FrameLoc {
                    start: off as u64,
                    end: end as u64,
                    lsn,
                });
                off = end;
            }
            SegLayout {
                path,
                header_len: header_len as u64,
                len: bytes.len() as u64,
                frames,
            }
        })
        .collect()
}

#[derive(Debug)]
enum Expect {
    /// Open succeeds and yields records 1..=keep; `torn_at` is the truncated offset.
    Recovered { keep: u64, torn_at: Option<u64> },
    /// Open fails with corruption of this segment (at this offset, when known).
    CorruptAtOpen {
        segment: PathBuf,
        offset: Option<u64>,
    },
    /// Open succeeds; reading yields records 1..lsn, then corruption at this place.
    CorruptOnRead {
        lsn: u64,
        segment: PathBuf,
        offset: u64,
    },
}

fn last_lsn_before(segs: &[SegLayout], k: usize) -> u64 {
    segs[..k]
        .iter()
        .flat_map(|s| s.frames.iter().filter_map(|f| f.lsn))
        .max()
        .unwrap_or(0)
}

fn expect_cut(segs: &[SegLayout], k: usize, at: u64, total: u64) -> Expect {
    let s = &segs[k];
    if at == s.len {
        return Expect::Recovered {
            keep: total,
            torn_at: None,
        };
    }
    if k + 1 < segs.len() || at < s.header_len {
        return Expect::CorruptAtOpen {
            segment: s.path.clone(),
            offset: None,
        };
    }
    let whole = s.frames.iter().filter(|f| f.end <= at);
    let keep = whole
        .clone()
        .filter_map(|f| f.lsn)
        .max()
        .unwrap_or_else(|| last_lsn_before(segs, k));
    let boundary = at == s.header_len || s.frames.iter().any(|f| f.end == at);
    Expect::Recovered {
        keep,
        torn_at: (!boundary).then(|| whole.map(|f| f.end).max().unwrap_or(s.header_len)),
    }
}

fn expect_flip(segs: &[SegLayout], k: usize, at: u64, total: u64) -> Expect {
    let s = &segs[k];
    let newest = k + 1 == segs.len();
    if at < s.header_len {
        return Expect::CorruptAtOpen {
            segment: s.path.clone(),
            offset: None,
        };
    }
    let (i, f) = s
        .frames
        .iter()
        .enumerate()
        .find(|(_, f)| f.start <= at && at < f.end)
        .unwrap();
    let last_frame = i + 1 == s.frames.len();
    match (newest, last_frame, f.lsn) {
        (true, true, Some(lsn)) => Expect::Recovered {
            keep: lsn - 1,
            torn_at: Some(f.start),
        },
        (true, true, None) => Expect::Recovered {
            keep: total,
            torn_at: Some(f.start),
        },
        (true, false, _) | (false, _, None) => Expect::CorruptAtOpen {
            segment: s.path.clone(),
            offset: Some(f.start),
        },
        (false, _, Some(lsn)) => Expect::CorruptOnRead {
            lsn,
            segment: s.path.clone(),
            offset: f.start,
        },
    }
}

fn assert_corrupt(err: &LogError, segment: &Path, offset: Option<u64>) {
    match err {
        LogError::Corrupt {
            segment: s,
            offset: o,
            ..
        } => {
            assert_eq!(s, segment, "{err}");
            if let Some(want) = offset {
                assert_eq!(*o, want, "{err}");
            }
        }
        LogError::UnsupportedVersion { path, .. } => assert_eq!(path, segment),
        other => panic!("expected corruption of {}, got {other}", segment.display()),
    }
}

fn run_case(
    sizes: &[usize],
    seals: &[bool],
    seg_bytes: u64,
    cut: bool,
    seg: Index,
    pos: Index,
    xor: u8,
) {
    let dir = tempfile::tempdir().unwrap();
    let opts = LogOptions {
        segment_bytes: seg_bytes,
        ..LogOptions::default()
    };
    let log = Log::open(dir.path(), "damage", opts.clone()).unwrap();
    let mut batch = Vec::new();
    for (i, (&size, &seal)) in sizes.iter().zip(seals).enumerate() {
        batch.push(payload(9, i as u64 + 1, size));
        if seal || i % 5 == 4 {
            log.append_batch(&batch).unwrap();
            batch.clear();
        }
        if seal {
            log.seal().unwrap();
        }
    }
    log.append_batch(&batch).unwrap();
    let total = sizes.len() as u64;
    assert_eq!(log.durable_lsn(), Lsn(total));
    drop(log);

    let segs = layout(dir.path());
    let k = seg.index(segs.len());
    let s = &segs[k];
    let expect = if cut {
        let at = pos.index(s.len as usize + 1) as u64;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&s.path)
            .unwrap();
        f.set_len(at).unwrap();
        expect_cut(&segs, k, at, total)
    } else {
        let at = pos.index(s.len as usize) as u64;
        let mut bytes = std::fs::read(&s.path).unwrap();
        bytes[at as usize] ^= xor;
        std::fs::write(&s.path, &bytes).unwrap();
        expect_flip(&segs, k, at, total)
    };

    let opened = Log::open(dir.path(), "damage", opts.clone());
    match expect {
        Expect::Recovered { keep, torn_at } => {
            let log = opened.unwrap_or_else(|e| panic!("{expect:?}: open failed: {e}"));
            assert_eq!(
                log.recovered_torn_tail().map(|t| t.offset),
                torn_at,
                "{expect:?}"
            );
            assert_eq!(log.durable_lsn(), Lsn(keep));
            let got = crate::common::read_all(&log);
            let want: Vec<(Lsn, Vec<u8>)> = (1..=keep)
                .map(|l| (Lsn(l), payload(9, l, sizes[l as usize - 1])))
                .collect();
            assert_eq!(got, want);
            // The repaired log takes new records and reopens cleanly.
            assert_eq!(log.append(b"after").unwrap(), Lsn(keep + 1));
            drop(log);
            let log = Log::open(dir.path(), "damage", opts).unwrap();
            assert!(log.recovered_torn_tail().is_none());
            assert_eq!(log.durable_lsn(), Lsn(keep + 1));
            assert_eq!(
                open_read_only(dir.path())
                    .unwrap()
                    .verify()
                    .unwrap()
                    .records,
                keep + 1
            );
        }
        Expect::CorruptAtOpen {
            ref segment,
            offset,
        } => {
            let err = opened.expect_err("damage went unnoticed at open");
            assert_corrupt(&err, segment, offset);
            let err = open_read_only(dir.path())
                .and_then(|ro| ro.verify())
                .expect_err("verify missed the damage");
            assert_corrupt(&err, segment, offset);
        }
        Expect::CorruptOnRead {
            lsn,
            ref segment,
            offset,
        } => {
            let log = opened.unwrap_or_else(|e| panic!("{expect:?}: open failed: {e}"));
            let mut reader = log.reader(Lsn::ZERO).unwrap();
            for want in 1..lsn {
                let (l, p) = reader.next().unwrap().unwrap();
                assert_eq!(
                    (l, p),
                    (Lsn(want), payload(9, want, sizes[want as usize - 1]))
                );
            }
            let err = reader.next().unwrap().expect_err("read a damaged record");
            assert_corrupt(&err, segment, Some(offset));
            let err = open_read_only(dir.path()).unwrap().verify().unwrap_err();
            assert_corrupt(&err, segment, Some(offset));
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(48), ..ProptestConfig::default() })]

    #[test]
    fn cut_or_flipped_segments_recover_the_prefix_or_report_corruption(
        records in prop::collection::vec((0usize..8192, prop::bool::weighted(0.1)), 1..40),
        seg_bytes in 256u64..32768,
        cut in any::<bool>(),
        seg in any::<Index>(),
        pos in any::<Index>(),
        xor in 1u8..=255,
    ) {
        let sizes: Vec<usize> = records.iter().map(|r| r.0).collect();
        let seals: Vec<bool> = records.iter().map(|r| r.1).collect();
        run_case(&sizes, &seals, seg_bytes, cut, seg, pos, xor);
    }
}
