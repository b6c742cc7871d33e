//! Backends: where shards and head records are stored.
//!
//! One [`Backend`] is one shard index's store: a local store directory ([`local`]), one
//! Redis-protocol server ([`redis`]), or memory ([`memory`], for tests). A vdisk's aggregation
//! is written as k+m shards, shard `i` to backend `i`.
//!
//! Durability contract: when [`Backend::put_batch`] returns `Ok`, every shard and head record
//! of the batch survives a crash of the machine holding the backend (fsync'd for `local`;
//! `appendfsync always` or WAITAOF for `redis`). `get` never returns bytes that were not put
//! (the shard header's checksum is verified above this layer too).

pub mod local;
pub mod memory;
pub mod redis;

use crate::error::Result;

/// An aggregation's key: BLAKE3-256 of its sealed bytes.
pub type Key = [u8; 32];

/// A store for one shard index.
pub trait Backend: Send + Sync {
    /// Human-readable name for logs and errors, e.g. "local /data/store0".
    fn name(&self) -> String;

    /// Stores the shards (`key → bytes`) and head records (`vdisk → bytes`) durably; returns
    /// after all are durable. Head records of a vdisk replace older ones only when the new
    /// record's height (bytes 8..16 of the encoded head, see `flush::chain`) is greater.
    fn put_batch(&self, shards: &[(&Key, &[u8])], heads: &[(&str, &[u8])]) -> Result<()>;

    /// Stores one shard durably.
    fn put(&self, key: &Key, shard: &[u8]) -> Result<()> {
        self.put_batch(&[(key, shard)], &[])
    }

    /// The shard stored under `key`, if any.
    fn get(&self, key: &Key) -> Result<Option<Vec<u8>>>;

    /// Removes the shard stored under `key` (no error when absent).
    fn delete(&self, key: &Key) -> Result<()>;

    /// The newest head record of `vdisk`, if any.
    fn get_head(&self, vdisk: &str) -> Result<Option<Vec<u8>>>;
}

/// Height stored in an encoded head record (bytes 8..16, little-endian); 0 when too short.
pub fn head_height(head: &[u8]) -> u64 {
    if head.len() < 16 {
        return 0;
    }
    let mut a = [0u8; 8];
    a.copy_from_slice(&head[8..16]);
    u64::from_le_bytes(a)
}
