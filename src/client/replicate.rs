//! Continuous replication: a standby image kept in sync with a vdisk through follow-mode
//! playback from tlogd.
//!
//! The state file holds the last sequence applied, and is written (with
//! [`crate::fs::write_atomic`]) only after the image was fdatasync'd, so after a kill the
//! replica resumes from a point its image surely holds (blocks applied after it are applied
//! again, in order: the image ends the same). With a delay the replica applies a block only once
//! its timestamp is that far in the past (a delayed replica, to step back from a mistake before
//! it reaches the standby). A lost connection is retried with backoff.

use super::remote::{Item, Playback};
use crate::error::{Error, IoContext, Result};
use crate::history::restore::ImageWriter;
use crate::time::now_ns;
use crate::wire::{PlaybackRequest, PointSpec};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Replication settings.
#[derive(Clone, Debug)]
pub struct ReplicateOptions {
    /// tlogd address.
    pub server: String,
    /// Auth token.
    pub token: String,
    /// The vdisk.
    pub vdisk: String,
    /// The standby image.
    pub output: PathBuf,
    /// The state file (default: `<output>.state`).
    pub state: PathBuf,
    /// Apply a block only once it is this old.
    pub delay: Duration,
    /// Catch up to the current head, then stop.
    pub once: bool,
    /// Largest image (blocks past it are skipped and reported).
    pub max_image_bytes: u64,
    /// Image syncs (and state writes) at most this often.
    pub sync_every: Duration,
    /// Give up when tlogd stays unreachable this long.
    pub reconnect_timeout: Duration,
}

/// What a replication did (so far).
#[derive(Clone, Copy, Debug, Default)]
pub struct Progress {
    /// The last sequence applied and synced.
    pub applied: Option<u64>,
    /// The vdisk's head, as last reported.
    pub head: Option<u64>,
    /// Age of the last applied block, ns.
    pub lag_ns: u64,
}

/// Reads the state file: the last applied sequence (`None`: nothing yet).
pub fn read_state(p: &Path) -> Result<Option<u64>> {
    match std::fs::read_to_string(p) {
        Ok(s) => s.trim().parse().map(Some).map_err(|_| Error::Format { path: p.into(), detail: "not a sequence number".into() }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(format!("read {}", p.display()), e)),
    }
}

/// Replicates until caught up (`once`), `stop` is set, or an error that does not pass; calls
/// `report` about once a second with the progress. Errors: tlogd refused (a bad vdisk), stayed
/// unreachable, or the image cannot be written.
pub fn replicate(o: &ReplicateOptions, stop: &AtomicBool, report: &mut dyn FnMut(&Progress)) -> Result<Progress> {
    let mut p = Progress { applied: read_state(&o.state)?, ..Default::default() };
    let fresh = p.applied.is_none();
    let f = std::fs::OpenOptions::new().create(true).truncate(fresh).read(true).write(true).open(&o.output).ctx(|| format!("open {}", o.output.display()))?;
    let mut lost_since: Option<Instant> = None;
    let mut delay = Duration::from_millis(100);
    loop {
        if stop.load(Ordering::SeqCst) {
            return Ok(p);
        }
        let req = PlaybackRequest { from: p.applied.map(PointSpec::Sequence).unwrap_or(PointSpec::None), to: PointSpec::None, follow: !o.once };
        let r = run_once(o, &f, &req, &mut p, stop, report);
        match r {
            Ok(true) => return Ok(p),
            Ok(false) => return Ok(p),
            Err(e @ Error::Refused { .. }) => return Err(e),
            Err(e) => {
                let since = *lost_since.get_or_insert_with(Instant::now);
                if since.elapsed() > o.reconnect_timeout {
                    return Err(e);
                }
                tracing::warn!(vdisk = %o.vdisk, "replication interrupted ({e}); resuming after sequence {:?}", p.applied);
                std::thread::sleep(delay);
                delay = (delay * 2).min(Duration::from_secs(2));
            }
        }
        if p.applied.is_some() {
            lost_since = None;
        }
    }
}

/// One connection's worth: returns Ok(true) at the end of a `once` run, Ok(false) when stopped.
fn run_once(
    o: &ReplicateOptions,
    f: &std::fs::File,
    req: &PlaybackRequest,
    p: &mut Progress,
    stop: &AtomicBool,
    report: &mut dyn FnMut(&Progress),
) -> Result<bool> {
    let mut pb = Playback::open(&o.server, &o.token, &o.vdisk, req.clone())?;
    let mut w = ImageWriter::new(f, &o.output, o.max_image_bytes);
    w.assume_written(f.metadata().map(|m| m.len()).unwrap_or(0));
    let mut last_sync = Instant::now();
    let mut last_report = Instant::now();
    let mut unsynced: Option<u64> = None;
    let sync = |w: &mut ImageWriter<'_>, upto: Option<u64>, p: &mut Progress| -> Result<()> {
        if let Some(s) = upto {
            w.finish()?;
            crate::fs::write_atomic(&o.state, s.to_string().as_bytes())?;
            p.applied = Some(s);
        }
        Ok(())
    };
    loop {
        if stop.load(Ordering::SeqCst) {
            sync(&mut w, unsynced.take(), p)?;
            return Ok(false);
        }
        let Some(item) = pb.next_item()? else {
            sync(&mut w, unsynced.take(), p)?;
            return Ok(true);
        };
        match item {
            Item::Block(b) => {
                if !o.delay.is_zero() {
                    // Held back until it is old enough; what was applied meanwhile is synced
                    // and the lag reported while it waits.
                    let due = b.timestamp.saturating_add(o.delay.as_nanos() as u64);
                    loop {
                        let now = now_ns();
                        if now >= due {
                            break;
                        }
                        if stop.load(Ordering::SeqCst) {
                            sync(&mut w, unsynced.take(), p)?;
                            return Ok(false);
                        }
                        if last_sync.elapsed() >= o.sync_every {
                            sync(&mut w, unsynced.take(), p)?;
                            last_sync = Instant::now();
                        }
                        if last_report.elapsed() >= Duration::from_secs(1) {
                            p.lag_ns = now.saturating_sub(b.timestamp);
                            report(p);
                            last_report = Instant::now();
                        }
                        std::thread::sleep(Duration::from_nanos(due.saturating_sub(now)).min(Duration::from_millis(100)));
                    }
                }
                w.apply(&b, &o.vdisk)?;
                unsynced = Some(b.sequence);
                p.lag_ns = now_ns().saturating_sub(b.timestamp);
            }
            Item::Head(h) => p.head = Some(h),
            Item::End(_) => {
                sync(&mut w, unsynced.take(), p)?;
                return Ok(true);
            }
        }
        if last_sync.elapsed() >= o.sync_every {
            sync(&mut w, unsynced.take(), p)?;
            last_sync = Instant::now();
        }
        if last_report.elapsed() >= Duration::from_secs(1) {
            report(p);
            last_report = Instant::now();
        }
    }
}
