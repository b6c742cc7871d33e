//! Adversity: a block whose lba * 512 + size lies past the largest vdisk
//! (`server.max_vdisk_bytes`) is refused at intake with `outOfRange`, and never makes the vdisk
//! unrestorable. Before the fix such a block was acked flushed and `tlog restore` then failed
//! for the whole vdisk (`lba ... overflows`, or `File too large`), restoring nothing.

mod common;
use common::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;
use tlog::wire::*;

fn frame(s: &mut TcpStream, dec: &mut FrameDecoder) -> Frame {
    let mut buf = [0u8; 65536];
    loop {
        if let Some(f) = dec.next_frame().unwrap() {
            return f;
        }
        let n = s.read(&mut buf).expect("read from tlogd");
        assert!(n > 0, "tlogd closed the connection");
        dec.push(&buf[..n]);
    }
}

#[test]
fn out_of_range_lba_is_refused_and_the_vdisk_stays_restorable() {
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("data");
    let mut t = Tlogd::start(&data, None, free_port());
    let mut s = TcpStream::connect(t.addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut dec = FrameDecoder::new(16 << 20);
    s.write_all(&encode_handshake_request(&HandshakeRequest {
        version: PROTOCOL_VERSION,
        vdisk_id: "lba".into(),
        first_sequence: 1,
        token: String::new(),
        reset_first_sequence: false,
        resume_epoch: 0,
        kind: Default::default(),
    }))
    .unwrap();
    assert_eq!(decode_handshake_response(&frame(&mut s, &mut dec)).unwrap().status, HandshakeStatus::Ok);
    let ok = Block::new(1, 0, Operation::Write, vec![7u8; 4096], 4096, 1);
    s.write_all(&encode_client_message(&ClientMessage::Block(ok))).unwrap();
    assert_eq!(decode_server_message(&frame(&mut s, &mut dec)).unwrap(), ServerMessage::Received(1, 1));
    // lba 2^63 (its byte offset overflows u64), 2^40 (512 PiB, past the default 64 TiB) and a
    // write that starts inside the limit but ends past it.
    let max: u64 = 64 << 40;
    for (lba, size) in [(1u64 << 63, 4096u64), (1 << 40, 4096), (max / 512 - 1, 4096)] {
        let bad = Block::new(2, lba, Operation::Write, vec![9u8; size as usize], size, 2);
        s.write_all(&encode_client_message(&ClientMessage::Block(bad))).unwrap();
        match decode_server_message(&frame(&mut s, &mut dec)).unwrap() {
            ServerMessage::Error(e) => {
                assert_eq!(e.sequence, 2, "{e:?}");
                assert!(format!("{:?}", e.code) == "OutOfRange", "lba {lba}: {e:?}");
                assert!(e.message.contains("max_vdisk_bytes"), "the message names the limit: {e:?}");
            }
            other => panic!("lba {lba}: block accepted ({other:?}); it must be refused"),
        }
    }
    // The connection stays usable: block 2 at a sane lba is taken.
    let good = Block::new(2, 8, Operation::Write, vec![8u8; 4096], 4096, 3);
    s.write_all(&encode_client_message(&ClientMessage::Block(good))).unwrap();
    assert_eq!(decode_server_message(&frame(&mut s, &mut dec)).unwrap(), ServerMessage::Received(2, 2));
    s.write_all(&encode_client_message(&ClientMessage::ForceFlush)).unwrap();
    let mut flushed = false;
    for _ in 0..4 {
        if decode_server_message(&frame(&mut s, &mut dec)).unwrap() == ServerMessage::Flushed(1, 2) {
            flushed = true;
            break;
        }
    }
    assert!(flushed, "blocks 1 and 2 are flushed");
    drop(s);
    t.stop();
    let out = d.path().join("lba.img");
    assert_ok(&restore(None, &data, "lba", &out), "restore");
    let img = std::fs::read(&out).unwrap();
    assert_eq!(img.len(), 8192);
    assert!(img[..4096].iter().all(|b| *b == 7) && img[4096..].iter().all(|b| *b == 8));
}
