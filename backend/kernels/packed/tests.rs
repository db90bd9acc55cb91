//! Packed layouts: round trips, and the GEMV tiers against ggml's scalar block dot on the
//! unpacked rows.

use super::q4_0x16;
use crate::backend::dtype::DType;
use crate::backend::kernels::quant::scalar_kernels;
use rand::{rngs::StdRng, Rng, SeedableRng};

fn q4_0_rows(rng: &mut StdRng, n: usize, k: usize) -> Vec<u8> {
    let q = scalar_kernels(DType::Q4_0).unwrap().from_f32.unwrap();
    let rb = DType::Q4_0.row_bytes(k);
    let mut out = vec![0u8; n * rb];
    for r in 0..n {
        let x: Vec<f32> = (0..k).map(|_| rng.gen_range(-1.0..1.0)).collect();
        q(&x, &mut out[r * rb..(r + 1) * rb]);
    }
    out
}

#[test]
fn q4_0x16_pack_unpack_round_trip() {
    let mut rng = StdRng::seed_from_u64(3);
    for &(n, nb) in &[(16, 1), (32, 3), (48, 7)] {
        let raw = q4_0_rows(&mut rng, n, nb * 32);
        let mut packed = vec![0u8; raw.len()];
        let mut back = vec![0u8; raw.len()];
        q4_0x16::pack(&raw, &mut packed, n, nb);
        assert_ne!(packed, raw);
        q4_0x16::unpack(&packed, &mut back, n, nb);
        assert_eq!(back, raw);
        let deq = scalar_kernels(DType::Q4_0).unwrap().to_f32;
        let (mut want, mut got) = (vec![0f32; nb * 32], vec![0f32; nb * 32]);
        let rb = DType::Q4_0.row_bytes(nb * 32);
        for r in 0..n {
            deq(&raw[r * rb..(r + 1) * rb], &mut want);
            let p = super::PackedRef { layout: super::Layout::Q4_0x16, data: packed.as_ptr() };
            super::row_to_f32(&p, nb * 32, r, &mut got);
            assert_eq!(got, want, "row {r}");
        }
    }
}

#[test]
fn q4_0x16_gemv_matches_scalar_dot() {
    let mut rng = StdRng::seed_from_u64(5);
    let sk = scalar_kernels(DType::Q4_0).unwrap();
    let q8 = scalar_kernels(DType::Q8_0).unwrap().from_f32.unwrap();
    for &(n, nb, m) in &[(16, 1, 1), (32, 5, 3), (48, 9, 7), (16, 96, 4)] {
        let k = nb * 32;
        let raw = q4_0_rows(&mut rng, n, k);
        let mut packed = vec![0u8; raw.len()];
        q4_0x16::pack(&raw, &mut packed, n, nb);
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
        let gb = nb * q4_0x16::GROUP_BLOCK;
        for g in 0..n / 16 {
            let group = &packed[g * gb..(g + 1) * gb];
            let mut fast = vec![[0f32; 16]; m];
            let mut slow = vec![[0f32; 16]; m];
            super::gemv_q4_0x16(nb, group, &a_refs, &s_refs, &mut fast);
            q4_0x16::gemv_group_scalar(nb, group, &a_refs, &s_refs, &mut slow);
            for i in 0..m {
                for r in 0..16 {
                    let row = &raw[(g * 16 + r) * DType::Q4_0.row_bytes(k)..][..DType::Q4_0.row_bytes(k)];
                    let want = (sk.vec_dot.unwrap())(k, row, &acts[i]);
                    let tol = 1e-5 * (k as f32);
                    assert!((slow[i][r] - want).abs() <= tol, "scalar n={n} nb={nb} ({i},{r}): {} vs {want}", slow[i][r]);
                    assert!((fast[i][r] - want).abs() <= tol, "fast n={n} nb={nb} ({i},{r}): {} vs {want}", fast[i][r]);
                }
            }
        }
    }
}

/// Throughput of the packed GEMV on cache-resident weights (ignored; by hand).
#[test]
#[ignore]
fn q4_0x16_gemv_cache_resident_speed() {
    let (n, nb) = (1024usize, 96usize);
    let packed = vec![0x5au8; n * nb * 18];
    let act = vec![1u8; nb * 34];
    let sums = vec![3i32; nb];
    let gb = nb * q4_0x16::GROUP_BLOCK;
    let mut out = [[0f32; 16]; 1];
    let reps = 200;
    let t0 = std::time::Instant::now();
    for _ in 0..reps {
        for g in 0..n / 16 {
            super::gemv_q4_0x16(nb, &packed[g * gb..(g + 1) * gb], &[&act], &[&sums], &mut out);
        }
    }
    let dt = t0.elapsed().as_secs_f64();
    eprintln!("packed Q4_0 GEMV, M=1, one core, L2-resident: {:.1} GB/s", (reps * packed.len()) as f64 / dt / 1e9);
}
