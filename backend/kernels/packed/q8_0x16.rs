//! `Q8_0x16`: 16 Q8_0 weight rows interleaved per block of 32 k. For row group g and block b,
//! 544 bytes at `(g * nb + b) * 544`: 16 fp16 scales in row order, then eight 64-byte vectors;
//! in vector i, lane r holds row r's quants `4i .. 4i + 4`, each stored as q + 128 (unsigned,
//! the operand VNNI wants unsigned; the GEMV subtracts 128 * sum(a)).

use crate::backend::dtype::DType;
use half::f16;

/// Bytes of one block of one 16-row group.
pub const GROUP_BLOCK: usize = 544;
const ROW_BLOCK: usize = 34; // block_q8_0

/// Packs `n` (multiple of 16) rows of `nb` Q8_0 blocks from ggml's layout.
pub fn pack(src: &[u8], dst: &mut [u8], n: usize, nb: usize) {
    let row = nb * ROW_BLOCK;
    assert!(n.is_multiple_of(16) && src.len() >= n * row && dst.len() >= n * row);
    for g in 0..n / 16 {
        for b in 0..nb {
            let out = &mut dst[(g * nb + b) * GROUP_BLOCK..][..GROUP_BLOCK];
            for r in 0..16 {
                let blk = &src[(g * 16 + r) * row + b * ROW_BLOCK..][..ROW_BLOCK];
                out[2 * r..2 * r + 2].copy_from_slice(&blk[0..2]);
                for i in 0..8 {
                    for j in 0..4 {
                        out[32 + i * 64 + r * 4 + j] = blk[2 + 4 * i + j] ^ 0x80;
                    }
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
                for i in 0..8 {
                    for j in 0..4 {
                        blk[2 + 4 * i + j] = inp[32 + i * 64 + r * 4 + j] ^ 0x80;
                    }
                }
            }
        }
    }
}

/// The quant of row `r`, element `j` of a group block.
#[inline]
fn quant(gb: &[u8], r: usize, j: usize) -> i32 {
    (gb[32 + (j / 4) * 64 + r * 4 + j % 4] ^ 0x80) as i8 as i32
}

/// Row `r` (< 16) of one group, dequantized: x = d * q.
pub fn row_to_f32(group: &[u8], nb: usize, r: usize, out: &mut [f32]) {
    assert!(r < 16 && group.len() >= nb * GROUP_BLOCK && out.len() >= nb * 32);
    for b in 0..nb {
        let gb = &group[b * GROUP_BLOCK..][..GROUP_BLOCK];
        let d = f16::from_bits(u16::from_le_bytes([gb[2 * r], gb[2 * r + 1]])).to_f32();
        for j in 0..32 {
            out[b * 32 + j] = quant(gb, r, j) as f32 * d;
        }
    }
}

/// Scalar reference GEMV: per row and block, the exact int32 sum of q * a scaled by the two
/// fp16 scales in f32, as ggml's scalar Q8_0 x Q8_0 dot.
pub fn gemv_group_scalar(nb: usize, group: &[u8], acts: &[&[u8]], _sums: &[&[i32]], out: &mut [[f32; 16]]) {
    let bq8 = DType::Q8_0.block_bytes();
    assert!(group.len() >= nb * GROUP_BLOCK && out.len() >= acts.len());
    for (a, o) in acts.iter().zip(out.iter_mut()) {
        assert!(a.len() >= nb * bq8);
        *o = [0.0; 16];
        for b in 0..nb {
            let gb = &group[b * GROUP_BLOCK..][..GROUP_BLOCK];
            let ab = &a[b * bq8..][..bq8];
            let da = f16::from_bits(u16::from_le_bytes([ab[0], ab[1]])).to_f32();
            for (r, acc) in o.iter_mut().enumerate() {
                let dw = f16::from_bits(u16::from_le_bytes([gb[2 * r], gb[2 * r + 1]])).to_f32();
                let s: i32 = (0..32).map(|j| quant(gb, r, j) * ab[2 + j] as i8 as i32).sum();
                *acc += s as f32 * (dw * da);
            }
        }
    }
}
