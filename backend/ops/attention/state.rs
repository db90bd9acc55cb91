//! A query row's softmax state over the keys, in 64-key tiles: the arithmetic the per-row
//! and the streamed path share, so that a row's result does not depend on which path ran
//! it, on the other queries of the node, on the thread count or on how far past its keys
//! the cache view reaches (batch invariance).
//!
//! Tile t holds keys `64 t .. 64 t + 64` of the view. Its scores (the kernels' dot
//! products, `kernels::attn_rows`) are finished here (scale, cap, mask; keys past the view
//! count as masked), then give the tile's state: its maximum `m`, the sum `l` of
//! `exp(score - m)` over all 64 places, and its weighted values `o`, one fused
//! multiply-add chain per output over its keys in order from zero. A row's states fold in
//! tile order into one ([`fold`]); the tiles themselves are independent, so threads may
//! compute them in any order.

use crate::kernels::vmath;
use super::block::{row_max, Params};

/// Keys per tile.
pub const TILE: usize = 64;

/// A row's scores of one tile (`row`: 64 places, the first `n` the keys in the view) to
/// finished logits in place: scaled (or capped), plus `slope` times the mask; -inf where
/// the mask is -inf and past the view. `mask` holds the row's mask values (in f32) for
/// those `n` keys. Each product rounded, then the sum, as the tiers' `finish_scores`
/// kernels.
pub fn finish_scores(row: &mut [f32], n: usize, p: &Params, slope: f32, mask: Option<&[f32]>) {
    let (keys, past) = row[..TILE].split_at_mut(n);
    if p.softcap != 0.0 {
        keys.iter_mut().for_each(|x| *x = p.softcap * (*x * p.scale).tanh());
    } else {
        keys.iter_mut().for_each(|x| *x *= p.scale);
    }
    if let Some(m) = mask {
        for (x, &mv) in keys.iter_mut().zip(&m[..n]) {
            *x = if mv == f32::NEG_INFINITY { f32::NEG_INFINITY } else { *x + slope * mv };
        }
    }
    past.fill(f32::NEG_INFINITY);
}

/// A tile's logits (64 places) to its weights in place; returns its maximum and sum. A tile
/// the row sees no key of gives (-inf, 0) and zero weights.
pub fn weights(row: &mut [f32], vm: &vmath::Kernels) -> (f32, f32) {
    let row = &mut row[..TILE];
    let m = row_max(row);
    if m == f32::NEG_INFINITY {
        row.fill(0.0);
        return (m, 0.0);
    }
    (m, (vm.soft_max)(row, m) as f32)
}

/// A row's state before its first tile: the sink (a logit with no value) or nothing; the
/// output `o` zero.
pub fn start(sink: Option<f32>, o: &mut [f32]) -> (f32, f32) {
    o.fill(0.0);
    match sink {
        Some(s) => (s, 1.0),
        None => (f32::NEG_INFINITY, 0.0),
    }
}

/// Folds a tile's state (m, l, ot) into the row's (mm, ll, o).
pub fn fold(mm: &mut f32, ll: &mut f32, o: &mut [f32], m: f32, l: f32, ot: &[f32]) {
    if m == f32::NEG_INFINITY {
        return;
    }
    // One of the two factors is exp(0) = 1, and a product by 1 is exact: only the other
    // is computed and applied.
    if m > *mm {
        let a = (*mm - m).exp();
        *ll = *ll * a + l;
        o.iter_mut().zip(ot).for_each(|(x, &y)| *x = *x * a + y);
        *mm = m;
    } else {
        let b = (m - *mm).exp();
        *ll += l * b;
        o.iter_mut().zip(ot).for_each(|(x, &y)| *x += y * b);
    }
}

/// The row's output: its folded values over their sum (zero for a row that saw nothing).
pub fn finish(ll: f32, o: &[f32], out: &mut [f32]) {
    let inv = if ll == 0.0 { 0.0 } else { 1.0 / ll };
    out.iter_mut().zip(o).for_each(|(d, &a)| *d = a * inv);
}

/// The sink of head h, if the node has sinks.
pub fn sink(p: &Params, h: usize) -> Option<f32> {
    p.sinks.map(|s| s[h])
}
