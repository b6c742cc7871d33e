//! Changed blocks between two points (what an incremental backup needs): the byte extents
//! written or zeroed by the blocks after one point up to another, merged and sorted, each with
//! the kind of the last operation that touched it.

use super::points::Point;
use super::History;
use crate::error::{Error, Result};
use crate::wire::{Block, Operation, SECTOR};
use std::collections::BTreeMap;

/// What last happened to an extent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Data was written.
    Write,
    /// It was zeroed (write_zeroes, trim).
    Zero,
}

/// A byte extent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Extent {
    /// Start, bytes.
    pub offset: u64,
    /// Length, bytes.
    pub length: u64,
    /// What last happened to it.
    pub kind: Kind,
}

/// Extents as blocks touch them, later blocks over earlier ones.
#[derive(Clone, Debug, Default)]
pub struct Extents {
    /// start -> (end, kind), non-overlapping.
    map: BTreeMap<u64, (u64, Kind)>,
}

impl Extents {
    /// Records `[start, end)` as `kind`, over whatever was there.
    pub fn insert(&mut self, start: u64, end: u64, kind: Kind) {
        if end <= start {
            return;
        }
        // Cut what overlaps: keep the parts outside [start, end).
        let over: Vec<(u64, u64, Kind)> = self.map.range(..end).rev().take_while(|(_, (e, _))| *e > start).map(|(s, (e, k))| (*s, *e, *k)).collect();
        for (s, e, k) in over {
            self.map.remove(&s);
            if s < start {
                self.map.insert(s, (start, k));
            }
            if e > end {
                self.map.insert(end, (e, k));
            }
        }
        self.map.insert(start, (end, kind));
    }

    /// Records a block (its byte range and operation). Errors: a range past 2^64.
    pub fn block(&mut self, b: &Block) -> Result<()> {
        let start = b.lba.checked_mul(SECTOR).ok_or_else(|| Error::InvalidArgument(format!("block {}: lba {} overflows", b.sequence, b.lba)))?;
        let end = start.checked_add(b.size).ok_or_else(|| Error::InvalidArgument(format!("block {}: size overflows", b.sequence)))?;
        let kind = if Operation::from_ordinal(b.operation) == Some(Operation::WriteZeroes) { Kind::Zero } else { Kind::Write };
        self.insert(start, end, kind);
        Ok(())
    }

    /// The parts of `[start, end)` recorded, sorted: `(start, end)` byte ranges.
    pub fn within(&self, start: u64, end: u64) -> Vec<(u64, u64)> {
        let first = self.map.range(..=start).next_back().filter(|(_, (e, _))| *e > start).map(|(s, _)| *s).unwrap_or(start);
        self.map.range(first..end).map(|(&s, &(e, _))| (s.max(start), e.min(end))).filter(|(s, e)| s < e).collect()
    }

    /// The extents, sorted, adjacent ones of one kind merged.
    pub fn list(&self) -> Vec<Extent> {
        let mut out: Vec<Extent> = Vec::new();
        for (&s, &(e, k)) in &self.map {
            match out.last_mut() {
                Some(l) if l.kind == k && l.offset + l.length == s => l.length += e - s,
                _ => out.push(Extent { offset: s, length: e - s, kind: k }),
            }
        }
        out
    }
}

/// The extents changed in `h` after `from` (`None`: the start) up to `to` (`None`: the head).
pub fn changed(h: &History, from: Option<&Point>, to: Option<&Point>) -> Result<Extents> {
    let f = match from {
        Some(p) => h.resolve(p)?,
        None => None,
    };
    let t = match to {
        Some(p) => h.resolve(p)?,
        None => h.index.sequences().map(|(_, l)| l),
    };
    let mut x = Extents::default();
    let Some(t) = t else { return Ok(x) };
    let start = f.map(|f| h.index.entries.partition_point(|e| e.last_sequence <= f)).unwrap_or(0);
    let end = h.index.entries.partition_point(|e| e.first_sequence <= t);
    for i in start..end {
        for b in h.aggregation(i)?.blocks {
            if f.map(|f| b.sequence > f).unwrap_or(true) && b.sequence <= t {
                x.block(&b)?;
            }
        }
    }
    Ok(x)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn later_operations_win_and_neighbours_merge() {
        let mut x = Extents::default();
        x.insert(0, 100, Kind::Write);
        x.insert(50, 150, Kind::Zero);
        x.insert(150, 200, Kind::Zero);
        x.insert(300, 400, Kind::Write);
        x.insert(320, 330, Kind::Write);
        assert_eq!(
            x.list(),
            vec![
                Extent { offset: 0, length: 50, kind: Kind::Write },
                Extent { offset: 50, length: 150, kind: Kind::Zero },
                Extent { offset: 300, length: 100, kind: Kind::Write },
            ]
        );
        assert_eq!(x.within(40, 310), vec![(40, 50), (50, 150), (150, 200), (300, 310)]);
        assert_eq!(x.within(200, 300), vec![]);
        x.insert(0, 1000, Kind::Zero);
        assert_eq!(x.list(), vec![Extent { offset: 0, length: 1000, kind: Kind::Zero }]);
    }
}
