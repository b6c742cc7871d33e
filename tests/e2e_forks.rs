//! Acceptance of history as a tree (DESIGN.md §12), with a real tlogd and real ext4 images, on
//! the local store and on six redis-server processes:
//!
//! - SRC gets image A; DST and DSTB fork it there; then SRC gets image B while DST gets image C
//!   (two imports at once). SRC restores to B, DST to C, DST at its fork point and DSTB to A,
//!   each `cmp`-exact and `e2fsck`-clean; a reader with only the backends (no tlogd) gets the
//!   same for DST. DSTC forks SRC at a checkpoint taken after A, once B is in: the same cut,
//!   and it restores to A; a fork at an unknown checkpoint is refused, naming the ones there are.
//! - A fork of DST at a sequence inside an aggregation restores to exactly that sequence (a
//!   model: C's first blocks over A), takes writes of its own (its sequences continue after the
//!   cut), and a fork of it (depth 3) restores to its state.
//! - Rebase is refused while a writer is attached to DST; then `tlog rebase --vdisk DST --onto
//!   SRC` makes DST equal the model B with C's blocks over it (B is larger than C, so the
//!   parent's later blocks show), and the printed checkpoint restores DST's state before: C.
//! - Delete: SRC (with forks) refused without `--force`; with it, its forks keep what they
//!   stand on; a leaf fork goes entirely. `tlog history` and `tlog history --tree` show it all.

mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The number after `what` in `s`.
fn number_after(s: &str, what: &str) -> u64 {
    s.split(what)
        .nth(1)
        .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no number after {what:?} in {s}"))
}

struct Scene<'a> {
    t: &'a Tlogd,
    dir: &'a Path,
    /// tlog arguments that open the backends without tlogd (config and data dir).
    direct: Vec<String>,
}

impl Scene<'_> {
    fn restore(&self, vdisk: &str, point: &[&str], tag: &str) -> PathBuf {
        let out = self.dir.join(format!("{tag}.img"));
        let addr = self.t.addr();
        let mut args = vec!["restore", "--server", &addr, "--vdisk", vdisk, "--output", out.to_str().unwrap()];
        args.extend_from_slice(point);
        assert_ok(&tlog(&args), &format!("tlog restore {tag}"));
        out
    }

    fn restore_direct(&self, vdisk: &str, point: &[&str], tag: &str) -> PathBuf {
        let out = self.dir.join(format!("{tag}.img"));
        let mut args: Vec<&str> = vec!["restore"];
        args.extend(self.direct.iter().map(String::as_str));
        args.extend(["--vdisk", vdisk, "--output", out.to_str().unwrap()]);
        args.extend_from_slice(point);
        assert_ok(&tlog(&args), &format!("tlog restore {tag} (from the backends)"));
        out
    }

    fn control(&self, args: &[&str]) -> Output {
        let addr = self.t.addr();
        let mut a = vec![args[0], "--server", &addr];
        a.extend_from_slice(&args[1..]);
        tlog(&a)
    }
}

fn write_model(path: &Path, base: &[u8], over: &[u8]) -> PathBuf {
    let mut m = base.to_vec();
    if m.len() < over.len() {
        m.resize(over.len(), 0);
    }
    m[..over.len()].copy_from_slice(over);
    std::fs::write(path, &m).unwrap();
    path.to_path_buf()
}

fn scenario(d: &Path, t: &Tlogd, direct: Vec<String>) {
    let a = d.join("a.img");
    let b = d.join("b.img");
    let c = d.join("c.img");
    random_tree(&d.join("tree-a"), 20, 300, 3);
    random_tree(&d.join("tree-b"), 40, 300, 7);
    random_tree(&d.join("tree-c"), 40, 300, 11);
    if !ext4_from(&a, 32, Some(&d.join("tree-a"))) {
        return;
    }
    assert!(ext4_from(&b, 40, Some(&d.join("tree-b"))));
    assert!(ext4_from(&c, 32, Some(&d.join("tree-c"))));
    let s = Scene { t, dir: d, direct };
    let addr = t.addr();

    assert_ok(&import(&addr, "src", &a), "import A into src");
    let o = s.control(&["fork", "--vdisk", "src", "--new", "dst"]);
    assert_ok(&o, "tlog fork src -> dst");
    let cut = number_after(&text(&o), "at sequence ");
    assert_eq!(cut, 8192, "the fork point is src's last flushed block (A is 8192 blocks): {}", text(&o));
    // Many forks of one point.
    assert_ok(&s.control(&["fork", "--vdisk", "src", "--new", "dstb", "--to-sequence", &cut.to_string()]), "tlog fork src -> dstb");
    // The name of an existing vdisk is refused.
    let o = s.control(&["fork", "--vdisk", "src", "--new", "dstb"]);
    assert!(!o.status.success() && text(&o).contains("already exists"), "{}", text(&o));
    // A checkpoint names the same cut (found by the search over the index records); an unknown
    // one is refused, naming the checkpoints there are.
    assert_ok(&s.control(&["checkpoint", "--vdisk", "src", "after-a"]), "checkpoint after-a");
    let o = s.control(&["fork", "--vdisk", "src", "--new", "dstc", "--checkpoint", "nosuch"]);
    assert!(!o.status.success() && text(&o).contains("no checkpoint \"nosuch\"") && text(&o).contains("after-a"), "{}", text(&o));

    // B into src and C into dst at once.
    let (ia, ib) = std::thread::scope(|sc| {
        let x = sc.spawn(|| import(&addr, "src", &b));
        let y = sc.spawn(|| import(&addr, "dst", &c));
        (x.join().unwrap(), y.join().unwrap())
    });
    assert_ok(&ia, "import B into src");
    assert_ok(&ib, "import C into dst");
    let o = s.control(&["fork", "--vdisk", "src", "--new", "dstc", "--checkpoint", "after-a"]);
    assert_ok(&o, "tlog fork src -> dstc at checkpoint after-a");
    assert_eq!(number_after(&text(&o), "at sequence "), cut, "{}", text(&o));
    let r = s.restore("dstc", &[], "dstc-a");
    assert_same(&r, &a);

    let r = s.restore("src", &[], "src-b");
    assert_same(&r, &b);
    assert_fsck(&r);
    let r = s.restore("dst", &[], "dst-c");
    assert_same(&r, &c);
    assert_fsck(&r);
    let r = s.restore_direct("dst", &[], "dst-c-direct");
    assert_same(&r, &c);
    let r = s.restore("dst", &["--to-sequence", &cut.to_string()], "dst-at-fork");
    assert_same(&r, &a);
    assert_fsck(&r);
    let r = s.restore_direct("dst", &["--to-sequence", &cut.to_string()], "dst-at-fork-direct");
    assert_same(&r, &a);
    let r = s.restore("dstb", &[], "dstb-a");
    assert_same(&r, &a);
    // dst's own sequences continue after the cut.
    let o = s.control(&["history", "--vdisk", "dst", "--json"]);
    assert_ok(&o, "history dst");
    let h: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(h["sequences"][1].as_u64(), Some(cut + 8192), "{h}");
    assert_eq!(h["parent"].as_str(), Some("src"), "{h}");
    assert_eq!(h["fork_point"].as_u64(), Some(cut), "{h}");

    // A fork of dst inside one of its aggregations (aggregations hold up to 1024 blocks).
    let mid = cut + 1500;
    let o = s.control(&["fork", "--vdisk", "dst", "--new", "dst2", "--to-sequence", &mid.to_string()]);
    assert_ok(&o, "fork dst -> dst2 at a mid-aggregation sequence");
    let abytes = std::fs::read(&a).unwrap();
    let cbytes = std::fs::read(&c).unwrap();
    let model_mid = write_model(&d.join("model-mid.img"), &abytes, &cbytes[..1500 * 4096]);
    let r = s.restore("dst2", &[], "dst2");
    assert_same(&r, &model_mid);
    let r = s.restore("dst", &["--to-sequence", &mid.to_string()], "dst-mid");
    assert_same(&r, &model_mid);
    // dst2 is writable: its sequences continue after its cut.
    let small = d.join("small.img");
    mixed_image(&small, 2, 9);
    assert_ok(&import(&addr, "dst2", &small), "import into dst2");
    let o = s.control(&["history", "--vdisk", "dst2", "--json"]);
    let h: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(h["sequences"][1].as_u64(), Some(mid + 512), "2 MiB = 512 blocks after the cut: {h}");
    let model_dst2 = write_model(&d.join("model-dst2.img"), &std::fs::read(&model_mid).unwrap(), &std::fs::read(&small).unwrap());
    // Depth 3.
    assert_ok(&s.control(&["fork", "--vdisk", "dst2", "--new", "dst3"]), "fork dst2 -> dst3");
    let r = s.restore("dst3", &[], "dst3");
    assert_same(&r, &model_dst2);
    let r = s.restore_direct("dst3", &[], "dst3-direct");
    assert_same(&r, &model_dst2);
    // A fork at a sequence that lies on the parent's own parent (two levels up the path).
    assert_ok(&s.control(&["fork", "--vdisk", "dst2", "--new", "dst4", "--to-sequence", "100"]), "fork dst2 -> dst4 at sequence 100");
    let r4 = s.restore("dst4", &[], "dst4");
    let r100 = s.restore("src", &["--to-sequence", "100"], "src-100");
    assert_same(&r4, &r100);

    // Rebase is refused while a writer is attached to dst: an import reading a FIFO holds its
    // session while the FIFO stays open. It writes C's first block again (dst's content stays
    // C); once that block is in dst's history, the writer is attached.
    let fifo = d.join("hold.fifo");
    assert!(Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    let mut holder =
        Command::new(tlog_bin()).args(["import", "--server", &addr, "--vdisk", "dst"]).arg(&fifo).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    let mut w = std::fs::OpenOptions::new().write(true).open(&fifo).unwrap();
    std::io::Write::write_all(&mut w, &std::fs::read(&c).unwrap()[..4096]).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let o = s.control(&["history", "--vdisk", "dst", "--json"]);
        let h: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
        if h["sequences"][1].as_u64() == Some(cut + 8193) {
            break;
        }
        assert!(Instant::now() < deadline, "the holding import's block never became durable: {h}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let o = s.control(&["rebase", "--vdisk", "dst", "--onto", "src"]);
    assert!(!o.status.success() && text(&o).contains("writer attached"), "rebase must be refused while a writer is attached: {}", text(&o));
    drop(w);
    assert!(holder.wait().unwrap().success(), "the holding import ends cleanly on EOF");
    let _ = holder.stderr.take();

    let o = s.control(&["rebase", "--vdisk", "dst", "--onto", "src"]);
    assert_ok(&o, "tlog rebase dst --onto src");
    let out = text(&o);
    let cp = out.split("checkpoint ").last().unwrap().trim().to_string();
    assert_eq!(cp, "pre-rebase-1", "{out}");
    let bbytes = std::fs::read(&b).unwrap();
    let model_rebased = write_model(&d.join("model-rebased.img"), &bbytes, &cbytes);
    let r = s.restore("dst", &[], "dst-rebased");
    assert_same(&r, &model_rebased);
    let r = s.restore("dst", &["--checkpoint", &cp], "dst-pre-rebase");
    assert_same(&r, &c);
    assert_fsck(&r);
    // The forks of dst still stand where they stood.
    let r = s.restore("dst2", &[], "dst2-after-rebase");
    assert_same(&r, &model_dst2);

    // History and tree.
    let o = s.control(&["history", "--vdisk", "src"]);
    assert_ok(&o, "history src");
    let h = text(&o);
    assert!(h.contains("forked into dst at sequence 8192") && h.contains("forked into dstb at sequence 8192"), "{h}");
    let o = s.control(&["history", "--vdisk", "dst"]);
    let h = text(&o);
    assert!(h.contains("fork of src at sequence 8192") && h.contains("rebased 1 times onto src") && h.contains("forked into dst2"), "{h}");
    let o = s.control(&["history", "--tree"]);
    assert_ok(&o, "history --tree");
    let tree = text(&o);
    assert!(
        tree.contains("src\n")
            && tree.contains("\n  dst  (fork of src at sequence 8192)")
            && tree.contains("\n    dst2  (fork of dst at sequence")
            && tree.contains("\n      dst3"),
        "{tree}"
    );

    // Delete.
    let o = s.control(&["delete", "--vdisk", "src"]);
    assert!(!o.status.success() && text(&o).contains("has forks"), "delete of a vdisk with forks must be refused: {}", text(&o));
    assert_ok(&s.control(&["delete", "--vdisk", "src", "--force"]), "delete src --force");
    let o = s.control(&["restore", "--vdisk", "src", "--output", d.join("gone.img").to_str().unwrap()]);
    assert!(!o.status.success() && text(&o).contains("deleted"), "{}", text(&o));
    assert!(!d.join("gone.img").exists());
    let r = s.restore("dst", &[], "dst-after-delete");
    assert_same(&r, &model_rebased);
    let r = s.restore_direct("dst", &["--checkpoint", &cp], "dst-pre-rebase-after-delete");
    assert_same(&r, &c);
    let r = s.restore("dstb", &[], "dstb-after-delete");
    assert_same(&r, &a);
    assert_ok(&s.control(&["delete", "--vdisk", "dst3"]), "delete the leaf dst3");
    let o = s.control(&["vdisks"]);
    let tree = text(&o);
    assert!(tree.contains("src  [deleted, kept for its forks]") && !tree.contains("dst3") && tree.contains("dst2") && tree.contains("dst4"), "{tree}");
    let r = s.restore("dst2", &[], "dst2-after-deletes");
    assert_same(&r, &model_dst2);
}

#[test]
fn fork_rebase_delete_on_the_local_store() {
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("data");
    let t = Tlogd::start(&data, None, free_port());
    scenario(d.path(), &t, vec!["--data-dir".into(), data.display().to_string()]);
    // Every store directory is intact.
    drop(t);
    for i in 0..6 {
        let dir = data.join("store").join(i.to_string());
        assert_ok(&tlog(&["store", "verify", dir.to_str().unwrap()]), "tlog store verify");
    }
}

#[test]
fn fork_rebase_delete_on_redis() {
    if !have("redis-server") {
        skip("redis-server missing (apt-get install redis-server)");
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let redis = Redis::start(6, d.path());
    let data = d.path().join("data");
    let cfg = d.path().join("redis.toml");
    std::fs::write(&cfg, redis.config(&data, 4, 2)).unwrap();
    let t = Tlogd::start(&data, Some(&cfg), free_port());
    scenario(d.path(), &t, vec!["--config".into(), cfg.display().to_string(), "--data-dir".into(), data.display().to_string()]);
}
