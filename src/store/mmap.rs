//! Memory maps of segment index files (memmap2).
//!
//! memmap2's file-map constructors are `unsafe`: a map's contents change under the program if
//! another process writes or truncates the file. A writable store holds an exclusive lock on
//! `<dir>/LOCK`, so no other tlog process maps the same files. The project keeps every `unsafe`
//! block in `src/net/dpdk/`, so the two calls live in [`crate::net::dpdk::mmap`].

use std::fs::File;

/// Maps `f` read-write (the whole file).
pub fn map_mut(f: &File) -> std::io::Result<memmap2::MmapMut> {
    crate::net::dpdk::mmap::map_mut(f)
}

/// Maps `f` read-only (the whole file).
pub fn map(f: &File) -> std::io::Result<memmap2::Mmap> {
    crate::net::dpdk::mmap::map(f)
}
