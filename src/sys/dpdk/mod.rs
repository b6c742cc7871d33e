//! The DPDK binding: [`ffi`] (bindgen bindings of DPDK 22.11 plus the C shim in `dpdk/shim.c`),
//! [`port`] (EAL, mempool, port and queue setup, statistics), [`device`] (a smoltcp `Device`
//! over one RX/TX queue pair, handing received mbufs to smoltcp without copying), [`lcore`]
//! (EAL lcores and launching work on them) and [`signals`] (SIGIO only on the poll loops, each
//! queue's to its own loop, and naps that a frame ends). The front-end that drives them is
//! `net::dpdk`.

pub mod device;
pub mod ffi;
pub mod lcore;
pub mod port;
pub mod signals;
