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

fn hot_data(dir: &std::path::Path) -> std::path::PathBuf {
    let mut v: Vec<_> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).filter(|p| p.extension().map(|x| x == "data").unwrap_or(false)).collect();
    v.sort();
    v.pop().unwrap()
}

/// A data file cut short after its entries were synced lost acknowledged data: verify must say
/// so (before the fix it said "every entry intact" and a reopen silently cut the index back).
/// Entries written after the last sync may be cut by a crash: that is not corruption.
#[test]
fn verify_reports_synced_entries_lost_to_truncation() {
    let d = tempfile::tempdir().unwrap();
    {
        let log = BigLog::open(d.path(), BigLogOptions { segment_bytes: 64 << 20, index_capacity: 256, direct_io: false, ..Default::default() }).unwrap();
        for i in 0..30u32 {
            log.write(&vec![i as u8; 100_000]).unwrap();
            log.sync().unwrap();
        }
    }
    let p = hot_data(d.path());
    let len = std::fs::metadata(&p).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(&p).unwrap().set_len(len / 4).unwrap();
    let o = run(Command::new(tlog_bin()).args(["store", "verify"]).arg(d.path()));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(!o.status.success(), "verify must fail when synced entries are gone: {text}");
    assert!(text.contains("synced entries lost"), "{text}");
    // Still reported after a writable open (it is damage, not a torn tail to cut silently).
    drop(BigLog::open(d.path(), BigLogOptions { direct_io: false, ..Default::default() }).unwrap());
    let o = run(Command::new(tlog_bin()).args(["store", "verify"]).arg(d.path()));
    assert!(!o.status.success(), "{}", String::from_utf8_lossy(&o.stdout));
}

#[test]
fn an_unsynced_tail_cut_by_a_crash_is_not_corruption() {
    let d = tempfile::tempdir().unwrap();
    let len_synced;
    {
        let log = BigLog::open(d.path(), BigLogOptions { segment_bytes: 64 << 20, index_capacity: 256, direct_io: false, ..Default::default() }).unwrap();
        for i in 0..10u32 {
            log.write(&vec![i as u8; 10_000]).unwrap();
        }
        log.sync().unwrap();
        len_synced = std::fs::metadata(hot_data(d.path())).unwrap().len();
        for i in 10..20u32 {
            log.write(&vec![i as u8; 10_000]).unwrap();
        }
        // No sync: a crash may lose these.
    }
    let p = hot_data(d.path());
    std::fs::OpenOptions::new().write(true).open(&p).unwrap().set_len(len_synced + 15_000).unwrap();
    let o = run(Command::new(tlog_bin()).args(["store", "verify"]).arg(d.path()));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stdout));
    let log = BigLog::open(d.path(), BigLogOptions { direct_io: false, ..Default::default() }).unwrap();
    assert_eq!(log.read_at(9).unwrap().unwrap().1, vec![9u8; 10_000]);
    assert!(log.read_at(11).unwrap().is_none(), "the torn entries are cut");
}

/// Readers open stores read-only: a restore changes nothing in any store directory (before the
/// fix it cut data files back and wrote a key map into each).
#[test]
fn restore_writes_nothing_into_the_stores() {
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("data");
    let img = d.path().join("a.raw");
    mixed_image(&img, 4, 4);
    let mut t = Tlogd::start(&data, None, free_port());
    assert_ok(&import(&t.addr(), "ro", &img), "import");
    t.kill9();
    let snapshot = |root: &std::path::Path| -> Vec<(String, u64, std::time::SystemTime)> {
        let mut v = Vec::new();
        for i in 0..6 {
            for e in std::fs::read_dir(root.join(format!("store/{i}"))).unwrap() {
                let e = e.unwrap();
                let m = e.metadata().unwrap();
                v.push((format!("{i}/{}", e.file_name().to_string_lossy()), m.len(), m.modified().unwrap()));
            }
        }
        v.sort();
        v
    };
    let before = snapshot(&data);
    let out = d.path().join("ro.img");
    assert_ok(&restore(None, &data, "ro", &out), "restore");
    assert_same(&img, &out);
    assert_eq!(snapshot(&data), before, "restore changed a store directory");
}
