//! The metadata index of a vdisk (DESIGN.md §7, after the TLOG server's metadata store): one
//! entry per aggregation, `{height, key, prev, first/last sequence, first/last block
//! timestamp, epoch, blocks, data bytes, seal time}`, in chain order, answering "which
//! aggregations hold sequences a..b" and "which sequence was the last at time T" by binary
//! search (O(log n)).
//!
//! Where it lives: on every backend, as metadata records of the vdisk (so any reader with the
//! backends and the key, on any host, gets the same answers). Each flush writes its entry
//! `i/<height, 20 digits>` in the same batch as its shards; when a page of [`PAGE`] entries is
//! complete, the engine writes the page `p/<page, 20 digits>` and deletes the page's entries
//! (one batch per backend), so a vdisk of n aggregations holds n / 1024 pages and at most 1023
//! loose entries. Readers take the union of what every reachable backend holds, and resolve the
//! chain from the head backwards by `prev` keys, so entries of aggregations that are not on the
//! chain (a fenced writer's) are ignored; a missing entry is rebuilt from the chain itself (the
//! aggregation is fetched and unsealed), which is also how vdisks written before the index was
//! stored on the backends are read.
//!
//! Encoding (little-endian): entry = version u8 (2), height, first sequence, last sequence,
//! first timestamp, last timestamp, epoch, data bytes, seal time (u64 each), blocks u32, key
//! (32), prev (32), extents count u8 × (first sector u64, end sector u64), MAC (16) (version 1,
//! written before extents were, has no extents: the aggregation may cover any sector); page = version u8 (1), page number u64, count u32, entries without
//! their MAC, MAC (16). The MAC is BLAKE3 keyed with a key derived from the AES key
//! (`derive_key("tlog 2026 index mac v1")`) over the vdisk id and the bytes before it: a record
//! of another vdisk, another key, or tampered, fails.

use crate::backend::{Backend, Key};
use crate::bytes::{put_str16, Reader};
use crate::error::{Error, Result};
use crate::seal::{HeadRecord, SealKey, Sealer};
use crate::wire::Block;
use std::collections::HashMap;
use std::sync::Arc;

/// Entries per index page.
pub const PAGE: u64 = 1024;

/// The smallest entry body (version 1, or version 2 without extents' spans).
const ENTRY_BODY: usize = 1 + 8 * 8 + 4 + 32 + 32;

/// Spans an entry's [`Extents`] keeps at most.
pub const EXTENTS: usize = 8;

/// The sectors an aggregation's blocks touch (writes and zeroes), as at most [`EXTENTS`] sorted,
/// disjoint spans `[first, end)` of 512-byte sectors: a superset, where more runs than that
/// were merged across their smallest gaps. Readers of a past point (an NBD export straight from
/// the log) use it to skip aggregations that cannot hold a sector. No spans means unknown (an
/// entry written before extents were recorded): any sector may be held.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Extents {
    n: u8,
    spans: [(u64, u64); EXTENTS],
}

impl Extents {
    /// Unknown: any sector may be held.
    pub const UNKNOWN: Extents = Extents { n: 0, spans: [(0, 0); EXTENTS] };

    /// The extents of `blocks` (a block of `size` bytes at `lba` touches sectors
    /// `lba..lba + ceil(size / 512)`).
    pub fn of(blocks: &[Block]) -> Extents {
        let mut runs: Vec<(u64, u64)> = blocks.iter().map(|b| (b.lba, b.lba.saturating_add(b.size.div_ceil(crate::wire::SECTOR).max(1)))).collect();
        Self::from_runs(&mut runs)
    }

    /// The extents of sector runs `[first, end)` (any order, may overlap).
    pub fn from_runs(runs: &mut [(u64, u64)]) -> Extents {
        runs.sort_unstable();
        let mut merged: Vec<(u64, u64)> = Vec::with_capacity(runs.len().min(1024));
        for &(s, e) in runs.iter() {
            match merged.last_mut() {
                Some(l) if s <= l.1 => l.1 = l.1.max(e),
                _ => merged.push((s, e)),
            }
        }
        if merged.len() > EXTENTS {
            // Keep the EXTENTS - 1 widest gaps; close the others.
            let mut gaps: Vec<(u64, usize)> = merged.windows(2).enumerate().map(|(i, w)| (w[1].0 - w[0].1, i)).collect();
            gaps.sort_unstable_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
            let mut keep: Vec<usize> = gaps.iter().take(EXTENTS - 1).map(|g| g.1).collect();
            keep.sort_unstable();
            let mut out = Vec::with_capacity(EXTENTS);
            let mut start = merged[0].0;
            for &i in &keep {
                out.push((start, merged[i].1));
                start = merged[i + 1].0;
            }
            out.push((start, merged[merged.len() - 1].1));
            merged = out;
        }
        let mut x = Extents::UNKNOWN;
        for (i, s) in merged.iter().enumerate() {
            x.spans[i] = *s;
        }
        x.n = merged.len() as u8;
        x
    }

    /// The spans (empty: unknown).
    pub fn spans(&self) -> &[(u64, u64)] {
        &self.spans[..self.n as usize]
    }

    /// Whether the extents are unknown.
    pub fn is_unknown(&self) -> bool {
        self.n == 0
    }

    /// Whether sectors `[first, end)` may be held (always, when unknown).
    pub fn may_hold(&self, first: u64, end: u64) -> bool {
        self.n == 0 || self.spans().iter().any(|&(s, e)| s < end && first < e)
    }

    /// Appends count u8, then (first, end) u64 pairs.
    pub(crate) fn put(&self, out: &mut Vec<u8>) {
        out.push(self.n);
        for (s, e) in self.spans() {
            out.extend_from_slice(&s.to_le_bytes());
            out.extend_from_slice(&e.to_le_bytes());
        }
    }

    /// Parses what [`Extents::put`] wrote; `None` when malformed (too many, unsorted, empty spans).
    pub(crate) fn parse(r: &mut Reader<'_>) -> Option<Extents> {
        let n = r.u8()? as usize;
        if n > EXTENTS {
            return None;
        }
        let mut x = Extents::UNKNOWN;
        for i in 0..n {
            let (s, e) = (r.u64()?, r.u64()?);
            if e <= s || (i > 0 && s < x.spans[i - 1].1) {
                return None;
            }
            x.spans[i] = (s, e);
        }
        x.n = n as u8;
        Some(x)
    }
}
const MAC: usize = 16;

/// One aggregation in the index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IndexEntry {
    /// Chain height (1 for the first aggregation).
    pub height: u64,
    /// Aggregation key.
    pub key: Key,
    /// Key of the aggregation before it (32 zero bytes for the first).
    pub prev: Key,
    /// First sequence.
    pub first_sequence: u64,
    /// Last sequence.
    pub last_sequence: u64,
    /// First block's timestamp, ns since the Unix epoch.
    pub first_timestamp: u64,
    /// Last block's timestamp, ns (block timestamps never go back within a vdisk).
    pub last_timestamp: u64,
    /// Epoch of the writer.
    pub epoch: u64,
    /// Blocks in the aggregation.
    pub blocks: u32,
    /// Bytes of block data (writes; zeroed ranges count nothing).
    pub data_bytes: u64,
    /// When it was sealed, ns.
    pub sealed_at: u64,
    /// The sectors its blocks touch.
    pub extents: Extents,
}

impl IndexEntry {
    /// The entry of an aggregation of `blocks` (non-empty, in order) at `height`.
    pub fn of(height: u64, key: Key, prev: Key, epoch: u64, sealed_at: u64, blocks: &[Block]) -> IndexEntry {
        let (first, last) = (blocks.first(), blocks.last());
        IndexEntry {
            height,
            key,
            prev,
            first_sequence: first.map(|b| b.sequence).unwrap_or(0),
            last_sequence: last.map(|b| b.sequence).unwrap_or(0),
            first_timestamp: first.map(|b| b.timestamp).unwrap_or(0),
            last_timestamp: last.map(|b| b.timestamp).unwrap_or(0),
            epoch,
            blocks: blocks.len() as u32,
            data_bytes: blocks.iter().map(|b| b.data.len() as u64).sum(),
            sealed_at,
            extents: Extents::of(blocks),
        }
    }

    /// Appends the entry's encoding without its MAC (the body of an entry record, and what a
    /// page and the read connection carry per entry).
    pub fn body(&self, out: &mut Vec<u8>) {
        out.push(2);
        for v in [self.height, self.first_sequence, self.last_sequence, self.first_timestamp, self.last_timestamp, self.epoch, self.data_bytes, self.sealed_at]
        {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(&self.blocks.to_le_bytes());
        out.extend_from_slice(&self.key);
        out.extend_from_slice(&self.prev);
        self.extents.put(out);
    }

    /// Parses one entry body (version 1 or 2); `None` when it does not parse.
    pub fn parse(r: &mut Reader<'_>) -> Option<IndexEntry> {
        let version = r.u8()?;
        if version != 1 && version != 2 {
            return None;
        }
        let mut v = [0u64; 8];
        for x in v.iter_mut() {
            *x = r.u64()?;
        }
        Some(IndexEntry {
            height: v[0],
            first_sequence: v[1],
            last_sequence: v[2],
            first_timestamp: v[3],
            last_timestamp: v[4],
            epoch: v[5],
            data_bytes: v[6],
            sealed_at: v[7],
            blocks: r.u32()?,
            key: r.array()?,
            prev: r.array()?,
            extents: if version == 2 { Extents::parse(r)? } else { Extents::UNKNOWN },
        })
    }
}

/// The name of the index entry of the aggregation at `height`.
pub fn entry_name(height: u64) -> String {
    format!("i/{height:020}")
}

/// The name of index page `page`.
pub fn page_name(page: u64) -> String {
    format!("p/{page:020}")
}

/// The page that holds the entry at `height` (heights 1..=1024 are page 0).
pub fn page_of(height: u64) -> u64 {
    height.saturating_sub(1) / PAGE
}

/// Encodes and checks index records with the vdisk's MAC key.
#[derive(Clone)]
pub struct IndexCodec {
    mac_key: [u8; 32],
}

impl std::fmt::Debug for IndexCodec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("IndexCodec")
    }
}

impl IndexCodec {
    /// A codec for records sealed under `key`.
    pub fn new(key: &SealKey) -> IndexCodec {
        IndexCodec { mac_key: key.derive("tlog 2026 index mac v1") }
    }

    fn mac(&self, vdisk: &str, bytes: &[u8]) -> [u8; MAC] {
        let mut h = blake3::Hasher::new_keyed(&self.mac_key);
        let mut v = Vec::new();
        put_str16(&mut v, vdisk);
        h.update(&v);
        h.update(bytes);
        let mut m = [0u8; MAC];
        m.copy_from_slice(&h.finalize().as_bytes()[..MAC]);
        m
    }

    /// Appends the MAC of `body` (a record of `vdisk`) to it.
    pub(crate) fn sign_record(&self, vdisk: &str, body: Vec<u8>) -> Vec<u8> {
        self.sign(vdisk, body)
    }

    /// Checks the MAC of a record of `vdisk`; returns the bytes before it.
    pub(crate) fn verify_record<'a>(&self, vdisk: &str, b: &'a [u8], what: &str) -> Result<&'a [u8]> {
        self.verify(vdisk, b, what)
    }

    fn sign(&self, vdisk: &str, mut body: Vec<u8>) -> Vec<u8> {
        let m = self.mac(vdisk, &body);
        body.extend_from_slice(&m);
        body
    }

    fn verify<'a>(&self, vdisk: &str, b: &'a [u8], what: &str) -> Result<&'a [u8]> {
        let bad = |d: &str| Error::Corrupt { location: format!("{what} of vdisk {vdisk}"), detail: d.into() };
        if b.len() < MAC {
            return Err(bad("shorter than its MAC"));
        }
        let (body, mac) = b.split_at(b.len() - MAC);
        // blake3::Hash equality is constant-time; compare through it.
        let want = self.mac(vdisk, body);
        let mut a = [0u8; 32];
        let mut c = [0u8; 32];
        a[..MAC].copy_from_slice(&want);
        c[..MAC].copy_from_slice(mac);
        if blake3::Hash::from(a) != blake3::Hash::from(c) {
            return Err(bad("MAC mismatch (another vdisk's or key's record, or damaged)"));
        }
        Ok(body)
    }

    /// An entry record.
    pub fn encode_entry(&self, vdisk: &str, e: &IndexEntry) -> Vec<u8> {
        let mut b = Vec::with_capacity(ENTRY_BODY + 1 + 16 * EXTENTS + MAC);
        e.body(&mut b);
        self.sign(vdisk, b)
    }

    /// Decodes an entry record. Errors: [`Error::Corrupt`] on a bad MAC, length or version.
    pub fn decode_entry(&self, vdisk: &str, b: &[u8]) -> Result<IndexEntry> {
        let body = self.verify(vdisk, b, "index entry")?;
        let mut r = Reader::new(body);
        let e = IndexEntry::parse(&mut r).filter(|_| r.remaining() == 0);
        e.ok_or_else(|| Error::Corrupt { location: format!("index entry of vdisk {vdisk}"), detail: "unknown version or wrong length".into() })
    }

    /// A page record of `entries` (those of page `page`, in order).
    pub fn encode_page(&self, vdisk: &str, page: u64, entries: &[IndexEntry]) -> Vec<u8> {
        let mut b = Vec::with_capacity(13 + entries.len() * (ENTRY_BODY + 17) + MAC);
        b.push(1);
        b.extend_from_slice(&page.to_le_bytes());
        b.extend_from_slice(&(entries.len() as u32).to_le_bytes());
        for e in entries {
            e.body(&mut b);
        }
        self.sign(vdisk, b)
    }

    /// Decodes a page record. Errors: [`Error::Corrupt`] on a bad MAC or framing.
    pub fn decode_page(&self, vdisk: &str, b: &[u8]) -> Result<Vec<IndexEntry>> {
        let bad = |d: &str| Error::Corrupt { location: format!("index page of vdisk {vdisk}"), detail: d.into() };
        let body = self.verify(vdisk, b, "index page")?;
        let mut r = Reader::new(body);
        if r.u8() != Some(1) {
            return Err(bad("unknown version"));
        }
        let _page = r.u64().ok_or_else(|| bad("truncated"))?;
        let n = r.u32().ok_or_else(|| bad("truncated"))? as usize;
        if n > r.remaining() / ENTRY_BODY {
            return Err(bad("count larger than the record"));
        }
        let v: Option<Vec<IndexEntry>> = (0..n).map(|_| IndexEntry::parse(&mut r)).collect();
        v.filter(|_| r.remaining() == 0).ok_or_else(|| bad("entry framing"))
    }
}

/// The index of a vdisk: its chain's entries, oldest first, contiguous from the first
/// aggregation to the head.
#[derive(Clone, Debug, Default)]
pub struct Index {
    /// The vdisk.
    pub vdisk: String,
    /// Entries in chain order.
    pub entries: Vec<IndexEntry>,
    /// Heights whose entry had to be rebuilt from the chain (missing on every backend).
    pub rebuilt: Vec<u64>,
}

/// The index records every reachable backend holds for `vdisk`, by height (a height may have
/// candidates from several writers); unreadable records are skipped (logged).
pub fn collect(backends: &[Arc<dyn Backend>], codec: &IndexCodec, vdisk: &str) -> HashMap<u64, Vec<IndexEntry>> {
    let lists: Vec<Vec<(String, Vec<u8>)>> = std::thread::scope(|s| {
        let hs: Vec<_> = backends
            .iter()
            .map(|b| {
                s.spawn(move || {
                    let mut all = Vec::new();
                    for prefix in ["p/", "i/"] {
                        match b.list_meta(vdisk, prefix) {
                            Ok(v) => all.extend(v),
                            Err(e) => tracing::debug!("{}: index of {vdisk}: {e}", b.name()),
                        }
                    }
                    all
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap_or_default()).collect()
    });
    let mut by_height: HashMap<u64, Vec<IndexEntry>> = HashMap::new();
    for (name, bytes) in lists.into_iter().flatten() {
        let decoded = if name.starts_with("p/") { codec.decode_page(vdisk, &bytes) } else { codec.decode_entry(vdisk, &bytes).map(|e| vec![e]) };
        match decoded {
            Ok(es) => {
                for e in es {
                    let v = by_height.entry(e.height).or_default();
                    if !v.contains(&e) {
                        v.push(e);
                    }
                }
            }
            Err(err) => tracing::warn!(vdisk, record = %name, "index record skipped: {err}"),
        }
    }
    by_height
}

/// The chain's index entry at `height`, read from at most two backends: the entry record, else
/// its page. Of several entries at one height (aggregations of a writer fenced meanwhile) the
/// one of the newest epoch is the chain's: a new epoch continues from the durable head, above
/// which the fenced writer's aggregations were discarded. `None` when neither holds it.
fn entry_at(backends: &[Arc<dyn Backend>], codec: &IndexCodec, vdisk: &str, height: u64) -> Option<IndexEntry> {
    let mut best: Option<IndexEntry> = None;
    let consider = |best: &mut Option<IndexEntry>, e: IndexEntry| {
        if e.height == height && best.map(|b| e.epoch > b.epoch).unwrap_or(true) {
            *best = Some(e);
        }
    };
    for b in backends.iter().take(2) {
        if let Ok(Some(v)) = b.get_meta(vdisk, &entry_name(height)) {
            if let Ok(e) = codec.decode_entry(vdisk, &v) {
                consider(&mut best, e);
            }
        }
    }
    if best.is_none() {
        for b in backends.iter().take(2) {
            if let Ok(Some(v)) = b.get_meta(vdisk, &page_name(page_of(height))) {
                for e in codec.decode_page(vdisk, &v).unwrap_or_default() {
                    consider(&mut best, e);
                }
            }
        }
    }
    best
}

/// The chain's entry holding `sequence`, by binary search over the heights above the base
/// (`above`) up to the head's: O(log n) record reads instead of loading the whole index.
/// `None` when an entry is missing, the sequence is not in that range, or the entries do not
/// line up (the caller then loads the index whole, which rebuilds and checks it).
pub fn find_at(backends: &[Arc<dyn Backend>], codec: &IndexCodec, vdisk: &str, head: &HeadRecord, above: u64, sequence: u64) -> Option<IndexEntry> {
    if sequence < head.first_sequence && head.height > above + 1 {
        let (mut lo, mut hi) = (above + 1, head.height - 1);
        let mut steps = 0;
        while lo <= hi && steps < 128 {
            steps += 1;
            let mid = lo + (hi - lo) / 2;
            let e = entry_at(backends, codec, vdisk, mid)?;
            if sequence < e.first_sequence {
                hi = mid.checked_sub(1)?;
            } else if sequence > e.last_sequence {
                lo = mid + 1;
            } else {
                // Its successor must name it: the entry is on the chain.
                let succ = if mid + 1 == head.height {
                    entry_at(backends, codec, vdisk, mid + 1).filter(|n| n.key == head.key)
                } else {
                    entry_at(backends, codec, vdisk, mid + 1)
                };
                return succ.filter(|n| n.prev == e.key).map(|_| e);
            }
        }
        None
    } else if sequence >= head.first_sequence && sequence <= head.last_sequence {
        entry_at(backends, codec, vdisk, head.height).filter(|e| e.key == head.key)
    } else {
        None
    }
}

/// Rebuilds the entry of the aggregation `key` at `height` from the chain (fetch, unseal).
pub fn rebuild_entry(backends: &[Arc<dyn Backend>], sealer: &Sealer, vdisk: &str, key: &Key, height: u64) -> Result<IndexEntry> {
    let agg = crate::seal::fetch_aggregation(backends, sealer, key)?;
    if agg.vdisk_id != vdisk {
        return Err(Error::ChainBroken { key: hex::encode(key), detail: format!("aggregation belongs to vdisk {}", agg.vdisk_id) });
    }
    Ok(IndexEntry::of(height, *key, agg.prev, agg.epoch, agg.timestamp, &agg.blocks))
}

impl Index {
    /// The index of `vdisk` up to `head` (from [`crate::seal::find_head`]), from the backends'
    /// records, rebuilding missing entries from the chain.
    ///
    /// Errors: the chain cannot be followed (an aggregation that is neither indexed nor
    /// rebuildable, a wrong link), or more than m backends are unreachable for a rebuild.
    pub fn load(backends: &[Arc<dyn Backend>], sealer: &Sealer, codec: &IndexCodec, vdisk: &str, head: &HeadRecord) -> Result<Index> {
        // Two backends first (every record went to at least write_quorum of them); the others
        // only when an entry is missing there.
        let first = backends.len().min(2);
        let mut by_height = collect(&backends[..first], codec, vdisk);
        let mut all_read = first == backends.len();
        let base = super::retention::base_of(backends, codec, vdisk);
        let stop = base.as_ref().map(|b| b.covers).unwrap_or(0);
        let mut entries = Vec::with_capacity(head.height.saturating_sub(stop) as usize);
        let mut rebuilt = Vec::new();
        let (mut h, mut key) = (head.height, head.key);
        while h > stop {
            let mut found = by_height.get_mut(&h).and_then(|v| v.iter().position(|e| e.key == key).map(|i| v.swap_remove(i)));
            if found.is_none() && !all_read {
                for (height, es) in collect(&backends[first..], codec, vdisk) {
                    let v = by_height.entry(height).or_default();
                    for e in es {
                        if !v.contains(&e) {
                            v.push(e);
                        }
                    }
                }
                all_read = true;
                found = by_height.get_mut(&h).and_then(|v| v.iter().position(|e| e.key == key).map(|i| v.swap_remove(i)));
            }
            let e = match found {
                Some(e) => e,
                None => {
                    rebuilt.push(h);
                    rebuild_entry(backends, sealer, vdisk, &key, h)?
                }
            };
            if h == 1 && stop == 0 && e.prev != [0u8; 32] {
                return Err(Error::ChainBroken { key: hex::encode(key), detail: "the first aggregation names a predecessor".into() });
            }
            key = e.prev;
            entries.push(e);
            h -= 1;
        }
        match &base {
            Some(b) if key != b.chain_prev => {
                return Err(Error::ChainBroken {
                    key: hex::encode(key),
                    detail: format!("the chain does not reach its base (folded up to height {})", b.covers),
                })
            }
            None if key != [0u8; 32] => {
                return Err(Error::ChainBroken { key: hex::encode(key), detail: format!("chain longer than the head's height {}", head.height) })
            }
            _ => {}
        }
        entries.reverse();
        rebuilt.reverse();
        if let Some(b) = &base {
            let mut all = b.entries();
            all.extend(entries);
            entries = all;
        }
        if !rebuilt.is_empty() {
            tracing::info!(vdisk, "index: {} of {} entries rebuilt from the chain", rebuilt.len(), entries.len());
        }
        Ok(Index { vdisk: vdisk.to_string(), entries, rebuilt })
    }

    /// Position of the aggregation holding `sequence` (binary search).
    pub fn find_sequence(&self, sequence: u64) -> Option<usize> {
        let i = self.entries.partition_point(|e| e.last_sequence < sequence);
        self.entries.get(i).filter(|e| e.first_sequence <= sequence).map(|_| i)
    }

    /// Position of the first aggregation holding a block stamped after `t` (ns), or the number
    /// of entries when none is (binary search on the monotone last timestamps).
    pub fn first_after_time(&self, t: u64) -> usize {
        self.entries.partition_point(|e| e.last_timestamp <= t)
    }

    /// The first and last sequence of the history, if any.
    pub fn sequences(&self) -> Option<(u64, u64)> {
        Some((self.entries.first()?.first_sequence, self.entries.last()?.last_sequence))
    }

    /// The first and last block timestamps, if any.
    pub fn times(&self) -> Option<(u64, u64)> {
        Some((self.entries.first()?.first_timestamp, self.entries.last()?.last_timestamp))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(h: u64) -> IndexEntry {
        IndexEntry {
            height: h,
            key: [h as u8; 32],
            prev: [(h - 1) as u8; 32],
            first_sequence: h * 10,
            last_sequence: h * 10 + 9,
            first_timestamp: h * 100,
            last_timestamp: h * 100 + 50,
            epoch: 1,
            blocks: 10,
            data_bytes: 40960,
            sealed_at: h * 100 + 60,
            extents: Extents::from_runs(&mut [(h * 8, h * 8 + 8)]),
        }
    }

    #[test]
    fn extents_merge_and_coarsen_to_a_superset() {
        let b = |lba: u64, size: u64| Block::new(0, lba, crate::wire::Operation::WriteZeroes, Vec::new(), size, 0);
        let x = Extents::of(&[b(8, 4096), b(0, 4096), b(16, 1000), b(100, 512)]);
        assert_eq!(x.spans(), &[(0, 18), (100, 101)]);
        assert!(x.may_hold(17, 18) && !x.may_hold(18, 100) && x.may_hold(99, 101));
        // 20 runs with gaps 1..=19 sectors wide: the 7 widest gaps stay open.
        let mut runs: Vec<(u64, u64)> = Vec::new();
        let mut p = 0;
        for g in 1..=20u64 {
            runs.push((p, p + 1));
            p += 1 + g;
        }
        let c = Extents::from_runs(&mut runs.clone());
        assert_eq!(c.spans().len(), EXTENTS);
        for (s, e) in &runs {
            assert!(c.may_hold(*s, *e), "run {s}..{e} lost");
        }
        assert!(!c.may_hold(runs[19].0 - 19, runs[19].0), "the widest gap stays open");
        assert!(Extents::UNKNOWN.may_hold(5, 6) && Extents::UNKNOWN.is_unknown());
        let codec = IndexCodec::new(&SealKey::from_bytes([1; 32]));
        let mut en = e(3);
        en.extents = c;
        assert_eq!(codec.decode_entry("vd", &codec.encode_entry("vd", &en)).unwrap().extents, c);
    }

    #[test]
    fn version_1_entries_read_as_unknown_extents() {
        let codec = IndexCodec::new(&SealKey::from_bytes([1; 32]));
        let mut body = Vec::new();
        e(3).body(&mut body);
        body[0] = 1;
        body.truncate(ENTRY_BODY);
        let rec = codec.sign("vd", body);
        let got = codec.decode_entry("vd", &rec).unwrap();
        assert!(got.extents.is_unknown());
        assert_eq!(got.height, 3);
    }

    #[test]
    fn records_round_trip_and_fail_for_another_vdisk_or_key() {
        let c = IndexCodec::new(&SealKey::from_bytes([1; 32]));
        let b = c.encode_entry("vd", &e(3));
        assert_eq!(b.len(), ENTRY_BODY + 1 + 16 + MAC);
        assert_eq!(c.decode_entry("vd", &b).unwrap(), e(3));
        assert!(c.decode_entry("other", &b).is_err());
        assert!(IndexCodec::new(&SealKey::from_bytes([2; 32])).decode_entry("vd", &b).is_err());
        let mut t = b.clone();
        t[20] ^= 1;
        assert!(c.decode_entry("vd", &t).is_err());
        let page: Vec<IndexEntry> = (1..=5).map(e).collect();
        let p = c.encode_page("vd", 0, &page);
        assert_eq!(c.decode_page("vd", &p).unwrap(), page);
        assert!(c.decode_page("vd", &p[..p.len() - 1]).is_err());
        assert_eq!((entry_name(42), page_name(3), page_of(1024), page_of(1025)), ("i/00000000000000000042".into(), "p/00000000000000000003".into(), 0, 1));
    }

    #[test]
    fn lookups_by_sequence_and_time() {
        let idx = Index { vdisk: "vd".into(), entries: (1..=100).map(e).collect(), rebuilt: vec![] };
        assert_eq!(idx.find_sequence(35), Some(2));
        assert_eq!(idx.find_sequence(10), Some(0));
        assert_eq!(idx.find_sequence(9), None);
        assert_eq!(idx.find_sequence(10_000), None);
        assert_eq!(idx.first_after_time(349), 2, "entry 3 (ts 300..350) holds blocks after 349");
        assert_eq!(idx.first_after_time(350), 3);
        assert_eq!(idx.first_after_time(1_000_000), 100);
        assert_eq!((idx.sequences(), idx.times()), (Some((10, 1009)), Some((100, 10050))));
    }
}
