//! Flash attention of Llama-3.2-3B's shape (24 query heads sharing 8 K/V heads, 128
//! channels, f16 cache) at depth, through the engine's executor as the plugin runs it, with
//! the cache in each layout: llama.cpp's (`cells`: one row of all K/V heads per cell) and
//! SMEPilot's KV buffer's (`packed`: each K/V head's rows contiguous, `kv_layout`):
//! * decode: one query against `depth` keys, per layer; enough layers, each with its own
//!   cache, that every run reads the cache from DRAM. Prints ms per layer, the cache's
//!   bytes over that time in GB/s, and that against the calibrated DRAM read roof;
//! * prefill: 512 queries (causal) after `depth` keys, in ms and GFLOP/s
//!   (4 x queries x keys seen x 128 x heads).
//!
//! `cargo bench -p smepilot-engine --bench attention`; SMEPILOT_BENCH_DEPTHS=4096,16384
//! and SMEPILOT_BENCH_PREFILL=0 narrow it, SMEPILOT_THREADS sets the threads.

use half::f16;
use rand::{rngs::StdRng, Rng, SeedableRng};
use smepilot_engine::calibrate::{shared_profile, tensor};
use smepilot_engine::dtype::DType;
use smepilot_engine::exec::Executor;
use smepilot_engine::ops::{Node, Op};
use smepilot_engine::plan::ModeSetting;
use smepilot_engine::planner::adapt::Planner;
use smepilot_engine::tensor::TensorRef;
use std::time::Instant;

const HEADS: usize = 24;
const KV_HEADS: usize = 8;
const D: usize = 128;
/// Bytes of caches the decode runs rotate through (past any last-level cache).
const DECODE_BYTES: usize = 512 << 20;

/// One layer's K and V cache, `cells` rows of KV_HEADS x D f16 each.
struct Cache {
    k: Vec<u8>,
    v: Vec<u8>,
}

impl Cache {
    fn new(cells: usize, rng: &mut StdRng) -> Cache {
        let mut fill = || (0..cells * KV_HEADS * D).flat_map(|_| f16::from_f32(rng.gen_range(-1.0..1.0)).to_le_bytes()).collect::<Vec<u8>>();
        Cache { k: fill(), v: fill() }
    }

    /// The K (or V) view flash attention reads: [D, n_kv, KV_HEADS], a cell's heads side by
    /// side (llama.cpp's permuted view of its cache), or each head's cells in a run.
    fn view(data: &mut [u8], n_kv: usize, packed: bool) -> TensorRef {
        let row = KV_HEADS * D * 2;
        let nb = if packed { [2, D * 2, n_kv * D * 2, row * n_kv] } else { [2, row, D * 2, row * n_kv] };
        TensorRef { nb, len: row * n_kv, ..tensor(DType::F16, [D, n_kv, KV_HEADS, 1], data.as_mut_ptr()) }
    }
}

fn node(op: Op, dst: TensorRef, src: &[TensorRef]) -> Node {
    Node::checked(op, dst, src).expect("a supported node")
}

/// llama.cpp's causal mask for `n_q` new tokens after `past`: f16 0 or -inf, rows of n_kv.
fn mask(n_q: usize, n_kv: usize, past: usize) -> Vec<u8> {
    (0..n_q * n_kv).flat_map(|i| if i % n_kv > past + i / n_kv { f16::NEG_INFINITY } else { f16::ZERO }.to_le_bytes()).collect()
}

fn list(var: &str, all: &[usize]) -> Vec<usize> {
    match std::env::var(var) {
        Ok(v) if !v.is_empty() => v.split(',').map(|s| s.trim().parse().unwrap_or_else(|_| panic!("{var}: not a number: '{s}'"))).collect(),
        _ => all.to_vec(),
    }
}

fn main() {
    let threads = std::env::var("SMEPILOT_THREADS").ok().and_then(|v| v.parse().ok()).unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let depths = list("SMEPILOT_BENCH_DEPTHS", &[4096, 16384]);
    let prefill = std::env::var("SMEPILOT_BENCH_PREFILL").map_or(true, |v| v != "0");
    let profile = shared_profile();
    let roof = profile.bandwidth(threads);
    let mut exec = Executor::with_planner(threads, Planner::new(profile.clone(), ModeSetting::Auto), false);
    let mut rng = StdRng::seed_from_u64(7);
    let scale = 1.0 / (D as f32).sqrt();
    let op = Op::FlashAttn { scale, max_bias: 0.0, softcap: 0.0 };
    eprintln!("Llama-3.2-3B attention ({HEADS} heads, {KV_HEADS} K/V heads, {D} channels, f16 cache), {threads} threads; DRAM roof {:.1} GB/s", roof / 1e9);
    for (&depth, packed) in depths.iter().flat_map(|d| [(d, false), (d, true)]) {
        let layout = if packed { "packed" } else { "cells " };
        // Decode: the new token is the cache's last cell.
        let n_kv = depth + 1;
        let layer_bytes = 2 * n_kv * KV_HEADS * D * 2;
        let layers = DECODE_BYTES.div_ceil(layer_bytes).max(2);
        let mut caches: Vec<Cache> = (0..layers).map(|_| Cache::new(n_kv, &mut rng)).collect();
        let mut q: Vec<f32> = (0..D * HEADS).map(|_| rng.gen_range(-1.0..1.0)).collect();
        let mut m = mask(1, n_kv, depth);
        let mut out = vec![0f32; D * HEADS];
        let qt = tensor(DType::F32, [D, 1, HEADS, 1], q.as_mut_ptr() as *mut u8);
        let mt = tensor(DType::F16, [n_kv, 1, 1, 1], m.as_mut_ptr());
        let ot = tensor(DType::F32, [D, HEADS, 1, 1], out.as_mut_ptr() as *mut u8);
        let graph: Vec<Node> = caches.iter_mut().map(|c| node(op, ot, &[qt, Cache::view(&mut c.k, n_kv, packed), Cache::view(&mut c.v, n_kv, packed), mt])).collect();
        let mut best = f64::MAX;
        for run in 0..7 {
            let t0 = Instant::now();
            exec.compute(&graph).expect("graph failed");
            if run >= 2 {
                best = best.min(t0.elapsed().as_secs_f64() / layers as f64);
            }
        }
        let gbs = layer_bytes as f64 / best / 1e9;
        eprintln!("decode  {layout} depth {depth:6}: {:8.3} ms per layer {gbs:6.1} GB/s ({:3.0}% of the roof), {layers} layers", best * 1e3, gbs * 1e9 / roof * 100.0);
        drop(graph);
        drop(caches);

        if !prefill {
            continue;
        }
        let n_q = 512;
        let n_kv = depth + n_q;
        let mut cache = Cache::new(n_kv, &mut rng);
        let mut q: Vec<f32> = (0..D * HEADS * n_q).map(|_| rng.gen_range(-1.0..1.0)).collect();
        let mut m = mask(n_q, n_kv, depth);
        let mut out = vec![0f32; D * HEADS * n_q];
        let qt = tensor(DType::F32, [D, n_q, HEADS, 1], q.as_mut_ptr() as *mut u8);
        let mt = tensor(DType::F16, [n_kv, n_q, 1, 1], m.as_mut_ptr());
        let ot = tensor(DType::F32, [D, HEADS, n_q, 1], out.as_mut_ptr() as *mut u8);
        let graph = [node(op, ot, &[qt, Cache::view(&mut cache.k, n_kv, packed), Cache::view(&mut cache.v, n_kv, packed), mt])];
        let mut best = f64::MAX;
        for run in 0..3 {
            let t0 = Instant::now();
            exec.compute(&graph).expect("graph failed");
            if run >= 1 {
                best = best.min(t0.elapsed().as_secs_f64());
            }
        }
        // Keys each query sees: the depth and the new tokens up to its own.
        let seen = (n_q * depth + n_q * (n_q + 1) / 2) as f64;
        eprintln!("prefill {layout} depth {depth:6}: {:8.3} ms per layer {:6.1} GFLOP/s", best * 1e3, 4.0 * seen * (D * HEADS) as f64 / best / 1e9);
    }
}
