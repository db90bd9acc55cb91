//! A pool of core-pinned worker threads that sleep while idle.
//!
//! `run(f)` calls `f(ith)` once on each of `n` threads: the caller is thread 0, the
//! workers are 1..n. Between jobs workers block on a condition variable, so an idle
//! pool costs no CPU; within a job, threads meet at a spinning barrier.
//!
//! A panic in `f` on any thread is caught there: the barrier is aborted so that the
//! other threads stop waiting for a thread that will never arrive, and `run` returns the
//! panic's message. The host process (llama.cpp) keeps running and the pool stays usable.

use std::any::Any;
use std::cell::Cell;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use crate::kernels::KernelSet;
use crate::plan::Plan;
use crate::platform::os as sys;
use crate::tensor::Elem;

/// The job as the workers see it. Its lifetime is erased: `run` does not return
/// until every worker has finished calling it.
#[derive(Clone, Copy)]
struct JobPtr(*const (dyn Fn(usize) + Sync));
// SAFETY: the pointee is Sync and outlives every use (see `ThreadPool::run`).
unsafe impl Send for JobPtr {}

struct State {
    generation: u64,
    job: Option<JobPtr>,
    pending: usize,
    quit: bool,
    /// The first panic of the current job, as `run` reports it.
    failure: Option<String>,
}

struct Shared {
    state: Mutex<State>,
    wake: Condvar,
    done: Condvar,
    barrier: SpinBarrier,
}

/// The unwind payload of a thread leaving a job because another thread panicked (see
/// `ThreadCtx::barrier`): not a failure of its own, so `run` does not report it.
pub struct Released;

impl Shared {
    /// Calls `f(ith)`, catching a panic: the other threads are released from the
    /// barrier at once, and the panic's message is kept for `run` to return.
    fn call(&self, f: &(dyn Fn(usize) + Sync), ith: usize) {
        let Err(payload) = panic::catch_unwind(AssertUnwindSafe(|| f(ith))) else {
            return;
        };
        self.barrier.abort();
        if payload.is::<Released>() {
            return;
        }
        let msg = format!("SMEPilot thread {ith} panicked: {}", panic_message(&*payload));
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.failure.get_or_insert(msg);
    }
}

fn panic_message(payload: &(dyn Any + Send)) -> &str {
    if let Some(s) = payload.downcast_ref::<&str>() {
        s
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s
    } else {
        "(a panic without a message)"
    }
}

pub struct ThreadPool {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
}

impl ThreadPool {
    /// A pool of `n` threads in all (the caller included), workers pinned to the
    /// process's allowed CPUs starting from the second one.
    pub fn new(n: usize) -> ThreadPool {
        let n = n.max(1);
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                generation: 0,
                job: None,
                pending: 0,
                quit: false,
                failure: None,
            }),
            wake: Condvar::new(),
            done: Condvar::new(),
            barrier: SpinBarrier::new(n),
        });
        let cpus = sys::allowed_cpus();
        let workers = (1..n)
            .map(|ith| {
                let shared = shared.clone();
                let cpu = cpus.get(ith % cpus.len().max(1)).copied();
                std::thread::Builder::new()
                    .name(format!("smepilot-{ith}"))
                    .spawn(move || worker(shared, ith, cpu))
                    .expect("spawning a SMEPilot worker thread")
            })
            .collect();
        ThreadPool { shared, workers }
    }

    pub fn n_threads(&self) -> usize {
        self.workers.len() + 1
    }

    pub fn barrier(&self) -> &SpinBarrier {
        &self.shared.barrier
    }

    /// Calls `f(ith)` for every thread index and returns when all calls returned (or
    /// unwound). Err carries the message of the first panic, after which the threads
    /// still waiting at the barrier were released (`SpinBarrier::wait` returned false).
    pub fn run(&self, f: &(dyn Fn(usize) + Sync)) -> Result<(), String> {
        if self.workers.is_empty() {
            self.shared.call(f, 0);
            return self.finish();
        }
        // SAFETY: erases the borrow's lifetime; this function waits below until
        // `pending` is 0, i.e. no worker holds or uses the pointer any more. A panic in
        // `f` cannot skip that wait: every call of `f` is inside catch_unwind.
        let job = JobPtr(unsafe {
            std::mem::transmute::<*const (dyn Fn(usize) + Sync + '_), *const (dyn Fn(usize) + Sync)>(
                f,
            )
        });
        {
            let mut st = self.shared.state.lock().unwrap();
            st.job = Some(job);
            st.pending = self.workers.len();
            st.generation += 1;
        }
        self.shared.wake.notify_all();
        self.shared.call(f, 0);
        let mut st = self.shared.state.lock().unwrap();
        while st.pending > 0 {
            st = self.shared.done.wait(st).unwrap();
        }
        st.job = None;
        drop(st);
        self.finish()
    }

    /// After every thread has left the job: readies the barrier for the next job and
    /// reports this one's panic, if any.
    fn finish(&self) -> Result<(), String> {
        self.shared.barrier.reset();
        match self.shared.state.lock().unwrap().failure.take() {
            None => Ok(()),
            Some(msg) => Err(msg),
        }
    }
}

impl Drop for ThreadPool {
    fn drop(&mut self) {
        self.shared.state.lock().unwrap().quit = true;
        self.shared.wake.notify_all();
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

fn worker(shared: Arc<Shared>, ith: usize, cpu: Option<usize>) {
    if let Some(cpu) = cpu {
        sys::pin_current_thread(cpu);
    }
    let mut seen = 0u64;
    loop {
        let job = {
            let mut st = shared.state.lock().unwrap();
            while st.generation == seen && !st.quit {
                st = shared.wake.wait(st).unwrap();
            }
            if st.quit {
                return;
            }
            seen = st.generation;
            st.job.expect("a job is set with every new generation")
        };
        // SAFETY: `run` keeps the closure alive until this worker decrements `pending`.
        let f = unsafe { &*job.0 };
        shared.call(f, ith);
        let mut st = shared.state.lock().unwrap();
        st.pending -= 1;
        if st.pending == 0 {
            shared.done.notify_one();
        }
    }
}

/// A node's shared work queue. `next_chunk` counts up without bound (the op checks the
/// end); `take` hands out indices below a limit from either end, so two kinds of worker
/// can consume one range from opposite sides and meet wherever their speeds put them.
#[derive(Default)]
pub struct WorkQueue {
    front: AtomicUsize,
    back: AtomicUsize,
    taken: AtomicUsize,
}

impl WorkQueue {
    pub fn reset(&self) {
        self.front.store(0, Ordering::Relaxed);
        self.back.store(0, Ordering::Relaxed);
        self.taken.store(0, Ordering::Relaxed);
    }
}

/// What one thread sees while running a node.
pub struct ThreadCtx<'a> {
    pub ith: usize,
    pub nth: usize,
    barrier: &'a SpinBarrier,
    /// The graph's scratch (pointer, bytes): the executor's, valid while the graph runs.
    scratch: *mut u8,
    scratch_len: usize,
    /// Bytes of the scratch the current node reserved (`ops::scratch_bytes`).
    node_scratch: usize,
    /// A [`ThreadArea`] of this thread is live (one at a time).
    area_taken: Cell<bool>,
    queue: &'a WorkQueue,
    /// How this node runs (the planner's choice for matrix products).
    pub plan: Plan,
    /// The kernels every op of this graph runs on.
    pub kernels: &'static KernelSet,
    /// The current node's report slot (the executor's), if any.
    note: Option<&'a AtomicU64>,
}

impl<'a> ThreadCtx<'a> {
    /// Thread `ith` of `nth`, meeting the others at `barrier`, with the graph's `scratch`
    /// (pointer, bytes) and `kernels`; [`set_node`](Self::set_node) before each node.
    ///
    /// # Safety
    /// `scratch` is `scratch.1` bytes, 64-byte aligned, that only the threads of this job
    /// use, valid until the job ends (the executor's scratch during `compute`).
    pub unsafe fn new(ith: usize, nth: usize, barrier: &'a SpinBarrier, scratch: (*mut u8, usize), queue: &'a WorkQueue, kernels: &'static KernelSet) -> ThreadCtx<'a> {
        ThreadCtx { ith, nth, barrier, scratch: scratch.0, scratch_len: scratch.1, node_scratch: 0, area_taken: Cell::new(false), queue, plan: Plan::STATIC, kernels, note: None }
    }

    /// The next node's work queue, plan and reserved scratch bytes (at most the graph's).
    pub fn set_node(&mut self, queue: &'a WorkQueue, plan: Plan, scratch_bytes: usize) {
        assert!(scratch_bytes <= self.scratch_len, "SMEPilot: node reserves {scratch_bytes} bytes of a {}-byte scratch", self.scratch_len);
        self.queue = queue;
        self.plan = plan;
        self.node_scratch = scratch_bytes;
    }

    /// Where the current node's [`report`](Self::report) goes.
    pub fn set_note(&mut self, slot: &'a AtomicU64) {
        self.note = Some(slot);
    }

    /// A figure of this node's run for the trace (MUL_MAT_ID: its experts on the unit and
    /// on the vector kernels); the last report of the node counts.
    pub fn report(&self, v: u64) {
        if let Some(n) = self.note {
            n.store(v, Ordering::Relaxed);
        }
    }

    /// The barrier after a node: false if a thread panicked (the pool reports it) and the
    /// graph must stop here.
    pub fn wait(&self) -> bool {
        self.barrier.wait()
    }

    /// The next chunk index of the node's shared work queue, counting from 0 across all
    /// threads, for work split dynamically (so a thread slowed down by its neighbour or the
    /// hypervisor does not leave the others waiting at the barrier). One queue per node.
    pub fn next_chunk(&self) -> usize {
        self.queue.front.fetch_add(1, Ordering::Relaxed)
    }

    /// Starts the node's work queue again from 0, for an op that runs several phases of
    /// queued work (MUL_MAT_ID's rounds of experts on the matrix unit).
    ///
    /// # Contract
    /// One thread calls it, between two barriers at which no thread takes from the queue.
    pub fn restart_queue(&self) {
        self.queue.reset();
    }

    /// The next of `limit` indices, from the front (0, 1, ...) or the back (limit - 1,
    /// limit - 2, ...); None once all `limit` are taken. Do not mix with `next_chunk` in
    /// one node.
    pub fn take(&self, limit: usize, from_back: bool) -> Option<usize> {
        // Reserving a slot first bounds front + back takes by `limit`, so the two ends
        // never hand out the same index.
        if self.queue.taken.fetch_add(1, Ordering::Relaxed) >= limit {
            return None;
        }
        Some(if from_back {
            limit - 1 - self.queue.back.fetch_add(1, Ordering::Relaxed)
        } else {
            self.queue.front.fetch_add(1, Ordering::Relaxed)
        })
    }

    /// Waits until every thread of the pool has reached the same point. If another
    /// thread panicked instead, unwinds out of the op (the pool catches that and reports
    /// the panic): the threads are no longer in step, so the op must not go on.
    pub fn barrier(&self) {
        if !self.barrier.wait() {
            std::panic::resume_unwind(Box::new(Released));
        }
    }

    /// Pointer to `n` `T`s at byte `off` of the node's scratch, checked: within the bytes
    /// the node reserved, aligned for `T`.
    #[inline(always)]
    fn scratch_at<T: Elem>(&self, off: usize, n: usize) -> *mut T {
        crate::tensor::checked_ptr(self.scratch, self.node_scratch, off, n, "the node's scratch")
    }

    /// `n` `T`s at byte `off` of the node's shared scratch, for this thread to write: its own
    /// part of data the threads produce together before a [`barrier`](Self::barrier).
    ///
    /// # Contract
    /// The op's split gives these bytes to this thread alone until the next barrier (or
    /// until it hands them to another thread through a release store that thread acquires,
    /// [`wait_until`](Self::wait_until)), no other view of them lives meanwhile, and they lie
    /// outside every [`ThreadArea`] of the node. (Bounds and alignment are checked; a bad
    /// offset panics.)
    #[inline(always)]
    #[allow(clippy::mut_from_ref)]
    pub fn shared_mut<T: Elem>(&self, off: usize, n: usize) -> &mut [T] {
        let p = self.scratch_at::<T>(off, n);
        // SAFETY: `scratch_at` checked that the range lies within the node's reserved part of
        // the scratch (valid for the job, `new`'s contract) and is aligned; T is plain data
        // (any bytes are a valid T); by the contract above only this thread touches it now.
        unsafe { std::slice::from_raw_parts_mut(p, n) }
    }

    /// `n` counters at byte `off` of the node's shared scratch, for threads that hand work to
    /// each other within a node (a pipeline) instead of meeting at barriers.
    ///
    /// # Contract
    /// During the node these bytes are used only through this call, never as plain data.
    pub fn shared_counters(&self, off: usize, n: usize) -> &[AtomicU32] {
        let p = self.scratch_at::<u32>(off, n);
        // SAFETY: bounds and alignment checked (AtomicU32 has u32's size and alignment);
        // every bit pattern is a valid AtomicU32, and by the contract every access to these
        // bytes meanwhile is atomic.
        unsafe { std::slice::from_raw_parts(p as *const AtomicU32, n) }
    }

    /// Spins until `counter` reaches `target` (a partner's release store; acquires it). If
    /// a thread of the job panicked meanwhile, unwinds out of the op as `barrier` does: the
    /// partner may never store.
    pub fn wait_until(&self, counter: &AtomicU32, target: u32) {
        let mut spins = 0u32;
        while counter.load(Ordering::Acquire) < target {
            if self.barrier.aborted.load(Ordering::Acquire) {
                std::panic::resume_unwind(Box::new(Released));
            }
            if spins < 20_000 {
                std::hint::spin_loop();
                spins += 1;
            } else {
                std::thread::yield_now();
            }
        }
    }

    /// `n` `T`s at byte `off` of the node's shared scratch, to read: data the threads wrote
    /// (through [`shared_mut`](Self::shared_mut)) before a barrier this thread has passed.
    ///
    /// # Contract
    /// No thread writes these bytes until the next barrier (every thread only reads the
    /// shared data between the two).
    #[inline(always)]
    pub fn shared<T: Elem>(&self, off: usize, n: usize) -> &[T] {
        let p = self.scratch_at::<T>(off, n);
        // SAFETY: bounds and alignment checked as in `shared_mut`; by the contract above
        // nothing writes the range while the slice lives.
        unsafe { std::slice::from_raw_parts(p, n) }
    }

    /// This thread's private part of the node's scratch: the node reserves `per_thread`
    /// bytes per thread from byte `off` on, thread `ith` owns `off + ith * per_thread ..`.
    /// Typed slices are carved from it ([`ThreadArea::carve`]); one area per thread at a
    /// time (a second call while one lives panics). `per_thread` must be a multiple of 64
    /// for 64-byte aligned areas (the carving checks alignment per type).
    pub fn thread_area(&self, off: usize, per_thread: usize) -> ThreadArea<'_> {
        let end = per_thread.checked_mul(self.nth).and_then(|b| off.checked_add(b));
        assert!(
            end.is_some_and(|e| e <= self.node_scratch),
            "SMEPilot: {} thread areas of {per_thread} bytes at {off} past the node's {} bytes of scratch",
            self.nth,
            self.node_scratch
        );
        assert!(!self.area_taken.replace(true), "SMEPilot: a second thread area while one lives");
        ThreadArea {
            base: self.scratch.wrapping_add(off + self.ith * per_thread),
            len: per_thread,
            cursor: Cell::new(0),
            taken: &self.area_taken,
        }
    }
}

/// A thread's private part of a node's scratch (see [`ThreadCtx::thread_area`]): no other
/// thread touches it during the node, and the slices carved from it never overlap.
pub struct ThreadArea<'c> {
    base: *mut u8,
    len: usize,
    /// Bytes before this offset are carved already.
    cursor: Cell<usize>,
    taken: &'c Cell<bool>,
}

impl ThreadArea<'_> {
    /// `n` `T`s at byte `at` of the area, to use while the area lives. Carvings go forward:
    /// `at` must not fall before the end of the previous one, so no two slices overlap.
    /// Panics past the area's end or when `at` is not aligned for `T`.
    #[allow(clippy::mut_from_ref)]
    pub fn carve<T: Elem>(&self, at: usize, n: usize) -> &mut [T] {
        let end = n.checked_mul(size_of::<T>()).and_then(|b| at.checked_add(b));
        assert!(
            at >= self.cursor.get() && end.is_some_and(|e| e <= self.len),
            "SMEPilot: thread scratch {n} x {} bytes at {at} (carved up to {}, area of {})",
            size_of::<T>(),
            self.cursor.get(),
            self.len
        );
        let p = self.base.wrapping_add(at);
        assert!((p as usize).is_multiple_of(align_of::<T>()), "SMEPilot: thread scratch offset {at} not aligned for {}", std::any::type_name::<T>());
        self.cursor.set(end.unwrap());
        // SAFETY: within this thread's part of the node's reserved scratch (checked by
        // `thread_area` and above), which no other thread touches during the node; past every
        // slice carved before (the cursor), so no two live slices overlap; one area per thread
        // at a time (`taken`); aligned; T is plain data.
        unsafe { std::slice::from_raw_parts_mut(p as *mut T, n) }
    }
}

impl Drop for ThreadArea<'_> {
    fn drop(&mut self) {
        self.taken.set(false);
    }
}

/// A sense-reversing barrier for the threads of one job: spins briefly, then yields.
/// Once aborted (a thread of the job panicked), every wait returns false at once, until
/// `reset` after the job.
pub struct SpinBarrier {
    n: usize,
    arrived: AtomicUsize,
    phase: AtomicUsize,
    aborted: AtomicBool,
}

impl SpinBarrier {
    pub fn new(n: usize) -> SpinBarrier {
        SpinBarrier {
            n,
            arrived: AtomicUsize::new(0),
            phase: AtomicUsize::new(0),
            aborted: AtomicBool::new(false),
        }
    }

    /// Waits for all `n` threads; false if the barrier was aborted instead, and then the
    /// caller must leave the job (the threads are no longer in step).
    #[must_use]
    pub fn wait(&self) -> bool {
        if self.aborted.load(Ordering::Acquire) {
            return false;
        }
        if self.n == 1 {
            return true;
        }
        let phase = self.phase.load(Ordering::Acquire);
        if self.arrived.fetch_add(1, Ordering::AcqRel) + 1 == self.n {
            self.arrived.store(0, Ordering::Relaxed);
            self.phase.store(phase.wrapping_add(1), Ordering::Release);
            return true;
        }
        let mut spins = 0u32;
        while self.phase.load(Ordering::Acquire) == phase {
            if self.aborted.load(Ordering::Acquire) {
                // The last thread may have completed this barrier just before it panicked:
                // its phase store precedes its abort, so a changed phase is visible here,
                // and the barrier passed.
                return self.phase.load(Ordering::Acquire) != phase;
            }
            if spins < 20_000 {
                std::hint::spin_loop();
                spins += 1;
            } else {
                std::thread::yield_now();
            }
        }
        true
    }

    /// Releases every thread waiting now or later (until `reset`).
    fn abort(&self) {
        self.aborted.store(true, Ordering::Release);
    }

    /// Back to the state of a fresh barrier; only while no thread is inside `wait` (an
    /// aborted job leaves `arrived` counting threads that gave up).
    fn reset(&self) {
        self.arrived.store(0, Ordering::Relaxed);
        self.aborted.store(false, Ordering::Release);
    }
}

/// Runs `f` on another thread and fails if it has not returned within `secs`: a pool
/// stuck at its barrier fails the test instead of hanging the test run.
#[cfg(test)]
pub(crate) fn within(secs: u64, f: impl FnOnce() + Send + 'static) {
    let (tx, rx) = std::sync::mpsc::channel();
    let t = std::thread::spawn(move || {
        f();
        let _ = tx.send(());
    });
    match rx.recv_timeout(std::time::Duration::from_secs(secs)) {
        Ok(()) => t.join().unwrap(),
        // The sender was dropped without sending: `f` panicked; pass its panic on.
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
            std::panic::resume_unwind(t.join().unwrap_err())
        }
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
            panic!("still running after {secs} s (threads stuck at the barrier?)")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_thread_runs_once_per_job_and_barrier_orders_phases() {
        let pool = ThreadPool::new(3);
        let hits = AtomicUsize::new(0);
        let phase2_seen = AtomicUsize::new(0);
        for _ in 0..200 {
            hits.store(0, Ordering::SeqCst);
            pool.run(&|_ith| {
                hits.fetch_add(1, Ordering::SeqCst);
                assert!(pool.barrier().wait());
                // After the barrier every thread must see all three increments.
                phase2_seen.fetch_add(hits.load(Ordering::SeqCst), Ordering::SeqCst);
                assert!(pool.barrier().wait());
            })
            .unwrap();
            assert_eq!(hits.load(Ordering::SeqCst), 3);
        }
        assert_eq!(phase2_seen.load(Ordering::SeqCst), 200 * 3 * 3);
    }

    #[test]
    fn a_panic_releases_the_barrier_and_the_pool_runs_the_next_job() {
        within(60, || {
            for (n, culprit) in [(1, 0), (2, 1), (2, 0), (3, 2), (3, 1), (3, 0)] {
                let pool = ThreadPool::new(n);
                for round in 0..20 {
                    let released = AtomicUsize::new(0);
                    let after = AtomicUsize::new(0);
                    let r = pool.run(&|ith| {
                        assert!(pool.barrier().wait());
                        if ith == culprit {
                            panic!("injected failure on thread {ith}");
                        }
                        // The culprit never arrives: everyone else must be let go.
                        if !pool.barrier().wait() {
                            released.fetch_add(1, Ordering::SeqCst);
                            return;
                        }
                        after.fetch_add(1, Ordering::SeqCst);
                    });
                    let e = r.expect_err("the panic must be reported");
                    assert!(
                        e.contains(&format!("injected failure on thread {culprit}")),
                        "n={n} round {round}: {e}"
                    );
                    assert_eq!(released.load(Ordering::SeqCst), n - 1, "n={n}");
                    assert_eq!(after.load(Ordering::SeqCst), 0, "n={n}");

                    // The next job runs normally, through several barrier phases.
                    let hits = AtomicUsize::new(0);
                    let seen = AtomicUsize::new(0);
                    pool.run(&|_| {
                        for _ in 0..3 {
                            hits.fetch_add(1, Ordering::SeqCst);
                            assert!(pool.barrier().wait());
                            seen.fetch_add(hits.load(Ordering::SeqCst), Ordering::SeqCst);
                            assert!(pool.barrier().wait());
                        }
                    })
                    .unwrap_or_else(|e| panic!("n={n}: job after a panic failed: {e}"));
                    assert_eq!(hits.load(Ordering::SeqCst), 3 * n);
                    // Phase k sees k * n increments on each of the n threads.
                    assert_eq!(seen.load(Ordering::SeqCst), n * n * (1 + 2 + 3), "n={n}");
                }
            }
        });
    }

    #[test]
    fn a_thread_released_by_unwinding_is_not_reported_as_the_cause() {
        within(60, || {
            let pool = ThreadPool::new(3);
            let e = pool
                .run(&|ith| {
                    if ith == 1 {
                        panic!("the real cause");
                    }
                    if !pool.barrier().wait() {
                        // How ThreadCtx::barrier leaves an op.
                        std::panic::resume_unwind(Box::new(Released));
                    }
                })
                .unwrap_err();
            assert!(e.contains("thread 1") && e.contains("the real cause"), "{e}");
            pool.run(&|_| assert!(pool.barrier().wait())).unwrap();
        });
    }

    /// A thread waiting for its partner's counter (a pipeline's hand-over) is let go when
    /// the partner panics instead of storing: the job reports the partner's panic, nothing
    /// hangs, and the pool runs the next job.
    #[test]
    fn a_panic_releases_a_thread_waiting_on_a_counter() {
        within(60, || {
            for culprit in [0, 1] {
                let pool = ThreadPool::new(2);
                let (counter, queue) = (AtomicU32::new(0), WorkQueue::default());
                let e = pool
                    .run(&|ith| {
                        // SAFETY: a scratch of no bytes, never handed out.
                        let ctx = unsafe { ThreadCtx::new(ith, 2, pool.barrier(), (std::ptr::null_mut(), 0), &queue, crate::kernels::registry::active()) };
                        if ith == culprit {
                            panic!("the partner's failure");
                        }
                        ctx.wait_until(&counter, 1);
                    })
                    .unwrap_err();
                assert!(e.contains(&format!("thread {culprit}")) && e.contains("the partner's failure"), "{e}");
                pool.run(&|_| assert!(pool.barrier().wait())).unwrap();
            }
        });
    }
}
