//! Progress of a transfer (push, pull, export), for a caller that shows it: the total bytes
//! once known, and the bytes moved as they move.

use std::io::{Read, Write};

/// Told about a transfer as it goes. `total` may come more than once (it grows as the
/// transfer learns what it moves); `advance` adds bytes moved.
pub trait Progress: Sync {
    fn total(&self, bytes: u64);
    fn advance(&self, bytes: u64);
}

/// Makes the progress shown for one transfer, given what it moves (`pulling REF`).
pub type Shown = fn(&str) -> Box<dyn Progress>;

/// No one is watching.
pub struct Unwatched;

impl Progress for Unwatched {
    fn total(&self, _: u64) {}
    fn advance(&self, _: u64) {}
}

/// A reader or writer that reports what passes through it.
pub struct Counted<'a, T> {
    pub inner: T,
    pub progress: &'a dyn Progress,
}

impl<R: Read> Read for Counted<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.progress.advance(n as u64);
        Ok(n)
    }
}

impl<W: Write> Write for Counted<'_, W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.progress.advance(n as u64);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}
