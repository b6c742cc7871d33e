//! Store benchmarks (criterion): append throughput for 64 KiB, 256 KiB and 1 MiB entries with
//! one `sync()` per entry and per batch of 16, beside the raw sequential write (std::fs +
//! fsync) of the same bytes on the same disk; scan throughput beside a raw sequential read;
//! seek-by-time latency on 1M entries.
//!
//! Run: `cargo bench --bench store` (TLOG_BENCH_DIR picks the disk; default: a temp dir
//! under target/). Ratios are computed from the same run: store / raw.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::io::{Read, Write};
use std::time::{Duration, Instant};
use tlog::store::{BigLog, BigLogOptions, Scanner};

fn bench_dir() -> tempfile::TempDir {
    let base = std::env::var("TLOG_BENCH_DIR").unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/target").to_string());
    std::fs::create_dir_all(&base).ok();
    tempfile::tempdir_in(base).expect("bench dir")
}

fn full_run() -> bool {
    std::env::args().any(|a| a == "--bench")
}

const MAX_BYTES: u64 = 512 << 20;

fn appends(c: &mut Criterion) {
    let mut g = c.benchmark_group("append");
    g.sample_size(10).measurement_time(Duration::from_secs(if full_run() { 4 } else { 1 }));
    for &size in &[64usize << 10, 256 << 10, 1 << 20] {
        for &batch in &[1usize, 16] {
            let data = vec![0xa5u8; size];
            g.throughput(Throughput::Bytes((size * batch) as u64));
            let id = format!("{}KiB_sync_per_{}", size >> 10, batch);
            g.bench_function(BenchmarkId::new("store", &id), |b| {
                let d = bench_dir();
                let log = BigLog::open(d.path(), BigLogOptions { segment_bytes: 256 << 20, index_capacity: 65536, ..Default::default() }).unwrap();
                let mut written = 0u64;
                b.iter_custom(|iters| {
                    let t = Instant::now();
                    for _ in 0..iters {
                        for _ in 0..batch {
                            log.write(&data).unwrap();
                        }
                        log.sync().unwrap();
                        written += (size * batch) as u64;
                        if written > MAX_BYTES {
                            log.split().unwrap();
                            while log.segments().unwrap().len() > 1 {
                                log.trim().unwrap();
                            }
                            written = 0;
                        }
                    }
                    t.elapsed()
                });
            });
            g.bench_function(BenchmarkId::new("raw_fs", &id), |b| {
                let d = bench_dir();
                let mut f = std::fs::File::create(d.path().join("raw")).unwrap();
                let mut written = 0u64;
                b.iter_custom(|iters| {
                    let t = Instant::now();
                    for _ in 0..iters {
                        for _ in 0..batch {
                            f.write_all(&data).unwrap();
                        }
                        f.sync_data().unwrap();
                        written += (size * batch) as u64;
                        if written > MAX_BYTES {
                            f = std::fs::File::create(d.path().join("raw")).unwrap();
                            written = 0;
                        }
                    }
                    t.elapsed()
                });
            });
        }
    }
    g.finish();
}

fn scans(c: &mut Criterion) {
    let mut g = c.benchmark_group("scan");
    g.sample_size(10);
    let size = 256usize << 10;
    let n = if full_run() { 512 } else { 16 };
    let d = bench_dir();
    std::fs::create_dir_all(d.path().join("log")).unwrap();
    let log = BigLog::open(d.path().join("log"), BigLogOptions::default()).unwrap();
    let data = vec![0x5au8; size];
    let mut raw = std::fs::File::create(d.path().join("raw")).unwrap();
    for _ in 0..n {
        log.write(&data).unwrap();
        raw.write_all(&data).unwrap();
    }
    log.sync().unwrap();
    raw.sync_all().unwrap();
    g.throughput(Throughput::Bytes((size * n) as u64));
    g.bench_function("store_scanner_256KiB", |b| b.iter(|| Scanner::new(&log, 0).map(|r| r.unwrap().data.len()).sum::<usize>()));
    g.bench_function("raw_fs_read_256KiB", |b| {
        b.iter(|| {
            let mut f = std::fs::File::open(d.path().join("raw")).unwrap();
            let mut buf = vec![0u8; size];
            let mut total = 0;
            while let Ok(k) = f.read(&mut buf) {
                if k == 0 {
                    break;
                }
                total += k;
            }
            total
        })
    });
    g.finish();
}

fn seeks(c: &mut Criterion) {
    let mut g = c.benchmark_group("seek_time");
    let n: u64 = if full_run() { 1_000_000 } else { 20_000 };
    let d = bench_dir();
    let log = BigLog::open(d.path(), BigLogOptions { segment_bytes: 512 << 20, index_capacity: 262_144, ..Default::default() }).unwrap();
    let rec = [7u8; 16];
    for i in 0..n {
        log.write_n_at(&[&rec], 1_000_000 + i * 1000).unwrap();
    }
    log.sync().unwrap();
    let mut x = 12345u64;
    g.bench_function(format!("seek_by_time_{n}_entries"), |b| {
        b.iter(|| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let t = 1_000_000 + (x % n) * 1000;
            log.seek_time(t).unwrap()
        })
    });
    g.finish();
}

criterion_group!(benches, appends, scans, seeks);
criterion_main!(benches);
