//! MUL_MAT on the AMX tile unit, for 2-D products with enough activation rows to amortise
//! decoding the weight panels (see `kernels::amx`).
//!
//! Phase 1 (rows split across threads): activations into the tile operand format, int8 with
//! per-32-block scales exactly as ggml-cpu quantizes them (Q8_0, or Q8_1 for weights with a
//! minimum), or bf16. Phase 2 (weight panels split across threads, so each core streams its
//! own slice of the weights): each thread decodes a group of panels once into its private
//! scratch and runs every activation row tile against it.

use super::{split_range, Node};
use crate::backend::dtype::DType;
use crate::backend::exec::ThreadCtx;
use crate::backend::kernels::amx::gemm::{
    self, ActI8, PanelI8, ACT_TILE, BF16_BTILE, BF16_KCHUNK, I8_BTILE, I8_KBLOCK, I8_PANELS,
};
use crate::backend::kernels::amx::{self, panel};
use crate::backend::kernels::quant::kernels;

/// Fewest activation rows for which the tile path beats the vector kernels (below, the
/// panel decode is not amortised).
pub const MIN_ROWS: usize = 16;
/// bf16 weight panels decoded per group (128 columns: the group stays in L2 while all
/// activation row pairs stream past it).
const BF16_GROUP_PANELS: usize = 8;

enum Kind {
    I8 { has_min: bool },
    Bf16,
}

fn kind(node: &Node) -> Option<Kind> {
    let (w, x) = (node.src(0), node.src(1));
    let two_d = w.ne[2] == 1 && w.ne[3] == 1 && x.ne[2] == 1 && x.ne[3] == 1;
    if !amx::available() || !two_d || x.ne[1] < MIN_ROWS || !w.ne[0].is_multiple_of(32) {
        return None;
    }
    if let Some(has_min) = panel::i8_weight(w.ty) {
        return Some(Kind::I8 { has_min });
    }
    panel::bf16_weight(w.ty).then_some(Kind::Bf16)
}

/// Whether this node takes the tile path (decided from shapes and types only).
pub fn applies(node: &Node) -> bool {
    kind(node).is_some()
}

/// Scratch layout of the int8 path: shared activation parts, then one panel group per thread.
struct I8Layout {
    m_pad: usize,
    nb: usize,
    d_off: usize,
    s_off: usize,
    thread_off: usize,
    thread_bytes: usize,
    /// Per thread: quantized staging row, then the panels' q, d, m.
    stage_row: usize,
}

fn align64(x: usize) -> usize {
    (x + 63) & !63
}

impl I8Layout {
    fn new(k: usize, m: usize) -> I8Layout {
        let nb = k / I8_KBLOCK;
        let m_pad = m.next_multiple_of(32);
        let d_off = m_pad * k;
        let s_off = d_off + align64(m_pad * nb * 4);
        let thread_off = s_off + align64(m_pad * nb * 4);
        let stage_row = align64(DType::Q8_1.row_bytes(k));
        let panel_bytes = nb * I8_BTILE + 2 * nb * 16 * 4;
        I8Layout {
            m_pad,
            nb,
            d_off,
            s_off,
            thread_off,
            thread_bytes: stage_row + I8_PANELS * align64(panel_bytes),
            stage_row,
        }
    }
}

struct Bf16Layout {
    m_pad: usize,
    a_stride: usize,
    thread_off: usize,
    thread_bytes: usize,
}

impl Bf16Layout {
    fn new(k: usize, m: usize) -> Bf16Layout {
        let m_pad = m.next_multiple_of(32);
        let a_stride = align64(k * 2);
        Bf16Layout {
            m_pad,
            a_stride,
            thread_off: m_pad * a_stride,
            thread_bytes: BF16_GROUP_PANELS * (k / BF16_KCHUNK) * BF16_BTILE,
        }
    }
}

pub fn scratch_bytes(node: &Node, nth: usize) -> usize {
    let (k, m) = (node.src(0).ne[0], node.src(1).ne[1]);
    match kind(node) {
        Some(Kind::I8 { .. }) => {
            let l = I8Layout::new(k, m);
            l.thread_off + nth * l.thread_bytes
        }
        Some(Kind::Bf16) => {
            let l = Bf16Layout::new(k, m);
            l.thread_off + nth * l.thread_bytes
        }
        None => 0,
    }
}

pub fn mul_mat(node: &Node, ctx: &ThreadCtx) {
    match kind(node) {
        Some(Kind::I8 { has_min }) => mul_mat_i8(node, ctx, has_min),
        Some(Kind::Bf16) => mul_mat_bf16(node, ctx),
        None => unreachable!("matmul_amx::mul_mat without applies()"),
    }
}

fn mul_mat_i8(node: &Node, ctx: &ThreadCtx, has_min: bool) {
    let (w, x, dst) = (node.src(0), node.src(1), &node.dst);
    let (k, n, m) = (w.ne[0], w.ne[1], x.ne[1]);
    let l = I8Layout::new(k, m);
    let nb = l.nb;
    let (scratch, _) = ctx.scratch();
    let act_ty = if has_min { DType::Q8_1 } else { DType::Q8_0 };
    let quantize = kernels(act_ty).unwrap().from_f32.unwrap();
    let my = scratch.wrapping_add(l.thread_off + ctx.ith * l.thread_bytes);
    let bs = act_ty.row_bytes(I8_KBLOCK);

    // Phase 1: activation rows, quantized as ggml-cpu does, unpacked into q / d / s.
    let (r0, r1) = split_range(l.m_pad, ctx.ith, ctx.nth);
    for r in r0..r1 {
        // SAFETY: the scratch holds m_pad * k bytes of tiles and m_pad * nb scales at d_off /
        // s_off (scratch_bytes); row r's bytes and scales belong to this thread only. x rows
        // hold k f32.
        unsafe {
            let tile_row = scratch.add((r / 16) * nb * ACT_TILE + (r % 16) * I8_KBLOCK);
            let d = std::slice::from_raw_parts_mut(scratch.add(l.d_off) as *mut f32, l.m_pad * nb);
            let s = std::slice::from_raw_parts_mut(scratch.add(l.s_off) as *mut f32, l.m_pad * nb);
            if r >= m {
                for b in 0..nb {
                    std::ptr::write_bytes(tile_row.add(b * ACT_TILE), 0, I8_KBLOCK);
                }
                d[r * nb..(r + 1) * nb].fill(0.0);
                s[r * nb..(r + 1) * nb].fill(0.0);
                continue;
            }
            let xs = std::slice::from_raw_parts(x.row_ptr(r, 0, 0) as *const f32, k);
            let blocks = std::slice::from_raw_parts_mut(my, act_ty.row_bytes(k));
            quantize(xs, blocks);
            for b in 0..nb {
                let blk = &blocks[b * bs..(b + 1) * bs];
                let h = |at: usize| half::f16::from_bits(u16::from_le_bytes([blk[at], blk[at + 1]])).to_f32();
                d[r * nb + b] = h(0);
                s[r * nb + b] = if has_min { h(2) } else { 0.0 };
                std::ptr::copy_nonoverlapping(blk[bs - I8_KBLOCK..].as_ptr(), tile_row.add(b * ACT_TILE), I8_KBLOCK);
            }
        }
    }
    ctx.barrier();

    // Phase 2: groups of I8_PANELS panels (64 output columns) split across threads.
    let act = ActI8 {
        q: scratch as *const i8,
        d: scratch.wrapping_add(l.d_off) as *const f32,
        s: scratch.wrapping_add(l.s_off) as *const f32,
        nb,
    };
    let group_cols = 16 * I8_PANELS;
    let (g0, g1) = split_range(n.div_ceil(group_cols), ctx.ith, ctx.nth);
    if g0 >= g1 {
        return;
    }
    let panel_bytes = align64(nb * I8_BTILE + 2 * nb * 16 * 4);
    let row_bytes = w.row_bytes();
    let ldd = dst.nb[1] / 4;
    // SAFETY: amx::available() (kind) holds; the configuration is this thread's own.
    unsafe { gemm::i8_config() };
    for g in g0..g1 {
        let col0 = g * group_cols;
        let cols = (n - col0).min(group_cols);
        let used = cols.div_ceil(16);
        let mut panels = [PanelI8 { q: std::ptr::null(), d: std::ptr::null(), m: std::ptr::null() }; I8_PANELS];
        for j in 0..I8_PANELS {
            if j >= used {
                panels[j] = panels[0]; // unused slots repeat panel 0; their results are not stored
                continue;
            }
            let base = my.wrapping_add(l.stage_row + j * panel_bytes);
            let (qb, db, mb) = (base, base.wrapping_add(nb * I8_BTILE), base.wrapping_add(nb * I8_BTILE + nb * 64));
            let c0 = col0 + j * 16;
            let nrows = (n - c0).min(16);
            // SAFETY: weight rows c0.. hold row_bytes each; the panel staging (qb, db, mb) is
            // this thread's (scratch_bytes reserves I8_PANELS panels per thread).
            unsafe {
                let mut rows: [&[u8]; 16] = [&[]; 16];
                for (i, r) in rows.iter_mut().enumerate().take(nrows) {
                    *r = std::slice::from_raw_parts(w.row_ptr(c0 + i, 0, 0), row_bytes);
                }
                panel::decode_i8(
                    w.ty,
                    &rows[..nrows],
                    nb,
                    std::slice::from_raw_parts_mut(qb, nb * I8_BTILE),
                    std::slice::from_raw_parts_mut(db as *mut f32, nb * 16),
                    std::slice::from_raw_parts_mut(mb as *mut f32, if has_min { nb * 16 } else { 0 }),
                );
            }
            panels[j] = PanelI8 { q: qb, d: db as *const f32, m: if has_min { mb as *const f32 } else { std::ptr::null() } };
        }
        for mt in (0..m.div_ceil(16)).step_by(2) {
            let rows = (m - mt * 16).min(32);
            for jp in (0..used).step_by(2) {
                let c0 = col0 + jp * 16;
                let pair = [&panels[jp], &panels[(jp + 1).min(used - 1)]];
                // SAFETY: tile config loaded above; act holds m_pad (multiple of 32) rows;
                // output rows mt*16 .. +rows have ldd >= n floats and c0 + cols <= n.
                unsafe {
                    let out = (dst.row_ptr(mt * 16, 0, 0) as *mut f32).add(c0);
                    gemm::i8_block(&act, mt, rows, pair, out, ldd, (n - c0).min(32));
                }
            }
        }
    }
    // SAFETY: this thread loaded a tile configuration above.
    unsafe { amx::tile::release() };
}

fn mul_mat_bf16(node: &Node, ctx: &ThreadCtx) {
    let (w, x, dst) = (node.src(0), node.src(1), &node.dst);
    let (k, n, m) = (w.ne[0], w.ne[1], x.ne[1]);
    let l = Bf16Layout::new(k, m);
    let kchunks = k / BF16_KCHUNK;
    let (scratch, _) = ctx.scratch();
    let to_bf16 = kernels(DType::BF16).unwrap().from_f32.unwrap();

    // Phase 1: activation rows to bf16 (round to nearest even, as ggml-cpu).
    let (r0, r1) = split_range(l.m_pad, ctx.ith, ctx.nth);
    for r in r0..r1 {
        // SAFETY: scratch holds m_pad rows of a_stride bytes; row r is this thread's.
        unsafe {
            let a = std::slice::from_raw_parts_mut(scratch.add(r * l.a_stride), k * 2);
            if r >= m {
                a.fill(0);
            } else {
                to_bf16(std::slice::from_raw_parts(x.row_ptr(r, 0, 0) as *const f32, k), a);
            }
        }
    }
    ctx.barrier();

    // Phase 2: groups of BF16_GROUP_PANELS panels split across threads.
    let group_cols = 16 * BF16_GROUP_PANELS;
    let (g0, g1) = split_range(n.div_ceil(group_cols), ctx.ith, ctx.nth);
    if g0 >= g1 {
        return;
    }
    let stage = scratch.wrapping_add(l.thread_off + ctx.ith * l.thread_bytes);
    let panel_bytes = kchunks * BF16_BTILE;
    let row_bytes = w.row_bytes();
    let mut c = [[0f32; 256]; 4];
    // SAFETY: amx::available() (kind) holds; the configuration is this thread's own.
    unsafe { gemm::bf16_config() };
    for g in g0..g1 {
        let col0 = g * group_cols;
        let npanels = (n - col0).div_ceil(16).min(BF16_GROUP_PANELS);
        for j in 0..npanels {
            let c0 = col0 + j * 16;
            let nrows = (n - c0).min(16);
            // SAFETY: weight rows c0.. hold row_bytes each; panel j of this thread's staging.
            unsafe {
                let mut rows: [&[u8]; 16] = [&[]; 16];
                for (i, r) in rows.iter_mut().enumerate().take(nrows) {
                    *r = std::slice::from_raw_parts(w.row_ptr(c0 + i, 0, 0), row_bytes);
                }
                panel::decode_bf16(w.ty, &rows[..nrows], kchunks, std::slice::from_raw_parts_mut(stage.add(j * panel_bytes), panel_bytes));
            }
        }
        for m0 in (0..m).step_by(32) {
            for jp in (0..npanels).step_by(2) {
                let j1 = (jp + 1).min(npanels - 1);
                // SAFETY: config loaded; activation rows m0..m0+32 exist (m_pad); panels in staging.
                unsafe {
                    gemm::bf16_tile_block(
                        scratch.add(m0 * l.a_stride),
                        scratch.add((m0 + 16) * l.a_stride),
                        l.a_stride,
                        stage.add(jp * panel_bytes),
                        stage.add(j1 * panel_bytes),
                        kchunks,
                        &mut c,
                    );
                }
                // Copy the valid part of the 32 x 32 block out.
                for (t, ct) in c.iter().enumerate() {
                    let (ri, pj) = (t / 2, jp + t % 2);
                    if pj >= npanels || (t % 2 == 1 && j1 == jp) {
                        continue;
                    }
                    let cbase = col0 + pj * 16;
                    let ccols = (n - cbase).min(16);
                    for r in 0..16 {
                        let row = m0 + ri * 16 + r;
                        if row >= m {
                            break;
                        }
                        // SAFETY: output row `row` has ldd >= n floats; cbase + ccols <= n.
                        unsafe {
                            std::ptr::copy_nonoverlapping(
                                ct.as_ptr().add(r * 16),
                                (dst.row_ptr(row, 0, 0) as *mut f32).add(cbase),
                                ccols,
                            );
                        }
                    }
                }
            }
        }
    }
    // SAFETY: this thread loaded a tile configuration above.
    unsafe { amx::tile::release() };
}
