//! Seal and unseal an aggregation (DESIGN.md §6).
//!
//! seal: aggregation bytes (Cap'n Proto) → lz4_flex block compression with a size prefix →
//! AES-256-GCM (NIST SP 800-38D, through `ring`: 96-bit nonce, 128-bit tag appended to the
//! ciphertext) → key = BLAKE3-256 of the sealed bytes → Reed-Solomon k+m shards, each with a
//! [`ShardHeader`].
//!
//! AES-GCM comes from `ring` because its assembly uses the CPU's AES, CLMUL and VAES
//! instructions: on the reference machine 10.5 GB/s against 1.4 GB/s for the pure-Rust
//! `aes-gcm` crate, which had been most of the seal's time on incompressible data. The
//! ciphertext and tag are the standard's, so aggregations sealed by either read the same.
//!
//! Nonce: never a fixed configured value. `nonce = BLAKE3-keyed(nonce_key, vdisk len ‖ vdisk ‖
//! epoch ‖ counter ‖ attach_random)[..12]`, where `nonce_key` is derived from the AES key
//! (BLAKE3 `derive_key`), `counter` counts aggregations within one attach of one epoch and
//! `attach_random` is 16 random bytes drawn at every attach. (vdisk, epoch, counter) is unique
//! while epochs grow; the random part keeps it unique even if a crash lost an epoch bump.
//! The nonce is stored in every shard header.
//!
//! Associated data: `b"tlog-aad-v1"` ‖ vdisk len u16 ‖ vdisk ‖ epoch ‖ first sequence ‖ last
//! sequence ‖ prev, so a shard header cannot be moved to another vdisk, epoch or chain position.

use super::aggregate::{self, Aggregation};
use super::erasure::{self, ShardHeader};
use crate::backend::Key;
use crate::error::{Error, IoContext, Result};
use crate::wire::Block;
use reed_solomon_erasure::galois_8::ReedSolomon;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use std::path::Path;

/// Largest decompressed aggregation accepted on unseal (1 GiB).
pub const MAX_AGGREGATION_BYTES: usize = 1 << 30;

/// The AES-256 key with its derived id and nonce key. Never logged (Debug shows the id only).
#[derive(Clone)]
pub struct SealKey {
    aes: [u8; 32],
    id: [u8; 8],
    nonce_key: [u8; 32],
}

impl std::fmt::Debug for SealKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SealKey(id {})", self.id_hex())
    }
}

impl SealKey {
    /// From 32 raw bytes.
    pub fn from_bytes(aes: [u8; 32]) -> SealKey {
        let idb = blake3::derive_key("tlog 2026 key id v1", &aes);
        let mut id = [0u8; 8];
        id.copy_from_slice(&idb[..8]);
        SealKey { aes, id, nonce_key: blake3::derive_key("tlog 2026 nonce key v1", &aes) }
    }

    /// Parses 64 hex digits (surrounding whitespace ignored).
    pub fn from_hex(s: &str) -> Result<SealKey> {
        let v = hex::decode(s.trim()).map_err(|e| Error::Config(format!("AES key is not hex: {e}")))?;
        let a: [u8; 32] = v.try_into().map_err(|v: Vec<u8>| Error::Config(format!("AES key has {} bytes, AES-256 needs 32 (64 hex digits)", v.len())))?;
        Ok(Self::from_bytes(a))
    }

    /// A fresh random key.
    pub fn generate() -> Result<SealKey> {
        let mut a = [0u8; 32];
        getrandom::getrandom(&mut a).map_err(|e| Error::Seal(format!("no randomness for a new key: {e}")))?;
        Ok(Self::from_bytes(a))
    }

    /// Reads a key file (64 hex digits).
    pub fn load(path: &Path) -> Result<SealKey> {
        let s = std::fs::read_to_string(path).ctx(|| format!("read key file {}", path.display()))?;
        Self::from_hex(&s).map_err(|e| Error::Config(format!("{}: {e}", path.display())))
    }

    /// Writes the key as hex to a new file with mode 0600 (fails if the file exists).
    pub fn store_new(&self, path: &Path) -> Result<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).ctx(|| format!("create key file {}", path.display()))?;
        f.write_all(hex::encode(self.aes).as_bytes()).ctx(|| format!("write {}", path.display()))?;
        f.sync_all().ctx(|| format!("fsync {}", path.display()))
    }

    /// A 32-byte key derived from the AES key for another use, named by `context`
    /// (BLAKE3 `derive_key`), e.g. the index records' MAC key.
    pub fn derive(&self, context: &str) -> [u8; 32] {
        blake3::derive_key(context, &self.aes)
    }

    /// The key id (8 bytes derived from the key; safe to show).
    pub fn id(&self) -> [u8; 8] {
        self.id
    }

    /// The key id in hex.
    pub fn id_hex(&self) -> String {
        hex::encode(self.id)
    }
}

/// A sealed aggregation: its key and its k+m encoded shards.
#[derive(Clone, Debug)]
pub struct Sealed {
    /// BLAKE3-256 of the sealed bytes.
    pub key: Key,
    /// k+m shards with headers; shard i goes to backend i.
    pub shards: Vec<Vec<u8>>,
    /// First and last sequence.
    pub first_sequence: u64,
    /// Last sequence.
    pub last_sequence: u64,
    /// Sealed bytes (before erasure coding).
    pub sealed_len: usize,
    /// Plain (Cap'n Proto) bytes.
    pub plain_len: usize,
}

/// What identifies one aggregation's nonce and chain position.
#[derive(Clone, Debug)]
pub struct SealContext<'a> {
    /// The vdisk.
    pub vdisk: &'a str,
    /// Writer epoch.
    pub epoch: u64,
    /// Aggregations sealed in this attach before this one.
    pub counter: u64,
    /// Random bytes drawn at attach.
    pub attach_random: [u8; 16],
    /// Key of the previous aggregation.
    pub prev: Key,
    /// Timestamp (ns) to record.
    pub timestamp: u64,
}

/// Seals and unseals with one key and one k+m geometry.
pub struct Sealer {
    key: SealKey,
    aead: LessSafeKey,
    k: usize,
    m: usize,
    rs: ReedSolomon,
}

/// AES-GCM tag bytes appended to the ciphertext.
const TAG_LEN: usize = 16;

/// Buffers one sealing thread reuses from one aggregation to the next (encoded aggregation,
/// compressed-then-encrypted bytes, shard buffers handed back with
/// [`SealScratch::recycle_shard`]), so a steady stream of seals stops allocating. Grows to the
/// largest aggregation seen. Not shared between threads.
#[derive(Default)]
pub struct SealScratch {
    plain: Vec<u8>,
    sealed: Vec<u8>,
    /// Buffers of shards written earlier, handed back to be built into again.
    spare_shards: Vec<Vec<u8>>,
    /// Output of the compressibility probe ([`worth_compressing`]).
    probe: Vec<u8>,
}

/// Aggregations shorter than this are always compressed (bytes): probing would cost about as
/// much as compressing.
const PROBE_MIN_BYTES: usize = 256 << 10;
/// Samples the probe compresses, and bytes in each.
const PROBE_SAMPLES: usize = 8;
const PROBE_SAMPLE_BYTES: usize = 8 << 10;
/// The probe's samples must compress below this share of their size (percent) for the whole
/// aggregation to be compressed: up to 10% more bytes stored is cheaper than lz4's search over
/// data that hardly compresses.
const PROBE_WORTH_PERCENT: usize = 90;

/// Whether lz4 is worth running on `plain`: short inputs always; longer ones when
/// [`PROBE_SAMPLES`] samples spread evenly over them compress to less than
/// [`PROBE_WORTH_PERCENT`] together. On data that barely compresses (already compressed or
/// encrypted by the guest, random, or fio's default buffers, which lz4 shrinks by 3%) lz4
/// spends most of a seal's time for little; such aggregations are stored as literals instead
/// ([`lz4_literals_into`]), in the same format.
fn worth_compressing(plain: &[u8], probe: &mut Vec<u8>) -> bool {
    if plain.len() < PROBE_MIN_BYTES {
        return true;
    }
    let max = lz4_flex::block::get_maximum_output_size(PROBE_SAMPLE_BYTES);
    if probe.len() < max {
        probe.resize(max, 0);
    }
    let step = (plain.len() - PROBE_SAMPLE_BYTES) / (PROBE_SAMPLES - 1);
    let mut out = 0;
    for i in 0..PROBE_SAMPLES {
        let at = i * step;
        match lz4_flex::block::compress_into(&plain[at..at + PROBE_SAMPLE_BYTES], &mut probe[..max]) {
            Ok(n) => out += n,
            Err(_) => return true,
        }
    }
    out * 100 < PROBE_SAMPLES * PROBE_SAMPLE_BYTES * PROBE_WORTH_PERCENT
}

/// Writes `src` into `dst` as one LZ4 block holding a single sequence of literals only, and
/// returns the bytes written: the token (literal length in its high nibble, 15 meaning that
/// length bytes follow, each added, 255 meaning another follows), then the literals. The LZ4
/// block format (lz4/lz4 `doc/lz4_Block_format.md`) allows a block to end with such a
/// sequence, so any LZ4 decoder reads it back; it costs a copy where compressing costs a
/// search. `dst` must hold `lz4_flex::block::get_maximum_output_size(src.len())` bytes.
fn lz4_literals_into(src: &[u8], dst: &mut [u8]) -> Result<usize> {
    let n = src.len();
    let need = 1 + if n >= 15 { (n - 15) / 255 + 1 } else { 0 } + n;
    if dst.len() < need {
        return Err(Error::Seal(format!("lz4: {} bytes of room for {need}", dst.len())));
    }
    let mut at = 1;
    if n < 15 {
        dst[0] = (n as u8) << 4;
    } else {
        dst[0] = 0xF0;
        let mut rest = n - 15;
        while rest >= 255 {
            dst[at] = 255;
            at += 1;
            rest -= 255;
        }
        dst[at] = rest as u8;
        at += 1;
    }
    dst[at..at + n].copy_from_slice(src);
    Ok(at + n)
}

impl SealScratch {
    /// Hands back a shard buffer (its bytes are no longer needed) so the next seal builds a
    /// shard in it instead of allocating.
    pub fn recycle_shard(&mut self, buf: Vec<u8>) {
        self.spare_shards.push(buf);
    }

    /// Shard buffers waiting to be reused.
    pub fn spare_shards(&self) -> usize {
        self.spare_shards.len()
    }
}

fn aad(vdisk: &str, epoch: u64, first: u64, last: u64, prev: &Key) -> Vec<u8> {
    let mut a = Vec::with_capacity(64 + vdisk.len());
    a.extend_from_slice(b"tlog-aad-v1");
    a.extend_from_slice(&(vdisk.len() as u16).to_le_bytes());
    a.extend_from_slice(vdisk.as_bytes());
    for v in [epoch, first, last] {
        a.extend_from_slice(&v.to_le_bytes());
    }
    a.extend_from_slice(prev);
    a
}

impl Sealer {
    /// A sealer for k data + m parity shards. Errors when k or m is out of range
    /// (1 ≤ k, 0 ≤ m, k + m ≤ 255).
    pub fn new(key: SealKey, k: usize, m: usize) -> Result<Sealer> {
        if k == 0 || k + m > 255 {
            return Err(Error::Config(format!("k = {k}, m = {m}: need k >= 1 and k + m <= 255")));
        }
        let rs = if m == 0 { ReedSolomon::new(k, 1) } else { ReedSolomon::new(k, m) }.map_err(|e| Error::Config(format!("Reed-Solomon k={k} m={m}: {e:?}")))?;
        let aead = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &key.aes).map_err(|_| Error::Seal("AES-256 key rejected".into()))?);
        Ok(Sealer { key, aead, k, m, rs })
    }

    /// The key.
    pub fn key(&self) -> &SealKey {
        &self.key
    }

    /// k.
    pub fn k(&self) -> usize {
        self.k
    }

    /// m.
    pub fn m(&self) -> usize {
        self.m
    }

    /// The nonce of an aggregation (see the module doc).
    pub fn nonce(&self, c: &SealContext) -> [u8; 12] {
        let mut h = blake3::Hasher::new_keyed(&self.key.nonce_key);
        h.update(&(c.vdisk.len() as u16).to_le_bytes());
        h.update(c.vdisk.as_bytes());
        h.update(&c.epoch.to_le_bytes());
        h.update(&c.counter.to_le_bytes());
        h.update(&c.attach_random);
        let mut n = [0u8; 12];
        n.copy_from_slice(&h.finalize().as_bytes()[..12]);
        n
    }

    /// Seals `blocks` (non-empty, in sequence order) into k+m shards.
    pub fn seal(&self, c: &SealContext, blocks: &[Block]) -> Result<Sealed> {
        self.seal_with(&mut SealScratch::default(), c, blocks)
    }

    /// [`Sealer::seal`] with buffers reused across calls (one [`SealScratch`] per thread).
    pub fn seal_with(&self, s: &mut SealScratch, c: &SealContext, blocks: &[Block]) -> Result<Sealed> {
        let (first, last) = match (blocks.first(), blocks.last()) {
            (Some(f), Some(l)) => (f.sequence, l.sequence),
            _ => return Err(Error::InvalidArgument("cannot seal an empty aggregation".into())),
        };
        aggregate::encode_into(&mut s.plain, c.vdisk, blocks, &c.prev, c.epoch, c.timestamp);
        let plain_len = s.plain.len();
        let size = u32::try_from(plain_len).map_err(|_| Error::Seal(format!("aggregation of {plain_len} bytes is larger than lz4's 4 GiB size prefix")))?;
        // lz4 block with a little-endian u32 size prefix (lz4_flex's compress_prepend_size
        // format), written where the ciphertext will be, then encrypted in place.
        let max = lz4_flex::block::get_maximum_output_size(plain_len);
        if s.sealed.len() < 4 + max + TAG_LEN {
            s.sealed.resize(4 + max + TAG_LEN, 0);
        }
        s.sealed[..4].copy_from_slice(&size.to_le_bytes());
        let n = if worth_compressing(&s.plain, &mut s.probe) {
            lz4_flex::block::compress_into(&s.plain, &mut s.sealed[4..4 + max]).map_err(|e| Error::Seal(format!("lz4: {e}")))?
        } else {
            lz4_literals_into(&s.plain, &mut s.sealed[4..4 + max])?
        };
        let body = 4 + n;
        let nonce = self.nonce(c);
        let a = aad(c.vdisk, c.epoch, first, last, &c.prev);
        let tag = self
            .aead
            .seal_in_place_separate_tag(Nonce::assume_unique_for_key(nonce), Aad::from(&a[..]), &mut s.sealed[..body])
            .map_err(|_| Error::Seal("AES-GCM encryption failed".into()))?;
        s.sealed[body..body + TAG_LEN].copy_from_slice(tag.as_ref());
        let sealed = &s.sealed[..body + TAG_LEN];
        let key: Key = *blake3::hash(sealed).as_bytes();
        let total = self.k + self.m;
        let headers: Vec<ShardHeader> = (0..total)
            .map(|i| ShardHeader {
                index: i as u8,
                k: self.k as u8,
                m: self.m as u8,
                key,
                key_id: self.key.id,
                nonce,
                epoch: c.epoch,
                first_sequence: first,
                last_sequence: last,
                prev: c.prev,
                sealed_len: sealed.len() as u64,
                vdisk: c.vdisk.to_string(),
            })
            .collect();
        let shards = if self.m == 0 {
            // The coder is built with one parity shard when m = 0: code k+1, keep k.
            let mut hs = headers;
            hs.push(ShardHeader { index: total as u8, ..hs[0].clone() });
            let mut v = erasure::encode_shards_reusing(&self.rs, sealed, &hs, &mut s.spare_shards)?;
            v.truncate(total);
            v
        } else {
            erasure::encode_shards_reusing(&self.rs, sealed, &headers, &mut s.spare_shards)?
        };
        Ok(Sealed { key, shards, first_sequence: first, last_sequence: last, sealed_len: sealed.len(), plain_len })
    }

    /// Checks shards fetched for `key` and rebuilds the sealed bytes; returns (header, sealed).
    /// `shards[i]` is what backend i returned (`None` when missing or unreachable). Shards
    /// whose checksum fails or that name another key are dropped (and counted in the error when
    /// fewer than k remain).
    pub fn reassemble(&self, key: &Key, shards: Vec<Option<Vec<u8>>>) -> Result<(ShardHeader, Vec<u8>)> {
        let mut header: Option<ShardHeader> = None;
        // Each intact shard as fetched, with where its data starts (no copy yet).
        let mut slots: Vec<Option<(Vec<u8>, usize)>> = Vec::new();
        let mut problems = Vec::new();
        for (i, s) in shards.into_iter().enumerate() {
            let Some(s) = s else { continue };
            match ShardHeader::decode_shard(&s) {
                Ok((h, d)) if &h.key == key && h.index as usize == i => {
                    if slots.is_empty() {
                        slots = vec![None; h.k as usize + h.m as usize];
                    }
                    let start = s.len() - d.len();
                    if (h.index as usize) < slots.len() {
                        slots[h.index as usize] = Some((s, start));
                    }
                    header.get_or_insert(h);
                }
                Ok((h, _)) => problems.push(format!("backend {i}: shard names key {} index {}", hex::encode(h.key), h.index)),
                Err(e) => problems.push(format!("backend {i}: {e}")),
            }
        }
        let h = header.ok_or_else(|| Error::ChainBroken {
            key: hex::encode(key),
            detail: format!("no intact shard found ({})", if problems.is_empty() { "all missing".into() } else { problems.join("; ") }),
        })?;
        let k = h.k as usize;
        let sealed = if slots.len() >= k && slots[..k].iter().all(Option::is_some) {
            // Every data shard intact: the sealed bytes are their data, in order.
            let mut out = Vec::with_capacity(h.sealed_len as usize);
            for (s, start) in slots[..k].iter().flatten() {
                out.extend_from_slice(&s[*start..]);
            }
            if (out.len() as u64) < h.sealed_len {
                return Err(Error::ChainBroken {
                    key: hex::encode(key),
                    detail: format!("shards hold {} bytes, sealed length is {}", out.len(), h.sealed_len),
                });
            }
            out.truncate(h.sealed_len as usize);
            out
        } else {
            let rs = if k == self.k && h.m as usize == self.m && self.m > 0 {
                None
            } else {
                Some(ReedSolomon::new(k, (h.m as usize).max(1)).map_err(|e| Error::Seal(format!("{e:?}")))?)
            };
            let mut owned: Vec<Option<Vec<u8>>> = slots
                .into_iter()
                .map(|x| {
                    x.map(|(mut s, start)| {
                        s.drain(..start);
                        s
                    })
                })
                .collect();
            if h.m == 0 {
                owned.push(None);
            }
            erasure::reconstruct(rs.as_ref().unwrap_or(&self.rs), owned, h.sealed_len).map_err(|e| Error::ChainBroken {
                key: hex::encode(key),
                detail: format!("{e}{}", if problems.is_empty() { String::new() } else { format!(" ({})", problems.join("; ")) }),
            })?
        };
        if blake3::hash(&sealed).as_bytes() != key {
            return Err(Error::ChainBroken { key: hex::encode(key), detail: "rebuilt bytes do not hash to the key".into() });
        }
        Ok((h, sealed))
    }

    /// Decrypts and decodes sealed bytes described by `h`.
    pub fn open(&self, h: &ShardHeader, sealed: &[u8]) -> Result<Aggregation> {
        self.open_owned(h, sealed.to_vec())
    }

    /// [`Sealer::open`] on owned sealed bytes, decrypted in place (no copy).
    pub fn open_owned(&self, h: &ShardHeader, mut buf: Vec<u8>) -> Result<Aggregation> {
        if h.key_id != self.key.id {
            return Err(Error::WrongKey { key: hex::encode(h.key), sealed_with: hex::encode(h.key_id), configured: self.key.id_hex() });
        }
        let a = aad(&h.vdisk, h.epoch, h.first_sequence, h.last_sequence, &h.prev);
        let compressed: &[u8] = self
            .aead
            .open_in_place(Nonce::assume_unique_for_key(h.nonce), Aad::from(&a[..]), &mut buf)
            .map_err(|_| Error::Seal(format!("aggregation {}: AES-GCM authentication failed (wrong key or tampered data)", hex::encode(h.key))))?;
        if compressed.len() < 4 {
            return Err(Error::Seal("compressed aggregation shorter than its size prefix".into()));
        }
        let size = u32::from_le_bytes([compressed[0], compressed[1], compressed[2], compressed[3]]) as usize;
        if size > MAX_AGGREGATION_BYTES {
            return Err(Error::Seal(format!("aggregation claims {size} bytes, the limit is {MAX_AGGREGATION_BYTES}")));
        }
        let plain = lz4_flex::decompress_size_prepended(compressed).map_err(|e| Error::Seal(format!("lz4: {e}")))?;
        let agg = aggregate::decode(&plain)?;
        if agg.vdisk_id != h.vdisk
            || agg.first_sequence != h.first_sequence
            || agg.last_sequence != h.last_sequence
            || agg.prev != h.prev
            || agg.epoch != h.epoch
        {
            return Err(Error::Seal(format!("aggregation {} does not match its shard header", hex::encode(h.key))));
        }
        Ok(agg)
    }

    /// Re-encodes every shard of an aggregation from its sealed bytes and one intact shard's
    /// header (from [`Sealer::reassemble`]): the same bytes the seal produced, so a missing or
    /// bad shard can be rebuilt from any k good ones (repair, scrub). Returns k+m shards,
    /// shard i at index i.
    pub fn reencode(&self, h: &ShardHeader, sealed: &[u8]) -> Result<Vec<Vec<u8>>> {
        let (k, m) = (h.k as usize, h.m as usize);
        let own;
        let rs = if k == self.k && m == self.m && m > 0 {
            &self.rs
        } else {
            own = ReedSolomon::new(k, m.max(1)).map_err(|e| Error::Seal(format!("Reed-Solomon k={k} m={m}: {e:?}")))?;
            &own
        };
        // m = 0 is coded with one parity shard, which is not kept (as the seal does).
        let coded = k + m.max(1);
        let headers: Vec<ShardHeader> = (0..coded).map(|i| ShardHeader { index: i as u8, ..h.clone() }).collect();
        let mut shards = erasure::encode_shards(rs, sealed, &headers)?;
        shards.truncate(k + m);
        Ok(shards)
    }

    /// [`Sealer::reassemble`] then [`Sealer::open`].
    pub fn unseal(&self, key: &Key, shards: Vec<Option<Vec<u8>>>) -> Result<Aggregation> {
        let (h, sealed) = self.reassemble(key, shards)?;
        self.open_owned(&h, sealed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::Operation;

    fn blocks(n: u64) -> Vec<Block> {
        (1..=n).map(|i| Block::new(i, i * 8, Operation::Write, vec![i as u8; 4096], 4096, i)).collect()
    }

    fn ctx() -> SealContext<'static> {
        SealContext { vdisk: "vd", epoch: 1, counter: 0, attach_random: [3; 16], prev: [0; 32], timestamp: 5 }
    }

    fn golden_blocks(n: u64, size: u32) -> Vec<Block> {
        (1..=n).map(|i| Block::new(i, i * 8, Operation::Write, (0..size).map(|j| ((j * 7 + i as u32) % 251) as u8).collect(), size.into(), i)).collect()
    }

    /// The shards of a fixed aggregation, byte for byte as sealed by the first release (pure-Rust
    /// aes-gcm, safe lz4_flex, capnp heap allocator, one copy per shard): the later fast path
    /// (ring, reused scratch, shards built in place) must produce the same bytes, so stores
    /// written by either restore with either.
    #[test]
    fn seal_output_matches_the_first_release() {
        let s = Sealer::new(SealKey::from_bytes([9; 32]), 4, 2).unwrap();
        let c = SealContext { vdisk: "golden", epoch: 3, counter: 5, attach_random: [4; 16], prev: [1; 32], timestamp: 77 };
        let sealed = s.seal(&c, &golden_blocks(40, 4096)).unwrap();
        let mut h = blake3::Hasher::new();
        for sh in &sealed.shards {
            h.update(sh);
        }
        assert_eq!(hex::encode(sealed.key), "1050294194d7f13422ab1e56432e7edcabc273c55cce6b9b4116342eaed8c65d");
        assert_eq!(h.finalize().to_hex().as_str(), "721c2b961c35e80cbf26801fe1f78bb061126ab413a178517c0b95031fe44d90");
        assert_eq!(sealed.sealed_len, 3844);
    }

    /// `n` bytes no compressor shrinks: the benchmark's payload generator with no compressible
    /// part.
    fn noise(n: usize, seed: u64) -> Vec<u8> {
        crate::bench::payloads(n, 0.0, 1, seed).remove(0)
    }

    #[test]
    fn literal_blocks_read_back_with_lz4() {
        // Around each boundary of the length encoding (15, then 255 per extra byte).
        for n in [0, 1, 14, 15, 16, 269, 270, 271, 524, 525, 526, 4096, 100_003] {
            let src = noise(n, n as u64 + 7);
            let mut dst = vec![0u8; lz4_flex::block::get_maximum_output_size(n)];
            let w = lz4_literals_into(&src, &mut dst).unwrap();
            assert_eq!(lz4_flex::block::decompress(&dst[..w], n).unwrap(), src, "{n} bytes");
        }
        let mut small = [0u8; 10];
        assert!(lz4_literals_into(&[1u8; 20], &mut small).unwrap_err().to_string().contains("room"));
    }

    #[test]
    fn the_probe_skips_lz4_only_for_data_that_does_not_compress() {
        let mut probe = Vec::new();
        assert!(!worth_compressing(&noise(4 << 20, 1), &mut probe));
        // Like fio's default buffers: random words with one zero word in 64 (lz4 saves ~3%).
        let mut fio_like = noise(4 << 20, 5);
        fio_like.chunks_mut(512).for_each(|c| c[..8].fill(0));
        assert!(!worth_compressing(&fio_like, &mut probe));
        let golden: Vec<u8> = golden_blocks(100, 4096).into_iter().flat_map(|b| b.data).collect();
        assert!(worth_compressing(&golden, &mut probe));
        // Short inputs are always compressed; half-compressible ones are worth it.
        assert!(worth_compressing(&noise(100 << 10, 2), &mut probe));
        let half: Vec<u8> = noise(2 << 20, 3).chunks(4096).flat_map(|c| [&c[..2048], &[0u8; 2048][..]].concat()).collect();
        assert!(worth_compressing(&half, &mut probe));
    }

    #[test]
    fn incompressible_aggregations_seal_as_literals_and_unseal() {
        let s = Sealer::new(SealKey::from_bytes([9; 32]), 4, 2).unwrap();
        let b: Vec<Block> = (1..=64).map(|i| Block::new(i, i * 8, Operation::Write, noise(16 << 10, i), 16 << 10, i)).collect();
        let sealed = s.seal(&ctx(), &b).unwrap();
        // Literals: the plain bytes plus the size prefix, the token and lengths, and the tag.
        assert!(sealed.sealed_len <= sealed.plain_len + 4 + 1 + sealed.plain_len / 255 + 1 + TAG_LEN, "{} of {}", sealed.sealed_len, sealed.plain_len);
        assert_eq!(s.unseal(&sealed.key, sealed.shards.into_iter().map(Some).collect()).unwrap().blocks, b);
    }

    #[test]
    fn scratch_reuse_gives_the_same_shards_as_a_fresh_seal() {
        let s = Sealer::new(SealKey::from_bytes([9; 32]), 4, 2).unwrap();
        let mut scratch = SealScratch::default();
        // Large, then small, then large again: stale bytes from a bigger aggregation must
        // never leak into a smaller one.
        for (n, size) in [(64, 4096), (3, 512), (1, 1), (50, 4096), (2, 65536)] {
            let b = golden_blocks(n, size);
            let c = SealContext { vdisk: "vd", epoch: 1, counter: n, attach_random: [2; 16], prev: [0; 32], timestamp: 9 };
            let fresh = s.seal(&c, &b).unwrap();
            let reused = s.seal_with(&mut scratch, &c, &b).unwrap();
            assert_eq!(fresh.key, reused.key);
            assert_eq!(fresh.shards, reused.shards);
            // And the shards are the header + checksum + data of plain RS coding.
            let data = erasure::encode(&s.rs, &s.reassemble(&fresh.key, fresh.shards.iter().cloned().map(Some).collect()).unwrap().1).unwrap();
            for (i, sh) in fresh.shards.iter().enumerate() {
                let (h, d) = ShardHeader::decode_shard(sh).unwrap();
                assert_eq!(h.index as usize, i);
                assert_eq!(d, &data[i][..]);
            }
            assert_eq!(s.unseal(&reused.key, reused.shards.into_iter().map(Some).collect()).unwrap().blocks, b);
        }
    }

    #[test]
    fn reencode_rebuilds_the_sealed_shards_byte_for_byte() {
        for (k, m) in [(4, 2), (3, 0), (2, 1)] {
            let s = Sealer::new(SealKey::from_bytes([9; 32]), k, m).unwrap();
            let sealed = s.seal(&ctx(), &golden_blocks(7, 4096)).unwrap();
            let mut have: Vec<Option<Vec<u8>>> = sealed.shards.iter().cloned().map(Some).collect();
            if m > 0 {
                have[0] = None;
            }
            let (h, bytes) = s.reassemble(&sealed.key, have).unwrap();
            assert_eq!(s.reencode(&h, &bytes).unwrap(), sealed.shards, "k={k} m={m}");
        }
    }

    #[test]
    fn m_zero_seals_k_shards() {
        let s = Sealer::new(SealKey::from_bytes([9; 32]), 3, 0).unwrap();
        let b = golden_blocks(5, 4096);
        let sealed = s.seal(&ctx(), &b).unwrap();
        assert_eq!(sealed.shards.len(), 3);
        assert_eq!(s.unseal(&sealed.key, sealed.shards.into_iter().map(Some).collect()).unwrap().blocks, b);
    }

    #[test]
    fn seal_unseal_with_m_lost_and_a_corrupt_one() {
        let s = Sealer::new(SealKey::from_bytes([9; 32]), 4, 2).unwrap();
        let b = blocks(10);
        let sealed = s.seal(&ctx(), &b).unwrap();
        assert_eq!(sealed.shards.len(), 6);
        let mut shards: Vec<Option<Vec<u8>>> = sealed.shards.iter().cloned().map(Some).collect();
        shards[0] = None;
        shards[3] = None;
        let agg = s.unseal(&sealed.key, shards.clone()).unwrap();
        assert_eq!(agg.blocks, b);
        // A third loss (a corrupt shard) is one too many.
        if let Some(x) = shards[1].as_mut() {
            let l = x.len();
            x[l - 1] ^= 1;
        }
        let e = s.unseal(&sealed.key, shards).unwrap_err().to_string();
        assert!(e.contains("chain broken") && e.contains("checksum"), "{e}");
    }

    #[test]
    fn wrong_key_is_named() {
        let s = Sealer::new(SealKey::from_bytes([9; 32]), 2, 1).unwrap();
        let sealed = s.seal(&ctx(), &blocks(2)).unwrap();
        let other = Sealer::new(SealKey::from_bytes([8; 32]), 2, 1).unwrap();
        let e = other.unseal(&sealed.key, sealed.shards.into_iter().map(Some).collect()).unwrap_err();
        assert!(matches!(e, Error::WrongKey { .. }), "{e}");
    }

    #[test]
    fn nonces_differ_per_counter_epoch_and_attach() {
        let s = Sealer::new(SealKey::from_bytes([1; 32]), 2, 1).unwrap();
        let mut c = ctx();
        let n0 = s.nonce(&c);
        c.counter = 1;
        let n1 = s.nonce(&c);
        c.epoch = 2;
        let n2 = s.nonce(&c);
        c.attach_random = [4; 16];
        let n3 = s.nonce(&c);
        let all = [n0, n1, n2, n3];
        for i in 0..4 {
            for j in i + 1..4 {
                assert_ne!(all[i], all[j]);
            }
        }
    }
}
