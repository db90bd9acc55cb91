//! ADD, MUL (with ggml's broadcasting of the second operand), SCALE, SILU, SWIGLU.

use super::{need, slice, slice_mut, split_range, Node, Unsupported};
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
    let n = d.ne[0];
    for r in r0..r1 {
        let (i1, i2, i3) = d.unflatten_row(r);
        let (pa, pd) = (
            a.row_ptr(i1, i2, i3) as *const f32,
            d.row_ptr(i1, i2, i3) as *mut f32,
        );
        let pb = b.row_ptr(i1 % b.ne[1], i2 % b.ne[2], i3 % b.ne[3]) as *const f32;
        let nb = b.ne[0];
        // SAFETY: rows of ne[0] f32 (checked in supports); this thread owns dst row r.
        // dst may be the very memory of src0 or src1 (ggml's in-place allocation), so
        // the loop goes through raw pointers, reading each element before writing it.
        unsafe {
            if nb == n {
                for i in 0..n {
                    *pd.add(i) = f(*pa.add(i), *pb.add(i));
                }
            } else {
                for i in 0..n {
                    *pd.add(i) = f(*pa.add(i), *pb.add(i % nb));
                }
            }
        }
    }
}

/// dst = f(src0) element-wise.
pub fn unary(node: &Node, ctx: &ThreadCtx, f: impl Fn(f32) -> f32) {
    let (a, d) = (node.src(0), &node.dst);
    let (r0, r1) = split_range(d.nrows(), ctx.ith, ctx.nth);
    let n = d.ne[0];
    for r in r0..r1 {
        let (i1, i2, i3) = d.unflatten_row(r);
        let (pa, pd) = (
            a.row_ptr(i1, i2, i3) as *const f32,
            d.row_ptr(i1, i2, i3) as *mut f32,
        );
        // SAFETY: rows of n f32; this thread owns dst row r; dst may alias src
        // (in-place allocation), hence raw pointers, read before write per element.
        unsafe {
            for i in 0..n {
                *pd.add(i) = f(*pa.add(i));
            }
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
        let (i1, i2, i3) = d.unflatten_row(r);
        let (pa, pd) = (a.row_ptr(i1, i2, i3) as *const f32, d.row_ptr(i1, i2, i3));
        for s in (0..n).step_by(CHUNK) {
            let len = (n - s).min(CHUNK);
            // SAFETY: rows of n f32; this thread owns dst row r. dst may be src's memory
            // (in-place allocation): the chunk is copied out before dst is written.
            unsafe {
                std::ptr::copy_nonoverlapping(pa.add(s), buf.as_mut_ptr(), len);
                (ctx.kernels.vmath.silu_mul)(&buf[..len], None, slice_mut::<f32>(pd.add(4 * s), len));
            }
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
        // SAFETY: shapes checked in supports_glu; this thread owns dst row r.
        let (mut x, mut g, rd) = unsafe {
            match &node.src[1] {
                Some(b) => (
                    slice::<f32>(a.row_ptr(i1, i2, i3), n),
                    slice::<f32>(b.row_ptr(i1, i2, i3), n),
                    slice_mut::<f32>(d.row_ptr(i1, i2, i3), n),
                ),
                None => {
                    let both = slice::<f32>(a.row_ptr(i1, i2, i3), 2 * n);
                    (
                        &both[..n],
                        &both[n..],
                        slice_mut::<f32>(d.row_ptr(i1, i2, i3), n),
                    )
                }
            }
        };
        if swapped {
            std::mem::swap(&mut x, &mut g);
        }
        (ctx.kernels.vmath.silu_mul)(x, Some(g), rd);
    }
}
