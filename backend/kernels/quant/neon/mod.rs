//! The NEON tier of the per-type table (aarch64 with the dot-product instructions; BF16
//! where present): SDOT quantized dots, the Q8 activation quantizers, float dots and
//! conversions, dequantizers, and the register-blocked BF16 dots.
//!
//! Safety structure: the kernels are plain functions on checked slices and fixed-size array
//! references; the base NEON intrinsics are safe on every aarch64 target. The `unsafe` is in
//! the load/store helpers below (an `&[u8; N]` becomes a load of exactly those N bytes) and
//! in the `asm!` helpers for the instructions Rust has no stable intrinsic for: SDOT and BFDOT
//! (run only where [`table_with`] / [`dense_kernels`] confirmed dotprod / BF16 at run time)
//! and the base-ISA FCVT/FCVTL/FCVTN half-precision conversions.
//!
//! Numerics versus the scalar tier (the shapes of ggml-cpu's ARM code, `arch/arm/quants.c`):
//! the Q8_0 / Q8_1 / Q8_K quantizers, the dequantizers and the conversions are bit-identical;
//! the K-quant dots are bit-identical (same int32 sums, same float sequence per super-block);
//! the Q4_0 / Q4_1 / Q8_0 dots keep ggml's NEON shape (two blocks per step, int32 lanes per
//! block converted and scaled into two f32 lane accumulators, an odd last block in scalar);
//! the float dots accumulate in f32 lanes with fused multiply-adds.

use core::arch::aarch64::*;
use core::arch::asm;
use std::sync::OnceLock;

use super::{scalar, DenseKernels, Table, TypeKernels};
use crate::platform::CpuFeatures;

mod dequant;
mod dots;
mod float;
mod quantize;

pub use float::{dot_bf16_block, dot_bf16_rows_4};

/// Whether this CPU runs the tier's integer kernels (the dot-product instructions), checked
/// at run time whatever `CpuFeatures` says.
pub fn dotprod_detected() -> bool {
    std::arch::is_aarch64_feature_detected!("dotprod")
}

/// Whether the BF16 dots may use BFDOT.
pub fn bf16_detected() -> bool {
    dotprod_detected() && std::arch::is_aarch64_feature_detected!("bf16")
}

/// The NEON table and the tier's full name, when this CPU runs it.
pub fn table(f: &CpuFeatures) -> Option<(&'static Table, &'static str)> {
    if !f.neon_tier() {
        return None;
    }
    let bf16 = f.arm_bf16 && bf16_detected();
    table_with(bf16).map(|t| (t, if bf16 { "neon+dotprod+bf16" } else { "neon+dotprod" }))
}

/// The tier's register-blocked BF16 dots (the same dot per output as the table's BF16 dot).
pub fn dense_kernels(f: &CpuFeatures) -> DenseKernels {
    if !f.neon_tier() || !dotprod_detected() {
        return DenseKernels::NONE;
    }
    let bf16 = f.arm_bf16 && bf16_detected();
    DenseKernels { bf16_block_4x3: Some(float::block_4x3_fn(bf16)), bf16_rows_4: Some(float::rows_4_fn(bf16)), f32_gemm: None }
}

/// The tier's table with (`bf16 = true`) or without BFDOT for the BF16 dot, built once;
/// `None` when the CPU lacks the features asked for.
pub(super) fn table_with(bf16: bool) -> Option<&'static Table> {
    if !dotprod_detected() || (bf16 && !bf16_detected()) {
        return None;
    }
    static TABLES: [OnceLock<Table>; 2] = [OnceLock::new(), OnceLock::new()];
    Some(TABLES[bf16 as usize].get_or_init(|| build(bf16)))
}

fn build(bf16: bool) -> Table {
    let s = &scalar::TABLE;
    let entry = |i: usize, to_f32: super::ToF32Fn, from_f32: Option<super::FromF32Fn>, vec_dot: Option<super::VecDotFn>| TypeKernels {
        ty: s[i].ty,
        vec_dot_type: s[i].vec_dot_type,
        to_f32,
        from_f32,
        vec_dot,
    };
    let dot_bf16: super::VecDotFn = if bf16 { float::dot_bf16_bfdot } else { float::dot_bf16_widen };
    [
        entry(0, s[0].to_f32, s[0].from_f32, Some(float::dot_f32)),
        entry(1, float::f16_to_f32, Some(float::f16_from_f32), Some(float::dot_f16)),
        entry(2, float::bf16_to_f32, Some(float::bf16_from_f32), Some(dot_bf16)),
        entry(3, dequant::dequantize_q4_0, s[3].from_f32, Some(dots::dot_q4_0_q8_0)),
        entry(4, dequant::dequantize_q4_1, s[4].from_f32, Some(dots::dot_q4_1_q8_1)),
        entry(5, dequant::dequantize_q8_0, Some(quantize::quantize_q8_0), Some(dots::dot_q8_0_q8_0)),
        entry(6, s[6].to_f32, Some(quantize::quantize_q8_1), None),
        entry(7, dequant::dequantize_q4_k, None, Some(dots::dot_q4_k_q8_k)),
        entry(8, dequant::dequantize_q5_k, None, Some(dots::dot_q5_k_q8_k)),
        entry(9, dequant::dequantize_q6_k, None, Some(dots::dot_q6_k_q8_k)),
        entry(10, dequant::dequantize_q8_k, Some(quantize::quantize_q8_k), None),
    ]
}

/// A table entry `$name` that runs the body `$body`, compiled with `neon` (a
/// `#[target_feature]` function, so that it may use the intrinsics as safe calls).
macro_rules! neon_entry {
    ($(#[$m:meta])* $name:ident => $body:ident ($($arg:ident : $t:ty),*) $(-> $ret:ty)?) => {
        $(#[$m])*
        pub(super) fn $name($($arg: $t),*) $(-> $ret)? {
            // SAFETY: `$body` needs only NEON, which every aarch64 target has (the base
            // target enables it).
            unsafe { $body($($arg),*) }
        }
    };
}
use neon_entry;

// ---------------------------------------------------------------------------------------------
// Checked loads and stores
// ---------------------------------------------------------------------------------------------

/// The `N` elements of `s` from `off` (bounds-checked; free for constant offsets into arrays).
#[inline(always)]
fn arr<T, const N: usize>(s: &[T], off: usize) -> &[T; N] {
    s[off..off + N].try_into().unwrap()
}

#[inline(always)]
fn arr_mut<T, const N: usize>(s: &mut [T], off: usize) -> &mut [T; N] {
    (&mut s[off..off + N]).try_into().unwrap()
}

#[inline(always)]
fn u16_at(s: &[u8], off: usize) -> u16 {
    u16::from_ne_bytes(*arr::<u8, 2>(s, off))
}

#[inline(always)]
fn f32_at(s: &[u8], off: usize) -> f32 {
    f32::from_ne_bytes(*arr::<u8, 4>(s, off))
}

#[inline(always)]
fn ld_u8(c: &[u8; 16]) -> uint8x16_t {
    // SAFETY: reads exactly the 16 bytes of `c` (no alignment needed).
    unsafe { vld1q_u8(c.as_ptr()) }
}

#[inline(always)]
fn ld_s8(c: &[u8; 16]) -> int8x16_t {
    // SAFETY: reads exactly the 16 bytes of `c`.
    unsafe { vld1q_s8(c.as_ptr() as *const i8) }
}

#[inline(always)]
fn ld_f32(c: &[f32; 4]) -> float32x4_t {
    // SAFETY: reads exactly the 4 floats of `c`.
    unsafe { vld1q_f32(c.as_ptr()) }
}

/// 4 f32 from 16 bytes of a row (native byte order).
#[inline(always)]
fn ld_f32_bytes(c: &[u8; 16]) -> float32x4_t {
    // SAFETY: reads exactly the 16 bytes of `c` (`ld1` needs no alignment).
    unsafe { vld1q_f32(c.as_ptr() as *const f32) }
}

#[inline(always)]
fn st_u8(d: &mut [u8; 16], v: uint8x16_t) {
    // SAFETY: writes exactly the 16 bytes of `d`.
    unsafe { vst1q_u8(d.as_mut_ptr(), v) }
}

#[inline(always)]
fn st_f32(d: &mut [f32; 4], v: float32x4_t) {
    // SAFETY: writes exactly the 4 floats of `d`.
    unsafe { vst1q_f32(d.as_mut_ptr(), v) }
}

/// The first `len` (< 16) bytes of `s` in a zero-padded 16-byte chunk.
#[inline(always)]
fn padded16(s: &[u8], len: usize) -> [u8; 16] {
    let mut c = [0u8; 16];
    c[..len].copy_from_slice(&s[..len]);
    c
}

// ---------------------------------------------------------------------------------------------
// Instructions without a stable intrinsic
// ---------------------------------------------------------------------------------------------

/// SDOT: each i32 lane of `acc` plus the dot of the 4 i8 pairs in that lane of `a` and `b`.
#[inline(always)]
fn sdot(acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
    let mut acc = acc;
    // SAFETY: SDOT touches only these registers. It is reached only through the tables built
    // by `table_with`, which first confirmed the dot-product instructions at run time.
    unsafe {
        asm!(
            ".arch_extension dotprod",
            "sdot {acc:v}.4s, {a:v}.16b, {b:v}.16b",
            acc = inout(vreg) acc,
            a = in(vreg) a,
            b = in(vreg) b,
            options(pure, nomem, nostack, preserves_flags)
        )
    };
    acc
}

/// BFDOT: each f32 lane of `acc` plus the dot of the 2 bf16 pairs in that lane of `a`, `b`
/// (Arm's BFDotAdd: the pair summed first, round to odd, bf16 subnormals as zero).
#[inline(always)]
fn bfdot(acc: float32x4_t, a: uint8x16_t, b: uint8x16_t) -> float32x4_t {
    let mut acc = acc;
    // SAFETY: BFDOT touches only these registers. Only the BFDOT paths of `float` call it,
    // reached only through tables / dense kernels handed out after `bf16_detected()`.
    unsafe {
        asm!(
            ".arch_extension bf16",
            "bfdot {acc:v}.4s, {a:v}.8h, {b:v}.8h",
            acc = inout(vreg) acc,
            a = in(vreg) a,
            b = in(vreg) b,
            options(pure, nomem, nostack, preserves_flags)
        )
    };
    acc
}

/// fp16 bits -> f32 (exact; FCVT is base Armv8 floating point).
#[inline(always)]
fn h2f(h: u16) -> f32 {
    let out: f32;
    // SAFETY: FCVT reads the low 16 bits of one register and writes another, nothing else.
    unsafe {
        asm!("fcvt {o:s}, {i:h}", i = in(vreg) h as u32, o = lateout(vreg) out, options(pure, nomem, nostack, preserves_flags))
    };
    out
}

/// 8 fp16 (16 bytes) -> two f32x4, exact (FCVTL / FCVTL2, base Armv8 NEON).
#[inline(always)]
fn f16x8_to_f32(v: uint8x16_t) -> (float32x4_t, float32x4_t) {
    let (lo, hi): (float32x4_t, float32x4_t);
    // SAFETY: register-only conversions; `lo` is written before `x` is read again, so it is
    // an early-clobber `out`.
    unsafe {
        asm!(
            "fcvtl {lo:v}.4s, {x:v}.4h",
            "fcvtl2 {hi:v}.4s, {x:v}.8h",
            x = in(vreg) v,
            lo = out(vreg) lo,
            hi = lateout(vreg) hi,
            options(pure, nomem, nostack, preserves_flags)
        )
    };
    (lo, hi)
}

/// Two f32x4 -> 8 fp16 (16 bytes), rounding per FPCR (nearest even: Linux's default, and
/// what ggml-cpu's `vcvt_f16_f32` does).
#[inline(always)]
fn f32_to_f16x8(lo: float32x4_t, hi: float32x4_t) -> uint8x16_t {
    let out: uint8x16_t;
    // SAFETY: register-only conversions; `out` is written before `hi` is read, so it is an
    // early-clobber `out` (never shares a register with the inputs).
    unsafe {
        asm!(
            "fcvtn {o:v}.4h, {lo:v}.4s",
            "fcvtn2 {o:v}.8h, {hi:v}.4s",
            lo = in(vreg) lo,
            hi = in(vreg) hi,
            o = out(vreg) out,
            options(pure, nomem, nostack, preserves_flags)
        )
    };
    out
}
