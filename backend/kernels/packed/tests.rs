//! Packed layouts: round trips, row dequantization against ggml's, and the GEMV tiers against
//! ggml's scalar block dot on the unpacked rows.

use super::{q4_0x16, q8_0x16, Layout, PackedRef};
use crate::backend::dtype::DType;
use crate::backend::kernels::quant::scalar_kernels;
use rand::{rngs::StdRng, Rng, SeedableRng};

type PackFn = fn(&[u8], &mut [u8], usize, usize);
type RowFn = fn(&[u8], usize, usize, &mut [f32]);
type GemvFn = fn(usize, &[u8], &[&[u8]], &[&[i32]], &mut [[f32; 16]]);

struct Case {
    ty: DType,
    layout: Layout,
    pack: PackFn,
    unpack: PackFn,
    row: RowFn,
    gemv_scalar: GemvFn,
}

const CASES: [Case; 2] = [
    Case { ty: DType::Q4_0, layout: Layout::Q4_0x16, pack: q4_0x16::pack, unpack: q4_0x16::unpack, row: q4_0x16::row_to_f32, gemv_scalar: q4_0x16::gemv_group_scalar },
    Case { ty: DType::Q8_0, layout: Layout::Q8_0x16, pack: q8_0x16::pack, unpack: q8_0x16::unpack, row: q8_0x16::row_to_f32, gemv_scalar: q8_0x16::gemv_group_scalar },
];

fn rows(rng: &mut StdRng, ty: DType, n: usize, k: usize) -> Vec<u8> {
    let q = scalar_kernels(ty).unwrap().from_f32.unwrap();
    let rb = ty.row_bytes(k);
    let mut out = vec![0u8; n * rb];
    for r in 0..n {
        let x: Vec<f32> = (0..k).map(|_| rng.gen_range(-1.0..1.0)).collect();
        q(&x, &mut out[r * rb..(r + 1) * rb]);
    }
    out
}

#[test]
fn pack_unpack_round_trip_and_rows_match_ggml() {
    let mut rng = StdRng::seed_from_u64(3);
    for c in &CASES {
        assert_eq!(Layout::for_weights(c.ty, 64, 32), Some(c.layout));
        assert_eq!(Layout::for_weights(c.ty, 64, 31), None, "rows not a multiple of 16");
        for &(n, nb) in &[(16, 1), (32, 3), (48, 7)] {
            let raw = rows(&mut rng, c.ty, n, nb * 32);
            let mut packed = vec![0u8; raw.len()];
            let mut back = vec![0u8; raw.len()];
            (c.pack)(&raw, &mut packed, n, nb);
            assert_ne!(packed, raw);
            (c.unpack)(&packed, &mut back, n, nb);
            assert_eq!(back, raw, "{:?}", c.ty);
            let deq = scalar_kernels(c.ty).unwrap().to_f32;
            let (mut want, mut got) = (vec![0f32; nb * 32], vec![0f32; nb * 32]);
            let rb = c.ty.row_bytes(nb * 32);
            let gb = nb * c.layout.group_block();
            for r in 0..n {
                deq(&raw[r * rb..(r + 1) * rb], &mut want);
                let p = PackedRef { layout: c.layout, data: packed.as_ptr() };
                super::row_to_f32(&p, nb * 32, r, &mut got);
                assert_eq!(got, want, "{:?} row {r}", c.ty);
                (c.row)(&packed[(r / 16) * gb..(r / 16 + 1) * gb], nb, r % 16, &mut got);
                assert_eq!(got, want, "{:?} scalar row {r}", c.ty);
            }
        }
    }
}

#[test]
fn gemv_tiers_match_the_scalar_block_dot() {
    let mut rng = StdRng::seed_from_u64(5);
    let q8 = scalar_kernels(DType::Q8_0).unwrap().from_f32.unwrap();
    for c in &CASES {
        let sk = scalar_kernels(c.ty).unwrap();
        for &(n, nb, m) in &[(16, 1, 1), (32, 5, 3), (48, 9, 7), (16, 96, 4), (16, 3, 15)] {
            let k = nb * 32;
            let raw = rows(&mut rng, c.ty, n, k);
            let mut packed = vec![0u8; raw.len()];
            (c.pack)(&raw, &mut packed, n, nb);
            let acts: Vec<Vec<u8>> = (0..m)
                .map(|_| {
                    let x: Vec<f32> = (0..k).map(|_| rng.gen_range(-2.0..2.0)).collect();
                    let mut a = vec![0u8; DType::Q8_0.row_bytes(k)];
                    q8(&x, &mut a);
                    a
                })
                .collect();
            let sums: Vec<Vec<i32>> = acts
                .iter()
                .map(|a| (0..nb).map(|b| a[b * 34 + 2..b * 34 + 34].iter().map(|&v| v as i8 as i32).sum()).collect())
                .collect();
            let a_refs: Vec<&[u8]> = acts.iter().map(|a| a.as_slice()).collect();
            let s_refs: Vec<&[i32]> = sums.iter().map(|s| s.as_slice()).collect();
            let gb = nb * c.layout.group_block();
            let rb = c.ty.row_bytes(k);
            for g in 0..n / 16 {
                let group = &packed[g * gb..(g + 1) * gb];
                let mut fast = vec![[0f32; 16]; m];
                let mut slow = vec![[0f32; 16]; m];
                super::gemv(c.layout, nb, group, &a_refs, &s_refs, &mut fast);
                (c.gemv_scalar)(nb, group, &a_refs, &s_refs, &mut slow);
                for i in 0..m {
                    for r in 0..16 {
                        let row = &raw[(g * 16 + r) * rb..][..rb];
                        let want = (sk.vec_dot.unwrap())(k, row, &acts[i]);
                        let tol = 1e-5 * (k as f32) * if c.ty == DType::Q8_0 { 8.0 } else { 1.0 };
                        assert!((slow[i][r] - want).abs() <= tol, "{:?} scalar n={n} nb={nb} ({i},{r}): {} vs {want}", c.ty, slow[i][r]);
                        assert!((fast[i][r] - want).abs() <= tol, "{:?} fast n={n} nb={nb} ({i},{r}): {} vs {want}", c.ty, fast[i][r]);
                    }
                }
            }
        }
    }
}

/// Throughput of the packed GEMVs on cache-resident weights (ignored; by hand).
#[test]
#[ignore]
fn gemv_cache_resident_speed() {
    for c in &CASES {
        let (n, nb) = (1024usize, 96usize);
        let packed = vec![0x5au8; n * nb * c.layout.group_block() / 16];
        let act = vec![1u8; nb * 34];
        let sums = vec![3i32; nb];
        let gb = nb * c.layout.group_block();
        let mut out = [[0f32; 16]; 1];
        let reps = 200;
        let t0 = std::time::Instant::now();
        for _ in 0..reps {
            for g in 0..n / 16 {
                super::gemv(c.layout, nb, &packed[g * gb..(g + 1) * gb], &[&act], &[&sums], &mut out);
            }
        }
        let dt = t0.elapsed().as_secs_f64();
        eprintln!("{:?} GEMV, M=1, one core, L2-resident: {:.1} GB/s", c.layout, (reps * packed.len()) as f64 / dt / 1e9);
    }
}
