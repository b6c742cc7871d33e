//! History (DESIGN.md §12): what a vdisk's log holds and how to read it back.
//!
//! [`History`] is a vdisk's view from the backends: its head and its [`index`] (on every
//! backend, rebuilt from the chain where missing), and for a fork ([`tree`]) its path: the
//! parent's history up to the cut, then its own. [`points`] names positions in it (sequence,
//! time, checkpoint); [`checkpoint`] stores named marks; [`restore`] rebuilds an image at a
//! point; [`playback`] streams it; [`changed`] lists what changed; [`retention`] folds old
//! history into a base; [`scrub`] checks every shard and head and repairs what is bad.

pub mod changed;
pub mod checkpoint;
pub mod index;
pub mod playback;
pub mod points;
pub mod restore;
pub mod retention;
pub mod scrub;
pub mod tree;

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::seal::{find_head, Aggregation, HeadRecord, Sealer};
use index::{Index, IndexCodec};
use std::sync::Arc;

/// A vdisk's history as the backends hold it.
pub struct History {
    /// The backends, shard index order.
    pub backends: Vec<Arc<dyn Backend>>,
    /// The sealer (key and geometry).
    pub sealer: Arc<Sealer>,
    /// The index records' codec.
    pub codec: IndexCodec,
    /// The vdisk.
    pub vdisk: String,
    /// Its own head (`None`: a fork with no block of its own yet).
    pub head: Option<HeadRecord>,
    /// Its path's index, oldest first: for a fork, the parent's entries up to the cut (the last
    /// one cut there), then its own; a base's chunks first where history was folded.
    pub index: Index,
    /// Where each vdisk's part of the path starts in `index.entries`: (position, vdisk), in order.
    pub parts: Vec<(usize, String)>,
    /// Its fork record, for a fork.
    pub fork: Option<tree::Fork>,
    /// Its base, where its own history was folded.
    pub base: Option<retention::Base>,
    /// The oldest restorable point of the path (sequence, timestamp): the newest base's last
    /// folded block among this vdisk and the parents it stands on; `None` with nothing folded.
    /// Base chunks below it hold older folds, complete only together.
    pub floor: Option<(u64, u64)>,
}

/// A summary of a vdisk's history (`tlog history`).
#[derive(Clone, Debug, serde::Serialize)]
pub struct Summary {
    /// The vdisk.
    pub vdisk: String,
    /// First and last sequence.
    pub sequences: Option<(u64, u64)>,
    /// First and last block timestamps (ns).
    pub times: Option<(u64, u64)>,
    /// The same, RFC 3339.
    pub times_rfc3339: Option<(String, String)>,
    /// Aggregations on the path.
    pub aggregations: u64,
    /// Blocks.
    pub blocks: u64,
    /// Bytes of block data written.
    pub data_bytes: u64,
    /// The newest writer epoch.
    pub epoch: u64,
    /// Checkpoints, oldest first.
    pub checkpoints: Vec<checkpoint::Checkpoint>,
    /// The parent, for a fork.
    pub parent: Option<String>,
    /// The fork point on the parent (its sequence), for a fork.
    pub fork_point: Option<u64>,
    /// The forks of this vdisk, with their cuts.
    pub children: Vec<tree::Child>,
    /// The last rebase, for a rebased fork.
    pub rebase: Option<tree::Rebase>,
    /// The oldest restorable sequence and its time, where history was folded into a base.
    pub window_start: Option<(u64, String)>,
    /// Chunks of the base.
    pub base_chunks: u64,
}

impl History {
    /// The history of `vdisk`. Errors: unknown vdisk (no backend holds a head or a fork record
    /// for it), a deleted one, a head that cannot be rebuilt, a broken chain, a fork whose
    /// parent no longer holds the aggregation of its cut.
    pub fn load(backends: Vec<Arc<dyn Backend>>, sealer: Arc<Sealer>, vdisk: &str) -> Result<History> {
        Self::load_path(backends, sealer, vdisk, 0)
    }

    fn load_path(backends: Vec<Arc<dyn Backend>>, sealer: Arc<Sealer>, vdisk: &str, depth: usize) -> Result<History> {
        if depth > tree::MAX_DEPTH {
            return Err(Error::ChainBroken { key: String::new(), detail: format!("forks deeper than {} (a loop in the fork records?)", tree::MAX_DEPTH) });
        }
        let codec = IndexCodec::new(sealer.key());
        let tomb = tree::deleted(&backends, &codec, vdisk)?;
        if let (0, Some(d)) = (depth, &tomb) {
            return Err(Error::NotFound(format!(
                "vdisk {vdisk} was deleted at {}; its history up to sequence {} is kept only for its forks",
                crate::time::format_time(d.time),
                d.kept_up_to
            )));
        }
        let fork = tree::fork_of(&backends, &codec, vdisk)?;
        // A deleted parent that keeps none of its own aggregations is only its fork record.
        let head = if tomb.as_ref().map(|d| !d.own_kept).unwrap_or(false) { None } else { find_head(&backends, &sealer, vdisk)? };
        if head.is_none() && fork.is_none() {
            return Err(Error::NotFound(format!("vdisk {vdisk}: no backend holds a head record for it (unknown vdisk)")));
        }
        let own = match &head {
            Some(h) => Index::load(&backends, &sealer, &codec, vdisk, h)?,
            None => Index { vdisk: vdisk.to_string(), ..Default::default() },
        };
        let mut entries = Vec::new();
        let mut parts = Vec::new();
        let mut floor: Option<(u64, u64)> = None;
        if let Some(f) = &fork {
            let p = Self::load_path(backends.clone(), sealer.clone(), &f.parent, depth + 1)?;
            let n = p.index.entries.partition_point(|e| e.first_sequence <= f.cut);
            let at_cut = n.checked_sub(1).and_then(|i| p.index.entries.get(i)).filter(|e| e.key == f.parent_key && e.last_sequence >= f.cut);
            if at_cut.is_none() {
                return Err(Error::ChainBroken {
                    key: hex::encode(f.parent_key),
                    detail: format!("fork {vdisk} stands on sequence {} of {}, whose aggregation the parent no longer holds", f.cut, f.parent),
                });
            }
            entries.extend_from_slice(&p.index.entries[..n]);
            if let Some(last) = entries.last_mut() {
                last.last_sequence = f.cut;
                last.last_timestamp = last.last_timestamp.min(f.cut_timestamp.max(last.first_timestamp));
            }
            parts = p.parts.into_iter().filter(|(s, _)| *s < n).collect();
            floor = p.floor.filter(|(s, _)| *s <= f.cut);
        }
        parts.push((entries.len(), vdisk.to_string()));
        entries.extend(own.entries);
        let base = retention::base_of(&backends, &codec, vdisk);
        if let Some(b) = &base {
            floor = floor.max(Some((b.last_sequence, b.last_timestamp)));
        }
        Ok(History {
            backends,
            sealer,
            codec,
            vdisk: vdisk.to_string(),
            head,
            index: Index { vdisk: vdisk.to_string(), entries, rebuilt: own.rebuilt },
            parts,
            fork,
            base,
            floor,
        })
    }

    /// The restorable sequence range (first, last): the index's, from the floor on.
    pub fn sequences(&self) -> Option<(u64, u64)> {
        self.index.sequences().map(|(f, l)| (self.floor.map(|(s, _)| f.max(s)).unwrap_or(f), l))
    }

    /// The restorable time range (ns): the index's, from the floor on.
    pub fn times(&self) -> Option<(u64, u64)> {
        self.index.times().map(|(f, l)| (self.floor.map(|(_, t)| f.max(t)).unwrap_or(f), l))
    }

    /// The vdisk whose aggregation is at position `i` of the path.
    pub fn owner(&self, i: usize) -> &str {
        self.parts.iter().rev().find(|(s, _)| *s <= i).map(|(_, v)| v.as_str()).unwrap_or(&self.vdisk)
    }

    /// Position of the first entry of this vdisk's own part of the path.
    pub fn own_start(&self) -> usize {
        self.parts.last().map(|(s, _)| *s).unwrap_or(0)
    }

    /// Fetches and unseals the aggregation at position `i` of the path, checking it against its
    /// entry, with only the blocks the entry covers (a fork's cut falls inside the parent's
    /// aggregation). Errors: fewer than k good shards, the wrong key, a mismatch (chain broken).
    pub fn aggregation(&self, i: usize) -> Result<Aggregation> {
        let e = self.index.entries.get(i).ok_or_else(|| Error::NotFound(format!("aggregation {i} of vdisk {}", self.vdisk)))?;
        let mut agg = crate::seal::fetch_aggregation(&self.backends, &self.sealer, &e.key)?;
        if agg.vdisk_id != self.owner(i) || agg.first_sequence != e.first_sequence || agg.last_sequence < e.last_sequence || agg.prev != e.prev {
            return Err(Error::ChainBroken { key: hex::encode(e.key), detail: "the aggregation does not match its index entry".into() });
        }
        if agg.last_sequence > e.last_sequence {
            agg.blocks.retain(|b| b.sequence <= e.last_sequence);
            agg.last_sequence = e.last_sequence;
        }
        Ok(agg)
    }

    /// Fetches and unseals the aggregations at index positions `range` with `parallel` workers
    /// (0: twice the cores, at least 4), each fetching k of k+m shards from the backends at once,
    /// and hands them to `f` in order, on the calling thread; at most two per worker are held
    /// ahead of the one `f` takes. `f` returns false to stop early. Errors: the first
    /// [`History::aggregation`] error in order, or `f`'s.
    pub fn for_each_aggregation(&self, range: std::ops::Range<usize>, parallel: usize, mut f: impl FnMut(usize, Aggregation) -> Result<bool>) -> Result<()> {
        let n = range.end.min(self.index.entries.len());
        let begin = range.start.min(n);
        if begin == n {
            return Ok(());
        }
        let workers = if parallel > 0 { parallel } else { std::thread::available_parallelism().map(|p| p.get() * 2).unwrap_or(4).max(4) };
        let workers = workers.min(n - begin);
        if workers <= 1 {
            for i in begin..n {
                if !f(i, self.aggregation(i)?)? {
                    break;
                }
            }
            return Ok(());
        }
        std::thread::scope(|s| -> Result<()> {
            let (work_tx, work_rx) = crossbeam_channel::unbounded::<usize>();
            let (done_tx, done_rx) = crossbeam_channel::unbounded::<(usize, Result<Aggregation>)>();
            for _ in 0..workers {
                let (rx, tx) = (work_rx.clone(), done_tx.clone());
                s.spawn(move || {
                    while let Ok(i) = rx.recv() {
                        if tx.send((i, self.aggregation(i))).is_err() {
                            return;
                        }
                    }
                });
            }
            drop(done_tx);
            let mut next_send = begin;
            while next_send < n && next_send - begin < workers * 2 {
                let _ = work_tx.send(next_send);
                next_send += 1;
            }
            let mut pending: std::collections::BTreeMap<usize, Aggregation> = std::collections::BTreeMap::new();
            let mut next = begin;
            while next < n {
                let (i, agg) = done_rx.recv().map_err(|_| Error::Shutdown)?;
                pending.insert(i, agg?);
                while let Some(agg) = pending.remove(&next) {
                    if !f(next, agg)? {
                        // Dropping the work sender ends the workers after their current fetch.
                        return Ok(());
                    }
                    next += 1;
                    if next_send < n {
                        let _ = work_tx.send(next_send);
                        next_send += 1;
                    }
                }
            }
            Ok(())
        })
    }

    /// The summary of the history.
    pub fn summary(&self) -> Summary {
        let mut cps: Vec<checkpoint::Checkpoint> = checkpoint::list(&self.backends, &self.codec, &self.vdisk).into_values().collect();
        cps.sort_by_key(|c| (c.sequence, c.time));
        let times = self.times();
        Summary {
            vdisk: self.vdisk.clone(),
            sequences: self.sequences(),
            times,
            times_rfc3339: times.map(|(a, b)| (crate::time::format_time(a), crate::time::format_time(b))),
            aggregations: self.index.entries.len() as u64,
            blocks: self.index.entries.iter().map(|e| e.blocks as u64).sum(),
            data_bytes: self.index.entries.iter().map(|e| e.data_bytes).sum(),
            epoch: self.head.as_ref().map(|h| h.epoch).unwrap_or(0),
            checkpoints: cps,
            parent: self.fork.as_ref().map(|f| f.parent.clone()),
            fork_point: self.fork.as_ref().map(|f| f.cut),
            children: tree::children(&self.backends, &self.codec, &self.vdisk).into_values().collect(),
            rebase: tree::rebase_of(&self.backends, &self.codec, &self.vdisk).ok().flatten(),
            window_start: self.floor.map(|(s, t)| (s, crate::time::format_time(t))),
            base_chunks: self.base.as_ref().map(|b| b.chunks.len() as u64).unwrap_or(0),
        }
    }
}
