//! BigLog: a log of segments, each a data file plus a preallocated memory-mapped index.
//!
//! After netlog's BigLog (see [`super::format`] for the byte layout). Offsets are u64 and
//! strictly increasing across segments; a segment is named by its base offset, zero-padded to
//! 20 digits so names sort. The segment with the highest base is *hot* and takes writes.
//! Timestamps are non-decreasing (a clock step back is clamped to the last timestamp).
//!
//! Durability: [`BigLog::write`] returns once the bytes are in the page cache (or, with direct
//! I/O, on the device); [`BigLog::sync`] fsyncs the data file and then msyncs the index, so
//! after `sync` returns everything written before it survives a crash.
//!
//! Direct I/O ([`BigLogOptions::direct_io`]): the hot segment's data is written with `O_DIRECT`
//! (open(2)), which moves whole aligned blocks only. Appends are staged in an aligned buffer;
//! the partial last block (the *tail*) is kept in memory and written again, completed, with the
//! next append, and the file is zero-padded to the block size meanwhile. The data file is cut
//! back to its exact length when the segment is sealed or reopened (a cut of zero padding alone
//! is not reported). On open, the hot segment's tail is validated and a torn last entry
//! is cut back (and logged); damage before the tail is never repaired silently: reads of the
//! damaged entries fail with [`Error::Corrupt`] naming the segment and offset.
//!
//! Zero-filled room ([`BigLogOptions::zero_fill_bytes`]): while the hot segment's syncs are
//! small, a background thread keeps a few MiB of written zeros after its data, as PostgreSQL
//! zero-fills a WAL segment before use, so an append overwrites blocks the file already has and
//! its fsync writes the data alone, not the file's new size and block map. The zeros are never
//! written over data (a step and an append hold the same lock), and they are cut off like the
//! direct-I/O padding: at a split, at close, and at the next open after a crash.

use super::format::{self, IndexEntry, Slot, DATA_HEADER_LEN, ENTRY_LEN, INDEX_HEADER_LEN};
use crate::error::{Error, IoContext, Result};
use crate::fs::sync_dir;
use crate::time::now_ns;
use memmap2::{Mmap, MmapMut};
use std::fs::{File, OpenOptions};
use std::io::IoSlice;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::time::Duration;

/// Options of a BigLog.
#[derive(Clone, Debug)]
pub struct BigLogOptions {
    /// Data bytes after which the hot segment is split automatically (default 512 MiB).
    pub segment_bytes: u64,
    /// Index slots preallocated per segment (default 131072: one per 4 KiB of a 512 MiB
    /// segment). A full index splits the segment too.
    pub index_capacity: u64,
    /// After each [`BigLog::sync`] (and when a segment is sealed), drop the synced data pages
    /// from the page cache with `posix_fadvise(POSIX_FADV_DONTNEED)` (default true). Reads
    /// still work, from the disk. Advisory: a failure is logged at debug level and ignored.
    /// Moot for segments written with direct I/O, which never enter the page cache.
    pub drop_cache: bool,
    /// Write the hot segment's data with direct I/O (`O_DIRECT`), past the page cache (default
    /// false): no copy into the cache, no writeback of it at fsync, nothing to drop afterwards,
    /// but every write waits for the device, one at a time per store, where a write through
    /// the cache hands the kernel the whole batch at its fsync (measured faster, README
    /// "Performance").
    /// Where the filesystem does not offer it (statx(2) reports no direct-I/O alignment, or
    /// open or a write refuses it with EINVAL) the segment is written through the page cache,
    /// and that is logged.
    pub direct_io: bool,
    /// Zero-filled room kept ahead of the hot segment's data while its syncs are small
    /// (bytes; default 4 MiB, 0 = off). A background thread writes zeros past the data and
    /// syncs them, so later appends overwrite allocated blocks of an unchanged file length and
    /// their fsync writes the data alone, not the file's size and block map: 13-26% off
    /// tlogd's flush p50 under 4 KiB random writes through the NBD gateway, six stores on one
    /// ext4 disk (README "Performance"). PostgreSQL zero-fills its WAL segments for the same
    /// reason (`wal_init_zero`). Syncs of
    /// [`ZERO_FILL_SMALL_SYNC`] bytes or more are bound by bandwidth, not by the metadata
    /// write, so they ask for none. The zeros are cut off when the segment is sealed, when the
    /// store is closed, and (after a crash) when it is opened again. Not used with direct I/O.
    pub zero_fill_bytes: u64,
}

/// A sync that made fewer new bytes durable than this asks for zero-filled room ahead (see
/// [`BigLogOptions::zero_fill_bytes`]).
pub const ZERO_FILL_SMALL_SYNC: u64 = 256 << 10;

/// Zero bytes written per step of the zero-fill thread (the write lock is held for one step).
const ZERO_FILL_STEP: usize = 256 << 10;

/// Zero bytes the zero-fill thread writes and syncs per request, at most: small rounds spread
/// its writes out instead of sending stores on one disk into a burst together.
const ZERO_FILL_ROUND: u64 = 1 << 20;

/// The largest [`BigLogOptions::zero_fill_bytes`] allowed (64 MiB).
pub const ZERO_FILL_MAX: u64 = 64 << 20;

/// A trailing run of zeros shorter than this after the last entry is padding (direct-I/O
/// padding or zero-filled room), cut off at open without a warning.
const ZERO_TAIL_MAX: u64 = ZERO_FILL_MAX + (2 << 20);

impl Default for BigLogOptions {
    fn default() -> Self {
        BigLogOptions { segment_bytes: 512 << 20, index_capacity: 131_072, drop_cache: true, direct_io: false, zero_fill_bytes: 4 << 20 }
    }
}

/// Writes every byte of `slices` at `offset` with `pwritev`, at most 1024 slices (Linux's
/// IOV_MAX) per call, resuming after short writes and EINTR.
fn pwrite_all(f: &File, mut slices: &mut [IoSlice<'_>], mut offset: u64) -> std::io::Result<()> {
    const IOV_MAX: usize = 1024;
    while !slices.is_empty() {
        let batch = slices.len().min(IOV_MAX);
        match rustix::io::pwritev(f, &slices[..batch], offset) {
            Ok(0) => return Err(std::io::Error::new(std::io::ErrorKind::WriteZero, "pwritev wrote nothing")),
            Ok(n) => {
                offset += n as u64;
                IoSlice::advance_slices(&mut slices, n);
            }
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Bytes staged per direct write: larger appends go out in several writes of this size.
const DIRECT_CHUNK: usize = 1 << 20;

/// Writes the data of a hot segment with direct I/O (see the module doc).
struct DirectWriter {
    /// The data file, opened again with `O_DIRECT` (write only).
    file: File,
    /// File offset and length alignment of direct writes, in bytes: a power of two ≥ 4096.
    align: usize,
    /// Buffer address alignment, in bytes: a power of two ≥ `align`.
    mem_align: usize,
    /// The data file's bytes from the last `align` boundary at or below the data length to the
    /// data length (shorter than `align`).
    tail: Vec<u8>,
    /// Staging buffer: `DIRECT_CHUNK` bytes at a `mem_align` boundary inside it.
    stage: Vec<u8>,
}

impl DirectWriter {
    /// Opens `path` (whose data ends at `data_len`; `data` is its ordinary handle) for direct
    /// writes. Errors: why direct I/O cannot be used there, as text for the log.
    fn open(path: &Path, data: &File, data_len: u64) -> std::result::Result<DirectWriter, String> {
        use rustix::fs::{AtFlags, StatxFlags};
        use std::os::unix::fs::OpenOptionsExt;
        let st = rustix::fs::statx(rustix::fs::CWD, path, AtFlags::empty(), StatxFlags::DIOALIGN).map_err(|e| format!("statx: {e}"))?;
        if st.stx_mask & StatxFlags::DIOALIGN.bits() == 0 || st.stx_dio_offset_align == 0 || st.stx_dio_mem_align == 0 {
            return Err("the filesystem reports no direct-I/O alignment (statx)".into());
        }
        let align = (st.stx_dio_offset_align as usize).max(4096).next_power_of_two();
        let mem_align = (st.stx_dio_mem_align as usize).max(align).next_power_of_two();
        if align > DIRECT_CHUNK {
            return Err(format!("direct-I/O alignment of {align} bytes is larger than the {DIRECT_CHUNK}-byte staging buffer"));
        }
        let file =
            OpenOptions::new().write(true).custom_flags(rustix::fs::OFlags::DIRECT.bits() as i32).open(path).map_err(|e| format!("open with O_DIRECT: {e}"))?;
        let start = data_len / align as u64 * align as u64;
        let mut tail = vec![0u8; (data_len - start) as usize];
        data.read_exact_at(&mut tail, start).map_err(|e| format!("read the last {} bytes: {e}", tail.len()))?;
        Ok(DirectWriter { file, align, mem_align, tail, stage: Vec::new() })
    }

    /// Appends `slices` at `data_len` (the data length before them): the tail and the slices
    /// go out in aligned writes of at most `DIRECT_CHUNK` bytes, the last one zero-padded.
    /// On error the tail is unchanged, so a retry (direct or buffered) at `data_len` is sound.
    fn append(&mut self, slices: &[IoSlice<'_>], data_len: u64) -> std::io::Result<()> {
        let DirectWriter { file, align, mem_align, tail, stage } = self;
        let (align, mem_align) = (*align, *mem_align);
        if stage.len() < DIRECT_CHUNK + mem_align {
            stage.resize(DIRECT_CHUNK + mem_align, 0);
        }
        let at = stage.as_ptr().align_offset(mem_align);
        let buf = stage.get_mut(at..at + DIRECT_CHUNK).ok_or_else(|| std::io::Error::other("cannot align the direct-I/O staging buffer"))?;
        let mut offset = data_len - tail.len() as u64;
        let mut fill = tail.len();
        buf[..fill].copy_from_slice(tail);
        for s in slices {
            let mut src: &[u8] = s;
            while !src.is_empty() {
                let n = src.len().min(DIRECT_CHUNK - fill);
                buf[fill..fill + n].copy_from_slice(&src[..n]);
                fill += n;
                src = &src[n..];
                if fill == DIRECT_CHUNK {
                    file.write_all_at(buf, offset)?;
                    offset += DIRECT_CHUNK as u64;
                    fill = 0;
                }
            }
        }
        let whole = fill / align * align;
        if fill > 0 {
            let padded = whole + if fill > whole { align } else { 0 };
            buf[fill..padded].fill(0);
            file.write_all_at(&buf[..padded], offset)?;
        }
        tail.clear();
        tail.extend_from_slice(&buf[whole..fill]);
        Ok(())
    }
}

enum IndexMap {
    Ro(Mmap),
    Rw(MmapMut),
}

impl IndexMap {
    fn bytes(&self) -> &[u8] {
        match self {
            IndexMap::Ro(m) => m,
            IndexMap::Rw(m) => m,
        }
    }
}

/// Damage found in a segment: a corrupt index slot before the tail, or synced entries whose
/// data is gone (e.g. a truncated data file).
#[derive(Clone, Debug)]
pub struct Damage {
    /// Index slot where the damage starts.
    pub slot: u64,
    /// First offset that cannot be read because of it.
    pub offset: u64,
    /// What is wrong, for reports.
    pub detail: String,
}

pub(crate) struct Segment {
    pub base: u64,
    data_path: PathBuf,
    index_path: PathBuf,
    data: File,
    index: IndexMap,
    capacity: u64,
    /// Readable real entries: slots `0..entries` are valid entries.
    entries: u64,
    /// Next relative offset (the marker's).
    next_ro: u64,
    /// Data length (the marker's data offset).
    data_len: u64,
    /// The data file's length: `data_len`, or more when zero padding or zero-filled room
    /// follows the data.
    file_len: u64,
    /// The synced mark: data below this offset was fsync'd (see `format`).
    synced: u64,
    /// Data bytes below this offset were already dropped from the page cache.
    dropped: AtomicU64,
    pub damage: Option<Damage>,
    /// Direct writer of a hot segment (`None`: writes go through the page cache).
    direct: Option<DirectWriter>,
}

/// What one index entry holds, as returned by the readers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EntryInfo {
    /// Base offset of the segment holding it.
    pub segment: u64,
    /// First offset of the entry.
    pub offset: u64,
    /// Offsets the entry holds (1 for `write`, N for `write_n`).
    pub count: u64,
    /// Nanoseconds since the Unix epoch.
    pub timestamp: u64,
    /// Position in the segment's data file.
    pub data_offset: u64,
    /// Bytes in the data file.
    pub data_len: u32,
    pub(crate) data_crc: u32,
}

fn segment_name(base: u64) -> String {
    format!("{base:020}")
}

/// Whether segment `base` in `dir` is in a state only a creation cut short leaves
/// ([`Segment::create`] writes the data file's header, then creates the index, sizes it and
/// writes its header): an empty data file and no index, or a data file of just a valid header
/// and an index that is missing, empty, or sized but with a zero header. Damage of another
/// shape (a short or garbled index of a store that held records) is not this.
fn creation_cut_short(dir: &Path, base: u64) -> bool {
    let name = segment_name(base);
    let data_path = dir.join(format!("{name}.data"));
    let index_path = dir.join(format!("{name}.index"));
    // The first header's worth and one byte more: enough to tell a header-only file, without
    // reading a hot segment of hundreds of MiB at every open.
    let Ok(data) = std::fs::File::open(&data_path).and_then(|f| {
        let mut d = Vec::with_capacity(DATA_HEADER_LEN as usize + 1);
        std::io::Read::read_to_end(&mut std::io::Read::take(f, DATA_HEADER_LEN + 1), &mut d)?;
        Ok(d)
    }) else {
        return false;
    };
    let index = std::fs::File::open(&index_path).ok().map(|f| {
        let mut h = vec![0u8; INDEX_HEADER_LEN];
        let n = f.read_at(&mut h, 0).unwrap_or(0);
        (f.metadata().map(|m| m.len()).unwrap_or(0), h[..n].iter().all(|b| *b == 0))
    });
    match (data.len() as u64, index) {
        (0, None) => true,
        (n, None) if n == DATA_HEADER_LEN => format::check_data_header(&data_path, &data).is_ok(),
        (n, Some((len, zero))) if n == DATA_HEADER_LEN => (len == 0 || zero) && format::check_data_header(&data_path, &data).is_ok(),
        _ => false,
    }
}

impl Segment {
    fn slot(&self, i: u64) -> Slot {
        let b = self.index.bytes();
        let start = INDEX_HEADER_LEN + (i as usize) * ENTRY_LEN;
        if start + ENTRY_LEN > b.len() {
            return Slot::Invalid;
        }
        IndexEntry::decode(&b[start..start + ENTRY_LEN])
    }

    fn entry(&self, i: u64) -> Option<IndexEntry> {
        match self.slot(i) {
            Slot::Valid(e) => Some(e),
            _ => None,
        }
    }

    fn put_slot(&mut self, i: u64, bytes: &[u8; ENTRY_LEN]) -> Result<()> {
        let start = INDEX_HEADER_LEN + (i as usize) * ENTRY_LEN;
        match &mut self.index {
            IndexMap::Rw(m) => {
                m[start..start + ENTRY_LEN].copy_from_slice(bytes);
                Ok(())
            }
            IndexMap::Ro(_) => Err(Error::InvalidArgument("store opened read-only".into())),
        }
    }

    /// A segment over opened files, before any entry is known (data length: the header's).
    fn empty(base: u64, data_path: PathBuf, index_path: PathBuf, data: File, index: IndexMap, capacity: u64) -> Segment {
        Segment {
            base,
            data_path,
            index_path,
            data,
            index,
            capacity,
            entries: 0,
            next_ro: 0,
            data_len: DATA_HEADER_LEN,
            file_len: DATA_HEADER_LEN,
            synced: DATA_HEADER_LEN,
            dropped: AtomicU64::new(0),
            damage: None,
            direct: None,
        }
    }

    /// Creates an empty hot segment; with `direct_io` its data is written with direct I/O
    /// where the filesystem allows.
    fn create(dir: &Path, base: u64, capacity: u64, direct_io: bool) -> Result<Segment> {
        let name = segment_name(base);
        let data_path = dir.join(format!("{name}.data"));
        let index_path = dir.join(format!("{name}.index"));
        // An index left by a creation cut short before its data file (none is listed without
        // one) goes first.
        if index_path.exists() && !data_path.exists() {
            std::fs::remove_file(&index_path).ctx(|| format!("remove {}", index_path.display()))?;
        }
        let data = OpenOptions::new().read(true).write(true).create_new(true).open(&data_path).ctx(|| format!("create {}", data_path.display()))?;
        data.write_all_at(&format::encode_data_header(), 0).ctx(|| format!("write {}", data_path.display()))?;
        let index = OpenOptions::new().read(true).write(true).create_new(true).open(&index_path).ctx(|| format!("create {}", index_path.display()))?;
        let len = INDEX_HEADER_LEN as u64 + capacity * ENTRY_LEN as u64;
        index.set_len(len).ctx(|| format!("preallocate {}", index_path.display()))?;
        index.write_all_at(&format::encode_index_header(base, capacity), 0).ctx(|| format!("write {}", index_path.display()))?;
        let map = map_rw(&index, &index_path)?;
        let mut seg = Segment::empty(base, data_path, index_path, data, IndexMap::Rw(map), capacity);
        seg.put_slot(0, &IndexEntry::marker(0, DATA_HEADER_LEN).encode())?;
        seg.data.sync_all().ctx(|| format!("fsync {}", seg.data_path.display()))?;
        seg.flush_index()?;
        sync_dir(dir)?;
        if direct_io {
            seg.enable_direct();
        }
        Ok(seg)
    }

    /// Ends direct writes to this segment and cuts what follows its data off (direct-I/O
    /// padding, zero-filled room). Returns whether it was written with direct I/O.
    fn cut_tail(&mut self) -> std::io::Result<bool> {
        let was_direct = self.direct.take().is_some();
        if was_direct || self.file_len > self.data_len {
            self.data.set_len(self.data_len)?;
            self.file_len = self.data_len;
        }
        Ok(was_direct)
    }

    /// Switches the data writes of this (hot) segment to direct I/O, or logs why not.
    fn enable_direct(&mut self) {
        match DirectWriter::open(&self.data_path, &self.data, self.data_len) {
            Ok(d) => self.direct = Some(d),
            Err(why) => tracing::info!(file = %self.data_path.display(), "direct I/O unavailable, writing through the page cache: {why}"),
        }
    }

    /// Drops the data pages of `[dropped, upto)` from the page cache (whole pages only; the
    /// kernel keeps a partial page at either end). Call only after the range is synced: dirty
    /// pages are not dropped.
    fn drop_cached(&self, upto: u64) {
        const PAGE: u64 = 4096;
        let from = self.dropped.load(Ordering::Relaxed) / PAGE * PAGE;
        let to = upto / PAGE * PAGE;
        if to <= from {
            return;
        }
        let len = std::num::NonZeroU64::new(to - from);
        match rustix::fs::fadvise(&self.data, from, len, rustix::fs::Advice::DontNeed) {
            Ok(()) => self.dropped.store(to, Ordering::Relaxed),
            Err(e) => tracing::debug!(file = %self.data_path.display(), "posix_fadvise(DONTNEED): {e}"),
        }
    }

    /// Records that the data file is synced up to its length: rewrites the marker with the
    /// synced mark and msyncs the index. Call only after the data file was fsync'd.
    fn mark_synced(&mut self) -> Result<()> {
        self.synced = self.data_len;
        let m = IndexEntry::marker_synced(self.next_ro as u32, self.data_len, self.synced);
        self.put_slot(self.entries, &m.encode())?;
        self.flush_index()
    }

    fn flush_index(&self) -> Result<()> {
        if let IndexMap::Rw(m) = &self.index {
            m.flush().ctx(|| format!("msync {}", self.index_path.display()))?;
        }
        Ok(())
    }

    /// Opens a segment. With `repair` (the hot segment of a writable store) a torn tail is cut,
    /// and with `direct_io` too its data is then written with direct I/O where allowed.
    fn open(dir: &Path, base: u64, writable: bool, hot: bool, direct_io: bool) -> Result<Segment> {
        let repair = writable && hot;
        let mut seg = Self::open_checked(dir, base, writable, hot)?;
        if repair && direct_io && seg.damage.is_none() {
            seg.enable_direct();
        }
        Ok(seg)
    }

    fn open_checked(dir: &Path, base: u64, writable: bool, hot: bool) -> Result<Segment> {
        let repair = writable && hot;
        let name = segment_name(base);
        let data_path = dir.join(format!("{name}.data"));
        let index_path = dir.join(format!("{name}.index"));
        let data = OpenOptions::new().read(true).write(writable).open(&data_path).ctx(|| format!("open {}", data_path.display()))?;
        let mut hdr = [0u8; DATA_HEADER_LEN as usize];
        let file_len = data.metadata().ctx(|| format!("stat {}", data_path.display()))?.len();
        if file_len < DATA_HEADER_LEN {
            return Err(Error::Format { path: data_path, detail: format!("data file of {file_len} bytes is shorter than its header") });
        }
        data.read_exact_at(&mut hdr, 0).ctx(|| format!("read {}", data_path.display()))?;
        format::check_data_header(&data_path, &hdr)?;
        let index_file = OpenOptions::new().read(true).write(writable).open(&index_path).ctx(|| format!("open {}", index_path.display()))?;
        let index_len = index_file.metadata().ctx(|| format!("stat {}", index_path.display()))?.len();
        if index_len < INDEX_HEADER_LEN as u64 {
            return Err(Error::Format { path: index_path, detail: format!("index file of {index_len} bytes is shorter than its header") });
        }
        if writable && repair {
            // A cut-short index (torn preallocation, a copy gone wrong) is extended back to its
            // capacity; the missing slots read as empty.
            let mut h = [0u8; INDEX_HEADER_LEN];
            index_file.read_exact_at(&mut h, 0).ctx(|| format!("read {}", index_path.display()))?;
            let (_, cap) = format::check_index_header(&index_path, &h)?;
            let want = INDEX_HEADER_LEN as u64 + cap * ENTRY_LEN as u64;
            if index_len < want {
                tracing::warn!(segment = %name, "index file of {index_len} bytes extended to {want}");
                index_file.set_len(want).ctx(|| format!("extend {}", index_path.display()))?;
            }
        }
        let index = if writable { IndexMap::Rw(map_rw(&index_file, &index_path)?) } else { IndexMap::Ro(map_ro(&index_file, &index_path)?) };
        let (hbase, capacity) = format::check_index_header(&index_path, index.bytes())?;
        if hbase != base {
            return Err(Error::Format { path: index_path, detail: format!("index header names base offset {hbase}, file name says {base}") });
        }
        let max_cap = ((index.bytes().len() - INDEX_HEADER_LEN) / ENTRY_LEN) as u64;
        let capacity = capacity.min(max_cap);
        let mut seg = Segment::empty(base, data_path, index_path, data, index, capacity);

        // Walk the slots: valid prefix, then the first non-valid slot.
        let mut last_valid: Option<(u64, IndexEntry)> = None;
        let mut i = 0u64;
        let mut first_bad: Option<u64> = None;
        while i < capacity {
            match seg.slot(i) {
                Slot::Valid(e) => {
                    if let Some((_, p)) = last_valid {
                        let sane = e.relative_offset > p.relative_offset && e.data_offset >= p.data_offset && !p.is_marker();
                        if !sane {
                            first_bad = Some(i);
                            break;
                        }
                    }
                    last_valid = Some((i, e));
                }
                Slot::Empty => break,
                Slot::Invalid => {
                    first_bad = Some(i);
                    break;
                }
            }
            i += 1;
        }
        // Is the bad slot followed by more written slots? Then it is damage, not a torn tail.
        // A torn tail is only possible in the hot segment (sealed ones were synced whole when
        // they were split): in a read-only open of a live store it is where the writer is.
        let mut mid_damage = false;
        if let Some(b) = first_bad {
            let mut j = b + 1;
            while j < capacity {
                if seg.slot(j) != Slot::Empty {
                    mid_damage = true;
                    break;
                }
                j += 1;
            }
            if !mid_damage && !hot {
                mid_damage = true;
            }
        }
        if mid_damage {
            let b = first_bad.unwrap_or(0);
            let (entries, next_ro) = match last_valid {
                Some((idx, e)) if e.is_marker() => (idx, e.relative_offset as u64),
                Some((idx, e)) => (idx + 1, e.relative_offset as u64 + 1),
                None => (0, 0),
            };
            seg.entries = entries;
            seg.next_ro = next_ro;
            seg.data_len = file_len;
            seg.file_len = file_len;
            seg.damage = Some(Damage { slot: b, offset: base + next_ro, detail: format!("index slot {b} is corrupt") });
            tracing::warn!(segment = %name, slot = b, "index damaged before its tail; entries from offset {} on are unreadable", base + next_ro);
            return Ok(seg);
        }

        if let Some(b) = first_bad {
            if repair {
                tracing::warn!(segment = %name, slot = b, "torn index slot at the tail: cleared");
                seg.put_slot(b, &[0u8; ENTRY_LEN])?;
            }
        }
        let Some((last_idx, last)) = last_valid else {
            if repair {
                tracing::warn!(segment = %name, "index has no entry: reset to empty");
                seg.put_slot(0, &IndexEntry::marker(0, DATA_HEADER_LEN).encode())?;
                seg.data.set_len(DATA_HEADER_LEN).ctx(|| format!("truncate {}", seg.data_path.display()))?;
                seg.flush_index()?;
                seg.data.sync_all().ctx(|| format!("fsync {}", seg.data_path.display()))?;
            }
            return Ok(seg);
        };
        // The synced mark: data below it was fsync'd before the mark was written, so an entry
        // there whose data is missing or fails its CRC lost synced data (damage, reported), where
        // one above it may have been torn by a crash (cut back). A marker lost to a torn write
        // gives no mark (0): then every trailing entry counts as possibly torn.
        let synced = if last.is_marker() { last.timestamp } else { 0 };
        let mut n = if last.is_marker() { last_idx } else { last_idx + 1 };
        let mut marker = if last.is_marker() { Some(last) } else { None };
        let mut cut = false;
        let mut lost: Option<(u64, IndexEntry, bool)> = None;
        loop {
            if n == 0 {
                let m = IndexEntry::marker(0, DATA_HEADER_LEN);
                if marker.map(|x| (x.relative_offset, x.data_offset)) != Some((0, DATA_HEADER_LEN)) {
                    cut = true;
                }
                marker = Some(m);
                break;
            }
            let e = seg.entry(n - 1).ok_or_else(|| Error::Corrupt { location: format!("segment {name} slot {}", n - 1), detail: "entry vanished".into() })?;
            let end = e.data_offset + e.data_len as u64;
            let mut ok = end <= file_len;
            let mut count = 0u64;
            if ok {
                let mut buf = vec![0u8; e.data_len as usize];
                ok = seg.data.read_exact_at(&mut buf, e.data_offset).is_ok() && crc32fast::hash(&buf) == e.data_crc;
                if ok {
                    match format::parse_records(&buf) {
                        Some(r) => count = r.len() as u64,
                        None => ok = false,
                    }
                }
            }
            if ok {
                if lost.is_none() && marker.map(|m| m.relative_offset as u64 != e.relative_offset as u64 + count || m.data_offset != end).unwrap_or(true) {
                    cut = true;
                    marker = Some(IndexEntry::marker_synced((e.relative_offset as u64 + count) as u32, end, synced.min(end)));
                }
                break;
            }
            if end <= synced {
                // Synced and gone: keep looking for the first such entry (the damage starts
                // there); nothing is cut.
                lost = Some((n - 1, e, end > file_len));
            } else if lost.is_none() {
                if repair {
                    tracing::warn!(segment = %name, offset = base + e.relative_offset as u64, "torn entry at the tail (written after the last sync): cut back");
                }
                cut = true;
                marker = Some(IndexEntry::marker_synced(e.relative_offset, e.data_offset, synced.min(e.data_offset)));
            }
            n -= 1;
        }
        if let Some((slot, e, truncated)) = lost {
            let offset = base + e.relative_offset as u64;
            let detail = if truncated {
                format!("synced entries lost: index slot {slot} onward (offset {offset} on) points past what the data file holds ({file_len} bytes; {synced} bytes were synced)")
            } else {
                format!("synced entries damaged: the data of index slot {slot} onward (offset {offset} on) fails its checksum")
            };
            tracing::error!(segment = %name, "{detail}");
            seg.entries = slot;
            seg.next_ro = e.relative_offset as u64;
            seg.data_len = file_len;
            seg.file_len = file_len;
            seg.damage = Some(Damage { slot, offset, detail });
            return Ok(seg);
        }
        let marker = marker.unwrap_or_else(|| IndexEntry::marker(0, DATA_HEADER_LEN));
        seg.entries = n;
        seg.next_ro = marker.relative_offset as u64;
        seg.data_len = marker.data_offset;
        seg.file_len = file_len;
        seg.synced = marker.timestamp.min(marker.data_offset);
        if cut || file_len != marker.data_offset || first_bad.is_some() {
            if !repair {
                return Ok(seg);
            }
            seg.put_slot(n, &marker.encode())?;
            let mut j = n + 1;
            while j < capacity && seg.slot(j) != Slot::Empty {
                seg.put_slot(j, &[0u8; ENTRY_LEN])?;
                j += 1;
            }
            if file_len != marker.data_offset {
                if zero_padding(&seg.data, marker.data_offset, file_len) {
                    tracing::debug!(segment = %name, "zero padding after byte {} cut off", marker.data_offset);
                } else {
                    tracing::warn!(segment = %name, "data file of {file_len} bytes cut back to {} (bytes written after the last sync)", marker.data_offset);
                }
                seg.data.set_len(marker.data_offset).ctx(|| format!("truncate {}", seg.data_path.display()))?;
                seg.file_len = marker.data_offset;
            }
            seg.data.sync_all().ctx(|| format!("fsync {}", seg.data_path.display()))?;
            seg.mark_synced()?;
        }
        Ok(seg)
    }

    fn info(&self, i: u64) -> Option<EntryInfo> {
        let e = self.entry(i)?;
        let next = if i + 1 < self.entries { self.entry(i + 1)?.relative_offset as u64 } else { self.next_ro };
        Some(EntryInfo {
            segment: self.base,
            offset: self.base + e.relative_offset as u64,
            count: next.saturating_sub(e.relative_offset as u64),
            timestamp: e.timestamp,
            data_offset: e.data_offset,
            data_len: e.data_len,
            data_crc: e.data_crc,
        })
    }

    /// Slot of the entry holding relative offset `ro` (binary search), if any.
    fn find(&self, ro: u64) -> Option<u64> {
        if self.entries == 0 || ro >= self.next_ro {
            return None;
        }
        let (mut lo, mut hi) = (0u64, self.entries); // answer in [lo, hi)
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            let r = self.entry(mid).map(|e| e.relative_offset as u64)?;
            if r <= ro {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        Some(lo)
    }

    /// First slot whose timestamp is >= ts.
    fn seek_time(&self, ts: u64) -> u64 {
        let (mut lo, mut hi) = (0u64, self.entries);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let t = self.entry(mid).map(|e| e.timestamp).unwrap_or(u64::MAX);
            if t < ts {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        lo
    }

    fn read_data(&self, info: &EntryInfo) -> Result<Vec<u8>> {
        let mut buf = vec![0u8; info.data_len as usize];
        let loc = || format!("segment {} offset {}", segment_name(self.base), info.offset);
        if info.data_offset + info.data_len as u64 > self.data_len.max(info.data_offset + info.data_len as u64) {
            return Err(Error::Corrupt { location: loc(), detail: "entry extends past the data file".into() });
        }
        self.data.read_exact_at(&mut buf, info.data_offset).map_err(|e| Error::Corrupt { location: loc(), detail: format!("data unreadable: {e}") })?;
        if crc32fast::hash(&buf) != info.data_crc {
            return Err(Error::Corrupt { location: loc(), detail: "data checksum mismatch".into() });
        }
        Ok(buf)
    }

    fn first_ts(&self) -> Option<u64> {
        if self.entries == 0 {
            None
        } else {
            self.entry(0).map(|e| e.timestamp)
        }
    }

    fn last_ts(&self) -> Option<u64> {
        if self.entries == 0 {
            None
        } else {
            self.entry(self.entries - 1).map(|e| e.timestamp)
        }
    }
}

fn map_rw(f: &File, path: &Path) -> Result<MmapMut> {
    crate::sys::mmap::map_mut(f).ctx(|| format!("mmap {}", path.display()))
}

fn map_ro(f: &File, path: &Path) -> Result<Mmap> {
    crate::sys::mmap::map(f).ctx(|| format!("mmap {}", path.display()))
}

/// Whether the data file's bytes `[from, to)` are padding (direct-I/O padding or zero-filled
/// room): fewer than `ZERO_TAIL_MAX`, all zero. Read in pieces of `ZERO_FILL_STEP`.
fn zero_padding(data: &File, from: u64, to: u64) -> bool {
    if to <= from || to - from >= ZERO_TAIL_MAX {
        return false;
    }
    let mut b = vec![0u8; ZERO_FILL_STEP];
    let mut at = from;
    while at < to {
        let n = ((to - at) as usize).min(ZERO_FILL_STEP);
        if data.read_exact_at(&mut b[..n], at).is_err() || b[..n].iter().any(|&x| x != 0) {
            return false;
        }
        at += n as u64;
    }
    true
}

struct Inner {
    segments: Vec<Segment>,
    last_ts: u64,
}

/// A segmented append-only log in one directory. Share it with `Arc<BigLog>`; all methods take
/// `&self` (reads run concurrently, writes are serialised).
pub struct BigLog {
    dir: PathBuf,
    opts: BigLogOptions,
    writable: bool,
    /// Held for the life of a writable log: one writer process per directory.
    _lock: Option<File>,
    inner: Arc<RwLock<Inner>>,
    /// Bumped on every write; streamers wait on it.
    wake: (Mutex<u64>, Condvar),
    /// The zero-fill thread (see [`BigLogOptions::zero_fill_bytes`]), started at the first
    /// request.
    filler: ZeroFiller,
}

/// Requests to the zero-fill thread.
#[derive(Default)]
struct FillState {
    /// Room is wanted (set by a small sync, cleared by the thread).
    wanted: bool,
    /// The log is being closed.
    stop: bool,
}

/// The zero-fill thread of a writable log: writes zeros past the hot segment's data, in steps
/// of `ZERO_FILL_STEP` under the write lock (so never over data: an append and a step are
/// serialised), up to `zero_fill_bytes` ahead, then syncs them outside the lock. A failed zero
/// write (a full disk) is logged at debug level and only stops the filling until the next
/// request; appends past the room grow the file as before.
#[derive(Default)]
struct ZeroFiller {
    state: Arc<(Mutex<FillState>, Condvar)>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl ZeroFiller {
    /// Asks for room, starting the thread the first time.
    fn request(&self, inner: &Arc<RwLock<Inner>>, opts: &BigLogOptions, dir: &Path) {
        let Ok(mut t) = self.thread.lock() else { return };
        if t.is_none() {
            let (inner, state, ahead, limit) = (inner.clone(), self.state.clone(), opts.zero_fill_bytes, opts.segment_bytes);
            let spawned = std::thread::Builder::new().name("store-zero-fill".into()).spawn(move || fill_loop(&inner, &state, ahead, limit));
            match spawned {
                Ok(h) => *t = Some(h),
                Err(e) => {
                    tracing::debug!(store = %dir.display(), "zero-fill thread not started: {e}");
                    return;
                }
            }
        }
        drop(t);
        let (m, c) = &*self.state;
        if let Ok(mut st) = m.lock() {
            st.wanted = true;
            c.notify_one();
        }
    }

    /// Stops the thread (a step under way finishes first) and waits for it.
    fn stop(&self) {
        let (m, c) = &*self.state;
        if let Ok(mut st) = m.lock() {
            st.stop = true;
            c.notify_one();
        }
        if let Some(h) = self.thread.lock().ok().and_then(|mut t| t.take()) {
            let _ = h.join();
        }
    }
}

/// The zero-fill thread's body: on each request, fill the hot segment's room up to `ahead`
/// bytes past its data (never past the split point `limit`), then sync the file.
fn fill_loop(inner: &RwLock<Inner>, state: &(Mutex<FillState>, Condvar), ahead: u64, limit: u64) {
    static ZEROS: [u8; ZERO_FILL_STEP] = [0u8; ZERO_FILL_STEP];
    let (m, c) = state;
    loop {
        {
            let Ok(mut st) = m.lock() else { return };
            while !st.wanted && !st.stop {
                st = match c.wait(st) {
                    Ok(g) => g,
                    Err(_) => return,
                };
            }
            if st.stop {
                return;
            }
            st.wanted = false;
        }
        // The file written to this round, synced at its end: a split meanwhile ends the round.
        let mut to_sync: Option<(u64, File)> = None;
        let mut written = 0u64;
        while written < ZERO_FILL_ROUND {
            let Ok(mut g) = inner.write() else { return };
            let Some(s) = g.segments.last_mut() else { break };
            if s.direct.is_some() || s.damage.is_some() || to_sync.as_ref().is_some_and(|(base, _)| *base != s.base) {
                break;
            }
            let target = (s.data_len + ahead).min(limit.max(s.data_len));
            if s.file_len >= target {
                break;
            }
            let start = s.file_len.max(s.data_len);
            let n = ((target - start) as usize).min(ZERO_FILL_STEP);
            if let Err(e) = s.data.write_all_at(&ZEROS[..n], start) {
                tracing::debug!(file = %s.data_path.display(), "zero fill at byte {start}: {e}");
                s.file_len = s.data.metadata().map(|md| md.len()).unwrap_or(s.file_len).max(s.data_len);
                break;
            }
            s.file_len = start + n as u64;
            written += n as u64;
            if to_sync.is_none() {
                to_sync = s.data.try_clone().ok().map(|f| (s.base, f));
            }
        }
        if let Some((_, f)) = to_sync {
            if let Err(e) = f.sync_data() {
                tracing::debug!("zero fill sync: {e}");
            }
        }
    }
}

/// Summary of one segment, for `tlog store inspect`.
#[derive(Clone, Debug)]
pub struct SegmentSummary {
    /// Base offset.
    pub base: u64,
    /// Index entries.
    pub entries: u64,
    /// Offsets held (embedded offsets counted).
    pub offsets: u64,
    /// First and last timestamps (ns), if any entry.
    pub time_range: Option<(u64, u64)>,
    /// Data bytes (the data file without its zero padding or zero-filled room).
    pub data_bytes: u64,
    /// Index file bytes.
    pub index_bytes: u64,
    /// Damage before the tail, if any.
    pub damage: Option<Damage>,
}

impl Drop for BigLog {
    /// Stops the zero-fill thread and cuts the hot segment's direct-I/O padding and
    /// zero-filled room off, so a cleanly closed store's data files hold exactly their data.
    /// (Not synced: after a crash the zeros are still there and the next open cuts them.)
    fn drop(&mut self) {
        self.filler.stop();
        let Ok(mut g) = self.inner.write() else { return };
        if let Some(s) = g.segments.last_mut() {
            if let Err(e) = s.cut_tail() {
                tracing::debug!(file = %s.data_path.display(), "cut the zero padding: {e}");
            }
        }
    }
}

impl BigLog {
    /// Opens (creating if needed) the log in `dir` for writing; validates and repairs the tail.
    ///
    /// Errors: I/O, or [`Error::Format`] when a file is not a segment of this format version.
    pub fn open(dir: impl AsRef<Path>, opts: BigLogOptions) -> Result<BigLog> {
        Self::open_mode(dir.as_ref(), opts, true)
    }

    /// Opens an existing log without changing anything (for inspect and verify).
    pub fn open_read_only(dir: impl AsRef<Path>) -> Result<BigLog> {
        Self::open_mode(dir.as_ref(), BigLogOptions::default(), false)
    }

    fn open_mode(dir: &Path, opts: BigLogOptions, writable: bool) -> Result<BigLog> {
        if opts.index_capacity < 2 || opts.index_capacity > u32::MAX as u64 {
            return Err(Error::InvalidArgument("index_capacity must be 2 to 4294967295 slots".into()));
        }
        // The caller creates the directory (`tlog store init`, or tlogd on a fresh data
        // directory): a missing one may be a disk that failed to mount, and an empty store in
        // its place would hide that.
        if !dir.is_dir() {
            return Err(Error::NotFound(format!("store directory {} (not a directory, or missing)", dir.display())));
        }
        let lock = if writable {
            let p = dir.join("LOCK");
            let f = OpenOptions::new().create(true).truncate(false).write(true).open(&p).ctx(|| format!("open {}", p.display()))?;
            match f.try_lock() {
                Ok(()) => Some(f),
                Err(std::fs::TryLockError::WouldBlock) => {
                    return Err(Error::InvalidArgument(format!("store {} is in use by another process (lock {} held)", dir.display(), p.display())))
                }
                Err(std::fs::TryLockError::Error(e)) => return Err(Error::io(format!("lock {}", p.display()), e)),
            }
        } else {
            None
        };
        let mut bases = Vec::new();
        for ent in std::fs::read_dir(dir).ctx(|| format!("list {}", dir.display()))? {
            let ent = ent.ctx(|| format!("list {}", dir.display()))?;
            let name = ent.file_name().to_string_lossy().to_string();
            if let Some(stem) = name.strip_suffix(".data") {
                if stem.len() == 20 {
                    if let Ok(b) = stem.parse::<u64>() {
                        bases.push(b);
                    }
                }
            }
        }
        bases.sort_unstable();
        // A newest segment whose creation was cut short (a crash between creating its files and
        // writing their headers) holds no record: it is removed (or, read-only, skipped), and
        // the one before it is the hot segment again.
        if let Some(&last) = bases.last() {
            let data_path = dir.join(format!("{}.data", segment_name(last)));
            if creation_cut_short(dir, last) {
                if let Err(e) = Segment::open_checked(dir, last, false, false) {
                    tracing::warn!(store = %dir.display(), segment = %segment_name(last), "segment creation was cut short ({e}); it holds no record and is {}", if writable { "removed" } else { "skipped" });
                    if writable {
                        let index_path = dir.join(format!("{}.index", segment_name(last)));
                        std::fs::remove_file(&data_path).ctx(|| format!("remove {}", data_path.display()))?;
                        if index_path.exists() {
                            std::fs::remove_file(&index_path).ctx(|| format!("remove {}", index_path.display()))?;
                        }
                        sync_dir(dir)?;
                    }
                    bases.pop();
                }
            }
        }
        let mut segments = Vec::with_capacity(bases.len());
        for (i, &b) in bases.iter().enumerate() {
            let hot = i + 1 == bases.len();
            segments.push(Segment::open(dir, b, writable, hot, opts.direct_io)?);
        }
        if segments.is_empty() && writable {
            segments.push(Segment::create(dir, 0, opts.index_capacity, opts.direct_io)?);
        }
        let last_ts = segments.iter().rev().find_map(|s| s.last_ts()).unwrap_or(0);
        let log = BigLog {
            dir: dir.to_path_buf(),
            opts,
            writable,
            _lock: lock,
            inner: Arc::new(RwLock::new(Inner { segments, last_ts })),
            wake: (Mutex::new(0), Condvar::new()),
            filler: ZeroFiller::default(),
        };
        if writable {
            // A hot segment damaged before its tail takes no more writes: start a new one.
            let damaged = log.read()?.segments.last().map(|s| s.damage.is_some()).unwrap_or(false);
            if damaged {
                log.split()?;
            }
        }
        Ok(log)
    }

    fn read(&self) -> Result<std::sync::RwLockReadGuard<'_, Inner>> {
        self.inner.read().map_err(|_| Error::InvalidArgument("store lock poisoned by a panic".into()))
    }

    fn write_lock(&self) -> Result<std::sync::RwLockWriteGuard<'_, Inner>> {
        if !self.writable {
            return Err(Error::InvalidArgument(format!("store {} opened read-only", self.dir.display())));
        }
        self.inner.write().map_err(|_| Error::InvalidArgument("store lock poisoned by a panic".into()))
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Appends one record stamped now; returns its offset.
    pub fn write(&self, data: &[u8]) -> Result<u64> {
        self.write_n_at(&[data], now_ns())
    }

    /// Appends N records under one index entry (embedded offsets), stamped now; returns the
    /// first offset (the others follow consecutively).
    pub fn write_n(&self, records: &[&[u8]]) -> Result<u64> {
        self.write_n_at(records, now_ns())
    }

    /// Appends N records with the given timestamp (ns); a timestamp older than the last one is
    /// clamped to it, so timestamps never decrease. Errors on an empty `records`.
    pub fn write_n_at(&self, records: &[&[u8]], timestamp: u64) -> Result<u64> {
        let parts: Vec<[&[u8]; 1]> = records.iter().map(|r| [*r]).collect();
        let refs: Vec<&[&[u8]]> = parts.iter().map(|p| p.as_slice()).collect();
        self.write_parts_at(&refs, timestamp)
    }

    /// Appends N records under one index entry, each record given as the concatenation of its
    /// parts (so callers can prefix a payload without copying it), stamped now; returns the
    /// first offset. The bytes go to the data file in one vectored write (`pwritev`): the
    /// records are not copied into one buffer first. Errors on an empty `records` and on an
    /// entry of 4 GiB or more.
    pub fn write_parts(&self, records: &[&[&[u8]]]) -> Result<u64> {
        self.write_parts_at(records, now_ns())
    }

    /// [`BigLog::write_parts`] with the given timestamp (ns), clamped like
    /// [`BigLog::write_n_at`].
    pub fn write_parts_at(&self, records: &[&[&[u8]]], timestamp: u64) -> Result<u64> {
        if records.is_empty() {
            return Err(Error::InvalidArgument("write_n needs at least one record".into()));
        }
        let prefixes = format::record_prefixes(records)?;
        let mut slices: Vec<IoSlice<'_>> = Vec::with_capacity(records.len() * 3);
        let mut crc = crc32fast::Hasher::new();
        let mut len = 0usize;
        for (prefix, parts) in prefixes.iter().zip(records) {
            for b in std::iter::once(&prefix[..]).chain(parts.iter().copied()) {
                if !b.is_empty() {
                    crc.update(b);
                    len += b.len();
                    slices.push(IoSlice::new(b));
                }
            }
        }
        let crc = crc.finalize();
        let n = records.len() as u64;
        let mut g = self.write_lock()?;
        let need_split = {
            let s = g.segments.last().ok_or_else(|| Error::InvalidArgument("store has no segment".into()))?;
            s.entries > 0 && (s.entries + 2 > s.capacity || s.data_len + len as u64 > self.opts.segment_bytes || s.next_ro + n > u32::MAX as u64)
        };
        if need_split {
            self.split_locked(&mut g)?;
        }
        let ts = timestamp.max(g.last_ts);
        let s = g.segments.last_mut().ok_or_else(|| Error::InvalidArgument("store has no segment".into()))?;
        if s.entries + 2 > s.capacity {
            return Err(Error::InvalidArgument(format!("index capacity {} too small", s.capacity)));
        }
        let direct = s.direct.as_mut().map(|d| d.append(&slices, s.data_len));
        match direct {
            Some(Ok(())) => {}
            Some(Err(e)) if e.raw_os_error() == Some(rustix::io::Errno::INVAL.raw_os_error()) => {
                tracing::warn!(file = %s.data_path.display(), "direct write refused ({e}); this segment is written through the page cache from now on");
                s.direct = None;
                pwrite_all(&s.data, &mut slices, s.data_len).ctx(|| format!("write {}", s.data_path.display()))?;
            }
            Some(Err(e)) => return Err(Error::io(format!("write {}", s.data_path.display()), e)),
            None => pwrite_all(&s.data, &mut slices, s.data_len).ctx(|| format!("write {}", s.data_path.display()))?,
        }
        let e = IndexEntry { relative_offset: s.next_ro as u32, data_len: len as u32, timestamp: ts, data_offset: s.data_len, data_crc: crc };
        let slot = s.entries;
        s.put_slot(slot, &e.encode())?;
        let next_ro = s.next_ro + n;
        let data_len = s.data_len + len as u64;
        s.put_slot(slot + 1, &IndexEntry::marker_synced(next_ro as u32, data_len, s.synced).encode())?;
        let offset = s.base + s.next_ro;
        s.entries += 1;
        s.next_ro = next_ro;
        s.data_len = data_len;
        s.file_len = s.file_len.max(data_len);
        g.last_ts = ts;
        drop(g);
        self.notify();
        Ok(offset)
    }

    fn notify(&self) {
        if let Ok(mut n) = self.wake.0.lock() {
            *n += 1;
            self.wake.1.notify_all();
        }
    }

    /// Waits up to `timeout` for a write after generation `seen`; returns the current generation.
    pub(crate) fn wait_for_write(&self, seen: u64, timeout: Duration) -> u64 {
        let Ok(g) = self.wake.0.lock() else { return seen };
        if *g != seen {
            return *g;
        }
        match self.wake.1.wait_timeout(g, timeout) {
            Ok((g, _)) => *g,
            Err(_) => seen,
        }
    }

    pub(crate) fn generation(&self) -> u64 {
        self.wake.0.lock().map(|g| *g).unwrap_or(0)
    }

    /// Makes everything written so far durable: fsync of the hot data file, then the synced
    /// mark in its index and an msync of the index. (Sealed segments were synced when they were
    /// split.) Reads go on during the fsync; writes wait only for the mark.
    pub fn sync(&self) -> Result<()> {
        #[cfg(feature = "failpoints")]
        fail::fail_point!("store::sync", crate::failpoint_action);
        let (base, len) = {
            let g = self.read()?;
            let Some(s) = g.segments.last() else { return Ok(()) };
            s.data.sync_data().ctx(|| format!("fsync {}", s.data_path.display()))?;
            if self.opts.drop_cache && s.direct.is_none() {
                s.drop_cached(s.data_len);
            }
            (s.base, s.data_len)
        };
        let mut g = self.write_lock()?;
        let mut want_room = false;
        if let Some(s) = g.segments.last_mut() {
            // A split meanwhile synced that segment whole; `len` was fsync'd above.
            if s.base == base && len > s.synced {
                let fresh = len - s.synced;
                s.synced = len;
                let m = IndexEntry::marker_synced(s.next_ro as u32, s.data_len, len);
                s.put_slot(s.entries, &m.encode())?;
                s.flush_index()?;
                want_room = self.opts.zero_fill_bytes > 0
                    && fresh < ZERO_FILL_SMALL_SYNC
                    && s.direct.is_none()
                    && s.damage.is_none()
                    && s.file_len + ZERO_FILL_ROUND.min(self.opts.zero_fill_bytes) <= s.data_len + self.opts.zero_fill_bytes
                    && s.file_len < self.opts.segment_bytes;
            }
        }
        drop(g);
        if want_room {
            self.filler.request(&self.inner, &self.opts, &self.dir);
        }
        Ok(())
    }

    /// Starts a new hot segment at the next offset (the old one is synced first).
    pub fn split(&self) -> Result<()> {
        let mut g = self.write_lock()?;
        self.split_locked(&mut g)
    }

    fn split_locked(&self, g: &mut Inner) -> Result<()> {
        let next = match g.segments.last_mut() {
            Some(s) => {
                // Sealed segments hold their data only: the zero padding is cut off.
                let was_direct = s.cut_tail().ctx(|| format!("truncate {}", s.data_path.display()))?;
                s.data.sync_all().ctx(|| format!("fsync {}", s.data_path.display()))?;
                if s.damage.is_none() {
                    s.mark_synced()?;
                } else {
                    s.flush_index()?;
                }
                if self.opts.drop_cache && !was_direct {
                    s.drop_cached(s.data_len);
                }
                let mut next = s.base + s.next_ro;
                if let Some(d) = &s.damage {
                    // Offsets past damage are unknown: leave room for any the damaged index named.
                    next = next.max(d.offset) + (s.capacity.saturating_sub(s.entries));
                }
                next
            }
            None => 0,
        };
        if g.segments.last().map(|s| s.base == next && s.entries == 0 && s.damage.is_none()).unwrap_or(false) {
            return Ok(()); // already an empty hot segment
        }
        let seg = Segment::create(&self.dir, next, self.opts.index_capacity, self.opts.direct_io)?;
        g.segments.push(seg);
        Ok(())
    }

    /// Drops the oldest segment (its files are deleted). Refuses to drop the hot segment.
    pub fn trim(&self) -> Result<()> {
        let mut g = self.write_lock()?;
        if g.segments.len() < 2 {
            return Err(Error::InvalidArgument("cannot trim the hot segment (split first)".into()));
        }
        let s = g.segments.remove(0);
        std::fs::remove_file(&s.data_path).ctx(|| format!("remove {}", s.data_path.display()))?;
        std::fs::remove_file(&s.index_path).ctx(|| format!("remove {}", s.index_path.display()))?;
        sync_dir(&self.dir)
    }

    /// First readable offset (after trims).
    pub fn first_offset(&self) -> Result<u64> {
        Ok(self.read()?.segments.first().map(|s| s.base).unwrap_or(0))
    }

    /// The next offset to be written.
    pub fn next_offset(&self) -> Result<u64> {
        Ok(self.read()?.segments.last().map(|s| s.base + s.next_ro).unwrap_or(0))
    }

    /// Per-segment summaries, oldest first.
    pub fn segments(&self) -> Result<Vec<SegmentSummary>> {
        let g = self.read()?;
        Ok(g.segments
            .iter()
            .map(|s| SegmentSummary {
                base: s.base,
                entries: s.entries,
                offsets: s.next_ro,
                time_range: s.first_ts().zip(s.last_ts()),
                data_bytes: s.data_len,
                index_bytes: s.index.bytes().len() as u64,
                damage: s.damage.clone(),
            })
            .collect())
    }

    /// Index entry holding `offset`. Offsets before the first are [`Error::NotFound`]; offsets
    /// in a damaged region are [`Error::Corrupt`]. Returns `Ok(None)` at or past the end.
    pub fn entry_info(&self, offset: u64) -> Result<Option<EntryInfo>> {
        let g = self.read()?;
        Self::entry_info_locked(&g, offset)
    }

    fn entry_info_locked(g: &Inner, offset: u64) -> Result<Option<EntryInfo>> {
        let first = g.segments.first().map(|s| s.base).unwrap_or(0);
        if offset < first {
            return Err(Error::NotFound(format!("offset {offset} was trimmed (first offset is {first})")));
        }
        let si = g.segments.partition_point(|s| s.base <= offset).saturating_sub(1);
        let Some(s) = g.segments.get(si) else { return Ok(None) };
        let ro = offset - s.base;
        if let Some(slot) = s.find(ro) {
            return Ok(s.info(slot));
        }
        if let Some(d) = &s.damage {
            if offset >= d.offset && g.segments.get(si + 1).map(|n| offset < n.base).unwrap_or(true) && si + 1 < g.segments.len() {
                return Err(Error::Corrupt {
                    location: format!("segment {} offset {offset}", segment_name(s.base)),
                    detail: format!("index slot {} is corrupt", d.slot),
                });
            }
        }
        Ok(None)
    }

    /// Where a reader positioned at `offset` continues after an error there.
    pub(crate) fn resume_after(&self, offset: u64) -> Result<u64> {
        let g = self.read()?;
        let si = g.segments.partition_point(|s| s.base <= offset).saturating_sub(1);
        let Some(s) = g.segments.get(si) else { return Ok(offset + 1) };
        if let Some(slot) = s.find(offset - s.base) {
            if let Some(i) = s.info(slot) {
                return Ok(i.offset + i.count.max(1));
            }
        }
        Ok(g.segments.get(si + 1).map(|n| n.base).unwrap_or(offset + 1))
    }

    /// Reads and verifies the entry `info` (from [`BigLog::entry_info`]); returns its records.
    pub fn read_entry(&self, info: &EntryInfo) -> Result<Vec<Vec<u8>>> {
        let g = self.read()?;
        let s =
            g.segments.iter().find(|s| s.base == info.segment).ok_or_else(|| Error::NotFound(format!("segment {} was trimmed", segment_name(info.segment))))?;
        let data = s.read_data(info)?;
        let recs = format::parse_records(&data).ok_or_else(|| Error::Corrupt {
            location: format!("segment {} offset {}", segment_name(s.base), info.offset),
            detail: "record framing does not parse".into(),
        })?;
        if recs.len() as u64 != info.count {
            return Err(Error::Corrupt {
                location: format!("segment {} offset {}", segment_name(s.base), info.offset),
                detail: format!("entry holds {} records, index says {}", recs.len(), info.count),
            });
        }
        Ok(recs.into_iter().map(|r| r.to_vec()).collect())
    }

    /// Reads the record at `offset` (verified). `Ok(None)` past the end.
    pub fn read_at(&self, offset: u64) -> Result<Option<(u64, Vec<u8>)>> {
        let Some(info) = self.entry_info(offset)? else { return Ok(None) };
        let mut recs = self.read_entry(&info)?;
        let i = (offset - info.offset) as usize;
        if i >= recs.len() {
            return Ok(None);
        }
        Ok(Some((info.timestamp, recs.swap_remove(i))))
    }

    /// First offset whose timestamp is >= `ts` (ns); the next offset when none is.
    /// Binary search over segments, then over the segment's index.
    pub fn seek_time(&self, ts: u64) -> Result<u64> {
        let g = self.read()?;
        let si = g.segments.partition_point(|s| s.last_ts().map(|l| l < ts).unwrap_or(true) && s.entries > 0);
        // Segments with no entries (an empty hot segment) sort as "all before".
        for s in &g.segments[si.min(g.segments.len())..] {
            if s.entries == 0 {
                continue;
            }
            let slot = s.seek_time(ts);
            if slot < s.entries {
                return Ok(s.base + s.entry(slot).map(|e| e.relative_offset as u64).unwrap_or(0));
            }
        }
        Ok(g.segments.last().map(|s| s.base + s.next_ro).unwrap_or(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> BigLogOptions {
        BigLogOptions { segment_bytes: 4096, index_capacity: 16, ..Default::default() }
    }

    #[test]
    fn write_read_split_trim() {
        let d = tempfile::tempdir().unwrap();
        let log = BigLog::open(d.path(), small()).unwrap();
        assert_eq!(log.write(b"a").unwrap(), 0);
        assert_eq!(log.write_n(&[b"b", b"c", b"d"]).unwrap(), 1);
        assert_eq!(log.write(b"e").unwrap(), 4);
        assert_eq!(log.read_at(2).unwrap().unwrap().1, b"c");
        log.split().unwrap();
        assert_eq!(log.write(b"f").unwrap(), 5);
        assert_eq!(log.segments().unwrap().len(), 2);
        log.sync().unwrap();
        drop(log);
        let log = BigLog::open(d.path(), small()).unwrap();
        assert_eq!(log.next_offset().unwrap(), 6);
        assert_eq!(log.read_at(5).unwrap().unwrap().1, b"f");
        log.trim().unwrap();
        assert!(log.read_at(0).is_err());
        assert_eq!(log.read_at(5).unwrap().unwrap().1, b"f");
    }

    #[test]
    fn a_segment_creation_cut_short_is_removed_at_open() {
        let d = tempfile::tempdir().unwrap();
        {
            let log = BigLog::open(d.path(), small()).unwrap();
            log.write_n(&[b"a", b"b"]).unwrap();
            log.sync().unwrap();
        }
        // A kill between creating the next segment's data file and writing its header (with
        // and without its index file).
        for state in 0..3 {
            let next = segment_name(2);
            if state == 0 {
                // Killed right after creating the data file.
                std::fs::write(d.path().join(format!("{next}.data")), b"").unwrap();
            } else {
                // After its header; the index created (empty) or not yet.
                std::fs::write(d.path().join(format!("{next}.data")), format::encode_data_header()).unwrap();
                if state == 2 {
                    std::fs::write(d.path().join(format!("{next}.index")), b"").unwrap();
                }
            }
            assert!(BigLog::open_read_only(d.path()).is_ok(), "verify cannot open the store");
            let log = BigLog::open(d.path(), small()).unwrap();
            assert!(!d.path().join(format!("{next}.data")).exists());
            assert_eq!(log.read_at(1).unwrap().unwrap().1, b"b");
            assert_eq!(log.next_offset().unwrap(), 2);
        }
        let log = BigLog::open(d.path(), small()).unwrap();
        log.split().unwrap();
        assert_eq!(log.write(b"c").unwrap(), 2);
        assert_eq!(log.read_at(2).unwrap().unwrap().1, b"c");
        drop(log);
        // A garbled index of a store that holds no record yet is damage, not a creation cut
        // short: the store does not open (tlogd starts degraded, or refuses).
        let e = tempfile::tempdir().unwrap();
        drop(BigLog::open(e.path(), small()).unwrap());
        std::fs::write(e.path().join(format!("{}.index", segment_name(0))), b"garbage").unwrap();
        assert!(BigLog::open(e.path(), small()).is_err(), "a garbled index was taken for a torn creation");
    }

    /// Waits up to 5 s for the hot segment's data file to grow past its data; returns the data
    /// length and the file's length.
    fn wait_for_room(log: &BigLog) -> (u64, u64) {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let (data_len, file_len) = {
                let g = log.read().unwrap();
                let s = g.segments.last().unwrap();
                (s.data_len, s.data.metadata().unwrap().len())
            };
            if file_len > data_len || std::time::Instant::now() > deadline {
                return (data_len, file_len);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn data_file_len(dir: &Path, base: u64) -> u64 {
        std::fs::metadata(dir.join(format!("{}.data", segment_name(base)))).unwrap().len()
    }

    #[test]
    fn small_syncs_get_zero_filled_room_never_over_data_and_cut_at_split_close_and_reopen() {
        let d = tempfile::tempdir().unwrap();
        let opts = BigLogOptions { segment_bytes: 64 << 20, index_capacity: 4096, zero_fill_bytes: 2 << 20, ..Default::default() };
        let log = BigLog::open(d.path(), opts.clone()).unwrap();
        let rec = |i: u64| -> Vec<u8> { (0..3000u64).map(|j| (i.wrapping_mul(131) ^ j) as u8 | 1).collect() };
        // Small syncs (each far below ZERO_FILL_SMALL_SYNC), some with two writes: the filler
        // runs between and beside them.
        for i in 0..300u64 {
            log.write(&rec(i)).unwrap();
            if i % 3 != 1 {
                log.sync().unwrap();
            }
        }
        log.sync().unwrap();
        let (data_len, file_len) = wait_for_room(&log);
        assert!(file_len > data_len, "no zero-filled room after small syncs: {file_len} bytes for {data_len} of data");
        assert!(file_len <= data_len + (2 << 20), "more room than zero_fill_bytes: {file_len} for {data_len}");
        for i in 0..300u64 {
            assert_eq!(log.read_at(i).unwrap().unwrap().1, rec(i), "record {i} was written over");
        }
        // A kill now leaves the files as they are (the page cache survives it): a copy taken
        // with the filler held off opens with every record, no damage, and the zeros cut.
        let e = tempfile::tempdir().unwrap();
        {
            let g = log.read().unwrap();
            let s = g.segments.last().unwrap();
            let mut tail = vec![0u8; (s.data.metadata().unwrap().len() - s.data_len) as usize];
            s.data.read_exact_at(&mut tail, s.data_len).unwrap();
            assert!(tail.iter().all(|&b| b == 0), "the room past the data is not zeros");
            for f in [&s.data_path, &s.index_path] {
                std::fs::copy(f, e.path().join(f.file_name().unwrap())).unwrap();
            }
        }
        let c = BigLog::open(e.path(), opts.clone()).unwrap();
        assert!(c.segments().unwrap().iter().all(|s| s.damage.is_none()));
        assert_eq!(data_file_len(e.path(), 0), data_len, "the zeros were not cut at reopen");
        for i in 0..300u64 {
            assert_eq!(c.read_at(i).unwrap().unwrap().1, rec(i));
        }
        drop(c);
        // A sealed segment holds its data only.
        log.split().unwrap();
        assert_eq!(data_file_len(d.path(), 0), data_len, "split left the zeros");
        let next = log.next_offset().unwrap();
        for i in 0..50u64 {
            log.write(&rec(next + i)).unwrap();
            log.sync().unwrap();
        }
        let (hot_len, hot_file) = wait_for_room(&log);
        assert!(hot_file > hot_len);
        // So does a closed store's hot segment.
        drop(log);
        assert_eq!(data_file_len(d.path(), next), hot_len, "close left the zeros");
        let log = BigLog::open(d.path(), opts).unwrap();
        assert_eq!(log.read_at(next + 49).unwrap().unwrap().1, rec(next + 49));
        assert_eq!(log.read_at(7).unwrap().unwrap().1, rec(7));
    }

    #[test]
    fn large_syncs_and_zero_fill_off_get_no_room() {
        for (opts, big) in [
            (BigLogOptions { segment_bytes: 64 << 20, index_capacity: 4096, zero_fill_bytes: 0, ..Default::default() }, false),
            (BigLogOptions { segment_bytes: 64 << 20, index_capacity: 4096, ..Default::default() }, true),
        ] {
            let d = tempfile::tempdir().unwrap();
            let log = BigLog::open(d.path(), opts).unwrap();
            let n = if big { ZERO_FILL_SMALL_SYNC as usize } else { 3000 };
            for i in 0..20u8 {
                log.write(&vec![i | 1; n]).unwrap();
                log.sync().unwrap();
            }
            std::thread::sleep(Duration::from_millis(200));
            let g = log.read().unwrap();
            let s = g.segments.last().unwrap();
            assert_eq!(s.data.metadata().unwrap().len(), s.data_len, "room was filled (big syncs: {big})");
        }
    }

    #[test]
    fn auto_split_on_capacity() {
        let d = tempfile::tempdir().unwrap();
        let log = BigLog::open(d.path(), BigLogOptions { segment_bytes: 1 << 20, index_capacity: 4, ..Default::default() }).unwrap();
        for i in 0..10u8 {
            log.write(&[i]).unwrap();
        }
        assert!(log.segments().unwrap().len() >= 3);
        for i in 0..10u8 {
            assert_eq!(log.read_at(i as u64).unwrap().unwrap().1, vec![i]);
        }
    }

    #[test]
    fn parts_are_stored_as_their_concatenation() {
        let d = tempfile::tempdir().unwrap();
        let log = BigLog::open(d.path(), BigLogOptions { segment_bytes: 64 << 20, index_capacity: 64, ..Default::default() }).unwrap();
        // 600 records of 3 parts (with empty ones) need more iovecs than one pwritev takes.
        let payloads: Vec<Vec<u8>> = (0..600u32).map(|i| (0..(i % 97)).map(|j| (i * 7 + j) as u8).collect()).collect();
        let recs: Vec<[&[u8]; 3]> = payloads.iter().enumerate().map(|(i, p)| [&b"k"[..], if i % 3 == 0 { &[] } else { &b"ey"[..] }, p.as_slice()]).collect();
        let refs: Vec<&[&[u8]]> = recs.iter().map(|r| r.as_slice()).collect();
        assert_eq!(log.write_parts(&refs).unwrap(), 0);
        assert_eq!(log.write_n(&[b"after"]).unwrap(), 600);
        log.sync().unwrap();
        drop(log);
        let log = BigLog::open(d.path(), BigLogOptions::default()).unwrap();
        for (i, r) in recs.iter().enumerate() {
            assert_eq!(log.read_at(i as u64).unwrap().unwrap().1, r.concat(), "record {i}");
        }
        assert_eq!(log.read_at(600).unwrap().unwrap().1, b"after");
    }

    /// Whether this test's filesystem offers direct I/O (statx DIOALIGN), so the direct path
    /// must be the one taken.
    fn dio_supported(dir: &Path) -> bool {
        use rustix::fs::{AtFlags, StatxFlags};
        let probe = dir.join("dio-probe");
        std::fs::write(&probe, b"").unwrap();
        rustix::fs::statx(rustix::fs::CWD, &probe, AtFlags::empty(), StatxFlags::DIOALIGN)
            .map(|st| st.stx_mask & StatxFlags::DIOALIGN.bits() != 0 && st.stx_dio_offset_align != 0)
            .unwrap_or(false)
    }

    fn hot_is_direct(log: &BigLog) -> bool {
        log.read().unwrap().segments.last().map(|s| s.direct.is_some()).unwrap_or(false)
    }

    /// Records of awkward sizes (empty, 1 byte, around 4 KiB, past the 1 MiB staging buffer),
    /// alone and in batches, each read back at once (before any sync), then after a reopen and
    /// after a split; with direct I/O on and off. The data file holds exactly its data after a
    /// clean close and after a split (the zero padding is cut).
    #[test]
    fn direct_and_buffered_appends_read_back_exactly() {
        for direct_io in [true, false] {
            let d = tempfile::tempdir().unwrap();
            let opts = BigLogOptions { segment_bytes: 64 << 20, index_capacity: 256, direct_io, ..Default::default() };
            let log = BigLog::open(d.path(), opts.clone()).unwrap();
            assert_eq!(hot_is_direct(&log), direct_io && dio_supported(d.path()), "direct_io = {direct_io}");
            let sizes = [0usize, 1, 4095, 4096, 4097, 3, (1 << 20) - 7, 1 << 20, (1 << 20) + 4100, 12, 65536, 2];
            let payload = |i: usize, n: usize| -> Vec<u8> { (0..n).map(|j| (j * 31 + i * 7 + 1) as u8).collect() };
            let mut want: Vec<Vec<u8>> = Vec::new();
            for (i, &n) in sizes.iter().enumerate() {
                let r = payload(i, n);
                assert_eq!(log.write(&r).unwrap(), want.len() as u64);
                want.push(r);
                let last = want.len() - 1;
                assert_eq!(log.read_at(last as u64).unwrap().unwrap().1, want[last], "direct_io = {direct_io}, record {last}");
            }
            // One batch of 300 records, 2.3 MiB in all: several staged writes.
            let batch: Vec<Vec<u8>> = (0..300).map(|i| payload(1000 + i, (i * 8011) % 16001)).collect();
            let refs: Vec<&[u8]> = batch.iter().map(|b| b.as_slice()).collect();
            assert_eq!(log.write_n(&refs).unwrap(), want.len() as u64);
            want.extend(batch);
            log.sync().unwrap();
            for (o, w) in want.iter().enumerate() {
                assert_eq!(&log.read_at(o as u64).unwrap().unwrap().1, w, "direct_io = {direct_io}, offset {o}");
            }
            let data_len = |log: &BigLog| log.read().unwrap().segments.last().map(|s| s.data_len).unwrap();
            let expect_len = data_len(&log);
            drop(log);
            let data_file = d.path().join(format!("{}.data", segment_name(0)));
            assert_eq!(std::fs::metadata(&data_file).unwrap().len(), expect_len, "a clean close leaves no padding");
            // Reopen and go on appending past the old end; then split.
            let log = BigLog::open(d.path(), opts.clone()).unwrap();
            for i in 0..5 {
                let r = payload(5000 + i, 777 * i + 1);
                assert_eq!(log.write(&r).unwrap(), want.len() as u64);
                want.push(r);
            }
            let end = data_len(&log);
            log.split().unwrap();
            assert_eq!(std::fs::metadata(&data_file).unwrap().len(), end, "a sealed segment holds no padding");
            assert_eq!(log.write(b"new segment").unwrap(), want.len() as u64);
            want.push(b"new segment".to_vec());
            log.sync().unwrap();
            drop(log);
            let log = BigLog::open(d.path(), opts).unwrap();
            for (o, w) in want.iter().enumerate() {
                assert_eq!(&log.read_at(o as u64).unwrap().unwrap().1, w, "direct_io = {direct_io}, offset {o} after reopen");
            }
        }
    }

    /// A crash leaves the zero padding of the last direct write behind the data: the next open
    /// cuts it off and appends go on from the data's end.
    #[test]
    fn padding_left_by_a_crash_is_cut_on_open() {
        let d = tempfile::tempdir().unwrap();
        // (No zero-filled room: the padding alone is what this looks at.)
        let log = BigLog::open(d.path(), BigLogOptions { zero_fill_bytes: 0, ..Default::default() }).unwrap();
        log.write(b"one").unwrap();
        log.write(&[7u8; 5000]).unwrap();
        log.sync().unwrap();
        let end = log.read().unwrap().segments.last().map(|s| s.data_len).unwrap();
        // What a crash leaves: the file as the direct writes left it, padded to a block.
        let data_file = d.path().join(format!("{}.data", segment_name(0)));
        let padded = end.div_ceil(4096) * 4096;
        std::mem::forget(log); // no clean close (its lock goes with the process)
        let f = OpenOptions::new().write(true).open(&data_file).unwrap();
        f.set_len(padded).unwrap();
        drop(f);
        let d2 = tempfile::tempdir().unwrap();
        for ent in std::fs::read_dir(d.path()).unwrap() {
            let ent = ent.unwrap();
            if ent.file_name() != "LOCK" {
                std::fs::copy(ent.path(), d2.path().join(ent.file_name())).unwrap();
            }
        }
        assert_eq!(std::fs::metadata(d2.path().join(format!("{}.data", segment_name(0)))).unwrap().len(), padded);
        let log = BigLog::open(d2.path(), BigLogOptions::default()).unwrap();
        assert_eq!(std::fs::metadata(d2.path().join(format!("{}.data", segment_name(0)))).unwrap().len(), end);
        assert_eq!(log.read_at(1).unwrap().unwrap().1, vec![7u8; 5000]);
        assert_eq!(log.write(b"three").unwrap(), 2);
        log.sync().unwrap();
        assert_eq!(log.read_at(2).unwrap().unwrap().1, b"three");
        assert_eq!(log.read_at(0).unwrap().unwrap().1, b"one");
    }
}
