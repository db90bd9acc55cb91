//! One mixture-of-experts FFN of Qwen3-30B-A3B's shape (hidden 2048, 128 experts of 768,
//! 8 used per token) through the engine's executor and planner, as the plugin runs it:
//! up, gate, their SwiGLU and down over T tokens routed uniformly at random (a trained
//! router spreads tokens about evenly: T * 8 / 128 rows per expert). Prints the best of
//! several runs per type and T, with the gate + up + SwiGLU pass and with every node alone
//! (`SMEPILOT_FUSE=0`'s path), in ms and in effective GOPS (2 * rows * K * N per product).
//!
//! `cargo bench -p smepilot-engine --bench moe`; SMEPILOT_BENCH_TYPES=q4_0,q4_k and
//! SMEPILOT_BENCH_T=32,512 narrow it, SMEPILOT_THREADS sets the threads.

use rand::{rngs::StdRng, Rng, SeedableRng};
use smepilot_engine::calibrate::{random_weights, shared_profile, tensor};
use smepilot_engine::dtype::DType;
use smepilot_engine::exec::Executor;
use smepilot_engine::kernels::packed::{self, Layout, PackedRef};
use smepilot_engine::ops::{Node, Op};
use smepilot_engine::plan::ModeSetting;
use smepilot_engine::planner::adapt::Planner;
use smepilot_engine::tensor::TensorRef;
use std::time::Instant;

const HIDDEN: usize = 2048;
const FF: usize = 768;
const EXPERTS: usize = 128;
const USED: usize = 8;

/// One expert tensor ([k, n, EXPERTS]) with its packed copy where the type has one.
struct Experts {
    raw: Vec<u8>,
    packed: Option<(Layout, Vec<u8>)>,
}

impl Experts {
    fn new(ty: DType, k: usize, n: usize, seed: u64) -> Experts {
        let raw = random_weights(ty, n * EXPERTS, k, seed);
        let packed = Layout::for_weights(ty, k, n * EXPERTS).map(|l| {
            let mut p = vec![0u8; raw.len()];
            packed::pack(l, ty, &raw, &mut p, n * EXPERTS, k);
            (l, p)
        });
        Experts { raw, packed }
    }

    fn tensor(&mut self, ty: DType, k: usize, n: usize) -> TensorRef {
        TensorRef {
            packed: self.packed.as_ref().map(|(l, p)| PackedRef { layout: *l, data: p.as_ptr(), len: p.len() }),
            ..tensor(ty, [k, n, EXPERTS, 1], self.raw.as_mut_ptr())
        }
    }
}

fn node(op: Op, dst: TensorRef, src: &[TensorRef]) -> Node {
    Node::checked(op, dst, src).expect("a supported node")
}

fn list<T: Copy>(var: &str, all: &[T], parse: impl Fn(&str) -> Option<T>) -> Vec<T> {
    match std::env::var(var) {
        Ok(v) if !v.is_empty() => v.split(',').map(|s| parse(s.trim()).unwrap_or_else(|| panic!("{var}: unknown entry '{s}'"))).collect(),
        _ => all.to_vec(),
    }
}

fn main() {
    let threads = std::env::var("SMEPILOT_THREADS").ok().and_then(|v| v.parse().ok()).unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let types = list("SMEPILOT_BENCH_TYPES", &[DType::Q4_0, DType::Q4_K, DType::Q8_0], |s| [DType::Q4_0, DType::Q4_K, DType::Q8_0, DType::Q6_K].into_iter().find(|t| t.name().eq_ignore_ascii_case(s)));
    let tokens = list("SMEPILOT_BENCH_T", &[1, 32, 128, 512], |s| s.parse().ok());
    let profile = shared_profile();
    eprintln!("Qwen3-30B-A3B experts, {threads} threads; best of 5 runs after 2 warm-ups");
    for ty in types {
        let (mut up_w, mut gate_w, mut down_w) = (Experts::new(ty, HIDDEN, FF, 1), Experts::new(ty, HIDDEN, FF, 2), Experts::new(ty, FF, HIDDEN, 3));
        let (up_t, gate_t, down_t) = (up_w.tensor(ty, HIDDEN, FF), gate_w.tensor(ty, HIDDEN, FF), down_w.tensor(ty, FF, HIDDEN));
        for &t in &tokens {
            let mut rng = StdRng::seed_from_u64(t as u64);
            let mut ids = Vec::with_capacity(USED * t);
            for _ in 0..t {
                let mut picked = Vec::with_capacity(USED);
                while picked.len() < USED {
                    let e = rng.gen_range(0..EXPERTS as i32);
                    if !picked.contains(&e) {
                        picked.push(e);
                    }
                }
                ids.extend(picked);
            }
            let mut x: Vec<f32> = (0..HIDDEN * t).map(|_| rng.gen_range(-1.0..1.0)).collect();
            let (mut up, mut gate, mut act) = (vec![0f32; FF * USED * t], vec![0f32; FF * USED * t], vec![0f32; FF * USED * t]);
            let mut out = vec![0f32; HIDDEN * USED * t];
            let id_t = tensor(DType::I32, [USED, t, 1, 1], ids.as_mut_ptr() as *mut u8);
            let x_t = tensor(DType::F32, [HIDDEN, 1, t, 1], x.as_mut_ptr() as *mut u8);
            let ff = |v: &mut Vec<f32>| tensor(DType::F32, [FF, USED, t, 1], v.as_mut_ptr() as *mut u8);
            let (up_d, gate_d, act_d) = (ff(&mut up), ff(&mut gate), ff(&mut act));
            let graph = [
                node(Op::MulMatId, up_d, &[up_t, x_t, id_t]),
                node(Op::MulMatId, gate_d, &[gate_t, x_t, id_t]),
                node(Op::SwiGlu { swapped: false }, act_d, &[gate_d, up_d]),
                node(Op::MulMatId, tensor(DType::F32, [HIDDEN, USED, t, 1], out.as_mut_ptr() as *mut u8), &[down_t, act_d, id_t]),
            ];
            let ops = 2.0 * (USED * t) as f64 * (3 * HIDDEN * FF) as f64;
            let mut line = format!("{:5} T={t:<4}", ty.name());
            for fused in [true, false] {
                let mut exec = Executor::with_planner(threads, Planner::new(profile.clone(), ModeSetting::Auto), false);
                exec.set_fusion(fused);
                let mut best = f64::MAX;
                for run in 0..7 {
                    let t0 = Instant::now();
                    exec.compute(&graph).expect("graph failed");
                    if run >= 2 {
                        best = best.min(t0.elapsed().as_secs_f64());
                    }
                }
                line += &format!("  {}: {:8.3} ms {:6.0} GOPS", if fused { "pass" } else { "alone" }, best * 1e3, ops / best / 1e9);
            }
            eprintln!("{line}");
        }
    }
}
