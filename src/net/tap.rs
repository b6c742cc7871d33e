//! The `tap` front-end: the userspace stack ([`super::stack`]) on a Linux tap device that
//! tlogd creates (or attaches to). The host side of the tap (its address, e.g. 198.18.0.1/24,
//! and link up) is configured by the operator or the test that owns the network namespace.
//!
//! The device is opened with the `tun` crate and driven by [`TapDevice`]: one read(2) per
//! received frame and one write(2) per sent frame, into buffers reused for the life of the
//! device. That system call per frame is the cost of this path, so tlogd gives the tap a large
//! MTU (`net.mtu`, by default [`TAP_DEFAULT_MTU`]): the kernel side then sends a 64 KiB
//! segment where it would have sent 45 of 1.5 KiB, as it does over loopback or a veth pair
//! with segmentation offload.

use super::stack::{stack_config, Stack};
use super::Factory;
use crate::config::Config;
use crate::error::{Error, Result};
use smoltcp::phy::{self, wait as phy_wait, DeviceCapabilities, Medium};
use smoltcp::time::Instant;
use std::os::unix::io::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tun::AbstractDevice;

/// The IP MTU tlogd gives its tap device when `net.mtu` is 0: 65521 bytes, the largest Linux
/// takes for a tap (65535 minus the 14-byte Ethernet header).
pub const TAP_DEFAULT_MTU: u32 = 65521;

/// Ethernet header bytes (smoltcp counts them in its device MTU).
const ETHERNET_HEADER: usize = 14;

/// A smoltcp [`phy::Device`] over a Linux tap device.
///
/// Receive reads one Ethernet frame (at most MTU + 14 bytes) into a buffer owned by the
/// device and lends it to smoltcp; transmit lets smoltcp build the frame in a second reused
/// buffer and writes it. Nothing is allocated per frame. A write the kernel refuses (the
/// device's transmit queue is full, or the link is down) drops that frame, as a full NIC ring
/// would: TCP retransmits it. Other I/O errors are counted and logged, never fatal.
pub struct TapDevice {
    dev: tun::Device,
    /// Largest frame, bytes (IP MTU + 14).
    frame: usize,
    rx: Vec<u8>,
    tx: Vec<u8>,
    errors: TapErrors,
}

/// I/O errors of a [`TapDevice`] so far.
#[derive(Clone, Copy, Debug, Default)]
pub struct TapErrors {
    /// Failed reads other than "nothing to read".
    pub read: u64,
    /// Frames not written (queue full, link down, or another error).
    pub write: u64,
}

impl TapDevice {
    /// Creates the tap device `name` (or attaches to an existing one), makes it non-blocking
    /// and sets its IP MTU to `mtu` bytes (0 = [`TAP_DEFAULT_MTU`]). If the MTU cannot be set
    /// (e.g. a persistent tap attached to without CAP_NET_ADMIN), the device's own MTU is kept
    /// and a warning names the command to run.
    ///
    /// Errors: [`Error::Io`] when the device cannot be opened (tlogd needs CAP_NET_ADMIN to
    /// create one) or made non-blocking.
    pub fn open(name: &str, mtu: u32) -> Result<TapDevice> {
        let mut conf = tun::Configuration::default();
        conf.tun_name(name).layer(tun::Layer::L2);
        // Only open here: addresses, MTU and link state are set below or by the operator.
        conf.platform_config(|p| {
            p.ensure_root_privileges(false);
        });
        let io = |what: String| move |e: tun::Error| Error::io(what, std::io::Error::other(e.to_string()));
        let mut dev = tun::create(&conf).map_err(io(format!("open tap device {name} (needs CAP_NET_ADMIN)")))?;
        dev.set_nonblock().map_err(|e| Error::io(format!("make tap device {name} non-blocking"), e))?;
        let want = if mtu == 0 { TAP_DEFAULT_MTU } else { mtu };
        let want16 = u16::try_from(want).unwrap_or(u16::MAX);
        if let Err(e) = dev.set_mtu(want16) {
            tracing::warn!("tap {name}: could not set the MTU to {want} (net.mtu): {e}; keeping the device's own. Run `ip link set dev {name} mtu {want}` by hand for full speed");
        }
        let ip_mtu = dev.mtu().map_err(io(format!("read the MTU of tap device {name}")))? as usize;
        let frame = ip_mtu + ETHERNET_HEADER;
        tracing::info!("tap {name}: MTU {ip_mtu} bytes (frames up to {frame})");
        Ok(TapDevice { dev, frame, rx: vec![0u8; frame], tx: Vec::with_capacity(frame), errors: TapErrors::default() })
    }

    /// The IP MTU in use, bytes.
    pub fn mtu(&self) -> usize {
        self.frame - ETHERNET_HEADER
    }

    /// I/O errors so far.
    pub fn errors(&self) -> TapErrors {
        self.errors
    }

    /// Waits until a frame can be read or `timeout` passes.
    pub fn wait(&self, timeout: Duration) {
        let _ = phy_wait(self.dev.as_raw_fd(), Some(smoltcp::time::Duration::from_micros(timeout.as_micros() as u64)));
    }
}

/// A received frame, lent from the device's receive buffer.
pub struct TapRxToken<'a> {
    frame: &'a [u8],
}

impl phy::RxToken for TapRxToken<'_> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(self.frame)
    }
}

/// A frame to send, built in the device's transmit buffer.
pub struct TapTxToken<'a> {
    dev: &'a tun::Device,
    buf: &'a mut Vec<u8>,
    errors: &'a mut TapErrors,
}

impl phy::TxToken for TapTxToken<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        self.buf.clear();
        self.buf.resize(len, 0);
        let r = f(&mut self.buf[..]);
        match self.dev.send(&self.buf[..]) {
            Ok(_) => {}
            Err(e) => {
                self.errors.write += 1;
                if e.kind() != std::io::ErrorKind::WouldBlock && self.errors.write.is_power_of_two() {
                    tracing::warn!("tap: frame of {len} bytes not sent ({} so far): {e}", self.errors.write);
                }
            }
        }
        r
    }
}

impl phy::Device for TapDevice {
    type RxToken<'a>
        = TapRxToken<'a>
    where
        Self: 'a;
    type TxToken<'a>
        = TapTxToken<'a>
    where
        Self: 'a;

    fn receive(&mut self, _ts: Instant) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
        let TapDevice { dev, rx, tx, errors, .. } = self;
        match dev.recv(&mut rx[..]) {
            Ok(0) => None,
            Ok(n) => Some((TapRxToken { frame: &rx[..n] }, TapTxToken { dev, buf: tx, errors })),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::Interrupted => None,
            Err(e) => {
                errors.read += 1;
                if errors.read.is_power_of_two() {
                    tracing::warn!("tap: read failed ({} so far): {e}", errors.read);
                }
                None
            }
        }
    }

    fn transmit(&mut self, _ts: Instant) -> Option<Self::TxToken<'_>> {
        let TapDevice { dev, tx, errors, .. } = self;
        Some(TapTxToken { dev, buf: tx, errors })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut c = DeviceCapabilities::default();
        c.medium = Medium::Ethernet;
        c.max_transmission_unit = self.frame;
        c
    }
}

/// Serves on the tap device until `stop` is set, each connection speaking what `factory` makes.
pub fn serve(factory: Factory, cfg: &Config, stop: Arc<AtomicBool>) -> Result<()> {
    let scfg = stack_config(cfg)?;
    let mut dev = TapDevice::open(&cfg.net.tap, cfg.net.mtu)?;
    set_queue_len(&cfg.net.tap, cfg.net.tap_queue_len);
    let mut stack = Stack::new(&mut dev, factory, scfg.clone());
    tracing::info!("tap mode: serving {}:{} on tap {} (MAC {}, MTU {})", scfg.address.0, scfg.port, cfg.net.tap, cfg.net.mac, dev.mtu());
    eprintln!("tlogd: listening on {}:{} (userspace TCP on tap {})", scfg.address.0, scfg.port, cfg.net.tap);
    while !stop.load(Ordering::SeqCst) {
        let work = stack.poll(&mut dev);
        if !work {
            // Sleep until a packet arrives or a timer is due, at most 1 ms (acks from the
            // flushers arrive on channels, not on the fd).
            dev.wait(stack.delay(Duration::from_millis(1)));
        }
    }
    let e = dev.errors();
    if e.read > 0 || e.write > 0 {
        tracing::info!("tap {}: {} failed reads, {} frames not sent", cfg.net.tap, e.read, e.write);
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
