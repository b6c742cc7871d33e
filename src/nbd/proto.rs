//! The NBD wire protocol, server side: the fixed newstyle handshake, option haggling and the
//! transmission phase's requests and replies (simple and structured), as the NetworkBlockDevice
//! project's `doc/proto.md` defines them. All integers are big-endian on the wire. No TLS and
//! no extended headers (`NBD_OPT_STARTTLS` and `NBD_OPT_EXTENDED_HEADERS` are answered
//! `NBD_REP_ERR_UNSUP`; clients go on without them).

use crate::error::{Error, Result};
use std::io::{Read, Write};

/// `NBDMAGIC`, the first 8 bytes a server sends.
pub const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
/// `IHAVEOPT`: the newstyle magic, and the prefix of every option.
pub const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
/// Magic of every option reply.
pub const OPT_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
/// Magic of a transmission request.
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
/// Magic of a simple reply.
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
/// Magic of a structured reply chunk.
pub const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;

/// Handshake flag: fixed newstyle.
pub const FLAG_FIXED_NEWSTYLE: u16 = 1;
/// Handshake flag: no 124 zero bytes after `NBD_OPT_EXPORT_NAME`.
pub const FLAG_NO_ZEROES: u16 = 2;
/// Client flag: fixed newstyle.
pub const FLAG_C_FIXED_NEWSTYLE: u32 = 1;
/// Client flag: no zeroes.
pub const FLAG_C_NO_ZEROES: u32 = 2;

/// Transmission flags (16 bits).
pub mod tx {
    /// Always set.
    pub const HAS_FLAGS: u16 = 1;
    /// The export is read-only.
    pub const READ_ONLY: u16 = 1 << 1;
    /// `NBD_CMD_FLUSH` is supported.
    pub const SEND_FLUSH: u16 = 1 << 2;
    /// `NBD_CMD_FLAG_FUA` is supported.
    pub const SEND_FUA: u16 = 1 << 3;
    /// `NBD_CMD_TRIM` is supported.
    pub const SEND_TRIM: u16 = 1 << 5;
    /// `NBD_CMD_WRITE_ZEROES` is supported.
    pub const SEND_WRITE_ZEROES: u16 = 1 << 6;
    /// Flush and FUA cover every connection.
    pub const CAN_MULTI_CONN: u16 = 1 << 8;
    /// `NBD_CMD_CACHE` is supported.
    pub const SEND_CACHE: u16 = 1 << 10;
    /// `NBD_CMD_FLAG_FAST_ZERO` is supported.
    pub const SEND_FAST_ZERO: u16 = 1 << 11;
}

/// Option types.
pub mod opt {
    /// End haggling, old style.
    pub const EXPORT_NAME: u32 = 1;
    /// End the session.
    pub const ABORT: u32 = 2;
    /// List exports.
    pub const LIST: u32 = 3;
    /// Describe an export.
    pub const INFO: u32 = 6;
    /// Describe an export and enter transmission.
    pub const GO: u32 = 7;
    /// Use structured replies.
    pub const STRUCTURED_REPLY: u32 = 8;
    /// List metadata contexts.
    pub const LIST_META_CONTEXT: u32 = 9;
    /// Select metadata contexts.
    pub const SET_META_CONTEXT: u32 = 10;
}

/// Option reply types.
pub mod rep {
    /// Done.
    pub const ACK: u32 = 1;
    /// An export (answer to `NBD_OPT_LIST`).
    pub const SERVER: u32 = 2;
    /// Information about an export.
    pub const INFO: u32 = 3;
    /// A metadata context.
    pub const META_CONTEXT: u32 = 4;
    /// Unknown option.
    pub const ERR_UNSUP: u32 = (1 << 31) + 1;
    /// Forbidden by policy.
    pub const ERR_POLICY: u32 = (1 << 31) + 2;
    /// Malformed option.
    pub const ERR_INVALID: u32 = (1 << 31) + 3;
    /// No such export.
    pub const ERR_UNKNOWN: u32 = (1 << 31) + 6;
    /// The server is shutting down.
    pub const ERR_SHUTDOWN: u32 = (1 << 31) + 7;
}

/// `NBD_INFO_*` types.
pub mod info {
    /// Size and transmission flags.
    pub const EXPORT: u16 = 0;
    /// Canonical name.
    pub const NAME: u16 = 1;
    /// Description.
    pub const DESCRIPTION: u16 = 2;
    /// Minimum, preferred and maximum block sizes.
    pub const BLOCK_SIZE: u16 = 3;
}

/// Command types.
pub mod cmd {
    /// Read.
    pub const READ: u16 = 0;
    /// Write.
    pub const WRITE: u16 = 1;
    /// Disconnect.
    pub const DISC: u16 = 2;
    /// Flush.
    pub const FLUSH: u16 = 3;
    /// Trim (discard).
    pub const TRIM: u16 = 4;
    /// Prefetch.
    pub const CACHE: u16 = 5;
    /// Write zeroes.
    pub const WRITE_ZEROES: u16 = 6;
    /// Block status.
    pub const BLOCK_STATUS: u16 = 7;
}

/// Command flags.
pub mod cmd_flag {
    /// Force unit access.
    pub const FUA: u16 = 1;
    /// Write zeroes without punching a hole.
    pub const NO_HOLE: u16 = 1 << 1;
    /// Do not fragment the read reply.
    pub const DF: u16 = 1 << 2;
    /// One extent only (block status).
    pub const REQ_ONE: u16 = 1 << 3;
    /// Fail write zeroes unless it is fast.
    pub const FAST_ZERO: u16 = 1 << 4;
}

/// Structured reply chunk types and the done flag.
pub mod chunk {
    /// The last chunk of a reply.
    pub const FLAG_DONE: u16 = 1;
    /// No payload.
    pub const NONE: u16 = 0;
    /// Data at an offset.
    pub const OFFSET_DATA: u16 = 1;
    /// A hole at an offset (reads as zeroes).
    pub const OFFSET_HOLE: u16 = 2;
    /// Block status extents of one context.
    pub const BLOCK_STATUS: u16 = 5;
    /// An error.
    pub const ERROR: u16 = (1 << 15) + 1;
}

/// Error values.
pub mod errno {
    /// Not permitted (a write to a read-only export).
    pub const EPERM: u32 = 1;
    /// I/O error.
    pub const EIO: u32 = 5;
    /// Invalid argument.
    pub const EINVAL: u32 = 22;
    /// No space.
    pub const ENOSPC: u32 = 28;
    /// Too large.
    pub const EOVERFLOW: u32 = 75;
    /// Not supported.
    pub const ENOTSUP: u32 = 95;
    /// Shutting down.
    pub const ESHUTDOWN: u32 = 108;
}

/// `base:allocation` state flags.
pub mod state {
    /// Not allocated.
    pub const HOLE: u32 = 1;
    /// Reads as zeroes.
    pub const ZERO: u32 = 2;
}

/// Largest option payload accepted (bytes); a longer one ends the session.
pub const MAX_OPTION_BYTES: u32 = 64 << 10;

fn io(what: &str, e: std::io::Error) -> Error {
    Error::io(format!("nbd: {what}"), e)
}

/// Reads exactly `n` bytes.
pub fn read_exact(r: &mut (impl Read + ?Sized), n: usize, what: &str) -> Result<Vec<u8>> {
    let mut v = vec![0u8; n];
    r.read_exact(&mut v).map_err(|e| io(what, e))?;
    Ok(v)
}

fn be_u16(b: &[u8]) -> u16 {
    u16::from_be_bytes([b[0], b[1]])
}

fn be_u32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

fn be_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_be_bytes(a)
}

/// The server's greeting: `NBDMAGIC`, `IHAVEOPT`, handshake flags (18 bytes).
pub fn greeting() -> Vec<u8> {
    let mut v = Vec::with_capacity(18);
    v.extend_from_slice(&NBDMAGIC.to_be_bytes());
    v.extend_from_slice(&IHAVEOPT.to_be_bytes());
    v.extend_from_slice(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes());
    v
}

/// One option from the client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Opt {
    /// The option type.
    pub kind: u32,
    /// Its payload.
    pub data: Vec<u8>,
}

/// Reads one option. Errors: a bad magic, a payload over [`MAX_OPTION_BYTES`], I/O.
pub fn read_option(r: &mut (impl Read + ?Sized)) -> Result<Opt> {
    let h = read_exact(r, 16, "read option header")?;
    if be_u64(&h) != IHAVEOPT {
        return Err(Error::Protocol(format!("nbd: option without the IHAVEOPT magic ({:#x})", be_u64(&h))));
    }
    let (kind, len) = (be_u32(&h[8..]), be_u32(&h[12..]));
    if len > MAX_OPTION_BYTES {
        return Err(Error::Protocol(format!("nbd: option {kind} of {len} bytes (at most {MAX_OPTION_BYTES})")));
    }
    let data = read_exact(r, len as usize, "read option data")?;
    Ok(Opt { kind, data })
}

/// An option reply.
pub fn option_reply(option: u32, kind: u32, data: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(20 + data.len());
    v.extend_from_slice(&OPT_REPLY_MAGIC.to_be_bytes());
    v.extend_from_slice(&option.to_be_bytes());
    v.extend_from_slice(&kind.to_be_bytes());
    v.extend_from_slice(&(data.len() as u32).to_be_bytes());
    v.extend_from_slice(data);
    v
}

/// An error option reply with a message for a human.
pub fn option_error(option: u32, kind: u32, message: &str) -> Vec<u8> {
    option_reply(option, kind, message.as_bytes())
}

/// A payload reader that names what is short.
pub struct Payload<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Payload<'a> {
    /// Reads `b`.
    pub fn new(b: &'a [u8]) -> Self {
        Payload { b, at: 0 }
    }

    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let s = self.b.get(self.at..self.at.checked_add(n)?)?;
        self.at += n;
        Some(s)
    }

    /// A big-endian u16.
    pub fn u16(&mut self) -> Option<u16> {
        self.take(2).map(be_u16)
    }

    /// A big-endian u32.
    pub fn u32(&mut self) -> Option<u32> {
        self.take(4).map(be_u32)
    }

    /// A string with a 32-bit length.
    pub fn string(&mut self) -> Option<String> {
        let n = self.u32()? as usize;
        self.take(n).map(|s| String::from_utf8_lossy(s).into_owned())
    }

    /// Whether everything was read.
    pub fn done(&self) -> bool {
        self.at == self.b.len()
    }
}

/// `NBD_OPT_INFO` / `NBD_OPT_GO` data: the export name and the information requests.
/// Errors: a malformed payload (answer `NBD_REP_ERR_INVALID`).
pub fn parse_info_request(data: &[u8]) -> Option<(String, Vec<u16>)> {
    let mut p = Payload::new(data);
    let name = p.string()?;
    let n = p.u16()?;
    let reqs = (0..n).map(|_| p.u16()).collect::<Option<Vec<u16>>>()?;
    p.done().then_some((name, reqs))
}

/// `NBD_OPT_LIST_META_CONTEXT` / `NBD_OPT_SET_META_CONTEXT` data: the export name and queries.
pub fn parse_meta_request(data: &[u8]) -> Option<(String, Vec<String>)> {
    let mut p = Payload::new(data);
    let name = p.string()?;
    let n = p.u32()?;
    if n > 1024 {
        return None;
    }
    let qs = (0..n).map(|_| p.string()).collect::<Option<Vec<String>>>()?;
    p.done().then_some((name, qs))
}

/// `NBD_REP_INFO` of type `NBD_INFO_EXPORT`.
pub fn info_export(size: u64, flags: u16) -> Vec<u8> {
    let mut v = info::EXPORT.to_be_bytes().to_vec();
    v.extend_from_slice(&size.to_be_bytes());
    v.extend_from_slice(&flags.to_be_bytes());
    v
}

/// `NBD_REP_INFO` of type `NBD_INFO_BLOCK_SIZE`.
pub fn info_block_size(min: u32, preferred: u32, max: u32) -> Vec<u8> {
    let mut v = info::BLOCK_SIZE.to_be_bytes().to_vec();
    for x in [min, preferred, max] {
        v.extend_from_slice(&x.to_be_bytes());
    }
    v
}

/// `NBD_REP_INFO` of type `NBD_INFO_NAME` or `NBD_INFO_DESCRIPTION`.
pub fn info_text(kind: u16, text: &str) -> Vec<u8> {
    let mut v = kind.to_be_bytes().to_vec();
    v.extend_from_slice(text.as_bytes());
    v
}

/// `NBD_REP_META_CONTEXT`: id and name.
pub fn meta_context(id: u32, name: &str) -> Vec<u8> {
    let mut v = id.to_be_bytes().to_vec();
    v.extend_from_slice(name.as_bytes());
    v
}

/// `NBD_REP_SERVER`: an export's name.
pub fn server_entry(name: &str) -> Vec<u8> {
    let mut v = (name.len() as u32).to_be_bytes().to_vec();
    v.extend_from_slice(name.as_bytes());
    v
}

/// The answer to `NBD_OPT_EXPORT_NAME`: size, flags and, unless the client said no zeroes, 124
/// zero bytes.
pub fn export_name_reply(size: u64, flags: u16, no_zeroes: bool) -> Vec<u8> {
    let mut v = size.to_be_bytes().to_vec();
    v.extend_from_slice(&flags.to_be_bytes());
    if !no_zeroes {
        v.extend_from_slice(&[0u8; 124]);
    }
    v
}

/// A transmission request header (28 bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Request {
    /// Command flags.
    pub flags: u16,
    /// Command type.
    pub kind: u16,
    /// The client's cookie, echoed in the reply.
    pub cookie: u64,
    /// Byte offset.
    pub offset: u64,
    /// Byte length.
    pub length: u32,
}

/// Length of a request header.
pub const REQUEST_BYTES: usize = 28;

/// Decodes a request header. Errors: a bad magic (the session ends: the stream is lost).
pub fn parse_request(h: &[u8; REQUEST_BYTES]) -> Result<Request> {
    if be_u32(h) != REQUEST_MAGIC {
        return Err(Error::Protocol(format!("nbd: request without the request magic ({:#x})", be_u32(h))));
    }
    Ok(Request { flags: be_u16(&h[4..]), kind: be_u16(&h[6..]), cookie: be_u64(&h[8..]), offset: be_u64(&h[16..]), length: be_u32(&h[24..]) })
}

/// Encodes a request header (the client side, for tests and tools).
pub fn encode_request(r: &Request) -> [u8; REQUEST_BYTES] {
    let mut h = [0u8; REQUEST_BYTES];
    h[..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
    h[4..6].copy_from_slice(&r.flags.to_be_bytes());
    h[6..8].copy_from_slice(&r.kind.to_be_bytes());
    h[8..16].copy_from_slice(&r.cookie.to_be_bytes());
    h[16..24].copy_from_slice(&r.offset.to_be_bytes());
    h[24..28].copy_from_slice(&r.length.to_be_bytes());
    h
}

/// A simple reply header (data, for a read, follows).
pub fn simple_reply(error: u32, cookie: u64) -> [u8; 16] {
    let mut v = [0u8; 16];
    v[..4].copy_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
    v[4..8].copy_from_slice(&error.to_be_bytes());
    v[8..16].copy_from_slice(&cookie.to_be_bytes());
    v
}

/// A structured reply chunk header for a payload of `len` bytes.
pub fn chunk_header(flags: u16, kind: u16, cookie: u64, len: u32) -> [u8; 20] {
    let mut v = [0u8; 20];
    v[..4].copy_from_slice(&STRUCTURED_REPLY_MAGIC.to_be_bytes());
    v[4..6].copy_from_slice(&flags.to_be_bytes());
    v[6..8].copy_from_slice(&kind.to_be_bytes());
    v[8..16].copy_from_slice(&cookie.to_be_bytes());
    v[16..20].copy_from_slice(&len.to_be_bytes());
    v
}

/// A structured error chunk (final) with a message.
pub fn error_chunk(cookie: u64, error: u32, message: &str) -> Vec<u8> {
    let m = &message.as_bytes()[..message.len().min(4096)];
    let mut v = chunk_header(chunk::FLAG_DONE, chunk::ERROR, cookie, 6 + m.len() as u32).to_vec();
    v.extend_from_slice(&error.to_be_bytes());
    v.extend_from_slice(&(m.len() as u16).to_be_bytes());
    v.extend_from_slice(m);
    v
}

/// A block status chunk: context id and (length, flags) extents.
pub fn block_status_chunk(cookie: u64, done: bool, context: u32, extents: &[(u32, u32)]) -> Vec<u8> {
    let mut v = chunk_header(if done { chunk::FLAG_DONE } else { 0 }, chunk::BLOCK_STATUS, cookie, 4 + 8 * extents.len() as u32).to_vec();
    v.extend_from_slice(&context.to_be_bytes());
    for (len, flags) in extents {
        v.extend_from_slice(&len.to_be_bytes());
        v.extend_from_slice(&flags.to_be_bytes());
    }
    v
}

/// Writes `bytes`. Errors: I/O.
pub fn send(w: &mut (impl Write + ?Sized), bytes: &[u8], what: &str) -> Result<()> {
    w.write_all(bytes).map_err(|e| io(what, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_and_bad_magic_is_refused() {
        let r = Request { flags: cmd_flag::FUA, kind: cmd::WRITE, cookie: 0xdead_beef_0102_0304, offset: 1 << 40, length: 65536 };
        let h = encode_request(&r);
        assert_eq!(parse_request(&h).unwrap(), r);
        let mut bad = h;
        bad[0] ^= 1;
        assert!(parse_request(&bad).unwrap_err().to_string().contains("magic"));
    }

    #[test]
    fn option_payloads_parse_and_short_ones_do_not() {
        let mut d = Vec::new();
        d.extend_from_slice(&3u32.to_be_bytes());
        d.extend_from_slice(b"vd1");
        d.extend_from_slice(&2u16.to_be_bytes());
        d.extend_from_slice(&info::BLOCK_SIZE.to_be_bytes());
        d.extend_from_slice(&info::NAME.to_be_bytes());
        assert_eq!(parse_info_request(&d), Some(("vd1".to_string(), vec![info::BLOCK_SIZE, info::NAME])));
        assert_eq!(parse_info_request(&d[..d.len() - 1]), None);
        let mut m = Vec::new();
        m.extend_from_slice(&0u32.to_be_bytes());
        m.extend_from_slice(&1u32.to_be_bytes());
        m.extend_from_slice(&15u32.to_be_bytes());
        m.extend_from_slice(b"base:allocation");
        assert_eq!(parse_meta_request(&m), Some((String::new(), vec!["base:allocation".to_string()])));
        assert_eq!(parse_meta_request(&m[..10]), None);
    }

    #[test]
    fn options_with_a_bad_magic_or_too_long_end_the_session() {
        let mut o = IHAVEOPT.to_be_bytes().to_vec();
        o.extend_from_slice(&opt::GO.to_be_bytes());
        o.extend_from_slice(&(MAX_OPTION_BYTES + 1).to_be_bytes());
        assert!(read_option(&mut &o[..]).unwrap_err().to_string().contains("at most"));
        o[0] = 0;
        assert!(read_option(&mut &o[..]).unwrap_err().to_string().contains("IHAVEOPT"));
    }

    #[test]
    fn replies_have_the_documented_layout() {
        assert_eq!(greeting().len(), 18);
        assert_eq!(option_reply(opt::GO, rep::ACK, &[]).len(), 20);
        assert_eq!(info_export(4096, tx::HAS_FLAGS).len(), 12);
        assert_eq!(info_block_size(512, 4096, 1 << 25).len(), 14);
        assert_eq!(export_name_reply(1, 1, false).len(), 134);
        assert_eq!(export_name_reply(1, 1, true).len(), 10);
        assert_eq!(&simple_reply(0, 7)[..4], &SIMPLE_REPLY_MAGIC.to_be_bytes());
        let e = error_chunk(9, errno::EINVAL, "bad");
        assert_eq!(e.len(), 20 + 6 + 3);
        assert_eq!(be_u32(&e[16..]), 9);
        assert_eq!(block_status_chunk(1, true, 1, &[(4096, 0), (8192, 3)]).len(), 20 + 4 + 16);
    }
}
