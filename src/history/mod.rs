//! History (DESIGN.md §12): what a vdisk's log holds and how to read it back.
//!
//! [`History`] is a vdisk's view from the backends: its head and its [`index`] (on every
//! backend, rebuilt from the chain where missing). [`points`] names positions in it (sequence,
//! time, checkpoint); [`checkpoint`] stores named marks; [`restore`] rebuilds an image at a
//! point; [`scrub`] checks every shard and head and repairs what is bad.

pub mod changed;
pub mod checkpoint;
pub mod index;
pub mod playback;
pub mod points;
pub mod restore;
pub mod scrub;

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
    /// Its head.
    pub head: HeadRecord,
    /// Its index, oldest first.
    pub index: Index,
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
    /// Aggregations on the chain.
    pub aggregations: u64,
    /// Blocks.
    pub blocks: u64,
    /// Bytes of block data written.
    pub data_bytes: u64,
    /// The newest writer epoch.
    pub epoch: u64,
    /// Checkpoints, oldest first.
    pub checkpoints: Vec<checkpoint::Checkpoint>,
}

impl History {
    /// The history of `vdisk`. Errors: unknown vdisk (no backend holds a head for it), a head
    /// that cannot be rebuilt, a broken chain.
    pub fn load(backends: Vec<Arc<dyn Backend>>, sealer: Arc<Sealer>, vdisk: &str) -> Result<History> {
        let head = find_head(&backends, &sealer, vdisk)?
            .ok_or_else(|| Error::NotFound(format!("vdisk {vdisk}: no backend holds a head record for it (unknown vdisk)")))?;
        let codec = IndexCodec::new(sealer.key());
        let index = Index::load(&backends, &sealer, &codec, vdisk, &head)?;
        Ok(History { backends, sealer, codec, vdisk: vdisk.to_string(), head, index })
    }

    /// Fetches and unseals the aggregation at position `i` of the index, checking it against
    /// its entry. Errors: fewer than k good shards, the wrong key, a mismatch (chain broken).
    pub fn aggregation(&self, i: usize) -> Result<Aggregation> {
        let e = self.index.entries.get(i).ok_or_else(|| Error::NotFound(format!("aggregation {i} of vdisk {}", self.vdisk)))?;
        let agg = crate::seal::fetch_aggregation(&self.backends, &self.sealer, &e.key)?;
        if agg.vdisk_id != self.vdisk || agg.first_sequence != e.first_sequence || agg.last_sequence != e.last_sequence || agg.prev != e.prev {
            return Err(Error::ChainBroken { key: hex::encode(e.key), detail: "the aggregation does not match its index entry".into() });
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
        let times = self.index.times();
        Summary {
            vdisk: self.vdisk.clone(),
            sequences: self.index.sequences(),
            times,
            times_rfc3339: times.map(|(a, b)| (crate::time::format_time(a), crate::time::format_time(b))),
            aggregations: self.index.entries.len() as u64,
            blocks: self.index.entries.iter().map(|e| e.blocks as u64).sum(),
            data_bytes: self.index.entries.iter().map(|e| e.data_bytes).sum(),
            epoch: self.head.epoch,
            checkpoints: cps,
        }
    }
}
