//! The layout of a ferry state directory (specified in `proto/state-dir.md`).
//!
//! Only path arithmetic lives here, so that every crate that writes into a state directory
//! (the binary, the sled capture library) agrees on where things are without doing I/O here.

use crate::SourceId;
use std::path::{Path, PathBuf};

/// A state directory: `<root>/sources/<source-id>/{log,capture}`, `run.json`, `control.sock`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StateDir {
    root: PathBuf,
}

impl StateDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        StateDir { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn sources_dir(&self) -> PathBuf {
        self.root.join("sources")
    }

    /// Everything kept for one source.
    pub fn source_dir(&self, source: &SourceId) -> PathBuf {
        self.sources_dir().join(source.as_str())
    }

    /// The source's durable log (owned by `ferry-log`).
    pub fn log_dir(&self, source: &SourceId) -> PathBuf {
        self.source_dir(source).join("log")
    }

    /// The capture stage's private state: the SQLite shadow and its journal, or sled's
    /// bookkeeping.
    pub fn capture_dir(&self, source: &SourceId) -> PathBuf {
        self.source_dir(source).join("capture")
    }

    /// `source.json`: what the source is (kind, path), written when the source is first seen.
    pub fn source_meta(&self, source: &SourceId) -> PathBuf {
        self.source_dir(source).join("source.json")
    }

    /// Written by a running `ferry run` (temp → fsync → rename): pid and admin address.
    pub fn run_json(&self) -> PathBuf {
        self.root.join("run.json")
    }

    /// The running process's control socket (mode 0600).
    pub fn control_socket(&self) -> PathBuf {
        self.root.join("control.sock")
    }

    /// Held (flock) by the process that runs pipelines in this state directory.
    pub fn run_lock(&self) -> PathBuf {
        self.root.join("run.lock")
    }
}

/// A source id from a database path: the file's stem (`/srv/app/main.db` → `main`).
pub fn source_id_from_path(path: &Path) -> SourceId {
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "source".to_string());
    SourceId(sanitize_source_id(&stem))
}

/// Source ids name directories and PostgreSQL progress rows: keep them to `[A-Za-z0-9_.-]`.
pub fn sanitize_source_id(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout() {
        let sd = StateDir::new("/var/lib/ferry");
        let id = source_id_from_path(Path::new("/srv/app/my app.db"));
        assert_eq!(id.as_str(), "my_app");
        assert_eq!(
            sd.log_dir(&id),
            PathBuf::from("/var/lib/ferry/sources/my_app/log")
        );
        assert_eq!(
            sd.capture_dir(&id),
            PathBuf::from("/var/lib/ferry/sources/my_app/capture")
        );
        assert_eq!(
            sd.control_socket(),
            PathBuf::from("/var/lib/ferry/control.sock")
        );
    }
}
