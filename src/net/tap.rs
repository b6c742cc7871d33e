//! The `tap` front-end: the userspace stack ([`super::stack`]) on a Linux tap device that
//! tlogd creates (or attaches to). The host side of the tap (its address, e.g. 198.18.0.1/24,
//! and link up) is configured by the operator or the test that owns the network namespace.

use super::stack::{Stack, StackConfig};
use crate::config::{parse_cidr, parse_mac, Config};
use crate::error::{Error, Result};
use crate::namespace::Engine;
use smoltcp::phy::{wait as phy_wait, Medium, TunTapInterface};
use std::os::unix::io::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The stack settings from `[net]` and the port of `server.listen`.
pub fn stack_config(cfg: &Config) -> Result<StackConfig> {
    let n = &cfg.net;
    let port =
        cfg.server.listen.parse::<std::net::SocketAddr>().map_err(|_| Error::Config(format!("server.listen {:?} is not IP:port", cfg.server.listen)))?.port();
    Ok(StackConfig {
        mac: parse_mac(&n.mac).ok_or_else(|| Error::Config(format!("net.mac {:?}", n.mac)))?,
        address: parse_cidr(&n.address).ok_or_else(|| Error::Config(format!("net.address {:?}", n.address)))?,
        gateway: if n.gateway.is_empty() { None } else { Some(n.gateway.parse().map_err(|_| Error::Config(format!("net.gateway {:?}", n.gateway)))?) },
        port,
        sockets: n.sockets_per_queue,
        buffer_bytes: n.socket_buffer_bytes,
        sink: n.sink,
    })
}

/// Serves on the tap device until `stop` is set.
pub fn serve(engine: Arc<Engine>, cfg: &Config, stop: Arc<AtomicBool>) -> Result<()> {
    let scfg = stack_config(cfg)?;
    let mut dev =
        TunTapInterface::new(&cfg.net.tap, Medium::Ethernet).map_err(|e| Error::io(format!("open tap device {} (needs CAP_NET_ADMIN)", cfg.net.tap), e))?;
    let fd = dev.as_raw_fd();
    set_queue_len(&cfg.net.tap, cfg.net.tap_queue_len);
    let mut stack = Stack::new(&mut dev, engine, scfg.clone());
    tracing::info!("tap mode: serving {}:{} on tap {} (MAC {})", scfg.address.0, scfg.port, cfg.net.tap, cfg.net.mac);
    eprintln!("tlogd: listening on {}:{} (userspace TCP on tap {})", scfg.address.0, scfg.port, cfg.net.tap);
    while !stop.load(Ordering::SeqCst) {
        let work = stack.poll(&mut dev);
        if !work {
            // Sleep until a packet arrives or a timer is due, at most 1 ms (acks from the
            // flushers arrive on channels, not on the fd).
            let d = stack.delay(Duration::from_millis(1));
            let _ = phy_wait(fd, Some(smoltcp::time::Duration::from_micros(d.as_micros() as u64)));
        }
    }
    Ok(())
}

/// Sets the transmit queue length of `tap` to `len` packets with iproute2 (`ip link set dev
/// TAP txqueuelen LEN`); 0 leaves it. Failure is not fatal (the device works, only slower
/// under load): it is logged with the command to run by hand.
fn set_queue_len(tap: &str, len: u32) {
    if len == 0 {
        return;
    }
    let len_s = len.to_string();
    let args = ["link", "set", "dev", tap, "txqueuelen", len_s.as_str()];
    let out = ["ip", "/sbin/ip", "/usr/sbin/ip"].iter().find_map(|ip| std::process::Command::new(ip).args(args).output().ok());
    match out {
        Some(o) if o.status.success() => tracing::info!("tap {tap}: transmit queue length set to {len} packets (net.tap_queue_len)"),
        Some(o) => tracing::warn!(
            "tap {tap}: could not set the transmit queue length to {len} (net.tap_queue_len): ip link set: {}; run `ip link set dev {tap} txqueuelen {len}` by hand, or expect drops and retransmissions under load",
            String::from_utf8_lossy(&o.stderr).trim()
        ),
        None => tracing::warn!(
            "tap {tap}: could not set the transmit queue length to {len} (net.tap_queue_len): iproute2's `ip` was not found; run `ip link set dev {tap} txqueuelen {len}` by hand"
        ),
    }
}
