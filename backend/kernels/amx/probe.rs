//! Throughput probe of the tile instructions (ignored; run by hand with --nocapture).

use super::tile::{self, TileConfig};
use std::time::Instant;

unsafe fn run(kbytes: usize, bf16: bool, iters: usize) -> f64 {
    // tiles 0-3: C 16x64; 4,5: A 16 x kbytes; 6,7: B (kbytes/4) x 64
    let mut cfg = TileConfig::new();
    for t in 0..4 {
        cfg = cfg.with(t, 16, 64);
    }
    cfg = cfg.with(4, 16, kbytes).with(5, 16, kbytes).with(6, kbytes / 4, 64).with(7, kbytes / 4, 64);
    cfg.load();
    let buf = vec![1u8; 4096];
    tile::load::<4>(buf.as_ptr(), 64);
    tile::load::<5>(buf.as_ptr(), 64);
    tile::load::<6>(buf.as_ptr(), 64);
    tile::load::<7>(buf.as_ptr(), 64);
    tile::zero::<0>();
    tile::zero::<1>();
    tile::zero::<2>();
    tile::zero::<3>();
    let t0 = Instant::now();
    for _ in 0..iters {
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
    let mut out = vec![0u8; 1024];
    tile::store::<0>(out.as_mut_ptr(), 64);
    let dt = t0.elapsed().as_secs_f64();
    tile::release();
    let macs = 4.0 * iters as f64 * 16.0 * 16.0 * (kbytes as f64 / if bf16 { 2.0 } else { 1.0 });
    2.0 * macs / dt / 1e12
}

#[test]
#[ignore]
fn amx_throughput() {
    if !super::available() {
        eprintln!("no AMX");
        return;
    }
    for &(k, bf) in &[(64, false), (32, false), (16, false), (64, true), (32, true)] {
        let t = unsafe { run(k, bf, 20_000_000) };
        eprintln!("{} K-bytes {k}: {t:.3} T(FL)OPS per core", if bf { "tdpbf16ps" } else { "tdpbssd" });
    }
}
