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

/// Rows whose sums run side by side: each row's sum is still one f64 chain in element
/// order (ggml's bits), but 8 independent chains overlap where one alone waits on the add.
const SIDE_BY_SIDE: usize = 8;

/// Sum of squares of each row (squared in f32, summed in f64 in order, as ggml).
fn sums_of_squares<const G: usize>(rows: [&[f32]; G], n: usize) -> [f64; G] {
    let rows = rows.map(|r| &r[..n]);
    let mut sums = [0f64; G];
    for i in 0..n {
        for (s, r) in sums.iter_mut().zip(&rows) {
            *s += (r[i] * r[i]) as f64;
        }
    }
    sums
}

pub fn rms_norm(node: &Node, ctx: &ThreadCtx, eps: f32) {
    let (a, d) = (node.src(0), &node.dst);
    let n = d.ne[0];
    let (r0, r1) = split_range(d.nrows(), ctx.ith, ctx.nth);
    let mut r = r0;
    while r < r1 {
        // The sums first, from the input rows (which may be the output's memory: nothing is
        // written until they are taken).
        let g = (r1 - r).min(SIDE_BY_SIDE);
        let input = |j: usize| {
            let (i1, i2, i3) = d.unflatten_row(r + j);
            a.row::<f32>(i1, i2, i3)
        };
        let mut sums = [0f64; SIDE_BY_SIDE];
        if g == SIDE_BY_SIDE {
            sums = sums_of_squares(std::array::from_fn(input), n);
        } else {
            for (j, s) in sums.iter_mut().enumerate().take(g) {
                *s = sums_of_squares([input(j)], n)[0];
            }
        }
        for (j, &sum) in sums.iter().enumerate().take(g) {
            let (i1, i2, i3) = d.unflatten_row(r + j);
            // This thread owns dst row r + j. The output may be the input's memory (in-place
            // allocation): each element is read before it is written.
            let (y, [sx]) = d.row_io::<f32, 1>((i1, i2, i3), [(a, (i1, i2, i3))]);
            let mean = (sum / n as f64) as f32;
            let scale = 1.0 / (mean + eps).sqrt();
            match sx {
                Src::Row(x) => y.iter_mut().zip(x).for_each(|(o, &v)| *o = v * scale),
                Src::Dst => y.iter_mut().for_each(|o| *o *= scale),
            }
        }
        r += g;
    }
}
