//! `tlog store verify` exits non-zero on a store with one flipped byte in a data file and
//! names the segment; `tlog store inspect` lists the segments.

mod common;
use common::*;
use std::process::Command;
use tlog::store::{BigLog, BigLogOptions};

#[test]
fn verify_names_the_corrupt_segment() {
    let d = tempfile::tempdir().unwrap();
    {
        let log = BigLog::open(d.path(), BigLogOptions { segment_bytes: 1 << 20, index_capacity: 64, ..Default::default() }).unwrap();
        for i in 0..20u32 {
            log.write(&vec![i as u8; 1000]).unwrap();
            if i == 9 {
                log.split().unwrap();
            }
        }
        log.sync().unwrap();
    }
    let o = run(Command::new(tlog_bin()).args(["store", "verify"]).arg(d.path()));
    assert!(o.status.success(), "clean store: {}", String::from_utf8_lossy(&o.stdout));
    let o = run(Command::new(tlog_bin()).args(["store", "inspect"]).arg(d.path()));
    assert_ok(&o, "inspect");
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("00000000000000000000") && text.contains("00000000000000000010"), "{text}");

    // Flip one byte in the middle of the first segment's data.
    let p = d.path().join("00000000000000000000.data");
    let mut b = std::fs::read(&p).unwrap();
    b[16 + 4 + 3 * 1004 + 10] ^= 0x01;
    std::fs::write(&p, b).unwrap();
    let o = run(Command::new(tlog_bin()).args(["store", "verify"]).arg(d.path()));
    assert!(!o.status.success(), "verify must fail on a flipped byte");
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("segment 00000000000000000000 offset 3"), "{text}");
}
