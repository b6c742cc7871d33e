//! In-memory backend for unit tests; can be switched off to simulate an outage.

use super::{head_height, Backend, Key};
use crate::error::{Error, Result};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

/// Shards and heads in hash maps. `set_down(true)` makes every call fail.
#[derive(Default)]
pub struct MemoryBackend {
    name: String,
    shards: Mutex<HashMap<Key, Vec<u8>>>,
    heads: Mutex<HashMap<String, Vec<u8>>>,
    down: AtomicBool,
}

impl MemoryBackend {
    /// A new empty backend named `name`.
    pub fn new(name: &str) -> Self {
        MemoryBackend { name: name.into(), ..Default::default() }
    }

    /// Simulates an outage (true) or recovery (false).
    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    /// Overwrites a stored shard (to simulate corruption).
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

    fn check(&self) -> Result<()> {
        if self.down.load(Ordering::SeqCst) {
            return Err(Error::Backend { backend: self.name(), detail: "down (simulated)".into() });
        }
        Ok(())
    }
}

fn poisoned(name: &str) -> Error {
    Error::Backend { backend: name.into(), detail: "lock poisoned".into() }
}

impl Backend for MemoryBackend {
    fn name(&self) -> String {
        format!("memory {}", self.name)
    }

    fn put_batch(&self, shards: &[(&Key, &[u8])], heads: &[(&str, &[u8])]) -> Result<()> {
        self.check()?;
        let mut m = self.shards.lock().map_err(|_| poisoned(&self.name))?;
        for (k, v) in shards {
            m.insert(**k, v.to_vec());
        }
        let mut h = self.heads.lock().map_err(|_| poisoned(&self.name))?;
        for (vd, v) in heads {
            let newer = h.get(*vd).map(|old| head_height(v) > head_height(old)).unwrap_or(true);
            if newer {
                h.insert(vd.to_string(), v.to_vec());
            }
        }
        Ok(())
    }

    fn get(&self, key: &Key) -> Result<Option<Vec<u8>>> {
        self.check()?;
        Ok(self.shards.lock().map_err(|_| poisoned(&self.name))?.get(key).cloned())
    }

    fn delete(&self, key: &Key) -> Result<()> {
        self.check()?;
        self.shards.lock().map_err(|_| poisoned(&self.name))?.remove(key);
        Ok(())
    }

    fn get_head(&self, vdisk: &str) -> Result<Option<Vec<u8>>> {
        self.check()?;
        Ok(self.heads.lock().map_err(|_| poisoned(&self.name))?.get(vdisk).cloned())
    }
}
