//! A vdisk's state inside the server (its *namespace*), as plain transitions: no threads, no
//! channels, no locks, no clock. Time is passed in (`now`, a monotonic reading) in smoltcp's
//! style, so every rule here is tested deterministically; the engine (`flush`) holds each
//! namespace under a lock and runs the transitions.
//!
//! Blocks come in sequence order into the *current* buffer. A buffer that holds `flush_size`
//! blocks (or `max_aggregation_bytes` of data, or is older than `flush_time`, or on
//! `forceFlush`) is swapped with the *spare* and queued as *full* for the flushers. Each sealed
//! buffer becomes the aggregation at the next chain height; [`Namespace::complete`] records an
//! aggregation durable, and acknowledgements leave in chain order (so in sequence order) however
//! the writes complete.
//!
//! Sequences (DESIGN.md §4, §12): the namespace takes the next expected sequence; a duplicate at
//! or below the last received is re-acknowledged, never stored twice; a gap gets `OutOfOrder`.
//! Sequences are unique for the vdisk's whole life: a new writer epoch continues after the last
//! flushed sequence, and the sequence after 2^64 - 1 does not exist (the space is exhausted,
//! never wrapped). Block timestamps never go back: a block stamped before the previous one
//! (a client clock that stepped back) is stamped with the previous one's time.
//!
//! Epochs: one writer epoch at a time takes blocks. A takeover first *fences* the current one
//! ([`Namespace::fence`]: its later blocks are refused, what it buffered is queued to flush),
//! waits until the namespace is [`Namespace::idle`] (the engine drains), then starts the next
//! ([`Namespace::begin_epoch`]), so the new writer's `lastFlushedSequence` is exactly the
//! durable head and nothing of the old epoch becomes durable after it.

use crate::wire::Block;
use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

/// The flush and memory limits a namespace applies.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Blocks per aggregation.
    pub flush_size: usize,
    /// Data bytes per aggregation before an early flush.
    pub max_aggregation_bytes: u64,
    /// Buffered bytes (received, not yet flushed) of this vdisk at most.
    pub max_vdisk_buffer_bytes: u64,
    /// Buffered bytes of all vdisks at most.
    pub max_buffer_bytes: u64,
    /// Longest a block waits in the current buffer.
    pub flush_time: Duration,
}

/// Outcome of [`Namespace::push`].
#[derive(Debug, PartialEq, Eq)]
pub enum Push {
    /// Taken into the buffer; `rotated` when that filled it and it was queued to flush.
    Received {
        /// The current buffer was queued as full.
        rotated: bool,
    },
    /// Already received before (not stored again); `flushed` when it is durable too.
    Duplicate {
        /// Whether it is already flushed.
        flushed: bool,
    },
    /// A gap: the namespace expects `expected`.
    OutOfOrder {
        /// The next sequence the namespace takes.
        expected: u64,
    },
    /// The sequence space is used up (a block at 2^64 - 1 was taken): nothing more is taken.
    Exhausted,
    /// Memory bound reached: the block is handed back; retry once space is freed.
    Full(Block),
    /// This connection's epoch is no longer the one taking blocks.
    Fenced,
}

/// How a new epoch numbers its blocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FirstSequence {
    /// Continue after the last flushed sequence (or from the client's first sequence for a
    /// vdisk with nothing flushed).
    Continue(u64),
    /// Jump forward to this sequence (`resetFirstSequence`): refused if it would go back.
    Reset(u64),
}

/// Why an epoch could not begin.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BeginError {
    /// `resetFirstSequence` to a number the vdisk's history already holds.
    WouldReuse {
        /// The requested first sequence.
        requested: u64,
        /// The last flushed sequence.
        last_flushed: u64,
    },
    /// The namespace still holds blocks of the previous epoch (drain first).
    NotIdle,
}

/// A full buffer waiting to be sealed.
#[derive(Debug)]
pub struct FullBuffer {
    /// The blocks, in sequence order.
    pub blocks: Vec<Block>,
    /// Buffered bytes they account for (released when flushed).
    pub bytes: u64,
    /// The epoch that received them.
    pub epoch: u64,
    /// Position of the aggregation among those sealed in this epoch (for the nonce).
    pub counter: u64,
}

/// What [`Namespace::complete`] freed and acknowledged.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Completed {
    /// Sequence ranges now flushed, in order, each with the epoch whose writer sent them.
    pub acks: Vec<(u64, u64, u64)>,
    /// Buffered bytes released.
    pub freed: u64,
    /// Chain heights now acknowledged, in order.
    pub heights: Vec<u64>,
}

#[derive(Debug)]
struct Done {
    first: u64,
    last: u64,
    bytes: u64,
    epoch: u64,
}

/// One vdisk's buffers, sequence and epoch state.
#[derive(Debug)]
pub struct Namespace {
    vdisk: String,
    /// The newest epoch (the one taking blocks unless fenced).
    epoch: u64,
    /// Whether `epoch` takes blocks (false while fenced, until the next epoch begins).
    accepting: bool,
    /// Intake held (a consistency-group checkpoint being taken): blocks get `Full`.
    held: bool,
    /// Next sequence taken; `None` once the space is exhausted.
    expected: Option<u64>,
    /// The highest sequence taken (buffered or flushed), if any.
    last_taken: Option<u64>,
    current: Vec<Block>,
    spare: Vec<Block>,
    current_data: u64,
    current_bytes: u64,
    current_started: Option<Duration>,
    full: VecDeque<FullBuffer>,
    /// Bytes received and not yet flushed.
    buffered: u64,
    /// Aggregations queued in this epoch so far.
    counter: u64,
    /// Durable aggregations waiting for the ones before them, by chain height.
    done: BTreeMap<u64, Done>,
    /// Chain height of the next aggregation to acknowledge.
    next_ack: u64,
    last_flushed: Option<u64>,
    /// Full buffers queued or aggregations being written.
    in_flight: u64,
    last_timestamp: u64,
}

impl Namespace {
    /// A namespace for `vdisk` whose durable head (from the backends) is at chain `height`
    /// with `last_flushed` as its last sequence and `epoch` as the newest epoch seen.
    pub fn new(vdisk: &str, height: u64, last_flushed: Option<u64>, epoch: u64, flush_size: usize) -> Namespace {
        Namespace {
            vdisk: vdisk.to_string(),
            epoch,
            accepting: false,
            held: false,
            expected: last_flushed.map(|l| l.checked_add(1)).unwrap_or(Some(0)),
            last_taken: last_flushed,
            current: Vec::with_capacity(flush_size),
            spare: Vec::with_capacity(flush_size),
            current_data: 0,
            current_bytes: 0,
            current_started: None,
            full: VecDeque::new(),
            buffered: 0,
            counter: 0,
            done: BTreeMap::new(),
            next_ack: height + 1,
            last_flushed,
            in_flight: 0,
            last_timestamp: 0,
        }
    }

    /// The vdisk id.
    pub fn vdisk(&self) -> &str {
        &self.vdisk
    }

    /// The timestamp of the newest block in the history (from the index), so block timestamps
    /// do not go back across a restart either.
    pub fn set_last_timestamp(&mut self, ns: u64) {
        self.last_timestamp = self.last_timestamp.max(ns);
    }

    /// The timestamp of the newest block taken (ns).
    pub fn last_timestamp(&self) -> u64 {
        self.last_timestamp
    }

    /// The newest epoch.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Last flushed sequence, if any.
    pub fn last_flushed(&self) -> Option<u64> {
        self.last_flushed
    }

    /// The next sequence the namespace takes (`None` once exhausted).
    pub fn expected(&self) -> Option<u64> {
        self.expected
    }

    /// The highest sequence taken so far (buffered or flushed), if any.
    pub fn last_received(&self) -> Option<u64> {
        self.last_taken
    }

    /// Bytes received and not yet flushed.
    pub fn buffered(&self) -> u64 {
        self.buffered
    }

    /// True when nothing is buffered, queued or being written.
    pub fn idle(&self) -> bool {
        self.current.is_empty() && self.full.is_empty() && self.in_flight == 0
    }

    /// Offers a block of `epoch`'s writer at monotonic time `now`. `total_buffered` is the
    /// bytes buffered by all vdisks (for `max_buffer_bytes`). The block must already be
    /// validated by the session (hash, size, operation, range).
    pub fn push(&mut self, epoch: u64, mut block: Block, now: Duration, limits: &Limits, total_buffered: u64) -> Push {
        if !self.accepting || self.epoch != epoch {
            return Push::Fenced;
        }
        if self.held {
            return Push::Full(block);
        }
        let Some(expected) = self.expected else {
            // 2^64 - 1 was taken: a resend of it is a duplicate, anything else would wrap.
            return if block.sequence == u64::MAX { Push::Duplicate { flushed: self.last_flushed == Some(u64::MAX) } } else { Push::Exhausted };
        };
        if block.sequence < expected {
            let flushed = self.last_flushed.map(|l| block.sequence <= l).unwrap_or(false);
            return Push::Duplicate { flushed };
        }
        if block.sequence > expected {
            return Push::OutOfOrder { expected };
        }
        let size = block.mem_size();
        if self.buffered > 0 && (self.buffered + size > limits.max_vdisk_buffer_bytes || total_buffered + size > limits.max_buffer_bytes) {
            return Push::Full(block);
        }
        self.buffered += size;
        self.expected = block.sequence.checked_add(1);
        self.last_taken = Some(block.sequence);
        block.timestamp = block.timestamp.max(self.last_timestamp);
        self.last_timestamp = block.timestamp;
        if self.current.is_empty() {
            self.current_started = Some(now);
        }
        self.current_data += block.data.len() as u64;
        self.current_bytes += size;
        self.current.push(block);
        let rotated = if self.current.len() >= limits.flush_size || self.current_data >= limits.max_aggregation_bytes { self.rotate() } else { false };
        Push::Received { rotated }
    }

    /// Holds (or releases) intake: while held, every block gets [`Push::Full`] (the writer
    /// waits, as for backpressure), so a checkpoint of several vdisks marks one instant.
    pub fn hold(&mut self, held: bool) {
        self.held = held;
    }

    /// Queues the current buffer as full (forceFlush, flush_time, or full). Returns false when
    /// it was empty.
    pub fn rotate(&mut self) -> bool {
        if self.current.is_empty() {
            return false;
        }
        let spare = std::mem::take(&mut self.spare);
        let blocks = std::mem::replace(&mut self.current, spare);
        self.full.push_back(FullBuffer { blocks, bytes: self.current_bytes, epoch: self.epoch, counter: self.counter });
        self.counter += 1;
        self.current_bytes = 0;
        self.current_data = 0;
        self.current_started = None;
        self.in_flight += 1;
        true
    }

    /// Whether the current buffer's oldest block has waited `flush_time` at `now`.
    pub fn due(&self, now: Duration, flush_time: Duration) -> bool {
        self.current_started.map(|t| now.saturating_sub(t) >= flush_time).unwrap_or(false)
    }

    /// The oldest full buffer, to seal.
    pub fn take_full(&mut self) -> Option<FullBuffer> {
        self.full.pop_front()
    }

    /// Hands back an emptied block list to be the next spare buffer (keeps its capacity).
    pub fn give_spare(&mut self, mut blocks: Vec<Block>) {
        blocks.clear();
        if self.spare.capacity() < blocks.capacity() {
            self.spare = blocks;
        }
    }

    /// A sealed buffer was dropped unflushed (sealing failed, or the engine stops): its bytes
    /// stay counted until the epoch ends, and nothing after it is acknowledged. Returns its
    /// bytes.
    pub fn abandon(&mut self, bytes: u64) -> u64 {
        self.in_flight = self.in_flight.saturating_sub(1);
        self.buffered = self.buffered.saturating_sub(bytes);
        bytes
    }

    /// The aggregation at chain `height` (sequences `first..=last`, `bytes` buffered, sealed in
    /// `epoch`) is durable. Returns what is now acknowledged: every aggregation from the next
    /// one to acknowledge up to the first still missing.
    pub fn complete(&mut self, height: u64, first: u64, last: u64, bytes: u64, epoch: u64) -> Completed {
        self.done.insert(height, Done { first, last, bytes, epoch });
        let mut c = Completed::default();
        while let Some(d) = self.done.remove(&self.next_ack) {
            c.heights.push(self.next_ack);
            self.next_ack += 1;
            self.last_flushed = Some(d.last);
            self.buffered = self.buffered.saturating_sub(d.bytes);
            self.in_flight = self.in_flight.saturating_sub(1);
            c.freed += d.bytes;
            c.acks.push((d.first, d.last, d.epoch));
        }
        c
    }

    /// The current epoch was superseded elsewhere (another tlogd took the vdisk in the
    /// backends): it takes no more blocks and what it buffered and has not handed to sealing is
    /// dropped. Returns the bytes freed.
    pub fn discard(&mut self) -> u64 {
        self.accepting = false;
        let mut freed = self.current_bytes;
        self.current.clear();
        self.current_data = 0;
        self.current_bytes = 0;
        self.current_started = None;
        for f in self.full.drain(..) {
            freed += f.bytes;
            self.in_flight = self.in_flight.saturating_sub(1);
        }
        self.buffered = self.buffered.saturating_sub(freed);
        freed
    }

    /// Fences the current epoch: its later blocks get [`Push::Fenced`], and what it buffered
    /// is queued to flush (returns true when a buffer was queued). Called by a takeover before
    /// it drains.
    pub fn fence(&mut self) -> bool {
        self.accepting = false;
        self.rotate()
    }

    /// Starts writer epoch `epoch` (greater than every earlier one) once the namespace is idle.
    /// Returns the next sequence the new writer sends: after the last flushed one, or the
    /// requested reset point (a jump forward), or the client's first sequence for a vdisk with
    /// nothing flushed.
    pub fn begin_epoch(&mut self, epoch: u64, first: FirstSequence) -> Result<Option<u64>, BeginError> {
        if !self.idle() {
            return Err(BeginError::NotIdle);
        }
        let next = match (first, self.last_flushed) {
            (FirstSequence::Continue(s), None) => Some(s),
            (FirstSequence::Continue(_), Some(l)) => l.checked_add(1),
            (FirstSequence::Reset(s), None) => Some(s),
            (FirstSequence::Reset(s), Some(l)) if s > l => Some(s),
            (FirstSequence::Reset(s), Some(l)) => return Err(BeginError::WouldReuse { requested: s, last_flushed: l }),
        };
        self.epoch = self.epoch.max(epoch);
        self.accepting = true;
        self.counter = 0;
        self.expected = next;
        self.buffered = 0;
        Ok(next)
    }
}

/// A vdisk's position on its hash chain: the key and height of the newest sealed aggregation
/// (sealed, not necessarily durable yet).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Chain {
    /// Key of the newest aggregation (32 zero bytes before the first).
    pub prev: [u8; 32],
    /// Its height (0 before the first).
    pub height: u64,
}

impl Chain {
    /// Links the next aggregation (`key`) onto the chain; returns its height.
    pub fn link(&mut self, key: [u8; 32]) -> u64 {
        self.height += 1;
        self.prev = key;
        self.height
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::Operation;

    fn limits() -> Limits {
        Limits {
            flush_size: 4,
            max_aggregation_bytes: 1 << 20,
            max_vdisk_buffer_bytes: 1 << 20,
            max_buffer_bytes: 1 << 30,
            flush_time: Duration::from_millis(20),
        }
    }

    fn blk(seq: u64, ts: u64) -> Block {
        Block::new(seq, seq % 1000 * 8, Operation::Write, vec![seq as u8; 512], 512, ts)
    }

    fn started(first: u64) -> Namespace {
        let mut ns = Namespace::new("vd", 0, None, 0, 4);
        assert_eq!(ns.begin_epoch(1, FirstSequence::Continue(first)), Ok(Some(first)));
        ns
    }

    #[test]
    fn sequences_duplicates_and_gaps() {
        let mut ns = started(1);
        let l = limits();
        assert_eq!(ns.push(1, blk(1, 5), Duration::ZERO, &l, 0), Push::Received { rotated: false });
        assert_eq!(ns.push(1, blk(1, 5), Duration::ZERO, &l, 0), Push::Duplicate { flushed: false });
        assert_eq!(ns.push(1, blk(3, 5), Duration::ZERO, &l, 0), Push::OutOfOrder { expected: 2 });
        assert_eq!(ns.push(2, blk(2, 5), Duration::ZERO, &l, 0), Push::Fenced);
        for s in 2..=4 {
            let p = ns.push(1, blk(s, 5), Duration::ZERO, &l, 0);
            assert_eq!(p, Push::Received { rotated: s == 4 }, "block {s}");
        }
        let f = ns.take_full().unwrap();
        assert_eq!((f.blocks.len(), f.epoch, f.counter), (4, 1, 0));
        let c = ns.complete(1, 1, 4, f.bytes, 1);
        assert_eq!(c.acks, vec![(1, 4, 1)]);
        assert_eq!(ns.push(1, blk(3, 5), Duration::ZERO, &l, 0), Push::Duplicate { flushed: true });
        assert!(ns.idle());
    }

    #[test]
    fn acks_leave_in_chain_order_whatever_order_writes_complete_in() {
        let mut ns = started(1);
        let l = limits();
        for s in 1..=12 {
            ns.push(1, blk(s, 0), Duration::ZERO, &l, 0);
        }
        let bufs: Vec<FullBuffer> = std::iter::from_fn(|| ns.take_full()).collect();
        assert_eq!(bufs.len(), 3);
        // Heights 1, 2, 3 complete as 3, 1, 2.
        assert!(ns.complete(3, 9, 12, bufs[2].bytes, 1).acks.is_empty());
        assert_eq!(ns.complete(1, 1, 4, bufs[0].bytes, 1).acks, vec![(1, 4, 1)]);
        let c = ns.complete(2, 5, 8, bufs[1].bytes, 1);
        assert_eq!((c.acks, c.heights), (vec![(5, 8, 1), (9, 12, 1)], vec![2, 3]));
        assert_eq!(ns.last_flushed(), Some(12));
        assert_eq!(ns.buffered(), 0);
    }

    #[test]
    fn flush_time_fires_from_the_time_passed_in() {
        let mut ns = started(1);
        let l = limits();
        ns.push(1, blk(1, 0), Duration::from_millis(100), &l, 0);
        assert!(!ns.due(Duration::from_millis(119), l.flush_time));
        assert!(ns.due(Duration::from_millis(120), l.flush_time));
        assert!(ns.rotate());
        assert!(!ns.due(Duration::from_millis(500), l.flush_time), "an empty buffer is never due");
    }

    #[test]
    fn memory_bounds_hand_the_block_back() {
        let mut ns = started(1);
        let mut l = limits();
        l.max_vdisk_buffer_bytes = 2 * blk(1, 0).mem_size();
        assert!(matches!(ns.push(1, blk(1, 0), Duration::ZERO, &l, 0), Push::Received { .. }));
        assert!(matches!(ns.push(1, blk(2, 0), Duration::ZERO, &l, 0), Push::Received { .. }));
        match ns.push(1, blk(3, 0), Duration::ZERO, &l, 0) {
            Push::Full(b) => assert_eq!(b.sequence, 3),
            other => panic!("{other:?}"),
        }
        // The global bound counts other vdisks' bytes.
        let mut ns2 = started(1);
        ns2.push(1, blk(1, 0), Duration::ZERO, &l, 0);
        assert!(matches!(ns2.push(1, blk(2, 0), Duration::ZERO, &l, l.max_buffer_bytes), Push::Full(_)));
    }

    #[test]
    fn the_sequence_space_ends_instead_of_wrapping() {
        let mut ns = Namespace::new("vd", 0, None, 0, 4);
        ns.begin_epoch(1, FirstSequence::Continue(u64::MAX - 1)).unwrap();
        let l = limits();
        assert!(matches!(ns.push(1, blk(u64::MAX - 1, 0), Duration::ZERO, &l, 0), Push::Received { .. }));
        assert!(matches!(ns.push(1, blk(u64::MAX, 0), Duration::ZERO, &l, 0), Push::Received { .. }));
        assert_eq!(ns.expected(), None);
        assert_eq!(ns.push(1, blk(0, 0), Duration::ZERO, &l, 0), Push::Exhausted);
        assert_eq!(ns.push(1, blk(1, 0), Duration::ZERO, &l, 0), Push::Exhausted);
        assert_eq!(ns.push(1, blk(u64::MAX, 0), Duration::ZERO, &l, 0), Push::Duplicate { flushed: false });
    }

    #[test]
    fn a_held_namespace_hands_blocks_back() {
        let mut ns = started(1);
        let l = limits();
        ns.hold(true);
        assert!(matches!(ns.push(1, blk(1, 0), Duration::ZERO, &l, 0), Push::Full(_)));
        ns.hold(false);
        assert!(matches!(ns.push(1, blk(1, 0), Duration::ZERO, &l, 0), Push::Received { .. }));
    }

    #[test]
    fn timestamps_never_go_back() {
        let mut ns = started(1);
        let l = limits();
        ns.push(1, blk(1, 1000), Duration::ZERO, &l, 0);
        ns.push(1, blk(2, 400), Duration::ZERO, &l, 0);
        ns.push(1, blk(3, 2000), Duration::ZERO, &l, 0);
        ns.rotate();
        let ts: Vec<u64> = ns.take_full().unwrap().blocks.iter().map(|b| b.timestamp).collect();
        assert_eq!(ts, vec![1000, 1000, 2000]);
    }

    #[test]
    fn takeover_fences_drains_and_continues_after_the_durable_head() {
        let mut ns = started(1);
        let l = limits();
        for s in 1..=6 {
            ns.push(1, blk(s, 0), Duration::ZERO, &l, 0);
        }
        // Blocks 1..4 are full (queued), 5..6 current. The takeover fences epoch 1.
        assert!(ns.fence());
        assert_eq!(ns.push(1, blk(7, 0), Duration::ZERO, &l, 0), Push::Fenced);
        assert_eq!(ns.begin_epoch(2, FirstSequence::Continue(1)), Err(BeginError::NotIdle));
        let a = ns.take_full().unwrap();
        let b = ns.take_full().unwrap();
        assert_eq!((a.epoch, b.epoch), (1, 1));
        let c = ns.complete(1, 1, 4, a.bytes, 1);
        assert_eq!(c.acks, vec![(1, 4, 1)]);
        ns.complete(2, 5, 6, b.bytes, 1);
        // Drained: the new writer continues after 6 and cannot reset into the history.
        assert_eq!(ns.begin_epoch(2, FirstSequence::Reset(3)), Err(BeginError::WouldReuse { requested: 3, last_flushed: 6 }));
        assert_eq!(ns.begin_epoch(2, FirstSequence::Continue(1)), Ok(Some(7)));
        assert_eq!(ns.push(2, blk(7, 0), Duration::ZERO, &l, 0), Push::Received { rotated: false });
        assert_eq!(ns.push(1, blk(8, 0), Duration::ZERO, &l, 0), Push::Fenced);
        let mut ns3 = started(1);
        ns3.push(1, blk(1, 0), Duration::ZERO, &l, 0);
        ns3.fence();
        let f = ns3.take_full().unwrap();
        ns3.complete(1, 1, 1, f.bytes, 1);
        assert_eq!(ns3.begin_epoch(2, FirstSequence::Reset(100)), Ok(Some(100)), "a jump forward is allowed");
    }
}
