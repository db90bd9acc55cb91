//! SMEPilot's buffer type and buffers: plain host memory in ggml's standard layout
//! (64-byte aligned for AVX-512), owned or wrapping a host pointer (mmapped weights).

use std::ffi::c_void;
use std::os::raw::c_char;

use super::sys::{
    self, ggml_backend_buffer_i, ggml_backend_buffer_t, ggml_backend_buffer_type_t, ggml_tensor,
};

pub const ALIGNMENT: usize = 64;

struct BufferCtx {
    base: *mut u8,
    size: usize,
    /// Allocated by us (freed on free_buffer) rather than borrowed from the host.
    owned: bool,
}

pub unsafe extern "C" fn buft_get_name(_: ggml_backend_buffer_type_t) -> *const c_char {
    c"SMEPILOT".as_ptr()
}

pub unsafe extern "C" fn buft_get_alignment(_: ggml_backend_buffer_type_t) -> usize {
    ALIGNMENT
}

pub unsafe extern "C" fn buft_is_host(_: ggml_backend_buffer_type_t) -> bool {
    true
}

pub unsafe extern "C" fn buft_alloc_buffer(
    buft: ggml_backend_buffer_type_t,
    size: usize,
) -> ggml_backend_buffer_t {
    let mut ptr: *mut c_void = std::ptr::null_mut();
    // SAFETY: posix_memalign writes ptr on success; ALIGNMENT is a power of two ≥ sizeof(void*).
    if libc::posix_memalign(&mut ptr, ALIGNMENT, size.max(ALIGNMENT)) != 0 {
        crate::smelog!(Error, "cannot allocate a buffer of {} MiB", size >> 20);
        return std::ptr::null_mut();
    }
    let ctx = Box::new(BufferCtx {
        base: ptr as *mut u8,
        size,
        owned: true,
    });
    sys::ggml_backend_buffer_init(buft, BUFFER_IFACE, Box::into_raw(ctx) as *mut c_void, size)
}

/// Wraps host memory the caller keeps alive (llama.cpp's mmapped model file).
pub unsafe fn buffer_from_host_ptr(
    buft: ggml_backend_buffer_type_t,
    ptr: *mut c_void,
    size: usize,
) -> ggml_backend_buffer_t {
    let ctx = Box::new(BufferCtx {
        base: ptr as *mut u8,
        size,
        owned: false,
    });
    sys::ggml_backend_buffer_init(buft, BUFFER_IFACE, Box::into_raw(ctx) as *mut c_void, size)
}

/// # Safety
/// `buffer` is one of ours (its context is a `BufferCtx`).
unsafe fn ctx<'a>(buffer: ggml_backend_buffer_t) -> &'a BufferCtx {
    &*((*buffer).context as *const BufferCtx)
}

unsafe extern "C" fn free_buffer(buffer: ggml_backend_buffer_t) {
    let ctx = Box::from_raw((*buffer).context as *mut BufferCtx);
    if ctx.owned {
        libc::free(ctx.base as *mut c_void);
    }
}

unsafe extern "C" fn get_base(buffer: ggml_backend_buffer_t) -> *mut c_void {
    ctx(buffer).base as *mut c_void
}

unsafe extern "C" fn memset_tensor(
    _: ggml_backend_buffer_t,
    t: *mut ggml_tensor,
    value: u8,
    offset: usize,
    size: usize,
) {
    // SAFETY: ggml checks offset + size against the tensor's size before calling.
    std::ptr::write_bytes(((*t).data as *mut u8).add(offset), value, size);
}

unsafe extern "C" fn set_tensor(
    _: ggml_backend_buffer_t,
    t: *mut ggml_tensor,
    data: *const c_void,
    offset: usize,
    size: usize,
) {
    // SAFETY: as above; source and tensor memory never overlap (host staging data).
    std::ptr::copy_nonoverlapping(data as *const u8, ((*t).data as *mut u8).add(offset), size);
}

unsafe extern "C" fn get_tensor(
    _: ggml_backend_buffer_t,
    t: *const ggml_tensor,
    data: *mut c_void,
    offset: usize,
    size: usize,
) {
    // SAFETY: as above.
    std::ptr::copy_nonoverlapping(((*t).data as *const u8).add(offset), data as *mut u8, size);
}

unsafe extern "C" fn cpy_tensor(
    _: ggml_backend_buffer_t,
    src: *const ggml_tensor,
    dst: *mut ggml_tensor,
) -> bool {
    if (*src).buffer.is_null() || !sys::ggml_backend_buffer_is_host((*src).buffer) {
        return false;
    }
    // SAFETY: both tensors are in host memory and ggml requires equal byte sizes.
    std::ptr::copy(
        (*src).data as *const u8,
        (*dst).data as *mut u8,
        sys::ggml_nbytes(src),
    );
    true
}

unsafe extern "C" fn clear(buffer: ggml_backend_buffer_t, value: u8) {
    let c = ctx(buffer);
    // SAFETY: the buffer spans `size` bytes from `base`.
    std::ptr::write_bytes(c.base, value, c.size);
}

const BUFFER_IFACE: ggml_backend_buffer_i = ggml_backend_buffer_i {
    free_buffer: Some(free_buffer),
    get_base: Some(get_base),
    init_tensor: None,
    memset_tensor: Some(memset_tensor),
    set_tensor: Some(set_tensor),
    get_tensor: Some(get_tensor),
    set_tensor_2d: None,
    get_tensor_2d: None,
    cpy_tensor: Some(cpy_tensor),
    clear: Some(clear),
    reset: None,
};
