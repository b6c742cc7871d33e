//! Acceptance: bad input gets the documented error, other vdisks' connections are unaffected,
//! nothing panics: a frame over the size limit, a wrong hash, a sequence gap, an unknown
//! operation, a handshake with a bad version.

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

    fn handshake(&mut self, version: u32, vdisk: &str) -> HandshakeResponse {
        self.send(&encode_handshake_request(&HandshakeRequest {
            version,
            vdisk_id: vdisk.into(),
            first_sequence: 1,
            token: String::new(),
            reset_first_sequence: true,
        }));
        decode_handshake_response(&self.frame().expect("handshake response")).unwrap()
    }

    fn msg(&mut self) -> ServerMessage {
        decode_server_message(&self.frame().expect("a server message")).unwrap()
    }

    fn block(&mut self, b: &Block) {
        self.send(&encode_client_message(&ClientMessage::Block(b.clone())));
    }
}

fn blk(seq: u64) -> Block {
    Block::new(seq, seq * 8, Operation::Write, vec![seq as u8; 4096], 4096, 1)
}

fn error_of(m: ServerMessage) -> ServerError {
    match m {
        ServerMessage::Error(e) => e,
        other => panic!("expected an error, got {other:?}"),
    }
}

#[test]
fn bad_input_gets_documented_errors() {
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("data");
    let mut t = Tlogd::start(&data, None, free_port());
    let addr = t.addr();
    // A healthy import of another vdisk runs alongside.
    let img = d.path().join("good.raw");
    mixed_image(&img, 24, 7);
    let good = {
        let (a, p) = (addr.clone(), img.clone());
        std::thread::spawn(move || import(&a, "good", &p))
    };

    // Bad version.
    let mut r = Raw::connect(&addr);
    let h = r.handshake(99, "x");
    assert_eq!(h.status, HandshakeStatus::BadVersion, "{h:?}");
    assert!(h.message.contains("99"));
    // Bad vdisk id.
    let mut r = Raw::connect(&addr);
    assert_eq!(r.handshake(PROTOCOL_VERSION, "../etc").status, HandshakeStatus::BadVdisk);

    // Hash, gap, unknown operation on one connection; it stays usable.
    let mut r = Raw::connect(&addr);
    assert_eq!(r.handshake(PROTOCOL_VERSION, "bad1").status, HandshakeStatus::Ok);
    let mut b = blk(1);
    b.hash[0] ^= 1;
    r.block(&b);
    let e = error_of(r.msg());
    assert_eq!((e.code, e.sequence), (ErrorCode::BadHash, 1));
    r.block(&blk(1));
    assert_eq!(r.msg(), ServerMessage::Received(1, 1));
    r.block(&blk(3));
    let e = error_of(r.msg());
    assert_eq!((e.code, e.sequence, e.expected_sequence), (ErrorCode::OutOfOrder, 3, 2));
    let mut b = blk(2);
    b.operation = 7;
    r.block(&b);
    let e = error_of(r.msg());
    assert_eq!((e.code, e.sequence), (ErrorCode::UnknownOperation, 2));
    let mut b = blk(2);
    b.size = 100;
    r.block(&b);
    assert_eq!(error_of(r.msg()).code, ErrorCode::BadSize);
    r.block(&blk(2));
    assert_eq!(r.msg(), ServerMessage::Received(2, 2));
    // A duplicate is re-acknowledged, not stored twice.
    r.block(&blk(2));
    assert_eq!(r.msg(), ServerMessage::Received(2, 2));
    r.send(&encode_client_message(&ClientMessage::ForceFlush));
    let mut saw = Vec::new();
    for _ in 0..2 {
        saw.push(r.msg());
    }
    assert!(saw.contains(&ServerMessage::ForceFlushReceived), "{saw:?}");
    assert!(saw.contains(&ServerMessage::Flushed(1, 2)), "{saw:?}");

    // A frame over the limit (8 MiB by default): tooLarge, then the connection closes.
    let mut r = Raw::connect(&addr);
    assert_eq!(r.handshake(PROTOCOL_VERSION, "bad2").status, HandshakeStatus::Ok);
    let big = Block::new(1, 0, Operation::Write, vec![1u8; 9 << 20], 9 << 20, 1);
    r.block(&big);
    let e = error_of(r.msg());
    assert_eq!(e.code, ErrorCode::TooLarge, "{e:?}");
    assert!(r.frame().is_none(), "the connection closes after tooLarge");

    // Garbage instead of a handshake.
    let mut r = Raw::connect(&addr);
    r.send(&[0xff; 64]);
    let e = error_of(r.msg());
    assert_eq!(e.code, ErrorCode::BadMessage, "{e:?}");
    assert!(r.frame().is_none(), "the connection closes after an undecodable frame");

    // The other vdisk was unaffected and the server is alive.
    assert_ok(&good.join().unwrap(), "concurrent good import");
    assert!(t.alive(), "tlogd died: {}", t.log_text());
    assert!(!t.log_text().contains("panicked"), "{}", t.log_text());
    t.stop();
    let out = d.path().join("good.out");
    assert_ok(&restore(None, &data, "good", &out), "restore");
    assert_same(&img, &out);
}
