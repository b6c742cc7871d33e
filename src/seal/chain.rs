//! Head record: the newest aggregation of a vdisk, written with each flush to every backend.
//!
//! Encoding (little-endian): magic `b"TLOGHEAD"` (8), height u64 (8: the aggregation's
//! 1-based position in the chain; backends compare it to keep the newest), key (32), first
//! sequence u64, last sequence u64, epoch u64, timestamp u64 (ns), CRC-32 of the preceding
//! bytes (4). 84 bytes.

use crate::backend::Key;
use crate::error::{Error, Result};

/// Bytes of an encoded head record.
pub const HEAD_LEN: usize = 84;

/// A vdisk's newest aggregation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeadRecord {
    /// Position in the chain (1 for the first aggregation).
    pub height: u64,
    /// Key of the aggregation.
    pub key: Key,
    /// Its first sequence.
    pub first_sequence: u64,
    /// Its last sequence.
    pub last_sequence: u64,
    /// Its epoch.
    pub epoch: u64,
    /// Its timestamp (ns).
    pub timestamp: u64,
}

impl HeadRecord {
    /// Encodes the record (see the module doc).
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(HEAD_LEN);
        b.extend_from_slice(b"TLOGHEAD");
        b.extend_from_slice(&self.height.to_le_bytes());
        b.extend_from_slice(&self.key);
        for v in [self.first_sequence, self.last_sequence, self.epoch, self.timestamp] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        let crc = crc32fast::hash(&b);
        b.extend_from_slice(&crc.to_le_bytes());
        b
    }

    /// Decodes a record; errors on a bad magic, length or checksum.
    pub fn decode(b: &[u8]) -> Result<HeadRecord> {
        if b.len() != HEAD_LEN || &b[0..8] != b"TLOGHEAD" {
            return Err(Error::Corrupt { location: "head record".into(), detail: format!("not a head record ({} bytes, bad magic or length)", b.len()) });
        }
        let crc = u32::from_le_bytes([b[80], b[81], b[82], b[83]]);
        if crc32fast::hash(&b[..80]) != crc {
            return Err(Error::Corrupt { location: "head record".into(), detail: "checksum mismatch".into() });
        }
        let u = |p: usize| crate::bytes::le_u64(&b[p..p + 8]);
        let mut key = [0u8; 32];
        key.copy_from_slice(&b[16..48]);
        Ok(HeadRecord { height: u(8), key, first_sequence: u(48), last_sequence: u(56), epoch: u(64), timestamp: u(72) })
    }
}

/// Fetches the shards of `key` from every backend in parallel; `None` where a backend has
/// none or fails (the failure is logged).
pub fn fetch_shards(backends: &[std::sync::Arc<dyn crate::backend::Backend>], key: &Key) -> Vec<Option<Vec<u8>>> {
    std::thread::scope(|s| {
        let hs: Vec<_> = backends.iter().map(|b| s.spawn(move || (b.name(), b.get(key)))).collect();
        hs.into_iter()
            .map(|h| match h.join() {
                Ok((_, Ok(v))) => v,
                Ok((name, Err(e))) => {
                    tracing::debug!("{name}: {e}");
                    None
                }
                Err(_) => None,
            })
            .collect()
    })
}

/// Fetches and unseals the aggregation `key` for reading: the k data shards first (in
/// parallel, one backend each), and the m parity shards only when a data shard is missing or
/// bad, so an intact aggregation costs k reads, not k+m. Errors: as [`Sealer::unseal`] with
/// every shard fetched.
pub fn fetch_aggregation(
    backends: &[std::sync::Arc<dyn crate::backend::Backend>],
    sealer: &crate::seal::Sealer,
    key: &Key,
) -> Result<crate::seal::Aggregation> {
    let k = sealer.k().min(backends.len());
    let get = |range: std::ops::Range<usize>| -> Vec<Option<Vec<u8>>> {
        std::thread::scope(|s| {
            let hs: Vec<_> = backends[range].iter().map(|b| s.spawn(move || (b.name(), b.get(key)))).collect();
            hs.into_iter()
                .map(|h| match h.join() {
                    Ok((_, Ok(v))) => v,
                    Ok((name, Err(e))) => {
                        tracing::debug!("{name}: {e}");
                        None
                    }
                    Err(_) => None,
                })
                .collect()
        })
    };
    let mut shards = get(0..k);
    shards.resize(backends.len(), None);
    match sealer.unseal(key, shards) {
        Ok(a) => Ok(a),
        Err(e) if backends.len() > k => {
            tracing::debug!("aggregation {}: {e}; reading the parity shards too", hex::encode(key));
            sealer.unseal(key, get(0..backends.len()))
        }
        Err(e) => Err(e),
    }
}

/// Finds a vdisk's head: reads the head record from every reachable backend and returns the
/// highest one whose aggregation can be rebuilt (at least k intact shards). A head that cannot
/// be rebuilt was never acknowledged (the write quorum is above k), so the next lower one is
/// tried. `Ok(None)` when no backend knows the vdisk; an error when heads exist but none can be
/// rebuilt, or when more than m backends are unreachable.
pub fn find_head(backends: &[std::sync::Arc<dyn crate::backend::Backend>], sealer: &crate::seal::Sealer, vdisk: &str) -> Result<Option<HeadRecord>> {
    let results: Vec<(String, Result<Option<Vec<u8>>>)> = std::thread::scope(|s| {
        let hs: Vec<_> = backends.iter().map(|b| s.spawn(move || (b.name(), b.get_head(vdisk)))).collect();
        hs.into_iter()
            .map(|h| h.join().unwrap_or_else(|_| ("?".into(), Err(Error::Backend { backend: "?".into(), detail: "reader thread panicked".into() }))))
            .collect()
    });
    let mut heads: Vec<HeadRecord> = Vec::new();
    let mut unreachable = Vec::new();
    for (name, r) in results {
        match r {
            Ok(Some(b)) => match HeadRecord::decode(&b) {
                Ok(h) => heads.push(h),
                Err(e) => tracing::warn!("{name}: head record of {vdisk} unreadable: {e}"),
            },
            Ok(None) => {}
            Err(e) => {
                tracing::warn!("{name}: {e}");
                unreachable.push(format!("{name}: {e}"));
            }
        }
    }
    if unreachable.len() > sealer.m() {
        return Err(Error::Backend {
            backend: format!("{} of {} backends", unreachable.len(), backends.len()),
            detail: format!("more than m = {} unreachable: {}", sealer.m(), unreachable.join("; ")),
        });
    }
    // Newest first by (epoch, height): the order backends keep heads in.
    heads.sort_by_key(|h| std::cmp::Reverse((h.epoch, h.height)));
    heads.dedup_by_key(|h| h.key);
    if heads.is_empty() {
        return Ok(None);
    }
    let mut last_err = None;
    for h in heads {
        match sealer.reassemble(&h.key, fetch_shards(backends, &h.key)) {
            Ok(_) => return Ok(Some(h)),
            Err(e) => {
                tracing::warn!(vdisk, height = h.height, "head {} cannot be rebuilt ({e}); trying an older head", hex::encode(h.key));
                last_err = Some(e);
            }
        }
    }
    Err(last_err.unwrap_or_else(|| Error::NotFound(format!("vdisk {vdisk}"))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_height_position() {
        let h = HeadRecord { height: 5, key: [7; 32], first_sequence: 10, last_sequence: 20, epoch: 3, timestamp: 99 };
        let b = h.encode();
        assert_eq!(b.len(), HEAD_LEN);
        assert_eq!(HeadRecord::decode(&b).unwrap(), h);
        let mut c = b.clone();
        c[50] ^= 1;
        assert!(HeadRecord::decode(&c).is_err());
    }
}
