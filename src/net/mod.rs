//! Network front-ends: the kernel's TCP ([`kernel`]) and the userspace TCP stack ([`stack`],
//! smoltcp) on a Linux tap device ([`tap`]) or DPDK ([`dpdk`], feature `dpdk`). Each runs one
//! serve loop over [`crate::session::Protocol`]: what connections speak is the caller's choice
//! (a tlog session, or the benchmark sink), made through a [`Factory`].
//!
//! Every front-end applies the same connection rules ([`Rules`]): at most `max_connections`;
//! when full, a new connection takes the place of the oldest one that has not finished its
//! handshake (so idle connections cannot lock honest clients out), else it is refused; a
//! connection still unattached after `handshake_timeout` is closed, and an attached one silent
//! for `idle_timeout` too, each with a log line. A connection costs a small receive buffer
//! until its handshake is done.

pub mod dpdk;
pub mod kernel;
pub mod stack;
pub mod tap;

use crate::session::Protocol;
use std::sync::Arc;
use std::time::Duration;

/// Makes the protocol endpoint of a new connection from its peer's address.
pub type Factory = Arc<dyn Fn(String) -> Box<dyn Protocol> + Send + Sync>;

/// A DPDK port's counters (the PMD's `rte_eth_stats`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortCounters {
    /// The port id.
    pub port: u16,
    /// Frames and bytes received and sent.
    pub rx_packets: u64,
    /// Bytes received.
    pub rx_bytes: u64,
    /// Frames sent.
    pub tx_packets: u64,
    /// Bytes sent.
    pub tx_bytes: u64,
    /// Frames the port dropped for want of room on a receive queue.
    pub missed: u64,
    /// Receive errors.
    pub rx_errors: u64,
    /// Transmit errors.
    pub tx_errors: u64,
    /// Receive mbuf allocation failures.
    pub rx_nombuf: u64,
}

/// One DPDK queue pair's counters (its poll loop's).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueCounters {
    /// Frames received.
    pub rx_packets: u64,
    /// Bytes received.
    pub rx_bytes: u64,
    /// Frames sent.
    pub tx_packets: u64,
    /// Bytes sent.
    pub tx_bytes: u64,
    /// Frames the port did not take.
    pub tx_drops: u64,
    /// Transmit mbuf allocation failures.
    pub alloc_failures: u64,
    /// Frames longer than the MTU that could not be segmented (dropped).
    pub oversize_drops: u64,
}

/// What a front-end publishes for the metrics: in dpdk mode the port's and each queue's
/// counters, refreshed every second.
#[derive(Debug, Default)]
pub struct FrontendStats {
    /// The DPDK port and its queues, once the port is up.
    pub dpdk: std::sync::Mutex<Option<(PortCounters, Vec<QueueCounters>)>>,
}

/// Connection rules of a front-end (from `[server]`).
#[derive(Clone, Copy, Debug)]
pub struct Rules {
    /// Connections served at once (per queue on the userspace stack: its socket count).
    pub max_connections: usize,
    /// An unattached connection is closed after this.
    pub handshake_timeout: Duration,
    /// An attached connection that sends nothing is closed after this (`None`: never).
    pub idle_timeout: Option<Duration>,
}

impl Rules {
    /// From a validated config.
    pub fn from_config(c: &crate::config::Config) -> Rules {
        Rules {
            max_connections: c.server.max_connections,
            handshake_timeout: Duration::from_millis(c.server.handshake_timeout_ms),
            idle_timeout: (c.server.idle_timeout_ms > 0).then(|| Duration::from_millis(c.server.idle_timeout_ms)),
        }
    }
}

/// Bytes a connection reads at once before its handshake is done (a handshake is small).
pub const HANDSHAKE_RECEIVE_BYTES: usize = 4096;

/// Bytes an attached connection reads at once (received straight into its frame buffer).
pub const RECEIVE_BYTES: usize = 256 << 10;
