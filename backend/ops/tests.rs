//! Operators against naive f64 references on odd shapes, strided views and broadcasts,
//! run through the executor with several threads (and so, its barriers and splits).

use half::{bf16, f16};
use rand::{rngs::StdRng, Rng, SeedableRng};

use super::{Node, Op, RopeParams};
use crate::dtype::DType;
use crate::exec::Executor;
use crate::kernels::quant::scalar_kernels;
use crate::kernels::registry::{self, log_tiers_run};
use crate::kernels::KernelSet;
use crate::tensor::TensorRef;
use crate::plan::{Mode, Plan};

/// Owned, 64-byte aligned tensor storage.
struct Buf {
    mem: Vec<[u8; 64]>,
}

impl Buf {
    fn zeroed(bytes: usize) -> Buf {
        Buf {
            mem: vec![[0u8; 64]; bytes.div_ceil(64).max(1)],
        }
    }
    fn ptr(&mut self) -> *mut u8 {
        self.mem.as_mut_ptr() as *mut u8
    }
    fn bytes(&mut self) -> &mut [u8] {
        let n = self.mem.len() * 64;
        // SAFETY: the Vec holds n initialised bytes.
        unsafe { std::slice::from_raw_parts_mut(self.ptr(), n) }
    }
    fn f32s(&mut self) -> &mut [f32] {
        let n = self.mem.len() * 16;
        // SAFETY: 64-byte aligned, n * 4 bytes long.
        unsafe { std::slice::from_raw_parts_mut(self.ptr() as *mut f32, n) }
    }
}

/// A contiguous tensor of `ty` and shape `ne` over `buf`.
fn contiguous(ty: DType, ne: [usize; 4], buf: &mut Buf) -> TensorRef {
    let row = ty.row_bytes(ne[0]);
    let nb = [ty.block_bytes(), row, row * ne[1], row * ne[1] * ne[2]];
    TensorRef {
        ty,
        ne,
        nb,
        data: buf.ptr(),
        len: buf.mem.len() * 64,
        packed: None,
    }
}

fn node(op: Op, dst: TensorRef, src: &[TensorRef]) -> Node {
    Node::checked(op, dst, src).expect("test node must be supported")
}

thread_local! {
    /// The kernel tier this test thread's executors run (see [`each_tier`]).
    static TIER: std::cell::Cell<Option<&'static KernelSet>> = const { std::cell::Cell::new(None) };
}

/// The kernel set of the tier [`each_tier`] is running (the process's set outside it).
fn tier_set() -> &'static KernelSet {
    TIER.get().unwrap_or(registry::active())
}

/// An executor on the tier [`each_tier`] is running.
fn executor(threads: usize) -> Executor {
    Executor::with_kernels(threads, tier_set())
}

/// The sets whose matrix engines the tests drive on the current tier: the reference engine,
/// and the process's matrix unit where the process runs this tier.
fn matrix_sets() -> Vec<&'static KernelSet> {
    let tier = tier_set().tier;
    let mut sets: Vec<&'static KernelSet> = KernelSet::with_reference_engine().iter().filter(|s| s.tier == tier).collect();
    let active = registry::active();
    if active.matrix.is_some() && active.tier == tier {
        sets.push(active);
    }
    sets
}

/// Runs `body` once on every kernel tier this CPU runs, and logs the tiers for `family`.
fn each_tier(family: &str, body: impl Fn()) {
    for ks in KernelSet::available() {
        TIER.set(Some(ks));
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(&body));
        TIER.set(None);
        if let Err(e) = r {
            eprintln!("failed on the {} tier", ks.name);
            std::panic::resume_unwind(e);
        }
    }
    log_tiers_run(family, KernelSet::available().iter().map(|s| s.name));
}

fn run(nodes: &[Node], threads: usize) {
    executor(threads).compute(nodes).expect("graph failed");
}

fn nmse(got: &[f32], want: &[f64]) -> f64 {
    let (mut err, mut norm) = (0f64, 0f64);
    for (&g, &w) in got.iter().zip(want) {
        err += (g as f64 - w).powi(2);
        norm += w * w;
    }
    err / norm.max(1e-30)
}

fn random_f32(rng: &mut StdRng, n: usize, scale: f32) -> Vec<f32> {
    (0..n).map(|_| rng.gen_range(-1.0..1.0) * scale).collect()
}

/// Random but valid weight rows of `ty`: quantized from f32 where a quantizer exists,
/// otherwise random blocks with sane f16 scales.
fn random_weights(rng: &mut StdRng, ty: DType, rows: usize, k: usize) -> Vec<u8> {
    let row_bytes = ty.row_bytes(k);
    let mut out = vec![0u8; rows * row_bytes];
    let kern = scalar_kernels(ty).unwrap();
    if let Some(q) = kern.from_f32 {
        for r in 0..rows {
            q(
                &random_f32(rng, k, 1.0),
                &mut out[r * row_bytes..(r + 1) * row_bytes],
            );
        }
        return out;
    }
    rng.fill(&mut out[..]);
    let bb = ty.block_bytes();
    for blk in out.chunks_mut(bb) {
        let mut put = |off: usize| {
            let v = f16::from_f32(rng.gen_range(0.001..0.02))
                .to_bits()
                .to_le_bytes();
            blk[off..off + 2].copy_from_slice(&v);
        };
        match ty {
            DType::Q4_K | DType::Q5_K => {
                put(0);
                put(2);
            }
            DType::Q6_K => put(208),
            _ => unreachable!(),
        }
    }
    out
}

#[test]
fn mul_mat_all_weight_types_odd_shapes_broadcast_and_strided_activations() {
    each_tier("ops::mul_mat_all_weight_types_odd_shapes_broadcast_and_strided_activations", || {
        let _lock = MUL_MAT_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let mut rng = StdRng::seed_from_u64(7);
        for ty in [
            DType::F32,
            DType::F16,
            DType::BF16,
            DType::Q8_0,
            DType::Q4_0,
            DType::Q4_1,
            DType::Q4_K,
            DType::Q5_K,
            DType::Q6_K,
        ] {
            let k = if ty.block_size() == 256 {
                768
            } else {
                ty.block_size().max(32) * 7
            };
            let (n, m, ne02, ne12) = (19, 70, 2, 4); // m > TILE_M, broadcast 2 -> 4
            let w_bytes = random_weights(&mut rng, ty, n * ne02, k);
            let mut wb = Buf::zeroed(w_bytes.len());
            wb.bytes()[..w_bytes.len()].copy_from_slice(&w_bytes);
            let w = contiguous(ty, [k, n, ne02, 1], &mut wb);

            // Activations as a strided view: rows 8 floats apart beyond k.
            let row_stride = (k + 8) * 4;
            let mut xb = Buf::zeroed(row_stride * m * ne12);
            let xs = random_f32(&mut rng, (k + 8) * m * ne12, 1.0);
            xb.f32s()[..xs.len()].copy_from_slice(&xs);
            let x = TensorRef {
                ty: DType::F32,
                ne: [k, m, ne12, 1],
                nb: [4, row_stride, row_stride * m, row_stride * m * ne12],
                data: xb.ptr(),
                len: xb.mem.len() * 64,
                packed: None,
            };

            let mut db = Buf::zeroed(n * m * ne12 * 4);
            let d = contiguous(DType::F32, [n, m, ne12, 1], &mut db);
            run(&[node(Op::MulMat, d, &[w, x])], 3);

            let to_f32 = scalar_kernels(ty).unwrap().to_f32;
            let mut wf = vec![0f32; k];
            let mut want = vec![0f64; n * m * ne12];
            for i12 in 0..ne12 {
                for r in 0..n {
                    let wrow = (i12 / (ne12 / ne02)) * n + r;
                    to_f32(
                        &w_bytes[wrow * ty.row_bytes(k)..(wrow + 1) * ty.row_bytes(k)],
                        &mut wf,
                    );
                    for c in 0..m {
                        let xrow = &xs[(i12 * m + c) * (k + 8)..][..k];
                        want[(i12 * m + c) * n + r] = wf
                            .iter()
                            .zip(xrow)
                            .map(|(&a, &b)| a as f64 * b as f64)
                            .sum();
                    }
                }
            }
            let e = nmse(&db.f32s()[..want.len()], &want);
            assert!(e < 5e-4, "{ty:?}: nmse {e}");
        }
    });
}

#[test]
fn rms_norm_in_place_and_scale() {
    each_tier("ops::rms_norm_in_place_and_scale", || {
        let mut rng = StdRng::seed_from_u64(1);
        let (n, rows) = (37, 11);
        let xs = random_f32(&mut rng, n * rows, 3.0);
        let mut b = Buf::zeroed(n * rows * 4);
        b.f32s()[..xs.len()].copy_from_slice(&xs);
        let t = contiguous(DType::F32, [n, rows, 1, 1], &mut b);
        // In place, as ggml-alloc arranges it.
        run(
            &[
                node(Op::RmsNorm { eps: 1e-6 }, t, &[t]),
                node(
                    Op::Scale {
                        scale: 2.0,
                        bias: 0.5,
                    },
                    t,
                    &[t],
                ),
            ],
            2,
        );
        for r in 0..rows {
            let x = &xs[r * n..(r + 1) * n];
            let ms = x.iter().map(|&v| v as f64 * v as f64).sum::<f64>() / n as f64;
            for i in 0..n {
                let want = x[i] as f64 / (ms + 1e-6).sqrt() * 2.0 + 0.5;
                assert!(
                    (b.f32s()[r * n + i] as f64 - want).abs() < 1e-4,
                    "row {r} col {i}"
                );
            }
        }
    });
}

/// RMS_NORM gives ggml-cpu's bits (squares in f32, one f64 sum per row in element order,
/// the scale in f32) for rows taken eight side by side and the rest one by one: 1 to 3
/// threads, rows of 37 and 128, in place and into another tensor.
#[test]
fn rms_norm_gives_ggml_bits() {
    each_tier("ops::rms_norm", || {
        let mut rng = StdRng::seed_from_u64(3);
        for (n, rows) in [(37, 29), (128, 41)] {
            let xs = random_f32(&mut rng, n * rows, 3.0);
            let eps = 1e-6f32;
            let want: Vec<u32> = xs
                .chunks(n)
                .flat_map(|x| {
                    let mut sum = 0f64;
                    for &v in x {
                        sum += (v * v) as f64;
                    }
                    let scale = 1.0 / ((sum / n as f64) as f32 + eps).sqrt();
                    x.iter().map(move |&v| (v * scale).to_bits())
                })
                .collect();
            for threads in 1..=3 {
                for in_place in [false, true] {
                    let mut a = Buf::zeroed(n * rows * 4);
                    let mut o = Buf::zeroed(n * rows * 4);
                    a.f32s()[..xs.len()].copy_from_slice(&xs);
                    let src = contiguous(DType::F32, [n, rows, 1, 1], &mut a);
                    let dst = if in_place { src } else { contiguous(DType::F32, [n, rows, 1, 1], &mut o) };
                    run(&[node(Op::RmsNorm { eps }, dst, &[src])], threads);
                    let got = if in_place { &mut a } else { &mut o };
                    let got: Vec<u32> = got.f32s()[..n * rows].iter().map(|v| v.to_bits()).collect();
                    if let Some(i) = (0..n * rows).find(|&i| got[i] != want[i]) {
                        panic!("n {n} threads {threads} in place {in_place}: row {} col {}: {} vs {}", i / n, i % n, f32::from_bits(got[i]), f32::from_bits(want[i]));
                    }
                }
            }
        }
    });
}

/// ADD and MUL with src1 repeated along the row (one value per row, as MoE's expert
/// weights, or a shorter row), into a new tensor and in place.
#[test]
fn binary_ops_repeat_src1_within_rows() {
    each_tier("ops::binary_repeat", || {
        let mut rng = StdRng::seed_from_u64(5);
        let (n, rows, planes) = (12, 3, 2);
        for (bn, brows, bplanes) in [(1, rows, 1), (4, 1, planes), (3, rows, planes)] {
            let a = random_f32(&mut rng, n * rows * planes, 2.0);
            let b = random_f32(&mut rng, bn * brows * bplanes, 2.0);
            for in_place in [false, true] {
                let (mut ab, mut bb, mut ob) = (Buf::zeroed(a.len() * 4), Buf::zeroed(b.len() * 4), Buf::zeroed(a.len() * 4));
                ab.f32s()[..a.len()].copy_from_slice(&a);
                bb.f32s()[..b.len()].copy_from_slice(&b);
                let ta = contiguous(DType::F32, [n, rows, planes, 1], &mut ab);
                let tb = contiguous(DType::F32, [bn, brows, bplanes, 1], &mut bb);
                let to = if in_place { ta } else { contiguous(DType::F32, [n, rows, planes, 1], &mut ob) };
                run(&[node(Op::Add, to, &[ta, tb]), node(Op::Mul, to, &[to, tb])], 2);
                let got = if in_place { ab.f32s()[..a.len()].to_vec() } else { ob.f32s()[..a.len()].to_vec() };
                for p in 0..planes {
                    for r in 0..rows {
                        for i in 0..n {
                            let y = b[((p % bplanes) * brows + r % brows) * bn + i % bn];
                            let want = (a[(p * rows + r) * n + i] + y) * y;
                            assert_eq!(got[(p * rows + r) * n + i], want, "b [{bn}, {brows}, {bplanes}] in_place={in_place} at ({i}, {r}, {p})");
                        }
                    }
                }
            }
        }
    });
}

#[test]
fn add_mul_broadcast_silu_swiglu() {
    each_tier("ops::add_mul_broadcast_silu_swiglu", || {
        let mut rng = StdRng::seed_from_u64(2);
        let (n, rows) = (24, 9);
        let a = random_f32(&mut rng, n * rows, 2.0);
        let b = random_f32(&mut rng, n, 2.0); // broadcast over rows
        let (mut ab, mut bb, mut ob, mut sb, mut gb) = (
            Buf::zeroed(n * rows * 4),
            Buf::zeroed(n * 4),
            Buf::zeroed(n * rows * 4),
            Buf::zeroed(n * rows * 4),
            Buf::zeroed(n / 2 * rows * 4),
        );
        ab.f32s()[..a.len()].copy_from_slice(&a);
        bb.f32s()[..n].copy_from_slice(&b);
        let (ta, tb, to) = (
            contiguous(DType::F32, [n, rows, 1, 1], &mut ab),
            contiguous(DType::F32, [n, 1, 1, 1], &mut bb),
            contiguous(DType::F32, [n, rows, 1, 1], &mut ob),
        );
        let ts = contiguous(DType::F32, [n, rows, 1, 1], &mut sb);
        let tg = contiguous(DType::F32, [n / 2, rows, 1, 1], &mut gb);
        run(
            &[
                node(Op::Add, to, &[ta, tb]),
                node(Op::Mul, to, &[to, tb]),
                node(Op::Silu, ts, &[to]),
                node(Op::SwiGlu { swapped: false }, tg, &[to]),
            ],
            2,
        );
        let silu = |x: f64| x / (1.0 + (-x).exp());
        for r in 0..rows {
            for i in 0..n {
                let v = (a[r * n + i] as f64 + b[i] as f64) * b[i] as f64;
                assert!((ob.f32s()[r * n + i] as f64 - v).abs() < 1e-5);
                assert!((sb.f32s()[r * n + i] as f64 - silu(v)).abs() < 1e-5);
            }
            for i in 0..n / 2 {
                let (x, g) = (
                    (a[r * n + i] as f64 + b[i] as f64) * b[i] as f64,
                    (a[r * n + i + n / 2] as f64 + b[i + n / 2] as f64) * b[i + n / 2] as f64,
                );
                assert!((gb.f32s()[r * (n / 2) + i] as f64 - silu(x) * g).abs() < 1e-5);
            }
        }
    });
}

#[test]
fn soft_max_with_f16_mask_broadcast_and_alibi() {
    each_tier("ops::soft_max_with_f16_mask_broadcast_and_alibi", || {
        let mut rng = StdRng::seed_from_u64(3);
        let (n, rows, heads) = (33, 5, 4);
        let x = random_f32(&mut rng, n * rows * heads, 4.0);
        let mask: Vec<f16> = (0..n * rows)
            .map(|i| {
                if i % 7 == 3 {
                    f16::NEG_INFINITY
                } else {
                    f16::from_f32(rng.gen_range(-1.0..0.0))
                }
            })
            .collect();
        let (mut xb, mut mb, mut ob) = (
            Buf::zeroed(x.len() * 4),
            Buf::zeroed(mask.len() * 2),
            Buf::zeroed(x.len() * 4),
        );
        xb.f32s()[..x.len()].copy_from_slice(&x);
        for (i, m) in mask.iter().enumerate() {
            mb.bytes()[2 * i..2 * i + 2].copy_from_slice(&m.to_bits().to_le_bytes());
        }
        let tx = contiguous(DType::F32, [n, rows, heads, 1], &mut xb);
        let tm = contiguous(DType::F16, [n, rows, 1, 1], &mut mb);
        let to = contiguous(DType::F32, [n, rows, heads, 1], &mut ob);
        run(
            &[node(
                Op::SoftMax {
                    scale: 0.7,
                    max_bias: 8.0,
                },
                to,
                &[tx, tm],
            )],
            2,
        );
        for h in 0..heads {
            let slope = super::alibi_slope(8.0, heads, h) as f64;
            for r in 0..rows {
                let w: Vec<f64> = (0..n)
                    .map(|i| x[(h * rows + r) * n + i] as f64 * 0.7 + slope * mask[r * n + i].to_f64())
                    .collect();
                let mx = w.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let s: f64 = w.iter().map(|v| (v - mx).exp()).sum();
                for i in 0..n {
                    let want = (w[i] - mx).exp() / s;
                    assert!((ob.f32s()[(h * rows + r) * n + i] as f64 - want).abs() < 1e-5);
                }
            }
        }
    });
}

#[test]
fn rope_normal_and_neox_match_the_rotation_formula() {
    each_tier("ops::rope_normal_and_neox_match_the_rotation_formula", || {
        let mut rng = StdRng::seed_from_u64(4);
        let (d, heads, toks) = (16, 3, 5);
        for mode in [super::rope::MODE_NORMAL, super::rope::MODE_NEOX] {
            let x = random_f32(&mut rng, d * heads * toks, 1.0);
            let pos: Vec<i32> = vec![0, 3, 7, 100, 2047];
            let ff: Vec<f32> = (0..d / 2).map(|i| 1.0 + i as f32 * 0.5).collect();
            let (mut xb, mut pb, mut fb, mut ob) = (
                Buf::zeroed(x.len() * 4),
                Buf::zeroed(20),
                Buf::zeroed(ff.len() * 4),
                Buf::zeroed(x.len() * 4),
            );
            xb.f32s()[..x.len()].copy_from_slice(&x);
            for (i, p) in pos.iter().enumerate() {
                pb.bytes()[4 * i..4 * i + 4].copy_from_slice(&p.to_le_bytes());
            }
            fb.f32s()[..ff.len()].copy_from_slice(&ff);
            let p = RopeParams {
                n_dims: 12,
                mode,
                n_ctx_orig: 4096,
                freq_base: 10000.0,
                freq_scale: 1.0,
                ext_factor: 0.0,
                attn_factor: 1.0,
                beta_fast: 32.0,
                beta_slow: 1.0,
                n_offs: 0,
                backward: false,
            };
            let tx = contiguous(DType::F32, [d, heads, toks, 1], &mut xb);
            let tp = contiguous(DType::I32, [toks, 1, 1, 1], &mut pb);
            let tf = contiguous(DType::F32, [d / 2, 1, 1, 1], &mut fb);
            let to = contiguous(DType::F32, [d, heads, toks, 1], &mut ob);
            run(&[node(Op::Rope(p), to, &[tx, tp, tf])], 2);
            for t in 0..toks {
                for h in 0..heads {
                    let row = &x[(t * heads + h) * d..][..d];
                    let got = &ob.f32s()[(t * heads + h) * d..][..d];
                    for i in 0..6 {
                        let theta =
                            pos[t] as f64 * 10000f64.powf(-2.0 * i as f64 / 12.0) / ff[i] as f64;
                        let (j0, j1) = if mode == super::rope::MODE_NEOX {
                            (i, i + 6)
                        } else {
                            (2 * i, 2 * i + 1)
                        };
                        let (a, b) = (row[j0] as f64, row[j1] as f64);
                        assert!(
                            (got[j0] as f64 - (a * theta.cos() - b * theta.sin())).abs() < 2e-4,
                            "mode {mode} t {t} i {i}"
                        );
                        assert!((got[j1] as f64 - (a * theta.sin() + b * theta.cos())).abs() < 2e-4);
                    }
                    assert_eq!(&got[12..], &row[12..], "channels past n_dims pass through");
                }
            }
        }
    });
}

/// Both paths: per query row (few queries, or dv not whole vectors) and blocked (16 or more
/// queries: partial query and key blocks, key blocks hidden by the causal mask, soft-capping).
#[test]
fn flash_attn_matches_softmax_attention_with_gqa_mask_and_sinks() {
    let _lock = ATTN_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    each_tier("ops::flash_attn_matches_softmax_attention_with_gqa_mask_and_sinks", || {
        for &(dk, dv, n_q, n_kv, hq, hkv, softcap) in &[
            (40, 24, 3, 13, 4, 2, 0.0f32),
            (40, 24, 20, 13, 4, 2, 0.0),
            (64, 48, 37, 75, 4, 2, 0.0),
            (64, 32, 16, 16, 2, 1, 0.0),
            (32, 16, 33, 70, 2, 2, 5.0),
        ] {
            flash_attn_case(dk, dv, n_q, n_kv, hq, hkv, softcap, None, 2);
        }
    });
}

/// Prefill attention on the AMX tiles (split bf16 operands), odd query and key counts,
/// GQA, a causal mask, sinks and soft-capping, against the same f64 reference.
#[cfg(target_arch = "x86_64")]
#[test]
fn flash_attn_on_amx_tiles_matches_softmax_attention() {
    let ks = registry::active();
    if ks.matrix != Some(registry::MatrixUnit::Amx) || !crate::kernels::amx::available() {
        eprintln!("SKIP: no AMX on this CPU");
        return;
    }
    // The form is process-wide: no other attention test runs meanwhile.
    let _lock = ATTN_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    super::attention::test_form::set(Some(true));
    for &(dk, dv, n_q, n_kv, hq, hkv, softcap) in &[
        (64, 48, 37, 75, 4, 2, 0.0f32),
        (64, 32, 16, 16, 2, 1, 0.0),
        (32, 16, 33, 70, 2, 2, 5.0),
        (128, 128, 40, 130, 4, 1, 0.0),
        (96, 80, 17, 200, 2, 2, 0.0),
    ] {
        flash_attn_case(dk, dv, n_q, n_kv, hq, hkv, softcap, Some(ks), 2);
    }
    super::attention::test_form::set(None);
}

/// One FLASH_ATTN_EXT node on `threads` threads against an f64 softmax reference (mask,
/// sinks, GQA); returns the output's bits.
#[allow(clippy::too_many_arguments)]
fn flash_attn_case(dk: usize, dv: usize, n_q: usize, n_kv: usize, hq: usize, hkv: usize, softcap: f32, tiles: Option<&'static KernelSet>, threads: usize) -> Vec<u32> {
    flash_attn_case_hiding(dk, dv, n_q, n_kv, hq, hkv, softcap, tiles, threads, 0, false)
}

/// As [`flash_attn_case`], the first `hidden` keys masked from every query (a sliding
/// window's start); with `cells`, K and V as llama.cpp's cache holds them (a cell's heads
/// side by side, the node's K and V strided views of it).
#[allow(clippy::too_many_arguments)]
fn flash_attn_case_hiding(dk: usize, dv: usize, n_q: usize, n_kv: usize, hq: usize, hkv: usize, softcap: f32, tiles: Option<&'static KernelSet>, threads: usize, hidden: usize, cells: bool) -> Vec<u32> {
    let mut rng = StdRng::seed_from_u64(5);
    // Causal like llama.cpp's: query i sees keys up to n_kv - n_q + i (the last n_q are new).
    let past = n_kv.saturating_sub(n_q);
    let q = random_f32(&mut rng, dk * n_q * hq, 1.0);
    let k: Vec<f16> = (0..dk * n_kv * hkv)
        .map(|_| f16::from_f32(rng.gen_range(-1.0..1.0)))
        .collect();
    let v: Vec<f16> = (0..dv * n_kv * hkv)
        .map(|_| f16::from_f32(rng.gen_range(-1.0..1.0)))
        .collect();
    let mask: Vec<f16> = (0..n_kv * n_q)
        .map(|i| {
            if (i % n_kv) > past + i / n_kv || i % n_kv < hidden {
                f16::NEG_INFINITY
            } else {
                f16::ZERO
            }
        })
        .collect();
    let sinks: Vec<f32> = (0..hq).map(|h| h as f32 * 0.3 - 0.5).collect();
    let put16 = |b: &mut Buf, xs: &[f16]| {
        for (i, x) in xs.iter().enumerate() {
            b.bytes()[2 * i..2 * i + 2].copy_from_slice(&x.to_bits().to_le_bytes())
        }
    };
    let (mut qb, mut kb, mut vb, mut mb, mut sb, mut ob) = (
        Buf::zeroed(q.len() * 4),
        Buf::zeroed(k.len() * 2),
        Buf::zeroed(v.len() * 2),
        Buf::zeroed(mask.len() * 2),
        Buf::zeroed(16),
        Buf::zeroed(dv * hq * n_q * 4),
    );
    qb.f32s()[..q.len()].copy_from_slice(&q);
    // Logical K and V are [head][key][channel]; in cells, [key][head][channel].
    let to_cells = |xs: &[f16], d: usize| -> Vec<f16> {
        if !cells {
            return xs.to_vec();
        }
        (0..n_kv * hkv * d).map(|i| {
            let (j, h, c) = (i / (hkv * d), (i / d) % hkv, i % d);
            xs[(h * n_kv + j) * d + c]
        }).collect()
    };
    put16(&mut kb, &to_cells(&k, dk));
    put16(&mut vb, &to_cells(&v, dv));
    put16(&mut mb, &mask);
    sb.f32s()[..hq].copy_from_slice(&sinks);
    let tq = contiguous(DType::F32, [dk, n_q, hq, 1], &mut qb);
    let cell_view = |t: TensorRef, d: usize| if cells { TensorRef { nb: [2, 2 * d * hkv, 2 * d, 2 * d * hkv * n_kv], ..t } } else { t };
    let tk = cell_view(contiguous(DType::F16, [dk, n_kv, hkv, 1], &mut kb), dk);
    let tv = cell_view(contiguous(DType::F16, [dv, n_kv, hkv, 1], &mut vb), dv);
    let tm = contiguous(DType::F16, [n_kv, n_q, 1, 1], &mut mb);
    let ts = contiguous(DType::F32, [hq, 1, 1, 1], &mut sb);
    let to = contiguous(DType::F32, [dv, hq, n_q, 1], &mut ob);
    let scale = 0.2;
    let nd = node(Op::FlashAttn { scale, max_bias: 0.0, softcap }, to, &[tq, tk, tv, tm, ts]);
    match tiles {
        None => {
            let mut ex = executor(threads);
            ex.compute(&[nd]).expect("graph failed");
            LAST_ATTN_REPORT.with(|r| r.set(ex.report_of(0)));
        }
        Some(ks) => {
            assert!(super::attention::takes_tile_path(&nd, ks), "dk {dk} dv {dv}: not on the tiles");
            Executor::with_kernels(threads, ks).compute(&[nd]).expect("graph failed");
        }
    }
    for h in 0..hq {
        let hk = h / (hq / hkv);
        for i in 0..n_q {
            let qrow: Vec<f64> = q[(h * n_q + i) * dk..][..dk]
                .iter()
                .map(|&x| f16::from_f32(x).to_f64())
                .collect();
            let s: Vec<f64> = (0..n_kv)
                .map(|j| {
                    let kr = &k[(hk * n_kv + j) * dk..][..dk];
                    let x = qrow.iter().zip(kr).map(|(a, b)| a * b.to_f64()).sum::<f64>() * scale as f64;
                    let x = if softcap != 0.0 { softcap as f64 * (x / softcap as f64).tanh() } else { x };
                    x + mask[i * n_kv + j].to_f64()
                })
                .collect();
            let mx = s.iter().cloned().fold(sinks[h] as f64, f64::max);
            let w: Vec<f64> = s.iter().map(|x| (x - mx).exp()).collect();
            let denom = w.iter().sum::<f64>() + (sinks[h] as f64 - mx).exp();
            for c in 0..dv {
                let want: f64 = (0..n_kv)
                    .map(|j| w[j] * v[(hk * n_kv + j) * dv + c].to_f64())
                    .sum::<f64>()
                    / denom;
                let got = ob.f32s()[(i * hq + h) * dv + c] as f64;
                assert!(
                    (got - want).abs() < 1e-3,
                    "dk {dk} n_q {n_q} n_kv {n_kv}: h {h} q {i} c {c}: {got} vs {want}"
                );
            }
        }
    }
    ob.f32s()[..dv * hq * n_q].iter().map(|x| x.to_bits()).collect()
}

thread_local! {
    /// What the last FLASH_ATTN_EXT node of `flash_attn_case_hiding` reported (its schedule).
    static LAST_ATTN_REPORT: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Prefill attention reads the cache in place, in tasks of query blocks that share each
/// converted tile of keys; its two schedules, every thread on every stage or pairs of
/// threads with the matrix stages on one and softmax on the other (and an odd thread on
/// its own), give the same bits as one thread, for GQA groups of 1 to 4, partial query and
/// key blocks, several tasks per head group, keys the mask hides from every query (whole
/// tiles of them skipped, and query rows that see no key at all), soft-capping, and K / V
/// in either cache layout; in ggml's arithmetic and (on three shapes) the batch-invariant
/// one. The report says which schedule ran.
#[test]
fn prefill_attention_schedules_give_the_same_bits() {
    let _lock = ATTN_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let _reset = AttnReset;
    for invariant in [false, true] {
        super::attention::test_invariant::set(Some(invariant));
        schedules_give_the_same_bits(invariant);
    }
}

/// Back to the configuration's attention schedule and form however a test ends.
struct AttnReset;
impl Drop for AttnReset {
    fn drop(&mut self) {
        super::attention::test_schedule::set(None);
        super::attention::test_invariant::set(None);
    }
}

fn schedules_give_the_same_bits(invariant: bool) {
    use super::attention::test_schedule;
    use crate::config::AttnSchedule;
    each_tier("ops::prefill_attention_schedules_give_the_same_bits", || {
        let blocked = tier_set().attn.blocked;
        let shapes = [
            (64, 48, 37, 75, 4, 2, 0),
            (64, 32, 16, 16, 2, 1, 0),
            (32, 16, 130, 400, 6, 2, 70),
            (128, 128, 40, 130, 4, 1, 0),
            (64, 64, 100, 700, 8, 2, 130),
            // Query rows 0 .. 21 see only keys the mask hides.
            (64, 64, 37, 75, 4, 2, 60),
        ];
        // The invariant form on three of them, hidden tiles and rows among them (the
        // schedules' code is shared; emulated Arm runs are slow).
        for (_, &(dk, dv, n_q, n_kv, hq, hkv, hidden)) in shapes.iter().enumerate().filter(|(i, _)| !invariant || [0, 2, 5].contains(i)) {
            test_schedule::set(Some(AttnSchedule::Parallel));
            let alone = flash_attn_case_hiding(dk, dv, n_q, n_kv, hq, hkv, 0.0, None, 1, hidden, false);
            for (threads, schedule, cells) in [
                (2, AttnSchedule::Parallel, false),
                (2, AttnSchedule::Pipelined, false),
                (3, AttnSchedule::Pipelined, true),
                (4, AttnSchedule::Pipelined, false),
                (5, AttnSchedule::Parallel, true),
            ] {
                test_schedule::set(Some(schedule));
                let got = flash_attn_case_hiding(dk, dv, n_q, n_kv, hq, hkv, 0.0, None, threads, hidden, cells);
                assert!(got == alone, "dk {dk} n_q {n_q} n_kv {n_kv} heads {hq}/{hkv}, {threads} threads {schedule:?} cells {cells}, invariant {invariant}: bits differ from one thread's");
                let ran = LAST_ATTN_REPORT.with(|r| r.get()) >> 62;
                let want = if !blocked { 0 } else if schedule == AttnSchedule::Pipelined { 2 } else { 1 };
                assert_eq!(ran, want, "{threads} threads {schedule:?}: the schedule that ran");
            }
        }
        // Soft-capping, pipelined.
        test_schedule::set(Some(AttnSchedule::Parallel));
        let alone = flash_attn_case(32, 16, 33, 70, 2, 2, 5.0, None, 1);
        test_schedule::set(Some(AttnSchedule::Pipelined));
        assert!(flash_attn_case(32, 16, 33, 70, 2, 2, 5.0, None, 2) == alone, "soft-capped, pipelined");
        test_schedule::set(None);
    });
}

/// One FLASH_ATTN_EXT node over the given query rows (`q`: per head, per row, dk f32), f16
/// K and V ([head][key][channel]) and mask rows (one per query row, n_kv f16 bits), with
/// sinks; its output as [dv, hq, n_q] f32 bits.
#[allow(clippy::too_many_arguments)]
fn flash_attn_rows(q: &[f32], k: &[f16], v: &[f16], mask: &[u16], dk: usize, dv: usize, hq: usize, hkv: usize, softcap: f32, threads: usize) -> Vec<u32> {
    let n_q = q.len() / (dk * hq);
    let n_kv = k.len() / (dk * hkv);
    let (mut qb, mut kb, mut vb, mut mb, mut sb, mut ob) =
        (Buf::zeroed(q.len() * 4), Buf::zeroed(k.len() * 2), Buf::zeroed(v.len() * 2), Buf::zeroed(mask.len() * 2), Buf::zeroed(4 * hq), Buf::zeroed(dv * hq * n_q * 4));
    qb.f32s()[..q.len()].copy_from_slice(q);
    for (i, x) in k.iter().enumerate() {
        kb.bytes()[2 * i..2 * i + 2].copy_from_slice(&x.to_bits().to_le_bytes());
    }
    for (i, x) in v.iter().enumerate() {
        vb.bytes()[2 * i..2 * i + 2].copy_from_slice(&x.to_bits().to_le_bytes());
    }
    for (i, x) in mask.iter().enumerate() {
        mb.bytes()[2 * i..2 * i + 2].copy_from_slice(&x.to_le_bytes());
    }
    for h in 0..hq {
        sb.f32s()[h] = h as f32 * 0.3 - 0.5;
    }
    let tq = contiguous(DType::F32, [dk, n_q, hq, 1], &mut qb);
    let tk = contiguous(DType::F16, [dk, n_kv, hkv, 1], &mut kb);
    let tv = contiguous(DType::F16, [dv, n_kv, hkv, 1], &mut vb);
    let tm = contiguous(DType::F16, [n_kv, n_q, 1, 1], &mut mb);
    let ts = contiguous(DType::F32, [hq, 1, 1, 1], &mut sb);
    let to = contiguous(DType::F32, [dv, hq, n_q, 1], &mut ob);
    let nd = node(Op::FlashAttn { scale: 0.2, max_bias: 0.0, softcap }, to, &[tq, tk, tv, tm, ts]);
    executor(threads).compute(&[nd]).expect("graph failed");
    ob.f32s()[..dv * hq * n_q].iter().map(|x| x.to_bits()).collect()
}

/// Batch invariance (SMEPILOT_BATCH_INVARIANT=1): a query row's output does not depend on
/// the other rows of the node (the streamed path with 16 or more of them, the per-row path
/// with fewer, in blocks that start anywhere), on the thread count, or on keys past its
/// own that the view reaches but the mask hides (llama.cpp pads the cache view, by how much
/// depends on the other sequences of the batch). Soft-capped or not, GQA groups of 1 and 3,
/// head sizes with and without a tail past the last eight channels.
#[test]
fn attention_rows_do_not_depend_on_the_batch() {
    let _lock = ATTN_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let _reset = AttnReset;
    super::attention::test_invariant::set(Some(true));
    each_tier("ops::attention_rows_do_not_depend_on_the_batch", || {
        let mut rng = StdRng::seed_from_u64(41);
        for &(dk, dv, hq, hkv, softcap) in &[(64, 64, 6, 2, 0.0), (40, 32, 2, 2, 5.0), (68, 48, 3, 1, 0.0)] {
            let (n_q, past, pad) = (40, 150, 90);
            let n_kv = past + n_q;
            let q = random_f32(&mut rng, dk * n_q * hq, 1.0);
            let k: Vec<f16> = (0..dk * (n_kv + pad) * hkv).map(|_| f16::from_f32(rng.gen_range(-1.0..1.0))).collect();
            let v: Vec<f16> = (0..dv * (n_kv + pad) * hkv).map(|_| f16::from_f32(rng.gen_range(-1.0..1.0))).collect();
            // Rows `rows` of the batch over the first `keys` keys (causal: row i sees keys up
            // to past + i), as one node.
            let run = |rows: std::ops::Range<usize>, keys: usize, threads: usize| -> Vec<u32> {
                let qs: Vec<f32> = (0..hq).flat_map(|h| rows.clone().flat_map(move |i| (0..dk).map(move |d| (h, i, d)))).map(|(h, i, d)| q[(h * n_q + i) * dk + d]).collect();
                let kv = |x: &[f16], d: usize| -> Vec<f16> { (0..hkv).flat_map(|h| x[h * (n_kv + pad) * d..][..keys * d].to_vec()).collect() };
                let mask: Vec<u16> = rows.clone().flat_map(|i| (0..keys).map(move |j| if j > past + i { f16::NEG_INFINITY.to_bits() } else { 0 })).collect();
                flash_attn_rows(&qs, &kv(&k, dk), &kv(&v, dv), &mask, dk, dv, hq, hkv, softcap, threads)
            };
            // Row i of a run over rows r0.. : head h's output.
            let row = |out: &[u32], r0: usize, i: usize| -> Vec<u32> { (0..hq).flat_map(|h| out[((i - r0) * hq + h) * dv..][..dv].to_vec()).collect() };
            let whole = run(0..n_q, n_kv, 2);
            for (rows, keys, threads) in [(3..4, n_kv, 1), (3..4, n_kv + pad, 2), (1..20, n_kv, 3), (0..5, n_kv + pad, 2), (2..n_q, n_kv + pad, 1), (35..n_q, n_kv, 2)] {
                let got = run(rows.clone(), keys, threads);
                for i in rows.clone().filter(|&i| i == 3 || i == 4 || i == 19 || i == 37) {
                    assert!(row(&got, rows.start, i) == row(&whole, 0, i), "dk {dk} heads {hq}/{hkv} softcap {softcap}: row {i} among rows {rows:?} over {keys} keys, {threads} threads, differs from the whole batch's");
                }
            }
        }
    });
}

/// Decode attention (the per-row path) runs the query heads sharing a K/V head together,
/// reading each K and V row once for all of them, keys in chunks whose softmax states merge
/// in order. The chunks are split across threads where row-groups are few against the
/// threads, and a thread runs its row-groups' chunks in turn otherwise (one thread over the
/// six row-groups of three queries). The bits are the same either way, whatever the threads
/// and whether K and V are laid out per head or as llama.cpp's cache cells (every head of a
/// cell side by side), for GQA groups of 8, 3 and 1, one or three queries, one chunk or
/// several, and a first chunk the mask hides from every query.
#[test]
fn decode_attention_shares_kv_rows_without_changing_bits() {
    let _lock = ATTN_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    each_tier("ops::decode_attention_gqa", || {
        for &(n_kv, hidden) in &[(45, 0), (600, 0), (600, 300), (2100, 300)] {
            for &(n_q, hq, hkv) in &[(1, 8, 1), (1, 16, 2), (3, 6, 2), (1, 4, 4)] {
                let alone = flash_attn_case_hiding(64, 64, n_q, n_kv, hq, hkv, 0.0, None, 1, hidden, false);
                for (threads, cells) in [(2, false), (3, false), (5, false), (16, false), (1, true), (2, true)] {
                    let got = flash_attn_case_hiding(64, 64, n_q, n_kv, hq, hkv, 0.0, None, threads, hidden, cells);
                    assert!(got == alone, "n_kv {n_kv} n_q {n_q} heads {hq}/{hkv}, {threads} threads, cells {cells}: bits differ from one thread's");
                }
            }
        }
    });
}

/// GET_ROWS of a packed weight (a tied embedding) reads the packed copy: same bits as from
/// ggml's layout, which is left zeroed here so a read of it would show.
#[test]
fn get_rows_of_packed_weights_reads_the_packed_copy() {
    each_tier("ops::get_rows_of_packed_weights_reads_the_packed_copy", || {
        use crate::kernels::packed::{self, Layout, PackedRef};
            let mut rng = StdRng::seed_from_u64(23);
        for ty in [DType::Q4_0, DType::Q4_1, DType::Q8_0, DType::Q4_K, DType::Q6_K] {
            let (n, k) = (48, 3 * 256);
            let raw = random_weights(&mut rng, ty, n, k);
            let layout = Layout::for_weights(ty, k, n).expect("packed layout");
            let mut packed_mem = vec![0u8; raw.len()];
            packed::pack(layout, ty, &raw, &mut packed_mem, n, k);
            let mut wb = Buf::zeroed(raw.len());
            let mut w = contiguous(ty, [k, n, 1, 1], &mut wb);
            w.packed = Some(PackedRef { layout, data: packed_mem.as_ptr(), len: packed_mem.len() });
            let ids: Vec<i32> = vec![47, 0, 17, 31, 17];
            let mut ib = Buf::zeroed(4 * ids.len());
            for (i, v) in ids.iter().enumerate() {
                ib.bytes()[4 * i..4 * i + 4].copy_from_slice(&v.to_le_bytes());
            }
            let ti = contiguous(DType::I32, [ids.len(), 1, 1, 1], &mut ib);
            let mut db = Buf::zeroed(4 * k * ids.len());
            let td = contiguous(DType::F32, [k, ids.len(), 1, 1], &mut db);
            run(&[node(Op::GetRows, td, &[w, ti])], 2);
            let rb = ty.row_bytes(k);
            for (i, &row) in ids.iter().enumerate() {
                let mut want = vec![0f32; k];
                (scalar_kernels(ty).unwrap().to_f32)(&raw[row as usize * rb..(row as usize + 1) * rb], &mut want);
                let got = &db.f32s()[i * k..(i + 1) * k];
                assert!(got.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits()), "{ty:?} row {row}");
            }
        }
    });
}

#[test]
fn get_rows_set_rows_and_transposed_copy() {
    each_tier("ops::get_rows_set_rows_and_transposed_copy", || {
        let mut rng = StdRng::seed_from_u64(6);
        let (n, rows) = (64, 10);
        let src = random_f32(&mut rng, n * rows, 1.0);
        // f32 -> f16 rows at scattered indices (SET_ROWS), then back (GET_ROWS).
        let idx: Vec<i64> = vec![7, 2, 9, 0];
        let (mut sb, mut ib, mut kb, mut gb, mut gi) = (
            Buf::zeroed(src.len() * 4),
            Buf::zeroed(32),
            Buf::zeroed(n * rows * 2),
            Buf::zeroed(n * 4 * 4),
            Buf::zeroed(16),
        );
        sb.f32s()[..src.len()].copy_from_slice(&src);
        for (i, v) in idx.iter().enumerate() {
            ib.bytes()[8 * i..8 * i + 8].copy_from_slice(&v.to_le_bytes());
        }
        let gids: Vec<i32> = vec![9, 7, 0, 2];
        for (i, v) in gids.iter().enumerate() {
            gi.bytes()[4 * i..4 * i + 4].copy_from_slice(&v.to_le_bytes());
        }
        let ts = contiguous(DType::F32, [n, 4, 1, 1], &mut sb);
        let ti = contiguous(DType::I64, [4, 1, 1, 1], &mut ib);
        let tk = contiguous(DType::F16, [n, rows, 1, 1], &mut kb);
        let tgi = contiguous(DType::I32, [4, 1, 1, 1], &mut gi);
        let tg = contiguous(DType::F32, [n, 4, 1, 1], &mut gb);
        run(
            &[
                node(Op::SetRows, tk, &[ts, ti]),
                node(Op::GetRows, tg, &[tk, tgi]),
            ],
            2,
        );
        for (gr, &row) in gids.iter().enumerate() {
            let srow = idx.iter().position(|&i| i == row as i64).unwrap();
            for c in 0..n {
                let want = f16::from_f32(src[srow * n + c]).to_f32();
                assert_eq!(gb.f32s()[gr * n + c], want);
            }
        }
        // A transposed view (nb0 != element size) copied into a contiguous f16 tensor.
        let (r, c) = (5, 7);
        let m = random_f32(&mut rng, r * c, 1.0);
        let (mut mb, mut tb) = (Buf::zeroed(m.len() * 4), Buf::zeroed(m.len() * 2));
        mb.f32s()[..m.len()].copy_from_slice(&m);
        let mt = TensorRef {
            ty: DType::F32,
            ne: [r, c, 1, 1],
            nb: [c * 4, 4, r * c * 4, r * c * 4],
            data: mb.ptr(),
            len: mb.mem.len() * 64,
            packed: None,
        };
        let out = contiguous(DType::F16, [r, c, 1, 1], &mut tb);
        run(&[node(Op::Copy, out, &[mt])], 2);
        for i in 0..r {
            for j in 0..c {
                let got = f16::from_bits(u16::from_le_bytes([
                    tb.bytes()[2 * (j * r + i)],
                    tb.bytes()[2 * (j * r + i) + 1],
                ]));
                assert_eq!(got, f16::from_f32(m[i * c + j]));
            }
        }
    });
}

/// Serializes the tests that run MUL_MAT, since the tile-engine choice is process-wide.
pub(crate) static MUL_MAT_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
/// Held by the attention tests: the tile-form switch they set is process-wide.
static ATTN_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The AMX tile path against scalar references with the same operand rounding: bf16-rounded
/// weights (dequantized) and activations summed in f64 for the default bf16 engine, ggml's
/// activation quantization and the scalar block dot for the int8 engine (Q8_0 / Q4_0 / Q4_1).
/// Odd M, N (partial tiles, pairs and groups), K with a partial 64-element step, strided
/// activations and output, untouched padding.
#[cfg(target_arch = "x86_64")]
#[test]
fn mul_mat_tile_path_matches_scalar_references_on_odd_shapes() {
    use super::matmul::amx::test_engine;
    let applies = |nd: &Node| super::matmul::matrix_feasible(nd, registry::active());
    use crate::kernels::amx;
    let _lock = MUL_MAT_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    if !amx::available() {
        eprintln!("no usable AMX on this machine: tile path not exercised");
        return;
    }
    let mut rng = StdRng::seed_from_u64(11);
    let shapes = [(16, 1, 32), (17, 15, 96), (33, 17, 160), (50, 70, 64), (64, 130, 352), (31, 64, 128), (40, 33, 32), (20, 81, 256), (47, 40, 512)];
    let cases = [
        (DType::Q8_0, true), (DType::Q4_0, true), (DType::Q4_1, true), (DType::Q4_K, true), (DType::Q5_K, true),
        (DType::Q8_0, false), (DType::Q4_0, false), (DType::Q4_1, false), (DType::Q4_K, false),
        (DType::Q5_K, false), (DType::Q6_K, false), (DType::BF16, false), (DType::F16, false),
    ];
    for (ty, int8) in cases {
        test_engine::set(Some(int8));
        for &(m, n, k) in shapes.iter().filter(|s| s.2 % ty.block_size() == 0) {
            let w_bytes = random_weights(&mut rng, ty, n, k);
            let mut wb = Buf::zeroed(w_bytes.len());
            wb.bytes()[..w_bytes.len()].copy_from_slice(&w_bytes);
            let w = contiguous(ty, [k, n, 1, 1], &mut wb);
            let (xs_stride, d_stride) = (k + 5, n + 3);
            let xs = random_f32(&mut rng, xs_stride * m, 1.0);
            let mut xb = Buf::zeroed(xs.len() * 4);
            xb.f32s()[..xs.len()].copy_from_slice(&xs);
            let x = TensorRef {
                ty: DType::F32,
                ne: [k, m, 1, 1],
                nb: [4, xs_stride * 4, xs_stride * 4 * m, xs_stride * 4 * m],
                data: xb.ptr(),
                len: xb.mem.len() * 64,
                packed: None,
            };
            let mut db = Buf::zeroed(d_stride * m * 4);
            let d = TensorRef {
                ty: DType::F32,
                ne: [n, m, 1, 1],
                nb: [4, d_stride * 4, d_stride * 4 * m, d_stride * 4 * m],
                data: db.ptr(),
                len: db.mem.len() * 64,
                packed: None,
            };
            let nd = node(Op::MulMat, d, &[w, x]);
            assert!(applies(&nd), "{ty:?} {m}x{n}x{k}: tile path not taken");
            run(&[nd], 2);

            let rb = ty.row_bytes(k);
            let sk = scalar_kernels(ty).unwrap();
            for r in 0..m {
                let xrow = &xs[r * xs_stride..][..k];
                // K-quants on the int8 engine: activations quantized as ggml's Q8_K, products
                // per 32-element sub-block, so the reference is the f64 sum of the
                // dequantized weights times the dequantized Q8_K activations.
                let k_int8 = int8 && ty.block_size() == 256;
                let a_q8_1: Vec<f64> = if k_int8 { q8_k_dequantized(xrow) } else { Vec::new() };
                let act_q = (int8 && !k_int8).then(|| {
                    let vdt = sk.vec_dot_type;
                    let mut a = vec![0u8; vdt.row_bytes(k)];
                    (scalar_kernels(vdt).unwrap().from_f32.unwrap())(xrow, &mut a);
                    a
                });
                for c in 0..n {
                    let wrow = &w_bytes[c * rb..(c + 1) * rb];
                    let (want, mag) = match &act_q {
                        _ if k_int8 => {
                            let mut wf = vec![0f32; k];
                            (sk.to_f32)(wrow, &mut wf);
                            let s = wf.iter().zip(&a_q8_1).fold((0f64, 0f64), |s, (&w, &a)| (s.0 + w as f64 * a, s.1 + (w as f64 * a).abs()));
                            // f32 accumulation: 1e-5 of the magnitude; a wrong nibble or
                            // scale moves it by percents.
                            (s.0, s.1)
                        }
                        Some(a) => ((sk.vec_dot.unwrap())(k, wrow, a) as f64, k as f64 * 0.05),
                        None => {
                            let mut wf = vec![0f32; k];
                            (sk.to_f32)(wrow, &mut wf);
                            let mut s = (0f64, 0f64);
                            for (&a, &b) in wf.iter().zip(&bf16_engine_acts(ty, xrow)) {
                                let p = bf16::from_f32(a).to_f64() * bf16::from_f32(b).to_f64();
                                s = (s.0 + p, s.1 + p.abs());
                            }
                            s
                        }
                    };
                    let got = db.f32s()[r * d_stride + c] as f64;
                    assert!(
                        (got - want).abs() <= 1e-5 * mag.max(1e-3),
                        "{ty:?} int8={int8} {m}x{n}x{k} at ({r},{c}): got {got}, want {want}"
                    );
                }
                // Padding between rows of the output stays untouched.
                assert!(db.f32s()[r * d_stride + n..(r + 1) * d_stride].iter().all(|&v| v == 0.0));
            }
        }
    }
    test_engine::set(None);
}

/// The tile path runs on the caller's thread (pool thread 0), which llama.cpp's CPU backend
/// also uses for its own AMX kernels: a configuration found there must be left in place, and
/// a thread without one must be left without one.
#[cfg(target_arch = "x86_64")]
#[test]
fn mul_mat_tile_path_restores_the_callers_tile_configuration() {
    use crate::kernels::amx::{self, tile};
    let _lock = MUL_MAT_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    if !amx::available() {
        return;
    }
    let mut rng = StdRng::seed_from_u64(2);
    let (m, n, k) = (32, 32, 64);
    let w_bytes = random_weights(&mut rng, DType::BF16, n, k);
    let mut wb = Buf::zeroed(w_bytes.len());
    wb.bytes()[..w_bytes.len()].copy_from_slice(&w_bytes);
    let w = contiguous(DType::BF16, [k, n, 1, 1], &mut wb);
    let mut xb = Buf::zeroed(m * k * 4);
    xb.f32s()[..m * k].copy_from_slice(&random_f32(&mut rng, m * k, 1.0));
    let x = contiguous(DType::F32, [k, m, 1, 1], &mut xb);
    let mut db = Buf::zeroed(m * n * 4);
    let d = contiguous(DType::F32, [n, m, 1, 1], &mut db);
    let nd = node(Op::MulMat, d, &[w, x]);
    assert!(super::matmul::matrix_feasible(&nd, registry::active()));
    let mut exec = Executor::new(1); // thread 0 only: the test's own thread
    let foreign = tile::TileConfig::new().with(0, 8, 32).with(3, 16, 64);
    // SAFETY: amx::available() holds.
    unsafe {
        foreign.load();
        exec.compute(std::slice::from_ref(&nd)).expect("graph failed");
        let after = tile::current();
        assert_eq!(format!("{after:?}"), format!("{foreign:?}"), "foreign configuration not restored");
        tile::release();
        exec.compute(std::slice::from_ref(&nd)).expect("graph failed");
        assert_eq!(format!("{:?}", tile::current()), format!("{:?}", tile::TileConfig::default()), "tiles left configured");
    }
}

/// MUL_MAT in every planner mode (vector kernels, tile path, both at once) for every packed
/// layout and the unpacked types, against ggml's scalar block dot (vector) or bf16-rounded
/// operands (tile path) on the unpacked weights. The plain copy of packed weights is
/// zeroed, so a kernel that read it instead would fail.
#[test]
fn mul_mat_every_mode_packed_and_plain_weights() {
    log_tiers_run("ops::mul_mat matrix+coop, reference engine", KernelSet::with_reference_engine().iter().map(|s| s.name));
    each_tier("ops::mul_mat_every_mode_packed_and_plain_weights", || {
        use crate::kernels::packed::{self, Layout, PackedRef};
        let _lock = MUL_MAT_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let mut rng = StdRng::seed_from_u64(19);
        // 256 rows: four 64-row groups, so both sides of a coop run take some.
        let shapes = [(1, 16, 1), (3, 48, 5), (15, 32, 3), (1, 64, 32), (16, 32, 2), (33, 48, 3), (5, 256, 2), (33, 256, 1)];
        let types = [DType::Q4_0, DType::Q8_0, DType::Q4_K, DType::Q6_K, DType::BF16, DType::F16, DType::Q4_1, DType::Q5_K];
        for (ty, &(m, n, blocks)) in types.into_iter().flat_map(|t| shapes.iter().map(move |s| (t, s))) {
            let k = blocks * ty.block_size();
            let raw = random_weights(&mut rng, ty, n, k);
            let mut packed_mem = vec![0u8; raw.len()];
            let layout = Layout::for_weights(ty, k, n);
            let mut wb = Buf::zeroed(raw.len());
            if let Some(l) = layout {
                packed::pack(l, ty, &raw, &mut packed_mem, n, k); // ggml's layout left zero on purpose
            } else {
                wb.bytes()[..raw.len()].copy_from_slice(&raw);
            }
            let mut w = contiguous(ty, [k, n, 1, 1], &mut wb);
            w.packed = layout.map(|l| PackedRef { layout: l, data: packed_mem.as_ptr(), len: packed_mem.len() });
            let xs = random_f32(&mut rng, m * k, 1.0);
            let mut xb = Buf::zeroed(xs.len() * 4);
            xb.f32s()[..xs.len()].copy_from_slice(&xs);
            let x = contiguous(DType::F32, [k, m, 1, 1], &mut xb);
            let mut db = Buf::zeroed(m * n * 4);
            let d = contiguous(DType::F32, [n, m, 1, 1], &mut db);
            let nd = node(Op::MulMat, d, &[w, x]);
            // Every mode that can run this product: the vector kernels, the tile path, and both
            // at once (each output column then matches one of the two references).
            // Both tile engines: bf16, and int8 (Q4_1, Q4_0, Q8_0, packed or not), which matrix
            // runs and coop's tile side take, each with a scratch layout of its own.
            // The vector kernels once; the tile modes on each matrix engine (the reference
            // engine on every tier; AMX, where present, with both its tile kernels).
            db.bytes().fill(0);
            executor(2).compute_with_plans(&[nd], &[Plan::forced(Mode::Vector, 1)]).expect("graph failed");
            check_packed_product(ty, m, n, k, &raw, &xs, db.f32s(), Mode::Vector, TileRef::Bf16);
            for ks in matrix_sets() {
                let unit = ks.matrix.expect("matrix sets drive a unit");
                let amx = unit == crate::kernels::registry::MatrixUnit::Amx;
                let sme = matches!(unit, crate::kernels::registry::MatrixUnit::Sme(_));
                let engines: &[Option<bool>] = if amx || sme { &[Some(false), Some(true)] } else { &[None] };
                for &engine in engines {
                    #[cfg(target_arch = "x86_64")]
                    super::matmul::amx::test_engine::set(engine);
                    #[cfg(target_arch = "aarch64")]
                    super::matmul::sme::test_engine::set(engine);
                    if !super::matmul::matrix_feasible(&nd, ks) {
                        continue;
                    }
                    for mode in [Mode::Matrix, Mode::Coop] {
                        // Matrix runs with one unit driver (a shared unit) and with both.
                        for drivers in if mode == Mode::Matrix { 1..=2 } else { 1..=1 } {
                            db.bytes().fill(f32::NAN.to_bits() as u8);
                            Executor::with_kernels(2, ks).compute_with_plans(&[nd], &[Plan::forced(mode, drivers)]).expect("graph failed");
                            // SME's int8 kernel takes the types `sme::int8_engine` names.
                            #[cfg(target_arch = "aarch64")]
                            let int8 = engine == Some(true) && (!sme || super::matmul::sme::int8_engine(ty, matches!(unit, crate::kernels::registry::MatrixUnit::Sme(u) if u.sme2))) && matches!(ty, DType::Q4_0 | DType::Q8_0 | DType::Q4_1);
                            #[cfg(not(target_arch = "aarch64"))]
                            let int8 = engine == Some(true) && matches!(ty, DType::Q4_0 | DType::Q8_0 | DType::Q4_1);
                            // The K-quants' int8 tile products take activations as Q8_K.
                            let k_int8 = amx && engine == Some(true) && matches!(ty, DType::Q4_K | DType::Q5_K | DType::Q6_K);
                            let tile = match () {
                                _ if k_int8 => TileRef::KInt8,
                                _ if sme => TileRef::SmeScaled,
                                _ => TileRef::Bf16,
                            };
                            // The int8 engines and the reference engine quantize activations as
                            // the vector kernels do.
                            let want = if int8 || !(amx || sme) { Mode::Vector } else { mode };
                            check_packed_product(ty, m, n, k, &raw, &xs, db.f32s(), want, tile);
                        }
                    }
                }
                #[cfg(target_arch = "x86_64")]
                super::matmul::amx::test_engine::set(None);
                #[cfg(target_arch = "aarch64")]
                super::matmul::sme::test_engine::set(None);
            }
        }
    });
}

/// AMX's K-quant super-block kernel on weights in ggml's own layout (no packed copy: rows
/// not a multiple of 16), odd row counts and a partial last column tile, in matrix mode with
/// one and two drivers and in coop, against Q8_K activations and the dequantized weights.
#[cfg(target_arch = "x86_64")]
#[test]
fn amx_k_quant_kernel_on_plain_weights() {
    if !crate::kernels::amx::available() {
        eprintln!("SKIP: no AMX on this CPU");
        return;
    }
    let _lock = MUL_MAT_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let mut rng = StdRng::seed_from_u64(29);
    let ks = registry::active();
    super::matmul::amx::test_engine::set(Some(true));
    for ty in [DType::Q4_K, DType::Q5_K, DType::Q6_K] {
        for &(m, n, nsb) in &[(17, 19, 2), (33, 35, 1), (2, 50, 3)] {
            let k = nsb * 256;
            let raw = random_weights(&mut rng, ty, n, k);
            let mut wb = Buf::zeroed(raw.len());
            wb.bytes()[..raw.len()].copy_from_slice(&raw);
            let w = contiguous(ty, [k, n, 1, 1], &mut wb);
            let xs = random_f32(&mut rng, m * k, 1.0);
            let mut xb = Buf::zeroed(xs.len() * 4);
            xb.f32s()[..xs.len()].copy_from_slice(&xs);
            let x = contiguous(DType::F32, [k, m, 1, 1], &mut xb);
            let mut db = Buf::zeroed(m * n * 4);
            let d = contiguous(DType::F32, [n, m, 1, 1], &mut db);
            let nd = node(Op::MulMat, d, &[w, x]);
            assert!(super::matmul::matrix_feasible(&nd, ks), "{ty:?} on the tiles");
            for (mode, drivers) in [(Mode::Matrix, 1), (Mode::Matrix, 2), (Mode::Coop, 1)] {
                db.bytes().fill(f32::NAN.to_bits() as u8);
                Executor::with_kernels(2, ks).compute_with_plans(&[nd], &[Plan::forced(mode, drivers)]).expect("graph failed");
                check_packed_product(ty, m, n, k, &raw, &xs, db.f32s(), mode, TileRef::KInt8);
            }
        }
    }
    super::matmul::amx::test_engine::set(None);
}

/// The operand rounding of a tile engine's products.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum TileRef {
    /// bf16 weights and activations (AMX's bf16 engine).
    Bf16,
    /// Activations quantized per 32 as Q8_1 (AMX's int8 engine on K-quants).
    KInt8,
    /// SME's float engine: dequantized weights and the weight type's quantized activations,
    /// both rounded to f16 (BF16 weights: bf16 activations; F32: f32).
    SmeScaled,
}

/// The activations the bf16 tile engine multiplies for weights of `ty` (before its bf16
/// rounding): for quantized weights the values of their ggml activation format, else x.
fn bf16_engine_acts(ty: DType, x: &[f32]) -> Vec<f32> {
    let vdt = scalar_kernels(ty).unwrap().vec_dot_type;
    if matches!(vdt, DType::F32 | DType::F16 | DType::BF16) {
        return x.to_vec();
    }
    let kern = scalar_kernels(vdt).unwrap();
    let mut q = vec![0u8; vdt.row_bytes(x.len())];
    (kern.from_f32.unwrap())(x, &mut q);
    let mut out = vec![0f32; x.len()];
    (kern.to_f32)(&q, &mut out);
    out
}

/// `x` quantized to ggml's Q8_K (per 256), dequantized.
fn q8_k_dequantized(x: &[f32]) -> Vec<f64> {
    let mut a = vec![0u8; DType::Q8_K.row_bytes(x.len())];
    (scalar_kernels(DType::Q8_K).unwrap().from_f32.unwrap())(x, &mut a);
    let bs = DType::Q8_K.block_bytes();
    (0..x.len())
        .map(|i| {
            let sb = &a[i / 256 * bs..];
            f32::from_le_bytes([sb[0], sb[1], sb[2], sb[3]]) as f64 * (sb[4 + i % 256] as i8) as f64
        })
        .collect()
}

/// Checks `got` (m x n) against the references of `mode`: bf16 operands with f32
/// accumulation for the tile path, the weight type's quantized activations for the vector
/// kernels, either for coop.
fn check_packed_product(ty: DType, m: usize, n: usize, k: usize, raw: &[u8], xs: &[f32], got: &[f32], mode: Mode, tile_ref: TileRef) {
    use half::bf16;
    let sk = scalar_kernels(ty).unwrap();
    let quantize_act = scalar_kernels(sk.vec_dot_type).unwrap().from_f32.unwrap();
    let rb = ty.row_bytes(k);
    let k_int8 = tile_ref == TileRef::KInt8;
    for r in 0..m {
        let xrow = &xs[r * k..(r + 1) * k];
        let mut a = vec![0u8; sk.vec_dot_type.row_bytes(k)];
        quantize_act(xrow, &mut a);
        // The K-quants' int8 tile side: activations as ggml's Q8_K, dequantized.
        let xa: Vec<f64> = if !k_int8 { Vec::new() } else { q8_k_dequantized(xrow) };
        for c in 0..n {
            let wrow = &raw[c * rb..(c + 1) * rb];
            let mut wf = vec![0f32; k];
            (sk.to_f32)(wrow, &mut wf);
            let tile = match tile_ref {
                TileRef::KInt8 => {
                    // f32 accumulation: 1e-5 of the magnitude.
                    let p: Vec<f64> = wf.iter().zip(&xa).map(|(&w, &a)| w as f64 * a).collect();
                    (p.iter().sum::<f64>(), 1e-5 * p.iter().map(|v| v.abs()).sum::<f64>())
                }
                TileRef::SmeScaled => sme_scaled_dot(ty, wrow, xrow),
                TileRef::Bf16 => {
                    let p: Vec<f64> = wf.iter().zip(&bf16_engine_acts(ty, xrow)).map(|(&a, &b)| bf16::from_f32(a).to_f64() * bf16::from_f32(b).to_f64()).collect();
                    (p.iter().sum::<f64>(), 1e-5 * p.iter().map(|v| v.abs()).sum::<f64>())
                }
            };
            let vector = ((sk.vec_dot.unwrap())(k, wrow, &a) as f64, 1e-4 * k as f64);
            let got = got[r * n + c] as f64;
            let ok = |(want, tol): (f64, f64)| (got - want).abs() <= tol.max(1e-5 * want.abs());
            let pass = match mode {
                Mode::Matrix => ok(tile),
                Mode::Vector => ok(vector),
                Mode::Coop => ok(tile) || ok(vector),
            };
            assert!(pass, "{ty:?} {m}x{n}x{k} {mode:?} ({r},{c}): got {got}, tile {tile:?}, vector {vector:?}");
        }
    }
}

/// SME's float engine on one weight row and one activation row: the dequantized weights and
/// the weight type's quantized activations (its `vec_dot_type`, dequantized), both rounded
/// to f16 (bf16 for BF16 weights, unrounded for F32), summed in f64; with the tolerance of
/// f32 accumulation (1e-5 of the sum of magnitudes).
fn sme_scaled_dot(ty: DType, wrow: &[u8], xrow: &[f32]) -> (f64, f64) {
    let round = |v: f32| match ty {
        DType::F32 => v as f64,
        DType::BF16 => bf16::from_f32(v).to_f64(),
        _ => f16::from_f32(v).to_f64(),
    };
    let (wf, af, _) = dequantized(ty, wrow, xrow);
    let p: Vec<f64> = wf.iter().zip(&af).map(|(&w, &a)| round(w) * round(a)).collect();
    (p.iter().sum::<f64>(), 1e-5 * p.iter().map(|v| v.abs()).sum::<f64>())
}

/// ggml's block order for Q4_0 / Q4_1 / Q8_0 weights and their quantized activations `a`
/// (Q8_0, or Q8_1 for Q4_1): per block in order, `f = fma(isum, d_w * d_a, f)`; for Q4_1
/// the terms `m_w * s_a` summed apart and added last (`minimum_apart`: its aarch64 row-pair
/// dot), or `f = fma(m_w, s_a, f)` per block (its x86 order).
#[cfg(target_arch = "aarch64")]
fn ggml_block_order(ty: DType, w: &[u8], a: &[u8], k: usize, minimum_apart: bool) -> f32 {
    let h = |b: &[u8], o: usize| f16::from_bits(u16::from_le_bytes([b[o], b[o + 1]])).to_f32();
    let (bw, ba) = (ty.block_bytes(), if ty == DType::Q4_1 { 36 } else { 34 });
    let (mut f, mut s) = (0f32, 0f32);
    for b in 0..k / 32 {
        let (wb, ab) = (&w[b * bw..][..bw], &a[b * ba..][..ba]);
        let isum: i32 = (0..32)
            .map(|j| {
                let wq = match ty {
                    DType::Q8_0 => wb[2 + j] as i8 as i32,
                    DType::Q4_0 => ((wb[2 + j % 16] >> (4 * (j / 16))) & 15) as i32 - 8,
                    _ => ((wb[4 + j % 16] >> (4 * (j / 16))) & 15) as i32,
                };
                wq * ab[ba - 32 + j] as i8 as i32
            })
            .sum();
        f = (isum as f32).mul_add(h(wb, 0) * h(ab, 0), f);
        match (ty, minimum_apart) {
            (DType::Q4_1, true) => s += h(wb, 2) * h(ab, 2),
            (DType::Q4_1, false) => f = h(wb, 2).mul_add(h(ab, 2), f),
            _ => {}
        }
    }
    f + s
}

/// The SME engine against [`sme_scaled_dot`] (its float kernel) and the bits of
/// [`ggml_block_order`] (its int8 kernel) on every weight type it takes: odd M and N (partial panels, blocks and
/// groups), K not a multiple of a K step, strided activations and output whose padding
/// stays untouched, packed and plain weights, matrix mode with one and two unit drivers.
#[cfg(target_arch = "aarch64")]
#[test]
fn mul_mat_sme_engine_matches_scalar_references_on_odd_shapes() {
    use super::matmul::sme::test_engine;
    use crate::kernels::packed::{self, Layout, PackedRef};
    let _lock = MUL_MAT_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let ks = registry::active();
    if !matches!(ks.matrix, Some(registry::MatrixUnit::Sme(_))) {
        eprintln!("no SME unit in the process's kernel set: SME engine not exercised");
        return;
    }
    log_tiers_run("ops::mul_mat sme engine", [ks.name]);
    let mut rng = StdRng::seed_from_u64(29);
    // N = 48, 64, 80: packed weights (whole 16-row groups) that end mid-block and mid-panel.
    let shapes = [(1, 1, 32), (17, 15, 96), (33, 70, 160), (3, 130, 64), (40, 33, 256), (20, 64, 512), (5, 48, 96), (19, 80, 160)];
    let types = [DType::Q4_0, DType::Q4_1, DType::Q8_0, DType::Q4_K, DType::Q5_K, DType::Q6_K, DType::BF16, DType::F16, DType::F32];
    for int8 in [false, true] {
        test_engine::set(Some(int8));
        for ty in types {
            for &(m, n, k) in shapes.iter().filter(|s| s.2 % ty.block_size() == 0) {
                // F16 / BF16 / F32 also with K not a multiple of 32.
                let k = if ty.block_size() == 1 { k - 3 } else { k };
                let raw = random_weights(&mut rng, ty, n, k);
                let layout = Layout::for_weights(ty, k, n);
                let mut packed_mem = vec![0u8; raw.len()];
                let mut wb = Buf::zeroed(raw.len());
                match layout {
                    Some(l) => packed::pack(l, ty, &raw, &mut packed_mem, n, k),
                    None => wb.bytes()[..raw.len()].copy_from_slice(&raw),
                }
                let mut w = contiguous(ty, [k, n, 1, 1], &mut wb);
                w.packed = layout.map(|l| PackedRef { layout: l, data: packed_mem.as_ptr(), len: packed_mem.len() });
                let (xs_stride, d_stride) = (k + 5, n + 3);
                let xs = random_f32(&mut rng, xs_stride * m, 1.0);
                let mut xb = Buf::zeroed(xs.len() * 4);
                xb.f32s()[..xs.len()].copy_from_slice(&xs);
                let x = TensorRef { ty: DType::F32, ne: [k, m, 1, 1], nb: [4, xs_stride * 4, xs_stride * 4 * m, xs_stride * 4 * m], data: xb.ptr(), len: xb.mem.len() * 64, packed: None };
                let mut db = Buf::zeroed(d_stride * m * 4);
                let d = TensorRef { ty: DType::F32, ne: [n, m, 1, 1], nb: [4, d_stride * 4, d_stride * 4 * m, d_stride * 4 * m], data: db.ptr(), len: db.mem.len() * 64, packed: None };
                let nd = node(Op::MulMat, d, &[w, x]);
                assert!(super::matmul::matrix_feasible(&nd, ks), "{ty:?} {m}x{n}x{k}: SME engine declined");
                let sme2 = matches!(ks.matrix, Some(registry::MatrixUnit::Sme(u)) if u.sme2);
                let exact = super::matmul::sme::int8_engine(ty, sme2);
                for drivers in 1..=2 {
                    db.bytes().fill(0);
                    Executor::with_kernels(2, ks).compute_with_plans(&[nd], &[Plan::forced(Mode::Matrix, drivers)]).expect("graph failed");
                    let rb = ty.row_bytes(k);
                    let sk = scalar_kernels(ty).unwrap();
                    for r in 0..m {
                        let xrow = &xs[r * xs_stride..][..k];
                        let mut a = vec![0u8; sk.vec_dot_type.row_bytes(k)];
                        (scalar_kernels(sk.vec_dot_type).unwrap().from_f32.unwrap())(xrow, &mut a);
                        for c in 0..n {
                            let wrow = &raw[c * rb..(c + 1) * rb];
                            let got = db.f32s()[r * d_stride + c];
                            if exact {
                                let want = ggml_block_order(ty, wrow, &a, k, sme2);
                                assert_eq!(got.to_bits(), want.to_bits(), "{ty:?} int8 {m}x{n}x{k} drivers={drivers} at ({r},{c}): got {got}, want {want}");
                                continue;
                            }
                            let (want, tol) = sme_scaled_dot(ty, wrow, xrow);
                            let got = got as f64;
                            assert!((got - want).abs() <= tol.max(1e-6), "{ty:?} {m}x{n}x{k} drivers={drivers} at ({r},{c}): got {got}, want {want}");
                        }
                        assert!(db.f32s()[r * d_stride + n..(r + 1) * d_stride].iter().all(|&v| v == 0.0), "{ty:?} {m}x{n}x{k}: output padding written");
                    }
                }
            }
        }
    }
    test_engine::set(None);
}

/// ggml-cpu's AMX and VNNI kernels compute Q4_0 / Q4_1 / Q8_0 products as, per output and
/// block b in order: f = fma(isum_b, d_w * d_a, f), then (types with a minimum) f =
/// fma(m_w, s_a, f), on activations quantized per block as its quantizer does; its AVX2 dot
/// (CPUs without AVX-512) keeps eight lanes of four elements instead. Every mode
/// (vector kernels on packed weights, the int8 tile engine, both at once) must give exactly
/// those bits, on packed and unpacked weights and odd shapes.
#[cfg(target_arch = "x86_64")]
#[test]
fn int8_products_are_bit_identical_to_ggml_order_in_every_mode() {
    use crate::kernels::packed::{self, Layout, PackedRef};
    log_tiers_run("ops int8 order", KernelSet::available()[1..].iter().map(|s| s.name));
    let _lock = MUL_MAT_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let mut rng = StdRng::seed_from_u64(23);
    let h = |b: &[u8], o: usize| f16::from_bits(u16::from_le_bytes([b[o], b[o + 1]])).to_f32();
    for ty in [DType::Q4_0, DType::Q4_1, DType::Q8_0] {
        let act_ty = if ty == DType::Q4_1 { DType::Q8_1 } else { DType::Q8_0 };
        for &(m, n, nb) in &[(2, 16, 3), (17, 48, 5), (33, 80, 2), (40, 256, 7)] {
            let k = nb * 32;
            let raw = random_weights(&mut rng, ty, n, k);
            let xs = random_f32(&mut rng, m * k, 1.0);
            // The reference, from ggml's blocks.
            let (bw, ba) = (ty.block_bytes(), act_ty.block_bytes());
            let mut want = vec![0f32; m * n];
            let mut want_avx2 = vec![0f32; m * n];
            let mut qa = vec![0u8; act_ty.row_bytes(k)];
            for r in 0..m {
                (scalar_kernels(act_ty).unwrap().from_f32.unwrap())(&xs[r * k..(r + 1) * k], &mut qa);
                for c in 0..n {
                    let mut f = 0f32;
                    // ggml's AVX2 order: eight lanes of four elements, summed at the end.
                    let (mut lanes, mut summs) = ([0f32; 8], 0f32);
                    for b in 0..nb {
                        let (wb, ab) = (&raw[c * nb * bw + b * bw..][..bw], &qa[b * ba..][..ba]);
                        let aq = |j: usize| ab[ba - 32 + j] as i8 as i32;
                        let prod = |j: usize| {
                            let wq = match ty {
                                DType::Q8_0 => wb[2 + j] as i8 as i32,
                                DType::Q4_0 => ((wb[2 + j % 16] >> (4 * (j / 16))) & 15) as i32 - 8,
                                _ => ((wb[4 + j % 16] >> (4 * (j / 16))) & 15) as i32,
                            };
                            wq * aq(j)
                        };
                        let isum: i32 = (0..32).map(prod).sum();
                        f = (isum as f32).mul_add(h(wb, 0) * h(ab, 0), f);
                        for (l, lane) in lanes.iter_mut().enumerate() {
                            let lsum: i32 = (4 * l..4 * l + 4).map(prod).sum();
                            *lane = (lsum as f32).mul_add(h(wb, 0) * h(ab, 0), *lane);
                        }
                        if ty == DType::Q4_1 {
                            f = h(wb, 2).mul_add(h(ab, 2), f);
                            summs = h(wb, 2).mul_add(h(ab, 2), summs);
                        }
                    }
                    want[r * n + c] = f;
                    let t: [f32; 4] = std::array::from_fn(|i| lanes[4 + i] + lanes[i]);
                    want_avx2[r * n + c] = ((t[0] + t[2]) + (t[1] + t[3])) + summs;
                }
            }
            let mut packed_mem = vec![0u8; raw.len()];
            let layout = Layout::for_weights(ty, k, n).expect("these shapes pack");
            packed::pack(layout, ty, &raw, &mut packed_mem, n, k);
            for is_packed in [false, true] {
                let mut wb = Buf::zeroed(raw.len());
                if !is_packed {
                    wb.bytes()[..raw.len()].copy_from_slice(&raw);
                }
                let mut w = contiguous(ty, [k, n, 1, 1], &mut wb);
                w.packed = is_packed.then(|| PackedRef { layout, data: packed_mem.as_ptr(), len: packed_mem.len() });
                let mut xb = Buf::zeroed(xs.len() * 4);
                xb.f32s()[..xs.len()].copy_from_slice(&xs);
                let x = contiguous(DType::F32, [k, m, 1, 1], &mut xb);
                let mut db = Buf::zeroed(m * n * 4);
                let d = contiguous(DType::F32, [n, m, 1, 1], &mut db);
                let nd = node(Op::MulMat, d, &[w, x]);
                super::matmul::amx::test_engine::set(Some(true));
                for mode in Mode::ALL {
                    if mode != Mode::Vector && !super::matmul::matrix_feasible(&nd, registry::active()) {
                        continue;
                    }
                    if mode != Mode::Matrix && !is_packed {
                        continue; // vector dots of unpacked weights follow ggml's vec_dot instead
                    }
                    // The vector mode on every SIMD tier, the tile modes beside the process's.
                    let sets: Vec<&KernelSet> = if mode == Mode::Vector { KernelSet::available()[1..].iter().collect() } else { vec![registry::active()] };
                    for ks in sets {
                        db.bytes().fill(0);
                        Executor::with_kernels(2, ks).compute_with_plans(&[nd], &[Plan::forced(mode, 1)]).expect("graph failed");
                        // The vector kernels follow ggml-cpu's order on the same CPU: its AVX2
                        // dot on the AVX2 tier, else its VNNI / AMX order. (Q4_0 keeps the
                        // block order: stock repacks it on AVX2, see packed::avx2.)
                        let want = if mode == Mode::Vector && ks.tier == crate::kernels::Tier::Avx2 && ty != DType::Q4_0 { &want_avx2 } else { &want };
                        for (i, (g, w)) in db.f32s()[..m * n].iter().zip(want).enumerate() {
                            assert_eq!(g.to_bits(), w.to_bits(), "{ty:?} {m}x{n}x{k} packed={is_packed} {mode:?} {} at ({}, {}): {g} vs {w}", ks.name, i / n, i % n);
                        }
                    }
                }
                super::matmul::amx::test_engine::set(None);
            }
        }
    }
}

/// MUL_MAT_ID against per-pair references on every tier: b broadcast over the slots and
/// one b row per slot, ids a strided view of a wider array, experts nobody picks, an id
/// outside the experts (zeros), packed and plain experts (N a multiple of 16 or not), 1 to
/// 3 threads; with a matrix engine, experts on the unit by the static rule, by a row
/// crossover and all of them, and a unit driven by one of two threads. Each output is the dot of its expert's row with the b row as the
/// activation format quantizes it, within float reassociation of the dequantized terms.
#[test]
fn mul_mat_id_matches_per_pair_references() {
    use crate::kernels::packed::{self, Layout, PackedRef};
    each_tier("ops::mul_mat_id", || {
        let _lock = MUL_MAT_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let mut rng = StdRng::seed_from_u64(41);
        let types = [DType::Q4_0, DType::Q4_1, DType::Q8_0, DType::Q4_K, DType::Q5_K, DType::Q6_K, DType::BF16, DType::F16, DType::F32];
        // (experts, N, slots, tokens, b rows per token, an invalid id)
        // The last: about 20 rows per expert, so the static rule takes the matrix unit.
        let cases = [(4, 32, 2, 5, 1, false), (6, 48, 3, 7, 3, true), (3, 17, 2, 3, 1, false), (8, 16, 4, 1, 4, false), (4, 32, 2, 40, 1, true)];
        for ty in types {
            let k = if ty.block_size() == 256 { 512 } else { ty.block_size().max(32) * 5 };
            for &(n_exp, n, slots, tokens, nb1, bad_id) in &cases {
                let raw = random_weights(&mut rng, ty, n_exp * n, k);
                let mut wb = Buf::zeroed(raw.len());
                wb.bytes()[..raw.len()].copy_from_slice(&raw);
                let mut packed_mem = vec![0u8; raw.len()];
                let layout = Layout::for_weights(ty, k, n_exp * n).filter(|_| n % packed::GROUP_ROWS == 0);
                if let Some(l) = layout {
                    packed::pack(l, ty, &raw, &mut packed_mem, n_exp * n, k);
                }
                // ids: the first `slots` columns of a [slots + 2, tokens] array; expert 1 unused.
                let wide = slots + 2;
                let mut ib = Buf::zeroed(wide * tokens * 4);
                let mut ids = vec![0i32; wide * tokens];
                for t in 0..tokens {
                    for s in 0..wide {
                        let e = loop {
                            let e = rng.gen_range(0..n_exp as i32);
                            if e != 1 {
                                break e;
                            }
                        };
                        ids[t * wide + s] = e;
                    }
                }
                if bad_id {
                    ids[wide + 1] = n_exp as i32;
                }
                for (o, v) in ib.bytes().chunks_exact_mut(4).zip(&ids) {
                    o.copy_from_slice(&v.to_le_bytes());
                }
                let id_t = TensorRef { ty: DType::I32, ne: [slots, tokens, 1, 1], nb: [4, wide * 4, wide * 4 * tokens, wide * 4 * tokens], data: ib.ptr(), len: ib.mem.len() * 64, packed: None };
                // b rows 5 floats apart beyond k.
                let bs = k + 5;
                let xs = random_f32(&mut rng, bs * nb1 * tokens, 1.0);
                let mut xb = Buf::zeroed(xs.len() * 4);
                xb.f32s()[..xs.len()].copy_from_slice(&xs);
                let b = TensorRef { ty: DType::F32, ne: [k, nb1, tokens, 1], nb: [4, bs * 4, bs * 4 * nb1, bs * 4 * nb1 * tokens], data: xb.ptr(), len: xb.mem.len() * 64, packed: None };
                for packed_on in [false, true] {
                    if packed_on && layout.is_none() {
                        continue;
                    }
                    let mut w = contiguous(ty, [k, n, n_exp, 1], &mut wb);
                    w.packed = layout.filter(|_| packed_on).map(|l| PackedRef { layout: l, data: packed_mem.as_ptr(), len: packed_mem.len() });
                    // The vector kernels on 1 to 3 threads; then each matrix engine of this
                    // tier (experts with many rows by the static rule, every expert forced).
                    let mut runs: Vec<(&KernelSet, usize, Plan)> = (1..=3).map(|t| (tier_set(), t, Plan::forced(Mode::Vector, 0))).collect();
                    for ks in matrix_sets() {
                        runs.push((ks, 2, Plan::STATIC));
                        runs.push((ks, 2, Plan::forced(Mode::Matrix, 0)));
                        // One thread drives the unit, the other takes items from the back
                        // on the vector kernels (a shared unit).
                        runs.push((ks, 2, Plan::forced(Mode::Coop, 1)));
                        // The planner's crossover: experts of 3 rows or more on the unit.
                        runs.push((ks, 3, Plan { expert_min_rows: 3, ..Plan::forced(Mode::Matrix, 0) }));
                    }
                    for (ks, threads, plan) in runs {
                        let unit = plan.mode != Some(Mode::Vector);
                        let mut db = Buf::zeroed(n * slots * tokens * 4);
                        db.f32s().fill(f32::NAN);
                        let d = contiguous(DType::F32, [n, slots, tokens, 1], &mut db);
                        Executor::with_kernels(threads, ks).compute_with_plans(&[node(Op::MulMatId, d, &[w, b, id_t])], &[plan]).expect("graph failed");
                        let got = db.f32s();
                        let rb = ty.row_bytes(k);
                        for t in 0..tokens {
                            for s in 0..slots {
                                let e = ids[t * wide + s];
                                for r in 0..n {
                                    let g = got[(t * slots + s) * n + r];
                                    if e as usize >= n_exp {
                                        assert_eq!(g, 0.0, "{ty:?} invalid id: output not zeroed");
                                        continue;
                                    }
                                    let wrow = &raw[(e as usize * n + r) * rb..][..rb];
                                    let (want, tol) = dequant_dot(ty, wrow, &xs[(t * nb1 + s % nb1) * bs..][..k]);
                                    // Tile engines may round operands to bf16 (1e-5 -> 1e-2 of the magnitudes).
                                    let tol = if unit { tol * 1e3 } else { tol };
                                    assert!((g as f64 - want).abs() <= tol, "{ty:?} {n_exp}x{n}x{k} slots {slots} tokens {tokens} packed={packed_on} threads {threads} (r {r}, s {s}, t {t}): got {g}, want {want} ({} {plan:?})", ks.name);
                                }
                            }
                        }
                    }
                }
            }
        }
    });
}

/// MUL_MAT_ID with the experts' rows spaced wider than a row (a view of a padded tensor,
/// which no packing takes): every expert reads its rows at nb[1], on the vector kernels
/// and on each matrix engine of this tier.
#[test]
fn mul_mat_id_reads_experts_with_padded_rows() {
    each_tier("ops::mul_mat_id padded", || {
        let _lock = MUL_MAT_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let mut rng = StdRng::seed_from_u64(43);
        let (ty, k, n, n_exp, tokens) = (DType::Q4_0, 96, 20, 3, 24);
        let (rb, pad) = (ty.row_bytes(k), 64);
        let raw = random_weights(&mut rng, ty, n_exp * n, k);
        let mut wb = Buf::zeroed(n_exp * n * (rb + pad));
        for r in 0..n_exp * n {
            wb.bytes()[r * (rb + pad)..][..rb].copy_from_slice(&raw[r * rb..(r + 1) * rb]);
        }
        let stride = rb + pad;
        let w = TensorRef { ty, ne: [k, n, n_exp, 1], nb: [ty.block_bytes(), stride, stride * n, stride * n * n_exp], data: wb.ptr(), len: wb.mem.len() * 64, packed: None };
        // Two slots per token, every expert picked by many tokens (the unit's side too).
        let ids: Vec<i32> = (0..2 * tokens).map(|i| (i % n_exp) as i32).collect();
        let mut ib = Buf::zeroed(ids.len() * 4);
        for (o, v) in ib.bytes().chunks_exact_mut(4).zip(&ids) {
            o.copy_from_slice(&v.to_le_bytes());
        }
        let id_t = contiguous(DType::I32, [2, tokens, 1, 1], &mut ib);
        let xs = random_f32(&mut rng, k * tokens, 1.0);
        let mut xb = Buf::zeroed(xs.len() * 4);
        xb.f32s()[..xs.len()].copy_from_slice(&xs);
        let b = contiguous(DType::F32, [k, 1, tokens, 1], &mut xb);
        let mut runs: Vec<(&KernelSet, Plan)> = vec![(tier_set(), Plan::forced(Mode::Vector, 0))];
        for ks in matrix_sets() {
            runs.push((ks, Plan::forced(Mode::Matrix, 0)));
        }
        for (ks, plan) in runs {
            let mut db = Buf::zeroed(n * 2 * tokens * 4);
            let d = contiguous(DType::F32, [n, 2, tokens, 1], &mut db);
            Executor::with_kernels(2, ks).compute_with_plans(&[node(Op::MulMatId, d, &[w, b, id_t])], &[plan]).expect("graph failed");
            for t in 0..tokens {
                for sl in 0..2 {
                    let e = ids[t * 2 + sl] as usize;
                    for r in 0..n {
                        let (want, tol) = dequant_dot(ty, &raw[(e * n + r) * rb..][..rb], &xs[t * k..(t + 1) * k]);
                        let tol = if plan.mode == Some(Mode::Vector) { tol } else { tol * 1e3 };
                        let g = db.f32s()[(t * 2 + sl) * n + r] as f64;
                        assert!((g - want).abs() <= tol, "{} {plan:?} (e {e}, r {r}, t {t}): got {g}, want {want}", ks.name);
                    }
                }
            }
        }
    });
}

/// Gate, up and their SwiGLU run as one pass (`ops::fuse`) give every output the bits the
/// three nodes give alone: on every tier and engine, packed and plain experts, N a multiple
/// of 16 or not and past one work item's columns, an id outside the experts, both SwiGLU operand orders, 1 to 3 threads.
/// Nodes that read different ids are not fused.
#[test]
fn gate_up_swiglu_pass_gives_the_nodes_bits() {
    use super::fuse::{self, Step};
    use crate::kernels::packed::{self, Layout, PackedRef};
    each_tier("ops::gate_up_swiglu", || {
        let _lock = MUL_MAT_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let mut rng = StdRng::seed_from_u64(47);
        // (type, experts, N, slots, tokens, an invalid id, SwiGLU swapped)
        let cases = [
            (DType::Q4_0, 4, 144, 2, 24, true, false),
            (DType::Q8_0, 3, 100, 3, 9, false, true),
            (DType::Q4_K, 4, 80, 2, 16, false, false),
            (DType::Q6_K, 3, 80, 2, 12, true, true),
            (DType::F16, 3, 72, 2, 8, false, false),
        ];
        for (ty, n_exp, n, slots, tokens, bad_id, swapped) in cases {
            let k = if ty.block_size() == 256 { 512 } else { 96 };
            let layout = Layout::for_weights(ty, k, n_exp * n).filter(|_| n % packed::GROUP_ROWS == 0);
            let mut weights = Vec::new();
            for _ in 0..2 {
                let raw = random_weights(&mut rng, ty, n_exp * n, k);
                let mut wb = Buf::zeroed(raw.len());
                wb.bytes()[..raw.len()].copy_from_slice(&raw);
                let mut pk = vec![0u8; raw.len()];
                if let Some(l) = layout {
                    packed::pack(l, ty, &raw, &mut pk, n_exp * n, k);
                }
                weights.push((wb, pk));
            }
            let ids: Vec<i32> = (0..slots * tokens).map(|i| if bad_id && i == 3 { n_exp as i32 } else { rng.gen_range(0..n_exp as i32) }).collect();
            let mut ib = Buf::zeroed(ids.len() * 4);
            let mut other_ib = Buf::zeroed(ids.len() * 4);
            for (o, v) in ib.bytes().chunks_exact_mut(4).zip(&ids) {
                o.copy_from_slice(&v.to_le_bytes());
            }
            other_ib.bytes()[..ids.len() * 4].copy_from_slice(&ib.bytes()[..ids.len() * 4]);
            let id_t = contiguous(DType::I32, [slots, tokens, 1, 1], &mut ib);
            let other_ids = contiguous(DType::I32, [slots, tokens, 1, 1], &mut other_ib);
            let xs = random_f32(&mut rng, k * tokens, 1.0);
            let mut xb = Buf::zeroed(xs.len() * 4);
            xb.f32s()[..xs.len()].copy_from_slice(&xs);
            let b = contiguous(DType::F32, [k, 1, tokens, 1], &mut xb);
            let out = n * slots * tokens;
            for packed_on in [false, true] {
                if packed_on && layout.is_none() {
                    continue;
                }
                let ws: Vec<TensorRef> = weights
                    .iter_mut()
                    .map(|(wb, pk)| {
                        let mut w = contiguous(ty, [k, n, n_exp, 1], wb);
                        w.packed = layout.filter(|_| packed_on).map(|l| PackedRef { layout: l, data: pk.as_ptr(), len: pk.len() });
                        w
                    })
                    .collect();
                let mut runs: Vec<(&KernelSet, usize, Plan)> = (1..=3).map(|t| (tier_set(), t, Plan::forced(Mode::Vector, 0))).collect();
                for ks in matrix_sets() {
                    runs.push((ks, 2, Plan::STATIC));
                    runs.push((ks, 2, Plan::forced(Mode::Coop, 1)));
                    runs.push((ks, 3, Plan { expert_min_rows: 3, ..Plan::forced(Mode::Matrix, 0) }));
                }
                for (ks, threads, plan) in runs {
                    let mut results = Vec::new();
                    for fused in [false, true] {
                        let mut bufs: Vec<Buf> = (0..3).map(|_| Buf::zeroed(out * 4)).collect();
                        for bf in &mut bufs {
                            bf.f32s().fill(f32::NAN);
                        }
                        let [up_d, gate_d, glu_d] = [0, 1, 2].map(|i| contiguous(DType::F32, [n, slots, tokens, 1], &mut bufs[i]));
                        let up = node(Op::MulMatId, up_d, &[ws[0], b, id_t]);
                        let gate = node(Op::MulMatId, gate_d, &[ws[1], b, id_t]);
                        let glu = node(Op::SwiGlu { swapped }, glu_d, &if swapped { [up_d, gate_d] } else { [gate_d, up_d] });
                        let graph = [up, gate, glu];
                        assert_eq!(fuse::steps(&graph)[0], Step::GateUp { silu_in: 1, mul_in: 0, glu: 2 }, "the pass was not found");
                        let unrelated = [up, node(Op::MulMatId, gate_d, &[ws[1], b, other_ids]), glu];
                        assert_eq!(fuse::steps(&unrelated)[0], Step::Alone, "nodes reading different ids fused");
                        let mut exec = Executor::with_kernels(threads, ks);
                        exec.set_fusion(fused);
                        exec.compute_with_plans(&graph, &[plan, plan, Plan::STATIC]).expect("graph failed");
                        results.push(bufs.iter_mut().map(|bf| bf.f32s()[..out].iter().map(|v| v.to_bits()).collect::<Vec<u32>>()).collect::<Vec<_>>());
                    }
                    // The pass's SwiGLU is the tier's SiLU-multiply of its own gate and up rows.
                    let f = |v: &Vec<u32>| v.iter().map(|&b| f32::from_bits(b)).collect::<Vec<f32>>();
                    let (p_up, p_gate) = (f(&results[1][0]), f(&results[1][1]));
                    let mut want = vec![0f32; out];
                    for ((o, g), u) in want.chunks_mut(n).zip(p_gate.chunks(n)).zip(p_up.chunks(n)) {
                        (ks.vmath.silu_mul)(g, Some(u), o);
                    }
                    assert!(want.iter().zip(&results[1][2]).all(|(w, &p)| w.to_bits() == p), "{ty:?} {} {plan:?}: the pass's SwiGLU is not SiLU(gate) x up", ks.name);
                    // A unit shared by one of two threads (coop) runs an expert's group on the
                    // unit or the vector kernels as the threads meet: bits vary run to run.
                    if plan.mode == Some(Mode::Coop) {
                        continue;
                    }
                    for (o, name) in ["up", "gate", "swiglu"].iter().enumerate() {
                        let (alone, pass) = (&results[0][o], &results[1][o]);
                        assert!(alone.iter().all(|v| !f32::from_bits(*v).is_nan()), "{ty:?} {name}: an output left unwritten");
                        if let Some(i) = (0..out).find(|&i| alone[i] != pass[i]) {
                            panic!("{ty:?} {n_exp}x{n}x{k} packed={packed_on} threads {threads} {} {plan:?}: {name} at {i}: pass {} vs alone {}", ks.name, f32::from_bits(pass[i]), f32::from_bits(alone[i]));
                        }
                    }
                }
            }
        }
    });
}

/// One weight row against one activation row as the vector kernels see them: dequantized
/// weights times the weight type's quantized activations (dequantized), summed in f64; with
/// the tolerance of f32 accumulation (1e-5 of the sum of magnitudes, at least 1e-6).
fn dequant_dot(ty: DType, wrow: &[u8], xrow: &[f32]) -> (f64, f64) {
    let k = xrow.len();
    let (wf, af, a) = dequantized(ty, wrow, xrow);
    let p: Vec<f64> = wf.iter().zip(&af).map(|(&w, &a)| w as f64 * a as f64).collect();
    let tol = (1e-5 * p.iter().map(|v| v.abs()).sum::<f64>()).max(1e-6);
    if ty != DType::Q4_1 {
        return (p.iter().sum::<f64>(), tol);
    }
    // Q4_1 · Q8_1 takes each block's minimum times the activation block's stored sum `s`
    // (an f16), not times the sum of its dequantized values.
    let h = |b: &[u8], o: usize| f16::from_bits(u16::from_le_bytes([b[o], b[o + 1]])).to_f64();
    let want = (0..k / 32)
        .map(|b| {
            let (wb, ab) = (&wrow[20 * b..20 * b + 20], &a[36 * b..36 * b + 36]);
            let isum: i64 = (0..32).map(|j| ((wb[4 + j % 16] >> (4 * (j / 16))) & 15) as i64 * ab[4 + j] as i8 as i64).sum();
            h(wb, 0) * h(ab, 0) * isum as f64 + h(wb, 2) * h(ab, 2)
        })
        .sum();
    (want, tol)
}

/// A weight row dequantized, and an activation row quantized to the weight type's
/// activation format (`vec_dot_type`) and dequantized again, with those quantized bytes.
fn dequantized(ty: DType, wrow: &[u8], xrow: &[f32]) -> (Vec<f32>, Vec<f32>, Vec<u8>) {
    let k = xrow.len();
    let sk = scalar_kernels(ty).unwrap();
    let ak = scalar_kernels(sk.vec_dot_type).unwrap();
    let mut a = vec![0u8; sk.vec_dot_type.row_bytes(k)];
    (ak.from_f32.unwrap())(xrow, &mut a);
    let (mut af, mut wf) = (vec![0f32; k], vec![0f32; k]);
    (ak.to_f32)(&a, &mut af);
    (sk.to_f32)(wrow, &mut wf);
    (wf, af, a)
}
