//! Per-vdisk namespaces, their double buffers, and the flush pipeline that drains them.
//!
//! A namespace takes blocks in sequence order into its *current* buffer. A buffer that holds
//! `flush_size` blocks (or `max_aggregation_bytes`, or is older than `flush_time`, or on
//! `forceFlush`) is swapped with the *spare* and queued (bounded by the memory limits) for the
//! flusher threads. A flusher takes the vdisk's *seal lock*, pops the oldest full buffer, seals
//! it onto the chain (prev = the last key) and hands the k+m shards to the per-backend shard
//! writers (FIFO, so each backend sees one vdisk's aggregations in chain order; each writer
//! groups what is queued into one durable batch). It then queues the aggregation for the
//! *completer* and goes on sealing: the completer waits for the writes in dispatch order,
//! checks the write quorum, appends the metadata index and sends the flushed acks. So several
//! aggregations are in flight at once (at most `COMPLETIONS_PER_WORKER` per flusher), the
//! writers batch more shards per fsync, and flushed acks still go out in sequence order (an
//! aggregation is acked only after all before it). Written shard buffers go back to the
//! flushers to be sealed into again.
//!
//! Memory: bytes are counted from receipt until flushed, per vdisk and in total; at either
//! bound `push` answers [`Push::Full`] and the front-end stops reading (backpressure).

pub mod index;
pub mod pool;

use crate::backend::{Backend, Key};
use crate::error::{Error, IoContext, Result};
use crate::flush::seal::{SealContext, SealScratch};
use crate::flush::{HeadRecord, Sealer};
use crate::store::now_ns;
use crate::wire::{encode_server_message, Block, HandshakeRequest, HandshakeStatus, ServerMessage, PROTOCOL_VERSION};
use crossbeam_channel::{Receiver, Sender};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Where a connection's outgoing frames go (encoded ServerMessage frames).
pub type AckSink = Sender<Vec<u8>>;

/// Engine settings (from [`crate::config::Config`]).
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Blocks per aggregation.
    pub flush_size: usize,
    /// Longest a block waits in the current buffer.
    pub flush_time: Duration,
    /// Bytes per aggregation before an early flush.
    pub max_aggregation_bytes: u64,
    /// Backends that must hold a shard before a flushed ack.
    pub write_quorum: usize,
    /// Flusher threads.
    pub workers: usize,
    /// Buffered bytes per vdisk.
    pub max_vdisk_buffer_bytes: u64,
    /// Buffered bytes in total.
    pub max_buffer_bytes: u64,
    /// Largest block.
    pub max_block_bytes: u64,
    /// Largest frame.
    pub max_frame_bytes: usize,
    /// Data directory (epochs, metadata index, repair log).
    pub data_dir: PathBuf,
    /// Accepted auth tokens (empty = none needed).
    pub auth_tokens: Vec<String>,
}

impl EngineConfig {
    /// From a validated config.
    pub fn from_config(c: &crate::config::Config) -> Result<EngineConfig> {
        Ok(EngineConfig {
            flush_size: c.flush.flush_size,
            flush_time: c.flush_time(),
            max_aggregation_bytes: c.flush.max_aggregation_bytes,
            write_quorum: c.write_quorum(),
            workers: c.workers(),
            max_vdisk_buffer_bytes: c.flush.max_vdisk_buffer_bytes,
            max_buffer_bytes: c.flush.max_buffer_bytes,
            max_block_bytes: c.server.max_block_bytes,
            max_frame_bytes: c.server.max_frame_bytes,
            data_dir: c.server.data_dir.clone(),
            auth_tokens: c.auth_tokens()?,
        })
    }
}

/// Outcome of [`Namespace::push`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Push {
    /// Taken into the buffer.
    Received,
    /// Already received before (not stored again); `flushed` when it is durable too.
    Duplicate {
        /// Whether it is already flushed.
        flushed: bool,
    },
    /// A gap: the namespace expects `expected`.
    OutOfOrder {
        /// The next sequence the namespace takes.
        expected: u64,
    },
    /// Memory bound reached: retry after [`Engine::wait_space`].
    Full,
    /// This connection's epoch was superseded.
    Fenced,
}

struct FullBuffer {
    blocks: Vec<Block>,
    bytes: u64,
}

struct NsState {
    epoch: u64,
    attach_random: [u8; 16],
    counter: u64,
    ack: Option<(u64, AckSink)>,
    expected: u64,
    current: Vec<Block>,
    spare: Vec<Block>,
    current_data: u64,
    current_bytes: u64,
    current_started: Option<Instant>,
    full: VecDeque<FullBuffer>,
    buffered: u64,
    done: BTreeMap<u64, (u64, u64, u64)>,
    next_ack_agg: u64,
    last_flushed: Option<u64>,
    in_flight: u64,
}

struct ChainState {
    prev: Key,
    height: u64,
}

/// One vdisk's state inside the server.
pub struct Namespace {
    vdisk: String,
    state: Mutex<NsState>,
    chain: Mutex<ChainState>,
    index: Mutex<index::MetaIndex>,
}

/// What a successful attach gives the session.
pub struct Attached {
    /// The namespace.
    pub ns: Arc<Namespace>,
    /// This connection's epoch.
    pub epoch: u64,
    /// Last flushed sequence, if any.
    pub last_flushed: Option<u64>,
}

/// A sealed aggregation whose shards are being written: what [`Engine::finish`] needs.
struct InFlight {
    ns: Arc<Namespace>,
    agg_no: u64,
    key: Key,
    first_sequence: u64,
    last_sequence: u64,
    /// Kept for retries on backends that failed.
    shards: Vec<Arc<Vec<u8>>>,
    /// Buffered bytes released when it is flushed.
    bytes: u64,
    replies: Receiver<(usize, std::result::Result<(), String>)>,
    epoch: u64,
    timestamp: u64,
}

struct WriteJob {
    key: Key,
    shard: Arc<Vec<u8>>,
    head: Option<(String, Vec<u8>)>,
    /// (backend index, outcome; the error as text, since one batch answers many jobs).
    reply: Sender<(usize, std::result::Result<(), String>)>,
}

/// The server core: namespaces, flushers, shard writers. Front-ends drive it through
/// [`crate::session::Session`].
pub struct Engine {
    cfg: EngineConfig,
    sealer: Arc<Sealer>,
    backends: Vec<Arc<dyn Backend>>,
    writers: Vec<Sender<WriteJob>>,
    namespaces: Mutex<HashMap<String, Arc<Namespace>>>,
    total: AtomicU64,
    flush_tx: Sender<Arc<Namespace>>,
    /// Sealed aggregations waiting for their writes, in dispatch order (bounded: a full queue
    /// holds the flushers back).
    completions: Sender<InFlight>,
    /// Buffers of written shards on their way back to the flushers (bounded; extras are freed).
    shard_pool: (Sender<Vec<u8>>, Receiver<Vec<u8>>),
    /// Block data buffers, handed back by the flushers once sealed, taken by the connections.
    buffers: pool::BufferPool,
    space: (Mutex<u64>, Condvar),
    shutdown: Arc<AtomicBool>,
    threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
    repair_log: Mutex<Option<std::fs::File>>,
    /// Aggregations flushed (for stats).
    pub flushed_aggregations: AtomicU64,
}

/// Sealed aggregations that may wait for their writes per flusher thread. More in flight lets
/// each shard writer group more shards into one fsync; each holds its shards in memory (at most
/// `max_aggregation_bytes` × (k+m)/k, plus lz4's worst case).
const COMPLETIONS_PER_WORKER: usize = 4;

/// Largest block data buffer the buffer pool keeps (bytes); larger blocks are allocated and
/// freed as usual.
const BUFFER_POOL_MAX_BUFFER: usize = 256 << 10;

/// Checks a vdisk id: 1..=128 bytes of `[A-Za-z0-9._-]`.
pub fn valid_vdisk_id(v: &str) -> bool {
    !v.is_empty() && v.len() <= 128 && v.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'.' || c == b'_' || c == b'-') && v != "." && v != ".."
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding a lock is a bug; keep serving with the state as it is.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Engine {
    /// Starts an engine: k+m shard writer threads, `workers` flushers and the flush timer.
    /// `backends.len()` must be k+m of the sealer.
    pub fn start(cfg: EngineConfig, sealer: Sealer, backends: Vec<Arc<dyn Backend>>) -> Result<Arc<Engine>> {
        if backends.len() != sealer.k() + sealer.m() {
            return Err(Error::Config(format!("{} backends for k + m = {}", backends.len(), sealer.k() + sealer.m())));
        }
        std::fs::create_dir_all(cfg.data_dir.join("vdisks")).ctx(|| format!("create {}", cfg.data_dir.join("vdisks").display()))?;
        let (flush_tx, flush_rx) = crossbeam_channel::unbounded::<Arc<Namespace>>();
        let (completions, completion_rx) = crossbeam_channel::bounded::<InFlight>(COMPLETIONS_PER_WORKER * cfg.workers.max(1));
        let (backends_len, workers) = (backends.len(), cfg.workers.max(1));
        let mut writers = Vec::new();
        let mut threads = Vec::new();
        let mut writer_rxs = Vec::new();
        for _ in 0..backends.len() {
            let (tx, rx) = crossbeam_channel::unbounded::<WriteJob>();
            writers.push(tx);
            writer_rxs.push(rx);
        }
        // Room for what the flushers free while the connections refill: eight aggregations per
        // flusher (within the total buffer bound).
        let pool_bytes = cfg.max_aggregation_bytes.saturating_mul(8 * workers as u64).min(cfg.max_buffer_bytes) as usize;
        let buffers = pool::BufferPool::new(pool_bytes, BUFFER_POOL_MAX_BUFFER, pool_bytes / 4096 + 1);
        let repair_path = cfg.data_dir.join("repair.log");
        let repair = std::fs::OpenOptions::new().create(true).append(true).open(&repair_path).ctx(|| format!("open {}", repair_path.display()))?;
        let engine = Arc::new(Engine {
            cfg,
            sealer: Arc::new(sealer),
            backends,
            writers,
            namespaces: Mutex::new(HashMap::new()),
            total: AtomicU64::new(0),
            flush_tx,
            completions,
            shard_pool: crossbeam_channel::bounded(backends_len * (COMPLETIONS_PER_WORKER + 1) * workers),
            buffers,
            space: (Mutex::new(0), Condvar::new()),
            shutdown: Arc::new(AtomicBool::new(false)),
            threads: Mutex::new(Vec::new()),
            repair_log: Mutex::new(Some(repair)),
            flushed_aggregations: AtomicU64::new(0),
        });
        for (i, rx) in writer_rxs.into_iter().enumerate() {
            let b = engine.backends[i].clone();
            threads
                .push(std::thread::Builder::new().name(format!("shard-writer-{i}")).spawn(move || shard_writer(i, b, rx)).ctx(|| "spawn shard writer".into())?);
        }
        for w in 0..engine.cfg.workers {
            let e = engine.clone();
            let rx = flush_rx.clone();
            threads.push(std::thread::Builder::new().name(format!("flusher-{w}")).spawn(move || flusher(e, rx)).ctx(|| "spawn flusher".into())?);
        }
        let e = engine.clone();
        threads.push(
            std::thread::Builder::new().name("flush-completer".into()).spawn(move || completer(e, completion_rx)).ctx(|| "spawn flush completer".into())?,
        );
        let e = engine.clone();
        threads.push(std::thread::Builder::new().name("flush-timer".into()).spawn(move || flush_timer(e)).ctx(|| "spawn flush timer".into())?);
        *lock(&engine.threads) = threads;
        Ok(engine)
    }

    /// The configuration.
    pub fn config(&self) -> &EngineConfig {
        &self.cfg
    }

    /// The pool that block data is copied into on receipt (given back after sealing).
    pub fn buffers(&self) -> &pool::BufferPool {
        &self.buffers
    }

    /// The shutdown flag (set by [`Engine::shutdown`]).
    pub fn shutdown_flag(&self) -> Arc<AtomicBool> {
        self.shutdown.clone()
    }

    /// Attaches a connection to a vdisk (creating or recovering its namespace). A vdisk that
    /// is already attached is taken over: the new connection gets a new epoch and the old one
    /// is fenced. Errors carry the handshake status and a message.
    pub fn attach(&self, req: &HandshakeRequest, sink: AckSink) -> std::result::Result<Attached, (HandshakeStatus, String)> {
        if req.version != PROTOCOL_VERSION {
            return Err((HandshakeStatus::BadVersion, format!("protocol version {} is not supported; this server speaks {PROTOCOL_VERSION}", req.version)));
        }
        if !valid_vdisk_id(&req.vdisk_id) {
            return Err((HandshakeStatus::BadVdisk, format!("vdisk id {:?} is invalid: 1 to 128 characters of A-Z a-z 0-9 . _ -", req.vdisk_id)));
        }
        if !self.cfg.auth_tokens.is_empty() && !self.cfg.auth_tokens.iter().any(|t| t == &req.token) {
            return Err((HandshakeStatus::Unauthorized, "missing or wrong auth token".into()));
        }
        if self.shutdown.load(Ordering::SeqCst) {
            return Err((HandshakeStatus::InternalError, "server is shutting down".into()));
        }
        let ns = self.namespace(&req.vdisk_id).map_err(|e| (HandshakeStatus::InternalError, format!("cannot open vdisk {}: {e}", req.vdisk_id)))?;
        let epoch = self.next_epoch(&ns).map_err(|e| (HandshakeStatus::InternalError, format!("cannot persist the epoch of {}: {e}", req.vdisk_id)))?;
        let mut random = [0u8; 16];
        getrandom::getrandom(&mut random).map_err(|e| (HandshakeStatus::InternalError, format!("no randomness: {e}")))?;
        let mut st = lock(&ns.state);
        if let Some((old_epoch, old)) = st.ack.take() {
            tracing::info!(vdisk = %ns.vdisk, old_epoch, epoch, "vdisk taken over by a new connection; the old one is fenced");
            let _ = old.send(encode_server_message(&ServerMessage::Error(crate::wire::ServerError {
                code: crate::wire::ErrorCode::Fenced,
                sequence: 0,
                expected_sequence: 0,
                message: format!("vdisk {} was taken over by epoch {epoch}", ns.vdisk),
            })));
        }
        st.epoch = epoch;
        st.attach_random = random;
        st.counter = 0;
        st.ack = Some((epoch, sink));
        if req.reset_first_sequence || (st.last_flushed.is_none() && st.expected == 0) {
            st.expected = req.first_sequence;
        }
        Ok(Attached { ns: ns.clone(), epoch, last_flushed: st.last_flushed })
    }

    fn next_epoch(&self, ns: &Namespace) -> Result<u64> {
        let p = self.cfg.data_dir.join("vdisks").join(format!("{}.epoch", ns.vdisk));
        let stored: u64 = std::fs::read_to_string(&p).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0);
        let cur = lock(&ns.state).epoch;
        let e = stored.max(cur) + 1;
        let tmp = p.with_extension("epoch.tmp");
        let mut f = std::fs::File::create(&tmp).ctx(|| format!("create {}", tmp.display()))?;
        f.write_all(e.to_string().as_bytes()).ctx(|| format!("write {}", tmp.display()))?;
        f.sync_all().ctx(|| format!("fsync {}", tmp.display()))?;
        std::fs::rename(&tmp, &p).ctx(|| format!("rename {}", tmp.display()))?;
        Ok(e)
    }

    fn namespace(&self, vdisk: &str) -> Result<Arc<Namespace>> {
        let mut map = lock(&self.namespaces);
        if let Some(ns) = map.get(vdisk) {
            return Ok(ns.clone());
        }
        let head = crate::flush::chain::find_head(&self.backends, &self.sealer, vdisk)?;
        let (prev, height, last_flushed, epoch) = match &head {
            Some(h) => (h.key, h.height, Some(h.last_sequence), h.epoch),
            None => ([0u8; 32], 0, None, 0),
        };
        if let Some(h) = &head {
            tracing::info!(vdisk, height = h.height, last_sequence = h.last_sequence, "recovered vdisk head from the backends");
        }
        let idx = index::MetaIndex::open(&self.cfg.data_dir.join("vdisks").join(format!("{vdisk}.index")), height)?;
        let ns = Arc::new(Namespace {
            vdisk: vdisk.to_string(),
            state: Mutex::new(NsState {
                epoch,
                attach_random: [0; 16],
                counter: 0,
                ack: None,
                expected: last_flushed.map(|l| l + 1).unwrap_or(0),
                current: Vec::with_capacity(self.cfg.flush_size),
                spare: Vec::with_capacity(self.cfg.flush_size),
                current_data: 0,
                current_bytes: 0,
                current_started: None,
                full: VecDeque::new(),
                buffered: 0,
                done: BTreeMap::new(),
                next_ack_agg: height + 1,
                last_flushed,
                in_flight: 0,
            }),
            chain: Mutex::new(ChainState { prev, height }),
            index: Mutex::new(idx),
        });
        map.insert(vdisk.to_string(), ns.clone());
        Ok(ns)
    }

    /// Detaches a connection (its epoch); later flushed acks of its blocks are dropped.
    pub fn detach(&self, ns: &Namespace, epoch: u64) {
        let mut st = lock(&ns.state);
        if st.ack.as_ref().map(|(e, _)| *e == epoch).unwrap_or(false) {
            st.ack = None;
        }
    }

    /// Offers a block to the namespace (see [`Push`]). The block must already be validated
    /// (hash, size, operation) by the session.
    pub fn push(&self, ns: &Arc<Namespace>, epoch: u64, block: Block) -> (Push, Option<Block>) {
        let mut st = lock(&ns.state);
        if st.epoch != epoch {
            return (Push::Fenced, None);
        }
        if block.sequence < st.expected {
            let flushed = st.last_flushed.map(|l| block.sequence <= l).unwrap_or(false);
            return (Push::Duplicate { flushed }, None);
        }
        if block.sequence > st.expected {
            return (Push::OutOfOrder { expected: st.expected }, None);
        }
        let size = block.mem_size();
        if st.buffered > 0 && (st.buffered + size > self.cfg.max_vdisk_buffer_bytes || self.total.load(Ordering::SeqCst) + size > self.cfg.max_buffer_bytes) {
            return (Push::Full, Some(block));
        }
        st.buffered += size;
        self.total.fetch_add(size, Ordering::SeqCst);
        st.expected = block.sequence + 1;
        if st.current.is_empty() {
            st.current_started = Some(Instant::now());
        }
        st.current_data += block.data.len() as u64;
        st.current_bytes += size;
        st.current.push(block);
        if st.current.len() >= self.cfg.flush_size || st.current_data >= self.cfg.max_aggregation_bytes {
            self.rotate(ns, &mut st);
        }
        (Push::Received, None)
    }

    /// Flushes the current buffer of `ns` now (the `forceFlush` command).
    pub fn force_flush(&self, ns: &Arc<Namespace>) {
        let mut st = lock(&ns.state);
        self.rotate(ns, &mut st);
    }

    fn rotate(&self, ns: &Arc<Namespace>, st: &mut NsState) {
        if st.current.is_empty() {
            return;
        }
        let mut spare = std::mem::take(&mut st.spare);
        if spare.capacity() == 0 {
            spare = Vec::with_capacity(self.cfg.flush_size);
        }
        let blocks = std::mem::replace(&mut st.current, spare);
        st.full.push_back(FullBuffer { blocks, bytes: st.current_bytes });
        st.current_bytes = 0;
        st.current_data = 0;
        st.current_started = None;
        st.in_flight += 1;
        let _ = self.flush_tx.send(ns.clone());
    }

    /// Waits until memory may have been freed (a flush completed) or `timeout` passed.
    pub fn wait_space(&self, timeout: Duration) {
        let g = lock(&self.space.0);
        let seen = *g;
        let _ = self.space.1.wait_timeout_while(g, timeout, |g| *g == seen);
    }

    fn signal_space(&self) {
        let mut g = lock(&self.space.0);
        *g += 1;
        self.space.1.notify_all();
    }

    /// Bytes buffered in total.
    pub fn buffered_bytes(&self) -> u64 {
        self.total.load(Ordering::SeqCst)
    }

    /// Last flushed sequence of a vdisk that has a namespace.
    pub fn last_flushed(&self, vdisk: &str) -> Option<u64> {
        lock(&self.namespaces).get(vdisk).and_then(|ns| lock(&ns.state).last_flushed)
    }

    /// Seals the vdisk's oldest full buffer onto its chain and hands the shards to the shard
    /// writers; the aggregation then waits for its writes in the completer's queue, so the
    /// flusher goes on sealing while the writes (and their fsyncs) proceed.
    fn seal_and_dispatch(&self, ns: &Arc<Namespace>, scratch: &mut SealScratch) {
        let mut chain = lock(&ns.chain);
        let (buf, epoch, random, counter) = {
            let mut st = lock(&ns.state);
            let Some(buf) = st.full.pop_front() else { return };
            let c = st.counter;
            st.counter += 1;
            (buf, st.epoch, st.attach_random, c)
        };
        while scratch.spare_shards() < self.writers.len() {
            match self.shard_pool.1.try_recv() {
                Ok(b) => scratch.recycle_shard(b),
                Err(_) => break,
            }
        }
        let ts = now_ns();
        let ctx = SealContext { vdisk: &ns.vdisk, epoch, counter, attach_random: random, prev: chain.prev, timestamp: ts };
        let mut sealed = match self.sealer.seal_with(scratch, &ctx, &buf.blocks) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(vdisk = %ns.vdisk, "sealing failed, the blocks stay unflushed: {e}");
                return;
            }
        };
        let bytes = buf.bytes;
        // The blocks are in the shards now: their buffers go back to the pool, and the emptied
        // list becomes the namespace's spare if it has none.
        let mut blocks = buf.blocks;
        for b in blocks.drain(..) {
            self.buffers.give(b.data);
        }
        {
            let mut st = lock(&ns.state);
            if st.spare.capacity() < blocks.capacity() {
                st.spare = blocks;
            }
        }
        chain.height += 1;
        chain.prev = sealed.key;
        let head = HeadRecord {
            height: chain.height,
            key: sealed.key,
            first_sequence: sealed.first_sequence,
            last_sequence: sealed.last_sequence,
            epoch,
            timestamp: ts,
        }
        .encode();
        let (tx, rx) = crossbeam_channel::bounded(self.writers.len() * 2);
        let shards: Vec<Arc<Vec<u8>>> = std::mem::take(&mut sealed.shards).into_iter().map(Arc::new).collect();
        for (i, w) in self.writers.iter().enumerate() {
            let job = WriteJob { key: sealed.key, shard: shards[i].clone(), head: Some((ns.vdisk.clone(), head.clone())), reply: tx.clone() };
            if w.send(job).is_err() {
                let _ = tx.send((i, Err(Error::Shutdown.to_string())));
            }
        }
        let pending = InFlight {
            ns: ns.clone(),
            agg_no: chain.height,
            key: sealed.key,
            first_sequence: sealed.first_sequence,
            last_sequence: sealed.last_sequence,
            shards,
            bytes,
            replies: rx,
            epoch,
            timestamp: ts,
        };
        // Queued while the chain lock is held, so one vdisk's aggregations reach the completer
        // in chain order (its metadata index is appended in that order).
        if let Err(e) = self.completions.send(pending) {
            tracing::error!(vdisk = %ns.vdisk, "the flush completer is gone: {e}");
        }
    }

    /// Waits for an aggregation's shard writes, retries until the write quorum is reached,
    /// records missing shards for repair, appends the metadata index and sends the flushed acks.
    fn finish(&self, a: InFlight) {
        let ns = &a.ns;
        let n = self.writers.len();
        let mut ok = vec![false; n];
        let mut errors: Vec<String> = vec![String::new(); n];
        for _ in 0..n {
            match a.replies.recv() {
                Ok((i, Ok(()))) => ok[i] = true,
                Ok((i, Err(e))) => errors[i] = e,
                Err(_) => break,
            }
        }
        // Retry failed backends until the quorum is reached (holding back later acks).
        let mut attempt = 0u32;
        while ok.iter().filter(|x| **x).count() < self.cfg.write_quorum {
            attempt += 1;
            let failed: Vec<String> = (0..n).filter(|i| !ok[*i]).map(|i| format!("{}: {}", self.backends[i].name(), errors[i])).collect();
            if attempt == 1 || attempt % 20 == 0 {
                tracing::error!(vdisk = %ns.vdisk, key = %hex::encode(a.key), "write quorum {} not reached ({} stored); retrying: {}", self.cfg.write_quorum, ok.iter().filter(|x| **x).count(), failed.join("; "));
            }
            if self.shutdown.load(Ordering::SeqCst) && attempt > 10 {
                tracing::error!(vdisk = %ns.vdisk, "giving up on aggregation {} at shutdown: its blocks stay unflushed (the client resends them)", hex::encode(a.key));
                return;
            }
            std::thread::sleep(Duration::from_millis((50 * attempt as u64).min(1000)));
            for i in 0..n {
                if !ok[i] {
                    match self.backends[i].put(&a.key, &a.shards[i]) {
                        Ok(()) => ok[i] = true,
                        Err(e) => errors[i] = e.to_string(),
                    }
                }
            }
        }
        let missing: Vec<usize> = (0..n).filter(|i| !ok[*i]).collect();
        if !missing.is_empty() {
            self.record_repair(&ns.vdisk, &a.key, &missing, &errors);
        }
        if let Err(e) = lock(&ns.index).append(&index::IndexEntry {
            first_sequence: a.first_sequence,
            last_sequence: a.last_sequence,
            timestamp: a.timestamp,
            epoch: a.epoch,
            key: a.key,
        }) {
            tracing::warn!(vdisk = %ns.vdisk, "metadata index append failed (it can be rebuilt from the chain): {e}");
        }
        self.flushed_aggregations.fetch_add(1, Ordering::Relaxed);
        self.complete(ns, a.agg_no, a.first_sequence, a.last_sequence, a.bytes);
        for shard in a.shards {
            if let Ok(buf) = Arc::try_unwrap(shard) {
                let _ = self.shard_pool.0.try_send(buf);
            }
        }
    }

    fn record_repair(&self, vdisk: &str, key: &Key, missing: &[usize], errors: &[String]) {
        for &i in missing {
            tracing::warn!(vdisk, key = %hex::encode(key), shard = i, "shard missing on {} ({}); recorded for repair", self.backends[i].name(), errors[i]);
        }
        if let Some(f) = lock(&self.repair_log).as_mut() {
            let line = format!("{} {} {}\n", vdisk, hex::encode(key), missing.iter().map(|i| i.to_string()).collect::<Vec<_>>().join(","));
            if let Err(e) = f.write_all(line.as_bytes()).and_then(|_| f.sync_data()) {
                tracing::error!("repair log write failed: {e}");
            }
        }
    }

    fn complete(&self, ns: &Arc<Namespace>, agg_no: u64, first: u64, last: u64, bytes: u64) {
        {
            let mut st = lock(&ns.state);
            st.done.insert(agg_no, (first, last, bytes));
            loop {
                let next = st.next_ack_agg;
                let Some((f, l, b)) = st.done.remove(&next) else { break };
                st.next_ack_agg += 1;
                st.last_flushed = Some(l);
                st.buffered = st.buffered.saturating_sub(b);
                st.in_flight = st.in_flight.saturating_sub(1);
                self.total.fetch_sub(b.min(self.total.load(Ordering::SeqCst)), Ordering::SeqCst);
                if let Some((_, sink)) = &st.ack {
                    let _ = sink.send(encode_server_message(&ServerMessage::Flushed(f, l)));
                }
            }
        }
        self.signal_space();
    }

    /// Flushes every buffer and waits (at most `timeout`) until everything received is
    /// flushed; then stops the threads. Returns false if something stayed unflushed.
    pub fn shutdown(&self, timeout: Duration) -> bool {
        let all: Vec<Arc<Namespace>> = lock(&self.namespaces).values().cloned().collect();
        for ns in &all {
            self.force_flush(ns);
        }
        let deadline = Instant::now() + timeout;
        let mut clean = false;
        while Instant::now() < deadline {
            if all.iter().all(|ns| {
                let st = lock(&ns.state);
                st.full.is_empty() && st.in_flight == 0 && st.current.is_empty()
            }) {
                clean = true;
                break;
            }
            self.wait_space(Duration::from_millis(20));
        }
        self.shutdown.store(true, Ordering::SeqCst);
        // Closing the channels ends the threads.
        let threads: Vec<_> = std::mem::take(&mut *lock(&self.threads));
        drop(threads); // detached: they exit when the channels close with the engine
        clean
    }
}

fn shard_writer(i: usize, backend: Arc<dyn Backend>, rx: Receiver<WriteJob>) {
    while let Ok(first) = rx.recv() {
        let mut jobs = vec![first];
        while jobs.len() < 64 {
            match rx.try_recv() {
                Ok(j) => jobs.push(j),
                Err(_) => break,
            }
        }
        let shards: Vec<(&Key, &[u8])> = jobs.iter().map(|j| (&j.key, j.shard.as_slice())).collect();
        // The newest head per vdisk (jobs are in chain order).
        let mut heads: Vec<(&str, &[u8])> = Vec::new();
        for j in jobs.iter().rev() {
            if let Some((v, h)) = &j.head {
                if !heads.iter().any(|(x, _)| x == v) {
                    heads.push((v.as_str(), h.as_slice()));
                }
            }
        }
        let r = backend.put_batch(&shards, &heads).map_err(|e| e.to_string());
        drop((shards, heads));
        for j in jobs {
            // The shard is released before the reply, so the completer can reuse its buffer.
            let WriteJob { shard, reply, .. } = j;
            drop(shard);
            let _ = reply.send((i, r.clone()));
        }
    }
}

fn flusher(engine: Arc<Engine>, rx: Receiver<Arc<Namespace>>) {
    let mut scratch = SealScratch::default();
    loop {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(ns) => engine.seal_and_dispatch(&ns, &mut scratch),
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                if engine.shutdown.load(Ordering::SeqCst) && rx.is_empty() {
                    return;
                }
            }
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => return,
        }
    }
}

fn completer(engine: Arc<Engine>, rx: Receiver<InFlight>) {
    loop {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(a) => engine.finish(a),
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                if engine.shutdown.load(Ordering::SeqCst) && rx.is_empty() {
                    return;
                }
            }
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => return,
        }
    }
}

fn flush_timer(engine: Arc<Engine>) {
    let tick = (engine.cfg.flush_time / 4).clamp(Duration::from_millis(1), Duration::from_millis(50));
    while !engine.shutdown.load(Ordering::SeqCst) {
        std::thread::sleep(tick);
        let all: Vec<Arc<Namespace>> = lock(&engine.namespaces).values().cloned().collect();
        for ns in all {
            let mut st = lock(&ns.state);
            if st.current_started.map(|t| t.elapsed() >= engine.cfg.flush_time).unwrap_or(false) {
                engine.rotate(&ns, &mut st);
            }
        }
    }
}

impl Namespace {
    /// The vdisk id.
    pub fn vdisk(&self) -> &str {
        &self.vdisk
    }
}
