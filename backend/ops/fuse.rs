//! Nodes the executor runs as one pass. One pattern today: a mixture-of-experts layer's
//! gate and up (two MUL_MAT_ID nodes over the same activations and ids, weights of one
//! type and shape) followed by the SwiGLU of their outputs, as `build_moe_ffn` builds it.
//! The pass ([`super::matmul::id::gate_up_swiglu`]) writes all three outputs with the bits
//! the nodes give alone; every node stays SMEPilot's, only the work is shared.

use super::{Node, Op};
use crate::tensor::TensorRef;
use crate::threadpool::ThreadCtx;

/// How the executor runs node i.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// On its own (views included).
    Alone,
    /// Heads a gate/up/SwiGLU pass: nodes `silu_in` and `mul_in` (this node is one of them)
    /// give the SwiGLU node `glu` its SiLU input and its multiplier.
    GateUp { silu_in: usize, mul_in: usize, glu: usize },
    /// Computed by the pass node `head` leads.
    InPass { head: usize },
}

/// The step of every node: passes found where the graph allows them.
pub fn steps(nodes: &[Node]) -> Vec<Step> {
    let mut steps = vec![Step::Alone; nodes.len()];
    let next = |i: usize| (i + 1..nodes.len()).find(|&j| !matches!(nodes[j].op, Op::View));
    let mut i = 0;
    while i < nodes.len() {
        let found = next(i).and_then(|j| next(j).map(|k| (j, k))).and_then(|(j, k)| gate_up(nodes, i, j, k).map(|s| (s, j, k)));
        match found {
            Some((step, j, k)) => {
                steps[i] = step;
                steps[j] = Step::InPass { head: i };
                steps[k] = Step::InPass { head: i };
                i = k + 1;
            }
            None => i += 1,
        }
    }
    steps
}

/// The same tensor: type, shape, strides and memory.
fn same(a: &TensorRef, b: &TensorRef) -> bool {
    a.ty == b.ty && a.ne == b.ne && a.nb == b.nb && a.data == b.data
}

/// Nodes i, j (MUL_MAT_ID) and k (the SwiGLU of their outputs) as one pass, if they are.
fn gate_up(nodes: &[Node], i: usize, j: usize, k: usize) -> Option<Step> {
    let (a, b, glu) = (&nodes[i], &nodes[j], &nodes[k]);
    let Op::SwiGlu { swapped } = glu.op else { return None };
    if !matches!(a.op, Op::MulMatId) || !matches!(b.op, Op::MulMatId) {
        return None;
    }
    let (x, g) = (glu.src[0].as_ref()?, glu.src[1].as_ref()?);
    let (x, g) = if swapped { (g, x) } else { (x, g) };
    let (silu_in, mul_in) = if same(x, &a.dst) && same(g, &b.dst) {
        (i, j)
    } else if same(x, &b.dst) && same(g, &a.dst) {
        (j, i)
    } else {
        return None;
    };
    let (wa, wb) = (a.src(0), b.src(0));
    let same_weights = wa.ty == wb.ty && wa.ne == wb.ne && wa.nb == wb.nb && wa.packed.map(|p| p.layout) == wb.packed.map(|p| p.layout);
    let shared_inputs = same(a.src(1), b.src(1)) && same(a.src(2), b.src(2));
    let d = &glu.dst;
    // The SwiGLU's output is written while both outputs are still read, and each output
    // while the shared inputs are: none may overlap another.
    let apart = [&a.dst, &b.dst, a.src(1), a.src(2)].iter().all(|t| !d.overlaps(t))
        && !a.dst.overlaps(&b.dst)
        && [a.src(1), a.src(2)].iter().all(|t| !a.dst.overlaps(t) && !b.dst.overlaps(t));
    let rows = a.dst.ne == b.dst.ne && d.ne == a.dst.ne && d.ty == crate::dtype::DType::F32 && d.rows_contiguous();
    (same_weights && shared_inputs && apart && rows).then_some(Step::GateUp { silu_in, mul_in, glu: k })
}

/// Runs the pass node `head` leads (every thread calls it, as `ops::run`).
pub fn run(nodes: &[Node], step: Step, ctx: &ThreadCtx) {
    match step {
        Step::GateUp { silu_in, mul_in, glu } => super::matmul::id::gate_up_swiglu(&nodes[silu_in], &nodes[mul_in], &nodes[glu].dst, ctx),
        Step::Alone | Step::InPass { .. } => unreachable!("fuse::run takes the head of a pass"),
    }
}
