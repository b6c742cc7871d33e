//! The engine tested directly: memory backends that fail on demand (down, refusing, hung,
//! corrupting), an injected clock, the flush timer driven by hand. Each test is named after the
//! behaviour it holds.

use super::*;
use crate::backend::memory::MemoryBackend;
use crate::seal::SealKey;
use crate::time::ManualClock;
use crate::wire::Operation;
use crossbeam_channel::Receiver;
use std::time::Instant;

struct Rig {
    engine: Arc<Engine>,
    mem: Vec<Arc<MemoryBackend>>,
    clock: Arc<ManualClock>,
    _dir: tempfile::TempDir,
}

fn rig_with(flush_size: usize, tweak: impl FnOnce(&mut Config)) -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = Config::default();
    cfg.server.data_dir = dir.path().to_path_buf();
    cfg.flush.flush_size = flush_size;
    cfg.flush.workers = 2;
    cfg.flush.flush_time_ms = 20;
    cfg.server.takeover_timeout_ms = 5000;
    tweak(&mut cfg);
    let mem: Vec<Arc<MemoryBackend>> = (0..6).map(|i| Arc::new(MemoryBackend::new(&i.to_string()))).collect();
    let backends: Vec<Arc<dyn Backend>> = mem.iter().map(|m| m.clone() as Arc<dyn Backend>).collect();
    let clock = Arc::new(ManualClock::new(1_700_000_000_000_000_000));
    let sealer = Sealer::new(SealKey::from_bytes([7; 32]), 4, 2).unwrap();
    let engine = Engine::start_with(Arc::new(cfg), sealer, backends, clock.clone(), pipeline::Threads { timer: false, repairer: false }).unwrap();
    Rig { engine, mem, clock, _dir: dir }
}

fn rig(flush_size: usize) -> Rig {
    rig_with(flush_size, |_| {})
}

/// A block of incompressible data (so shard sizes are what the tests count on).
fn blk(seq: u64) -> Block {
    let mut x = seq.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let data: Vec<u8> = (0..4096)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    Block::new(seq, seq * 8, Operation::Write, data, 4096, seq)
}

fn attach(e: &Engine, vdisk: &str) -> (Attached<Arc<Vdisk>>, Receiver<Ack>) {
    let (tx, rx) = crossbeam_channel::unbounded();
    let t = e.attach(AttachRequest { vdisk: vdisk.into(), first_sequence: 1, reset_first_sequence: false, resume_epoch: 0 }, tx);
    let a = t.wait(Duration::from_secs(10)).expect("attach answered").expect("attach ok");
    (a, rx)
}

/// Flushed ranges received within `wait`, until `last` is covered.
fn flushed_until(rx: &Receiver<Ack>, last: u64, wait: Duration) -> Vec<(u64, u64)> {
    let end = Instant::now() + wait;
    let mut v = Vec::new();
    while Instant::now() < end {
        if let Ok(Ack::Flushed { first, last: l }) = rx.recv_timeout(Duration::from_millis(20)) {
            v.push((first, l));
            if l >= last {
                break;
            }
        }
    }
    v
}

fn push_all(e: &Engine, a: &Attached<Arc<Vdisk>>, seqs: std::ops::RangeInclusive<u64>) {
    for s in seqs {
        assert!(matches!(e.push(&a.handle, a.epoch, blk(s)), Push::Received { .. }), "block {s}");
    }
}

#[test]
fn second_attach_fences_the_first() {
    let r = rig(4);
    let (a, rx_a) = attach(&r.engine, "vd");
    push_all(&r.engine, &a, 1..=6);
    let (b, rx_b) = attach(&r.engine, "vd");
    assert!(b.epoch > a.epoch);
    // The takeover drained the first writer: its six blocks are durable, acked to it alone.
    assert_eq!(b.last_flushed, Some(6));
    assert_eq!(b.next_sequence, Some(7));
    let got: Vec<Ack> = rx_a.try_iter().collect();
    assert!(got.contains(&Ack::Flushed { first: 1, last: 4 }) && got.contains(&Ack::Flushed { first: 5, last: 6 }), "{got:?}");
    assert_eq!(got.last(), Some(&Ack::Fenced { by: b.epoch }));
    assert_eq!(r.engine.push(&a.handle, a.epoch, blk(7)), Push::Fenced);
    push_all(&r.engine, &b, 7..=10);
    assert_eq!(flushed_until(&rx_b, 10, Duration::from_secs(5)), vec![(7, 10)]);
    assert!(rx_a.try_iter().next().is_none(), "the old connection gets none of the new writer's acks");
}

#[test]
fn flush_waits_for_write_quorum_and_records_the_missing_shard_for_repair() {
    let r = rig(4);
    r.mem[3].set_down(true);
    let (a, rx) = attach(&r.engine, "vd");
    push_all(&r.engine, &a, 1..=4);
    assert_eq!(flushed_until(&rx, 4, Duration::from_secs(5)), vec![(1, 4)], "5 of 6 is the quorum");
    let end = Instant::now() + Duration::from_secs(5);
    while r.engine.repair_backlog() == 0 && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(r.engine.repair_backlog(), 1, "backend 3's shard is recorded for repair");
    // Two down: below the quorum, nothing is acked until one comes back.
    r.mem[4].set_down(true);
    push_all(&r.engine, &a, 5..=8);
    assert!(flushed_until(&rx, 8, Duration::from_millis(400)).is_empty());
    r.mem[4].set_down(false);
    assert_eq!(flushed_until(&rx, 8, Duration::from_secs(5)), vec![(5, 8)], "retried through the writer once it is back");
    assert!(r.engine.stats().retries.load(Ordering::SeqCst) > 0);
}

#[test]
fn a_hung_backend_does_not_hold_flushed_acks() {
    let r = rig(4);
    r.mem[2].set_hung(true, Duration::from_secs(30));
    let (a, rx) = attach(&r.engine, "vd");
    push_all(&r.engine, &a, 1..=12);
    assert_eq!(flushed_until(&rx, 12, Duration::from_secs(5)), vec![(1, 4), (5, 8), (9, 12)]);
    r.mem[2].set_hung(false, Duration::ZERO);
}

#[test]
fn a_backend_past_its_queue_bound_is_degraded_and_its_shards_go_to_repair() {
    let r = rig_with(64, |c| c.backend.queue_bytes = 4 << 20);
    r.mem[1].set_hung(true, Duration::from_secs(30));
    let (a, rx) = attach(&r.engine, "vd");
    push_all(&r.engine, &a, 1..=64 * 100);
    assert_eq!(flushed_until(&rx, 64 * 100, Duration::from_secs(30)).last().map(|x| x.1), Some(64 * 100));
    assert!(r.engine.degraded(1), "the hung backend's queue passed 4 MiB");
    r.mem[1].set_hung(false, Duration::ZERO);
    let end = Instant::now() + Duration::from_secs(10);
    while r.engine.repair_backlog() == 0 && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(r.engine.repair_backlog() > 0, "dropped shards are queued for repair");
}

#[test]
fn flushed_acks_leave_in_sequence_order_with_several_in_flight_and_writes_out_of_order() {
    let r = rig(2);
    // Writes are slow on one backend and fast on the others: completions arrive out of order,
    // yet acks must leave in sequence order.
    r.mem[0].set_delay(Duration::from_millis(3));
    let (a, rx) = attach(&r.engine, "vd");
    push_all(&r.engine, &a, 1..=200);
    let got = flushed_until(&rx, 200, Duration::from_secs(20));
    let mut next = 1;
    for (f, l) in &got {
        assert_eq!(*f, next, "{got:?}");
        next = l + 1;
    }
    assert_eq!(next, 201);
}

#[test]
fn a_full_buffer_blocks_the_producer_and_resumes() {
    let r = rig_with(8, |c| {
        c.flush.max_vdisk_buffer_bytes = 8 << 20;
        c.flush.max_aggregation_bytes = 4 << 20;
    });
    // Attached first: an attach fences the vdisk on the backends, which needs them to answer.
    let (a, rx) = attach(&r.engine, "vd");
    for m in &r.mem {
        m.set_hung(true, Duration::from_secs(30));
    }
    let mut s = 1;
    let full = loop {
        match r.engine.push(&a.handle, a.epoch, blk(s)) {
            Push::Received { .. } => s += 1,
            Push::Full(b) => break b,
            other => panic!("{other:?}"),
        }
        assert!(s < 10_000, "the memory bound never stopped the producer");
    };
    assert_eq!(full.sequence, s);
    for m in &r.mem {
        m.set_hung(false, Duration::ZERO);
    }
    let end = Instant::now() + Duration::from_secs(10);
    let mut taken = false;
    while !taken && Instant::now() < end {
        r.engine.wait_space(Duration::from_millis(50));
        taken = matches!(r.engine.push(&a.handle, a.epoch, full.clone()), Push::Received { .. });
    }
    assert!(taken, "space freed once writes went through");
    r.engine.force_flush(&a.handle);
    assert_eq!(flushed_until(&rx, s, Duration::from_secs(10)).last().map(|x| x.1), Some(s));
}

#[test]
fn flush_time_fires_from_the_injected_clock() {
    let r = rig(1000);
    let (a, rx) = attach(&r.engine, "vd");
    push_all(&r.engine, &a, 1..=3);
    r.engine.tick();
    r.clock.advance(Duration::from_millis(19));
    r.engine.tick();
    assert!(flushed_until(&rx, 3, Duration::from_millis(300)).is_empty(), "19 ms < flush_time: nothing flushed");
    r.clock.advance(Duration::from_millis(1));
    r.engine.tick();
    assert_eq!(flushed_until(&rx, 3, Duration::from_secs(5)), vec![(1, 3)]);
}

#[test]
fn shutdown_drains_every_buffer() {
    let r = rig(1000);
    let mut rxs = Vec::new();
    for v in 0..4 {
        let (a, rx) = attach(&r.engine, &format!("vd{v}"));
        push_all(&r.engine, &a, 1..=10);
        rxs.push(rx);
    }
    assert!(r.engine.shutdown(Duration::from_secs(10)), "clean shutdown");
    for rx in rxs {
        assert!(rx.try_iter().any(|x| x == Ack::Flushed { first: 1, last: 10 }));
    }
    assert_eq!(r.engine.buffered_bytes(), 0);
    let (tx, _rx) = crossbeam_channel::unbounded();
    let t = r.engine.attach(AttachRequest { vdisk: "late".into(), first_sequence: 1, reset_first_sequence: false, resume_epoch: 0 }, tx);
    assert!(matches!(t.wait(Duration::from_secs(1)), Some(Err(AttachError::ShuttingDown))));
}

#[test]
fn a_slow_first_attach_does_not_block_other_work() {
    let r = rig(4);
    let (a, _rx) = attach(&r.engine, "fast");
    for m in &r.mem {
        m.set_delay(Duration::from_millis(1500));
    }
    let (tx, _rx2) = crossbeam_channel::unbounded();
    let slow = r.engine.attach(AttachRequest { vdisk: "slow".into(), first_sequence: 1, reset_first_sequence: false, resume_epoch: 0 }, tx);
    std::thread::sleep(Duration::from_millis(100));
    // The slow vdisk's head is being read from the backends: the map of vdisks is not locked.
    let t = Instant::now();
    r.engine.tick();
    assert_eq!(r.engine.last_flushed("fast"), None);
    assert!(matches!(r.engine.push(&a.handle, a.epoch, blk(1)), Push::Received { .. }));
    assert!(t.elapsed() < Duration::from_millis(1000), "blocked behind the slow attach for {:?}", t.elapsed());
    for m in &r.mem {
        m.set_delay(Duration::ZERO);
    }
    assert!(slow.wait(Duration::from_secs(20)).expect("slow attach answered").is_ok());
}

#[test]
fn retries_go_through_the_writer_with_the_head_record() {
    let r = rig(4);
    r.mem[0].set_refuse_writes(true);
    r.mem[1].set_refuse_writes(true);
    let (a, rx) = attach(&r.engine, "vd");
    push_all(&r.engine, &a, 1..=4);
    std::thread::sleep(Duration::from_millis(200));
    r.mem[0].set_refuse_writes(false);
    assert_eq!(flushed_until(&rx, 4, Duration::from_secs(5)), vec![(1, 4)]);
    // The retry carried the head record too (a direct shard put would not).
    let head = r.mem[0].get_head("vd").unwrap().expect("head written by the retry");
    assert_eq!(crate::seal::HeadRecord::decode(&head).unwrap().last_sequence, 4);
}

#[test]
fn corrupt_writes_on_m_backends_still_restore() {
    let r = rig(4);
    r.mem[0].set_corrupt_writes(true);
    r.mem[5].set_corrupt_writes(true);
    let (a, rx) = attach(&r.engine, "vd");
    push_all(&r.engine, &a, 1..=8);
    assert_eq!(flushed_until(&rx, 8, Duration::from_secs(5)).last(), Some(&(5, 8)));
    assert!(r.engine.shutdown(Duration::from_secs(5)));
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("img");
    let backends: Vec<Arc<dyn Backend>> = r.mem.iter().map(|m| m.clone() as Arc<dyn Backend>).collect();
    let sealer = Arc::new(Sealer::new(SealKey::from_bytes([7; 32]), 4, 2).unwrap());
    let h = crate::history::History::load(backends, sealer, "vd").unwrap();
    assert!(h.index.rebuilt.is_empty(), "every index entry was on the backends");
    let s = crate::history::restore::restore(&h, &out, &crate::history::restore::RestoreOptions { progress: false, ..Default::default() }).unwrap();
    assert_eq!(s.blocks, 8);
    let img = std::fs::read(&out).unwrap();
    assert_eq!(&img[8 * 512..8 * 512 + 4096], &blk(1).data[..]);
}

#[test]
fn the_index_is_written_to_the_backends_and_compacted_into_pages() {
    let r = rig(1);
    let (a, rx) = attach(&r.engine, "vd");
    let n = 2 * crate::history::index::PAGE + 52;
    for s in 1..=n {
        assert!(matches!(r.engine.push(&a.handle, a.epoch, blk(s)), Push::Received { .. }));
    }
    assert_eq!(flushed_until(&rx, n, Duration::from_secs(60)).last().map(|x| x.1), Some(n));
    assert!(r.engine.shutdown(Duration::from_secs(10)));
    for m in &r.mem {
        assert_eq!(m.list_meta("vd", "p/").unwrap().len(), 2, "two full pages");
        assert_eq!(m.list_meta("vd", "i/").unwrap().len(), 52, "the rest as loose entries");
    }
    let backends: Vec<Arc<dyn Backend>> = r.mem.iter().map(|m| m.clone() as Arc<dyn Backend>).collect();
    let h = crate::history::History::load(backends, Arc::new(Sealer::new(SealKey::from_bytes([7; 32]), 4, 2).unwrap()), "vd").unwrap();
    assert_eq!((h.index.entries.len() as u64, h.index.rebuilt.len()), (n, 0));
    assert_eq!(h.index.find_sequence(1500).map(|i| h.index.entries[i].first_sequence), Some(1500));
    // Block timestamps are the blocks' (1..=n ns here), so a time names a sequence.
    assert_eq!(h.resolve(&crate::history::points::Point::Time(777)).unwrap(), Some(777));
}

/// A second engine (another tlogd host) on the rig's backends, with its own data directory.
fn second_host(r: &Rig) -> (Arc<Engine>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = Config::default();
    cfg.server.data_dir = dir.path().to_path_buf();
    cfg.flush.flush_size = 8;
    cfg.flush.workers = 2;
    cfg.flush.flush_time_ms = 20;
    let backends: Vec<Arc<dyn Backend>> = r.mem.iter().map(|m| m.clone() as Arc<dyn Backend>).collect();
    let sealer = Sealer::new(SealKey::from_bytes([7; 32]), 4, 2).unwrap();
    let e = Engine::start_with(Arc::new(cfg), sealer, backends, r.clock.clone(), pipeline::Threads { timer: false, repairer: false }).unwrap();
    (e, dir)
}

#[test]
fn a_takeover_by_another_host_fences_the_first_in_the_backends() {
    let r = rig(8);
    let (a, rx_a) = attach(&r.engine, "vd");
    push_all(&r.engine, &a, 1..=16);
    assert_eq!(flushed_until(&rx_a, 16, Duration::from_secs(10)).last().map(|x| x.1), Some(16));
    // Host B takes the vdisk over while host A is alive and knows nothing of it.
    let (b_engine, _dir) = second_host(&r);
    let (b, rx_b) = attach(&b_engine, "vd");
    assert!(b.epoch > a.epoch, "B's epoch {} is not above A's {}", b.epoch, a.epoch);
    assert_eq!(b.last_flushed, Some(16), "B continues from the durable head");
    for m in &r.mem {
        assert_eq!(m.fence("vd", 0).unwrap(), b.epoch, "backend {} holds B's epoch", m.name());
    }
    // A's later writes are refused everywhere: its writer is told it is fenced, never acked.
    push_all(&r.engine, &a, 17..=24);
    r.engine.force_flush(&a.handle);
    let end = Instant::now() + Duration::from_secs(10);
    let mut fenced = false;
    while !fenced && Instant::now() < end {
        match rx_a.recv_timeout(Duration::from_millis(50)) {
            Ok(Ack::Flushed { last, .. }) => panic!("a fenced writer got a flushed ack up to {last}"),
            Ok(Ack::Fenced { by }) => fenced = by >= b.epoch,
            _ => {}
        }
    }
    assert!(fenced, "A's writer was not told it is fenced");
    // B writes on from 17; the chain holds B's blocks only, after A's acked ones.
    let blocks: Vec<Block> = (17..=24).map(|s| Block::new(s, s * 8, Operation::Write, vec![0xb0; 4096], 4096, s)).collect();
    for x in &blocks {
        assert!(matches!(b_engine.push(&b.handle, b.epoch, x.clone()), Push::Received { .. }));
    }
    b_engine.force_flush(&b.handle);
    assert_eq!(flushed_until(&rx_b, 24, Duration::from_secs(10)).last().map(|x| x.1), Some(24));
    let backends: Vec<Arc<dyn Backend>> = r.mem.iter().map(|m| m.clone() as Arc<dyn Backend>).collect();
    let sealer = Arc::new(Sealer::new(SealKey::from_bytes([7; 32]), 4, 2).unwrap());
    let h = crate::history::History::load(backends, sealer, "vd").unwrap();
    let mut seen = Vec::new();
    for i in 0..h.index.entries.len() {
        let agg = h.aggregation(i).unwrap();
        if agg.first_sequence > 16 {
            assert_eq!(agg.epoch, b.epoch, "an aggregation after the takeover is not B's");
            assert!(agg.blocks.iter().all(|x| x.data == vec![0xb0; 4096]), "A's data after the takeover is in the history");
        }
        seen.extend(agg.blocks.iter().map(|x| x.sequence));
    }
    assert_eq!(seen, (1..=24).collect::<Vec<u64>>());
    // A attaching again takes it back from the backends' state, after B's blocks.
    let (a2, _rx) = attach(&r.engine, "vd");
    assert!(a2.epoch > b.epoch);
    assert_eq!(a2.last_flushed, Some(24), "A reloaded the vdisk from the backends");
}

#[test]
fn an_attach_that_cannot_fence_enough_backends_is_refused() {
    let r = rig(8);
    // write_quorum 5 of 6: fencing needs 2 backends; with 5 refusing writes only 1 takes it.
    for m in &r.mem[1..] {
        m.set_refuse_writes(true);
    }
    let (tx, _rx) = crossbeam_channel::unbounded();
    let t = r.engine.attach(AttachRequest { vdisk: "vd".into(), first_sequence: 1, reset_first_sequence: false, resume_epoch: 0 }, tx);
    match t.wait(Duration::from_secs(10)).expect("attach answered") {
        Err(AttachError::Busy(m)) => assert!(m.contains("needed to fence"), "{m}"),
        other => panic!("attach with 5 of 6 backends down: {:?}", other.map(|a| a.epoch)),
    }
}
