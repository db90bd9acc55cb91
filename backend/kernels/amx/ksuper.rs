//! AMX int8 micro-kernel for the K-quants (Q4_K, Q5_K, Q6_K) against Q8_K activations,
//! one 256-element super-block per drain: `out[m][n] = sum_k act[m][k] * w[n][k]`.
//!
//! A K-quant weight is `d * sc_j * q - dmin * m_j` with small integer sub-block scales sc_j
//! and minimums m_j, so within a super-block its products with int8 activations are exact
//! integers: `sum_k a_k sc_j q_k`, the sum ggml-cpu's own dot forms before it applies d. The
//! integer weight `p = sc_j q` (Q6_K: `sc_j (q - 32)`) needs up to 13 bits, so it is staged
//! as two int8 halves, `p = 64 hi + lo` (lo in 0 .. 63), and the tiles accumulate both halves
//! over the whole super-block at 64 bytes of K per product (the tile unit takes as long for
//! 32 bytes as for 64, so this costs what the per-32-block kernel costs in products) while
//! results leave the tiles once per super-block instead of once per 32-element block.
//!
//! Per super-block: `acc += (float)(64 hi + lo) * (d_a * d_w)`, then, for the types with
//! minimums, `acc += (float)(sum_j m_j bsum_j) * (d_a * -dmin_w)`, the minimum products
//! summed exactly in integers (VNNI word dots of the minimums with the activations' 32-element
//! sums), as ggml-cpu sums them.
//!
//! Tiles: 0 .. 3 results (row tile 0 hi, lo; row tile 1 hi, lo), 4, 5 activation rows
//! (A: 16 rows x 64 int8), 6, 7 one column tile's hi and lo weights (B: 16 rows of 16 columns
//! x 4 int8). A call computes 32 activation rows x 16 weight columns.

use super::tile;
use crate::kernels::prefetch::Spread;
use std::arch::x86_64::*;

/// K elements per super-block and per product step.
pub const SUPER: usize = 256;
pub const KSTEP: usize = 64;
/// Bytes of one A or B tile.
pub const TILE: usize = 1024;
/// Product steps per super-block.
pub const STEPS: usize = SUPER / KSTEP;
/// The split of the integer weight: `p = (hi << SHIFT) + lo`.
pub const SHIFT: u32 = 6;

/// The column operand (weights), column tile `ct` (16 weight rows) and super-block `sb` at
/// `i = ct * nsb + sb`: B tiles `q + (i * 2 * STEPS + 2 s + h) * TILE` for step s and half h
/// (0: hi, 1: lo), element (column c, k) at `(k / 4) * 64 + c * 4 + k % 4`; `d[i * 16 + c]`
/// the super-block scale; for types with minimums `nmin[i * 16 + c]` = -dmin and
/// `mins[(i * 4 + p) * 16 + c]` = sub-block minimums 2p and 2p + 1 as two i16 in a u32.
#[derive(Clone, Copy)]
pub struct ColsKs {
    pub q: *const u8,
    pub d: *const f32,
    pub nmin: *const f32,
    pub mins: *const u32,
    pub nsb: usize,
}

/// The row operand (activations as Q8_K), one row tile of 16: A tile of super-block sb,
/// step s at `q + (sb * STEPS + s) * TILE` (row r's 64 values at `r * 64`); `d[sb * 16 + r]`
/// the Q8_K scale; `bsums[(sb * 16 + r) * 4 + p]` the sums of 32-element sub-blocks 2p and
/// 2p + 1 as two i16 (null: the weights have no minimums).
#[derive(Clone, Copy)]
pub struct RowsKs {
    pub q: *const u8,
    pub d: *const f32,
    pub bsums: *const u32,
}

/// Loads this kernel's tile configuration on this thread until the session drops.
///
/// # Safety
/// AMX is available and permitted ([`super::available`]).
pub unsafe fn session() -> tile::TileSession {
    // SAFETY: this fn's contract is `TileSession::begin`'s.
    unsafe { tile::TileSession::begin(&tile::ALL_16X64) }
}

#[repr(C, align(64))]
struct Results([[[i32; 256]; 4]; 2]);

/// One super-block's results of the first `tiles` row tiles (`c`: hi, lo of row tile 0,
/// then of row tile 1) scaled into `acc`.
#[inline(always)]
unsafe fn drain(c: &[[i32; 256]; 4], cols: &ColsKs, ct: usize, rows: [&RowsKs; 2], sb: usize, acc: [&mut [[f32; 16]; 16]; 2], tiles: usize) {
    // SAFETY: the only caller is `ks_block`, which enables AVX-512F/VNNI and, by its
    // `# Safety` contract, passes operands holding super-block sb of column tile ct (16
    // scales, minimum factors and 4 x 16 minimum pairs) and of both row tiles (16 scales and,
    // where the weights have minimums, 16 x 4 sum pairs).
    unsafe {
        let i = ct * cols.nsb + sb;
        let dw = _mm512_loadu_ps(cols.d.add(i * 16));
        let with_min = !rows[0].bsums.is_null();
        let (nmin, mins) = if with_min {
            let m = |p: usize| _mm512_loadu_si512(cols.mins.add((i * 4 + p) * 16) as *const _);
            (_mm512_loadu_ps(cols.nmin.add(i * 16)), [m(0), m(1), m(2), m(3)])
        } else {
            (_mm512_setzero_ps(), [_mm512_setzero_si512(); 4])
        };
        for (rt, a) in acc.into_iter().enumerate().take(tiles) {
            let (hi, lo) = (&c[2 * rt], &c[2 * rt + 1]);
            let rows = rows[rt];
            for (r, out) in a.iter_mut().enumerate() {
                let h = _mm512_load_si512(hi[r * 16..].as_ptr() as *const _);
                let l = _mm512_load_si512(lo[r * 16..].as_ptr() as *const _);
                let sumi = _mm512_add_epi32(_mm512_slli_epi32::<{ SHIFT }>(h), l);
                let da = _mm512_set1_ps(*rows.d.add(sb * 16 + r));
                let mut v = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sumi), _mm512_mul_ps(da, dw), _mm512_loadu_ps(out.as_ptr()));
                if with_min {
                    let bs = rows.bsums.add((sb * 16 + r) * 4);
                    let mut mi = _mm512_setzero_si512();
                    for (p, m) in mins.iter().enumerate() {
                        mi = _mm512_dpwssd_epi32(mi, *m, _mm512_set1_epi32(*bs.add(p) as i32));
                    }
                    v = _mm512_fmadd_ps(_mm512_cvtepi32_ps(mi), _mm512_mul_ps(da, nmin), v);
                }
                _mm512_storeu_ps(out.as_mut_ptr(), v);
            }
        }
    }
}

/// Row tiles `rows[0]`, `rows[1]` against column tile `ct` over all `cols.nsb`
/// super-blocks, into `acc[0]` (row tile 0) and `acc[1]` (overwritten): per step, two A and
/// two B tile loads feed four products; the results of a super-block are stored to L1
/// (double-buffered) and scaled while the tiles run the next. With `PAIR` false, row tile
/// `rows[0]` alone into `acc[0]` (`rows[1]` not read, `acc[1]` zeroed): half the products
/// and drains for a last odd row tile. `pf` (the next work item's weights) is prefetched a
/// step per tile step.
///
/// # Safety
/// A [`session`] is open on this thread; `cols` holds column tile `ct` and the row tiles
/// read hold `cols.nsb` super-blocks (with sums where the weights have minimums: both or
/// neither of `rows[..].bsums` and `cols.mins` / `cols.nmin` are set).
#[target_feature(enable = "avx512f,avx512vnni")]
pub unsafe fn ks_block<const PAIR: bool>(cols: &ColsKs, ct: usize, rows: [&RowsKs; 2], acc: [&mut [[f32; 16]; 16]; 2], pf: &Spread) {
    let nsb = cols.nsb;
    let [a0, a1] = acc;
    *a0 = [[0.0; 16]; 16];
    *a1 = [[0.0; 16]; 16];
    let mut cbuf = Results([[[0; 256]; 4]; 2]);
    // SAFETY: this fn's `# Safety` contract: the configuration is loaded (16 x 64 tiles), and
    // column tile ct's 2 * STEPS B tiles per super-block and both row tiles' STEPS A tiles per
    // super-block are readable, so every tile load stays within them; the stores fill
    // `cbuf`'s 1 KB tiles. AVX-512F/VNNI are this fn's target features.
    unsafe {
        let b = cols.q.add(ct * nsb * 2 * STEPS * TILE);
        for sb in 0..=nsb {
            if sb < nsb {
                tile::zero::<0>();
                tile::zero::<1>();
                tile::zero::<2>();
                tile::zero::<3>();
                for s in 0..STEPS {
                    let st = sb * STEPS + s;
                    pf.step(st);
                    tile::load::<4>(rows[0].q.add(st * TILE), 64);
                    tile::load::<6>(b.add(2 * st * TILE), 64);
                    tile::dpbssd::<0, 4, 6>();
                    tile::load::<7>(b.add((2 * st + 1) * TILE), 64);
                    tile::dpbssd::<1, 4, 7>();
                    if PAIR {
                        tile::load::<5>(rows[1].q.add(st * TILE), 64);
                        tile::dpbssd::<2, 5, 6>();
                        tile::dpbssd::<3, 5, 7>();
                    }
                }
            }
            if sb > 0 {
                drain(&cbuf.0[(sb - 1) & 1], cols, ct, rows, sb - 1, [&mut *a0, &mut *a1], if PAIR { 2 } else { 1 });
            }
            if sb < nsb {
                let c = cbuf.0[sb & 1].as_mut_ptr() as *mut u8;
                tile::store::<0>(c, 64);
                tile::store::<1>(c.add(1024), 64);
                if PAIR {
                    tile::store::<2>(c.add(2048), 64);
                    tile::store::<3>(c.add(3072), 64);
                }
            }
        }
    }
}
