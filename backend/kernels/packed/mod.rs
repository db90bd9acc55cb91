//! Packed weight layouts: weights rearranged once, at load, into the order the vector GEMV
//! kernels consume, with the same byte count as ggml's layout (a permutation of the bytes,
//! see [`lanes`]): 16 weight rows interleaved per block, one row per 32-bit lane.
//!
//! * `Q4_0x16`: per 32-k block, 288 bytes: the 16 rows' fp16 scales, then four vectors; in
//!   vector i, lane r holds row r's `qs` bytes `4i .. 4i + 4` (low nibbles: k = 4i .. 4i + 4,
//!   high nibbles: k = 16 + 4i ..).
//! * `Q4_1x16`: per 32-k block, 320 bytes: the 16 rows' fp16 scales, then their fp16
//!   minimums, then four vectors as in `Q4_0x16` (nibbles unsigned, no offset).
//! * `Q8_0x16`: per 32-k block, 544 bytes: scales, then eight vectors of quants stored as
//!   q + 128 (VNNI's unsigned operand; the GEMV subtracts 128 * sum(a)).
//! * `Q4_Kx16`: per 256-k super-block, 2304 bytes: d, dmin, then 3 vectors of the packed
//!   6-bit scales and minimums (12 bytes a row, decoded in-lane), then 32 vectors of `qs`.
//! * `Q6_Kx16`: per 256-k super-block, 3360 bytes: d, then 32 vectors of `ql`, 16 of `qh`
//!   and 4 of the signed 8-bit sub-block scales.

mod lanes;

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
#[cfg(target_arch = "aarch64")]
mod neon;

#[cfg(test)]
mod tests;

use crate::dtype::DType;
use crate::kernels::quant::{scalar_kernels, TypeKernels};
use lanes::BlockShape;

/// Weight rows per packed group: every layout interleaves 16 rows, one per 32-bit lane of a
/// 512-bit vector.
pub const GROUP_ROWS: usize = 16;

/// A packed layout of a weight matrix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(non_camel_case_types)] // named as ggml names the types
pub enum Layout {
    Q4_0x16,
    Q4_1x16,
    Q8_0x16,
    Q4_Kx16,
    Q6_Kx16,
}

const Q4_0X16: BlockShape = BlockShape { row_block: 18, heads: &[0], lanes_at: 2, vectors: 4, flip: 0 };
const Q4_1X16: BlockShape = BlockShape { row_block: 20, heads: &[0, 2], lanes_at: 4, vectors: 4, flip: 0 };
const Q8_0X16: BlockShape = BlockShape { row_block: 34, heads: &[0], lanes_at: 2, vectors: 8, flip: 0x80 };
const Q4_KX16: BlockShape = BlockShape { row_block: 144, heads: &[0, 2], lanes_at: 4, vectors: 35, flip: 0 };
const Q6_KX16: BlockShape = BlockShape { row_block: 210, heads: &[208], lanes_at: 0, vectors: 52, flip: 0 };

impl Layout {
    /// The packed layout for weights of type `ty` with `k` columns and `n` rows, if any.
    pub fn for_weights(ty: DType, k: usize, n: usize) -> Option<Layout> {
        let layout = match ty {
            DType::Q4_0 => Layout::Q4_0x16,
            DType::Q4_1 => Layout::Q4_1x16,
            DType::Q8_0 => Layout::Q8_0x16,
            DType::Q4_K => Layout::Q4_Kx16,
            DType::Q6_K => Layout::Q6_Kx16,
            _ => return None,
        };
        (k.is_multiple_of(ty.block_size()) && n.is_multiple_of(16)).then_some(layout)
    }

    /// The weight type this layout rearranges.
    pub const fn ty(self) -> DType {
        match self {
            Layout::Q4_0x16 => DType::Q4_0,
            Layout::Q4_1x16 => DType::Q4_1,
            Layout::Q8_0x16 => DType::Q8_0,
            Layout::Q4_Kx16 => DType::Q4_K,
            Layout::Q6_Kx16 => DType::Q6_K,
        }
    }

    const fn shape(self) -> &'static BlockShape {
        match self {
            Layout::Q4_0x16 => &Q4_0X16,
            Layout::Q4_1x16 => &Q4_1X16,
            Layout::Q8_0x16 => &Q8_0X16,
            Layout::Q4_Kx16 => &Q4_KX16,
            Layout::Q6_Kx16 => &Q6_KX16,
        }
    }

    /// The activation format its GEMV takes (the type ggml-cpu dots the weights with).
    pub const fn act_type(self) -> DType {
        match self {
            Layout::Q4_0x16 | Layout::Q8_0x16 => DType::Q8_0,
            Layout::Q4_1x16 => DType::Q8_1,
            Layout::Q4_Kx16 | Layout::Q6_Kx16 => DType::Q8_K,
        }
    }

    /// Bytes of one block of one row group.
    pub const fn group_block(self) -> usize {
        self.shape().group_block()
    }

    /// Bytes of one whole row group of a tensor with `k` columns.
    pub fn group_bytes(self, k: usize) -> usize {
        k / self.ty().block_size() * self.group_block()
    }
}

/// Where a weight tensor's packed copy lives (kept alongside ggml's own layout, which other
/// ops and backends still read).
///
/// Whoever builds one (`ffi::buffer` where it packs, tests) vouches that `data .. data +
/// len` holds the packed copy, unchanged while graphs use it; [`Self::groups`] reads only
/// within it.
#[derive(Clone, Copy, Debug)]
pub struct PackedRef {
    pub layout: Layout,
    pub data: *const u8,
    /// Bytes of the packed copy (ggml's bytes of the tensor: packing permutes them).
    pub len: usize,
}

impl PackedRef {
    /// Groups `g0 .. g0 + count` (16 rows each) of the packed tensor with `k` columns, as
    /// bytes. Panics if they lie past the copy.
    #[inline]
    pub fn groups(&self, k: usize, g0: usize, count: usize) -> &[u8] {
        let gb = self.layout.group_bytes(k);
        let (off, n) = (g0 * gb, count * gb);
        assert!(
            off.checked_add(n).is_some_and(|e| e <= self.len) && !self.data.is_null(),
            "SMEPilot: packed groups {g0}..+{count} of {gb} bytes past the copy's {} bytes",
            self.len
        );
        // SAFETY: checked to lie within the copy's `len` bytes, which the constructor vouches
        // for; the copy is immutable while graphs use it (packed once, before any graph).
        unsafe { std::slice::from_raw_parts(self.data.add(off), n) }
    }

    /// Group `g` (16 rows) of the packed tensor with `k` columns.
    #[inline]
    pub fn group(&self, k: usize, g: usize) -> &[u8] {
        self.groups(k, g, 1)
    }
}

// SAFETY: a PackedRef points to immutable packed weights that live as long as their buffer,
// which outlives every graph computed with them.
unsafe impl Send for PackedRef {}
unsafe impl Sync for PackedRef {}

/// Packs `n` rows of `k` weights of type `ty` from ggml's layout `src` into `dst`
/// (`ty.row_bytes(k) * n` bytes each).
pub fn pack(layout: Layout, ty: DType, src: &[u8], dst: &mut [u8], n: usize, k: usize) {
    assert_eq!(ty, layout.ty());
    lanes::pack(layout.shape(), src, dst, n, k / ty.block_size())
}

/// Inverse of [`pack`].
pub fn unpack(layout: Layout, src: &[u8], dst: &mut [u8], n: usize, k: usize) {
    lanes::unpack(layout.shape(), src, dst, n, k / layout.ty().block_size())
}

/// Bytes of ggml-layout blocks gathered at a time by the portable paths.
const CHUNK: usize = 4096;

/// Calls `f(b0, blocks)` with row `r` of `group` (blocks `b0 ..`, in ggml's layout) chunk by
/// chunk.
fn for_row_chunks(layout: Layout, group: &[u8], nb: usize, r: usize, mut f: impl FnMut(usize, &[u8])) {
    let s = layout.shape();
    let per = CHUNK / s.row_block;
    let mut buf = [0u8; CHUNK];
    for b0 in (0..nb).step_by(per) {
        let b1 = (b0 + per).min(nb);
        for b in b0..b1 {
            s.row_block_of(&group[b * s.group_block()..], r, &mut buf[(b - b0) * s.row_block..]);
        }
        f(b0, &buf[..(b1 - b0) * s.row_block]);
    }
}

/// Dots of `ng` consecutive 16-row groups of packed weights (`groups`) with `m` activation
/// rows `acts[i]` (in the weight type's activation format: Q8_0, Q8_1 or Q8_K; for Q8_0 also
/// `sums[i][b]` = the sum of block b's quants, which the other formats carry inside):
/// `out[gi * m + i][r]` for row r of group gi. `next`: the groups the caller runs after
/// these, of the same size (or nothing); a kernel may prefetch their start as it finishes.
pub type GemvFn = fn(layout: Layout, nb: usize, groups: &[u8], ng: usize, next: &[u8], acts: &[&[u8]], sums: &[&[i32]], out: &mut [[f32; 16]]);
/// Row `r` (below 16) of one packed group of `nb` blocks, dequantized to f32.
pub type RowToF32Fn = fn(layout: Layout, group: &[u8], nb: usize, r: usize, out: &mut [f32]);

/// One tier's packed-weight kernels.
#[derive(Clone, Copy)]
pub struct Kernels {
    /// The packed layout the tier's GEMV reads for weights of a type and shape, if any.
    pub layout_for: fn(ty: DType, k: usize, n: usize) -> Option<Layout>,
    pub gemv: GemvFn,
    pub row_to_f32: RowToF32Fn,
}

/// The portable tier: each row gathered back into ggml's layout, through the scalar table.
pub const SCALAR: Kernels = Kernels { layout_for: Layout::for_weights, gemv: gemv_scalar, row_to_f32: row_to_f32_scalar };

/// The AVX2 tier, when this CPU runs it.
#[cfg(target_arch = "x86_64")]
pub(crate) fn avx2_kernels() -> Option<Kernels> {
    avx2::detected().then_some(Kernels { layout_for: Layout::for_weights, gemv: avx2::gemv, row_to_f32: row_to_f32_scalar })
}

/// The AVX-512 VNNI tier, when this CPU runs it.
#[cfg(target_arch = "x86_64")]
pub(crate) fn avx512_kernels() -> Option<Kernels> {
    crate::kernels::quant::avx512::detected().then_some(Kernels { layout_for: Layout::for_weights, gemv: avx512::gemv, row_to_f32: avx512::row_to_f32 })
}

/// The NEON tier, when this CPU runs it.
#[cfg(target_arch = "aarch64")]
pub(crate) fn neon_kernels(f: &crate::platform::CpuFeatures) -> Option<Kernels> {
    let gemv: GemvFn = if f.i8mm { neon::gemv_i8mm } else { neon::gemv };
    f.neon_tier().then_some(Kernels { layout_for: Layout::for_weights, gemv, row_to_f32: neon::row_to_f32 })
}

/// Row `row` of a packed tensor with `k` columns, dequantized to f32 by `kern`.
pub fn row_to_f32(kern: &Kernels, p: &PackedRef, k: usize, row: usize, out: &mut [f32]) {
    let nb = k / p.layout.ty().block_size();
    let group = p.group(k, row / 16);
    (kern.row_to_f32)(p.layout, group, nb, row % 16, out)
}

/// Row `r` of one group back in ggml's layout, chunk by chunk, through the scalar table's
/// dequantizer (the portable tier, and the reference of the others).
pub(crate) fn row_to_f32_scalar(layout: Layout, group: &[u8], nb: usize, r: usize, out: &mut [f32]) {
    let k = scalar_kernels(layout.ty()).expect("packed type in the table");
    let bk = layout.ty().block_size();
    assert!(r < 16 && out.len() >= nb * bk);
    for_row_chunks(layout, group, nb, r, |b0, blocks| {
        let n = blocks.len() / layout.ty().block_bytes() * bk;
        (k.to_f32)(blocks, &mut out[b0 * bk..b0 * bk + n]);
    });
}

/// The portable GEMV: each row of each group gathered back into ggml's layout and dotted by
/// the scalar table (the reference of the SIMD tiers).
pub(crate) fn gemv_scalar(layout: Layout, nb: usize, groups: &[u8], ng: usize, _next: &[u8], acts: &[&[u8]], _sums: &[&[i32]], out: &mut [[f32; 16]]) {
    let (m, gbytes) = (acts.len(), nb * layout.group_block());
    let k = scalar_kernels(layout.ty()).expect("packed type in the table");
    for gi in 0..ng {
        gemv_portable(k, layout, nb, &groups[gi * gbytes..(gi + 1) * gbytes], acts, &mut out[gi * m..(gi + 1) * m]);
    }
}

/// Consecutive groups [`gemv`] streams side by side for one activation row (decode): several
/// independent streams keep more DRAM reads in flight than one.
pub const DECODE_GROUPS: usize = 4;

/// Each row of the group gathered back into ggml's layout and dotted by the table's `k`
/// (the portable path).
pub(crate) fn gemv_portable(k: &TypeKernels, layout: Layout, nb: usize, group: &[u8], acts: &[&[u8]], out: &mut [[f32; 16]]) {
    let ty = layout.ty();
    let (dot, ab) = (k.vec_dot.expect("packed type has a dot"), k.vec_dot_type.block_bytes());
    assert!(group.len() >= nb * layout.group_block() && out.len() >= acts.len());
    for (a, o) in acts.iter().zip(out.iter_mut()) {
        for (r, acc) in o.iter_mut().enumerate() {
            *acc = 0.0;
            for_row_chunks(layout, group, nb, r, |b0, blocks| {
                let n = blocks.len() / ty.block_bytes();
                *acc += dot(n * ty.block_size(), blocks, &a[b0 * ab..(b0 + n) * ab]);
            });
        }
    }
}
