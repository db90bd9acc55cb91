//! ggml tensors and nodes to the engine's `TensorRef` and `Node`.

use super::sys::{self, ggml_glu_op, ggml_op, ggml_tensor, ggml_unary_op};
use smepilot_engine::dtype::DType;
use smepilot_engine::ops::{Node, Op, RopeParams, SortOrder, Unsupported};
use smepilot_engine::kv_layout::PackedView;
use smepilot_engine::tensor::TensorRef;

use super::kv_buffer::{self, Storage};

/// # Safety
/// `t` points to a live ggml tensor.
pub unsafe fn tensor_ref(t: *const ggml_tensor) -> Result<TensorRef, Unsupported> {
    let (ty, ne) = type_and_shape(t)?;
    let tr = &*t;
    match kv_buffer::storage(t) {
        Storage::Packed { layout, tensor, offset } => {
            // A view of a packed KV cache: the same elements at the packed layout's strides.
            if tr.nb[0] != ty.block_bytes() {
                return Err("a view of the packed KV cache with strided elements");
            }
            let v = layout
                .map_view(offset, ne, tr.nb, ty.row_bytes(ne[0]))
                .ok_or("a view of the packed KV cache that splits a head row")?;
            Ok(packed_ref(tr, ty, v, tensor))
        }
        Storage::Standard => Ok(standard_ref(tr, ty, ne)),
        Storage::Elsewhere if !tr.buffer.is_null() && !sys::ggml_backend_buffer_is_host(tr.buffer) => {
            Err("tensor is not in host memory")
        }
        Storage::Elsewhere => Ok(standard_ref(tr, ty, ne)),
    }
}

/// # Safety
/// `t` points to a live ggml tensor.
unsafe fn type_and_shape(t: *const ggml_tensor) -> Result<(DType, [usize; 4]), Unsupported> {
    let t = &*t;
    let ty = DType::from_ggml(t.type_).ok_or("tensor type not handled")?;
    let mut ne = [0usize; 4];
    for (n, &v) in ne.iter_mut().zip(&t.ne) {
        *n = usize::try_from(v).map_err(|_| "negative dimension")?;
    }
    Ok((ty, ne))
}

/// A tensor in ggml's layout.
unsafe fn standard_ref(t: &ggml_tensor, ty: DType, ne: [usize; 4]) -> TensorRef {
    TensorRef {
        ty,
        ne,
        nb: t.nb,
        data: t.data as *mut u8,
        len: sys::ggml_nbytes(t),
        packed: super::buffer::packed_ref(t),
    }
}

/// A view no op may read: its shape, no data.
fn unreadable_view(t: &ggml_tensor) -> TensorRef {
    TensorRef {
        ty: DType::from_ggml(t.type_).unwrap_or(DType::F32),
        ne: t.ne.map(|n| n.max(0) as usize),
        nb: t.nb,
        data: std::ptr::null_mut(),
        len: 0,
        packed: None,
    }
}

/// Tensor `t` placed at `v` in the packed cache tensor starting at `tensor` (no data while
/// the scheduler only asks what is supported, like any unallocated tensor).
fn packed_ref(t: &ggml_tensor, ty: DType, v: PackedView, tensor: *mut u8) -> TensorRef {
    TensorRef {
        ty,
        ne: v.ne,
        nb: v.nb,
        data: if t.data.is_null() { std::ptr::null_mut() } else { tensor.wrapping_add(v.offset) },
        len: v.span,
        packed: None,
    }
}

/// SET_ROWS into a packed KV cache: each whole row written is its heads' rows, so the
/// destination is taken as `[head, rows, heads]` and the source rows `[head, tokens, heads]`
/// (the ids broadcast over the heads): the same node, in the layout's terms.
///
/// # Safety
/// `t` is a live SET_ROWS node.
unsafe fn set_rows_packed(t: *const ggml_tensor, src: &mut [Option<TensorRef>; 5]) -> Result<Option<TensorRef>, Unsupported> {
    let Storage::Packed { layout, tensor, offset } = kv_buffer::storage(t) else { return Ok(None) };
    let (ty, ne) = type_and_shape(t)?;
    let tr = &*t;
    let whole_rows = tr.nb[0] == ty.block_bytes() && ty.row_bytes(ne[0]) == layout.row_bytes() && ne[2] == 1 && ne[3] == 1;
    let head = ne[0] / layout.heads;
    let dst = whole_rows
        .then(|| layout.split_rows(offset, ne[1], tr.nb[1], head, tr.nb[0]))
        .flatten()
        .ok_or("set_rows: not whole rows of the packed KV cache")?;
    let rows = src[0].as_mut().ok_or("missing")?;
    if rows.ne[0] != ne[0] || rows.ne[2] != 1 || rows.ne[3] != 1 || !rows.rows_contiguous() || rows.ty.block_size() != 1 {
        return Err("set_rows: source rows for the packed KV cache");
    }
    rows.ne = [head, rows.ne[1], layout.heads, 1];
    rows.nb = [rows.nb[0], rows.nb[1], head * rows.nb[0], rows.nb[1] * rows.ne[1]];
    Ok(Some(packed_ref(tr, ty, dst, tensor)))
}

fn f32_param(t: &ggml_tensor, i: usize) -> f32 {
    f32::from_bits(t.op_params[i] as u32)
}

/// Decodes a ggml node into an engine node (without checking support).
///
/// # Safety
/// `t` points to a live ggml tensor whose `src` pointers are null or live tensors.
pub unsafe fn node(t: *const ggml_tensor) -> Result<Node, Unsupported> {
    let tr = &*t;
    let op = match tr.op {
        ggml_op::GGML_OP_NONE
        | ggml_op::GGML_OP_RESHAPE
        | ggml_op::GGML_OP_VIEW
        | ggml_op::GGML_OP_PERMUTE
        | ggml_op::GGML_OP_TRANSPOSE => Op::View,
        ggml_op::GGML_OP_GET_ROWS => Op::GetRows,
        ggml_op::GGML_OP_SET_ROWS => Op::SetRows,
        ggml_op::GGML_OP_CPY | ggml_op::GGML_OP_CONT | ggml_op::GGML_OP_DUP => Op::Copy,
        ggml_op::GGML_OP_ADD => Op::Add,
        ggml_op::GGML_OP_MUL => Op::Mul,
        ggml_op::GGML_OP_DIV => Op::Div,
        ggml_op::GGML_OP_SUM_ROWS => Op::SumRows,
        ggml_op::GGML_OP_CLAMP => Op::Clamp {
            min: f32_param(tr, 0),
            max: f32_param(tr, 1),
        },
        ggml_op::GGML_OP_ARGSORT => Op::ArgSort(match tr.op_params[0] as sys::ggml_sort_order {
            sys::ggml_sort_order_GGML_SORT_ORDER_ASC => SortOrder::Asc,
            sys::ggml_sort_order_GGML_SORT_ORDER_DESC => SortOrder::Desc,
            _ => return Err("argsort: unknown sort order"),
        }),
        ggml_op::GGML_OP_SCALE => Op::Scale {
            scale: f32_param(tr, 0),
            bias: f32_param(tr, 1),
        },
        ggml_op::GGML_OP_RMS_NORM => Op::RmsNorm {
            eps: f32_param(tr, 0),
        },
        ggml_op::GGML_OP_UNARY if tr.op_params[0] == ggml_unary_op::GGML_UNARY_OP_SILU.0 as i32 => {
            Op::Silu
        }
        ggml_op::GGML_OP_GLU if tr.op_params[0] == ggml_glu_op::GGML_GLU_OP_SWIGLU.0 as i32 => {
            Op::SwiGlu {
                swapped: tr.op_params[1] != 0,
            }
        }
        ggml_op::GGML_OP_ROPE => Op::Rope(RopeParams {
            n_dims: tr.op_params[1].max(0) as usize,
            mode: tr.op_params[2],
            n_ctx_orig: tr.op_params[4],
            freq_base: f32_param(tr, 5),
            freq_scale: f32_param(tr, 6),
            ext_factor: f32_param(tr, 7),
            attn_factor: f32_param(tr, 8),
            beta_fast: f32_param(tr, 9),
            beta_slow: f32_param(tr, 10),
            n_offs: tr.op_params[15].max(0) as usize,
            backward: false,
        }),
        ggml_op::GGML_OP_SOFT_MAX => Op::SoftMax {
            scale: f32_param(tr, 0),
            max_bias: f32_param(tr, 1),
        },
        ggml_op::GGML_OP_MUL_MAT => Op::MulMat,
        ggml_op::GGML_OP_MUL_MAT_ID => Op::MulMatId,
        ggml_op::GGML_OP_FLASH_ATTN_EXT => Op::FlashAttn {
            scale: f32_param(tr, 0),
            max_bias: f32_param(tr, 1),
            softcap: f32_param(tr, 2),
        },
        _ => return Err("operator not implemented"),
    };
    let mut src = [None; 5];
    for (i, s) in tr.src.iter().enumerate() {
        if s.is_null() {
            continue;
        }
        if i >= src.len() {
            return Err("too many operands");
        }
        if matches!(op, Op::SetRows) && i == 2 {
            // SET_ROWS lists its destination's source here: it is the destination, below.
            continue;
        }
        // View nodes only describe memory; their source may live anywhere.
        src[i] = if matches!(op, Op::View) {
            tensor_ref(*s).ok()
        } else {
            Some(tensor_ref(*s)?)
        };
    }
    let packed_rows = if matches!(op, Op::SetRows) { set_rows_packed(t, &mut src)? } else { None };
    let dst = match packed_rows {
        Some(d) => d,
        // A view computes nothing; one SMEPilot's ops cannot read (whole rows of a packed
        // cache) is still ours, so the scheduler keeps the cache's views with its buffer.
        None if matches!(op, Op::View) => tensor_ref(t).unwrap_or_else(|_| unreadable_view(tr)),
        None => tensor_ref(t)?,
    };
    if matches!(op, Op::SetRows) && !tr.src[2].is_null() {
        src[2] = Some(dst);
    }
    Ok(Node { op, dst, src })
}

/// Name of a ggml op, for messages; an op (or unary / GLU op) this build's headers do not
/// know is named by its number, since ggml's name tables end at the counts it knows.
///
/// # Safety
/// `t` points to a live ggml tensor.
pub unsafe fn op_name(t: *const ggml_tensor) -> String {
    let tr = &*t;
    let sub = tr.op_params[0];
    let known = tr.op.0 < ggml_op::GGML_OP_COUNT.0
        && (tr.op != ggml_op::GGML_OP_UNARY || (0..ggml_unary_op::GGML_UNARY_OP_COUNT.0 as i32).contains(&sub))
        && (tr.op != ggml_op::GGML_OP_GLU || (0..ggml_glu_op::GGML_GLU_OP_COUNT.0 as i32).contains(&sub));
    if !known {
        return format!("op {} ({sub})", tr.op.0);
    }
    // SAFETY: ggml_op_desc returns a static C string for an op (and unary / GLU op) within
    // its tables, checked above.
    std::ffi::CStr::from_ptr(sys::ggml_op_desc(t)).to_string_lossy().into_owned()
}
