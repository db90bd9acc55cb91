//! `Q4_0x16` (see the module above): packing, unpacking and the scalar reference GEMV.

use crate::backend::dtype::DType;
use half::f16;

use super::lanes::{self, BlockShape};

const SHAPE: BlockShape = BlockShape { row_block: 18, qs_at: 2, vectors: 4, flip: 0 };

/// Bytes of one block of one 16-row group.
pub const GROUP_BLOCK: usize = SHAPE.group_block();

/// Packs `n` (multiple of 16) rows of `nb` Q4_0 blocks from ggml's layout `src` into `dst`
/// (same size).
pub fn pack(src: &[u8], dst: &mut [u8], n: usize, nb: usize) {
    lanes::pack(&SHAPE, src, dst, n, nb)
}

/// Inverse of [`pack`].
pub fn unpack(src: &[u8], dst: &mut [u8], n: usize, nb: usize) {
    lanes::unpack(&SHAPE, src, dst, n, nb)
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
