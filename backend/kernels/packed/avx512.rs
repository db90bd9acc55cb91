//! AVX-512 VNNI GEMV kernels on the packed layouts.

use super::{Layout, DECODE_GROUPS};
use crate::dtype::DType;
use std::arch::x86_64::*;

/// Activation rows per pass (each keeps one accumulator vector).
const M_PASS: usize = 4;
/// Bytes ahead of the current block to prefetch.
const PREFETCH_AHEAD: usize = 2304;

/// Checked entry: lengths first, then the SIMD body. `groups` holds `ng` consecutive row
/// groups; `out[gi * m + j]` receives group gi against activation row j.
pub(super) fn gemv(layout: Layout, nb: usize, groups: &[u8], ng: usize, _next: &[u8], acts: &[&[u8]], sums: &[&[i32]], out: &mut [[f32; 16]]) {
    let (ab, m) = (layout.act_type().block_bytes(), acts.len());
    let gbytes = nb * layout.group_block();
    assert!(groups.len() >= ng * gbytes && out.len() >= ng * m);
    let with_sums = layout.act_type() == DType::Q8_0;
    assert!(!with_sums || sums.len() >= m);
    for (i, a) in acts.iter().enumerate() {
        assert!(a.len() >= nb * ab && (!with_sums || sums[i].len() >= nb));
    }
    let group = |gi: usize| &groups[gi * gbytes..(gi + 1) * gbytes];
    let s_all = if with_sums { sums } else { &[][..] };
    // The passes take their row and group counts as constants, so that their accumulators
    // stay in registers.
    macro_rules! pass {
        ($m:literal, $g:expr, $gs:expr, $a:expr, $s:expr, $o:expr) => {
            match layout {
                Layout::Q4_0x16 => q4_0x16_pass::<$m, $g>(nb, &$gs, $a.try_into().unwrap(), $s.try_into().unwrap(), $o),
                Layout::Q4_1x16 => q4_1x16_pass::<$m, $g>(nb, &$gs, $a.try_into().unwrap(), $o),
                Layout::Q8_0x16 => q8_0x16_pass::<$m, $g>(nb, &$gs, $a.try_into().unwrap(), $s.try_into().unwrap(), $o),
                Layout::Q4_Kx16 => q4_kx16_pass::<$m, $g>(nb, &$gs, $a.try_into().unwrap(), $o),
                Layout::Q6_Kx16 => q6_kx16_pass::<$m, $g>(nb, &$gs, $a.try_into().unwrap(), $o),
            }
        };
    }
    // SAFETY (every pass below): lengths checked above; reached only after runtime detection
    // of AVX-512 F/BW and VNNI (super::gemv).
    if m == 1 && ng == DECODE_GROUPS {
        let gs: [&[u8]; DECODE_GROUPS] = std::array::from_fn(group);
        let s1: &[&[i32]] = if with_sums { &s_all[..1] } else { &[&[]] };
        unsafe { pass!(1, DECODE_GROUPS, gs, acts, s1, out) };
        return;
    }
    for gi in 0..ng {
        let g = [group(gi)];
        for c in (0..m).step_by(M_PASS) {
            let e = (c + M_PASS).min(m);
            let (a, o) = (&acts[c..e], &mut out[gi * m + c..gi * m + e]);
            let s = if with_sums { &s_all[c..e] } else { &[&[][..]; M_PASS][..e - c] };
            unsafe {
                match e - c {
                    1 => pass!(1, 1, g, a, s, o),
                    2 => pass!(2, 1, g, a, s, o),
                    3 => pass!(3, 1, g, a, s, o),
                    _ => pass!(4, 1, g, a, s, o),
                }
            }
        }
    }
}

/// Prefetches the `bytes` from `at` (the hardware prefetcher alone leaves DRAM idle between
/// blocks when one row group streams per pass).
#[inline(always)]
unsafe fn prefetch(at: *const u8, bytes: usize) {
    let at = at as *const i8;
    // SAFETY: `_mm_prefetch` is only a hint and never faults, whatever the address
    // (`wrapping_add` keeps the arithmetic defined); SSE is baseline on x86_64.
    unsafe {
        for l in 0..bytes.div_ceil(64) {
            _mm_prefetch::<_MM_HINT_T0>(at.wrapping_add(l * 64));
        }
    }
}

/// Prefetches quarter `q` (0..4) of the group block after the one at `base`. The large
/// K-quant blocks prefetch a quarter per quarter of their compute: one burst per block (36
/// to 53 lines) fills the core's line-fill buffers and stalls the compute behind it
/// (measured: Q4_K 15-18 GB/s with bursts, 17-20 spread; Q6_K 13-14 and 16-21).
#[inline(always)]
unsafe fn prefetch_next_quarter(base: *const u8, gb: usize, q: usize) {
    // SAFETY: as `prefetch`: a hint that never faults.
    unsafe {
        prefetch(base.wrapping_add(gb + q * gb / 4), gb / 4)
    }
}

/// The passes' accumulators out: group gi against activation row j to `out[gi * M + j]`.
#[inline(always)]
unsafe fn store_groups<const M: usize, const G: usize>(f: &[[__m512; M]; G], out: &mut [[f32; 16]]) {
    // SAFETY: the callers (the passes) enable AVX-512F; each store writes exactly the 16 floats
    // of the row `out[gi * M + j]`, an indexed, bounds-checked row.
    unsafe {
        for (gi, fg) in f.iter().enumerate() {
            for (j, v) in fg.iter().enumerate() {
                _mm512_storeu_ps(out[gi * M + j].as_mut_ptr(), *v);
            }
        }
    }
}

/// The fp16 at `p` as f32.
#[inline(always)]
unsafe fn f16_at(p: *const u8) -> f32 {
    // SAFETY: the callers enable F16C and pass 2 readable bytes (an fp16 inside a checked
    // block); the read is unaligned.
    unsafe {
        _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128((p as *const u16).read_unaligned() as i32)))
    }
}

/// Byte `i` (0..4) of every 32-bit lane, zero-extended.
#[inline(always)]
unsafe fn lane_u8(v: __m512i, i: usize) -> __m512i {
    // SAFETY: the callers (the passes) enable AVX-512F; register-only intrinsics.
    unsafe {
        let m = _mm512_set1_epi32(0xFF);
        match i {
            0 => _mm512_and_si512(v, m),
            1 => _mm512_and_si512(_mm512_srli_epi32::<8>(v), m),
            2 => _mm512_and_si512(_mm512_srli_epi32::<16>(v), m),
            _ => _mm512_srli_epi32::<24>(v),
        }
    }
}

/// Byte `i` (0..4) of every 32-bit lane, sign-extended.
#[inline(always)]
unsafe fn lane_i8(v: __m512i, i: usize) -> __m512i {
    // SAFETY: the callers (the passes) enable AVX-512F; register-only intrinsics.
    unsafe {
        match i {
            0 => _mm512_srai_epi32::<24>(_mm512_slli_epi32::<24>(v)),
            1 => _mm512_srai_epi32::<24>(_mm512_slli_epi32::<16>(v)),
            2 => _mm512_srai_epi32::<24>(_mm512_slli_epi32::<8>(v)),
            _ => _mm512_srai_epi32::<24>(v),
        }
    }
}

/// Four activation bytes at `p` in every lane.
#[inline(always)]
unsafe fn bcast4(p: *const u8) -> __m512i {
    // SAFETY: the callers enable AVX-512F and pass 4 readable bytes inside a checked activation
    // block; the read is unaligned.
    unsafe {
        _mm512_set1_epi32((p as *const i32).read_unaligned())
    }
}

/// Offsets in a Q8_K block: f32 scale, 256 quants, 16 int16 sums of 16 quants.
const Q8K_QS: usize = 4;
const Q8K_BSUMS: usize = 260;

/// Up to M_PASS Q8_K activation rows against one `Q4_Kx16` group. Per super-block: the
/// 6-bit scales and minimums of the 16 rows are decoded in-lane (ggml's `utmp` shuffle, one
/// row per lane); per 32-k sub-block, a VNNI dot of the unsigned nibbles gives each row's
/// int32 sum, times its scale; the minimums meet the activations' sub-block sums in a
/// 16-bit multiply-add. x = d * sc * q - dmin * m, as ggml.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,f16c")]
unsafe fn q4_kx16_pass<const M: usize, const G: usize>(nb: usize, groups: &[&[u8]; G], acts: &[&[u8]; M], out: &mut [[f32; 16]]) {
    const GB: usize = Layout::Q4_Kx16.group_block();
    const QS: usize = 64 + 3 * 64;
    let bq8 = DType::Q8_K.block_bytes();
    let m4 = _mm512_set1_epi8(0x0F);
    let (k1, k2, k3) = (_mm512_set1_epi32(0x3f3f3f3f), _mm512_set1_epi32(0x0f0f0f0f), _mm512_set1_epi32(0x03030303));
    let even = _mm512_set1_epi32(0x00FF00FF);
    let mut f = [[_mm512_setzero_ps(); M]; G];
    // SAFETY: reached only through `gemv` above, which `avx512_kernels()` hands out once
    // `quant::avx512::detected()` checked this fn's features (AVX-512 F/BW/VNNI, F16C); `gemv`
    // checked every group holds nb group blocks and every activation row nb blocks (for Q8_0
    // also nb sums), so each load stays within them; prefetches never fault.
    unsafe {
        for b in 0..nb {
            for (gi, g) in groups.iter().enumerate() {
                let base = g.as_ptr().add(b * GB);
                let dw = _mm512_cvtph_ps(_mm256_loadu_si256(base as *const __m256i));
                let dm = _mm512_cvtph_ps(_mm256_loadu_si256(base.add(32) as *const __m256i));
                let w0 = _mm512_loadu_si512(base.add(64) as *const _);
                let w1 = _mm512_loadu_si512(base.add(128) as *const _);
                let w2 = _mm512_loadu_si512(base.add(192) as *const _);
                let high2 = |w: __m512i| _mm512_slli_epi32::<4>(_mm512_and_si512(_mm512_srli_epi32::<6>(w), k3));
                // Bytes of each lane: scales 0..4, 4..8; minimums 0..4, 4..8.
                let sc = [_mm512_and_si512(w0, k1), _mm512_or_si512(_mm512_and_si512(w2, k2), high2(w0))];
                let mn = [_mm512_and_si512(w1, k1), _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi32::<4>(w2), k2), high2(w1))];
                // Minimums as int16 pairs: (m0, m2), (m1, m3), (m4, m6), (m5, m7).
                let mp = [
                    _mm512_and_si512(mn[0], even),
                    _mm512_and_si512(_mm512_srli_epi32::<8>(mn[0]), even),
                    _mm512_and_si512(mn[1], even),
                    _mm512_and_si512(_mm512_srli_epi32::<8>(mn[1]), even),
                ];
                let mut isum = [_mm512_setzero_si512(); M];
                for c in 0..4 {
                    prefetch_next_quarter(base, GB, c);
                    let (s_lo, s_hi) = (lane_u8(sc[c / 2], 2 * (c % 2)), lane_u8(sc[c / 2], 2 * (c % 2) + 1));
                    // Two accumulators per sub-block halve the VNNI dependency chains; the nibbles
                    // are split as they are loaded (no arrays: they would live on the stack).
                    let mut al = [[_mm512_setzero_si512(); 2]; M];
                    let mut ah = [[_mm512_setzero_si512(); 2]; M];
                    for i in 0..8 {
                        let v = _mm512_loadu_si512(base.add(QS + 64 * (8 * c + i)) as *const _);
                        let lo = _mm512_and_si512(v, m4);
                        let hi = _mm512_and_si512(_mm512_srli_epi16::<4>(v), m4);
                        for (j, a) in acts.iter().enumerate() {
                            let q = a.as_ptr().add(b * bq8 + Q8K_QS + 64 * c);
                            al[j][i % 2] = _mm512_dpbusd_epi32(al[j][i % 2], lo, bcast4(q.add(4 * i)));
                            ah[j][i % 2] = _mm512_dpbusd_epi32(ah[j][i % 2], hi, bcast4(q.add(32 + 4 * i)));
                        }
                    }
                    for j in 0..M {
                        let (l, h) = (_mm512_add_epi32(al[j][0], al[j][1]), _mm512_add_epi32(ah[j][0], ah[j][1]));
                        isum[j] = _mm512_add_epi32(isum[j], _mm512_add_epi32(_mm512_mullo_epi32(l, s_lo), _mm512_mullo_epi32(h, s_hi)));
                    }
                }
                for (j, a) in acts.iter().enumerate() {
                    let ab = a.as_ptr().add(b * bq8);
                    let bs = ab.add(Q8K_BSUMS) as *const i16;
                    // Sub-block s sums 32 quants: two of ggml's 16-quant sums (|sum| <= 4096, int16).
                    let s = |i: usize| (bs.add(2 * i).read_unaligned() as i32 + bs.add(2 * i + 1).read_unaligned() as i32) as u16 as u32;
                    let pair = |x: usize, y: usize| _mm512_set1_epi32((s(x) | (s(y) << 16)) as i32);
                    let msum = _mm512_add_epi32(
                        _mm512_add_epi32(_mm512_madd_epi16(mp[0], pair(0, 2)), _mm512_madd_epi16(mp[1], pair(1, 3))),
                        _mm512_add_epi32(_mm512_madd_epi16(mp[2], pair(4, 6)), _mm512_madd_epi16(mp[3], pair(5, 7))),
                    );
                    let da = _mm512_set1_ps((ab as *const f32).read_unaligned());
                    f[gi][j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum[j]), _mm512_mul_ps(dw, da), f[gi][j]);
                    f[gi][j] = _mm512_fnmadd_ps(_mm512_cvtepi32_ps(msum), _mm512_mul_ps(dm, da), f[gi][j]);
                }
            }
        }
        store_groups(&f, out);
    }
}

/// Up to M_PASS Q8_K activation rows against one `Q6_Kx16` group. Per 16-k sub-block and
/// output quarter, the 6-bit quants are rebuilt from `ql` nibbles and `qh` pairs with
/// bit selects (unsigned, q + 32), dotted by VNNI, corrected by 32 * the activations'
/// sub-block sum and multiplied by the row's signed scale; x = d * sc * (q - 32), as ggml.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,f16c")]
unsafe fn q6_kx16_pass<const M: usize, const G: usize>(nb: usize, groups: &[&[u8]; G], acts: &[&[u8]; M], out: &mut [[f32; 16]]) {
    const GB: usize = Layout::Q6_Kx16.group_block();
    const QL: usize = 32;
    const QH: usize = 32 + 32 * 64;
    const SC: usize = 32 + 48 * 64;
    // Bit select (a ? b : c) for vpternlogd.
    const SELECT: i32 = 0xCA;
    let bq8 = DType::Q8_K.block_bytes();
    let m4 = _mm512_set1_epi8(0x0F);
    let m33 = _mm512_set1_epi8(0x33);
    let mut f = [[_mm512_setzero_ps(); M]; G];
    // SAFETY: reached only through `gemv` above, which `avx512_kernels()` hands out once
    // `quant::avx512::detected()` checked this fn's features (AVX-512 F/BW/VNNI, F16C); `gemv`
    // checked every group holds nb group blocks and every activation row nb blocks (for Q8_0
    // also nb sums), so each load stays within them; prefetches never fault.
    unsafe {
        for b in 0..nb {
            for (gi, g) in groups.iter().enumerate() {
                let base = g.as_ptr().add(b * GB);
                let dw = _mm512_cvtph_ps(_mm256_loadu_si256(base as *const __m256i));
                let ld = |at: usize| _mm512_loadu_si512(base.add(at) as *const _);
                let mut isum = [_mm512_setzero_si512(); M];
                for h in 0..2 {
                    for is in 0..2 {
                        prefetch_next_quarter(base, GB, 2 * h + is);
                        // Quarter t of half h: elements 128 h + 32 t + l, l in 16 is .. 16 is + 16.
                        for t in 0..4 {
                            let mut acc = [_mm512_setzero_si512(); M];
                            for step in 0..4 {
                                let ls = 4 * is + step;
                                let l4 = ld(QL + 64 * (16 * h + 8 * (t % 2) + ls));
                                let hb = ld(QH + 64 * (8 * h + ls));
                                // ql low nibbles for t < 2, high for t >= 2; qh bits 2t, 2t + 1.
                                let pair = if t % 2 == 0 { _mm512_and_si512(hb, m33) } else { _mm512_and_si512(_mm512_srli_epi16::<2>(hb), m33) };
                                let q = if t < 2 {
                                    _mm512_ternarylogic_epi32::<SELECT>(m4, l4, _mm512_slli_epi16::<4>(pair))
                                } else {
                                    _mm512_ternarylogic_epi32::<SELECT>(m4, _mm512_srli_epi16::<4>(l4), pair)
                                };
                                for (j, a) in acts.iter().enumerate() {
                                    let qa = a.as_ptr().add(b * bq8 + Q8K_QS + 128 * h + 32 * t + 4 * ls);
                                    acc[j] = _mm512_dpbusd_epi32(acc[j], q, bcast4(qa));
                                }
                            }
                            let sub = 8 * h + 2 * t + is;
                            let scale = lane_i8(ld(SC + 64 * (sub / 4)), sub % 4);
                            for (j, a) in acts.iter().enumerate() {
                                let bsum = (a.as_ptr().add(b * bq8 + Q8K_BSUMS + 2 * sub) as *const i16).read_unaligned() as i32;
                                let centred = _mm512_sub_epi32(acc[j], _mm512_set1_epi32(32 * bsum));
                                isum[j] = _mm512_add_epi32(isum[j], _mm512_mullo_epi32(centred, scale));
                            }
                        }
                    }
                }
                for (j, a) in acts.iter().enumerate() {
                    let da = _mm512_set1_ps((a.as_ptr().add(b * bq8) as *const f32).read_unaligned());
                    f[gi][j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum[j]), _mm512_mul_ps(dw, da), f[gi][j]);
                }
            }
        }
        store_groups(&f, out);
    }
}

/// The four 64-byte nibble vectors of a `Q4_0x16` / `Q4_1x16` group block at `at`, split
/// into low (k = 4i ..) and high (k = 16 + 4i ..) nibbles, unsigned.
#[inline(always)]
unsafe fn nibble_vectors(at: *const u8) -> ([__m512i; 4], [__m512i; 4]) {
    // SAFETY: the callers (the passes) enable AVX-512 F/BW and pass a group block with four
    // readable 64-byte vectors at `at`; the loads are unaligned.
    unsafe {
        let m4 = _mm512_set1_epi8(0x0F);
        let mut lo = [_mm512_setzero_si512(); 4];
        let mut hi = [_mm512_setzero_si512(); 4];
        for i in 0..4 {
            let v = _mm512_loadu_si512(at.add(64 * i) as *const _);
            lo[i] = _mm512_and_si512(v, m4);
            hi[i] = _mm512_and_si512(_mm512_srli_epi16::<4>(v), m4);
        }
        (lo, hi)
    }
}

/// 16 rows' int32 dots of unsigned nibbles with one block's 32 activation quants at `q`.
#[inline(always)]
unsafe fn nibble_dots(lo: &[__m512i; 4], hi: &[__m512i; 4], q: *const i32) -> __m512i {
    // SAFETY: the callers (the passes) enable AVX-512 F/VNNI and pass one block's 8 readable
    // i32 at `q`; the reads are unaligned.
    unsafe {
        let mut s = _mm512_setzero_si512();
        for i in 0..4 {
            s = _mm512_dpbusd_epi32(s, lo[i], _mm512_set1_epi32(q.add(i).read_unaligned()));
            s = _mm512_dpbusd_epi32(s, hi[i], _mm512_set1_epi32(q.add(4 + i).read_unaligned()));
        }
        s
    }
}

/// Up to M_PASS activation rows against one 16-row group: per block, the four weight vectors
/// are split into low and high nibbles once and dotted with each row's broadcast quants.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,f16c")]
unsafe fn q4_0x16_pass<const M: usize, const G: usize>(nb: usize, groups: &[&[u8]; G], acts: &[&[u8]; M], sums: &[&[i32]; M], out: &mut [[f32; 16]]) {
    let bq8 = DType::Q8_0.block_bytes();
    let mut f = [[_mm512_setzero_ps(); M]; G];
    const GROUP_BLOCK: usize = Layout::Q4_0x16.group_block();
    // SAFETY: reached only through `gemv` above, which `avx512_kernels()` hands out once
    // `quant::avx512::detected()` checked this fn's features (AVX-512 F/BW/VNNI, F16C); `gemv`
    // checked every group holds nb group blocks and every activation row nb blocks (for Q8_0
    // also nb sums), so each load stays within them; prefetches never fault.
    unsafe {
        for b in 0..nb {
            for (gi, g) in groups.iter().enumerate() {
                let base = g.as_ptr().add(b * GROUP_BLOCK);
                // Stream ahead of the hardware prefetcher (DRAM-bound with one row group per pass).
                prefetch(base.wrapping_add(PREFETCH_AHEAD), GROUP_BLOCK);
                let dw = _mm512_cvtph_ps(_mm256_loadu_si256(base as *const __m256i));
                let (lo, hi) = nibble_vectors(base.add(32));
                for (j, a) in acts.iter().enumerate() {
                    let ab = a.as_ptr().add(b * bq8);
                    let mut s = nibble_dots(&lo, &hi, ab.add(2) as *const i32);
                    // The nibbles went in unsigned: subtract 8 * sum(a) for q - 8.
                    s = _mm512_sub_epi32(s, _mm512_set1_epi32(8 * *sums[j].get_unchecked(b)));
                    let da = f16_at(ab);
                    f[gi][j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), _mm512_mul_ps(dw, _mm512_set1_ps(da)), f[gi][j]);
                }
            }
        }
        store_groups(&f, out);
    }
}

/// Checked entry of the row dequantizers (Q4_0 and Q8_0; the other layouts take the portable
/// reader, which gives the same bits).
pub(super) fn row_to_f32(layout: Layout, group: &[u8], nb: usize, r: usize, out: &mut [f32]) {
    if !matches!(layout, Layout::Q4_0x16 | Layout::Q8_0x16) {
        return super::row_to_f32_scalar(layout, group, nb, r, out);
    }
    assert!(r < 16 && group.len() >= nb * layout.group_block() && out.len() >= nb * 32);
    // SAFETY: lengths checked; reached only after runtime detection of AVX-512 F/BW (mod.rs).
    unsafe {
        match layout {
            Layout::Q4_0x16 => q4_0x16_row_f32_body(group, nb, r, out),
            Layout::Q8_0x16 => q8_0x16_row_f32_body(group, nb, r, out),
            _ => unreachable!("no AVX-512 row dequantizer for {layout:?}"),
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
    const GROUP_BLOCK: usize = Layout::Q4_0x16.group_block();
    // SAFETY: reached only through `row_to_f32` above, after runtime detection of this fn's
    // features (AVX-512 F/BW, F16C; mod.rs); it checked r < 16, the group holds nb group blocks
    // and out nb * 32 floats, so every load and store stays within them.
    unsafe {
        for b in 0..nb {
            let base = gp.add(b * GROUP_BLOCK);
            let d = _mm512_set1_ps(f16_at(base.add(2 * r)));
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
}

/// As [`q4_0x16_pass`] for `Q4_1x16` against Q8_1 activations: the nibbles are the values
/// (no offset), and each block adds its minimum times the activations' scaled sum. Per
/// block, in the order of ggml-cpu's AMX and VNNI kernels (so results are bit-identical):
/// f = fma(isum, d_w * d_a, f), then f = fma(m_w, s_a, f).
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,f16c")]
unsafe fn q4_1x16_pass<const M: usize, const G: usize>(nb: usize, groups: &[&[u8]; G], acts: &[&[u8]; M], out: &mut [[f32; 16]]) {
    let bq8 = DType::Q8_1.block_bytes();
    let mut f = [[_mm512_setzero_ps(); M]; G];
    const GROUP_BLOCK: usize = Layout::Q4_1x16.group_block();
    // SAFETY: reached only through `gemv` above, which `avx512_kernels()` hands out once
    // `quant::avx512::detected()` checked this fn's features (AVX-512 F/BW/VNNI, F16C); `gemv`
    // checked every group holds nb group blocks and every activation row nb blocks (for Q8_0
    // also nb sums), so each load stays within them; prefetches never fault.
    unsafe {
        for b in 0..nb {
            for (gi, g) in groups.iter().enumerate() {
                let base = g.as_ptr().add(b * GROUP_BLOCK);
                prefetch(base.wrapping_add(PREFETCH_AHEAD), GROUP_BLOCK);
                let dw = _mm512_cvtph_ps(_mm256_loadu_si256(base as *const __m256i));
                let mw = _mm512_cvtph_ps(_mm256_loadu_si256(base.add(32) as *const __m256i));
                let (lo, hi) = nibble_vectors(base.add(64));
                for (j, a) in acts.iter().enumerate() {
                    let ab = a.as_ptr().add(b * bq8);
                    let s = nibble_dots(&lo, &hi, ab.add(4) as *const i32);
                    let (da, sa) = (f16_at(ab), f16_at(ab.add(2)));
                    f[gi][j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), _mm512_mul_ps(dw, _mm512_set1_ps(da)), f[gi][j]);
                    f[gi][j] = _mm512_fmadd_ps(mw, _mm512_set1_ps(sa), f[gi][j]);
                }
            }
        }
        store_groups(&f, out);
    }
}

/// As [`q4_0x16_pass`] for `Q8_0x16`: eight weight vectors per block, already unsigned
/// (q + 128), so the correction is 128 * sum(a).
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,f16c")]
unsafe fn q8_0x16_pass<const M: usize, const G: usize>(nb: usize, groups: &[&[u8]; G], acts: &[&[u8]; M], sums: &[&[i32]; M], out: &mut [[f32; 16]]) {
    const GROUP_BLOCK: usize = Layout::Q8_0x16.group_block();
    let bq8 = DType::Q8_0.block_bytes();
    let mut f = [[_mm512_setzero_ps(); M]; G];
    // SAFETY: reached only through `gemv` above, which `avx512_kernels()` hands out once
    // `quant::avx512::detected()` checked this fn's features (AVX-512 F/BW/VNNI, F16C); `gemv`
    // checked every group holds nb group blocks and every activation row nb blocks (for Q8_0
    // also nb sums), so each load stays within them; prefetches never fault.
    unsafe {
        for b in 0..nb {
            for (gi, g) in groups.iter().enumerate() {
                let base = g.as_ptr().add(b * GROUP_BLOCK);
                prefetch(base.wrapping_add(8 * GROUP_BLOCK), GROUP_BLOCK);
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
                    let da = f16_at(ab);
                    f[gi][j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), _mm512_mul_ps(dw, _mm512_set1_ps(da)), f[gi][j]);
                }
            }
        }
        store_groups(&f, out);
    }
}

/// Row r of a `Q8_0x16` group: eight dwords 64 bytes apart, back to signed, x = d * q.
#[target_feature(enable = "avx512f,avx512bw,f16c")]
unsafe fn q8_0x16_row_f32_body(group: &[u8], nb: usize, r: usize, out: &mut [f32]) {
    const GROUP_BLOCK: usize = Layout::Q8_0x16.group_block();
    let gp = group.as_ptr();
    let bias = _mm_set1_epi8(-128);
    // SAFETY: reached only through `row_to_f32` above, after runtime detection of this fn's
    // features (AVX-512 F/BW, F16C; mod.rs); it checked r < 16, the group holds nb group blocks
    // and out nb * 32 floats, so every load and store stays within them.
    unsafe {
        for b in 0..nb {
            let base = gp.add(b * GROUP_BLOCK);
            let d = _mm512_set1_ps(f16_at(base.add(2 * r)));
            let dw = |i: usize| (base.add(32 + 64 * i + 4 * r) as *const i32).read_unaligned();
            let q0 = _mm_xor_si128(_mm_set_epi32(dw(3), dw(2), dw(1), dw(0)), bias);
            let q1 = _mm_xor_si128(_mm_set_epi32(dw(7), dw(6), dw(5), dw(4)), bias);
            let o = out.as_mut_ptr().add(b * 32);
            _mm512_storeu_ps(o, _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(q0)), d));
            _mm512_storeu_ps(o.add(16), _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(q1)), d));
        }
    }
}
