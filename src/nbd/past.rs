//! A vdisk as of a past point, read straight from the log (DESIGN.md §13: exports of a past
//! point without a full restore first).
//!
//! The block map comes from the index: every entry carries the sectors its aggregation touches
//! ([`crate::history::index::Extents`], a superset). A read of `[offset, offset + len)` takes the
//! aggregations whose extents may hold it, newest first, fetches each (through tlogd's read
//! connection, [`LogReader`]) and fills the bytes it still lacks from that aggregation's blocks,
//! newest block first, until nothing is lacking or the aggregations run out (never-written
//! bytes read as zeros). Fetched aggregations are kept in a cache bounded in bytes, the least
//! recently used evicted first.
//!
//! To find candidates without scanning the whole index, spans are bucketed by zones of
//! [`ZONE_SECTORS`]; spans wider than [`WIDE_ZONES`] zones (and unknown extents) are kept in one
//! list that every read checks.

use crate::client::remote::LogReader;
use crate::error::Result;
use crate::history::index::IndexEntry;
use crate::wire::{Block, Operation, SECTOR};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Sectors per zone of the candidate buckets (64 MiB).
pub const ZONE_SECTORS: u64 = 1 << 17;
/// Spans over more zones than this are checked by every read instead of being bucketed.
pub const WIDE_ZONES: u64 = 64;

/// Fetched aggregations, bounded in bytes of block data.
struct Cache {
    map: HashMap<u32, (Arc<Vec<Block>>, u64)>,
    bytes: u64,
    limit: u64,
    tick: u64,
}

impl Cache {
    fn get(&mut self, i: u32) -> Option<Arc<Vec<Block>>> {
        self.tick += 1;
        let t = self.tick;
        self.map.get_mut(&i).map(|(b, used)| {
            *used = t;
            b.clone()
        })
    }

    fn put(&mut self, i: u32, blocks: Arc<Vec<Block>>) {
        let size: u64 = blocks.iter().map(|b| b.data.len() as u64 + 64).sum();
        self.tick += 1;
        if self.map.insert(i, (blocks, self.tick)).is_none() {
            self.bytes += size;
        }
        while self.bytes > self.limit && self.map.len() > 1 {
            let Some((&old, _)) = self.map.iter().filter(|(k, _)| **k != i).min_by_key(|(_, (_, used))| *used) else { break };
            if let Some((b, _)) = self.map.remove(&old) {
                self.bytes -= b.iter().map(|b| b.data.len() as u64 + 64).sum::<u64>();
            }
        }
    }
}

/// Where a past export's aggregations come from: tlogd's read connection ([`LogReader`]).
pub trait Source: Send {
    /// The blocks of the aggregation at position `i` of the index, up to the point, in order.
    fn fetch(&mut self, i: u32) -> Result<Vec<Block>>;
}

impl Source for LogReader {
    fn fetch(&mut self, i: u32) -> Result<Vec<Block>> {
        LogReader::fetch(self, i)
    }
}

/// What a past export did so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PastStats {
    /// Aggregations fetched from tlogd (cache misses).
    pub fetched: u64,
    /// Reads answered from the cache only.
    pub cache_hits: u64,
}

/// A vdisk as of a point, read from the log on demand.
pub struct Past {
    reader: Mutex<Box<dyn Source>>,
    entries: Vec<IndexEntry>,
    zones: HashMap<u64, Vec<u32>>,
    wide: Vec<u32>,
    cache: Mutex<Cache>,
    stats: Mutex<PastStats>,
}

impl Past {
    /// Serves what `reader` holds, caching at most `cache_bytes` of fetched block data.
    pub fn new(reader: LogReader, cache_bytes: u64) -> Past {
        let entries = reader.entries.clone();
        Self::with_source(entries, Box::new(reader), cache_bytes)
    }

    /// Serves the aggregations of `entries` (the index up to the point) from `source`.
    pub fn with_source(entries: Vec<IndexEntry>, source: Box<dyn Source>, cache_bytes: u64) -> Past {
        let mut zones: HashMap<u64, Vec<u32>> = HashMap::new();
        let mut wide = Vec::new();
        for (i, e) in entries.iter().enumerate() {
            let i = i as u32;
            if e.extents.is_unknown() {
                wide.push(i);
                continue;
            }
            for &(s, t) in e.extents.spans() {
                let (z0, z1) = (s / ZONE_SECTORS, (t - 1) / ZONE_SECTORS);
                if z1 - z0 >= WIDE_ZONES {
                    if wide.last() != Some(&i) {
                        wide.push(i);
                    }
                    continue;
                }
                for z in z0..=z1 {
                    let v = zones.entry(z).or_default();
                    if v.last() != Some(&i) {
                        v.push(i);
                    }
                }
            }
        }
        Past {
            reader: Mutex::new(source),
            entries,
            zones,
            wide,
            cache: Mutex::new(Cache { map: HashMap::new(), bytes: 0, limit: cache_bytes, tick: 0 }),
            stats: Mutex::new(PastStats::default()),
        }
    }

    /// The index entries served.
    pub fn entries(&self) -> &[IndexEntry] {
        &self.entries
    }

    /// Bytes the image at the point spans: the end of the last sector any block touches
    /// (`None` when an entry's extents are unknown, written by an older tlog).
    pub fn extent_bytes(&self) -> Option<u64> {
        let mut end = 0u64;
        for e in &self.entries {
            if e.extents.is_unknown() {
                return None;
            }
            end = end.max(e.extents.spans().last().map(|s| s.1).unwrap_or(0));
        }
        end.checked_mul(SECTOR)
    }

    /// Counts so far.
    pub fn stats(&self) -> PastStats {
        *self.stats.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Positions whose extents may hold sectors `[s, e)`, newest first.
    fn candidates(&self, s: u64, e: u64) -> Vec<u32> {
        let mut c: Vec<u32> = self.wide.clone();
        for z in s / ZONE_SECTORS..=(e.saturating_sub(1)) / ZONE_SECTORS {
            if let Some(v) = self.zones.get(&z) {
                c.extend_from_slice(v);
            }
        }
        c.retain(|&i| self.entries[i as usize].extents.may_hold(s, e));
        c.sort_unstable_by(|a, b| b.cmp(a));
        c.dedup();
        c
    }

    fn aggregation(&self, i: u32) -> Result<Arc<Vec<Block>>> {
        if let Some(b) = self.cache.lock().unwrap_or_else(|p| p.into_inner()).get(i) {
            return Ok(b);
        }
        let blocks = Arc::new(self.reader.lock().unwrap_or_else(|p| p.into_inner()).fetch(i)?);
        self.stats.lock().unwrap_or_else(|p| p.into_inner()).fetched += 1;
        self.cache.lock().unwrap_or_else(|p| p.into_inner()).put(i, blocks.clone());
        Ok(blocks)
    }

    /// Reads `buf.len()` bytes at byte `offset` as of the point. Errors: a fetch that failed
    /// (tlogd unreachable twice, or its error).
    pub fn read(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let end = offset + buf.len() as u64;
        let mut lacking: Vec<(u64, u64)> = vec![(offset, end)];
        let before = self.stats().fetched;
        for i in self.candidates(offset / SECTOR, end.div_ceil(SECTOR)) {
            if lacking.is_empty() {
                break;
            }
            let ext = &self.entries[i as usize].extents;
            if !lacking.iter().any(|&(s, t)| ext.may_hold(s / SECTOR, t.div_ceil(SECTOR))) {
                continue;
            }
            let blocks = self.aggregation(i)?;
            for b in blocks.iter().rev() {
                if lacking.is_empty() {
                    break;
                }
                let Some(bs) = b.lba.checked_mul(SECTOR) else { continue };
                let Some(be) = bs.checked_add(b.size) else { continue };
                let op = Operation::from_ordinal(b.operation);
                if op.is_none() || be <= offset || bs >= end {
                    continue;
                }
                let mut next = Vec::with_capacity(lacking.len() + 1);
                for &(s, t) in &lacking {
                    let (a, z) = (s.max(bs), t.min(be));
                    if a >= z {
                        next.push((s, t));
                        continue;
                    }
                    let dst = &mut buf[(a - offset) as usize..(z - offset) as usize];
                    match op {
                        Some(Operation::Write) if b.data.len() as u64 >= be - bs => dst.copy_from_slice(&b.data[(a - bs) as usize..(z - bs) as usize]),
                        _ => dst.fill(0),
                    }
                    if s < a {
                        next.push((s, a));
                    }
                    if z < t {
                        next.push((z, t));
                    }
                }
                lacking = next;
            }
        }
        for (s, t) in lacking {
            buf[(s - offset) as usize..(t - offset) as usize].fill(0);
        }
        if self.stats().fetched == before {
            self.stats.lock().unwrap_or_else(|p| p.into_inner()).cache_hits += 1;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    struct Fixed(Vec<Vec<Block>>, Arc<Mutex<u64>>);

    impl Source for Fixed {
        fn fetch(&mut self, i: u32) -> Result<Vec<Block>> {
            *self.1.lock().unwrap() += 1;
            Ok(self.0[i as usize].clone())
        }
    }

    /// Aggregations of blocks (sector, sectors, zero?, fill byte), applied in order to a model.
    fn check(aggs: Vec<Vec<(u64, u64, bool, u8)>>, reads: Vec<(u64, u64)>, cache: u64) {
        const DISK: u64 = 256; // sectors
        let mut model = vec![0u8; (DISK * SECTOR) as usize];
        let mut seq = 0;
        let mut all = Vec::new();
        let mut entries = Vec::new();
        for (h, a) in aggs.iter().enumerate() {
            let mut blocks = Vec::new();
            for &(s, n, zero, fill) in a {
                seq += 1;
                let (s, n) = (s % DISK, n.clamp(1, 16));
                let n = n.min(DISK - s);
                let (start, end) = ((s * SECTOR) as usize, ((s + n) * SECTOR) as usize);
                let b = if zero {
                    model[start..end].fill(0);
                    Block::new(seq, s, Operation::WriteZeroes, Vec::new(), n * SECTOR, seq)
                } else {
                    let data: Vec<u8> = (0..end - start).map(|i| fill.wrapping_add((i / 512) as u8)).collect();
                    model[start..end].copy_from_slice(&data);
                    Block::new(seq, s, Operation::Write, data, n * SECTOR, seq)
                };
                blocks.push(b);
            }
            if blocks.is_empty() {
                continue;
            }
            entries.push(IndexEntry::of(h as u64 + 1, [h as u8; 32], [0; 32], 1, 0, &blocks));
            all.push(blocks);
        }
        let fetched = Arc::new(Mutex::new(0));
        let p = Past::with_source(entries, Box::new(Fixed(all, fetched.clone())), cache);
        for (off, len) in reads {
            let (off, len) = (off % DISK, len.clamp(1, 64));
            let len = len.min(DISK - off);
            let mut buf = vec![0xeeu8; (len * SECTOR) as usize];
            p.read(&mut buf, off * SECTOR).unwrap();
            let want = &model[(off * SECTOR) as usize..((off + len) * SECTOR) as usize];
            assert!(buf == want, "read of {len} sectors at {off} differs from the model");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn reads_match_the_blocks_applied_in_order(
            aggs in proptest::collection::vec(proptest::collection::vec((0u64..256, 1u64..17, any::<bool>(), any::<u8>()), 0..24), 1..12),
            reads in proptest::collection::vec((0u64..256, 1u64..65), 1..16),
            cache in prop_oneof![Just(0u64), Just(1u64 << 30)],
        ) {
            check(aggs, reads, cache);
        }
    }

    #[test]
    fn newer_blocks_win_inside_an_aggregation_and_across_them() {
        // One aggregation writes sector 0 twice (the second wins), the next zeroes half of it.
        check(vec![vec![(0, 2, false, 1), (0, 2, false, 9)], vec![(1, 1, true, 0)]], vec![(0, 4)], 1 << 20);
    }

    #[test]
    fn untouched_sectors_are_not_fetched() {
        let b = |seq: u64, lba: u64| Block::new(seq, lba, Operation::Write, vec![seq as u8; 512], 512, seq);
        let entries = vec![IndexEntry::of(1, [1; 32], [0; 32], 1, 0, &[b(1, 0)]), IndexEntry::of(2, [2; 32], [1; 32], 1, 0, &[b(2, 1 << 20)])];
        let fetched = Arc::new(Mutex::new(0));
        let p = Past::with_source(entries, Box::new(Fixed(vec![vec![b(1, 0)], vec![b(2, 1 << 20)]], fetched.clone())), 1 << 20);
        let mut buf = vec![0u8; 4096];
        p.read(&mut buf, 8 << 20).unwrap();
        assert!(buf.iter().all(|x| *x == 0));
        assert_eq!(*fetched.lock().unwrap(), 0, "nothing holds those sectors");
        p.read(&mut buf[..512], 0).unwrap();
        assert_eq!((buf[0], *fetched.lock().unwrap()), (1, 1));
        p.read(&mut buf[..512], 0).unwrap();
        assert_eq!(*fetched.lock().unwrap(), 1, "the second read is cached");
        assert_eq!(p.extent_bytes(), Some(((1 << 20) + 1) * 512));
    }
}
