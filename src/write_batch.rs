//! The batch a shared connection's task is writing to Redis (a lane's, a cluster node
//! connection's), and how much of it went out.
//!
//! A batch is sent from a cursor and cleared once written whole, never advanced: an
//! advanced `BytesMut` keeps its written bytes as an offset in front, which the next batch
//! does not reuse until the buffer fills up, so a `reserve` copies the offset too and
//! doubles the allocation; the buffer grew past its bound, was given back and regrew,
//! batch after batch ("a lane's written batch was advanced, not cleared" in
//! `docs/benchmarks.md`). A buffer a burst grew past the kept size is given back before
//! the next batch.

use bytes::BytesMut;

/// Bytes being written, sent from a cursor.
#[derive(Debug, Default)]
pub(crate) struct WriteBatch {
    batch: BytesMut,
    sent: usize,
    /// The most capacity kept between batches.
    kept: usize,
}

impl WriteBatch {
    /// An empty batch whose buffer keeps at most `kept` bytes of capacity between batches.
    pub fn new(kept: usize) -> Self {
        WriteBatch {
            batch: BytesMut::new(),
            sent: 0,
            kept,
        }
    }

    /// Nothing left to write.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.batch.is_empty()
    }

    /// What is still to be written.
    #[inline]
    pub fn pending(&self) -> &[u8] {
        &self.batch[self.sent..]
    }

    /// `n` more bytes went out; a batch written whole is cleared.
    #[inline]
    pub fn wrote(&mut self, n: usize) {
        self.sent += n;
        if self.sent >= self.batch.len() {
            self.batch.clear();
            self.sent = 0;
        }
    }

    /// With nothing left to write, take `submitted` as the next batch, leaving the emptied
    /// buffer in its place to take the next submits (a lane's two buffers change places).
    pub fn swap_in(&mut self, submitted: &mut BytesMut) {
        self.give_back_a_burst();
        std::mem::swap(&mut self.batch, submitted);
    }

    /// With nothing left to write, the empty buffer to fill with the next batch.
    pub fn refill(&mut self) -> &mut BytesMut {
        self.give_back_a_burst();
        &mut self.batch
    }

    fn give_back_a_burst(&mut self) {
        debug_assert!(
            self.is_empty(),
            "a batch is taken once the last one is written"
        );
        if self.batch.capacity() > self.kept {
            self.batch = BytesMut::new();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const COMMAND: [u8; 1_440] = [b'x'; 1_440];

    /// Writes `batch` in pieces of at most 10,000 bytes, calling `meanwhile` after each
    /// piece; returns the bytes written.
    fn write_in_pieces(batch: &mut WriteBatch, mut meanwhile: impl FnMut()) -> usize {
        let mut written = 0;
        while !batch.is_empty() {
            let n = batch.pending().len().min(10_000);
            written += n;
            batch.wrote(n);
            meanwhile();
        }
        written
    }

    #[test]
    fn two_buffers_that_change_places_keep_their_memory_batch_after_batch() {
        let mut submitted = BytesMut::new();
        let mut queued = 0;
        let mut writing = WriteBatch::new(1 << 20);
        let mut places = std::collections::HashSet::new();
        for round in 0..1_000 {
            for _ in 0..50 {
                submitted.extend_from_slice(&COMMAND);
                queued += 1;
            }
            writing.swap_in(&mut submitted);
            let batch = std::mem::take(&mut queued) * COMMAND.len();
            // Written in pieces, with submits arriving meanwhile.
            let written = write_in_pieces(&mut writing, || {
                submitted.extend_from_slice(&COMMAND);
                queued += 1;
            });
            assert_eq!(written, batch, "every byte submitted is written once");
            if round >= 10 {
                places.insert(writing.batch.as_ptr() as usize);
                places.insert(submitted.as_ptr() as usize);
            }
        }
        assert!(
            places.len() <= 2,
            "the buffers were reallocated: {} places",
            places.len()
        );
        assert!(writing.batch.capacity() <= 2 * 60 * COMMAND.len());
    }

    #[test]
    fn a_buffer_refilled_batch_after_batch_is_never_reallocated() {
        let mut writing = WriteBatch::new(1 << 20);
        let mut places = std::collections::HashSet::new();
        for round in 0..1_000 {
            let buffer = writing.refill();
            for _ in 0..50 {
                buffer.extend_from_slice(&COMMAND);
            }
            assert_eq!(write_in_pieces(&mut writing, || {}), 50 * COMMAND.len());
            if round >= 1 {
                places.insert(writing.batch.as_ptr() as usize);
            }
        }
        assert_eq!(places.len(), 1, "the buffer was reallocated");
        assert!(writing.batch.capacity() <= 2 * 50 * COMMAND.len());
    }

    #[test]
    fn a_burst_past_the_kept_size_is_given_back() {
        let mut writing = WriteBatch::new(64 * 1024);
        writing.refill().extend_from_slice(&[b'x'; 200 * 1024]);
        write_in_pieces(&mut writing, || {});
        assert!(
            writing.batch.capacity() >= 200 * 1024,
            "kept until the next batch"
        );
        writing.refill().extend_from_slice(&COMMAND);
        assert!(writing.batch.capacity() < 64 * 1024);
    }
}
