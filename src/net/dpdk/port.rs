//! EAL initialisation, the mbuf mempool and port/queue setup (DPDK 22.11).

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

/// A started port with its mempool.
pub struct Port {
    id: u16,
    queues: u16,
    pool: *mut ffi::rte_mempool,
    mac: [u8; 6],
}

// SAFETY: the mempool pointer is shared by the queue threads; DPDK mempools are safe for
// concurrent get/put from several threads, and each RX/TX queue is polled by one thread only.
unsafe impl Send for Port {}
// SAFETY: as above; Port's methods only read its fields or call thread-safe DPDK functions.
unsafe impl Sync for Port {}

impl Port {
    /// Creates the mempool and configures, sets up and starts `port` with `queues` RX/TX queue
    /// pairs. Errors name the DPDK call that failed.
    pub fn setup(port: u16, queues: u16, rx_desc: u16, tx_desc: u16, mbufs: u32, cache: u32) -> Result<Port> {
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
            let conf: ffi::rte_eth_conf = std::mem::zeroed();
            let rc = ffi::rte_eth_dev_configure(port, queues, queues, &conf);
            if rc < 0 {
                return Err(rte_error(&format!("rte_eth_dev_configure(port {port}, {queues} queues)"), rc));
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
            Ok(Port { id: port, queues, pool, mac: mac.addr_bytes })
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

    /// The port's MAC address.
    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    /// MAC as text.
    pub fn mac_string(&self) -> String {
        self.mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
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
