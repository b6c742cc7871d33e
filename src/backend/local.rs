//! The `local` backend: one embedded BigLog store directory per shard index.
//!
//! Each put appends records to the directory's BigLog (one index entry per batch, the
//! records as embedded offsets) and fsyncs once per batch (group commit). Records are
//! `kind u8` then: `1` shard: key (32) + bytes; `2` head: vdisk length u16 LE + vdisk + bytes;
//! `3` delete: key (32).
//!
//! A key → offset map answers `get` without scanning. It is persisted to `keymap` (magic
//! `b"TLOGKMAP"`, version u32, the log offset it covers u64, shard and head entries, CRC-32)
//! every [`KEYMAP_SAVE_EVERY`] records and on drop, by write + fsync + rename. On open it is
//! loaded and only the log records after the covered offset are scanned; when it is missing,
//! unreadable, or covers more than the log holds (stale), it is rebuilt by a full scan.

use super::{head_height, Backend, Key};
use crate::error::{Error, IoContext, Result};
use crate::store::{BigLog, BigLogOptions, Scanner};
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Records appended between two saves of the key map.
pub const KEYMAP_SAVE_EVERY: u64 = 4096;

const KIND_SHARD: u8 = 1;
const KIND_HEAD: u8 = 2;
const KIND_DELETE: u8 = 3;

#[derive(Default)]
struct KeyMap {
    shards: HashMap<Key, u64>,
    heads: HashMap<String, (u64, u64)>, // vdisk -> (offset, height)
    covered: u64,
    since_save: u64,
}

/// A store directory used as one backend.
pub struct LocalBackend {
    dir: PathBuf,
    log: BigLog,
    map: Mutex<KeyMap>,
}

impl LocalBackend {
    /// Opens (creating) the store in `dir`.
    pub fn open(dir: impl AsRef<Path>, opts: BigLogOptions) -> Result<LocalBackend> {
        let dir = dir.as_ref().to_path_buf();
        let log = BigLog::open(&dir, opts)?;
        let next = log.next_offset()?;
        let first = log.first_offset()?;
        let mut map = match load_keymap(&dir.join("keymap")) {
            Ok(m) if m.covered <= next => m,
            Ok(m) => {
                tracing::warn!(dir = %dir.display(), "key map covers offset {} but the log ends at {next}: rebuilding", m.covered);
                KeyMap::default()
            }
            Err(e) => {
                if dir.join("keymap").exists() {
                    tracing::warn!(dir = %dir.display(), "key map unreadable ({e}): rebuilding");
                }
                KeyMap::default()
            }
        };
        // Drop entries of trimmed segments, then scan what the map does not cover.
        map.shards.retain(|_, o| *o >= first);
        map.heads.retain(|_, (o, _)| *o >= first);
        let from = map.covered.max(first);
        let mut scanned = 0u64;
        for rec in Scanner::new(&log, from) {
            match rec {
                Ok(r) => {
                    apply(&mut map, r.offset, &r.data);
                    scanned += 1;
                }
                Err(e) => tracing::warn!(dir = %dir.display(), "skipping unreadable record while indexing: {e}"),
            }
        }
        map.covered = next;
        if scanned > 0 {
            tracing::info!(dir = %dir.display(), "indexed {scanned} records past the saved key map");
        }
        let b = LocalBackend { dir, log, map: Mutex::new(map) };
        if scanned > 0 {
            b.save_keymap()?;
        }
        Ok(b)
    }

    /// The underlying log.
    pub fn log(&self) -> &BigLog {
        &self.log
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, KeyMap>> {
        self.map.lock().map_err(|_| Error::Backend { backend: self.name(), detail: "key map lock poisoned".into() })
    }

    /// Writes the key map file (atomically).
    pub fn save_keymap(&self) -> Result<()> {
        let mut m = self.lock()?;
        save_keymap(&self.dir, &m)?;
        m.since_save = 0;
        Ok(())
    }
}

fn apply(map: &mut KeyMap, offset: u64, data: &[u8]) {
    match data.first() {
        Some(&KIND_SHARD) if data.len() >= 33 => {
            let mut k = [0u8; 32];
            k.copy_from_slice(&data[1..33]);
            map.shards.insert(k, offset);
        }
        Some(&KIND_DELETE) if data.len() >= 33 => {
            let mut k = [0u8; 32];
            k.copy_from_slice(&data[1..33]);
            map.shards.remove(&k);
        }
        Some(&KIND_HEAD) if data.len() >= 3 => {
            let n = u16::from_le_bytes([data[1], data[2]]) as usize;
            if data.len() >= 3 + n {
                if let Ok(v) = std::str::from_utf8(&data[3..3 + n]) {
                    let h = head_height(&data[3 + n..]);
                    let newer = map.heads.get(v).map(|(_, old)| h > *old).unwrap_or(true);
                    if newer {
                        map.heads.insert(v.to_string(), (offset, h));
                    }
                }
            }
        }
        _ => {}
    }
}

/// [`apply`] for a record given as parts (kind, key or vdisk, payload); a shard's payload is
/// not needed (nor copied).
fn apply_parts(map: &mut KeyMap, offset: u64, parts: &[&[u8]; 3]) {
    if parts[0].first() == Some(&KIND_SHARD) {
        apply(map, offset, &[parts[0], parts[1]].concat());
    } else {
        apply(map, offset, &parts.concat());
    }
}

fn save_keymap(dir: &Path, m: &KeyMap) -> Result<()> {
    let mut b = Vec::with_capacity(32 + m.shards.len() * 40);
    b.extend_from_slice(b"TLOGKMAP");
    b.extend_from_slice(&1u32.to_le_bytes());
    b.extend_from_slice(&m.covered.to_le_bytes());
    b.extend_from_slice(&(m.shards.len() as u64).to_le_bytes());
    for (k, o) in &m.shards {
        b.extend_from_slice(k);
        b.extend_from_slice(&o.to_le_bytes());
    }
    b.extend_from_slice(&(m.heads.len() as u64).to_le_bytes());
    for (v, (o, h)) in &m.heads {
        b.extend_from_slice(&(v.len() as u16).to_le_bytes());
        b.extend_from_slice(v.as_bytes());
        b.extend_from_slice(&o.to_le_bytes());
        b.extend_from_slice(&h.to_le_bytes());
    }
    let crc = crc32fast::hash(&b);
    b.extend_from_slice(&crc.to_le_bytes());
    let tmp = dir.join("keymap.tmp");
    let p = dir.join("keymap");
    let mut f = std::fs::File::create(&tmp).ctx(|| format!("create {}", tmp.display()))?;
    f.write_all(&b).ctx(|| format!("write {}", tmp.display()))?;
    f.sync_all().ctx(|| format!("fsync {}", tmp.display()))?;
    std::fs::rename(&tmp, &p).ctx(|| format!("rename {}", tmp.display()))?;
    crate::store::biglog::sync_dir(dir)
}

fn load_keymap(p: &Path) -> Result<KeyMap> {
    let b = std::fs::read(p).ctx(|| format!("read {}", p.display()))?;
    let bad = |d: &str| Error::Format { path: p.into(), detail: d.into() };
    if b.len() < 32 || &b[0..8] != b"TLOGKMAP" {
        return Err(bad("bad magic"));
    }
    let (body, crc) = b.split_at(b.len() - 4);
    if crc32fast::hash(body) != u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]) {
        return Err(bad("checksum mismatch"));
    }
    if u32::from_le_bytes([b[8], b[9], b[10], b[11]]) != 1 {
        return Err(bad("unknown version"));
    }
    let u64at = |p: usize| -> Result<u64> { body.get(p..p + 8).map(crate::store::format::le_u64).ok_or_else(|| bad("truncated")) };
    let mut m = KeyMap { covered: u64at(12)?, ..Default::default() };
    let n = u64at(20)? as usize;
    let mut p = 28usize;
    for _ in 0..n {
        let k = body.get(p..p + 32).ok_or_else(|| bad("truncated"))?;
        let mut key = [0u8; 32];
        key.copy_from_slice(k);
        m.shards.insert(key, u64at(p + 32)?);
        p += 40;
    }
    let nh = u64at(p)? as usize;
    p += 8;
    for _ in 0..nh {
        let l = body.get(p..p + 2).ok_or_else(|| bad("truncated"))?;
        let l = u16::from_le_bytes([l[0], l[1]]) as usize;
        let v = body.get(p + 2..p + 2 + l).ok_or_else(|| bad("truncated"))?;
        let v = String::from_utf8(v.to_vec()).map_err(|_| bad("vdisk not UTF-8"))?;
        p += 2 + l;
        m.heads.insert(v, (u64at(p)?, u64at(p + 8)?));
        p += 16;
    }
    Ok(m)
}

impl Drop for LocalBackend {
    fn drop(&mut self) {
        if let Ok(m) = self.map.lock() {
            if m.since_save > 0 {
                if let Err(e) = save_keymap(&self.dir, &m) {
                    tracing::warn!(dir = %self.dir.display(), "saving the key map failed: {e}");
                }
            }
        }
    }
}

impl Backend for LocalBackend {
    fn name(&self) -> String {
        format!("local {}", self.dir.display())
    }

    fn put_batch(&self, shards: &[(&Key, &[u8])], heads: &[(&str, &[u8])]) -> Result<()> {
        // Records are written as parts (kind, key or vdisk, payload): the shards are not copied.
        let mut head_prefixes: Vec<Vec<u8>> = Vec::with_capacity(heads.len());
        for (vd, _) in heads {
            if vd.len() > u16::MAX as usize {
                return Err(Error::InvalidArgument(format!("vdisk id of {} bytes", vd.len())));
            }
            let mut p = Vec::with_capacity(3 + vd.len());
            p.push(KIND_HEAD);
            p.extend_from_slice(&(vd.len() as u16).to_le_bytes());
            p.extend_from_slice(vd.as_bytes());
            head_prefixes.push(p);
        }
        let mut recs: Vec<[&[u8]; 3]> = Vec::with_capacity(shards.len() + heads.len());
        for (k, v) in shards {
            recs.push([&[KIND_SHARD], &k[..], v]);
        }
        for (p, (_, v)) in head_prefixes.iter().zip(heads) {
            recs.push([p.as_slice(), &[], v]);
        }
        if recs.is_empty() {
            return Ok(());
        }
        let refs: Vec<&[&[u8]]> = recs.iter().map(|r| r.as_slice()).collect();
        let mut m = self.lock()?;
        let first = self.log.write_parts(&refs).map_err(|e| Error::Backend { backend: self.name(), detail: e.to_string() })?;
        self.log.sync().map_err(|e| Error::Backend { backend: self.name(), detail: e.to_string() })?;
        for (i, r) in recs.iter().enumerate() {
            apply_parts(&mut m, first + i as u64, r);
        }
        m.covered = first + recs.len() as u64;
        m.since_save += recs.len() as u64;
        if m.since_save >= KEYMAP_SAVE_EVERY {
            save_keymap(&self.dir, &m)?;
            m.since_save = 0;
        }
        Ok(())
    }

    fn get(&self, key: &Key) -> Result<Option<Vec<u8>>> {
        let off = match self.lock()?.shards.get(key) {
            Some(o) => *o,
            None => return Ok(None),
        };
        match self.log.read_at(off)? {
            Some((_, d)) if d.len() >= 33 && d[0] == KIND_SHARD && &d[1..33] == key => Ok(Some(d[33..].to_vec())),
            _ => Err(Error::Corrupt { location: format!("{} offset {off}", self.name()), detail: "record does not hold the indexed key".into() }),
        }
    }

    fn delete(&self, key: &Key) -> Result<()> {
        let mut r = vec![KIND_DELETE];
        r.extend_from_slice(key);
        let mut m = self.lock()?;
        if !m.shards.contains_key(key) {
            return Ok(());
        }
        let off = self.log.write(&r)?;
        self.log.sync()?;
        apply(&mut m, off, &r);
        m.covered = off + 1;
        m.since_save += 1;
        Ok(())
    }

    fn get_head(&self, vdisk: &str) -> Result<Option<Vec<u8>>> {
        let off = match self.lock()?.heads.get(vdisk) {
            Some((o, _)) => *o,
            None => return Ok(None),
        };
        match self.log.read_at(off)? {
            Some((_, d)) if d.len() >= 3 && d[0] == KIND_HEAD => {
                let n = u16::from_le_bytes([d[1], d[2]]) as usize;
                Ok(Some(d[3 + n..].to_vec()))
            }
            _ => Err(Error::Corrupt { location: format!("{} offset {off}", self.name()), detail: "record is not a head record".into() }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(h: u64) -> Vec<u8> {
        let mut v = vec![0u8; 16];
        v[8..16].copy_from_slice(&h.to_le_bytes());
        v
    }

    #[test]
    fn put_get_restart_with_and_without_keymap() {
        let d = tempfile::tempdir().unwrap();
        let k1 = [1u8; 32];
        let k2 = [2u8; 32];
        {
            let b = LocalBackend::open(d.path(), BigLogOptions::default()).unwrap();
            b.put_batch(&[(&k1, b"one"), (&k2, b"two")], &[("vd", &head(2))]).unwrap();
            b.put_batch(&[], &[("vd", &head(1))]).unwrap(); // older head loses
            b.delete(&k2).unwrap();
        }
        for remove_map in [false, true] {
            if remove_map {
                std::fs::remove_file(d.path().join("keymap")).unwrap();
            }
            let b = LocalBackend::open(d.path(), BigLogOptions::default()).unwrap();
            assert_eq!(b.get(&k1).unwrap().unwrap(), b"one");
            assert_eq!(b.get(&k2).unwrap(), None);
            assert_eq!(head_height(&b.get_head("vd").unwrap().unwrap()), 2);
        }
        // A stale map (covers more than the log) is rebuilt.
        let mut m = load_keymap(&d.path().join("keymap")).unwrap();
        m.covered = 1_000_000;
        save_keymap(d.path(), &m).unwrap();
        let b = LocalBackend::open(d.path(), BigLogOptions::default()).unwrap();
        assert_eq!(b.get(&k1).unwrap().unwrap(), b"one");
    }
}
