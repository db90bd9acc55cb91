//! AVX2 tier (x86-64 CPUs without AVX-512, such as AMD Zen 2/3): AVX2 + FMA + F16C kernels
//! for the float types, F32 / F16 / BF16 conversions and dots (the K / V cache and the float
//! weights); every other entry is the scalar tier's (the quantized weights run on the packed
//! GEMVs, `packed::avx2`, and activation rows are quantized once per product).
//!
//! Safety structure as in the AVX-512 tier: each SIMD body is a `#[target_feature]` function
//! reading and writing through checked slices; the plain wrappers that call it are private
//! and reachable only through the table built after [`detected`] confirmed the features.
//!
//! Numerics versus the scalar tier: the conversions are bit-identical (F16C rounds to nearest
//! even, as ggml-cpu's x86 conversion); the float dots accumulate in four 8-lane f32 chains
//! with fused multiply-adds (the scalar tier sums in f64), so they agree to rounding.

use core::arch::x86_64::*;
use std::sync::OnceLock;

use super::blocks::{f32_to_fp16, Block, BlockQ8_0, BlockQ8_1};
use super::{check_from_f32, check_to_f32, check_vec_dot, scalar, Table, TypeKernels};
use crate::dtype::DType;

/// Whether the CPU has every feature the kernels of this tier are compiled with.
pub fn detected() -> bool {
    is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c")
}

/// The tier's table, or `None` when the CPU lacks the features. Built once.
pub(crate) fn table() -> Option<&'static Table> {
    static TABLE: OnceLock<Option<Table>> = OnceLock::new();
    TABLE.get_or_init(build).as_ref()
}

/// The tier's register-blocked dots (the BF16 prefill tile).
pub(crate) fn dense_kernels() -> super::DenseKernels {
    super::DenseKernels {
        bf16_block_4x3: detected().then_some(dot_bf16_block as super::Bf16Block4x3Fn),
        bf16_rows_4: None,
        f32_gemm: detected().then_some(super::F32Gemm { lanes: 8, min_rows: 2, block: f32_gemm_block }),
    }
}

/// ggml's F32 prefill GEMM order (tinyBLAS with `__m256`): 8-lane chains, then its `hsum`.
pub fn f32_gemm_block(n: usize, w: [&[u8]; 4], a: [&[u8]; 3]) -> Option<[[f32; 3]; 4]> {
    if !detected() || !n.is_multiple_of(8) || w.iter().chain(a.iter()).any(|r| r.len() < 4 * n) {
        return None;
    }
    // SAFETY: AVX2, FMA and F16C detected; every row holds n values, whole 8-lane chunks
    // (checked).
    Some(unsafe { f32_gemm_block_impl(n, w, a) })
}

#[target_feature(enable = "avx2,fma,f16c")]
fn f32_gemm_block_impl(n: usize, w: [&[u8]; 4], a: [&[u8]; 3]) -> [[f32; 3]; 4] {
    let wc: [&[[u8; 32]]; 4] = std::array::from_fn(|i| w[i][..4 * n].as_chunks::<32>().0);
    let ac: [&[[u8; 32]]; 3] = std::array::from_fn(|j| a[j][..4 * n].as_chunks::<32>().0);
    // SAFETY (loads below): each chunk is 32 readable bytes (8 f32); the loads are unaligned.
    let ld = |c: &[u8; 32]| unsafe { _mm256_loadu_ps(c.as_ptr().cast()) };
    let mut acc = [[_mm256_setzero_ps(); 3]; 4];
    for c in 0..n / 8 {
        let av: [__m256; 3] = std::array::from_fn(|j| ld(&ac[j][c]));
        for i in 0..4 {
            let wv = ld(&wc[i][c]);
            for j in 0..3 {
                acc[i][j] = _mm256_fmadd_ps(wv, av[j], acc[i][j]);
            }
        }
    }
    acc.map(|row| {
        row.map(|v| {
            let mut l = [0f32; 8];
            store8(&mut l, v);
            super::scalar::reduce8_avx2(&l)
        })
    })
}

fn build() -> Option<Table> {
    if !detected() {
        return None;
    }
    let s = &scalar::TABLE;
    let entry = |i: usize, to_f32: super::ToF32Fn, from_f32: Option<super::FromF32Fn>, vec_dot: Option<super::VecDotFn>| TypeKernels {
        ty: s[i].ty,
        vec_dot_type: s[i].vec_dot_type,
        to_f32,
        from_f32,
        vec_dot,
    };
    let same = |i: usize| entry(i, s[i].to_f32, s[i].from_f32, s[i].vec_dot);
    Some([
        entry(0, s[0].to_f32, s[0].from_f32, Some(dot_f32)),
        entry(1, f16_to_f32, Some(f16_from_f32), Some(dot_f16)),
        entry(2, bf16_to_f32, s[2].from_f32, Some(dot_bf16)),
        same(3),
        same(4),
        entry(5, s[5].to_f32, Some(q8_0_from_f32), s[5].vec_dot),
        entry(6, s[6].to_f32, Some(q8_1_from_f32), s[6].vec_dot),
        same(7),
        same(8),
        same(9),
        same(10),
    ])
}

macro_rules! wrap {
    ($name:ident => $body:ident, to_f32 $ty:expr) => {
        fn $name(src: &[u8], dst: &mut [f32]) {
            check_to_f32($ty, src.len(), dst.len());
            debug_assert!(detected());
            // SAFETY: private, stored only in the table `build` makes after `detected()`
            // confirmed AVX2, FMA and F16C at run time.
            unsafe { $body(src, dst) }
        }
    };
    ($name:ident => $body:ident, from_f32 $ty:expr) => {
        fn $name(src: &[f32], dst: &mut [u8]) {
            check_from_f32($ty, src.len(), dst.len());
            debug_assert!(detected());
            // SAFETY: as above.
            unsafe { $body(src, dst) }
        }
    };
    ($name:ident => $body:ident, vec_dot $ty:expr) => {
        fn $name(n: usize, w: &[u8], a: &[u8]) -> f32 {
            check_vec_dot($ty, $ty, n, w.len(), a.len());
            debug_assert!(detected());
            // SAFETY: as above.
            unsafe { $body(n, w, a) }
        }
    };
}

wrap!(f16_to_f32 => f16_to_f32_impl, to_f32 DType::F16);
wrap!(f16_from_f32 => f16_from_f32_impl, from_f32 DType::F16);
wrap!(bf16_to_f32 => bf16_to_f32_impl, to_f32 DType::BF16);
wrap!(q8_0_from_f32 => q8_0_from_f32_impl, from_f32 DType::Q8_0);
wrap!(q8_1_from_f32 => q8_1_from_f32_impl, from_f32 DType::Q8_1);
wrap!(dot_f32 => dot_f32_impl, vec_dot DType::F32);
wrap!(dot_f16 => dot_f16_impl, vec_dot DType::F16);
wrap!(dot_bf16 => dot_bf16_impl, vec_dot DType::BF16);

/// 8 f16 as f32 from a 16-byte chunk.
#[inline(always)]
fn f16x8(c: &[u8; 16]) -> __m256 {
    // SAFETY: reads exactly the 16 bytes of `c`; F16C enabled by the callers.
    unsafe { _mm256_cvtph_ps(_mm_loadu_si128(c.as_ptr() as *const __m128i)) }
}

/// 8 bf16 as f32 from a 16-byte chunk (bf16 is the top half of an f32).
#[inline(always)]
fn bf16x8(c: &[u8; 16]) -> __m256 {
    // SAFETY: reads exactly the 16 bytes of `c`; AVX2 enabled by the callers.
    unsafe { _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(_mm_loadu_si128(c.as_ptr() as *const __m128i)))) }
}

/// 8 f32 from a 32-byte chunk.
#[inline(always)]
fn f32x8(c: &[u8; 32]) -> __m256 {
    // SAFETY: reads exactly the 32 bytes of `c`.
    unsafe { _mm256_loadu_ps(c.as_ptr() as *const f32) }
}

/// Stores 8 f32 into `d`.
#[inline(always)]
fn store8(d: &mut [f32; 8], v: __m256) {
    // SAFETY: writes exactly the 8 floats of `d`.
    unsafe { _mm256_storeu_ps(d.as_mut_ptr(), v) }
}

#[target_feature(enable = "avx2,fma,f16c")]
fn f16_to_f32_impl(src: &[u8], dst: &mut [f32]) {
    let n = dst.len();
    let (sc, st) = src[..2 * n].as_chunks::<16>();
    let (dc, dt) = dst.as_chunks_mut::<8>();
    for (s, d) in sc.iter().zip(dc) {
        store8(d, f16x8(s));
    }
    scalar::f16_to_f32(st, dt);
}

#[target_feature(enable = "avx2,fma,f16c")]
fn f16_from_f32_impl(src: &[f32], dst: &mut [u8]) {
    let n = src.len();
    let (sc, st) = src.as_chunks::<8>();
    let (dc, dt) = dst[..2 * n].as_chunks_mut::<16>();
    for (s, d) in sc.iter().zip(dc) {
        // SAFETY: reads the 8 floats of `s`, writes the 16 bytes of `d`.
        unsafe {
            let h = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm256_loadu_ps(s.as_ptr()));
            _mm_storeu_si128(d.as_mut_ptr() as *mut __m128i, h);
        }
    }
    scalar::f16_from_f32(st, dt);
}

#[target_feature(enable = "avx2,fma,f16c")]
fn bf16_to_f32_impl(src: &[u8], dst: &mut [f32]) {
    let n = dst.len();
    let (sc, st) = src[..2 * n].as_chunks::<16>();
    let (dc, dt) = dst.as_chunks_mut::<8>();
    for (s, d) in sc.iter().zip(dc) {
        store8(d, bf16x8(s));
    }
    scalar::bf16_to_f32(st, dt);
}

/// Four 8-lane chains summed ((0 + 2) + (1 + 3)), then across lanes.
#[target_feature(enable = "avx2,fma,f16c")]
fn finish(acc: [__m256; 4]) -> f32 {
    let v = _mm256_add_ps(_mm256_add_ps(acc[0], acc[2]), _mm256_add_ps(acc[1], acc[3]));
    let mut lanes = [0f32; 8];
    store8(&mut lanes, v);
    let q: [f32; 4] = std::array::from_fn(|i| lanes[i] + lanes[i + 4]);
    (q[0] + q[2]) + (q[1] + q[3])
}

/// `n` elements of `esize` bytes each, in 32-element steps through `load8` on 8-element
/// chunks, the tail by `tail` (the scalar dot of the rest).
macro_rules! float_dot {
    ($name:ident, $esize:literal, $chunk:literal, $load:ident, $scalar:path) => {
        #[target_feature(enable = "avx2,fma,f16c")]
        fn $name(n: usize, w: &[u8], a: &[u8]) -> f32 {
            let whole = n - n % 32;
            let (wc, _) = w[..$esize * whole].as_chunks::<$chunk>();
            let (ac, _) = a[..$esize * whole].as_chunks::<$chunk>();
            let mut acc = [_mm256_setzero_ps(); 4];
            for (i, (x, y)) in wc.iter().zip(ac).enumerate() {
                acc[i % 4] = _mm256_fmadd_ps($load(x), $load(y), acc[i % 4]);
            }
            let tail = if whole < n { $scalar(n - whole, &w[$esize * whole..], &a[$esize * whole..]) } else { 0.0 };
            finish(acc) + tail
        }
    };
}

float_dot!(dot_f32_impl, 4, 32, f32x8, scalar::dot_f32);
float_dot!(dot_f16_impl, 2, 16, f16x8, scalar::dot_f16);
float_dot!(dot_bf16_impl, 2, 16, bf16x8, scalar::dot_bf16);

/// Weight rows and activation rows of one [`dot_bf16_block`] call.
pub const BF16_BLOCK_W: usize = 4;
pub const BF16_BLOCK_A: usize = 3;

/// The BF16 dots of 4 weight rows with 3 activation rows (`out[i][j]` = row i · act j), `n`
/// elements each: 12 accumulators in registers, so each converted 8-element chunk serves
/// three or four products instead of one (prefill's products are compute-bound here). Each
/// dot is one 8-lane fused multiply-add chain, lanes summed ((0 + 4) + (2 + 6)) + ((1 + 5)
/// + (3 + 7)), the tail (n mod 8) added in f32. `None` without AVX2 / FMA / F16C or when a
/// row holds fewer than n values.
pub fn dot_bf16_block(n: usize, w: [&[u8]; BF16_BLOCK_W], a: [&[u8]; BF16_BLOCK_A]) -> Option<[[f32; BF16_BLOCK_A]; BF16_BLOCK_W]> {
    if !detected() || w.iter().chain(a.iter()).any(|r| r.len() < 2 * n) {
        return None;
    }
    // SAFETY: AVX2, FMA and F16C detected; every row holds n values (checked).
    Some(unsafe { dot_bf16_block_impl(n, w, a) })
}

#[target_feature(enable = "avx2,fma,f16c")]
fn dot_bf16_block_impl(n: usize, w: [&[u8]; BF16_BLOCK_W], a: [&[u8]; BF16_BLOCK_A]) -> [[f32; BF16_BLOCK_A]; BF16_BLOCK_W] {
    let whole = n - n % 8;
    let wc: [&[[u8; 16]]; BF16_BLOCK_W] = std::array::from_fn(|i| w[i][..2 * whole].as_chunks::<16>().0);
    let ac: [&[[u8; 16]]; BF16_BLOCK_A] = std::array::from_fn(|j| a[j][..2 * whole].as_chunks::<16>().0);
    let mut acc = [[_mm256_setzero_ps(); BF16_BLOCK_A]; BF16_BLOCK_W];
    for c in 0..whole / 8 {
        let av: [__m256; BF16_BLOCK_A] = std::array::from_fn(|j| bf16x8(&ac[j][c]));
        for i in 0..BF16_BLOCK_W {
            let wv = bf16x8(&wc[i][c]);
            for j in 0..BF16_BLOCK_A {
                acc[i][j] = _mm256_fmadd_ps(wv, av[j], acc[i][j]);
            }
        }
    }
    let mut out = [[0f32; BF16_BLOCK_A]; BF16_BLOCK_W];
    for i in 0..BF16_BLOCK_W {
        for j in 0..BF16_BLOCK_A {
            let mut l = [0f32; 8];
            store8(&mut l, acc[i][j]);
            let mut s = ((l[0] + l[4]) + (l[2] + l[6])) + ((l[1] + l[5]) + (l[3] + l[7]));
            for e in whole..n {
                let x = |r: &[u8]| f32::from_bits((u16::from_le_bytes([r[2 * e], r[2 * e + 1]]) as u32) << 16);
                s += x(w[i]) * x(a[j]);
            }
            out[i][j] = s;
        }
    }
    out
}

/// One block of 32 f32 as ggml-cpu's AVX2 `quantize_row_q8_0` makes it (the scalar
/// quantizer's bits): d = amax / 127, quants round-half-even(x * 127 / amax), NaN products
/// to 0 and infinite ones saturated, as the scalar cast gives. Returns d, the quants and their sum.
#[inline(always)]
fn q8_block_avx2(x: &[f32; 32]) -> (f32, [i8; 32], i32) {
    let mut qs = [0i8; 32];
    // SAFETY: the callers enable AVX2, FMA and F16C; the loads read the 32 floats of `x`,
    // the store writes the 32 bytes of `qs`.
    unsafe {
        // Plain loops, not closures: a closure would not inherit the caller's target features
        // and would call the intrinsics out of line.
        let mut v = [_mm256_setzero_ps(); 4];
        for (i, vi) in v.iter_mut().enumerate() {
            *vi = _mm256_loadu_ps(x.as_ptr().add(8 * i));
        }
        let sign = _mm256_set1_ps(-0.0);
        // max_ps returns its second operand when the first is NaN: NaNs drop out of amax,
        // as in the scalar fold with f32::max.
        let mut m = _mm256_setzero_ps();
        for &vi in &v {
            m = _mm256_max_ps(_mm256_andnot_ps(sign, vi), m);
        }
        let m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps::<1>(m));
        let m2 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        let amax = _mm_cvtss_f32(_mm_max_ss(m2, _mm_movehdup_ps(m2)));
        let d = amax / 127.0;
        let id = _mm256_set1_ps(if amax != 0.0 { 127.0 / amax } else { 0.0 });
        let mut q = [_mm256_setzero_si256(); 4];
        for (qi, &vi) in q.iter_mut().zip(&v) {
            let p = _mm256_mul_ps(vi, id);
            let r = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(p);
            // Saturated as the scalar cast saturates (an infinite scale, amax subnormal).
            let r = _mm256_min_ps(_mm256_max_ps(r, _mm256_set1_ps(-128.0)), _mm256_set1_ps(127.0));
            *qi = _mm256_cvtps_epi32(_mm256_andnot_ps(_mm256_cmp_ps::<_CMP_UNORD_Q>(p, p), r));
        }
        let sum = _mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3]));
        let s4 = _mm_add_epi32(_mm256_castsi256_si128(sum), _mm256_extracti128_si256::<1>(sum));
        let s2 = _mm_add_epi32(s4, _mm_unpackhi_epi64(s4, s4));
        let total = _mm_cvtsi128_si32(_mm_add_epi32(s2, _mm_shuffle_epi32::<1>(s2)));
        // -128 <= q <= 127: the saturating packs are exact; they interleave 128-bit lanes, which
        // the permutation undoes.
        let packed = _mm256_packs_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3]));
        let ordered = _mm256_permutevar8x32_epi32(packed, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        _mm256_storeu_si256(qs.as_mut_ptr() as *mut __m256i, ordered);
        (d, qs, total)
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
fn q8_0_from_f32_impl(src: &[f32], dst: &mut [u8]) {
    for (i, x) in src.as_chunks::<32>().0.iter().enumerate() {
        let (d, qs, _) = q8_block_avx2(x);
        BlockQ8_0 { d: f32_to_fp16(d), qs }.write_at(dst, i);
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
fn q8_1_from_f32_impl(src: &[f32], dst: &mut [u8]) {
    for (i, x) in src.as_chunks::<32>().0.iter().enumerate() {
        let (d, qs, sum) = q8_block_avx2(x);
        BlockQ8_1 { d: f32_to_fp16(d), s: f32_to_fp16(sum as f32 * d), qs }.write_at(dst, i);
    }
}
