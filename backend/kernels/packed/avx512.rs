//! AVX-512 VNNI GEMV kernels on the packed layouts.

use super::q4_0x16::GROUP_BLOCK;
use crate::backend::dtype::DType;
use std::arch::x86_64::*;

/// Activation rows per pass (each keeps one accumulator vector).
const M_PASS: usize = 4;
/// Bytes ahead of the current block to prefetch.
const PREFETCH_AHEAD: usize = 8 * GROUP_BLOCK;

/// Checked entry: lengths first, then the SIMD body.
pub fn gemv_q4_0x16(nb: usize, group: &[u8], acts: &[&[u8]], sums: &[&[i32]], out: &mut [[f32; 16]]) {
    let bq8 = DType::Q8_0.block_bytes();
    assert!(group.len() >= nb * GROUP_BLOCK && out.len() >= acts.len() && sums.len() >= acts.len());
    for (a, s) in acts.iter().zip(sums) {
        assert!(a.len() >= nb * bq8 && s.len() >= nb);
    }
    for c in (0..acts.len()).step_by(M_PASS) {
        let e = (c + M_PASS).min(acts.len());
        // SAFETY: lengths checked above; the caller's table reaches this only after
        // runtime detection of AVX-512 F/BW and VNNI (super::gemv_q4_0x16).
        unsafe { q4_0x16_pass(nb, group, &acts[c..e], &sums[c..e], &mut out[c..e]) };
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
