//! Reading from a running tlogd: playback streams (a vdisk's blocks between two points, and
//! with follow, as they are flushed) and control requests (checkpoints, history summaries).
//! One connection each; the handshake says which.

use crate::error::{Error, IoContext, Refusal, Result};
use crate::wire::{
    decode_handshake_response, decode_server_message, encode_handshake_request, Block, ControlRequest, ControlResponse, ErrorCode, FrameDecoder,
    HandshakeRequest, HandshakeStatus, PlaybackRequest, RequestKind, ServerMessage, PROTOCOL_VERSION,
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
