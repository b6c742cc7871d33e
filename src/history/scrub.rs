//! Scrub (DESIGN.md §14): reads every head record and every shard of every aggregation of each
//! vdisk's chain on every backend, checks each shard alone (magic, version, length, BLAKE3
//! checksum, key and index), each head record (checksum), the chain (every aggregation can be
//! rebuilt from k shards, hashes to its key, belongs to the vdisk, links to the one before, and
//! the chain is as long as the head says), and with `repair` rewrites what is bad or missing:
//! shards re-encoded from k good ones, heads from the newest good one. Reads are rate-limited.

use crate::backend::{Backend, HeadWrite, Key, ShardWrite};
use crate::error::Result;
use crate::seal::{find_head, HeadRecord, Sealer, ShardHeader};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Scrub settings.
#[derive(Clone, Debug)]
pub struct ScrubOptions {
    /// Only this vdisk (`None`: every vdisk any backend knows).
    pub vdisk: Option<String>,
    /// Rewrite bad or missing shards and heads.
    pub repair: bool,
    /// Shard bytes read per second at most, MiB.
    pub rate_mib: u64,
    /// Stops the scrub early when set (tlogd's shutdown).
    pub stop: Option<Arc<std::sync::atomic::AtomicBool>>,
}

impl ScrubOptions {
    fn stopped(&self) -> bool {
        self.stop.as_ref().map(|s| s.load(std::sync::atomic::Ordering::SeqCst)).unwrap_or(false)
    }
}

/// What is wrong.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FindingKind {
    /// A backend has no shard of an aggregation of the chain.
    MissingShard,
    /// A shard fails its checks (or the backend cannot read it back).
    BadShard,
    /// A backend has no head record for the vdisk.
    MissingHead,
    /// A head record fails its checksum, or is older than the vdisk's head.
    BadHead,
    /// The chain cannot be followed (fewer than k good shards, a wrong link, a wrong length).
    ChainBroken,
    /// A backend could not be asked (unreachable, unusable).
    Unreachable,
}

/// One problem found.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Finding {
    /// The vdisk.
    pub vdisk: String,
    /// The aggregation (hex), if the finding is about one.
    pub key: Option<String>,
    /// The backend (shard index), if the finding is about one.
    pub backend: Option<usize>,
    /// What is wrong.
    pub kind: FindingKind,
    /// Details.
    pub detail: String,
    /// Whether `repair` fixed it.
    pub repaired: bool,
}

/// What a scrub did.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct ScrubReport {
    /// Vdisks scrubbed.
    pub vdisks: u64,
    /// Aggregations checked.
    pub aggregations: u64,
    /// Shards read and checked.
    pub shards: u64,
    /// Shard bytes read.
    pub bytes: u64,
    /// Problems found.
    pub findings: Vec<Finding>,
}

impl ScrubReport {
    /// Problems not repaired.
    pub fn unrepaired(&self) -> usize {
        self.findings.iter().filter(|f| !f.repaired).count()
    }
}

struct Throttle {
    start: Instant,
    bytes: u64,
    rate: u64,
}

impl Throttle {
    fn take(&mut self, n: u64) {
        self.bytes += n;
        let due = Duration::from_secs_f64(self.bytes as f64 / self.rate.max(1) as f64);
        let el = self.start.elapsed();
        if due > el {
            std::thread::sleep(due - el);
        }
    }
}

/// Scrubs (see the module doc). Errors only when no vdisk list can be had at all; everything
/// else is a finding.
pub fn scrub(backends: &[Arc<dyn Backend>], sealer: &Sealer, opts: &ScrubOptions) -> Result<ScrubReport> {
    let mut r = ScrubReport::default();
    let mut t = Throttle { start: Instant::now(), bytes: 0, rate: opts.rate_mib.max(1) << 20 };
    let vdisks = match &opts.vdisk {
        Some(v) => vec![v.clone()],
        None => {
            let mut all = Vec::new();
            for (i, b) in backends.iter().enumerate() {
                match b.vdisks() {
                    Ok(v) => all.extend(v),
                    Err(e) => r.findings.push(Finding {
                        vdisk: "*".into(),
                        key: None,
                        backend: Some(i),
                        kind: FindingKind::Unreachable,
                        detail: e.to_string(),
                        repaired: false,
                    }),
                }
            }
            all.sort();
            all.dedup();
            all
        }
    };
    for v in vdisks {
        if opts.stopped() {
            break;
        }
        r.vdisks += 1;
        scrub_vdisk(backends, sealer, &v, opts, &mut r, &mut t);
    }
    Ok(r)
}

fn finding(vdisk: &str, key: Option<&Key>, backend: Option<usize>, kind: FindingKind, detail: String) -> Finding {
    Finding { vdisk: vdisk.into(), key: key.map(hex::encode), backend, kind, detail, repaired: false }
}

fn scrub_vdisk(backends: &[Arc<dyn Backend>], sealer: &Sealer, vdisk: &str, opts: &ScrubOptions, r: &mut ScrubReport, t: &mut Throttle) {
    let head = match find_head(backends, sealer, vdisk) {
        Ok(Some(h)) => h,
        Ok(None) => return,
        Err(e) => {
            r.findings.push(finding(vdisk, None, None, FindingKind::ChainBroken, format!("no head can be rebuilt: {e}")));
            return;
        }
    };
    let head_bytes = head.encode();
    // Heads, backend by backend.
    for (i, b) in backends.iter().enumerate() {
        let problem = match b.get_head(vdisk) {
            Ok(None) => Some((FindingKind::MissingHead, "no head record".to_string())),
            Ok(Some(bytes)) => match HeadRecord::decode(&bytes) {
                Ok(h) if (h.epoch, h.height) < (head.epoch, head.height) => {
                    Some((FindingKind::BadHead, format!("head at height {} behind the vdisk's {}", h.height, head.height)))
                }
                Ok(_) => None,
                Err(e) => Some((FindingKind::BadHead, e.to_string())),
            },
            // The backend answered, but cannot read its own record back (damaged store entry).
            Err(e @ crate::Error::Corrupt { .. }) => Some((FindingKind::BadHead, format!("cannot read it back: {e}"))),
            Err(e) => Some((FindingKind::Unreachable, e.to_string())),
        };
        if let Some((kind, detail)) = problem {
            let mut f = finding(vdisk, None, Some(i), kind, detail);
            if opts.repair && kind != FindingKind::Unreachable {
                let hw = [HeadWrite { vdisk, epoch: head.epoch, height: head.height, record: &head_bytes }];
                f.repaired = b.put_batch(&[], &hw).is_ok();
            }
            r.findings.push(f);
        }
    }
    // The chain, from the head back.
    let mut key = head.key;
    let mut seen = 0u64;
    loop {
        if opts.stopped() {
            return;
        }
        if seen >= head.height {
            r.findings.push(finding(vdisk, Some(&key), None, FindingKind::ChainBroken, format!("chain longer than the head's height {}", head.height)));
            return;
        }
        seen += 1;
        r.aggregations += 1;
        let mut shards: Vec<Option<Vec<u8>>> = Vec::with_capacity(backends.len());
        let mut bad: Vec<(usize, FindingKind, String)> = Vec::new();
        let got: Vec<Result<Option<Vec<u8>>>> = std::thread::scope(|s| {
            let hs: Vec<_> = backends.iter().map(|b| s.spawn(move || b.get(&key))).collect();
            hs.into_iter()
                .map(|h| h.join().unwrap_or_else(|_| Err(crate::Error::Backend { backend: "?".into(), detail: "reader thread panicked".into() })))
                .collect()
        });
        for (i, g) in got.into_iter().enumerate() {
            match g {
                Ok(Some(b)) => {
                    r.shards += 1;
                    r.bytes += b.len() as u64;
                    t.take(b.len() as u64);
                    match ShardHeader::decode_shard(&b) {
                        Ok((h, _)) if h.key == key && h.index as usize == i => shards.push(Some(b)),
                        Ok((h, _)) => {
                            bad.push((i, FindingKind::BadShard, format!("shard names key {} index {}", hex::encode(h.key), h.index)));
                            shards.push(None);
                        }
                        Err(e) => {
                            bad.push((i, FindingKind::BadShard, e.to_string()));
                            shards.push(None);
                        }
                    }
                }
                Ok(None) => {
                    bad.push((i, FindingKind::MissingShard, "no shard".into()));
                    shards.push(None);
                }
                Err(e) => {
                    bad.push((i, FindingKind::BadShard, format!("cannot read it back: {e}")));
                    shards.push(None);
                }
            }
        }
        let rebuilt = sealer.reassemble(&key, shards).and_then(|(h, sealed)| Ok((sealer.reencode(&h, &sealed)?, h)));
        let (all, header) = match rebuilt {
            Ok(x) => x,
            Err(e) => {
                for (i, kind, detail) in bad {
                    r.findings.push(finding(vdisk, Some(&key), Some(i), kind, detail));
                }
                r.findings.push(finding(vdisk, Some(&key), None, FindingKind::ChainBroken, e.to_string()));
                return;
            }
        };
        for (i, kind, detail) in bad {
            let mut f = finding(vdisk, Some(&key), Some(i), kind, detail);
            if opts.repair {
                if let Some(shard) = all.get(i) {
                    let s = [ShardWrite { vdisk, epoch: header.epoch, key: &key, bytes: shard }];
                    f.repaired = backends[i].put_batch(&s, &[]).is_ok();
                }
            }
            r.findings.push(f);
        }
        if header.vdisk != vdisk {
            r.findings.push(finding(vdisk, Some(&key), None, FindingKind::ChainBroken, format!("aggregation belongs to vdisk {}", header.vdisk)));
            return;
        }
        if header.prev == [0u8; 32] {
            break;
        }
        key = header.prev;
    }
    if seen != head.height {
        r.findings.push(finding(vdisk, Some(&key), None, FindingKind::ChainBroken, format!("chain holds {seen} aggregations, the head says {}", head.height)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::memory::MemoryBackend;
    use crate::seal::{SealContext, SealKey};
    use crate::wire::{Block, Operation};

    type Setup = (Vec<Arc<MemoryBackend>>, Vec<Arc<dyn Backend>>, Sealer, Vec<Key>);

    fn setup() -> Setup {
        let sealer = Sealer::new(SealKey::from_bytes([3; 32]), 4, 2).unwrap();
        let mem: Vec<Arc<MemoryBackend>> = (0..6).map(|i| Arc::new(MemoryBackend::new(&i.to_string()))).collect();
        let dyns: Vec<Arc<dyn Backend>> = mem.iter().map(|m| m.clone() as Arc<dyn Backend>).collect();
        let mut prev = [0u8; 32];
        let mut keys = Vec::new();
        for h in 1..=3u64 {
            let blocks: Vec<Block> = (0..4).map(|i| Block::new(h * 10 + i, i * 8, Operation::Write, vec![h as u8; 4096], 4096, h)).collect();
            let s = sealer.seal(&SealContext { vdisk: "vd", epoch: 1, counter: h, attach_random: [0; 16], prev, timestamp: h }, &blocks).unwrap();
            let head = HeadRecord { height: h, key: s.key, first_sequence: h * 10, last_sequence: h * 10 + 3, epoch: 1, timestamp: h }.encode();
            for (i, b) in dyns.iter().enumerate() {
                b.put_batch(
                    &[ShardWrite { vdisk: "vd", epoch: 1, key: &s.key, bytes: &s.shards[i] }],
                    &[HeadWrite { vdisk: "vd", epoch: 1, height: h, record: &head }],
                )
                .unwrap();
            }
            prev = s.key;
            keys.push(s.key);
        }
        (mem, dyns, sealer, keys)
    }

    #[test]
    fn finds_every_bad_shard_repairs_them_and_a_second_scrub_is_clean() {
        let (mem, dyns, sealer, keys) = setup();
        let opts = ScrubOptions { vdisk: None, repair: false, rate_mib: 1024, stop: None };
        let clean = scrub(&dyns, &sealer, &opts).unwrap();
        assert_eq!((clean.vdisks, clean.aggregations, clean.shards, clean.findings.len()), (1, 3, 18, 0));
        mem[1].tamper(&keys[0], |v| v[180] ^= 1);
        mem[1].tamper(&keys[2], |v| v[190] ^= 0x10);
        mem[4].delete(&keys[1]).unwrap();
        let r = scrub(&dyns, &sealer, &opts).unwrap();
        let mut got: Vec<(Option<usize>, FindingKind)> = r.findings.iter().map(|f| (f.backend, f.kind)).collect();
        got.sort_by_key(|g| g.0);
        assert_eq!(got, vec![(Some(1), FindingKind::BadShard), (Some(1), FindingKind::BadShard), (Some(4), FindingKind::MissingShard)]);
        let r = scrub(&dyns, &sealer, &ScrubOptions { repair: true, ..opts.clone() }).unwrap();
        assert_eq!(r.unrepaired(), 0, "{:?}", r.findings);
        assert!(scrub(&dyns, &sealer, &opts).unwrap().findings.is_empty());
        // More than m bad shards of one aggregation: the chain is broken there, named.
        for i in [0, 2, 3] {
            mem[i].tamper(&keys[1], |v| v[185] ^= 1);
        }
        let r = scrub(&dyns, &sealer, &opts).unwrap();
        assert!(r.findings.iter().any(|f| f.kind == FindingKind::ChainBroken && f.key.as_deref() == Some(&hex::encode(keys[1])[..])), "{:?}", r.findings);
    }
}
