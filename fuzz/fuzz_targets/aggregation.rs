//! The aggregation decoder (what unseal decodes after decryption) over arbitrary bytes.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = tlog::seal::aggregate::decode(data);
});
