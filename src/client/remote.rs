//! Reading from a running tlogd: playback streams (a vdisk's blocks between two points, and
//! with follow, as they are flushed), read connections (a vdisk as of a point, its aggregations
//! fetched on demand: [`LogReader`]) and control requests (checkpoints, history summaries).
//! One connection each; the handshake says which.

use crate::error::{Error, IoContext, Refusal, Result};
use crate::history::index::IndexEntry;
use crate::wire::{
    decode_handshake_response, decode_server_message, encode_handshake_request, Block, ControlRequest, ControlResponse, ErrorCode, FrameDecoder,
    HandshakeRequest, HandshakeStatus, PlaybackRequest, PointSpec, RequestKind, ServerMessage, PROTOCOL_VERSION,
};
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

/// Frames larger than this are refused (a block is at most 4 MiB plus framing).
const MAX_FRAME: usize = 16 << 20;

fn connect(server: &str, timeout: Duration) -> Result<TcpStream> {
    let addr = server.to_socket_addrs().ctx(|| format!("resolve {server}"))?.next().ok_or_else(|| Error::NotFound(format!("address {server}")))?;
    let s = TcpStream::connect_timeout(&addr, timeout).map_err(|e| Error::io(format!("connect to tlogd at {server}"), e))?;
    s.set_nodelay(true).ctx(|| "set nodelay".into())?;
    Ok(s)
}

struct Conn {
    s: TcpStream,
    dec: FrameDecoder,
    buf: Vec<u8>,
}

impl Conn {
    fn open(server: &str, token: &str, vdisk: &str, kind: RequestKind, read_timeout: Option<Duration>) -> Result<Conn> {
        let mut s = connect(server, Duration::from_secs(5))?;
        s.set_read_timeout(read_timeout).ctx(|| "set read timeout".into())?;
        let req = HandshakeRequest { version: PROTOCOL_VERSION, vdisk_id: vdisk.into(), token: token.into(), kind, ..Default::default() };
        s.write_all(&encode_handshake_request(&req)).ctx(|| format!("send handshake to {server}"))?;
        let mut c = Conn { s, dec: FrameDecoder::new(MAX_FRAME), buf: vec![0u8; 1 << 20] };
        let f = c
            .frame()?
            .ok_or_else(|| Error::io("read from tlogd", std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "closed before the handshake answer")))?;
        let r = decode_handshake_response(&f)?;
        if r.status != HandshakeStatus::Ok {
            let reason = match r.status {
                HandshakeStatus::Unauthorized => Refusal::Unauthorized,
                HandshakeStatus::BadVdisk => Refusal::BadVdisk,
                HandshakeStatus::BadVersion => Refusal::BadVersion,
                HandshakeStatus::InternalError => Refusal::Internal,
                _ => Refusal::BadRequest,
            };
            return Err(Error::Refused { reason, message: r.message });
        }
        Ok(c)
    }

    /// The next frame; `None` at a clean end of the connection.
    fn frame(&mut self) -> Result<Option<crate::wire::Frame>> {
        loop {
            if let Some(f) = self.dec.next_frame()? {
                return Ok(Some(f));
            }
            let n = match self.s.read(&mut self.buf) {
                Ok(0) => return Ok(None),
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Error::io("read from tlogd", e)),
            };
            self.dec.push(&self.buf[..n]);
        }
    }
}

/// Sends one control request and returns the answer. Errors: unreachable, refused (auth), or
/// the request failed on the server ([`Error::Refused`] with its message).
pub fn control(server: &str, token: &str, req: ControlRequest) -> Result<ControlResponse> {
    let mut c = Conn::open(server, token, "", RequestKind::Control(req), Some(Duration::from_secs(120)))?;
    let f = c.frame()?.ok_or_else(|| Error::io("read from tlogd", std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "closed before the answer")))?;
    match decode_server_message(&f)? {
        ServerMessage::Control(ControlResponse::Error(e)) => Err(Error::Refused { reason: Refusal::BadRequest, message: e }),
        ServerMessage::Control(r) => Ok(r),
        other => Err(Error::Protocol(format!("expected a control answer, got {other:?}"))),
    }
}

/// What a playback yields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Item {
    /// The next block of the history.
    Block(Block),
    /// Following: the vdisk's newest flushed sequence (sent when caught up).
    Head(u64),
    /// Nothing more; the last block streamed, if any.
    End(Option<u64>),
}

/// A playback stream from tlogd.
pub struct Playback {
    c: Conn,
    done: bool,
}

impl Playback {
    /// Opens a playback of `vdisk`. Errors: unreachable, refused.
    pub fn open(server: &str, token: &str, vdisk: &str, req: PlaybackRequest) -> Result<Playback> {
        let c = Conn::open(server, token, vdisk, RequestKind::Playback(req), None)?;
        Ok(Playback { c, done: false })
    }

    /// The next item (`None` after the end). Errors: the server's (a bad point: the message says
    /// which range exists), the connection lost.
    pub fn next_item(&mut self) -> Result<Option<Item>> {
        if self.done {
            return Ok(None);
        }
        loop {
            let Some(f) = self.c.frame()? else {
                return Err(Error::io("read from tlogd", std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "playback ended before its end message")));
            };
            return match decode_server_message(&f)? {
                ServerMessage::Block(b) => Ok(Some(Item::Block(b))),
                ServerMessage::Head(h) => Ok(Some(Item::Head(h))),
                ServerMessage::PlaybackEnd(l) => {
                    self.done = true;
                    Ok(Some(Item::End(l)))
                }
                ServerMessage::Error(e) => {
                    self.done = true;
                    let reason = if e.code == ErrorCode::OutOfRange { Refusal::BadRequest } else { Refusal::Internal };
                    Err(Error::Refused { reason, message: e.message })
                }
                _ => continue,
            };
        }
    }
}

/// A read connection: `vdisk` as of a point, with the index of its path up to the point (the
/// last entry cut there) and any aggregation's blocks up to the point fetched on demand. A lost
/// connection is opened again (at the point's sequence, so it serves the same point) and the
/// fetch retried once.
pub struct LogReader {
    server: String,
    token: String,
    vdisk: String,
    at: PointSpec,
    c: Option<Conn>,
    /// The path's index up to the point, oldest first.
    pub entries: Vec<IndexEntry>,
}

impl LogReader {
    /// Opens a read connection of `vdisk` at `at` (none: its newest flushed block) and reads the
    /// index. Errors: unreachable, refused, a bad point (the message names the range).
    pub fn open(server: &str, token: &str, vdisk: &str, at: PointSpec) -> Result<LogReader> {
        let mut r = LogReader { server: server.into(), token: token.into(), vdisk: vdisk.into(), at, c: None, entries: Vec::new() };
        r.entries = r.connect()?;
        // Reconnections serve the same point, whatever is written or checkpointed later.
        if let Some(c) = r.cut() {
            r.at = PointSpec::Sequence(c);
        }
        Ok(r)
    }

    /// The point's sequence (`None`: the vdisk had no block at it).
    pub fn cut(&self) -> Option<u64> {
        self.entries.last().map(|e| e.last_sequence)
    }

    fn connect(&mut self) -> Result<Vec<IndexEntry>> {
        self.c = None;
        let mut c = Conn::open(&self.server, &self.token, &self.vdisk, RequestKind::Read(self.at.clone()), Some(Duration::from_secs(120)))?;
        let mut entries = Vec::new();
        loop {
            let Some(f) = c.frame()? else {
                return Err(Error::io("read from tlogd", std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "closed inside the index")));
            };
            match decode_server_message(&f)? {
                ServerMessage::Index { entries: bytes, count, done } => {
                    let mut r = crate::bytes::Reader::new(&bytes);
                    for _ in 0..count {
                        entries.push(IndexEntry::parse(&mut r).ok_or_else(|| Error::Protocol("read connection: an index entry does not parse".into()))?);
                    }
                    if done {
                        break;
                    }
                }
                ServerMessage::Error(e) => return Err(refusal(e)),
                _ => {}
            }
        }
        self.c = Some(c);
        Ok(entries)
    }

    /// The blocks of the aggregation at position `i` of [`LogReader::entries`], up to the point,
    /// in order. Errors: the server's (a bad position, a fetch that failed), the connection lost
    /// twice.
    pub fn fetch(&mut self, i: u32) -> Result<Vec<crate::wire::Block>> {
        match self.fetch_once(i) {
            Err(Error::Io { .. }) | Err(Error::Protocol(_)) => {
                tracing::info!(vdisk = %self.vdisk, server = %self.server, "read connection lost; opening it again");
                let again = self.connect()?;
                if again.len() != self.entries.len() || again.iter().zip(&self.entries).any(|(a, b)| a.key != b.key) {
                    return Err(Error::Protocol(format!("vdisk {}: the history at the point changed while it was exported", self.vdisk)));
                }
                self.fetch_once(i)
            }
            r => r,
        }
    }

    fn fetch_once(&mut self, i: u32) -> Result<Vec<crate::wire::Block>> {
        let c = match self.c.as_mut() {
            Some(c) => c,
            None => return Err(Error::Protocol("read connection closed".into())),
        };
        let sent = c.s.write_all(&crate::wire::encode_client_message(&crate::wire::ClientMessage::Fetch(i)));
        if let Err(e) = sent {
            self.c = None;
            return Err(Error::io("send a fetch to tlogd", e));
        }
        let mut blocks = Vec::new();
        loop {
            let f = match c.frame() {
                Ok(Some(f)) => f,
                Ok(None) => {
                    self.c = None;
                    return Err(Error::io("read from tlogd", std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "closed inside a fetch")));
                }
                Err(e) => {
                    self.c = None;
                    return Err(e);
                }
            };
            match decode_server_message(&f)? {
                ServerMessage::Block(b) => blocks.push(b),
                ServerMessage::PlaybackEnd(_) => return Ok(blocks),
                ServerMessage::Error(e) => return Err(refusal(e)),
                _ => {}
            }
        }
    }
}

fn refusal(e: crate::wire::ServerError) -> Error {
    let reason = if e.code == ErrorCode::OutOfRange { Refusal::BadRequest } else { Refusal::Internal };
    Error::Refused { reason, message: e.message }
}
