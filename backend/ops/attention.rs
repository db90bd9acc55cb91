//! FLASH_ATTN_EXT: softmax(scale * Q K^T + mask) V, with ALiBi, logit soft-capping and
//! attention sinks. K and V are the f16 KV cache.
//!
//! Two paths:
//! * blocked (prefill: 16 or more queries, on the fast kernel tier): K and V of every head
//!   converted once per call, then 16-query blocks taken from the node's work queue. Each
//!   block runs ggml-cpu's tiled algorithm: keys in tiles of 64 (a tile the mask hides from
//!   every query of the block is skipped), online softmax across tiles (ggml's exp, per-tile
//!   sums in f64), P V accumulated per tile. Its products run in one of two forms:
//!   - on the vector units (`KvForm::F32`: K and V to f32, K transposed per 16-key block), in
//!     ggml-cpu's exact operation order, so results are bit-identical to the CPU backend's;
//!   - on the AMX tiles (`KvForm::Tiles`, where the process drives AMX and
//!     `SMEPILOT_AMX_ATTN=1`): K and V split into bf16 hi and lo halves in tile layout,
//!     Q and P split per block, three tile products per operand pair
//!     (`kernels::amx::attn`), f32 sums in another order;
//! * per query row (decode, and the portable reference): Q rounded to f16 as ggml-cpu does,
//!   two passes over the keys, V accumulated in f32.

use super::{alibi_slope, need, split_range, Node, Unsupported};
use crate::dtype::DType;
use crate::threadpool::ThreadCtx;
use crate::kernels::attn::BLOCK;
use crate::kernels::KernelSet;

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
    let g = gqa_group(node);
    let q16 = (g * dk * 2 + 63) & !63;
    let acc = (g * dv * 4 + 63) & !63;
    let scores = (g * n_kv * 4 + 63) & !63;
    (q16, acc, q16 + acc + scores)
}

/// Query heads that read one K/V head (GQA) and run together on the per-row path; 1 where
/// the heads do not divide evenly or the group is larger than [`MAX_GQA`].
fn gqa_group(node: &Node) -> usize {
    let (n_head, n_kh, n_vh) = (node.src(0).ne[2], node.src(1).ne[2], node.src(2).ne[2]);
    match n_head.checked_div(n_kh) {
        Some(g) if n_kh == n_vh && n_head.is_multiple_of(n_kh) && g <= MAX_GQA => g,
        _ => 1,
    }
}

/// Largest f32 copy of K and V the blocked path makes (beyond, long contexts take the
/// per-row path rather than a scratch area this large).
const BLOCKED_KV_MAX_BYTES: usize = 256 << 20;

/// How the blocked path holds K and V and runs its products.
#[derive(Clone, Copy, PartialEq, Eq)]
enum KvForm {
    /// f32 K (transposed per 16-key block) and V, vector kernels.
    F32,
    /// bf16 hi / lo tile pairs (`kernels::amx::attn`): per head, K per 16-key block and
    /// 32-dimension step, V per 32-key step and 16-channel block.
    #[cfg(target_arch = "x86_64")]
    Tiles,
}

/// The blocked path's scratch: K and V of every head in `form` (`kv` bytes), then
/// `per_thread` bytes per thread; `n_kb` 16-key blocks.
struct BlockedLayout {
    form: KvForm,
    n_kb: usize,
    k_head: usize,
    v_head: usize,
    kv: usize,
    per_thread: usize,
}

/// Keys per tile of the online softmax: ggml-cpu's GGML_FA_TILE_KV, which fixes where the
/// running maximum may change and so the results.
const KV_TILE: usize = 64;
const BLOCKS_PER_TILE: usize = KV_TILE / BLOCK;

/// The tile form where the process drives AMX and allows it, for head sizes the tiles
/// take (K's a multiple of a 32-element step).
fn tile_form(dk: usize, ks: &KernelSet) -> Option<KvForm> {
    #[cfg(target_arch = "x86_64")]
    if ks.matrix == Some(crate::kernels::registry::MatrixUnit::Amx)
        && crate::kernels::amx::available()
        && dk.is_multiple_of(32)
        && test_form::get().unwrap_or_else(|| crate::config::get().is_ok_and(|c| c.amx_attn))
    {
        return Some(KvForm::Tiles);
    }
    let _ = (dk, ks);
    None
}

/// Tests pick the form per run instead of per process (SMEPILOT_AMX_ATTN is read once).
#[cfg(target_arch = "x86_64")]
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

fn blocked(node: &Node, ks: &KernelSet) -> Option<BlockedLayout> {
    let (q, k, v) = (node.src(0), node.src(1), node.src(2));
    let (dk, dv, n_kv) = (q.ne[0], v.ne[0], k.ne[1]);
    if q.ne[1] < BLOCK || !ks.attn.blocked || !dv.is_multiple_of(16) {
        return None;
    }
    let form = tile_form(dk, ks).unwrap_or(KvForm::F32);
    // Whole tiles: the last one's missing keys are zeros, as in ggml.
    let n_kb = n_kv.div_ceil(KV_TILE) * BLOCKS_PER_TILE;
    // Q block, one tile's scores / weights of 16 rows, output block (and for the tiles Q's
    // and P's pairs).
    let (k_head, v_head, pairs) = match form {
        KvForm::F32 => (n_kb * BLOCK * dk * 4, n_kb * BLOCK * dv * 4, 0),
        #[cfg(target_arch = "x86_64")]
        KvForm::Tiles => {
            use crate::kernels::amx::attn::{PAIR, STEP};
            (n_kb * (dk / STEP) * PAIR, n_kb * BLOCK / STEP * (dv / 16) * PAIR, (dk / STEP + KV_TILE / STEP) * PAIR)
        }
    };
    let per_thread = (BLOCK * dk + BLOCK * KV_TILE + BLOCK * dv) * 4 + pairs;
    let kv = k_head * k.ne[2] * k.ne[3] + v_head * v.ne[2] * v.ne[3];
    (kv <= BLOCKED_KV_MAX_BYTES).then_some(BlockedLayout {
        form,
        n_kb,
        k_head,
        v_head,
        kv,
        per_thread,
    })
}

/// Whether the node takes the blocked path (prefill) rather than the per-row one.
pub fn takes_blocked_path(node: &Node, ks: &KernelSet) -> bool {
    blocked(node, ks).is_some()
}

/// Whether the node's products run on the matrix unit's tiles (the blocked path's tile form).
pub fn takes_tile_path(node: &Node, ks: &KernelSet) -> bool {
    blocked(node, ks).is_some_and(|b| b.form != KvForm::F32)
}

pub fn scratch_bytes(node: &Node, nth: usize, ks: &KernelSet) -> usize {
    match blocked(node, ks) {
        Some(b) => b.kv + b.per_thread * nth,
        None => per_thread(node).2 * nth,
    }
}

/// Two passes per query row: scores (QK^T, scale, soft-cap, mask) and their maximum,
/// then exp-weighted V accumulation with f16 V converted in registers. The query heads
/// that share a K/V head (GQA) run together, each K and V row read once for all of them
/// (from memory at depth, where the cache outgrows the caches); each head's arithmetic,
/// and so its bits, is that of a head alone.
pub fn flash_attn(node: &Node, ctx: &ThreadCtx, scale: f32, max_bias: f32, softcap: f32) {
    let n_head = node.src(0).ne[2];
    // Soft-capping divides the scale first (tanh(x * scale / cap) * cap), as ggml-cpu.
    let scale = if softcap != 0.0 { scale / softcap } else { scale };
    // Sinks hold n_head f32 (supports).
    let sinks = node.src[4].as_ref().map(|s| s.elems::<f32>(n_head));
    if let Some(b) = blocked(node, ctx.kernels) {
        return flash_attn_blocked(node, ctx, &b, scale, max_bias, softcap, sinks);
    }
    let (q, k, v, d) = (node.src(0), node.src(1), node.src(2), &node.dst);
    let mask = node.src[3].as_ref();
    let (dk, dv, n_kv) = (q.ne[0], v.ne[0], k.ne[1]);
    let n_q = q.ne[1];
    let f16k = ctx.kernels.kernels(DType::F16).unwrap();
    let axpy_f16 = ctx.kernels.attn.axpy_f16;
    let (q_to_f16, kq_dot) = (f16k.from_f32.unwrap(), f16k.vec_dot.unwrap());

    // Work units: runs of up to `run` heads of one GQA group at one (query, batch), halved
    // until every thread has one where the groups alone are fewer than the threads.
    let g = gqa_group(node);
    let groups = n_q * (n_head / g) * q.ne[3];
    let mut run = g;
    while run > 1 && groups * g.div_ceil(run) < ctx.nth {
        run = run.div_ceil(2);
    }
    let per_group = g.div_ceil(run);
    let (q16_bytes, acc_bytes, per) = per_thread(node);
    // scratch_bytes reserved `per` bytes for each thread, room for a whole group.
    let area = ctx.thread_area(0, per);
    let q16 = area.carve::<u8>(0, g * dk * 2);
    let acc = area.carve::<f32>(q16_bytes, g * dv);
    let scores = area.carve::<f32>(q16_bytes + acc_bytes, g * n_kv);

    let (u0, u1) = split_range(groups * per_group, ctx.ith, ctx.nth);
    for u in u0..u1 {
        let (gi, part) = (u / per_group, u % per_group);
        let iq1 = gi % n_q;
        let kh = (gi / n_q) % (n_head / g);
        let iq3 = gi / (n_q * (n_head / g));
        let heads = kh * g + part * run..(kh * g + (part + 1) * run).min((kh + 1) * g);
        let nh = heads.len();
        let (ik2, ik3) = (heads.start / (n_head / k.ne[2]), iq3 / (q.ne[3] / k.ne[3]));
        let (iv2, iv3) = (heads.start / (n_head / v.ne[2]), iq3 / (q.ne[3] / v.ne[3]));
        let mut m_max = [f32::NEG_INFINITY; MAX_GQA];
        let mut mrows: [Option<&[half::f16]>; MAX_GQA] = [None; MAX_GQA];
        let mut slopes = [0f32; MAX_GQA];
        for (h, iq2) in heads.clone().enumerate() {
            // Q rows hold dk f32, mask rows at least n_kv f16 (supports).
            q_to_f16(&q.row::<f32>(iq1, iq2, iq3)[..dk], &mut q16[h * dk * 2..(h + 1) * dk * 2]);
            mrows[h] = mask.map(|m| &m.row::<half::f16>(iq1, iq2 % m.ne[2], iq3 % m.ne[3])[..n_kv]);
            slopes[h] = alibi_slope(max_bias, n_head, iq2);
            m_max[h] = sinks.map_or(f32::NEG_INFINITY, |sk| sk[iq2]);
        }
        for ic in 0..n_kv {
            // K rows are packed f16 rows of dk elements (supports): read once for the run.
            let krow = &k.row::<u8>(ic, ik2, ik3)[..dk * 2];
            for h in 0..nh {
                let sc = &mut scores[h * n_kv + ic];
                let mv = mrows[h].map_or(0.0, |m| slopes[h] * m[ic].to_f32());
                if mv == f32::NEG_INFINITY {
                    *sc = f32::NEG_INFINITY;
                    continue;
                }
                let mut s = kq_dot(dk, krow, &q16[h * dk * 2..(h + 1) * dk * 2]) * scale;
                if softcap != 0.0 {
                    s = softcap * s.tanh();
                }
                *sc = s + mv;
                m_max[h] = m_max[h].max(*sc);
            }
        }

        acc[..nh * dv].fill(0.0);
        let mut sum = [0f32; MAX_GQA];
        for ic in 0..n_kv {
            // V rows are packed f16 rows of dv elements (supports): read once for the run.
            let vrow = &v.row::<u8>(ic, iv2, iv3)[..dv * 2];
            for h in 0..nh {
                let sc = scores[h * n_kv + ic];
                if sc == f32::NEG_INFINITY {
                    continue;
                }
                let w = (sc - m_max[h]).exp();
                sum[h] += w;
                axpy_f16(&mut acc[h * dv..(h + 1) * dv], vrow, w);
            }
        }
        for (h, iq2) in heads.enumerate() {
            if let Some(sk) = sinks {
                sum[h] += (sk[iq2] - m_max[h]).exp();
            }
            let inv = if sum[h] == 0.0 { 0.0 } else { 1.0 / sum[h] };
            // Output is [dv, n_head, n_q, ne3]: row (iq2, iq1, iq3), this unit's alone.
            let out = d.row_mut::<f32>(iq2, iq1, iq3);
            out.iter_mut().zip(&acc[h * dv..(h + 1) * dv]).for_each(|(o, &a)| *o = a * inv);
        }
    }
}

/// Most query heads per K/V head the per-row path runs together.
const MAX_GQA: usize = 64;

const F16_NEG_INF: u16 = 0xFC00;

/// The blocked path (see the module comment).
/// `scale` is already divided by `softcap` (when soft-capping); `sinks` per head.
fn flash_attn_blocked(
    node: &Node,
    ctx: &ThreadCtx,
    b: &BlockedLayout,
    scale: f32,
    max_bias: f32,
    softcap: f32,
    sinks: Option<&[f32]>,
) {
    let (q, k, v, d) = (node.src(0), node.src(1), node.src(2), &node.dst);
    let mask = node.src[3].as_ref();
    let (dk, dv, n_kv) = (q.ne[0], v.ne[0], k.ne[1]);
    let (n_q, n_head) = (q.ne[1], q.ne[2]);
    let n_kb = b.n_kb;
    let f16_to_f32 = ctx.kernels.kernels(DType::F16).unwrap().to_f32;
    let attn = &ctx.kernels.attn;
    let (n_kh, n_vh) = (k.ne[2] * k.ne[3], v.ne[2] * v.ne[3]);
    // Byte offsets in the shared scratch of head hk's K and head hv's V.
    let k_at = |hk: usize| hk * b.k_head;
    let v_at = |hv: usize| n_kh * b.k_head + hv * b.v_head;

    // Phase 1: K and V of every head into the form's layout, heads split.
    let (t0, t1) = split_range(n_kh + n_vh, ctx.ith, ctx.nth);
    for t in t0..t1 {
        match b.form {
            KvForm::F32 => f32_head(node, ctx, b, t, f16_to_f32),
            #[cfg(target_arch = "x86_64")]
            KvForm::Tiles => tiles::convert_head(node, ctx, t, b.n_kb, if t < n_kh { k_at(t) } else { v_at(t - n_kh) }, if t < n_kh { b.k_head } else { b.v_head }),
        }
    }
    ctx.barrier();

    // This thread's own part of the scratch, after the shared K/V.
    let area = ctx.thread_area(b.kv, b.per_thread);
    let qb = area.carve::<f32>(0, BLOCK * dk);
    let sp = area.carve::<f32>(BLOCK * dk * 4, BLOCK * KV_TILE);
    let ob = area.carve::<f32>((BLOCK * dk + BLOCK * KV_TILE) * 4, BLOCK * dv);
    // The tile form's Q and P pairs, after those.
    let tile_area = area.carve::<u8>((BLOCK * dk + BLOCK * KV_TILE + BLOCK * dv) * 4, b.per_thread - (BLOCK * dk + BLOCK * KV_TILE + BLOCK * dv) * 4);
    let n_tiles = n_kb / BLOCKS_PER_TILE;
    let n_qb = n_q.div_ceil(BLOCK);
    let tasks = n_qb * n_head * q.ne[3];
    loop {
        let task = ctx.next_chunk();
        if task >= tasks {
            break;
        }
        let (qblk, iq2, iq3) = (task % n_qb, (task / n_qb) % n_head, task / (n_qb * n_head));
        let (i0, rows) = (qblk * BLOCK, (n_q - qblk * BLOCK).min(BLOCK));
        let slope = alibi_slope(max_bias, n_head, iq2);
        let (ik2, ik3) = (iq2 / (n_head / k.ne[2]), iq3 / (q.ne[3] / k.ne[3]));
        let (iv2, iv3) = (iq2 / (n_head / v.ne[2]), iq3 / (q.ne[3] / v.ne[3]));
        let (hk, hv) = (ik3 * k.ne[2] + ik2, iv3 * v.ne[2] + iv2);
        // Q rows in f32 (ggml's tiled path does not round them), padding rows zero.
        qb.fill(0.0);
        for i in 0..rows {
            // Q rows hold dk f32 (supports).
            qb[i * dk..(i + 1) * dk].copy_from_slice(&q.row::<f32>(i0 + i, iq2, iq3)[..dk]);
        }
        // Mask rows hold at least n_kv f16 (supports).
        let mrows: [Option<&[u16]>; BLOCK] = std::array::from_fn(|i| {
            (i < rows)
                .then(|| mask.map(|m| &m.row::<u16>(i0 + i, iq2 % m.ne[2], iq3 % m.ne[3])[..n_kv]))
                .flatten()
        });
        // Online softmax state per row: running maximum, sum, and the output in `ob`.
        let mut m_run = [f32::NEG_INFINITY; BLOCK];
        let mut s_run = [0f32; BLOCK];
        ob.fill(0.0);
        let mut products = Products::new(b.form, ctx, b, qb, k_at(hk), v_at(hv), dk, dv, tile_area);
        let mut s = [0f32; BLOCK * KV_TILE];
        for t in 0..n_tiles {
            let keys = t * KV_TILE..((t + 1) * KV_TILE).min(n_kv);
            let hidden = mask.is_some()
                && (0..rows).all(|i| {
                    let m = mrows[i].unwrap();
                    m[keys.clone()].iter().all(|&x| x == F16_NEG_INF)
                });
            if hidden {
                continue;
            }
            products.scores(t, n_kv, &mut s);
            for bt in 0..BLOCKS_PER_TILE {
                let kb = t * BLOCKS_PER_TILE + bt;
                let (k0, nk) = (kb * BLOCK, n_kv.saturating_sub(kb * BLOCK).min(BLOCK));
                for i in 0..rows {
                    let out = &mut sp[i * KV_TILE + bt * BLOCK..][..BLOCK];
                    if nk == 0 {
                        out.fill(f32::NEG_INFINITY);
                        continue;
                    }
                    let mut si: [f32; BLOCK] = s[i * KV_TILE + bt * BLOCK..][..BLOCK].try_into().expect("a block of scores");
                    let sc = if softcap != 0.0 {
                        si.iter_mut()
                            .for_each(|x| *x = (*x * scale).tanh() * softcap);
                        1.0
                    } else {
                        scale
                    };
                    // k0 + nk <= n_kv.
                    let m = mrows[i].map(|m| &m[k0..k0 + nk]);
                    (attn.finish_scores)(&si, sc, slope, m, nk, out);
                }
            }
            for i in 0..BLOCK {
                let row = &mut sp[i * KV_TILE..(i + 1) * KV_TILE];
                let tile_max = if i < rows { row_max(row) } else { f32::NEG_INFINITY };
                if tile_max == f32::NEG_INFINITY {
                    row.fill(0.0); // nothing of this tile reaches the row
                    continue;
                }
                let m_new = m_run[i].max(tile_max);
                if m_new > m_run[i] {
                    let ms = (m_run[i] - m_new).exp();
                    ob[i * dv..(i + 1) * dv].iter_mut().for_each(|o| *o *= ms);
                    s_run[i] *= ms;
                }
                m_run[i] = m_new;
                s_run[i] = (s_run[i] as f64 + (ctx.kernels.vmath.soft_max)(row, m_new)) as f32;
            }
            let live = n_kv.saturating_sub(t * KV_TILE).min(KV_TILE);
            products.pv(t, live, sp, ob);
        }
        for i in 0..rows {
            if let Some(sk) = sinks.map(|sk| sk[iq2]) {
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
            // Output is [dv, n_head, n_q, ne3]: row (iq2, i0 + i, iq3).
            // dst is contiguous f32 of that shape; this task owns these rows.
            let out = d.row_mut::<f32>(iq2, i0 + i, iq3);
            for (o, &a) in out.iter_mut().zip(&ob[i * dv..(i + 1) * dv]) {
                *o = a * inv;
            }
        }
    }
}

/// The largest of `row` (ggml's `a > b ? a : b` per element), in 16 lanes: the same value
/// as one running maximum whatever the order (a maximum never rounds), without its chain
/// of dependent compares.
fn row_max(row: &[f32]) -> f32 {
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

/// Phase 1 of the vector form for head t (K heads first, then V heads): K transposed per
/// 16-key block, and V, to f32 in head t's area of the shared scratch.
fn f32_head(node: &Node, ctx: &ThreadCtx, b: &BlockedLayout, t: usize, f16_to_f32: fn(&[u8], &mut [f32])) {
    let (k, v) = (node.src(1), node.src(2));
    let (dk, dv, n_kv) = (k.ne[0], v.ne[0], k.ne[1]);
    let n_kh = k.ne[2] * k.ne[3];
    let kw = b.n_kb * BLOCK; // keys, padded
    let k_at = |hk: usize| hk * b.k_head;
    let v_at = |hv: usize| n_kh * b.k_head + hv * b.v_head;
    if t < n_kh {
        // Head t's area of k_head bytes is this thread's (the split above).
        let kt = ctx.shared_mut::<f32>(k_at(t), kw * dk);
        kt.fill(0.0);
        let mut row = [0f32; BLOCK];
        for ic in 0..n_kv {
            let (kb, j) = (ic / BLOCK, ic % BLOCK);
            for d0 in (0..dk).step_by(BLOCK) {
                let nd = (dk - d0).min(BLOCK);
                // K rows hold dk f16 (supports).
                f16_to_f32(&k.row::<u8>(ic, t % k.ne[2], t / k.ne[2])[2 * d0..2 * (d0 + nd)], &mut row[..nd]);
                for (dd, &x) in row[..nd].iter().enumerate() {
                    kt[(kb * dk + d0 + dd) * BLOCK + j] = x;
                }
            }
        }
    } else {
        let hv = t - n_kh;
        // As above, head hv's V area.
        let vf = ctx.shared_mut::<f32>(v_at(hv), kw * dv);
        vf[n_kv * dv..].fill(0.0);
        for ic in 0..n_kv {
            // V rows hold dv f16 (supports).
            f16_to_f32(&v.row::<u8>(ic, hv % v.ne[2], hv / v.ne[2])[..2 * dv], &mut vf[ic * dv..(ic + 1) * dv]);
        }
    }
}

/// One query block's products in the layout's form: scores of a 64-key tile into 16 rows of
/// 64 floats, and P V of a tile added into the output block.
enum Products<'a> {
    F32 { ctx: &'a ThreadCtx<'a>, kt: &'a [f32], vf: &'a [f32], qb: &'a [f32], dk: usize, dv: usize },
    #[cfg(target_arch = "x86_64")]
    Tiles(tiles::Block<'a>),
}

impl<'a> Products<'a> {
    #[allow(clippy::too_many_arguments)]
    fn new(form: KvForm, ctx: &'a ThreadCtx<'a>, b: &BlockedLayout, qb: &'a [f32], k_off: usize, v_off: usize, dk: usize, dv: usize, tile_area: &'a mut [u8]) -> Products<'a> {
        let kw = b.n_kb * BLOCK; // keys, padded
        #[cfg(not(target_arch = "x86_64"))]
        let _ = tile_area; // the tile form's area
        match form {
            // Written in phase 1, read-only now.
            KvForm::F32 => Products::F32 { ctx, kt: ctx.shared::<f32>(k_off, kw * dk), vf: ctx.shared::<f32>(v_off, kw * dv), qb, dk, dv },
            #[cfg(target_arch = "x86_64")]
            KvForm::Tiles => Products::Tiles(tiles::Block::new(ctx.shared::<u8>(k_off, b.k_head), ctx.shared::<u8>(v_off, b.v_head), qb, dk, dv, tile_area)),
        }
    }

    /// Scores of the query block against tile t's keys (blocks with no key left as they
    /// are: the caller masks them).
    fn scores(&mut self, t: usize, n_kv: usize, s: &mut [f32; BLOCK * KV_TILE]) {
        match self {
            Products::F32 { ctx, kt, qb, dk, .. } => {
                let mut blk = [[0f32; BLOCK]; BLOCK];
                for bt in 0..BLOCKS_PER_TILE {
                    let kb = t * BLOCKS_PER_TILE + bt;
                    if kb * BLOCK >= n_kv {
                        break;
                    }
                    (ctx.kernels.attn.scores_block)(qb, *dk, &kt[kb * BLOCK * *dk..(kb + 1) * BLOCK * *dk], &mut blk);
                    for (i, row) in blk.iter().enumerate() {
                        s[i * KV_TILE + bt * BLOCK..][..BLOCK].copy_from_slice(row);
                    }
                }
            }
            #[cfg(target_arch = "x86_64")]
            Products::Tiles(tb) => tb.scores(t, s),
        }
    }

    /// ob += P V over tile t (`live` keys; P's rows `sp`, 16 x 64).
    fn pv(&mut self, t: usize, live: usize, sp: &[f32], ob: &mut [f32]) {
        match self {
            Products::F32 { ctx, vf, dv, .. } => (ctx.kernels.attn.pv_block)(sp, KV_TILE, live, &vf[t * KV_TILE * *dv..], *dv, ob),
            #[cfg(target_arch = "x86_64")]
            Products::Tiles(tb) => tb.pv(t, sp, ob),
        }
    }
}

/// The tile form (`KvForm::Tiles`): phase 1's conversion and one query block's products on
/// AMX.
#[cfg(target_arch = "x86_64")]
mod tiles {
    use super::{Node, BLOCK, KV_TILE};
    use crate::kernels::amx::attn::{PAIR, STEP};
    use crate::kernels::amx::stage::{attn_a_pair, attn_k_pair, attn_v_pair, AttnSession};
    use crate::threadpool::ThreadCtx;

    /// Phase 1 for head t (K heads first, then V heads) into its `bytes` at `at` of the
    /// shared scratch: K per 16-key block and 32-dimension step, V per 32-key step and
    /// 16-channel block, as `kernels::amx::attn` pairs; keys past the cache's are zero.
    pub fn convert_head(node: &Node, ctx: &ThreadCtx, t: usize, n_kb: usize, at: usize, bytes: usize) {
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

    /// One query block on the tiles: its Q pairs (built once), a P pair area, the head's
    /// K and V pairs and this thread's tile session.
    pub struct Block<'a> {
        session: AttnSession,
        kt: &'a [u8],
        vt: &'a [u8],
        q: &'a [u8],
        p: &'a mut [u8],
        dk: usize,
        dv: usize,
    }

    impl<'a> Block<'a> {
        pub fn new(kt: &'a [u8], vt: &'a [u8], qb: &[f32], dk: usize, dv: usize, area: &'a mut [u8]) -> Block<'a> {
            let steps = dk / STEP;
            let (q, p) = area.split_at_mut(steps * PAIR);
            for s in 0..steps {
                attn_a_pair(&qb[STEP * s..], dk, &mut q[s * PAIR..(s + 1) * PAIR]);
            }
            Block { session: AttnSession::begin(), kt, vt, q, p, dk, dv }
        }

        pub fn scores(&mut self, t: usize, s: &mut [f32; BLOCK * KV_TILE]) {
            let steps = self.dk / STEP;
            let k_block = steps * PAIR;
            let blocks = KV_TILE / BLOCK;
            let kb0 = t * blocks;
            self.session.scores(self.q, &self.kt[kb0 * k_block..], k_block, steps, blocks, s);
        }

        pub fn pv(&mut self, t: usize, sp: &[f32], ob: &mut [f32]) {
            let steps = KV_TILE / STEP;
            for s in 0..steps {
                attn_a_pair(&sp[STEP * s..], KV_TILE, &mut self.p[s * PAIR..(s + 1) * PAIR]);
            }
            let v_step = self.dv / 16 * PAIR;
            self.session.pv(self.p, &self.vt[t * steps * v_step..], v_step, steps, self.dv, ob);
        }
    }
}
