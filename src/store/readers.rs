//! Readers over a [`BigLog`]: index reader, data reader, scanner and streamer.
//!
//! All start at any offset (an embedded offset starts at its entry; the records before it in
//! that entry are skipped by the scanner and data reader) and move across segments
//! transparently. Every entry's data is checked against its CRC before it is returned; a
//! corrupt entry is reported as [`Error::Corrupt`] and the reader moves past it.

use super::biglog::{BigLog, EntryInfo};
use crate::error::{Error, Result};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One record: its offset, timestamp (ns) and bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// The record's offset.
    pub offset: u64,
    /// Nanoseconds since the Unix epoch (shared by the records of one `write_n`).
    pub timestamp: u64,
    /// The bytes written.
    pub data: Vec<u8>,
}

/// Yields index entries ([`EntryInfo`]) from a start offset, without reading data.
pub struct IndexReader<'a> {
    log: &'a BigLog,
    next: u64,
}

impl<'a> IndexReader<'a> {
    /// Starts at the entry holding `offset` (or the first offset if it was trimmed).
    pub fn new(log: &'a BigLog, offset: u64) -> Result<Self> {
        Ok(IndexReader { log, next: offset.max(log.first_offset()?) })
    }
}

impl Iterator for IndexReader<'_> {
    type Item = Result<EntryInfo>;
    fn next(&mut self) -> Option<Self::Item> {
        match self.log.entry_info(self.next) {
            Ok(Some(i)) => {
                self.next = i.offset + i.count.max(1);
                Some(Ok(i))
            }
            Ok(None) => None,
            Err(e) => {
                self.next = self.log.resume_after(self.next).unwrap_or(u64::MAX);
                Some(Err(e))
            }
        }
    }
}

/// Shared position logic of [`Scanner`] and [`Streamer`].
struct Position {
    next: u64,
    pending: VecDeque<Record>,
}

impl Position {
    /// Fills `pending` from the entry at `next`; Ok(false) at the end of the log.
    fn fill(&mut self, log: &BigLog) -> Result<bool> {
        let first = log.first_offset()?;
        if self.next < first {
            self.next = first;
        }
        let info = match log.entry_info(self.next) {
            Ok(Some(i)) => i,
            Ok(None) => return Ok(false),
            Err(e) => {
                self.next = log.resume_after(self.next)?;
                return Err(e);
            }
        };
        let start = self.next;
        self.next = info.offset + info.count.max(1);
        let recs = log.read_entry(&info)?;
        for (i, data) in recs.into_iter().enumerate() {
            let offset = info.offset + i as u64;
            if offset >= start {
                self.pending.push_back(Record { offset, timestamp: info.timestamp, data });
            }
        }
        Ok(true)
    }

    fn next(&mut self, log: &BigLog) -> Option<Result<Record>> {
        loop {
            if let Some(r) = self.pending.pop_front() {
                return Some(Ok(r));
            }
            match self.fill(log) {
                Ok(true) => continue,
                Ok(false) => return None,
                Err(e) => return Some(Err(e)),
            }
        }
    }
}

/// Yields records (offset, timestamp, bytes) from a start offset to the current end.
pub struct Scanner<'a> {
    log: &'a BigLog,
    pos: Position,
}

impl<'a> Scanner<'a> {
    /// Starts at `offset`.
    pub fn new(log: &'a BigLog, offset: u64) -> Self {
        Scanner { log, pos: Position { next: offset, pending: VecDeque::new() } }
    }

    /// Starts at the first record whose timestamp is >= `ts` (ns).
    pub fn from_time(log: &'a BigLog, ts: u64) -> Result<Self> {
        Ok(Self::new(log, log.seek_time(ts)?))
    }
}

impl Iterator for Scanner<'_> {
    type Item = Result<Record>;
    fn next(&mut self) -> Option<Self::Item> {
        self.pos.next(self.log)
    }
}

/// Follows the log as it grows (like `tail -f`): at the end it waits for new writes.
pub struct Streamer {
    log: Arc<BigLog>,
    pos: Position,
}

impl Streamer {
    /// Starts at `offset`.
    pub fn new(log: Arc<BigLog>, offset: u64) -> Self {
        Streamer { log, pos: Position { next: offset, pending: VecDeque::new() } }
    }

    /// The next record, waiting at most `timeout` for one to be written.
    /// `Ok(None)` when nothing arrived in time.
    pub fn next_timeout(&mut self, timeout: Duration) -> Result<Option<Record>> {
        let deadline = Instant::now() + timeout;
        loop {
            let gen = self.log.generation();
            match self.pos.next(&self.log) {
                Some(r) => return r.map(Some),
                None => {
                    let now = Instant::now();
                    if now >= deadline {
                        return Ok(None);
                    }
                    self.log.wait_for_write(gen, deadline - now);
                }
            }
        }
    }
}

/// `std::io::Read` over the bytes of consecutive records from a start offset (their payloads
/// concatenated, without framing). A corrupt entry ends the read with an `InvalidData` error
/// naming the segment and offset.
pub struct DataReader<'a> {
    scanner: Scanner<'a>,
    buf: Vec<u8>,
    at: usize,
}

impl<'a> DataReader<'a> {
    /// Starts at `offset`.
    pub fn new(log: &'a BigLog, offset: u64) -> Self {
        DataReader { scanner: Scanner::new(log, offset), buf: Vec::new(), at: 0 }
    }
}

impl std::io::Read for DataReader<'_> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.at >= self.buf.len() {
            match self.scanner.next() {
                None => return Ok(0),
                Some(Ok(r)) => {
                    self.buf = r.data;
                    self.at = 0;
                }
                Some(Err(e)) => return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string())),
            }
        }
        let n = out.len().min(self.buf.len() - self.at);
        out[..n].copy_from_slice(&self.buf[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

/// Checks every entry of the log; returns the problems found, each naming segment and offset.
pub fn verify(log: &BigLog) -> Result<Vec<Error>> {
    let mut problems = Vec::new();
    for s in log.segments()? {
        if let Some(d) = s.damage {
            problems.push(Error::Corrupt { location: format!("segment {:020} offset {}", s.base, d.offset), detail: d.detail });
        }
    }
    let first = log.first_offset()?;
    for item in IndexReader::new(log, first)? {
        match item {
            Ok(info) => {
                if let Err(e) = log.read_entry(&info) {
                    problems.push(e);
                }
            }
            Err(e) => problems.push(e),
        }
    }
    Ok(problems)
}
