//! `run.json`: how other ferry commands find a running `ferry run` (proto/admin-api.md).

use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::Path;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunFile {
    pub pid: u32,
    pub admin_addr: String,
    pub control_socket: String,
    pub started_at: String,
    pub version: String,
    pub sources: Vec<String>,
}

impl RunFile {
    /// Writes temp → fsync → rename → fsync(directory), so a reader sees the old file or the
    /// new one, never half of one.
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        write_atomically(
            path,
            serde_json::to_vec_pretty(self)
                .map_err(std::io::Error::other)?
                .as_slice(),
        )
    }

    /// Reads it and checks that its process is alive; `None` when absent or stale.
    pub fn read_live(path: &Path) -> Option<RunFile> {
        let text = std::fs::read(path).ok()?;
        let rf: RunFile = serde_json::from_slice(&text).ok()?;
        // SAFETY: signal 0 only checks that the process exists.
        let alive = unsafe { libc::kill(rf.pid as libc::pid_t, 0) } == 0;
        alive.then_some(rf)
    }
}

pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        path.file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default(),
        std::process::id()
    ));
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_and_stale() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("run.json");
        let mut rf = RunFile {
            pid: std::process::id(),
            admin_addr: "127.0.0.1:1".into(),
            control_socket: "/x".into(),
            started_at: "t".into(),
            version: "v".into(),
            sources: vec!["a".into()],
        };
        rf.write(&p).unwrap();
        assert_eq!(RunFile::read_live(&p), Some(rf.clone()));
        // A pid that cannot exist (above pid_max) is stale.
        rf.pid = 0x7fff_fff0;
        rf.write(&p).unwrap();
        assert_eq!(RunFile::read_live(&p), None);
    }
}
