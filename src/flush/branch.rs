//! The engine's side of history as a tree ([`crate::history::tree`]): fork, rebase and delete
//! of vdisks, run by the attach workers as control requests, and the cleaner thread
//! ([`crate::history::retention`]).
//!
//! - **Fork** at the parent's head holds the parent's intake for the instant it takes (as a
//!   checkpoint does), so the cut is exactly its last flushed block; at a sequence or a
//!   checkpoint it finds the cut's aggregation by a binary search over the index records
//!   (O(log n) reads), and at a time it reads the parent's index. Either way no data is
//!   copied: two metadata records.
//! - **Rebase** keeps writers out of the fork while it runs (an attach is answered busy, the
//!   client retries), begins an epoch of its own, appends the parent's blocks after the point the
//!   fork stood on and then the fork's own writes again, waits until they are durable, and
//!   records the rebase. The automatic checkpoint `pre-rebase-N` names the state before.
//! - **Delete** keeps writers out, waits until what was received is durable, then removes what
//!   the vdisk alone holds (see [`crate::history::tree`]).

use super::{lock, Shared, Vdisk};
use crate::backend::{Batch, HeadWrite, Key, MetaWrite};
use crate::error::{Error, Result};
use crate::history::points::Point;
use crate::history::retention::{Cleaner, Policy};
use crate::history::tree::{self, Deleted, Fork, Rebase};
use crate::history::History;
use crate::namespace::{FirstSequence, Push};
use crate::wire::{Block, Operation, PointSpec};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn point(p: &PointSpec) -> Option<Point> {
    crate::history::playback::point(p)
}

/// Waits until `vd` holds nothing unflushed, at most `timeout`.
fn drain(sh: &Shared, vd: &Vdisk, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    if lock(&vd.ns).rotate() {
        // A buffer the writer left: flush it.
        if let Some(v) = sh.loaded().into_iter().find(|v| v.name() == vd.name()) {
            sh.queue_flush(&v);
        }
    }
    while !lock(&vd.ns).idle() {
        if Instant::now() >= deadline || sh.stopping.load(Ordering::SeqCst) {
            return Err(Error::Timeout(format!("blocks of vdisk {} did not become durable within {timeout:?}", vd.name())));
        }
        sh.wait_space(Duration::from_millis(20));
    }
    Ok(())
}

/// The history of `vdisk` up to what the engine acknowledged (a head written with an
/// aggregation still in flight is not yet part of it).
fn flushed_history(sh: &Shared, vdisk: &str) -> Result<History> {
    let vd = sh.vdisk(vdisk)?;
    let mut h = History::load(sh.backends.clone(), sh.sealer.clone(), vdisk)?;
    if let Some(l) = vd.last_flushed() {
        let keep = h.index.entries.partition_point(|e| e.first_sequence <= l);
        h.index.entries.truncate(keep);
        if let Some(e) = h.index.entries.last_mut() {
            e.last_sequence = e.last_sequence.min(l);
        }
    }
    Ok(h)
}

/// Marks `vd` busy (writers are answered busy) while `f` runs; refused when a writer is
/// attached.
fn exclusive<T>(sh: &Shared, vd: &Arc<Vdisk>, why: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    {
        let _a = lock(&vd.attach_lock);
        if lock(&vd.sink).is_some() {
            return Err(Error::InvalidArgument(format!("vdisk {} has a writer attached: {why} refused while one is (disconnect it first)", vd.name())));
        }
        let mut b = lock(&vd.busy);
        if let Some(other) = b.as_ref() {
            return Err(Error::InvalidArgument(format!("vdisk {} is {other}", vd.name())));
        }
        *b = Some(why.to_string());
    }
    let r = f();
    *lock(&vd.busy) = None;
    sh.signal_space();
    r
}

/// Forks `parent` at `at` into `new`; returns the JSON answer.
pub(crate) fn fork(sh: &Shared, parent: &str, new: &str, at: &PointSpec) -> Result<String> {
    for v in [parent, new] {
        if !super::valid_vdisk_id(v) {
            return Err(Error::InvalidArgument(format!("vdisk id {v:?} is invalid: 1 to 128 characters of A-Z a-z 0-9 . _ -")));
        }
    }
    if parent == new {
        return Err(Error::InvalidArgument("a vdisk cannot be forked into itself".into()));
    }
    let started = Instant::now();
    // The new name must be free: no head, no fork record, no tombstone, no writer.
    if crate::seal::find_head(&sh.backends, &sh.sealer, new)?.is_some()
        || tree::fork_of(&sh.backends, &sh.codec, new)?.is_some()
        || tree::deleted(&sh.backends, &sh.codec, new)?.is_some()
    {
        return Err(Error::InvalidArgument(format!("vdisk {new} already exists: a fork needs a new name")));
    }
    {
        let mut map = lock(&sh.vdisks);
        if let Some(v) = map.get(new).and_then(|s| s.vdisk.get().cloned()) {
            if lock(&v.sink).is_some() || v.last_flushed().is_some() || !lock(&v.ns).idle() {
                return Err(Error::InvalidArgument(format!("vdisk {new} already exists (it has a writer or blocks): a fork needs a new name")));
            }
            // Loaded empty (an attach that wrote nothing): loaded again with the fork record.
            map.remove(new);
        }
    }
    let pv = sh.vdisk(parent)?;
    let _u = lock(&pv.upkeep);
    let now = sh.clock.wall_ns();
    let fast = match point(at) {
        Some(Point::Sequence(cut)) => fork_fast(sh, &pv, parent, cut, now)?,
        // A checkpoint names its sequence (a metadata read): the same search, no index load.
        // One before the first block, or unknown, takes the slow path, which names the error.
        Some(Point::Checkpoint(name)) => match crate::history::checkpoint::list(&sh.backends, &sh.codec, parent).get(&name).and_then(|c| c.sequence) {
            Some(cut) => fork_fast(sh, &pv, parent, cut, now)?,
            None => None,
        },
        _ => None,
    };
    let f = match (fast, point(at)) {
        (Some(f), _) => f,
        (None, None) => {
            // At the head: the parent's intake is held while everything received is made
            // durable, so the cut is one instant.
            lock(&pv.ns).hold(true);
            let r = (|| {
                drain(sh, &pv, Duration::from_millis(sh.cfg.server.takeover_timeout_ms))?;
                let cut = lock(&pv.ns).last_flushed().ok_or_else(|| Error::InvalidArgument(format!("vdisk {parent} has no block to fork")))?;
                let chain = *lock(&pv.chain);
                let ts = lock(&pv.ns).last_timestamp();
                if chain.height > 0 {
                    Ok(Fork { parent: parent.to_string(), parent_key: chain.prev, parent_height: chain.height, cut, cut_timestamp: ts, created: now })
                } else {
                    // A fork with no block of its own: its cut lies on its own parent's path.
                    fork_at(sh, parent, cut, now)
                }
            })();
            lock(&pv.ns).hold(false);
            sh.signal_space();
            r?
        }
        (None, Some(p)) => {
            let h = flushed_history(sh, parent)?;
            let cut = h.resolve(&p)?.ok_or_else(|| Error::InvalidArgument(format!("{p} of vdisk {parent} is before its first block: nothing to fork")))?;
            fork_in(&h, parent, cut, now)?
        }
    };
    let stored = tree::store_fork(&sh.backends, &sh.codec, new, &f);
    if stored < sh.write_quorum {
        return Err(Error::Backend {
            backend: "backends".into(),
            detail: format!("fork record of {new} stored on {stored} backends, write_quorum is {}", sh.write_quorum),
        });
    }
    tracing::info!(vdisk = new, parent, cut = f.cut, ms = started.elapsed().as_secs_f64() * 1e3, "fork created");
    Ok(serde_json::json!({"vdisk": new, "parent": parent, "cut": f.cut, "cut_time": crate::time::format_time(f.cut_timestamp), "parent_key": hex::encode(f.parent_key)}).to_string())
}

/// The fork record of a fork of `parent` at sequence `cut` when its own chain holds it above
/// its base: a binary search over the index records (O(log n) reads), not a load of the whole
/// index. `None`: the slow path decides (and names what is wrong).
fn fork_fast(sh: &Shared, pv: &Vdisk, parent: &str, cut: u64, now: u64) -> Result<Option<Fork>> {
    if pv.last_flushed().map(|l| cut > l).unwrap_or(true) || cut == 0 {
        return Ok(None);
    }
    let Some(head) = crate::seal::find_head(&sh.backends, &sh.sealer, parent)? else { return Ok(None) };
    let above = crate::history::retention::base_of(&sh.backends, &sh.codec, parent).map(|b| b.covers).unwrap_or(0);
    let Some(e) = crate::history::index::find_at(&sh.backends, &sh.codec, parent, &head, above, cut) else { return Ok(None) };
    let ts = if e.last_sequence == cut {
        e.last_timestamp
    } else {
        let agg = crate::seal::fetch_aggregation(&sh.backends, &sh.sealer, &e.key)?;
        agg.blocks.iter().take_while(|b| b.sequence <= cut).last().map(|b| b.timestamp).unwrap_or(e.first_timestamp)
    };
    Ok(Some(Fork { parent: parent.to_string(), parent_key: e.key, parent_height: e.height, cut, cut_timestamp: ts, created: now }))
}

/// The fork record of a fork of `parent` at sequence `cut` (found through its index).
fn fork_at(sh: &Shared, parent: &str, cut: u64, now: u64) -> Result<Fork> {
    fork_in(&flushed_history(sh, parent)?, parent, cut, now)
}

/// The fork record of a fork at sequence `cut` of the history `h` of `parent`.
fn fork_in(h: &History, parent: &str, cut: u64, now: u64) -> Result<Fork> {
    let i = h.index.find_sequence(cut).ok_or_else(|| Error::InvalidArgument(format!("sequence {cut} is not in the history of vdisk {parent}")))?;
    let e = h.index.entries[i];
    let ts = if e.last_sequence == cut {
        e.last_timestamp
    } else {
        h.aggregation(i)?.blocks.iter().take_while(|b| b.sequence <= cut).last().map(|b| b.timestamp).unwrap_or(e.first_timestamp)
    };
    Ok(Fork { parent: parent.to_string(), parent_key: e.key, parent_height: e.height, cut, cut_timestamp: ts, created: now })
}

/// Offers `block` to `vd` in `epoch`, waiting while its buffers are full.
fn push_waiting(sh: &Shared, vd: &Arc<Vdisk>, epoch: u64, mut block: Block) -> Result<()> {
    let deadline = Instant::now() + Duration::from_millis(sh.cfg.server.takeover_timeout_ms.max(60_000));
    loop {
        match sh.push(vd, epoch, block) {
            Push::Received { .. } => return Ok(()),
            Push::Full(b) => {
                if Instant::now() >= deadline || sh.stopping.load(Ordering::SeqCst) {
                    return Err(Error::Timeout(format!("vdisk {}: no room for the rebase's blocks", vd.name())));
                }
                block = b;
                sh.wait_space(Duration::from_millis(20));
            }
            other => return Err(Error::InvalidArgument(format!("vdisk {}: the rebase's block was refused ({other:?})", vd.name()))),
        }
    }
}

/// Rebases the fork `dst` onto its parent `onto` at `at`; returns the JSON answer.
pub(crate) fn rebase(sh: &Shared, dst: &str, onto: &str, at: &PointSpec) -> Result<String> {
    let vd = sh.vdisk(dst)?;
    let f = tree::fork_of(&sh.backends, &sh.codec, dst)?.ok_or_else(|| Error::InvalidArgument(format!("vdisk {dst} is not a fork: nothing to rebase")))?;
    if f.parent != onto {
        return Err(Error::InvalidArgument(format!("vdisk {dst} is a fork of {}, not of {onto}: it can only be rebased onto its parent", f.parent)));
    }
    let _u = lock(&vd.upkeep);
    exclusive(sh, &vd, "being rebased", || {
        drain(sh, &vd, Duration::from_millis(sh.cfg.server.takeover_timeout_ms))?;
        let prior = tree::rebase_of(&sh.backends, &sh.codec, dst)?;
        let (stood_on, own_from, n) = match &prior {
            Some(r) => (r.onto_point, r.own_from, r.rebases + 1),
            None => (f.cut, f.cut + 1, 1),
        };
        let src = flushed_history(sh, onto)?;
        let target = match point(at) {
            Some(p) => src.resolve(&p)?.ok_or_else(|| Error::InvalidArgument(format!("{p} of {onto} is before its first block")))?,
            None => src.index.sequences().map(|(_, l)| l).ok_or_else(|| Error::InvalidArgument(format!("vdisk {onto} has no block")))?,
        };
        if target < stood_on {
            return Err(Error::InvalidArgument(format!("{dst} stands on sequence {stood_on} of {onto}; a rebase goes forward (asked for {target})")));
        }
        let mine = flushed_history(sh, dst)?;
        let dst_last = lock(&vd.ns).last_flushed().unwrap_or(f.cut);
        // The state before: a checkpoint.
        let cp_name = format!("pre-rebase-{n}");
        let cp =
            crate::history::checkpoint::Checkpoint { name: cp_name.clone(), sequence: Some(dst_last), time: sh.clock.wall_ns(), epoch: lock(&vd.ns).epoch() };
        let stored = crate::history::checkpoint::store(&sh.backends, &sh.codec, dst, &cp);
        if stored < sh.write_quorum {
            return Err(Error::Backend { backend: "backends".into(), detail: format!("checkpoint {cp_name} stored on {stored} backends") });
        }
        // An epoch of the rebase's own.
        let epoch = super::attach::current_epoch(sh, &vd).map_err(|e| Error::InvalidArgument(e.to_string()))? + 1;
        super::attach::persist_epoch(sh, &vd, epoch).map_err(|e| Error::InvalidArgument(e.to_string()))?;
        let mut random = [0u8; 16];
        getrandom::getrandom(&mut random).map_err(|e| Error::InvalidArgument(format!("no randomness: {e}")))?;
        {
            let mut r = lock(&vd.random);
            r.clear();
            r.insert(epoch, random);
        }
        let mut next = lock(&vd.ns)
            .begin_epoch(epoch, FirstSequence::Continue(dst_last + 1))
            .map_err(|e| Error::InvalidArgument(format!("cannot begin the rebase's epoch: {e:?}")))?
            .ok_or_else(|| Error::InvalidArgument(format!("vdisk {dst}: its sequence space is exhausted")))?;
        let mut parent_blocks = 0u64;
        let mut own_blocks = 0u64;
        let copy = |b: &Block, next: &mut u64| -> Result<()> {
            let op = Operation::from_ordinal(b.operation).unwrap_or(Operation::Write);
            let nb = Block::new(*next, b.lba, op, b.data.clone(), b.size, sh.clock.wall_ns());
            push_waiting(sh, &vd, epoch, nb)?;
            *next += 1;
            Ok(())
        };
        // The parent's blocks after the point the fork stood on, up to the target.
        let start = src.index.entries.partition_point(|e| e.last_sequence <= stood_on);
        let end = src.index.entries.partition_point(|e| e.first_sequence <= target);
        src.for_each_aggregation(start..end.max(start), 2, |_, agg| {
            for b in agg.blocks.iter().filter(|b| b.sequence > stood_on && b.sequence <= target) {
                copy(b, &mut next)?;
                parent_blocks += 1;
            }
            Ok(true)
        })?;
        // Then the fork's own writes since its fork or its last rebase, in their order.
        let new_own_from = next;
        let own_start = mine.index.entries.partition_point(|e| e.last_sequence < own_from);
        mine.for_each_aggregation(own_start..mine.index.entries.len(), 2, |_, agg| {
            for b in agg.blocks.iter().filter(|b| b.sequence >= own_from && b.sequence <= dst_last) {
                copy(b, &mut next)?;
                own_blocks += 1;
            }
            Ok(true)
        })?;
        drain(sh, &vd, Duration::from_secs(3600))?;
        let r = Rebase { onto: onto.to_string(), onto_point: target, own_from: new_own_from, rebases: n, checkpoint: cp_name.clone() };
        let rec = sh.codec.encode_rebase(dst, &r);
        let stored = tree::write_all(
            &sh.backends,
            "rebase record",
            &Batch { metas: vec![MetaWrite { vdisk: dst, name: tree::REBASE, value: Some(&rec) }], ..Default::default() },
        );
        if stored < sh.write_quorum {
            return Err(Error::Backend { backend: "backends".into(), detail: format!("rebase record stored on {stored} backends") });
        }
        tracing::info!(vdisk = dst, onto, target, parent_blocks, own_blocks, "rebased");
        Ok(serde_json::json!({
            "vdisk": dst, "onto": onto, "onto_point": target, "parent_blocks": parent_blocks, "own_blocks": own_blocks,
            "checkpoint": cp_name, "head": next.saturating_sub(1)
        })
        .to_string())
    })
}

/// Deletes `vdisk` (with `force`, even with forks); returns the JSON answer.
pub(crate) fn delete(sh: &Shared, vdisk: &str, force: bool) -> Result<String> {
    let vd = sh.vdisk(vdisk)?;
    let _u = lock(&vd.upkeep);
    let kids = tree::children(&sh.backends, &sh.codec, vdisk);
    if !kids.is_empty() && !force {
        let names: Vec<&str> = kids.keys().map(String::as_str).collect();
        return Err(Error::InvalidArgument(format!(
            "vdisk {vdisk} has forks ({}): delete them first, or use --force (they keep what they stand on)",
            names.join(", ")
        )));
    }
    exclusive(sh, &vd, "being deleted", || {
        drain(sh, &vd, Duration::from_millis(sh.cfg.server.takeover_timeout_ms))?;
        let h = History::load(sh.backends.clone(), sh.sealer.clone(), vdisk)?;
        let own = h.own_start();
        let keep = kids.values().map(|c| c.cut).max();
        // Own aggregations (and base chunks) past what the forks stand on go.
        let mut gone: Vec<Key> = Vec::new();
        let mut kept_top: Option<crate::history::index::IndexEntry> = None;
        for e in &h.index.entries[own..] {
            match keep {
                Some(k) if e.first_sequence <= k => kept_top = Some(*e),
                _ => gone.push(e.key),
            }
        }
        if let Some(b) = &h.base {
            gone.extend(b.garbage_chunks.iter().copied());
        }
        // Aggregations of fenced writers (index entries off the chain) go too.
        let by_height = crate::history::index::collect(&sh.backends, &sh.codec, vdisk);
        let kept_height = kept_top.map(|e| e.height).unwrap_or(0);
        for (height, es) in &by_height {
            if *height > kept_height {
                gone.extend(es.iter().map(|e| e.key));
            }
        }
        gone.sort_unstable();
        gone.dedup();
        let names: Vec<String> = by_height.keys().filter(|h| **h > kept_height).map(|h| crate::history::index::entry_name(*h)).collect();
        let cps: Vec<String> =
            crate::history::checkpoint::list(&sh.backends, &sh.codec, vdisk).keys().map(|n| crate::history::checkpoint::record_name(n)).collect();
        let parent_child = h.fork.as_ref().map(|f| (f.parent.clone(), format!("{}{vdisk}", tree::CHILD_PREFIX)));
        let stored = if keep.is_none() {
            let mut metas = Vec::new();
            if let Some((p, n)) = &parent_child {
                metas.push(MetaWrite { vdisk: p, name: n, value: None });
            }
            tree::write_all(&sh.backends, "delete", &Batch { deletes: gone.iter().collect(), metas, forget: vec![vdisk], ..Default::default() })
        } else {
            let tomb = sh.codec.encode_deleted(vdisk, &Deleted { kept_up_to: keep.unwrap_or(0), time: sh.clock.wall_ns(), own_kept: kept_top.is_some() });
            let mut metas: Vec<MetaWrite<'_>> = names.iter().chain(cps.iter()).map(|n| MetaWrite { vdisk, name: n, value: None }).collect();
            metas.push(MetaWrite { vdisk, name: tree::REBASE, value: None });
            metas.push(MetaWrite { vdisk, name: tree::DELETED, value: Some(&tomb) });
            // The head moves down to what is kept, under a newer epoch (a head with a lower
            // height wins only so).
            let head = kept_top.map(|e| {
                let epoch = h.head.map(|x| x.epoch).unwrap_or(0) + 1;
                (
                    crate::seal::HeadRecord {
                        height: e.height,
                        key: e.key,
                        first_sequence: e.first_sequence,
                        last_sequence: e.last_sequence,
                        epoch,
                        timestamp: e.sealed_at,
                    }
                    .encode(),
                    epoch,
                    e.height,
                )
            });
            let heads: Vec<HeadWrite<'_>> = head.iter().map(|(r, epoch, height)| HeadWrite { vdisk, epoch: *epoch, height: *height, record: r }).collect();
            tree::write_all(&sh.backends, "delete", &Batch { deletes: gone.iter().collect(), heads, metas, ..Default::default() })
        };
        if stored < sh.write_quorum {
            return Err(Error::Backend {
                backend: "backends".into(),
                detail: format!("delete stored on {stored} backends, write_quorum is {}", sh.write_quorum),
            });
        }
        lock(&sh.vdisks).remove(vdisk);
        let _ = std::fs::remove_file(super::attach::epoch_path(sh, &vd));
        let mut freed = 0u64;
        for b in &sh.backends {
            match b.reclaim() {
                Ok(r) => freed += r.bytes,
                Err(e) => tracing::warn!("{}: reclaim after delete: {e}", b.name()),
            }
        }
        tracing::info!(vdisk, shards = gone.len(), kept_for_forks = ?keep, "vdisk deleted");
        Ok(serde_json::json!({"vdisk": vdisk, "deleted_aggregations": gone.len(), "kept_for_forks": keep, "bytes_freed": freed}).to_string())
    })
}

/// The cleaner: every `clean_interval`, one retention pass over every vdisk, then each backend
/// gives the space back. Runs at nice 19 until the engine closes.
pub(crate) fn cleaner(sh: Arc<Shared>, policy: Policy, interval: Duration) {
    // Background upkeep takes the CPU ingest leaves, as playback does.
    if let Err(e) = rustix::process::setpriority_process(Some(rustix::thread::gettid()), crate::history::playback::NICE) {
        tracing::debug!("cannot lower the cleaner thread's priority: {e}");
    }
    let cleaner = Cleaner { backends: &sh.backends, sealer: &sh.sealer, codec: &sh.codec, write_quorum: sh.write_quorum };
    let mut next = Instant::now() + interval;
    while !sh.closed.load(Ordering::SeqCst) {
        if Instant::now() < next {
            std::thread::sleep(Duration::from_millis(50).min(next.saturating_duration_since(Instant::now())));
            continue;
        }
        next = Instant::now() + interval;
        if sh.stopping.load(Ordering::SeqCst) {
            continue;
        }
        let mut names = std::collections::BTreeSet::new();
        for b in &sh.backends {
            if let Ok(v) = b.vdisks() {
                names.extend(v);
            }
        }
        for v in names {
            if sh.stopping.load(Ordering::SeqCst) {
                break;
            }
            if tree::deleted(&sh.backends, &sh.codec, &v).ok().flatten().is_some() {
                continue;
            }
            let pin = tree::children(&sh.backends, &sh.codec, &v).values().map(|c| c.cut).min();
            let vd = match sh.vdisk(&v) {
                Ok(vd) => vd,
                Err(e) => {
                    tracing::warn!(vdisk = %v, "cleaner: {e}");
                    continue;
                }
            };
            let _u = lock(&vd.upkeep);
            match cleaner.pass(&v, &policy, pin, sh.clock.wall_ns()) {
                Ok(r) if r.folded > 0 || r.deleted_shards > 0 || r.rolled_back > 0 => tracing::info!(vdisk = %v, "cleaner: {r:?}"),
                Ok(_) => {}
                Err(e) => tracing::warn!(vdisk = %v, "cleaner: {e} (the next pass tries again)"),
            }
        }
        for b in &sh.backends {
            if let Err(e) = b.reclaim() {
                tracing::warn!("{}: reclaim: {e}", b.name());
            }
        }
    }
}
