//! A smoltcp `Device` over one RX/TX queue pair of a DPDK port.
//!
//! Receive hands smoltcp the mbuf's data in place (no copy) and frees the mbuf after smoltcp
//! consumed it. Transmit allocates an mbuf, lets smoltcp write the frame into it and batches
//! it for `rte_eth_tx_burst` (flushed by [`QueueDevice::flush_tx`] after every poll). ARP
//! frames are copied to the other queues' devices, so every queue's stack learns its peers.

use super::ffi;
use super::port::Port;
use crossbeam_channel::{Receiver, Sender};
use smoltcp::phy::{self, DeviceCapabilities, Medium};
use smoltcp::time::Instant;

const BURST: usize = 32;

/// Per-queue counters.
#[derive(Clone, Copy, Debug, Default)]
pub struct QueueStats {
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
    /// Transmit mbuf allocation failures (frame dropped).
    pub alloc_failures: u64,
    /// ARP frames copied to other queues.
    pub arp_copies: u64,
}

/// One queue pair.
pub struct QueueDevice {
    port: u16,
    queue: u16,
    pool: *mut ffi::rte_mempool,
    rx: [*mut ffi::rte_mbuf; BURST],
    rx_len: usize,
    rx_at: usize,
    tx: Vec<*mut ffi::rte_mbuf>,
    arp_in: Receiver<Vec<u8>>,
    arp_out: Vec<Sender<Vec<u8>>>,
    stats: QueueStats,
    got_rx: bool,
}

impl QueueDevice {
    /// The device of `queue` on `port`; `arp_in` receives ARP frames seen by other queues,
    /// `arp_out` sends this queue's to them.
    pub fn new(port: &Port, queue: u16, arp_in: Receiver<Vec<u8>>, arp_out: Vec<Sender<Vec<u8>>>) -> QueueDevice {
        QueueDevice {
            port: port.id(),
            queue,
            pool: port.pool(),
            rx: [std::ptr::null_mut(); BURST],
            rx_len: 0,
            rx_at: 0,
            tx: Vec::with_capacity(BURST),
            arp_in,
            arp_out,
            stats: QueueStats::default(),
            got_rx: false,
        }
    }

    /// Counters so far.
    pub fn stats(&self) -> QueueStats {
        self.stats
    }

    /// Whether the last polls received anything (then clears the flag).
    pub fn had_rx(&mut self) -> bool {
        std::mem::take(&mut self.got_rx)
    }

    /// Sends the batched frames; frees (and counts) what the port did not take.
    pub fn flush_tx(&mut self) {
        if self.tx.is_empty() {
            return;
        }
        // SAFETY: tx holds mbufs allocated from our pool and filled by smoltcp; tx_burst takes
        // ownership of the first `sent`, the rest stay ours and are freed here. One thread
        // polls this queue.
        unsafe {
            let sent = ffi::tlog_tx_burst(self.port, self.queue, self.tx.as_mut_ptr(), self.tx.len() as u16) as usize;
            for &m in &self.tx[sent..] {
                ffi::tlog_pktmbuf_free(m);
            }
            self.stats.tx_drops += (self.tx.len() - sent) as u64;
        }
        self.tx.clear();
    }

    fn next_mbuf(&mut self) -> Option<*mut ffi::rte_mbuf> {
        if self.rx_at >= self.rx_len {
            // SAFETY: rx has room for BURST pointers; rx_burst writes at most BURST.
            let n = unsafe { ffi::tlog_rx_burst(self.port, self.queue, self.rx.as_mut_ptr(), BURST as u16) } as usize;
            self.rx_len = n;
            self.rx_at = 0;
            if n == 0 {
                return None;
            }
        }
        let m = self.rx[self.rx_at];
        self.rx_at += 1;
        Some(m)
    }
}

impl Drop for QueueDevice {
    fn drop(&mut self) {
        self.flush_tx();
        for i in self.rx_at..self.rx_len {
            // SAFETY: mbufs received and not yet handed to smoltcp are ours to free.
            unsafe { ffi::tlog_pktmbuf_free(self.rx[i]) };
        }
    }
}

/// A received frame: an mbuf (zero copy) or a copied ARP frame from another queue.
pub enum RxToken {
    /// An mbuf from this queue.
    Mbuf(*mut ffi::rte_mbuf),
    /// A frame copied from another queue.
    Copy(Vec<u8>),
}

impl phy::RxToken for RxToken {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        match self {
            RxToken::Copy(v) => f(&v),
            RxToken::Mbuf(m) => {
                // SAFETY: m is a valid received mbuf owned by this token; its data pointer and
                // data_len describe one contiguous segment (no scatter: MTU 1514 fits one
                // default mbuf). The slice does not outlive the mbuf, freed right after f.
                unsafe {
                    let p = ffi::tlog_pktmbuf_data(m);
                    let len = ffi::tlog_pktmbuf_data_len(m) as usize;
                    let r = f(std::slice::from_raw_parts(p, len));
                    ffi::tlog_pktmbuf_free(m);
                    r
                }
            }
        }
    }
}

/// A frame to send on this queue.
pub struct TxToken<'a> {
    dev: &'a mut QueueDevice,
}

impl phy::TxToken for TxToken<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let d = self.dev;
        // SAFETY: the mbuf comes from our pool; append reserves `len` bytes of its single
        // segment and returns a pointer to them (null if they do not fit), which smoltcp fills.
        // Ownership moves to the tx batch, sent or freed by flush_tx.
        unsafe {
            let m = ffi::tlog_pktmbuf_alloc(d.pool);
            if m.is_null() {
                d.stats.alloc_failures += 1;
                let mut scratch = vec![0u8; len];
                return f(&mut scratch);
            }
            let p = ffi::tlog_pktmbuf_append(m, len as u16);
            if p.is_null() {
                ffi::tlog_pktmbuf_free(m);
                d.stats.alloc_failures += 1;
                let mut scratch = vec![0u8; len];
                return f(&mut scratch);
            }
            let r = f(std::slice::from_raw_parts_mut(p, len));
            d.stats.tx_packets += 1;
            d.stats.tx_bytes += len as u64;
            d.tx.push(m);
            if d.tx.len() >= BURST {
                d.flush_tx();
            }
            r
        }
    }
}

impl phy::Device for QueueDevice {
    type RxToken<'a>
        = RxToken
    where
        Self: 'a;
    type TxToken<'a>
        = TxToken<'a>
    where
        Self: 'a;

    fn receive(&mut self, _ts: Instant) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
        if let Ok(f) = self.arp_in.try_recv() {
            return Some((RxToken::Copy(f), TxToken { dev: self }));
        }
        let m = self.next_mbuf()?;
        self.got_rx = true;
        // SAFETY: m is a valid mbuf just received; its data segment is data_len bytes long and
        // is only read here, before the token hands it to smoltcp.
        let (len, is_arp, copy) = unsafe {
            let len = ffi::tlog_pktmbuf_data_len(m) as usize;
            let frame = std::slice::from_raw_parts(ffi::tlog_pktmbuf_data(m), len);
            let is_arp = len >= 14 && frame[12] == 0x08 && frame[13] == 0x06;
            (len, is_arp, if is_arp && !self.arp_out.is_empty() { Some(frame.to_vec()) } else { None })
        };
        self.stats.rx_packets += 1;
        self.stats.rx_bytes += len as u64;
        if let (true, Some(frame)) = (is_arp, copy) {
            for peer in &self.arp_out {
                if peer.try_send(frame.clone()).is_ok() {
                    self.stats.arp_copies += 1;
                }
            }
        }
        Some((RxToken::Mbuf(m), TxToken { dev: self }))
    }

    fn transmit(&mut self, _ts: Instant) -> Option<Self::TxToken<'_>> {
        Some(TxToken { dev: self })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut c = DeviceCapabilities::default();
        c.medium = Medium::Ethernet;
        c.max_transmission_unit = 1514;
        c.max_burst_size = Some(BURST);
        c
    }
}
