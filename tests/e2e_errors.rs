//! Clear errors: restore with the wrong key (never garbage output), unknown vdisk, a broken
//! chain, an unreachable server.

mod common;
use common::*;
use std::process::Command;

#[test]
fn clear_errors() {
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("data");
    let img = d.path().join("a.raw");
    mixed_image(&img, 4, 3);
    let mut t = Tlogd::start(&data, None, free_port());
    assert_ok(&import(&t.addr(), "vd", &img), "import");
    t.stop();

    // Wrong key: a clear error and no output file.
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

    // Unknown vdisk.
    let o = restore(None, &data, "nosuch", &d.path().join("x.img"));
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("unknown vdisk"), "{}", String::from_utf8_lossy(&o.stderr));

    // More than m shards of an aggregation corrupt: chain broken at a named key.
    for i in [0, 2, 3] {
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
    let o = restore(None, &data, "vd", &d.path().join("broken.img"));
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("chain broken at key"), "{err}");

    // Unreachable server.
    let o = run(Command::new(tlog_bin()).args(["import", "--server", &format!("127.0.0.1:{}", free_port()), "--vdisk", "v"]).arg(&img));
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("connect to tlogd"), "{}", String::from_utf8_lossy(&o.stderr));
}
