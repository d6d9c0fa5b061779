//! What a running `ferry run` knows about each of its sources, shared between the pipelines
//! (which update it), the admin endpoint (which serves it as `/status`) and `ferry status`.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::RwLock;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceState {
    Starting,
    /// Taking or loading the initial snapshot.
    Snapshotting,
    Streaming,
    /// Stopped by an error; `last_error` says which. The log keeps every change.
    Error,
    /// Fenced and switched to PostgreSQL.
    CutOver,
    Stopped,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SourceStatus {
    pub source: String,
    pub kind: String,
    pub path: String,
    pub state: SourceState,
    pub log_id: Option<String>,
    pub captured_lsn: u64,
    /// When capture last found nothing unread in the source (RFC 3339): everything the
    /// source had committed at that moment is in the log up to `captured_lsn`. None for
    /// sources captured by the application itself (sled) and before the first such pass.
    #[serde(default)]
    pub source_read_at: Option<String>,
    pub shipped_lsn: u64,
    pub lag_records: u64,
    pub lag_seconds: f64,
    pub last_error: Option<String>,
    /// The archive's last error while it is failing (capture and replication go on; the log
    /// keeps what the archive has not taken). None when archiving works or is off.
    #[serde(default)]
    pub archive_error: Option<String>,
    pub cutover_at: Option<String>,
    pub writes_after_cutover: u64,
}

impl SourceStatus {
    pub fn new(source: &str, kind: &str, path: &str) -> Self {
        SourceStatus {
            source: source.into(),
            kind: kind.into(),
            path: path.into(),
            state: SourceState::Starting,
            log_id: None,
            captured_lsn: 0,
            source_read_at: None,
            shipped_lsn: 0,
            lag_records: 0,
            lag_seconds: 0.0,
            last_error: None,
            archive_error: None,
            cutover_at: None,
            writes_after_cutover: 0,
        }
    }
}

/// The whole `/status` document.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StatusReport {
    pub pid: u32,
    pub version: String,
    pub started_at: String,
    pub sources: Vec<SourceStatus>,
}

impl StatusReport {
    /// Ready: every source streams (or is cut over) and none is in error.
    pub fn ready(&self) -> bool {
        !self.sources.is_empty()
            && self
                .sources
                .iter()
                .all(|s| matches!(s.state, SourceState::Streaming | SourceState::CutOver))
    }

    /// A source in error, or one whose SQLite still received writes after its cutover.
    pub fn any_error(&self) -> bool {
        self.sources
            .iter()
            .any(|s| s.state == SourceState::Error || s.writes_after_cutover > 0)
    }
}

/// Shared, updatable status of every source of this process.
#[derive(Debug)]
pub struct RunStatus {
    started_at: String,
    sources: RwLock<BTreeMap<String, SourceStatus>>,
}

impl RunStatus {
    pub fn new() -> Self {
        RunStatus {
            started_at: ferry_core::json::micros_to_rfc3339(ferry_core::now_micros()),
            sources: RwLock::new(BTreeMap::new()),
        }
    }

    pub fn insert(&self, s: SourceStatus) {
        self.sources
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(s.source.clone(), s);
    }

    pub fn update(&self, source: &str, f: impl FnOnce(&mut SourceStatus)) {
        if let Some(s) = self
            .sources
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(source)
        {
            f(s);
        }
    }

    pub fn report(&self) -> StatusReport {
        StatusReport {
            pid: std::process::id(),
            version: env!("CARGO_PKG_VERSION").into(),
            started_at: self.started_at.clone(),
            sources: self
                .sources
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .values()
                .cloned()
                .collect(),
        }
    }
}

impl Default for RunStatus {
    fn default() -> Self {
        Self::new()
    }
}
