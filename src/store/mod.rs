//! The embedded store: BigLog segments ([`biglog`], [`readers`]) and the time-series layer
//! ([`timeseries`]). See DESIGN.md §8.

pub mod biglog;
pub mod format;
pub mod readers;
pub mod timeseries;

pub use biglog::{BigLog, BigLogOptions, Damage, EntryInfo, SegmentSummary};
pub use readers::{verify, DataReader, IndexReader, Record, Scanner, Streamer};
pub use timeseries::{Cursor, Recorder, TimeSeries, TimeSeriesOptions, TsRecord};
