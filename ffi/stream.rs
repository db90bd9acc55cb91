//! The backend (ggml's "stream"): graph_compute translates a ggml graph into engine
//! nodes and runs them on SMEPilot's executor.

use std::ffi::c_void;
use std::os::raw::{c_char, c_int};

use super::{convert, guard};
use super::sys::{
    self, ggml_backend, ggml_backend_dev_t, ggml_backend_i, ggml_backend_t, ggml_cgraph, ggml_guid,
    ggml_status,
};
use smepilot_engine::config;
use smepilot_engine::exec::Executor;
use smepilot_engine::ops::{self, Node};

static GUID: ggml_guid = *b"SMEPilot-backend";

struct StreamCtx {
    exec: Executor,
    /// Reused between graphs so translating a graph does not allocate.
    nodes: Vec<Node>,
}

/// # Safety
/// `device` is SMEPilot's device. Called from `dev_init_backend`, which guards panics.
pub unsafe fn new_backend(device: ggml_backend_dev_t) -> ggml_backend_t {
    let cfg = match config::get() {
        Ok(c) => c,
        Err(_) => return std::ptr::null_mut(),
    };
    let threads = cfg
        .threads
        .unwrap_or_else(|| smepilot_engine::platform::os::allowed_cpus().len());
    let profile = smepilot_engine::calibrate::shared_profile();
    let planner = smepilot_engine::planner::adapt::Planner::new(profile.clone(), cfg.mode);
    let ctx = Box::new(StreamCtx {
        exec: Executor::with_planner(threads, planner, cfg.trace),
        nodes: Vec::new(),
    });
    let backend = Box::new(ggml_backend {
        guid: &GUID as *const ggml_guid as *mut ggml_guid,
        iface: BACKEND_IFACE,
        device,
        context: Box::into_raw(ctx) as *mut c_void,
    });
    Box::into_raw(backend)
}

/// # Safety
/// `backend` was created by `new_backend`.
unsafe fn ctx<'a>(backend: ggml_backend_t) -> &'a mut StreamCtx {
    &mut *((*backend).context as *mut StreamCtx)
}

/// Exposed through get_proc_address("ggml_backend_set_n_threads"), so `-t` works.
pub unsafe extern "C" fn set_n_threads(backend: ggml_backend_t, n_threads: c_int) {
    guard("set_n_threads", (), || {
        if backend.is_null() || !std::ptr::eq((*backend).guid as *const ggml_guid, &GUID) {
            return; // not one of ours
        }
        ctx(backend).exec.set_n_threads(n_threads.max(1) as usize);
    })
}

unsafe extern "C" fn get_name(_: ggml_backend_t) -> *const c_char {
    c"SMEPILOT".as_ptr()
}

unsafe extern "C" fn free(backend: ggml_backend_t) {
    guard("backend free", (), || free_backend(backend))
}

unsafe fn free_backend(backend: ggml_backend_t) {
    let ctx = Box::from_raw((*backend).context as *mut StreamCtx);
    let s = ctx.exec.stats;
    if s.graphs > 0 {
        smepilot_engine::smelog!(
            Info,
            "ran {} graph(s): {} nodes computed by SMEPilot, {} view nodes, with {} threads",
            s.graphs,
            s.compute_nodes,
            s.view_nodes,
            ctx.exec.n_threads()
        );
    }
    drop(ctx);
    drop(Box::from_raw(backend));
}

unsafe extern "C" fn graph_compute(
    backend: ggml_backend_t,
    cgraph: *mut ggml_cgraph,
) -> ggml_status {
    guard("graph_compute", ggml_status::GGML_STATUS_FAILED, || {
        compute_graph(backend, cgraph)
    })
}

unsafe fn compute_graph(backend: ggml_backend_t, cgraph: *mut ggml_cgraph) -> ggml_status {
    let ctx = ctx(backend);
    ctx.nodes.clear();
    let n = sys::ggml_graph_n_nodes(cgraph);
    for i in 0..n {
        let t = sys::ggml_graph_node(cgraph, i);
        if matches!((*t).op, sys::ggml_op::GGML_OP_MUL_MAT | sys::ggml_op::GGML_OP_MUL_MAT_ID) && !(*t).src[0].is_null() {
            super::buffer::ensure_packed((*t).src[0]);
        }
        match convert::node(t).and_then(|node| ops::supports(&node).map(|_| node)) {
            Ok(node) => ctx.nodes.push(node),
            Err(why) => {
                // The scheduler only hands us nodes we accepted in supports_op; anything
                // else is a bug on our side, reported rather than computed wrongly.
                smepilot_engine::smelog!(
                    Error,
                    "graph node {} ({}) cannot run here: {why}",
                    i,
                    convert::op_name(t)
                );
                return ggml_status::GGML_STATUS_FAILED;
            }
        }
    }
    if config::log_enabled(config::LogLevel::Debug) && n > 0 {
        let (first, last) = (
            sys::ggml_graph_node(cgraph, 0),
            sys::ggml_graph_node(cgraph, n - 1),
        );
        smepilot_engine::smelog!(
            Debug,
            "graph_compute: {n} nodes, from {} ({}) to {} ({})",
            super::registry::tensor_name(first),
            convert::op_name(first),
            super::registry::tensor_name(last),
            convert::op_name(last)
        );
    }
    match ctx.exec.compute(&ctx.nodes) {
        Ok(()) => ggml_status::GGML_STATUS_SUCCESS,
        Err(e) => {
            // The executor is ready for the next graph; this one's outputs are incomplete.
            smepilot_engine::smelog!(Error, "graph_compute failed ({n} nodes): {e}");
            ggml_status::GGML_STATUS_FAILED
        }
    }
}

const BACKEND_IFACE: ggml_backend_i = ggml_backend_i {
    get_name: Some(get_name),
    free: Some(free),
    set_tensor_async: None,
    get_tensor_async: None,
    set_tensor_2d_async: None,
    get_tensor_2d_async: None,
    cpy_tensor_async: None,
    synchronize: None,
    graph_plan_create: None,
    graph_plan_free: None,
    graph_plan_update: None,
    graph_plan_compute: None,
    graph_compute: Some(graph_compute),
    event_record: None,
    event_wait: None,
    graph_optimize: None,
};
