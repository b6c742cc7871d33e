//! Playback (DESIGN.md §12): a vdisk's blocks between two points, in sequence order, as
//! protocol frames (`ServerMessage::Block`, then `PlaybackEnd`), and with `follow`, every block
//! flushed afterwards, exactly once.
//!
//! The producer reads through the index: each aggregation in the range is fetched and unsealed,
//! its blocks in the range are encoded into chunks of about 1 MiB and handed to the connection's
//! bounded channel, so a slow reader holds back only its own stream (at most the channel's
//! chunks plus one aggregation in memory) and never the engine. Only aggregations that are
//! flushed (acknowledged) are streamed: the end of the range is capped at the engine's last
//! flushed sequence when tlogd serves it ([`Live`]).
//!
//! Follow of a vdisk with no history yet (from and to unset) waits for its first flush. Once
//! caught up, the producer waits for the engine to flush more, then streams the
//! aggregations after the last one it sent, found as loose index entries (or in the newest page)
//! that link to it by `prev`: a flush landing while it reads is neither lost (it links on) nor
//! repeated (only heights past the last sent are taken). Each time it is caught up it sends the
//! vdisk's head sequence (`ServerMessage::Head`), from which a follower computes its lag.

use super::index::{page_name, page_of, IndexEntry};
use super::points::Point;
use super::History;
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::flush::Ack;
use crate::seal::Sealer;
use crate::wire::{encode_server_message, ErrorCode, PlaybackRequest, PointSpec, ServerError, ServerMessage};
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Bytes of encoded blocks per chunk handed to the connection.
pub const CHUNK_BYTES: usize = 1 << 20;

/// Aggregations a playback fetches and unseals at once (it holds at most twice as many
/// unsealed aggregations ahead of the one it encodes, besides the connection's buffer of
/// `server.playback_buffer_bytes`).
pub const PARALLEL: usize = 2;

/// The nice value of a playback's threads (Linux: per thread; the fetch workers inherit it).
/// Playback is background work: it takes the CPU that ingest leaves, so it never slows ingest
/// by more than what the kernel's weights give nice 19 (1.5% of a nice-0 thread's share).
pub const NICE: i32 = 19;

/// What a running tlogd tells a playback of a vdisk it serves.
pub trait Live: Send + Sync {
    /// The last flushed (acknowledged) sequence of `vdisk`, if any (loading the vdisk if needed).
    fn last_flushed(&self, vdisk: &str) -> Option<u64>;
    /// Waits until the last flushed sequence of `vdisk` passes `past`, at most `timeout`;
    /// returns it.
    fn wait_flushed(&self, vdisk: &str, past: Option<u64>, timeout: Duration) -> Option<u64>;
    /// Playback `id` of `vdisk` has `behind` flushed blocks yet to stream (its lag; a
    /// replication's standby is that far behind); `None`: it ended. Default: not recorded.
    fn behind(&self, _id: u64, _vdisk: &str, _behind: Option<u64>) {}
}

/// Ids of playbacks, for their lag records.
static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// Removes a playback's lag record when it ends, however it ends.
struct LagRecord<'a> {
    live: Arc<dyn Live>,
    id: u64,
    vdisk: &'a str,
}

impl Drop for LagRecord<'_> {
    fn drop(&mut self) {
        self.live.behind(self.id, self.vdisk, None);
    }
}

/// From the protocol's form.
pub fn point(p: &PointSpec) -> Option<Point> {
    match p {
        PointSpec::None => None,
        PointSpec::Sequence(s) => Some(Point::Sequence(*s)),
        PointSpec::Time(t) => Some(Point::Time(*t)),
        PointSpec::Checkpoint(c) => Some(Point::Checkpoint(c.clone())),
    }
}

/// The wire form of a point (`None`: the start or the head, as the side asks), the inverse of
/// [`point`].
pub fn spec(p: Option<&Point>) -> PointSpec {
    match p {
        None => PointSpec::None,
        Some(Point::Sequence(s)) => PointSpec::Sequence(*s),
        Some(Point::Time(t)) => PointSpec::Time(*t),
        Some(Point::Checkpoint(c)) => PointSpec::Checkpoint(c.clone()),
    }
}

struct Out<'a> {
    tx: &'a Sender<Ack>,
    buf: Vec<u8>,
    cancel: &'a AtomicBool,
}

impl Out<'_> {
    /// Queues a message; false when the client is gone (or the playback was cancelled).
    fn push(&mut self, m: &ServerMessage) -> bool {
        self.buf.extend_from_slice(&encode_server_message(m));
        self.buf.len() < CHUNK_BYTES || self.flush()
    }

    fn flush(&mut self) -> bool {
        if self.cancel.load(Ordering::SeqCst) {
            return false;
        }
        if self.buf.is_empty() {
            return true;
        }
        let chunk = std::mem::take(&mut self.buf);
        self.tx.send(Ack::Frames(chunk)).is_ok()
    }
}

fn error_frame(code: ErrorCode, message: String) -> ServerMessage {
    ServerMessage::Error(ServerError { code, sequence: 0, expected_sequence: 0, message })
}

/// Streams the playback `req` of `vdisk` to `tx` until done, an error (sent as an error
/// message), the client leaving, or `cancel`.
pub fn run(
    backends: Vec<Arc<dyn Backend>>,
    sealer: Arc<Sealer>,
    vdisk: &str,
    req: &PlaybackRequest,
    tx: Sender<Ack>,
    cancel: Arc<AtomicBool>,
    live: Option<Arc<dyn Live>>,
) {
    if live.is_some() {
        if let Err(e) = rustix::process::setpriority_process(Some(rustix::thread::gettid()), NICE) {
            tracing::debug!(vdisk, "cannot lower the playback thread's priority: {e}");
        }
    }
    let mut out = Out { tx: &tx, buf: Vec::new(), cancel: &cancel };
    match stream(backends, sealer, vdisk, req, &mut out, live) {
        Ok(()) => {}
        Err(e) => {
            let code = if matches!(e, Error::InvalidArgument(_) | Error::NotFound(_)) { ErrorCode::OutOfRange } else { ErrorCode::InternalError };
            tracing::debug!(vdisk, "playback ended: {e}");
            out.push(&error_frame(code, e.to_string()));
        }
    }
    out.flush();
}

fn stream(
    backends: Vec<Arc<dyn Backend>>,
    sealer: Arc<Sealer>,
    vdisk: &str,
    req: &PlaybackRequest,
    out: &mut Out<'_>,
    live: Option<Arc<dyn Live>>,
) -> Result<()> {
    let mut flushed = live.as_ref().and_then(|l| l.last_flushed(vdisk));
    let follow_live = live.as_ref().filter(|_| req.follow && req.from == PointSpec::None && req.to == PointSpec::None);
    if let (Some(l), None) = (follow_live, flushed) {
        // Following a vdisk with no history yet (a standby set up before its first write):
        // wait for its first flush.
        while flushed.is_none() {
            if !out.flush() {
                return Ok(());
            }
            flushed = l.wait_flushed(vdisk, None, Duration::from_millis(500));
        }
    }
    let mut h = History::load(backends, sealer, vdisk)?;
    // Only what is acknowledged: a head written with an aggregation still in flight is ignored.
    if let (Some(l), Some(_)) = (flushed, &live) {
        let keep = h.index.entries.partition_point(|e| e.last_sequence <= l);
        h.index.entries.truncate(keep);
    }
    let from = match point(&req.from) {
        Some(p) => h.resolve(&p)?,
        None => None,
    };
    let to = match point(&req.to) {
        Some(p) => h.resolve(&p)?,
        None => h.index.sequences().map(|(_, l)| l),
    };
    if let (Some(f), Some(t)) = (from, to) {
        if f > t {
            return Err(Error::InvalidArgument(format!("the from point (sequence {f}) is after the to point (sequence {t})")));
        }
    }
    let mut last_sent = from;
    let start = match from {
        Some(f) => h.index.entries.partition_point(|e| e.last_sequence <= f),
        None => 0,
    };
    let end = match to {
        Some(t) => h.index.entries.partition_point(|e| e.first_sequence <= t),
        None => 0,
    };
    let mut gone = false;
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    let _record = live.clone().map(|l| LagRecord { live: l, id, vdisk });
    let head = live.as_ref().and_then(|l| l.last_flushed(vdisk));
    let reporter = live.clone();
    let report = move |sent: Option<u64>, head: Option<u64>| {
        if let (Some(l), Some(h)) = (reporter.as_ref(), head) {
            l.behind(id, vdisk, Some(h.saturating_sub(sent.unwrap_or(0))));
        }
    };
    h.for_each_aggregation(start..end.max(start), PARALLEL, |_, agg| {
        report(agg.blocks.last().map(|b| b.sequence), head);
        for b in agg.blocks {
            if from.map(|f| b.sequence <= f).unwrap_or(false) || to.map(|t| b.sequence > t).unwrap_or(true) {
                continue;
            }
            last_sent = Some(b.sequence);
            if !out.push(&ServerMessage::Block(b)) {
                gone = true;
                return Ok(false);
            }
        }
        Ok(true)
    })?;
    if gone {
        return Ok(());
    }
    let Some(live) = live.filter(|_| req.follow) else {
        out.push(&ServerMessage::PlaybackEnd(last_sent));
        return Ok(());
    };
    // Follow: from the last aggregation of the vdisk's own chain on (none yet: a fork that has
    // no block of its own follows its own chain from its first aggregation).
    let own = h.own_start();
    let mut last = h.index.entries[own.min(h.index.entries.len())..].iter().rev().find(|e| e.height > 0).copied();
    loop {
        if let Some(l) = live.last_flushed(vdisk) {
            out.push(&ServerMessage::Head(l));
        }
        if !out.flush() {
            return Ok(());
        }
        let seen = last.map(|e| e.last_sequence);
        report(last_sent, live.last_flushed(vdisk));
        let Some(now) = live.wait_flushed(vdisk, seen, Duration::from_millis(500)) else { continue };
        if seen.map(|s| now <= s).unwrap_or(false) {
            continue;
        }
        for e in entries_after(&h, last.as_ref(), now)? {
            let agg = crate::seal::fetch_aggregation(&h.backends, &h.sealer, &e.key)?;
            if agg.prev != e.prev || agg.vdisk_id != vdisk {
                return Err(Error::ChainBroken { key: hex::encode(e.key), detail: "the aggregation does not match its index entry".into() });
            }
            for b in agg.blocks {
                if last_sent.map(|s| b.sequence <= s).unwrap_or(false) {
                    continue;
                }
                last_sent = Some(b.sequence);
                if !out.push(&ServerMessage::Block(b)) {
                    return Ok(());
                }
            }
            last = Some(e);
        }
    }
}

/// The index entries after `after` (the last one streamed; `None`: from the first) up to the
/// flushed sequence `upto`, following the chain by `prev`: the loose entries, and the newest
/// pages where they were already compacted.
fn entries_after(h: &History, after: Option<&IndexEntry>, upto: u64) -> Result<Vec<IndexEntry>> {
    let from_height = after.map(|e| e.height + 1).unwrap_or(1);
    let mut cands: std::collections::HashMap<u64, Vec<IndexEntry>> = std::collections::HashMap::new();
    let mut add = |e: IndexEntry| {
        if e.height >= from_height && e.last_sequence <= upto {
            let v = cands.entry(e.height).or_default();
            if !v.contains(&e) {
                v.push(e);
            }
        }
    };
    for b in &h.backends {
        if let Ok(list) = b.list_meta(&h.vdisk, "i/") {
            for (_, v) in list {
                if let Ok(e) = h.codec.decode_entry(&h.vdisk, &v) {
                    add(e);
                }
            }
        }
        // A page completed since: its entries are no longer loose.
        let page = page_of(from_height);
        for p in [page, page + 1] {
            if let Ok(Some(v)) = b.get_meta(&h.vdisk, &page_name(p)) {
                if let Ok(es) = h.codec.decode_page(&h.vdisk, &v) {
                    es.into_iter().for_each(&mut add);
                }
            }
        }
    }
    let mut out = Vec::new();
    let mut prev = after.map(|e| e.key).unwrap_or([0u8; 32]);
    let mut height = from_height;
    while let Some(e) = cands.get(&height).and_then(|v| v.iter().find(|e| e.prev == prev)).copied() {
        prev = e.key;
        height += 1;
        out.push(e);
    }
    Ok(out)
}

/// Index entries per `ServerMessage::Index` part on a read connection.
pub const INDEX_PART: usize = 4096;

/// Serves a read connection (DESIGN.md §13, exports of a past point straight from the log):
/// loads `vdisk`'s path, resolves `at` (none: the newest flushed block), sends the path's index
/// up to it in parts of [`INDEX_PART`] entries (the last one cut at the point), then answers each
/// position from `requests` with the blocks of that aggregation up to the point
/// (`Block` ... `PlaybackEnd`), until the client leaves or `cancel`. A position past the index is
/// answered with an `outOfRange` error, a fetch that fails with `internalError`; the connection
/// goes on. A bad point ends it with `outOfRange` (the message names the range that exists).
#[allow(clippy::too_many_arguments)]
pub fn run_read(
    backends: Vec<Arc<dyn Backend>>,
    sealer: Arc<Sealer>,
    vdisk: &str,
    at: &PointSpec,
    requests: Receiver<u32>,
    tx: Sender<Ack>,
    cancel: Arc<AtomicBool>,
    live: Option<Arc<dyn Live>>,
) {
    let mut out = Out { tx: &tx, buf: Vec::new(), cancel: &cancel };
    if let Err(e) = serve_read(backends, sealer, vdisk, at, &requests, &mut out, live) {
        let code = if matches!(e, Error::InvalidArgument(_) | Error::NotFound(_)) { ErrorCode::OutOfRange } else { ErrorCode::InternalError };
        tracing::debug!(vdisk, "read connection ended: {e}");
        out.push(&error_frame(code, e.to_string()));
    }
    out.flush();
}

fn serve_read(
    backends: Vec<Arc<dyn Backend>>,
    sealer: Arc<Sealer>,
    vdisk: &str,
    at: &PointSpec,
    requests: &Receiver<u32>,
    out: &mut Out<'_>,
    live: Option<Arc<dyn Live>>,
) -> Result<()> {
    let mut h = History::load(backends, sealer, vdisk)?;
    if let Some(l) = live.as_ref().and_then(|l| l.last_flushed(vdisk)) {
        let keep = h.index.entries.partition_point(|e| e.last_sequence <= l);
        h.index.entries.truncate(keep);
    }
    let cut = match point(at) {
        Some(p) => h.resolve(&p)?,
        None => h.index.sequences().map(|(_, l)| l),
    };
    let n = cut.map(|c| h.index.entries.partition_point(|e| e.first_sequence <= c)).unwrap_or(0);
    h.index.entries.truncate(n);
    if let (Some(c), Some(last)) = (cut, h.index.entries.last_mut()) {
        last.last_sequence = last.last_sequence.min(c);
    }
    tracing::info!(vdisk, aggregations = n, cut = ?cut, "read connection: serving the point");
    let parts: Vec<&[IndexEntry]> = if n == 0 { vec![&[]] } else { h.index.entries.chunks(INDEX_PART).collect() };
    for (i, part) in parts.iter().enumerate() {
        let mut entries = Vec::with_capacity(part.len() * 120);
        for e in part.iter() {
            e.body(&mut entries);
        }
        if !out.push(&ServerMessage::Index { entries, count: part.len() as u32, done: i + 1 == parts.len() }) {
            return Ok(());
        }
    }
    loop {
        if !out.flush() {
            return Ok(());
        }
        let i = match requests.recv_timeout(Duration::from_millis(500)) {
            Ok(i) => i as usize,
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => return Ok(()),
        };
        if i >= n {
            out.push(&error_frame(ErrorCode::OutOfRange, format!("aggregation {i} of vdisk {vdisk}: the index up to the point has {n}")));
            continue;
        }
        match h.aggregation(i) {
            Ok(agg) => {
                for b in agg.blocks {
                    if !out.push(&ServerMessage::Block(b)) {
                        return Ok(());
                    }
                }
                out.push(&ServerMessage::PlaybackEnd(Some(h.index.entries[i].last_sequence)));
            }
            Err(e) => {
                tracing::warn!(vdisk, position = i, "read connection: fetch failed: {e}");
                out.push(&error_frame(ErrorCode::InternalError, format!("aggregation {i} of vdisk {vdisk}: {e}")));
            }
        }
    }
}
