//! What the blocked forms of prefill attention share: a block of 16 queries of one head,
//! its mask rows and which tiles they hide; and, for the tile form (`tiles`), ggml-cpu's
//! tiled online softmax over 64-key tiles (GGML_FA_TILE_KV).

use super::super::Node;
use crate::kernels::attn::BLOCK;

/// Keys per tile of the online softmax.
pub const KV_TILE: usize = 64;

pub const F16_NEG_INF: u16 = 0xFC00;

/// The node's parameters: `scale` already divided by `softcap` (when soft-capping), `sinks`
/// per head.
#[derive(Clone, Copy)]
pub struct Params<'a> {
    pub scale: f32,
    pub max_bias: f32,
    pub softcap: f32,
    pub sinks: Option<&'a [f32]>,
}

/// Up to 16 queries of one head: head `iq2` of sequence `iq3`, queries `i0 .. i0 + rows`.
#[derive(Clone, Copy)]
pub struct QBlock {
    pub iq2: usize,
    pub iq3: usize,
    pub i0: usize,
    pub rows: usize,
}

impl QBlock {
    /// Row i's mask row as bytes (2 per key; None without a mask).
    pub fn mask_bytes<'a>(&self, node: &'a Node, i: usize) -> Option<&'a [u8]> {
        let n_kv = node.src(1).ne[1];
        // Mask rows hold at least n_kv f16 (supports).
        node.src[3].as_ref().map(|m| &m.row::<u8>(self.i0 + i, self.iq2 % m.ne[2], self.iq3 % m.ne[3])[..2 * n_kv])
    }

    /// The block's mask rows (None without a mask, and for padding rows).
    pub fn mask_rows<'a>(&self, node: &'a Node) -> [Option<&'a [u16]>; BLOCK] {
        let n_kv = node.src(1).ne[1];
        let mask = node.src[3].as_ref();
        // Mask rows hold at least n_kv f16 (supports).
        std::array::from_fn(|i| {
            (i < self.rows)
                .then(|| mask.map(|m| &m.row::<u16>(self.i0 + i, self.iq2 % m.ne[2], self.iq3 % m.ne[3])[..n_kv]))
                .flatten()
        })
    }

}

/// Whether the mask hides tile t (of a cache of `n_kv` keys) from every query of a block
/// of `rows` queries.
pub fn hidden(mrows: &[Option<&[u16]>; BLOCK], rows: usize, t: usize, n_kv: usize) -> bool {
    let keys = t * KV_TILE..((t + 1) * KV_TILE).min(n_kv);
    mrows[0].is_some() && mrows[..rows].iter().all(|m| m.unwrap()[keys.clone()].iter().all(|&x| x == F16_NEG_INF))
}

/// The largest of `row` (ggml's `a > b ? a : b` per element), in 16 lanes: the same value
/// as one running maximum whatever the order (a maximum never rounds), without its chain
/// of dependent compares.
pub fn row_max(row: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; 16];
    let chunks = row.chunks_exact(16);
    let tail = chunks.remainder();
    for c in chunks {
        for (m, &x) in lanes.iter_mut().zip(c) {
            *m = if *m > x { *m } else { x };
        }
    }
    let m = lanes.iter().copied().fold(f32::NEG_INFINITY, |m, x| if m > x { m } else { x });
    tail.iter().copied().fold(m, |m, x| if m > x { m } else { x })
}
