//! Little-endian byte helpers for the crate's binary formats (a leaf module).
//!
//! [`Reader`] reads fields in order from a byte slice and never panics: a read past the end is
//! `None`, which each format's decoder turns into its own error naming the file or record.

/// A little-endian u64 from the first 8 bytes of `b`; 0 when `b` is shorter (callers check
/// lengths first; see [`Reader`] for checked parsing).
pub fn le_u64(b: &[u8]) -> u64 {
    b.get(..8).and_then(|s| s.try_into().ok()).map(u64::from_le_bytes).unwrap_or(0)
}

/// A little-endian u32 from the first 4 bytes of `b`; 0 when shorter.
pub fn le_u32(b: &[u8]) -> u32 {
    b.get(..4).and_then(|s| s.try_into().ok()).map(u32::from_le_bytes).unwrap_or(0)
}

/// A little-endian u16 from the first 2 bytes of `b`; 0 when shorter.
pub fn le_u16(b: &[u8]) -> u16 {
    b.get(..2).and_then(|s| s.try_into().ok()).map(u16::from_le_bytes).unwrap_or(0)
}

/// Sequential checked reads from a byte slice.
#[derive(Clone, Debug)]
pub struct Reader<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// A reader at the start of `b`.
    pub fn new(b: &'a [u8]) -> Reader<'a> {
        Reader { b, pos: 0 }
    }

    /// Bytes read so far.
    pub fn position(&self) -> usize {
        self.pos
    }

    /// Bytes left.
    pub fn remaining(&self) -> usize {
        self.b.len() - self.pos
    }

    /// The next `n` bytes.
    pub fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.pos.checked_add(n)?;
        let s = self.b.get(self.pos..end)?;
        self.pos = end;
        Some(s)
    }

    /// The next `N` bytes as an array.
    pub fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N).and_then(|s| s.try_into().ok())
    }

    /// One byte.
    pub fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|s| s[0])
    }

    /// A little-endian u16.
    pub fn u16(&mut self) -> Option<u16> {
        self.array().map(u16::from_le_bytes)
    }

    /// A little-endian u32.
    pub fn u32(&mut self) -> Option<u32> {
        self.array().map(u32::from_le_bytes)
    }

    /// A little-endian u64.
    pub fn u64(&mut self) -> Option<u64> {
        self.array().map(u64::from_le_bytes)
    }

    /// A u16 length, then that many bytes of UTF-8.
    pub fn str16(&mut self) -> Option<&'a str> {
        let n = self.u16()? as usize;
        std::str::from_utf8(self.take(n)?).ok()
    }

    /// Everything left.
    pub fn rest(&mut self) -> &'a [u8] {
        let s = &self.b[self.pos..];
        self.pos = self.b.len();
        s
    }
}

/// Appends a u16 length and the bytes of `s` (at most 65535 bytes; longer is cut, so callers
/// validate lengths first: vdisk ids are at most 128 bytes).
pub fn put_str16(out: &mut Vec<u8>, s: &str) {
    let b = &s.as_bytes()[..s.len().min(u16::MAX as usize)];
    out.extend_from_slice(&(b.len() as u16).to_le_bytes());
    out.extend_from_slice(b);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reader_never_reads_past_the_end() {
        let mut v = Vec::new();
        v.extend_from_slice(&7u64.to_le_bytes());
        put_str16(&mut v, "vd");
        v.push(9);
        let mut r = Reader::new(&v);
        assert_eq!((r.u64(), r.str16(), r.u8(), r.u8()), (Some(7), Some("vd"), Some(9), None));
        assert_eq!(r.remaining(), 0);
        let mut r = Reader::new(&[5, 0, b'a']);
        assert_eq!(r.str16(), None, "a length past the end");
        assert_eq!(Reader::new(&[1, 2]).take(usize::MAX), None);
        assert_eq!((le_u64(&[1]), le_u32(&[1, 0, 0, 0, 9]), le_u16(&[2, 1])), (0, 1, 258));
    }
}
