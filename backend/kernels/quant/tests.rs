//! Tests of the kernel table: fast tiers against the scalar reference, round trips, exact
//! conversions against `half`, golden blocks pinning the scalar reference, length checks.

use super::blocks::*;
use super::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

#[cfg(unix)]
mod ggml_xcheck;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// Every tier to check against the scalar one: each registered tier this CPU runs, on x86
/// each AVX-512 variant (with and without `vdpbf16ps`), on aarch64 the NEON table without
/// BFDOT where the registered one uses it.
fn fast_tiers() -> Vec<(&'static str, &'static Table)> {
    let mut v: Vec<(&'static str, &'static Table)> =
        crate::kernels::KernelSet::available()[1..].iter().map(|s| (s.name, s.quant)).collect();
    #[cfg(target_arch = "x86_64")]
    {
        if let Some(t) = avx512::table_with(false) {
            v.push(("avx512 without bf16", Box::leak(Box::new(t))));
        }
    }
    #[cfg(target_arch = "aarch64")]
    {
        if neon::bf16_detected() {
            if let Some(t) = neon::table_with(false) {
                v.push(("neon+dotprod without bf16", t));
            }
        }
    }
    crate::kernels::registry::log_tiers_run("quant", v.iter().map(|(n, _)| *n));
    v
}

/// The process's table entry of `ty`.
fn kernels(ty: DType) -> Option<&'static TypeKernels> {
    crate::kernels::registry::active().kernels(ty)
}

fn entry(table: &'static Table, ty: DType) -> &'static TypeKernels {
    &table[slot(ty).unwrap()]
}

fn sk(ty: DType) -> &'static TypeKernels {
    scalar_kernels(ty).unwrap()
}

fn rng(seed: u64) -> StdRng {
    StdRng::seed_from_u64(seed)
}

/// Random f32 of varied magnitude, with a few exact zeros.
fn rand_f32(r: &mut StdRng, n: usize) -> Vec<f32> {
    let scale = 10f32.powi(r.gen_range(-3..3));
    (0..n)
        .map(|_| {
            if r.gen_ratio(1, 50) {
                0.0
            } else {
                r.gen_range(-1.0f32..1.0) * scale
            }
        })
        .collect()
}

fn f16_bits(x: f32) -> u16 {
    half::f16::from_f32(x).to_bits()
}

/// A random but realistic row of `nb` blocks of a weight / activation type: the 32-blocks and
/// Q8_K by quantizing random f32 with the scalar quantizer, the K-quants as valid random
/// blocks (random qs/scales bytes, sane d/dmin), plain types by converting random f32.
fn rand_row(r: &mut StdRng, ty: DType, n: usize) -> Vec<u8> {
    let nb = n / ty.block_size();
    match ty {
        DType::Q4_K => {
            let mut out = vec![0u8; ty.row_bytes(n)];
            for i in 0..nb {
                let mut b = BlockQ4K::zeroed();
                b.d = f16_bits(r.gen_range(0.001f32..0.05));
                b.dmin = f16_bits(r.gen_range(0.0f32..0.02));
                r.fill(&mut b.scales[..]);
                r.fill(&mut b.qs[..]);
                b.write_at(&mut out, i);
            }
            out
        }
        DType::Q5_K => {
            let mut out = vec![0u8; ty.row_bytes(n)];
            for i in 0..nb {
                let mut b = BlockQ5K::zeroed();
                b.d = f16_bits(r.gen_range(0.001f32..0.05));
                b.dmin = f16_bits(r.gen_range(0.0f32..0.02));
                r.fill(&mut b.scales[..]);
                r.fill(&mut b.qh[..]);
                r.fill(&mut b.qs[..]);
                b.write_at(&mut out, i);
            }
            out
        }
        DType::Q6_K => {
            let mut out = vec![0u8; ty.row_bytes(n)];
            for i in 0..nb {
                let mut b = BlockQ6K::zeroed();
                b.d = f16_bits(r.gen_range(0.0005f32..0.01));
                r.fill(&mut b.ql[..]);
                r.fill(&mut b.qh[..]);
                for s in b.scales.iter_mut() {
                    *s = r.gen();
                }
                b.write_at(&mut out, i);
            }
            out
        }
        _ => {
            let x = rand_f32(r, n);
            let mut out = vec![0u8; ty.row_bytes(n)];
            (sk(ty).from_f32.unwrap())(&x, &mut out);
            out
        }
    }
}

/// Element counts to test for a type: one block, several, odd counts.
fn lengths(ty: DType) -> Vec<usize> {
    match ty.block_size() {
        1 => vec![
            1,
            2,
            7,
            15,
            16,
            17,
            31,
            32,
            33,
            63,
            64,
            65,
            100,
            129,
            257,
            1000,
            4096 + 3,
        ],
        32 => [1, 2, 3, 5, 7, 8, 16, 33].iter().map(|b| b * 32).collect(),
        _ => vec![256, 512, 256 * 3, 256 * 5],
    }
}

/// Copies `bytes` to an odd address, so kernels are also run on unaligned data.
fn misaligned(bytes: &[u8]) -> (Vec<u8>, usize) {
    let mut v = vec![0u8; bytes.len() + 1];
    v[1..].copy_from_slice(bytes);
    (v, 1)
}

fn to_f32_row(ty: DType, bytes: &[u8], n: usize) -> Vec<f32> {
    let mut out = vec![0f32; n];
    (sk(ty).to_f32)(bytes, &mut out);
    out
}

fn same_f32(a: f32, b: f32) -> bool {
    a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan())
}

const WEIGHT_TYPES: [DType; 9] = [
    DType::F32,
    DType::F16,
    DType::BF16,
    DType::Q4_0,
    DType::Q4_1,
    DType::Q8_0,
    DType::Q4_K,
    DType::Q5_K,
    DType::Q6_K,
];

// ---------------------------------------------------------------------------------------------
// The table itself
// ---------------------------------------------------------------------------------------------

#[test]
fn table_matches_ggml_type_traits() {
    let expect_vdt = [
        (DType::F32, DType::F32),
        (DType::F16, DType::F16),
        (DType::BF16, DType::BF16),
        (DType::Q4_0, DType::Q8_0),
        (DType::Q4_1, DType::Q8_1),
        (DType::Q8_0, DType::Q8_0),
        (DType::Q4_K, DType::Q8_K),
        (DType::Q5_K, DType::Q8_K),
        (DType::Q6_K, DType::Q8_K),
    ];
    let mut tables = fast_tiers();
    tables.push(("scalar", &scalar::TABLE));
    for (name, table) in tables {
        for (i, ty) in TYPES.iter().enumerate() {
            assert_eq!(table[i].ty, *ty, "{name}: slot {i}");
        }
        for (ty, vdt) in expect_vdt {
            let k = entry(table, ty);
            assert_eq!(k.vec_dot_type, vdt, "{name}: {}", ty.name());
            assert!(k.vec_dot.is_some(), "{name}: {} has no vec_dot", ty.name());
        }
        for ty in [
            DType::F32,
            DType::F16,
            DType::BF16,
            DType::Q8_0,
            DType::Q8_1,
            DType::Q8_K,
            DType::Q4_0,
            DType::Q4_1,
        ] {
            assert!(
                entry(table, ty).from_f32.is_some(),
                "{name}: {} has no from_f32",
                ty.name()
            );
        }
        for ty in [DType::Q8_1, DType::Q8_K] {
            assert!(entry(table, ty).vec_dot.is_none());
        }
    }
    for ty in [DType::I8, DType::I16, DType::I32, DType::I64] {
        assert!(kernels(ty).is_none() && scalar_kernels(ty).is_none());
    }
    for ty in TYPES {
        assert_eq!(kernels(ty).unwrap().ty, ty);
        assert_eq!(scalar_kernels(ty).unwrap().ty, ty);
    }
}

/// Run in a child process by `force_scalar_env_selects_scalar`; prints the tier.
#[test]
#[ignore]
fn report_tier() {
    println!("SMEPILOT_TIER={}", crate::kernels::registry::active().name);
}

#[test]
fn force_scalar_env_selects_scalar() {
    let exe = std::env::current_exe().unwrap();
    let path = module_path!();
    let name = format!(
        "{}::report_tier",
        path.split_once("::").map_or(path, |(_, rest)| rest)
    );
    let out = std::process::Command::new(exe)
        .args([
            name.as_str(),
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("SMEPILOT_FORCE_SCALAR", "1")
        .output();
    let out = match out {
        Ok(out) => out,
        // The test binary cannot re-run itself here (e.g. cross-run under an emulator).
        Err(e) => return eprintln!("skipped: cannot spawn the test binary: {e}"),
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() && !stdout.contains("running 1 test") {
        // The child never got to run (e.g. a cross-built binary without its emulator setup).
        return eprintln!(
            "skipped: child did not start: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert!(out.status.success(), "child failed: {stdout}");
    assert!(
        stdout.contains("SMEPILOT_TIER=scalar"),
        "child said: {stdout}"
    );
}

// ---------------------------------------------------------------------------------------------
// Fast tier against the scalar tier
// ---------------------------------------------------------------------------------------------

#[test]
fn to_f32_fast_matches_scalar_bitwise() {
    let mut r = rng(1);
    for (name, table) in fast_tiers() {
        for ty in TYPES {
            for n in lengths(ty) {
                let row = rand_row(&mut r, ty, n);
                let want = to_f32_row(ty, &row, n);
                let (buf, off) = misaligned(&row);
                let mut got = vec![f32::NAN; n];
                (entry(table, ty).to_f32)(&buf[off..], &mut got);
                for i in 0..n {
                    assert!(
                        same_f32(got[i], want[i]),
                        "{name} {} n={n} i={i}: {} vs {}",
                        ty.name(),
                        got[i],
                        want[i]
                    );
                }
                // An unaligned f32 destination too.
                let mut wide = vec![0f32; n + 1];
                (entry(table, ty).to_f32)(&row, &mut wide[1..]);
                assert!(wide[1..].iter().zip(&want).all(|(a, b)| same_f32(*a, *b)));
            }
        }
    }
}

#[test]
fn from_f32_fast_matches_scalar_bytewise() {
    let mut r = rng(2);
    for (name, table) in fast_tiers() {
        for ty in TYPES {
            let Some(fast) = entry(table, ty).from_f32 else {
                continue;
            };
            let slow = sk(ty).from_f32.unwrap();
            for n in lengths(ty) {
                let mut x = rand_f32(&mut r, n);
                // An all-zero block; a block whose largest magnitude occurs with both signs
                // (Q8_K takes the first); a block of exact rounding ties (amax = 127 makes
                // the q8 scales exactly 1).
                let bs = ty.block_size().max(16).min(n);
                if n >= 3 * bs {
                    x[..bs].fill(0.0);
                    for (j, v) in x[bs..2 * bs].iter_mut().enumerate() {
                        *v = [0.25, -0.75, 0.75][j % 3];
                    }
                    for (j, v) in x[2 * bs..3 * bs].iter_mut().enumerate() {
                        *v = if j == 0 { 127.0 } else { (j % 16) as f32 - 7.5 };
                    }
                }
                // Blocks with a NaN, an infinity, the largest finite magnitude and only
                // subnormals: the fast quantizers give the scalar bytes there too.
                if n >= 7 * bs {
                    let specials = [f32::NAN, f32::INFINITY, f32::MAX, f32::from_bits(0x0000_0301)];
                    for (b, &sp) in specials.iter().enumerate() {
                        let blk = &mut x[(3 + b) * bs..(4 + b) * bs];
                        if b == 3 {
                            blk.iter_mut().enumerate().for_each(|(j, v)| *v = f32::from_bits(j as u32 * 37 + 1) * if j % 2 == 0 { 1.0 } else { -1.0 });
                        } else {
                            blk[bs / 3] = sp;
                            blk[bs / 2] = -sp;
                        }
                    }
                }
                let mut want = vec![0u8; ty.row_bytes(n)];
                slow(&x, &mut want);
                let mut buf = vec![0xAAu8; ty.row_bytes(n) + 1];
                fast(&x, &mut buf[1..]);
                assert_eq!(&buf[1..], &want[..], "{name} {} n={n}", ty.name());
                assert_eq!(buf[0], 0xAA, "{name} {} wrote before its slice", ty.name());
                // Longer destination: the extra bytes are left alone.
                let mut long = vec![0x55u8; ty.row_bytes(n) + 7];
                fast(&x, &mut long);
                assert_eq!(&long[..want.len()], &want[..]);
                assert!(
                    long[want.len()..].iter().all(|&b| b == 0x55),
                    "{name} {} wrote past the row",
                    ty.name()
                );
            }
        }
    }
}

/// sum |w_i| * |a_i| over the dequantized rows, and the f64 dot of the dequantized rows.
fn magnitude_and_dot(ty: DType, vdt: DType, n: usize, w: &[u8], a: &[u8]) -> (f64, f64) {
    let wf = to_f32_row(ty, w, n);
    let af = to_f32_row(vdt, a, n);
    let mag = wf
        .iter()
        .zip(&af)
        .map(|(x, y)| (*x as f64 * *y as f64).abs())
        .sum();
    let dot = wf.iter().zip(&af).map(|(x, y)| *x as f64 * *y as f64).sum();
    (mag, dot)
}

#[test]
fn vec_dot_fast_matches_scalar() {
    let mut r = rng(3);
    for (name, table) in fast_tiers() {
        for ty in WEIGHT_TYPES {
            let fast = entry(table, ty);
            let vdt = fast.vec_dot_type;
            let slow = sk(ty).vec_dot.unwrap();
            for n in lengths(ty) {
                for _rep in 0..3 {
                    let w = rand_row(&mut r, ty, n);
                    let a = rand_row(&mut r, vdt, n);
                    let want = slow(n, &w, &a);
                    let (wb, wo) = misaligned(&w);
                    let got = (fast.vec_dot.unwrap())(n, &wb[wo..], &a);
                    let (mag, _) = magnitude_and_dot(ty, vdt, n, &w, &a);
                    let err = (got as f64 - want as f64).abs();
                    // K-quants: same int32 sums and float sequence, so identical. Others:
                    // f32 lane accumulation, within 1e-5 of the magnitude.
                    if matches!(ty, DType::Q4_K | DType::Q5_K | DType::Q6_K) {
                        assert_eq!(
                            got.to_bits(),
                            want.to_bits(),
                            "{name} {} n={n}: {got} vs {want}",
                            ty.name()
                        );
                    } else {
                        assert!(
                            err <= 1e-5 * mag + 1e-30,
                            "{name} {} n={n}: {got} vs {want} (mag {mag})",
                            ty.name()
                        );
                    }
                }
            }
        }
    }
}

/// The aarch64 order mirror (`arm_order`) stays a dot: its one-row and two-row forms within
/// float rounding of the scalar dot. On aarch64 the NEON table's dots give its bits.
#[test]
fn arm_order_mirror_and_neon_bits() {
    let mut r = rng(11);
    #[cfg(target_arch = "aarch64")]
    let neon: Vec<_> = fast_tiers().into_iter().filter(|(n, _)| n.starts_with("neon")).collect();
    for ty in [DType::Q4_0, DType::Q4_1, DType::Q8_0] {
        let vdt = sk(ty).vec_dot_type;
        let slow = sk(ty).vec_dot.unwrap();
        for n in lengths(ty) {
            for _rep in 0..3 {
                let w: [Vec<u8>; 2] = std::array::from_fn(|_| rand_row(&mut r, ty, n));
                let a: [Vec<u8>; 2] = std::array::from_fn(|_| rand_row(&mut r, vdt, n));
                let pair = arm_order::dot_pair(ty, n, [&w[0], &w[1]], [&a[0], &a[1]]);
                for i in 0..2 {
                    for j in 0..2 {
                        let want = slow(n, &w[j], &a[i]);
                        let (mag, _) = magnitude_and_dot(ty, vdt, n, &w[j], &a[i]);
                        let one = arm_order::dot(ty, n, &w[j], &a[i]);
                        for (what, got) in [("one row", one), ("pair", pair[i][j])] {
                            let err = (got as f64 - want as f64).abs();
                            assert!(err <= 1e-5 * mag + 1e-30, "arm_order {what} {} n={n}: {got} vs {want}", ty.name());
                        }
                        #[cfg(target_arch = "aarch64")]
                        for (name, table) in &neon {
                            let got = (entry(table, ty).vec_dot.unwrap())(n, &w[j], &a[i]);
                            assert_eq!(got.to_bits(), one.to_bits(), "{name} {} n={n}: {got} vs {one}", ty.name());
                        }
                    }
                }
            }
        }
    }
}

/// The scalar dot equals the dot of the dequantized rows (up to float rounding), which ties the
/// integer paths to the dequantizers.
#[test]
fn scalar_vec_dot_matches_dequantized_dot() {
    let mut r = rng(4);
    for ty in WEIGHT_TYPES {
        let k = sk(ty);
        let vdt = k.vec_dot_type;
        for n in lengths(ty) {
            let w = rand_row(&mut r, ty, n);
            let a = rand_row(&mut r, vdt, n);
            let got = (k.vec_dot.unwrap())(n, &w, &a) as f64;
            let (mag, dot) = magnitude_and_dot(ty, vdt, n, &w, &a);
            // Q4_1 uses q8_1's `s = d*sum(q)` rounded to fp16 (as ggml does), the others only
            // f32 rounding.
            let tol = if ty == DType::Q4_1 { 2e-3 } else { 2e-5 };
            assert!(
                (got - dot).abs() <= tol * mag + 1e-30,
                "{} n={n}: {got} vs {dot} (mag {mag})",
                ty.name()
            );
        }
    }
}

/// Activations quantized by the fast tier dot the same as with the scalar quantizer.
#[test]
fn fast_pipeline_end_to_end() {
    let mut r = rng(5);
    for (name, table) in fast_tiers() {
        for ty in WEIGHT_TYPES {
            let k = entry(table, ty);
            let vdt = k.vec_dot_type;
            let n = 256 * 2;
            let w = rand_row(&mut r, ty, n);
            let x = rand_f32(&mut r, n);
            let mut a = vec![0u8; vdt.row_bytes(n)];
            (entry(table, vdt).from_f32.unwrap())(&x, &mut a);
            let got = (k.vec_dot.unwrap())(n, &w, &a) as f64;
            let wf = to_f32_row(ty, &w, n);
            let exact: f64 = wf.iter().zip(&x).map(|(p, q)| *p as f64 * *q as f64).sum();
            let mag: f64 = wf
                .iter()
                .zip(&x)
                .map(|(p, q)| (*p as f64 * *q as f64).abs())
                .sum();
            // Activation quantization error: 8-bit -> well under 2% of the magnitude.
            assert!(
                (got - exact).abs() <= 0.02 * mag,
                "{name} {}: {got} vs {exact} (mag {mag})",
                ty.name()
            );
        }
    }
}

/// NaN / infinite inputs give unspecified values (as in ggml, whose own paths disagree there)
/// but never a panic or an out-of-bounds access, in any tier.
#[test]
fn non_finite_inputs_do_not_panic() {
    let mut x = vec![1.0f32; 512];
    x[3] = f32::NAN;
    x[40] = f32::INFINITY;
    x[300] = f32::NEG_INFINITY;
    x[301] = f32::NAN;
    let mut tables = fast_tiers();
    tables.push(("scalar", &scalar::TABLE));
    for (_, table) in tables {
        for ty in TYPES {
            let k = entry(table, ty);
            let mut row = rand_row(&mut rng(9), ty, 512);
            if let Some(from) = k.from_f32 {
                from(&x, &mut row);
            }
            let mut y = vec![0f32; 512];
            (k.to_f32)(&row, &mut y);
            if let Some(dot) = k.vec_dot {
                let mut a = vec![0u8; k.vec_dot_type.row_bytes(512)];
                (entry(table, k.vec_dot_type).from_f32.unwrap())(&x, &mut a);
                let _ = dot(512, &row, &a);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Round trips and exact conversions
// ---------------------------------------------------------------------------------------------

#[test]
fn q8_round_trip_error_bounds() {
    let mut r = rng(6);
    for (name, table) in fast_tiers()
        .into_iter()
        .chain([("scalar", &scalar::TABLE as &'static Table)])
    {
        for ty in [
            DType::Q8_0,
            DType::Q8_1,
            DType::Q8_K,
            DType::Q4_0,
            DType::Q4_1,
        ] {
            let k = entry(table, ty);
            let bs = ty.block_size();
            let n = bs * 6;
            let x = rand_f32(&mut r, n);
            let mut q = vec![0u8; ty.row_bytes(n)];
            (k.from_f32.unwrap())(&x, &mut q);
            let mut y = vec![0f32; n];
            (k.to_f32)(&q, &mut y);
            for (b, (xb, yb)) in x.chunks(bs).zip(y.chunks(bs)).enumerate() {
                let amax = xb.iter().fold(0f32, |m, v| m.max(v.abs()));
                let (min, max) = xb
                    .iter()
                    .fold((f32::MAX, f32::MIN), |(lo, hi), v| (lo.min(*v), hi.max(*v)));
                // Error of an fp16-stored scale s: relative 2^-11, or 2^-25 absolute in the
                // fp16 subnormal range.
                let f16_err = |s: f32| (s.abs() * 2f32.powi(-11)).max(2f32.powi(-25));
                let bound = match ty {
                    // d = amax/127 stored as fp16: half a step plus 127 * error of d.
                    DType::Q8_0 | DType::Q8_1 => {
                        0.5 * amax / 127.0 * 1.001 + 127.0 * f16_err(amax / 127.0)
                    }
                    // f32 scale: half a step.
                    DType::Q8_K => 0.5 * amax / 127.0 * 1.001,
                    // Q4_0 clamps the +8 end to 7: up to one step of d = amax/8, plus 8 * error of d.
                    DType::Q4_0 => amax / 8.0 * 1.001 + 8.0 * f16_err(amax / 8.0),
                    // Q4_1: half a step of d = (max-min)/15, plus 15 * error of d and error of m.
                    _ => {
                        0.5 * (max - min) / 15.0 * 1.001
                            + 15.0 * f16_err((max - min) / 15.0)
                            + f16_err(min)
                    }
                };
                for (j, (a, b2)) in xb.iter().zip(yb).enumerate() {
                    assert!(
                        (a - b2).abs() <= bound + 1e-12,
                        "{name} {} block {b} j={j}: {a} -> {b2} (bound {bound})",
                        ty.name()
                    );
                }
            }
        }
    }
}

/// Every f32 class (random bit patterns, subnormals, infinities, NaNs, rounding ties).
fn conversion_inputs(r: &mut StdRng) -> Vec<f32> {
    let mut v: Vec<f32> = (0..20000).map(|_| f32::from_bits(r.gen())).collect();
    v.extend((0..5000).map(|_| r.gen_range(-70000.0f32..70000.0)));
    v.extend((0..2000).map(|_| f32::from_bits(r.gen_range(0..0x0080_0000)))); // f32 subnormals
    v.extend((0..2000).map(|_| r.gen_range(-1e-4f32..1e-4))); // f16 subnormal range
    v.extend([
        0.0,
        -0.0,
        1.0,
        -1.0,
        65504.0,
        65520.0,
        65519.99,
        f32::INFINITY,
        f32::NEG_INFINITY,
    ]);
    v.extend([
        f32::NAN,
        f32::from_bits(0x7fa0_0000),
        f32::from_bits(0xffc0_0001),
        f32::MAX,
        f32::MIN_POSITIVE,
    ]);
    v.extend([
        f32::from_bits(0x3f80_8000),
        f32::from_bits(0x3f81_8000),
        f32::from_bits(0x3f80_1000),
        f32::from_bits(0x3f80_3000),
    ]);
    v.push(3.0); // odd length
    v
}

#[test]
fn f16_bf16_conversions_exact_against_half() {
    let mut r = rng(7);
    let x = conversion_inputs(&mut r);
    let n = x.len();
    let mut tables = fast_tiers();
    tables.push(("scalar", &scalar::TABLE));
    for (name, table) in tables {
        // f32 -> f16 / bf16
        let mut h = vec![0u8; 2 * n];
        (entry(table, DType::F16).from_f32.unwrap())(&x, &mut h);
        let mut b = vec![0u8; 2 * n];
        (entry(table, DType::BF16).from_f32.unwrap())(&x, &mut b);
        for i in 0..n {
            let hv = u16::from_ne_bytes([h[2 * i], h[2 * i + 1]]);
            let bv = u16::from_ne_bytes([b[2 * i], b[2 * i + 1]]);
            let want_h = half::f16::from_f32(x[i]);
            let want_b = half::bf16::from_f32(x[i]);
            if x[i].is_nan() {
                assert!(half::f16::from_bits(hv).is_nan(), "{name} f16 NaN");
                // GGML_FP32_TO_BF16: top 16 bits with the quiet bit set.
                assert_eq!(bv, ((x[i].to_bits() >> 16) | 64) as u16, "{name} bf16 NaN");
            } else {
                assert_eq!(
                    hv,
                    want_h.to_bits(),
                    "{name} f16 of {:e} ({:#x})",
                    x[i],
                    x[i].to_bits()
                );
                assert_eq!(
                    bv,
                    want_b.to_bits(),
                    "{name} bf16 of {:e} ({:#x})",
                    x[i],
                    x[i].to_bits()
                );
            }
            assert_eq!(bv, f32_to_bf16(x[i]));
        }
        // f16 / bf16 -> f32, every bit pattern.
        let all: Vec<u8> = (0..=u16::MAX).flat_map(|v| v.to_ne_bytes()).collect();
        let mut y = vec![0f32; 65536];
        (entry(table, DType::F16).to_f32)(&all, &mut y);
        for (v, got) in (0..=u16::MAX).zip(&y) {
            assert!(
                same_f32(*got, half::f16::from_bits(v).to_f32()),
                "{name} f16 {v:#x}"
            );
        }
        (entry(table, DType::BF16).to_f32)(&all, &mut y);
        for (v, got) in (0..=u16::MAX).zip(&y) {
            assert!(
                same_f32(*got, half::bf16::from_bits(v).to_f32()),
                "{name} bf16 {v:#x}"
            );
            if !got.is_nan() {
                assert_eq!(got.to_bits(), (v as u32) << 16);
            }
        }
    }
}

#[test]
fn nearest_int_is_round_half_even() {
    for (x, want) in [
        (0.5f32, 0),
        (1.5, 2),
        (2.5, 2),
        (-0.5, 0),
        (-1.5, -2),
        (126.5, 126),
        (127.49, 127),
        (-127.5, -128),
        (3.7, 4),
        (-3.2, -3),
    ] {
        assert_eq!(scalar::nearest_int(x), want, "{x}");
    }
    let mut r = rng(8);
    for _ in 0..10000 {
        let x = r.gen_range(-1000.0f32..1000.0);
        assert_eq!(scalar::nearest_int(x), x.round_ties_even() as i32);
    }
}

// ---------------------------------------------------------------------------------------------
// Golden blocks: hand-computed values pinning the scalar reference
// ---------------------------------------------------------------------------------------------

fn check_golden(ty: DType, bytes: &[u8], expect: &[(usize, f32)]) {
    let n = ty.block_size().max(bytes.len() / ty.block_bytes());
    let y = to_f32_row(ty, bytes, n);
    for &(i, v) in expect {
        assert_eq!(y[i], v, "{} element {i}", ty.name());
    }
    // Every tier agrees with the pinned values.
    for (name, table) in fast_tiers() {
        let mut z = vec![0f32; n];
        (entry(table, ty).to_f32)(bytes, &mut z);
        for &(i, v) in expect {
            assert_eq!(z[i], v, "{name} {} element {i}", ty.name());
        }
    }
}

/// Scales/mins bytes of the Q4_K / Q5_K golden blocks. Unpacked (get_scale_min_k4):
/// sc = [1, 2, 3, 4, 17, 3, 5, 7], m = [5, 6, 7, 8, 2, 36, 6, 8].
const GOLDEN_K4_SCALES: [u8; 12] = [
    0x41, 0x02, 0x03, 0x04, 0x05, 0x86, 0x07, 0x08, 0x21, 0x43, 0x65, 0x87,
];

#[test]
fn golden_scale_min_k4() {
    let (sc, m) = scales_mins_k4(&GOLDEN_K4_SCALES);
    assert_eq!(sc, [1, 2, 3, 4, 17, 3, 5, 7]);
    assert_eq!(m, [5, 6, 7, 8, 2, 36, 6, 8]);
}

#[test]
fn golden_plain_types() {
    let f16: Vec<u8> = [0x3C00u16, 0xC000, 0x0001, 0x7BFF, 0x7C00, 0x3555]
        .iter()
        .flat_map(|v| v.to_ne_bytes())
        .collect();
    let y = to_f32_row(DType::F16, &f16, 6);
    assert_eq!(y[..5], [1.0, -2.0, 5.9604645e-8, 65504.0, f32::INFINITY]);
    assert_eq!(y[5], 0.33325195); // 0x3555 = 1.333 * 2^-2
    let bf: Vec<u8> = [0x3F80u16, 0xC040, 0x4049]
        .iter()
        .flat_map(|v| v.to_ne_bytes())
        .collect();
    assert_eq!(to_f32_row(DType::BF16, &bf, 3), [1.0, -3.0, 3.140625]);
    // GGML_FP32_TO_BF16 rounding: ties to even, quiet NaN.
    assert_eq!(f32_to_bf16(f32::from_bits(0x3F80_8000)), 0x3F80);
    assert_eq!(f32_to_bf16(f32::from_bits(0x3F81_8000)), 0x3F82);
    assert_eq!(f32_to_bf16(f32::from_bits(0x3F80_8001)), 0x3F81);
    assert_eq!(f32_to_bf16(f32::from_bits(0x7FA0_0000)), 0x7FE0);
    assert_eq!(f32_to_fp16(f32::from_bits(0x3F80_1000)), 0x3C00);
    assert_eq!(f32_to_fp16(f32::from_bits(0x3F80_3000)), 0x3C02);
    assert_eq!(f32_to_fp16(65520.0), 0x7C00);
}

#[test]
fn golden_q4_0() {
    // d = 0.5; qs[j] = j | (15 - j) << 4  ->  y[j] = (j - 8) / 2, y[16 + j] = (7 - j) / 2.
    let mut b = BlockQ4_0 {
        d: 0x3800,
        qs: [0; 16],
    };
    for j in 0..16 {
        b.qs[j] = j as u8 | ((15 - j as u8) << 4);
    }
    let mut bytes = vec![0u8; 18];
    b.write(&mut bytes);
    assert_eq!(&bytes[..4], &[0x00, 0x38, 0xF0, 0xE1]);
    check_golden(
        DType::Q4_0,
        &bytes,
        &[
            (0, -4.0),
            (5, -1.5),
            (15, 3.5),
            (16, 3.5),
            (20, 1.5),
            (31, -4.0),
        ],
    );
}

#[test]
fn golden_q4_1() {
    // d = 0.25, m = -1.0; same nibbles as Q4_0: y[j] = j/4 - 1, y[16 + j] = (15 - j)/4 - 1.
    let mut b = BlockQ4_1 {
        d: 0x3400,
        m: 0xBC00,
        qs: [0; 16],
    };
    for j in 0..16 {
        b.qs[j] = j as u8 | ((15 - j as u8) << 4);
    }
    let mut bytes = vec![0u8; 20];
    b.write(&mut bytes);
    check_golden(
        DType::Q4_1,
        &bytes,
        &[(0, -1.0), (3, -0.25), (15, 2.75), (16, 2.75), (31, -1.0)],
    );
}

#[test]
fn golden_q8_0_q8_1() {
    // d = 2.0, qs[j] = j - 16.
    let mut qs = [0i8; 32];
    for (j, q) in qs.iter_mut().enumerate() {
        *q = j as i8 - 16;
    }
    let mut bytes = vec![0u8; 34];
    BlockQ8_0 { d: 0x4000, qs }.write(&mut bytes);
    check_golden(DType::Q8_0, &bytes, &[(0, -32.0), (16, 0.0), (31, 30.0)]);
    let mut bytes = vec![0u8; 36];
    BlockQ8_1 {
        d: 0x4000,
        s: 0,
        qs,
    }
    .write(&mut bytes);
    check_golden(DType::Q8_1, &bytes, &[(0, -32.0), (17, 2.0), (31, 30.0)]);
}

#[test]
fn golden_q8_k() {
    let mut b = BlockQ8K::zeroed();
    b.d = 0.125;
    for (j, q) in b.qs.iter_mut().enumerate() {
        *q = (j as i32 - 128) as i8;
    }
    let mut bytes = vec![0u8; 292];
    b.write(&mut bytes);
    check_golden(
        DType::Q8_K,
        &bytes,
        &[(0, -16.0), (128, 0.0), (255, 15.875)],
    );
}

#[test]
fn golden_q4_k() {
    // d = 1, dmin = 0.5, all qs 0x3A (low nibble 10: sub-blocks 0,2,4,6; high 3: 1,3,5,7)
    // except qs[5] = 0xF0. y = d*sc*q - dmin*m.
    let mut b = BlockQ4K {
        d: 0x3C00,
        dmin: 0x3800,
        scales: GOLDEN_K4_SCALES,
        qs: [0x3A; 128],
    };
    b.qs[5] = 0xF0;
    let mut bytes = vec![0u8; 144];
    b.write(&mut bytes);
    check_golden(
        DType::Q4_K,
        &bytes,
        &[
            (0, 7.5),     // 1*10 - 2.5
            (5, -2.5),    // 1*0 - 2.5
            (32, 3.0),    // 2*3 - 3
            (37, 27.0),   // 2*15 - 3
            (64, 26.5),   // 3*10 - 3.5
            (96, 8.0),    // 4*3 - 4
            (128, 169.0), // 17*10 - 1
            (160, -9.0),  // 3*3 - 18
            (192, 47.0),  // 5*10 - 3
            (255, 17.0),  // 7*3 - 4
        ],
    );
}

#[test]
fn golden_q5_k() {
    // As Q4_K, with qh[0] = bit 0 (+16 on element 0) and qh[1] = bit 7 (+16 on element 225).
    let mut b = BlockQ5K {
        d: 0x3C00,
        dmin: 0x3800,
        scales: GOLDEN_K4_SCALES,
        qh: [0; 32],
        qs: [0x3A; 128],
    };
    b.qh[0] = 0b0000_0001;
    b.qh[1] = 0b1000_0000;
    let mut bytes = vec![0u8; 176];
    b.write(&mut bytes);
    check_golden(
        DType::Q5_K,
        &bytes,
        &[
            (0, 23.5),    // 1*26 - 2.5
            (1, 7.5),     // 1*10 - 2.5
            (32, 3.0),    // 2*3 - 3
            (64, 26.5),   // 3*10 - 3.5
            (224, 17.0),  // 7*3 - 4
            (225, 129.0), // 7*19 - 4
        ],
    );
}

#[test]
fn golden_q6_k() {
    // d = 0.5, scales[j] = j - 8, ql all 0x21 (low 1, high 2), qh all 0xE4 (2-bit fields
    // 0, 1, 2, 3): quants per 32-run: -31, -15, 2, 18. y = d * sc * q.
    let mut b = BlockQ6K {
        ql: [0x21; 128],
        qh: [0xE4; 64],
        scales: [0; 16],
        d: 0x3800,
    };
    for (j, s) in b.scales.iter_mut().enumerate() {
        *s = j as i8 - 8;
    }
    let mut bytes = vec![0u8; 210];
    b.write(&mut bytes);
    check_golden(
        DType::Q6_K,
        &bytes,
        &[
            (0, 124.0),   // 0.5 * -8 * -31
            (16, 108.5),  // 0.5 * -7 * -31
            (32, 45.0),   // 0.5 * -6 * -15
            (64, -4.0),   // 0.5 * -4 * 2
            (96, -18.0),  // 0.5 * -2 * 18
            (112, -9.0),  // 0.5 * -1 * 18
            (128, 0.0),   // scale 0
            (144, -15.5), // 0.5 * 1 * -31
            (255, 63.0),  // 0.5 * 7 * 18
        ],
    );
}

#[test]
fn golden_quantizers() {
    // Q8_0 of 0..31: amax = 31, q[j] = round(j * 127 / 31).
    let x: Vec<f32> = (0..32).map(|j| j as f32).collect();
    let mut q = vec![0u8; 34];
    (sk(DType::Q8_0).from_f32.unwrap())(&x, &mut q);
    let b = BlockQ8_0::read(&q);
    assert_eq!(b.d, f32_to_fp16(31.0 / 127.0));
    assert_eq!((b.qs[0], b.qs[1], b.qs[10], b.qs[31]), (0, 4, 41, 127));
    let mut q1 = vec![0u8; 36];
    (sk(DType::Q8_1).from_f32.unwrap())(&x, &mut q1);
    let b1 = BlockQ8_1::read(&q1);
    let sum: i32 = b1.qs.iter().map(|&v| v as i32).sum();
    assert_eq!(b1.s, f32_to_fp16(sum as f32 * (31.0 / 127.0)));

    // Rounding ties: amax = 127 makes id = 1 (q8_0/q8_1) and iscale = -1 (q8_K, max = 127).
    // ggml-cpu rounds half to even on x86 and ARM, half away from zero in the reference C.
    let mut x = vec![0.0f32; 256];
    x[..6].copy_from_slice(&[127.0, 2.5, -3.5, 0.5, -0.5, 1.5]);
    let even = cfg!(any(target_arch = "x86_64", target_arch = "aarch64"));
    let want: [i8; 6] = if even {
        [127, 2, -4, 0, 0, 2]
    } else {
        [127, 3, -4, 1, -1, 2]
    };
    let mut q = vec![0u8; 34];
    (sk(DType::Q8_0).from_f32.unwrap())(&x[..32], &mut q);
    assert_eq!(BlockQ8_0::read(&q).qs[..6], want);
    let mut q = vec![0u8; 36];
    (sk(DType::Q8_1).from_f32.unwrap())(&x[..32], &mut q);
    assert_eq!(BlockQ8_1::read(&q).qs[..6], want);
    let mut q = vec![0u8; 292];
    (sk(DType::Q8_K).from_f32.unwrap())(&x, &mut q);
    let b = BlockQ8K::read(&q);
    assert_eq!(b.d, -1.0);
    assert_eq!(b.qs[..6], [-127, -2, 4, 0, 0, -2]); // nearest_int is always half to even

    // Q8_K: the scale comes from the first element of largest magnitude, with its sign.
    let mut x = vec![0.5f32; 256];
    x[3] = -5.0;
    x[10] = 5.0;
    let mut q = vec![0u8; 292];
    (sk(DType::Q8_K).from_f32.unwrap())(&x, &mut q);
    let b = BlockQ8K::read(&q);
    assert_eq!(b.d, 1.0 / (-127.0f32 / -5.0));
    assert!(b.d > 0.0);
    assert_eq!((b.qs[3], b.qs[10], b.qs[0]), (-127, 127, 13)); // 0.5 * 25.4 = 12.7 -> 13
    assert_eq!(b.bsums[0], 13 * 14 - 127 + 127);
    x[3] = 5.0;
    x[10] = -5.0;
    (sk(DType::Q8_K).from_f32.unwrap())(&x, &mut q);
    let b = BlockQ8K::read(&q);
    assert!(b.d < 0.0);
    assert_eq!((b.qs[3], b.qs[10], b.qs[0]), (-127, 127, -13));

    // Q4_0: d = max / -8 from the signed max; the max itself maps to 0, clamped at 15.
    let mut x = vec![1.0f32; 32];
    x[7] = -4.0;
    x[20] = 4.0;
    let mut q = vec![0u8; 18];
    (sk(DType::Q4_0).from_f32.unwrap())(&x, &mut q);
    let b = BlockQ4_0::read(&q);
    assert_eq!(b.d, f32_to_fp16(0.5));
    assert_eq!(b.qs[7] & 0xF, 0); // -4 / 0.5 + 8.5 = 0.5 -> 0
    assert_eq!(b.qs[4] >> 4, 15); // x[20] = 4: 16.5 -> 16 -> clamped 15
    assert_eq!(b.qs[0] & 0xF, 10); // 1 / 0.5 + 8.5 = 10.5 -> 10

    // Q4_1: min -> 0, max -> 15.
    let x: Vec<f32> = (0..32).map(|j| j as f32 - 1.0).collect();
    let mut q = vec![0u8; 20];
    (sk(DType::Q4_1).from_f32.unwrap())(&x, &mut q);
    let b = BlockQ4_1::read(&q);
    assert_eq!((b.d, b.m), (f32_to_fp16(31.0 / 15.0), f32_to_fp16(-1.0)));
    assert_eq!((b.qs[0] & 0xF, b.qs[15] >> 4), (0, 15));
}

// ---------------------------------------------------------------------------------------------
// Length checks: bad lengths panic (in every tier) instead of reading out of bounds
// ---------------------------------------------------------------------------------------------

fn panics<F: FnOnce() + std::panic::UnwindSafe>(f: F) -> bool {
    std::panic::catch_unwind(f).is_err()
}

#[test]
fn bad_lengths_panic_in_every_tier() {
    let prev = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let mut tables = fast_tiers();
    tables.push(("scalar", &scalar::TABLE));
    for (name, table) in tables {
        for ty in TYPES {
            let k = entry(table, ty);
            let bs = ty.block_size();
            let n = 2 * bs.max(16);
            let bytes = vec![0u8; ty.row_bytes(n)];
            let short = &bytes[..bytes.len() - 1];
            let to_f32 = k.to_f32;
            assert!(
                panics(|| to_f32(short, &mut vec![0f32; n])),
                "{name} {} to_f32 short src",
                ty.name()
            );
            if bs > 1 {
                assert!(
                    panics(|| to_f32(&bytes, &mut vec![0f32; n - 1])),
                    "{name} {} to_f32 odd n",
                    ty.name()
                );
            }
            if let Some(from) = k.from_f32 {
                let mut dst = vec![0u8; ty.row_bytes(n) - 1];
                assert!(
                    panics(move || from(&vec![0f32; n], &mut dst)),
                    "{name} {} from_f32 short dst",
                    ty.name()
                );
                if bs > 1 {
                    let mut dst = vec![0u8; ty.row_bytes(n)];
                    assert!(
                        panics(move || from(&vec![0f32; n - 1], &mut dst)),
                        "{name} {} from_f32 odd n",
                        ty.name()
                    );
                }
            }
            if let Some(dot) = k.vec_dot {
                let vdt = k.vec_dot_type;
                let a = vec![0u8; vdt.row_bytes(n)];
                let (w2, a2) = (bytes.clone(), a.clone());
                assert!(
                    panics(move || {
                        dot(n, &w2[..w2.len() - 1], &a2);
                    }),
                    "{name} {} vec_dot short w",
                    ty.name()
                );
                let (w2, a2) = (bytes.clone(), a.clone());
                assert!(
                    panics(move || {
                        dot(n, &w2, &a2[..a2.len() - 1]);
                    }),
                    "{name} {} vec_dot short a",
                    ty.name()
                );
                if bs > 1 {
                    let (w2, a2) = (bytes.clone(), a.clone());
                    assert!(
                        panics(move || {
                            dot(n - 1, &w2, &a2);
                        }),
                        "{name} {} vec_dot odd n",
                        ty.name()
                    );
                }
                // Correct lengths do not panic, and zero rows dot to zero.
                assert_eq!(dot(n, &bytes, &a), 0.0);
            }
        }
    }
    std::panic::set_hook(prev);
}

/// The four-row BF16 dot gives the bits of four single dots, on odd lengths (whole
/// 4-chunk steps, leftover chunks, a partial tail).
#[cfg(target_arch = "x86_64")]
#[test]
fn bf16_four_row_dot_matches_single_dots_bit_for_bit() {
    if !avx512::has_bf16() {
        eprintln!("no AVX512-BF16: four-row dot not exercised");
        return;
    }
    let mut rng = StdRng::seed_from_u64(31);
    let dot = crate::kernels::KernelSet::get(crate::kernels::Tier::Avx512).unwrap().kernels(DType::BF16).unwrap().vec_dot.unwrap();
    for n in [3072, 32, 1, 17, 200, 131, 512 + 48] {
        let bytes = |rng: &mut StdRng| -> Vec<u8> { (0..n).flat_map(|_| half::bf16::from_f32(rng.gen_range(-2.0..2.0)).to_bits().to_le_bytes()).collect() };
        let rows: Vec<Vec<u8>> = (0..4).map(|_| bytes(&mut rng)).collect();
        let a = bytes(&mut rng);
        let got = avx512::dot_bf16_x4(n, std::array::from_fn(|i| &rows[i][..]), &a).unwrap();
        for i in 0..4 {
            assert_eq!(got[i].to_bits(), dot(n, &rows[i], &a).to_bits(), "n={n} row {i}");
        }
    }
}

/// The AVX2 tier's blocked BF16 dots against the scalar dot, on lengths with and without a
/// tail (scalar sums in f64: agreement to f32 rounding of the chains).
#[test]
#[cfg(target_arch = "x86_64")]
fn avx2_bf16_block_matches_scalar_dots() {
    use super::avx2::{dot_bf16_block, BF16_BLOCK_A, BF16_BLOCK_W};
    if !super::avx2::detected() {
        return;
    }
    let mut state = 7u64;
    let mut next = move || {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    };
    for n in [8usize, 13, 64, 200, 3072] {
        let mut row = |_| {
            let x: Vec<f32> = (0..n).map(|_| next()).collect();
            let mut b = vec![0u8; 2 * n];
            (scalar_kernels(DType::BF16).unwrap().from_f32.unwrap())(&x, &mut b);
            b
        };
        let w: Vec<Vec<u8>> = (0..BF16_BLOCK_W).map(&mut row).collect();
        let a: Vec<Vec<u8>> = (0..BF16_BLOCK_A).map(&mut row).collect();
        let got = dot_bf16_block(n, std::array::from_fn(|i| &w[i][..]), std::array::from_fn(|j| &a[j][..])).unwrap();
        for i in 0..BF16_BLOCK_W {
            for j in 0..BF16_BLOCK_A {
                let want = (scalar_kernels(DType::BF16).unwrap().vec_dot.unwrap())(n, &w[i], &a[j]);
                assert!((got[i][j] - want).abs() <= 1e-5 * n as f32, "n={n} ({i},{j}): {} vs {want}", got[i][j]);
            }
        }
    }
    assert!(dot_bf16_block(16, [&[0u8; 30][..]; 4], [&[0u8; 32][..]; 3]).is_none(), "short row");
}

/// The NEON tier's four-row and 4x3 BF16 dots give the bits of its table's single dot, with
/// and without BFDOT, on lengths with whole chunk pairs, an odd chunk, a partial tail.
#[cfg(target_arch = "aarch64")]
#[test]
fn neon_bf16_blocked_dots_match_single_dots_bit_for_bit() {
    let variants: Vec<bool> = [false, true].into_iter().filter(|&b| neon::table_with(b).is_some()).collect();
    if variants.is_empty() {
        eprintln!("no dotprod: NEON tier not exercised");
        return;
    }
    let mut r = rng(32);
    for bf16 in variants {
        let dot = entry(neon::table_with(bf16).unwrap(), DType::BF16).vec_dot.unwrap();
        for n in [1usize, 7, 8, 16, 17, 24, 31, 200, 515, 1024 + 9] {
            let rows: Vec<Vec<u8>> = (0..7).map(|_| rand_row(&mut r, DType::BF16, n)).collect();
            let w: [&[u8]; 4] = std::array::from_fn(|i| &rows[i][..]);
            let a: [&[u8]; 3] = std::array::from_fn(|j| &rows[4 + j][..]);
            let block = neon::dot_bf16_block(bf16, n, w, a).unwrap();
            let four = neon::dot_bf16_rows_4(bf16, n, w, a[1]).unwrap();
            for i in 0..4 {
                for j in 0..3 {
                    let want = dot(n, w[i], a[j]);
                    assert_eq!(block[i][j].to_bits(), want.to_bits(), "bf16={bf16} n={n} ({i},{j}): {} vs {want}", block[i][j]);
                }
                assert_eq!(four[i].to_bits(), dot(n, w[i], a[1]).to_bits(), "bf16={bf16} n={n} row {i}");
            }
            // And they are dots: within f32 rounding of the scalar reference.
            let want = (sk(DType::BF16).vec_dot.unwrap())(n, w[2], a[0]);
            let (mag, _) = magnitude_and_dot(DType::BF16, DType::BF16, n, w[2], a[0]);
            assert!(((block[2][0] - want).abs() as f64) <= 1e-5 * mag + 1e-30, "bf16={bf16} n={n}");
        }
        let short = [0u8; 30];
        assert!(neon::dot_bf16_block(bf16, 16, [&short[..]; 4], [&[0u8; 32][..]; 3]).is_none(), "short row");
        assert!(neon::dot_bf16_rows_4(bf16, 16, [&[0u8; 32][..]; 4], &short).is_none(), "short act");
    }
    // The registry hands out the variant its table uses.
    if let Some(set) = crate::kernels::KernelSet::get(crate::kernels::Tier::Neon) {
        let (n, rows) = (37, (0..4).map(|_| rand_row(&mut r, DType::BF16, 37)).collect::<Vec<_>>());
        let w: [&[u8]; 4] = std::array::from_fn(|i| &rows[i][..]);
        let dot = set.kernels(DType::BF16).unwrap().vec_dot.unwrap();
        let four = (set.dense.bf16_rows_4.unwrap())(n, w, &rows[3]).unwrap();
        let block = (set.dense.bf16_block_4x3.unwrap())(n, w, [&rows[0][..], &rows[1][..], &rows[2][..]]).unwrap();
        for i in 0..4 {
            assert_eq!(four[i].to_bits(), dot(n, w[i], &rows[3]).to_bits(), "{} row {i}", set.name);
            assert_eq!(block[i][1].to_bits(), dot(n, w[i], &rows[1]).to_bits(), "{} ({i},1)", set.name);
        }
    }
}

/// Every tier's F32 GEMM block gives, per output, the bits of the scalar chain in its lane
/// count and horizontal order (ggml's tinyBLAS on that tier), over k of 1 to 9 chunks; it
/// declines short rows and k that is not whole chunks. And it is a dot: within f32
/// rounding of the f64 sum.
#[test]
fn f32_gemm_blocks_follow_the_tier_order() {
    use crate::kernels::KernelSet;
    let mut r = rng(35);
    let mut tested = Vec::new();
    for set in KernelSet::available() {
        let Some(g) = set.dense.f32_gemm else { continue };
        for chunks in [1, 2, 5, 9] {
            let n = chunks * g.lanes;
            let rows: Vec<Vec<u8>> = (0..7).map(|_| rand_row(&mut r, DType::F32, n)).collect();
            let w: [&[u8]; 4] = std::array::from_fn(|i| &rows[i][..]);
            let a: [&[u8]; 3] = std::array::from_fn(|j| &rows[4 + j][..]);
            let block = (g.block)(n, w, a).unwrap();
            for i in 0..4 {
                for j in 0..3 {
                    let want = match g.lanes {
                        16 => scalar::f32_gemm_dot::<16>(n, w[i], a[j], crate::kernels::vmath::reduce16),
                        8 => scalar::f32_gemm_dot::<8>(n, w[i], a[j], scalar::reduce8_avx2),
                        l => panic!("no reference order for {l} lanes"),
                    };
                    assert_eq!(block[i][j].to_bits(), want.to_bits(), "{} n={n} ({i},{j}): {} vs {want}", set.name, block[i][j]);
                    let (mag, exact) = magnitude_and_dot(DType::F32, DType::F32, n, w[i], a[j]);
                    assert!(((block[i][j] as f64 - exact).abs()) <= 1e-5 * mag + 1e-30, "{} n={n}: not a dot", set.name);
                }
            }
        }
        let row = rand_row(&mut r, DType::F32, g.lanes + 1);
        assert!((g.block)(g.lanes + 1, [&row[..]; 4], [&row[..]; 3]).is_none(), "{}: k not whole chunks", set.name);
        assert!((g.block)(2 * g.lanes, [&row[..]; 4], [&row[..]; 3]).is_none(), "{}: short rows", set.name);
        tested.push(set.tier);
    }
    #[cfg(target_arch = "x86_64")]
    if crate::kernels::quant::avx2::table().is_some() {
        assert!(tested.contains(&crate::kernels::Tier::Avx2), "the AVX2 tier has an F32 GEMM block");
    }
    // Only the x86 tiers have this block so far: nothing to log elsewhere (an empty family
    // would fail SMEPILOT_EXPECT_TIERS=neon).
    if !tested.is_empty() {
        crate::kernels::registry::log_tiers_run("quant::f32_gemm", KernelSet::available().iter().filter(|s| tested.contains(&s.tier)).map(|s| s.name));
    }
}

/// A fixed Q4_0 · Q8_0 workload for instruction counting under QEMU (`qemu-icount.py`): each
/// tier's dot on the same 4096-element rows, 8 times; checks they agree.
#[test]
#[ignore]
fn q4_0_dot_workload_for_icount() {
    let mut r = rng(33);
    let n = 4096;
    let w = rand_row(&mut r, DType::Q4_0, n);
    let a = rand_row(&mut r, DType::Q8_0, n);
    let want = (sk(DType::Q4_0).vec_dot.unwrap())(n, &w, &a);
    let (mag, _) = magnitude_and_dot(DType::Q4_0, DType::Q8_0, n, &w, &a);
    for (name, table) in fast_tiers().into_iter().chain([("scalar", &scalar::TABLE as &'static Table)]) {
        let dot = entry(table, DType::Q4_0).vec_dot.unwrap();
        for _ in 0..8 {
            let got = std::hint::black_box(dot)(n, std::hint::black_box(&w), &a);
            assert!(((got - want).abs() as f64) <= 1e-5 * mag, "{name}: {got} vs {want}");
        }
    }
}
