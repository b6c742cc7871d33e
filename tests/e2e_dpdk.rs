//! Acceptance (dpdk mode, feature `dpdk`): tlogd on DPDK's net_tap PMD inside a network
//! namespace the test creates; eight vdisks imported at once (a real ext4 image), one client
//! killed mid-stream and started again; every restore exact. Runs scripts/netns-dpdk.sh (tlogd
//! in its own process: EAL initialises once per process).
//!
//! Runs with the config's 2 queues (each queue's poll loop on its own EAL lcore);
//! `TLOG_DPDK_QUEUES` overrides the count.
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
        .env("TLOG_DPDK_QUEUES", std::env::var("TLOG_DPDK_QUEUES").unwrap_or_else(|_| "2".into())));
    assert_ok(&o, "scripts/netns-dpdk.sh");
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("all 8 restored images are identical"), "{out}");
    assert!(out.contains("killed mid-stream"), "{out}");
    assert_fsck(&d.path().join("w/restored0.img"));
    let log = std::fs::read_to_string(d.path().join("w/tlogd.log")).unwrap_or_default();
    assert!(log.contains("dpdk queue 0:"), "per-queue statistics at exit: {log}");
    if std::env::var("TLOG_DPDK_QUEUES").map(|q| q == "2").unwrap_or(true) {
        assert!(log.contains("dpdk queue 1:"), "statistics of the second queue: {log}");
        assert!(log.contains("queue 1 on lcore"), "the second queue runs on its own lcore: {log}");
    }
}
