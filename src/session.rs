//! One connection's state machine, sans-IO: bytes in ([`Session::on_bytes`]), encoded frames
//! out ([`Session::take_output`]). Front-ends own the sockets; the session owns the protocol:
//! handshake, block validation (size, operation, BLAKE3 hash, sequence), received acks
//! (coalesced into ranges), duplicate re-acks, forceFlush, backpressure and fencing.
//!
//! Flushed acks do not pass through the session: the namespace sends them to the connection's
//! [`AckSink`] as aggregations become durable, in sequence order.

use crate::error::Error;
use crate::namespace::{AckSink, Engine, Namespace, Push};
use crate::wire::{
    decode_client_message_with, decode_handshake_request, encode_handshake_response, encode_server_message, Block, ClientMessage, ErrorCode, FrameDecoder,
    HandshakeResponse, HandshakeStatus, Operation, ServerError, ServerMessage, PROTOCOL_VERSION,
};
use std::sync::Arc;

/// What the front-end should do after feeding bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Progress {
    /// Keep reading.
    Ready,
    /// The vdisk's buffers are full: stop reading, wait ([`Engine::wait_space`]) and call
    /// [`Session::resume`].
    Blocked,
    /// Send the pending output, then close the connection.
    Close,
}

/// What one frame decoded to (taken out of the decoder's borrow before acting on it).
enum Decoded {
    Handshake(crate::error::Result<crate::wire::HandshakeRequest>),
    Message(crate::error::Result<ClientMessage>),
    Broken(Error),
}

/// A connection's protocol state.
pub struct Session {
    engine: Arc<Engine>,
    sink: AckSink,
    decoder: FrameDecoder,
    attached: Option<(Arc<Namespace>, u64)>,
    out: Vec<u8>,
    stalled: Option<Block>,
    received: Option<(u64, u64)>,
    flushed: Option<(u64, u64)>,
    closed: bool,
    peer: String,
}

impl Session {
    /// A session for one connection; `sink` receives flushed acks (the front-end drains it to
    /// the same socket as [`Session::take_output`]).
    pub fn new(engine: Arc<Engine>, sink: AckSink, peer: String) -> Session {
        let limit = engine.config().max_frame_bytes;
        Session {
            engine,
            sink,
            decoder: FrameDecoder::new(limit),
            attached: None,
            out: Vec::new(),
            stalled: None,
            received: None,
            flushed: None,
            closed: false,
            peer,
        }
    }

    /// Takes the frames to send.
    pub fn take_output(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.out)
    }

    /// True when output is pending.
    pub fn has_output(&self) -> bool {
        !self.out.is_empty()
    }

    /// The vdisk, once attached.
    pub fn vdisk(&self) -> Option<&str> {
        self.attached.as_ref().map(|(ns, _)| ns.vdisk())
    }

    /// Feeds received bytes; processes every whole frame.
    pub fn on_bytes(&mut self, data: &[u8]) -> Progress {
        if self.closed {
            return Progress::Close;
        }
        self.decoder.push(data);
        self.process()
    }

    /// Space of at least `min` bytes to receive into, inside the session's frame buffer; then
    /// call [`Session::on_received`] with the count written. Same as [`Session::on_bytes`]
    /// without its copy.
    pub fn receive_buffer(&mut self, min: usize) -> &mut [u8] {
        self.decoder.receive_buffer(min)
    }

    /// Processes `n` bytes written into [`Session::receive_buffer`].
    pub fn on_received(&mut self, n: usize) -> Progress {
        if self.closed {
            return Progress::Close;
        }
        self.decoder.commit(n);
        self.process()
    }

    /// Retries after backpressure.
    pub fn resume(&mut self) -> Progress {
        if self.closed {
            return Progress::Close;
        }
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
            Some((_, l)) if *l + 1 == seq => *l = seq,
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
        self.closed = true;
        self.detach();
        Progress::Close
    }

    fn process(&mut self) -> Progress {
        if let Some(b) = self.stalled.take() {
            if let Progress::Blocked = self.offer(b) {
                return Progress::Blocked;
            }
        }
        loop {
            // Decoded in place from the receive buffer; the message owns only its block data.
            let pool = self.engine.buffers();
            let decoded = match self.decoder.next_frame_ref() {
                Ok(Some(f)) if self.attached.is_none() => Decoded::Handshake(decode_handshake_request(f)),
                Ok(Some(f)) => Decoded::Message(decode_client_message_with(f, &mut |d: &[u8]| pool.copy(d))),
                Ok(None) => break,
                Err(e) => Decoded::Broken(e),
            };
            let msg = match decoded {
                Decoded::Broken(Error::FrameTooLarge { size, limit }) => {
                    return self.fatal(ErrorCode::TooLarge, format!("frame of {size} bytes exceeds the limit of {limit} bytes"));
                }
                Decoded::Broken(e) => return self.fatal(ErrorCode::BadMessage, e.to_string()),
                Decoded::Handshake(Err(e)) => return self.handshake_fail(HandshakeStatus::BadRequest, format!("handshake does not decode: {e}")),
                Decoded::Handshake(Ok(req)) => {
                    match self.engine.attach(&req, self.sink.clone()) {
                        Ok(a) => {
                            tracing::info!(peer = %self.peer, vdisk = %req.vdisk_id, epoch = a.epoch, "attached");
                            self.out.extend_from_slice(&encode_handshake_response(&HandshakeResponse {
                                version: PROTOCOL_VERSION,
                                status: HandshakeStatus::Ok,
                                last_flushed_sequence: a.last_flushed.unwrap_or(0),
                                has_flushed: a.last_flushed.is_some(),
                                message: String::new(),
                            }));
                            self.attached = Some((a.ns, a.epoch));
                        }
                        Err((status, msg)) => return self.handshake_fail(status, msg),
                    }
                    continue;
                }
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
                    if self.closed {
                        return Progress::Close;
                    }
                }
                ClientMessage::ForceFlush => {
                    self.flush_runs();
                    if let Some((ns, _)) = &self.attached {
                        self.engine.force_flush(ns);
                    }
                    self.send(&ServerMessage::ForceFlushReceived);
                }
                ClientMessage::Disconnect => {
                    self.flush_runs();
                    if let Some((ns, _)) = &self.attached {
                        self.engine.force_flush(ns);
                    }
                    self.closed = true;
                    return Progress::Close;
                }
            }
        }
        self.flush_runs();
        Progress::Ready
    }

    fn handshake_fail(&mut self, status: HandshakeStatus, message: String) -> Progress {
        tracing::warn!(peer = %self.peer, ?status, "handshake refused: {message}");
        self.out.extend_from_slice(&encode_handshake_response(&HandshakeResponse {
            version: PROTOCOL_VERSION,
            status,
            last_flushed_sequence: 0,
            has_flushed: false,
            message,
        }));
        self.closed = true;
        Progress::Close
    }

    /// Validates and offers one block.
    fn offer(&mut self, b: Block) -> Progress {
        let cfg = self.engine.config();
        let Some(op) = Operation::from_ordinal(b.operation) else {
            self.error(ErrorCode::UnknownOperation, b.sequence, 0, format!("block {}: unknown operation {}", b.sequence, b.operation));
            return Progress::Ready;
        };
        if b.size > cfg.max_block_bytes {
            self.error(ErrorCode::TooLarge, b.sequence, 0, format!("block {}: size {} exceeds the limit of {} bytes", b.sequence, b.size, cfg.max_block_bytes));
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
        if blake3::hash(&b.data).as_bytes() != &b.hash {
            self.error(ErrorCode::BadHash, b.sequence, 0, format!("block {}: hash does not match the data (BLAKE3)", b.sequence));
            return Progress::Ready;
        }
        let Some((ns, epoch)) = self.attached.clone() else {
            self.error(ErrorCode::NotAttached, b.sequence, 0, "no handshake yet".into());
            return Progress::Ready;
        };
        let seq = b.sequence;
        match self.engine.push(&ns, epoch, b) {
            (Push::Received, _) => Self::note(&mut self.received, &mut self.out, seq, false),
            (Push::Duplicate { flushed }, _) => {
                Self::note(&mut self.received, &mut self.out, seq, false);
                if flushed {
                    Self::note(&mut self.flushed, &mut self.out, seq, true);
                }
            }
            (Push::OutOfOrder { expected }, _) => self.error(ErrorCode::OutOfOrder, seq, expected, format!("block {seq} out of order: expected {expected}")),
            (Push::Full, back) => {
                self.flush_runs();
                self.stalled = back;
                return Progress::Blocked;
            }
            (Push::Fenced, _) => {
                self.error(ErrorCode::Fenced, seq, 0, format!("vdisk {} was taken over by a newer connection (epoch {epoch} is fenced)", ns.vdisk()));
                self.closed = true;
                return Progress::Close;
            }
        }
        Progress::Ready
    }

    /// Detaches from the namespace (call when the connection ends).
    pub fn detach(&mut self) {
        if let Some((ns, epoch)) = self.attached.take() {
            self.engine.detach(&ns, epoch);
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.detach();
    }
}
