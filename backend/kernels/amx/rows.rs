//! Weight rows unpacked for the tile unit: int8 values with f32 block scales (and
//! minimums) in the int8 kernel's column operand (B tiles: 16 weight rows x 4 k per 64-byte
//! tile row), or bf16 A tiles (K contiguous per row), once per call per 16-row tile. The
//! packed 16-row layouts hold their 4-byte lanes in that column order already. Portable
//! code: data movement.
//!
//! Rows beyond the ones given (a partial last tile) come out as zeros.

use super::cols_avx512::{self, Kind};
use super::gemm::I8_KBLOCK;
use crate::dtype::DType;
use crate::kernels::packed::Layout;
use crate::kernels::quant::TypeKernels;

/// The process's table entry of `ty` (the tile kernels run beside the process's tier).
fn kernels(ty: DType) -> Option<&'static TypeKernels> {
    crate::kernels::registry::active().kernels(ty)
}
use half::f16;

/// The weight types with an int8 unpacker, and whether they carry a per-block minimum.
/// Q5_K fits the Q4_1 form per 32-element sub-block: x = (d sc) q - (dmin m), so its scale
/// is d sc and its minimum -(dmin m) (Q4_K and Q6_K run on the super-block kernel,
/// `ks_cols`; the K-quant code here serves Q5_K).
pub fn i8_weight(ty: DType) -> Option<bool> {
    match ty {
        DType::Q8_0 | DType::Q4_0 => Some(false),
        DType::Q4_1 | DType::Q5_K => Some(true),
        _ => None,
    }
}

/// Sub-block `j` (0..8) of a K-quant super-block's 12 packed bytes: its 6-bit scale and
/// minimum (ggml's `get_scale_min_k4`).
fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        ((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4))
    }
}

/// Scale and minimum of int8 block `b` (32 elements) of a row of `ty`: for the K-quants
/// (sub-block b % 8 of super-block b / 8) the minimum comes negated, so that every type
/// reads x = d q + m.
fn block_scale_min(ty: DType, row: &[u8], b: usize) -> (f32, f32) {
    match ty {
        DType::Q4_K | DType::Q5_K => {
            let blk = &row[b / 8 * ty.block_bytes()..];
            let (sc, m) = scale_min_k4(b % 8, &blk[4..16]);
            (h(blk, 0) * sc as f32, -(h(blk, 2) * m as f32))
        }
        DType::Q4_1 => {
            let blk = &row[b * ty.block_bytes()..];
            (h(blk, 0), h(blk, 2))
        }
        _ => (h(&row[b * ty.block_bytes()..], 0), 0.0),
    }
}

/// The weight types with a bf16 unpacker: the float types and every type with a
/// dequantizer in the kernel table.
pub fn bf16_weight(ty: DType) -> bool {
    ty != DType::F32 && kernels(ty).is_some_and(|k| k.vec_dot.is_some())
}

#[inline]
fn h(b: &[u8], at: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([b[at], b[at + 1]])).to_f32()
}

/// Unpacks the scales (and minimums) of up to 16 weight rows of `nb` blocks:
/// `d[b * 16 + r]`, `m[b * 16 + r]` (`m` may be empty for types without a minimum).
pub fn i8_scales(ty: DType, rows: &[&[u8]], nb: usize, d: &mut [f32], m: &mut [f32]) {
    let has_min = i8_weight(ty).expect("i8_scales: type without an int8 unpacker");
    assert!(rows.len() <= 16 && d.len() >= nb * 16 && (!has_min || m.len() >= nb * 16));
    for r in 0..16 {
        for b in 0..nb {
            let (scale, min) = match rows.get(r) {
                None => (0.0, 0.0),
                Some(row) => block_scale_min(ty, row, b),
            };
            d[b * 16 + r] = scale;
            if has_min {
                m[b * 16 + r] = min;
            }
        }
    }
}

/// Unpacks up to 16 weight rows of `nb` blocks into int8 rows, block by block: block b of
/// row r at `q[b * 512 + r * 32 ..]` (for [`rows_to_cols`]), plus their scales as
/// [`i8_scales`].
pub fn i8_rows(ty: DType, rows: &[&[u8]], nb: usize, q: &mut [u8], d: &mut [f32], m: &mut [f32]) {
    assert!(q.len() >= nb * 16 * I8_KBLOCK);
    i8_scales(ty, rows, nb, d, m);
    let bs = ty.block_bytes();
    for r in 0..16 {
        for b in 0..nb {
            let o = &mut q[b * 16 * I8_KBLOCK + r * I8_KBLOCK..][..I8_KBLOCK];
            let Some(row) = rows.get(r) else {
                o.fill(0);
                continue;
            };
            if matches!(ty, DType::Q4_K | DType::Q5_K) {
                k_quant_block(ty, row, b, o);
                continue;
            }
            let blk = &row[b * bs..(b + 1) * bs];
            match ty {
                DType::Q8_0 => o.copy_from_slice(&blk[2..34]),
                DType::Q4_0 => {
                    for j in 0..16 {
                        o[j] = ((blk[2 + j] & 15) as i8 - 8) as u8;
                        o[j + 16] = ((blk[2 + j] >> 4) as i8 - 8) as u8;
                    }
                }
                DType::Q4_1 => {
                    for j in 0..16 {
                        o[j] = blk[4 + j] & 15;
                        o[j + 16] = blk[4 + j] >> 4;
                    }
                }
                _ => unreachable!(),
            }
        }
    }
}

/// The 32 unsigned values of int8 block `b` of a Q4_K or Q5_K row: sub-block j = b % 8 of
/// super-block b / 8 is the low (j even) or high (j odd) nibbles of the 32 `qs` bytes of
/// pair j / 2, plus for Q5_K 16 times bit j of each `qh` byte (ggml's dequantizers).
fn k_quant_block(ty: DType, row: &[u8], b: usize, o: &mut [u8]) {
    let blk = &row[b / 8 * ty.block_bytes()..][..ty.block_bytes()];
    let j = b % 8;
    let (qh, qs) = match ty {
        DType::Q5_K => (Some(&blk[16..48]), &blk[48 + 32 * (j / 2)..][..32]),
        _ => (None, &blk[16 + 32 * (j / 2)..][..32]),
    };
    for l in 0..32 {
        let nib = if j % 2 == 0 { qs[l] & 15 } else { qs[l] >> 4 };
        o[l] = nib + qh.map_or(0, |h| ((h[l] >> j) & 1) << 4);
    }
}

/// Bytes of one bf16 A tile (16 rows of 32 k).
pub const BF16_ATILE: usize = 1024;

/// Row `r` of a 16-row group (`2 k` bytes of bf16) into tile order: k step s (32 k) of row
/// r at `out[s * 1024 + r * 64 ..]`, so each A tile is 1 KB contiguous (rows at a large
/// power-of-two stride would share a handful of L1 sets and evict each other).
fn to_tile_order(row: &[u8], r: usize, out: &mut [u8]) {
    for (s, chunk) in row.chunks_exact(64).enumerate() {
        out[s * BF16_ATILE + r * 64..][..64].copy_from_slice(chunk);
    }
}

/// Unpacks 16 weight rows of `k` (multiple of 32) elements into bf16 A tiles in tile order
/// (see [`to_tile_order`]; `out` holds `32 k` bytes): row r < `nrows` comes from
/// `row_f32(r, tmp)`, which dequantizes it into `tmp` (k floats), rounded to nearest-even
/// bf16 through `row` (2 k bytes); rows from `nrows` on are zeros.
pub fn bf16_rows_from(nrows: usize, k: usize, out: &mut [u8], tmp: &mut [f32], row: &mut [u8], mut row_f32: impl FnMut(usize, &mut [f32])) {
    assert!(nrows <= 16 && k.is_multiple_of(32) && out.len() >= 32 * k && tmp.len() >= k && row.len() >= 2 * k);
    let to_bf16 = kernels(DType::BF16).unwrap().from_f32.unwrap();
    for r in 0..16 {
        if r < nrows {
            row_f32(r, &mut tmp[..k]);
            to_bf16(&tmp[..k], &mut row[..2 * k]);
        } else {
            row[..2 * k].fill(0);
        }
        to_tile_order(&row[..2 * k], r, out);
    }
}

/// [`bf16_rows_from`] for up to 16 rows in ggml's layout: BF16 copied, everything else
/// dequantized by the kernel table.
pub fn bf16_rows(ty: DType, rows: &[&[u8]], k: usize, out: &mut [u8], tmp: &mut [f32], row: &mut [u8]) {
    assert!(rows.len() <= 16 && bf16_weight(ty) && k.is_multiple_of(32) && out.len() >= 32 * k);
    if ty == DType::BF16 {
        for r in 0..16 {
            match rows.get(r) {
                Some(src) => to_tile_order(&src[..2 * k], r, out),
                None => {
                    row[..2 * k].fill(0);
                    to_tile_order(&row[..2 * k], r, out)
                }
            }
        }
        return;
    }
    let to_f32 = kernels(ty).unwrap().to_f32;
    bf16_rows_from(rows.len(), k, out, tmp, row, |r, t| to_f32(rows[r], t));
}

/// Blocks of 16 int8 rows as [`i8_rows`] writes them into the column operand's tiles:
/// block b's value (row r, k) at `out[b * 512 + (k / 4) * 64 + r * 4 + k % 4]`.
pub fn rows_to_cols(nb: usize, rows: &[u8], out: &mut [u8]) {
    assert!(rows.len() >= nb * 16 * I8_KBLOCK && out.len() >= nb * 16 * I8_KBLOCK);
    for (src, dst) in rows.chunks_exact(16 * I8_KBLOCK).zip(out.chunks_exact_mut(16 * I8_KBLOCK)).take(nb) {
        for r in 0..16 {
            for k4 in 0..I8_KBLOCK / 4 {
                dst[k4 * 64 + r * 4..][..4].copy_from_slice(&src[r * I8_KBLOCK + k4 * 4..][..4]);
            }
        }
    }
}

/// One 16-row group of a packed layout (`Q4_0x16`, `Q4_1x16`, `Q8_0x16`; `None`
/// for others) into the column operand's tiles as [`rows_to_cols`] lays them out, with
/// scales (and minimums) as [`i8_scales`]: vector i of a block holds the 16 rows' `qs`
/// bytes 4i .. 4i + 4 lane by lane, so its low nibbles are tile row i (k = 4i ..) and its
/// high nibbles tile row 4 + i (k = 16 + 4i ..); Q8_0's eight vectors are tile rows as they
/// are.
pub fn i8_cols_packed(layout: Layout, group: &[u8], nb: usize, q: &mut [u8], d: &mut [f32], m: &mut [f32]) -> Option<()> {
    let kind = match layout {
        Layout::Q4_0x16 => Kind::Q4_0,
        Layout::Q4_1x16 => Kind::Q4_1,
        Layout::Q8_0x16 => Kind::Q8_0,
        _ => return None,
    };
    let gblock = layout.group_block();
    let has_min = matches!(kind, Kind::Q4_1);
    assert!(group.len() >= nb * gblock && q.len() >= nb * 16 * I8_KBLOCK && d.len() >= nb * 16 && (!has_min || m.len() >= nb * 16));
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: AVX-512F checked; the lengths checked above are what `stage` reads and
        // writes; gblock is the layout's block size.
        unsafe { cols_avx512::stage(kind, group.as_ptr(), gblock, nb, q.as_mut_ptr(), d.as_mut_ptr(), m.as_mut_ptr()) };
        return Some(());
    }
    i8_cols_scalar(layout, group, nb, q, d, m)
}

/// [`i8_cols_packed`] in portable code, the reference of its AVX-512 form.
pub fn i8_cols_scalar(layout: Layout, group: &[u8], nb: usize, q: &mut [u8], d: &mut [f32], m: &mut [f32]) -> Option<()> {
    let (heads, vectors) = match layout {
        Layout::Q4_0x16 => (1, 4),
        Layout::Q4_1x16 => (2, 4),
        Layout::Q8_0x16 => (1, 8),
        _ => return None,
    };
    let gblock = layout.group_block();
    assert!(group.len() >= nb * gblock && q.len() >= nb * 16 * I8_KBLOCK && d.len() >= nb * 16 && (heads == 1 || m.len() >= nb * 16));
    let lanes = |v: &[u8]| -> [u32; 16] { std::array::from_fn(|r| u32::from_le_bytes(v[4 * r..4 * r + 4].try_into().expect("4 bytes"))) };
    let put = |o: &mut [u8], v: [u32; 16]| {
        for (c, x) in o.chunks_exact_mut(4).zip(v) {
            c.copy_from_slice(&x.to_le_bytes());
        }
    };
    for b in 0..nb {
        let gb = &group[b * gblock..(b + 1) * gblock];
        for r in 0..16 {
            d[b * 16 + r] = h(gb, 2 * r);
            if heads == 2 {
                m[b * 16 + r] = h(gb, 32 + 2 * r);
            }
        }
        let vec0 = 32 * heads;
        let tile = &mut q[b * 16 * I8_KBLOCK..(b + 1) * 16 * I8_KBLOCK];
        for i in 0..vectors {
            let v = lanes(&gb[vec0 + 64 * i..vec0 + 64 * i + 64]);
            match layout {
                // Q4_0's q - 8 bytewise without borrows: ((x | 0x80) - 8) ^ 0x80.
                Layout::Q4_0x16 => {
                    let sub8 = |x: u32| ((x | 0x8080_8080) - 0x0808_0808) ^ 0x8080_8080;
                    put(&mut tile[64 * i..64 * i + 64], v.map(|x| sub8(x & 0x0F0F_0F0F)));
                    put(&mut tile[64 * (4 + i)..64 * (4 + i) + 64], v.map(|x| sub8((x >> 4) & 0x0F0F_0F0F)));
                }
                Layout::Q4_1x16 => {
                    put(&mut tile[64 * i..64 * i + 64], v.map(|x| x & 0x0F0F_0F0F));
                    put(&mut tile[64 * (4 + i)..64 * (4 + i) + 64], v.map(|x| (x >> 4) & 0x0F0F_0F0F));
                }
                // Stored as q + 128 for VNNI's unsigned operand.
                _ => put(&mut tile[64 * i..64 * i + 64], v.map(|x| x ^ 0x8080_8080)),
            }
        }
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{rngs::StdRng, Rng, SeedableRng};

    /// The AVX-512 stager writes the portable one's bytes for random packed groups (any
    /// bytes: the stager moves bits, whatever the values), odd block counts included.
    #[test]
    fn packed_column_stagers_agree() {
        if !std::arch::is_x86_feature_detected!("avx512f") {
            eprintln!("SKIP: no AVX-512F on this CPU");
            return;
        }
        let mut rng = StdRng::seed_from_u64(7);
        for layout in [Layout::Q4_0x16, Layout::Q4_1x16, Layout::Q8_0x16] {
            for nb in [1, 3, 7, 8, 24] {
                let per = 1;
                let mut group = vec![0u8; nb / per * layout.group_block()];
                rng.fill(&mut group[..]);
                // Finite fp16 heads (any bits would do, but NaNs do not compare equal).
                let heads = if layout == Layout::Q4_1x16 { 32 } else { 16 };
                for b in 0..nb / per {
                    for h in 0..heads {
                        let v = half::f16::from_f32(rng.gen_range(-2.0..2.0)).to_bits().to_le_bytes();
                        group[b * layout.group_block() + 2 * h..][..2].copy_from_slice(&v);
                    }
                }
                let run = |f: fn(Layout, &[u8], usize, &mut [u8], &mut [f32], &mut [f32]) -> Option<()>| {
                    let (mut q, mut d, mut m) = (vec![0u8; nb * 512], vec![0f32; nb * 16], vec![0f32; nb * 16]);
                    f(layout, &group, nb, &mut q, &mut d, &mut m).expect("a packed int8 layout");
                    (q, d, m)
                };
                assert!(run(i8_cols_packed) == run(i8_cols_scalar), "{layout:?} nb {nb}");
            }
        }
    }
}
