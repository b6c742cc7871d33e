//! Time-series layer: recorder commit/revert, merge, and a cursor that delivers every record
//! of its slice exactly once while commits and merges change the files under it.

use std::time::Duration;
use tlog::store::{TimeSeries, TimeSeriesOptions};

fn opts() -> TimeSeriesOptions {
    TimeSeriesOptions { target_file_bytes: 4096, reader_timeout: Duration::from_millis(50) }
}

fn record(ts: &TimeSeries, stamps: &[u64]) {
    let mut r = ts.recorder().unwrap();
    for &t in stamps {
        r.append(t, format!("rec-{t}").as_bytes()).unwrap();
    }
    r.commit().unwrap();
}

#[test]
fn commit_is_atomic_and_revert_leaves_nothing() {
    let d = tempfile::tempdir().unwrap();
    let ts = TimeSeries::open(d.path(), opts()).unwrap();
    let mut r = ts.recorder().unwrap();
    r.append(5, b"x").unwrap();
    r.append(3, b"y").unwrap();
    assert_eq!(ts.cursor(0, 100).unwrap().count(), 0, "uncommitted records are invisible");
    r.commit().unwrap();
    let got: Vec<u64> = ts.cursor(0, 100).unwrap().map(|r| r.unwrap().timestamp).collect();
    assert_eq!(got, vec![3, 5]);
    let mut r = ts.recorder().unwrap();
    r.append(7, b"z").unwrap();
    r.revert().unwrap();
    assert_eq!(ts.cursor(0, 100).unwrap().count(), 2);
    assert_eq!(std::fs::read_dir(d.path().join("tmp")).unwrap().count(), 0);
}

#[test]
fn cursor_exactly_once_across_commit_and_merge() {
    let d = tempfile::tempdir().unwrap();
    let ts = TimeSeries::open(d.path(), opts()).unwrap();
    // Overlapping small files: slice [1000, 3000).
    let mut want = Vec::new();
    for f in 0..20u64 {
        let stamps: Vec<u64> = (0..40u64).map(|i| 1000 + f * 90 + i * 3).collect();
        want.extend(stamps.iter().copied());
        record(&ts, &stamps);
    }
    want.sort();
    let mut cur = ts.cursor(1000, 3000).unwrap();
    let mut got = Vec::new();
    for _ in 0..100 {
        got.push(cur.next_record().unwrap().unwrap());
    }
    // Under the reader: a commit outside the slice and a merge of every file.
    record(&ts, &[10, 20, 5000]);
    assert!(ts.merge().unwrap() > 0);
    while let Some(r) = cur.next_record().unwrap() {
        got.push(r);
    }
    assert!(cur.reloads() > 0, "the cursor must have seen the metadata change");
    let stamps: Vec<u64> = got.iter().map(|r| r.timestamp).collect();
    assert_eq!(stamps, want, "every record of the slice exactly once, in order");
    let mut ids: Vec<u64> = got.iter().map(|r| r.id).collect();
    ids.dedup();
    assert_eq!(ids.len(), got.len());
    // After the merge no file overlaps another.
    let m = ts.meta().unwrap();
    let mut files = m.files.clone();
    files.sort_by_key(|f| f.first);
    for w in files.windows(2) {
        assert!(w[0].last < w[1].first, "merged files overlap");
    }
}

#[test]
fn cursor_concurrent_with_writer_thread() {
    let d = tempfile::tempdir().unwrap();
    let ts = std::sync::Arc::new(TimeSeries::open(d.path(), opts()).unwrap());
    let mut want = Vec::new();
    for f in 0..10u64 {
        let stamps: Vec<u64> = (0..50u64).map(|i| 10_000 + i * 10 + f).collect();
        want.extend(stamps.iter().copied());
        record(&ts, &stamps);
    }
    want.sort();
    let w = {
        let ts = ts.clone();
        std::thread::spawn(move || {
            for i in 0..15u64 {
                record(&ts, &[i, 50_000 + i]);
                ts.merge().unwrap();
            }
        })
    };
    let mut got = Vec::new();
    for r in ts.cursor(10_000, 20_000).unwrap() {
        got.push(r.unwrap().timestamp);
        std::thread::sleep(Duration::from_micros(200));
    }
    w.join().unwrap();
    assert_eq!(got, want);
}
