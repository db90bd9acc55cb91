//! Vector math shared by the ops: exp, the SiLU gate and softmax, computed exactly as
//! ggml-cpu computes them (on x86 its AVX-512 `ggml_v_expf` for whole 16-lane chunks, libm's
//! `expf` for the tail, the same operation order), so SMEPilot's results are bit-identical
//! to the CPU backend's. That matters more than it seems: a one-ulp difference here flips
//! int8 activation roundings later, and those grow through the layers (README, numerics).
//!
//! Each function has a portable scalar tier that mirrors the vector one operation by
//! operation (fused multiply-adds included), so the tiers agree bit for bit. CPUs without
//! AVX-512 run ggml's AVX2 loops instead (8 lanes, a different exp), mirrored by their own
//! scalar references (`*_avx2`), since that is what ggml-cpu runs there. On aarch64 ggml
//! runs its NEON loops: 4 lanes, with an exp that is the AVX2 one operation for operation
//! (both adapted from Arm's optimized routines), mirrored by the `*_neon` references.

/// Lanes of ggml's x86 vector loops (AVX-512).
pub const LANES: usize = 16;

// ggml_v_expf's constants (ggml-cpu/vec.h), by their bits so no decimal rounding intervenes.
const EXP_SHIFT: f32 = f32::from_bits(0x4b40_0000); // 0x1.8p23
const EXP_LOG2E: f32 = f32::from_bits(0x3fb8_aa3b); // 0x1.715476p+0
const EXP_LN2_HI: f32 = f32::from_bits(0x3f31_7200); // 0x1.62e4p-1
const EXP_LN2_LO: f32 = f32::from_bits(0x35bf_be8e); // 0x1.7f7d1cp-20
const EXP_C: [f32; 5] = [
    f32::from_bits(0x3f7f_fff6), // 0x1.ffffecp-1
    f32::from_bits(0x3eff_fedb), // 0x1.fffdb6p-2
    f32::from_bits(0x3e2a_af33), // 0x1.555e66p-3
    f32::from_bits(0x3d2b_9f17), // 0x1.573e2ep-5
    f32::from_bits(0x3c07_2010), // 0x1.0e4020p-7
];

/// ggml_v_expf on one lane: exp(x) by range reduction to b = x - n ln 2 and a degree-5
/// polynomial, scaled by 2^n; |n| > 192 gives 0 or +inf.
pub fn expf_ggml(x: f32) -> f32 {
    let z = x.mul_add(EXP_LOG2E, EXP_SHIFT);
    let n = z - EXP_SHIFT;
    let b = (-n).mul_add(EXP_LN2_LO, (-n).mul_add(EXP_LN2_HI, x));
    if n.abs() > 192.0 {
        return if n <= 0.0 { 0.0 } else { f32::INFINITY };
    }
    let u = b * b;
    let j = EXP_C[4]
        .mul_add(b, EXP_C[3])
        .mul_add(u, EXP_C[2].mul_add(b, EXP_C[1]))
        .mul_add(u, EXP_C[0].mul_add(b, 1.0));
    // vscalefps: j * 2^n rounded once (exact in f64, then one rounding to f32).
    (j as f64 * 2f64.powi(n as i32)) as f32
}

/// Lanes of ggml's AVX2 loops (x86 CPUs without AVX-512).
pub const LANES_AVX2: usize = 8;

/// ggml_v_expf's AVX2 + FMA version on one lane: the same range reduction, but the
/// polynomial gives exp(b) - 1, scaled by 2^n as k + j k with k built from the exponent
/// bits, and |n| > 126 takes a split scaling (s1, s2) so 2^n does not overflow on the way.
pub fn expf_ggml_avx2(x: f32) -> f32 {
    let z = x.mul_add(EXP_LOG2E, EXP_SHIFT);
    let n = z - EXP_SHIFT;
    let b = (-n).mul_add(EXP_LN2_LO, (-n).mul_add(EXP_LN2_HI, x));
    let e = z.to_bits() << 23;
    let k = f32::from_bits(e.wrapping_add(1f32.to_bits()));
    let u = b * b;
    let j = EXP_C[4].mul_add(b, EXP_C[3]).mul_add(u, EXP_C[2].mul_add(b, EXP_C[1])).mul_add(u, EXP_C[0] * b);
    if n.abs() <= 126.0 || n.is_nan() {
        return j.mul_add(k, k);
    }
    let g: u32 = if n <= 0.0 { 0x8200_0000 } else { 0 };
    let s1 = f32::from_bits(g.wrapping_add(0x7f00_0000));
    let s2 = f32::from_bits(e.wrapping_sub(g));
    if n.abs() > 192.0 {
        s1 * s1
    } else {
        s2.mul_add(j, s2) * s1
    }
}

/// Lanes of ggml's NEON loops (aarch64 without SVE).
pub const LANES_NEON: usize = 4;

/// ggml_v_expf's NEON version on one lane: the AVX2 one's operations in the same order
/// (`vfmaq` / `vfmsq` for the fused steps, `vcagtq` for |n| > 126 and > 192), so the
/// same function.
pub fn expf_ggml_neon(x: f32) -> f32 {
    expf_ggml_avx2(x)
}

/// silu(x) = x / (1 + exp(-x)) as ggml_v_silu computes one lane.
fn silu_lane(x: f32) -> f32 {
    x / (1.0 + expf_ggml(0.0 - x))
}

/// As [`silu_lane`] with the AVX2 exp.
fn silu_lane_avx2(x: f32) -> f32 {
    x / (1.0 + expf_ggml_avx2(0.0 - x))
}

/// silu(x) as ggml's scalar tail computes it (libm expf).
fn silu_libm(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

/// Sum of 16 lanes in the order x86's `_mm512_reduce_add_ps` takes: halves added
/// lane-wise (8, then 4, 2, 1 lanes apart).
pub fn reduce16(v: &[f32; LANES]) -> f32 {
    let mut a = *v;
    for h in [8, 4, 2, 1] {
        for i in 0..h {
            a[i] += a[i + h];
        }
    }
    a[0]
}

/// `out[i] = silu(x[i]) * g[i]` (`g` = None: silu alone), as ggml_vec_swiglu_f32 /
/// ggml_vec_silu_f32. Scalar tier.
pub fn silu_mul_scalar(x: &[f32], g: Option<&[f32]>, out: &mut [f32]) {
    let n = out.len();
    let whole = n - n % LANES;
    for i in 0..n {
        let s = if i < whole {
            silu_lane(x[i])
        } else {
            silu_libm(x[i])
        };
        out[i] = match g {
            Some(g) => s * g[i],
            None => s,
        };
    }
}

/// As [`silu_mul_scalar`] in the order of ggml's AVX2 loop (8 lanes, its exp): the
/// reference of the AVX2 tier.
pub fn silu_mul_scalar_avx2(x: &[f32], g: Option<&[f32]>, out: &mut [f32]) {
    let n = out.len();
    let whole = n - n % LANES_AVX2;
    for i in 0..n {
        let s = if i < whole { silu_lane_avx2(x[i]) } else { silu_libm(x[i]) };
        out[i] = match g {
            Some(g) => s * g[i],
            None => s,
        };
    }
}

/// As [`silu_mul_scalar`] in the order of ggml's NEON loop (4 lanes, its exp): the
/// reference of the NEON tier.
pub fn silu_mul_scalar_neon(x: &[f32], g: Option<&[f32]>, out: &mut [f32]) {
    let n = out.len();
    let whole = n - n % LANES_NEON;
    for i in 0..n {
        let s = if i < whole { x[i] / (1.0 + expf_ggml_neon(0.0 - x[i])) } else { silu_libm(x[i]) };
        out[i] = match g {
            Some(g) => s * g[i],
            None => s,
        };
    }
}

/// Which of ggml's vector loops a tier reproduces (operation order and exp).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Order {
    /// ggml's AVX-512 loops: 16 lanes (the scalar tier follows it too).
    Lanes16,
    /// ggml's AVX2 loops: 8 lanes, its own exp.
    Lanes8,
    /// ggml's NEON loops: 4 lanes, the AVX2 exp, `vaddvq` sums.
    Lanes4,
}

/// SiLU (times a gate when given): `out[i] = silu(x[i]) * g[i]`; x and g hold out.len().
pub type SiluMulFn = fn(x: &[f32], g: Option<&[f32]>, out: &mut [f32]);
/// `y[i] = exp(y[i] - max)` in place; returns the sum in f64.
pub type SoftMaxFn = fn(y: &mut [f32], max: f32) -> f64;

/// One tier's vector math.
#[derive(Clone, Copy)]
pub struct Kernels {
    pub order: Order,
    pub silu_mul: SiluMulFn,
    pub soft_max: SoftMaxFn,
}

impl Kernels {
    /// The scalar kernels this tier agrees with bit for bit.
    pub fn reference(&self) -> Kernels {
        match self.order {
            Order::Lanes16 => SCALAR,
            Order::Lanes8 => SCALAR_LANES8,
            Order::Lanes4 => SCALAR_LANES4,
        }
    }
}

/// The portable tier, in the order of ggml's AVX-512 loops.
pub const SCALAR: Kernels = Kernels { order: Order::Lanes16, silu_mul: silu_mul_scalar, soft_max: soft_max_scalar };
/// Scalar mirrors of ggml's AVX2 loops: the reference of the AVX2 tier.
pub const SCALAR_LANES8: Kernels = Kernels { order: Order::Lanes8, silu_mul: silu_mul_scalar_avx2, soft_max: soft_max_scalar_avx2 };
/// Scalar mirrors of ggml's NEON loops: the reference of the NEON tier.
pub const SCALAR_LANES4: Kernels = Kernels { order: Order::Lanes4, silu_mul: silu_mul_scalar_neon, soft_max: soft_max_scalar_neon };

/// The NEON tier (Advanced SIMD is part of every aarch64 CPU).
#[cfg(target_arch = "aarch64")]
pub(crate) fn neon_kernels() -> Option<Kernels> {
    fn silu_mul(x: &[f32], g: Option<&[f32]>, out: &mut [f32]) {
        let n = out.len();
        assert!(x.len() >= n && g.is_none_or(|g| g.len() >= n), "silu_mul: inputs shorter than the output");
        // SAFETY: lengths checked; NEON is baseline on aarch64.
        unsafe { neon::silu_mul(x, g, out) }
    }
    fn soft_max(y: &mut [f32], max: f32) -> f64 {
        // SAFETY: NEON is baseline on aarch64; the kernel stays within y.
        unsafe { neon::soft_max(y, max) }
    }
    Some(Kernels { order: Order::Lanes4, silu_mul, soft_max })
}

/// The AVX2 + FMA tier, when this CPU runs it.
#[cfg(target_arch = "x86_64")]
pub(crate) fn avx2_kernels() -> Option<Kernels> {
    fn silu_mul(x: &[f32], g: Option<&[f32]>, out: &mut [f32]) {
        let n = out.len();
        assert!(x.len() >= n && g.is_none_or(|g| g.len() >= n), "silu_mul: inputs shorter than the output");
        // SAFETY: lengths checked; reachable only through avx2_kernels(), which checked AVX2
        // and FMA.
        unsafe { avx2::silu_mul(x, g, out) }
    }
    fn soft_max(y: &mut [f32], max: f32) -> f64 {
        // SAFETY: as above; the kernel stays within y.
        unsafe { avx2::soft_max(y, max) }
    }
    (is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")).then_some(Kernels { order: Order::Lanes8, silu_mul, soft_max })
}

/// The AVX-512 tier, when this CPU runs it.
#[cfg(target_arch = "x86_64")]
pub(crate) fn avx512_kernels() -> Option<Kernels> {
    fn silu_mul(x: &[f32], g: Option<&[f32]>, out: &mut [f32]) {
        let n = out.len();
        assert!(x.len() >= n && g.is_none_or(|g| g.len() >= n), "silu_mul: inputs shorter than the output");
        // SAFETY: lengths checked; reachable only through avx512_kernels(), which checked
        // AVX-512F.
        unsafe { avx512::silu_mul(x, g, out) }
    }
    fn soft_max(y: &mut [f32], max: f32) -> f64 {
        // SAFETY: as above; the kernel stays within y.
        unsafe { avx512::soft_max(y, max) }
    }
    is_x86_feature_detected!("avx512f").then_some(Kernels { order: Order::Lanes16, silu_mul, soft_max })
}

/// `y[i] = exp(y[i] - max)` in place; returns the sum in f64, as ggml_vec_soft_max_f32
/// (each 16-lane chunk reduced in f32, then added in f64; the tail with libm expf).
/// Scalar tier.
pub fn soft_max_scalar(y: &mut [f32], max: f32) -> f64 {
    let n = y.len();
    let whole = n - n % LANES;
    let mut sum = 0f64;
    for c in y[..whole].chunks_exact_mut(LANES) {
        let mut e = [0f32; LANES];
        for (o, v) in e.iter_mut().zip(c.iter_mut()) {
            *o = expf_ggml(*v - max);
            *v = *o;
        }
        sum += reduce16(&e) as f64;
    }
    for v in &mut y[whole..] {
        *v = (*v - max).exp();
        sum += *v as f64;
    }
    sum
}

/// As [`soft_max_scalar`] in the order of ggml's AVX2 loop: 8-lane chunks with its exp,
/// each reduced as (hi + lo) 4 lanes, then 2, then 1 (`movehl`, `movehdup`), added in f64.
/// The reference of the AVX2 tier.
pub fn soft_max_scalar_avx2(y: &mut [f32], max: f32) -> f64 {
    let n = y.len();
    let whole = n - n % LANES_AVX2;
    let mut sum = 0f64;
    for c in y[..whole].chunks_exact_mut(LANES_AVX2) {
        for v in c.iter_mut() {
            *v = expf_ggml_avx2(*v - max);
        }
        let q: [f32; 4] = std::array::from_fn(|i| c[i + 4] + c[i]);
        let (a0, a1) = (q[0] + q[2], q[1] + q[3]);
        sum += (a0 + a1) as f64;
    }
    for v in &mut y[whole..] {
        *v = (*v - max).exp();
        sum += *v as f64;
    }
    sum
}

/// As [`soft_max_scalar`] in the order of ggml's NEON loop: 4-lane chunks with its exp,
/// each reduced as `vaddvq_f32` does ((l0 + l1) + (l2 + l3), two pairwise adds), added in
/// f64. The reference of the NEON tier.
pub fn soft_max_scalar_neon(y: &mut [f32], max: f32) -> f64 {
    let n = y.len();
    let whole = n - n % LANES_NEON;
    let mut sum = 0f64;
    for c in y[..whole].chunks_exact_mut(LANES_NEON) {
        for v in c.iter_mut() {
            *v = expf_ggml_neon(*v - max);
        }
        sum += ((c[0] + c[1]) + (c[2] + c[3])) as f64;
    }
    for v in &mut y[whole..] {
        *v = (*v - max).exp();
        sum += *v as f64;
    }
    sum
}

#[cfg(target_arch = "aarch64")]
mod neon {
    use super::*;
    use std::arch::aarch64::*;

    /// ggml_v_expf (NEON), instruction for instruction.
    #[inline(always)]
    pub(super) unsafe fn exp_ps(x: float32x4_t) -> float32x4_t {
        // SAFETY: NEON is baseline on aarch64; the intrinsics only compute on registers.
        unsafe {
            let r = vdupq_n_f32(EXP_SHIFT);
            let z = vfmaq_f32(r, x, vdupq_n_f32(EXP_LOG2E));
            let n = vsubq_f32(z, r);
            let b = vfmsq_f32(vfmsq_f32(x, n, vdupq_n_f32(EXP_LN2_HI)), n, vdupq_n_f32(EXP_LN2_LO));
            let e = vshlq_n_u32::<23>(vreinterpretq_u32_f32(z));
            let k = vreinterpretq_f32_u32(vaddq_u32(e, vreinterpretq_u32_f32(vdupq_n_f32(1.0))));
            let c = vcagtq_f32(n, vdupq_n_f32(126.0));
            let u = vmulq_f32(b, b);
            let j = vfmaq_f32(
                vmulq_f32(vdupq_n_f32(EXP_C[0]), b),
                vfmaq_f32(
                    vfmaq_f32(vdupq_n_f32(EXP_C[1]), vdupq_n_f32(EXP_C[2]), b),
                    vfmaq_f32(vdupq_n_f32(EXP_C[3]), vdupq_n_f32(EXP_C[4]), b),
                    u,
                ),
                u,
            );
            if vpaddd_u64(vreinterpretq_u64_u32(c)) == 0 {
                return vfmaq_f32(k, j, k);
            }
            let d = vandq_u32(vclezq_f32(n), vdupq_n_u32(0x8200_0000));
            let s1 = vreinterpretq_f32_u32(vaddq_u32(d, vdupq_n_u32(0x7f00_0000)));
            let s2 = vreinterpretq_f32_u32(vsubq_u32(e, d));
            vbslq_f32(
                vcagtq_f32(n, vdupq_n_f32(192.0)),
                vmulq_f32(s1, s1),
                vbslq_f32(c, vmulq_f32(vfmaq_f32(s2, s2, j), s1), vfmaq_f32(k, k, j)),
            )
        }
    }

    /// Callers checked: x (and g) hold out.len() floats.
    pub unsafe fn silu_mul(x: &[f32], g: Option<&[f32]>, out: &mut [f32]) {
        let n = out.len();
        let whole = n - n % LANES_NEON;
        let mut i = 0;
        // SAFETY: NEON is baseline on aarch64; callers checked x (and g) hold out.len()
        // floats, so the 4-float loads and stores at i < whole stay in bounds.
        unsafe {
            while i < whole {
                let v = vld1q_f32(x.as_ptr().add(i));
                let e = exp_ps(vsubq_f32(vdupq_n_f32(0.0), v));
                let mut s = vdivq_f32(v, vaddq_f32(vdupq_n_f32(1.0), e));
                if let Some(g) = g {
                    s = vmulq_f32(s, vld1q_f32(g.as_ptr().add(i)));
                }
                vst1q_f32(out.as_mut_ptr().add(i), s);
                i += LANES_NEON;
            }
        }
        for i in whole..n {
            let s = silu_libm(x[i]);
            out[i] = match g {
                Some(g) => s * g[i],
                None => s,
            };
        }
    }

    /// ggml_vec_soft_max_f32's NEON loop.
    pub unsafe fn soft_max(y: &mut [f32], max: f32) -> f64 {
        let n = y.len();
        let whole = n - n % LANES_NEON;
        let p = y.as_mut_ptr();
        let mut sum = 0f64;
        let mut i = 0;
        // SAFETY: NEON is baseline on aarch64; the 4-float loads and stores at i < whole
        // stay within y.
        unsafe {
            let m = vdupq_n_f32(max);
            while i < whole {
                let e = exp_ps(vsubq_f32(vld1q_f32(p.add(i)), m));
                vst1q_f32(p.add(i), e);
                sum += vaddvq_f32(e) as f64;
                i += LANES_NEON;
            }
        }
        for v in &mut y[whole..] {
            *v = (*v - max).exp();
            sum += *v as f64;
        }
        sum
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::*;
    use std::arch::x86_64::*;

    /// ggml_v_expf (AVX2 + FMA), instruction for instruction.
    #[inline(always)]
    pub(super) unsafe fn exp_ps(x: __m256) -> __m256 {
        // SAFETY: callers run on a CPU with AVX2 and FMA (`silu_mul` and `soft_max` below
        // enable them, reachable only through `avx2_kernels()`, which checked them; the test
        // detects them); the intrinsics only compute on registers.
        unsafe {
            let r = _mm256_set1_ps(EXP_SHIFT);
            let z = _mm256_fmadd_ps(x, _mm256_set1_ps(EXP_LOG2E), r);
            let n = _mm256_sub_ps(z, r);
            let b = _mm256_fnmadd_ps(n, _mm256_set1_ps(EXP_LN2_LO), _mm256_fnmadd_ps(n, _mm256_set1_ps(EXP_LN2_HI), x));
            let e = _mm256_slli_epi32::<23>(_mm256_castps_si256(z));
            let k = _mm256_castsi256_ps(_mm256_add_epi32(e, _mm256_castps_si256(_mm256_set1_ps(1.0))));
            let absn = _mm256_andnot_ps(_mm256_set1_ps(-0.0), n);
            let c = _mm256_cmp_ps::<_CMP_GT_OQ>(absn, _mm256_set1_ps(126.0));
            let u = _mm256_mul_ps(b, b);
            let j = _mm256_fmadd_ps(
                _mm256_fmadd_ps(
                    _mm256_fmadd_ps(_mm256_set1_ps(EXP_C[4]), b, _mm256_set1_ps(EXP_C[3])),
                    u,
                    _mm256_fmadd_ps(_mm256_set1_ps(EXP_C[2]), b, _mm256_set1_ps(EXP_C[1])),
                ),
                u,
                _mm256_mul_ps(_mm256_set1_ps(EXP_C[0]), b),
            );
            if _mm256_movemask_ps(c) == 0 {
                return _mm256_fmadd_ps(j, k, k);
            }
            let g = _mm256_and_si256(
                _mm256_castps_si256(_mm256_cmp_ps::<_CMP_LE_OQ>(n, _mm256_setzero_ps())),
                _mm256_set1_epi32(0x8200_0000u32 as i32),
            );
            let s1 = _mm256_castsi256_ps(_mm256_add_epi32(g, _mm256_set1_epi32(0x7f00_0000)));
            let s2 = _mm256_castsi256_ps(_mm256_sub_epi32(e, g));
            let d = _mm256_cmp_ps::<_CMP_GT_OQ>(absn, _mm256_set1_ps(192.0));
            _mm256_or_ps(
                _mm256_and_ps(d, _mm256_mul_ps(s1, s1)),
                _mm256_andnot_ps(
                    d,
                    _mm256_or_ps(
                        _mm256_and_ps(c, _mm256_mul_ps(_mm256_fmadd_ps(s2, j, s2), s1)),
                        _mm256_andnot_ps(c, _mm256_fmadd_ps(k, j, k)),
                    ),
                ),
            )
        }
    }

    /// Callers checked: x (and g) hold out.len() floats.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn silu_mul(x: &[f32], g: Option<&[f32]>, out: &mut [f32]) {
        let n = out.len();
        let whole = n - n % LANES_AVX2;
        let mut i = 0;
        // SAFETY: this fn's target features (AVX2, FMA) were checked by `avx2_kernels()`, its
        // only way in; callers checked x (and g) hold out.len() floats, so the 8-float loads
        // and stores at i < whole stay in bounds.
        unsafe {
            while i < whole {
                let v = _mm256_loadu_ps(x.as_ptr().add(i));
                let e = exp_ps(_mm256_sub_ps(_mm256_setzero_ps(), v));
                let mut s = _mm256_div_ps(v, _mm256_add_ps(_mm256_set1_ps(1.0), e));
                if let Some(g) = g {
                    s = _mm256_mul_ps(s, _mm256_loadu_ps(g.as_ptr().add(i)));
                }
                _mm256_storeu_ps(out.as_mut_ptr().add(i), s);
                i += LANES_AVX2;
            }
        }
        for i in whole..n {
            let s = silu_libm(x[i]);
            out[i] = match g {
                Some(g) => s * g[i],
                None => s,
            };
        }
    }

    /// ggml_vec_soft_max_f32's AVX2 loop.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn soft_max(y: &mut [f32], max: f32) -> f64 {
        let n = y.len();
        let whole = n - n % LANES_AVX2;
        let m = _mm256_set1_ps(max);
        let p = y.as_mut_ptr();
        let mut sum = 0f64;
        let mut i = 0;
        // SAFETY: this fn's target features (AVX2, FMA) were checked by `avx2_kernels()`, its
        // only way in; the 8-float loads and stores at i < whole stay within y.
        unsafe {
            while i < whole {
                let e = exp_ps(_mm256_sub_ps(_mm256_loadu_ps(p.add(i)), m));
                _mm256_storeu_ps(p.add(i), e);
                let v2 = _mm_add_ps(_mm256_extractf128_ps::<1>(e), _mm256_castps256_ps128(e));
                let v2 = _mm_add_ps(v2, _mm_movehl_ps(v2, v2));
                let v2 = _mm_add_ss(v2, _mm_movehdup_ps(v2));
                sum += _mm_cvtss_f32(v2) as f64;
                i += LANES_AVX2;
            }
        }
        for v in &mut y[whole..] {
            *v = (*v - max).exp();
            sum += *v as f64;
        }
        sum
    }
}

/// The sum of 16 lanes in `_mm512_reduce_add_ps`'s order (ggml's AVX-512 sums; see
/// [`reduce16`]).
///
/// # Safety
/// The CPU runs AVX-512F.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub unsafe fn reduce_add_avx512(v: std::arch::x86_64::__m512) -> f32 {
    // SAFETY: this fn's contract (AVX-512F).
    unsafe { avx512::reduce_add(v) }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::*;
    use std::arch::x86_64::*;

    /// ggml_v_expf (AVX-512), instruction for instruction.
    #[inline(always)]
    pub(super) unsafe fn exp_ps(x: __m512) -> __m512 {
        // SAFETY: callers run on a CPU with AVX-512F (`silu_mul` and `soft_max` below enable
        // it, reachable only through `avx512_kernels()`, which checked it; the test detects
        // it); the intrinsics only compute on registers.
        unsafe {
            let r = _mm512_set1_ps(EXP_SHIFT);
            let z = _mm512_fmadd_ps(x, _mm512_set1_ps(EXP_LOG2E), r);
            let n = _mm512_sub_ps(z, r);
            let b = _mm512_fnmadd_ps(
                n,
                _mm512_set1_ps(EXP_LN2_LO),
                _mm512_fnmadd_ps(n, _mm512_set1_ps(EXP_LN2_HI), x),
            );
            let d = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(_mm512_abs_ps(n), _mm512_set1_ps(192.0));
            let u = _mm512_mul_ps(b, b);
            let j = _mm512_fmadd_ps(
                _mm512_fmadd_ps(
                    _mm512_fmadd_ps(_mm512_set1_ps(EXP_C[4]), b, _mm512_set1_ps(EXP_C[3])),
                    u,
                    _mm512_fmadd_ps(_mm512_set1_ps(EXP_C[2]), b, _mm512_set1_ps(EXP_C[1])),
                ),
                u,
                _mm512_fmadd_ps(_mm512_set1_ps(EXP_C[0]), b, _mm512_set1_ps(1.0)),
            );
            let res = _mm512_scalef_ps(j, n);
            if d == 0 {
                return res;
            }
            let alt = _mm512_mask_blend_ps(
                _mm512_cmp_ps_mask::<_CMP_LE_OQ>(n, _mm512_setzero_ps()),
                _mm512_set1_ps(f32::INFINITY),
                _mm512_setzero_ps(),
            );
            _mm512_mask_blend_ps(d, res, alt)
        }
    }

    /// ggml_v_silu.
    #[inline(always)]
    unsafe fn silu_ps(x: __m512) -> __m512 {
        // SAFETY: as `exp_ps`: callers run with AVX-512F enabled and checked; register-only
        // intrinsics.
        unsafe {
            let e = exp_ps(_mm512_sub_ps(_mm512_setzero_ps(), x));
            _mm512_div_ps(x, _mm512_add_ps(_mm512_set1_ps(1.0), e))
        }
    }

    /// x86's `_mm512_reduce_add_ps` order, spelled out (see `reduce16`).
    #[inline(always)]
    pub unsafe fn reduce_add(v: __m512) -> f32 {
        // SAFETY: as `exp_ps`: callers run with AVX-512F enabled and checked; register-only
        // intrinsics.
        unsafe {
            let a = _mm512_add_ps(v, _mm512_shuffle_f32x4::<0b00_00_11_10>(v, v));
            let a = _mm512_add_ps(a, _mm512_shuffle_f32x4::<0b00_00_00_01>(a, a));
            let a = _mm512_add_ps(a, _mm512_permute_ps::<0b00_00_11_10>(a));
            let a = _mm512_add_ps(a, _mm512_permute_ps::<0b00_00_00_01>(a));
            _mm512_cvtss_f32(a)
        }
    }

    /// Callers checked: x (and g) hold out.len() floats.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn silu_mul(x: &[f32], g: Option<&[f32]>, out: &mut [f32]) {
        let n = out.len();
        let whole = n - n % LANES;
        let mut i = 0;
        // SAFETY: this fn's target feature (AVX-512F) was checked by `avx512_kernels()`, its
        // only way in; callers checked x (and g) hold out.len() floats, so the 16-float loads
        // and stores at i < whole stay in bounds.
        unsafe {
            while i < whole {
                let mut s = silu_ps(_mm512_loadu_ps(x.as_ptr().add(i)));
                if let Some(g) = g {
                    s = _mm512_mul_ps(s, _mm512_loadu_ps(g.as_ptr().add(i)));
                }
                _mm512_storeu_ps(out.as_mut_ptr().add(i), s);
                i += LANES;
            }
        }
        for i in whole..n {
            let s = silu_libm(x[i]);
            out[i] = match g {
                Some(g) => s * g[i],
                None => s,
            };
        }
    }

    #[target_feature(enable = "avx512f")]
    pub unsafe fn soft_max(y: &mut [f32], max: f32) -> f64 {
        let n = y.len();
        let whole = n - n % LANES;
        let m = _mm512_set1_ps(max);
        let p = y.as_mut_ptr();
        let mut sum = 0f64;
        let mut i = 0;
        // SAFETY: this fn's target feature (AVX-512F) was checked by `avx512_kernels()`, its
        // only way in; the 16-float loads and stores at i < whole stay within y.
        unsafe {
            while i < whole {
                let e = exp_ps(_mm512_sub_ps(_mm512_loadu_ps(p.add(i)), m));
                _mm512_storeu_ps(p.add(i), e);
                sum += reduce_add(e) as f64;
                i += LANES;
            }
        }
        for v in &mut y[whole..] {
            *v = (*v - max).exp();
            sum += *v as f64;
        }
        sum
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::registry::log_tiers_run;
    use crate::kernels::KernelSet;

    fn inputs() -> Vec<f32> {
        let mut x: Vec<f32> = (0..4001).map(|i| (i as f32 - 2000.0) * 0.05).collect();
        x.extend([
            -200.0,
            200.0,
            0.0,
            -1e-30,
            -87.5,
            -103.0,
            88.5,
            89.0,
            f32::NEG_INFINITY,
            1e-3,
            -1e-3,
        ]);
        x
    }

    #[test]
    fn exp_is_close_to_libm_and_its_tiers_agree_bit_for_bit() {
        for &x in &inputs() {
            let (a, b) = (expf_ggml_avx2(x), x.exp());
            let tol = 2.0 * f32::EPSILON * b.abs() + 1.5e-45 * 4.0;
            assert!(
                a == b || (a - b).abs() <= tol || (b.is_infinite() && a.is_infinite()),
                "avx2 exp({x}): {a} vs libm {b}"
            );
        }
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            let xs = inputs();
            for c in xs.chunks(LANES_AVX2).filter(|c| c.len() == LANES_AVX2) {
                let mut out = [0f32; LANES_AVX2];
                // SAFETY: AVX2 and FMA detected; 8 floats in and out.
                unsafe {
                    use std::arch::x86_64::*;
                    _mm256_storeu_ps(out.as_mut_ptr(), avx2::exp_ps(_mm256_loadu_ps(c.as_ptr())));
                }
                for (x, e) in c.iter().zip(out) {
                    assert_eq!(e.to_bits(), expf_ggml_avx2(*x).to_bits(), "avx2 exp({x})");
                }
            }
        }
        #[cfg(target_arch = "aarch64")]
        {
            let xs = inputs();
            for c in xs.chunks(LANES_NEON).filter(|c| c.len() == LANES_NEON) {
                let mut out = [0f32; LANES_NEON];
                // SAFETY: NEON is baseline on aarch64; 4 floats in and out.
                unsafe {
                    use std::arch::aarch64::*;
                    vst1q_f32(out.as_mut_ptr(), neon::exp_ps(vld1q_f32(c.as_ptr())));
                }
                for (x, e) in c.iter().zip(out) {
                    assert_eq!(e.to_bits(), expf_ggml_neon(*x).to_bits(), "neon exp({x})");
                }
            }
        }
        for &x in &inputs() {
            let (a, b) = (expf_ggml(x), x.exp());
            let tol = 2.0 * f32::EPSILON * b.abs() + 1.5e-45 * 4.0;
            assert!(
                a == b || (a - b).abs() <= tol || (b.is_infinite() && a.is_infinite()),
                "exp({x}): {a} vs libm {b}"
            );
        }
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("avx512f") {
            let xs = inputs();
            for c in xs.chunks(LANES).filter(|c| c.len() == LANES) {
                let mut out = [0f32; LANES];
                // SAFETY: AVX-512F detected; 16 floats in and out.
                unsafe {
                    use std::arch::x86_64::*;
                    _mm512_storeu_ps(
                        out.as_mut_ptr(),
                        avx512::exp_ps(_mm512_loadu_ps(c.as_ptr())),
                    );
                }
                for (x, e) in c.iter().zip(out) {
                    assert_eq!(e.to_bits(), expf_ggml(*x).to_bits(), "exp({x})");
                }
            }
        }
    }

    /// The scalar mirrors of every tier's order, on any host (each is also checked bit for
    /// bit against its SIMD tier where this CPU runs it).
    #[test]
    fn every_order_reference_computes_silu_and_soft_max() {
        let x = inputs();
        for k in [SCALAR, SCALAR_LANES8, SCALAR_LANES4] {
            assert_eq!(k.reference().order, k.order);
            let mut out = vec![0f32; x.len()];
            (k.silu_mul)(&x, None, &mut out);
            for (&xi, &o) in x.iter().zip(&out).filter(|(xi, _)| xi.is_finite()) {
                let want = xi as f64 / (1.0 + (-xi as f64).exp());
                assert!((o as f64 - want).abs() <= 1e-6 * want.abs() + 1e-30, "{:?} silu({xi}): {o} vs {want}", k.order);
            }
            for n in [64, 37, 7, 3] {
                let mut y: Vec<f32> = x.iter().step_by(53).take(n).map(|v| v.clamp(-60.0, 4.0)).collect();
                let max = y.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let want: Vec<f64> = y.iter().map(|&v| ((v - max) as f64).exp()).collect();
                let sum = (k.soft_max)(&mut y, max);
                for (a, w) in y.iter().zip(&want) {
                    assert!((*a as f64 - w).abs() <= 4.0 * f32::EPSILON as f64 * w + 1e-38, "{:?} n={n}: {a} vs {w}", k.order);
                }
                let direct: f64 = y.iter().map(|&v| v as f64).sum();
                assert!((sum - direct).abs() <= 1e-6 * direct, "{:?} n={n}: {sum} vs {direct}", k.order);
            }
        }
    }

    #[test]
    fn silu_mul_tiers_agree_bit_for_bit_and_match_the_formula() {
        let x = inputs();
        let g: Vec<f32> = (0..x.len()).map(|i| 1.0 + (i % 7) as f32 * 0.25).collect();
        for ks in KernelSet::available() {
        let (silu_mul, reference) = (ks.vmath.silu_mul, ks.vmath.reference().silu_mul);
        for n in [x.len(), 33, 16, 1] {
            let (mut a, mut b) = (vec![0f32; n], vec![0f32; n]);
            for gg in [Some(&g[..n]), None] {
                silu_mul(&x[..n], gg, &mut a);
                reference(&x[..n], gg, &mut b);
                for i in 0..n {
                    assert_eq!(a[i].to_bits(), b[i].to_bits(), "n={n} silu({}) tiers", x[i]);
                    if !x[i].is_finite() {
                        continue; // silu(-inf) is NaN here as in ggml
                    }
                    let want = (x[i] as f64 / (1.0 + (-x[i] as f64).exp()))
                        * gg.map_or(1.0, |g| g[i] as f64);
                    assert!(
                        (a[i] as f64 - want).abs() <= 1e-6 * want.abs() + 1e-30,
                        "{} silu({}): {} vs {want}",
                        ks.name,
                        x[i],
                        a[i]
                    );
                }
            }
        }
        }
        log_tiers_run("vmath silu", KernelSet::available().iter().map(|s| s.name));
    }

    #[test]
    fn soft_max_tiers_agree_bit_for_bit_and_sum_right() {
        let xs = inputs();
        for ks in KernelSet::available() {
        let (soft_max, reference) = (ks.vmath.soft_max, ks.vmath.reference().soft_max);
        for n in [64, 37, 16, 5] {
            let mut a: Vec<f32> = xs
                .iter()
                .step_by(61)
                .take(n)
                .map(|v| v.clamp(-60.0, 4.0))
                .collect();
            let mut b = a.clone();
            let max = a.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let sb = reference(&mut b, max);
            let sa = soft_max(&mut a, max);
            assert_eq!(sa.to_bits(), sb.to_bits(), "n={n} sums");
            for i in 0..n {
                assert_eq!(a[i].to_bits(), b[i].to_bits(), "n={n} lane {i}");
            }
            let direct: f64 = a.iter().map(|&v| v as f64).sum();
            assert!(
                (sa - direct).abs() <= 1e-6 * direct,
                "n={n}: {sa} vs {direct}"
            );
        }
        let mut z = [f32::NEG_INFINITY; 16];
        assert_eq!(soft_max(&mut z, 0.0), 0.0, "exp(-inf) is 0");
        }
        log_tiers_run("vmath soft_max", KernelSet::available().iter().map(|s| s.name));
    }
}
