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

/// Whether this process can create a network namespace (`unshare -n` as root, `-rn` without);
/// reports the skip when not.
fn netns_ok() -> bool {
    let root = Command::new("id").arg("-u").output().map(|o| o.stdout.starts_with(b"0")).unwrap_or(false);
    let flag = if root { "-n" } else { "-rn" };
    let ok = Command::new("unshare").args([flag, "true"]).status().map(|s| s.success()).unwrap_or(false);
    if !ok {
        skip("cannot create a network namespace (unshare refused)");
    }
    ok
}

/// `scripts/netns-dpdk.sh IMAGE WORK VDISKS` with this build's binaries; callers add their
/// scenario's environment.
fn netns_dpdk(img: &std::path::Path, work: &std::path::Path, vdisks: usize) -> Command {
    let mut c = Command::new("bash");
    c.arg(repo().join("scripts/netns-dpdk.sh")).arg(img).arg(work).arg(vdisks.to_string()).env("TLOG_BIN_DIR", tlogd_bin().parent().unwrap());
    c
}

#[test]
fn dpdk_net_tap_two_queues_eight_vdisks() {
    if !netns_ok() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let Some(img) = ext4_image(&d.path().join("disk.img"), 64) else { return };
    let o = run(netns_dpdk(&img, &d.path().join("w"), 8)
        .env("TLOG_KILL_CLIENT", "1")
        .env("TLOG_DPDK_QUEUES", std::env::var("TLOG_DPDK_QUEUES").unwrap_or_else(|_| "2".into())));
    assert_ok(&o, "scripts/netns-dpdk.sh");
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("all 8 restored images are identical"), "{out}");
    assert!(out.contains("the restore through tlogd's playback is identical"), "{out}");
    assert!(out.contains("killed mid-stream"), "{out}");
    assert_fsck(&d.path().join("w/restored0.img"));
    let log = std::fs::read_to_string(d.path().join("w/tlogd.log")).unwrap_or_default();
    assert!(log.contains("dpdk queue 0:"), "per-queue statistics at exit: {log}");
    if std::env::var("TLOG_DPDK_QUEUES").map(|q| q == "2").unwrap_or(true) {
        assert!(log.contains("dpdk queue 1:"), "statistics of the second queue: {log}");
        assert!(log.contains("queue 1 on lcore"), "the second queue runs on its own lcore: {log}");
    }
}

/// Sum of a per-queue counter over the exit statistics, e.g. "chained" in
/// "rx 5 packets 446 bytes (3 chained)".
fn queue_counter(log: &str, label: &str) -> u64 {
    log.lines()
        .filter(|l| l.contains("dpdk queue") && l.contains(" packets "))
        .filter_map(|l| {
            let end = l.find(label)?;
            let open = l[..end].rfind('(')?;
            l[open + 1..end].trim().parse::<u64>().ok()
        })
        .sum()
}

/// A stack MTU of 65521 over net_tap (which takes 1500): the clients' 64 KiB segments arrive as
/// mbuf chains, and tlogd's acks, piled up behind a client that stops reading, leave as long
/// frames the PMD segments (TSO). Restores stay exact and the slow client gets every ack.
///
/// Whether a piled-up ack leaves longer than 1500 bytes depends on how the slow client's
/// kernel reopens its tiny window, which is timing: about 1 run in 15 sent every ack in short
/// segments. Every run must be correct; the scenario runs up to 3 times until one shows TSO.
#[test]
fn dpdk_large_mtu_chains_and_segmentation_offload() {
    if !netns_ok() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let img = d.path().join("mixed.raw");
    mixed_image(&img, 32, 5);
    let mut segmented = 0;
    let mut logs = Vec::new();
    for attempt in 0..3 {
        let w = d.path().join(format!("w{attempt}"));
        let o = run(netns_dpdk(&img, &w, 2).env("TLOG_DPDK_MTU", "65521").env("TLOG_SLOW_CLIENT", "1"));
        assert_ok(&o, "scripts/netns-dpdk.sh");
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(out.contains("all 2 restored images are identical"), "{out}");
        assert!(out.contains("last ack present"), "{out}");
        let log = std::fs::read_to_string(w.join("tlogd.log")).unwrap_or_default();
        assert!(log.contains("MTU 65521 bytes (stack), 1500 (port)"), "{log}");
        assert!(queue_counter(&log, "chained") > 0, "no frame arrived as an mbuf chain: {log}");
        let queue_lines: Vec<&str> = log.lines().filter(|l| l.contains("dpdk queue") && l.contains(" packets ")).collect();
        assert!(!queue_lines.is_empty() && queue_lines.iter().all(|l| l.contains("oversize drops 0,")), "{log}");
        segmented = queue_counter(&log, "segmented by the port");
        logs.push(log);
        if segmented > 0 {
            break;
        }
    }
    assert!(segmented > 0, "no frame left with TSO in {} runs: {}", logs.len(), logs.join("\n---\n"));
}
