//! One 2-D product as the kernels see it: a weight matrix, `m` activation rows and their
//! output rows. A MUL_MAT node's rows are its own; MUL_MAT_ID gives each expert the rows
//! of the (slot, token) pairs that picked it, read and written in place (no gathered
//! copy). The matrix engines and the vector path both take it, so an expert runs through
//! the same code as a plain product.

use super::super::Node;
use crate::dtype::DType;
use crate::tensor::TensorRef;

/// x's rows already converted to an activation format (MUL_MAT_ID's vector-path rows),
/// which an engine quantizing to the same format copies instead of converting again: row r
/// (x's flattened row index) at `rows[r * stride ..][.. bytes]`.
#[derive(Clone, Copy)]
pub struct ConvertedRows<'a> {
    pub ty: DType,
    pub rows: &'a [u8],
    pub stride: usize,
    pub bytes: usize,
}

pub struct Product<'a> {
    /// The weights, [k, n] (one expert's for MUL_MAT_ID, with its part of the packed copy).
    pub w: TensorRef,
    /// Activation rows.
    pub m: usize,
    x: &'a TensorRef,
    dst: &'a TensorRef,
    /// MUL_MAT_ID: row i is pair i, read from x's row (slot % x.ne[1], token) and written
    /// to dst's row (slot, token). None: row i of both.
    pairs: Option<&'a [(u32, u32)]>,
    converted: Option<ConvertedRows<'a>>,
    /// Byte offsets in the node's scratch of the engine's shared activations and of its
    /// per-thread areas.
    pub acts_at: usize,
    pub threads_at: usize,
}

impl<'a> Product<'a> {
    /// A 2-D MUL_MAT node (`matmul::two_d`).
    pub fn of_node(node: &'a Node, acts_at: usize, threads_at: usize) -> Product<'a> {
        Product { w: *node.src(0), m: node.src(1).ne[1], x: node.src(1), dst: &node.dst, pairs: None, converted: None, acts_at, threads_at }
    }

    /// The rows of `pairs` of MUL_MAT_ID's activations `x` ([k, slots or 1, tokens]) and
    /// output `dst` ([n, slots, tokens]), by one expert's weights `w`.
    pub fn of_pairs(w: TensorRef, x: &'a TensorRef, dst: &'a TensorRef, pairs: &'a [(u32, u32)], acts_at: usize, threads_at: usize) -> Product<'a> {
        Product { w, m: pairs.len(), x, dst, pairs: Some(pairs), converted: None, acts_at, threads_at }
    }

    /// The product reading its activation rows, where an engine wants them in `converted`'s
    /// format, from `converted` (written before a barrier every reader has passed).
    pub fn with_converted(self, converted: Option<ConvertedRows<'a>>) -> Product<'a> {
        Product { converted, ..self }
    }

    /// Activation row i already in format `ty`, if the product carries such rows.
    // The AMX engine reads them; the SME engine still converts its own.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    #[inline(always)]
    pub fn converted_row(&self, i: usize, ty: DType) -> Option<&'a [u8]> {
        let c = self.converted.filter(|c| c.ty == ty)?;
        Some(&c.rows[self.x_index(i) * c.stride..][..c.bytes])
    }

    pub fn k(&self) -> usize {
        self.w.ne[0]
    }

    /// The bytes the kernels read for weight rows `r0 .. r1` (whole 16-row groups of the
    /// packed copy where there is one, else the rows in ggml's layout).
    pub fn weight_bytes(&self, r0: usize, r1: usize) -> &[u8] {
        let w = &self.w;
        match &w.packed {
            Some(pk) => {
                let g = crate::kernels::packed::GROUP_ROWS;
                pk.groups(w.ne[0], r0 / g, r1.div_ceil(g) - r0 / g)
            }
            None => w.bytes_at::<u8>(r0 * w.nb[1], (r1 - r0 - 1) * w.nb[1] + w.row_bytes()),
        }
    }

    /// (i1, i2) of activation row i in x.
    #[inline(always)]
    fn x_at(&self, i: usize) -> (usize, usize) {
        match self.pairs {
            Some(p) => (p[i].0 as usize % self.x.ne[1], p[i].1 as usize),
            None => (i, 0),
        }
    }

    /// Activation row i (k floats).
    #[inline(always)]
    pub fn x_row(&self, i: usize) -> &'a [f32] {
        let (i1, i2) = self.x_at(i);
        &self.x.row::<f32>(i1, i2, 0)[..self.k()]
    }

    /// Activation row i as bytes (its k f32s), for kernels that dot f32 rows in place.
    #[inline(always)]
    pub fn x_bytes(&self, i: usize) -> &'a [u8] {
        let (i1, i2) = self.x_at(i);
        &self.x.row::<u8>(i1, i2, 0)[..4 * self.k()]
    }

    /// Activation row i as x's flattened row index (the vector path's converted rows).
    #[inline(always)]
    pub fn x_index(&self, i: usize) -> usize {
        let (i1, i2) = self.x_at(i);
        i1 + self.x.ne[1] * i2
    }

    /// Output row i, columns `n0 .. n0 + len`.
    ///
    /// # Contract
    /// As `TensorRef::row_range_mut`: the caller's split gives it these outputs alone (a
    /// weight group's columns), and no other view of them lives meanwhile.
    #[inline(always)]
    #[allow(clippy::mut_from_ref)]
    pub fn out(&self, i: usize, n0: usize, len: usize) -> &'a mut [f32] {
        let (i1, i2) = match self.pairs {
            Some(p) => (p[i].0 as usize, p[i].1 as usize),
            None => (i, 0),
        };
        self.dst.row_range_mut::<f32>(i1, i2, 0, n0, len)
    }
}
