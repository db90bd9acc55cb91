//! Quantized dots with SDOT (i8 x i8 -> i32 in groups of 4).
//!
//! Q4_0 / Q4_1 / Q8_0 give ggml-cpu's aarch64 bits (`quant::arm_order`): two blocks per
//! step, each block's int32 lanes converted to f32 and fused-multiplied by d_x*d_y into its
//! own f32 lane accumulator, the lanes summed at the end, an odd last block as ggml's scalar
//! loop. The K-quant
//! dots give the scalar tier's bits: exact int32 sums per super-block, then the same float
//! sequence (`d*sumi - dmin*summ`, `d_x*d_y*sumi`).

use core::arch::aarch64::*;
use core::mem::offset_of;

use super::super::blocks::*;
use super::super::{arm_order, check_vec_dot};
use super::{neon_entry, arr, f32_at, h2f, ld_s8, ld_u8, sdot, u16_at};
use crate::dtype::DType;

/// `lo` and `hi` nibbles of 16 packed bytes, as i8 (0..15).
#[inline]
#[target_feature(enable = "neon")]
fn nibbles(q: uint8x16_t) -> (int8x16_t, int8x16_t) {
    (vreinterpretq_s8_u8(vandq_u8(q, vdupq_n_u8(0x0F))), vreinterpretq_s8_u8(vshrq_n_u8::<4>(q)))
}

/// The two-blocks-per-step loop shared by the 32-element dots: `block(x, y)` gives a block's
/// int32 lanes; `extra` is added to the lane sums (Q4_1's minimum terms), then ggml's scalar
/// loop on the odd last block.
#[inline]
#[target_feature(enable = "neon")]
fn pairs_of_blocks<const BX: usize, const BY: usize>(
    ty: DType,
    n: usize,
    w: &[u8],
    a: &[u8],
    block: impl Fn(&[u8; BX], &[u8; BY]) -> int32x4_t,
    extra: Option<f32>,
) -> f32 {
    let nb = n / 32;
    let (xs, _) = w[..nb * BX].as_chunks::<BX>();
    let (ys, _) = a[..nb * BY].as_chunks::<BY>();
    let mut sumv = [vdupq_n_f32(0.0); 2];
    let (xp, yp) = (xs.chunks_exact(2), ys.chunks_exact(2));
    for (x2, y2) in xp.zip(yp) {
        for k in 0..2 {
            let (x, y) = (&x2[k], &y2[k]);
            let p = block(x, y);
            sumv[k] = vfmaq_n_f32(sumv[k], vcvtq_f32_s32(p), h2f(u16_at(x, 0)) * h2f(u16_at(y, 0)));
        }
    }
    // FADDP twice: (l0 + l1) + (l2 + l3), as ggml's vaddvq_f32.
    let mut sumf = vaddvq_f32(sumv[0]) + vaddvq_f32(sumv[1]);
    if let Some(e) = extra {
        sumf += e;
    }
    if nb % 2 == 1 {
        sumf = arm_order::tail(ty, sumf, w, a, nb - 1);
    }
    sumf
}

neon_entry!(dot_q4_0_q8_0 => dot_q4_0_q8_0_impl(n: usize, w: &[u8], a: &[u8]) -> f32);

#[target_feature(enable = "neon")]
fn dot_q4_0_q8_0_impl(n: usize, w: &[u8], a: &[u8]) -> f32 {
    check_vec_dot(DType::Q4_0, DType::Q8_0, n, w.len(), a.len());
    const BX: usize = DType::Q4_0.block_bytes();
    const BY: usize = DType::Q8_0.block_bytes();
    const XQ: usize = offset_of!(BlockQ4_0, qs);
    const YQ: usize = offset_of!(BlockQ8_0, qs);
    let block = |x: &[u8; BX], y: &[u8; BY]| {
        let (lo, hi) = nibbles(ld_u8(arr(x, XQ)));
        let eight = vdupq_n_s8(8);
        let p = sdot(vdupq_n_s32(0), vsubq_s8(lo, eight), ld_s8(arr(y, YQ)));
        sdot(p, vsubq_s8(hi, eight), ld_s8(arr(y, YQ + 16)))
    };
    pairs_of_blocks::<BX, BY>(DType::Q4_0, n, w, a, block, None)
}

neon_entry!(dot_q4_1_q8_1 => dot_q4_1_q8_1_impl(n: usize, w: &[u8], a: &[u8]) -> f32);

#[target_feature(enable = "neon")]
fn dot_q4_1_q8_1_impl(n: usize, w: &[u8], a: &[u8]) -> f32 {
    check_vec_dot(DType::Q4_1, DType::Q8_1, n, w.len(), a.len());
    const BX: usize = DType::Q4_1.block_bytes();
    const BY: usize = DType::Q8_1.block_bytes();
    const XQ: usize = offset_of!(BlockQ4_1, qs);
    const XM: usize = offset_of!(BlockQ4_1, m);
    const YQ: usize = offset_of!(BlockQ8_1, qs);
    const YS: usize = offset_of!(BlockQ8_1, s);
    let block = |x: &[u8; BX], y: &[u8; BY]| {
        let (lo, hi) = nibbles(ld_u8(arr(x, XQ)));
        let p = sdot(vdupq_n_s32(0), lo, ld_s8(arr(y, YQ)));
        sdot(p, hi, ld_s8(arr(y, YQ + 16)))
    };
    // The minimum terms m_x * s_y of the paired blocks, summed in f32 beside the lanes; clang
    // contracts ggml's `m0*s0 + m1*s1` to fma(m0, s0, m1 * s1).
    let nb = n / 32;
    let whole = nb - nb % 2;
    let mut summs = 0.0f32;
    for ib in (0..whole).step_by(2) {
        let (x0, y0) = (&w[ib * BX..], &a[ib * BY..]);
        let (x1, y1) = (&w[(ib + 1) * BX..], &a[(ib + 1) * BY..]);
        summs += h2f(u16_at(x0, XM)).mul_add(h2f(u16_at(y0, YS)), h2f(u16_at(x1, XM)) * h2f(u16_at(y1, YS)));
    }
    // The odd last block's scalar line carries its own minimum term.
    pairs_of_blocks::<BX, BY>(DType::Q4_1, n, w, a, block, Some(summs))
}

neon_entry!(dot_q8_0_q8_0 => dot_q8_0_q8_0_impl(n: usize, w: &[u8], a: &[u8]) -> f32);

#[target_feature(enable = "neon")]
fn dot_q8_0_q8_0_impl(n: usize, w: &[u8], a: &[u8]) -> f32 {
    check_vec_dot(DType::Q8_0, DType::Q8_0, n, w.len(), a.len());
    const B: usize = DType::Q8_0.block_bytes();
    const QS: usize = offset_of!(BlockQ8_0, qs);
    let block = |x: &[u8; B], y: &[u8; B]| {
        let p = sdot(vdupq_n_s32(0), ld_s8(arr(x, QS)), ld_s8(arr(y, QS)));
        vaddq_s32(p, sdot(vdupq_n_s32(0), ld_s8(arr(x, QS + 16)), ld_s8(arr(y, QS + 16))))
    };
    pairs_of_blocks::<B, B>(DType::Q8_0, n, w, a, block, None)
}

const BY_K: usize = DType::Q8_K.block_bytes();
const YQ_K: usize = offset_of!(BlockQ8K, qs);
const YBS_K: usize = offset_of!(BlockQ8K, bsums);

/// `sum_j m[j/2] * bsums[j]` of a Q4_K / Q5_K super-block (exact).
#[inline]
#[target_feature(enable = "neon")]
fn mins_dot_bsums(m: &[u8; 8], y: &[u8; BY_K]) -> i32 {
    let b0 = vreinterpretq_s16_u8(ld_u8(arr(y, YBS_K)));
    let b1 = vreinterpretq_s16_u8(ld_u8(arr(y, YBS_K + 16)));
    // Adjacent bsums share a minimum: |pair| <= 2 * 16 * 128, no i16 overflow.
    let pairs = vpaddq_s16(b0, b1);
    // SAFETY: reads exactly the 8 bytes of `m`.
    let m16 = vreinterpretq_s16_u16(vmovl_u8(unsafe { vld1_u8(m.as_ptr()) }));
    let s = vaddq_s32(vmull_s16(vget_low_s16(pairs), vget_low_s16(m16)), vmull_high_s16(pairs, m16));
    vaddvq_s32(s)
}

/// Shared tail of the Q4_K / Q5_K super-block: `d*sumi - dmin*summ` as the scalar tier.
#[inline]
#[target_feature(enable = "neon")]
fn k4_block_value(x: &[u8], dmin_off: usize, y: &[u8; BY_K], sumi: i32, m: &[u8; 8]) -> f32 {
    let summ = mins_dot_bsums(m, y);
    let yd = f32_at(y, 0);
    let d = h2f(u16_at(x, 0)) * yd;
    let dmin = h2f(u16_at(x, dmin_off)) * yd;
    d * sumi as f32 - dmin * summ as f32
}

neon_entry!(dot_q4_k_q8_k => dot_q4_k_q8_k_impl(n: usize, w: &[u8], a: &[u8]) -> f32);

#[target_feature(enable = "neon")]
fn dot_q4_k_q8_k_impl(n: usize, w: &[u8], a: &[u8]) -> f32 {
    check_vec_dot(DType::Q4_K, DType::Q8_K, n, w.len(), a.len());
    const BX: usize = DType::Q4_K.block_bytes();
    const DMIN: usize = offset_of!(BlockQ4K, dmin);
    const SC: usize = offset_of!(BlockQ4K, scales);
    const XQ: usize = offset_of!(BlockQ4K, qs);
    let nb = n / QK_K;
    let (xs, _) = w[..nb * BX].as_chunks::<BX>();
    let (ys, _) = a[..nb * BY_K].as_chunks::<BY_K>();
    let mut sumf = 0.0f32;
    for (x, y) in xs.iter().zip(ys) {
        let (sc, m) = scales_mins_k4(arr(x, SC));
        let mut acc = vdupq_n_s32(0);
        for c in 0..4 {
            let (l0, h0) = nibbles(ld_u8(arr(x, XQ + 32 * c)));
            let (l1, h1) = nibbles(ld_u8(arr(x, XQ + 32 * c + 16)));
            let y4: [int8x16_t; 4] = std::array::from_fn(|k| ld_s8(arr(y, YQ_K + 64 * c + 16 * k)));
            let plo = sdot(sdot(vdupq_n_s32(0), l0, y4[0]), l1, y4[1]);
            let phi = sdot(sdot(vdupq_n_s32(0), h0, y4[2]), h1, y4[3]);
            acc = vmlaq_n_s32(acc, plo, sc[2 * c] as i32);
            acc = vmlaq_n_s32(acc, phi, sc[2 * c + 1] as i32);
        }
        sumf += k4_block_value(x, DMIN, y, vaddvq_s32(acc), &m);
    }
    sumf
}

neon_entry!(dot_q5_k_q8_k => dot_q5_k_q8_k_impl(n: usize, w: &[u8], a: &[u8]) -> f32);

#[target_feature(enable = "neon")]
fn dot_q5_k_q8_k_impl(n: usize, w: &[u8], a: &[u8]) -> f32 {
    check_vec_dot(DType::Q5_K, DType::Q8_K, n, w.len(), a.len());
    const BX: usize = DType::Q5_K.block_bytes();
    const DMIN: usize = offset_of!(BlockQ5K, dmin);
    const SC: usize = offset_of!(BlockQ5K, scales);
    const XH: usize = offset_of!(BlockQ5K, qh);
    const XQ: usize = offset_of!(BlockQ5K, qs);
    let nb = n / QK_K;
    let (xs, _) = w[..nb * BX].as_chunks::<BX>();
    let (ys, _) = a[..nb * BY_K].as_chunks::<BY_K>();
    let (one, two) = (vdupq_n_u8(1), vdupq_n_u8(2));
    let mut sumf = 0.0f32;
    for (x, y) in xs.iter().zip(ys) {
        let (sc, m) = scales_mins_k4(arr(x, SC));
        // qh bits 2c and 2c+1 are the fifth bits of chunk c's low and high nibbles; shifted
        // down by 2 per chunk.
        let mut qh = [ld_u8(arr(x, XH)), ld_u8(arr(x, XH + 16))];
        let mut acc = vdupq_n_s32(0);
        for c in 0..4 {
            let mut lo = [vdupq_n_s8(0); 2];
            let mut hi = [vdupq_n_s8(0); 2];
            for k in 0..2 {
                let (l, h) = nibbles(ld_u8(arr(x, XQ + 32 * c + 16 * k)));
                let bl = vreinterpretq_s8_u8(vshlq_n_u8::<4>(vandq_u8(qh[k], one)));
                let bh = vreinterpretq_s8_u8(vshlq_n_u8::<3>(vandq_u8(qh[k], two)));
                lo[k] = vorrq_s8(l, bl);
                hi[k] = vorrq_s8(h, bh);
                qh[k] = vshrq_n_u8::<2>(qh[k]);
            }
            let y4: [int8x16_t; 4] = std::array::from_fn(|k| ld_s8(arr(y, YQ_K + 64 * c + 16 * k)));
            let plo = sdot(sdot(vdupq_n_s32(0), lo[0], y4[0]), lo[1], y4[1]);
            let phi = sdot(sdot(vdupq_n_s32(0), hi[0], y4[2]), hi[1], y4[3]);
            acc = vmlaq_n_s32(acc, plo, sc[2 * c] as i32);
            acc = vmlaq_n_s32(acc, phi, sc[2 * c + 1] as i32);
        }
        sumf += k4_block_value(x, DMIN, y, vaddvq_s32(acc), &m);
    }
    sumf
}

neon_entry!(dot_q6_k_q8_k => dot_q6_k_q8_k_impl(n: usize, w: &[u8], a: &[u8]) -> f32);

#[target_feature(enable = "neon")]
fn dot_q6_k_q8_k_impl(n: usize, w: &[u8], a: &[u8]) -> f32 {
    check_vec_dot(DType::Q6_K, DType::Q8_K, n, w.len(), a.len());
    const BX: usize = DType::Q6_K.block_bytes();
    const QL: usize = offset_of!(BlockQ6K, ql);
    const QH: usize = offset_of!(BlockQ6K, qh);
    const SC: usize = offset_of!(BlockQ6K, scales);
    const D: usize = offset_of!(BlockQ6K, d);
    let nb = n / QK_K;
    let (xs, _) = w[..nb * BX].as_chunks::<BX>();
    let (ys, _) = a[..nb * BY_K].as_chunks::<BY_K>();
    let m4 = vdupq_n_u8(0x0F);
    let m30 = vdupq_n_u8(0x30);
    let c32 = vdupq_n_s8(32);
    let mut sumf = 0.0f32;
    for (x, y) in xs.iter().zip(ys) {
        let mut acc = vdupq_n_s32(0);
        for h in 0..2 {
            let ql: [uint8x16_t; 4] = std::array::from_fn(|k| ld_u8(arr(x, QL + 64 * h + 16 * k)));
            let qh: [uint8x16_t; 2] = std::array::from_fn(|k| ld_u8(arr(x, QH + 32 * h + 16 * k)));
            for k in 0..2 {
                // Elements 128h + 32p + 16k + (0..16), p = 0..4: sub-block 8h + 2p + k.
                let q = [
                    vorrq_u8(vandq_u8(ql[k], m4), vandq_u8(vshlq_n_u8::<4>(qh[k]), m30)),
                    vorrq_u8(vandq_u8(ql[2 + k], m4), vandq_u8(vshlq_n_u8::<2>(qh[k]), m30)),
                    vorrq_u8(vshrq_n_u8::<4>(ql[k]), vandq_u8(qh[k], m30)),
                    vorrq_u8(vshrq_n_u8::<4>(ql[2 + k]), vandq_u8(vshrq_n_u8::<2>(qh[k]), m30)),
                ];
                for (p, &qp) in q.iter().enumerate() {
                    let off = 128 * h + 32 * p + 16 * k;
                    let s = sdot(vdupq_n_s32(0), vsubq_s8(vreinterpretq_s8_u8(qp), c32), ld_s8(arr(y, YQ_K + off)));
                    acc = vmlaq_n_s32(acc, s, x[SC + off / 16] as i8 as i32);
                }
            }
        }
        let sumi = vaddvq_s32(acc);
        sumf += h2f(u16_at(x, D)) * f32_at(y, 0) * sumi as f32;
    }
    sumf
}
