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

/// The NEON tier.
#[cfg(target_arch = "aarch64")]
pub(crate) fn neon_kernels() -> Option<Kernels> {
    Some(SCALAR)
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
    rotate(row, cache, nd, off, neox)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "fma")]
fn rotate_pairs_fma(row: &mut [f32], cache: &[f32], nd: usize, off: usize, neox: bool) {
    rotate(row, cache, nd, off, neox)
}

#[inline(always)]
fn rotate(row: &mut [f32], cache: &[f32], nd: usize, off: usize, neox: bool) {
    for i0 in (0..nd).step_by(2) {
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
            for &(len, nd, off) in &[(8usize, 8usize, 0usize), (12, 6, 2), (64, 32, 16), (7, 4, 3)] {
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
