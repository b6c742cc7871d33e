//! The crate's one error type.

use std::path::PathBuf;

/// Every error tlog reports. Each case names what is wrong so that a message reaching an
/// operator can be acted on without reading the source.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An I/O operation failed; `context` says what was being done (usually with a path).
    #[error("{context}: {source}")]
    Io {
        /// What was being done, e.g. "open /data/store0/00000000000000000000.data".
        context: String,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// Stored bytes failed a checksum or structural check. `location` names the file (segment)
    /// and offset; the bytes are never returned as data.
    #[error("corrupt data in {location}: {detail}")]
    Corrupt {
        /// Segment or file and offset, e.g. "segment 00000000000000000000 offset 17".
        location: String,
        /// What check failed.
        detail: String,
    },
    /// A file does not carry the expected magic or format version.
    #[error("{path}: {detail}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong with its header.
        detail: String,
    },
    /// The caller asked for something that does not exist (an offset past the end, an unknown
    /// vdisk, a missing key).
    #[error("not found: {0}")]
    NotFound(String),
    /// An argument is out of its allowed range; the message says what is allowed.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The configuration is invalid; the message names the key and what is allowed.
    #[error("configuration: {0}")]
    Config(String),
    /// A wire frame or message could not be decoded.
    #[error("protocol: {0}")]
    Protocol(String),
    /// A frame is larger than the configured limit.
    #[error("frame of {size} bytes exceeds the limit of {limit} bytes")]
    FrameTooLarge {
        /// Announced frame size in bytes.
        size: u64,
        /// The configured limit in bytes.
        limit: u64,
    },
    /// A backend failed (unreachable, refused, I/O); `backend` names it.
    #[error("backend {backend}: {detail}")]
    Backend {
        /// The backend, e.g. "redis 127.0.0.1:16379" or "local /data/store2".
        backend: String,
        /// What went wrong.
        detail: String,
    },
    /// Fewer than the required number of backends stored a shard.
    #[error("write quorum not reached: {stored} of {required} backends stored the shards ({detail})")]
    Quorum {
        /// Backends that stored their shard.
        stored: usize,
        /// Backends required (write_quorum).
        required: usize,
        /// The failures.
        detail: String,
    },
    /// Sealing or unsealing failed: wrong AES key, authentication failure, bad shards.
    #[error("seal: {0}")]
    Seal(String),
    /// Decryption failed because the data was sealed with another key.
    #[error("wrong key: aggregation {key} was sealed with key id {sealed_with}, the configured key has id {configured}")]
    WrongKey {
        /// Aggregation key (hex).
        key: String,
        /// Key id stored in the shard header (hex).
        sealed_with: String,
        /// Key id of the configured AES key (hex).
        configured: String,
    },
    /// The hash chain is broken: an aggregation could not be read or does not link.
    #[error("chain broken at key {key}: {detail}")]
    ChainBroken {
        /// Aggregation key (hex) where the walk stopped.
        key: String,
        /// Why.
        detail: String,
    },
    /// The writer was fenced by a newer epoch of the same vdisk.
    #[error("vdisk {vdisk} is fenced: epoch {epoch} was superseded")]
    Fenced {
        /// The vdisk.
        vdisk: String,
        /// The superseded epoch.
        epoch: u64,
    },
    /// The server refused: a handshake status or an error it sent; `reason` says which kind,
    /// so callers decide (e.g. whether to reconnect) on the value, never on the text.
    #[error("server refused ({reason:?}): {message}")]
    Refused {
        /// The kind of refusal.
        reason: Refusal,
        /// The server's message.
        message: String,
    },
    /// An operation did not finish in its time bound.
    #[error("timed out: {0}")]
    Timeout(String),
    /// The component is shutting down.
    #[error("shutting down")]
    Shutdown,
}

/// Why a server refused a client (the protocol's handshake statuses and error kinds).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Malformed request (or a request the vdisk's state forbids, e.g. reusing sequences).
    BadRequest,
    /// Unsupported protocol version.
    BadVersion,
    /// Invalid vdisk id.
    BadVdisk,
    /// Missing or wrong auth token.
    Unauthorized,
    /// A newer writer owns the vdisk.
    Fenced,
    /// A server-side failure that may pass (a takeover still draining, a backend outage,
    /// shutting down): worth retrying.
    Internal,
    /// The server refused a block (bad hash, out of order, out of range, ...).
    Block,
}

impl Refusal {
    /// Whether trying again later can succeed.
    pub fn retryable(self) -> bool {
        self == Refusal::Internal
    }
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Wraps an I/O error with what was being done.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io { context: context.into(), source }
    }
}

/// Adds context to I/O results: `file.sync_all().ctx(|| format!("fsync {}", path.display()))`.
pub trait IoContext<T> {
    /// Maps an `std::io::Error` to [`Error::Io`] with the given context.
    fn ctx<F: FnOnce() -> String>(self, f: F) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn ctx<F: FnOnce() -> String>(self, f: F) -> Result<T> {
        self.map_err(|e| Error::io(f(), e))
    }
}
