//! SOFT_MAX with scale, optional mask (f16/f32, broadcast over heads), ALiBi and sinks, in
//! ggml-cpu's operation order (bit-identical results; see `kernels::vmath`).

use half::f16;

use super::{alibi_slope, need, split_range, Node, Unsupported};
use crate::tensor::Src;
use crate::dtype::DType;
use crate::threadpool::ThreadCtx;

pub fn supports(node: &Node) -> Result<(), Unsupported> {
    let a = node.src[0].as_ref().ok_or("missing src")?;
    let d = &node.dst;
    need(
        a.ty == DType::F32 && d.ty == DType::F32,
        "soft_max: f32 only",
    )?;
    need(
        a.nb[0] == 4 && d.nb[0] == 4 && a.same_shape(d),
        "soft_max: packed rows, same shape",
    )?;
    if let Some(m) = &node.src[1] {
        need(
            matches!(m.ty, DType::F16 | DType::F32) && m.rows_contiguous(),
            "soft_max: mask f16/f32",
        )?;
        need(
            m.ne[0] == a.ne[0] && m.ne[1] >= a.ne[1],
            "soft_max: mask shape",
        )?;
        need(
            a.ne[2] % m.ne[2] == 0 && a.ne[3] % m.ne[3] == 0,
            "soft_max: mask broadcast",
        )?;
    }
    if let Some(s) = &node.src[2] {
        need(
            s.ty == DType::F32 && s.is_contiguous() && s.nelements() >= a.ne[2],
            "soft_max: sinks f32",
        )?;
    }
    Ok(())
}

pub fn soft_max(node: &Node, ctx: &ThreadCtx, scale: f32, max_bias: f32) {
    let (a, d) = (node.src(0), &node.dst);
    let n = a.ne[0];
    let n_head = a.ne[2];
    // Sinks hold at least ne[2] f32 (supports).
    let sinks = node.src[2].as_ref().map(|s| s.elems::<f32>(n_head));
    let (r0, r1) = split_range(a.nrows(), ctx.ith, ctx.nth);
    for r in r0..r1 {
        let (i1, i2, i3) = a.unflatten_row(r);
        let slope = alibi_slope(max_bias, n_head, i2);
        // This thread owns dst row r. dst may be src's memory (in-place allocation): the
        // scaled copy reads each element before writing it; afterwards only the dst row is
        // used.
        let (y, [sx]) = d.row_io::<f32, 1>((i1, i2, i3), [(a, (i1, i2, i3))]);
        match sx {
            Src::Row(x) => y.iter_mut().zip(x).for_each(|(o, &v)| *o = v * scale),
            Src::Dst => y.iter_mut().for_each(|o| *o *= scale),
        }
        // ggml adds `slope * mask` with one rounding (its compiler fuses the multiply-add);
        // with slope 1, the common case, that is a plain add.
        let add = |o: &mut f32, mv: f32| {
            *o = if slope == 1.0 {
                *o + mv
            } else {
                slope.mul_add(mv, *o)
            }
        };
        if let Some(m) = &node.src[1] {
            let (j2, j3) = (i2 % m.ne[2], i3 % m.ne[3]);
            // Mask rows hold n elements of its type (supports).
            match m.ty {
                DType::F16 => {
                    let mr = &m.row::<f16>(i1, j2, j3)[..n];
                    y.iter_mut()
                        .zip(mr)
                        .for_each(|(o, &mv)| add(o, mv.to_f32()));
                }
                _ => {
                    let mr = &m.row::<f32>(i1, j2, j3)[..n];
                    y.iter_mut().zip(mr).for_each(|(o, &mv)| add(o, mv));
                }
            }
        }
        let mut max = y
            .iter()
            .copied()
            .fold(f32::NEG_INFINITY, |m, v| if m > v { m } else { v });
        if let Some(s) = sinks {
            max = max.max(s[i2]);
        }
        let mut sum = (ctx.kernels.vmath.soft_max)(y, max);
        if let Some(s) = sinks {
            sum += ((s[i2] - max).exp()) as f64;
        }
        let inv = (1.0 / sum) as f32;
        y.iter_mut().for_each(|o| *o *= inv);
    }
}
