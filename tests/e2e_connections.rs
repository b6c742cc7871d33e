//! Adversity: connections that send nothing cannot lock honest clients out. More idle TCP
//! connections than `server.max_connections` are opened; an honest import still gets in (a new
//! connection takes the place of the oldest one still without a handshake), the idle ones are
//! closed at `server.handshake_timeout_ms`, and an attached connection that goes silent is
//! closed at `server.idle_timeout_ms`; each closure is logged.
//!
//! Before the fix there was no deadline: 1030 silent connections filled the 1024 slots for
//! ever, and `tlog import` got "Connection reset by peer".

mod common;
use common::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// Whether the server closed `s` within `within` (a read returns 0 or an error other than a
/// timeout).
fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    s.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    let end = Instant::now() + within;
    let mut b = [0u8; 64];
    while Instant::now() < end {
        match s.read(&mut b) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => continue,
            Err(_) => return true,
        }
    }
    false
}

#[test]
fn idle_connections_cannot_lock_out_an_honest_client() {
    let d = tempfile::tempdir().unwrap();
    let cfg = d.path().join("t.toml");
    std::fs::write(&cfg, "[server]\nmax_connections = 16\nhandshake_timeout_ms = 8000\nidle_timeout_ms = 2000\n").unwrap();
    let t = Tlogd::start(&d.path().join("data"), Some(&cfg), free_port());
    // wait_port's probe connection counts too; let it go first.
    std::thread::sleep(Duration::from_millis(100));
    let mut idle: Vec<TcpStream> = (0..24).map(|_| TcpStream::connect(t.addr()).unwrap()).collect();
    let img = d.path().join("a.raw");
    mixed_image(&img, 2, 9);
    // The import gives up after 3 s, long before the handshake deadline (8 s) would free a
    // slot: it succeeds only by taking the place of a silent connection.
    let o = run(std::process::Command::new(tlog_bin()).args(["import", "--reconnect-timeout", "3", "--server", &t.addr(), "--vdisk", "honest"]).arg(&img));
    assert_ok(&o, "import while more silent connections than max_connections are open");
    // The silent ones are closed by the handshake deadline (the first ones already made room).
    for (i, s) in idle.iter_mut().enumerate() {
        assert!(closed_within(s, Duration::from_secs(15)), "silent connection {i} was not closed");
    }
    // An attached connection that goes quiet is closed by the idle deadline.
    let mut a = TcpStream::connect(t.addr()).unwrap();
    a.write_all(&tlog::wire::encode_handshake_request(&tlog::wire::HandshakeRequest {
        version: tlog::wire::PROTOCOL_VERSION,
        vdisk_id: "quiet".into(),
        first_sequence: 1,
        token: String::new(),
        reset_first_sequence: false,
        resume_epoch: 0,
        kind: Default::default(),
    }))
    .unwrap();
    let start = Instant::now();
    assert!(closed_within(&mut a, Duration::from_secs(10)), "an attached, silent connection was not closed");
    assert!(start.elapsed() >= Duration::from_millis(1500), "closed before the idle timeout ({:?})", start.elapsed());
    let log = t.log_text();
    assert!(log.contains("server.handshake_timeout_ms"), "{log}");
    assert!(log.contains("server.idle_timeout_ms"), "{log}");
    assert!(log.contains("has not finished its handshake"), "the eviction is logged: {log}");
}
