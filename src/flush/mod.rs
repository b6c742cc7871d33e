//! Sealing: aggregation encode → lz4 → AES-256-GCM → BLAKE3 key → Reed-Solomon k+m shards with
//! headers (DESIGN.md §6), and the reverse. Nothing here knows which backend is in use.

pub mod aggregate;
pub mod chain;
pub mod erasure;
pub mod seal;

pub use aggregate::Aggregation;
pub use chain::HeadRecord;
pub use erasure::{ShardHeader, SHARD_MAGIC};
pub use seal::{SealKey, Sealed, Sealer};
