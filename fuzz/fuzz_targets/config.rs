//! The config parser over arbitrary text: parse errors, never panics; what parses validates.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(c) = tlog::config::Config::parse(text, "fuzz") {
        c.validate().unwrap();
        let _ = c.upkeep.scrub_interval().unwrap();
    }
});
