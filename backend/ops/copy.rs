//! GET_ROWS, SET_ROWS and CPY/CONT/DUP: moving rows and elements between tensors,
//! converting types through the per-type kernel table.

use half::{bf16, f16};

use super::{is_float, need, split_range, Node, Unsupported};
use crate::dtype::DType;
use crate::threadpool::ThreadCtx;
use crate::kernels::quant::scalar_kernels;
use crate::tensor::TensorRef;

// Every tier's table covers the same types (kernels::registry's tests), so the scalar one
// answers what is supported.
fn has_to_f32(ty: DType) -> bool {
    scalar_kernels(ty).is_some()
}

fn has_from_f32(ty: DType) -> bool {
    scalar_kernels(ty).is_some_and(|k| k.from_f32.is_some())
}

pub fn supports_get_rows(node: &Node) -> Result<(), Unsupported> {
    let (a, ids, d) = (
        node.src[0].as_ref().ok_or("missing")?,
        node.src[1].as_ref().ok_or("missing")?,
        &node.dst,
    );
    need(
        has_to_f32(a.ty) && a.rows_contiguous(),
        "get_rows: source type",
    )?;
    need(ids.ty == DType::I32 && ids.nb[0] == 4, "get_rows: i32 ids")?;
    need(d.ty == DType::F32 && d.nb[0] == 4, "get_rows: f32 output")?;
    need(
        d.ne[0] == a.ne[0] && d.ne[1] == ids.ne[0] && d.ne[2] == ids.ne[1] && d.ne[3] == ids.ne[2],
        "get_rows: shape",
    )?;
    need(
        a.ne[2] == ids.ne[1] && a.ne[3] == ids.ne[2] && ids.ne[3] == 1,
        "get_rows: batch shape",
    )
}

pub fn get_rows(node: &Node, ctx: &ThreadCtx) {
    let (a, ids, d) = (node.src(0), node.src(1), &node.dst);
    let to_f32 = ctx.kernels.kernels(a.ty).unwrap().to_f32;
    let n = d.ne[0];
    let (r0, r1) = split_range(d.nrows(), ctx.ith, ctx.nth);
    for r in r0..r1 {
        let (i1, i2, i3) = d.unflatten_row(r);
        // ids are [rows, batch1, batch2]: element (i1, i2, i3).
        let row: i32 = ids.read_at(ids.elem_offset(i1, i2, i3, 0));
        assert!(
            row >= 0 && (row as usize) < a.ne[1],
            "SMEPilot get_rows: row id {row} out of range 0..{}",
            a.ne[1]
        );
        // A packed weight (a tied embedding that is also the output layer) is read from its
        // packed copy: ggml's layout was handed back to the kernel after packing, and
        // touching it would fault its pages back in from the model file, one token at a time.
        if let Some(p) = a.packed.filter(|_| a.ne[2] == 1 && a.ne[3] == 1) {
            // This thread owns dst row r (the split above).
            let dst = d.row_mut::<f32>(i1, i2, i3);
            crate::kernels::packed::row_to_f32(&ctx.kernels.packed, &p, n, row as usize, dst);
            continue;
        }
        // This thread owns dst row r; the source is an input (supports: no overlap).
        to_f32(a.row::<u8>(row as usize, i2, i3), d.row_mut::<f32>(i1, i2, i3));
    }
}

pub fn supports_set_rows(node: &Node) -> Result<(), Unsupported> {
    let (a, ids, d) = (
        node.src[0].as_ref().ok_or("missing")?,
        node.src[1].as_ref().ok_or("missing")?,
        &node.dst,
    );
    need(a.ty == DType::F32 && a.nb[0] == 4, "set_rows: f32 source")?;
    need(
        matches!(ids.ty, DType::I32 | DType::I64) && ids.rows_contiguous(),
        "set_rows: i32/i64 ids",
    )?;
    need(
        has_from_f32(d.ty) && d.rows_contiguous(),
        "set_rows: destination type",
    )?;
    need(
        d.ne[0] == a.ne[0] && a.ne[0] % d.ty.block_size() == 0,
        "set_rows: row length",
    )?;
    need(
        ids.ne[0] == a.ne[1] && d.ne[2] == a.ne[2] && d.ne[3] == a.ne[3],
        "set_rows: shape",
    )?;
    need(
        a.ne[2] % ids.ne[1] == 0 && a.ne[3] % ids.ne[2] == 0 && ids.ne[3] == 1,
        "set_rows: broadcast",
    )
}

pub fn set_rows(node: &Node, ctx: &ThreadCtx) {
    let (a, ids, d) = (node.src(0), node.src(1), &node.dst);
    let from_f32 = ctx.kernels.kernels(d.ty).unwrap().from_f32.unwrap();
    let n = a.ne[0];
    let (r0, r1) = split_range(a.nrows(), ctx.ith, ctx.nth);
    for r in r0..r1 {
        let (i1, i2, i3) = a.unflatten_row(r);
        // ids are [rows, batch1, batch2], broadcast over the source's dims 2 and 3.
        let at = ids.elem_offset(i1, i2 % ids.ne[1], i3 % ids.ne[2], 0);
        let row = if ids.ty == DType::I64 { ids.read_at::<i64>(at) } else { ids.read_at::<i32>(at) as i64 };
        assert!(
            row >= 0 && (row as usize) < d.ne[1],
            "SMEPilot set_rows: row id {row} out of range 0..{}",
            d.ne[1]
        );
        // Distinct source rows map to distinct destination rows (ggml's contract for
        // set_rows), so threads write disjoint rows.
        from_f32(&a.row::<f32>(i1, i2, i3)[..n], d.row_mut::<u8>(row as usize, i2, i3));
    }
}

pub fn supports_copy(node: &Node) -> Result<(), Unsupported> {
    let (a, d) = (node.src[0].as_ref().ok_or("missing")?, &node.dst);
    need(a.nelements() == d.nelements(), "cpy: element counts differ")?;
    if is_float(a.ty) && is_float(d.ty) {
        return Ok(());
    }
    // Dequantizing copy (the context shift of a quantized K cache): whole rows into f32.
    if d.ty == DType::F32 && !is_float(a.ty) && scalar_kernels(a.ty).is_some() {
        return need(
            d.nb[0] == 4 && a.rows_contiguous() && a.ne[0] == d.ne[0] && a.ne[0] % a.ty.block_size() == 0,
            "cpy: row layout",
        );
    }
    // Quantizing copy: whole rows of f32 into packed blocks.
    need(a.ty == DType::F32 && has_from_f32(d.ty), "cpy: type pair")?;
    need(
        a.nb[0] == 4 && d.rows_contiguous() && a.ne[0] == d.ne[0],
        "cpy: row layout",
    )?;
    need(d.ne[0] % d.ty.block_size() == 0, "cpy: partial block")
}

/// Row r of `t` in its own logical (row-major) order.
fn flat_row(t: &TensorRef, r: usize) -> (usize, usize, usize) {
    t.unflatten_row(r)
}

pub fn copy(node: &Node, ctx: &ThreadCtx) {
    let (a, d) = (node.src(0), &node.dst);
    let rowwise = a.ne[0] == d.ne[0] && a.rows_contiguous() && d.rows_contiguous();
    if rowwise {
        let n = d.ne[0];
        let (r0, r1) = split_range(d.nrows(), ctx.ith, ctx.nth);
        for r in r0..r1 {
            let ((i1, i2, i3), (j1, j2, j3)) = (flat_row(a, r), flat_row(d, r));
            // This thread owns dst row r; the source is an input (supports: no overlap).
            if a.ty == d.ty {
                d.row_mut::<u8>(j1, j2, j3).copy_from_slice(a.row::<u8>(i1, i2, i3));
            } else if a.ty == DType::F32 {
                (ctx.kernels.kernels(d.ty).unwrap().from_f32.unwrap())(&a.row::<f32>(i1, i2, i3)[..n], d.row_mut::<u8>(j1, j2, j3));
            } else if d.ty == DType::F32 {
                (ctx.kernels.kernels(a.ty).unwrap().to_f32)(a.row::<u8>(i1, i2, i3), &mut d.row_mut::<f32>(j1, j2, j3)[..n]);
            } else {
                let (sa, sd) = (a.row_offset(i1, i2, i3), d.row_offset(j1, j2, j3));
                for i in 0..n {
                    store_f32(d, sd + i * d.nb[0], load_f32(a, sa + i * a.nb[0]));
                }
            }
        }
        return;
    }
    // General case (transposed views, reshaped copies): element k of src in its logical
    // order goes to element k of dst. Split over dst rows.
    let n0 = d.ne[0];
    let (r0, r1) = split_range(d.nrows(), ctx.ith, ctx.nth);
    for r in r0..r1 {
        let (i1, i2, i3) = flat_row(d, r);
        let pd = d.row_offset(i1, i2, i3);
        for i0 in 0..n0 {
            let k = r * n0 + i0;
            let j0 = k % a.ne[0];
            let (j1, j2, j3) = a.unflatten_row(k / a.ne[0]);
            store_f32(d, pd + i0 * d.nb[0], load_f32(a, a.elem_offset(j0, j1, j2, j3)));
        }
    }
}

/// Element at byte `off` of the input `t` of a plain float type, as f32.
fn load_f32(t: &TensorRef, off: usize) -> f32 {
    match t.ty {
        DType::F32 => t.read_at::<f32>(off),
        DType::F16 => t.read_at::<f16>(off).to_f32(),
        DType::BF16 => t.read_at::<bf16>(off).to_f32(),
        _ => unreachable!("non-float type in element copy"),
    }
}

/// Stores `v` at byte `off` of the output `t` of a plain float type: an element this
/// thread owns (its dst row).
fn store_f32(t: &TensorRef, off: usize, v: f32) {
    match t.ty {
        DType::F32 => t.write_at(off, v),
        DType::F16 => t.write_at(off, f16::from_f32(v)),
        DType::BF16 => t.write_at(off, bf16::from_f32(v)),
        _ => unreachable!("non-float type in element copy"),
    }
}
