//! Criterion benchmarks of MUL_MAT over the Llama-3.2-3B and Qwen3-4B projection shapes
//! (K x N) at M = 1, 4, 16, 64, 512, run through the engine's executor on all allowed cores
//! (or SMEPILOT_THREADS). Each case also prints one line placing it against this machine's
//! roof: for M >= 16, the AMX peak of the tile engine that runs it (int8 for Q8_0, Q4_0 and
//! Q4_1, bf16 for the rest), measured again next to the case since this host's tile
//! throughput drifts; for
//! M < 16, the DRAM read bandwidth measured at start (GB/s of weights; the weights rotate
//! through copies larger than the last-level cache so they really come from DRAM). Weights
//! with a packed layout (Q4_0, Q4_1, Q8_0, Q4_K, Q6_K) run from it, as in the plugin.
//!
//! Filters: SMEPILOT_BENCH_TYPES=q4_0,bf16, SMEPILOT_BENCH_M=1,512 and
//! SMEPILOT_BENCH_SHAPES=3072x3072 (K x N) narrow the grid.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use smepilot_engine::dtype::DType;
use smepilot_engine::exec::Executor;
use smepilot_engine::kernels::packed::{self, Layout, PackedRef};
use smepilot_engine::calibrate::{random_weights, tensor};
use smepilot_engine::ops::{Node, Op};
use smepilot_engine::kernels::roofs;
use smepilot_engine::tensor::TensorRef;
use std::time::{Duration, Instant};

/// (model, projection, K, N)
const SHAPES: &[(&str, &str, usize, usize)] = &[
    ("llama3.2-3b", "attn_q/o", 3072, 3072),
    ("llama3.2-3b", "attn_k/v", 3072, 1024),
    ("llama3.2-3b", "ffn_gate/up", 3072, 8192),
    ("llama3.2-3b", "ffn_down", 8192, 3072),
    ("llama3.2-3b", "output", 3072, 128256),
    ("qwen3-4b", "attn_q", 2560, 4096),
    ("qwen3-4b", "attn_k/v", 2560, 1024),
    ("qwen3-4b", "attn_o", 4096, 2560),
    ("qwen3-4b", "ffn_gate/up", 2560, 9728),
    ("qwen3-4b", "ffn_down", 9728, 2560),
];
const MS: &[usize] = &[1, 4, 16, 64, 512];
const TYPES: &[DType] = &[DType::Q4_0, DType::Q8_0, DType::Q4_K, DType::Q6_K, DType::BF16, DType::F16, DType::Q4_1, DType::Q5_K];
/// Weights of GEMV cases rotate through copies totalling at least this much (> LLC).
const ROTATE_BYTES: usize = 512 << 20;

struct Roofs {
    threads: usize,
    int8: Option<f64>,
    bf16: Option<f64>,
    dram: f64,
}

fn list<T>(var: &str, all: &[T], parse: impl Fn(&str) -> Option<T>) -> Vec<T>
where
    T: Copy,
{
    match std::env::var(var) {
        Ok(v) if !v.is_empty() => v
            .split(',')
            .map(|s| parse(s.trim()).unwrap_or_else(|| panic!("{var}: unknown entry '{s}'")))
            .collect(),
        _ => all.to_vec(),
    }
}

fn bench(c: &mut Criterion) {
    let threads = std::env::var("SMEPILOT_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    #[cfg(target_arch = "x86_64")]
    let (int8, bf16) = (roofs::amx_peak(threads, false), roofs::amx_peak(threads, true));
    #[cfg(not(target_arch = "x86_64"))]
    let (int8, bf16) = (None, None);
    let r = Roofs { threads, int8, bf16, dram: roofs::dram_read_bw(threads) };
    eprintln!(
        "roofs on {} threads: AMX int8 {}, AMX bf16 {}, DRAM read {:.1} GB/s",
        r.threads,
        r.int8.map_or("none".into(), |v| format!("{:.0} GOPS", v / 1e9)),
        r.bf16.map_or("none".into(), |v| format!("{:.0} GFLOPS", v / 1e9)),
        r.dram / 1e9
    );
    let types = list("SMEPILOT_BENCH_TYPES", TYPES, |s| TYPES.iter().copied().find(|t| t.name().eq_ignore_ascii_case(s)));
    let ms = list("SMEPILOT_BENCH_M", MS, |s| s.parse().ok());
    let shapes = list("SMEPILOT_BENCH_SHAPES", SHAPES, |s| SHAPES.iter().copied().find(|sh| format!("{}x{}", sh.2, sh.3) == s));
    let mut exec = Executor::new(threads);
    let mut summary = Vec::new();
    for &(model, proj, k, n) in &shapes {
        let mut g = c.benchmark_group(format!("mul_mat/{model}/{proj}/{k}x{n}"));
        g.sample_size(10).warm_up_time(Duration::from_millis(300)).measurement_time(Duration::from_secs(1));
        for &ty in &types {
            let w_bytes = random_weights(ty, n, k, 1);
            let copies = if ms.iter().any(|&m| m < 16) { ROTATE_BYTES.div_ceil(w_bytes.len()).max(1) } else { 1 };
            let mut ws: Vec<Vec<u8>> = (0..copies).map(|_| w_bytes.clone()).collect();
            // Weights with a packed layout run from it, as in the plugin (packed at first use).
            let layout = Layout::for_weights(ty, k, n);
            let ps: Vec<Vec<u8>> = match layout {
                Some(l) => ws
                    .iter()
                    .map(|w| {
                        let mut p = vec![0u8; w.len()];
                        packed::pack(l, ty, w, &mut p, n, k);
                        p
                    })
                    .collect(),
                None => Vec::new(),
            };
            for &m in &ms {
                let mut x: Vec<f32> = (0..k * m).map(|i| ((i * 7919) % 2001) as f32 / 1000.0 - 1.0).collect();
                let mut d = vec![0f32; n * m];
                let nodes: Vec<Node> = ws
                    .iter_mut()
                    .take(if m < 16 { copies } else { 1 })
                    .enumerate()
                    .map(|(i, w)| Node {
                        op: Op::MulMat,
                        dst: tensor(DType::F32, [n, m, 1, 1], d.as_mut_ptr() as *mut u8),
                        src: [
                            Some(TensorRef {
                                packed: layout.map(|l| PackedRef { layout: l, data: ps[i].as_ptr(), len: ps[i].len() }),
                                ..tensor(ty, [k, n, 1, 1], w.as_mut_ptr())
                            }),
                            Some(tensor(DType::F32, [k, m, 1, 1], x.as_mut_ptr() as *mut u8)),
                            None,
                            None,
                            None,
                        ],
                    })
                    .collect();
                if let Err(e) = smepilot_engine::ops::supports(&nodes[0]) {
                    eprintln!("skip {} M={m}: {e}", ty.name());
                    continue;
                }
                let flops = 2 * m * n * k;
                g.throughput(Throughput::Elements(flops as u64));
                let mut rot = 0usize;
                g.bench_function(format!("{}/M={m}", ty.name()), |b| {
                    b.iter(|| {
                        exec.compute(std::slice::from_ref(&nodes[rot % nodes.len()])).expect("graph failed");
                        rot += 1;
                    })
                });
                // Our own timing for the roof line (criterion keeps its estimates internal).
                let reps = (2e9 / flops as f64).clamp(3.0, 200.0) as usize;
                let t0 = Instant::now();
                for i in 0..reps {
                    exec.compute(std::slice::from_ref(&nodes[i % nodes.len()])).expect("graph failed");
                }
                let secs = t0.elapsed().as_secs_f64() / reps as f64;
                let line = if m < 16 {
                    let gbs = w_bytes.len() as f64 / secs / 1e9;
                    format!("{:.1} GB/s = {:.0}% of DRAM read", gbs, 100.0 * gbs * 1e9 / r.dram)
                } else {
                    // This host's tile throughput drifts (shared machine): measure the roof
                    // again right next to the case, for the tile engine that runs the type
                    // (int8 for Q8_0, Q4_0, Q4_1 unless SMEPILOT_AMX_INT8=0; bf16 otherwise).
                    let int8 = smepilot_engine::ops::tile_int8_type(ty);
                    #[cfg(target_arch = "x86_64")]
                    let peak = roofs::amx_peak(r.threads, !int8).or(if int8 { r.int8 } else { r.bf16 });
                    #[cfg(not(target_arch = "x86_64"))]
                    let peak: Option<f64> = None;
                    let engine = if int8 { "int8" } else { "bf16" };
                    let gf = flops as f64 / secs / 1e9;
                    match peak {
                        Some(p) => format!("{:.0} GFLOP/s = {:.0}% of AMX {engine} peak ({:.0} GFLOP/s)", gf, 100.0 * gf * 1e9 / p, p / 1e9),
                        None => format!("{gf:.0} GFLOP/s"),
                    }
                };
                let s = format!("{model:12} {proj:12} {k:5}x{n:<5} {:5} M={m:<4} {line}", ty.name());
                eprintln!("roof: {s}");
                summary.push(s);
            }
            drop(ws.drain(..));
        }
        g.finish();
    }
    eprintln!("\nroof summary ({} threads):", r.threads);
    for s in &summary {
        eprintln!("{s}");
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
