//! Blocked attention kernels: 16 queries against 16 keys at a time, in f32, on K stored
//! transposed per 16-key block (`kt[(kb * dk + d) * 16 + j]` = key 16 kb + j, channel d) and V
//! in f32 rows. Each has a scalar reference here; the AVX-512 tier keeps one key block (or
//! one 16-wide V column chunk) in registers for all 16 queries.

/// Queries (and keys) per block.
pub const BLOCK: usize = 16;

/// Scores of a 16-query block against one 16-key block: `s[i][j] = dot(q row i, key j)`,
/// q rows `dk` floats apart. Scalar reference.
pub fn scores_block_scalar(q: &[f32], dk: usize, kt: &[f32], s: &mut [[f32; BLOCK]; BLOCK]) {
    assert!(q.len() >= BLOCK * dk && kt.len() >= dk * BLOCK);
    for (i, row) in s.iter_mut().enumerate() {
        for (j, out) in row.iter_mut().enumerate() {
            *out = (0..dk).map(|d| q[i * dk + d] * kt[d * BLOCK + j]).sum();
        }
    }
}

/// `o[i][c] = sum over keys of p[i * p_stride + key] * v[key * dv + c]`, for 16 query rows
/// and keys `0 .. n_keys`. Scalar reference.
pub fn pv_block_scalar(p: &[f32], p_stride: usize, n_keys: usize, v: &[f32], dv: usize, o: &mut [f32]) {
    assert!(p.len() >= (BLOCK - 1) * p_stride + n_keys && v.len() >= n_keys * dv && o.len() >= BLOCK * dv);
    for i in 0..BLOCK {
        for c in 0..dv {
            o[i * dv + c] = (0..n_keys).map(|key| p[i * p_stride + key] * v[key * dv + c]).sum();
        }
    }
}

/// `x[i] = exp(x[i] - max)`, 0 where x is -inf; returns the sum. Scalar reference.
pub fn exp_sub_sum_scalar(x: &mut [f32], max: f32) -> f32 {
    let mut sum = 0.0;
    for v in x.iter_mut() {
        *v = if *v == f32::NEG_INFINITY { 0.0 } else { (*v - max).exp() };
        sum += *v;
    }
    sum
}

/// `out[j] = s[j] * scale + slope * mask[j]` for j < n (-inf where the f16 mask is -inf;
/// no mask: 0), -inf for j in n .. 16. Scalar reference.
pub fn finish_scores_scalar(s: &[f32; BLOCK], scale: f32, slope: f32, mask: Option<&[u16]>, n: usize, out: &mut [f32]) {
    for (j, o) in out[..BLOCK].iter_mut().enumerate() {
        *o = if j >= n {
            f32::NEG_INFINITY
        } else {
            let m = mask.map_or(0.0, |m| half::f16::from_bits(m[j]).to_f32());
            if m == f32::NEG_INFINITY { m } else { s[j] * scale + slope * m }
        };
    }
}

/// [`finish_scores_scalar`] on the fastest tier.
pub fn finish_scores(s: &[f32; BLOCK], scale: f32, slope: f32, mask: Option<&[u16]>, n: usize, out: &mut [f32]) {
    assert!(n <= BLOCK && out.len() >= BLOCK && mask.is_none_or(|m| m.len() >= n));
    #[cfg(target_arch = "x86_64")]
    if fast() {
        // SAFETY: lengths checked; AVX-512F/BW/VL detected (the quant tier's detection).
        return unsafe { avx512::finish_scores(s, scale, slope, mask, n, out) };
    }
    finish_scores_scalar(s, scale, slope, mask, n, out)
}

/// Whether the AVX-512 tier runs here.
pub fn fast() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        crate::backend::kernels::quant::avx512::detected() && !crate::backend::kernels::quant::force_scalar()
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// [`scores_block_scalar`] on the fastest tier.
pub fn scores_block(q: &[f32], dk: usize, kt: &[f32], s: &mut [[f32; BLOCK]; BLOCK]) {
    assert!(q.len() >= BLOCK * dk && kt.len() >= dk * BLOCK);
    #[cfg(target_arch = "x86_64")]
    if fast() {
        // SAFETY: lengths checked; AVX-512F detected.
        return unsafe { avx512::scores_block(q, dk, kt, s) };
    }
    scores_block_scalar(q, dk, kt, s)
}

/// [`pv_block_scalar`] on the fastest tier (AVX-512 needs dv a multiple of 16).
pub fn pv_block(p: &[f32], p_stride: usize, n_keys: usize, v: &[f32], dv: usize, o: &mut [f32]) {
    assert!(p.len() >= (BLOCK - 1) * p_stride + n_keys && v.len() >= n_keys * dv && o.len() >= BLOCK * dv);
    #[cfg(target_arch = "x86_64")]
    if fast() && dv.is_multiple_of(16) {
        // SAFETY: lengths checked; AVX-512F detected; dv is whole vectors.
        return unsafe { avx512::pv_block(p, p_stride, n_keys, v, dv, o) };
    }
    pv_block_scalar(p, p_stride, n_keys, v, dv, o)
}

/// [`exp_sub_sum_scalar`] on the fastest tier (AVX-512: Cephes' polynomial, about 1 ulp).
pub fn exp_sub_sum(x: &mut [f32], max: f32) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if fast() {
        // SAFETY: AVX-512F detected; the kernel stays within x.
        return unsafe { avx512::exp_sub_sum(x, max) };
    }
    exp_sub_sum_scalar(x, max)
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::BLOCK;
    use crate::backend::kernels::vmath::exp_ps;
    use std::arch::x86_64::*;

    /// Callers checked: q holds 16 rows of dk, kt dk * 16 floats.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn scores_block(q: &[f32], dk: usize, kt: &[f32], s: &mut [[f32; BLOCK]; BLOCK]) {
        let (qp, kp) = (q.as_ptr(), kt.as_ptr());
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

    /// Callers checked the lengths; dv is a multiple of 16.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn pv_block(p: &[f32], p_stride: usize, n_keys: usize, v: &[f32], dv: usize, o: &mut [f32]) {
        let (pp, vp, op) = (p.as_ptr(), v.as_ptr(), o.as_mut_ptr());
        for c in (0..dv).step_by(16) {
            let mut acc = [_mm512_setzero_ps(); BLOCK];
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

    #[target_feature(enable = "avx512f,avx512bw,avx512vl,f16c")]
    pub unsafe fn finish_scores(s: &[f32; BLOCK], scale: f32, slope: f32, mask: Option<&[u16]>, n: usize, out: &mut [f32]) {
        let valid: __mmask16 = if n >= 16 { 0xFFFF } else { (1u16 << n) - 1 };
        let x = _mm512_mul_ps(_mm512_loadu_ps(s.as_ptr()), _mm512_set1_ps(scale));
        let ninf = _mm512_set1_ps(f32::NEG_INFINITY);
        let r = match mask {
            None => x,
            Some(m) => {
                let mv = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(valid, m.as_ptr() as *const i16));
                let hidden = _mm512_cmp_ps_mask::<_CMP_EQ_OQ>(mv, ninf);
                _mm512_mask_mov_ps(_mm512_fmadd_ps(mv, _mm512_set1_ps(slope), x), hidden, ninf)
            }
        };
        _mm512_storeu_ps(out.as_mut_ptr(), _mm512_mask_mov_ps(ninf, valid, r));
    }

    #[target_feature(enable = "avx512f")]
    pub unsafe fn exp_sub_sum(x: &mut [f32], max: f32) -> f32 {
        let m = _mm512_set1_ps(max);
        let mut sum = _mm512_setzero_ps();
        let n = x.len();
        let xp = x.as_mut_ptr();
        let mut i = 0;
        while i < n {
            let k: __mmask16 = if n - i >= 16 { 0xFFFF } else { (1u16 << (n - i)) - 1 };
            let v = _mm512_maskz_loadu_ps(k, xp.add(i));
            // -inf - max stays -inf, which exp_ps maps to 0.
            let e = _mm512_maskz_mov_ps(k, exp_ps(_mm512_sub_ps(v, m)));
            _mm512_mask_storeu_ps(xp.add(i), k, e);
            sum = _mm512_add_ps(sum, e);
            i += 16;
        }
        _mm512_reduce_add_ps(sum)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{rngs::StdRng, Rng, SeedableRng};

    #[test]
    fn blocked_kernels_match_their_references() {
        let mut rng = StdRng::seed_from_u64(9);
        for &(dk, dv, n_keys, p_stride) in &[(128, 128, 16, 16), (40, 48, 13, 29), (64, 16, 1, 7), (7, 32, 37, 40)] {
            let q: Vec<f32> = (0..BLOCK * dk).map(|_| rng.gen_range(-1.0..1.0)).collect();
            let kt: Vec<f32> = (0..BLOCK * dk).map(|_| rng.gen_range(-1.0..1.0)).collect();
            let (mut a, mut b) = ([[0f32; BLOCK]; BLOCK], [[0f32; BLOCK]; BLOCK]);
            scores_block(&q, dk, &kt, &mut a);
            scores_block_scalar(&q, dk, &kt, &mut b);
            for i in 0..BLOCK {
                for j in 0..BLOCK {
                    assert!((a[i][j] - b[i][j]).abs() <= 1e-5 * dk as f32, "scores dk={dk} ({i},{j})");
                }
            }
            let p: Vec<f32> = (0..BLOCK * p_stride).map(|_| rng.gen_range(0.0..1.0)).collect();
            let v: Vec<f32> = (0..n_keys * dv).map(|_| rng.gen_range(-1.0..1.0)).collect();
            let (mut o1, mut o2) = (vec![0f32; BLOCK * dv], vec![0f32; BLOCK * dv]);
            pv_block(&p, p_stride, n_keys, &v, dv, &mut o1);
            pv_block_scalar(&p, p_stride, n_keys, &v, dv, &mut o2);
            for (i, (x, y)) in o1.iter().zip(&o2).enumerate() {
                assert!((x - y).abs() <= 1e-5 * n_keys as f32, "pv dv={dv} keys={n_keys} at {i}: {x} vs {y}");
            }
        }
    }

    #[test]
    fn finish_scores_matches_its_reference() {
        let mut rng = StdRng::seed_from_u64(4);
        for n in [16, 9, 1, 0] {
            let s: [f32; BLOCK] = std::array::from_fn(|_| rng.gen_range(-4.0..4.0));
            let mask: Vec<u16> = (0..n).map(|j| if j % 3 == 0 { 0xFC00 } else { half::f16::from_f32(rng.gen_range(-2.0..0.0)).to_bits() }).collect();
            for m in [None, Some(&mask[..])] {
                let (mut a, mut b) = ([0f32; BLOCK], [0f32; BLOCK]);
                finish_scores(&s, 0.3, 0.7, m, n, &mut a);
                finish_scores_scalar(&s, 0.3, 0.7, m, n, &mut b);
                for j in 0..BLOCK {
                    assert!(a[j] == b[j] || (a[j] - b[j]).abs() <= 1e-6 * b[j].abs(), "n={n} j={j}: {} vs {}", a[j], b[j]);
                }
            }
        }
    }

    #[test]
    fn exp_matches_libm_within_a_few_ulp_and_maps_minus_infinity_to_zero() {
        let mut xs: Vec<f32> = (0..2000).map(|i| -(i as f32) * 0.05).collect();
        xs.extend([f32::NEG_INFINITY, -87.0, -87.5, -100.0, 0.0, -1e-7, 3.0]);
        for n in [xs.len(), 17, 5] {
            let (mut a, mut b) = (xs[..n].to_vec(), xs[..n].to_vec());
            let sa = exp_sub_sum(&mut a, 1.5);
            let sb = exp_sub_sum_scalar(&mut b, 1.5);
            for (i, (x, y)) in a.iter().zip(&b).enumerate() {
                let tol = 4.0 * f32::EPSILON * y.abs() + if *y < 1.2e-38 { 1.2e-38 } else { 0.0 };
                assert!((x - y).abs() <= tol, "exp({} - 1.5): {x} vs {y}", xs[i]);
            }
            assert!((sa - sb).abs() <= 1e-5 * sb, "{sa} vs {sb}");
            if n == xs.len() {
                assert_eq!(a[2000], 0.0, "exp(-inf) is 0");
            }
        }
    }
}
