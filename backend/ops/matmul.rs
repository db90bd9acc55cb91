//! MUL_MAT: dst[n, m] = dot(weight row n, activation row m), with ggml's broadcasting
//! of the weights over dims 2 and 3.
//!
//! Activations are converted once per call into the weight type's activation format
//! (Q8_0, Q8_1, Q8_K, F16, BF16 or F32, as ggml-cpu does), in parallel, into the
//! executor's scratch; then threads take contiguous ranges of output tiles, so each
//! thread streams its own slice of the weights.

use super::{need, slice, slice_mut, split_range, Node, Unsupported};
use crate::backend::dtype::DType;
use crate::backend::exec::ThreadCtx;
use crate::backend::kernels::packed::{self, PackedRef};
use crate::backend::kernels::quant::kernels;

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
    let k = kernels(w.ty).ok_or("mul_mat: weight type not handled")?;
    need(
        k.vec_dot.is_some(),
        "mul_mat: weight type has no dot kernel",
    )?;
    need(
        kernels(k.vec_dot_type).is_some_and(|a| a.from_f32.is_some()),
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
    let vdt = kernels(w.ty)?.vec_dot_type;
    if vdt == DType::F32 {
        return None; // dotted with the f32 rows in place
    }
    let stride = (vdt.row_bytes(x.ne[0]) + 63) & !63;
    Some((vdt, stride, x.nrows()))
}

/// Fewest activation rows the tile path takes; below, packed weights use the packed GEMV.
const PACKED_GEMV_MAX_ROWS: usize = 15;

/// The packed-GEMV path applies: a packed 2-D weight and few activation rows.
fn packed_gemv(node: &Node) -> Option<PackedRef> {
    let (w, x) = (node.src(0), node.src(1));
    let p = w.packed?;
    let plain = w.ne[2] == 1 && w.ne[3] == 1 && x.ne[2] == 1 && x.ne[3] == 1;
    (plain && x.ne[1] <= PACKED_GEMV_MAX_ROWS).then_some(p)
}

pub fn scratch_bytes(node: &Node, nth: usize) -> usize {
    #[cfg(target_arch = "x86_64")]
    if super::matmul_amx::applies(node) {
        return super::matmul_amx::scratch_bytes(node, nth);
    }
    let _ = nth;
    if packed_gemv(node).is_some() {
        let (rows, nb) = (node.src(1).ne[1], node.src(0).ne[0] / 32);
        return act_layout(node).map_or(0, |(_, stride, r)| stride * r) + rows * nb * 4;
    }
    act_layout(node).map_or(0, |(_, stride, rows)| stride * rows)
}

pub fn mul_mat(node: &Node, ctx: &ThreadCtx) {
    #[cfg(target_arch = "x86_64")]
    if super::matmul_amx::applies(node) {
        return super::matmul_amx::mul_mat(node, ctx);
    }
    if let Some(p) = packed_gemv(node) {
        return mul_mat_packed_gemv(node, ctx, p);
    }
    let (w, x, d) = (node.src(0), node.src(1), &node.dst);
    let wk = kernels(w.ty).unwrap();
    let vec_dot = wk.vec_dot.unwrap();
    let kdim = w.ne[0];
    let (scratch, _) = ctx.scratch();

    // Phase 1: activations into the weight type's activation format, rows split.
    let layout = act_layout(node);
    if let Some((vdt, stride, rows)) = layout {
        let from_f32 = kernels(vdt).unwrap().from_f32.unwrap();
        let (r0, r1) = split_range(rows, ctx.ith, ctx.nth);
        for r in r0..r1 {
            let (i1, i2, i3) = x.unflatten_row(r);
            // SAFETY: x rows hold kdim f32; scratch row r (reserved by scratch_bytes) is
            // written by this thread only.
            unsafe {
                from_f32(
                    slice::<f32>(x.row_ptr(i1, i2, i3), kdim),
                    slice_mut::<u8>(scratch.add(r * stride), vdt.row_bytes(kdim)),
                );
            }
        }
        ctx.barrier();
    }
    let act_bytes = layout.map_or(kdim * 4, |(vdt, _, _)| vdt.row_bytes(kdim));
    let act_row = |m: usize, i12: usize, i13: usize| -> *const u8 {
        match layout {
            Some((_, stride, _)) => {
                scratch.wrapping_add(((i13 * x.ne[2] + i12) * x.ne[1] + m) * stride)
            }
            None => x.row_ptr(m, i12, i13),
        }
    };

    // Phase 2: output tiles, contiguous ranges per thread.
    let (n_all, m_all) = (d.ne[0], d.ne[1]);
    let (n_tiles, m_tiles) = (n_all.div_ceil(TILE_N), m_all.div_ceil(TILE_M));
    let batches = d.ne[2] * d.ne[3];
    let (r2, r3) = (x.ne[2] / w.ne[2], x.ne[3] / w.ne[3]);
    let (t0, t1) = split_range(batches * n_tiles * m_tiles, ctx.ith, ctx.nth);
    let w_bytes = w.row_bytes();
    for t in t0..t1 {
        let mt = t % m_tiles;
        let nt = (t / m_tiles) % n_tiles;
        let b = t / (m_tiles * n_tiles);
        let (i12, i13) = (b % d.ne[2], b / d.ne[2]);
        let (i02, i03) = (i12 / r2, i13 / r3);
        for n in nt * TILE_N..((nt + 1) * TILE_N).min(n_all) {
            // SAFETY: weight rows are packed rows of w_bytes (supports).
            let wrow = unsafe { slice::<u8>(w.row_ptr(n, i02, i03), w_bytes) };
            for m in mt * TILE_M..((mt + 1) * TILE_M).min(m_all) {
                // SAFETY: activation rows hold act_bytes; the output element (n, m) lies in
                // this thread's tiles only.
                unsafe {
                    let a = slice::<u8>(act_row(m, i12, i13), act_bytes);
                    *(d.row_ptr(m, i12, i13) as *mut f32).add(n) = vec_dot(kdim, wrow, a);
                }
            }
        }
    }
}

/// 16-row weight groups per chunk of the GEMV's work queue: large enough to stream (64 rows
/// of 3072 Q4_K weights are 110 KB), small enough to balance the threads.
const GEMV_CHUNK_GROUPS: usize = packed::DECODE_GROUPS;

/// Few activation rows against packed weights: activations quantized to the weight type's
/// activation format (Q8_0 with each block's quant sum, or Q8_K, as ggml-cpu), then chunks
/// of 16-row weight groups taken from the node's work queue, each group streamed once for all
/// activation rows.
fn mul_mat_packed_gemv(node: &Node, ctx: &ThreadCtx, p: PackedRef) {
    let (w, x, d) = (node.src(0), node.src(1), &node.dst);
    let (k, n, m) = (w.ne[0], w.ne[1], x.ne[1]);
    let (vdt, stride, _) = act_layout(node).expect("packed layouts take quantized activations");
    debug_assert_eq!(vdt, p.layout.act_type());
    let with_sums = vdt == DType::Q8_0;
    let nb = k / w.ty.block_size();
    let (scratch, _) = ctx.scratch();
    let sums_at = scratch.wrapping_add(stride * m) as *mut i32;
    let quantize = kernels(vdt).unwrap().from_f32.unwrap();
    let bq = vdt.block_bytes();
    let (r0, r1) = split_range(m, ctx.ith, ctx.nth);
    for r in r0..r1 {
        // SAFETY: scratch holds m rows of `stride` bytes then m * nb sums (scratch_bytes); row r
        // and its sums are this thread's; x rows hold k f32.
        unsafe {
            let a = slice_mut::<u8>(scratch.add(r * stride), vdt.row_bytes(k));
            quantize(slice::<f32>(x.row_ptr(r, 0, 0), k), a);
            if with_sums {
                for b in 0..nb {
                    *sums_at.add(r * nb + b) = a[b * bq + 2..(b + 1) * bq].iter().map(|&v| v as i8 as i32).sum();
                }
            }
        }
    }
    ctx.barrier();
    const MAX_M: usize = PACKED_GEMV_MAX_ROWS;
    let mut acts: [&[u8]; MAX_M] = [&[]; MAX_M];
    let mut sums: [&[i32]; MAX_M] = [&[]; MAX_M];
    for r in 0..m {
        // SAFETY: written in phase 1, read-only from here on.
        unsafe {
            acts[r] = slice::<u8>(scratch.add(r * stride), vdt.row_bytes(k));
            sums[r] = if with_sums { std::slice::from_raw_parts(sums_at.add(r * nb), nb) } else { &[] };
        }
    }
    let gb = p.layout.group_bytes(k);
    let mut out = [[0f32; 16]; MAX_M * GEMV_CHUNK_GROUPS];
    let groups = n / 16;
    loop {
        let g0 = ctx.next_chunk() * GEMV_CHUNK_GROUPS;
        if g0 >= groups {
            break;
        }
        let ng = (groups - g0).min(GEMV_CHUNK_GROUPS);
        // SAFETY: the packed copy holds n / 16 groups of gb bytes.
        let chunk = unsafe { std::slice::from_raw_parts(p.data.add(g0 * gb), ng * gb) };
        packed::gemv(p.layout, nb, chunk, ng, &acts[..m], &sums[..m], &mut out[..ng * m]);
        for gi in 0..ng {
            for (r, o) in out[gi * m..(gi + 1) * m].iter().enumerate() {
                // SAFETY: output row r holds n floats; columns (g0 + gi) * 16 .. + 16 belong to
                // the chunk this thread took from the queue.
                unsafe {
                    std::ptr::copy_nonoverlapping(o.as_ptr(), (d.row_ptr(r, 0, 0) as *mut f32).add((g0 + gi) * 16), 16);
                }
            }
        }
    }
}
