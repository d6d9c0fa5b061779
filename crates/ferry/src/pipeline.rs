//! Glue between the stages: opening the durable log (capture writes it through
//! `ferry_sqlite::LogSink`), and the per-source files of the state directory.

use anyhow::Context;
use ferry_core::SourceId;
use ferry_core::state_dir::StateDir;
use std::path::Path;
use std::sync::Arc;

/// Records what a source is the first time it is seen, and refuses a state directory whose
/// source of that name is another file (a replaced database is a new source).
pub fn check_source_meta(
    dir: &StateDir,
    id: &SourceId,
    kind: &str,
    path: &Path,
) -> anyhow::Result<()> {
    let meta_path = dir.source_meta(id);
    let abs = std::fs::canonicalize(path)
        .with_context(|| format!("{} does not exist", path.display()))?;
    if let Ok(bytes) = std::fs::read(&meta_path) {
        let meta: serde_json::Value = serde_json::from_slice(&bytes)
            .with_context(|| format!("{} is not valid JSON", meta_path.display()))?;
        let known = meta["path"].as_str().unwrap_or_default();
        anyhow::ensure!(
            known == abs.to_string_lossy(),
            "source {id} in {} captures {known}, not {}: use another --state-dir or --source-id, or remove {} to start over",
            dir.root().display(),
            abs.display(),
            dir.source_dir(id).display()
        );
        return Ok(());
    }
    std::fs::create_dir_all(dir.source_dir(id))?;
    let meta = serde_json::json!({
        "kind": kind,
        "path": abs.to_string_lossy(),
        "created_at": ferry_core::json::micros_to_rfc3339(ferry_core::now_micros()),
    });
    crate::runfile::write_atomically(&meta_path, serde_json::to_vec_pretty(&meta)?.as_slice())?;
    Ok(())
}

/// Opens (creating if needed) the log of source `id`.
pub fn open_log(dir: &StateDir, id: &SourceId) -> anyhow::Result<Arc<ferry_log::Log>> {
    let log_dir = dir.log_dir(id);
    let log = ferry_log::Log::open(&log_dir, id.as_str(), ferry_log::LogOptions::default())
        .with_context(|| format!("opening the log of source {id} in {}", log_dir.display()))?;
    Ok(Arc::new(log))
}
