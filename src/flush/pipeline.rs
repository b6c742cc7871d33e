//! Wiring of the engine's threads and channels (see the diagram in [`super`]), and their
//! orderly stop: [`Engine::shutdown`] refuses new attaches, flushes every buffer, waits (at most
//! its bound) until everything received is durable, then closes the threads in dependency order
//! (flushers, attach workers, timer, repairer; the completer; the writers) and joins each, the
//! whole within the bound. A thread that does not stop in time (a backend call that hangs past
//! its own timeout) is reported and left behind.

use super::attach::{self, Job};
use super::completer::{self, Event};
use super::flusher::{self, COMPLETIONS_PER_WORKER};
use super::{lock, repair, timer, writer, Ack, AckSink, AttachRequest, AttachTicket, Core, Permits, Push, Shared, Stats, Ticket, Vdisk};
use crate::backend::Backend;
use crate::config::Config;
use crate::error::{Error, IoContext, Result};
use crate::namespace::Limits;
use crate::seal::Sealer;
use crate::time::Clock;
use crate::wire::Block;
use crate::wire::{ControlRequest, ControlResponse, PlaybackRequest};
use crossbeam_channel::Sender;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Largest block data buffer the buffer pool keeps (bytes); larger blocks are allocated and
/// freed as usual.
const BUFFER_POOL_MAX_BUFFER: usize = 256 << 10;

/// Which background threads to run (tests drive the timer by hand).
#[derive(Clone, Copy, Debug)]
pub struct Threads {
    /// The flush timer.
    pub timer: bool,
    /// The background repairer.
    pub repairer: bool,
}

impl Default for Threads {
    fn default() -> Self {
        Threads { timer: true, repairer: true }
    }
}

/// The server core: vdisks, flushers, writers, completer, timer, repair. Front-ends drive it
/// through `session::Session` (the [`Core`] trait).
pub struct Engine {
    sh: Arc<Shared>,
    threads: Mutex<Vec<(String, JoinHandle<()>)>>,
}

/// Starts an engine thread. Engine threads fail stop: one that panics aborts the process
/// (after logging, where it still can), because an engine missing a worker would keep taking
/// blocks it can never make durable; the clients reconnect to the restarted tlogd and resend
/// what was not flushed.
fn spawn(threads: &mut Vec<(String, JoinHandle<()>)>, name: String, f: impl FnOnce() + Send + 'static) -> Result<()> {
    let n = name.clone();
    let body = move || {
        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).is_err() {
            tracing::error!(thread = %n, "engine thread panicked: stopping tlogd (clients resend what was not flushed)");
            std::process::abort();
        }
    };
    let h = std::thread::Builder::new().name(name.clone()).spawn(body).ctx(|| format!("spawn thread {name}"))?;
    threads.push((name, h));
    Ok(())
}

impl Engine {
    /// Starts an engine on validated `cfg` with every background thread. `backends.len()` must
    /// be k+m of the sealer.
    pub fn start(cfg: Arc<Config>, sealer: Sealer, backends: Vec<Arc<dyn Backend>>, clock: Arc<dyn Clock>) -> Result<Arc<Engine>> {
        Self::start_with(cfg, sealer, backends, clock, Threads::default())
    }

    /// [`Engine::start`] choosing the background threads.
    pub fn start_with(cfg: Arc<Config>, sealer: Sealer, backends: Vec<Arc<dyn Backend>>, clock: Arc<dyn Clock>, run: Threads) -> Result<Arc<Engine>> {
        if backends.len() != sealer.k() + sealer.m() {
            return Err(Error::Config(format!("{} backends for k + m = {}", backends.len(), sealer.k() + sealer.m())));
        }
        let dir = cfg.server.data_dir.join("vdisks");
        std::fs::create_dir_all(&dir).ctx(|| format!("create {}", dir.display()))?;
        let workers = cfg.workers().max(1);
        let (flush_tx, flush_rx) = crossbeam_channel::unbounded();
        let (events, events_rx) = crossbeam_channel::unbounded::<Event>();
        let (attach_tx, attach_rx) = crossbeam_channel::unbounded::<Option<Job>>();
        let mut writers = Vec::new();
        let mut writer_rxs = Vec::new();
        for b in &backends {
            let (w, rx) = writer::Writer::new(b.name(), cfg.backend.queue_bytes);
            writers.push(w);
            writer_rxs.push(rx);
        }
        // Room for what the flushers free while the connections refill: eight aggregations per
        // flusher (within the total buffer bound).
        let pool_bytes = cfg.flush.max_aggregation_bytes.saturating_mul(8 * workers as u64).min(cfg.flush.max_buffer_bytes) as usize;
        let repair = Arc::new(repair::Queue::open(&cfg.server.data_dir.join("repair.log"))?);
        let n = backends.len();
        let sh = Arc::new(Shared {
            limits: Limits {
                flush_size: cfg.flush.flush_size,
                max_aggregation_bytes: cfg.flush.max_aggregation_bytes,
                max_vdisk_buffer_bytes: cfg.flush.max_vdisk_buffer_bytes,
                max_buffer_bytes: cfg.flush.max_buffer_bytes,
                flush_time: cfg.flush_time(),
            },
            write_quorum: cfg.write_quorum(),
            cfg,
            codec: crate::history::index::IndexCodec::new(sealer.key()),
            sealer: Arc::new(sealer),
            backends,
            clock,
            vdisks: Mutex::new(HashMap::new()),
            total: AtomicU64::new(0),
            flush_tx,
            writers,
            events,
            permits: Permits::new(COMPLETIONS_PER_WORKER * workers),
            shard_pool: crossbeam_channel::bounded(n * (COMPLETIONS_PER_WORKER + 1) * workers),
            buffers: super::pool::BufferPool::new(pool_bytes, BUFFER_POOL_MAX_BUFFER, pool_bytes / 4096 + 1),
            space: (Mutex::new(0), Condvar::new()),
            stopping: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            repair,
            attach_tx,
            next_id: AtomicU64::new(1),
            stats: Stats::default(),
            playbacks: Mutex::new(HashMap::new()),
        });
        let mut threads = Vec::new();
        for (i, rx) in writer_rxs.into_iter().enumerate() {
            let f = sh.writers[i].runner(i, sh.backends[i].clone(), rx, sh.events.clone());
            spawn(&mut threads, format!("shard-writer-{i}"), f)?;
        }
        for w in 0..workers {
            let (s, rx) = (sh.clone(), flush_rx.clone());
            spawn(&mut threads, format!("flusher-{w}"), move || flusher::run(s, rx))?;
        }
        let s = sh.clone();
        spawn(&mut threads, "flush-completer".into(), move || completer::run(s, events_rx))?;
        for w in 0..attach::WORKERS {
            let (s, rx) = (sh.clone(), attach_rx.clone());
            spawn(&mut threads, format!("attach-{w}"), move || attach::run(s, rx))?;
        }
        if run.timer {
            let s = sh.clone();
            spawn(&mut threads, "flush-timer".into(), move || timer::run(s))?;
        }
        if run.repairer {
            let (s1, s2) = (sh.clone(), sh.clone());
            let rate = sh.cfg.upkeep.repair_rate_mib << 20;
            let (backends, sealer, queue) = (sh.backends.clone(), sh.sealer.clone(), sh.repair.clone());
            spawn(&mut threads, "repairer".into(), move || {
                repair::run(backends, sealer, queue, rate, Box::new(move |i| !s1.writers[i].degraded()), Box::new(move || s2.closed.load(Ordering::SeqCst)))
            })?;
        }
        if sh.cfg.history.enabled()? {
            let every = sh.cfg.history.clean_interval()?;
            let policy = crate::history::retention::Policy {
                retention_ns: sh.cfg.history.retention()?.map(|d| d.as_nanos() as u64),
                max_bytes: sh.cfg.history.max_bytes,
                grace_ns: every.as_nanos() as u64,
                chunk_bytes: sh.cfg.flush.max_aggregation_bytes as u64,
                chunk_blocks: sh.cfg.flush.flush_size,
            };
            let s = sh.clone();
            spawn(&mut threads, "cleaner".into(), move || super::branch::cleaner(s, policy, every))?;
        }
        if let Some(every) = sh.cfg.upkeep.scrub_interval()? {
            let s = sh.clone();
            spawn(&mut threads, "scrubber".into(), move || scrubber(s, every))?;
        }
        Ok(Arc::new(Engine { sh, threads: Mutex::new(threads) }))
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.sh.cfg
    }

    /// The engine's metrics now: every loaded vdisk, every backend, the repair queue.
    pub fn metrics(&self) -> super::EngineMetrics {
        self.sh.metrics()
    }

    /// The latency histograms: flush (seal to write quorum), and each backend's batch writes.
    pub fn histograms(&self) -> (prometheus::Histogram, Vec<prometheus::Histogram>) {
        (self.sh.stats.flush_latency.clone(), self.sh.writers.iter().map(|w| w.latency.clone()).collect())
    }

    /// The counters.
    pub fn stats(&self) -> &Stats {
        &self.sh.stats
    }

    /// Queues the buffers whose oldest block has waited `flush_time` by the engine's clock (what
    /// the timer thread does each period).
    pub fn tick(&self) {
        timer::tick(&self.sh, self.sh.clock.monotonic());
    }

    /// Bytes received and not yet flushed, all vdisks.
    pub fn buffered_bytes(&self) -> u64 {
        self.sh.total.load(Ordering::SeqCst)
    }

    /// Last flushed sequence of a loaded vdisk.
    pub fn last_flushed(&self, vdisk: &str) -> Option<u64> {
        self.sh.loaded().into_iter().find(|v| v.name() == vdisk).and_then(|v| v.last_flushed())
    }

    /// Shards waiting in the repair queue.
    pub fn repair_backlog(&self) -> usize {
        self.sh.repair.backlog()
    }

    /// Whether backend `i`'s writer is degraded (too far behind).
    pub fn degraded(&self, i: usize) -> bool {
        self.sh.writers.get(i).map(|w| w.degraded()).unwrap_or(false)
    }

    /// Flushes every buffer and waits (at most `timeout`) until everything received is durable;
    /// then stops and joins the threads (within what is left of `timeout`, at least 2 s).
    /// Returns false if something stayed unflushed or a thread did not stop.
    pub fn shutdown(&self, timeout: Duration) -> bool {
        let sh = &self.sh;
        sh.stopping.store(true, Ordering::SeqCst);
        let deadline = Instant::now() + timeout;
        for vd in sh.loaded() {
            if lock(&vd.ns).rotate() {
                sh.queue_flush(&vd);
            }
        }
        let mut drained = false;
        while Instant::now() < deadline {
            if sh.loaded().iter().all(|vd| lock(&vd.ns).idle()) {
                drained = true;
                break;
            }
            sh.wait_space(Duration::from_millis(20));
        }
        if !drained {
            tracing::warn!("shutdown: some blocks stayed unflushed after {timeout:?}; clients resend them on reconnect");
        }
        sh.closed.store(true, Ordering::SeqCst);
        sh.repair.wake();
        let workers = self.config().workers().max(1);
        for _ in 0..workers {
            let _ = sh.flush_tx.send(flusher::Msg::Close);
        }
        for _ in 0..attach::WORKERS {
            let _ = sh.attach_tx.send(None);
        }
        let join_deadline = deadline.max(Instant::now() + Duration::from_secs(2));
        let mut threads = std::mem::take(&mut *lock(&self.threads));
        let mut clean = drained;
        // Everything that feeds the completer and the writers first.
        clean &= join(
            &mut threads,
            |n| n.starts_with("flusher-") || n.starts_with("attach-") || n == "flush-timer" || n == "repairer" || n == "scrubber",
            join_deadline,
        );
        let _ = sh.events.send(Event::Close);
        clean &= join(&mut threads, |n| n == "flush-completer", join_deadline);
        for w in &sh.writers {
            w.close();
        }
        clean &= join(&mut threads, |_| true, join_deadline);
        clean
    }
}

/// The scheduled scrub (`[upkeep] scrub_interval`): every `every`, reads and checks every shard
/// and head of every vdisk at `upkeep.scrub_rate_mib`, repairs what is bad, and logs what it
/// found.
fn scrubber(sh: Arc<Shared>, every: Duration) {
    let stop = Arc::new(AtomicBool::new(false));
    loop {
        let next = Instant::now() + every;
        while Instant::now() < next {
            if sh.closed.load(Ordering::SeqCst) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100).min(every));
        }
        let (s2, st) = (sh.clone(), stop.clone());
        // The scrub checks `stop` between aggregations; a watcher turns shutdown into it.
        let watcher = std::thread::spawn(move || {
            while !s2.closed.load(Ordering::SeqCst) && !st.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(100));
            }
            st.store(true, Ordering::SeqCst);
        });
        let opts = crate::history::scrub::ScrubOptions { vdisk: None, repair: true, rate_mib: sh.cfg.upkeep.scrub_rate_mib, stop: Some(stop.clone()) };
        let start = Instant::now();
        match crate::history::scrub::scrub(&sh.backends, &sh.sealer, &opts) {
            Ok(r) => {
                let st = &sh.stats;
                st.scrub_passes.fetch_add(1, Ordering::Relaxed);
                st.scrub_aggregations.store(r.aggregations, Ordering::Relaxed);
                st.scrub_findings.fetch_add(r.findings.len() as u64, Ordering::Relaxed);
                st.scrub_unrepaired.store(r.unrepaired() as u64, Ordering::Relaxed);
                st.scrub_completed_at.store(sh.clock.wall_ns() / 1_000_000_000, Ordering::Relaxed);
                for f in &r.findings {
                    tracing::warn!(vdisk = %f.vdisk, key = ?f.key, backend = ?f.backend, kind = ?f.kind, repaired = f.repaired, "scrub: {}", f.detail);
                }
                tracing::info!(
                    "scrub: {} vdisks, {} aggregations, {} shards read in {:?}; {} problems, {} repaired",
                    r.vdisks,
                    r.aggregations,
                    r.shards,
                    start.elapsed(),
                    r.findings.len(),
                    r.findings.len() - r.unrepaired()
                );
            }
            Err(e) => tracing::error!("scrub failed: {e}"),
        }
        stop.store(true, Ordering::SeqCst);
        let _ = watcher.join();
        if sh.closed.load(Ordering::SeqCst) {
            return;
        }
        stop.store(false, Ordering::SeqCst);
    }
}

/// The engine as playbacks see it: the flushed head of a vdisk, and waiting for it to move.
struct LiveEngine(Arc<Shared>);

impl crate::history::playback::Live for LiveEngine {
    fn last_flushed(&self, vdisk: &str) -> Option<u64> {
        self.0.vdisk(vdisk).ok().and_then(|v| v.last_flushed())
    }

    fn behind(&self, id: u64, vdisk: &str, behind: Option<u64>) {
        let mut p = super::lock(&self.0.playbacks);
        match behind {
            Some(b) => {
                p.insert(id, (vdisk.to_string(), b));
            }
            None => {
                p.remove(&id);
            }
        }
    }

    fn wait_flushed(&self, vdisk: &str, past: Option<u64>, timeout: Duration) -> Option<u64> {
        let end = Instant::now() + timeout;
        let vd = self.0.vdisk(vdisk).ok()?;
        loop {
            let l = vd.last_flushed();
            if l.is_some() && (past.is_none() || l > past) {
                return l;
            }
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() || self.0.closed.load(Ordering::SeqCst) {
                return l;
            }
            self.0.wait_space(left.min(Duration::from_millis(100)));
        }
    }
}

/// Joins the threads whose name `which` selects, waiting until `deadline` at most; reports
/// (and leaves running) those that do not stop in time. Returns true when all were joined.
fn join(threads: &mut Vec<(String, JoinHandle<()>)>, which: impl Fn(&str) -> bool, deadline: Instant) -> bool {
    let mut all = true;
    let (pick, keep): (Vec<_>, Vec<_>) = std::mem::take(threads).into_iter().partition(|(n, _)| which(n));
    *threads = keep;
    for (name, h) in pick {
        while !h.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        if h.is_finished() {
            if h.join().is_err() {
                tracing::error!(thread = %name, "engine thread panicked");
                all = false;
            }
        } else {
            tracing::error!(thread = %name, "engine thread did not stop in time; left running");
            all = false;
        }
    }
    all
}

impl Core for Engine {
    type Handle = Arc<Vdisk>;

    fn attach(&self, req: AttachRequest, sink: AckSink) -> AttachTicket<Arc<Vdisk>> {
        let ticket = AttachTicket::default();
        if self.sh.stopping.load(Ordering::SeqCst) {
            ticket.finish(Err(super::AttachError::ShuttingDown));
            return ticket;
        }
        if let Err(e) = self.sh.attach_tx.send(Some(Job::Attach { req, sink, ticket: ticket.clone() })) {
            if let Some(Job::Attach { ticket, .. }) = e.into_inner() {
                ticket.finish(Err(super::AttachError::ShuttingDown));
            }
        }
        ticket
    }

    fn control(&self, req: ControlRequest) -> Ticket<ControlResponse> {
        let ticket = Ticket::default();
        if self.sh.stopping.load(Ordering::SeqCst) || self.sh.attach_tx.send(Some(Job::Control { req, ticket: ticket.clone() })).is_err() {
            ticket.finish(ControlResponse::Error("server is shutting down".into()));
        }
        ticket
    }

    fn playback(&self, vdisk: &str, req: PlaybackRequest, out: Sender<Ack>, cancel: Arc<AtomicBool>) {
        let (backends, sealer) = (self.sh.backends.clone(), self.sh.sealer.clone());
        let live: Arc<dyn crate::history::playback::Live> = Arc::new(LiveEngine(self.sh.clone()));
        let v = vdisk.to_string();
        let r = std::thread::Builder::new()
            .name(format!("playback-{vdisk}"))
            .spawn(move || crate::history::playback::run(backends, sealer, &v, &req, out, cancel, Some(live)));
        if let Err(e) = r {
            tracing::error!(vdisk, "cannot start a playback thread: {e}");
        }
    }

    fn read(&self, vdisk: &str, at: crate::wire::PointSpec, requests: crossbeam_channel::Receiver<u32>, out: Sender<Ack>, cancel: Arc<AtomicBool>) {
        let (backends, sealer) = (self.sh.backends.clone(), self.sh.sealer.clone());
        let live: Arc<dyn crate::history::playback::Live> = Arc::new(LiveEngine(self.sh.clone()));
        let v = vdisk.to_string();
        let r = std::thread::Builder::new()
            .name(format!("read-{vdisk}"))
            .spawn(move || crate::history::playback::run_read(backends, sealer, &v, &at, requests, out, cancel, Some(live)));
        if let Err(e) = r {
            tracing::error!(vdisk, "cannot start a read thread: {e}");
        }
    }

    fn push(&self, vd: &Arc<Vdisk>, epoch: u64, block: Block) -> Push {
        self.sh.push(vd, epoch, block)
    }

    fn force_flush(&self, vd: &Arc<Vdisk>) {
        if lock(&vd.ns).rotate() {
            self.sh.queue_flush(vd);
        }
    }

    fn detach(&self, vd: &Arc<Vdisk>, epoch: u64) {
        let mut s = lock(&vd.sink);
        if s.as_ref().map(|(e, _)| *e == epoch).unwrap_or(false) {
            *s = None;
        }
    }

    fn wait_space(&self, timeout: Duration) {
        self.sh.wait_space(timeout);
    }

    fn copy_data(&self, data: &[u8]) -> Vec<u8> {
        self.sh.buffers.copy(data)
    }
}
