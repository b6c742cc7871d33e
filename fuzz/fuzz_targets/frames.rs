//! The frame decoder and the client and server message decoders over arbitrary bytes, split
//! into arbitrary chunks: nothing panics, frames never exceed the limit, every frame decodes or
//! errors.
#![no_main]
use libfuzzer_sys::fuzz_target;
use tlog::wire::{decode_client_message, decode_server_message, FrameDecoder};

fuzz_target!(|data: &[u8]| {
    let (split, body) = match data.split_first() {
        Some((s, b)) => (*s as usize + 1, b),
        None => return,
    };
    let mut d = FrameDecoder::new(1 << 16);
    for chunk in body.chunks(split) {
        d.push(chunk);
        loop {
            match d.next_frame_ref() {
                Ok(Some(f)) => {
                    assert!(f.bytes().len() <= 1 << 16);
                    let _ = decode_client_message(f);
                    let _ = decode_server_message(f);
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
});
