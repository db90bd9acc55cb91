//! AVX-512 stager of the packed 16-row layouts into the int8 kernel's column tiles: the
//! vector form of `rows::i8_cols_scalar` (same bytes), one 64-byte vector per tile row.

use std::arch::x86_64::*;

/// What a packed block holds: fp16 heads (scales, then minimums) and 64-byte vectors.
#[derive(Clone, Copy)]
pub enum Kind {
    /// Nibbles minus 8 (low: tile row i, high: tile row 4 + i).
    Q4_0,
    /// Unsigned nibbles, with minimums.
    Q4_1,
    /// Eight vectors of q + 128.
    Q8_0,
}

/// `nb` blocks of one packed group (`gblock` bytes each) into column tiles (`q`, 512 bytes a
/// block), scales `d[b * 16 + r]` and (Q4_1) minimums `m[b * 16 + r]`.
///
/// # Safety
/// AVX-512F is available; `group` holds `nb * gblock` bytes, `q` `nb * 512`, `d` (and for
/// Q4_1 `m`) `nb * 16` floats; `gblock` is the layout's block size.
#[target_feature(enable = "avx512f")]
pub unsafe fn stage(kind: Kind, group: *const u8, gblock: usize, nb: usize, q: *mut u8, d: *mut f32, m: *mut f32) {
    // SAFETY: this fn's contract: every load is within block b of `group` (heads at 0 and
    // 32, vectors from 32 * heads, four or eight of 64 bytes, which the layout's block size
    // covers), every store within tile b of `q` (512 bytes) and 16 floats of `d` / `m`.
    unsafe {
        let low = _mm512_set1_epi32(0x0F0F_0F0F);
        let (bit7, eight) = (_mm512_set1_epi32(0x8080_8080u32 as i32), _mm512_set1_epi32(0x0808_0808));
        // q - 8 bytewise without borrows: ((x | 0x80) - 8) ^ 0x80.
        let sub8 = |x: __m512i| _mm512_xor_si512(_mm512_sub_epi32(_mm512_or_si512(x, bit7), eight), bit7);
        for b in 0..nb {
            let gb = group.add(b * gblock);
            let t = q.add(b * 512);
            _mm512_storeu_ps(d.add(b * 16), _mm512_cvtph_ps(_mm256_loadu_si256(gb as *const __m256i)));
            match kind {
                Kind::Q4_0 | Kind::Q4_1 => {
                    let vec0 = if let Kind::Q4_1 = kind {
                        _mm512_storeu_ps(m.add(b * 16), _mm512_cvtph_ps(_mm256_loadu_si256(gb.add(32) as *const __m256i)));
                        64
                    } else {
                        32
                    };
                    for i in 0..4 {
                        let v = _mm512_loadu_si512(gb.add(vec0 + 64 * i) as *const _);
                        let (lo, hi) = (_mm512_and_si512(v, low), _mm512_and_si512(_mm512_srli_epi32::<4>(v), low));
                        let (lo, hi) = if let Kind::Q4_0 = kind { (sub8(lo), sub8(hi)) } else { (lo, hi) };
                        _mm512_storeu_si512(t.add(64 * i) as *mut _, lo);
                        _mm512_storeu_si512(t.add(64 * (4 + i)) as *mut _, hi);
                    }
                }
                Kind::Q8_0 => {
                    for i in 0..8 {
                        let v = _mm512_loadu_si512(gb.add(32 + 64 * i) as *const _);
                        _mm512_storeu_si512(t.add(64 * i) as *mut _, _mm512_xor_si512(v, bit7));
                    }
                }
            }
        }
    }
}

/// `nsuper` Q4_Kx16 super-blocks (`gblock` bytes each) into column tiles: vector 3 + i (the
/// rows' `qs` bytes 4i ..) holds, in its low nibbles, tile row i % 8 of int8 block 2 (i / 8)
/// and, in its high nibbles, the same row of block 2 (i / 8) + 1. Scales d sc and negated
/// minimums dmin m per block and row, `d[b * 16 + r]`, `m[b * 16 + r]`: vectors 0 .. 3 hold
/// lane r's 12 bytes of 6-bit scales and minimums (ggml's `get_scale_min_k4` layout).
///
/// # Safety
/// AVX-512F is available; `group` holds `nsuper * gblock` bytes of Q4_Kx16 blocks, `q`
/// `nsuper * 8 * 512` and `d`, `m` `nsuper * 8 * 16` floats.
#[target_feature(enable = "avx512f")]
pub unsafe fn q4_k(group: *const u8, gblock: usize, nsuper: usize, q: *mut u8, d: *mut f32, m: *mut f32) {
    // SAFETY: this fn's contract: the heads (64 bytes) and vectors 0 .. 35 of each
    // super-block lie within it, and every store within its eight 512-byte tiles of `q` and
    // its 8 x 16 floats of `d` and `m`.
    unsafe {
        let low = _mm512_set1_epi32(0x0F0F_0F0F);
        let (six, four, two) = (_mm512_set1_epi32(63), _mm512_set1_epi32(15), _mm512_set1_epi32(3));
        let field = |v: __m512i, shift: u32, mask: __m512i| _mm512_and_si512(_mm512_srlv_epi32(v, _mm512_set1_epi32(shift as i32)), mask);
        for s in 0..nsuper {
            let heads = group.add(s * gblock);
            let dr = _mm512_cvtph_ps(_mm256_loadu_si256(heads as *const __m256i));
            let dmin = _mm512_cvtph_ps(_mm256_loadu_si256(heads.add(32) as *const __m256i));
            let v = |i: usize| _mm512_loadu_si512(heads.add(64 + 64 * i) as *const _);
            let (v0, v1, v2) = (v(0), v(1), v(2));
            for j in 0..8u32 {
                // j < 4: six bits of bytes j and 4 + j; else the low / high nibble of byte
                // 4 + j with the top two bits of bytes j - 4 and j as bits 4 and 5.
                let (sc, mn) = if j < 4 {
                    (field(v0, 8 * j, six), field(v1, 8 * j, six))
                } else {
                    let sh = 8 * (j - 4);
                    let sc = _mm512_or_si512(field(v2, sh, four), _mm512_slli_epi32::<4>(field(v0, sh + 6, two)));
                    let mn = _mm512_or_si512(field(v2, sh + 4, four), _mm512_slli_epi32::<4>(field(v1, sh + 6, two)));
                    (sc, mn)
                };
                let at = (8 * s + j as usize) * 16;
                _mm512_storeu_ps(d.add(at), _mm512_mul_ps(dr, _mm512_cvtepi32_ps(sc)));
                // -(dmin m): the product is exact (11 x 6 bits), so negating either way agrees.
                let neg = _mm512_castsi512_ps(_mm512_set1_epi32(i32::MIN));
                _mm512_storeu_ps(m.add(at), _mm512_castsi512_ps(_mm512_xor_si512(_mm512_castps_si512(_mm512_mul_ps(dmin, _mm512_cvtepi32_ps(mn))), _mm512_castps_si512(neg))));
            }
            let gb = group.add(s * gblock + 64 + 3 * 64);
            let t = q.add(s * 8 * 512);
            for i in 0..32 {
                let v = _mm512_loadu_si512(gb.add(64 * i) as *const _);
                let (b, row) = (2 * (i / 8), i % 8);
                _mm512_storeu_si512(t.add(b * 512 + 64 * row) as *mut _, _mm512_and_si512(v, low));
                _mm512_storeu_si512(t.add((b + 1) * 512 + 64 * row) as *mut _, _mm512_and_si512(_mm512_srli_epi32::<4>(v), low));
            }
        }
    }
}
