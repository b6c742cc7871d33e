//! tlog: a transaction-log appliance for block storage.
//!
//! Block servers stream every write of every vdisk to `tlogd` as Cap'n Proto frames; tlog
//! buffers them per vdisk, seals each aggregation (lz4, AES-256-GCM, Reed-Solomon k+m), writes
//! the shards to k+m backends with a hash chain, and plays any vdisk back to any point in time.
//! The data path reads top to bottom: [`net`] → [`session`] (via [`wire`]) → [`namespace`] →
//! [`flush`] → [`backend`]; [`replay`] reads [`backend`] and unseals with [`flush`].

#![deny(unsafe_code)]

pub mod error;
pub mod store;
pub mod net;

pub use error::{Error, Result};
