//! Shards: Reed-Solomon k+m over the sealed bytes (reed-solomon-erasure, GF(2^8)), each shard
//! behind a versioned header so a bad shard is detected alone and rebuilt from the others.
//!
//! Shard layout (little-endian):
//!
//! | bytes        | field                                               |
//! |--------------|-----------------------------------------------------|
//! | 0..8         | magic `b"TLOGSHRD"`                                 |
//! | 8..10        | format version (1)                                  |
//! | 10, 11, 12   | shard index, k, m                                   |
//! | 13..16       | reserved (0)                                        |
//! | 16..48       | key (BLAKE3-256 of the sealed bytes)                |
//! | 48..56       | id of the AES key that sealed it                    |
//! | 56..68       | AES-GCM nonce                                       |
//! | 68..72       | reserved (0)                                        |
//! | 72..80       | epoch                                               |
//! | 80..88       | first sequence                                      |
//! | 88..96       | last sequence                                       |
//! | 96..128      | prev (key of the previous aggregation)              |
//! | 128..136     | sealed length (bytes before padding)                |
//! | 136..140     | shard length (bytes of shard data)                  |
//! | 140..142     | vdisk id length n                                   |
//! | 142..142+n   | vdisk id (UTF-8)                                    |
//! | next 32      | BLAKE3-256 of every header byte before it + data    |
//! | rest         | shard data                                          |

use crate::backend::Key;
use crate::error::{Error, Result};
use reed_solomon_erasure::galois_8::ReedSolomon;

/// Magic of a shard.
pub const SHARD_MAGIC: [u8; 8] = *b"TLOGSHRD";
/// Shard format version.
pub const SHARD_VERSION: u16 = 1;
const FIXED: usize = 142;

/// A shard's header fields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardHeader {
    /// Index of this shard (0..k+m).
    pub index: u8,
    /// Data shards.
    pub k: u8,
    /// Parity shards.
    pub m: u8,
    /// Aggregation key.
    pub key: Key,
    /// Id of the sealing AES key.
    pub key_id: [u8; 8],
    /// AES-GCM nonce.
    pub nonce: [u8; 12],
    /// Writer epoch.
    pub epoch: u64,
    /// First sequence in the aggregation.
    pub first_sequence: u64,
    /// Last sequence in the aggregation.
    pub last_sequence: u64,
    /// Previous aggregation's key.
    pub prev: Key,
    /// Sealed bytes before padding.
    pub sealed_len: u64,
    /// The vdisk.
    pub vdisk: String,
}

impl ShardHeader {
    /// The header bytes before the checksum, for a shard of `shard_len` data bytes.
    fn header_bytes(&self, shard_len: usize) -> Vec<u8> {
        let mut b = Vec::with_capacity(FIXED + self.vdisk.len());
        b.extend_from_slice(&SHARD_MAGIC);
        b.extend_from_slice(&SHARD_VERSION.to_le_bytes());
        b.extend_from_slice(&[self.index, self.k, self.m, 0, 0, 0]);
        b.extend_from_slice(&self.key);
        b.extend_from_slice(&self.key_id);
        b.extend_from_slice(&self.nonce);
        b.extend_from_slice(&[0; 4]);
        for v in [self.epoch, self.first_sequence, self.last_sequence] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        b.extend_from_slice(&self.prev);
        b.extend_from_slice(&self.sealed_len.to_le_bytes());
        b.extend_from_slice(&(shard_len as u32).to_le_bytes());
        b.extend_from_slice(&(self.vdisk.len() as u16).to_le_bytes());
        b.extend_from_slice(self.vdisk.as_bytes());
        b
    }

    /// Encodes header + checksum + data into one shard.
    pub fn encode_shard(&self, data: &[u8]) -> Vec<u8> {
        let mut b = self.header_bytes(data.len());
        b.reserve(32 + data.len());
        let mut h = blake3::Hasher::new();
        h.update(&b);
        h.update(data);
        b.extend_from_slice(h.finalize().as_bytes());
        b.extend_from_slice(data);
        b
    }

    /// Parses and verifies a shard; returns the header and the shard data. Errors name what is
    /// wrong (magic, version, length, checksum).
    pub fn decode_shard(b: &[u8]) -> Result<(ShardHeader, &[u8])> {
        let bad = |d: String| Error::Corrupt { location: "shard".into(), detail: d };
        if b.len() < FIXED + 32 || b[0..8] != SHARD_MAGIC {
            return Err(bad("not a tlog shard (bad magic or too short)".into()));
        }
        let v = u16::from_le_bytes([b[8], b[9]]);
        if v != SHARD_VERSION {
            return Err(bad(format!("shard format version {v}, this build reads {SHARD_VERSION}")));
        }
        // Reserved bytes are zero in version 1 (so a decoded shard re-encodes to its bytes).
        if b[13..16] != [0; 3] || b[68..72] != [0; 4] {
            return Err(bad("reserved header bytes are not zero".into()));
        }
        let u = |p: usize| crate::bytes::le_u64(&b[p..p + 8]);
        let n = u16::from_le_bytes([b[140], b[141]]) as usize;
        let shard_len = u32::from_le_bytes([b[136], b[137], b[138], b[139]]) as usize;
        let hdr_end = FIXED + n;
        if b.len() != hdr_end + 32 + shard_len {
            return Err(bad(format!("shard of {} bytes, header says {}", b.len(), hdr_end + 32 + shard_len)));
        }
        let data = &b[hdr_end + 32..];
        let mut h = blake3::Hasher::new();
        h.update(&b[..hdr_end]);
        h.update(data);
        if h.finalize().as_bytes() != &b[hdr_end..hdr_end + 32] {
            return Err(bad("shard checksum mismatch".into()));
        }
        let arr32 = |p: usize| -> Key {
            let mut k = [0u8; 32];
            k.copy_from_slice(&b[p..p + 32]);
            k
        };
        let mut key_id = [0u8; 8];
        key_id.copy_from_slice(&b[48..56]);
        let mut nonce = [0u8; 12];
        nonce.copy_from_slice(&b[56..68]);
        let vdisk = String::from_utf8(b[FIXED..hdr_end].to_vec()).map_err(|_| bad("vdisk id is not UTF-8".into()))?;
        Ok((
            ShardHeader {
                index: b[10],
                k: b[11],
                m: b[12],
                key: arr32(16),
                key_id,
                nonce,
                epoch: u(72),
                first_sequence: u(80),
                last_sequence: u(88),
                prev: arr32(96),
                sealed_len: u(128),
                vdisk,
            },
            data,
        ))
    }
}

/// Splits `sealed` into k data shards (zero-padded to equal length) and m parity shards.
pub fn encode(rs: &ReedSolomon, sealed: &[u8]) -> Result<Vec<Vec<u8>>> {
    let k = rs.data_shard_count();
    let total = rs.total_shard_count();
    let len = sealed.len().div_ceil(k).max(1);
    let mut shards: Vec<Vec<u8>> = Vec::with_capacity(total);
    for i in 0..k {
        let start = (i * len).min(sealed.len());
        let end = ((i + 1) * len).min(sealed.len());
        let mut s = Vec::with_capacity(len);
        s.extend_from_slice(&sealed[start..end]);
        s.resize(len, 0);
        shards.push(s);
    }
    for _ in k..total {
        shards.push(vec![0u8; len]);
    }
    rs.encode(&mut shards).map_err(|e| Error::Seal(format!("Reed-Solomon encode: {e:?}")))?;
    Ok(shards)
}

/// Erasure-codes `sealed` straight into finished shards: shard i is `headers[i]` (k+m of them,
/// index i) followed by its checksum and data, the same bytes as
/// `headers[i].encode_shard(&encode(rs, sealed)?[i])`, but each shard is allocated once at its
/// final size and the data is copied once (from `sealed` into the data shards; parity is
/// computed in place). Errors when `headers` does not hold one header per shard.
pub fn encode_shards(rs: &ReedSolomon, sealed: &[u8], headers: &[ShardHeader]) -> Result<Vec<Vec<u8>>> {
    encode_shards_reusing(rs, sealed, headers, &mut Vec::new())
}

/// [`encode_shards`] building the shards in buffers taken from `spare` (cleared first; their
/// capacity is reused, so a steady stream of aggregations stops allocating and page-faulting
/// fresh memory); new buffers are allocated when `spare` runs out.
pub fn encode_shards_reusing(rs: &ReedSolomon, sealed: &[u8], headers: &[ShardHeader], spare: &mut Vec<Vec<u8>>) -> Result<Vec<Vec<u8>>> {
    let k = rs.data_shard_count();
    let total = rs.total_shard_count();
    if headers.len() != total {
        return Err(Error::Seal(format!("{} shard headers for {total} shards", headers.len())));
    }
    let len = sealed.len().div_ceil(k).max(1);
    let mut shards: Vec<Vec<u8>> = Vec::with_capacity(total);
    let mut offsets = Vec::with_capacity(total);
    for (i, h) in headers.iter().enumerate() {
        let header = h.header_bytes(len);
        let mut b = spare.pop().unwrap_or_default();
        b.clear();
        let need = header.len() + 32 + len;
        if b.capacity() < need {
            // An eighth to spare: sealed sizes vary a little from one aggregation to the next,
            // and a buffer regrown each time would fault in fresh pages each time.
            b.reserve_exact(need + need / 8);
        }
        b.extend_from_slice(&header);
        offsets.push(b.len());
        b.extend_from_slice(&[0u8; 32]);
        if i < k {
            let start = (i * len).min(sealed.len());
            let end = ((i + 1) * len).min(sealed.len());
            b.extend_from_slice(&sealed[start..end]);
        }
        // Pads the last data shard, fills parity shards with zeros.
        b.resize(offsets[i] + 32 + len, 0);
        shards.push(b);
    }
    {
        let mut data: Vec<&mut [u8]> = shards.iter_mut().zip(&offsets).map(|(s, &o)| &mut s[o + 32..]).collect();
        rs.encode(&mut data).map_err(|e| Error::Seal(format!("Reed-Solomon encode: {e:?}")))?;
    }
    for (s, &o) in shards.iter_mut().zip(&offsets) {
        let mut h = blake3::Hasher::new();
        h.update(&s[..o]);
        h.update(&s[o + 32..]);
        let sum = h.finalize();
        s[o..o + 32].copy_from_slice(sum.as_bytes());
    }
    Ok(shards)
}

/// Rebuilds the sealed bytes from at least k shards (`None` = missing), truncated to
/// `sealed_len`.
pub fn reconstruct(rs: &ReedSolomon, mut shards: Vec<Option<Vec<u8>>>, sealed_len: u64) -> Result<Vec<u8>> {
    let have = shards.iter().filter(|s| s.is_some()).count();
    let k = rs.data_shard_count();
    if have < k {
        return Err(Error::Seal(format!("only {have} intact shards, {k} needed")));
    }
    if shards[..k].iter().any(|s| s.is_none()) {
        rs.reconstruct_data(&mut shards).map_err(|e| Error::Seal(format!("Reed-Solomon reconstruct: {e:?}")))?;
    }
    let mut out = Vec::with_capacity(sealed_len as usize);
    for s in shards.into_iter().take(k) {
        out.extend_from_slice(&s.ok_or_else(|| Error::Seal("data shard missing after reconstruction".into()))?);
    }
    if (out.len() as u64) < sealed_len {
        return Err(Error::Seal(format!("shards hold {} bytes, sealed length is {sealed_len}", out.len())));
    }
    out.truncate(sealed_len as usize);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by `cargo fuzz run shard_header`: nonzero reserved bytes with a recomputed
    /// checksum decoded, and re-encoded to other bytes.
    #[test]
    fn fuzz_regression_reserved_bytes_must_be_zero() {
        let b = include_bytes!("../../tests/fixtures/fuzz/shard_header-reserved-bytes.bin");
        let e = ShardHeader::decode_shard(b).unwrap_err().to_string();
        assert!(e.contains("reserved"), "{e}");
    }

    #[test]
    fn a_decoded_shard_reencodes_to_its_bytes() {
        let h = ShardHeader {
            index: 1,
            k: 4,
            m: 2,
            key: [9; 32],
            key_id: [1; 8],
            nonce: [2; 12],
            epoch: 3,
            first_sequence: 4,
            last_sequence: 5,
            prev: [6; 32],
            sealed_len: 77,
            vdisk: "vd".into(),
        };
        let b = h.encode_shard(b"data");
        let (d, body) = ShardHeader::decode_shard(&b).unwrap();
        assert_eq!((d.encode_shard(body), body), (b.clone(), &b"data"[..]));
        let mut r = b.clone();
        r[14] = 1;
        assert!(ShardHeader::decode_shard(&r).is_err(), "a flipped reserved byte fails (checksum or reserved check)");
    }
}
