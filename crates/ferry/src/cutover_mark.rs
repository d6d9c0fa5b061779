//! `sources/<id>/cutover.json`: the durable memory that a source was cut over.
//!
//! After a cutover PostgreSQL is authoritative. Anything SQLite receives later (the fence was
//! bypassed, or the application was started against SQLite by mistake while ferry was down)
//! must never be shipped on top of what the application has since written to PostgreSQL:
//! it is captured and kept in the log, reported as "writes after cutover", and shipping stops
//! at the cutover record. The log's `Cutover` record says the same, but a shipper resuming
//! after it never reads it again; this file lets every later `ferry run` and `ferry ship`
//! know without scanning the log. Written temp → fsync → rename (proto/state-dir.md).

use crate::runfile::write_atomically;
use ferry_core::Lsn;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CutoverMark {
    /// LSN of the `Cutover` record: shipping never goes past it.
    pub cutover_lsn: u64,
    /// The last LSN applied to PostgreSQL when the fence was held.
    pub last_applied: u64,
    /// When the switch happened (RFC 3339).
    pub at: String,
}

pub fn path(source_dir: &Path) -> PathBuf {
    source_dir.join("cutover.json")
}

impl CutoverMark {
    pub fn lsn(&self) -> Lsn {
        Lsn(self.cutover_lsn)
    }

    pub fn write(&self, source_dir: &Path) -> std::io::Result<()> {
        let bytes = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        write_atomically(&path(source_dir), &bytes)
    }

    /// `Ok(None)` when the source was never cut over.
    pub fn read(source_dir: &Path) -> anyhow::Result<Option<CutoverMark>> {
        let p = path(source_dir);
        match std::fs::read(&p) {
            Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
                anyhow::anyhow!(
                    "{} is damaged ({e}); it records that this source was cut over to PostgreSQL. Restore it or, if the cutover really did not happen, remove it",
                    p.display()
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(anyhow::anyhow!("reading {}: {e}", p.display())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_damage() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(CutoverMark::read(dir.path()).unwrap(), None);
        let m = CutoverMark {
            cutover_lsn: 42,
            last_applied: 41,
            at: "2026-11-23T10:00:00Z".into(),
        };
        m.write(dir.path()).unwrap();
        assert_eq!(CutoverMark::read(dir.path()).unwrap(), Some(m));
        std::fs::write(path(dir.path()), b"{not json").unwrap();
        let e = CutoverMark::read(dir.path()).unwrap_err().to_string();
        assert!(e.contains("cutover.json is damaged"), "{e}");
    }
}
