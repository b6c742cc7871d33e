//! Metadata index of a vdisk (DESIGN.md §7, after the TLOG server's metadata store): an
//! array-like map from a sequential integer (the aggregation's height − 1) to {first/last
//! sequence, timestamp, epoch, key}, with `starting_index` (the oldest entry kept) and
//! `current_index` (the newest). Lookups by sequence or time are binary searches between
//! them; the cleaner advances `starting_index` past entries older than a retention age.
//!
//! Persisted as `<data_dir>/vdisks/<vdisk>.index`: 16-byte header (`b"TLOGMIDX"`, version u32,
//! reserved u32), then 76-byte entries: first sequence, last sequence, timestamp, epoch (u64
//! LE each), key (32), CRC-32 of the entry (4), reserved (8). The starting index lives in
//! `<vdisk>.start`. Appends are not fsync'd: the index is rebuilt from the chain when it is
//! short (a crash lost its tail), so the chain stays the source of truth.

use crate::backend::Key;
use crate::error::{IoContext, Result};
use std::io::Write;
use std::path::{Path, PathBuf};

const ENTRY: usize = 76;

/// One aggregation in the index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IndexEntry {
    /// First sequence.
    pub first_sequence: u64,
    /// Last sequence.
    pub last_sequence: u64,
    /// Seal time, ns.
    pub timestamp: u64,
    /// Epoch.
    pub epoch: u64,
    /// Aggregation key.
    pub key: Key,
}

impl IndexEntry {
    fn encode(&self) -> [u8; ENTRY] {
        let mut b = [0u8; ENTRY];
        b[0..8].copy_from_slice(&self.first_sequence.to_le_bytes());
        b[8..16].copy_from_slice(&self.last_sequence.to_le_bytes());
        b[16..24].copy_from_slice(&self.timestamp.to_le_bytes());
        b[24..32].copy_from_slice(&self.epoch.to_le_bytes());
        b[32..64].copy_from_slice(&self.key);
        let c = crc32fast::hash(&b[0..64]);
        b[64..68].copy_from_slice(&c.to_le_bytes());
        b
    }

    fn decode(b: &[u8]) -> Option<IndexEntry> {
        if b.len() < ENTRY || crc32fast::hash(&b[0..64]) != u32::from_le_bytes([b[64], b[65], b[66], b[67]]) {
            return None;
        }
        let u = |p: usize| crate::bytes::le_u64(&b[p..p + 8]);
        let mut key = [0u8; 32];
        key.copy_from_slice(&b[32..64]);
        Some(IndexEntry { first_sequence: u(0), last_sequence: u(8), timestamp: u(16), epoch: u(24), key })
    }
}

/// The index of one vdisk.
pub struct MetaIndex {
    path: PathBuf,
    entries: Vec<IndexEntry>,
    starting_index: u64,
    file: Option<std::fs::File>,
}

impl MetaIndex {
    /// Opens (creating) the index; `chain_height` is the head's height: entries beyond it are
    /// dropped, and an index shorter than it is reported as incomplete (rebuild it with
    /// [`MetaIndex::rebuild`]).
    pub fn open(path: &Path, chain_height: u64) -> Result<MetaIndex> {
        let mut entries = Vec::new();
        if let Ok(b) = std::fs::read(path) {
            if b.len() >= 16 && &b[0..8] == b"TLOGMIDX" {
                for c in b[16..].chunks(ENTRY) {
                    match IndexEntry::decode(c) {
                        Some(e) => entries.push(e),
                        None => break,
                    }
                }
            }
        }
        let start_path = path.with_extension("start");
        let starting_index = std::fs::read_to_string(&start_path).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0);
        let mut idx = MetaIndex { path: path.to_path_buf(), entries, starting_index, file: None };
        if idx.entries.len() as u64 != chain_height {
            if (idx.entries.len() as u64) < chain_height {
                tracing::info!(index = %path.display(), "metadata index holds {} of {chain_height} aggregations; restore walks the chain", idx.entries.len());
            }
            idx.entries.truncate(chain_height as usize);
            idx.rewrite()?;
        }
        Ok(idx)
    }

    fn rewrite(&mut self) -> Result<()> {
        let mut b = Vec::with_capacity(16 + self.entries.len() * ENTRY);
        b.extend_from_slice(b"TLOGMIDX");
        b.extend_from_slice(&1u32.to_le_bytes());
        b.extend_from_slice(&[0; 4]);
        for e in &self.entries {
            b.extend_from_slice(&e.encode());
        }
        crate::fs::write_atomic(&self.path, &b)?;
        self.file = None;
        Ok(())
    }

    /// Replaces the entries (e.g. from a chain walk, oldest first).
    pub fn rebuild(&mut self, entries: Vec<IndexEntry>) -> Result<()> {
        self.entries = entries;
        self.rewrite()
    }

    /// Appends the next aggregation.
    pub fn append(&mut self, e: &IndexEntry) -> Result<()> {
        if self.file.is_none() {
            if !self.path.exists() {
                self.rewrite()?;
            }
            self.file = Some(std::fs::OpenOptions::new().append(true).open(&self.path).ctx(|| format!("open {}", self.path.display()))?);
        }
        if let Some(f) = self.file.as_mut() {
            f.write_all(&e.encode()).ctx(|| format!("append {}", self.path.display()))?;
        }
        self.entries.push(*e);
        Ok(())
    }

    /// Oldest entry kept.
    pub fn starting_index(&self) -> u64 {
        self.starting_index
    }

    /// Newest entry, if any (`None` when empty).
    pub fn current_index(&self) -> Option<u64> {
        (self.entries.len() as u64).checked_sub(1)
    }

    /// Entry `i` (between starting_index and current_index).
    pub fn get(&self, i: u64) -> Option<&IndexEntry> {
        if i < self.starting_index {
            return None;
        }
        self.entries.get(i as usize)
    }

    /// Index of the aggregation holding `sequence` (binary search; sequences grow within one
    /// sequence space).
    pub fn find_sequence(&self, sequence: u64) -> Option<u64> {
        let s = &self.entries[self.starting_index.min(self.entries.len() as u64) as usize..];
        let i = s.partition_point(|e| e.last_sequence < sequence);
        s.get(i).filter(|e| e.first_sequence <= sequence).map(|_| self.starting_index + i as u64)
    }

    /// Index of the first aggregation sealed at or after `ts` (ns).
    pub fn find_time(&self, ts: u64) -> Option<u64> {
        let s = &self.entries[self.starting_index.min(self.entries.len() as u64) as usize..];
        let i = s.partition_point(|e| e.timestamp < ts);
        (i < s.len()).then_some(self.starting_index + i as u64)
    }

    /// The cleaner: advances starting_index past entries sealed before `older_than` (ns);
    /// returns how many entries it passed.
    pub fn clean(&mut self, older_than: u64) -> Result<u64> {
        let before = self.starting_index;
        while (self.starting_index as usize) < self.entries.len().saturating_sub(1) && self.entries[self.starting_index as usize].timestamp < older_than {
            self.starting_index += 1;
        }
        if self.starting_index != before {
            let p = self.path.with_extension("start");
            crate::fs::write_atomic(&p, self.starting_index.to_string().as_bytes())?;
        }
        Ok(self.starting_index - before)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookups_and_cleaner() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("vd.index");
        let mut idx = MetaIndex::open(&p, 0).unwrap();
        for i in 0..10u64 {
            idx.append(&IndexEntry { first_sequence: i * 10 + 1, last_sequence: i * 10 + 10, timestamp: 100 + i, epoch: 1, key: [i as u8; 32] }).unwrap();
        }
        assert_eq!(idx.find_sequence(35), Some(3));
        assert_eq!(idx.find_time(104), Some(4));
        assert_eq!(idx.clean(103).unwrap(), 3);
        assert_eq!(idx.find_sequence(5), None);
        drop(idx);
        let idx = MetaIndex::open(&p, 10).unwrap();
        assert_eq!(idx.starting_index(), 3);
        assert_eq!(idx.current_index(), Some(9));
        let idx = MetaIndex::open(&p, 4).unwrap();
        assert_eq!(idx.current_index(), Some(3));
    }
}
