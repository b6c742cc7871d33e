//! Logging setup shared by `tlogd` and `tlog`: tracing to stderr, filtered by `TLOG_LOG`
//! (tracing's filter syntax, e.g. `TLOG_LOG=debug`), colours only on a terminal.

/// Installs the subscriber; `default` is the filter when `TLOG_LOG` is unset or invalid
/// (e.g. "info" for tlogd, "warn" for the CLI).
pub fn init(default: &str) {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("TLOG_LOG").unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default)))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}
