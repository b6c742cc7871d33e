//! Sealing benchmarks (criterion): each stage (Cap'n Proto encode, lz4, AES-256-GCM, BLAKE3,
//! Reed-Solomon encode, RS reconstruct with m shards lost) and the whole seal and unseal, for
//! 256 KiB to 4 MiB aggregations of 4 KiB blocks, random and 2:1 compressible, beside a memcpy
//! of the same size as the physical reference. Throughput is in bytes of aggregation payload.
//!
//! Run: `cargo bench --bench seal`.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use reed_solomon_erasure::galois_8::ReedSolomon;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use std::time::Duration;
use tlog::seal::{aggregate, erasure, SealKey, Sealer};
use tlog::seal::{SealContext, SealScratch};
use tlog::wire::{Block, Operation};

fn blocks(total: usize, r: f64) -> Vec<Block> {
    tlog::bench::payloads(4096, r, total / 4096, 7)
        .into_iter()
        .enumerate()
        .map(|(i, d)| Block::new(i as u64 + 1, i as u64 * 8, Operation::Write, d, 4096, 1))
        .collect()
}

fn full_run() -> bool {
    std::env::args().any(|a| a == "--bench")
}

fn seal(c: &mut Criterion) {
    let sizes: &[usize] = if full_run() { &[256 << 10, 1 << 20, 4 << 20] } else { &[256 << 10] };
    let sealer = Sealer::new(SealKey::from_bytes([7; 32]), 4, 2).unwrap();
    let rs = ReedSolomon::new(4, 2).unwrap();
    let cipher = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &[7u8; 32]).unwrap());
    let mut g = c.benchmark_group("seal");
    g.sample_size(10).measurement_time(Duration::from_secs(if full_run() { 3 } else { 1 })).warm_up_time(Duration::from_millis(500));
    for &size in sizes {
        for (label, r) in [("random", 0.0), ("2to1", 0.5)] {
            let id = format!("{}KiB_{label}", size >> 10);
            let bl = blocks(size, r);
            let ctx = SealContext { vdisk: "bench", epoch: 1, counter: 0, attach_random: [1; 16], prev: [0; 32], timestamp: 1 };
            let plain = aggregate::encode("bench", &bl, &[0; 32], 1, 1);
            let compressed = lz4_flex::compress_prepend_size(&plain);
            let mut sealed_bytes = compressed.clone();
            let tag = cipher.seal_in_place_separate_tag(Nonce::assume_unique_for_key([0u8; 12]), Aad::empty(), &mut sealed_bytes).unwrap();
            sealed_bytes.extend_from_slice(tag.as_ref());
            let shards = erasure::encode(&rs, &sealed_bytes).unwrap();
            let sealed = sealer.seal(&ctx, &bl).unwrap();
            g.throughput(Throughput::Bytes(size as u64));
            let src = vec![1u8; size];
            g.bench_function(BenchmarkId::new("memcpy", &id), |b| b.iter(|| src.clone()));
            g.bench_function(BenchmarkId::new("capnp_encode", &id), |b| b.iter(|| aggregate::encode("bench", &bl, &[0; 32], 1, 1)));
            g.bench_function(BenchmarkId::new("lz4_compress", &id), |b| b.iter(|| lz4_flex::compress_prepend_size(&plain)));
            let mut buf = compressed.clone();
            g.bench_function(BenchmarkId::new("aes_gcm_encrypt", &id), |b| {
                b.iter(|| cipher.seal_in_place_separate_tag(Nonce::assume_unique_for_key([0u8; 12]), Aad::empty(), &mut buf).unwrap())
            });
            g.bench_function(BenchmarkId::new("blake3", &id), |b| b.iter(|| blake3::hash(&sealed_bytes)));
            g.bench_function(BenchmarkId::new("rs_encode", &id), |b| b.iter(|| erasure::encode(&rs, &sealed_bytes).unwrap()));
            g.bench_function(BenchmarkId::new("rs_reconstruct_m_lost", &id), |b| {
                b.iter(|| {
                    let mut v: Vec<Option<Vec<u8>>> = shards.iter().cloned().map(Some).collect();
                    v[0] = None;
                    v[2] = None;
                    erasure::reconstruct(&rs, v, sealed_bytes.len() as u64).unwrap()
                })
            });
            // As the flushers seal: one scratch per thread, reused.
            let mut scratch = SealScratch::default();
            g.bench_function(BenchmarkId::new("whole_seal", &id), |b| b.iter(|| sealer.seal_with(&mut scratch, &ctx, &bl).unwrap()));
            g.bench_function(BenchmarkId::new("whole_unseal_m_lost", &id), |b| {
                b.iter(|| {
                    let mut v: Vec<Option<Vec<u8>>> = sealed.shards.iter().cloned().map(Some).collect();
                    v[1] = None;
                    v[4] = None;
                    sealer.unseal(&sealed.key, v).unwrap()
                })
            });
        }
    }
    g.finish();
}

criterion_group!(benches, seal);
criterion_main!(benches);
