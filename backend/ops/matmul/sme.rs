//! The Arm SME engine (see `kernels::sme` for the operand layout), driven by
//! `engine::run_matrix` and `engine::run_coop`.
//!
//! Float path ("scale, then FMOPA"): activations (blocks split across threads) are
//! converted into the weight type's activation format exactly as ggml-cpu does (Q8_0, Q8_1,
//! Q8_K, F16, BF16, F32), then, for the quantized formats, dequantized to f16; so the
//! products see the same quantized values as the vector kernels. Each weight group is
//! dequantized (q * d, to f16) or copied (F16, BF16, F32) row by row into the thread's
//! scratch, transposed into blocks through ZA and multiplied by every activation block in
//! one streaming region, f32 accumulation over all of K in ZA, one store per output tile.
//! The outer products: widening FMOPA for f16, BFMOPA for BF16 weights, FMOPA f32 for F32.

use super::super::split_range;
use super::engine::{MatrixEngine, GROUP_TILES};
use super::product::Product;
use crate::dtype::DType;
use crate::kernels::packed;
use crate::kernels::quant::scalar_kernels;
use crate::kernels::registry::MatrixUnit;
use crate::kernels::sme::stage::{f32_to_f16, i8_x16_blocks, nibble_pairs, put_block_row, q4_0x16_units, q8_0_units, zero_block_row, I8Packed};
use crate::kernels::sme::{DstRows, Geometry, GroupOperands, I8Scales, Outer, Streaming};
use crate::kernels::KernelSet;
use crate::threadpool::ThreadCtx;

/// Weight rows per group (the driver's work item).
const GROUP_ROWS: usize = GROUP_TILES * 16;

/// The SME engine at the process's streaming vector length. Constructed only where the
/// process drives SME (the kernel set's matrix unit) and the CPU reports that SVL.
pub struct Sme {
    geo: Geometry,
    /// FEAT_FP16 (the NEON Q4_0 stager's half-precision arithmetic).
    fp16: bool,
}

impl Sme {
    /// The engine, when the kernel set `ks` drives SME.
    pub fn get(ks: &KernelSet) -> Option<Sme> {
        let Some(MatrixUnit::Sme(u)) = ks.matrix else { return None };
        // Detected once: engines are looked up for every node.
        static FEATURES: std::sync::OnceLock<crate::platform::CpuFeatures> = std::sync::OnceLock::new();
        let f = FEATURES.get_or_init(crate::platform::CpuFeatures::detect);
        (f.sme && f.svl_bytes == u.svl_bytes && (f.sme2 || !u.sme2)).then_some(Sme { geo: Geometry { svl: u.svl_bytes, sme2: u.sme2 }, fp16: f.fp16 })
    }
}

/// The group kernel of a plan.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    /// Weights and activations as 16-bit (or 32-bit) floats, products in f32.
    Float(Outer),
    /// Int8 SMOPA with ggml's per-block scaling (`has_min`: Q4_1, activations as Q8_1).
    Int8 { has_min: bool },
}

/// A node's kernel and its scratch layout.
#[derive(Clone, Copy)]
pub struct Plan {
    kind: Kind,
    /// Float kernels: the outer product (F16 for the int8 kernel's unused slot).
    outer: Outer,
    /// The weight type and its activation format (ggml-cpu's `vec_dot_type`).
    ty: DType,
    act: DType,
    k: usize,
    kunits: usize,
    m: usize,
    m_blocks: usize,
    /// Per thread: an f32 row, a converted activation row, a row of units, the group's
    /// row-major units, its blocks.
    acts_bytes: usize,
    thread_bytes: usize,
    act_row_off: usize,
    units_off: usize,
    rows_off: usize,
    blocks_off: usize,
    /// Rows of the group's row-major units and blocks (whole blocks).
    group_rows: usize,
    /// Units in `stage::nibble_pairs` order (Q4_0 on the f16 kernel).
    nibble: bool,
    /// Int8 kernel: 32-element blocks per row; the activations' scale records (shared, after
    /// the activation blocks); per thread the weights' scale records, the accumulators and
    /// a packed group put back into ggml's layout.
    nb: usize,
    a_scales_off: usize,
    w_scales_off: usize,
    acc_off: usize,
    gather_off: usize,
}

impl Plan {
    fn block_bytes(&self, geo: &Geometry) -> usize {
        geo.block_bytes(self.kunits)
    }

    fn row_stride(&self) -> usize {
        self.kunits * 4
    }
}

fn align64(x: usize) -> usize {
    x.next_multiple_of(64)
}

/// The outer product for weights of `ty`: FMOPA f32 for F32, BFMOPA for BF16, widening
/// FMOPA on f16 for F16 and every quantized type.
fn outer_for(ty: DType) -> Outer {
    match ty {
        DType::F32 => Outer::F32,
        DType::BF16 => Outer::Bf16,
        _ => Outer::F16,
    }
}

/// Whether 2-D products of `ty` weights run on an int8 kernel (else a 16-bit float one).
///
/// By default, on SME2 the int8 kernel (`kernels::sme::i8_smopa_1vlx1vl`): it gives the
/// bits of ggml-cpu's aarch64 dot, where the f16 kernel's rounding of the dequantized
/// values shifts int8 activation roundings downstream (measured on SmolLM2 Q4_1: mean KLD
/// 0.006 against stock, whose own alternative path gives 0). On SME1 the float kernel: the
/// int8 one there drains through memory and does not give the aarch64 order for Q4_1.
/// SMEPILOT_SME_INT8 overrides the default, tests override both.
pub fn int8_engine(ty: DType, sme2: bool) -> bool {
    let setting = || crate::config::get().ok().and_then(|c| c.sme_int8);
    test_engine::get().or_else(setting).unwrap_or(sme2) && int8_weight(ty).is_some()
}

/// The weight types the int8 kernel takes, and whether they carry a minimum.
fn int8_weight(ty: DType) -> Option<bool> {
    match ty {
        DType::Q8_0 | DType::Q4_0 => Some(false),
        DType::Q4_1 => Some(true),
        _ => None,
    }
}

/// Tests pick the kernel per run.
pub use crate::kernels::sme::int8_choice as test_engine;

impl MatrixEngine for Sme {
    type Plan = Plan;
    type Session = Streaming;
    const TILE_ROWS: usize = 16;

    fn plan(&self, ty: DType, k: usize, m: usize) -> Option<Plan> {
        let kern = scalar_kernels(ty)?;
        let act = kern.vec_dot_type;
        let ak = scalar_kernels(act)?;
        let ok = kern.vec_dot.is_some() && ak.from_f32.is_some() && k > 0 && k.is_multiple_of(ty.block_size()) && k.is_multiple_of(act.block_size());
        if !ok || m == 0 {
            return None;
        }
        let geo = &self.geo;
        if let (true, Some(has_min)) = (int8_engine(ty, geo.sme2), int8_weight(ty)) {
            return Some(self.plan_int8(ty, act, k, m, has_min));
        }
        let outer = outer_for(ty);
        let kunits = geo.kunits(k.div_ceil(outer.per_unit()));
        let m_blocks = m.div_ceil(geo.block_rows());
        let group_rows = GROUP_ROWS.next_multiple_of(geo.block_rows());
        let act_row_off = align64(4 * k);
        // The converted activation row, reused for f16 halfs on their way to another order.
        let units_off = act_row_off + align64(act.row_bytes(k).max(2 * k));
        let rows_off = units_off + align64(4 * kunits);
        let blocks_off = rows_off + group_rows * 4 * kunits;
        Some(Plan {
            kind: Kind::Float(outer),
            outer,
            ty,
            act,
            k,
            kunits,
            m,
            m_blocks,
            acts_bytes: align64(m_blocks * geo.block_bytes(kunits)),
            thread_bytes: blocks_off + group_rows * 4 * kunits,
            act_row_off,
            units_off,
            rows_off,
            blocks_off,
            group_rows,
            nibble: ty == DType::Q4_0,
            nb: 0,
            a_scales_off: 0,
            w_scales_off: 0,
            acc_off: 0,
            gather_off: 0,
        })
    }

    fn acts_bytes(&self, plan: &Plan) -> usize {
        plan.acts_bytes
    }

    fn thread_bytes(&self, plan: &Plan) -> usize {
        align64(plan.thread_bytes)
    }

    fn prepare_acts(&self, plan: &Plan, p: &Product, ctx: &ThreadCtx) {
        if let Kind::Int8 { .. } = plan.kind {
            return self.i8_acts(plan, p, ctx);
        }
        let geo = &self.geo;
        let (k, br, bb, stride) = (plan.k, geo.block_rows(), plan.block_bytes(geo), plan.row_stride());
        let (b0, b1) = split_range(plan.m_blocks, ctx.ith, ctx.nth);
        if b0 == b1 {
            return;
        }
        // Blocks b0 .. b1 are this thread's (a contiguous range of the shared scratch); the
        // conversion rows and a block's row-major units are in its own area.
        let blocks = ctx.shared_mut::<u8>(p.acts_at + b0 * bb, (b1 - b0) * bb);
        let area = ctx.thread_area(p.threads_at, self.thread_bytes(plan));
        let tmp = area.carve::<f32>(0, k);
        let act_row = area.carve::<u8>(plan.act_row_off, plan.act.row_bytes(k).max(2 * k));
        let rows = area.carve::<u8>(plan.rows_off, br * stride);
        let from_f32 = ctx.kernels.kernels(plan.act).and_then(|t| t.from_f32).expect("plan checked");
        let to_f32 = ctx.kernels.kernels(plan.act).expect("plan checked").to_f32;
        let session = Streaming::begin(self.geo);
        for b in b0..b1 {
            for i in 0..br {
                let (r, out) = (b * br + i, &mut rows[i * stride..(i + 1) * stride]);
                if r >= plan.m {
                    out.fill(0);
                    continue;
                }
                let xr = p.x_row(r);
                let used = match (plan.outer, plan.act) {
                    (Outer::F32, _) => {
                        for (u, v) in out.chunks_exact_mut(4).zip(xr) {
                            u.copy_from_slice(&v.to_le_bytes());
                        }
                        4 * k
                    }
                    // F16 and BF16 activations as ggml-cpu converts them.
                    (_, DType::F16 | DType::BF16) => {
                        from_f32(xr, &mut out[..2 * k]);
                        2 * k
                    }
                    // Quantized as ggml-cpu quantizes them, then the same values in f16.
                    (_, DType::Q8_0) if self.fp16 => {
                        let q = &mut act_row[..plan.act.row_bytes(k)];
                        from_f32(xr, q);
                        q8_0_units(q, k / 32, out, plan.nibble);
                        2 * k
                    }
                    _ => {
                        let q = &mut act_row[..plan.act.row_bytes(k)];
                        from_f32(xr, q);
                        to_f32(q, tmp);
                        if plan.nibble {
                            f32_to_f16(tmp, &mut act_row[..2 * k]);
                            nibble_pairs(&act_row[..2 * k], out);
                        } else {
                            f32_to_f16(tmp, &mut out[..2 * k]);
                        }
                        2 * k
                    }
                };
                out[used..].fill(0);
            }
            session.transpose(rows, stride, br, &mut blocks[(b - b0) * bb..][..bb], plan.kunits);
        }
    }

    fn session(&self, _plan: &Plan) -> Streaming {
        Streaming::begin(self.geo)
    }

    fn weight_group(&self, plan: &Plan, session: &mut Streaming, p: &Product, ctx: &ThreadCtx, g: usize, _next: &[u8]) {
        if let Kind::Int8 { has_min } = plan.kind {
            return self.i8_group(plan, has_min, session, p, ctx, g);
        }
        let geo = &self.geo;
        let w = &p.w;
        let (k, n) = (plan.k, w.ne[1]);
        let r0 = g * GROUP_ROWS;
        let rows = (n - r0).min(GROUP_ROWS);
        let stride = plan.row_stride();
        let area = ctx.thread_area(p.threads_at, self.thread_bytes(plan));
        let tmp = area.carve::<f32>(0, k);
        let half_row = area.carve::<u8>(plan.act_row_off, 2 * k);
        let src = area.carve::<u8>(plan.rows_off, plan.group_rows * stride);
        let blocks = area.carve::<u8>(plan.blocks_off, plan.group_rows * stride);
        let fast_q4_0 = plan.nibble && self.fp16 && w.packed.is_some_and(|p| p.layout == packed::Layout::Q4_0x16);
        // The group's rows as units, row-major; rows up to a whole panel are zero.
        for i in 0..rows.next_multiple_of(geo.vl32()) {
            let out = &mut src[i * stride..(i + 1) * stride];
            if i >= rows {
                out.fill(0);
                continue;
            }
            out[2 * k.next_multiple_of(2)..].fill(0);
            if fast_q4_0 {
                continue; // 16 rows at a time below
            }
            if matches!(plan.ty, DType::F32 | DType::F16 | DType::BF16) {
                // The float types' rows are their units already.
                let rb = w.row_bytes();
                out[..rb].copy_from_slice(&w.row::<u8>(r0 + i, 0, 0)[..rb]);
                continue;
            }
            match &w.packed {
                Some(p) => packed::row_to_f32(&ctx.kernels.packed, p, k, r0 + i, tmp),
                None => (ctx.kernels.kernels(plan.ty).expect("plan checked").to_f32)(w.row::<u8>(r0 + i, 0, 0), tmp),
            }
            if plan.nibble {
                f32_to_f16(tmp, half_row);
                nibble_pairs(half_row, &mut out[..2 * k]);
            } else {
                f32_to_f16(tmp, &mut out[..2 * k]);
            }
        }
        if let (true, Some(p)) = (fast_q4_0, &w.packed) {
            // Packed groups are whole 16-row groups (Layout::for_weights).
            for i in (0..rows).step_by(packed::GROUP_ROWS) {
                q4_0x16_units(p.group(k, (r0 + i) / packed::GROUP_ROWS), k / 32, &mut src[i * stride..], stride);
            }
        }
        // Written by every thread before the driver's barrier, read-only now.
        let acts = ctx.shared::<u8>(p.acts_at, plan.m_blocks * plan.block_bytes(geo));
        // Columns r0 .. r0 + rows of every output row are this group's, which the queue gave
        // this thread alone.
        let mut out = DstRows::new((0..plan.m).map(|i| p.out(i, r0, rows)), rows);
        let mut ops = GroupOperands { acts, src: Some((src, stride)), blocks, kunits: plan.kunits, dst: &mut out };
        session.float_group(plan.outer, &mut ops);
    }
}

/// Floats per int8 scale record of one block (see `kernels::sme::i8_smopa_2vlx2vl`).
fn record(geo: &Geometry) -> usize {
    4 * geo.vl32()
}

#[inline]
fn h(b: &[u8], at: usize) -> f32 {
    half::f16::from_bits(u16::from_le_bytes([b[at], b[at + 1]])).to_f32()
}

impl Sme {
    fn plan_int8(&self, ty: DType, act: DType, k: usize, m: usize, has_min: bool) -> Plan {
        let geo = &self.geo;
        let nb = k / 32;
        let kunits = geo.kunits(k / 4);
        let m_blocks = m.div_ceil(geo.block_rows());
        let group_rows = GROUP_ROWS.next_multiple_of(geo.block_rows());
        let a_scales_off = align64(m_blocks * geo.block_bytes(kunits));
        let act_row_off = 0;
        let units_off = align64(act.row_bytes(k));
        let rows_off = units_off + align64(4 * kunits);
        let blocks_off = rows_off + group_rows * 4 * kunits;
        let w_scales_off = blocks_off + group_rows * 4 * kunits;
        let acc_off = w_scales_off + align64(group_rows / geo.block_rows() * nb * record(geo) * 4);
        let gather_off = acc_off + align64(4 * geo.vl32() * geo.vl32() * 4);
        Plan {
            kind: Kind::Int8 { has_min },
            outer: Outer::F16,
            ty,
            act,
            k,
            kunits,
            m,
            m_blocks,
            acts_bytes: a_scales_off + align64(m_blocks * nb * record(geo) * 4),
            thread_bytes: gather_off + packed::GROUP_ROWS * ty.row_bytes(k),
            act_row_off,
            units_off,
            rows_off,
            blocks_off,
            group_rows,
            nibble: false,
            nb,
            a_scales_off,
            w_scales_off,
            acc_off,
            gather_off,
        }
    }

    /// The int8 kernel's activations: this thread's blocks quantized as ggml-cpu does (Q8_0,
    /// or Q8_1 for weights with a minimum), their quants as units, their scales (and sums)
    /// in the blocks' scale records.
    fn i8_acts(&self, plan: &Plan, p: &Product, ctx: &ThreadCtx) {
        let geo = &self.geo;
        let (k, nb, br, bb, rec) = (plan.k, plan.nb, geo.block_rows(), plan.block_bytes(geo), record(geo));
        let (b0, b1) = split_range(plan.m_blocks, ctx.ith, ctx.nth);
        // Blocks b0 .. b1 and their scale records are this thread's (contiguous ranges of
        // the shared scratch); the quantization rows are in its own area.
        let blocks = ctx.shared_mut::<u8>(p.acts_at + b0 * bb, (b1 - b0) * bb);
        let scales = ctx.shared_mut::<f32>(p.acts_at + plan.a_scales_off + b0 * nb * rec * 4, (b1 - b0) * nb * rec);
        let area = ctx.thread_area(p.threads_at, self.thread_bytes(plan));
        let q = area.carve::<u8>(plan.act_row_off, plan.act.row_bytes(k));
        let units = area.carve::<u8>(plan.units_off, 4 * plan.kunits);
        let quantize = ctx.kernels.kernels(plan.act).and_then(|t| t.from_f32).expect("plan checked");
        let (bs, with_sum) = (plan.act.block_bytes(), plan.act == DType::Q8_1);
        for r in b0 * br..b1 * br {
            let (block, rb) = (&mut blocks[(r / br - b0) * bb..][..bb], r % br);
            let recs = &mut scales[(r / br - b0) * nb * rec..][..nb * rec];
            if r >= plan.m {
                zero_block_row(geo, block, rb, plan.kunits);
                for b in 0..nb {
                    recs[b * rec + 2 * rb..][..2].fill(0.0);
                }
                continue;
            }
            quantize(p.x_row(r), q);
            units.fill(0);
            for b in 0..nb {
                let blk = &q[b * bs..(b + 1) * bs];
                units[32 * b..32 * b + 32].copy_from_slice(&blk[bs - 32..]);
                recs[b * rec + 2 * rb] = h(blk, 0);
                recs[b * rec + 2 * rb + 1] = if with_sum { h(blk, 2) } else { 0.0 };
            }
            put_block_row(geo, block, rb, units);
        }
    }

    /// Weight group `g` as int8 rows (row-major, transposed by the kernel) with its scale
    /// records, multiplied by every activation block.
    fn i8_group(&self, plan: &Plan, has_min: bool, session: &mut Streaming, p: &Product, ctx: &ThreadCtx, g: usize) {
        let geo = &self.geo;
        let w = &p.w;
        let (k, nb, n, br, rec) = (plan.k, plan.nb, w.ne[1], geo.block_rows(), record(geo));
        let r0 = g * GROUP_ROWS;
        let rows = (n - r0).min(GROUP_ROWS);
        let stride = plan.row_stride();
        let (bs, rb) = (w.ty.block_bytes(), w.ty.row_bytes(k));
        let area = ctx.thread_area(p.threads_at, self.thread_bytes(plan));
        let src = area.carve::<u8>(plan.rows_off, plan.group_rows * stride);
        let blocks = area.carve::<u8>(plan.blocks_off, plan.group_rows * stride);
        let w_scales = area.carve::<f32>(plan.w_scales_off, plan.group_rows / br * nb * rec);
        let acc = area.carve::<f32>(plan.acc_off, 4 * geo.vl32() * geo.vl32());
        let gather = area.carve::<u8>(plan.gather_off, packed::GROUP_ROWS * rb);
        let direct = w.packed.as_ref().and_then(|p| {
            let kind = match p.layout {
                packed::Layout::Q4_0x16 => I8Packed::Q4_0,
                packed::Layout::Q4_1x16 => I8Packed::Q4_1,
                packed::Layout::Q8_0x16 => I8Packed::Q8_0,
                _ => return None,
            };
            Some((p, kind))
        });
        if let Some((p, kind)) = direct {
            // Packed groups are whole 16-row groups (Layout::for_weights): straight into the
            // kernel's blocks. Lanes past `rows` keep stale quants; their scales are zeroed
            // below and their columns are never stored.
            for i in (0..rows).step_by(packed::GROUP_ROWS) {
                i8_x16_blocks(kind, geo, p.group(k, (r0 + i) / packed::GROUP_ROWS), nb, plan.kunits, i, blocks, w_scales);
            }
        } else {
            for i in 0..rows.next_multiple_of(geo.vl32()) {
                let out = &mut src[i * stride..(i + 1) * stride];
                out.fill(0);
                if i >= rows {
                    continue;
                }
                // The row in ggml's layout: a packed group is put back 16 rows at a time.
                let row: &[u8] = match &w.packed {
                    Some(p) => {
                        if i % packed::GROUP_ROWS == 0 {
                            packed::unpack(p.layout, p.group(k, (r0 + i) / packed::GROUP_ROWS), gather, packed::GROUP_ROWS, k);
                        }
                        &gather[(i % packed::GROUP_ROWS) * rb..][..rb]
                    }
                    None => &w.row::<u8>(r0 + i, 0, 0)[..rb],
                };
                let recs = &mut w_scales[(i / br) * nb * rec..][..nb * rec];
                for b in 0..nb {
                    let blk = &row[b * bs..(b + 1) * bs];
                    let q = &mut out[32 * b..32 * b + 32];
                    recs[b * rec + i % br] = h(blk, 0);
                    recs[b * rec + 2 * geo.vl32() + i % br] = if has_min { h(blk, 2) } else { 0.0 };
                    match w.ty {
                        DType::Q8_0 => q.copy_from_slice(&blk[2..34]),
                        _ => {
                            let (qs, off) = if has_min { (&blk[4..20], 0) } else { (&blk[2..18], 8) };
                            for j in 0..16 {
                                q[j] = ((qs[j] & 15) as i8 - off) as u8;
                                q[j + 16] = ((qs[j] >> 4) as i8 - off) as u8;
                            }
                        }
                    }
                }
            }
        }
        // Zero scales for the rows padding the last block.
        for i in rows..rows.next_multiple_of(br) {
            for b in 0..nb {
                w_scales[(i / br) * nb * rec + b * rec + i % br] = 0.0;
                w_scales[(i / br) * nb * rec + b * rec + 2 * geo.vl32() + i % br] = 0.0;
            }
        }
        // Written by every thread before the driver's barrier, read-only now.
        let acts = ctx.shared::<u8>(p.acts_at, plan.m_blocks * plan.block_bytes(geo));
        let a_scales = ctx.shared::<f32>(p.acts_at + plan.a_scales_off, plan.m_blocks * nb * rec);
        // Columns r0 .. r0 + rows of every output row are this group's, which the queue gave
        // this thread alone.
        let mut out = DstRows::new((0..plan.m).map(|i| p.out(i, r0, rows)), rows);
        let src = if direct.is_some() { None } else { Some((&src[..], stride)) };
        let mut ops = GroupOperands { acts, src, blocks, kunits: plan.kunits, dst: &mut out };
        session.i8_group(&mut ops, I8Scales { acts: a_scales, weights: w_scales, nb, has_min, acc });
    }
}
