//! History (DESIGN.md §12): what a vdisk's log holds and how to read it back. [`restore`]
//! rebuilds an image from the backends (finding the head, walking the chain, unsealing with up
//! to m backends lost); [`index`] is the per-vdisk metadata index the engine appends on every
//! flush; [`scrub`] checks every shard and head record and repairs what is bad.

pub mod index;
pub mod restore;
pub mod scrub;
