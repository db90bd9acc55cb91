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
