//! The userspace TCP stack shared by the `tap` and `dpdk` front-ends: smoltcp (with CUBIC
//! congestion control) on one `Interface` per queue, a bounded set of pre-created listening
//! sockets, each established connection driving a sans-IO [`Protocol`] (a tlog session, or the
//! benchmark sink) made by the caller's [`Factory`], under the front-ends' connection [`Rules`].
//!
//! Per poll: the interface moves packets; then for every connection the pending output
//! (session output and flushed acks from its channel) is written into the socket (each frame
//! whole, Nagle and delayed ACK off), and received bytes are fed to the session unless it is
//! blocked by backpressure (then they stay in the socket's receive buffer and the TCP window
//! closes). Closed sockets are put back to listening.

use super::{Factory, Rules, HANDSHAKE_RECEIVE_BYTES, RECEIVE_BYTES};
use crate::config::{parse_cidr, parse_mac, Config};
use crate::error::{Error, Result};
use crate::flush::Ack;
use crate::session::{encode_ack, Progress, Protocol};
use crossbeam_channel::Receiver;
use smoltcp::iface::{Config as IfaceConfig, Interface, PollIngressSingleResult, PollResult, SocketHandle, SocketSet};
use smoltcp::phy::Device;
use smoltcp::socket::tcp;
use smoltcp::time::Instant;
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpCidr, Ipv4Address};

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
    /// Connection rules (the socket count bounds connections per queue).
    pub rules: Rules,
}

/// The stack settings from `[net]`, `[server]` and the port of `server.listen`.
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
        rules: Rules::from_config(cfg),
    })
}

struct Conn {
    handle: SocketHandle,
    proto: Option<Box<dyn Protocol>>,
    acks: Option<Receiver<Ack>>,
    out: Vec<u8>,
    out_pos: usize,
    blocked: bool,
    accepted: std::time::Instant,
    last_rx: std::time::Instant,
    peer: String,
}

/// One queue's userspace stack.
pub struct Stack {
    iface: Interface,
    sockets: SocketSet<'static>,
    conns: Vec<Conn>,
    factory: Factory,
    cfg: StackConfig,
    all_busy_logged: bool,
}

fn now() -> Instant {
    Instant::now()
}

impl Stack {
    /// Creates the interface on `device` and `cfg.sockets` listening sockets, whose connections
    /// speak what `factory` makes.
    pub fn new<D: Device + ?Sized>(device: &mut D, factory: Factory, cfg: StackConfig) -> Stack {
        let mut c = IfaceConfig::new(HardwareAddress::Ethernet(EthernetAddress(cfg.mac)));
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
            let now = std::time::Instant::now();
            conns.push(Conn {
                handle: sockets.add(s),
                proto: None,
                acks: None,
                out: Vec::new(),
                out_pos: 0,
                blocked: false,
                accepted: now,
                last_rx: now,
                peer: String::new(),
            });
        }
        Stack { iface, sockets, conns, factory, cfg, all_busy_logged: false }
    }

    fn tune(s: &mut tcp::Socket) {
        s.set_nagle_enabled(false);
        s.set_ack_delay(None);
        s.set_congestion_control(tcp::CongestionControl::Cubic);
    }

    /// Connections being served.
    pub fn active(&self) -> usize {
        self.conns.iter().filter(|c| c.proto.is_some()).count()
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
            served |= Self::serve(&self.factory, &mut self.sockets, c, self.cfg.port, &self.cfg.rules);
        }
        // Push out what the sessions wrote (and the window they opened by reading).
        if served {
            Self::egress(&mut self.iface, device, &mut self.sockets);
        }
        work |= served;
        let busy = self.conns.iter().all(|c| self.sockets.get::<tcp::Socket>(c.handle).state() != tcp::State::Listen);
        if busy {
            // Make room: the oldest connection that has not finished its handshake goes.
            let oldest = self.conns.iter_mut().filter(|c| c.proto.as_ref().map(|p| !p.attached()).unwrap_or(false)).min_by_key(|c| c.accepted);
            if let Some(c) = oldest {
                tracing::warn!(peer = %c.peer, "all {} sockets of this queue are in use (net.sockets_per_queue): closing the oldest connection that has not finished its handshake", self.cfg.sockets);
                Self::drop_conn(&mut self.sockets, c, self.cfg.port);
                work = true;
            } else if !self.all_busy_logged {
                tracing::warn!(
                    "all {} sockets of this queue are in use by attached connections (net.sockets_per_queue): further connections are refused until one closes",
                    self.cfg.sockets
                );
            }
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

    /// Ends a connection at once (aborts its socket, lets go of its vdisk) and listens again.
    fn drop_conn(sockets: &mut SocketSet<'static>, c: &mut Conn, port: u16) {
        if let Some(mut p) = c.proto.take() {
            p.close();
        }
        c.acks = None;
        c.out.clear();
        c.out_pos = 0;
        Self::relisten(sockets.get_mut::<tcp::Socket>(c.handle), port);
    }

    fn serve(factory: &Factory, sockets: &mut SocketSet<'static>, c: &mut Conn, port: u16, rules: &Rules) -> bool {
        let s = sockets.get_mut::<tcp::Socket>(c.handle);
        let mut work = false;
        if c.proto.is_none() {
            if s.state() == tcp::State::Established {
                let peer = s.remote_endpoint().map(|e| e.to_string()).unwrap_or_default();
                tracing::debug!(%peer, "connection accepted by the userspace stack");
                c.proto = Some(factory(peer.clone()));
                c.acks = None;
                c.peer = peer;
                c.out.clear();
                c.out_pos = 0;
                c.blocked = false;
                c.accepted = std::time::Instant::now();
                c.last_rx = c.accepted;
                work = true;
            } else if !s.is_open() {
                Self::relisten(s, port);
                return false;
            } else {
                return false;
            }
        }
        let Some(proto) = c.proto.as_mut() else { return work };
        let attached = proto.attached();
        if attached && c.acks.is_none() {
            c.acks = proto.take_acks();
        }
        let expired = if !attached {
            (c.accepted.elapsed() > rules.handshake_timeout).then(|| format!("no handshake within {:?} (server.handshake_timeout_ms)", rules.handshake_timeout))
        } else {
            rules
                .idle_timeout
                .filter(|d| proto.expects_input() && c.last_rx.elapsed() > *d)
                .map(|d| format!("nothing received for {d:?} (server.idle_timeout_ms)"))
        };
        if let Some(why) = expired {
            tracing::warn!(peer = %c.peer, "closing connection: {why}");
            Self::drop_conn(sockets, c, port);
            return true;
        }
        // Output: pending bytes, then asynchronous acks.
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
                while let Ok(a) = rx.try_recv() {
                    c.out.extend_from_slice(&encode_ack(&a));
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
            match proto.resume() {
                Progress::Ready => c.blocked = false,
                Progress::Blocked => {}
                Progress::Close => close = true,
            }
        }
        let want = if attached { RECEIVE_BYTES } else { HANDSHAKE_RECEIVE_BYTES };
        while !c.blocked && !close && s.can_recv() {
            let r = s.recv(|buf| {
                let n = buf.len().min(want);
                let room = proto.receive_buffer(n);
                room[..n].copy_from_slice(&buf[..n]);
                (n, proto.on_received(n))
            });
            work = true;
            c.last_rx = std::time::Instant::now();
            match r {
                Ok(Progress::Ready) => {}
                Ok(Progress::Blocked) => c.blocked = true,
                Ok(Progress::Close) => close = true,
                Err(_) => close = true,
            }
        }
        if proto.has_output() {
            c.out.extend_from_slice(&proto.take_output());
            if let Ok(n) = s.send_slice(&c.out[c.out_pos..]) {
                c.out_pos += n;
            }
        }
        let peer_gone = !s.may_recv() && !s.can_recv() && s.state() != tcp::State::Established;
        if close && c.out_pos >= c.out.len() {
            s.close();
        }
        if peer_gone || !s.is_open() {
            if let Some(mut p) = c.proto.take() {
                p.close();
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
