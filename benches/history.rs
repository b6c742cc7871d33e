//! History benchmarks (criterion): finding the aggregation of a sequence, and of a time, in a
//! vdisk's index of 1M aggregations (DESIGN.md §12: both are binary searches on the index, which
//! restore, playback and `tlog changed` use instead of walking the chain); the goal is under
//! 10 µs each.
//!
//! Run: `cargo bench --bench history`.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use tlog::history::index::{Index, IndexEntry};

/// An index of `n` aggregations of 64 blocks each, stamped 1 ms apart.
fn index(n: u64) -> Index {
    let t0 = 1_780_000_000_000_000_000u64;
    let entries = (0..n)
        .map(|i| IndexEntry {
            height: i + 1,
            key: [0u8; 32],
            prev: [0u8; 32],
            first_sequence: i * 64 + 1,
            last_sequence: i * 64 + 64,
            first_timestamp: t0 + i * 1_000_000,
            last_timestamp: t0 + i * 1_000_000 + 900_000,
            epoch: 1,
            blocks: 64,
            data_bytes: 64 * 4096,
            sealed_at: t0 + i * 1_000_000 + 950_000,
            extents: Default::default(),
        })
        .collect();
    Index { vdisk: "bench".into(), entries, rebuilt: Vec::new() }
}

fn seek(c: &mut Criterion) {
    const N: u64 = 1_000_000;
    let ix = index(N);
    let mut g = c.benchmark_group("seek_1M_aggregations");
    // A different target every iteration (a multiplicative walk over the range), so the search
    // does not run on cached branches of one path.
    let mut x = 1u64;
    g.bench_function("by_sequence", |b| {
        b.iter(|| {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let s = (x >> 11) % (N * 64) + 1;
            black_box(ix.find_sequence(black_box(s)))
        })
    });
    let t0 = ix.entries[0].first_timestamp;
    g.bench_function("by_time", |b| {
        b.iter(|| {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let t = t0 + (x >> 11) % (N * 1_000_000);
            black_box(ix.first_after_time(black_box(t)))
        })
    });
    g.finish();
}

criterion_group!(benches, seek);
criterion_main!(benches);
