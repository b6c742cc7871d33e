//! Restore: find a vdisk's head, walk the hash chain back to its first aggregation, unseal each
//! (rebuilding shards lost on up to m backends), and apply the blocks in chain order (sequence
//! order) to a sparse raw image. A block that cannot be applied (its range lies past
//! `max_image_bytes`, or it names an unknown operation: written by an older tlog that did not
//! check) is skipped and reported by sequence; the rest of the vdisk is restored.

use crate::backend::{Backend, Key};
use crate::error::{Error, IoContext, Result};
use crate::seal::{fetch_shards, find_head, Aggregation, Sealer, ShardHeader};
use crate::wire::{Operation, SECTOR};
use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

/// Restore settings.
#[derive(Clone, Debug)]
pub struct RestoreOptions {
    /// Apply blocks up to this sequence (inclusive); all when `None`.
    pub to_sequence: Option<u64>,
    /// Show a progress bar (only drawn when stderr is a terminal).
    pub progress: bool,
    /// Sealed bytes kept in memory during the walk; beyond, aggregations are fetched again when
    /// applied. Default 1 GiB.
    pub cache_bytes: u64,
    /// Largest image: a block reaching past it is skipped and reported. Default 64 TiB (the
    /// default `server.max_vdisk_bytes`).
    pub max_image_bytes: u64,
}

impl Default for RestoreOptions {
    fn default() -> Self {
        RestoreOptions { to_sequence: None, progress: true, cache_bytes: 1 << 30, max_image_bytes: 64 << 40 }
    }
}

/// What a restore did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RestoreStats {
    /// Aggregations in the chain.
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

/// One link of the chain.
pub struct Link {
    /// Aggregation key.
    pub key: Key,
    /// Its shard header (from an intact shard).
    pub header: ShardHeader,
    sealed: Option<Vec<u8>>,
}

/// Walks the chain from the head back to the first aggregation; returns links oldest first.
/// Errors: unknown vdisk, more than m backends unreachable, chain broken at key X.
pub fn walk_chain(
    backends: &[Arc<dyn Backend>],
    sealer: &Sealer,
    vdisk: &str,
    cache_bytes: u64,
    progress: Option<&indicatif::ProgressBar>,
) -> Result<Vec<Link>> {
    let head =
        find_head(backends, sealer, vdisk)?.ok_or_else(|| Error::NotFound(format!("vdisk {vdisk}: no backend holds a head record for it (unknown vdisk)")))?;
    if let Some(p) = progress {
        p.set_length(head.height * 2);
        p.set_message("walking the chain");
    }
    let mut links = Vec::with_capacity(head.height as usize);
    let mut key = head.key;
    let mut cached = 0u64;
    loop {
        if links.len() as u64 >= head.height {
            return Err(Error::ChainBroken { key: hex::encode(key), detail: format!("chain is longer than the head's height {}", head.height) });
        }
        let (header, sealed) = sealer.reassemble(&key, fetch_shards(backends, &key))?;
        if header.vdisk != vdisk {
            return Err(Error::ChainBroken { key: hex::encode(key), detail: format!("aggregation belongs to vdisk {}", header.vdisk) });
        }
        let keep = cached + sealed.len() as u64 <= cache_bytes;
        if keep {
            cached += sealed.len() as u64;
        }
        let prev = header.prev;
        links.push(Link { key, header, sealed: keep.then_some(sealed) });
        if let Some(p) = progress {
            p.inc(1);
        }
        if prev == [0u8; 32] {
            break;
        }
        key = prev;
    }
    if links.len() as u64 != head.height {
        return Err(Error::ChainBroken { key: hex::encode(key), detail: format!("chain holds {} aggregations, the head says {}", links.len(), head.height) });
    }
    links.reverse();
    Ok(links)
}

/// Unseals a link (fetching it again when it was not cached).
pub fn open_link(backends: &[Arc<dyn Backend>], sealer: &Sealer, link: &Link) -> Result<Aggregation> {
    match &link.sealed {
        Some(s) => sealer.open(&link.header, s),
        None => sealer.unseal(&link.key, fetch_shards(backends, &link.key)),
    }
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

/// Restores `vdisk` into the raw image `output` (created or truncated; sparse).
pub fn restore(backends: &[Arc<dyn Backend>], sealer: &Sealer, vdisk: &str, output: &Path, opts: &RestoreOptions) -> Result<RestoreStats> {
    let bar = if opts.progress && std::io::stderr().is_terminal() {
        let b = indicatif::ProgressBar::new(0);
        b.set_style(
            indicatif::ProgressStyle::with_template("{msg:20} [{bar:40}] {pos}/{len} {elapsed}").unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        Some(b)
    } else {
        None
    };
    let links = walk_chain(backends, sealer, vdisk, opts.cache_bytes, bar.as_ref())?;
    if let Some(b) = &bar {
        b.set_message("applying blocks");
    }
    // Check the key (and that the oldest aggregation opens) before any byte is written.
    let first = match links.first() {
        Some(l) => Some(open_link(backends, sealer, l)?),
        None => None,
    };
    let f = std::fs::OpenOptions::new().create(true).write(true).truncate(true).open(output).ctx(|| format!("create {}", output.display()))?;
    let r = apply(backends, sealer, &links, first, &f, output, opts, bar.as_ref());
    if r.is_err() {
        // An incomplete image is never left behind as if it were a restore.
        let _ = std::fs::remove_file(output);
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    r
}

#[allow(clippy::too_many_arguments)]
fn apply(
    backends: &[Arc<dyn Backend>],
    sealer: &Sealer,
    links: &[Link],
    mut first: Option<Aggregation>,
    f: &std::fs::File,
    output: &Path,
    opts: &RestoreOptions,
    bar: Option<&indicatif::ProgressBar>,
) -> Result<RestoreStats> {
    let mut stats = RestoreStats { aggregations: links.len() as u64, ..Default::default() };
    let mut written = Written::default();
    let mut extent = 0u64;
    let zeros = vec![0u8; 1 << 20];
    'outer: for link in links {
        let agg = match first.take() {
            Some(a) => a,
            None => open_link(backends, sealer, link)?,
        };
        for b in &agg.blocks {
            if opts.to_sequence.map(|t| b.sequence > t).unwrap_or(false) {
                break 'outer;
            }
            let end = b.lba.checked_mul(SECTOR).and_then(|s| s.checked_add(b.size).map(|e| (s, e)));
            let Some((start, end)) = end.filter(|(_, e)| *e <= opts.max_image_bytes) else {
                let why = format!("lba {} * 512 + size {} lies past the largest image ({} bytes)", b.lba, b.size, opts.max_image_bytes);
                tracing::warn!(vdisk = %link.header.vdisk, sequence = b.sequence, "block skipped: {why}");
                stats.bad_blocks.push((b.sequence, why));
                continue;
            };
            match Operation::from_ordinal(b.operation) {
                Some(Operation::Write) => {
                    f.write_all_at(&b.data, start).ctx(|| format!("write {}", output.display()))?;
                    written.insert(start, end);
                    stats.bytes += b.data.len() as u64;
                }
                Some(Operation::WriteZeroes) => {
                    if written.overlaps(start, end) {
                        let mut p = start;
                        while p < end {
                            let n = ((end - p) as usize).min(zeros.len());
                            f.write_all_at(&zeros[..n], p).ctx(|| format!("write {}", output.display()))?;
                            p += n as u64;
                        }
                    }
                }
                None => {
                    let why = format!("unknown operation {}", b.operation);
                    tracing::warn!(vdisk = %link.header.vdisk, sequence = b.sequence, "block skipped: {why}");
                    stats.bad_blocks.push((b.sequence, why));
                    continue;
                }
            }
            extent = extent.max(end);
            stats.blocks += 1;
            stats.last_sequence = Some(b.sequence);
        }
        if let Some(bar) = bar {
            bar.inc(1);
        }
    }
    f.set_len(extent.max(f.metadata().map(|m| m.len()).unwrap_or(0))).ctx(|| format!("set length of {}", output.display()))?;
    f.sync_all().ctx(|| format!("fsync {}", output.display()))?;
    stats.image_bytes = extent;
    Ok(stats)
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
