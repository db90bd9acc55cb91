//! FLASH_ATTN_EXT: softmax(scale * Q K^T + mask) V, with ALiBi, logit soft-capping and
//! attention sinks. K and V are the KV cache: f16, or f32, bf16, q4_0, q4_1, q8_0. Caches
//! of other types than f16 take the per-row path in ggml-cpu's arithmetic for them: Q
//! converted to K's dot type (q8_0 for q4_0 and q8_0 keys) and each score K's dot with it,
//! value rows converted to f32.
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
//! * per query row (decode, and the portable reference): Q rounded to f16 as ggml-cpu does;
//!   the query heads of a GQA group read each K and V row once together
//!   (`kernels::attn_rows`); keys in fixed chunks whose softmax states merge in order, the
//!   chunks split across threads in decode.

use super::{alibi_slope, need, split_range, Node, Unsupported};
use crate::dtype::DType;
use crate::threadpool::ThreadCtx;
use crate::kernels::attn::BLOCK;
use crate::kernels::attn_rows::Prefetch;
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
    let f16 = k.ty == DType::F16 && v.ty == DType::F16;
    if q.ne[1] < BLOCK || !ks.attn.blocked || !dv.is_multiple_of(16) || !f16 {
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
        None => {
            let r = rows_layout(node, nth);
            r.partials + r.per_thread * nth
        }
    }
}

/// Keys per chunk of the per-row path: the unit of work threads share at depth and of the
/// merge of softmax states. Fixed, so that results depend neither on the thread count nor
/// on how many queries the batch holds.
const CHUNK: usize = 256;

/// The per-row path's work and scratch: `rows` row-groups (a query row's heads that share a
/// K/V head) of `g` heads, `n_c` chunks each. With few row-groups against the threads
/// (decode) the chunks are split across the threads (`split`): each writes its chunk's
/// state to `partials` (`unit` bytes per chunk), merged after a barrier; otherwise a
/// thread runs a row-group's chunks in turn. Both merge the same states in the same order,
/// so the bits are the same.
struct RowsLayout {
    g: usize,
    rows: usize,
    n_c: usize,
    split: bool,
    unit: usize,
    partials: usize,
    /// Byte offsets in a thread's area of Q in f32, the scores, the chunk's output, the
    /// merged output, Q in f16, the mask row, Q in K's dot type and a chunk's value rows in
    /// f32 (caches of other types than f16); then the area's size.
    at: [usize; 8],
    per_thread: usize,
}

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
    // A chunk's state: per head its maximum and sum, then its g x dv output.
    let unit = round64(g * (2 + dv) * 4);
    let partials = if split { rows * n_c * unit } else { 0 };
    // Q in f32 (rounded through f16), the chunk's scores, its output, the merged output,
    // Q in f16, a chunk's mask row in f32, Q in K's dot type, the chunk's V in f32.
    let q_dot = if k.ty == DType::F16 { 0 } else { g * dot_type(k.ty).row_bytes(dk) };
    let v32 = if v.ty == DType::F16 { 0 } else { CHUNK * dv * 4 };
    let sizes = [g * dk * 4, g * CHUNK * 4, g * dv * 4, g * dv * 4, g * dk * 2, CHUNK * 4, q_dot, v32];
    let mut at = [0; 8];
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
}

/// What every chunk of a node shares: the operands, parameters and kernels.
struct RowsJob<'a> {
    node: &'a Node,
    ctx: &'a ThreadCtx<'a>,
    g: usize,
    scale: f32,
    max_bias: f32,
    softcap: f32,
    sinks: Option<&'a [f32]>,
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

    /// The group's Q rows into `qf`, rounded through f16 (`q16`) as ggml-cpu rounds them,
    /// and for keys of other types than f16 in K's dot type into `q_dot`, as ggml-cpu
    /// converts them.
    fn load_q(&self, rg: RowGroup, q16: &mut [u8], qf: &mut [f32], q_dot: &mut [u8]) {
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
        let f16k = self.ctx.kernels.kernels(DType::F16).expect("f16 kernels");
        let (to_f16, to_f32) = (f16k.from_f32.expect("f16 from f32"), f16k.to_f32);
        for h in 0..self.g {
            // Q rows hold dk f32 (supports).
            to_f16(&q.row::<f32>(rg.iq1, rg.h0 + h, rg.iq3)[..dk], &mut q16[..2 * dk]);
            to_f32(&q16[..2 * dk], &mut qf[h * dk..(h + 1) * dk]);
        }
    }

    /// Chunk c of the group: scores, masked; per head its maximum `m` and the sum `l` of
    /// exp(score - m); `oc` = the weights times V. A chunk the mask hides from every head
    /// gives m = -inf and leaves `oc` as it was.
    #[allow(clippy::too_many_arguments)]
    fn chunk(&self, rg: RowGroup, c: usize, qf: &[f32], s: &mut [f32], mf: &mut [f32], oc: &mut [f32], m: &mut [f32], l: &mut [f32], st: &mut Staging) {
        let (q, k, v) = (self.node.src(0), self.node.src(1), self.node.src(2));
        let mask = self.node.src[3].as_ref();
        let (dk, dv, n_kv, n_head) = (q.ne[0], v.ne[0], k.ne[1], q.ne[2]);
        let (c0, c1) = (c * CHUNK, ((c + 1) * CHUNK).min(n_kv));
        let n = c1 - c0;
        let g = self.g;
        // Mask rows hold at least n_kv f16 (supports).
        let mrow = |h: usize| mask.map(|mt| &mt.row::<u16>(rg.iq1, (rg.h0 + h) % mt.ne[2], rg.iq3 % mt.ne[3])[c0..c1]);
        if mask.is_some() && (0..g).all(|h| mrow(h).unwrap().iter().all(|&x| x == F16_NEG_INF)) {
            m[..g].fill(f32::NEG_INFINITY);
            l[..g].fill(0.0);
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
        let to_f32 = self.ctx.kernels.kernels(DType::F16).expect("f16 kernels").to_f32;
        // The mask row `mf` holds (heads share one unless the mask has rows per head).
        let mut mf_row = usize::MAX;
        for h in 0..g {
            let row = &mut s[h * CHUNK..h * CHUNK + n];
            let slope = alibi_slope(self.max_bias, n_head, rg.h0 + h);
            if self.softcap != 0.0 {
                row.iter_mut().for_each(|x| *x = self.softcap * (*x * self.scale).tanh());
            } else {
                row.iter_mut().for_each(|x| *x *= self.scale);
            }
            if let Some(mt) = mask {
                let mr = (rg.h0 + h) % mt.ne[2];
                if mf_row != mr {
                    to_f32(&mt.row::<u8>(rg.iq1, mr, rg.iq3 % mt.ne[3])[2 * c0..2 * c1], &mut mf[..n]);
                    mf_row = mr;
                }
                for (x, &mv) in row.iter_mut().zip(&mf[..n]) {
                    let mv = slope * mv;
                    *x = if mv == f32::NEG_INFINITY { f32::NEG_INFINITY } else { *x + mv };
                }
            }
            let mx = row_max(row);
            m[h] = mx;
            if mx == f32::NEG_INFINITY {
                row.fill(0.0); // nothing of this chunk reaches the head
                l[h] = 0.0;
            } else {
                l[h] = (self.ctx.kernels.vmath.soft_max)(row, mx) as f32;
            }
        }
        oc[..g * dv].fill(0.0);
        if v.ty == DType::F16 {
            // V rows hold dv f16 (supports), nb[1] apart.
            let vrows = v.bytes_at::<u8>(v.row_offset(c0, rg.iv.0, rg.iv.1), (n - 1) * v.nb[1] + 2 * dv);
            (attn.group_pv)(s, CHUNK, g, vrows, v.nb[1], n, dv, oc);
            return;
        }
        // Other value types in f32, as ggml-cpu converts them; each output a chain over the
        // keys in order.
        let to_f32 = ks.kernels(v.ty).expect("a V type (supports)").to_f32;
        let vb = v.ty.row_bytes(dv);
        for i in 0..n {
            // V rows hold dv elements of whole blocks (supports).
            to_f32(&v.row::<u8>(c0 + i, rg.iv.0, rg.iv.1)[..vb], &mut st.v32[i * dv..(i + 1) * dv]);
        }
        for h in 0..g {
            let o = &mut oc[h * dv..(h + 1) * dv];
            for i in 0..n {
                let p = s[h * CHUNK + i];
                if p != 0.0 {
                    o.iter_mut().zip(&st.v32[i * dv..(i + 1) * dv]).for_each(|(o, &x)| *o += p * x);
                }
            }
        }
    }

    /// The group's merged state before its first chunk: the sink (a logit with no value)
    /// or nothing.
    fn start(&self, rg: RowGroup, mm: &mut [f32], ll: &mut [f32], o: &mut [f32]) {
        for h in 0..self.g {
            match self.sinks {
                Some(sk) => (mm[h], ll[h]) = (sk[rg.h0 + h], 1.0),
                None => (mm[h], ll[h]) = (f32::NEG_INFINITY, 0.0),
            }
        }
        o.fill(0.0);
    }

    /// Folds head h's chunk state (m, l, oc) into the merged one (mm, ll, o).
    fn merge(mm: &mut f32, ll: &mut f32, o: &mut [f32], m: f32, l: f32, oc: &[f32]) {
        if m == f32::NEG_INFINITY {
            return;
        }
        let mn = mm.max(m);
        let (a, b) = ((*mm - mn).exp(), (m - mn).exp());
        *ll = *ll * a + l * b;
        o.iter_mut().zip(oc).for_each(|(x, &y)| *x = *x * a + y * b);
        *mm = mn;
    }

    /// Head h of the group's output row: the merged output over its sum.
    fn finish(&self, rg: RowGroup, h: usize, ll: f32, o: &[f32]) {
        let inv = if ll == 0.0 { 0.0 } else { 1.0 / ll };
        // Output is [dv, n_head, n_q, ne3]: row (head, iq1, iq3), this thread's alone.
        let out = self.node.dst.row_mut::<f32>(rg.h0 + h, rg.iq1, rg.iq3);
        out.iter_mut().zip(o).for_each(|(d, &a)| *d = a * inv);
    }
}

/// The per-row path: the query heads that share a K/V head (GQA) run as one row-group,
/// each K and V row read once for all of them; keys in chunks of [`CHUNK`], each chunk's
/// softmax state (maximum, sum, weighted V) merged in chunk order. Decode splits the
/// chunks across the threads, more queries split the row-groups.
pub fn flash_attn(node: &Node, ctx: &ThreadCtx, scale: f32, max_bias: f32, softcap: f32) {
    let n_head = node.src(0).ne[2];
    // Soft-capping divides the scale first (tanh(x * scale / cap) * cap), as ggml-cpu.
    let scale = if softcap != 0.0 { scale / softcap } else { scale };
    // Sinks hold n_head f32 (supports).
    let sinks = node.src[4].as_ref().map(|s| s.elems::<f32>(n_head));
    if let Some(b) = blocked(node, ctx.kernels) {
        return flash_attn_blocked(node, ctx, &b, scale, max_bias, softcap, sinks);
    }
    let (dk, dv) = (node.src(0).ne[0], node.src(2).ne[0]);
    let lay = rows_layout(node, ctx.nth);
    let g = lay.g;
    let job = RowsJob { node, ctx, g, scale, max_bias, softcap, sinks };
    // scratch_bytes reserved the partials, then `per_thread` bytes for each thread.
    let area = ctx.thread_area(lay.partials, lay.per_thread);
    let qf = area.carve::<f32>(lay.at[0], g * dk);
    let s = area.carve::<f32>(lay.at[1], g * CHUNK);
    let oc = area.carve::<f32>(lay.at[2], g * dv);
    let o = area.carve::<f32>(lay.at[3], g * dv);
    let q16 = area.carve::<u8>(lay.at[4], g * dk * 2);
    let mf = area.carve::<f32>(lay.at[5], CHUNK);
    let q_dot = area.carve::<u8>(lay.at[6], lay.at[7] - lay.at[6]);
    let v32 = area.carve::<f32>(lay.at[7], (lay.per_thread - lay.at[7]) / 4);
    let mut st = Staging { q_dot, v32 };
    // The row-group whose Q `qf` holds.
    let mut loaded = usize::MAX;
    let (mut m, mut l) = ([0f32; MAX_GQA], [0f32; MAX_GQA]);
    let (mut mm, mut ll) = ([0f32; MAX_GQA], [0f32; MAX_GQA]);

    if !lay.split {
        let (r0, r1) = split_range(lay.rows, ctx.ith, ctx.nth);
        for r in r0..r1 {
            let rg = job.row_group(r);
            job.load_q(rg, q16, qf, st.q_dot);
            job.start(rg, &mut mm, &mut ll, o);
            for c in 0..lay.n_c {
                job.chunk(rg, c, qf, s, mf, oc, &mut m, &mut l, &mut st);
                for h in 0..g {
                    RowsJob::merge(&mut mm[h], &mut ll[h], &mut o[h * dv..(h + 1) * dv], m[h], l[h], &oc[h * dv..(h + 1) * dv]);
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
            job.load_q(rg, q16, qf, st.q_dot);
            loaded = r;
        }
        job.chunk(rg, c, qf, s, mf, oc, &mut m, &mut l, &mut st);
        // Unit u is this thread's: it took u from the queue.
        let part = ctx.shared_mut::<f32>(u * lay.unit, g * (2 + dv));
        part[..g].copy_from_slice(&m[..g]);
        part[g..2 * g].copy_from_slice(&l[..g]);
        if m[..g].iter().any(|&x| x != f32::NEG_INFINITY) {
            part[2 * g..].copy_from_slice(&oc[..g * dv]);
        }
    }
    ctx.barrier();
    // Merge: each thread its share of the (row-group, head) pairs, chunks in order.
    let (p0, p1) = split_range(lay.rows * g, ctx.ith, ctx.nth);
    for pair in p0..p1 {
        let (r, h) = (pair / g, pair % g);
        let rg = job.row_group(r);
        let oh = &mut o[..dv];
        job.start(rg, &mut mm, &mut ll, oh);
        for c in 0..lay.n_c {
            // Written by the unit's thread before the barrier; only read now.
            let part = ctx.shared::<f32>((r * lay.n_c + c) * lay.unit, g * (2 + dv));
            RowsJob::merge(&mut mm[h], &mut ll[h], oh, part[h], part[g + h], &part[2 * g + h * dv..2 * g + (h + 1) * dv]);
        }
        job.finish(rg, h, ll[h], oh);
    }
}

/// Most query heads per K/V head the per-row path runs as one row-group.
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
    let attn = &ctx.kernels.attn;
    let (n_kh, n_vh) = (k.ne[2] * k.ne[3], v.ne[2] * v.ne[3]);
    // Byte offsets in the shared scratch of head hk's K and head hv's V.
    let k_at = |hk: usize| hk * b.k_head;
    let v_at = |hv: usize| n_kh * b.k_head + hv * b.v_head;

    // Phase 1: K and V of every head into the form's layout, heads split.
    let (t0, t1) = split_range(n_kh + n_vh, ctx.ith, ctx.nth);
    for t in t0..t1 {
        match b.form {
            KvForm::F32 => f32_head(node, ctx, b, t),
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
fn f32_head(node: &Node, ctx: &ThreadCtx, b: &BlockedLayout, t: usize) {
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
        let to_f32 = ctx.kernels.kernels(k.ty).expect("a K/V type (supports)").to_f32;
        let mut row = vec![0f32; dk];
        for ic in 0..n_kv {
            let (kb, j) = (ic / BLOCK, ic % BLOCK);
            // K rows hold dk elements of whole blocks (supports).
            to_f32(&k.row::<u8>(ic, t % k.ne[2], t / k.ne[2])[..k.ty.row_bytes(dk)], &mut row);
            for (dd, &x) in row.iter().enumerate() {
                kt[(kb * dk + dd) * BLOCK + j] = x;
            }
        }
    } else {
        let hv = t - n_kh;
        // As above, head hv's V area.
        let vf = ctx.shared_mut::<f32>(v_at(hv), kw * dv);
        vf[n_kv * dv..].fill(0.0);
        let to_f32 = ctx.kernels.kernels(v.ty).expect("a K/V type (supports)").to_f32;
        for ic in 0..n_kv {
            // V rows hold dv elements of whole blocks (supports).
            to_f32(&v.row::<u8>(ic, hv % v.ne[2], hv / v.ne[2])[..v.ty.row_bytes(dv)], &mut vf[ic * dv..(ic + 1) * dv]);
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
