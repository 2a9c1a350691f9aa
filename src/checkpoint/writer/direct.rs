//! A sequential file writer that bypasses the page cache (`O_DIRECT` on Linux): what a streaming
//! export writes is never read back, and on some systems copying it through the page cache costs
//! more than computing it. Bytes are gathered in a page-aligned buffer and written in whole
//! aligned blocks; [`DirectFile::finish`] writes the zero-padded last block, truncates the file
//! to its true length and syncs it. Where `O_DIRECT` is not available (another OS, a filesystem
//! that refuses it, e.g. tmpfs) the same writer goes through a plain file.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::Path;

/// Alignment of buffer addresses, lengths and file offsets (the largest logical block size).
const ALIGN: usize = 4096;
/// Bytes gathered per write.
const CAPACITY: usize = 8 << 20;

/// See the module docs.
pub(crate) struct DirectFile {
    file: File,
    direct: bool,
    /// `CAPACITY + ALIGN` bytes; the aligned window starts at `offset`.
    storage: Vec<u8>,
    offset: usize,
    filled: usize,
    /// Bytes already written to the file.
    written: u64,
}

#[cfg(target_os = "linux")]
fn open_direct(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
}

#[cfg(not(target_os = "linux"))]
fn open_direct(_: &Path) -> io::Result<File> {
    Err(io::Error::new(io::ErrorKind::Unsupported, "no O_DIRECT"))
}

impl DirectFile {
    /// Creates `path` (which must not exist).
    pub(crate) fn create(path: &Path) -> io::Result<Self> {
        let (file, direct) = match open_direct(path) {
            Ok(f) => (f, true),
            Err(_) => (
                OpenOptions::new().write(true).create_new(true).open(path)?,
                false,
            ),
        };
        let storage = vec![0u8; CAPACITY + ALIGN];
        let offset = storage.as_ptr().align_offset(ALIGN);
        Ok(Self {
            file,
            direct,
            storage,
            offset,
            filled: 0,
            written: 0,
        })
    }

    fn buffer(&mut self) -> &mut [u8] {
        &mut self.storage[self.offset..self.offset + CAPACITY]
    }

    /// Writes the first `len` bytes of the buffer (`len` a multiple of [`ALIGN`] when direct).
    fn write_out(&mut self, len: usize) -> io::Result<()> {
        let (start, end) = (self.offset, self.offset + len);
        self.file.write_all(&self.storage[start..end])?;
        self.written += len as u64;
        Ok(())
    }

    /// Writes what is left, sets the file's exact length, syncs it and returns it.
    pub(crate) fn finish(mut self) -> io::Result<File> {
        let tail = self.filled;
        let padded = if self.direct {
            tail.next_multiple_of(ALIGN)
        } else {
            tail
        };
        self.buffer()[tail..padded].fill(0);
        self.write_out(padded)?;
        let len = self.written - (padded - tail) as u64;
        self.file.set_len(len)?;
        self.file.sync_all()?;
        Ok(self.file)
    }
}

impl Write for DirectFile {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = data.len().min(CAPACITY - self.filled);
        let at = self.filled;
        self.buffer()[at..at + n].copy_from_slice(&data[..n]);
        self.filled += n;
        if self.filled == CAPACITY {
            self.write_out(CAPACITY)?;
            self.filled = 0;
        }
        Ok(n)
    }

    /// Nothing: whole blocks are written as they fill, the rest by [`DirectFile::finish`].
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_exactly_the_bytes_given() {
        let d = tempfile::tempdir().unwrap();
        for len in [
            0usize,
            1,
            4095,
            4096,
            4097,
            CAPACITY - 1,
            CAPACITY,
            2 * CAPACITY + 12345,
        ] {
            let data: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
            let p = d.path().join(format!("f{len}"));
            let mut w = DirectFile::create(&p).unwrap();
            for chunk in data.chunks(1000 + len % 7) {
                w.write_all(chunk).unwrap();
            }
            w.finish().unwrap();
            assert_eq!(std::fs::read(&p).unwrap(), data, "length {len}");
        }
        assert!(
            DirectFile::create(&d.path().join("f0")).is_err(),
            "never replaces a file"
        );
    }
}
