//! Activation quantizers, as ggml-cpu's ARM `quantize_row_q8_0` / `q8_1` (d = amax/127,
//! id = 1/d, `vcvtnq_s32_f32` rounding half to even) and `quantize_row_q8_K_ref` (which
//! ggml-cpu uses on ARM): bit-identical to the scalar tier, which follows the same rules.

use core::arch::aarch64::*;
use core::mem::offset_of;

use super::super::blocks::*;
use super::super::check_from_f32;
use super::{neon_entry, arr, arr_mut, ld_f32, st_u8};
use crate::dtype::DType;

/// Rounds 16 f32 lanes (already scaled) half to even and narrows them to 16 i8 with
/// saturation (the scalar tier's `as i8`; in-range values are unchanged).
#[inline]
#[target_feature(enable = "neon")]
fn narrow16(q: [int32x4_t; 4]) -> int8x16_t {
    let lo = vcombine_s16(vqmovn_s32(q[0]), vqmovn_s32(q[1]));
    let hi = vcombine_s16(vqmovn_s32(q[2]), vqmovn_s32(q[3]));
    vcombine_s8(vqmovn_s16(lo), vqmovn_s16(hi))
}

/// One Q8_0 / Q8_1 block: d and the 32 quants as two i8x16.
#[inline]
#[target_feature(enable = "neon")]
fn q8_block(x: &[f32; 32]) -> (f32, [int8x16_t; 2]) {
    let v: [float32x4_t; 8] = std::array::from_fn(|j| ld_f32(arr(x, 4 * j)));
    // NaN lanes are ignored, as the scalar tier's `f32::max` does.
    let mut m = [vdupq_n_f32(0.0); 4];
    for j in 0..4 {
        m[j] = vmaxnmq_f32(vabsq_f32(v[2 * j]), vabsq_f32(v[2 * j + 1]));
    }
    let amax = vmaxnmvq_f32(vmaxnmq_f32(vmaxnmq_f32(m[0], m[1]), vmaxnmq_f32(m[2], m[3])));
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let q: [int32x4_t; 8] = std::array::from_fn(|j| vcvtnq_s32_f32(vmulq_n_f32(v[j], id)));
    (d, [narrow16([q[0], q[1], q[2], q[3]]), narrow16([q[4], q[5], q[6], q[7]])])
}

neon_entry!(quantize_q8_0 => quantize_q8_0_impl(src: &[f32], dst: &mut [u8]));

#[target_feature(enable = "neon")]
fn quantize_q8_0_impl(src: &[f32], dst: &mut [u8]) {
    check_from_f32(DType::Q8_0, src.len(), dst.len());
    const B: usize = DType::Q8_0.block_bytes();
    const QS: usize = offset_of!(BlockQ8_0, qs);
    let nb = src.len() / QK8_0;
    let (xs, _) = src.as_chunks::<QK8_0>();
    let (ys, _) = dst[..nb * B].as_chunks_mut::<B>();
    for (x, y) in xs.iter().zip(ys) {
        let (d, q) = q8_block(x);
        y[0..2].copy_from_slice(&f32_to_fp16(d).to_ne_bytes());
        st_u8(arr_mut(y, QS), vreinterpretq_u8_s8(q[0]));
        st_u8(arr_mut(y, QS + 16), vreinterpretq_u8_s8(q[1]));
    }
}

neon_entry!(quantize_q8_1 => quantize_q8_1_impl(src: &[f32], dst: &mut [u8]));

#[target_feature(enable = "neon")]
fn quantize_q8_1_impl(src: &[f32], dst: &mut [u8]) {
    check_from_f32(DType::Q8_1, src.len(), dst.len());
    const B: usize = DType::Q8_1.block_bytes();
    const QS: usize = offset_of!(BlockQ8_1, qs);
    const S: usize = offset_of!(BlockQ8_1, s);
    let nb = src.len() / QK8_1;
    let (xs, _) = src.as_chunks::<QK8_1>();
    let (ys, _) = dst[..nb * B].as_chunks_mut::<B>();
    for (x, y) in xs.iter().zip(ys) {
        let (d, q) = q8_block(x);
        let sum = vaddlvq_s8(q[0]) as i32 + vaddlvq_s8(q[1]) as i32;
        y[0..2].copy_from_slice(&f32_to_fp16(d).to_ne_bytes());
        y[S..S + 2].copy_from_slice(&f32_to_fp16(sum as f32 * d).to_ne_bytes());
        st_u8(arr_mut(y, QS), vreinterpretq_u8_s8(q[0]));
        st_u8(arr_mut(y, QS + 16), vreinterpretq_u8_s8(q[1]));
    }
}

neon_entry!(
    /// `quantize_row_q8_K_ref`: the scale from the first element of largest magnitude (with its
    /// sign), `iscale = -127/max`, nearest even, quants capped at 127, bsums per 16.
    quantize_q8_k => quantize_q8_k_impl(src: &[f32], dst: &mut [u8]));

#[target_feature(enable = "neon")]
fn quantize_q8_k_impl(src: &[f32], dst: &mut [u8]) {
    check_from_f32(DType::Q8_K, src.len(), dst.len());
    const B: usize = DType::Q8_K.block_bytes();
    const QS: usize = offset_of!(BlockQ8K, qs);
    const BS: usize = offset_of!(BlockQ8K, bsums);
    let nb = src.len() / QK_K;
    let (xs, _) = src.as_chunks::<QK_K>();
    let (ys, _) = dst[..nb * B].as_chunks_mut::<B>();
    for (x, y) in xs.iter().zip(ys) {
        let mut amaxv = [vdupq_n_f32(0.0); 4];
        for k in 0..QK_K / 16 {
            for (l, m) in amaxv.iter_mut().enumerate() {
                *m = vmaxnmq_f32(*m, vabsq_f32(ld_f32(arr(x, 16 * k + 4 * l))));
            }
        }
        let amax = vmaxnmvq_f32(vmaxnmq_f32(vmaxnmq_f32(amaxv[0], amaxv[1]), vmaxnmq_f32(amaxv[2], amaxv[3])));
        if amax == 0.0 {
            y.fill(0);
            continue;
        }
        // The first element whose magnitude is the maximum (the scalar tier's strict `>`).
        let max = x.iter().copied().find(|v| v.abs() == amax).unwrap_or(amax);
        let iscale = -127.0f32 / max;
        let cap = vdupq_n_s32(127);
        let mut bsums = [0u8; 32];
        for k in 0..QK_K / 16 {
            let q: [int32x4_t; 4] = std::array::from_fn(|l| vminq_s32(vcvtnq_s32_f32(vmulq_n_f32(ld_f32(arr(x, 16 * k + 4 * l)), iscale)), cap));
            let q8 = narrow16(q);
            bsums[2 * k..2 * k + 2].copy_from_slice(&vaddlvq_s8(q8).to_ne_bytes());
            st_u8(arr_mut(y, QS + 16 * k), vreinterpretq_u8_s8(q8));
        }
        y[0..4].copy_from_slice(&(1.0 / iscale).to_ne_bytes());
        y[BS..BS + 32].copy_from_slice(&bsums);
    }
}
