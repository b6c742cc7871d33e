//! The `kernel` front-end: the kernel's TCP through std::net. Each connection has a reader
//! thread that feeds its [`Protocol`] and writes what it answers (received acks, errors); once
//! attached, a writer thread drains the connection's asynchronous acks (flushed acks, fencing,
//! notices) in batches, so a slow client never stalls the pipeline. The two share the socket's
//! write half under a lock, one whole batch of frames at a time. Connection rules: see
//! [`super::Rules`].

use super::{Factory, Rules, HANDSHAKE_RECEIVE_BYTES, RECEIVE_BYTES};
use crate::error::{Error, IoContext, Result};
use crate::session::{encode_ack, Progress, Protocol};
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Binds `addr`.
pub fn bind(addr: &str) -> Result<TcpListener> {
    let l = TcpListener::bind(addr).ctx(|| format!("listen on {addr}"))?;
    l.set_nonblocking(true).ctx(|| "set nonblocking".into())?;
    Ok(l)
}

/// One served connection, as the accept loop sees it.
struct Entry {
    id: u64,
    accepted: Instant,
    attached: Arc<AtomicBool>,
    stream: TcpStream,
    peer: String,
}

/// The connections being served.
#[derive(Default)]
struct Registry {
    conns: Mutex<Vec<Entry>>,
    next: AtomicU64,
}

impl Registry {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Entry>> {
        self.conns.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes room for one more: if full, closes the oldest unattached connection. Returns false
    /// when full of attached connections.
    fn room(&self, max: usize) -> bool {
        let mut g = self.lock();
        if g.len() < max {
            return true;
        }
        let oldest = g.iter().enumerate().filter(|(_, e)| !e.attached.load(Ordering::SeqCst)).min_by_key(|(_, e)| e.accepted).map(|(i, _)| i);
        match oldest {
            Some(i) => {
                let e = g.remove(i);
                tracing::warn!(peer = %e.peer, "{max} connections served (server.max_connections): closing the oldest one that has not finished its handshake ({:?} old) to take a new one", e.accepted.elapsed());
                let _ = e.stream.shutdown(Shutdown::Both);
                true
            }
            None => false,
        }
    }

    fn remove(&self, id: u64) {
        self.lock().retain(|e| e.id != id);
    }
}

/// Serves connections until `stop` is set (checked every 20 ms), each speaking what `factory`
/// makes, under `rules`.
pub fn serve(listener: TcpListener, factory: Factory, rules: Rules, stop: Arc<AtomicBool>) -> Result<()> {
    let reg = Arc::new(Registry::default());
    let mut handles: Vec<std::thread::JoinHandle<()>> = Vec::new();
    while !stop.load(Ordering::SeqCst) {
        handles.retain(|h| !h.is_finished());
        match listener.accept() {
            Ok((stream, peer)) => {
                if !reg.room(rules.max_connections) {
                    tracing::warn!(%peer, "connection refused: {} attached connections already served (server.max_connections)", rules.max_connections);
                    drop(stream);
                    continue;
                }
                let clone = match stream.try_clone() {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(%peer, "cannot clone the socket: {e}");
                        continue;
                    }
                };
                let id = reg.next.fetch_add(1, Ordering::SeqCst);
                let attached = Arc::new(AtomicBool::new(false));
                reg.lock().push(Entry { id, accepted: Instant::now(), attached: attached.clone(), stream: clone, peer: peer.to_string() });
                let (f, r, st) = (factory.clone(), reg.clone(), stop.clone());
                let h = std::thread::Builder::new().name(format!("conn-{peer}")).spawn(move || {
                    if let Err(err) = handle(f(peer.to_string()), stream, peer.to_string(), rules, attached, st) {
                        tracing::debug!(%peer, "connection ended: {err}");
                    }
                    r.remove(id);
                });
                match h {
                    Ok(h) => handles.push(h),
                    Err(err) => {
                        tracing::error!("cannot spawn a connection thread: {err}");
                        reg.remove(id);
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => {
                tracing::warn!("accept: {e}");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
    // Connections see the stop flag within a read timeout (200 ms) and end.
    let deadline = Instant::now() + Duration::from_secs(5);
    for h in handles {
        while !h.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        if h.is_finished() {
            let _ = h.join();
        }
    }
    Ok(())
}

/// Writes frames under the socket lock (the client reads them, or its socket fills and this
/// waits: backpressure). A failed write shuts the socket down, which ends the reader too;
/// returns false then.
fn send(out: &Mutex<TcpStream>, frames: &[u8], peer: &str) -> bool {
    let mut w = out.lock().unwrap_or_else(|p| p.into_inner());
    if let Err(e) = w.write_all(frames) {
        tracing::debug!(%peer, "write: {e}");
        let _ = w.shutdown(Shutdown::Both);
        return false;
    }
    true
}

/// Starts the thread that drains the asynchronous acks of an attached connection.
fn start_writer(proto: &mut dyn Protocol, out: &Arc<Mutex<TcpStream>>, peer: &str) -> Result<Option<std::thread::JoinHandle<()>>> {
    let Some(rx) = proto.take_acks() else { return Ok(None) };
    let (w, p) = (out.clone(), peer.to_string());
    let h = std::thread::Builder::new()
        .name(format!("conn-w-{peer}"))
        .spawn(move || {
            let mut buf = Vec::with_capacity(64 << 10);
            while let Ok(a) = rx.recv() {
                buf.clear();
                buf.extend_from_slice(&encode_ack(&a));
                while buf.len() < (1 << 20) {
                    match rx.try_recv() {
                        Ok(a) => buf.extend_from_slice(&encode_ack(&a)),
                        Err(_) => break,
                    }
                }
                if !send(&w, &buf, &p) {
                    // The client is gone: dropping the channel stops whoever feeds it.
                    return;
                }
            }
        })
        .ctx(|| "spawn connection writer".into())?;
    Ok(Some(h))
}

fn handle(mut proto: Box<dyn Protocol>, stream: TcpStream, peer: String, rules: Rules, attached: Arc<AtomicBool>, stop: Arc<AtomicBool>) -> Result<()> {
    stream.set_nonblocking(false).ctx(|| "set blocking".into())?;
    stream.set_nodelay(true).ctx(|| "set nodelay".into())?;
    stream.set_read_timeout(Some(Duration::from_millis(200))).ctx(|| "set read timeout".into())?;
    let out = Arc::new(Mutex::new(stream.try_clone().ctx(|| "clone socket".into())?));
    let mut writer = None;
    let mut rstream = stream;
    let accepted = Instant::now();
    let mut last_rx = Instant::now();
    let result = loop {
        if stop.load(Ordering::SeqCst) {
            break Ok(());
        }
        let is_attached = proto.attached();
        if is_attached && writer.is_none() {
            attached.store(true, Ordering::SeqCst);
            writer = start_writer(proto.as_mut(), &out, &peer)?;
        }
        if !is_attached && accepted.elapsed() > rules.handshake_timeout {
            tracing::warn!(%peer, "closing connection: no handshake within {:?} (server.handshake_timeout_ms)", rules.handshake_timeout);
            break Ok(());
        }
        if let Some(idle) = rules.idle_timeout {
            if is_attached && proto.expects_input() && last_rx.elapsed() > idle {
                tracing::warn!(%peer, "closing connection: nothing received for {idle:?} (server.idle_timeout_ms)");
                break Ok(());
            }
        }
        let want = if is_attached { RECEIVE_BYTES } else { HANDSHAKE_RECEIVE_BYTES };
        let n = match rstream.read(proto.receive_buffer(want)) {
            Ok(0) => break Ok(()),
            Ok(n) => n,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut | std::io::ErrorKind::Interrupted) => continue,
            Err(e) => break Err(Error::io(format!("read from {peer}"), e)),
        };
        last_rx = Instant::now();
        let mut p = proto.on_received(n);
        loop {
            if proto.has_output() {
                let _ = send(&out, &proto.take_output(), &peer);
            }
            // The handshake may complete while blocked (an attach waits for a takeover's
            // drain): its acks must flow while the connection waits for buffer space.
            if writer.is_none() && proto.attached() {
                attached.store(true, Ordering::SeqCst);
                writer = start_writer(proto.as_mut(), &out, &peer)?;
            }
            match p {
                Progress::Ready | Progress::Close => break,
                Progress::Blocked => {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    proto.wait(Duration::from_millis(100));
                    p = proto.resume();
                }
            }
        }
        if p == Progress::Close {
            break Ok(());
        }
    };
    if proto.has_output() {
        let _ = send(&out, &proto.take_output(), &peer);
    }
    proto.close();
    drop(proto);
    if let Some(w) = writer {
        let _ = w.join();
    }
    let _ = rstream.shutdown(Shutdown::Both);
    result
}
