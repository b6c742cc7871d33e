//! The local store's key map file over arbitrary bytes: an error or counts that fit the file.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok((_, shards, heads)) = tlog::backend::local::parse_keymap(data) {
        assert!(shards * 40 + heads * 18 <= data.len());
    }
});
