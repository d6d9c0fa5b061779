//! Consumer cursors: `consumers/<name>` holds the LSN up to which a consumer (the shipper, the
//! archive) has applied the log. Each file is replaced whole, temp -> fdatasync -> rename ->
//! fsync(consumers/), so a crash leaves either the old or the new cursor, never a torn one.
//! Retention keeps every segment holding a record above the lowest cursor.

use crate::format::{self, CONSUMERS_DIR};
use crate::storage::LogStorage;
use crate::{LogError, LogId, now_micros};
use ferry_core::Lsn;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

pub(crate) fn validate_name(name: &str) -> Result<(), LogError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(LogError::InvalidConsumerName {
            name: name.to_string(),
        })
    }
}

fn consumers_dir(dir: &Path) -> PathBuf {
    dir.join(CONSUMERS_DIR)
}

pub(crate) fn set(
    storage: &dyn LogStorage,
    dir: &Path,
    log_id: LogId,
    name: &str,
    applied: Lsn,
    durable: Lsn,
) -> Result<(), LogError> {
    validate_name(name)?;
    if applied > durable {
        return Err(LogError::ConsumerAhead {
            name: name.to_string(),
            applied,
            durable,
        });
    }
    let cdir = consumers_dir(dir);
    storage
        .create_dir_all(&cdir)
        .map_err(|e| LogError::io("creating", &cdir, e))?;
    let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    let tmp = cdir.join(format!(".{name}.{}.{n}.tmp", std::process::id()));
    let dest = cdir.join(name);
    let bytes = format::encode_consumer(log_id, applied, now_micros());
    let file = storage
        .create(&tmp)
        .map_err(|e| LogError::io("creating", &tmp, e))?;
    file.write_all_at(&bytes, 0)
        .map_err(|e| LogError::io("writing", &tmp, e))?;
    file.sync_data()
        .map_err(|e| LogError::io("syncing", &tmp, e))?;
    drop(file);
    storage
        .rename(&tmp, &dest)
        .map_err(|e| LogError::io("renaming into place", &dest, e))?;
    storage
        .sync_dir(&cdir)
        .map_err(|e| LogError::io("syncing the directory", &cdir, e))
}

/// Every consumer and its applied LSN, by name.
pub(crate) fn list(
    storage: &dyn LogStorage,
    dir: &Path,
    log_id: LogId,
) -> Result<Vec<(String, Lsn)>, LogError> {
    let cdir = consumers_dir(dir);
    let names = match storage.list_dir(&cdir) {
        Ok(n) => n,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(LogError::io("listing", &cdir, e)),
    };
    let mut out = Vec::new();
    for name in names {
        if name.starts_with('.') || validate_name(&name).is_err() {
            continue;
        }
        let path = cdir.join(&name);
        let file = match storage.open_read(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(LogError::io("opening", &path, e)),
        };
        let mut buf = vec![0u8; format::CONSUMER_BYTES + 1];
        let got = file
            .read_at(&mut buf, 0)
            .map_err(|e| LogError::io("reading", &path, e))?;
        buf.truncate(got);
        let (id, applied, _) = format::decode_consumer(&buf).ok_or_else(|| LogError::BadFile {
            path: path.clone(),
            reason: "not a valid consumer cursor (wrong size, magic or CRC); remove it and let the consumer record its position again".into(),
        })?;
        if id != log_id {
            return Err(LogError::WrongLog {
                dir: dir.to_path_buf(),
                reason: format!(
                    "consumer cursor {} belongs to log {id}, not {log_id}",
                    path.display()
                ),
            });
        }
        out.push((name, applied));
    }
    out.sort();
    Ok(out)
}

pub(crate) fn remove(storage: &dyn LogStorage, dir: &Path, name: &str) -> Result<(), LogError> {
    validate_name(name)?;
    let cdir = consumers_dir(dir);
    let path = cdir.join(name);
    match storage.remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(LogError::io("removing", &path, e)),
    }
    storage
        .sync_dir(&cdir)
        .map_err(|e| LogError::io("syncing the directory", &cdir, e))
}
