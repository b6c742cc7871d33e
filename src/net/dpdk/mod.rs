//! The `dpdk` front-end (cargo feature `dpdk`): one poll loop per NIC queue, each on its own
//! EAL lcore with its own userspace TCP stack ([`crate::net::stack`]); ARP frames received on
//! one queue are copied to every other queue's stack so all of them learn the peers (the kernel
//! side delivers an ARP reply to one queue only). The binding itself (FFI, port, device, lcores,
//! signals) and all of its `unsafe` code is [`crate::sys::dpdk`].

#[cfg(feature = "dpdk")]
pub use serve_impl::serve;

#[cfg(feature = "dpdk")]
mod serve_impl {
    use crate::config::Config;
    use crate::error::{Error, Result};
    use crate::net::stack::Stack;
    use crate::net::Factory;
    use crate::sys::dpdk::device::{QueueDevice, QueueStats};
    use crate::sys::dpdk::lcore;
    use crate::sys::dpdk::port::{Eal, Port};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    /// Serves on the DPDK port of `cfg.dpdk` until `stop` is set: one poll loop and one
    /// smoltcp Interface per queue, each on its own EAL lcore (queue 0 on the main lcore, in
    /// this thread; queue q on the q-th worker lcore, see [`crate::sys::dpdk::lcore`]). Logs per-port and
    /// per-queue statistics every `stats_interval_secs` and at exit.
    ///
    /// Errors: EAL or port setup failures, and fewer lcores than `dpdk.queues`.
    pub fn serve(factory: Factory, cfg: &Config, stop: Arc<AtomicBool>, published: Arc<crate::net::FrontendStats>) -> Result<()> {
        let d = &cfg.dpdk;
        Eal::init(&d.eal_args)?;
        let lcores = lcore::lcores();
        if lcores.len() < d.queues as usize {
            return Err(Error::Config(format!(
                "dpdk.queues = {} needs {} EAL lcores (one poll loop per queue), but dpdk.eal_args enable {} ({:?}): give EAL more cores (e.g. -l 0-{}) or lower dpdk.queues",
                d.queues,
                d.queues,
                lcores.len(),
                lcores,
                d.queues.saturating_sub(1)
            )));
        }
        let port = Arc::new(Port::setup(d.port, d.queues, d.rx_descriptors, d.tx_descriptors, d.mbufs, d.mbuf_cache, cfg.net.mtu)?);
        let mut scfg = crate::net::stack::stack_config(cfg)?;
        scfg.mac = port.mac();
        let fr = port.frames();
        tracing::info!(
            "dpdk port {}: MTU {} bytes (stack), {} (port){}{}",
            d.port,
            fr.stack_mtu,
            fr.port_mtu,
            if fr.scatter { ", frames longer than one mbuf as segment chains" } else { "" },
            if fr.tso { ", longer TCP frames segmented by the port (TSO)" } else { "" }
        );
        let placement: Vec<String> = (0..d.queues as usize).map(|q| format!("queue {q} on lcore {} (cpu {})", lcores[q], lcore::cpu_of(lcores[q]))).collect();
        tracing::info!(
            "dpdk mode: port {} ({} queues, MAC {}) serving {}:{}; {}",
            d.port,
            d.queues,
            port.mac_string(),
            scfg.address.0,
            scfg.port,
            placement.join(", ")
        );
        eprintln!("tlogd: listening on {}:{} (userspace TCP on DPDK port {}, {} queues)", scfg.address.0, scfg.port, d.port, d.queues);
        let (arp_txs, arp_rxs): (Vec<_>, Vec<_>) = (0..d.queues).map(|_| crossbeam_channel::bounded::<Vec<u8>>(4096)).unzip();
        let stats: Arc<Mutex<Vec<QueueStats>>> = Arc::new(Mutex::new(vec![QueueStats::default(); d.queues as usize]));
        let owners: crate::sys::dpdk::device::FlowOwners = Default::default();
        let idle_sleep = Duration::from_micros(d.idle_sleep_us);
        let mut loops: Vec<Box<dyn FnOnce() + Send>> = Vec::new();
        for (q, arp_rx) in arp_rxs.into_iter().enumerate() {
            let inboxes = arp_txs.clone();
            let owners = owners.clone();
            let (factory, port, stop, stats, scfg) = (factory.clone(), port.clone(), stop.clone(), stats.clone(), scfg.clone());
            loops.push(Box::new(move || {
                if let Err(e) = crate::sys::dpdk::signals::unblock_sigio() {
                    tracing::warn!("dpdk queue {q}: {e}: net_tap may not see received packets");
                }
                if let Some(fd) = port.rx_fd(q as u16) {
                    match crate::sys::dpdk::signals::own_rx_signals(fd) {
                        Ok(()) => tracing::debug!("dpdk queue {q}: receive signals of fd {fd} go to this poll loop"),
                        Err(e) => tracing::warn!("dpdk queue {q}: {e}: its poll loop wakes late on frames"),
                    }
                }
                let dev = QueueDevice::new(&port, q as u16, arp_rx, inboxes, owners);
                poll_loop(q, dev, factory, scfg, &stop, &stats, idle_sleep);
            }));
        }
        // Statistics and the stop flag are watched by a plain thread (it inherits the main
        // lcore's affinity and sleeps nearly all the time).
        let interval = d.stats_interval_secs;
        let watcher = {
            let (port, stats, stop) = (port.clone(), stats.clone(), stop.clone());
            std::thread::Builder::new()
                .name("dpdk-stats".into())
                .spawn(move || {
                    let (mut last, mut last_pub) = (Instant::now(), Instant::now() - Duration::from_secs(1));
                    while !stop.load(Ordering::SeqCst) {
                        std::thread::sleep(Duration::from_millis(100));
                        if interval > 0 && last.elapsed() >= Duration::from_secs(interval) {
                            log_stats(&port, &stats);
                            last = Instant::now();
                        }
                        if last_pub.elapsed() >= Duration::from_secs(1) {
                            publish(&port, &stats, &published);
                            last_pub = Instant::now();
                        }
                    }
                })
                .map_err(|e| Error::io("spawn dpdk statistics thread", e))?
        };
        let mut loops = loops.into_iter();
        let main_loop = loops.next();
        let mut launched = Vec::new();
        let mut failed = None;
        for (i, job) in loops.enumerate() {
            let lc = lcores[i + 1];
            match lcore::launch(lc, job) {
                Ok(()) => launched.push(lc),
                Err(e) => {
                    failed = Some(e);
                    stop.store(true, Ordering::SeqCst);
                    break;
                }
            }
        }
        if failed.is_none() {
            if let Some(job) = main_loop {
                if std::panic::catch_unwind(std::panic::AssertUnwindSafe(job)).is_err() {
                    tracing::error!("dpdk queue 0 poll loop panicked");
                    stop.store(true, Ordering::SeqCst);
                }
            }
        }
        for lc in launched {
            if !lcore::wait(lc) {
                tracing::error!("dpdk poll loop on lcore {lc} panicked");
            }
        }
        stop.store(true, Ordering::SeqCst);
        let _ = watcher.join();
        log_stats(&port, &stats);
        port.stop();
        match failed {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// One queue's poll loop: poll the stack, send, back off briefly when idle; publishes the
    /// queue's counters about every 500 ms and at exit.
    fn poll_loop(
        q: usize,
        mut dev: QueueDevice,
        factory: Factory,
        scfg: crate::net::stack::StackConfig,
        stop: &AtomicBool,
        stats: &Mutex<Vec<QueueStats>>,
        idle_sleep: Duration,
    ) {
        let mut stack = Stack::new(&mut dev, factory, scfg);
        let mut idle = 0u32;
        let mut last_stats = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            let work = stack.poll(&mut dev);
            dev.flush_tx();
            if work || dev.had_rx() {
                idle = 0;
            } else {
                // Poll mode, but give the core back as soon as a few polls in a row find
                // nothing: on machines where clients and flushers share the lcores' cores,
                // pure busy polling starves them. `dpdk.idle_sleep_us` = 0 keeps pure busy
                // polling (for lcores on dedicated, isolated cores). The sleep ends early on a
                // signal: on net_tap, a frame on this queue (see signals::own_rx_signals).
                idle = idle.saturating_add(1);
                if idle > 2 && idle_sleep > Duration::ZERO {
                    crate::sys::dpdk::signals::nap(idle_sleep);
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
    }

    /// Copies the port's and the queues' counters where the metrics read them.
    fn publish(port: &Port, stats: &Mutex<Vec<QueueStats>>, out: &crate::net::FrontendStats) {
        let p = port.stats();
        let pc = crate::net::PortCounters {
            port: port.id(),
            rx_packets: p.ipackets,
            rx_bytes: p.ibytes,
            tx_packets: p.opackets,
            tx_bytes: p.obytes,
            missed: p.imissed,
            rx_errors: p.ierrors,
            tx_errors: p.oerrors,
            rx_nombuf: p.rx_nombuf,
        };
        let qs: Vec<crate::net::QueueCounters> = match stats.lock() {
            Ok(s) => s
                .iter()
                .map(|x| crate::net::QueueCounters {
                    rx_packets: x.rx_packets,
                    rx_bytes: x.rx_bytes,
                    tx_packets: x.tx_packets,
                    tx_bytes: x.tx_bytes,
                    tx_drops: x.tx_drops,
                    alloc_failures: x.alloc_failures,
                    oversize_drops: x.oversize_drops,
                })
                .collect(),
            Err(_) => Vec::new(),
        };
        if let Ok(mut o) = out.dpdk.lock() {
            *o = Some((pc, qs));
        }
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
                    "dpdk queue {q}: rx {} packets {} bytes ({} chained), tx {} packets {} bytes ({} segmented by the port), tx drops {}, oversize drops {}, mbuf alloc failures {}, arp copies {}, steered {}",
                    x.rx_packets,
                    x.rx_bytes,
                    x.rx_chains,
                    x.tx_packets,
                    x.tx_bytes,
                    x.tso_frames,
                    x.tx_drops,
                    x.oversize_drops,
                    x.alloc_failures,
                    x.arp_copies,
                    x.steered
                );
            }
        }
    }
}
