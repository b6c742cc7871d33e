//! The DPDK front-end and every `unsafe` block of the crate.
//!
//! [`mmap`] (memory maps of the store's index files) is always built. With the cargo feature
//! `dpdk`: [`ffi`] (bindgen bindings of DPDK 22.11 plus the C shim in `dpdk/shim.c`),
//! [`port`] (EAL, mempool, port and queue setup, statistics) and [`device`] (a smoltcp
//! `Device` over one RX/TX queue pair, handing received mbufs to smoltcp without copying).
//! [`serve`] runs one poll thread per queue, each with its own userspace TCP stack; ARP
//! frames received on one queue are copied to every other queue's stack so all of them learn
//! the peers (the kernel side delivers an ARP reply to one queue only).

pub mod mmap;

#[cfg(feature = "dpdk")]
pub mod device;
#[cfg(feature = "dpdk")]
pub mod ffi;
#[cfg(feature = "dpdk")]
pub mod port;

#[cfg(feature = "dpdk")]
pub use serve_impl::serve;

#[cfg(feature = "dpdk")]
mod serve_impl {
    use super::device::{QueueDevice, QueueStats};
    use super::port::{Eal, Port};
    use crate::config::Config;
    use crate::error::{Error, Result};
    use crate::namespace::Engine;
    use crate::net::stack::Stack;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    /// Serves on the DPDK port of `cfg.dpdk` until `stop` is set: one poll thread and one
    /// smoltcp Interface per queue. Logs per-port and per-queue statistics every
    /// `stats_interval_secs` and at exit.
    pub fn serve(engine: Arc<Engine>, cfg: &Config, stop: Arc<AtomicBool>) -> Result<()> {
        let d = &cfg.dpdk;
        Eal::init(&d.eal_args)?;
        let port = Arc::new(Port::setup(d.port, d.queues, d.rx_descriptors, d.tx_descriptors, d.mbufs, d.mbuf_cache)?);
        let mut scfg = crate::net::tap::stack_config(cfg)?;
        scfg.mac = port.mac();
        tracing::info!("dpdk mode: port {} ({} queues, MAC {}) serving {}:{}", d.port, d.queues, port.mac_string(), scfg.address.0, scfg.port);
        eprintln!("tlogd: listening on {}:{} (userspace TCP on DPDK port {}, {} queues)", scfg.address.0, scfg.port, d.port, d.queues);
        let (arp_txs, arp_rxs): (Vec<_>, Vec<_>) = (0..d.queues).map(|_| crossbeam_channel::bounded::<Vec<u8>>(4096)).unzip();
        let stats: Arc<Mutex<Vec<QueueStats>>> = Arc::new(Mutex::new(vec![QueueStats::default(); d.queues as usize]));
        let mut threads = Vec::new();
        let owners: super::device::FlowOwners = Default::default();
        for (q, arp_rx) in arp_rxs.into_iter().enumerate() {
            let inboxes = arp_txs.clone();
            let owners = owners.clone();
            let (engine, port, stop, stats, scfg) = (engine.clone(), port.clone(), stop.clone(), stats.clone(), scfg.clone());
            let idle_sleep = Duration::from_micros(d.idle_sleep_us);
            threads.push(
                std::thread::Builder::new()
                    .name(format!("dpdk-q{q}"))
                    .spawn(move || {
                        let mut dev = QueueDevice::new(&port, q as u16, arp_rx, inboxes, owners);
                        let mut stack = Stack::new(&mut dev, engine, scfg);
                        let mut idle = 0u32;
                        let mut last_stats = Instant::now();
                        while !stop.load(Ordering::Relaxed) {
                            let work = stack.poll(&mut dev);
                            dev.flush_tx();
                            if work || dev.had_rx() {
                                idle = 0;
                            } else {
                                // Poll mode, but give the core back as soon as a few polls
                                // in a row find nothing: with more poll threads than spare
                                // cores (2-core machines, where clients and flushers share
                                // them) busy polling starves everything else and throughput
                                // collapses. `dpdk.idle_sleep_us` = 0 keeps pure busy polling.
                                idle = idle.saturating_add(1);
                                if idle > 2 && idle_sleep > Duration::ZERO {
                                    std::thread::sleep(idle_sleep);
                                } else if idle > 1 {
                                    std::thread::yield_now();
                                }
                            }
                            if last_stats.elapsed() > Duration::from_millis(500) {
                                if let Ok(mut s) = stats.lock() {
                                    s[q] = dev.stats();
                                }
                                last_stats = Instant::now();
                            }
                        }
                        if let Ok(mut s) = stats.lock() {
                            s[q] = dev.stats();
                        }
                    })
                    .map_err(|e| Error::io("spawn dpdk queue thread", e))?,
            );
        }
        let interval = d.stats_interval_secs;
        let mut last = Instant::now();
        while !stop.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(100));
            if interval > 0 && last.elapsed() >= Duration::from_secs(interval) {
                log_stats(&port, &stats);
                last = Instant::now();
            }
        }
        for t in threads {
            let _ = t.join();
        }
        log_stats(&port, &stats);
        port.stop();
        Ok(())
    }

    fn log_stats(port: &Port, stats: &Mutex<Vec<QueueStats>>) {
        let p = port.stats();
        tracing::info!(
            "dpdk port {}: rx {} packets {} bytes, tx {} packets {} bytes, missed {}, rx errors {}, tx errors {}, rx_nombuf {}",
            port.id(),
            p.ipackets,
            p.ibytes,
            p.opackets,
            p.obytes,
            p.imissed,
            p.ierrors,
            p.oerrors,
            p.rx_nombuf
        );
        if let Ok(s) = stats.lock() {
            for (q, x) in s.iter().enumerate() {
                tracing::info!(
                    "dpdk queue {q}: rx {} packets {} bytes, tx {} packets {} bytes, tx drops {}, mbuf alloc failures {}, arp copies {}, steered {}",
                    x.rx_packets,
                    x.rx_bytes,
                    x.tx_packets,
                    x.tx_bytes,
                    x.tx_drops,
                    x.alloc_failures,
                    x.arp_copies,
                    x.steered
                );
            }
        }
    }
}
