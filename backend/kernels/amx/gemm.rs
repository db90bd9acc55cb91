//! AMX matrix-multiplication micro-kernels: `out[m][n] = sum_k act[m][k] * w[n][k]`.
//!
//! Operand roles: the weight rows are the A operand (16 rows of K-contiguous data, which is
//! ggml's own row layout: BF16 and Q8_0 rows are loaded straight from the model, other types
//! are unpacked row by row), the activations are the B operand, rearranged once per call into
//! the tile unit's VNNI order. A result tile therefore holds 16 weight rows x 16 activation
//! rows and is transposed once, at the end of K, into `out`.
//!
//! Tile loads, not products, bound this machine (a 1 KB `tileloadd` costs more than one
//! 16 x 16 x 32 bf16 product), so both kernels compute a 32 x 32 output block from two A and
//! two B tiles per step: every loaded tile feeds two products.
//!
//! * [`i8_block`]: int8 (TDPBSSD) with per-32-block scales. One product covers one block
//!   (K = 32: the hardware takes as long as for 64 bytes, so block-scaled int8 tops out at half
//!   the int8 peak). Each block's int32 results go through L1 and are scaled in f32 on the
//!   vector units into accumulators.
//! * [`bf16_block`]: bf16 (TDPBF16PS), f32 accumulation in the tiles over the whole K.

use super::rows::BF16_ATILE;
use super::tile::{self, TileConfig};
use crate::kernels::prefetch::Spread;
use std::arch::x86_64::*;

/// Elements of K per int8 block and per bf16 step.
pub const I8_KBLOCK: usize = 32;
pub const BF16_KSTEP: usize = 32;
/// Bytes of one B tile: int8 (8 rows of 16 columns x 4 k) and bf16 (16 rows of 16
/// activation rows x 2 k).
pub const I8_BTILE: usize = 512;
pub const BF16_BTILE: usize = 1024;

/// The int8 kernel's column operand (B tiles), per 32-block: column tile `mt` (16 columns
/// of the result), block b at `q + (mt * nb + b) * I8_BTILE`, element (column i, k) at
/// `(k / 4) * 64 + i * 4 + k % 4`; scales `d[(mt * nb + b) * 16 + i]` and, where the rows
/// carry the other factor of a minimum term, `s[..]` (its factor per column and block).
/// The driver puts weights here (the packed layouts' lanes are these columns).
#[derive(Clone, Copy)]
pub struct ColsI8 {
    pub q: *const u8,
    pub d: *const f32,
    pub s: *const f32,
    pub nb: usize,
}

/// The int8 kernel's row operand (A tiles), 16 rows of the result: block b of row r at
/// `q + r * stride + b * block_step` (32 bytes), its scale `d[b * 16 + r]`, the other
/// factor of its minimum term `m[b * 16 + r]` (null: no minimum term). Rows past the last
/// must read as zeros or be ignored by the caller. The driver puts quantized activation
/// rows here (16 rows of a block in 512 contiguous bytes).
#[derive(Clone, Copy)]
pub struct RowsI8 {
    pub q: *const u8,
    pub stride: usize,
    pub block_step: usize,
    pub d: *const f32,
    pub m: *const f32,
}

/// Accumulators of a 32 x 32 block: `[row tile][column tile]`, each 16 rows x 16 columns
/// (`i8_block`: index 2 x row tile + column tile).
#[repr(C, align(64))]
pub struct Block32(pub [[[f32; 16]; 16]; 4]);

impl Block32 {
    pub fn new() -> Block32 {
        Block32([[[0.0; 16]; 16]; 4])
    }

    /// Writes the block transposed: `out[i * out_stride + r]` = result for activation row i
    /// (< `rows_m`) and weight row r (< `rows_n`).
    ///
    /// # Safety
    /// `out` is writable for `rows_m` rows of `rows_n` floats, `out_stride` apart.
    #[inline]
    pub unsafe fn store_transposed(&self, out: *mut f32, out_stride: usize, rows_m: usize, rows_n: usize) {
        for i in 0..rows_m {
            let (mt, ii) = (i / 16, i % 16);
            for r in 0..rows_n {
                let (nt, rr) = (r / 16, r % 16);
                // SAFETY: the caller's contract above.
                unsafe { *out.add(i * out_stride + r) = self.0[nt * 2 + mt][rr][ii] };
            }
        }
    }
}

impl Default for Block32 {
    fn default() -> Self {
        Self::new()
    }
}

const I8_CONFIG: TileConfig = TileConfig::new()
    .with(0, 16, 64)
    .with(1, 16, 64)
    .with(2, 16, 64)
    .with(3, 16, 64)
    .with(4, 16, 32) // A (rows): 16 rows x one block of 32 int8
    .with(5, 16, 32)
    .with(6, 8, 64) // B (columns): 8 rows of 16 columns x 4 int8
    .with(7, 8, 64);

/// Loads the int8 kernel's tile configuration on this thread until the session drops.
///
/// # Safety
/// AMX is available and permitted ([`super::available`]).
pub unsafe fn i8_session() -> tile::TileSession {
    // SAFETY: this fn's `# Safety` contract: AMX is available and permitted, as
    // `TileSession::begin` requires.
    unsafe {
        tile::TileSession::begin(&I8_CONFIG)
    }
}

/// acc[r] += c[r] * (dw[r] * da) (+ mw[r] * sa): one block's int32 results (`c`, 16 rows x
/// 16 columns) scaled into the accumulators.
#[inline(always)]
unsafe fn scale_block(acc: &mut [[f32; 16]; 16], c: *const i32, act: &ColsI8, mt: usize, w: &RowsI8, b: usize) {
    // SAFETY: the only caller is `i8_block`, which enables AVX-512F and, by its `# Safety`
    // contract, passes `act` holding column tile `mt` (16 scales and minimum factors per
    // block at `at`) and `w` holding 16 scales (and minimum factors) for block b; `c` is one
    // 64-byte aligned 16 x 16 int32 tile of its `TileBuf`.
    unsafe {
        let at = (mt * act.nb + b) * 16;
        let da = _mm512_loadu_ps(act.d.add(at));
        let dw = w.d.add(b * 16);
        if w.m.is_null() {
            for (r, a) in acc.iter_mut().enumerate() {
                let v = _mm512_cvtepi32_ps(_mm512_load_si512(c.add(r * 16) as *const _));
                let s = _mm512_mul_ps(da, _mm512_set1_ps(*dw.add(r)));
                _mm512_storeu_ps(a.as_mut_ptr(), _mm512_fmadd_ps(v, s, _mm512_loadu_ps(a.as_ptr())));
            }
        } else {
            let sa = _mm512_loadu_ps(act.s.add(at));
            let mw = w.m.add(b * 16);
            for (r, a) in acc.iter_mut().enumerate() {
                let v = _mm512_cvtepi32_ps(_mm512_load_si512(c.add(r * 16) as *const _));
                // ggml-cpu's order (its AMX kernel): the product term first, then the minimum's.
                let s = _mm512_mul_ps(da, _mm512_set1_ps(*dw.add(r)));
                let t = _mm512_fmadd_ps(v, s, _mm512_loadu_ps(a.as_ptr()));
                _mm512_storeu_ps(a.as_mut_ptr(), _mm512_fmadd_ps(sa, _mm512_set1_ps(*mw.add(r)), t));
            }
        }
    }
}

#[repr(C, align(64))]
struct TileBuf([[[i32; 256]; 4]; 2]);

/// A 32 x 32 block: row tiles `w[0]`, `w[1]` against column tiles `mt`, `mt + 1`, over all
/// `act.nb` blocks, into `acc` (overwritten); with `PAIR` false a 16 x 32 block of row tile
/// `w[0]` alone (`acc.0[0]`, `acc.0[1]`; `w[1]` is not read), half the products and drains
/// for a last odd row tile.
///
/// Per block: two A and two B tile loads feed four products; the int32 results go to L1
/// (double-buffered) and are scaled while the tile unit runs the next block; `pf` (the
/// next work item's weights) is prefetched a step per block.
///
/// # Safety
/// an [`i8_session`] is open on this thread; `act` holds column tiles `mt` and `mt + 1`;
/// the row tiles read hold `act.nb` readable blocks of 16 rows and `nb * 16` scales (and
/// minimum factors).
#[target_feature(enable = "avx512f")]
pub unsafe fn i8_block<const PAIR: bool>(act: &ColsI8, mt: usize, w: [&RowsI8; 2], acc: &mut Block32, pf: &Spread) {
    let nb = act.nb;
    *acc = Block32::new();
    let mut cbuf = TileBuf([[[0; 256]; 4]; 2]);
    // SAFETY: this fn's `# Safety` contract: an `i8_session` is open on this thread (AMX
    // usable, I8_CONFIG loaded); `act` holds column tiles `mt` and `mt + 1` and both row tiles
    // hold `act.nb` readable blocks of 16 rows with their scales (and minimum factors), so
    // every tile load and `scale_block` read stays within them; the tile stores fill `cbuf`'s
    // 1 KB tiles.
    // AVX-512F is this fn's target feature.
    unsafe {
        let b0 = act.q.add(mt * nb * I8_BTILE);
        let b1 = act.q.add((mt + 1) * nb * I8_BTILE);
        for b in 0..=nb {
            if b < nb {
                pf.step(b);
                tile::zero::<0>();
                tile::zero::<1>();
                tile::zero::<2>();
                tile::zero::<3>();
                tile::load::<4>(w[0].q.add(b * w[0].block_step), w[0].stride);
                tile::load::<6>(b0.add(b * I8_BTILE), 64);
                tile::dpbssd::<0, 4, 6>();
                tile::load::<7>(b1.add(b * I8_BTILE), 64);
                tile::dpbssd::<1, 4, 7>();
                if PAIR {
                    tile::load::<5>(w[1].q.add(b * w[1].block_step), w[1].stride);
                    tile::dpbssd::<2, 5, 6>();
                    tile::dpbssd::<3, 5, 7>();
                }
            }
            if b > 0 {
                let pb = b - 1;
                let c = &cbuf.0[pb & 1];
                scale_block(&mut acc.0[0], c[0].as_ptr(), act, mt, w[0], pb);
                scale_block(&mut acc.0[1], c[1].as_ptr(), act, mt + 1, w[0], pb);
                if PAIR {
                    scale_block(&mut acc.0[2], c[2].as_ptr(), act, mt, w[1], pb);
                    scale_block(&mut acc.0[3], c[3].as_ptr(), act, mt + 1, w[1], pb);
                }
            }
            if b < nb {
                let c = cbuf.0[b & 1].as_mut_ptr() as *mut u8;
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

/// Loads the bf16 kernel's tile configuration on this thread until the session drops.
///
/// # Safety
/// As [`i8_session`].
pub unsafe fn bf16_session() -> tile::TileSession {
    // SAFETY: this fn's `# Safety` contract: AMX is available and permitted, as
    // `TileSession::begin` requires.
    unsafe {
        tile::TileSession::begin(&tile::ALL_16X64)
    }
}

/// A 32 x 32 block: bf16 weight row tiles `w0`, `w1` (16 rows each, in tile order: `ksteps`
/// contiguous 1 KB A tiles) against activation row tiles `b0`, `b1` (`ksteps` B tiles each,
/// [`BF16_BTILE`] apart), into `acc` (overwritten). Every tile load is 1 KB contiguous.
///
/// # Safety
/// a [`bf16_session`] is open on this thread; the operands hold `ksteps` steps of 32 k.
pub unsafe fn bf16_block(w0: *const u8, w1: *const u8, b0: *const u8, b1: *const u8, ksteps: usize, acc: &mut Block32) {
    // SAFETY: this fn's `# Safety` contract: a `bf16_session` is open on this thread (AMX
    // usable, tile::ALL_16X64 loaded) and the operands hold `ksteps` 1 KB tiles each, so every tile
    // load stays within them; the tile stores fill the four 1 KB tiles of `acc`.
    unsafe {
        tile::zero::<0>();
        tile::zero::<1>();
        tile::zero::<2>();
        tile::zero::<3>();
        for ks in 0..ksteps {
            tile::load::<4>(w0.add(ks * BF16_ATILE), 64);
            tile::load::<6>(b0.add(ks * BF16_BTILE), 64);
            tile::dpbf16ps::<0, 4, 6>();
            tile::load::<7>(b1.add(ks * BF16_BTILE), 64);
            tile::dpbf16ps::<1, 4, 7>();
            tile::load::<5>(w1.add(ks * BF16_ATILE), 64);
            tile::dpbf16ps::<2, 5, 6>();
            tile::dpbf16ps::<3, 5, 7>();
        }
        tile::store::<0>(acc.0[0].as_mut_ptr() as *mut u8, 64);
        tile::store::<1>(acc.0[1].as_mut_ptr() as *mut u8, 64);
        tile::store::<2>(acc.0[2].as_mut_ptr() as *mut u8, 64);
        tile::store::<3>(acc.0[3].as_mut_ptr() as *mut u8, 64);
    }
}
