//! SMEPilot's buffer type and buffers: plain host memory in ggml's standard layout
//! (64-byte aligned for AVX-512), owned or wrapping a host pointer (mmapped weights).
//!
//! Weight tensors whose type has a packed layout (`backend::kernels::packed`) get a packed
//! copy the first time a graph uses them in a matrix product ([`ensure_packed`]): owned by
//! the buffer and found by the weight's byte range in it (`PackedCopies`). ggml's own layout
//! stays in place for the other readers (GET_ROWS on tied embeddings, CPU fallback); when it
//! is a file mapping, its pages are handed back to the kernel after packing (MADV_PAGEOUT),
//! so the model is not resident twice.
//!
//! Every write into a buffer (set_tensor, memset_tensor, cpy_tensor, clear) drops the packed
//! copies of the bytes it overwrites, so the next graph packs the new values again (and until
//! then reads ggml's layout). The tensor itself is not touched: it may be gone by then.

use std::ffi::c_void;
use std::os::raw::c_char;

use super::sys::{
    self, ggml_backend_buffer_i, ggml_backend_buffer_t, ggml_backend_buffer_type_t, ggml_tensor,
};
use super::guard;
use smepilot_engine::dtype::DType;
use smepilot_engine::kernels::packed::{self, Layout, PackedRef};
use smepilot_engine::packed_copies::PackedCopies;

pub const ALIGNMENT: usize = 64;

struct BufferCtx {
    base: *mut u8,
    size: usize,
    /// Allocated by us (freed on free_buffer) rather than borrowed from the host.
    owned: bool,
    /// Packed copies of this buffer's weights, by byte offset in the buffer (freed when
    /// their bytes are written, or with the buffer).
    packed: std::sync::Mutex<PackedCopies<PackedAlloc>>,
}

impl BufferCtx {
    fn packed(&self) -> std::sync::MutexGuard<'_, PackedCopies<PackedAlloc>> {
        self.packed.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Byte offset of `p` in the buffer.
    fn offset(&self, p: *const c_void) -> usize {
        (p as usize).wrapping_sub(self.base as usize)
    }

    /// Drops the packed copies of the bytes `[start, start + len)` of the buffer, which are
    /// being overwritten.
    fn written(&self, start: usize, len: usize) {
        let dropped = self.packed().invalidate(start..start.saturating_add(len));
        if !dropped.is_empty() {
            smepilot_engine::smelog!(Debug, "a write dropped {} packed weight copies", dropped.len());
        }
    }
}

/// One packed copy: its allocation (freed on drop) and what it was packed from.
struct PackedAlloc {
    mem: *mut u8,
    packed: PackedRef,
    /// The tensor's type and shape, so a different tensor at the same offset does not match.
    shape: (DType, usize, usize),
}

impl Drop for PackedAlloc {
    fn drop(&mut self) {
        // SAFETY: `mem` came from posix_memalign in ensure_packed and is owned by this
        // value alone; graphs that read it do not run while a write or free drops it
        // (ggml does not write a buffer while a graph that reads it computes).
        unsafe { libc::free(self.mem as *mut c_void) };
    }
}

// SAFETY: the allocation is owned by this value (see Drop).
unsafe impl Send for PackedAlloc {}

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
    guard("alloc_buffer", std::ptr::null_mut(), || alloc_buffer(buft, size))
}

/// `size` bytes (at least ALIGNMENT) aligned to ALIGNMENT, freed with `libc::free`; None
/// (logged, naming `what`) if the allocation fails.
pub fn alloc_aligned(size: usize, what: &str) -> Option<*mut u8> {
    let mut ptr: *mut c_void = std::ptr::null_mut();
    // SAFETY: posix_memalign writes ptr on success; ALIGNMENT is a power of two ≥ sizeof(void*).
    if unsafe { libc::posix_memalign(&mut ptr, ALIGNMENT, size.max(ALIGNMENT)) } != 0 {
        smepilot_engine::smelog!(Error, "cannot allocate a {what} of {} MiB", size >> 20);
        return None;
    }
    Some(ptr as *mut u8)
}

unsafe fn alloc_buffer(buft: ggml_backend_buffer_type_t, size: usize) -> ggml_backend_buffer_t {
    let Some(ptr) = alloc_aligned(size, "buffer") else { return std::ptr::null_mut() };
    let ctx = Box::new(BufferCtx {
        base: ptr,
        size,
        owned: true,
        packed: Default::default(),
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
        packed: Default::default(),
    });
    sys::ggml_backend_buffer_init(buft, BUFFER_IFACE, Box::into_raw(ctx) as *mut c_void, size)
}

/// # Safety
/// `buffer` is one of ours (its context is a `BufferCtx`).
unsafe fn ctx<'a>(buffer: ggml_backend_buffer_t) -> &'a BufferCtx {
    &*((*buffer).context as *const BufferCtx)
}

unsafe extern "C" fn free_buffer(buffer: ggml_backend_buffer_t) {
    guard("free_buffer", (), || {
        let ctx = Box::from_raw((*buffer).context as *mut BufferCtx);
        if ctx.owned {
            libc::free(ctx.base as *mut c_void);
        }
        drop(ctx); // and the packed copies with it
    })
}

/// Serializes packing (two contexts on one model may meet the same weight at once).
static PACK_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Whether `t` lives in one of our buffers that holds model weights.
unsafe fn in_our_weights(t: &ggml_tensor) -> bool {
    !t.buffer.is_null()
        && (*t.buffer).buft == super::registry::buft_ptr()
        && (*t.buffer).usage == sys::ggml_backend_buffer_usage::GGML_BACKEND_BUFFER_USAGE_WEIGHTS
}

/// The weight tensor `t` as a packed copy is made of it: type, k, n (all rows). None if it
/// has no packed layout or is not a whole, contiguous weight of one of our weight buffers:
/// 2-D, or 3-D experts (MUL_MAT_ID) whose matrices each start on a 16-row group.
unsafe fn packable(t: &ggml_tensor) -> Option<(DType, usize, usize, Layout)> {
    if !in_our_weights(t) || !t.view_src.is_null() || t.data.is_null() {
        return None;
    }
    let ty = DType::from_ggml(t.type_)?;
    let (k, rows, mats) = (t.ne[0] as usize, t.ne[1] as usize, t.ne[2] as usize);
    if t.ne[3] != 1 || t.nb[1] != ty.row_bytes(k) || t.nb[2] != t.nb[1] * rows {
        return None;
    }
    if mats > 1 && !rows.is_multiple_of(smepilot_engine::kernels::packed::GROUP_ROWS) {
        return None;
    }
    let n = rows * mats;
    // The layout the process's kernel tier reads (the registry decides).
    Some((ty, k, n, (smepilot_engine::kernels::registry::active().packed.layout_for)(ty, k, n)?))
}

/// The packed copy of weight tensor `t`, if it has a current one.
///
/// # Safety
/// `t` points to a live tensor.
pub unsafe fn packed_ref(t: *const ggml_tensor) -> Option<PackedRef> {
    let t = &*t;
    // Only weights ever get copies: anything else returns before taking the lock.
    let (ty, k, n, _) = packable(t)?;
    let c = ctx(t.buffer);
    let packed = c.packed();
    packed
        .get(c.offset(t.data))
        .filter(|a| a.shape == (ty, k, n))
        .map(|a| a.packed)
}

/// Makes the packed copy of weight tensor `t` if its type has a packed layout and it has none
/// yet. A no-op for anything else (not ours, not weights, views, no layout).
///
/// # Safety
/// `t` points to a live tensor; no graph that reads `t` runs concurrently with the first
/// call for `t` (graphs run after the scheduler's calls that reach here).
pub unsafe fn ensure_packed(t: *mut ggml_tensor) {
    let tr = &*t;
    let Some((ty, k, n, layout)) = packable(tr) else { return };
    let ctx = ctx(tr.buffer);
    let start = ctx.offset(tr.data);
    if ctx.packed().get(start).is_some() {
        return;
    }
    let _guard = PACK_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    if ctx.packed().get(start).is_some() {
        return;
    }
    let bytes = ty.row_bytes(k) * n;
    let mut mem: *mut c_void = std::ptr::null_mut();
    // 2 MiB alignment lets the kernel back the copy with huge pages: decode streams every
    // weight once per token, and 4 KiB pages would cost a TLB miss every 4 KiB.
    const HUGE: usize = 2 << 20;
    // SAFETY: posix_memalign writes mem on success.
    if libc::posix_memalign(&mut mem, HUGE, bytes.max(ALIGNMENT)) != 0 {
        smepilot_engine::smelog!(Warn, "cannot allocate {} MiB to pack a weight; using ggml's layout", bytes >> 20);
        return;
    }
    #[cfg(target_os = "linux")]
    // SAFETY: advisory only, on the allocation just made.
    libc::madvise(mem, bytes, libc::MADV_HUGEPAGE);
    // SAFETY: the tensor holds `bytes` bytes at data (contiguous rows, checked above); mem
    // was just allocated with that size.
    let src = std::slice::from_raw_parts(tr.data as *const u8, bytes);
    let copy = PackedAlloc {
        mem: mem as *mut u8,
        packed: PackedRef { layout, data: mem as *const u8, len: bytes },
        shape: (ty, k, n),
    };
    packed::pack(layout, ty, src, std::slice::from_raw_parts_mut(mem as *mut u8, bytes), n, k);
    if !ctx.owned {
        // The source is the host's memory (llama.cpp's file mapping): our kernels no longer
        // read it, so let the kernel reclaim its pages (re-read from the file if touched).
        page_out(tr.data as *const u8, bytes);
    }
    if ctx.packed().insert(start..start + bytes, copy).is_err() {
        // Overlaps another packed tensor: not a layout ggml makes. The copy is freed and
        // this tensor read in ggml's layout.
        smepilot_engine::smelog!(Warn, "a weight overlaps another packed weight; not packing it");
    }
}

/// Advises the kernel to reclaim the whole pages inside `[p, p + len)`. MADV_PAGEOUT keeps
/// the contents (file pages are re-read, anonymous ones swapped or kept), so it is harmless
/// whatever the memory is; failure (old kernels) is ignored.
unsafe fn page_out(p: *const u8, len: usize) {
    #[cfg(target_os = "linux")]
    {
        let page = 4096usize;
        let start = (p as usize).next_multiple_of(page);
        let end = (p as usize + len) & !(page - 1);
        if end > start {
            // SAFETY: advisory only; the range lies within memory the caller owns or maps.
            libc::madvise(start as *mut c_void, end - start, libc::MADV_PAGEOUT);
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (p, len);
}

unsafe extern "C" fn get_base(buffer: ggml_backend_buffer_t) -> *mut c_void {
    guard("get_base", std::ptr::null_mut(), || ctx(buffer).base as *mut c_void)
}

// The writes below take `buffer` to be the buffer holding the tensor's bytes (ggml passes
// the view source's buffer for views), and drop the packed copies of those bytes.

unsafe extern "C" fn memset_tensor(
    buffer: ggml_backend_buffer_t,
    t: *mut ggml_tensor,
    value: u8,
    offset: usize,
    size: usize,
) {
    guard("memset_tensor", (), || {
        // SAFETY: ggml checks offset + size against the tensor's size before calling.
        std::ptr::write_bytes(((*t).data as *mut u8).add(offset), value, size);
        let c = ctx(buffer);
        c.written(c.offset((*t).data) + offset, size);
    })
}

unsafe extern "C" fn set_tensor(
    buffer: ggml_backend_buffer_t,
    t: *mut ggml_tensor,
    data: *const c_void,
    offset: usize,
    size: usize,
) {
    guard("set_tensor", (), || {
        // SAFETY: as above; source and tensor memory never overlap (host staging data).
        std::ptr::copy_nonoverlapping(data as *const u8, ((*t).data as *mut u8).add(offset), size);
        let c = ctx(buffer);
        c.written(c.offset((*t).data) + offset, size);
    })
}

unsafe extern "C" fn get_tensor(
    _: ggml_backend_buffer_t,
    t: *const ggml_tensor,
    data: *mut c_void,
    offset: usize,
    size: usize,
) {
    guard("get_tensor", (), || {
        // SAFETY: as above.
        std::ptr::copy_nonoverlapping(((*t).data as *const u8).add(offset), data as *mut u8, size);
    })
}

unsafe extern "C" fn cpy_tensor(
    buffer: ggml_backend_buffer_t,
    src: *const ggml_tensor,
    dst: *mut ggml_tensor,
) -> bool {
    guard("cpy_tensor", false, || {
        if (*src).buffer.is_null() || !sys::ggml_backend_buffer_is_host((*src).buffer) {
            return false;
        }
        let size = sys::ggml_nbytes(src);
        // SAFETY: both tensors are in host memory and ggml requires equal byte sizes.
        std::ptr::copy((*src).data as *const u8, (*dst).data as *mut u8, size);
        let c = ctx(buffer);
        c.written(c.offset((*dst).data), size);
        true
    })
}

unsafe extern "C" fn clear(buffer: ggml_backend_buffer_t, value: u8) {
    guard("clear", (), || {
        let c = ctx(buffer);
        // SAFETY: the buffer spans `size` bytes from `base`.
        std::ptr::write_bytes(c.base, value, c.size);
        let dropped = c.packed().invalidate_all();
        if !dropped.is_empty() {
            smepilot_engine::smelog!(Debug, "clear dropped {} packed weight copies", dropped.len());
        }
    })
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
