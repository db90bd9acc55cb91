//! The graph executor: runs a list of nodes on the thread pool, one barrier after
//! each node, with one scratch area that grows only when a larger node arrives.

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::sync::atomic::{AtomicUsize, Ordering};

use super::ops::{self, Node, Op};
use super::threadpool::{SpinBarrier, ThreadPool};

/// What one thread sees while running a node.
pub struct ThreadCtx<'a> {
    pub ith: usize,
    pub nth: usize,
    barrier: &'a SpinBarrier,
    scratch: *mut u8,
    scratch_len: usize,
    chunks: &'a AtomicUsize,
}

impl ThreadCtx<'_> {
    /// The next chunk index of the node's shared work queue, counting from 0 across all
    /// threads, for work split dynamically (so a thread slowed down by its neighbour or the
    /// hypervisor does not leave the others waiting at the barrier). One queue per node.
    pub fn next_chunk(&self) -> usize {
        self.chunks.fetch_add(1, Ordering::Relaxed)
    }

    /// Waits until every thread of the pool has reached the same point.
    pub fn barrier(&self) {
        self.barrier.wait();
    }

    /// The node's scratch area (size from `ops::scratch_bytes`), shared by all
    /// threads; ops partition it so that threads write disjoint parts.
    pub fn scratch(&self) -> (*mut u8, usize) {
        (self.scratch, self.scratch_len)
    }
}

/// Counts of what the executor ran, for SMEPILOT_LOG.
#[derive(Default, Clone, Copy, Debug)]
pub struct Stats {
    pub graphs: u64,
    pub compute_nodes: u64,
    pub view_nodes: u64,
}

pub struct Executor {
    pool: ThreadPool,
    scratch: *mut u8,
    scratch_cap: usize,
    pub stats: Stats,
}

// SAFETY: the scratch pointer is owned by the executor and only handed to the pool's
// threads for the duration of `compute`.
unsafe impl Send for Executor {}

const SCRATCH_ALIGN: usize = 64;

impl Executor {
    pub fn new(n_threads: usize) -> Executor {
        Executor {
            pool: ThreadPool::new(n_threads),
            scratch: std::ptr::null_mut(),
            scratch_cap: 0,
            stats: Stats::default(),
        }
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

    /// Runs the nodes in order. Every node must have passed `ops::supports`.
    pub fn compute(&mut self, nodes: &[Node]) {
        let nth = self.pool.n_threads();
        let need = nodes
            .iter()
            .map(|n| ops::scratch_bytes(n, nth))
            .max()
            .unwrap_or(0);
        self.reserve_scratch(need.max(SCRATCH_ALIGN));
        let views = nodes.iter().filter(|n| matches!(n.op, Op::View)).count() as u64;
        self.stats.graphs += 1;
        self.stats.view_nodes += views;
        self.stats.compute_nodes += nodes.len() as u64 - views;

        let (scratch, scratch_len) = (self.scratch as usize, self.scratch_cap);
        let pool = &self.pool;
        // Chunk queues of alternate nodes: thread 0 resets the next node's queue while the
        // current node runs, after every thread has left the previous one (its barrier).
        let queues = [AtomicUsize::new(0), AtomicUsize::new(0)];
        pool.run(&|ith| {
            let mut ctx = ThreadCtx {
                ith,
                nth,
                barrier: pool.barrier(),
                scratch: scratch as *mut u8,
                scratch_len,
                chunks: &queues[0],
            };
            let compute = nodes.iter().filter(|n| !matches!(n.op, Op::View));
            for (i, node) in compute.enumerate() {
                ctx.chunks = &queues[i % 2];
                if ith == 0 {
                    queues[(i + 1) % 2].store(0, Ordering::Relaxed);
                }
                ops::run(node, &ctx);
                ctx.barrier();
            }
        });
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
