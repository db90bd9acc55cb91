//! Dequantizers, bit-identical to the scalar tier: the same products and sums, each rounded
//! on its own (no fused multiply-add).

use core::arch::aarch64::*;
use core::mem::offset_of;

use super::super::blocks::*;
use super::super::check_to_f32;
use super::{neon_entry, arr, arr_mut, f32_at, h2f, ld_s8, ld_u8, st_f32, u16_at};
use crate::dtype::DType;

/// 16 i8 -> 16 f32 (exact).
#[inline]
#[target_feature(enable = "neon")]
fn i8x16_to_f32(q: int8x16_t) -> [float32x4_t; 4] {
    let lo = vmovl_s8(vget_low_s8(q));
    let hi = vmovl_high_s8(q);
    [
        vcvtq_f32_s32(vmovl_s16(vget_low_s16(lo))),
        vcvtq_f32_s32(vmovl_high_s16(lo)),
        vcvtq_f32_s32(vmovl_s16(vget_low_s16(hi))),
        vcvtq_f32_s32(vmovl_high_s16(hi)),
    ]
}

/// Stores 16 f32 at `y[off..off + 16]`.
#[inline]
#[target_feature(enable = "neon")]
fn st16(y: &mut [f32], off: usize, v: [float32x4_t; 4]) {
    for (k, vk) in v.into_iter().enumerate() {
        st_f32(arr_mut(y, off + 4 * k), vk);
    }
}

/// 16 unsigned values (< 128) as i8.
#[inline]
#[target_feature(enable = "neon")]
fn s8(v: uint8x16_t) -> int8x16_t {
    vreinterpretq_s8_u8(v)
}

neon_entry!(dequantize_q4_0 => dequantize_q4_0_impl(src: &[u8], dst: &mut [f32]));

#[target_feature(enable = "neon")]
fn dequantize_q4_0_impl(src: &[u8], dst: &mut [f32]) {
    check_to_f32(DType::Q4_0, src.len(), dst.len());
    const B: usize = DType::Q4_0.block_bytes();
    const QS: usize = offset_of!(BlockQ4_0, qs);
    let nb = dst.len() / QK4_0;
    let (xs, _) = src[..nb * B].as_chunks::<B>();
    let (ys, _) = dst.as_chunks_mut::<QK4_0>();
    let (m4, eight) = (vdupq_n_u8(0x0F), vdupq_n_s8(8));
    for (x, y) in xs.iter().zip(ys) {
        let d = h2f(u16_at(x, 0));
        let q = ld_u8(arr(x, QS));
        let lo = vsubq_s8(s8(vandq_u8(q, m4)), eight);
        let hi = vsubq_s8(s8(vshrq_n_u8::<4>(q)), eight);
        st16(y, 0, i8x16_to_f32(lo).map(|v| vmulq_n_f32(v, d)));
        st16(y, 16, i8x16_to_f32(hi).map(|v| vmulq_n_f32(v, d)));
    }
}

neon_entry!(dequantize_q4_1 => dequantize_q4_1_impl(src: &[u8], dst: &mut [f32]));

#[target_feature(enable = "neon")]
fn dequantize_q4_1_impl(src: &[u8], dst: &mut [f32]) {
    check_to_f32(DType::Q4_1, src.len(), dst.len());
    const B: usize = DType::Q4_1.block_bytes();
    const QS: usize = offset_of!(BlockQ4_1, qs);
    const M: usize = offset_of!(BlockQ4_1, m);
    let nb = dst.len() / QK4_1;
    let (xs, _) = src[..nb * B].as_chunks::<B>();
    let (ys, _) = dst.as_chunks_mut::<QK4_1>();
    let m4 = vdupq_n_u8(0x0F);
    for (x, y) in xs.iter().zip(ys) {
        let (d, m) = (h2f(u16_at(x, 0)), vdupq_n_f32(h2f(u16_at(x, M))));
        let q = ld_u8(arr(x, QS));
        let f = |v: float32x4_t| vaddq_f32(vmulq_n_f32(v, d), m);
        st16(y, 0, i8x16_to_f32(s8(vandq_u8(q, m4))).map(f));
        st16(y, 16, i8x16_to_f32(s8(vshrq_n_u8::<4>(q))).map(f));
    }
}

neon_entry!(dequantize_q8_0 => dequantize_q8_0_impl(src: &[u8], dst: &mut [f32]));

#[target_feature(enable = "neon")]
fn dequantize_q8_0_impl(src: &[u8], dst: &mut [f32]) {
    check_to_f32(DType::Q8_0, src.len(), dst.len());
    const B: usize = DType::Q8_0.block_bytes();
    const QS: usize = offset_of!(BlockQ8_0, qs);
    let nb = dst.len() / QK8_0;
    let (xs, _) = src[..nb * B].as_chunks::<B>();
    let (ys, _) = dst.as_chunks_mut::<QK8_0>();
    for (x, y) in xs.iter().zip(ys) {
        let d = h2f(u16_at(x, 0));
        for k in 0..2 {
            st16(y, 16 * k, i8x16_to_f32(ld_s8(arr(x, QS + 16 * k))).map(|v| vmulq_n_f32(v, d)));
        }
    }
}

neon_entry!(dequantize_q8_k => dequantize_q8_k_impl(src: &[u8], dst: &mut [f32]));

#[target_feature(enable = "neon")]
fn dequantize_q8_k_impl(src: &[u8], dst: &mut [f32]) {
    check_to_f32(DType::Q8_K, src.len(), dst.len());
    const B: usize = DType::Q8_K.block_bytes();
    const QS: usize = offset_of!(BlockQ8K, qs);
    let nb = dst.len() / QK_K;
    let (xs, _) = src[..nb * B].as_chunks::<B>();
    let (ys, _) = dst.as_chunks_mut::<QK_K>();
    for (x, y) in xs.iter().zip(ys) {
        let d = f32_at(x, 0);
        for k in 0..QK_K / 16 {
            st16(y, 16 * k, i8x16_to_f32(ld_s8(arr(x, QS + 16 * k))).map(|v| vmulq_n_f32(v, d)));
        }
    }
}

/// The Q4_K / Q5_K body: `quants(c, k)` gives the (low, high) 0..31 quants of bytes
/// 32c + 16k .. 32c + 16k + 16, which land at 64c + 16k (low) and 64c + 32 + 16k (high).
#[inline]
#[target_feature(enable = "neon")]
fn dequantize_k4(x: &[u8], sc_off: usize, dmin_off: usize, y: &mut [f32; QK_K], quants: impl Fn(usize, usize) -> (int8x16_t, int8x16_t)) {
    let d = h2f(u16_at(x, 0));
    let min = h2f(u16_at(x, dmin_off));
    let (sc, m) = scales_mins_k4(arr(x, sc_off));
    for c in 0..QK_K / 64 {
        let (d1, m1) = (d * sc[2 * c] as f32, vdupq_n_f32(min * m[2 * c] as f32));
        let (d2, m2) = (d * sc[2 * c + 1] as f32, vdupq_n_f32(min * m[2 * c + 1] as f32));
        for k in 0..2 {
            let (lo, hi) = quants(c, k);
            st16(y, 64 * c + 16 * k, i8x16_to_f32(lo).map(|v| vsubq_f32(vmulq_n_f32(v, d1), m1)));
            st16(y, 64 * c + 32 + 16 * k, i8x16_to_f32(hi).map(|v| vsubq_f32(vmulq_n_f32(v, d2), m2)));
        }
    }
}

neon_entry!(dequantize_q4_k => dequantize_q4_k_impl(src: &[u8], dst: &mut [f32]));

#[target_feature(enable = "neon")]
fn dequantize_q4_k_impl(src: &[u8], dst: &mut [f32]) {
    check_to_f32(DType::Q4_K, src.len(), dst.len());
    const B: usize = DType::Q4_K.block_bytes();
    const DMIN: usize = offset_of!(BlockQ4K, dmin);
    const SC: usize = offset_of!(BlockQ4K, scales);
    const QS: usize = offset_of!(BlockQ4K, qs);
    let nb = dst.len() / QK_K;
    let (xs, _) = src[..nb * B].as_chunks::<B>();
    let (ys, _) = dst.as_chunks_mut::<QK_K>();
    let m4 = vdupq_n_u8(0x0F);
    for (x, y) in xs.iter().zip(ys) {
        dequantize_k4(x, SC, DMIN, y, |c, k| {
            let q = ld_u8(arr(x, QS + 32 * c + 16 * k));
            (s8(vandq_u8(q, m4)), s8(vshrq_n_u8::<4>(q)))
        });
    }
}

neon_entry!(dequantize_q5_k => dequantize_q5_k_impl(src: &[u8], dst: &mut [f32]));

#[target_feature(enable = "neon")]
fn dequantize_q5_k_impl(src: &[u8], dst: &mut [f32]) {
    check_to_f32(DType::Q5_K, src.len(), dst.len());
    const B: usize = DType::Q5_K.block_bytes();
    const DMIN: usize = offset_of!(BlockQ5K, dmin);
    const SC: usize = offset_of!(BlockQ5K, scales);
    const QH: usize = offset_of!(BlockQ5K, qh);
    const QS: usize = offset_of!(BlockQ5K, qs);
    let nb = dst.len() / QK_K;
    let (xs, _) = src[..nb * B].as_chunks::<B>();
    let (ys, _) = dst.as_chunks_mut::<QK_K>();
    let (m4, one) = (vdupq_n_u8(0x0F), vdupq_n_u8(1));
    for (x, y) in xs.iter().zip(ys) {
        dequantize_k4(x, SC, DMIN, y, |c, k| {
            let q = ld_u8(arr(x, QS + 32 * c + 16 * k));
            let qh = ld_u8(arr(x, QH + 16 * k));
            // Bits 2c and 2c + 1 of qh, moved to bit 4 (shift counts must be constants).
            let (bl, bh) = match c {
                0 => (qh, vshrq_n_u8::<1>(qh)),
                1 => (vshrq_n_u8::<2>(qh), vshrq_n_u8::<3>(qh)),
                2 => (vshrq_n_u8::<4>(qh), vshrq_n_u8::<5>(qh)),
                _ => (vshrq_n_u8::<6>(qh), vshrq_n_u8::<7>(qh)),
            };
            let bl = vshlq_n_u8::<4>(vandq_u8(bl, one));
            let bh = vshlq_n_u8::<4>(vandq_u8(bh, one));
            (s8(vorrq_u8(vandq_u8(q, m4), bl)), s8(vorrq_u8(vshrq_n_u8::<4>(q), bh)))
        });
    }
}

neon_entry!(dequantize_q6_k => dequantize_q6_k_impl(src: &[u8], dst: &mut [f32]));

#[target_feature(enable = "neon")]
fn dequantize_q6_k_impl(src: &[u8], dst: &mut [f32]) {
    check_to_f32(DType::Q6_K, src.len(), dst.len());
    const B: usize = DType::Q6_K.block_bytes();
    const QL: usize = offset_of!(BlockQ6K, ql);
    const QH: usize = offset_of!(BlockQ6K, qh);
    const SC: usize = offset_of!(BlockQ6K, scales);
    const D: usize = offset_of!(BlockQ6K, d);
    let nb = dst.len() / QK_K;
    let (xs, _) = src[..nb * B].as_chunks::<B>();
    let (ys, _) = dst.as_chunks_mut::<QK_K>();
    let (m4, m30, c32) = (vdupq_n_u8(0x0F), vdupq_n_u8(0x30), vdupq_n_s8(32));
    for (x, y) in xs.iter().zip(ys) {
        let d = h2f(u16_at(x, D));
        for h in 0..2 {
            for k in 0..2 {
                let qa = ld_u8(arr(x, QL + 64 * h + 16 * k));
                let qb = ld_u8(arr(x, QL + 64 * h + 32 + 16 * k));
                let qh = ld_u8(arr(x, QH + 32 * h + 16 * k));
                let q = [
                    vorrq_u8(vandq_u8(qa, m4), vandq_u8(vshlq_n_u8::<4>(qh), m30)),
                    vorrq_u8(vandq_u8(qb, m4), vandq_u8(vshlq_n_u8::<2>(qh), m30)),
                    vorrq_u8(vshrq_n_u8::<4>(qa), vandq_u8(qh, m30)),
                    vorrq_u8(vshrq_n_u8::<4>(qb), vandq_u8(vshrq_n_u8::<2>(qh), m30)),
                ];
                for (p, &qp) in q.iter().enumerate() {
                    let off = 128 * h + 32 * p + 16 * k;
                    // C: d * sc * q, left to right in float.
                    let ds = d * x[SC + off / 16] as i8 as f32;
                    st16(y, off, i8x16_to_f32(vsubq_s8(s8(qp), c32)).map(|v| vmulq_n_f32(v, ds)));
                }
            }
        }
    }
}
