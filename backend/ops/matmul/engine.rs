//! The matrix-engine boundary: what a matrix unit (Intel AMX, Arm SME, or the scalar
//! reference engine the tests drive) provides for 2-D products, and the two drivers that
//! run any engine: matrix-only and cooperative (the unit and the vector cores on one work
//! queue, taken from both ends).
//!
//! An engine stages operands in its own layout: activations once per node (row tiles split
//! across threads, into the node's shared scratch), weights one group of row tiles at a time
//! (into the thread's private scratch, or read in place), and runs its kernel on the group
//! against every activation tile. Work is split in groups of [`GROUP_TILES`] weight tiles, so
//! every engine's group is a whole number of the vector kernels' 16-row groups.

use super::super::Node;
use super::product::Product;
use super::{prepare_vector_acts, vector_rows};
use crate::dtype::DType;
use crate::threadpool::ThreadCtx;

/// Weight row tiles per work item: a group stays in L2 while every activation tile streams
/// past it.
pub const GROUP_TILES: usize = 4;

/// A matrix unit's engine for 2-D products (`dst[m][n] = w row n · x row m`).
pub trait MatrixEngine {
    /// How one node runs: the tile kernel chosen for its weight type and where the operands
    /// sit in the scratch.
    type Plan;
    /// The unit's state on a thread that drives it (AMX: the tile configuration; SME:
    /// streaming mode and ZA), with the thread's accumulators; restored when dropped.
    type Session;

    /// Weight rows per tile (a multiple of `packed::GROUP_ROWS`, the vector kernels' group,
    /// so that a coop run's vector side takes whole packed groups).
    const TILE_ROWS: usize;

    /// The plan for a 2-D product of `ty` weights, `k` columns, `m` activation rows; `None`
    /// where the engine cannot run it.
    fn plan(&self, ty: DType, k: usize, m: usize) -> Option<Self::Plan>;

    /// Bytes of the shared activations (a multiple of 64), at the product's `acts_at`.
    fn acts_bytes(&self, plan: &Self::Plan) -> usize;

    /// Bytes of one thread's staging area (a multiple of 64); the product's `threads_at`
    /// starts one per thread. Depends on the weight type and `k` only, not on `m`.
    fn thread_bytes(&self, plan: &Self::Plan) -> usize;

    /// Scratch the plan needs with `nth` threads: the shared activations, then one staging
    /// area per thread.
    fn scratch_bytes(&self, plan: &Self::Plan, nth: usize) -> usize {
        self.acts_bytes(plan) + nth * self.thread_bytes(plan)
    }

    /// This thread's share of the product's activations into the engine's operand layout,
    /// in the node's shared scratch at `p.acts_at`. Every thread calls it; the driver puts
    /// a barrier after.
    fn prepare_acts(&self, plan: &Self::Plan, p: &Product, ctx: &ThreadCtx);

    /// The activation format `prepare_acts` copies from the product's converted rows
    /// (`Product::converted_row`) when they are in it; None: it always converts itself.
    fn reads_converted(&self, _plan: &Self::Plan) -> Option<crate::dtype::DType> {
        None
    }

    /// Enters the unit's state for this thread. A session serves every plan of the same
    /// weight type and `k` (MUL_MAT_ID's experts differ only in `m`).
    fn session(&self, plan: &Self::Plan) -> Self::Session;

    /// Weight group `g` (`GROUP_TILES` tiles of `TILE_ROWS` rows; fewer at the end) staged
    /// and multiplied by every activation tile, written to the product's output rows. The
    /// caller holds a session and has passed the barrier after `prepare_acts`. `next`: the
    /// bytes this thread reads next (the following item's weights), which the engine may
    /// prefetch while this group computes.
    fn weight_group(&self, plan: &Self::Plan, session: &mut Self::Session, p: &Product, ctx: &ThreadCtx, g: usize, next: &[u8]);
}

/// Weight rows per work item of engine `E`.
pub const fn group_rows<E: MatrixEngine>() -> usize {
    assert!(E::TILE_ROWS.is_multiple_of(crate::kernels::packed::GROUP_ROWS));
    GROUP_TILES * E::TILE_ROWS
}

/// The engine's plan for this node: 2-D products only.
pub fn plan<E: MatrixEngine>(e: &E, node: &Node) -> Option<E::Plan> {
    let (w, x) = (node.src(0), node.src(1));
    if !super::two_d(node) {
        return None;
    }
    e.plan(w.ty, w.ne[0], x.ne[1])
}

/// Scratch of a node that may run in either mode (the planner decides per call): room for
/// the matrix-only run, and for a coop run, whose vector side's activations follow the
/// engine's, 64-byte aligned.
pub fn scratch_bytes<E: MatrixEngine>(e: &E, plan: &E::Plan, node: &Node, nth: usize) -> usize {
    let tile = e.scratch_bytes(plan, nth).next_multiple_of(64);
    tile + super::vector_scratch(node)
}

/// Whether this thread drives the unit in a matrix-only run: all threads, or the plan's
/// first `matrix_threads` (one per unit where units are shared: the others would queue on
/// the same unit). The rest only help prepare the activations.
pub(super) fn drives_unit(ctx: &ThreadCtx) -> bool {
    ctx.plan.matrix_threads == 0 || ctx.ith < ctx.plan.matrix_threads
}

/// Matrix-only: activations prepared by every thread, then weight groups from the node's
/// work queue on the threads that drive the unit.
pub fn run_matrix<E: MatrixEngine>(e: &E, node: &Node, ctx: &ThreadCtx) {
    let p = plan(e, node).expect("matrix mode only where the engine has a plan (effective_mode)");
    let prod = Product::of_node(node, 0, e.acts_bytes(&p));
    e.prepare_acts(&p, &prod, ctx);
    ctx.barrier();
    if !drives_unit(ctx) {
        return;
    }
    let groups = node.src(0).ne[1].div_ceil(group_rows::<E>());
    let mut session = e.session(&p);
    // Groups from the queue: threads finish together even when one is slowed.
    loop {
        let g = ctx.next_chunk();
        if g >= groups {
            break;
        }
        e.weight_group(&p, &mut session, &prod, ctx, g, &[]);
    }
}

/// Cooperative: the first `plan.matrix_threads` threads run weight groups on the unit from
/// the front of the node's queue, the others run the vector kernels on groups from the back.
/// Both sides' activations are prepared first; where the two sides meet depends on how fast
/// each runs, not on a fixed ratio.
pub fn run_coop<E: MatrixEngine>(e: &E, node: &Node, ctx: &ThreadCtx) {
    let p = plan(e, node).expect("coop mode only where the engine has a plan (effective_mode)");
    let vbase = e.scratch_bytes(&p, ctx.nth).next_multiple_of(64);
    let n = node.src(0).ne[1];
    let (rows, groups) = (group_rows::<E>(), n.div_ceil(group_rows::<E>()));
    let prod = Product::of_node(node, 0, e.acts_bytes(&p));
    e.prepare_acts(&p, &prod, ctx);
    let acts = prepare_vector_acts(node, ctx, vbase);
    ctx.barrier();
    if ctx.ith < ctx.plan.matrix_threads {
        let mut session = e.session(&p);
        while let Some(g) = ctx.take(groups, false) {
            e.weight_group(&p, &mut session, &prod, ctx, g, &[]);
        }
    } else {
        while let Some(g) = ctx.take(groups, true) {
            vector_rows(&prod, ctx, Some(&acts), g * rows, ((g + 1) * rows).min(n), &[]);
        }
    }
}
