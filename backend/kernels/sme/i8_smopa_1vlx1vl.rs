//! Int8 SMOPA (SME2) with ggml-cpu's aarch64 block numerics, one VL x VL output tile at a
//! time, everything in ZA. Per output and 32-element block, in block order, as stock's
//! SMMLA row-pair dot (`ggml_vec_dot_*` with `nrc == 2`, see `quant::arm_order`):
//! `f = fma(isum, d_w * d_a, f)`; for weights with a minimum also `s = s + m_w * s_a`, and
//! the output is `f + s`.
//!
//! The four ZA.S tiles:
//! - tile 0: the block's int32 sums (eight SMOPA);
//! - tile 1: the block's scales `d_a * d_w`, one FMOPA on a zeroed tile (a product of two
//!   f16 values is exact in f32, so this is stock's product);
//! - tile 2: `f`, updated per block by SME2's multi-vector FMLA into ZA (fused, as stock's
//!   contracted `vmlaq_f32`) from four rows of tile 0 (MOVA, SCVTF) and four of tile 1;
//! - tile 3: `s`, one FMOPA per block (the product is exact, so the fused add rounds as
//!   stock's plain add).
//!
//! FMLA's vector groups are four ZA rows VL32 / 4 apart, so sum rows 4g .. 4g + 3 land in
//! tile 2's rows g, g + VL32/4, ...; the stores undo that order. The drain takes two such
//! groups per step (one at SVL 128, where a tile has four rows). Operands are the 2VL
//! blocks of [`super`] (unit u of panel p is vector 2u + p): a tile's loads take four
//! vectors and use the first and third, the fourth masked off by the predicate pn9 (three
//! vectors' lanes), so no load passes the block's last unit. Tiles wholly past the output
//! rows or columns are skipped.
//!
//! Scale records as in `i8_smopa_2vlx2vl`: per activation block and 32-block, (d_a, s_a)
//! per row (LD2W splits them); per weight block, d_w of panels 0 and 1, then m_w of both.

use super::{args_offsets, blocks_begin, blocks_end, run_group_asm, transpose_asm, GroupArgs};

macro_rules! i8_za_group_asm {
    ($min_scale:expr, $min_store:expr) => {
        concat!(
            ".arch_extension sme2\n",
            args_offsets!(),
            "
            smstart
            ptrue p0.b
            cntw x15
            mov x13, #0
            add x14, x15, x15, lsl #1
            whilelt pn9.s, x13, x14, vlx4
            ",
            transpose_asm!(),
            blocks_begin!(),
            "
            mov x13, #0
        41:
            lsr x14, x13, #1
            madd x6, x14, x15, x3
            ldr x7, [x0, #A_ROWSM]
            cmp x6, x7
            b.hs 49f
            and x14, x13, #1
            madd x6, x14, x15, x5
            ldr x7, [x0, #A_COLSN]
            cmp x6, x7
            b.hs 49f
            lsr x14, x13, #1
            rdsvl x11, #1
            madd x6, x14, x11, x1
            lsl x12, x11, #1
            madd x16, x14, x12, x9
            and x14, x13, #1
            madd x7, x14, x11, x4
            madd x17, x14, x11, x10
            zero {{za2.s, za3.s}}
            ldr x11, [x0, #A_NB]
        45:
            zero {{za0.s, za1.s}}
            ",
            four_units!("0", "4"),
            four_units!("8", "12"),
            "
            addvl x6, x6, #16
            addvl x7, x7, #16
            ld2w {{z8.s, z9.s}}, p0/z, [x16]
            ld1w {{z10.s}}, p0/z, [x17]
            fmopa za1.s, p0/m, p0/m, z8.s, z10.s
            ", $min_scale, "
            addvl x16, x16, #4
            addvl x17, x17, #4
            mov w12, #0
            mov w14, #4
            mov w8, #2
            cmp w15, #4
            b.eq 48f
        46:
            mova {{z0.s-z3.s}}, za0h.s[w12, 0:3]
            mova {{z4.s-z7.s}}, za1h.s[w12, 0:3]
            mova {{z8.s-z11.s}}, za0h.s[w14, 0:3]
            mova {{z12.s-z15.s}}, za1h.s[w14, 0:3]
            scvtf {{z0.s-z3.s}}, {{z0.s-z3.s}}
            scvtf {{z8.s-z11.s}}, {{z8.s-z11.s}}
            fmla za.s[w8, 0, vgx4], {{z0.s-z3.s}}, {{z4.s-z7.s}}
            fmla za.s[w8, 4, vgx4], {{z8.s-z11.s}}, {{z12.s-z15.s}}
            add w12, w12, #8
            add w14, w14, #8
            add w8, w8, #8
            cmp w12, w15
            b.lt 46b
            b 44f
        48:
            mova {{z0.s-z3.s}}, za0h.s[w12, 0:3]
            mova {{z4.s-z7.s}}, za1h.s[w12, 0:3]
            scvtf {{z0.s-z3.s}}, {{z0.s-z3.s}}
            fmla za.s[w8, 0, vgx4], {{z0.s-z3.s}}, {{z4.s-z7.s}}
        44:
            subs x11, x11, #1
            b.ne 45b
            lsr x14, x13, #1
            madd x6, x14, x15, x3
            ldr x7, [x0, #A_ROWSM]
            sub x7, x7, x6
            cmp x7, x15
            csel x7, x7, x15, lo
            ldr x16, [x0, #A_DST]
            add x16, x16, x6, lsl #3
            and x14, x13, #1
            madd x17, x14, x15, x5
            ldr x11, [x0, #A_COLSN]
            whilelt p4.s, x17, x11
            lsr x11, x15, #2
            mov x14, #0
        47:
            lsr x12, x14, #2
            and x8, x14, #3
            madd x12, x8, x11, x12
            mova z0.s, p0/m, za2h.s[w12, 0]
            ", $min_store, "
            ldr x8, [x16], #8
            add x8, x8, x17, lsl #2
            st1w {{z0.s}}, p4, [x8]
            add x14, x14, #1
            cmp x14, x7
            b.lo 47b
        49:
            add x13, x13, #1
            cmp x13, #4
            b.lo 41b
            ",
            blocks_end!(),
        )
    };
}

/// Four units of the tile: the first and third vector of four-vector loads from vector
/// `$at` (and `$at2` = `$at` + 4) of the activation (x6) and weight (x7) cursors (unit u of panel p is vector 2u + p;
/// the cursors point at the tile's panel), one SMOPA each.
macro_rules! four_units {
    ($at:literal, $at2:literal) => {
        concat!(
            "ld1w {{z16.s-z19.s}}, pn9/z, [x6, #", $at, ", mul vl]\n",
            "ld1w {{z20.s-z23.s}}, pn9/z, [x6, #", $at2, ", mul vl]\n",
            "ld1w {{z24.s-z27.s}}, pn9/z, [x7, #", $at, ", mul vl]\n",
            "ld1w {{z28.s-z31.s}}, pn9/z, [x7, #", $at2, ", mul vl]\n",
            "smopa za0.s, p0/m, p0/m, z16.b, z24.b\n",
            "smopa za0.s, p0/m, p0/m, z18.b, z26.b\n",
            "smopa za0.s, p0/m, p0/m, z20.b, z28.b\n",
            "smopa za0.s, p0/m, p0/m, z22.b, z30.b\n",
        )
    };
}

/// The minimum's block term: `s += s_a * m_w` into tile 3.
macro_rules! min_scale {
    () => {
        "
        ld1w {{z11.s}}, p0/z, [x17, #2, mul vl]
        fmopa za3.s, p0/m, p0/m, z9.s, z11.s
        "
    };
}

/// The output row `f + s`: tile 3 holds `s` in output row order (w14).
macro_rules! min_store {
    () => {
        "
        mova z1.s, p0/m, za3h.s[w14, 0]
        fadd z0.s, z0.s, z1.s
        "
    };
}

/// One int8 group in one streaming region, weights without a minimum (Q4_0, Q8_0).
///
/// # Safety
/// The thread may use SME2 at the SVL `args` was laid out for, and `args` satisfies
/// `Streaming::i8_group`'s checks.
#[inline(never)]
pub(crate) unsafe fn group(args: *const GroupArgs) {
    // SAFETY: the caller's contract; the asm leaves streaming mode and ZA off.
    unsafe { run_group_asm!(args, i8_za_group_asm!("", "")) }
}

/// As [`group`], weights with a minimum (Q4_1).
///
/// # Safety
/// As [`group`].
#[inline(never)]
pub(crate) unsafe fn group_min(args: *const GroupArgs) {
    // SAFETY: the caller's contract; the asm leaves streaming mode and ZA off.
    unsafe { run_group_asm!(args, i8_za_group_asm!(min_scale!(), min_store!())) }
}
