//! Acceptance of history (DESIGN.md §12) with a real tlogd and real ext4 images:
//!
//! - image A imported into vdisk v, checkpoint `before`, a time noted, image B imported into v,
//!   then the first blocks of image C: restores at the checkpoint, the time and A's last
//!   sequence give A byte for byte (`cmp`, `e2fsck -fn`); the newest point gives B overlaid by
//!   C's blocks. All while tlogd runs and a second vdisk is imported again and again; that one
//!   restores exactly too. Each restore runs both from the backends (the local store opened
//!   read-only beside the running tlogd) and through tlogd (`--server`).
//! - A consistency-group checkpoint of 3 vdisks under dependent writes.
//! - `tlog replicate` killed twice and restarted, and `--delay 2s`.
//! - `tlog changed` and follow-mode playback against a model.
//! - Bad points: clear errors, no output file.

mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn now_ns() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
}

/// Restores `vdisk` at `point` (tlog restore arguments) both from the backends and through
/// tlogd; returns the two images.
fn restore_both(t: &Tlogd, dir: &Path, vdisk: &str, point: &[&str], tag: &str) -> [PathBuf; 2] {
    let direct = dir.join(format!("{tag}-direct.img"));
    let served = dir.join(format!("{tag}-served.img"));
    let mut args = vec!["restore", "--data-dir", t.data.to_str().unwrap(), "--vdisk", vdisk, "--output", direct.to_str().unwrap()];
    args.extend_from_slice(point);
    assert_ok(&tlog(&args), &format!("tlog restore {tag} (from the backends, tlogd running)"));
    let addr = t.addr();
    let mut args = vec!["restore", "--server", &addr, "--vdisk", vdisk, "--output", served.to_str().unwrap()];
    args.extend_from_slice(point);
    assert_ok(&tlog(&args), &format!("tlog restore {tag} --server"));
    [direct, served]
}

fn checkpoint_sequence(out: &std::process::Output, vdisk: &str) -> u64 {
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().find(|l| l.contains(&format!("vdisk {vdisk} at sequence "))).unwrap_or_else(|| panic!("no mark for {vdisk} in {text}"));
    line.split("at sequence ").nth(1).and_then(|r| r.split_whitespace().next()).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("bad mark line {line}"))
}

#[test]
fn ext4_points_in_time_while_another_vdisk_imports() {
    let d = tempfile::tempdir().unwrap();
    let a = d.path().join("a.img");
    let b = d.path().join("b.img");
    let c = d.path().join("c.img");
    if !ext4_from(&a, 32, None) {
        return;
    }
    random_tree(&d.path().join("tree-b"), 40, 300, 7);
    random_tree(&d.path().join("tree-c"), 40, 300, 11);
    assert!(ext4_from(&b, 32, Some(&d.path().join("tree-b"))));
    assert!(ext4_from(&c, 32, Some(&d.path().join("tree-c"))));
    // "Some blocks of image C": its first 3 MiB (superblock, group descriptors, bitmaps, files).
    let c_part = d.path().join("c-part.img");
    let cbytes = std::fs::read(&c).unwrap();
    std::fs::write(&c_part, &cbytes[..3 << 20]).unwrap();
    let mut model = std::fs::read(&b).unwrap();
    model[..3 << 20].copy_from_slice(&cbytes[..3 << 20]);
    let model_path = d.path().join("model.img");
    std::fs::write(&model_path, &model).unwrap();

    let other = d.path().join("other.img");
    mixed_image(&other, 24, 5);
    let t = Tlogd::start(&d.path().join("data"), None, free_port());
    let addr = t.addr();

    // The second vdisk, imported again and again (each import continues its history and
    // rewrites the whole image) for as long as the scenario runs.
    let stop = Arc::new(AtomicBool::new(false));
    let imports = {
        let (stop, addr, other) = (stop.clone(), addr.clone(), other.clone());
        std::thread::spawn(move || {
            let mut n = 0;
            while n < 1 || (!stop.load(Ordering::SeqCst) && n < 40) {
                assert_ok(&import(&addr, "w", &other), "tlog import of the second vdisk");
                n += 1;
            }
            n
        })
    };

    assert_ok(&import(&addr, "v", &a), "tlog import A");
    let cp = tlog(&["checkpoint", "--server", &addr, "--vdisk", "v", "before"]);
    assert_ok(&cp, "tlog checkpoint");
    let a_last = checkpoint_sequence(&cp, "v");
    assert_eq!(a_last, 8192, "A is 8192 blocks of 4 KiB, the first of v's history");
    std::thread::sleep(Duration::from_millis(50));
    let between = now_ns();
    std::thread::sleep(Duration::from_millis(50));
    assert_ok(&import(&addr, "v", &b), "tlog import B");
    assert_ok(&import(&addr, "v", &c_part), "tlog import of C's first blocks");

    let h = tlog(&["history", "--server", &addr, "--vdisk", "v", "--json"]);
    assert_ok(&h, "tlog history");
    let j: serde_json::Value = serde_json::from_slice(&h.stdout).unwrap();
    assert_eq!(j["sequences"], serde_json::json!([1, 8192 + 8192 + 768]), "sequences are unique over the three imports: {j}");
    assert_eq!(j["checkpoints"][0]["name"], "before");
    assert_eq!(j["checkpoints"][0]["sequence"], 8192);
    let h2 = tlog(&["history", "--data-dir", t.data.to_str().unwrap(), "--vdisk", "v", "--json"]);
    assert_ok(&h2, "tlog history --data-dir (tlogd running)");
    let j2: serde_json::Value = serde_json::from_slice(&h2.stdout).unwrap();
    assert_eq!(j["sequences"], j2["sequences"]);
    assert_eq!(j["aggregations"], j2["aggregations"]);

    let rfc = tlog::time::format_time(between);
    let seq = a_last.to_string();
    let ns = between.to_string();
    for (tag, point) in [
        ("checkpoint", vec!["--checkpoint", "before"]),
        ("time-rfc3339", vec!["--to-time", rfc.as_str()]),
        ("time-ns", vec!["--to-time", ns.as_str()]),
        ("sequence", vec!["--to-sequence", seq.as_str()]),
    ] {
        for img in restore_both(&t, d.path(), "v", &point, tag) {
            assert_same(&a, &img);
            assert_fsck(&img);
        }
    }
    for img in restore_both(&t, d.path(), "v", &[], "newest") {
        assert_same(&model_path, &img);
    }

    stop.store(true, Ordering::SeqCst);
    let n = imports.join().unwrap();
    assert!(n >= 2, "the second vdisk's imports ran beside the scenario ({n})");
    for img in restore_both(&t, d.path(), "w", &[], "other") {
        assert_same(&other, &img);
    }
}

/// Block `k` of the dependent-write chain: `k` in its first 8 bytes.
fn chain_block(k: u64) -> Vec<u8> {
    let mut v = vec![0xA5u8; 4096];
    v[..8].copy_from_slice(&(k + 1).to_le_bytes());
    v
}

#[test]
fn consistency_group_checkpoint_of_three_vdisks_under_load() {
    let d = tempfile::tempdir().unwrap();
    let t = Tlogd::start(&d.path().join("data"), None, free_port());
    let addr = t.addr();
    let names = ["cg0", "cg1", "cg2"];
    let clients: Vec<tlog::client::Client> =
        names.iter().map(|v| tlog::client::Client::connect(tlog::client::ClientConfig::new(&addr, v)).expect("connect")).collect();
    // Per vdisk: the last sequence acked received, and the next one about to be sent.
    let received: Arc<Vec<AtomicU64>> = Arc::new((0..3).map(|_| AtomicU64::new(0)).collect());
    let sending: Arc<Vec<AtomicU64>> = Arc::new((0..3).map(|_| AtomicU64::new(0)).collect());
    let stop = Arc::new(AtomicBool::new(false));
    // Dependent writes: write k goes to vdisk k % 3 only after write k-1 was acked received,
    // so any instant's state is a prefix of the chain.
    let driver = {
        let (received, sending, stop) = (received.clone(), sending.clone(), stop.clone());
        std::thread::spawn(move || {
            let start = Instant::now();
            let mut k = 0u64;
            while !stop.load(Ordering::SeqCst) && start.elapsed() < Duration::from_secs(30) && k < 60_000 {
                let i = (k % 3) as usize;
                sending[i].store(clients[i].next_sequence(), Ordering::SeqCst);
                let s = clients[i].write((k / 3) * 8, chain_block(k)).expect("write");
                clients[i].wait_received(Duration::from_secs(20)).expect("received ack");
                received[i].store(s, Ordering::SeqCst);
                k += 1;
            }
            for c in &clients {
                c.flush().expect("flush");
            }
            k
        })
    };
    // Let the chain run, then checkpoint mid-stream.
    std::thread::sleep(Duration::from_millis(700));
    let before: Vec<u64> = received.iter().map(|r| r.load(Ordering::SeqCst)).collect();
    assert!(before.iter().all(|&r| r > 0), "writes were acked before the checkpoint: {before:?}");
    let cp = tlog(&["checkpoint", "--server", &addr, "--vdisk", "cg0", "--vdisk", "cg1", "--vdisk", "cg2", "group1"]);
    let after: Vec<u64> = sending.iter().map(|s| s.load(Ordering::SeqCst)).collect();
    assert_ok(&cp, "tlog checkpoint of a group");
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::SeqCst);
    let k = driver.join().unwrap();
    let marks: Vec<u64> = names.iter().map(|v| checkpoint_sequence(&cp, v)).collect();
    for i in 0..3 {
        assert!(marks[i] >= before[i], "vdisk {}: mark {} misses blocks acked received before the checkpoint (up to {})", names[i], marks[i], before[i]);
        assert!(marks[i] <= after[i], "vdisk {}: mark {} holds blocks sent after the checkpoint returned (from {})", names[i], marks[i], after[i]);
    }
    // Restored at the checkpoint, the three images hold a prefix of the chain: one instant.
    let mut held: Vec<u64> = Vec::new();
    for v in names {
        let out = d.path().join(format!("{v}.img"));
        assert_ok(&tlog(&["restore", "--server", &addr, "--vdisk", v, "--checkpoint", "group1", "--output", out.to_str().unwrap()]), "restore at group1");
        let img = std::fs::read(&out).unwrap();
        for blk in img.chunks(4096) {
            let x = u64::from_le_bytes(blk[..8].try_into().unwrap());
            if x != 0 {
                held.push(x - 1);
            }
        }
    }
    held.sort_unstable();
    let n = held.len() as u64;
    assert!(n > 0 && n < k, "the checkpoint fell inside the run: {n} of {k} writes");
    assert_eq!(held, (0..n).collect::<Vec<u64>>(), "the checkpoint's images are not one instant of the dependent writes");
}

/// `tlog replicate` as a child process.
fn replicate(addr: &str, vdisk: &str, out: &Path, extra: &[&str], log: &Path) -> Child {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap();
    Command::new(tlog_bin())
        .args(["replicate", "--server", addr, "--vdisk", vdisk, "--output"])
        .arg(out)
        .args(extra)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn tlog replicate")
}

fn kill9(c: &mut Child) {
    let _ = c.kill();
    let _ = c.wait();
}

/// A writer of `blocks` distinct 4 KiB blocks (block i at lba i*8 holds i+1), `per_sec` a
/// second; returns the send time (ns) of each.
fn paced_writer(addr: String, vdisk: &'static str, blocks: u64, per_sec: u64) -> std::thread::JoinHandle<Vec<u64>> {
    std::thread::spawn(move || {
        let c = tlog::client::Client::connect(tlog::client::ClientConfig::new(&addr, vdisk)).expect("connect");
        let start = Instant::now();
        let mut sent = Vec::new();
        for i in 0..blocks {
            let due = start + Duration::from_secs_f64(i as f64 / per_sec as f64);
            if let Some(w) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(w);
            }
            sent.push(now_ns());
            c.write(i * 8, chain_block(i)).expect("write");
            if i % 50 == 49 {
                c.flush().expect("flush");
            }
        }
        c.flush().expect("flush");
        c.close().unwrap();
        sent
    })
}

#[test]
fn replicate_killed_twice_and_delayed() {
    let d = tempfile::tempdir().unwrap();
    let t = Tlogd::start(&d.path().join("data"), None, free_port());
    let addr = t.addr();
    let standby = d.path().join("standby.img");
    let log = std::env::temp_dir().join(format!("replicate-{}.log", std::process::id()));
    let writer = paced_writer(addr.clone(), "src", 3000, 1000);
    let state = PathBuf::from(format!("{}.state", standby.display()));
    let mut applied = Vec::new();
    for round in 0..2 {
        let mut r = replicate(&addr, "src", &standby, &[], &log);
        // Killed mid-stream, once it has synced some progress beyond the last round's.
        let end = Instant::now() + Duration::from_secs(20);
        loop {
            let s = tlog::client::replicate::read_state(&state).ok().flatten();
            if s.map(|s| Some(s) > applied.last().copied()).unwrap_or(false) || Instant::now() > end {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(150 * (round + 1)));
        kill9(&mut r);
        applied.push(tlog::client::replicate::read_state(&state).unwrap().expect("a state file after the first sync"));
    }
    assert!(applied[1] > applied[0], "the restarted replica made progress: {applied:?}");
    writer.join().unwrap();
    let h = tlog(&["history", "--server", &addr, "--vdisk", "src", "--json"]);
    let j: serde_json::Value = serde_json::from_slice(&h.stdout).unwrap();
    assert!(applied[1] < 3000, "the kills fell mid-stream ({applied:?}, head {})", j["sequences"][1]);
    let r = run(Command::new(tlog_bin()).args(["replicate", "--server", &addr, "--vdisk", "src", "--once", "--output"]).arg(&standby));
    assert_ok(&r, "tlog replicate --once");
    assert!(String::from_utf8_lossy(&r.stdout).contains("applied up to sequence 3000"), "{}", String::from_utf8_lossy(&r.stdout));
    let ref_img = d.path().join("ref.img");
    assert_ok(&tlog(&["restore", "--server", &addr, "--vdisk", "src", "--to-sequence", "3000", "--output", ref_img.to_str().unwrap()]), "restore at 3000");
    assert_same(&ref_img, &standby);
    assert_eq!(tlog::client::replicate::read_state(&state).unwrap(), Some(3000));

    // A delayed replica: every block in its image was sent at least 2 s before we look.
    let delayed = d.path().join("delayed.img");
    let mut r = replicate(&addr, "late", &delayed, &["--delay", "2s"], &log);
    let sent = paced_writer(addr.clone(), "late", 2500, 500).join().unwrap();
    let end = Instant::now() + Duration::from_secs(3);
    let mut seen = 0u64;
    while Instant::now() < end {
        let looked = now_ns();
        if let Ok(img) = std::fs::read(&delayed) {
            let newest = img.chunks(4096).filter_map(|b| b.get(..8)).map(|b| u64::from_le_bytes(b.try_into().unwrap())).max().unwrap_or(0);
            if newest > 0 {
                let sent_at = sent[(newest - 1) as usize];
                assert!(
                    looked >= sent_at + 1_900_000_000,
                    "block {} was sent {} ms before it showed in the delayed replica",
                    newest - 1,
                    (looked - sent_at) / 1_000_000
                );
                seen = seen.max(newest);
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    kill9(&mut r);
    assert!(seen > 0, "the delayed replica applied blocks");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("lag"), "replicate reports its lag: {text}");
}

#[test]
fn changed_extents_and_follow_playback_match_a_model() {
    let d = tempfile::tempdir().unwrap();
    let t = Tlogd::start(&d.path().join("data"), None, free_port());
    let addr = t.addr();
    let c = tlog::client::Client::connect(tlog::client::ClientConfig::new(&addr, "chg")).expect("connect");
    // Base: 64 blocks written.
    for i in 0..64u64 {
        c.write(i * 8, chain_block(i)).unwrap();
    }
    c.flush().unwrap();
    assert_ok(&tlog(&["checkpoint", "--server", &addr, "--vdisk", "chg", "base"]), "checkpoint base");
    // After it: blocks 10..13 rewritten, 20..30 zeroed, 25 rewritten over the zeroes, and a
    // 1 KiB write at byte 1 MiB + 512.
    for i in 10..13u64 {
        c.write(i * 8, chain_block(100 + i)).unwrap();
    }
    c.write_zeroes(20 * 8, 10 * 4096).unwrap();
    c.write(25 * 8, chain_block(999)).unwrap();
    c.write((1 << 20) / 512 + 1, vec![7u8; 1024]).unwrap();
    c.flush().unwrap();
    let o = tlog(&["changed", "--server", &addr, "--vdisk", "chg", "--from-checkpoint", "base", "--json"]);
    assert_ok(&o, "tlog changed");
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let want = serde_json::json!({"extents": [
        {"offset": 10 * 4096, "length": 3 * 4096, "kind": "write"},
        {"offset": 20 * 4096, "length": 5 * 4096, "kind": "zero"},
        {"offset": 25 * 4096, "length": 4096, "kind": "write"},
        {"offset": 26 * 4096, "length": 4 * 4096, "kind": "zero"},
        {"offset": (1 << 20) + 512, "length": 1024, "kind": "write"},
    ]});
    assert_eq!(j, want);
    let o2 = tlog(&["changed", "--data-dir", t.data.to_str().unwrap(), "--vdisk", "chg", "--from-checkpoint", "base", "--json"]);
    assert_ok(&o2, "tlog changed --data-dir");
    assert_eq!(serde_json::from_slice::<serde_json::Value>(&o2.stdout).unwrap(), want);
    // Up to the checkpoint from the start: the 64 base blocks as one extent.
    let o3 = tlog(&["changed", "--server", &addr, "--vdisk", "chg", "--to-checkpoint", "base", "--json"]);
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&o3.stdout).unwrap(),
        serde_json::json!({"extents": [{"offset": 0, "length": 64 * 4096, "kind": "write"}]})
    );

    // Follow: every block from sequence 60 on, exactly once and in order, while more are
    // flushed in small aggregations during the read.
    let req = tlog::wire::PlaybackRequest { from: tlog::wire::PointSpec::Sequence(60), to: tlog::wire::PointSpec::None, follow: true };
    let mut pb = tlog::client::remote::Playback::open(&addr, "", "chg", req).expect("playback");
    let last_now = c.next_sequence() - 1;
    let writer = std::thread::spawn(move || {
        for i in 0..400u64 {
            c.write(i * 8, chain_block(5000 + i)).unwrap();
            if i % 7 == 0 {
                c.flush().unwrap();
            }
        }
        c.flush().unwrap();
        c.next_sequence() - 1
    });
    let mut got = Vec::new();
    let end = Instant::now() + Duration::from_secs(30);
    while Instant::now() < end && got.last().copied() != Some(last_now + 400) {
        match pb.next_item().expect("playback item") {
            Some(tlog::client::remote::Item::Block(b)) => got.push(b.sequence),
            Some(_) => {}
            None => panic!("follow-mode playback ended by itself"),
        }
    }
    assert_eq!(writer.join().unwrap(), last_now + 400);
    assert_eq!(got, (61..=last_now + 400).collect::<Vec<u64>>(), "follow playback: every block once, in order");
}

#[test]
fn bad_points_are_named_and_leave_no_output_file() {
    let d = tempfile::tempdir().unwrap();
    let t = Tlogd::start(&d.path().join("data"), None, free_port());
    let addr = t.addr();
    let img = d.path().join("x.img");
    mixed_image(&img, 1, 3);
    assert_ok(&import(&addr, "bp", &img), "import");
    assert_ok(&tlog(&["checkpoint", "--server", &addr, "--vdisk", "bp", "one"]), "checkpoint");
    let out = d.path().join("out.img");
    let data = t.data.to_str().unwrap().to_string();
    let cases: [(&[&str], &str); 6] = [
        (&["--to-sequence", "0"], "before the history of vdisk bp, which holds sequences 1..256"),
        (&["--to-sequence", "257"], "after the head of vdisk bp, which holds sequences 1..256"),
        (&["--checkpoint", "two"], "no checkpoint \"two\"; its checkpoints: one"),
        (&["--to-time", "2026-13-01T00:00:00Z"], "neither RFC 3339"),
        (&["--to-time", "1000"], "before the history of vdisk bp"),
        (&["--to-time", "4102444800000000000"], "in the future"),
    ];
    for (point, want) in cases {
        for via in [["--server", addr.as_str()], ["--data-dir", data.as_str()]] {
            let mut args = vec!["restore", via[0], via[1], "--vdisk", "bp", "--output", out.to_str().unwrap()];
            args.extend_from_slice(point);
            let o = tlog(&args);
            let err = String::from_utf8_lossy(&o.stderr);
            assert!(!o.status.success(), "{point:?} via {} must fail", via[0]);
            assert!(err.contains(want), "{point:?} via {}: the error names the problem ({want}): {err}", via[0]);
            assert!(!out.exists(), "{point:?} via {}: no output file is left", via[0]);
        }
    }
    for via in [["--server", addr.as_str()], ["--data-dir", data.as_str()]] {
        let o = tlog(&["restore", via[0], via[1], "--vdisk", "nosuch", "--output", out.to_str().unwrap()]);
        assert!(String::from_utf8_lossy(&o.stderr).contains("unknown vdisk"), "{}", String::from_utf8_lossy(&o.stderr));
        assert!(!out.exists());
    }
}
