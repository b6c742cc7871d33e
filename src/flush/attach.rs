//! Attach workers: a small pool of threads that attach connections to vdisks, so the backend
//! reads of a first attach (finding the head) and the wait of a takeover never block a
//! front-end's thread (a userspace stack's poll loop serves many connections).
//!
//! A reconnecting writer presents its epoch: if a newer writer took the vdisk over since, it is
//! refused (`fenced`) instead of taking it back, so after a crash only the newest writer goes
//! on. A new writer (no epoch) takes over.
//!
//! A takeover, in order (DESIGN.md §5): refuse a `resetFirstSequence` into the history before
//! anything changes; *fence* the current writer (its later blocks are refused; what it buffered
//! is queued to flush); *drain* (wait until every block the old epoch received is durable, its
//! flushed acks going to the old connection, at most `server.takeover_timeout_ms`); tell the old
//! connection it is fenced; persist the new epoch; begin it after the durable head. So the new
//! writer's `lastFlushedSequence` is exactly the durable head when its epoch begins, and nothing
//! of the old epoch becomes durable after it. (Drain, not discard: the old writer's received
//! blocks are kept.)

use super::{lock, Ack, AckSink, AttachError, AttachRequest, AttachTicket, Attached, Shared, Ticket, Vdisk};
use crate::namespace::{BeginError, FirstSequence};
use crate::wire::{CheckpointMark, ControlRequest, ControlResponse};
use crossbeam_channel::Receiver;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Attach worker threads.
pub const WORKERS: usize = 4;

/// Work for the attach workers.
pub enum Job {
    /// Attach a connection.
    Attach {
        /// The request.
        req: AttachRequest,
        /// The connection's ack sink.
        sink: AckSink,
        /// Where the answer goes.
        ticket: AttachTicket<Arc<Vdisk>>,
    },
    /// A control request (checkpoint, history summary).
    Control {
        /// The request.
        req: ControlRequest,
        /// Where the answer goes.
        ticket: Ticket<ControlResponse>,
    },
}

/// An attach worker's body (`None` stops it).
pub(crate) fn run(sh: Arc<Shared>, rx: Receiver<Option<Job>>) {
    while let Ok(Some(job)) = rx.recv() {
        match job {
            Job::Attach { req, sink, ticket } => ticket.finish(attach(&sh, req, sink)),
            Job::Control { req, ticket } => ticket.finish(control(&sh, req)),
        }
        sh.signal_space();
    }
}

fn control(sh: &Shared, req: ControlRequest) -> ControlResponse {
    match req {
        ControlRequest::Checkpoint { name, vdisks } => match checkpoint(sh, &name, &vdisks) {
            Ok(marks) => ControlResponse::Checkpoint(marks),
            Err(e) => ControlResponse::Error(e),
        },
        ControlRequest::Fork { vdisk, new, at } => done(super::branch::fork(sh, &vdisk, &new, &at)),
        ControlRequest::Rebase { vdisk, onto, at } => done(super::branch::rebase(sh, &vdisk, &onto, &at)),
        ControlRequest::Delete { vdisk, force } => done(super::branch::delete(sh, &vdisk, force)),
        ControlRequest::Status => done(serde_json::to_string(&sh.metrics()).map_err(|e| crate::Error::InvalidArgument(format!("json: {e}")))),
        ControlRequest::Tree => done(
            crate::history::tree::tree(&sh.backends, &sh.codec)
                .and_then(|t| serde_json::to_string(&t).map_err(|e| crate::Error::InvalidArgument(format!("json: {e}")))),
        ),
        ControlRequest::History { vdisk } => {
            match crate::history::History::load(sh.backends.clone(), sh.sealer.clone(), &vdisk)
                .and_then(|h| serde_json::to_string(&h.summary()).map_err(|e| crate::Error::InvalidArgument(format!("json: {e}"))))
            {
                Ok(j) => ControlResponse::History(j),
                Err(e) => ControlResponse::Error(e.to_string()),
            }
        }
    }
}

fn done(r: crate::Result<String>) -> ControlResponse {
    match r {
        Ok(j) => ControlResponse::Done(j),
        Err(e) => ControlResponse::Error(e.to_string()),
    }
}

/// A checkpoint of a consistency group: intake of every vdisk is held, everything received is
/// made durable, the name is recorded at each vdisk's last flushed sequence on the backends
/// (at least `write_quorum` of them), and intake resumes. Other vdisks are not held.
fn checkpoint(sh: &Shared, name: &str, vdisks: &[String]) -> Result<Vec<CheckpointMark>, String> {
    if !crate::history::checkpoint::valid_name(name) {
        return Err(format!("checkpoint name {name:?} is invalid: 1 to 64 characters of A-Z a-z 0-9 . _ -"));
    }
    if vdisks.is_empty() {
        return Err("a checkpoint needs at least one vdisk".into());
    }
    let mut group: Vec<Arc<Vdisk>> = Vec::new();
    for v in vdisks {
        if !super::valid_vdisk_id(v) {
            return Err(format!("vdisk id {v:?} is invalid"));
        }
        let vd = sh.vdisk(v).map_err(|e| format!("cannot open vdisk {v}: {e}"))?;
        if !group.iter().any(|g| g.name() == vd.name()) {
            group.push(vd);
        }
    }
    for vd in &group {
        let mut ns = lock(&vd.ns);
        ns.hold(true);
        if ns.rotate() {
            drop(ns);
            sh.queue_flush(vd);
        }
    }
    let result = (|| {
        let deadline = Instant::now() + Duration::from_millis(sh.cfg.server.takeover_timeout_ms);
        while !group.iter().all(|vd| lock(&vd.ns).idle()) {
            if Instant::now() >= deadline {
                return Err(format!("blocks of the group did not become durable within {} ms (server.takeover_timeout_ms)", sh.cfg.server.takeover_timeout_ms));
            }
            sh.wait_space(Duration::from_millis(20));
        }
        let time = sh.clock.wall_ns();
        let mut marks = Vec::new();
        for vd in &group {
            let (sequence, epoch) = {
                let ns = lock(&vd.ns);
                (ns.last_flushed(), ns.epoch())
            };
            let c = crate::history::checkpoint::Checkpoint { name: name.to_string(), sequence, time, epoch };
            let stored = crate::history::checkpoint::store(&sh.backends, &sh.codec, vd.name(), &c);
            if stored < sh.write_quorum {
                return Err(format!("checkpoint {name} of vdisk {} stored on {stored} backends, write_quorum is {}", vd.name(), sh.write_quorum));
            }
            marks.push(CheckpointMark { vdisk: vd.name().to_string(), sequence, time });
        }
        Ok(marks)
    })();
    for vd in &group {
        lock(&vd.ns).hold(false);
    }
    sh.signal_space();
    if let Ok(m) = &result {
        tracing::info!(name, "checkpoint taken: {}", m.iter().map(|m| format!("{} at {:?}", m.vdisk, m.sequence)).collect::<Vec<_>>().join(", "));
    }
    result
}

fn attach(sh: &Shared, req: AttachRequest, sink: AckSink) -> Result<Attached<Arc<Vdisk>>, AttachError> {
    if sh.stopping.load(Ordering::SeqCst) {
        return Err(AttachError::ShuttingDown);
    }
    let mut vd = sh.vdisk(&req.vdisk).map_err(|e| AttachError::Storage(format!("cannot open vdisk {}: {e}", req.vdisk)))?;
    // The writer epoch the backends hold: newer than this tlogd's means another tlogd wrote the
    // vdisk since it was loaded here, so its state is loaded anew.
    let held = held_epoch(sh, &req.vdisk);
    if vd.stale.load(Ordering::SeqCst) || held > lock(&vd.ns).epoch() {
        tracing::info!(vdisk = %req.vdisk, held, "another writer held this vdisk in the backends: loading it anew");
        vd = sh.reload(&req.vdisk).map_err(|e| AttachError::Storage(format!("cannot reload vdisk {}: {e}", req.vdisk)))?;
    }
    let _one_at_a_time = lock(&vd.attach_lock);
    if let Some(why) = lock(&vd.busy).clone() {
        return Err(AttachError::Busy(format!("vdisk {} is {why}; try again when it is done", vd.name())));
    }
    if req.reset_first_sequence {
        if let Some(last) = lock(&vd.ns).last_received() {
            if req.first_sequence <= last {
                return Err(AttachError::WouldReuse { requested: req.first_sequence, last });
            }
        }
    }
    let current = current_epoch(sh, &vd)?.max(held);
    if req.resume_epoch > 0 && current > req.resume_epoch {
        return Err(AttachError::Fenced { epoch: req.resume_epoch, by: current });
    }
    let epoch = current + 1;
    if lock(&vd.ns).fence() {
        sh.queue_flush(&vd);
    }
    let deadline = Instant::now() + Duration::from_millis(sh.cfg.server.takeover_timeout_ms);
    while !lock(&vd.ns).idle() {
        if Instant::now() >= deadline || sh.stopping.load(Ordering::SeqCst) {
            return Err(AttachError::Busy(format!(
                "the previous writer's blocks of vdisk {} are not durable after {} ms (server.takeover_timeout_ms)",
                vd.name(),
                sh.cfg.server.takeover_timeout_ms
            )));
        }
        sh.wait_space(Duration::from_millis(50));
    }
    if let Some((old, s)) = lock(&vd.sink).take() {
        tracing::info!(vdisk = %vd.name(), old_epoch = old, epoch, "vdisk taken over by a new connection; the old one is fenced");
        let _ = s.send(Ack::Fenced { by: epoch });
    }
    fence_backends(sh, vd.name(), epoch)?;
    persist_epoch(sh, &vd, epoch)?;
    let mut random = [0u8; 16];
    getrandom::getrandom(&mut random).map_err(|e| AttachError::Storage(format!("no randomness for the attach nonce: {e}")))?;
    {
        let mut r = lock(&vd.random);
        r.clear();
        r.insert(epoch, random);
    }
    let first = if req.reset_first_sequence { FirstSequence::Reset(req.first_sequence) } else { FirstSequence::Continue(req.first_sequence) };
    *lock(&vd.sink) = Some((epoch, sink));
    let mut ns = lock(&vd.ns);
    let next = match ns.begin_epoch(epoch, first) {
        Ok(n) => n,
        Err(BeginError::WouldReuse { requested, last_flushed }) => {
            drop(ns);
            *lock(&vd.sink) = None;
            return Err(AttachError::WouldReuse { requested, last: last_flushed });
        }
        Err(BeginError::NotIdle) => {
            drop(ns);
            *lock(&vd.sink) = None;
            return Err(AttachError::Busy(format!("vdisk {} received blocks during the takeover", vd.name())));
        }
    };
    let last_flushed = ns.last_flushed();
    drop(ns);
    drop(_one_at_a_time);
    Ok(Attached { handle: vd, epoch, last_flushed, next_sequence: next })
}

/// Calls `f` on every backend at once (a thread each) and gathers the answers until `enough`
/// says so or all have answered; a slow or hung backend's call finishes in the background.
fn gather<T: Send + 'static>(sh: &Shared, f: impl Fn(&dyn crate::backend::Backend) -> T + Send + Sync + 'static, enough: impl Fn(&[T]) -> bool) -> Vec<T> {
    let f = Arc::new(f);
    let (tx, rx) = crossbeam_channel::unbounded();
    for b in &sh.backends {
        let (b, f, tx) = (b.clone(), f.clone(), tx.clone());
        let spawned = std::thread::Builder::new().name("fence".into()).spawn(move || {
            let _ = tx.send(f(b.as_ref()));
        });
        if spawned.is_err() {
            tracing::warn!("cannot start a fence thread");
        }
    }
    drop(tx);
    let mut out = Vec::with_capacity(sh.backends.len());
    while let Ok(r) = rx.recv_timeout(Duration::from_secs(60)) {
        out.push(r);
        if enough(&out) {
            break;
        }
    }
    out
}

/// The newest writer epoch of `vdisk` the backends hold (0: none), from the first
/// `write_quorum` that answer: a newer writer fenced at least (k + m) - write_quorum + 1 of
/// them, so these include one of its.
pub(crate) fn held_epoch(sh: &Shared, vdisk: &str) -> u64 {
    let v = vdisk.to_string();
    let w = sh.write_quorum;
    let r = gather(sh, move |b| b.fence(&v, 0).ok(), move |got| got.iter().filter(|x| x.is_some()).count() >= w);
    r.into_iter().flatten().max().unwrap_or(0)
}

/// Takes writer epoch `epoch` of `vdisk` on the backends (compare-and-set, all at once). It
/// must hold on at least (k + m) - write_quorum + 1 of them, so that a previous writer (another
/// tlogd, perhaps only cut off) can no longer reach its write quorum: each of its later writes
/// is refused there. Errors: fewer taken (backends down, or a newer writer raced this one).
pub(crate) fn fence_backends(sh: &Shared, vdisk: &str, epoch: u64) -> Result<(), AttachError> {
    let n = sh.backends.len();
    let need = (n + 1).saturating_sub(sh.write_quorum).max(1);
    let names: Vec<String> = sh.backends.iter().map(|b| b.name()).collect();
    let v = vdisk.to_string();
    let results = gather(
        sh,
        move |b| (b.name(), b.fence(&v, epoch).map_err(|e| e.to_string())),
        move |got| got.iter().filter(|(_, r)| matches!(r, Ok(e) if *e == epoch)).count() >= need,
    );
    let taken = results.iter().filter(|(_, r)| matches!(r, Ok(e) if *e == epoch)).count();
    if taken >= need {
        return Ok(());
    }
    let newer = results.iter().filter_map(|(_, r)| r.as_ref().ok()).copied().filter(|e| *e > epoch).max();
    let mut errors: Vec<String> = results.iter().filter_map(|(b, r)| r.as_ref().err().map(|e| format!("{b}: {e}"))).collect();
    errors.extend(names.iter().filter(|b| !results.iter().any(|(x, _)| x == *b)).map(|b| format!("{b}: no answer")));
    Err(AttachError::Busy(match newer {
        Some(by) => format!("vdisk {vdisk}: a newer writer (epoch {by}) took it while this one fenced epoch {epoch}"),
        None => {
            format!("vdisk {vdisk}: writer epoch {epoch} taken on {taken} of {n} backends, {need} needed to fence the previous writer ({})", errors.join("; "))
        }
    }))
}

pub(crate) fn epoch_path(sh: &Shared, vd: &Vdisk) -> std::path::PathBuf {
    sh.cfg.server.data_dir.join("vdisks").join(format!("{}.epoch", vd.name()))
}

/// The newest epoch seen: the persisted one, and the newest in the backends' head.
pub(crate) fn current_epoch(sh: &Shared, vd: &Vdisk) -> Result<u64, AttachError> {
    let p = epoch_path(sh, vd);
    let stored: u64 = match std::fs::read_to_string(&p) {
        Ok(s) => s.trim().parse().map_err(|_| AttachError::Storage(format!("epoch file {} does not hold a number", p.display())))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
        Err(e) => return Err(AttachError::Storage(format!("read {}: {e}", p.display()))),
    };
    Ok(stored.max(lock(&vd.ns).epoch()))
}

pub(crate) fn persist_epoch(sh: &Shared, vd: &Vdisk, epoch: u64) -> Result<(), AttachError> {
    #[cfg(feature = "failpoints")]
    fail::fail_point!("flush::persist_epoch", |arg| crate::failpoint_action(arg).map_err(|e| AttachError::Storage(e.to_string())));
    let p = epoch_path(sh, vd);
    crate::fs::write_atomic(&p, epoch.to_string().as_bytes()).map_err(|e| AttachError::Storage(format!("cannot persist the epoch of {}: {e}", vd.name())))
}
