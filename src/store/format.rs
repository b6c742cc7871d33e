//! On-disk formats of a BigLog segment: data file header, index file header, index entry.
//!
//! Follows the BigLog design (netlog's biglog: segments of a data file plus a preallocated,
//! memory-mapped index of fixed-size entries whose last entry names the next offset), widened:
//! nanosecond timestamps (u64), the entry's data length, a CRC-32 (IEEE, crc32fast) of the
//! entry's data and a CRC-32 of the index entry itself, so a torn or flipped entry is detected.
//!
//! All integers are little-endian.
//!
//! Data file (`<base>.data`): 16-byte header `b"TLOGSEGD"`, version u32, reserved u32 (0);
//! then entries back to back. An entry's data is `count` records, each `len: u32` + `len` bytes
//! (`write` stores one record, `write_n` several: the embedded offsets).
//!
//! Index file (`<base>.index`): 32-byte header `b"TLOGSEGI"`, version u32, entry size u32 (32),
//! base offset u64, capacity u32 (slots), CRC-32 of header bytes 0..28; then `capacity` slots of 32 bytes:
//!
//! | bytes  | field           | meaning                                                   |
//! |--------|-----------------|-----------------------------------------------------------|
//! | 0..4   | relative offset | first offset of the entry, minus the segment's base       |
//! | 4..8   | data length     | bytes of the entry in the data file; 0 marks the *marker* |
//! | 8..16  | timestamp       | nanoseconds since the Unix epoch                          |
//! | 16..24 | data offset     | position of the entry in the data file                    |
//! | 24..28 | data CRC-32     | CRC-32 of the entry's data bytes                          |
//! | 28..32 | entry CRC-32    | CRC-32 of bytes 0..28 of this slot                        |
//!
//! The last written slot is always the marker: relative offset = the next offset to be
//! written, data offset = the end of the data (the data file's length but for zeros after it:
//! direct-I/O padding or zero-filled room, cut off at open), data length and CRC 0, and in the timestamp
//! field the *synced mark*: the data offset up to which the data file was fsync'd before the
//! mark was written (0 in stores written before the mark existed). On open, an entry below the
//! mark whose data is missing or fails its CRC is lost synced data (damage, reported), while one
//! above it was written after the last sync and may have been torn by a crash (cut back). An all-zero slot
//! is empty (its entry CRC cannot match: CRC-32 of 28 zero bytes is not 0).

use crate::error::{Error, Result};
use std::path::Path;

/// Magic of a segment data file.
pub const DATA_MAGIC: [u8; 8] = *b"TLOGSEGD";
/// Magic of a segment index file.
pub const INDEX_MAGIC: [u8; 8] = *b"TLOGSEGI";
/// Segment format version.
pub const FORMAT_VERSION: u32 = 1;
/// Bytes of the data file header.
pub const DATA_HEADER_LEN: u64 = 16;
/// Bytes of the index file header.
pub const INDEX_HEADER_LEN: usize = 32;
/// Bytes of one index slot.
pub const ENTRY_LEN: usize = 32;
/// Bytes of a record's length prefix in the data file.
pub const RECORD_PREFIX_LEN: usize = 4;

/// One index slot, decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct IndexEntry {
    /// First offset of the entry relative to the segment's base offset.
    pub relative_offset: u32,
    /// Bytes of the entry's data (0 for the marker).
    pub data_len: u32,
    /// Nanoseconds since the Unix epoch (0 for the marker).
    pub timestamp: u64,
    /// Position of the entry's data in the data file (bytes from the file start).
    pub data_offset: u64,
    /// CRC-32 of the entry's data bytes (0 for the marker).
    pub data_crc: u32,
}

/// What a slot holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Slot {
    /// All zero: never written.
    Empty,
    /// A slot whose entry CRC matches.
    Valid(IndexEntry),
    /// Non-zero bytes whose entry CRC does not match: torn or corrupt.
    Invalid,
}

impl IndexEntry {
    /// A marker naming the next relative offset and the data file length.
    pub fn marker(relative_offset: u32, data_offset: u64) -> Self {
        IndexEntry { relative_offset, data_len: 0, timestamp: 0, data_offset, data_crc: 0 }
    }

    /// The marker carrying the synced mark: `synced` is the data offset below which every
    /// entry's data was fsync'd before the mark was written (kept in the marker's timestamp
    /// field, which a marker does not otherwise use).
    pub fn marker_synced(relative_offset: u32, data_offset: u64, synced: u64) -> Self {
        IndexEntry { relative_offset, data_len: 0, timestamp: synced, data_offset, data_crc: 0 }
    }

    /// True for the marker slot (the "next offset" entry).
    pub fn is_marker(&self) -> bool {
        self.data_len == 0
    }

    /// Encodes the slot (32 bytes, see the module table).
    pub fn encode(&self) -> [u8; ENTRY_LEN] {
        let mut b = [0u8; ENTRY_LEN];
        b[0..4].copy_from_slice(&self.relative_offset.to_le_bytes());
        b[4..8].copy_from_slice(&self.data_len.to_le_bytes());
        b[8..16].copy_from_slice(&self.timestamp.to_le_bytes());
        b[16..24].copy_from_slice(&self.data_offset.to_le_bytes());
        b[24..28].copy_from_slice(&self.data_crc.to_le_bytes());
        let crc = crc32fast::hash(&b[0..28]);
        b[28..32].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Decodes a 32-byte slot.
    pub fn decode(b: &[u8]) -> Slot {
        if b.len() < ENTRY_LEN {
            return Slot::Invalid;
        }
        if b[..ENTRY_LEN].iter().all(|&x| x == 0) {
            return Slot::Empty;
        }
        let crc = u32::from_le_bytes([b[28], b[29], b[30], b[31]]);
        if crc32fast::hash(&b[0..28]) != crc {
            return Slot::Invalid;
        }
        Slot::Valid(IndexEntry {
            relative_offset: u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            data_len: u32::from_le_bytes([b[4], b[5], b[6], b[7]]),
            timestamp: le_u64(&b[8..16]),
            data_offset: le_u64(&b[16..24]),
            data_crc: u32::from_le_bytes([b[24], b[25], b[26], b[27]]),
        })
    }
}

pub(crate) fn le_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

/// Encodes the data file header.
pub fn encode_data_header() -> [u8; DATA_HEADER_LEN as usize] {
    let mut b = [0u8; DATA_HEADER_LEN as usize];
    b[0..8].copy_from_slice(&DATA_MAGIC);
    b[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    b
}

/// Checks a data file header.
pub fn check_data_header(path: &Path, b: &[u8]) -> Result<()> {
    if b.len() < DATA_HEADER_LEN as usize || b[0..8] != DATA_MAGIC {
        return Err(Error::Format { path: path.into(), detail: "not a tlog segment data file (bad magic)".into() });
    }
    let v = u32::from_le_bytes([b[8], b[9], b[10], b[11]]);
    if v != FORMAT_VERSION {
        return Err(Error::Format { path: path.into(), detail: format!("segment format version {v}, this build reads {FORMAT_VERSION}") });
    }
    Ok(())
}

/// Encodes the index file header for a segment of `base` with `capacity` slots.
pub fn encode_index_header(base: u64, capacity: u64) -> [u8; INDEX_HEADER_LEN] {
    let mut b = [0u8; INDEX_HEADER_LEN];
    b[0..8].copy_from_slice(&INDEX_MAGIC);
    b[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    b[12..16].copy_from_slice(&(ENTRY_LEN as u32).to_le_bytes());
    b[16..24].copy_from_slice(&base.to_le_bytes());
    b[24..28].copy_from_slice(&(capacity as u32).to_le_bytes());
    let crc = crc32fast::hash(&b[0..28]);
    b[28..32].copy_from_slice(&crc.to_le_bytes());
    b
}

/// Checks an index header; returns (base offset, capacity in slots).
pub fn check_index_header(path: &Path, b: &[u8]) -> Result<(u64, u64)> {
    if b.len() < INDEX_HEADER_LEN || b[0..8] != INDEX_MAGIC {
        return Err(Error::Format { path: path.into(), detail: "not a tlog segment index file (bad magic)".into() });
    }
    let v = u32::from_le_bytes([b[8], b[9], b[10], b[11]]);
    if v != FORMAT_VERSION {
        return Err(Error::Format { path: path.into(), detail: format!("index format version {v}, this build reads {FORMAT_VERSION}") });
    }
    let es = u32::from_le_bytes([b[12], b[13], b[14], b[15]]);
    if es as usize != ENTRY_LEN {
        return Err(Error::Format { path: path.into(), detail: format!("index entry size {es}, expected {ENTRY_LEN}") });
    }
    if crc32fast::hash(&b[0..28]) != u32::from_le_bytes([b[28], b[29], b[30], b[31]]) {
        return Err(Error::Format { path: path.into(), detail: "index header checksum mismatch".into() });
    }
    Ok((le_u64(&b[16..24]), u32::from_le_bytes([b[24], b[25], b[26], b[27]]) as u64))
}

/// The length prefix of each record (its parts' total length, u32 LE), as [`frame_records`]
/// writes them. Errors with [`Error::InvalidArgument`] when the entry would reach 4 GiB.
pub fn record_prefixes(records: &[&[&[u8]]]) -> Result<Vec<[u8; RECORD_PREFIX_LEN]>> {
    let mut total = 0usize;
    let mut out = Vec::with_capacity(records.len());
    for parts in records {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        total = total.saturating_add(len + RECORD_PREFIX_LEN);
        if total > u32::MAX as usize {
            return Err(Error::InvalidArgument(format!("entry of {total} bytes or more exceeds the 4 GiB entry limit")));
        }
        out.push((len as u32).to_le_bytes());
    }
    Ok(out)
}

/// Frames records as stored in the data file: each `len: u32 LE` then the bytes.
pub fn frame_records(records: &[&[u8]]) -> Result<Vec<u8>> {
    let total: usize = records.iter().map(|r| r.len() + RECORD_PREFIX_LEN).sum();
    if total > u32::MAX as usize {
        return Err(Error::InvalidArgument(format!("entry of {total} bytes exceeds the 4 GiB entry limit")));
    }
    let mut buf = Vec::with_capacity(total);
    for r in records {
        buf.extend_from_slice(&(r.len() as u32).to_le_bytes());
        buf.extend_from_slice(r);
    }
    Ok(buf)
}

/// Splits an entry's data into its records; `None` when the framing does not parse.
pub fn parse_records(data: &[u8]) -> Option<Vec<&[u8]>> {
    let mut out = Vec::new();
    let mut p = 0usize;
    while p < data.len() {
        if data.len() - p < RECORD_PREFIX_LEN {
            return None;
        }
        let len = u32::from_le_bytes([data[p], data[p + 1], data[p + 2], data[p + 3]]) as usize;
        p += RECORD_PREFIX_LEN;
        if data.len() - p < len {
            return None;
        }
        out.push(&data[p..p + len]);
        p += len;
    }
    if out.is_empty() {
        return None;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn golden_index_entry() {
        let e = IndexEntry { relative_offset: 7, data_len: 0x20, timestamp: 0x0102_0304_0506_0708, data_offset: 0x10, data_crc: 0xdead_beef };
        let b = e.encode();
        assert_eq!(&b[0..28], &[7, 0, 0, 0, 0x20, 0, 0, 0, 8, 7, 6, 5, 4, 3, 2, 1, 0x10, 0, 0, 0, 0, 0, 0, 0, 0xef, 0xbe, 0xad, 0xde]);
        assert_eq!(u32::from_le_bytes([b[28], b[29], b[30], b[31]]), crc32fast::hash(&b[0..28]));
        // The golden CRC pins the checksum algorithm (CRC-32/ISO-HDLC).
        assert_eq!(crc32fast::hash(b"123456789"), 0xcbf4_3926);
        assert_eq!(IndexEntry::decode(&b), Slot::Valid(e));
        assert_eq!(IndexEntry::decode(&[0u8; 32]), Slot::Empty);
        let mut bad = b;
        bad[3] ^= 1;
        assert_eq!(IndexEntry::decode(&bad), Slot::Invalid);
    }

    #[test]
    fn golden_headers() {
        assert_eq!(encode_data_header(), *b"TLOGSEGD\x01\x00\x00\x00\x00\x00\x00\x00");
        let h = encode_index_header(0x1122, 4);
        assert_eq!(&h[..28], b"TLOGSEGI\x01\x00\x00\x00\x20\x00\x00\x00\x22\x11\x00\x00\x00\x00\x00\x00\x04\x00\x00\x00");
        assert_eq!(h[28..32], crc32fast::hash(&h[..28]).to_le_bytes());
        assert_eq!(check_index_header(Path::new("x"), &h).unwrap(), (0x1122, 4));
        let mut v2 = h;
        v2[8] = 2;
        assert!(check_index_header(Path::new("x"), &v2).unwrap_err().to_string().contains("version 2"));
        let mut flipped = h;
        flipped[24] ^= 1;
        assert!(check_index_header(Path::new("x"), &flipped).unwrap_err().to_string().contains("checksum"));
        assert!(check_data_header(Path::new("x"), b"TLOGSEGX\x01\x00\x00\x00\x00\x00\x00\x00").is_err());
    }

    #[test]
    fn golden_records() {
        let f = frame_records(&[b"ab", b""]).unwrap();
        assert_eq!(f, b"\x02\x00\x00\x00ab\x00\x00\x00\x00");
        assert_eq!(parse_records(&f).unwrap(), vec![&b"ab"[..], &b""[..]]);
        assert!(parse_records(&f[..5]).is_none());
    }
}
