//! Logging setup shared by `tlogd` and `tlog`: tracing to stderr, filtered by `TLOG_LOG`
//! (tracing's filter syntax, e.g. `TLOG_LOG=debug`), colours only on a terminal; with
//! `TLOG_LOG_FORMAT=json`, one JSON object per line (timestamp, level, target, fields with the
//! message), for journald and log shippers.
//!
//! A log line that cannot be written (stderr on a full disk) is dropped: the subscriber's own
//! report of that failure goes through `eprintln!`, which panics when stderr fails, and would
//! take the logging thread (an engine thread) down with it.

/// Installs the subscriber; `default` is the filter when `TLOG_LOG` is unset or invalid
/// (e.g. "info" for tlogd, "warn" for the CLI).
pub fn init(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("TLOG_LOG").unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let b = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).log_internal_errors(false);
    if std::env::var("TLOG_LOG_FORMAT").map(|v| v.eq_ignore_ascii_case("json")).unwrap_or(false) {
        b.json().with_ansi(false).init();
    } else {
        b.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())).init();
    }
}
