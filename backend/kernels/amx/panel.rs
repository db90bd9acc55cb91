//! Decoding weight rows (ggml layout) into the tile unit's B-operand panels: 16 weight rows
//! (output columns) side by side in VNNI order, so one `tileloadd` with a 64-byte stride
//! fetches a whole B tile. Done once per panel per call and reused across every row tile of
//! the activations; portable code (it is data movement, not arithmetic).
//!
//! Rows beyond the ones given (a partial last panel) decode as zeros.

use super::gemm::{BF16_BTILE, BF16_KCHUNK, I8_BTILE, I8_KBLOCK};
use crate::backend::dtype::DType;
use half::{bf16, f16};

/// The weight types with an int8 panel decoder: (has a per-block minimum).
pub fn i8_weight(ty: DType) -> Option<bool> {
    match ty {
        DType::Q8_0 | DType::Q4_0 => Some(false),
        DType::Q4_1 => Some(true),
        _ => None,
    }
}

/// The weight types with a bf16 panel decoder.
pub fn bf16_weight(ty: DType) -> bool {
    matches!(ty, DType::BF16 | DType::F16)
}

#[inline]
fn h(b: &[u8], at: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([b[at], b[at + 1]])).to_f32()
}

/// Decodes up to 16 weight `rows` of type `ty` (each `nb` blocks of 32) into an int8 panel:
/// `q[b * I8_BTILE + (k / 4) * 64 + col * 4 + k % 4]`, scales `d[b * 16 + col]`, minimums
/// `m[b * 16 + col]` (types with a minimum only; `m` is then `nb * 16` long).
pub fn decode_i8(ty: DType, rows: &[&[u8]], nb: usize, q: &mut [u8], d: &mut [f32], m: &mut [f32]) {
    assert!(rows.len() <= 16 && q.len() >= nb * I8_BTILE && d.len() >= nb * 16);
    let has_min = i8_weight(ty).expect("decode_i8: type without an int8 decoder");
    assert!(!has_min || m.len() >= nb * 16);
    let bs = ty.row_bytes(I8_KBLOCK);
    let mut vals = [0i8; I8_KBLOCK];
    for col in 0..16 {
        for b in 0..nb {
            let (scale, min) = match rows.get(col) {
                None => {
                    vals = [0; I8_KBLOCK];
                    (0.0, 0.0)
                }
                Some(row) => {
                    let blk = &row[b * bs..(b + 1) * bs];
                    match ty {
                        DType::Q8_0 => {
                            for (v, &x) in vals.iter_mut().zip(&blk[2..34]) {
                                *v = x as i8;
                            }
                            (h(blk, 0), 0.0)
                        }
                        DType::Q4_0 => {
                            for j in 0..16 {
                                vals[j] = (blk[2 + j] & 15) as i8 - 8;
                                vals[j + 16] = (blk[2 + j] >> 4) as i8 - 8;
                            }
                            (h(blk, 0), 0.0)
                        }
                        DType::Q4_1 => {
                            for j in 0..16 {
                                vals[j] = (blk[4 + j] & 15) as i8;
                                vals[j + 16] = (blk[4 + j] >> 4) as i8;
                            }
                            (h(blk, 0), h(blk, 2))
                        }
                        _ => unreachable!(),
                    }
                }
            };
            let tile = &mut q[b * I8_BTILE..(b + 1) * I8_BTILE];
            for (k4, chunk) in vals.chunks_exact(4).enumerate() {
                for (i, &v) in chunk.iter().enumerate() {
                    tile[k4 * 64 + col * 4 + i] = v as u8;
                }
            }
            d[b * 16 + col] = scale;
            if has_min {
                m[b * 16 + col] = min;
            }
        }
    }
}

/// Decodes up to 16 weight `rows` (BF16, or F16 rounded to bf16) of `kchunks * 32` elements
/// into a bf16 panel: element (k, col) at `out[kc * BF16_BTILE + (k / 2) * 64 + col * 4 +
/// (k % 2) * 2]` with kc = k / 32 (k local to the chunk).
pub fn decode_bf16(ty: DType, rows: &[&[u8]], kchunks: usize, out: &mut [u8]) {
    assert!(rows.len() <= 16 && out.len() >= kchunks * BF16_BTILE && bf16_weight(ty));
    for col in 0..16 {
        for kc in 0..kchunks {
            let tile = &mut out[kc * BF16_BTILE..(kc + 1) * BF16_BTILE];
            for k in 0..BF16_KCHUNK {
                let bits: u16 = match rows.get(col) {
                    None => 0,
                    Some(row) => {
                        let at = (kc * BF16_KCHUNK + k) * 2;
                        let raw = u16::from_le_bytes([row[at], row[at + 1]]);
                        match ty {
                            DType::BF16 => raw,
                            _ => bf16::from_f32(f16::from_bits(raw).to_f32()).to_bits(),
                        }
                    }
                };
                let at = (k / 2) * 64 + col * 4 + (k % 2) * 2;
                tile[at..at + 2].copy_from_slice(&bits.to_le_bytes());
            }
        }
    }
}
