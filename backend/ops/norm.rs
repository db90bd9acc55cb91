//! RMS_NORM: x / sqrt(mean(x^2) + eps) per row.

use super::{need, split_range, Node, Unsupported};
use crate::tensor::Src;
use crate::dtype::DType;
use crate::threadpool::ThreadCtx;

pub fn supports(node: &Node) -> Result<(), Unsupported> {
    let a = node.src[0].as_ref().ok_or("missing src")?;
    need(
        a.ty == DType::F32 && node.dst.ty == DType::F32,
        "rms_norm: f32 only",
    )?;
    need(
        a.nb[0] == 4 && node.dst.nb[0] == 4,
        "rms_norm: packed rows only",
    )?;
    need(a.same_shape(&node.dst), "rms_norm: shape mismatch")
}

pub fn rms_norm(node: &Node, ctx: &ThreadCtx, eps: f32) {
    let (a, d) = (node.src(0), &node.dst);
    let n = d.ne[0];
    let (r0, r1) = split_range(d.nrows(), ctx.ith, ctx.nth);
    for r in r0..r1 {
        let (i1, i2, i3) = d.unflatten_row(r);
        // This thread owns dst row r. The output may be the input's memory (in-place
        // allocation): the sum is taken before any write, then each element is read before
        // it is written.
        let (y, [sx]) = d.row_io::<f32, 1>((i1, i2, i3), [(a, (i1, i2, i3))]);
        // As ggml: square in f32, sum in f64 in order, so results are bit-identical
        // (a one-ulp difference here flips Q8 activation rounding downstream).
        let sum: f64 = sx.or(y).iter().map(|&v| (v * v) as f64).sum();
        let mean = (sum / n as f64) as f32;
        let scale = 1.0 / (mean + eps).sqrt();
        match sx {
            Src::Row(x) => y.iter_mut().zip(x).for_each(|(o, &v)| *o = v * scale),
            Src::Dst => y.iter_mut().for_each(|o| *o *= scale),
        }
    }
}
