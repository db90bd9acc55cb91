//! Blocked attention kernels: 16 queries against 16 keys at a time, in f32, on K stored
//! transposed per 16-key block (`kt[(kb * dk + d) * 16 + j]` = key 16 kb + j, channel d) and V
//! in f32 rows. Each has a scalar reference here; the SIMD tiers keep a few query rows of a
//! key block (or of a V column chunk) in registers at a time.
//!
//! Scores come in two orders: ggml-cpu's (its tiled flash attention: each dot product one
//! fused multiply-add chain over the channels; `scores_block`, stock's bits) and the
//! per-row kernels' (`attn_rows`: eight lane chains over the channels, reduced in a fixed
//! tree; `scores_block_lanes`, so a query row scores the same on the blocked and the
//! per-row path). P V is one fused multiply-add chain per output over the keys, in both.
//! Every tier gives the scalar references' bits.

use super::attn_rows::{GroupPvFn, GroupScoresFn};

/// Queries (and keys) per block.
pub const BLOCK: usize = 16;

/// Scores of a 16-query block against one 16-key block: `s[i][j] = dot(q row i, key j)`,
/// q rows `dk` floats apart, each one fused multiply-add chain over the channels. Scalar
/// reference.
pub fn scores_block_scalar(q: &[f32], dk: usize, kt: &[f32], s: &mut [[f32; BLOCK]; BLOCK]) {
    check_scores(q, dk, kt);
    for (i, row) in s.iter_mut().enumerate() {
        for (j, out) in row.iter_mut().enumerate() {
            *out = (0..dk).fold(0.0, |acc: f32, d| q[i * dk + d].mul_add(kt[d * BLOCK + j], acc));
        }
    }
}

/// As [`scores_block_scalar`] in the per-row kernels' order (`attn_rows`), so that a query
/// row's scores do not depend on the path: eight lane sums (lane l: channels l, l + 8, ...
/// below the last whole eight, one fused multiply-add chain each), reduced as
/// `((l0 + l4) + (l1 + l5)) + ((l2 + l6) + (l3 + l7))`, then the last `dk % 8` channels
/// fused in one by one. Scalar reference.
pub fn scores_block_lanes_scalar(q: &[f32], dk: usize, kt: &[f32], s: &mut [[f32; BLOCK]; BLOCK]) {
    check_scores(q, dk, kt);
    let whole = dk - dk % LANES;
    for (i, row) in s.iter_mut().enumerate() {
        for (j, out) in row.iter_mut().enumerate() {
            let lane = |l: usize| (l..whole).step_by(LANES).fold(0.0, |acc: f32, d| q[i * dk + d].mul_add(kt[d * BLOCK + j], acc));
            let t: [f32; 4] = std::array::from_fn(|l| lane(l) + lane(l + 4));
            let x = (t[0] + t[1]) + (t[2] + t[3]);
            *out = (whole..dk).fold(x, |acc, d| q[i * dk + d].mul_add(kt[d * BLOCK + j], acc));
        }
    }
}

/// Lanes of the per-row kernels' dot products.
const LANES: usize = 8;

/// The lane reduction of [`scores_block_scalar`] on vectors of partial sums, `p[l]` lane
/// l's: `((p0 + p4) + (p1 + p5)) + ((p2 + p6) + (p3 + p7))`, elementwise.
#[allow(dead_code)] // the SIMD tiers' (not the portable build's)
#[inline(always)]
fn reduce_lanes<V: Copy>(p: &[V; LANES], add: impl Fn(V, V) -> V) -> V {
    let t: [V; 4] = std::array::from_fn(|l| add(p[l], p[l + 4]));
    add(add(t[0], t[1]), add(t[2], t[3]))
}

/// `o[i][c] += sum over keys of p[i * p_stride + key] * v[key * dv + c]`, for 16 query rows
/// and keys `0 .. n_keys` in order, one fused multiply-add per key. Scalar reference.
pub fn pv_block_scalar(
    p: &[f32],
    p_stride: usize,
    n_keys: usize,
    v: &[f32],
    dv: usize,
    o: &mut [f32],
) {
    check_pv(p, p_stride, n_keys, v, dv, o);
    for i in 0..BLOCK {
        for c in 0..dv {
            o[i * dv + c] = (0..n_keys).fold(o[i * dv + c], |acc, key| {
                p[i * p_stride + key].mul_add(v[key * dv + c], acc)
            });
        }
    }
}

/// `out[j] = s[j] * scale + slope * mask[j]` for j < n, each product rounded (no mask: the
/// scaled score), -inf for j in n .. 16. Scalar reference.
pub fn finish_scores_scalar(
    s: &[f32; BLOCK],
    scale: f32,
    slope: f32,
    mask: Option<&[u16]>,
    n: usize,
    out: &mut [f32],
) {
    check_finish(n, mask, out);
    for (j, o) in out[..BLOCK].iter_mut().enumerate() {
        *o = if j >= n {
            f32::NEG_INFINITY
        } else {
            let x = s[j] * scale;
            match mask {
                Some(m) => x + slope * half::f16::from_bits(m[j]).to_f32(),
                None => x,
            }
        };
    }
}

/// One 16-key block of K in the layout `scores_block` reads, from `n` f16 key rows of `dk`
/// channels `stride` bytes apart: `kt[d * 16 + j]` = key j, channel d, keys n .. 16 zero.
/// Scalar reference (a conversion: every tier gives the same bits).
pub fn keys_block_scalar(rows: &[u8], stride: usize, n: usize, dk: usize, kt: &mut [f32]) {
    check_keys(rows, stride, n, dk, kt);
    for j in 0..BLOCK {
        for d in 0..dk {
            kt[d * BLOCK + j] = if j < n {
                half::f16::from_le_bytes([rows[j * stride + 2 * d], rows[j * stride + 2 * d + 1]]).to_f32()
            } else {
                0.0
            };
        }
    }
}

/// `s[i][j] = dot(q row i, key j)` for a 16-query block against one 16-key block.
pub type ScoresBlockFn = fn(q: &[f32], dk: usize, kt: &[f32], s: &mut [[f32; BLOCK]; BLOCK]);
/// `o[i][c] += sum over keys of p[i * p_stride + key] * v[key * dv + c]`.
pub type PvBlockFn = fn(p: &[f32], p_stride: usize, n_keys: usize, v: &[f32], dv: usize, o: &mut [f32]);
/// f16 key rows to one 16-key block of K, transposed, in f32.
pub type KeysBlockFn = fn(rows: &[u8], stride: usize, n: usize, dk: usize, kt: &mut [f32]);
/// Scaled, masked scores of one key block (-inf past `n`).
pub type FinishScoresFn = fn(s: &[f32; BLOCK], scale: f32, slope: f32, mask: Option<&[u16]>, n: usize, out: &mut [f32]);

/// One tier's attention kernels. Every tier gives the scalar references' bits.
#[derive(Clone, Copy)]
pub struct Kernels {
    /// Whether prefill takes the blocked path: only worth its K / V conversion with SIMD.
    pub blocked: bool,
    pub keys_block: KeysBlockFn,
    pub scores_block: ScoresBlockFn,
    pub scores_block_lanes: ScoresBlockFn,
    pub pv_block: PvBlockFn,
    pub finish_scores: FinishScoresFn,
    /// Decode (`attn_rows`): a GQA group's scores against f16 key rows, and its P V.
    pub group_scores: GroupScoresFn,
    pub group_pv: GroupPvFn,
}

/// The portable tier (and the reference of the others).
pub const SCALAR: Kernels = Kernels {
    blocked: false,
    keys_block: keys_block_scalar,
    scores_block: scores_block_scalar,
    scores_block_lanes: scores_block_lanes_scalar,
    pv_block: pv_block_scalar,
    finish_scores: finish_scores_scalar,
    group_scores: super::attn_rows::group_scores_scalar,
    group_pv: super::attn_rows::group_pv_scalar,
};

fn check_keys(rows: &[u8], stride: usize, n: usize, dk: usize, kt: &[f32]) {
    assert!(
        n <= BLOCK && kt.len() >= dk * BLOCK && (n == 0 || (stride >= 2 * dk && rows.len() >= (n - 1) * stride + 2 * dk)),
        "keys_block: rows or kt too short"
    );
}

fn check_scores(q: &[f32], dk: usize, kt: &[f32]) {
    assert!(q.len() >= BLOCK * dk && kt.len() >= dk * BLOCK, "scores_block: q or kt too short");
}

fn check_pv(p: &[f32], p_stride: usize, n_keys: usize, v: &[f32], dv: usize, o: &[f32]) {
    assert!(
        p.len() >= (BLOCK - 1) * p_stride + n_keys && v.len() >= n_keys * dv && o.len() >= BLOCK * dv,
        "pv_block: p, v or o too short"
    );
}

fn check_finish(n: usize, mask: Option<&[u16]>, out: &[f32]) {
    assert!(n <= BLOCK && out.len() >= BLOCK && mask.is_none_or(|m| m.len() >= n), "finish_scores: lengths");
}

/// The NEON tier (Advanced SIMD and the f16 conversions FCVTL are part of every aarch64
/// CPU).
#[cfg(target_arch = "aarch64")]
pub(crate) fn neon_kernels() -> Option<Kernels> {
    fn scores_block(q: &[f32], dk: usize, kt: &[f32], s: &mut [[f32; BLOCK]; BLOCK]) {
        check_scores(q, dk, kt);
        // SAFETY: lengths checked; NEON is baseline on aarch64.
        unsafe { neon::scores_block(q, dk, kt, s) }
    }
    fn scores_block_lanes(q: &[f32], dk: usize, kt: &[f32], s: &mut [[f32; BLOCK]; BLOCK]) {
        check_scores(q, dk, kt);
        // SAFETY: lengths checked; NEON is baseline on aarch64.
        unsafe { neon::scores_block_lanes(q, dk, kt, s) }
    }
    fn pv_block(p: &[f32], p_stride: usize, n_keys: usize, v: &[f32], dv: usize, o: &mut [f32]) {
        check_pv(p, p_stride, n_keys, v, dv, o);
        // SAFETY: lengths checked; NEON is baseline on aarch64.
        unsafe { neon::pv_block(p, p_stride, n_keys, v, dv, o) }
    }
    fn finish_scores(s: &[f32; BLOCK], scale: f32, slope: f32, mask: Option<&[u16]>, n: usize, out: &mut [f32]) {
        check_finish(n, mask, out);
        // SAFETY: lengths checked; NEON is baseline on aarch64.
        unsafe { neon::finish_scores(s, scale, slope, mask, n, out) }
    }
    let (group_scores, group_pv) = super::attn_rows::neon()?;
    Some(Kernels { blocked: true, keys_block: keys_block_scalar, scores_block, scores_block_lanes, pv_block, finish_scores, group_scores, group_pv })
}

/// The AVX2 + FMA + F16C tier, when this CPU runs it.
#[cfg(target_arch = "x86_64")]
pub(crate) fn avx2_kernels() -> Option<Kernels> {
    fn scores_block(q: &[f32], dk: usize, kt: &[f32], s: &mut [[f32; BLOCK]; BLOCK]) {
        check_scores(q, dk, kt);
        // SAFETY: lengths checked; reachable only through avx2_kernels() (features checked).
        unsafe { avx2::scores_block(q, dk, kt, s) }
    }
    fn scores_block_lanes(q: &[f32], dk: usize, kt: &[f32], s: &mut [[f32; BLOCK]; BLOCK]) {
        check_scores(q, dk, kt);
        // SAFETY: as above.
        unsafe { avx2::scores_block_lanes(q, dk, kt, s) }
    }
    fn pv_block(p: &[f32], p_stride: usize, n_keys: usize, v: &[f32], dv: usize, o: &mut [f32]) {
        check_pv(p, p_stride, n_keys, v, dv, o);
        if !dv.is_multiple_of(8) {
            return pv_block_scalar(p, p_stride, n_keys, v, dv, o);
        }
        // SAFETY: lengths checked, dv whole vectors; features checked as above.
        unsafe { avx2::pv_block(p, p_stride, n_keys, v, dv, o) }
    }
    fn finish_scores(s: &[f32; BLOCK], scale: f32, slope: f32, mask: Option<&[u16]>, n: usize, out: &mut [f32]) {
        check_finish(n, mask, out);
        // SAFETY: lengths checked; features checked as above.
        unsafe { avx2::finish_scores(s, scale, slope, mask, n, out) }
    }
    let ok = is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c");
    let (group_scores, group_pv) = super::attn_rows::avx2()?;
    Some(Kernels { blocked: true, keys_block: avx2_keys_block, scores_block, scores_block_lanes, pv_block, finish_scores, group_scores, group_pv }).filter(|_| ok)
}

/// The AVX2 + F16C `keys_block` (the AVX-512 tier's too: eight keys per transpose suit both).
#[cfg(target_arch = "x86_64")]
fn avx2_keys_block(rows: &[u8], stride: usize, n: usize, dk: usize, kt: &mut [f32]) {
    check_keys(rows, stride, n, dk, kt);
    // SAFETY: lengths checked; reachable only through a tier whose features include AVX2
    // and F16C (avx2_kernels, avx512_kernels check them).
    unsafe { avx2::keys_block(rows, stride, n, dk, kt) }
}

/// The AVX-512 tier, when this CPU runs it.
#[cfg(target_arch = "x86_64")]
pub(crate) fn avx512_kernels() -> Option<Kernels> {
    fn scores_block(q: &[f32], dk: usize, kt: &[f32], s: &mut [[f32; BLOCK]; BLOCK]) {
        check_scores(q, dk, kt);
        // SAFETY: lengths checked; reachable only through avx512_kernels() (features checked).
        unsafe { avx512::scores_block(q, dk, kt, s) }
    }
    // The scores in the per-row kernels' lane order: the AVX2 kernel (8 lanes), which every
    // AVX-512 CPU runs.
    fn scores_block_lanes(q: &[f32], dk: usize, kt: &[f32], s: &mut [[f32; BLOCK]; BLOCK]) {
        check_scores(q, dk, kt);
        // SAFETY: lengths checked; reachable only through avx512_kernels(), which checked
        // AVX2 and FMA.
        unsafe { avx2::scores_block_lanes(q, dk, kt, s) }
    }
    fn pv_block(p: &[f32], p_stride: usize, n_keys: usize, v: &[f32], dv: usize, o: &mut [f32]) {
        check_pv(p, p_stride, n_keys, v, dv, o);
        if !dv.is_multiple_of(16) {
            return pv_block_scalar(p, p_stride, n_keys, v, dv, o);
        }
        // SAFETY: lengths checked, dv whole vectors; features checked as above.
        unsafe { avx512::pv_block(p, p_stride, n_keys, v, dv, o) }
    }
    fn finish_scores(s: &[f32; BLOCK], scale: f32, slope: f32, mask: Option<&[u16]>, n: usize, out: &mut [f32]) {
        check_finish(n, mask, out);
        // SAFETY: lengths checked; features checked as above.
        unsafe { avx512::finish_scores(s, scale, slope, mask, n, out) }
    }
    // AVX2 and FMA for the kernels shared with the AVX2 tier (keys_block, decode's).
    let ok = is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bw") && is_x86_feature_detected!("avx512vl") && is_x86_feature_detected!("f16c")
        && is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma");
    // Decode's row kernels: every AVX-512 CPU runs the AVX2 ones (their loads are one key
    // row's channels, which 8 lanes cover as well as 16).
    let (group_scores, group_pv) = super::attn_rows::avx2()?;
    Some(Kernels { blocked: true, keys_block: avx2_keys_block, scores_block, scores_block_lanes, pv_block, finish_scores, group_scores, group_pv }).filter(|_| ok)
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::BLOCK;
    use std::arch::x86_64::*;

    /// Callers checked: q holds 16 rows of dk, kt dk * 16 floats.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn scores_block(q: &[f32], dk: usize, kt: &[f32], s: &mut [[f32; BLOCK]; BLOCK]) {
        let (qp, kp) = (q.as_ptr(), kt.as_ptr());
        // SAFETY: the only callers are the wrappers in `avx512_kernels()`, handed out once it
        // checked this fn's features (AVX-512F); they checked q holds 16 rows of dk floats and
        // kt dk * 16, so every load stays within q and kt and every store within the 16 x 16
        // `s`.
        unsafe {
            for half in 0..2 {
                let q0 = qp.add(half * 8 * dk);
                let mut acc = [_mm512_setzero_ps(); 8];
                for d in 0..dk {
                    let k = _mm512_loadu_ps(kp.add(d * BLOCK));
                    for (i, a) in acc.iter_mut().enumerate() {
                        *a = _mm512_fmadd_ps(_mm512_set1_ps(*q0.add(i * dk + d)), k, *a);
                    }
                }
                for (i, a) in acc.iter().enumerate() {
                    _mm512_storeu_ps(s[half * 8 + i].as_mut_ptr(), *a);
                }
            }
        }
    }

    /// Callers checked the lengths; dv is a multiple of 16.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn pv_block(
        p: &[f32],
        p_stride: usize,
        n_keys: usize,
        v: &[f32],
        dv: usize,
        o: &mut [f32],
    ) {
        let (pp, vp, op) = (p.as_ptr(), v.as_ptr(), o.as_mut_ptr());
        // SAFETY: the only callers are the wrappers in `avx512_kernels()`, handed out once it
        // checked this fn's features (AVX-512F); they checked the lengths of p, v and o and
        // that dv is a multiple of 16, so every 16-float load and store stays in bounds.
        unsafe {
            for c in (0..dv).step_by(16) {
                let mut acc: [__m512; BLOCK] =
                    std::array::from_fn(|i| _mm512_loadu_ps(op.add(i * dv + c)));
                for key in 0..n_keys {
                    let vv = _mm512_loadu_ps(vp.add(key * dv + c));
                    for (i, a) in acc.iter_mut().enumerate() {
                        *a = _mm512_fmadd_ps(_mm512_set1_ps(*pp.add(i * p_stride + key)), vv, *a);
                    }
                }
                for (i, a) in acc.iter().enumerate() {
                    _mm512_storeu_ps(op.add(i * dv + c), *a);
                }
            }
        }
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vl,f16c")]
    pub unsafe fn finish_scores(
        s: &[f32; BLOCK],
        scale: f32,
        slope: f32,
        mask: Option<&[u16]>,
        n: usize,
        out: &mut [f32],
    ) {
        let valid: __mmask16 = if n >= 16 { 0xFFFF } else { (1u16 << n) - 1 };
        // SAFETY: the only callers are the wrappers in `avx512_kernels()`, handed out once it
        // checked this fn's features (AVX-512F, BW, VL, F16C); they checked out holds 16 floats
        // and the mask n values, and the masked load reads only the n lanes of `valid`.
        unsafe {
            let x = _mm512_mul_ps(_mm512_loadu_ps(s.as_ptr()), _mm512_set1_ps(scale));
            let ninf = _mm512_set1_ps(f32::NEG_INFINITY);
            let r = match mask {
                None => x,
                Some(m) => {
                    let mv = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(valid, m.as_ptr() as *const i16));
                    _mm512_add_ps(x, _mm512_mul_ps(mv, _mm512_set1_ps(slope)))
                }
            };
            _mm512_storeu_ps(out.as_mut_ptr(), _mm512_mask_mov_ps(ninf, valid, r));
        }
    }
}

/// The AVX2 tier: 8-lane halves of the AVX-512 tier's 16-wide vectors, each result the same
/// fused multiply-add chain, so the tiers agree bit for bit.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{reduce_lanes, BLOCK, LANES};
    use std::arch::x86_64::*;

    /// Key row j's 8 channels from d0 in f32, or zeros past the n keys.
    #[inline]
    #[target_feature(enable = "avx2,f16c")]
    unsafe fn key8(p: *const u8, stride: usize, n: usize, j: usize, d0: usize) -> __m256 {
        // SAFETY: the caller's bounds (see keys_block): key j < n has channels d0 .. d0 + 8.
        unsafe {
            if j < n {
                _mm256_cvtph_ps(_mm_loadu_si128(p.add(j * stride + 2 * d0) as *const __m128i))
            } else {
                _mm256_setzero_ps()
            }
        }
    }

    /// Callers checked: n <= 16 rows of dk f16, `stride` bytes apart, within `rows`; kt
    /// holds dk * 16 floats. Eight keys by eight channels per 8 x 8 transpose.
    #[target_feature(enable = "avx2,f16c")]
    pub unsafe fn keys_block(rows: &[u8], stride: usize, n: usize, dk: usize, kt: &mut [f32]) {
        let (p, o) = (rows.as_ptr(), kt.as_mut_ptr());
        let full = dk / 8 * 8;
        // SAFETY: loads read channels d0 .. d0 + 8 <= dk of keys j < n only (key8), within
        // `rows`; stores write kt[(d0 + d) * 16 + j0 .. + 8] with d0 + d < dk, within kt.
        unsafe {
            for j0 in [0, 8] {
                for d0 in (0..full).step_by(8) {
                    let r = [
                        key8(p, stride, n, j0, d0),
                        key8(p, stride, n, j0 + 1, d0),
                        key8(p, stride, n, j0 + 2, d0),
                        key8(p, stride, n, j0 + 3, d0),
                        key8(p, stride, n, j0 + 4, d0),
                        key8(p, stride, n, j0 + 5, d0),
                        key8(p, stride, n, j0 + 6, d0),
                        key8(p, stride, n, j0 + 7, d0),
                    ];
                    let (t0, t1) = (_mm256_unpacklo_ps(r[0], r[1]), _mm256_unpackhi_ps(r[0], r[1]));
                    let (t2, t3) = (_mm256_unpacklo_ps(r[2], r[3]), _mm256_unpackhi_ps(r[2], r[3]));
                    let (t4, t5) = (_mm256_unpacklo_ps(r[4], r[5]), _mm256_unpackhi_ps(r[4], r[5]));
                    let (t6, t7) = (_mm256_unpacklo_ps(r[6], r[7]), _mm256_unpackhi_ps(r[6], r[7]));
                    // Channels (0 | 4), (1 | 5), (2 | 6), (3 | 7) of keys 0-3, then of keys 4-7.
                    let a = [_mm256_shuffle_ps::<0x44>(t0, t2), _mm256_shuffle_ps::<0xEE>(t0, t2), _mm256_shuffle_ps::<0x44>(t1, t3), _mm256_shuffle_ps::<0xEE>(t1, t3)];
                    let b = [_mm256_shuffle_ps::<0x44>(t4, t6), _mm256_shuffle_ps::<0xEE>(t4, t6), _mm256_shuffle_ps::<0x44>(t5, t7), _mm256_shuffle_ps::<0xEE>(t5, t7)];
                    for c in 0..4 {
                        _mm256_storeu_ps(o.add((d0 + c) * BLOCK + j0), _mm256_permute2f128_ps::<0x20>(a[c], b[c]));
                        _mm256_storeu_ps(o.add((d0 + c + 4) * BLOCK + j0), _mm256_permute2f128_ps::<0x31>(a[c], b[c]));
                    }
                }
            }
        }
        for d in full..dk {
            for j in 0..BLOCK {
                kt[d * BLOCK + j] = if j < n { half::f16::from_le_bytes([rows[j * stride + 2 * d], rows[j * stride + 2 * d + 1]]).to_f32() } else { 0.0 };
            }
        }
    }

    /// `acc[i] += q[i][d] * kt[d]` for four query rows (q rows `dk` apart from `q0`) and the
    /// 16 keys of channel d (`kp`: the transposed key block), in two 8-key halves.
    #[inline(always)]
    unsafe fn fma_channel(acc: &mut [[__m256; 2]; 4], q0: *const f32, dk: usize, kp: *const f32, d: usize) {
        // SAFETY: callers (AVX2 + FMA functions) pass d < dk, four rows of dk floats at q0
        // and a key block of dk x 16 floats at kp.
        unsafe {
            let (k0, k1) = (_mm256_loadu_ps(kp.add(d * BLOCK)), _mm256_loadu_ps(kp.add(d * BLOCK + 8)));
            for (i, a) in acc.iter_mut().enumerate() {
                let qv = _mm256_set1_ps(*q0.add(i * dk + d));
                a[0] = _mm256_fmadd_ps(qv, k0, a[0]);
                a[1] = _mm256_fmadd_ps(qv, k1, a[1]);
            }
        }
    }

    /// Four rows of 16 scores from their accumulators.
    #[inline(always)]
    unsafe fn store_rows(acc: &[[__m256; 2]; 4], rows: &mut [[f32; BLOCK]]) {
        for (row, a) in rows.iter_mut().zip(acc) {
            // SAFETY: each row holds 16 floats; the callers' features include AVX.
            unsafe {
                _mm256_storeu_ps(row.as_mut_ptr(), a[0]);
                _mm256_storeu_ps(row.as_mut_ptr().add(8), a[1]);
            }
        }
    }

    /// Callers checked: q holds 16 rows of dk, kt dk * 16 floats. Four query rows at a time
    /// (eight accumulators: 4 rows x 2 key halves).
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn scores_block(q: &[f32], dk: usize, kt: &[f32], s: &mut [[f32; BLOCK]; BLOCK]) {
        let (qp, kp) = (q.as_ptr(), kt.as_ptr());
        // SAFETY: the only callers are the wrappers in `avx2_kernels()`, handed out once it
        // checked this fn's features (AVX2, FMA); they checked q holds 16 rows of dk floats and
        // kt dk * 16, so every load stays within q and kt and every store within the 16 x 16
        // `s`.
        unsafe {
            for quad in 0..BLOCK / 4 {
                let q0 = qp.add(quad * 4 * dk);
                let mut acc = [[_mm256_setzero_ps(); 2]; 4];
                for d in 0..dk {
                    fma_channel(&mut acc, q0, dk, kp, d);
                }
                store_rows(&acc, &mut s[quad * 4..quad * 4 + 4]);
            }
        }
    }

    /// Callers checked: q holds 16 rows of dk, kt dk * 16 floats. Four query rows at a time
    /// (eight accumulators: 4 rows x 2 key halves), one pass per lane over its channels,
    /// the lanes reduced by `reduce_lanes`, then the tail channels.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn scores_block_lanes(q: &[f32], dk: usize, kt: &[f32], s: &mut [[f32; BLOCK]; BLOCK]) {
        let (qp, kp) = (q.as_ptr(), kt.as_ptr());
        let whole = dk - dk % LANES;
        // Per lane pass its 4 x 2 accumulators.
        let mut p = [[[_mm256_setzero_ps(); 2]; 4]; LANES];
        // SAFETY: the only callers are the wrappers of `avx2_kernels()` and
        // `avx512_kernels()`, handed out once they checked AVX2 and FMA; they checked q holds
        // 16 rows of dk floats and kt dk * 16, so every load (channel d < dk of a row, key
        // row d < dk) stays within q and kt, and every store within `p` or the 16 x 16 `s`.
        unsafe {
            for quad in 0..BLOCK / 4 {
                let q0 = qp.add(quad * 4 * dk);
                for (l, acc) in p.iter_mut().enumerate() {
                    *acc = [[_mm256_setzero_ps(); 2]; 4];
                    for d in (l..whole).step_by(LANES) {
                        fma_channel(acc, q0, dk, kp, d);
                    }
                }
                let mut acc: [[__m256; 2]; 4] = std::array::from_fn(|i| {
                    std::array::from_fn(|h| reduce_lanes(&std::array::from_fn(|l| p[l][i][h]), |a, b| _mm256_add_ps(a, b)))
                });
                for d in whole..dk {
                    fma_channel(&mut acc, q0, dk, kp, d);
                }
                store_rows(&acc, &mut s[quad * 4..quad * 4 + 4]);
            }
        }
    }

    /// Callers checked the lengths; dv is a multiple of 8. Eight query rows per pass over
    /// each 8-wide V column chunk.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn pv_block(p: &[f32], p_stride: usize, n_keys: usize, v: &[f32], dv: usize, o: &mut [f32]) {
        let (pp, vp, op) = (p.as_ptr(), v.as_ptr(), o.as_mut_ptr());
        // SAFETY: the only callers are the wrappers in `avx2_kernels()`, handed out once it
        // checked this fn's features (AVX2, FMA); they checked the lengths of p, v and o and
        // that dv is a multiple of 8, so every 8-float load and store stays in bounds.
        unsafe {
            for half in 0..BLOCK / 8 {
                let r0 = half * 8;
                for c in (0..dv).step_by(8) {
                    let mut acc: [__m256; 8] = std::array::from_fn(|i| _mm256_loadu_ps(op.add((r0 + i) * dv + c)));
                    for key in 0..n_keys {
                        let vv = _mm256_loadu_ps(vp.add(key * dv + c));
                        for (i, a) in acc.iter_mut().enumerate() {
                            *a = _mm256_fmadd_ps(_mm256_set1_ps(*pp.add((r0 + i) * p_stride + key)), vv, *a);
                        }
                    }
                    for (i, a) in acc.iter().enumerate() {
                        _mm256_storeu_ps(op.add((r0 + i) * dv + c), *a);
                    }
                }
            }
        }
    }

    /// As the AVX-512 tier's, in two halves; the mask is read only below `n`.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn finish_scores(s: &[f32; BLOCK], scale: f32, slope: f32, mask: Option<&[u16]>, n: usize, out: &mut [f32]) {
        let mut m16 = [0u16; BLOCK];
        if let Some(m) = mask {
            m16[..n].copy_from_slice(&m[..n]);
        }
        // SAFETY: the only callers are the wrappers in `avx2_kernels()`, handed out once it
        // checked this fn's features (AVX2, FMA, F16C); they checked out holds 16 floats; s and
        // m16 are 16 values, so each 8-lane half stays in bounds.
        unsafe {
            for h in 0..2 {
                let x = _mm256_mul_ps(_mm256_loadu_ps(s.as_ptr().add(8 * h)), _mm256_set1_ps(scale));
                let r = match mask {
                    None => x,
                    Some(_) => {
                        let mv = _mm256_cvtph_ps(_mm_loadu_si128(m16.as_ptr().add(8 * h) as *const __m128i));
                        _mm256_add_ps(x, _mm256_mul_ps(mv, _mm256_set1_ps(slope)))
                    }
                };
                _mm256_storeu_ps(out.as_mut_ptr().add(8 * h), r);
            }
        }
        for o in &mut out[n..BLOCK] {
            *o = f32::NEG_INFINITY;
        }
    }
}

/// The NEON tier: 4-lane quarters of the AVX-512 tier's 16-wide vectors, each result the
/// same fused multiply-add chain (`vfmaq_laneq_f32` takes the multiplier from a lane of a
/// vector of four consecutive channels or keys, in their order), so the tiers agree bit
/// for bit.
#[cfg(target_arch = "aarch64")]
mod neon {
    use super::{reduce_lanes, BLOCK, LANES};
    use std::arch::aarch64::*;

    /// `acc[i][m] += x[i][L] * k[m]`: one channel (or key) of four query rows against four
    /// vectors.
    #[inline(always)]
    unsafe fn fma_lane<const L: i32, const NV: usize>(acc: &mut [[float32x4_t; NV]; 4], x: &[float32x4_t; 4], k: &[float32x4_t; NV]) {
        for (a, xi) in acc.iter_mut().zip(x) {
            for (am, km) in a.iter_mut().zip(k) {
                // SAFETY: NEON is baseline on aarch64; registers only.
                *am = unsafe { vfmaq_laneq_f32::<L>(*am, *km, *xi) };
            }
        }
    }

    /// Callers checked: q holds 16 rows of dk, kt dk * 16 floats. Four query rows at a time
    /// (16 accumulators: 4 rows x 4 key quarters), four channels per q load.
    pub unsafe fn scores_block(q: &[f32], dk: usize, kt: &[f32], s: &mut [[f32; BLOCK]; BLOCK]) {
        let (qp, kp) = (q.as_ptr(), kt.as_ptr());
        // SAFETY: NEON is baseline on aarch64; callers checked q holds 16 rows of dk floats
        // and kt dk * 16, so the q loads (4 channels from d, d + 4 <= dk) and the key loads
        // (row d < dk) stay within q and kt, and every store within the 16 x 16 `s`.
        unsafe {
            let keys = |d: usize| -> [float32x4_t; 4] { std::array::from_fn(|m| vld1q_f32(kp.add(d * BLOCK + 4 * m))) };
            for quad in 0..BLOCK / 4 {
                let q0 = qp.add(quad * 4 * dk);
                let mut acc = [[vdupq_n_f32(0.0); 4]; 4];
                let mut d = 0;
                while d + 4 <= dk {
                    let x: [float32x4_t; 4] = std::array::from_fn(|i| vld1q_f32(q0.add(i * dk + d)));
                    fma_lane::<0, 4>(&mut acc, &x, &keys(d));
                    fma_lane::<1, 4>(&mut acc, &x, &keys(d + 1));
                    fma_lane::<2, 4>(&mut acc, &x, &keys(d + 2));
                    fma_lane::<3, 4>(&mut acc, &x, &keys(d + 3));
                    d += 4;
                }
                while d < dk {
                    let x: [float32x4_t; 4] = std::array::from_fn(|i| vdupq_n_f32(*q0.add(i * dk + d)));
                    fma_lane::<0, 4>(&mut acc, &x, &keys(d));
                    d += 1;
                }
                for (i, a) in acc.iter().enumerate() {
                    for (m, am) in a.iter().enumerate() {
                        vst1q_f32(s[quad * 4 + i].as_mut_ptr().add(4 * m), *am);
                    }
                }
            }
        }
    }

    /// Callers checked: q holds 16 rows of dk, kt dk * 16 floats. Four query rows at a time
    /// (16 accumulators: 4 rows x 4 key quarters), one pass per lane over its channels, the
    /// lanes reduced by `reduce_lanes`, then the tail channels.
    pub unsafe fn scores_block_lanes(q: &[f32], dk: usize, kt: &[f32], s: &mut [[f32; BLOCK]; BLOCK]) {
        let (qp, kp) = (q.as_ptr(), kt.as_ptr());
        let whole = dk - dk % LANES;
        // SAFETY: NEON is baseline on aarch64; callers checked q holds 16 rows of dk floats
        // and kt dk * 16, so the q loads (channel d < dk) and the key loads (row d < dk) stay
        // within q and kt, and every store within `p` or the 16 x 16 `s`.
        unsafe {
            // Per lane pass its 4 x 4 accumulators.
            let mut p = [[[vdupq_n_f32(0.0); 4]; 4]; LANES];
            let keys = |d: usize| -> [float32x4_t; 4] { std::array::from_fn(|m| vld1q_f32(kp.add(d * BLOCK + 4 * m))) };
            let step = |acc: &mut [[float32x4_t; 4]; 4], q0: *const f32, d: usize| {
                let k = keys(d);
                for (i, a) in acc.iter_mut().enumerate() {
                    let x = vdupq_n_f32(*q0.add(i * dk + d));
                    for (am, km) in a.iter_mut().zip(&k) {
                        *am = vfmaq_f32(*am, x, *km);
                    }
                }
            };
            for quad in 0..BLOCK / 4 {
                let q0 = qp.add(quad * 4 * dk);
                for (l, acc) in p.iter_mut().enumerate() {
                    *acc = [[vdupq_n_f32(0.0); 4]; 4];
                    for d in (l..whole).step_by(LANES) {
                        step(acc, q0, d);
                    }
                }
                let mut acc: [[float32x4_t; 4]; 4] = std::array::from_fn(|i| {
                    std::array::from_fn(|m| reduce_lanes(&std::array::from_fn(|l| p[l][i][m]), |a, b| vaddq_f32(a, b)))
                });
                for d in whole..dk {
                    step(&mut acc, q0, d);
                }
                for (i, a) in acc.iter().enumerate() {
                    for (m, am) in a.iter().enumerate() {
                        vst1q_f32(s[quad * 4 + i].as_mut_ptr().add(4 * m), *am);
                    }
                }
            }
        }
    }

    /// Callers checked the lengths. Four query rows at a time over 16-wide V column chunks,
    /// then 4-wide ones, then single columns (the scalar chain), four keys per p load.
    pub unsafe fn pv_block(p: &[f32], p_stride: usize, n_keys: usize, v: &[f32], dv: usize, o: &mut [f32]) {
        for r in (0..BLOCK).step_by(4) {
            let mut c = 0;
            while c + 16 <= dv {
                // SAFETY: as `pv_chunk` requires: c + 16 <= dv, rows r .. r + 4 <= 16.
                unsafe { pv_chunk::<4>(p, p_stride, n_keys, v, dv, o, r, c) };
                c += 16;
            }
            while c + 4 <= dv {
                // SAFETY: as above with c + 4 <= dv.
                unsafe { pv_chunk::<1>(p, p_stride, n_keys, v, dv, o, r, c) };
                c += 4;
            }
            for c in c..dv {
                for i in r..r + 4 {
                    o[i * dv + c] = (0..n_keys).fold(o[i * dv + c], |acc, key| p[i * p_stride + key].mul_add(v[key * dv + c], acc));
                }
            }
        }
    }

    /// Rows r .. r + 4, columns c .. c + 4 NV of `pv_block`. Callers checked the lengths (see
    /// `check_pv`), r + 4 <= 16 and c + 4 NV <= dv.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    unsafe fn pv_chunk<const NV: usize>(p: &[f32], p_stride: usize, n_keys: usize, v: &[f32], dv: usize, o: &mut [f32], r: usize, c: usize) {
        let (pp, vp, op) = (p.as_ptr(), v.as_ptr(), o.as_mut_ptr());
        // SAFETY: NEON is baseline on aarch64. o holds 16 rows of dv and c + 4 NV <= dv, so
        // the o loads and stores stay in bounds; v holds n_keys rows of dv, read at key <
        // n_keys; p holds (15 * p_stride + n_keys) floats, and the 4-key loads of row i < 16
        // end at key + 4 <= n_keys.
        unsafe {
            let vals = |key: usize| -> [float32x4_t; NV] { std::array::from_fn(|m| vld1q_f32(vp.add(key * dv + c + 4 * m))) };
            let mut acc: [[float32x4_t; NV]; 4] = std::array::from_fn(|i| std::array::from_fn(|m| vld1q_f32(op.add((r + i) * dv + c + 4 * m))));
            let mut key = 0;
            while key + 4 <= n_keys {
                let x: [float32x4_t; 4] = std::array::from_fn(|i| vld1q_f32(pp.add((r + i) * p_stride + key)));
                fma_lane::<0, NV>(&mut acc, &x, &vals(key));
                fma_lane::<1, NV>(&mut acc, &x, &vals(key + 1));
                fma_lane::<2, NV>(&mut acc, &x, &vals(key + 2));
                fma_lane::<3, NV>(&mut acc, &x, &vals(key + 3));
                key += 4;
            }
            while key < n_keys {
                let x: [float32x4_t; 4] = std::array::from_fn(|i| vdupq_n_f32(*pp.add((r + i) * p_stride + key)));
                fma_lane::<0, NV>(&mut acc, &x, &vals(key));
                key += 1;
            }
            for (i, a) in acc.iter().enumerate() {
                for (m, am) in a.iter().enumerate() {
                    vst1q_f32(op.add((r + i) * dv + c + 4 * m), *am);
                }
            }
        }
    }

    /// As the AVX-512 tier's, in four quarters; the mask is read only below `n`.
    pub unsafe fn finish_scores(s: &[f32; BLOCK], scale: f32, slope: f32, mask: Option<&[u16]>, n: usize, out: &mut [f32]) {
        let mut m16 = [0u16; BLOCK];
        if let Some(m) = mask {
            m16[..n].copy_from_slice(&m[..n]);
        }
        // SAFETY: NEON is baseline on aarch64 (FCVTL included); callers checked out holds 16
        // floats; s and m16 are 16 values, so each 4-lane quarter stays in bounds.
        unsafe {
            for h in 0..BLOCK / 4 {
                let x = vmulq_f32(vld1q_f32(s.as_ptr().add(4 * h)), vdupq_n_f32(scale));
                let r = match mask {
                    None => x,
                    Some(_) => {
                        let mv = vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(m16.as_ptr().add(4 * h))));
                        vaddq_f32(x, vmulq_f32(mv, vdupq_n_f32(slope)))
                    }
                };
                vst1q_f32(out.as_mut_ptr().add(4 * h), r);
            }
        }
        for o in &mut out[n..BLOCK] {
            *o = f32::NEG_INFINITY;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::registry::log_tiers_run;
    use crate::kernels::KernelSet;
    use rand::{rngs::StdRng, Rng, SeedableRng};

    #[test]
    fn blocked_kernels_match_their_references() {
        for ks in KernelSet::available() {
            blocked_kernels_match(&ks.attn, ks.name);
        }
        log_tiers_run("attn blocked", KernelSet::available().iter().map(|s| s.name));
    }

    fn blocked_kernels_match(k: &Kernels, tier: &str) {
        let pv_block = k.pv_block;
        let mut rng = StdRng::seed_from_u64(9);
        for &(dk, dv, n_keys, p_stride) in &[
            (128, 128, 16, 16),
            (40, 48, 13, 29),
            (64, 16, 1, 7),
            (7, 32, 37, 40),
            (12, 20, 9, 9),
            (9, 23, 6, 11),
            (3, 3, 5, 5),
        ] {
            let q: Vec<f32> = (0..BLOCK * dk).map(|_| rng.gen_range(-1.0..1.0)).collect();
            let kt: Vec<f32> = (0..BLOCK * dk).map(|_| rng.gen_range(-1.0..1.0)).collect();
            let orders: [(ScoresBlockFn, ScoresBlockFn, &str); 2] = [(k.scores_block, scores_block_scalar, "chain"), (k.scores_block_lanes, scores_block_lanes_scalar, "lanes")];
            for (tiered, reference, order) in orders {
                let (mut a, mut b) = ([[0f32; BLOCK]; BLOCK], [[0f32; BLOCK]; BLOCK]);
                tiered(&q, dk, &kt, &mut a);
                reference(&q, dk, &kt, &mut b);
                for i in 0..BLOCK {
                    for j in 0..BLOCK {
                        assert_eq!(a[i][j].to_bits(), b[i][j].to_bits(), "{tier} scores ({order}) dk={dk} ({i},{j})");
                        let direct: f64 = (0..dk).map(|d| q[i * dk + d] as f64 * kt[d * BLOCK + j] as f64).sum();
                        assert!((a[i][j] as f64 - direct).abs() <= 1e-5 * dk as f64, "scores ({order}) dk={dk} ({i},{j})");
                    }
                }
            }
            let p: Vec<f32> = (0..BLOCK * p_stride)
                .map(|_| rng.gen_range(0.0..1.0))
                .collect();
            let v: Vec<f32> = (0..n_keys * dv).map(|_| rng.gen_range(-1.0..1.0)).collect();
            // Accumulates onto what the output held.
            let o0: Vec<f32> = (0..BLOCK * dv).map(|_| rng.gen_range(-1.0..1.0)).collect();
            let (mut o1, mut o2) = (o0.clone(), o0.clone());
            pv_block(&p, p_stride, n_keys, &v, dv, &mut o1);
            pv_block_scalar(&p, p_stride, n_keys, &v, dv, &mut o2);
            for (i, (x, y)) in o1.iter().zip(&o2).enumerate() {
                assert_eq!(
                    x.to_bits(),
                    y.to_bits(),
                    "{tier} pv dv={dv} keys={n_keys} at {i}: {x} vs {y}"
                );
                let (r, c) = (i / dv, i % dv);
                let direct = o0[i] as f64
                    + (0..n_keys)
                        .map(|k| p[r * p_stride + k] as f64 * v[k * dv + c] as f64)
                        .sum::<f64>();
                assert!(
                    (*x as f64 - direct).abs() <= 1e-5 * n_keys as f64,
                    "pv at {i}: {x} vs {direct}"
                );
            }
        }
    }

    /// The lane-order scores of a block are the per-row kernel's scores of the same keys,
    /// bit for bit (what makes the two attention paths agree).
    #[test]
    fn lane_order_scores_match_the_row_kernels() {
        let mut rng = StdRng::seed_from_u64(12);
        for &(dk, n) in &[(64, 16), (128, 11), (20, 16), (7, 5)] {
            let stride = 2 * dk + 6;
            let rows: Vec<u8> = (0..BLOCK * stride / 2).flat_map(|_| half::f16::from_f32(rng.gen_range(-1.0..1.0)).to_le_bytes()).collect();
            let q: Vec<f32> = (0..BLOCK * dk).map(|_| rng.gen_range(-1.0..1.0)).collect();
            let mut kt = vec![0f32; BLOCK * dk];
            keys_block_scalar(&rows, stride, n, dk, &mut kt);
            let mut blk = [[0f32; BLOCK]; BLOCK];
            scores_block_lanes_scalar(&q, dk, &kt, &mut blk);
            let mut s = vec![0f32; BLOCK * BLOCK];
            super::super::attn_rows::group_scores_scalar(&q, BLOCK, dk, &rows, stride, n, &mut s, BLOCK, super::super::attn_rows::Prefetch::NONE);
            for i in 0..BLOCK {
                for j in 0..n {
                    assert_eq!(blk[i][j].to_bits(), s[i * BLOCK + j].to_bits(), "dk {dk}: ({i},{j})");
                }
            }
        }
    }

    /// Keys of any count up to a block, channels not a multiple of 8, rows with padding
    /// between them: the same bits as the reference, and the f16 values themselves.
    #[test]
    fn keys_block_matches_its_reference() {
        let mut rng = StdRng::seed_from_u64(12);
        for ks in KernelSet::available() {
            for &(dk, pad) in &[(128, 0), (40, 6), (64, 130), (13, 2), (8, 0)] {
                for n in [16, 15, 9, 8, 1, 0] {
                    let stride = 2 * dk + pad;
                    let rows: Vec<u8> = (0..n.max(1) * stride).flat_map(|_| half::f16::from_f32(rng.gen_range(-8.0..8.0)).to_le_bytes()).take(n.max(1) * stride).collect();
                    let (mut a, mut b) = (vec![f32::NAN; dk * BLOCK], vec![f32::NAN; dk * BLOCK]);
                    (ks.attn.keys_block)(&rows, stride, n, dk, &mut a);
                    keys_block_scalar(&rows, stride, n, dk, &mut b);
                    for (i, (x, y)) in a.iter().zip(&b).enumerate() {
                        let (d, j) = (i / BLOCK, i % BLOCK);
                        assert_eq!(x.to_bits(), y.to_bits(), "{} dk {dk} n {n}: channel {d} key {j}", ks.name);
                        let want = if j < n { half::f16::from_le_bytes([rows[j * stride + 2 * d], rows[j * stride + 2 * d + 1]]).to_f32() } else { 0.0 };
                        assert_eq!(y.to_bits(), want.to_bits(), "reference dk {dk} n {n}: channel {d} key {j}");
                    }
                }
            }
        }
        log_tiers_run("attn keys_block", KernelSet::available().iter().map(|s| s.name));
    }

    #[test]
    fn finish_scores_matches_its_reference() {
        for ks in KernelSet::available() {
        let finish_scores = ks.attn.finish_scores;
        let mut rng = StdRng::seed_from_u64(4);
        for n in [16, 9, 1, 0] {
            let s: [f32; BLOCK] = std::array::from_fn(|_| rng.gen_range(-4.0..4.0));
            let mask: Vec<u16> = (0..n)
                .map(|j| {
                    if j % 3 == 0 {
                        0xFC00
                    } else {
                        half::f16::from_f32(rng.gen_range(-2.0..0.0)).to_bits()
                    }
                })
                .collect();
            for m in [None, Some(&mask[..])] {
                let (mut a, mut b) = ([0f32; BLOCK], [0f32; BLOCK]);
                finish_scores(&s, 0.3, 0.7, m, n, &mut a);
                finish_scores_scalar(&s, 0.3, 0.7, m, n, &mut b);
                for j in 0..BLOCK {
                    assert_eq!(
                        a[j].to_bits(),
                        b[j].to_bits(),
                        "{} n={n} j={j}: {} vs {}",
                        ks.name,
                        a[j],
                        b[j]
                    );
                }
            }
        }
        }
        log_tiers_run("attn finish_scores", KernelSet::available().iter().map(|s| s.name));
    }
}
