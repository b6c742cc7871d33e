//! The engine's shutdown drains and *joins* its threads within its bound: when it returns, no
//! engine thread is left (before the fix they were dropped, detached, and went on polling a
//! flag). Its own test binary, so no other engine's threads share the process.

use std::sync::Arc;
use std::time::Duration;
use tlog::backend::{memory::MemoryBackend, Backend};
use tlog::config::Config;
use tlog::flush::{AttachRequest, Core, Engine, Push};
use tlog::seal::{SealKey, Sealer};
use tlog::wire::{Block, Operation};

fn engine_threads() -> Vec<String> {
    let names = ["shard-writer", "flusher", "flush-completer", "flush-timer", "attach-", "repairer", "scrubber"];
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|e| std::fs::read_to_string(e.ok()?.path().join("comm")).ok())
        .map(|c| c.trim().to_string())
        .filter(|c| names.iter().any(|n| c.starts_with(n)))
        .collect()
}

#[test]
fn shutdown_joins_every_engine_thread() {
    let d = tempfile::tempdir().unwrap();
    let mut cfg = Config::default();
    cfg.server.data_dir = d.path().to_path_buf();
    cfg.upkeep.scrub_interval = "1h".into();
    let backends: Vec<Arc<dyn Backend>> = (0..6).map(|i| Arc::new(MemoryBackend::new(&i.to_string())) as Arc<dyn Backend>).collect();
    let sealer = Sealer::new(SealKey::from_bytes([1; 32]), 4, 2).unwrap();
    let e = Engine::start(Arc::new(cfg), sealer, backends, tlog::time::SystemClock::shared()).unwrap();
    let (tx, _rx) = crossbeam_channel::unbounded();
    let a = e
        .attach(AttachRequest { vdisk: "vd".into(), first_sequence: 1, reset_first_sequence: false, resume_epoch: 0 }, tx)
        .wait(Duration::from_secs(10))
        .unwrap()
        .unwrap();
    for s in 1..=100 {
        assert!(matches!(e.push(&a.handle, a.epoch, Block::new(s, s * 8, Operation::Write, vec![s as u8; 4096], 4096, s)), Push::Received { .. }));
    }
    assert!(!engine_threads().is_empty());
    assert!(e.shutdown(Duration::from_secs(10)), "clean shutdown");
    assert_eq!(e.last_flushed("vd"), Some(100), "drained");
    let left = engine_threads();
    assert!(left.is_empty(), "engine threads still running after shutdown: {left:?}");
}
