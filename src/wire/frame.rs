//! Sans-IO Cap'n Proto stream-frame decoder with a size limit.

use crate::error::{Error, Result};
use capnp::message::Reader;
use capnp::serialize::OwnedSegments;

/// Largest segment count accepted in a frame header.
const MAX_SEGMENTS: u32 = 512;

/// One whole frame's bytes (segment table and segments).
#[derive(Clone, Debug)]
pub struct Frame {
    bytes: Vec<u8>,
    limit: usize,
}

impl Frame {
    /// The frame's bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// A Cap'n Proto reader over the frame.
    pub fn reader(&self) -> Result<Reader<OwnedSegments>> {
        let mut s = self.bytes.as_slice();
        capnp::serialize::read_message(&mut s, super::reader_options(self.limit)).map_err(|e| Error::Protocol(e.to_string()))
    }
}

/// Accumulates bytes and yields whole frames.
///
/// Errors: [`Error::FrameTooLarge`] as soon as a frame header announces more than the limit
/// (before its body is buffered), [`Error::Protocol`] for a header with too many segments.
/// After an error the stream position is lost; the connection should be closed.
pub struct FrameDecoder {
    buf: Vec<u8>,
    start: usize,
    limit: usize,
}

impl FrameDecoder {
    /// A decoder accepting frames of at most `limit` bytes.
    pub fn new(limit: usize) -> Self {
        FrameDecoder { buf: Vec::with_capacity(64 << 10), start: 0, limit }
    }

    /// Appends received bytes.
    pub fn push(&mut self, data: &[u8]) {
        if self.start > 0 && self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        } else if self.start > (1 << 20) && self.start * 2 > self.buf.len() {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(data);
    }

    /// Bytes buffered and not yet returned as frames.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }

    /// Size of the next frame if its header is complete.
    fn next_len(&self) -> Result<Option<usize>> {
        let b = &self.buf[self.start..];
        if b.len() < 4 {
            return Ok(None);
        }
        let n = u32::from_le_bytes([b[0], b[1], b[2], b[3]]).wrapping_add(1);
        if n == 0 || n > MAX_SEGMENTS {
            return Err(Error::Protocol(format!("frame header announces {} segments (at most {MAX_SEGMENTS})", n as u64)));
        }
        let header = (4 + 4 * n as usize).div_ceil(8) * 8;
        if header > self.limit {
            return Err(Error::FrameTooLarge { size: header as u64, limit: self.limit as u64 });
        }
        if b.len() < 4 + 4 * n as usize {
            return Ok(None);
        }
        let mut words: u64 = 0;
        for i in 0..n as usize {
            let p = 4 + 4 * i;
            words += u32::from_le_bytes([b[p], b[p + 1], b[p + 2], b[p + 3]]) as u64;
        }
        let total = header as u64 + words * 8;
        if total > self.limit as u64 {
            return Err(Error::FrameTooLarge { size: total, limit: self.limit as u64 });
        }
        Ok(Some(total as usize))
    }

    /// The next whole frame, if buffered.
    pub fn next_frame(&mut self) -> Result<Option<Frame>> {
        let Some(len) = self.next_len()? else { return Ok(None) };
        if self.buffered() < len {
            return Ok(None);
        }
        let bytes = self.buf[self.start..self.start + len].to_vec();
        self.start += len;
        Ok(Some(Frame { bytes, limit: self.limit }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn too_large_is_reported_from_the_header() {
        let mut d = FrameDecoder::new(1024);
        // one segment of 1000 words = 8000 bytes
        d.push(&[0, 0, 0, 0, 0xe8, 0x03, 0, 0]);
        match d.next_frame() {
            Err(Error::FrameTooLarge { size, limit }) => assert_eq!((size, limit), (8008, 1024)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn absurd_segment_count_is_refused() {
        let mut d = FrameDecoder::new(1024);
        d.push(&[0xff, 0xff, 0, 0]);
        assert!(matches!(d.next_frame(), Err(Error::Protocol(_))));
    }
}
