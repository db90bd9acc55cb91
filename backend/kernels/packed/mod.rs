//! Packed weight layouts: weights rearranged once, at load, into the order the vector GEMV
//! kernels consume, with the same byte count as ggml's layout (a permutation of the bytes).
//!
//! `Q4_0x16`: 16 weight rows interleaved per block of 32 k. For row group g (rows
//! 16 g .. 16 g + 16) and block b, 288 bytes at `(g * nb + b) * 288`:
//! * 16 fp16 scales, in row order (one vector load gives the 16 rows' scales);
//! * four 64-byte vectors; in vector i, the 4 bytes of lane r are bytes `4i .. 4i + 4` of row
//!   r's `qs` (low nibbles: k = 4i .. 4i + 4, high nibbles: k = 16 + 4i ..).
//!
//! With one row per 32-bit lane, a VNNI dot (`vpdpbusd`) against four broadcast activation
//! bytes advances 16 rows by 4 k at once, and a whole block accumulates in int32 lanes with
//! no horizontal sums.

mod lanes;
pub mod q4_0x16;
pub mod q8_0x16;

#[cfg(target_arch = "x86_64")]
mod avx512;

#[cfg(test)]
mod tests;

use crate::backend::dtype::DType;

/// A packed layout of a weight matrix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    Q4_0x16,
    Q8_0x16,
}

impl Layout {
    /// The packed layout for weights of type `ty` with `k` columns and `n` rows, if any.
    pub fn for_weights(ty: DType, k: usize, n: usize) -> Option<Layout> {
        match ty {
            DType::Q4_0 if k.is_multiple_of(32) && n.is_multiple_of(16) => Some(Layout::Q4_0x16),
            DType::Q8_0 if k.is_multiple_of(32) && n.is_multiple_of(16) => Some(Layout::Q8_0x16),
            _ => None,
        }
    }

    /// Bytes of one block (32 k) of one row group.
    pub const fn group_block(self) -> usize {
        match self {
            Layout::Q4_0x16 => q4_0x16::GROUP_BLOCK,
            Layout::Q8_0x16 => q8_0x16::GROUP_BLOCK,
        }
    }
}

/// Where a weight tensor's packed copy lives (kept alongside ggml's own layout, which other
/// ops and backends still read).
#[derive(Clone, Copy, Debug)]
pub struct PackedRef {
    pub layout: Layout,
    pub data: *const u8,
}

// SAFETY: a PackedRef points to immutable packed weights that live as long as their buffer,
// which outlives every graph computed with them.
unsafe impl Send for PackedRef {}
unsafe impl Sync for PackedRef {}

/// Packs `n` rows of `k` weights of type `ty` from ggml's layout `src` into `dst`
/// (`ty.row_bytes(k) * n` bytes each).
pub fn pack(layout: Layout, ty: DType, src: &[u8], dst: &mut [u8], n: usize, k: usize) {
    match layout {
        Layout::Q4_0x16 => {
            assert_eq!(ty, DType::Q4_0);
            q4_0x16::pack(src, dst, n, k / 32)
        }
        Layout::Q8_0x16 => {
            assert_eq!(ty, DType::Q8_0);
            q8_0x16::pack(src, dst, n, k / 32)
        }
    }
}

/// Row `row` of a packed tensor with `k` columns, dequantized to f32.
pub fn row_to_f32(p: &PackedRef, k: usize, row: usize, out: &mut [f32]) {
    let nb = k / 32;
    let gb = nb * p.layout.group_block();
    // SAFETY: the packed copy holds every group of the tensor; row < n (caller).
    let group = unsafe { std::slice::from_raw_parts(p.data.add((row / 16) * gb), gb) };
    #[cfg(target_arch = "x86_64")]
    if crate::backend::kernels::quant::avx512::detected() && !crate::backend::kernels::quant::force_scalar() {
        return avx512::row_to_f32(p.layout, group, nb, row % 16, out);
    }
    match p.layout {
        Layout::Q4_0x16 => q4_0x16::row_to_f32(group, nb, row % 16, out),
        Layout::Q8_0x16 => q8_0x16::row_to_f32(group, nb, row % 16, out),
    }
}

/// Dots of one 16-row group of packed weights (layout `layout`) with `m` activation rows
/// (Q8_0 blocks `acts[i]`, plus `sums[i][b]` = the sum of block b's quants): `out[i][r]` for
/// row r of the group. The fastest tier this CPU runs; the layouts' `gemv_group_scalar` are
/// the references.
pub fn gemv(layout: Layout, nb: usize, group: &[u8], acts: &[&[u8]], sums: &[&[i32]], out: &mut [[f32; 16]]) {
    #[cfg(target_arch = "x86_64")]
    if crate::backend::kernels::quant::avx512::detected() && !crate::backend::kernels::quant::force_scalar() {
        return avx512::gemv(layout, nb, group, acts, sums, out);
    }
    match layout {
        Layout::Q4_0x16 => q4_0x16::gemv_group_scalar(nb, group, acts, sums, out),
        Layout::Q8_0x16 => q8_0x16::gemv_group_scalar(nb, group, acts, sums, out),
    }
}
