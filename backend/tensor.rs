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
    /// Bytes at `data` the tensor may touch (ggml's `ggml_nbytes`): the accessors below
    /// never reach past them.
    pub len: usize,
    /// The packed copy of a weight tensor, when SMEPilot made one (ggml's layout at `data`
    /// stays valid).
    pub packed: Option<crate::kernels::packed::PackedRef>,
}

// SAFETY: a TensorRef is a plain description; the executor guarantees that threads
// write disjoint ranges of a node's output and only read its inputs (the accessors'
// contract, below).
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

    /// Splits a flat row index into (i1, i2, i3).
    #[inline(always)]
    pub fn unflatten_row(&self, r: usize) -> (usize, usize, usize) {
        let i1 = r % self.ne[1];
        let i2 = (r / self.ne[1]) % self.ne[2];
        let i3 = r / (self.ne[1] * self.ne[2]);
        (i1, i2, i3)
    }
}

/// Element types a tensor's (or the scratch's) bytes may be viewed as: plain data, for
/// which every bit pattern is a valid value and which have no padding. Sealed: only the
/// types listed here.
pub trait Elem: sealed::Sealed + Copy + Send + Sync + 'static {}

mod sealed {
    pub trait Sealed {}
}

macro_rules! elem {
    ($($t:ty),*) => {$(
        impl sealed::Sealed for $t {}
        impl Elem for $t {}
    )*};
}
elem!(u8, i8, u16, i16, u32, i32, u64, i64, f32, f64, half::f16, half::bf16);

/// Pointer to `n` `T`s at byte `off` of the `len` bytes at `base`: panics, naming `what`,
/// unless they lie within those bytes and are aligned for `T`. Pointer arithmetic only; the
/// callers' contracts make the dereference sound.
#[inline(always)]
pub(crate) fn checked_ptr<T: Elem>(base: *mut u8, len: usize, off: usize, n: usize, what: &str) -> *mut T {
    let end = n.checked_mul(size_of::<T>()).and_then(|b| off.checked_add(b));
    assert!(
        end.is_some_and(|e| e <= len),
        "SMEPilot: {n} x {} bytes at offset {off} lie outside {what}'s {len} bytes",
        size_of::<T>()
    );
    let p = base.wrapping_add(off);
    assert!(
        (p as usize).is_multiple_of(align_of::<T>()),
        "SMEPilot: {what} at offset {off} is not aligned for {}",
        std::any::type_name::<T>()
    );
    p as *mut T
}

/// Row `(i1, i2, i3)` of a tensor as a source of [`TensorRef::row_io`]: the source row
/// itself, or `Dst` where the source's row is the output row's very memory (an in-place
/// op: ggml allocated the output over the input).
pub enum Src<'a, T> {
    Row(&'a [T]),
    Dst,
}

impl<'a, T> Src<'a, T> {
    /// The source row, or `dst` when the source is the output row.
    #[inline(always)]
    pub fn or<'b>(&'b self, dst: &'b [T]) -> &'b [T]
    where
        'a: 'b,
    {
        match self {
            Src::Row(r) => r,
            Src::Dst => dst,
        }
    }
}

/// # Contract of the accessors
///
/// A `TensorRef`'s `data .. data + len` is memory that stays valid while a node using it
/// runs: whoever builds a `TensorRef` vouches for it (`ffi::convert` from ggml's tensor and
/// `ggml_nbytes`; the engine's tests and calibration from their own buffers). Every accessor
/// checks that what it touches lies within `len` (and is aligned for the element type) and
/// panics otherwise, so a wrong shape or stride cannot reach outside the tensor; [`Self::check`]
/// lets `ops::supports` decline such a tensor up front, with its reason.
///
/// What the checks cannot see is the other threads. The executor's contract is what makes
/// the accessors sound:
/// * during a node, its inputs are not written (by any thread);
/// * each output row, or range of elements within a row, is written by the one thread that
///   the op's split of the work gives it to, and that thread holds at most one mutable
///   view of it at a time;
/// * an output overlaps an input only in ggml's in-place form (the same rows at the same
///   strides, which `ops::supports` checks); such an op goes through [`Self::row_io`],
///   which hands out the shared row once, mutably, never as `&[T]` and `&mut [T]` at once.
impl TensorRef {
    /// Bytes the shape spans at its strides (what `ggml_nbytes` computes): from the start
    /// to the end of the last row. None if the arithmetic overflows.
    pub fn span(&self) -> Option<usize> {
        if self.ne.contains(&0) {
            return Some(0);
        }
        let bs = self.ty.block_size();
        let blocks = self.ne[0].div_ceil(bs);
        let mut end = (blocks - 1).checked_mul(self.nb[0])?.checked_add(self.ty.block_bytes())?;
        for d in 1..4 {
            end = end.checked_add((self.ne[d] - 1).checked_mul(self.nb[d])?)?;
        }
        Some(end)
    }

    /// Alignment the element accessors need for this tensor's type.
    fn elem_align(&self) -> usize {
        match self.ty.block_bytes() {
            b if self.ty.block_size() == 1 => b.min(8),
            _ => 1,
        }
    }

    /// The tensor can be read through the accessors: every row of the shape, at its
    /// strides, lies within `len`, and data and strides are aligned for its element type.
    /// `ops::supports` declines a tensor failing this; it is never read.
    pub fn check(&self) -> Result<(), &'static str> {
        match self.span() {
            Some(s) if s <= self.len => {}
            _ => return Err("tensor: shape at its strides reaches past its bytes"),
        }
        let a = self.elem_align();
        if !(self.data as usize).is_multiple_of(a) || self.nb.iter().any(|s| !s.is_multiple_of(a)) {
            return Err("tensor: data or strides not aligned for its type");
        }
        Ok(())
    }

    /// The bytes `[start, start + len)` of the two tensors' spans overlap.
    pub fn overlaps(&self, other: &TensorRef) -> bool {
        let (a, b) = (self.data as usize, other.data as usize);
        if self.data.is_null() || other.data.is_null() {
            return false;
        }
        let (ea, eb) = (a.saturating_add(self.span().unwrap_or(usize::MAX)), b.saturating_add(other.span().unwrap_or(usize::MAX)));
        a < eb && b < ea
    }

    /// The output `self` over input `src` in ggml's in-place form: the same memory, shape
    /// and strides, so that row `r` of one is row `r` of the other.
    pub fn in_place_of(&self, src: &TensorRef) -> bool {
        self.data == src.data && self.ne == src.ne && self.nb == src.nb && self.ty.block_bytes() == src.ty.block_bytes()
    }

    /// Pointer to `n` `T`s at byte `off`, checked: within `len`, aligned for `T`.
    #[inline(always)]
    fn at<T: Elem>(&self, off: usize, n: usize) -> *mut T {
        assert!(!self.data.is_null(), "SMEPilot: access to a tensor without data");
        checked_ptr(self.data, self.len, off, n, "the tensor")
    }

    /// Elements of `T` in one row: the row's bytes as `T`.
    #[inline(always)]
    fn row_elems<T: Elem>(&self) -> usize {
        assert!(
            self.rows_contiguous(),
            "SMEPilot: row access to a tensor whose elements are not adjacent (nb[0] = {})",
            self.nb[0]
        );
        self.row_bytes() / size_of::<T>()
    }

    /// Row `(i1, i2, i3)` of an input, its bytes as `T` (`ne[0]` elements for f32 rows, the
    /// row's blocks as bytes for `u8`).
    ///
    /// # Contract
    /// As on this `impl`: nothing writes the row while the slice lives (it is an input).
    #[inline(always)]
    pub fn row<T: Elem>(&self, i1: usize, i2: usize, i3: usize) -> &[T] {
        let n = self.row_elems::<T>();
        let p = self.at::<T>(self.row_offset(i1, i2, i3), n);
        // SAFETY: `at` checked that n T's at p lie within the tensor's bytes (valid memory
        // for the node, the constructor's promise) and are aligned; T is plain data; by the
        // contract above nothing writes an input while the node runs.
        unsafe { std::slice::from_raw_parts(p, n) }
    }

    /// `n` elements of `T` at byte `off` of an input.
    ///
    /// # Contract
    /// As for [`Self::row`].
    #[inline(always)]
    pub fn bytes_at<T: Elem>(&self, off: usize, n: usize) -> &[T] {
        let p = self.at::<T>(off, n);
        // SAFETY: as in `row`: checked bounds and alignment, an input nothing writes.
        unsafe { std::slice::from_raw_parts(p, n) }
    }

    /// The first `n` elements of a contiguous input (positions, sinks, factors).
    #[inline(always)]
    pub fn elems<T: Elem>(&self, n: usize) -> &[T] {
        self.bytes_at(0, n)
    }

    /// Row `(i1, i2, i3)` of an output, its bytes as `T`, to write.
    ///
    /// # Contract
    /// As on this `impl`: the op's split gives the row to this thread alone, no other view
    /// of it lives meanwhile, and no input of the node overlaps it (in-place ops use
    /// [`Self::row_io`]).
    #[inline(always)]
    #[allow(clippy::mut_from_ref)]
    pub fn row_mut<T: Elem>(&self, i1: usize, i2: usize, i3: usize) -> &mut [T] {
        let n = self.row_elems::<T>();
        self.row_range_mut(i1, i2, i3, 0, n)
    }

    /// Elements `start .. start + n` of output row `(i1, i2, i3)`, to write.
    ///
    /// # Contract
    /// As for [`Self::row_mut`], for this range of the row: other threads may own other
    /// ranges of the same row (a matrix product's columns).
    #[inline(always)]
    #[allow(clippy::mut_from_ref)]
    pub fn row_range_mut<T: Elem>(&self, i1: usize, i2: usize, i3: usize, start: usize, n: usize) -> &mut [T] {
        let row_n = self.row_elems::<T>();
        assert!(start.checked_add(n).is_some_and(|e| e <= row_n), "SMEPilot: elements {start}..+{n} past a row of {row_n}");
        let p = self.at::<T>(self.row_offset(i1, i2, i3) + start * size_of::<T>(), n);
        // SAFETY: `at` checked bounds and alignment; by the contract above this range is
        // this thread's alone while the slice lives and no input aliases it.
        unsafe { std::slice::from_raw_parts_mut(p, n) }
    }

    /// Output row `(i1, i2, i3)` of `self`, with the rows of the sources `srcs` (each a
    /// tensor and its row index) that the op reads to compute it. A source row that is the
    /// output row's own memory (ggml's in-place allocation) comes back as [`Src::Dst`]: the
    /// op reads it from the output row, each element before writing it.
    ///
    /// # Contract
    /// As for [`Self::row_mut`]. Panics if a source row overlaps the output row without
    /// being it (not a form ggml allocates; `ops::supports` declines it).
    #[inline(always)]
    pub fn row_io<'a, T: Elem, const N: usize>(
        &'a self,
        (i1, i2, i3): (usize, usize, usize),
        srcs: [(&'a TensorRef, (usize, usize, usize)); N],
    ) -> (&'a mut [T], [Src<'a, T>; N]) {
        let n = self.row_elems::<T>();
        let d = self.at::<T>(self.row_offset(i1, i2, i3), n);
        let (d0, d1) = (d as usize, d as usize + n * size_of::<T>());
        let rows = srcs.map(|(s, (j1, j2, j3))| {
            let m = s.row_elems::<T>();
            let p = s.at::<T>(s.row_offset(j1, j2, j3), m);
            let (s0, s1) = (p as usize, p as usize + m * size_of::<T>());
            if s0 == d0 && s1 == d1 {
                Src::Dst
            } else {
                assert!(s1 <= d0 || d1 <= s0, "SMEPilot: an input row partly overlaps the output row");
                // SAFETY: checked bounds and alignment of an input row that does not overlap
                // the output row; inputs are not written during the node (contract above).
                Src::Row(unsafe { std::slice::from_raw_parts(p as *const T, m) })
            }
        });
        // SAFETY: `at` checked bounds and alignment; the row is this thread's (contract
        // above); no source slice handed out overlaps it (checked just now).
        (unsafe { std::slice::from_raw_parts_mut(d, n) }, rows)
    }

    /// Byte offset of element `(i0, i1, i2, i3)` of a tensor of a plain type.
    #[inline(always)]
    pub fn elem_offset(&self, i0: usize, i1: usize, i2: usize, i3: usize) -> usize {
        i0 * self.nb[0] + self.row_offset(i1, i2, i3)
    }

    /// The `T` at byte `off` of an input, at any stride (unaligned read).
    ///
    /// # Contract
    /// As for [`Self::row`].
    #[inline(always)]
    pub fn read_at<T: Elem>(&self, off: usize) -> T {
        let p = self.at::<u8>(off, size_of::<T>());
        // SAFETY: `at` checked that size_of::<T>() bytes at p lie within the tensor; the read
        // is unaligned; T is plain data; inputs are not written during the node.
        unsafe { (p as *const T).read_unaligned() }
    }

    /// Writes `v` at byte `off` of an output, at any stride (unaligned write).
    ///
    /// # Contract
    /// As for [`Self::row_range_mut`]: the element is this thread's to write.
    #[inline(always)]
    pub fn write_at<T: Elem>(&self, off: usize, v: T) {
        let p = self.at::<u8>(off, size_of::<T>());
        // SAFETY: `at` checked the bounds; the write is unaligned; by the contract above the
        // element is this thread's alone, and no reference to it lives.
        unsafe { (p as *mut T).write_unaligned(v) }
    }
}
