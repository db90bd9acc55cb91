//! Arm SME / SME2 kernels: outer products into the ZA tiles, driven in streaming mode.
//!
//! Operand layout ("2VL x unit", as KleidiAI packs its SME operands): a 32-bit *unit* is
//! what one lane of an outer-product operand holds for one row: two f16 / bf16 values
//! (widening FMOPA / BFMOPA; which two k share a unit is the stager's choice, the same for
//! both operands, see `stage::nibble_pairs`), one f32 (FMOPA), four int8 of consecutive k
//! (SMOPA). A *panel* is VL32 = SVL/32 rows; a *block* is two panels. A block of `kunits`
//! units is stored unit by unit, each unit as panel 0's vector then panel 1's vector
//! (`2 * kunits` vectors of SVL bytes), so one pointer walks both panels and SME2 loads
//! four vectors at once. Shapes scale with the SVL (128 to 2048 bits): the kernels read it
//! with CNTW / RDSVL, the stagers take it from [`Geometry`].
//!
//! One call of a group kernel ([`f16_fmopa_2vlx2vl`], ...) is one streaming region: it
//! enters streaming mode with ZA on, optionally transposes the weight group's row-major
//! units into blocks through ZA (horizontal slices in, vertical slices out), multiplies
//! every activation block by every weight block (2 x 2 ZA.S tiles, accumulated over all of
//! K), stores each tile's rows straight into the output rows, and leaves streaming mode,
//! all in one `asm!` block: the compiler cannot put ordinary vector code between `smstart`
//! and `smstop`, and nothing in the region can panic. Activation rows become blocks the
//! same way ([`Streaming::transpose`]). Dequantization and conversion run before, outside
//! streaming mode (NEON: `stage`). [`Streaming`] checks around the regions that the thread
//! is out of streaming mode with ZA off (and puts it back there if not, also when
//! unwinding).
//!
//! SME1 instructions are the baseline; where the CPU has SME2 the float kernels load four
//! vectors per instruction and take eight units per K step.

pub mod stage;
pub mod f16_fmopa_2vlx2vl;
pub mod bf16_bfmopa_2vlx2vl;
pub mod f32_fmopa_2vlx2vl;
pub mod i8_smopa_2vlx2vl;
pub mod i8_smopa_1vlx1vl;

#[cfg(test)]
mod tests;

use std::marker::PhantomData;

/// The CPU's features, detected once (sessions begin per weight group).
fn features() -> &'static crate::platform::CpuFeatures {
    static F: std::sync::OnceLock<crate::platform::CpuFeatures> = std::sync::OnceLock::new();
    F.get_or_init(crate::platform::CpuFeatures::detect)
}

/// The streaming vector length in bytes (`RDSVL`), or None where the CPU has no SME.
pub fn svl_bytes() -> Option<usize> {
    let f = features();
    f.sme.then_some(f.svl_bytes)
}

/// Which kernel the engine takes for the types both run (Q4_0, Q4_1, Q8_0): tests and the
/// kernel benchmark pick it per run; by default the engine's choice.
pub mod int8_choice {
    use std::sync::atomic::{AtomicU8, Ordering};
    static ENGINE: AtomicU8 = AtomicU8::new(0);

    /// None: the default; Some(true): int8; Some(false): float.
    pub fn set(int8: Option<bool>) {
        ENGINE.store(int8.map_or(0, |i| 1 + i as u8), Ordering::SeqCst);
    }

    pub fn get() -> Option<bool> {
        match ENGINE.load(Ordering::Relaxed) {
            0 => None,
            v => Some(v == 2),
        }
    }
}

/// PSTATE.SM and PSTATE.ZA (`SVCR` bits 0 and 1).
fn svcr() -> u64 {
    let v: u64;
    // SAFETY: reading SVCR only needs SME, which every caller checked (a `Streaming` exists
    // only where the process drives SME); it changes no state.
    unsafe { std::arch::asm!(".arch_extension sme", "mrs {0}, svcr", out(reg) v, options(nomem, nostack, preserves_flags)) };
    v
}

/// The shapes of the kernels at one streaming vector length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    /// SVL in bytes (16 to 256).
    pub svl: usize,
    /// The CPU has SME2: the kernels take the multi-vector loads.
    pub sme2: bool,
}

impl Geometry {
    /// Rows per panel: 32-bit lanes of a streaming vector.
    pub const fn vl32(&self) -> usize {
        self.svl / 4
    }

    /// Rows per block (two panels): the activation and weight rows of one 2 x 2 tile step.
    pub const fn block_rows(&self) -> usize {
        2 * self.vl32()
    }

    /// Units a row of `units` is padded to: whole transposition chunks (VL32 units) and whole
    /// steps of the K loop (8 units).
    pub const fn kunits(&self, units: usize) -> usize {
        let q = if self.vl32() > 8 { self.vl32() } else { 8 };
        units.div_ceil(q) * q
    }

    /// Bytes of one block of `kunits` units.
    pub const fn block_bytes(&self, kunits: usize) -> usize {
        kunits * 2 * self.svl
    }
}

/// The outer-product instruction of a float group kernel and its unit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outer {
    /// FMOPA widening: two f16 per unit.
    F16,
    /// BFMOPA: two bf16 per unit.
    Bf16,
    /// FMOPA: one f32 per unit.
    F32,
}

impl Outer {
    /// Values of K per 32-bit unit.
    pub const fn per_unit(self) -> usize {
        match self {
            Outer::F16 | Outer::Bf16 => 2,
            Outer::F32 => 1,
        }
    }
}

/// Arguments of a group kernel, read by the `asm!` through one pointer (field offsets are
/// the `A_*` constants the kernels use).
#[repr(C)]
pub(crate) struct GroupArgs {
    /// Activation blocks: block `mb` at `acts + mb * a_block_bytes`.
    pub acts: *const u8,
    pub a_block_bytes: usize,
    pub m_blocks: usize,
    /// Activation rows with an output row (rows past it are padding).
    pub rows_m: usize,
    /// Weight blocks: block `nb` at `w + nb * w_block_bytes`.
    pub w: *mut u8,
    pub w_block_bytes: usize,
    /// Weight rows of the group (output columns).
    pub cols_n: usize,
    /// Units per row (a multiple of 4 and of VL32).
    pub kunits: usize,
    /// Output row pointers, one per activation row below `rows_m`: column 0 of the group.
    pub dst: *const *mut f32,
    /// Row-major units to transpose into `w` first (row r at `src + r * src_stride`), or
    /// null when `w` holds the blocks already.
    pub src: *const u8,
    pub src_stride: usize,
    /// Int8 kernels: per-32-block scale records of the activation and weight blocks (see
    /// `i8_smopa_2vlx2vl`), the blocks per row, and the f32 accumulators of one tile step.
    pub a_scales: *const f32,
    pub w_scales: *const f32,
    pub nb: usize,
    pub acc: *mut f32,
}

/// Byte offsets of the `GroupArgs` fields, for the `asm!` (checked below).
macro_rules! args_offsets {
    () => {
        "
        .set A_ACTS, 0
        .set A_ABLOCK, 8
        .set A_MBLOCKS, 16
        .set A_ROWSM, 24
        .set A_W, 32
        .set A_WBLOCK, 40
        .set A_COLSN, 48
        .set A_KUNITS, 56
        .set A_DST, 64
        .set A_SRC, 72
        .set A_SRCSTRIDE, 80
        .set A_ASCALES, 88
        .set A_WSCALES, 96
        .set A_NB, 104
        .set A_ACC, 112
        "
    };
}
pub(crate) use args_offsets;

const _: () = {
    assert!(std::mem::offset_of!(GroupArgs, acts) == 0);
    assert!(std::mem::offset_of!(GroupArgs, a_block_bytes) == 8);
    assert!(std::mem::offset_of!(GroupArgs, m_blocks) == 16);
    assert!(std::mem::offset_of!(GroupArgs, rows_m) == 24);
    assert!(std::mem::offset_of!(GroupArgs, w) == 32);
    assert!(std::mem::offset_of!(GroupArgs, w_block_bytes) == 40);
    assert!(std::mem::offset_of!(GroupArgs, cols_n) == 48);
    assert!(std::mem::offset_of!(GroupArgs, kunits) == 56);
    assert!(std::mem::offset_of!(GroupArgs, dst) == 64);
    assert!(std::mem::offset_of!(GroupArgs, src) == 72);
    assert!(std::mem::offset_of!(GroupArgs, src_stride) == 80);
    assert!(std::mem::offset_of!(GroupArgs, a_scales) == 88);
    assert!(std::mem::offset_of!(GroupArgs, w_scales) == 96);
    assert!(std::mem::offset_of!(GroupArgs, nb) == 104);
    assert!(std::mem::offset_of!(GroupArgs, acc) == 112);
};

/// The transposition of a group's row-major units into weight blocks through ZA tile 0:
/// VL32 rows of VL32 units loaded as horizontal slices, stored as vertical ones. Runs in
/// streaming mode with p0 all true and x15 = VL32; clobbers x1-x8, x11, x13, x14, x16, x17.
macro_rules! transpose_asm {
    () => {
        "
        ldr x1, [x0, #A_SRC]
        cbz x1, 29f
        ldr x2, [x0, #A_SRCSTRIDE]
        ldr x3, [x0, #A_W]
        ldr x16, [x0, #A_KUNITS]
        ldr x17, [x0, #A_WBLOCK]
        ldr x4, [x0, #A_COLSN]
        mov x5, #0
        rdsvl x11, #2
    22:
        mul x6, x5, x15
        mul x6, x6, x2
        add x6, x6, x1
        lsr x7, x5, #1
        mul x7, x7, x17
        add x7, x7, x3
        tst x5, #1
        b.eq 23f
        addvl x7, x7, #1
    23:
        mov x8, #0
    24:
        add x13, x6, x8, lsl #2
        mov w12, #0
    25:
        ld1w {{za0h.s[w12, 0]}}, p0/z, [x13]
        add x13, x13, x2
        ld1w {{za0h.s[w12, 1]}}, p0/z, [x13]
        add x13, x13, x2
        ld1w {{za0h.s[w12, 2]}}, p0/z, [x13]
        add x13, x13, x2
        ld1w {{za0h.s[w12, 3]}}, p0/z, [x13]
        add x13, x13, x2
        add w12, w12, #4
        cmp w12, w15
        b.lt 25b
        madd x14, x8, x11, x7
        mov w12, #0
    26:
        st1w {{za0v.s[w12, 0]}}, p0, [x14]
        addvl x14, x14, #2
        st1w {{za0v.s[w12, 1]}}, p0, [x14]
        addvl x14, x14, #2
        st1w {{za0v.s[w12, 2]}}, p0, [x14]
        addvl x14, x14, #2
        st1w {{za0v.s[w12, 3]}}, p0, [x14]
        addvl x14, x14, #2
        add w12, w12, #4
        cmp w12, w15
        b.lt 26b
        add x8, x8, x15
        cmp x8, x16
        b.lt 24b
        add x5, x5, #1
        mul x13, x5, x15
        cmp x13, x4
        b.lt 22b
    29:
        "
    };
}
pub(crate) use transpose_asm;

/// The stores of a finished 2 x 2 tile step: rows `x3 ..` of the activation block (x11 =
/// rows left from x3), columns `x5 ..` of the group, through the row pointers at
/// `A_DST + 8 * row`. Expects x15 = VL32; clobbers x11, x13, x14, x16, x17, w12, p4, p5.
macro_rules! store_tiles_asm {
    () => {
        "
        ldr x13, [x0, #A_COLSN]
        whilelt p4.s, x5, x13
        add x14, x5, x15
        whilelt p5.s, x14, x13
        ldr x16, [x0, #A_DST]
        add x16, x16, x3, lsl #3
        cmp x11, x15
        csel x14, x11, x15, lo
        mov w12, #0
    62:
        ldr x17, [x16], #8
        add x17, x17, x5, lsl #2
        st1w {{za0h.s[w12, 0]}}, p4, [x17]
        st1w {{za1h.s[w12, 0]}}, p5, [x17, x15, lsl #2]
        add w12, w12, #1
        cmp x12, x14
        b.lo 62b
        subs x14, x11, x15
        b.ls 69f
        cmp x14, x15
        csel x14, x14, x15, lo
        mov w12, #0
    64:
        ldr x17, [x16], #8
        add x17, x17, x5, lsl #2
        st1w {{za2h.s[w12, 0]}}, p4, [x17]
        st1w {{za3h.s[w12, 0]}}, p5, [x17, x15, lsl #2]
        add w12, w12, #1
        cmp x12, x14
        b.lo 64b
    69:
        "
    };
}
pub(crate) use store_tiles_asm;

/// The group kernels' loop over activation blocks (x1, row x3, int8 scale records x9) and
/// weight blocks (x4, column x5, int8 scale records x10): `blocks_begin` opens both (the
/// weight block's body starts at label 40), `blocks_end` steps both and leaves streaming
/// mode. The float kernels' scale pointers are null and step by nothing (nb = 0). Expects
/// x15 = VL32; the end clobbers x13, x14.
macro_rules! blocks_begin {
    () => {
        "
        ldr x1, [x0, #A_ACTS]
        ldr x2, [x0, #A_MBLOCKS]
        ldr x9, [x0, #A_ASCALES]
        mov x3, #0
        cbz x2, 90f
    30:
        ldr x4, [x0, #A_W]
        ldr x10, [x0, #A_WSCALES]
        mov x5, #0
    40:
        "
    };
}
pub(crate) use blocks_begin;

/// See [`blocks_begin`].
macro_rules! blocks_end {
    () => {
        "
        ldr x13, [x0, #A_WBLOCK]
        add x4, x4, x13
        ldr x13, [x0, #A_NB]
        rdsvl x14, #4
        madd x10, x13, x14, x10
        add x5, x5, x15, lsl #1
        ldr x13, [x0, #A_COLSN]
        cmp x5, x13
        b.lo 40b
        ldr x13, [x0, #A_ABLOCK]
        add x1, x1, x13
        ldr x13, [x0, #A_NB]
        rdsvl x14, #4
        madd x9, x13, x14, x9
        add x3, x3, x15, lsl #1
        subs x2, x2, #1
        b.ne 30b
    90:
        smstop
        "
    };
}
pub(crate) use blocks_end;

/// Four units of a 2 x 2 tile step: activation vectors z0-z7 (unit u: panels z(2u), z(2u+1)),
/// weight vectors z16-z23 likewise, into ZA.S tiles 0-3 (tile 2 pa + pw).
macro_rules! mopa_4units {
    ($mopa:literal, $t:literal) => {
        concat!(
            $mopa, " za0.s, p0/m, p0/m, z0.", $t, ", z16.", $t, "\n",
            $mopa, " za1.s, p0/m, p0/m, z0.", $t, ", z17.", $t, "\n",
            $mopa, " za2.s, p0/m, p0/m, z1.", $t, ", z16.", $t, "\n",
            $mopa, " za3.s, p0/m, p0/m, z1.", $t, ", z17.", $t, "\n",
            $mopa, " za0.s, p0/m, p0/m, z2.", $t, ", z18.", $t, "\n",
            $mopa, " za1.s, p0/m, p0/m, z2.", $t, ", z19.", $t, "\n",
            $mopa, " za2.s, p0/m, p0/m, z3.", $t, ", z18.", $t, "\n",
            $mopa, " za3.s, p0/m, p0/m, z3.", $t, ", z19.", $t, "\n",
            $mopa, " za0.s, p0/m, p0/m, z4.", $t, ", z20.", $t, "\n",
            $mopa, " za1.s, p0/m, p0/m, z4.", $t, ", z21.", $t, "\n",
            $mopa, " za2.s, p0/m, p0/m, z5.", $t, ", z20.", $t, "\n",
            $mopa, " za3.s, p0/m, p0/m, z5.", $t, ", z21.", $t, "\n",
            $mopa, " za0.s, p0/m, p0/m, z6.", $t, ", z22.", $t, "\n",
            $mopa, " za1.s, p0/m, p0/m, z6.", $t, ", z23.", $t, "\n",
            $mopa, " za2.s, p0/m, p0/m, z7.", $t, ", z22.", $t, "\n",
            $mopa, " za3.s, p0/m, p0/m, z7.", $t, ", z23.", $t, "\n",
        )
    };
}
pub(crate) use mopa_4units;

/// Four more units from z8-z15 and z24-z31 (SME2's eight-unit step).
macro_rules! mopa_4units_hi {
    ($mopa:literal, $t:literal) => {
        concat!(
            $mopa, " za0.s, p0/m, p0/m, z8.", $t, ", z24.", $t, "\n",
            $mopa, " za1.s, p0/m, p0/m, z8.", $t, ", z25.", $t, "\n",
            $mopa, " za2.s, p0/m, p0/m, z9.", $t, ", z24.", $t, "\n",
            $mopa, " za3.s, p0/m, p0/m, z9.", $t, ", z25.", $t, "\n",
            $mopa, " za0.s, p0/m, p0/m, z10.", $t, ", z26.", $t, "\n",
            $mopa, " za1.s, p0/m, p0/m, z10.", $t, ", z27.", $t, "\n",
            $mopa, " za2.s, p0/m, p0/m, z11.", $t, ", z26.", $t, "\n",
            $mopa, " za3.s, p0/m, p0/m, z11.", $t, ", z27.", $t, "\n",
            $mopa, " za0.s, p0/m, p0/m, z12.", $t, ", z28.", $t, "\n",
            $mopa, " za1.s, p0/m, p0/m, z12.", $t, ", z29.", $t, "\n",
            $mopa, " za2.s, p0/m, p0/m, z13.", $t, ", z28.", $t, "\n",
            $mopa, " za3.s, p0/m, p0/m, z13.", $t, ", z29.", $t, "\n",
            $mopa, " za0.s, p0/m, p0/m, z14.", $t, ", z30.", $t, "\n",
            $mopa, " za1.s, p0/m, p0/m, z14.", $t, ", z31.", $t, "\n",
            $mopa, " za2.s, p0/m, p0/m, z15.", $t, ", z30.", $t, "\n",
            $mopa, " za3.s, p0/m, p0/m, z15.", $t, ", z31.", $t, "\n",
        )
    };
}
pub(crate) use mopa_4units_hi;

/// The K step of a float kernel, SME1: four units, one vector per load.
macro_rules! float_step_sme1 {
    ($mopa:literal, $t:literal) => {
        concat!(
            $crate::kernels::sme::load_4units_sme1!(),
            $crate::kernels::sme::mopa_4units!($mopa, $t),
            "
            addvl x6, x6, #8
            addvl x7, x7, #8
            subs x8, x8, #4
            "
        )
    };
}
pub(crate) use float_step_sme1;

/// The K step of a float kernel, SME2: eight units, four vectors per load (all 32 Z
/// registers: 16 activation and 16 weight vectors).
macro_rules! float_step_sme2 {
    ($mopa:literal, $t:literal) => {
        concat!(
            "
            ld1w {{z0.s-z3.s}}, pn8/z, [x6]
            ld1w {{z16.s-z19.s}}, pn8/z, [x7]
            ld1w {{z4.s-z7.s}}, pn8/z, [x6, #4, mul vl]
            ld1w {{z20.s-z23.s}}, pn8/z, [x7, #4, mul vl]
            ld1w {{z8.s-z11.s}}, pn8/z, [x6, #8, mul vl]
            ld1w {{z24.s-z27.s}}, pn8/z, [x7, #8, mul vl]
            ld1w {{z12.s-z15.s}}, pn8/z, [x6, #12, mul vl]
            ld1w {{z28.s-z31.s}}, pn8/z, [x7, #12, mul vl]
            ",
            $crate::kernels::sme::mopa_4units!($mopa, $t),
            $crate::kernels::sme::mopa_4units_hi!($mopa, $t),
            "
            addvl x6, x6, #16
            addvl x7, x7, #16
            subs x8, x8, #8
            "
        )
    };
}
pub(crate) use float_step_sme2;

/// Loads of four units of both operands (x6: activations, x7: weights), SME1: one vector
/// per instruction.
macro_rules! load_4units_sme1 {
    () => {
        "
        ld1w {{z0.s}}, p0/z, [x6]
        ld1w {{z1.s}}, p0/z, [x6, #1, mul vl]
        ld1w {{z16.s}}, p0/z, [x7]
        ld1w {{z17.s}}, p0/z, [x7, #1, mul vl]
        ld1w {{z2.s}}, p0/z, [x6, #2, mul vl]
        ld1w {{z3.s}}, p0/z, [x6, #3, mul vl]
        ld1w {{z18.s}}, p0/z, [x7, #2, mul vl]
        ld1w {{z19.s}}, p0/z, [x7, #3, mul vl]
        ld1w {{z4.s}}, p0/z, [x6, #4, mul vl]
        ld1w {{z5.s}}, p0/z, [x6, #5, mul vl]
        ld1w {{z20.s}}, p0/z, [x7, #4, mul vl]
        ld1w {{z21.s}}, p0/z, [x7, #5, mul vl]
        ld1w {{z6.s}}, p0/z, [x6, #6, mul vl]
        ld1w {{z7.s}}, p0/z, [x6, #7, mul vl]
        ld1w {{z22.s}}, p0/z, [x7, #6, mul vl]
        ld1w {{z23.s}}, p0/z, [x7, #7, mul vl]
        "
    };
}
pub(crate) use load_4units_sme1;

/// A whole float group kernel: the optional transposition, then every activation block by
/// every weight block, K accumulated in ZA, each tile stored once. `$ext` is the assembler
/// extension line, `$setup` extra setup, `$step` one step of the K loop (loads, outer
/// products, pointers, `subs x8`).
macro_rules! float_group_asm {
    ($ext:literal, $setup:literal, $step:expr) => {
        concat!(
            $ext, "\n",
            $crate::kernels::sme::args_offsets!(),
            "
            smstart
            ptrue p0.b
            cntw x15
            ", $setup, "\n",
            $crate::kernels::sme::transpose_asm!(),
            $crate::kernels::sme::blocks_begin!(),
            "
            zero {{za}}
            mov x6, x1
            mov x7, x4
            ldr x8, [x0, #A_KUNITS]
        50:
            ",
            $step,
            "
            b.ne 50b
            ldr x11, [x0, #A_ROWSM]
            sub x11, x11, x3
            ",
            $crate::kernels::sme::store_tiles_asm!(),
            $crate::kernels::sme::blocks_end!(),
        )
    };
}
pub(crate) use float_group_asm;

/// Runs the asm of a float group kernel with `args` in x0 and every register it touches
/// declared clobbered (`smstart` / `smstop` zero all of z0-z31 and p0-p15).
macro_rules! run_group_asm {
    ($args:expr, $text:expr) => {
        std::arch::asm!(
            $text,
            in("x0") $args,
            out("x1") _, out("x2") _, out("x3") _, out("x4") _, out("x5") _, out("x6") _, out("x7") _,
            out("x8") _, out("x9") _, out("x10") _, out("x11") _, out("x12") _, out("x13") _, out("x14") _,
            out("x15") _, out("x16") _, out("x17") _,
            out("v0") _, out("v1") _, out("v2") _, out("v3") _, out("v4") _, out("v5") _, out("v6") _, out("v7") _,
            out("v8") _, out("v9") _, out("v10") _, out("v11") _, out("v12") _, out("v13") _, out("v14") _, out("v15") _,
            out("v16") _, out("v17") _, out("v18") _, out("v19") _, out("v20") _, out("v21") _, out("v22") _, out("v23") _,
            out("v24") _, out("v25") _, out("v26") _, out("v27") _, out("v28") _, out("v29") _, out("v30") _, out("v31") _,
            out("p0") _, out("p1") _, out("p2") _, out("p3") _, out("p4") _, out("p5") _, out("p6") _, out("p7") _,
            out("p8") _, out("p9") _, out("p10") _, out("p11") _, out("p12") _, out("p13") _, out("p14") _, out("p15") _,
            out("ffr") _,
            options(nostack)
        )
    };
}
pub(crate) use run_group_asm;

/// Output rows of one weight group: `rows[i]` = activation row i's columns of the group.
pub struct DstRows<'a> {
    ptrs: Vec<*mut f32>,
    cols: usize,
    _rows: PhantomData<&'a mut [f32]>,
}

impl<'a> DstRows<'a> {
    /// The rows, each at least `cols` floats (checked).
    pub fn new(rows: impl IntoIterator<Item = &'a mut [f32]>, cols: usize) -> DstRows<'a> {
        let ptrs = rows
            .into_iter()
            .map(|r| {
                assert!(r.len() >= cols, "SMEPilot: an output row of {} floats for {cols} columns", r.len());
                r.as_mut_ptr()
            })
            .collect();
        DstRows { ptrs, cols, _rows: PhantomData }
    }

    pub fn len(&self) -> usize {
        self.ptrs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ptrs.is_empty()
    }
}

/// Operands of one group call: activation blocks (all of M), the weight group (either
/// row-major units to transpose into `blocks`, or `blocks` staged already), the output.
pub struct GroupOperands<'a, 'd> {
    /// `m_blocks` activation blocks of `kunits` units.
    pub acts: &'a [u8],
    /// Row-major units of the group's rows (`cols` rows rounded up to a panel, `src_stride`
    /// bytes apart), or None when `blocks` holds the staged blocks.
    pub src: Option<(&'a [u8], usize)>,
    /// The weight blocks (written when `src` is given).
    pub blocks: &'a mut [u8],
    pub kunits: usize,
    pub dst: &'a mut DstRows<'d>,
}

impl GroupOperands<'_, '_> {
    /// Checks every length the kernel reads or writes, and returns its arguments.
    fn args(&mut self, geo: &Geometry) -> GroupArgs {
        let (vl32, br) = (geo.vl32(), geo.block_rows());
        let (rows_m, cols) = (self.dst.len(), self.dst.cols);
        assert!(self.kunits > 0 && self.kunits == geo.kunits(self.kunits), "SMEPilot: {} units is not a whole K step", self.kunits);
        assert!(rows_m > 0 && cols > 0, "SMEPilot: an empty group");
        let bb = geo.block_bytes(self.kunits);
        let (m_blocks, n_blocks) = (rows_m.div_ceil(br), cols.div_ceil(br));
        assert!(self.acts.len() >= m_blocks * bb, "SMEPilot: activation blocks of {} bytes for {m_blocks} blocks", self.acts.len());
        assert!(self.blocks.len() >= n_blocks * bb, "SMEPilot: weight blocks of {} bytes for {n_blocks} blocks", self.blocks.len());
        let (src, src_stride) = match self.src {
            Some((s, stride)) => {
                let rows = cols.next_multiple_of(vl32);
                assert!(stride >= self.kunits * 4 && s.len() >= (rows - 1) * stride + self.kunits * 4, "SMEPilot: row-major weights too short");
                (s.as_ptr(), stride)
            }
            None => (std::ptr::null(), 0),
        };
        GroupArgs {
            acts: self.acts.as_ptr(),
            a_block_bytes: bb,
            m_blocks,
            rows_m,
            w: self.blocks.as_mut_ptr(),
            w_block_bytes: bb,
            cols_n: cols,
            kunits: self.kunits,
            dst: self.dst.ptrs.as_ptr(),
            src,
            src_stride,
            a_scales: std::ptr::null(),
            w_scales: std::ptr::null(),
            nb: 0,
            acc: std::ptr::null_mut(),
        }
    }
}

/// A thread's use of the SME unit: exists only where the process drives SME at the SVL the
/// layouts were made for. Not `Send`: streaming mode and ZA belong to the thread. Checks on
/// creation that the thread is out of streaming mode with ZA off (what the kernels assume:
/// no ZA contents of a caller to keep), and puts it back there when dropped, unwinding or
/// not.
pub struct Streaming {
    geo: Geometry,
    _thread: PhantomData<*const ()>,
}

impl Streaming {
    /// The unit at geometry `geo`: panics where the CPU has no SME, or another SVL.
    pub fn begin(geo: Geometry) -> Streaming {
        let f = features();
        assert!(f.sme && f.svl_bytes == geo.svl && (f.sme2 || !geo.sme2), "SMEPilot: SME kernels for SVL {} bytes (sme2 {}) on a CPU with {f:?}", geo.svl, geo.sme2);
        assert_eq!(svcr(), 0, "SMEPilot: an SME session on a thread in streaming mode or with ZA on");
        Streaming { geo, _thread: PhantomData }
    }

    pub fn geometry(&self) -> Geometry {
        self.geo
    }

    /// Row-major units (`rows` rows, `stride` bytes apart, each `kunits` units) into blocks
    /// (the layout of `GroupOperands::blocks`), through ZA in one streaming region: how
    /// activation rows become activation blocks. Rows past `rows` up to a whole panel are
    /// read too. Panics if an operand is shorter than that.
    pub fn transpose(&self, src: &[u8], stride: usize, rows: usize, blocks: &mut [u8], kunits: usize) {
        let (vl32, bb) = (self.geo.vl32(), self.geo.block_bytes(kunits));
        assert!(rows > 0 && kunits > 0 && kunits == self.geo.kunits(kunits), "SMEPilot: transposition of {rows} rows of {kunits} units");
        assert!(stride >= 4 * kunits && src.len() >= (rows.next_multiple_of(vl32) - 1) * stride + 4 * kunits, "SMEPilot: row-major units too short");
        assert!(blocks.len() >= rows.div_ceil(self.geo.block_rows()) * bb, "SMEPilot: blocks too short");
        let args = GroupArgs {
            acts: std::ptr::null(),
            a_block_bytes: bb,
            m_blocks: 0,
            rows_m: 0,
            w: blocks.as_mut_ptr(),
            w_block_bytes: bb,
            cols_n: rows,
            kunits,
            dst: std::ptr::null(),
            src: src.as_ptr(),
            src_stride: stride,
            a_scales: std::ptr::null(),
            w_scales: std::ptr::null(),
            nb: 0,
            acc: std::ptr::null_mut(),
        };
        // SAFETY: this thread may use SME at this SVL (checked at `begin`); with no
        // activation blocks the kernel only transposes: it reads the panels of `src` and
        // writes the blocks of `blocks`, both checked above.
        unsafe { f32_fmopa_2vlx2vl::group_sme1(&args) };
        debug_assert_eq!(svcr(), 0);
    }

    /// One float group (see the module doc): `ops.dst[i][c]` = activation row i · weight
    /// row c, over `ops.kunits` units. Panics if an operand is shorter than the kernel uses.
    pub fn float_group(&self, outer: Outer, ops: &mut GroupOperands) {
        let args = ops.args(&self.geo);
        let p = &args as *const GroupArgs;
        // SAFETY: this thread may use SME at this SVL (checked at `begin`); `args` checked
        // that every block the kernel loads lies within `acts` / `blocks`, that the
        // transposition reads `src` within bounds and writes `blocks` within bounds, and
        // that each output row pointer covers `cols_n` floats; the kernel writes only those.
        // The region leaves streaming mode and ZA off before the asm block ends.
        unsafe {
            match (outer, self.geo.sme2) {
                (Outer::F16, false) => f16_fmopa_2vlx2vl::group_sme1(p),
                (Outer::F16, true) => f16_fmopa_2vlx2vl::group_sme2(p),
                (Outer::Bf16, false) => bf16_bfmopa_2vlx2vl::group_sme1(p),
                (Outer::Bf16, true) => bf16_bfmopa_2vlx2vl::group_sme2(p),
                (Outer::F32, false) => f32_fmopa_2vlx2vl::group_sme1(p),
                (Outer::F32, true) => f32_fmopa_2vlx2vl::group_sme2(p),
            }
        }
        debug_assert_eq!(svcr(), 0);
    }
}

/// The scales of an int8 group (see `i8_smopa_2vlx2vl`): activation and weight scale
/// records (`nb` per block, 4 SVL bytes each), and the accumulators of one tile step.
pub struct I8Scales<'a> {
    pub acts: &'a [f32],
    pub weights: &'a [f32],
    pub nb: usize,
    /// Weights with a minimum (Q4_1): the kernel adds `m_w * s_a` per block.
    pub has_min: bool,
    /// 4 VL32 x VL32 floats.
    pub acc: &'a mut [f32],
}

impl Streaming {
    /// One int8 group: `ops.dst[i][c]` = the ggml-ordered block sum of activation row i and
    /// weight row c over `scales.nb` blocks of 32 (units: 4 int8 each). Panics if an operand
    /// is shorter than the kernel uses.
    pub fn i8_group(&self, ops: &mut GroupOperands, scales: I8Scales) {
        let mut args = ops.args(&self.geo);
        let (vl32, nb) = (self.geo.vl32(), scales.nb);
        let rec = 4 * vl32; // floats per block record
        assert!(nb > 0 && 8 * nb <= args.kunits, "SMEPilot: {nb} int8 blocks in {} units", args.kunits);
        assert!(scales.acts.len() >= args.m_blocks * nb * rec, "SMEPilot: int8 activation scales too short");
        assert!(scales.weights.len() >= args.cols_n.div_ceil(self.geo.block_rows()) * nb * rec, "SMEPilot: int8 weight scales too short");
        assert!(scales.acc.len() >= 4 * vl32 * vl32, "SMEPilot: int8 accumulators too short");
        args.a_scales = scales.acts.as_ptr();
        args.w_scales = scales.weights.as_ptr();
        args.nb = nb;
        args.acc = scales.acc.as_mut_ptr();
        let p = &args as *const GroupArgs;
        // SAFETY: as in `float_group`, plus: the kernel reads nb * 8 units per block (within
        // kunits, checked), nb scale records per activation and weight block (checked), and
        // reads and writes 4 VL32 x VL32 accumulators (checked).
        unsafe {
            match (scales.has_min, self.geo.sme2) {
                (false, false) => i8_smopa_2vlx2vl::group_sme1(p),
                (true, false) => i8_smopa_2vlx2vl::group_min_sme1(p),
                (false, true) => i8_smopa_1vlx1vl::group(p),
                (true, true) => i8_smopa_1vlx1vl::group_min(p),
            }
        }
        debug_assert_eq!(svcr(), 0);
    }
}

impl Drop for Streaming {
    fn drop(&mut self) {
        if svcr() != 0 {
            // SAFETY: SME is present (checked at `begin`); SMSTOP leaves streaming mode and
            // turns ZA off, which is the state every Rust function expects.
            unsafe {
                std::arch::asm!(
                    ".arch_extension sme",
                    "smstop",
                    out("v0") _, out("v1") _, out("v2") _, out("v3") _, out("v4") _, out("v5") _, out("v6") _, out("v7") _,
                    out("v8") _, out("v9") _, out("v10") _, out("v11") _, out("v12") _, out("v13") _, out("v14") _, out("v15") _,
                    out("v16") _, out("v17") _, out("v18") _, out("v19") _, out("v20") _, out("v21") _, out("v22") _, out("v23") _,
                    out("v24") _, out("v25") _, out("v26") _, out("v27") _, out("v28") _, out("v29") _, out("v30") _, out("v31") _,
                    out("p0") _, out("p1") _, out("p2") _, out("p3") _, out("p4") _, out("p5") _, out("p6") _, out("p7") _,
                    out("p8") _, out("p9") _, out("p10") _, out("p11") _, out("p12") _, out("p13") _, out("p14") _, out("p15") _,
                    out("ffr") _,
                    options(nomem, nostack)
                )
            };
        }
    }
}
