//! `Q8_0x16`: 16 Q8_0 weight rows interleaved per block of 32 k. For row group g and block b,
//! 544 bytes at `(g * nb + b) * 544`: 16 fp16 scales in row order, then eight 64-byte vectors;
//! in vector i, lane r holds row r's quants `4i .. 4i + 4`, each stored as q + 128 (unsigned,
//! the operand VNNI wants unsigned; the GEMV subtracts 128 * sum(a)).

use crate::backend::dtype::DType;
use half::f16;

use super::lanes::{self, BlockShape};

const SHAPE: BlockShape = BlockShape { row_block: 34, qs_at: 2, vectors: 8, flip: 0x80 };

/// Bytes of one block of one 16-row group.
pub const GROUP_BLOCK: usize = SHAPE.group_block();

/// Packs `n` (multiple of 16) rows of `nb` Q8_0 blocks from ggml's layout.
pub fn pack(src: &[u8], dst: &mut [u8], n: usize, nb: usize) {
    lanes::pack(&SHAPE, src, dst, n, nb)
}

/// Inverse of [`pack`].
pub fn unpack(src: &[u8], dst: &mut [u8], n: usize, nb: usize) {
    lanes::unpack(&SHAPE, src, dst, n, nb)
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
