//! The backend registry entry and its single device `SMEPILOT`, plus the exported
//! `ggml_backend_init` / `ggml_backend_score` of ggml's dynamic-backend API.
//!
//! The device is of type ACCEL: llama.cpp then adds SMEPilot's backend to every
//! context ahead of the CPU backend and puts its buffer type first for CPU-resident
//! weights, so weights, KV cache reads and work land here (see README, design).

use std::ffi::{c_void, CStr, CString};
use std::os::raw::{c_char, c_int};
use std::sync::OnceLock;

use super::sys::{
    ggml_backend_buffer_t, ggml_backend_buffer_type, ggml_backend_buffer_type_i,
    ggml_backend_buffer_type_t, ggml_backend_dev_caps, ggml_backend_dev_props, ggml_backend_dev_t,
    ggml_backend_dev_type, ggml_backend_device, ggml_backend_device_i, ggml_backend_reg,
    ggml_backend_reg_i, ggml_backend_reg_t, ggml_backend_t, ggml_tensor,
};
use super::{buffer, convert, guard, kv_buffer, stream, sys};
use smepilot_engine::dtype::DType;
use smepilot_engine::platform::CpuFeatures;
use smepilot_engine::kernels::registry;
use smepilot_engine::{config, ops};

pub struct Registry {
    reg: ggml_backend_reg,
    dev: ggml_backend_device,
    buft: ggml_backend_buffer_type,
    description: CString,
}

// SAFETY: after initialisation the registry is only read; its raw pointers point into
// the registry itself, which lives in a static Box for the rest of the process.
unsafe impl Sync for Registry {}
unsafe impl Send for Registry {}

static REGISTRY: OnceLock<Option<Box<Registry>>> = OnceLock::new();

pub fn registry() -> Option<&'static Registry> {
    REGISTRY.get_or_init(build).as_deref()
}

/// Declines to register over a bad setting. The message goes straight to stderr as well as
/// to the log: a host's logger may write from a thread of its own, and a tool that exits
/// because the backend is missing (llama.cpp's does, at once) would lose it there.
fn refuse(e: &str) -> Option<Box<Registry>> {
    let msg = format!("not registering the SMEPILOT backend: {e}");
    if smepilot_engine::config::log_enabled(smepilot_engine::config::LogLevel::Error) {
        eprintln!("smepilot: {msg}");
    }
    smepilot_engine::smelog!(Error, "{msg}");
    None
}

fn build() -> Option<Box<Registry>> {
    // First, so that even the refusal below reaches the host's log callback.
    super::install_log_sink();
    let cfg = match config::get() {
        Ok(c) => c,
        Err(e) => return refuse(e),
    };
    // A tier the CPU lacks (SMEPILOT_TIER) is refused here, named, before anything runs.
    if let Err(e) = registry::select(cfg) {
        return refuse(&e);
    }
    let features = CpuFeatures::detect();
    let description = CString::new(registry::active().describe(&features)).unwrap();
    let mut r = Box::new(Registry {
        reg: ggml_backend_reg {
            api_version: 2,
            iface: ggml_backend_reg_i {
                get_name: Some(reg_get_name),
                get_device_count: Some(reg_get_device_count),
                get_device: Some(reg_get_device),
                get_proc_address: Some(reg_get_proc_address),
            },
            context: std::ptr::null_mut(),
        },
        dev: ggml_backend_device {
            iface: DEVICE_IFACE,
            reg: std::ptr::null_mut(),
            context: std::ptr::null_mut(),
        },
        buft: ggml_backend_buffer_type {
            iface: BUFT_IFACE,
            device: std::ptr::null_mut(),
            context: std::ptr::null_mut(),
        },
        description,
    });
    // Link the three structs to each other; the Box keeps their addresses fixed.
    r.dev.reg = &mut r.reg;
    r.buft.device = &mut r.dev;
    smepilot_engine::smelog!(Info, "SMEPILOT device: {}", r.description.to_string_lossy());
    Some(r)
}

fn reg_ptr() -> ggml_backend_reg_t {
    registry().map_or(std::ptr::null_mut(), |r| {
        &r.reg as *const _ as ggml_backend_reg_t
    })
}

pub fn dev_ptr() -> ggml_backend_dev_t {
    registry().map_or(std::ptr::null_mut(), |r| {
        &r.dev as *const _ as ggml_backend_dev_t
    })
}

pub fn buft_ptr() -> ggml_backend_buffer_type_t {
    registry().map_or(std::ptr::null_mut(), |r| {
        &r.buft as *const _ as ggml_backend_buffer_type_t
    })
}

// ---- exports -------------------------------------------------------------------

#[no_mangle]
pub extern "C" fn ggml_backend_init() -> ggml_backend_reg_t {
    guard("ggml_backend_init", std::ptr::null_mut(), reg_ptr)
}

/// Higher is preferred by ggml_backend_load_best; 0 would mean "cannot run here".
#[no_mangle]
pub extern "C" fn ggml_backend_score() -> c_int {
    guard("ggml_backend_score", 0, score)
}

fn score() -> c_int {
    match registry() {
        None => 0,
        // Preferred where it drives a matrix unit the stock CPU backend runs beside.
        Some(_) if registry::active().matrix.is_some() => 100,
        Some(_) => 10,
    }
}

// ---- reg -----------------------------------------------------------------------

unsafe extern "C" fn reg_get_name(_: ggml_backend_reg_t) -> *const c_char {
    c"SMEPILOT".as_ptr()
}

unsafe extern "C" fn reg_get_device_count(_: ggml_backend_reg_t) -> usize {
    1
}

unsafe extern "C" fn reg_get_device(_: ggml_backend_reg_t, index: usize) -> ggml_backend_dev_t {
    guard("reg_get_device", std::ptr::null_mut(), || {
        if index == 0 {
            dev_ptr()
        } else {
            std::ptr::null_mut()
        }
    })
}

unsafe extern "C" fn reg_get_proc_address(
    _: ggml_backend_reg_t,
    name: *const c_char,
) -> *mut c_void {
    guard("reg_get_proc_address", std::ptr::null_mut(), || {
        match CStr::from_ptr(name).to_bytes() {
            b"ggml_backend_set_n_threads" => stream::set_n_threads as *mut c_void,
            b"ggml_backend_kv_cache_buffer_type" => kv_cache_buffer_type as *mut c_void,
            _ => std::ptr::null_mut(),
        }
    })
}

/// The buffer type for a KV cache of these types and head sizes (llama-patches/0006), or
/// null to leave it where llama.cpp puts it: SMEPILOT_KV=standard, types the packed cache
/// does not take (f32, f16, bf16, q8_0, q4_0 and q4_1 it takes), K and V heads of different sizes, or an op that writes or reads the cache
/// declined by SMEPILOT_DECLINE_OPS (SET_ROWS, ROPE, CPY, FLASH_ATTN_EXT: a cache write
/// SMEPilot declined would have no backend that can run it).
unsafe extern "C" fn kv_cache_buffer_type(
    type_k: sys::ggml_type,
    type_v: sys::ggml_type,
    head_k: i64,
    head_v: i64,
) -> ggml_backend_buffer_type_t {
    guard("kv_cache_buffer_type", std::ptr::null_mut(), || {
        let Ok(cfg) = config::get() else { return std::ptr::null_mut() };
        let declined = ["SET_ROWS", "ROPE", "CPY", "FLASH_ATTN_EXT"].iter().any(|op| cfg.decline_ops.iter().any(|d| d == op));
        // The types whose every cache op SMEPilot claims: SET_ROWS from f32, attention, and
        // the context shift (ROPE in place, or for quantized K: CAST, ROPE, CPY back).
        let cached = |t: sys::ggml_type| {
            DType::from_ggml(t).is_some_and(|ty| {
                matches!(ty, DType::F32 | DType::F16 | DType::BF16 | DType::Q8_0 | DType::Q4_0 | DType::Q4_1)
                    && head_k > 0
                    && (head_k as usize).is_multiple_of(ty.block_size())
            })
        };
        if !cfg.kv_packed || declined || !cached(type_k) || !cached(type_v) || head_k != head_v {
            return std::ptr::null_mut();
        }
        kv_buffer::kv_buft(head_k as usize)
    })
}

// ---- device --------------------------------------------------------------------

unsafe extern "C" fn dev_get_name(_: ggml_backend_dev_t) -> *const c_char {
    c"SMEPILOT".as_ptr()
}

unsafe extern "C" fn dev_get_description(_: ggml_backend_dev_t) -> *const c_char {
    guard("dev_get_description", c"".as_ptr(), || {
        registry().map_or(c"".as_ptr(), |r| r.description.as_ptr())
    })
}

unsafe extern "C" fn dev_get_memory(_: ggml_backend_dev_t, free: *mut usize, total: *mut usize) {
    guard("dev_get_memory", (), || get_memory(free, total))
}

/// SAFETY: `free` and `total` are ggml's writable out-parameters.
unsafe fn get_memory(free: *mut usize, total: *mut usize) {
    let (f, t) = smepilot_engine::platform::memory::system_memory().unwrap_or((0, 0));
    *free = f;
    *total = t;
}

unsafe extern "C" fn dev_get_type(_: ggml_backend_dev_t) -> ggml_backend_dev_type {
    ggml_backend_dev_type::GGML_BACKEND_DEVICE_TYPE_ACCEL
}

unsafe extern "C" fn dev_get_props(dev: ggml_backend_dev_t, props: *mut ggml_backend_dev_props) {
    guard("dev_get_props", (), || get_props(dev, props))
}

unsafe fn get_props(dev: ggml_backend_dev_t, props: *mut ggml_backend_dev_props) {
    let p = &mut *props;
    p.name = dev_get_name(dev);
    p.description = dev_get_description(dev);
    p.type_ = dev_get_type(dev);
    p.device_id = std::ptr::null();
    dev_get_memory(dev, &mut p.memory_free, &mut p.memory_total);
    p.caps = ggml_backend_dev_caps {
        async_: false,
        host_buffer: false,
        buffer_from_host_ptr: true,
        events: false,
        mmap_support: true,
    };
}

unsafe extern "C" fn dev_init_backend(
    _: ggml_backend_dev_t,
    _params: *const c_char,
) -> ggml_backend_t {
    guard("init_backend", std::ptr::null_mut(), || stream::new_backend(dev_ptr()))
}

unsafe extern "C" fn dev_get_buffer_type(_: ggml_backend_dev_t) -> ggml_backend_buffer_type_t {
    guard("dev_get_buffer_type", std::ptr::null_mut(), buft_ptr)
}

unsafe extern "C" fn dev_buffer_from_host_ptr(
    _: ggml_backend_dev_t,
    ptr: *mut c_void,
    size: usize,
    _max_tensor_size: usize,
) -> ggml_backend_buffer_t {
    guard("buffer_from_host_ptr", std::ptr::null_mut(), || {
        buffer::buffer_from_host_ptr(buft_ptr(), ptr, size)
    })
}

unsafe extern "C" fn dev_supports_op(_: ggml_backend_dev_t, op: *const ggml_tensor) -> bool {
    guard("supports_op", false, || supports_op(op))
}

pub(super) unsafe fn supports_op(op: *const ggml_tensor) -> bool {
    let declined = config::get()
        .is_ok_and(|c| !c.decline_ops.is_empty() && c.decline_ops.contains(&convert::op_name(op)));
    let verdict = if declined {
        Err("declined by SMEPILOT_DECLINE_OPS")
    } else {
        convert::node(op).and_then(|n| ops::supports(&n))
    };
    if let Err(why) = verdict {
        smepilot_engine::smelog!(
            Debug,
            "declining {} ({}): {why}",
            convert::op_name(op),
            tensor_name(op)
        );
    }
    verdict.is_ok()
}

unsafe extern "C" fn dev_supports_buft(
    _: ggml_backend_dev_t,
    buft: ggml_backend_buffer_type_t,
) -> bool {
    // Our own buffers (weights, packed KV caches), and any host buffer in ggml's standard
    // layout (KV caches and inputs llama.cpp keeps in CPU buffers).
    guard("supports_buft", false, || {
        buft == buft_ptr() || kv_buffer::is_kv_buft(buft) || sys::ggml_backend_buft_is_host(buft)
    })
}

pub fn tensor_name(t: *const ggml_tensor) -> String {
    // SAFETY: ggml tensor names are NUL-terminated within their 64-byte array.
    unsafe {
        CStr::from_ptr((*t).name.as_ptr())
            .to_string_lossy()
            .into_owned()
    }
}

const DEVICE_IFACE: ggml_backend_device_i = ggml_backend_device_i {
    get_name: Some(dev_get_name),
    get_description: Some(dev_get_description),
    get_memory: Some(dev_get_memory),
    get_type: Some(dev_get_type),
    get_props: Some(dev_get_props),
    init_backend: Some(dev_init_backend),
    get_buffer_type: Some(dev_get_buffer_type),
    get_host_buffer_type: None,
    buffer_from_host_ptr: Some(dev_buffer_from_host_ptr),
    supports_op: Some(dev_supports_op),
    supports_buft: Some(dev_supports_buft),
    offload_op: None,
    event_new: None,
    event_free: None,
    event_synchronize: None,
};

const BUFT_IFACE: ggml_backend_buffer_type_i = ggml_backend_buffer_type_i {
    get_name: Some(buffer::buft_get_name),
    alloc_buffer: Some(buffer::buft_alloc_buffer),
    get_alignment: Some(buffer::buft_get_alignment),
    get_max_size: None,
    get_alloc_size: None,
    is_host: Some(buffer::buft_is_host),
};
