//! Backends: where shards and head records are stored.
//!
//! One [`Backend`] is one shard index's store: a local store directory ([`local`]), one
//! Redis-protocol server ([`redis`]), or memory ([`memory`], for tests, with injectable faults).
//! A vdisk's aggregation is written as k+m shards, shard `i` to backend `i`. [`Unusable`] stands
//! for a backend that could not be opened (readers tolerate up to m of them); [`Reopening`]
//! wraps one that tlogd tries to open again from time to time (a degraded start).
//!
//! Durability contract: when [`Backend::write`] returns `Ok`, every shard, head record and
//! metadata record of the batch survives a crash of the machine holding the backend (fsync'd for `local`;
//! `appendfsync always` or WAITAOF for `redis`). `get` never returns bytes that were not put
//! (the shard header's checksum is verified above this layer too). Every operation is bounded
//! in time (a stalled Redis server answers with a timeout error, never a hang).

pub mod local;
pub mod memory;
pub mod redis;

use crate::error::{Error, Result};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

/// An aggregation's key: BLAKE3-256 of its sealed bytes.
pub type Key = [u8; 32];

/// One shard to store: shard bytes of an aggregation of `vdisk` sealed in `epoch`.
#[derive(Clone, Copy, Debug)]
pub struct ShardWrite<'a> {
    /// The vdisk the aggregation belongs to.
    pub vdisk: &'a str,
    /// The writer epoch that sealed it.
    pub epoch: u64,
    /// The aggregation's key.
    pub key: &'a Key,
    /// The encoded shard (header, checksum, data).
    pub bytes: &'a [u8],
}

/// One head record to store. A backend keeps, per vdisk, the record with the greatest
/// `(epoch, height)`: an older one arriving late never replaces a newer one; one of an equal
/// order (the same head written again, by a repair) replaces it.
#[derive(Clone, Copy, Debug)]
pub struct HeadWrite<'a> {
    /// The vdisk.
    pub vdisk: &'a str,
    /// Epoch of the writer that wrote it.
    pub epoch: u64,
    /// Chain height of the aggregation it names (1 for the first).
    pub height: u64,
    /// The encoded record (`seal::HeadRecord`), opaque here.
    pub record: &'a [u8],
}

/// One metadata record of a vdisk (its index entries and pages, checkpoints, ...), replicated
/// to every backend: `value` sets it, `None` deletes it. Names are short ASCII paths such as
/// `i/00000000000000000042`.
#[derive(Clone, Copy, Debug)]
pub struct MetaWrite<'a> {
    /// The vdisk.
    pub vdisk: &'a str,
    /// The record's name within the vdisk (at most 255 bytes).
    pub name: &'a str,
    /// The bytes, or `None` to delete.
    pub value: Option<&'a [u8]>,
}

/// What one durable write holds: shards, head records and metadata records, all durable
/// together when [`Backend::write`] returns.
#[derive(Clone, Debug, Default)]
pub struct Batch<'a> {
    /// Shards.
    pub shards: Vec<ShardWrite<'a>>,
    /// Head records.
    pub heads: Vec<HeadWrite<'a>>,
    /// Metadata records (set or delete), applied in order.
    pub metas: Vec<MetaWrite<'a>>,
    /// Shards removed (no error when absent), after the writes above.
    pub deletes: Vec<&'a Key>,
    /// Vdisks whose head record and every metadata record go (`tlog delete`), last.
    pub forget: Vec<&'a str>,
}

impl Batch<'_> {
    /// Whether the batch holds nothing.
    pub fn is_empty(&self) -> bool {
        self.shards.is_empty() && self.heads.is_empty() && self.metas.is_empty() && self.deletes.is_empty() && self.forget.is_empty()
    }
}

/// What [`Backend::reclaim`] gave back.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Reclaimed {
    /// Store segments freed.
    pub segments: u64,
    /// Bytes of files freed (data and index), before the bytes the live records took anew.
    pub bytes: u64,
    /// Live records rewritten into the hot segment so their old segment could go.
    pub records_copied: u64,
}

/// Vdisks a fenced write refused: (vdisk, the newer writer epoch the backend holds).
pub type Refused = Vec<(String, u64)>;

/// Keeps the records of `batch` whose vdisk is not in `refused` (a fenced write's filter).
pub fn without<'a>(batch: &Batch<'a>, refused: &Refused) -> Batch<'a> {
    let out = |v: &str| refused.iter().any(|(r, _)| r == v);
    Batch {
        shards: batch.shards.iter().filter(|s| !out(s.vdisk)).copied().collect(),
        heads: batch.heads.iter().filter(|h| !out(h.vdisk)).copied().collect(),
        metas: batch.metas.iter().filter(|m| !out(m.vdisk)).copied().collect(),
        deletes: batch.deletes.clone(),
        forget: batch.forget.clone(),
    }
}

/// The name of the metadata record that holds a vdisk's writer epoch in stores without a
/// native key for it (the local store; Redis keeps `tlog:we:<vdisk>`).
pub const WRITER_EPOCH: &str = "w/epoch";

/// A store for one shard index.
///
/// Writer fencing (DESIGN.md §5, §15): every backend keeps, per vdisk, the newest writer epoch
/// that took it ([`Backend::fence`], a compare-and-set), and a writer's batch
/// ([`Backend::write_fenced`]) is stored only for vdisks whose epoch there is not newer than the
/// writer's, checked atomically with the write. A tlogd that takes a vdisk over fences enough
/// backends that the previous writer can no longer reach its write quorum.
pub trait Backend: Send + Sync {
    /// Human-readable name for logs and errors, e.g. "local /data/store0".
    fn name(&self) -> String;

    /// Stores everything in the batch durably; returns after all of it is durable.
    fn write(&self, batch: &Batch<'_>) -> Result<()>;

    /// Takes writer epoch `epoch` of `vdisk` here if this backend holds a smaller one (or none),
    /// atomically and durably; returns the epoch it holds afterwards: `epoch` when taken, a
    /// greater one when a newer writer holds the vdisk. `epoch` 0 only reads it.
    fn fence(&self, vdisk: &str, epoch: u64) -> Result<u64>;

    /// [`Backend::write`] of a writer's batch: the records of each vdisk in `fences` (vdisk,
    /// the epoch that wrote them) are stored only if this backend holds no newer writer epoch
    /// for it, checked atomically with the write; the other records are stored as usual.
    /// Returns the vdisks refused, with the epoch the backend holds.
    fn write_fenced(&self, batch: &Batch<'_>, fences: &[(&str, u64)]) -> Result<Refused>;

    /// Stores shards and head records durably ([`Backend::write`] without metadata).
    fn put_batch(&self, shards: &[ShardWrite<'_>], heads: &[HeadWrite<'_>]) -> Result<()> {
        self.write(&Batch { shards: shards.to_vec(), heads: heads.to_vec(), ..Default::default() })
    }

    /// The metadata record `name` of `vdisk`, if any.
    fn get_meta(&self, vdisk: &str, name: &str) -> Result<Option<Vec<u8>>>;

    /// Every metadata record of `vdisk` whose name starts with `prefix`, sorted by name.
    fn list_meta(&self, vdisk: &str, prefix: &str) -> Result<Vec<(String, Vec<u8>)>>;

    /// The shard stored under `key`, if any.
    fn get(&self, key: &Key) -> Result<Option<Vec<u8>>>;

    /// Removes the shard stored under `key` (no error when absent).
    fn delete(&self, key: &Key) -> Result<()>;

    /// The newest head record of `vdisk`, if any.
    fn get_head(&self, vdisk: &str) -> Result<Option<Vec<u8>>>;

    /// Every vdisk with a head record here.
    fn vdisks(&self) -> Result<Vec<String>>;

    /// Gives back the space of what was deleted, where the backend does not by itself (a local
    /// store frees or compacts old segments; Redis frees memory at `DEL`). Default: nothing to
    /// do.
    fn reclaim(&self) -> Result<Reclaimed> {
        Ok(Reclaimed::default())
    }
}

/// A backend that cannot be used (a store directory missing or damaged, a bad address):
/// every call fails with the reason.
pub struct Unusable {
    name: String,
    reason: String,
}

impl Unusable {
    /// An unusable backend named `name` (e.g. "local /data/store/3"), failing with `reason`.
    pub fn new(name: impl Into<String>, reason: impl Into<String>) -> Unusable {
        Unusable { name: name.into(), reason: reason.into() }
    }

    /// Why it is unusable.
    pub fn reason(&self) -> &str {
        &self.reason
    }

    fn err<T>(&self) -> Result<T> {
        Err(Error::Backend { backend: self.name.clone(), detail: format!("unusable: {}", self.reason) })
    }
}

impl Backend for Unusable {
    fn name(&self) -> String {
        self.name.clone()
    }
    fn write(&self, _: &Batch<'_>) -> Result<()> {
        self.err()
    }
    fn fence(&self, _: &str, _: u64) -> Result<u64> {
        self.err()
    }
    fn write_fenced(&self, _: &Batch<'_>, _: &[(&str, u64)]) -> Result<Refused> {
        self.err()
    }
    fn get_meta(&self, _: &str, _: &str) -> Result<Option<Vec<u8>>> {
        self.err()
    }
    fn list_meta(&self, _: &str, _: &str) -> Result<Vec<(String, Vec<u8>)>> {
        self.err()
    }
    fn get(&self, _: &Key) -> Result<Option<Vec<u8>>> {
        self.err()
    }
    fn delete(&self, _: &Key) -> Result<()> {
        self.err()
    }
    fn get_head(&self, _: &str) -> Result<Option<Vec<u8>>> {
        self.err()
    }
    fn vdisks(&self) -> Result<Vec<String>> {
        self.err()
    }
}

/// Opens the backend behind a [`Reopening`].
pub type Opener = Box<dyn Fn() -> Result<Arc<dyn Backend>> + Send + Sync>;

/// A backend that could not be opened at start: every call fails with the last reason until
/// an attempt to open it (at most one per `interval`, made by the call that finds it due)
/// succeeds; from then on calls go to the opened backend. Shards it missed meanwhile are in
/// the repair queue.
pub struct Reopening {
    name: String,
    open: Opener,
    interval: Duration,
    inner: RwLock<Option<Arc<dyn Backend>>>,
    state: Mutex<(Instant, String)>,
}

impl Reopening {
    /// Wraps a backend named `name` that failed to open with `reason`; `open` is tried again
    /// every `interval`.
    pub fn new(name: impl Into<String>, reason: impl Into<String>, interval: Duration, open: Opener) -> Reopening {
        Reopening { name: name.into(), open, interval, inner: RwLock::new(None), state: Mutex::new((Instant::now(), reason.into())) }
    }

    /// The opened backend, trying to open it if an attempt is due.
    fn backend(&self) -> Result<Arc<dyn Backend>> {
        if let Some(b) = self.inner.read().map_err(|_| self.poisoned())?.as_ref() {
            return Ok(b.clone());
        }
        let mut st = self.state.lock().map_err(|_| self.poisoned())?;
        if let Some(b) = self.inner.read().map_err(|_| self.poisoned())?.as_ref() {
            return Ok(b.clone());
        }
        if st.0.elapsed() >= self.interval {
            st.0 = Instant::now();
            match (self.open)() {
                Ok(b) => {
                    tracing::warn!(backend = %self.name, "unusable backend opened: it takes writes again and repair fills in what it missed");
                    *self.inner.write().map_err(|_| self.poisoned())? = Some(b.clone());
                    return Ok(b);
                }
                Err(e) => {
                    let why = e.to_string();
                    if why != st.1 {
                        tracing::warn!(backend = %self.name, "backend still unusable: {why}");
                    }
                    st.1 = why;
                }
            }
        }
        Err(Error::Backend { backend: self.name.clone(), detail: format!("unusable: {}", st.1) })
    }

    /// Whether the backend has been opened.
    pub fn is_open(&self) -> bool {
        self.inner.read().map(|g| g.is_some()).unwrap_or(false)
    }

    fn poisoned(&self) -> Error {
        Error::Backend { backend: self.name.clone(), detail: "lock poisoned".into() }
    }
}

impl Backend for Reopening {
    fn name(&self) -> String {
        self.name.clone()
    }
    fn write(&self, batch: &Batch<'_>) -> Result<()> {
        self.backend()?.write(batch)
    }
    fn fence(&self, vdisk: &str, epoch: u64) -> Result<u64> {
        self.backend()?.fence(vdisk, epoch)
    }
    fn write_fenced(&self, batch: &Batch<'_>, fences: &[(&str, u64)]) -> Result<Refused> {
        self.backend()?.write_fenced(batch, fences)
    }
    fn get_meta(&self, vdisk: &str, name: &str) -> Result<Option<Vec<u8>>> {
        self.backend()?.get_meta(vdisk, name)
    }
    fn list_meta(&self, vdisk: &str, prefix: &str) -> Result<Vec<(String, Vec<u8>)>> {
        self.backend()?.list_meta(vdisk, prefix)
    }
    fn get(&self, key: &Key) -> Result<Option<Vec<u8>>> {
        self.backend()?.get(key)
    }
    fn delete(&self, key: &Key) -> Result<()> {
        self.backend()?.delete(key)
    }
    fn get_head(&self, vdisk: &str) -> Result<Option<Vec<u8>>> {
        self.backend()?.get_head(vdisk)
    }
    fn vdisks(&self) -> Result<Vec<String>> {
        self.backend()?.vdisks()
    }

    fn reclaim(&self) -> Result<Reclaimed> {
        self.backend()?.reclaim()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    #[test]
    fn reopening_fails_with_the_reason_until_it_opens() {
        let ready = Arc::new(AtomicBool::new(false));
        let r = ready.clone();
        let b = Reopening::new(
            "memory x",
            "missing",
            Duration::ZERO,
            Box::new(move || {
                if r.load(Ordering::SeqCst) {
                    Ok(Arc::new(memory::MemoryBackend::new("x")) as Arc<dyn Backend>)
                } else {
                    Err(Error::NotFound("still missing".into()))
                }
            }),
        );
        let e = b.get_head("v").unwrap_err().to_string();
        assert!(e.contains("still missing"), "{e}");
        assert!(!b.is_open());
        ready.store(true, Ordering::SeqCst);
        assert_eq!(b.get_head("v").unwrap(), None);
        assert!(b.is_open());
        let u = Unusable::new("local /d", "bad magic");
        assert!(u.get(&[0; 32]).unwrap_err().to_string().contains("bad magic"));
    }
}
