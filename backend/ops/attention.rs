//! FLASH_ATTN_EXT: softmax(scale * Q K^T + mask) V, with ALiBi, logit soft-capping and
//! attention sinks. K and V are the KV cache: f16, or f32, bf16, q4_0, q4_1, q8_0, read in
//! place in either layout (SMEPilot's packed one or llama.cpp's cells). Caches of other
//! types than f16 take the per-row path in ggml-cpu's arithmetic for them: Q converted to
//! K's dot type (q8_0 for q4_0 and q8_0 keys) and each score K's dot with it, value rows
//! converted to f32.
//!
//! The per-row path computes each query row in one arithmetic (`state`): f32 Q, scores in
//! the per-row kernels' lane order, per 64-key tile its maximum, weights and sum, the
//! tiles' states folded in order; its result depends neither on the other queries of the
//! node, the thread count nor the keys past its own the view reaches. The streamed path
//! follows ggml-cpu's tiled arithmetic by default (stock's bits), or with
//! SMEPILOT_BATCH_INVARIANT=1 the per-row path's, so that a row's result is the same on
//! either path (batch invariance).
//!
//! Three paths:
//! * streamed (prefill: 16 or more queries, on the fast kernel tiers; `streamed`): tasks of
//!   16-query blocks of the query heads that share a K/V head walk the keys in 64-key
//!   tiles, each tile converted once for the whole task, in either arithmetic; run
//!   data-parallel or in pipelined pairs of threads (matrix stages on one, softmax on the
//!   other), per `SMEPILOT_ATTN`;
//! * tiles (prefill where the process drives AMX and `SMEPILOT_AMX_ATTN=1`; `tiles`): the
//!   products on the AMX tiles from split bf16 copies of K and V, in ggml's tiled online
//!   softmax (`block`): not batch-invariant;
//! * per query row (decode, few queries, and the portable tier): the query heads of a GQA
//!   group read each K and V row once together (`kernels::attn_rows`); keys in chunks of
//!   four tiles, split across threads in decode.

mod block;
mod state;
mod streamed;
#[cfg(target_arch = "x86_64")]
mod tiles;
#[cfg(all(test, target_arch = "x86_64"))]
pub use tiles::test_form;

use super::{alibi_slope, need, split_range, Node, Unsupported};
use crate::config::AttnSchedule;
use crate::dtype::DType;
use crate::threadpool::ThreadCtx;
use crate::kernels::attn::BLOCK;
use crate::kernels::attn_rows::Prefetch;
use crate::kernels::KernelSet;
use block::{Params, F16_NEG_INF};

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
        kv_type(k.ty) && kv_type(v.ty),
        "flash_attn: K/V of f32, f16, bf16, q4_0, q4_1 or q8_0",
    )?;
    need(
        k.ne[0].is_multiple_of(k.ty.block_size()) && v.ne[0].is_multiple_of(v.ty.block_size()),
        "flash_attn: K/V heads of whole blocks",
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

/// The cache types attention reads: f16 on every path, the others on the per-row path.
fn kv_type(ty: DType) -> bool {
    matches!(ty, DType::F32 | DType::F16 | DType::BF16 | DType::Q4_0 | DType::Q4_1 | DType::Q8_0)
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


/// How a node runs (see the module comment). Built per node on the stack, never stored.
#[allow(clippy::large_enum_variant)]
enum Path {
    Rows,
    Streamed(streamed::Layout),
    #[cfg(target_arch = "x86_64")]
    Tiles(tiles::Layout),
}

/// Whether a node takes one of the blocked paths (prefill): 16 or more queries of an f16
/// cache, on a tier with the blocked kernels, output rows of whole 16-channel blocks.
fn blocked(node: &Node, ks: &KernelSet) -> bool {
    let (q, k, v) = (node.src(0), node.src(1), node.src(2));
    q.ne[1] >= BLOCK && k.ne[1] > 0 && ks.attn.blocked && v.ne[0].is_multiple_of(16) && k.ty == DType::F16 && v.ty == DType::F16
}

fn path(node: &Node, ks: &KernelSet, nth: usize) -> Path {
    if !blocked(node, ks) {
        return Path::Rows;
    }
    // The tile form has ggml's arithmetic only: batch invariance keeps the vector units.
    #[cfg(target_arch = "x86_64")]
    if !invariant() {
        if let Some(t) = tiles::layout(node, ks) {
            return Path::Tiles(t);
        }
    }
    Path::Streamed(streamed::Layout::new(node, nth, pipelined(nth), invariant()))
}

/// Whether the streamed path computes in the per-row path's arithmetic (batch invariance):
/// as SMEPILOT_BATCH_INVARIANT (or a test) says.
fn invariant() -> bool {
    test_invariant::get().unwrap_or_else(|| crate::config::get().is_ok_and(|c| c.batch_invariant))
}

/// Tests pick the streamed path's arithmetic per run (SMEPILOT_BATCH_INVARIANT is read once).
pub mod test_invariant {
    use std::sync::atomic::{AtomicU8, Ordering};
    static FORM: AtomicU8 = AtomicU8::new(0);

    /// None: the configuration decides.
    #[cfg(test)]
    pub fn set(invariant: Option<bool>) {
        FORM.store(invariant.map_or(0, |i| 1 + i as u8), Ordering::SeqCst);
    }

    pub fn get() -> Option<bool> {
        match FORM.load(Ordering::Relaxed) {
            0 => None,
            v => Some(v == 2),
        }
    }
}

/// Whether the streamed path runs in pipelined pairs: as `SMEPILOT_ATTN` (or a test) says,
/// with at least two threads. `auto` keeps every thread on every stage: both groups would
/// run the same vector kernels (no engine runs this path's products on a matrix unit), so
/// a pair takes as long as its slower stage where two threads in parallel share the sum.
fn pipelined(nth: usize) -> bool {
    let schedule = test_schedule::get().unwrap_or_else(|| crate::config::get().map_or(AttnSchedule::Auto, |c| c.attn));
    nth >= 2 && schedule == AttnSchedule::Pipelined
}

/// Tests pick the schedule per run instead of per process (SMEPILOT_ATTN is read once).
pub mod test_schedule {
    use crate::config::AttnSchedule;
    use std::sync::atomic::{AtomicU8, Ordering};
    static SCHEDULE: AtomicU8 = AtomicU8::new(0);

    /// None: the configuration decides.
    #[cfg(test)]
    pub fn set(s: Option<AttnSchedule>) {
        let v = match s {
            None => 0,
            Some(AttnSchedule::Auto) => 1,
            Some(AttnSchedule::Parallel) => 2,
            Some(AttnSchedule::Pipelined) => 3,
        };
        SCHEDULE.store(v, Ordering::SeqCst);
    }

    pub fn get() -> Option<AttnSchedule> {
        match SCHEDULE.load(Ordering::Relaxed) {
            1 => Some(AttnSchedule::Auto),
            2 => Some(AttnSchedule::Parallel),
            3 => Some(AttnSchedule::Pipelined),
            _ => None,
        }
    }
}

/// Whether the node takes a blocked path (prefill) rather than the per-row one.
pub fn takes_blocked_path(node: &Node, ks: &KernelSet) -> bool {
    blocked(node, ks)
}

/// Whether the node's products run on the matrix unit's tiles.
pub fn takes_tile_path(node: &Node, ks: &KernelSet) -> bool {
    #[cfg(target_arch = "x86_64")]
    if blocked(node, ks) && !invariant() {
        return tiles::layout(node, ks).is_some();
    }
    let _ = (node, ks);
    false
}

pub fn scratch_bytes(node: &Node, nth: usize, ks: &KernelSet) -> usize {
    match path(node, ks, nth) {
        Path::Rows => {
            let r = rows_layout(node, nth);
            r.partials + r.per_thread * nth
        }
        Path::Streamed(s) => s.bytes,
        #[cfg(target_arch = "x86_64")]
        Path::Tiles(t) => t.kv + t.per_thread * nth,
    }
}

/// What the node reported of its run, for the trace: the streamed path's schedule and its
/// first thread's time in the matrix stages and in softmax.
pub use streamed::trace_note;

/// Keys per chunk of the per-row path, the unit of work threads share at depth: a few
/// tiles of the softmax state (`state`).
const CHUNK: usize = 4 * state::TILE;
const TILES: usize = CHUNK / state::TILE;

/// The per-row path's work and scratch: `rows` row-groups (a query row's heads that share a
/// K/V head) of `g` heads, `n_c` chunks each. A chunk gives its tiles' states (per tile
/// the heads' maxima, sums and weighted values: `g (2 + dv)` floats). With few row-groups
/// against the threads (decode) the chunks are split across the threads (`split`): each
/// writes its chunk's states to `partials` (`unit` bytes per chunk), folded after a
/// barrier; otherwise a thread runs a row-group's chunks in turn. Both fold the same
/// states in the same order, so the bits are the same.
struct RowsLayout {
    g: usize,
    rows: usize,
    n_c: usize,
    split: bool,
    unit: usize,
    partials: usize,
    /// Byte offsets in a thread's area of Q in f32, the scores, the chunk's states, the
    /// folded output, a chunk's mask row in f32, Q in K's dot type and a chunk's value rows
    /// in f32 (caches of other types than f16); then the area's size.
    at: [usize; 7],
    per_thread: usize,
}

/// Bytes rounded up to a cache line (scratch areas start on one).
fn round64(bytes: usize) -> usize {
    (bytes + 63) & !63
}

fn rows_layout(node: &Node, nth: usize) -> RowsLayout {
    let (q, k, v) = (node.src(0), node.src(1), node.src(2));
    let (dk, dv, n_kv) = (q.ne[0], v.ne[0], k.ne[1]);
    let g = gqa_group(node);
    let rows = q.ne[1] * (q.ne[2] / g) * q.ne[3];
    let n_c = n_kv.div_ceil(CHUNK).max(1);
    let split = n_c > 1 && rows < 4 * nth;
    // A chunk's states: per tile the heads' maxima and sums, then their g x dv outputs.
    let unit = round64(TILES * g * (2 + dv) * 4);
    let partials = if split { rows * n_c * unit } else { 0 };
    // Q in f32, the chunk's scores, its states, the folded output, a chunk's mask row in
    // f32, Q in K's dot type, the chunk's V in f32.
    let q_dot = if k.ty == DType::F16 { 0 } else { g * dot_type(k.ty).row_bytes(dk) };
    let v32 = if v.ty == DType::F16 { 0 } else { CHUNK * dv * 4 };
    let sizes = [g * dk * 4, g * CHUNK * 4, unit, g * dv * 4, CHUNK * 4, q_dot, v32];
    let mut at = [0; 7];
    let mut per_thread = 0;
    for (a, bytes) in at.iter_mut().zip(sizes) {
        *a = per_thread;
        per_thread += round64(bytes);
    }
    RowsLayout { g, rows, n_c, split, unit, partials, at, per_thread }
}

/// The type ggml-cpu converts Q to for keys of type `ty` (its `vec_dot_type`).
fn dot_type(ty: DType) -> DType {
    crate::kernels::quant::scalar_kernels(ty).map_or(DType::F32, |k| k.vec_dot_type)
}

/// A thread's areas for caches of other types than f16: the group's Q rows in K's dot type,
/// and a chunk's value rows in f32.
struct Staging<'a> {
    q_dot: &'a mut [u8],
    v32: &'a mut [f32],
    /// A chunk's mask row in f32.
    mf: &'a mut [f32],
}

/// What every chunk of a node shares: the operands, parameters and kernels.
struct RowsJob<'a> {
    node: &'a Node,
    ctx: &'a ThreadCtx<'a>,
    g: usize,
    p: Params<'a>,
}

/// A row-group's query row, K/V head and heads.
#[derive(Clone, Copy)]
struct RowGroup {
    iq1: usize,
    iq3: usize,
    /// First query head; the group is heads h0 .. h0 + g.
    h0: usize,
    ik: (usize, usize),
    iv: (usize, usize),
}

impl RowsJob<'_> {
    fn row_group(&self, r: usize) -> RowGroup {
        let (q, k, v) = (self.node.src(0), self.node.src(1), self.node.src(2));
        let (n_q, n_head) = (q.ne[1], q.ne[2]);
        let groups = n_head / self.g;
        let (iq1, kh, iq3) = (r % n_q, (r / n_q) % groups, r / (n_q * groups));
        let h0 = kh * self.g;
        RowGroup {
            iq1,
            iq3,
            h0,
            ik: (h0 / (n_head / k.ne[2]), iq3 / (q.ne[3] / k.ne[3])),
            iv: (h0 / (n_head / v.ne[2]), iq3 / (q.ne[3] / v.ne[3])),
        }
    }

    /// The group's Q rows into `qf` (f32, as ggml-cpu's tiled path reads them),
    /// and for keys of other types than f16 in K's dot type into `q_dot`, as ggml-cpu
    /// converts them.
    fn load_q(&self, rg: RowGroup, qf: &mut [f32], q_dot: &mut [u8]) {
        let (q, k) = (self.node.src(0), self.node.src(1));
        let dk = q.ne[0];
        if k.ty != DType::F16 {
            let dt = dot_type(k.ty);
            let to_dot = self.ctx.kernels.kernels(dt).and_then(|t| t.from_f32).expect("K's dot type converts from f32");
            let bytes = dt.row_bytes(dk);
            for h in 0..self.g {
                // Q rows hold dk f32 (supports).
                to_dot(&q.row::<f32>(rg.iq1, rg.h0 + h, rg.iq3)[..dk], &mut q_dot[h * bytes..(h + 1) * bytes]);
            }
            return;
        }
        for h in 0..self.g {
            // Q rows hold dk f32 (supports).
            qf[h * dk..(h + 1) * dk].copy_from_slice(&q.row::<f32>(rg.iq1, rg.h0 + h, rg.iq3)[..dk]);
        }
    }

    /// Chunk c of the group: its tiles' states into `out` (per tile the heads' maxima, then
    /// sums, then weighted values; see `state`). A tile the mask hides from every head, or
    /// past the view, gets maxima of -inf and nothing else.
    fn chunk(&self, rg: RowGroup, c: usize, qf: &[f32], s: &mut [f32], out: &mut [f32], st: &mut Staging) {
        let (q, k, v) = (self.node.src(0), self.node.src(1), self.node.src(2));
        let mask = self.node.src[3].as_ref();
        let (dk, dv, n_kv, n_head) = (q.ne[0], v.ne[0], k.ne[1], q.ne[2]);
        let (c0, c1) = (c * CHUNK, ((c + 1) * CHUNK).min(n_kv));
        let n = c1 - c0;
        let g = self.g;
        let ts = g * (2 + dv);
        let hidden = |tt: usize, out: &mut [f32]| {
            out[tt * ts..tt * ts + g].fill(f32::NEG_INFINITY);
            out[tt * ts + g..tt * ts + 2 * g].fill(0.0);
        };
        // Mask rows hold at least n_kv f16 (supports).
        let mrow = |h: usize| mask.map(|mt| &mt.row::<u16>(rg.iq1, (rg.h0 + h) % mt.ne[2], rg.iq3 % mt.ne[3])[c0..c1]);
        if mask.is_some() && (0..g).all(|h| mrow(h).unwrap().iter().all(|&x| x == F16_NEG_INF)) {
            (0..TILES).for_each(|tt| hidden(tt, out));
            return;
        }
        let attn = &self.ctx.kernels.attn;
        // The chunk's K and V rows in f16: the cache's own, nb[1] apart, or staged.
        let ks = self.ctx.kernels;
        if k.ty == DType::F16 {
            // K rows hold dk f16 (supports), nb[1] apart.
            let krows = k.bytes_at::<u8>(k.row_offset(c0, rg.ik.0, rg.ik.1), (n - 1) * k.nb[1] + 2 * dk);
            // The value rows towards L2 for the P V below (f16 V: read in place).
            let pf = match v.ty {
                DType::F16 => Prefetch { k_bytes: 2 * dk, v: v.bytes_at::<u8>(v.row_offset(c0, rg.iv.0, rg.iv.1), 1).as_ptr(), v_stride: v.nb[1], v_bytes: 2 * dv },
                _ => Prefetch { k_bytes: 2 * dk, ..Prefetch::NONE },
            };
            (attn.group_scores)(qf, g, dk, krows, k.nb[1], n, s, CHUNK, pf);
        } else {
            // ggml-cpu's scores for these keys: K's dot with Q in K's dot type.
            let dot = ks.kernels(k.ty).and_then(|t| t.vec_dot).expect("a K type with a dot (supports)");
            let (kb, qb) = (k.ty.row_bytes(dk), dot_type(k.ty).row_bytes(dk));
            for i in 0..n {
                // K rows hold dk elements of whole blocks (supports).
                let krow = &k.row::<u8>(c0 + i, rg.ik.0, rg.ik.1)[..kb];
                for h in 0..g {
                    s[h * CHUNK + i] = dot(dk, krow, &st.q_dot[h * qb..(h + 1) * qb]);
                }
            }
        }
        if v.ty != DType::F16 {
            // Other value types in f32, as ggml-cpu converts them.
            let to_f32 = ks.kernels(v.ty).expect("a V type (supports)").to_f32;
            let vb = v.ty.row_bytes(dv);
            for i in 0..n {
                // V rows hold dv elements of whole blocks (supports).
                to_f32(&v.row::<u8>(c0 + i, rg.iv.0, rg.iv.1)[..vb], &mut st.v32[i * dv..(i + 1) * dv]);
            }
        }
        // The mask row `st.mf` holds (heads share one unless the mask has rows per head).
        let mut mf_row = usize::MAX;
        let to_f32 = ks.kernels(DType::F16).expect("f16 kernels").to_f32;
        for tt in 0..TILES {
            let t0 = tt * state::TILE;
            if t0 >= n {
                hidden(tt, out);
                continue;
            }
            let nt = (n - t0).min(state::TILE);
            let (mo, rest) = out[tt * ts..(tt + 1) * ts].split_at_mut(g);
            let (lo, oc) = rest.split_at_mut(g);
            for h in 0..g {
                let row = &mut s[h * CHUNK + t0..h * CHUNK + t0 + state::TILE];
                let slope = alibi_slope(self.p.max_bias, n_head, rg.h0 + h);
                if let Some(mt) = mask {
                    let mr = (rg.h0 + h) % mt.ne[2];
                    if mf_row != mr {
                        // Mask rows hold at least n_kv f16 (supports).
                        to_f32(&mt.row::<u8>(rg.iq1, mr, rg.iq3 % mt.ne[3])[2 * c0..2 * c1], &mut st.mf[..n]);
                        mf_row = mr;
                    }
                }
                state::finish_scores(row, nt, &self.p, slope, mask.map(|_| &st.mf[t0..t0 + nt]));
                (mo[h], lo[h]) = state::weights(row, &ks.vmath);
            }
            oc.fill(0.0);
            if v.ty == DType::F16 {
                // V rows hold dv f16 (supports), nb[1] apart.
                let vrows = v.bytes_at::<u8>(v.row_offset(c0 + t0, rg.iv.0, rg.iv.1), (nt - 1) * v.nb[1] + 2 * dv);
                (attn.group_pv)(&s[t0..], CHUNK, g, vrows, v.nb[1], nt, dv, oc);
                continue;
            }
            // Each output a chain over the keys in order.
            for h in 0..g {
                let o = &mut oc[h * dv..(h + 1) * dv];
                for i in t0..t0 + nt {
                    let p = s[h * CHUNK + i];
                    if p != 0.0 {
                        o.iter_mut().zip(&st.v32[i * dv..(i + 1) * dv]).for_each(|(o, &x)| *o += p * x);
                    }
                }
            }
        }
    }

    /// The group's folded state before its first chunk.
    fn start(&self, rg: RowGroup, mm: &mut [f32], ll: &mut [f32], o: &mut [f32]) {
        let dv = o.len() / self.g;
        for h in 0..self.g {
            (mm[h], ll[h]) = state::start(state::sink(&self.p, rg.h0 + h), &mut o[h * dv..(h + 1) * dv]);
        }
    }

    /// Head h of the group's output row.
    fn finish(&self, rg: RowGroup, h: usize, ll: f32, o: &[f32]) {
        // Output is [dv, n_head, n_q, ne3]: row (head, iq1, iq3), this thread's alone.
        state::finish(ll, o, self.node.dst.row_mut::<f32>(rg.h0 + h, rg.iq1, rg.iq3));
    }
}

/// The per-row path: the query heads that share a K/V head (GQA) run as one row-group,
/// each K and V row read once for all of them; keys in chunks of [`CHUNK`], each tile's
/// softmax state (maximum, sum, weighted V) folded in order (`state`). Decode splits the
/// chunks across the threads, more queries split the row-groups.
pub fn flash_attn(node: &Node, ctx: &ThreadCtx, scale: f32, max_bias: f32, softcap: f32) {
    let n_head = node.src(0).ne[2];
    // Soft-capping divides the scale first (tanh(x * scale / cap) * cap), as ggml-cpu.
    let scale = if softcap != 0.0 { scale / softcap } else { scale };
    // Sinks hold n_head f32 (supports).
    let sinks = node.src[4].as_ref().map(|s| s.elems::<f32>(n_head));
    let p = Params { scale, max_bias, softcap, sinks };
    match path(node, ctx.kernels, ctx.nth) {
        Path::Rows => ctx.report(0),
        Path::Streamed(lay) => return streamed::run(node, ctx, &lay, p),
        #[cfg(target_arch = "x86_64")]
        Path::Tiles(lay) => {
            ctx.report(0);
            return tiles::run(node, ctx, &lay, p);
        }
    }
    let (dk, dv) = (node.src(0).ne[0], node.src(2).ne[0]);
    let lay = rows_layout(node, ctx.nth);
    let g = lay.g;
    let job = RowsJob { node, ctx, g, p };
    // scratch_bytes reserved the partials, then `per_thread` bytes for each thread.
    let area = ctx.thread_area(lay.partials, lay.per_thread);
    let qf = area.carve::<f32>(lay.at[0], g * dk);
    let s = area.carve::<f32>(lay.at[1], g * CHUNK);
    let states = area.carve::<f32>(lay.at[2], TILES * g * (2 + dv));
    let o = area.carve::<f32>(lay.at[3], g * dv);
    let mf = area.carve::<f32>(lay.at[4], CHUNK);
    let q_dot = area.carve::<u8>(lay.at[5], lay.at[6] - lay.at[5]);
    let v32 = area.carve::<f32>(lay.at[6], (lay.per_thread - lay.at[6]) / 4);
    let mut st = Staging { q_dot, v32, mf };
    // The row-group whose Q `qf` holds.
    let mut loaded = usize::MAX;
    let (mut mm, mut ll) = ([0f32; MAX_GQA], [0f32; MAX_GQA]);
    let ts = g * (2 + dv);
    // Folds head h's tile states of a chunk (`st` as `chunk` lays them out).
    let fold_chunk = |h: usize, mm: &mut f32, ll: &mut f32, o: &mut [f32], st: &[f32]| {
        for tt in 0..TILES {
            let t = &st[tt * ts..(tt + 1) * ts];
            state::fold(mm, ll, o, t[h], t[g + h], &t[2 * g + h * dv..2 * g + (h + 1) * dv]);
        }
    };

    if !lay.split {
        let (r0, r1) = split_range(lay.rows, ctx.ith, ctx.nth);
        for r in r0..r1 {
            let rg = job.row_group(r);
            job.load_q(rg, qf, st.q_dot);
            job.start(rg, &mut mm, &mut ll, o);
            for c in 0..lay.n_c {
                job.chunk(rg, c, qf, s, states, &mut st);
                for h in 0..g {
                    fold_chunk(h, &mut mm[h], &mut ll[h], &mut o[h * dv..(h + 1) * dv], states);
                }
            }
            for h in 0..g {
                job.finish(rg, h, ll[h], &o[h * dv..(h + 1) * dv]);
            }
        }
        return;
    }

    // Split: chunks from the node's queue, each state to its own unit of the partials.
    let units = lay.rows * lay.n_c;
    loop {
        let u = ctx.next_chunk();
        if u >= units {
            break;
        }
        let (r, c) = (u / lay.n_c, u % lay.n_c);
        let rg = job.row_group(r);
        if loaded != r {
            job.load_q(rg, qf, st.q_dot);
            loaded = r;
        }
        // Unit u is this thread's: it took u from the queue.
        job.chunk(rg, c, qf, s, ctx.shared_mut::<f32>(u * lay.unit, TILES * ts), &mut st);
    }
    ctx.barrier();
    // Fold: each thread its share of the (row-group, head) pairs, chunks in order.
    let (p0, p1) = split_range(lay.rows * g, ctx.ith, ctx.nth);
    for pair in p0..p1 {
        let (r, h) = (pair / g, pair % g);
        let rg = job.row_group(r);
        let oh = &mut o[..dv];
        let (mut mh, mut lh) = state::start(state::sink(&p, rg.h0 + h), oh);
        for c in 0..lay.n_c {
            // Written by the unit's thread before the barrier; only read now.
            fold_chunk(h, &mut mh, &mut lh, oh, ctx.shared::<f32>((r * lay.n_c + c) * lay.unit, TILES * ts));
        }
        job.finish(rg, h, lh, oh);
    }
}

/// Most query heads per K/V head the per-row path runs as one row-group.
const MAX_GQA: usize = 64;


