//! Every `unsafe` block of the crate, behind safe functions (mio's `sys/`, smoltcp's
//! `phy/sys/`): memory maps of files ([`mmap`]), writeback of a file range ([`file`]), the tools' SIGPIPE disposition ([`process`]) and, with the cargo feature `dpdk`, the DPDK
//! binding ([`dpdk`]: bindgen FFI, EAL and port setup, the queue device, lcores, signals).
//! Each file that holds `unsafe` says `#![allow(unsafe_code)]`; the crate denies it everywhere
//! else, and each block carries a `SAFETY:` comment.

#[cfg(feature = "dpdk")]
pub mod dpdk;
pub mod file;
pub mod mmap;
pub mod process;
