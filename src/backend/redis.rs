//! The `redis` backend: one Redis-protocol server (Redis, Valkey, ardb, kvrocks) per shard
//! index, through the `redis` crate's synchronous connection.
//!
//! Keys: `tlog:s:<32-byte key>` holds a shard; `tlog:m:<vdisk>` is a hash of the vdisk's
//! metadata records (name → value); `tlog:h:<vdisk>` a head record and
//! `tlog:hh:<vdisk>` its order "epoch height" (a bare "height", written by older versions,
//! counts as epoch 0), so an older head never replaces a newer one: the two are set by one Lua
//! script only when (epoch, height) does not go back (an equal one is the same head written
//! again, by a repair). A batch is one pipelined round trip. `tlog:we:<vdisk>` holds the vdisk's
//! writer epoch, taken by a Lua compare-and-set ([`Backend::fence`]); a writer's batch
//! ([`Backend::write_fenced`]) `WATCH`es the epochs of its vdisks, reads them and writes what
//! they allow in `MULTI`/`EXEC` (Redis 7.0 has no `SET IFEQ`): a fence landing in between aborts
//! the `EXEC` and the check runs again.
//!
//! Every operation is bounded by `timeout`: the connection is made with the crate's connect
//! timeout and without its setup round trip (the `disable-client-setinfo` feature, no password
//! or database in the connection info), the socket's read and write timeouts are set, and only
//! then are `AUTH` and `SELECT` sent. (The crate otherwise sends `CLIENT SETINFO` and reads its
//! reply before any timeout applies: a server frozen with SIGSTOP, whose kernel still accepts
//! connections, held every caller for as long as it stayed frozen.) A failed operation is
//! retried on a new connection while its time bound lasts (every operation here is
//! idempotent).
//!
//! Durability ([`Durability`]): `appendfsync-always` checks at connect that the server runs with
//! `appendonly yes` and `appendfsync always` (so a reply means fsync'd); `waitaof` sends
//! `WAITAOF 1 0 <timeout>` after each batch (Redis 7.2+); `none` trusts the reply alone (not
//! durable: only for throwaway setups).

use super::{Backend, Batch, Key};
pub use crate::config::Durability;
use crate::error::{Error, Result};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Connection settings of one server.
#[derive(Clone, Debug)]
pub struct RedisSettings {
    /// host:port.
    pub address: String,
    /// Database number.
    pub db: i64,
    /// Password (AUTH), if any. Never logged.
    pub password: Option<String>,
    /// Durability mode.
    pub durability: Durability,
    /// Bound of every operation: connect, and each read and write.
    pub timeout: Duration,
}

/// One Redis-protocol server as a backend. Reconnects on the next call after an error.
pub struct RedisBackend {
    s: RedisSettings,
    conn: Mutex<Option<redis::Connection>>,
}

const SET_HEAD: &str = "local cur = redis.call('GET', KEYS[2]) \
local ce, ch = -1, -1 \
if cur then local a, b = string.match(cur, '^(%d+) (%d+)$') \
  if a then ce = tonumber(a); ch = tonumber(b) else ce = 0; ch = tonumber(cur) or -1 end end \
local e, h = tonumber(ARGV[2]), tonumber(ARGV[3]) \
if e > ce or (e == ce and h >= ch) then redis.call('SET', KEYS[1], ARGV[1]); redis.call('SET', KEYS[2], ARGV[2] .. ' ' .. ARGV[3]) end \
return 1";

/// Takes the writer epoch ARGV[1] of KEYS[1] if it is greater than the one held (or none);
/// returns the epoch held afterwards.
const FENCE: &str = "local cur = tonumber(redis.call('GET', KEYS[1]) or '0') \
local e = tonumber(ARGV[1]) \
if e > cur then redis.call('SET', KEYS[1], ARGV[1]); return e end \
return cur";

/// The key of a vdisk's writer epoch.
fn fence_key(vdisk: &str) -> String {
    format!("tlog:we:{vdisk}")
}

/// Adds the batch's commands to `p`, each ignored.
fn add_writes(p: &mut redis::Pipeline, b: &Batch<'_>) {
    for s in &b.shards {
        p.cmd("SET").arg(shard_key(s.key)).arg(s.bytes).ignore();
    }
    for h in &b.heads {
        p.cmd("EVAL")
            .arg(SET_HEAD)
            .arg(2)
            .arg(format!("tlog:h:{}", h.vdisk))
            .arg(format!("tlog:hh:{}", h.vdisk))
            .arg(h.record)
            .arg(h.epoch)
            .arg(h.height)
            .ignore();
    }
    for m in b.metas.iter() {
        match m.value {
            Some(v) => p.cmd("HSET").arg(format!("tlog:m:{}", m.vdisk)).arg(m.name).arg(v).ignore(),
            None => p.cmd("HDEL").arg(format!("tlog:m:{}", m.vdisk)).arg(m.name).ignore(),
        };
    }
    for k in &b.deletes {
        p.cmd("DEL").arg(shard_key(k)).ignore();
    }
    for v in &b.forget {
        p.cmd("DEL").arg(format!("tlog:h:{v}")).arg(format!("tlog:hh:{v}")).arg(format!("tlog:m:{v}")).ignore();
    }
}

/// Keys SCAN asks for per round trip when listing vdisks, and the most rounds it makes.
const SCAN_COUNT: u64 = 1000;
const SCAN_MAX_ROUNDS: usize = 100_000;

fn shard_key(k: &Key) -> Vec<u8> {
    let mut v = b"tlog:s:".to_vec();
    v.extend_from_slice(k);
    v
}

impl RedisBackend {
    /// A backend for `s`; connects lazily (the first call), so an unreachable server is an
    /// error of that call, not of construction.
    pub fn new(s: RedisSettings) -> RedisBackend {
        RedisBackend { s, conn: Mutex::new(None) }
    }

    fn err(&self, detail: impl std::fmt::Display) -> Error {
        Error::Backend { backend: self.name(), detail: detail.to_string() }
    }

    fn connect(&self) -> Result<redis::Connection> {
        let (host, port) = self.s.address.rsplit_once(':').ok_or_else(|| self.err("address must be host:port"))?;
        let port: u16 = port.parse().map_err(|_| self.err("bad port"))?;
        // No password and database 0 here: the crate would send AUTH/SELECT before the read
        // timeout below applies. They are sent once it does.
        let info = redis::ConnectionInfo {
            addr: redis::ConnectionAddr::Tcp(host.trim_matches(['[', ']']).to_string(), port),
            redis: redis::RedisConnectionInfo { db: 0, username: None, password: None, protocol: redis::ProtocolVersion::RESP2 },
        };
        let client = redis::Client::open(info).map_err(|e| self.err(e))?;
        let mut c = client.get_connection_with_timeout(self.s.timeout).map_err(|e| self.err(format!("connect: {e}")))?;
        c.set_read_timeout(Some(self.s.timeout)).map_err(|e| self.err(e))?;
        c.set_write_timeout(Some(self.s.timeout)).map_err(|e| self.err(e))?;
        if let Some(pw) = &self.s.password {
            redis::cmd("AUTH").arg(pw).query::<()>(&mut c).map_err(|e| self.err(format!("AUTH: {e}")))?;
        }
        if self.s.db != 0 {
            redis::cmd("SELECT").arg(self.s.db).query::<()>(&mut c).map_err(|e| self.err(format!("SELECT {}: {e}", self.s.db)))?;
        }
        if self.s.durability == Durability::AppendfsyncAlways {
            let get = |name: &str, c: &mut redis::Connection| -> Option<String> {
                let v: redis::RedisResult<Vec<String>> = redis::cmd("CONFIG").arg("GET").arg(name).query(c);
                v.ok().and_then(|v| v.get(1).cloned())
            };
            match (get("appendonly", &mut c), get("appendfsync", &mut c)) {
                (Some(ao), Some(af)) if ao == "yes" && af == "always" => {}
                (Some(ao), Some(af)) => {
                    return Err(self.err(format!(
                        "durability = \"appendfsync-always\" needs appendonly yes and appendfsync always; the server has appendonly {ao}, appendfsync {af}"
                    )))
                }
                _ => tracing::warn!(backend = %self.name(), "CONFIG GET is not available: cannot check appendfsync"),
            }
        }
        Ok(c)
    }

    /// Runs `f` on the connection (connecting first if needed). An error drops the connection;
    /// an I/O error is retried on a new connection while the operation's time bound
    /// (`timeout`, plus one more try if the first failed at once) lasts. This also covers
    /// EINTR, which signals of DPDK's EAL threads can cause in blocking socket calls.
    fn with_conn<T>(&self, f: impl Fn(&mut redis::Connection) -> redis::RedisResult<T>) -> Result<T> {
        let start = Instant::now();
        let mut g = self.conn.lock().map_err(|_| self.err("connection lock poisoned"))?;
        let mut last = None;
        for attempt in 0..3 {
            if attempt > 0 && start.elapsed() >= self.s.timeout {
                break;
            }
            if g.is_none() {
                match self.connect() {
                    Ok(c) => *g = Some(c),
                    Err(e) => {
                        last = Some(e);
                        continue;
                    }
                }
            }
            let c = g.as_mut().ok_or_else(|| self.err("not connected"))?;
            match f(c) {
                Ok(v) => return Ok(v),
                Err(e) => {
                    *g = None; // reconnect for the next try
                    let io = e.is_io_error() || e.is_timeout();
                    last = Some(self.err(e));
                    if !io {
                        break;
                    }
                }
            }
        }
        Err(last.unwrap_or_else(|| self.err("no attempt made")))
    }
}

impl RedisBackend {
    /// Runs `p` (commands ignored) and, in `waitaof` mode, `WAITAOF` after it: its answer.
    fn query_durable(&self, mut p: redis::Pipeline, c: &mut redis::Connection) -> redis::RedisResult<Option<Vec<i64>>> {
        if self.s.durability == Durability::Waitaof {
            p.cmd("WAITAOF").arg(1).arg(0).arg(self.s.timeout.as_millis() as u64);
            let r: (Vec<i64>,) = p.query(c)?;
            Ok(Some(r.0))
        } else {
            p.query::<()>(c)?;
            Ok(None)
        }
    }

    fn check_waited(&self, waited: Option<Vec<i64>>) -> Result<()> {
        match waited {
            Some(w) if w.first().copied().unwrap_or(0) < 1 => Err(self.err("WAITAOF: the local append-only file was not fsync'd in time")),
            _ => Ok(()),
        }
    }
}

impl Backend for RedisBackend {
    fn name(&self) -> String {
        format!("redis {}", self.s.address)
    }

    fn write(&self, b: &Batch<'_>) -> Result<()> {
        let waited: Option<Vec<i64>> = self.with_conn(|c| {
            let mut p = redis::pipe();
            add_writes(&mut p, b);
            self.query_durable(p, c)
        })?;
        self.check_waited(waited)
    }

    fn fence(&self, vdisk: &str, epoch: u64) -> Result<u64> {
        let held: u64 = self.with_conn(|c| redis::cmd("EVAL").arg(FENCE).arg(1).arg(fence_key(vdisk)).arg(epoch).query(c))?;
        if held == epoch && epoch > 0 && self.s.durability == Durability::Waitaof {
            let w: Vec<i64> = self.with_conn(|c| redis::cmd("WAITAOF").arg(1).arg(0).arg(self.s.timeout.as_millis() as u64).query(c))?;
            self.check_waited(Some(w))?;
        }
        Ok(held)
    }

    fn write_fenced(&self, b: &Batch<'_>, fences: &[(&str, u64)]) -> Result<super::Refused> {
        if fences.is_empty() {
            return self.write(b).map(|()| Vec::new());
        }
        let keys: Vec<String> = fences.iter().map(|(v, _)| fence_key(v)).collect();
        // WATCH the epochs, read them, and write what they allow in MULTI/EXEC: a fence that
        // lands in between aborts the EXEC, and the check runs again.
        let (refused, waited) = self.with_conn(|c| {
            for _ in 0..16 {
                redis::cmd("WATCH").arg(&keys).query::<()>(c)?;
                let held: Vec<Option<u64>> = redis::cmd("MGET").arg(&keys).query(c)?;
                let refused: super::Refused = fences.iter().zip(&held).filter_map(|((v, e), h)| h.filter(|h| *h > *e).map(|h| (v.to_string(), h))).collect();
                let mut p = redis::pipe();
                p.atomic();
                if refused.is_empty() {
                    add_writes(&mut p, b);
                } else {
                    add_writes(&mut p, &super::without(b, &refused));
                }
                let done: Option<()> = p.query(c)?;
                if done.is_some() {
                    let waited = if self.s.durability == Durability::Waitaof { self.query_durable(redis::pipe(), c)? } else { None };
                    return Ok((refused, waited));
                }
            }
            Err(redis::RedisError::from((redis::ErrorKind::TryAgain, "writer epochs kept changing during the write")))
        })?;
        self.check_waited(waited)?;
        Ok(refused)
    }

    fn get(&self, key: &Key) -> Result<Option<Vec<u8>>> {
        self.with_conn(|c| redis::cmd("GET").arg(shard_key(key)).query(c))
    }

    fn delete(&self, key: &Key) -> Result<()> {
        self.with_conn(|c| redis::cmd("DEL").arg(shard_key(key)).query(c))
    }

    fn get_head(&self, vdisk: &str) -> Result<Option<Vec<u8>>> {
        self.with_conn(|c| redis::cmd("GET").arg(format!("tlog:h:{vdisk}")).query(c))
    }

    fn get_meta(&self, vdisk: &str, name: &str) -> Result<Option<Vec<u8>>> {
        self.with_conn(|c| redis::cmd("HGET").arg(format!("tlog:m:{vdisk}")).arg(name).query(c))
    }

    fn list_meta(&self, vdisk: &str, prefix: &str) -> Result<Vec<(String, Vec<u8>)>> {
        let mut all: Vec<(String, Vec<u8>)> = self.with_conn(|c| redis::cmd("HGETALL").arg(format!("tlog:m:{vdisk}")).query(c))?;
        all.retain(|(k, _)| k.starts_with(prefix));
        all.sort();
        Ok(all)
    }

    fn vdisks(&self) -> Result<Vec<String>> {
        let mut out = Vec::new();
        let mut cursor: u64 = 0;
        for _ in 0..SCAN_MAX_ROUNDS {
            let (next, keys): (u64, Vec<String>) =
                self.with_conn(|c| redis::cmd("SCAN").arg(cursor).arg("MATCH").arg("tlog:h:*").arg("COUNT").arg(SCAN_COUNT).query(c))?;
            out.extend(keys.into_iter().filter_map(|k| k.strip_prefix("tlog:h:").map(String::from)));
            if next == 0 {
                out.sort();
                out.dedup();
                return Ok(out);
            }
            cursor = next;
        }
        Err(self.err(format!("SCAN did not finish in {SCAN_MAX_ROUNDS} rounds")))
    }
}
