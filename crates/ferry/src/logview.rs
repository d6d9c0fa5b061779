//! Reading a source's log from the binary: positions for `ferry status`, records for
//! `ferry log inspect`, and the adapter that feeds the shipper.

use anyhow::Context;
use ferry_core::{Lsn, Record};
use std::path::Path;

/// (log id, durable LSN, lowest consumer position) of the log in `dir`, read-only.
pub fn log_positions(dir: &Path) -> anyhow::Result<(String, u64, u64)> {
    let log = ferry_log::open_read_only(dir)
        .with_context(|| format!("opening the log in {}", dir.display()))?;
    let durable = log.durable_lsn()?;
    let shipped = log
        .consumers()?
        .into_iter()
        .filter(|(name, _)| name == crate::logview::SHIPPER_CONSUMER)
        .map(|(_, lsn)| lsn.0)
        .min()
        .unwrap_or(0);
    Ok((log.log_id().to_string(), durable.0, shipped))
}

/// The consumer name the shipper registers its position under.
pub const SHIPPER_CONSUMER: &str = "shipper";

/// Decodes one payload, naming the LSN when it does not decode.
pub fn decode(lsn: Lsn, payload: &[u8]) -> anyhow::Result<Record> {
    Record::decode(payload).with_context(|| format!("record at LSN {lsn}"))
}
