//! The Intel AMX engine (see `kernels::amx::gemm` for the operand layout), driven by
//! `engine::run_matrix` and `engine::run_coop`.
//!
//! Activations (row tiles split across threads) go into B tiles, int8 with per-32-block
//! scales exactly as ggml-cpu quantizes them (Q8_0, or Q8_1 for weights with a minimum), or
//! bf16. Each weight group (64 rows: loaded in place where the type allows, else unpacked
//! into the thread's private scratch) then runs against every activation row tile.

use super::super::{split_range, Node};
use super::engine::{MatrixEngine, GROUP_TILES};
use crate::dtype::DType;
use crate::threadpool::ThreadCtx;
use crate::kernels::amx::gemm::{
    self, ActI8, Block32, WeightsI8, BF16_BTILE, BF16_KSTEP, I8_BTILE, I8_KBLOCK,
};
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
    _tiles: crate::kernels::amx::tile::TileSession,
    acc: Block32,
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

    fn scratch_bytes(&self, plan: &Plan, nth: usize) -> usize {
        match plan {
            Plan::I8 { layout: l, .. } => l.thread_off + nth * l.thread_bytes,
            Plan::Bf16 { layout: l } => l.thread_off + nth * l.thread_bytes,
        }
    }

    fn prepare_acts(&self, plan: &Plan, node: &Node, ctx: &ThreadCtx, scratch: *mut u8) {
        match plan {
            Plan::I8 { has_min, layout } => i8_acts(node, ctx, scratch, layout, *has_min),
            Plan::Bf16 { layout } => bf16_acts(node, ctx, scratch, layout),
        }
    }

    fn session(&self, plan: &Plan) -> Session {
        // SAFETY: an `Amx` exists only where the process may drive AMX (Amx::get). The
        // session restores the thread's previous tile configuration when dropped.
        let tiles = unsafe {
            match plan {
                Plan::I8 { .. } => gemm::i8_session(),
                Plan::Bf16 { .. } => gemm::bf16_session(),
            }
        };
        Session { _tiles: tiles, acc: Block32::new() }
    }

    fn weight_group(&self, plan: &Plan, session: &mut Session, node: &Node, ctx: &ThreadCtx, scratch: *mut u8, g: usize) {
        match plan {
            Plan::I8 { has_min, layout } => i8_group(node, ctx, scratch, layout, *has_min, g, &mut session.acc),
            Plan::Bf16 { layout } => bf16_group(node, ctx, scratch, layout, g, &mut session.acc),
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
    thread_off: usize,
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
        let thread_off = s_off + align64(mt * nb * 16 * 4);
        let row_tmp = align64(DType::Q8_1.row_bytes(k));
        let wtile_bytes = align64(16 * k) + 2 * align64(nb * 16 * 4);
        let gather_off = row_tmp + GROUP_TILES * wtile_bytes;
        I8Layout {
            nb,
            d_off,
            s_off,
            thread_off,
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
    thread_off: usize,
    thread_bytes: usize,
    row_tmp: usize,
    wtile_bytes: usize,
}

impl Bf16Layout {
    fn new(k: usize, m: usize) -> Bf16Layout {
        let row_tmp = align64(4 * k) + align64(2 * k);
        let wtile_bytes = 32 * k;
        Bf16Layout {
            thread_off: m_tiles(m) * (k / BF16_KSTEP) * BF16_BTILE,
            thread_bytes: row_tmp + GROUP_TILES * wtile_bytes,
            row_tmp,
            wtile_bytes,
        }
    }
}

/// Weight rows `r0 .. r0 + 16` (fewer at the end) as byte slices of `row_bytes`.
fn weight_rows(w: &TensorRef, r0: usize) -> ([&'static [u8]; 16], usize) {
    let n = (w.ne[1] - r0).min(16);
    let mut rows: [&[u8]; 16] = [&[]; 16];
    for (i, r) in rows.iter_mut().enumerate().take(n) {
        // SAFETY: rows r0 .. r0 + n exist and hold row_bytes each (supports: packed rows).
        *r = unsafe { std::slice::from_raw_parts(w.row_ptr(r0 + i, 0, 0), w.row_bytes()) };
    }
    (rows, n)
}

/// Phase 1 of the int8 path: this thread's activation row tiles, quantized as ggml-cpu does
/// (Q8_0, or Q8_1 for weights with a minimum), into B-tile order with their scales and sums.
fn i8_acts(node: &Node, ctx: &ThreadCtx, scratch: *mut u8, l: &I8Layout, has_min: bool) {
    let (w, x) = (node.src(0), node.src(1));
    let (k, m) = (w.ne[0], x.ne[1]);
    let nb = l.nb;
    let act_ty = if has_min { DType::Q8_1 } else { DType::Q8_0 };
    let quantize = ctx.kernels.kernels(act_ty).unwrap().from_f32.unwrap();
    let my = scratch.wrapping_add(l.thread_off + ctx.ith * l.thread_bytes);
    let bs = act_ty.block_bytes();
    let (act_q, act_d, act_s) = (scratch, scratch.wrapping_add(l.d_off) as *mut f32, scratch.wrapping_add(l.s_off) as *mut f32);
    // Phase 1: activation row tiles, quantized as ggml-cpu does, into B-tile order.
    let (t0, t1) = split_range(m_tiles(m), ctx.ith, ctx.nth);
    for r in t0 * 16..t1 * 16 {
        let (mt, i) = (r / 16, r % 16);
        // SAFETY: the scratch holds m_tiles * nb B tiles and as many 16-float scale / sum
        // vectors (scratch_bytes); row tile mt belongs to this thread only. x rows hold k f32;
        // the quantization row `my` is this thread's.
        unsafe {
            let blocks = std::slice::from_raw_parts_mut(my, act_ty.row_bytes(k));
            if r < m {
                quantize(
                    std::slice::from_raw_parts(x.row_ptr(r, 0, 0) as *const f32, k),
                    blocks,
                );
            }
            for b in 0..nb {
                let at = (mt * nb + b) * 16 + i;
                let tile = act_q.add((mt * nb + b) * I8_BTILE);
                if r >= m {
                    *act_d.add(at) = 0.0;
                    *act_s.add(at) = 0.0;
                    for k4 in 0..I8_KBLOCK / 4 {
                        std::ptr::write_unaligned(tile.add(k4 * 64 + i * 4) as *mut u32, 0);
                    }
                    continue;
                }
                let blk = &blocks[b * bs..(b + 1) * bs];
                let h = |o: usize| {
                    half::f16::from_bits(u16::from_le_bytes([blk[o], blk[o + 1]])).to_f32()
                };
                *act_d.add(at) = h(0);
                *act_s.add(at) = if has_min { h(2) } else { 0.0 };
                let qs = &blk[bs - I8_KBLOCK..];
                for k4 in 0..I8_KBLOCK / 4 {
                    let v = u32::from_le_bytes([
                        qs[k4 * 4],
                        qs[k4 * 4 + 1],
                        qs[k4 * 4 + 2],
                        qs[k4 * 4 + 3],
                    ]);
                    std::ptr::write_unaligned(tile.add(k4 * 64 + i * 4) as *mut u32, v);
                }
            }
        }
    }
}

/// Weight group `g` (GROUP_TILES row tiles of 16) unpacked to int8 A tiles (loaded in place
/// where the type allows) and multiplied by every activation row tile. The caller holds an
/// int8 tile session and has passed the barrier after `i8_acts`.
fn i8_group(node: &Node, ctx: &ThreadCtx, scratch: *mut u8, l: &I8Layout, has_min: bool, g: usize, acc: &mut Block32) {
    let (w, x, dst) = (node.src(0), node.src(1), &node.dst);
    let (k, n, m) = (w.ne[0], w.ne[1], x.ne[1]);
    let nb = l.nb;
    let my = scratch.wrapping_add(l.thread_off + ctx.ith * l.thread_bytes);
    let act = ActI8 { q: scratch, d: scratch.wrapping_add(l.d_off) as *const f32, s: scratch.wrapping_add(l.s_off) as *const f32, nb };
    let n_tiles = n.div_ceil(16);
    let in_place = rows::i8_in_place(w.ty);
    let ldd = dst.nb[1] / 4;
    let tile0 = g * GROUP_TILES;
    let used = (n_tiles - tile0).min(GROUP_TILES);
    let mut wt = [WeightsI8 {
        q: std::ptr::null(),
        stride: 0,
        block_step: 0,
        d: std::ptr::null(),
        m: std::ptr::null(),
    }; GROUP_TILES];
    for (j, t) in wt.iter_mut().enumerate().take(used) {
        let r0 = (tile0 + j) * 16;
        let (rs, nrows) = weight_rows(w, r0);
        let base = my.wrapping_add(l.row_tmp + j * l.wtile_bytes);
        let (qb, db) = (base, base.wrapping_add(align64(16 * k)));
        let mb = db.wrapping_add(align64(nb * 16 * 4));
        // SAFETY: this thread's staging for tile j (scratch_bytes reserves GROUP_TILES).
        unsafe {
            let d = std::slice::from_raw_parts_mut(db as *mut f32, nb * 16);
            let mm = std::slice::from_raw_parts_mut(
                mb as *mut f32,
                if has_min { nb * 16 } else { 0 },
            );
            *t = match (&w.packed, in_place) {
                (None, Some(off)) if nrows == 16 => {
                    rows::i8_scales(w.ty, &rs[..nrows], nb, d, mm);
                    WeightsI8 {
                        q: w.row_ptr(r0, 0, 0).add(off),
                        stride: w.nb[1],
                        block_step: w.ty.block_bytes(),
                        d: db as *const f32,
                        m: std::ptr::null(),
                    }
                }
                (packed, _) => {
                    let q = std::slice::from_raw_parts_mut(qb, 16 * k);
                    match packed {
                        // Packed groups are whole 16-row tiles (Layout::for_weights).
                        Some(p) => {
                            let gb = p.layout.group_bytes(k);
                            let group = std::slice::from_raw_parts(p.data.add(r0 / 16 * gb), gb);
                            if rows::i8_rows_packed(p.layout, group, nb, q, d, mm).is_none() {
                                // The group back in ggml's layout (this thread's gather
                                // area, after its weight tiles), then staged as such.
                                let rb = w.ty.row_bytes(k);
                                let g = std::slice::from_raw_parts_mut(my.add(l.gather_off), 16 * rb);
                                packed::unpack(p.layout, group, g, 16, k);
                                let rows16: [&[u8]; 16] = std::array::from_fn(|i| &g[i * rb..(i + 1) * rb]);
                                rows::i8_rows(w.ty, &rows16, nb, q, d, mm);
                            }
                        }
                        None => rows::i8_rows(w.ty, &rs[..nrows], nb, q, d, mm),
                    }
                    WeightsI8 {
                        q: qb,
                        stride: I8_KBLOCK,
                        block_step: 16 * I8_KBLOCK,
                        d: db as *const f32,
                        m: if has_min { mb as *const f32 } else { std::ptr::null() },
                    }
                }
            };
        }
    }
    for mt in (0..m.div_ceil(16)).step_by(2) {
        let rows_m = (m - mt * 16).min(32);
        for tp in (0..used).step_by(2) {
            let n0 = (tile0 + tp) * 16;
            let rows_n = (n - n0).min(if tp + 1 < used { 32 } else { 16 });
            // SAFETY: config loaded; act holds row tiles mt, mt + 1 (m_tiles is even);
            // the weight tiles hold nb blocks; output rows mt*16 .. + rows_m have ldd >= n
            // floats and n0 + rows_n <= n.
            unsafe {
                gemm::i8_block(&act, mt, [&wt[tp], &wt[(tp + 1).min(used - 1)]], acc);
                acc.store_transposed(
                    (dst.row_ptr(mt * 16, 0, 0) as *mut f32).add(n0),
                    ldd,
                    rows_m,
                    rows_n,
                );
            }
        }
    }
}

/// Phase 1 of the bf16 path: this thread's activation row tiles to bf16 (nearest even, as
/// ggml-cpu) in B-tile order at `scratch`.
fn bf16_acts(node: &Node, ctx: &ThreadCtx, scratch: *mut u8, l: &Bf16Layout) {
    let (w, x) = (node.src(0), node.src(1));
    let (k, m) = (w.ne[0], x.ne[1]);
    let ksteps = k / BF16_KSTEP;
    let to_bf16 = ctx.kernels.kernels(DType::BF16).unwrap().from_f32.unwrap();
    let my = scratch.wrapping_add(l.thread_off + ctx.ith * l.thread_bytes);
    let (t0, t1) = split_range(m_tiles(m), ctx.ith, ctx.nth);
    for r in t0 * 16..t1 * 16 {
        let (mt, i) = (r / 16, r % 16);
        // SAFETY: scratch holds m_tiles * ksteps B tiles; row tile mt is this thread's; the
        // conversion row `my` is this thread's; x rows hold k f32.
        unsafe {
            let row = std::slice::from_raw_parts_mut(my, 2 * k);
            if r < m {
                to_bf16(
                    std::slice::from_raw_parts(x.row_ptr(r, 0, 0) as *const f32, k),
                    row,
                );
            } else {
                row.fill(0);
            }
            for ks in 0..ksteps {
                let tile = scratch.add((mt * ksteps + ks) * BF16_BTILE);
                for kp in 0..BF16_KSTEP / 2 {
                    let o = (ks * BF16_KSTEP + 2 * kp) * 2;
                    let v = u32::from_le_bytes([row[o], row[o + 1], row[o + 2], row[o + 3]]);
                    std::ptr::write_unaligned(tile.add(kp * 64 + i * 4) as *mut u32, v);
                }
            }
        }
    }
}

/// Weight group `g` (GROUP_TILES row tiles of 16) staged into bf16 A tiles in this
/// thread's scratch, then multiplied by every activation row tile. The caller holds a bf16
/// tile session and has passed the barrier after `bf16_acts`.
fn bf16_group(
    node: &Node,
    ctx: &ThreadCtx,
    scratch: *mut u8,
    l: &Bf16Layout,
    g: usize,
    acc: &mut Block32,
) {
    let (w, x, dst) = (node.src(0), node.src(1), &node.dst);
    let (k, n, m) = (w.ne[0], w.ne[1], x.ne[1]);
    let ksteps = k / BF16_KSTEP;
    let n_tiles = n.div_ceil(16);
    let ldd = dst.nb[1] / 4;
    let my = scratch.wrapping_add(l.thread_off + ctx.ith * l.thread_bytes);
    let tile0 = g * GROUP_TILES;
    let used = (n_tiles - tile0).min(GROUP_TILES);
    let mut wt = [std::ptr::null::<u8>(); GROUP_TILES];
    for (j, t) in wt.iter_mut().enumerate().take(used) {
        let r0 = (tile0 + j) * 16;
        let (rs, nrows) = weight_rows(w, r0);
        let base = my.wrapping_add(l.row_tmp + j * l.wtile_bytes);
        // SAFETY: this thread's staging for tile j (scratch_bytes reserves GROUP_TILES) and
        // its conversion rows (k floats, then 2 k bytes, at `my`).
        unsafe {
            let tmp = std::slice::from_raw_parts_mut(my as *mut f32, k);
            let row = std::slice::from_raw_parts_mut(my.add(align64(4 * k)), 2 * k);
            let out = std::slice::from_raw_parts_mut(base, l.wtile_bytes);
            match &w.packed {
                Some(p) => rows::bf16_rows_from(nrows, k, out, tmp, row, |i, t| {
                    packed::row_to_f32(&ctx.kernels.packed, p, k, r0 + i, t)
                }),
                None => rows::bf16_rows(w.ty, &rs[..nrows], k, out, tmp, row),
            }
        }
        *t = base as *const u8;
    }
    for mt in (0..m.div_ceil(16)).step_by(2) {
        let rows_m = (m - mt * 16).min(32);
        let b0 = scratch.wrapping_add(mt * ksteps * BF16_BTILE);
        let b1 = scratch.wrapping_add((mt + 1) * ksteps * BF16_BTILE);
        for tp in (0..used).step_by(2) {
            let n0 = (tile0 + tp) * 16;
            let rows_n = (n - n0).min(if tp + 1 < used { 32 } else { 16 });
            let (w0, w1) = (wt[tp], wt[(tp + 1).min(used - 1)]);
            // SAFETY: the caller's session configured the tiles; each weight tile holds
            // ksteps A tiles in tile order; act holds row tiles mt, mt + 1; output rows
            // mt*16 .. + rows_m have ldd >= n floats and n0 + rows_n <= n.
            unsafe {
                gemm::bf16_block(w0, w1, b0, b1, ksteps, acc);
                acc.store_transposed(
                    (dst.row_ptr(mt * 16, 0, 0) as *mut f32).add(n0),
                    ldd,
                    rows_m,
                    rows_n,
                );
            }
        }
    }
}
