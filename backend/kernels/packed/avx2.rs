//! AVX2 GEMV kernels on the packed layouts, for x86-64 CPUs without AVX-512 (AMD Zen 2/3,
//! older Intel): the same layouts as the AVX-512 tier, each 64-byte vector of 16 rows taken
//! as two 32-byte halves of 8 rows. VNNI's 4-byte dot is `vpmaddubsw` (unsigned weights
//! times signed activations, int16 pairs) then `vpmaddwd` by ones (int32 per row), with the
//! int16 sums kept below 2^15 by how many products each one collects (noted per kernel).

use super::{Layout, DECODE_GROUPS};
use crate::dtype::DType;
use std::arch::x86_64::*;

/// Activation rows per pass (each keeps two accumulator vectors, one per half).
const M_PASS: usize = 4;
/// Bytes ahead of the current block to prefetch.
const PREFETCH_AHEAD: usize = 2304;

/// Whether this CPU runs the tier: the kernel table's AVX2 detection (AVX2, FMA, F16C).
pub use crate::kernels::quant::avx2::detected;

/// Checked entry, as the AVX-512 tier's: lengths first, then the SIMD body. `groups` holds
/// `ng` consecutive row groups; `out[gi * m + j]` receives group gi against activation row j.
/// Panics if the CPU lacks the tier (see [`detected`]).
pub(super) fn gemv(layout: Layout, nb: usize, groups: &[u8], ng: usize, next: &[u8], acts: &[&[u8]], sums: &[&[i32]], out: &mut [[f32; 16]]) {
    assert!(detected(), "AVX2 GEMV on a CPU without AVX2, FMA and F16C");
    let (ab, m) = (layout.act_type().block_bytes(), acts.len());
    let gbytes = nb * layout.group_block();
    assert!(groups.len() >= ng * gbytes && out.len() >= ng * m);
    // Q4_0 takes the activations' per-block quant sums (for the nibbles' offset of 8).
    let with_sums = layout == Layout::Q4_0x16;
    assert!(!with_sums || sums.len() >= m);
    for (i, a) in acts.iter().enumerate() {
        assert!(a.len() >= nb * ab && (!with_sums || sums[i].len() >= nb));
    }
    let group = |gi: usize| &groups[gi * gbytes..(gi + 1) * gbytes];
    // Group gi of what the caller runs next (empty where there is none).
    let next_group = |gi: usize| next.get(gi * gbytes..(gi + 1) * gbytes).unwrap_or(&[]);
    let s_all = if with_sums { sums } else { &[][..] };
    macro_rules! pass {
        ($m:literal, $g:expr, $gs:expr, $ns:expr, $a:expr, $s:expr, $o:expr) => {
            match layout {
                Layout::Q4_0x16 => q4_0x16_pass::<$m, $g>(nb, Streams { groups: &$gs, next: $ns }, $a.try_into().unwrap(), $s.try_into().unwrap(), $o),
                Layout::Q4_1x16 => legacy_pass::<$m, $g>(Legacy::Q4_1, nb, &$gs, $a.try_into().unwrap(), $s, $o),
                Layout::Q8_0x16 => legacy_pass::<$m, $g>(Legacy::Q8_0, nb, &$gs, $a.try_into().unwrap(), $s, $o),
                Layout::Q4_Kx16 => q4_kx16_pass::<$m, $g>(nb, Streams { groups: &$gs, next: $ns }, $a.try_into().unwrap(), $o),
                Layout::Q6_Kx16 if $m == 1 => q6_kx16_row::<$g>(nb, Streams { groups: &$gs, next: $ns }, $a[0], $o),
                Layout::Q6_Kx16 => q6_kx16_pass::<$m, $g>(nb, Streams { groups: &$gs, next: $ns }, $a.try_into().unwrap(), $o),
            }
        };
    }
    // SAFETY (every pass below): lengths checked above; AVX2, FMA and F16C detected above.
    if m == 1 && ng == DECODE_GROUPS {
        let gs: [&[u8]; DECODE_GROUPS] = std::array::from_fn(group);
        let ns: [&[u8]; DECODE_GROUPS] = std::array::from_fn(next_group);
        let s1: &[&[i32]] = if with_sums { &s_all[..1] } else { &[&[]] };
        unsafe { pass!(1, DECODE_GROUPS, gs, ns, acts, s1, out) };
        return;
    }
    for gi in 0..ng {
        let g = [group(gi)];
        // One group at a time: the next is the following one here, then the caller's first.
        let ns = [if gi + 1 < ng { group(gi + 1) } else { next_group(0) }];
        for c in (0..m).step_by(M_PASS) {
            let e = (c + M_PASS).min(m);
            let (a, o) = (&acts[c..e], &mut out[gi * m + c..gi * m + e]);
            let s = if with_sums { &s_all[c..e] } else { &[&[][..]; M_PASS][..e - c] };
            unsafe {
                match e - c {
                    1 => pass!(1, 1, g, ns, a, s, o),
                    2 => pass!(2, 1, g, ns, a, s, o),
                    3 => pass!(3, 1, g, ns, a, s, o),
                    _ => pass!(4, 1, g, ns, a, s, o),
                }
            }
        }
    }
}

/// Prefetches the `bytes` from `at` (prefetches never fault, so `at` may lie past the end).
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

/// A pass's group streams and, per group, the one its thread reads next (empty where the
/// caller named none), where the pass's prefetches continue past the group's end.
#[derive(Clone, Copy)]
struct Streams<'a, const G: usize> {
    groups: &'a [&'a [u8]; G],
    next: [&'a [u8]; G],
}

impl<const G: usize> Streams<'_, G> {
    /// Prefetches `bytes` from byte `at` of group gi's stream: inside the group, or that far
    /// past its end into its next group, or nothing.
    #[inline(always)]
    unsafe fn prefetch(&self, gi: usize, at: usize, bytes: usize) {
        let (g, n) = (self.groups[gi], self.next[gi]);
        // SAFETY: `prefetch` never faults; the addresses are formed with wrapping arithmetic.
        unsafe {
            if at < g.len() {
                prefetch(g.as_ptr().wrapping_add(at), bytes);
            } else if at - g.len() < n.len() {
                prefetch(n.as_ptr().wrapping_add(at - g.len()), bytes);
            }
        }
    }
}

/// The accumulators out: half h of group gi against activation row j to rows 8h .. 8h + 8
/// of `out[gi * M + j]`.
#[inline(always)]
unsafe fn store_groups<const M: usize, const G: usize>(f: &[[[__m256; 2]; M]; G], out: &mut [[f32; 16]]) {
    // SAFETY: the callers (the passes) enable AVX2; each store writes 8 floats into a half of
    // the row `out[gi * M + j]`, an indexed, bounds-checked 16-float row.
    unsafe {
        for (gi, fg) in f.iter().enumerate() {
            for (j, v) in fg.iter().enumerate() {
                _mm256_storeu_ps(out[gi * M + j].as_mut_ptr(), v[0]);
                _mm256_storeu_ps(out[gi * M + j].as_mut_ptr().add(8), v[1]);
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

/// Eight fp16 at `p` as f32.
#[inline(always)]
unsafe fn f16x8(p: *const u8) -> __m256 {
    // SAFETY: the callers enable AVX2 and F16C and pass 16 readable bytes (8 fp16 inside a
    // checked group block); the load is unaligned.
    unsafe {
        _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i))
    }
}

/// 32 bytes at `p`.
#[inline(always)]
unsafe fn ld(p: *const u8) -> __m256i {
    // SAFETY: the callers enable AVX2 and pass 32 readable bytes inside a checked group block;
    // the load is unaligned.
    unsafe {
        _mm256_loadu_si256(p as *const __m256i)
    }
}

/// Four activation bytes at `p` in every lane.
#[inline(always)]
unsafe fn bcast4(p: *const u8) -> __m256i {
    // SAFETY: the callers enable AVX2 and pass 4 readable bytes inside a checked activation
    // block; the read is unaligned.
    unsafe {
        _mm256_set1_epi32((p as *const i32).read_unaligned())
    }
}

/// Per lane, the int16 pair sums of unsigned `w` bytes times signed `a` bytes.
#[inline(always)]
unsafe fn dot16(w: __m256i, a: __m256i) -> __m256i {
    // SAFETY: the callers (the passes) enable AVX2; register-only intrinsic.
    unsafe {
        _mm256_maddubs_epi16(w, a)
    }
}

/// Per lane, the int32 sum of its two int16 halves.
#[inline(always)]
unsafe fn widen(s16: __m256i) -> __m256i {
    // SAFETY: the callers (the passes) enable AVX2; register-only intrinsics.
    unsafe {
        _mm256_madd_epi16(s16, _mm256_set1_epi16(1))
    }
}

/// Byte `i` (0..4) of every 32-bit lane, zero-extended.
#[inline(always)]
unsafe fn lane_u8(v: __m256i, i: usize) -> __m256i {
    // SAFETY: the callers (the passes) enable AVX2; register-only intrinsics.
    unsafe {
        let m = _mm256_set1_epi32(0xFF);
        match i {
            0 => _mm256_and_si256(v, m),
            1 => _mm256_and_si256(_mm256_srli_epi32::<8>(v), m),
            2 => _mm256_and_si256(_mm256_srli_epi32::<16>(v), m),
            _ => _mm256_srli_epi32::<24>(v),
        }
    }
}

/// Byte `i` (0..4) of every 32-bit lane, sign-extended.
#[inline(always)]
unsafe fn lane_i8(v: __m256i, i: usize) -> __m256i {
    // SAFETY: the callers (the passes) enable AVX2; register-only intrinsics.
    unsafe {
        match i {
            0 => _mm256_srai_epi32::<24>(_mm256_slli_epi32::<24>(v)),
            1 => _mm256_srai_epi32::<24>(_mm256_slli_epi32::<16>(v)),
            2 => _mm256_srai_epi32::<24>(_mm256_slli_epi32::<8>(v)),
            _ => _mm256_srai_epi32::<24>(v),
        }
    }
}

/// Offsets in a Q8_K block: f32 scale, 256 quants, 16 int16 sums of 16 quants.
const Q8K_QS: usize = 4;
const Q8K_BSUMS: usize = 260;

/// 8 rows' int32 dots of one 32-k block of unsigned nibbles (as [`nibbles_of`] splits a
/// group block half: low nibbles k = 4i .., high k = 16 + 4i ..) with the 32 activation
/// quants at `q`. Each int16 collects 16 products of at most 15 x 128: below 2^15.
#[inline(always)]
unsafe fn nibble_block_dot(n: &([__m256i; 4], [__m256i; 4]), q: *const u8) -> __m256i {
    // SAFETY: the callers (the passes) enable AVX2 and pass, at `q`, one activation block's
    // 32 readable quants; the reads are unaligned.
    unsafe {
        let mut s = _mm256_setzero_si256();
        for i in 0..4 {
            s = _mm256_add_epi16(s, dot16(n.0[i], bcast4(q.add(4 * i))));
            s = _mm256_add_epi16(s, dot16(n.1[i], bcast4(q.add(16 + 4 * i))));
        }
        widen(s)
    }
}

/// The unsigned low and high nibbles of a group block half's four 32-byte vectors (at `at`,
/// 64 bytes apart).
#[inline(always)]
unsafe fn nibbles_of(at: *const u8) -> ([__m256i; 4], [__m256i; 4]) {
    // SAFETY: the callers (the passes) enable AVX2 and pass a group block's four 32-byte
    // halves 64 bytes apart; the loads are unaligned.
    unsafe {
        let m4 = _mm256_set1_epi8(0x0F);
        let v: [__m256i; 4] = std::array::from_fn(|i| ld(at.add(64 * i)));
        (v.map(|v| _mm256_and_si256(v, m4)), v.map(|v| _mm256_and_si256(_mm256_srli_epi16::<4>(v), m4)))
    }
}

/// Up to M_PASS Q8_0 activation rows against `Q4_0x16` groups in the AVX-512 tier's order
/// (one int32 sum per block, f = fma(isum, d_w * d_a, f)): unsigned nibbles dotted, then 8 *
/// sum(a) subtracted for q - 8. Stock repacks Q4_0 on AVX2 CPUs (its 8x8 interleave, yet
/// another order), so ggml's per-row lane order would buy no bit-identity here, only cost:
/// one scaling per block instead of eight.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q4_0x16_pass<const M: usize, const G: usize>(nb: usize, st: Streams<G>, acts: &[&[u8]; M], sums: &[&[i32]; M], out: &mut [[f32; 16]]) {
    const GB: usize = Layout::Q4_0x16.group_block();
    let bq8 = DType::Q8_0.block_bytes();
    let mut f = [[[_mm256_setzero_ps(); 2]; M]; G];
    // SAFETY: reached only through `gemv` above, which asserts `detected()` (AVX2, FMA, F16C:
    // this fn's features) and checked every group holds nb group blocks and every activation
    // row nb blocks (for Q4_0 also nb sums), so each load stays within them; prefetches never
    // fault.
    unsafe {
        for b in 0..nb {
            for (gi, g) in st.groups.iter().enumerate() {
                let base = g.as_ptr().add(b * GB);
                st.prefetch(gi, b * GB + PREFETCH_AHEAD, GB);
                for h in 0..2 {
                    let dw = f16x8(base.add(16 * h));
                    // The weights' nibbles once for every activation row of the pass.
                    let nib = nibbles_of(base.add(32 + 32 * h));
                    for (j, a) in acts.iter().enumerate() {
                        let ab = a.as_ptr().add(b * bq8);
                        let s = _mm256_sub_epi32(nibble_block_dot(&nib, ab.add(2)), _mm256_set1_epi32(8 * *sums[j].get_unchecked(b)));
                        f[gi][j][h] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), _mm256_mul_ps(dw, _mm256_set1_ps(f16_at(ab))), f[gi][j][h]);
                    }
                }
            }
        }
        store_groups(&f, out);
    }
}

/// The 32-element block types that follow ggml's AVX2 order.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Legacy {
    Q4_1,
    Q8_0,
}

/// Up to M_PASS activation rows against `Q4_1x16` or `Q8_0x16` groups, in the order of
/// ggml-cpu's AVX2 dot (`ggml_vec_dot_q4_1_q8_1` / `q8_0_q8_0`, and tinyBLAS's Q8_0 GEMM), so
/// results are bit-identical to stock on AVX2 CPUs: per output row
/// an 8-lane accumulator whose lane l takes, per block, the exact int sum of elements
/// 4l .. 4l + 4 as f32 in a fused multiply-add with d_w * d_a; at the end the lanes are
/// summed as `hsum_float_8` does ((4 + 0) + (6 + 2)) + ((5 + 1) + (7 + 3)), plus, for Q4_1,
/// the minimums' terms summed on their own (fma(m_w, s_a, summs) per block).
///
/// Here lanes are rows, so lane l of ggml's accumulator is the vector `acc[l]` over 8 rows.
/// Each 64-byte weight vector i holds elements 4i .. 4i + 4 of 16 rows (Q4: low nibbles;
/// the high nibbles are elements 16 + 4i ..): exactly one of ggml's lanes. A group's two
/// 8-row halves take turns over all its blocks (the second finds them in cache).
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn legacy_pass<const M: usize, const G: usize>(kind: Legacy, nb: usize, groups: &[&[u8]; G], acts: &[&[u8]; M], sums: &[&[i32]], out: &mut [[f32; 16]]) {
    let _ = sums;
    let (gb, bq8, qw, qa) = match kind {
        Legacy::Q4_1 => (Layout::Q4_1x16.group_block(), DType::Q8_1.block_bytes(), 64, 4),
        Legacy::Q8_0 => (Layout::Q8_0x16.group_block(), DType::Q8_0.block_bytes(), 32, 2),
    };
    let m4 = _mm256_set1_epi8(0x0F);
    let flip = _mm256_set1_epi8(-128);
    // SAFETY: reached only through `gemv` above, which asserts `detected()` (AVX2, FMA, F16C:
    // this fn's features) and checked every group holds nb group blocks and every activation
    // row nb blocks (for Q4_0 also nb sums), so each load stays within them; prefetches never
    // fault.
    unsafe {
        for (gi, g) in groups.iter().enumerate() {
            for h in 0..2 {
                let mut acc = [[_mm256_setzero_ps(); 8]; M];
                let mut summs = [_mm256_setzero_ps(); M];
                for b in 0..nb {
                    let base = g.as_ptr().add(b * gb);
                    // The first half streams the group from memory; the second finds it in
                    // cache, so meanwhile the next group (the next in memory: groups are
                    // consecutive) is fetched, keeping DRAM busy through both halves.
                    if h == 0 {
                        prefetch(base.wrapping_add(PREFETCH_AHEAD), gb);
                    } else {
                        prefetch(base.wrapping_add(nb * gb), gb);
                    }
                    let dw = f16x8(base.add(16 * h));
                    // Lane l's weights for every row, and whether they are nibbles (Q4) or q + 128.
                    let w = |l: usize| -> __m256i {
                        match kind {
                            Legacy::Q8_0 => _mm256_xor_si256(ld(base.add(qw + 64 * l + 32 * h)), flip),
                            _ => {
                                let v = ld(base.add(qw + 64 * (l % 4) + 32 * h));
                                if l < 4 { _mm256_and_si256(v, m4) } else { _mm256_and_si256(_mm256_srli_epi16::<4>(v), m4) }
                            }
                        }
                    };
                    for (j, a) in acts.iter().enumerate() {
                        let ab = a.as_ptr().add(b * bq8);
                        let d = _mm256_mul_ps(dw, _mm256_set1_ps(f16_at(ab)));
                        for (l, acc_l) in acc[j].iter_mut().enumerate() {
                            let q = bcast4(ab.add(qa + 4 * l));
                            let wl = w(l);
                            // Exact int sums of the lane's 4 products (no int16 step saturates:
                            // nibbles x int8 pairs, |q| x |a| <= 2 x 128 x 127).
                            let s16 = match kind {
                                Legacy::Q4_1 => dot16(wl, q),
                                Legacy::Q8_0 => dot16(_mm256_sign_epi8(wl, wl), _mm256_sign_epi8(q, wl)),
                            };
                            *acc_l = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(widen(s16)), *acc_l);
                        }
                        if kind == Legacy::Q4_1 {
                            let mw = f16x8(base.add(32 + 16 * h));
                            summs[j] = _mm256_fmadd_ps(mw, _mm256_set1_ps(f16_at(ab.add(2))), summs[j]);
                        }
                    }
                }
                for j in 0..M {
                    let a = &acc[j];
                    let t: [__m256; 4] = std::array::from_fn(|i| _mm256_add_ps(a[4 + i], a[i]));
                    let total = _mm256_add_ps(_mm256_add_ps(t[0], t[2]), _mm256_add_ps(t[1], t[3]));
                    let total = if kind == Legacy::Q4_1 { _mm256_add_ps(total, summs[j]) } else { total };
                    _mm256_storeu_ps(out[gi * M + j].as_mut_ptr().add(8 * h), total);
                }
            }
        }
    }
}

/// Up to M_PASS Q8_K activation rows against `Q4_Kx16` groups, as the AVX-512 tier: the
/// 6-bit scales and minimums decoded in-lane; per 32-k sub-block the unsigned nibbles dotted
/// (each int16 collects 16 products of at most 15 x 128) and multiplied by the row's scale in
/// the widening `vpmaddwd`; the minimums meet the activations' sub-block sums in a 16-bit
/// multiply-add. x = d * sc * q - dmin * m, as ggml.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q4_kx16_pass<const M: usize, const G: usize>(nb: usize, st: Streams<G>, acts: &[&[u8]; M], out: &mut [[f32; 16]]) {
    const GB: usize = Layout::Q4_Kx16.group_block();
    const QS: usize = 64 + 3 * 64;
    let bq8 = DType::Q8_K.block_bytes();
    let m4 = _mm256_set1_epi8(0x0F);
    let (k1, k2, k3) = (_mm256_set1_epi32(0x3f3f3f3f), _mm256_set1_epi32(0x0f0f0f0f), _mm256_set1_epi32(0x03030303));
    let even = _mm256_set1_epi32(0x00FF00FF);
    let mut f = [[[_mm256_setzero_ps(); 2]; M]; G];
    // SAFETY: reached only through `gemv` above, which asserts `detected()` (AVX2, FMA, F16C:
    // this fn's features) and checked every group holds nb group blocks and every activation
    // row nb blocks (for Q4_0 also nb sums), so each load stays within them; prefetches never
    // fault.
    unsafe {
        for b in 0..nb {
            for (gi, g) in st.groups.iter().enumerate() {
                let base = g.as_ptr().add(b * GB);
                for h in 0..2 {
                    let dw = f16x8(base.add(16 * h));
                    let dm = f16x8(base.add(32 + 16 * h));
                    let (w0, w1, w2) = (ld(base.add(64 + 32 * h)), ld(base.add(128 + 32 * h)), ld(base.add(192 + 32 * h)));
                    let high2 = |w: __m256i| _mm256_slli_epi32::<4>(_mm256_and_si256(_mm256_srli_epi32::<6>(w), k3));
                    // Bytes of each lane: scales 0..4, 4..8; minimums 0..4, 4..8.
                    let sc = [_mm256_and_si256(w0, k1), _mm256_or_si256(_mm256_and_si256(w2, k2), high2(w0))];
                    let mn = [_mm256_and_si256(w1, k1), _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi32::<4>(w2), k2), high2(w1))];
                    // Minimums as int16 pairs: (m0, m2), (m1, m3), (m4, m6), (m5, m7).
                    let mp = [
                        _mm256_and_si256(mn[0], even),
                        _mm256_and_si256(_mm256_srli_epi32::<8>(mn[0]), even),
                        _mm256_and_si256(mn[1], even),
                        _mm256_and_si256(_mm256_srli_epi32::<8>(mn[1]), even),
                    ];
                    let mut isum = [_mm256_setzero_si256(); M];
                    for c in 0..4 {
                        st.prefetch(gi, (b + 1) * GB + h * GB / 2 + c * GB / 8, GB / 8);
                        // The sub-blocks' scales in both int16 halves of each lane.
                        let pair16 = |s: __m256i| _mm256_or_si256(s, _mm256_slli_epi32::<16>(s));
                        let (s_lo, s_hi) = (pair16(lane_u8(sc[c / 2], 2 * (c % 2))), pair16(lane_u8(sc[c / 2], 2 * (c % 2) + 1)));
                        let mut al = [_mm256_setzero_si256(); M];
                        let mut ah = [_mm256_setzero_si256(); M];
                        for i in 0..8 {
                            let v = ld(base.add(QS + 64 * (8 * c + i) + 32 * h));
                            let lo = _mm256_and_si256(v, m4);
                            let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(v), m4);
                            for (j, a) in acts.iter().enumerate() {
                                let q = a.as_ptr().add(b * bq8 + Q8K_QS + 64 * c);
                                al[j] = _mm256_add_epi16(al[j], dot16(lo, bcast4(q.add(4 * i))));
                                ah[j] = _mm256_add_epi16(ah[j], dot16(hi, bcast4(q.add(32 + 4 * i))));
                            }
                        }
                        for j in 0..M {
                            isum[j] = _mm256_add_epi32(isum[j], _mm256_add_epi32(_mm256_madd_epi16(al[j], s_lo), _mm256_madd_epi16(ah[j], s_hi)));
                        }
                    }
                    for (j, a) in acts.iter().enumerate() {
                        let ab = a.as_ptr().add(b * bq8);
                        let bs = ab.add(Q8K_BSUMS) as *const i16;
                        // Sub-block s sums 32 quants: two of ggml's 16-quant sums (|sum| <= 4096, int16).
                        let s = |i: usize| (bs.add(2 * i).read_unaligned() as i32 + bs.add(2 * i + 1).read_unaligned() as i32) as u16 as u32;
                        let pair = |x: usize, y: usize| _mm256_set1_epi32((s(x) | (s(y) << 16)) as i32);
                        let msum = _mm256_add_epi32(
                            _mm256_add_epi32(_mm256_madd_epi16(mp[0], pair(0, 2)), _mm256_madd_epi16(mp[1], pair(1, 3))),
                            _mm256_add_epi32(_mm256_madd_epi16(mp[2], pair(4, 6)), _mm256_madd_epi16(mp[3], pair(5, 7))),
                        );
                        let da = _mm256_set1_ps((ab as *const f32).read_unaligned());
                        f[gi][j][h] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[j]), _mm256_mul_ps(dw, da), f[gi][j][h]);
                        f[gi][j][h] = _mm256_fnmadd_ps(_mm256_cvtepi32_ps(msum), _mm256_mul_ps(dm, da), f[gi][j][h]);
                    }
                }
            }
        }
        store_groups(&f, out);
    }
}

/// Offsets in a `Q6_Kx16` group block: 32 ql vectors after the 16 fp16 scales, then 16 qh
/// vectors, then 4 vectors of sub-block scales.
mod q6_kx16_at {
    pub const QL: usize = 32;
    pub const QH: usize = 32 + 32 * 64;
    pub const SC: usize = 32 + 48 * 64;
}

/// Up to M_PASS Q8_K activation rows against `Q6_Kx16` groups, as the AVX-512 tier: per 16-k
/// sub-block and output quarter the 6-bit quants are rebuilt from `ql` nibbles and `qh` pairs
/// (unsigned, q + 32), dotted (two steps per int16: 4 products of at most 63 x 128), corrected
/// by 32 * the activations' sub-block sum and multiplied by the row's signed scale;
/// x = d * sc * (q - 32), as ggml.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q6_kx16_pass<const M: usize, const G: usize>(nb: usize, st: Streams<G>, acts: &[&[u8]; M], out: &mut [[f32; 16]]) {
    const GB: usize = Layout::Q6_Kx16.group_block();
    use q6_kx16_at::{QH, QL, SC};
    let bq8 = DType::Q8_K.block_bytes();
    let m4 = _mm256_set1_epi8(0x0F);
    let m33 = _mm256_set1_epi8(0x33);
    let mut f = [[[_mm256_setzero_ps(); 2]; M]; G];
    // SAFETY: reached only through `gemv` above, which asserts `detected()` (AVX2, FMA, F16C:
    // this fn's features) and checked every group holds nb group blocks and every activation
    // row nb blocks (for Q4_0 also nb sums), so each load stays within them; prefetches never
    // fault.
    unsafe {
        for b in 0..nb {
            for (gi, g) in st.groups.iter().enumerate() {
                let base = g.as_ptr().add(b * GB);
                for hv in 0..2 {
                    let dw = f16x8(base.add(16 * hv));
                    let ldh = |at: usize| ld(base.add(at + 32 * hv));
                    let mut isum = [_mm256_setzero_si256(); M];
                    for h in 0..2 {
                        for is in 0..2 {
                            // Quarter t of half h: elements 128 h + 32 t + l, l in 16 is .. 16 is + 16.
                            for t in 0..4 {
                                st.prefetch(gi, (b + 1) * GB + ((2 * h + is) * 4 + t) * GB / 32 + hv * GB / 2, GB / 32);
                                let mut acc = [[_mm256_setzero_si256(); 2]; M];
                                for step in 0..4 {
                                    let ls = 4 * is + step;
                                    let l4 = ldh(QL + 64 * (16 * h + 8 * (t % 2) + ls));
                                    let hb = ldh(QH + 64 * (8 * h + ls));
                                    // ql low nibbles for t < 2, high for t >= 2; qh bits 2t, 2t + 1.
                                    let pair = if t % 2 == 0 { _mm256_and_si256(hb, m33) } else { _mm256_and_si256(_mm256_srli_epi16::<2>(hb), m33) };
                                    let q = if t < 2 {
                                        _mm256_or_si256(_mm256_and_si256(l4, m4), _mm256_andnot_si256(m4, _mm256_slli_epi16::<4>(pair)))
                                    } else {
                                        _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16::<4>(l4), m4), _mm256_andnot_si256(m4, pair))
                                    };
                                    for (j, a) in acts.iter().enumerate() {
                                        let qa = a.as_ptr().add(b * bq8 + Q8K_QS + 128 * h + 32 * t + 4 * ls);
                                        acc[j][step / 2] = _mm256_add_epi16(acc[j][step / 2], dot16(q, bcast4(qa)));
                                    }
                                }
                                let sub = 8 * h + 2 * t + is;
                                let scale = lane_i8(ldh(SC + 64 * (sub / 4)), sub % 4);
                                for (j, a) in acts.iter().enumerate() {
                                    let bsum = (a.as_ptr().add(b * bq8 + Q8K_BSUMS + 2 * sub) as *const i16).read_unaligned() as i32;
                                    let dot = _mm256_add_epi32(widen(acc[j][0]), widen(acc[j][1]));
                                    let centred = _mm256_sub_epi32(dot, _mm256_set1_epi32(32 * bsum));
                                    isum[j] = _mm256_add_epi32(isum[j], _mm256_mullo_epi32(centred, scale));
                                }
                            }
                        }
                    }
                    for (j, a) in acts.iter().enumerate() {
                        let da = _mm256_set1_ps((a.as_ptr().add(b * bq8) as *const f32).read_unaligned());
                        f[gi][j][hv] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[j]), _mm256_mul_ps(dw, da), f[gi][j][hv]);
                    }
                }
            }
        }
        store_groups(&f, out);
    }
}

/// Byte `i` (0..4) of each 32-bit lane as a sign-extended int16 in both halves of the lane,
/// for `vpmaddwd` by a per-row scale.
#[inline(always)]
unsafe fn lane_i8_pair16(v: __m256i, i: usize) -> __m256i {
    // SAFETY: the callers (the passes) enable AVX2; register-only intrinsics. The shuffle
    // puts byte i of each lane in the high byte of both of its int16 (index bit 7 zeroes the
    // low bytes); the arithmetic shift sign-extends it.
    unsafe {
        let i = i as i8;
        let p = _mm256_setr_epi8(
            -128, i, -128, i, -128, 4 + i, -128, 4 + i, -128, 8 + i, -128, 8 + i, -128, 12 + i, -128, 12 + i,
            -128, i, -128, i, -128, 4 + i, -128, 4 + i, -128, 8 + i, -128, 8 + i, -128, 12 + i, -128, 12 + i,
        );
        _mm256_srai_epi16::<8>(_mm256_shuffle_epi8(v, p))
    }
}

/// Bytes `i` and `i + 1` (i = 0 or 2) of each 32-bit lane as sign-extended int16, in the
/// lane's low and high half.
#[inline(always)]
unsafe fn lane_i8_two16(v: __m256i, i: usize) -> __m256i {
    // SAFETY: as `lane_i8_pair16`.
    unsafe {
        let (i, j) = (i as i8, i as i8 + 1);
        let p = _mm256_setr_epi8(
            -128, i, -128, j, -128, 4 + i, -128, 4 + j, -128, 8 + i, -128, 8 + j, -128, 12 + i, -128, 12 + j,
            -128, i, -128, j, -128, 4 + i, -128, 4 + j, -128, 8 + i, -128, 8 + j, -128, 12 + i, -128, 12 + j,
        );
        _mm256_srai_epi16::<8>(_mm256_shuffle_epi8(v, p))
    }
}

/// One Q8_K activation row against `Q6_Kx16` groups (decode): the same integers as
/// [`q6_kx16_pass`], so the same bits, in fewer instructions. Each step loads the two `ql`
/// vectors and the `qh` vector that four sub-blocks share and rebuilds all four 6-bit quants
/// from them; the row's scale enters in the widening `vpmaddwd` (each int16 collects 4
/// products of at most 63 x 128), and 32 * sum(scale * the activations' sub-block sum) is
/// subtracted once per super-block.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q6_kx16_row<const G: usize>(nb: usize, st: Streams<G>, act: &[u8], out: &mut [[f32; 16]]) {
    const GB: usize = Layout::Q6_Kx16.group_block();
    use q6_kx16_at::{QH, QL, SC};
    let bq8 = DType::Q8_K.block_bytes();
    let m4 = _mm256_set1_epi8(0x0F);
    let m30 = _mm256_set1_epi8(0x30);
    let mut f = [[_mm256_setzero_ps(); 2]; G];
    // SAFETY: reached only through `gemv` above, which asserts `detected()` (AVX2, FMA, F16C:
    // this fn's features) and checked every group holds nb group blocks and the activation
    // row nb blocks, so each load stays within them; prefetches never fault.
    unsafe {
        for b in 0..nb {
            let a = act.as_ptr().add(b * bq8);
            let bs = a.add(Q8K_BSUMS);
            let da = _mm256_set1_ps((a as *const f32).read_unaligned());
            for (gi, g) in st.groups.iter().enumerate() {
                let base = g.as_ptr().add(b * GB);
                for hv in 0..2 {
                    let ldh = |at: usize| ld(base.add(at + 32 * hv));
                    let sv: [__m256i; 4] = std::array::from_fn(|v| ldh(SC + 64 * v));
                    // sum over sub-blocks of scale * the activations' sub-block sum.
                    let mut offs = _mm256_setzero_si256();
                    for (v, &s) in sv.iter().enumerate() {
                        offs = _mm256_add_epi32(offs, _mm256_madd_epi16(lane_i8_two16(s, 0), bcast4(bs.add(8 * v))));
                        offs = _mm256_add_epi32(offs, _mm256_madd_epi16(lane_i8_two16(s, 2), bcast4(bs.add(8 * v + 4))));
                    }
                    let mut isum = _mm256_setzero_si256();
                    for h in 0..2 {
                        for is in 0..2 {
                            // Sub-block 8h + 2t + is for quarter t: scale byte 2(t % 2) + is of
                            // scale vector 2h + t / 2.
                            let sc: [__m256i; 4] = std::array::from_fn(|t| lane_i8_pair16(sv[2 * h + t / 2], 2 * (t % 2) + is));
                            for pair in 0..2 {
                                st.prefetch(gi, (b + 1) * GB + ((2 * h + is) * 2 + pair) * GB / 16 + hv * GB / 2, GB / 16);
                                let mut acc = [_mm256_setzero_si256(); 4];
                                for step in 2 * pair..2 * pair + 2 {
                                    let ls = 4 * is + step;
                                    let ql_a = ldh(QL + 64 * (16 * h + ls));
                                    let ql_b = ldh(QL + 64 * (16 * h + 8 + ls));
                                    let qh = ldh(QH + 64 * (8 * h + ls));
                                    // Quarter t: ql nibble (low for t < 2) of vector a (t even) or
                                    // b, and qh bits 2t, 2t + 1 as bits 4, 5.
                                    let q = [
                                        _mm256_or_si256(_mm256_and_si256(ql_a, m4), _mm256_and_si256(_mm256_slli_epi16::<4>(qh), m30)),
                                        _mm256_or_si256(_mm256_and_si256(ql_b, m4), _mm256_and_si256(_mm256_slli_epi16::<2>(qh), m30)),
                                        _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16::<4>(ql_a), m4), _mm256_and_si256(qh, m30)),
                                        _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16::<4>(ql_b), m4), _mm256_and_si256(_mm256_srli_epi16::<2>(qh), m30)),
                                    ];
                                    for t in 0..4 {
                                        let qa = a.add(Q8K_QS + 128 * h + 32 * t + 4 * ls);
                                        acc[t] = _mm256_add_epi16(acc[t], dot16(q[t], bcast4(qa)));
                                    }
                                }
                                for t in 0..4 {
                                    isum = _mm256_add_epi32(isum, _mm256_madd_epi16(acc[t], sc[t]));
                                }
                            }
                        }
                    }
                    let total = _mm256_sub_epi32(isum, _mm256_slli_epi32::<5>(offs));
                    let dw = f16x8(base.add(16 * hv));
                    f[gi][hv] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(total), _mm256_mul_ps(dw, da), f[gi][hv]);
                }
            }
        }
        for (gi, fg) in f.iter().enumerate() {
            _mm256_storeu_ps(out[gi].as_mut_ptr(), fg[0]);
            _mm256_storeu_ps(out[gi].as_mut_ptr().add(8), fg[1]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::calibrate::random_weights;
    use crate::kernels::quant::scalar_kernels;

    /// The single-row Q6_K kernel computes the same integers as the multi-row pass, so it
    /// gives its bits exactly, one group or four side by side, with or without a next chunk.
    #[test]
    fn q6_k_row_kernel_gives_the_pass_bits() {
        if !detected() {
            return eprintln!("no AVX2: Q6_K row kernel not exercised");
        }
        for (nb, seed) in [(1usize, 1u64), (3, 2), (8, 3)] {
            let (k, n) = (256 * nb, 64);
            let raw = random_weights(DType::Q6_K, n, k, seed);
            let mut packed = vec![0u8; raw.len()];
            super::super::pack(Layout::Q6_Kx16, DType::Q6_K, &raw, &mut packed, n, k);
            let x: Vec<f32> = (0..k).map(|i| ((i * 7919 + seed as usize) % 2001) as f32 / 1000.0 - 1.0).collect();
            let mut act = vec![0u8; DType::Q8_K.row_bytes(k)];
            (scalar_kernels(DType::Q8_K).unwrap().from_f32.unwrap())(&x, &mut act);
            let gb = Layout::Q6_Kx16.group_bytes(k);
            let g: [&[u8]; 4] = std::array::from_fn(|i| &packed[i * gb..(i + 1) * gb]);
            let none: [&[u8]; 4] = [&[]; 4];
            let (mut row, mut pass) = (vec![[0f32; 16]; 4], vec![[0f32; 16]; 4]);
            // SAFETY: AVX2, FMA and F16C detected above; every group holds nb group blocks and
            // the activation row nb Q8_K blocks.
            unsafe {
                q6_kx16_row::<4>(nb, Streams { groups: &g, next: none }, &act, &mut row);
                q6_kx16_pass::<1, 4>(nb, Streams { groups: &g, next: none }, &[&act], &mut pass);
            }
            assert_eq!(row.iter().flatten().map(|v| v.to_bits()).collect::<Vec<_>>(), pass.iter().flatten().map(|v| v.to_bits()).collect::<Vec<_>>(), "nb={nb}");
            for i in 0..4 {
                let (mut one, mut one_pass) = ([[0f32; 16]; 1], [[0f32; 16]; 1]);
                let gi = [g[i]];
                // SAFETY: as above.
                unsafe {
                    q6_kx16_row::<1>(nb, Streams { groups: &gi, next: [g[(i + 1) % 4]] }, &act, &mut one);
                    q6_kx16_pass::<1, 1>(nb, Streams { groups: &gi, next: [&[]] }, &[&act], &mut one_pass);
                }
                assert_eq!(one[0].map(f32::to_bits), one_pass[0].map(f32::to_bits), "nb={nb} group {i}");
                assert_eq!(one[0].map(f32::to_bits), row[i].map(f32::to_bits), "nb={nb} group {i} alone");
            }
        }
    }
}
