//! f16 vector helpers for attention: `acc += s * v` with v in f16, fused so the V row
//! is converted in registers rather than through a temporary buffer.

use half::f16;

/// Scalar reference: acc[i] += s * v[i], v given as little-endian f16 bytes.
pub fn axpy_f16_scalar(acc: &mut [f32], v: &[u8], s: f32) {
    assert!(
        v.len() >= acc.len() * 2,
        "axpy_f16: v holds {} bytes, need {}",
        v.len(),
        acc.len() * 2
    );
    for (i, a) in acc.iter_mut().enumerate() {
        *a += s * f16::from_le_bytes([v[2 * i], v[2 * i + 1]]).to_f32();
    }
}

/// acc[i] += s * v[i] on the fastest path this CPU has.
pub fn axpy_f16(acc: &mut [f32], v: &[u8], s: f32) {
    #[cfg(target_arch = "x86_64")]
    if avx512_ok() && !super::quant::force_scalar() {
        assert!(
            v.len() >= acc.len() * 2,
            "axpy_f16: v holds {} bytes, need {}",
            v.len(),
            acc.len() * 2
        );
        // SAFETY: AVX-512F and F16C were detected; lengths checked above.
        unsafe { axpy_f16_avx512(acc, v, s) };
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if avx2_ok() && !super::quant::force_scalar() {
        assert!(v.len() >= acc.len() * 2, "axpy_f16: v holds {} bytes, need {}", v.len(), acc.len() * 2);
        // SAFETY: AVX2, FMA and F16C were detected; lengths checked above.
        unsafe { axpy_f16_avx2(acc, v, s) };
        return;
    }
    axpy_f16_scalar(acc, v, s)
}

#[cfg(target_arch = "x86_64")]
fn avx2_ok() -> bool {
    super::quant::avx2::detected()
}

/// As [`axpy_f16_avx512`] in 8-lane steps (CPUs without AVX-512).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn axpy_f16_avx2(acc: &mut [f32], v: &[u8], s: f32) {
    use std::arch::x86_64::*;
    let n = acc.len();
    let vs = _mm256_set1_ps(s);
    let (pa, pv) = (acc.as_mut_ptr(), v.as_ptr());
    let mut i = 0;
    while i + 8 <= n {
        // SAFETY (caller): 8 f32 at pa+i and 8 f16 at pv+2i are in bounds.
        let x = _mm256_cvtph_ps(_mm_loadu_si128(pv.add(2 * i) as *const __m128i));
        _mm256_storeu_ps(pa.add(i), _mm256_fmadd_ps(x, vs, _mm256_loadu_ps(pa.add(i))));
        i += 8;
    }
    while i < n {
        *pa.add(i) += s * f16::from_le_bytes([*pv.add(2 * i), *pv.add(2 * i + 1)]).to_f32();
        i += 1;
    }
}

#[cfg(target_arch = "x86_64")]
fn avx512_ok() -> bool {
    use std::sync::OnceLock;
    static OK: OnceLock<bool> = OnceLock::new();
    *OK.get_or_init(|| is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("f16c"))
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,f16c")]
unsafe fn axpy_f16_avx512(acc: &mut [f32], v: &[u8], s: f32) {
    use std::arch::x86_64::*;
    let n = acc.len();
    let vs = _mm512_set1_ps(s);
    let (pa, pv) = (acc.as_mut_ptr(), v.as_ptr());
    let mut i = 0;
    while i + 16 <= n {
        // SAFETY (caller): 16 f32 at pa+i and 16 f16 at pv+2i are in bounds.
        let h = _mm256_loadu_si256(pv.add(2 * i) as *const __m256i);
        let x = _mm512_cvtph_ps(h);
        let a = _mm512_loadu_ps(pa.add(i));
        _mm512_storeu_ps(pa.add(i), _mm512_fmadd_ps(x, vs, a));
        i += 16;
    }
    while i < n {
        *pa.add(i) += s * f16::from_le_bytes([*pv.add(2 * i), *pv.add(2 * i + 1)]).to_f32();
        i += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{rngs::StdRng, Rng, SeedableRng};

    #[test]
    fn fast_axpy_matches_scalar_on_odd_lengths_and_offsets() {
        let mut rng = StdRng::seed_from_u64(9);
        for n in [1usize, 15, 16, 17, 40, 128, 131] {
            for off in [0usize, 2, 6] {
                let v: Vec<u8> = (0..off + 2 * n)
                    .flat_map(|_| f16::from_f32(rng.gen_range(-2.0..2.0)).to_le_bytes())
                    .take(off + 2 * n)
                    .collect();
                let a0: Vec<f32> = (0..n).map(|_| rng.gen_range(-1.0..1.0)).collect();
                let (mut a, mut b) = (a0.clone(), a0.clone());
                axpy_f16(&mut a, &v[off..], 0.37);
                axpy_f16_scalar(&mut b, &v[off..], 0.37);
                for i in 0..n {
                    assert!(
                        (a[i] - b[i]).abs() <= 1e-6 * (1.0 + b[i].abs()),
                        "n {n} off {off} i {i}"
                    );
                }
                // The reference itself: acc + s*v.
                let want = a0[0] + 0.37 * f16::from_le_bytes([v[off], v[off + 1]]).to_f32();
                assert!((b[0] - want).abs() < 1e-6);
            }
        }
    }

    #[test]
    #[should_panic(expected = "axpy_f16")]
    fn short_v_panics() {
        let mut a = vec![0f32; 8];
        axpy_f16(&mut a, &[0u8; 15], 1.0);
    }
}
