//! The embedded store: BigLog segments ([`biglog`], [`readers`]). See DESIGN.md §8.
//!
//! The Minotaur time-series layer of seed 001 (recorder, cursor, merge over files in a local
//! folder) is not here: what history needs (the metadata index, checkpoints) must be readable
//! from the backends by any host and by `tlog restore` with tlogd gone, which a local folder of
//! committed files cannot give, and nothing in the pipeline used it.

pub mod biglog;
pub mod format;
pub mod readers;

pub use biglog::{BigLog, BigLogOptions, Damage, EntryInfo, SegmentSummary};
pub use readers::{verify, DataReader, IndexReader, Record, Scanner, Streamer};
