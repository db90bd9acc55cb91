//! The byte permutation shared by the 16-row layouts: per 16-row group and block, the 16
//! rows' fp16 scales side by side, then the rows' quant bytes dealt out 4 at a time into
//! 64-byte vectors (vector i, lane r = row r's quant bytes 4i .. 4i + 4), each byte passed
//! through `flip` (an involution, so packing and unpacking use the same one).

/// One ggml block type seen as: fp16 scale at 0, `vectors * 4` quant bytes at `qs_at`.
pub struct BlockShape {
    pub row_block: usize,
    pub qs_at: usize,
    pub vectors: usize,
    pub flip: u8,
}

impl BlockShape {
    /// Bytes of one block of one 16-row group.
    pub const fn group_block(&self) -> usize {
        32 + 64 * self.vectors
    }
}

/// Packs `n` (multiple of 16) rows of `nb` blocks from ggml's layout into the group layout.
pub fn pack(s: &BlockShape, src: &[u8], dst: &mut [u8], n: usize, nb: usize) {
    let row = nb * s.row_block;
    assert!(s.row_block == s.qs_at + 4 * s.vectors && s.qs_at == 2);
    assert!(n.is_multiple_of(16) && src.len() >= n * row && dst.len() >= n * row);
    for g in 0..n / 16 {
        for b in 0..nb {
            let out = &mut dst[(g * nb + b) * s.group_block()..][..s.group_block()];
            for r in 0..16 {
                let blk = &src[(g * 16 + r) * row + b * s.row_block..][..s.row_block];
                out[2 * r..2 * r + 2].copy_from_slice(&blk[0..2]);
                for i in 0..s.vectors {
                    for j in 0..4 {
                        out[32 + i * 64 + r * 4 + j] = blk[s.qs_at + 4 * i + j] ^ s.flip;
                    }
                }
            }
        }
    }
}

/// Inverse of [`pack`].
pub fn unpack(s: &BlockShape, src: &[u8], dst: &mut [u8], n: usize, nb: usize) {
    let row = nb * s.row_block;
    assert!(n.is_multiple_of(16) && src.len() >= n * row && dst.len() >= n * row);
    for g in 0..n / 16 {
        for b in 0..nb {
            let inp = &src[(g * nb + b) * s.group_block()..][..s.group_block()];
            for r in 0..16 {
                let blk = &mut dst[(g * 16 + r) * row + b * s.row_block..][..s.row_block];
                blk[0..2].copy_from_slice(&inp[2 * r..2 * r + 2]);
                for i in 0..s.vectors {
                    for j in 0..4 {
                        blk[s.qs_at + 4 * i + j] = inp[32 + i * 64 + r * 4 + j] ^ s.flip;
                    }
                }
            }
        }
    }
}
