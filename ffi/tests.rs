//! The plugin through ggml's own API (libggml-base): buffers of SMEPilot's buffer type, its
//! backend, graphs built with ggml_* calls.

use std::ffi::c_void;
use std::ptr::null_mut;

use super::sys::{
    self, ggml_backend_buffer_t, ggml_backend_buffer_usage, ggml_backend_t, ggml_context,
    ggml_status, ggml_tensor,
};
use super::{buffer, registry};
use smepilot_engine::dtype::DType;
use smepilot_engine::calibrate::random_weights;

/// A ggml context (no_alloc) whose tensors live in one buffer of SMEPilot's type.
struct Tensors {
    ctx: *mut ggml_context,
    buf: ggml_backend_buffer_t,
}

impl Tensors {
    fn new() -> Tensors {
        let params = sys::ggml_init_params {
            mem_size: 1 << 20,
            mem_buffer: null_mut(),
            no_alloc: true,
        };
        // SAFETY: plain ggml initialisation; the context is freed in Drop.
        let ctx = unsafe { sys::ggml_init(params) };
        assert!(!ctx.is_null());
        Tensors { ctx, buf: null_mut() }
    }

    fn tensor(&self, ty: sys::ggml_type, ne0: usize, ne1: usize) -> *mut ggml_tensor {
        // SAFETY: the context is live and has room for a few tensor headers.
        unsafe { sys::ggml_new_tensor_2d(self.ctx, ty, ne0 as i64, ne1 as i64) }
    }

    /// Allocates every tensor of the context in one buffer of SMEPilot's type.
    fn alloc(&mut self, usage: ggml_backend_buffer_usage) {
        // SAFETY: the context's tensors have no data yet; buft_ptr is our live buffer type.
        unsafe {
            self.buf = sys::ggml_backend_alloc_ctx_tensors_from_buft(self.ctx, registry::buft_ptr());
            assert!(!self.buf.is_null());
            sys::ggml_backend_buffer_set_usage(self.buf, usage);
        }
    }
}

impl Drop for Tensors {
    fn drop(&mut self) {
        // SAFETY: both were created in new / alloc and are not used after this.
        unsafe {
            if !self.buf.is_null() {
                sys::ggml_backend_buffer_free(self.buf);
            }
            sys::ggml_free(self.ctx);
        }
    }
}

fn set<T>(t: *mut ggml_tensor, data: &[T]) {
    // SAFETY: `data` holds exactly the tensor's bytes (checked by ggml, which aborts if not).
    unsafe {
        assert_eq!(std::mem::size_of_val(data), sys::ggml_nbytes(t));
        sys::ggml_backend_tensor_set(t, data.as_ptr() as *const c_void, 0, sys::ggml_nbytes(t));
    }
}

fn get_f32(t: *mut ggml_tensor) -> Vec<f32> {
    // SAFETY: an f32 tensor of nbytes / 4 elements, read into a buffer of that size.
    unsafe {
        let mut v = vec![0f32; sys::ggml_nbytes(t) / 4];
        sys::ggml_backend_tensor_get(t, v.as_mut_ptr() as *mut c_void, 0, sys::ggml_nbytes(t));
        v
    }
}

struct Backend(ggml_backend_t);

impl Backend {
    fn new() -> Backend {
        // SAFETY: our device; init_backend returns a backend freed in Drop.
        let b = unsafe { sys::ggml_backend_dev_init(registry::dev_ptr(), std::ptr::null()) };
        assert!(!b.is_null(), "SMEPilot's backend did not initialise");
        Backend(b)
    }

    /// Builds the graph of `out` and runs it on SMEPilot.
    fn compute(&self, t: &Tensors, out: *mut ggml_tensor) -> ggml_status {
        // SAFETY: `out` and its sources belong to `t`'s live context and have data.
        unsafe {
            let gf = sys::ggml_new_graph_custom(t.ctx, 8, false);
            sys::ggml_build_forward_expand(gf, out);
            sys::ggml_backend_graph_compute(self.0, gf)
        }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        // SAFETY: created in new, not used after this.
        unsafe { sys::ggml_backend_free(self.0) };
    }
}

/// GET_ROWS asserts its row ids are in range: an id out of range panics on the thread
/// handling that row. graph_compute must report GGML_STATUS_FAILED (not hang, not abort
/// the process), and the next graph on the same backend must run correctly.
#[test]
fn a_panic_in_a_graph_fails_it_and_the_next_graph_runs() {
    let (cols, table_rows, rows) = (16usize, 4usize, 8usize);
    let mut g = Tensors::new();
    let table = g.tensor(sys::ggml_type_GGML_TYPE_F32, cols, table_rows);
    let ids = g.tensor(sys::ggml_type_GGML_TYPE_I32, rows, 1);
    // SAFETY: both tensors belong to g's context.
    let out = unsafe { sys::ggml_get_rows(g.ctx, table, ids) };
    g.alloc(ggml_backend_buffer_usage::GGML_BACKEND_BUFFER_USAGE_ANY);
    let values: Vec<f32> = (0..cols * table_rows).map(|i| i as f32).collect();
    set(table, &values);
    let backend = Backend::new();

    for bad_row in [rows - 1, 0] {
        let mut id: Vec<i32> = (0..rows as i32).map(|r| r % table_rows as i32).collect();
        id[bad_row] = 1_000_000;
        set(ids, &id);
        assert_eq!(backend.compute(&g, out), ggml_status::GGML_STATUS_FAILED, "bad row {bad_row}");

        id[bad_row] = 3;
        set(ids, &id);
        assert_eq!(backend.compute(&g, out), ggml_status::GGML_STATUS_SUCCESS);
        let got = get_f32(out);
        for (r, &i) in id.iter().enumerate() {
            assert_eq!(&got[r * cols..][..cols], &values[i as usize * cols..][..cols], "row {r}");
        }
    }
}

const K: usize = 256;
const N: usize = 32;
const M: usize = 2;

/// A Q8_0 weight [K, N] in a weights buffer and an activation [K, M] in a compute buffer.
struct MatMul {
    w: Tensors,
    weight: *mut ggml_tensor,
    a: Tensors,
    out: *mut ggml_tensor,
}

impl MatMul {
    fn new(weights: &[u8], activation: &[f32]) -> MatMul {
        let mut w = Tensors::new();
        let weight = w.tensor(sys::ggml_type_GGML_TYPE_Q8_0, K, N);
        w.alloc(ggml_backend_buffer_usage::GGML_BACKEND_BUFFER_USAGE_WEIGHTS);
        set(weight, weights);
        let mut a = Tensors::new();
        let x = a.tensor(sys::ggml_type_GGML_TYPE_F32, K, M);
        // SAFETY: `weight` lives in w's context, which outlives this graph's use of it.
        let out = unsafe { sys::ggml_mul_mat(a.ctx, weight, x) };
        a.alloc(ggml_backend_buffer_usage::GGML_BACKEND_BUFFER_USAGE_COMPUTE);
        set(x, activation);
        MatMul { w, weight, a, out }
    }

    fn run(&self, backend: &Backend) -> Vec<f32> {
        assert_eq!(backend.compute(&self.a, self.out), ggml_status::GGML_STATUS_SUCCESS);
        get_f32(self.out)
    }

    fn is_packed(&self) -> bool {
        // SAFETY: the weight tensor is live.
        unsafe { buffer::packed_ref(self.weight).is_some() }
    }
}

/// The product of never-packed weights (a fresh buffer): what a graph must compute after
/// the persistent weight was overwritten with the same bytes.
fn fresh(backend: &Backend, weights: &[u8], activation: &[f32]) -> Vec<f32> {
    MatMul::new(weights, activation).run(backend)
}

/// Writes to a weight after its packed copy was made (set_tensor, memset_tensor, and a
/// buffer clear) must reach every later graph: each one computes what a fresh, never
/// written weight holding the same bytes computes.
#[test]
fn writes_to_a_packed_weight_reach_the_next_graph() {
    let backend = Backend::new();
    let w1 = random_weights(DType::Q8_0, N, K, 1);
    let w2 = random_weights(DType::Q8_0, N, K, 2);
    let act: Vec<f32> = (0..K * M).map(|i| ((i * 7919) % 101) as f32 / 50.0 - 1.0).collect();
    let mm = MatMul::new(&w1, &act);

    let out1 = mm.run(&backend);
    assert!(mm.is_packed(), "the first product must have packed the weight");
    assert_eq!(out1, fresh(&backend, &w1, &act));

    // set_tensor of the whole weight.
    set(mm.weight, &w2);
    assert!(!mm.is_packed(), "set_tensor must drop the stale copy");
    let out2 = mm.run(&backend);
    assert_ne!(out2, out1, "the two weights must give different products");
    assert_eq!(out2, fresh(&backend, &w2, &act));
    assert!(mm.is_packed(), "the next product packs the new bytes");

    // set_tensor of a part (the rows of output 5), then memset_tensor of another part.
    let row = DType::Q8_0.row_bytes(K);
    let mut w3 = w2.clone();
    w3[5 * row..6 * row].copy_from_slice(&w1[5 * row..6 * row]);
    // SAFETY: the range lies within the weight's bytes.
    unsafe {
        sys::ggml_backend_tensor_set(
            mm.weight,
            w1[5 * row..].as_ptr() as *const c_void,
            5 * row,
            row,
        )
    };
    assert_eq!(mm.run(&backend), fresh(&backend, &w3, &act));
    w3[9 * row..11 * row].fill(0);
    // SAFETY: as above.
    unsafe { sys::ggml_backend_tensor_memset(mm.weight, 0, 9 * row, 2 * row) };
    assert!(!mm.is_packed(), "memset_tensor must drop the stale copy");
    let out3 = mm.run(&backend);
    assert_eq!(out3, fresh(&backend, &w3, &act));
    assert!(out3.chunks(N).all(|o| o[9] == 0.0 && o[10] == 0.0));

    // clear of the whole buffer.
    // SAFETY: the buffer is live and holds only this weight.
    unsafe { sys::ggml_backend_buffer_clear(mm.w.buf, 0) };
    assert!(!mm.is_packed(), "clear must drop the stale copy");
    assert!(mm.run(&backend).iter().all(|&v| v == 0.0));

    set(mm.weight, &w1);
    assert_eq!(mm.run(&backend), out1);
}
