//! EAL lcores: the logical cores DPDK pins its threads to (EAL option `-l`; by default every
//! core of the machine). tlogd runs one queue's poll loop per lcore: queue 0 on the main lcore
//! (the thread that ran `rte_eal_init`), queue q on the q-th worker lcore, launched with
//! `rte_eal_remote_launch` (DPDK Programmer's Guide, "Environment Abstraction Layer").
//!
//! Why not plain threads: `rte_eal_init` pins the calling thread to the main lcore's core,
//! and threads it spawns inherit that affinity, so every poll thread shared one core (with 2
//! queues each ran half the time, in 4 ms scheduler slices, and ACKs left in bursts 4 ms
//! apart). EAL worker threads are pinned to their own cores and have lcore ids, which also
//! lets the mempool use its per-lcore cache.
#![allow(unsafe_code)]

use super::ffi;
use crate::error::{Error, Result};
use std::os::raw::{c_int, c_void};

/// The enabled lcores: the main lcore first, then the workers in id order. Call after EAL init.
pub fn lcores() -> Vec<u32> {
    // SAFETY: plain EAL queries after rte_eal_init; rte_get_next_lcore returns RTE_MAX_LCORE
    // (or more) past the last enabled lcore, which ends the loop.
    unsafe {
        let main = ffi::rte_get_main_lcore();
        let mut v = vec![main];
        let mut i = ffi::rte_get_next_lcore(u32::MAX, 1, 0);
        while (i as usize) < ffi::RTE_MAX_LCORE as usize {
            v.push(i);
            i = ffi::rte_get_next_lcore(i, 1, 0);
        }
        v
    }
}

/// The CPU an lcore is pinned to (its first CPU), for log lines.
pub fn cpu_of(lcore: u32) -> i32 {
    // SAFETY: an EAL query on an lcore id returned by `lcores`.
    unsafe { ffi::rte_lcore_to_cpu_id(lcore as c_int) }
}

type Job = Box<dyn FnOnce() + Send + 'static>;

extern "C" fn trampoline(arg: *mut c_void) -> c_int {
    // SAFETY: arg is the Box<Job> leaked by `launch` for this one call; EAL passes it back
    // exactly once, so taking ownership here frees it exactly once.
    let job: Box<Job> = unsafe { Box::from_raw(arg as *mut Job) };
    // A panic must not unwind into C.
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(job)) {
        Ok(()) => 0,
        Err(_) => -1,
    }
}

/// Runs `job` on worker lcore `lcore` (which must be idle); [`wait`] collects it.
/// Errors: the lcore is not a worker or is busy (EAL's return code).
pub fn launch(lcore: u32, job: impl FnOnce() + Send + 'static) -> Result<()> {
    let arg = Box::into_raw(Box::new(Box::new(job) as Job)) as *mut c_void;
    // SAFETY: trampoline matches lcore_function_t; arg is a leaked Box<Job> that trampoline
    // reclaims. On failure EAL did not take it, so we reclaim it here.
    let rc = unsafe { ffi::rte_eal_remote_launch(Some(trampoline), arg, lcore) };
    if rc != 0 {
        // SAFETY: the launch failed, arg was not handed to any lcore and is still ours.
        drop(unsafe { Box::from_raw(arg as *mut Job) });
        return Err(Error::Backend { backend: "dpdk".into(), detail: format!("rte_eal_remote_launch on lcore {lcore} failed (rc {rc})") });
    }
    Ok(())
}

/// Waits until the job on worker lcore `lcore` has returned; false when it panicked.
pub fn wait(lcore: u32) -> bool {
    // SAFETY: an EAL call on a worker lcore id; it blocks until the lcore's job returned.
    unsafe { ffi::rte_eal_wait_lcore(lcore) == 0 }
}
