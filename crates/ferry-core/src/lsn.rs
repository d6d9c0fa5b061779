use serde::{Deserialize, Serialize};
use std::fmt;

/// A log sequence number: the position of one record in a source's durable log.
///
/// LSNs are dense (each record is exactly one greater than the one before it) and start at 1;
/// [`Lsn::ZERO`] names the position before the first record, which is where a consumer that
/// has applied nothing stands.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Lsn(pub u64);

impl Lsn {
    pub const ZERO: Lsn = Lsn(0);
    pub const FIRST: Lsn = Lsn(1);

    pub fn next(self) -> Lsn {
        Lsn(self.0 + 1)
    }

    pub fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl From<u64> for Lsn {
    fn from(v: u64) -> Self {
        Lsn(v)
    }
}
