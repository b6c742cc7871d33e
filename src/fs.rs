//! Files that must survive a power cut (a leaf module).
//!
//! DESIGN.md §5: every such file is written with one helper, [`write_atomic`]: write a
//! temporary file beside it, fsync it, rename it into place, fsync the directory. A reader then
//! sees either the old bytes or the new ones, and after the directory fsync the new name is
//! durable too (without it a power cut can bring back the old file, e.g. an older epoch).

use crate::error::{IoContext, Result};
use std::io::Write;
use std::path::Path;

/// Replaces `path` with `bytes` atomically and durably (see the module doc). The temporary file
/// is `<path>.tmp`; a leftover one from a crash is overwritten.
///
/// Errors: [`crate::Error::Io`] naming the step and the path.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    #[cfg(feature = "failpoints")]
    fail::fail_point!("fs::write_atomic", crate::failpoint_action);
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    {
        let mut f = std::fs::File::create(&tmp).ctx(|| format!("create {}", tmp.display()))?;
        f.write_all(bytes).ctx(|| format!("write {}", tmp.display()))?;
        f.sync_all().ctx(|| format!("fsync {}", tmp.display()))?;
    }
    std::fs::rename(&tmp, path).ctx(|| format!("rename {} to {}", tmp.display(), path.display()))?;
    sync_dir(path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new(".")))
}

/// Fsyncs a directory so created, renamed or removed entries in it are durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    #[cfg(feature = "failpoints")]
    fail::fail_point!("fs::sync_dir", crate::failpoint_action);
    std::fs::File::open(dir).and_then(|d| d.sync_all()).ctx(|| format!("fsync directory {}", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_atomic_replaces_and_leaves_no_temporary() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("epoch");
        write_atomic(&p, b"1").unwrap();
        write_atomic(&p, b"22").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"22");
        assert!(!d.path().join("epoch.tmp").exists());
        let e = write_atomic(&d.path().join("no/such/dir/f"), b"x").unwrap_err().to_string();
        assert!(e.contains("create") && e.contains("no/such/dir"), "{e}");
    }
}
