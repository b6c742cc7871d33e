//! Property tests of BigLog write / write_n / read / split / trim / seek-by-time / reopen
//! against a simple in-memory model.

use proptest::prelude::*;
use tlog::store::{BigLog, BigLogOptions, Scanner};

#[derive(Clone, Debug)]
enum Op {
    Write(Vec<u8>, u64),
    WriteN(Vec<Vec<u8>>, u64),
    Split,
    Trim,
    Sync,
    Reopen,
    Seek(u64),
    ReadAt(u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (proptest::collection::vec(any::<u8>(), 0..40), 0u64..5).prop_map(|(d, dt)| Op::Write(d, dt)),
        2 => (proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..20), 1..5), 0u64..5).prop_map(|(d, dt)| Op::WriteN(d, dt)),
        1 => Just(Op::Split),
        1 => Just(Op::Trim),
        1 => Just(Op::Sync),
        1 => Just(Op::Reopen),
        2 => (0u64..200).prop_map(Op::Seek),
        2 => (0u64..60).prop_map(Op::ReadAt),
    ]
}

/// Model: segments of (offset, timestamp, bytes).
struct Model {
    segments: Vec<Vec<(u64, u64, Vec<u8>)>>,
    /// Base offset of each segment.
    bases: Vec<u64>,
    next: u64,
    ts: u64,
}

impl Model {
    fn all(&self) -> Vec<(u64, u64, Vec<u8>)> {
        self.segments.iter().flatten().cloned().collect()
    }
}

fn opts() -> BigLogOptions {
    BigLogOptions { segment_bytes: 1 << 30, index_capacity: 1024, ..Default::default() }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]
    #[test]
    fn biglog_matches_model(ops in proptest::collection::vec(op(), 1..60)) {
        let dir = tempfile::tempdir().unwrap();
        let mut log = Some(BigLog::open(dir.path(), opts()).unwrap());
        let mut m = Model { segments: vec![Vec::new()], bases: vec![0], next: 0, ts: 100 };
        for op in ops {
            let l = log.as_ref().unwrap();
            match op {
                Op::Write(d, dt) => {
                    m.ts += dt;
                    let off = l.write_n_at(&[&d], m.ts).unwrap();
                    prop_assert_eq!(off, m.next);
                    m.segments.last_mut().unwrap().push((off, m.ts, d));
                    m.next += 1;
                }
                Op::WriteN(ds, dt) => {
                    m.ts += dt;
                    let refs: Vec<&[u8]> = ds.iter().map(|d| d.as_slice()).collect();
                    let off = l.write_n_at(&refs, m.ts).unwrap();
                    prop_assert_eq!(off, m.next);
                    for d in ds {
                        m.segments.last_mut().unwrap().push((m.next, m.ts, d));
                        m.next += 1;
                    }
                }
                Op::Split => {
                    l.split().unwrap();
                    if !m.segments.last().unwrap().is_empty() {
                        m.segments.push(Vec::new());
                        m.bases.push(m.next);
                    }
                }
                Op::Trim => {
                    let r = l.trim();
                    if m.segments.len() > 1 {
                        r.unwrap();
                        m.segments.remove(0);
                        m.bases.remove(0);
                    } else {
                        prop_assert!(r.is_err());
                    }
                }
                Op::Sync => l.sync().unwrap(),
                Op::Reopen => {
                    l.sync().unwrap();
                    drop(log.take());
                    log = Some(BigLog::open(dir.path(), opts()).unwrap());
                }
                Op::Seek(t) => {
                    let want = m.all().iter().find(|e| e.1 >= t).map(|e| e.0).unwrap_or(m.next);
                    prop_assert_eq!(l.seek_time(t).unwrap(), want);
                }
                Op::ReadAt(o) => {
                    let all = m.all();
                    prop_assert_eq!(l.first_offset().unwrap(), m.bases[0]);
                    match all.iter().find(|e| e.0 == o) {
                        Some(e) => prop_assert_eq!(l.read_at(o).unwrap(), Some((e.1, e.2.clone()))),
                        None if o < m.bases[0] => prop_assert!(l.read_at(o).is_err()),
                        None => prop_assert_eq!(l.read_at(o).unwrap(), None),
                    }
                }
            }
            let l = log.as_ref().unwrap();
            prop_assert_eq!(l.next_offset().unwrap(), m.next);
        }
        // A full scan from 0 yields exactly the model's records.
        let l = log.as_ref().unwrap();
        let got: Vec<(u64, u64, Vec<u8>)> = Scanner::new(l, 0).map(|r| { let r = r.unwrap(); (r.offset, r.timestamp, r.data) }).collect();
        prop_assert_eq!(got, m.all());
    }
}
