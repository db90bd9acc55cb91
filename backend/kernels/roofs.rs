//! Measured roofs of this machine: the tile unit's peak per type and the DRAM read
//! bandwidth, each run on `threads` threads at once (one per core, pinned).
//! Used by the benchmarks to place a kernel against the roof and by the calibration.

use std::time::Instant;

/// Runs `f(thread index)` on `threads` pinned threads at once; returns the wall time of the
/// slowest together with the sum of their results.
fn on_threads(threads: usize, f: impl Fn(usize) -> f64 + Sync) -> (f64, f64) {
    let cpus = crate::platform::os::allowed_cpus();
    let barrier = std::sync::Barrier::new(threads);
    let t0 = std::sync::Mutex::new(None::<Instant>);
    let total = std::thread::scope(|s| {
        let hs: Vec<_> = (0..threads)
            .map(|i| {
                let (f, barrier, t0, cpus) = (&f, &barrier, &t0, &cpus);
                s.spawn(move || {
                    crate::platform::os::pin_current_thread(cpus[i % cpus.len()]);
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
    dram_read_bw_sized(threads, 256 << 20, 3)
}

/// Streams read side by side by [`read_all`], as the decode kernels read four weight groups.
const STREAMS: usize = 4;
/// Bytes ahead of each stream to prefetch (as the decode kernels do).
const AHEAD: usize = 2048;

/// Sums `buf` with eight independent lanes, so the loop is load-bound, not add-bound, over
/// [`STREAMS`] quarters read side by side with software prefetch ahead of each: the access
/// pattern of SMEPilot's GEMVs, so the roof is what a kernel can reach (one sequential
/// stream leaves DRAM idle here: the GEMVs measured 20-60% above it).
fn read_all(buf: &[u64]) {
    let mut acc = [0u64; 8];
    let part = buf.len() / STREAMS / 8 * 8;
    let parts: [&[u64]; STREAMS] = std::array::from_fn(|i| &buf[i * part..(i + 1) * part]);
    for line in (0..part).step_by(8) {
        for p in &parts {
            prefetch(p.as_ptr().wrapping_add(line + AHEAD / 8));
            for j in 0..8 {
                acc[j] = acc[j].wrapping_add(p[line + j]);
            }
        }
    }
    for &v in &buf[STREAMS * part..] {
        acc[0] = acc[0].wrapping_add(v);
    }
    std::hint::black_box(acc);
}

/// A hint to fetch the line at `p` (which may lie past the buffer: prefetches never fault).
#[inline(always)]
fn prefetch(p: *const u64) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is a hint; it reads nothing architecturally and cannot fault.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p as *const i8)
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// As [`dram_read_bw`] with `bytes` per thread and `passes` passes (calibration uses less).
pub fn dram_read_bw_sized(threads: usize, bytes: usize, passes: usize) -> f64 {
    let bufs: Vec<Vec<u64>> = (0..threads).map(|i| vec![i as u64 + 1; bytes / 8]).collect();
    let mut best = 0f64;
    for _ in 0..passes {
        let (secs, _) = on_threads(threads, |i| {
            read_all(&bufs[i]);
            0.0
        });
        best = best.max((threads * bytes) as f64 / secs);
    }
    best
}

/// DRAM read bandwidth (bytes/s, summed) of `threads - 1` threads reading with vector loads
/// while thread 0 streams its own buffer through the tile unit (tile loads, 1 KB each): the
/// bandwidth the vector cores keep beside a streaming matrix unit. None without AMX or
/// with fewer than 2 threads.
#[cfg(target_arch = "x86_64")]
pub fn dram_beside_tiles(threads: usize, bytes: usize) -> Option<f64> {
    use crate::kernels::amx::{self, tile};
    if !amx::available() || threads < 2 {
        return None;
    }
    let bufs: Vec<Vec<u64>> = (0..threads).map(|i| vec![i as u64 + 1; bytes / 8]).collect();
    let (_, total) = on_threads(threads, |i| {
        if i == 0 {
            let cfg = tile::TileConfig::new().with(0, 16, 64);
            let p = bufs[0].as_ptr() as *const u8;
            // SAFETY: AMX is available; every load reads 16 rows of 64 bytes inside the
            // buffer (1 KB steps over `bytes`, a multiple of 1 KB).
            unsafe {
                cfg.load();
                for _ in 0..2 {
                    for off in (0..bytes).step_by(1024) {
                        tile::load::<0>(p.add(off), 64);
                    }
                }
                tile::release();
            }
            return 0.0;
        }
        let t0 = Instant::now();
        read_all(&bufs[i]);
        bytes as f64 / t0.elapsed().as_secs_f64()
    });
    Some(total)
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
    use crate::kernels::amx::{self, tile};
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

#[cfg(all(test, target_arch = "x86_64"))]
mod probe {
    /// Tile peak and DRAM read on 1 and 2 threads (ignored; by hand with --nocapture).
    #[test]
    #[ignore]
    fn roofs_by_threads() {
        for t in [1, 2] {
            eprintln!(
                "{t} thread(s): bf16 {:.2} TF, int8 {:.2} TOPS, DRAM {:.1} GB/s",
                super::amx_peak(t, true).unwrap_or(0.0) / 1e12,
                super::amx_peak(t, false).unwrap_or(0.0) / 1e12,
                super::dram_read_bw(t) / 1e9
            );
        }
    }
}
