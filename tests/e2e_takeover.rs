//! Adversity: a takeover followed by a crash loses no acknowledged write.
//!
//! Writer A imports image A into vdisk `dc`; mid-stream writer B imports image B into the same
//! vdisk (a takeover: B gets a new epoch, A is fenced); a random moment later tlogd is killed
//! with SIGKILL and started again. B's import must finish (its client reconnects and resends
//! what was not flushed), A's must either finish before the takeover or be told it was fenced,
//! and the restore must equal image B exactly: B writes every block of the vdisk, and every
//! block B was told is flushed must be in the history after A's.
//!
//! Before the fix, the takeover handed A's flushed acks to B's connection: B's client released
//! blocks it had never had flushed, and after the crash the restore held A's data in B's place
//! (or B stopped with `outOfOrder`).

mod common;
use common::*;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn store_bytes(data: &std::path::Path) -> u64 {
    std::fs::read_dir(data.join("store/0"))
        .map(|r| {
            r.filter_map(|e| e.ok())
                .filter(|e| e.path().extension().map(|x| x == "data").unwrap_or(false))
                .map(|e| e.metadata().map(|m| m.len()).unwrap_or(0))
                .sum()
        })
        .unwrap_or(0)
}

fn spawn_import(addr: &str, img: &std::path::Path) -> std::process::Child {
    Command::new(tlog_bin())
        .args(["import", "--reconnect-timeout", "60", "--server", addr, "--vdisk", "dc"])
        .arg(img)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn tlog import")
}

/// xorshift64*, seeded from the clock (the seed is printed so a failure can be replayed with
/// TLOG_TAKEOVER_SEED).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

/// One trial; `kill_after` is the delay between B's start and the SIGKILL of tlogd.
fn trial(n: usize, kill_after: Duration, a: &std::path::Path, b: &std::path::Path, work: &std::path::Path) {
    let data = work.join(format!("data{n}"));
    let mut t = Tlogd::start(&data, None, free_port());
    let addr = t.addr();
    let mut ia = spawn_import(&addr, a);
    // B takes over once A has something durable and is still streaming.
    let end = Instant::now() + Duration::from_secs(60);
    while store_bytes(&data) < (2 << 20) && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(2));
    }
    let a_running = ia.try_wait().unwrap().is_none();
    let ib = spawn_import(&addr, b);
    std::thread::sleep(kill_after);
    t.kill9();
    t.restart();
    let ob = ib.wait_with_output().unwrap();
    let oa = ia.wait_with_output().unwrap();
    let (sa, sb) = (String::from_utf8_lossy(&oa.stderr).to_string(), String::from_utf8_lossy(&ob.stderr).to_string());
    assert!(ob.status.success(), "run {n} (kill {kill_after:?} after B started): import B failed: {sb}\nA: {sa}\ntlogd: {}", t.log_text());
    if a_running && !oa.status.success() {
        let low = sa.to_lowercase();
        assert!(low.contains("fenced") || low.contains("taken over"), "run {n}: import A failed for another reason than fencing: {sa}");
    }
    t.stop();
    let r = work.join(format!("restored{n}.img"));
    assert_ok(&restore(None, &data, "dc", &r), "restore");
    let o = run(Command::new("cmp").arg(b).arg(&r));
    assert!(o.status.success(), "run {n} (kill {kill_after:?} after B started): the restore is not image B: {}", String::from_utf8_lossy(&o.stdout));
    let _ = std::fs::remove_dir_all(&data);
    let _ = std::fs::remove_file(&r);
}

#[test]
fn takeover_then_sigkill_restores_the_new_writers_image() {
    let d = tempfile::tempdir().unwrap();
    let a = d.path().join("a.img");
    let b = d.path().join("b.img");
    mixed_image(&a, 24, 101);
    mixed_image(&b, 24, 202);
    let seed = std::env::var("TLOG_TAKEOVER_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|t| t.as_nanos() as u64).unwrap_or(1) | 1);
    println!("takeover seed {seed} (TLOG_TAKEOVER_SEED replays it)");
    let mut rng = Rng(seed);
    let runs: usize = std::env::var("TLOG_TAKEOVER_RUNS").ok().and_then(|s| s.parse().ok()).unwrap_or(20);
    for run in 0..runs {
        // 0 to 400 ms after B started: before, during and after B's handshake and first flushes.
        let kill_after = Duration::from_millis(rng.next() % 400);
        trial(run, kill_after, &a, &b, d.path());
    }
}
