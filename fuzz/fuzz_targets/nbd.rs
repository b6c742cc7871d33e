//! The NBD gateway's decoders over arbitrary bytes (they read what any NBD client sends):
//! option headers and payloads (`NBD_OPT_INFO`/`GO`, meta context requests) and request
//! headers. None may panic; what decodes re-encodes to the same bytes.
#![no_main]
use libfuzzer_sys::fuzz_target;
use tlog::nbd::proto;

fuzz_target!(|data: &[u8]| {
    let _ = proto::read_option(&mut &data[..]);
    if let Some((name, reqs)) = proto::parse_info_request(data) {
        let mut v = (name.len() as u32).to_be_bytes().to_vec();
        v.extend_from_slice(name.as_bytes());
        v.extend_from_slice(&(reqs.len() as u16).to_be_bytes());
        for r in &reqs {
            v.extend_from_slice(&r.to_be_bytes());
        }
        // Names are read lossily: equal when the bytes were UTF-8.
        if std::str::from_utf8(&data[4..4 + name.len().min(data.len() - 4)]).is_ok() {
            assert_eq!(v.len(), data.len());
        }
    }
    let _ = proto::parse_meta_request(data);
    if data.len() >= proto::REQUEST_BYTES {
        let mut h = [0u8; proto::REQUEST_BYTES];
        h.copy_from_slice(&data[..proto::REQUEST_BYTES]);
        if let Ok(r) = proto::parse_request(&h) {
            assert_eq!(proto::encode_request(&r), h);
        }
    }
});
