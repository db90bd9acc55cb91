//! MUL_MAT: dst[n, m] = dot(weight row n, activation row m), with ggml's broadcasting
//! of the weights over dims 2 and 3.
//!
//! Activations are converted once per call into the weight type's activation format
//! (Q8_0, Q8_1, Q8_K, F16, BF16 or F32, as ggml-cpu does), in parallel, into the
//! executor's scratch; then threads take contiguous ranges of output tiles, so each
//! thread streams its own slice of the weights.

// Without a matrix engine for the target, the engine arms of `with_engine!` vanish and their
// inputs go unused.
#![cfg_attr(not(any(target_arch = "x86_64", target_arch = "aarch64", test)), allow(unused_variables, unused_imports, unreachable_code, dead_code))]

mod engine;
mod product;
#[cfg(target_arch = "x86_64")]
pub(super) mod amx;
#[cfg(target_arch = "aarch64")]
pub(super) mod sme;
#[cfg(test)]
pub(super) mod reference;

use super::{need, split_range, Node, Unsupported};
use crate::dtype::DType;
use crate::threadpool::ThreadCtx;
use crate::kernels::packed::{self, PackedRef};
use crate::kernels::quant::scalar_kernels;
use crate::kernels::KernelSet;
use crate::plan::{Mode, Plan};
use product::Product;

/// Weight rows per tile (kept in L1 while the tile's activation rows stream by).
const TILE_N: usize = 16;
/// Activation rows per tile (kept in L2).
const TILE_M: usize = 64;

pub fn supports(node: &Node) -> Result<(), Unsupported> {
    let (w, x, d) = (
        node.src[0].as_ref().ok_or("missing")?,
        node.src[1].as_ref().ok_or("missing")?,
        &node.dst,
    );
    // Every tier's table covers the same types (kernels::registry's tests).
    let k = scalar_kernels(w.ty).ok_or("mul_mat: weight type not handled")?;
    need(
        k.vec_dot.is_some(),
        "mul_mat: weight type has no dot kernel",
    )?;
    need(
        scalar_kernels(k.vec_dot_type).is_some_and(|a| a.from_f32.is_some()),
        "mul_mat: activation format",
    )?;
    need(w.rows_contiguous(), "mul_mat: weight rows must be packed")?;
    need(
        w.ne[0] % w.ty.block_size() == 0,
        "mul_mat: partial block in weight rows",
    )?;
    need(
        x.ty == DType::F32 && x.nb[0] == 4,
        "mul_mat: f32 activations with packed rows",
    )?;
    need(d.ty == DType::F32 && d.nb[0] == 4, "mul_mat: f32 output")?;
    need(x.ne[0] == w.ne[0], "mul_mat: inner dimensions differ")?;
    need(
        d.ne[0] == w.ne[1] && d.ne[1] == x.ne[1] && d.ne[2] == x.ne[2] && d.ne[3] == x.ne[3],
        "mul_mat: output shape",
    )?;
    need(
        x.ne[2] % w.ne[2] == 0 && x.ne[3] % w.ne[3] == 0,
        "mul_mat: broadcast",
    )
}

/// Converted activations: one row per activation row, 64-byte aligned rows.
fn act_layout(node: &Node) -> Option<(DType, usize, usize)> {
    let (w, x) = (node.src(0), node.src(1));
    let vdt = scalar_kernels(w.ty)?.vec_dot_type;
    if vdt == DType::F32 {
        return None; // dotted with the f32 rows in place
    }
    let stride = (vdt.row_bytes(x.ne[0]) + 63) & !63;
    Some((vdt, stride, x.nrows()))
}

/// Activation rows per pass of the packed kernels in the vector path (their largest row
/// block; more rows take several passes over each weight group, which stays in L1).
const PACKED_ROWS_PER_PASS: usize = 16;

/// Weights and activations are plain matrices (what the planner and the matrix path take).
pub fn two_d(node: &Node) -> bool {
    let (w, x) = (node.src(0), node.src(1));
    w.ne[2] == 1 && w.ne[3] == 1 && x.ne[2] == 1 && x.ne[3] == 1
}

/// The packed kernels apply: a packed 2-D weight.
fn packed_2d(node: &Node) -> Option<PackedRef> {
    node.src(0).packed.filter(|_| two_d(node))
}

/// Evaluates `$body` with `$e` bound to the matrix engine of the kernel set `$ks`, or
/// `$none` where the set drives no matrix unit: the one place engines are told apart.
macro_rules! with_engine {
    ($ks:expr, $e:ident => $body:expr, $none:expr) => {
        match $ks.matrix {
            #[cfg(target_arch = "x86_64")]
            Some(crate::kernels::registry::MatrixUnit::Amx) => match amx::Amx::get($ks) {
                Some($e) => $body,
                None => $none,
            },
            #[cfg(target_arch = "aarch64")]
            Some(crate::kernels::registry::MatrixUnit::Sme(_)) => match sme::Sme::get($ks) {
                Some($e) => $body,
                None => $none,
            },
            #[cfg(test)]
            Some(crate::kernels::registry::MatrixUnit::Reference) => {
                let $e = reference::Reference;
                $body
            }
            #[allow(unreachable_patterns)]
            _ => $none,
        }
    };
}

pub(super) mod id;

/// The matrix unit of the kernel set `ks` can run this product.
pub fn matrix_feasible(node: &Node, ks: &KernelSet) -> bool {
    with_engine!(ks, e => engine::plan(&e, node).is_some(), false)
}

/// The output block of the process's matrix unit, where it can run 2-D products of `ty`
/// weights with `k` columns (for planning from a model file, before any node exists).
pub fn matrix_block_for_type(ty: DType, k: usize) -> Option<(usize, usize)> {
    use engine::MatrixEngine;
    let ks = crate::kernels::registry::active();
    let ok = with_engine!(ks, e => e.plan(ty, k, 1).is_some(), false);
    ks.matrix.filter(|_| ok).map(|u| u.block())
}

/// The output block of the kernel set's matrix unit where it can run MUL_MAT_ID's expert
/// products (2-D products of one expert's weights).
pub fn expert_block(node: &Node, ks: &KernelSet) -> Option<(usize, usize)> {
    use engine::MatrixEngine;
    let w = node.src(0);
    let ok = with_engine!(ks, e => e.plan(w.ty, w.ne[0], 1).is_some(), false);
    ks.matrix.filter(|_| ok).map(|u| u.block())
}

/// Whether the process's matrix unit runs products of `ty` on an int8 kernel (else a
/// 16-bit float one): the planner's cost model tells the two apart.
pub fn tile_int8_type(ty: DType) -> bool {
    #[cfg(target_arch = "x86_64")]
    if crate::kernels::registry::active().matrix == Some(crate::kernels::registry::MatrixUnit::Amx) {
        return amx::int8_engine(ty);
    }
    #[cfg(target_arch = "aarch64")]
    if let Some(crate::kernels::registry::MatrixUnit::Sme(u)) = crate::kernels::registry::active().matrix {
        return sme::int8_engine(ty, u.sme2);
    }
    let _ = ty;
    false
}

/// The mode the node runs in: the plan's where it can run (coop needs at least one thread
/// on each side), else the vector path; without a plan, the matrix unit from 16 rows up.
pub fn effective_mode(node: &Node, ks: &KernelSet, plan: &Plan, nth: usize) -> Mode {
    let matrix = matrix_feasible(node, ks);
    match plan.mode {
        None if matrix && node.src(1).ne[1] >= MATRIX_MIN_ROWS => Mode::Matrix,
        Some(Mode::Matrix) if matrix => Mode::Matrix,
        Some(Mode::Coop) if matrix && plan.matrix_threads >= 1 && plan.matrix_threads < nth => Mode::Coop,
        _ => Mode::Vector,
    }
}

/// Fewest activation rows for which the static rule (no planner) picks the matrix unit.
pub const MATRIX_MIN_ROWS: usize = 16;

pub(super) fn vector_scratch(node: &Node) -> usize {
    let acts = act_layout(node).map_or(0, |(_, stride, r)| stride * r);
    if packed_2d(node).is_some() {
        let (rows, nb) = (node.src(1).ne[1], node.src(0).ne[0] / 32);
        return acts + rows * nb * 4;
    }
    acts
}

/// Scratch for any mode the node may run in (the planner decides per call).
pub fn scratch_bytes(node: &Node, nth: usize, ks: &KernelSet) -> usize {
    let v = vector_scratch(node);
    with_engine!(ks, e => engine::plan(&e, node).map_or(v, |p| engine::scratch_bytes(&e, &p, node, nth).max(v)), v)
}

pub fn mul_mat(node: &Node, ctx: &ThreadCtx) {
    match effective_mode(node, ctx.kernels, &ctx.plan, ctx.nth) {
        Mode::Matrix => return with_engine!(ctx.kernels, e => engine::run_matrix(&e, node, ctx), unreachable!("matrix mode without an engine")),
        Mode::Coop => return with_engine!(ctx.kernels, e => engine::run_coop(&e, node, ctx), unreachable!("coop mode without an engine")),
        Mode::Vector => {}
    }
    if packed_2d(node).is_some() || (two_d(node) && node.src(1).ne[1] <= ROWS_PATH_MAX_M && act_layout(node).is_some()) {
        return mul_mat_rows(node, ctx);
    }
    let (w, x, d) = (node.src(0), node.src(1), &node.dst);
    let wk = ctx.kernels.kernels(w.ty).unwrap();
    let vec_dot = wk.vec_dot.unwrap();
    let kdim = w.ne[0];

    // Phase 1: activations into the weight type's activation format, rows split.
    let layout = act_layout(node);
    if layout.is_some() {
        prepare_vector_acts(node, ctx, 0);
        ctx.barrier();
    }
    let act_bytes = layout.map_or(kdim * 4, |(vdt, _, _)| vdt.row_bytes(kdim));
    // Converted before the barrier, read-only now.
    let acts: &[u8] = layout.map_or(&[], |(_, stride, rows)| ctx.shared::<u8>(0, stride * rows));
    let act_row = |m: usize, i12: usize, i13: usize| -> &[u8] {
        match layout {
            Some((_, stride, _)) => &acts[((i13 * x.ne[2] + i12) * x.ne[1] + m) * stride..][..act_bytes],
            None => &x.row::<u8>(m, i12, i13)[..act_bytes],
        }
    };

    // Phase 2: output tiles, contiguous ranges per thread.
    let (n_all, m_all) = (d.ne[0], d.ne[1]);
    let (n_tiles, m_tiles) = (n_all.div_ceil(TILE_N), m_all.div_ceil(TILE_M));
    let batches = d.ne[2] * d.ne[3];
    let (r2, r3) = (x.ne[2] / w.ne[2], x.ne[3] / w.ne[3]);
    let (t0, t1) = split_range(batches * n_tiles * m_tiles, ctx.ith, ctx.nth);
    // F32 weights where ggml-cpu takes its GEMM instead of its dot (its conditions).
    let f32_gemm = ctx.kernels.dense.f32_gemm.filter(|g| {
        w.ty == DType::F32 && x.ty == DType::F32 && x.is_contiguous() && m_all >= g.min_rows && n_all.is_multiple_of(4) && kdim.is_multiple_of(g.lanes)
    });
    let w_bytes = w.row_bytes();
    for t in t0..t1 {
        let mt = t % m_tiles;
        let nt = (t / m_tiles) % n_tiles;
        let b = t / (m_tiles * n_tiles);
        let (i12, i13) = (b % d.ne[2], b / d.ne[2]);
        let (i02, i03) = (i12 / r2, i13 / r3);
        if let Some(g) = f32_gemm {
            let (n_range, m_range) = (nt * TILE_N..((nt + 1) * TILE_N).min(n_all), mt * TILE_M..((mt + 1) * TILE_M).min(m_all));
            // The outputs (n, m) of this tile are this thread's.
            f32_gemm_tile(g.block, kdim, n_range, m_range, |n| &w.row::<u8>(n, i02, i03)[..w_bytes], |m| act_row(m, i12, i13), |n, m, v| {
                d.write_at(d.elem_offset(n, m, i12, i13), v)
            });
            continue;
        }
        if let Some(block) = ctx.kernels.dense.bf16_block_4x3.filter(|_| w.ty == DType::BF16 && layout.is_some()) {
            let (n_range, m_range) = (nt * TILE_N..((nt + 1) * TILE_N).min(n_all), mt * TILE_M..((mt + 1) * TILE_M).min(m_all));
            // The outputs (n, m) of this tile are this thread's.
            bf16_tile_blocked(block, vec_dot, kdim, n_range, m_range, |n| &w.row::<u8>(n, i02, i03)[..w_bytes], |m| act_row(m, i12, i13), |n, m, v| {
                d.write_at(d.elem_offset(n, m, i12, i13), v)
            });
            continue;
        }
        for n in nt * TILE_N..((nt + 1) * TILE_N).min(n_all) {
            let wrow = &w.row::<u8>(n, i02, i03)[..w_bytes];
            for m in mt * TILE_M..((mt + 1) * TILE_M).min(m_all) {
                // The output element (n, m) lies in this thread's tiles only.
                d.write_at(d.elem_offset(n, m, i12, i13), vec_dot(kdim, wrow, act_row(m, i12, i13)));
            }
        }
    }
}

/// One output tile in ggml's F32 GEMM order: 4 weight rows (the tile's rows are whole
/// fours: `f32_gemm`'s condition) x 3 activation rows per `block` call; a last partial
/// group of activation rows repeats its last row (each output's bits are its own).
fn f32_gemm_tile<'a>(block: crate::kernels::quant::F32Block4x3Fn, k: usize, ns: std::ops::Range<usize>, ms: std::ops::Range<usize>, wrow: impl Fn(usize) -> &'a [u8], arow: impl Fn(usize) -> &'a [u8], mut put: impl FnMut(usize, usize, f32)) {
    debug_assert!(ns.len().is_multiple_of(4));
    for n in ns.step_by(4) {
        let w: [&[u8]; 4] = std::array::from_fn(|i| wrow(n + i));
        for m in ms.clone().step_by(3) {
            let rows = (ms.end - m).min(3);
            let a: [&[u8]; 3] = std::array::from_fn(|j| arow(m + j.min(rows - 1)));
            let v = block(k, w, a).expect("rows hold k values in whole chunks (f32_gemm's condition)");
            for (i, vi) in v.iter().enumerate() {
                for (j, &x) in vi.iter().enumerate().take(rows) {
                    put(n + i, m + j, x);
                }
            }
        }
    }
}

/// One output tile of a BF16 product on a tier with a 4 x 3 block dot: 4 weight rows x 3
/// activation rows per `block` call, the edges by the table's single `dot`.
fn bf16_tile_blocked<'a>(block: crate::kernels::quant::Bf16Block4x3Fn, dot: crate::kernels::quant::VecDotFn, k: usize, ns: std::ops::Range<usize>, ms: std::ops::Range<usize>, wrow: impl Fn(usize) -> &'a [u8], arow: impl Fn(usize) -> &'a [u8], mut put: impl FnMut(usize, usize, f32)) {
    const BW: usize = 4;
    const BA: usize = 3;
    let (n_full, m_full) = (ns.start + (ns.len() / BW) * BW, ms.start + (ms.len() / BA) * BA);
    for n in (ns.start..n_full).step_by(BW) {
        let w: [&[u8]; BW] = std::array::from_fn(|i| wrow(n + i));
        for m in (ms.start..m_full).step_by(BA) {
            let a: [&[u8]; BA] = std::array::from_fn(|j| arow(m + j));
            let v = block(k, w, a).expect("rows hold k values");
            for (i, vi) in v.iter().enumerate() {
                for (j, &x) in vi.iter().enumerate() {
                    put(n + i, m + j, x);
                }
            }
        }
        for m in m_full..ms.end {
            for (i, wi) in w.iter().enumerate() {
                put(n + i, m, dot(k, wi, arow(m)));
            }
        }
    }
    for n in n_full..ns.end {
        for m in ms.clone() {
            put(n, m, dot(k, wrow(n), arow(m)));
        }
    }
}

/// 16-row weight groups per chunk of the vector path's work queue: large enough to stream
/// (64 rows of 3072 Q4_K weights are 110 KB), small enough to balance the threads.
const GEMV_CHUNK_GROUPS: usize = packed::DECODE_GROUPS;

/// Activations converted for the vector kernels, in the node's shared scratch at byte
/// `base`: row r at `base + r * stride`, then (for Q8_0 activations) each row's per-block
/// quant sums.
pub(super) struct VectorActs {
    ty: DType,
    base: usize,
    stride: usize,
    bytes: usize,
    m: usize,
    nb: usize,
    with_sums: bool,
}

/// The converted activations, read after the barrier that follows their conversion.
struct ActsView<'c> {
    rows: &'c [u8],
    sums: &'c [i32],
    stride: usize,
    bytes: usize,
    nb: usize,
}

impl VectorActs {
    fn sums_off(&self) -> usize {
        self.base + self.stride * self.m
    }

    /// The format the rows were converted to.
    pub(super) fn ty(&self) -> DType {
        self.ty
    }

    /// The converted rows for an engine that quantizes to the same format (read after the
    /// barrier that follows their conversion).
    pub(super) fn converted<'c>(&self, ctx: &'c ThreadCtx) -> product::ConvertedRows<'c> {
        product::ConvertedRows { ty: self.ty, rows: ctx.shared::<u8>(self.base, self.stride * self.m), stride: self.stride, bytes: self.bytes }
    }

    /// The rows (and sums), which `prepare_vector_acts` filled on every thread before a
    /// barrier this thread has passed: read-only until the node ends.
    fn view<'c>(&self, ctx: &'c ThreadCtx) -> ActsView<'c> {
        ActsView {
            rows: ctx.shared::<u8>(self.base, self.stride * self.m),
            sums: if self.with_sums { ctx.shared::<i32>(self.sums_off(), self.m * self.nb) } else { &[] },
            stride: self.stride,
            bytes: self.bytes,
            nb: self.nb,
        }
    }
}

impl<'c> ActsView<'c> {
    /// Row r and its block sums (empty unless Q8_0).
    #[inline(always)]
    fn row(&self, r: usize) -> (&'c [u8], &'c [i32]) {
        let sums = if self.sums.is_empty() { &[][..] } else { &self.sums[r * self.nb..(r + 1) * self.nb] };
        (&self.rows[r * self.stride..][..self.bytes], sums)
    }
}

/// Converts this thread's share of the activation rows (all of x's rows, flattened) into
/// the weight type's activation format at byte `base` of the shared scratch (Q8_0 with each
/// block's quant sum, Q8_K, F16, BF16 as ggml-cpu does; F32 rows are copied). The caller
/// puts a barrier before reading them.
pub(super) fn prepare_vector_acts(node: &Node, ctx: &ThreadCtx, base: usize) -> VectorActs {
    let (w, x) = (node.src(0), node.src(1));
    // Every row of x (MUL_MAT_ID's activations are 3-D; the 2-D paths' rows are ne[1]).
    let (k, m) = (w.ne[0], x.nrows());
    let (vdt, stride, _) = act_layout(node).expect("F32 weights never reach the row kernels");
    let acts = VectorActs {
        ty: vdt,
        base,
        stride,
        bytes: vdt.row_bytes(k),
        m,
        nb: k / w.ty.block_size(),
        with_sums: vdt == DType::Q8_0 && w.packed.is_some(),
    };
    let bq = vdt.block_bytes();
    let convert = ctx.kernels.kernels(vdt).and_then(|t| t.from_f32).expect("activation format has a converter");
    // Every row of x (all of dims 1..3, flattened: the generic path broadcasts over them).
    let (r0, r1) = split_range(x.nrows(), ctx.ith, ctx.nth);
    // Rows r0 .. r1 and their sums are this thread's (the scratch holds nrows rows of
    // `stride` bytes, then, packed and so 2-D only, m * nb sums: vector_scratch).
    let out = ctx.shared_mut::<u8>(base + r0 * stride, (r1 - r0) * stride);
    let sums = if acts.with_sums { ctx.shared_mut::<i32>(acts.sums_off() + r0 * acts.nb * 4, (r1 - r0) * acts.nb) } else { &mut [][..] };
    for r in r0..r1 {
        let (i1, i2, i3) = x.unflatten_row(r);
        let a = &mut out[(r - r0) * stride..][..acts.bytes];
        convert(&x.row::<f32>(i1, i2, i3)[..k], a);
        if acts.with_sums {
            for (b, s) in sums[(r - r0) * acts.nb..(r - r0 + 1) * acts.nb].iter_mut().enumerate() {
                *s = a[b * bq + 2..(b + 1) * bq].iter().map(|&v| v as i8 as i32).sum();
            }
        }
    }
    acts
}

/// Output columns `r0 .. r1` (weight rows; multiples of 16 for packed weights) for every
/// activation row of `p`, on the vector kernels: packed weights 16 rows at a time with up
/// to 16 activation rows per pass, other types one dot per (row, activation row). `acts`
/// are x's rows converted by `prepare_vector_acts` (None: f32 weights, dotted with x's rows
/// in place). The caller has passed the barrier after the conversion; columns `r0 .. r1`
/// are its alone. `next`: the packed groups the caller runs after these (or nothing), which
/// the GEMV kernels may start fetching as they finish the last chunk here.
pub(super) fn vector_rows(p: &Product, ctx: &ThreadCtx, acts: Option<&VectorActs>, r0: usize, r1: usize, next: &[u8]) {
    let w = &p.w;
    let ks = ctx.kernels;
    let k = w.ne[0];
    let view = acts.map(|a| a.view(ctx));
    if let (Some(pk), Some(view)) = (w.packed, &view) {
        const G: usize = packed::GROUP_ROWS;
        let (g0, ng) = (r0 / G, (r1 - r0) / G);
        let mut out = [[0f32; G]; PACKED_ROWS_PER_PASS * GEMV_CHUNK_GROUPS];
        let mut rows: [&[u8]; PACKED_ROWS_PER_PASS] = [&[]; PACKED_ROWS_PER_PASS];
        let mut sums: [&[i32]; PACKED_ROWS_PER_PASS] = [&[]; PACKED_ROWS_PER_PASS];
        for gc in (0..ng).step_by(GEMV_CHUNK_GROUPS) {
            let gn = (ng - gc).min(GEMV_CHUNK_GROUPS);
            let chunk = pk.groups(k, g0 + gc, gn);
            let after = gc + gn;
            let then = if after < ng { pk.groups(k, g0 + after, (ng - after).min(GEMV_CHUNK_GROUPS)) } else { next };
            for a0 in (0..p.m).step_by(PACKED_ROWS_PER_PASS) {
                let am = (p.m - a0).min(PACKED_ROWS_PER_PASS);
                for i in 0..am {
                    (rows[i], sums[i]) = view.row(p.x_index(a0 + i));
                }
                (ks.packed.gemv)(pk.layout, view.nb, chunk, gn, then, &rows[..am], &sums[..am], &mut out[..gn * am]);
                for gi in 0..gn {
                    let col = (g0 + gc + gi) * G;
                    for (i, o) in out[gi * am..(gi + 1) * am].iter().enumerate() {
                        p.out(a0 + i, col, G).copy_from_slice(o);
                    }
                }
            }
        }
        return;
    }
    let vec_dot = ks.kernels(w.ty).and_then(|t| t.vec_dot).expect("supports() checked the dot");
    let act = |m: usize| -> &[u8] {
        match &view {
            Some(v) => v.row(p.x_index(m)).0,
            None => p.x_bytes(m),
        }
    };
    let r0 = match (ks.dense.bf16_rows_4, &view) {
        (Some(rows4), Some(v)) if w.ty == DType::BF16 => bf16_rows_in_fours(rows4, p, v, r0, r1),
        _ => r0,
    };
    for n in r0..r1 {
        let wrow = &w.row::<u8>(n, 0, 0)[..w.row_bytes()];
        for m in 0..p.m {
            p.out(m, n, 1)[0] = vec_dot(k, wrow, act(m));
        }
    }
}

/// BF16 weight rows `r0 ..` four at a time while four remain (four DRAM streams in decode),
/// with the same bits as four single dots; returns the first row left to the caller.
fn bf16_rows_in_fours(rows4: crate::kernels::quant::Bf16Rows4Fn, p: &Product, acts: &ActsView, mut r0: usize, r1: usize) -> usize {
    let (w, k) = (&p.w, p.k());
    while r0 + 4 <= r1 {
        let rows: [&[u8]; 4] = std::array::from_fn(|i| w.row::<u8>(r0 + i, 0, 0));
        for m in 0..p.m {
            let v = rows4(k, rows, acts.row(p.x_index(m)).0).expect("rows hold k values");
            // Output columns r0 .. r1 are the caller's.
            p.out(m, r0, 4).copy_from_slice(&v);
        }
        r0 += 4;
    }
    r0
}

/// Most activation rows for which unpacked 2-D products take [`mul_mat_rows`]: each weight
/// row is read once for all of them, so decode streams the weights once; larger batches
/// take the tiled loop, which keeps its activation tile in L2.
const ROWS_PATH_MAX_M: usize = 8;

/// A 2-D product on the vector kernels, for packed weights (any M) and for unpacked ones
/// with few activation rows: activations converted once, then 64-row chunks of weight rows
/// (four 16-row groups) from the node's work queue through [`vector_rows`], each chunk read
/// once from memory for all activation rows (packed groups four side by side, BF16 rows
/// four at a time: several DRAM streams in flight).
fn mul_mat_rows(node: &Node, ctx: &ThreadCtx) {
    let acts = prepare_vector_acts(node, ctx, 0);
    debug_assert!(packed_2d(node).is_none_or(|p| act_layout(node).is_some_and(|(vdt, _, _)| vdt == p.layout.act_type())));
    ctx.barrier();
    let (n, chunk) = (node.src(0).ne[1], GEMV_CHUNK_GROUPS * packed::GROUP_ROWS);
    let prod = Product::of_node(node, 0, 0);
    // One chunk of lookahead: the next chunk is taken before this one runs, so the kernels
    // can fetch its start as they finish this one (threads take chunks in turn, so a
    // thread's next chunk is rarely the adjacent one).
    let mut next = ctx.next_chunk() * chunk;
    while next < n {
        let r0 = next;
        next = ctx.next_chunk() * chunk;
        let ahead = if next < n && prod.w.packed.is_some() { prod.weight_bytes(next, (next + chunk).min(n)) } else { &[] };
        vector_rows(&prod, ctx, Some(&acts), r0, (r0 + chunk).min(n), ahead);
    }
}

