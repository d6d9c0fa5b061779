//! Page sources: the database state a decoder reads, page by page.
//!
//! A state is a base file read with `pread` (the shadow, or the application's database file
//! through ferry's one long-lived descriptor) with in-memory page images laid over it (the
//! WAL frames of a transaction, or the pages of a batch not yet written to the shadow), cut
//! to the database size the state declares. Layers never copy the layers below them.

use crate::format::FormatError;
use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;

/// An error reading a page.
#[derive(Debug, thiserror::Error)]
pub enum PageError {
    #[error(transparent)]
    Format(#[from] FormatError),
    #[error("reading page {pgno} of {path}: {source}")]
    Io {
        path: PathBuf,
        pgno: u32,
        #[source]
        source: std::io::Error,
    },
    #[error("page {pgno} is beyond the end of the database ({count} pages)")]
    OutOfRange { pgno: u32, count: u32 },
}

pub type Page = Arc<[u8]>;

/// A database state, readable page by page.
pub trait PageSource {
    /// Page `pgno` (1-based), exactly `page_size` bytes.
    fn page(&self, pgno: u32) -> Result<Page, PageError>;
    /// Number of pages in this state.
    fn page_count(&self) -> u32;
}

/// A database-format file read with positioned reads.
pub struct FilePages<'a> {
    pub file: &'a File,
    pub path: &'a std::path::Path,
    pub page_size: usize,
    pub count: u32,
}

impl PageSource for FilePages<'_> {
    fn page(&self, pgno: u32) -> Result<Page, PageError> {
        if pgno == 0 || pgno > self.count {
            return Err(PageError::OutOfRange {
                pgno,
                count: self.count,
            });
        }
        let mut buf = vec![0u8; self.page_size];
        let off = u64::from(pgno - 1) * self.page_size as u64;
        read_full_at(self.file, &mut buf, off).map_err(|source| PageError::Io {
            path: self.path.to_path_buf(),
            pgno,
            source,
        })?;
        Ok(Arc::from(buf))
    }

    fn page_count(&self) -> u32 {
        self.count
    }
}

/// Reads exactly `buf.len()` bytes at `off`; a short file reads as zeros past its end
/// (SQLite treats pages past the end of file as zeroed, too).
pub fn read_full_at(file: &File, buf: &mut [u8], off: u64) -> std::io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        let n = file.read_at(&mut buf[done..], off + done as u64)?;
        if n == 0 {
            buf[done..].fill(0);
            return Ok(());
        }
        done += n;
    }
    Ok(())
}

/// Page images laid over a base state, with the state's own page count.
pub struct Overlay<'a> {
    pub base: &'a dyn PageSource,
    pub pages: &'a HashMap<u32, Page>,
    pub count: u32,
}

impl PageSource for Overlay<'_> {
    fn page(&self, pgno: u32) -> Result<Page, PageError> {
        if pgno == 0 || pgno > self.count {
            return Err(PageError::OutOfRange {
                pgno,
                count: self.count,
            });
        }
        match self.pages.get(&pgno) {
            Some(p) => Ok(p.clone()),
            None => self.base.page(pgno),
        }
    }

    fn page_count(&self) -> u32 {
        self.count
    }
}
