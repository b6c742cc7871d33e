//! Handshake request and response decoders over arbitrary frames; what decodes re-encodes to a
//! frame that decodes to the same value.
#![no_main]
use libfuzzer_sys::fuzz_target;
use tlog::wire::{decode_handshake_request, decode_handshake_response, encode_handshake_request, encode_handshake_response, FrameDecoder};

fuzz_target!(|data: &[u8]| {
    let mut d = FrameDecoder::new(1 << 16);
    d.push(data);
    let Ok(Some(f)) = d.next_frame() else { return };
    if let Ok(r) = decode_handshake_request(&f) {
        let mut d2 = FrameDecoder::new(1 << 20);
        d2.push(&encode_handshake_request(&r));
        assert_eq!(decode_handshake_request(&d2.next_frame().unwrap().unwrap()).unwrap(), r);
    }
    if let Ok(r) = decode_handshake_response(&f) {
        let mut d2 = FrameDecoder::new(1 << 20);
        d2.push(&encode_handshake_response(&r));
        assert_eq!(decode_handshake_response(&d2.next_frame().unwrap().unwrap()).unwrap(), r);
    }
});
