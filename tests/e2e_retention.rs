//! Acceptance of retention (DESIGN.md §12), with a real tlogd and real ext4 images, on the
//! local store and on six redis-server processes. A short window (`[history] retention`
//! seconds) in the test's config:
//!
//! - eight images are imported, then (past the window) two more with a checkpoint between;
//! - once the cleaner has run, every point inside the window (the checkpoint, a time, a
//!   sequence inside the last import, the head) restores exactly, `e2fsck`-clean where it is a
//!   whole image; points before it fail with the oldest restorable point named and leave no
//!   file; `tlog history` shows the window and the base;
//! - the local store's bytes on disk fall to within 1.3 × (k+m)/k × (image size + the window's
//!   writes), measured; on Redis the memory in use (`INFO memory`) falls.

mod common;
use common::*;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// The window: long enough for the checks after the cleaner's run, short for the test.
const WINDOW_SECS: u64 = 12;

/// Bytes allocated on disk under `dir` (st_blocks × 512).
fn disk_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let m = e.metadata().unwrap();
        total += if m.is_dir() { disk_bytes(&e.path()) } else { m.blocks() * 512 };
    }
    total
}

/// Bytes of the 4 KiB blocks of `img` that are not all zero (what an import writes as data).
fn data_bytes(img: &Path) -> u64 {
    std::fs::read(img).unwrap().chunks(4096).filter(|c| c.iter().any(|b| *b != 0)).map(|c| c.len() as u64).sum()
}

fn redis_used_memory(redis: &Redis) -> u64 {
    redis
        .ports
        .iter()
        .map(|p| {
            let o = Command::new("redis-cli").args(["-p", &p.to_string(), "info", "memory"]).output().expect("run redis-cli");
            let s = String::from_utf8_lossy(&o.stdout).to_string();
            s.lines().find_map(|l| l.strip_prefix("used_memory:")).and_then(|v| v.trim().parse::<u64>().ok()).unwrap_or(0)
        })
        .sum()
}

fn history(t: &Tlogd, vdisk: &str) -> serde_json::Value {
    let o = tlog(&["history", "--server", &t.addr(), "--vdisk", vdisk, "--json"]);
    assert_ok(&o, "tlog history");
    serde_json::from_slice(&o.stdout).unwrap()
}

fn restore(t: &Tlogd, dir: &Path, point: &[&str], tag: &str) -> (Output, PathBuf) {
    let out = dir.join(format!("{tag}.img"));
    let addr = t.addr();
    let mut args = vec!["restore", "--server", &addr, "--vdisk", "v", "--output", out.to_str().unwrap()];
    args.extend_from_slice(point);
    (tlog(&args), out)
}

/// Runs the scenario; `space` is called once the cleaner folded, with the bound in bytes, and
/// returns the measured bytes.
fn scenario(d: &Path, t: &Tlogd, mut measure: impl FnMut() -> u64, local_bound: bool) {
    let n_old = 8;
    let mut imgs = Vec::new();
    for i in 0..n_old + 2 {
        let tree = d.join(format!("tree{i}"));
        random_tree(&tree, 24, 256, 100 + i as u64);
        let img = d.join(format!("i{i}.img"));
        if !ext4_from(&img, 16, Some(&tree)) {
            return;
        }
        let _ = std::fs::remove_dir_all(&tree);
        imgs.push(img);
    }
    let addr = t.addr();
    let cp = |name: &str| assert_ok(&tlog(&["checkpoint", "--server", &addr, "--vdisk", "v", name]), "tlog checkpoint");
    for (i, img) in imgs[..n_old].iter().enumerate() {
        assert_ok(&import(&addr, "v", img), "import an old image");
        if i == 2 {
            cp("old");
        }
    }
    let before = measure();
    // Past the window, the last two imports.
    std::thread::sleep(Duration::from_secs(WINDOW_SECS + 1));
    let started = Instant::now();
    let w0 = history(t, "v")["sequences"][1].as_u64().unwrap();
    assert_ok(&import(&addr, "v", &imgs[n_old]), "import the first image of the window");
    cp("w8");
    let time_w8 = tlog::time::format_time(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64);
    std::thread::sleep(Duration::from_millis(50));
    assert_ok(&import(&addr, "v", &imgs[n_old + 1]), "import the head image");
    let w8 = w0 + 4096;

    // The cleaner folds everything before the window and gives the space back.
    let k_m = 6.0 / 4.0;
    let bound = 1.3 * k_m * (16.0 * 1048576.0 + data_bytes(&imgs[n_old]) as f64 + data_bytes(&imgs[n_old + 1]) as f64);
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut after;
    loop {
        let h = history(t, "v");
        after = measure();
        let folded = h["window_start"][0].as_u64().map(|s| s >= w0).unwrap_or(false);
        if folded && (if local_bound { (after as f64) <= bound } else { after < before / 2 }) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the cleaner did not fold and give the space back within 30 s: {h}, {after} bytes (bound {bound:.0}, before {before})"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!("space: {before} bytes before the cleaner, {after} after (bound {bound:.0})");

    // Every point inside the window restores exactly.
    let (o, r) = restore(t, d, &[], "head");
    assert_ok(&o, "restore the head");
    assert_same(&r, &imgs[n_old + 1]);
    assert_fsck(&r);
    let (o, r) = restore(t, d, &["--checkpoint", "w8"], "w8");
    assert_ok(&o, "restore at the checkpoint inside the window");
    assert_same(&r, &imgs[n_old]);
    assert_fsck(&r);
    let (o, r) = restore(t, d, &["--to-time", &time_w8], "w8-time");
    assert_ok(&o, "restore at a time inside the window");
    assert_same(&r, &imgs[n_old]);
    let mid = w8 + 1000;
    let (o, r) = restore(t, d, &["--to-sequence", &mid.to_string()], "mid");
    assert_ok(&o, "restore at a sequence inside the last import");
    let mut model = std::fs::read(&imgs[n_old]).unwrap();
    model[..1000 * 4096].copy_from_slice(&std::fs::read(&imgs[n_old + 1]).unwrap()[..1000 * 4096]);
    let mp = d.join("model-mid.img");
    std::fs::write(&mp, &model).unwrap();
    assert_same(&r, &mp);
    // The oldest point inside the window: the base itself, the image of the last old import.
    let h = history(t, "v");
    let oldest = h["window_start"][0].as_u64().unwrap();
    if oldest == w0 {
        let (o, r) = restore(t, d, &["--to-sequence", &w0.to_string()], "oldest");
        assert_ok(&o, "restore at the oldest point");
        assert_same(&r, &imgs[n_old - 1]);
    }
    assert!(started.elapsed() < Duration::from_secs(WINDOW_SECS), "the checks took longer than the window; the test proves nothing");

    // Before the window: an error naming the oldest restorable point, no file.
    for (point, tag) in [(vec!["--checkpoint", "old"], "old"), (vec!["--to-sequence", "10"], "seq10")] {
        let (o, r) = restore(t, d, &point, tag);
        assert!(!o.status.success(), "a point before the window restored: {}", text(&o));
        assert!(text(&o).contains(&format!("the oldest restorable point is sequence {oldest}")), "{}", text(&o));
        assert!(!r.exists(), "a failed restore left {}", r.display());
    }
    let o = tlog(&["history", "--server", &t.addr(), "--vdisk", "v"]);
    assert!(text(&o).contains(&format!("restorable from sequence {oldest}")) && text(&o).contains("the base holds"), "{}", text(&o));
}

fn config(d: &Path, extra: &str) -> PathBuf {
    let cfg = d.join("t.toml");
    std::fs::write(&cfg, format!("[history]\nretention = \"{WINDOW_SECS}s\"\nclean_interval = \"300ms\"\n{extra}")).unwrap();
    cfg
}

#[test]
fn retention_folds_old_history_and_frees_the_local_store() {
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("data");
    // Small segments with small indexes, so that the store's size follows what is live.
    let cfg = config(d.path(), "[backend.local]\nsegment_bytes = 4194304\nindex_capacity = 4096\n");
    let t = Tlogd::start(&data, Some(&cfg), free_port());
    let store = data.join("store");
    scenario(d.path(), &t, || disk_bytes(&store), true);
    drop(t);
    for i in 0..6 {
        let dir = store.join(i.to_string());
        assert_ok(&tlog(&["store", "verify", dir.to_str().unwrap()]), "tlog store verify");
    }
}

#[test]
fn retention_on_redis_frees_memory() {
    if !have("redis-server") {
        skip("redis-server missing (apt-get install redis-server)");
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let redis = Redis::start(6, d.path());
    let data = d.path().join("data");
    let cfg = d.path().join("redis.toml");
    std::fs::write(&cfg, format!("{}[history]\nretention = \"{WINDOW_SECS}s\"\nclean_interval = \"300ms\"\n", redis.config(&data, 4, 2))).unwrap();
    let t = Tlogd::start(&data, Some(&cfg), free_port());
    scenario(d.path(), &t, || redis_used_memory(&redis), false);
}

/// Folds that come one after another append to the base instead of rewriting it (while it
/// stays within `APPEND_FACTOR` of its last rewrite): a 16 MiB image, then 1 MiB writes at
/// scattered offsets over several cleaner passes. The head and a checkpoint inside the window
/// restore to the model; the log shows appending folds.
#[test]
fn repeated_folds_append_to_the_base() {
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("data");
    let cfg = d.path().join("t.toml");
    std::fs::write(&cfg, "[history]\nretention = \"2s\"\nclean_interval = \"300ms\"\n").unwrap();
    let t = Tlogd::start(&data, Some(&cfg), free_port());
    let img = d.path().join("base.raw");
    mixed_image(&img, 16, 77);
    assert_ok(&import(&t.addr(), "v", &img), "import the image");
    let mut model = std::fs::read(&img).unwrap();
    let client = tlog::client::Client::connect(tlog::client::ClientConfig::new(&t.addr(), "v")).unwrap();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut checkpoint_model = Vec::new();
    for i in 0..12 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let off = (x % 15) << 20;
        let chunk: Vec<u8> = (0..1 << 20).map(|j| (j as u64 ^ x ^ i) as u8).collect();
        model[off as usize..off as usize + chunk.len()].copy_from_slice(&chunk);
        client.write(off / 512, chunk).unwrap();
        client.flush().unwrap();
        if i == 10 {
            assert_ok(&tlog(&["checkpoint", "--server", &t.addr(), "--vdisk", "v", "late"]), "checkpoint");
            checkpoint_model = model.clone();
        }
        std::thread::sleep(Duration::from_millis(400));
    }
    client.close().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !t.log_text().contains("append=true") {
        assert!(Instant::now() < deadline, "no appending fold: {}", t.log_text());
        std::thread::sleep(Duration::from_millis(100));
    }
    let (o, r) = restore(&t, d.path(), &[], "head");
    assert_ok(&o, "restore the head");
    let mp = d.path().join("model.img");
    std::fs::write(&mp, &model).unwrap();
    assert_same(&r, &mp);
    let (o, r) = restore(&t, d.path(), &["--checkpoint", "late"], "late");
    if o.status.success() {
        let cp = d.path().join("model-late.img");
        std::fs::write(&cp, &checkpoint_model).unwrap();
        assert_same(&r, &cp);
    } else {
        assert!(text(&o).contains("oldest restorable point"), "{}", text(&o));
    }
}
