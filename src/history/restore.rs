//! Restore: the image of a vdisk at a point, from its index. The aggregations up to the point are
//! fetched (k of k+m shards each, in parallel across backends) and unsealed by several workers
//! at once, then applied in chain order (sequence order) to a sparse raw image by one thread;
//! nothing walks the chain backwards decoding every aggregation. Up to m backends may be lost.
//! A block that cannot be applied (its range past `max_image_bytes`, an unknown operation:
//! written by an older tlog that did not check) is skipped and reported by sequence.

use super::points::Point;
use super::History;
use crate::error::{IoContext, Result};
use crate::seal::Aggregation;
use crate::wire::{Block, Operation, SECTOR};
use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// Restore settings.
#[derive(Clone, Debug)]
pub struct RestoreOptions {
    /// The point to restore (`None`: the head).
    pub to: Option<Point>,
    /// Show a progress bar (only drawn when stderr is a terminal).
    pub progress: bool,
    /// Largest image: a block reaching past it is skipped and reported. Default 64 TiB (the
    /// default `server.max_vdisk_bytes`).
    pub max_image_bytes: u64,
    /// Aggregations fetched and unsealed at once (0 = twice the cores, at least 4).
    pub parallel: usize,
}

impl Default for RestoreOptions {
    fn default() -> Self {
        RestoreOptions { to: None, progress: true, max_image_bytes: 64 << 40, parallel: 0 }
    }
}

/// What a restore did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RestoreStats {
    /// Aggregations applied.
    pub aggregations: u64,
    /// Blocks applied.
    pub blocks: u64,
    /// Bytes written to the image (write_zeroes not counted).
    pub bytes: u64,
    /// Size of the image (bytes).
    pub image_bytes: u64,
    /// Last sequence applied.
    pub last_sequence: Option<u64>,
    /// Blocks skipped: (sequence, why).
    pub bad_blocks: Vec<(u64, String)>,
}

/// Byte ranges written so far, merged.
#[derive(Default)]
struct Written(BTreeMap<u64, u64>);

impl Written {
    fn insert(&mut self, mut s: u64, mut e: u64) {
        let over: Vec<(u64, u64)> = self.0.range(..=e).rev().take_while(|(_, &end)| end >= s).map(|(&a, &b)| (a, b)).collect();
        for (a, b) in over {
            self.0.remove(&a);
            s = s.min(a);
            e = e.max(b);
        }
        self.0.insert(s, e);
    }

    fn overlaps(&self, s: u64, e: u64) -> bool {
        self.0.range(..e).next_back().map(|(_, &end)| end > s).unwrap_or(false)
    }
}

/// Bytes of contiguous writes gathered into one `pwrite`.
const RUN_BYTES: usize = 1 << 20;

/// Applies blocks to a sparse raw image in order (restore and replicate). Writes that follow
/// each other on the image are gathered into one `pwrite` of up to 1 MiB (a restore of 4 KiB
/// blocks made one system call per block otherwise); the run goes out before anything else
/// touches the image, so order is kept.
pub struct ImageWriter<'a> {
    f: &'a std::fs::File,
    path: &'a Path,
    written: Written,
    extent: u64,
    zeros: Vec<u8>,
    max: u64,
    run: Vec<u8>,
    run_start: u64,
    /// Counts.
    pub stats: RestoreStats,
}

impl<'a> ImageWriter<'a> {
    /// A writer onto `f` (the image at `path`); blocks past `max` bytes are skipped.
    pub fn new(f: &'a std::fs::File, path: &'a Path, max: u64) -> ImageWriter<'a> {
        ImageWriter {
            f,
            path,
            written: Written::default(),
            extent: 0,
            zeros: vec![0u8; 1 << 20],
            max,
            run: Vec::new(),
            run_start: 0,
            stats: RestoreStats::default(),
        }
    }

    /// Treats the whole image as possibly written (an existing image being brought forward:
    /// zeroed ranges must be written as zeros).
    pub fn assume_written(&mut self, len: u64) {
        if len > 0 {
            self.written.insert(0, len);
            self.extent = len;
        }
    }

    /// Applies one block. Errors: writing the image.
    pub fn apply(&mut self, b: &Block, vdisk: &str) -> Result<()> {
        let range = b.lba.checked_mul(SECTOR).and_then(|s| s.checked_add(b.size).map(|e| (s, e)));
        let Some((start, end)) = range.filter(|(_, e)| *e <= self.max) else {
            let why = format!("lba {} * 512 + size {} lies past the largest image ({} bytes)", b.lba, b.size, self.max);
            tracing::warn!(vdisk, sequence = b.sequence, "block skipped: {why}");
            self.stats.bad_blocks.push((b.sequence, why));
            return Ok(());
        };
        match Operation::from_ordinal(b.operation) {
            Some(Operation::Write) => {
                let follows = !self.run.is_empty() && start == self.run_start + self.run.len() as u64;
                if !follows || self.run.len() + b.data.len() > RUN_BYTES {
                    self.write_run()?;
                    self.run_start = start;
                }
                if b.data.len() >= RUN_BYTES {
                    self.f.write_all_at(&b.data, start).ctx(|| format!("write {}", self.path.display()))?;
                } else {
                    self.run.extend_from_slice(&b.data);
                }
                self.written.insert(start, end);
                self.stats.bytes += b.data.len() as u64;
            }
            Some(Operation::WriteZeroes) => {
                if self.written.overlaps(start, end) {
                    self.write_run()?;
                    let mut p = start;
                    while p < end {
                        let n = ((end - p) as usize).min(self.zeros.len());
                        self.f.write_all_at(&self.zeros[..n], p).ctx(|| format!("write {}", self.path.display()))?;
                        p += n as u64;
                    }
                }
            }
            None => {
                let why = format!("unknown operation {}", b.operation);
                tracing::warn!(vdisk, sequence = b.sequence, "block skipped: {why}");
                self.stats.bad_blocks.push((b.sequence, why));
                return Ok(());
            }
        }
        self.extent = self.extent.max(end);
        self.stats.blocks += 1;
        self.stats.last_sequence = Some(b.sequence);
        Ok(())
    }

    /// Writes the gathered run, if any.
    fn write_run(&mut self) -> Result<()> {
        if !self.run.is_empty() {
            self.f.write_all_at(&self.run, self.run_start).ctx(|| format!("write {}", self.path.display()))?;
            self.run.clear();
        }
        Ok(())
    }

    /// Writes what is gathered, sets the image length to what was written (at least) and
    /// fsyncs it.
    pub fn finish(&mut self) -> Result<()> {
        self.write_run()?;
        let len = self.extent.max(self.f.metadata().map(|m| m.len()).unwrap_or(0));
        self.f.set_len(len).ctx(|| format!("set length of {}", self.path.display()))?;
        self.f.sync_all().ctx(|| format!("fsync {}", self.path.display()))?;
        self.stats.image_bytes = self.extent;
        Ok(())
    }
}

/// A progress bar on stderr with MiB/s, when it is a terminal (`total`: bytes of block data
/// to apply, or `None` when unknown: a counter).
pub fn progress_bar(total: Option<u64>, message: &str) -> Option<indicatif::ProgressBar> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let (b, template) = match total {
        Some(t) => (indicatif::ProgressBar::new(t), "{msg} [{bar:40}] {bytes}/{total_bytes} {binary_bytes_per_sec} {elapsed}"),
        None => (indicatif::ProgressBar::no_length(), "{msg} {spinner} {bytes} {binary_bytes_per_sec} {elapsed}"),
    };
    b.set_style(indicatif::ProgressStyle::with_template(template).unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()));
    b.set_message(message.to_string());
    Some(b)
}

/// Restores the history `h` at `opts.to` into the raw image `output` (created or truncated;
/// sparse). Errors: a bad point (the message says which range exists), the wrong key, a broken
/// chain, I/O; a failed restore leaves no output file.
pub fn restore(h: &History, output: &Path, opts: &RestoreOptions) -> Result<RestoreStats> {
    let cut = match &opts.to {
        Some(p) => h.resolve(p)?,
        None => h.index.sequences().map(|(_, l)| l),
    };
    let n = match cut {
        Some(c) => h.index.entries.partition_point(|e| e.first_sequence <= c),
        None => 0,
    };
    // The key (and that the oldest aggregation opens) is checked before any byte is written.
    let first = if n > 0 { Some(h.aggregation(0)?) } else { None };
    let f = std::fs::OpenOptions::new().create(true).write(true).truncate(true).open(output).ctx(|| format!("create {}", output.display()))?;
    let r = apply(h, &f, output, opts, cut, n, first);
    if r.is_err() {
        // An incomplete image is never left behind as if it were a restore.
        let _ = std::fs::remove_file(output);
    }
    r
}

fn apply(h: &History, f: &std::fs::File, output: &Path, opts: &RestoreOptions, cut: Option<u64>, n: usize, first: Option<Aggregation>) -> Result<RestoreStats> {
    let total: u64 = h.index.entries[..n].iter().map(|e| e.data_bytes).sum();
    let progress = if opts.progress { progress_bar(Some(total), "restoring") } else { None };
    let mut w = ImageWriter::new(f, output, opts.max_image_bytes);
    let mut aggregations = 0u64;
    let mut take = |i: usize, agg: Aggregation| -> Result<bool> {
        for b in agg.blocks.iter().take_while(|b| cut.map(|c| b.sequence <= c).unwrap_or(false)) {
            w.apply(b, &h.vdisk)?;
        }
        if let Some(p) = &progress {
            p.inc(h.index.entries[i].data_bytes);
        }
        aggregations += 1;
        Ok(true)
    };
    if let Some(a) = first {
        take(0, a)?;
    }
    h.for_each_aggregation(1..n, opts.parallel, &mut take)?;
    w.finish()?;
    if let Some(p) = progress {
        p.finish_and_clear();
    }
    let mut st = w.stats.clone();
    st.aggregations = aggregations;
    Ok(st)
}

#[cfg(test)]
mod tests {
    use super::Written;

    #[test]
    fn written_ranges_merge() {
        let mut w = Written::default();
        w.insert(0, 10);
        w.insert(20, 30);
        assert!(w.overlaps(5, 6));
        assert!(!w.overlaps(10, 20));
        w.insert(8, 22);
        assert_eq!(w.0.len(), 1);
        assert!(w.overlaps(25, 40));
    }
}
