//! History as a tree (DESIGN.md §12, seed 003): forks, rebases, deletes, and the list of every
//! vdisk as a tree.
//!
//! A *fork* DST of SRC at a cut sequence C is made in O(1): no data is copied, only metadata
//! records are written to every backend (MAC'd like the index, see [`super::index`]):
//!
//! | record (vdisk) | name | body |
//! |---|---|---|
//! | fork (DST) | `fork` | version u8 (1), parent (u16 length + UTF-8), parent key (32: the parent's aggregation holding C), parent height u64, cut u64, cut timestamp u64, created u64 |
//! | child (SRC) | `k/<DST>` | version u8 (1), cut u64, created u64 |
//! | rebase (DST) | `rebase` | version u8 (1), onto (u16 + UTF-8), onto point u64, own from u64, rebases u64, checkpoint (u16 + UTF-8) |
//! | deleted (V) | `deleted` | version u8 (1), kept up to sequence u64, time u64, own kept u8 |
//!
//! DST's history is its path: the parent's (recursively) up to C, then its own aggregations,
//! whose sequences continue after C. A reader never sees a block the parent wrote after C, even
//! one in the same aggregation as C (the path's last parent entry is cut at C).
//!
//! A *rebase* of DST onto a newer point P of its parent appends to DST's own history the
//! parent's blocks after the point DST stood on, then DST's own writes since its fork (or since
//! its last rebase) again: DST's newest image is then the parent's image at P with DST's own
//! writes over it, in their order, and every earlier point of DST (the automatic checkpoint
//! `pre-rebase-N` names the one just before) stays restorable. The `rebase` record says which
//! of DST's sequences are its own writes for the next rebase.
//!
//! A *delete* removes a vdisk's aggregations, index, checkpoints, head and records; a vdisk with
//! forks keeps what its forks stand on (the aggregations up to the newest fork cut, its head
//! moved there under a newer epoch) and is marked deleted (not listed, not writable, not
//! restorable itself).

use super::index::IndexCodec;
use crate::backend::{Backend, Batch, Key, MetaWrite};
use crate::bytes::{put_str16, Reader};
use crate::error::{Error, Result};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Name of a vdisk's fork record.
pub const FORK: &str = "fork";
/// Name of a vdisk's rebase record.
pub const REBASE: &str = "rebase";
/// Name of a deleted vdisk's tombstone.
pub const DELETED: &str = "deleted";
/// Prefix of a vdisk's child records.
pub const CHILD_PREFIX: &str = "k/";

/// Deepest chain of forks a reader follows (a loop in damaged records ends there).
pub const MAX_DEPTH: usize = 64;

/// Where a fork stands on its parent.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Fork {
    /// The parent vdisk.
    pub parent: String,
    /// The parent's aggregation holding the cut.
    #[serde(serialize_with = "hex_key")]
    pub parent_key: Key,
    /// Its height on the parent's chain.
    pub parent_height: u64,
    /// The cut: the fork holds the parent's blocks up to this sequence.
    pub cut: u64,
    /// Timestamp of the block at the cut, ns.
    pub cut_timestamp: u64,
    /// When the fork was made, ns.
    pub created: u64,
}

fn hex_key<S: serde::Serializer>(k: &Key, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_str(&hex::encode(k))
}

/// A child as its parent lists it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Child {
    /// The child vdisk.
    pub vdisk: String,
    /// Its cut on the parent.
    pub cut: u64,
    /// When it was made, ns.
    pub created: u64,
}

/// What the last rebase of a fork left.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Rebase {
    /// The vdisk it was rebased onto (its parent).
    pub onto: String,
    /// The parent's sequence it stands on since.
    pub onto_point: u64,
    /// The fork's first sequence of its own writes since (what the next rebase replays).
    pub own_from: u64,
    /// Rebases so far.
    pub rebases: u64,
    /// The checkpoint naming the state before the last rebase.
    pub checkpoint: String,
}

/// A deleted vdisk kept for its forks.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Deleted {
    /// The last sequence kept (what the forks stand on).
    pub kept_up_to: u64,
    /// When it was deleted, ns.
    pub time: u64,
    /// Whether any of its own aggregations are kept (else its forks stand only on its own
    /// parent's history, through its fork record, and its head is not used).
    pub own_kept: bool,
}

fn corrupt(what: &str, vdisk: &str) -> Error {
    Error::Corrupt { location: format!("{what} record of vdisk {vdisk}"), detail: "unknown version or wrong length".into() }
}

impl IndexCodec {
    /// A fork record of `vdisk`.
    pub fn encode_fork(&self, vdisk: &str, f: &Fork) -> Vec<u8> {
        let mut b = vec![1];
        put_str16(&mut b, &f.parent);
        b.extend_from_slice(&f.parent_key);
        for v in [f.parent_height, f.cut, f.cut_timestamp, f.created] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        self.sign_record(vdisk, b)
    }

    /// Decodes a fork record. Errors: [`Error::Corrupt`].
    pub fn decode_fork(&self, vdisk: &str, b: &[u8]) -> Result<Fork> {
        let mut r = Reader::new(self.verify_record(vdisk, b, "fork")?);
        let f = (|| {
            if r.u8()? != 1 {
                return None;
            }
            let parent = r.str16()?.to_string();
            let parent_key = r.array::<32>()?;
            let f = Fork { parent, parent_key, parent_height: r.u64()?, cut: r.u64()?, cut_timestamp: r.u64()?, created: r.u64()? };
            (r.remaining() == 0).then_some(f)
        })();
        f.ok_or_else(|| corrupt("fork", vdisk))
    }

    /// A child record (of the parent `vdisk`).
    pub fn encode_child(&self, vdisk: &str, c: &Child) -> Vec<u8> {
        let mut b = vec![1];
        b.extend_from_slice(&c.cut.to_le_bytes());
        b.extend_from_slice(&c.created.to_le_bytes());
        put_str16(&mut b, &c.vdisk);
        self.sign_record(vdisk, b)
    }

    /// Decodes a child record. Errors: [`Error::Corrupt`].
    pub fn decode_child(&self, vdisk: &str, b: &[u8]) -> Result<Child> {
        let mut r = Reader::new(self.verify_record(vdisk, b, "child")?);
        let c = (|| {
            if r.u8()? != 1 {
                return None;
            }
            let (cut, created) = (r.u64()?, r.u64()?);
            let c = Child { cut, created, vdisk: r.str16()?.to_string() };
            (r.remaining() == 0).then_some(c)
        })();
        c.ok_or_else(|| corrupt("child", vdisk))
    }

    /// A rebase record of `vdisk`.
    pub fn encode_rebase(&self, vdisk: &str, x: &Rebase) -> Vec<u8> {
        let mut b = vec![1];
        put_str16(&mut b, &x.onto);
        for v in [x.onto_point, x.own_from, x.rebases] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        put_str16(&mut b, &x.checkpoint);
        self.sign_record(vdisk, b)
    }

    /// Decodes a rebase record. Errors: [`Error::Corrupt`].
    pub fn decode_rebase(&self, vdisk: &str, b: &[u8]) -> Result<Rebase> {
        let mut r = Reader::new(self.verify_record(vdisk, b, "rebase")?);
        let x = (|| {
            if r.u8()? != 1 {
                return None;
            }
            let onto = r.str16()?.to_string();
            let (onto_point, own_from, rebases) = (r.u64()?, r.u64()?, r.u64()?);
            let x = Rebase { onto, onto_point, own_from, rebases, checkpoint: r.str16()?.to_string() };
            (r.remaining() == 0).then_some(x)
        })();
        x.ok_or_else(|| corrupt("rebase", vdisk))
    }

    /// A tombstone of `vdisk`.
    pub fn encode_deleted(&self, vdisk: &str, d: &Deleted) -> Vec<u8> {
        let mut b = vec![1];
        b.extend_from_slice(&d.kept_up_to.to_le_bytes());
        b.extend_from_slice(&d.time.to_le_bytes());
        b.push(d.own_kept as u8);
        self.sign_record(vdisk, b)
    }

    /// Decodes a tombstone. Errors: [`Error::Corrupt`].
    pub fn decode_deleted(&self, vdisk: &str, b: &[u8]) -> Result<Deleted> {
        let mut r = Reader::new(self.verify_record(vdisk, b, "deleted")?);
        let d = (|| {
            if r.u8()? != 1 {
                return None;
            }
            let d = Deleted { kept_up_to: r.u64()?, time: r.u64()?, own_kept: r.u8()? == 1 };
            (r.remaining() == 0).then_some(d)
        })();
        d.ok_or_else(|| corrupt("deleted", vdisk))
    }
}

/// The first valid record `name` of `vdisk` any reachable backend holds, decoded by `decode`.
/// Errors: only when every backend holding one holds a bad one.
fn first_record<T>(backends: &[Arc<dyn Backend>], vdisk: &str, name: &str, decode: impl Fn(&[u8]) -> Result<T>) -> Result<Option<T>> {
    let mut last_err = None;
    for b in backends {
        match b.get_meta(vdisk, name) {
            Ok(Some(v)) => match decode(&v) {
                Ok(x) => return Ok(Some(x)),
                Err(e) => {
                    tracing::warn!(vdisk, "{}: {name} record skipped: {e}", b.name());
                    last_err = Some(e);
                }
            },
            Ok(None) => {}
            Err(e) => tracing::debug!(vdisk, "{}: {name}: {e}", b.name()),
        }
    }
    match last_err {
        Some(e) => Err(e),
        None => Ok(None),
    }
}

/// The fork record of `vdisk`, if it is a fork.
pub fn fork_of(backends: &[Arc<dyn Backend>], codec: &IndexCodec, vdisk: &str) -> Result<Option<Fork>> {
    first_record(backends, vdisk, FORK, |b| codec.decode_fork(vdisk, b))
}

/// The rebase record of `vdisk`, if it was rebased.
pub fn rebase_of(backends: &[Arc<dyn Backend>], codec: &IndexCodec, vdisk: &str) -> Result<Option<Rebase>> {
    // The newest: the one with the most rebases.
    let mut best: Option<Rebase> = None;
    for b in backends {
        if let Ok(Some(v)) = b.get_meta(vdisk, REBASE) {
            match codec.decode_rebase(vdisk, &v) {
                Ok(x) if best.as_ref().map(|b| x.rebases > b.rebases).unwrap_or(true) => best = Some(x),
                Ok(_) => {}
                Err(e) => tracing::warn!(vdisk, "{}: rebase record skipped: {e}", b.name()),
            }
        }
    }
    Ok(best)
}

/// The tombstone of `vdisk`, if it was deleted (and kept for its forks).
pub fn deleted(backends: &[Arc<dyn Backend>], codec: &IndexCodec, vdisk: &str) -> Result<Option<Deleted>> {
    first_record(backends, vdisk, DELETED, |b| codec.decode_deleted(vdisk, b))
}

/// The children of `vdisk` any reachable backend lists, by name.
pub fn children(backends: &[Arc<dyn Backend>], codec: &IndexCodec, vdisk: &str) -> BTreeMap<String, Child> {
    let mut out = BTreeMap::new();
    for b in backends {
        match b.list_meta(vdisk, CHILD_PREFIX) {
            Ok(v) => {
                for (_, bytes) in v {
                    match codec.decode_child(vdisk, &bytes) {
                        Ok(c) => {
                            out.insert(c.vdisk.clone(), c);
                        }
                        Err(e) => tracing::warn!(vdisk, "{}: child record skipped: {e}", b.name()),
                    }
                }
            }
            Err(e) => tracing::debug!(vdisk, "{}: children: {e}", b.name()),
        }
    }
    out
}

/// Writes `batch` (built for `vdisk`) to every backend at once; returns how many stored it.
pub fn write_all(backends: &[Arc<dyn Backend>], what: &str, batch: &Batch<'_>) -> usize {
    std::thread::scope(|s| {
        let hs: Vec<_> = backends.iter().map(|b| s.spawn(|| b.write(batch))).collect();
        let mut stored = 0;
        for (h, b) in hs.into_iter().zip(backends) {
            match h.join() {
                Ok(Ok(())) => stored += 1,
                Ok(Err(e)) => tracing::warn!("{}: {what} not stored: {e}", b.name()),
                Err(_) => tracing::warn!("{}: {what} not stored: writer panicked", b.name()),
            }
        }
        stored
    })
}

/// Records the fork `child` of `f.parent`: the fork record on the child, the child record on
/// the parent, in one batch per backend. Returns how many backends stored both.
pub fn store_fork(backends: &[Arc<dyn Backend>], codec: &IndexCodec, child: &str, f: &Fork) -> usize {
    let fork = codec.encode_fork(child, f);
    let kid = codec.encode_child(&f.parent, &Child { vdisk: child.to_string(), cut: f.cut, created: f.created });
    let kid_name = format!("{CHILD_PREFIX}{child}");
    let batch = Batch {
        metas: vec![MetaWrite { vdisk: child, name: FORK, value: Some(&fork) }, MetaWrite { vdisk: &f.parent, name: &kid_name, value: Some(&kid) }],
        ..Default::default()
    };
    write_all(backends, &format!("fork record of {child}"), &batch)
}

/// One vdisk in the tree (`tlog history --tree`).
#[derive(Clone, Debug, serde::Serialize)]
pub struct TreeNode {
    /// The vdisk.
    pub vdisk: String,
    /// Its parent and cut, for a fork.
    pub parent: Option<(String, u64)>,
    /// Deleted, kept for its forks.
    pub deleted: bool,
    /// Its children, by name.
    pub children: Vec<TreeNode>,
}

/// Every vdisk the backends know, as a forest: vdisks with a head record, and forks (found
/// through their parents' child records), roots first by name. Errors: none of the backends
/// answers.
pub fn tree(backends: &[Arc<dyn Backend>], codec: &IndexCodec) -> Result<Vec<TreeNode>> {
    let mut names = std::collections::BTreeSet::new();
    let mut answered = false;
    let mut last_err = None;
    for b in backends {
        match b.vdisks() {
            Ok(v) => {
                answered = true;
                names.extend(v);
            }
            Err(e) => last_err = Some(e),
        }
    }
    if !answered {
        return Err(last_err.unwrap_or_else(|| Error::NotFound("no backend".into())));
    }
    // Forks that have no block of their own yet have no head: found through their parents.
    let mut parent_of: BTreeMap<String, (String, u64)> = BTreeMap::new();
    let mut kids: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut todo: Vec<String> = names.iter().cloned().collect();
    let mut seen = std::collections::BTreeSet::new();
    while let Some(v) = todo.pop() {
        if !seen.insert(v.clone()) || seen.len() > 1_000_000 {
            continue;
        }
        for (c, child) in children(backends, codec, &v) {
            parent_of.insert(c.clone(), (v.clone(), child.cut));
            kids.entry(v.clone()).or_default().push(c.clone());
            names.insert(c.clone());
            todo.push(c);
        }
    }
    fn node(
        v: &str,
        backends: &[Arc<dyn Backend>],
        codec: &IndexCodec,
        parent_of: &BTreeMap<String, (String, u64)>,
        kids: &BTreeMap<String, Vec<String>>,
        depth: usize,
    ) -> TreeNode {
        let children = if depth < MAX_DEPTH {
            kids.get(v).map(|k| k.iter().map(|c| node(c, backends, codec, parent_of, kids, depth + 1)).collect()).unwrap_or_default()
        } else {
            Vec::new()
        };
        TreeNode { vdisk: v.to_string(), parent: parent_of.get(v).cloned(), deleted: deleted(backends, codec, v).ok().flatten().is_some(), children }
    }
    Ok(names.iter().filter(|v| !parent_of.contains_key(*v)).map(|v| node(v, backends, codec, &parent_of, &kids, 0)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seal::SealKey;

    #[test]
    fn records_round_trip_and_are_bound_to_their_vdisk() {
        let c = IndexCodec::new(&SealKey::from_bytes([3; 32]));
        let f = Fork { parent: "src".into(), parent_key: [9; 32], parent_height: 4, cut: 77, cut_timestamp: 5, created: 6 };
        let b = c.encode_fork("dst", &f);
        assert_eq!(c.decode_fork("dst", &b).unwrap(), f);
        assert!(c.decode_fork("other", &b).is_err(), "a record of another vdisk fails its MAC");
        let k = Child { vdisk: "dst".into(), cut: 77, created: 6 };
        assert_eq!(c.decode_child("src", &c.encode_child("src", &k)).unwrap(), k);
        let r = Rebase { onto: "src".into(), onto_point: 90, own_from: 120, rebases: 2, checkpoint: "pre-rebase-2".into() };
        assert_eq!(c.decode_rebase("dst", &c.encode_rebase("dst", &r)).unwrap(), r);
        let d = Deleted { kept_up_to: 5, time: 1, own_kept: true };
        assert_eq!(c.decode_deleted("v", &c.encode_deleted("v", &d)).unwrap(), d);
        let mut bad = c.encode_deleted("v", &d);
        bad[2] ^= 1;
        assert!(c.decode_deleted("v", &bad).is_err());
    }
}
