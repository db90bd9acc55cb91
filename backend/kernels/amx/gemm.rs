//! AMX matrix-multiplication micro-kernels: `out[m][n] = sum_k act[m][k] * w[n][k]`.
//!
//! Operand roles: activations are the A tiles (16 rows x 64 bytes, row-major in scratch),
//! weights are the B tiles, decoded once per call into 16-column *panels* in the tile unit's
//! VNNI order (see [`super::panel`]) and reused across every activation row tile, so the
//! result tile rows are output rows and store straight into `out`.
//!
//! * [`i8_block`]: int8 (TDPBSSD) with per-32-block scales. One tile op covers one block
//!   (K = 32: the hardware takes as long as for 64 bytes, so block-scaled int8 tops out at half
//!   the int8 peak). Each block's int32 results go through L1 and are scaled in f32 on the
//!   vector units while the tile unit runs the next block.
//! * [`bf16_tile_block`]: bf16 (TDPBF16PS), f32 accumulation in the tiles over the whole K,
//!   2 x 2 tiles per step (each A and B tile feeds two products).

use super::tile::{self, TileConfig};
use std::arch::x86_64::*;

/// Bytes of one int8 B tile (8 rows of 16 columns x 4 k) and one bf16 B tile (16 rows of
/// 16 columns x 2 k).
pub const I8_BTILE: usize = 512;
pub const BF16_BTILE: usize = 1024;
/// Elements of K per int8 block and per bf16 B tile.
pub const I8_KBLOCK: usize = 32;
pub const BF16_KCHUNK: usize = 32;
/// Weight panels decoded together per thread (64 output columns; a multiple of 2).
pub const I8_PANELS: usize = 4;

/// Bytes of one activation A tile (16 rows x one block of 32 int8).
pub const ACT_TILE: usize = 16 * I8_KBLOCK;

/// Int8 activations, quantized per 32-block, in tile order: row tile `mt` (rows
/// `16 mt .. 16 mt + 16`, zero-padded past the last row), block b at
/// `q + (mt * nb + b) * ACT_TILE`, rows 32 bytes apart. Block scales `d[m * nb + b]` and, for
/// weight types with a minimum, `s[m * nb + b]` = d * sum(q) of the block.
#[derive(Clone, Copy)]
pub struct ActI8 {
    pub q: *const i8,
    pub d: *const f32,
    pub s: *const f32,
    pub nb: usize,
}

impl ActI8 {
    /// Start of row tile `mt`, block `b`.
    #[inline(always)]
    pub fn tile(&self, mt: usize, b: usize) -> *const u8 {
        self.q.wrapping_add((mt * self.nb + b) * ACT_TILE) as *const u8
    }
}

/// One decoded 16-column int8 weight panel: block b's B tile at `q + b * I8_BTILE`, the
/// column scales at `d[b * 16 ..]`, the column minimums at `m[b * 16 ..]` (null if none).
#[derive(Clone, Copy)]
pub struct PanelI8 {
    pub q: *const u8,
    pub d: *const f32,
    pub m: *const f32,
}

const I8_CONFIG: TileConfig = TileConfig::new()
    .with(0, 16, 64)
    .with(1, 16, 64)
    .with(2, 16, 64)
    .with(3, 16, 64)
    .with(4, 16, 32) // A: 16 rows x one block of 32 int8
    .with(5, 16, 32)
    .with(6, 8, 64) // B: 8 rows of 16 columns x 4 int8
    .with(7, 8, 64);

/// Loads the int8 kernel's tile configuration on this thread.
///
/// # Safety
/// AMX is available and permitted ([`super::available`]).
pub unsafe fn i8_config() {
    I8_CONFIG.load();
}

/// Scales one block's int32 results (`c`, 16 x 16, rows = activation rows `m0..`) into the
/// accumulators: acc[r] += c[r] * dw * da[r] (+ mw * sa[r]).
#[inline(always)]
unsafe fn scale_block(acc: &mut [[f32; 16]; 16], c: *const i32, act: &ActI8, m0: usize, b: usize, p: &PanelI8) {
    let nb = act.nb;
    let dw = _mm512_loadu_ps(p.d.add(b * 16));
    if p.m.is_null() {
        for (r, a) in acc.iter_mut().enumerate() {
            let da = _mm512_set1_ps(*act.d.add((m0 + r) * nb + b));
            let v = _mm512_cvtepi32_ps(_mm512_load_si512(c.add(r * 16) as *const _));
            let acc_r = _mm512_loadu_ps(a.as_ptr());
            _mm512_storeu_ps(a.as_mut_ptr(), _mm512_fmadd_ps(v, _mm512_mul_ps(dw, da), acc_r));
        }
    } else {
        let mw = _mm512_loadu_ps(p.m.add(b * 16));
        for (r, a) in acc.iter_mut().enumerate() {
            let i = (m0 + r) * nb + b;
            let v = _mm512_cvtepi32_ps(_mm512_load_si512(c.add(r * 16) as *const _));
            let acc_r = _mm512_loadu_ps(a.as_ptr());
            let t = _mm512_fmadd_ps(mw, _mm512_set1_ps(*act.s.add(i)), acc_r);
            _mm512_storeu_ps(a.as_mut_ptr(), _mm512_fmadd_ps(v, _mm512_mul_ps(dw, _mm512_set1_ps(*act.d.add(i))), t));
        }
    }
}

#[repr(C, align(64))]
struct TileBuf([[[i32; 256]; 4]; 2]);

#[repr(C, align(64))]
struct Acc([[[f32; 16]; 16]; 4]);

/// A 32 x 32 output block: activation row tiles `mt` and `mt + 1` against weight panels
/// `p0` and `p1`. Writes `out[r * out_stride + c]` for r < `rows` (<= 32), c < `cols` (<= 32).
///
/// Per block: two A and two B tile loads feed four products (each loaded tile is used twice,
/// since tile loads, not products, bound this machine); the four int32 results go to L1 and
/// are scaled into f32 accumulators while the tile unit runs the next block.
///
/// # Safety
/// [`i8_config`] was loaded on this thread; `act` holds row tiles `mt` and `mt + 1`, and both
/// panels `act.nb` blocks; `out` is writable for `rows` rows of `cols` floats.
#[target_feature(enable = "avx512f")]
pub unsafe fn i8_block(
    act: &ActI8,
    mt: usize,
    rows: usize,
    p: [&PanelI8; 2],
    out: *mut f32,
    out_stride: usize,
    cols: usize,
) {
    let nb = act.nb;
    let mut acc = Acc([[[0.0; 16]; 16]; 4]);
    let mut cbuf = TileBuf([[[0; 256]; 4]; 2]);
    let a0 = act.tile(mt, 0);
    let a1 = act.tile(mt + 1, 0);
    let (m0, m1) = (mt * 16, mt * 16 + 16);
    for b in 0..=nb {
        if b < nb {
            tile::zero::<0>();
            tile::zero::<1>();
            tile::zero::<2>();
            tile::zero::<3>();
            tile::load::<4>(a0.add(b * ACT_TILE), 32);
            tile::load::<6>(p[0].q.add(b * I8_BTILE), 64);
            tile::dpbssd::<0, 4, 6>();
            tile::load::<7>(p[1].q.add(b * I8_BTILE), 64);
            tile::dpbssd::<1, 4, 7>();
            tile::load::<5>(a1.add(b * ACT_TILE), 32);
            tile::dpbssd::<2, 5, 6>();
            tile::dpbssd::<3, 5, 7>();
        }
        if b > 0 {
            let pb = b - 1;
            let c = &cbuf.0[pb & 1];
            scale_block(&mut acc.0[0], c[0].as_ptr(), act, m0, pb, p[0]);
            scale_block(&mut acc.0[1], c[1].as_ptr(), act, m0, pb, p[1]);
            scale_block(&mut acc.0[2], c[2].as_ptr(), act, m1, pb, p[0]);
            scale_block(&mut acc.0[3], c[3].as_ptr(), act, m1, pb, p[1]);
        }
        if b < nb {
            let c = cbuf.0[b & 1].as_mut_ptr() as *mut u8;
            tile::store::<0>(c, 64);
            tile::store::<1>(c.add(1024), 64);
            tile::store::<2>(c.add(2048), 64);
            tile::store::<3>(c.add(3072), 64);
        }
    }
    for r in 0..rows {
        let (half, rr) = (r / 16, r % 16);
        for j in 0..2 {
            let ccols = cols.saturating_sub(j * 16).min(16);
            if ccols == 0 {
                continue;
            }
            let src = acc.0[half * 2 + j][rr].as_ptr();
            std::ptr::copy_nonoverlapping(src, out.add(r * out_stride + j * 16), ccols);
        }
    }
}

const BF16_CONFIG: TileConfig = TileConfig::new()
    .with(0, 16, 64)
    .with(1, 16, 64)
    .with(2, 16, 64)
    .with(3, 16, 64)
    .with(4, 16, 64) // A: 16 rows x 32 bf16
    .with(5, 16, 64)
    .with(6, 16, 64) // B: 16 rows of 16 columns x 2 bf16
    .with(7, 16, 64);

/// Loads the bf16 kernel's tile configuration on this thread.
///
/// # Safety
/// As [`i8_config`].
pub unsafe fn bf16_config() {
    BF16_CONFIG.load();
}

/// A 32 x 32 output block: activation rows `a0` and `a1` (16 rows each, bf16, row stride
/// `a_stride` bytes), weight panels `b0` and `b1` (`kchunks` B tiles each); writes the four
/// 16 x 16 f32 results to `c[t]` (row stride 64 bytes), in order (a0,b0), (a0,b1), (a1,b0),
/// (a1,b1).
///
/// # Safety
/// [`bf16_config`] was loaded on this thread; the operands hold `kchunks` chunks of 32 k.
#[inline]
pub unsafe fn bf16_tile_block(
    a0: *const u8,
    a1: *const u8,
    a_stride: usize,
    b0: *const u8,
    b1: *const u8,
    kchunks: usize,
    c: &mut [[f32; 256]; 4],
) {
    tile::zero::<0>();
    tile::zero::<1>();
    tile::zero::<2>();
    tile::zero::<3>();
    for kc in 0..kchunks {
        tile::load::<4>(a0.add(kc * 64), a_stride);
        tile::load::<6>(b0.add(kc * BF16_BTILE), 64);
        tile::dpbf16ps::<0, 4, 6>();
        tile::load::<7>(b1.add(kc * BF16_BTILE), 64);
        tile::dpbf16ps::<1, 4, 7>();
        tile::load::<5>(a1.add(kc * 64), a_stride);
        tile::dpbf16ps::<2, 5, 6>();
        tile::dpbf16ps::<3, 5, 7>();
    }
    tile::store::<0>(c[0].as_mut_ptr() as *mut u8, 64);
    tile::store::<1>(c[1].as_mut_ptr() as *mut u8, 64);
    tile::store::<2>(c[2].as_mut_ptr() as *mut u8, 64);
    tile::store::<3>(c[3].as_mut_ptr() as *mut u8, 64);
}
