//! Prefill attention's products on the AMX tiles (`SMEPILOT_AMX_ATTN=1` where the process
//! drives AMX): K and V of every head split once per call into bf16 hi and lo halves in
//! tile layout (K per 16-key block and 32-dimension step, V per 32-key step and 16-channel
//! block), Q and P split per block, three tile products per operand pair
//! (`kernels::amx::attn`), f32 sums in another order than ggml's. Then 16-query blocks from
//! the node's queue, each through the tiles of keys with the online softmax of
//! [`block`](super::block).

use super::block::{self, Params, QBlock, KV_TILE};
use super::Node;
use crate::dtype::DType;
use crate::kernels::amx::attn::{PAIR, STEP};
use crate::kernels::amx::stage::{attn_a_pair, attn_k_pair, attn_v_pair, AttnSession};
use crate::kernels::attn::BLOCK;
use crate::kernels::KernelSet;
use crate::threadpool::ThreadCtx;

/// Largest split copy of K and V (beyond, the vector form runs, reading the cache in place).
const KV_MAX_BYTES: usize = 256 << 20;

/// The scratch: K and V of every head in tile layout (`kv` bytes: `k_head` per K head, then
/// `v_head` per V head), then `per_thread` bytes per thread; `n_kb` 16-key blocks.
pub struct Layout {
    n_kb: usize,
    k_head: usize,
    v_head: usize,
    pub kv: usize,
    pub per_thread: usize,
}

/// The tile form where the process drives AMX and allows it, for head sizes the tiles take
/// (K's a multiple of a 32-element step) and caches whose split fits.
pub fn layout(node: &Node, ks: &KernelSet) -> Option<Layout> {
    let (q, k, v) = (node.src(0), node.src(1), node.src(2));
    let (dk, dv, n_kv) = (q.ne[0], v.ne[0], k.ne[1]);
    let allowed = ks.matrix == Some(crate::kernels::registry::MatrixUnit::Amx)
        && crate::kernels::amx::available()
        && dk.is_multiple_of(32)
        && k.ty == DType::F16
        && test_form::get().unwrap_or_else(|| crate::config::get().is_ok_and(|c| c.amx_attn));
    if !allowed {
        return None;
    }
    // Whole tiles: the last one's missing keys are zeros, as in ggml.
    let n_kb = n_kv.div_ceil(KV_TILE) * (KV_TILE / BLOCK);
    let (k_head, v_head) = (n_kb * (dk / STEP) * PAIR, n_kb * BLOCK / STEP * (dv / 16) * PAIR);
    // Q block, one tile's scores / weights of 16 rows, output block, Q's and P's pairs.
    let per_thread = (BLOCK * dk + BLOCK * dv) * 4 + (dk / STEP + KV_TILE / STEP) * PAIR;
    let kv = k_head * k.ne[2] * k.ne[3] + v_head * v.ne[2] * v.ne[3];
    (kv <= KV_MAX_BYTES).then_some(Layout { n_kb, k_head, v_head, kv, per_thread: super::round64(per_thread) })
}

/// Tests pick the form per run instead of per process (SMEPILOT_AMX_ATTN is read once).
pub mod test_form {
    use std::sync::atomic::{AtomicU8, Ordering};
    static TILES: AtomicU8 = AtomicU8::new(0);

    /// None: the configuration decides; Some(true): the tiles where AMX runs.
    #[cfg(test)]
    pub fn set(tiles: Option<bool>) {
        TILES.store(tiles.map_or(0, |t| 1 + t as u8), Ordering::SeqCst);
    }

    pub fn get() -> Option<bool> {
        match TILES.load(Ordering::Relaxed) {
            0 => None,
            v => Some(v == 2),
        }
    }
}

pub fn run(node: &Node, ctx: &ThreadCtx, b: &Layout, p: Params) {
    let (q, k, v) = (node.src(0), node.src(1), node.src(2));
    let (dk, dv, n_kv) = (q.ne[0], v.ne[0], k.ne[1]);
    let (n_q, n_head) = (q.ne[1], q.ne[2]);
    let (n_kh, n_vh) = (k.ne[2] * k.ne[3], v.ne[2] * v.ne[3]);
    // Byte offsets in the shared scratch of head hk's K and head hv's V.
    let k_at = |hk: usize| hk * b.k_head;
    let v_at = |hv: usize| n_kh * b.k_head + hv * b.v_head;

    // Phase 1: K and V of every head into tile layout, heads split.
    let (t0, t1) = super::super::split_range(n_kh + n_vh, ctx.ith, ctx.nth);
    for t in t0..t1 {
        convert_head(node, ctx, t, b.n_kb, if t < n_kh { k_at(t) } else { v_at(t - n_kh) }, if t < n_kh { b.k_head } else { b.v_head });
    }
    ctx.barrier();

    // This thread's own part of the scratch, after the shared K/V.
    let area = ctx.thread_area(b.kv, b.per_thread);
    let qb = area.carve::<f32>(0, BLOCK * dk);
    let ob = area.carve::<f32>(BLOCK * dk * 4, BLOCK * dv);
    let pair_area = area.carve::<u8>((BLOCK * dk + BLOCK * dv) * 4, b.per_thread - (BLOCK * dk + BLOCK * dv) * 4);
    let n_tiles = n_kv.div_ceil(KV_TILE);
    let n_qb = n_q.div_ceil(BLOCK);
    let tasks = n_qb * n_head * q.ne[3];
    loop {
        let task = ctx.next_chunk();
        if task >= tasks {
            break;
        }
        let (qblk, iq2, iq3) = (task % n_qb, (task / n_qb) % n_head, task / (n_qb * n_head));
        let blk = QBlock { iq2, iq3, i0: qblk * BLOCK, rows: (n_q - qblk * BLOCK).min(BLOCK) };
        let (ik2, ik3) = (iq2 / (n_head / k.ne[2]), iq3 / (q.ne[3] / k.ne[3]));
        let (iv2, iv3) = (iq2 / (n_head / v.ne[2]), iq3 / (q.ne[3] / v.ne[3]));
        let (hk, hv) = (ik3 * k.ne[2] + ik2, iv3 * v.ne[2] + iv2);
        load_q(&blk, node, qb);
        let mrows = blk.mask_rows(node);
        let (mut m_run, mut s_run, mut ms) = ([f32::NEG_INFINITY; BLOCK], [0f32; BLOCK], [1f32; BLOCK]);
        ob.fill(0.0);
        // Written in phase 1, read-only now.
        let mut products = Block::new(ctx.shared::<u8>(k_at(hk), b.k_head), ctx.shared::<u8>(v_at(hv), b.v_head), qb, dk, dv, &mut pair_area[..]);
        let mut s = [0f32; BLOCK * KV_TILE];
        for t in 0..n_tiles {
            if block::hidden(&mrows, blk.rows, t, n_kv) {
                continue;
            }
            products.scores(t, &mut s);
            block::softmax_tile(ctx, node, &p, &blk, &mrows, t, &mut s, &mut m_run, &mut s_run, &mut ms);
            block::rescale(ob, dv, &ms);
            products.pv(t, &s, ob);
        }
        block::finish(node, &p, &blk, &m_run, &mut s_run, ob);
    }
}

/// Phase 1 for head t (K heads first, then V heads) into its `bytes` at `at` of the shared
/// scratch: K per 16-key block and 32-dimension step, V per 32-key step and 16-channel
/// block, as `kernels::amx::attn` pairs; keys past the cache's are zero.
fn convert_head(node: &Node, ctx: &ThreadCtx, t: usize, n_kb: usize, at: usize, bytes: usize) {
    let (k, v) = (node.src(1), node.src(2));
    let n_kv = k.ne[1];
    let n_kh = k.ne[2] * k.ne[3];
    // Head t's area is this thread's (the caller's split).
    let out = ctx.shared_mut::<u8>(at, bytes);
    if t < n_kh {
        let (h2, h3) = (t % k.ne[2], t / k.ne[2]);
        let steps = k.ne[0] / STEP;
        for kb in 0..n_kb {
            let nkeys = n_kv.saturating_sub(kb * BLOCK).min(BLOCK);
            for s in 0..steps {
                let pair = &mut out[(kb * steps + s) * PAIR..][..PAIR];
                // K rows hold ne[0] f16 (supports): the step's 64 bytes of each key.
                let rows = if nkeys == 0 { &[][..] } else { k.bytes_at::<u8>(k.row_offset(kb * BLOCK, h2, h3) + 2 * STEP * s, (nkeys - 1) * k.nb[1] + 2 * STEP) };
                attn_k_pair(rows, k.nb[1], nkeys, pair);
            }
        }
    } else {
        let hv = t - n_kh;
        let (h2, h3) = (hv % v.ne[2], hv / v.ne[2]);
        let blocks = v.ne[0] / 16;
        for ks in 0..n_kb * BLOCK / STEP {
            let nkeys = n_kv.saturating_sub(ks * STEP).min(STEP);
            for c in 0..blocks {
                let pair = &mut out[(ks * blocks + c) * PAIR..][..PAIR];
                let rows = if nkeys == 0 { &[][..] } else { v.bytes_at::<u8>(v.row_offset(ks * STEP, h2, h3) + 32 * c, (nkeys - 1) * v.nb[1] + 32) };
                attn_v_pair(rows, v.nb[1], nkeys, pair);
            }
        }
    }
}

/// One query block on the tiles: its Q pairs (built once), a P pair area, the head's K and V
/// pairs and this thread's tile session.
struct Block<'a> {
    session: AttnSession,
    kt: &'a [u8],
    vt: &'a [u8],
    q: &'a [u8],
    p: &'a mut [u8],
    dk: usize,
    dv: usize,
}

impl<'a> Block<'a> {
    fn new(kt: &'a [u8], vt: &'a [u8], qb: &[f32], dk: usize, dv: usize, area: &'a mut [u8]) -> Block<'a> {
        let steps = dk / STEP;
        let (q, p) = area.split_at_mut(steps * PAIR);
        for s in 0..steps {
            attn_a_pair(&qb[STEP * s..], dk, &mut q[s * PAIR..(s + 1) * PAIR]);
        }
        Block { session: AttnSession::begin(), kt, vt, q, p, dk, dv }
    }

    /// Scores of the query block against tile t's keys.
    fn scores(&mut self, t: usize, s: &mut [f32; BLOCK * KV_TILE]) {
        let steps = self.dk / STEP;
        let k_block = steps * PAIR;
        let blocks = KV_TILE / BLOCK;
        let kb0 = t * blocks;
        self.session.scores(self.q, &self.kt[kb0 * k_block..], k_block, steps, blocks, s);
    }

    /// ob += P V over tile t (P's rows `sp`, 16 x 64).
    fn pv(&mut self, t: usize, sp: &[f32], ob: &mut [f32]) {
        let steps = KV_TILE / STEP;
        for s in 0..steps {
            attn_a_pair(&sp[STEP * s..], KV_TILE, &mut self.p[s * PAIR..(s + 1) * PAIR]);
        }
        let v_step = self.dv / 16 * PAIR;
        self.session.pv(self.p, &self.vt[t * steps * v_step..], v_step, steps, self.dv, ob);
    }
}

/// Q rows in f32 into `qb` (16 x dk; ggml's tiled path does not round them), padding
/// rows zero.
fn load_q(blk: &QBlock, node: &Node, qb: &mut [f32]) {
    let q = node.src(0);
    let dk = q.ne[0];
    qb.fill(0.0);
    for i in 0..blk.rows {
        // Q rows hold dk f32 (supports).
        qb[i * dk..(i + 1) * dk].copy_from_slice(&q.row::<f32>(blk.i0 + i, blk.iq2, blk.iq3)[..dk]);
    }
}
