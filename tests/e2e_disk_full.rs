//! Adversity: the store's disk fills up mid-import. tlogd keeps every received block, retries,
//! and tells the client why flushed acks wait (a `waiting` notice naming the backends' error),
//! which `tlog import` prints; once space is freed the writes resume by themselves, the import
//! completes and the restore is exact.
//!
//! Before the fix the client was told nothing: `tlog import` sat silent until its 600 s timeouts.
//!
//! The store lives on a tmpfs of 64 MiB mounted by the test (root only) with a 40 MiB filler
//! file on it, unmounted at the end.

mod common;
use common::*;
use std::io::BufRead;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

struct Mount(PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn disk_full_is_told_to_the_client_and_writes_resume_when_freed() {
    let root = Command::new("id").arg("-u").output().map(|o| o.stdout.starts_with(b"0")).unwrap_or(false);
    if !root {
        skip("mounting a size-limited tmpfs needs root");
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let mnt = d.path().join("small");
    std::fs::create_dir(&mnt).unwrap();
    let st = Command::new("mount").args(["-t", "tmpfs", "-o", "size=64m", "tlog-test-full"]).arg(&mnt).status().unwrap();
    assert!(st.success(), "mount tmpfs");
    let _m = Mount(mnt.clone());
    let filler = mnt.join("filler");
    std::fs::write(&filler, vec![1u8; 40 << 20]).unwrap();
    let data = mnt.join("data");
    let mut t = Tlogd::start(&data, None, free_port());
    let img = d.path().join("big.raw");
    mixed_image(&img, 32, 77);
    let mut imp = Command::new(tlog_bin())
        .args(["import", "--server", &t.addr(), "--vdisk", "full"])
        .arg(&img)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = imp.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for l in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(l);
        }
    });
    let mut lines = Vec::new();
    let end = Instant::now() + Duration::from_secs(60);
    let mut told = false;
    while Instant::now() < end && !told {
        if let Ok(l) = rx.recv_timeout(Duration::from_millis(200)) {
            told = l.contains("waiting") && l.contains("No space left");
            lines.push(l);
        }
        assert!(imp.try_wait().unwrap().is_none(), "the import ended before the disk filled: {lines:?}");
    }
    assert!(told, "tlog import did not say why it waits: {lines:?}\ntlogd: {}", t.log_text());
    std::fs::remove_file(&filler).unwrap();
    let out = imp.wait_with_output().unwrap();
    lines.extend(rx.try_iter());
    assert!(out.status.success(), "import after space was freed: {lines:?}\ntlogd: {}", t.log_text());
    assert!(lines.iter().any(|l| l.contains("durable again")), "{lines:?}");
    assert!(t.alive());
    t.stop();
    let r = d.path().join("full.img");
    assert_ok(&restore(None, &data, "full", &r), "restore");
    assert_same(&img, &r);
}
