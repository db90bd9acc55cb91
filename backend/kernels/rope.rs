//! Rope's pair rotation: the `nd` channels from `off` of one row, in place, by a cache of
//! (cos, sin) pairs, pairs (i, i + 1), or (i, i + nd / 2) for NeoX. Computed as ggml-cpu's
//! rotate_pairs is compiled (clang fuses the x0 products: `x0*c - x1*s` becomes
//! fma(x0, c, -(x1*s))), so results are bit-identical to the CPU backend's.

/// Rotates `row[off .. off + nd]` in place; `cache` holds `nd` floats (cos, sin pairs).
pub type RotatePairsFn = fn(row: &mut [f32], cache: &[f32], nd: usize, off: usize, neox: bool);

/// One tier's rope kernels.
#[derive(Clone, Copy)]
pub struct Kernels {
    pub rotate_pairs: RotatePairsFn,
}

/// The portable tier (`mul_add` is a library call without hardware FMA, but gives the
/// same bits).
pub const SCALAR: Kernels = Kernels { rotate_pairs: rotate_pairs_scalar };

/// The NEON tier: four pairs at a time, each lane the scalar kernel's operations (aarch64
/// always has FMA, so there `mul_add` is FMADD and the scalar tier is the same arithmetic).
#[cfg(target_arch = "aarch64")]
pub(crate) fn neon_kernels() -> Option<Kernels> {
    fn rotate_pairs(row: &mut [f32], cache: &[f32], nd: usize, off: usize, neox: bool) {
        check(row, cache, nd, off);
        // SAFETY: lengths checked; NEON is baseline on aarch64.
        unsafe { rotate_pairs_neon(row, cache, nd, off, neox) }
    }
    Some(Kernels { rotate_pairs })
}

/// Compiled with FMA, so `mul_add` is one instruction. Every x86-64 tier above scalar.
#[cfg(target_arch = "x86_64")]
pub(crate) fn fma_kernels() -> Option<Kernels> {
    fn rotate_pairs(row: &mut [f32], cache: &[f32], nd: usize, off: usize, neox: bool) {
        check(row, cache, nd, off);
        // SAFETY: reachable only through fma_kernels(), which checked FMA.
        unsafe { rotate_pairs_fma(row, cache, nd, off, neox) }
    }
    is_x86_feature_detected!("fma").then_some(Kernels { rotate_pairs })
}

fn check(row: &[f32], cache: &[f32], nd: usize, off: usize) {
    assert!(
        nd.is_multiple_of(2) && off + nd <= row.len() && cache.len() >= nd,
        "rotate_pairs: {nd} channels from {off} in a row of {} with {} cache values",
        row.len(),
        cache.len()
    );
}

/// The scalar reference.
pub fn rotate_pairs_scalar(row: &mut [f32], cache: &[f32], nd: usize, off: usize, neox: bool) {
    check(row, cache, nd, off);
    rotate(row, cache, nd, off, neox, 0)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "fma")]
fn rotate_pairs_fma(row: &mut [f32], cache: &[f32], nd: usize, off: usize, neox: bool) {
    rotate(row, cache, nd, off, neox, 0)
}

/// Callers checked (`check`): nd is even, off + nd <= row.len(), cache holds nd floats.
/// Pairs interleaved: LD2 splits (x0, x1) and (cos, sin); NeoX: x0 and x1 are the two
/// halves, read straight. The pairs past the last whole 4 go through `rotate`.
#[cfg(target_arch = "aarch64")]
unsafe fn rotate_pairs_neon(row: &mut [f32], cache: &[f32], nd: usize, off: usize, neox: bool) {
    use std::arch::aarch64::*;
    let pairs = nd / 2;
    let whole = pairs - pairs % 4;
    let (rp, cp) = (row.as_mut_ptr(), cache.as_ptr());
    // SAFETY: NEON is baseline on aarch64. Pairs k .. k + 4 <= whole read cache[2k .. 2k + 8]
    // (<= nd) and row[off + 2k .. off + 2k + 8], or row[off + k .. + 4] and
    // row[off + pairs + k .. + 4] (all <= off + nd), so every load and store stays within
    // cache and row.
    unsafe {
        for k in (0..whole).step_by(4) {
            let cs = vld2q_f32(cp.add(2 * k));
            let (c, s) = (cs.0, cs.1);
            let rot = |x0: float32x4_t, x1: float32x4_t| {
                // x0 * c - x1 * s and x0 * s + x1 * c, the x0 products fused, as `rotate`.
                (vfmaq_f32(vnegq_f32(vmulq_f32(x1, s)), x0, c), vfmaq_f32(vmulq_f32(x1, c), x0, s))
            };
            if neox {
                let (p0, p1) = (rp.add(off + k), rp.add(off + pairs + k));
                let (r0, r1) = rot(vld1q_f32(p0), vld1q_f32(p1));
                vst1q_f32(p0, r0);
                vst1q_f32(p1, r1);
            } else {
                let p0 = rp.add(off + 2 * k);
                let x = vld2q_f32(p0);
                let (r0, r1) = rot(x.0, x.1);
                vst2q_f32(p0, float32x4x2_t(r0, r1));
            }
        }
    }
    rotate(row, cache, nd, off, neox, 2 * whole);
}

/// Rotates the pairs of channels `from .. nd` (from even).
#[inline(always)]
fn rotate(row: &mut [f32], cache: &[f32], nd: usize, off: usize, neox: bool, from: usize) {
    for i0 in (from..nd).step_by(2) {
        let (c, s) = (cache[i0], cache[i0 + 1]);
        let (j0, j1) = if neox { (off + i0 / 2, off + i0 / 2 + nd / 2) } else { (off + i0, off + i0 + 1) };
        let (x0, x1) = (row[j0], row[j1]);
        row[j0] = x0.mul_add(c, -(x1 * s));
        row[j1] = x0.mul_add(s, x1 * c);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::registry::log_tiers_run;
    use crate::kernels::KernelSet;

    #[test]
    fn every_tier_rotates_as_the_formula_and_as_the_reference() {
        for ks in KernelSet::available() {
            for &(len, nd, off) in &[(8usize, 8usize, 0usize), (12, 6, 2), (64, 32, 16), (7, 4, 3), (41, 36, 3), (30, 28, 1)] {
                for neox in [false, true] {
                    let row0: Vec<f32> = (0..len).map(|i| (i as f32 * 0.37).sin() * 3.0).collect();
                    let cache: Vec<f32> = (0..nd).map(|i| if i % 2 == 0 { (i as f32 * 0.1).cos() } else { (i as f32 * 0.1).sin() }).collect();
                    let (mut a, mut b) = (row0.clone(), row0.clone());
                    (ks.rope.rotate_pairs)(&mut a, &cache, nd, off, neox);
                    rotate_pairs_scalar(&mut b, &cache, nd, off, neox);
                    assert_eq!(a.iter().map(|x| x.to_bits()).collect::<Vec<_>>(), b.iter().map(|x| x.to_bits()).collect::<Vec<_>>(), "{} len {len} nd {nd} off {off} neox {neox}", ks.name);
                    for i0 in (0..nd).step_by(2) {
                        let (j0, j1) = if neox { (off + i0 / 2, off + i0 / 2 + nd / 2) } else { (off + i0, off + i0 + 1) };
                        let (c, s) = (cache[i0] as f64, cache[i0 + 1] as f64);
                        let (x0, x1) = (row0[j0] as f64, row0[j1] as f64);
                        assert!((a[j0] as f64 - (x0 * c - x1 * s)).abs() < 1e-5 && (a[j1] as f64 - (x0 * s + x1 * c)).abs() < 1e-5);
                    }
                    for j in (0..len).filter(|&j| j < off || j >= off + nd) {
                        assert_eq!(a[j], row0[j], "channels outside the rotation stay");
                    }
                }
            }
            let r = std::panic::catch_unwind(|| (ks.rope.rotate_pairs)(&mut [0f32; 6], &[0f32; 8], 8, 0, false));
            assert!(r.is_err(), "{}: a row shorter than off + nd is refused", ks.name);
        }
        log_tiers_run("rope", KernelSet::available().iter().map(|s| s.name));
    }
}
