//! Keeping DPDK's receive signals on the poll loops.
//!
//! The net_tap PMD has the kernel signal the process on every received burst (its receive
//! path reads only after the signal bumped its trigger, DPDK `drivers/net/tap/rte_eth_tap.c`;
//! SIGIO, or a real-time signal set with F_SETSIG). The signal goes to the process, and the
//! kernel hands it to any thread that does not block it: a Redis connection's system call was
//! then interrupted (EINTR) and the shard write failed, often enough that aggregations waited
//! for quorum retries. tlogd therefore blocks SIGIO and the real-time signals before it starts
//! any thread in dpdk mode ([`block_sigio`]; threads inherit the mask) and unblocks them in
//! each poll loop ([`unblock_sigio`]), so only the threads that want the signals receive them.
//! (glibc keeps its own internal signals out of any set, so they are unaffected.)

use crate::error::{Error, Result};

fn set(how: libc::c_int) -> Result<()> {
    // SAFETY: sigset_t is plain data, initialised by sigemptyset before use; pthread_sigmask
    // only changes the calling thread's mask and the old-mask pointer may be null.
    let rc = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGIO);
        for sig in libc::SIGRTMIN()..=libc::SIGRTMAX() {
            libc::sigaddset(&mut set, sig);
        }
        libc::pthread_sigmask(how, &set, std::ptr::null_mut())
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(Error::io("pthread_sigmask(SIGIO, SIGRTMIN..SIGRTMAX)", std::io::Error::from_raw_os_error(rc)))
    }
}

/// Blocks SIGIO and the real-time signals in the calling thread and in every thread it starts afterwards.
pub fn block_sigio() -> Result<()> {
    set(libc::SIG_BLOCK)
}

/// Unblocks them in the calling thread (a poll loop).
pub fn unblock_sigio() -> Result<()> {
    set(libc::SIG_UNBLOCK)
}
