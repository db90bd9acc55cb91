//! The Intel AMX engine (see `kernels::amx::gemm` for the operand layout), driven by
//! `engine::run_matrix` and `engine::run_coop`.
//!
//! Activations (row tiles split across threads) go into B tiles, int8 with per-32-block
//! scales exactly as ggml-cpu quantizes them (Q8_0, or Q8_1 for weights with a minimum), or
//! bf16. Each weight group (64 rows: loaded in place where the type allows, else unpacked
//! into the thread's private scratch) then runs against every activation row tile.

use super::super::split_range;
use super::engine::{MatrixEngine, GROUP_TILES};
use super::product::Product;
use crate::dtype::DType;
use crate::threadpool::ThreadCtx;
use crate::kernels::amx::gemm::{Block32, BF16_BTILE, BF16_KSTEP, I8_BTILE, I8_KBLOCK};
use crate::kernels::amx::stage::{Bf16Session, I8Acts, I8Session, I8Weights};
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
    Bf16 { layout: Bf16Layout },
}

/// A thread's tile configuration (restored on drop) and its accumulators.
pub struct Session {
    tiles: Tiles,
    acc: Block32,
}

enum Tiles {
    I8(I8Session),
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
        // The int8 engine takes ggml's layout or the packed one (groups staged per tile).
        if let (true, Some(has_min)) = (int8_engine_on(), rows::i8_weight(ty)) {
            return Some(Plan::I8 { has_min, layout: I8Layout::new(ty, k, m) });
        }
        rows::bf16_weight(ty).then(|| Plan::Bf16 { layout: Bf16Layout::new(k, m) })
    }

    fn acts_bytes(&self, plan: &Plan) -> usize {
        match plan {
            Plan::I8 { layout: l, .. } => l.acts_bytes,
            Plan::Bf16 { layout: l } => l.acts_bytes,
        }
    }

    fn thread_bytes(&self, plan: &Plan) -> usize {
        match plan {
            Plan::I8 { layout: l, .. } => l.thread_bytes,
            Plan::Bf16 { layout: l } => l.thread_bytes,
        }
    }

    fn prepare_acts(&self, plan: &Plan, p: &Product, ctx: &ThreadCtx) {
        match plan {
            Plan::I8 { has_min, layout } => i8_acts(p, ctx, layout, *has_min),
            Plan::Bf16 { layout } => bf16_acts(p, ctx, layout),
        }
    }

    fn session(&self, plan: &Plan) -> Session {
        // An `Amx` exists only where the process drives AMX (Amx::get), which the sessions
        // check again; they restore the thread's previous tile configuration when dropped.
        let tiles = match plan {
            Plan::I8 { .. } => Tiles::I8(I8Session::begin()),
            Plan::Bf16 { .. } => Tiles::Bf16(Bf16Session::begin()),
        };
        Session { tiles, acc: Block32::new() }
    }

    fn weight_group(&self, plan: &Plan, session: &mut Session, p: &Product, ctx: &ThreadCtx, g: usize) {
        match (plan, &session.tiles) {
            (Plan::I8 { has_min, layout }, Tiles::I8(t)) => i8_group(p, ctx, t, layout, *has_min, g, &mut session.acc),
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

/// Whether 2-D products of `ty` weights run on the int8 tile engine (else the bf16 one).
pub fn int8_engine(ty: DType) -> bool {
    int8_engine_on() && rows::i8_weight(ty).is_some()
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
pub fn feasible_type(ty: DType, k: usize) -> bool {
    k.is_multiple_of(32) && (rows::bf16_weight(ty) || rows::i8_weight(ty).is_some())
}

fn align64(x: usize) -> usize {
    (x + 63) & !63
}

/// Activation row tiles, rounded up to pairs (the kernels take two at a time).
fn m_tiles(m: usize) -> usize {
    m.div_ceil(16).next_multiple_of(2)
}

/// Scratch of the int8 path: activation tiles, their scales and sums (shared), then per
/// thread a quantization row and the weight group's unpacked rows, scales and minimums.
#[derive(Clone, Copy)]
pub struct I8Layout {
    nb: usize,
    d_off: usize,
    s_off: usize,
    acts_bytes: usize,
    thread_bytes: usize,
    row_tmp: usize,
    /// Per weight row tile: unpacked values (16 rows of k), then scales, then minimums.
    wtile_bytes: usize,
    /// Offset in a thread's area of a packed group put back into ggml's layout (16 rows),
    /// for the packed layouts the int8 stager does not read directly (the K-quants).
    gather_off: usize,
}

impl I8Layout {
    fn new(ty: DType, k: usize, m: usize) -> I8Layout {
        let nb = k / I8_KBLOCK;
        let mt = m_tiles(m);
        let d_off = mt * nb * I8_BTILE;
        let s_off = d_off + align64(mt * nb * 16 * 4);
        let acts_bytes = s_off + align64(mt * nb * 16 * 4);
        let row_tmp = align64(DType::Q8_1.row_bytes(k));
        let wtile_bytes = align64(16 * k) + 2 * align64(nb * 16 * 4);
        let gather_off = row_tmp + GROUP_TILES * wtile_bytes;
        I8Layout {
            nb,
            d_off,
            s_off,
            acts_bytes,
            thread_bytes: gather_off + align64(16 * ty.row_bytes(k)),
            row_tmp,
            wtile_bytes,
            gather_off,
        }
    }
}

/// Scratch of the bf16 path: activation tiles (shared), then per thread a conversion row
/// (k floats, then 2 k bytes) and the weight group's A tiles in tile order.
#[derive(Clone, Copy)]
pub struct Bf16Layout {
    acts_bytes: usize,
    thread_bytes: usize,
    row_tmp: usize,
    wtile_bytes: usize,
}

impl Bf16Layout {
    fn new(k: usize, m: usize) -> Bf16Layout {
        let row_tmp = align64(4 * k) + align64(2 * k);
        let wtile_bytes = 32 * k;
        Bf16Layout {
            acts_bytes: m_tiles(m) * (k / BF16_KSTEP) * BF16_BTILE,
            thread_bytes: row_tmp + GROUP_TILES * wtile_bytes,
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

/// Writes the `rows_m` x `rows_n` corner of `acc` transposed into the output: activation
/// rows `m0 ..`, columns `n0 ..` (this thread's: the weight group's columns).
fn store(acc: &Block32, p: &Product, m0: usize, n0: usize, rows_m: usize, rows_n: usize) {
    for i in 0..rows_m {
        acc.store_row(i, p.out(m0 + i, n0, rows_n));
    }
}

/// Phase 1 of the int8 path: this thread's activation row tiles, quantized as ggml-cpu does
/// (Q8_0, or Q8_1 for weights with a minimum), into B-tile order with their scales and sums.
fn i8_acts(p: &Product, ctx: &ThreadCtx, l: &I8Layout, has_min: bool) {
    let (k, m, at) = (p.k(), p.m, p.acts_at);
    let nb = l.nb;
    let act_ty = if has_min { DType::Q8_1 } else { DType::Q8_0 };
    let quantize = ctx.kernels.kernels(act_ty).unwrap().from_f32.unwrap();
    let bs = act_ty.block_bytes();
    let (t0, t1) = split_range(m_tiles(m), ctx.ith, ctx.nth);
    // Row tiles t0 .. t1 are this thread's: their B tiles, scales and sums are contiguous
    // ranges of the shared scratch; the quantization row is in its own area.
    let tiles = ctx.shared_mut::<u8>(at + t0 * nb * I8_BTILE, (t1 - t0) * nb * I8_BTILE);
    let act_d = ctx.shared_mut::<f32>(at + l.d_off + t0 * nb * 16 * 4, (t1 - t0) * nb * 16);
    let act_s = ctx.shared_mut::<f32>(at + l.s_off + t0 * nb * 16 * 4, (t1 - t0) * nb * 16);
    let area = ctx.thread_area(p.threads_at, l.thread_bytes);
    let blocks = area.carve::<u8>(0, act_ty.row_bytes(k));
    for r in t0 * 16..t1 * 16 {
        let (mt, i) = (r / 16 - t0, r % 16);
        if r < m {
            quantize(p.x_row(r), blocks);
        }
        for b in 0..nb {
            let at = (mt * nb + b) * 16 + i;
            let tile = &mut tiles[(mt * nb + b) * I8_BTILE..][..I8_BTILE];
            if r >= m {
                act_d[at] = 0.0;
                act_s[at] = 0.0;
                for k4 in 0..I8_KBLOCK / 4 {
                    tile[k4 * 64 + i * 4..][..4].fill(0);
                }
                continue;
            }
            let blk = &blocks[b * bs..(b + 1) * bs];
            let h = |o: usize| half::f16::from_bits(u16::from_le_bytes([blk[o], blk[o + 1]])).to_f32();
            act_d[at] = h(0);
            act_s[at] = if has_min { h(2) } else { 0.0 };
            let qs = &blk[bs - I8_KBLOCK..];
            for k4 in 0..I8_KBLOCK / 4 {
                tile[k4 * 64 + i * 4..][..4].copy_from_slice(&qs[k4 * 4..k4 * 4 + 4]);
            }
        }
    }
}

/// Weight group `g` (GROUP_TILES row tiles of 16) unpacked to int8 A tiles (loaded in place
/// where the type allows) and multiplied by every activation row tile. The caller holds an
/// int8 tile session and has passed the barrier after `i8_acts`.
fn i8_group(p: &Product, ctx: &ThreadCtx, tiles: &I8Session, l: &I8Layout, has_min: bool, g: usize, acc: &mut Block32) {
    let w = &p.w;
    let (k, n, m, at) = (w.ne[0], w.ne[1], p.m, p.acts_at);
    let nb = l.nb;
    let mtl = m_tiles(m);
    // Written by every thread before the barrier, read-only now.
    let act = I8Acts {
        q: ctx.shared::<u8>(at, mtl * nb * I8_BTILE),
        d: ctx.shared::<f32>(at + l.d_off, mtl * nb * 16),
        s: ctx.shared::<f32>(at + l.s_off, mtl * nb * 16),
        nb,
    };
    let n_tiles = n.div_ceil(16);
    let in_place = rows::i8_in_place(w.ty);
    let tile0 = g * GROUP_TILES;
    let used = (n_tiles - tile0).min(GROUP_TILES);
    // This thread's staging: per weight tile its values, scales and minimums, then the
    // gather area for a packed group put back into ggml's layout.
    let area = ctx.thread_area(p.threads_at, l.thread_bytes);
    let stage: [(&mut [u8], &mut [f32], &mut [f32]); GROUP_TILES] = std::array::from_fn(|j| {
        let base = l.row_tmp + j * l.wtile_bytes;
        let db = base + align64(16 * k);
        (
            area.carve::<u8>(base, 16 * k),
            area.carve::<f32>(db, nb * 16),
            area.carve::<f32>(db + align64(nb * 16 * 4), if has_min { nb * 16 } else { 0 }),
        )
    });
    let rb = w.ty.row_bytes(k);
    let gather = area.carve::<u8>(l.gather_off, 16 * rb);
    let mut wt: [Option<I8Weights>; GROUP_TILES] = std::array::from_fn(|_| None);
    for (j, (t, (q, d, mm))) in wt.iter_mut().zip(stage).enumerate().take(used) {
        let r0 = (tile0 + j) * 16;
        *t = Some(match (&w.packed, in_place) {
            (None, Some(off)) if w.ne[1] - r0 >= 16 => {
                let (rs, nrows) = weight_rows(w, r0);
                rows::i8_scales(w.ty, &rs[..nrows], nb, d, mm);
                // The 16 rows in place, from the first value of row r0.
                let start = w.row_offset(r0, 0, 0) + off;
                I8Weights { q: w.bytes_at::<u8>(start, 15 * w.nb[1] + w.row_bytes() - off), stride: w.nb[1], block_step: w.ty.block_bytes(), d, m: None }
            }
            (packed, _) => {
                match packed {
                    // Packed groups are whole 16-row tiles (Layout::for_weights).
                    Some(p) => {
                        let group = p.group(k, r0 / 16);
                        if rows::i8_rows_packed(p.layout, group, nb, q, d, mm).is_none() {
                            // The group back in ggml's layout (this thread's gather area),
                            // then staged as such.
                            packed::unpack(p.layout, group, gather, 16, k);
                            let rows16: [&[u8]; 16] = std::array::from_fn(|i| &gather[i * rb..(i + 1) * rb]);
                            rows::i8_rows(w.ty, &rows16, nb, q, d, mm);
                        }
                    }
                    None => {
                        let (rs, nrows) = weight_rows(w, r0);
                        rows::i8_rows(w.ty, &rs[..nrows], nb, q, d, mm);
                    }
                }
                I8Weights { q, stride: I8_KBLOCK, block_step: 16 * I8_KBLOCK, d, m: has_min.then_some(&*mm) }
            }
        });
    }
    let wt: [&I8Weights; GROUP_TILES] = std::array::from_fn(|j| wt[j.min(used - 1)].as_ref().expect("tiles 0 .. used staged"));
    for mt in (0..m.div_ceil(16)).step_by(2) {
        let rows_m = (m - mt * 16).min(32);
        for tp in (0..used).step_by(2) {
            let n0 = (tile0 + tp) * 16;
            let rows_n = (n - n0).min(if tp + 1 < used { 32 } else { 16 });
            tiles.block(&act, mt, [wt[tp], wt[(tp + 1).min(used - 1)]], acc);
            store(acc, p, mt * 16, n0, rows_m, rows_n);
        }
    }
}

/// Phase 1 of the bf16 path: this thread's activation row tiles to bf16 (nearest even, as
/// ggml-cpu) in B-tile order in the shared scratch.
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
    for r in t0 * 16..t1 * 16 {
        let (mt, i) = (r / 16 - t0, r % 16);
        if r < m {
            to_bf16(p.x_row(r), row);
        } else {
            row.fill(0);
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
