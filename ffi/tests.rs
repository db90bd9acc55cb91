//! The plugin through ggml's own API (libggml-base): buffers of SMEPilot's buffer type, its
//! backend, graphs built with ggml_* calls.

use std::ffi::c_void;
use std::ptr::null_mut;

use super::sys::{
    self, ggml_backend_buffer_t, ggml_backend_buffer_usage, ggml_backend_t, ggml_context,
    ggml_status, ggml_tensor,
};
use super::{buffer, convert, kv_buffer, registry};
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

/// Tensor headers with arbitrary fields, as another ggml version or a hostile graph could
/// hand them over: any op number, known or not; any type number, shape, strides, operand
/// count and op parameters; no buffer and no data (as in the scheduler's support queries).
/// Operands are earlier headers of the same list, so every pointer is live while the list is.
fn arbitrary_headers(seed: u64, count: usize) -> Vec<Box<ggml_tensor>> {
    use rand::{rngs::StdRng, Rng, SeedableRng};
    use sys::{ggml_glu_op, ggml_op, ggml_unary_op};
    // Types SMEPilot knows and some it does not (ggml's numbers).
    const TYPES: [u32; 12] = [0, 1, 2, 3, 8, 12, 13, 14, 26, 30, 20, 39];
    let elems = [1i64, 2, 3, 16, 17, 32, 64, 96, 128, 256];
    let mut r = StdRng::seed_from_u64(seed);
    let mut pool: Vec<Box<ggml_tensor>> = Vec::with_capacity(count + 4);
    // A header of type `ty` and shape `ne` at ggml's contiguous strides, or (sometimes) a
    // permuted view of such a tensor (dimensions 1 and 2 swapped with their strides).
    let header = |r: &mut StdRng, ty: u32, ne: [i64; 4]| -> Box<ggml_tensor> {
        let mut t: Box<ggml_tensor> = Box::default();
        // SAFETY: only types in ggml's table are passed here.
        let (ts, bs) = unsafe { (sys::ggml_type_size(ty), sys::ggml_blck_size(ty).max(1) as usize) };
        t.type_ = ty;
        t.ne = ne;
        t.nb[0] = ts;
        t.nb[1] = ts * (ne[0] as usize).div_ceil(bs);
        t.nb[2] = t.nb[1] * ne[1] as usize;
        t.nb[3] = t.nb[2] * ne[2] as usize;
        if r.gen_bool(0.2) {
            t.ne.swap(1, 2);
            t.nb.swap(1, 2);
        }
        t
    };
    while pool.len() < count {
        if r.gen_bool(0.5) {
            // A computing op with operands shaped for it (each operand its own header).
            let dims = |r: &mut StdRng| -> [i64; 4] { [elems[r.gen_range(0..elems.len())], elems[r.gen_range(0..5)], if r.gen_bool(0.3) { 2 } else { 1 }, 1] };
            let ne = dims(&mut r);
            let f = if r.gen_bool(0.8) { 0 } else { 1 };
            let ops = [ggml_op::GGML_OP_ADD, ggml_op::GGML_OP_MUL, ggml_op::GGML_OP_DIV, ggml_op::GGML_OP_SCALE, ggml_op::GGML_OP_UNARY, ggml_op::GGML_OP_GLU, ggml_op::GGML_OP_CLAMP, ggml_op::GGML_OP_RMS_NORM, ggml_op::GGML_OP_SOFT_MAX, ggml_op::GGML_OP_SUM_ROWS, ggml_op::GGML_OP_CPY, ggml_op::GGML_OP_ARGSORT, ggml_op::GGML_OP_MUL_MAT, ggml_op::GGML_OP_GET_ROWS];
            let op = ops[r.gen_range(0..ops.len())];
            let quant = TYPES[r.gen_range(0..10)];
            let (mut d, srcs): (Box<ggml_tensor>, Vec<Box<ggml_tensor>>) = match op {
                ggml_op::GGML_OP_ADD | ggml_op::GGML_OP_MUL | ggml_op::GGML_OP_DIV => {
                    let mut b = ne;
                    for x in b.iter_mut() {
                        if r.gen_bool(0.3) {
                            *x = 1;
                        }
                    }
                    (header(&mut r, f, ne), vec![header(&mut r, f, ne), header(&mut r, f, b)])
                }
                ggml_op::GGML_OP_GLU if r.gen_bool(0.5) => (header(&mut r, 0, ne), vec![header(&mut r, 0, ne), header(&mut r, 0, ne)]),
                ggml_op::GGML_OP_GLU => (header(&mut r, 0, ne), vec![header(&mut r, 0, [2 * ne[0], ne[1], ne[2], ne[3]])]),
                ggml_op::GGML_OP_SOFT_MAX if r.gen_bool(0.5) => (header(&mut r, 0, ne), vec![header(&mut r, 0, ne), header(&mut r, 1, [ne[0], ne[1], 1, 1])]),
                ggml_op::GGML_OP_SUM_ROWS => (header(&mut r, 0, [1, ne[1], ne[2], ne[3]]), vec![header(&mut r, 0, ne)]),
                ggml_op::GGML_OP_ARGSORT => (header(&mut r, 26, ne), vec![header(&mut r, 0, ne)]),
                ggml_op::GGML_OP_CPY => {
                    let to = [0, 1, 30][r.gen_range(0..3)];
                    (header(&mut r, to, ne), vec![header(&mut r, f, ne)])
                }
                ggml_op::GGML_OP_MUL_MAT => {
                    let (k, n, m) = ([32i64, 64, 256, 512][r.gen_range(0..4)], elems[r.gen_range(0..elems.len())], [1i64, 2, 5, 16, 33][r.gen_range(0..5)]);
                    (header(&mut r, 0, [n, m, 1, 1]), vec![header(&mut r, quant, [k, n, 1, 1]), header(&mut r, 0, [k, m, 1, 1])])
                }
                ggml_op::GGML_OP_GET_ROWS => {
                    let rows = [1i64, 5, 40][r.gen_range(0..3)];
                    (header(&mut r, 0, [ne[0], rows, 1, 1]), vec![header(&mut r, quant, [ne[0], 40, 1, 1]), header(&mut r, 26, [rows, 1, 1, 1])])
                }
                _ => (header(&mut r, 0, ne), vec![header(&mut r, 0, ne)]),
            };
            d.op = op;
            for p in d.op_params.iter_mut() {
                *p = r.gen_range(0..3);
            }
            match op {
                ggml_op::GGML_OP_UNARY => d.op_params[0] = ggml_unary_op::GGML_UNARY_OP_SILU.0 as i32,
                ggml_op::GGML_OP_GLU => d.op_params[0] = ggml_glu_op::GGML_GLU_OP_SWIGLU.0 as i32,
                ggml_op::GGML_OP_SCALE | ggml_op::GGML_OP_CLAMP | ggml_op::GGML_OP_RMS_NORM | ggml_op::GGML_OP_SOFT_MAX => {
                    d.op_params[0] = r.gen_range(-2.0f32..2.0).to_bits() as i32;
                    d.op_params[1] = if op == ggml_op::GGML_OP_CLAMP { r.gen_range(2.0f32..4.0).to_bits() as i32 } else { 0 };
                    if op == ggml_op::GGML_OP_RMS_NORM {
                        d.op_params[0] = 1e-6f32.to_bits() as i32;
                    }
                }
                _ => {}
            }
            for (k, mut s) in srcs.into_iter().enumerate() {
                d.src[k] = &mut *s;
                pool.push(s);
            }
            pool.push(d);
            continue;
        }
        let mut t: Box<ggml_tensor> = Box::default();
        t.type_ = if r.gen_bool(0.9) { TYPES[r.gen_range(0..TYPES.len())] } else { r.gen_range(0..1000) };
        for d in 0..4 {
            t.ne[d] = match r.gen_range(0..20) {
                0 => 0,
                1 => -1,
                2 => 1 << 40,
                _ if d > 1 && r.gen_bool(0.7) => 1,
                _ => elems[r.gen_range(0..elems.len())],
            };
        }
        // Strides: ggml's contiguous ones from the type's block (when it has one), two of
        // them swapped, or anything.
        // SAFETY: ggml_type_size / ggml_blck_size index ggml's type table: only types below
        // its count are passed.
        let (ts, bs) = if t.type_ < sys::ggml_type_GGML_TYPE_COUNT { unsafe { (sys::ggml_type_size(t.type_), sys::ggml_blck_size(t.type_).max(1) as usize) } } else { (4, 1) };
        let mut nb = [ts, 0, 0, 0];
        nb[1] = ts * (t.ne[0].max(1) as usize).div_ceil(bs);
        for d in 2..4 {
            nb[d] = nb[d - 1] * t.ne[d - 1].clamp(1, 1 << 20) as usize;
        }
        match r.gen_range(0..6) {
            0 => nb.swap(1, 2),
            1 => nb = std::array::from_fn(|_| r.gen_range(0..1usize << 20)),
            2 => nb[r.gen_range(0..4)] = usize::MAX / 2,
            _ => {}
        }
        t.nb = nb;
        t.op = ggml_op(if r.gen_bool(0.85) { r.gen_range(0..ggml_op::GGML_OP_COUNT.0) } else { r.gen_range(0..400) });
        for p in t.op_params.iter_mut() {
            *p = if r.gen_bool(0.5) { r.gen_range(-2..8) } else { r.gen() };
        }
        if r.gen_bool(0.3) {
            t.op_params[0] = match t.op {
                ggml_op::GGML_OP_UNARY => ggml_unary_op::GGML_UNARY_OP_SILU.0 as i32,
                ggml_op::GGML_OP_GLU => ggml_glu_op::GGML_GLU_OP_SWIGLU.0 as i32,
                _ => 0,
            };
        }
        // Operands, sometimes past the five SMEPilot reads.
        for s in 0..r.gen_range(0..4).min(pool.len()) {
            let at = if r.gen_bool(0.05) { 5 + s } else { s };
            let from = r.gen_range(0..pool.len());
            t.src[at] = &mut *pool[from] as *mut ggml_tensor;
        }
        pool.push(t);
    }
    pool
}

/// The seeds of the arbitrary-header tests (their corpus: each seed is 20,000 headers).
const HEADER_SEEDS: [u64; 3] = [1, 7, 2026];

/// `supports_op` answers every arbitrary header without a panic, and accepts well-formed
/// nodes (an f32 ADD, a Q4_0 MUL_MAT) built beside them.
#[test]
fn arbitrary_tensor_headers_are_answered_without_a_panic() {
    use sys::ggml_op;
    for seed in HEADER_SEEDS {
        let pool = arbitrary_headers(seed, 20_000);
        let mut accepted = 0;
        for (i, t) in pool.iter().enumerate() {
            let h = &**t as *const ggml_tensor;
            // SAFETY: `h` and every header it points to are live (the pool), zeroed where not
            // set (NUL-terminated names), with no buffer and no data.
            let verdict = std::panic::catch_unwind(|| unsafe { registry::supports_op(h) });
            assert!(verdict.is_ok(), "seed {seed}, header {i}: supports_op panicked on op {} type {} ne {:?} nb {:?}", t.op.0, t.type_, t.ne, t.nb);
            accepted += verdict.unwrap() as usize;
        }
        let mut good = Vec::new();
        for (op, ty, ne) in [(ggml_op::GGML_OP_ADD, 0u32, [16i64, 4, 1, 1]), (ggml_op::GGML_OP_MUL_MAT, 2, [256, 16, 1, 1])] {
            let contiguous = |t: &mut ggml_tensor, ty: u32, ne: [i64; 4]| {
                // SAFETY: types 0 (F32) and 2 (Q4_0) are in ggml's table.
                let (ts, bs) = unsafe { (sys::ggml_type_size(ty), sys::ggml_blck_size(ty) as usize) };
                t.type_ = ty;
                t.ne = ne;
                t.nb[0] = ts;
                t.nb[1] = ts * ne[0] as usize / bs;
                t.nb[2] = t.nb[1] * ne[1] as usize;
                t.nb[3] = t.nb[2] * ne[2] as usize;
            };
            let (mut a, mut b, mut d): (Box<ggml_tensor>, Box<ggml_tensor>, Box<ggml_tensor>) = Default::default();
            contiguous(&mut a, ty, ne);
            contiguous(&mut b, 0, if op == ggml_op::GGML_OP_ADD { ne } else { [256, 9, 1, 1] });
            contiguous(&mut d, 0, if op == ggml_op::GGML_OP_ADD { ne } else { [16, 9, 1, 1] });
            d.op = op;
            d.src[0] = &mut *a;
            d.src[1] = &mut *b;
            // SAFETY: as above; the operands live in `good` until the end of the test.
            assert!(unsafe { registry::supports_op(&*d) }, "a well-formed op {} was declined", d.op.0);
            good.push((a, b, d));
        }
        eprintln!("seed {seed}: {accepted} of {} arbitrary headers accepted", pool.len());
    }
}

/// Every arbitrary header `supports_op` accepts, given memory (operands filled with small
/// random values; I32 ids in or out of range) and run on each kernel tier this CPU offers,
/// either fails cleanly (the executor's error, as for an id out of range) or gives the
/// scalar reference tier's result within tolerance (elements the reference makes
/// non-finite aside). Never a crash, a hang or garbage.
#[test]
fn accepted_arbitrary_nodes_compute_like_the_scalar_reference() {
    use rand::{rngs::StdRng, Rng, SeedableRng};
    use smepilot_engine::exec::Executor;
    use smepilot_engine::kernels::KernelSet;
    let sets = KernelSet::available();
    let (mut ran, mut failed_cleanly) = (0, 0);
    for seed in HEADER_SEEDS {
        let mut pool = arbitrary_headers(seed, 20_000);
        let mut r = StdRng::seed_from_u64(seed ^ 0x5eed);
        for i in 0..pool.len() {
            let h = &*pool[i] as *const ggml_tensor;
            // SAFETY: as in the test above.
            if unsafe { !registry::supports_op(h) } || pool[i].op == sys::ggml_op::GGML_OP_NONE || unsafe { convert::node(h) }.is_ok_and(|n| matches!(n.op, smepilot_engine::ops::Op::View)) {
                continue;
            }
            // The node and its operands, each its own zeroed memory (at most 16 MB each).
            let mut tensors: Vec<*mut ggml_tensor> = vec![&mut *pool[i]];
            // Operands are live headers of the pool; one shared by two slots gets one memory.
            for &s in pool[i].src.iter().filter(|s| !s.is_null()) {
                if !tensors.contains(&s) {
                    tensors.push(s);
                }
            }
            // SAFETY: every header is live with a type in ggml's table (supports_op accepted
            // it), so ggml_nbytes reads its table.
            let sizes: Vec<usize> = tensors.iter().map(|&t| unsafe { sys::ggml_nbytes(t) }).collect();
            if sizes.iter().any(|&b| b > 16 << 20) {
                continue;
            }
            let mut mem: Vec<Vec<u64>> = sizes.iter().map(|&b| vec![0u64; b.div_ceil(8).max(1)]).collect();
            for (k, (&t, m)) in tensors.iter().zip(&mut mem).enumerate() {
                // SAFETY: `m` outlives every use of the header's data below (dropped at the
                // end of this iteration, after the data pointers are reset).
                unsafe { (*t).data = m.as_mut_ptr() as *mut c_void };
                if k == 0 {
                    continue;
                }
                // SAFETY: `m` is `sizes[k]` bytes long (rounded up to words).
                let bytes = unsafe { std::slice::from_raw_parts_mut(m.as_mut_ptr() as *mut u8, sizes[k]) };
                match unsafe { (*t).type_ } {
                    0 => bytes.chunks_exact_mut(4).for_each(|c| c.copy_from_slice(&r.gen_range(-1.0f32..1.0).to_le_bytes())),
                    1 => bytes.chunks_exact_mut(2).for_each(|c| c.copy_from_slice(&half::f16::from_f32(r.gen_range(-1.0..1.0)).to_le_bytes())),
                    30 => bytes.chunks_exact_mut(2).for_each(|c| c.copy_from_slice(&half::bf16::from_f32(r.gen_range(-1.0..1.0)).to_le_bytes())),
                    26 => bytes.chunks_exact_mut(4).for_each(|c| c.copy_from_slice(&r.gen_range(-1i32..40).to_le_bytes())),
                    // Quantized blocks: small random bytes keep their f16 scales finite and small.
                    _ => bytes.iter_mut().for_each(|b| *b = r.gen_range(0..0x30)),
                }
            }
            // SAFETY: the header now has data for itself and its operands.
            let node = unsafe { convert::node(h) }.expect("accepted");
            let out = node.dst;
            let outputs: Vec<Result<Vec<u8>, String>> = sets
                .iter()
                .map(|ks| {
                    mem[0].fill(0);
                    Executor::with_kernels(2, ks).compute(std::slice::from_ref(&node)).map(|_| {
                        // SAFETY: the output's memory, `sizes[0]` bytes.
                        unsafe { std::slice::from_raw_parts(mem[0].as_ptr() as *const u8, sizes[0]) }.to_vec()
                    })
                })
                .collect();
            for &t in &tensors {
                // SAFETY: live headers; their memory is dropped next.
                unsafe { (*t).data = std::ptr::null_mut() };
            }
            let Ok(reference) = &outputs[0] else {
                // The scalar tier failed cleanly (an id out of range): every tier must.
                assert!(outputs.iter().all(|o| o.is_err()), "seed {seed}, header {i} (op {}): only some tiers failed", pool[i].op.0);
                failed_cleanly += 1;
                continue;
            };
            ran += 1;
            if out.ty != smepilot_engine::dtype::DType::F32 {
                // Other outputs (copies to F16 / quantized types, I32 ids): exact across tiers
                // except for rounding ties; compared bytewise where all are exact copies.
                continue;
            }
            let f = |b: &[u8]| b.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect::<Vec<f32>>();
            let want = f(reference);
            let scale = want.iter().filter(|v| v.is_finite()).fold(0f32, |m, v| m.max(v.abs()));
            for (ks, got) in sets.iter().zip(&outputs).skip(1) {
                let got = f(got.as_ref().unwrap_or_else(|e| panic!("seed {seed}, header {i}: {} failed where scalar ran: {e}", ks.name)));
                for (j, (&g, &w)) in got.iter().zip(&want).enumerate() {
                    if w.is_finite() {
                        assert!((g - w).abs() <= 2e-2 * scale + 1e-5, "seed {seed}, header {i} (op {}, {:?}): {} gives {g} at {j}, scalar {w}", pool[i].op.0, node.op, ks.name);
                    }
                }
            }
        }
    }
    eprintln!("{ran} accepted arbitrary nodes computed on {} tiers, {failed_cleanly} failed cleanly on all", sets.len());
    assert!(ran > 100, "too few arbitrary nodes ran ({ran}): the generator no longer reaches the ops");
}

/// A cache like llama.cpp's: `[heads * head, kv, streams]` of `ty`, in the buffer of `buft`.
fn kv_cache(t: &mut Tensors, ty: sys::ggml_type, head: usize, heads: usize, kv: usize, streams: usize, buft: sys::ggml_backend_buffer_type_t) -> *mut ggml_tensor {
    // SAFETY: the context is live; the tensor is allocated in a buffer of `buft` at once.
    unsafe {
        let c = sys::ggml_new_tensor_3d(t.ctx, ty, (head * heads) as i64, kv as i64, streams as i64);
        t.buf = sys::ggml_backend_alloc_ctx_tensors_from_buft(t.ctx, buft);
        assert!(!t.buf.is_null());
        c
    }
}

fn get_bytes(t: *mut ggml_tensor, offset: usize, size: usize) -> Vec<u8> {
    let mut v = vec![0u8; size];
    // SAFETY: ggml checks offset + size against the tensor's bytes (aborts otherwise).
    unsafe { sys::ggml_backend_tensor_get(t, v.as_mut_ptr() as *mut c_void, offset, size) };
    v
}

fn set_bytes(t: *mut ggml_tensor, offset: usize, data: &[u8]) {
    // SAFETY: as in get_bytes.
    unsafe { sys::ggml_backend_tensor_set(t, data.as_ptr() as *const c_void, offset, data.len()) };
}

fn noise(n: usize, seed: usize) -> Vec<f32> {
    (0..n).map(|i| (((i + seed) * 2654435761) % 1999) as f32 / 1000.0 - 1.0).collect()
}

/// Runs the graph of the node `build` makes (with its inputs) in a fresh compute context,
/// after `fill` set the inputs; asserts SMEPilot claims and computes it.
fn run_node(
    backend: &Backend,
    build: impl FnOnce(*mut ggml_context) -> (*mut ggml_tensor, Vec<*mut ggml_tensor>),
    fill: impl FnOnce(&[*mut ggml_tensor]),
) -> (Tensors, *mut ggml_tensor) {
    let mut g = Tensors::new();
    let (out, inputs) = build(g.ctx);
    g.alloc(ggml_backend_buffer_usage::GGML_BACKEND_BUFFER_USAGE_COMPUTE);
    fill(&inputs);
    // SAFETY: a node of g's live context.
    assert!(unsafe { registry::supports_op(out) }, "SMEPilot declined {}", registry::tensor_name(out));
    assert_eq!(backend.compute(&g, out), ggml_status::GGML_STATUS_SUCCESS);
    (g, out)
}

/// llama.cpp's cache of type `ty` in SMEPilot's packed layout reads and writes like the same
/// cache in ggml's layout: byte ranges through get/set/memset at odd offsets, SET_ROWS of
/// whole rows, flash attention over llama.cpp's K/V views and the context shift (ROPE in
/// place, or for a quantized cache CAST, ROPE and CPY back) give the same bytes and results.
fn packed_kv_case(ty: sys::ggml_type) {
    // SAFETY: ggml's type table, for a valid type.
    let blck = unsafe { sys::ggml_blck_size(ty) } as usize;
    let (head, heads, kv, streams) = (if blck > 1 { 32 } else { 12 }, 3usize, 10usize, 2usize);
    let row = head * heads;
    // SAFETY: as above.
    let (head_bytes, row_bytes) = unsafe { (sys::ggml_row_size(ty, head as i64), sys::ggml_row_size(ty, row as i64)) };
    let backend = Backend::new();
    let mut pk = Tensors::new();
    let packed = kv_cache(&mut pk, ty, head, heads, kv, streams, kv_buffer::kv_buft(head));
    let mut st = Tensors::new();
    let standard = kv_cache(&mut st, ty, head, heads, kv, streams, registry::buft_ptr());
    // SAFETY: live tensors.
    let bytes = unsafe { sys::ggml_nbytes(packed) };
    assert!(matches!(unsafe { kv_buffer::storage(packed) }, kv_buffer::Storage::Packed { .. }));

    // Byte ranges: whole, then pieces at odd offsets crossing heads, rows and streams.
    let mut want: Vec<u8> = (0..bytes).map(|i| (i * 131 % 251) as u8).collect();
    set_bytes(packed, 0, &want);
    assert_eq!(get_bytes(packed, 0, bytes), want);
    for (off, len) in [(1, 5), (23, 100), (bytes / 2 - 7, 333), (bytes - 3, 3)] {
        let piece: Vec<u8> = (0..len).map(|i| (i * 7 + off) as u8).collect();
        set_bytes(packed, off, &piece);
        want[off..off + len].copy_from_slice(&piece);
        assert_eq!(get_bytes(packed, off + 1, len - 1), want[off + 1..off + len]);
    }
    // SAFETY: a range within the tensor.
    unsafe { sys::ggml_backend_tensor_memset(packed, 0x3c, 50, 77) };
    want[50..127].fill(0x3c);
    assert_eq!(get_bytes(packed, 0, bytes), want);

    // SET_ROWS into cells of both streams (llama.cpp reshapes the streams into one): first
    // every cell (real values for the graphs below), then 4 rows over them.
    for (n_tok, ids, seed) in [(kv * streams, (0..(kv * streams) as i64).rev().collect::<Vec<_>>(), 5), (4, vec![17, 3, 12, 0], 9)] {
        let src = noise(row * n_tok, seed);
        for cache in [packed, standard] {
            run_node(
                &backend,
                |ctx| unsafe {
                    // SAFETY: graph construction in a live context over a live cache tensor.
                    let rows = sys::ggml_new_tensor_2d(ctx, sys::ggml_type_GGML_TYPE_F32, row as i64, n_tok as i64);
                    let idx = sys::ggml_new_tensor_1d(ctx, sys::ggml_type_GGML_TYPE_I64, n_tok as i64);
                    let all = sys::ggml_reshape_2d(ctx, cache, row as i64, (kv * streams) as i64);
                    (sys::ggml_set_rows(ctx, all, rows, idx), vec![rows, idx])
                },
                |t| {
                    set(t[0], &src);
                    set(t[1], &ids);
                },
            );
        }
        assert_eq!(get_bytes(packed, 0, bytes), get_bytes(standard, 0, bytes), "SET_ROWS of {n_tok} rows");
    }
    let written = get_bytes(standard, 0, bytes);

    // Flash attention over llama.cpp's views of stream 1 (K and V the same cache here):
    // 6 query heads share the 3 KV heads, 2 queries, the first 7 cells.
    let (n_kv, n_q) = (7usize, 2usize);
    let q = noise(head * n_q * 2 * heads, 3);
    let attend = |cache: *mut ggml_tensor| -> Vec<f32> {
        let (_g, out) = run_node(
            &backend,
            |ctx| unsafe {
                // SAFETY: graph construction in a live context over a live cache tensor.
                let qt = sys::ggml_new_tensor_4d(ctx, sys::ggml_type_GGML_TYPE_F32, head as i64, n_q as i64, (2 * heads) as i64, 1);
                let view = sys::ggml_view_4d(ctx, cache, head as i64, heads as i64, n_kv as i64, 1, head_bytes, row_bytes, row_bytes * kv, row_bytes * kv);
                let k = sys::ggml_permute(ctx, view, 0, 2, 1, 3);
                (sys::ggml_flash_attn_ext(ctx, qt, k, k, null_mut(), 0.3, 0.0, 0.0), vec![qt])
            },
            |t| set(t[0], &q),
        );
        get_f32(out)
    };
    assert_eq!(attend(packed), attend(standard));

    // The context shift over every cell's heads, then the bytes compare.
    let shift: Vec<i32> = (0..(kv * streams) as i32).map(|i| i * 3 - 7).collect();
    for cache in [packed, standard] {
        run_node(
            &backend,
            |ctx| unsafe {
                // SAFETY: graph construction in a live context over a live cache tensor.
                let pos = sys::ggml_new_tensor_1d(ctx, sys::ggml_type_GGML_TYPE_I32, (kv * streams) as i64);
                let view = sys::ggml_view_3d(ctx, cache, head as i64, heads as i64, (kv * streams) as i64, head_bytes, row_bytes, 0);
                let rope = |x| sys::ggml_rope_ext(ctx, x, pos, null_mut(), head as i32, 2, 4096, 10000.0, 1.0, 0.0, 1.0, 32.0, 1.0);
                let out = if blck > 1 {
                    let f = sys::ggml_cast(ctx, view, sys::ggml_type_GGML_TYPE_F32);
                    sys::ggml_cpy(ctx, rope(f), view)
                } else {
                    sys::ggml_rope_ext_inplace(ctx, view, pos, null_mut(), head as i32, 2, 4096, 10000.0, 1.0, 0.0, 1.0, 32.0, 1.0)
                };
                (out, vec![pos])
            },
            |t| set(t[0], &shift),
        );
    }
    let shifted = get_bytes(standard, 0, bytes);
    assert_ne!(shifted, written, "the shift must change the keys");
    assert_eq!(get_bytes(packed, 0, bytes), shifted);

    // A node that reads whole rows of the packed cache (its first dimension crosses heads)
    // is declined: the scheduler then copies the rows out in ggml's layout.
    let g = Tensors::new();
    // SAFETY: graph construction in a live context over a live cache tensor.
    let out = unsafe {
        let rows = sys::ggml_view_2d(g.ctx, packed, row as i64, kv as i64, row_bytes, 0);
        sys::ggml_scale(g.ctx, rows, 2.0)
    };
    // SAFETY: a node of g's live context.
    assert!(!unsafe { registry::supports_op(out) });
}

#[test]
fn a_packed_kv_cache_reads_and_writes_like_ggmls_layout() {
    for ty in [
        sys::ggml_type_GGML_TYPE_F16,
        sys::ggml_type_GGML_TYPE_F32,
        sys::ggml_type_GGML_TYPE_BF16,
        sys::ggml_type_GGML_TYPE_Q8_0,
        sys::ggml_type_GGML_TYPE_Q4_0,
    ] {
        packed_kv_case(ty);
    }
}
