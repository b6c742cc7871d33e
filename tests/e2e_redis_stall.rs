//! Adversity: one of six redis-server processes frozen with SIGSTOP (alive, accepting TCP
//! connections into its backlog, answering nothing) must not stop durable writes: with
//! write_quorum 5 the other five make every aggregation durable, the frozen backend's shards
//! are queued for repair, and after SIGCONT they are repaired (its key count catches up with the
//! others'), so a restore with two *other* servers stopped is still exact.
//!
//! Before the fix every flushed ack waited for the frozen server: the redis crate's connection
//! setup read had no timeout and the engine waited for a reply from every backend, so the
//! import hung for as long as the server stayed stopped.

mod common;
use common::*;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn sigstopped_redis_does_not_stall_flushes_and_is_repaired() {
    if !have("redis-server") || !have("redis-cli") {
        skip("redis-server or redis-cli missing (apt-get install redis-server redis-tools)");
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let mut redis = Redis::start(6, d.path());
    let data = d.path().join("data");
    let cfg = d.path().join("tlogd.toml");
    std::fs::write(&cfg, redis.config(&data, 4, 2)).unwrap();
    let mut t = Tlogd::start(&data, Some(&cfg), free_port());
    let (a, b) = (d.path().join("a.img"), d.path().join("b.img"));
    mixed_image(&a, 4, 5);
    mixed_image(&b, 24, 6);
    assert_ok(&import(&t.addr(), "before", &a), "import before the stop");

    redis.signal(2, "STOP");
    let mut imp = Command::new(tlog_bin())
        .args(["import", "--server", &t.addr(), "--vdisk", "during"])
        .arg(&b)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The frozen server stays frozen until the import has finished (or 120 s passed).
    let end = Instant::now() + Duration::from_secs(120);
    while imp.try_wait().unwrap().is_none() && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(50));
    }
    let finished = imp.try_wait().unwrap().is_some();
    if !finished {
        let _ = imp.kill();
    }
    let out = imp.wait_with_output().unwrap();
    // Still frozen: its writes time out (backend.redis.timeout_ms) and are recorded for repair.
    let end = Instant::now() + Duration::from_secs(30);
    while !t.log_text().contains("recorded for repair") && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(100));
    }
    redis.signal(2, "CONT");
    assert!(finished, "the import did not finish in 120 s while one of six redis-server was stopped: {}", t.log_text());
    assert_ok(&out, "import with one redis-server stopped");
    let log = t.log_text();
    assert!(log.contains("recorded for repair"), "tlogd records the frozen backend's shards for repair: {log}");

    // Repaired within a minute of SIGCONT: the stopped server holds as many keys as another.
    let end = Instant::now() + Duration::from_secs(60);
    while redis.dbsize(2) < redis.dbsize(1) && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(redis.dbsize(2), redis.dbsize(1), "the stopped backend was not repaired within 60 s of SIGCONT: {}", t.log_text());
    t.stop();
    redis.stop(0);
    redis.stop(5);
    let r = d.path().join("during.out");
    assert_ok(&restore(Some(&cfg), &data, "during", &r), "restore with redis 0 and 5 stopped (needs the repaired shards of 2)");
    assert_same(&b, &r);
}
