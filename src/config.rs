//! tlogd configuration: one TOML file (serde), every key with a default, unknown keys rejected
//! with the key named, values validated with a message that says what is allowed (DESIGN.md
//! §10). Config is data only: it opens nothing and builds nothing ([`crate::server`] turns it
//! into keys, backends and an engine). Modes are serde enums. Secrets (the AES key, Redis
//! passwords, auth tokens) come from files or environment variables and are never logged.
//! `config/tlogd.toml` lists every key with its default (a test checks it against
//! [`Config::default`]).

use crate::error::{Error, IoContext, Result};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The whole configuration.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// `[server]`.
    pub server: ServerConfig,
    /// `[net]`.
    pub net: NetConfig,
    /// `[flush]`.
    pub flush: FlushConfig,
    /// `[crypto]`.
    pub crypto: CryptoConfig,
    /// `[backend]`.
    pub backend: BackendConfig,
    /// `[upkeep]`: repair and scrub.
    pub upkeep: UpkeepConfig,
    /// `[history]`: retention of history (the cleaner).
    pub history: HistoryConfig,
    /// `[dpdk]` (used when `net.mode = "dpdk"`).
    pub dpdk: DpdkConfig,
}

/// `[server]`: listening, data directory, limits, deadlines, auth.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Listen address (kernel mode). Default `127.0.0.1:11211`.
    pub listen: String,
    /// Data directory: AES key, epochs, repair queue, local store. Default `./tlog-data`.
    pub data_dir: PathBuf,
    /// Connections served at once. When full, a new connection takes the place of the oldest
    /// one that has not finished its handshake; if there is none it is refused (logged).
    /// Default 1024.
    pub max_connections: usize,
    /// Largest frame accepted, bytes. Default 8 MiB.
    pub max_frame_bytes: usize,
    /// Largest block (`size`), bytes. Default 4 MiB.
    pub max_block_bytes: u64,
    /// Largest vdisk, bytes: a block whose `lba * 512 + size` lies past it is refused with
    /// `outOfRange`. Default 64 TiB.
    pub max_vdisk_bytes: u64,
    /// A connection that has not completed its handshake this long after it was accepted is
    /// closed (and logged), ms. Default 10000.
    pub handshake_timeout_ms: u64,
    /// An attached connection that sends nothing this long is closed (and logged), ms; 0 = never.
    /// The client library sends a keepalive every 30 s when it has nothing else to send.
    /// Default 300000.
    pub idle_timeout_ms: u64,
    /// Bytes of encoded blocks a playback holds ready for its reader at most (a slow reader holds
    /// back its own stream, never ingest). Default 64 MiB.
    pub playback_buffer_bytes: u64,
    /// Longest a takeover waits for the previous writer's buffered blocks to become durable
    /// before it answers the new writer (`internalError` after it, and the client retries), ms.
    /// Default 30000.
    pub takeover_timeout_ms: u64,
    /// File with accepted auth tokens, one per line, `#` comments ("" = no file). A file that
    /// holds no token is an error, not "no auth".
    pub auth_tokens_file: String,
    /// Environment variable with accepted tokens, comma-separated ("" = none). Set but empty is
    /// an error.
    pub auth_tokens_env: String,
    /// Where Prometheus metrics are served (`GET /metrics`), `host:port` ("" = off). Default
    /// `127.0.0.1:9464`. An address in use is logged and metrics stay off; tlogd runs on.
    pub metrics_listen: String,
}

/// Which network front-end serves the protocol.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum NetMode {
    /// The kernel's TCP (std::net).
    #[default]
    Kernel,
    /// The userspace TCP stack on a Linux tap device.
    Tap,
    /// The userspace TCP stack on DPDK (tlogd built with the `dpdk` feature).
    Dpdk,
}

impl NetMode {
    /// The config spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            NetMode::Kernel => "kernel",
            NetMode::Tap => "tap",
            NetMode::Dpdk => "dpdk",
        }
    }
}

/// `[net]`: which front-end, and the userspace stack's interface settings.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct NetConfig {
    /// `kernel` (default), `tap` or `dpdk`.
    pub mode: NetMode,
    /// Tap device tlogd creates or attaches to (tap mode). Default `tlog0`.
    pub tap: String,
    /// MAC address of tlogd's userspace interface. Default `02:00:00:00:00:02`.
    pub mac: String,
    /// IPv4 address/prefix of tlogd's userspace interface. Default `198.18.0.2/24`.
    pub address: String,
    /// IPv4 default gateway ("" = none). Default `198.18.0.1`.
    pub gateway: String,
    /// TCP sockets (connections) per queue. Default 64.
    pub sockets_per_queue: usize,
    /// Receive and send buffer of each socket, bytes (at least 256 KiB). Default 1 MiB.
    pub socket_buffer_bytes: usize,
    /// Transmit queue length (packets) tlogd gives the tap device it serves on (tap mode),
    /// set with `ip link set dev TAP txqueuelen N`; 0 leaves the device's own (Linux: 1000).
    /// The kernel drops what overflows this queue instead of slowing the sender, so with
    /// megabyte windows on several connections a short queue turns into retransmissions
    /// (measured: 8 connections, 1000 -> about 110 MiB/s with 5% of segments resent,
    /// 10000 -> about 240 MiB/s with none). Default 10000.
    pub tap_queue_len: u32,
    /// IP MTU of tlogd's userspace interface, bytes (as `ip link` counts it; the Ethernet frame
    /// is 14 bytes more). 0 = the front-end's default: tap 65521 (the largest a tap takes),
    /// dpdk 1500. Allowed 0 or 576 ..= 65521.
    pub mtu: u32,
}

/// `[flush]`: aggregation, erasure coding, memory bounds.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct FlushConfig {
    /// Blocks per aggregation. Default 1024 (chosen by measurement, see the README).
    pub flush_size: usize,
    /// Longest a block waits before its buffer is flushed, ms. Default 20.
    pub flush_time_ms: u64,
    /// Bytes after which a buffer is flushed even below flush_size. Default 4 MiB.
    pub max_aggregation_bytes: u64,
    /// Data shards. Default 4.
    pub k: usize,
    /// Parity shards. Default 2.
    pub m: usize,
    /// Backends that must store a shard before blocks are acked flushed; 0 = k+m-1 (at least
    /// k+1). Default 0.
    pub write_quorum: usize,
    /// Flusher threads; 0 = number of cores (at least 2). Default 0.
    pub workers: usize,
    /// Bytes buffered per vdisk until flushed. Default 64 MiB.
    pub max_vdisk_buffer_bytes: u64,
    /// Bytes buffered in total. Default 1 GiB.
    pub max_buffer_bytes: u64,
}

/// `[crypto]`: where the AES-256 key comes from.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CryptoConfig {
    /// Key file (64 hex digits, mode 0600: a file readable by group or others is refused);
    /// "" = `<data_dir>/aes.key`, generated on first start.
    pub key_file: String,
    /// Environment variable holding the key in hex; when set it wins over the file.
    /// Default `TLOG_AES_KEY`.
    pub key_env: String,
}

/// Which backends hold the shards.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// The embedded segmented log store, one directory per shard index.
    #[default]
    Local,
    /// k+m Redis-protocol servers.
    Redis,
}

impl BackendKind {
    /// The config spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            BackendKind::Local => "local",
            BackendKind::Redis => "redis",
        }
    }
}

/// `[backend]`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct BackendConfig {
    /// `local` (default) or `redis`.
    pub kind: BackendKind,
    /// Shard bytes queued for one backend at most. A backend that falls this far behind (down,
    /// stalled, slow) is marked degraded (logged): its shards go to the repair queue instead
    /// until it has caught up. Default 256 MiB.
    pub queue_bytes: u64,
    /// `[backend.local]`.
    pub local: LocalConfig,
    /// `[backend.redis]`.
    pub redis: RedisConfig,
}

/// `[backend.local]`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LocalConfig {
    /// k+m store directories; empty = `<data_dir>/store/0` … `<data_dir>/store/<k+m-1>`.
    pub dirs: Vec<PathBuf>,
    /// Segment size before an automatic split, bytes. Default 512 MiB.
    pub segment_bytes: u64,
    /// Index slots per segment. Default 131072.
    pub index_capacity: u64,
    /// Drop written data from the page cache once it is fsync'd (`posix_fadvise`
    /// `DONTNEED`). Default true: a transaction log is written once and read back rarely, so
    /// caching it only evicts other data (see README "Performance").
    pub drop_cache: bool,
    /// Write segment data with direct I/O (`O_DIRECT`), past the page cache. Default false:
    /// writes through the cache, synced as a batch and then dropped, measured faster (README
    /// "Performance"). A filesystem without direct I/O is written through the page cache
    /// instead (logged).
    pub direct_io: bool,
    /// Zero-filled room kept ahead of a hot segment's data while its syncs are small, bytes
    /// (0 = off). Default 4 MiB: appends then overwrite allocated blocks, and their fsync
    /// writes no file size or block map (README "Performance"; PostgreSQL zero-fills its WAL
    /// segments for the same reason). Not used with `direct_io`.
    pub zero_fill_bytes: u64,
}

/// How a Redis reply is made durable.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Durability {
    /// The server runs `appendonly yes` + `appendfsync always` (checked at connect).
    #[default]
    AppendfsyncAlways,
    /// `WAITAOF 1 0 timeout` after every batch (Redis 7.2+).
    Waitaof,
    /// No durability check (not durable: throwaway setups only).
    None,
}

impl Durability {
    /// The config spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Durability::AppendfsyncAlways => "appendfsync-always",
            Durability::Waitaof => "waitaof",
            Durability::None => "none",
        }
    }
}

/// `[backend.redis]`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RedisConfig {
    /// k+m `host:port` addresses, shard i on address i.
    pub addresses: Vec<String>,
    /// Database number. Default 0.
    pub db: i64,
    /// Password ("" = none). Prefer `password_env`.
    pub password: String,
    /// Environment variable holding the password ("" = none).
    pub password_env: String,
    /// `appendfsync-always` (default), `waitaof` or `none`.
    pub durability: Durability,
    /// Bound of every operation on one server (connect, each read and write), ms. Default 2000.
    pub timeout_ms: u64,
}

/// `[upkeep]`: background repair of missing shards and scheduled scrubs (DESIGN.md §14).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct UpkeepConfig {
    /// Shard bytes the background repair writes per second at most, MiB. Default 64.
    pub repair_rate_mib: u64,
    /// How often an unusable backend (a store that did not open) is tried again, ms.
    /// Default 5000.
    pub reopen_interval_ms: u64,
    /// How often tlogd scrubs every vdisk (reads and checks every shard, repairs what is bad),
    /// a humantime duration such as "1d" or "12h"; "" = never. Default "".
    pub scrub_interval: String,
    /// Shard bytes a scheduled scrub reads per second at most, MiB. Default 32.
    pub scrub_rate_mib: u64,
}

/// `[history]`: how much history tlogd keeps (DESIGN.md §12). What falls out of the window is
/// folded into a base per vdisk (the newest version of every block written before it) and the
/// space is given back.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HistoryConfig {
    /// How far back every point stays restorable, a humantime duration such as "7d" or "12h";
    /// "" = keep everything. Default "".
    pub retention: String,
    /// Cap on a vdisk's own history, data bytes (0 = no cap): past it the oldest history is
    /// folded first, with a warning in the log from 90% on. Default 0.
    pub max_bytes: u64,
    /// How often the cleaner runs, a humantime duration. It is also the grace a fold's
    /// replaced aggregations get before they are deleted (readers that loaded the index
    /// finish). Default "1m".
    pub clean_interval: String,
}

/// `[dpdk]`: EAL arguments, port, queues and mempool sizing of the DPDK front-end.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DpdkConfig {
    /// EAL arguments, as on a DPDK command line. Default: net_tap PMD without hardware:
    /// `--no-huge -m 512 --no-pci --vdev=net_tap0,iface=dtap0 --file-prefix=tlog`.
    pub eal_args: Vec<String>,
    /// DPDK port id. Default 0.
    pub port: u16,
    /// RX/TX queue pairs, one poll thread (and one userspace TCP stack) each. Default 2.
    pub queues: u16,
    /// RX descriptors per queue. Default 1024.
    pub rx_descriptors: u16,
    /// TX descriptors per queue. Default 1024.
    pub tx_descriptors: u16,
    /// mbufs in the mempool. Default 16383.
    pub mbufs: u32,
    /// Per-lcore mempool cache. Default 256.
    pub mbuf_cache: u32,
    /// Seconds between statistics log lines (0 = only at exit). Default 10.
    pub stats_interval_secs: u64,
    /// Microseconds a poll thread sleeps after a run of empty polls (0 = busy polling, for
    /// dedicated cores). Default 20. A signal ends the sleep early: on net_tap, a frame
    /// arriving on the thread's queue.
    pub idle_sleep_us: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: "127.0.0.1:11211".into(),
            data_dir: PathBuf::from("./tlog-data"),
            max_connections: 1024,
            max_frame_bytes: 8 << 20,
            max_block_bytes: 4 << 20,
            max_vdisk_bytes: 64 << 40,
            handshake_timeout_ms: 10_000,
            idle_timeout_ms: 300_000,
            playback_buffer_bytes: 64 << 20,
            takeover_timeout_ms: 30_000,
            auth_tokens_file: String::new(),
            auth_tokens_env: String::new(),
            metrics_listen: "127.0.0.1:9464".into(),
        }
    }
}

impl Default for NetConfig {
    fn default() -> Self {
        NetConfig {
            mode: NetMode::Kernel,
            tap: "tlog0".into(),
            mac: "02:00:00:00:00:02".into(),
            address: "198.18.0.2/24".into(),
            gateway: "198.18.0.1".into(),
            sockets_per_queue: 64,
            socket_buffer_bytes: 1 << 20,
            tap_queue_len: 10_000,
            mtu: 0,
        }
    }
}

impl Default for FlushConfig {
    fn default() -> Self {
        FlushConfig {
            flush_size: 1024,
            flush_time_ms: 20,
            max_aggregation_bytes: 4 << 20,
            k: 4,
            m: 2,
            write_quorum: 0,
            workers: 0,
            max_vdisk_buffer_bytes: 64 << 20,
            max_buffer_bytes: 1 << 30,
        }
    }
}

impl Default for CryptoConfig {
    fn default() -> Self {
        CryptoConfig { key_file: String::new(), key_env: "TLOG_AES_KEY".into() }
    }
}

impl Default for BackendConfig {
    fn default() -> Self {
        BackendConfig { kind: BackendKind::Local, queue_bytes: 256 << 20, local: LocalConfig::default(), redis: RedisConfig::default() }
    }
}

impl Default for LocalConfig {
    fn default() -> Self {
        LocalConfig { dirs: Vec::new(), segment_bytes: 512 << 20, index_capacity: 131_072, drop_cache: true, direct_io: false, zero_fill_bytes: 4 << 20 }
    }
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            addresses: Vec::new(),
            db: 0,
            password: String::new(),
            password_env: String::new(),
            durability: Durability::AppendfsyncAlways,
            timeout_ms: 2000,
        }
    }
}

impl Default for UpkeepConfig {
    fn default() -> Self {
        UpkeepConfig { repair_rate_mib: 64, reopen_interval_ms: 5000, scrub_interval: String::new(), scrub_rate_mib: 32 }
    }
}

impl Default for HistoryConfig {
    fn default() -> Self {
        HistoryConfig { retention: String::new(), max_bytes: 0, clean_interval: "1m".into() }
    }
}

impl Default for DpdkConfig {
    fn default() -> Self {
        DpdkConfig {
            eal_args: ["--no-huge", "-m", "512", "--no-pci", "--vdev=net_tap0,iface=dtap0", "--file-prefix=tlog"].iter().map(|s| s.to_string()).collect(),
            port: 0,
            queues: 2,
            rx_descriptors: 1024,
            tx_descriptors: 1024,
            mbufs: 16383,
            mbuf_cache: 256,
            stats_interval_secs: 10,
            idle_sleep_us: 20,
        }
    }
}

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let v: Vec<u8> = s.split(':').map(|p| u8::from_str_radix(p, 16)).collect::<std::result::Result<_, _>>().ok()?;
    v.try_into().ok()
}

/// Parses `a.b.c.d/prefix`.
pub fn parse_cidr(s: &str) -> Option<(std::net::Ipv4Addr, u8)> {
    let (a, p) = s.split_once('/')?;
    let p: u8 = p.parse().ok()?;
    (p <= 32).then_some(())?;
    Some((a.parse().ok()?, p))
}

fn bad<T>(key: &str, msg: String) -> Result<T> {
    Err(Error::Config(format!("{key}: {msg}")))
}

impl ServerConfig {
    fn validate(&self) -> Result<()> {
        if self.listen.parse::<std::net::SocketAddr>().is_err() {
            return bad("server.listen", format!("{:?} is not an IP:port address", self.listen));
        }
        if self.max_connections == 0 {
            return bad("server.max_connections", "must be at least 1".into());
        }
        if self.max_block_bytes == 0 || self.max_block_bytes + 4096 > self.max_frame_bytes as u64 {
            return bad(
                "server.max_block_bytes",
                format!("{} must be at least 1 and 4096 bytes below server.max_frame_bytes ({})", self.max_block_bytes, self.max_frame_bytes),
            );
        }
        if self.max_vdisk_bytes < 1 << 20 || self.max_vdisk_bytes > 1 << 62 {
            return bad("server.max_vdisk_bytes", format!("{}: allowed 1048576 ..= 4611686018427387904 (2^62)", self.max_vdisk_bytes));
        }
        if self.handshake_timeout_ms == 0 || self.handshake_timeout_ms > 3_600_000 {
            return bad("server.handshake_timeout_ms", format!("{} ms: allowed 1 ..= 3600000", self.handshake_timeout_ms));
        }
        if self.idle_timeout_ms != 0 && self.idle_timeout_ms < 1000 {
            return bad("server.idle_timeout_ms", format!("{} ms: at least 1000, or 0 for never", self.idle_timeout_ms));
        }
        if self.playback_buffer_bytes < 2 << 20 {
            return bad("server.playback_buffer_bytes", format!("{}: at least 2097152", self.playback_buffer_bytes));
        }
        if self.takeover_timeout_ms == 0 {
            return bad("server.takeover_timeout_ms", "must be at least 1".into());
        }
        Ok(())
    }
}

impl NetConfig {
    fn validate(&self) -> Result<()> {
        if self.mode == NetMode::Kernel {
            return Ok(());
        }
        if parse_mac(&self.mac).is_none() {
            return bad("net.mac", format!("{:?} is not a MAC address like 02:00:00:00:00:02", self.mac));
        }
        if parse_cidr(&self.address).is_none() {
            return bad("net.address", format!("{:?} is not an IPv4 address/prefix like 198.18.0.2/24", self.address));
        }
        if !self.gateway.is_empty() && self.gateway.parse::<std::net::Ipv4Addr>().is_err() {
            return bad("net.gateway", format!("{:?} is not an IPv4 address (\"\" for none)", self.gateway));
        }
        if self.tap.is_empty() || self.tap.len() > 15 {
            return bad("net.tap", format!("{:?}: an interface name of 1 to 15 characters", self.tap));
        }
        if self.sockets_per_queue == 0 || self.sockets_per_queue > 4096 {
            return bad("net.sockets_per_queue", format!("{}: allowed 1 ..= 4096", self.sockets_per_queue));
        }
        if self.socket_buffer_bytes < 256 << 10 || self.socket_buffer_bytes > 64 << 20 {
            return bad("net.socket_buffer_bytes", format!("{}: allowed 262144 ..= 67108864", self.socket_buffer_bytes));
        }
        if self.tap_queue_len > 1_000_000 {
            return bad("net.tap_queue_len", format!("{}: allowed 0 ..= 1000000 (0 = leave the device's own)", self.tap_queue_len));
        }
        if self.mtu != 0 && !(576..=65521).contains(&self.mtu) {
            return bad("net.mtu", format!("{}: allowed 576 ..= 65521 bytes, or 0 for the front-end's default (tap 65521, dpdk 1500)", self.mtu));
        }
        Ok(())
    }
}

impl FlushConfig {
    fn validate(&self, server: &ServerConfig) -> Result<()> {
        if self.k == 0 || self.k + self.m > 255 {
            return bad("flush.k/flush.m", format!("k = {}, m = {}: need 1 <= k and k + m <= 255", self.k, self.m));
        }
        let (lo, hi) = ((self.k + 1).min(self.k + self.m), self.k + self.m);
        if self.write_quorum != 0 && (self.write_quorum < lo || self.write_quorum > hi) {
            return bad("flush.write_quorum", format!("{} is outside k+1 ..= k+m ({lo} ..= {hi}); 0 means k+m-1", self.write_quorum));
        }
        if self.flush_size == 0 || self.flush_size > 1_000_000 {
            return bad("flush.flush_size", format!("{} blocks: allowed 1 ..= 1000000", self.flush_size));
        }
        if self.flush_time_ms == 0 || self.flush_time_ms > 60_000 {
            return bad("flush.flush_time_ms", format!("{} ms: allowed 1 ..= 60000", self.flush_time_ms));
        }
        if self.max_aggregation_bytes < 4096 || self.max_aggregation_bytes > 256 << 20 {
            return bad("flush.max_aggregation_bytes", format!("{}: allowed 4096 ..= 268435456", self.max_aggregation_bytes));
        }
        if self.max_vdisk_buffer_bytes < 2 * self.max_aggregation_bytes.max(server.max_block_bytes) {
            return bad(
                "flush.max_vdisk_buffer_bytes",
                format!("{} must be at least twice max(flush.max_aggregation_bytes, server.max_block_bytes)", self.max_vdisk_buffer_bytes),
            );
        }
        if self.max_buffer_bytes < self.max_vdisk_buffer_bytes {
            return bad("flush.max_buffer_bytes", format!("{} is below flush.max_vdisk_buffer_bytes ({})", self.max_buffer_bytes, self.max_vdisk_buffer_bytes));
        }
        Ok(())
    }
}

impl BackendConfig {
    fn validate(&self, flush: &FlushConfig) -> Result<()> {
        let n = flush.k + flush.m;
        if self.queue_bytes < 4 << 20 {
            return bad("backend.queue_bytes", format!("{}: at least 4194304", self.queue_bytes));
        }
        match self.kind {
            BackendKind::Local => {
                let l = &self.local;
                if !l.dirs.is_empty() && l.dirs.len() != n {
                    return bad("backend.local.dirs", format!("{} directories given, k + m = {n} needed", l.dirs.len()));
                }
                if l.segment_bytes < 1 << 20 {
                    return bad("backend.local.segment_bytes", format!("{}: at least 1048576", l.segment_bytes));
                }
                if l.index_capacity < 16 || l.index_capacity > u32::MAX as u64 {
                    return bad("backend.local.index_capacity", format!("{}: allowed 16 ..= 4294967295", l.index_capacity));
                }
                if l.zero_fill_bytes > crate::store::biglog::ZERO_FILL_MAX {
                    return bad("backend.local.zero_fill_bytes", format!("{}: at most {}", l.zero_fill_bytes, crate::store::biglog::ZERO_FILL_MAX));
                }
            }
            BackendKind::Redis => {
                let r = &self.redis;
                if r.addresses.len() != n {
                    return bad("backend.redis.addresses", format!("{} addresses given, k + m = {n} needed", r.addresses.len()));
                }
                for a in &r.addresses {
                    match a.rsplit_once(':') {
                        Some((h, p)) if !h.is_empty() && p.parse::<u16>().is_ok() => {}
                        _ => return bad("backend.redis.addresses", format!("{a:?} is not host:port")),
                    }
                }
                if r.timeout_ms == 0 || r.timeout_ms > 600_000 {
                    return bad("backend.redis.timeout_ms", format!("{}: allowed 1 ..= 600000", r.timeout_ms));
                }
            }
        }
        Ok(())
    }
}

impl UpkeepConfig {
    fn validate(&self) -> Result<()> {
        if self.repair_rate_mib == 0 {
            return bad("upkeep.repair_rate_mib", "must be at least 1".into());
        }
        if self.scrub_rate_mib == 0 {
            return bad("upkeep.scrub_rate_mib", "must be at least 1".into());
        }
        if self.reopen_interval_ms < 100 {
            return bad("upkeep.reopen_interval_ms", format!("{}: at least 100", self.reopen_interval_ms));
        }
        self.scrub_interval()?;
        Ok(())
    }

    /// The scrub interval (`None` = never). Errors name the key and the accepted form.
    pub fn scrub_interval(&self) -> Result<Option<Duration>> {
        if self.scrub_interval.trim().is_empty() {
            return Ok(None);
        }
        duration("upkeep.scrub_interval", &self.scrub_interval, Duration::from_secs(1)).map(Some)
    }
}

fn duration(key: &str, text: &str, min: Duration) -> Result<Duration> {
    match humantime::parse_duration(text.trim()) {
        Ok(d) if d >= min => Ok(d),
        Ok(_) => bad(key, format!("{text:?}: at least {}", humantime::format_duration(min))),
        Err(e) => bad(key, format!("{text:?} is not a duration like \"30s\", \"12h\" or \"7d\": {e}")),
    }
}

impl HistoryConfig {
    fn validate(&self) -> Result<()> {
        self.retention()?;
        self.clean_interval()?;
        Ok(())
    }

    /// The retention window (`None` = keep everything). Errors name the key.
    pub fn retention(&self) -> Result<Option<Duration>> {
        if self.retention.trim().is_empty() {
            return Ok(None);
        }
        duration("history.retention", &self.retention, Duration::from_secs(1)).map(Some)
    }

    /// How often the cleaner runs (at least 100 ms). Errors name the key.
    pub fn clean_interval(&self) -> Result<Duration> {
        duration("history.clean_interval", &self.clean_interval, Duration::from_millis(100))
    }

    /// Whether the cleaner has anything to do.
    pub fn enabled(&self) -> Result<bool> {
        Ok(self.retention()?.is_some() || self.max_bytes > 0)
    }
}

impl DpdkConfig {
    fn validate(&self) -> Result<()> {
        if self.queues == 0 || self.queues > 64 {
            return bad("dpdk.queues", format!("{}: allowed 1 ..= 64", self.queues));
        }
        if self.rx_descriptors < 64 || self.tx_descriptors < 64 {
            return bad("dpdk.rx_descriptors/tx_descriptors", "at least 64 each".into());
        }
        let need = self.queues as u32 * (self.rx_descriptors as u32 + self.tx_descriptors as u32) + self.queues as u32 * self.mbuf_cache + 1024;
        if self.mbufs < need {
            return bad(
                "dpdk.mbufs",
                format!(
                    "{} is too few for {} queues of {}+{} descriptors (need at least {need})",
                    self.mbufs, self.queues, self.rx_descriptors, self.tx_descriptors
                ),
            );
        }
        if self.idle_sleep_us > 10_000 {
            return bad("dpdk.idle_sleep_us", format!("{}: at most 10000", self.idle_sleep_us));
        }
        if self.mbuf_cache > 512 {
            return bad("dpdk.mbuf_cache", format!("{}: at most 512", self.mbuf_cache));
        }
        Ok(())
    }
}

impl Config {
    /// Parses TOML text and validates it. `origin` names the source in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Config> {
        let c: Config = toml::from_str(text).map_err(|e| Error::Config(format!("{origin}: {}", e.to_string().trim())))?;
        c.validate()?;
        Ok(c)
    }

    /// Reads and validates a config file; relative paths in it stay relative to the working
    /// directory.
    pub fn load(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path).ctx(|| format!("read config {}", path.display()))?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Checks every value, section by section; the error names the key and what is allowed.
    pub fn validate(&self) -> Result<()> {
        self.server.validate()?;
        self.net.validate()?;
        self.flush.validate(&self.server)?;
        self.backend.validate(&self.flush)?;
        self.upkeep.validate()?;
        self.history.validate()?;
        if self.net.mode == NetMode::Dpdk {
            self.dpdk.validate()?;
        }
        Ok(())
    }

    /// The effective write quorum: `flush.write_quorum`, or k+m-1 (at least k+1, at most k+m).
    pub fn write_quorum(&self) -> usize {
        let f = &self.flush;
        if f.write_quorum != 0 {
            f.write_quorum
        } else {
            (f.k + f.m - 1).max((f.k + 1).min(f.k + f.m)).max(1)
        }
    }

    /// The effective flusher count.
    pub fn workers(&self) -> usize {
        if self.flush.workers != 0 {
            self.flush.workers
        } else {
            std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2).max(2)
        }
    }

    /// flush_time as a Duration.
    pub fn flush_time(&self) -> Duration {
        Duration::from_millis(self.flush.flush_time_ms)
    }

    /// The local store directories (configured or derived from data_dir).
    pub fn local_dirs(&self) -> Vec<PathBuf> {
        if !self.backend.local.dirs.is_empty() {
            return self.backend.local.dirs.clone();
        }
        (0..self.flush.k + self.flush.m).map(|i| self.server.data_dir.join("store").join(i.to_string())).collect()
    }

    /// Path of the AES key file.
    pub fn key_file(&self) -> PathBuf {
        if self.crypto.key_file.is_empty() {
            self.server.data_dir.join("aes.key")
        } else {
            PathBuf::from(&self.crypto.key_file)
        }
    }

    /// One line for `tlogd --check-config` and the start log.
    pub fn summary(&self) -> String {
        format!(
            "net.mode {}, listen {}, data_dir {}, backend {} k={} m={} write_quorum={}, flush_size {} blocks, flush_time {} ms",
            self.net.mode.as_str(),
            self.server.listen,
            self.server.data_dir.display(),
            self.backend.kind.as_str(),
            self.flush.k,
            self.flush.m,
            self.write_quorum(),
            self.flush.flush_size,
            self.flush.flush_time_ms
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_unknown_keys_are_named() {
        Config::default().validate().unwrap();
        let e = Config::parse("[flush]\nflush_sise = 3\n", "t.toml").unwrap_err().to_string();
        assert!(e.contains("flush_sise"), "{e}");
        let e = Config::parse("[flush]\nk = 0\n", "t.toml").unwrap_err().to_string();
        assert!(e.contains("flush.k"), "{e}");
        let e = Config::parse("[backend]\nkind = \"redis\"\n", "t.toml").unwrap_err().to_string();
        assert!(e.contains("backend.redis.addresses"), "{e}");
        let e = Config::parse("[backend]\nkind = \"ceph\"\n", "t.toml").unwrap_err().to_string();
        assert!(e.contains("ceph") && e.contains("local"), "{e}");
        let e = Config::parse("[net]\nmode = \"rdma\"\n", "t.toml").unwrap_err().to_string();
        assert!(e.contains("rdma") && e.contains("kernel"), "{e}");
        let e = Config::parse("[backend.redis]\ndurability = \"sometimes\"\n", "t.toml").unwrap_err().to_string();
        assert!(e.contains("sometimes") && e.contains("waitaof"), "{e}");
        assert_eq!(Config::default().write_quorum(), 5);
        let e = Config::parse("[backend.local]\nzero_fill_bytes = 100000000\n", "t.toml").unwrap_err().to_string();
        assert!(e.contains("backend.local.zero_fill_bytes") && e.contains("67108864"), "{e}");
        let e = Config::parse("[net]\nmode = \"tap\"\ntap_queue_len = 2000000\n", "t.toml").unwrap_err().to_string();
        assert!(e.contains("net.tap_queue_len"), "{e}");
        for bad_mtu in [100, 575, 65522, 100_000] {
            let e = Config::parse(&format!("[net]\nmode = \"tap\"\nmtu = {bad_mtu}\n"), "t.toml").unwrap_err().to_string();
            assert!(e.contains("net.mtu") && e.contains("576 ..= 65521"), "{e}");
        }
        for good_mtu in [0, 576, 1500, 9000, 65521] {
            let c = Config::parse(&format!("[net]\nmode = \"tap\"\nmtu = {good_mtu}\n"), "t.toml").unwrap();
            assert_eq!(c.net.mtu, good_mtu);
        }
        assert_eq!(Config::parse("[net]\nmode = \"tap\"\ntap_queue_len = 0\n", "t.toml").unwrap().net.tap_queue_len, 0);
        let e = Config::parse("[server]\nmax_vdisk_bytes = 10\n", "t.toml").unwrap_err().to_string();
        assert!(e.contains("server.max_vdisk_bytes"), "{e}");
        let e = Config::parse("[upkeep]\nscrub_interval = \"often\"\n", "t.toml").unwrap_err().to_string();
        assert!(e.contains("upkeep.scrub_interval") && e.contains("often"), "{e}");
        assert_eq!(Config::parse("[upkeep]\nscrub_interval = \"12h\"\n", "t.toml").unwrap().upkeep.scrub_interval().unwrap(), Some(Duration::from_secs(43200)));
        let e = Config::parse("[history]\nretention = \"a week\"\n", "t.toml").unwrap_err().to_string();
        assert!(e.contains("history.retention") && e.contains("a week"), "{e}");
        let c = Config::parse("[history]\nretention = \"7d\"\n", "t.toml").unwrap();
        assert_eq!(c.history.retention().unwrap(), Some(Duration::from_secs(7 * 86400)));
        assert_eq!(c.history.clean_interval().unwrap(), Duration::from_secs(60));
        assert!(Config::default().history.retention().unwrap().is_none() && !Config::default().history.enabled().unwrap());
    }

    #[test]
    fn shipped_configs_parse() {
        for f in ["config/tlogd.toml", "config/tlogd-redis.toml", "config/tlogd-tap.toml", "config/tlogd-dpdk.toml"] {
            let p = Path::new(env!("CARGO_MANIFEST_DIR")).join(f);
            Config::load(&p).unwrap_or_else(|e| panic!("{f}: {e}"));
        }
    }

    /// config/tlogd.toml is "the embedded defaults, written out": every value in it must be
    /// the default, so the two cannot drift apart.
    #[test]
    fn shipped_default_config_is_the_embedded_defaults() {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/tlogd.toml");
        assert_eq!(Config::load(&p).unwrap(), Config::default());
    }
}
