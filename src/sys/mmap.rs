//! File memory maps (memmap2), used by the store's segment indexes.
//!
//! memmap2's constructors are `unsafe`: a map's contents change under the program if another
//! process writes or truncates the file. Every `unsafe` block of the crate lives under
//! `src/sys/`.
#![allow(unsafe_code)]

use std::fs::File;

/// Maps `f` read-write.
pub fn map_mut(f: &File) -> std::io::Result<memmap2::MmapMut> {
    // SAFETY: the map is only sound while no one else truncates or rewrites the file. Store
    // directories are owned by one process at a time (BigLog takes an exclusive lock on
    // `<dir>/LOCK` before mapping), and tlog itself only changes an index through this map.
    unsafe { memmap2::MmapMut::map_mut(f) }
}

/// Maps `f` read-only.
pub fn map(f: &File) -> std::io::Result<memmap2::Mmap> {
    // SAFETY: as above; a read-only open (inspect, verify) reads files that a running writer
    // may append to, but a writer never truncates an index (it is preallocated), so the mapped
    // range stays valid; slots are checked by their CRC before use.
    unsafe { memmap2::Mmap::map(f) }
}
