//! Clear errors: restore with the wrong key (never garbage output), unknown vdisk, a broken
//! chain, an unreachable server, corrupt store directories named as such. One test per scenario.

mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A stopped tlogd's data directory holding vdisk `vd` (a 4 MiB image).
fn imported(d: &Path) -> (PathBuf, PathBuf) {
    let data = d.join("data");
    let img = d.join("a.raw");
    mixed_image(&img, 4, 3);
    let mut t = Tlogd::start(&data, None, free_port());
    assert_ok(&import(&t.addr(), "vd", &img), "import");
    t.stop();
    (data, img)
}

fn corrupt_data_files(data: &Path, stores: &[usize]) {
    for i in stores {
        let dir = data.join(format!("store/{i}"));
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.extension().map(|x| x == "data").unwrap_or(false) {
                let mut b = std::fs::read(&p).unwrap();
                let n = b.len();
                for x in &mut b[n / 2..n / 2 + 64] {
                    *x ^= 0x5a;
                }
                std::fs::write(&p, b).unwrap();
            }
        }
    }
}

#[test]
fn wrong_key_is_named_and_writes_nothing() {
    let d = tempfile::tempdir().unwrap();
    let (data, _) = imported(d.path());
    let out = d.path().join("wrong.img");
    let o = run(Command::new(tlog_bin())
        .env("TLOG_AES_KEY", "11".repeat(32))
        .args(["restore", "--data-dir"])
        .arg(&data)
        .args(["--vdisk", "vd", "--output"])
        .arg(&out));
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("wrong key"), "{err}");
    assert!(!out.exists(), "no output may be written with the wrong key");
}

#[test]
fn unknown_vdisk_is_named() {
    let d = tempfile::tempdir().unwrap();
    let (data, _) = imported(d.path());
    let o = restore(None, &data, "nosuch", &d.path().join("x.img"));
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("unknown vdisk"), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn more_than_m_corrupt_shards_break_the_chain_at_a_named_key() {
    let d = tempfile::tempdir().unwrap();
    let (data, _) = imported(d.path());
    corrupt_data_files(&data, &[0, 2, 3]);
    let o = restore(None, &data, "vd", &d.path().join("broken.img"));
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("chain broken at key"), "{err}");
    assert!(!d.path().join("broken.img").exists());
}

#[test]
fn m_corrupt_stores_still_restore_exactly() {
    let d = tempfile::tempdir().unwrap();
    let (data, img) = imported(d.path());
    corrupt_data_files(&data, &[1, 4]);
    let out = d.path().join("two.img");
    assert_ok(&restore(None, &data, "vd", &out), "restore with m = 2 corrupt stores");
    assert_same(&img, &out);
}

#[test]
fn unusable_store_directories_are_named_with_the_real_error() {
    let d = tempfile::tempdir().unwrap();
    let (data, _) = imported(d.path());
    for i in [0, 2, 3] {
        let dir = data.join(format!("store/{i}"));
        let idx = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).find(|p| p.extension().map(|x| x == "index").unwrap_or(false)).unwrap();
        std::fs::write(idx, b"not an index").unwrap();
    }
    let o = restore(None, &data, "vd", &d.path().join("x.img"));
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!err.contains("store directory missing"), "the directories exist: {err}");
    assert!(err.contains("shorter than its header") || err.contains("bad magic") || err.contains("index"), "{err}");
}

#[test]
fn unreachable_server_is_named() {
    let d = tempfile::tempdir().unwrap();
    let img = d.path().join("a.raw");
    mixed_image(&img, 1, 3);
    let o =
        run(Command::new(tlog_bin()).args(["import", "--reconnect-timeout", "1", "--server", &format!("127.0.0.1:{}", free_port()), "--vdisk", "v"]).arg(&img));
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("connect to tlogd") && err.contains("not reachable yet"), "{err}");
}
