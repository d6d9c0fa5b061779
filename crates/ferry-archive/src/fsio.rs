//! File replacement as the archive does it: write under `.<name>.tmp` in the same directory,
//! fsync the file, rename it into place, fsync the directory. A reader (or a crash) sees the
//! old file or the complete new one, never a mix; leftovers are `.*.tmp` and are removed by
//! [`remove_temporaries`].

use crate::ArchiveError;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

pub(crate) fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp"))
}

pub(crate) fn sync_dir(dir: &Path) -> Result<(), ArchiveError> {
    // `Path::parent` of a bare file name is "": the current directory.
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| ArchiveError::io("syncing the directory", dir, e))
}

pub(crate) fn create_dir(dir: &Path) -> Result<(), ArchiveError> {
    std::fs::create_dir_all(dir).map_err(|e| ArchiveError::io("creating", dir, e))
}

/// Replaces `path` with `bytes` (temp -> fsync -> rename -> fsync dir).
pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), ArchiveError> {
    let tmp = temp_path(path);
    let mut f = File::create(&tmp).map_err(|e| ArchiveError::io("creating", &tmp, e))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(|e| ArchiveError::io("writing", &tmp, e))?;
    drop(f);
    rename_into_place(&tmp, path)
}

pub(crate) fn rename_into_place(tmp: &Path, path: &Path) -> Result<(), ArchiveError> {
    std::fs::rename(tmp, path).map_err(|e| ArchiveError::io("renaming into place", path, e))?;
    if let Some(dir) = path.parent() {
        sync_dir(dir)?;
    }
    Ok(())
}

/// Copies `from` to the temporary name of `to`, fsyncs it, and returns the temporary path
/// with the CRC-32C and length of the bytes written. The caller checks the copy and renames it.
pub(crate) fn copy_to_temp(from: &Path, to: &Path) -> Result<(PathBuf, u32, u64), ArchiveError> {
    let tmp = temp_path(to);
    let mut src = File::open(from).map_err(|e| ArchiveError::io("opening", from, e))?;
    let mut dst = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)
        .map_err(|e| ArchiveError::io("creating", &tmp, e))?;
    let mut buf = vec![0u8; 1 << 20];
    let mut crc = 0u32;
    let mut len = 0u64;
    loop {
        let n = src
            .read(&mut buf)
            .map_err(|e| ArchiveError::io("reading", from, e))?;
        if n == 0 {
            break;
        }
        crc = crc32c::crc32c_append(crc, &buf[..n]);
        len += n as u64;
        dst.write_all(&buf[..n])
            .map_err(|e| ArchiveError::io("writing", &tmp, e))?;
    }
    dst.sync_all()
        .map_err(|e| ArchiveError::io("syncing", &tmp, e))?;
    Ok((tmp, crc, len))
}

/// CRC-32C and length of a whole file, read back from the file system.
pub(crate) fn file_crc(path: &Path) -> Result<(u32, u64), ArchiveError> {
    let mut f = File::open(path).map_err(|e| ArchiveError::io("opening", path, e))?;
    let mut buf = vec![0u8; 1 << 20];
    let mut crc = 0u32;
    let mut len = 0u64;
    loop {
        let n = f
            .read(&mut buf)
            .map_err(|e| ArchiveError::io("reading", path, e))?;
        if n == 0 {
            return Ok((crc, len));
        }
        crc = crc32c::crc32c_append(crc, &buf[..n]);
        len += n as u64;
    }
}

/// Removes `.*.tmp` files left in `dir` by an interrupted write.
pub(crate) fn remove_temporaries(dir: &Path) -> Result<(), ArchiveError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(ArchiveError::io("listing", dir, e)),
    };
    for entry in entries {
        let entry = entry.map_err(|e| ArchiveError::io("listing", dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') && name.ends_with(".tmp") {
            let p = entry.path();
            std::fs::remove_file(&p).map_err(|e| ArchiveError::io("removing", &p, e))?;
        }
    }
    Ok(())
}

/// Removes a file; one that is already gone is fine.
pub(crate) fn remove_if_present(path: &Path) -> Result<(), ArchiveError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(ArchiveError::io("removing", path, e)),
    }
}
