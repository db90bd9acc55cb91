//! A pool of core-pinned worker threads that sleep while idle.
//!
//! `run(f)` calls `f(ith)` once on each of `n` threads: the caller is thread 0, the
//! workers are 1..n. Between jobs workers block on a condition variable, so an idle
//! pool costs no CPU; within a job, threads meet at a spinning barrier.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use crate::platform::os as sys;

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
}

struct Shared {
    state: Mutex<State>,
    wake: Condvar,
    done: Condvar,
}

pub struct ThreadPool {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    barrier: Arc<SpinBarrier>,
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
            }),
            wake: Condvar::new(),
            done: Condvar::new(),
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
        ThreadPool {
            shared,
            workers,
            barrier: Arc::new(SpinBarrier::new(n)),
        }
    }

    pub fn n_threads(&self) -> usize {
        self.workers.len() + 1
    }

    pub fn barrier(&self) -> &SpinBarrier {
        &self.barrier
    }

    /// Calls `f(ith)` for every thread index and returns when all calls returned.
    pub fn run(&self, f: &(dyn Fn(usize) + Sync)) {
        if self.workers.is_empty() {
            f(0);
            return;
        }
        // SAFETY: erases the borrow's lifetime; this function waits below until
        // `pending` is 0, i.e. no worker holds or uses the pointer any more.
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
        f(0);
        let mut st = self.shared.state.lock().unwrap();
        while st.pending > 0 {
            st = self.shared.done.wait(st).unwrap();
        }
        st.job = None;
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
        f(ith);
        let mut st = shared.state.lock().unwrap();
        st.pending -= 1;
        if st.pending == 0 {
            shared.done.notify_one();
        }
    }
}

/// A sense-reversing barrier for the threads of one job: spins briefly, then yields.
pub struct SpinBarrier {
    n: usize,
    arrived: AtomicUsize,
    phase: AtomicUsize,
}

impl SpinBarrier {
    pub fn new(n: usize) -> SpinBarrier {
        SpinBarrier {
            n,
            arrived: AtomicUsize::new(0),
            phase: AtomicUsize::new(0),
        }
    }

    pub fn wait(&self) {
        if self.n == 1 {
            return;
        }
        let phase = self.phase.load(Ordering::Acquire);
        if self.arrived.fetch_add(1, Ordering::AcqRel) + 1 == self.n {
            self.arrived.store(0, Ordering::Relaxed);
            self.phase.store(phase.wrapping_add(1), Ordering::Release);
            return;
        }
        let mut spins = 0u32;
        while self.phase.load(Ordering::Acquire) == phase {
            if spins < 20_000 {
                std::hint::spin_loop();
                spins += 1;
            } else {
                std::thread::yield_now();
            }
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
                pool.barrier().wait();
                // After the barrier every thread must see all three increments.
                phase2_seen.fetch_add(hits.load(Ordering::SeqCst), Ordering::SeqCst);
                pool.barrier().wait();
            });
            assert_eq!(hits.load(Ordering::SeqCst), 3);
        }
        assert_eq!(phase2_seen.load(Ordering::SeqCst), 200 * 3 * 3);
    }
}
