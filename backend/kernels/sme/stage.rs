//! Operand staging for the SME kernels, outside streaming mode: rows of 32-bit units (f16
//! or bf16 pairs, f32, int8 quads) and their place in an activation block (see the module
//! doc of [`super`]). Weight rows stay row-major here; the group kernel transposes them into
//! blocks through ZA.

use super::Geometry;

/// The unit order of 4-bit weights (Q4_0): unit u (below 16) of a 32-element block pairs
/// k = u with k = u + 16, the low and high nibble of one quant byte, so that a packed
/// `Q4_0x16` vector expands to whole units without shuffling. The activations take the
/// same order (the outer product does not care which two k share a unit).
pub fn nibble_pairs(natural: &[u8], out: &mut [u8]) {
    assert!(natural.len().is_multiple_of(64) && out.len() >= natural.len(), "SMEPilot: nibble pairs of {} bytes", natural.len());
    for (blk, o) in natural.chunks_exact(64).zip(out.chunks_exact_mut(64)) {
        for u in 0..16 {
            o[4 * u..4 * u + 2].copy_from_slice(&blk[2 * u..2 * u + 2]);
            o[4 * u + 2..4 * u + 4].copy_from_slice(&blk[32 + 2 * u..32 + 2 * u + 2]);
        }
    }
}

/// One 16-byte slice of a Q4_0x16 block staged: its nibbles (low and high of each byte
/// side by side), centred on 8, widened to f16 and scaled by four rows' scales (lanes
/// `l0 .. l3` of `s`), stored at byte `st` of four output rows (x4 .. x7).
macro_rules! q4_unit {
    ($ld:literal, $s:literal, $l0:literal, $l1:literal, $l2:literal, $l3:literal, $st:literal) => {
        concat!(
            "ldr q2, [x0, #", $ld, "]\n",
            "and v3.16b, v2.16b, v31.16b\n",
            "ushr v4.16b, v2.16b, #4\n",
            "zip1 v5.16b, v3.16b, v4.16b\n",
            "zip2 v6.16b, v3.16b, v4.16b\n",
            "sub v5.16b, v5.16b, v30.16b\n",
            "sub v6.16b, v6.16b, v30.16b\n",
            "sxtl v7.8h, v5.8b\n",
            "sxtl2 v8.8h, v5.16b\n",
            "sxtl v9.8h, v6.8b\n",
            "sxtl2 v10.8h, v6.16b\n",
            "scvtf v7.8h, v7.8h\n",
            "scvtf v8.8h, v8.8h\n",
            "scvtf v9.8h, v9.8h\n",
            "scvtf v10.8h, v10.8h\n",
            "fmul v7.8h, v7.8h, ", $s, ".h[", $l0, "]\n",
            "fmul v8.8h, v8.8h, ", $s, ".h[", $l1, "]\n",
            "fmul v9.8h, v9.8h, ", $s, ".h[", $l2, "]\n",
            "fmul v10.8h, v10.8h, ", $s, ".h[", $l3, "]\n",
            "str q7, [x4, #", $st, "]\n",
            "str q8, [x5, #", $st, "]\n",
            "str q9, [x6, #", $st, "]\n",
            "str q10, [x7, #", $st, "]",
        )
    };
}

/// One packed `Q4_0x16` group of `nb` blocks as 16 rows of f16 units in [`nibble_pairs`]
/// order: row r at `out[r * stride ..]`, `d * (q - 8)` rounded once to f16, as the
/// dequantizer's f32 value rounded to f16. NEON with FEAT_FP16 (checked).
pub fn q4_0x16_units(group: &[u8], nb: usize, out: &mut [u8], stride: usize) {
    const GB: usize = 288;
    assert!(std::arch::is_aarch64_feature_detected!("fp16"), "SMEPilot: the Q4_0 stager needs FEAT_FP16");
    assert!(nb > 0 && group.len() >= nb * GB && stride >= nb * 64 && out.len() >= 15 * stride + nb * 64, "SMEPilot: Q4_0x16 staging out of bounds");
    // SAFETY: NEON and FEAT_FP16 are present (checked); per block the asm reads the 288
    // bytes of the group block and writes 64 bytes at block offset 64 b of each of the 16
    // rows, all within the slices (checked above).
    unsafe {
        std::arch::asm!(
            ".arch_extension fp16",
            "movi v31.16b, #15",
            "movi v30.16b, #8",
            "lsl x10, x2, #2",
            "2:",
                "ldp q0, q1, [x0]",
                "mov x8, #0",
                "madd x4, x8, x10, x1",
                "add x5, x4, x2",
                "add x6, x5, x2",
                "add x7, x6, x2",
                q4_unit!(32, "v0", 0, 1, 2, 3, 0),
                q4_unit!(96, "v0", 0, 1, 2, 3, 16),
                q4_unit!(160, "v0", 0, 1, 2, 3, 32),
                q4_unit!(224, "v0", 0, 1, 2, 3, 48),
                "mov x8, #1",
                "madd x4, x8, x10, x1",
                "add x5, x4, x2",
                "add x6, x5, x2",
                "add x7, x6, x2",
                q4_unit!(48, "v0", 4, 5, 6, 7, 0),
                q4_unit!(112, "v0", 4, 5, 6, 7, 16),
                q4_unit!(176, "v0", 4, 5, 6, 7, 32),
                q4_unit!(240, "v0", 4, 5, 6, 7, 48),
                "mov x8, #2",
                "madd x4, x8, x10, x1",
                "add x5, x4, x2",
                "add x6, x5, x2",
                "add x7, x6, x2",
                q4_unit!(64, "v1", 0, 1, 2, 3, 0),
                q4_unit!(128, "v1", 0, 1, 2, 3, 16),
                q4_unit!(192, "v1", 0, 1, 2, 3, 32),
                q4_unit!(256, "v1", 0, 1, 2, 3, 48),
                "mov x8, #3",
                "madd x4, x8, x10, x1",
                "add x5, x4, x2",
                "add x6, x5, x2",
                "add x7, x6, x2",
                q4_unit!(80, "v1", 4, 5, 6, 7, 0),
                q4_unit!(144, "v1", 4, 5, 6, 7, 16),
                q4_unit!(208, "v1", 4, 5, 6, 7, 32),
                q4_unit!(272, "v1", 4, 5, 6, 7, 48),
            "add x0, x0, #288",
            "add x1, x1, #64",
            "subs x3, x3, #1",
            "b.ne 2b",
            inout("x0") group.as_ptr() => _,
            inout("x1") out.as_mut_ptr() => _,
            in("x2") stride,
            inout("x3") nb => _,
            out("x4") _, out("x5") _, out("x6") _, out("x7") _, out("x8") _, out("x10") _,
            out("v0") _, out("v1") _, out("v2") _, out("v3") _, out("v4") _, out("v5") _, out("v6") _, out("v7") _,
            out("v8") _, out("v9") _, out("v10") _, out("v30") _, out("v31") _,
            options(nostack)
        )
    };
}

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

/// One row of Q8_0 blocks (`nb` of 34 bytes: d, 32 quants) as f16 units, `d * q` rounded
/// once to f16 (the dequantizer's f32 value rounded to f16), in natural order or in
/// [`nibble_pairs`] order. NEON with FEAT_FP16 (checked).
pub fn q8_0_units(blocks: &[u8], nb: usize, out: &mut [u8], nibble: bool) {
    assert!(std::arch::is_aarch64_feature_detected!("fp16"), "SMEPilot: the Q8_0 stager needs FEAT_FP16");
    assert!(nb > 0 && blocks.len() >= nb * 34 && out.len() >= nb * 64, "SMEPilot: Q8_0 staging out of bounds");
    // SAFETY: NEON and FEAT_FP16 are present (checked); per block the asm reads its 34 bytes
    // and writes 64 bytes of `out`, within the slices (checked above).
    unsafe {
        std::arch::asm!(
            ".arch_extension fp16",
            "2:",
            "ldr h0, [x0]",
            "ldur q1, [x0, #2]",
            "ldur q2, [x0, #18]",
            "cbz {nib}, 3f",
            "zip1 v3.16b, v1.16b, v2.16b",
            "zip2 v2.16b, v1.16b, v2.16b",
            "mov v1.16b, v3.16b",
            "3:",
            "sxtl v4.8h, v1.8b",
            "sxtl2 v5.8h, v1.16b",
            "sxtl v6.8h, v2.8b",
            "sxtl2 v7.8h, v2.16b",
            "scvtf v4.8h, v4.8h",
            "scvtf v5.8h, v5.8h",
            "scvtf v6.8h, v6.8h",
            "scvtf v7.8h, v7.8h",
            "fmul v4.8h, v4.8h, v0.h[0]",
            "fmul v5.8h, v5.8h, v0.h[0]",
            "fmul v6.8h, v6.8h, v0.h[0]",
            "fmul v7.8h, v7.8h, v0.h[0]",
            "stp q4, q5, [x1]",
            "stp q6, q7, [x1, #32]",
            "add x0, x0, #34",
            "add x1, x1, #64",
            "subs x2, x2, #1",
            "b.ne 2b",
            nib = in(reg) nibble as u64,
            inout("x0") blocks.as_ptr() => _,
            inout("x1") out.as_mut_ptr() => _,
            inout("x2") nb => _,
            out("v0") _, out("v1") _, out("v2") _, out("v3") _, out("v4") _, out("v5") _, out("v6") _, out("v7") _,
            options(nostack)
        )
    };
}
