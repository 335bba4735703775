//! The read buffers of a session, sized to what the connection does.
//!
//! An idle connection should cost little memory (1,000 idle clients must fit in a few
//! MiB), while a connection streaming a pipeline or a large value wants large reads. A
//! [`ReadBuffer`] starts with small reads, doubles the read size whenever a read fills the
//! space it was given, halves it after a read that used little of it, and when it is
//! drained after a burst gives its memory back.

use bytes::{Buf, BytesMut};

/// The smallest read, and the size an idle connection keeps.
pub const MIN_READ: usize = 1024;
/// The largest read.
pub const MAX_READ: usize = 64 * 1024;

/// A growable byte buffer for one direction of a connection.
#[derive(Debug)]
pub struct ReadBuffer {
    buf: BytesMut,
    read_size: usize,
}

impl Default for ReadBuffer {
    fn default() -> Self {
        Self::new()
    }
}

impl ReadBuffer {
    /// An empty buffer; no memory is taken until the first read.
    pub fn new() -> Self {
        ReadBuffer {
            buf: BytesMut::new(),
            read_size: MIN_READ,
        }
    }

    /// Make room for the next read. An empty buffer that grew well past a normal read
    /// during a burst (a large command buffered whole) is released first, so an idle
    /// connection goes back to a small buffer; one merely at the read size is kept, so a
    /// busy connection reuses its memory instead of allocating per read.
    pub fn prepare(&mut self) {
        if self.buf.is_empty() && self.buf.capacity() > 4 * MAX_READ {
            self.buf = BytesMut::new();
            self.read_size = MIN_READ;
        }
        if self.buf.capacity() - self.buf.len() < self.read_size / 2 {
            self.buf.reserve(self.read_size);
        }
    }

    /// Note that `n` bytes were read: a read that filled the space asks for twice as much
    /// next time, one that used under a quarter of it half as much (never under
    /// [`MIN_READ`]). A connection whose batches sit between two sizes keeps the larger
    /// (one read per batch); an idle one shrinks back a halving per read.
    pub fn after_read(&mut self, n: usize) {
        if n >= self.read_size && self.read_size < MAX_READ {
            self.read_size *= 2;
        } else if n < self.read_size / 4 && self.read_size > MIN_READ {
            self.read_size /= 2;
        }
    }

    /// The buffered bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.buf
    }

    /// The buffer itself, for a read to append to.
    pub fn bytes_mut(&mut self) -> &mut BytesMut {
        &mut self.buf
    }

    /// Take the first `n` bytes out without copying.
    pub fn split_to(&mut self, n: usize) -> BytesMut {
        self.buf.split_to(n)
    }

    /// Drop the first `n` bytes.
    pub fn discard(&mut self, n: usize) {
        self.buf.advance(n);
    }

    /// Bytes of memory held.
    pub fn capacity(&self) -> usize {
        self.buf.capacity()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(b: &mut ReadBuffer, n: usize) {
        b.prepare();
        b.bytes_mut().extend_from_slice(&vec![b'x'; n]);
        b.after_read(n);
        b.discard(n);
    }

    #[test]
    fn batches_between_two_sizes_keep_the_larger_read_and_idle_reads_shrink_it() {
        let mut b = ReadBuffer::new();
        // 3.4 KB batches: the first ones fill 1 and 2 KiB, and the read size then stays
        // at 4 KiB.
        for _ in 0..10 {
            let n = 3400.min(b.read_size);
            read(&mut b, n);
        }
        assert_eq!(b.read_size, 4 * 1024);
        for _ in 0..10 {
            read(&mut b, 3400);
            assert_eq!(b.read_size, 4 * 1024, "one read per batch");
        }
        for _ in 0..3 {
            read(&mut b, 40);
        }
        assert_eq!(b.read_size, MIN_READ, "small reads shrink it back");
        for _ in 0..10 {
            let n = b.read_size;
            read(&mut b, n);
        }
        assert_eq!(
            b.read_size, MAX_READ,
            "full reads grow it up to the largest"
        );
    }
}
