//! Scalar reference tier: plain ports of ggml's reference C (`ggml-quants.c` for the
//! (de)quantizers, `ggml-cpu/quants.c` `*_generic` for the dot products, `vec.cpp` for the
//! float dots). Always available, on every architecture; it is the oracle the SIMD tiers are
//! tested against, so it favours obviousness over speed.
//!
//! Every entry point checks its slice lengths and panics on a mismatch (see the `check_*`
//! helpers in `mod.rs`); a byte slice may be longer than needed, only its prefix is used.

use super::blocks::*;
use super::{check_from_f32, check_to_f32, check_vec_dot, TypeKernels, N_TYPES};
use crate::dtype::DType;

// ---------------------------------------------------------------------------------------------
// Plain types: F32, F16, BF16
// ---------------------------------------------------------------------------------------------

/// The first `n` 4-byte elements of a byte row (bounds-checked once).
#[inline]
fn words(b: &[u8], n: usize) -> &[[u8; 4]] {
    b[..4 * n].as_chunks::<4>().0
}

/// The first `n` 2-byte elements of a byte row (bounds-checked once).
#[inline]
fn halves(b: &[u8], n: usize) -> &[[u8; 2]] {
    b[..2 * n].as_chunks::<2>().0
}

/// F32 bytes -> f32 (a copy).
pub fn f32_to_f32(src: &[u8], dst: &mut [f32]) {
    check_to_f32(DType::F32, src.len(), dst.len());
    let n = dst.len();
    for (y, x) in dst.iter_mut().zip(words(src, n)) {
        *y = f32::from_ne_bytes(*x);
    }
}

/// f32 -> F32 bytes (a copy).
pub fn f32_from_f32(src: &[f32], dst: &mut [u8]) {
    check_from_f32(DType::F32, src.len(), dst.len());
    let out = dst[..4 * src.len()].as_chunks_mut::<4>().0;
    for (x, o) in src.iter().zip(out) {
        *o = x.to_ne_bytes();
    }
}

/// F16 bytes -> f32 (exact).
pub fn f16_to_f32(src: &[u8], dst: &mut [f32]) {
    check_to_f32(DType::F16, src.len(), dst.len());
    let n = dst.len();
    for (y, h) in dst.iter_mut().zip(halves(src, n)) {
        *y = fp16_to_f32(u16::from_ne_bytes(*h));
    }
}

/// f32 -> F16 bytes, round to nearest even (`ggml_cpu_fp32_to_fp16`).
pub fn f16_from_f32(src: &[f32], dst: &mut [u8]) {
    check_from_f32(DType::F16, src.len(), dst.len());
    let out = dst[..2 * src.len()].as_chunks_mut::<2>().0;
    for (x, o) in src.iter().zip(out) {
        *o = f32_to_fp16(*x).to_ne_bytes();
    }
}

/// BF16 bytes -> f32 (exact).
pub fn bf16_to_f32(src: &[u8], dst: &mut [f32]) {
    check_to_f32(DType::BF16, src.len(), dst.len());
    let n = dst.len();
    for (y, h) in dst.iter_mut().zip(halves(src, n)) {
        *y = super::blocks::bf16_to_f32(u16::from_ne_bytes(*h));
    }
}

/// f32 -> BF16 bytes exactly as `GGML_FP32_TO_BF16` (nearest even, quiet NaN).
pub fn bf16_from_f32(src: &[f32], dst: &mut [u8]) {
    check_from_f32(DType::BF16, src.len(), dst.len());
    let out = dst[..2 * src.len()].as_chunks_mut::<2>().0;
    for (x, o) in src.iter().zip(out) {
        *o = f32_to_bf16(*x).to_ne_bytes();
    }
}

/// F32 · F32. Products and sum in f64 (ggml's generic path sums in `ggml_float` = double).
pub fn dot_f32(n: usize, w: &[u8], a: &[u8]) -> f32 {
    check_vec_dot(DType::F32, DType::F32, n, w.len(), a.len());
    let mut sum = 0.0f64;
    for (x, y) in words(w, n).iter().zip(words(a, n)) {
        sum += f32::from_ne_bytes(*x) as f64 * f32::from_ne_bytes(*y) as f64;
    }
    sum as f32
}

/// One output of ggml's F32 prefill GEMM with `L` lanes (see `F32Gemm`): lane l chains the
/// fused products of elements l, l + L, ... in order; `reduce` sums the lanes in the tier's
/// horizontal order. The reference of the tiers' `f32_gemm` blocks.
pub fn f32_gemm_dot<const L: usize>(n: usize, w: &[u8], a: &[u8], reduce: fn(&[f32; L]) -> f32) -> f32 {
    check_vec_dot(DType::F32, DType::F32, n, w.len(), a.len());
    assert!(n.is_multiple_of(L), "f32_gemm_dot: {n} values are not whole {L}-lane chunks");
    let mut lanes = [0f32; L];
    for (i, (x, y)) in words(w, n).iter().zip(words(a, n)).enumerate() {
        lanes[i % L] = f32::from_ne_bytes(*x).mul_add(f32::from_ne_bytes(*y), lanes[i % L]);
    }
    reduce(&lanes)
}

/// The AVX2 horizontal sum of ggml's GEMM (`hsum(__m256)`): 128-bit halves, then pairs.
pub fn reduce8_avx2(l: &[f32; 8]) -> f32 {
    ((l[0] + l[4]) + (l[2] + l[6])) + ((l[1] + l[5]) + (l[3] + l[7]))
}

/// F16 · F16, both widened to f32 (products are exact), summed in f64.
pub fn dot_f16(n: usize, w: &[u8], a: &[u8]) -> f32 {
    check_vec_dot(DType::F16, DType::F16, n, w.len(), a.len());
    let mut sum = 0.0f64;
    for (x, y) in halves(w, n).iter().zip(halves(a, n)) {
        let x = fp16_to_f32(u16::from_ne_bytes(*x));
        let y = fp16_to_f32(u16::from_ne_bytes(*y));
        sum += (x * y) as f64;
    }
    sum as f32
}

/// BF16 · BF16, both widened to f32 (products are exact), summed in f64.
pub fn dot_bf16(n: usize, w: &[u8], a: &[u8]) -> f32 {
    check_vec_dot(DType::BF16, DType::BF16, n, w.len(), a.len());
    let mut sum = 0.0f64;
    for (x, y) in halves(w, n).iter().zip(halves(a, n)) {
        let x = super::blocks::bf16_to_f32(u16::from_ne_bytes(*x));
        let y = super::blocks::bf16_to_f32(u16::from_ne_bytes(*y));
        sum += (x * y) as f64;
    }
    sum as f32
}

// ---------------------------------------------------------------------------------------------
// Quantizers
// ---------------------------------------------------------------------------------------------

/// The inverse scale ggml-cpu's `quantize_row_q8_0` / `q8_1` multiply by, for `d = amax/127`.
///
/// ggml-cpu differs per architecture and SMEPilot is compared with the CPU backend of the same
/// host, so this follows the host: the x86 AVX path uses `127/amax`, the ARM NEON path and the
/// reference `quantize_row_q8_0_ref` use `1/d`.
#[inline]
fn q8_inv_scale(amax: f32, d: f32) -> f32 {
    if cfg!(target_arch = "x86_64") {
        if amax != 0.0 {
            127.0 / amax
        } else {
            0.0
        }
    } else if d != 0.0 {
        1.0 / d
    } else {
        0.0
    }
}

/// Rounding of ggml-cpu's q8_0 / q8_1 quantizers: x86 (`_mm256_round_ps(_MM_ROUND_NEAREST)`)
/// and NEON (`vcvtnq_s32_f32`) round half to even; the reference C uses `roundf` (half away
/// from zero).
#[inline]
fn q8_round(v: f32) -> f32 {
    if cfg!(any(target_arch = "x86_64", target_arch = "aarch64")) {
        v.round_ties_even()
    } else {
        v.round()
    }
}

/// `nearest_int` of ggml-quants.c: round half to even through the 1.5·2^23 trick.
/// Valid for |x| <= 4194303 (ggml asserts it; the Q8_K quantizer only passes |x| <= ~127).
/// Out of range or NaN it returns garbage, never UB.
#[inline]
pub fn nearest_int(fval: f32) -> i32 {
    let val = fval + 12582912.0;
    let i = val.to_bits() as i32;
    (i & 0x007f_ffff) - 0x0040_0000
}

/// Shared body of the q8_0 / q8_1 quantizers: (d, quants) of one block of 32.
#[inline]
fn q8_block(x: &[f32]) -> (f32, [i8; 32]) {
    let mut amax = 0.0f32;
    for &v in x {
        amax = amax.max(v.abs());
    }
    let d = amax / 127.0;
    let id = q8_inv_scale(amax, d);
    let mut qs = [0i8; 32];
    for (q, &v) in qs.iter_mut().zip(x) {
        *q = q8_round(v * id) as i8;
    }
    (d, qs)
}

/// f32 -> Q8_0 (`quantize_row_q8_0` of ggml-cpu on this architecture).
pub fn quantize_q8_0(src: &[f32], dst: &mut [u8]) {
    check_from_f32(DType::Q8_0, src.len(), dst.len());
    for (i, x) in src.chunks_exact(QK8_0).enumerate() {
        let (d, qs) = q8_block(x);
        BlockQ8_0 {
            d: f32_to_fp16(d),
            qs,
        }
        .write_at(dst, i);
    }
}

/// f32 -> Q8_1 (`quantize_row_q8_1`): like Q8_0 plus `s = d * sum(q)`.
pub fn quantize_q8_1(src: &[f32], dst: &mut [u8]) {
    check_from_f32(DType::Q8_1, src.len(), dst.len());
    for (i, x) in src.chunks_exact(QK8_1).enumerate() {
        let (d, qs) = q8_block(x);
        let sum: i32 = qs.iter().map(|&q| q as i32).sum();
        BlockQ8_1 {
            d: f32_to_fp16(d),
            s: f32_to_fp16(sum as f32 * d),
            qs,
        }
        .write_at(dst, i);
    }
}

/// f32 -> Q8_K (`quantize_row_q8_K_ref`, which every ggml-cpu architecture we target uses).
/// The scale comes from the signed value of largest magnitude (first one on ties):
/// `iscale = -127/max`, `d = 1/iscale`. An all-zero block gets d = 0, zero quants and zero
/// bsums (ggml leaves bsums untouched there; they are multiplied by d = 0 anyway).
pub fn quantize_q8_k(src: &[f32], dst: &mut [u8]) {
    check_from_f32(DType::Q8_K, src.len(), dst.len());
    for (i, x) in src.chunks_exact(QK_K).enumerate() {
        let mut b = BlockQ8K::zeroed();
        let mut max = 0.0f32;
        let mut amax = 0.0f32;
        for &v in x {
            let ax = v.abs();
            if ax > amax {
                amax = ax;
                max = v;
            }
        }
        if amax != 0.0 {
            let iscale = -127.0f32 / max;
            for (q, &v) in b.qs.iter_mut().zip(x) {
                *q = nearest_int(iscale * v).min(127) as i8;
            }
            for (j, s) in b.bsums.iter_mut().enumerate() {
                *s = b.qs[16 * j..16 * j + 16].iter().map(|&q| q as i16).sum();
            }
            b.d = 1.0 / iscale;
        }
        b.write_at(dst, i);
    }
}

/// f32 -> Q4_0 (`quantize_row_q4_0_ref`, which ggml-cpu uses for SET_ROWS / CPY).
pub fn quantize_q4_0(src: &[f32], dst: &mut [u8]) {
    check_from_f32(DType::Q4_0, src.len(), dst.len());
    for (i, x) in src.chunks_exact(QK4_0).enumerate() {
        let mut amax = 0.0f32;
        let mut max = 0.0f32;
        for &v in x {
            if amax < v.abs() {
                amax = v.abs();
                max = v;
            }
        }
        let d = max / -8.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        let mut qs = [0u8; QK4_0 / 2];
        for (j, q) in qs.iter_mut().enumerate() {
            let x0 = x[j] * id;
            let x1 = x[QK4_0 / 2 + j] * id;
            // C: MIN(15, (int8_t)(x0 + 8.5f)); `as i8` truncates toward zero like the C cast.
            let xi0 = ((x0 + 8.5) as i8).min(15) as u8;
            let xi1 = ((x1 + 8.5) as i8).min(15) as u8;
            *q = xi0 | (xi1 << 4);
        }
        BlockQ4_0 {
            d: f32_to_fp16(d),
            qs,
        }
        .write_at(dst, i);
    }
}

/// f32 -> Q4_1 (`quantize_row_q4_1_ref`).
pub fn quantize_q4_1(src: &[f32], dst: &mut [u8]) {
    check_from_f32(DType::Q4_1, src.len(), dst.len());
    for (i, x) in src.chunks_exact(QK4_1).enumerate() {
        let mut min = f32::MAX;
        let mut max = -f32::MAX;
        for &v in x {
            if v < min {
                min = v;
            }
            if v > max {
                max = v;
            }
        }
        let d = (max - min) / 15.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        let mut qs = [0u8; QK4_1 / 2];
        for (j, q) in qs.iter_mut().enumerate() {
            let x0 = (x[j] - min) * id;
            let x1 = (x[QK4_1 / 2 + j] - min) * id;
            let xi0 = ((x0 + 0.5) as i8).min(15) as u8;
            let xi1 = ((x1 + 0.5) as i8).min(15) as u8;
            *q = xi0 | (xi1 << 4);
        }
        BlockQ4_1 {
            d: f32_to_fp16(d),
            m: f32_to_fp16(min),
            qs,
        }
        .write_at(dst, i);
    }
}

// ---------------------------------------------------------------------------------------------
// Dequantizers (ggml-quants.c `dequantize_row_*`)
// ---------------------------------------------------------------------------------------------

pub fn dequantize_q4_0(src: &[u8], dst: &mut [f32]) {
    check_to_f32(DType::Q4_0, src.len(), dst.len());
    for (i, y) in dst.chunks_exact_mut(QK4_0).enumerate() {
        let b = BlockQ4_0::read_at(src, i);
        let d = fp16_to_f32(b.d);
        for j in 0..QK4_0 / 2 {
            let x0 = (b.qs[j] & 0x0F) as i32 - 8;
            let x1 = (b.qs[j] >> 4) as i32 - 8;
            y[j] = x0 as f32 * d;
            y[j + QK4_0 / 2] = x1 as f32 * d;
        }
    }
}

pub fn dequantize_q4_1(src: &[u8], dst: &mut [f32]) {
    check_to_f32(DType::Q4_1, src.len(), dst.len());
    for (i, y) in dst.chunks_exact_mut(QK4_1).enumerate() {
        let b = BlockQ4_1::read_at(src, i);
        let d = fp16_to_f32(b.d);
        let m = fp16_to_f32(b.m);
        for j in 0..QK4_1 / 2 {
            let x0 = (b.qs[j] & 0x0F) as f32;
            let x1 = (b.qs[j] >> 4) as f32;
            y[j] = x0 * d + m;
            y[j + QK4_1 / 2] = x1 * d + m;
        }
    }
}

pub fn dequantize_q8_0(src: &[u8], dst: &mut [f32]) {
    check_to_f32(DType::Q8_0, src.len(), dst.len());
    for (i, y) in dst.chunks_exact_mut(QK8_0).enumerate() {
        let b = BlockQ8_0::read_at(src, i);
        let d = fp16_to_f32(b.d);
        for (yj, &q) in y.iter_mut().zip(&b.qs) {
            *yj = q as f32 * d;
        }
    }
}

/// Q8_1 -> f32 (`d * q`; ggml has no Q8_1 dequantizer, this is the obvious one).
pub fn dequantize_q8_1(src: &[u8], dst: &mut [f32]) {
    check_to_f32(DType::Q8_1, src.len(), dst.len());
    for (i, y) in dst.chunks_exact_mut(QK8_1).enumerate() {
        let b = BlockQ8_1::read_at(src, i);
        let d = fp16_to_f32(b.d);
        for (yj, &q) in y.iter_mut().zip(&b.qs) {
            *yj = q as f32 * d;
        }
    }
}

pub fn dequantize_q8_k(src: &[u8], dst: &mut [f32]) {
    check_to_f32(DType::Q8_K, src.len(), dst.len());
    for (i, y) in dst.chunks_exact_mut(QK_K).enumerate() {
        let b = BlockQ8K::read_at(src, i);
        for (yj, &q) in y.iter_mut().zip(&b.qs) {
            *yj = b.d * q as f32;
        }
    }
}

pub fn dequantize_q4_k(src: &[u8], dst: &mut [f32]) {
    check_to_f32(DType::Q4_K, src.len(), dst.len());
    for (i, y) in dst.chunks_exact_mut(QK_K).enumerate() {
        let b = BlockQ4K::read_at(src, i);
        let d = fp16_to_f32(b.d);
        let min = fp16_to_f32(b.dmin);
        for c in 0..QK_K / 64 {
            let q = &b.qs[32 * c..32 * c + 32];
            let (sc1, m1) = get_scale_min_k4(2 * c, &b.scales);
            let (sc2, m2) = get_scale_min_k4(2 * c + 1, &b.scales);
            let (d1, m1) = (d * sc1 as f32, min * m1 as f32);
            let (d2, m2) = (d * sc2 as f32, min * m2 as f32);
            let y = &mut y[64 * c..64 * c + 64];
            for l in 0..32 {
                y[l] = d1 * (q[l] & 0xF) as f32 - m1;
                y[l + 32] = d2 * (q[l] >> 4) as f32 - m2;
            }
        }
    }
}

pub fn dequantize_q5_k(src: &[u8], dst: &mut [f32]) {
    check_to_f32(DType::Q5_K, src.len(), dst.len());
    for (i, y) in dst.chunks_exact_mut(QK_K).enumerate() {
        let b = BlockQ5K::read_at(src, i);
        let d = fp16_to_f32(b.d);
        let min = fp16_to_f32(b.dmin);
        for c in 0..QK_K / 64 {
            let ql = &b.qs[32 * c..32 * c + 32];
            let (u1, u2) = (1u8 << (2 * c), 2u8 << (2 * c));
            let (sc1, m1) = get_scale_min_k4(2 * c, &b.scales);
            let (sc2, m2) = get_scale_min_k4(2 * c + 1, &b.scales);
            let (d1, m1) = (d * sc1 as f32, min * m1 as f32);
            let (d2, m2) = (d * sc2 as f32, min * m2 as f32);
            let y = &mut y[64 * c..64 * c + 64];
            for l in 0..32 {
                let h1 = if b.qh[l] & u1 != 0 { 16 } else { 0 };
                let h2 = if b.qh[l] & u2 != 0 { 16 } else { 0 };
                y[l] = d1 * ((ql[l] & 0xF) + h1) as f32 - m1;
                y[l + 32] = d2 * ((ql[l] >> 4) + h2) as f32 - m2;
            }
        }
    }
}

pub fn dequantize_q6_k(src: &[u8], dst: &mut [f32]) {
    check_to_f32(DType::Q6_K, src.len(), dst.len());
    for (i, y) in dst.chunks_exact_mut(QK_K).enumerate() {
        let b = BlockQ6K::read_at(src, i);
        let d = fp16_to_f32(b.d);
        for h in 0..2 {
            let ql = &b.ql[64 * h..64 * h + 64];
            let qh = &b.qh[32 * h..32 * h + 32];
            let sc = &b.scales[8 * h..8 * h + 8];
            let y = &mut y[128 * h..128 * h + 128];
            for l in 0..32 {
                let is = l / 16;
                let q1 = ((ql[l] & 0xF) | ((qh[l] & 3) << 4)) as i32 - 32;
                let q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
                let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
                let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
                // C: d * sc[is] * q, evaluated left to right in float.
                y[l] = d * sc[is] as f32 * q1 as f32;
                y[l + 32] = d * sc[is + 2] as f32 * q2 as f32;
                y[l + 64] = d * sc[is + 4] as f32 * q3 as f32;
                y[l + 96] = d * sc[is + 6] as f32 * q4 as f32;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Quantized dot products: int32 sums per block, scaled in f32 (ggml-cpu `*_generic`)
// ---------------------------------------------------------------------------------------------

pub fn dot_q4_0_q8_0(n: usize, w: &[u8], a: &[u8]) -> f32 {
    check_vec_dot(DType::Q4_0, DType::Q8_0, n, w.len(), a.len());
    let mut sumf = 0.0f32;
    for ib in 0..n / QK8_0 {
        let x = BlockQ4_0::read_at(w, ib);
        let y = BlockQ8_0::read_at(a, ib);
        let mut sumi = 0i32;
        for j in 0..QK8_0 / 2 {
            let v0 = (x.qs[j] & 0x0F) as i32 - 8;
            let v1 = (x.qs[j] >> 4) as i32 - 8;
            sumi += v0 * y.qs[j] as i32 + v1 * y.qs[j + QK8_0 / 2] as i32;
        }
        sumf += sumi as f32 * fp16_to_f32(x.d) * fp16_to_f32(y.d);
    }
    sumf
}

pub fn dot_q4_1_q8_1(n: usize, w: &[u8], a: &[u8]) -> f32 {
    check_vec_dot(DType::Q4_1, DType::Q8_1, n, w.len(), a.len());
    let mut sumf = 0.0f32;
    for ib in 0..n / QK8_1 {
        let x = BlockQ4_1::read_at(w, ib);
        let y = BlockQ8_1::read_at(a, ib);
        let mut sumi = 0i32;
        for j in 0..QK8_1 / 2 {
            let v0 = (x.qs[j] & 0x0F) as i32;
            let v1 = (x.qs[j] >> 4) as i32;
            sumi += v0 * y.qs[j] as i32 + v1 * y.qs[j + QK8_1 / 2] as i32;
        }
        sumf += (fp16_to_f32(x.d) * fp16_to_f32(y.d)) * sumi as f32
            + fp16_to_f32(x.m) * fp16_to_f32(y.s);
    }
    sumf
}

pub fn dot_q8_0_q8_0(n: usize, w: &[u8], a: &[u8]) -> f32 {
    check_vec_dot(DType::Q8_0, DType::Q8_0, n, w.len(), a.len());
    let mut sumf = 0.0f32;
    for ib in 0..n / QK8_0 {
        let x = BlockQ8_0::read_at(w, ib);
        let y = BlockQ8_0::read_at(a, ib);
        let sumi: i32 =
            x.qs.iter()
                .zip(&y.qs)
                .map(|(&p, &q)| p as i32 * q as i32)
                .sum();
        sumf += sumi as f32 * (fp16_to_f32(x.d) * fp16_to_f32(y.d));
    }
    sumf
}

/// Exact integer part of a Q4_K/Q5_K super-block dot: (sum_j sc_j * dot_j, sum_j m_j * bsum_j)
/// with `q` the unpacked 0..31 quants.
#[inline]
fn kx_block_sums(q: &[u8; QK_K], scales: &[u8; K_SCALE_SIZE], y: &BlockQ8K) -> (i32, i32) {
    let (sc, m) = scales_mins_k4(scales);
    let mut sumi = 0i32;
    for (j, &scale) in sc.iter().enumerate() {
        let dot: i32 = (32 * j..32 * j + 32)
            .map(|l| q[l] as i32 * y.qs[l] as i32)
            .sum();
        sumi += scale as i32 * dot;
    }
    let mut summ = 0i32;
    for j in 0..QK_K / 16 {
        summ += y.bsums[j] as i32 * m[j / 2] as i32;
    }
    (sumi, summ)
}

/// Q4_K · Q8_K: sum over super-blocks of `d*sumi - dmin*summins`, d = x.d * y.d,
/// dmin = x.dmin * y.d (the same float sequence the AVX-512 tier uses).
pub fn dot_q4_k_q8_k(n: usize, w: &[u8], a: &[u8]) -> f32 {
    check_vec_dot(DType::Q4_K, DType::Q8_K, n, w.len(), a.len());
    let mut sumf = 0.0f32;
    for i in 0..n / QK_K {
        let x = BlockQ4K::read_at(w, i);
        let y = BlockQ8K::read_at(a, i);
        let mut q = [0u8; QK_K];
        for c in 0..QK_K / 64 {
            for l in 0..32 {
                q[64 * c + l] = x.qs[32 * c + l] & 0xF;
                q[64 * c + 32 + l] = x.qs[32 * c + l] >> 4;
            }
        }
        let (sumi, summ) = kx_block_sums(&q, &x.scales, &y);
        let d = fp16_to_f32(x.d) * y.d;
        let dmin = fp16_to_f32(x.dmin) * y.d;
        sumf += d * sumi as f32 - dmin * summ as f32;
    }
    sumf
}

/// Q5_K · Q8_K, as Q4_K with the fifth bit from `qh`.
pub fn dot_q5_k_q8_k(n: usize, w: &[u8], a: &[u8]) -> f32 {
    check_vec_dot(DType::Q5_K, DType::Q8_K, n, w.len(), a.len());
    let mut sumf = 0.0f32;
    for i in 0..n / QK_K {
        let x = BlockQ5K::read_at(w, i);
        let y = BlockQ8K::read_at(a, i);
        let mut q = [0u8; QK_K];
        for c in 0..QK_K / 64 {
            let (u1, u2) = (1u8 << (2 * c), 2u8 << (2 * c));
            for l in 0..32 {
                let h1 = if x.qh[l] & u1 != 0 { 16 } else { 0 };
                let h2 = if x.qh[l] & u2 != 0 { 16 } else { 0 };
                q[64 * c + l] = (x.qs[32 * c + l] & 0xF) + h1;
                q[64 * c + 32 + l] = (x.qs[32 * c + l] >> 4) + h2;
            }
        }
        let (sumi, summ) = kx_block_sums(&q, &x.scales, &y);
        let d = fp16_to_f32(x.d) * y.d;
        let dmin = fp16_to_f32(x.dmin) * y.d;
        sumf += d * sumi as f32 - dmin * summ as f32;
    }
    sumf
}

/// Q6_K · Q8_K: sum over super-blocks of `d * sum_j sc_j * dot_j(q - 32, y)`, d = x.d * y.d.
pub fn dot_q6_k_q8_k(n: usize, w: &[u8], a: &[u8]) -> f32 {
    check_vec_dot(DType::Q6_K, DType::Q8_K, n, w.len(), a.len());
    let mut sumf = 0.0f32;
    for i in 0..n / QK_K {
        let x = BlockQ6K::read_at(w, i);
        let y = BlockQ8K::read_at(a, i);
        let mut q = [0i32; QK_K];
        for h in 0..2 {
            let ql = &x.ql[64 * h..64 * h + 64];
            let qh = &x.qh[32 * h..32 * h + 32];
            let q = &mut q[128 * h..128 * h + 128];
            for l in 0..32 {
                q[l] = ((ql[l] & 0xF) | ((qh[l] & 3) << 4)) as i32 - 32;
                q[l + 32] = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
                q[l + 64] = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
                q[l + 96] = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
            }
        }
        let mut sumi = 0i32;
        for j in 0..QK_K / 16 {
            let dot: i32 = (16 * j..16 * j + 16).map(|l| q[l] * y.qs[l] as i32).sum();
            sumi += x.scales[j] as i32 * dot;
        }
        sumf += fp16_to_f32(x.d) * y.d * sumi as f32;
    }
    sumf
}

// ---------------------------------------------------------------------------------------------
// The table
// ---------------------------------------------------------------------------------------------

/// The scalar tier, in the order of [`super::TYPES`].
pub static TABLE: [TypeKernels; N_TYPES] = [
    TypeKernels {
        ty: DType::F32,
        vec_dot_type: DType::F32,
        to_f32: f32_to_f32,
        from_f32: Some(f32_from_f32),
        vec_dot: Some(dot_f32),
    },
    TypeKernels {
        ty: DType::F16,
        vec_dot_type: DType::F16,
        to_f32: f16_to_f32,
        from_f32: Some(f16_from_f32),
        vec_dot: Some(dot_f16),
    },
    TypeKernels {
        ty: DType::BF16,
        vec_dot_type: DType::BF16,
        to_f32: bf16_to_f32,
        from_f32: Some(bf16_from_f32),
        vec_dot: Some(dot_bf16),
    },
    TypeKernels {
        ty: DType::Q4_0,
        vec_dot_type: DType::Q8_0,
        to_f32: dequantize_q4_0,
        from_f32: Some(quantize_q4_0),
        vec_dot: Some(dot_q4_0_q8_0),
    },
    TypeKernels {
        ty: DType::Q4_1,
        vec_dot_type: DType::Q8_1,
        to_f32: dequantize_q4_1,
        from_f32: Some(quantize_q4_1),
        vec_dot: Some(dot_q4_1_q8_1),
    },
    TypeKernels {
        ty: DType::Q8_0,
        vec_dot_type: DType::Q8_0,
        to_f32: dequantize_q8_0,
        from_f32: Some(quantize_q8_0),
        vec_dot: Some(dot_q8_0_q8_0),
    },
    TypeKernels {
        ty: DType::Q8_1,
        vec_dot_type: DType::Q8_1,
        to_f32: dequantize_q8_1,
        from_f32: Some(quantize_q8_1),
        vec_dot: None,
    },
    TypeKernels {
        ty: DType::Q4_K,
        vec_dot_type: DType::Q8_K,
        to_f32: dequantize_q4_k,
        from_f32: None,
        vec_dot: Some(dot_q4_k_q8_k),
    },
    TypeKernels {
        ty: DType::Q5_K,
        vec_dot_type: DType::Q8_K,
        to_f32: dequantize_q5_k,
        from_f32: None,
        vec_dot: Some(dot_q5_k_q8_k),
    },
    TypeKernels {
        ty: DType::Q6_K,
        vec_dot_type: DType::Q8_K,
        to_f32: dequantize_q6_k,
        from_f32: None,
        vec_dot: Some(dot_q6_k_q8_k),
    },
    TypeKernels {
        ty: DType::Q8_K,
        vec_dot_type: DType::Q8_K,
        to_f32: dequantize_q8_k,
        from_f32: Some(quantize_q8_k),
        vec_dot: None,
    },
];
