//! EAL initialisation, the mbuf mempool and port/queue setup (DPDK 22.11).
#![allow(unsafe_code)]

use super::ffi;
use crate::error::{Error, Result};
use std::ffi::{CStr, CString};
use std::sync::atomic::{AtomicBool, Ordering};

static EAL_DONE: AtomicBool = AtomicBool::new(false);

fn rte_error(what: &str, rc: i32) -> Error {
    // SAFETY: tlog_rte_errno reads DPDK's thread-local rte_errno; rte_strerror returns a
    // pointer to a static or thread-local NUL-terminated string that we copy at once.
    let (errno, msg) = unsafe {
        let e = ffi::tlog_rte_errno();
        let code = if rc < 0 { -rc } else { e };
        let p = ffi::rte_strerror(code);
        (e, if p.is_null() { String::from("unknown error") } else { CStr::from_ptr(p).to_string_lossy().into_owned() })
    };
    Error::Backend { backend: "dpdk".into(), detail: format!("{what} failed (rc {rc}, rte_errno {errno}): {msg}") }
}

/// The Environment Abstraction Layer: initialised once per process.
pub struct Eal;

impl Eal {
    /// Runs `rte_eal_init` with `args` (program name added). A second call is refused: EAL
    /// initialises once per process.
    pub fn init(args: &[String]) -> Result<()> {
        if EAL_DONE.swap(true, Ordering::SeqCst) {
            return Err(Error::InvalidArgument("DPDK EAL is already initialised in this process".into()));
        }
        let mut owned: Vec<CString> = vec![CString::new("tlogd").map_err(|_| Error::InvalidArgument("argv".into()))?];
        for a in args {
            owned.push(CString::new(a.as_str()).map_err(|_| Error::Config(format!("dpdk.eal_args: {a:?} contains a NUL byte")))?);
        }
        // EAL may keep pointers into argv for the life of the process: leak them on purpose.
        let owned: &'static mut Vec<CString> = Box::leak(Box::new(owned));
        let argv: &'static mut Vec<*mut std::os::raw::c_char> = Box::leak(Box::new(owned.iter().map(|c| c.as_ptr() as *mut std::os::raw::c_char).collect()));
        // SAFETY: argv holds argc valid NUL-terminated strings that live for the whole process
        // (leaked above); rte_eal_init is called once per process (guarded by EAL_DONE).
        let rc = unsafe { ffi::rte_eal_init(argv.len() as i32, argv.as_mut_ptr()) };
        if rc < 0 {
            return Err(rte_error(&format!("rte_eal_init({})", args.join(" ")), rc));
        }
        Ok(())
    }
}

/// The standard Ethernet MTU, bytes: the stack's MTU when `net.mtu` is 0.
pub const DEFAULT_MTU: u32 = 1500;

/// Ethernet header bytes (without CRC).
const ETHERNET_HEADER: u32 = 14;

/// How frames of the stack's MTU fit the port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Frames {
    /// The stack's IP MTU, bytes (`net.mtu`, 0 = [`DEFAULT_MTU`]): what smoltcp may send and
    /// advertises as its MSS.
    pub stack_mtu: u32,
    /// The port's own IP MTU, bytes: `stack_mtu` when the port takes it, else
    /// [`DEFAULT_MTU`] (DPDK 22.11's net_tap takes at most 1504, whatever the kernel side's MTU).
    pub port_mtu: u32,
    /// Data bytes of one mbuf: larger frames arrive and leave as segment chains.
    pub mbuf_data: u32,
    /// Frames longer than the port's own MTU leave with TCP segmentation offload (the port
    /// or its PMD cuts them to `port_mtu`).
    pub tso: bool,
    /// Scattered receive is on (frames longer than one mbuf arrive as chains).
    pub scatter: bool,
}

impl Frames {
    /// The largest Ethernet frame the stack sends or takes, bytes.
    pub fn stack_frame(&self) -> usize {
        (self.stack_mtu + ETHERNET_HEADER) as usize
    }

    /// The largest frame the port sends without segmentation offload, bytes.
    pub fn port_frame(&self) -> usize {
        (self.port_mtu + ETHERNET_HEADER) as usize
    }

    /// Plans the offloads for a stack MTU of `want` bytes on a port whose largest MTU is
    /// `port_max`, with mbufs of `mbuf_data` bytes, and the port's offload capabilities.
    ///
    /// Errors ([`Error::Config`], naming `net.mtu`): the port cannot take frames of `want`:
    /// it needs scattered receive when a frame exceeds one mbuf, multi-segment transmit for
    /// chains, and TCP segmentation offload when `want` exceeds `port_max`.
    pub fn plan(want: u32, port_max: u32, mbuf_data: u32, can_scatter: bool, can_multi_segs: bool, can_tso: bool) -> Result<Frames> {
        // Beyond the port's largest MTU the wire keeps the standard one (what every peer takes);
        // segmentation offload cuts the stack's frames to it.
        let port_mtu = if want <= port_max { want } else { DEFAULT_MTU.min(port_max) };
        let frame = want + ETHERNET_HEADER;
        let chains = frame > mbuf_data;
        let tso = want > port_mtu;
        let missing: Vec<&str> = [
            (chains && !can_scatter, "scattered receive (RTE_ETH_RX_OFFLOAD_SCATTER)"),
            (chains && !can_multi_segs, "multi-segment transmit (RTE_ETH_TX_OFFLOAD_MULTI_SEGS)"),
            (tso && !can_tso, "TCP segmentation offload (RTE_ETH_TX_OFFLOAD_TCP_TSO with IPv4 and TCP checksums)"),
        ]
        .iter()
        .filter(|(m, _)| *m)
        .map(|(_, what)| *what)
        .collect();
        if !missing.is_empty() {
            return Err(Error::Config(format!(
                "net.mtu = {want}: the DPDK port takes frames up to MTU {port_max} in {mbuf_data}-byte mbufs and lacks {}; set net.mtu to at most {}",
                missing.join(", "),
                port_max.min(mbuf_data.saturating_sub(ETHERNET_HEADER))
            )));
        }
        Ok(Frames { stack_mtu: want, port_mtu, mbuf_data, tso, scatter: chains })
    }
}

/// A started port with its mempool.
pub struct Port {
    id: u16,
    queues: u16,
    pool: *mut ffi::rte_mempool,
    mac: [u8; 6],
    frames: Frames,
    /// Receive interrupts are configured (per-queue file descriptors, see [`Port::rx_fd`]).
    rx_intr: bool,
}

// SAFETY: the mempool pointer is shared by the queue threads; DPDK mempools are safe for
// concurrent get/put from several threads, and each RX/TX queue is polled by one thread only.
unsafe impl Send for Port {}
// SAFETY: as above; Port's methods only read its fields or call thread-safe DPDK functions.
unsafe impl Sync for Port {}

impl Port {
    /// Creates the mempool and configures, sets up and starts `port` with `queues` RX/TX queue
    /// pairs, for a stack MTU of `mtu` bytes (0 = [`DEFAULT_MTU`]; see [`Frames::plan`] for
    /// the offloads a larger one turns on). Errors name the DPDK call that failed, or what the
    /// port lacks for `mtu`.
    #[allow(clippy::too_many_arguments)]
    pub fn setup(port: u16, queues: u16, rx_desc: u16, tx_desc: u16, mbufs: u32, cache: u32, mtu: u32) -> Result<Port> {
        // SAFETY: plain DPDK calls after a successful rte_eal_init; every pointer passed is to
        // a live local (zeroed config structs, which DPDK documents as valid defaults), and
        // return codes are checked.
        unsafe {
            let avail = ffi::rte_eth_dev_count_avail();
            if port >= avail {
                return Err(Error::Config(format!("dpdk.port {port}: only {avail} DPDK port(s) available (check --vdev / NIC binding)")));
            }
            let socket = ffi::rte_eth_dev_socket_id(port);
            let socket = if socket < 0 { ffi::rte_socket_id() as i32 } else { socket };
            let name = CString::new(format!("tlog_pool_{port}")).map_err(|_| Error::InvalidArgument("pool name".into()))?;
            let pool = ffi::rte_pktmbuf_pool_create(name.as_ptr(), mbufs, cache, 0, ffi::tlog_pktmbuf_default_buf_size(), socket);
            if pool.is_null() {
                return Err(rte_error(&format!("rte_pktmbuf_pool_create({mbufs} mbufs; with --no-huge give EAL -m 512 or more)"), -1));
            }
            let mut info: ffi::rte_eth_dev_info = std::mem::zeroed();
            let rc = ffi::rte_eth_dev_info_get(port, &mut info);
            if rc < 0 {
                return Err(rte_error(&format!("rte_eth_dev_info_get(port {port})"), rc));
            }
            // DPDK's rule (eth_dev_validate_mtu): MTU + overhead <= max_rx_pktlen, where the
            // overhead is max_rx_pktlen - max_mtu when the driver gives both, else header + CRC.
            let overhead = if info.max_mtu != u16::MAX && info.max_rx_pktlen > info.max_mtu as u32 { info.max_rx_pktlen - info.max_mtu as u32 } else { 18 };
            let port_max = info.max_rx_pktlen.saturating_sub(overhead).min(info.max_mtu as u32);
            let mbuf_data = (ffi::tlog_pktmbuf_default_buf_size() - ffi::tlog_pktmbuf_headroom_default()) as u32;
            let (scatter, multi, tso) = (ffi::tlog_rx_offload_scatter(), ffi::tlog_tx_offload_multi_segs(), ffi::tlog_tx_offload_tso());
            let want = if mtu == 0 { DEFAULT_MTU } else { mtu };
            let frames = Frames::plan(
                want,
                port_max,
                mbuf_data,
                info.rx_offload_capa & scatter == scatter,
                info.tx_offload_capa & multi == multi,
                info.tx_offload_capa & tso == tso,
            )?;
            let driver = if info.driver_name.is_null() { String::new() } else { CStr::from_ptr(info.driver_name).to_string_lossy().into_owned() };
            let mut conf: ffi::rte_eth_conf = std::mem::zeroed();
            conf.rxmode.mtu = frames.port_mtu;
            // net_tap: with receive interrupts on, each queue's file descriptor (its tap queue)
            // can be had, so that its receive signal goes to its own poll loop (see
            // super::signals::own_rx_signals).
            let mut rx_intr = driver == "net_tap";
            conf.intr_conf.set_rxq(rx_intr as u32);
            if frames.scatter {
                conf.rxmode.offloads |= scatter;
                conf.txmode.offloads |= multi;
            }
            if frames.tso {
                conf.txmode.offloads |= tso | multi;
            }
            let mut rc = ffi::rte_eth_dev_configure(port, queues, queues, &conf);
            if rc < 0 && rx_intr {
                rx_intr = false;
                conf.intr_conf.set_rxq(0);
                rc = ffi::rte_eth_dev_configure(port, queues, queues, &conf);
            }
            if rc < 0 {
                return Err(rte_error(&format!("rte_eth_dev_configure(port {port}, {queues} queues, MTU {})", frames.port_mtu), rc));
            }
            for q in 0..queues {
                let rc = ffi::rte_eth_rx_queue_setup(port, q, rx_desc, socket as u32, std::ptr::null(), pool);
                if rc < 0 {
                    return Err(rte_error(&format!("rte_eth_rx_queue_setup(queue {q})"), rc));
                }
                let rc = ffi::rte_eth_tx_queue_setup(port, q, tx_desc, socket as u32, std::ptr::null());
                if rc < 0 {
                    return Err(rte_error(&format!("rte_eth_tx_queue_setup(queue {q})"), rc));
                }
            }
            let rc = ffi::rte_eth_dev_start(port);
            if rc < 0 {
                return Err(rte_error(&format!("rte_eth_dev_start(port {port})"), rc));
            }
            let _ = ffi::rte_eth_promiscuous_enable(port);
            let mut mac: ffi::rte_ether_addr = std::mem::zeroed();
            let rc = ffi::rte_eth_macaddr_get(port, &mut mac);
            if rc < 0 {
                return Err(rte_error("rte_eth_macaddr_get", rc));
            }
            Ok(Port { id: port, queues, pool, mac: mac.addr_bytes, frames, rx_intr })
        }
    }

    /// Port id.
    pub fn id(&self) -> u16 {
        self.id
    }

    /// Queue pairs.
    pub fn queues(&self) -> u16 {
        self.queues
    }

    /// The mempool (for the queue devices).
    pub(crate) fn pool(&self) -> *mut ffi::rte_mempool {
        self.pool
    }

    /// How the stack's frames fit the port (MTUs, chains, segmentation offload).
    pub fn frames(&self) -> Frames {
        self.frames
    }

    /// The port's MAC address.
    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    /// MAC as text.
    pub fn mac_string(&self) -> String {
        self.mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
    }

    /// The file descriptor behind `queue`'s receive interrupt, when the port has one: for
    /// net_tap, the queue's tap file descriptor. None for other ports.
    pub fn rx_fd(&self, queue: u16) -> Option<i32> {
        if !self.rx_intr {
            return None;
        }
        // SAFETY: plain query of a started port's queue; returns -1 when there is none.
        let fd = unsafe { ffi::rte_eth_dev_rx_intr_ctl_q_get_fd(self.id, queue) };
        (fd >= 0).then_some(fd)
    }

    /// Port statistics (zeroed when the driver cannot give them).
    pub fn stats(&self) -> ffi::rte_eth_stats {
        // SAFETY: stats is a live local the driver fills; the port was started by setup.
        unsafe {
            let mut s: ffi::rte_eth_stats = std::mem::zeroed();
            let _ = ffi::rte_eth_stats_get(self.id, &mut s);
            s
        }
    }

    /// Stops the port (queue threads must have ended).
    pub fn stop(&self) {
        // SAFETY: called once at shutdown after every queue thread was joined.
        unsafe {
            let _ = ffi::rte_eth_dev_stop(self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_keeps_standard_frames_plain() {
        let f = Frames::plan(1500, 1500, 2048, false, false, false).unwrap();
        assert_eq!((f.stack_mtu, f.port_mtu, f.tso, f.scatter), (1500, 1500, false, false));
        assert_eq!((f.stack_frame(), f.port_frame()), (1514, 1514));
    }

    #[test]
    fn plan_uses_chains_and_tso_beyond_the_port() {
        // DPDK 22.11 net_tap: max MTU 1504, scatter and TSO offered.
        let f = Frames::plan(65521, 1504, 2048, true, true, true).unwrap();
        assert_eq!((f.stack_mtu, f.port_mtu, f.tso, f.scatter), (65521, 1500, true, true));
        // A jumbo-capable NIC: no TSO needed, chains are.
        let f = Frames::plan(9000, 9600, 2048, true, true, false).unwrap();
        assert_eq!((f.port_mtu, f.tso, f.scatter), (9000, false, true));
    }

    #[test]
    fn plan_names_what_the_port_lacks() {
        let e = Frames::plan(9000, 1500, 2048, true, true, false).unwrap_err().to_string();
        assert!(e.contains("net.mtu = 9000") && e.contains("TCP segmentation offload") && e.contains("at most 1500"), "{e}");
        let e = Frames::plan(4000, 9000, 2048, false, true, true).unwrap_err().to_string();
        assert!(e.contains("scattered receive") && !e.contains("segmentation"), "{e}");
    }
}
