//! The operators SMEPilot claims: their parameters, the rules for what is supported,
//! the scratch each needs, and dispatch to the implementations.

pub(crate) mod attention;
mod copy;
mod elementwise;
pub mod fuse;
mod matmul;
mod norm;
mod rope;
mod router;
mod softmax;

use super::dtype::DType;
use super::threadpool::ThreadCtx;
use super::tensor::TensorRef;

pub use matmul::{matrix_block_for_type, tile_int8_type};
pub use rope::RopeParams;
pub use router::SortOrder;

/// One graph operator with its decoded parameters.
#[derive(Clone, Copy, Debug)]
pub enum Op {
    /// RESHAPE / VIEW / PERMUTE / TRANSPOSE / NONE: metadata only, no work.
    View,
    GetRows,
    SetRows,
    /// CPY, CONT and DUP: element-wise copy with type conversion.
    Copy,
    Add,
    Mul,
    Div,
    Scale {
        scale: f32,
        bias: f32,
    },
    RmsNorm {
        eps: f32,
    },
    Silu,
    Clamp {
        min: f32,
        max: f32,
    },
    /// The ids that sort each row (i32 out).
    ArgSort(SortOrder),
    SumRows,
    SwiGlu {
        swapped: bool,
    },
    Rope(RopeParams),
    SoftMax {
        scale: f32,
        max_bias: f32,
    },
    MulMat,
    /// MUL_MAT_ID: the experts' product of a mixture-of-experts layer.
    MulMatId,
    FlashAttn {
        scale: f32,
        max_bias: f32,
        softcap: f32,
    },
}

impl Op {
    /// The op's name as ggml spells it (CPY, CONT and DUP all read CPY).
    pub fn name(&self) -> &'static str {
        match self {
            Op::View => "VIEW",
            Op::GetRows => "GET_ROWS",
            Op::SetRows => "SET_ROWS",
            Op::Copy => "CPY",
            Op::Add => "ADD",
            Op::Mul => "MUL",
            Op::Div => "DIV",
            Op::Scale { .. } => "SCALE",
            Op::RmsNorm { .. } => "RMS_NORM",
            Op::Silu => "SILU",
            Op::Clamp { .. } => "CLAMP",
            Op::ArgSort(_) => "ARGSORT",
            Op::SumRows => "SUM_ROWS",
            Op::SwiGlu { .. } => "SWIGLU",
            Op::Rope(_) => "ROPE",
            Op::SoftMax { .. } => "SOFT_MAX",
            Op::MulMat => "MUL_MAT",
            Op::MulMatId => "MUL_MAT_ID",
            Op::FlashAttn { .. } => "FLASH_ATTN_EXT",
        }
    }
}

/// A node: operator, output and inputs (ggml's `src[]`, absent ones `None`).
#[derive(Clone, Copy, Debug)]
pub struct Node {
    pub op: Op,
    pub dst: TensorRef,
    pub src: [Option<TensorRef>; 5],
}

impl Node {
    /// The node `op` writing `dst` from `src` (at most five inputs, in order), checked
    /// against [`supports`]: for tests and benchmarks, which build their own graphs.
    pub fn checked(op: Op, dst: TensorRef, src: &[TensorRef]) -> Result<Node, Unsupported> {
        assert!(src.len() <= 5, "a node has at most five inputs");
        let mut s = [None; 5];
        for (i, t) in src.iter().enumerate() {
            s[i] = Some(*t);
        }
        let n = Node { op, dst, src: s };
        supports(&n)?;
        Ok(n)
    }

    /// Input `i`, which `supports` has checked to be present.
    #[inline(always)]
    pub fn src(&self, i: usize) -> &TensorRef {
        self.src[i].as_ref().expect("operand checked by supports()")
    }
}

/// Why a node is not claimed; the scheduler then runs it elsewhere.
pub type Unsupported = &'static str;

fn need(cond: bool, why: Unsupported) -> Result<(), Unsupported> {
    if cond {
        Ok(())
    } else {
        Err(why)
    }
}

/// Whether SMEPilot computes this node itself. Anything not accepted here falls back
/// to another backend through ggml's scheduler.
pub fn supports(node: &Node) -> Result<(), Unsupported> {
    let n_src = node.src.iter().filter(|s| s.is_some()).count();
    if !matches!(node.op, Op::View) {
        memory(node)?;
    }
    match node.op {
        Op::View => Ok(()),
        Op::GetRows => copy::supports_get_rows(node),
        Op::SetRows => copy::supports_set_rows(node),
        Op::Copy => copy::supports_copy(node),
        Op::Add | Op::Mul => elementwise::supports_binary(node),
        Op::Div => router::supports_div(node),
        Op::Scale { .. } | Op::Silu | Op::Clamp { .. } => {
            need(n_src == 1, "unexpected operands")?;
            elementwise::supports_unary(node)
        }
        Op::SwiGlu { .. } => elementwise::supports_glu(node),
        Op::ArgSort(_) => {
            need(n_src == 1, "unexpected operands")?;
            router::supports_argsort(node)
        }
        Op::SumRows => {
            need(n_src == 1, "unexpected operands")?;
            router::supports_sum_rows(node)
        }
        Op::RmsNorm { .. } => norm::supports(node),
        Op::Rope(p) => rope::supports(node, &p),
        Op::SoftMax { .. } => softmax::supports(node),
        Op::MulMat => matmul::supports(node),
        Op::MulMatId => matmul::id::supports(node),
        Op::FlashAttn { .. } => attention::supports(node),
    }
}

/// The memory rules the tensor accessors rely on (`TensorRef`'s contract): every operand
/// lies within its bytes at its strides, and the output overlaps an input only in ggml's
/// in-place form (same memory, shape and strides), and only for the ops that ggml runs in
/// place.
fn memory(node: &Node) -> Result<(), Unsupported> {
    node.dst.check()?;
    let in_place_op = matches!(
        node.op,
        Op::Add
            | Op::Mul
            | Op::Div
            | Op::Scale { .. }
            | Op::Silu
            | Op::Clamp { .. }
            | Op::RmsNorm { .. }
            | Op::Rope(_)
            | Op::SoftMax { .. }
    );
    // Operands the op does not read: ggml makes SET_ROWS and CPY views of their destination
    // and lists that destination among the sources (src[2], src[1]).
    let read = match node.op {
        Op::SetRows => 2,
        Op::Copy => 1,
        _ => node.src.len(),
    };
    for (i, s) in node.src.iter().enumerate().filter_map(|(i, s)| Some((i, s.as_ref()?))) {
        s.check()?;
        if i < read && node.dst.overlaps(s) {
            need(in_place_op && node.dst.in_place_of(s), "output overlaps an input other than in place")?;
        }
    }
    Ok(())
}

/// Scratch bytes the node needs with `nth` threads on the kernels `ks` (shared part plus
/// per-thread parts).
pub fn scratch_bytes(node: &Node, nth: usize, ks: &crate::kernels::KernelSet) -> usize {
    match node.op {
        Op::MulMat => matmul::scratch_bytes(node, nth, ks),
        Op::MulMatId => matmul::id::scratch_bytes(node, nth, ks),
        Op::FlashAttn { .. } => attention::scratch_bytes(node, nth, ks),
        Op::Rope(_) => rope::scratch_bytes(node, nth),
        _ => 0,
    }
}

/// The planner's view of a 2-D matrix product (weights and activations both 2-D), None for
/// every other node.
pub fn mat_shape(node: &Node, threads: usize, ks: &crate::kernels::KernelSet) -> Option<crate::plan::MatShape> {
    if !matches!(node.op, Op::MulMat) {
        return None;
    }
    let (w, x) = (node.src(0), node.src(1));
    matmul::two_d(node).then(|| crate::plan::MatShape {
        m: x.ne[1],
        n: w.ne[1],
        k: w.ne[0],
        ty: w.ty,
        threads,
        matrix_block: ks.matrix.filter(|_| matmul::matrix_feasible(node, ks)).map(|u| u.block()),
    })
}

/// MUL_MAT_ID's expert products as the planner sees them: `m` the most rows one expert can
/// get (one per token), the expert's weights `n` x `k`.
pub fn expert_shape(node: &Node, threads: usize, ks: &crate::kernels::KernelSet) -> Option<crate::plan::MatShape> {
    if !matches!(node.op, Op::MulMatId) {
        return None;
    }
    let (w, ids) = (node.src(0), node.src(2));
    Some(crate::plan::MatShape { m: ids.ne[1], n: w.ne[1], k: w.ne[0], ty: w.ty, threads, matrix_block: matmul::expert_block(node, ks) })
}

/// Runs this thread's share of `node`. All threads of the pool call it for every node.
pub fn run(node: &Node, ctx: &ThreadCtx) {
    match node.op {
        Op::View => {}
        Op::GetRows => copy::get_rows(node, ctx),
        Op::SetRows => copy::set_rows(node, ctx),
        Op::Copy => copy::copy(node, ctx),
        Op::Add => elementwise::binary(node, ctx, |a, b| a + b),
        Op::Mul => elementwise::binary(node, ctx, |a, b| a * b),
        Op::Div => router::div(node, ctx),
        Op::Scale { scale, bias } => elementwise::unary(node, ctx, move |x| x * scale + bias),
        Op::Silu => elementwise::silu(node, ctx),
        Op::Clamp { min, max } => elementwise::unary(node, ctx, move |x| router::clamp(x, min, max)),
        Op::ArgSort(order) => router::argsort(node, ctx, order),
        Op::SumRows => router::sum_rows(node, ctx),
        Op::SwiGlu { swapped } => elementwise::swiglu(node, ctx, swapped),
        Op::RmsNorm { eps } => norm::rms_norm(node, ctx, eps),
        Op::Rope(p) => rope::rope(node, ctx, &p),
        Op::SoftMax { scale, max_bias } => softmax::soft_max(node, ctx, scale, max_bias),
        Op::MulMat => matmul::mul_mat(node, ctx),
        Op::MulMatId => matmul::id::mul_mat_id(node, ctx),
        Op::FlashAttn {
            scale,
            max_bias,
            softcap,
        } => attention::flash_attn(node, ctx, scale, max_bias, softcap),
    }
}

/// Rows `[start, end)` of `n` that thread `ith` of `nth` handles.
#[inline]
pub fn split_range(n: usize, ith: usize, nth: usize) -> (usize, usize) {
    let per = n.div_ceil(nth);
    let start = (per * ith).min(n);
    (start, (start + per).min(n))
}

/// ALiBi slope of head `h` (ggml's formula); 1.0 when `max_bias` is 0.
pub fn alibi_slope(max_bias: f32, n_head: usize, h: usize) -> f32 {
    if max_bias <= 0.0 {
        return 1.0;
    }
    let n_head_log2 = 1u32 << (n_head as f32).log2().floor() as u32;
    let m0 = 2f32.powf(-max_bias / n_head_log2 as f32);
    let m1 = 2f32.powf(-(max_bias / 2.0) / n_head_log2 as f32);
    let h = h as u32;
    if h < n_head_log2 {
        m0.powf((h + 1) as f32)
    } else {
        m1.powf((2 * (h - n_head_log2) + 1) as f32)
    }
}

pub(crate) fn is_float(ty: DType) -> bool {
    matches!(ty, DType::F32 | DType::F16 | DType::BF16)
}

#[cfg(test)]
pub(crate) mod tests;
