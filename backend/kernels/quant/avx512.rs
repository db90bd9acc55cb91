//! AVX-512 tier (x86-64 only): AVX-512F/BW/VL + VNNI kernels, with `vdpbf16ps` for the BF16
//! dot when AVX512-BF16 is present.
//!
//! Safety structure: every SIMD body is a safe `#[target_feature]` function (`*_impl`) that
//! only touches memory through bounds-checked slices and fixed-size array references (the
//! load/store helpers below turn an `&[u8; N]` into an unaligned vector load of exactly those
//! N bytes). The only other `unsafe` is the call from the plain wrappers (`tier_fn!`) into
//! those bodies; the wrappers are private and reachable only through the tables built by
//! `table_with`, which are only built after [`detected`] confirmed the features at run time.
//!
//! Numerics versus the scalar tier: dequantizers, converters and quantizers are bit-identical;
//! the K-quant dots are bit-identical too (same int32 sums, same float sequence per
//! super-block); the Q4_0/Q4_1/Q8_0 dots keep ggml's x86 shape (int32 lane sums per block,
//! converted to f32 and scaled per lane), and the float dots accumulate in f32 lanes.

use core::arch::x86_64::*;
use core::mem::offset_of;
use std::sync::OnceLock;

use super::blocks::*;
use super::{check_from_f32, check_to_f32, check_vec_dot, scalar, Table, TypeKernels};
use crate::dtype::DType;

/// Whether the CPU has every feature the kernels of this tier are compiled with
/// (`avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c`).
pub fn detected() -> bool {
    is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vl")
        && is_x86_feature_detected!("avx512vnni")
        && is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
        && is_x86_feature_detected!("f16c")
}

/// Whether the BF16 dot can use `vdpbf16ps` (AVX512-BF16) on top of [`detected`].
pub fn has_bf16() -> bool {
    detected() && is_x86_feature_detected!("avx512bf16")
}

/// The tier's table and its name, or `None` when the CPU lacks the features. Built once.
pub(crate) fn table() -> Option<(&'static Table, &'static str)> {
    static TABLE: OnceLock<Option<(Table, &'static str)>> = OnceLock::new();
    TABLE
        .get_or_init(|| {
            let bf16 = has_bf16();
            table_with(bf16).map(|t| (t, if bf16 { "avx512+bf16" } else { "avx512" }))
        })
        .as_ref()
        .map(|(t, name)| (t, *name))
}

/// The tier's register-blocked dots (BF16 rows four at a time with AVX512-BF16).
pub(crate) fn dense_kernels() -> super::DenseKernels {
    super::DenseKernels {
        bf16_block_4x3: None,
        bf16_rows_4: has_bf16().then_some(dot_bf16_x4 as super::Bf16Rows4Fn),
        f32_gemm: detected().then_some(super::F32Gemm { lanes: 16, min_rows: 2, block: f32_gemm_block }),
    }
}

/// ggml's F32 prefill GEMM order (tinyBLAS with `__m512`): 16-lane chains, `_mm512_reduce_add_ps`.
pub fn f32_gemm_block(n: usize, w: [&[u8]; 4], a: [&[u8]; 3]) -> Option<[[f32; 3]; 4]> {
    if !detected() || !n.is_multiple_of(16) || w.iter().chain(a.iter()).any(|r| r.len() < 4 * n) {
        return None;
    }
    // SAFETY: the tier's features detected; every row holds n values, whole 16-lane chunks
    // (checked).
    Some(unsafe { f32_gemm_block_impl(n, w, a) })
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn f32_gemm_block_impl(n: usize, w: [&[u8]; 4], a: [&[u8]; 3]) -> [[f32; 3]; 4] {
    let wc: [&[[u8; 64]]; 4] = std::array::from_fn(|i| w[i][..4 * n].as_chunks::<64>().0);
    let ac: [&[[u8; 64]]; 3] = std::array::from_fn(|j| a[j][..4 * n].as_chunks::<64>().0);
    let mut acc = [[_mm512_setzero_ps(); 3]; 4];
    for c in 0..n / 16 {
        let av: [__m512; 3] = std::array::from_fn(|j| ldps_bytes(&ac[j][c]));
        for i in 0..4 {
            let wv = ldps_bytes(&wc[i][c]);
            for j in 0..3 {
                acc[i][j] = _mm512_fmadd_ps(wv, av[j], acc[i][j]);
            }
        }
    }
    // SAFETY: AVX-512F is enabled here (this fn's target features).
    acc.map(|row| row.map(|v| unsafe { crate::kernels::vmath::reduce_add_avx512(v) }))
}

/// Builds the tier's table, with (`bf16 = true`) or without `vdpbf16ps` for the BF16 dot.
/// `None` when the CPU lacks the features asked for.
pub(super) fn table_with(bf16: bool) -> Option<Table> {
    if !detected() || (bf16 && !has_bf16()) {
        return None;
    }
    let s = &scalar::TABLE;
    let entry = |i: usize,
                 to_f32: super::ToF32Fn,
                 from_f32: Option<super::FromF32Fn>,
                 vec_dot: Option<super::VecDotFn>| TypeKernels {
        ty: s[i].ty,
        vec_dot_type: s[i].vec_dot_type,
        to_f32,
        from_f32,
        vec_dot,
    };
    let dot_bf16: super::VecDotFn = if bf16 { dot_bf16_dp } else { dot_bf16_fma };
    Some([
        entry(
            0,
            scalar::f32_to_f32,
            Some(scalar::f32_from_f32),
            Some(dot_f32),
        ),
        entry(1, f16_to_f32, Some(f16_from_f32), Some(dot_f16)),
        entry(2, bf16_to_f32, Some(bf16_from_f32), Some(dot_bf16)),
        entry(
            3,
            dequantize_q4_0,
            Some(scalar::quantize_q4_0),
            Some(dot_q4_0_q8_0),
        ),
        entry(
            4,
            dequantize_q4_1,
            Some(scalar::quantize_q4_1),
            Some(dot_q4_1_q8_1),
        ),
        entry(5, dequantize_q8_0, Some(quantize_q8_0), Some(dot_q8_0_q8_0)),
        entry(6, scalar::dequantize_q8_1, Some(quantize_q8_1), None),
        entry(7, dequantize_q4_k, None, Some(dot_q4_k_q8_k)),
        entry(8, dequantize_q5_k, None, Some(dot_q5_k_q8_k)),
        entry(9, dequantize_q6_k, None, Some(dot_q6_k_q8_k)),
        entry(10, dequantize_q8_k, Some(quantize_q8_k), None),
    ])
}

// ---------------------------------------------------------------------------------------------
// Safe wrappers: check lengths (clear panics), then enter the SIMD body.
// ---------------------------------------------------------------------------------------------

macro_rules! tier_fn {
    ($feature_ok:ident: $name:ident => $body:ident, to_f32 $ty:expr) => {
        fn $name(src: &[u8], dst: &mut [f32]) {
            check_to_f32($ty, src.len(), dst.len());
            debug_assert!($feature_ok());
            // SAFETY: `$name` is private and only stored in tables built by `table_with`, which
            // builds them only after `$feature_ok()` confirmed at run time every feature that
            // `$body` is compiled with.
            unsafe { $body(src, dst) }
        }
    };
    ($feature_ok:ident: $name:ident => $body:ident, from_f32 $ty:expr) => {
        fn $name(src: &[f32], dst: &mut [u8]) {
            check_from_f32($ty, src.len(), dst.len());
            debug_assert!($feature_ok());
            // SAFETY: as above: reachable only through a table built after `$feature_ok()`.
            unsafe { $body(src, dst) }
        }
    };
    ($feature_ok:ident: $name:ident => $body:ident, vec_dot $ty:expr, $vdt:expr) => {
        fn $name(n: usize, w: &[u8], a: &[u8]) -> f32 {
            check_vec_dot($ty, $vdt, n, w.len(), a.len());
            debug_assert!($feature_ok());
            // SAFETY: as above: reachable only through a table built after `$feature_ok()`.
            unsafe { $body(n, w, a) }
        }
    };
}

tier_fn!(detected: f16_to_f32 => f16_to_f32_impl, to_f32 DType::F16);
tier_fn!(detected: bf16_to_f32 => bf16_to_f32_impl, to_f32 DType::BF16);
tier_fn!(detected: dequantize_q4_0 => dequantize_q4_0_impl, to_f32 DType::Q4_0);
tier_fn!(detected: dequantize_q4_1 => dequantize_q4_1_impl, to_f32 DType::Q4_1);
tier_fn!(detected: dequantize_q8_0 => dequantize_q8_0_impl, to_f32 DType::Q8_0);
tier_fn!(detected: dequantize_q8_k => dequantize_q8_k_impl, to_f32 DType::Q8_K);
tier_fn!(detected: dequantize_q4_k => dequantize_q4_k_impl, to_f32 DType::Q4_K);
tier_fn!(detected: dequantize_q5_k => dequantize_q5_k_impl, to_f32 DType::Q5_K);
tier_fn!(detected: dequantize_q6_k => dequantize_q6_k_impl, to_f32 DType::Q6_K);

tier_fn!(detected: f16_from_f32 => f16_from_f32_impl, from_f32 DType::F16);
tier_fn!(detected: bf16_from_f32 => bf16_from_f32_impl, from_f32 DType::BF16);
tier_fn!(detected: quantize_q8_0 => quantize_q8_0_impl, from_f32 DType::Q8_0);
tier_fn!(detected: quantize_q8_1 => quantize_q8_1_impl, from_f32 DType::Q8_1);
tier_fn!(detected: quantize_q8_k => quantize_q8_k_impl, from_f32 DType::Q8_K);

tier_fn!(detected: dot_f32 => dot_f32_impl, vec_dot DType::F32, DType::F32);
tier_fn!(detected: dot_f16 => dot_f16_impl, vec_dot DType::F16, DType::F16);
tier_fn!(detected: dot_bf16_fma => dot_bf16_fma_impl, vec_dot DType::BF16, DType::BF16);
tier_fn!(has_bf16: dot_bf16_dp => dot_bf16_dp_impl, vec_dot DType::BF16, DType::BF16);
tier_fn!(detected: dot_q4_0_q8_0 => dot_q4_0_q8_0_impl, vec_dot DType::Q4_0, DType::Q8_0);
tier_fn!(detected: dot_q4_1_q8_1 => dot_q4_1_q8_1_impl, vec_dot DType::Q4_1, DType::Q8_1);
tier_fn!(detected: dot_q8_0_q8_0 => dot_q8_0_q8_0_impl, vec_dot DType::Q8_0, DType::Q8_0);
tier_fn!(detected: dot_q4_k_q8_k => dot_q4_k_q8_k_impl, vec_dot DType::Q4_K, DType::Q8_K);
tier_fn!(detected: dot_q5_k_q8_k => dot_q5_k_q8_k_impl, vec_dot DType::Q5_K, DType::Q8_K);
tier_fn!(detected: dot_q6_k_q8_k => dot_q6_k_q8_k_impl, vec_dot DType::Q6_K, DType::Q8_K);

// ---------------------------------------------------------------------------------------------
// Helpers: fixed-size views, loads and stores
// ---------------------------------------------------------------------------------------------

/// `&s[off..off + N]` as an array reference (bounds-checked; free for constant offsets into
/// arrays).
#[inline(always)]
fn arr<T, const N: usize>(s: &[T], off: usize) -> &[T; N] {
    s[off..off + N].try_into().unwrap()
}

#[inline(always)]
fn arr_mut<T, const N: usize>(s: &mut [T], off: usize) -> &mut [T; N] {
    (&mut s[off..off + N]).try_into().unwrap()
}

#[inline(always)]
fn u16_at(s: &[u8], off: usize) -> u16 {
    u16::from_ne_bytes(*arr::<u8, 2>(s, off))
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn ld512(p: &[u8; 64]) -> __m512i {
    // SAFETY: `p` is 64 readable bytes; the load is unaligned.
    unsafe { _mm512_loadu_si512(p.as_ptr().cast()) }
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn ld256(p: &[u8; 32]) -> __m256i {
    // SAFETY: `p` is 32 readable bytes; the load is unaligned.
    unsafe { _mm256_loadu_si256(p.as_ptr().cast()) }
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn ld128(p: &[u8; 16]) -> __m128i {
    // SAFETY: `p` is 16 readable bytes; the load is unaligned.
    unsafe { _mm_loadu_si128(p.as_ptr().cast()) }
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn ldps(p: &[f32; 16]) -> __m512 {
    // SAFETY: `p` is 16 readable f32; the load is unaligned.
    unsafe { _mm512_loadu_ps(p.as_ptr()) }
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn ldps_bytes(p: &[u8; 64]) -> __m512 {
    // SAFETY: `p` is 64 readable bytes (16 f32); the load is unaligned.
    unsafe { _mm512_loadu_ps(p.as_ptr().cast()) }
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn stps(p: &mut [f32; 16], v: __m512) {
    // SAFETY: `p` is 16 writable f32; the store is unaligned.
    unsafe { _mm512_storeu_ps(p.as_mut_ptr(), v) }
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn st128(p: &mut [u8; 16], v: __m128i) {
    // SAFETY: `p` is 16 writable bytes; the store is unaligned.
    unsafe { _mm_storeu_si128(p.as_mut_ptr().cast(), v) }
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn st256(p: &mut [u8; 32], v: __m256i) {
    // SAFETY: `p` is 32 writable bytes; the store is unaligned.
    unsafe { _mm256_storeu_si256(p.as_mut_ptr().cast(), v) }
}

/// Loads the `t.len() / 4 < 16` f32 of a byte tail, zeros above.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn ldps_bytes_tail(t: &[u8]) -> __m512 {
    assert!(t.len() < 64 && t.len().is_multiple_of(4));
    let k = (1u32 << (t.len() / 4)) - 1;
    // SAFETY: the mask enables exactly the first t.len()/4 f32 lanes, which lie inside `t`;
    // masked-off lanes are not accessed (AVX-512 masked loads suppress them).
    unsafe { _mm512_maskz_loadu_ps(k as u16, t.as_ptr().cast()) }
}

/// Loads the `t.len() < 16` f32 of a tail, zeros above.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn ldps_tail(t: &[f32]) -> __m512 {
    assert!(t.len() < 16);
    let k = (1u32 << t.len()) - 1;
    // SAFETY: the mask enables exactly the first t.len() lanes, which lie inside `t`.
    unsafe { _mm512_maskz_loadu_ps(k as u16, t.as_ptr()) }
}

/// Stores the low `t.len() < 16` lanes of `v` into `t`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn stps_tail(t: &mut [f32], v: __m512) {
    assert!(t.len() < 16);
    let k = (1u32 << t.len()) - 1;
    // SAFETY: the mask enables exactly the first t.len() lanes, which lie inside `t`.
    unsafe { _mm512_mask_storeu_ps(t.as_mut_ptr(), k as u16, v) }
}

/// Loads the `t.len() / 2 < 16` 16-bit elements of a byte tail, zeros above.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn ld256_epi16_tail(t: &[u8]) -> __m256i {
    assert!(t.len() < 32 && t.len().is_multiple_of(2));
    let k = (1u32 << (t.len() / 2)) - 1;
    // SAFETY: the mask enables exactly the first t.len()/2 16-bit lanes, inside `t`.
    unsafe { _mm256_maskz_loadu_epi16(k as u16, t.as_ptr().cast()) }
}

/// Loads the `t.len() / 2 < 32` 16-bit elements of a byte tail, zeros above.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn ld512_epi16_tail(t: &[u8]) -> __m512i {
    assert!(t.len() < 64 && t.len().is_multiple_of(2));
    let k = (1u64 << (t.len() / 2)) - 1;
    // SAFETY: the mask enables exactly the first t.len()/2 16-bit lanes, inside `t`.
    unsafe { _mm512_maskz_loadu_epi16(k as u32, t.as_ptr().cast()) }
}

/// Stores the low `t.len() / 2 < 16` 16-bit lanes of `v` into the byte tail `t`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn st256_epi16_tail(t: &mut [u8], v: __m256i) {
    assert!(t.len() < 32 && t.len().is_multiple_of(2));
    let k = (1u32 << (t.len() / 2)) - 1;
    // SAFETY: the mask enables exactly the first t.len()/2 16-bit lanes, inside `t`.
    unsafe { _mm256_mask_storeu_epi16(t.as_mut_ptr().cast(), k as u16, v) }
}

/// fp16 bits -> f32 (F16C, exact).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn h2f(h: u16) -> f32 {
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(h as i32)))
}

/// f32 -> fp16 bits, round to nearest even (F16C, like `GGML_CPU_FP32_TO_FP16`).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn f2h(x: f32) -> u16 {
    _mm_extract_epi16::<0>(_mm_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm_set_ss(x))) as u16
}

/// `[a x8 | b x8]` as f32 lanes.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn halves_ps(a: f32, b: f32) -> __m512 {
    _mm512_mask_blend_ps(0xFF00, _mm512_set1_ps(a), _mm512_set1_ps(b))
}

/// `[a x8 | b x8]` as i32 lanes.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn halves_epi32(a: i32, b: i32) -> __m512i {
    _mm512_mask_blend_epi32(0xFF00, _mm512_set1_epi32(a), _mm512_set1_epi32(b))
}

/// Concatenates two 256-bit halves: `[lo | hi]`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn cat256(lo: __m256i, hi: __m256i) -> __m512i {
    _mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo), hi)
}

// ---------------------------------------------------------------------------------------------
// Float conversions
// ---------------------------------------------------------------------------------------------

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn f16_to_f32_impl(src: &[u8], dst: &mut [f32]) {
    let n = dst.len();
    let (sc, st) = src[..2 * n].as_chunks::<32>();
    let (dc, dt) = dst.as_chunks_mut::<16>();
    for (s, d) in sc.iter().zip(dc) {
        stps(d, _mm512_cvtph_ps(ld256(s)));
    }
    if !dt.is_empty() {
        stps_tail(dt, _mm512_cvtph_ps(ld256_epi16_tail(st)));
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn f16_from_f32_impl(src: &[f32], dst: &mut [u8]) {
    let n = src.len();
    let (sc, st) = src.as_chunks::<16>();
    let (dc, dt) = dst[..2 * n].as_chunks_mut::<32>();
    for (s, d) in sc.iter().zip(dc) {
        st256(
            d,
            _mm512_cvtps_ph::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(ldps(s)),
        );
    }
    if !st.is_empty() {
        let h = _mm512_cvtps_ph::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(ldps_tail(st));
        st256_epi16_tail(dt, h);
    }
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn bf16x16_to_ps(h: __m256i) -> __m512 {
    _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(h)))
}

/// `GGML_FP32_TO_BF16` on 16 lanes: nearest even, NaN made quiet, subnormals kept.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn ps_to_bf16x16(x: __m512) -> __m256i {
    let u = _mm512_castps_si512(x);
    let is_nan = _mm512_cmpgt_epu32_mask(
        _mm512_and_si512(u, _mm512_set1_epi32(0x7fff_ffff)),
        _mm512_set1_epi32(0x7f80_0000),
    );
    let hi = _mm512_srli_epi32::<16>(u);
    let bias = _mm512_add_epi32(
        _mm512_set1_epi32(0x7fff),
        _mm512_and_si512(hi, _mm512_set1_epi32(1)),
    );
    let rounded = _mm512_srli_epi32::<16>(_mm512_add_epi32(u, bias));
    let quiet = _mm512_or_si512(hi, _mm512_set1_epi32(64));
    _mm512_cvtepi32_epi16(_mm512_mask_blend_epi32(is_nan, rounded, quiet))
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn bf16_to_f32_impl(src: &[u8], dst: &mut [f32]) {
    let n = dst.len();
    let (sc, st) = src[..2 * n].as_chunks::<32>();
    let (dc, dt) = dst.as_chunks_mut::<16>();
    for (s, d) in sc.iter().zip(dc) {
        stps(d, bf16x16_to_ps(ld256(s)));
    }
    if !dt.is_empty() {
        stps_tail(dt, bf16x16_to_ps(ld256_epi16_tail(st)));
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn bf16_from_f32_impl(src: &[f32], dst: &mut [u8]) {
    let n = src.len();
    let (sc, st) = src.as_chunks::<16>();
    let (dc, dt) = dst[..2 * n].as_chunks_mut::<32>();
    for (s, d) in sc.iter().zip(dc) {
        st256(d, ps_to_bf16x16(ldps(s)));
    }
    if !st.is_empty() {
        st256_epi16_tail(dt, ps_to_bf16x16(ldps_tail(st)));
    }
}

// ---------------------------------------------------------------------------------------------
// Float dots (f32 lane accumulators, like ggml's vec.cpp)
// ---------------------------------------------------------------------------------------------

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn dot_f32_impl(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let (wc, wt) = w[..4 * n].as_chunks::<64>();
    let (ac, at) = a[..4 * n].as_chunks::<64>();
    let mut acc = [_mm512_setzero_ps(); 4];
    let mut wq = wc.chunks_exact(4);
    let mut aq = ac.chunks_exact(4);
    for (w4, a4) in (&mut wq).zip(&mut aq) {
        for k in 0..4 {
            acc[k] = _mm512_fmadd_ps(ldps_bytes(&w4[k]), ldps_bytes(&a4[k]), acc[k]);
        }
    }
    for (w1, a1) in wq.remainder().iter().zip(aq.remainder()) {
        acc[0] = _mm512_fmadd_ps(ldps_bytes(w1), ldps_bytes(a1), acc[0]);
    }
    if !wt.is_empty() {
        acc[1] = _mm512_fmadd_ps(ldps_bytes_tail(wt), ldps_bytes_tail(at), acc[1]);
    }
    let s = _mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3]));
    _mm512_reduce_add_ps(s)
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn dot_f16_impl(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let (wc, wt) = w[..2 * n].as_chunks::<32>();
    let (ac, at) = a[..2 * n].as_chunks::<32>();
    let mut acc = [_mm512_setzero_ps(); 4];
    let mut wq = wc.chunks_exact(4);
    let mut aq = ac.chunks_exact(4);
    for (w4, a4) in (&mut wq).zip(&mut aq) {
        for k in 0..4 {
            let x = _mm512_cvtph_ps(ld256(&w4[k]));
            let y = _mm512_cvtph_ps(ld256(&a4[k]));
            acc[k] = _mm512_fmadd_ps(x, y, acc[k]);
        }
    }
    for (w1, a1) in wq.remainder().iter().zip(aq.remainder()) {
        acc[0] = _mm512_fmadd_ps(
            _mm512_cvtph_ps(ld256(w1)),
            _mm512_cvtph_ps(ld256(a1)),
            acc[0],
        );
    }
    if !wt.is_empty() {
        let x = _mm512_cvtph_ps(ld256_epi16_tail(wt));
        let y = _mm512_cvtph_ps(ld256_epi16_tail(at));
        acc[1] = _mm512_fmadd_ps(x, y, acc[1]);
    }
    let s = _mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3]));
    _mm512_reduce_add_ps(s)
}

/// BF16 dot without AVX512-BF16: widen to f32 (exact) and FMA.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn dot_bf16_fma_impl(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let (wc, wt) = w[..2 * n].as_chunks::<32>();
    let (ac, at) = a[..2 * n].as_chunks::<32>();
    let mut acc = [_mm512_setzero_ps(); 4];
    let mut wq = wc.chunks_exact(4);
    let mut aq = ac.chunks_exact(4);
    for (w4, a4) in (&mut wq).zip(&mut aq) {
        for k in 0..4 {
            let x = bf16x16_to_ps(ld256(&w4[k]));
            let y = bf16x16_to_ps(ld256(&a4[k]));
            acc[k] = _mm512_fmadd_ps(x, y, acc[k]);
        }
    }
    for (w1, a1) in wq.remainder().iter().zip(aq.remainder()) {
        acc[0] = _mm512_fmadd_ps(bf16x16_to_ps(ld256(w1)), bf16x16_to_ps(ld256(a1)), acc[0]);
    }
    if !wt.is_empty() {
        let x = bf16x16_to_ps(ld256_epi16_tail(wt));
        let y = bf16x16_to_ps(ld256_epi16_tail(at));
        acc[1] = _mm512_fmadd_ps(x, y, acc[1]);
    }
    let s = _mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3]));
    _mm512_reduce_add_ps(s)
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c,avx512bf16")]
fn as_bh(v: __m512i) -> __m512bh {
    // SAFETY: both are 512-bit plain-data vectors; this only reinterprets the bits.
    unsafe { core::mem::transmute::<__m512i, __m512bh>(v) }
}

/// BF16 dot with `vdpbf16ps` (as ggml with `__AVX512BF16__`; the instruction treats bf16
/// subnormal inputs as zero).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c,avx512bf16")]
fn dot_bf16_dp_impl(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let (wc, wt) = w[..2 * n].as_chunks::<64>();
    let (ac, at) = a[..2 * n].as_chunks::<64>();
    let mut acc = [_mm512_setzero_ps(); 4];
    let mut wq = wc.chunks_exact(4);
    let mut aq = ac.chunks_exact(4);
    for (w4, a4) in (&mut wq).zip(&mut aq) {
        for k in 0..4 {
            acc[k] = _mm512_dpbf16_ps(acc[k], as_bh(ld512(&w4[k])), as_bh(ld512(&a4[k])));
        }
    }
    for (w1, a1) in wq.remainder().iter().zip(aq.remainder()) {
        acc[0] = _mm512_dpbf16_ps(acc[0], as_bh(ld512(w1)), as_bh(ld512(a1)));
    }
    if !wt.is_empty() {
        let x = as_bh(ld512_epi16_tail(wt));
        let y = as_bh(ld512_epi16_tail(at));
        acc[1] = _mm512_dpbf16_ps(acc[1], x, y);
    }
    let s = _mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3]));
    _mm512_reduce_add_ps(s)
}

/// Four BF16 rows against one activation row, each with exactly [`dot_bf16_dp_impl`]'s
/// accumulation (so the same bits as four single dots): four weight streams in flight at
/// once keep more DRAM reads outstanding in decode than one. `None` without AVX512-BF16.
pub fn dot_bf16_x4(n: usize, w: [&[u8]; 4], a: &[u8]) -> Option<[f32; 4]> {
    if !has_bf16() || w.iter().any(|r| r.len() < 2 * n) || a.len() < 2 * n {
        return None;
    }
    // SAFETY: AVX-512 F/BW/VL/VNNI/BF16 detected; lengths checked.
    Some(unsafe { dot_bf16_x4_impl(n, w, a) })
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c,avx512bf16")]
fn dot_bf16_x4_impl(n: usize, w: [&[u8]; 4], a: &[u8]) -> [f32; 4] {
    let chunks = 2 * n / 64;
    let mut acc = [[_mm512_setzero_ps(); 4]; 4];
    let full = chunks / 4 * 4;
    for c in (0..full).step_by(4) {
        for k in 0..4 {
            let y = as_bh(ld512(a[(c + k) * 64..].first_chunk::<64>().unwrap()));
            for (r, row) in w.iter().enumerate() {
                acc[r][k] = _mm512_dpbf16_ps(acc[r][k], as_bh(ld512(row[(c + k) * 64..].first_chunk::<64>().unwrap())), y);
            }
        }
    }
    for c in full..chunks {
        let y = as_bh(ld512(a[c * 64..].first_chunk::<64>().unwrap()));
        for (r, row) in w.iter().enumerate() {
            acc[r][0] = _mm512_dpbf16_ps(acc[r][0], as_bh(ld512(row[c * 64..].first_chunk::<64>().unwrap())), y);
        }
    }
    let tail = chunks * 64..2 * n;
    let mut out = [0f32; 4];
    for (r, row) in w.iter().enumerate() {
        if !tail.is_empty() {
            acc[r][1] = _mm512_dpbf16_ps(acc[r][1], as_bh(ld512_epi16_tail(&row[tail.clone()])), as_bh(ld512_epi16_tail(&a[tail.clone()])));
        }
        let s = _mm512_add_ps(_mm512_add_ps(acc[r][0], acc[r][1]), _mm512_add_ps(acc[r][2], acc[r][3]));
        out[r] = _mm512_reduce_add_ps(s);
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Activation quantizers (bit-identical to the scalar tier)
// ---------------------------------------------------------------------------------------------

const RNE: i32 = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;

/// One q8_0/q8_1 block (x86 ggml-cpu flavour: d = amax/127, id = 127/amax, nearest even):
/// returns (d, the 16+16 quants as i32 lanes).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn q8_block(x: &[f32; 32]) -> (f32, __m512i, __m512i) {
    let v0 = ldps(arr(x, 0));
    let v1 = ldps(arr(x, 16));
    let amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(v0), _mm512_abs_ps(v1)));
    let d = amax / 127.0;
    let id = _mm512_set1_ps(if amax != 0.0 { 127.0 / amax } else { 0.0 });
    let q0 = _mm512_cvt_roundps_epi32::<RNE>(_mm512_mul_ps(v0, id));
    let q1 = _mm512_cvt_roundps_epi32::<RNE>(_mm512_mul_ps(v1, id));
    (d, q0, q1)
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn quantize_q8_0_impl(src: &[f32], dst: &mut [u8]) {
    const B: usize = DType::Q8_0.block_bytes();
    const QS: usize = offset_of!(BlockQ8_0, qs);
    let nb = src.len() / QK8_0;
    let (xs, _) = src[..nb * QK8_0].as_chunks::<QK8_0>();
    let (ys, _) = dst[..nb * B].as_chunks_mut::<B>();
    for (x, y) in xs.iter().zip(ys) {
        let (d, q0, q1) = q8_block(x);
        y[0..2].copy_from_slice(&f2h(d).to_ne_bytes());
        st128(arr_mut(y, QS), _mm512_cvtsepi32_epi8(q0));
        st128(arr_mut(y, QS + 16), _mm512_cvtsepi32_epi8(q1));
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn quantize_q8_1_impl(src: &[f32], dst: &mut [u8]) {
    const B: usize = DType::Q8_1.block_bytes();
    const QS: usize = offset_of!(BlockQ8_1, qs);
    let nb = src.len() / QK8_1;
    let (xs, _) = src[..nb * QK8_1].as_chunks::<QK8_1>();
    let (ys, _) = dst[..nb * B].as_chunks_mut::<B>();
    for (x, y) in xs.iter().zip(ys) {
        let (d, q0, q1) = q8_block(x);
        let sum = _mm512_reduce_add_epi32(_mm512_add_epi32(q0, q1));
        y[0..2].copy_from_slice(&f2h(d).to_ne_bytes());
        y[2..4].copy_from_slice(&f2h(sum as f32 * d).to_ne_bytes());
        st128(arr_mut(y, QS), _mm512_cvtsepi32_epi8(q0));
        st128(arr_mut(y, QS + 16), _mm512_cvtsepi32_epi8(q1));
    }
}

/// `quantize_row_q8_K_ref`: scale from the first element of largest magnitude,
/// `iscale = -127/max`, nearest even, quants capped at 127, bsums per 16.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn quantize_q8_k_impl(src: &[f32], dst: &mut [u8]) {
    const B: usize = DType::Q8_K.block_bytes();
    const QS: usize = offset_of!(BlockQ8K, qs);
    const BS: usize = offset_of!(BlockQ8K, bsums);
    let nb = src.len() / QK_K;
    let (xs, _) = src[..nb * QK_K].as_chunks::<QK_K>();
    let (ys, _) = dst[..nb * B].as_chunks_mut::<B>();
    for (x, y) in xs.iter().zip(ys) {
        let mut v = [_mm512_setzero_ps(); 16];
        let mut amaxv = _mm512_setzero_ps();
        for (k, vk) in v.iter_mut().enumerate() {
            *vk = ldps(arr(x, 16 * k));
            amaxv = _mm512_max_ps(amaxv, _mm512_abs_ps(*vk));
        }
        let amax = _mm512_reduce_max_ps(amaxv);
        if amax == 0.0 {
            y.fill(0);
            continue;
        }
        // ggml keeps the first element whose magnitude is the maximum.
        let amaxb = _mm512_set1_ps(amax);
        let mut max = amax;
        for k in 0..16 {
            let m = _mm512_cmp_ps_mask::<_CMP_EQ_OQ>(_mm512_abs_ps(v[k]), amaxb);
            if m != 0 {
                max = x[16 * k + m.trailing_zeros() as usize];
                break;
            }
        }
        let iscale = -127.0f32 / max;
        let is = _mm512_set1_ps(iscale);
        let cap = _mm512_set1_epi32(127);
        let mut bsums = [0u8; 32];
        for k in 0..16 {
            let q = _mm512_min_epi32(
                _mm512_cvt_roundps_epi32::<RNE>(_mm512_mul_ps(is, v[k])),
                cap,
            );
            let s = _mm512_reduce_add_epi32(q) as i16;
            bsums[2 * k..2 * k + 2].copy_from_slice(&s.to_ne_bytes());
            st128(arr_mut(y, QS + 16 * k), _mm512_cvtsepi32_epi8(q));
        }
        y[0..4].copy_from_slice(&(1.0 / iscale).to_ne_bytes());
        y[BS..BS + 32].copy_from_slice(&bsums);
    }
}

// ---------------------------------------------------------------------------------------------
// Dequantizers (bit-identical to the scalar tier: same products, no FMA contraction)
// ---------------------------------------------------------------------------------------------

/// 16 unsigned bytes -> 16 f32.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn u8x16_to_ps(q: __m128i) -> __m512 {
    _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(q))
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn dequantize_q4_0_impl(src: &[u8], dst: &mut [f32]) {
    const B: usize = DType::Q4_0.block_bytes();
    const QS: usize = offset_of!(BlockQ4_0, qs);
    let nb = dst.len() / QK4_0;
    let (xs, _) = src[..nb * B].as_chunks::<B>();
    let (ys, _) = dst.as_chunks_mut::<QK4_0>();
    let m4 = _mm_set1_epi8(0x0F);
    let eight = _mm512_set1_epi32(8);
    for (x, y) in xs.iter().zip(ys) {
        let d = _mm512_set1_ps(h2f(u16_at(x, 0)));
        let q = ld128(arr(x, QS));
        let lo = _mm512_sub_epi32(_mm512_cvtepu8_epi32(_mm_and_si128(q, m4)), eight);
        let hi = _mm512_sub_epi32(
            _mm512_cvtepu8_epi32(_mm_and_si128(_mm_srli_epi16::<4>(q), m4)),
            eight,
        );
        stps(arr_mut(y, 0), _mm512_mul_ps(_mm512_cvtepi32_ps(lo), d));
        stps(arr_mut(y, 16), _mm512_mul_ps(_mm512_cvtepi32_ps(hi), d));
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn dequantize_q4_1_impl(src: &[u8], dst: &mut [f32]) {
    const B: usize = DType::Q4_1.block_bytes();
    const QS: usize = offset_of!(BlockQ4_1, qs);
    const M: usize = offset_of!(BlockQ4_1, m);
    let nb = dst.len() / QK4_1;
    let (xs, _) = src[..nb * B].as_chunks::<B>();
    let (ys, _) = dst.as_chunks_mut::<QK4_1>();
    let m4 = _mm_set1_epi8(0x0F);
    for (x, y) in xs.iter().zip(ys) {
        let d = _mm512_set1_ps(h2f(u16_at(x, 0)));
        let m = _mm512_set1_ps(h2f(u16_at(x, M)));
        let q = ld128(arr(x, QS));
        let lo = u8x16_to_ps(_mm_and_si128(q, m4));
        let hi = u8x16_to_ps(_mm_and_si128(_mm_srli_epi16::<4>(q), m4));
        stps(arr_mut(y, 0), _mm512_add_ps(_mm512_mul_ps(lo, d), m));
        stps(arr_mut(y, 16), _mm512_add_ps(_mm512_mul_ps(hi, d), m));
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn dequantize_q8_0_impl(src: &[u8], dst: &mut [f32]) {
    const B: usize = DType::Q8_0.block_bytes();
    const QS: usize = offset_of!(BlockQ8_0, qs);
    let nb = dst.len() / QK8_0;
    let (xs, _) = src[..nb * B].as_chunks::<B>();
    let (ys, _) = dst.as_chunks_mut::<QK8_0>();
    for (x, y) in xs.iter().zip(ys) {
        let d = _mm512_set1_ps(h2f(u16_at(x, 0)));
        for h in 0..2 {
            let q = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(ld128(arr(x, QS + 16 * h))));
            stps(arr_mut(y, 16 * h), _mm512_mul_ps(q, d));
        }
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn dequantize_q8_k_impl(src: &[u8], dst: &mut [f32]) {
    const B: usize = DType::Q8_K.block_bytes();
    const QS: usize = offset_of!(BlockQ8K, qs);
    let nb = dst.len() / QK_K;
    let (xs, _) = src[..nb * B].as_chunks::<B>();
    let (ys, _) = dst.as_chunks_mut::<QK_K>();
    for (x, y) in xs.iter().zip(ys) {
        let d = _mm512_set1_ps(f32::from_ne_bytes(*arr(x, 0)));
        for k in 0..16 {
            let q = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(ld128(arr(x, QS + 16 * k))));
            stps(arr_mut(y, 16 * k), _mm512_mul_ps(d, q));
        }
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn dequantize_q4_k_impl(src: &[u8], dst: &mut [f32]) {
    const B: usize = DType::Q4_K.block_bytes();
    const SC: usize = offset_of!(BlockQ4K, scales);
    const QS: usize = offset_of!(BlockQ4K, qs);
    const DMIN: usize = offset_of!(BlockQ4K, dmin);
    let nb = dst.len() / QK_K;
    let (xs, _) = src[..nb * B].as_chunks::<B>();
    let (ys, _) = dst.as_chunks_mut::<QK_K>();
    let m4 = _mm_set1_epi8(0x0F);
    for (x, y) in xs.iter().zip(ys) {
        let d = h2f(u16_at(x, 0));
        let min = h2f(u16_at(x, DMIN));
        let (sc, m) = scales_mins_k4(arr(x, SC));
        for c in 0..4 {
            let d1 = _mm512_set1_ps(d * sc[2 * c] as f32);
            let m1 = _mm512_set1_ps(min * m[2 * c] as f32);
            let d2 = _mm512_set1_ps(d * sc[2 * c + 1] as f32);
            let m2 = _mm512_set1_ps(min * m[2 * c + 1] as f32);
            for h in 0..2 {
                let q = ld128(arr(x, QS + 32 * c + 16 * h));
                let lo = u8x16_to_ps(_mm_and_si128(q, m4));
                let hi = u8x16_to_ps(_mm_and_si128(_mm_srli_epi16::<4>(q), m4));
                stps(
                    arr_mut(y, 64 * c + 16 * h),
                    _mm512_sub_ps(_mm512_mul_ps(d1, lo), m1),
                );
                stps(
                    arr_mut(y, 64 * c + 32 + 16 * h),
                    _mm512_sub_ps(_mm512_mul_ps(d2, hi), m2),
                );
            }
        }
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn dequantize_q5_k_impl(src: &[u8], dst: &mut [f32]) {
    const B: usize = DType::Q5_K.block_bytes();
    const SC: usize = offset_of!(BlockQ5K, scales);
    const QH: usize = offset_of!(BlockQ5K, qh);
    const QS: usize = offset_of!(BlockQ5K, qs);
    const DMIN: usize = offset_of!(BlockQ5K, dmin);
    let nb = dst.len() / QK_K;
    let (xs, _) = src[..nb * B].as_chunks::<B>();
    let (ys, _) = dst.as_chunks_mut::<QK_K>();
    let m4 = _mm_set1_epi8(0x0F);
    let sixteen = _mm_set1_epi8(16);
    for (x, y) in xs.iter().zip(ys) {
        let d = h2f(u16_at(x, 0));
        let min = h2f(u16_at(x, DMIN));
        let (sc, m) = scales_mins_k4(arr(x, SC));
        for c in 0..4 {
            let d1 = _mm512_set1_ps(d * sc[2 * c] as f32);
            let m1 = _mm512_set1_ps(min * m[2 * c] as f32);
            let d2 = _mm512_set1_ps(d * sc[2 * c + 1] as f32);
            let m2 = _mm512_set1_ps(min * m[2 * c + 1] as f32);
            let u1 = _mm_set1_epi8((1u8 << (2 * c)) as i8);
            let u2 = _mm_set1_epi8((2u8 << (2 * c)) as i8);
            for h in 0..2 {
                let q = ld128(arr(x, QS + 32 * c + 16 * h));
                let qh = ld128(arr(x, QH + 16 * h));
                // 16 where the bit is set, else 0.
                let h1 = _mm_and_si128(_mm_cmpeq_epi8(_mm_and_si128(qh, u1), u1), sixteen);
                let h2 = _mm_and_si128(_mm_cmpeq_epi8(_mm_and_si128(qh, u2), u2), sixteen);
                let lo = u8x16_to_ps(_mm_or_si128(_mm_and_si128(q, m4), h1));
                let hi = u8x16_to_ps(_mm_or_si128(_mm_and_si128(_mm_srli_epi16::<4>(q), m4), h2));
                stps(
                    arr_mut(y, 64 * c + 16 * h),
                    _mm512_sub_ps(_mm512_mul_ps(d1, lo), m1),
                );
                stps(
                    arr_mut(y, 64 * c + 32 + 16 * h),
                    _mm512_sub_ps(_mm512_mul_ps(d2, hi), m2),
                );
            }
        }
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn dequantize_q6_k_impl(src: &[u8], dst: &mut [f32]) {
    const B: usize = DType::Q6_K.block_bytes();
    const QL: usize = offset_of!(BlockQ6K, ql);
    const QH: usize = offset_of!(BlockQ6K, qh);
    const SC: usize = offset_of!(BlockQ6K, scales);
    const D: usize = offset_of!(BlockQ6K, d);
    let nb = dst.len() / QK_K;
    let (xs, _) = src[..nb * B].as_chunks::<B>();
    let (ys, _) = dst.as_chunks_mut::<QK_K>();
    let m4 = _mm_set1_epi8(0x0F);
    let m3 = _mm_set1_epi8(3);
    let c32 = _mm512_set1_epi32(32);
    for (x, y) in xs.iter().zip(ys) {
        let d = h2f(u16_at(x, D));
        for h in 0..2 {
            for half in 0..2 {
                // l in 16*half .. 16*half + 16, sub-block index is = half (+2, +4, +6).
                let l0 = 16 * half;
                let qa = ld128(arr(x, QL + 64 * h + l0));
                let qb = ld128(arr(x, QL + 64 * h + 32 + l0));
                let qh = ld128(arr(x, QH + 32 * h + l0));
                let qhs = |s: i32| -> __m128i {
                    // ((qh >> s) & 3) << 4, per byte (16-bit shifts, masked per byte).
                    let v = match s {
                        0 => qh,
                        2 => _mm_srli_epi16::<2>(qh),
                        4 => _mm_srli_epi16::<4>(qh),
                        _ => _mm_srli_epi16::<6>(qh),
                    };
                    _mm_slli_epi16::<4>(_mm_and_si128(v, m3))
                };
                let parts = [
                    _mm_or_si128(_mm_and_si128(qa, m4), qhs(0)),
                    _mm_or_si128(_mm_and_si128(qb, m4), qhs(2)),
                    _mm_or_si128(_mm_and_si128(_mm_srli_epi16::<4>(qa), m4), qhs(4)),
                    _mm_or_si128(_mm_and_si128(_mm_srli_epi16::<4>(qb), m4), qhs(6)),
                ];
                for (p, &q) in parts.iter().enumerate() {
                    let sc = x[SC + 8 * h + half + 2 * p] as i8;
                    let ds = _mm512_set1_ps(d * sc as f32);
                    let qf = _mm512_cvtepi32_ps(_mm512_sub_epi32(_mm512_cvtepu8_epi32(q), c32));
                    stps(arr_mut(y, 128 * h + 32 * p + l0), _mm512_mul_ps(ds, qf));
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Quantized dots (VNNI `vpdpbusd`: u8 x s8 -> i32, groups of 4)
// ---------------------------------------------------------------------------------------------

/// Splits 16 packed bytes of two 32-element blocks into `[lo0 hi0 | lo1 hi1]`, i.e. the 64
/// quants 0..15 of both blocks in element order.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn nibbles_2blocks(q0: __m128i, q1: __m128i) -> __m512i {
    let t = _mm256_inserti128_si256::<1>(_mm256_castsi128_si256(q0), q1); // [q0 | q1]
    let m4 = _mm256_set1_epi8(0x0F);
    let lo = _mm256_and_si256(t, m4); // [lo0 | lo1]
    let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(t), m4); // [hi0 | hi1]
    let z = cat256(lo, hi); // 128-bit lanes: lo0 lo1 hi0 hi1
    _mm512_shuffle_i64x2::<0b11_01_10_00>(z, z) // lo0 hi0 lo1 hi1
}

/// Two 32-byte activation quant runs as one vector `[y0 | y1]`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn cat_qs(y0: &[u8; 32], y1: &[u8; 32]) -> __m512i {
    cat256(ld256(y0), ld256(y1))
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn dot_q4_0_q8_0_impl(n: usize, w: &[u8], a: &[u8]) -> f32 {
    const BX: usize = DType::Q4_0.block_bytes();
    const BY: usize = DType::Q8_0.block_bytes();
    const XQ: usize = offset_of!(BlockQ4_0, qs);
    const YQ: usize = offset_of!(BlockQ8_0, qs);
    let nb = n / QK8_0;
    let (xs, _) = w[..nb * BX].as_chunks::<BX>();
    let (ys, _) = a[..nb * BY].as_chunks::<BY>();
    let zero_x = [0u8; BX];
    let zero_y = [0u8; BY];
    let eight = _mm512_set1_epi8(8);
    let mut acc = _mm512_setzero_ps();
    let mut ib = 0;
    while ib < nb {
        // Two blocks per step; an odd last block is paired with an all-zero one (d = 0).
        let (x0, y0) = (&xs[ib], &ys[ib]);
        let (x1, y1) = if ib + 1 < nb {
            (&xs[ib + 1], &ys[ib + 1])
        } else {
            (&zero_x, &zero_y)
        };
        let q = nibbles_2blocks(ld128(arr(x0, XQ)), ld128(arr(x1, XQ)));
        let y = cat_qs(arr(y0, YQ), arr(y1, YQ));
        // sum((q - 8) * y) = sum(q * y) - sum(8 * y), exact in int32.
        let s = _mm512_sub_epi32(
            _mm512_dpbusd_epi32(_mm512_setzero_si512(), q, y),
            _mm512_dpbusd_epi32(_mm512_setzero_si512(), eight, y),
        );
        let d = halves_ps(
            h2f(u16_at(x0, 0)) * h2f(u16_at(y0, 0)),
            h2f(u16_at(x1, 0)) * h2f(u16_at(y1, 0)),
        );
        acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), d, acc);
        ib += 2;
    }
    _mm512_reduce_add_ps(acc)
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn dot_q4_1_q8_1_impl(n: usize, w: &[u8], a: &[u8]) -> f32 {
    const BX: usize = DType::Q4_1.block_bytes();
    const BY: usize = DType::Q8_1.block_bytes();
    const XQ: usize = offset_of!(BlockQ4_1, qs);
    const XM: usize = offset_of!(BlockQ4_1, m);
    const YQ: usize = offset_of!(BlockQ8_1, qs);
    const YS: usize = offset_of!(BlockQ8_1, s);
    let nb = n / QK8_1;
    let (xs, _) = w[..nb * BX].as_chunks::<BX>();
    let (ys, _) = a[..nb * BY].as_chunks::<BY>();
    let zero_x = [0u8; BX];
    let zero_y = [0u8; BY];
    let mut acc = _mm512_setzero_ps();
    let mut summs = 0.0f32;
    let mut ib = 0;
    while ib < nb {
        let (x0, y0) = (&xs[ib], &ys[ib]);
        let (x1, y1) = if ib + 1 < nb {
            (&xs[ib + 1], &ys[ib + 1])
        } else {
            (&zero_x, &zero_y)
        };
        let q = nibbles_2blocks(ld128(arr(x0, XQ)), ld128(arr(x1, XQ)));
        let y = cat_qs(arr(y0, YQ), arr(y1, YQ));
        let s = _mm512_dpbusd_epi32(_mm512_setzero_si512(), q, y);
        let d = halves_ps(
            h2f(u16_at(x0, 0)) * h2f(u16_at(y0, 0)),
            h2f(u16_at(x1, 0)) * h2f(u16_at(y1, 0)),
        );
        acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), d, acc);
        summs += h2f(u16_at(x0, XM)) * h2f(u16_at(y0, YS));
        summs += h2f(u16_at(x1, XM)) * h2f(u16_at(y1, YS));
        ib += 2;
    }
    _mm512_reduce_add_ps(acc) + summs
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn dot_q8_0_q8_0_impl(n: usize, w: &[u8], a: &[u8]) -> f32 {
    const B: usize = DType::Q8_0.block_bytes();
    const QS: usize = offset_of!(BlockQ8_0, qs);
    let nb = n / QK8_0;
    let (xs, _) = w[..nb * B].as_chunks::<B>();
    let (ys, _) = a[..nb * B].as_chunks::<B>();
    let zero = [0u8; B];
    let bias = _mm512_set1_epi8(-128);
    let mut acc = _mm512_setzero_ps();
    let mut ib = 0;
    while ib < nb {
        let (x0, y0) = (&xs[ib], &ys[ib]);
        let (x1, y1) = if ib + 1 < nb {
            (&xs[ib + 1], &ys[ib + 1])
        } else {
            (&zero, &zero)
        };
        let x = cat_qs(arr(x0, QS), arr(x1, QS));
        let y = cat_qs(arr(y0, QS), arr(y1, QS));
        // x ^ 0x80 is x + 128 as an unsigned byte: sum(x*y) = sum((x+128)*y) - sum(128*y),
        // exact for every int8 pair (no sign trick that breaks on -128).
        let s = _mm512_sub_epi32(
            _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_xor_si512(x, bias), y),
            _mm512_dpbusd_epi32(_mm512_setzero_si512(), bias, y),
        );
        let d = halves_ps(
            h2f(u16_at(x0, 0)) * h2f(u16_at(y0, 0)),
            h2f(u16_at(x1, 0)) * h2f(u16_at(y1, 0)),
        );
        acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), d, acc);
        ib += 2;
    }
    _mm512_reduce_add_ps(acc)
}

/// `sum_j m_j * bsums_j` of a Q4_K/Q5_K super-block (exact, as the scalar tier).
#[inline(always)]
fn mins_dot_bsums(m: &[u8; 8], y: &[u8; DType::Q8_K.block_bytes()]) -> i32 {
    const BS: usize = offset_of!(BlockQ8K, bsums);
    let mut summ = 0i32;
    for j in 0..QK_K / 16 {
        summ += i16::from_ne_bytes(*arr(y, BS + 2 * j)) as i32 * m[j / 2] as i32;
    }
    summ
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn dot_q4_k_q8_k_impl(n: usize, w: &[u8], a: &[u8]) -> f32 {
    const BX: usize = DType::Q4_K.block_bytes();
    const BY: usize = DType::Q8_K.block_bytes();
    const DMIN: usize = offset_of!(BlockQ4K, dmin);
    const SC: usize = offset_of!(BlockQ4K, scales);
    const XQ: usize = offset_of!(BlockQ4K, qs);
    const YQ: usize = offset_of!(BlockQ8K, qs);
    let nb = n / QK_K;
    let (xs, _) = w[..nb * BX].as_chunks::<BX>();
    let (ys, _) = a[..nb * BY].as_chunks::<BY>();
    let m4 = _mm256_set1_epi8(0x0F);
    let mut sumf = 0.0f32;
    for (x, y) in xs.iter().zip(ys) {
        let (sc, m) = scales_mins_k4(arr(x, SC));
        let mut acc = _mm512_setzero_si512();
        for c in 0..4 {
            let q = ld256(arr(x, XQ + 32 * c));
            let lo = _mm256_and_si256(q, m4);
            let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(q), m4);
            // Lanes 0..8: sub-block 2c, lanes 8..16: sub-block 2c+1.
            let p = _mm512_dpbusd_epi32(
                _mm512_setzero_si512(),
                cat256(lo, hi),
                ld512(arr(y, YQ + 64 * c)),
            );
            let s = halves_epi32(sc[2 * c] as i32, sc[2 * c + 1] as i32);
            acc = _mm512_add_epi32(acc, _mm512_mullo_epi32(p, s));
        }
        let sumi = _mm512_reduce_add_epi32(acc);
        let summ = mins_dot_bsums(&m, y);
        let yd = f32::from_ne_bytes(*arr(y, 0));
        let d = h2f(u16_at(x, 0)) * yd;
        let dmin = h2f(u16_at(x, DMIN)) * yd;
        sumf += d * sumi as f32 - dmin * summ as f32;
    }
    sumf
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn dot_q5_k_q8_k_impl(n: usize, w: &[u8], a: &[u8]) -> f32 {
    const BX: usize = DType::Q5_K.block_bytes();
    const BY: usize = DType::Q8_K.block_bytes();
    const DMIN: usize = offset_of!(BlockQ5K, dmin);
    const SC: usize = offset_of!(BlockQ5K, scales);
    const XH: usize = offset_of!(BlockQ5K, qh);
    const XQ: usize = offset_of!(BlockQ5K, qs);
    const YQ: usize = offset_of!(BlockQ8K, qs);
    let nb = n / QK_K;
    let (xs, _) = w[..nb * BX].as_chunks::<BX>();
    let (ys, _) = a[..nb * BY].as_chunks::<BY>();
    let m4 = _mm256_set1_epi8(0x0F);
    let one = _mm256_set1_epi8(1);
    let mut sumf = 0.0f32;
    for (x, y) in xs.iter().zip(ys) {
        let (sc, m) = scales_mins_k4(arr(x, SC));
        let qh = ld256(arr(x, XH));
        let mut acc = _mm512_setzero_si512();
        for c in 0..4 {
            // Bit 2c (low nibbles) and 2c+1 (high nibbles) of each qh byte, moved to bit 4.
            // 16-bit shifts are fine: the mask keeps one bit per byte.
            let (hl, hh) = match c {
                0 => (qh, _mm256_srli_epi16::<1>(qh)),
                1 => (_mm256_srli_epi16::<2>(qh), _mm256_srli_epi16::<3>(qh)),
                2 => (_mm256_srli_epi16::<4>(qh), _mm256_srli_epi16::<5>(qh)),
                _ => (_mm256_srli_epi16::<6>(qh), _mm256_srli_epi16::<7>(qh)),
            };
            let hl = _mm256_slli_epi16::<4>(_mm256_and_si256(hl, one));
            let hh = _mm256_slli_epi16::<4>(_mm256_and_si256(hh, one));
            let q = ld256(arr(x, XQ + 32 * c));
            let lo = _mm256_or_si256(_mm256_and_si256(q, m4), hl);
            let hi = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16::<4>(q), m4), hh);
            let p = _mm512_dpbusd_epi32(
                _mm512_setzero_si512(),
                cat256(lo, hi),
                ld512(arr(y, YQ + 64 * c)),
            );
            let s = halves_epi32(sc[2 * c] as i32, sc[2 * c + 1] as i32);
            acc = _mm512_add_epi32(acc, _mm512_mullo_epi32(p, s));
        }
        let sumi = _mm512_reduce_add_epi32(acc);
        let summ = mins_dot_bsums(&m, y);
        let yd = f32::from_ne_bytes(*arr(y, 0));
        let d = h2f(u16_at(x, 0)) * yd;
        let dmin = h2f(u16_at(x, DMIN)) * yd;
        sumf += d * sumi as f32 - dmin * summ as f32;
    }
    sumf
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn dot_q6_k_q8_k_impl(n: usize, w: &[u8], a: &[u8]) -> f32 {
    const BX: usize = DType::Q6_K.block_bytes();
    const BY: usize = DType::Q8_K.block_bytes();
    const QL: usize = offset_of!(BlockQ6K, ql);
    const QH: usize = offset_of!(BlockQ6K, qh);
    const SC: usize = offset_of!(BlockQ6K, scales);
    const D: usize = offset_of!(BlockQ6K, d);
    const YQ: usize = offset_of!(BlockQ8K, qs);
    let nb = n / QK_K;
    let (xs, _) = w[..nb * BX].as_chunks::<BX>();
    let (ys, _) = a[..nb * BY].as_chunks::<BY>();
    let m4 = _mm512_set1_epi8(0x0F);
    let m3 = _mm512_set1_epi8(3);
    let c32 = _mm512_set1_epi8(32);
    // Lane k of a 64-element dpbusd result covers elements 4k..4k+4, i.e. sub-block k/4.
    let quad = _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
    let mut sumf = 0.0f32;
    for (x, y) in xs.iter().zip(ys) {
        let scales = _mm512_cvtepi8_epi32(ld128(arr(x, SC)));
        let mut acc = _mm512_setzero_si512();
        for h in 0..2 {
            let ql = ld512(arr(x, QL + 64 * h)); // [ql[l] | ql[l + 32]], l in 0..32
            let qh = ld256(arr(x, QH + 32 * h));
            let qh = cat256(qh, _mm256_srli_epi16::<2>(qh)); // [qh | qh >> 2]
                                                             // Elements 128h + 0..64 and 128h + 64..128 (6-bit, 0..63).
            let z01 = _mm512_or_si512(
                _mm512_and_si512(ql, m4),
                _mm512_slli_epi16::<4>(_mm512_and_si512(qh, m3)),
            );
            let z23 = _mm512_or_si512(
                _mm512_and_si512(_mm512_srli_epi16::<4>(ql), m4),
                _mm512_slli_epi16::<4>(_mm512_and_si512(_mm512_srli_epi16::<4>(qh), m3)),
            );
            for (p, z) in [z01, z23].into_iter().enumerate() {
                let yv = ld512(arr(y, YQ + 128 * h + 64 * p));
                // sum((q - 32) * y) = sum(q * y) - sum(32 * y), exact.
                let dp = _mm512_sub_epi32(
                    _mm512_dpbusd_epi32(_mm512_setzero_si512(), z, yv),
                    _mm512_dpbusd_epi32(_mm512_setzero_si512(), c32, yv),
                );
                let idx = _mm512_add_epi32(quad, _mm512_set1_epi32((8 * h + 4 * p) as i32));
                let s = _mm512_permutexvar_epi32(idx, scales);
                acc = _mm512_add_epi32(acc, _mm512_mullo_epi32(dp, s));
            }
        }
        let sumi = _mm512_reduce_add_epi32(acc);
        let yd = f32::from_ne_bytes(*arr(y, 0));
        sumf += h2f(u16_at(x, D)) * yd * sumi as f32;
    }
    sumf
}
