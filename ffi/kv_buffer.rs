//! SMEPilot's KV cache buffers: llama.cpp's K and V caches in the packed layout of
//! `smepilot_engine::kv_layout` (each KV head's rows one contiguous run).
//!
//! llama.cpp asks for one through `ggml_backend_kv_cache_buffer_type` (the registry's proc
//! address, llama-patches/0006) for the caches of layers that run on the CPU, when flash
//! attention keeps V untransposed. There is one buffer type per head size; its buffers
//! register each cache tensor's layout when ggml allocates it (`init_tensor`).
//!
//! The buffers report `is_host = false`: their bytes are not in ggml's standard layout, so
//! no backend may read them as such. ggml still addresses them in that layout, and every
//! entry here translates: `set_tensor`, `get_tensor` and `memset_tensor` move standard byte
//! ranges run by run, `cpy_tensor` declines (ggml then goes through get and set). The
//! scheduler copies a cache view out through `get_tensor` for a backend that needs it in
//! standard bytes; SMEPilot's own ops read the packed bytes in place (`convert`).

use std::ffi::c_void;
use std::os::raw::c_char;
use std::sync::{Mutex, RwLock};

use super::sys::{
    self, ggml_backend_buffer_i, ggml_backend_buffer_t, ggml_backend_buffer_type,
    ggml_backend_buffer_type_i, ggml_backend_buffer_type_t, ggml_status, ggml_tensor,
};
use super::{buffer::ALIGNMENT, guard};
use smepilot_engine::dtype::DType;
use smepilot_engine::kv_layout::KvLayout;

/// One KV buffer: its memory and the layouts of the cache tensors in it.
struct KvBuffer {
    base: *mut u8,
    size: usize,
    /// Elements per head of this buffer's caches.
    head_elems: usize,
    /// (start offset in the buffer, layout) of each cache tensor, sorted by start.
    tensors: RwLock<Vec<(usize, KvLayout)>>,
}

impl KvBuffer {
    /// The cache tensor holding buffer offset `off`: its start and layout.
    fn tensor_at(&self, off: usize) -> Option<(usize, KvLayout)> {
        let t = self.tensors.read().unwrap_or_else(|e| e.into_inner());
        let i = t.partition_point(|(start, _)| *start <= off);
        let (start, l) = *t.get(i.checked_sub(1)?)?;
        (off < start + l.bytes()).then_some((start, l))
    }

    /// Calls `f(standard offset, offset of the bytes, length)` for the buffer's standard byte
    /// range `[start, start + len)`, run by run: bytes outside the cache tensors (alignment
    /// padding) are where ggml's layout puts them.
    fn for_each_run(&self, start: usize, len: usize, mut f: impl FnMut(usize, usize, usize)) {
        let end = start + len;
        let mut at = start;
        while at < end {
            match self.tensor_at(at) {
                Some((t0, l)) => {
                    let stop = end.min(t0 + l.bytes());
                    for (s, p, n) in l.runs(at - t0..stop - t0) {
                        f(t0 + s, t0 + p, n);
                    }
                    at = stop;
                }
                None => {
                    // Up to the next tensor's start (or the end).
                    let next = {
                        let t = self.tensors.read().unwrap_or_else(|e| e.into_inner());
                        t.iter().map(|(s, _)| *s).find(|&s| s > at).unwrap_or(end)
                    };
                    let stop = end.min(next);
                    f(at, at, stop - at);
                    at = stop;
                }
            }
        }
    }

    /// Buffer offset of the standard range `[offset, offset + size)` of tensor `t`, checked
    /// against the buffer's size.
    ///
    /// # Safety
    /// `t` is a live tensor of this buffer.
    unsafe fn range_of(&self, t: *const ggml_tensor, offset: usize, size: usize) -> usize {
        let start = ((*t).data as usize).wrapping_sub(self.base as usize) + offset;
        assert!(
            start.checked_add(size).is_some_and(|e| e <= self.size),
            "SMEPilot KV buffer: {size} bytes at {start} lie outside its {} bytes",
            self.size
        );
        start
    }
}

/// Where a tensor's bytes are, as SMEPilot's ops read them.
pub enum Storage {
    /// Not in a KV buffer.
    Elsewhere,
    /// In a KV buffer, in ggml's layout (not inside a packed cache tensor).
    Standard,
    /// Inside a packed cache tensor that starts at `tensor` (its standard offset 0), at
    /// standard offset `offset` in it.
    Packed { layout: KvLayout, tensor: *mut u8, offset: usize },
}

/// Whether `buft` is one of the KV buffer types.
pub fn is_kv_buft(buft: ggml_backend_buffer_type_t) -> bool {
    types().iter().any(|t| std::ptr::eq(&*t.0, buft))
}

/// Where tensor `t` (a view or not, allocated or only planned) keeps its bytes.
///
/// # Safety
/// `t` points to a live tensor whose `view_src` is null or live.
pub unsafe fn storage(t: *const ggml_tensor) -> Storage {
    let t = &*t;
    // A view not yet initialised has no buffer of its own: its source's tells.
    let (owner, offs) = if t.view_src.is_null() { (t, 0) } else { (&*t.view_src, t.view_offs) };
    let buffer = if owner.buffer.is_null() { t.buffer } else { owner.buffer };
    if buffer.is_null() || !is_kv_buft((*buffer).buft) || owner.data.is_null() {
        return Storage::Elsewhere;
    }
    let kv = ctx(buffer);
    let off = (owner.data as usize).wrapping_sub(kv.base as usize) + offs;
    match kv.tensor_at(off) {
        Some((start, layout)) => Storage::Packed { layout, tensor: kv.base.add(start), offset: off - start },
        None => Storage::Standard,
    }
}

// ---- buffer types ----------------------------------------------------------------

/// A buffer type's context: its head size, and its name, which carries the head size
/// (llama.cpp keys its per-buffer-type contexts by name).
struct KvTypeInfo {
    head_elems: usize,
    name: std::ffi::CString,
}

/// A leaked buffer type (lives as long as the process, like the registry's).
struct KvType(&'static mut ggml_backend_buffer_type);
// SAFETY: written once when made, then only read (its pointers point at leaked values).
unsafe impl Send for KvType {}

fn types() -> std::sync::MutexGuard<'static, Vec<KvType>> {
    static TYPES: Mutex<Vec<KvType>> = Mutex::new(Vec::new());
    TYPES.lock().unwrap_or_else(|e| e.into_inner())
}

/// # Safety
/// `buft` is a KV buffer type (made by `kv_buft`).
unsafe fn info<'a>(buft: ggml_backend_buffer_type_t) -> &'a KvTypeInfo {
    &*((*buft).context as *const KvTypeInfo)
}

/// The KV buffer type for caches of `head_elems` elements per head.
pub fn kv_buft(head_elems: usize) -> ggml_backend_buffer_type_t {
    let mut types = types();
    // SAFETY: every buffer type in the list was made below.
    if let Some(t) = types.iter_mut().find(|t| unsafe { info(&*t.0 as *const _ as ggml_backend_buffer_type_t) }.head_elems == head_elems) {
        return &mut *t.0;
    }
    let info = Box::leak(Box::new(KvTypeInfo {
        head_elems,
        name: std::ffi::CString::new(format!("SMEPILOT_KV{head_elems}")).expect("no NUL"),
    }));
    let t = Box::leak(Box::new(ggml_backend_buffer_type {
        iface: KV_BUFT_IFACE,
        device: super::registry::dev_ptr(),
        context: info as *mut KvTypeInfo as *mut c_void,
    }));
    let p: ggml_backend_buffer_type_t = &mut *t;
    types.push(KvType(t));
    p
}

unsafe extern "C" fn buft_get_name(buft: ggml_backend_buffer_type_t) -> *const c_char {
    guard("kv buft_get_name", c"SMEPILOT_KV".as_ptr(), || info(buft).name.as_ptr())
}

unsafe extern "C" fn buft_get_alignment(_: ggml_backend_buffer_type_t) -> usize {
    ALIGNMENT
}

unsafe extern "C" fn buft_is_host(_: ggml_backend_buffer_type_t) -> bool {
    false
}

unsafe extern "C" fn buft_alloc_buffer(buft: ggml_backend_buffer_type_t, size: usize) -> ggml_backend_buffer_t {
    guard("kv alloc_buffer", std::ptr::null_mut(), || {
        let Some(base) = super::buffer::alloc_aligned(size, "KV cache buffer") else { return std::ptr::null_mut() };
        let kv = Box::new(KvBuffer {
            base,
            size,
            head_elems: info(buft).head_elems,
            tensors: RwLock::new(Vec::new()),
        });
        sys::ggml_backend_buffer_init(buft, KV_BUFFER_IFACE, Box::into_raw(kv) as *mut c_void, size)
    })
}

// ---- buffers ----------------------------------------------------------------------

/// # Safety
/// `buffer` is a KV buffer (its context is a `KvBuffer`).
unsafe fn ctx<'a>(buffer: ggml_backend_buffer_t) -> &'a KvBuffer {
    &*((*buffer).context as *const KvBuffer)
}

unsafe extern "C" fn free_buffer(buffer: ggml_backend_buffer_t) {
    guard("kv free_buffer", (), || {
        let kv = Box::from_raw((*buffer).context as *mut KvBuffer);
        libc::free(kv.base as *mut c_void);
    })
}

unsafe extern "C" fn get_base(buffer: ggml_backend_buffer_t) -> *mut c_void {
    guard("kv get_base", std::ptr::null_mut(), || ctx(buffer).base as *mut c_void)
}

/// Registers a cache tensor's packed layout. Views and tensors whose rows the buffer's
/// head size does not tile stay in ggml's layout.
unsafe extern "C" fn init_tensor(buffer: ggml_backend_buffer_t, t: *mut ggml_tensor) -> ggml_status {
    guard("kv init_tensor", ggml_status::GGML_STATUS_FAILED, || {
        let (kv, tr) = (ctx(buffer), &*t);
        if !tr.view_src.is_null() {
            return ggml_status::GGML_STATUS_SUCCESS;
        }
        let layout = DType::from_ggml(tr.type_).and_then(|ty| {
            let (ne0, cells) = (tr.ne[0] as usize, (tr.ne[1] * tr.ne[2] * tr.ne[3]) as usize);
            let contiguous = tr.nb[1] == ty.row_bytes(ne0) && tr.nb[2] == tr.nb[1] * tr.ne[1] as usize;
            let whole_blocks = kv.head_elems.is_multiple_of(ty.block_size()) && ne0.is_multiple_of(kv.head_elems);
            (contiguous && whole_blocks && tr.nb[3] == tr.nb[2] * tr.ne[2] as usize)
                .then(|| KvLayout::new(ty.row_bytes(ne0), ty.row_bytes(kv.head_elems), cells))
                .flatten()
        });
        let Some(layout) = layout else {
            smepilot_engine::smelog!(Warn, "KV cache tensor {} kept in ggml's layout (head size {})",
                super::registry::tensor_name(t), kv.head_elems);
            return ggml_status::GGML_STATUS_SUCCESS;
        };
        let start = (tr.data as usize).wrapping_sub(kv.base as usize);
        let mut list = kv.tensors.write().unwrap_or_else(|e| e.into_inner());
        let i = list.partition_point(|(s, _)| *s < start);
        let clear = (i == 0 || list[i - 1].0 + list[i - 1].1.bytes() <= start)
            && list.get(i).is_none_or(|(s, _)| start + layout.bytes() <= *s);
        if start + layout.bytes() > kv.size || !clear {
            smepilot_engine::smelog!(Error, "KV cache tensor {} overlaps another or the buffer's end",
                super::registry::tensor_name(t));
            return ggml_status::GGML_STATUS_FAILED;
        }
        list.insert(i, (start, layout));
        ggml_status::GGML_STATUS_SUCCESS
    })
}

unsafe extern "C" fn memset_tensor(buffer: ggml_backend_buffer_t, t: *mut ggml_tensor, value: u8, offset: usize, size: usize) {
    guard("kv memset_tensor", (), || {
        let kv = ctx(buffer);
        let start = kv.range_of(t, offset, size);
        // SAFETY: every run lies within the buffer (range_of checked the range; the layout
        // permutes bytes within its tensor).
        kv.for_each_run(start, size, |_, at, n| std::ptr::write_bytes(kv.base.add(at), value, n));
    })
}

unsafe extern "C" fn set_tensor(buffer: ggml_backend_buffer_t, t: *mut ggml_tensor, data: *const c_void, offset: usize, size: usize) {
    guard("kv set_tensor", (), || {
        let kv = ctx(buffer);
        let start = kv.range_of(t, offset, size);
        // SAFETY: as above; `data` holds `size` bytes of host memory (ggml's contract), which
        // does not overlap the buffer.
        kv.for_each_run(start, size, |std, at, n| {
            std::ptr::copy_nonoverlapping((data as *const u8).add(std - start), kv.base.add(at), n)
        });
    })
}

unsafe extern "C" fn get_tensor(buffer: ggml_backend_buffer_t, t: *const ggml_tensor, data: *mut c_void, offset: usize, size: usize) {
    guard("kv get_tensor", (), || {
        let kv = ctx(buffer);
        let start = kv.range_of(t, offset, size);
        // SAFETY: as in set_tensor, the other way.
        kv.for_each_run(start, size, |std, at, n| {
            std::ptr::copy_nonoverlapping(kv.base.add(at), (data as *mut u8).add(std - start), n)
        });
    })
}

/// Declines: ggml then copies through get_tensor and set_tensor, which translate.
unsafe extern "C" fn cpy_tensor(_: ggml_backend_buffer_t, _: *const ggml_tensor, _: *mut ggml_tensor) -> bool {
    false
}

unsafe extern "C" fn clear(buffer: ggml_backend_buffer_t, value: u8) {
    guard("kv clear", (), || {
        let kv = ctx(buffer);
        // SAFETY: the buffer spans `size` bytes from `base`; a fill is the same in any layout.
        std::ptr::write_bytes(kv.base, value, kv.size);
    })
}

const KV_BUFFER_IFACE: ggml_backend_buffer_i = ggml_backend_buffer_i {
    free_buffer: Some(free_buffer),
    get_base: Some(get_base),
    init_tensor: Some(init_tensor),
    memset_tensor: Some(memset_tensor),
    set_tensor: Some(set_tensor),
    get_tensor: Some(get_tensor),
    set_tensor_2d: None,
    get_tensor_2d: None,
    cpy_tensor: Some(cpy_tensor),
    clear: Some(clear),
    reset: None,
};

const KV_BUFT_IFACE: ggml_backend_buffer_type_i = ggml_backend_buffer_type_i {
    get_name: Some(buft_get_name),
    alloc_buffer: Some(buft_alloc_buffer),
    get_alignment: Some(buft_get_alignment),
    get_max_size: None,
    get_alloc_size: None,
    is_host: Some(buft_is_host),
};
