//! AVX-512 VNNI GEMV kernels on the packed layouts.

use super::Layout;
use crate::backend::dtype::DType;
use std::arch::x86_64::*;

/// Activation rows per pass (each keeps one accumulator vector).
const M_PASS: usize = 4;
/// Bytes ahead of the current block to prefetch.
const PREFETCH_AHEAD: usize = 2304;

/// Checked entry: lengths first, then the SIMD body.
pub fn gemv(layout: Layout, nb: usize, group: &[u8], acts: &[&[u8]], sums: &[&[i32]], out: &mut [[f32; 16]]) {
    let bq8 = DType::Q8_0.block_bytes();
    assert!(group.len() >= nb * layout.group_block() && out.len() >= acts.len() && sums.len() >= acts.len());
    for (a, s) in acts.iter().zip(sums) {
        assert!(a.len() >= nb * bq8 && s.len() >= nb);
    }
    for c in (0..acts.len()).step_by(M_PASS) {
        let e = (c + M_PASS).min(acts.len());
        // SAFETY: lengths checked above; reached only after runtime detection of AVX-512
        // F/BW and VNNI (super::gemv).
        unsafe {
            match layout {
                Layout::Q4_0x16 => q4_0x16_pass(nb, group, &acts[c..e], &sums[c..e], &mut out[c..e]),
                Layout::Q8_0x16 => q8_0x16_pass(nb, group, &acts[c..e], &sums[c..e], &mut out[c..e]),
            }
        };
    }
}

/// Up to M_PASS activation rows against one 16-row group: per block, the four weight vectors
/// are split into low and high nibbles once and dotted with each row's broadcast quants.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,f16c")]
unsafe fn q4_0x16_pass(nb: usize, group: &[u8], acts: &[&[u8]], sums: &[&[i32]], out: &mut [[f32; 16]]) {
    let bq8 = DType::Q8_0.block_bytes();
    let m4 = _mm512_set1_epi8(0x0F);
    let mut f = [_mm512_setzero_ps(); M_PASS];
    let gp = group.as_ptr();
    const GROUP_BLOCK: usize = super::q4_0x16::GROUP_BLOCK;
    for b in 0..nb {
        let base = gp.add(b * GROUP_BLOCK);
        // Stream ahead of the hardware prefetcher (DRAM-bound with one row group per pass).
        let ahead = base.wrapping_add(PREFETCH_AHEAD) as *const i8;
        for l in 0..GROUP_BLOCK.div_ceil(64) {
            _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(l * 64));
        }
        let dw = _mm512_cvtph_ps(_mm256_loadu_si256(base as *const __m256i));
        let mut lo = [_mm512_setzero_si512(); 4];
        let mut hi = [_mm512_setzero_si512(); 4];
        for i in 0..4 {
            let v = _mm512_loadu_si512(base.add(32 + 64 * i) as *const _);
            lo[i] = _mm512_and_si512(v, m4);
            hi[i] = _mm512_and_si512(_mm512_srli_epi16::<4>(v), m4);
        }
        for (j, a) in acts.iter().enumerate() {
            let ab = a.as_ptr().add(b * bq8);
            let q = ab.add(2) as *const i32;
            let mut s = _mm512_setzero_si512();
            for i in 0..4 {
                s = _mm512_dpbusd_epi32(s, lo[i], _mm512_set1_epi32(q.add(i).read_unaligned()));
                s = _mm512_dpbusd_epi32(s, hi[i], _mm512_set1_epi32(q.add(4 + i).read_unaligned()));
            }
            // The nibbles went in unsigned: subtract 8 * sum(a) for q - 8.
            s = _mm512_sub_epi32(s, _mm512_set1_epi32(8 * *sums[j].get_unchecked(b)));
            let da = _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128((ab as *const u16).read_unaligned() as i32)));
            f[j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), _mm512_mul_ps(dw, _mm512_set1_ps(da)), f[j]);
        }
    }
    for (j, o) in out.iter_mut().enumerate().take(acts.len()) {
        _mm512_storeu_ps(o.as_mut_ptr(), f[j]);
    }
}

/// Checked entry of the row dequantizers.
pub fn row_to_f32(layout: Layout, group: &[u8], nb: usize, r: usize, out: &mut [f32]) {
    assert!(r < 16 && group.len() >= nb * layout.group_block() && out.len() >= nb * 32);
    // SAFETY: lengths checked; reached only after runtime detection of AVX-512 F/BW (mod.rs).
    unsafe {
        match layout {
            Layout::Q4_0x16 => q4_0x16_row_f32_body(group, nb, r, out),
            Layout::Q8_0x16 => q8_0x16_row_f32_body(group, nb, r, out),
        }
    }
}

/// Row r of a 16-row group: per block, its 16 quant bytes (four dwords 64 bytes apart)
/// gathered into one vector, split into nibbles, x = d * (q - 8) as ggml.
#[target_feature(enable = "avx512f,avx512bw,f16c")]
unsafe fn q4_0x16_row_f32_body(group: &[u8], nb: usize, r: usize, out: &mut [f32]) {
    let gp = group.as_ptr();
    let m4 = _mm_set1_epi8(0x0F);
    let eight = _mm_set1_epi8(8);
    const GROUP_BLOCK: usize = super::q4_0x16::GROUP_BLOCK;
    for b in 0..nb {
        let base = gp.add(b * GROUP_BLOCK);
        let d = _mm512_set1_ps(_mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128((base.add(2 * r) as *const u16).read_unaligned() as i32))));
        let q = _mm_set_epi32(
            (base.add(32 + 192 + 4 * r) as *const i32).read_unaligned(),
            (base.add(32 + 128 + 4 * r) as *const i32).read_unaligned(),
            (base.add(32 + 64 + 4 * r) as *const i32).read_unaligned(),
            (base.add(32 + 4 * r) as *const i32).read_unaligned(),
        );
        let lo = _mm_sub_epi8(_mm_and_si128(q, m4), eight);
        let hi = _mm_sub_epi8(_mm_and_si128(_mm_srli_epi16::<4>(q), m4), eight);
        let o = out.as_mut_ptr().add(b * 32);
        _mm512_storeu_ps(o, _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(lo)), d));
        _mm512_storeu_ps(o.add(16), _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(hi)), d));
    }
}

/// As [`q4_0x16_pass`] for `Q8_0x16`: eight weight vectors per block, already unsigned
/// (q + 128), so the correction is 128 * sum(a).
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,f16c")]
unsafe fn q8_0x16_pass(nb: usize, group: &[u8], acts: &[&[u8]], sums: &[&[i32]], out: &mut [[f32; 16]]) {
    const GROUP_BLOCK: usize = super::q8_0x16::GROUP_BLOCK;
    let bq8 = DType::Q8_0.block_bytes();
    let mut f = [_mm512_setzero_ps(); M_PASS];
    let gp = group.as_ptr();
    for b in 0..nb {
        let base = gp.add(b * GROUP_BLOCK);
        let ahead = base.wrapping_add(8 * GROUP_BLOCK) as *const i8;
        for l in 0..GROUP_BLOCK.div_ceil(64) {
            _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(l * 64));
        }
        let dw = _mm512_cvtph_ps(_mm256_loadu_si256(base as *const __m256i));
        let mut v = [_mm512_setzero_si512(); 8];
        for (i, vi) in v.iter_mut().enumerate() {
            *vi = _mm512_loadu_si512(base.add(32 + 64 * i) as *const _);
        }
        for (j, a) in acts.iter().enumerate() {
            let ab = a.as_ptr().add(b * bq8);
            let q = ab.add(2) as *const i32;
            let mut s = _mm512_setzero_si512();
            for (i, vi) in v.iter().enumerate() {
                s = _mm512_dpbusd_epi32(s, *vi, _mm512_set1_epi32(q.add(i).read_unaligned()));
            }
            s = _mm512_sub_epi32(s, _mm512_set1_epi32(128 * *sums[j].get_unchecked(b)));
            let da = _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128((ab as *const u16).read_unaligned() as i32)));
            f[j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), _mm512_mul_ps(dw, _mm512_set1_ps(da)), f[j]);
        }
    }
    for (j, o) in out.iter_mut().enumerate().take(acts.len()) {
        _mm512_storeu_ps(o.as_mut_ptr(), f[j]);
    }
}

/// Row r of a `Q8_0x16` group: eight dwords 64 bytes apart, back to signed, x = d * q.
#[target_feature(enable = "avx512f,avx512bw,f16c")]
unsafe fn q8_0x16_row_f32_body(group: &[u8], nb: usize, r: usize, out: &mut [f32]) {
    const GROUP_BLOCK: usize = super::q8_0x16::GROUP_BLOCK;
    let gp = group.as_ptr();
    let bias = _mm_set1_epi8(-128);
    for b in 0..nb {
        let base = gp.add(b * GROUP_BLOCK);
        let d = _mm512_set1_ps(_mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128((base.add(2 * r) as *const u16).read_unaligned() as i32))));
        let dw = |i: usize| (base.add(32 + 64 * i + 4 * r) as *const i32).read_unaligned();
        let q0 = _mm_xor_si128(_mm_set_epi32(dw(3), dw(2), dw(1), dw(0)), bias);
        let q1 = _mm_xor_si128(_mm_set_epi32(dw(7), dw(6), dw(5), dw(4)), bias);
        let o = out.as_mut_ptr().add(b * 32);
        _mm512_storeu_ps(o, _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(q0)), d));
        _mm512_storeu_ps(o.add(16), _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(q1)), d));
    }
}
