//! Packed layouts: round trips, row dequantization against ggml's, and the GEMV tiers against
//! ggml's scalar block dot on the unpacked rows.

use super::{Layout, PackedRef};
use crate::dtype::DType;
use crate::kernels::registry::{active, log_tiers_run};
use crate::kernels::KernelSet;
use crate::kernels::quant::scalar_kernels;
use rand::{rngs::StdRng, Rng, SeedableRng};

const LAYOUTS: [Layout; 5] = [Layout::Q4_0x16, Layout::Q4_1x16, Layout::Q8_0x16, Layout::Q4_Kx16, Layout::Q6_Kx16];

/// `n` random rows: quantized from random floats where the type has a quantizer; else (the
/// K types) random bytes, so every scale and minimum bit pattern occurs, with small fp16
/// super-block scales.
fn rows(rng: &mut StdRng, ty: DType, n: usize, k: usize) -> Vec<u8> {
    let rb = ty.row_bytes(k);
    let mut out = vec![0u8; n * rb];
    let Some(q) = scalar_kernels(ty).unwrap().from_f32 else {
        rng.fill(&mut out[..]);
        let heads: &[usize] = if ty == DType::Q6_K { &[208] } else { &[0, 2] };
        for blk in out.chunks_mut(ty.block_bytes()) {
            for &h in heads {
                blk[h..h + 2].copy_from_slice(&half::f16::from_f32(rng.gen_range(0.001..0.02)).to_bits().to_le_bytes());
            }
        }
        return out;
    };
    for r in 0..n {
        // Rows of different magnitudes, some with an offset, so scales and minimums vary.
        let (scale, offset) = (rng.gen_range(0.01..2.0), if r % 3 == 0 { rng.gen_range(-1.0..1.0) } else { 0.0 });
        let x: Vec<f32> = (0..k).map(|_| offset + scale * rng.gen_range(-1.0f32..1.0)).collect();
        q(&x, &mut out[r * rb..(r + 1) * rb]);
    }
    out
}

#[test]
fn pack_unpack_round_trip_and_rows_match_ggml() {
    let mut rng = StdRng::seed_from_u64(3);
    for layout in LAYOUTS {
        let ty = layout.ty();
        let bk = ty.block_size();
        assert_eq!(Layout::for_weights(ty, 2 * bk, 32), Some(layout));
        assert_eq!(Layout::for_weights(ty, 2 * bk, 31), None, "rows not a multiple of 16");
        for &(n, nb) in &[(16, 1), (32, 3), (48, 7), (16, 33)] {
            let k = nb * bk;
            let raw = rows(&mut rng, ty, n, k);
            let mut packed = vec![0u8; raw.len()];
            let mut back = vec![0u8; raw.len()];
            super::pack(layout, ty, &raw, &mut packed, n, k);
            assert_ne!(packed, raw);
            super::unpack(layout, &packed, &mut back, n, k);
            assert_eq!(back, raw, "{layout:?}");
            let sk = scalar_kernels(ty).unwrap();
            let (mut want, mut got) = (vec![0f32; k], vec![0f32; k]);
            let rb = ty.row_bytes(k);
            let gb = layout.group_bytes(k);
            for r in 0..n {
                (sk.to_f32)(&raw[r * rb..(r + 1) * rb], &mut want);
                let p = PackedRef { layout, data: packed.as_ptr(), len: packed.len() };
                for ks in KernelSet::available() {
                    got.fill(f32::NAN);
                    super::row_to_f32(&ks.packed, &p, k, r, &mut got);
                    assert_eq!(got, want, "{layout:?} {} row {r}", ks.name);
                }
                super::row_to_f32_scalar(layout, &packed[(r / 16) * gb..(r / 16 + 1) * gb], nb, r % 16, &mut got);
                assert_eq!(got, want, "{layout:?} portable row {r}");
            }
        }
    }
    log_tiers_run("packed row_to_f32", KernelSet::available().iter().map(|s| s.name));
}

#[test]
fn gemv_tiers_match_the_scalar_block_dot() {
    let mut rng = StdRng::seed_from_u64(5);
    for layout in LAYOUTS {
        let (ty, at) = (layout.ty(), layout.act_type());
        let bk = ty.block_size();
        let (sk, qa) = (scalar_kernels(ty).unwrap(), scalar_kernels(at).unwrap().from_f32.unwrap());
        for &(n, nb, m) in &[(16, 1, 1), (32, 5, 3), (48, 9, 7), (16, 12, 4), (16, 3, 15), (16, 2, 5), (64, 3, 1), (80, 5, 1)] {
            let k = nb * bk;
            let raw = rows(&mut rng, ty, n, k);
            let mut packed = vec![0u8; raw.len()];
            super::pack(layout, ty, &raw, &mut packed, n, k);
            let acts: Vec<Vec<u8>> = (0..m)
                .map(|_| {
                    let s = rng.gen_range(0.1..3.0);
                    let x: Vec<f32> = (0..k).map(|_| s * rng.gen_range(-1.0f32..1.0)).collect();
                    let mut a = vec![0u8; at.row_bytes(k)];
                    qa(&x, &mut a);
                    a
                })
                .collect();
            // Per-block quant sums, which the Q8_0 kernels take beside the activations.
            let sums: Vec<Vec<i32>> = acts
                .iter()
                .map(|a| if at == DType::Q8_0 { (0..nb).map(|b| a[b * 34 + 2..b * 34 + 34].iter().map(|&v| v as i8 as i32).sum()).collect() } else { vec![] })
                .collect();
            let a_refs: Vec<&[u8]> = acts.iter().map(|a| a.as_slice()).collect();
            let s_refs: Vec<&[i32]> = sums.iter().map(|s| s.as_slice()).collect();
            let gb = layout.group_bytes(k);
            let rb = ty.row_bytes(k);
            for ks in KernelSet::available() {
                let gemv = ks.packed.gemv;
                // Four groups at once: the decode path streams them side by side.
                let mut four = vec![[0f32; 16]; 4 * m];
                if n >= 64 {
                    gemv(layout, nb, &packed[..4 * gb], 4, &packed[4 * gb..], &a_refs, &s_refs, &mut four);
                }
                for g in 0..n / 16 {
                    let group = &packed[g * gb..(g + 1) * gb];
                    let mut fast = vec![[f32::NAN; 16]; m];
                    let mut portable = vec![[0f32; 16]; m];
                    gemv(layout, nb, group, 1, &[], &a_refs, &s_refs, &mut fast);
                    let fused = (g < 4 && n >= 64).then(|| &four[g * m..(g + 1) * m]);
                    super::gemv_portable(sk, layout, nb, group, &a_refs, &mut portable);
                    for i in 0..m {
                        for r in 0..16 {
                            let row = &raw[(g * 16 + r) * rb..][..rb];
                            let want = (sk.vec_dot.unwrap())(k, row, &acts[i]);
                            // Bound: float rounding of the per-block partial sums, relative to
                            // the sum of their magnitudes (estimated from the dequantized rows).
                            let (mut wf, mut af) = (vec![0f32; k], vec![0f32; k]);
                            (sk.to_f32)(row, &mut wf);
                            (scalar_kernels(at).unwrap().to_f32)(&acts[i], &mut af);
                            let mag: f32 = wf.iter().zip(&af).map(|(a, b)| (a * b).abs()).sum();
                            let tol = 1e-5 * mag + 1e-6;
                            let tier = ks.name;
                            assert!((portable[i][r] - want).abs() <= tol, "{layout:?} portable n={n} nb={nb} ({i},{r}): {} vs {want}", portable[i][r]);
                            assert!((fast[i][r] - want).abs() <= tol, "{layout:?} {tier} n={n} nb={nb} ({i},{r}): {} vs {want} (tol {tol})", fast[i][r]);
                            if let Some(f) = fused {
                                assert!((f[i][r] - want).abs() <= tol, "{layout:?} {tier} four groups n={n} nb={nb} g={g} ({i},{r}): {} vs {want}", f[i][r]);
                            }
                        }
                    }
                }
            }
        }
    }
    log_tiers_run("packed gemv", KernelSet::available().iter().map(|s| s.name));
}

/// Throughput of the packed GEMVs on cache-resident weights (ignored; by hand).
#[test]
#[ignore]
fn gemv_cache_resident_speed() {
    for layout in LAYOUTS {
        let bk = layout.ty().block_size();
        let (n, nb) = (1024usize, 3072 / bk);
        // Real rows and activations: constant bytes make tiny float scales, whose denormal
        // products would time microcode assists instead of the kernel.
        let mut rng = StdRng::seed_from_u64(5);
        let mut packed = vec![0u8; n / 16 * layout.group_bytes(nb * bk)];
        super::pack(layout, layout.ty(), &rows(&mut rng, layout.ty(), n, nb * bk), &mut packed, n, nb * bk);
        let x: Vec<f32> = (0..nb * bk).map(|_| rng.gen_range(-1.0..1.0)).collect();
        let mut act = vec![0u8; layout.act_type().row_bytes(nb * bk)];
        (scalar_kernels(layout.act_type()).unwrap().from_f32.unwrap())(&x, &mut act);
        let sums = vec![3i32; nb];
        let gb = layout.group_bytes(nb * bk);
        let mut out = [[0f32; 16]; 4];
        let reps = 200;
        for ng in [1, 4] {
            let t0 = std::time::Instant::now();
            for _ in 0..reps {
                for g in (0..n / 16).step_by(ng) {
                    (active().packed.gemv)(layout, nb, &packed[g * gb..(g + ng) * gb], ng, &[], &[&act], &[&sums], &mut out);
                }
            }
            let dt = t0.elapsed().as_secs_f64();
            eprintln!("{layout:?} GEMV, M=1, {ng} group(s) a pass, one core, L2-resident: {:.1} GB/s", (reps * packed.len()) as f64 / dt / 1e9);
        }
    }
}

/// Q4_0 and Q8_0 GEMVs of the active tier (`SMEPILOT_TIER`) at decode and prefill shapes,
/// checked against the dequantized rows (ignored; by hand, to count executed instructions
/// per tier with qemu-icount.py: the reference touches no dot kernel, so the difference
/// between two tiers' runs is the difference between their GEMVs).
#[test]
#[ignore]
fn gemv_q4_0_q8_0_active_tier_at_model_shapes() {
    for layout in [Layout::Q4_0x16, Layout::Q8_0x16] {
        gemv_active_tier_at_model_shapes(layout);
    }
}

fn gemv_active_tier_at_model_shapes(layout: Layout) {
    let (n, nb) = (64usize, 32usize);
    let (ty, at, k) = (layout.ty(), layout.act_type(), nb * 32);
    let mut rng = StdRng::seed_from_u64(9);
    let raw = rows(&mut rng, ty, n, k);
    let mut packed = vec![0u8; raw.len()];
    super::pack(layout, ty, &raw, &mut packed, n, k);
    let mut wf = vec![0f32; n * k];
    (scalar_kernels(ty).unwrap().to_f32)(&raw, &mut wf);
    let gemv = active().packed.gemv;
    for m in [1, 4] {
        let acts: Vec<Vec<u8>> = (0..m)
            .map(|_| {
                let x: Vec<f32> = (0..k).map(|_| rng.gen_range(-1.0f32..1.0)).collect();
                let mut a = vec![0u8; at.row_bytes(k)];
                (scalar_kernels(at).unwrap().from_f32.unwrap())(&x, &mut a);
                a
            })
            .collect();
        let sums: Vec<Vec<i32>> = acts.iter().map(|a| (0..nb).map(|b| a[b * 34 + 2..b * 34 + 34].iter().map(|&v| v as i8 as i32).sum()).collect()).collect();
        let a_refs: Vec<&[u8]> = acts.iter().map(|a| a.as_slice()).collect();
        let s_refs: Vec<&[i32]> = sums.iter().map(|s| s.as_slice()).collect();
        let mut out = vec![[f32::NAN; 16]; 4 * m];
        gemv(layout, nb, &packed, 4, &[], &a_refs, &s_refs, &mut out);
        for (i, a) in acts.iter().enumerate() {
            let mut af = vec![0f32; k];
            (scalar_kernels(at).unwrap().to_f32)(a, &mut af);
            for row in 0..n {
                let w = &wf[row * k..(row + 1) * k];
                let want: f64 = w.iter().zip(&af).map(|(x, y)| *x as f64 * *y as f64).sum();
                let mag: f64 = w.iter().zip(&af).map(|(x, y)| (*x as f64 * *y as f64).abs()).sum();
                let got = out[(row / 16) * m + i][row % 16] as f64;
                assert!((got - want).abs() <= 1e-5 * mag + 1e-6, "{layout:?} {} m={m} ({i},{row}): {got} vs {want}", active().name);
            }
        }
    }
}

/// NEON `Q4_1x16` gives ggml-cpu's aarch64 bits (`quant::arm_order`): every row alone (one
/// activation row, an odd number of them, or no I8MM), else rows in pairs by SMMLA.
#[cfg(target_arch = "aarch64")]
#[test]
fn neon_q4_1_gemv_gives_ggml_arm_bits() {
    use crate::kernels::quant::arm_order;
    assert!(std::arch::is_aarch64_feature_detected!("dotprod"), "the NEON tier needs dotprod");
    let i8mm = std::arch::is_aarch64_feature_detected!("i8mm");
    let mut rng = StdRng::seed_from_u64(9);
    let (layout, ty, at) = (Layout::Q4_1x16, DType::Q4_1, DType::Q8_1);
    let qa = scalar_kernels(at).unwrap().from_f32.unwrap();
    for &(n, nb, m) in &[(16, 1, 1), (16, 3, 1), (64, 7, 1), (32, 5, 3), (16, 9, 2), (16, 4, 4), (16, 7, 6), (16, 2, 5)] {
        let k = nb * 32;
        let raw = rows(&mut rng, ty, n, k);
        let mut packed = vec![0u8; raw.len()];
        super::pack(layout, ty, &raw, &mut packed, n, k);
        let acts: Vec<Vec<u8>> = (0..m)
            .map(|_| {
                let x: Vec<f32> = (0..k).map(|_| rng.gen_range(-2.0f32..2.0)).collect();
                let mut a = vec![0u8; at.row_bytes(k)];
                qa(&x, &mut a);
                a
            })
            .collect();
        let a_refs: Vec<&[u8]> = acts.iter().map(|a| a.as_slice()).collect();
        let (gb, rb) = (layout.group_bytes(k), ty.row_bytes(k));
        let mut entries: Vec<(&str, super::GemvFn, bool)> = vec![("neon", super::neon::gemv, false)];
        if i8mm {
            entries.push(("neon+i8mm", super::neon::gemv_i8mm, m % 2 == 0));
        }
        for (name, gemv, paired) in entries {
            let ng = n / 16;
            let mut out = vec![[f32::NAN; 16]; ng * m];
            gemv(layout, nb, &packed[..ng * gb], ng, &[], &a_refs, &[], &mut out);
            for g in 0..ng {
                for i in 0..m {
                    for r in 0..16 {
                        let row = &raw[(g * 16 + r) * rb..][..rb];
                        // A pair's lane depends on its own row and activation only: any partner.
                        let partner = &raw[(g * 16 + (r ^ 1)) * rb..][..rb];
                        let want = if paired {
                            arm_order::dot_pair(ty, k, [row, partner], [&acts[i], &acts[i ^ 1]])[0][0]
                        } else {
                            arm_order::dot(ty, k, row, &acts[i])
                        };
                        let got = out[g * m + i][r];
                        assert_eq!(got.to_bits(), want.to_bits(), "{name} n={n} nb={nb} m={m} ({i},{g},{r}): {got} vs {want}");
                    }
                }
            }
        }
    }
    log_tiers_run("packed q4_1 arm order", ["neon"].into_iter());
}
