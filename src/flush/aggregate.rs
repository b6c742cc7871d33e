//! The stored aggregation message (schema `Aggregation`), Cap'n Proto encoded.

use crate::backend::Key;
use crate::error::{Error, Result};
use crate::tlog_capnp as schema;
use crate::wire::{read_block, write_block, Block};
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
    encode_into(&mut Vec::new(), &mut out, vdisk, blocks, prev, epoch, timestamp);
    out
}

/// Encodes like [`encode`] into `out` (cleared first), building the message in `scratch`
/// (Cap'n Proto words, grown to fit and kept for the next call). Reusing both across
/// aggregations saves two aggregation-sized allocations per seal, and with them the page
/// faults and zeroing of fresh memory.
pub fn encode_into(scratch: &mut Vec<capnp::Word>, out: &mut Vec<u8>, vdisk: &str, blocks: &[Block], prev: &Key, epoch: u64, timestamp: u64) {
    // One first segment big enough for the whole message: no segment growth, and the frame is
    // written as one segment.
    let estimate: usize = 256 + vdisk.len() + blocks.iter().map(|b| b.data.len() + 128).sum::<usize>();
    let words = (estimate / 8 + 64).min(u32::MAX as usize);
    if scratch.len() < words {
        *scratch = capnp::Word::allocate_zeroed_vec(words);
    }
    let mut alloc = capnp::message::ScratchSpaceHeapAllocator::new(capnp::Word::words_to_bytes_mut(scratch));
    let mut m = Builder::new(&mut alloc);
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
        write_block(l.reborrow().get(i as u32), b);
    }
    out.clear();
    out.reserve(m.get_segments_for_output().iter().map(|s| s.len()).sum::<usize>() + 16);
    // Writing into a Vec cannot fail (it only grows).
    let _ = capnp::serialize::write_message(&mut *out, &m);
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
