//! Upkeep: `tlog scrub` finds bad shards (bytes flipped in one store directory; shard values
//! overwritten in Redis), `--repair` rewrites them, a second scrub is clean, and a restore that
//! needs the repaired backend (two others gone) is exact: no flip was missed. `tlog repair`
//! rebuilds what the repair queue holds.

mod common;
use common::*;
use std::path::Path;
use std::process::Command;

fn scrub(config: Option<&Path>, data: &Path, repair: bool) -> std::process::Output {
    let mut c = Command::new(tlog_bin());
    c.arg("scrub");
    if let Some(cfg) = config {
        c.arg("--config").arg(cfg);
    }
    c.arg("--data-dir").arg(data);
    if repair {
        c.arg("--repair");
    }
    run(&mut c)
}

/// xorshift64: positions to flip.
fn positions(seed: u64, n: usize, lo: u64, hi: u64) -> Vec<u64> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            lo + x % (hi - lo)
        })
        .collect()
}

#[test]
fn scrub_finds_every_flipped_byte_in_one_store_and_repair_fixes_them() {
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("data");
    let img = d.path().join("a.raw");
    mixed_image(&img, 16, 8);
    let mut t = Tlogd::start(&data, None, free_port());
    assert_ok(&import(&t.addr(), "vd", &img), "import");
    t.stop();
    assert_ok(&scrub(None, &data, false), "scrub of a clean store");
    // Flip 40 bytes in store 2's data files, past the 16-byte segment header.
    let dir = data.join("store/2");
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().map(|x| x == "data").unwrap_or(false) {
            let mut b = std::fs::read(&p).unwrap();
            for pos in positions(b.len() as u64, 40, 16, b.len() as u64) {
                b[pos as usize] ^= 0x20;
            }
            std::fs::write(&p, b).unwrap();
        }
    }
    let o = scrub(None, &data, false);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(!o.status.success(), "the flips must be found: {out}");
    // A flipped byte fails its store entry's CRC: the shards in it read as bad or missing.
    assert!((out.contains("BadShard") || out.contains("MissingShard")) && out.contains("store/2"), "{out}");
    assert!(!out.contains("store/1") && !out.contains("store/3"), "only store 2 was touched: {out}");
    let o = scrub(None, &data, true);
    assert_ok(&o, "scrub --repair");
    assert!(String::from_utf8_lossy(&o.stdout).contains("(repaired)"));
    let o = scrub(None, &data, false);
    assert_ok(&o, "second scrub is clean");
    assert!(String::from_utf8_lossy(&o.stdout).contains("0 problems"), "{}", String::from_utf8_lossy(&o.stdout));
    // Stores 0 and 5 gone: every shard of store 2 is needed, and each must be good.
    for i in [0, 5] {
        std::fs::remove_dir_all(data.join(format!("store/{i}"))).unwrap();
    }
    let r = d.path().join("r.img");
    assert_ok(&restore(None, &data, "vd", &r), "restore needing the repaired store");
    assert_same(&img, &r);
}

#[test]
fn scrub_repairs_shards_overwritten_in_redis() {
    if !have("redis-server") {
        skip("redis-server missing (apt-get install redis-server)");
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let mut redis = Redis::start(6, d.path());
    let data = d.path().join("data");
    let cfg = d.path().join("tlogd.toml");
    std::fs::write(&cfg, redis.config(&data, 4, 2)).unwrap();
    let img = d.path().join("a.raw");
    mixed_image(&img, 24, 9);
    let mut t = Tlogd::start(&data, Some(&cfg), free_port());
    assert_ok(&import(&t.addr(), "rvd", &img), "import");
    t.stop();
    // Overwrite three shard values on server 3 with SET.
    let client = redis::Client::open(format!("redis://127.0.0.1:{}/", redis.ports[3])).unwrap();
    let mut c = client.get_connection().unwrap();
    let keys: Vec<Vec<u8>> = redis::cmd("KEYS").arg("tlog:s:*").query(&mut c).unwrap();
    assert!(keys.len() >= 4, "{} shard keys", keys.len());
    for k in keys.iter().take(3) {
        let _: () = redis::cmd("SET").arg(k).arg("not a shard").query(&mut c).unwrap();
    }
    let o = scrub(Some(&cfg), &data, false);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(!o.status.success(), "{out}");
    assert_eq!(out.lines().filter(|l| l.starts_with("BadShard")).count(), 3, "{out}");
    assert_ok(&scrub(Some(&cfg), &data, true), "scrub --repair");
    assert_ok(&scrub(Some(&cfg), &data, false), "second scrub is clean");
    redis.stop(0);
    redis.stop(1);
    let r = d.path().join("r.img");
    assert_ok(&restore(Some(&cfg), &data, "rvd", &r), "restore with servers 0 and 1 stopped");
    assert_same(&img, &r);
}

#[test]
fn tlog_repair_rebuilds_what_the_queue_holds() {
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("data");
    let img = d.path().join("a.raw");
    mixed_image(&img, 8, 10);
    let port = free_port();
    let mut t = Tlogd::start(&data, None, port);
    t.stop();
    // Store 3 unusable while tlogd runs: its shards go to the repair queue.
    std::fs::remove_dir_all(data.join("store/3")).unwrap();
    let mut t = Tlogd::start(&data, None, port);
    assert_ok(&import(&t.addr(), "vd", &img), "import with store 3 missing");
    t.stop();
    let queue = std::fs::read_to_string(data.join("repair.log")).unwrap();
    assert!(queue.lines().count() > 0 && queue.lines().all(|l| l.ends_with(" 3")), "{queue}");
    assert_ok(&run(Command::new(tlog_bin()).args(["store", "init"]).arg(data.join("store/3"))), "tlog store init");
    let o = run(Command::new(tlog_bin()).arg("repair").arg("--data-dir").arg(&data));
    assert_ok(&o, "tlog repair");
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("repaired shard 3") && out.contains("0 failed"), "{out}");
    assert_eq!(std::fs::read_to_string(data.join("repair.log")).unwrap().trim(), "", "the queue is empty after the repair");
    for i in [0, 1] {
        std::fs::remove_dir_all(data.join(format!("store/{i}"))).unwrap();
    }
    let r = d.path().join("r.img");
    assert_ok(&restore(None, &data, "vd", &r), "restore needing the repaired store 3");
    assert_same(&img, &r);
}
