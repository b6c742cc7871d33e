//! The embedded store: BigLog segments ([`biglog`], [`readers`]) and the time-series layer
//! ([`timeseries`]). See DESIGN.md §8.

pub mod biglog;
pub mod format;
pub mod mmap;
pub mod readers;
pub mod timeseries;

pub use biglog::{now_ns, BigLog, BigLogOptions, EntryInfo, SegmentSummary};
pub use readers::{verify, DataReader, IndexReader, Record, Scanner, Streamer};
pub use timeseries::{Cursor, Recorder, TimeSeries, TimeSeriesOptions, TsRecord};
