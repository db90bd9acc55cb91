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

/// The packed weight layouts the int8 kernel reads without unpacking.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum I8Packed {
    /// `Q4_0x16`: quants `nibble - 8`.
    Q4_0,
    /// `Q4_1x16`: quants `nibble`, and a minimum per row and block.
    Q4_1,
    /// `Q8_0x16`: quants stored `q ^ 0x80`.
    Q8_0,
}

impl I8Packed {
    /// Bytes of one 32-block of a 16-row group (see `packed::lanes`).
    const fn group_block(self) -> usize {
        match self {
            I8Packed::Q4_0 => 288,
            I8Packed::Q4_1 => 320,
            I8Packed::Q8_0 => 544,
        }
    }

    /// The fp16 fields before the quant vectors (scales, then minimums).
    const fn heads(self) -> usize {
        if matches!(self, I8Packed::Q4_1) { 2 } else { 1 }
    }
}

/// One packed 16-row group of `nb` 32-blocks, rows `r .. r + 16` (r a multiple of 16) of a
/// weight group, straight into the int8 kernel's weight blocks and scale records (see
/// `i8_smopa_1vlx1vl`): no row-major staging, no transposition. Vector i of a packed block
/// holds, per row, the quants of k = 4i .. 4i + 4 (and, for 4 bits, in the high nibbles
/// k = 16 + 4i ..): one 32-bit unit per row, which is what a weight block's unit vector
/// holds per lane, so every 16-byte slice (four rows) is stored whole. Units stay in k
/// order, as the activations'. NEON; panics if an operand is shorter than this writes.
#[allow(clippy::too_many_arguments)]
pub fn i8_x16_blocks(kind: I8Packed, geo: &Geometry, group: &[u8], nb: usize, kunits: usize, r: usize, blocks: &mut [u8], scales: &mut [f32]) {
    use std::arch::aarch64::*;
    let (vl32, br, svl) = (geo.vl32(), geo.block_rows(), geo.svl);
    let (bb, rec, gb) = (geo.block_bytes(kunits), 4 * vl32, kind.group_block());
    let last_block = (r + 15) / br;
    assert!(r.is_multiple_of(16) && 8 * nb <= kunits && group.len() >= nb * gb, "SMEPilot: int8 staging of {nb} blocks at row {r}");
    assert!(blocks.len() >= (last_block + 1) * bb && scales.len() >= (last_block + 1) * nb * rec, "SMEPilot: int8 weight blocks too short");
    let vectors = if kind == I8Packed::Q8_0 { 8 } else { 4 };
    for b in 0..nb {
        let src = &group[b * gb..][..gb];
        let quants = &src[32 * kind.heads()..];
        // Four rows at a time: R = r + 4c lies in one panel (VL32 is a multiple of 4).
        for c in 0..4 {
            let row = r + 4 * c;
            let (blk, panel, lane) = (row / br, (row % br) / vl32, row % vl32);
            // Unit u of this 32-block, the four rows' lanes.
            let at = |u: usize| blk * bb + ((8 * b + u) * 2 + panel) * svl + 4 * lane;
            let recs = &mut scales[(blk * nb + b) * rec..][..rec];
            // The four rows' d (field 0), then m (field 1, Q4_1) or zeros.
            for (f, at) in [(0, panel * vl32 + lane), (1, 2 * vl32 + panel * vl32 + lane)] {
                let out = &mut recs[at..at + 4];
                if f == 1 && kind != I8Packed::Q4_1 {
                    out.fill(0.0);
                    continue;
                }
                let halfs = &src[32 * f + 8 * c..][..8];
                // SAFETY: FCVTL is baseline aarch64; the asm reads the 8 bytes of `halfs` and
                // writes the 16 bytes of `out`, both slices of that length.
                unsafe {
                    std::arch::asm!(
                        "ldr d0, [{s}]",
                        "fcvtl v0.4s, v0.4h",
                        "str q0, [{d}]",
                        s = in(reg) halfs.as_ptr(),
                        d = in(reg) out.as_mut_ptr(),
                        out("v0") _,
                        options(nostack, preserves_flags)
                    )
                };
            }
            for i in 0..vectors {
                let v_at = 64 * i + 16 * c;
                let v = &quants[v_at..v_at + 16];
                // SAFETY: NEON is baseline on aarch64; `v` is 16 bytes; every store writes 16
                // bytes at `at(u)` for u < 8, within block `blk` (at(u) + 16 <= (blk + 1) * bb:
                // unit 2(8b + u) + panel < 2 * 8 * nb <= 2 * kunits vectors, 4 * lane + 16 <=
                // svl), and blocks is at least (last_block + 1) * bb long (checked above).
                unsafe {
                    let q = vld1q_u8(v.as_ptr());
                    match kind {
                        I8Packed::Q8_0 => vst1q_u8(blocks.as_mut_ptr().add(at(i)), veorq_u8(q, vdupq_n_u8(0x80))),
                        _ => {
                            let off = vdupq_n_u8(if kind == I8Packed::Q4_0 { 8 } else { 0 });
                            let lo = vsubq_u8(vandq_u8(q, vdupq_n_u8(15)), off);
                            let hi = vsubq_u8(vshrq_n_u8::<4>(q), off);
                            vst1q_u8(blocks.as_mut_ptr().add(at(i)), lo);
                            vst1q_u8(blocks.as_mut_ptr().add(at(4 + i)), hi);
                        }
                    }
                }
            }
        }
    }
}
