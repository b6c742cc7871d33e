//! The `local` backend: one embedded BigLog store directory per shard index.
//!
//! A store directory is *initialized* when it holds the identity file `STORE` (written by
//! [`LocalBackend::init`]: `tlog store init DIR`, or tlogd on a fresh data directory). Opening
//! never creates a directory: a missing or empty one may be a disk that failed to mount, and an
//! empty store silently put in its place would hide that. A directory written by an older tlog
//! (segments, no `STORE`) is adopted.
//!
//! Each put appends records to the directory's BigLog (one index entry per batch, the records
//! as embedded offsets) and fsyncs once per batch (group commit). Records are `kind u8` then:
//!
//! | kind | record                                                                    |
//! |------|---------------------------------------------------------------------------|
//! | 1    | shard: key (32) + shard bytes                                             |
//! | 2    | head (written by older versions): vdisk (u16 length + UTF-8) + record     |
//! | 3    | delete: key (32)                                                          |
//! | 4    | head: vdisk (u16 length + UTF-8), epoch u64, height u64, record           |
//! | 5    | metadata set: vdisk (u16 length + UTF-8), name (u16 length + UTF-8), value |
//! | 6    | metadata delete: vdisk (u16 length + UTF-8), name (u16 length + UTF-8)     |
//! | 7    | forget: vdisk (u16 length + UTF-8): its head and every metadata record go   |
//!
//! Per vdisk the head with the greatest (epoch, height) wins (at an equal order, the later
//! record: the same head written again by a repair). A kind-2 head counts as epoch 0
//! at the height stored in bytes 8..16 of its record (the `TLOGHEAD` layout of those versions).
//!
//! A key → offset map answers `get` without scanning. It is persisted to `keymap` (magic
//! `b"TLOGKMAP"`, version u32 (3), the log offset it covers u64, shard entries (key, offset),
//! head entries (vdisk, offset, epoch, height), metadata entries (vdisk, name, offset), CRC-32
//! of everything before it) every
//! [`KEYMAP_SAVE_EVERY`] records and on drop, with [`crate::fs::write_atomic`]. On open it is
//! loaded and only the log records after the covered offset are scanned; when it is missing,
//! unreadable, or covers more than the log holds (stale), it is rebuilt by a full scan. Version
//! 1 maps (heads without epoch) are read as epoch 0; versions 1 and 2 hold no metadata. Readers ([`LocalBackend::open_read_only`])
//! build the map in memory and write nothing, so they can run beside a writing tlogd.
//!
//! Space ([`Backend::reclaim`]): a record is *live* while the key map points to it; deletes,
//! forgets and superseded heads and metadata leave the rest obsolete. The oldest sealed segment
//! goes when its live records take less than [`COMPACT_LIVE_FRACTION`] of its data: they are
//! first written again into the hot segment (synced, the key map pointed at the copies and
//! saved), then the segment's files are deleted. A crash between the steps leaves either the old
//! segment (compacted again next time) or copies that the scan past the saved key map picks up
//! in order, so nothing live is lost and nothing obsolete comes back. Only the oldest segment is
//! ever freed (a log has no holes), which suits a history whose oldest part is what retention
//! deletes. Readers that looked up an offset in a segment freed meanwhile look it up again.

use super::{Backend, Batch, Key, Reclaimed};
#[cfg(test)]
use super::{HeadWrite, MetaWrite, ShardWrite};
use crate::bytes::{put_str16, Reader};
use crate::error::{Error, IoContext, Result};
use crate::store::{BigLog, BigLogOptions, Scanner};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Records appended between two saves of the key map.
pub const KEYMAP_SAVE_EVERY: u64 = 4096;

/// Name of the identity file of an initialized store directory.
pub const IDENTITY_FILE: &str = "STORE";

const IDENTITY: &[u8] = b"tlog store v1\n";

const KIND_SHARD: u8 = 1;
const KIND_HEAD_V1: u8 = 2;
const KIND_DELETE: u8 = 3;
const KIND_HEAD: u8 = 4;
const KIND_META_SET: u8 = 5;
const KIND_META_DELETE: u8 = 6;
const KIND_FORGET: u8 = 7;

/// Largest entry compaction writes its copies in (bytes; a larger record goes alone): a read of
/// one record reads its whole entry.
pub const COMPACT_ENTRY_BYTES: usize = 256 << 10;

/// A sealed segment is compacted when its live records take less than this share of its data.
pub const COMPACT_LIVE_FRACTION: f64 = 0.5;

/// The hot segment is sealed early (so that it can be compacted) once it holds at least
/// `segment_bytes / HOT_SPLIT_DIVISOR` of data of which less than [`COMPACT_LIVE_FRACTION`] is
/// live and no older segment remains: with 512 MiB segments, space comes back from 64 MiB on.
pub const HOT_SPLIT_DIVISOR: u64 = 8;

const KEYMAP_VERSION: u32 = 3;

#[derive(Default, Debug, PartialEq)]
struct KeyMap {
    shards: HashMap<Key, u64>,
    /// vdisk -> (offset, epoch, height)
    heads: HashMap<String, (u64, u64, u64)>,
    /// vdisk -> name -> offset of its newest set record
    metas: HashMap<String, std::collections::BTreeMap<String, u64>>,
    covered: u64,
    since_save: u64,
}

/// A store directory used as one backend.
pub struct LocalBackend {
    dir: PathBuf,
    log: BigLog,
    map: Mutex<KeyMap>,
    writable: bool,
    /// The hot segment is sealed early for compaction from this many data bytes on.
    split_floor: u64,
    /// Writer epochs by vdisk, as read from (and written to) their `w/epoch` records; held
    /// through every fenced write and fence, so neither lands between the other's check and
    /// write.
    fences: Mutex<HashMap<String, u64>>,
}

/// What a directory is, as a store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreState {
    /// No such directory.
    Missing,
    /// Not a directory.
    NotADirectory,
    /// An empty directory (e.g. a mount point without its disk).
    Empty,
    /// Holds files but no identity file and no segments: not a store.
    Foreign,
    /// Segments without the identity file: written by an older tlog (adopted on open).
    Legacy,
    /// An initialized store.
    Initialized,
}

/// Looks at `dir` without changing it.
pub fn store_state(dir: &Path) -> StoreState {
    let md = match std::fs::metadata(dir) {
        Ok(m) => m,
        Err(_) => return StoreState::Missing,
    };
    if !md.is_dir() {
        return StoreState::NotADirectory;
    }
    if dir.join(IDENTITY_FILE).is_file() {
        return StoreState::Initialized;
    }
    let mut any = false;
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            any = true;
            if e.file_name().to_string_lossy().ends_with(".data") {
                return StoreState::Legacy;
            }
        }
    }
    if any {
        StoreState::Foreign
    } else {
        StoreState::Empty
    }
}

impl LocalBackend {
    /// Initializes a store in `dir` (created if missing): writes the identity file. Errors when
    /// `dir` already holds a store or other files.
    pub fn init(dir: &Path) -> Result<()> {
        match store_state(dir) {
            StoreState::Missing | StoreState::Empty => {}
            StoreState::Initialized | StoreState::Legacy => return Err(Error::InvalidArgument(format!("{} is already a store", dir.display()))),
            StoreState::NotADirectory => return Err(Error::InvalidArgument(format!("{} exists and is not a directory", dir.display()))),
            StoreState::Foreign => return Err(Error::InvalidArgument(format!("{} holds other files: not made a store", dir.display()))),
        }
        std::fs::create_dir_all(dir).ctx(|| format!("create {}", dir.display()))?;
        crate::fs::write_atomic(&dir.join(IDENTITY_FILE), IDENTITY)?;
        if let Some(p) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            crate::fs::sync_dir(p)?;
        }
        Ok(())
    }

    /// Opens the initialized store in `dir` for writing (one writer process per directory).
    ///
    /// Errors: the directory is not an initialized store ([`Error::NotFound`] saying how to
    /// initialize it), is in use by another process, or its files are damaged beyond what
    /// recovery on open handles.
    pub fn open(dir: impl AsRef<Path>, opts: BigLogOptions) -> Result<LocalBackend> {
        let dir = dir.as_ref().to_path_buf();
        match store_state(&dir) {
            StoreState::Initialized => {}
            StoreState::Legacy => {
                tracing::info!(dir = %dir.display(), "store written by an older tlog: adopted (identity file written)");
                crate::fs::write_atomic(&dir.join(IDENTITY_FILE), IDENTITY)?;
            }
            s => return Err(not_a_store(&dir, s)),
        }
        let segment_bytes = opts.segment_bytes;
        let log = BigLog::open(&dir, opts)?;
        Self::with_log(dir, log, true, segment_bytes)
    }

    /// Opens the store in `dir` for reading only: takes no lock, writes nothing (the key map is
    /// built in memory), so it can run while tlogd writes the same directory.
    pub fn open_read_only(dir: impl AsRef<Path>) -> Result<LocalBackend> {
        let dir = dir.as_ref().to_path_buf();
        match store_state(&dir) {
            StoreState::Initialized | StoreState::Legacy => {}
            s => return Err(not_a_store(&dir, s)),
        }
        let log = BigLog::open_read_only(&dir)?;
        Self::with_log(dir, log, false, u64::MAX)
    }

    fn with_log(dir: PathBuf, log: BigLog, writable: bool, segment_bytes: u64) -> Result<LocalBackend> {
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
        map.heads.retain(|_, (o, _, _)| *o >= first);
        for m in map.metas.values_mut() {
            m.retain(|_, o| *o >= first);
        }
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
        if scanned > 0 && writable {
            tracing::info!(dir = %dir.display(), "indexed {scanned} records past the saved key map");
        }
        let split_floor = (segment_bytes / HOT_SPLIT_DIVISOR).max(1 << 20);
        let b = LocalBackend { dir, log, map: Mutex::new(map), writable, split_floor, fences: Mutex::new(HashMap::new()) };
        if scanned > 0 && writable {
            b.save_keymap()?;
        }
        Ok(b)
    }

    /// The underlying log.
    pub fn log(&self) -> &BigLog {
        &self.log
    }

    /// The store directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, KeyMap>> {
        self.map.lock().map_err(|_| Error::Backend { backend: self.name(), detail: "key map lock poisoned".into() })
    }

    /// The writer epoch this store holds for `vdisk` (cached in `f`, read from its `w/epoch`
    /// record the first time).
    fn held_epoch(&self, f: &mut HashMap<String, u64>, vdisk: &str) -> Result<u64> {
        if let Some(e) = f.get(vdisk) {
            return Ok(*e);
        }
        let e = match self.get_meta(vdisk, super::WRITER_EPOCH)? {
            Some(v) => <[u8; 8]>::try_from(v.as_slice())
                .map(u64::from_le_bytes)
                .map_err(|_| Error::Corrupt { location: format!("{} writer epoch of {vdisk}", self.name()), detail: "not 8 bytes".into() })?,
            None => 0,
        };
        f.insert(vdisk.to_string(), e);
        Ok(e)
    }

    /// Writes the key map file (atomically). A read-only store writes nothing.
    pub fn save_keymap(&self) -> Result<()> {
        if !self.writable {
            return Ok(());
        }
        let mut m = self.lock()?;
        save_keymap(&self.dir, &m)?;
        m.since_save = 0;
        Ok(())
    }
}

impl LocalBackend {
    /// Frees the oldest sealed segments whose live records are few (see the module doc);
    /// returns what it gave back. A read-only store frees nothing. Errors: I/O; what was freed
    /// before the error stays freed.
    pub fn compact(&self) -> Result<Reclaimed> {
        let mut out = Reclaimed::default();
        if !self.writable {
            return Ok(out);
        }
        let mut split = false;
        loop {
            let segs = self.log.segments()?;
            if segs.len() < 2 {
                // Only the hot segment is left: seal it early when it is big and mostly obsolete.
                match segs.first() {
                    Some(hot)
                        if !split && hot.data_bytes >= self.split_floor && self.live_estimate(hot.base)? < COMPACT_LIVE_FRACTION * hot.data_bytes as f64 =>
                    {
                        self.log.split().map_err(|e| Error::Backend { backend: self.name(), detail: e.to_string() })?;
                        split = true;
                        continue;
                    }
                    _ => return Ok(out),
                }
            }
            let (base, end, data_bytes, index_bytes) = (segs[0].base, segs[1].base, segs[0].data_bytes, segs[0].index_bytes);
            // The map's lock is held throughout: no write may change what is live meanwhile.
            let mut m = self.lock()?;
            let mut live: Vec<u64> = m.shards.values().copied().filter(|o| (base..end).contains(o)).collect();
            live.extend(m.heads.values().map(|(o, _, _)| *o).filter(|o| (base..end).contains(o)));
            live.extend(m.metas.values().flat_map(|n| n.values().copied()).filter(|o| (base..end).contains(o)));
            live.sort_unstable();
            live.dedup();
            let mut recs: Vec<Vec<u8>> = Vec::with_capacity(live.len());
            let mut live_bytes = 0u64;
            for off in &live {
                let (_, d) = self.log.read_at(*off)?.ok_or_else(|| Error::Corrupt {
                    location: format!("{} offset {off}", self.name()),
                    detail: "live record past the end of the log".into(),
                })?;
                live_bytes += d.len() as u64;
                recs.push(d);
                if live_bytes as f64 >= COMPACT_LIVE_FRACTION * data_bytes as f64 {
                    return Ok(out);
                }
            }
            // A reader of one record reads (and checks) its whole entry: entries of the copies
            // stay small (at most COMPACT_ENTRY_BYTES, or one record).
            let mut at = 0;
            while at < recs.len() {
                let mut end = at + 1;
                let mut bytes = recs[at].len();
                while end < recs.len() && bytes + recs[end].len() <= COMPACT_ENTRY_BYTES {
                    bytes += recs[end].len();
                    end += 1;
                }
                let chunk = &recs[at..end];
                let refs: Vec<&[u8]> = chunk.iter().map(Vec::as_slice).collect();
                let first = self.log.write_n(&refs).map_err(|e| Error::Backend { backend: self.name(), detail: e.to_string() })?;
                for (i, d) in chunk.iter().enumerate() {
                    apply(&mut m, first + i as u64, d);
                }
                m.covered = m.covered.max(first + chunk.len() as u64);
                at = end;
            }
            self.log.sync().map_err(|e| Error::Backend { backend: self.name(), detail: e.to_string() })?;
            #[cfg(feature = "failpoints")]
            fail::fail_point!("store::compact_copied", crate::failpoint_action);
            // The saved map must not point into the segment once its files go.
            save_keymap(&self.dir, &m)?;
            m.since_save = 0;
            #[cfg(feature = "failpoints")]
            fail::fail_point!("store::compact", crate::failpoint_action);
            self.log.trim()?;
            out.segments += 1;
            out.bytes += data_bytes + index_bytes;
            out.records_copied += recs.len() as u64;
            tracing::info!(dir = %self.dir.display(), segment = base, live = recs.len(), "store segment freed ({data_bytes} data bytes, {} live records copied forward)", recs.len());
        }
    }

    /// Data bytes of the live records at offsets from `from` on, estimated from their index
    /// entries (an entry of several records counts each as an equal share).
    fn live_estimate(&self, from: u64) -> Result<f64> {
        let m = self.lock()?;
        let live = m
            .shards
            .values()
            .copied()
            .chain(m.heads.values().map(|(o, _, _)| *o))
            .chain(m.metas.values().flat_map(|n| n.values().copied()))
            .filter(|o| *o >= from);
        let mut bytes = 0f64;
        for off in live {
            if let Some(e) = self.log.entry_info(off)? {
                bytes += e.data_len as f64 / e.count.max(1) as f64;
            }
        }
        Ok(bytes)
    }

    /// Reads the record at the offset `lookup` gives, looking it up again once when its segment
    /// was freed between the lookup and the read (a compaction moved it).
    fn read_live(&self, lookup: impl Fn(&KeyMap) -> Option<u64>) -> Result<Option<(u64, Vec<u8>)>> {
        for attempt in 0..2 {
            let Some(off) = lookup(&*self.lock()?) else { return Ok(None) };
            match self.log.read_at(off) {
                Ok(Some((_, d))) => return Ok(Some((off, d))),
                Ok(None) => {
                    return Err(Error::Corrupt {
                        location: format!("{} offset {off}", self.name()),
                        detail: "indexed record is past the end of the log".into(),
                    })
                }
                Err(Error::NotFound(_)) if attempt == 0 => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(None)
    }

    fn meta_value(&self, off: u64, d: &[u8], vdisk: &str, name: &str) -> Result<Vec<u8>> {
        let corrupt = || Error::Corrupt { location: format!("{} offset {off}", self.name()), detail: format!("record is not metadata {name} of {vdisk}") };
        let mut r = Reader::new(d);
        match (r.u8(), r.str16(), r.str16()) {
            (Some(KIND_META_SET), Some(v), Some(n)) if v == vdisk && n == name => Ok(r.rest().to_vec()),
            _ => Err(corrupt()),
        }
    }
}

fn not_a_store(dir: &Path, s: StoreState) -> Error {
    let what = match s {
        StoreState::Missing => "is missing",
        StoreState::NotADirectory => "is not a directory",
        StoreState::Empty => "is empty (a disk that did not mount?)",
        StoreState::Foreign => "holds files that are not a tlog store",
        _ => "is not a store",
    };
    Error::NotFound(format!(
        "store directory {} {what}; it is not recreated by itself (it may be a disk that failed to mount): run `tlog store init {}` to start it empty",
        dir.display(),
        dir.display()
    ))
}

/// The height in a head record written by older versions (bytes 8..16 of their `TLOGHEAD`
/// layout; see the module doc): what orders kind-2 records.
fn legacy_height(record: &[u8]) -> u64 {
    record.get(8..16).map(crate::bytes::le_u64).unwrap_or(0)
}

fn apply(map: &mut KeyMap, offset: u64, data: &[u8]) {
    let mut r = Reader::new(data);
    match r.u8() {
        Some(KIND_SHARD) => {
            if let Some(k) = r.array::<32>() {
                map.shards.insert(k, offset);
            }
        }
        Some(KIND_DELETE) => {
            if let Some(k) = r.array::<32>() {
                map.shards.remove(&k);
            }
        }
        Some(KIND_HEAD_V1) => {
            if let Some(v) = r.str16() {
                let h = legacy_height(r.rest());
                set_head(map, v, offset, 0, h);
            }
        }
        Some(KIND_HEAD) => {
            if let (Some(v), Some(e), Some(h)) = (r.str16(), r.u64(), r.u64()) {
                set_head(map, v, offset, e, h);
            }
        }
        Some(KIND_META_SET) => {
            if let (Some(v), Some(n)) = (r.str16(), r.str16()) {
                map.metas.entry(v.to_string()).or_default().insert(n.to_string(), offset);
            }
        }
        Some(KIND_META_DELETE) => {
            if let (Some(v), Some(n)) = (r.str16(), r.str16()) {
                if let Some(m) = map.metas.get_mut(v) {
                    m.remove(n);
                }
            }
        }
        Some(KIND_FORGET) => {
            if let Some(v) = r.str16() {
                map.heads.remove(v);
                map.metas.remove(v);
            }
        }
        _ => {}
    }
}

fn set_head(map: &mut KeyMap, vdisk: &str, offset: u64, epoch: u64, height: u64) {
    // At an equal order it is the same head written again (a repair): the later copy wins.
    let newer = map.heads.get(vdisk).map(|(_, e, h)| (epoch, height) >= (*e, *h)).unwrap_or(true);
    if newer {
        map.heads.insert(vdisk.to_string(), (offset, epoch, height));
    }
}

fn encode_keymap(m: &KeyMap) -> Vec<u8> {
    let mut b = Vec::with_capacity(32 + m.shards.len() * 40);
    b.extend_from_slice(b"TLOGKMAP");
    b.extend_from_slice(&KEYMAP_VERSION.to_le_bytes());
    b.extend_from_slice(&m.covered.to_le_bytes());
    let mut shards: Vec<_> = m.shards.iter().collect();
    shards.sort();
    b.extend_from_slice(&(shards.len() as u64).to_le_bytes());
    for (k, o) in shards {
        b.extend_from_slice(&k[..]);
        b.extend_from_slice(&o.to_le_bytes());
    }
    let mut heads: Vec<_> = m.heads.iter().collect();
    heads.sort();
    b.extend_from_slice(&(heads.len() as u64).to_le_bytes());
    for (v, (o, e, h)) in heads {
        put_str16(&mut b, v);
        for x in [o, e, h] {
            b.extend_from_slice(&x.to_le_bytes());
        }
    }
    let mut metas: Vec<(&String, &String, &u64)> = m.metas.iter().flat_map(|(v, ns)| ns.iter().map(move |(n, o)| (v, n, o))).collect();
    metas.sort();
    b.extend_from_slice(&(metas.len() as u64).to_le_bytes());
    for (v, n, o) in metas {
        put_str16(&mut b, v);
        put_str16(&mut b, n);
        b.extend_from_slice(&o.to_le_bytes());
    }
    let crc = crc32fast::hash(&b);
    b.extend_from_slice(&crc.to_le_bytes());
    b
}

fn save_keymap(dir: &Path, m: &KeyMap) -> Result<()> {
    crate::fs::write_atomic(&dir.join("keymap"), &encode_keymap(m))
}

fn decode_keymap(p: &Path, b: &[u8]) -> Result<KeyMap> {
    let bad = |d: &str| Error::Format { path: p.into(), detail: d.into() };
    if b.len() < 32 || &b[0..8] != b"TLOGKMAP" {
        return Err(bad("bad magic"));
    }
    let (body, crc) = b.split_at(b.len() - 4);
    if crc32fast::hash(body) != crate::bytes::le_u32(crc) {
        return Err(bad("checksum mismatch"));
    }
    let mut r = Reader::new(&body[8..]);
    let version = r.u32().ok_or_else(|| bad("truncated"))?;
    if !(1..=KEYMAP_VERSION).contains(&version) {
        return Err(bad(&format!("unknown version {version}")));
    }
    let mut m = KeyMap { covered: r.u64().ok_or_else(|| bad("truncated"))?, ..Default::default() };
    let n = r.u64().ok_or_else(|| bad("truncated"))?;
    if n > r.remaining() as u64 / 40 {
        return Err(bad("shard count larger than the file"));
    }
    for _ in 0..n {
        let key = r.array::<32>().ok_or_else(|| bad("truncated"))?;
        m.shards.insert(key, r.u64().ok_or_else(|| bad("truncated"))?);
    }
    let nh = r.u64().ok_or_else(|| bad("truncated"))?;
    if nh > r.remaining() as u64 / 18 {
        return Err(bad("head count larger than the file"));
    }
    for _ in 0..nh {
        let v = r.str16().ok_or_else(|| bad("truncated or not UTF-8"))?.to_string();
        let o = r.u64().ok_or_else(|| bad("truncated"))?;
        let (e, h) = if version == 1 { (0, r.u64()) } else { (r.u64().ok_or_else(|| bad("truncated"))?, r.u64()) };
        m.heads.insert(v, (o, e, h.ok_or_else(|| bad("truncated"))?));
    }
    if version >= 3 {
        let nm = r.u64().ok_or_else(|| bad("truncated"))?;
        if nm > r.remaining() as u64 / 12 {
            return Err(bad("metadata count larger than the file"));
        }
        for _ in 0..nm {
            let v = r.str16().ok_or_else(|| bad("truncated or not UTF-8"))?.to_string();
            let n = r.str16().ok_or_else(|| bad("truncated or not UTF-8"))?.to_string();
            let o = r.u64().ok_or_else(|| bad("truncated"))?;
            m.metas.entry(v).or_default().insert(n, o);
        }
    }
    if r.remaining() != 0 {
        return Err(bad("trailing bytes"));
    }
    Ok(m)
}

/// Checks a key map file's bytes as an open would (for `tlog store` tools and fuzzing); returns
/// the log offset it covers and its shard and head counts. Errors: [`Error::Format`] naming what
/// is wrong.
pub fn parse_keymap(bytes: &[u8]) -> Result<(u64, usize, usize)> {
    let m = decode_keymap(Path::new("keymap"), bytes)?;
    Ok((m.covered, m.shards.len(), m.heads.len()))
}

fn load_keymap(p: &Path) -> Result<KeyMap> {
    let b = std::fs::read(p).ctx(|| format!("read {}", p.display()))?;
    decode_keymap(p, &b)
}

impl Drop for LocalBackend {
    fn drop(&mut self) {
        if !self.writable {
            return;
        }
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

    fn write(&self, batch: &Batch<'_>) -> Result<()> {
        #[cfg(feature = "failpoints")]
        fail::fail_point!("backend::put_batch", crate::failpoint_action);
        let (shards, heads, metas) = (&batch.shards, &batch.heads, &batch.metas);
        // Records are written as parts (kind, key or vdisk, payload): the shards are not copied.
        let mut head_prefixes: Vec<Vec<u8>> = Vec::with_capacity(heads.len());
        for h in heads {
            if h.vdisk.len() > u16::MAX as usize {
                return Err(Error::InvalidArgument(format!("vdisk id of {} bytes", h.vdisk.len())));
            }
            let mut p = Vec::with_capacity(19 + h.vdisk.len());
            p.push(KIND_HEAD);
            put_str16(&mut p, h.vdisk);
            p.extend_from_slice(&h.epoch.to_le_bytes());
            p.extend_from_slice(&h.height.to_le_bytes());
            head_prefixes.push(p);
        }
        let mut recs: Vec<[&[u8]; 3]> = Vec::with_capacity(shards.len() + heads.len());
        for s in shards {
            recs.push([&[KIND_SHARD], &s.key[..], s.bytes]);
        }
        for (p, h) in head_prefixes.iter().zip(heads.iter()) {
            recs.push([p.as_slice(), &[], h.record]);
        }
        let mut meta_prefixes: Vec<Vec<u8>> = Vec::with_capacity(metas.len());
        for m in metas {
            if m.vdisk.len() > u16::MAX as usize || m.name.len() > 255 {
                return Err(Error::InvalidArgument(format!("metadata name {:?} of vdisk {:?} too long", m.name, m.vdisk)));
            }
            let mut p = vec![if m.value.is_some() { KIND_META_SET } else { KIND_META_DELETE }];
            put_str16(&mut p, m.vdisk);
            put_str16(&mut p, m.name);
            meta_prefixes.push(p);
        }
        for (p, m) in meta_prefixes.iter().zip(metas.iter()) {
            recs.push([p.as_slice(), &[], m.value.unwrap_or(&[])]);
        }
        let deletes: Vec<&Key> = {
            let m = self.lock()?;
            batch.deletes.iter().copied().filter(|k| m.shards.contains_key(*k)).collect()
        };
        for k in &deletes {
            recs.push([&[KIND_DELETE], &k[..], &[]]);
        }
        let mut forget_recs: Vec<Vec<u8>> = Vec::with_capacity(batch.forget.len());
        for v in &batch.forget {
            let mut p = vec![KIND_FORGET];
            put_str16(&mut p, v);
            forget_recs.push(p);
        }
        for p in &forget_recs {
            recs.push([p.as_slice(), &[], &[]]);
        }
        if recs.is_empty() {
            return Ok(());
        }
        let refs: Vec<&[&[u8]]> = recs.iter().map(|r| r.as_slice()).collect();
        let backend_err = |e: Error| Error::Backend { backend: self.name(), detail: e.to_string() };
        let mut m = self.lock()?;
        // The shards go in one store entry and the small records (heads, index entries and
        // other metadata, deletes) in the next: a read of one record reads and checks its whole
        // entry, so an index entry beside a shard cost a read of the shard. Both entries are
        // synced together below; a crash between them leaves an unsynced shard that no head
        // names (as a backend that missed the head would), never a head without its shard.
        let (shard_refs, small_refs) = refs.split_at(shards.len());
        let first = if shard_refs.is_empty() { None } else { Some(self.log.write_parts(shard_refs).map_err(backend_err)?) };
        let rest = if small_refs.is_empty() { None } else { Some(self.log.write_parts(small_refs).map_err(backend_err)?) };
        self.log.sync().map_err(backend_err)?;
        let first = first.unwrap_or(0);
        let rest = rest.unwrap_or(first + shards.len() as u64);
        for (i, s) in shards.iter().enumerate() {
            m.shards.insert(*s.key, first + i as u64);
        }
        for (i, h) in heads.iter().enumerate() {
            set_head(&mut m, h.vdisk, rest + i as u64, h.epoch, h.height);
        }
        for (i, x) in metas.iter().enumerate() {
            let off = rest + (heads.len() + i) as u64;
            match x.value {
                Some(_) => {
                    m.metas.entry(x.vdisk.to_string()).or_default().insert(x.name.to_string(), off);
                }
                None => {
                    if let Some(v) = m.metas.get_mut(x.vdisk) {
                        v.remove(x.name);
                    }
                }
            }
        }
        for k in &deletes {
            m.shards.remove(*k);
        }
        for v in &batch.forget {
            m.heads.remove(*v);
            m.metas.remove(*v);
        }
        m.covered = rest + (recs.len() - shards.len()) as u64;
        m.since_save += recs.len() as u64;
        if m.since_save >= KEYMAP_SAVE_EVERY {
            save_keymap(&self.dir, &m)?;
            m.since_save = 0;
        }
        Ok(())
    }

    fn get(&self, key: &Key) -> Result<Option<Vec<u8>>> {
        let Some((off, d)) = self.read_live(|m| m.shards.get(key).copied())? else { return Ok(None) };
        let corrupt = |d: &str| Error::Corrupt { location: format!("{} offset {off}", self.name()), detail: d.into() };
        let mut r = Reader::new(&d);
        match (r.u8(), r.array::<32>()) {
            (Some(KIND_SHARD), Some(k)) if &k == key => Ok(Some(r.rest().to_vec())),
            _ => Err(corrupt("record does not hold the indexed key")),
        }
    }

    fn delete(&self, key: &Key) -> Result<()> {
        let mut rec = vec![KIND_DELETE];
        rec.extend_from_slice(key);
        let mut m = self.lock()?;
        if !m.shards.contains_key(key) {
            return Ok(());
        }
        let off = self.log.write(&rec)?;
        self.log.sync()?;
        m.shards.remove(key);
        m.covered = off + 1;
        m.since_save += 1;
        Ok(())
    }

    fn get_head(&self, vdisk: &str) -> Result<Option<Vec<u8>>> {
        let Some((off, d)) = self.read_live(|m| m.heads.get(vdisk).map(|(o, _, _)| *o))? else { return Ok(None) };
        let corrupt = || Error::Corrupt { location: format!("{} offset {off}", self.name()), detail: "record is not a head record".into() };
        let mut r = Reader::new(&d);
        match r.u8() {
            Some(KIND_HEAD_V1) => {
                r.str16().ok_or_else(corrupt)?;
                Ok(Some(r.rest().to_vec()))
            }
            Some(KIND_HEAD) => {
                r.str16().ok_or_else(corrupt)?;
                r.u64().zip(r.u64()).ok_or_else(corrupt)?;
                Ok(Some(r.rest().to_vec()))
            }
            _ => Err(corrupt()),
        }
    }

    fn fence(&self, vdisk: &str, epoch: u64) -> Result<u64> {
        let mut f = self.fences.lock().map_err(|_| Error::Backend { backend: self.name(), detail: "fence lock poisoned".into() })?;
        let cur = self.held_epoch(&mut f, vdisk)?;
        if epoch <= cur {
            return Ok(cur);
        }
        let v = epoch.to_le_bytes();
        self.write(&Batch { metas: vec![super::MetaWrite { vdisk, name: super::WRITER_EPOCH, value: Some(&v) }], ..Default::default() })?;
        f.insert(vdisk.to_string(), epoch);
        Ok(epoch)
    }

    fn write_fenced(&self, batch: &Batch<'_>, fences: &[(&str, u64)]) -> Result<super::Refused> {
        let mut f = self.fences.lock().map_err(|_| Error::Backend { backend: self.name(), detail: "fence lock poisoned".into() })?;
        let mut refused = Vec::new();
        for (v, e) in fences {
            let held = self.held_epoch(&mut f, v)?;
            if held > *e {
                refused.push((v.to_string(), held));
            }
        }
        if refused.is_empty() {
            self.write(batch)?;
        } else {
            self.write(&super::without(batch, &refused))?;
        }
        Ok(refused)
    }

    fn get_meta(&self, vdisk: &str, name: &str) -> Result<Option<Vec<u8>>> {
        let Some((off, d)) = self.read_live(|m| m.metas.get(vdisk).and_then(|m| m.get(name)).copied())? else { return Ok(None) };
        self.meta_value(off, &d, vdisk, name).map(Some)
    }

    fn list_meta(&self, vdisk: &str, prefix: &str) -> Result<Vec<(String, Vec<u8>)>> {
        let names: Vec<String> = match self.lock()?.metas.get(vdisk) {
            Some(m) => m.range(prefix.to_string()..).take_while(|(k, _)| k.starts_with(prefix)).map(|(k, _)| k.clone()).collect(),
            None => return Ok(Vec::new()),
        };
        let mut out = Vec::with_capacity(names.len());
        for n in names {
            if let Some(v) = self.get_meta(vdisk, &n)? {
                out.push((n, v));
            }
        }
        Ok(out)
    }

    fn reclaim(&self) -> Result<Reclaimed> {
        self.compact()
    }

    fn vdisks(&self) -> Result<Vec<String>> {
        let mut v: Vec<String> = self.lock()?.heads.keys().cloned().collect();
        v.sort();
        Ok(v)
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

    fn hw<'a>(vdisk: &'a str, epoch: u64, height: u64, record: &'a [u8]) -> HeadWrite<'a> {
        HeadWrite { vdisk, epoch, height, record }
    }

    fn sw<'a>(key: &'a Key, bytes: &'a [u8]) -> ShardWrite<'a> {
        ShardWrite { vdisk: "vd", epoch: 1, key, bytes }
    }

    fn store() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        LocalBackend::init(d.path()).unwrap();
        d
    }

    #[test]
    fn writer_epochs_fence_writes_and_survive_a_restart() {
        let d = store();
        {
            let b = LocalBackend::open(d.path(), BigLogOptions::default()).unwrap();
            crate::backend::memory::fence_tests::check_fencing(&b);
        }
        let b = LocalBackend::open(d.path(), BigLogOptions::default()).unwrap();
        assert_eq!(b.fence("a", 0).unwrap(), 3, "the writer epoch was lost at restart");
        assert_eq!(b.fence("a", 1).unwrap(), 3);
    }

    #[test]
    fn put_get_restart_with_and_without_keymap() {
        let d = store();
        let k1 = [1u8; 32];
        let k2 = [2u8; 32];
        {
            let b = LocalBackend::open(d.path(), BigLogOptions::default()).unwrap();
            b.put_batch(&[sw(&k1, b"one"), sw(&k2, b"two")], &[hw("vd", 1, 2, &head(2))]).unwrap();
            b.put_batch(&[], &[hw("vd", 1, 1, &head(1))]).unwrap(); // older head loses
            b.put_batch(&[], &[hw("vd", 0, 9, &head(9))]).unwrap(); // older epoch loses
            b.delete(&k2).unwrap();
        }
        for remove_map in [false, true] {
            if remove_map {
                std::fs::remove_file(d.path().join("keymap")).unwrap();
            }
            let b = LocalBackend::open(d.path(), BigLogOptions::default()).unwrap();
            assert_eq!(b.get(&k1).unwrap().unwrap(), b"one");
            assert_eq!(b.get(&k2).unwrap(), None);
            assert_eq!(b.get_head("vd").unwrap().unwrap(), head(2));
            assert_eq!(b.vdisks().unwrap(), vec!["vd".to_string()]);
        }
        // A stale map (covers more than the log) is rebuilt.
        let mut m = load_keymap(&d.path().join("keymap")).unwrap();
        m.covered = 1_000_000;
        save_keymap(d.path(), &m).unwrap();
        let b = LocalBackend::open(d.path(), BigLogOptions::default()).unwrap();
        assert_eq!(b.get(&k1).unwrap().unwrap(), b"one");
    }

    #[test]
    fn metadata_records_survive_reopen_with_and_without_the_keymap() {
        let d = store();
        {
            let b = LocalBackend::open(d.path(), BigLogOptions::default()).unwrap();
            let mw = |name, value| MetaWrite { vdisk: "vd", name, value };
            b.write(&Batch { metas: vec![mw("i/1", Some(&b"one"[..])), mw("i/2", Some(&b"two"[..])), mw("c/x", Some(&b"cp"[..]))], ..Default::default() })
                .unwrap();
            b.write(&Batch { metas: vec![mw("i/1", None), mw("i/2", Some(&b"TWO"[..]))], ..Default::default() }).unwrap();
        }
        for remove_map in [false, true] {
            if remove_map {
                std::fs::remove_file(d.path().join("keymap")).unwrap();
            }
            let b = LocalBackend::open_read_only(d.path()).unwrap();
            assert_eq!(b.list_meta("vd", "i/").unwrap(), vec![("i/2".to_string(), b"TWO".to_vec())]);
            assert_eq!(b.get_meta("vd", "c/x").unwrap(), Some(b"cp".to_vec()));
            assert_eq!(b.get_meta("vd", "i/1").unwrap(), None);
            assert!(b.list_meta("other", "").unwrap().is_empty());
        }
    }

    #[test]
    fn missing_or_empty_directories_are_not_stores() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("s");
        let e = LocalBackend::open(&p, BigLogOptions::default()).err().unwrap().to_string();
        assert!(e.contains("missing") && e.contains("tlog store init"), "{e}");
        assert!(!p.exists(), "open must not create the directory");
        std::fs::create_dir(&p).unwrap();
        let e = LocalBackend::open(&p, BigLogOptions::default()).err().unwrap().to_string();
        assert!(e.contains("empty"), "{e}");
        LocalBackend::init(&p).unwrap();
        assert!(LocalBackend::init(&p).unwrap_err().to_string().contains("already a store"));
        LocalBackend::open(&p, BigLogOptions::default()).unwrap();
    }

    #[test]
    fn readers_write_nothing_and_run_beside_the_writer() {
        let d = store();
        let w = LocalBackend::open(d.path(), BigLogOptions::default()).unwrap();
        let k = [7u8; 32];
        w.put_batch(&[sw(&k, b"seven")], &[hw("vd", 1, 1, &head(1))]).unwrap();
        let before: Vec<_> = std::fs::read_dir(d.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        let r = LocalBackend::open_read_only(d.path()).unwrap();
        assert_eq!(r.get(&k).unwrap().unwrap(), b"seven");
        assert!(r.put_batch(&[sw(&k, b"x")], &[]).is_err(), "a reader cannot write");
        drop(r);
        let after: Vec<_> = std::fs::read_dir(d.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(before, after);
    }

    /// Every `.data` file under `dir`.
    fn data_files(dir: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                out.extend(data_files(&p));
            } else if p.extension().map(|x| x == "data").unwrap_or(false) {
                out.push(p);
            }
        }
        out
    }

    #[test]
    fn a_damaged_shard_leaves_the_head_and_index_entry_of_its_batch_readable() {
        let d = store();
        let b = LocalBackend::open(d.path(), BigLogOptions::default()).unwrap();
        let k = [5u8; 32];
        let shard = vec![0xABu8; 64 << 10];
        let mw = MetaWrite { vdisk: "vd", name: "i/1", value: Some(&b"entry"[..]) };
        b.write(&Batch { shards: vec![sw(&k, &shard)], heads: vec![hw("vd", 1, 1, &head(1))], metas: vec![mw], ..Default::default() }).unwrap();
        // One bit flipped inside the shard's bytes on disk.
        let files = data_files(d.path());
        let (f, at) = files
            .iter()
            .find_map(|f| {
                let bytes = std::fs::read(f).unwrap();
                bytes.windows(1024).position(|w| w.iter().all(|x| *x == 0xAB)).map(|i| (f.clone(), i + 4096))
            })
            .expect("the shard's bytes are in a data file");
        use std::os::unix::fs::FileExt;
        let file = std::fs::OpenOptions::new().read(true).write(true).open(&f).unwrap();
        let mut byte = [0u8; 1];
        file.read_exact_at(&mut byte, at as u64).unwrap();
        file.write_all_at(&[byte[0] ^ 0x10], at as u64).unwrap();
        assert!(matches!(b.get(&k), Err(Error::Corrupt { .. })), "the flipped shard still read back");
        // The small records of the batch are in an entry of their own, checked on their own.
        assert_eq!(b.get_meta("vd", "i/1").unwrap(), Some(b"entry".to_vec()));
        assert_eq!(b.get_head("vd").unwrap(), Some(head(1)));
    }

    #[test]
    fn corrupt_records_are_errors_not_panics() {
        let d = store();
        let b = LocalBackend::open(d.path(), BigLogOptions::default()).unwrap();
        // A head record whose vdisk length runs past the record (the old code sliced
        // `d[3 + n..]` unchecked).
        b.log.write(&[KIND_HEAD, 0xff, 0x7f, b'v']).unwrap();
        b.log.sync().unwrap();
        let mut m = KeyMap::default();
        apply(&mut m, 0, &[KIND_HEAD, 0xff, 0x7f, b'v']);
        assert!(m.heads.is_empty());
        b.lock().unwrap().heads.insert("v".into(), (0, 0, 1));
        assert!(matches!(b.get_head("v"), Err(Error::Corrupt { .. })));
        for bad in [&b"TLOGKMAP\x02\x00\x00\x00"[..], &[0u8; 40][..]] {
            assert!(decode_keymap(Path::new("k"), bad).is_err());
        }
    }

    #[test]
    fn compaction_frees_old_segments_and_keeps_every_live_record() {
        let d = store();
        let opts = BigLogOptions { segment_bytes: 64 << 10, index_capacity: 1024, ..Default::default() };
        let keys: Vec<Key> = (0..40u8).map(|i| [i; 32]).collect();
        let data = vec![0x5au8; 8 << 10];
        {
            let b = LocalBackend::open(d.path(), opts.clone()).unwrap();
            for (i, k) in keys.iter().enumerate() {
                let mw = MetaWrite { vdisk: "vd", name: "c/x", value: Some(&data[..i + 1]) };
                b.write(&Batch {
                    shards: vec![sw(k, &data)],
                    heads: vec![hw("vd", 1, i as u64 + 1, &head(i as u64 + 1))],
                    metas: vec![mw],
                    ..Default::default()
                })
                .unwrap();
            }
            assert!(b.log.segments().unwrap().len() > 3, "several segments written");
            // Everything but the first and the last 3 shards deleted: the old segments hold
            // obsolete records (superseded heads and metadata, deleted shards) and, in the
            // oldest, one live shard that must move.
            let dels: Vec<&Key> = keys[1..37].iter().collect();
            b.write(&Batch { deletes: dels, ..Default::default() }).unwrap();
            let before: u64 = b.log.segments().unwrap().iter().map(|s| s.data_bytes).sum();
            let r = b.compact().unwrap();
            let after: u64 = b.log.segments().unwrap().iter().map(|s| s.data_bytes).sum();
            assert!(r.segments >= 3 && r.records_copied >= 1 && after < before / 2, "{r:?}: {before} -> {after} bytes");
            for k in keys[37..].iter().chain([&keys[0]]) {
                assert_eq!(b.get(k).unwrap().unwrap(), data);
            }
            assert_eq!(b.get(&keys[1]).unwrap(), None);
            assert_eq!(b.get_head("vd").unwrap().unwrap(), head(40));
            assert_eq!(b.get_meta("vd", "c/x").unwrap().unwrap(), &data[..40]);
        }
        // Reopened with the saved map and with a full scan: the same.
        for remove_map in [false, true] {
            if remove_map {
                std::fs::remove_file(d.path().join("keymap")).unwrap();
            }
            let b = LocalBackend::open(d.path(), opts.clone()).unwrap();
            for k in keys[37..].iter().chain([&keys[0]]) {
                assert_eq!(b.get(k).unwrap().unwrap(), data);
            }
            assert_eq!(b.get(&keys[1]).unwrap(), None);
            assert_eq!(b.get_head("vd").unwrap().unwrap(), head(40));
            assert_eq!(b.get_meta("vd", "c/x").unwrap().unwrap(), &data[..40]);
        }
    }

    #[test]
    fn a_mostly_obsolete_hot_segment_is_sealed_and_freed() {
        let d = store();
        // 8 MiB segments: the hot one is sealed early from 1 MiB on.
        let opts = BigLogOptions { segment_bytes: 8 << 20, index_capacity: 1024, ..Default::default() };
        let b = LocalBackend::open(d.path(), opts).unwrap();
        let keys: Vec<Key> = (0..40u8).map(|i| [i; 32]).collect();
        let data = vec![0x33u8; 64 << 10];
        for k in &keys {
            b.write(&Batch { shards: vec![sw(k, &data)], ..Default::default() }).unwrap();
        }
        assert_eq!(b.log.segments().unwrap().len(), 1, "everything in the hot segment");
        // Too live: nothing happens.
        assert_eq!(b.compact().unwrap().segments, 0);
        assert_eq!(b.log.segments().unwrap().len(), 1);
        b.write(&Batch { deletes: keys[..36].iter().collect(), ..Default::default() }).unwrap();
        let r = b.compact().unwrap();
        assert_eq!((r.segments, r.records_copied), (1, 4), "{r:?}");
        let left: u64 = b.log.segments().unwrap().iter().map(|s| s.data_bytes).sum();
        assert!(left < 8 * data.len() as u64, "{left} bytes left");
        for k in &keys[36..] {
            assert_eq!(b.get(k).unwrap().unwrap(), data);
        }
        assert_eq!(b.get(&keys[0]).unwrap(), None);
    }

    #[test]
    fn forget_removes_a_vdisks_head_and_metadata() {
        let d = store();
        let b = LocalBackend::open(d.path(), BigLogOptions::default()).unwrap();
        let mw = MetaWrite { vdisk: "gone", name: "c/x", value: Some(b"1") };
        b.write(&Batch { heads: vec![hw("gone", 1, 1, &head(1)), hw("kept", 1, 1, &head(1))], metas: vec![mw], ..Default::default() }).unwrap();
        b.write(&Batch { forget: vec!["gone"], ..Default::default() }).unwrap();
        assert_eq!(b.vdisks().unwrap(), vec!["kept".to_string()]);
        assert_eq!(b.get_meta("gone", "c/x").unwrap(), None);
        drop(b);
        std::fs::remove_file(d.path().join("keymap")).unwrap();
        let b = LocalBackend::open(d.path(), BigLogOptions::default()).unwrap();
        assert_eq!(b.vdisks().unwrap(), vec!["kept".to_string()]);
    }

    /// The key map's bytes, pinned.
    #[test]
    fn golden_keymap() {
        let mut m = KeyMap { covered: 9, ..Default::default() };
        m.shards.insert([3; 32], 5);
        m.heads.insert("vd".into(), (6, 2, 7));
        m.metas.entry("vd".into()).or_default().insert("i/1".into(), 8);
        let b = encode_keymap(&m);
        let mut want = b"TLOGKMAP\x03\x00\x00\x00\x09\x00\x00\x00\x00\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00".to_vec();
        want.extend_from_slice(&[3; 32]);
        want.extend_from_slice(&5u64.to_le_bytes());
        want.extend_from_slice(&1u64.to_le_bytes());
        want.extend_from_slice(b"\x02\x00vd");
        for x in [6u64, 2, 7] {
            want.extend_from_slice(&x.to_le_bytes());
        }
        want.extend_from_slice(&1u64.to_le_bytes());
        want.extend_from_slice(b"\x02\x00vd\x03\x00i/1");
        want.extend_from_slice(&8u64.to_le_bytes());
        let crc = crc32fast::hash(&want);
        want.extend_from_slice(&crc.to_le_bytes());
        assert_eq!(b, want);
        assert_eq!(decode_keymap(Path::new("k"), &b).unwrap(), m);
    }
}
