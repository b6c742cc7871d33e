//! One connection's protocol machine, sans-IO: bytes in ([`Protocol::on_received`]), frames
//! out ([`Protocol::take_output`]). Front-ends own the sockets; the session owns the protocol:
//! the handshake policy (version, vdisk id, auth token compared in constant time), block
//! validation (operation, size, range, BLAKE3 hash), received acks coalesced into ranges,
//! duplicate re-acks, forceFlush, backpressure and fencing. It drives the engine through
//! [`Core`] (so it is tested against a fake), and the engine's asynchronous acks come typed
//! ([`Ack`]) on a channel that the front-end drains and encodes with [`encode_ack`].
//!
//! [`Protocol`] is what a front-end serves: the session and the benchmark sink implement it,
//! and each front-end has one serve loop over it.

use crate::error::Error;
use crate::flush::{Ack, AckSink, AttachError, AttachRequest, AttachTicket, Core, Push, Ticket};
use crate::wire::{
    decode_client_message_with, decode_handshake_request, encode_handshake_response, encode_server_message, Block, ClientMessage, ControlResponse, ErrorCode,
    FrameDecoder, HandshakeResponse, HandshakeStatus, Notice, NoticeKind, Operation, RequestKind, ServerError, ServerMessage, PROTOCOL_VERSION, SECTOR,
};
use crossbeam_channel::Receiver;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// What the front-end should do after feeding bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Progress {
    /// Keep reading.
    Ready,
    /// Stop reading, [`Protocol::wait`] and call [`Protocol::resume`]: the vdisk's buffers are
    /// full (backpressure) or the handshake's attach is still under way.
    Blocked,
    /// Send the pending output, then close the connection.
    Close,
}

/// A connection's protocol endpoint, as a front-end drives it.
pub trait Protocol: Send {
    /// Space of at least `min` bytes to receive into; then call [`Protocol::on_received`].
    fn receive_buffer(&mut self, min: usize) -> &mut [u8];
    /// Processes `n` bytes written into [`Protocol::receive_buffer`].
    fn on_received(&mut self, n: usize) -> Progress;
    /// Retries after [`Progress::Blocked`].
    fn resume(&mut self) -> Progress;
    /// Takes the frames to send.
    fn take_output(&mut self) -> Vec<u8>;
    /// True when output is pending.
    fn has_output(&self) -> bool;
    /// The channel of asynchronous acks (flushed acks, fencing, notices), once; `None` when the
    /// protocol has none. Encode what arrives with [`encode_ack`].
    fn take_acks(&mut self) -> Option<Receiver<Ack>>;
    /// Waits (at most `timeout`) until a blocked connection may progress.
    fn wait(&self, timeout: Duration);
    /// Whether the handshake is complete (front-ends close connections that stay unattached
    /// past `server.handshake_timeout_ms`).
    fn attached(&self) -> bool;
    /// Whether the client is expected to keep sending (a writer): only such connections are
    /// closed when silent for `server.idle_timeout_ms` (a playback's client only reads).
    fn expects_input(&self) -> bool {
        true
    }
    /// The connection ends: let go of the vdisk.
    fn close(&mut self);
}

/// Accepted auth tokens, kept as BLAKE3 hashes and compared in constant time (`blake3::Hash`'s
/// equality), so a token's bytes cannot be probed by timing.
#[derive(Clone, Debug, Default)]
pub struct Auth {
    tokens: Vec<blake3::Hash>,
}

impl Auth {
    /// No authentication: every token is accepted.
    pub fn none() -> Auth {
        Auth::default()
    }

    /// Accepts exactly `tokens` (empty tokens are not tokens).
    pub fn tokens<'a>(tokens: impl IntoIterator<Item = &'a str>) -> Auth {
        Auth { tokens: tokens.into_iter().filter(|t| !t.is_empty()).map(|t| blake3::hash(t.as_bytes())).collect() }
    }

    /// Whether authentication is on.
    pub fn required(&self) -> bool {
        !self.tokens.is_empty()
    }

    /// Whether `token` is accepted (every configured token is compared, each in constant time).
    pub fn allows(&self, token: &str) -> bool {
        if self.tokens.is_empty() {
            return true;
        }
        let h = blake3::hash(token.as_bytes());
        self.tokens.iter().fold(false, |ok, t| ok | (*t == h)) && !token.is_empty()
    }
}

/// What a session enforces, from `[server]`.
#[derive(Clone, Debug)]
pub struct SessionLimits {
    /// Largest frame, bytes.
    pub max_frame_bytes: usize,
    /// Largest block, bytes.
    pub max_block_bytes: u64,
    /// Largest vdisk, bytes (`lba * 512 + size` must not pass it).
    pub max_vdisk_bytes: u64,
    /// Bytes of encoded blocks a playback may hold ready for a slow reader.
    pub playback_buffer_bytes: u64,
    /// Accepted tokens.
    pub auth: Auth,
    /// Connections open now (metrics).
    pub connections: Arc<std::sync::atomic::AtomicU64>,
}

impl SessionLimits {
    /// From a validated config and the loaded tokens.
    pub fn from_config(c: &crate::config::Config, auth: Auth) -> SessionLimits {
        SessionLimits {
            max_frame_bytes: c.server.max_frame_bytes,
            max_block_bytes: c.server.max_block_bytes,
            max_vdisk_bytes: c.server.max_vdisk_bytes,
            playback_buffer_bytes: c.server.playback_buffer_bytes,
            auth,
            connections: Default::default(),
        }
    }
}

/// Encodes an asynchronous ack as the server message the client reads (playback frames are
/// already encoded).
pub fn encode_ack(ack: &Ack) -> Vec<u8> {
    let m = match ack {
        Ack::Frames(f) => return f.clone(),
        Ack::Flushed { first, last } => ServerMessage::Flushed(*first, *last),
        Ack::Fenced { by } => ServerMessage::Error(ServerError {
            code: ErrorCode::Fenced,
            sequence: 0,
            expected_sequence: 0,
            message: format!("vdisk taken over by a newer connection (epoch {by}): this one is fenced"),
        }),
        Ack::Waiting { reason } => ServerMessage::Notice(Notice { kind: NoticeKind::Waiting, message: reason.clone() }),
        Ack::Resumed => ServerMessage::Notice(Notice { kind: NoticeKind::Resumed, message: "durable writes resumed".into() }),
    };
    encode_server_message(&m)
}

enum State<H> {
    Handshake,
    Attaching {
        ticket: AttachTicket<H>,
        vdisk: String,
    },
    Attached {
        handle: H,
        epoch: u64,
        vdisk: String,
    },
    Playback {
        vdisk: String,
        cancel: Arc<AtomicBool>,
    },
    /// A read connection: fetch requests go to the serving thread.
    Read {
        vdisk: String,
        cancel: Arc<AtomicBool>,
        requests: crossbeam_channel::Sender<u32>,
    },
    Control {
        ticket: Ticket<ControlResponse>,
    },
    Closed,
}

/// What one frame decoded to (taken out of the decoder's borrow before acting on it).
enum Decoded {
    Handshake(crate::error::Result<crate::wire::HandshakeRequest>),
    Message(crate::error::Result<ClientMessage>),
    Broken(Error),
}

/// A connection's protocol state.
pub struct Session<C: Core> {
    core: Arc<C>,
    limits: Arc<SessionLimits>,
    sink: Option<AckSink>,
    acks: Option<Receiver<Ack>>,
    decoder: FrameDecoder,
    state: State<C::Handle>,
    out: Vec<u8>,
    stalled: Option<Block>,
    received: Option<(u64, u64)>,
    flushed: Option<(u64, u64)>,
    peer: String,
}

impl<C: Core> Session<C> {
    /// A session for one connection from `peer`.
    pub fn new(core: Arc<C>, limits: Arc<SessionLimits>, peer: String) -> Session<C> {
        let decoder = FrameDecoder::new(limits.max_frame_bytes);
        limits.connections.fetch_add(1, Ordering::Relaxed);
        Session { core, limits, sink: None, acks: None, decoder, state: State::Handshake, out: Vec::new(), stalled: None, received: None, flushed: None, peer }
    }

    /// The vdisk, once the handshake named one.
    pub fn vdisk(&self) -> Option<&str> {
        match &self.state {
            State::Attaching { vdisk, .. } | State::Attached { vdisk, .. } | State::Playback { vdisk, .. } | State::Read { vdisk, .. } => Some(vdisk),
            _ => None,
        }
    }

    /// Feeds received bytes (a copy; [`Protocol::receive_buffer`] avoids it).
    pub fn on_bytes(&mut self, data: &[u8]) -> Progress {
        if matches!(self.state, State::Closed) {
            return Progress::Close;
        }
        self.decoder.push(data);
        self.process()
    }

    fn send(&mut self, m: &ServerMessage) {
        self.out.extend_from_slice(&encode_server_message(m));
    }

    fn flush_runs(&mut self) {
        if let Some((f, l)) = self.received.take() {
            self.send(&ServerMessage::Received(f, l));
        }
        if let Some((f, l)) = self.flushed.take() {
            self.send(&ServerMessage::Flushed(f, l));
        }
    }

    fn note(run: &mut Option<(u64, u64)>, out: &mut Vec<u8>, seq: u64, flushed: bool) {
        match run {
            Some((_, l)) if l.checked_add(1) == Some(seq) => *l = seq,
            Some((f, l)) => {
                let m = if flushed { ServerMessage::Flushed(*f, *l) } else { ServerMessage::Received(*f, *l) };
                out.extend_from_slice(&encode_server_message(&m));
                *run = Some((seq, seq));
            }
            None => *run = Some((seq, seq)),
        }
    }

    fn error(&mut self, code: ErrorCode, sequence: u64, expected: u64, message: String) {
        self.flush_runs();
        tracing::debug!(peer = %self.peer, ?code, sequence, "{message}");
        self.send(&ServerMessage::Error(ServerError { code, sequence, expected_sequence: expected, message }));
    }

    fn fatal(&mut self, code: ErrorCode, message: String) -> Progress {
        tracing::warn!(peer = %self.peer, ?code, "closing connection: {message}");
        self.error(code, 0, 0, message);
        self.detach();
        Progress::Close
    }

    fn respond(&mut self, status: HandshakeStatus, last_flushed: Option<u64>, epoch: u64, message: String) {
        self.out.extend_from_slice(&encode_handshake_response(&HandshakeResponse {
            version: PROTOCOL_VERSION,
            status,
            last_flushed_sequence: last_flushed.unwrap_or(0),
            has_flushed: last_flushed.is_some(),
            message,
            epoch,
        }));
    }

    fn handshake_fail(&mut self, status: HandshakeStatus, message: String) -> Progress {
        tracing::warn!(peer = %self.peer, ?status, "handshake refused: {message}");
        self.respond(status, None, 0, message);
        self.state = State::Closed;
        Progress::Close
    }

    fn poll_control(&mut self) -> Progress {
        let State::Control { ticket } = &self.state else { return Progress::Ready };
        let Some(r) = ticket.poll() else { return Progress::Blocked };
        self.respond(HandshakeStatus::Ok, None, 0, String::new());
        self.send(&ServerMessage::Control(r));
        self.state = State::Closed;
        Progress::Close
    }

    fn handshake(&mut self, mut req: crate::wire::HandshakeRequest) -> Progress {
        if req.version != PROTOCOL_VERSION {
            return self.handshake_fail(
                HandshakeStatus::BadVersion,
                format!("protocol version {} is not supported; this server speaks {PROTOCOL_VERSION}", req.version),
            );
        }
        if !self.limits.auth.allows(&req.token) {
            return self.handshake_fail(HandshakeStatus::Unauthorized, "missing or wrong auth token".into());
        }
        let kind = std::mem::take(&mut req.kind);
        if let RequestKind::Control(c) = kind {
            if let Some(vdisk) = c.vdisks().into_iter().find(|v| !crate::flush::valid_vdisk_id(v)) {
                return self.handshake_fail(HandshakeStatus::BadVdisk, format!("vdisk id {vdisk:?} is invalid: 1 to 128 characters of A-Z a-z 0-9 . _ -"));
            }
            self.state = State::Control { ticket: self.core.control(c) };
            return self.poll_control();
        }
        if !crate::flush::valid_vdisk_id(&req.vdisk_id) {
            return self.handshake_fail(HandshakeStatus::BadVdisk, format!("vdisk id {:?} is invalid: 1 to 128 characters of A-Z a-z 0-9 . _ -", req.vdisk_id));
        }
        if let RequestKind::Playback(p) = kind {
            let chunks = (self.limits.playback_buffer_bytes as usize / crate::history::playback::CHUNK_BYTES).max(2);
            let (tx, rx) = crossbeam_channel::bounded(chunks);
            let cancel = Arc::new(AtomicBool::new(false));
            tracing::info!(peer = %self.peer, vdisk = %req.vdisk_id, "playback from {:?} to {:?}{}", p.from, p.to, if p.follow { ", following" } else { "" });
            self.core.playback(&req.vdisk_id, p, tx, cancel.clone());
            self.acks = Some(rx);
            self.respond(HandshakeStatus::Ok, None, 0, String::new());
            self.state = State::Playback { vdisk: req.vdisk_id, cancel };
            return Progress::Ready;
        }
        if let RequestKind::Read(at) = kind {
            let chunks = (self.limits.playback_buffer_bytes as usize / crate::history::playback::CHUNK_BYTES).max(2);
            let (tx, rx) = crossbeam_channel::bounded(chunks);
            let (rtx, rrx) = crossbeam_channel::bounded(1024);
            let cancel = Arc::new(AtomicBool::new(false));
            tracing::info!(peer = %self.peer, vdisk = %req.vdisk_id, "read connection at {at:?}");
            self.core.read(&req.vdisk_id, at, rrx, tx, cancel.clone());
            self.acks = Some(rx);
            self.respond(HandshakeStatus::Ok, None, 0, String::new());
            self.state = State::Read { vdisk: req.vdisk_id, cancel, requests: rtx };
            return Progress::Ready;
        }
        let (sink, acks) = crossbeam_channel::unbounded();
        self.sink = Some(sink.clone());
        self.acks = Some(acks);
        let ar = AttachRequest {
            vdisk: req.vdisk_id.clone(),
            first_sequence: req.first_sequence,
            reset_first_sequence: req.reset_first_sequence,
            resume_epoch: req.resume_epoch,
        };
        let ticket = self.core.attach(ar, sink);
        self.state = State::Attaching { ticket, vdisk: req.vdisk_id };
        self.poll_attach()
    }

    /// Checks the attach's ticket; answers the handshake when it is done.
    fn poll_attach(&mut self) -> Progress {
        let State::Attaching { ticket, vdisk } = &self.state else { return Progress::Ready };
        let Some(r) = ticket.poll() else { return Progress::Blocked };
        let vdisk = vdisk.clone();
        match r {
            Ok(a) => {
                tracing::info!(peer = %self.peer, vdisk = %vdisk, epoch = a.epoch, last_flushed = ?a.last_flushed, "attached");
                self.respond(HandshakeStatus::Ok, a.last_flushed, a.epoch, String::new());
                self.state = State::Attached { handle: a.handle, epoch: a.epoch, vdisk };
                Progress::Ready
            }
            Err(e) => {
                let status = match e {
                    AttachError::WouldReuse { .. } => HandshakeStatus::BadRequest,
                    AttachError::Fenced { .. } => HandshakeStatus::Fenced,
                    AttachError::ShuttingDown | AttachError::Busy(_) | AttachError::Storage(_) => HandshakeStatus::InternalError,
                };
                self.handshake_fail(status, format!("vdisk {vdisk}: {e}"))
            }
        }
    }

    fn process(&mut self) -> Progress {
        if matches!(self.state, State::Attaching { .. }) {
            if let Progress::Blocked = self.poll_attach() {
                return Progress::Blocked;
            }
        }
        if matches!(self.state, State::Control { .. }) {
            return self.poll_control();
        }
        if matches!(self.state, State::Playback { .. }) {
            // A playback's client sends nothing more; whatever it sends is ignored.
            while let Ok(Some(_)) = self.decoder.next_frame_ref() {}
            return Progress::Ready;
        }
        if let State::Read { requests, .. } = &self.state {
            // A read connection's client sends fetches (and a goodbye); anything else is ignored.
            loop {
                let m = match self.decoder.next_frame_ref() {
                    Ok(Some(f)) => crate::wire::decode_client_message(f),
                    Ok(None) => return Progress::Ready,
                    Err(e) => return self.fatal(ErrorCode::BadMessage, e.to_string()),
                };
                match m {
                    Ok(ClientMessage::Fetch(i)) => {
                        if requests.send(i).is_err() {
                            self.detach();
                            return Progress::Close;
                        }
                    }
                    Ok(ClientMessage::Disconnect) => {
                        self.detach();
                        return Progress::Close;
                    }
                    Ok(_) | Err(_) => {}
                }
            }
        }
        if matches!(self.state, State::Closed) {
            return Progress::Close;
        }
        if let Some(b) = self.stalled.take() {
            if let Progress::Blocked = self.offer(b) {
                return Progress::Blocked;
            }
        }
        loop {
            if matches!(self.state, State::Closed) {
                return Progress::Close;
            }
            // Decoded in place from the receive buffer; the message owns only its block data.
            let core = &self.core;
            let handshaking = matches!(self.state, State::Handshake);
            let decoded = match self.decoder.next_frame_ref() {
                Ok(Some(f)) if handshaking => Decoded::Handshake(decode_handshake_request(f)),
                Ok(Some(f)) => Decoded::Message(decode_client_message_with(f, &mut |d: &[u8]| core.copy_data(d))),
                Ok(None) => break,
                Err(e) => Decoded::Broken(e),
            };
            let msg = match decoded {
                Decoded::Broken(Error::FrameTooLarge { size, limit }) => {
                    return self.fatal(ErrorCode::TooLarge, format!("frame of {size} bytes exceeds the limit of {limit} bytes (server.max_frame_bytes)"));
                }
                Decoded::Broken(e) => return self.fatal(ErrorCode::BadMessage, e.to_string()),
                Decoded::Handshake(Err(e)) => return self.handshake_fail(HandshakeStatus::BadRequest, format!("handshake does not decode: {e}")),
                Decoded::Handshake(Ok(req)) => match self.handshake(req) {
                    Progress::Ready => continue,
                    p => return p,
                },
                Decoded::Message(Ok(m)) => m,
                Decoded::Message(Err(e)) => {
                    self.error(ErrorCode::BadMessage, 0, 0, format!("message does not decode: {e}"));
                    continue;
                }
            };
            match msg {
                ClientMessage::Block(b) => {
                    if let Progress::Blocked = self.offer(b) {
                        return Progress::Blocked;
                    }
                }
                ClientMessage::ForceFlush => {
                    self.flush_runs();
                    if let State::Attached { handle, .. } = &self.state {
                        self.core.force_flush(handle);
                    }
                    self.send(&ServerMessage::ForceFlushReceived);
                }
                ClientMessage::Fetch(_) => {
                    self.error(ErrorCode::BadMessage, 0, 0, "fetch is for read connections".into());
                }
                ClientMessage::Disconnect => {
                    self.flush_runs();
                    if let State::Attached { handle, .. } = &self.state {
                        self.core.force_flush(handle);
                    }
                    self.detach();
                    return Progress::Close;
                }
            }
        }
        self.flush_runs();
        Progress::Ready
    }

    /// Validates and offers one block.
    fn offer(&mut self, b: Block) -> Progress {
        let lim = &self.limits;
        let Some(op) = Operation::from_ordinal(b.operation) else {
            self.error(ErrorCode::UnknownOperation, b.sequence, 0, format!("block {}: unknown operation {}", b.sequence, b.operation));
            return Progress::Ready;
        };
        if b.size > lim.max_block_bytes {
            let m = format!("block {}: size {} exceeds the limit of {} bytes (server.max_block_bytes)", b.sequence, b.size, lim.max_block_bytes);
            self.error(ErrorCode::TooLarge, b.sequence, 0, m);
            return Progress::Ready;
        }
        let size_ok = match op {
            Operation::Write => b.data.len() as u64 == b.size && b.size > 0,
            Operation::WriteZeroes => b.data.is_empty() && b.size > 0,
        };
        if !size_ok {
            self.error(ErrorCode::BadSize, b.sequence, 0, format!("block {}: size {} does not fit {} data bytes for {op:?}", b.sequence, b.size, b.data.len()));
            return Progress::Ready;
        }
        let end = b.lba.checked_mul(SECTOR).and_then(|s| s.checked_add(b.size));
        if end.map(|e| e > lim.max_vdisk_bytes).unwrap_or(true) {
            let m = format!(
                "block {}: lba {} * 512 + size {} lies past the largest vdisk, {} bytes (server.max_vdisk_bytes)",
                b.sequence, b.lba, b.size, lim.max_vdisk_bytes
            );
            self.error(ErrorCode::OutOfRange, b.sequence, 0, m);
            return Progress::Ready;
        }
        if blake3::hash(&b.data).as_bytes() != &b.hash {
            self.error(ErrorCode::BadHash, b.sequence, 0, format!("block {}: hash does not match the data (BLAKE3)", b.sequence));
            return Progress::Ready;
        }
        let State::Attached { handle, epoch, vdisk } = &self.state else {
            self.error(ErrorCode::NotAttached, b.sequence, 0, "no handshake yet".into());
            return Progress::Ready;
        };
        let (epoch, seq) = (*epoch, b.sequence);
        match self.core.push(handle, epoch, b) {
            Push::Received { .. } => Self::note(&mut self.received, &mut self.out, seq, false),
            Push::Duplicate { flushed } => {
                Self::note(&mut self.received, &mut self.out, seq, false);
                if flushed {
                    Self::note(&mut self.flushed, &mut self.out, seq, true);
                }
            }
            Push::OutOfOrder { expected } => self.error(ErrorCode::OutOfOrder, seq, expected, format!("block {seq} out of order: expected {expected}")),
            Push::Exhausted => {
                let m =
                    format!("block {seq}: the sequence space of vdisk {vdisk} is exhausted (sequence 18446744073709551615 was taken); sequences never wrap");
                self.error(ErrorCode::SequenceExhausted, seq, 0, m);
            }
            Push::Full(back) => {
                self.flush_runs();
                self.stalled = Some(back);
                return Progress::Blocked;
            }
            Push::Fenced => {
                let m = format!("vdisk {vdisk} was taken over by a newer connection (epoch {epoch} is fenced)");
                self.error(ErrorCode::Fenced, seq, 0, m);
                self.detach();
                return Progress::Close;
            }
        }
        Progress::Ready
    }

    /// Lets go of the vdisk (the connection ends); stops a playback.
    pub fn detach(&mut self) {
        match std::mem::replace(&mut self.state, State::Closed) {
            State::Attached { handle, epoch, .. } => self.core.detach(&handle, epoch),
            State::Playback { cancel, .. } | State::Read { cancel, .. } => cancel.store(true, Ordering::SeqCst),
            _ => {}
        }
    }
}

impl<C: Core> Protocol for Session<C> {
    fn receive_buffer(&mut self, min: usize) -> &mut [u8] {
        self.decoder.receive_buffer(min)
    }

    fn on_received(&mut self, n: usize) -> Progress {
        if matches!(self.state, State::Closed) {
            return Progress::Close;
        }
        self.decoder.commit(n);
        self.process()
    }

    fn resume(&mut self) -> Progress {
        if matches!(self.state, State::Closed) {
            return Progress::Close;
        }
        self.process()
    }

    fn take_output(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.out)
    }

    fn has_output(&self) -> bool {
        !self.out.is_empty()
    }

    fn take_acks(&mut self) -> Option<Receiver<Ack>> {
        self.acks.take()
    }

    fn wait(&self, timeout: Duration) {
        self.core.wait_space(timeout);
    }

    fn attached(&self) -> bool {
        matches!(self.state, State::Attached { .. } | State::Playback { .. } | State::Read { .. } | State::Control { .. })
    }

    fn expects_input(&self) -> bool {
        matches!(self.state, State::Attached { .. })
    }

    fn close(&mut self) {
        self.detach();
    }
}

impl<C: Core> Drop for Session<C> {
    fn drop(&mut self) {
        self.limits.connections.fetch_sub(1, Ordering::Relaxed);
        self.detach();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flush::Attached;
    use crate::wire::{decode_handshake_response, decode_server_message, encode_client_message, encode_handshake_request, ControlRequest, HandshakeRequest};
    use std::sync::Mutex;

    /// A core that takes every block in order (or refuses as told) and records calls.
    #[derive(Default)]
    struct Fake {
        pushed: Mutex<Vec<u64>>,
        full_once: Mutex<bool>,
        pending_attach: Mutex<Option<AttachTicket<u8>>>,
        hold_attach: bool,
        detached: Mutex<Vec<u64>>,
    }

    impl Core for Fake {
        type Handle = u8;
        fn attach(&self, req: AttachRequest, _sink: AckSink) -> AttachTicket<u8> {
            let r = if req.reset_first_sequence && req.first_sequence < 10 {
                Err(AttachError::WouldReuse { requested: req.first_sequence, last: 9 })
            } else {
                Ok(Attached { handle: 7, epoch: 3, last_flushed: Some(9), next_sequence: Some(10) })
            };
            if self.hold_attach {
                let t = AttachTicket::default();
                *self.pending_attach.lock().unwrap() = Some(t.clone());
                return t;
            }
            AttachTicket::ready(r)
        }
        fn push(&self, _h: &u8, epoch: u64, block: Block) -> Push {
            assert_eq!(epoch, 3);
            let mut f = self.full_once.lock().unwrap();
            if *f {
                *f = false;
                return Push::Full(block);
            }
            let mut p = self.pushed.lock().unwrap();
            let next = p.last().map(|l| l + 1).unwrap_or(10);
            if block.sequence < next {
                return Push::Duplicate { flushed: true };
            }
            if block.sequence > next {
                return Push::OutOfOrder { expected: next };
            }
            p.push(block.sequence);
            Push::Received { rotated: false }
        }
        fn force_flush(&self, _h: &u8) {}
        fn detach(&self, _h: &u8, epoch: u64) {
            self.detached.lock().unwrap().push(epoch);
        }
        fn wait_space(&self, _t: Duration) {}
        fn copy_data(&self, d: &[u8]) -> Vec<u8> {
            d.to_vec()
        }
        fn control(&self, req: ControlRequest) -> Ticket<ControlResponse> {
            Ticket::ready(match req {
                ControlRequest::History { vdisk } => ControlResponse::History(format!("{{\"vdisk\":\"{vdisk}\"}}")),
                _ => ControlResponse::Error("not here".into()),
            })
        }
        fn playback(&self, _vdisk: &str, _req: crate::wire::PlaybackRequest, out: crossbeam_channel::Sender<Ack>, _cancel: Arc<AtomicBool>) {
            let _ = out.send(Ack::Frames(encode_server_message(&ServerMessage::PlaybackEnd(Some(3)))));
        }
        fn read(
            &self,
            _vdisk: &str,
            _at: crate::wire::PointSpec,
            requests: crossbeam_channel::Receiver<u32>,
            out: crossbeam_channel::Sender<Ack>,
            _c: Arc<AtomicBool>,
        ) {
            let _ = out.send(Ack::Frames(encode_server_message(&ServerMessage::Index { entries: Vec::new(), count: 0, done: true })));
            // Each fetch is answered with its position as the end's sequence.
            std::thread::spawn(move || {
                for i in requests {
                    let _ = out.send(Ack::Frames(encode_server_message(&ServerMessage::PlaybackEnd(Some(i as u64)))));
                }
            });
        }
    }

    fn limits(auth: Auth) -> Arc<SessionLimits> {
        Arc::new(SessionLimits {
            max_frame_bytes: 1 << 20,
            max_block_bytes: 65536,
            max_vdisk_bytes: 1 << 30,
            playback_buffer_bytes: 4 << 20,
            auth,
            connections: Default::default(),
        })
    }

    fn hs(version: u32, vdisk: &str, token: &str) -> Vec<u8> {
        encode_handshake_request(&HandshakeRequest {
            version,
            vdisk_id: vdisk.into(),
            first_sequence: 1,
            token: token.into(),
            reset_first_sequence: false,
            resume_epoch: 0,
            kind: Default::default(),
        })
    }

    fn frames(bytes: &[u8]) -> Vec<crate::wire::Frame> {
        let mut d = FrameDecoder::new(1 << 20);
        d.push(bytes);
        std::iter::from_fn(|| d.next_frame().unwrap()).collect()
    }

    fn blk(seq: u64, lba: u64) -> Vec<u8> {
        encode_client_message(&ClientMessage::Block(Block::new(seq, lba, Operation::Write, vec![1; 512], 512, 0)))
    }

    fn attached(core: Arc<Fake>) -> Session<Fake> {
        let mut s = Session::new(core, limits(Auth::none()), "t".into());
        assert_eq!(s.on_bytes(&hs(PROTOCOL_VERSION, "vd", "")), Progress::Ready);
        let f = frames(&s.take_output());
        let r = decode_handshake_response(&f[0]).unwrap();
        assert_eq!((r.status, r.last_flushed_sequence, r.has_flushed), (HandshakeStatus::Ok, 9, true));
        s
    }

    #[test]
    fn handshake_checks_version_vdisk_and_token() {
        let core = Arc::new(Fake::default());
        let auth = Auth::tokens(["s3cret"]);
        for (req, want) in [
            (hs(9, "vd", "s3cret"), HandshakeStatus::BadVersion),
            (hs(PROTOCOL_VERSION, "../x", "s3cret"), HandshakeStatus::BadVdisk),
            (hs(PROTOCOL_VERSION, "vd", "wrong"), HandshakeStatus::Unauthorized),
            (hs(PROTOCOL_VERSION, "vd", ""), HandshakeStatus::Unauthorized),
            (hs(PROTOCOL_VERSION, "vd", "s3cret"), HandshakeStatus::Ok),
        ] {
            let mut s = Session::new(core.clone(), limits(auth.clone()), "t".into());
            let p = s.on_bytes(&req);
            let r = decode_handshake_response(&frames(&s.take_output())[0]).unwrap();
            assert_eq!(r.status, want, "{}", r.message);
            assert_eq!(p == Progress::Close, want != HandshakeStatus::Ok);
        }
        let reset = encode_handshake_request(&HandshakeRequest {
            version: PROTOCOL_VERSION,
            vdisk_id: "vd".into(),
            first_sequence: 3,
            token: String::new(),
            reset_first_sequence: true,
            resume_epoch: 0,
            kind: Default::default(),
        });
        let mut s = Session::new(core, limits(Auth::none()), "t".into());
        assert_eq!(s.on_bytes(&reset), Progress::Close);
        let r = decode_handshake_response(&frames(&s.take_output())[0]).unwrap();
        assert_eq!(r.status, HandshakeStatus::BadRequest);
        assert!(r.message.contains("reuse") && r.message.contains("9"), "{}", r.message);
    }

    #[test]
    fn a_slow_attach_blocks_then_answers() {
        let core = Arc::new(Fake { hold_attach: true, ..Default::default() });
        let mut s = Session::new(core.clone(), limits(Auth::none()), "t".into());
        let mut input = hs(PROTOCOL_VERSION, "vd", "");
        input.extend(blk(10, 0));
        assert_eq!(s.on_bytes(&input), Progress::Blocked);
        assert!(!s.has_output() && !s.attached());
        assert_eq!(s.resume(), Progress::Blocked);
        core.pending_attach.lock().unwrap().take().unwrap().finish(Ok(Attached { handle: 7, epoch: 3, last_flushed: Some(9), next_sequence: Some(10) }));
        assert_eq!(s.resume(), Progress::Ready);
        let f = frames(&s.take_output());
        assert_eq!(decode_handshake_response(&f[0]).unwrap().status, HandshakeStatus::Ok);
        assert_eq!(decode_server_message(&f[1]).unwrap(), ServerMessage::Received(10, 10), "the block sent behind the handshake is taken");
    }

    #[test]
    fn blocks_are_validated_acked_in_ranges_and_held_on_backpressure() {
        let core = Arc::new(Fake::default());
        let mut s = attached(core.clone());
        let mut input = Vec::new();
        for q in 10..14 {
            input.extend(blk(q, q * 8));
        }
        input.extend(blk(20, 0));
        assert_eq!(s.on_bytes(&input), Progress::Ready);
        let msgs: Vec<ServerMessage> = frames(&s.take_output()).iter().map(|f| decode_server_message(f).unwrap()).collect();
        assert_eq!(msgs[0], ServerMessage::Received(10, 13));
        assert!(matches!(&msgs[1], ServerMessage::Error(e) if e.code == ErrorCode::OutOfOrder && e.expected_sequence == 14));
        // Out of range: never offered to the core.
        assert_eq!(s.on_bytes(&blk(14, (1 << 30) / 512)), Progress::Ready);
        let m = decode_server_message(&frames(&s.take_output())[0]).unwrap();
        assert!(matches!(&m, ServerMessage::Error(e) if e.code == ErrorCode::OutOfRange && e.message.contains("max_vdisk_bytes")), "{m:?}");
        assert_eq!(s.on_bytes(&blk(14, u64::MAX / 2)), Progress::Ready);
        assert!(matches!(decode_server_message(&frames(&s.take_output())[0]).unwrap(), ServerMessage::Error(e) if e.code == ErrorCode::OutOfRange));
        assert_eq!(*core.pushed.lock().unwrap(), vec![10, 11, 12, 13]);
        // Backpressure: the block is held and offered again on resume.
        *core.full_once.lock().unwrap() = true;
        assert_eq!(s.on_bytes(&blk(14, 0)), Progress::Blocked);
        assert_eq!(s.resume(), Progress::Ready);
        assert_eq!(decode_server_message(&frames(&s.take_output())[0]).unwrap(), ServerMessage::Received(14, 14));
        s.close();
        assert_eq!(*core.detached.lock().unwrap(), vec![3]);
    }

    #[test]
    fn control_and_playback_connections_do_not_attach() {
        let core = Arc::new(Fake::default());
        let ctl = encode_handshake_request(&HandshakeRequest {
            version: PROTOCOL_VERSION,
            kind: RequestKind::Control(ControlRequest::History { vdisk: "vd".into() }),
            ..Default::default()
        });
        let mut s = Session::new(core.clone(), limits(Auth::none()), "t".into());
        assert_eq!(s.on_bytes(&ctl), Progress::Close);
        let f = frames(&s.take_output());
        assert_eq!(decode_handshake_response(&f[0]).unwrap().status, HandshakeStatus::Ok);
        assert_eq!(decode_server_message(&f[1]).unwrap(), ServerMessage::Control(ControlResponse::History("{\"vdisk\":\"vd\"}".into())));
        let pb = encode_handshake_request(&HandshakeRequest {
            version: PROTOCOL_VERSION,
            vdisk_id: "vd".into(),
            kind: RequestKind::Playback(Default::default()),
            ..Default::default()
        });
        let mut s = Session::new(core, limits(Auth::none()), "t".into());
        assert_eq!(s.on_bytes(&pb), Progress::Ready);
        assert!(s.attached() && !s.expects_input());
        let rx = s.take_acks().unwrap();
        assert_eq!(decode_server_message(&frames(&encode_ack(&rx.recv().unwrap()))[0]).unwrap(), ServerMessage::PlaybackEnd(Some(3)));
    }

    #[test]
    fn acks_encode_as_the_client_reads_them() {
        let f = |a: Ack| decode_server_message(&frames(&encode_ack(&a))[0]).unwrap();
        assert_eq!(f(Ack::Flushed { first: 1, last: 5 }), ServerMessage::Flushed(1, 5));
        assert!(matches!(f(Ack::Fenced { by: 4 }), ServerMessage::Error(e) if e.code == ErrorCode::Fenced && e.message.contains("epoch 4")));
        assert!(
            matches!(f(Ack::Waiting { reason: "disk full".into() }), ServerMessage::Notice(n) if n.kind == NoticeKind::Waiting && n.message == "disk full")
        );
        assert!(matches!(f(Ack::Resumed), ServerMessage::Notice(n) if n.kind == NoticeKind::Resumed));
    }

    #[test]
    fn auth_compares_hashes_and_refuses_empty_tokens() {
        assert!(Auth::none().allows("") && !Auth::none().required());
        let a = Auth::tokens(["a", "", "b"]);
        assert!(a.required() && a.allows("a") && a.allows("b") && !a.allows("") && !a.allows("ab"));
    }
}
