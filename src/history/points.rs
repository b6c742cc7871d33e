//! Points in a vdisk's history (DESIGN.md §12): a sequence, a time, or a checkpoint. The image
//! at a point is always a sequence prefix, so it is crash-consistent.
//!
//! A time T names the longest prefix whose blocks are all stamped at or before T. Blocks are
//! stamped by the client (the block server, at write time); tlogd makes the stamps of a vdisk
//! never go back (a block stamped before the one before it, e.g. after the client's clock
//! stepped back, is stamped with that earlier block's time), so "all blocks at or before T" is a
//! prefix found by binary search on the index, then within one aggregation.

use super::{checkpoint, History};
use crate::error::{Error, Result};
use crate::time::{format_time, now_ns, parse_time};

/// A point in a vdisk's history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Point {
    /// After the block with this sequence.
    Sequence(u64),
    /// After the last block stamped at or before this time (ns since the Unix epoch).
    Time(u64),
    /// At this checkpoint.
    Checkpoint(String),
}

impl Point {
    /// From the command-line forms (`--to-sequence`, `--to-time`, `--checkpoint`; at most one
    /// given). Errors name a malformed time and both accepted forms.
    pub fn from_args(sequence: Option<u64>, time: Option<&str>, checkpoint: Option<&str>) -> Result<Option<Point>> {
        let given = [sequence.is_some(), time.is_some(), checkpoint.is_some()].iter().filter(|x| **x).count();
        if given > 1 {
            return Err(Error::InvalidArgument("give one point: a sequence, a time or a checkpoint".into()));
        }
        Ok(match (sequence, time, checkpoint) {
            (Some(s), _, _) => Some(Point::Sequence(s)),
            (_, Some(t), _) => Some(Point::Time(parse_time(t).map_err(Error::InvalidArgument)?)),
            (_, _, Some(c)) => Some(Point::Checkpoint(c.to_string())),
            _ => None,
        })
    }
}

impl std::fmt::Display for Point {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Point::Sequence(s) => write!(f, "sequence {s}"),
            Point::Time(t) => write!(f, "time {}", format_time(*t)),
            Point::Checkpoint(c) => write!(f, "checkpoint {c:?}"),
        }
    }
}

/// How far clocks may disagree before a time counts as in the future (a client's clock may be
/// a little ahead of the server's).
const FUTURE_SLACK_NS: u64 = 60_000_000_000;

impl History {
    fn range_text(&self) -> String {
        match (self.sequences(), self.times()) {
            (Some((a, b)), Some((t0, t1))) => format!("sequences {a}..{b}, blocks stamped {} .. {}", format_time(t0), format_time(t1)),
            _ => "no block".into(),
        }
    }

    fn before_text(&self, point: &Point) -> String {
        match self.floor {
            Some((seq, ts)) => format!(
                "{point} is older than the history of vdisk {} keeps (older history was folded by retention): the oldest restorable point is sequence {} ({}); it holds {}",
                self.vdisk,
                seq,
                format_time(ts),
                self.range_text()
            ),
            None => format!("{point} is before the history of vdisk {}, which holds {}", self.vdisk, self.range_text()),
        }
    }

    /// The last sequence at `point` (`None`: no block, the empty prefix, e.g. a checkpoint taken
    /// before the first flush).
    ///
    /// Errors: a point before the history's first block, after its head, in the future, or an
    /// unknown checkpoint; each message says which range exists or which checkpoints do.
    pub fn resolve(&self, point: &Point) -> Result<Option<u64>> {
        let Some((first, last)) = self.sequences() else {
            return match point {
                Point::Checkpoint(name) => checkpoint::find(self, name).map(|c| c.sequence),
                p => Err(Error::InvalidArgument(format!("{p}: vdisk {} has no block yet", self.vdisk))),
            };
        };
        match point {
            Point::Sequence(s) if *s < first => Err(Error::InvalidArgument(self.before_text(point))),
            Point::Sequence(s) if *s > last => {
                Err(Error::InvalidArgument(format!("{point} is after the head of vdisk {}, which holds {}", self.vdisk, self.range_text())))
            }
            Point::Sequence(s) => Ok(Some(*s)),
            Point::Time(t) => {
                let (t0, t1) = self.times().unwrap_or((0, 0));
                if *t < t0 {
                    return Err(Error::InvalidArgument(self.before_text(point)));
                }
                if *t >= t1 {
                    if *t > now_ns().saturating_add(FUTURE_SLACK_NS) {
                        return Err(Error::InvalidArgument(format!(
                            "{point} is in the future (after the head of vdisk {}, which holds {})",
                            self.vdisk,
                            self.range_text()
                        )));
                    }
                    return Ok(Some(last));
                }
                let i = self.index.first_after_time(*t);
                let e = &self.index.entries[i];
                if e.first_timestamp > *t {
                    // The cut falls between two aggregations.
                    return Ok(Some(self.index.entries[i - 1].last_sequence));
                }
                let agg = self.aggregation(i)?;
                let b = agg.blocks.iter().take_while(|b| b.timestamp <= *t).last();
                Ok(b.map(|b| b.sequence).or_else(|| i.checked_sub(1).map(|j| self.index.entries[j].last_sequence)))
            }
            Point::Checkpoint(name) => {
                let c = checkpoint::find(self, name)?;
                match c.sequence {
                    Some(s) if s < first => Err(Error::InvalidArgument(format!(
                        "{point} (sequence {s}) is older than the history of vdisk {} keeps: the oldest restorable point is sequence {first} ({})",
                        self.vdisk,
                        self.range_text()
                    ))),
                    None if first > 1 && self.base.is_some() => Err(Error::InvalidArgument(format!(
                        "{point} (before the first block) is older than the history of vdisk {} keeps: the oldest restorable point is sequence {first}",
                        self.vdisk
                    ))),
                    s => Ok(s),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn points_from_arguments() {
        assert_eq!(Point::from_args(Some(5), None, None).unwrap(), Some(Point::Sequence(5)));
        assert_eq!(Point::from_args(None, Some("1000"), None).unwrap(), Some(Point::Time(1000)));
        assert_eq!(Point::from_args(None, None, Some("before")).unwrap(), Some(Point::Checkpoint("before".into())));
        assert_eq!(Point::from_args(None, None, None).unwrap(), None);
        assert!(Point::from_args(Some(1), Some("5"), None).unwrap_err().to_string().contains("one point"));
        assert!(Point::from_args(None, Some("noon"), None).unwrap_err().to_string().contains("RFC 3339"));
    }
}
