//! `Q4_0x16` (see the module above): packing, unpacking and the scalar reference GEMV.

use crate::backend::dtype::DType;
use half::f16;

/// Bytes of one block of one 16-row group.
pub const GROUP_BLOCK: usize = 288;
const ROW_BLOCK: usize = 18; // block_q4_0

/// Packs `n` (multiple of 16) rows of `nb` Q4_0 blocks from ggml's layout `src` into `dst`
/// (same size).
pub fn pack(src: &[u8], dst: &mut [u8], n: usize, nb: usize) {
    let row = nb * ROW_BLOCK;
    assert!(n.is_multiple_of(16) && src.len() >= n * row && dst.len() >= n * row);
    for g in 0..n / 16 {
        for b in 0..nb {
            let out = &mut dst[(g * nb + b) * GROUP_BLOCK..][..GROUP_BLOCK];
            for r in 0..16 {
                let blk = &src[(g * 16 + r) * row + b * ROW_BLOCK..][..ROW_BLOCK];
                out[2 * r..2 * r + 2].copy_from_slice(&blk[0..2]);
                for i in 0..4 {
                    out[32 + i * 64 + r * 4..][..4].copy_from_slice(&blk[2 + 4 * i..6 + 4 * i]);
                }
            }
        }
    }
}

/// Inverse of [`pack`].
pub fn unpack(src: &[u8], dst: &mut [u8], n: usize, nb: usize) {
    let row = nb * ROW_BLOCK;
    assert!(n.is_multiple_of(16) && src.len() >= n * row && dst.len() >= n * row);
    for g in 0..n / 16 {
        for b in 0..nb {
            let inp = &src[(g * nb + b) * GROUP_BLOCK..][..GROUP_BLOCK];
            for r in 0..16 {
                let blk = &mut dst[(g * 16 + r) * row + b * ROW_BLOCK..][..ROW_BLOCK];
                blk[0..2].copy_from_slice(&inp[2 * r..2 * r + 2]);
                for i in 0..4 {
                    blk[2 + 4 * i..6 + 4 * i].copy_from_slice(&inp[32 + i * 64 + r * 4..][..4]);
                }
            }
        }
    }
}

/// Scalar reference of [`super::gemv_q4_0x16`]: per row and block, the exact int32 sum of
/// (q - 8) * a, scaled by the two fp16 scales in f32, as ggml's scalar Q4_0 x Q8_0 dot.
pub fn gemv_group_scalar(nb: usize, group: &[u8], acts: &[&[u8]], sums: &[&[i32]], out: &mut [[f32; 16]]) {
    let bq8 = DType::Q8_0.block_bytes();
    assert!(group.len() >= nb * GROUP_BLOCK && out.len() >= acts.len() && sums.len() >= acts.len());
    for (i, (a, o)) in acts.iter().zip(out.iter_mut()).enumerate() {
        assert!(a.len() >= nb * bq8 && sums[i].len() >= nb);
        *o = [0.0; 16];
        for b in 0..nb {
            let gb = &group[b * GROUP_BLOCK..][..GROUP_BLOCK];
            let ab = &a[b * bq8..][..bq8];
            let da = f16::from_bits(u16::from_le_bytes([ab[0], ab[1]])).to_f32();
            for (r, acc) in o.iter_mut().enumerate() {
                let dw = f16::from_bits(u16::from_le_bytes([gb[2 * r], gb[2 * r + 1]])).to_f32();
                let mut s = 0i32;
                for j in 0..16 {
                    let q = gb[32 + (j / 4) * 64 + r * 4 + j % 4];
                    s += ((q & 15) as i32 - 8) * ab[2 + j] as i8 as i32;
                    s += ((q >> 4) as i32 - 8) * ab[2 + j + 16] as i8 as i32;
                }
                *acc += s as f32 * (dw * da);
            }
        }
    }
}

/// Row `r` (< 16) of one group, dequantized: x = d * (q - 8), as ggml.
pub fn row_to_f32(group: &[u8], nb: usize, r: usize, out: &mut [f32]) {
    assert!(r < 16 && group.len() >= nb * GROUP_BLOCK && out.len() >= nb * 32);
    for b in 0..nb {
        let gb = &group[b * GROUP_BLOCK..][..GROUP_BLOCK];
        let d = f16::from_bits(u16::from_le_bytes([gb[2 * r], gb[2 * r + 1]])).to_f32();
        let o = &mut out[b * 32..][..32];
        for j in 0..16 {
            let q = gb[32 + (j / 4) * 64 + r * 4 + j % 4];
            o[j] = ((q & 15) as i32 - 8) as f32 * d;
            o[j + 16] = ((q >> 4) as i32 - 8) as f32 * d;
        }
    }
}
