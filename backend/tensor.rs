//! A view of one ggml tensor as the engine sees it: type, shape, byte strides, data.

use super::dtype::DType;

#[derive(Clone, Copy, Debug)]
pub struct TensorRef {
    pub ty: DType,
    /// Elements per dimension, innermost first (ggml's `ne`).
    pub ne: [usize; 4],
    /// Byte stride per dimension (ggml's `nb`).
    pub nb: [usize; 4],
    /// Start of the data; null while the scheduler only asks what is supported.
    pub data: *mut u8,
    /// The packed copy of a weight tensor, when SMEPilot made one (ggml's layout at `data`
    /// stays valid).
    pub packed: Option<crate::kernels::packed::PackedRef>,
}

// SAFETY: a TensorRef is a plain description; the executor guarantees that threads
// write disjoint ranges of a node's output and only read its inputs.
unsafe impl Send for TensorRef {}
unsafe impl Sync for TensorRef {}

impl TensorRef {
    pub fn nelements(&self) -> usize {
        self.ne.iter().product()
    }

    pub fn nrows(&self) -> usize {
        self.ne[1] * self.ne[2] * self.ne[3]
    }

    /// Bytes of one row of `ne[0]` elements.
    pub fn row_bytes(&self) -> usize {
        self.ty.row_bytes(self.ne[0])
    }

    /// Rows are packed: elements (or blocks) within a row are adjacent.
    pub fn rows_contiguous(&self) -> bool {
        self.nb[0] == self.ty.block_bytes()
    }

    /// Fully contiguous in ggml's sense (`ggml_is_contiguous`).
    pub fn is_contiguous(&self) -> bool {
        let mut next = self.ty.block_bytes();
        if self.nb[0] != next {
            return false;
        }
        next = self.row_bytes();
        for d in 1..4 {
            if self.ne[d] != 1 && self.nb[d] != next {
                return false;
            }
            next *= self.ne[d];
        }
        true
    }

    pub fn same_shape(&self, other: &TensorRef) -> bool {
        self.ne == other.ne
    }

    /// `other` can be broadcast to this shape (ggml_can_repeat(other, self)).
    pub fn can_broadcast_from(&self, other: &TensorRef) -> bool {
        (0..4).all(|d| other.ne[d] != 0 && self.ne[d].is_multiple_of(other.ne[d]))
    }

    /// Byte offset of row (i1, i2, i3).
    #[inline(always)]
    pub fn row_offset(&self, i1: usize, i2: usize, i3: usize) -> usize {
        i1 * self.nb[1] + i2 * self.nb[2] + i3 * self.nb[3]
    }

    /// Pointer to row (i1, i2, i3). Pointer arithmetic only: no dereference here.
    #[inline(always)]
    pub fn row_ptr(&self, i1: usize, i2: usize, i3: usize) -> *mut u8 {
        self.data.wrapping_add(self.row_offset(i1, i2, i3))
    }

    /// Splits a flat row index into (i1, i2, i3).
    #[inline(always)]
    pub fn unflatten_row(&self, r: usize) -> (usize, usize, usize) {
        let i1 = r % self.ne[1];
        let i2 = (r / self.ne[1]) % self.ne[2];
        let i3 = r / (self.ne[1] * self.ne[2]);
        (i1, i2, i3)
    }
}
