//! Sealing, the codec of the data path (DESIGN.md §6): aggregation encode ([`aggregate`]) →
//! lz4 → AES-256-GCM → BLAKE3 key → Reed-Solomon k+m shards with headers ([`erasure`]), and the
//! reverse ([`sealer`]); the head record and the chain's reads across backends ([`chain`]).
//! Nothing here knows which backend is in use.

pub mod aggregate;
pub mod chain;
pub mod erasure;
pub mod sealer;

pub use aggregate::Aggregation;
pub use chain::{fetch_aggregation, fetch_shards, find_head, HeadRecord};
pub use erasure::{ShardHeader, SHARD_MAGIC};
pub use sealer::{SealContext, SealKey, SealScratch, Sealed, Sealer};
