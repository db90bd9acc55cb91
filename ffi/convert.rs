//! ggml tensors and nodes to the engine's `TensorRef` and `Node`.

use super::sys::{self, ggml_glu_op, ggml_op, ggml_tensor, ggml_unary_op};
use smepilot_engine::dtype::DType;
use smepilot_engine::ops::{Node, Op, RopeParams, SortOrder, Unsupported};
use smepilot_engine::tensor::TensorRef;

/// # Safety
/// `t` points to a live ggml tensor.
pub unsafe fn tensor_ref(t: *const ggml_tensor) -> Result<TensorRef, Unsupported> {
    let t = &*t;
    if !t.buffer.is_null() && !sys::ggml_backend_buffer_is_host(t.buffer) {
        return Err("tensor is not in host memory");
    }
    let ty = DType::from_ggml(t.type_).ok_or("tensor type not handled")?;
    let mut ne = [0usize; 4];
    for (n, &v) in ne.iter_mut().zip(&t.ne) {
        *n = usize::try_from(v).map_err(|_| "negative dimension")?;
    }
    Ok(TensorRef {
        ty,
        ne,
        nb: t.nb,
        data: t.data as *mut u8,
        len: sys::ggml_nbytes(t),
        packed: super::buffer::packed_ref(t),
    })
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
    let dst = tensor_ref(t)?;
    let mut src = [None; 5];
    for (i, s) in tr.src.iter().enumerate() {
        if s.is_null() {
            continue;
        }
        if i >= src.len() {
            return Err("too many operands");
        }
        // View nodes only describe memory; their source may live anywhere.
        src[i] = if matches!(op, Op::View) {
            tensor_ref(*s).ok()
        } else {
            Some(tensor_ref(*s)?)
        };
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
