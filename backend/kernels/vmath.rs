//! Vector math shared by the ops: exp and the SiLU gate, each with its scalar reference.

/// `out[i] = silu(x[i]) * g[i]`, silu(x) = x / (1 + exp(-x)). Scalar reference.
pub fn silu_mul_scalar(x: &[f32], g: &[f32], out: &mut [f32]) {
    for ((o, &xv), &gv) in out.iter_mut().zip(x).zip(g) {
        *o = xv / (1.0 + (-xv).exp()) * gv;
    }
}

/// [`silu_mul_scalar`] on the fastest tier (`g` = None: silu alone).
pub fn silu_mul(x: &[f32], g: Option<&[f32]>, out: &mut [f32]) {
    let n = out.len();
    assert!(x.len() >= n && g.is_none_or(|g| g.len() >= n));
    #[cfg(target_arch = "x86_64")]
    if crate::backend::kernels::quant::avx512::detected() && !crate::backend::kernels::quant::force_scalar() {
        // SAFETY: lengths checked; AVX-512F detected.
        return unsafe { avx512::silu_mul(x, g, out) };
    }
    match g {
        Some(g) => silu_mul_scalar(x, g, out),
        None => {
            for (o, &xv) in out.iter_mut().zip(x) {
                *o = xv / (1.0 + (-xv).exp());
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) use avx512::exp_ps;

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    /// exp(x) (Cephes expf: range reduction by ln 2, degree-6 polynomial, about 1 ulp);
    /// 0 below -87.3 (where expf is subnormal) and for -inf; inputs above 88.3 clamp there.
    #[inline(always)]
    pub unsafe fn exp_ps(x: __m512) -> __m512 {
        let lo = _mm512_set1_ps(-87.336_55);
        let under = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(x, lo);
        let x = _mm512_min_ps(_mm512_max_ps(x, lo), _mm512_set1_ps(88.376_26));
        let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm512_mul_ps(x, _mm512_set1_ps(std::f32::consts::LOG2_E)));
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693_359_4), x);
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.121_944_4e-4), r);
        let mut p = _mm512_set1_ps(1.987_569_1e-4);
        for c in [1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 0.166_666_65, 0.5] {
            p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
        }
        let p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0)));
        _mm512_maskz_mov_ps(!under, _mm512_scalef_ps(p, n))
    }

    /// Callers checked: x (and g) hold out.len() floats.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn silu_mul(x: &[f32], g: Option<&[f32]>, out: &mut [f32]) {
        let n = out.len();
        let one = _mm512_set1_ps(1.0);
        let mut i = 0;
        while i < n {
            let k: __mmask16 = if n - i >= 16 { 0xFFFF } else { (1u16 << (n - i)) - 1 };
            let xv = _mm512_maskz_loadu_ps(k, x.as_ptr().add(i));
            let e = exp_ps(_mm512_sub_ps(_mm512_setzero_ps(), xv));
            let mut s = _mm512_div_ps(xv, _mm512_add_ps(one, e));
            if let Some(g) = g {
                s = _mm512_mul_ps(s, _mm512_maskz_loadu_ps(k, g.as_ptr().add(i)));
            }
            _mm512_mask_storeu_ps(out.as_mut_ptr().add(i), k, s);
            i += 16;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn silu_mul_matches_its_reference_over_the_whole_range() {
        let x: Vec<f32> = (0..4001).map(|i| (i as f32 - 2000.0) * 0.05).chain([-200.0, 200.0, 0.0, -1e-30]).collect();
        let g: Vec<f32> = (0..x.len()).map(|i| 1.0 + (i % 7) as f32 * 0.25).collect();
        for n in [x.len(), 33, 1] {
            let (mut a, mut b) = (vec![0f32; n], vec![0f32; n]);
            silu_mul(&x[..n], Some(&g[..n]), &mut a);
            silu_mul_scalar(&x[..n], &g[..n], &mut b);
            for i in 0..n {
                assert!((a[i] - b[i]).abs() <= 4.0 * f32::EPSILON * b[i].abs() + 1e-30, "silu({}) * {}: {} vs {}", x[i], g[i], a[i], b[i]);
            }
            silu_mul(&x[..n], None, &mut a);
            for i in 0..n {
                assert!((a[i] - b[i] / g[i]).abs() <= 4.0 * f32::EPSILON * a[i].abs() + 1e-30, "silu({})", x[i]);
            }
        }
    }
}
