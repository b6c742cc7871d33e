//! Acceptance: bad input gets the documented error, the connection stays usable where the
//! protocol says so, other vdisks' connections are unaffected, nothing panics. One test per
//! scenario, so a failure names it; each runs its own tlogd.

mod common;
use common::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;
use tlog::wire::*;

struct Raw {
    s: TcpStream,
    dec: FrameDecoder,
}

impl Raw {
    fn connect(addr: &str) -> Raw {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        Raw { s, dec: FrameDecoder::new(16 << 20) }
    }

    fn send(&mut self, b: &[u8]) {
        let _ = self.s.write_all(b);
    }

    /// The next frame, or None at EOF.
    fn frame(&mut self) -> Option<Frame> {
        let mut buf = [0u8; 65536];
        loop {
            if let Some(f) = self.dec.next_frame().unwrap() {
                return Some(f);
            }
            match self.s.read(&mut buf) {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.dec.push(&buf[..n]),
            }
        }
    }

    fn handshake_with(&mut self, version: u32, vdisk: &str, token: &str, first: u64, reset: bool) -> HandshakeResponse {
        self.send(&encode_handshake_request(&HandshakeRequest {
            version,
            vdisk_id: vdisk.into(),
            first_sequence: first,
            token: token.into(),
            reset_first_sequence: reset,
            resume_epoch: 0,
            kind: Default::default(),
        }));
        decode_handshake_response(&self.frame().expect("handshake response")).unwrap()
    }

    fn handshake(&mut self, vdisk: &str) -> HandshakeResponse {
        self.handshake_with(PROTOCOL_VERSION, vdisk, "", 1, false)
    }

    fn msg(&mut self) -> ServerMessage {
        decode_server_message(&self.frame().expect("a server message")).unwrap()
    }

    fn block(&mut self, b: &Block) {
        self.send(&encode_client_message(&ClientMessage::Block(b.clone())));
    }
}

fn blk(seq: u64) -> Block {
    Block::new(seq, (seq % 4096) * 8, Operation::Write, vec![seq as u8; 4096], 4096, 1)
}

fn error_of(m: ServerMessage) -> ServerError {
    match m {
        ServerMessage::Error(e) => e,
        other => panic!("expected an error, got {other:?}"),
    }
}

/// A tlogd of its own, and an attached connection to vdisk `vd`.
fn attached(vdisk: &str) -> (tempfile::TempDir, Tlogd, Raw) {
    let d = tempfile::tempdir().unwrap();
    let t = Tlogd::start(&d.path().join("data"), None, free_port());
    let mut r = Raw::connect(&t.addr());
    assert_eq!(r.handshake(vdisk).status, HandshakeStatus::Ok);
    (d, t, r)
}

fn assert_alive(t: &mut Tlogd) {
    assert!(t.alive(), "tlogd died: {}", t.log_text());
    assert!(!t.log_text().contains("panicked"), "{}", t.log_text());
}

#[test]
fn bad_version_is_refused_with_the_version_named() {
    let d = tempfile::tempdir().unwrap();
    let mut t = Tlogd::start(&d.path().join("data"), None, free_port());
    let h = Raw::connect(&t.addr()).handshake_with(99, "x", "", 1, false);
    assert_eq!(h.status, HandshakeStatus::BadVersion, "{h:?}");
    assert!(h.message.contains("99"));
    assert_alive(&mut t);
}

#[test]
fn bad_vdisk_id_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let t = Tlogd::start(&d.path().join("data"), None, free_port());
    assert_eq!(Raw::connect(&t.addr()).handshake("../etc").status, HandshakeStatus::BadVdisk);
}

#[test]
fn bad_hash_is_refused_and_the_connection_stays_usable() {
    let (_d, _t, mut r) = attached("bad1");
    let mut b = blk(1);
    b.hash[0] ^= 1;
    r.block(&b);
    let e = error_of(r.msg());
    assert_eq!((e.code, e.sequence), (ErrorCode::BadHash, 1));
    r.block(&blk(1));
    assert_eq!(r.msg(), ServerMessage::Received(1, 1));
}

#[test]
fn a_gap_is_out_of_order_with_the_expected_sequence() {
    let (_d, _t, mut r) = attached("gap");
    r.block(&blk(1));
    assert_eq!(r.msg(), ServerMessage::Received(1, 1));
    r.block(&blk(3));
    let e = error_of(r.msg());
    assert_eq!((e.code, e.sequence, e.expected_sequence), (ErrorCode::OutOfOrder, 3, 2));
}

#[test]
fn unknown_operation_is_refused() {
    let (_d, _t, mut r) = attached("op");
    let mut b = blk(1);
    b.operation = 7;
    r.block(&b);
    let e = error_of(r.msg());
    assert_eq!((e.code, e.sequence), (ErrorCode::UnknownOperation, 1));
}

#[test]
fn size_not_matching_the_data_is_refused() {
    let (_d, _t, mut r) = attached("size");
    let mut b = blk(1);
    b.size = 100;
    r.block(&b);
    assert_eq!(error_of(r.msg()).code, ErrorCode::BadSize);
}

#[test]
fn a_duplicate_is_reacked_and_flushed_once() {
    let (d, mut t, mut r) = attached("dup");
    r.block(&blk(1));
    assert_eq!(r.msg(), ServerMessage::Received(1, 1));
    r.block(&blk(2));
    assert_eq!(r.msg(), ServerMessage::Received(2, 2));
    r.block(&blk(2));
    assert_eq!(r.msg(), ServerMessage::Received(2, 2));
    r.send(&encode_client_message(&ClientMessage::ForceFlush));
    let saw = [r.msg(), r.msg()];
    assert!(saw.contains(&ServerMessage::ForceFlushReceived), "{saw:?}");
    assert!(saw.contains(&ServerMessage::Flushed(1, 2)), "{saw:?}");
    drop(r);
    t.stop();
    let out = d.path().join("dup.img");
    let o = restore(None, &d.path().join("data"), "dup", &out);
    assert_ok(&o, "restore");
    assert!(String::from_utf8_lossy(&o.stdout).contains("2 blocks"), "stored once: {}", String::from_utf8_lossy(&o.stdout));
}

#[test]
fn a_frame_over_the_limit_is_too_large_and_closes() {
    let (_d, mut t, mut r) = attached("big");
    let big = Block::new(1, 0, Operation::Write, vec![1u8; 9 << 20], 9 << 20, 1);
    r.block(&big);
    let e = error_of(r.msg());
    assert_eq!(e.code, ErrorCode::TooLarge, "{e:?}");
    assert!(r.frame().is_none(), "the connection closes after tooLarge");
    assert_alive(&mut t);
}

#[test]
fn garbage_instead_of_a_handshake_closes() {
    let d = tempfile::tempdir().unwrap();
    let mut t = Tlogd::start(&d.path().join("data"), None, free_port());
    let mut r = Raw::connect(&t.addr());
    r.send(&[0xff; 64]);
    let e = error_of(r.msg());
    assert_eq!(e.code, ErrorCode::BadMessage, "{e:?}");
    assert!(r.frame().is_none(), "the connection closes after an undecodable frame");
    assert_alive(&mut t);
}

#[test]
fn the_sequence_space_ends_instead_of_wrapping() {
    let d = tempfile::tempdir().unwrap();
    let t = Tlogd::start(&d.path().join("data"), None, free_port());
    let mut r = Raw::connect(&t.addr());
    assert_eq!(r.handshake_with(PROTOCOL_VERSION, "wrap", "", u64::MAX - 1, true).status, HandshakeStatus::Ok);
    r.block(&blk(u64::MAX - 1));
    assert_eq!(r.msg(), ServerMessage::Received(u64::MAX - 1, u64::MAX - 1));
    r.block(&blk(u64::MAX));
    assert_eq!(r.msg(), ServerMessage::Received(u64::MAX, u64::MAX));
    for s in [0, 1] {
        r.block(&blk(s));
        let e = error_of(r.msg());
        assert_eq!((e.code, e.sequence), (ErrorCode::SequenceExhausted, s), "{e:?}");
    }
}

#[test]
fn reset_into_the_history_is_refused() {
    let (_d, t, mut r) = attached("reset");
    for s in 1..=3 {
        r.block(&blk(s));
        r.msg();
    }
    let mut r2 = Raw::connect(&t.addr());
    let h = r2.handshake_with(PROTOCOL_VERSION, "reset", "", 2, true);
    assert_eq!(h.status, HandshakeStatus::BadRequest, "{h:?}");
    assert!(h.message.contains("reuse") && h.message.contains('3'), "{}", h.message);
    // The first writer was not disturbed by the refused one.
    r.block(&blk(4));
    assert_eq!(r.msg(), ServerMessage::Received(4, 4));
    // A new writer that does not reset continues after the history.
    let mut r3 = Raw::connect(&t.addr());
    let h = r3.handshake("reset");
    assert_eq!((h.status, h.has_flushed, h.last_flushed_sequence), (HandshakeStatus::Ok, true, 4), "{h:?}");
    r3.block(&blk(5));
    assert_eq!(r3.msg(), ServerMessage::Received(5, 5));
}

#[test]
fn a_wrong_or_missing_token_is_unauthorized() {
    let d = tempfile::tempdir().unwrap();
    let tokens = d.path().join("tokens");
    std::fs::write(&tokens, "# operators\ns3cret\n").unwrap();
    let cfg = d.path().join("t.toml");
    std::fs::write(&cfg, format!("[server]\nauth_tokens_file = \"{}\"\n", tokens.display())).unwrap();
    let t = Tlogd::start(&d.path().join("data"), Some(&cfg), free_port());
    for (tok, want) in [("", HandshakeStatus::Unauthorized), ("anything", HandshakeStatus::Unauthorized), ("s3cret", HandshakeStatus::Ok)] {
        assert_eq!(Raw::connect(&t.addr()).handshake_with(PROTOCOL_VERSION, "a", tok, 1, false).status, want, "token {tok:?}");
    }
}

#[test]
fn bad_input_beside_an_honest_import_leaves_it_exact() {
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("data");
    let mut t = Tlogd::start(&data, None, free_port());
    let addr = t.addr();
    let img = d.path().join("good.raw");
    mixed_image(&img, 24, 7);
    let good = {
        let (a, p) = (addr.clone(), img.clone());
        std::thread::spawn(move || import(&a, "good", &p))
    };
    for i in 0..20u64 {
        let mut r = Raw::connect(&addr);
        match i % 4 {
            0 => r.send(&[0xff; 64]),
            1 => {
                r.handshake(&format!("noise{i}"));
                let mut b = blk(1);
                b.hash[3] ^= 1;
                r.block(&b);
                r.block(&Block::new(2, 1 << 62, Operation::Write, vec![1; 512], 512, 0));
            }
            2 => r.send(&encode_handshake_request(&HandshakeRequest {
                version: 1,
                vdisk_id: "good".repeat(50),
                first_sequence: 1,
                token: String::new(),
                reset_first_sequence: false,
                resume_epoch: 0,
                kind: Default::default(),
            })),
            _ => r.send(&[0u8; 3]),
        }
    }
    assert_ok(&good.join().unwrap(), "concurrent good import");
    assert_alive(&mut t);
    t.stop();
    let out = d.path().join("good.out");
    assert_ok(&restore(None, &data, "good", &out), "restore");
    assert_same(&img, &out);
}
