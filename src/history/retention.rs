//! Retention (DESIGN.md §12, seed 000's metadata cleaner): history older than the window
//! (`[history] retention`, or past `max_bytes` per vdisk) is folded into a *base*, then deleted
//! and its space given back.
//!
//! The base of a vdisk at height H is the newest version of every block its own aggregations
//! 1..=H wrote (and its previous base's), in *chunks*: aggregations sealed and erasure-coded like
//! any other (epoch 0, every block stamped with the sequence S and the timestamp T of the last
//! folded block, so the image a chunk gives is the image at S), listed in the order they apply.
//! Readers start from the base: the virtual index is the base's chunks, then the chain from
//! height H+1, whose first aggregation names the folded one at H as `prev` (the base records that
//! key: the link). Points before S are gone; the error names the oldest (S at T).
//!
//! Metadata records of the vdisk (MAC'd as in [`super::index`]):
//!
//! | name | body |
//! |---|---|
//! | `base` | version u8 (3), covers height u64, chain prev (32), last sequence u64, last timestamp u64, folded at u64, gc pending u8, garbage from height u64, chunks u32 × (key 32, data bytes u64, blocks u32, sequence u64, timestamp u64, extents as in an index entry), garbage chunks u32 × key (32), full bytes u64 (version 2: chunks without extents) |
//! | `fold` | version u8 (1), covers height u64, chunks u32 × key (32): a fold in progress |
//!
//! Steps, each crash-safe: (1) each chunk's shards are written in one batch per backend with the
//! `fold` record naming every chunk so far (a crash leaves chunks the record names: the next run
//! deletes them); (2) the new `base` replaces the old and the `fold` record goes, in one batch
//! per backend (the switch); (3) after a grace of one clean interval (readers that loaded the
//! index before the switch finish), the folded aggregations, their index records and the old
//! base's chunks are deleted (idempotent, redone until the base says done); (4) each backend
//! gives the space back ([`crate::backend::Backend::reclaim`]). The newest aggregation is never
//! folded (the head names it), nor anything a fork stands on (its cut's aggregation and later).

use super::index::{page_name, page_of, Extents, Index, IndexCodec, IndexEntry, PAGE};
use super::tree::write_all;
use crate::backend::{Backend, Batch, Key, MetaWrite, ShardWrite};
use crate::bytes::Reader;
use crate::error::{Error, Result};
use crate::seal::{find_head, Aggregation, SealContext, Sealer};
use crate::wire::{Block, Operation, SECTOR};
use std::collections::BTreeMap;
use std::sync::Arc;

/// A fold appends chunks to the base while it then holds at most this many times the data of
/// its last full rewrite (so a restore reads at most about this much more than the image);
/// past it the base is rewritten whole.
pub const APPEND_FACTOR: f64 = 1.25;

/// Name of the base record.
pub const BASE: &str = "base";
/// Name of the record of a fold in progress.
pub const FOLD: &str = "fold";

/// One chunk of a base.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Chunk {
    /// The chunk's aggregation key.
    pub key: Key,
    /// Bytes of block data.
    pub data_bytes: u64,
    /// Blocks.
    pub blocks: u32,
    /// The sequence its blocks are stamped with: the last folded block of the fold that wrote
    /// it.
    pub sequence: u64,
    /// Their timestamp, ns.
    pub timestamp: u64,
    /// The sectors its blocks touch (unknown in a base written before they were recorded).
    pub extents: Extents,
}

/// A vdisk's base.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Base {
    /// The chain height folded into it (1..=covers).
    pub covers: u64,
    /// The key of the folded aggregation at `covers` (aggregation covers+1 names it as prev).
    pub chain_prev: Key,
    /// Sequence of the last folded block: the oldest restorable point.
    pub last_sequence: u64,
    /// Its timestamp, ns.
    pub last_timestamp: u64,
    /// When the fold was made, ns.
    pub folded_at: u64,
    /// The chunks, in the order they apply.
    pub chunks: Vec<Chunk>,
    /// Deletion of what the last fold replaced is still to do.
    pub gc_pending: bool,
    /// First chain height the last fold folded (`covers` of the base before it, plus 1).
    pub garbage_from: u64,
    /// The chunks of the base before it.
    pub garbage_chunks: Vec<Key>,
    /// Data bytes of the chunks right after the last full rewrite: a fold only appends chunks
    /// of what it folds while the chunks then hold at most [`APPEND_FACTOR`] times this (older
    /// chunks are applied first, so newer ones win); past it, it rewrites the base whole.
    pub full_bytes: u64,
}

impl Base {
    /// The virtual index entries of the chunks, in the order they apply.
    pub fn entries(&self) -> Vec<IndexEntry> {
        self.chunks
            .iter()
            .map(|c| IndexEntry {
                height: 0,
                key: c.key,
                prev: [0u8; 32],
                first_sequence: c.sequence,
                last_sequence: c.sequence,
                first_timestamp: c.timestamp,
                last_timestamp: c.timestamp,
                epoch: 0,
                blocks: c.blocks,
                data_bytes: c.data_bytes,
                sealed_at: self.folded_at,
                extents: c.extents,
            })
            .collect()
    }
}

fn bad(what: &str, vdisk: &str) -> Error {
    Error::Corrupt { location: format!("{what} record of vdisk {vdisk}"), detail: "unknown version or framing".into() }
}

impl IndexCodec {
    /// A base record of `vdisk`.
    pub fn encode_base(&self, vdisk: &str, b: &Base) -> Vec<u8> {
        let mut v = vec![3];
        v.extend_from_slice(&b.covers.to_le_bytes());
        v.extend_from_slice(&b.chain_prev);
        for x in [b.last_sequence, b.last_timestamp, b.folded_at] {
            v.extend_from_slice(&x.to_le_bytes());
        }
        v.push(b.gc_pending as u8);
        v.extend_from_slice(&b.garbage_from.to_le_bytes());
        v.extend_from_slice(&(b.chunks.len() as u32).to_le_bytes());
        for c in &b.chunks {
            v.extend_from_slice(&c.key);
            v.extend_from_slice(&c.data_bytes.to_le_bytes());
            v.extend_from_slice(&c.blocks.to_le_bytes());
            v.extend_from_slice(&c.sequence.to_le_bytes());
            v.extend_from_slice(&c.timestamp.to_le_bytes());
            c.extents.put(&mut v);
        }
        v.extend_from_slice(&(b.garbage_chunks.len() as u32).to_le_bytes());
        for k in &b.garbage_chunks {
            v.extend_from_slice(k);
        }
        v.extend_from_slice(&b.full_bytes.to_le_bytes());
        self.sign_record(vdisk, v)
    }

    /// Decodes a base record. Errors: [`Error::Corrupt`].
    pub fn decode_base(&self, vdisk: &str, b: &[u8]) -> Result<Base> {
        let mut r = Reader::new(self.verify_record(vdisk, b, "base")?);
        let x = (|| {
            let version = r.u8()?;
            if version != 2 && version != 3 {
                return None;
            }
            let covers = r.u64()?;
            let chain_prev = r.array::<32>()?;
            let (last_sequence, last_timestamp, folded_at) = (r.u64()?, r.u64()?, r.u64()?);
            let gc_pending = r.u8()? == 1;
            let garbage_from = r.u64()?;
            let n = r.u32()? as usize;
            if n > r.remaining() / 60 {
                return None;
            }
            let mut chunks = Vec::with_capacity(n);
            for _ in 0..n {
                let (key, data_bytes, blocks, sequence, timestamp) = (r.array::<32>()?, r.u64()?, r.u32()?, r.u64()?, r.u64()?);
                let extents = if version == 3 { Extents::parse(&mut r)? } else { Extents::UNKNOWN };
                chunks.push(Chunk { key, data_bytes, blocks, sequence, timestamp, extents });
            }
            let g = r.u32()? as usize;
            if g > r.remaining() / 32 {
                return None;
            }
            let garbage_chunks: Option<Vec<Key>> = (0..g).map(|_| r.array::<32>()).collect();
            let full_bytes = r.u64()?;
            let b = Base {
                covers,
                chain_prev,
                last_sequence,
                last_timestamp,
                folded_at,
                chunks,
                gc_pending,
                garbage_from,
                garbage_chunks: garbage_chunks?,
                full_bytes,
            };
            (r.remaining() == 0).then_some(b)
        })();
        x.ok_or_else(|| bad("base", vdisk))
    }

    /// A fold-in-progress record of `vdisk`.
    pub fn encode_fold(&self, vdisk: &str, covers: u64, chunks: &[Key]) -> Vec<u8> {
        let mut v = vec![1];
        v.extend_from_slice(&covers.to_le_bytes());
        v.extend_from_slice(&(chunks.len() as u32).to_le_bytes());
        for k in chunks {
            v.extend_from_slice(k);
        }
        self.sign_record(vdisk, v)
    }

    /// Decodes a fold-in-progress record: (covers, chunk keys). Errors: [`Error::Corrupt`].
    pub fn decode_fold(&self, vdisk: &str, b: &[u8]) -> Result<(u64, Vec<Key>)> {
        let mut r = Reader::new(self.verify_record(vdisk, b, "fold")?);
        let x = (|| {
            if r.u8()? != 1 {
                return None;
            }
            let covers = r.u64()?;
            let n = r.u32()? as usize;
            if n > r.remaining() / 32 {
                return None;
            }
            let keys: Option<Vec<Key>> = (0..n).map(|_| r.array::<32>()).collect();
            let keys = keys?;
            (r.remaining() == 0).then_some((covers, keys))
        })();
        x.ok_or_else(|| bad("fold", vdisk))
    }
}

/// The newest base of `vdisk` any reachable backend holds (the greatest `covers`; at an equal
/// one, a finished gc over a pending one).
pub fn base_of(backends: &[Arc<dyn Backend>], codec: &IndexCodec, vdisk: &str) -> Option<Base> {
    let mut best: Option<Base> = None;
    for b in backends {
        match b.get_meta(vdisk, BASE) {
            Ok(Some(v)) => match codec.decode_base(vdisk, &v) {
                Ok(x) => {
                    let better = best.as_ref().map(|c| (x.covers, !x.gc_pending) > (c.covers, !c.gc_pending)).unwrap_or(true);
                    if better {
                        best = Some(x);
                    }
                }
                Err(e) => tracing::warn!(vdisk, "{}: base record skipped: {e}", b.name()),
            },
            Ok(None) => {}
            Err(e) => tracing::debug!(vdisk, "{}: base: {e}", b.name()),
        }
    }
    best
}

/// What to keep.
#[derive(Clone, Copy, Debug, Default)]
pub struct Policy {
    /// Fold aggregations whose last block is older than this (ns); `None`: no time window.
    pub retention_ns: Option<u64>,
    /// Fold the oldest history while a vdisk's own history holds more data bytes than this
    /// (0: no cap).
    pub max_bytes: u64,
    /// Delete what a fold replaced only this long after it (ns): readers that loaded the index
    /// before finish.
    pub grace_ns: u64,
    /// Largest chunk, data bytes.
    pub chunk_bytes: u64,
    /// Most blocks per chunk.
    pub chunk_blocks: usize,
}

/// What one cleaner pass did to a vdisk.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Report {
    /// Aggregations folded into the base now.
    pub folded: u64,
    /// Chunks of the new base.
    pub chunks: u64,
    /// Shards deleted (folded aggregations and old chunks).
    pub deleted_shards: u64,
    /// Chunks of an interrupted fold deleted.
    pub rolled_back: u64,
    /// The oldest restorable sequence now.
    pub oldest_sequence: Option<u64>,
}

/// The cleaner's view of the backends.
pub struct Cleaner<'a> {
    /// The backends, shard index order.
    pub backends: &'a [Arc<dyn Backend>],
    /// The sealer.
    pub sealer: &'a Sealer,
    /// The index codec.
    pub codec: &'a IndexCodec,
    /// Backends that must store each write.
    pub write_quorum: usize,
}

impl Cleaner<'_> {
    fn write(&self, what: &str, batch: &Batch<'_>) -> Result<()> {
        let n = write_all(self.backends, what, batch);
        if n < self.write_quorum {
            return Err(Error::Backend {
                backend: "backends".into(),
                detail: format!("{what}: stored on {n} backends, write_quorum is {}", self.write_quorum),
            });
        }
        Ok(())
    }

    /// One pass over `vdisk`: finish or roll back an interrupted fold, fold what `policy` says
    /// falls out of the window (never the newest aggregation, nor from the cut of the oldest
    /// fork `pins` names on), delete what an earlier fold replaced once the grace passed.
    /// `now` is the wall clock (ns). Errors: backend I/O, too few backends; a failed pass is
    /// redone by the next.
    pub fn pass(&self, vdisk: &str, policy: &Policy, pin: Option<u64>, now: u64) -> Result<Report> {
        let mut report = Report { rolled_back: self.recover(vdisk)?, ..Default::default() };
        let Some(head) = find_head(self.backends, self.sealer, vdisk)? else { return Ok(report) };
        let index = Index::load(self.backends, self.sealer, self.codec, vdisk, &head)?;
        let base = base_of(self.backends, self.codec, vdisk);
        if let Some(b) = base.as_ref().filter(|b| b.gc_pending && now >= b.folded_at.saturating_add(policy.grace_ns)) {
            report.deleted_shards += self.collect_garbage(vdisk, b)?;
        }
        let covers = base.as_ref().map(|b| b.covers).unwrap_or(0);
        // Own chain entries (height >= 1), oldest first; the newest is never folded.
        let own: Vec<&IndexEntry> = index.entries.iter().filter(|e| e.height > covers).collect();
        let mut j = covers;
        if own.len() > 1 {
            let foldable = &own[..own.len() - 1];
            let pinned = |e: &IndexEntry| pin.map(|c| e.last_sequence >= c).unwrap_or(false);
            if let Some(r) = policy.retention_ns {
                let boundary = now.saturating_sub(r);
                for e in foldable.iter().take_while(|e| e.last_timestamp < boundary && !pinned(e)) {
                    j = e.height;
                }
            }
            if policy.max_bytes > 0 {
                let mut total: u64 = index.entries.iter().map(|e| e.data_bytes).sum();
                if total as f64 > 0.9 * policy.max_bytes as f64 {
                    tracing::warn!(vdisk, "history holds {total} bytes of data, {}% of history.max_bytes", total * 100 / policy.max_bytes);
                }
                for e in foldable.iter().take_while(|e| !pinned(e)) {
                    if total <= policy.max_bytes {
                        break;
                    }
                    total = total.saturating_sub(e.data_bytes);
                    j = j.max(e.height);
                }
            }
        }
        if j > covers {
            let upto = index
                .entries
                .iter()
                .position(|e| e.height == j)
                .ok_or_else(|| Error::ChainBroken { key: String::new(), detail: format!("height {j} not in the index") })?;
            let (chunks, folded) = self.fold(vdisk, &index.entries[..=upto], base.as_ref(), policy, now)?;
            report.folded = folded;
            report.chunks = chunks;
        }
        report.oldest_sequence = base_of(self.backends, self.codec, vdisk).map(|b| b.last_sequence).or_else(|| index.sequences().map(|s| s.0));
        Ok(report)
    }

    /// Finishes or rolls back a fold a crash interrupted; returns the chunks deleted.
    fn recover(&self, vdisk: &str) -> Result<u64> {
        let mut intents: Vec<(u64, Vec<Key>)> = Vec::new();
        for b in self.backends {
            if let Ok(Some(v)) = b.get_meta(vdisk, FOLD) {
                match self.codec.decode_fold(vdisk, &v) {
                    Ok(x) if !intents.contains(&x) => intents.push(x),
                    Ok(_) => {}
                    Err(e) => tracing::warn!(vdisk, "{}: fold record skipped: {e}", b.name()),
                }
            }
        }
        if intents.is_empty() {
            return Ok(0);
        }
        let base = base_of(self.backends, self.codec, vdisk);
        let mut rolled = 0;
        for (covers, keys) in intents {
            // Committed: the base covers the fold's height and ends with its chunks (a full
            // rewrite holds only them, an appending fold put them after the older ones).
            let committed = base
                .as_ref()
                .map(|b| {
                    let tail: Vec<Key> = b.chunks.iter().rev().take(keys.len()).map(|c| c.key).collect();
                    b.covers == covers && !keys.is_empty() && tail == keys
                })
                .unwrap_or(false);
            if committed {
                // The switch reached some backends: complete it everywhere.
                let b = base.as_ref().ok_or_else(|| Error::InvalidArgument("base vanished".into()))?;
                let rec = self.codec.encode_base(vdisk, b);
                let batch = Batch {
                    metas: vec![MetaWrite { vdisk, name: BASE, value: Some(&rec) }, MetaWrite { vdisk, name: FOLD, value: None }],
                    ..Default::default()
                };
                self.write("base record", &batch)?;
                tracing::info!(vdisk, covers, "an interrupted fold was committed: finished");
            } else {
                let used: Vec<Key> = base.as_ref().map(|b| b.chunks.iter().map(|c| c.key).collect()).unwrap_or_default();
                let dels: Vec<&Key> = keys.iter().filter(|k| !used.contains(k)).collect();
                rolled += dels.len() as u64;
                let batch = Batch { deletes: dels, metas: vec![MetaWrite { vdisk, name: FOLD, value: None }], ..Default::default() };
                self.write("fold roll back", &batch)?;
                tracing::info!(vdisk, covers, "an interrupted fold was rolled back: {rolled} chunks deleted");
            }
        }
        Ok(rolled)
    }

    /// Folds `entries` (the virtual index up to and including the last aggregation to fold:
    /// the current base's chunks, then chain entries) into a new base; returns (chunks,
    /// aggregations folded).
    fn fold(&self, vdisk: &str, entries: &[IndexEntry], old: Option<&Base>, policy: &Policy, now: u64) -> Result<(u64, u64)> {
        let last = *entries.last().ok_or_else(|| Error::InvalidArgument("nothing to fold".into()))?;
        let (s, t) = (last.last_sequence, last.last_timestamp);
        // Append the newly folded part after the old chunks while the base then holds at most
        // APPEND_FACTOR times what its last full rewrite held (the new part's data bytes bound
        // its chunks); rewrite the whole base past it.
        let new_bytes: u64 = entries.iter().filter(|e| e.height > 0).map(|e| e.data_bytes).sum();
        let append = old
            .map(|b| {
                !b.chunks.is_empty() && (b.chunks.iter().map(|c| c.data_bytes).sum::<u64>() + new_bytes) as f64 <= APPEND_FACTOR * b.full_bytes.max(1) as f64
            })
            .unwrap_or(false);
        let entries: Vec<IndexEntry> = if append { entries.iter().filter(|e| e.height > 0).copied().collect() } else { entries.to_vec() };
        let mut covered = Sectors::default();
        let mut chunk: Vec<Block> = Vec::new();
        let mut chunk_bytes = 0u64;
        let mut written: Vec<Chunk> = Vec::new();
        let random: [u8; 16] = {
            let mut r = [0u8; 16];
            getrandom::getrandom(&mut r).map_err(|e| Error::InvalidArgument(format!("random bytes: {e}")))?;
            r
        };
        let seal_chunk = |blocks: &mut Vec<Block>, bytes: &mut u64, written: &mut Vec<Chunk>| -> Result<()> {
            if blocks.is_empty() {
                return Ok(());
            }
            // Collected newest first: within a chunk they apply oldest first.
            blocks.reverse();
            let ctx = SealContext { vdisk, epoch: 0, counter: written.len() as u64, attach_random: random, prev: [0u8; 32], timestamp: now };
            let sealed = self.sealer.seal(&ctx, blocks)?;
            let mut keys: Vec<Key> = written.iter().map(|c| c.key).collect();
            keys.push(sealed.key);
            let intent = self.codec.encode_fold(vdisk, last.height, &keys);
            let n = std::thread::scope(|sc| {
                let hs: Vec<_> = self
                    .backends
                    .iter()
                    .zip(&sealed.shards)
                    .map(|(b, shard)| {
                        let intent = &intent;
                        let key = &sealed.key;
                        sc.spawn(move || {
                            let batch = Batch {
                                shards: vec![ShardWrite { vdisk, epoch: 0, key, bytes: shard }],
                                metas: vec![MetaWrite { vdisk, name: FOLD, value: Some(intent) }],
                                ..Default::default()
                            };
                            b.write(&batch).is_ok()
                        })
                    })
                    .collect();
                hs.into_iter().filter_map(|h| h.join().ok()).filter(|ok| *ok).count()
            });
            if n < self.write_quorum {
                return Err(Error::Backend {
                    backend: "backends".into(),
                    detail: format!("base chunk stored on {n} backends, write_quorum is {}", self.write_quorum),
                });
            }
            #[cfg(feature = "failpoints")]
            fail::fail_point!("history::fold_chunk", crate::failpoint_action);
            written.push(Chunk { key: sealed.key, data_bytes: *bytes, blocks: blocks.len() as u32, sequence: s, timestamp: t, extents: Extents::of(blocks) });
            blocks.clear();
            *bytes = 0;
            Ok(())
        };
        // Newest first: the chain's aggregations from the last folded down, then the old base's
        // chunks from the last applied down.
        let mut folded = 0u64;
        for e in entries.iter().rev() {
            let agg: Aggregation = crate::seal::fetch_aggregation(self.backends, self.sealer, &e.key)?;
            if agg.vdisk_id != vdisk {
                return Err(Error::ChainBroken { key: hex::encode(e.key), detail: format!("aggregation belongs to vdisk {}", agg.vdisk_id) });
            }
            if e.height > 0 {
                folded += 1;
            }
            for b in agg.blocks.iter().rev() {
                for piece in covered.surviving(b) {
                    let piece = Block { sequence: s, timestamp: t, ..piece };
                    chunk_bytes += piece.data.len() as u64;
                    chunk.push(piece);
                    if chunk_bytes >= policy.chunk_bytes || chunk.len() >= policy.chunk_blocks {
                        seal_chunk(&mut chunk, &mut chunk_bytes, &mut written)?;
                    }
                }
            }
        }
        seal_chunk(&mut chunk, &mut chunk_bytes, &mut written)?;
        if written.is_empty() {
            // Everything folded was zeroes over nothing: one empty-handed chunk still marks the
            // point (a write_zeroes of nothing).
            chunk.push(Block::new(s, 0, Operation::WriteZeroes, Vec::new(), 0, t));
            seal_chunk(&mut chunk, &mut chunk_bytes, &mut written)?;
        }
        written.reverse();
        let new_chunks = written.len() as u64;
        #[cfg(feature = "failpoints")]
        fail::fail_point!("history::fold_commit", crate::failpoint_action);
        let (chunks, garbage_chunks, full_bytes) = match old {
            Some(b) if append => {
                let full = b.full_bytes;
                (b.chunks.iter().copied().chain(written).collect::<Vec<Chunk>>(), b.garbage_chunks.clone(), full)
            }
            _ => {
                let full = written.iter().map(|c| c.data_bytes).sum();
                (written, old.map(|b| b.chunks.iter().map(|c| c.key).chain(b.garbage_chunks.iter().copied()).collect()).unwrap_or_default(), full)
            }
        };
        let base = Base {
            covers: last.height,
            chain_prev: last.key,
            last_sequence: s,
            last_timestamp: t,
            folded_at: now,
            chunks,
            gc_pending: true,
            garbage_from: old.map(|b| b.covers + 1).unwrap_or(1),
            garbage_chunks,
            full_bytes,
        };
        let rec = self.codec.encode_base(vdisk, &base);
        let batch =
            Batch { metas: vec![MetaWrite { vdisk, name: BASE, value: Some(&rec) }, MetaWrite { vdisk, name: FOLD, value: None }], ..Default::default() };
        self.write("base record", &batch)?;
        tracing::info!(
            vdisk,
            covers = last.height,
            sequence = s,
            new_chunks,
            chunks = base.chunks.len(),
            append,
            "history folded into a base: {folded} aggregations"
        );
        Ok((new_chunks, folded))
    }

    /// Deletes the folded aggregations, their index records and the old base's chunks; marks
    /// the base done. Returns the shards deleted (per backend, the keys asked for).
    fn collect_garbage(&self, vdisk: &str, b: &Base) -> Result<u64> {
        let by_height = super::index::collect(self.backends, self.codec, vdisk);
        let mut keys: Vec<Key> = b.garbage_chunks.clone();
        let mut names: Vec<String> = Vec::new();
        for (h, es) in &by_height {
            if (b.garbage_from..=b.covers).contains(h) || (*h <= b.covers && *h >= 1) {
                keys.extend(es.iter().map(|e| e.key));
                names.push(super::index::entry_name(*h));
            }
        }
        let mut pages: Vec<u64> = by_height.keys().filter(|h| **h >= 1 && **h <= b.covers).map(|h| page_of(*h)).collect();
        pages.sort_unstable();
        pages.dedup();
        // A page goes only when every height it holds is folded.
        names.extend(pages.into_iter().filter(|p| (p + 1) * PAGE - 1 <= b.covers).map(page_name));
        keys.sort_unstable();
        keys.dedup();
        let live: Vec<Key> = b.chunks.iter().map(|c| c.key).chain([b.chain_prev]).collect();
        keys.retain(|k| !live.contains(k) || *k == b.chain_prev);
        let metas: Vec<MetaWrite<'_>> = names.iter().map(|n| MetaWrite { vdisk, name: n, value: None }).collect();
        let batch = Batch { deletes: keys.iter().collect(), metas, ..Default::default() };
        self.write("garbage of a fold", &batch)?;
        #[cfg(feature = "failpoints")]
        fail::fail_point!("history::gc", crate::failpoint_action);
        let done = Base { gc_pending: false, garbage_chunks: Vec::new(), ..b.clone() };
        let rec = self.codec.encode_base(vdisk, &done);
        self.write("base record", &Batch { metas: vec![MetaWrite { vdisk, name: BASE, value: Some(&rec) }], ..Default::default() })?;
        tracing::info!(vdisk, "folded history deleted: {} shards, {} index records", keys.len(), names.len());
        Ok(keys.len() as u64)
    }
}

/// Sectors written by newer blocks, as disjoint `[start, end)` runs (sector numbers).
#[derive(Default)]
struct Sectors(BTreeMap<u64, u64>);

impl Sectors {
    /// The parts of `b` no newer block covers, as blocks (clipped copies); then marks the
    /// sectors `b` fully covers. A partly covered sector stays uncovered: an older block's
    /// piece of it is kept, and applied before the newer one.
    fn surviving(&mut self, b: &Block) -> Vec<Block> {
        let op = Operation::from_ordinal(b.operation);
        let (start, size) = (b.lba.saturating_mul(SECTOR), b.size);
        let end = start.saturating_add(size);
        if op.is_none() || size == 0 {
            return Vec::new();
        }
        let (s0, s1) = (b.lba, end.div_ceil(SECTOR));
        let mut out = Vec::new();
        let mut cur = s0;
        let runs: Vec<(u64, u64)> = self.0.range(..s1).filter(|(_, e)| **e > s0).map(|(a, e)| (*a, *e)).collect();
        let mut gaps = Vec::new();
        for (a, e) in runs {
            if a > cur {
                gaps.push((cur, a.min(s1)));
            }
            cur = cur.max(e);
        }
        if cur < s1 {
            gaps.push((cur, s1));
        }
        for (g0, g1) in gaps {
            let (p0, p1) = ((g0 * SECTOR).max(start), (g1 * SECTOR).min(end));
            if p1 <= p0 {
                continue;
            }
            let data = if op == Some(Operation::Write) { b.data[(p0 - start) as usize..(p1 - start) as usize].to_vec() } else { Vec::new() };
            out.push(Block::new(b.sequence, p0 / SECTOR, op.unwrap_or(Operation::Write), data, p1 - p0, b.timestamp));
        }
        // Fully covered sectors of b.
        let (f0, f1) = (s0, end / SECTOR);
        if f1 > f0 {
            let mut ns = f0;
            let mut ne = f1;
            let over: Vec<(u64, u64)> = self.0.range(..=ne).filter(|(_, e)| **e >= ns).map(|(a, e)| (*a, *e)).collect();
            for (a, e) in over {
                self.0.remove(&a);
                ns = ns.min(a);
                ne = ne.max(e);
            }
            self.0.insert(ns, ne);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(seq: u64, lba: u64, data: &[u8]) -> Block {
        Block::new(seq, lba, Operation::Write, data.to_vec(), data.len() as u64, seq)
    }

    /// Applies blocks to a byte image.
    fn apply(img: &mut Vec<u8>, bs: &[Block]) {
        for b in bs {
            let s = (b.lba * SECTOR) as usize;
            let e = s + b.size as usize;
            if img.len() < e {
                img.resize(e, 0);
            }
            match Operation::from_ordinal(b.operation) {
                Some(Operation::Write) => img[s..e].copy_from_slice(&b.data),
                _ => img[s..e].fill(0),
            }
        }
    }

    #[test]
    fn surviving_pieces_give_the_same_image_as_every_write() {
        let mut x = 7u64;
        for _ in 0..200 {
            let mut blocks = Vec::new();
            for seq in 1..40u64 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let lba = x % 64;
                let len = 1 + (x >> 8) as usize % 3000;
                if x.is_multiple_of(5) {
                    blocks.push(Block::new(seq, lba, Operation::WriteZeroes, Vec::new(), len as u64, seq));
                } else {
                    blocks.push(w(seq, lba, &vec![(seq % 251) as u8 + 1; len]));
                }
            }
            let mut want = Vec::new();
            apply(&mut want, &blocks);
            // Newest first through the coverage, then applied in the reverse of that order.
            let mut cov = Sectors::default();
            let mut pieces = Vec::new();
            for b in blocks.iter().rev() {
                pieces.extend(cov.surviving(b));
            }
            pieces.reverse();
            let mut got = Vec::new();
            apply(&mut got, &pieces);
            got.resize(want.len().max(got.len()), 0);
            want.resize(got.len(), 0);
            assert_eq!(got, want);
            let total: u64 = pieces.iter().map(|p| p.size).sum();
            assert!(total <= 64 * 512 + 40 * 3000, "pieces stay within the image");
        }
    }

    #[test]
    fn base_and_fold_records_round_trip() {
        let c = IndexCodec::new(&crate::seal::SealKey::from_bytes([4; 32]));
        let b = Base {
            covers: 9,
            chain_prev: [1; 32],
            last_sequence: 900,
            last_timestamp: 5,
            folded_at: 6,
            chunks: vec![
                Chunk { key: [2; 32], data_bytes: 10, blocks: 2, sequence: 800, timestamp: 4, extents: Extents::from_runs(&mut [(0, 8), (64, 72)]) },
                Chunk { key: [7; 32], data_bytes: 3, blocks: 1, sequence: 900, timestamp: 5, extents: Extents::UNKNOWN },
            ],
            gc_pending: true,
            garbage_from: 3,
            garbage_chunks: vec![[3; 32]],
            full_bytes: 10,
        };
        assert_eq!(c.decode_base("v", &c.encode_base("v", &b)).unwrap(), b);
        assert!(c.decode_base("w", &c.encode_base("v", &b)).is_err());
        assert_eq!(c.decode_fold("v", &c.encode_fold("v", 4, &[[5; 32]])).unwrap(), (4, vec![[5; 32]]));
    }
}
