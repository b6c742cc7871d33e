//! A store segment made of arbitrary bytes (data file and index file), opened read-only and
//! read through: opening errors or serves only entries whose checksums hold; nothing panics.
#![no_main]
use libfuzzer_sys::fuzz_target;
use tlog::store::BigLog;

fuzz_target!(|data: &[u8]| {
    let Some((&cut, rest)) = data.split_first() else { return };
    let at = (cut as usize * rest.len() / 256).min(rest.len());
    let (d, i) = rest.split_at(at);
    let Ok(dir) = tempfile::tempdir() else { return };
    let seg = "00000000000000000000";
    if std::fs::write(dir.path().join(format!("{seg}.data")), d).is_err() || std::fs::write(dir.path().join(format!("{seg}.index")), i).is_err() {
        return;
    }
    let Ok(log) = BigLog::open_read_only(dir.path()) else { return };
    let (first, next) = (log.first_offset().unwrap_or(0), log.next_offset().unwrap_or(0));
    for o in first..next.min(first + 64) {
        let _ = log.read_at(o);
    }
    let _ = tlog::store::verify(&log);
});
