//! Wire protocol v1 (schema/tlog.capnp): typed messages and their Cap'n Proto encoding.
//!
//! Sans-IO: [`FrameDecoder`] takes bytes and yields whole frames; the `decode_*` functions turn
//! a frame into a typed message and the `encode_*` functions a typed message into a frame.
//! Framing is Cap'n Proto's standard stream framing (segment count − 1 as u32 LE, each segment's
//! size in words as u32 LE, padding to 8 bytes, then the segments).

mod frame;

pub use frame::{Frame, FrameDecoder, FrameRef};

use crate::error::{Error, Result};
use crate::tlog_capnp as schema;
use capnp::message::{Builder, ReaderOptions};

/// Protocol version spoken by this build.
pub const PROTOCOL_VERSION: u32 = 1;
/// Bytes of a BLAKE3-256 hash.
pub const HASH_LEN: usize = 32;
/// Bytes per LBA unit (`lba` counts 512-byte sectors).
pub const SECTOR: u64 = 512;

/// What a block does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation {
    /// Set `data` at byte offset `lba * 512`.
    Write,
    /// Zero `size` bytes at byte offset `lba * 512` (trim); no data.
    WriteZeroes,
}

impl Operation {
    /// The wire ordinal.
    pub fn ordinal(self) -> u16 {
        match self {
            Operation::Write => 0,
            Operation::WriteZeroes => 1,
        }
    }

    /// From the wire ordinal; `None` for unknown operations.
    pub fn from_ordinal(v: u16) -> Option<Self> {
        match v {
            0 => Some(Operation::Write),
            1 => Some(Operation::WriteZeroes),
            _ => None,
        }
    }
}

/// One write of a vdisk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Block {
    /// Per-vdisk sequence, strictly increasing.
    pub sequence: u64,
    /// Logical block address in 512-byte sectors.
    pub lba: u64,
    /// Bytes covered (equals `data.len()` for writes).
    pub size: u64,
    /// BLAKE3-256 of `data`.
    pub hash: [u8; HASH_LEN],
    /// Payload (empty for write_zeroes).
    pub data: Vec<u8>,
    /// Nanoseconds since the Unix epoch.
    pub timestamp: u64,
    /// Wire ordinal of the operation (kept raw so unknown values can be refused by the session).
    pub operation: u16,
}

impl Block {
    /// A block with its hash computed.
    pub fn new(sequence: u64, lba: u64, op: Operation, data: Vec<u8>, size: u64, timestamp: u64) -> Block {
        let hash = *blake3::hash(&data).as_bytes();
        Block { sequence, lba, size, hash, data, timestamp, operation: op.ordinal() }
    }

    /// Bytes this block holds in memory (for buffer accounting).
    pub fn mem_size(&self) -> u64 {
        self.data.len() as u64 + 96
    }
}

/// A point in a vdisk's history, as the protocol carries it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum PointSpec {
    /// None given: the start (as "from") or the head (as "to").
    #[default]
    None,
    /// After the block with this sequence.
    Sequence(u64),
    /// After the last block stamped at or before this time (ns).
    Time(u64),
    /// At this checkpoint.
    Checkpoint(String),
}

/// What a playback connection asks for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PlaybackRequest {
    /// Stream the blocks after this point.
    pub from: PointSpec,
    /// Up to and including the last block of this point.
    pub to: PointSpec,
    /// Then every newly flushed block, exactly once, until the client leaves.
    pub follow: bool,
}

/// The one request of a control connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ControlRequest {
    /// Checkpoint `name` on every vdisk of the group at one instant.
    Checkpoint {
        /// The checkpoint's name.
        name: String,
        /// The consistency group.
        vdisks: Vec<String>,
    },
    /// The history summary of a vdisk.
    History {
        /// The vdisk.
        vdisk: String,
    },
    /// Fork `vdisk` at `at` into the new vdisk `new`.
    Fork {
        /// The parent.
        vdisk: String,
        /// The fork to create.
        new: String,
        /// The fork point (`None`: the parent's newest flushed block).
        at: PointSpec,
    },
    /// Rebase the fork `vdisk` onto its parent `onto` at `at`.
    Rebase {
        /// The fork.
        vdisk: String,
        /// Its parent.
        onto: String,
        /// The parent's point (`None`: its newest flushed block).
        at: PointSpec,
    },
    /// Delete `vdisk` (`force`: even with forks, which keep what they stand on).
    Delete {
        /// The vdisk.
        vdisk: String,
        /// Delete a vdisk that has forks.
        force: bool,
    },
    /// Every vdisk as a tree.
    Tree,
    /// What the engine is doing: its metrics (JSON in [`ControlResponse::Done`]).
    Status,
}

impl ControlRequest {
    /// The vdisk ids the request names.
    pub fn vdisks(&self) -> Vec<&str> {
        match self {
            ControlRequest::Checkpoint { vdisks, .. } => vdisks.iter().map(String::as_str).collect(),
            ControlRequest::History { vdisk } | ControlRequest::Delete { vdisk, .. } => vec![vdisk],
            ControlRequest::Fork { vdisk, new, .. } => vec![vdisk, new],
            ControlRequest::Rebase { vdisk, onto, .. } => vec![vdisk, onto],
            ControlRequest::Tree | ControlRequest::Status => Vec::new(),
        }
    }
}

/// What a connection is for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum RequestKind {
    /// Write blocks of the vdisk.
    #[default]
    Write,
    /// Stream the vdisk's history back.
    Playback(PlaybackRequest),
    /// One control request.
    Control(ControlRequest),
    /// Serve the vdisk as of a point on demand (its index, then aggregations fetched).
    Read(PointSpec),
}

/// A checkpoint taken: where it fell.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct CheckpointMark {
    /// The vdisk.
    pub vdisk: String,
    /// The last sequence it covers (`None`: the vdisk had no block).
    pub sequence: Option<u64>,
    /// When it was taken, ns.
    pub time: u64,
}

/// The answer to a control request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ControlResponse {
    /// The checkpoint's marks, one per vdisk.
    Checkpoint(Vec<CheckpointMark>),
    /// A history summary, JSON.
    History(String),
    /// Why it failed.
    Error(String),
    /// What a fork, rebase, delete or tree request did, JSON.
    Done(String),
}

/// The first message of a connection.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HandshakeRequest {
    /// Protocol version.
    pub version: u32,
    /// The vdisk this connection serves.
    pub vdisk_id: String,
    /// First sequence the client will send.
    pub first_sequence: u64,
    /// Auth token ("" for none).
    pub token: String,
    /// Jump forward to `first_sequence` (refused when the vdisk's history holds it).
    pub reset_first_sequence: bool,
    /// A reconnecting writer's epoch (0 = a new writer): refused with `fenced` when a newer
    /// writer took the vdisk over since.
    pub resume_epoch: u64,
    /// What the connection is for.
    pub kind: RequestKind,
}

/// Handshake outcome.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HandshakeStatus {
    /// Attached.
    Ok,
    /// Malformed request.
    BadRequest,
    /// Unsupported protocol version.
    BadVersion,
    /// Invalid vdisk id.
    BadVdisk,
    /// Wrong or missing token.
    Unauthorized,
    /// Refused because a newer writer owns the vdisk.
    Fenced,
    /// Server-side failure.
    InternalError,
}

/// The server's answer to a handshake.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HandshakeResponse {
    /// Protocol version of the server.
    pub version: u32,
    /// Outcome.
    pub status: HandshakeStatus,
    /// Last flushed sequence (meaningful when `has_flushed`).
    pub last_flushed_sequence: u64,
    /// Whether any block of the vdisk is flushed.
    pub has_flushed: bool,
    /// Human-readable detail.
    pub message: String,
    /// The connection's writer epoch (0 when refused).
    pub epoch: u64,
}

/// Client → server messages after the handshake.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientMessage {
    /// A write.
    Block(Block),
    /// Flush the current buffer now.
    ForceFlush,
    /// Polite goodbye.
    Disconnect,
    /// A read connection: the blocks of the aggregation at this position of the index sent.
    Fetch(u32),
}

/// Server error codes (schema `ErrorCode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorCode {
    /// `hash` is not BLAKE3 of `data`.
    BadHash,
    /// Sequence gap; `expected_sequence` says which comes next.
    OutOfOrder,
    /// Frame or block over its limit.
    TooLarge,
    /// Operation ordinal unknown.
    UnknownOperation,
    /// Undecodable message.
    BadMessage,
    /// The connection was superseded by a newer one for the vdisk.
    Fenced,
    /// A message before the handshake.
    NotAttached,
    /// Server-side failure.
    InternalError,
    /// `size` does not match the data.
    BadSize,
    /// `lba * 512 + size` lies past the largest vdisk (`server.max_vdisk_bytes`).
    OutOfRange,
    /// Sequence 2^64 - 1 was taken: the vdisk's sequence space ends there.
    SequenceExhausted,
}

/// What a [`Notice`] tells.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NoticeKind {
    /// Received blocks cannot be made durable yet (the message says why, e.g. a full disk).
    Waiting,
    /// Durable writes go on again.
    Resumed,
}

/// A server notice: not an error, the state of the durable writes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notice {
    /// Waiting or resumed.
    pub kind: NoticeKind,
    /// Why, for the operator.
    pub message: String,
}

/// An error reported to the client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerError {
    /// The code.
    pub code: ErrorCode,
    /// The offending block's sequence (0 if none).
    pub sequence: u64,
    /// For `OutOfOrder`: the expected sequence.
    pub expected_sequence: u64,
    /// Detail.
    pub message: String,
}

/// Server → client messages after the handshake.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServerMessage {
    /// Blocks `first..=last` are in the server's memory.
    Received(u64, u64),
    /// Blocks `first..=last` are durable.
    Flushed(u64, u64),
    /// The force flush was taken.
    ForceFlushReceived,
    /// An error.
    Error(ServerError),
    /// The state of the durable writes (why flushed acks are late).
    Notice(Notice),
    /// Playback: the next block.
    Block(Block),
    /// Playback: nothing more; the last block streamed, if any.
    PlaybackEnd(Option<u64>),
    /// Playback, follow: the vdisk's newest flushed sequence, sent when caught up.
    Head(u64),
    /// Control: the answer.
    Control(ControlResponse),
    /// Read: `count` index entry bodies, concatenated ([`crate::history::index::IndexEntry::body`]);
    /// `done` on the last part.
    Index {
        /// The bodies.
        entries: Vec<u8>,
        /// How many.
        count: u32,
        /// The last part.
        done: bool,
    },
}

fn to_frame(b: &Builder<capnp::message::HeapAllocator>) -> Vec<u8> {
    capnp::serialize::write_message_to_words(b)
}

fn capnp_err(e: capnp::Error) -> Error {
    Error::Protocol(e.to_string())
}

/// Reader options for a frame of at most `max_bytes`.
pub fn reader_options(max_bytes: usize) -> ReaderOptions {
    let mut o = ReaderOptions::new();
    o.traversal_limit_in_words(Some(max_bytes / 8 + 1024)).nesting_limit(16);
    o
}

/// Encodes a handshake request frame.
pub fn encode_handshake_request(r: &HandshakeRequest) -> Vec<u8> {
    let mut m = Builder::new_default();
    let mut b = m.init_root::<schema::handshake_request::Builder>();
    b.set_version(r.version);
    b.set_vdisk_id(r.vdisk_id.as_str());
    b.set_first_sequence(r.first_sequence);
    b.set_token(r.token.as_str());
    b.set_reset_first_sequence(r.reset_first_sequence);
    b.set_resume_epoch(r.resume_epoch);
    match &r.kind {
        RequestKind::Write => b.set_kind(schema::ConnectionKind::Write),
        RequestKind::Playback(p) => {
            b.set_kind(schema::ConnectionKind::Playback);
            let mut pb = b.reborrow().init_playback();
            write_point(pb.reborrow().init_from(), &p.from);
            write_point(pb.reborrow().init_to(), &p.to);
            pb.set_follow(p.follow);
        }
        RequestKind::Read(p) => {
            b.set_kind(schema::ConnectionKind::Read);
            write_point(b.reborrow().init_read(), p);
        }
        RequestKind::Control(c) => {
            b.set_kind(schema::ConnectionKind::Control);
            let mut cb = b.reborrow().init_control();
            match c {
                ControlRequest::Checkpoint { name, vdisks } => {
                    let mut x = cb.reborrow().init_checkpoint();
                    x.set_name(name.as_str());
                    let mut l = x.init_vdisks(vdisks.len() as u32);
                    for (i, v) in vdisks.iter().enumerate() {
                        l.set(i as u32, v.as_str());
                    }
                }
                ControlRequest::History { vdisk } => cb.set_history(vdisk.as_str()),
                ControlRequest::Fork { vdisk, new, at } => {
                    let mut x = cb.reborrow().init_fork();
                    x.set_vdisk(vdisk.as_str());
                    x.set_new(new.as_str());
                    write_point(x.init_at(), at);
                }
                ControlRequest::Rebase { vdisk, onto, at } => {
                    let mut x = cb.reborrow().init_rebase();
                    x.set_vdisk(vdisk.as_str());
                    x.set_onto(onto.as_str());
                    write_point(x.init_at(), at);
                }
                ControlRequest::Delete { vdisk, force } => {
                    let mut x = cb.reborrow().init_delete();
                    x.set_vdisk(vdisk.as_str());
                    x.set_force(*force);
                }
                ControlRequest::Tree => cb.set_tree(()),
                ControlRequest::Status => cb.set_status(()),
            }
        }
    }
    to_frame(&m)
}

/// Decodes a handshake request frame.
pub fn decode_handshake_request<'a>(f: impl Into<FrameRef<'a>>) -> Result<HandshakeRequest> {
    let m = f.into().reader()?;
    let r = m.get_root::<schema::handshake_request::Reader>().map_err(capnp_err)?;
    Ok(HandshakeRequest {
        version: r.get_version(),
        vdisk_id: r.get_vdisk_id().map_err(capnp_err)?.to_string().map_err(|_| Error::Protocol("vdiskId is not UTF-8".into()))?,
        first_sequence: r.get_first_sequence(),
        token: if r.has_token() {
            r.get_token().map_err(capnp_err)?.to_string().map_err(|_| Error::Protocol("token is not UTF-8".into()))?
        } else {
            String::new()
        },
        reset_first_sequence: r.get_reset_first_sequence(),
        resume_epoch: r.get_resume_epoch(),
        kind: match r.get_kind().map_err(|e| Error::Protocol(format!("unknown connection kind {}", e.0)))? {
            schema::ConnectionKind::Write => RequestKind::Write,
            schema::ConnectionKind::Playback => {
                let p = r.get_playback().map_err(capnp_err)?;
                RequestKind::Playback(PlaybackRequest {
                    from: read_point(p.get_from().map_err(capnp_err)?)?,
                    to: read_point(p.get_to().map_err(capnp_err)?)?,
                    follow: p.get_follow(),
                })
            }
            schema::ConnectionKind::Read => RequestKind::Read(read_point(r.get_read().map_err(capnp_err)?)?),
            schema::ConnectionKind::Control => {
                use schema::control_request::Which;
                let c = r.get_control().map_err(capnp_err)?;
                RequestKind::Control(match c.which().map_err(|e| Error::Protocol(format!("unknown control request {}", e.0)))? {
                    Which::Checkpoint(x) => {
                        let x = x.map_err(capnp_err)?;
                        let vdisks: Result<Vec<String>> = x.get_vdisks().map_err(capnp_err)?.iter().map(|v| text(v.map_err(capnp_err)?)).collect();
                        ControlRequest::Checkpoint { name: text(x.get_name().map_err(capnp_err)?)?, vdisks: vdisks? }
                    }
                    Which::History(v) => ControlRequest::History { vdisk: text(v.map_err(capnp_err)?)? },
                    Which::Fork(x) => {
                        let x = x.map_err(capnp_err)?;
                        ControlRequest::Fork {
                            vdisk: text(x.get_vdisk().map_err(capnp_err)?)?,
                            new: text(x.get_new().map_err(capnp_err)?)?,
                            at: read_point(x.get_at().map_err(capnp_err)?)?,
                        }
                    }
                    Which::Rebase(x) => {
                        let x = x.map_err(capnp_err)?;
                        ControlRequest::Rebase {
                            vdisk: text(x.get_vdisk().map_err(capnp_err)?)?,
                            onto: text(x.get_onto().map_err(capnp_err)?)?,
                            at: read_point(x.get_at().map_err(capnp_err)?)?,
                        }
                    }
                    Which::Delete(x) => {
                        let x = x.map_err(capnp_err)?;
                        ControlRequest::Delete { vdisk: text(x.get_vdisk().map_err(capnp_err)?)?, force: x.get_force() }
                    }
                    Which::Tree(()) => ControlRequest::Tree,
                    Which::Status(()) => ControlRequest::Status,
                })
            }
        },
    })
}

fn text(t: capnp::text::Reader<'_>) -> Result<String> {
    t.to_string().map_err(|_| Error::Protocol("text is not UTF-8".into()))
}

fn write_point(mut b: schema::point::Builder, p: &PointSpec) {
    match p {
        PointSpec::None => b.set_none(()),
        PointSpec::Sequence(s) => b.set_sequence(*s),
        PointSpec::Time(t) => b.set_time(*t),
        PointSpec::Checkpoint(c) => b.set_checkpoint(c.as_str()),
    }
}

fn read_point(r: schema::point::Reader) -> Result<PointSpec> {
    use schema::point::Which;
    Ok(match r.which().map_err(|e| Error::Protocol(format!("unknown point kind {}", e.0)))? {
        Which::None(()) => PointSpec::None,
        Which::Sequence(s) => PointSpec::Sequence(s),
        Which::Time(t) => PointSpec::Time(t),
        Which::Checkpoint(c) => PointSpec::Checkpoint(text(c.map_err(capnp_err)?)?),
    })
}

fn status_to(s: HandshakeStatus) -> schema::HandshakeStatus {
    use schema::HandshakeStatus as S;
    match s {
        HandshakeStatus::Ok => S::Ok,
        HandshakeStatus::BadRequest => S::BadRequest,
        HandshakeStatus::BadVersion => S::BadVersion,
        HandshakeStatus::BadVdisk => S::BadVdisk,
        HandshakeStatus::Unauthorized => S::Unauthorized,
        HandshakeStatus::Fenced => S::Fenced,
        HandshakeStatus::InternalError => S::InternalError,
    }
}

fn status_from(s: schema::HandshakeStatus) -> HandshakeStatus {
    use schema::HandshakeStatus as S;
    match s {
        S::Ok => HandshakeStatus::Ok,
        S::BadRequest => HandshakeStatus::BadRequest,
        S::BadVersion => HandshakeStatus::BadVersion,
        S::BadVdisk => HandshakeStatus::BadVdisk,
        S::Unauthorized => HandshakeStatus::Unauthorized,
        S::Fenced => HandshakeStatus::Fenced,
        S::InternalError => HandshakeStatus::InternalError,
    }
}

/// Encodes a handshake response frame.
pub fn encode_handshake_response(r: &HandshakeResponse) -> Vec<u8> {
    let mut m = Builder::new_default();
    let mut b = m.init_root::<schema::handshake_response::Builder>();
    b.set_version(r.version);
    b.set_status(status_to(r.status));
    b.set_last_flushed_sequence(r.last_flushed_sequence);
    b.set_has_flushed(r.has_flushed);
    b.set_message(r.message.as_str());
    b.set_epoch(r.epoch);
    to_frame(&m)
}

/// Decodes a handshake response frame.
pub fn decode_handshake_response<'a>(f: impl Into<FrameRef<'a>>) -> Result<HandshakeResponse> {
    let m = f.into().reader()?;
    let r = m.get_root::<schema::handshake_response::Reader>().map_err(capnp_err)?;
    Ok(HandshakeResponse {
        version: r.get_version(),
        status: status_from(r.get_status().map_err(|e| Error::Protocol(format!("unknown handshake status {}", e.0)))?),
        last_flushed_sequence: r.get_last_flushed_sequence(),
        has_flushed: r.get_has_flushed(),
        message: r.get_message().map_err(capnp_err)?.to_string().unwrap_or_default(),
        epoch: r.get_epoch(),
    })
}

/// Fills a schema Block from a [`Block`].
pub fn write_block(mut b: schema::block::Builder, x: &Block) {
    b.set_sequence(x.sequence);
    b.set_lba(x.lba);
    b.set_size(x.size);
    b.set_hash(&x.hash);
    b.set_data(&x.data);
    b.set_timestamp(x.timestamp);
    b.set_operation(x.operation);
}

/// Reads a schema Block into a [`Block`] (copies the data). Errors on a hash that is not
/// 32 bytes.
pub fn read_block(r: schema::block::Reader) -> Result<Block> {
    read_block_with(r, &mut |d: &[u8]| d.to_vec())
}

/// [`read_block`] with the data copied by `copy` (which returns an owned copy of its argument,
/// e.g. into a reused buffer).
pub fn read_block_with(r: schema::block::Reader, copy: &mut dyn FnMut(&[u8]) -> Vec<u8>) -> Result<Block> {
    let h = r.get_hash().map_err(capnp_err)?;
    let hash: [u8; HASH_LEN] = h.try_into().map_err(|_| Error::Protocol(format!("block {}: hash of {} bytes, expected 32", r.get_sequence(), h.len())))?;
    Ok(Block {
        sequence: r.get_sequence(),
        lba: r.get_lba(),
        size: r.get_size(),
        hash,
        data: copy(r.get_data().map_err(capnp_err)?),
        timestamp: r.get_timestamp(),
        operation: r.get_operation(),
    })
}

/// Encodes a client message frame.
pub fn encode_client_message(msg: &ClientMessage) -> Vec<u8> {
    let mut m = Builder::new_default();
    let mut b = m.init_root::<schema::client_message::Builder>();
    match msg {
        ClientMessage::Block(x) => write_block(b.init_block(), x),
        ClientMessage::ForceFlush => b.set_force_flush(()),
        ClientMessage::Disconnect => b.set_disconnect(()),
        ClientMessage::Fetch(i) => b.set_fetch(*i),
    }
    to_frame(&m)
}

/// Decodes a client message frame.
pub fn decode_client_message<'a>(f: impl Into<FrameRef<'a>>) -> Result<ClientMessage> {
    decode_client_message_with(f, &mut |d: &[u8]| d.to_vec())
}

/// [`decode_client_message`] with a block's data copied by `copy` (see [`read_block_with`]).
pub fn decode_client_message_with<'a>(f: impl Into<FrameRef<'a>>, copy: &mut dyn FnMut(&[u8]) -> Vec<u8>) -> Result<ClientMessage> {
    let m = f.into().reader()?;
    let r = m.get_root::<schema::client_message::Reader>().map_err(capnp_err)?;
    use schema::client_message::Which;
    match r.which().map_err(|e| Error::Protocol(format!("unknown client message {}", e.0)))? {
        Which::Block(b) => Ok(ClientMessage::Block(read_block_with(b.map_err(capnp_err)?, copy)?)),
        Which::ForceFlush(()) => Ok(ClientMessage::ForceFlush),
        Which::Disconnect(()) => Ok(ClientMessage::Disconnect),
        Which::Fetch(i) => Ok(ClientMessage::Fetch(i)),
    }
}

fn code_to(c: ErrorCode) -> schema::ErrorCode {
    use schema::ErrorCode as E;
    match c {
        ErrorCode::BadHash => E::BadHash,
        ErrorCode::OutOfOrder => E::OutOfOrder,
        ErrorCode::TooLarge => E::TooLarge,
        ErrorCode::UnknownOperation => E::UnknownOperation,
        ErrorCode::BadMessage => E::BadMessage,
        ErrorCode::Fenced => E::Fenced,
        ErrorCode::NotAttached => E::NotAttached,
        ErrorCode::InternalError => E::InternalError,
        ErrorCode::BadSize => E::BadSize,
        ErrorCode::OutOfRange => E::OutOfRange,
        ErrorCode::SequenceExhausted => E::SequenceExhausted,
    }
}

fn code_from(c: schema::ErrorCode) -> ErrorCode {
    use schema::ErrorCode as E;
    match c {
        E::BadHash => ErrorCode::BadHash,
        E::OutOfOrder => ErrorCode::OutOfOrder,
        E::TooLarge => ErrorCode::TooLarge,
        E::UnknownOperation => ErrorCode::UnknownOperation,
        E::BadMessage => ErrorCode::BadMessage,
        E::Fenced => ErrorCode::Fenced,
        E::NotAttached => ErrorCode::NotAttached,
        E::InternalError => ErrorCode::InternalError,
        E::BadSize => ErrorCode::BadSize,
        E::OutOfRange => ErrorCode::OutOfRange,
        E::SequenceExhausted => ErrorCode::SequenceExhausted,
    }
}

/// Encodes a server message frame.
pub fn encode_server_message(msg: &ServerMessage) -> Vec<u8> {
    let mut m = Builder::new_default();
    let mut b = m.init_root::<schema::server_message::Builder>();
    match msg {
        ServerMessage::Received(f, l) => {
            let mut r = b.init_received();
            r.set_first(*f);
            r.set_last(*l);
        }
        ServerMessage::Flushed(f, l) => {
            let mut r = b.init_flushed();
            r.set_first(*f);
            r.set_last(*l);
        }
        ServerMessage::ForceFlushReceived => b.set_force_flush_received(()),
        ServerMessage::Error(e) => {
            let mut r = b.init_error();
            r.set_code(code_to(e.code));
            r.set_sequence(e.sequence);
            r.set_expected_sequence(e.expected_sequence);
            r.set_message(e.message.as_str());
        }
        ServerMessage::Block(x) => write_block(b.init_block(), x),
        ServerMessage::PlaybackEnd(last) => {
            let mut r = b.init_playback_end();
            r.set_last_sequence(last.unwrap_or(0));
            r.set_has_blocks(last.is_some());
        }
        ServerMessage::Head(h) => b.set_head(*h),
        ServerMessage::Control(c) => {
            let mut r = b.init_control();
            match c {
                ControlResponse::Checkpoint(marks) => {
                    let mut l = r.init_checkpoint(marks.len() as u32);
                    for (i, m) in marks.iter().enumerate() {
                        let mut x = l.reborrow().get(i as u32);
                        x.set_vdisk(m.vdisk.as_str());
                        x.set_sequence(m.sequence.unwrap_or(0));
                        x.set_has_blocks(m.sequence.is_some());
                        x.set_time(m.time);
                    }
                }
                ControlResponse::History(j) => r.set_history(j.as_str()),
                ControlResponse::Error(e) => r.set_error(e.as_str()),
                ControlResponse::Done(j) => r.set_done(j.as_str()),
            }
        }
        ServerMessage::Index { entries, count, done } => {
            let mut r = b.init_index();
            r.set_entries(entries);
            r.set_count(*count);
            r.set_done(*done);
        }
        ServerMessage::Notice(n) => {
            let mut r = b.init_notice();
            r.set_kind(match n.kind {
                NoticeKind::Waiting => schema::NoticeKind::Waiting,
                NoticeKind::Resumed => schema::NoticeKind::Resumed,
            });
            r.set_message(n.message.as_str());
        }
    }
    to_frame(&m)
}

/// Decodes a server message frame.
pub fn decode_server_message<'a>(f: impl Into<FrameRef<'a>>) -> Result<ServerMessage> {
    let m = f.into().reader()?;
    let r = m.get_root::<schema::server_message::Reader>().map_err(capnp_err)?;
    use schema::server_message::Which;
    Ok(match r.which().map_err(|e| Error::Protocol(format!("unknown server message {}", e.0)))? {
        Which::Received(x) => {
            let x = x.map_err(capnp_err)?;
            ServerMessage::Received(x.get_first(), x.get_last())
        }
        Which::Flushed(x) => {
            let x = x.map_err(capnp_err)?;
            ServerMessage::Flushed(x.get_first(), x.get_last())
        }
        Which::ForceFlushReceived(()) => ServerMessage::ForceFlushReceived,
        Which::Error(x) => {
            let x = x.map_err(capnp_err)?;
            ServerMessage::Error(ServerError {
                code: code_from(x.get_code().map_err(|e| Error::Protocol(format!("unknown error code {}", e.0)))?),
                sequence: x.get_sequence(),
                expected_sequence: x.get_expected_sequence(),
                message: x.get_message().map_err(capnp_err)?.to_string().unwrap_or_default(),
            })
        }
        Which::Block(x) => ServerMessage::Block(read_block(x.map_err(capnp_err)?)?),
        Which::PlaybackEnd(x) => {
            let x = x.map_err(capnp_err)?;
            ServerMessage::PlaybackEnd(x.get_has_blocks().then(|| x.get_last_sequence()))
        }
        Which::Head(h) => ServerMessage::Head(h),
        Which::Control(x) => {
            use schema::control_response::Which as W;
            let x = x.map_err(capnp_err)?;
            ServerMessage::Control(match x.which().map_err(|e| Error::Protocol(format!("unknown control response {}", e.0)))? {
                W::Checkpoint(l) => {
                    let mut marks = Vec::new();
                    for m in l.map_err(capnp_err)?.iter() {
                        marks.push(CheckpointMark {
                            vdisk: text(m.get_vdisk().map_err(capnp_err)?)?,
                            sequence: m.get_has_blocks().then(|| m.get_sequence()),
                            time: m.get_time(),
                        });
                    }
                    ControlResponse::Checkpoint(marks)
                }
                W::History(j) => ControlResponse::History(text(j.map_err(capnp_err)?)?),
                W::Error(e) => ControlResponse::Error(text(e.map_err(capnp_err)?)?),
                W::Done(j) => ControlResponse::Done(text(j.map_err(capnp_err)?)?),
            })
        }
        Which::Index(x) => {
            let x = x.map_err(capnp_err)?;
            ServerMessage::Index { entries: x.get_entries().map_err(capnp_err)?.to_vec(), count: x.get_count(), done: x.get_done() }
        }
        Which::Notice(x) => {
            let x = x.map_err(capnp_err)?;
            ServerMessage::Notice(Notice {
                kind: match x.get_kind().map_err(|e| Error::Protocol(format!("unknown notice kind {}", e.0)))? {
                    schema::NoticeKind::Waiting => NoticeKind::Waiting,
                    schema::NoticeKind::Resumed => NoticeKind::Resumed,
                },
                message: x.get_message().map_err(capnp_err)?.to_string().unwrap_or_default(),
            })
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one_frame(bytes: &[u8]) -> Frame {
        let mut d = FrameDecoder::new(1 << 20);
        // Feed byte by byte: the decoder must cope with any split.
        for b in bytes {
            d.push(std::slice::from_ref(b));
        }
        let f = d.next_frame().unwrap().unwrap();
        assert!(d.next_frame().unwrap().is_none());
        f
    }

    #[test]
    fn roundtrip_all_messages() {
        let hs = HandshakeRequest {
            version: 1,
            vdisk_id: "vd-1".into(),
            first_sequence: 9,
            token: "t".into(),
            reset_first_sequence: true,
            resume_epoch: 4,
            kind: RequestKind::Write,
        };
        assert_eq!(decode_handshake_request(&one_frame(&encode_handshake_request(&hs))).unwrap(), hs);
        for kind in [
            RequestKind::Playback(PlaybackRequest { from: PointSpec::Checkpoint("a".into()), to: PointSpec::Time(5), follow: true }),
            RequestKind::Playback(PlaybackRequest { from: PointSpec::None, to: PointSpec::Sequence(3), follow: false }),
            RequestKind::Control(ControlRequest::Checkpoint { name: "n".into(), vdisks: vec!["a".into(), "b".into()] }),
            RequestKind::Control(ControlRequest::History { vdisk: "a".into() }),
            RequestKind::Control(ControlRequest::Fork { vdisk: "a".into(), new: "b".into(), at: PointSpec::Sequence(4) }),
            RequestKind::Control(ControlRequest::Rebase { vdisk: "b".into(), onto: "a".into(), at: PointSpec::None }),
            RequestKind::Control(ControlRequest::Delete { vdisk: "b".into(), force: true }),
            RequestKind::Control(ControlRequest::Tree),
            RequestKind::Control(ControlRequest::Status),
            RequestKind::Read(PointSpec::Checkpoint("c".into())),
            RequestKind::Read(PointSpec::None),
        ] {
            let hs = HandshakeRequest { kind, ..hs.clone() };
            assert_eq!(decode_handshake_request(&one_frame(&encode_handshake_request(&hs))).unwrap(), hs);
        }
        let resp =
            HandshakeResponse { version: 1, status: HandshakeStatus::Fenced, last_flushed_sequence: 7, has_flushed: true, message: "m".into(), epoch: 3 };
        assert_eq!(decode_handshake_response(&one_frame(&encode_handshake_response(&resp))).unwrap(), resp);
        let b = Block::new(3, 8, Operation::Write, vec![1, 2, 3], 3, 42);
        for m in [ClientMessage::Block(b), ClientMessage::ForceFlush, ClientMessage::Disconnect, ClientMessage::Fetch(7)] {
            assert_eq!(decode_client_message(&one_frame(&encode_client_message(&m))).unwrap(), m);
        }
        let e = ServerError { code: ErrorCode::OutOfOrder, sequence: 5, expected_sequence: 4, message: "gap".into() };
        let n = ServerMessage::Notice(Notice { kind: NoticeKind::Waiting, message: "disk full".into() });
        let marks = vec![CheckpointMark { vdisk: "a".into(), sequence: Some(4), time: 9 }, CheckpointMark { vdisk: "b".into(), sequence: None, time: 9 }];
        for m in [
            ServerMessage::Received(1, 2),
            ServerMessage::Flushed(3, 4),
            ServerMessage::ForceFlushReceived,
            ServerMessage::Error(e),
            n,
            ServerMessage::Block(Block::new(3, 8, Operation::Write, vec![1, 2], 2, 7)),
            ServerMessage::PlaybackEnd(Some(9)),
            ServerMessage::PlaybackEnd(None),
            ServerMessage::Head(12),
            ServerMessage::Control(ControlResponse::Checkpoint(marks)),
            ServerMessage::Control(ControlResponse::History("{}".into())),
            ServerMessage::Control(ControlResponse::Error("no".into())),
            ServerMessage::Control(ControlResponse::Done("{}".into())),
            ServerMessage::Index { entries: vec![1, 2, 3], count: 1, done: true },
        ] {
            assert_eq!(decode_server_message(&one_frame(&encode_server_message(&m))).unwrap(), m);
        }
    }
}
