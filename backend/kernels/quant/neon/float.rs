//! Float types: F32 / F16 / BF16 dots, F16 / BF16 conversions, and the register-blocked BF16
//! dots of [`DenseKernels`](super::super::DenseKernels).
//!
//! The F16 / BF16 conversions are bit-identical to the scalar tier (FCVTL / FCVTN round to
//! nearest even; the bf16 rounding is `GGML_FP32_TO_BF16`'s integer one). The dots sum in f32
//! lanes (the scalar tier in f64).
//!
//! Every BF16 dot here, single, four rows, or the 4x3 block, runs the same chain per output
//! ([`bf16_dots`]), so the blocked ones give the single dot's bits: 8-element chunks, with
//! BFDOT into two accumulators by chunk parity, or without BF16 widened to f32 and
//! multiply-added into a (low, high) accumulator pair; the n mod 8 tail as one zero-padded
//! chunk; the two accumulators added, then the lanes.

use core::arch::aarch64::*;

use super::super::{check_from_f32, check_to_f32, check_vec_dot, scalar, Bf16Block4x3Fn, Bf16Rows4Fn};
use super::{neon_entry, arr, bf16_detected, bfdot, f16x8_to_f32, f32_to_f16x8, ld_f32_bytes, ld_u8, padded16, st_f32, st_u8};
use crate::dtype::DType;

// ---------------------------------------------------------------------------------------------
// F32
// ---------------------------------------------------------------------------------------------

neon_entry!(
    /// F32 · F32: four 4-lane fused multiply-add chains over 16-element steps, leftover 4-element
    /// chunks into the first, the n mod 4 tail by the scalar dot.
    dot_f32 => dot_f32_impl(n: usize, w: &[u8], a: &[u8]) -> f32);

#[target_feature(enable = "neon")]
fn dot_f32_impl(n: usize, w: &[u8], a: &[u8]) -> f32 {
    check_vec_dot(DType::F32, DType::F32, n, w.len(), a.len());
    let whole = n - n % 4;
    let (wc, _) = w[..4 * whole].as_chunks::<16>();
    let (ac, _) = a[..4 * whole].as_chunks::<16>();
    let mut acc = [vdupq_n_f32(0.0); 4];
    let (wq, aq) = (wc.chunks_exact(4), ac.chunks_exact(4));
    let (wr, ar) = (wq.remainder(), aq.remainder());
    for (w4, a4) in wq.zip(aq) {
        for k in 0..4 {
            acc[k] = vfmaq_f32(acc[k], ld_f32_bytes(&w4[k]), ld_f32_bytes(&a4[k]));
        }
    }
    for (w1, a1) in wr.iter().zip(ar) {
        acc[0] = vfmaq_f32(acc[0], ld_f32_bytes(w1), ld_f32_bytes(a1));
    }
    let s = vaddvq_f32(vaddq_f32(vaddq_f32(acc[0], acc[1]), vaddq_f32(acc[2], acc[3])));
    if whole < n {
        s + scalar::dot_f32(n - whole, &w[4 * whole..], &a[4 * whole..])
    } else {
        s
    }
}

// ---------------------------------------------------------------------------------------------
// F16
// ---------------------------------------------------------------------------------------------

neon_entry!(
    /// F16 · F16, widened to f32 (exact): 8-element chunks into two (low, high) accumulator pairs
    /// by chunk parity, the n mod 8 tail as one zero-padded chunk.
    dot_f16 => dot_f16_impl(n: usize, w: &[u8], a: &[u8]) -> f32);

#[target_feature(enable = "neon")]
fn dot_f16_impl(n: usize, w: &[u8], a: &[u8]) -> f32 {
    check_vec_dot(DType::F16, DType::F16, n, w.len(), a.len());
    let whole = n / 8;
    let (wc, _) = w[..16 * whole].as_chunks::<16>();
    let (ac, _) = a[..16 * whole].as_chunks::<16>();
    let mut acc = [vdupq_n_f32(0.0); 4];
    let mut step = |k: usize, x: uint8x16_t, y: uint8x16_t| {
        let (xl, xh) = f16x8_to_f32(x);
        let (yl, yh) = f16x8_to_f32(y);
        acc[2 * k] = vfmaq_f32(acc[2 * k], xl, yl);
        acc[2 * k + 1] = vfmaq_f32(acc[2 * k + 1], xh, yh);
    };
    let (wp, ap) = (wc.chunks_exact(2), ac.chunks_exact(2));
    let (wr, ar) = (wp.remainder(), ap.remainder());
    for (w2, a2) in wp.zip(ap) {
        step(0, ld_u8(&w2[0]), ld_u8(&a2[0]));
        step(1, ld_u8(&w2[1]), ld_u8(&a2[1]));
    }
    for (w1, a1) in wr.iter().zip(ar) {
        step(0, ld_u8(w1), ld_u8(a1));
    }
    let tail = 2 * (n % 8);
    if tail > 0 {
        step(1, ld_u8(&padded16(&w[16 * whole..], tail)), ld_u8(&padded16(&a[16 * whole..], tail)));
    }
    vaddvq_f32(vaddq_f32(vaddq_f32(acc[0], acc[1]), vaddq_f32(acc[2], acc[3])))
}

neon_entry!(f16_to_f32 => f16_to_f32_impl(src: &[u8], dst: &mut [f32]));

#[target_feature(enable = "neon")]
fn f16_to_f32_impl(src: &[u8], dst: &mut [f32]) {
    check_to_f32(DType::F16, src.len(), dst.len());
    let n = dst.len();
    let (sc, st) = src[..2 * n].as_chunks::<16>();
    let (dc, dt) = dst.as_chunks_mut::<8>();
    for (s, d) in sc.iter().zip(dc) {
        let (lo, hi) = f16x8_to_f32(ld_u8(s));
        st_f32(arr_mut4(d, 0), lo);
        st_f32(arr_mut4(d, 4), hi);
    }
    scalar::f16_to_f32(st, dt);
}

neon_entry!(f16_from_f32 => f16_from_f32_impl(src: &[f32], dst: &mut [u8]));

#[target_feature(enable = "neon")]
fn f16_from_f32_impl(src: &[f32], dst: &mut [u8]) {
    check_from_f32(DType::F16, src.len(), dst.len());
    let n = src.len();
    let (sc, st) = src.as_chunks::<8>();
    let (dc, dt) = dst[..2 * n].as_chunks_mut::<16>();
    for (s, d) in sc.iter().zip(dc) {
        st_u8(d, f32_to_f16x8(super::ld_f32(arr(s, 0)), super::ld_f32(arr(s, 4))));
    }
    scalar::f16_from_f32(st, dt);
}

#[inline]
#[target_feature(enable = "neon")]
fn arr_mut4(d: &mut [f32; 8], off: usize) -> &mut [f32; 4] {
    super::arr_mut(d, off)
}

// ---------------------------------------------------------------------------------------------
// BF16 conversions
// ---------------------------------------------------------------------------------------------

/// 8 bf16 (16 bytes) -> two f32x4 (exact: bf16 is the top half of an f32).
#[inline]
#[target_feature(enable = "neon")]
fn bf16x8_to_f32(v: uint8x16_t) -> (float32x4_t, float32x4_t) {
    let h = vreinterpretq_u16_u8(v);
    (vreinterpretq_f32_u32(vshll_n_u16::<16>(vget_low_u16(h))), vreinterpretq_f32_u32(vshll_high_n_u16::<16>(h)))
}

/// `GGML_FP32_TO_BF16` on 4 lanes: nearest even, NaNs made quiet, subnormals kept.
#[inline]
#[target_feature(enable = "neon")]
fn f32x4_to_bf16(x: float32x4_t) -> uint16x4_t {
    let u = vreinterpretq_u32_f32(x);
    let is_nan = vcgtq_u32(vandq_u32(u, vdupq_n_u32(0x7fff_ffff)), vdupq_n_u32(0x7f80_0000));
    let hi = vshrq_n_u32::<16>(u);
    let bias = vaddq_u32(vdupq_n_u32(0x7fff), vandq_u32(hi, vdupq_n_u32(1)));
    let rounded = vshrq_n_u32::<16>(vaddq_u32(u, bias));
    let quiet = vorrq_u32(hi, vdupq_n_u32(64));
    vmovn_u32(vbslq_u32(is_nan, quiet, rounded))
}

neon_entry!(bf16_to_f32 => bf16_to_f32_impl(src: &[u8], dst: &mut [f32]));

#[target_feature(enable = "neon")]
fn bf16_to_f32_impl(src: &[u8], dst: &mut [f32]) {
    check_to_f32(DType::BF16, src.len(), dst.len());
    let n = dst.len();
    let (sc, st) = src[..2 * n].as_chunks::<16>();
    let (dc, dt) = dst.as_chunks_mut::<8>();
    for (s, d) in sc.iter().zip(dc) {
        let (lo, hi) = bf16x8_to_f32(ld_u8(s));
        st_f32(arr_mut4(d, 0), lo);
        st_f32(arr_mut4(d, 4), hi);
    }
    scalar::bf16_to_f32(st, dt);
}

neon_entry!(bf16_from_f32 => bf16_from_f32_impl(src: &[f32], dst: &mut [u8]));

#[target_feature(enable = "neon")]
fn bf16_from_f32_impl(src: &[f32], dst: &mut [u8]) {
    check_from_f32(DType::BF16, src.len(), dst.len());
    let n = src.len();
    let (sc, st) = src.as_chunks::<8>();
    let (dc, dt) = dst[..2 * n].as_chunks_mut::<16>();
    for (s, d) in sc.iter().zip(dc) {
        let lo = f32x4_to_bf16(super::ld_f32(arr(s, 0)));
        let hi = f32x4_to_bf16(super::ld_f32(arr(s, 4)));
        st_u8(d, vreinterpretq_u8_u16(vcombine_u16(lo, hi)));
    }
    scalar::bf16_from_f32(st, dt);
}

// ---------------------------------------------------------------------------------------------
// BF16 dots: one chain per output, shared by the single, four-row and 4x3 dots
// ---------------------------------------------------------------------------------------------

/// A chunk ready for [`bf16_step`]: with BFDOT the raw 8 bf16 (in `.0`), else widened to f32
/// (low, high).
type Bf16Op = (float32x4_t, float32x4_t);

#[inline]
#[target_feature(enable = "neon")]
fn bf16_load<const BFDOT: bool>(c: &[u8; 16]) -> Bf16Op {
    let v = ld_u8(c);
    if BFDOT { (vreinterpretq_f32_u8(v), vdupq_n_f32(0.0)) } else { bf16x8_to_f32(v) }
}

/// Adds one chunk's products to an output's accumulators: BFDOT into `acc[parity]` (the
/// chunk index mod 2; only where `bf16_detected()`), else fused multiply-adds of the widened
/// halves into (low, high).
#[inline]
#[target_feature(enable = "neon")]
fn bf16_step<const BFDOT: bool>(acc: &mut [float32x4_t; 2], parity: usize, w: Bf16Op, a: Bf16Op) {
    if BFDOT {
        acc[parity] = bfdot(acc[parity], vreinterpretq_u8_f32(w.0), vreinterpretq_u8_f32(a.0));
    } else {
        acc[0] = vfmaq_f32(acc[0], w.0, a.0);
        acc[1] = vfmaq_f32(acc[1], w.1, a.1);
    }
}

/// The BF16 dots of `R` weight rows with `A` activation rows, `n` elements each (every row
/// holds at least `2n` bytes; callers check).
#[inline]
#[target_feature(enable = "neon")]
fn bf16_dots<const BFDOT: bool, const R: usize, const A: usize>(n: usize, w: [&[u8]; R], a: [&[u8]; A]) -> [[f32; A]; R] {
    let whole = n / 8;
    let wc: [&[[u8; 16]]; R] = std::array::from_fn(|i| w[i][..16 * whole].as_chunks::<16>().0);
    let ac: [&[[u8; 16]]; A] = std::array::from_fn(|j| a[j][..16 * whole].as_chunks::<16>().0);
    let mut acc = [[[vdupq_n_f32(0.0); 2]; A]; R];
    let chunk = |acc: &mut [[[float32x4_t; 2]; A]; R], parity: usize, wv: [Bf16Op; R], av: [Bf16Op; A]| {
        for i in 0..R {
            for j in 0..A {
                bf16_step::<BFDOT>(&mut acc[i][j], parity, wv[i], av[j]);
            }
        }
    };
    let mut c = 0;
    while c + 2 <= whole {
        for parity in 0..2 {
            let av = std::array::from_fn(|j| bf16_load::<BFDOT>(&ac[j][c + parity]));
            let wv = std::array::from_fn(|i| bf16_load::<BFDOT>(&wc[i][c + parity]));
            chunk(&mut acc, parity, wv, av);
        }
        c += 2;
    }
    if c < whole {
        let av = std::array::from_fn(|j| bf16_load::<BFDOT>(&ac[j][c]));
        let wv = std::array::from_fn(|i| bf16_load::<BFDOT>(&wc[i][c]));
        chunk(&mut acc, 0, wv, av);
    }
    let tail = 2 * (n % 8);
    if tail > 0 {
        let av = std::array::from_fn(|j| bf16_load::<BFDOT>(&padded16(&a[j][16 * whole..], tail)));
        let wv = std::array::from_fn(|i| bf16_load::<BFDOT>(&padded16(&w[i][16 * whole..], tail)));
        chunk(&mut acc, whole % 2, wv, av);
    }
    std::array::from_fn(|i| std::array::from_fn(|j| vaddvq_f32(vaddq_f32(acc[i][j][0], acc[i][j][1]))))
}

/// [`bf16_dots`] from plain code: `None` when a row holds fewer than `n` values or BFDOT is
/// asked for on a CPU without it.
fn bf16_dots_checked<const BFDOT: bool, const R: usize, const A: usize>(n: usize, w: [&[u8]; R], a: [&[u8]; A]) -> Option<[[f32; A]; R]> {
    if (BFDOT && !bf16_detected()) || w.iter().chain(a.iter()).any(|r| r.len() < 2 * n) {
        return None;
    }
    // SAFETY: NEON is in every aarch64 target; BFDOT only after `bf16_detected()`.
    Some(unsafe { bf16_dots::<BFDOT, R, A>(n, w, a) })
}

pub(super) fn dot_bf16_bfdot(n: usize, w: &[u8], a: &[u8]) -> f32 {
    check_vec_dot(DType::BF16, DType::BF16, n, w.len(), a.len());
    bf16_dots_checked::<true, 1, 1>(n, [w], [a]).expect("BFDOT table built after detection")[0][0]
}

pub(super) fn dot_bf16_widen(n: usize, w: &[u8], a: &[u8]) -> f32 {
    check_vec_dot(DType::BF16, DType::BF16, n, w.len(), a.len());
    bf16_dots_checked::<false, 1, 1>(n, [w], [a]).expect("lengths checked")[0][0]
}

fn block_4x3_bfdot(n: usize, w: [&[u8]; 4], a: [&[u8]; 3]) -> Option<[[f32; 3]; 4]> {
    bf16_dots_checked::<true, 4, 3>(n, w, a)
}

fn block_4x3_widen(n: usize, w: [&[u8]; 4], a: [&[u8]; 3]) -> Option<[[f32; 3]; 4]> {
    bf16_dots_checked::<false, 4, 3>(n, w, a)
}

fn rows_4_bfdot(n: usize, w: [&[u8]; 4], a: &[u8]) -> Option<[f32; 4]> {
    bf16_dots_checked::<true, 4, 1>(n, w, [a]).map(|r| r.map(|x| x[0]))
}

fn rows_4_widen(n: usize, w: [&[u8]; 4], a: &[u8]) -> Option<[f32; 4]> {
    bf16_dots_checked::<false, 4, 1>(n, w, [a]).map(|r| r.map(|x| x[0]))
}

/// The 4x3 BF16 block of the tier's table with (`bf16`) or without BFDOT.
pub(super) fn block_4x3_fn(bf16: bool) -> Bf16Block4x3Fn {
    if bf16 { block_4x3_bfdot } else { block_4x3_widen }
}

/// The four-row BF16 dot of the tier's table with (`bf16`) or without BFDOT.
pub(super) fn rows_4_fn(bf16: bool) -> Bf16Rows4Fn {
    if bf16 { rows_4_bfdot } else { rows_4_widen }
}

/// The BF16 dots of 4 weight rows with 3 activation rows, as the table with (`bf16`) or
/// without BFDOT computes each; `None` when a row is short or BFDOT is asked for and absent.
pub fn dot_bf16_block(bf16: bool, n: usize, w: [&[u8]; 4], a: [&[u8]; 3]) -> Option<[[f32; 3]; 4]> {
    block_4x3_fn(bf16)(n, w, a)
}

/// The BF16 dots of 4 weight rows with one activation row (see [`dot_bf16_block`]).
pub fn dot_bf16_rows_4(bf16: bool, n: usize, w: [&[u8]; 4], a: &[u8]) -> Option<[f32; 4]> {
    rows_4_fn(bf16)(n, w, a)
}
