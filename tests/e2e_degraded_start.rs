//! Adversity: tlogd starts degraded when up to k+m - write_quorum store directories are unusable
//! (says which and why, keeps acking on the others, records the missing shards for repair), and
//! refuses to start past that. A missing store directory is never recreated empty (it may be a
//! disk that failed to mount): it is unusable until `tlog store init DIR`.
//!
//! Before the fix a bad index header, a zeroed data file or a store directory replaced by a
//! file each made tlogd exit, although m = 2 and restores from the same store were exact; and a
//! missing directory was silently recreated empty.

mod common;
use common::*;
use std::path::Path;
use std::process::Command;

fn first_with_ext(dir: &Path, ext: &str) -> std::path::PathBuf {
    let mut v: Vec<_> =
        std::fs::read_dir(dir).unwrap().filter_map(|e| e.ok()).map(|e| e.path()).filter(|p| p.extension().map(|x| x == ext).unwrap_or(false)).collect();
    v.sort();
    v.into_iter().next().unwrap_or_else(|| panic!("no .{ext} file in {}", dir.display()))
}

/// Imports v1, stops tlogd, damages the store with `damage`, starts tlogd again (it must serve),
/// imports v2, and restores both exactly. Returns tlogd's log of the degraded run.
fn degraded_run(name: &str, damage: impl FnOnce(&Path)) -> String {
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("data");
    let (a, b) = (d.path().join("a.img"), d.path().join("b.img"));
    mixed_image(&a, 4, 1);
    mixed_image(&b, 4, 2);
    let port = free_port();
    let mut t = Tlogd::start(&data, None, port);
    assert_ok(&import(&t.addr(), "v1", &a), "import v1");
    t.stop();
    damage(&data.join("store"));
    let mut t = Tlogd::start(&data, None, port);
    assert!(t.alive(), "{name}: tlogd did not start degraded: {}", t.log_text());
    assert_ok(&import(&t.addr(), "v2", &b), &format!("{name}: import v2 on a degraded store"));
    t.stop();
    for (v, img) in [("v1", &a), ("v2", &b)] {
        let out = d.path().join(format!("{v}.out"));
        assert_ok(&restore(None, &data, v, &out), &format!("{name}: restore {v}"));
        assert_same(img, &out);
    }
    let log = t.log_text();
    assert!(log.contains("store/3") || log.contains("store/2"), "{name}: the log names the unusable store: {log}");
    assert!(log.contains("degraded"), "{name}: the log says tlogd runs degraded: {log}");
    log
}

#[test]
fn bad_index_header_starts_degraded() {
    let log = degraded_run("bad index header", |s| {
        let p = first_with_ext(&s.join("3"), "index");
        let mut b = std::fs::read(&p).unwrap();
        b[..8].copy_from_slice(b"garbage!");
        std::fs::write(&p, b).unwrap();
    });
    assert!(log.contains("bad magic") || log.contains("not a tlog segment"), "the reason is named: {log}");
}

#[test]
fn zeroed_data_file_starts_degraded() {
    degraded_run("zeroed data file", |s| {
        let p = first_with_ext(&s.join("3"), "data");
        let n = std::fs::metadata(&p).unwrap().len();
        std::fs::write(&p, vec![0u8; n as usize]).unwrap();
    });
}

#[test]
fn store_directory_replaced_by_a_file_starts_degraded() {
    degraded_run("directory replaced by a file", |s| {
        std::fs::remove_dir_all(s.join("3")).unwrap();
        std::fs::write(s.join("3"), b"not a directory").unwrap();
    });
}

#[test]
fn missing_store_directory_is_not_recreated() {
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("data");
    let a = d.path().join("a.img");
    mixed_image(&a, 4, 3);
    let port = free_port();
    let mut t = Tlogd::start(&data, None, port);
    assert_ok(&import(&t.addr(), "v1", &a), "import v1");
    t.stop();
    std::fs::remove_dir_all(data.join("store/2")).unwrap();
    let mut t = Tlogd::start(&data, None, port);
    assert_ok(&import(&t.addr(), "v1b", &a), "import on a store with one directory missing");
    t.stop();
    assert!(!data.join("store/2").exists(), "the missing store directory was recreated: {}", t.log_text());
    let log = t.log_text();
    assert!(log.contains("store/2") && log.contains("tlog store init"), "the log says how to start it empty: {log}");
    // `tlog store init` makes it usable again (empty); the next start uses it.
    assert_ok(&run(Command::new(tlog_bin()).args(["store", "init"]).arg(data.join("store/2"))), "tlog store init");
    let seen = t.log_text().len();
    let mut t = Tlogd::start(&data, None, port);
    t.stop();
    let log = t.log_text();
    assert!(!log[seen..].contains("unusable"), "{}", &log[seen..]);
    let out = d.path().join("v1.out");
    assert_ok(&restore(None, &data, "v1", &out), "restore v1");
    assert_same(&a, &out);
}

#[test]
fn too_many_unusable_stores_refuse_to_start() {
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("data");
    let port = free_port();
    let mut t = Tlogd::start(&data, None, port);
    t.stop();
    for i in [1, 4] {
        let p = first_with_ext(&data.join("store").join(i.to_string()), "index");
        std::fs::write(&p, b"garbage").unwrap();
    }
    let o = run(Command::new(tlogd_bin()).arg("--data-dir").arg(&data).arg("--listen").arg(format!("127.0.0.1:{port}")));
    assert!(!o.status.success(), "tlogd must not start with 2 of 6 stores unusable and write_quorum 5");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("store/1") && err.contains("store/4") && err.contains("write_quorum"), "{err}");
}
