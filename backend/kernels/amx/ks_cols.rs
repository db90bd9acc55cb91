//! K-quant weights staged into the super-block kernel's column operand ([`super::ksuper`]):
//! per 16-row column tile and super-block, the integer weights `p = sc_j q` (Q6_K:
//! `sc_j (q - 32)`) split as `p = 64 hi + lo` into hi and lo B tiles per 64-element step,
//! the super-block scale d and, for Q4_K and Q5_K, -dmin and the minimums in pairs.
//!
//! [`stage_rows`] reads ggml's rows in portable code (the reference, and weights held in
//! ggml's layout); [`stage_packed`] reads the Q4_Kx16 and Q6_Kx16 groups with AVX-512 and
//! gives the same bytes.

use super::ksuper::{SHIFT, STEPS, SUPER, TILE};
use crate::dtype::DType;
use crate::kernels::packed::Layout;
use crate::kernels::quant::blocks::get_scale_min_k4;
use half::f16;

/// The types the super-block kernel takes, and whether they carry minimums.
pub fn ks_weight(ty: DType) -> Option<bool> {
    match ty {
        DType::Q4_K | DType::Q5_K => Some(true),
        DType::Q6_K => Some(false),
        _ => None,
    }
}

/// Bytes of B tiles per column tile and super-block (hi and lo per step).
pub const SB_TILES_BYTES: usize = 2 * STEPS * TILE;

/// One column tile's staging area: `nsb` super-blocks of B tiles (`q`, [`SB_TILES_BYTES`]
/// each), `d`, `nmin` (16 per super-block) and `mins` (64 per super-block).
pub struct ColTile<'a> {
    pub q: &'a mut [u8],
    pub d: &'a mut [f32],
    pub nmin: &'a mut [f32],
    pub mins: &'a mut [u32],
}

impl ColTile<'_> {
    fn check(&self, nsb: usize, has_min: bool) {
        assert!(
            self.q.len() >= nsb * SB_TILES_BYTES && self.d.len() >= nsb * 16 && (!has_min || (self.nmin.len() >= nsb * 16 && self.mins.len() >= nsb * 64)),
            "SMEPilot: K-quant column tile area too short for {nsb} super-blocks"
        );
    }

    /// Puts integer weight `p` of column c, element k of super-block sb.
    #[inline]
    fn put(&mut self, sb: usize, c: usize, k: usize, p: i32) {
        let (s, kk) = (k / 64, k % 64);
        let at = sb * SB_TILES_BYTES + 2 * s * TILE + (kk / 4) * 64 + c * 4 + kk % 4;
        self.q[at] = (p >> SHIFT) as i8 as u8;
        self.q[at + TILE] = (p & ((1 << SHIFT) - 1)) as u8;
    }
}

fn h(b: &[u8], at: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([b[at], b[at + 1]])).to_f32()
}

/// The integer weights of one super-block of a row (`blk`: ggml's block of `ty`), its d,
/// dmin and sub-block minimums (32-element sub-blocks; none for Q6_K).
fn int_weights(ty: DType, blk: &[u8]) -> ([i32; SUPER], f32, f32, [u8; 8]) {
    let mut p = [0i32; SUPER];
    match ty {
        DType::Q6_K => {
            let (ql, qh, sc) = (&blk[..128], &blk[128..192], &blk[192..208]);
            for (k, pk) in p.iter_mut().enumerate() {
                let (n, kk) = (k / 128, k % 128);
                let (qq, l) = (kk / 32, kk % 32);
                let low = ql[64 * n + 32 * (qq & 1) + l] >> (4 * (qq >> 1)) & 15;
                let high = (qh[32 * n + l] >> (2 * qq)) & 3;
                *pk = sc[k / 16] as i8 as i32 * ((low | high << 4) as i32 - 32);
            }
            (p, h(blk, 208), 0.0, [0; 8])
        }
        DType::Q4_K | DType::Q5_K => {
            let scales: &[u8; 12] = blk[4..16].try_into().expect("12 scale bytes");
            let (qs, qh) = if ty == DType::Q4_K { (&blk[16..144], &[][..]) } else { (&blk[48..176], &blk[16..48]) };
            let mut mins = [0u8; 8];
            for (j, mn) in mins.iter_mut().enumerate() {
                let (sc, m) = get_scale_min_k4(j, scales);
                *mn = m;
                for l in 0..32 {
                    let k = 32 * j + l;
                    let q = (qs[32 * (j / 2) + l] >> (4 * (j % 2))) & 15;
                    let q5 = if qh.is_empty() { 0 } else { (qh[l] >> j) & 1 };
                    p[k] = sc as i32 * (q | q5 << 4) as i32;
                }
            }
            (p, h(blk, 0), h(blk, 2), mins)
        }
        _ => panic!("SMEPilot: {ty:?} is not a K-quant the super-block kernel takes"),
    }
}

/// Up to 16 weight rows (ggml's layout, `nsb` super-blocks of `ty`) staged into `out`; rows
/// past the ones given are zeros.
pub fn stage_rows(ty: DType, rows: &[&[u8]], nsb: usize, out: &mut ColTile) {
    let has_min = ks_weight(ty).expect("stage_rows: a type the super-block kernel takes");
    assert!(rows.len() <= 16);
    out.check(nsb, has_min);
    out.q[..nsb * SB_TILES_BYTES].fill(0);
    out.d[..nsb * 16].fill(0.0);
    if has_min {
        out.nmin[..nsb * 16].fill(0.0);
        out.mins[..nsb * 64].fill(0);
    }
    let bb = ty.block_bytes();
    for (c, row) in rows.iter().enumerate() {
        for sb in 0..nsb {
            let (p, d, dmin, mins) = int_weights(ty, &row[sb * bb..(sb + 1) * bb]);
            for (k, &pk) in p.iter().enumerate() {
                out.put(sb, c, k, pk);
            }
            out.d[sb * 16 + c] = d;
            if has_min {
                out.nmin[sb * 16 + c] = -dmin;
                for pr in 0..4 {
                    out.mins[(sb * 4 + pr) * 16 + c] = mins[2 * pr] as u32 | (mins[2 * pr + 1] as u32) << 16;
                }
            }
        }
    }
}

/// One packed 16-row group (`Q4_Kx16` or `Q6_Kx16`, `nsb` super-blocks) staged into `out`,
/// the same bytes as [`stage_rows`] of its rows. `None` for other layouts or without
/// AVX-512BW.
pub fn stage_packed(layout: Layout, group: &[u8], nsb: usize, out: &mut ColTile) -> Option<()> {
    #[cfg(target_arch = "x86_64")]
    {
        let has_min = match layout {
            Layout::Q4_Kx16 => true,
            Layout::Q6_Kx16 => false,
            _ => return None,
        };
        if !std::arch::is_x86_feature_detected!("avx512bw") {
            return None;
        }
        out.check(nsb, has_min);
        assert!(group.len() >= nsb * layout.group_block());
        // SAFETY: AVX-512F/BW checked; `group` holds nsb group blocks of the layout and
        // `out` nsb super-blocks of every area (checked above).
        unsafe { avx512::stage(has_min, group.as_ptr(), layout.group_block(), nsb, out) };
        Some(())
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (layout, group, nsb, out);
        None
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{ColTile, SB_TILES_BYTES, SHIFT, TILE};
    use std::arch::x86_64::*;

    /// Words of `x` (its even bytes, `odd` = false; else its odd bytes) times the lane's
    /// sign-extended scale word `sc`, split into hi and lo bytes in place: returns (hi, lo).
    #[inline(always)]
    unsafe fn mul_split(q: __m512i, sc: __m512i, offset: __m512i) -> (__m512i, __m512i) {
        // SAFETY: register arithmetic; the caller enables AVX-512F/BW.
        unsafe {
            let word = _mm512_set1_epi16(0xFF);
            let (qe, qo) = (_mm512_and_si512(q, word), _mm512_srli_epi16::<8>(q));
            let pe = _mm512_mullo_epi16(_mm512_sub_epi16(qe, offset), sc);
            let po = _mm512_mullo_epi16(_mm512_sub_epi16(qo, offset), sc);
            let lo_mask = _mm512_set1_epi16((1 << SHIFT) - 1);
            let lo = _mm512_or_si512(_mm512_and_si512(pe, lo_mask), _mm512_slli_epi16::<8>(_mm512_and_si512(po, lo_mask)));
            let (he, ho) = (_mm512_srai_epi16::<{ SHIFT }>(pe), _mm512_srai_epi16::<{ SHIFT }>(po));
            let hi = _mm512_or_si512(_mm512_and_si512(he, word), _mm512_slli_epi16::<8>(ho));
            (hi, lo)
        }
    }

    /// The scale `sc32` (one per 32-bit lane, sign-extended or not) as two equal words.
    #[inline(always)]
    unsafe fn words(sc32: __m512i) -> __m512i {
        // SAFETY: register arithmetic.
        unsafe { _mm512_or_si512(_mm512_and_si512(sc32, _mm512_set1_epi32(0xFFFF)), _mm512_slli_epi32::<16>(sc32)) }
    }

    /// # Safety
    /// AVX-512F/BW available; `group` holds `nsb` blocks of `gblock` bytes of Q4_Kx16
    /// (`has_min`) or Q6_Kx16; `out` holds nsb super-blocks of every area.
    #[target_feature(enable = "avx512f,avx512bw")]
    pub unsafe fn stage(has_min: bool, group: *const u8, gblock: usize, nsb: usize, out: &mut ColTile) {
        // SAFETY: this fn's contract: loads are heads and vectors of super-block sb's group
        // block (Q4_Kx16: 64 bytes of heads, 35 vectors; Q6_Kx16: 32 bytes, 52 vectors),
        // stores within super-block sb of each area.
        unsafe {
            let nib = _mm512_set1_epi32(0x0F0F_0F0F);
            for sb in 0..nsb {
                let gb = group.add(sb * gblock);
                let q = out.q.as_mut_ptr().add(sb * SB_TILES_BYTES);
                let heads = if has_min { 64 } else { 32 };
                let v = |i: usize| _mm512_loadu_si512(gb.add(heads + 64 * i) as *const _);
                let d = _mm512_cvtph_ps(_mm256_loadu_si256(gb as *const __m256i));
                _mm512_storeu_ps(out.d.as_mut_ptr().add(sb * 16), d);
                // Per 32-element sub-block (Q4_K) or 16-element one (Q6_K): the scale of
                // each lane (column).
                let mut scale = [_mm512_setzero_si512(); 16];
                if has_min {
                    let (v0, v1, v2) = (v(0), v(1), v(2));
                    let field = |x: __m512i, shift: u32, mask: i32| _mm512_and_si512(_mm512_srlv_epi32(x, _mm512_set1_epi32(shift as i32)), _mm512_set1_epi32(mask));
                    let mut mins = [_mm512_setzero_si512(); 8];
                    for j in 0..8u32 {
                        let (sc, mn) = if j < 4 {
                            (field(v0, 8 * j, 63), field(v1, 8 * j, 63))
                        } else {
                            let sh = 8 * (j - 4);
                            (
                                _mm512_or_si512(field(v2, sh, 15), _mm512_slli_epi32::<4>(field(v0, sh + 6, 3))),
                                _mm512_or_si512(field(v2, sh + 4, 15), _mm512_slli_epi32::<4>(field(v1, sh + 6, 3))),
                            )
                        };
                        scale[j as usize] = words(sc);
                        mins[j as usize] = mn;
                    }
                    let dmin = _mm512_cvtph_ps(_mm256_loadu_si256(gb.add(32) as *const __m256i));
                    let neg = _mm512_set1_epi32(i32::MIN);
                    _mm512_storeu_ps(out.nmin.as_mut_ptr().add(sb * 16), _mm512_castsi512_ps(_mm512_xor_si512(_mm512_castps_si512(dmin), neg)));
                    for p in 0..4 {
                        let pair = _mm512_or_si512(mins[2 * p], _mm512_slli_epi32::<16>(mins[2 * p + 1]));
                        _mm512_storeu_si512(out.mins.as_mut_ptr().add((sb * 4 + p) * 16) as *mut _, pair);
                    }
                    let zero = _mm512_setzero_si512();
                    for s in 0..4 {
                        for i in 0..16 {
                            // Tile row i of step s: bytes 4 (i % 8) .. of the 32-byte chunk s,
                            // low nibbles for sub-block 2s, high for 2s + 1.
                            let x = v(3 + 8 * s + i % 8);
                            let x = if i < 8 { _mm512_and_si512(x, nib) } else { _mm512_and_si512(_mm512_srli_epi32::<4>(x), nib) };
                            let (hi, lo) = mul_split(x, scale[2 * s + i / 8], zero);
                            _mm512_storeu_si512(q.add(2 * s * TILE + 64 * i) as *mut _, hi);
                            _mm512_storeu_si512(q.add((2 * s + 1) * TILE + 64 * i) as *mut _, lo);
                        }
                    }
                } else {
                    for (j, sc) in scale.iter_mut().enumerate() {
                        // Byte j % 4 of vector 48 + j / 4, sign-extended.
                        let x = v(48 + j / 4);
                        let x = _mm512_srai_epi32::<24>(_mm512_sllv_epi32(x, _mm512_set1_epi32(24 - 8 * (j % 4) as i32)));
                        *sc = words(x);
                    }
                    let three = _mm512_set1_epi32(0x0303_0303);
                    let offset = _mm512_set1_epi16(32);
                    for s in 0..4 {
                        let n = s / 2;
                        for i in 0..16 {
                            // Element k = 64 s + 4 i: quarter qq of its half n, position l.
                            let qq = 2 * (s % 2) + i / 8;
                            let low = v(16 * n + 8 * (qq & 1) + i % 8);
                            let low = _mm512_and_si512(_mm512_srlv_epi32(low, _mm512_set1_epi32(4 * (qq >> 1) as i32)), nib);
                            let high = _mm512_and_si512(_mm512_srlv_epi32(v(32 + 8 * n + i % 8), _mm512_set1_epi32(2 * qq as i32)), three);
                            let x = _mm512_or_si512(low, _mm512_slli_epi32::<4>(high));
                            let (hi, lo) = mul_split(x, scale[4 * s + i / 4], offset);
                            _mm512_storeu_si512(q.add(2 * s * TILE + 64 * i) as *mut _, hi);
                            _mm512_storeu_si512(q.add((2 * s + 1) * TILE + 64 * i) as *mut _, lo);
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::packed;
    use rand::{rngs::StdRng, Rng, SeedableRng};

    /// Random rows of `ty` with finite fp16 heads.
    pub(crate) fn random_rows(ty: DType, n: usize, nsb: usize, rng: &mut StdRng) -> Vec<u8> {
        let bb = ty.block_bytes();
        let mut w = vec![0u8; n * nsb * bb];
        rng.fill(&mut w[..]);
        let heads: &[usize] = if ty == DType::Q6_K { &[208] } else { &[0, 2] };
        for b in w.chunks_exact_mut(bb) {
            for &hd in heads {
                b[hd..hd + 2].copy_from_slice(&f16::from_f32(rng.gen_range(-0.01..0.01)).to_bits().to_le_bytes());
            }
        }
        w
    }

    fn area(nsb: usize) -> (Vec<u8>, Vec<f32>, Vec<f32>, Vec<u32>) {
        (vec![0xA5; nsb * SB_TILES_BYTES], vec![1.0; nsb * 16], vec![1.0; nsb * 16], vec![7; nsb * 64])
    }

    /// The staged integers times the scales give back ggml's dequantized weights.
    #[test]
    fn staged_rows_dequantize_as_ggml() {
        let mut rng = StdRng::seed_from_u64(11);
        for ty in [DType::Q4_K, DType::Q5_K, DType::Q6_K] {
            let (nsb, n) = (2, 11);
            let w = random_rows(ty, n, nsb, &mut rng);
            let rows: Vec<&[u8]> = w.chunks_exact(nsb * ty.block_bytes()).collect();
            let (mut q, mut d, mut nmin, mut mins) = area(nsb);
            stage_rows(ty, &rows, nsb, &mut ColTile { q: &mut q, d: &mut d, nmin: &mut nmin, mins: &mut mins });
            let to_f32 = crate::kernels::quant::scalar_kernels(ty).unwrap().to_f32;
            for (c, row) in rows.iter().enumerate() {
                let mut want = vec![0f32; nsb * SUPER];
                to_f32(row, &mut want);
                for sb in 0..nsb {
                    for k in 0..SUPER {
                        let at = sb * SB_TILES_BYTES + 2 * (k / 64) * TILE + (k % 64 / 4) * 64 + c * 4 + k % 4;
                        let p = ((q[at] as i8 as i32) << SHIFT) + q[at + TILE] as i32;
                        let mut x = d[sb * 16 + c] * p as f32;
                        if ty != DType::Q6_K {
                            let j = k / 32;
                            let m = (mins[(sb * 4 + j / 2) * 16 + c] >> (16 * (j % 2))) & 0xFFFF;
                            x += nmin[sb * 16 + c] * m as f32;
                        }
                        let w = want[sb * SUPER + k];
                        assert!((x - w).abs() <= 1e-6 * w.abs().max(1e-3), "{ty:?} row {c} k {k}: {x} vs {w}");
                    }
                }
            }
            // Columns past the rows given are zeros.
            for k in 0..SUPER {
                let at = 2 * (k / 64) * TILE + (k % 64 / 4) * 64 + 15 * 4 + k % 4;
                assert_eq!((q[at], q[at + TILE], d[15]), (0, 0, 0.0));
            }
        }
    }

    #[test]
    fn packed_stager_agrees_with_rows() {
        if !std::arch::is_x86_feature_detected!("avx512bw") {
            eprintln!("SKIP: no AVX-512BW on this CPU");
            return;
        }
        let mut rng = StdRng::seed_from_u64(12);
        for ty in [DType::Q4_K, DType::Q6_K] {
            let nsb = 3;
            let layout = packed::Layout::for_weights(ty, nsb * SUPER, 16).unwrap();
            let w = random_rows(ty, 16, nsb, &mut rng);
            let mut pk = vec![0u8; w.len()];
            packed::pack(layout, ty, &w, &mut pk, 16, nsb * SUPER);
            let rows: Vec<&[u8]> = w.chunks_exact(nsb * ty.block_bytes()).collect();
            let (mut q0, mut d0, mut n0, mut m0) = area(nsb);
            stage_rows(ty, &rows, nsb, &mut ColTile { q: &mut q0, d: &mut d0, nmin: &mut n0, mins: &mut m0 });
            let (mut q1, mut d1, mut n1, mut m1) = area(nsb);
            stage_packed(layout, &pk, nsb, &mut ColTile { q: &mut q1, d: &mut d1, nmin: &mut n1, mins: &mut m1 }).expect("AVX-512 stager");
            assert!(q0 == q1, "{ty:?} tiles");
            assert!(d0 == d1, "{ty:?} scales");
            if ty == DType::Q4_K {
                assert!(n0 == n1 && m0 == m1, "{ty:?} minimums");
            }
        }
    }
}
