//! Head record decoding over arbitrary bytes: never panics; what decodes re-encodes exactly.
#![no_main]
use libfuzzer_sys::fuzz_target;
use tlog::seal::HeadRecord;

fuzz_target!(|data: &[u8]| {
    if let Ok(h) = HeadRecord::decode(data) {
        assert_eq!(h.encode(), data);
    }
});
