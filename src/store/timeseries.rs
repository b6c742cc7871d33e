//! Time-series layer over files (after the Minotaur design): recorder, cursor, merge.
//!
//! Layout of a time-series directory:
//! - `data/*.ts`: committed files; each is a 16-byte header (`b"TLOGTSF1"`, version u32,
//!   reserved u32) then records sorted by (timestamp, id):
//!   `timestamp u64 | id u64 | len u32 | crc u32 | len bytes` (little-endian; the CRC-32 covers
//!   the first 20 header bytes and the data). `id` is unique in the store, so (timestamp, id)
//!   orders every record totally, and merges keep it.
//! - `tmp/`: a recorder's working files until `commit` or `revert`.
//! - `meta`: the list of committed files with their key ranges, record counts and sizes, and a
//!   generation bumped by every commit and merge; replaced atomically (write, fsync, rename,
//!   fsync of the directory).
//! - `meta.lock`: writers (recorder creation, commit, merge) hold it exclusively.
//!
//! Concurrency: a [`Cursor`] opens files lazily and holds a shared lock on each file it reads.
//! Before opening a file it checks the metadata generation; when a commit or merge changed it,
//! it reloads the metadata and continues after the last record it delivered, so no record is
//! lost or repeated. A merge waits for readers of the files it replaces at most
//! `reader_timeout`, then proceeds (a reader keeps reading its open file, then reloads).

use crate::error::{Error, IoContext, Result};
use crate::fs::sync_dir;
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const TS_MAGIC: [u8; 8] = *b"TLOGTSF1";
const TS_VERSION: u32 = 1;
const TS_HEADER: usize = 16;
const REC_HEADER: usize = 24;

/// Options of a time-series store.
#[derive(Clone, Debug)]
pub struct TimeSeriesOptions {
    /// Target size of merged files in bytes (default 512 MiB).
    pub target_file_bytes: u64,
    /// How long a merge waits for readers of a file it replaces (default 5 s).
    pub reader_timeout: Duration,
}

impl Default for TimeSeriesOptions {
    fn default() -> Self {
        TimeSeriesOptions { target_file_bytes: 512 << 20, reader_timeout: Duration::from_secs(5) }
    }
}

/// A record's sort key: (timestamp ns, id).
pub type TsKey = (u64, u64);

/// One committed file in the metadata.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TsFile {
    /// File name inside `data/`.
    pub name: String,
    /// Smallest key.
    pub first: TsKey,
    /// Largest key.
    pub last: TsKey,
    /// Records.
    pub count: u64,
    /// File bytes.
    pub bytes: u64,
}

/// The metadata file's content.
#[derive(Clone, Debug, Default)]
pub struct Meta {
    /// Bumped by every commit and merge.
    pub generation: u64,
    /// Next recorder number (ids are `recorder << 32 | index`).
    pub next_recorder: u64,
    /// Committed files.
    pub files: Vec<TsFile>,
}

/// A time-series store in one directory.
pub struct TimeSeries {
    dir: PathBuf,
    opts: TimeSeriesOptions,
}

/// One record read back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TsRecord {
    /// Nanoseconds since the Unix epoch.
    pub timestamp: u64,
    /// Store-unique id.
    pub id: u64,
    /// The bytes.
    pub data: Vec<u8>,
}

fn encode_record(w: &mut impl Write, ts: u64, id: u64, data: &[u8]) -> std::io::Result<()> {
    let mut h = [0u8; REC_HEADER];
    h[0..8].copy_from_slice(&ts.to_le_bytes());
    h[8..16].copy_from_slice(&id.to_le_bytes());
    h[16..20].copy_from_slice(&(data.len() as u32).to_le_bytes());
    let mut c = crc32fast::Hasher::new();
    c.update(&h[0..20]);
    c.update(data);
    h[20..24].copy_from_slice(&c.finalize().to_le_bytes());
    w.write_all(&h)?;
    w.write_all(data)
}

fn file_header() -> [u8; TS_HEADER] {
    let mut h = [0u8; TS_HEADER];
    h[0..8].copy_from_slice(&TS_MAGIC);
    h[8..12].copy_from_slice(&TS_VERSION.to_le_bytes());
    h
}

/// Sequential reader of one time-series file.
struct FileReader {
    r: BufReader<File>,
    path: PathBuf,
    /// Held for the shared lock.
    _file: File,
}

impl FileReader {
    fn open(path: &Path, lock: bool) -> Result<FileReader> {
        let f = File::open(path).ctx(|| format!("open {}", path.display()))?;
        if lock {
            f.lock_shared().ctx(|| format!("lock {}", path.display()))?;
        }
        let mut r = BufReader::with_capacity(256 << 10, f.try_clone().ctx(|| format!("open {}", path.display()))?);
        let mut h = [0u8; TS_HEADER];
        r.read_exact(&mut h).ctx(|| format!("read {}", path.display()))?;
        if h[0..8] != TS_MAGIC || u32::from_le_bytes([h[8], h[9], h[10], h[11]]) != TS_VERSION {
            return Err(Error::Format { path: path.into(), detail: "not a tlog time-series file of version 1".into() });
        }
        Ok(FileReader { r, path: path.into(), _file: f })
    }

    fn next(&mut self) -> Result<Option<TsRecord>> {
        let mut h = [0u8; REC_HEADER];
        match self.r.read_exact(&mut h) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(Error::io(format!("read {}", self.path.display()), e)),
        }
        let ts = crate::store::format::le_u64(&h[0..8]);
        let id = crate::store::format::le_u64(&h[8..16]);
        let len = u32::from_le_bytes([h[16], h[17], h[18], h[19]]) as usize;
        let crc = u32::from_le_bytes([h[20], h[21], h[22], h[23]]);
        let mut data = vec![0u8; len];
        self.r
            .read_exact(&mut data)
            .map_err(|e| Error::Corrupt { location: format!("{} record ({ts}, {id})", self.path.display()), detail: format!("truncated: {e}") })?;
        let mut c = crc32fast::Hasher::new();
        c.update(&h[0..20]);
        c.update(&data);
        if c.finalize() != crc {
            return Err(Error::Corrupt { location: format!("{} record ({ts}, {id})", self.path.display()), detail: "checksum mismatch".into() });
        }
        Ok(Some(TsRecord { timestamp: ts, id, data }))
    }
}

/// Holds the exclusive lock on `meta.lock` until dropped.
struct MetaLock(#[allow(dead_code)] File);

impl TimeSeries {
    /// Opens (creating) a time-series store in `dir`; removes leftovers of recorders that never
    /// committed (their files in `tmp/`).
    pub fn open(dir: impl AsRef<Path>, opts: TimeSeriesOptions) -> Result<TimeSeries> {
        let dir = dir.as_ref().to_path_buf();
        for d in [dir.join("data"), dir.join("tmp")] {
            std::fs::create_dir_all(&d).ctx(|| format!("create {}", d.display()))?;
        }
        let ts = TimeSeries { dir, opts };
        if !ts.dir.join("meta").exists() {
            let _g = ts.lock()?;
            if !ts.dir.join("meta").exists() {
                ts.write_meta(&Meta::default())?;
            }
        }
        Ok(ts)
    }

    fn lock(&self) -> Result<MetaLock> {
        let p = self.dir.join("meta.lock");
        let f = OpenOptions::new().create(true).truncate(false).write(true).open(&p).ctx(|| format!("open {}", p.display()))?;
        f.lock().ctx(|| format!("lock {}", p.display()))?;
        Ok(MetaLock(f))
    }

    /// Reads the metadata.
    pub fn meta(&self) -> Result<Meta> {
        let p = self.dir.join("meta");
        let text = std::fs::read_to_string(&p).ctx(|| format!("read {}", p.display()))?;
        let bad = |d: &str| Error::Format { path: p.clone(), detail: d.to_string() };
        let (body, crc_line) = text.rsplit_once("crc ").ok_or_else(|| bad("missing crc line"))?;
        let crc: u32 = crc_line.trim().parse().map_err(|_| bad("bad crc line"))?;
        if crc32fast::hash(body.as_bytes()) != crc {
            return Err(bad("metadata checksum mismatch"));
        }
        let mut m = Meta::default();
        for line in body.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            let num = |i: usize| -> Result<u64> { f.get(i).and_then(|s| s.parse().ok()).ok_or_else(|| bad(&format!("bad line {line:?}"))) };
            match f.first().copied() {
                Some("tlog-ts-meta") => {
                    if num(1)? != 1 {
                        return Err(bad("metadata version is not 1"));
                    }
                }
                Some("generation") => m.generation = num(1)?,
                Some("next_recorder") => m.next_recorder = num(1)?,
                Some("file") => m.files.push(TsFile {
                    name: f.get(1).ok_or_else(|| bad("file line without name"))?.to_string(),
                    first: (num(2)?, num(3)?),
                    last: (num(4)?, num(5)?),
                    count: num(6)?,
                    bytes: num(7)?,
                }),
                None => {}
                Some(other) => return Err(bad(&format!("unknown metadata line {other:?}"))),
            }
        }
        Ok(m)
    }

    fn write_meta(&self, m: &Meta) -> Result<()> {
        let mut body = format!("tlog-ts-meta 1\ngeneration {}\nnext_recorder {}\n", m.generation, m.next_recorder);
        for f in &m.files {
            body.push_str(&format!("file {} {} {} {} {} {} {}\n", f.name, f.first.0, f.first.1, f.last.0, f.last.1, f.count, f.bytes));
        }
        let crc = crc32fast::hash(body.as_bytes());
        body.push_str(&format!("crc {crc}\n"));
        let tmp = self.dir.join("meta.tmp");
        let p = self.dir.join("meta");
        {
            let mut f = File::create(&tmp).ctx(|| format!("create {}", tmp.display()))?;
            f.write_all(body.as_bytes()).ctx(|| format!("write {}", tmp.display()))?;
            f.sync_all().ctx(|| format!("fsync {}", tmp.display()))?;
        }
        std::fs::rename(&tmp, &p).ctx(|| format!("rename {} to {}", tmp.display(), p.display()))?;
        sync_dir(&self.dir)
    }

    /// Starts a recorder: it writes into `tmp/` until [`Recorder::commit`] or
    /// [`Recorder::revert`].
    pub fn recorder(&self) -> Result<Recorder<'_>> {
        let number = {
            let _g = self.lock()?;
            let mut m = self.meta()?;
            let n = m.next_recorder;
            m.next_recorder += 1;
            self.write_meta(&m)?;
            n
        };
        let path = self.dir.join("tmp").join(format!("rec-{number:016x}.ts"));
        let f = File::create(&path).ctx(|| format!("create {}", path.display()))?;
        let mut w = BufWriter::with_capacity(256 << 10, f);
        w.write_all(&file_header()).ctx(|| format!("write {}", path.display()))?;
        Ok(Recorder { ts: self, number, path, w: Some(w), count: 0, bytes: TS_HEADER as u64, first: None, last: None, sorted: true, done: false })
    }

    /// Opens a cursor over records with `from <= timestamp < to` (ns).
    pub fn cursor(&self, from: u64, to: u64) -> Result<Cursor<'_>> {
        let mut c = Cursor { ts: self, to, pos: None, from, generation: 0, pending: Vec::new(), open: Vec::new(), reloads: 0 };
        c.reload()?;
        Ok(c)
    }

    /// Rewrites small or overlapping files into files of `target_file_bytes`, ordered by
    /// (timestamp, id). Returns the number of files replaced (0 when nothing needed merging).
    pub fn merge(&self) -> Result<usize> {
        let _g = self.lock()?;
        let mut m = self.meta()?;
        let mut files = m.files.clone();
        files.sort_by_key(|f| f.first);
        // Pick overlapping files and files under half the target size.
        let mut pick = vec![false; files.len()];
        for i in 0..files.len() {
            if files[i].bytes < self.opts.target_file_bytes / 2 {
                pick[i] = true;
            }
            if i + 1 < files.len() && files[i + 1].first <= files[i].last {
                pick[i] = true;
                pick[i + 1] = true;
            }
        }
        let chosen: Vec<TsFile> = files.iter().zip(&pick).filter(|(_, p)| **p).map(|(f, _)| f.clone()).collect();
        if chosen.len() < 2 && !chosen.iter().any(|f| files.iter().any(|g| g.name != f.name && g.first <= f.last && f.first <= g.last)) {
            return Ok(0);
        }
        // k-way merge into new files in tmp/.
        let mut readers = Vec::new();
        for f in &chosen {
            readers.push(FileReader::open(&self.dir.join("data").join(&f.name), false)?);
        }
        let mut heads: BTreeMap<TsKey, (usize, TsRecord)> = BTreeMap::new();
        for (i, r) in readers.iter_mut().enumerate() {
            if let Some(rec) = r.next()? {
                heads.insert((rec.timestamp, rec.id), (i, rec));
            }
        }
        let mut outputs: Vec<TsFile> = Vec::new();
        let mut cur: Option<(BufWriter<File>, TsFile, PathBuf)> = None;
        let gen = m.generation + 1;
        while let Some((key, (i, rec))) = heads.pop_first() {
            if cur.as_ref().map(|c| c.1.bytes >= self.opts.target_file_bytes).unwrap_or(true) {
                if let Some(c) = cur.take() {
                    outputs.push(finish_file(c)?);
                }
                let name = format!("m{gen:012}-{:06}.ts", outputs.len());
                let path = self.dir.join("tmp").join(&name);
                let mut w = BufWriter::with_capacity(256 << 10, File::create(&path).ctx(|| format!("create {}", path.display()))?);
                w.write_all(&file_header()).ctx(|| format!("write {}", path.display()))?;
                cur = Some((w, TsFile { name, first: key, last: key, count: 0, bytes: TS_HEADER as u64 }, path));
            }
            if let Some((w, f, p)) = cur.as_mut() {
                encode_record(w, rec.timestamp, rec.id, &rec.data).ctx(|| format!("write {}", p.display()))?;
                f.last = key;
                f.count += 1;
                f.bytes += (REC_HEADER + rec.data.len()) as u64;
            }
            if let Some(next) = readers[i].next()? {
                heads.insert((next.timestamp, next.id), (i, next));
            }
        }
        if let Some(c) = cur.take() {
            outputs.push(finish_file(c)?);
        }
        drop(readers);
        for f in &outputs {
            let from = self.dir.join("tmp").join(&f.name);
            let to = self.dir.join("data").join(&f.name);
            std::fs::rename(&from, &to).ctx(|| format!("rename {} to {}", from.display(), to.display()))?;
        }
        sync_dir(&self.dir.join("data"))?;
        m.files.retain(|f| !chosen.iter().any(|c| c.name == f.name));
        m.files.extend(outputs);
        m.generation = gen;
        self.write_meta(&m)?;
        // Writers win over slow readers: wait for their shared locks at most reader_timeout.
        for f in &chosen {
            let p = self.dir.join("data").join(&f.name);
            self.wait_readers(&p);
            std::fs::remove_file(&p).ctx(|| format!("remove {}", p.display()))?;
        }
        sync_dir(&self.dir.join("data"))?;
        Ok(chosen.len())
    }

    fn wait_readers(&self, p: &Path) {
        let Ok(f) = File::open(p) else { return };
        let deadline = Instant::now() + self.opts.reader_timeout;
        loop {
            match f.try_lock() {
                Ok(()) => return,
                Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(2)),
                Err(_) => {
                    tracing::warn!(file = %p.display(), "readers still hold the file after {:?}: proceeding", self.opts.reader_timeout);
                    return;
                }
            }
        }
    }
}

fn finish_file(c: (BufWriter<File>, TsFile, PathBuf)) -> Result<TsFile> {
    let (w, f, p) = c;
    let file = w.into_inner().map_err(|e| Error::io(format!("write {}", p.display()), e.into_error()))?;
    file.sync_all().ctx(|| format!("fsync {}", p.display()))?;
    Ok(f)
}

/// Writes records into a temporary file until `commit` or `revert`. Dropping an uncommitted
/// recorder reverts it.
pub struct Recorder<'a> {
    ts: &'a TimeSeries,
    number: u64,
    path: PathBuf,
    w: Option<BufWriter<File>>,
    count: u64,
    bytes: u64,
    first: Option<TsKey>,
    last: Option<TsKey>,
    sorted: bool,
    done: bool,
}

impl Recorder<'_> {
    /// Appends a record with timestamp `ts` (ns). Errors past 2^32 records per recorder.
    pub fn append(&mut self, ts: u64, data: &[u8]) -> Result<()> {
        if self.count >= u32::MAX as u64 {
            return Err(Error::InvalidArgument("a recorder holds at most 2^32-1 records".into()));
        }
        let id = (self.number << 32) | self.count;
        let key = (ts, id);
        if self.last.map(|l| key < l).unwrap_or(false) {
            self.sorted = false;
        }
        let w = self.w.as_mut().ok_or_else(|| Error::InvalidArgument("recorder already finished".into()))?;
        encode_record(w, ts, id, data).ctx(|| format!("write {}", self.path.display()))?;
        self.first = Some(self.first.map_or(key, |f| f.min(key)));
        self.last = Some(self.last.map_or(key, |l| l.max(key)));
        self.count += 1;
        self.bytes += (REC_HEADER + data.len()) as u64;
        Ok(())
    }

    /// Makes the batch visible at once: fsync, atomic rename into `data/`, metadata update.
    /// An empty batch commits nothing.
    pub fn commit(mut self) -> Result<()> {
        let w = self.w.take().ok_or_else(|| Error::InvalidArgument("recorder already finished".into()))?;
        self.done = true;
        let file = w.into_inner().map_err(|e| Error::io(format!("write {}", self.path.display()), e.into_error()))?;
        drop(file);
        if self.count == 0 {
            std::fs::remove_file(&self.path).ctx(|| format!("remove {}", self.path.display()))?;
            return Ok(());
        }
        if !self.sorted {
            self.sort_file()?;
        }
        File::open(&self.path).and_then(|f| f.sync_all()).ctx(|| format!("fsync {}", self.path.display()))?;
        let name = format!("r{:016x}.ts", self.number);
        let to = self.ts.dir.join("data").join(&name);
        let _g = self.ts.lock()?;
        let mut m = self.ts.meta()?;
        std::fs::rename(&self.path, &to).ctx(|| format!("rename {} to {}", self.path.display(), to.display()))?;
        sync_dir(&self.ts.dir.join("data"))?;
        m.files.push(TsFile { name, first: self.first.unwrap_or((0, 0)), last: self.last.unwrap_or((0, 0)), count: self.count, bytes: self.bytes });
        m.generation += 1;
        self.ts.write_meta(&m)
    }

    fn sort_file(&self) -> Result<()> {
        let mut r = FileReader::open(&self.path, false)?;
        let mut recs = Vec::new();
        while let Some(x) = r.next()? {
            recs.push(x);
        }
        recs.sort_by_key(|x| (x.timestamp, x.id));
        let mut w = BufWriter::new(File::create(&self.path).ctx(|| format!("create {}", self.path.display()))?);
        w.write_all(&file_header()).ctx(|| format!("write {}", self.path.display()))?;
        for x in &recs {
            encode_record(&mut w, x.timestamp, x.id, &x.data).ctx(|| format!("write {}", self.path.display()))?;
        }
        w.flush().ctx(|| format!("write {}", self.path.display()))
    }

    /// Drops the batch: nothing becomes visible and the temporary file is removed.
    pub fn revert(mut self) -> Result<()> {
        self.done = true;
        self.w = None;
        std::fs::remove_file(&self.path).ctx(|| format!("remove {}", self.path.display()))
    }
}

impl Drop for Recorder<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.w = None;
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Reads the records of a time slice in (timestamp, id) order, opening files lazily.
pub struct Cursor<'a> {
    ts: &'a TimeSeries,
    from: u64,
    to: u64,
    /// Last key delivered.
    pos: Option<TsKey>,
    generation: u64,
    /// Files not opened yet, sorted by first key, descending (pop from the end).
    pending: Vec<TsFile>,
    /// Open files with their next record.
    open: Vec<(FileReader, Option<TsRecord>)>,
    reloads: u64,
}

impl Cursor<'_> {
    /// How many times the cursor reloaded changed metadata.
    pub fn reloads(&self) -> u64 {
        self.reloads
    }

    fn after_pos(&self, k: TsKey) -> bool {
        k.0 >= self.from && self.pos.map(|p| k > p).unwrap_or(true)
    }

    fn reload(&mut self) -> Result<()> {
        let m = self.ts.meta()?;
        self.generation = m.generation;
        self.open.clear();
        let mut files: Vec<TsFile> =
            m.files.into_iter().filter(|f| f.first.0 < self.to && f.last.0 >= self.from && self.pos.map(|p| f.last > p).unwrap_or(true)).collect();
        files.sort_by(|a, b| b.first.cmp(&a.first));
        self.pending = files;
        Ok(())
    }

    /// Opens the next pending file; Ok(false) when the metadata changed (caller reloads) or the
    /// file vanished.
    fn open_next(&mut self) -> Result<bool> {
        let Some(f) = self.pending.pop() else { return Ok(true) };
        let m = self.ts.meta()?;
        if m.generation != self.generation {
            self.reloads += 1;
            self.reload()?;
            return Ok(false);
        }
        let path = self.ts.dir.join("data").join(&f.name);
        let mut r = match FileReader::open(&path, true) {
            Ok(r) => r,
            Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                self.reloads += 1;
                self.reload()?;
                return Ok(false);
            }
            Err(e) => return Err(e),
        };
        let mut head = None;
        while let Some(rec) = r.next()? {
            if self.after_pos((rec.timestamp, rec.id)) {
                head = Some(rec);
                break;
            }
        }
        self.open.push((r, head));
        Ok(true)
    }

    /// The next record of the slice, or `Ok(None)` at its end.
    pub fn next_record(&mut self) -> Result<Option<TsRecord>> {
        loop {
            self.open.retain(|(_, h)| h.is_some());
            let min = self.open.iter().enumerate().filter_map(|(i, (_, h))| h.as_ref().map(|r| ((r.timestamp, r.id), i))).min();
            // A pending file whose first key is below the smallest head must be opened first.
            if let Some(p) = self.pending.last() {
                if min.map(|(k, _)| p.first <= k).unwrap_or(true) {
                    self.open_next()?;
                    continue;
                }
            }
            let Some((key, i)) = min else { return Ok(None) };
            if key.0 >= self.to {
                return Ok(None);
            }
            let rec = {
                let (r, h) = &mut self.open[i];
                let rec = h.take();
                *h = r.next()?;
                rec
            };
            if let Some(rec) = rec {
                if self.after_pos(key) {
                    self.pos = Some(key);
                    return Ok(Some(rec));
                }
            }
        }
    }
}

impl Iterator for Cursor<'_> {
    type Item = Result<TsRecord>;
    fn next(&mut self) -> Option<Self::Item> {
        self.next_record().transpose()
    }
}
