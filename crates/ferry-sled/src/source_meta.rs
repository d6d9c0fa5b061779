//! `sources/<id>/source.json` (proto/state-dir.md): what the source is. Written once
//! (temp → fsync → rename → fsync directory); a state directory refuses a source whose kind
//! or path differs, because a replaced database is a new source.

use crate::error::CaptureError;
use ferry_core::SourceId;
use ferry_core::state_dir::StateDir;
use std::fs;
use std::io::Write;
use std::path::Path;

pub(crate) fn ensure(
    state_dir: &StateDir,
    id: &SourceId,
    db_path: &Path,
) -> Result<(), CaptureError> {
    let meta = state_dir.source_meta(id);
    let dir = state_dir.source_dir(id);
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| CaptureError::StateDir { path, source }
    };
    let db_path = db_path.to_string_lossy().into_owned();
    match fs::read(&meta) {
        Ok(bytes) => {
            let mismatch = |detail: String| CaptureError::SourceMismatch {
                path: meta.clone(),
                detail,
            };
            let json: serde_json::Value = serde_json::from_slice(&bytes)
                .map_err(|e| mismatch(format!("it is not JSON: {e}")))?;
            let kind = json.get("kind").and_then(|v| v.as_str());
            if kind != Some("sled") {
                return Err(mismatch(format!("kind is {kind:?}, not \"sled\"")));
            }
            let path = json.get("path").and_then(|v| v.as_str());
            if path != Some(db_path.as_str()) {
                return Err(mismatch(format!(
                    "it was made for {path:?}, this database is {db_path:?}"
                )));
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            fs::create_dir_all(&dir).map_err(io(&dir))?;
            let json = serde_json::json!({
                "kind": "sled",
                "path": db_path,
                "created_at": ferry_core::json::micros_to_rfc3339(ferry_core::now_micros()),
            });
            let tmp = dir.join(".source.json.tmp");
            let mut f = fs::File::create(&tmp).map_err(io(&tmp))?;
            f.write_all(json.to_string().as_bytes())
                .and_then(|()| f.write_all(b"\n"))
                .and_then(|()| f.sync_all())
                .map_err(io(&tmp))?;
            drop(f);
            fs::rename(&tmp, &meta).map_err(io(&meta))?;
            fs::File::open(&dir)
                .and_then(|d| d.sync_all())
                .map_err(io(&dir))?;
            Ok(())
        }
        Err(e) => Err(CaptureError::StateDir {
            path: meta,
            source: e,
        }),
    }
}
