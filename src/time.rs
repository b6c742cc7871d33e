//! Clocks (a leaf module: nothing here depends on the rest of the crate).
//!
//! Two readings: *wall* time in nanoseconds since the Unix epoch (what timestamps of blocks and
//! aggregations record) and a *monotonic* reading (what deadlines and `flush_time` are measured
//! in). Code that decides on time takes the reading as an argument, in smoltcp's style, so the
//! engine's transitions can be driven by a [`ManualClock`] in tests; the threads that call them
//! read a [`Clock`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Nanoseconds since the Unix epoch, now (0 if the system clock is before 1970).
pub fn now_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}

/// A source of time readings.
pub trait Clock: Send + Sync {
    /// Monotonic time since an arbitrary origin fixed for the clock's life.
    fn monotonic(&self) -> Duration;
    /// Wall time, ns since the Unix epoch.
    fn wall_ns(&self) -> u64;
}

/// The system's clocks.
#[derive(Debug)]
pub struct SystemClock {
    origin: Instant,
}

impl SystemClock {
    /// A system clock whose monotonic origin is now.
    pub fn new() -> SystemClock {
        SystemClock { origin: Instant::now() }
    }

    /// A shared system clock.
    pub fn shared() -> Arc<dyn Clock> {
        Arc::new(SystemClock::new())
    }
}

impl Default for SystemClock {
    fn default() -> Self {
        SystemClock::new()
    }
}

impl Clock for SystemClock {
    fn monotonic(&self) -> Duration {
        self.origin.elapsed()
    }

    fn wall_ns(&self) -> u64 {
        now_ns()
    }
}

/// A clock that moves only when told to (tests). Wall time starts at `wall_start_ns` and moves
/// with the monotonic reading.
#[derive(Debug, Default)]
pub struct ManualClock {
    mono_ns: AtomicU64,
    wall_start_ns: u64,
}

impl ManualClock {
    /// A manual clock at monotonic 0 and the given wall time (ns since the Unix epoch).
    pub fn new(wall_start_ns: u64) -> ManualClock {
        ManualClock { mono_ns: AtomicU64::new(0), wall_start_ns }
    }

    /// Moves the clock forward by `d`.
    pub fn advance(&self, d: Duration) {
        self.mono_ns.fetch_add(d.as_nanos() as u64, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn monotonic(&self) -> Duration {
        Duration::from_nanos(self.mono_ns.load(Ordering::SeqCst))
    }

    fn wall_ns(&self) -> u64 {
        self.wall_start_ns + self.mono_ns.load(Ordering::SeqCst)
    }
}

/// Parses a point in time: RFC 3339 with up to nanoseconds (`2026-12-01T08:00:00.5Z`, any
/// offset), or an integer of nanoseconds since the Unix epoch. Returns ns since the epoch.
///
/// Errors: a message naming the text and both accepted forms.
pub fn parse_time(s: &str) -> Result<u64, String> {
    let t = s.trim();
    if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
        return t.parse::<u64>().map_err(|e| format!("time {s:?}: {e}"));
    }
    // humantime takes `Z` (and no suffix) but would read a numeric offset as UTC: apply those
    // here first.
    let st = parse_rfc3339_offset(t)
        .or_else(|_| humantime::parse_rfc3339_weak(t).map_err(|_| ()))
        .map_err(|_| format!("time {s:?} is neither RFC 3339 (e.g. 2026-12-01T08:00:00.5Z) nor an integer of nanoseconds since the Unix epoch"))?;
    st.duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).map_err(|_| format!("time {s:?} is before the Unix epoch"))
}

/// RFC 3339 with a numeric offset (`+01:00`), which humantime's parser does not take: the
/// offset is applied to the UTC reading of the same digits.
fn parse_rfc3339_offset(t: &str) -> Result<SystemTime, ()> {
    let (body, sign, off) = match t.rfind(['+', '-']) {
        Some(i) if i > 16 && t.len() == i + 6 => (&t[..i], if &t[i..i + 1] == "+" { 1i64 } else { -1 }, &t[i + 1..]),
        _ => return Err(()),
    };
    let (h, m) = off.split_once(':').ok_or(())?;
    let secs = (h.parse::<i64>().map_err(|_| ())? * 3600 + m.parse::<i64>().map_err(|_| ())? * 60) * sign;
    let utc = humantime::parse_rfc3339_weak(body).map_err(|_| ())?;
    if secs >= 0 {
        utc.checked_sub(Duration::from_secs(secs as u64)).ok_or(())
    } else {
        utc.checked_add(Duration::from_secs((-secs) as u64)).ok_or(())
    }
}

/// RFC 3339 with nanoseconds, UTC.
pub fn format_time(ns: u64) -> String {
    humantime::format_rfc3339_nanos(UNIX_EPOCH + Duration::from_nanos(ns)).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_parse_in_both_forms() {
        assert_eq!(parse_time("1500000000000000000").unwrap(), 1_500_000_000_000_000_000);
        let t = parse_time("2026-12-01T08:00:00.5Z").unwrap();
        assert_eq!(t % 1_000_000_000, 500_000_000);
        assert_eq!(parse_time("2026-12-01T09:00:00.5+01:00").unwrap(), t);
        assert_eq!(parse_time("2026-12-01T07:00:00.5-01:00").unwrap(), t);
        assert_eq!(parse_time(&format_time(t)).unwrap(), t);
        assert_eq!(parse_time("2026-12-01T08:00:00.123456789Z").unwrap() % 1_000_000_000, 123_456_789);
        for bad in ["yesterday", "2026-13-01T00:00:00Z", "", "-5"] {
            let e = parse_time(bad).unwrap_err();
            assert!(e.contains("RFC 3339") || e.contains(bad), "{e}");
        }
    }

    #[test]
    fn manual_clock_moves_only_when_told() {
        let c = ManualClock::new(1000);
        assert_eq!((c.monotonic(), c.wall_ns()), (Duration::ZERO, 1000));
        c.advance(Duration::from_millis(5));
        assert_eq!((c.monotonic(), c.wall_ns()), (Duration::from_millis(5), 5_001_000));
    }
}
