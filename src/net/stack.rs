//! The userspace TCP stack shared by the `tap` and `dpdk` front-ends: smoltcp (with CUBIC
//! congestion control) on one `Interface` per queue, a bounded set of pre-created listening
//! sockets, each established connection driving a sans-IO [`Session`].
//!
//! Per poll: the interface moves packets; then for every connection the pending output
//! (session output and flushed acks from its channel) is written into the socket (each frame
//! whole, Nagle and delayed ACK off), and received bytes are fed to the session unless it is
//! blocked by backpressure (then they stay in the socket's receive buffer and the TCP window
//! closes). Closed sockets are put back to listening.

use crate::bench::SinkSession;
use crate::namespace::Engine;
use crate::session::{Progress, Session};
use crossbeam_channel::Receiver;
use smoltcp::iface::{Config, Interface, PollIngressSingleResult, PollResult, SocketHandle, SocketSet};
use smoltcp::phy::Device;
use smoltcp::socket::tcp;
use smoltcp::time::Instant;
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpCidr, Ipv4Address};
use std::sync::Arc;

/// Received frames processed per poll before the stack transmits (see [`Stack::poll`]).
pub const INGRESS_BUDGET: usize = 32;

/// Bound on egress rounds per call: a round sends at most one segment per socket, and a
/// socket's burst is bounded by its windows, so this only guards against a socket that keeps
/// reporting a change without sending.
const EGRESS_ROUNDS: usize = 4096;

/// Interface settings of one queue's stack.
#[derive(Clone, Debug)]
pub struct StackConfig {
    /// MAC address.
    pub mac: [u8; 6],
    /// IPv4 address and prefix length.
    pub address: (std::net::Ipv4Addr, u8),
    /// Default gateway.
    pub gateway: Option<std::net::Ipv4Addr>,
    /// TCP port served.
    pub port: u16,
    /// Sockets (connections) at most.
    pub sockets: usize,
    /// Receive and send buffer per socket, bytes.
    pub buffer_bytes: usize,
    /// Serve the benchmark sink instead of tlog sessions (`tlogd --sink`).
    pub sink: bool,
}

struct Conn {
    handle: SocketHandle,
    session: Option<Session>,
    sink: Option<SinkSession>,
    acks: Option<Receiver<Vec<u8>>>,
    out: Vec<u8>,
    out_pos: usize,
    blocked: bool,
}

/// One queue's userspace stack.
pub struct Stack {
    iface: Interface,
    sockets: SocketSet<'static>,
    conns: Vec<Conn>,
    engine: Arc<Engine>,
    cfg: StackConfig,
    all_busy_logged: bool,
}

fn now() -> Instant {
    Instant::now()
}

impl Stack {
    /// Creates the interface on `device` and `cfg.sockets` listening sockets.
    pub fn new<D: Device + ?Sized>(device: &mut D, engine: Arc<Engine>, cfg: StackConfig) -> Stack {
        let mut c = Config::new(HardwareAddress::Ethernet(EthernetAddress(cfg.mac)));
        let mut seed = [0u8; 8];
        let _ = getrandom::getrandom(&mut seed);
        c.random_seed = u64::from_le_bytes(seed);
        let mut iface = Interface::new(c, device, now());
        let (a, p) = cfg.address;
        iface.update_ip_addrs(|addrs| {
            let o = a.octets();
            let _ = addrs.push(IpCidr::new(Ipv4Address::new(o[0], o[1], o[2], o[3]).into(), p));
        });
        if let Some(g) = cfg.gateway {
            let o = g.octets();
            let _ = iface.routes_mut().add_default_ipv4_route(Ipv4Address::new(o[0], o[1], o[2], o[3]));
        }
        let mut sockets = SocketSet::new(Vec::new());
        let mut conns = Vec::new();
        for _ in 0..cfg.sockets {
            let mut s = tcp::Socket::new(tcp::SocketBuffer::new(vec![0u8; cfg.buffer_bytes]), tcp::SocketBuffer::new(vec![0u8; cfg.buffer_bytes]));
            Self::tune(&mut s);
            let _ = s.listen(cfg.port);
            conns.push(Conn { handle: sockets.add(s), session: None, sink: None, acks: None, out: Vec::new(), out_pos: 0, blocked: false });
        }
        Stack { iface, sockets, conns, engine, cfg, all_busy_logged: false }
    }

    fn tune(s: &mut tcp::Socket) {
        s.set_nagle_enabled(false);
        s.set_ack_delay(None);
        s.set_congestion_control(tcp::CongestionControl::Cubic);
    }

    /// Connections being served.
    pub fn active(&self) -> usize {
        self.conns.iter().filter(|c| c.session.is_some()).count()
    }

    /// How long the caller may sleep before the next poll (capped at `max`).
    pub fn delay(&mut self, max: std::time::Duration) -> std::time::Duration {
        let d = self.iface.poll_delay(now(), &self.sockets).map(|d| std::time::Duration::from_micros(d.total_micros())).unwrap_or(max);
        d.min(max)
    }

    /// One round: take at most [`INGRESS_BUDGET`] received frames, send what the sockets have
    /// (ACKs, window updates, retransmissions), serve every connection, then send what the
    /// sessions wrote. Returns true when anything moved.
    ///
    /// Why a budget: smoltcp's `Interface::poll` drains the device before it transmits
    /// anything, and a socket only ACKs in-order data on egress. Under a steady stream
    /// (several connections per queue, megabyte windows) a drain can run for thousands of
    /// frames while no ACK leaves, and a starved stack (e.g. a poll thread that only gets a
    /// scheduler slice every few ms) then answers with stale ACKs that make peers retransmit
    /// data that already arrived. Bounding the drain keeps ACKs flowing; measured throughput
    /// is the same as with an unbounded drain (tap and dpdk, 8 connections, within noise).
    pub fn poll<D: Device + ?Sized>(&mut self, device: &mut D) -> bool {
        let t = now();
        self.iface.poll_maintenance(t);
        let mut work = false;
        for _ in 0..INGRESS_BUDGET {
            match self.iface.poll_ingress_single(t, device, &mut self.sockets) {
                PollIngressSingleResult::None => break,
                PollIngressSingleResult::PacketProcessed | PollIngressSingleResult::SocketStateChanged => work = true,
            }
        }
        Self::egress(&mut self.iface, device, &mut self.sockets);
        let mut served = false;
        for c in &mut self.conns {
            served |= if self.cfg.sink {
                Self::serve_sink(&mut self.sockets, c, self.cfg.port)
            } else {
                Self::serve(&self.engine, &mut self.sockets, c, self.cfg.port)
            };
        }
        // Push out what the sessions wrote (and the window they opened by reading).
        if served {
            Self::egress(&mut self.iface, device, &mut self.sockets);
        }
        work |= served;
        let busy = self.conns.iter().all(|c| self.sockets.get::<tcp::Socket>(c.handle).state() != tcp::State::Listen);
        if busy && !self.all_busy_logged {
            tracing::warn!(
                "all {} sockets of this queue are in use (net.sockets_per_queue): further connections are refused until one closes",
                self.cfg.sockets
            );
        }
        self.all_busy_logged = busy;
        work
    }

    /// Transmits until no socket has anything more to send (each round sends at most one
    /// segment per socket; smoltcp bounds a socket's burst by its window and congestion window).
    fn egress<D: Device + ?Sized>(iface: &mut Interface, device: &mut D, sockets: &mut SocketSet<'static>) {
        for _ in 0..EGRESS_ROUNDS {
            if matches!(iface.poll_egress(now(), device, sockets), PollResult::None) {
                break;
            }
        }
    }

    /// Puts a closed socket back to listening, tuned as at start.
    fn relisten(s: &mut tcp::Socket, port: u16) {
        s.abort();
        Self::tune(s);
        let _ = s.listen(port);
    }

    /// One connection of the benchmark sink: feed every received byte, send the acks.
    fn serve_sink(sockets: &mut SocketSet<'static>, c: &mut Conn, port: u16) -> bool {
        let s = sockets.get_mut::<tcp::Socket>(c.handle);
        let mut work = false;
        if c.sink.is_none() {
            if s.state() == tcp::State::Established {
                c.sink = Some(SinkSession::new());
                c.out.clear();
                c.out_pos = 0;
                work = true;
            } else {
                if !s.is_open() {
                    Self::relisten(s, port);
                }
                return false;
            }
        }
        let Some(sink) = c.sink.as_mut() else { return work };
        let mut close = false;
        if c.out_pos >= c.out.len() {
            while !close && s.can_recv() {
                match s.recv(|buf| (buf.len(), sink.on_bytes(buf))) {
                    Ok(Ok(())) => work = true,
                    Ok(Err(e)) => {
                        tracing::debug!("sink connection: {e}");
                        close = true;
                    }
                    Err(_) => close = true,
                }
            }
            if sink.has_output() {
                c.out = sink.take_output();
                c.out_pos = 0;
            }
        }
        if c.out_pos < c.out.len() && s.can_send() {
            if let Ok(n) = s.send_slice(&c.out[c.out_pos..]) {
                c.out_pos += n;
                work |= n > 0;
            }
        }
        if close || (!s.may_recv() && !s.can_recv()) || !s.is_open() {
            c.sink = None;
            s.close();
            work = true;
        }
        work
    }

    fn serve(engine: &Arc<Engine>, sockets: &mut SocketSet<'static>, c: &mut Conn, port: u16) -> bool {
        let s = sockets.get_mut::<tcp::Socket>(c.handle);
        let mut work = false;
        if c.session.is_none() {
            if s.state() == tcp::State::Established {
                let (tx, rx) = crossbeam_channel::unbounded();
                let peer = s.remote_endpoint().map(|e| e.to_string()).unwrap_or_default();
                tracing::debug!(%peer, "connection accepted by the userspace stack");
                c.session = Some(Session::new(engine.clone(), tx, peer));
                c.acks = Some(rx);
                c.out.clear();
                c.out_pos = 0;
                c.blocked = false;
                work = true;
            } else if !s.is_open() {
                Self::relisten(s, port);
                return false;
            } else {
                return false;
            }
        }
        let Some(session) = c.session.as_mut() else { return work };
        // Output: pending bytes, then flushed acks.
        loop {
            if c.out_pos < c.out.len() {
                if !s.can_send() {
                    break;
                }
                match s.send_slice(&c.out[c.out_pos..]) {
                    Ok(0) => break,
                    Ok(n) => {
                        c.out_pos += n;
                        work = true;
                    }
                    Err(_) => break,
                }
                continue;
            }
            c.out.clear();
            c.out_pos = 0;
            let mut got = false;
            if let Some(rx) = &c.acks {
                while let Ok(f) = rx.try_recv() {
                    c.out.extend_from_slice(&f);
                    got = true;
                    if c.out.len() > (1 << 20) {
                        break;
                    }
                }
            }
            if !got {
                break;
            }
        }
        // Input.
        let mut close = false;
        if c.blocked {
            match session.resume() {
                Progress::Ready => c.blocked = false,
                Progress::Blocked => {}
                Progress::Close => close = true,
            }
        }
        while !c.blocked && !close && s.can_recv() {
            let r = s.recv(|buf| {
                let n = buf.len();
                (n, session.on_bytes(buf))
            });
            work = true;
            match r {
                Ok(Progress::Ready) => {}
                Ok(Progress::Blocked) => c.blocked = true,
                Ok(Progress::Close) => close = true,
                Err(_) => close = true,
            }
        }
        if session.has_output() {
            c.out.extend_from_slice(&session.take_output());
            if let Ok(n) = s.send_slice(&c.out[c.out_pos..]) {
                c.out_pos += n;
            }
        }
        let peer_gone = !s.may_recv() && !s.can_recv() && s.state() != tcp::State::Established;
        if close && c.out_pos >= c.out.len() {
            s.close();
        }
        if peer_gone || !s.is_open() {
            if let Some(mut sess) = c.session.take() {
                sess.detach();
            }
            c.acks = None;
            if !s.is_open() || s.state() == tcp::State::CloseWait {
                s.close();
            }
            work = true;
        }
        work
    }
}
