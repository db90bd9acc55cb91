//! The KV cache's packed layout, and how ggml's addresses map onto it.
//!
//! llama.cpp's cache tensor (K, or V with flash attention) is one row per cell, each row
//! the cell's heads side by side: `cells x heads x head row`. A KV head's keys are then
//! head rows scattered one row apart, and decode attention, which streams one head's keys
//! at a time, reads short runs at a wide stride. SMEPilot's KV buffer keeps the same bytes
//! head-major, `heads x cells x head row`: each KV head's keys (or values) one contiguous
//! run, in cell order, which the attention kernels read as they are.
//!
//! ggml still addresses the tensor in its standard layout: `tensor->data`, view offsets and
//! strides, `get_tensor` / `set_tensor` offsets are all standard byte offsets. This module
//! maps them: a byte offset ([`KvLayout::packed_offset`]), a byte range in runs
//! ([`KvLayout::runs`]), a view to the strides that reach the same elements
//! ([`KvLayout::map_view`]), and the whole-row writes of SET_ROWS ([`KvLayout::split_rows`]).
//! The streams of a multi-sequence cache are consecutive cells here, so a view across
//! streams maps like any other. The map is a permutation of the tensor's bytes: the cache
//! takes exactly the bytes ggml's layout takes.

use std::ops::Range;

/// The packed layout of one cache tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvLayout {
    /// Bytes of one head's row (its head-size elements in the cache type).
    pub head_bytes: usize,
    /// Heads per cell: ggml's row is `heads * head_bytes` bytes.
    pub heads: usize,
    /// Cells (ggml rows) of the tensor, over all its streams.
    pub cells: usize,
}

/// A view's placement in the packed layout: where its first element is, the strides that
/// reach its other elements, and the bytes it spans from there (ggml_nbytes at those strides).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PackedView {
    pub offset: usize,
    pub ne: [usize; 4],
    pub nb: [usize; 4],
    pub span: usize,
}

impl KvLayout {
    /// The layout of a tensor of `cells` rows of `row_bytes`, heads of `head_bytes`; None
    /// unless the heads tile the row exactly.
    pub fn new(row_bytes: usize, head_bytes: usize, cells: usize) -> Option<KvLayout> {
        (head_bytes > 0 && cells > 0 && row_bytes.is_multiple_of(head_bytes) && row_bytes >= head_bytes)
            .then(|| KvLayout { head_bytes, heads: row_bytes / head_bytes, cells })
    }

    pub fn row_bytes(&self) -> usize {
        self.heads * self.head_bytes
    }

    /// The tensor's bytes (the same in either layout).
    pub fn bytes(&self) -> usize {
        self.row_bytes() * self.cells
    }

    /// Bytes of one head's run of all cells.
    fn head_run(&self) -> usize {
        self.cells * self.head_bytes
    }

    /// Where standard byte offset `off` (< [`bytes`](Self::bytes)) lives.
    pub fn packed_offset(&self, off: usize) -> usize {
        debug_assert!(off < self.bytes());
        let (cell, in_row) = (off / self.row_bytes(), off % self.row_bytes());
        let (head, in_head) = (in_row / self.head_bytes, in_row % self.head_bytes);
        head * self.head_run() + cell * self.head_bytes + in_head
    }

    /// The standard byte range `range` (within the tensor) as runs that each stay within
    /// one head row: (standard offset, packed offset, length), in standard order.
    pub fn runs(&self, range: Range<usize>) -> impl Iterator<Item = (usize, usize, usize)> + '_ {
        debug_assert!(range.end <= self.bytes());
        let mut at = range.start;
        std::iter::from_fn(move || {
            if at >= range.end {
                return None;
            }
            let len = (self.head_bytes - at % self.head_bytes).min(range.end - at);
            let run = (at, self.packed_offset(at), len);
            at += len;
            Some(run)
        })
    }

    /// The view at standard offset `off` with shape `ne`, strides `nb` and `first_bytes`
    /// bytes per run of its first dimension (ggml_row_size of ne[0]; nb[0] is then the
    /// element or block size), placed in the packed layout. None when its elements are not
    /// the same strides apart there: a first dimension that crosses a head row, a stride
    /// that is neither within a head row, whole heads within a cell, nor whole cells.
    pub fn map_view(&self, off: usize, ne: [usize; 4], nb: [usize; 4], first_bytes: usize) -> Option<PackedView> {
        if ne.contains(&0) || off >= self.bytes() {
            return None;
        }
        let (row, hb) = (self.row_bytes(), self.head_bytes);
        let (cell0, head0, in_head0) = (off / row, (off % row) / hb, off % hb);
        // Furthest byte within the head row, head within the cell and cell any element
        // reaches, from the view's first element.
        let (mut in_head, mut head, mut cell) = (first_bytes, 0, 0);
        let mut out = nb;
        for d in 1..4 {
            if ne[d] == 1 {
                continue;
            }
            let reach = ne[d] - 1;
            if nb[d] < hb {
                in_head += reach * nb[d];
            } else if nb[d] < row && nb[d].is_multiple_of(hb) {
                head += reach * (nb[d] / hb);
                out[d] = nb[d] / hb * self.head_run();
            } else if nb[d].is_multiple_of(row) {
                cell += reach * (nb[d] / row);
                out[d] = nb[d] / row * hb;
            } else {
                return None;
            }
        }
        if in_head0 + in_head > hb || head0 + head >= self.heads || cell0 + cell >= self.cells {
            return None;
        }
        // A dimension of one element is never stepped along; give it the span so far, as
        // ggml does for a contiguous tensor.
        let span = |out: &[usize; 4]| first_bytes + (1..4).map(|d| (ne[d] - 1) * out[d]).sum::<usize>();
        for d in 1..4 {
            if ne[d] == 1 {
                out[d] = span(&out);
            }
        }
        Some(PackedView { offset: self.packed_offset(off), ne, nb: out, span: span(&out) })
    }

    /// SET_ROWS' destination: `rows` whole cache rows from standard offset `off` (a cell's
    /// start), `row_stride` bytes apart (a whole number of cells), as a view that splits
    /// each row into its heads along dimension 2: `[head elements, rows, heads, 1]`.
    /// `elems_per_head` is the head size in elements, `nb0` the bytes per element (or block).
    /// None if the rows are not whole cells.
    pub fn split_rows(&self, off: usize, rows: usize, row_stride: usize, elems_per_head: usize, nb0: usize) -> Option<PackedView> {
        let row = self.row_bytes();
        if rows == 0 || !off.is_multiple_of(row) || !row_stride.is_multiple_of(row) || row_stride == 0 {
            return None;
        }
        if off / row + (rows - 1) * (row_stride / row) >= self.cells {
            return None;
        }
        let ne = [elems_per_head, rows, self.heads, 1];
        let nb1 = row_stride / row * self.head_bytes;
        let nb2 = self.head_run();
        let span = self.head_bytes + (rows - 1) * nb1 + (self.heads - 1) * nb2;
        Some(PackedView { offset: self.packed_offset(off), ne, nb: [nb0, nb1, nb2, span], span })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Odd shapes: one head, heads of a few bytes, rows of many heads, few and many cells.
    fn layouts() -> Vec<KvLayout> {
        let mut v = Vec::new();
        for (row, hb) in [(8, 8), (12, 4), (96, 32), (256, 128), (48, 6), (1024, 128)] {
            for cells in [1, 3, 17, 64] {
                v.push(KvLayout::new(row, hb, cells).unwrap());
            }
        }
        v
    }

    #[test]
    fn heads_must_tile_the_row() {
        assert!(KvLayout::new(100, 30, 4).is_none());
        assert!(KvLayout::new(64, 0, 4).is_none());
        assert!(KvLayout::new(64, 128, 4).is_none());
        assert!(KvLayout::new(64, 16, 0).is_none());
        assert_eq!(KvLayout::new(64, 16, 4).unwrap().heads, 4);
    }

    #[test]
    fn every_byte_has_its_own_place_and_heads_are_runs() {
        for l in layouts() {
            let mut seen = vec![false; l.bytes()];
            for off in 0..l.bytes() {
                let p = l.packed_offset(off);
                assert!(p < l.bytes() && !seen[p], "{l:?} offset {off}");
                seen[p] = true;
            }
            // One head's bytes over all cells are one run, in cell order.
            for h in 0..l.heads {
                for c in 0..l.cells {
                    let std = c * l.row_bytes() + h * l.head_bytes;
                    assert_eq!(l.packed_offset(std), (h * l.cells + c) * l.head_bytes);
                }
            }
        }
    }

    #[test]
    fn runs_cover_a_range_within_head_rows() {
        for l in layouts() {
            let n = l.bytes();
            for (a, b) in [(0, n), (1, n - 1), (n / 3, n / 2 + 1), (5.min(n), 5.min(n)), (n - 1, n)] {
                let mut at = a;
                for (std, packed, len) in l.runs(a..b) {
                    assert_eq!(std, at);
                    assert!(len > 0 && std / l.head_bytes == (std + len - 1) / l.head_bytes, "{l:?}");
                    for i in 0..len {
                        assert_eq!(l.packed_offset(std + i), packed + i);
                    }
                    at += len;
                }
                assert_eq!(at, b.max(a), "{l:?} {a}..{b}");
            }
        }
    }

    /// Every element of the view reaches through the packed strides the byte its standard
    /// address maps to.
    fn assert_maps(l: &KvLayout, off: usize, ne: [usize; 4], nb: [usize; 4], elem: usize) {
        let v = l.map_view(off, ne, nb, ne[0] * elem).unwrap_or_else(|| panic!("{l:?} {off} {ne:?} {nb:?}"));
        let mut furthest = 0;
        for i3 in 0..ne[3] {
            for i2 in 0..ne[2] {
                for i1 in 0..ne[1] {
                    for i0 in 0..ne[0] {
                        let idx = [i0, i1, i2, i3];
                        let std: usize = off + (0..4).map(|d| idx[d] * nb[d]).sum::<usize>();
                        let packed: usize = v.offset + (0..4).map(|d| idx[d] * v.nb[d]).sum::<usize>();
                        assert_eq!(l.packed_offset(std), packed, "{l:?} view {ne:?} {nb:?} at {off}, element {idx:?}");
                        furthest = furthest.max(packed + elem - v.offset);
                    }
                }
            }
        }
        assert_eq!(v.span, furthest, "{l:?} view {ne:?} {nb:?}");
    }

    #[test]
    fn attention_and_shift_views_map_to_strides() {
        // f16 caches of 2 streams, heads of 5 and 64 elements: llama.cpp's get_k / get_v
        // (head, heads, n_kv, streams), one stream's whole rows, the K-shift view over all
        // cells, half a head row, and a single head.
        for (head, heads, kv) in [(5usize, 3usize, 7usize), (64, 2, 33), (8, 1, 9)] {
            let (hb, row) = (head * 2, head * heads * 2);
            let l = KvLayout::new(row, hb, kv * 2).unwrap();
            for (s0, ns, n_kv) in [(0, 2, kv), (1, 1, kv - 2), (0, 1, 1)] {
                let off = s0 * kv * row;
                assert_maps(&l, off, [head, heads, n_kv, ns], [2, hb, row, kv * row], 2);
            }
            // One stream's whole rows: a run of a single head maps, of several does not.
            let rows = ([head * heads, kv, 1, 1], [2, row, kv * row, kv * row]);
            if heads == 1 {
                assert_maps(&l, row * kv, rows.0, rows.1, 2);
            } else {
                assert!(l.map_view(row * kv, rows.0, rows.1, row).is_none());
            }
            assert_maps(&l, 0, [head, heads, 2 * kv, 1], [2, hb, row, 2 * kv * row], 2);
            assert_maps(&l, hb * (heads - 1) + 2, [head / 2, 1, 3, 1], [2, hb, row, row], 2);
            assert_maps(&l, 0, [head, kv, heads, 1], [2, row, hb, row * kv], 2);
        }
    }

    #[test]
    fn views_that_cross_head_rows_are_refused() {
        let l = KvLayout::new(3 * 16, 16, 10).unwrap(); // 8 f16 per head, 3 heads
        // A whole row (dim 0 crosses heads), a run starting mid-head past its end, a stride
        // of 1.5 heads, a stride of 1.5 rows, heads running into the next cell, cells
        // running past the end, an empty view.
        assert!(l.map_view(0, [24, 10, 1, 1], [2, 48, 480, 480], 48).is_none());
        assert!(l.map_view(4, [8, 1, 1, 1], [2, 16, 16, 16], 16).is_none());
        assert!(l.map_view(0, [8, 2, 1, 1], [2, 24, 48, 48], 16).is_none());
        assert!(l.map_view(0, [8, 2, 1, 1], [2, 72, 144, 144], 16).is_none());
        assert!(l.map_view(16, [8, 3, 1, 1], [2, 16, 48, 48], 16).is_none());
        assert!(l.map_view(48 * 5, [8, 6, 1, 1], [2, 48, 288, 288], 16).is_none());
        assert!(l.map_view(0, [8, 0, 1, 1], [2, 48, 0, 0], 16).is_none());
    }

    #[test]
    fn set_rows_destinations_split_into_heads() {
        for (head, heads, cells) in [(5usize, 3usize, 11usize), (64, 2, 4), (4, 1, 3)] {
            let (hb, row) = (head * 2, head * heads * 2);
            let l = KvLayout::new(row, hb, cells).unwrap();
            for (first, rows, step) in [(0, cells, 1), (1, (cells - 1) / 2, 2), (cells - 1, 1, 1)] {
                let v = l.split_rows(first * row, rows, step * row, head, 2).unwrap();
                assert_eq!(v.ne, [head, rows, heads, 1]);
                let mut furthest = 0;
                for h in 0..heads {
                    for r in 0..rows {
                        for e in 0..head {
                            let std = (first + r * step) * row + h * hb + e * 2;
                            let packed = v.offset + e * v.nb[0] + r * v.nb[1] + h * v.nb[2];
                            assert_eq!(l.packed_offset(std), packed);
                            furthest = furthest.max(packed + 2 - v.offset);
                        }
                    }
                }
                assert_eq!(v.span, furthest);
            }
            assert!(l.split_rows(2, 1, row, head, 2).is_none(), "mid-row start");
            assert!(l.split_rows(0, cells + 1, row, head, 2).is_none(), "past the last cell");
            if heads > 1 {
                assert!(l.split_rows(0, 2, row + hb, head, 2).is_none(), "a stride of part of a row");
            }
        }
    }
}
