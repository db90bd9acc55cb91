//! The Intel AMX engine (see `kernels::amx::gemm` for the operand layout), driven by
//! `engine::run_matrix` and `engine::run_coop`.
//!
//! Int8 kernel: activations (row tiles split across threads) are quantized exactly as
//! ggml-cpu quantizes them (Q8_0, Q8_1 for Q4_1, Q8_K for the K-quants) into the kernel's row
//! operand, 512-byte tiles per block; each weight group (64 rows) is staged into the
//! thread's column tiles (the packed layouts' lanes are tile columns already) and runs
//! against every pair of activation row tiles, each result row stored contiguously.
//! K-quant kernel (Q4_K, Q6_K): activations as Q8_K in
//! 1 KB row tiles per 64-element step; each weight group's integer weights staged per
//! super-block as hi and lo column tiles (`kernels::amx::ks_cols`), results scaled once per
//! super-block.
//! Bf16 kernel: activations rounded to bf16 into B tiles, weight groups unpacked into A
//! tiles.

use super::super::split_range;
use super::engine::{MatrixEngine, GROUP_TILES};
use super::product::Product;
use crate::dtype::DType;
use crate::threadpool::ThreadCtx;
use crate::kernels::amx::gemm::{Block32, BF16_BTILE, BF16_KSTEP, I8_BTILE, I8_KBLOCK};
use crate::kernels::amx::ks_cols::{self, ColTile, SB_TILES_BYTES};
use crate::kernels::amx::ksuper::{STEPS, SUPER, TILE};
use crate::kernels::amx::stage::{Bf16Session, I8Cols, I8Rows, I8Session, KsCols, KsRows, KsSession, Spread};
use crate::kernels::amx::{self, rows};
use crate::kernels::packed;
use crate::tensor::TensorRef;

/// The AMX engine. Constructed only where the process drives AMX (the kernel set's
/// matrix unit), which is what makes its tile instructions legal.
pub struct Amx(());

impl Amx {
    /// The engine, when the process's kernel set drives AMX.
    pub fn get(ks: &crate::kernels::KernelSet) -> Option<Amx> {
        (ks.matrix == Some(crate::kernels::registry::MatrixUnit::Amx) && amx::available()).then_some(Amx(()))
    }
}

/// A node's tile kernel and its scratch layout.
#[derive(Clone, Copy)]
pub enum Plan {
    I8 { has_min: bool, layout: I8Layout },
    Ks { has_min: bool, layout: KsLayout },
    Bf16 { layout: Bf16Layout },
}

/// A thread's tile configuration (restored on drop) and its accumulators.
pub struct Session {
    tiles: Tiles,
    acc: Block32,
}

enum Tiles {
    I8(I8Session),
    Ks(KsSession),
    Bf16(Bf16Session),
}

impl MatrixEngine for Amx {
    type Plan = Plan;
    type Session = Session;
    const TILE_ROWS: usize = 16;

    fn plan(&self, ty: DType, k: usize, m: usize) -> Option<Plan> {
        if !feasible_type(ty, k) {
            return None;
        }
        // The int8 engines take ggml's layout or the packed one (groups staged per tile).
        if let (true, Some(has_min)) = (int8_engine_on() && ks_kernel(ty, k), ks_cols::ks_weight(ty)) {
            return Some(Plan::Ks { has_min, layout: KsLayout::new(k, m, has_min) });
        }
        if let (true, Some(has_min)) = (int8_engine_on(), rows::i8_weight(ty)) {
            return Some(Plan::I8 { has_min, layout: I8Layout::new(ty, k, m) });
        }
        rows::bf16_weight(ty).then(|| Plan::Bf16 { layout: Bf16Layout::new(ty, k, m) })
    }

    fn acts_bytes(&self, plan: &Plan) -> usize {
        match plan {
            Plan::I8 { layout: l, .. } => l.acts_bytes,
            Plan::Ks { layout: l, .. } => l.acts_bytes,
            Plan::Bf16 { layout: l } => l.acts_bytes,
        }
    }

    fn thread_bytes(&self, plan: &Plan) -> usize {
        match plan {
            Plan::I8 { layout: l, .. } => l.thread_bytes,
            Plan::Ks { layout: l, .. } => l.thread_bytes,
            Plan::Bf16 { layout: l } => l.thread_bytes,
        }
    }

    fn prepare_acts(&self, plan: &Plan, p: &Product, ctx: &ThreadCtx) {
        match plan {
            Plan::I8 { has_min, layout } => i8_acts(p, ctx, layout, *has_min),
            Plan::Ks { has_min, layout } => ks_acts(p, ctx, layout, *has_min),
            Plan::Bf16 { layout } => bf16_acts(p, ctx, layout),
        }
    }

    fn reads_converted(&self, plan: &Plan) -> Option<DType> {
        match plan {
            Plan::I8 { layout, .. } => Some(layout.act),
            Plan::Ks { .. } => Some(DType::Q8_K),
            Plan::Bf16 { .. } => None,
        }
    }

    fn session(&self, plan: &Plan) -> Session {
        // An `Amx` exists only where the process drives AMX (Amx::get), which the sessions
        // check again; they restore the thread's previous tile configuration when dropped.
        let tiles = match plan {
            Plan::I8 { .. } => Tiles::I8(I8Session::begin()),
            Plan::Ks { .. } => Tiles::Ks(KsSession::begin()),
            Plan::Bf16 { .. } => Tiles::Bf16(Bf16Session::begin()),
        };
        Session { tiles, acc: Block32::new() }
    }

    fn weight_group(&self, plan: &Plan, session: &mut Session, p: &Product, ctx: &ThreadCtx, g: usize, next: &[u8]) {
        match (plan, &session.tiles) {
            (Plan::I8 { has_min, layout }, Tiles::I8(t)) => i8_group(p, ctx, t, layout, *has_min, Work { g, next }, &mut session.acc),
            (Plan::Ks { has_min, layout }, Tiles::Ks(t)) => ks_group(p, ctx, t, layout, *has_min, Work { g, next }, &mut session.acc),
            (Plan::Bf16 { layout }, Tiles::Bf16(t)) => bf16_group(p, ctx, t, layout, g, &mut session.acc),
            _ => unreachable!("a session of the plan's kernel"),
        }
    }
}

fn int8_engine_on() -> bool {
    match test_engine::get() {
        Some(int8) => int8,
        None => crate::config::get().is_ok_and(|c| c.amx_int8),
    }
}

/// Whether 2-D products of `ty` weights run on an int8 tile kernel (else the bf16 one).
pub fn int8_engine(ty: DType) -> bool {
    int8_engine_on() && (rows::i8_weight(ty).is_some() || ks_cols::ks_weight(ty).is_some())
}

/// Whether the K-quant super-block kernel takes `ty` weights with `k` columns: Q4_K and Q6_K,
/// whose packed groups it stages with AVX-512 (Q4_K on it: pp512 of the Qwen3-30B-A3B shape
/// in Q4_K_M 12% faster than on the per-32-block kernel). Q5_K, without a packed layout,
/// stays on the per-32-block kernel.
fn ks_kernel(ty: DType, k: usize) -> bool {
    k.is_multiple_of(SUPER) && matches!(ty, DType::Q4_K | DType::Q6_K)
}

/// Tests pick the engine per run instead of per process (SMEPILOT_AMX_INT8 is read once).
pub mod test_engine {
    use std::sync::atomic::{AtomicU8, Ordering};
    static ENGINE: AtomicU8 = AtomicU8::new(0);

    /// None: the configuration decides; Some(true): int8; Some(false): bf16.
    #[cfg(test)]
    pub fn set(int8: Option<bool>) {
        ENGINE.store(int8.map_or(0, |i| 1 + i as u8), Ordering::SeqCst);
    }

    pub fn get() -> Option<bool> {
        match ENGINE.load(Ordering::Relaxed) {
            0 => None,
            v => Some(v == 2),
        }
    }
}

/// Whether the tile kernels take 2-D products of `ty` weights with `k` columns.
///
/// Q6_K runs on the super-block kernel; on the bf16 one it misses the accuracy bound
/// (Qwen3-30B-A3B's shape in Q4_K_M: same top token 94.4% against stock-alt's 94.7%; with
/// Q6_K on the vector kernels 95.8%), which `SMEPILOT_AMX_INT8=0` accepts for every
/// quantized type.
pub fn feasible_type(ty: DType, k: usize) -> bool {
    let ks = int8_engine_on() && ks_kernel(ty, k);
    let bf16 = rows::bf16_weight(ty) && (ty != DType::Q6_K || !int8_engine_on());
    k.is_multiple_of(32) && (ks || bf16 || rows::i8_weight(ty).is_some())
}

fn align64(x: usize) -> usize {
    (x + 63) & !63
}

/// Activation row tiles, rounded up to pairs (the kernels take two at a time).
fn m_tiles(m: usize) -> usize {
    m.div_ceil(16).next_multiple_of(2)
}

/// Scratch of the int8 path. Shared: the activation rows quantized as ggml-cpu does
/// ([`i8_act_type`]; zero rows up to whole pairs of row tiles), their
/// values as the kernel's row operand (per row tile and block, 16 rows of 32 bytes: one
/// 512-byte tile load), then per row tile and block their scales and minimum factors.
/// Per thread: the weight group's column tiles with their scales and minimums, int8 rows
/// for weights in ggml's layout, and a quantized activation row.
#[derive(Clone, Copy)]
pub struct I8Layout {
    nb: usize,
    /// The activation format ([`i8_act_type`]) and the bytes of a quantized row.
    act: DType,
    row_bytes: usize,
    act_row_off: usize,
    d_off: usize,
    s_off: usize,
    acts_bytes: usize,
    thread_bytes: usize,
    wd_off: usize,
    wm_off: usize,
    rows_off: usize,
}

impl I8Layout {
    fn new(ty: DType, k: usize, m: usize) -> I8Layout {
        let nb = k / I8_KBLOCK;
        let mt = m_tiles(m);
        let act = i8_act_type(ty);
        let row_bytes = act.row_bytes(k);
        let d_off = mt * nb * I8_BTILE;
        let s_off = d_off + align64(mt * nb * 16 * 4);
        let wd_off = GROUP_TILES * nb * I8_BTILE;
        let wm_off = wd_off + align64(GROUP_TILES * nb * 16 * 4);
        let rows_off = wm_off + align64(GROUP_TILES * nb * 16 * 4);
        let act_row_off = rows_off + nb * 16 * I8_KBLOCK;
        I8Layout {
            nb,
            act,
            row_bytes,
            d_off,
            s_off,
            acts_bytes: s_off + align64(mt * nb * 16 * 4),
            thread_bytes: act_row_off + align64(row_bytes),
            act_row_off,
            wd_off,
            wm_off,
            rows_off,
        }
    }
}

/// Scratch of the K-quant path. Shared: the activation rows as Q8_K values in the kernel's
/// row tiles (per row tile, super-block and step one 1 KB tile; zero rows up to whole pairs
/// of row tiles), then per row tile and super-block their scales and, with minimums, their
/// 32-element sums in pairs. Per thread: the weight group's column tiles, scales, -dmin
/// and minimum pairs, and a quantized activation row.
#[derive(Clone, Copy)]
pub struct KsLayout {
    nsb: usize,
    row_bytes: usize,
    d_off: usize,
    b_off: usize,
    acts_bytes: usize,
    wd_off: usize,
    wn_off: usize,
    wm_off: usize,
    act_row_off: usize,
    thread_bytes: usize,
}

impl KsLayout {
    fn new(k: usize, m: usize, has_min: bool) -> KsLayout {
        let (nsb, mt) = (k / SUPER, m_tiles(m));
        let d_off = mt * nsb * STEPS * TILE;
        let b_off = d_off + align64(mt * nsb * 16 * 4);
        let acts_bytes = b_off + if has_min { align64(mt * nsb * 64 * 4) } else { 0 };
        let wd_off = GROUP_TILES * nsb * SB_TILES_BYTES;
        let wn_off = wd_off + align64(GROUP_TILES * nsb * 16 * 4);
        let wm_off = wn_off + align64(GROUP_TILES * nsb * 16 * 4);
        let act_row_off = wm_off + align64(GROUP_TILES * nsb * 64 * 4);
        let row_bytes = DType::Q8_K.row_bytes(k);
        KsLayout { nsb, row_bytes, d_off, b_off, acts_bytes, wd_off, wn_off, wm_off, act_row_off, thread_bytes: act_row_off + align64(row_bytes) }
    }
}

/// Scratch of the bf16 path: activation tiles (shared), then per thread a conversion row
/// (k floats, then 2 k bytes) and the weight group's A tiles in tile order.
#[derive(Clone, Copy)]
pub struct Bf16Layout {
    /// Quantized weights: their ggml activation format (Q8_0, Q8_1, Q8_K), whose values the
    /// activations take before bf16, so that the products see stock's quantized values.
    act: Option<DType>,
    acts_bytes: usize,
    thread_bytes: usize,
    row_tmp: usize,
    wtile_bytes: usize,
}

impl Bf16Layout {
    fn new(ty: DType, k: usize, m: usize) -> Bf16Layout {
        let act = crate::kernels::quant::scalar_kernels(ty).map(|t| t.vec_dot_type).filter(|a| !matches!(a, DType::F32 | DType::F16 | DType::BF16));
        let row_tmp = align64(4 * k) + align64(2 * k);
        let wtile_bytes = 32 * k;
        // The activations' phase: a bf16 row, an f32 row and a quantized row.
        let acts_area = align64(2 * k) + align64(4 * k) + align64(act.map_or(0, |a| a.row_bytes(k)));
        Bf16Layout {
            act,
            acts_bytes: m_tiles(m) * (k / BF16_KSTEP) * BF16_BTILE,
            thread_bytes: (row_tmp + GROUP_TILES * wtile_bytes).max(acts_area),
            row_tmp,
            wtile_bytes,
        }
    }
}

/// Weight rows `r0 .. r0 + 16` (fewer at the end) as byte slices of `row_bytes`.
fn weight_rows(w: &TensorRef, r0: usize) -> ([&[u8]; 16], usize) {
    let n = (w.ne[1] - r0).min(16);
    let mut rows: [&[u8]; 16] = [&[]; 16];
    for (i, r) in rows.iter_mut().enumerate().take(n) {
        *r = w.row::<u8>(r0 + i, 0, 0);
    }
    (rows, n)
}

/// Writes the `rows_m` x `rows_n` corner of `acc` transposed into the output (the bf16
/// kernel's block is [weight rows][activation rows]): activation rows `m0 ..`, columns
/// `n0 ..` (this thread's: the weight group's columns).
fn store(acc: &Block32, p: &Product, m0: usize, n0: usize, rows_m: usize, rows_n: usize) {
    for i in 0..rows_m {
        acc.store_row(i, p.out(m0 + i, n0, rows_n));
    }
}

/// The int8 path's activation format for weights of `ty`, ggml-cpu's: Q8_0, Q8_1 for Q4_1,
/// Q8_K (per 256, with sums per 16) for the K-quants.
fn i8_act_type(ty: DType) -> DType {
    match ty {
        DType::Q4_K | DType::Q5_K => DType::Q8_K,
        _ if rows::i8_weight(ty) == Some(true) => DType::Q8_1,
        _ => DType::Q8_0,
    }
}

/// Int8 block `b` (32 values) of an activation row quantized as `act`: its scale, the other
/// factor of the weights' minimum term (the scale times the block's value sum: Q8_1's
/// stored one, or from Q8_K's two 16-element sums) and its values.
fn act_block(act: DType, row: &[u8], b: usize) -> (f32, f32, &[u8]) {
    let h = |blk: &[u8], o: usize| half::f16::from_bits(u16::from_le_bytes([blk[o], blk[o + 1]])).to_f32();
    match act {
        DType::Q8_K => {
            let (sb, j) = (&row[b / 8 * act.block_bytes()..][..act.block_bytes()], b % 8);
            let d = f32::from_le_bytes([sb[0], sb[1], sb[2], sb[3]]);
            let bsum = |o: usize| i16::from_le_bytes([sb[o], sb[o + 1]]) as i32;
            let sum = bsum(260 + 4 * j) + bsum(262 + 4 * j);
            (d, d * sum as f32, &sb[4 + 32 * j..4 + 32 * j + 32])
        }
        DType::Q8_1 => {
            let blk = &row[b * 36..b * 36 + 36];
            (h(blk, 0), h(blk, 2), &blk[4..])
        }
        _ => {
            let blk = &row[b * 34..b * 34 + 34];
            (h(blk, 0), 0.0, &blk[2..])
        }
    }
}

/// Activation row r of `p` in format `ty`: the product's converted row where it carries
/// one, else quantized into `qrow`; zeros past its rows (padding of the last row tile).
fn act_row<'q>(p: &Product<'q>, r: usize, ty: DType, quantize: fn(&[f32], &mut [u8]), qrow: &'q mut [u8]) -> &'q [u8] {
    if r >= p.m {
        qrow.fill(0);
        return qrow;
    }
    if let Some(c) = p.converted_row(r, ty) {
        return c;
    }
    quantize(p.x_row(r), qrow);
    qrow
}

/// Phase 1 of the int8 path: this thread's activation row tiles quantized as ggml-cpu does
/// ([`i8_act_type`]) into the shared row tiles, with their scales and minimum factors per
/// row tile and block.
fn i8_acts(p: &Product, ctx: &ThreadCtx, l: &I8Layout, has_min: bool) {
    let (m, at, nb) = (p.m, p.acts_at, l.nb);
    let quantize = ctx.kernels.kernels(l.act).unwrap().from_f32.unwrap();
    let (t0, t1) = split_range(m_tiles(m), ctx.ith, ctx.nth);
    // Row tiles t0 .. t1 are this thread's: their values, scales and sums are contiguous
    // ranges of the shared scratch; the quantized row is in its own area.
    let tiles = ctx.shared_mut::<u8>(at + t0 * nb * I8_BTILE, (t1 - t0) * nb * I8_BTILE);
    let act_d = ctx.shared_mut::<f32>(at + l.d_off + t0 * nb * 16 * 4, (t1 - t0) * nb * 16);
    let act_s = ctx.shared_mut::<f32>(at + l.s_off + t0 * nb * 16 * 4, (t1 - t0) * nb * 16);
    let area = ctx.thread_area(p.threads_at, l.thread_bytes);
    let qrow = area.carve::<u8>(l.act_row_off, l.row_bytes);
    for r in t0 * 16..t1 * 16 {
        let (mt, i) = (r / 16 - t0, r % 16);
        let row = act_row(p, r, l.act, quantize, qrow);
        for b in 0..nb {
            let (d, s, q) = act_block(l.act, row, b);
            act_d[(mt * nb + b) * 16 + i] = d;
            act_s[(mt * nb + b) * 16 + i] = if has_min { s } else { 0.0 };
            tiles[(mt * nb + b) * I8_BTILE + 32 * i..][..32].copy_from_slice(q);
        }
    }
}

/// Weight group `g` (GROUP_TILES row tiles of 16) staged into the kernel's column tiles, then
/// every pair of activation row tiles against them, each result row stored straight into
/// its output row. The caller holds an int8 tile session and has
/// passed the barrier after `i8_acts`.
/// The weight group a call stages and multiplies, and the bytes it prefetches meanwhile
/// (the thread's next item's weights).
struct Work<'a> {
    g: usize,
    next: &'a [u8],
}

fn i8_group(p: &Product, ctx: &ThreadCtx, tiles: &I8Session, l: &I8Layout, has_min: bool, Work { g, next }: Work, acc: &mut Block32) {
    let w = &p.w;
    let (k, n, m, at, nb) = (w.ne[0], w.ne[1], p.m, p.acts_at, l.nb);
    let n_tiles = n.div_ceil(16);
    let tile0 = g * GROUP_TILES;
    let used = (n_tiles - tile0).min(GROUP_TILES);
    // This thread's staging: the column tiles, their scales and minimums, int8 rows.
    let area = ctx.thread_area(p.threads_at, l.thread_bytes);
    let cq = area.carve::<u8>(0, GROUP_TILES * nb * I8_BTILE);
    let wd = area.carve::<f32>(l.wd_off, GROUP_TILES * nb * 16);
    let wm = area.carve::<f32>(l.wm_off, GROUP_TILES * nb * 16);
    let rows_tmp = area.carve::<u8>(l.rows_off, nb * 16 * I8_KBLOCK);
    for j in 0..GROUP_TILES {
        let (q, d, mm) = (&mut cq[j * nb * I8_BTILE..][..nb * I8_BTILE], &mut wd[j * nb * 16..][..nb * 16], &mut wm[j * nb * 16..][..nb * 16]);
        if j >= used {
            // Past the last tile (read as the pair of tile j - 1, never stored).
            d.fill(0.0);
            mm.fill(0.0);
            continue;
        }
        let r0 = (tile0 + j) * 16;
        match &w.packed {
            // Packed groups are whole 16-row tiles (Layout::for_weights).
            Some(pk) => {
                // Every int8 type's packed layout is one the column stager takes.
                rows::i8_cols_packed(pk.layout, pk.group(k, r0 / 16), nb, q, d, mm).expect("an int8 type's packed layout");
            }
            None => {
                let (rs, nrows) = weight_rows(w, r0);
                rows::i8_rows(w.ty, &rs[..nrows], nb, rows_tmp, d, mm);
                rows::rows_to_cols(nb, rows_tmp, q);
            }
        }
    }
    let cols = I8Cols { q: cq, d: wd, s: wm, nb };
    let mtl = m_tiles(m);
    // Written by every thread before the barrier, read-only now.
    let act_tiles = ctx.shared::<u8>(at, mtl * nb * I8_BTILE);
    let act_d = ctx.shared::<f32>(at + l.d_off, mtl * nb * 16);
    let act_s = ctx.shared::<f32>(at + l.s_off, mtl * nb * 16);
    let row_tile = |t: usize| I8Rows {
        q: &act_tiles[t * nb * I8_BTILE..(t + 1) * nb * I8_BTILE],
        stride: I8_KBLOCK,
        block_step: I8_BTILE,
        d: &act_d[t * nb * 16..(t + 1) * nb * 16],
        m: has_min.then(|| &act_s[t * nb * 16..(t + 1) * nb * 16]),
    };
    // `next` prefetched over every block call of this group.
    let calls = m.div_ceil(32) * used.div_ceil(2);
    for mt in (0..m.div_ceil(16)).step_by(2) {
        let rows_m = (m - mt * 16).min(32);
        // m_tiles rounds up to pairs: tile mt + 1 exists (zero rows past m).
        let pair = [row_tile(mt), row_tile(mt + 1)];
        for tp in (0..used).step_by(2) {
            let n0 = (tile0 + tp) * 16;
            let rows_n = (n - n0).min(if tp + 1 < used { 32 } else { 16 });
            let pf = Spread::part(next, calls, (mt / 2) * used.div_ceil(2) + tp / 2, nb);
            // A last odd row tile alone: half the products and drains.
            tiles.block(&cols, tp, if rows_m > 16 { &pair[..] } else { &pair[..1] }, acc, &pf);
            for i in 0..rows_m {
                // Columns n0 .. n0 + rows_n are this group's, which the queue gave this
                // thread alone.
                acc.copy_row(i, p.out(mt * 16 + i, n0, rows_n));
            }
        }
    }
}

/// Phase 1 of the K-quant path: this thread's activation row tiles quantized as ggml-cpu
/// does (Q8_K) into the shared row tiles, with their scales and 32-element sums.
fn ks_acts(p: &Product, ctx: &ThreadCtx, l: &KsLayout, has_min: bool) {
    let (m, at, nsb) = (p.m, p.acts_at, l.nsb);
    let quantize = ctx.kernels.kernels(DType::Q8_K).unwrap().from_f32.unwrap();
    let (t0, t1) = split_range(m_tiles(m), ctx.ith, ctx.nth);
    let per_tile = nsb * STEPS * TILE;
    // Row tiles t0 .. t1 are this thread's: contiguous ranges of each shared area.
    let tiles = ctx.shared_mut::<u8>(at + t0 * per_tile, (t1 - t0) * per_tile);
    let act_d = ctx.shared_mut::<f32>(at + l.d_off + t0 * nsb * 16 * 4, (t1 - t0) * nsb * 16);
    let mut sums = has_min.then(|| ctx.shared_mut::<u32>(at + l.b_off + t0 * nsb * 64 * 4, (t1 - t0) * nsb * 64));
    let area = ctx.thread_area(p.threads_at, l.thread_bytes);
    let qrow = area.carve::<u8>(l.act_row_off, l.row_bytes);
    let bb = DType::Q8_K.block_bytes();
    for r in t0 * 16..t1 * 16 {
        let (mt, i) = (r / 16 - t0, r % 16);
        let row = act_row(p, r, DType::Q8_K, quantize, qrow);
        for sb in 0..nsb {
            // block_q8_K: f32 d, 256 int8, 16 i16 sums of 16.
            let blk = &row[sb * bb..(sb + 1) * bb];
            act_d[(mt * nsb + sb) * 16 + i] = f32::from_le_bytes([blk[0], blk[1], blk[2], blk[3]]);
            for s in 0..STEPS {
                tiles[(mt * nsb + sb) * STEPS * TILE + s * TILE + 64 * i..][..64].copy_from_slice(&blk[4 + 64 * s..4 + 64 * (s + 1)]);
            }
            if let Some(sums) = sums.as_mut() {
                let b16 = |j: usize| i16::from_le_bytes([blk[260 + 2 * j], blk[261 + 2 * j]]) as i32;
                // A 32-element sum is at most 32 x 127: an i16.
                let b32 = |j: usize| (b16(2 * j) + b16(2 * j + 1)) as i16 as u16 as u32;
                for pr in 0..4 {
                    sums[((mt * nsb + sb) * 16 + i) * 4 + pr] = b32(2 * pr) | b32(2 * pr + 1) << 16;
                }
            }
        }
    }
}

/// Weight group `g` staged into the K-quant kernel's column tiles, then every pair of
/// activation row tiles against them, each result row stored straight into its output row.
/// The caller holds a K-quant tile session and has passed the barrier after `ks_acts`.
fn ks_group(p: &Product, ctx: &ThreadCtx, tiles: &KsSession, l: &KsLayout, has_min: bool, Work { g, next }: Work, acc: &mut Block32) {
    let w = &p.w;
    let (k, n, m, at, nsb) = (w.ne[0], w.ne[1], p.m, p.acts_at, l.nsb);
    let tile0 = g * GROUP_TILES;
    let used = (n.div_ceil(16) - tile0).min(GROUP_TILES);
    let area = ctx.thread_area(p.threads_at, l.thread_bytes);
    let cq = area.carve::<u8>(0, GROUP_TILES * nsb * SB_TILES_BYTES);
    let wd = area.carve::<f32>(l.wd_off, GROUP_TILES * nsb * 16);
    let wn = area.carve::<f32>(l.wn_off, GROUP_TILES * nsb * 16);
    let wm = area.carve::<u32>(l.wm_off, GROUP_TILES * nsb * 64);
    for j in 0..used {
        let mut ct = ColTile {
            q: &mut cq[j * nsb * SB_TILES_BYTES..][..nsb * SB_TILES_BYTES],
            d: &mut wd[j * nsb * 16..][..nsb * 16],
            nmin: &mut wn[j * nsb * 16..][..nsb * 16],
            mins: &mut wm[j * nsb * 64..][..nsb * 64],
        };
        let r0 = (tile0 + j) * 16;
        match &w.packed {
            // Tile sessions exist only with AVX-512BW, which the packed stager needs.
            Some(pk) => ks_cols::stage_packed(pk.layout, pk.group(k, r0 / 16), nsb, &mut ct).expect("a K-quant packed layout, AVX-512BW"),
            None => {
                let (rs, nrows) = weight_rows(w, r0);
                ks_cols::stage_rows(w.ty, &rs[..nrows], nsb, &mut ct);
            }
        }
    }
    let cols = KsCols { q: cq, d: wd, nmin: wn, mins: wm, nsb };
    let mtl = m_tiles(m);
    let per_tile = nsb * STEPS * TILE;
    // Written by every thread before the barrier, read-only now.
    let act_tiles = ctx.shared::<u8>(at, mtl * per_tile);
    let act_d = ctx.shared::<f32>(at + l.d_off, mtl * nsb * 16);
    let sums = has_min.then(|| ctx.shared::<u32>(at + l.b_off, mtl * nsb * 64));
    let row_tile = |t: usize| KsRows {
        q: &act_tiles[t * per_tile..(t + 1) * per_tile],
        d: &act_d[t * nsb * 16..(t + 1) * nsb * 16],
        bsums: sums.map(|s| &s[t * nsb * 64..(t + 1) * nsb * 64]),
    };
    // `next` prefetched over every block call of this group.
    let calls = m.div_ceil(32) * used;
    let steps = nsb * STEPS;
    for mt in (0..m.div_ceil(16)).step_by(2) {
        let rows_m = (m - mt * 16).min(32);
        // m_tiles rounds up to pairs: tile mt + 1 exists (zero rows past m).
        let pair = [row_tile(mt), row_tile(mt + 1)];
        for tp in (0..used).step_by(2) {
            let n0 = (tile0 + tp) * 16;
            let rows_n = (n - n0).min(if tp + 1 < used { 32 } else { 16 });
            // A last odd row tile alone: half the products and drains.
            let rows = if rows_m > 16 { &pair[..] } else { &pair[..1] };
            let call = (mt / 2) * used + tp;
            tiles.block(&cols, tp, rows, acc, 0, &Spread::part(next, calls, call, steps));
            if tp + 1 < used {
                tiles.block(&cols, tp + 1, rows, acc, 1, &Spread::part(next, calls, call + 1, steps));
            }
            for i in 0..rows_m {
                // Columns n0 .. n0 + rows_n are this group's, which the queue gave this
                // thread alone.
                acc.copy_row(i, p.out(mt * 16 + i, n0, rows_n));
            }
        }
    }
}

/// Phase 1 of the bf16 path: this thread's activation row tiles to bf16 (nearest even, as
/// ggml-cpu) in B-tile order in the shared scratch; for quantized weights, the values of
/// the weight type's activation format (quantized as ggml-cpu does, then to bf16).
fn bf16_acts(p: &Product, ctx: &ThreadCtx, l: &Bf16Layout) {
    let (k, m) = (p.k(), p.m);
    let ksteps = k / BF16_KSTEP;
    let to_bf16 = ctx.kernels.kernels(DType::BF16).unwrap().from_f32.unwrap();
    let (t0, t1) = split_range(m_tiles(m), ctx.ith, ctx.nth);
    // Row tiles t0 .. t1 are this thread's (a contiguous range of B tiles); the conversion
    // row is in its own area.
    let tiles = ctx.shared_mut::<u8>(p.acts_at + t0 * ksteps * BF16_BTILE, (t1 - t0) * ksteps * BF16_BTILE);
    let area = ctx.thread_area(p.threads_at, l.thread_bytes);
    let row = area.carve::<u8>(0, 2 * k);
    let mut quantized = l.act.map(|a| {
        let kern = ctx.kernels.kernels(a).expect("activation format in the table");
        let tmp = area.carve::<f32>(align64(2 * k), k);
        let q = area.carve::<u8>(align64(2 * k) + align64(4 * k), a.row_bytes(k));
        (kern.from_f32.expect("activation format quantizes"), kern.to_f32, tmp, q)
    });
    for r in t0 * 16..t1 * 16 {
        let (mt, i) = (r / 16 - t0, r % 16);
        match (&mut quantized, r < m) {
            (_, false) => row.fill(0),
            (Some((quantize, dequantize, tmp, q)), true) => {
                quantize(p.x_row(r), q);
                dequantize(q, tmp);
                to_bf16(tmp, row);
            }
            (None, true) => to_bf16(p.x_row(r), row),
        }
        for ks in 0..ksteps {
            let tile = &mut tiles[(mt * ksteps + ks) * BF16_BTILE..][..BF16_BTILE];
            for kp in 0..BF16_KSTEP / 2 {
                let o = (ks * BF16_KSTEP + 2 * kp) * 2;
                tile[kp * 64 + i * 4..][..4].copy_from_slice(&row[o..o + 4]);
            }
        }
    }
}

/// Weight group `g` (GROUP_TILES row tiles of 16) staged into bf16 A tiles in this
/// thread's scratch, then multiplied by every activation row tile. The caller holds a bf16
/// tile session and has passed the barrier after `bf16_acts`.
fn bf16_group(p: &Product, ctx: &ThreadCtx, tiles: &Bf16Session, l: &Bf16Layout, g: usize, acc: &mut Block32) {
    let w = &p.w;
    let (k, n, m) = (w.ne[0], w.ne[1], p.m);
    let ksteps = k / BF16_KSTEP;
    let n_tiles = n.div_ceil(16);
    let tile0 = g * GROUP_TILES;
    let used = (n_tiles - tile0).min(GROUP_TILES);
    // This thread's conversion rows (k floats, then 2 k bytes) and its weight tiles.
    let area = ctx.thread_area(p.threads_at, l.thread_bytes);
    let tmp = area.carve::<f32>(0, k);
    let row = area.carve::<u8>(align64(4 * k), 2 * k);
    let outs: [&mut [u8]; GROUP_TILES] = std::array::from_fn(|j| area.carve::<u8>(l.row_tmp + j * l.wtile_bytes, l.wtile_bytes));
    let mut wt: [&[u8]; GROUP_TILES] = [&[]; GROUP_TILES];
    for (j, out) in outs.into_iter().enumerate().take(used) {
        let r0 = (tile0 + j) * 16;
        match &w.packed {
            Some(p) => {
                let nrows = (n - r0).min(16);
                rows::bf16_rows_from(nrows, k, out, tmp, row, |i, t| packed::row_to_f32(&ctx.kernels.packed, p, k, r0 + i, t))
            }
            None => {
                let (rs, nrows) = weight_rows(w, r0);
                rows::bf16_rows(w.ty, &rs[..nrows], k, out, tmp, row)
            }
        }
        wt[j] = out;
    }
    // Written by every thread before the barrier, read-only now.
    let act = ctx.shared::<u8>(p.acts_at, m_tiles(m) * ksteps * BF16_BTILE);
    let at = |mt: usize| &act[mt * ksteps * BF16_BTILE..(mt + 1) * ksteps * BF16_BTILE];
    for mt in (0..m.div_ceil(16)).step_by(2) {
        let rows_m = (m - mt * 16).min(32);
        for tp in (0..used).step_by(2) {
            let n0 = (tile0 + tp) * 16;
            let rows_n = (n - n0).min(if tp + 1 < used { 32 } else { 16 });
            tiles.block(wt[tp], wt[(tp + 1).min(used - 1)], at(mt), at(mt + 1), ksteps, acc);
            store(acc, p, mt * 16, n0, rows_m, rows_n);
        }
    }
}
