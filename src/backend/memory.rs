//! In-memory backend for tests, with injectable faults: down (every call fails), refusing
//! writes, slow (a delay per call), hung (writes block until released or a bound passes, as a
//! frozen server would until its client's timeout) and corrupting (stored shards get a flipped
//! byte).

use super::{Backend, Batch, Key};
use crate::error::{Error, Result};
use std::collections::BTreeMap;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

/// Per vdisk: the head's (epoch, height) and record.
type Heads = HashMap<String, ((u64, u64), Vec<u8>)>;

/// Shards and heads in hash maps, with faults switched on and off by the test.
#[derive(Default)]
pub struct MemoryBackend {
    name: String,
    shards: Mutex<HashMap<Key, Vec<u8>>>,
    heads: Mutex<Heads>,
    metas: Mutex<HashMap<String, BTreeMap<String, Vec<u8>>>>,
    down: AtomicBool,
    refuse_writes: AtomicBool,
    corrupt_writes: AtomicBool,
    delay_us: AtomicU64,
    hang: (Mutex<bool>, Condvar),
    /// How long a hung write waits before failing with a timeout (ms).
    hang_bound_ms: AtomicU64,
    writes: AtomicU64,
    /// Writer epochs by vdisk.
    fences: Mutex<HashMap<String, u64>>,
}

impl MemoryBackend {
    /// A new empty backend named `name`.
    pub fn new(name: &str) -> Self {
        let b = MemoryBackend { name: name.into(), ..Default::default() };
        b.hang_bound_ms.store(10_000, Ordering::SeqCst);
        b
    }

    /// Simulates an outage (true) or recovery (false): every call fails.
    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    /// Writes fail (e.g. a full disk) while reads work.
    pub fn set_refuse_writes(&self, refuse: bool) {
        self.refuse_writes.store(refuse, Ordering::SeqCst);
    }

    /// Shards written from now on are stored with their last byte flipped.
    pub fn set_corrupt_writes(&self, corrupt: bool) {
        self.corrupt_writes.store(corrupt, Ordering::SeqCst);
    }

    /// Every call sleeps `d` first.
    pub fn set_delay(&self, d: Duration) {
        self.delay_us.store(d.as_micros() as u64, Ordering::SeqCst);
    }

    /// Writes block until `set_hung(false)`, or fail after `bound` (a client's timeout).
    pub fn set_hung(&self, hung: bool, bound: Duration) {
        self.hang_bound_ms.store(bound.as_millis() as u64, Ordering::SeqCst);
        if let Ok(mut h) = self.hang.0.lock() {
            *h = hung;
            self.hang.1.notify_all();
        }
    }

    /// Overwrites a stored shard (to simulate corruption at rest).
    pub fn tamper(&self, key: &Key, f: impl FnOnce(&mut Vec<u8>)) {
        if let Ok(mut m) = self.shards.lock() {
            if let Some(v) = m.get_mut(key) {
                f(v);
            }
        }
    }

    /// Number of shards stored.
    pub fn len(&self) -> usize {
        self.shards.lock().map(|m| m.len()).unwrap_or(0)
    }

    /// True when no shard is stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether a shard is stored under `key`.
    pub fn has(&self, key: &Key) -> bool {
        self.shards.lock().map(|m| m.contains_key(key)).unwrap_or(false)
    }

    /// Successful `put_batch` calls so far.
    pub fn writes(&self) -> u64 {
        self.writes.load(Ordering::SeqCst)
    }

    fn err(&self, detail: &str) -> Error {
        Error::Backend { backend: self.name(), detail: detail.into() }
    }

    fn check(&self) -> Result<()> {
        let d = self.delay_us.load(Ordering::SeqCst);
        if d > 0 {
            std::thread::sleep(Duration::from_micros(d));
        }
        if self.down.load(Ordering::SeqCst) {
            return Err(self.err("down (simulated)"));
        }
        Ok(())
    }

    fn wait_unhung(&self) -> Result<()> {
        let bound = Duration::from_millis(self.hang_bound_ms.load(Ordering::SeqCst));
        let end = Instant::now() + bound;
        let mut h = self.hang.0.lock().map_err(|_| self.err("lock poisoned"))?;
        while *h {
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(self.err("timed out (simulated hang)"));
            }
            h = self.hang.1.wait_timeout(h, left).map_err(|_| self.err("lock poisoned"))?.0;
        }
        Ok(())
    }
}

impl Backend for MemoryBackend {
    fn name(&self) -> String {
        format!("memory {}", self.name)
    }

    fn write(&self, b: &Batch<'_>) -> Result<()> {
        let (shards, heads) = (&b.shards, &b.heads);
        self.check()?;
        self.wait_unhung()?;
        if self.refuse_writes.load(Ordering::SeqCst) {
            return Err(self.err("write refused (simulated)"));
        }
        let corrupt = self.corrupt_writes.load(Ordering::SeqCst);
        let mut m = self.shards.lock().map_err(|_| self.err("lock poisoned"))?;
        for s in shards {
            let mut v = s.bytes.to_vec();
            if corrupt {
                if let Some(b) = v.last_mut() {
                    *b ^= 0x40;
                }
            }
            m.insert(*s.key, v);
        }
        let mut hm = self.heads.lock().map_err(|_| self.err("lock poisoned"))?;
        for h in heads {
            let order = (h.epoch, h.height);
            if hm.get(h.vdisk).map(|(o, _)| order >= *o).unwrap_or(true) {
                hm.insert(h.vdisk.to_string(), (order, h.record.to_vec()));
            }
        }
        let mut mm = self.metas.lock().map_err(|_| self.err("lock poisoned"))?;
        for m in &b.metas {
            let v = mm.entry(m.vdisk.to_string()).or_default();
            match m.value {
                Some(x) => {
                    v.insert(m.name.to_string(), x.to_vec());
                }
                None => {
                    v.remove(m.name);
                }
            }
        }
        drop(mm);
        for k in &b.deletes {
            m.remove(*k);
        }
        for v in &b.forget {
            hm.remove(*v);
            self.metas.lock().map_err(|_| self.err("lock poisoned"))?.remove(*v);
        }
        self.writes.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    fn fence(&self, vdisk: &str, epoch: u64) -> Result<u64> {
        self.check()?;
        self.wait_unhung()?;
        if epoch > 0 && self.refuse_writes.load(Ordering::SeqCst) {
            return Err(self.err("write refused (simulated)"));
        }
        let mut f = self.fences.lock().map_err(|_| self.err("lock poisoned"))?;
        let cur = f.entry(vdisk.to_string()).or_insert(0);
        *cur = (*cur).max(epoch);
        Ok(*cur)
    }

    fn write_fenced(&self, b: &Batch<'_>, fences: &[(&str, u64)]) -> Result<super::Refused> {
        // The fences' lock is held through the write: a fence cannot land between check and write.
        let f = self.fences.lock().map_err(|_| self.err("lock poisoned"))?;
        let refused: super::Refused = fences.iter().filter_map(|(v, e)| f.get(*v).filter(|held| **held > *e).map(|held| (v.to_string(), *held))).collect();
        if refused.is_empty() {
            self.write(b)?;
        } else {
            self.write(&super::without(b, &refused))?;
        }
        Ok(refused)
    }

    fn get_meta(&self, vdisk: &str, name: &str) -> Result<Option<Vec<u8>>> {
        self.check()?;
        Ok(self.metas.lock().map_err(|_| self.err("lock poisoned"))?.get(vdisk).and_then(|m| m.get(name)).cloned())
    }

    fn list_meta(&self, vdisk: &str, prefix: &str) -> Result<Vec<(String, Vec<u8>)>> {
        self.check()?;
        let g = self.metas.lock().map_err(|_| self.err("lock poisoned"))?;
        Ok(g.get(vdisk)
            .map(|m| m.range(prefix.to_string()..).take_while(|(k, _)| k.starts_with(prefix)).map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default())
    }

    fn get(&self, key: &Key) -> Result<Option<Vec<u8>>> {
        self.check()?;
        Ok(self.shards.lock().map_err(|_| self.err("lock poisoned"))?.get(key).cloned())
    }

    fn delete(&self, key: &Key) -> Result<()> {
        self.check()?;
        self.shards.lock().map_err(|_| self.err("lock poisoned"))?.remove(key);
        Ok(())
    }

    fn get_head(&self, vdisk: &str) -> Result<Option<Vec<u8>>> {
        self.check()?;
        Ok(self.heads.lock().map_err(|_| self.err("lock poisoned"))?.get(vdisk).map(|(_, r)| r.clone()))
    }

    fn vdisks(&self) -> Result<Vec<String>> {
        self.check()?;
        let mut v: Vec<String> = self.heads.lock().map_err(|_| self.err("lock poisoned"))?.keys().cloned().collect();
        v.sort();
        Ok(v)
    }
}

#[cfg(test)]
pub(crate) mod fence_tests {
    use super::*;
    use crate::backend::{Batch, HeadWrite, ShardWrite};

    /// The fencing rule, for the memory and the local store alike.
    pub(crate) fn check_fencing(b: &dyn Backend) {
        assert_eq!(b.fence("a", 0).unwrap(), 0);
        assert_eq!(b.fence("a", 3).unwrap(), 3);
        assert_eq!(b.fence("a", 2).unwrap(), 3, "an older epoch does not take it back");
        assert_eq!(b.fence("a", 0).unwrap(), 3);
        let (ka, kb) = ([1u8; 32], [2u8; 32]);
        let batch = Batch {
            shards: vec![ShardWrite { vdisk: "a", epoch: 2, key: &ka, bytes: b"old" }, ShardWrite { vdisk: "b", epoch: 1, key: &kb, bytes: b"other" }],
            heads: vec![HeadWrite { vdisk: "a", epoch: 2, height: 9, record: b"h" }],
            ..Default::default()
        };
        let refused = b.write_fenced(&batch, &[("a", 2), ("b", 1)]).unwrap();
        assert_eq!(refused, vec![("a".to_string(), 3)]);
        assert_eq!(b.get(&ka).unwrap(), None, "a fenced writer's shard was stored");
        assert_eq!(b.get_head("a").unwrap(), None, "a fenced writer's head was stored");
        assert_eq!(b.get(&kb).unwrap().as_deref(), Some(&b"other"[..]), "another vdisk's shard in the same batch was lost");
        assert!(b.write_fenced(&batch, &[("a", 3), ("b", 1)]).unwrap().is_empty());
        assert_eq!(b.get(&ka).unwrap().as_deref(), Some(&b"old"[..]));
    }

    #[test]
    fn memory_backend_fences() {
        check_fencing(&MemoryBackend::new("m"));
    }
}
