//! The `redis` backend: one Redis-protocol server (Redis, Valkey, ardb, kvrocks) per shard
//! index, through the `redis` crate's synchronous connection.
//!
//! Keys: `tlog:s:<32-byte key>` holds a shard; `tlog:h:<vdisk>` a head record and
//! `tlog:hh:<vdisk>` its height (so an older head never replaces a newer one: the two are set
//! by one Lua script only when the height grows). A batch is one pipelined round trip.
//!
//! Durability ([`Durability`]): `appendfsync-always` checks at connect that the server runs with
//! `appendonly yes` and `appendfsync always` (so a reply means fsync'd); `waitaof` sends
//! `WAITAOF 1 0 <timeout>` after each batch (Redis 7.2+); `none` trusts the reply alone (not
//! durable: only for throwaway setups).

use super::{Backend, Key};
use crate::error::{Error, Result};
use std::sync::Mutex;
use std::time::Duration;

/// How a reply is made durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Durability {
    /// The server runs `appendonly yes` + `appendfsync always` (checked at connect).
    AppendfsyncAlways,
    /// `WAITAOF 1 0 timeout` after every batch.
    Waitaof,
    /// No durability check (not durable).
    None,
}

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
    /// Connect, read and write timeout.
    pub timeout: Duration,
}

/// One Redis-protocol server as a backend. Reconnects on the next call after an error.
pub struct RedisBackend {
    s: RedisSettings,
    conn: Mutex<Option<redis::Connection>>,
}

const SET_HEAD: &str = "local h = tonumber(redis.call('GET', KEYS[2]) or '-1') \
if tonumber(ARGV[2]) > h then redis.call('SET', KEYS[1], ARGV[1]); redis.call('SET', KEYS[2], ARGV[2]) end return 1";

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
        let info = redis::ConnectionInfo {
            addr: redis::ConnectionAddr::Tcp(host.trim_matches(['[', ']']).to_string(), port),
            redis: redis::RedisConnectionInfo { db: self.s.db, username: None, password: self.s.password.clone(), protocol: redis::ProtocolVersion::RESP2 },
        };
        let client = redis::Client::open(info).map_err(|e| self.err(e))?;
        let mut c = client.get_connection_with_timeout(self.s.timeout).map_err(|e| self.err(format!("connect: {e}")))?;
        c.set_read_timeout(Some(self.s.timeout)).map_err(|e| self.err(e))?;
        c.set_write_timeout(Some(self.s.timeout)).map_err(|e| self.err(e))?;
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

    /// Runs `f` on the connection (connecting first if needed). An I/O error drops the
    /// connection; the operation is retried on a new connection up to 3 times in all, since
    /// every operation here is idempotent (SET, max-height EVAL, GET, DEL). This also covers
    /// EINTR, which signals of DPDK's EAL threads can cause in blocking socket calls.
    fn with_conn<T>(&self, f: impl Fn(&mut redis::Connection) -> redis::RedisResult<T>) -> Result<T> {
        let mut g = self.conn.lock().map_err(|_| self.err("connection lock poisoned"))?;
        let mut last = None;
        for _ in 0..3 {
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
                    let io = e.is_io_error();
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

impl Backend for RedisBackend {
    fn name(&self) -> String {
        format!("redis {}", self.s.address)
    }

    fn put_batch(&self, shards: &[(&Key, &[u8])], heads: &[(&str, &[u8])]) -> Result<()> {
        let durability = self.s.durability;
        let timeout_ms = self.s.timeout.as_millis() as u64;
        let waited: Option<Vec<i64>> = self.with_conn(|c| {
            let mut p = redis::pipe();
            for (k, v) in shards {
                p.cmd("SET").arg(shard_key(k)).arg(*v).ignore();
            }
            for (vd, v) in heads {
                p.cmd("EVAL").arg(SET_HEAD).arg(2).arg(format!("tlog:h:{vd}")).arg(format!("tlog:hh:{vd}")).arg(*v).arg(super::head_height(v)).ignore();
            }
            if durability == Durability::Waitaof {
                p.cmd("WAITAOF").arg(1).arg(0).arg(timeout_ms);
                let r: (Vec<i64>,) = p.query(c)?;
                Ok(Some(r.0))
            } else {
                p.query::<()>(c)?;
                Ok(None)
            }
        })?;
        if let Some(w) = waited {
            if w.first().copied().unwrap_or(0) < 1 {
                return Err(self.err("WAITAOF: the local append-only file was not fsync'd in time"));
            }
        }
        Ok(())
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
}
