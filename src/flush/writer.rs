//! Shard writers: one thread and one bounded queue per backend (FIFO, so each backend sees one
//! vdisk's aggregations in chain order). A writer groups what is queued into one durable batch
//! (`Backend::put_batch`: one fsync for many shards) and reports each job's outcome to the
//! completer.
//!
//! A backend that falls `backend.queue_bytes` behind (down, stalled, or slower than the rest)
//! is marked *degraded* (logged): new shards for it are not queued but reported dropped, so the
//! completer records them for repair; it is healthy again (logged) once its queue has drained
//! below half the bound and a write succeeded.

use super::completer::{Event, Outcome};
use crate::backend::{Backend, Batch, HeadWrite, Key, MetaWrite, ShardWrite};
use crossbeam_channel::{Receiver, Sender};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

/// Jobs one batch takes at most.
const BATCH_JOBS: usize = 64;
/// Shard bytes one batch takes at most.
const BATCH_BYTES: u64 = 64 << 20;

/// One shard (with the head record and index entry of its aggregation) for one backend, or,
/// without a shard, metadata records alone (an index page and the deletes of its entries).
pub struct Job {
    /// The aggregation's id in the completer (0: not an aggregation, nothing to report).
    pub id: u64,
    /// The vdisk.
    pub vdisk: Arc<str>,
    /// Epoch that sealed it.
    pub epoch: u64,
    /// Chain height of the aggregation.
    pub height: u64,
    /// Its key.
    pub key: Key,
    /// The shard for this backend.
    pub shard: Option<Arc<Vec<u8>>>,
    /// The aggregation's encoded head record.
    pub head: Option<Arc<Vec<u8>>>,
    /// Metadata records to set (`Some`) or delete (`None`).
    pub metas: Vec<(String, Option<Arc<Vec<u8>>>)>,
}

impl Job {
    fn bytes(&self) -> u64 {
        self.shard.as_ref().map(|s| s.len() as u64).unwrap_or(0)
            + self.metas.iter().map(|(n, v)| n.len() as u64 + v.as_ref().map(|v| v.len() as u64).unwrap_or(0)).sum::<u64>()
    }
}

/// A message to a writer thread.
pub enum Msg {
    /// Write this.
    Write(Job),
    /// Finish what is queued and stop.
    Close,
}

/// The engine's side of one backend's writer.
pub struct Writer {
    tx: Sender<Msg>,
    queued: Arc<AtomicU64>,
    degraded: Arc<AtomicBool>,
    max_bytes: u64,
    name: String,
    /// Seconds per batch write, failed writes, and whether the last one failed (metrics).
    pub latency: prometheus::Histogram,
    errors: Arc<AtomicU64>,
    failing: Arc<AtomicBool>,
}

impl Writer {
    /// Starts nothing: returns the writer handle and what its thread runs on.
    pub fn new(name: String, max_bytes: u64) -> (Writer, Receiver<Msg>) {
        let (tx, rx) = crossbeam_channel::unbounded();
        let latency = super::latency_histogram("tlog_backend_write_latency_seconds", "Seconds per batch write to the backend.", &[("backend", &name)]);
        let w = Writer {
            tx,
            queued: Arc::new(AtomicU64::new(0)),
            degraded: Arc::new(AtomicBool::new(false)),
            max_bytes,
            name,
            latency,
            errors: Arc::new(AtomicU64::new(0)),
            failing: Arc::new(AtomicBool::new(false)),
        };
        (w, rx)
    }

    /// Queues a job, or reports it dropped (the backend is too far behind: degraded).
    pub fn submit(&self, backend: usize, job: Job, events: &Sender<Event>) {
        let n = job.bytes();
        let q = self.queued.load(Ordering::SeqCst);
        if job.shard.is_some() && q > 0 && q + n > self.max_bytes {
            if !self.degraded.swap(true, Ordering::SeqCst) {
                tracing::warn!(backend = %self.name, queued = q, "backend degraded: {q} bytes queued (backend.queue_bytes = {}); its shards go to the repair queue until it catches up", self.max_bytes);
            }
            let _ = events.send(Event::Written { id: job.id, backend, outcome: Outcome::Dropped("backend degraded: its write queue is full".into()) });
            return;
        }
        self.queued.fetch_add(n, Ordering::SeqCst);
        let id = job.id;
        if self.tx.send(Msg::Write(job)).is_err() {
            self.queued.fetch_sub(n, Ordering::SeqCst);
            let _ = events.send(Event::Written { id, backend, outcome: Outcome::Dropped("writer stopped".into()) });
        }
    }

    /// Whether the backend is degraded.
    pub fn degraded(&self) -> bool {
        self.degraded.load(Ordering::SeqCst)
    }

    /// The backend's metrics: degraded also when its last write failed.
    pub fn metrics(&self) -> super::BackendMetrics {
        super::BackendMetrics {
            name: self.name.clone(),
            errors: self.errors.load(Ordering::Relaxed),
            queued_bytes: self.queued.load(Ordering::Relaxed),
            degraded: self.degraded() || self.failing.load(Ordering::Relaxed),
        }
    }

    /// Shard bytes queued.
    pub fn queued(&self) -> u64 {
        self.queued.load(Ordering::SeqCst)
    }

    /// Asks the thread to stop after what is queued.
    pub fn close(&self) {
        let _ = self.tx.send(Msg::Close);
    }

    /// The thread's body.
    pub fn runner(&self, backend: usize, store: Arc<dyn Backend>, rx: Receiver<Msg>, events: Sender<Event>) -> impl FnOnce() + Send + 'static {
        let (queued, degraded, max, name) = (self.queued.clone(), self.degraded.clone(), self.max_bytes, self.name.clone());
        let health = Health { latency: self.latency.clone(), errors: self.errors.clone(), failing: self.failing.clone() };
        move || run(backend, store, rx, events, queued, degraded, max, name, health)
    }
}

/// What a writer thread records of its backend's writes.
struct Health {
    latency: prometheus::Histogram,
    errors: Arc<AtomicU64>,
    failing: Arc<AtomicBool>,
}

#[allow(clippy::too_many_arguments)]
fn run(
    i: usize,
    backend: Arc<dyn Backend>,
    rx: Receiver<Msg>,
    events: Sender<Event>,
    queued: Arc<AtomicU64>,
    degraded: Arc<AtomicBool>,
    max: u64,
    name: String,
    health: Health,
) {
    let mut closing = false;
    while !closing {
        let first = match rx.recv() {
            Ok(Msg::Write(j)) => j,
            Ok(Msg::Close) | Err(_) => return,
        };
        let mut bytes = first.bytes();
        let mut jobs = vec![first];
        while jobs.len() < BATCH_JOBS && bytes < BATCH_BYTES {
            match rx.try_recv() {
                Ok(Msg::Write(j)) => {
                    bytes += j.bytes();
                    jobs.push(j);
                }
                Ok(Msg::Close) => {
                    closing = true;
                    break;
                }
                Err(_) => break,
            }
        }
        let mut batch = Batch::default();
        for j in &jobs {
            if let Some(s) = &j.shard {
                batch.shards.push(ShardWrite { vdisk: &j.vdisk, epoch: j.epoch, key: &j.key, bytes: s.as_slice() });
            }
            // The newest head per vdisk (a batch may hold several aggregations of one vdisk).
            if let Some(r) = &j.head {
                let h = HeadWrite { vdisk: &j.vdisk, epoch: j.epoch, height: j.height, record: r.as_slice() };
                match batch.heads.iter_mut().find(|x| x.vdisk == h.vdisk) {
                    Some(x) if (h.epoch, h.height) > (x.epoch, x.height) => *x = h,
                    Some(_) => {}
                    None => batch.heads.push(h),
                }
            }
            for (name, v) in &j.metas {
                batch.metas.push(MetaWrite { vdisk: &j.vdisk, name, value: v.as_ref().map(|v| v.as_slice()) });
            }
        }
        // Each vdisk's records are stored only while this backend holds no newer writer epoch
        // for it (a takeover by another tlogd fenced it).
        let mut fences: Vec<(&str, u64)> = Vec::new();
        for j in jobs.iter().filter(|j| j.epoch > 0) {
            match fences.iter_mut().find(|(v, _)| *v == &*j.vdisk) {
                Some(f) => f.1 = f.1.min(j.epoch),
                None => fences.push((&j.vdisk, j.epoch)),
            }
        }
        let t0 = std::time::Instant::now();
        let r = backend.write_fenced(&batch, &fences).map_err(|e| e.to_string());
        health.latency.observe(t0.elapsed().as_secs_f64());
        if r.is_err() {
            health.errors.fetch_add(1, Ordering::Relaxed);
        }
        health.failing.store(r.is_err(), Ordering::Relaxed);
        drop(fences);
        drop(batch);
        queued.fetch_sub(bytes.min(queued.load(Ordering::SeqCst)), Ordering::SeqCst);
        if r.is_ok() && degraded.load(Ordering::SeqCst) && queued.load(Ordering::SeqCst) < max / 2 {
            degraded.store(false, Ordering::SeqCst);
            tracing::warn!(backend = %name, "backend caught up: no longer degraded");
        }
        for j in jobs {
            // The shard is released before the reply, so the completer can reuse its buffer.
            let Job { id, shard, vdisk: j_vdisk, .. } = j;
            drop(shard);
            if id == 0 {
                if let Err(e) = &r {
                    tracing::debug!(backend = %name, "index page write failed (its entries stay): {e}");
                }
                continue;
            }
            let outcome = match &r {
                Ok(refused) => match refused.iter().find(|(v, _)| **v == *j_vdisk) {
                    Some((_, by)) => Outcome::Fenced(*by),
                    None => Outcome::Stored,
                },
                Err(e) => Outcome::Failed(e.clone()),
            };
            let _ = events.send(Event::Written { id, backend: i, outcome });
        }
    }
}
