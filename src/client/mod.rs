//! Client library: handshake, streaming with a bounded in-flight window, received and flushed
//! tracking, automatic reconnect with backoff that resends everything not yet flushed (from the
//! server's lastFlushedSequence), and [`Client::flush`] that returns once everything sent is
//! flushed.
//!
//! Sequences: a vdisk's sequences are unique for its whole life, so a new client continues
//! after the server's durable head (`lastFlushedSequence + 1`, or `first_sequence` for a vdisk
//! with nothing flushed); `reset_first_sequence` asks to jump forward to `first_sequence`, which
//! the server refuses if its history already holds that number.
//!
//! Every block stays in the window until the server acks it *flushed*; [`Client::send`]
//! blocks while the window is full (backpressure). A background thread reads acks and, when the
//! connection drops, reconnects (50 ms doubling to 2 s between tries, for at most
//! `reconnect_timeout`) and resends the window. The first connect retries the same way while
//! the server is unreachable or answers `internalError` (starting, taking over, full of
//! connections); refusals that cannot pass (fenced, unauthorized, bad request) end it at once,
//! decided on the typed [`Refusal`], never on message text. When the connection has been quiet
//! for [`KEEPALIVE`], a `forceFlush` keeps it from the server's idle timeout. Server notices
//! (why flushed acks wait, e.g. a full disk) go to `on_notice`.

pub mod remote;
pub mod replicate;

use crate::error::{Error, IoContext, Refusal, Result};
use crate::time::now_ns;
use crate::wire::{
    decode_handshake_response, decode_server_message, encode_client_message, encode_handshake_request, Block, ClientMessage, ErrorCode, FrameDecoder,
    HandshakeRequest, HandshakeStatus, Notice, Operation, ServerMessage, PROTOCOL_VERSION,
};
use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Client settings.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// Server address (host:port).
    pub server: String,
    /// More tlogd hosts on the same backends, tried in turn after `server` when the one in use
    /// is unreachable, answers `internalError`, or leaves blocks unanswered for
    /// `failover_timeout` (frozen or cut off). The new server's `lastFlushedSequence` (read
    /// from the backends) says what to resend: no block goes into the history twice.
    pub failover: Vec<String>,
    /// With `failover` addresses: a connection whose server has answered nothing for this long
    /// while blocks wait for its received ack is given up for the next address. Default 1 s.
    pub failover_timeout: Duration,
    /// The vdisk.
    pub vdisk: String,
    /// Auth token ("" = none).
    pub token: String,
    /// First sequence for a vdisk with nothing flushed (or the reset point). Default 1.
    pub first_sequence: u64,
    /// Jump forward to `first_sequence` on the first connect (`resetFirstSequence`; refused by
    /// the server when the vdisk's history holds it). Default false: continue after the head.
    pub reset_first_sequence: bool,
    /// Blocks in flight (not yet flushed) at most. Default 8192.
    pub window_blocks: usize,
    /// Bytes in flight at most. Default 128 MiB.
    pub window_bytes: u64,
    /// Connect timeout per try. Default 2 s.
    pub connect_timeout: Duration,
    /// Give up reconnecting after this long. Default 120 s.
    pub reconnect_timeout: Duration,
    /// Longest `flush()` waits. Default 600 s.
    pub flush_timeout: Duration,
    /// Longest a send waits for room in the window (the server acks nothing flushed, e.g.
    /// while its store is full). Default 600 s.
    pub send_timeout: Duration,
    /// Called (on the client's reader thread) with every server notice: why flushed acks wait,
    /// and when they resume.
    pub on_notice: Option<NoticeHandler>,
}

/// A callback for server notices.
#[derive(Clone)]
pub struct NoticeHandler(pub Arc<dyn Fn(&Notice) + Send + Sync>);

impl std::fmt::Debug for NoticeHandler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NoticeHandler")
    }
}

/// How long a connection may stay quiet before the client sends a keepalive (a `forceFlush`,
/// which flushes nothing on an idle vdisk): well inside tlogd's default `idle_timeout_ms`.
pub const KEEPALIVE: Duration = Duration::from_secs(30);

impl ClientConfig {
    /// Defaults for `server` and `vdisk`.
    pub fn new(server: &str, vdisk: &str) -> Self {
        ClientConfig {
            server: server.into(),
            failover: Vec::new(),
            failover_timeout: Duration::from_secs(1),
            vdisk: vdisk.into(),
            token: String::new(),
            first_sequence: 1,
            reset_first_sequence: false,
            window_blocks: 8192,
            window_bytes: 128 << 20,
            connect_timeout: Duration::from_secs(2),
            reconnect_timeout: Duration::from_secs(120),
            flush_timeout: Duration::from_secs(600),
            send_timeout: Duration::from_secs(600),
            on_notice: None,
        }
    }
}

/// Ack latency samples (ns), when recording is on.
#[derive(Default, Debug, Clone)]
pub struct Latencies {
    /// Send → received ack.
    pub received: Vec<u64>,
    /// Send → flushed ack.
    pub flushed: Vec<u64>,
}

/// A block in flight: its encoded frame (resent on reconnect) and what the window needs.
struct Pending {
    sequence: u64,
    data_len: u64,
    frame: Arc<Vec<u8>>,
    sent_at: Instant,
    received: bool,
}

struct State {
    window: VecDeque<Pending>,
    window_bytes: u64,
    next_sequence: u64,
    last_flushed: Option<u64>,
    /// Why the client stopped: the refusal (None: the server stayed unreachable) and a message.
    fatal: Option<(Option<Refusal>, String)>,
    /// The reset was accepted once (later reconnects continue).
    reset_done: bool,
    /// The writer epoch of the last attach (presented on reconnect; 0 before the first).
    epoch: u64,
    reconnects: u64,
    latencies: Option<Latencies>,
    errors: u64,
}

struct Shared {
    cfg: ClientConfig,
    state: Mutex<State>,
    cond: Condvar,
    writer: Mutex<Option<TcpStream>>,
    closed: AtomicBool,
    generation: AtomicU64,
    /// When something was last sent (ms since `origin`), for the keepalive.
    last_send_ms: AtomicU64,
    /// When the server last sent anything (ms since `origin`), for the failover.
    last_heard_ms: AtomicU64,
    /// `last_heard_ms` when the last liveness probe went out (one per quiet spell).
    probed: AtomicU64,
    /// Which of the addresses (`server`, then `failover`) is in use.
    current: std::sync::atomic::AtomicUsize,
    /// Set when the client moved to another address: the first flushed ack from there is
    /// logged (bench.sh measures failover time from it).
    moved_at: Mutex<Option<Instant>>,
    origin: Instant,
}

/// A connection to tlogd for one vdisk.
pub struct Client {
    shared: Arc<Shared>,
    reader: Option<std::thread::JoinHandle<()>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn read_frame(s: &mut TcpStream, dec: &mut FrameDecoder, buf: &mut [u8]) -> Result<crate::wire::Frame> {
    loop {
        if let Some(f) = dec.next_frame()? {
            return Ok(f);
        }
        let n = s.read(buf).ctx(|| "read from server".into())?;
        if n == 0 {
            return Err(Error::io("read from server", std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "connection closed")));
        }
        dec.push(&buf[..n]);
    }
}

fn refusal(s: HandshakeStatus) -> Refusal {
    match s {
        HandshakeStatus::BadRequest | HandshakeStatus::Ok => Refusal::BadRequest,
        HandshakeStatus::BadVersion => Refusal::BadVersion,
        HandshakeStatus::BadVdisk => Refusal::BadVdisk,
        HandshakeStatus::Unauthorized => Refusal::Unauthorized,
        HandshakeStatus::Fenced => Refusal::Fenced,
        HandshakeStatus::InternalError => Refusal::Internal,
    }
}

/// Whether a first attach that failed may pass by trying again: an `internalError` answer, or
/// the server not reachable (not listening yet, restarting, full of connections), as for a
/// reconnect. A refusal that cannot pass (fenced, unauthorized, bad request) ends it.
fn retryable(e: &Error) -> bool {
    match e {
        Error::Refused { reason, .. } => reason.retryable(),
        Error::Io { .. } | Error::Timeout(_) | Error::Protocol(_) => true,
        _ => false,
    }
}

impl Shared {
    /// Every address, `server` first.
    fn servers(&self) -> Vec<&str> {
        std::iter::once(self.cfg.server.as_str()).chain(self.cfg.failover.iter().map(String::as_str)).collect()
    }

    /// The address in use.
    fn server(&self) -> String {
        let s = self.servers();
        s[self.current.load(Ordering::SeqCst) % s.len()].to_string()
    }

    /// Moves to the next address (after a failure); false with a single one.
    fn next_server(&self) -> bool {
        let n = self.servers().len();
        if n < 2 {
            return false;
        }
        let i = (self.current.fetch_add(1, Ordering::SeqCst) + 1) % n;
        tracing::warn!(vdisk = %self.cfg.vdisk, "failing over to tlogd at {}", self.servers()[i]);
        lock(&self.moved_at).get_or_insert_with(Instant::now);
        true
    }

    /// Whether the address in use is the first again (a round of them is over).
    fn wrapped(&self) -> bool {
        self.current.load(Ordering::SeqCst).is_multiple_of(self.servers().len())
    }

    fn heard(&self) {
        self.last_heard_ms.store(self.origin.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// Milliseconds since the server last sent anything.
    fn quiet_ms(&self) -> u64 {
        (self.origin.elapsed().as_millis() as u64).saturating_sub(self.last_heard_ms.load(Ordering::Relaxed))
    }

    /// With failover addresses: the server in use answered nothing for `failover_timeout`
    /// while blocks wait for its acks (a probe went out at half of it: a live server answers
    /// `forceFlushReceived` at once, whatever its backends do).
    fn unresponsive(&self) -> bool {
        if self.cfg.failover.is_empty() || (self.quiet_ms() as u128) < self.cfg.failover_timeout.as_millis() {
            return false;
        }
        !lock(&self.state).window.is_empty()
    }

    /// With failover addresses: once the server has been quiet for half of `failover_timeout`
    /// while blocks wait, one `forceFlush` asks it to show it is alive.
    fn probe(&self) {
        if self.cfg.failover.is_empty() || (self.quiet_ms() as u128) < self.cfg.failover_timeout.as_millis() / 2 {
            return;
        }
        let heard = self.last_heard_ms.load(Ordering::Relaxed);
        if self.probed.swap(heard, Ordering::SeqCst) == heard || lock(&self.state).window.is_empty() {
            return;
        }
        // Never waits for the writer's lock: a sender blocked on a frozen server holds it, and
        // the silence alone then gives the server up.
        if let Ok(mut w) = self.writer.try_lock() {
            if let Some(s) = w.as_mut() {
                let _ = s.write_all(&encode_client_message(&ClientMessage::ForceFlush));
            }
        }
    }

    fn touch(&self) {
        self.last_send_ms.store(self.origin.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}

impl Client {
    /// Connects and attaches. While the server is unreachable or answers `internalError`, it
    /// tries again (50 ms doubling to 2 s) for at most `reconnect_timeout`.
    /// Errors: the server stayed unreachable ([`Error::Io`], the last error), or refused the
    /// handshake ([`Error::Refused`] with the status and message).
    pub fn connect(cfg: ClientConfig) -> Result<Client> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                window: VecDeque::new(),
                window_bytes: 0,
                next_sequence: cfg.first_sequence,
                last_flushed: None,
                fatal: None,
                reset_done: false,
                epoch: 0,
                reconnects: 0,
                latencies: None,
                errors: 0,
            }),
            cfg,
            cond: Condvar::new(),
            writer: Mutex::new(None),
            closed: AtomicBool::new(false),
            generation: AtomicU64::new(0),
            last_send_ms: AtomicU64::new(0),
            last_heard_ms: AtomicU64::new(0),
            probed: AtomicU64::new(u64::MAX),
            current: std::sync::atomic::AtomicUsize::new(0),
            moved_at: Mutex::new(None),
            origin: Instant::now(),
        });
        let start = Instant::now();
        let mut delay = Duration::from_millis(50);
        let (stream, dec) = loop {
            match Self::attach(&shared, true) {
                Ok(x) => break x,
                Err(e) if retryable(&e) && start.elapsed() + delay < shared.cfg.reconnect_timeout => {
                    if delay == Duration::from_millis(50) {
                        tracing::warn!(vdisk = %shared.cfg.vdisk, "tlogd at {} not reachable yet ({e}); trying again for up to {:?}", shared.server(), shared.cfg.reconnect_timeout);
                    }
                    // The next address at once; a pause after each full round of them.
                    if !shared.next_server() || shared.wrapped() {
                        std::thread::sleep(delay);
                        delay = (delay * 2).min(Duration::from_secs(2));
                    }
                }
                Err(e) => return Err(e),
            }
        };
        let s2 = shared.clone();
        let reader =
            std::thread::Builder::new().name("tlog-client-reader".into()).spawn(move || reader_loop(s2, stream, dec)).ctx(|| "spawn client reader".into())?;
        Ok(Client { shared, reader: Some(reader) })
    }

    /// Opens a connection, handshakes, resends the window; installs the writer.
    fn attach(shared: &Arc<Shared>, first: bool) -> Result<(TcpStream, FrameDecoder)> {
        let cfg = &shared.cfg;
        let server = shared.server();
        let addr = server.to_socket_addrs().ctx(|| format!("resolve {server}"))?.next().ok_or_else(|| Error::NotFound(format!("address {server}")))?;
        let mut s = TcpStream::connect_timeout(&addr, cfg.connect_timeout).map_err(|e| Error::io(format!("connect to tlogd at {server}"), e))?;
        s.set_nodelay(true).ctx(|| "set nodelay".into())?;
        // A takeover may drain the previous writer before it answers (up to the server's
        // takeover_timeout); with other addresses to go to, a frozen server is not waited for
        // that long.
        let answer = if cfg.failover.is_empty() { Duration::from_secs(30) } else { cfg.connect_timeout.max(cfg.failover_timeout * 2) };
        s.set_read_timeout(Some(answer)).ctx(|| "set read timeout".into())?;
        let mut w = lock(&shared.writer);
        // A reset is asked for until the server took it once; later connects continue.
        let (first_seq, reset, resume_epoch) = {
            let st = lock(&shared.state);
            (st.window.front().map(|p| p.sequence).unwrap_or(st.next_sequence), cfg.reset_first_sequence && !st.reset_done, st.epoch)
        };
        let req = HandshakeRequest {
            version: PROTOCOL_VERSION,
            vdisk_id: cfg.vdisk.clone(),
            first_sequence: first_seq,
            token: cfg.token.clone(),
            reset_first_sequence: reset,
            resume_epoch,
            kind: Default::default(),
        };
        s.write_all(&encode_handshake_request(&req)).ctx(|| format!("send handshake to {server}"))?;
        let mut dec = FrameDecoder::new(16 << 20);
        let mut buf = vec![0u8; 64 << 10];
        let f = read_frame(&mut s, &mut dec, &mut buf)?;
        let resp = decode_handshake_response(&f)?;
        if resp.status != HandshakeStatus::Ok {
            return Err(Error::Refused {
                reason: refusal(resp.status),
                message: format!("handshake for vdisk {}: {:?}: {}", cfg.vdisk, resp.status, resp.message),
            });
        }
        s.set_read_timeout(Some(Duration::from_millis(200))).ctx(|| "set read timeout".into())?;
        // Drop what the server already has durably, resend the rest.
        let mut frames = Vec::new();
        {
            let mut st = lock(&shared.state);
            st.epoch = resp.epoch;
            if reset {
                st.reset_done = true;
            } else if resp.has_flushed {
                let last = resp.last_flushed_sequence;
                if st.window.is_empty() && last >= st.next_sequence {
                    // Continue after the vdisk's history (sequences are unique for its life).
                    st.next_sequence = last.checked_add(1).ok_or_else(|| Error::Refused {
                        reason: Refusal::BadRequest,
                        message: format!("vdisk {}: its sequence space is exhausted", cfg.vdisk),
                    })?;
                } else if last >= st.next_sequence {
                    // Someone else wrote past this client's blocks meanwhile.
                    return Err(Error::Refused {
                        reason: Refusal::Fenced,
                        message: format!(
                            "vdisk {}: another writer took it over and wrote up to sequence {last}, past this client's {}",
                            cfg.vdisk,
                            st.next_sequence.saturating_sub(1)
                        ),
                    });
                }
                release(&mut st, last);
            }
            for p in st.window.iter_mut() {
                p.received = false;
                frames.extend_from_slice(&p.frame);
            }
            if !first {
                st.reconnects += 1;
            }
        }
        shared.cond.notify_all();
        if !frames.is_empty() {
            tracing::info!(vdisk = %cfg.vdisk, bytes = frames.len(), "resending blocks not yet flushed");
            s.write_all(&frames).ctx(|| "resend window".into())?;
        }
        *w = Some(s.try_clone().ctx(|| "clone socket".into())?);
        shared.generation.fetch_add(1, Ordering::SeqCst);
        shared.touch();
        shared.heard();
        if !first || shared.current.load(Ordering::SeqCst) > 0 {
            tracing::info!(vdisk = %cfg.vdisk, server = %server, epoch = resp.epoch, last_flushed = resp.last_flushed_sequence, "attached");
        }
        Ok((s, dec))
    }

    /// The tlogd address in use now.
    pub fn server(&self) -> String {
        self.shared.server()
    }

    /// Records ack latencies from now on (for benchmarks).
    pub fn record_latencies(&self) {
        lock(&self.shared.state).latencies = Some(Latencies::default());
    }

    /// Takes the recorded latencies.
    pub fn take_latencies(&self) -> Latencies {
        lock(&self.shared.state).latencies.as_mut().map(std::mem::take).unwrap_or_default()
    }

    /// Reconnects so far.
    pub fn reconnects(&self) -> u64 {
        lock(&self.shared.state).reconnects
    }

    /// Server errors received so far.
    pub fn errors(&self) -> u64 {
        lock(&self.shared.state).errors
    }

    /// Last flushed sequence.
    pub fn last_flushed(&self) -> Option<u64> {
        lock(&self.shared.state).last_flushed
    }

    /// The next sequence to be assigned.
    pub fn next_sequence(&self) -> u64 {
        lock(&self.shared.state).next_sequence
    }

    fn check_fatal(st: &State) -> Result<()> {
        match &st.fatal {
            Some((Some(r), m)) => Err(Error::Refused { reason: *r, message: m.clone() }),
            Some((None, m)) => Err(Error::Timeout(m.clone())),
            None => Ok(()),
        }
    }

    /// Sends a write of `data` at `lba` (512-byte sectors); returns its sequence. Blocks while
    /// the window is full.
    pub fn write(&self, lba: u64, data: Vec<u8>) -> Result<u64> {
        let size = data.len() as u64;
        self.send(lba, Operation::Write, data, size)
    }

    /// Sends a write_zeroes of `size` bytes at `lba`.
    pub fn write_zeroes(&self, lba: u64, size: u64) -> Result<u64> {
        self.send(lba, Operation::WriteZeroes, Vec::new(), size)
    }

    /// Sends one block. Waits for room in the window first; errors with [`Error::Timeout`]
    /// when none frees up within `send_timeout`, or on a fatal server error.
    pub fn send(&self, lba: u64, op: Operation, data: Vec<u8>, size: u64) -> Result<u64> {
        let sh = &self.shared;
        let need = data.len() as u64 + 128;
        {
            let deadline = Instant::now() + sh.cfg.send_timeout;
            let mut st = lock(&sh.state);
            loop {
                Self::check_fatal(&st)?;
                if st.window.is_empty() || (st.window.len() < sh.cfg.window_blocks && st.window_bytes + need <= sh.cfg.window_bytes) {
                    break;
                }
                if Instant::now() >= deadline {
                    return Err(Error::Timeout(format!(
                        "vdisk {}: no room in the window for {:?} ({} blocks, {} bytes in flight, none flushed meanwhile)",
                        sh.cfg.vdisk,
                        sh.cfg.send_timeout,
                        st.window.len(),
                        st.window_bytes
                    )));
                }
                st = sh.cond.wait_timeout(st, Duration::from_millis(100)).map(|(g, _)| g).unwrap_or_else(|p| p.into_inner().0);
            }
        }
        let mut w = lock(&sh.writer);
        let (seq, frame) = {
            let mut st = lock(&sh.state);
            Self::check_fatal(&st)?;
            let seq = st.next_sequence;
            st.next_sequence += 1;
            let data_len = data.len() as u64;
            let frame = Arc::new(encode_client_message(&ClientMessage::Block(Block::new(seq, lba, op, data, size, now_ns()))));
            st.window_bytes += need;
            st.window.push_back(Pending { sequence: seq, data_len, frame: frame.clone(), sent_at: Instant::now(), received: false });
            (seq, frame)
        };
        sh.touch();
        if let Some(s) = w.as_mut() {
            if s.write_all(&frame).is_err() {
                // The reader notices the broken connection and reconnects; the block is in the
                // window and will be resent.
                let _ = s.shutdown(Shutdown::Both);
                *w = None;
            }
        }
        Ok(seq)
    }

    /// Waits until every block sent so far is acked *received* (or flushed), at most
    /// `timeout`. Errors on a fatal server error or the timeout.
    pub fn wait_received(&self, timeout: Duration) -> Result<()> {
        self.wait_received_upto(u64::MAX, timeout)
    }

    /// Waits until every block with a sequence up to `sequence` is acked *received* (or
    /// flushed), at most `timeout`; later blocks may still be in flight. Errors as
    /// [`Client::wait_received`].
    pub fn wait_received_upto(&self, sequence: u64, timeout: Duration) -> Result<()> {
        let sh = &self.shared;
        let deadline = Instant::now() + timeout;
        let mut st = lock(&sh.state);
        loop {
            Self::check_fatal(&st)?;
            if st.window.iter().take_while(|p| p.sequence <= sequence).all(|p| p.received) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(Error::Timeout(format!("vdisk {}: blocks not acked received after {timeout:?}", sh.cfg.vdisk)));
            }
            st = sh.cond.wait_timeout(st, Duration::from_millis(20)).map(|(g, _)| g).unwrap_or_else(|p| p.into_inner().0);
        }
    }

    /// Asks the server to flush now and waits until every block sent so far is flushed.
    /// Errors: a fatal server error, reconnecting gave up, or `flush_timeout` passed.
    pub fn flush(&self) -> Result<()> {
        let target = lock(&self.shared.state).next_sequence.saturating_sub(1);
        self.flush_upto(target)
    }

    /// Asks the server to flush now and waits until every block with a sequence up to
    /// `target` is flushed; later blocks may still be in flight. Errors as [`Client::flush`].
    pub fn flush_upto(&self, target: u64) -> Result<()> {
        let sh = &self.shared;
        let deadline = Instant::now() + sh.cfg.flush_timeout;
        let mut last_ask = None::<Instant>;
        let mut st = lock(&sh.state);
        loop {
            Self::check_fatal(&st)?;
            if st.window.is_empty() || st.window.front().map(|p| p.sequence > target).unwrap_or(true) {
                return Ok(());
            }
            if last_ask.map(|t| t.elapsed() > Duration::from_millis(500)).unwrap_or(true) {
                drop(st);
                if let Some(s) = lock(&sh.writer).as_mut() {
                    let _ = s.write_all(&encode_client_message(&ClientMessage::ForceFlush));
                }
                sh.touch();
                last_ask = Some(Instant::now());
                st = lock(&sh.state);
                continue;
            }
            if Instant::now() > deadline {
                return Err(Error::Timeout(format!("flush of vdisk {}: blocks up to {target} not flushed after {:?}", sh.cfg.vdisk, sh.cfg.flush_timeout)));
            }
            st = sh.cond.wait_timeout(st, Duration::from_millis(50)).map(|(g, _)| g).unwrap_or_else(|p| p.into_inner().0);
        }
    }

    /// Sends `disconnect` and closes.
    pub fn close(mut self) -> Result<()> {
        self.shutdown();
        Ok(())
    }

    fn shutdown(&mut self) {
        self.shared.closed.store(true, Ordering::SeqCst);
        if let Some(s) = lock(&self.shared.writer).as_mut() {
            let _ = s.write_all(&encode_client_message(&ClientMessage::Disconnect));
            let _ = s.shutdown(Shutdown::Write);
        }
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn release(st: &mut State, last: u64) {
    while st.window.front().map(|p| p.sequence <= last).unwrap_or(false) {
        if let Some(p) = st.window.pop_front() {
            st.window_bytes = st.window_bytes.saturating_sub(p.data_len + 128);
            if let Some(l) = st.latencies.as_mut() {
                l.flushed.push(p.sent_at.elapsed().as_nanos() as u64);
            }
        }
    }
    if st.last_flushed.map(|l| last > l).unwrap_or(true) {
        st.last_flushed = Some(last);
    }
}

fn reader_loop(sh: Arc<Shared>, mut stream: TcpStream, mut dec: FrameDecoder) {
    let mut buf = vec![0u8; 256 << 10];
    loop {
        // Read acks until the connection breaks.
        let broke = loop {
            match dec.next_frame() {
                Ok(Some(f)) => {
                    sh.heard();
                    match decode_server_message(&f) {
                        Ok(m) => handle_message(&sh, m),
                        Err(e) => tracing::warn!("undecodable server message: {e}"),
                    }
                    continue;
                }
                Ok(None) => {}
                Err(e) => break format!("bad frame from server: {e}"),
            }
            if sh.closed.load(Ordering::SeqCst) && lock(&sh.state).window.is_empty() {
                return;
            }
            match stream.read(&mut buf) {
                Ok(0) => break "server closed the connection".to_string(),
                Ok(n) => dec.push(&buf[..n]),
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut | std::io::ErrorKind::Interrupted) => {
                    if sh.closed.load(Ordering::SeqCst) {
                        return;
                    }
                    if sh.unresponsive() {
                        break format!("no answer from {} for {:?} with blocks waiting", sh.server(), sh.cfg.failover_timeout);
                    }
                    sh.probe();
                    keepalive(&sh);
                    continue;
                }
                Err(e) => break format!("read: {e}"),
            }
        };
        if sh.closed.load(Ordering::SeqCst) {
            return;
        }
        if lock(&sh.state).fatal.is_some() {
            return;
        }
        tracing::warn!(vdisk = %sh.cfg.vdisk, "connection lost ({broke}); reconnecting");
        // Shut the socket down first: a sender blocked writing to a frozen server (its buffers
        // full) holds the writer's lock until the write fails.
        let _ = stream.shutdown(Shutdown::Both);
        {
            let mut w = lock(&sh.writer);
            if let Some(s) = w.take() {
                let _ = s.shutdown(Shutdown::Both);
            }
        }
        let start = Instant::now();
        let mut delay = Duration::from_millis(50);
        let mut moved = sh.next_server();
        loop {
            if sh.closed.load(Ordering::SeqCst) {
                return;
            }
            match Client::attach(&sh, false) {
                Ok((s, d)) => {
                    stream = s;
                    dec = d;
                    tracing::info!(vdisk = %sh.cfg.vdisk, "reconnected after {:?}", start.elapsed());
                    break;
                }
                Err(e) => {
                    if let Error::Refused { reason, message } = &e {
                        if !reason.retryable() {
                            fail(&sh, Some(*reason), format!("reconnect refused: {message}"));
                            return;
                        }
                    }
                    if start.elapsed() > sh.cfg.reconnect_timeout {
                        fail(&sh, None, format!("server {} unreachable for {:?}: {e}", sh.server(), sh.cfg.reconnect_timeout));
                        return;
                    }
                    tracing::warn!(vdisk = %sh.cfg.vdisk, "reconnect to {} failed: {e}", sh.server());
                    // Around the addresses at once; a pause after each full round.
                    let wrapped = sh.next_server() && sh.wrapped();
                    if !moved || wrapped {
                        std::thread::sleep(delay);
                        delay = (delay * 2).min(Duration::from_secs(2));
                    }
                    moved = true;
                }
            }
        }
    }
}

fn fail(sh: &Shared, reason: Option<Refusal>, msg: String) {
    tracing::error!(vdisk = %sh.cfg.vdisk, "{msg}");
    lock(&sh.state).fatal = Some((reason, msg));
    sh.cond.notify_all();
}

/// Sends a `forceFlush` when nothing was sent for [`KEEPALIVE`] (and nothing is in flight that
/// would need it anyway), so the server's idle timeout does not close a quiet connection.
fn keepalive(sh: &Shared) {
    let now = sh.origin.elapsed().as_millis() as u64;
    if now.saturating_sub(sh.last_send_ms.load(Ordering::Relaxed)) < KEEPALIVE.as_millis() as u64 {
        return;
    }
    sh.touch();
    if let Some(s) = lock(&sh.writer).as_mut() {
        let _ = s.write_all(&encode_client_message(&ClientMessage::ForceFlush));
    }
}

fn handle_message(sh: &Shared, m: ServerMessage) {
    match m {
        ServerMessage::Received(f, l) => {
            let mut st = lock(&sh.state);
            let record = st.latencies.is_some();
            let mut lat = Vec::new();
            for p in st.window.iter_mut() {
                if p.sequence > l {
                    break;
                }
                if p.sequence >= f && !p.received {
                    p.received = true;
                    if record {
                        lat.push(p.sent_at.elapsed().as_nanos() as u64);
                    }
                }
            }
            if let Some(x) = st.latencies.as_mut() {
                x.received.extend(lat);
            }
            drop(st);
            sh.cond.notify_all();
        }
        ServerMessage::Flushed(_, l) => {
            let mut st = lock(&sh.state);
            release(&mut st, l);
            drop(st);
            if let Some(t) = lock(&sh.moved_at).take() {
                tracing::info!(vdisk = %sh.cfg.vdisk, server = %sh.server(), "flushed acks resumed after failover ({:.0} ms after the first server was given up)", t.elapsed().as_secs_f64() * 1e3);
            }
            sh.cond.notify_all();
        }
        ServerMessage::ForceFlushReceived => {}
        ServerMessage::Error(e) => {
            let mut st = lock(&sh.state);
            st.errors += 1;
            // Every server error means the stream can no longer be trusted to be what the
            // caller sent (a fenced writer, a rejected block): stop and report it.
            let (what, reason) = if e.code == ErrorCode::Fenced { ("fenced by a newer writer", Refusal::Fenced) } else { ("server error", Refusal::Block) };
            st.fatal = Some((Some(reason), format!("{what} {:?} at sequence {}: {}", e.code, e.sequence, e.message)));
            drop(st);
            sh.cond.notify_all();
        }
        ServerMessage::Block(_) | ServerMessage::PlaybackEnd(_) | ServerMessage::Head(_) | ServerMessage::Control(_) | ServerMessage::Index { .. } => {
            tracing::warn!(vdisk = %sh.cfg.vdisk, "a writer got a playback or control message; ignored");
        }
        ServerMessage::Notice(n) => {
            tracing::info!(vdisk = %sh.cfg.vdisk, kind = ?n.kind, "server notice: {}", n.message);
            if let Some(f) = &sh.cfg.on_notice {
                (f.0)(&n);
            }
        }
    }
}

/// What [`import`] sent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Imported {
    /// Blocks sent.
    pub blocks: u64,
    /// Image bytes covered.
    pub bytes: u64,
}

/// Streams an image as write blocks of `block_size` bytes (a multiple of 512, at most 4 MiB)
/// from the client's vdisk offset 0: all-zero blocks as `writeZeroes`, a short last block with
/// its exact length (so a restore has the image's size). Returns once every block was sent; call
/// [`Client::flush`] to wait until they are durable.
///
/// Errors: a bad `block_size` ([`Error::InvalidArgument`]), a read error of `image`, or the
/// client's errors.
pub fn import(client: &Client, mut image: impl Read, block_size: u64) -> Result<Imported> {
    if block_size == 0 || !block_size.is_multiple_of(512) || block_size > 4 << 20 {
        return Err(Error::InvalidArgument(format!("block size {block_size}: a multiple of 512 up to 4194304")));
    }
    let mut out = Imported::default();
    let mut buf = vec![0u8; block_size as usize];
    loop {
        let mut n = 0usize;
        while n < buf.len() {
            let r = match image.read(&mut buf[n..]) {
                Ok(r) => r,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Error::io("read image", e)),
            };
            if r == 0 {
                break;
            }
            n += r;
        }
        if n == 0 {
            break;
        }
        // Blocks start on sector boundaries (block_size is a multiple of 512).
        let lba = out.bytes / 512;
        if buf[..n].iter().all(|b| *b == 0) {
            client.write_zeroes(lba, n as u64)?;
        } else {
            client.write(lba, buf[..n].to_vec())?;
        }
        out.blocks += 1;
        out.bytes += n as u64;
        if (n as u64) < block_size {
            break;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::encode_server_message;
    use std::io::Read;
    use std::net::TcpListener;

    /// A fake server's answer to a handshake: accepted in `epoch`, nothing flushed yet.
    fn handshake_ok(epoch: u64) -> Vec<u8> {
        let r = crate::wire::HandshakeResponse {
            version: PROTOCOL_VERSION,
            status: HandshakeStatus::Ok,
            last_flushed_sequence: 0,
            has_flushed: false,
            message: String::new(),
            epoch,
        };
        crate::wire::encode_handshake_response(&r)
    }

    /// A server that answers the handshake and then acks nothing.
    fn silent_server() -> (String, std::thread::JoinHandle<()>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let h = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            s.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
            let mut dec = FrameDecoder::new(1 << 20);
            let mut buf = vec![0u8; 64 << 10];
            let mut answered = false;
            let until = Instant::now() + Duration::from_secs(10);
            while Instant::now() < until {
                match s.read(&mut buf) {
                    Ok(0) => return,
                    Ok(n) => dec.push(&buf[..n]),
                    Err(_) => continue,
                }
                if !answered && dec.next_frame().unwrap().is_some() {
                    s.write_all(&handshake_ok(1)).unwrap();
                    answered = true;
                }
                while dec.next_frame().unwrap().is_some() {}
            }
        });
        (addr, h)
    }

    #[test]
    fn send_gives_up_when_the_window_never_frees() {
        let (addr, server) = silent_server();
        let mut cfg = ClientConfig::new(&addr, "vd");
        cfg.window_blocks = 2;
        cfg.send_timeout = Duration::from_millis(300);
        let c = Client::connect(cfg).unwrap();
        c.write(0, vec![1u8; 4096]).unwrap();
        c.write(8, vec![2u8; 4096]).unwrap();
        let t = Instant::now();
        match c.write(16, vec![3u8; 4096]) {
            Err(Error::Timeout(m)) => assert!(m.contains("no room in the window") && m.contains("2 blocks"), "{m}"),
            other => panic!("expected a timeout, got {other:?}"),
        }
        assert!(t.elapsed() >= Duration::from_millis(300));
        drop(c);
        server.join().unwrap();
    }

    /// A fake tlogd: answers the handshake, acks every block received, and, when `flushes`,
    /// flushed too and answers forceFlush; without, it goes silent after the received acks (a
    /// host frozen with blocks received but not flushed). Serves one connection at a time for
    /// `secs` seconds.
    fn fake_server(flushes: bool, secs: u64) -> (String, std::thread::JoinHandle<u64>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.set_nonblocking(true).unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let h = std::thread::spawn(move || {
            let until = Instant::now() + Duration::from_secs(secs);
            let mut blocks = 0u64;
            while Instant::now() < until {
                let Ok((mut s, _)) = l.accept() else {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                };
                s.set_nonblocking(false).unwrap();
                s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
                let mut dec = FrameDecoder::new(1 << 20);
                let mut buf = vec![0u8; 64 << 10];
                let mut answered = false;
                'conn: while Instant::now() < until {
                    match s.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => dec.push(&buf[..n]),
                        Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => continue,
                        Err(_) => break,
                    }
                    while let Ok(Some(f)) = dec.next_frame() {
                        if !answered {
                            if s.write_all(&handshake_ok(2)).is_err() {
                                break 'conn;
                            }
                            answered = true;
                            continue;
                        }
                        let mut out = Vec::new();
                        match crate::wire::decode_client_message(&f) {
                            Ok(ClientMessage::Block(b)) => {
                                blocks += 1;
                                out.extend(encode_server_message(&ServerMessage::Received(b.sequence, b.sequence)));
                                if flushes {
                                    out.extend(encode_server_message(&ServerMessage::Flushed(b.sequence, b.sequence)));
                                }
                            }
                            Ok(ClientMessage::ForceFlush) if flushes => out.extend(encode_server_message(&ServerMessage::ForceFlushReceived)),
                            _ => {}
                        }
                        if s.write_all(&out).is_err() {
                            break 'conn;
                        }
                    }
                }
            }
            blocks
        });
        (addr, h)
    }

    #[test]
    fn a_server_that_received_everything_and_went_silent_is_given_up_for_the_next() {
        let (a, sa) = fake_server(false, 4);
        let (b, sb) = fake_server(true, 4);
        let mut cfg = ClientConfig::new(&a, "vd");
        cfg.failover = vec![b];
        cfg.failover_timeout = Duration::from_millis(400);
        cfg.flush_timeout = Duration::from_secs(5);
        let c = Client::connect(cfg).unwrap();
        for i in 0..8u64 {
            c.write(i * 8, vec![i as u8 + 1; 4096]).unwrap();
        }
        let t = Instant::now();
        c.flush().expect("flushed through the second server");
        assert!(t.elapsed() < Duration::from_secs(3), "failover took {:?}", t.elapsed());
        assert!(c.server().ends_with(&sb_port(&c)), "not on the second server");
        c.close().unwrap();
        assert_eq!(sa.join().unwrap(), 8, "the first server got every block");
        assert_eq!(sb.join().unwrap(), 8, "the second server got every block again (none was flushed)");
    }

    fn sb_port(c: &Client) -> String {
        c.shared.cfg.failover[0].rsplit(':').next().unwrap_or("").to_string()
    }
}
