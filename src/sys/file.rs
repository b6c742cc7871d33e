//! File calls that rustix does not wrap.
#![allow(unsafe_code)]

use std::os::fd::AsRawFd;

/// Starts the writeback of the dirty pages of `file` in `[offset, offset + len)` without
/// waiting for it (`sync_file_range(2)` with `SYNC_FILE_RANGE_WRITE`), so that a later
/// fdatasync finds less to write. It makes nothing durable (no metadata, no device cache
/// flush). Errors: those of sync_file_range(2) (EBADF, EINVAL, EIO, ENOSPC, ESPIPE).
pub fn start_writeback(file: &std::fs::File, offset: u64, len: u64) -> std::io::Result<()> {
    let (Ok(off), Ok(n)) = (i64::try_from(offset), i64::try_from(len)) else {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "range past i64"));
    };
    // SAFETY: sync_file_range(2) takes a file descriptor, which `file` keeps open for the
    // call, and plain integers; it touches no memory of this process.
    let r = unsafe { libc::sync_file_range(file.as_raw_fd(), off, n, libc::SYNC_FILE_RANGE_WRITE) };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}
