//! Each group kernel against f64 sums of the same rounded operands, on odd shapes (M, N, K
//! not multiples of a panel, a block or a K step; row strides wider than a row), with the
//! weights transposed by the kernel and then read again as staged blocks.

use super::stage::{f32_to_f16, put_block_row, zero_block_row};
use super::{DstRows, Geometry, GroupOperands, Outer, Streaming};
use half::{bf16, f16};
use rand::{rngs::StdRng, Rng, SeedableRng};

/// The process's SME geometry, or None (the test then says so and passes: no SME here).
pub(crate) fn geometry() -> Option<Geometry> {
    let f = crate::platform::CpuFeatures::detect();
    if !f.sme {
        eprintln!("no SME on this CPU: SME kernels not exercised");
        return None;
    }
    Some(Geometry { svl: f.svl_bytes, sme2: f.sme2 })
}

/// A row of values rounded to the operand type of `outer`, and its units.
fn operand_row(outer: Outer, vals: &[f32], kunits: usize) -> (Vec<f64>, Vec<u8>) {
    let mut units = vec![0u8; kunits * 4];
    let rounded: Vec<f64> = match outer {
        Outer::F16 => {
            f32_to_f16(vals, &mut units);
            vals.iter().map(|&v| f16::from_f32(v).to_f64()).collect()
        }
        Outer::Bf16 => {
            for (i, &v) in vals.iter().enumerate() {
                units[2 * i..2 * i + 2].copy_from_slice(&bf16::from_f32(v).to_bits().to_le_bytes());
            }
            vals.iter().map(|&v| bf16::from_f32(v).to_f64()).collect()
        }
        Outer::F32 => {
            for (i, &v) in vals.iter().enumerate() {
                units[4 * i..4 * i + 4].copy_from_slice(&v.to_le_bytes());
            }
            vals.iter().map(|&v| v as f64).collect()
        }
    };
    (rounded, units)
}

#[test]
fn float_group_kernels_match_f64_sums_on_odd_shapes() {
    let Some(geo) = geometry() else { return };
    let mut rng = StdRng::seed_from_u64(5);
    let (br, vl32) = (geo.block_rows(), geo.vl32());
    let shapes = [(1, 1, 1), (3, 5, 7), (17, 33, 31), (2 * br + 1, 64, 130), (br, br + 1, 64), (33, 17, 300), (5, 70, 2)];
    for sme2 in [false, true].into_iter().filter(|&s| s <= geo.sme2) {
        let geo = Geometry { sme2, ..geo };
        let session = Streaming::begin(geo);
        for outer in [Outer::F16, Outer::Bf16, Outer::F32] {
            for &(m, n, k) in &shapes {
                let (m, n, k): (usize, usize, usize) = (m, n, k);
                let kunits = geo.kunits(k.div_ceil(outer.per_unit()));
                let bb = geo.block_bytes(kunits);
                let a: Vec<Vec<f32>> = (0..m).map(|_| (0..k).map(|_| rng.gen_range(-1.0f32..1.0)).collect()).collect();
                let w: Vec<Vec<f32>> = (0..n).map(|_| (0..k).map(|_| rng.gen_range(-1.0f32..1.0)).collect()).collect();
                let mut acts = vec![0u8; m.div_ceil(br) * bb];
                let mut a_r = Vec::new();
                for r in 0..m.next_multiple_of(br) {
                    let block = &mut acts[r / br * bb..][..bb];
                    if r < m {
                        let (rounded, units) = operand_row(outer, &a[r], kunits);
                        put_block_row(&geo, block, r % br, &units);
                        a_r.push(rounded);
                    } else {
                        zero_block_row(&geo, block, r % br, kunits);
                    }
                }
                // Row-major weights, 12 bytes of slack per row, rows up to a whole panel.
                let stride = kunits * 4 + 12;
                let mut src = vec![0u8; n.next_multiple_of(vl32) * stride];
                let mut w_r = Vec::new();
                for (c, row) in w.iter().enumerate() {
                    let (rounded, units) = operand_row(outer, row, kunits);
                    src[c * stride..][..kunits * 4].copy_from_slice(&units);
                    w_r.push(rounded);
                }
                let mut blocks = vec![0u8; n.div_ceil(br) * bb];
                for transpose in [true, false] {
                    let pad = 3;
                    let mut out: Vec<Vec<f32>> = (0..m).map(|_| vec![f32::NAN; n + pad]).collect();
                    let mut dst = DstRows::new(out.iter_mut().map(|r| &mut r[..n]), n);
                    let mut ops = GroupOperands { acts: &acts, src: transpose.then_some((&src[..], stride)), blocks: &mut blocks, kunits, dst: &mut dst };
                    session.float_group(outer, &mut ops);
                    for i in 0..m {
                        for c in 0..n {
                            let (want, mag) = a_r[i].iter().zip(&w_r[c]).fold((0f64, 0f64), |s, (x, y)| (s.0 + x * y, s.1 + (x * y).abs()));
                            let got = out[i][c] as f64;
                            assert!((got - want).abs() <= 1e-5 * mag + 1e-6, "{outer:?} sme2={sme2} {m}x{n}x{k} transpose={transpose} ({i},{c}): got {got}, want {want}");
                        }
                        assert!(out[i][n..].iter().all(|v| v.is_nan()), "{outer:?} {m}x{n}x{k}: wrote past the group's columns");
                    }
                }
            }
        }
    }
    eprintln!("sme float group kernels ran at SVL {} bits, sme2 {}", geo.svl * 8, geo.sme2);
}

/// The int8 kernels' outputs are the bits of ggml's block order, `f = fma(isum, d_w * d_a,
/// f)` per block, the minimum terms `m_w * s_a` summed apart and added last (SME2, ggml's
/// aarch64 order) or fused into `f` per block (SME1, its x86 order), on odd shapes.
#[test]
fn i8_group_kernel_gives_ggml_block_order_bits_on_odd_shapes() {
    use super::I8Scales;
    let Some(geo) = geometry() else { return };
    let mut rng = StdRng::seed_from_u64(7);
    let (br, vl32) = (geo.block_rows(), geo.vl32());
    let rec = 4 * vl32;
    let shapes = [(1, 1, 1), (3, 5, 3), (17, 33, 2), (2 * br + 1, 64, 5), (br, br + 1, 1), (5, 70, 9)];
    let f16ish = |rng: &mut StdRng, lo: f32, hi: f32| f16::from_f32(rng.gen_range(lo..hi)).to_f32();
    for sme2 in [false, true].into_iter().filter(|&s| s <= geo.sme2) {
        let geo = Geometry { sme2, ..geo };
        let session = Streaming::begin(geo);
        for has_min in [false, true] {
            for &(m, n, nb) in &shapes {
                let (m, n, nb): (usize, usize, usize) = (m, n, nb);
                let k = 32 * nb;
                let kunits = geo.kunits(k / 4);
                let bb = geo.block_bytes(kunits);
                let (wlo, whi) = if has_min { (0, 16) } else { (-8, 8) };
                let aq: Vec<Vec<i8>> = (0..m).map(|_| (0..k).map(|_| rng.gen_range(-127..=127)).collect()).collect();
                let wq: Vec<Vec<i8>> = (0..n).map(|_| (0..k).map(|_| rng.gen_range(wlo..whi)).collect()).collect();
                let ad: Vec<Vec<(f32, f32)>> = (0..m).map(|_| (0..nb).map(|_| (f16ish(&mut rng, 0.001, 0.02), f16ish(&mut rng, -2.0, 2.0))).collect()).collect();
                let wd: Vec<Vec<(f32, f32)>> = (0..n).map(|_| (0..nb).map(|_| (f16ish(&mut rng, 0.001, 0.05), f16ish(&mut rng, -0.5, 0.0))).collect()).collect();
                let m_blocks = m.div_ceil(br);
                let mut acts = vec![0u8; m_blocks * bb];
                let mut a_sc = vec![0f32; m_blocks * nb * rec];
                for r in 0..m_blocks * br {
                    let block = &mut acts[r / br * bb..][..bb];
                    if r >= m {
                        zero_block_row(&geo, block, r % br, kunits);
                        continue;
                    }
                    let mut units = vec![0u8; kunits * 4];
                    for (u, &q) in units.iter_mut().zip(&aq[r]) {
                        *u = q as u8;
                    }
                    put_block_row(&geo, block, r % br, &units);
                    for b in 0..nb {
                        let at = ((r / br) * nb + b) * rec + 2 * (r % br);
                        (a_sc[at], a_sc[at + 1]) = ad[r][b];
                    }
                }
                let stride = kunits * 4 + 4;
                let mut src = vec![0u8; n.next_multiple_of(vl32) * stride];
                let mut w_sc = vec![0f32; n.div_ceil(br) * nb * rec];
                for c in 0..n {
                    for (o, &q) in src[c * stride..].iter_mut().zip(&wq[c]) {
                        *o = q as u8;
                    }
                    for b in 0..nb {
                        let at = ((c / br) * nb + b) * rec + c % br;
                        (w_sc[at], w_sc[at + 2 * vl32]) = wd[c][b];
                    }
                }
                let mut blocks = vec![0u8; n.div_ceil(br) * bb];
                let mut acc = vec![0f32; 4 * vl32 * vl32];
                for transpose in [true, false] {
                    let mut out: Vec<Vec<f32>> = (0..m).map(|_| vec![f32::NAN; n + 2]).collect();
                    let mut dst = DstRows::new(out.iter_mut().map(|r| &mut r[..n]), n);
                    let mut ops = GroupOperands { acts: &acts, src: transpose.then_some((&src[..], stride)), blocks: &mut blocks, kunits, dst: &mut dst };
                    session.i8_group(&mut ops, I8Scales { acts: &a_sc, weights: &w_sc, nb, has_min, acc: &mut acc });
                    for i in 0..m {
                        for c in 0..n {
                            // SME2: the minimum terms summed apart and added last (aarch64);
                            // SME1: added per block into the sum (x86).
                            let (mut f, mut s) = (0f32, 0f32);
                            for b in 0..nb {
                                let isum: i32 = (32 * b..32 * b + 32).map(|j| aq[i][j] as i32 * wq[c][j] as i32).sum();
                                f = (isum as f32).mul_add(wd[c][b].0 * ad[i][b].0, f);
                                match (has_min, sme2) {
                                    (true, true) => s += wd[c][b].1 * ad[i][b].1,
                                    (true, false) => f = wd[c][b].1.mul_add(ad[i][b].1, f),
                                    _ => {}
                                }
                            }
                            if has_min && sme2 {
                                f += s;
                            }
                            let got = out[i][c];
                            assert_eq!(got.to_bits(), f.to_bits(), "sme2={sme2} min={has_min} {m}x{n}x{k} transpose={transpose} ({i},{c}): got {got}, want {f}");
                        }
                        assert!(out[i][n..].iter().all(|v| v.is_nan()), "{m}x{n}x{k}: wrote past the group's columns");
                    }
                }
            }
        }
    }
    eprintln!("sme int8 group kernel ran at SVL {} bits, sme2 {}", geo.svl * 8, geo.sme2);
}

/// The NEON Q4_0 stager gives the bytes of the portable path (dequantize, round to f16, put
/// in nibble-pair order) on a packed group, with rows wider than the units.
#[test]
fn q4_0x16_stager_matches_the_portable_path() {
    use super::stage::{nibble_pairs, q4_0x16_units};
    use crate::dtype::DType;
    use crate::kernels::packed::{self, Layout};
    use crate::kernels::quant::scalar_kernels;
    if !std::arch::is_aarch64_feature_detected!("fp16") {
        eprintln!("no FEAT_FP16: Q4_0 stager not exercised");
        return;
    }
    let mut rng = StdRng::seed_from_u64(3);
    let q = scalar_kernels(DType::Q4_0).unwrap();
    for nb in [1, 3, 8] {
        let k = 32 * nb;
        let rb = DType::Q4_0.row_bytes(k);
        let mut raw = vec![0u8; 16 * rb];
        for r in 0..16 {
            let vals: Vec<f32> = (0..k).map(|_| rng.gen_range(-3.0f32..3.0)).collect();
            (q.from_f32.unwrap())(&vals, &mut raw[r * rb..(r + 1) * rb]);
        }
        let mut group = vec![0u8; raw.len()];
        packed::pack(Layout::Q4_0x16, DType::Q4_0, &raw, &mut group, 16, k);
        let stride = 2 * k + 36;
        let mut got = vec![0xAAu8; 16 * stride];
        q4_0x16_units(&group, nb, &mut got, stride);
        let (mut f, mut h, mut want) = (vec![0f32; k], vec![0u8; 2 * k], vec![0u8; 2 * k]);
        for r in 0..16 {
            (q.to_f32)(&raw[r * rb..(r + 1) * rb], &mut f);
            f32_to_f16(&f, &mut h);
            nibble_pairs(&h, &mut want);
            assert_eq!(&got[r * stride..r * stride + 2 * k], &want[..], "nb={nb} row {r}");
            assert!(got[r * stride + 2 * k..(r + 1) * stride].iter().all(|&b| b == 0xAA), "nb={nb} row {r}: wrote past the units");
        }
    }
}

/// The NEON Q8_0 stager gives the bytes of the portable path (dequantize, round to f16,
/// natural or nibble-pair order).
#[test]
fn q8_0_stager_matches_the_portable_path() {
    use super::stage::{nibble_pairs, q8_0_units};
    use crate::dtype::DType;
    use crate::kernels::quant::scalar_kernels;
    if !std::arch::is_aarch64_feature_detected!("fp16") {
        eprintln!("no FEAT_FP16: Q8_0 stager not exercised");
        return;
    }
    let mut rng = StdRng::seed_from_u64(4);
    let q = scalar_kernels(DType::Q8_0).unwrap();
    for nb in [1, 2, 7] {
        let k = 32 * nb;
        let vals: Vec<f32> = (0..k).map(|_| rng.gen_range(-40.0f32..40.0)).collect();
        let mut blocks = vec![0u8; DType::Q8_0.row_bytes(k)];
        (q.from_f32.unwrap())(&vals, &mut blocks);
        let (mut f, mut h) = (vec![0f32; k], vec![0u8; 2 * k]);
        (q.to_f32)(&blocks, &mut f);
        f32_to_f16(&f, &mut h);
        for nibble in [false, true] {
            let mut want = h.clone();
            if nibble {
                nibble_pairs(&h, &mut want);
            }
            let mut got = vec![0xAAu8; 2 * k + 8];
            q8_0_units(&blocks, nb, &mut got, nibble);
            assert_eq!(&got[..2 * k], &want[..], "nb={nb} nibble={nibble}");
            assert!(got[2 * k..].iter().all(|&b| b == 0xAA), "nb={nb}: wrote past the units");
        }
    }
}
