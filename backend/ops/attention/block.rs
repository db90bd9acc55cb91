//! What the blocked forms of prefill attention share: a block of 16 queries of one head,
//! its mask rows and which tiles they hide; and ggml-cpu's tiled online softmax over 64-key
//! tiles (GGML_FA_TILE_KV), which fixes where the running maximum may change and so the
//! results (the streamed path's default form, and the tile form).

use super::super::{alibi_slope, Node};
use crate::threadpool::ThreadCtx;
use crate::kernels::attn::BLOCK;

/// Keys per tile of the online softmax.
pub const KV_TILE: usize = 64;

pub const F16_NEG_INF: u16 = 0xFC00;

/// The node's parameters: `scale` already divided by `softcap` (when soft-capping), `sinks`
/// per head.
#[derive(Clone, Copy)]
pub struct Params<'a> {
    pub scale: f32,
    pub max_bias: f32,
    pub softcap: f32,
    pub sinks: Option<&'a [f32]>,
}

/// Up to 16 queries of one head: head `iq2` of sequence `iq3`, queries `i0 .. i0 + rows`.
#[derive(Clone, Copy)]
pub struct QBlock {
    pub iq2: usize,
    pub iq3: usize,
    pub i0: usize,
    pub rows: usize,
}

impl QBlock {
    /// Row i's mask row as bytes (2 per key; None without a mask).
    pub fn mask_bytes<'a>(&self, node: &'a Node, i: usize) -> Option<&'a [u8]> {
        let n_kv = node.src(1).ne[1];
        // Mask rows hold at least n_kv f16 (supports).
        node.src[3].as_ref().map(|m| &m.row::<u8>(self.i0 + i, self.iq2 % m.ne[2], self.iq3 % m.ne[3])[..2 * n_kv])
    }

    /// The block's mask rows (None without a mask, and for padding rows).
    pub fn mask_rows<'a>(&self, node: &'a Node) -> [Option<&'a [u16]>; BLOCK] {
        let n_kv = node.src(1).ne[1];
        let mask = node.src[3].as_ref();
        // Mask rows hold at least n_kv f16 (supports).
        std::array::from_fn(|i| {
            (i < self.rows)
                .then(|| mask.map(|m| &m.row::<u16>(self.i0 + i, self.iq2 % m.ne[2], self.iq3 % m.ne[3])[..n_kv]))
                .flatten()
        })
    }

}

/// Whether the mask hides tile t (of a cache of `n_kv` keys) from every query of a block
/// of `rows` queries.
pub fn hidden(mrows: &[Option<&[u16]>; BLOCK], rows: usize, t: usize, n_kv: usize) -> bool {
    let keys = t * KV_TILE..((t + 1) * KV_TILE).min(n_kv);
    mrows[0].is_some() && mrows[..rows].iter().all(|m| m.unwrap()[keys.clone()].iter().all(|&x| x == F16_NEG_INF))
}

/// The largest of `row` (ggml's `a > b ? a : b` per element), in 16 lanes: the same value
/// as one running maximum whatever the order (a maximum never rounds), without its chain
/// of dependent compares.
pub fn row_max(row: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; 16];
    let chunks = row.chunks_exact(16);
    let tail = chunks.remainder();
    for c in chunks {
        for (m, &x) in lanes.iter_mut().zip(c) {
            *m = if *m > x { *m } else { x };
        }
    }
    let m = lanes.iter().copied().fold(f32::NEG_INFINITY, |m, x| if m > x { m } else { x });
    tail.iter().copied().fold(m, |m, x| if m > x { m } else { x })
}

// ggml-cpu's tiled online softmax (GGML_FA_TILE_KV): the default streamed form and the tile
// form.

const BLOCKS_PER_TILE: usize = KV_TILE / BLOCK;

/// Tile t's raw scores `s` (16 rows of 64) to the block's weights, in place: scaled, capped
/// and masked as ggml finishes them, then the online softmax step. `m_run` and `s_run` (per
/// row the running maximum and sum) move on; `ms` gets per row the factor the block's
/// output must be scaled by before this tile's P V is added (1: unchanged).
#[allow(clippy::too_many_arguments)]
pub fn softmax_tile(ctx: &ThreadCtx, node: &Node, p: &Params, qb: &QBlock, mrows: &[Option<&[u16]>; BLOCK], t: usize, s: &mut [f32], m_run: &mut [f32], s_run: &mut [f32], ms: &mut [f32]) {
    let n_kv = node.src(1).ne[1];
    let slope = alibi_slope(p.max_bias, node.src(0).ne[2], qb.iq2);
    let attn = &ctx.kernels.attn;
    for bt in 0..BLOCKS_PER_TILE {
        let kb = t * BLOCKS_PER_TILE + bt;
        let (k0, nk) = (kb * BLOCK, n_kv.saturating_sub(kb * BLOCK).min(BLOCK));
        for (i, mrow) in mrows.iter().enumerate().take(qb.rows) {
            let out = &mut s[i * KV_TILE + bt * BLOCK..][..BLOCK];
            if nk == 0 {
                out.fill(f32::NEG_INFINITY);
                continue;
            }
            let mut si: [f32; BLOCK] = (&*out).try_into().expect("a block of scores");
            let sc = if p.softcap != 0.0 {
                si.iter_mut().for_each(|x| *x = (*x * p.scale).tanh() * p.softcap);
                1.0
            } else {
                p.scale
            };
            // k0 + nk <= n_kv.
            let m = mrow.map(|m| &m[k0..k0 + nk]);
            (attn.finish_scores)(&si, sc, slope, m, nk, out);
        }
    }
    for i in 0..BLOCK {
        ms[i] = 1.0;
        let row = &mut s[i * KV_TILE..(i + 1) * KV_TILE];
        let tile_max = if i < qb.rows { row_max(row) } else { f32::NEG_INFINITY };
        if tile_max == f32::NEG_INFINITY {
            row.fill(0.0); // nothing of this tile reaches the row
            continue;
        }
        let m_new = m_run[i].max(tile_max);
        if m_new > m_run[i] {
            let f = (m_run[i] - m_new).exp();
            ms[i] = f;
            s_run[i] *= f;
        }
        m_run[i] = m_new;
        s_run[i] = (s_run[i] as f64 + (ctx.kernels.vmath.soft_max)(row, m_new)) as f32;
    }
}

/// The block's output rows (16 x dv in `ob`, scaled to this tile by `ms`) before a tile's
/// P V: a factor of 1 leaves a row as it is, bit for bit.
pub fn rescale(ob: &mut [f32], dv: usize, ms: &[f32]) {
    for (i, &f) in ms.iter().enumerate().take(BLOCK) {
        if f != 1.0 {
            ob[i * dv..(i + 1) * dv].iter_mut().for_each(|o| *o *= f);
        }
    }
}

/// The block's output: the sink folded in, the rows over their sums, into dst.
pub fn finish(node: &Node, p: &Params, qb: &QBlock, m_run: &[f32], s_run: &mut [f32], ob: &mut [f32]) {
    let dv = node.src(2).ne[0];
    for i in 0..qb.rows {
        if let Some(sk) = p.sinks.map(|sk| sk[qb.iq2]) {
            let (mut ms, mut vs) = (1.0f32, 1.0f32);
            if sk > m_run[i] {
                ms = (m_run[i] - sk).exp();
                ob[i * dv..(i + 1) * dv].iter_mut().for_each(|o| *o *= ms);
            } else {
                vs = (sk - m_run[i]).exp();
            }
            s_run[i] = s_run[i].mul_add(ms, vs); // fused, as ggml's compiler emits it
        }
        let inv = if s_run[i] == 0.0 { 0.0 } else { 1.0 / s_run[i] };
        // Output is [dv, n_head, n_q, ne3]: row (iq2, i0 + i, iq3), this block's alone.
        let out = node.dst.row_mut::<f32>(qb.iq2, qb.i0 + i, qb.iq3);
        for (o, &a) in out.iter_mut().zip(&ob[i * dv..(i + 1) * dv]) {
            *o = a * inv;
        }
    }
}
