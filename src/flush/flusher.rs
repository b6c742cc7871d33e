//! Flushers: worker threads that seal full buffers. A flusher takes the vdisk's chain lock,
//! pops the oldest full buffer, seals it onto the chain (prev = the last key) and hands shard i
//! to backend i's writer, all under the chain lock, so each backend receives one vdisk's
//! aggregations in chain order. It then goes on sealing while the writes proceed: at most
//! `COMPLETIONS_PER_WORKER` aggregations per flusher wait for their quorum at once (more in
//! flight lets each writer group more shards into one fsync; each holds its shards in memory).

use super::completer::{Event, InFlight};
use super::{lock, writer, Shared, Vdisk};
use crate::history::index::{entry_name, IndexEntry};
use crate::seal::{HeadRecord, SealContext, SealScratch};
use crossbeam_channel::Receiver;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// Aggregations that may wait for their quorum per flusher thread.
pub const COMPLETIONS_PER_WORKER: usize = 4;

/// A message to the flushers.
pub enum Msg {
    /// This vdisk has a full buffer to seal.
    Vdisk(Arc<Vdisk>),
    /// Stop (one per flusher).
    Close,
}

/// A flusher thread's body.
pub(crate) fn run(sh: Arc<Shared>, rx: Receiver<Msg>) {
    let mut scratch = SealScratch::default();
    while let Ok(Msg::Vdisk(vd)) = rx.recv() {
        seal_and_dispatch(&sh, &vd, &mut scratch);
    }
}

/// Seals the vdisk's oldest full buffer onto its chain and hands the shards to the writers.
fn seal_and_dispatch(sh: &Shared, vd: &Arc<Vdisk>, scratch: &mut SealScratch) {
    if !sh.permits.acquire(&sh.closed) {
        return;
    }
    let mut chain = lock(&vd.chain);
    let Some(buf) = lock(&vd.ns).take_full() else {
        sh.permits.release();
        return;
    };
    while scratch.spare_shards() < sh.writers.len() {
        match sh.shard_pool.1.try_recv() {
            Ok(b) => scratch.recycle_shard(b),
            Err(_) => break,
        }
    }
    let random = lock(&vd.random).get(&buf.epoch).copied().unwrap_or([0; 16]);
    let ts = sh.clock.wall_ns();
    let ctx = SealContext { vdisk: vd.name(), epoch: buf.epoch, counter: buf.counter, attach_random: random, prev: chain.prev, timestamp: ts };
    let mut sealed = match sh.sealer.seal_with(scratch, &ctx, &buf.blocks) {
        Ok(s) => s,
        Err(e) => {
            // Not expected (sealing validated blocks cannot fail but for a bug): the writer is
            // fenced so its client reconnects and resends what is not flushed.
            tracing::error!(vdisk = %vd.name(), "sealing failed, the blocks stay unflushed and the writer is disconnected: {e}");
            let mut ns = lock(&vd.ns);
            let freed = ns.abandon(buf.bytes);
            ns.fence();
            drop(ns);
            sh.total.fetch_sub(freed.min(sh.total.load(Ordering::SeqCst)), Ordering::SeqCst);
            vd.send(buf.epoch, super::Ack::Fenced { by: buf.epoch });
            sh.permits.release();
            return;
        }
    };
    let (bytes, epoch, mut blocks) = (buf.bytes, buf.epoch, buf.blocks);
    let entry = IndexEntry::of(chain.height + 1, sealed.key, chain.prev, epoch, ts, &blocks);
    // The blocks are in the shards now: their buffers go back to the pool, and the emptied
    // list becomes the namespace's spare.
    for b in blocks.drain(..) {
        sh.buffers.give(b.data);
    }
    lock(&vd.ns).give_spare(blocks);
    let height = chain.link(sealed.key);
    let head = Arc::new(
        HeadRecord { height, key: sealed.key, first_sequence: sealed.first_sequence, last_sequence: sealed.last_sequence, epoch, timestamp: ts }.encode(),
    );
    let shards: Vec<Arc<Vec<u8>>> = std::mem::take(&mut sealed.shards).into_iter().map(Arc::new).collect();
    let id = sh.next_id.fetch_add(1, Ordering::Relaxed);
    let name: Arc<str> = Arc::from(vd.name());
    let record = Arc::new(sh.codec.encode_entry(vd.name(), &entry));
    let _ = sh.events.send(Event::Sealed(Box::new(InFlight {
        id,
        vdisk: vd.clone(),
        height,
        key: sealed.key,
        first: sealed.first_sequence,
        last: sealed.last_sequence,
        bytes,
        epoch,
        timestamp: ts,
        shards: shards.clone(),
        head: head.clone(),
        entry,
        record: record.clone(),
    })));
    for (i, w) in sh.writers.iter().enumerate() {
        let job = writer::Job {
            id,
            vdisk: name.clone(),
            epoch,
            height,
            key: sealed.key,
            shard: Some(shards[i].clone()),
            head: Some(head.clone()),
            metas: vec![(entry_name(height), Some(record.clone()))],
        };
        w.submit(i, job, &sh.events);
    }
    drop(chain);
}
