//! Past one host (DESIGN.md §5, §15): two tlogd processes, A and B, on two loopback ports with
//! separate data directories and the same six redis-server backends (and the same key).
//!
//! - `tlog import --server A,B` of a real ext4 image; mid-import A is frozen with SIGSTOP (alive,
//!   holding buffered blocks); the client fails over to B and completes; A gets SIGCONT and
//!   runs on. The restore equals the image exactly; A's log says it was fenced; every
//!   aggregation after B's first carries B's epoch (nothing A flushed after B's epoch is in the
//!   history).
//! - The same with A killed (SIGKILL) instead of frozen.
//! - B taken by a second client while A is alive and its client still writing: the first
//!   writer is refused (fenced), and the restore equals exactly what the survivor acknowledged.

mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

const KEY: &str = "5d1c0ffee5d1c0ffee5d1c0ffee5d1c0ffee5d1c0ffee5d1c0ffee5d1c0ffee5";

struct Hosts {
    _redis: Redis,
    a: Tlogd,
    b: Tlogd,
    cfg_a: PathBuf,
}

fn hosts(dir: &Path) -> Option<Hosts> {
    if !have("redis-server") {
        skip("redis-server missing");
        return None;
    }
    let redis = Redis::start(6, dir);
    let mk = |name: &str| {
        let data = dir.join(name);
        let p = dir.join(format!("{name}.toml"));
        let conf = redis.config(&data, 4, 2).replacen("[server]\n", "[server]\nmetrics_listen = \"\"\n", 1);
        std::fs::write(&p, conf).unwrap();
        (data, p)
    };
    let ((da, ca), (db, cb)) = (mk("a"), mk("b"));
    let env = [("TLOG_AES_KEY", KEY)];
    let a = Tlogd::start_env(&da, Some(&ca), free_port(), &env);
    let b = Tlogd::start_env(&db, Some(&cb), free_port(), &env);
    Some(Hosts { _redis: redis, a, b, cfg_a: ca })
}

fn spawn_import(servers: &str, vdisk: &str, img: &Path, out: &Path) -> Child {
    Command::new(tlog_bin())
        .args(["import", "--server", servers, "--vdisk", vdisk])
        .arg(img)
        .env("TLOG_LOG", "info")
        .stdout(std::fs::File::create(out).unwrap())
        .stderr(std::fs::File::create(out.with_extension("err")).unwrap())
        .spawn()
        .unwrap()
}

fn signal(pid: u32, sig: &str) {
    assert!(Command::new("kill").arg(format!("-{sig}")).arg(pid.to_string()).status().unwrap().success());
}

/// Waits until `vdisk` has some flushed history on A (the import is under way there).
fn wait_some_flushed(t: &Tlogd, vdisk: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let o = Command::new(tlog_bin()).args(["history", "--server", &t.addr(), "--vdisk", vdisk, "--json"]).output().unwrap();
        if o.status.success() {
            let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
            if j["aggregations"].as_u64().unwrap_or(0) >= 2 {
                return;
            }
        }
        assert!(Instant::now() < deadline, "the import never flushed on A");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The aggregations of `vdisk` on the backends, oldest first: (epoch, first, last sequence).
fn chain(cfg: &Path, vdisk: &str) -> Vec<(u64, u64, u64)> {
    std::env::set_var("TLOG_AES_KEY", KEY);
    let c = tlog::config::Config::load(cfg).unwrap();
    let (key, _) = tlog::server::load_key(&c, false).unwrap();
    let sealer = Arc::new(tlog::seal::Sealer::new(key, c.flush.k, c.flush.m).unwrap());
    let h = tlog::history::History::load(tlog::server::open_backends_read_only(&c), sealer, vdisk).unwrap();
    (0..h.index.entries.len())
        .map(|i| {
            let a = h.aggregation(i).unwrap();
            (a.epoch, a.first_sequence, a.last_sequence)
        })
        .collect()
}

/// After B's first aggregation, every one is B's (epochs never go back, and nothing of A's
/// older epoch follows).
fn assert_epochs_after_takeover(ch: &[(u64, u64, u64)]) {
    let last_epoch = ch.last().map(|x| x.0).unwrap();
    let first_b = ch.iter().position(|x| x.0 == last_epoch).unwrap();
    assert!(first_b > 0, "no aggregation before the takeover: {ch:?}");
    assert!(ch[first_b..].iter().all(|x| x.0 == last_epoch), "an older epoch's aggregation after the takeover: {ch:?}");
    assert!(ch.windows(2).all(|w| w[1].1 == w[0].2 + 1), "sequences are not contiguous (a block twice, or lost): {ch:?}");
}

fn restore_equals(t: &Tlogd, vdisk: &str, img: &Path, dir: &Path) {
    let out = dir.join(format!("{vdisk}.restored"));
    assert_ok(&tlog(&["restore", "--server", &t.addr(), "--vdisk", vdisk, "--output", out.to_str().unwrap()]), "restore");
    let (a, b) = (std::fs::read(img).unwrap(), std::fs::read(&out).unwrap());
    let n = b.len();
    assert!(a[..n] == b[..] && a[n..].iter().all(|x| *x == 0), "the restore differs from the image");
}

fn failover(kill: bool) {
    let d = tempfile::tempdir().unwrap();
    let Some(mut h) = hosts(d.path()) else { return };
    let Some(img) = ext4_image(&d.path().join("fs.img"), 96) else { return };
    let vdisk = if kill { "fo-kill" } else { "fo-stop" };
    let out = d.path().join("import.out");
    let servers = format!("{},{}", h.a.addr(), h.b.addr());
    let mut imp = spawn_import(&servers, vdisk, &img, &out);
    wait_some_flushed(&h.a, vdisk);
    let t0 = Instant::now();
    let pid = h.a_pid();
    if kill {
        h.a.kill9();
    } else {
        signal(pid, "STOP");
    }
    let st = imp.wait().unwrap();
    let took = t0.elapsed();
    let text = std::fs::read_to_string(&out).unwrap_or_default() + &std::fs::read_to_string(out.with_extension("err")).unwrap_or_default();
    assert!(st.success(), "import did not complete through B: {text}");
    assert!(text.contains("failing over to tlogd at") && text.contains("reconnects"), "no failover: {text}");
    eprintln!("import completed {took:?} after A was {}", if kill { "killed" } else { "frozen" });
    if !kill {
        signal(pid, "CONT");
        let deadline = Instant::now() + Duration::from_secs(30);
        while !h.a.log_text().contains("fenced: another writer holds this vdisk") {
            assert!(Instant::now() < deadline, "A's log does not say it was fenced: {}", h.a.log_text());
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(h.a.alive(), "A did not run on after SIGCONT");
    }
    restore_equals(&h.b, vdisk, &img, d.path());
    assert_epochs_after_takeover(&chain(&h.cfg_a, vdisk));
}

impl Hosts {
    fn a_pid(&self) -> u32 {
        self.a.pid().expect("A runs")
    }
}

#[test]
fn import_fails_over_when_a_is_frozen() {
    failover(false);
}

#[test]
fn import_fails_over_when_a_is_killed() {
    failover(true);
}

/// A second client attaches on B while A is alive and its client is mid-import (held with
/// SIGSTOP meanwhile, then writing on): A's client is refused (fenced), B's completes; the history is A's acknowledged prefix then B's image.
#[test]
fn a_second_writer_on_b_fences_the_first_on_a() {
    let d = tempfile::tempdir().unwrap();
    let Some(h) = hosts(d.path()) else { return };
    let first = d.path().join("first.raw");
    mixed_image(&first, 192, 21);
    let second = d.path().join("second.raw");
    mixed_image(&second, 16, 22);
    let out1 = d.path().join("first.out");
    let mut w1 = spawn_import(&h.a.addr(), "fo-two", &first, &out1);
    wait_some_flushed(&h.a, "fo-two");
    // The first writer is held mid-import (its window is smaller than what it has left), so
    // it cannot finish before the second attaches however fast the path is; it writes on after.
    signal(w1.id(), "STOP");
    let o = Command::new(tlog_bin()).args(["import", "--server", &h.b.addr(), "--vdisk", "fo-two"]).arg(&second).stdin(Stdio::null()).output().unwrap();
    signal(w1.id(), "CONT");
    assert_ok(&o, "the second writer's import on B");
    let st = w1.wait().unwrap();
    let text = std::fs::read_to_string(out1.with_extension("err")).unwrap_or_default();
    assert!(!st.success(), "the first writer was not refused");
    assert!(text.contains("fenced") || text.contains("another writer"), "the first writer's error does not say why: {text}");
    // The history: what the first writer had acknowledged, then the whole second image.
    let ch = chain(&h.cfg_a, "fo-two");
    assert_epochs_after_takeover(&ch);
    let out = d.path().join("two.restored");
    assert_ok(&tlog(&["restore", "--server", &h.b.addr(), "--vdisk", "fo-two", "--output", out.to_str().unwrap()]), "restore");
    let got = std::fs::read(&out).unwrap();
    let (a, b) = (std::fs::read(&first).unwrap(), std::fs::read(&second).unwrap());
    assert!(got.len() >= b.len());
    assert!(got[..b.len()] == b[..], "the second writer's image is not on top");
    // Past the second image: a prefix of the first writer's image (what A acknowledged), then
    // zeros where the first import never got to.
    let tail = &got[b.len()..];
    let written = tail.len();
    assert!(a[b.len()..b.len() + written] == tail[..], "bytes past the second image are not the first image's");
}
