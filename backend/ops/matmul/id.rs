//! MUL_MAT_ID, the mixture-of-experts product: `dst[:, s, t] = as[ids[s, t]] · b[:, s %
//! b.ne[1], t]` (experts `as` = [K, N, n_experts], `b` = [K, n_b, T] with n_b 1 (every slot
//! reads the token's row) or the slot count, `ids` = [slots, T] I32, possibly a strided
//! view).
//!
//! Each row of `b` is converted once into the experts' activation format, in parallel, and
//! shared by every expert that reads it. Every thread then builds the same map of
//! (slot, token) pairs per expert (a few thousand ids: cheaper than a barrier), and the
//! threads take (expert, 64-row chunk) items from the node's one work queue, so experts
//! with many rows and experts with few balance without a barrier between them. A chunk
//! is read once for all of its expert's rows (packed 16-row groups through the tier's
//! packed kernel, up to 16 rows a pass; other types one dot per row). Experts nobody
//! chose are never read; an id outside the experts gives zeros.
//!
//! Where the kernel set drives a matrix unit, experts with many rows (from
//! `MATRIX_MIN_ROWS`, or every expert when the matrix mode is forced) run on it first, one
//! after another with all threads: their rows of b gathered into the scratch, the unit's
//! MUL_MAT on that expert's weights (`engine::run_matrix`), the results scattered back
//! while the next expert's rows are gathered. The other experts then take the vector
//! queue.

// The engines `with_engine!` names.
#[cfg(target_arch = "x86_64")]
use super::amx;
#[cfg(test)]
use super::reference;
#[cfg(target_arch = "aarch64")]
use super::sme;
use super::engine::{self, MatrixEngine};
use super::{act_layout, need, prepare_vector_acts, Node, Unsupported, GEMV_CHUNK_GROUPS, MATRIX_MIN_ROWS, PACKED_ROWS_PER_PASS};
use crate::dtype::DType;
use crate::kernels::packed::{self, PackedRef};
use crate::kernels::quant::scalar_kernels;
use crate::kernels::KernelSet;
use crate::ops::Op;
use crate::plan::Mode;
use crate::tensor::TensorRef;
use crate::threadpool::ThreadCtx;

pub fn supports(node: &Node) -> Result<(), Unsupported> {
    let (w, b, ids, d) = (
        node.src[0].as_ref().ok_or("missing")?,
        node.src[1].as_ref().ok_or("missing")?,
        node.src[2].as_ref().ok_or("missing")?,
        &node.dst,
    );
    let k = scalar_kernels(w.ty).ok_or("mul_mat_id: weight type not handled")?;
    need(k.vec_dot.is_some(), "mul_mat_id: weight type has no dot kernel")?;
    need(scalar_kernels(k.vec_dot_type).is_some_and(|a| a.from_f32.is_some()), "mul_mat_id: activation format")?;
    need(w.rows_contiguous() && w.ne[3] == 1, "mul_mat_id: experts must be contiguous rows, 3-D")?;
    need(w.ne[0] % w.ty.block_size() == 0, "mul_mat_id: partial block in weight rows")?;
    need(b.ty == DType::F32 && b.nb[0] == 4 && b.ne[3] == 1, "mul_mat_id: f32 activations with packed rows, 3-D")?;
    need(ids.ty == DType::I32 && ids.ne[2] == 1 && ids.ne[3] == 1, "mul_mat_id: I32 ids, 2-D")?;
    need(d.ty == DType::F32 && d.nb[0] == 4, "mul_mat_id: f32 output")?;
    need(b.ne[0] == w.ne[0], "mul_mat_id: inner dimensions differ")?;
    need(ids.ne[1] == b.ne[2] && b.ne[1] > 0 && ids.ne[0] % b.ne[1] == 0, "mul_mat_id: ids and activations disagree")?;
    need(d.ne[0] == w.ne[1] && d.ne[1] == ids.ne[0] && d.ne[2] == ids.ne[1] && d.ne[3] == 1, "mul_mat_id: output shape")
}

/// The experts' packed copy (one packed tensor of n_experts x N rows), where each expert
/// starts on a 16-row group.
fn packed_experts(node: &Node) -> Option<PackedRef> {
    let w = node.src(0);
    w.packed.filter(|_| w.ne[1].is_multiple_of(packed::GROUP_ROWS))
}

/// Where the node's scratch holds what: the matrix unit's scratch for one expert of up to
/// `m_cap` rows, that expert's gathered rows of b (f32) and its outputs, then the vector
/// kernels' converted rows of b (and block sums).
struct Layout {
    /// Matrix side: (gathered rows at, outputs at, most rows), None without a unit.
    matrix: Option<(usize, usize, usize)>,
    vector_base: usize,
}

fn align64(x: usize) -> usize {
    x.next_multiple_of(64)
}

/// The weights of expert `e` as a 2-D weight (its rows of the packed copy included).
fn expert(node: &Node, e: usize) -> TensorRef {
    let w = node.src(0);
    let rows = w.ne[1] * w.row_bytes();
    let packed = packed_experts(node).map(|p| {
        let groups = w.ne[1] / packed::GROUP_ROWS;
        let g = p.groups(w.ne[0], e * groups, groups);
        PackedRef { layout: p.layout, data: g.as_ptr(), len: g.len() }
    });
    TensorRef { ty: w.ty, ne: [w.ne[0], w.ne[1], 1, 1], nb: [w.nb[0], w.nb[1], rows, rows], data: w.data.wrapping_add(e * w.nb[2]), len: rows, packed }
}

/// A 2-D MUL_MAT of expert `e`'s weights by `m` rows at `acts`, into `m` rows at `out`
/// (both f32, contiguous rows, 64-byte aligned strides).
fn expert_product(node: &Node, e: usize, m: usize, acts: *mut u8, out: *mut u8) -> Node {
    let (w, k) = (node.src(0), node.src(0).ne[0]);
    let (xs, ds) = (align64(4 * k), align64(4 * w.ne[1]));
    let x = TensorRef { ty: DType::F32, ne: [k, m, 1, 1], nb: [4, xs, xs * m, xs * m], data: acts, len: xs * m, packed: None };
    let d = TensorRef { ty: DType::F32, ne: [w.ne[1], m, 1, 1], nb: [4, ds, ds * m, ds * m], data: out, len: ds * m, packed: None };
    Node { op: Op::MulMat, dst: d, src: [Some(expert(node, e)), Some(x), None, None, None] }
}

fn layout(node: &Node, nth: usize, ks: &KernelSet) -> Layout {
    let (w, ids) = (node.src(0), node.src(2));
    // One expert serves a token at most once unless ids repeat: tokens rows at most (more
    // go to the vector queue).
    let m_cap = ids.ne[1];
    let probe = expert_product(node, 0, m_cap, std::ptr::null_mut(), std::ptr::null_mut());
    let unit = with_engine!(ks, e => engine::plan(&e, &probe).map(|p| e.scratch_bytes(&p, nth)), None);
    match unit {
        Some(bytes) => {
            let gather = align64(bytes);
            let outs = gather + align64(4 * w.ne[0]) * m_cap;
            let vector_base = align64(outs + align64(4 * w.ne[1]) * m_cap);
            Layout { matrix: Some((gather, outs, m_cap)), vector_base }
        }
        None => Layout { matrix: None, vector_base: 0 },
    }
}

/// The matrix side's scratch, then converted rows of `b` and (packed Q8_0 activations) their
/// block sums.
pub fn scratch_bytes(node: &Node, nth: usize, ks: &KernelSet) -> usize {
    let (w, b) = (node.src(0), node.src(1));
    let acts = act_layout(node).map_or(0, |(_, stride, rows)| stride * rows);
    // prepare_vector_acts adds sums for Q8_0 activations of any packed weight.
    let sums = if w.packed.is_some() { b.nrows() * (w.ne[0] / 32) * 4 } else { 0 };
    layout(node, nth, ks).vector_base + acts + sums
}

/// The (slot, token) pairs each expert serves, in token order: `order[start[e]..start[e +
/// 1]]`; pairs with an id outside the experts are listed in `invalid`.
struct RowMap {
    start: Vec<usize>,
    order: Vec<(u32, u32)>,
    invalid: Vec<(u32, u32)>,
}

fn row_map(node: &Node) -> RowMap {
    let (n_exp, ids) = (node.src(0).ne[2], node.src(2));
    let (slots, tokens) = (ids.ne[0], ids.ne[1]);
    let id = |s: usize, t: usize| ids.read_at::<i32>(ids.elem_offset(s, t, 0, 0));
    let mut count = vec![0usize; n_exp + 1];
    let mut invalid = Vec::new();
    for t in 0..tokens {
        for s in 0..slots {
            match usize::try_from(id(s, t)) {
                Ok(e) if e < n_exp => count[e + 1] += 1,
                _ => invalid.push((s as u32, t as u32)),
            }
        }
    }
    for e in 0..n_exp {
        count[e + 1] += count[e];
    }
    let mut fill = count.clone();
    let mut order = vec![(0u32, 0u32); count[n_exp]];
    for t in 0..tokens {
        for s in 0..slots {
            if let Ok(e) = usize::try_from(id(s, t)) {
                if e < n_exp {
                    order[fill[e]] = (s as u32, t as u32);
                    fill[e] += 1;
                }
            }
        }
    }
    RowMap { start: count, order, invalid }
}

pub fn mul_mat_id(node: &Node, ctx: &ThreadCtx) {
    let (w, b, d) = (node.src(0), node.src(1), &node.dst);
    let (k, n) = (w.ne[0], w.ne[1]);
    let map = row_map(node);
    let lay = layout(node, ctx.nth, ctx.kernels);
    // Zeros for ids outside the experts (ggml asserts on them): rows split across threads.
    let (i0, i1) = super::super::split_range(map.invalid.len(), ctx.ith, ctx.nth);
    for &(s, t) in &map.invalid[i0..i1] {
        // This pair's output row is this thread's alone.
        d.row_range_mut::<f32>(s as usize, t as usize, 0, 0, n).fill(0.0);
    }
    let rows_of = |e: usize| map.start[e + 1] - map.start[e];
    let min_rows = match ctx.plan.mode {
        Some(Mode::Vector) => usize::MAX,
        Some(_) => 1,
        None => MATRIX_MIN_ROWS,
    };
    let on_unit: Vec<usize> = match lay.matrix {
        Some((_, _, m_cap)) => (0..w.ne[2]).filter(|&e| (min_rows..=m_cap).contains(&rows_of(e))).collect(),
        None => Vec::new(),
    };
    if let Some((gather, outs, _)) = lay.matrix.filter(|_| !on_unit.is_empty()) {
        let (xs, ds) = (align64(4 * k), align64(4 * n));
        with_engine!(ctx.kernels, eng => {
            for (i, &e) in on_unit.iter().enumerate() {
                let pairs = &map.order[map.start[e]..map.start[e + 1]];
                // This expert's rows of b, split across threads (each its own rows), while
                // the previous expert's outputs, final since the last barrier, go out.
                let (r0, r1) = super::super::split_range(pairs.len(), ctx.ith, ctx.nth);
                for (j, &(s, t)) in pairs.iter().enumerate().take(r1).skip(r0) {
                    let src = &b.row::<f32>(s as usize % b.ne[1], t as usize, 0)[..k];
                    ctx.shared_mut::<f32>(gather + j * xs, k).copy_from_slice(src);
                }
                if i > 0 {
                    scatter(node, ctx, &map, on_unit[i - 1], outs);
                }
                ctx.barrier();
                if ctx.ith == 0 {
                    ctx.restart_queue();
                }
                ctx.barrier();
                let m = pairs.len();
                let sub = expert_product(node, e, m, ctx.shared_region(gather, xs * m), ctx.shared_region(outs, ds * m));
                engine::run_matrix(&eng, &sub, ctx);
                ctx.barrier();
            }
            scatter(node, ctx, &map, *on_unit.last().expect("not empty"), outs);
        }, unreachable!("a matrix layout without an engine"));
        ctx.barrier();
        if ctx.ith == 0 {
            ctx.restart_queue();
        }
    }
    let layout = act_layout(node);
    let acts = layout.map(|_| prepare_vector_acts(node, ctx, lay.vector_base));
    ctx.barrier();
    let active: Vec<usize> = (0..w.ne[2]).filter(|&e| rows_of(e) > 0 && !on_unit.contains(&e)).collect();
    let chunk = GEMV_CHUNK_GROUPS * packed::GROUP_ROWS;
    let chunks = n.div_ceil(chunk);
    let view = acts.as_ref().map(|a| a.view(ctx));
    let b_row = |s: u32, t: u32| s as usize % b.ne[1] + b.ne[1] * t as usize;
    let ks = ctx.kernels;
    loop {
        let item = ctx.next_chunk();
        if item >= active.len() * chunks {
            break;
        }
        let e = active[item / chunks];
        let (r0, r1) = ((item % chunks) * chunk, ((item % chunks + 1) * chunk).min(n));
        let pairs = &map.order[map.start[e]..map.start[e + 1]];
        // Columns r0 .. r1 of this expert's output rows are this item's alone.
        if let (Some(p), Some(view)) = (packed_experts(node), &view) {
            const G: usize = packed::GROUP_ROWS;
            let nb = k / w.ty.block_size();
            let (g0, gn) = ((e * n + r0) / G, (r1 - r0) / G);
            let groups = p.groups(k, g0, gn);
            let mut out = [[0f32; G]; PACKED_ROWS_PER_PASS * GEMV_CHUNK_GROUPS];
            let mut rows: [&[u8]; PACKED_ROWS_PER_PASS] = [&[]; PACKED_ROWS_PER_PASS];
            let mut sums: [&[i32]; PACKED_ROWS_PER_PASS] = [&[]; PACKED_ROWS_PER_PASS];
            for pass in pairs.chunks(PACKED_ROWS_PER_PASS) {
                for (i, &(s, t)) in pass.iter().enumerate() {
                    (rows[i], sums[i]) = view.row(b_row(s, t));
                }
                let am = pass.len();
                (ks.packed.gemv)(p.layout, nb, groups, gn, &rows[..am], &sums[..am], &mut out[..gn * am]);
                for gi in 0..gn {
                    for (i, &(s, t)) in pass.iter().enumerate() {
                        d.row_range_mut::<f32>(s as usize, t as usize, 0, r0 + gi * G, G).copy_from_slice(&out[gi * am + i]);
                    }
                }
            }
            continue;
        }
        let vec_dot = ks.kernels(w.ty).and_then(|t| t.vec_dot).expect("supports() checked the dot");
        let act_bytes = layout.map_or(4 * k, |(vdt, _, _)| vdt.row_bytes(k));
        for r in r0..r1 {
            let wrow = &w.row::<u8>(r, e, 0)[..w.row_bytes()];
            for &(s, t) in pairs {
                let a = match &view {
                    Some(v) => v.row(b_row(s, t)).0,
                    None => &b.row::<u8>(s as usize % b.ne[1], t as usize, 0)[..act_bytes],
                };
                d.write_at(d.elem_offset(r, s as usize, t as usize, 0), vec_dot(k, wrow, a));
            }
        }
    }
}

/// Expert `e`'s outputs (at `outs` of the scratch, its pairs' order) into their rows of
/// dst, split across threads.
fn scatter(node: &Node, ctx: &ThreadCtx, map: &RowMap, e: usize, outs: usize) {
    let (d, n) = (&node.dst, node.src(0).ne[1]);
    let ds = align64(4 * n);
    let pairs = &map.order[map.start[e]..map.start[e + 1]];
    let (r0, r1) = super::super::split_range(pairs.len(), ctx.ith, ctx.nth);
    for (j, &(s, t)) in pairs.iter().enumerate().take(r1).skip(r0) {
        // Written by the unit before the barrier this thread passed; this pair's output
        // row is this thread's alone.
        d.row_range_mut::<f32>(s as usize, t as usize, 0, 0, n).copy_from_slice(ctx.shared::<f32>(outs + j * ds, n));
    }
}
