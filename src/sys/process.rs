//! Process-wide settings of the command-line tools.
#![allow(unsafe_code)]

/// Restores the default action of SIGPIPE (terminate), which the Rust runtime sets to ignore:
/// `tlog changed --json | head` then ends quietly as other Unix tools do, instead of failing
/// with "failed printing to stdout: Broken pipe". Call it first in `main`.
pub fn default_sigpipe() {
    // SAFETY: signal(2) with SIG_DFL installs no handler code; it only changes the disposition
    // of SIGPIPE, before any other thread exists (first thing in main).
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}
