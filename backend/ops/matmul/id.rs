//! MUL_MAT_ID, the mixture-of-experts product: `dst[:, s, t] = as[ids[s, t]] · b[:, s %
//! b.ne[1], t]` (experts `as` = [K, N, n_experts], `b` = [K, n_b, T] with n_b 1 (every slot
//! reads the token's row) or the slot count, `ids` = [slots, T] I32, possibly a strided
//! view).
//!
//! Every thread builds the same map of (slot, token) pairs per expert (a few thousand ids:
//! cheaper than a barrier). Each expert is then a 2-D product over its pairs' rows
//! ([`Product::of_pairs`]): rows of b read in place, outputs written to their rows of dst.
//! Experts with at least the plan's row count (the planner's crossover for this shape
//! between one matrix-unit driver and one vector thread) run on the matrix engine, the
//! others on the vector kernels, all from one work queue of (expert, weight group) items:
//! b's rows are converted once for the vector kernels, then, after a barrier, copied into
//! each unit expert's engine layout (converted again only where the engine's format
//! differs) before a second barrier; experts with many rows
//! and experts with few balance without a barrier between them. Threads that do not drive
//! the unit (a shared unit) take items from the back and run them on the vector kernels.
//! Unit experts whose activations exceed the scratch's budget run in several rounds.
//! Experts nobody chose are never read; an id outside the experts gives zeros.
//!
//! Gate and up (two MUL_MAT_ID nodes over the same b and ids, with weights of one type and
//! shape) and the SwiGLU of their outputs run as one pass ([`gate_up_swiglu`]): one row
//! map, b's rows converted once, each unit expert's activations staged once for both, and
//! every work item computes its columns of gate and of up, then of the SwiGLU, while they
//! are in cache. Gate's and up's outputs are still written; every output holds the bits
//! the three nodes give alone.

// The engines `with_engine!` names.
#[cfg(target_arch = "x86_64")]
use super::amx;
#[cfg(test)]
use super::reference;
#[cfg(target_arch = "aarch64")]
use super::sme;
use super::engine::{self, MatrixEngine};
use super::product::Product;
use super::{act_layout, need, prepare_vector_acts, vector_rows, Node, Unsupported, VectorActs, GEMV_CHUNK_GROUPS, MATRIX_MIN_ROWS};
use crate::dtype::DType;
use crate::kernels::packed::{self, PackedRef};
use crate::kernels::quant::scalar_kernels;
use crate::kernels::KernelSet;
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

/// The weights of expert `e` as a 2-D weight (its rows of the packed copy included).
fn expert(node: &Node, e: usize) -> TensorRef {
    let w = node.src(0);
    // The expert's rows span nb[1] apart (a view may space them wider than a row).
    let rows = (w.ne[1] - 1) * w.nb[1] + w.row_bytes();
    let packed = packed_experts(node).map(|p| {
        let groups = w.ne[1] / packed::GROUP_ROWS;
        let g = p.groups(w.ne[0], e * groups, groups);
        PackedRef { layout: p.layout, data: g.as_ptr(), len: g.len() }
    });
    TensorRef { ty: w.ty, ne: [w.ne[0], w.ne[1], 1, 1], nb: [w.nb[0], w.nb[1], rows, rows], data: w.data.wrapping_add(e * w.nb[2]), len: rows, packed }
}

/// Where the node's scratch holds what: the matrix engine's activations for one round of
/// unit experts (`budget` bytes from 0), its thread areas, then the vector kernels'
/// converted rows of b (and block sums).
struct Layout {
    unit: Option<UnitLayout>,
    vector_base: usize,
}

#[derive(Clone, Copy)]
struct UnitLayout {
    budget: usize,
    thread_bytes: usize,
}

fn align64(x: usize) -> usize {
    x.next_multiple_of(64)
}

fn layout(node: &Node, nth: usize, ks: &KernelSet) -> Layout {
    let (w, ids) = (node.src(0), node.src(2));
    // Room for twice the pairs' rows: the experts of a round round their rows up to the
    // engine's tiles; an expert never has more rows than that, so each fits alone.
    let rows = 2 * ids.ne[0] * ids.ne[1];
    let unit = with_engine!(ks, e => e.plan(w.ty, w.ne[0], rows).map(|p| UnitLayout { budget: align64(e.acts_bytes(&p)), thread_bytes: e.thread_bytes(&p) }), None);
    let vector_base = unit.map_or(0, |u| u.budget + nth * u.thread_bytes);
    Layout { unit, vector_base }
}

/// The unit's scratch, then converted rows of `b` and (packed Q8_0 activations) their
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

impl RowMap {
    fn pairs(&self, e: usize) -> &[(u32, u32)] {
        &self.order[self.start[e]..self.start[e + 1]]
    }
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

/// The fewest rows for which an expert runs on the matrix unit: the plan's crossover, every
/// expert when the matrix or coop mode is forced, none in the vector mode; without a
/// planner, the static rule.
fn unit_min_rows(ctx: &ThreadCtx) -> usize {
    match (ctx.plan.mode, ctx.plan.expert_min_rows) {
        (Some(Mode::Vector), _) => usize::MAX,
        (Some(_), 0) => 1,
        (Some(_), r) => r,
        (None, _) => MATRIX_MIN_ROWS,
    }
}

/// What one pass computes: one MUL_MAT_ID node's products, or two nodes' (gate and up:
/// the same b and ids, weights of one type and shape) and then their SwiGLU.
struct Pass<'a> {
    nodes: &'a [&'a Node],
    /// The SwiGLU's output: SiLU of `nodes[0]`'s output times `nodes[1]`'s.
    glu: Option<&'a TensorRef>,
}

impl Pass<'_> {
    /// Rows `pairs`, columns `c0 .. c1` of the SwiGLU, from the two products' outputs,
    /// which this thread has just written (the columns are its alone).
    fn glu_rows(&self, ctx: &ThreadCtx, pairs: &[(u32, u32)], c0: usize, c1: usize) {
        let Some(out) = self.glu else { return };
        let (x, g) = (&self.nodes[0].dst, &self.nodes[1].dst);
        fn cols(t: &TensorRef, s: usize, tok: usize, c0: usize, c1: usize) -> &[f32] {
            t.bytes_at::<f32>(t.row_offset(s, tok, 0) + 4 * c0, c1 - c0)
        }
        for &(s, t) in pairs {
            let (s, t) = (s as usize, t as usize);
            // These columns of the inputs are final (written by this thread above) and the
            // output overlaps neither input (gate_up_swiglu's contract).
            (ctx.kernels.vmath.silu_mul)(cols(x, s, t, c0, c1), Some(cols(g, s, t, c0, c1)), out.row_range_mut::<f32>(s, t, 0, c0, c1 - c0));
        }
    }
}

pub fn mul_mat_id(node: &Node, ctx: &ThreadCtx) {
    run_pass(&Pass { nodes: &[node], glu: None }, ctx);
}

/// Gate, up and their SwiGLU as one pass: `silu_in` and `mul_in` are the MUL_MAT_ID nodes
/// whose outputs are the SwiGLU's SiLU input and multiplier, `glu_out` its output.
///
/// # Contract
/// Both nodes pass `supports`, read the same b and ids, and have weights of one type and
/// shape; `glu_out` has their output shape, f32 rows, and overlaps neither output
/// ([`super::super::fuse`] checks all of it).
pub fn gate_up_swiglu(silu_in: &Node, mul_in: &Node, glu_out: &TensorRef, ctx: &ThreadCtx) {
    run_pass(&Pass { nodes: &[silu_in, mul_in], glu: Some(glu_out) }, ctx);
}

fn run_pass(pass: &Pass, ctx: &ThreadCtx) {
    let node = pass.nodes[0];
    let n = node.src(0).ne[1];
    let map = row_map(node);
    let lay = layout(node, ctx.nth, ctx.kernels);
    // Zeros for ids outside the experts (ggml asserts on them): rows split across threads.
    let (i0, i1) = super::super::split_range(map.invalid.len(), ctx.ith, ctx.nth);
    for &(s, t) in &map.invalid[i0..i1] {
        for nd in pass.nodes {
            // This pair's output rows are this thread's alone.
            nd.dst.row_range_mut::<f32>(s as usize, t as usize, 0, 0, n).fill(0.0);
        }
    }
    pass.glu_rows(ctx, &map.invalid[i0..i1], 0, n);
    let acts = act_layout(node).map(|_| prepare_vector_acts(node, ctx, lay.vector_base));
    let min_rows = unit_min_rows(ctx);
    let unit = lay.unit.filter(|_| min_rows != usize::MAX);
    match unit {
        Some(u) => with_engine!(ctx.kernels, eng => run(pass, ctx, &map, acts.as_ref(), Some((&eng, u, min_rows))), run::<NoEngine>(pass, ctx, &map, acts.as_ref(), None)),
        None => run::<NoEngine>(pass, ctx, &map, acts.as_ref(), None),
    }
}

/// Stands in for the engine type where no matrix engine runs (its methods are never called).
enum NoEngine {}

impl MatrixEngine for NoEngine {
    type Plan = ();
    type Session = ();
    const TILE_ROWS: usize = packed::GROUP_ROWS;
    fn plan(&self, _: DType, _: usize, _: usize) -> Option<()> {
        match *self {}
    }
    fn acts_bytes(&self, _: &()) -> usize {
        match *self {}
    }
    fn thread_bytes(&self, _: &()) -> usize {
        match *self {}
    }
    fn prepare_acts(&self, _: &(), _: &Product, _: &ThreadCtx) {
        match *self {}
    }
    fn session(&self, _: &()) {
        match *self {}
    }
    fn weight_group(&self, _: &(), _: &mut (), _: &Product, _: &ThreadCtx, _: usize, _: &[u8]) {
        match *self {}
    }
}

/// The experts' products, after `acts` (b's rows for the vector kernels) were converted on
/// every thread: with `unit`, the experts with at least `min_rows` rows on its engine, in
/// rounds that fit the budget, the last round's queue also holding the vector experts.
fn run<E: MatrixEngine>(pass: &Pass, ctx: &ThreadCtx, map: &RowMap, acts: Option<&VectorActs>, unit: Option<(&E, UnitLayout, usize)>) {
    let node = pass.nodes[0];
    let (w, b) = (node.src(0), node.src(1));
    let (k, n, n_exp) = (w.ne[0], w.ne[1], w.ne[2]);
    // Expert e's product of pass node h (every node of a pass reads the same rows of b).
    let product = |h: usize, e: usize, acts_at: usize, threads_at: usize| {
        let nd = pass.nodes[h];
        Product::of_pairs(expert(nd, e), b, &nd.dst, map.pairs(e), acts_at, threads_at)
    };
    let nodes = pass.nodes.len();
    debug_assert!((1..=2).contains(&nodes), "a pass has one or two nodes");

    let active = (0..n_exp).filter(|&e| !map.pairs(e).is_empty());
    // Unit experts with their plans, and their rounds (consecutive runs within the budget).
    let mut on_unit: Vec<(usize, E::Plan, usize)> = Vec::new();
    let mut rounds: Vec<std::ops::Range<usize>> = Vec::new();
    let mut vector: Vec<usize> = Vec::new();
    if let Some((eng, u, min_rows)) = &unit {
        let mut used = 0;
        for e in active.clone() {
            let m = map.pairs(e).len();
            match eng.plan(w.ty, k, m).filter(|_| m >= *min_rows) {
                Some(p) => {
                    let bytes = align64(eng.acts_bytes(&p));
                    assert!(eng.thread_bytes(&p) <= u.thread_bytes && bytes <= u.budget, "SMEPilot: mul_mat_id expert of {m} rows past the scratch reserved");
                    if rounds.is_empty() || used + bytes > u.budget {
                        rounds.push(on_unit.len()..on_unit.len());
                        used = 0;
                    }
                    on_unit.push((e, p, used));
                    rounds.last_mut().expect("pushed").end += 1;
                    used += bytes;
                }
                None => vector.push(e),
            }
        }
    } else {
        vector.extend(active);
    }
    if rounds.is_empty() {
        rounds.push(0..0);
    }
    // The unit's experts copy b's rows as the vector kernels converted them (the same
    // quantizer) where the engine reads that format, once every thread's share is written
    // (every thread makes the same plan, so all take the barrier or none).
    let reads = |a: &VectorActs| unit.as_ref().is_some_and(|(eng, _, _)| on_unit.iter().any(|(_, p, _)| eng.reads_converted(p) == Some(a.ty())));
    let converted = acts.filter(|a| reads(a)).map(|a| {
        ctx.barrier();
        a.converted(ctx)
    });
    if ctx.ith == 0 {
        ctx.report(((on_unit.len() as u64) << 32) | vector.len() as u64);
    }
    let group_rows = match unit {
        Some(_) => engine::group_rows::<E>(),
        None => GEMV_CHUNK_GROUPS * packed::GROUP_ROWS,
    };
    let vchunk = GEMV_CHUNK_GROUPS * packed::GROUP_ROWS;
    let (groups, vchunks) = (n.div_ceil(group_rows), n.div_ceil(vchunk));
    let drives = engine::drives_unit(ctx);
    let threads_at = unit.as_ref().map_or(0, |(_, u, _)| u.budget);
    for (ri, round) in rounds.iter().enumerate() {
        let last = ri + 1 == rounds.len();
        let experts = &on_unit[round.clone()];
        // Expert j's product of node h at j * nodes + h; the nodes share the activations.
        let prods: Vec<Product> = experts.iter().flat_map(|(e, _, at)| (0..nodes).map(move |h| product(h, *e, *at, threads_at).with_converted(converted))).collect();
        if ri > 0 {
            // Every item of the previous round is done (the caller's barrier): its
            // activations can be overwritten and its queue started again.
            if ctx.ith == 0 {
                ctx.restart_queue();
            }
        }
        if let Some((eng, _, _)) = &unit {
            for ((_, p, _), prod) in experts.iter().zip(prods.iter().step_by(nodes)) {
                eng.prepare_acts(p, prod, ctx);
            }
        }
        ctx.barrier();
        let unit_items = experts.len() * groups;
        let items = unit_items + if last { vector.len() * vchunks } else { 0 };
        let mut session = None;
        // One item of lookahead: the next item is taken before this one runs, and the unit
        // prefetches its weights while it computes this one (an expert's weights come from
        // memory once per node, for a few dozen rows: the stream would stall the staging).
        let mut next = ctx.take(items, !drives);
        let cols = |g: usize| (g * group_rows, ((g + 1) * group_rows).min(n));
        while let Some(i) = next {
            next = ctx.take(items, !drives);
            let upcoming = |h: usize| match next.filter(|&j| j < unit_items) {
                Some(j) => {
                    let (c0, c1) = cols(j % groups);
                    prods[(j / groups) * nodes + h].weight_bytes(c0, c1)
                }
                None => &[],
            };
            if i < unit_items {
                let (j, g) = (i / groups, i % groups);
                let (c0, c1) = cols(g);
                for (h, prod) in prods[j * nodes..(j + 1) * nodes].iter().enumerate() {
                    match (&unit, drives) {
                        (Some((eng, _, _)), true) => {
                            let s = session.get_or_insert_with(|| eng.session(&experts[j].1));
                            eng.weight_group(&experts[j].1, s, prod, ctx, g, upcoming(h));
                        }
                        // A thread that does not drive the unit runs the group on the vector
                        // kernels (its columns are this item's alone either way).
                        _ => vector_rows(prod, ctx, acts, c0, c1, &[]),
                    }
                }
                pass.glu_rows(ctx, map.pairs(experts[j].0), c0, c1);
            } else {
                let vitem = |i: usize| {
                    let (e, c) = (vector[i / vchunks], i % vchunks);
                    (e, c * vchunk, ((c + 1) * vchunk).min(n))
                };
                let (e, c0, c1) = vitem(i - unit_items);
                // The weights this thread reads after each node's chunk: the next node's same
                // chunk, then the next item's (the kernels start fetching them as they finish).
                let following = next.filter(|&j| j >= unit_items).map(|j| vitem(j - unit_items));
                // A pass has one or two nodes.
                let prods: [Option<Product>; 2] = std::array::from_fn(|h| (h < nodes).then(|| product(h, e, 0, 0)));
                let next_prod = following.map(|(e2, _, _)| product(0, e2, 0, 0));
                for (h, prod) in prods.iter().flatten().enumerate() {
                    let ahead = match (prods.get(h + 1).and_then(|p| p.as_ref()), &next_prod, following) {
                        (Some(p2), _, _) => p2.weight_bytes(c0, c1),
                        (None, Some(p2), Some((_, d0, d1))) => p2.weight_bytes(d0, d1),
                        _ => &[],
                    };
                    vector_rows(prod, ctx, acts, c0, c1, if prod.w.packed.is_some() { ahead } else { &[] });
                }
                pass.glu_rows(ctx, map.pairs(e), c0, c1);
            }
        }
        if !last {
            ctx.barrier();
        }
    }
}
