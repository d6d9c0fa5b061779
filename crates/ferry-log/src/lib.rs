//! ferry's durable local log.
//!
//! Capture appends opaque payloads (ferry-core's `Record::encode()` bytes); each gets the next
//! dense [`Lsn`], starting at 1. [`Log::append`] returns only once the record is on stable
//! storage; concurrent appenders share one `fdatasync` (group commit). Readers
//! ([`Log::reader`], [`open_read_only`]) are cursors that never yield a record beyond the durable
//! LSN. The byte layout is specified in `proto/log-format.md` and implemented in [`format`](mod@format).
//!
//! Layout of a log directory (`<state-dir>/sources/<id>/log/`):
//!
//! ```text
//! LOCK                         flock held by the one writer (Log) for its lifetime
//! 00000000000000000001.seg     segments, named by the zero-padded LSN of their first record
//! 00000000000000004711.seg     ... every segment but the newest ends with a seal trailer
//! durable                      the durable LSN, pwrite'd after every fdatasync: a hint for
//!                              readers in other processes that may lag, never lead
//! consumers/<name>             each consumer's applied LSN (temp -> fsync -> rename)
//! .<anything>                  temporary files; removed by the next writer to open the log
//! ```
//!
//! Invariants:
//! - LSNs are dense across segments: the first LSN of segment k+1 is the seal trailer's last
//!   LSN of segment k plus one; a segment's file name equals its header's first LSN.
//! - A segment file under its final name always has a complete, fsynced header (it is written
//!   under a temporary name and renamed), so a bad header is corruption, never a torn write.
//! - Bytes are acknowledged only after the `fdatasync` covering them returned; the durable
//!   LSN (in memory, then in `durable`) is raised only after that.
//! - Only the tail of the newest segment can be torn; recovery truncates it (see
//!   [`Log::open`]). Anything else that fails its CRC is reported as corruption with the
//!   segment and offset and is never skipped or truncated.
//! - Retention deletes whole sealed segments, oldest first, never the newest segment, so the
//!   retained records are always a contiguous range and the newest segment keeps the log id
//!   and the next LSN.
//! - A failed write or fsync poisons the [`Log`]: fsync errors cannot be retried safely (the
//!   kernel may have dropped the dirty pages), so every later call fails until a restart
//!   re-reads what is really on disk.

mod consumers;
mod error;
pub mod format;
mod read_only;
mod reader;
mod segment;
#[cfg(feature = "sim")]
pub mod sim;
pub mod storage;
mod writer;

pub use error::LogError;
pub use ferry_core::Lsn;
pub use read_only::{ReadOnlyLog, TornTail, VerifyReport, open_read_only, open_read_only_with};
pub use reader::LogReader;
pub use storage::{LockHold, LogFile, LogStorage, RealStorage};
pub use writer::Log;

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::{Duration, SystemTime};

/// The identity of one log: 16 random bytes made when the log is created, written into every
/// segment header. The shipper records it next to its applied LSN in PostgreSQL and refuses a
/// log whose id differs (a recreated log restarts at LSN 1).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LogId(pub [u8; 16]);

impl LogId {
    /// A new random id.
    pub fn random() -> LogId {
        LogId(rand::random())
    }
}

impl fmt::Display for LogId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for LogId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LogId({self})")
    }
}

/// The text is not 32 hexadecimal digits.
#[derive(Debug, thiserror::Error)]
#[error("a log id is 32 hexadecimal digits, got {input:?}")]
pub struct ParseLogIdError {
    pub input: String,
}

impl FromStr for LogId {
    type Err = ParseLogIdError;

    fn from_str(s: &str) -> Result<LogId, ParseLogIdError> {
        let err = || ParseLogIdError {
            input: s.to_string(),
        };
        let bytes = s.as_bytes();
        if bytes.len() != 32 {
            return Err(err());
        }
        let mut out = [0u8; 16];
        for (i, pair) in bytes.chunks_exact(2).enumerate() {
            let hi = (pair[0] as char).to_digit(16).ok_or_else(err)?;
            let lo = (pair[1] as char).to_digit(16).ok_or_else(err)?;
            out[i] = (hi * 16 + lo) as u8;
        }
        Ok(LogId(out))
    }
}

/// When the writer calls `fdatasync`. Appends return only once durable under either policy;
/// the policy only decides how long a sync may wait to gather more appends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncPolicy {
    /// Sync as soon as there is something to sync; appends that arrive while a sync runs share
    /// the next one.
    EveryAppend,
    /// Start at most one sync per interval (like PostgreSQL's `commit_delay`): fewer syncs,
    /// more latency per append.
    Interval(Duration),
}

/// Tuning of a [`Log`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogOptions {
    /// A segment is sealed and a new one started when the next record would take it past this
    /// size (a record larger than this gets a segment of its own). Default 64 MiB.
    pub segment_bytes: u64,
    /// A segment older than this is sealed before the next append (and by [`Log::seal`]), so
    /// the archive receives closed segments on idle sources too. Default: no age limit.
    pub segment_max_age: Option<Duration>,
    pub sync: SyncPolicy,
}

/// Default [`LogOptions::segment_bytes`].
pub const DEFAULT_SEGMENT_BYTES: u64 = 64 * 1024 * 1024;

impl Default for LogOptions {
    fn default() -> Self {
        LogOptions {
            segment_bytes: DEFAULT_SEGMENT_BYTES,
            segment_max_age: None,
            sync: SyncPolicy::EveryAppend,
        }
    }
}

/// One segment file as found on disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentInfo {
    pub path: PathBuf,
    pub first_lsn: Lsn,
    /// The last durable record in the segment; `first_lsn - 1` when it holds none yet.
    pub last_lsn: Lsn,
    /// Number of durable records in the segment.
    pub records: u64,
    /// File size in bytes (for the newest segment this may include bytes being written).
    pub bytes: u64,
    /// Ends with a seal trailer: complete, never written again (ready for the archive).
    pub sealed: bool,
    pub created_at: SystemTime,
    pub sealed_at: Option<SystemTime>,
}

/// What [`Log::apply_retention`] did.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct RetentionReport {
    /// The lowest applied LSN over all registered consumers (`None`: no consumer is
    /// registered, so nothing was deleted).
    pub min_consumer_lsn: Option<Lsn>,
    /// Segments deleted, oldest first.
    pub removed: Vec<PathBuf>,
    pub bytes_freed: u64,
    /// The oldest retained record afterwards (see [`Log::first_lsn`]).
    pub first_lsn: Lsn,
}

pub(crate) fn micros_to_system_time(micros: i64) -> SystemTime {
    if micros >= 0 {
        SystemTime::UNIX_EPOCH + Duration::from_micros(micros as u64)
    } else {
        SystemTime::UNIX_EPOCH - Duration::from_micros(micros.unsigned_abs())
    }
}

pub(crate) fn now_micros() -> i64 {
    ferry_core::now_micros()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_id_round_trips_through_text() {
        let id = LogId([
            0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd,
            0xee, 0xff,
        ]);
        let s = id.to_string();
        assert_eq!(s, "00112233445566778899aabbccddeeff");
        assert_eq!(s.parse::<LogId>().ok(), Some(id));
        assert!("0011".parse::<LogId>().is_err());
        assert!("zz112233445566778899aabbccddeeff".parse::<LogId>().is_err());
    }
}
