//! Acceptance (tap mode): tlogd serves with its userspace TCP stack (smoltcp) on a Linux tap
//! device inside a network namespace the test creates (unshare); the client uses the kernel's
//! TCP through the tap. A real ext4 image is imported and restored exactly; a client killed
//! mid-stream and started again leaves no loss, at the default MTU (65521) and at 1500.
//! Restores through tlogd's playback (`--server`) over the tap by checkpoint, time and sequence.
//! Runs scripts/netns-tap.sh.

mod common;
use common::*;
use std::process::Command;

fn netns_ok() -> bool {
    let flag = if Command::new("id").arg("-u").output().map(|o| o.stdout.starts_with(b"0")).unwrap_or(false) { "-n" } else { "-rn" };
    Command::new("unshare").args([flag, "true"]).status().map(|s| s.success()).unwrap_or(false)
}

/// Runs scripts/netns-tap.sh; `mtu` None keeps tlogd's default MTU (65521); `second`: an image
/// imported after the checkpoint (the restores through `--server` then also go by time and
/// sequence).
fn run_tap(img: &std::path::Path, work: &std::path::Path, kill_client: bool, mtu: Option<u32>, second: Option<&std::path::Path>) {
    let bin_dir = tlogd_bin().parent().unwrap().to_path_buf();
    let mut cmd = Command::new("bash");
    cmd.arg(repo().join("scripts/netns-tap.sh")).arg(img).arg(work).env("TLOG_BIN_DIR", bin_dir).env("TLOG_KILL_CLIENT", if kill_client { "1" } else { "0" });
    if let Some(m) = mtu {
        cmd.env("TLOG_TAP_MTU", m.to_string());
    }
    if let Some(s) = second {
        cmd.env("TLOG_TAP_SECOND", s);
    }
    let o = run(&mut cmd);
    assert_ok(&o, "scripts/netns-tap.sh");
    assert!(String::from_utf8_lossy(&o.stdout).contains("restores through tlogd's playback are identical"));
    assert!(String::from_utf8_lossy(&o.stdout).contains("restored image is identical"));
    if kill_client {
        assert!(String::from_utf8_lossy(&o.stdout).contains("client killed mid-stream"));
    }
    // tlogd lengthened the tap's transmit queue (net.tap_queue_len), so bursts are not dropped,
    // and gave it the MTU asked for (net.mtu, default 65521): as `ip link` shows the device.
    let link = std::fs::read_to_string(work.join("link.txt")).unwrap_or_default();
    assert!(link.contains("qlen 10000"), "tap transmit queue not 10000: {link}");
    let want = mtu.unwrap_or(65521);
    assert!(link.contains(&format!("mtu {want} ")), "tap MTU not {want}: {link}");
}

#[test]
fn tap_mode_ext4_roundtrip_and_client_kill() {
    if !netns_ok() {
        skip("cannot create a network namespace (unshare -n / -rn refused)");
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let Some(img) = ext4_image(&d.path().join("disk.img"), 64) else { return };
    // The default MTU (64 KiB segments) for the ext4 image, a standard Ethernet MTU for the
    // client-kill run: both frame sizes go through the stack.
    // The first run also imports a second image after a checkpoint: image A (ext4) restored
    // through tlogd's playback over the tap at the checkpoint, a time and a sequence.
    let second = d.path().join("second.raw");
    mixed_image(&second, 64, 23);
    run_tap(&img, &d.path().join("w1"), false, None, Some(&second));
    for p in ["at-checkpoint", "at-time", "at-sequence"] {
        assert_fsck(&d.path().join(format!("w1/{p}.img")));
    }
    let big = d.path().join("mixed.raw");
    mixed_image(&big, 96, 11);
    run_tap(&big, &d.path().join("w2"), true, Some(1500), None);
}
