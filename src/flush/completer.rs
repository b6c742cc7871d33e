//! The completer: one thread that learns of every sealed aggregation ([`Event::Sealed`]) and of
//! every shard write's outcome ([`Event::Written`]), in whatever order the backends answer.
//!
//! - As soon as `write_quorum` shards of an aggregation are durable it is complete: the
//!   namespace records it, and the flushed acks that this makes possible (in chain order) go to
//!   the sinks of the epochs that sent the blocks. The slowest backends are not waited for.
//! - When every backend has answered, shards that failed or were dropped (a degraded backend)
//!   are recorded in the repair queue, and the shard buffers go back to the flushers.
//! - While the quorum cannot be reached, the failed shards are retried through their backends'
//!   writers with a growing delay (50 ms doubling to 1 s), never by sleeping here; after a
//!   second without quorum the vdisk's writer is told why ([`super::Ack::Waiting`]) and told
//!   again when writes resume ([`super::Ack::Resumed`]).

use super::{lock, writer, Ack, Shared, Vdisk};
use crate::backend::Key;
use crate::history::index::{entry_name, page_name, page_of, IndexEntry, PAGE};
use crossbeam_channel::{Receiver, RecvTimeoutError};
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How one shard write ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Durable on the backend.
    Stored,
    /// The backend refused or failed (its error).
    Failed(String),
    /// Not written: the backend's queue was full (degraded) or its writer stopped.
    Dropped(String),
    /// Refused: the backend holds a newer writer epoch of the vdisk (this one), taken by
    /// another writer (another tlogd took the vdisk over).
    Fenced(u64),
}

/// A sealed aggregation whose shards are being written.
pub struct InFlight {
    /// Id (unique in this engine).
    pub id: u64,
    /// The vdisk.
    pub vdisk: Arc<Vdisk>,
    /// Chain height.
    pub height: u64,
    /// Key.
    pub key: Key,
    /// First sequence.
    pub first: u64,
    /// Last sequence.
    pub last: u64,
    /// Buffered bytes released when complete.
    pub bytes: u64,
    /// Epoch that sealed it.
    pub epoch: u64,
    /// Seal time (wall ns).
    pub timestamp: u64,
    /// The shards, shard i for backend i (kept for retries and repair).
    pub shards: Vec<Arc<Vec<u8>>>,
    /// The encoded head record.
    pub head: Arc<Vec<u8>>,
    /// Its index entry.
    pub entry: IndexEntry,
    /// The encoded index entry record.
    pub record: Arc<Vec<u8>>,
}

/// An event for the completer.
pub enum Event {
    /// An aggregation was sealed and its shards handed to the writers.
    Sealed(Box<InFlight>),
    /// A shard write ended.
    Written {
        /// The aggregation.
        id: u64,
        /// The backend.
        backend: usize,
        /// How.
        outcome: Outcome,
    },
    /// Stop (the engine drained, or gives up at its shutdown bound).
    Close,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum State {
    Pending,
    Stored,
    Failed(String),
    /// Refused by a newer writer epoch (never repaired: the aggregation is not the chain's).
    Fenced,
}

struct Tracked {
    a: InFlight,
    states: Vec<State>,
    acked: bool,
    /// Real time (retries and notices wait real time; the engine's clock drives flush_time).
    sealed_at: Instant,
    retries: u32,
    retry_at: Option<Instant>,
}

impl Tracked {
    fn stored(&self) -> usize {
        self.states.iter().filter(|s| **s == State::Stored).count()
    }
    fn pending(&self) -> usize {
        self.states.iter().filter(|s| **s == State::Pending).count()
    }
}

/// Waiting this long for a quorum tells the writer why.
const NOTICE_AFTER: Duration = Duration::from_secs(1);

/// The completer thread's body.
pub(crate) fn run(sh: Arc<Shared>, rx: Receiver<Event>) {
    let mut live: HashMap<u64, Tracked> = HashMap::new();
    loop {
        let now = Instant::now();
        let next_due = live.values().filter_map(|t| t.retry_at).min();
        let wait = next_due.map(|d| d.saturating_duration_since(now)).unwrap_or(Duration::from_millis(200)).min(Duration::from_millis(200));
        match rx.recv_timeout(wait) {
            Ok(Event::Sealed(a)) => {
                let n = a.shards.len();
                live.insert(a.id, Tracked { a: *a, states: vec![State::Pending; n], acked: false, sealed_at: Instant::now(), retries: 0, retry_at: None });
            }
            Ok(Event::Written { id, backend, outcome }) => {
                let mut dropped = false;
                let done = match live.get_mut(&id) {
                    Some(t) => {
                        if let Outcome::Fenced(by) = &outcome {
                            super::superseded(&sh, &t.a.vdisk, t.a.epoch, *by);
                            // Not acked yet: it never will be; what it holds is dropped.
                            dropped = !t.acked;
                        }
                        if let Some(s) = t.states.get_mut(backend) {
                            *s = match outcome {
                                Outcome::Stored => State::Stored,
                                Outcome::Failed(e) | Outcome::Dropped(e) => State::Failed(e),
                                Outcome::Fenced(_) => State::Fenced,
                            };
                        }
                        !dropped && progress(&sh, t)
                    }
                    None => false,
                };
                if dropped {
                    if let Some(t) = live.remove(&id) {
                        drop_fenced(&sh, t);
                    }
                }
                if done {
                    if let Some(t) = live.remove(&id) {
                        finish(&sh, t);
                    }
                }
            }
            Ok(Event::Close) | Err(RecvTimeoutError::Disconnected) => {
                for (_, t) in live.drain() {
                    if !t.acked {
                        tracing::error!(vdisk = %t.a.vdisk.name(), key = %hex::encode(t.a.key), "engine stopped before the write quorum was reached: these blocks stay unflushed (the client resends them)");
                    }
                }
                return;
            }
            Err(RecvTimeoutError::Timeout) => {}
        }
        let now = Instant::now();
        for t in live.values_mut() {
            // Only a quorum blocked by failures is news (a busy backend is not).
            if !t.acked && t.retries > 0 && t.sealed_at + NOTICE_AFTER <= now && !t.a.vdisk.waiting.swap(true, Ordering::SeqCst) {
                let reason = failures(&sh, t);
                tracing::warn!(vdisk = %t.a.vdisk.name(), "flushed acks wait: write quorum {} not reached for {:?}: {reason}", sh.write_quorum, now - t.sealed_at);
                t.a.vdisk.send_current(Ack::Waiting { reason: format!("write quorum {} not reached: {reason}", sh.write_quorum) });
            }
            if t.retry_at.map(|d| d <= now).unwrap_or(false) {
                t.retry_at = None;
                retry(&sh, t);
            }
        }
    }
}

fn failures(sh: &Shared, t: &Tracked) -> String {
    let v: Vec<String> = t
        .states
        .iter()
        .enumerate()
        .filter_map(|(i, s)| if let State::Failed(e) = s { Some(format!("{}: {e}", sh.backends[i].name())) } else { None })
        .collect();
    if v.is_empty() {
        "backends have not answered yet".into()
    } else {
        v.join("; ")
    }
}

/// Acts on a state change; returns true when every backend has answered and the aggregation is
/// acked (nothing more to do for it but its repair records).
fn progress(sh: &Shared, t: &mut Tracked) -> bool {
    if !t.acked && t.stored() >= sh.write_quorum {
        t.acked = true;
        complete(sh, t);
    }
    if t.pending() > 0 {
        if !t.acked && t.stored() + t.pending() < sh.write_quorum && t.retry_at.is_none() {
            schedule_retry(sh, t);
        }
        return false;
    }
    if t.acked {
        return true;
    }
    if t.retry_at.is_none() {
        schedule_retry(sh, t);
    }
    false
}

fn schedule_retry(sh: &Shared, t: &mut Tracked) {
    if t.retries == 0 || t.retries.is_multiple_of(20) {
        tracing::error!(vdisk = %t.a.vdisk.name(), key = %hex::encode(t.a.key), "write quorum {} not reached ({} stored); retrying: {}", sh.write_quorum, t.stored(), failures(sh, t));
    }
    let delay = Duration::from_millis((50u64 << t.retries.min(5)).min(1000));
    t.retries += 1;
    t.retry_at = Some(Instant::now() + delay);
}

fn retry(sh: &Shared, t: &mut Tracked) {
    if sh.closed.load(Ordering::SeqCst) {
        return;
    }
    for i in 0..t.states.len() {
        if matches!(t.states[i], State::Failed(_)) {
            t.states[i] = State::Pending;
            sh.stats.retries.fetch_add(1, Ordering::Relaxed);
            let job = writer::Job {
                id: t.a.id,
                vdisk: Arc::from(t.a.vdisk.name()),
                epoch: t.a.epoch,
                height: t.a.height,
                key: t.a.key,
                shard: Some(t.a.shards[i].clone()),
                head: Some(t.a.head.clone()),
                metas: vec![(entry_name(t.a.height), Some(t.a.record.clone()))],
            };
            sh.writers[i].submit(i, job, &sh.events);
        }
    }
}

/// The quorum is reached: record the aggregation durable and send what that acknowledges.
fn complete(sh: &Shared, t: &Tracked) {
    let a = &t.a;
    sh.permits.release();
    sh.stats.flushed_aggregations.fetch_add(1, Ordering::Relaxed);
    sh.stats.flush_latency.observe(sh.clock.wall_ns().saturating_sub(a.timestamp) as f64 / 1e9);
    let vd = &a.vdisk;
    vd.counters.aggregations.fetch_add(1, Ordering::Relaxed);
    vd.counters.flushed_blocks.fetch_add(a.entry.blocks as u64, Ordering::Relaxed);
    vd.counters.flushed_bytes.fetch_add(a.entry.data_bytes, Ordering::Relaxed);
    lock(&vd.pending_index).insert(a.height, a.entry);
    let mut ns = lock(&vd.ns);
    let c = ns.complete(a.height, a.first, a.last, a.bytes, a.epoch);
    vd.note_flushed(ns.last_flushed(), ns.last_received());
    drop(ns);
    sh.total.fetch_sub(c.freed.min(sh.total.load(Ordering::SeqCst)), Ordering::SeqCst);
    for (first, last, epoch) in &c.acks {
        vd.send(*epoch, Ack::Flushed { first: *first, last: *last });
    }
    if !c.heights.is_empty() {
        let mut pending = lock(&vd.pending_index);
        let mut tail = lock(&vd.tail);
        for h in &c.heights {
            let Some(e) = pending.remove(h) else { continue };
            tail.push(e);
            if h % PAGE == 0 {
                write_page(sh, vd, page_of(*h), &tail);
                tail.clear();
            }
        }
    }
    if vd.waiting.swap(false, Ordering::SeqCst) {
        tracing::info!(vdisk = %vd.name(), "write quorum reached again: flushed acks resume");
        vd.send_current(Ack::Resumed);
    }
    sh.signal_space();
}

/// An index page is complete (its last aggregation is durable): every backend's writer stores
/// the page and deletes its loose entries in one batch, after the page's aggregations (FIFO).
/// A page whose entries the engine does not all hold (they predate this process and were not
/// loaded) is left as loose entries, which readers take as well.
fn write_page(sh: &Shared, vd: &Vdisk, page: u64, entries: &[IndexEntry]) {
    let complete = entries.len() as u64 == PAGE && entries.iter().enumerate().all(|(i, e)| e.height == page * PAGE + 1 + i as u64);
    if !complete {
        tracing::debug!(vdisk = %vd.name(), page, "index page not written: {} of its entries are held", entries.len());
        return;
    }
    let rec = Arc::new(sh.codec.encode_page(vd.name(), page, entries));
    let mut metas = vec![(page_name(page), Some(rec))];
    metas.extend(entries.iter().map(|e| (entry_name(e.height), None)));
    let name: Arc<str> = Arc::from(vd.name());
    // Fenced like the aggregations: a superseded writer's page is refused too.
    let epoch = lock(&vd.ns).epoch();
    for (i, w) in sh.writers.iter().enumerate() {
        let job = writer::Job { id: 0, vdisk: name.clone(), epoch, height: 0, key: [0; 32], shard: None, head: None, metas: metas.clone() };
        w.submit(i, job, &sh.events);
    }
}

/// An aggregation of a fenced epoch that did not reach its quorum: its bytes are given back,
/// its shards recycled; nothing is acked or repaired (later answers for it are ignored).
fn drop_fenced(sh: &Shared, t: Tracked) {
    sh.permits.release();
    let freed = lock(&t.a.vdisk.ns).abandon(t.a.bytes);
    sh.total.fetch_sub(freed.min(sh.total.load(Ordering::SeqCst)), Ordering::SeqCst);
    tracing::info!(vdisk = %t.a.vdisk.name(), height = t.a.height, epoch = t.a.epoch, "aggregation of a fenced epoch dropped unflushed");
    for shard in t.a.shards {
        if let Ok(buf) = Arc::try_unwrap(shard) {
            let _ = sh.shard_pool.0.try_send(buf);
        }
    }
    sh.signal_space();
}

/// Every backend answered: record the missing shards for repair, recycle the buffers.
fn finish(sh: &Shared, t: Tracked) {
    let missing: Vec<(usize, String)> =
        t.states.iter().enumerate().filter_map(|(i, s)| if let State::Failed(e) = s { Some((i, e.clone())) } else { None }).collect();
    if !missing.is_empty() {
        sh.stats.repairs_queued.fetch_add(missing.len() as u64, Ordering::Relaxed);
        let a = &t.a;
        sh.repair.record(super::repair::Entry {
            vdisk: a.vdisk.name().to_string(),
            key: a.key,
            height: a.height,
            epoch: a.epoch,
            head: a.head.as_ref().clone(),
            missing: missing.iter().map(|(i, _)| *i).collect(),
        });
        for (i, e) in &missing {
            tracing::warn!(vdisk = %a.vdisk.name(), key = %hex::encode(a.key), shard = i, "shard missing on {} ({e}); recorded for repair", sh.backends[*i].name());
        }
    }
    for shard in t.a.shards {
        if let Ok(buf) = Arc::try_unwrap(shard) {
            let _ = sh.shard_pool.0.try_send(buf);
        }
    }
}
