//! NEON GEMV kernels on the packed layouts (aarch64 with the dot-product instructions).
//!
//! The x86 layouts serve NEON unchanged: a 64-byte vector of a group block is four 128-bit
//! registers of 4 rows x 4 bytes, and `SDOT vacc.4s, vw.16b, va.4b[j]` dots those 4 rows
//! with 4 activation bytes, so a 16-row group takes four accumulators and no horizontal
//! sums. Offsets are folded into the accumulator's starting value (-8 * sum(a) for Q4_0,
//! -32 * the sub-block sum for Q6_K), which costs nothing over starting at zero. `Q8_0x16`
//! keeps its x86 bias (q + 128): with I8MM, `USDOT` takes the biased bytes as unsigned and
//! starts from -128 * sum(a); without, one `EOR 0x80` per 16 bytes restores them.
//!
//! SDOT, USDOT and the fp16 widening are `asm!`: their intrinsics are unstable on Rust 1.95.

// The quarter index q (rows 4q .. 4q + 4) addresses weight offsets and accumulators alike.
#![allow(clippy::needless_range_loop)]

use super::{Layout, DECODE_GROUPS};
use crate::dtype::DType;
use std::arch::aarch64::*;
use std::arch::asm;

/// Activation rows per pass (each keeps four accumulator registers per group).
const M_PASS: usize = 4;

/// Checked entry of the dot-product-only GEMV (Q8_0x16 unbiased by `EOR`).
pub(super) fn gemv(layout: Layout, nb: usize, groups: &[u8], ng: usize, _next: &[u8], acts: &[&[u8]], sums: &[&[i32]], out: &mut [[f32; 16]]) {
    assert!(std::arch::is_aarch64_feature_detected!("dotprod"), "NEON GEMV on a CPU without the dot-product instructions");
    gemv_with::<false>(layout, nb, groups, ng, acts, sums, out)
}

/// Checked entry of the GEMV for CPUs with I8MM (Q8_0x16 dotted by `USDOT`).
pub(super) fn gemv_i8mm(layout: Layout, nb: usize, groups: &[u8], ng: usize, _next: &[u8], acts: &[&[u8]], sums: &[&[i32]], out: &mut [[f32; 16]]) {
    assert!(
        std::arch::is_aarch64_feature_detected!("dotprod") && std::arch::is_aarch64_feature_detected!("i8mm"),
        "NEON I8MM GEMV on a CPU without the dot-product and I8MM instructions"
    );
    gemv_with::<true>(layout, nb, groups, ng, acts, sums, out)
}

/// Lengths first, then the SIMD body, as the x86 tiers: `groups` holds `ng` consecutive row
/// groups; `out[gi * m + j]` receives group gi against activation row j. The caller checked
/// the CPU (dotprod; I8MM if `I8MM`).
fn gemv_with<const I8MM: bool>(layout: Layout, nb: usize, groups: &[u8], ng: usize, acts: &[&[u8]], sums: &[&[i32]], out: &mut [[f32; 16]]) {
    let (ab, m) = (layout.act_type().block_bytes(), acts.len());
    let gbytes = nb * layout.group_block();
    assert!(groups.len() >= ng * gbytes && out.len() >= ng * m);
    let with_sums = layout.act_type() == DType::Q8_0;
    assert!(!with_sums || sums.len() >= m);
    for (i, a) in acts.iter().enumerate() {
        assert!(a.len() >= nb * ab && (!with_sums || sums[i].len() >= nb));
    }
    let group = |gi: usize| &groups[gi * gbytes..(gi + 1) * gbytes];
    let s_all = if with_sums { sums } else { &[][..] };
    // The passes take their row and group counts as constants, so that their accumulators
    // stay in registers.
    macro_rules! pass {
        ($m:literal, $g:expr, $gs:expr, $a:expr, $s:expr, $o:expr) => {
            match layout {
                Layout::Q4_0x16 => q4_0x16_pass::<$m, $g>(nb, &$gs, $a.try_into().unwrap(), $s.try_into().unwrap(), $o),
                Layout::Q4_1x16 => q4_1x16_pass::<$m, $g>(nb, &$gs, $a.try_into().unwrap(), $o),
                Layout::Q8_0x16 => q8_0x16_pass::<$m, $g, I8MM>(nb, &$gs, $a.try_into().unwrap(), $s.try_into().unwrap(), $o),
                Layout::Q4_Kx16 => q4_kx16_pass::<$m, $g>(nb, &$gs, $a.try_into().unwrap(), $o),
                Layout::Q6_Kx16 => q6_kx16_pass::<$m, $g>(nb, &$gs, $a.try_into().unwrap(), $o),
            }
        };
    }
    // SAFETY (every pass below): lengths checked above; the entries checked the CPU.
    if m == 1 && ng == DECODE_GROUPS {
        let gs: [&[u8]; DECODE_GROUPS] = std::array::from_fn(group);
        let s1: &[&[i32]] = if with_sums { &s_all[..1] } else { &[&[]] };
        unsafe { pass!(1, DECODE_GROUPS, gs, acts, s1, out) };
        return;
    }
    for gi in 0..ng {
        let g = [group(gi)];
        for c in (0..m).step_by(M_PASS) {
            let e = (c + M_PASS).min(m);
            let (a, o) = (&acts[c..e], &mut out[gi * m + c..gi * m + e]);
            let s = if with_sums { &s_all[c..e] } else { &[&[][..]; M_PASS][..e - c] };
            // With I8MM, pairs of rows of the legacy layouts go through SMMLA (half the
            // multiply instructions of SDOT); a last odd row through SDOT. Q4_1 follows
            // ggml-cpu, whose float order differs between its two paths: rows in pairs only
            // when there is an even number of them, else every row alone.
            let q4_1_odd = layout == Layout::Q4_1x16 && m % 2 == 1;
            if I8MM && e - c >= 2 && !q4_1_odd && !matches!(layout, Layout::Q4_Kx16 | Layout::Q6_Kx16) {
                let pairs = 2 * ((e - c) / 2);
                let (sp, op) = if with_sums { (&s[..pairs], &s[pairs..]) } else { (&s[..0], &s[..0]) };
                // SAFETY: lengths checked above; the I8MM entry checked the CPU.
                unsafe {
                    macro_rules! mmla {
                        ($p:literal) => {
                            match layout {
                                Layout::Q4_0x16 => legacy_mmla_pass::<$p, Q4_0>(nb, g[0], &a[..2 * $p], sp, &mut o[..2 * $p]),
                                Layout::Q4_1x16 => legacy_mmla_pass::<$p, Q4_1>(nb, g[0], &a[..2 * $p], sp, &mut o[..2 * $p]),
                                _ => legacy_mmla_pass::<$p, Q8_0>(nb, g[0], &a[..2 * $p], sp, &mut o[..2 * $p]),
                            }
                        };
                    }
                    match pairs {
                        2 => mmla!(1),
                        _ => mmla!(2),
                    }
                    if pairs < e - c {
                        let s1: &[&[i32]] = if with_sums { op } else { &[&[]] };
                        pass!(1, 1, g, &a[pairs..], s1, &mut o[pairs..]);
                    }
                }
                continue;
            }
            unsafe {
                match e - c {
                    1 => pass!(1, 1, g, a, s, o),
                    2 => pass!(2, 1, g, a, s, o),
                    3 => pass!(3, 1, g, a, s, o),
                    _ => pass!(4, 1, g, a, s, o),
                }
            }
        }
    }
}

/// `acc[r] += w[4r .. 4r + 4] . a[4J .. 4J + 4]`, signed bytes (SDOT by element).
///
/// # Safety
/// The CPU has the dot-product instructions.
#[inline(always)]
unsafe fn sdot<const J: i32>(mut acc: int32x4_t, w: int8x16_t, a: int8x16_t) -> int32x4_t {
    // SAFETY: register-only; the caller vouches for FEAT_DotProd.
    unsafe {
        asm!(".arch_extension dotprod", "sdot {acc:v}.4s, {w:v}.16b, {a:v}.4b[{j}]", acc = inout(vreg) acc, w = in(vreg) w, a = in(vreg) a, j = const J, options(pure, nomem, nostack, preserves_flags));
    }
    acc
}

/// As [`sdot`] with `w` unsigned (USDOT by element).
///
/// # Safety
/// The CPU has I8MM.
#[inline(always)]
unsafe fn usdot<const J: i32>(mut acc: int32x4_t, w: uint8x16_t, a: int8x16_t) -> int32x4_t {
    // SAFETY: register-only; the caller vouches for FEAT_I8MM.
    unsafe {
        asm!(".arch_extension i8mm", "usdot {acc:v}.4s, {w:v}.16b, {a:v}.4b[{j}]", acc = inout(vreg) acc, w = in(vreg) w, a = in(vreg) a, j = const J, options(pure, nomem, nostack, preserves_flags));
    }
    acc
}

/// `acc += w x a^T` for a 2x8 weight matrix `w` (two rows of 8 bytes) and a 2x8 activation
/// matrix `a`: `acc = [w0.a0, w0.a1, w1.a0, w1.a1]`, signed bytes (SMMLA).
///
/// # Safety
/// The CPU has I8MM.
#[inline(always)]
unsafe fn smmla(mut acc: int32x4_t, w: int8x16_t, a: int8x16_t) -> int32x4_t {
    // SAFETY: register-only; the caller vouches for FEAT_I8MM.
    unsafe {
        asm!(".arch_extension i8mm", "smmla {acc:v}.4s, {w:v}.16b, {a:v}.16b", acc = inout(vreg) acc, w = in(vreg) w, a = in(vreg) a, options(pure, nomem, nostack, preserves_flags));
    }
    acc
}

/// As [`smmla`] with `w` unsigned (USMMLA).
///
/// # Safety
/// The CPU has I8MM.
#[inline(always)]
unsafe fn usmmla(mut acc: int32x4_t, w: int8x16_t, a: int8x16_t) -> int32x4_t {
    // SAFETY: register-only; the caller vouches for FEAT_I8MM.
    unsafe {
        asm!(".arch_extension i8mm", "usmmla {acc:v}.4s, {w:v}.16b, {a:v}.16b", acc = inout(vreg) acc, w = in(vreg) w, a = in(vreg) a, options(pure, nomem, nostack, preserves_flags));
    }
    acc
}

/// `acc += w[i] . a_i` for the 8 registers of one 32-byte sub-block row quarter: `w[i]` holds
/// k = 4i .. 4i + 4, taken from `a0` (k 0..16) for i < 4, else `a1`.
///
/// # Safety
/// The CPU has the dot-product instructions.
#[inline(always)]
unsafe fn sdot8(acc: int32x4_t, w: &[int8x16_t; 8], a0: int8x16_t, a1: int8x16_t) -> int32x4_t {
    // SAFETY: the caller vouches for FEAT_DotProd.
    unsafe {
        let acc = sdot::<0>(acc, w[0], a0);
        let acc = sdot::<1>(acc, w[1], a0);
        let acc = sdot::<2>(acc, w[2], a0);
        let acc = sdot::<3>(acc, w[3], a0);
        let acc = sdot::<0>(acc, w[4], a1);
        let acc = sdot::<1>(acc, w[5], a1);
        let acc = sdot::<2>(acc, w[6], a1);
        sdot::<3>(acc, w[7], a1)
    }
}

/// Four fp16 at `p` as f32 (FCVTL).
///
/// # Safety
/// `p .. p + 8` is readable.
#[inline(always)]
unsafe fn f16x4(p: *const u8) -> float32x4_t {
    // SAFETY: the caller vouches for 8 readable bytes (any alignment: LD1 of .4h); FCVTL is
    // base Armv8 floating point.
    unsafe {
        let h = vld1_u16(p as *const u16);
        let out: float32x4_t;
        asm!("fcvtl {o:v}.4s, {h:v}.4h", o = lateout(vreg) out, h = in(vreg) h, options(pure, nomem, nostack, preserves_flags));
        out
    }
}

/// The fp16 at `p` as f32, in every lane.
///
/// # Safety
/// `p .. p + 2` is readable.
#[inline(always)]
unsafe fn f16_dup(p: *const u8) -> float32x4_t {
    // SAFETY: as `f16x4`, reading 2 bytes (LD1R).
    unsafe {
        let h = vld1_dup_u16(p as *const u16);
        let out: float32x4_t;
        asm!("fcvtl {o:v}.4s, {h:v}.4h", o = lateout(vreg) out, h = in(vreg) h, options(pure, nomem, nostack, preserves_flags));
        out
    }
}

/// Byte `i` (0..4) of every 32-bit lane, zero-extended.
#[inline(always)]
fn lane_u8(v: uint8x16_t, i: usize) -> int32x4_t {
    // SAFETY: register-only intrinsics of base NEON (every aarch64 CPU).
    unsafe {
        let v = vreinterpretq_u32_u8(v);
        let ff = vdupq_n_u32(0xFF);
        vreinterpretq_s32_u32(match i {
            0 => vandq_u32(v, ff),
            1 => vandq_u32(vshrq_n_u32::<8>(v), ff),
            2 => vandq_u32(vshrq_n_u32::<16>(v), ff),
            _ => vshrq_n_u32::<24>(v),
        })
    }
}

/// Byte `i` (0..4) of every 32-bit lane, sign-extended.
#[inline(always)]
fn lane_i8(v: int8x16_t, i: usize) -> int32x4_t {
    // SAFETY: register-only intrinsics of base NEON (every aarch64 CPU).
    unsafe {
        let v = vreinterpretq_s32_s8(v);
        match i {
            0 => vshrq_n_s32::<24>(vshlq_n_s32::<24>(v)),
            1 => vshrq_n_s32::<24>(vshlq_n_s32::<16>(v)),
            2 => vshrq_n_s32::<24>(vshlq_n_s32::<8>(v)),
            _ => vshrq_n_s32::<24>(v),
        }
    }
}

/// The passes' accumulators out: quarter q (rows 4q .. 4q + 4) of group gi against
/// activation row j to `out[gi * M + j][4q ..]`.
#[inline(always)]
fn store_groups<const M: usize, const G: usize>(f: &[[[float32x4_t; 4]; M]; G], out: &mut [[f32; 16]]) {
    for (gi, fg) in f.iter().enumerate() {
        for (j, fj) in fg.iter().enumerate() {
            let o = &mut out[gi * M + j];
            for (q, v) in fj.iter().enumerate() {
                let mut lanes = [0f32; 4];
                // SAFETY: stores 4 floats into a 4-float array (NEON is baseline on aarch64).
                unsafe { vst1q_f32(lanes.as_mut_ptr(), *v) };
                o[4 * q..4 * q + 4].copy_from_slice(&lanes);
            }
        }
    }
}

/// Quarter q of the four nibble vectors of a `Q4_0x16` / `Q4_1x16` group block at `at`: the
/// registers at `at + 64 i + 16 q`, split into low (k = 4i ..) and high (k = 16 + 4i ..)
/// nibbles, unsigned (0..16, so valid signed bytes too), in [`sdot8`]'s order.
///
/// # Safety
/// `at .. at + 256` is readable.
#[inline(always)]
unsafe fn nibbles(at: *const u8, q: usize) -> [int8x16_t; 8] {
    // SAFETY: the caller vouches for the four 64-byte vectors; unaligned loads.
    unsafe {
        let m4 = vdupq_n_u8(0x0F);
        let mut w = [vdupq_n_s8(0); 8];
        for i in 0..4 {
            let v = vld1q_u8(at.add(64 * i + 16 * q));
            w[i] = vreinterpretq_s8_u8(vandq_u8(v, m4));
            w[4 + i] = vreinterpretq_s8_u8(vshrq_n_u8::<4>(v));
        }
        w
    }
}

/// Up to M_PASS Q8_0 activation rows against G `Q4_0x16` groups. Per block and row quarter,
/// the four weight registers are split into nibbles once and dotted with each activation
/// row, starting from -8 * sum(a) for q - 8; x = d_w * d_a * sum, as ggml.
///
/// # Safety
/// The CPU has the dot-product instructions; every group holds nb group blocks, every
/// activation row nb Q8_0 blocks and every sums row nb sums.
unsafe fn q4_0x16_pass<const M: usize, const G: usize>(nb: usize, groups: &[&[u8]; G], acts: &[&[u8]; M], sums: &[&[i32]; M], out: &mut [[f32; 16]]) {
    const GB: usize = Layout::Q4_0x16.group_block();
    let bq8 = DType::Q8_0.block_bytes();
    // SAFETY: the caller vouches for dotprod and for the lengths, so each load stays within
    // block b of its group or activation row.
    unsafe {
        let mut f = [[[vdupq_n_f32(0.0); 4]; M]; G];
        for b in 0..nb {
            for (gi, g) in groups.iter().enumerate() {
                let base = g.as_ptr().add(b * GB);
                for q in 0..4 {
                    let dw = f16x4(base.add(8 * q));
                    let w = nibbles(base.add(32), q);
                    for (j, a) in acts.iter().enumerate() {
                        let ab = a.as_ptr().add(b * bq8);
                        let init = vdupq_n_s32(-8 * *sums[j].get_unchecked(b));
                        let s = sdot8(init, &w, vld1q_s8(ab.add(2) as *const i8), vld1q_s8(ab.add(18) as *const i8));
                        f[gi][j][q] = vfmaq_f32(f[gi][j][q], vcvtq_f32_s32(s), vmulq_f32(dw, f16_dup(ab)));
                    }
                }
            }
        }
        store_groups(&f, out);
    }
}

/// As [`q4_0x16_pass`] for `Q4_1x16` against Q8_1 activations, in ggml-cpu's aarch64 order
/// for one row (`quant::arm_order::dot`), so that each output has stock's bits: per row, the
/// SDOT lanes of each block (lane l: k 4l .. 4l + 4 and 16 + 4l ..) fused-multiplied by
/// d_w * d_a into eight f32 lanes (even and odd blocks apart), the minimum terms summed
/// beside as fma(m0, s0, m1 * s1) per pair of blocks, an odd last block as ggml's scalar
/// line. Here a register holds one lane of four rows, so the lane sums are plain adds.
///
/// # Safety
/// As [`q4_0x16_pass`], with Q8_1 activation blocks.
unsafe fn q4_1x16_pass<const M: usize, const G: usize>(nb: usize, groups: &[&[u8]; G], acts: &[&[u8]; M], out: &mut [[f32; 16]]) {
    const GB: usize = Layout::Q4_1x16.group_block();
    let bq8 = DType::Q8_1.block_bytes();
    let whole = nb - nb % 2;
    // SAFETY: as in `q4_0x16_pass`.
    unsafe {
        let mut f = [[[vdupq_n_f32(0.0); 4]; M]; G];
        for (gi, g) in groups.iter().enumerate() {
            for q in 0..4 {
                for (j, a) in acts.iter().enumerate() {
                    let mut lanes = [[vdupq_n_f32(0.0); 4]; 2];
                    let mut summs = vdupq_n_f32(0.0);
                    for b in 0..whole {
                        let base = g.as_ptr().add(b * GB);
                        let ab = a.as_ptr().add(b * bq8);
                        if b % 2 == 0 {
                            let (m0, m1) = (f16x4(base.add(32 + 8 * q)), f16x4(base.add(GB + 32 + 8 * q)));
                            let (s0, s1) = (f16_dup(ab.add(2)), f16_dup(ab.add(bq8 + 2)));
                            summs = vaddq_f32(summs, vfmaq_f32(vmulq_f32(m1, s1), m0, s0));
                        }
                        let d = vmulq_f32(f16x4(base.add(8 * q)), f16_dup(ab));
                        let w = nibbles(base.add(64), q);
                        let (a0, a1) = (vld1q_s8(ab.add(4) as *const i8), vld1q_s8(ab.add(20) as *const i8));
                        let p = [
                            sdot::<0>(sdot::<0>(vdupq_n_s32(0), w[0], a0), w[4], a1),
                            sdot::<1>(sdot::<1>(vdupq_n_s32(0), w[1], a0), w[5], a1),
                            sdot::<2>(sdot::<2>(vdupq_n_s32(0), w[2], a0), w[6], a1),
                            sdot::<3>(sdot::<3>(vdupq_n_s32(0), w[3], a0), w[7], a1),
                        ];
                        let acc = &mut lanes[b % 2];
                        for l in 0..4 {
                            acc[l] = vfmaq_f32(acc[l], vcvtq_f32_s32(p[l]), d);
                        }
                    }
                    let addv = |v: &[float32x4_t; 4]| vaddq_f32(vaddq_f32(v[0], v[1]), vaddq_f32(v[2], v[3]));
                    let mut sumf = vaddq_f32(vaddq_f32(addv(&lanes[0]), addv(&lanes[1])), summs);
                    if nb % 2 == 1 {
                        // sumf + fma(d_w * d_a, sumi, m_w * s_a).
                        let (base, ab) = (g.as_ptr().add(whole * GB), a.as_ptr().add(whole * bq8));
                        let d = vmulq_f32(f16x4(base.add(8 * q)), f16_dup(ab));
                        let ms = vmulq_f32(f16x4(base.add(32 + 8 * q)), f16_dup(ab.add(2)));
                        let w = nibbles(base.add(64), q);
                        let sumi = sdot8(vdupq_n_s32(0), &w, vld1q_s8(ab.add(4) as *const i8), vld1q_s8(ab.add(20) as *const i8));
                        sumf = vaddq_f32(sumf, vfmaq_f32(ms, d, vcvtq_f32_s32(sumi)));
                    }
                    f[gi][j][q] = sumf;
                }
            }
        }
        store_groups(&f, out);
    }
}

/// As [`q4_0x16_pass`] for `Q8_0x16`: eight weight registers per block and row quarter,
/// stored q + 128. With I8MM they are dotted by USDOT as unsigned bytes from -128 * sum(a);
/// without, `EOR 0x80` makes them signed again for SDOT.
///
/// # Safety
/// As [`q4_0x16_pass`]; the CPU has I8MM if `I8MM`.
unsafe fn q8_0x16_pass<const M: usize, const G: usize, const I8MM: bool>(nb: usize, groups: &[&[u8]; G], acts: &[&[u8]; M], sums: &[&[i32]; M], out: &mut [[f32; 16]]) {
    const GB: usize = Layout::Q8_0x16.group_block();
    let bq8 = DType::Q8_0.block_bytes();
    // SAFETY: as in `q4_0x16_pass`; `usdot` only when `I8MM`, which only the I8MM entry sets.
    unsafe {
        let mut f = [[[vdupq_n_f32(0.0); 4]; M]; G];
        let bias = vdupq_n_u8(0x80);
        for b in 0..nb {
            for (gi, g) in groups.iter().enumerate() {
                let base = g.as_ptr().add(b * GB);
                for q in 0..4 {
                    let dw = f16x4(base.add(8 * q));
                    let mut w = [vdupq_n_u8(0); 8];
                    for (i, wi) in w.iter_mut().enumerate() {
                        *wi = vld1q_u8(base.add(32 + 64 * i + 16 * q));
                    }
                    for (j, a) in acts.iter().enumerate() {
                        let ab = a.as_ptr().add(b * bq8);
                        let (a0, a1) = (vld1q_s8(ab.add(2) as *const i8), vld1q_s8(ab.add(18) as *const i8));
                        let s = if I8MM {
                            let s = vdupq_n_s32(-128 * *sums[j].get_unchecked(b));
                            let s = usdot::<0>(s, w[0], a0);
                            let s = usdot::<1>(s, w[1], a0);
                            let s = usdot::<2>(s, w[2], a0);
                            let s = usdot::<3>(s, w[3], a0);
                            let s = usdot::<0>(s, w[4], a1);
                            let s = usdot::<1>(s, w[5], a1);
                            let s = usdot::<2>(s, w[6], a1);
                            usdot::<3>(s, w[7], a1)
                        } else {
                            let ws = w.map(|v| vreinterpretq_s8_u8(veorq_u8(v, bias)));
                            sdot8(vdupq_n_s32(0), &ws, a0, a1)
                        };
                        f[gi][j][q] = vfmaq_f32(f[gi][j][q], vcvtq_f32_s32(s), vmulq_f32(dw, f16_dup(ab)));
                    }
                }
            }
        }
        store_groups(&f, out);
    }
}

/// The legacy layouts as [`legacy_mmla_pass`]'s constant parameter.
const Q4_0: u8 = 0;
const Q4_1: u8 = 1;
const Q8_0: u8 = 2;

/// `P` pairs of activation rows against one `Q4_0x16`, `Q4_1x16` or `Q8_0x16` group, by
/// SMMLA (USMMLA for the biased Q8_0 bytes). Per block and row quarter, ZIP1/ZIP2 of two
/// weight registers (4 rows x k 4i .., 4 rows x k 4i + 4 ..) give the 2 rows x 8 k operands,
/// and ZIPs of two activation rows the 2 rows x 8 k others; each accumulator then holds
/// [r0.a, r0.b, r1.a, r1.b], scaled by [dw0, dw0, dw1, dw1] * [da, db, da, db] and taken
/// apart (UZP) only at the end. Offsets start the accumulators, as in the SDOT passes.
///
/// # Safety
/// The CPU has I8MM; as [`q4_0x16_pass`] for the lengths (sums for the Q8_0 activations).
unsafe fn legacy_mmla_pass<const P: usize, const L: u8>(nb: usize, group: &[u8], acts: &[&[u8]], sums: &[&[i32]], out: &mut [[f32; 16]]) {
    let layout = [Layout::Q4_0x16, Layout::Q4_1x16, Layout::Q8_0x16][L as usize];
    let (gb, ab) = (layout.group_block(), layout.act_type().block_bytes());
    // Quants' offset in an activation block (Q8_0: d; Q8_1: d, s), first weight vector, and
    // the weights' offset times sum(a).
    let (qo, wv, offset) = [(2, 32, -8), (4, 64, 0), (2, 32, -128)][L as usize];
    let (q4_1, q8) = (L == Q4_1, L == Q8_0);
    // Known lengths let the compiler drop the bounds checks in the loop.
    let (acts, out) = (&acts[..2 * P], &mut out[..2 * P]);
    let sums = if offset != 0 { &sums[..2 * P] } else { sums };
    // SAFETY: the caller vouches for I8MM and the lengths: every load lies in block b of the
    // group or of an activation row (sums: entry b of a row).
    unsafe {
        let mut f = [[[vdupq_n_f32(0.0); 2]; 4]; P];
        // Q4_1's m_w * s_a, summed apart by plain adds and added last, as ggml's `summs0`.
        let mut fm = [[[vdupq_n_f32(0.0); 2]; 4]; P];
        let f16_pair = |x: *const u8, y: *const u8| {
            let bits = (x as *const u16).read_unaligned() as u32 | ((y as *const u16).read_unaligned() as u32) << 16;
            let h = vreinterpret_u16_u32(vdup_n_u32(bits));
            let out: float32x4_t;
            asm!("fcvtl {o:v}.4s, {h:v}.4h", o = lateout(vreg) out, h = in(vreg) h, options(pure, nomem, nostack, preserves_flags));
            out
        };
        for b in 0..nb {
            let base = group.as_ptr().add(b * gb);
            // Per pair: the zipped quants (k 0..8, 8..16, 16..24, 24..32), the accumulators'
            // start, [da, db, da, db] and for Q4_1 [sa, sb, sa, sb].
            let mut pa = [[vdupq_n_s8(0); 4]; P];
            let mut init = [vdupq_n_s32(0); P];
            let mut dpair = [vdupq_n_f32(0.0); P];
            let mut spair = [vdupq_n_f32(0.0); P];
            for p in 0..P {
                let (x, y) = (acts[2 * p].as_ptr().add(b * ab), acts[2 * p + 1].as_ptr().add(b * ab));
                let ld = |r: *const u8, at: usize| vreinterpretq_s64_s8(vld1q_s8(r.add(qo + at) as *const i8));
                let (x0, x1, y0, y1) = (ld(x, 0), ld(x, 16), ld(y, 0), ld(y, 16));
                pa[p] = [vzip1q_s64(x0, y0), vzip2q_s64(x0, y0), vzip1q_s64(x1, y1), vzip2q_s64(x1, y1)].map(|v| vreinterpretq_s8_s64(v));
                if offset != 0 {
                    let (sx, sy) = (offset * *sums[2 * p].get_unchecked(b), offset * *sums[2 * p + 1].get_unchecked(b));
                    init[p] = vreinterpretq_s32_s64(vdupq_n_s64((sx as u32 as i64) | ((sy as i64) << 32)));
                }
                dpair[p] = f16_pair(x, y);
                if q4_1 {
                    spair[p] = f16_pair(x.add(2), y.add(2));
                }
            }
            for q in 0..4 {
                let dw = f16x4(base.add(8 * q));
                let dwz = [vzip1q_f32(dw, dw), vzip2q_f32(dw, dw)];
                // Registers of 4 rows x 4 k, in k order (k 4i .. 4i + 4 at i).
                let v: [int8x16_t; 8] = if q8 {
                    std::array::from_fn(|i| vld1q_s8(base.add(wv + 64 * i + 16 * q) as *const i8))
                } else {
                    nibbles(base.add(wv), q)
                };
                let zip = |i: usize| {
                    let (a, c) = (vreinterpretq_s32_s8(v[2 * i]), vreinterpretq_s32_s8(v[2 * i + 1]));
                    [vreinterpretq_s8_s32(vzip1q_s32(a, c)), vreinterpretq_s8_s32(vzip2q_s32(a, c))]
                };
                let w = [zip(0), zip(1), zip(2), zip(3)];
                let mw = if q4_1 {
                    let m = f16x4(base.add(32 + 8 * q));
                    [vzip1q_f32(m, m), vzip2q_f32(m, m)]
                } else {
                    [vdupq_n_f32(0.0); 2]
                };
                for p in 0..P {
                    for rp in 0..2 {
                        let mut acc = init[p];
                        for kc in 0..4 {
                            acc = if q8 { usmmla(acc, w[kc][rp], pa[p][kc]) } else { smmla(acc, w[kc][rp], pa[p][kc]) };
                        }
                        f[p][q][rp] = vfmaq_f32(f[p][q][rp], vcvtq_f32_s32(acc), vmulq_f32(dwz[rp], dpair[p]));
                        if q4_1 {
                            fm[p][q][rp] = vaddq_f32(fm[p][q][rp], vmulq_f32(mw[rp], spair[p]));
                        }
                    }
                }
            }
        }
        if q4_1 {
            for (fp, mp) in f.iter_mut().zip(&fm) {
                for (fq, mq) in fp.iter_mut().zip(mp) {
                    for (v, m) in fq.iter_mut().zip(mq) {
                        *v = vaddq_f32(*v, *m);
                    }
                }
            }
        }
        for (p, fp) in f.iter().enumerate() {
            for (q, [r01, r23]) in fp.iter().enumerate() {
                vst1q_f32(out[2 * p][4 * q..].as_mut_ptr(), vuzp1q_f32(*r01, *r23));
                vst1q_f32(out[2 * p + 1][4 * q..].as_mut_ptr(), vuzp2q_f32(*r01, *r23));
            }
        }
    }
}

/// Offsets in a Q8_K block: f32 scale, 256 quants, 16 int16 sums of 16 quants.
const Q8K_QS: usize = 4;
const Q8K_BSUMS: usize = 260;

/// Up to M_PASS Q8_K activation rows against G `Q4_Kx16` groups. Per super-block and row
/// quarter: the 6-bit scales and minimums are decoded in-lane with byte shifts and SLI
/// (ggml's `get_scale_min_k4`, one row per 32-bit lane); per 32-k sub-block, 8 SDOTs give
/// each row's int32 sum, times its scale; the minimums meet the activations' sub-block sums
/// by MLA by element. x = d * sc * q - dmin * m, as ggml.
///
/// # Safety
/// As [`q4_0x16_pass`], with Q8_K activation blocks.
unsafe fn q4_kx16_pass<const M: usize, const G: usize>(nb: usize, groups: &[&[u8]; G], acts: &[&[u8]; M], out: &mut [[f32; 16]]) {
    const GB: usize = Layout::Q4_Kx16.group_block();
    const QS: usize = 64 + 3 * 64;
    let bq8 = DType::Q8_K.block_bytes();
    // SAFETY: as in `q4_0x16_pass`.
    unsafe {
        let (m6, m4) = (vdupq_n_u8(0x3F), vdupq_n_u8(0x0F));
        let mut f = [[[vdupq_n_f32(0.0); 4]; M]; G];
        for b in 0..nb {
            // The activations' 8 sub-block sums (two of ggml's 16-quant sums each, |sum| <=
            // 4064), as int32: sub-blocks 0..4, 4..8.
            let bsums: [[int32x4_t; 2]; M] = std::array::from_fn(|j| {
                let bs = acts[j].as_ptr().add(b * bq8 + Q8K_BSUMS) as *const i16;
                let s = vpaddq_s16(vld1q_s16(bs), vld1q_s16(bs.add(8)));
                [vmovl_s16(vget_low_s16(s)), vmovl_high_s16(s)]
            });
            for (gi, g) in groups.iter().enumerate() {
                let base = g.as_ptr().add(b * GB);
                for q in 0..4 {
                    let (dw, dm) = (f16x4(base.add(8 * q)), f16x4(base.add(32 + 8 * q)));
                    let w0 = vld1q_u8(base.add(64 + 16 * q));
                    let w1 = vld1q_u8(base.add(128 + 16 * q));
                    let w2 = vld1q_u8(base.add(192 + 16 * q));
                    // Bytes of each lane: scales 0..4, 4..8; minimums 0..4, 4..8.
                    let sc = [vandq_u8(w0, m6), vsliq_n_u8::<4>(vandq_u8(w2, m4), vshrq_n_u8::<6>(w0))];
                    let mn = [vandq_u8(w1, m6), vsliq_n_u8::<4>(vshrq_n_u8::<4>(w2), vshrq_n_u8::<6>(w1))];
                    let mut isum = [vdupq_n_s32(0); M];
                    for c in 0..4 {
                        let (s_lo, s_hi) = (lane_u8(sc[c / 2], 2 * (c % 2)), lane_u8(sc[c / 2], 2 * (c % 2) + 1));
                        let w = nibbles(base.add(QS + 64 * 8 * c), q);
                        let w2 = nibbles(base.add(QS + 64 * (8 * c + 4)), q);
                        let lo = [w[0], w[1], w[2], w[3], w2[0], w2[1], w2[2], w2[3]];
                        let hi = [w[4], w[5], w[6], w[7], w2[4], w2[5], w2[6], w2[7]];
                        for (j, a) in acts.iter().enumerate() {
                            let qa = a.as_ptr().add(b * bq8 + Q8K_QS + 64 * c) as *const i8;
                            let dl = sdot8(vdupq_n_s32(0), &lo, vld1q_s8(qa), vld1q_s8(qa.add(16)));
                            let dh = sdot8(vdupq_n_s32(0), &hi, vld1q_s8(qa.add(32)), vld1q_s8(qa.add(48)));
                            isum[j] = vmlaq_s32(vmlaq_s32(isum[j], dl, s_lo), dh, s_hi);
                        }
                    }
                    let mins: [int32x4_t; 8] = std::array::from_fn(|s| lane_u8(mn[s / 4], s % 4));
                    for (j, a) in acts.iter().enumerate() {
                        let [b0, b1] = bsums[j];
                        let mut msum = vmulq_laneq_s32::<0>(mins[0], b0);
                        msum = vmlaq_laneq_s32::<1>(msum, mins[1], b0);
                        msum = vmlaq_laneq_s32::<2>(msum, mins[2], b0);
                        msum = vmlaq_laneq_s32::<3>(msum, mins[3], b0);
                        msum = vmlaq_laneq_s32::<0>(msum, mins[4], b1);
                        msum = vmlaq_laneq_s32::<1>(msum, mins[5], b1);
                        msum = vmlaq_laneq_s32::<2>(msum, mins[6], b1);
                        msum = vmlaq_laneq_s32::<3>(msum, mins[7], b1);
                        let da = vld1q_dup_f32(a.as_ptr().add(b * bq8) as *const f32);
                        f[gi][j][q] = vfmaq_f32(f[gi][j][q], vcvtq_f32_s32(isum[j]), vmulq_f32(dw, da));
                        f[gi][j][q] = vfmsq_f32(f[gi][j][q], vcvtq_f32_s32(msum), vmulq_f32(dm, da));
                    }
                }
            }
        }
        store_groups(&f, out);
    }
}

/// Up to M_PASS Q8_K activation rows against G `Q6_Kx16` groups. Per super-block, row
/// quarter and 16-k sub-block, the 6-bit quants are rebuilt from `ql` nibbles and `qh`
/// pairs by SLI / SRI (unsigned, q + 32), dotted from -32 * the activations' sub-block sum
/// and multiplied by the row's signed scale; x = d * sc * (q - 32), as ggml.
///
/// # Safety
/// As [`q4_0x16_pass`], with Q8_K activation blocks.
unsafe fn q6_kx16_pass<const M: usize, const G: usize>(nb: usize, groups: &[&[u8]; G], acts: &[&[u8]; M], out: &mut [[f32; 16]]) {
    const GB: usize = Layout::Q6_Kx16.group_block();
    const QL: usize = 32;
    const QH: usize = 32 + 32 * 64;
    const SC: usize = 32 + 48 * 64;
    let bq8 = DType::Q8_K.block_bytes();
    // SAFETY: as in `q4_0x16_pass`.
    unsafe {
        let m33 = vdupq_n_u8(0x33);
        let mut f = [[[vdupq_n_f32(0.0); 4]; M]; G];
        for b in 0..nb {
            // -32 * each 16-quant sum of the activations, where the sub-block dots start.
            let mut neg32 = [[0i32; 16]; M];
            for (j, n) in neg32.iter_mut().enumerate() {
                let bs = acts[j].as_ptr().add(b * bq8 + Q8K_BSUMS) as *const i16;
                for h in 0..2 {
                    let v = vld1q_s16(bs.add(8 * h));
                    vst1q_s32(n.as_mut_ptr().add(8 * h), vnegq_s32(vshll_n_s16::<5>(vget_low_s16(v))));
                    vst1q_s32(n.as_mut_ptr().add(8 * h + 4), vnegq_s32(vshll_high_n_s16::<5>(v)));
                }
            }
            for (gi, g) in groups.iter().enumerate() {
                let base = g.as_ptr().add(b * GB);
                for q in 0..4 {
                    let ld = |at: usize| vld1q_u8(base.add(at + 16 * q));
                    let dw = f16x4(base.add(8 * q));
                    let mut isum = [vdupq_n_s32(0); M];
                    for h in 0..2 {
                        for is in 0..2 {
                            // Quarter t of half h, l in 16 is .. 16 is + 16: element 128 h + 32 t + l,
                            // sub-block 8 h + 2 t + is; register `step` holds l = 16 is + 4 step ...
                            let mut qv = [[vdupq_n_s8(0); 4]; 4];
                            for step in 0..4 {
                                let ls = 4 * is + step;
                                let (la, lb) = (ld(QL + 64 * (16 * h + ls)), ld(QL + 64 * (16 * h + 8 + ls)));
                                let hb = ld(QH + 64 * (8 * h + ls));
                                let (p0, p1) = (vandq_u8(hb, m33), vandq_u8(vshrq_n_u8::<2>(hb), m33));
                                qv[0][step] = vreinterpretq_s8_u8(vsliq_n_u8::<4>(la, p0));
                                qv[1][step] = vreinterpretq_s8_u8(vsliq_n_u8::<4>(lb, p1));
                                qv[2][step] = vreinterpretq_s8_u8(vsriq_n_u8::<4>(p0, la));
                                qv[3][step] = vreinterpretq_s8_u8(vsriq_n_u8::<4>(p1, lb));
                            }
                            let scales: [int32x4_t; 4] = std::array::from_fn(|t| {
                                let sub = 8 * h + 2 * t + is;
                                lane_i8(vreinterpretq_s8_u8(ld(SC + 64 * (sub / 4))), sub % 4)
                            });
                            for (j, a) in acts.iter().enumerate() {
                                for t in 0..4 {
                                    let sub = 8 * h + 2 * t + is;
                                    let qa = vld1q_s8(a.as_ptr().add(b * bq8 + Q8K_QS + 128 * h + 32 * t + 16 * is) as *const i8);
                                    let s = vld1q_dup_s32(neg32[j].as_ptr().add(sub));
                                    let s = sdot::<0>(s, qv[t][0], qa);
                                    let s = sdot::<1>(s, qv[t][1], qa);
                                    let s = sdot::<2>(s, qv[t][2], qa);
                                    let s = sdot::<3>(s, qv[t][3], qa);
                                    isum[j] = vmlaq_s32(isum[j], s, scales[t]);
                                }
                            }
                        }
                    }
                    for (j, a) in acts.iter().enumerate() {
                        let da = vld1q_dup_f32(a.as_ptr().add(b * bq8) as *const f32);
                        f[gi][j][q] = vfmaq_f32(f[gi][j][q], vcvtq_f32_s32(isum[j]), vmulq_f32(dw, da));
                    }
                }
            }
        }
        store_groups(&f, out);
    }
}

/// Checked entry of the row dequantizers (Q4_0, Q4_1, Q8_0; the K layouts take the portable
/// reader, which gives the same bits).
pub(super) fn row_to_f32(layout: Layout, group: &[u8], nb: usize, r: usize, out: &mut [f32]) {
    if !matches!(layout, Layout::Q4_0x16 | Layout::Q4_1x16 | Layout::Q8_0x16) {
        return super::row_to_f32_scalar(layout, group, nb, r, out);
    }
    assert!(r < 16 && group.len() >= nb * layout.group_block() && out.len() >= nb * 32);
    let gb = layout.group_block();
    for b in 0..nb {
        let blk = &group[b * gb..(b + 1) * gb];
        let o = &mut out[b * 32..(b + 1) * 32];
        // SAFETY: `blk` is one whole group block of `layout` and r < 16, so every offset read
        // below (heads at 2r, the row's dwords at 4r of each vector) lies inside it; the
        // stores write the 32 floats of `o`. Base NEON only.
        unsafe {
            let p = blk.as_ptr();
            // Row r's 4 bytes of vector i, for 4 consecutive vectors from `at`.
            let gather = |at: usize| {
                let mut v = vdupq_n_u32(0);
                v = vld1q_lane_u32::<0>(p.add(at + 4 * r) as *const u32, v);
                v = vld1q_lane_u32::<1>(p.add(at + 64 + 4 * r) as *const u32, v);
                v = vld1q_lane_u32::<2>(p.add(at + 128 + 4 * r) as *const u32, v);
                v = vld1q_lane_u32::<3>(p.add(at + 192 + 4 * r) as *const u32, v);
                vreinterpretq_u8_u32(v)
            };
            let d = f16_dup(p.add(2 * r));
            let (x0, x1) = match layout {
                Layout::Q4_0x16 => {
                    let (v, eight) = (gather(32), vdupq_n_s8(8));
                    let lo = vsubq_s8(vreinterpretq_s8_u8(vandq_u8(v, vdupq_n_u8(0x0F))), eight);
                    (lo, vsubq_s8(vreinterpretq_s8_u8(vshrq_n_u8::<4>(v)), eight))
                }
                Layout::Q4_1x16 => {
                    let v = gather(64);
                    (vreinterpretq_s8_u8(vandq_u8(v, vdupq_n_u8(0x0F))), vreinterpretq_s8_u8(vshrq_n_u8::<4>(v)))
                }
                _ => {
                    let bias = vdupq_n_u8(0x80);
                    (vreinterpretq_s8_u8(veorq_u8(gather(32), bias)), vreinterpretq_s8_u8(veorq_u8(gather(32 + 256), bias)))
                }
            };
            // x = q * d (+ m for Q4_1: a separate add, as the scalar dequantizer rounds).
            let m = if layout == Layout::Q4_1x16 { Some(f16_dup(p.add(32 + 2 * r))) } else { None };
            for (h, x) in [x0, x1].into_iter().enumerate() {
                let w = [vmovl_s8(vget_low_s8(x)), vmovl_high_s8(x)];
                for (k, wk) in w.into_iter().enumerate() {
                    for (l, v) in [vmovl_s16(vget_low_s16(wk)), vmovl_high_s16(wk)].into_iter().enumerate() {
                        let mut y = vmulq_f32(vcvtq_f32_s32(v), d);
                        if let Some(m) = m {
                            y = vaddq_f32(y, m);
                        }
                        vst1q_f32(o.as_mut_ptr().add(16 * h + 8 * k + 4 * l), y);
                    }
                }
            }
        }
    }
}
