//! Per-type kernel table, the SMEPilot counterpart of ggml-cpu's `type_traits_cpu`:
//! for each element type, how to convert a row to / from f32 and how to dot a weight row with
//! an activation row of its `vec_dot_type`.
//!
//! Tiers:
//! * [`scalar_kernels`]: the scalar reference ([`scalar`]), always present, on every target;
//! * [`kernels`]: the fastest tier this CPU runs, chosen once at first use by runtime feature
//!   detection (AVX-512 + VNNI on x86-64, see [`avx512`]; else AVX2 + FMA + F16C for the float
//!   types, see [`avx2`]); entries without a SIMD version fall
//!   back to the scalar function. `SMEPILOT_FORCE_SCALAR=1` (read once) selects the scalar
//!   tier everywhere.
//!
//! Numerics follow ggml's CPU backend: activations are quantized as ggml-cpu does on the same
//! architecture, quantized dots sum int32 per block and scale in f32, float dots accumulate in
//! f32 (the scalar tier in f64). See the numerics notes on each function.
//!
//! Length contract of every kernel (checked, a violation panics instead of reading out of
//! bounds): element counts are multiples of the type's block size, and byte slices hold at
//! least `row_bytes` of that many elements (extra trailing bytes are ignored).

pub mod blocks;
pub mod scalar;

#[cfg(target_arch = "x86_64")]
pub mod avx2;
#[cfg(target_arch = "x86_64")]
pub mod avx512;

#[cfg(test)]
mod tests;

use crate::dtype::DType;
use std::sync::OnceLock;

/// Converts `dst.len()` elements (a multiple of the block size) from a row of this type to f32.
pub type ToF32Fn = fn(src: &[u8], dst: &mut [f32]);
/// Converts / quantizes `src.len()` f32 elements (a multiple of the block size) to this type.
pub type FromF32Fn = fn(src: &[f32], dst: &mut [u8]);
/// Dot product of `n` elements: a weight row of type `ty` with an activation row of type
/// `vec_dot_type`.
pub type VecDotFn = fn(n: usize, w: &[u8], a: &[u8]) -> f32;

/// The kernels of one element type.
pub struct TypeKernels {
    pub ty: DType,
    /// Activation type this weight type is dotted with (ggml-cpu's `vec_dot_type`).
    pub vec_dot_type: DType,
    /// Dequantize / convert `dst.len()` elements (multiple of block size).
    pub to_f32: ToF32Fn,
    /// Quantize / convert; `None` for the K-quant weight types.
    pub from_f32: Option<FromF32Fn>,
    /// Dot of a weight row (type `ty`) with an activation row (type `vec_dot_type`), n elements;
    /// `None` for the activation-only types Q8_1 and Q8_K.
    pub vec_dot: Option<VecDotFn>,
}

/// Number of types in the table.
pub const N_TYPES: usize = 11;

/// The types in the table, in table order.
pub const TYPES: [DType; N_TYPES] = [
    DType::F32,
    DType::F16,
    DType::BF16,
    DType::Q4_0,
    DType::Q4_1,
    DType::Q8_0,
    DType::Q8_1,
    DType::Q4_K,
    DType::Q5_K,
    DType::Q6_K,
    DType::Q8_K,
];

/// Index of `ty` in [`TYPES`].
const fn slot(ty: DType) -> Option<usize> {
    Some(match ty {
        DType::F32 => 0,
        DType::F16 => 1,
        DType::BF16 => 2,
        DType::Q4_0 => 3,
        DType::Q4_1 => 4,
        DType::Q8_0 => 5,
        DType::Q8_1 => 6,
        DType::Q4_K => 7,
        DType::Q5_K => 8,
        DType::Q6_K => 9,
        DType::Q8_K => 10,
        DType::I8 | DType::I16 | DType::I32 | DType::I64 => return None,
    })
}

type Table = [TypeKernels; N_TYPES];

struct Active {
    table: &'static Table,
    name: &'static str,
}

fn active() -> &'static Active {
    static ACTIVE: OnceLock<Active> = OnceLock::new();
    ACTIVE.get_or_init(|| {
        let scalar = Active {
            table: &scalar::TABLE,
            name: "scalar",
        };
        if force_scalar() {
            return scalar;
        }
        #[cfg(target_arch = "x86_64")]
        if let Some((table, name)) = avx512::table() {
            return Active { table, name };
        }
        #[cfg(target_arch = "x86_64")]
        if let Some(table) = avx2::table() {
            return Active { table, name: "avx2" };
        }
        scalar
    })
}

/// Whether `SMEPILOT_FORCE_SCALAR` asks for the scalar tier (set, non-empty and not "0").
/// Read once.
pub fn force_scalar() -> bool {
    static FORCE: OnceLock<bool> = OnceLock::new();
    *FORCE.get_or_init(|| {
        std::env::var_os("SMEPILOT_FORCE_SCALAR").is_some_and(|v| !v.is_empty() && v != "0")
    })
}

/// The fastest kernels for `ty` on this CPU (scalar if `SMEPILOT_FORCE_SCALAR=1`);
/// `None` for a type not in the table.
pub fn kernels(ty: DType) -> Option<&'static TypeKernels> {
    slot(ty).map(|i| &active().table[i])
}

/// The scalar reference kernels for `ty`, always available.
pub fn scalar_kernels(ty: DType) -> Option<&'static TypeKernels> {
    slot(ty).map(|i| &scalar::TABLE[i])
}

/// Name of the tier [`kernels`] returns: "scalar", "avx2", "avx512" or "avx512+bf16".
pub fn active_tier() -> &'static str {
    active().name
}

// ---------------------------------------------------------------------------------------------
// Length checks shared by all tiers (they keep every tier's reads and writes in bounds).
// ---------------------------------------------------------------------------------------------

#[inline]
#[track_caller]
pub(crate) fn check_to_f32(ty: DType, src_len: usize, dst_len: usize) {
    assert!(
        dst_len.is_multiple_of(ty.block_size()),
        "{}: to_f32 of {dst_len} elements, not a multiple of the block size {}",
        ty.name(),
        ty.block_size()
    );
    assert!(
        src_len >= ty.row_bytes(dst_len),
        "{}: to_f32 of {dst_len} elements needs {} bytes, got {src_len}",
        ty.name(),
        ty.row_bytes(dst_len)
    );
}

#[inline]
#[track_caller]
pub(crate) fn check_from_f32(ty: DType, src_len: usize, dst_len: usize) {
    assert!(
        src_len.is_multiple_of(ty.block_size()),
        "{}: from_f32 of {src_len} elements, not a multiple of the block size {}",
        ty.name(),
        ty.block_size()
    );
    assert!(
        dst_len >= ty.row_bytes(src_len),
        "{}: from_f32 of {src_len} elements needs {} bytes, got {dst_len}",
        ty.name(),
        ty.row_bytes(src_len)
    );
}

#[inline]
#[track_caller]
pub(crate) fn check_vec_dot(ty: DType, vdt: DType, n: usize, w_len: usize, a_len: usize) {
    assert!(
        n.is_multiple_of(ty.block_size()) && n.is_multiple_of(vdt.block_size()),
        "{}: vec_dot of {n} elements, not a multiple of the block size {}",
        ty.name(),
        ty.block_size()
    );
    assert!(
        w_len >= ty.row_bytes(n),
        "{}: vec_dot of {n} elements needs {} weight bytes, got {w_len}",
        ty.name(),
        ty.row_bytes(n)
    );
    assert!(
        a_len >= vdt.row_bytes(n),
        "{}: vec_dot of {n} elements needs {} {} activation bytes, got {a_len}",
        ty.name(),
        vdt.row_bytes(n),
        vdt.name()
    );
}
