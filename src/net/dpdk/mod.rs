//! The DPDK binding and every `unsafe` block of the crate.
//!
//! [`mmap`] (memory maps of the store's index files) is always built; the DPDK poll-mode
//! front-end itself is behind the `dpdk` cargo feature.

pub mod mmap;

#[cfg(feature = "dpdk")]
pub mod ffi;
