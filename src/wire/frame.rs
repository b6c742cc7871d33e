//! Sans-IO Cap'n Proto stream-frame decoder with a size limit.

use crate::error::{Error, Result};
use capnp::message::Reader;
use capnp::serialize::BufferSegments;

/// Largest segment count accepted in a frame header.
const MAX_SEGMENTS: u32 = 512;

/// One whole frame's bytes (segment table and segments), owned.
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

    /// A Cap'n Proto reader over the frame (reads in place, no copy).
    pub fn reader(&self) -> Result<Reader<BufferSegments<&[u8]>>> {
        FrameRef::from(self).reader()
    }
}

/// One whole frame's bytes, borrowed from the [`FrameDecoder`]'s buffer (valid until the
/// decoder is fed again): decoding from it copies nothing but what the typed message owns.
#[derive(Clone, Copy, Debug)]
pub struct FrameRef<'a> {
    bytes: &'a [u8],
    limit: usize,
}

impl<'a> FrameRef<'a> {
    /// The frame's bytes.
    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// A Cap'n Proto reader over the frame, in place (capnp's `unaligned` feature is on, so
    /// the bytes need no particular alignment). Errors: [`Error::Protocol`] for a frame that
    /// does not parse or exceeds the traversal limit.
    pub fn reader(&self) -> Result<Reader<BufferSegments<&'a [u8]>>> {
        let mut s = self.bytes;
        capnp::serialize::read_message_from_flat_slice(&mut s, super::reader_options(self.limit)).map_err(|e| Error::Protocol(e.to_string()))
    }
}

impl<'a> From<&'a Frame> for FrameRef<'a> {
    fn from(f: &'a Frame) -> Self {
        FrameRef { bytes: &f.bytes, limit: f.limit }
    }
}

/// Accumulates bytes and yields whole frames.
///
/// Bytes come in either copied ([`FrameDecoder::push`]) or received straight into the
/// decoder's buffer ([`FrameDecoder::receive_buffer`] then [`FrameDecoder::commit`]); frames go
/// out either owned ([`FrameDecoder::next_frame`]) or borrowed in place
/// ([`FrameDecoder::next_frame_ref`]). The buffer only moves the unconsumed tail (at most one
/// partial frame) to its front when it needs room, and grows to fit the largest frame.
///
/// Errors: [`Error::FrameTooLarge`] as soon as a frame header announces more than the limit
/// (before its body is buffered), [`Error::Protocol`] for a header with too many segments.
/// After an error the stream position is lost; the connection should be closed.
pub struct FrameDecoder {
    /// Allocated (and initialised) bytes; `start..end` is buffered data.
    buf: Vec<u8>,
    start: usize,
    end: usize,
    limit: usize,
}

impl FrameDecoder {
    /// A decoder accepting frames of at most `limit` bytes.
    pub fn new(limit: usize) -> Self {
        FrameDecoder { buf: Vec::new(), start: 0, end: 0, limit }
    }

    /// Makes `buf[end..]` at least `room` bytes long: first by moving the buffered tail to the
    /// front, then by growing.
    fn reserve(&mut self, room: usize) {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
        if self.buf.len() - self.end >= room {
            return;
        }
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.buf.len() - self.end < room {
            self.buf.resize(self.end + room, 0);
        }
    }

    /// Appends received bytes.
    pub fn push(&mut self, data: &[u8]) {
        self.reserve(data.len());
        self.buf[self.end..self.end + data.len()].copy_from_slice(data);
        self.end += data.len();
    }

    /// Free space of at least `min` bytes to receive into; report what was written with
    /// [`FrameDecoder::commit`]. Saves the copy of [`FrameDecoder::push`].
    pub fn receive_buffer(&mut self, min: usize) -> &mut [u8] {
        self.reserve(min.max(1));
        &mut self.buf[self.end..]
    }

    /// Marks `n` bytes written into [`FrameDecoder::receive_buffer`] as received (clamped to
    /// the space handed out).
    pub fn commit(&mut self, n: usize) {
        self.end += n.min(self.buf.len() - self.end);
    }

    /// Bytes buffered and not yet returned as frames.
    pub fn buffered(&self) -> usize {
        self.end - self.start
    }

    /// Size of the next frame if its header is complete.
    fn next_len(&self) -> Result<Option<usize>> {
        let b = &self.buf[self.start..self.end];
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

    /// The next whole frame, if buffered, borrowed in place.
    pub fn next_frame_ref(&mut self) -> Result<Option<FrameRef<'_>>> {
        let Some(len) = self.next_len()? else { return Ok(None) };
        if self.buffered() < len {
            return Ok(None);
        }
        let at = self.start;
        self.start += len;
        Ok(Some(FrameRef { bytes: &self.buf[at..at + len], limit: self.limit }))
    }

    /// The next whole frame, if buffered, as an owned copy.
    pub fn next_frame(&mut self) -> Result<Option<Frame>> {
        let limit = self.limit;
        Ok(self.next_frame_ref()?.map(|f| Frame { bytes: f.bytes.to_vec(), limit }))
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

    /// Frames of one segment: header (count 0, words), then `words` words of `fill`.
    fn frame(words: u32, fill: u8) -> Vec<u8> {
        let mut f = vec![0, 0, 0, 0];
        f.extend_from_slice(&words.to_le_bytes());
        f.extend(std::iter::repeat_n(fill, words as usize * 8));
        f
    }

    #[test]
    fn received_in_place_and_split_anywhere() {
        let frames: Vec<Vec<u8>> = (0..200u32).map(|i| frame(i % 37 + 1, i as u8)).collect();
        let stream: Vec<u8> = frames.concat();
        for chunk in [1usize, 7, 8, 100, 4096, 1 << 20] {
            let mut d = FrameDecoder::new(1 << 20);
            let mut got = Vec::new();
            let mut p = 0;
            while p < stream.len() {
                let room = d.receive_buffer(chunk);
                let n = room.len().min(chunk).min(stream.len() - p);
                room[..n].copy_from_slice(&stream[p..p + n]);
                d.commit(n);
                p += n;
                while let Some(f) = d.next_frame_ref().unwrap() {
                    got.push(f.bytes().to_vec());
                }
            }
            assert_eq!(got, frames, "chunk {chunk}");
            assert_eq!(d.buffered(), 0);
        }
    }
}
