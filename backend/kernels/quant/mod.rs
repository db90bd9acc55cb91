//! Per-type kernel table, the SMEPilot counterpart of ggml-cpu's `type_traits_cpu`:
//! for each element type, how to convert a row to / from f32 and how to dot a weight row with
//! an activation row of its `vec_dot_type`.
//!
//! Tiers: the scalar reference ([`scalar`], [`scalar_kernels`]) on every target; AVX-512 +
//! VNNI ([`avx512`]) and AVX2 + FMA + F16C ([`avx2`]) on x86-64, whose entries without a SIMD
//! version are the scalar function. The registry (`kernels::registry`) decides which table
//! runs.
//!
//! Numerics follow ggml's CPU backend: activations are quantized as ggml-cpu does on the same
//! architecture, quantized dots sum int32 per block and scale in f32, float dots accumulate in
//! f32 (the scalar tier in f64). See the numerics notes on each function.
//!
//! Length contract of every kernel (checked, a violation panics instead of reading out of
//! bounds): element counts are multiples of the type's block size, and byte slices hold at
//! least `row_bytes` of that many elements (extra trailing bytes are ignored).

pub mod arm_order;
pub mod blocks;
pub mod scalar;

#[cfg(target_arch = "x86_64")]
pub mod avx2;
#[cfg(target_arch = "x86_64")]
pub mod avx512;
#[cfg(target_arch = "aarch64")]
pub mod neon;

#[cfg(test)]
mod tests;

use crate::dtype::DType;

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
pub(crate) const fn slot(ty: DType) -> Option<usize> {
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

pub type Table = [TypeKernels; N_TYPES];

/// The BF16 dots of 4 weight rows with 3 activation rows, `out[i][j]` = row i · act j (`None`
/// when a row holds fewer than n values).
pub type Bf16Block4x3Fn = fn(n: usize, w: [&[u8]; 4], a: [&[u8]; 3]) -> Option<[[f32; 3]; 4]>;
/// The BF16 dots of 4 weight rows with one activation row (`None` as above).
pub type Bf16Rows4Fn = fn(n: usize, w: [&[u8]; 4], a: &[u8]) -> Option<[f32; 4]>;

/// The F32 dots of 4 weight rows with 3 activation rows in ggml's prefill GEMM order (see
/// [`F32Gemm`]); `None` when a row holds fewer than n values or n is not a multiple of the
/// tier's lanes.
pub type F32Block4x3Fn = fn(n: usize, w: [&[u8]; 4], a: [&[u8]; 3]) -> Option<[[f32; 3]; 4]>;

/// ggml-cpu's F32 x F32 GEMM for prefill (llamafile's tinyBLAS), which it runs instead of its
/// dot when the activations are contiguous with at least `min_rows` rows, the weights have a
/// multiple of 4 rows and k is a multiple of `lanes`: per output, one fused multiply-add
/// chain over `lanes`-wide chunks of k, then the tier's horizontal sum.
#[derive(Clone, Copy)]
pub struct F32Gemm {
    pub lanes: usize,
    pub min_rows: usize,
    pub block: F32Block4x3Fn,
}

/// Register-blocked dots a tier has beside its table's single dots; each gives the bits of
/// the table's dot (or, for `f32_gemm`, of ggml's GEMM) on every output it computes.
#[derive(Clone, Copy)]
pub struct DenseKernels {
    /// BF16 prefill tile: each converted chunk serves 3 or 4 products instead of one.
    pub bf16_block_4x3: Option<Bf16Block4x3Fn>,
    /// BF16 decode: four weight rows (four DRAM streams) per activation row.
    pub bf16_rows_4: Option<Bf16Rows4Fn>,
    /// F32 prefill in ggml's GEMM order (MoE routers keep F32 weights).
    pub f32_gemm: Option<F32Gemm>,
}

impl DenseKernels {
    pub const NONE: DenseKernels = DenseKernels { bf16_block_4x3: None, bf16_rows_4: None, f32_gemm: None };
}

/// The scalar reference kernels for `ty`, always available.
pub fn scalar_kernels(ty: DType) -> Option<&'static TypeKernels> {
    slot(ty).map(|i| &scalar::TABLE[i])
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
