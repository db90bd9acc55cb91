//! FLASH_ATTN_EXT: softmax(scale * Q K^T + mask) V, with ALiBi, logit soft-capping and
//! attention sinks. K and V are the f16 KV cache; Q is converted to f16 per row so the
//! QK dot runs in the same format as ggml-cpu's; V accumulates in f32.

use super::{alibi_slope, need, slice, slice_mut, split_range, Node, Unsupported};
use crate::backend::dtype::DType;
use crate::backend::exec::ThreadCtx;
use crate::backend::kernels::f16::axpy_f16;
use crate::backend::kernels::quant::kernels;

pub fn supports(node: &Node) -> Result<(), Unsupported> {
    let q = node.src[0].as_ref().ok_or("missing q")?;
    let k = node.src[1].as_ref().ok_or("missing k")?;
    let v = node.src[2].as_ref().ok_or("missing v")?;
    let d = &node.dst;
    need(
        q.ty == DType::F32 && q.nb[0] == 4,
        "flash_attn: f32 q with packed rows",
    )?;
    need(
        k.ty == DType::F16 && v.ty == DType::F16,
        "flash_attn: f16 K/V only",
    )?;
    need(
        k.rows_contiguous() && v.rows_contiguous(),
        "flash_attn: packed K/V rows",
    )?;
    need(
        q.ne[0] == k.ne[0] && k.ne[1] == v.ne[1],
        "flash_attn: shapes",
    )?;
    need(
        q.ne[2] % k.ne[2] == 0 && q.ne[3] % k.ne[3] == 0,
        "flash_attn: K broadcast",
    )?;
    need(
        q.ne[2] % v.ne[2] == 0 && q.ne[3] % v.ne[3] == 0,
        "flash_attn: V broadcast",
    )?;
    need(
        d.ty == DType::F32 && d.is_contiguous(),
        "flash_attn: contiguous f32 output",
    )?;
    need(
        d.ne == [v.ne[0], q.ne[2], q.ne[1], q.ne[3]],
        "flash_attn: output shape",
    )?;
    if let Some(m) = &node.src[3] {
        need(
            m.ty == DType::F16 && m.rows_contiguous(),
            "flash_attn: f16 mask",
        )?;
        need(
            m.ne[0] >= k.ne[1] && m.ne[1] >= q.ne[1],
            "flash_attn: mask shape",
        )?;
        need(
            q.ne[2] % m.ne[2] == 0 && q.ne[3] % m.ne[3] == 0,
            "flash_attn: mask broadcast",
        )?;
    }
    if let Some(s) = &node.src[4] {
        need(
            s.ty == DType::F32 && s.is_contiguous() && s.nelements() >= q.ne[2],
            "flash_attn: f32 sinks",
        )?;
    }
    Ok(())
}

/// Per thread: Q row in f16, the f32 accumulator, the row's scores.
fn per_thread(node: &Node) -> (usize, usize, usize) {
    let (dk, dv, n_kv) = (node.src(0).ne[0], node.src(2).ne[0], node.src(1).ne[1]);
    let q16 = (dk * 2 + 63) & !63;
    let acc = (dv * 4 + 63) & !63;
    let scores = (n_kv * 4 + 63) & !63;
    (q16, acc, q16 + acc + scores)
}

pub fn scratch_bytes(node: &Node, nth: usize) -> usize {
    per_thread(node).2 * nth
}

/// Two passes per query row: scores (QK^T, scale, soft-cap, mask) and their maximum,
/// then exp-weighted V accumulation with f16 V converted in registers.
pub fn flash_attn(node: &Node, ctx: &ThreadCtx, scale: f32, max_bias: f32, softcap: f32) {
    let (q, k, v, d) = (node.src(0), node.src(1), node.src(2), &node.dst);
    let mask = node.src[3].as_ref();
    let (dk, dv, n_kv) = (q.ne[0], v.ne[0], k.ne[1]);
    let (n_q, n_head) = (q.ne[1], q.ne[2]);
    let f16k = kernels(DType::F16).unwrap();
    let (q_to_f16, kq_dot) = (f16k.from_f32.unwrap(), f16k.vec_dot.unwrap());
    let scale = if softcap != 0.0 {
        scale / softcap
    } else {
        scale
    };
    // SAFETY: sinks hold n_head f32 (supports).
    let sinks = node.src[4]
        .as_ref()
        .map(|s| unsafe { slice::<f32>(s.data, n_head) });

    let (q16_bytes, acc_bytes, per) = per_thread(node);
    let (scratch, _) = ctx.scratch();
    // SAFETY: scratch_bytes reserved `per` bytes for each thread; this one uses its own.
    let (q16, acc, scores) = unsafe {
        let base = scratch.add(ctx.ith * per);
        (
            slice_mut::<u8>(base, dk * 2),
            slice_mut::<f32>(base.add(q16_bytes), dv),
            slice_mut::<f32>(base.add(q16_bytes + acc_bytes), n_kv),
        )
    };

    let rows = n_q * n_head * q.ne[3];
    let (r0, r1) = split_range(rows, ctx.ith, ctx.nth);
    for r in r0..r1 {
        let iq1 = r % n_q;
        let iq2 = (r / n_q) % n_head;
        let iq3 = r / (n_q * n_head);
        let slope = alibi_slope(max_bias, n_head, iq2);
        let (ik2, ik3) = (iq2 / (n_head / k.ne[2]), iq3 / (q.ne[3] / k.ne[3]));
        let (iv2, iv3) = (iq2 / (n_head / v.ne[2]), iq3 / (q.ne[3] / v.ne[3]));
        // SAFETY: q rows hold dk f32 (supports).
        q_to_f16(unsafe { slice::<f32>(q.row_ptr(iq1, iq2, iq3), dk) }, q16);
        let mrow = mask.map(|m| {
            // SAFETY: mask rows hold at least n_kv f16 (supports).
            unsafe { slice::<half::f16>(m.row_ptr(iq1, iq2 % m.ne[2], iq3 % m.ne[3]), n_kv) }
        });

        let mut m_max = sinks.map_or(f32::NEG_INFINITY, |sk| sk[iq2]);
        for (ic, sc) in scores.iter_mut().enumerate() {
            let mv = mrow.map_or(0.0, |m| slope * m[ic].to_f32());
            if mv == f32::NEG_INFINITY {
                *sc = f32::NEG_INFINITY;
                continue;
            }
            // SAFETY: K rows are packed f16 rows of dk elements (supports).
            let krow = unsafe { slice::<u8>(k.row_ptr(ic, ik2, ik3), dk * 2) };
            let mut s = kq_dot(dk, krow, q16) * scale;
            if softcap != 0.0 {
                s = softcap * s.tanh();
            }
            *sc = s + mv;
            m_max = m_max.max(*sc);
        }

        acc.fill(0.0);
        let mut sum = 0f32;
        for (ic, &sc) in scores.iter().enumerate() {
            if sc == f32::NEG_INFINITY {
                continue;
            }
            let w = (sc - m_max).exp();
            sum += w;
            // SAFETY: V rows are packed f16 rows of dv elements (supports).
            axpy_f16(
                acc,
                unsafe { slice::<u8>(v.row_ptr(ic, iv2, iv3), dv * 2) },
                w,
            );
        }
        if let Some(sk) = sinks {
            sum += (sk[iq2] - m_max).exp();
        }
        let inv = if sum == 0.0 { 0.0 } else { 1.0 / sum };
        // Output is [dv, n_head, n_q, ne3]: row (iq2, iq1, iq3).
        // SAFETY: dst is contiguous f32 of that shape; row r maps to a distinct dst row.
        let out = unsafe { slice_mut::<f32>(d.row_ptr(iq2, iq1, iq3), dv) };
        out.iter_mut()
            .zip(acc.iter())
            .for_each(|(o, &a)| *o = a * inv);
    }
}
