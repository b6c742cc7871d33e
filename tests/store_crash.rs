//! Crash matrix: truncate the last entry's data and index at every byte, flip every bit of
//! data and index; reopen; no corrupt byte is served and every intact entry before the damage
//! is still readable.

use std::path::Path;
use tlog::store::{BigLog, BigLogOptions};

const SEG: &str = "00000000000000000000";

fn opts() -> BigLogOptions {
    BigLogOptions { segment_bytes: 1 << 20, index_capacity: 16, ..Default::default() }
}

/// Builds a log of 5 entries (7 offsets); returns (data bytes, index bytes, expected records).
fn build() -> (Vec<u8>, Vec<u8>, Vec<Vec<u8>>) {
    let d = tempfile::tempdir().unwrap();
    let log = BigLog::open(d.path(), opts()).unwrap();
    let mut recs: Vec<Vec<u8>> = Vec::new();
    for i in 0..4u8 {
        let r = vec![i; 5 + i as usize];
        log.write_n_at(&[&r], 1000 + i as u64).unwrap();
        recs.push(r);
    }
    let a = vec![0xAA; 9];
    let b = vec![0xBB; 3];
    let c = vec![0xCC; 6];
    log.write_n_at(&[&a, &b, &c], 2000).unwrap();
    recs.extend([a, b, c]);
    log.sync().unwrap();
    drop(log);
    let data = std::fs::read(d.path().join(format!("{SEG}.data"))).unwrap();
    let index = std::fs::read(d.path().join(format!("{SEG}.index"))).unwrap();
    (data, index, recs)
}

fn write(dir: &Path, data: &[u8], index: &[u8]) {
    std::fs::write(dir.join(format!("{SEG}.data")), data).unwrap();
    std::fs::write(dir.join(format!("{SEG}.index")), index).unwrap();
}

/// Offsets of entries: entry k holds offsets OFFS[k].
const ENTRY_OF: [usize; 7] = [0, 1, 2, 3, 4, 4, 4];

/// Reads every offset; asserts no wrong bytes; returns which offsets were readable.
fn check(dir: &Path, recs: &[Vec<u8>]) -> Option<Vec<bool>> {
    let log = match BigLog::open(dir, opts()) {
        Ok(l) => l,
        Err(_) => return None, // refusing to open serves nothing
    };
    let mut ok = Vec::new();
    for (o, want) in recs.iter().enumerate() {
        match log.read_at(o as u64) {
            Ok(Some((_, got))) => {
                assert_eq!(&got, want, "offset {o} served wrong bytes");
                ok.push(true);
            }
            _ => ok.push(false),
        }
    }
    // A reopened log accepts writes and reads them back.
    let off = log.write(b"after").unwrap();
    assert_eq!(log.read_at(off).unwrap().unwrap().1, b"after");
    Some(ok)
}

#[test]
fn truncate_last_entry_data_at_every_byte() {
    let (data, index, recs) = build();
    let total: usize = recs[4..].iter().map(|r| r.len() + 4).sum();
    let start = data.len() - total;
    for cut in start..data.len() {
        let d = tempfile::tempdir().unwrap();
        write(d.path(), &data[..cut], &index);
        let ok = check(d.path(), &recs).expect("a torn tail must not prevent opening");
        assert!(ok[..4].iter().all(|x| *x), "cut at {cut}: entries before the torn one lost: {ok:?}");
        assert!(ok[4..].iter().all(|x| !*x), "cut at {cut}: torn entry served");
    }
}

#[test]
fn truncate_last_entry_index_at_every_byte() {
    let (data, index, recs) = build();
    // Slots: 32-byte header, then slot 4 (last entry) and slot 5 (marker).
    let slot4 = 32 + 4 * 32;
    for cut in slot4..slot4 + 64 {
        for mode in ["zero", "truncate"] {
            let d = tempfile::tempdir().unwrap();
            let mut idx = index.clone();
            if mode == "zero" {
                for b in &mut idx[cut..slot4 + 64] {
                    *b = 0;
                }
            } else {
                idx.truncate(cut);
            }
            write(d.path(), &data, &idx);
            let ok = check(d.path(), &recs).expect("a torn index tail must not prevent opening");
            assert!(ok[..4].iter().all(|x| *x), "{mode} at {cut}: earlier entries lost: {ok:?}");
        }
    }
}

#[test]
fn flip_every_bit_of_data() {
    let (data, index, recs) = build();
    for byte in 0..data.len() {
        for bit in 0..8 {
            let d = tempfile::tempdir().unwrap();
            let mut dd = data.clone();
            dd[byte] ^= 1 << bit;
            write(d.path(), &dd, &index);
            let Some(ok) = check(d.path(), &recs) else {
                assert!(byte < 16, "only a header flip may refuse the open (byte {byte})");
                continue;
            };
            // The damaged entry is the one whose data holds the byte.
            let mut pos = 16usize;
            let mut damaged = usize::MAX;
            for (k, r) in [&recs[0], &recs[1], &recs[2], &recs[3]].iter().enumerate() {
                if byte >= pos && byte < pos + 4 + r.len() {
                    damaged = k;
                }
                pos += 4 + r.len();
            }
            if byte >= pos {
                damaged = 4;
            }
            for (o, r) in ok.iter().enumerate() {
                if ENTRY_OF[o] != damaged {
                    assert!(*r, "flip {byte}:{bit} lost intact offset {o}");
                }
            }
        }
    }
}

#[test]
fn flip_every_bit_of_index() {
    let (data, index, recs) = build();
    let used = 32 + 6 * 32;
    for byte in 0..used {
        for bit in 0..8 {
            let d = tempfile::tempdir().unwrap();
            let mut ii = index.clone();
            ii[byte] ^= 1 << bit;
            write(d.path(), &data, &ii);
            let Some(ok) = check(d.path(), &recs) else {
                assert!(byte < 32, "only a header flip may refuse the open (byte {byte})");
                continue;
            };
            if byte >= 32 {
                let slot = (byte - 32) / 32;
                for (o, r) in ok.iter().enumerate() {
                    if ENTRY_OF[o] < slot {
                        assert!(*r, "index flip {byte}:{bit} (slot {slot}) lost intact offset {o}");
                    }
                }
            }
        }
    }
}
