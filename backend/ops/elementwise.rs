//! ADD, MUL (with ggml's broadcasting of the second operand), SCALE, SILU, SWIGLU.

use super::{need, split_range, Node, Unsupported};
use crate::tensor::Src;
use crate::dtype::DType;
use crate::threadpool::ThreadCtx;

fn all_f32_rows(ts: &[&crate::tensor::TensorRef]) -> bool {
    ts.iter().all(|t| t.ty == DType::F32 && t.nb[0] == 4)
}

pub fn supports_binary(node: &Node) -> Result<(), Unsupported> {
    let (a, b) = (
        node.src[0].as_ref().ok_or("missing a")?,
        node.src[1].as_ref().ok_or("missing b")?,
    );
    need(
        all_f32_rows(&[a, b, &node.dst]),
        "binary ops: f32 with packed rows only",
    )?;
    need(
        a.same_shape(&node.dst),
        "binary ops: dst shape must equal src0",
    )?;
    need(
        a.can_broadcast_from(b),
        "binary ops: src1 must broadcast to src0",
    )
}

pub fn supports_unary(node: &Node) -> Result<(), Unsupported> {
    let a = node.src[0].as_ref().ok_or("missing src")?;
    need(
        all_f32_rows(&[a, &node.dst]),
        "unary ops: f32 with packed rows only",
    )?;
    need(a.same_shape(&node.dst), "unary ops: shape mismatch")
}

pub fn supports_glu(node: &Node) -> Result<(), Unsupported> {
    let a = node.src[0].as_ref().ok_or("missing src")?;
    let d = &node.dst;
    match &node.src[1] {
        Some(b) => {
            need(all_f32_rows(&[a, b, d]), "glu: f32 with packed rows only")?;
            need(a.same_shape(d) && b.same_shape(d), "glu: shape mismatch")
        }
        None => {
            need(all_f32_rows(&[a, d]), "glu: f32 with packed rows only")?;
            need(
                a.ne[0] == 2 * d.ne[0] && a.ne[1..] == d.ne[1..],
                "glu: shape mismatch",
            )
        }
    }
}

/// dst = f(src0, broadcast(src1)), rows split across threads.
pub fn binary(node: &Node, ctx: &ThreadCtx, f: impl Fn(f32, f32) -> f32) {
    let (a, b, d) = (node.src(0), node.src(1), &node.dst);
    let (r0, r1) = split_range(d.nrows(), ctx.ith, ctx.nth);
    for r in r0..r1 {
        let (i1, i2, i3) = d.unflatten_row(r);
        let jb = (i1 % b.ne[1], i2 % b.ne[2], i3 % b.ne[3]);
        // This thread owns dst row r. dst may be the very memory of src0 or src1 (ggml's
        // in-place allocation): such an operand is read from dst's row, element by element
        // before the element is written.
        let (rd, [sa, sb]) = d.row_io::<f32, 2>((i1, i2, i3), [(a, (i1, i2, i3)), (b, jb)]);
        if rd.is_empty() {
            continue; // empty rows (and a broadcast row of none, which chunks cannot take)
        }
        match (sa, sb) {
            (Src::Row(ra), Src::Row(rb)) if rb.len() == rd.len() => {
                for ((o, &x), &y) in rd.iter_mut().zip(ra).zip(rb) {
                    *o = f(x, y);
                }
            }
            // A broadcast row: one value (MoE's expert weights), or repeats of rb.
            (Src::Row(ra), Src::Row(&[y])) => {
                for (o, &x) in rd.iter_mut().zip(ra) {
                    *o = f(x, y);
                }
            }
            (Src::Row(ra), Src::Row(rb)) => {
                for (oc, xc) in rd.chunks_mut(rb.len()).zip(ra.chunks(rb.len())) {
                    for ((o, &x), &y) in oc.iter_mut().zip(xc).zip(rb) {
                        *o = f(x, y);
                    }
                }
            }
            (Src::Dst, Src::Row(rb)) if rb.len() == rd.len() => {
                for (o, &y) in rd.iter_mut().zip(rb) {
                    *o = f(*o, y);
                }
            }
            (Src::Dst, Src::Row(&[y])) => {
                for o in rd.iter_mut() {
                    *o = f(*o, y);
                }
            }
            (Src::Dst, Src::Row(rb)) => {
                for oc in rd.chunks_mut(rb.len()) {
                    for (o, &y) in oc.iter_mut().zip(rb) {
                        *o = f(*o, y);
                    }
                }
            }
            (Src::Row(ra), Src::Dst) => {
                for (o, &x) in rd.iter_mut().zip(ra) {
                    *o = f(x, *o);
                }
            }
            (Src::Dst, Src::Dst) => {
                for o in rd.iter_mut() {
                    *o = f(*o, *o);
                }
            }
        }
    }
}

/// dst = f(src0) element-wise.
pub fn unary(node: &Node, ctx: &ThreadCtx, f: impl Fn(f32) -> f32) {
    let (a, d) = (node.src(0), &node.dst);
    let (r0, r1) = split_range(d.nrows(), ctx.ith, ctx.nth);
    for r in r0..r1 {
        let ix = d.unflatten_row(r);
        // This thread owns dst row r; dst may be src's memory (in-place allocation).
        match d.row_io::<f32, 1>(ix, [(a, ix)]) {
            (rd, [Src::Row(ra)]) => rd.iter_mut().zip(ra).for_each(|(o, &x)| *o = f(x)),
            (rd, [Src::Dst]) => rd.iter_mut().for_each(|o| *o = f(*o)),
        }
    }
}

/// SILU, as ggml_vec_silu_f32 computes it (`kernels::vmath`).
pub fn silu(node: &Node, ctx: &ThreadCtx) {
    const CHUNK: usize = 256; // a multiple of vmath::LANES: chunks keep ggml's vector/tail split
    let (a, d) = (node.src(0), &node.dst);
    let (r0, r1) = split_range(d.nrows(), ctx.ith, ctx.nth);
    let n = d.ne[0];
    let mut buf = [0f32; CHUNK];
    for r in r0..r1 {
        let ix = d.unflatten_row(r);
        // This thread owns dst row r. dst may be src's memory (in-place allocation): then
        // each chunk is copied out before dst is written.
        let (rd, [sa]) = d.row_io::<f32, 1>(ix, [(a, ix)]);
        for s in (0..n).step_by(CHUNK) {
            let len = (n - s).min(CHUNK);
            let x = match &sa {
                Src::Row(ra) => &ra[s..s + len],
                Src::Dst => {
                    buf[..len].copy_from_slice(&rd[s..s + len]);
                    &buf[..len]
                }
            };
            (ctx.kernels.vmath.silu_mul)(x, None, &mut rd[s..s + len]);
        }
    }
}

/// SWIGLU: silu(a) * b, with a and b the two halves of src0 or src0 and src1.
pub fn swiglu(node: &Node, ctx: &ThreadCtx, swapped: bool) {
    let d = &node.dst;
    let a = node.src(0);
    let n = d.ne[0];
    let (r0, r1) = split_range(d.nrows(), ctx.ith, ctx.nth);
    for r in r0..r1 {
        let (i1, i2, i3) = d.unflatten_row(r);
        // Shapes checked in supports_glu; this thread owns dst row r; inputs do not overlap
        // the output (supports).
        let (mut x, mut g) = match &node.src[1] {
            Some(b) => (&a.row::<f32>(i1, i2, i3)[..n], &b.row::<f32>(i1, i2, i3)[..n]),
            None => a.row::<f32>(i1, i2, i3)[..2 * n].split_at(n),
        };
        if swapped {
            std::mem::swap(&mut x, &mut g);
        }
        (ctx.kernels.vmath.silu_mul)(x, Some(g), d.row_mut::<f32>(i1, i2, i3));
    }
}
