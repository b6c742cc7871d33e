//! The `kernel` front-end: the kernel's TCP through std::net. Two threads per connection: the
//! reader feeds the sans-IO [`Session`] and writes what it answers (received acks, errors)
//! itself; the writer drains the connection's frame channel (flushed acks from the flush
//! pipeline, fencing notices) in batches, so a slow client never stalls the pipeline. The two
//! share the socket's write half under a lock, one whole batch of frames at a time.

use crate::error::{Error, IoContext, Result};
use crate::namespace::Engine;
use crate::session::{Progress, Session};
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Bytes offered to each `read` (received straight into the session's frame buffer).
const RECEIVE_BYTES: usize = 256 << 10;

/// Binds `addr`.
pub fn bind(addr: &str) -> Result<TcpListener> {
    let l = TcpListener::bind(addr).ctx(|| format!("listen on {addr}"))?;
    l.set_nonblocking(true).ctx(|| "set nonblocking".into())?;
    Ok(l)
}

/// Serves connections until `stop` is set (checked every 100 ms); at most `max` at once (more
/// are refused with a log line: server.max_connections).
pub fn serve(engine: Arc<Engine>, listener: TcpListener, max: usize, stop: Arc<AtomicBool>) -> Result<()> {
    let active = Arc::new(AtomicUsize::new(0));
    while !stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((stream, peer)) => {
                if active.load(Ordering::SeqCst) >= max {
                    tracing::warn!(%peer, "connection refused: {max} connections already served (server.max_connections)");
                    drop(stream);
                    continue;
                }
                active.fetch_add(1, Ordering::SeqCst);
                let e = engine.clone();
                let a = active.clone();
                let st = stop.clone();
                let r = std::thread::Builder::new().name(format!("conn-{peer}")).spawn(move || {
                    if let Err(err) = handle(e, stream, peer.to_string(), st) {
                        tracing::debug!(%peer, "connection ended: {err}");
                    }
                    a.fetch_sub(1, Ordering::SeqCst);
                });
                if let Err(err) = r {
                    tracing::error!("cannot spawn a connection thread: {err}");
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => {
                tracing::warn!("accept: {e}");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
    Ok(())
}

/// Writes the session's answer on the reader's thread (the client reads its acks, or its
/// socket fills and this waits: backpressure). A failed write shuts the socket down, which
/// ends the reader's loop too.
fn send(out: &Mutex<TcpStream>, frames: &[u8], peer: &str) {
    let mut w = out.lock().unwrap_or_else(|p| p.into_inner());
    if let Err(e) = w.write_all(frames) {
        tracing::debug!(%peer, "write: {e}");
        let _ = w.shutdown(Shutdown::Both);
    }
}

fn handle(engine: Arc<Engine>, stream: TcpStream, peer: String, stop: Arc<AtomicBool>) -> Result<()> {
    stream.set_nonblocking(false).ctx(|| "set blocking".into())?;
    stream.set_nodelay(true).ctx(|| "set nodelay".into())?;
    stream.set_read_timeout(Some(Duration::from_millis(200))).ctx(|| "set read timeout".into())?;
    let (tx, rx) = crossbeam_channel::unbounded::<Vec<u8>>();
    let out = Arc::new(Mutex::new(stream.try_clone().ctx(|| "clone socket".into())?));
    let wstream = out.clone();
    let wpeer = peer.clone();
    let writer = std::thread::Builder::new()
        .name(format!("conn-w-{peer}"))
        .spawn(move || {
            let mut buf = Vec::with_capacity(64 << 10);
            while let Ok(f) = rx.recv() {
                buf.clear();
                buf.extend_from_slice(&f);
                while buf.len() < (1 << 20) {
                    match rx.try_recv() {
                        Ok(f) => buf.extend_from_slice(&f),
                        Err(_) => break,
                    }
                }
                let mut w = wstream.lock().unwrap_or_else(|p| p.into_inner());
                if let Err(e) = w.write_all(&buf) {
                    tracing::debug!(peer = %wpeer, "write: {e}");
                    let _ = w.shutdown(Shutdown::Both);
                    return;
                }
            }
        })
        .ctx(|| "spawn writer".into())?;
    let mut session = Session::new(engine.clone(), tx.clone(), peer.clone());
    let mut rstream = stream;
    let result = loop {
        if stop.load(Ordering::SeqCst) {
            break Ok(());
        }
        let n = match rstream.read(session.receive_buffer(RECEIVE_BYTES)) {
            Ok(0) => break Ok(()),
            Ok(n) => n,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => break Err(Error::io(format!("read from {peer}"), e)),
        };
        let mut p = session.on_received(n);
        loop {
            if session.has_output() {
                send(&out, &session.take_output(), &peer);
            }
            match p {
                Progress::Ready => break,
                Progress::Close => break,
                Progress::Blocked => {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    engine.wait_space(Duration::from_millis(100));
                    p = session.resume();
                }
            }
        }
        if p == Progress::Close {
            break Ok(());
        }
    };
    if session.has_output() {
        send(&out, &session.take_output(), &peer);
    }
    session.detach();
    drop(session);
    drop(tx);
    let _ = writer.join();
    let _ = rstream.shutdown(Shutdown::Both);
    result
}
