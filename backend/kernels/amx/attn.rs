//! AMX micro-kernels of prefill attention: scores `S = Q K^T` for 16 queries against up to
//! 64 keys, and `O += P V` for 16 queries over up to 64 keys, on the bf16 tiles with each
//! operand split into two bf16 halves (`x = hi + lo`), so that the products keep about 16
//! bits of every operand instead of bf16's 8: f16 K and V split exactly (11 bits), f32 Q
//! and P to 2^-16 of their value. Three products per pair of operands (hi hi, hi lo, lo
//! hi; lo lo is below the split's own error) accumulate in f32 in the tiles.
//!
//! Layouts (all tiles 16 rows x 64 bytes, [`TILE`] bytes):
//! * A operand (Q or P, 16 rows): per 32-element step, the hi tile then the lo tile; row r
//!   holds row r's 32 elements of the step as bf16.
//! * B operand (K or V): per step and 16-column block, the hi tile then the lo tile; tile
//!   row j holds, for each of the 16 columns c, elements 2j and 2j + 1 of the step (the
//!   VNNI pair order TDPBF16PS reads). For scores the columns are keys and the step runs
//!   over head dimensions; for P V the columns are V's channels and the step over keys.

use super::tile;
use std::arch::x86_64::*;

/// Bytes of one tile, and of a hi and lo pair.
pub const TILE: usize = 1024;
pub const PAIR: usize = 2 * TILE;
/// Elements of the reduction per step.
pub const STEP: usize = 32;

/// Loads this module's tile configuration on this thread until the session drops.
///
/// # Safety
/// AMX is available and permitted ([`super::available`]).
pub unsafe fn session() -> tile::TileSession {
    // SAFETY: this fn's contract is `TileSession::begin`'s.
    unsafe { tile::TileSession::begin(&tile::ALL_16X64) }
}

/// Three split products of A (tiles 4 hi, 5 lo) and one B pair at `b` into C tile `C`.
#[inline(always)]
unsafe fn split_products<const C: u8>(b: *const u8) {
    // SAFETY: the callers' contract: a configuration is loaded and `b` holds a B pair.
    unsafe {
        tile::load::<6>(b, 64);
        tile::dpbf16ps::<C, 4, 6>();
        tile::dpbf16ps::<C, 5, 6>();
        tile::load::<7>(b.add(TILE), 64);
        tile::dpbf16ps::<C, 4, 7>();
    }
}

/// Scores of 16 queries against `blocks` (1 ..= 4) blocks of 16 keys: `out[r * 64 + 16 j +
/// c]` = query r . key c of block j, over `steps` steps of the head dimension.
///
/// # Safety
/// A [`session`] is open on this thread; `q` holds `steps` A pairs; `k` holds `blocks` key
/// blocks of `steps` B pairs each, `k_block` bytes apart; `out` is writable for 16 rows of
/// 64 floats.
pub unsafe fn scores(q: *const u8, k: *const u8, k_block: usize, steps: usize, blocks: usize, out: *mut f32) {
    // SAFETY: this fn's contract: every tile load reads a pair within `q` or within key
    // block j < blocks of `k`; the stores write column block j of `out`'s 16 rows.
    unsafe {
        tile::zero::<0>();
        tile::zero::<1>();
        tile::zero::<2>();
        tile::zero::<3>();
        for s in 0..steps {
            tile::load::<4>(q.add(s * PAIR), 64);
            tile::load::<5>(q.add(s * PAIR + TILE), 64);
            let kb = |j: usize| k.add(j * k_block + s * PAIR);
            split_products::<0>(kb(0));
            if blocks > 1 {
                split_products::<1>(kb(1));
            }
            if blocks > 2 {
                split_products::<2>(kb(2));
            }
            if blocks > 3 {
                split_products::<3>(kb(3));
            }
        }
        let o = out as *mut u8;
        tile::store::<0>(o, 256);
        if blocks > 1 {
            tile::store::<1>(o.add(64), 256);
        }
        if blocks > 2 {
            tile::store::<2>(o.add(128), 256);
        }
        if blocks > 3 {
            tile::store::<3>(o.add(192), 256);
        }
    }
}

/// `o[r * dv + c] += sum_k p[r][k] v[k][c]` for 16 query rows over `steps` steps of 32 keys:
/// `p` holds the steps' A pairs, `v` per step `dv / 16` column blocks of B pairs
/// (`v_step` bytes per step); `dv` is a multiple of 16.
///
/// # Safety
/// A [`session`] is open on this thread; the operands hold what is described above; `o` is
/// readable and writable for 16 rows of `dv` floats.
pub unsafe fn pv(p: *const u8, v: *const u8, v_step: usize, steps: usize, dv: usize, o: *mut f32) {
    let blocks = dv / 16;
    let stride = dv * 4;
    // SAFETY: this fn's contract: loads read pairs within `p` and within steps s < steps,
    // column blocks < dv / 16 of `v`; the accumulator loads and stores touch `o`'s 16 rows
    // of dv floats.
    unsafe {
        for c0 in (0..blocks).step_by(4) {
            let n = (blocks - c0).min(4);
            let oc = |j: usize| (o as *mut u8).add((c0 + j) * 64);
            tile::load::<0>(oc(0), stride);
            if n > 1 {
                tile::load::<1>(oc(1), stride);
            }
            if n > 2 {
                tile::load::<2>(oc(2), stride);
            }
            if n > 3 {
                tile::load::<3>(oc(3), stride);
            }
            for s in 0..steps {
                tile::load::<4>(p.add(s * PAIR), 64);
                tile::load::<5>(p.add(s * PAIR + TILE), 64);
                let vb = |j: usize| v.add(s * v_step + (c0 + j) * PAIR);
                split_products::<0>(vb(0));
                if n > 1 {
                    split_products::<1>(vb(1));
                }
                if n > 2 {
                    split_products::<2>(vb(2));
                }
                if n > 3 {
                    split_products::<3>(vb(3));
                }
            }
            tile::store::<0>(oc(0), stride);
            if n > 1 {
                tile::store::<1>(oc(1), stride);
            }
            if n > 2 {
                tile::store::<2>(oc(2), stride);
            }
            if n > 3 {
                tile::store::<3>(oc(3), stride);
            }
        }
    }
}

/// The hi and lo bf16 halves of 16 f32 (hi: the top 16 bits, lo: the rest rounded the same
/// way), as two vectors of 16 words in the low halves of 32-bit lanes.
#[inline(always)]
unsafe fn split16(x: __m512) -> (__m512i, __m512i) {
    // SAFETY: register arithmetic; the callers enable AVX-512F.
    unsafe {
        let bits = _mm512_castps_si512(x);
        let hi = _mm512_and_si512(bits, _mm512_set1_epi32(0xFFFF_0000u32 as i32));
        let lo = _mm512_castps_si512(_mm512_sub_ps(x, _mm512_castsi512_ps(hi)));
        (_mm512_srli_epi32::<16>(hi), _mm512_srli_epi32::<16>(lo))
    }
}

/// 16 f32 rows of 32 elements (row r at `x + r * x_stride`) into one A pair: hi tile then
/// lo tile, row r = the row's 32 elements as bf16.
///
/// # Safety
/// AVX-512F; the rows are readable for 32 floats; `out` is writable for a pair.
#[target_feature(enable = "avx512f")]
pub unsafe fn a_pair(x: *const f32, x_stride: usize, out: *mut u8) {
    // SAFETY: this fn's contract: 32 floats of each row are read, a pair is written.
    unsafe {
        for r in 0..16 {
            let row = x.add(r * x_stride);
            let (h0, l0) = split16(_mm512_loadu_ps(row));
            let (h1, l1) = split16(_mm512_loadu_ps(row.add(16)));
            let pack = |a: __m512i, b: __m512i| _mm512_inserti64x4::<1>(_mm512_castsi256_si512(_mm512_cvtepi32_epi16(a)), _mm512_cvtepi32_epi16(b));
            _mm512_storeu_si512(out.add(r * 64) as *mut _, pack(h0, h1));
            _mm512_storeu_si512(out.add(TILE + r * 64) as *mut _, pack(l0, l1));
        }
    }
}

/// The hi and lo halves of 16 f16 pairs (a dword each: element 2j low, 2j + 1 high) as
/// dwords of bf16 pairs: (hi pairs, lo pairs).
#[inline(always)]
unsafe fn split_f16_pairs(dw: __m512i) -> (__m512i, __m512i) {
    // SAFETY: register arithmetic; the callers enable AVX-512F.
    unsafe {
        let even = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(dw));
        let odd = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(_mm512_srli_epi32::<16>(dw)));
        let (he, le) = split16(even);
        let (ho, lo) = split16(odd);
        (_mm512_or_si512(he, _mm512_slli_epi32::<16>(ho)), _mm512_or_si512(le, _mm512_slli_epi32::<16>(lo)))
    }
}

/// One step of 32 head dimensions of 16 f16 key rows as a scores B pair: tile row j, lane c
/// = dimensions 2j, 2j + 1 of key c. Key c's 32 dimensions are at `k + c * row_stride`;
/// keys from `nkeys` on are zero.
///
/// # Safety
/// AVX-512F; rows c < nkeys readable for 64 bytes; `15 * row_stride + 64` fits an i32 (the
/// gather's offsets); `out` writable for a pair.
#[target_feature(enable = "avx512f")]
pub unsafe fn k_pair(k: *const u8, row_stride: usize, nkeys: usize, out: *mut u8) {
    // SAFETY: this fn's contract: the gather's mask takes keys c < nkeys only, each at
    // offset c * row_stride + 4 j < its row's 64 bytes.
    unsafe {
        let mask = if nkeys >= 16 { 0xFFFF } else { ((1u32 << nkeys) - 1) as u16 };
        let lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
        let offs = _mm512_mullo_epi32(lane, _mm512_set1_epi32(row_stride as i32));
        for j in 0..16 {
            let dw = _mm512_mask_i32gather_epi32::<1>(_mm512_setzero_si512(), mask, _mm512_add_epi32(offs, _mm512_set1_epi32(4 * j as i32)), k.add(0) as *const i32);
            let (h, l) = split_f16_pairs(dw);
            _mm512_storeu_si512(out.add(j * 64) as *mut _, h);
            _mm512_storeu_si512(out.add(TILE + j * 64) as *mut _, l);
        }
    }
}

/// One step of 32 keys of 16 f16 V channels as a P V B pair: tile row j, lane c = channel c
/// of keys 2j and 2j + 1. Key i's 16 channels are at `v + i * row_stride`; keys from
/// `nkeys` on are zero.
///
/// # Safety
/// AVX-512F; rows i < nkeys readable for 32 bytes; `out` writable for a pair.
#[target_feature(enable = "avx512f")]
pub unsafe fn v_pair(v: *const u8, row_stride: usize, nkeys: usize, out: *mut u8) {
    // SAFETY: this fn's contract: rows i < nkeys only are read, 32 bytes each.
    unsafe {
        let row = |i: usize| if i < nkeys { _mm512_cvtph_ps(_mm256_loadu_si256(v.add(i * row_stride) as *const __m256i)) } else { _mm512_setzero_ps() };
        for j in 0..16 {
            let (he, le) = split16(row(2 * j));
            let (ho, lo) = split16(row(2 * j + 1));
            _mm512_storeu_si512(out.add(j * 64) as *mut _, _mm512_or_si512(he, _mm512_slli_epi32::<16>(ho)));
            _mm512_storeu_si512(out.add(TILE + j * 64) as *mut _, _mm512_or_si512(le, _mm512_slli_epi32::<16>(lo)));
        }
    }
}
