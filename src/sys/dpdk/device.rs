//! A smoltcp `Device` over one RX/TX queue pair of a DPDK port.
//!
//! Receive hands smoltcp the mbuf's data in place (no copy) and frees the mbuf after smoltcp
//! consumed it. Transmit allocates an mbuf, lets smoltcp write the frame into it and batches
//! it for `rte_eth_tx_burst` (flushed by [`QueueDevice::flush_tx`] after every poll). ARP
//! frames are copied to the other queues' devices, so every queue's stack learns its peers.
//!
//! Frames longer than one mbuf (a stack MTU above about 2 KiB, see [`Frames`]): they arrive
//! as segment chains (scattered receive) and are copied into one buffer for smoltcp; smoltcp
//! builds an outgoing one in a reused buffer that is copied into a chain. An outgoing TCP
//! frame longer than the port's own MTU leaves with TCP segmentation offload: the port (for
//! net_tap, its PMD in software) cuts it into segments of the port's MTU.
//!
//! Flow ownership: the kernel side of a tap (and RSS on some NICs) may move a TCP flow to
//! another queue mid-connection (Linux re-randomises a socket's flow hash after a
//! retransmission timeout, and the tap picks the queue by that hash). Each queue's stack only
//! knows its own connections, so a SYN makes the receiving queue the flow's owner (in a map
//! shared by the queues) and later segments that arrive on another queue are handed to the
//! owner.
#![allow(unsafe_code)]

use super::ffi;
use super::port::{Frames, Port};
use crossbeam_channel::{Receiver, Sender};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Which queue owns each TCP flow, by peer (IPv4 address, port).
pub type FlowOwners = Arc<Mutex<HashMap<(u32, u16), u16>>>;
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
    /// TCP segments handed to the queue that owns their flow.
    pub steered: u64,
    /// Frames received as segment chains (longer than one mbuf).
    pub rx_chains: u64,
    /// Frames sent with TCP segmentation offload (longer than the port's MTU).
    pub tso_frames: u64,
    /// Frames longer than the port's MTU that were not TCP/IPv4, so could not be segmented:
    /// dropped.
    pub oversize_drops: u64,
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
    /// Inboxes of every queue (index = queue), for steered segments.
    inboxes: Vec<Sender<Vec<u8>>>,
    owners: FlowOwners,
    stats: QueueStats,
    got_rx: bool,
    frames: Frames,
    /// Where smoltcp builds a frame longer than one mbuf before it is copied into a chain.
    tx_scratch: Vec<u8>,
}

impl QueueDevice {
    /// The device of `queue` on `port`; `arp_in` receives frames from other queues (ARP copies
    /// and steered segments), `inboxes[q]` sends to queue q; `owners` is shared by all queues.
    pub fn new(port: &Port, queue: u16, arp_in: Receiver<Vec<u8>>, inboxes: Vec<Sender<Vec<u8>>>, owners: FlowOwners) -> QueueDevice {
        let arp_out: Vec<Sender<Vec<u8>>> = inboxes.iter().enumerate().filter(|(i, _)| *i != queue as usize).map(|(_, t)| t.clone()).collect();
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
            inboxes,
            owners,
            stats: QueueStats::default(),
            got_rx: false,
            frames: port.frames(),
            tx_scratch: Vec::new(),
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
                // SAFETY: m is a valid received mbuf owned by this token, of one segment (chains
                // are copied into RxToken::Copy by receive): its data pointer and data_len
                // describe the whole frame. The slice does not outlive the mbuf, freed right
                // after f.
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
        if len > d.frames.mbuf_data as usize {
            return d.send_chain(len, f);
        }
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
            let frame = std::slice::from_raw_parts_mut(p, len);
            let r = f(frame);
            if len > d.frames.port_frame() && !d.mark_tso(m, frame) {
                ffi::tlog_pktmbuf_free(m);
                return r;
            }
            d.queue_tx(m, len);
            r
        }
    }
}

impl QueueDevice {
    /// Batches a filled mbuf (chain) for transmit.
    fn queue_tx(&mut self, m: *mut ffi::rte_mbuf, len: usize) {
        self.stats.tx_packets += 1;
        self.stats.tx_bytes += len as u64;
        self.tx.push(m);
        if self.tx.len() >= BURST {
            self.flush_tx();
        }
    }

    /// Asks the port to segment `frame` (held in `m`) to its MTU. False (and counted) when the
    /// frame is not IPv4/TCP, so cannot be segmented.
    fn mark_tso(&mut self, m: *mut ffi::rte_mbuf, frame: &[u8]) -> bool {
        match tso_headers(frame) {
            Some((l3, l4)) => {
                let segsz = self.frames.port_mtu as usize - (14 + l3 + l4);
                // SAFETY: m is a valid mbuf (chain) of ours holding `frame`; this only sets its
                // offload fields.
                unsafe { ffi::tlog_pktmbuf_set_tso(m, 14, l3 as u16, l4 as u16, segsz as u16) };
                self.stats.tso_frames += 1;
                true
            }
            None => {
                self.stats.oversize_drops += 1;
                false
            }
        }
    }

    /// Sends a frame longer than one mbuf: smoltcp builds it in the reused scratch buffer,
    /// which is copied into a chain of mbufs.
    fn send_chain<R, F: FnOnce(&mut [u8]) -> R>(&mut self, len: usize, f: F) -> R {
        let mut scratch = std::mem::take(&mut self.tx_scratch);
        scratch.clear();
        scratch.resize(len, 0);
        let r = f(&mut scratch);
        if let Some(m) = self.chain_from(&scratch) {
            if len <= self.frames.port_frame() || self.mark_tso(m, &scratch) {
                self.queue_tx(m, len);
            } else {
                // SAFETY: m is our chain, not queued.
                unsafe { ffi::tlog_pktmbuf_free(m) };
            }
        }
        self.tx_scratch = scratch;
        r
    }

    /// Copies `frame` into a new chain of mbufs from our pool; None (counted) when the pool
    /// runs dry.
    fn chain_from(&mut self, frame: &[u8]) -> Option<*mut ffi::rte_mbuf> {
        let mut head: *mut ffi::rte_mbuf = std::ptr::null_mut();
        let mut rest = frame;
        while !rest.is_empty() {
            // SAFETY: mbufs come from our pool; append reserves n <= tailroom bytes of the new
            // segment, which are filled from `rest`; chain links it after `head` (and fails,
            // leaving it ours, past the segment limit). On any failure the whole chain is freed.
            unsafe {
                let seg = ffi::tlog_pktmbuf_alloc(self.pool);
                let n = if seg.is_null() { 0 } else { rest.len().min(ffi::tlog_pktmbuf_tailroom(seg) as usize) };
                let p = if n == 0 { std::ptr::null_mut() } else { ffi::tlog_pktmbuf_append(seg, n as u16) };
                if p.is_null() {
                    if !seg.is_null() {
                        ffi::tlog_pktmbuf_free(seg);
                    }
                    if !head.is_null() {
                        ffi::tlog_pktmbuf_free(head);
                    }
                    self.stats.alloc_failures += 1;
                    return None;
                }
                std::ptr::copy_nonoverlapping(rest.as_ptr(), p, n);
                if head.is_null() {
                    head = seg;
                } else if ffi::tlog_pktmbuf_chain(head, seg) != 0 {
                    ffi::tlog_pktmbuf_free(seg);
                    ffi::tlog_pktmbuf_free(head);
                    self.stats.alloc_failures += 1;
                    return None;
                }
                rest = &rest[n..];
            }
        }
        (!head.is_null()).then_some(head)
    }
}

/// The bytes of a received mbuf chain, in one buffer.
fn chain_bytes(m: *mut ffi::rte_mbuf) -> Vec<u8> {
    // SAFETY: m is a valid received mbuf (chain); each segment's data pointer and data_len
    // describe its bytes, and next links the segments (null at the end). Only read here.
    unsafe {
        let mut out = Vec::with_capacity(ffi::tlog_pktmbuf_pkt_len(m) as usize);
        let mut seg = m;
        while !seg.is_null() {
            out.extend_from_slice(std::slice::from_raw_parts(ffi::tlog_pktmbuf_data(seg), ffi::tlog_pktmbuf_data_len(seg) as usize));
            seg = ffi::tlog_pktmbuf_next(seg);
        }
        out
    }
}

/// For an IPv4/TCP Ethernet frame: the IP and TCP header lengths (bytes), as TCP segmentation
/// offload needs them; None for anything else.
fn tso_headers(f: &[u8]) -> Option<(usize, usize)> {
    if f.len() < 34 || f[12] != 0x08 || f[13] != 0x00 || f[23] != 6 {
        return None;
    }
    let l3 = ((f[14] & 0x0f) as usize) * 4;
    let t = 14 + l3;
    if l3 < 20 || f.len() < t + 20 {
        return None;
    }
    let l4 = ((f[t + 12] >> 4) as usize) * 4;
    (l4 >= 20 && f.len() >= t + l4).then_some((l3, l4))
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
        let mut m = self.next_mbuf()?;
        // Hand TCP segments of flows owned by another queue to that queue.
        while self.inboxes.len() > 1 {
            // SAFETY: m is a valid mbuf just received; its data segment is data_len bytes.
            let frame = unsafe { std::slice::from_raw_parts(ffi::tlog_pktmbuf_data(m), ffi::tlog_pktmbuf_data_len(m) as usize) };
            let Some((peer, syn)) = tcp_peer(frame) else { break };
            let owner = {
                let mut o = self.owners.lock().unwrap_or_else(|p| p.into_inner());
                if syn {
                    o.insert(peer, self.queue);
                    self.queue
                } else {
                    *o.entry(peer).or_insert(self.queue)
                }
            };
            if owner == self.queue {
                break;
            }
            let copy = chain_bytes(m);
            // SAFETY: the frame was copied; the mbuf is ours to free.
            unsafe { ffi::tlog_pktmbuf_free(m) };
            if let Some(tx) = self.inboxes.get(owner as usize) {
                if tx.try_send(copy).is_ok() {
                    self.stats.steered += 1;
                }
            }
            m = self.next_mbuf()?;
        }
        self.got_rx = true;
        // SAFETY: m is a valid mbuf just received.
        if unsafe { ffi::tlog_pktmbuf_nb_segs(m) } > 1 {
            // A chain: smoltcp needs the frame in one slice.
            let frame = chain_bytes(m);
            // SAFETY: the chain was copied; the mbuf is ours to free.
            unsafe { ffi::tlog_pktmbuf_free(m) };
            self.stats.rx_chains += 1;
            self.stats.rx_packets += 1;
            self.stats.rx_bytes += frame.len() as u64;
            return Some((RxToken::Copy(frame), TxToken { dev: self }));
        }
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
        c.max_transmission_unit = self.frames.stack_frame();
        c.max_burst_size = Some(BURST);
        c
    }
}

/// For an IPv4 TCP frame: the peer (source address, source port) and whether it is a SYN
/// without ACK (a new connection).
fn tcp_peer(f: &[u8]) -> Option<((u32, u16), bool)> {
    if f.len() < 34 || f[12] != 0x08 || f[13] != 0x00 || f[23] != 6 {
        return None;
    }
    let ihl = ((f[14] & 0x0f) as usize) * 4;
    let t = 14 + ihl;
    if f.len() < t + 14 {
        return None;
    }
    let src = u32::from_be_bytes([f[26], f[27], f[28], f[29]]);
    let port = u16::from_be_bytes([f[t], f[t + 1]]);
    let flags = f[t + 13];
    Some(((src, port), flags & 0x02 != 0 && flags & 0x10 == 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp_frame(ihl: u8, doff: u8, len: usize) -> Vec<u8> {
        let mut f = vec![0u8; len];
        f[12] = 0x08;
        f[14] = 0x40 | ihl;
        f[23] = 6;
        f[14 + ihl as usize * 4 + 12] = doff << 4;
        f
    }

    #[test]
    fn tso_headers_reads_ip_and_tcp_lengths() {
        assert_eq!(tso_headers(&tcp_frame(5, 8, 3000)), Some((20, 32)));
        assert_eq!(tso_headers(&tcp_frame(6, 5, 3000)), Some((24, 20)));
        let mut udp = tcp_frame(5, 5, 3000);
        udp[23] = 17;
        assert_eq!(tso_headers(&udp), None);
        let mut arp = tcp_frame(5, 5, 3000);
        arp[13] = 0x06;
        assert_eq!(tso_headers(&arp), None);
        assert_eq!(tso_headers(&tcp_frame(5, 2, 3000)), None, "data offset below 20 bytes");
        assert_eq!(tso_headers(&tcp_frame(5, 8, 60)), None, "frame shorter than its headers");
    }
}
