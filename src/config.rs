//! tlogd configuration: one TOML file (serde), every key with a default, unknown keys rejected
//! with the key named, values validated with a message that says what is allowed. Secrets (the
//! AES key, Redis passwords, auth tokens) come from files or environment variables and are
//! never logged. See `config/tlogd.toml` for every key with its default.

use crate::error::{Error, IoContext, Result};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The whole configuration.
#[derive(Clone, Debug, Deserialize)]
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
    /// `[dpdk]` (used when net.mode = "dpdk").
    pub dpdk: DpdkConfig,
}

/// `[dpdk]`: EAL arguments, port, queues and mempool sizing of the DPDK front-end.
#[derive(Clone, Debug, Deserialize)]
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

/// `[server]`: listening, data directory, limits, auth.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Listen address (kernel mode). Default `127.0.0.1:11211`.
    pub listen: String,
    /// Data directory: AES key, epochs, metadata index, local store. Default `./tlog-data`.
    pub data_dir: PathBuf,
    /// Connections served at once. Default 1024.
    pub max_connections: usize,
    /// Largest frame accepted, bytes. Default 8 MiB.
    pub max_frame_bytes: usize,
    /// Largest block (`size`), bytes. Default 4 MiB.
    pub max_block_bytes: u64,
    /// File with accepted auth tokens, one per line ("" = no file).
    pub auth_tokens_file: String,
    /// Environment variable with accepted tokens, comma-separated ("" = none).
    pub auth_tokens_env: String,
}

/// `[net]`: which front-end, and the userspace stack's interface settings.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NetConfig {
    /// `kernel` (default), `tap` or `dpdk`.
    pub mode: String,
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
    /// is 14 bytes more). 0 = the front-end's default: tap 65521 (the largest a tap takes;
    /// see [`crate::net::tap::TAP_DEFAULT_MTU`]), dpdk 1500. Set on the tap device at start;
    /// on a DPDK port with `rte_eth_dev_set_mtu`. Allowed 0 or 576 ..= 65521.
    pub mtu: u32,
    /// Set by `tlogd --sink` (never read from a file): the userspace stack serves the
    /// benchmark sink ([`crate::bench::SinkSession`]) instead of storing.
    #[serde(skip)]
    pub sink: bool,
}

/// `[flush]`: aggregation, erasure coding, memory bounds.
#[derive(Clone, Debug, Deserialize)]
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
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CryptoConfig {
    /// Key file (64 hex digits); "" = `<data_dir>/aes.key`, generated on first start.
    pub key_file: String,
    /// Environment variable holding the key in hex; when set it wins over the file.
    /// Default `TLOG_AES_KEY`.
    pub key_env: String,
}

/// `[backend]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BackendConfig {
    /// `local` (default) or `redis`.
    pub kind: String,
    /// `[backend.local]`.
    pub local: LocalConfig,
    /// `[backend.redis]`.
    pub redis: RedisConfig,
}

/// `[backend.local]`.
#[derive(Clone, Debug, Deserialize)]
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
    /// caching it only evicts other data, and reusing the same warm pages is much cheaper than
    /// touching new ones (see README "Performance").
    pub drop_cache: bool,
    /// Write segment data with direct I/O (`O_DIRECT`), past the page cache. Default true:
    /// the bytes go from tlogd's buffer to the device with no copy into the cache and no
    /// writeback at fsync (see README "Performance"). A filesystem without direct I/O is
    /// written through the page cache instead, and tlogd logs it.
    pub direct_io: bool,
}

/// `[backend.redis]`.
#[derive(Clone, Debug, Deserialize)]
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
    pub durability: String,
    /// Connect/read/write timeout, ms. Default 2000.
    pub timeout_ms: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: "127.0.0.1:11211".into(),
            data_dir: PathBuf::from("./tlog-data"),
            max_connections: 1024,
            max_frame_bytes: 8 << 20,
            max_block_bytes: 4 << 20,
            auth_tokens_file: String::new(),
            auth_tokens_env: String::new(),
        }
    }
}

impl Default for NetConfig {
    fn default() -> Self {
        NetConfig {
            mode: "kernel".into(),
            tap: "tlog0".into(),
            mac: "02:00:00:00:00:02".into(),
            address: "198.18.0.2/24".into(),
            gateway: "198.18.0.1".into(),
            sockets_per_queue: 64,
            socket_buffer_bytes: 1 << 20,
            tap_queue_len: 10_000,
            mtu: 0,
            sink: false,
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
        BackendConfig { kind: "local".into(), local: LocalConfig::default(), redis: RedisConfig::default() }
    }
}

impl Default for LocalConfig {
    fn default() -> Self {
        LocalConfig { dirs: Vec::new(), segment_bytes: 512 << 20, index_capacity: 131_072, drop_cache: true, direct_io: true }
    }
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            addresses: Vec::new(),
            db: 0,
            password: String::new(),
            password_env: String::new(),
            durability: "appendfsync-always".into(),
            timeout_ms: 2000,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            server: ServerConfig::default(),
            net: NetConfig::default(),
            flush: FlushConfig::default(),
            crypto: CryptoConfig::default(),
            backend: BackendConfig::default(),
            dpdk: DpdkConfig::default(),
        }
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

    /// Checks every value; the error names the key and what is allowed.
    pub fn validate(&self) -> Result<()> {
        let f = &self.flush;
        let bad = |k: &str, msg: String| Err(Error::Config(format!("{k}: {msg}")));
        if !["kernel", "tap", "dpdk"].contains(&self.net.mode.as_str()) {
            return bad("net.mode", format!("{:?} is not one of \"kernel\", \"tap\", \"dpdk\"", self.net.mode));
        }
        let n = &self.net;
        if n.mode != "kernel" {
            if parse_mac(&n.mac).is_none() {
                return bad("net.mac", format!("{:?} is not a MAC address like 02:00:00:00:00:02", n.mac));
            }
            if parse_cidr(&n.address).is_none() {
                return bad("net.address", format!("{:?} is not an IPv4 address/prefix like 198.18.0.2/24", n.address));
            }
            if !n.gateway.is_empty() && n.gateway.parse::<std::net::Ipv4Addr>().is_err() {
                return bad("net.gateway", format!("{:?} is not an IPv4 address (\"\" for none)", n.gateway));
            }
            if n.tap.is_empty() || n.tap.len() > 15 {
                return bad("net.tap", format!("{:?}: an interface name of 1 to 15 characters", n.tap));
            }
            if n.sockets_per_queue == 0 || n.sockets_per_queue > 4096 {
                return bad("net.sockets_per_queue", format!("{}: allowed 1 ..= 4096", n.sockets_per_queue));
            }
            if n.socket_buffer_bytes < 256 << 10 || n.socket_buffer_bytes > 64 << 20 {
                return bad("net.socket_buffer_bytes", format!("{}: allowed 262144 ..= 67108864", n.socket_buffer_bytes));
            }
            if n.tap_queue_len > 1_000_000 {
                return bad("net.tap_queue_len", format!("{}: allowed 0 ..= 1000000 (0 = leave the device's own)", n.tap_queue_len));
            }
            if n.mtu != 0 && !(576..=65521).contains(&n.mtu) {
                return bad("net.mtu", format!("{}: allowed 576 ..= 65521 bytes, or 0 for the front-end's default (tap 65521, dpdk 1500)", n.mtu));
            }
        }
        if n.mode == "dpdk" {
            let d = &self.dpdk;
            if d.queues == 0 || d.queues > 64 {
                return bad("dpdk.queues", format!("{}: allowed 1 ..= 64", d.queues));
            }
            if d.rx_descriptors < 64 || d.tx_descriptors < 64 {
                return bad("dpdk.rx_descriptors/tx_descriptors", "at least 64 each".into());
            }
            let need = d.queues as u32 * (d.rx_descriptors as u32 + d.tx_descriptors as u32) + d.queues as u32 * d.mbuf_cache + 1024;
            if d.mbufs < need {
                return bad(
                    "dpdk.mbufs",
                    format!("{} is too few for {} queues of {}+{} descriptors (need at least {need})", d.mbufs, d.queues, d.rx_descriptors, d.tx_descriptors),
                );
            }
            if d.idle_sleep_us > 10_000 {
                return bad("dpdk.idle_sleep_us", format!("{}: at most 10000", d.idle_sleep_us));
            }
            if d.mbuf_cache > 512 {
                return bad("dpdk.mbuf_cache", format!("{}: at most 512", d.mbuf_cache));
            }
        }
        if self.server.listen.parse::<std::net::SocketAddr>().is_err() {
            return bad("server.listen", format!("{:?} is not an IP:port address", self.server.listen));
        }
        if f.k == 0 || f.k + f.m > 255 {
            return bad("flush.k/flush.m", format!("k = {}, m = {}: need 1 <= k and k + m <= 255", f.k, f.m));
        }
        if f.write_quorum != 0 && (f.write_quorum < (f.k + 1).min(f.k + f.m) || f.write_quorum > f.k + f.m) {
            return bad(
                "flush.write_quorum",
                format!("{} is outside k+1 ..= k+m ({} ..= {}); 0 means k+m-1", f.write_quorum, (f.k + 1).min(f.k + f.m), f.k + f.m),
            );
        }
        if f.flush_size == 0 || f.flush_size > 1_000_000 {
            return bad("flush.flush_size", format!("{} blocks: allowed 1 ..= 1000000", f.flush_size));
        }
        if f.flush_time_ms == 0 || f.flush_time_ms > 60_000 {
            return bad("flush.flush_time_ms", format!("{} ms: allowed 1 ..= 60000", f.flush_time_ms));
        }
        if f.max_aggregation_bytes < 4096 || f.max_aggregation_bytes > 256 << 20 {
            return bad("flush.max_aggregation_bytes", format!("{}: allowed 4096 ..= 268435456", f.max_aggregation_bytes));
        }
        if self.server.max_block_bytes == 0 || self.server.max_block_bytes + 4096 > self.server.max_frame_bytes as u64 {
            return bad(
                "server.max_block_bytes",
                format!("{} must be at least 1 and 4096 bytes below server.max_frame_bytes ({})", self.server.max_block_bytes, self.server.max_frame_bytes),
            );
        }
        if f.max_vdisk_buffer_bytes < 2 * f.max_aggregation_bytes.max(self.server.max_block_bytes) {
            return bad(
                "flush.max_vdisk_buffer_bytes",
                format!("{} must be at least twice max(flush.max_aggregation_bytes, server.max_block_bytes)", f.max_vdisk_buffer_bytes),
            );
        }
        if f.max_buffer_bytes < f.max_vdisk_buffer_bytes {
            return bad("flush.max_buffer_bytes", format!("{} is below flush.max_vdisk_buffer_bytes ({})", f.max_buffer_bytes, f.max_vdisk_buffer_bytes));
        }
        if self.server.max_connections == 0 {
            return bad("server.max_connections", "must be at least 1".into());
        }
        match self.backend.kind.as_str() {
            "local" => {
                let l = &self.backend.local;
                if !l.dirs.is_empty() && l.dirs.len() != f.k + f.m {
                    return bad("backend.local.dirs", format!("{} directories given, k + m = {} needed", l.dirs.len(), f.k + f.m));
                }
                if l.segment_bytes < 1 << 20 {
                    return bad("backend.local.segment_bytes", format!("{}: at least 1048576", l.segment_bytes));
                }
                if l.index_capacity < 16 || l.index_capacity > u32::MAX as u64 {
                    return bad("backend.local.index_capacity", format!("{}: allowed 16 ..= 4294967295", l.index_capacity));
                }
            }
            "redis" => {
                let r = &self.backend.redis;
                if r.addresses.len() != f.k + f.m {
                    return bad("backend.redis.addresses", format!("{} addresses given, k + m = {} needed", r.addresses.len(), f.k + f.m));
                }
                for a in &r.addresses {
                    match a.rsplit_once(':') {
                        Some((h, p)) if !h.is_empty() && p.parse::<u16>().is_ok() => {}
                        _ => return bad("backend.redis.addresses", format!("{a:?} is not host:port")),
                    }
                }
                if !["appendfsync-always", "waitaof", "none"].contains(&r.durability.as_str()) {
                    return bad("backend.redis.durability", format!("{:?} is not one of \"appendfsync-always\", \"waitaof\", \"none\"", r.durability));
                }
                if r.timeout_ms == 0 {
                    return bad("backend.redis.timeout_ms", "must be at least 1".into());
                }
            }
            other => return bad("backend.kind", format!("{other:?} is not one of \"local\", \"redis\"")),
        }
        Ok(())
    }

    /// The effective write quorum.
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

    /// Loads the AES key: from `crypto.key_env` when that variable is set, else from the key
    /// file. With `generate`, a missing default key file is created (mode 0600); returns the
    /// key and, when one was generated, its path.
    pub fn load_key(&self, generate: bool) -> Result<(crate::flush::SealKey, Option<PathBuf>)> {
        if !self.crypto.key_env.is_empty() {
            if let Ok(v) = std::env::var(&self.crypto.key_env) {
                return Ok((
                    crate::flush::SealKey::from_hex(&v).map_err(|e| Error::Config(format!("environment variable {}: {e}", self.crypto.key_env)))?,
                    None,
                ));
            }
        }
        let p = self.key_file();
        if p.exists() || !generate || !self.crypto.key_file.is_empty() {
            if !p.exists() {
                return Err(Error::Config(format!(
                    "AES key file {} does not exist (set crypto.key_file, {} or run tlogd once to generate one)",
                    p.display(),
                    self.crypto.key_env
                )));
            }
            return Ok((crate::flush::SealKey::load(&p)?, None));
        }
        if let Some(d) = p.parent() {
            std::fs::create_dir_all(d).ctx(|| format!("create {}", d.display()))?;
        }
        let k = crate::flush::SealKey::generate()?;
        k.store_new(&p)?;
        Ok((k, Some(p)))
    }

    /// Auth tokens accepted (empty = no auth).
    pub fn auth_tokens(&self) -> Result<Vec<String>> {
        let mut t = Vec::new();
        if !self.server.auth_tokens_file.is_empty() {
            let p = Path::new(&self.server.auth_tokens_file);
            let s = std::fs::read_to_string(p).ctx(|| format!("read server.auth_tokens_file {}", p.display()))?;
            t.extend(s.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).map(String::from));
        }
        if !self.server.auth_tokens_env.is_empty() {
            if let Ok(v) = std::env::var(&self.server.auth_tokens_env) {
                t.extend(v.split(',').map(str::trim).filter(|l| !l.is_empty()).map(String::from));
            }
        }
        Ok(t)
    }

    /// The Redis password: from `password_env` when set, else `password`.
    pub fn redis_password(&self) -> Option<String> {
        let r = &self.backend.redis;
        if !r.password_env.is_empty() {
            if let Ok(v) = std::env::var(&r.password_env) {
                return Some(v);
            }
        }
        if r.password.is_empty() {
            None
        } else {
            Some(r.password.clone())
        }
    }

    /// Opens the configured backends, shard index order.
    pub fn open_backends(&self) -> Result<Vec<std::sync::Arc<dyn crate::backend::Backend>>> {
        use crate::backend::{local::LocalBackend, redis::*, Backend};
        let mut v: Vec<std::sync::Arc<dyn Backend>> = Vec::new();
        match self.backend.kind.as_str() {
            "redis" => {
                let r = &self.backend.redis;
                let durability = match r.durability.as_str() {
                    "waitaof" => Durability::Waitaof,
                    "none" => Durability::None,
                    _ => Durability::AppendfsyncAlways,
                };
                for a in &r.addresses {
                    v.push(std::sync::Arc::new(RedisBackend::new(RedisSettings {
                        address: a.clone(),
                        db: r.db,
                        password: self.redis_password(),
                        durability,
                        timeout: Duration::from_millis(r.timeout_ms),
                    })));
                }
            }
            _ => {
                let opts = crate::store::BigLogOptions {
                    segment_bytes: self.backend.local.segment_bytes,
                    index_capacity: self.backend.local.index_capacity,
                    drop_cache: self.backend.local.drop_cache,
                    direct_io: self.backend.local.direct_io,
                };
                for d in self.local_dirs() {
                    v.push(std::sync::Arc::new(LocalBackend::open(&d, opts.clone())?));
                }
            }
        }
        Ok(v)
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
        assert_eq!(Config::default().write_quorum(), 5);
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
    }

    #[test]
    fn shipped_configs_parse() {
        for f in ["config/tlogd.toml", "config/tlogd-redis.toml", "config/tlogd-tap.toml", "config/tlogd-dpdk.toml"] {
            let p = Path::new(env!("CARGO_MANIFEST_DIR")).join(f);
            Config::load(&p).unwrap_or_else(|e| panic!("{f}: {e}"));
        }
    }
}
