//! The stored aggregation message (schema `Aggregation`), Cap'n Proto encoded.

use crate::backend::Key;
use crate::error::{Error, Result};
use crate::tlog_capnp as schema;
use crate::wire::{read_block, Block};
#[cfg(test)]
use capnp::message::Builder;

/// Aggregation format version.
pub const AGGREGATION_VERSION: u32 = 1;

/// A flushed group of blocks of one vdisk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Aggregation {
    /// The vdisk.
    pub vdisk_id: String,
    /// Sequence of the first block.
    pub first_sequence: u64,
    /// Sequence of the last block.
    pub last_sequence: u64,
    /// When sealed, ns since the Unix epoch.
    pub timestamp: u64,
    /// The blocks, in sequence order.
    pub blocks: Vec<Block>,
    /// Key of the previous aggregation (zeros for the first).
    pub prev: Key,
    /// Writer epoch.
    pub epoch: u64,
}

/// Encodes an aggregation (Cap'n Proto stream framing, one frame).
pub fn encode(vdisk: &str, blocks: &[Block], prev: &Key, epoch: u64, timestamp: u64) -> Vec<u8> {
    let mut out = Vec::new();
    encode_into(&mut out, vdisk, blocks, prev, epoch, timestamp);
    out
}

// Struct sizes of schema/tlog.capnp (as capnpc generates them: data words, pointers).
const AGG_DATA_WORDS: u64 = 5;
const AGG_POINTERS: u64 = 3;
const BLOCK_DATA_WORDS: u64 = 5;
const BLOCK_POINTERS: u64 = 2;
const BLOCK_WORDS: u64 = BLOCK_DATA_WORDS + BLOCK_POINTERS;

/// A Cap'n Proto struct pointer (encoding spec, "Structs"): kind 0, `offset` words from the end
/// of the pointer to the struct, then the data and pointer section sizes.
fn struct_pointer(offset: u64, data_words: u64, pointers: u64) -> u64 {
    ((offset as u32 as u64) << 2) | (data_words << 32) | (pointers << 48)
}

/// A Cap'n Proto list pointer (encoding spec, "Lists"): kind 1, `offset` words from the end of
/// the pointer, element size code (2 = byte, 7 = inline composite), element count (words for
/// composite lists).
fn list_pointer(offset: u64, size_code: u64, count: u64) -> u64 {
    1 | ((offset as u32 as u64) << 2) | (size_code << 32) | (count << 35)
}

fn put_word(out: &mut Vec<u8>, w: u64) {
    out.extend_from_slice(&w.to_le_bytes());
}

/// Appends `bytes` and zero padding up to the next word.
fn put_padded(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(bytes);
    out.resize(out.len() + (8 - bytes.len() % 8) % 8, 0);
}

/// Encodes like [`encode`] into `out` (cleared first; its capacity is reused, so a steady
/// stream of aggregations stops allocating).
///
/// Writes the Cap'n Proto encoding directly (https://capnproto.org/encoding.html), byte for
/// byte what capnp's message builder produces for this schema when the message is built in
/// one segment in field order (root pointer; root struct; vdiskId text; prev; the blocks'
/// composite list; then each block's hash and data), which is how the first releases stored
/// it: a test checks it against the builder. Each block's data is copied once, and nothing is
/// zeroed first (the builder needs a zeroed arena and copies the segment out again).
pub fn encode_into(out: &mut Vec<u8>, vdisk: &str, blocks: &[Block], prev: &Key, epoch: u64, timestamp: u64) {
    let n = blocks.len() as u64;
    let text_words = (vdisk.len() as u64 + 1).div_ceil(8);
    let prev_words = (prev.len() as u64).div_ceil(8);
    let blobs: u64 = blocks.iter().map(|b| (b.hash.len() as u64).div_ceil(8) + (b.data.len() as u64).div_ceil(8)).sum();
    // Word positions in the segment.
    let root = 1;
    let ptrs = root + AGG_DATA_WORDS;
    let text = root + AGG_DATA_WORDS + AGG_POINTERS;
    let prev_at = text + text_words;
    let tag = prev_at + prev_words;
    let first_block = tag + 1;
    let mut blob = first_block + BLOCK_WORDS * n;
    let words = blob + blobs;
    out.clear();
    out.reserve(8 + 8 * words as usize);
    // Stream framing: segment count - 1, then the one segment's size in words.
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&(words as u32).to_le_bytes());
    put_word(out, struct_pointer(0, AGG_DATA_WORDS, AGG_POINTERS));
    put_word(out, AGGREGATION_VERSION as u64);
    put_word(out, blocks.first().map(|b| b.sequence).unwrap_or(0));
    put_word(out, blocks.last().map(|b| b.sequence).unwrap_or(0));
    put_word(out, timestamp);
    put_word(out, epoch);
    put_word(out, list_pointer(text - (ptrs + 1), 2, vdisk.len() as u64 + 1));
    put_word(out, list_pointer(tag - (ptrs + 2), 7, BLOCK_WORDS * n));
    put_word(out, list_pointer(prev_at - (ptrs + 3), 2, prev.len() as u64));
    let mut t = Vec::with_capacity(vdisk.len() + 1);
    t.extend_from_slice(vdisk.as_bytes());
    t.push(0);
    put_padded(out, &t);
    put_padded(out, prev);
    // The composite list's tag: element count in the offset field, then the element's size.
    put_word(out, struct_pointer(n, BLOCK_DATA_WORDS, BLOCK_POINTERS));
    for (i, b) in blocks.iter().enumerate() {
        let at = first_block + BLOCK_WORDS * i as u64;
        let hash_at = blob;
        let data_at = hash_at + (b.hash.len() as u64).div_ceil(8);
        blob = data_at + (b.data.len() as u64).div_ceil(8);
        put_word(out, b.sequence);
        put_word(out, b.lba);
        put_word(out, b.size);
        put_word(out, b.timestamp);
        put_word(out, b.operation as u64);
        put_word(out, list_pointer(hash_at - (at + BLOCK_DATA_WORDS + 1), 2, b.hash.len() as u64));
        put_word(out, list_pointer(data_at - (at + BLOCK_DATA_WORDS + 2), 2, b.data.len() as u64));
    }
    for b in blocks {
        put_padded(out, &b.hash);
        put_padded(out, &b.data);
    }
    debug_assert_eq!(out.len() as u64, 8 + 8 * words);
}

/// Encodes with capnp's message builder (one segment sized to fit): the reference
/// [`encode_into`] must match byte for byte.
#[cfg(test)]
fn encode_with_builder(vdisk: &str, blocks: &[Block], prev: &Key, epoch: u64, timestamp: u64) -> Vec<u8> {
    let estimate: usize = 256 + vdisk.len() + blocks.iter().map(|b| b.data.len() + 128).sum::<usize>();
    let mut m = Builder::new(capnp::message::HeapAllocator::new().first_segment_words((estimate / 8 + 64) as u32));
    let mut a = m.init_root::<schema::aggregation::Builder>();
    a.set_format_version(AGGREGATION_VERSION);
    a.set_vdisk_id(vdisk);
    a.set_first_sequence(blocks.first().map(|b| b.sequence).unwrap_or(0));
    a.set_last_sequence(blocks.last().map(|b| b.sequence).unwrap_or(0));
    a.set_timestamp(timestamp);
    a.set_prev(prev);
    a.set_epoch(epoch);
    let mut l = a.init_blocks(blocks.len() as u32);
    for (i, b) in blocks.iter().enumerate() {
        crate::wire::write_block(l.reborrow().get(i as u32), b);
    }
    assert_eq!(m.get_segments_for_output().len(), 1);
    capnp::serialize::write_message_to_words(&m)
}

/// Decodes an aggregation. Errors name what does not parse.
pub fn decode(bytes: &[u8]) -> Result<Aggregation> {
    let mut s = bytes;
    let m = capnp::serialize::read_message(&mut s, crate::wire::reader_options(bytes.len() + 64))
        .map_err(|e| Error::Seal(format!("aggregation does not decode: {e}")))?;
    let a = m.get_root::<schema::aggregation::Reader>().map_err(|e| Error::Seal(format!("aggregation does not decode: {e}")))?;
    if a.get_format_version() != AGGREGATION_VERSION {
        return Err(Error::Seal(format!("aggregation format version {}, this build reads {AGGREGATION_VERSION}", a.get_format_version())));
    }
    let e = |e: capnp::Error| Error::Seal(format!("aggregation does not decode: {e}"));
    let prev_b = a.get_prev().map_err(e)?;
    let prev: Key = prev_b.try_into().map_err(|_| Error::Seal("aggregation prev is not 32 bytes".into()))?;
    let mut blocks = Vec::new();
    for b in a.get_blocks().map_err(e)?.iter() {
        blocks.push(read_block(b)?);
    }
    Ok(Aggregation {
        vdisk_id: a.get_vdisk_id().map_err(e)?.to_string().map_err(|_| Error::Seal("vdisk id is not UTF-8".into()))?,
        first_sequence: a.get_first_sequence(),
        last_sequence: a.get_last_sequence(),
        timestamp: a.get_timestamp(),
        blocks,
        prev,
        epoch: a.get_epoch(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::Operation;
    use proptest::prelude::*;

    fn block(seq: u64, len: usize, op: Operation) -> Block {
        let data: Vec<u8> = (0..len).map(|i| (i as u64 * 31 + seq) as u8).collect();
        let size = if op == Operation::Write { len as u64 } else { 4096 };
        Block::new(seq, seq * 8 + 3, op, if op == Operation::Write { data } else { Vec::new() }, size, 1_700_000_000_000_000_000 + seq)
    }

    #[test]
    fn matches_the_builder_on_edge_cases() {
        let prev = [7u8; 32];
        for vdisk in ["", "a", "vd-1234", "exactly8", "fifteen-chars-x", &"v".repeat(128)] {
            for blocks in [
                vec![],
                vec![block(1, 4096, Operation::Write)],
                vec![block(5, 1, Operation::Write), block(6, 0, Operation::WriteZeroes), block(7, 513, Operation::Write)],
            ] {
                let ours = encode(vdisk, &blocks, &prev, 9, 11);
                assert_eq!(ours, encode_with_builder(vdisk, &blocks, &prev, 9, 11), "vdisk {vdisk:?}, {} blocks", blocks.len());
                let a = decode(&ours).unwrap();
                assert_eq!((a.vdisk_id.as_str(), a.blocks, a.prev, a.epoch, a.timestamp), (vdisk, blocks, prev, 9, 11));
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn matches_the_builder(vdisk in "[a-z0-9._-]{1,40}", lens in proptest::collection::vec(0usize..3000, 0..40), epoch: u64, ts: u64, first in 0u64..1 << 60) {
            let blocks: Vec<Block> = lens.iter().enumerate().map(|(i, &l)| block(first + i as u64, l, if l == 0 { Operation::WriteZeroes } else { Operation::Write })).collect();
            let prev = *blake3::hash(vdisk.as_bytes()).as_bytes();
            prop_assert_eq!(encode(&vdisk, &blocks, &prev, epoch, ts), encode_with_builder(&vdisk, &blocks, &prev, epoch, ts));
        }
    }
}
