//! f16 vector helpers for attention: `acc += s * v` with v in f16, fused so the V row
//! is converted in registers rather than through a temporary buffer (a member of each
//! tier's attention kernels, `attn::Kernels::axpy_f16`).

use half::f16;

/// Scalar reference: acc[i] += s * v[i], v given as little-endian f16 bytes.
pub fn axpy_f16_scalar(acc: &mut [f32], v: &[u8], s: f32) {
    check_axpy(acc, v);
    for (i, a) in acc.iter_mut().enumerate() {
        *a += s * f16::from_le_bytes([v[2 * i], v[2 * i + 1]]).to_f32();
    }
}

fn check_axpy(acc: &[f32], v: &[u8]) {
    assert!(v.len() >= acc.len() * 2, "axpy_f16: v holds {} bytes, need {}", v.len(), acc.len() * 2);
}

/// The AVX2 + FMA + F16C axpy, when this CPU runs it.
#[cfg(target_arch = "x86_64")]
pub(crate) fn avx2_axpy() -> Option<super::attn::AxpyF16Fn> {
    fn axpy(acc: &mut [f32], v: &[u8], s: f32) {
        check_axpy(acc, v);
        // SAFETY: lengths checked; reachable only through avx2_axpy(), which checked the
        // features.
        unsafe { axpy_f16_avx2(acc, v, s) }
    }
    (is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c")).then_some(axpy as super::attn::AxpyF16Fn)
}

/// The AVX-512 axpy, when this CPU runs it.
#[cfg(target_arch = "x86_64")]
pub(crate) fn avx512_axpy() -> Option<super::attn::AxpyF16Fn> {
    fn axpy(acc: &mut [f32], v: &[u8], s: f32) {
        check_axpy(acc, v);
        // SAFETY: lengths checked; reachable only through avx512_axpy(), which checked the
        // features.
        unsafe { axpy_f16_avx512(acc, v, s) }
    }
    (is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("f16c")).then_some(axpy as super::attn::AxpyF16Fn)
}

/// The NEON axpy (FCVTL converts f16 in every aarch64 CPU's Advanced SIMD).
#[cfg(target_arch = "aarch64")]
pub(crate) fn neon_axpy() -> Option<super::attn::AxpyF16Fn> {
    fn axpy(acc: &mut [f32], v: &[u8], s: f32) {
        check_axpy(acc, v);
        // SAFETY: lengths checked; NEON is baseline on aarch64.
        unsafe { axpy_f16_neon(acc, v, s) }
    }
    Some(axpy as super::attn::AxpyF16Fn)
}

/// As [`axpy_f16_avx512`] in 8- then 4-lane steps (FCVTL / FCVTL2, FMLA).
#[cfg(target_arch = "aarch64")]
unsafe fn axpy_f16_neon(acc: &mut [f32], v: &[u8], s: f32) {
    use std::arch::aarch64::*;
    let n = acc.len();
    let (pa, pv) = (acc.as_mut_ptr(), v.as_ptr());
    let mut i = 0;
    // SAFETY: NEON is baseline on aarch64; the only caller is the `axpy` that `neon_axpy()`
    // hands out, which checked `v` holds 2 bytes per `acc` element, so every pointer below
    // stays within `acc` and `v` (f16 read as bytes: v need not be 2-byte aligned; lanes
    // little-endian).
    unsafe {
        let vs = vdupq_n_f32(s);
        while i + 8 <= n {
            let h = vreinterpretq_u16_u8(vld1q_u8(pv.add(2 * i)));
            let (lo, hi) = (vcvt_f32_f16(vreinterpret_f16_u16(vget_low_u16(h))), vcvt_high_f32_f16(vreinterpretq_f16_u16(h)));
            vst1q_f32(pa.add(i), vfmaq_f32(vld1q_f32(pa.add(i)), lo, vs));
            vst1q_f32(pa.add(i + 4), vfmaq_f32(vld1q_f32(pa.add(i + 4)), hi, vs));
            i += 8;
        }
        if i + 4 <= n {
            let x = vcvt_f32_f16(vreinterpret_f16_u16(vreinterpret_u16_u8(vld1_u8(pv.add(2 * i)))));
            vst1q_f32(pa.add(i), vfmaq_f32(vld1q_f32(pa.add(i)), x, vs));
            i += 4;
        }
        while i < n {
            *pa.add(i) += s * f16::from_le_bytes([*pv.add(2 * i), *pv.add(2 * i + 1)]).to_f32();
            i += 1;
        }
    }
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
    // SAFETY: the only caller is the `axpy` that `avx2_axpy()` hands out once it has checked
    // this CPU has AVX2, FMA and F16C; it checked `v` holds 2 bytes per `acc` element, so every
    // pointer below stays within `acc` and `v`.
    unsafe {
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
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,f16c")]
unsafe fn axpy_f16_avx512(acc: &mut [f32], v: &[u8], s: f32) {
    use std::arch::x86_64::*;
    let n = acc.len();
    let vs = _mm512_set1_ps(s);
    let (pa, pv) = (acc.as_mut_ptr(), v.as_ptr());
    let mut i = 0;
    // SAFETY: the only caller is the `axpy` that `avx512_axpy()` hands out once it has checked
    // this CPU has AVX-512F and F16C; it checked `v` holds 2 bytes per `acc` element, so every
    // pointer below stays within `acc` and `v`.
    unsafe {
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::registry::log_tiers_run;
    use crate::kernels::KernelSet;
    use rand::{rngs::StdRng, Rng, SeedableRng};

    #[test]
    fn fast_axpy_matches_scalar_on_odd_lengths_and_offsets() {
        for ks in KernelSet::available() {
        let axpy_f16 = ks.attn.axpy_f16;
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
        log_tiers_run("attn axpy_f16", KernelSet::available().iter().map(|s| s.name));
    }

    #[test]
    fn short_v_panics_on_every_tier() {
        for ks in KernelSet::available() {
            let r = std::panic::catch_unwind(|| (ks.attn.axpy_f16)(&mut [0f32; 8], &[0u8; 15], 1.0));
            let msg = r.expect_err("a short v is refused");
            let msg = msg.downcast_ref::<String>().map(String::as_str).unwrap_or("");
            assert!(msg.contains("axpy_f16"), "{}: {msg}", ks.name);
        }
    }
}
