//! Operand staging for the SME kernels, outside streaming mode: rows of 32-bit units (f16
//! or bf16 pairs, f32, int8 quads) and their place in an activation block (see the module
//! doc of [`super`]). Weight rows stay row-major here; the group kernel transposes them into
//! blocks through ZA.

use super::Geometry;

/// f32 to f16 bits, nearest-even (as ggml's `GGML_FP32_TO_FP16` with F16C / FCVT).
pub fn f32_to_f16(src: &[f32], dst: &mut [u8]) {
    assert!(dst.len() >= 2 * src.len(), "SMEPilot: f16 output of {} bytes for {} values", dst.len(), src.len());
    let n8 = src.len() / 8 * 8;
    if n8 > 0 {
        // SAFETY: NEON and FCVTN are baseline aarch64; the loop reads n8 floats of `src` and
        // writes n8 halfs (2 n8 bytes) of `dst`, both checked above.
        unsafe {
            std::arch::asm!(
                "2:",
                "ldp q0, q1, [{s}], #32",
                "fcvtn v2.4h, v0.4s",
                "fcvtn2 v2.8h, v1.4s",
                "str q2, [{d}], #16",
                "subs {n}, {n}, #8",
                "b.ne 2b",
                s = inout(reg) src.as_ptr() => _,
                d = inout(reg) dst.as_mut_ptr() => _,
                n = inout(reg) n8 => _,
                out("v0") _, out("v1") _, out("v2") _,
                options(nostack)
            )
        };
    }
    for (i, &v) in src.iter().enumerate().skip(n8) {
        dst[2 * i..2 * i + 2].copy_from_slice(&half::f16::from_f32(v).to_bits().to_le_bytes());
    }
}

/// Puts one row's units (`units`: `kunits` units of 4 bytes) as row `r` (below two panels)
/// of an activation block.
pub fn put_block_row(geo: &Geometry, block: &mut [u8], r: usize, units: &[u8]) {
    let (vl32, svl) = (geo.vl32(), geo.svl);
    assert!(r < 2 * vl32 && units.len().is_multiple_of(4) && block.len() >= units.len() * 2 * vl32, "SMEPilot: block row {r} out of shape");
    let at = (r / vl32) * svl + (r % vl32) * 4;
    for (u, q) in units.chunks_exact(4).enumerate() {
        block[u * 2 * svl + at..][..4].copy_from_slice(q);
    }
}

/// Zeroes row `r` of an activation block of `kunits` units (padding rows past M).
pub fn zero_block_row(geo: &Geometry, block: &mut [u8], r: usize, kunits: usize) {
    let (vl32, svl) = (geo.vl32(), geo.svl);
    assert!(r < 2 * vl32 && block.len() >= kunits * 2 * svl, "SMEPilot: block row {r} out of shape");
    let at = (r / vl32) * svl + (r % vl32) * 4;
    for u in 0..kunits {
        block[u * 2 * svl + at..][..4].fill(0);
    }
}
