//! Shard decoding over arbitrary bytes: never panics; a shard that decodes re-encodes to the
//! same bytes.
#![no_main]
use libfuzzer_sys::fuzz_target;
use tlog::seal::ShardHeader;

fuzz_target!(|data: &[u8]| {
    if let Ok((h, body)) = ShardHeader::decode_shard(data) {
        assert_eq!(h.encode_shard(body), data);
    }
});
