//! The graph executor: runs a list of nodes on the thread pool, one barrier after
//! each node, with one scratch area that grows only when a larger node arrives.

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use super::kernels::registry::{self, KernelSet};
use super::ops::{self, fuse, Node, Op};
use super::planner::adapt::{Decision, Planner};
use super::plan::MatShape;
use super::trace::{self, GraphSummary, OpRecord};
use super::plan::{Mode, Plan};
use super::threadpool::{ThreadCtx, ThreadPool, WorkQueue};

/// Counts of what the executor ran, for SMEPILOT_LOG.
#[derive(Default, Clone, Copy, Debug)]
pub struct Stats {
    pub graphs: u64,
    pub compute_nodes: u64,
    pub view_nodes: u64,
}

pub struct Executor {
    pool: ThreadPool,
    kernels: &'static KernelSet,
    scratch: *mut u8,
    scratch_cap: usize,
    pub stats: Stats,
    planner: Option<Planner>,
    trace: bool,
    /// Per node of the current graph: its plan, and the planner's shape and decision for
    /// planned matrix products (reused between graphs).
    plans: Vec<Plan>,
    decisions: Vec<Option<(MatShape, Decision)>>,
    /// Per shape, how many nodes of it the current graph has had planned so far.
    occurrences: std::collections::HashMap<MatShape, usize>,
    /// Per node: nanoseconds thread 0 measured from its start to the barrier after it.
    times: Vec<AtomicU64>,
    /// Per node, what the op reported of its run (`ThreadCtx::report`), for the trace.
    notes: Vec<AtomicU64>,
    /// Whether nodes may run as one pass (`ops::fuse`), and how the current graph's do.
    fuse: bool,
    steps: Vec<fuse::Step>,
}

// SAFETY: the scratch pointer is owned by the executor and only handed to the pool's
// threads for the duration of `compute`.
unsafe impl Send for Executor {}

const SCRATCH_ALIGN: usize = 64;

impl Executor {
    /// An executor on the process's kernel set ([`registry::active`]).
    pub fn new(n_threads: usize) -> Executor {
        Executor::with_kernels(n_threads, registry::active())
    }

    /// An executor whose ops run on `kernels` (tests run each tier this way).
    pub fn with_kernels(n_threads: usize, kernels: &'static KernelSet) -> Executor {
        Executor {
            pool: ThreadPool::new(n_threads),
            kernels,
            scratch: std::ptr::null_mut(),
            scratch_cap: 0,
            stats: Stats::default(),
            planner: None,
            trace: false,
            plans: Vec::new(),
            decisions: Vec::new(),
            occurrences: std::collections::HashMap::new(),
            times: Vec::new(),
            notes: Vec::new(),
            fuse: crate::config::get().map_or(true, |c| c.fuse),
            steps: Vec::new(),
        }
    }

    /// Whether nodes may run as one pass where the graph allows (default: SMEPILOT_FUSE).
    pub fn set_fusion(&mut self, on: bool) {
        self.fuse = on;
    }

    /// An executor whose matrix products run as `planner` decides; with `trace`, one line
    /// per op and a summary per graph go to stderr.
    pub fn with_planner(n_threads: usize, planner: Planner, trace: bool) -> Executor {
        let mut e = Executor::new(n_threads);
        e.planner = Some(planner);
        e.trace = trace;
        e
    }

    pub fn planner(&self) -> Option<&Planner> {
        self.planner.as_ref()
    }

    pub fn n_threads(&self) -> usize {
        self.pool.n_threads()
    }

    /// Changes the thread count (the pool is rebuilt, so call it between graphs).
    pub fn set_n_threads(&mut self, n: usize) {
        let n = n.max(1);
        if n != self.pool.n_threads() {
            self.pool = ThreadPool::new(n);
        }
    }

    fn reserve_scratch(&mut self, bytes: usize) {
        if bytes <= self.scratch_cap {
            return;
        }
        let cap = bytes.next_power_of_two();
        if !self.scratch.is_null() {
            // SAFETY: allocated below with exactly this layout.
            unsafe {
                dealloc(
                    self.scratch,
                    Layout::from_size_align(self.scratch_cap, SCRATCH_ALIGN).unwrap(),
                )
            };
        }
        // SAFETY: cap > 0 and the alignment is a power of two.
        self.scratch =
            unsafe { alloc_zeroed(Layout::from_size_align(cap, SCRATCH_ALIGN).unwrap()) };
        assert!(
            !self.scratch.is_null(),
            "SMEPilot: out of memory for {cap} bytes of scratch"
        );
        self.scratch_cap = cap;
    }

    /// Runs the nodes in order. Every node must have passed `ops::supports`. Err carries
    /// the message of a panic on one of the threads; the nodes after it did not run, and
    /// the executor is ready for the next graph.
    pub fn compute(&mut self, nodes: &[Node]) -> Result<(), String> {
        let (nth, kernels) = (self.pool.n_threads(), self.kernels);
        self.plans.clear();
        self.decisions.clear();
        self.occurrences.clear();
        for node in nodes {
            if let (Some(p), Some(s)) = (self.planner.as_mut(), ops::expert_shape(node, nth, kernels)) {
                self.plans.push(p.expert_plan(&s));
                self.decisions.push(None);
                continue;
            }
            let occurrences = &mut self.occurrences;
            let planned = self.planner.as_mut().and_then(|p| {
                let s = ops::mat_shape(node, nth, kernels)?;
                let seen = occurrences.entry(s).or_insert(0);
                *seen += 1;
                Some((s, p.decide_nth(&s, *seen - 1)))
            });
            self.plans.push(planned.map_or(Plan::STATIC, |(_, d)| d.plan));
            self.decisions.push(planned);
        }
        let plans = std::mem::take(&mut self.plans);
        let ran = self.run(nodes, &plans);
        self.plans = plans;
        // A failed graph's times are partial: the planner does not learn from them.
        ran?;
        self.feed_back(nodes);
        Ok(())
    }

    /// Runs the nodes with the given plans (one per node), bypassing the planner: for
    /// calibration and for tests of each mode.
    pub fn compute_with_plans(&mut self, nodes: &[Node], plans: &[Plan]) -> Result<(), String> {
        assert_eq!(nodes.len(), plans.len());
        self.run(nodes, plans)
    }

    fn run(&mut self, nodes: &[Node], plans: &[Plan]) -> Result<(), String> {
        let nth = self.pool.n_threads();
        self.steps = if self.fuse { fuse::steps(nodes) } else { vec![fuse::Step::Alone; nodes.len()] };
        let mut node_scratch: Vec<usize> = nodes.iter().map(|n| ops::scratch_bytes(n, nth, self.kernels)).collect();
        for (i, step) in self.steps.iter().enumerate() {
            if let fuse::Step::GateUp { silu_in, mul_in, .. } = *step {
                node_scratch[i] = node_scratch[silu_in].max(node_scratch[mul_in]);
            }
        }
        let need = node_scratch.iter().copied().max().unwrap_or(0);
        self.reserve_scratch(need.max(SCRATCH_ALIGN));
        let views = nodes.iter().filter(|n| matches!(n.op, Op::View)).count() as u64;
        self.stats.graphs += 1;
        self.stats.view_nodes += views;
        self.stats.compute_nodes += nodes.len() as u64 - views;
        if self.times.len() < nodes.len() {
            self.times.resize_with(nodes.len(), AtomicU64::default);
            self.notes.resize_with(nodes.len(), AtomicU64::default);
        }

        let (scratch, scratch_len) = (self.scratch as usize, self.scratch_cap);
        let (pool, times, notes, kernels, steps) = (&self.pool, &self.times, &self.notes, self.kernels, &self.steps);
        // Work queues of alternate nodes: thread 0 resets the next node's queue while the
        // current node runs, after every thread has left the previous one (its barrier).
        let queues = [WorkQueue::default(), WorkQueue::default()];
        pool.run(&|ith| {
            // SAFETY: the executor's scratch, `scratch_len` bytes aligned to SCRATCH_ALIGN, is
            // used only by this job's threads and outlives it (`reserve_scratch` runs between
            // graphs, never during one).
            let mut ctx = unsafe { ThreadCtx::new(ith, nth, pool.barrier(), (scratch as *mut u8, scratch_len), &queues[0], kernels) };
            let mut q = 0;
            for (i, node) in nodes.iter().enumerate() {
                if matches!(node.op, Op::View) || matches!(steps[i], fuse::Step::InPass { .. }) {
                    continue;
                }
                // A pass's nodes need the same scratch (two MUL_MAT_ID nodes of one shape).
                ctx.set_node(&queues[q % 2], plans[i], node_scratch[i]);
                ctx.set_note(&notes[i]);
                let t0 = (ith == 0).then(Instant::now);
                if ith == 0 {
                    queues[(q + 1) % 2].reset();
                }
                match steps[i] {
                    fuse::Step::Alone => ops::run(node, &ctx),
                    step => fuse::run(nodes, step, &ctx),
                }
                if !ctx.wait() {
                    return; // a thread panicked (the pool reports it): stop the graph here
                }
                if let Some(t0) = t0 {
                    times[i].store(t0.elapsed().as_nanos() as u64, Ordering::Relaxed);
                }
                q += 1;
            }
        })
    }

    /// What node i of the last graph reported of its run (`ThreadCtx::report`).
    #[cfg(test)]
    pub fn report_of(&self, i: usize) -> u64 {
        self.notes[i].load(Ordering::Relaxed)
    }

    /// Measured times back to the planner, and the trace.
    fn feed_back(&mut self, nodes: &[Node]) {
        let nth = self.pool.n_threads();
        let Some(planner) = self.planner.as_mut() else { return };
        let mut summary = GraphSummary::default();
        let mut ops_run = 0;
        for (i, node) in nodes.iter().enumerate() {
            if matches!(node.op, Op::View) {
                continue;
            }
            let step = self.steps.get(i).copied().unwrap_or(fuse::Step::Alone);
            if let fuse::Step::InPass { .. } = step {
                if self.trace {
                    eprintln!("{}", trace::in_pass_line(node));
                }
                continue;
            }
            let secs = self.times[i].load(Ordering::Relaxed) as f64 * 1e-9;
            let decided = self.decisions[i];
            if let Some((s, d)) = decided {
                planner.record(&s, d.mode, secs);
            }
            if self.trace {
                let plan = self.plans.get(i).copied().unwrap_or(Plan::STATIC);
                let (mode, predicted, estimate, drivers) = match decided {
                    Some((_, d)) => (d.mode, d.predicted, d.estimate, d.plan.matrix_threads),
                    None => {
                        let (class, p) = match step {
                            fuse::Step::GateUp { silu_in, mul_in, glu } => ("MUL_MAT_ID+SWIGLU", [silu_in, mul_in, glu].iter().map(|&j| trace::predict_node(planner.profile(), &nodes[j], nth)).sum()),
                            _ => (node.op.name(), trace::predict_node(planner.profile(), node, nth)),
                        };
                        (plan.mode.unwrap_or(Mode::Vector), p, planner.observe_other(class, p, secs), plan.matrix_threads)
                    }
                };
                let r = OpRecord { node, mode, predicted, estimate, measured: secs, drivers };
                let mut line = trace::op_line(&r, decided.as_ref().map(|(s, _)| s));
                if matches!(node.op, Op::MulMatId) {
                    line.push_str(&trace::experts_note(&plan, self.notes[i].load(Ordering::Relaxed)));
                }
                if let fuse::Step::GateUp { .. } = step {
                    line.push_str(" pass=gate+up+swiglu");
                }
                if matches!(node.op, Op::FlashAttn { .. }) {
                    if crate::ops::attention::takes_tile_path(node, self.kernels) {
                        line.push_str(" products=tiles");
                    }
                    line.push_str(&crate::ops::attention::trace_note(self.notes[i].load(Ordering::Relaxed)));
                }
                eprintln!("{line}");
                summary.add(&r);
                ops_run += 1;
            }
        }
        if self.trace && ops_run > 0 {
            eprintln!("{}", summary.line(ops_run));
        }
    }
}

impl Drop for Executor {
    fn drop(&mut self) {
        if !self.scratch.is_null() {
            // SAFETY: allocated in reserve_scratch with this layout.
            unsafe {
                dealloc(
                    self.scratch,
                    Layout::from_size_align(self.scratch_cap, SCRATCH_ALIGN).unwrap(),
                )
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dtype::DType;
    use crate::tensor::TensorRef;

    /// 64-byte aligned f32 / i32 storage.
    #[repr(C, align(64))]
    #[derive(Clone, Copy)]
    struct Line([u32; 16]);

    fn storage(words: usize) -> Vec<Line> {
        vec![Line([0; 16]); words.div_ceil(16)]
    }

    fn tensor(ty: DType, ne0: usize, ne1: usize, mem: &mut [Line]) -> TensorRef {
        let row = ty.row_bytes(ne0);
        TensorRef {
            ty,
            ne: [ne0, ne1, 1, 1],
            nb: [ty.block_bytes(), row, row * ne1, row * ne1],
            data: mem.as_mut_ptr() as *mut u8,
            len: std::mem::size_of_val(mem),
            packed: None,
        }
    }

    fn words(mem: &[Line], n: usize) -> Vec<u32> {
        mem.iter().flat_map(|l| l.0).take(n).collect()
    }

    /// GET_ROWS asserts that its row ids are in range: an id out of range panics on the
    /// thread whose share of rows holds it. That panic must come back as an error (not
    /// hang the other threads at the node's barrier), the next node must not run, and
    /// the executor must run the next graph correctly.
    #[test]
    fn a_panicking_op_fails_the_graph_and_the_next_graph_runs() {
        crate::threadpool::within(120, || {
            for nth in [2, 3] {
                // 2 rows per thread: row r is handled by thread r / 2.
                let (cols, rows, table_rows) = (8, 2 * nth, 5);
                for culprit in (0..nth).rev() {
                    let mut table = storage(cols * table_rows);
                    let mut ids = storage(rows);
                    let mut got = storage(cols * rows);
                    let mut x = storage(cols * rows);
                    let mut scaled = storage(cols * rows);
                    for i in 0..cols * table_rows {
                        table[i / 16].0[i % 16] = (i as f32).to_bits();
                    }
                    for i in 0..cols * rows {
                        x[i / 16].0[i % 16] = (i as f32 + 0.5).to_bits();
                    }
                    for r in 0..rows {
                        ids[0].0[r] = (r % table_rows) as u32;
                    }
                    ids[0].0[2 * culprit + 1] = 1000; // out of range
                    let t_table = tensor(DType::F32, cols, table_rows, &mut table);
                    let t_ids = tensor(DType::I32, rows, 1, &mut ids);
                    let t_got = tensor(DType::F32, cols, rows, &mut got);
                    let t_x = tensor(DType::F32, cols, rows, &mut x);
                    let t_scaled = tensor(DType::F32, cols, rows, &mut scaled);
                    let mut src = [None; 5];
                    src[0] = Some(t_table);
                    src[1] = Some(t_ids);
                    let get = Node { op: Op::GetRows, dst: t_got, src };
                    let mut src = [None; 5];
                    src[0] = Some(t_x);
                    let scale = Node { op: Op::Scale { scale: 2.0, bias: 0.0 }, dst: t_scaled, src };
                    let graph = [get, scale];
                    for n in &graph {
                        ops::supports(n).unwrap();
                    }

                    let mut exec = Executor::new(nth);
                    let e = exec.compute(&graph).expect_err("an out-of-range row id must fail");
                    assert!(
                        e.contains("out of range") && e.contains(&format!("thread {culprit}")),
                        "nth={nth}: {e}"
                    );
                    assert!(
                        words(&scaled, cols * rows).iter().all(|&w| w == 0),
                        "nth={nth}, culprit {culprit}: the node after the failed one ran"
                    );

                    ids[0].0[2 * culprit + 1] = 0;
                    exec.compute(&graph).unwrap();
                    let got = words(&got, cols * rows);
                    for r in 0..rows {
                        let want = if r == 2 * culprit + 1 { 0 } else { r % table_rows };
                        for c in 0..cols {
                            assert_eq!(f32::from_bits(got[r * cols + c]), (want * cols + c) as f32);
                        }
                    }
                    for (i, w) in words(&scaled, cols * rows).into_iter().enumerate() {
                        assert_eq!(f32::from_bits(w), 2.0 * (i as f32 + 0.5));
                    }
                }
            }
        });
    }
}
