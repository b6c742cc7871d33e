//! Repair (DESIGN.md §14): shards missing because a backend was down, stalled or refusing when
//! their aggregation was written are recorded in a persistent queue, and re-protected later
//! from any k good shards: the sealed bytes are rebuilt, the missing shard is re-encoded byte
//! for byte and written, with the aggregation's head record (backends keep the newest head, so
//! an old one written late changes nothing).
//!
//! The queue is `<data_dir>/repair.log`, one aggregation per line:
//! `v2 <vdisk> <key hex> <height> <epoch> <head record hex> <shard indices, comma-separated>`
//! (lines `<vdisk> <key hex> <indices>` of older versions are read too and repaired without the
//! head). New entries are appended and fsync'd; the file is rewritten (atomically) as entries are
//! repaired, so a restart resumes where repair stopped. In tlogd a background thread repairs at
//! most `upkeep.repair_rate_mib` MiB/s and leaves a backend alone while it is degraded or failing;
//! `tlog repair` runs the same repairs offline ([`repair_all`]).

use crate::backend::{Backend, HeadWrite, Key, ShardWrite};
use crate::error::{Error, Result};
use crate::seal::{fetch_shards, Sealer};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// One aggregation with shards to repair.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The vdisk.
    pub vdisk: String,
    /// The aggregation's key.
    pub key: Key,
    /// Its chain height (0 when unknown: a line of an older version).
    pub height: u64,
    /// Its epoch.
    pub epoch: u64,
    /// Its encoded head record (empty when unknown).
    pub head: Vec<u8>,
    /// Shard indices (= backends) that miss it.
    pub missing: Vec<usize>,
}

impl Entry {
    fn line(&self) -> String {
        let idx: Vec<String> = self.missing.iter().map(|i| i.to_string()).collect();
        format!("v2 {} {} {} {} {} {}\n", self.vdisk, hex::encode(self.key), self.height, self.epoch, hex::encode(&self.head), idx.join(","))
    }

    /// Parses one queue line (either version); `None` when it is not one.
    pub fn parse(line: &str) -> Option<Entry> {
        let f: Vec<&str> = line.split_whitespace().collect();
        let key = |s: &str| -> Option<Key> { hex::decode(s).ok()?.try_into().ok() };
        let idx = |s: &str| -> Option<Vec<usize>> { s.split(',').map(|x| x.parse().ok()).collect() };
        match f.as_slice() {
            ["v2", v, k, h, e, head, i] => Some(Entry {
                vdisk: v.to_string(),
                key: key(k)?,
                height: h.parse().ok()?,
                epoch: e.parse().ok()?,
                head: hex::decode(head).ok()?,
                missing: idx(i)?,
            }),
            [v, k, i] => Some(Entry { vdisk: v.to_string(), key: key(k)?, height: 0, epoch: 0, head: Vec::new(), missing: idx(i)? }),
            _ => None,
        }
    }
}

/// The persistent repair queue.
pub struct Queue {
    path: PathBuf,
    entries: Mutex<Vec<Entry>>,
    cond: Condvar,
}

impl Queue {
    /// Opens (creating) the queue file `path` and loads its entries; unreadable lines are
    /// logged and skipped.
    pub fn open(path: &Path) -> Result<Queue> {
        let mut entries: Vec<Entry> = Vec::new();
        match std::fs::read_to_string(path) {
            Ok(s) => {
                for (n, l) in s.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
                    match Entry::parse(l) {
                        Some(e) => merge(&mut entries, e),
                        None => tracing::warn!(file = %path.display(), line = n + 1, "unreadable repair queue line skipped"),
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(format!("read {}", path.display()), e)),
        }
        if !entries.is_empty() {
            tracing::info!(file = %path.display(), "{} aggregations wait for repair", entries.len());
        }
        Ok(Queue { path: path.to_path_buf(), entries: Mutex::new(entries), cond: Condvar::new() })
    }

    /// Records an entry (appended to the file and fsync'd, then queued).
    pub fn record(&self, e: Entry) {
        let r = std::fs::OpenOptions::new().create(true).append(true).open(&self.path).and_then(|mut f| {
            f.write_all(e.line().as_bytes())?;
            f.sync_data()
        });
        if let Err(err) = r {
            tracing::error!(file = %self.path.display(), "repair queue append failed (a scrub finds the shard): {err}");
        }
        merge(&mut super::lock(&self.entries), e);
        self.cond.notify_all();
    }

    /// The entries waiting.
    pub fn snapshot(&self) -> Vec<Entry> {
        super::lock(&self.entries).clone()
    }

    /// Shards waiting for repair.
    pub fn backlog(&self) -> usize {
        super::lock(&self.entries).iter().map(|e| e.missing.len()).sum()
    }

    /// Marks shard `index` of `key` repaired (or given up); rewrites the file when anything
    /// changed.
    pub fn done(&self, key: &Key, indices: &[usize]) -> Result<()> {
        let mut g = super::lock(&self.entries);
        let before = g.iter().map(|e| e.missing.len()).sum::<usize>();
        for e in g.iter_mut().filter(|e| &e.key == key) {
            e.missing.retain(|i| !indices.contains(i));
        }
        g.retain(|e| !e.missing.is_empty());
        if g.iter().map(|e| e.missing.len()).sum::<usize>() == before {
            return Ok(());
        }
        let text: String = g.iter().map(Entry::line).collect();
        crate::fs::write_atomic(&self.path, text.as_bytes())
    }

    /// Waits until an entry is recorded, at most `timeout`.
    pub fn wait(&self, timeout: Duration) {
        let g = super::lock(&self.entries);
        let _ = self.cond.wait_timeout(g, timeout);
    }

    /// Wakes a waiting repairer (shutdown).
    pub fn wake(&self) {
        self.cond.notify_all();
    }
}

fn merge(entries: &mut Vec<Entry>, e: Entry) {
    match entries.iter_mut().find(|x| x.key == e.key) {
        Some(x) => {
            for i in e.missing {
                if !x.missing.contains(&i) {
                    x.missing.push(i);
                }
            }
            if x.head.is_empty() {
                x.head = e.head;
                x.height = e.height;
                x.epoch = e.epoch;
            }
        }
        None => entries.push(e),
    }
}

/// What repairing one entry did.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Shard indices written.
    pub fixed: Vec<usize>,
    /// Shard indices whose backend failed (kept in the queue).
    pub failed: Vec<(usize, String)>,
    /// Shard indices given up: the aggregation cannot be rebuilt (fewer than k good shards:
    /// it was never acknowledged, or more than m shards are bad; a scrub reports it).
    pub abandoned: Vec<usize>,
    /// Shard bytes written.
    pub bytes: u64,
}

/// Rebuilds and writes the missing shards of `e` whose backend `usable(i)` says may be tried.
pub fn repair_entry(backends: &[Arc<dyn Backend>], sealer: &Sealer, e: &Entry, usable: &dyn Fn(usize) -> bool) -> Outcome {
    let mut out = Outcome::default();
    let todo: Vec<usize> = e.missing.iter().copied().filter(|i| *i < backends.len() && usable(*i)).collect();
    if todo.is_empty() {
        return out;
    }
    let shards = match sealer.reassemble(&e.key, fetch_shards(backends, &e.key)).and_then(|(h, sealed)| sealer.reencode(&h, &sealed)) {
        Ok(s) => s,
        Err(err) => {
            tracing::warn!(vdisk = %e.vdisk, key = %hex::encode(e.key), "aggregation cannot be rebuilt for repair ({err}); left to scrub");
            out.abandoned = e.missing.clone();
            return out;
        }
    };
    for i in todo {
        let Some(shard) = shards.get(i) else { continue };
        let s = [ShardWrite { vdisk: &e.vdisk, epoch: e.epoch, key: &e.key, bytes: shard }];
        let h = [HeadWrite { vdisk: &e.vdisk, epoch: e.epoch, height: e.height, record: &e.head }];
        let heads: &[HeadWrite<'_>] = if e.head.is_empty() || e.height == 0 { &[] } else { &h };
        match backends[i].put_batch(&s, heads) {
            Ok(()) => {
                out.bytes += shard.len() as u64;
                out.fixed.push(i);
            }
            Err(err) => out.failed.push((i, err.to_string())),
        }
    }
    out
}

/// What an offline repair did.
#[derive(Debug, Default)]
pub struct Report {
    /// (vdisk, key, shard index) repaired.
    pub fixed: Vec<(String, Key, usize)>,
    /// (vdisk, key, shard index, why) not repaired (kept in the queue).
    pub failed: Vec<(String, Key, usize, String)>,
    /// (vdisk, key, shard index) given up (the aggregation cannot be rebuilt).
    pub abandoned: Vec<(String, Key, usize)>,
}

/// Repairs every entry of `queue` once (offline, `tlog repair`).
pub fn repair_all(backends: &[Arc<dyn Backend>], sealer: &Sealer, queue: &Queue) -> Result<Report> {
    let mut r = Report::default();
    for e in queue.snapshot() {
        let o = repair_entry(backends, sealer, &e, &|_| true);
        let mut gone = o.fixed.clone();
        gone.extend(&o.abandoned);
        queue.done(&e.key, &gone)?;
        r.fixed.extend(o.fixed.iter().map(|i| (e.vdisk.clone(), e.key, *i)));
        r.abandoned.extend(o.abandoned.iter().map(|i| (e.vdisk.clone(), e.key, *i)));
        r.failed.extend(o.failed.into_iter().map(|(i, w)| (e.vdisk.clone(), e.key, i, w)));
    }
    Ok(r)
}

/// The background repairer's body: repairs queued entries at most `rate` bytes/s, trying a
/// backend again at most once a second while it fails, and not at all while `usable(i)` is
/// false (its writer is degraded); stops when `stop()` turns true.
pub(crate) fn run(
    backends: Vec<Arc<dyn Backend>>,
    sealer: Arc<Sealer>,
    queue: Arc<Queue>,
    rate: u64,
    usable: Box<dyn Fn(usize) -> bool + Send>,
    stop: Box<dyn Fn() -> bool + Send>,
) {
    let mut retry_at: Vec<Option<Instant>> = vec![None; backends.len()];
    let mut failing: Vec<bool> = vec![false; backends.len()];
    while !stop() {
        let entries = queue.snapshot();
        if entries.is_empty() {
            queue.wait(Duration::from_millis(500));
            continue;
        }
        let mut progressed = false;
        for e in entries {
            if stop() {
                return;
            }
            let now = Instant::now();
            let ok = |i: usize| usable(i) && retry_at[i].map(|t| t <= now).unwrap_or(true);
            let o = repair_entry(&backends, &sealer, &e, &ok);
            let mut gone = o.fixed.clone();
            gone.extend(&o.abandoned);
            if !gone.is_empty() {
                progressed = true;
                if let Err(err) = queue.done(&e.key, &gone) {
                    tracing::warn!("repair queue rewrite failed: {err}");
                }
            }
            for i in &o.fixed {
                retry_at[*i] = None;
                if failing[*i] {
                    failing[*i] = false;
                    tracing::info!(backend = %backends[*i].name(), "repair writes succeed again");
                }
            }
            for (i, why) in &o.failed {
                retry_at[*i] = Some(Instant::now() + Duration::from_secs(1));
                if !failing[*i] {
                    failing[*i] = true;
                    tracing::warn!(backend = %backends[*i].name(), "repair paused for this backend: {why}");
                }
            }
            if o.bytes > 0 {
                tracing::debug!(vdisk = %e.vdisk, key = %hex::encode(e.key), "repaired shards {:?}", o.fixed);
                std::thread::sleep(Duration::from_secs_f64(o.bytes as f64 / rate.max(1) as f64));
            }
        }
        if !progressed {
            queue.wait(Duration::from_millis(500));
        } else if queue.backlog() == 0 {
            tracing::info!("repair queue empty: every recorded shard is repaired");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_lines_round_trip_and_resume() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("repair.log");
        let e = Entry { vdisk: "vd".into(), key: [5; 32], height: 3, epoch: 2, head: vec![1, 2], missing: vec![4] };
        {
            let q = Queue::open(&p).unwrap();
            q.record(e.clone());
            q.record(Entry { missing: vec![1], ..e.clone() });
            q.record(Entry { key: [6; 32], ..e.clone() });
            assert_eq!(q.backlog(), 3);
            q.done(&[6; 32], &[4]).unwrap();
        }
        let q = Queue::open(&p).unwrap();
        assert_eq!(q.snapshot(), vec![Entry { missing: vec![4, 1], ..e.clone() }]);
        std::fs::write(&p, format!("old {} 0,2\nnot a line\n", hex::encode([7u8; 32]))).unwrap();
        let q = Queue::open(&p).unwrap();
        assert_eq!(q.snapshot(), vec![Entry { vdisk: "old".into(), key: [7; 32], height: 0, epoch: 0, head: vec![], missing: vec![0, 2] }]);
    }
}
