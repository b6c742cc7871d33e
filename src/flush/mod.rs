//! The engine: everything between a session's validated blocks and durable shards.
//!
//! ```text
//!  session ── push ──> namespace (per vdisk, flush/… under a lock)
//!                        │ full buffer
//!                        ▼
//!  flusher × workers ── seal (seal::Sealer) ── shard i ──> writer i (one per backend, bounded)
//!        │ Sealed                                             │ Written
//!        ▼                                                    ▼
//!  completer: quorum reached → namespace.complete → typed acks (Ack) to the connection
//!             all answered   → missing shards → repair queue → repairer (background)
//!  timer: flush_time, from the injected clock          attach workers: load, fence, drain
//! ```
//!
//! [`pipeline`] starts and stops the threads; one file per worker kind: [`flusher`],
//! [`completer`], [`writer`], [`timer`], [`attach`], [`repair`]. The per-vdisk rules are
//! `namespace`'s plain transitions; this module only runs them.
//!
//! Durability (DESIGN.md §5): a block is acked flushed once its aggregation's shards are
//! durable on `write_quorum` backends; the ack never waits for the slowest backend. A backend
//! that lags keeps its own bounded queue (`backend.queue_bytes`); past it it is marked degraded
//! and its shards go straight to the repair queue until it catches up. Failed writes are
//! retried through the same per-backend writer while the quorum is not reached. Acks belong to
//! an epoch and reach only that epoch's connection.

pub mod attach;
pub(crate) mod branch;
pub mod completer;
pub mod flusher;
pub mod pipeline;
pub mod pool;
pub mod repair;
pub mod timer;
pub mod writer;

use crate::backend::Backend;
use crate::config::Config;
use crate::error::Result;
use crate::history::index::{entry_name, page_name, page_of, Index, IndexCodec, IndexEntry, PAGE};
use crate::namespace::{Chain, Limits, Namespace};
use crate::seal::Sealer;
use crate::time::Clock;
use crate::wire::{Block, ControlRequest, ControlResponse, PlaybackRequest};
use crossbeam_channel::Sender;
use prometheus::Histogram;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

pub use pipeline::Engine;

/// What the engine tells a connection asynchronously (the session or front-end encodes it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ack {
    /// Blocks `first..=last` are durable.
    Flushed {
        /// First sequence.
        first: u64,
        /// Last sequence.
        last: u64,
    },
    /// The connection's epoch was superseded by epoch `by` (a takeover).
    Fenced {
        /// The new epoch.
        by: u64,
    },
    /// Received blocks cannot be made durable yet; `reason` says why (e.g. a full disk).
    Waiting {
        /// The backends' errors.
        reason: String,
    },
    /// Durable writes go on again after [`Ack::Waiting`].
    Resumed,
    /// Frames already encoded (a playback's blocks), sent as they are.
    Frames(Vec<u8>),
}

/// Where a connection's asynchronous acks go.
pub type AckSink = Sender<Ack>;

/// An attach the session asks for (after it checked version, vdisk id and token).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttachRequest {
    /// The vdisk.
    pub vdisk: String,
    /// The client's first sequence (used when nothing of the vdisk is flushed).
    pub first_sequence: u64,
    /// Jump forward to `first_sequence` (refused when the vdisk's history holds it).
    pub reset_first_sequence: bool,
    /// The epoch of a reconnecting writer (0: a new writer). Refused with
    /// [`AttachError::Fenced`] when a newer epoch took the vdisk over since.
    pub resume_epoch: u64,
}

/// A successful attach.
#[derive(Clone, Debug)]
pub struct Attached<H> {
    /// The engine's handle for the connection's later calls.
    pub handle: H,
    /// The connection's epoch.
    pub epoch: u64,
    /// The durable head at the moment the epoch began.
    pub last_flushed: Option<u64>,
    /// The sequence the engine takes next from this writer (`None`: the space is exhausted).
    pub next_sequence: Option<u64>,
}

/// Why an attach failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AttachError {
    /// The engine is stopping.
    ShuttingDown,
    /// `resetFirstSequence` would reuse sequences the vdisk's history holds.
    WouldReuse {
        /// The requested first sequence.
        requested: u64,
        /// The last sequence the vdisk already holds.
        last: u64,
    },
    /// The previous writer's blocks did not become durable within `server.takeover_timeout_ms`.
    Busy(String),
    /// The vdisk's state could not be read or written (backends, epoch file).
    Storage(String),
    /// A reconnecting writer whose epoch was superseded: a newer writer owns the vdisk.
    Fenced {
        /// The writer's epoch.
        epoch: u64,
        /// The newer epoch.
        by: u64,
    },
}

impl std::fmt::Display for AttachError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AttachError::ShuttingDown => write!(f, "server is shutting down"),
            AttachError::WouldReuse { requested, last } => write!(
                f,
                "resetFirstSequence to {requested} would reuse sequences: the vdisk's history already holds sequences up to {last}, and a position in its history must be unique (continue after {last})"
            ),
            AttachError::Busy(d) => write!(f, "takeover not done yet: {d}; retry"),
            AttachError::Storage(d) => write!(f, "{d}"),
            AttachError::Fenced { epoch, by } => write!(f, "this writer's epoch {epoch} was superseded by epoch {by}: a newer writer owns the vdisk"),
        }
    }
}

/// Work in progress (an attach, a control request): the session polls it ([`Ticket::poll`])
/// instead of blocking its front-end (a userspace stack's poll loop serves many connections).
pub struct Ticket<T> {
    slot: Arc<(Mutex<Option<T>>, Condvar)>,
}

/// The answer of an attach.
pub type AttachResult<H> = std::result::Result<Attached<H>, AttachError>;

/// An attach in progress.
pub type AttachTicket<H> = Ticket<AttachResult<H>>;

impl<T> Clone for Ticket<T> {
    fn clone(&self) -> Self {
        Ticket { slot: self.slot.clone() }
    }
}

impl<T> Default for Ticket<T> {
    fn default() -> Self {
        Ticket { slot: Arc::new((Mutex::new(None), Condvar::new())) }
    }
}

impl<T> Ticket<T> {
    /// A ticket already answered.
    pub fn ready(r: T) -> Self {
        let t = Ticket::default();
        t.finish(r);
        t
    }

    /// Answers the ticket.
    pub fn finish(&self, r: T) {
        if let Ok(mut g) = self.slot.0.lock() {
            *g = Some(r);
            self.slot.1.notify_all();
        }
    }

    /// The answer, once there is one (taken: a second poll after `Some` gives `None`).
    pub fn poll(&self) -> Option<T> {
        self.slot.0.lock().ok().and_then(|mut g| g.take())
    }

    /// Waits at most `timeout` for the answer.
    pub fn wait(&self, timeout: Duration) -> Option<T> {
        let g = self.slot.0.lock().ok()?;
        let (mut g, _) = self.slot.1.wait_timeout_while(g, timeout, |v| v.is_none()).ok()?;
        g.take()
    }
}

/// What a push did, as the session needs it (the namespace's [`crate::namespace::Push`] without
/// the block on success).
pub use crate::namespace::Push;

/// The engine as a session drives it. [`Engine`] implements it; session tests use a fake.
pub trait Core: Send + Sync + 'static {
    /// The engine's handle of an attached connection.
    type Handle: Clone + Send + 'static;

    /// Starts attaching a connection to a vdisk: load its state, fence and drain a previous
    /// writer, begin the next epoch. `sink` receives the connection's asynchronous acks.
    fn attach(&self, req: AttachRequest, sink: AckSink) -> AttachTicket<Self::Handle>;

    /// Offers a validated block of the connection `h` (epoch `epoch`).
    fn push(&self, h: &Self::Handle, epoch: u64, block: Block) -> Push;

    /// Flushes the connection's vdisk's current buffer now.
    fn force_flush(&self, h: &Self::Handle);

    /// The connection ended: its later acks are dropped.
    fn detach(&self, h: &Self::Handle, epoch: u64);

    /// Waits until memory may have been freed or an attach finished, at most `timeout`.
    fn wait_space(&self, timeout: Duration);

    /// An owned copy of block data, in a reused buffer when one is free.
    fn copy_data(&self, data: &[u8]) -> Vec<u8>;

    /// Starts a control request (a checkpoint, a history summary).
    fn control(&self, req: ControlRequest) -> Ticket<ControlResponse>;

    /// Starts streaming `vdisk`'s history as `req` asks: encoded frames go to `out` (a bounded
    /// channel: a slow reader holds the stream back), until the end, an error, or `cancel`.
    fn playback(&self, vdisk: &str, req: PlaybackRequest, out: Sender<Ack>, cancel: Arc<AtomicBool>);

    /// Starts serving `vdisk` as of the point `at` on demand ([`crate::history::playback::run_read`]):
    /// the index up to it, then the aggregations whose positions arrive on `requests`, as
    /// encoded frames on `out`, until `requests` closes or `cancel`.
    fn read(&self, vdisk: &str, at: crate::wire::PointSpec, requests: crossbeam_channel::Receiver<u32>, out: Sender<Ack>, cancel: Arc<AtomicBool>);
}

/// Buckets of the latency histograms, seconds (0.5 ms to about 16 s).
pub fn latency_buckets() -> Vec<f64> {
    (0..16).map(|i| 0.0005 * f64::from(1u32 << i)).collect()
}

/// A latency histogram named `name` with [`latency_buckets`] (and `labels`, constant).
// The names, helps and buckets are constants (a unit test builds every one): the fallback's
// `expect` cannot fire.
#[allow(clippy::expect_used)]
pub fn latency_histogram(name: &str, help: &str, labels: &[(&str, &str)]) -> Histogram {
    let mut o = prometheus::HistogramOpts::new(name, help).buckets(latency_buckets());
    for (k, v) in labels {
        o = o.const_label(*k, *v);
    }
    Histogram::with_opts(o)
        .unwrap_or_else(|_| Histogram::with_opts(prometheus::HistogramOpts::new("tlog_unnamed_seconds", "latency")).expect("a constant histogram"))
}

/// What a vdisk's traffic counts (metrics).
#[derive(Debug, Default)]
pub struct VdiskCounters {
    /// Blocks received.
    pub received_blocks: AtomicU64,
    /// Bytes of block data received.
    pub received_bytes: AtomicU64,
    /// Blocks in durable aggregations.
    pub flushed_blocks: AtomicU64,
    /// Bytes of block data in durable aggregations (writes; zeroed ranges count nothing).
    pub flushed_bytes: AtomicU64,
    /// Durable aggregations.
    pub aggregations: AtomicU64,
}

/// One vdisk as the metrics show it.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct VdiskMetrics {
    /// The vdisk.
    pub name: String,
    /// Blocks and bytes received, blocks and bytes flushed, aggregations.
    pub received_blocks: u64,
    /// Bytes of block data received.
    pub received_bytes: u64,
    /// Blocks flushed.
    pub flushed_blocks: u64,
    /// Bytes of block data flushed.
    pub flushed_bytes: u64,
    /// Durable aggregations.
    pub aggregations: u64,
    /// Bytes received and not yet flushed.
    pub buffered_bytes: u64,
    /// Seconds since the oldest block not yet flushed was received (0: none): what a crash of
    /// this host would lose unless the client resends it (the RPO).
    pub unflushed_age_seconds: f64,
    /// The last flushed sequence.
    pub last_flushed: Option<u64>,
    /// The writer epoch.
    pub epoch: u64,
    /// Whether a writer is attached.
    pub attached: bool,
}

/// One backend as the metrics show it.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct BackendMetrics {
    /// Its name.
    pub name: String,
    /// Write batches that failed.
    pub errors: u64,
    /// Bytes of shards queued for it.
    pub queued_bytes: u64,
    /// Its queue passed `backend.queue_bytes` (its shards go to repair), or its last write
    /// failed.
    pub degraded: bool,
}

/// The engine as the metrics show it.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct EngineMetrics {
    /// Loaded vdisks, by name.
    pub vdisks: Vec<VdiskMetrics>,
    /// Backends, shard index order.
    pub backends: Vec<BackendMetrics>,
    /// Aggregations acked flushed.
    pub flushed_aggregations: u64,
    /// Shard writes retried.
    pub retries: u64,
    /// Shards recorded for repair.
    pub repairs_queued: u64,
    /// Shards waiting for repair.
    pub repair_backlog: u64,
    /// Bytes buffered by all vdisks.
    pub buffered_bytes: u64,
    /// Playbacks running (follows and replications among them), by vdisk: (vdisk, how many,
    /// the most flushed blocks one of them has yet to stream).
    pub playbacks: Vec<(String, u64, u64)>,
    /// Scrub: passes done, aggregations in the last, problems found in all, unrepaired in the
    /// last, when the last ended (s since the Unix epoch, 0: none).
    pub scrub: (u64, u64, u64, u64, u64),
}

/// One vdisk inside the engine: its namespace (state transitions), chain position, the sink of
/// its current writer, and the random bytes of the current attach (for nonces).
pub struct Vdisk {
    name: String,
    ns: Mutex<Namespace>,
    chain: Mutex<Chain>,
    sink: Mutex<Option<(u64, AckSink)>>,
    /// Serialises takeovers of this vdisk.
    attach_lock: Mutex<()>,
    /// Random bytes drawn at each attach, by epoch (for the nonce of its aggregations).
    random: Mutex<HashMap<u64, [u8; 16]>>,
    /// A `Waiting` notice was sent and no `Resumed` yet.
    waiting: AtomicBool,
    /// Index entries of aggregations durable before the ones before them, by height.
    pending_index: Mutex<std::collections::BTreeMap<u64, IndexEntry>>,
    /// Index entries of the current (incomplete) index page, acked, in chain order.
    tail: Mutex<Vec<IndexEntry>>,
    /// What keeps writers out meanwhile (a rebase or a delete), if anything: an attach is
    /// answered busy (the client retries).
    busy: Mutex<Option<String>>,
    /// Serialises the history operations on this vdisk (fold, rebase, delete).
    upkeep: Mutex<()>,
    /// Traffic counts.
    pub counters: VdiskCounters,
    /// (first sequence, when received) of each buffer not yet wholly flushed, oldest first.
    unflushed: Mutex<std::collections::VecDeque<(u64, Instant)>>,
    /// Another writer took this vdisk over in the backends: this state is stale (the next attach
    /// loads the vdisk anew).
    stale: AtomicBool,
}

impl Vdisk {
    /// The vdisk id.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Drops the unflushed marks that `last_flushed` covers (all of them once it reaches
    /// `last_received`).
    fn note_flushed(&self, last_flushed: Option<u64>, last_received: Option<u64>) {
        let mut u = lock(&self.unflushed);
        if last_flushed >= last_received {
            u.clear();
            return;
        }
        let next = last_flushed.map(|l| l.saturating_add(1)).unwrap_or(0);
        while u.len() > 1 && u[1].0 <= next {
            u.pop_front();
        }
    }

    /// The vdisk's metrics now.
    pub fn metrics(&self) -> VdiskMetrics {
        let c = &self.counters;
        let ns = lock(&self.ns);
        let (buffered, last_flushed, epoch) = (ns.buffered(), ns.last_flushed(), ns.epoch());
        drop(ns);
        VdiskMetrics {
            name: self.name.clone(),
            received_blocks: c.received_blocks.load(Ordering::Relaxed),
            received_bytes: c.received_bytes.load(Ordering::Relaxed),
            flushed_blocks: c.flushed_blocks.load(Ordering::Relaxed),
            flushed_bytes: c.flushed_bytes.load(Ordering::Relaxed),
            aggregations: c.aggregations.load(Ordering::Relaxed),
            buffered_bytes: buffered,
            unflushed_age_seconds: lock(&self.unflushed).front().map(|(_, t)| t.elapsed().as_secs_f64()).unwrap_or(0.0),
            last_flushed,
            epoch,
            attached: lock(&self.sink).is_some(),
        }
    }

    /// Last flushed sequence.
    pub fn last_flushed(&self) -> Option<u64> {
        lock(&self.ns).last_flushed()
    }

    fn send(&self, epoch: u64, ack: Ack) {
        if let Some((e, s)) = lock(&self.sink).as_ref() {
            if *e == epoch {
                let _ = s.send(ack);
            }
        }
    }

    fn send_current(&self, ack: Ack) {
        if let Some((_, s)) = lock(&self.sink).as_ref() {
            let _ = s.send(ack);
        }
    }
}

/// The map slot of a vdisk: loaded once (backend I/O outside the map's lock), by the first
/// attach that needs it.
#[derive(Default)]
struct Slot {
    loading: Mutex<()>,
    vdisk: OnceLock<Arc<Vdisk>>,
}

/// Counters of the engine (for logs, tests and metrics).
#[derive(Debug)]
pub struct Stats {
    /// Aggregations acked flushed.
    pub flushed_aggregations: AtomicU64,
    /// Seconds from an aggregation's seal to its write quorum (the flushed ack).
    pub flush_latency: Histogram,
    /// Shards recorded for repair.
    pub repairs_queued: AtomicU64,
    /// Shard writes retried because the quorum was not reached.
    pub retries: AtomicU64,
    /// Scheduled scrub passes completed.
    pub scrub_passes: AtomicU64,
    /// Aggregations the last pass checked.
    pub scrub_aggregations: AtomicU64,
    /// Problems found by all passes.
    pub scrub_findings: AtomicU64,
    /// Problems the last pass could not repair.
    pub scrub_unrepaired: AtomicU64,
    /// When the last pass ended, s since the Unix epoch (0: none yet).
    pub scrub_completed_at: AtomicU64,
}

impl Default for Stats {
    fn default() -> Stats {
        Stats {
            flushed_aggregations: AtomicU64::new(0),
            flush_latency: latency_histogram("tlog_flush_latency_seconds", "Seconds from an aggregation's seal to its write quorum.", &[]),
            repairs_queued: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            scrub_passes: AtomicU64::new(0),
            scrub_aggregations: AtomicU64::new(0),
            scrub_findings: AtomicU64::new(0),
            scrub_unrepaired: AtomicU64::new(0),
            scrub_completed_at: AtomicU64::new(0),
        }
    }
}

/// A counting semaphore bounding the aggregations that wait for their quorum.
struct Permits {
    free: Mutex<usize>,
    cond: Condvar,
}

impl Permits {
    fn new(n: usize) -> Permits {
        Permits { free: Mutex::new(n.max(1)), cond: Condvar::new() }
    }

    /// Takes a permit; false when `stop` is set while waiting.
    fn acquire(&self, stop: &AtomicBool) -> bool {
        let mut g = lock(&self.free);
        while *g == 0 {
            if stop.load(Ordering::SeqCst) {
                return false;
            }
            g = self.cond.wait_timeout(g, Duration::from_millis(100)).map(|(g, _)| g).unwrap_or_else(|p| p.into_inner().0);
        }
        *g -= 1;
        true
    }

    fn release(&self) {
        *lock(&self.free) += 1;
        self.cond.notify_one();
    }
}

/// State shared by the engine's threads.
pub(crate) struct Shared {
    cfg: Arc<Config>,
    limits: Limits,
    write_quorum: usize,
    sealer: Arc<Sealer>,
    codec: IndexCodec,
    backends: Vec<Arc<dyn Backend>>,
    clock: Arc<dyn Clock>,
    vdisks: Mutex<HashMap<String, Arc<Slot>>>,
    total: AtomicU64,
    flush_tx: Sender<flusher::Msg>,
    writers: Vec<writer::Writer>,
    events: Sender<completer::Event>,
    permits: Permits,
    shard_pool: (Sender<Vec<u8>>, crossbeam_channel::Receiver<Vec<u8>>),
    buffers: pool::BufferPool,
    space: (Mutex<u64>, Condvar),
    /// No new attach, no new work: set by shutdown.
    stopping: AtomicBool,
    /// The threads end: set once shutdown drained.
    closed: AtomicBool,
    repair: Arc<repair::Queue>,
    attach_tx: Sender<Option<attach::Job>>,
    /// Playbacks running: id -> (vdisk, flushed blocks yet to stream).
    playbacks: Mutex<HashMap<u64, (String, u64)>>,
    next_id: AtomicU64,
    stats: Stats,
}

/// Locks a mutex; a lock poisoned by a panic in another thread is taken as it is (the panic
/// itself is logged by the panicking thread; the state a namespace lock guards is updated by
/// single transitions that cannot be torn by a panic in the engine's own code).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    /// The engine's metrics now: every loaded vdisk, every backend, the repair queue.
    pub(crate) fn metrics(&self) -> EngineMetrics {
        let mut vdisks: Vec<VdiskMetrics> = self.loaded().iter().map(|v| v.metrics()).collect();
        vdisks.sort_by(|a, b| a.name.cmp(&b.name));
        let st = &self.stats;
        EngineMetrics {
            vdisks,
            backends: self.writers.iter().map(|w| w.metrics()).collect(),
            flushed_aggregations: st.flushed_aggregations.load(Ordering::Relaxed),
            retries: st.retries.load(Ordering::Relaxed),
            repairs_queued: st.repairs_queued.load(Ordering::Relaxed),
            repair_backlog: self.repair.backlog() as u64,
            buffered_bytes: self.total.load(Ordering::SeqCst),
            playbacks: {
                let mut by: std::collections::BTreeMap<String, (u64, u64)> = Default::default();
                for (v, b) in lock(&self.playbacks).values() {
                    let e = by.entry(v.clone()).or_default();
                    e.0 += 1;
                    e.1 = e.1.max(*b);
                }
                by.into_iter().map(|(v, (n, b))| (v, n, b)).collect()
            },
            scrub: (
                st.scrub_passes.load(Ordering::Relaxed),
                st.scrub_aggregations.load(Ordering::Relaxed),
                st.scrub_findings.load(Ordering::Relaxed),
                st.scrub_unrepaired.load(Ordering::Relaxed),
                st.scrub_completed_at.load(Ordering::Relaxed),
            ),
        }
    }

    fn signal_space(&self) {
        let mut g = lock(&self.space.0);
        *g += 1;
        self.space.1.notify_all();
    }

    fn wait_space(&self, timeout: Duration) {
        let g = lock(&self.space.0);
        let seen = *g;
        let _ = self.space.1.wait_timeout_while(g, timeout, |g| *g == seen);
    }

    /// The loaded vdisks.
    fn loaded(&self) -> Vec<Arc<Vdisk>> {
        lock(&self.vdisks).values().filter_map(|s| s.vdisk.get().cloned()).collect()
    }

    /// Offers a block to `vd`'s namespace in `epoch` (a connection's, or a rebase's).
    fn push(&self, vd: &Arc<Vdisk>, epoch: u64, block: Block) -> Push {
        if self.stopping.load(Ordering::SeqCst) {
            // Nothing more is taken once the drain began (the client resends after restart).
            return Push::Full(block);
        }
        let size = block.mem_size();
        let (seq, data) = (block.sequence, block.data.len() as u64);
        let now = self.clock.monotonic();
        let mut ns = lock(&vd.ns);
        let was_idle = ns.buffered() == 0;
        let p = ns.push(epoch, block, now, &self.limits, self.total.load(Ordering::SeqCst));
        drop(ns);
        if let Push::Received { rotated } = p {
            vd.counters.received_blocks.fetch_add(1, Ordering::Relaxed);
            vd.counters.received_bytes.fetch_add(data, Ordering::Relaxed);
            if was_idle || rotated {
                lock(&vd.unflushed).push_back((seq, Instant::now()));
            }
            self.total.fetch_add(size, Ordering::SeqCst);
            if rotated {
                self.queue_flush(vd);
            }
        }
        p
    }

    fn queue_flush(&self, vd: &Arc<Vdisk>) {
        let _ = self.flush_tx.send(flusher::Msg::Vdisk(vd.clone()));
    }

    /// Forgets the loaded state of `name` and loads it again from the backends (another writer
    /// took it over there).
    fn reload(&self, name: &str) -> Result<Arc<Vdisk>> {
        lock(&self.vdisks).remove(name);
        self.vdisk(name)
    }

    /// Loads a vdisk (its head from the backends) once; other attaches of the same vdisk wait,
    /// other vdisks do not (the map's lock is not held during the I/O).
    fn vdisk(&self, name: &str) -> Result<Arc<Vdisk>> {
        let slot = lock(&self.vdisks).entry(name.to_string()).or_default().clone();
        if let Some(v) = slot.vdisk.get() {
            return Ok(v.clone());
        }
        let _g = lock(&slot.loading);
        if let Some(v) = slot.vdisk.get() {
            return Ok(v.clone());
        }
        if let Some(d) = crate::history::tree::deleted(&self.backends, &self.codec, name)? {
            return Err(crate::error::Error::InvalidArgument(format!(
                "vdisk {name} was deleted at {}; its name stays taken while its forks stand on its history",
                crate::time::format_time(d.time)
            )));
        }
        let head = crate::seal::find_head(&self.backends, &self.sealer, name)?;
        let fork = crate::history::tree::fork_of(&self.backends, &self.codec, name)?;
        let (prev, height, mut last_flushed, epoch) = match &head {
            Some(h) => (h.key, h.height, Some(h.last_sequence), h.epoch),
            None => ([0u8; 32], 0, None, 0),
        };
        let mut tail = Vec::new();
        let mut last_ts = 0;
        if let (None, Some(f)) = (&head, &fork) {
            // A fork with no block of its own: its sequences continue after the cut.
            last_flushed = Some(f.cut);
            last_ts = f.cut_timestamp;
        }
        if let Some(h) = &head {
            tracing::info!(vdisk = name, height = h.height, last_sequence = h.last_sequence, "recovered vdisk head from the backends");
            let index = Index::load(&self.backends, &self.sealer, &self.codec, name, h)?;
            last_ts = index.entries.last().map(|e| e.last_timestamp).unwrap_or(0);
            if !index.rebuilt.is_empty() {
                self.persist_rebuilt(name, &index);
            }
            if h.height % PAGE != 0 {
                tail = index.entries.iter().filter(|e| e.height > 0 && page_of(e.height) == page_of(h.height)).copied().collect();
            }
        }
        let mut namespace = Namespace::new(name, height, last_flushed, epoch, self.cfg.flush.flush_size);
        namespace.set_last_timestamp(last_ts);
        let vd = Arc::new(Vdisk {
            name: name.to_string(),
            ns: Mutex::new(namespace),
            chain: Mutex::new(Chain { prev, height }),
            sink: Mutex::new(None),
            attach_lock: Mutex::new(()),
            random: Mutex::new(HashMap::new()),
            waiting: AtomicBool::new(false),
            pending_index: Mutex::new(Default::default()),
            tail: Mutex::new(tail),
            busy: Mutex::new(None),
            upkeep: Mutex::new(()),
            counters: VdiskCounters::default(),
            unflushed: Mutex::new(Default::default()),
            stale: AtomicBool::new(false),
        });
        let _ = slot.vdisk.set(vd.clone());
        Ok(vd)
    }
}

impl Shared {
    /// Writes index records rebuilt from the chain (a vdisk written before the index lived on
    /// the backends, or records lost) back to every backend: pages for complete pages, entries
    /// for the rest. Best effort: readers rebuild again what is not written.
    fn persist_rebuilt(&self, vdisk: &str, index: &Index) {
        let mut recs: Vec<(String, Vec<u8>)> = Vec::new();
        for group in index.entries.chunk_by(|a, b| page_of(a.height) == page_of(b.height)) {
            let page = page_of(group[0].height);
            if group.len() as u64 == PAGE {
                recs.push((page_name(page), self.codec.encode_page(vdisk, page, group)));
            } else {
                recs.extend(group.iter().map(|e| (entry_name(e.height), self.codec.encode_entry(vdisk, e))));
            }
        }
        let batch = crate::backend::Batch {
            metas: recs.iter().map(|(n, v)| crate::backend::MetaWrite { vdisk, name: n, value: Some(v) }).collect(),
            ..Default::default()
        };
        let written = std::thread::scope(|s| {
            let hs: Vec<_> = self.backends.iter().map(|b| s.spawn(|| b.write(&batch).is_ok())).collect();
            hs.into_iter().map(|h| h.join().unwrap_or(false)).filter(|ok| *ok).count()
        });
        tracing::info!(vdisk, "index: {} entries rebuilt from the chain, written back to {written} of {} backends", index.rebuilt.len(), self.backends.len());
    }
}

/// Checks a vdisk id: 1..=128 bytes of `[A-Za-z0-9._-]`, not `.` or `..`.
pub fn valid_vdisk_id(v: &str) -> bool {
    !v.is_empty() && v.len() <= 128 && v.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'.' || c == b'_' || c == b'-') && v != "." && v != ".."
}

#[cfg(test)]
mod tests;

/// The writer epoch `epoch` of `vd` was superseded in the backends (a backend refused its write
/// for the newer epoch `by`: another tlogd took the vdisk over). This tlogd stops acking the
/// vdisk: its writer is told `fenced`, what it buffered is dropped, and the next attach loads
/// the vdisk anew from the backends. Called once per epoch; later calls do nothing.
pub(crate) fn superseded(sh: &Shared, vd: &Arc<Vdisk>, epoch: u64, by: u64) {
    let mut ns = lock(&vd.ns);
    if ns.epoch() != epoch || vd.stale.swap(true, Ordering::SeqCst) {
        return;
    }
    let freed = ns.discard();
    drop(ns);
    sh.total.fetch_sub(freed.min(sh.total.load(Ordering::SeqCst)), Ordering::SeqCst);
    tracing::warn!(
        vdisk = %vd.name(),
        epoch,
        by,
        "fenced: another writer holds this vdisk in the backends (epoch {by}); this tlogd stops acking it and dropped {freed} buffered bytes"
    );
    let sink = lock(&vd.sink).take();
    if let Some((e, s)) = sink {
        let _ = s.send(Ack::Fenced { by: by.max(e + 1) });
    }
    sh.signal_space();
}
