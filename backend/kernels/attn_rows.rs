//! Decode attention kernels: the query heads that share one K/V head (GQA) against a run of
//! f16 key and value rows of the cache, each row read once for all of them.
//!
//! * scores: `s[h][i] = q_h . k_i`, f32 q, in 8 lanes (lane
//!   `d % 8` sums channel d with one fused multiply-add chain), lanes reduced as
//!   `((l0 + l4) + (l1 + l5)) + ((l2 + l6) + (l3 + l7))`, then the `dk % 8` last channels
//!   fused in one by one;
//! * P V: `o[h][c] += sum_i p[h][i] * v_i[c]`, one fused multiply-add chain per output over
//!   the keys in order.
//!
//! The SIMD tiers follow that order, so every tier gives the scalar references' bits.

// The kernels take their operands as slices with strides, as the fn types spell them.
#![allow(clippy::too_many_arguments)]

use half::f16;

/// `s[h * s_stride + i] = q[h * dk ..][..dk] . k_i` for h < g, i < n; key row i is `dk` f16
/// at byte `i * k_stride` of `k`; `pf` what to fetch towards the caches meanwhile.
pub type GroupScoresFn = fn(q: &[f32], g: usize, dk: usize, k: &[u8], k_stride: usize, n: usize, s: &mut [f32], s_stride: usize, pf: Prefetch);
/// `o[h * dv + c] += sum_i p[h * p_stride + i] * v_i[c]` for h < g, c < dv; value row i is
/// `dv` f16 at byte `i * v_stride` of `v`.
pub type GroupPvFn = fn(p: &[f32], p_stride: usize, g: usize, v: &[u8], v_stride: usize, n: usize, dv: usize, o: &mut [f32]);

const LANES: usize = 8;

/// What a scores kernel fetches towards the caches as it passes the keys (hints, never
/// read, so no bounds): `k_bytes` of each key row from its start (its own `2 dk` into L1,
/// the rest, the other heads of a cache cell, into L2), and `v_bytes` of the same keys'
/// value rows at `v`, `v_stride` apart, into L2 for the P V that follows.
#[derive(Clone, Copy)]
pub struct Prefetch {
    pub k_bytes: usize,
    pub v: *const u8,
    pub v_stride: usize,
    pub v_bytes: usize,
}

impl Prefetch {
    /// Nothing beyond the key rows' own channels.
    pub const NONE: Prefetch = Prefetch { k_bytes: 0, v: std::ptr::null(), v_stride: 0, v_bytes: 0 };
}

#[inline(always)]
fn f16_at(row: &[u8], d: usize) -> f32 {
    f16::from_le_bytes([row[2 * d], row[2 * d + 1]]).to_f32()
}

/// The lane reduction every tier uses.
#[inline(always)]
fn reduce8(l: &[f32; LANES]) -> f32 {
    let t: [f32; 4] = std::array::from_fn(|j| l[j] + l[j + 4]);
    (t[0] + t[1]) + (t[2] + t[3])
}

fn check_scores(q: &[f32], g: usize, dk: usize, k: &[u8], k_stride: usize, n: usize, s: &[f32], s_stride: usize) {
    assert!(
        q.len() >= g * dk
            && (n == 0 || k.len() >= (n - 1) * k_stride + 2 * dk)
            && (g == 0 || s.len() >= (g - 1) * s_stride + n)
            && s_stride >= n,
        "group_scores: q, k or s too short"
    );
}

fn check_pv(p: &[f32], p_stride: usize, g: usize, v: &[u8], v_stride: usize, n: usize, dv: usize, o: &[f32]) {
    assert!(
        (g == 0 || p.len() >= (g - 1) * p_stride + n)
            && (n == 0 || v.len() >= (n - 1) * v_stride + 2 * dv)
            && o.len() >= g * dv,
        "group_pv: p, v or o too short"
    );
}

/// Scalar reference of [`GroupScoresFn`].
pub fn group_scores_scalar(q: &[f32], g: usize, dk: usize, k: &[u8], k_stride: usize, n: usize, s: &mut [f32], s_stride: usize, _pf: Prefetch) {
    check_scores(q, g, dk, k, k_stride, n, s, s_stride);
    let whole = dk - dk % LANES;
    for i in 0..n {
        let row = &k[i * k_stride..][..2 * dk];
        for h in 0..g {
            let qh = &q[h * dk..][..dk];
            let mut lanes = [0f32; LANES];
            for d in 0..whole {
                lanes[d % LANES] = qh[d].mul_add(f16_at(row, d), lanes[d % LANES]);
            }
            let mut x = reduce8(&lanes);
            for d in whole..dk {
                x = qh[d].mul_add(f16_at(row, d), x);
            }
            s[h * s_stride + i] = x;
        }
    }
}

/// Scalar reference of [`GroupPvFn`].
pub fn group_pv_scalar(p: &[f32], p_stride: usize, g: usize, v: &[u8], v_stride: usize, n: usize, dv: usize, o: &mut [f32]) {
    check_pv(p, p_stride, g, v, v_stride, n, dv, o);
    for h in 0..g {
        for i in 0..n {
            let (w, row) = (p[h * p_stride + i], &v[i * v_stride..][..2 * dv]);
            for (c, oc) in o[h * dv..(h + 1) * dv].iter_mut().enumerate() {
                *oc = w.mul_add(f16_at(row, c), *oc);
            }
        }
    }
}

/// The AVX2 + FMA + F16C kernels, when this CPU runs them.
#[cfg(target_arch = "x86_64")]
pub(crate) fn avx2() -> Option<(GroupScoresFn, GroupPvFn)> {
    fn scores(q: &[f32], g: usize, dk: usize, k: &[u8], k_stride: usize, n: usize, s: &mut [f32], s_stride: usize, pf: Prefetch) {
        check_scores(q, g, dk, k, k_stride, n, s, s_stride);
        // SAFETY: lengths checked; reachable only through avx2(), which checked the features.
        unsafe { avx2::scores(q, g, dk, k, k_stride, n, s, s_stride, pf) }
    }
    fn pv(p: &[f32], p_stride: usize, g: usize, v: &[u8], v_stride: usize, n: usize, dv: usize, o: &mut [f32]) {
        check_pv(p, p_stride, g, v, v_stride, n, dv, o);
        // SAFETY: as above.
        unsafe { avx2::pv(p, p_stride, g, v, v_stride, n, dv, o) }
    }
    (is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c"))
        .then_some((scores as GroupScoresFn, pv as GroupPvFn))
}

/// The NEON kernels (FCVTL converts f16 in every aarch64 CPU's Advanced SIMD).
#[cfg(target_arch = "aarch64")]
pub(crate) fn neon() -> Option<(GroupScoresFn, GroupPvFn)> {
    fn scores(q: &[f32], g: usize, dk: usize, k: &[u8], k_stride: usize, n: usize, s: &mut [f32], s_stride: usize, _pf: Prefetch) {
        check_scores(q, g, dk, k, k_stride, n, s, s_stride);
        // SAFETY: lengths checked; NEON is baseline on aarch64.
        unsafe { neon::scores(q, g, dk, k, k_stride, n, s, s_stride) }
    }
    fn pv(p: &[f32], p_stride: usize, g: usize, v: &[u8], v_stride: usize, n: usize, dv: usize, o: &mut [f32]) {
        check_pv(p, p_stride, g, v, v_stride, n, dv, o);
        // SAFETY: as above.
        unsafe { neon::pv(p, p_stride, g, v, v_stride, n, dv, o) }
    }
    Some((scores as GroupScoresFn, pv as GroupPvFn))
}

/// Keys ahead whose rows the scores loop prefetches: rows are strided (one per cache cell),
/// so the hardware's stream prefetchers see only short runs.
#[cfg(target_arch = "x86_64")]
const PREFETCH_KEYS: usize = 12;
/// Keys per P V block: their value rows stay in L1 while the block's output columns pass.
const PV_KEYS: usize = 64;

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{f16_at, Prefetch, PREFETCH_KEYS, PV_KEYS};
    use std::arch::x86_64::*;

    /// `((l0 + l4) + (l1 + l5)) + ((l2 + l6) + (l3 + l7))`, as `reduce8`.
    #[inline(always)]
    unsafe fn reduce8(a: __m256) -> f32 {
        // SAFETY: registers only; the callers' features include AVX.
        unsafe {
            let x = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps::<1>(a));
            let y = _mm_hadd_ps(x, x);
            _mm_cvtss_f32(_mm_hadd_ps(y, y))
        }
    }

    /// Prefetches the `bytes` of the row at `p` (an address that may lie past the data:
    /// a prefetch never faults).
    #[inline(always)]
    unsafe fn prefetch_row<const HINT: i32>(p: *const u8, bytes: usize) {
        let mut off = 0;
        while off < bytes {
            // SAFETY: a prefetch hint only, never dereferenced.
            unsafe { _mm_prefetch::<HINT>(p.wrapping_add(off) as *const i8) };
            off += 64;
        }
    }

    /// Callers checked the lengths (`check_scores`). Heads in groups of up to four, two keys
    /// at a time (up to eight accumulators), each key row converted once per group.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn scores(q: &[f32], g: usize, dk: usize, k: &[u8], k_stride: usize, n: usize, s: &mut [f32], s_stride: usize, pf: Prefetch) {
        let mut h0 = 0;
        while h0 < g {
            let hg = (g - h0).min(4);
            // Along with the first head group's pass over the keys.
            let ahead = if h0 == 0 { pf } else { Prefetch::NONE };
            // SAFETY: heads h0 .. h0 + hg < g of the checked q and s.
            unsafe {
                match hg {
                    4 => scores_heads::<4>(q, h0, dk, k, k_stride, n, s, s_stride, ahead),
                    3 => scores_heads::<3>(q, h0, dk, k, k_stride, n, s, s_stride, ahead),
                    2 => scores_heads::<2>(q, h0, dk, k, k_stride, n, s, s_stride, ahead),
                    _ => scores_heads::<1>(q, h0, dk, k, k_stride, n, s, s_stride, ahead),
                }
            }
            h0 += hg;
        }
    }

    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    unsafe fn scores_heads<const G: usize>(q: &[f32], h0: usize, dk: usize, k: &[u8], k_stride: usize, n: usize, s: &mut [f32], s_stride: usize, ahead: Prefetch) {
        let whole = dk & !7;
        let (qp, kp) = (q.as_ptr().wrapping_add(h0 * dk), k.as_ptr());
        let tail = |x: f32, h: usize, row: &[u8]| -> f32 { (whole..dk).fold(x, |x, d| q[(h0 + h) * dk + d].mul_add(f16_at(row, d), x)) };
        let mut i = 0;
        // SAFETY: (check_scores) q holds g >= h0 + G heads of dk floats, k holds n rows of
        // 2 dk bytes at k_stride, s holds g rows of n at s_stride; loads read channels
        // d + 8 <= whole <= dk of rows i, i + 1 < n, stores go to s[(h0 + h) * s_stride + i].
        unsafe {
            while i + 2 <= n {
                let (k0, k1) = (kp.add(i * k_stride), kp.add((i + 1) * k_stride));
                for j in [i + PREFETCH_KEYS, i + 1 + PREFETCH_KEYS] {
                    let row = kp.wrapping_add(j * k_stride);
                    prefetch_row::<_MM_HINT_T0>(row, 2 * dk);
                    prefetch_row::<_MM_HINT_T1>(row.wrapping_add(2 * dk), ahead.k_bytes.saturating_sub(2 * dk));
                    prefetch_row::<_MM_HINT_T1>(ahead.v.wrapping_add(j * ahead.v_stride), ahead.v_bytes);
                }
                let mut a0 = [_mm256_setzero_ps(); G];
                let mut a1 = [_mm256_setzero_ps(); G];
                let mut d = 0;
                while d < whole {
                    let x0 = _mm256_cvtph_ps(_mm_loadu_si128(k0.add(2 * d) as *const __m128i));
                    let x1 = _mm256_cvtph_ps(_mm_loadu_si128(k1.add(2 * d) as *const __m128i));
                    for h in 0..G {
                        let qv = _mm256_loadu_ps(qp.add(h * dk + d));
                        a0[h] = _mm256_fmadd_ps(qv, x0, a0[h]);
                        a1[h] = _mm256_fmadd_ps(qv, x1, a1[h]);
                    }
                    d += 8;
                }
                for h in 0..G {
                    s[(h0 + h) * s_stride + i] = tail(reduce8(a0[h]), h, &k[i * k_stride..]);
                    s[(h0 + h) * s_stride + i + 1] = tail(reduce8(a1[h]), h, &k[(i + 1) * k_stride..]);
                }
                i += 2;
            }
            if i < n {
                let k0 = kp.add(i * k_stride);
                let mut a0 = [_mm256_setzero_ps(); G];
                let mut d = 0;
                while d < whole {
                    let x0 = _mm256_cvtph_ps(_mm_loadu_si128(k0.add(2 * d) as *const __m128i));
                    for h in 0..G {
                        a0[h] = _mm256_fmadd_ps(_mm256_loadu_ps(qp.add(h * dk + d)), x0, a0[h]);
                    }
                    d += 8;
                }
                for h in 0..G {
                    s[(h0 + h) * s_stride + i] = tail(reduce8(a0[h]), h, &k[i * k_stride..]);
                }
            }
        }
    }

    /// Callers checked the lengths (`check_pv`). Keys in blocks of [`PV_KEYS`]; within a
    /// block, heads in groups and output columns in runs held in registers (up to eight
    /// accumulators) while the block's keys pass in order.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn pv(p: &[f32], p_stride: usize, g: usize, v: &[u8], v_stride: usize, n: usize, dv: usize, o: &mut [f32]) {
        let mut k0 = 0;
        while k0 < n {
            let nk = (n - k0).min(PV_KEYS);
            let mut h0 = 0;
            while h0 < g {
                let hg = (g - h0).min(4);
                // SAFETY: heads h0 .. h0 + hg < g, keys k0 .. k0 + nk <= n of the checked
                // p, v and o.
                unsafe {
                    match hg {
                        4 => pv_heads::<4, 2>(p, p_stride, h0, v, v_stride, k0, nk, dv, o),
                        3 => pv_heads::<3, 2>(p, p_stride, h0, v, v_stride, k0, nk, dv, o),
                        2 => pv_heads::<2, 4>(p, p_stride, h0, v, v_stride, k0, nk, dv, o),
                        _ => pv_heads::<1, 4>(p, p_stride, h0, v, v_stride, k0, nk, dv, o),
                    }
                }
                h0 += hg;
            }
            k0 += nk;
        }
    }

    /// G heads, W vectors (8 W columns) per run.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    unsafe fn pv_heads<const G: usize, const W: usize>(p: &[f32], p_stride: usize, h0: usize, v: &[u8], v_stride: usize, k0: usize, nk: usize, dv: usize, o: &mut [f32]) {
        let (pp, vp, op) = (p.as_ptr(), v.as_ptr(), o.as_mut_ptr());
        // SAFETY: (check_pv) p holds g rows of n weights at p_stride, v n rows of 2 dv bytes
        // at v_stride, o g rows of dv; heads h0 + h < g, keys k0 + j < n, columns c + 8 W <= dv
        // (vector runs) or c < dv (the tail).
        unsafe {
            let mut c = 0;
            while c + 8 * W <= dv {
                let mut acc = [[_mm256_setzero_ps(); W]; G];
                for h in 0..G {
                    for w in 0..W {
                        acc[h][w] = _mm256_loadu_ps(op.add((h0 + h) * dv + c + 8 * w));
                    }
                }
                for j in k0..k0 + nk {
                    let row = vp.add(j * v_stride + 2 * c);
                    let x: [__m256; W] = std::array::from_fn(|w| _mm256_cvtph_ps(_mm_loadu_si128(row.add(16 * w) as *const __m128i)));
                    for h in 0..G {
                        let pb = _mm256_broadcast_ss(&*pp.add((h0 + h) * p_stride + j));
                        for w in 0..W {
                            acc[h][w] = _mm256_fmadd_ps(pb, x[w], acc[h][w]);
                        }
                    }
                }
                for h in 0..G {
                    for w in 0..W {
                        _mm256_storeu_ps(op.add((h0 + h) * dv + c + 8 * w), acc[h][w]);
                    }
                }
                c += 8 * W;
            }
            while c + 8 <= dv {
                let mut acc = [_mm256_setzero_ps(); G];
                for h in 0..G {
                    acc[h] = _mm256_loadu_ps(op.add((h0 + h) * dv + c));
                }
                for j in k0..k0 + nk {
                    let x = _mm256_cvtph_ps(_mm_loadu_si128(vp.add(j * v_stride + 2 * c) as *const __m128i));
                    for h in 0..G {
                        acc[h] = _mm256_fmadd_ps(_mm256_broadcast_ss(&*pp.add((h0 + h) * p_stride + j)), x, acc[h]);
                    }
                }
                for h in 0..G {
                    _mm256_storeu_ps(op.add((h0 + h) * dv + c), acc[h]);
                }
                c += 8;
            }
            for cc in c..dv {
                for h in 0..G {
                    let oc = &mut o[(h0 + h) * dv + cc];
                    for j in k0..k0 + nk {
                        *oc = p[(h0 + h) * p_stride + j].mul_add(f16_at(&v[j * v_stride..], cc), *oc);
                    }
                }
            }
        }
    }
}

#[cfg(target_arch = "aarch64")]
mod neon {
    use super::{f16_at, PV_KEYS};
    use std::arch::aarch64::*;

    /// Eight f16 at `p` as two f32 vectors (lanes 0-3, 4-7).
    #[inline(always)]
    unsafe fn load8(p: *const u8) -> (float32x4_t, float32x4_t) {
        // SAFETY: callers pass 16 readable bytes; NEON is baseline on aarch64.
        unsafe {
            let h = vreinterpretq_u16_u8(vld1q_u8(p));
            (vcvt_f32_f16(vreinterpret_f16_u16(vget_low_u16(h))), vcvt_high_f32_f16(vreinterpretq_f16_u16(h)))
        }
    }

    /// `reduce8` of the lanes (lo = 0-3, hi = 4-7): pairwise adds of lo + hi.
    #[inline(always)]
    unsafe fn reduce8(lo: float32x4_t, hi: float32x4_t) -> f32 {
        // SAFETY: registers only.
        unsafe {
            let t = vaddq_f32(lo, hi);
            let u = vpaddq_f32(t, t);
            vgetq_lane_f32::<0>(vpaddq_f32(u, u))
        }
    }

    /// As the AVX2 kernel: heads in groups of up to four, one key at a time.
    pub unsafe fn scores(q: &[f32], g: usize, dk: usize, k: &[u8], k_stride: usize, n: usize, s: &mut [f32], s_stride: usize) {
        let whole = dk & !7;
        let (qp, kp) = (q.as_ptr(), k.as_ptr());
        let mut h0 = 0;
        while h0 < g {
            let hg = (g - h0).min(4);
            // SAFETY: (check_scores) q holds g heads of dk floats, k n rows of 2 dk bytes at
            // k_stride, s g rows of n at s_stride; loads read channels d + 8 <= whole of row
            // i < n for heads h0 + h < g.
            unsafe {
                for i in 0..n {
                    let row = kp.add(i * k_stride);
                    let mut lo = [vdupq_n_f32(0.0); 4];
                    let mut hi = [vdupq_n_f32(0.0); 4];
                    let mut d = 0;
                    while d < whole {
                        let (x0, x1) = load8(row.add(2 * d));
                        for h in 0..hg {
                            let qh = qp.add((h0 + h) * dk + d);
                            lo[h] = vfmaq_f32(lo[h], vld1q_f32(qh), x0);
                            hi[h] = vfmaq_f32(hi[h], vld1q_f32(qh.add(4)), x1);
                        }
                        d += 8;
                    }
                    for h in 0..hg {
                        let x = (whole..dk).fold(reduce8(lo[h], hi[h]), |x, d| q[(h0 + h) * dk + d].mul_add(f16_at(&k[i * k_stride..], d), x));
                        s[(h0 + h) * s_stride + i] = x;
                    }
                }
            }
            h0 += hg;
        }
    }

    /// As the AVX2 kernel: key blocks, one head at a time, 16 columns per run.
    pub unsafe fn pv(p: &[f32], p_stride: usize, g: usize, v: &[u8], v_stride: usize, n: usize, dv: usize, o: &mut [f32]) {
        let (pp, vp, op) = (p.as_ptr(), v.as_ptr(), o.as_mut_ptr());
        // SAFETY: (check_pv) p holds g rows of n weights at p_stride, v n rows of 2 dv bytes
        // at v_stride, o g rows of dv; keys j < n, columns c + 8 <= dv (vectors) or c < dv.
        unsafe {
            let mut k0 = 0;
            while k0 < n {
                let nk = (n - k0).min(PV_KEYS);
                for h in 0..g {
                    let orow = op.add(h * dv);
                    let mut c = 0;
                    while c + 16 <= dv {
                        let mut a: [float32x4_t; 4] = std::array::from_fn(|w| vld1q_f32(orow.add(c + 4 * w)));
                        for j in k0..k0 + nk {
                            let w = vdupq_n_f32(*pp.add(h * p_stride + j));
                            let row = vp.add(j * v_stride + 2 * c);
                            let (x0, x1) = load8(row);
                            let (x2, x3) = load8(row.add(16));
                            a[0] = vfmaq_f32(a[0], w, x0);
                            a[1] = vfmaq_f32(a[1], w, x1);
                            a[2] = vfmaq_f32(a[2], w, x2);
                            a[3] = vfmaq_f32(a[3], w, x3);
                        }
                        for (w, aw) in a.iter().enumerate() {
                            vst1q_f32(orow.add(c + 4 * w), *aw);
                        }
                        c += 16;
                    }
                    for cc in c..dv {
                        let oc = &mut o[h * dv + cc];
                        for j in k0..k0 + nk {
                            *oc = p[h * p_stride + j].mul_add(f16_at(&v[j * v_stride..], cc), *oc);
                        }
                    }
                }
                k0 += nk;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::registry::log_tiers_run;
    use crate::kernels::KernelSet;
    use rand::{rngs::StdRng, Rng, SeedableRng};

    fn f16_bytes(xs: &[f32]) -> Vec<u8> {
        xs.iter().flat_map(|&x| f16::from_f32(x).to_le_bytes()).collect()
    }

    /// Odd head counts (past the four-head groups), channel counts that are not whole
    /// vectors, strided rows, one key and odd key counts; against the scalar references
    /// bit for bit and against f64 sums.
    #[test]
    fn row_kernels_match_their_references() {
        for ks in KernelSet::available() {
            let (scores, pv) = (ks.attn.group_scores, ks.attn.group_pv);
            let mut rng = StdRng::seed_from_u64(31);
            for &(g, dk, dv, n, stride_pad) in &[
                (3, 128, 128, 70, 0),
                (1, 64, 64, 1, 6),
                (5, 40, 24, 13, 10),
                (8, 13, 19, 67, 3),
                (2, 7, 5, 130, 0),
                (4, 96, 80, 2, 32),
                // Groups past four heads: four heads by three keys, leftovers.
                (16, 128, 128, 64, 0),
                (13, 20, 40, 65, 5),
                (6, 8, 24, 3, 0),
                (9, 64, 48, 2, 1),
            ] {
                let q: Vec<f32> = (0..g * dk).map(|_| f16::from_f32(rng.gen_range(-1.0..1.0)).to_f32()).collect();
                let (k_stride, v_stride) = (2 * dk + 2 * stride_pad, 2 * dv + 2 * stride_pad);
                let kf: Vec<f32> = (0..n * (k_stride / 2)).map(|_| rng.gen_range(-1.0..1.0)).collect();
                let vf: Vec<f32> = (0..n * (v_stride / 2)).map(|_| rng.gen_range(-1.0..1.0)).collect();
                let (k, v) = (f16_bytes(&kf), f16_bytes(&vf));
                let s_stride = n + 3;
                let (mut a, mut b) = (vec![0f32; g * s_stride], vec![0f32; g * s_stride]);
                scores(&q, g, dk, &k, k_stride, n, &mut a, s_stride, Prefetch { k_bytes: k_stride, v: v.as_ptr(), v_stride, v_bytes: 2 * dv });
                group_scores_scalar(&q, g, dk, &k, k_stride, n, &mut b, s_stride, Prefetch { k_bytes: k_stride, v: v.as_ptr(), v_stride, v_bytes: 2 * dv });
                for h in 0..g {
                    for i in 0..n {
                        let (x, y) = (a[h * s_stride + i], b[h * s_stride + i]);
                        assert_eq!(x.to_bits(), y.to_bits(), "{} scores g {g} dk {dk} n {n}: ({h},{i}) {x} vs {y}", ks.name);
                        let direct: f64 = (0..dk).map(|d| q[h * dk + d] as f64 * f16_at(&k[i * k_stride..], d) as f64).sum();
                        assert!((x as f64 - direct).abs() <= 1e-5 * dk as f64, "scores ({h},{i}): {x} vs {direct}");
                    }
                }
                let p_stride = n + 5;
                let p: Vec<f32> = (0..g * p_stride).map(|_| rng.gen_range(0.0..1.0)).collect();
                let o0: Vec<f32> = (0..g * dv).map(|_| rng.gen_range(-1.0..1.0)).collect();
                let (mut o1, mut o2) = (o0.clone(), o0.clone());
                pv(&p, p_stride, g, &v, v_stride, n, dv, &mut o1);
                group_pv_scalar(&p, p_stride, g, &v, v_stride, n, dv, &mut o2);
                for (i, (x, y)) in o1.iter().zip(&o2).enumerate() {
                    assert_eq!(x.to_bits(), y.to_bits(), "{} pv g {g} dv {dv} n {n} at {i}: {x} vs {y}", ks.name);
                    let (h, c) = (i / dv, i % dv);
                    let direct = o0[i] as f64 + (0..n).map(|j| p[h * p_stride + j] as f64 * f16_at(&v[j * v_stride..], c) as f64).sum::<f64>();
                    assert!((*x as f64 - direct).abs() <= 1e-5 * n as f64, "pv at {i}: {x} vs {direct}");
                }
            }
        }
        log_tiers_run("attn rows", KernelSet::available().iter().map(|s| s.name));
    }
}
