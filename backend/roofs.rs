//! Measured roofs of this machine: the tile unit's peak per type and the DRAM read
//! bandwidth, each run on `threads` threads at once (one per core, pinned).
//! Used by the benchmarks to place a kernel against the roof (and by the planner later).

use std::time::Instant;

/// Runs `f(thread index)` on `threads` pinned threads at once; returns the wall time of the
/// slowest together with the sum of their results.
fn on_threads(threads: usize, f: impl Fn(usize) -> f64 + Sync) -> (f64, f64) {
    let cpus = crate::ffi::os::allowed_cpus();
    let barrier = std::sync::Barrier::new(threads);
    let t0 = std::sync::Mutex::new(None::<Instant>);
    let total = std::thread::scope(|s| {
        let hs: Vec<_> = (0..threads)
            .map(|i| {
                let (f, barrier, t0, cpus) = (&f, &barrier, &t0, &cpus);
                s.spawn(move || {
                    crate::ffi::os::pin_current_thread(cpus[i % cpus.len()]);
                    if barrier.wait().is_leader() {
                        *t0.lock().unwrap() = Some(Instant::now());
                    }
                    f(i)
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).sum::<f64>()
    });
    let start = t0.lock().unwrap().unwrap();
    (start.elapsed().as_secs_f64(), total)
}

/// DRAM read bandwidth in bytes/s: `threads` threads each sum their own 256 MiB buffer
/// (far beyond the last-level cache), best of 3 passes.
pub fn dram_read_bw(threads: usize) -> f64 {
    const BYTES: usize = 256 << 20;
    let bufs: Vec<Vec<u64>> = (0..threads).map(|i| vec![i as u64 + 1; BYTES / 8]).collect();
    let mut best = 0f64;
    for _ in 0..3 {
        let (secs, _) = on_threads(threads, |i| {
            // Eight independent lanes so the sum is load-bound, not add-latency-bound.
            let mut acc = [0u64; 8];
            for c in bufs[i].chunks_exact(8) {
                for j in 0..8 {
                    acc[j] = acc[j].wrapping_add(c[j]);
                }
            }
            std::hint::black_box(acc);
            0.0
        });
        best = best.max((threads * BYTES) as f64 / secs);
    }
    best
}

/// Peak of the AMX tile unit in ops/s (2 per multiply-add) on `threads` cores, for int8
/// (`bf16 == false`, TDPBSSD) or bf16 (TDPBF16PS), with full 64-byte tiles; `None` without
/// a usable tile unit.
#[cfg(target_arch = "x86_64")]
pub fn amx_peak(threads: usize, bf16: bool) -> Option<f64> {
    amx_rate(threads, bf16, 64)
}

/// As [`amx_peak`] with A tiles of `kbytes` bytes per row (K = kbytes int8 or kbytes / 2
/// bf16) and B tiles of kbytes / 4 rows: what shorter products cost on this tile unit.
#[cfg(target_arch = "x86_64")]
pub fn amx_rate(threads: usize, bf16: bool, kbytes: usize) -> Option<f64> {
    use crate::backend::kernels::amx::{self, tile};
    assert!(kbytes.is_multiple_of(4) && (4..=64).contains(&kbytes));
    if !amx::available() {
        return None;
    }
    const ITERS: usize = 2_000_000;
    let (secs, _) = on_threads(threads, |_| {
        let cfg = (0..4).fold(tile::TileConfig::new(), |c, t| c.with(t, 16, 64));
        let cfg = (4..6).fold(cfg, |c, t| c.with(t, 16, kbytes));
        let cfg = (6..8).fold(cfg, |c, t| c.with(t, kbytes / 4, 64));
        let src = [1u8; 1024];
        // SAFETY: amx::available() holds; the configuration shapes C tiles 16 x 64, A tiles
        // 16 x kbytes and B tiles kbytes/4 x 64, which makes every product below valid; `src`
        // holds 16 rows of 64 bytes.
        unsafe {
            cfg.load();
            tile::load::<4>(src.as_ptr(), 64);
            tile::load::<5>(src.as_ptr(), 64);
            tile::load::<6>(src.as_ptr(), 64);
            tile::load::<7>(src.as_ptr(), 64);
            for _ in 0..ITERS {
                if bf16 {
                    tile::dpbf16ps::<0, 4, 6>();
                    tile::dpbf16ps::<1, 4, 7>();
                    tile::dpbf16ps::<2, 5, 6>();
                    tile::dpbf16ps::<3, 5, 7>();
                } else {
                    tile::dpbssd::<0, 4, 6>();
                    tile::dpbssd::<1, 4, 7>();
                    tile::dpbssd::<2, 5, 6>();
                    tile::dpbssd::<3, 5, 7>();
                }
            }
            let mut out = [0u8; 1024];
            tile::store::<0>(out.as_mut_ptr(), 64);
            std::hint::black_box(out);
            tile::release();
        }
        0.0
    });
    let k = if bf16 { kbytes as f64 / 2.0 } else { kbytes as f64 };
    let ops = threads as f64 * ITERS as f64 * 4.0 * 16.0 * 16.0 * k * 2.0;
    Some(ops / secs)
}
