//! ARGSORT, SUM_ROWS, CLAMP, DIV: a MoE router's choice of experts and the normalisation of
//! their weights (llama.cpp's `build_moe_ffn`: argsort of the expert probabilities, then
//! weights / clamp(sum_rows(weights))), each giving ggml-cpu's results.

use super::{need, split_range, Node, Unsupported};
use crate::dtype::DType;
use crate::tensor::Src;
use crate::threadpool::ThreadCtx;

/// ggml's `ggml_sort_order`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SortOrder {
    Asc,
    Desc,
}

pub fn supports_argsort(node: &Node) -> Result<(), Unsupported> {
    let (a, d) = (node.src[0].as_ref().ok_or("missing src")?, &node.dst);
    need(a.ty == DType::F32 && d.ty == DType::I32, "argsort: f32 in, i32 out only")?;
    need(a.nb[0] == 4 && d.nb[0] == 4, "argsort: packed rows only")?;
    need(a.same_shape(d), "argsort: shape mismatch")?;
    need(a.ne[0] <= i32::MAX as usize, "argsort: rows longer than i32 ids")
}

/// The ids of each row's elements in `order`, as ggml-cpu computes them (`std::sort` of the
/// ids with `x[a] < x[b]`, or `>` for DESC): see [`std_sort`] for ties. Rows split across
/// threads; the ids are sorted in the output row itself.
pub fn argsort(node: &Node, ctx: &ThreadCtx, order: SortOrder) {
    let (a, d) = (node.src(0), &node.dst);
    let (r0, r1) = split_range(d.nrows(), ctx.ith, ctx.nth);
    for r in r0..r1 {
        let (i1, i2, i3) = d.unflatten_row(r);
        let x = a.row::<f32>(i1, i2, i3);
        // This thread owns dst row r; the output does not overlap the input (supports:
        // ARGSORT is not run in place).
        let ids = d.row_mut::<i32>(i1, i2, i3);
        for (j, id) in ids.iter_mut().enumerate() {
            *id = j as i32;
        }
        match order {
            SortOrder::Asc => std_sort(ids, &|p, q| x[p as usize] < x[q as usize]),
            SortOrder::Desc => std_sort(ids, &|p, q| x[p as usize] > x[q as usize]),
        }
    }
}

/// libstdc++'s `std::sort` (introsort: median-of-three pivot, unguarded partition, heap
/// sort past 2*log2(n) levels, final insertion sort with threshold 16), step for step, so
/// that the ids agree with ggml-cpu's even where values tie (`std::sort` is not stable;
/// libstdc++ is the C++ library of stock's Linux builds, GCC's or clang's by default). Rows
/// of up to 16 elements get a plain insertion sort: ties keep index order. libc++ (macOS)
/// orders ties differently. The scans carry bounds that libstdc++ omits: they never bind
/// under a strict weak order (any data without NaN), so the result is the same; with NaN
/// they keep the indexing in the slice where C++ has no defined result.
pub fn std_sort<F: Fn(i32, i32) -> bool>(v: &mut [i32], less: &F) {
    let n = v.len();
    if n == 0 {
        return;
    }
    let lg = (usize::BITS - 1 - n.leading_zeros()) as usize;
    introsort_loop(v, 0, n, 2 * lg, less);
    final_insertion_sort(v, less);
}

const THRESHOLD: usize = 16;

fn introsort_loop<F: Fn(i32, i32) -> bool>(v: &mut [i32], first: usize, mut last: usize, mut depth: usize, less: &F) {
    while last - first > THRESHOLD {
        if depth == 0 {
            heap_sort(&mut v[first..last], less);
            return;
        }
        depth -= 1;
        let cut = partition_pivot(v, first, last, less);
        introsort_loop(v, cut, last, depth, less);
        last = cut;
    }
}

fn partition_pivot<F: Fn(i32, i32) -> bool>(v: &mut [i32], first: usize, last: usize, less: &F) -> usize {
    let mid = first + (last - first) / 2;
    move_median_to_first(v, first, first + 1, mid, last - 1, less);
    // Unguarded partition of [first + 1, last) around the pivot at `first`.
    let (mut lo, mut hi) = (first + 1, last);
    loop {
        while lo < last && less(v[lo], v[first]) {
            lo += 1;
        }
        hi -= 1;
        while hi > first && less(v[first], v[hi]) {
            hi -= 1;
        }
        if lo >= hi {
            return lo;
        }
        v.swap(lo, hi);
        lo += 1;
    }
}

fn move_median_to_first<F: Fn(i32, i32) -> bool>(v: &mut [i32], result: usize, a: usize, b: usize, c: usize, less: &F) {
    let pick = if less(v[a], v[b]) {
        if less(v[b], v[c]) {
            b
        } else if less(v[a], v[c]) {
            c
        } else {
            a
        }
    } else if less(v[a], v[c]) {
        a
    } else if less(v[b], v[c]) {
        c
    } else {
        b
    };
    v.swap(result, pick);
}

fn final_insertion_sort<F: Fn(i32, i32) -> bool>(v: &mut [i32], less: &F) {
    let n = v.len();
    if n > THRESHOLD {
        insertion_sort(&mut v[..THRESHOLD], less);
        for i in THRESHOLD..n {
            linear_insert(v, i, less);
        }
    } else {
        insertion_sort(v, less);
    }
}

fn insertion_sort<F: Fn(i32, i32) -> bool>(v: &mut [i32], less: &F) {
    for i in 1..v.len() {
        if less(v[i], v[0]) {
            v[..=i].rotate_right(1);
        } else {
            linear_insert(v, i, less);
        }
    }
}

/// libstdc++'s `__unguarded_linear_insert`: moves `v[i]` down past the elements greater.
fn linear_insert<F: Fn(i32, i32) -> bool>(v: &mut [i32], mut i: usize, less: &F) {
    let val = v[i];
    while i > 0 && less(val, v[i - 1]) {
        v[i] = v[i - 1];
        i -= 1;
    }
    v[i] = val;
}

/// libstdc++'s `__partial_sort(first, last, last)`: make_heap, then sort_heap.
fn heap_sort<F: Fn(i32, i32) -> bool>(v: &mut [i32], less: &F) {
    let len = v.len();
    if len >= 2 {
        let mut parent = (len - 2) / 2;
        loop {
            let value = v[parent];
            adjust_heap(v, parent, len, value, less);
            if parent == 0 {
                break;
            }
            parent -= 1;
        }
    }
    let mut last = len;
    while last > 1 {
        last -= 1;
        let value = v[last];
        v[last] = v[0];
        adjust_heap(v, 0, last, value, less);
    }
}

fn adjust_heap<F: Fn(i32, i32) -> bool>(v: &mut [i32], mut hole: usize, len: usize, value: i32, less: &F) {
    let top = hole;
    let mut second = hole;
    while second < (len - 1) / 2 {
        second = 2 * (second + 1);
        if less(v[second], v[second - 1]) {
            second -= 1;
        }
        v[hole] = v[second];
        hole = second;
    }
    if len.is_multiple_of(2) && second == (len - 2) / 2 {
        second = 2 * (second + 1);
        v[hole] = v[second - 1];
        hole = second - 1;
    }
    // __push_heap
    while hole > top {
        let parent = (hole - 1) / 2;
        if !less(v[parent], value) {
            break;
        }
        v[hole] = v[parent];
        hole = parent;
    }
    v[hole] = value;
}

pub fn supports_sum_rows(node: &Node) -> Result<(), Unsupported> {
    let (a, d) = (node.src[0].as_ref().ok_or("missing src")?, &node.dst);
    need(a.ty == DType::F32 && d.ty == DType::F32, "sum_rows: f32 only")?;
    need(a.nb[0] == 4 && d.nb[0] == 4, "sum_rows: packed rows only")?;
    need(d.ne[0] == 1 && d.ne[1..] == a.ne[1..], "sum_rows: shape mismatch")
}

/// Each row's sum, as ggml_vec_sum_f32: in order, in f64, rounded once.
pub fn sum_rows(node: &Node, ctx: &ThreadCtx) {
    let (a, d) = (node.src(0), &node.dst);
    let (r0, r1) = split_range(d.nrows(), ctx.ith, ctx.nth);
    for r in r0..r1 {
        let (i1, i2, i3) = d.unflatten_row(r);
        let sum: f64 = a.row::<f32>(i1, i2, i3).iter().map(|&v| v as f64).sum();
        // This thread owns dst row r; the output does not overlap the input (supports).
        d.row_mut::<f32>(i1, i2, i3)[0] = sum as f32;
    }
}

/// ggml's MAX(MIN(x, max), min), NaN included (it becomes `max`, or `min` if `max` is NaN).
#[inline(always)]
pub fn clamp(x: f32, min: f32, max: f32) -> f32 {
    let v = if x < max { x } else { max };
    if v > min {
        v
    } else {
        min
    }
}

/// DIV: f32 with ggml's broadcast of src1, whose elements may lie at any stride (a
/// permuted view); src0 and dst with packed rows, as ggml-cpu requires.
pub fn supports_div(node: &Node) -> Result<(), Unsupported> {
    let (a, b, d) = (
        node.src[0].as_ref().ok_or("missing a")?,
        node.src[1].as_ref().ok_or("missing b")?,
        &node.dst,
    );
    need(a.ty == DType::F32 && b.ty == DType::F32 && d.ty == DType::F32, "div: f32 only")?;
    need(a.nb[0] == 4 && d.nb[0] == 4, "div: src0 and dst with packed rows only")?;
    need(a.same_shape(d), "div: dst shape must equal src0")?;
    need(a.can_broadcast_from(b), "div: src1 must broadcast to src0")
}

/// dst = src0 / broadcast(src1). src1 rows packed: the element-wise driver; otherwise each
/// src1 element read at its stride.
pub fn div(node: &Node, ctx: &ThreadCtx) {
    let b = node.src(1);
    if b.nb[0] == 4 {
        return super::elementwise::binary(node, ctx, |x, y| x / y);
    }
    let (a, d) = (node.src(0), &node.dst);
    let (r0, r1) = split_range(d.nrows(), ctx.ith, ctx.nth);
    for r in r0..r1 {
        let (i1, i2, i3) = d.unflatten_row(r);
        let boff = b.row_offset(i1 % b.ne[1], i2 % b.ne[2], i3 % b.ne[3]);
        // This thread owns dst row r. dst may be src0's memory (in-place allocation); src1,
        // not packed, cannot be dst's (supports accepts overlap only in ggml's in-place form).
        let (rd, [sa]) = d.row_io::<f32, 1>((i1, i2, i3), [(a, (i1, i2, i3))]);
        let y = |i: usize| b.read_at::<f32>(boff + (i % b.ne[0]) * b.nb[0]);
        match sa {
            Src::Row(ra) => rd.iter_mut().zip(ra).enumerate().for_each(|(i, (o, &x))| *o = x / y(i)),
            Src::Dst => rd.iter_mut().enumerate().for_each(|(i, o)| *o /= y(i)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exec::Executor;
    use crate::ops::{supports, Op};
    use crate::tensor::TensorRef;
    use rand::{rngs::StdRng, seq::SliceRandom, Rng, SeedableRng};

    /// A tensor of `ty`, shape `ne` and byte strides `nb` over `buf`.
    fn view<T>(ty: DType, ne: [usize; 4], nb: [usize; 4], buf: &mut [T]) -> TensorRef {
        TensorRef { ty, ne, nb, data: buf.as_mut_ptr() as *mut u8, len: std::mem::size_of_val(buf), packed: None }
    }

    fn packed_nb(ne: [usize; 4]) -> [usize; 4] {
        [4, 4 * ne[0], 4 * ne[0] * ne[1], 4 * ne[0] * ne[1] * ne[2]]
    }

    fn run(op: Op, dst: TensorRef, src: &[TensorRef], threads: usize) {
        let mut s = [None; 5];
        for (i, t) in src.iter().enumerate() {
            s[i] = Some(*t);
        }
        let node = Node { op, dst, src: s };
        supports(&node).expect("test node must be supported");
        Executor::new(threads).compute(&[node]).expect("graph failed");
    }

    /// Rows of `n` values stored permuted: logical row (i1, i2) at physical (i2, i1), each
    /// row `pad` floats longer than `n`. Returns the storage and the view's strides.
    fn permuted_rows(n: usize, ne1: usize, ne2: usize, pad: usize, val: impl Fn(usize, usize, usize) -> f32) -> (Vec<f32>, [usize; 4]) {
        let stride = n + pad;
        let mut buf = vec![f32::NAN; stride * ne1 * ne2];
        for i2 in 0..ne2 {
            for i1 in 0..ne1 {
                for i0 in 0..n {
                    buf[(i1 * ne2 + i2) * stride + i0] = val(i0, i1, i2);
                }
            }
        }
        (buf, [4, 4 * stride * ne2, 4 * stride, 4 * stride * ne1 * ne2])
    }

    /// The ids of `x` sorted by value, ties in index order (a stable sort).
    fn stable_ids(x: &[f32], order: SortOrder) -> Vec<i32> {
        let mut ids: Vec<i32> = (0..x.len() as i32).collect();
        ids.sort_by(|&p, &q| {
            let c = x[p as usize].partial_cmp(&x[q as usize]).unwrap();
            if order == SortOrder::Desc { c.reverse() } else { c }
        });
        ids
    }

    #[test]
    fn argsort_gives_the_unique_order_of_distinct_values_on_permuted_views() {
        let mut rng = StdRng::seed_from_u64(11);
        for &n in &[1usize, 2, 7, 16, 17, 33, 60, 128, 129, 1025] {
            for order in [SortOrder::Asc, SortOrder::Desc] {
                let (ne1, ne2) = (3, 5);
                // Distinct values: a shuffled ramp per row, scaled, some negative.
                let mut vals = vec![0f32; n * ne1 * ne2];
                for row in vals.chunks_mut(n) {
                    let mut ramp: Vec<f32> = (0..n).map(|i| (i as f32 - n as f32 / 3.0) * 0.37).collect();
                    ramp.shuffle(&mut rng);
                    row.copy_from_slice(&ramp);
                }
                let at = |i0: usize, i1: usize, i2: usize| vals[(i2 * ne1 + i1) * n + i0];
                let (mut xb, nb) = permuted_rows(n, ne1, ne2, 3, at);
                let ne = [n, ne1, ne2, 1];
                let x = view(DType::F32, ne, nb, &mut xb);
                let mut ob = vec![-1i32; n * ne1 * ne2];
                let o = view(DType::I32, ne, packed_nb(ne), &mut ob);
                run(Op::ArgSort(order), o, &[x], 3);
                for i2 in 0..ne2 {
                    for i1 in 0..ne1 {
                        let r = i2 * ne1 + i1;
                        let want = stable_ids(&vals[r * n..][..n], order);
                        assert_eq!(&ob[r * n..][..n], &want[..], "n {n} {order:?} row ({i1}, {i2})");
                    }
                }
            }
        }
    }

    /// Up to 16 elements libstdc++ runs an insertion sort, which is stable; past that the
    /// order of ties is libstdc++'s own: there the ids must still sort the values.
    #[test]
    fn argsort_with_ties_is_stable_to_16_and_a_sorting_permutation_beyond() {
        let mut rng = StdRng::seed_from_u64(12);
        for &n in &[3usize, 9, 16, 17, 31, 64, 128, 300] {
            for order in [SortOrder::Asc, SortOrder::Desc] {
                let rows = 7;
                let vals: Vec<f32> = (0..n * rows).map(|_| rng.gen_range(0..4) as f32 * 0.5).collect();
                let ne = [n, rows, 1, 1];
                let mut xb = vals.clone();
                let x = view(DType::F32, ne, packed_nb(ne), &mut xb);
                let mut ob = vec![-1i32; n * rows];
                let o = view(DType::I32, ne, packed_nb(ne), &mut ob);
                run(Op::ArgSort(order), o, &[x], 2);
                for r in 0..rows {
                    let (x, ids) = (&vals[r * n..][..n], &ob[r * n..][..n]);
                    if n <= 16 {
                        assert_eq!(ids, &stable_ids(x, order)[..], "n {n} {order:?} row {r}");
                        continue;
                    }
                    let mut seen = ids.to_vec();
                    seen.sort();
                    assert!(seen.iter().enumerate().all(|(i, &v)| v == i as i32), "not a permutation: n {n} row {r}");
                    let got: Vec<f32> = ids.iter().map(|&i| x[i as usize]).collect();
                    let mut want: Vec<f32> = x.to_vec();
                    want.sort_by(|a, b| if order == SortOrder::Desc { b.partial_cmp(a) } else { a.partial_cmp(b) }.unwrap());
                    assert_eq!(got, want, "n {n} {order:?} row {r}");
                }
            }
        }
    }

    /// The heap sort that introsort falls back to past its depth limit (depth 0 forces it),
    /// and NaN, under which the ids must stay a permutation (C++ leaves the order open).
    #[test]
    fn argsort_heap_fallback_sorts_and_nan_keeps_a_permutation() {
        let mut rng = StdRng::seed_from_u64(13);
        for &n in &[17usize, 18, 40, 257] {
            let x: Vec<f32> = (0..n).map(|_| rng.gen_range(-1.0f32..1.0)).collect();
            let less = |p: i32, q: i32| x[p as usize] < x[q as usize];
            let mut ids: Vec<i32> = (0..n as i32).collect();
            introsort_loop(&mut ids, 0, n, 0, &less);
            final_insertion_sort(&mut ids, &less);
            assert_eq!(ids, stable_ids(&x, SortOrder::Asc), "n {n}");
            let mut ids: Vec<i32> = (0..n as i32).collect();
            heap_sort(&mut ids, &less);
            assert_eq!(ids, stable_ids(&x, SortOrder::Asc), "heap, n {n}");

            let mut y = x.clone();
            for i in (0..n).step_by(5) {
                y[i] = f32::NAN;
            }
            for desc in [false, true] {
                let less = |p: i32, q: i32| if desc { y[p as usize] > y[q as usize] } else { y[p as usize] < y[q as usize] };
                let mut ids: Vec<i32> = (0..n as i32).collect();
                std_sort(&mut ids, &less);
                ids.sort();
                assert!(ids.iter().enumerate().all(|(i, &v)| v == i as i32), "NaN: not a permutation, n {n}");
            }
        }
    }

    #[test]
    fn sum_rows_on_permuted_and_sliced_views() {
        let mut rng = StdRng::seed_from_u64(14);
        for &(n, ne1, ne2) in &[(1usize, 4usize, 3usize), (11, 5, 6), (33, 7, 2), (128, 3, 3)] {
            let vals: Vec<f32> = (0..n * ne1 * ne2).map(|_| rng.gen_range(-3.0f32..3.0)).collect();
            let at = |i0: usize, i1: usize, i2: usize| vals[(i2 * ne1 + i1) * n + i0];
            let (mut xb, nb) = permuted_rows(n, ne1, ne2, 2, at);
            let x = view(DType::F32, [n, ne1, ne2, 1], nb, &mut xb);
            // Output rows 2 floats apart: a view too.
            let mut ob = vec![f32::NAN; 2 * ne1 * ne2];
            let o = view(DType::F32, [1, ne1, ne2, 1], [4, 8, 8 * ne1, 8 * ne1 * ne2], &mut ob);
            run(Op::SumRows, o, &[x], 3);
            for i2 in 0..ne2 {
                for i1 in 0..ne1 {
                    let mut s = 0f64;
                    for i0 in 0..n {
                        s += at(i0, i1, i2) as f64;
                    }
                    assert_eq!(ob[2 * (i2 * ne1 + i1)].to_bits(), (s as f32).to_bits(), "n {n} row ({i1}, {i2})");
                    assert!(ob[2 * (i2 * ne1 + i1) + 1].is_nan(), "wrote between rows");
                }
            }
        }
    }

    #[test]
    fn clamp_in_and_out_of_place_with_nan_and_infinities() {
        let mut rng = StdRng::seed_from_u64(15);
        let specials = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 0.0, -0.0, 6.1e-5, 0.5, -0.5];
        for &(min, max) in &[(-0.5f32, 0.5f32), (6.103515625e-5, f32::INFINITY), (f32::NEG_INFINITY, 0.25)] {
            let (n, rows) = (13, 6);
            let mut vals: Vec<f32> = (0..n * rows).map(|_| rng.gen_range(-2.0f32..2.0)).collect();
            vals[..specials.len()].copy_from_slice(&specials);
            let ne = [n, rows, 1, 1];
            let want = |x: f32| {
                if x.is_nan() || x > max {
                    max // ggml's MIN(x, max) picks max for NaN
                } else if x < min {
                    min
                } else {
                    x
                }
            };
            let mut xb = vals.clone();
            let mut ob = vec![0f32; n * rows];
            let x = view(DType::F32, ne, packed_nb(ne), &mut xb);
            let o = view(DType::F32, ne, packed_nb(ne), &mut ob);
            run(Op::Clamp { min, max }, o, &[x], 2);
            run(Op::Clamp { min, max }, x, &[x], 3); // in place, as ggml_clamp_inplace
            for (i, &v) in vals.iter().enumerate() {
                assert_eq!(ob[i].to_bits(), want(v).to_bits(), "clamp({v}, {min}, {max})");
                assert_eq!(xb[i].to_bits(), want(v).to_bits(), "in place: clamp({v}, {min}, {max})");
            }
        }
    }

    /// DIV with every broadcast ggml allows, src1 packed or permuted (elements not adjacent),
    /// in place; and the router's normalisation w / clamp(sum_rows(w)).
    #[test]
    fn div_broadcast_permuted_in_place_and_router_normalisation() {
        let mut rng = StdRng::seed_from_u64(16);
        let ne = [10usize, 6, 4, 2];
        for nr in [[1usize, 1, 1, 1], [2, 1, 1, 1], [1, 2, 1, 1], [1, 1, 2, 2], [2, 2, 2, 2], [5, 3, 4, 1], [10, 6, 4, 2]] {
            let nb_ = [ne[0] / nr[0], ne[1] / nr[1], ne[2] / nr[2], ne[3] / nr[3]];
            let na: usize = ne.iter().product();
            let nbn: usize = nb_.iter().product();
            let avals: Vec<f32> = (0..na).map(|_| rng.gen_range(-2.0f32..2.0)).collect();
            let bvals: Vec<f32> = (0..nbn).map(|_| rng.gen_range(0.5f32..1.5)).collect();
            let bat = |i: [usize; 4]| bvals[((i[3] * nb_[2] + i[2]) * nb_[1] + i[1]) * nb_[0] + i[0]];
            let want = |j: usize| {
                let i = [j % ne[0], j / ne[0] % ne[1], j / (ne[0] * ne[1]) % ne[2], j / (ne[0] * ne[1] * ne[2])];
                avals[j] / bat([i[0] % nb_[0], i[1] % nb_[1], i[2] % nb_[2], i[3] % nb_[3]])
            };
            for permuted in [false, true] {
                // Permuted: stored as [ne1, ne2, ne0, ne3] (test-backend-ops' perm1), viewed back.
                let mut bb = vec![0f32; nbn];
                let bnb = if permuted {
                    let p = [nb_[1], nb_[2], nb_[0], nb_[3]];
                    for i3 in 0..nb_[3] {
                        for i2 in 0..nb_[2] {
                            for i1 in 0..nb_[1] {
                                for i0 in 0..nb_[0] {
                                    bb[((i3 * p[2] + i0) * p[1] + i2) * p[0] + i1] = bat([i0, i1, i2, i3]);
                                }
                            }
                        }
                    }
                    [4 * p[0] * p[1], 4, 4 * p[0], 4 * p[0] * p[1] * p[2]]
                } else {
                    bb.copy_from_slice(&bvals);
                    packed_nb(nb_)
                };
                let b = view(DType::F32, nb_, bnb, &mut bb);
                let mut ab = avals.clone();
                let mut ob = vec![0f32; na];
                let a = view(DType::F32, ne, packed_nb(ne), &mut ab);
                let o = view(DType::F32, ne, packed_nb(ne), &mut ob);
                run(Op::Div, o, &[a, b], 3);
                run(Op::Div, a, &[a, b], 2); // in place
                for j in 0..na {
                    assert_eq!(ob[j].to_bits(), want(j).to_bits(), "nr {nr:?} permuted {permuted} elem {j}");
                    assert_eq!(ab[j].to_bits(), want(j).to_bits(), "in place: nr {nr:?} permuted {permuted} elem {j}");
                }
            }
        }

        // The router: weights [n_used, T] / clamp(sum_rows(weights), 2^-14, inf) [1, T].
        let (n_used, toks) = (8, 7);
        let mut w: Vec<f32> = (0..n_used * toks).map(|_| rng.gen_range(0.0f32..0.3)).collect();
        w[..n_used].fill(0.0); // a token whose weights sum to 0: the clamp keeps it finite
        let wne = [n_used, toks, 1, 1];
        let sne = [1, toks, 1, 1];
        let (mut wb, mut sb, mut cb, mut ob) = (w.clone(), vec![0f32; toks], vec![0f32; toks], vec![0f32; n_used * toks]);
        let tw = view(DType::F32, wne, packed_nb(wne), &mut wb);
        let ts = view(DType::F32, sne, packed_nb(sne), &mut sb);
        let tc = view(DType::F32, sne, packed_nb(sne), &mut cb);
        let to = view(DType::F32, wne, packed_nb(wne), &mut ob);
        let nodes: Vec<Node> = [
            (Op::SumRows, ts, vec![tw]),
            (Op::Clamp { min: 6.103515625e-5, max: f32::INFINITY }, tc, vec![ts]),
            (Op::Div, to, vec![tw, tc]),
        ]
        .into_iter()
        .map(|(op, dst, src)| {
            let mut s = [None; 5];
            for (i, t) in src.into_iter().enumerate() {
                s[i] = Some(t);
            }
            let n = Node { op, dst, src: s };
            supports(&n).expect("router node must be supported");
            n
        })
        .collect();
        Executor::new(2).compute(&nodes).expect("graph failed");
        for t in 0..toks {
            let row = &w[t * n_used..][..n_used];
            let sum = (row.iter().map(|&v| v as f64).sum::<f64>() as f32).max(6.103515625e-5);
            for e in 0..n_used {
                assert_eq!(ob[t * n_used + e].to_bits(), (row[e] / sum).to_bits(), "token {t} expert {e}");
            }
        }
    }

    #[test]
    fn declines_what_it_does_not_read() {
        let ne = [8usize, 3, 1, 1];
        let mut bufs: Vec<Vec<f32>> = (0..5).map(|_| vec![0f32; 64]).collect();
        let [fa, fb, fc, fd, fe] = &mut bufs[..] else { unreachable!() };
        let (f, g) = (view(DType::F32, ne, packed_nb(ne), fa), view(DType::F32, ne, packed_nb(ne), fb));
        let i = view(DType::I32, ne, packed_nb(ne), fc);
        let h = view(DType::F16, ne, [2, 16, 48, 48], fd);
        let strided = TensorRef { nb: [8, 64, 192, 192], ..f };
        let one = view(DType::F32, [1, 3, 1, 1], packed_nb([1, 3, 1, 1]), fe);
        let why = |op, dst, src: &[TensorRef]| {
            let mut s = [None; 5];
            for (k, t) in src.iter().enumerate() {
                s[k] = Some(*t);
            }
            supports(&Node { op, dst, src: s }).err()
        };
        let asc = Op::ArgSort(SortOrder::Asc);
        assert_eq!(why(asc, i, &[f]), None, "the supported form");
        assert_eq!(why(asc, i, &[h]), Some("argsort: f32 in, i32 out only"));
        assert_eq!(why(asc, g, &[f]), Some("argsort: f32 in, i32 out only"));
        assert_eq!(why(asc, i, &[strided]), Some("argsort: packed rows only"));
        assert_eq!(why(Op::SumRows, one, &[f]), None, "the supported form");
        assert_eq!(why(Op::SumRows, g, &[f]), Some("sum_rows: shape mismatch"));
        assert_eq!(why(Op::SumRows, one, &[strided]), Some("sum_rows: packed rows only"));
        assert_eq!(why(Op::Div, g, &[f, one]), None, "the supported form");
        assert_eq!(why(Op::Div, g, &[strided, f]), Some("div: src0 and dst with packed rows only"));
        assert_eq!(why(Op::Div, g, &[f, h]), Some("div: f32 only"));
        assert_eq!(why(Op::Div, g, &[f, TensorRef { ne: [3, 3, 1, 1], ..one }]), Some("div: src1 must broadcast to src0"));
        assert_eq!(why(Op::Clamp { min: 0.0, max: 1.0 }, g, &[strided]), Some("unary ops: f32 with packed rows only"));
    }
}
