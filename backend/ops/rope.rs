//! ROPE (normal and NeoX modes) with YaRN scaling and optional frequency factors,
//! following ggml's rope_yarn so results match the CPU backend.

use super::{need, split_range, Node, Unsupported};
use crate::tensor::Src;
use crate::dtype::DType;
use crate::threadpool::ThreadCtx;

pub const MODE_NORMAL: i32 = 0;
pub const MODE_NEOX: i32 = 2;

#[derive(Clone, Copy, Debug)]
pub struct RopeParams {
    pub n_dims: usize,
    pub mode: i32,
    pub n_ctx_orig: i32,
    pub freq_base: f32,
    pub freq_scale: f32,
    pub ext_factor: f32,
    pub attn_factor: f32,
    pub beta_fast: f32,
    pub beta_slow: f32,
    /// First rotated channel (ggml op_params[15]).
    pub n_offs: usize,
    /// Set for ggml's rope_back (inverse rotation), which SMEPilot does not claim.
    pub backward: bool,
}

pub fn supports(node: &Node, p: &RopeParams) -> Result<(), Unsupported> {
    let a = node.src[0].as_ref().ok_or("missing src")?;
    let pos = node.src[1].as_ref().ok_or("missing positions")?;
    let d = &node.dst;
    need(!p.backward, "rope: backward pass not claimed")?;
    need(
        p.mode == MODE_NORMAL || p.mode == MODE_NEOX,
        "rope: only normal and neox modes",
    )?;
    // f16 and bf16 for llama.cpp's context shift, which rotates the K cache in place.
    need(
        a.ty == d.ty && matches!(a.ty, DType::F32 | DType::F16 | DType::BF16),
        "rope: f32, f16 or bf16, the same in and out",
    )?;
    need(
        a.nb[0] == a.ty.block_bytes() && d.nb[0] == d.ty.block_bytes() && a.same_shape(d),
        "rope: packed rows, same shape",
    )?;
    need(
        pos.ty == DType::I32 && pos.is_contiguous() && pos.ne[0] >= a.ne[2],
        "rope: i32 positions",
    )?;
    need(
        p.n_dims.is_multiple_of(2) && p.n_offs.is_multiple_of(2) && p.n_offs + p.n_dims <= a.ne[0],
        "rope: n_dims",
    )?;
    if let Some(ff) = &node.src[2] {
        need(
            ff.ty == DType::F32 && ff.is_contiguous() && ff.ne[0] >= p.n_dims / 2,
            "rope: freq factors",
        )?;
    }
    Ok(())
}

/// Per-thread cache of (cos, sin) pairs for one position.
fn cache_floats(node: &Node) -> usize {
    (node.dst.ne[0] + 15) & !15
}

/// Per thread: the cos/sin cache, and for f16 / bf16 the row being rotated in f32.
fn thread_floats(node: &Node) -> usize {
    cache_floats(node) * if node.dst.ty == DType::F32 { 1 } else { 2 }
}

pub fn scratch_bytes(node: &Node, nth: usize) -> usize {
    thread_floats(node) * 4 * nth
}

fn corr_dim(n_dims: usize, n_ctx_orig: i32, n_rot: f32, base: f32) -> f32 {
    n_dims as f32 * (n_ctx_orig as f32 / (n_rot * 2.0 * std::f32::consts::PI)).ln()
        / (2.0 * base.ln())
}

/// ggml_rope_yarn_corr_dims.
pub fn corr_dims(p: &RopeParams) -> [f32; 2] {
    let start = corr_dim(p.n_dims, p.n_ctx_orig, p.beta_fast, p.freq_base).floor();
    let end = corr_dim(p.n_dims, p.n_ctx_orig, p.beta_slow, p.freq_base).ceil();
    [start.max(0.0), end.min(p.n_dims as f32 - 1.0)]
}

fn yarn_ramp(low: f32, high: f32, i0: usize) -> f32 {
    let y = ((i0 / 2) as f32 - low) / (high - low).max(0.001);
    1.0 - y.clamp(0.0, 1.0)
}

/// Fills `cache` with cos/sin pairs for position `pos` (ggml_rope_cache_init).
pub fn fill_cache(
    p: &RopeParams,
    pos: f32,
    freq_factors: Option<&[f32]>,
    corr: [f32; 2],
    cache: &mut [f32],
) {
    let theta_scale = p.freq_base.powf(-2.0 / p.n_dims as f32);
    let mut theta = pos;
    let mut i0 = 0;
    while i0 + 1 < cache.len() {
        let ff = freq_factors.map_or(1.0, |f| if i0 / 2 < f.len() { f[i0 / 2] } else { 1.0 });
        let theta_extrap = theta / ff;
        let theta_interp = p.freq_scale * theta_extrap;
        let mut th = theta_interp;
        let mut mscale = p.attn_factor;
        if p.ext_factor != 0.0 {
            let ramp_mix = yarn_ramp(corr[0], corr[1], i0) * p.ext_factor;
            th = theta_interp * (1.0 - ramp_mix) + theta_extrap * ramp_mix;
            mscale *= 1.0 + 0.1 * (1.0 / p.freq_scale).ln();
        }
        cache[i0] = th.cos() * mscale;
        cache[i0 + 1] = th.sin() * mscale;
        theta *= theta_scale;
        i0 += 2;
    }
}

pub fn rope(node: &Node, ctx: &ThreadCtx, p: &RopeParams) {
    let (a, pos_t, d) = (node.src(0), node.src(1), &node.dst);
    let ne0 = d.ne[0];
    // Positions hold ne[2] i32, freq factors n_dims/2 f32 (supports).
    let pos = pos_t.elems::<i32>(a.ne[2]);
    let ff = node.src[2].as_ref().map(|f| f.elems::<f32>(f.ne[0]));
    let cf = cache_floats(node);
    // scratch_bytes reserved one cache per thread, and an f32 row for f16 / bf16 tensors.
    let area = ctx.thread_area(0, thread_floats(node) * 4);
    let cache = &mut area.carve::<f32>(0, cf)[..ne0 & !1];
    let mut row32 = (d.ty != DType::F32).then(|| &mut area.carve::<f32>(cf * 4, cf)[..ne0]);
    let half = ctx.kernels.kernels(d.ty).filter(|_| d.ty != DType::F32);
    let (to_f32, from_f32) = half.map_or((None, None), |k| (Some(k.to_f32), k.from_f32));
    let corr = corr_dims(p);
    let (r0, r1) = split_range(d.nrows(), ctx.ith, ctx.nth);
    let mut last_i2 = usize::MAX;
    let (nd, off) = (p.n_dims, p.n_offs);
    for r in r0..r1 {
        let (i1, i2, i3) = d.unflatten_row(r);
        if i2 != last_i2 {
            fill_cache(p, pos[i2] as f32, ff, corr, cache);
            last_i2 = i2;
        }
        // This thread owns dst row r. dst is either src's memory (in-place allocation) or
        // a separate tensor: copy first unless they are the same row, then rotate dst's row
        // in place.
        let neox = p.mode == MODE_NEOX;
        if let Some(r32) = row32.as_deref_mut() {
            // f16 / bf16: rotated in f32 and rounded once, as ggml's rope does for f16.
            let (row, [sx]) = d.row_io::<u8, 1>((i1, i2, i3), [(a, (i1, i2, i3))]);
            let x = match sx {
                Src::Row(x) => x,
                Src::Dst => &*row,
            };
            (to_f32.expect("f16 / bf16 kernels"))(x, r32);
            (ctx.kernels.rope.rotate_pairs)(r32, cache, nd, off, neox);
            (from_f32.expect("f16 / bf16 from f32"))(r32, row);
            continue;
        }
        let (row, [sx]) = d.row_io::<f32, 1>((i1, i2, i3), [(a, (i1, i2, i3))]);
        if let Src::Row(x) = sx {
            row.copy_from_slice(x);
        }
        (ctx.kernels.rope.rotate_pairs)(row, cache, nd, off, neox);
    }
}

