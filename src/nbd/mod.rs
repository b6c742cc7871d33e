//! The NBD gateway (DESIGN.md §13): an NBD server (the NetworkBlockDevice project's
//! `doc/proto.md`, see [`proto`]) whose every write, trim and zero is streamed to tlogd through
//! the client library and applied to a local image, the gateway's primary copy, from which
//! reads are served.
//!
//! Durability contract:
//!
//! - a plain write (or trim, or zero) is answered once tlogd has *received* it, and after it
//!   reached the image (page cache);
//! - a `FLUSH` is answered once every block sent before it is flushed by tlogd (its flushed
//!   acks) and the image is fdatasync'd; a command with `FUA` is answered only so. Both wait
//!   beside the request reader, in a group commit ([`Gateway::flush_upto`]) whose tlogd flush
//!   and fdatasync run in parallel;
//! - one client connection to tlogd carries the writes of every NBD connection, and a flush
//!   waits for all of them, so `CAN_MULTI_CONN` holds: a flush on one connection covers what was
//!   answered on all;
//! - the log's order is the image's order: sending a block to tlogd and writing it to the image
//!   happen under one lock, so overlapping writes from two connections land in the same order
//!   in both;
//! - tlogd unreachable: writes wait (the client library's bounded window: backpressure) and
//!   flushes wait; the library reconnects and resends; nothing is answered that tlogd has not
//!   received.
//!
//! Restart and recovery: after flushes the gateway records, in `IMAGE.tlog-state` (written
//! atomically, off the flush path; it may lag, which only makes a restart replay more), the
//! vdisk and the last sequence its image holds durably. On start it
//! attaches to tlogd (which answers the vdisk's last flushed sequence), and when the image is
//! behind (a crash between logging and writing, or an image copied from elsewhere) it replays
//! the missing range through playback before serving. With the image missing and the vdisk
//! known, it builds the image from tlogd first.
//!
//! Past points ([`past`]): `--read-only` with a point exports the vdisk as of that point
//! straight from the log (tlogd's read connection: the index up to the point, aggregations
//! fetched on demand into a bounded cache), without a restore first; writes are refused with
//! `EPERM`. `--fork NEW` with a point creates the fork NEW of the vdisk there (or takes the
//! existing fork NEW of it) and exports NEW writable: its history is read from the log the same
//! way, and what is written through the export is logged to NEW and kept in an overlay (an
//! unlinked sparse file) that reads prefer. The time from start to the first read answered is
//! reported.

pub mod past;
pub mod proto;

use crate::client::remote::{Item, LogReader, Playback};
use crate::client::{Client, ClientConfig};
use crate::error::{Error, IoContext, Result};
use crate::history::changed::{Extents, Kind};
use crate::history::points::Point;
use crate::wire::{PlaybackRequest, PointSpec};
use proto::{chunk, cmd, cmd_flag, errno, info, opt, rep, tx, Request, REQUEST_BYTES};
use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Once};
use std::time::{Duration, Instant};

/// Largest block the gateway sends to tlogd (bytes): longer writes and zeroes are split.
pub const MAX_BLOCK: usize = 1 << 20;
/// The gateway writes its image in pieces of at most this many bytes (64 KiB), so the page
/// cache holds the image in folios of at most this size. With large folios (ext4 since Linux
/// 6.16) one 1 MiB write makes a 1 MiB folio, and every later 4 KiB write into it walks all
/// 256 buffer heads of that folio, at write and again at writeback: after a sequential fill,
/// 4 KiB random writes ran at 14.3-14.7K IOPS against 17.2-17.5K with these pieces (README
/// Performance, NBD). 64 KiB pieces cost sequential writes nothing measurable.
const IMAGE_PIECE: usize = 64 << 10;
/// Writes of at least this many bytes start the image's writeback at once (the flush after
/// them waits less); smaller ones, which a file system rewrites often, wait for the flush.
const EARLY_WRITEBACK_BYTES: usize = 256 << 10;
/// Largest read or write payload a client may send (bytes), advertised as the maximum
/// payload.
pub const MAX_PAYLOAD: u32 = 32 << 20;
/// Minimum block size advertised: tlog addresses 512-byte sectors.
pub const MIN_BLOCK: u32 = 512;
/// Preferred block size advertised.
pub const PREFERRED_BLOCK: u32 = 4096;
/// NBD connections served at once; more are closed at once (logged).
pub const MAX_CONNECTIONS: usize = 64;
/// The metadata context id of `base:allocation`.
const CONTEXT_ALLOCATION: u32 = 1;
/// The metadata context id of `tlog:changed:<point>`.
const CONTEXT_CHANGED: u32 = 2;
/// Prefix of the changed-block context: `tlog:changed:` then a sequence (digits), a time
/// (RFC 3339) or a checkpoint name.
pub const CHANGED_PREFIX: &str = "tlog:changed:";
/// `tlog:changed:` state flag: written or zeroed since the point.
pub const STATE_CHANGED: u32 = 1;

/// Where the gateway listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Listen {
    /// TCP, `host:port` (port 0: any free port, printed).
    Tcp(String),
    /// A Unix socket path.
    Unix(PathBuf),
}

/// What `tlog nbd` was asked for.
#[derive(Clone, Debug)]
pub struct GatewayConfig {
    /// tlogd addresses (`host:port`); the first that answers is used.
    pub servers: Vec<String>,
    /// The vdisk.
    pub vdisk: String,
    /// Auth token.
    pub token: String,
    /// The local image (a writable export of the vdisk's head; unused by past exports).
    pub image: Option<PathBuf>,
    /// Export size for a new image (bytes, a multiple of 512); an existing image keeps its
    /// length unless this is larger (it grows).
    pub size: Option<u64>,
    /// Where to listen.
    pub listen: Listen,
    /// How long the client library keeps reconnecting to tlogd before writes fail.
    pub reconnect_timeout: Duration,
    /// Export the vdisk as of `at` straight from the log, read-only.
    pub read_only: bool,
    /// The past point of a read-only or fork export (`None`: the newest flushed block).
    pub at: Option<Point>,
    /// Create (or take) this fork of the vdisk at `at` and export it writable.
    pub fork: Option<String>,
    /// Bytes of fetched block data a past export caches.
    pub cache_bytes: u64,
}

/// Default cache of a past export: 256 MiB of block data.
pub const DEFAULT_CACHE_BYTES: u64 = 256 << 20;

/// What the gateway holds durably, in `IMAGE.tlog-state`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ImageState {
    /// The vdisk the image belongs to.
    pub vdisk: String,
    /// The last sequence the image holds durably (0: none).
    pub sequence: u64,
}

/// Path of the state file of `image`.
pub fn state_path(image: &Path) -> PathBuf {
    let mut p = image.as_os_str().to_owned();
    p.push(".tlog-state");
    PathBuf::from(p)
}

/// Reads the state of `image`; `None` when there is none. Errors: unreadable or malformed.
pub fn read_state(image: &Path) -> Result<Option<ImageState>> {
    let p = state_path(image);
    match std::fs::read(&p) {
        Ok(b) => serde_json::from_slice(&b).map(Some).map_err(|e| Error::Format { path: p.clone(), detail: format!("gateway state: {e}") }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(format!("read {}", p.display()), e)),
    }
}

fn write_state(image: &Path, s: &ImageState) -> Result<()> {
    let b = serde_json::to_vec(s).map_err(|e| Error::InvalidArgument(format!("state json: {e}")))?;
    crate::fs::write_atomic(&state_path(image), &b)
}

/// How the gateway came up.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ready {
    /// The address it listens on (TCP `host:port` or the socket path).
    pub address: String,
    /// Export size, bytes.
    pub size: u64,
    /// The vdisk's last flushed sequence at start.
    pub head: u64,
    /// Blocks replayed from tlogd before serving (the image was behind).
    pub caught_up_blocks: u64,
    /// Whether the image was built from tlogd (it was missing).
    pub built: bool,
    /// From start to serving.
    pub elapsed: Duration,
    /// What is exported: the vdisk's head, a past point read-only, or a fork.
    pub mode: Mode,
    /// The point's sequence for a past export (`None`: no block at the point).
    pub point: Option<u64>,
}

/// What a gateway exports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Mode {
    /// The vdisk's head, writable, through the local image.
    #[default]
    Head,
    /// A past point, read-only, from the log.
    ReadOnly,
    /// A fork at a past point, writable: history from the log, writes through an overlay.
    Fork,
}

/// The gateway: one tlog client for the vdisk, the image, and the order lock.
struct Gateway {
    /// The writer (none for a read-only export).
    client: Option<Client>,
    /// The image; for a past export the overlay of what was written through it.
    image: File,
    path: PathBuf,
    /// A past export's source: the log at the point.
    past: Option<past::Past>,
    /// A past export's overlay: the ranges written through it (they are read from `image`).
    overlay: Mutex<Extents>,
    /// Whether `IMAGE.tlog-state` is kept (an export of the head through its image).
    state_file: bool,
    /// When the gateway started, and the report of its first read.
    started: Instant,
    first_read: Once,
    on_first_read: Box<dyn Fn(Duration) + Send + Sync>,
    vdisk: String,
    size: u64,
    /// Held while a block is sent to tlogd and written to the image.
    order: Mutex<()>,
    /// The group commit of flushes.
    syncs: Syncs,
    /// The state file's record: the last sequence written to it, and the one to write next.
    durable: Mutex<u64>,
    pending_state: Mutex<Option<u64>>,
    state_cond: Condvar,
    stop: Arc<AtomicBool>,
    connections: AtomicUsize,
    /// The auth token, for the playbacks of changed-block contexts (on the server the client
    /// uses now).
    token: String,
    /// Changed-block sets of sessions with a `tlog:changed:` context: every write and zero
    /// is recorded in each.
    trackers: Mutex<Vec<std::sync::Weak<Mutex<Extents>>>>,
    /// How long the parts of the syncs took since the last report (logged when a client
    /// leaves).
    sync_times: Mutex<SyncTimes>,
}

/// Durations of the two parts of the gateway's syncs, which run in parallel: tlogd's flush
/// (every block sent is acked flushed) and the image's fdatasync. A flush waits for the
/// slower of them, so this says which one bounds the flush latency.
#[derive(Default)]
struct SyncTimes {
    tlogd: LatencyBuckets,
    image: LatencyBuckets,
}

/// A latency histogram of 50 µs buckets up to 200 ms (one more for longer), for percentiles
/// accurate to a bucket. 4001 counters, no allocation per sample.
struct LatencyBuckets {
    counts: Vec<u64>,
    n: u64,
}

impl LatencyBuckets {
    /// Bucket width.
    const WIDTH_US: u64 = 50;
    /// Buckets below the overflow one: 200 ms.
    const BUCKETS: usize = 4000;

    fn record(&mut self, d: Duration) {
        let i = ((d.as_micros() as u64) / Self::WIDTH_US).min(Self::BUCKETS as u64) as usize;
        if let Some(c) = self.counts.get_mut(i) {
            *c += 1;
            self.n += 1;
        }
    }

    /// The `q` quantile (0..=1) in milliseconds: the upper edge of its bucket (200 ms and
    /// more reads as 200). 0 when empty.
    fn quantile_ms(&self, q: f64) -> f64 {
        let want = ((self.n as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= want && *c > 0 {
                return ((i as u64 + 1).min(Self::BUCKETS as u64) * Self::WIDTH_US) as f64 / 1000.0;
            }
        }
        0.0
    }
}

impl Default for LatencyBuckets {
    fn default() -> Self {
        LatencyBuckets { counts: vec![0; Self::BUCKETS + 1], n: 0 }
    }
}

fn bad(what: String) -> Error {
    Error::InvalidArgument(what)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The group commit of flushes (see [`Gateway::flush_upto`]): every sequence up to `synced` is
/// flushed by tlogd and in the fdatasync'd image; `running` while a sync is under way.
struct Syncs {
    st: Mutex<SyncState>,
    cond: Condvar,
}

struct SyncState {
    synced: u64,
    running: bool,
}

impl Gateway {
    /// Sends `data` at byte `offset` to tlogd (in blocks of at most [`MAX_BLOCK`], all-zero
    /// ones as write_zeroes) and writes it to the image, in one step under the order lock;
    /// returns the last sequence sent. The caller waits for tlogd's received ack.
    fn log_write(&self, offset: u64, data: &[u8]) -> Result<u64> {
        let client = self.client()?;
        let _o = self.order.lock().unwrap_or_else(|p| p.into_inner());
        for (i, piece) in data.chunks(MAX_BLOCK).enumerate() {
            let lba = (offset + (i * MAX_BLOCK) as u64) / 512;
            if piece.iter().all(|b| *b == 0) {
                client.write_zeroes(lba, piece.len() as u64)?;
            } else {
                client.write(lba, piece.to_vec())?;
            }
        }
        for (i, piece) in data.chunks(IMAGE_PIECE).enumerate() {
            let at = offset + (i * IMAGE_PIECE) as u64;
            self.image.write_all_at(piece, at).ctx(|| format!("write {}", self.path.display()))?;
        }
        self.track(offset, offset + data.len() as u64, Kind::Write);
        let seq = client.next_sequence().saturating_sub(1);
        drop(_o);
        if data.len() >= EARLY_WRITEBACK_BYTES && self.state_file {
            // Streaming: the next flush's fdatasync finds these pages written already.
            let _ = crate::sys::file::start_writeback(&self.image, offset, data.len() as u64);
        }
        Ok(seq)
    }

    /// The writer. Errors: a read-only export.
    fn client(&self) -> Result<&Client> {
        self.client.as_ref().ok_or_else(|| bad(format!("the export of {} is read-only", self.vdisk)))
    }

    /// Reads `buf.len()` bytes at `offset`: from the image, or for a past export from the log
    /// with what was written through the export over it.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let Some(p) = &self.past else {
            return self.image.read_exact_at(buf, offset).ctx(|| format!("read {}", self.path.display()));
        };
        p.read(buf, offset)?;
        let end = offset + buf.len() as u64;
        let mine = self.overlay.lock().unwrap_or_else(|p| p.into_inner()).within(offset, end);
        for (s, t) in mine {
            self.image.read_exact_at(&mut buf[(s - offset) as usize..(t - offset) as usize], s).ctx(|| "read the overlay".to_string())?;
        }
        Ok(())
    }

    /// Zeroes `len` bytes at `offset` in tlogd and in the image (a hole when `punch`); returns
    /// the last sequence sent.
    fn log_zero(&self, offset: u64, len: u64, punch: bool) -> Result<u64> {
        let client = self.client()?;
        let _o = self.order.lock().unwrap_or_else(|p| p.into_inner());
        let mut p = offset;
        while p < offset + len {
            let n = (offset + len - p).min(MAX_BLOCK as u64);
            client.write_zeroes(p / 512, n)?;
            p += n;
        }
        self.zero_image(offset, len, punch)?;
        self.track(offset, offset + len, Kind::Zero);
        Ok(client.next_sequence().saturating_sub(1))
    }

    fn track(&self, start: u64, end: u64, kind: Kind) {
        if self.past.is_some() {
            self.overlay.lock().unwrap_or_else(|p| p.into_inner()).insert(start, end, kind);
        }
        let mut t = self.trackers.lock().unwrap_or_else(|p| p.into_inner());
        t.retain(|w| match w.upgrade() {
            Some(x) => {
                x.lock().unwrap_or_else(|p| p.into_inner()).insert(start, end, kind);
                true
            }
            None => false,
        });
    }

    /// The changed-block set of `point`: what the log holds after it (a flush first makes
    /// everything answered part of the log), then every write from now on. Errors: a bad point
    /// (tlogd's message names the range), tlogd unreachable.
    fn changed_since(&self, point: &str) -> Result<Arc<Mutex<Extents>>> {
        self.client()?;
        let p = if !point.is_empty() && point.bytes().all(|b| b.is_ascii_digit()) {
            Point::Sequence(point.parse().map_err(|_| bad(format!("sequence {point} is too large")))?)
        } else if let Ok(t) = crate::time::parse_time(point) {
            Point::Time(t)
        } else {
            Point::Checkpoint(point.to_string())
        };
        let set = Arc::new(Mutex::new(Extents::default()));
        {
            // Registered first, so that no write between the flush and the playback is missed.
            let _o = self.order.lock().unwrap_or_else(|p| p.into_inner());
            self.trackers.lock().unwrap_or_else(|p| p.into_inner()).push(Arc::downgrade(&set));
        }
        self.flush()?;
        let from = crate::history::playback::spec(Some(&p));
        let server = self.client()?.server();
        let mut pb = Playback::open(&server, &self.token, &self.vdisk, PlaybackRequest { from, to: PointSpec::None, follow: false })?;
        let mut logged = Extents::default();
        while let Some(item) = pb.next_item()? {
            match item {
                Item::Block(b) => logged.block(&b)?,
                Item::End(_) => break,
                Item::Head(_) => {}
            }
        }
        // Later writes (already in `set`) win over what the log says.
        let mut s = set.lock().unwrap_or_else(|p| p.into_inner());
        let newer = std::mem::take(&mut *s);
        *s = logged;
        for e in newer.list() {
            s.insert(e.offset, e.offset + e.length, e.kind);
        }
        drop(s);
        Ok(set)
    }

    fn zero_image(&self, offset: u64, len: u64, punch: bool) -> Result<()> {
        use rustix::fs::FallocateFlags as F;
        let mode = if punch { F::PUNCH_HOLE | F::KEEP_SIZE } else { F::ZERO_RANGE | F::KEEP_SIZE };
        if rustix::fs::fallocate(&self.image, mode, offset, len).is_ok() {
            return Ok(());
        }
        // A file system without hole punching: write the zeroes.
        let z = vec![0u8; IMAGE_PIECE];
        let mut p = offset;
        while p < offset + len {
            let n = (offset + len - p).min(z.len() as u64) as usize;
            self.image.write_all_at(&z[..n], p).ctx(|| format!("zero {}", self.path.display()))?;
            p += n as u64;
        }
        Ok(())
    }

    /// Every block sent so far flushed by tlogd and the image fdatasync'd (see
    /// [`Gateway::flush_upto`]).
    fn flush(&self) -> Result<()> {
        let Some(client) = &self.client else { return Ok(()) };
        let seq = {
            let _o = lock(&self.order);
            client.next_sequence().saturating_sub(1)
        };
        self.flush_upto(seq)
    }

    /// Makes every block with a sequence up to `seq` (one already sent) durable: flushed by
    /// tlogd, and in the image, fdatasync'd; the two run in parallel. Concurrent callers share
    /// one sync (group commit): a caller that finds one running waits for it, and starts the
    /// next only when that one did not cover `seq`. Each sync covers everything sent when it
    /// starts. The state file is recorded afterwards by the state thread, off this path: a
    /// state behind the image only makes a restart replay more. Errors: tlogd's flush (a fatal
    /// error, its timeout), the fdatasync.
    fn flush_upto(&self, seq: u64) -> Result<()> {
        let Some(client) = &self.client else { return Ok(()) };
        let mut st = lock(&self.syncs.st);
        while st.synced < seq && st.running {
            st = self.syncs.cond.wait(st).unwrap_or_else(|p| p.into_inner());
        }
        if st.synced >= seq {
            return Ok(());
        }
        st.running = true;
        drop(st);
        let target = {
            let _o = lock(&self.order);
            client.next_sequence().saturating_sub(1)
        };
        let r = self.sync(client, target);
        let mut st = lock(&self.syncs.st);
        st.running = false;
        if r.is_ok() {
            st.synced = st.synced.max(target);
        }
        drop(st);
        self.syncs.cond.notify_all();
        r?;
        if self.state_file {
            *lock(&self.pending_state) = Some(target);
            self.state_cond.notify_all();
        }
        Ok(())
    }

    /// tlogd's flush up to `target` and, for an image with a state file, the image's
    /// fdatasync, in parallel.
    fn sync(&self, client: &Client, target: u64) -> Result<()> {
        if !self.state_file {
            // A fork export's overlay is a cache of what tlogd holds: nothing to sync.
            return client.flush_upto(target);
        }
        std::thread::scope(|sc| {
            let image = sc.spawn(|| {
                let t = Instant::now();
                rustix::fs::fdatasync(&self.image).map(|()| t.elapsed())
            });
            let t = Instant::now();
            let logged = client.flush_upto(target).map(|()| t.elapsed());
            let synced = image.join().unwrap_or(Err(rustix::io::Errno::IO));
            if let (Ok(a), Ok(b)) = (&logged, &synced) {
                let mut st = lock(&self.sync_times);
                st.tlogd.record(*a);
                st.image.record(*b);
            }
            logged?;
            synced.map(|_| ()).map_err(|e| Error::io(format!("fdatasync {}", self.path.display()), e.into()))
        })
    }

    /// Logs how long the syncs' parts took since the last report, and starts over.
    fn report_sync_times(&self, peer: &str) {
        let st = std::mem::take(&mut *lock(&self.sync_times));
        if st.tlogd.n > 0 {
            tracing::info!(
                vdisk = %self.vdisk,
                %peer,
                syncs = st.tlogd.n,
                "nbd: syncs since the last report: tlogd's flush p50 {:.2} ms p99 {:.2} ms, the image's fdatasync p50 {:.2} ms p99 {:.2} ms",
                st.tlogd.quantile_ms(0.5),
                st.tlogd.quantile_ms(0.99),
                st.image.quantile_ms(0.5),
                st.image.quantile_ms(0.99)
            );
        }
    }

    /// Writes the state file for `seq` (durable in the image) unless it records as much.
    fn record_state(&self, seq: u64) -> Result<()> {
        let mut d = lock(&self.durable);
        if seq > *d {
            write_state(&self.path, &ImageState { vdisk: self.vdisk.clone(), sequence: seq })?;
            *d = seq;
        }
        Ok(())
    }

    /// The state thread: records what the syncs made durable, until the gateway stops.
    fn record_states(&self) {
        loop {
            let mut p = lock(&self.pending_state);
            while p.is_none() && !self.stop.load(Ordering::SeqCst) {
                p = self.state_cond.wait_timeout(p, Duration::from_millis(200)).map(|(g, _)| g).unwrap_or_else(|e| e.into_inner().0);
            }
            let Some(seq) = p.take() else { return };
            drop(p);
            if let Err(e) = self.record_state(seq) {
                tracing::warn!(vdisk = %self.vdisk, "nbd: recording the image's state: {e} (a restart replays more of the log)");
            }
        }
    }

    /// `base:allocation` extents of `[offset, offset + len)`: (length, flags), from the image's
    /// holes (`SEEK_DATA`/`SEEK_HOLE`).
    fn allocation(&self, offset: u64, len: u64, one: bool) -> Vec<(u32, u32)> {
        use rustix::fs::SeekFrom;
        if self.past.is_some() {
            // Served from the log: reported as data (always a correct answer).
            return vec![(len.clamp(1, u32::MAX as u64 & !511) as u32, 0)];
        }
        let end = (offset + len).min(self.size);
        let mut out = Vec::new();
        let mut p = offset;
        while p < end && out.len() < 1024 {
            let data = rustix::fs::seek(&self.image, SeekFrom::Data(p)).unwrap_or(end).min(end);
            if data > p {
                out.push(((data - p).min(u32::MAX as u64 & !511) as u32, proto::state::HOLE | proto::state::ZERO));
                p += out.last().map(|e| e.0 as u64).unwrap_or(0);
            } else {
                let hole = rustix::fs::seek(&self.image, SeekFrom::Hole(p)).unwrap_or(end).min(end).max(p + 1);
                out.push(((hole - p).min(u32::MAX as u64 & !511) as u32, 0));
                p += out.last().map(|e| e.0 as u64).unwrap_or(0);
            }
            if one {
                break;
            }
        }
        if out.is_empty() {
            out.push((len.clamp(1, u32::MAX as u64) as u32, 0));
        }
        out
    }
}

/// A client connection of either kind.
trait Conn: Read + Write + Send {
    fn set_timeout(&self, d: Option<Duration>) -> std::io::Result<()>;
    fn peer(&self) -> String;
    fn try_clone_box(&self) -> std::io::Result<Box<dyn Conn>>;
}

impl Conn for std::net::TcpStream {
    fn set_timeout(&self, d: Option<Duration>) -> std::io::Result<()> {
        self.set_read_timeout(d)
    }
    fn peer(&self) -> String {
        self.peer_addr().map(|a| a.to_string()).unwrap_or_default()
    }
    fn try_clone_box(&self) -> std::io::Result<Box<dyn Conn>> {
        Ok(Box::new(self.try_clone()?))
    }
}

impl Conn for std::os::unix::net::UnixStream {
    fn set_timeout(&self, d: Option<Duration>) -> std::io::Result<()> {
        self.set_read_timeout(d)
    }
    fn peer(&self) -> String {
        "unix socket".into()
    }
    fn try_clone_box(&self) -> std::io::Result<Box<dyn Conn>> {
        Ok(Box::new(self.try_clone()?))
    }
}

/// Reads exactly `buf.len()` bytes; between requests (`idle`) a timeout checks `stop`.
/// `Ok(false)`: the client closed (or we stop) before the first byte.
fn read_full(c: &mut dyn Conn, buf: &mut [u8], stop: &AtomicBool, idle: bool) -> Result<bool> {
    let mut n = 0;
    let mut quiet = Instant::now();
    while n < buf.len() {
        match c.read(&mut buf[n..]) {
            Ok(0) if n == 0 => return Ok(false),
            Ok(0) => return Err(Error::Protocol("nbd: connection closed inside a message".into())),
            Ok(k) => {
                n += k;
                quiet = Instant::now();
            }
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut | std::io::ErrorKind::Interrupted) => {
                if n == 0 && idle && stop.load(Ordering::SeqCst) {
                    return Ok(false);
                }
                if n > 0 && quiet.elapsed() > Duration::from_secs(60) {
                    return Err(Error::Timeout("nbd: a message stalled for 60 s".into()));
                }
            }
            Err(e) => return Err(Error::io("nbd: read", e)),
        }
    }
    Ok(true)
}

/// Negotiated state of one connection.
#[derive(Default)]
struct Session {
    structured: bool,
    allocation: bool,
    /// The `tlog:changed:` context: its name and set.
    changed: Option<(String, Arc<Mutex<Extents>>)>,
}

/// `tlog:changed:` extents of `[offset, offset + len)`: (length, flags).
fn changed_extents(set: &Mutex<Extents>, offset: u64, len: u64, one: bool) -> Vec<(u32, u32)> {
    let end = offset + len;
    let list = set.lock().unwrap_or_else(|p| p.into_inner()).list();
    let mut out: Vec<(u32, u32)> = Vec::new();
    let mut p = offset;
    let push = |out: &mut Vec<(u32, u32)>, len: u64, flags: u32| {
        let mut left = len;
        while left > 0 {
            let n = left.min(u32::MAX as u64 & !511);
            match out.last_mut() {
                Some(l) if l.1 == flags && (l.0 as u64 + n) <= (u32::MAX as u64 & !511) => l.0 += n as u32,
                _ => out.push((n as u32, flags)),
            }
            left -= n;
        }
    };
    for e in list.iter().filter(|e| e.offset + e.length > offset && e.offset < end) {
        let (s, t) = (e.offset.max(offset), (e.offset + e.length).min(end));
        if s > p {
            push(&mut out, s - p, 0);
        }
        push(&mut out, t - s, STATE_CHANGED);
        p = t;
        if one || out.len() >= 1024 {
            break;
        }
    }
    if (out.is_empty() || !one) && out.len() < 1024 && p < end {
        push(&mut out, end - p, 0);
    }
    if one {
        out.truncate(1);
    }
    out
}

/// The transmission flags of an export: read-write with flush, FUA, trim, zeroes with fast
/// zero, cache, multi-connection; or read-only with flush (a no-op), cache and multi-connection.
fn transmission_flags(read_only: bool) -> u16 {
    if read_only {
        return tx::HAS_FLAGS | tx::READ_ONLY | tx::SEND_FLUSH | tx::CAN_MULTI_CONN | tx::SEND_CACHE;
    }
    tx::HAS_FLAGS | tx::SEND_FLUSH | tx::SEND_FUA | tx::SEND_TRIM | tx::SEND_WRITE_ZEROES | tx::CAN_MULTI_CONN | tx::SEND_CACHE | tx::SEND_FAST_ZERO
}

/// The handshake; `Ok(Some(session))` when transmission begins.
fn handshake(g: &Gateway, c: &mut dyn Conn) -> Result<Option<Session>> {
    proto::send(c, &proto::greeting(), "send greeting")?;
    let mut f = [0u8; 4];
    if !read_full(c, &mut f, &g.stop, false)? {
        return Ok(None);
    }
    let flags = u32::from_be_bytes(f);
    if flags & !(proto::FLAG_C_FIXED_NEWSTYLE | proto::FLAG_C_NO_ZEROES) != 0 {
        return Err(Error::Protocol(format!("nbd: unknown client flags {flags:#x}")));
    }
    let no_zeroes = flags & proto::FLAG_C_NO_ZEROES != 0;
    let mut s = Session::default();
    let name_ok = |n: &str| n.is_empty() || n == g.vdisk;
    loop {
        let o = proto::read_option(c)?;
        let reply = |c: &mut dyn Conn, kind: u32, data: &[u8]| proto::send(c, &proto::option_reply(o.kind, kind, data), "send option reply");
        match o.kind {
            opt::EXPORT_NAME => {
                let name = String::from_utf8_lossy(&o.data).into_owned();
                if !name_ok(&name) {
                    // The old style has no error reply: the session ends.
                    return Err(Error::NotFound(format!("nbd: export {name:?} (this gateway exports {:?})", g.vdisk)));
                }
                proto::send(c, &proto::export_name_reply(g.size, transmission_flags(g.client.is_none()), no_zeroes), "send export")?;
                return Ok(Some(s));
            }
            opt::ABORT => {
                let _ = reply(c, rep::ACK, &[]);
                return Ok(None);
            }
            opt::LIST => {
                if !o.data.is_empty() {
                    proto::send(c, &proto::option_error(o.kind, rep::ERR_INVALID, "NBD_OPT_LIST takes no data"), "send option reply")?;
                    continue;
                }
                reply(c, rep::SERVER, &proto::server_entry(&g.vdisk))?;
                reply(c, rep::ACK, &[])?;
            }
            opt::INFO | opt::GO => {
                let Some((name, reqs)) = proto::parse_info_request(&o.data) else {
                    proto::send(c, &proto::option_error(o.kind, rep::ERR_INVALID, "malformed NBD_OPT_INFO/GO"), "send option reply")?;
                    continue;
                };
                if !name_ok(&name) {
                    proto::send(
                        c,
                        &proto::option_error(o.kind, rep::ERR_UNKNOWN, &format!("no export {name:?}; this gateway exports {:?}", g.vdisk)),
                        "send option reply",
                    )?;
                    continue;
                }
                reply(c, rep::INFO, &proto::info_export(g.size, transmission_flags(g.client.is_none())))?;
                reply(c, rep::INFO, &proto::info_block_size(MIN_BLOCK, PREFERRED_BLOCK, MAX_PAYLOAD))?;
                if reqs.contains(&info::NAME) {
                    reply(c, rep::INFO, &proto::info_text(info::NAME, &g.vdisk))?;
                }
                if reqs.contains(&info::DESCRIPTION) {
                    reply(c, rep::INFO, &proto::info_text(info::DESCRIPTION, &format!("tlog vdisk {}", g.vdisk)))?;
                }
                reply(c, rep::ACK, &[])?;
                if o.kind == opt::GO {
                    return Ok(Some(s));
                }
            }
            opt::STRUCTURED_REPLY => {
                if !o.data.is_empty() {
                    proto::send(c, &proto::option_error(o.kind, rep::ERR_INVALID, "NBD_OPT_STRUCTURED_REPLY takes no data"), "send option reply")?;
                    continue;
                }
                s.structured = true;
                reply(c, rep::ACK, &[])?;
            }
            opt::LIST_META_CONTEXT | opt::SET_META_CONTEXT => {
                if !s.structured {
                    proto::send(c, &proto::option_error(o.kind, rep::ERR_INVALID, "negotiate structured replies first"), "send option reply")?;
                    continue;
                }
                let Some((name, queries)) = proto::parse_meta_request(&o.data) else {
                    proto::send(c, &proto::option_error(o.kind, rep::ERR_INVALID, "malformed meta context request"), "send option reply")?;
                    continue;
                };
                if !name_ok(&name) {
                    proto::send(c, &proto::option_error(o.kind, rep::ERR_UNKNOWN, &format!("no export {name:?}")), "send option reply")?;
                    continue;
                }
                let listing = o.kind == opt::LIST_META_CONTEXT;
                let wants = (listing && queries.is_empty()) || queries.iter().any(|q| q == "base:allocation" || (listing && q == "base:"));
                let changed = queries.iter().find(|q| q.starts_with(CHANGED_PREFIX) && q.len() > CHANGED_PREFIX.len()).cloned();
                if listing {
                    if wants {
                        reply(c, rep::META_CONTEXT, &proto::meta_context(0, "base:allocation"))?;
                    }
                    if queries.is_empty() || queries.iter().any(|q| q.starts_with("tlog:")) {
                        // The namespace, to be completed with a point.
                        reply(c, rep::META_CONTEXT, &proto::meta_context(0, CHANGED_PREFIX))?;
                    }
                    reply(c, rep::ACK, &[])?;
                    continue;
                }
                s.allocation = wants;
                s.changed = None;
                if let Some(q) = changed {
                    match g.changed_since(&q[CHANGED_PREFIX.len()..]) {
                        Ok(set) => s.changed = Some((q, set)),
                        Err(e) => {
                            proto::send(c, &proto::option_error(o.kind, rep::ERR_INVALID, &format!("{q}: {e}")), "send option reply")?;
                            s.allocation = false;
                            continue;
                        }
                    }
                }
                if s.allocation {
                    reply(c, rep::META_CONTEXT, &proto::meta_context(CONTEXT_ALLOCATION, "base:allocation"))?;
                }
                if let Some((name, _)) = &s.changed {
                    reply(c, rep::META_CONTEXT, &proto::meta_context(CONTEXT_CHANGED, name))?;
                }
                reply(c, rep::ACK, &[])?;
            }
            other => {
                proto::send(c, &proto::option_error(other, rep::ERR_UNSUP, &format!("option {other} is not supported")), "send option reply")?;
            }
        }
    }
}

/// Answers `error` to `r`.
fn fail(out: &Out, s: &Session, r: &Request, error: u32, message: &str) -> Result<()> {
    if s.structured {
        out.send(&proto::error_chunk(r.cookie, error, message), "send reply")
    } else {
        out.send(&proto::simple_reply(error, r.cookie), "send reply")
    }
}

fn errno_of(e: &Error) -> u32 {
    match e {
        Error::Io { source, .. } if source.raw_os_error() == Some(28) => errno::ENOSPC,
        Error::Shutdown => errno::ESHUTDOWN,
        _ => errno::EIO,
    }
}

/// Where the reader hands a request whose answer waits: (cookie, the last sequence it covers).
struct Waiting {
    /// Plain writes, answered once tlogd received them.
    received: crossbeam_channel::Sender<(u64, u64)>,
    /// Flushes and FUA writes, answered once durable.
    durable: crossbeam_channel::Sender<(u64, u64)>,
}

/// The reader side of the transmission phase: requests in order; replies go out through `out`,
/// those that wait for tlogd from the replier and the syncer ([`Waiting`]), so the reader goes
/// on with the next requests meanwhile.
fn requests(g: &Gateway, c: &mut dyn Conn, out: &Out, s: &Session, waiting: &Waiting) -> Result<()> {
    let mut h = [0u8; REQUEST_BYTES];
    let mut buf: Vec<u8> = Vec::new();
    loop {
        if !read_full(c, &mut h, &g.stop, true)? {
            return Ok(());
        }
        let r = proto::parse_request(&h)?;
        let end = r.offset.checked_add(r.length as u64);
        let in_range = end.map(|e| e <= g.size).unwrap_or(false);
        let aligned = r.offset.is_multiple_of(512) && (r.length as u64).is_multiple_of(512);
        if r.kind == cmd::WRITE {
            if r.length > MAX_PAYLOAD {
                let _ = fail(out, s, &r, errno::EOVERFLOW, "write larger than the maximum payload");
                return Err(Error::Protocol(format!("nbd: write of {} bytes (at most {MAX_PAYLOAD})", r.length)));
            }
            buf.resize(r.length as usize, 0);
            if !read_full(c, &mut buf, &g.stop, false)? {
                return Err(Error::Protocol("nbd: connection closed inside a write".into()));
            }
        }
        let fua = r.flags & cmd_flag::FUA != 0;
        match r.kind {
            cmd::READ => {
                if !in_range || r.length > MAX_PAYLOAD {
                    fail(
                        out,
                        s,
                        &r,
                        errno::EINVAL,
                        &format!("read of {} bytes at {} is outside the export ({} bytes) or too large", r.length, r.offset, g.size),
                    )?;
                    continue;
                }
                if r.length == 0 {
                    // Nothing to read (the protocol leaves it unspecified): an empty success.
                    if s.structured {
                        out.send(&proto::chunk_header(chunk::FLAG_DONE, chunk::NONE, r.cookie, 0), "send reply")?;
                    } else {
                        out.send(&proto::simple_reply(0, r.cookie), "send reply")?;
                    }
                    continue;
                }
                buf.resize(r.length as usize, 0);
                if let Err(e) = g.read_at(&mut buf, r.offset) {
                    tracing::warn!(vdisk = %g.vdisk, "nbd: read failed: {e}");
                    fail(out, s, &r, errno::EIO, &format!("read: {e}"))?;
                    continue;
                }
                g.first_read.call_once(|| {
                    let d = g.started.elapsed();
                    tracing::info!(vdisk = %g.vdisk, "nbd: first read answered {:.1} ms after start", d.as_secs_f64() * 1e3);
                    (g.on_first_read)(d);
                });
                if s.structured {
                    let mut head = proto::chunk_header(chunk::FLAG_DONE, chunk::OFFSET_DATA, r.cookie, r.length + 8).to_vec();
                    head.extend_from_slice(&r.offset.to_be_bytes());
                    out.send_parts(&[&head, &buf], "send data")?;
                } else {
                    out.send_parts(&[&proto::simple_reply(0, r.cookie), &buf], "send data")?;
                }
            }
            cmd::WRITE | cmd::TRIM | cmd::WRITE_ZEROES if g.client.is_none() => {
                fail(out, s, &r, errno::EPERM, &format!("the export of {} is read-only", g.vdisk))?;
            }
            cmd::WRITE | cmd::TRIM | cmd::WRITE_ZEROES => {
                if !in_range || !aligned {
                    fail(
                        out,
                        s,
                        &r,
                        errno::EINVAL,
                        &format!("{} bytes at {}: outside the export ({} bytes) or not 512-byte aligned", r.length, r.offset, g.size),
                    )?;
                    continue;
                }
                let logged = match r.kind {
                    cmd::WRITE => g.log_write(r.offset, &buf),
                    cmd::TRIM => g.log_zero(r.offset, r.length as u64, true),
                    _ => g.log_zero(r.offset, r.length as u64, r.flags & cmd_flag::NO_HOLE == 0),
                };
                // A plain write is answered by the replier once tlogd received it, a FUA one
                // by the syncer once it is durable; this reader goes on meanwhile.
                match logged {
                    Ok(seq) => {
                        let to = if fua { &waiting.durable } else { &waiting.received };
                        if to.send((r.cookie, seq)).is_err() {
                            return Err(Error::Protocol("nbd: the replier ended".into()));
                        }
                    }
                    Err(e) => {
                        tracing::warn!(vdisk = %g.vdisk, "nbd: write failed: {e}");
                        fail(out, s, &r, errno_of(&e), &e.to_string())?;
                    }
                }
            }
            cmd::FLUSH => {
                // Covers every write answered before it: each was sent before this point.
                let seq = g.client.as_ref().map(|c| c.next_sequence().saturating_sub(1)).unwrap_or(0);
                if waiting.durable.send((r.cookie, seq)).is_err() {
                    return Err(Error::Protocol("nbd: the syncer ended".into()));
                }
            }
            cmd::CACHE => {
                if !in_range {
                    fail(out, s, &r, errno::EINVAL, "cache outside the export")?;
                    continue;
                }
                if g.past.is_none() {
                    let _ = rustix::fs::fadvise(&g.image, r.offset, std::num::NonZeroU64::new(r.length as u64), rustix::fs::Advice::WillNeed);
                }
                out.send(&proto::simple_reply(0, r.cookie), "send reply")?;
            }
            cmd::BLOCK_STATUS => {
                if !s.structured || (!s.allocation && s.changed.is_none()) {
                    fail(out, s, &r, errno::EINVAL, "no metadata context was selected")?;
                    continue;
                }
                if !in_range || r.length == 0 {
                    fail(out, s, &r, errno::EINVAL, "block status outside the export")?;
                    continue;
                }
                let one = r.flags & cmd_flag::REQ_ONE != 0;
                if s.allocation {
                    let ext = g.allocation(r.offset, r.length as u64, one);
                    out.send(&proto::block_status_chunk(r.cookie, s.changed.is_none(), CONTEXT_ALLOCATION, &ext), "send reply")?;
                }
                if let Some((_, set)) = &s.changed {
                    let ext = changed_extents(set, r.offset, (r.length as u64).min(g.size - r.offset), one);
                    out.send(&proto::block_status_chunk(r.cookie, true, CONTEXT_CHANGED, &ext), "send reply")?;
                }
            }
            cmd::DISC => return Ok(()),
            other => fail(out, s, &r, errno::EINVAL, &format!("command {other} is not supported"))?,
        }
    }
}

/// The transmission phase: a reader of requests, a replier of plain writes (once tlogd
/// received them) and a syncer of flushes and FUA writes (once durable, through the group
/// commit of [`Gateway::flush_upto`]), until the client disconnects. Replies may go out of
/// order, as the protocol allows.
fn transmission(g: &Gateway, c: &mut dyn Conn, out: &Out, s: Session) -> Result<()> {
    std::thread::scope(|sc| {
        let (received, received_rx) = crossbeam_channel::bounded::<(u64, u64)>(1024);
        let (durable, durable_rx) = crossbeam_channel::bounded::<(u64, u64)>(1024);
        let structured = s.structured;
        let replier = sc.spawn(move || -> Result<()> {
            for (cookie, seq) in received_rx {
                answer(g, out, structured, cookie, g.client().and_then(|c| c.wait_received_upto(seq, Duration::from_secs(3600))))?;
            }
            Ok(())
        });
        let syncer = sc.spawn(move || -> Result<()> {
            for (cookie, seq) in durable_rx {
                answer(g, out, structured, cookie, g.flush_upto(seq))?;
            }
            Ok(())
        });
        let r = requests(g, c, out, &s, &Waiting { received, durable });
        let w = replier.join().unwrap_or_else(|_| Err(Error::Protocol("nbd: the replier panicked".into())));
        let y = syncer.join().unwrap_or_else(|_| Err(Error::Protocol("nbd: the syncer panicked".into())));
        r.and(w).and(y)
    })
}

/// Sends the reply to `cookie`: success, or the error's errno (with its message in a
/// structured reply).
fn answer(g: &Gateway, out: &Out, structured: bool, cookie: u64, r: Result<()>) -> Result<()> {
    match r {
        Ok(()) => out.send(&proto::simple_reply(0, cookie), "send reply"),
        Err(e) => {
            tracing::warn!(vdisk = %g.vdisk, "nbd: write or flush failed: {e}");
            if structured {
                out.send(&proto::error_chunk(cookie, errno_of(&e), &e.to_string()), "send reply")
            } else {
                out.send(&proto::simple_reply(errno_of(&e), cookie), "send reply")
            }
        }
    }
}

/// The sending half of a connection, shared by the reader and the replier: each reply goes out
/// whole under the lock.
struct Out(Mutex<Box<dyn Conn>>);

impl Out {
    fn send(&self, bytes: &[u8], what: &str) -> Result<()> {
        let mut c = self.0.lock().unwrap_or_else(|p| p.into_inner());
        proto::send(c.as_mut(), bytes, what)
    }

    fn send_parts(&self, parts: &[&[u8]], what: &str) -> Result<()> {
        let mut c = self.0.lock().unwrap_or_else(|p| p.into_inner());
        for p in parts {
            proto::send(c.as_mut(), p, what)?;
        }
        Ok(())
    }
}

fn serve_conn(g: &Gateway, mut c: Box<dyn Conn>) {
    let peer = c.peer();
    let _ = c.set_timeout(Some(Duration::from_millis(200)));
    let r = match handshake(g, c.as_mut()) {
        Ok(Some(s)) => {
            tracing::info!(vdisk = %g.vdisk, %peer, structured = s.structured, "nbd: client attached");
            match c.try_clone_box() {
                Ok(w) => transmission(g, c.as_mut(), &Out(Mutex::new(w)), s),
                Err(e) => Err(Error::io("nbd: clone the connection", e)),
            }
        }
        Ok(None) => Ok(()),
        Err(e) => Err(e),
    };
    match r {
        Ok(()) => tracing::info!(vdisk = %g.vdisk, %peer, "nbd: client left"),
        Err(e) => tracing::warn!(vdisk = %g.vdisk, %peer, "nbd: connection ended: {e}"),
    }
    g.report_sync_times(&peer);
}

/// Attaches through the first of `servers` that answers; the client fails over to the others
/// (tlogd hosts on the same backends) later.
fn connect(cfg: &GatewayConfig) -> Result<(Client, String)> {
    let Some((first, rest)) = cfg.servers.split_first() else { return Err(bad("no tlogd address given".into())) };
    let mut cc = ClientConfig::new(first, &cfg.vdisk);
    cc.failover = rest.to_vec();
    cc.token = cfg.token.clone();
    cc.reconnect_timeout = cfg.reconnect_timeout;
    let c = Client::connect(cc)?;
    let server = c.server();
    Ok((c, server))
}

/// Brings `image` up to `head` of the vdisk (building it when missing); returns (size, blocks
/// replayed, built).
fn prepare(cfg: &GatewayConfig, image: &Path, server: &str, head: u64) -> Result<(u64, u64, bool)> {
    let exists = image.exists();
    let st = if exists { read_state(image)? } else { None };
    if let Some(s) = &st {
        if s.vdisk != cfg.vdisk {
            return Err(bad(format!("image {} belongs to vdisk {} (its {}), not {}", image.display(), s.vdisk, state_path(image).display(), cfg.vdisk)));
        }
        if s.sequence > head {
            return Err(bad(format!(
                "image {} holds vdisk {} up to sequence {}, but tlogd's history ends at {head}: the image is ahead of the log (another tlogd, or lost history?)",
                image.display(),
                cfg.vdisk,
                s.sequence
            )));
        }
    }
    if exists && st.is_none() {
        let len = std::fs::metadata(image).map(|m| m.len()).unwrap_or(0);
        if head > 0 || len > 0 {
            return Err(bad(format!(
                "image {} exists but has no {} (it is not this gateway's copy of vdisk {}): {}",
                image.display(),
                state_path(image).display(),
                cfg.vdisk,
                if head > 0 {
                    "remove it and the gateway builds it from tlogd"
                } else {
                    "import it first (tlog import --vdisk V IMAGE) and remove it, or start with a new image"
                }
            )));
        }
    }
    let from = st.as_ref().map(|s| s.sequence).unwrap_or(0);
    let f = std::fs::OpenOptions::new().create(true).read(true).write(true).truncate(false).open(image).ctx(|| format!("open {}", image.display()))?;
    let mut replayed = 0;
    if head > from {
        let req = PlaybackRequest { from: if from == 0 { PointSpec::None } else { PointSpec::Sequence(from) }, to: PointSpec::Sequence(head), follow: false };
        let mut pb = Playback::open(server, &cfg.token, &cfg.vdisk, req)?;
        let mut w = crate::history::restore::ImageWriter::new(&f, image, 64 << 40);
        w.assume_written(f.metadata().map(|m| m.len()).unwrap_or(0));
        while let Some(item) = pb.next_item()? {
            match item {
                Item::Block(b) => {
                    w.apply(&b, &cfg.vdisk)?;
                    replayed += 1;
                }
                Item::End(_) => break,
                Item::Head(_) => {}
            }
        }
        w.finish()?;
        // The replay wrote in runs of up to a MiB, which left large folios in the page cache;
        // they are clean now (fsync'd), so drop them and let client writes make small ones
        // (see IMAGE_PIECE).
        if let Err(e) = rustix::fs::fadvise(&f, 0, None, rustix::fs::Advice::DontNeed) {
            tracing::debug!(image = %image.display(), "posix_fadvise(DONTNEED): {e}");
        }
        write_state(image, &ImageState { vdisk: cfg.vdisk.clone(), sequence: head })?;
        tracing::info!(vdisk = %cfg.vdisk, from, head, replayed, "nbd: image brought up to the log");
    }
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let size = match cfg.size {
        Some(s) if !s.is_multiple_of(512) || s == 0 => return Err(bad(format!("--size {s}: a positive multiple of 512 bytes"))),
        Some(s) if s < len => return Err(bad(format!("--size {s} is smaller than image {} ({len} bytes): an export never shrinks", image.display()))),
        Some(s) => s,
        None if len == 0 => return Err(bad(format!("image {} is new and vdisk {} is empty: give --size BYTES", image.display(), cfg.vdisk))),
        None => len.div_ceil(512) * 512,
    };
    if size != len {
        f.set_len(size).ctx(|| format!("set length of {}", image.display()))?;
    }
    if st.is_none() && head == 0 {
        write_state(image, &ImageState { vdisk: cfg.vdisk.clone(), sequence: 0 })?;
    }
    Ok((size, replayed, !exists && head > 0))
}

/// An unlinked sparse file of `size` bytes in the temporary directory: a past export's overlay.
fn overlay_file(size: u64) -> Result<(File, PathBuf)> {
    let mut r = [0u8; 8];
    getrandom::getrandom(&mut r).map_err(|e| Error::io("random bytes", std::io::Error::other(e.to_string())))?;
    let p = std::env::temp_dir().join(format!(".tlog-nbd-overlay-{}-{}", std::process::id(), hex::encode(r)));
    let f = std::fs::OpenOptions::new().create_new(true).read(true).write(true).open(&p).ctx(|| format!("create {}", p.display()))?;
    let _ = std::fs::remove_file(&p);
    f.set_len(size).ctx(|| format!("set length of {}", p.display()))?;
    Ok((f, p))
}

/// Opens a read connection of `vdisk` at `at` on the first of `servers` that answers.
fn open_reader(cfg: &GatewayConfig, vdisk: &str, at: PointSpec) -> Result<(LogReader, String)> {
    let mut last = None;
    for s in &cfg.servers {
        match LogReader::open(s, &cfg.token, vdisk, at.clone()) {
            Ok(r) => return Ok((r, s.clone())),
            Err(e @ Error::Refused { .. }) => return Err(e),
            Err(e) => {
                tracing::warn!(server = %s, "nbd: tlogd not usable: {e}");
                last = Some(e);
            }
        }
    }
    Err(last.unwrap_or_else(|| bad("no tlogd address given".into())))
}

/// Creates the fork `new` of the vdisk at `cfg.at`, or accepts an existing fork `new` of it.
fn make_fork(cfg: &GatewayConfig, new: &str) -> Result<()> {
    let at = crate::history::playback::spec(cfg.at.as_ref());
    let mut last = None;
    for s in &cfg.servers {
        let req = crate::wire::ControlRequest::Fork { vdisk: cfg.vdisk.clone(), new: new.to_string(), at: at.clone() };
        match crate::client::remote::control(s, &cfg.token, req) {
            Ok(_) => {
                tracing::info!(vdisk = %cfg.vdisk, fork = new, "nbd: fork created");
                return Ok(());
            }
            Err(e @ Error::Refused { .. }) => {
                // An existing fork of this vdisk is exported as it stands (a restarted export).
                let parent = crate::client::remote::control(s, &cfg.token, crate::wire::ControlRequest::History { vdisk: new.to_string() })
                    .ok()
                    .and_then(|r| match r {
                        crate::wire::ControlResponse::History(j) => serde_json::from_str::<serde_json::Value>(&j).ok(),
                        _ => None,
                    })
                    .and_then(|j| j["parent"].as_str().map(str::to_string));
                if parent.as_deref() == Some(cfg.vdisk.as_str()) {
                    tracing::info!(vdisk = %cfg.vdisk, fork = new, "nbd: fork exists; exporting it as it stands");
                    return Ok(());
                }
                return Err(e);
            }
            Err(e) => {
                tracing::warn!(server = %s, "nbd: tlogd not usable: {e}");
                last = Some(e);
            }
        }
    }
    Err(last.unwrap_or_else(|| bad("no tlogd address given".into())))
}

/// The export size of a past export: `--size`, else the extent of the image at the point.
fn past_size(cfg: &GatewayConfig, p: &past::Past, vdisk: &str) -> Result<u64> {
    match (cfg.size, p.extent_bytes()) {
        (Some(s), _) if !s.is_multiple_of(512) || s == 0 => Err(bad(format!("--size {s}: a positive multiple of 512 bytes"))),
        (Some(s), _) => Ok(s),
        (None, Some(e)) if e > 0 => Ok(e),
        (None, Some(_)) => Err(bad(format!("vdisk {vdisk} holds no block at the point: give --size BYTES"))),
        (None, None) => {
            Err(bad(format!("vdisk {vdisk}'s index does not record the sectors of its oldest aggregations (an older tlog wrote them): give --size BYTES")))
        }
    }
}

/// Runs the gateway until `stop` is set: attaches to tlogd, brings the image up to the log (or,
/// for a past export, opens the log at the point, creating the fork first for `--fork`),
/// listens, calls `ready`, serves NBD clients (`first_read` is called once, with the time from
/// start to the first read answered); on stop it flushes (tlogd and the image) and returns.
/// Errors: tlogd unreachable or refusing, a bad point, an image that is not this vdisk's copy,
/// the listen address, I/O.
pub fn run(cfg: GatewayConfig, stop: Arc<AtomicBool>, ready: impl FnOnce(&Ready), first_read: impl Fn(Duration) + Send + Sync + 'static) -> Result<()> {
    let start = Instant::now();
    if cfg.servers.is_empty() {
        return Err(bad("give --server ADDR".into()));
    }
    let mode = match (cfg.read_only, &cfg.fork) {
        (true, Some(_)) => return Err(bad("--read-only and --fork exclude each other (a fork export is writable)".into())),
        (true, None) => Mode::ReadOnly,
        (false, Some(_)) => Mode::Fork,
        (false, None) if cfg.at.is_some() => return Err(bad("a point is for --read-only or --fork exports".into())),
        (false, None) => Mode::Head,
    };
    let (client, server, vdisk, past) = match mode {
        Mode::Head => {
            let (client, server) = connect(&cfg)?;
            (Some(client), server, cfg.vdisk.clone(), None)
        }
        Mode::ReadOnly => {
            let (r, server) = open_reader(&cfg, &cfg.vdisk, crate::history::playback::spec(cfg.at.as_ref()))?;
            (None, server, cfg.vdisk.clone(), Some(past::Past::new(r, cfg.cache_bytes)))
        }
        Mode::Fork => {
            let new = cfg.fork.clone().unwrap_or_default();
            make_fork(&cfg, &new)?;
            let mut fc = cfg.clone();
            fc.vdisk = new.clone();
            let (client, server) = connect(&fc)?;
            // Attached first (a previous writer's blocks are drained), so the log at the head
            // holds everything before this export's writes.
            let (r, _) = open_reader(&fc, &new, PointSpec::None)?;
            (Some(client), server, new, Some(past::Past::new(r, cfg.cache_bytes)))
        }
    };
    let head = client.as_ref().map(|c| c.next_sequence().saturating_sub(1)).unwrap_or(0);
    let point = past.as_ref().and_then(|p| p.entries().last().map(|e| e.last_sequence));
    let (image, path, size, caught_up, built) = match &past {
        None => {
            let path = cfg.image.clone().ok_or_else(|| bad("give --image FILE (or --read-only / --fork with a point)".into()))?;
            let (size, caught_up, built) = prepare(&cfg, &path, &server, head)?;
            let image = std::fs::OpenOptions::new().read(true).write(true).open(&path).ctx(|| format!("open {}", path.display()))?;
            (image, path, size, caught_up, built)
        }
        Some(p) => {
            let size = past_size(&cfg, p, &vdisk)?;
            let (f, path) = overlay_file(size)?;
            (f, path, size, 0, false)
        }
    };
    let g = Arc::new(Gateway {
        client,
        image,
        path,
        past,
        overlay: Mutex::new(Extents::default()),
        state_file: mode == Mode::Head,
        started: start,
        first_read: Once::new(),
        on_first_read: Box::new(first_read),
        vdisk: vdisk.clone(),
        size,
        order: Mutex::new(()),
        syncs: Syncs { st: Mutex::new(SyncState { synced: head, running: false }), cond: Condvar::new() },
        durable: Mutex::new(head),
        pending_state: Mutex::new(None),
        state_cond: Condvar::new(),
        stop: stop.clone(),
        connections: AtomicUsize::new(0),
        token: cfg.token.clone(),
        trackers: Mutex::new(Vec::new()),
        sync_times: Mutex::new(SyncTimes::default()),
    });
    enum L {
        Tcp(std::net::TcpListener),
        Unix(std::os::unix::net::UnixListener, PathBuf),
    }
    let (listener, address) = match &cfg.listen {
        Listen::Tcp(a) => {
            let l = std::net::TcpListener::bind(a).map_err(|e| Error::io(format!("listen on {a}"), e))?;
            let addr = l.local_addr().map(|x| x.to_string()).unwrap_or_else(|_| a.clone());
            (L::Tcp(l), addr)
        }
        Listen::Unix(p) => {
            if std::fs::symlink_metadata(p).map(|m| std::os::unix::fs::FileTypeExt::is_socket(&m.file_type())).unwrap_or(false) {
                std::fs::remove_file(p).ctx(|| format!("remove stale socket {}", p.display()))?;
            }
            let l = std::os::unix::net::UnixListener::bind(p).map_err(|e| Error::io(format!("listen on {}", p.display()), e))?;
            (L::Unix(l, p.clone()), p.display().to_string())
        }
    };
    match &listener {
        L::Tcp(l) => l.set_nonblocking(true),
        L::Unix(l, _) => l.set_nonblocking(true),
    }
    .ctx(|| "set the listener non-blocking".into())?;
    ready(&Ready { address: address.clone(), size, head, caught_up_blocks: caught_up, built, elapsed: start.elapsed(), mode, point });
    tracing::info!(vdisk = %vdisk, %address, size, head, ?mode, "nbd: serving");
    let mut threads: Vec<std::thread::JoinHandle<()>> = Vec::new();
    let recorder = if mode == Mode::Head {
        let g2 = g.clone();
        Some(std::thread::Builder::new().name("nbd-state".into()).spawn(move || g2.record_states()).ctx(|| "spawn the nbd state thread".into())?)
    } else {
        None
    };
    while !stop.load(Ordering::SeqCst) {
        let accepted: Option<Box<dyn Conn>> = match &listener {
            L::Tcp(l) => match l.accept() {
                Ok((s, _)) => {
                    let _ = s.set_nonblocking(false);
                    let _ = s.set_nodelay(true);
                    Some(Box::new(s))
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => None,
                Err(e) => {
                    tracing::warn!("nbd: accept: {e}");
                    None
                }
            },
            L::Unix(l, _) => match l.accept() {
                Ok((s, _)) => {
                    let _ = s.set_nonblocking(false);
                    Some(Box::new(s))
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => None,
                Err(e) => {
                    tracing::warn!("nbd: accept: {e}");
                    None
                }
            },
        };
        threads.retain(|t| !t.is_finished());
        match accepted {
            Some(c) if g.connections.load(Ordering::SeqCst) >= MAX_CONNECTIONS => {
                tracing::warn!(vdisk = %cfg.vdisk, "nbd: {MAX_CONNECTIONS} connections already: one more refused");
                drop(c);
            }
            Some(c) => {
                let g2 = g.clone();
                g.connections.fetch_add(1, Ordering::SeqCst);
                let t = std::thread::Builder::new()
                    .name("nbd-conn".into())
                    .spawn(move || {
                        serve_conn(&g2, c);
                        g2.connections.fetch_sub(1, Ordering::SeqCst);
                    })
                    .ctx(|| "spawn an nbd connection thread".into())?;
                threads.push(t);
            }
            None => std::thread::sleep(Duration::from_millis(20)),
        }
    }
    for t in threads {
        let _ = t.join();
    }
    if let L::Unix(_, p) = &listener {
        let _ = std::fs::remove_file(p);
    }
    g.flush()?;
    if let Some(c) = &g.client {
        if g.state_file {
            g.record_state(c.next_sequence().saturating_sub(1))?;
        }
    }
    if let Some(t) = recorder {
        let _ = t.join();
    }
    tracing::info!(vdisk = %cfg.vdisk, "nbd: stopped; everything answered is flushed");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_buckets_give_percentiles_to_a_bucket() {
        let mut b = LatencyBuckets::default();
        assert_eq!(b.quantile_ms(0.5), 0.0);
        // 98 samples of 1.2 ms, one of 7 ms, one past the range.
        for _ in 0..98 {
            b.record(Duration::from_micros(1200));
        }
        b.record(Duration::from_millis(7));
        b.record(Duration::from_secs(3));
        assert_eq!(b.n, 100);
        assert_eq!(b.quantile_ms(0.5), 1.25);
        assert_eq!(b.quantile_ms(0.99), 7.05);
        assert_eq!(b.quantile_ms(1.0), 200.0);
    }
}
