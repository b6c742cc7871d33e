//! The NBD gateway (`tlog nbd`, DESIGN.md §13) with real block clients and a real tlogd:
//!
//! - `nbdinfo` sees the export with its flags and block sizes; `qemu-img convert` writes a
//!   real ext4 image through it; the kernel's ext4 (on a loop device over `nbdfuse`) copies a
//!   tree onto it; after each, `tlog restore` of the vdisk equals the gateway's image, is
//!   `e2fsck`-clean and holds the files.
//! - A write is never answered before tlogd received it: with tlogd stopped (SIGSTOP), a plain
//!   write, a FUA write and a flush stay unanswered; after SIGCONT all are, and the log holds
//!   them. Bad requests get `EINVAL` and lose nothing.
//! - Restart: an image left behind the log (its state file older) is caught up through
//!   playback before serving; a missing image is built from tlogd; SIGTERM flushes and records
//!   the head.
//! - fio's nbd engine over the Unix socket (`--socket`), random writes with verify, several
//!   jobs at once; `nbdcopy` with several connections (multi-conn); both restore exactly.
//! - The kernel's ext4 made on the export (nbdfuse, losetup, mkfs.ext4), files copied, frozen
//!   and checkpointed, some deleted: the restore at the checkpoint holds every file.
//! - qemu-io's write, write -z, discard, write -f, flush and pattern-checked reads against a
//!   model.
//! - Kill -9 of the gateway, and of tlogd, in the middle of a `qemu-img convert`.
//! - `BLOCK_STATUS` of `tlog:changed:<point>` against `tlog changed`.
//! - Past points: a `--read-only --checkpoint` export (served from the log, no restore)
//!   equals `tlog restore` at the checkpoint through `nbdcopy`, and a write to it gets `EPERM`;
//!   a `--fork` export at the checkpoint takes writes into the fork (restored exactly, also
//!   after the export restarts and reads them back from the log) while the source's restore
//!   stays what it was.

mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

fn tools() -> bool {
    for t in ["qemu-img", "nbdinfo", "nbdcopy", "nbdfuse", "fio"] {
        if !have(t) {
            skip(&format!("{t} missing (apt-get install qemu-utils libnbd-bin fio)"));
            return false;
        }
    }
    true
}

/// A running `tlog nbd`.
struct Gateway {
    child: Option<Child>,
    out: PathBuf,
    port: u16,
}

impl Gateway {
    fn start(dir: &Path, tlogd: &Tlogd, vdisk: &str, image: &Path, extra: &[&str]) -> Gateway {
        let mut args = vec!["--image", image.to_str().unwrap()];
        args.extend_from_slice(extra);
        Self::spawn(dir, tlogd, vdisk, &args)
    }

    /// A gateway with exactly `extra` after the server and vdisk (no image: a past export).
    fn spawn(dir: &Path, tlogd: &Tlogd, vdisk: &str, extra: &[&str]) -> Gateway {
        let port = free_port();
        let out = dir.join(format!("nbd-{port}.out"));
        let mut args = vec!["nbd".to_string(), "--server".into(), tlogd.addr(), "--vdisk".into(), vdisk.into()];
        if !extra.contains(&"--socket") {
            args.extend(["--listen".to_string(), format!("127.0.0.1:{port}")]);
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let child = Command::new(tlog_bin())
            .args(&args)
            .env("TLOG_LOG", "info")
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(std::fs::File::create(out.with_extension("log")).unwrap())
            .spawn()
            .unwrap();
        let g = Gateway { child: Some(child), out, port };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !g.stdout().contains("serving on") {
            assert!(Instant::now() < deadline, "tlog nbd did not come up: {}{}", g.stdout(), g.log());
            std::thread::sleep(Duration::from_millis(20));
        }
        g
    }

    fn uri(&self) -> String {
        format!("nbd://127.0.0.1:{}", self.port)
    }

    fn stdout(&self) -> String {
        std::fs::read_to_string(&self.out).unwrap_or_default()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.out.with_extension("log")).unwrap_or_default()
    }

    /// SIGTERM: the final flush, then exit 0.
    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill").arg("-TERM").arg(c.id().to_string()).status();
            let st = c.wait().unwrap();
            assert!(st.success(), "tlog nbd exited with {st}: {}", self.log());
        }
    }

    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn restore_to(t: &Tlogd, vdisk: &str, out: &Path) {
    assert_ok(&tlog(&["restore", "--server", &t.addr(), "--vdisk", vdisk, "--output", out.to_str().unwrap()]), "tlog restore");
}

/// `a` equals `b` over `a`'s length and `b` is zero past it (a restore ends at the last
/// written byte; the export may be longer).
fn assert_same_prefix(a: &Path, b: &Path) {
    let (x, y) = (std::fs::read(a).unwrap(), std::fs::read(b).unwrap());
    let n = x.len().min(y.len());
    assert!(x[..n] == y[..n], "{} and {} differ", a.display(), b.display());
    assert!(x[n..].iter().all(|b| *b == 0) && y[n..].iter().all(|b| *b == 0), "{} and {} differ past {n}", a.display(), b.display());
}

#[test]
fn qemu_img_and_the_kernel_ext4_write_through_the_gateway() {
    if !tools() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let t = Tlogd::start(&d.path().join("data"), None, free_port());
    let gw_img = d.path().join("gw.img");
    let mut g = Gateway::start(d.path(), &t, "nv", &gw_img, &["--size", "33554432"]);
    // The export as a client sees it.
    let o = run(Command::new("nbdinfo").arg("--json").arg(g.uri()));
    assert_ok(&o, "nbdinfo");
    let info: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let e = &info["exports"][0];
    assert_eq!(e["export-size"].as_u64(), Some(32 << 20), "{info}");
    for flag in ["can_flush", "can_fua", "can_multi_conn", "can_trim", "can_zero", "can_fast_zero", "can_cache"] {
        assert_eq!(e[flag].as_bool(), Some(true), "{flag}: {info}");
    }
    assert_eq!(e["block_size_minimum"].as_u64(), Some(512), "{info}");
    assert_eq!(info["protocol"].as_str(), Some("newstyle-fixed"), "{info}");
    // An unknown export is refused with a message.
    let o = run(Command::new("nbdinfo").arg(format!("{}/other", g.uri())));
    assert!(!o.status.success(), "an unknown export was served");

    // qemu-img writes a real ext4 image.
    let src = d.path().join("tree");
    random_tree(&src, 30, 200, 5);
    let img = d.path().join("e.img");
    if !ext4_from(&img, 32, Some(&src)) {
        return;
    }
    assert_ok(&run(Command::new("qemu-img").args(["convert", "-n", "-f", "raw", "-O", "raw"]).arg(&img).arg(g.uri())), "qemu-img convert into the export");
    let r = d.path().join("r1.img");
    restore_to(&t, "nv", &r);
    assert_same_prefix(&r, &img);
    assert_fsck(&r);
    // What the export reads back (several connections) is the image.
    let back = d.path().join("back.img");
    assert_ok(&run(Command::new("nbdcopy").arg(g.uri()).arg(&back)), "nbdcopy out of the export");
    assert_same(&back, &img);

    // The kernel's ext4, on a loop device over nbdfuse: copy a tree, unmount.
    if !nix_root() {
        skip("mounting ext4 over nbdfuse needs root");
        return;
    }
    let fuse = d.path().join("fuse");
    let mnt = d.path().join("mnt");
    std::fs::create_dir_all(&fuse).unwrap();
    std::fs::create_dir_all(&mnt).unwrap();
    let mut nf = nbdfuse(&fuse, &g.uri());
    let mounted = run(Command::new("mount").arg("-o").arg("loop").arg(fuse.join("nbd")).arg(&mnt));
    assert_ok(&mounted, "mount -o loop ext4 over nbdfuse");
    let tree2 = d.path().join("tree2");
    random_tree(&tree2, 20, 100, 9);
    let copied = run(Command::new("cp").arg("-r").arg(&tree2).arg(mnt.join("copy")));
    let synced = run(Command::new("sync").arg("-f").arg(mnt.join("copy")));
    let um = run(Command::new("umount").arg(&mnt));
    let _ = Command::new("kill").arg("-TERM").arg(nf.id().to_string()).status();
    let _ = nf.wait();
    assert_ok(&copied, "cp onto the kernel's ext4");
    assert_ok(&synced, "sync");
    assert_ok(&um, "umount");
    let r = d.path().join("r2.img");
    restore_to(&t, "nv", &r);
    assert_fsck(&r);
    g.stop();
    assert_same_prefix(&r, &gw_img);
    // The files, read by the kernel from the restored image.
    let m2 = d.path().join("m2");
    std::fs::create_dir_all(&m2).unwrap();
    assert_ok(&run(Command::new("mount").args(["-o", "loop,ro"]).arg(&r).arg(&m2)), "mount the restored image");
    let diff = run(Command::new("diff").arg("-r").arg(&tree2).arg(m2.join("copy")));
    let _ = run(Command::new("umount").arg(&m2));
    assert_ok(&diff, "the files on the restored image");
}

/// `nbdfuse DIR URI`, once `DIR/nbd` exists (the export as a file).
fn nbdfuse(dir: &Path, uri: &str) -> Child {
    let nf = Command::new("nbdfuse").arg(dir).arg(uri).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !dir.join("nbd").exists() {
        assert!(Instant::now() < deadline, "nbdfuse did not come up");
        std::thread::sleep(Duration::from_millis(50));
    }
    nf
}

fn nix_root() -> bool {
    run(Command::new("id").arg("-u")).stdout.starts_with(b"0")
}

/// A minimal NBD client (fixed newstyle, `NBD_OPT_GO`, simple replies) to watch one write's
/// answer: qemu-img and friends flush at the end, which would hide an early answer.
struct RawClient(std::net::TcpStream);

impl RawClient {
    fn connect(port: u16) -> RawClient {
        use std::io::{Read, Write};
        use tlog::nbd::proto;
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let mut g = [0u8; 18];
        s.read_exact(&mut g).unwrap();
        assert_eq!(&g[..8], &proto::NBDMAGIC.to_be_bytes());
        s.write_all(&(proto::FLAG_C_FIXED_NEWSTYLE | proto::FLAG_C_NO_ZEROES).to_be_bytes()).unwrap();
        let mut o = proto::IHAVEOPT.to_be_bytes().to_vec();
        o.extend_from_slice(&proto::opt::GO.to_be_bytes());
        o.extend_from_slice(&6u32.to_be_bytes());
        o.extend_from_slice(&0u32.to_be_bytes());
        o.extend_from_slice(&0u16.to_be_bytes());
        s.write_all(&o).unwrap();
        loop {
            let mut h = [0u8; 20];
            s.read_exact(&mut h).unwrap();
            let kind = u32::from_be_bytes([h[12], h[13], h[14], h[15]]);
            let len = u32::from_be_bytes([h[16], h[17], h[18], h[19]]) as usize;
            let mut data = vec![0u8; len];
            s.read_exact(&mut data).unwrap();
            assert!(kind < 1 << 31, "option error {kind:#x}: {}", String::from_utf8_lossy(&data));
            if kind == proto::rep::ACK {
                return RawClient(s);
            }
        }
    }

    fn send(&mut self, kind: u16, flags: u16, cookie: u64, offset: u64, data: &[u8], length: u32) {
        use std::io::Write;
        let r = tlog::nbd::proto::Request { flags, kind, cookie, offset, length };
        self.0.write_all(&tlog::nbd::proto::encode_request(&r)).unwrap();
        self.0.write_all(data).unwrap();
    }

    /// The `n` bytes of data after a read's simple reply.
    fn data(&mut self, n: usize) -> Vec<u8> {
        use std::io::Read;
        let mut d = vec![0u8; n];
        self.0.read_exact(&mut d).unwrap();
        d
    }

    /// The next simple reply (error, cookie), or None within `timeout`.
    fn reply(&mut self, timeout: Duration) -> Option<(u32, u64)> {
        use std::io::Read;
        self.0.set_read_timeout(Some(timeout)).unwrap();
        let mut h = [0u8; 16];
        match self.0.read_exact(&mut h) {
            Ok(()) => Some((u32::from_be_bytes([h[4], h[5], h[6], h[7]]), u64::from_be_bytes(h[8..16].try_into().unwrap()))),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => None,
            Err(e) => panic!("reply: {e}"),
        }
    }
}

#[test]
fn writes_wait_for_tlogd_and_flushes_cover_them() {
    if !tools() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let t = Tlogd::start(&d.path().join("data"), None, free_port());
    let gw_img = d.path().join("gw.img");
    let mut g = Gateway::start(d.path(), &t, "st", &gw_img, &["--size", "16777216"]);
    let mut c = RawClient::connect(g.port);
    use tlog::nbd::proto::{cmd, cmd_flag};
    // Answered once tlogd received it.
    c.send(cmd::WRITE, 0, 1, 0, &[7u8; 4096], 4096);
    assert_eq!(c.reply(Duration::from_secs(20)), Some((0, 1)));
    let pid = t.child.as_ref().unwrap().id().to_string();
    assert!(Command::new("kill").args(["-STOP", &pid]).status().unwrap().success());
    // tlogd stopped: neither a plain write, a FUA write nor a flush is answered.
    c.send(cmd::WRITE, 0, 2, 4096, &[8u8; 4096], 4096);
    let plain = c.reply(Duration::from_secs(2));
    c.send(cmd::WRITE, cmd_flag::FUA, 3, 8192, &[9u8; 4096], 4096);
    c.send(cmd::FLUSH, 0, 4, 0, &[], 0);
    let more = c.reply(Duration::from_millis(500));
    // The waiting flush and FUA write hold up no other request: a read is answered meanwhile.
    c.send(cmd::READ, 0, 10, 0, &[], 4096);
    let read = c.reply(Duration::from_secs(5));
    let data = read.map(|_| c.data(4096));
    assert!(Command::new("kill").args(["-CONT", &pid]).status().unwrap().success());
    assert_eq!(plain, None, "a write was answered while tlogd was stopped (before it received it)");
    assert_eq!(more, None, "a FUA write or flush was answered while tlogd was stopped");
    assert_eq!(read, Some((0, 10)), "a read behind a waiting flush was not answered");
    assert!(data.unwrap().iter().all(|b| *b == 7));
    // Replies may come in any order (the protocol allows it; plain writes are answered by a
    // replier beside the reader).
    let mut got: Vec<(u32, u64)> = (0..3).map(|_| c.reply(Duration::from_secs(30)).expect("an answer after SIGCONT")).collect();
    got.sort();
    assert_eq!(got, vec![(0, 2), (0, 3), (0, 4)]);
    // Everything answered is in the log.
    let r = d.path().join("r.img");
    restore_to(&t, "st", &r);
    let got = std::fs::read(&r).unwrap();
    assert!(got[..4096].iter().all(|b| *b == 7) && got[4096..8192].iter().all(|b| *b == 8) && got[8192..12288].iter().all(|b| *b == 9));
    // Bad requests get errors and lose nothing: past the end, unaligned.
    c.send(cmd::WRITE, 0, 5, 16 << 20, &[1u8; 512], 512);
    assert_eq!(c.reply(Duration::from_secs(10)), Some((22, 5)));
    c.send(cmd::WRITE, 0, 6, 100, &[1u8; 512], 512);
    assert_eq!(c.reply(Duration::from_secs(10)), Some((22, 6)));
    c.send(cmd::DISC, 0, 7, 0, &[], 0);
    g.stop();
    let st: serde_json::Value = serde_json::from_slice(&std::fs::read(format!("{}.tlog-state", gw_img.display())).unwrap()).unwrap();
    assert_eq!(st["sequence"].as_u64(), Some(3), "{st}");
}

#[test]
fn restart_catches_the_image_up_and_rebuilds_a_missing_one() {
    if !tools() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let t = Tlogd::start(&d.path().join("data"), None, free_port());
    let gw_img = d.path().join("gw.img");
    let state = PathBuf::from(format!("{}.tlog-state", gw_img.display()));
    let (a, b) = (d.path().join("a.raw"), d.path().join("b.raw"));
    mixed_image(&a, 8, 1);
    mixed_image(&b, 8, 2);
    let mut g = Gateway::start(d.path(), &t, "rc", &gw_img, &["--size", "8388608"]);
    assert_ok(&run(Command::new("qemu-img").args(["convert", "-n", "-f", "raw", "-O", "raw"]).arg(&a).arg(g.uri())), "write A");
    g.stop();
    let st: serde_json::Value = serde_json::from_slice(&std::fs::read(&state).unwrap()).unwrap();
    let head = run(Command::new(tlog_bin()).args(["history", "--server", &t.addr(), "--vdisk", "rc", "--json"]));
    let h: serde_json::Value = serde_json::from_slice(&head.stdout).unwrap();
    assert_eq!(st["sequence"], h["sequences"][1], "SIGTERM records the head: {st} vs {h}");
    // A copy of the image and its state as they are now: later, an image behind the log.
    let old = d.path().join("old.img");
    std::fs::copy(&gw_img, &old).unwrap();
    let old_state = std::fs::read(&state).unwrap();
    let mut g = Gateway::start(d.path(), &t, "rc", &gw_img, &[]);
    assert_ok(&run(Command::new("qemu-img").args(["convert", "-n", "-f", "raw", "-O", "raw"]).arg(&b).arg(g.uri())), "write B");
    g.kill9();
    // The image goes back to before B (as if the gateway crashed between logging and writing).
    std::fs::copy(&old, &gw_img).unwrap();
    std::fs::write(&state, &old_state).unwrap();
    let mut g = Gateway::start(d.path(), &t, "rc", &gw_img, &[]);
    assert!(g.stdout().contains("caught up by"), "{}", g.stdout());
    let back = d.path().join("back.img");
    assert_ok(&run(Command::new("nbdcopy").arg(g.uri()).arg(&back)), "read the export");
    assert_same(&back, &b);
    g.stop();
    // A missing image is built from tlogd.
    std::fs::remove_file(&gw_img).unwrap();
    std::fs::remove_file(&state).unwrap();
    let g = Gateway::start(d.path(), &t, "rc", &gw_img, &[]);
    assert!(g.stdout().contains("image built from tlogd"), "{}", g.stdout());
    let back2 = d.path().join("back2.img");
    assert_ok(&run(Command::new("nbdcopy").arg(g.uri()).arg(&back2)), "read the rebuilt export");
    assert_same(&back2, &b);
    drop(g);
    // An image that is not the gateway's copy is refused with the reason.
    let stray = d.path().join("stray.img");
    std::fs::write(&stray, vec![1u8; 4096]).unwrap();
    let o = run(Command::new(tlog_bin()).args(["nbd", "--server", &t.addr(), "--vdisk", "rc", "--image", stray.to_str().unwrap(), "--listen", "127.0.0.1:0"]));
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("is not this gateway's copy"), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn fio_with_verify_over_the_unix_socket_and_nbdcopy_multi_conn() {
    if !tools() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let t = Tlogd::start(&d.path().join("data"), None, free_port());
    let gw_img = d.path().join("gw.img");
    let sock = d.path().join("nbd.sock");
    let mut g = Gateway::start(d.path(), &t, "fv", &gw_img, &["--size", "33554432", "--socket", sock.to_str().unwrap()]);
    let uri = format!("nbd+unix:///?socket={}", sock.display());
    // fio saves its verify state in the working directory: the test's own.
    let o = run(Command::new("fio").current_dir(d.path()).args([
        "--name=tlog",
        "--ioengine=nbd",
        &format!("--uri={uri}"),
        "--rw=randwrite",
        "--bs=4k",
        "--size=16m",
        "--iodepth=8",
        "--numjobs=1",
        "--verify=crc32c",
        "--do_verify=1",
        "--fsync=64",
        "--output-format=json",
    ]));
    assert_ok(&o, "fio randwrite with verify through the gateway");
    // fio prints a line of its nbd engine before the JSON.
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    let j: serde_json::Value = serde_json::from_str(&out[out.find('{').unwrap_or(0)..]).unwrap_or_default();
    assert!(j["jobs"][0]["write"]["io_bytes"].as_u64().unwrap_or(0) >= 16 << 20, "{out}");
    assert_eq!(j["jobs"][0]["error"].as_u64(), Some(0), "{}", String::from_utf8_lossy(&o.stdout));
    // nbdcopy with 4 connections writes an image over the upper half.
    let img = d.path().join("half.raw");
    mixed_image(&img, 16, 8);
    let upper = d.path().join("upper.raw");
    let mut full = std::fs::read(&gw_img).unwrap();
    full[16 << 20..].copy_from_slice(&std::fs::read(&img).unwrap());
    std::fs::write(&upper, &full).unwrap();
    assert_ok(&run(Command::new("nbdcopy").args(["--connections=4", "--flush"]).arg(&upper).arg(&uri)), "nbdcopy --connections=4");
    g.stop();
    let r = d.path().join("r.img");
    restore_to(&t, "fv", &r);
    assert_same_prefix(&r, &gw_img);
    assert_same(&gw_img, &upper);
    assert!(!sock.exists(), "the socket is removed on stop");
}

/// `BLOCK_STATUS` of the meta context `tlog:changed:<point>` gives the extents written since
/// the point (the same as `tlog changed`), including writes the gateway answered a moment ago.
#[test]
fn changed_blocks_since_a_point_as_a_meta_context() {
    if !tools() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let t = Tlogd::start(&d.path().join("data"), None, free_port());
    let gw_img = d.path().join("gw.img");
    let g = Gateway::start(d.path(), &t, "cb", &gw_img, &["--size", "16777216"]);
    let a = d.path().join("a.raw");
    mixed_image(&a, 16, 4);
    assert_ok(&run(Command::new("qemu-img").args(["convert", "-n", "-f", "raw", "-O", "raw"]).arg(&a).arg(g.uri())), "write A");
    let h: serde_json::Value =
        serde_json::from_slice(&run(Command::new(tlog_bin()).args(["history", "--server", &t.addr(), "--vdisk", "cb", "--json"])).stdout).unwrap();
    let point = h["sequences"][1].as_u64().unwrap();
    // Three writes after the point, the last not flushed by anyone.
    let mut c = RawClient::connect(g.port);
    use tlog::nbd::proto::cmd;
    for (cookie, off) in [(1u64, 1u64 << 20), (2, 5 << 20), (3, (9 << 20) + 4096)] {
        c.send(cmd::WRITE, 0, cookie, off, &[0xabu8; 8192], 8192);
        assert_eq!(c.reply(Duration::from_secs(20)), Some((0, cookie)));
    }
    let o = run(Command::new("nbdinfo").arg(format!("--map=tlog:changed:{point}")).arg(g.uri()));
    assert_ok(&o, "nbdinfo --map=tlog:changed:<point>");
    let changed: Vec<(u64, u64)> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 3 && f[2] == "1").then(|| (f[0].parse().unwrap(), f[1].parse().unwrap()))
        })
        .collect();
    assert_eq!(changed, vec![(1 << 20, 8192), (5 << 20, 8192), ((9 << 20) + 4096, 8192)], "{}", String::from_utf8_lossy(&o.stdout));
    // The same as tlog changed from the log.
    let o = run(Command::new(tlog_bin()).args(["changed", "--server", &t.addr(), "--vdisk", "cb", "--from-sequence", &point.to_string(), "--json"]));
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let from_log: Vec<(u64, u64)> = j["extents"].as_array().unwrap().iter().map(|e| (e["offset"].as_u64().unwrap(), e["length"].as_u64().unwrap())).collect();
    assert_eq!(changed, from_log);
    // A bad point is refused at negotiation with tlogd's reason.
    let o = run(Command::new("nbdinfo").arg("--map=tlog:changed:nosuchcheckpoint").arg(g.uri()));
    assert!(!o.status.success(), "a bad point was accepted");
    c.send(cmd::DISC, 0, 9, 0, &[], 0);
    drop(g);
}

/// The issue's kernel scenario: nbdfuse exposes the export, losetup makes it a block device,
/// mkfs.ext4 and mount it, copy real files in, sync, freeze, checkpoint, thaw, delete some
/// files, sync, umount; the restore at the checkpoint is `e2fsck`-clean and holds every file
/// with its content.
#[test]
fn a_kernel_ext4_made_on_the_export_restores_at_a_checkpoint() {
    if !tools() {
        return;
    }
    if !nix_root() {
        skip("losetup and mount need root");
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let t = Tlogd::start(&d.path().join("data"), None, free_port());
    let gw_img = d.path().join("gw.img");
    let g = Gateway::start(d.path(), &t, "kx", &gw_img, &["--size", "67108864"]);
    let fuse = d.path().join("fuse");
    let mnt = d.path().join("mnt");
    std::fs::create_dir_all(&fuse).unwrap();
    std::fs::create_dir_all(&mnt).unwrap();
    let mut nf = nbdfuse(&fuse, &g.uri());
    let lo = run(Command::new("losetup").args(["-f", "--show"]).arg(fuse.join("nbd")));
    assert_ok(&lo, "losetup");
    let dev = String::from_utf8_lossy(&lo.stdout).trim().to_string();
    let steps = (|| -> Result<(), String> {
        let step = |o: Output, what: &str| if o.status.success() { Ok(()) } else { Err(format!("{what}: {}", String::from_utf8_lossy(&o.stderr))) };
        step(run(Command::new("mkfs.ext4").args(["-q", "-F", &dev])), "mkfs.ext4")?;
        step(run(Command::new("mount").arg(&dev).arg(&mnt)), "mount")?;
        let src = d.path().join("files");
        random_tree(&src, 24, 300, 13);
        step(run(Command::new("cp").arg("-r").arg(&src).arg(mnt.join("files"))), "cp")?;
        step(run(Command::new("sync").arg("-f").arg(mnt.join("files"))), "sync")?;
        step(run(Command::new("fsfreeze").arg("-f").arg(&mnt)), "fsfreeze -f")?;
        let cp = run(Command::new(tlog_bin()).args(["checkpoint", "--server", &t.addr(), "--vdisk", "kx", "copied"]));
        step(run(Command::new("fsfreeze").arg("-u").arg(&mnt)), "fsfreeze -u")?;
        step(cp, "tlog checkpoint")?;
        for i in 0..12 {
            std::fs::remove_file(mnt.join("files").join(format!("f{i:03}.bin"))).map_err(|e| e.to_string())?;
        }
        step(run(Command::new("sync").arg("-f").arg(mnt.join("files"))), "sync")?;
        Ok(())
    })();
    let _ = run(Command::new("umount").arg(&mnt));
    let _ = run(Command::new("losetup").args(["-d", &dev]));
    let _ = Command::new("kill").arg("-TERM").arg(nf.id().to_string()).status();
    let _ = nf.wait();
    steps.unwrap();
    let r = d.path().join("at-checkpoint.img");
    assert_ok(
        &tlog(&["restore", "--server", &t.addr(), "--vdisk", "kx", "--checkpoint", "copied", "--output", r.to_str().unwrap()]),
        "restore at the checkpoint",
    );
    assert_fsck(&r);
    let m2 = d.path().join("m2");
    std::fs::create_dir_all(&m2).unwrap();
    assert_ok(&run(Command::new("mount").args(["-o", "loop,ro"]).arg(&r).arg(&m2)), "mount the restored image");
    let diff = run(Command::new("diff").arg("-r").arg(d.path().join("files")).arg(m2.join("files")));
    let _ = run(Command::new("umount").arg(&m2));
    assert_ok(&diff, "every file of the checkpoint, with its content");
    drop(g);
}

/// qemu-io against the export: writes, `write -z`, `discard`, `write -f` (FUA), `flush` and
/// pattern-checked reads against a model; the restore equals the export.
#[test]
fn qemu_io_commands_match_a_model() {
    if !tools() || !have("qemu-io") {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let t = Tlogd::start(&d.path().join("data"), None, free_port());
    let gw_img = d.path().join("gw.img");
    let g = Gateway::start(d.path(), &t, "qi", &gw_img, &["--size", "4194304"]);
    let cmds = [
        "write -P 0xab 0 256k",
        "write -z 64k 64k",
        "discard 128k 64k",
        "write -f -P 0xcd 192k 4k",
        "write -P 0x11 1m 1m",
        "flush",
        "read -P 0xab 0 64k",
        "read -P 0 64k 128k",
        "read -P 0xcd 192k 4k",
        "read -P 0xab 196k 60k",
        "read -P 0x11 1m 1m",
        "read -P 0 2m 2m",
    ];
    let mut c = Command::new("qemu-io");
    c.args(["-f", "raw"]).arg(g.uri());
    for x in cmds {
        c.arg("-c").arg(x);
    }
    let o = run(&mut c);
    let out = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(o.status.success() && !out.contains("failed") && !out.contains("error"), "qemu-io: {out}");
    let mut model = vec![0u8; 4 << 20];
    model[..256 << 10].fill(0xab);
    model[64 << 10..192 << 10].fill(0);
    model[192 << 10..196 << 10].fill(0xcd);
    model[1 << 20..2 << 20].fill(0x11);
    let mp = d.path().join("model.img");
    std::fs::write(&mp, &model).unwrap();
    let back = d.path().join("back.img");
    assert_ok(&run(Command::new("nbdcopy").arg(g.uri()).arg(&back)), "nbdcopy");
    assert_same(&back, &mp);
    let r = d.path().join("r.img");
    restore_to(&t, "qi", &r);
    assert_same_prefix(&r, &mp);
    drop(g);
}

/// Kill -9 of the gateway in the middle of `qemu-img convert`, restart, the convert again:
/// the image and the restore agree. Kill -9 of tlogd in the middle of a convert: the gateway's
/// writes resume on the restarted tlogd and the convert (whose final flush was answered)
/// restores exactly.
#[test]
fn gateway_and_tlogd_killed_mid_write() {
    if !tools() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let mut t = Tlogd::start(&d.path().join("data"), None, free_port());
    let gw_img = d.path().join("gw.img");
    let img = d.path().join("m.raw");
    mixed_image(&img, 64, 12);
    let convert = |g: &Gateway| {
        Command::new("qemu-img")
            .args(["convert", "-n", "-f", "raw", "-O", "raw"])
            .arg(&img)
            .arg(g.uri())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    let mut g = Gateway::start(d.path(), &t, "kk", &gw_img, &["--size", "67108864"]);
    let mut w = convert(&g);
    std::thread::sleep(Duration::from_millis(300));
    g.kill9();
    let _ = w.wait();
    let mut g = Gateway::start(d.path(), &t, "kk", &gw_img, &[]);
    assert!(convert(&g).wait().unwrap().success(), "convert after the gateway's restart");
    g.stop();
    let r = d.path().join("r1.img");
    restore_to(&t, "kk", &r);
    assert_same_prefix(&r, &gw_img);
    assert_same(&gw_img, &img);
    // tlogd killed in the middle.
    let img2 = d.path().join("m2.raw");
    mixed_image(&img2, 64, 13);
    let g = Gateway::start(d.path(), &t, "kk", &gw_img, &[]);
    let w = Command::new("qemu-img")
        .args(["convert", "-n", "-f", "raw", "-O", "raw"])
        .arg(&img2)
        .arg(g.uri())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    t.kill9();
    std::thread::sleep(Duration::from_millis(500));
    t.restart();
    let out = w.wait_with_output().unwrap();
    assert!(out.status.success(), "convert across tlogd's restart: {}", String::from_utf8_lossy(&out.stderr));
    let r = d.path().join("r2.img");
    restore_to(&t, "kk", &r);
    assert_same(&r, &img2);
    drop(g);
}

/// Issue 18 item 4: exports of a past point straight from the log. A read-only export at a
/// checkpoint (after more was written over it) is copied with `nbdcopy` and equals the restore
/// at the checkpoint, and says when it answered its first read; a write to it gets `EPERM`. A
/// fork export at the checkpoint takes writes (qemu-io) into the fork: reads show them over the
/// checkpoint's image, the fork restores to exactly that, and so does a restarted export
/// (which reads them back from the log); the source's restore is unchanged.
#[test]
fn past_points_export_read_only_and_as_a_writable_fork() {
    if !tools() || !have("qemu-io") {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    let t = Tlogd::start(&p.join("data"), None, free_port());
    let (a, b) = (p.join("a.raw"), p.join("b.raw"));
    mixed_image(&a, 24, 11);
    mixed_image(&b, 8, 12);
    assert_ok(&import(&t.addr(), "pp", &a), "import A");
    assert_ok(&tlog(&["checkpoint", "--server", &t.addr(), "--vdisk", "pp", "c1"]), "checkpoint");
    assert_ok(&import(&t.addr(), "pp", &b), "import B over A");
    let at_c1 = p.join("c1.raw");
    assert_ok(&tlog(&["restore", "--server", &t.addr(), "--vdisk", "pp", "--checkpoint", "c1", "--output", at_c1.to_str().unwrap()]), "restore c1");
    let head_before = p.join("head-before.raw");
    restore_to(&t, "pp", &head_before);
    assert_same_prefix(&at_c1, &a);

    // Read-only at c1: the log at the point, not the head.
    let g = Gateway::spawn(p, &t, "pp", &["--read-only", "--checkpoint", "c1"]);
    assert!(g.stdout().contains("read-only from the log"), "{}", g.stdout());
    let o = run(Command::new("nbdinfo").arg("--json").arg(g.uri()));
    assert_ok(&o, "nbdinfo");
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let e = &j["exports"][0];
    assert_eq!((e["is_read_only"].as_bool(), e["export-size"].as_u64()), (Some(true), Some(24 << 20)), "{j}");
    let copy = p.join("ro-copy.raw");
    assert_ok(&run(Command::new("nbdcopy").args(["--connections", "2"]).arg(g.uri()).arg(&copy)), "nbdcopy of the read-only export");
    assert_same_prefix(&copy, &at_c1);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !g.stdout().contains("first read answered") {
        assert!(Instant::now() < deadline, "no first-read report: {}", g.stdout());
        std::thread::sleep(Duration::from_millis(20));
    }
    use tlog::nbd::proto::{cmd, errno};
    let mut c = RawClient::connect(g.port);
    c.send(cmd::WRITE, 0, 7, 4096, &[1u8; 4096], 4096);
    assert_eq!(c.reply(Duration::from_secs(10)), Some((errno::EPERM, 7)), "a write to a read-only export");
    c.send(cmd::WRITE_ZEROES, 0, 8, 0, &[], 4096);
    assert_eq!(c.reply(Duration::from_secs(10)), Some((errno::EPERM, 8)), "a zero on a read-only export");
    c.send(cmd::DISC, 0, 9, 0, &[], 0);
    drop(g);

    // A fork at c1, written through its export.
    let mut g = Gateway::spawn(p, &t, "pp", &["--fork", "ppf", "--checkpoint", "c1"]);
    assert!(g.stdout().contains("fork ppf of vdisk pp"), "{}", g.stdout());
    let cmds = ["write -P 0x5a 0 64k", "write -z 1m 128k", "write -f -P 0xc3 20m 1m", "flush", "read -P 0x5a 0 64k", "read -P 0xc3 20m 1m"];
    let mut q = Command::new("qemu-io");
    q.args(["-f", "raw"]).arg(g.uri());
    for x in cmds {
        q.arg("-c").arg(x);
    }
    let o = run(&mut q);
    let out = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(o.status.success() && !out.contains("failed") && !out.contains("error"), "qemu-io on the fork: {out}");
    let mut model = std::fs::read(&at_c1).unwrap();
    model.resize(24 << 20, 0);
    model[..64 << 10].fill(0x5a);
    model[1 << 20..(1 << 20) + (128 << 10)].fill(0);
    model[20 << 20..21 << 20].fill(0xc3);
    let mp = p.join("fork-model.raw");
    std::fs::write(&mp, &model).unwrap();
    let back = p.join("fork-back.raw");
    assert_ok(&run(Command::new("nbdcopy").arg(g.uri()).arg(&back)), "nbdcopy of the fork export");
    assert_same(&back, &mp);
    g.stop();
    let r = p.join("fork-restore.raw");
    restore_to(&t, "ppf", &r);
    assert_same_prefix(&r, &mp);
    // Restarted: the fork exists; its writes now come from the log.
    let g = Gateway::spawn(p, &t, "pp", &["--fork", "ppf", "--checkpoint", "c1"]);
    let back2 = p.join("fork-back2.raw");
    assert_ok(&run(Command::new("nbdcopy").arg(g.uri()).arg(&back2)), "nbdcopy of the restarted fork export");
    assert_same(&back2, &mp);
    drop(g);
    // The source is untouched.
    let head_after = p.join("head-after.raw");
    restore_to(&t, "pp", &head_after);
    assert_same(&head_after, &head_before);
}
