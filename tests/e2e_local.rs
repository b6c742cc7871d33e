//! Acceptance: a real ext4 image (64 MiB) imported through tlogd on the default local backend;
//! tlogd stopped; restored with `tlog restore`: byte-identical, and `e2fsck -fn` passes.
//! Then the same store restored with two of the six store directories gone.

mod common;
use common::*;

#[test]
fn ext4_image_roundtrip_local_backend() {
    let d = tempfile::tempdir().unwrap();
    let Some(img) = ext4_image(&d.path().join("disk.img"), 64) else { return };
    let data = d.path().join("data");
    let mut t = Tlogd::start(&data, None, free_port());
    let o = import(&t.addr(), "disk1", &img);
    assert_ok(&o, "tlog import");
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("imported 16384 blocks, 67108864 bytes"), "{text}");
    t.stop();
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(data.join("aes.key")).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the generated key must be private");
    assert!(t.log_text().contains("generated a new AES-256 key"), "tlogd must say where the key is");
    let out = d.path().join("restored.img");
    assert_ok(&restore(None, &data, "disk1", &out), "tlog restore");
    assert_same(&img, &out);
    assert_fsck(&out);

    // m = 2 backends lost: move two store directories away.
    std::fs::rename(data.join("store/1"), d.path().join("gone1")).unwrap();
    std::fs::rename(data.join("store/4"), d.path().join("gone4")).unwrap();
    let out2 = d.path().join("restored2.img");
    assert_ok(&restore(None, &data, "disk1", &out2), "tlog restore with 2 backends lost");
    assert_same(&img, &out2);
}
