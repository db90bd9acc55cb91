//! Int8 SMOPA for SME1 CPUs (SME2 takes `i8_smopa_1vlx1vl`; four int8 of consecutive k
//! per 32-bit unit) with ggml's x86 block numerics, on the 2VL x 2VL tile step of [`super`]: per 32-element block, the int32 sums
//! of the four tiles are drained into f32 accumulators as ggml-cpu scales them, per output
//! and block in order: `f = fma(isum, d_w * d_a, f)`, then, for weights with a minimum,
//! `f = fma(m_w, s_a, f)`. The accumulators of one tile step live in the thread's scratch
//! (ZA holds the int32 sums), and each output is stored once.
//!
//! The drain (per block and row of a tile: MOVA, SCVTF, FMUL, FMLA, and the accumulator's
//! load and store) costs far more than the block's eight SMOPAs: per executed instruction
//! this kernel does less than the f16 one (`f16_fmopa_2vlx2vl`), which is why the engine
//! takes it on SME1 only where asked for. Q4_1 here adds its minimum term per block into
//! the same sum (the x86 order), not apart as ggml's aarch64 dot does.
//!
//! Scale records, per 32-element block: for an activation block, per row (two panels) the
//! pair (d_a, s_a) (8 bytes a row, 4 SVL bytes a block); for a weight block, the vectors
//! d_w of panel 0, d_w of panel 1, m_w of panel 0, m_w of panel 1 (4 SVL bytes).

use super::{args_offsets, blocks_begin, blocks_end, load_4units_sme1, mopa_4units, run_group_asm, transpose_asm, GroupArgs};

/// The per-block drain of one row of each tile into the accumulators (x13), with the
/// minimum's term when `$min` is its instructions.
macro_rules! i8_group_asm {
    ($ext:literal, $setup:literal, $load:expr, $min:expr) => {
        concat!(
            $ext, "\n",
            args_offsets!(),
            "
            smstart
            ptrue p0.b
            cntw x15
            ", $setup, "\n",
            transpose_asm!(),
            blocks_begin!(),
            "
            ldr x13, [x0, #A_ACC]
            dup z31.s, #0
            mov x14, x15
        41:
            st1w {{z31.s}}, p0, [x13]
            st1w {{z31.s}}, p0, [x13, #1, mul vl]
            st1w {{z31.s}}, p0, [x13, #2, mul vl]
            st1w {{z31.s}}, p0, [x13, #3, mul vl]
            addvl x13, x13, #4
            subs x14, x14, #1
            b.ne 41b
            mov x6, x1
            mov x7, x4
            mov x16, x9
            mov x17, x10
            ldr x8, [x0, #A_NB]
        45:
            zero {{za}}
            ",
            $load,
            mopa_4units!("smopa", "b"),
            "
            addvl x6, x6, #8
            addvl x7, x7, #8
            ",
            $load,
            mopa_4units!("smopa", "b"),
            "
            addvl x6, x6, #8
            addvl x7, x7, #8
            ld1w {{z24.s}}, p0/z, [x17]
            ld1w {{z25.s}}, p0/z, [x17, #1, mul vl]
            ld1w {{z26.s}}, p0/z, [x17, #2, mul vl]
            ld1w {{z27.s}}, p0/z, [x17, #3, mul vl]
            ldr x13, [x0, #A_ACC]
            mov x14, x16
            add x11, x16, x15, lsl #3
            mov w12, #0
        47:
            mova z0.s, p0/m, za0h.s[w12, 0]
            mova z1.s, p0/m, za1h.s[w12, 0]
            mova z2.s, p0/m, za2h.s[w12, 0]
            mova z3.s, p0/m, za3h.s[w12, 0]
            scvtf z0.s, p0/m, z0.s
            scvtf z1.s, p0/m, z1.s
            scvtf z2.s, p0/m, z2.s
            scvtf z3.s, p0/m, z3.s
            ld1rw {{z4.s}}, p0/z, [x14]
            ld1rw {{z5.s}}, p0/z, [x11]
            fmul z6.s, z24.s, z4.s
            fmul z7.s, z25.s, z4.s
            fmul z8.s, z24.s, z5.s
            fmul z9.s, z25.s, z5.s
            ld1w {{z10.s}}, p0/z, [x13]
            ld1w {{z11.s}}, p0/z, [x13, #1, mul vl]
            ld1w {{z12.s}}, p0/z, [x13, #2, mul vl]
            ld1w {{z13.s}}, p0/z, [x13, #3, mul vl]
            fmla z10.s, p0/m, z0.s, z6.s
            fmla z11.s, p0/m, z1.s, z7.s
            fmla z12.s, p0/m, z2.s, z8.s
            fmla z13.s, p0/m, z3.s, z9.s
            ", $min, "
            st1w {{z10.s}}, p0, [x13]
            st1w {{z11.s}}, p0, [x13, #1, mul vl]
            st1w {{z12.s}}, p0, [x13, #2, mul vl]
            st1w {{z13.s}}, p0, [x13, #3, mul vl]
            addvl x13, x13, #4
            add x14, x14, #8
            add x11, x11, #8
            add w12, w12, #1
            cmp w12, w15
            b.lt 47b
            addvl x16, x16, #4
            addvl x17, x17, #4
            subs x8, x8, #1
            b.ne 45b
            ldr x11, [x0, #A_ROWSM]
            sub x11, x11, x3
            ldr x13, [x0, #A_COLSN]
            whilelt p4.s, x5, x13
            add x14, x5, x15
            whilelt p5.s, x14, x13
            ldr x16, [x0, #A_DST]
            add x16, x16, x3, lsl #3
            ldr x13, [x0, #A_ACC]
            cmp x11, x15
            csel x14, x11, x15, lo
            mov w12, #0
        72:
            ld1w {{z0.s}}, p0/z, [x13]
            ld1w {{z1.s}}, p0/z, [x13, #1, mul vl]
            ldr x17, [x16], #8
            add x17, x17, x5, lsl #2
            st1w {{z0.s}}, p4, [x17]
            st1w {{z1.s}}, p5, [x17, x15, lsl #2]
            addvl x13, x13, #4
            add w12, w12, #1
            cmp x12, x14
            b.lo 72b
            subs x14, x11, x15
            b.ls 79f
            cmp x14, x15
            csel x14, x14, x15, lo
            ldr x13, [x0, #A_ACC]
            mov w12, #0
        74:
            ld1w {{z2.s}}, p0/z, [x13, #2, mul vl]
            ld1w {{z3.s}}, p0/z, [x13, #3, mul vl]
            ldr x17, [x16], #8
            add x17, x17, x5, lsl #2
            st1w {{z2.s}}, p4, [x17]
            st1w {{z3.s}}, p5, [x17, x15, lsl #2]
            addvl x13, x13, #4
            add w12, w12, #1
            cmp x12, x14
            b.lo 74b
        79:
            ",
            blocks_end!(),
        )
    };
}

/// The minimum's term of a row: `f = fma(m_w, s_a, f)`.
macro_rules! min_term {
    () => {
        "
        ld1rw {{z14.s}}, p0/z, [x14, #4]
        ld1rw {{z15.s}}, p0/z, [x11, #4]
        fmla z10.s, p0/m, z26.s, z14.s
        fmla z11.s, p0/m, z27.s, z14.s
        fmla z12.s, p0/m, z26.s, z15.s
        fmla z13.s, p0/m, z27.s, z15.s
        "
    };
}

/// One int8 group in one streaming region: SME1 instructions, weights without a minimum.
///
/// # Safety
/// The thread may use SME at the SVL `args` was laid out for, and `args` satisfies
/// `Streaming::i8_group`'s checks.
#[inline(never)]
pub(crate) unsafe fn group_sme1(args: *const GroupArgs) {
    // SAFETY: the caller's contract; the asm leaves streaming mode and ZA off.
    unsafe { run_group_asm!(args, i8_group_asm!(".arch_extension sme", "", load_4units_sme1!(), "")) }
}

/// As [`group_sme1`], with the minimum's term.
///
/// # Safety
/// As [`group_sme1`].
#[inline(never)]
pub(crate) unsafe fn group_min_sme1(args: *const GroupArgs) {
    // SAFETY: the caller's contract; the asm leaves streaming mode and ZA off.
    unsafe { run_group_asm!(args, i8_group_asm!(".arch_extension sme", "", load_4units_sme1!(), min_term!())) }
}
