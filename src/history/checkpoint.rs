//! Checkpoints (DESIGN.md §12): a durable, named mark at a vdisk's last flushed sequence,
//! stored on every backend as the metadata record `c/<name>`: version u8 (1), has-blocks u8,
//! sequence u64, time taken u64 (ns), epoch u64, then the index MAC (see [`super::index`]).
//! A checkpoint taken before the vdisk's first flush marks the empty prefix.

use super::index::IndexCodec;
use super::History;
use crate::backend::{Backend, Batch, MetaWrite};
use crate::bytes::Reader;
use crate::error::{Error, Result};
use std::collections::BTreeMap;
use std::sync::Arc;

/// A checkpoint.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Checkpoint {
    /// Its name.
    pub name: String,
    /// The last sequence it covers (`None`: before the first block).
    pub sequence: Option<u64>,
    /// When it was taken, ns since the Unix epoch.
    pub time: u64,
    /// The writer epoch then.
    pub epoch: u64,
}

/// Checks a checkpoint name: 1..=64 bytes of `[A-Za-z0-9._-]`.
pub fn valid_name(n: &str) -> bool {
    !n.is_empty() && n.len() <= 64 && n.bytes().all(|c| c.is_ascii_alphanumeric() || b"._-".contains(&c))
}

/// The metadata record name of checkpoint `name`.
pub fn record_name(name: &str) -> String {
    format!("c/{name}")
}

impl IndexCodec {
    /// A checkpoint record of `vdisk`.
    pub fn encode_checkpoint(&self, vdisk: &str, c: &Checkpoint) -> Vec<u8> {
        let mut b = vec![1, c.sequence.is_some() as u8];
        for v in [c.sequence.unwrap_or(0), c.time, c.epoch] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        self.sign_record(vdisk, b)
    }

    /// Decodes a checkpoint record named `name`. Errors: [`Error::Corrupt`].
    pub fn decode_checkpoint(&self, vdisk: &str, name: &str, b: &[u8]) -> Result<Checkpoint> {
        let body = self.verify_record(vdisk, b, "checkpoint")?;
        let mut r = Reader::new(body);
        match (r.u8(), r.u8(), r.u64(), r.u64(), r.u64()) {
            (Some(1), Some(has), Some(s), Some(t), Some(e)) if r.remaining() == 0 => {
                Ok(Checkpoint { name: name.into(), sequence: (has == 1).then_some(s), time: t, epoch: e })
            }
            _ => Err(Error::Corrupt { location: format!("checkpoint {name} of vdisk {vdisk}"), detail: "unknown version or wrong length".into() }),
        }
    }
}

/// Every checkpoint of `vdisk` that any reachable backend holds, by name.
pub fn list(backends: &[Arc<dyn Backend>], codec: &IndexCodec, vdisk: &str) -> BTreeMap<String, Checkpoint> {
    let mut out = BTreeMap::new();
    for b in backends {
        match b.list_meta(vdisk, "c/") {
            Ok(v) => {
                for (n, bytes) in v {
                    let name = n.trim_start_matches("c/");
                    match codec.decode_checkpoint(vdisk, name, &bytes) {
                        Ok(c) => {
                            out.insert(name.to_string(), c);
                        }
                        Err(e) => tracing::warn!(vdisk, "{}: checkpoint {name} skipped: {e}", b.name()),
                    }
                }
            }
            Err(e) => tracing::debug!(vdisk, "{}: checkpoints: {e}", b.name()),
        }
    }
    out
}

/// The checkpoint `name` of the history. Errors: unknown (the message lists the names).
pub fn find(h: &History, name: &str) -> Result<Checkpoint> {
    let all = list(&h.backends, &h.codec, &h.vdisk);
    all.get(name).cloned().ok_or_else(|| {
        let names: Vec<&str> = all.keys().map(String::as_str).collect();
        Error::InvalidArgument(format!(
            "vdisk {} has no checkpoint {name:?}; its checkpoints: {}",
            h.vdisk,
            if names.is_empty() { "none".to_string() } else { names.join(", ") }
        ))
    })
}

/// Writes checkpoint `c` of `vdisk` to every backend; returns how many stored it.
pub fn store(backends: &[Arc<dyn Backend>], codec: &IndexCodec, vdisk: &str, c: &Checkpoint) -> usize {
    let rec = codec.encode_checkpoint(vdisk, c);
    let name = record_name(&c.name);
    let batch = Batch { metas: vec![MetaWrite { vdisk, name: &name, value: Some(&rec) }], ..Default::default() };
    std::thread::scope(|s| {
        let hs: Vec<_> = backends.iter().map(|b| s.spawn(|| b.write(&batch))).collect();
        let mut stored = 0;
        for (h, b) in hs.into_iter().zip(backends) {
            match h.join() {
                Ok(Ok(())) => stored += 1,
                Ok(Err(e)) => tracing::warn!(vdisk, "{}: checkpoint {} not stored: {e}", b.name(), c.name),
                Err(_) => tracing::warn!(vdisk, "{}: checkpoint {} not stored: writer panicked", b.name(), c.name),
            }
        }
        stored
    })
}
