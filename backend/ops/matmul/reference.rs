//! The reference matrix engine: the scalar kernel table behind the `MatrixEngine` boundary,
//! so the matrix-only and cooperative drivers run, and are tested, on any CPU. Activations
//! are converted into the weight type's activation format in the shared scratch; each
//! weight row of a group is dotted with every activation row by the scalar table. Its
//! results are the scalar table's bits.

use super::super::split_range;
use super::engine::{MatrixEngine, GROUP_TILES};
use super::product::Product;
use crate::dtype::DType;
use crate::threadpool::ThreadCtx;
use crate::kernels::quant::scalar_kernels;

pub struct Reference;

#[derive(Clone, Copy)]
pub struct Plan {
    /// The activation format (the weight type's `vec_dot_type`).
    act: DType,
    /// Bytes per converted activation row, 64-byte aligned.
    stride: usize,
    m: usize,
}

impl MatrixEngine for Reference {
    type Plan = Plan;
    type Session = ();
    const TILE_ROWS: usize = 16;

    fn plan(&self, ty: DType, k: usize, m: usize) -> Option<Plan> {
        let kern = scalar_kernels(ty)?;
        let act = kern.vec_dot_type;
        let ok = kern.vec_dot.is_some()
            && scalar_kernels(act).is_some_and(|a| a.from_f32.is_some())
            && k.is_multiple_of(ty.block_size())
            && k.is_multiple_of(act.block_size());
        ok.then(|| Plan { act, stride: act.row_bytes(k).next_multiple_of(64), m })
    }

    fn acts_bytes(&self, plan: &Plan) -> usize {
        plan.stride * plan.m
    }

    fn thread_bytes(&self, _plan: &Plan) -> usize {
        0
    }

    fn prepare_acts(&self, plan: &Plan, p: &Product, ctx: &ThreadCtx) {
        let k = p.k();
        let convert = scalar_kernels(plan.act).and_then(|a| a.from_f32).expect("plan checked");
        let (r0, r1) = split_range(plan.m, ctx.ith, ctx.nth);
        // Rows r0 .. r1 of the product's shared activations (m rows of `stride` bytes) are
        // this thread's.
        let out = ctx.shared_mut::<u8>(p.acts_at + r0 * plan.stride, (r1 - r0) * plan.stride);
        for r in r0..r1 {
            convert(p.x_row(r), &mut out[(r - r0) * plan.stride..][..plan.act.row_bytes(k)]);
        }
    }

    fn session(&self, _plan: &Plan) {}

    fn weight_group(&self, plan: &Plan, _session: &mut (), p: &Product, ctx: &ThreadCtx, g: usize, _next: &[u8]) {
        let w = &p.w;
        let (k, n, rb) = (w.ne[0], w.ne[1], w.row_bytes());
        let dot = scalar_kernels(w.ty).and_then(|t| t.vec_dot).expect("plan checked");
        // The activation rows, converted before the driver's barrier, read-only now.
        let acts = ctx.shared::<u8>(p.acts_at, plan.m * plan.stride);
        let ab = plan.act.row_bytes(k);
        let mut unpacked = Vec::new();
        for tile in g * GROUP_TILES..((g + 1) * GROUP_TILES).min(n.div_ceil(Self::TILE_ROWS)) {
            let r0 = tile * Self::TILE_ROWS;
            let rows = (n - r0).min(Self::TILE_ROWS);
            // A packed weight is read from its packed copy (ggml's layout may be gone), put
            // back into ggml's row layout one tile at a time.
            if let Some(p) = &w.packed {
                unpacked.resize(16 * rb, 0);
                // Packed layouts have whole 16-row groups: tile < n / 16.
                crate::kernels::packed::unpack(p.layout, p.group(k, tile), &mut unpacked, 16, k);
            }
            for i in 0..rows {
                let wrow = match w.packed {
                    Some(_) => &unpacked[i * rb..(i + 1) * rb],
                    None => w.row::<u8>(r0 + i, 0, 0),
                };
                for m in 0..plan.m {
                    // Output column r0 + i of every row belongs to this group, which the
                    // queue gave this thread alone.
                    p.out(m, r0 + i, 1)[0] = dot(k, wrow, &acts[m * plan.stride..][..ab]);
                }
            }
        }
    }
}
