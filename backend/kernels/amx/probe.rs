//! Throughput probe of the tile instructions (ignored; run by hand with --nocapture).

use super::tile;
use std::time::Instant;

/// Tile-op throughput per core for 64-, 32- and 16-byte rows (a 32-byte product costs as
/// much as a 64-byte one: the ceiling of block-scaled int8 is half the int8 peak).
#[test]
#[ignore]
fn amx_throughput() {
    if !super::available() {
        eprintln!("no AMX");
        return;
    }
    for bf16 in [false, true] {
        for kbytes in [64, 32, 16] {
            let p = crate::kernels::roofs::amx_rate(1, bf16, kbytes).unwrap();
            eprintln!("{} with {kbytes}-byte rows: {:.2} T(FL)OPS per core", if bf16 { "tdpbf16ps" } else { "tdpbssd" }, p / 1e12);
        }
    }
}

/// Time of the int8 kernel on warm synthetic operands (M = 512, K = 3072, 64 weight rows);
/// with minimums (Q4_1, Q4_K) when SMEPILOT_PROBE_MINIMUMS is set.
#[test]
#[ignore]
fn i8_kernel_speed() {
    use super::gemm::{self, ColsI8, Block32, RowsI8};
    if !super::available() {
        return;
    }
    let (m, k, nt) = (512usize, 3072usize, 4usize);
    let nb = k / 32;
    let q = vec![1u8; m * k];
    let d = vec![1f32; m * nb];
    let wq = vec![1u8; nt * 16 * k];
    let wd = vec![1f32; nt * nb * 16];
    let with_min = std::env::var_os("SMEPILOT_PROBE_MINIMUMS").is_some();
    let act = ColsI8 { q: q.as_ptr(), d: d.as_ptr(), s: d.as_ptr(), nb };
    let wts: Vec<RowsI8> = (0..nt)
        .map(|j| RowsI8 { q: wq[j * 16 * k..].as_ptr(), stride: k, block_step: 32, d: wd[j * nb * 16..].as_ptr(), m: if with_min { wd[j * nb * 16..].as_ptr() } else { std::ptr::null() } })
        .collect();
    let mut acc = Block32::new();
    let _t = unsafe { gemm::i8_session() };
    let mut best = 0f64;
    for _ in 0..10 {
        let t0 = Instant::now();
        for mt in (0..m / 16).step_by(2) {
            for j in (0..nt).step_by(2) {
                unsafe { gemm::i8_block::<true>(&act, mt, [&wts[j], &wts[j + 1]], &mut acc, &crate::kernels::prefetch::Spread::NONE) };
            }
        }
        std::hint::black_box(&acc);
        let dt = t0.elapsed().as_secs_f64();
        best = best.max(2.0 * (m * k * 16 * nt) as f64 / dt / 1e9);
    }
    eprintln!("best of 10: {best:.0} GOPS per core");
}

unsafe fn variant(v: u32, a: *const u8, st: usize, bq: *const u8, c: *mut u8, nb: usize) {
    // SAFETY: the only caller, `i8_tile_op_variants`, loaded a configuration of 16 x 64 tiles
    // 0..4, 16 x 32 A tiles 4, 5 and 8 x 64 B tiles 6, 7; `a` holds 16 rows `st` apart of nb
    // 32-byte blocks, `bq` nb 512-byte B tiles and `c` 4 KB, so every tile load and store stays
    // within them.
    unsafe {
        for b in (0..nb).step_by(4) {
            if v & 1 != 0 {
                tile::zero::<0>();
                tile::zero::<1>();
                tile::zero::<2>();
                tile::zero::<3>();
            }
            tile::load::<4>(a.add(b * 32), st);
            tile::load::<6>(bq.add(b * 512), 64);
            tile::dpbssd::<0, 4, 6>();
            tile::load::<5>(a.add((b + 1) * 32), st);
            tile::load::<7>(bq.add((b + 1) * 512), 64);
            tile::dpbssd::<1, 5, 7>();
            tile::load::<4>(a.add((b + 2) * 32), st);
            tile::load::<6>(bq.add((b + 2) * 512), 64);
            tile::dpbssd::<2, 4, 6>();
            tile::load::<5>(a.add((b + 3) * 32), st);
            tile::load::<7>(bq.add((b + 3) * 512), 64);
            tile::dpbssd::<3, 5, 7>();
            if v & 2 != 0 {
                tile::store::<0>(c, 64);
                tile::store::<1>(c.add(1024), 64);
                tile::store::<2>(c.add(2048), 64);
                tile::store::<3>(c.add(3072), 64);
            }
        }
    }
}

#[test]
#[ignore]
fn i8_tile_op_variants() {
    if !super::available() {
        return;
    }
    let (k, nb) = (3072usize, 96usize);
    let q = vec![1u8; 16 * k];
    let pq = vec![1u8; nb * 512];
    let mut c = vec![0u8; 4096];
    let cfg = super::tile::TileConfig::new()
        .with(0, 16, 64).with(1, 16, 64).with(2, 16, 64).with(3, 16, 64)
        .with(4, 16, 32).with(5, 16, 32).with(6, 8, 64).with(7, 8, 64);
    for v in 0..4 {
        for &st in &[k, 64usize, 32] {
            unsafe { cfg.load() };
            let iters = 2000;
            let t0 = Instant::now();
            for _ in 0..iters {
                unsafe { variant(v, q.as_ptr(), st, pq.as_ptr(), c.as_mut_ptr(), nb) };
            }
            let dt = t0.elapsed().as_secs_f64();
            let ops = 2.0 * (16 * 16 * 32 * nb * iters) as f64;
            eprintln!("zero={} store={} a_stride={st}: {:.0} GOPS", v & 1, v >> 1, ops / dt / 1e9);
        }
    }
    unsafe { tile::release() };
}

#[test]
#[ignore]
fn i8_tile_2x2_with_stores() {
    if !super::available() {
        return;
    }
    let nb = 96usize;
    let a = vec![1u8; 32 * 3072];
    let pq = vec![1u8; 2 * nb * 512];
    let mut c = vec![0u8; 8192];
    let cfg = super::tile::TileConfig::new()
        .with(0, 16, 64).with(1, 16, 64).with(2, 16, 64).with(3, 16, 64)
        .with(4, 16, 32).with(5, 16, 32).with(6, 8, 64).with(7, 8, 64);
    for stores in [false, true] {
        unsafe { cfg.load() };
        let iters = 2000;
        let t0 = Instant::now();
        for _ in 0..iters {
            for b in 0..nb {
                unsafe {
                    tile::zero::<0>();
                    tile::zero::<1>();
                    tile::zero::<2>();
                    tile::zero::<3>();
                    tile::load::<4>(a.as_ptr().add(b * 32), 3072);
                    tile::load::<6>(pq.as_ptr().add(b * 512), 64);
                    tile::dpbssd::<0, 4, 6>();
                    tile::load::<7>(pq.as_ptr().add((nb + b) * 512), 64);
                    tile::dpbssd::<1, 4, 7>();
                    tile::load::<5>(a.as_ptr().add(16 * 3072 + b * 32), 3072);
                    tile::dpbssd::<2, 5, 6>();
                    tile::dpbssd::<3, 5, 7>();
                    if stores {
                        let cp = c.as_mut_ptr().add((b & 1) * 4096);
                        tile::store::<0>(cp, 64);
                        tile::store::<1>(cp.add(1024), 64);
                        tile::store::<2>(cp.add(2048), 64);
                        tile::store::<3>(cp.add(3072), 64);
                    }
                }
            }
        }
        let dt = t0.elapsed().as_secs_f64();
        let ops = 2.0 * (4 * 16 * 16 * 32 * nb * iters) as f64;
        eprintln!("2x2 stores={stores}: {:.0} GOPS", ops / dt / 1e9);
    }
    // bf16 2x2 accumulating over K (no stores), same operand bytes per op.
    let cfgb = (0..8).fold(super::tile::TileConfig::new(), |c, t| c.with(t, 16, 64));
    unsafe { cfgb.load() };
    let (iters, kc) = (2000, 96usize);
    let a2 = vec![0u8; 32 * 6144];
    let b2 = vec![0u8; 2 * kc * 1024];
    let t0 = Instant::now();
    for _ in 0..iters {
        unsafe {
            tile::zero::<0>();
            tile::zero::<1>();
            tile::zero::<2>();
            tile::zero::<3>();
            for k in 0..kc {
                tile::load::<4>(a2.as_ptr().add(k * 64), 6144);
                tile::load::<6>(b2.as_ptr().add(k * 1024), 64);
                tile::dpbf16ps::<0, 4, 6>();
                tile::load::<7>(b2.as_ptr().add((kc + k) * 1024), 64);
                tile::dpbf16ps::<1, 4, 7>();
                tile::load::<5>(a2.as_ptr().add(16 * 6144 + k * 64), 6144);
                tile::dpbf16ps::<2, 5, 6>();
                tile::dpbf16ps::<3, 5, 7>();
            }
            tile::store::<0>(c.as_mut_ptr(), 64);
        }
    }
    let dt = t0.elapsed().as_secs_f64();
    eprintln!("bf16 2x2: {:.0} GFLOPS", 2.0 * (4 * 16 * 16 * 32 * kc * iters) as f64 / dt / 1e9);
    unsafe { tile::release() };
}

/// bf16 2x2 with operands resident in L1 (K block of `kc` chunks), C kept in tiles.
#[test]
#[ignore]
fn bf16_l1_resident() {
    if !super::available() {
        return;
    }
    let cfgb = (0..8).fold(super::tile::TileConfig::new(), |c, t| c.with(t, 16, 64));
    for &(kc, astride) in &[(8usize, 512usize), (8, 6144), (16, 1024), (4, 256)] {
        unsafe { cfgb.load() };
        let a2 = vec![0u8; 32 * astride.max(kc * 64)];
        let b2 = vec![0u8; 2 * kc * 1024];
        let mut c = vec![0u8; 4096];
        let iters = 200_000 / kc;
        let t0 = Instant::now();
        unsafe {
            tile::zero::<0>();
            tile::zero::<1>();
            tile::zero::<2>();
            tile::zero::<3>();
            for _ in 0..iters {
                for k in 0..kc {
                    tile::load::<4>(a2.as_ptr().add(k * 64), astride);
                    tile::load::<6>(b2.as_ptr().add(k * 1024), 64);
                    tile::dpbf16ps::<0, 4, 6>();
                    tile::load::<7>(b2.as_ptr().add((kc + k) * 1024), 64);
                    tile::dpbf16ps::<1, 4, 7>();
                    tile::load::<5>(a2.as_ptr().add(16 * astride + k * 64), astride);
                    tile::dpbf16ps::<2, 5, 6>();
                    tile::dpbf16ps::<3, 5, 7>();
                }
            }
            tile::store::<0>(c.as_mut_ptr(), 64);
        }
        let dt = t0.elapsed().as_secs_f64();
        eprintln!("bf16 2x2 kc={kc} a_stride={astride}: {:.0} GFLOPS", 2.0 * (4 * 16 * 16 * 32 * kc * iters) as f64 / dt / 1e9);
    }
    unsafe { tile::release() };
}

#[test]
#[ignore]
fn bf16_orders() {
    if !super::available() {
        return;
    }
    let cfgb = (0..8).fold(super::tile::TileConfig::new(), |c, t| c.with(t, 16, 64));
    let kc = 8usize;
    let a2 = vec![1u8; 32 * 512];
    let b2 = vec![1u8; 4 * kc * 1024];
    let mut c = vec![0u8; 4096];
    let iters = 200_000 / kc;
    for variant in 0..3 {
        unsafe { cfgb.load() };
        let t0 = Instant::now();
        let (a, b) = (a2.as_ptr(), b2.as_ptr());
        unsafe {
            for _ in 0..iters {
                for k in 0..kc {
                    match variant {
                        0 => {
                            tile::load::<4>(a.add(k * 64), 512);
                            tile::load::<5>(a.add(16 * 512 + k * 64), 512);
                            tile::load::<6>(b.add(k * 1024), 64);
                            tile::load::<7>(b.add((kc + k) * 1024), 64);
                            tile::dpbf16ps::<0, 4, 6>();
                            tile::dpbf16ps::<1, 4, 7>();
                            tile::dpbf16ps::<2, 5, 6>();
                            tile::dpbf16ps::<3, 5, 7>();
                        }
                        1 => {
                            // 1 x 3: one A tile, three B tiles, three accumulators
                            tile::load::<4>(a.add(k * 64), 512);
                            tile::load::<5>(b.add(k * 1024), 64);
                            tile::dpbf16ps::<0, 4, 5>();
                            tile::load::<6>(b.add((kc + k) * 1024), 64);
                            tile::dpbf16ps::<1, 4, 6>();
                            tile::load::<7>(b.add((2 * kc + k) * 1024), 64);
                            tile::dpbf16ps::<2, 4, 7>();
                        }
                        _ => {
                            // no loads at all (upper bound with these chains)
                            tile::dpbf16ps::<0, 4, 6>();
                            tile::dpbf16ps::<1, 4, 7>();
                            tile::dpbf16ps::<2, 5, 6>();
                            tile::dpbf16ps::<3, 5, 7>();
                        }
                    }
                }
            }
            tile::store::<0>(c.as_mut_ptr(), 64);
        }
        let dt = t0.elapsed().as_secs_f64();
        let dps = if variant == 1 { 3 } else { 4 };
        eprintln!("variant {variant}: {:.0} GFLOPS", 2.0 * (dps * 16 * 16 * 32 * kc * iters) as f64 / dt / 1e9);
    }
    unsafe { tile::release() };
}

#[test]
#[ignore]
fn tileload_throughput() {
    if !super::available() {
        return;
    }
    let cfgb = (0..8).fold(super::tile::TileConfig::new(), |c, t| c.with(t, 16, 64));
    let buf = vec![1u8; 64 << 20];
    for &span in &[1024usize, 8192, 32768, 1 << 20, 32 << 20] {
        unsafe { cfgb.load() };
        let iters = 1_000_000;
        let t0 = Instant::now();
        unsafe {
            for i in 0..iters {
                let off = (i * 4096) % span;
                tile::load::<4>(buf.as_ptr().add(off % (span.max(4096) - 1024 + 1)), 64);
                tile::load::<5>(buf.as_ptr().add((off + 1024) % span), 64);
                tile::load::<6>(buf.as_ptr().add((off + 2048) % span), 64);
                tile::load::<7>(buf.as_ptr().add((off + 3072) % span), 64);
            }
        }
        let dt = t0.elapsed().as_secs_f64();
        eprintln!("span {span}: {:.1} ns per 1 KB tileloadd, {:.1} GB/s", dt / (4 * iters) as f64 * 1e9, (4 * iters * 1024) as f64 / dt / 1e9);
    }
    unsafe { tile::release() };
}

/// One k step of the bf16 2x2 block in the kernel's order: 4 loads, 4 products.
///
/// # Safety
/// A configuration with 16 x 64 tiles 0..8 is loaded on this thread; `p` has 4 KB.
#[inline(always)]
unsafe fn bf16_2x2_step(p: *const u8) {
    // SAFETY: this fn's `# Safety` contract: a configuration with 16 x 64 tiles 0..8 is loaded
    // on this thread and `p` has 4 KB, so each 1 KB tile load stays within it.
    unsafe {
        tile::load::<4>(p, 64);
        tile::load::<6>(p.add(1024), 64);
        tile::dpbf16ps::<0, 4, 6>();
        tile::load::<7>(p.add(2048), 64);
        tile::dpbf16ps::<1, 4, 7>();
        tile::load::<5>(p.add(3072), 64);
        tile::dpbf16ps::<2, 5, 6>();
        tile::dpbf16ps::<3, 5, 7>();
    }
}

/// Nanoseconds per call of `f`, over `iters` calls.
fn ns_per(iters: usize, mut f: impl FnMut()) -> f64 {
    let t0 = Instant::now();
    for _ in 0..iters {
        f();
    }
    t0.elapsed().as_secs_f64() / iters as f64 * 1e9
}

/// Tile load costs by how many distinct tiles rotate, and the bf16 2x2 block per k step with
/// L1-resident operands, in three instruction orders (ignored; by hand).
#[test]
#[ignore]
fn tileload_rotation_and_block_cost() {
    if !super::available() {
        return;
    }
    let cfgb = (0..8).fold(super::tile::TileConfig::new(), |c, t| c.with(t, 16, 64));
    let buf = vec![1u8; 8192];
    let p = buf.as_ptr();
    let n = 1_000_000;
    // SAFETY (every block below): the configuration is loaded on this thread; every load
    // reads 1 KB inside `buf`.
    unsafe { cfgb.load() };
    let one = ns_per(n, || unsafe {
        tile::load::<4>(p, 64);
        tile::load::<4>(p.add(1024), 64);
        tile::load::<4>(p.add(2048), 64);
        tile::load::<4>(p.add(3072), 64);
    });
    let two = ns_per(n, || unsafe {
        tile::load::<4>(p, 64);
        tile::load::<5>(p.add(1024), 64);
        tile::load::<4>(p.add(2048), 64);
        tile::load::<5>(p.add(3072), 64);
    });
    let four = ns_per(n, || unsafe {
        tile::load::<4>(p, 64);
        tile::load::<5>(p.add(1024), 64);
        tile::load::<6>(p.add(2048), 64);
        tile::load::<7>(p.add(3072), 64);
    });
    eprintln!("ns per 1 KB load, rotating 1 / 2 / 4 tiles: {:.1} / {:.1} / {:.1}", one / 4.0, two / 4.0, four / 4.0);
    let products = ns_per(n, || unsafe {
        tile::dpbf16ps::<0, 4, 6>();
        tile::dpbf16ps::<1, 4, 7>();
        tile::dpbf16ps::<2, 5, 6>();
        tile::dpbf16ps::<3, 5, 7>();
    });
    let kernel_order = ns_per(n, || unsafe { bf16_2x2_step(p) });
    let loads_first = ns_per(n, || unsafe {
        tile::load::<4>(p, 64);
        tile::load::<6>(p.add(1024), 64);
        tile::load::<7>(p.add(2048), 64);
        tile::load::<5>(p.add(3072), 64);
        tile::dpbf16ps::<0, 4, 6>();
        tile::dpbf16ps::<1, 4, 7>();
        tile::dpbf16ps::<2, 5, 6>();
        tile::dpbf16ps::<3, 5, 7>();
    });
    let b_stationary = ns_per(n, || unsafe {
        tile::load::<4>(p, 64);
        tile::dpbf16ps::<0, 4, 6>();
        tile::dpbf16ps::<1, 4, 7>();
        tile::load::<5>(p.add(1024), 64);
        tile::dpbf16ps::<2, 5, 6>();
        tile::dpbf16ps::<3, 5, 7>();
    });
    eprintln!("ns per 2x2 k step: products only {products:.1}; with 4 loads {kernel_order:.1} (kernel order), {loads_first:.1} (loads first); with 2 loads {b_stationary:.1}");
    unsafe { tile::release() };
}

/// 16 VNNI multiply-adds (vpdpbusd zmm) from L1, 8 independent accumulators.
///
/// # Safety
/// The CPU has AVX512-VNNI; `p` points to 1 KB readable bytes.
#[inline(always)]
unsafe fn vnni_burst(p: *const u8) {
    // SAFETY: this fn's `# Safety` contract: the CPU has AVX512-VNNI and `p` points to 1 KB
    // readable bytes, all the asm reads; it writes only the zmm registers it declares
    // clobbered.
    unsafe {
        std::arch::asm!(
            "vpdpbusd zmm16, zmm31, [{p}]",
            "vpdpbusd zmm17, zmm31, [{p} + 64]",
            "vpdpbusd zmm18, zmm31, [{p} + 128]",
            "vpdpbusd zmm19, zmm31, [{p} + 192]",
            "vpdpbusd zmm20, zmm31, [{p} + 256]",
            "vpdpbusd zmm21, zmm31, [{p} + 320]",
            "vpdpbusd zmm22, zmm31, [{p} + 384]",
            "vpdpbusd zmm23, zmm31, [{p} + 448]",
            "vpdpbusd zmm16, zmm31, [{p} + 512]",
            "vpdpbusd zmm17, zmm31, [{p} + 576]",
            "vpdpbusd zmm18, zmm31, [{p} + 640]",
            "vpdpbusd zmm19, zmm31, [{p} + 704]",
            "vpdpbusd zmm20, zmm31, [{p} + 768]",
            "vpdpbusd zmm21, zmm31, [{p} + 832]",
            "vpdpbusd zmm22, zmm31, [{p} + 896]",
            "vpdpbusd zmm23, zmm31, [{p} + 960]",
            p = in(reg) p,
            out("zmm16") _, out("zmm17") _, out("zmm18") _, out("zmm19") _,
            out("zmm20") _, out("zmm21") _, out("zmm22") _, out("zmm23") _, out("zmm31") _,
            options(nostack, readonly),
        );
    }
}

/// Whether the vector units run beside the tile unit on one core: a bf16 2x2 tile step (4
/// loads, 4 products), a burst of 16 VNNI multiply-adds, and the two interleaved in one
/// thread. If the interleaved step costs about the larger of the two, one thread can feed
/// both engines at once (ignored; by hand).
#[test]
#[ignore]
fn tile_and_vector_overlap() {
    if !super::available() || !is_x86_feature_detected!("avx512vnni") {
        return;
    }
    let cfgb = (0..8).fold(super::tile::TileConfig::new(), |c, t| c.with(t, 16, 64));
    let buf = vec![1u8; 8192];
    let p = buf.as_ptr();
    let n = 1_000_000;
    // SAFETY (every block below): the configuration is loaded on this thread; every tile load
    // reads 1 KB inside `buf`; VNNI is present and each burst reads 1 KB inside `buf`.
    unsafe { cfgb.load() };
    let tile_step = || unsafe { bf16_2x2_step(p) };
    for bursts in [1usize, 2, 4] {
        let t = ns_per(n, tile_step);
        let v = ns_per(n, || (0..bursts).for_each(|b| unsafe { vnni_burst(p.add(4096 + (b % 4) * 1024)) }));
        let both = ns_per(n, || {
            tile_step();
            (0..bursts).for_each(|b| unsafe { vnni_burst(p.add(4096 + (b % 4) * 1024)) });
        });
        eprintln!("{bursts} x 16 VNNI: tile step {t:.1} ns, vector {v:.1} ns, interleaved {both:.1} ns (sum {:.1}, max {:.1})", t + v, t.max(v));
    }
    unsafe { tile::release() };
}

/// Whether the cores have a tile unit each: the product rate on 1 and on all threads
/// (about cores x the one-thread rate when units are private; about equal when shared).
#[test]
#[ignore]
fn tile_units_private_or_shared() {
    if !super::available() {
        return;
    }
    let cores = crate::platform::os::allowed_cpus().len();
    for _ in 0..3 {
        let one = crate::kernels::roofs::amx_rate(1, true, 64).unwrap();
        let all = crate::kernels::roofs::amx_rate(cores, true, 64).unwrap();
        eprintln!("bf16 products: 1 thread {:.2} TFLOPS, {cores} threads {:.2} TFLOPS ({:.2}x)", one / 1e12, all / 1e12, all / one);
    }
}


/// Time of the K-quant super-block kernel on warm synthetic operands (M = 512, K = 3072,
/// 64 weight rows), without and with minimums: GOPS counted as for `i8_kernel_speed`.
#[test]
#[ignore]
fn ks_kernel_speed() {
    use super::ksuper::{self, ColsKs, RowsKs, STEPS, TILE};
    if !super::available() {
        return;
    }
    let (m, k, nt) = (512usize, 3072usize, 4usize);
    let nsb = k / 256;
    let aq = vec![1u8; m / 16 * nsb * STEPS * TILE];
    let ad = vec![1f32; m / 16 * nsb * 16];
    let abs = vec![1u32; m / 16 * nsb * 64];
    let wq = vec![1u8; nt * nsb * 2 * STEPS * TILE];
    let wd = vec![1f32; nt * nsb * 16];
    let wm = vec![1u32; nt * nsb * 64];
    for with_min in [false, true] {
        let cols = ColsKs { q: wq.as_ptr(), d: wd.as_ptr(), nmin: wd.as_ptr(), mins: wm.as_ptr(), nsb };
        let rows: Vec<RowsKs> = (0..m / 16)
            .map(|t| RowsKs {
                q: aq[t * nsb * STEPS * TILE..].as_ptr(),
                d: ad[t * nsb * 16..].as_ptr(),
                bsums: if with_min { abs[t * nsb * 64..].as_ptr() } else { std::ptr::null() },
            })
            .collect();
        let mut acc = [[[0f32; 16]; 16]; 2];
        let _t = unsafe { ksuper::session() };
        let mut best = 0f64;
        for _ in 0..10 {
            let t0 = Instant::now();
            for mt in (0..m / 16).step_by(2) {
                for ct in 0..nt {
                    let (x, y) = acc.split_at_mut(1);
                    unsafe { ksuper::ks_block::<true>(&cols, ct, [&rows[mt], &rows[mt + 1]], [&mut x[0], &mut y[0]], &crate::kernels::prefetch::Spread::NONE) };
                }
            }
            std::hint::black_box(&acc);
            let dt = t0.elapsed().as_secs_f64();
            best = best.max(2.0 * (m * k * 16 * nt) as f64 / dt / 1e9);
        }
        eprintln!("minimums {with_min}: best of 10: {best:.0} GOPS per core");
    }
}

/// The K-quant kernel's tile instructions alone (no drain), same operands as above.
#[test]
#[ignore]
fn ks_tiles_only() {
    use super::ksuper::{self, STEPS, TILE};
    if !super::available() {
        return;
    }
    let (m, k, nt) = (512usize, 3072usize, 4usize);
    let nsb = k / 256;
    let aq = vec![1u8; m / 16 * nsb * STEPS * TILE];
    let wq = vec![1u8; nt * nsb * 2 * STEPS * TILE];
    let mut c = vec![0u8; 8192];
    let _t = unsafe { ksuper::session() };
    for stores in [true, false, true, false] {
        let t0 = Instant::now();
        for mt in (0..m / 16).step_by(2) {
            for ct in 0..nt {
                // SAFETY: the session above loaded 16 x 64 tiles; the operands hold every step.
                unsafe {
                    let b = wq.as_ptr().add(ct * nsb * 2 * STEPS * TILE);
                    let (r0, r1) = (aq.as_ptr().add(mt * nsb * STEPS * TILE), aq.as_ptr().add((mt + 1) * nsb * STEPS * TILE));
                    for sb in 0..nsb {
                        tile::zero::<0>();
                        tile::zero::<1>();
                        tile::zero::<2>();
                        tile::zero::<3>();
                        for s in 0..STEPS {
                            let st = sb * STEPS + s;
                            tile::load::<4>(r0.add(st * TILE), 64);
                            tile::load::<6>(b.add(2 * st * TILE), 64);
                            tile::dpbssd::<0, 4, 6>();
                            tile::load::<7>(b.add((2 * st + 1) * TILE), 64);
                            tile::dpbssd::<1, 4, 7>();
                            tile::load::<5>(r1.add(st * TILE), 64);
                            tile::dpbssd::<2, 5, 6>();
                            tile::dpbssd::<3, 5, 7>();
                        }
                        if stores {
                            let p = c.as_mut_ptr().add((sb & 1) * 4096);
                            tile::store::<0>(p, 64);
                            tile::store::<1>(p.add(1024), 64);
                            tile::store::<2>(p.add(2048), 64);
                            tile::store::<3>(p.add(3072), 64);
                        }
                    }
                }
            }
        }
        std::hint::black_box(&c);
        let dt = t0.elapsed().as_secs_f64();
        eprintln!("stores {stores}: {:.0} GOPS per core", 2.0 * (m * k * 16 * nt) as f64 / dt / 1e9);
    }
}
