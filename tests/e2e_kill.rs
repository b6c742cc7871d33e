//! Acceptance: tlogd killed with SIGKILL in the middle of an import and started again: the
//! import completes through the client's reconnect and resend, and the restore is exact.

mod common;
use common::*;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn store_bytes(data: &std::path::Path) -> u64 {
    std::fs::read_dir(data.join("store/0"))
        .map(|r| {
            r.filter_map(|e| e.ok())
                .filter(|e| e.path().extension().map(|x| x == "data").unwrap_or(false))
                .map(|e| e.metadata().map(|m| m.len()).unwrap_or(0))
                .sum()
        })
        .unwrap_or(0)
}

#[test]
fn sigkill_mid_import_then_restart() {
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("data");
    let img = d.path().join("big.raw");
    mixed_image(&img, 160, 42);
    let mut t = Tlogd::start(&data, None, free_port());
    let mut imp = Command::new(tlog_bin())
        .args(["import", "--server", &t.addr(), "--vdisk", "killme"])
        .arg(&img)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Kill once some aggregations are durable but the import is still running.
    let end = Instant::now() + Duration::from_secs(60);
    while store_bytes(&data) < (8 << 20) && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(imp.try_wait().unwrap().is_none(), "import finished before the kill: make the image larger");
    t.kill9();
    std::thread::sleep(Duration::from_millis(500));
    t.restart();
    let out = imp.wait_with_output().unwrap();
    assert_ok(&out, "import across a tlogd SIGKILL");
    assert!(String::from_utf8_lossy(&out.stdout).contains("reconnects"), "the import should report its reconnect: {}", String::from_utf8_lossy(&out.stdout));
    t.stop();
    let r = d.path().join("restored.raw");
    assert_ok(&restore(None, &data, "killme", &r), "restore");
    assert_same(&img, &r);
}
