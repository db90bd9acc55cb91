//! The byte permutation shared by the 16-row layouts. Per 16-row group and block:
//! * each fp16 "head" field of the block (scale, minimum) for the 16 rows side by side, 32
//!   bytes per field, so one vector load gives a field for all 16 rows;
//! * then the rest of the block dealt out 4 bytes at a time into 64-byte vectors: vector i,
//!   lane r = row r's bytes `4i .. 4i + 4` of that rest (`lanes_at ..` in ggml's block), each
//!   byte passed through `flip` (an involution, so packing and unpacking use the same one).
//!
//! One row per 32-bit lane is what a VNNI dot (`vpdpbusd`) wants: against four broadcast
//! activation bytes it advances 16 rows by 4 k at once, with no horizontal sums.

/// One ggml block type seen as fp16 fields at `heads` plus `4 * vectors` bytes from
/// `lanes_at` (the block's other bytes).
pub struct BlockShape {
    pub row_block: usize,
    pub heads: &'static [usize],
    pub lanes_at: usize,
    pub vectors: usize,
    pub flip: u8,
}

impl BlockShape {
    /// Bytes of one block of one 16-row group (16 times the row block).
    pub const fn group_block(&self) -> usize {
        32 * self.heads.len() + 64 * self.vectors
    }

    /// Offset of vector `i` in a group block.
    pub const fn vector_at(&self, i: usize) -> usize {
        32 * self.heads.len() + 64 * i
    }

    fn check(&self) {
        assert_eq!(self.row_block, 2 * self.heads.len() + 4 * self.vectors, "shape covers the block");
        for &h in self.heads {
            assert!(h + 2 <= self.lanes_at || h >= self.lanes_at + 4 * self.vectors, "head inside the lanes");
        }
    }

    /// Row `r`'s block from a group block, back in ggml's layout.
    pub fn row_block_of(&self, gb: &[u8], r: usize, blk: &mut [u8]) {
        let (gb, blk) = (&gb[..self.group_block()], &mut blk[..self.row_block]);
        for (f, &h) in self.heads.iter().enumerate() {
            blk[h..h + 2].copy_from_slice(&gb[32 * f + 2 * r..][..2]);
        }
        for i in 0..self.vectors {
            let src = &gb[self.vector_at(i) + 4 * r..][..4];
            for (o, &v) in blk[self.lanes_at + 4 * i..][..4].iter_mut().zip(src) {
                *o = v ^ self.flip;
            }
        }
    }
}

/// Packs `n` (multiple of 16) rows of `nb` blocks from ggml's layout into the group layout.
pub fn pack(s: &BlockShape, src: &[u8], dst: &mut [u8], n: usize, nb: usize) {
    s.check();
    let row = nb * s.row_block;
    assert!(n.is_multiple_of(16) && src.len() >= n * row && dst.len() >= n * row);
    for g in 0..n / 16 {
        for b in 0..nb {
            let out = &mut dst[(g * nb + b) * s.group_block()..][..s.group_block()];
            for r in 0..16 {
                let blk = &src[(g * 16 + r) * row + b * s.row_block..][..s.row_block];
                for (f, &h) in s.heads.iter().enumerate() {
                    out[32 * f + 2 * r..][..2].copy_from_slice(&blk[h..h + 2]);
                }
                for i in 0..s.vectors {
                    for j in 0..4 {
                        out[s.vector_at(i) + r * 4 + j] = blk[s.lanes_at + 4 * i + j] ^ s.flip;
                    }
                }
            }
        }
    }
}

/// Inverse of [`pack`].
pub fn unpack(s: &BlockShape, src: &[u8], dst: &mut [u8], n: usize, nb: usize) {
    s.check();
    let row = nb * s.row_block;
    assert!(n.is_multiple_of(16) && src.len() >= n * row && dst.len() >= n * row);
    for g in 0..n / 16 {
        for b in 0..nb {
            let inp = &src[(g * nb + b) * s.group_block()..][..s.group_block()];
            for r in 0..16 {
                s.row_block_of(inp, r, &mut dst[(g * 16 + r) * row + b * s.row_block..]);
            }
        }
    }
}
