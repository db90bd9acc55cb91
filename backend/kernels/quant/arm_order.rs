//! Scalar mirror of ggml-cpu's aarch64 float order for the 32-element quantized dots
//! (Q4_0 · Q8_0, Q4_1 · Q8_1, Q8_0 · Q8_0), as built for armv8.6-a+dotprod+i8mm by clang-19
//! with its default `-ffp-contract=on` (read off the object code of arch/arm/quants.c).
//!
//! On small models a change of accumulation order flips activation roundings that grow
//! through the layers, so the NEON tier gives these bits, and its tests compare against
//! this file bit for bit. What clang made of the C:
//! - `vmlaq_f32` / `vmlaq_n_f32` are `a + b * c` in clang's arm_neon.h, so they contract to
//!   one fused FMLA (a single rounding), as `vfmaq`.
//! - One row (`nrc == 1`): blocks in pairs, block 2i into accumulator 0 and 2i+1 into
//!   accumulator 1, each four f32 lanes; lane l holds the SDOT lane, the int32 sum of
//!   elements 4l..4l+4 and 16+4l..16+4l+4, fused-multiplied by `d_x * d_y`. The lanes sum as
//!   `(l0 + l1) + (l2 + l3)` (FADDP), accumulator 0 first. Q4_1's minimum terms go to a
//!   scalar, `summs += fma(m_x0, s_y0, m_x1 * s_y1)`, added last. An odd last block is
//!   the scalar loop, contracted per type (see [`tail`]).
//! - Two rows (`nrc == 2`, SMMLA): every block (no tail) adds `fma(isum, d_x * d_y, acc)`
//!   per row pair, in one f32 lane each; Q4_1's `m_x * s_y` go to a second vector by plain
//!   adds, added to the first at the end.

use super::blocks::*;
use super::check_vec_dot;
use crate::dtype::DType;

/// One rounding, as FMLA / FMADD: `a * b + c`.
#[inline]
fn fma(a: f32, b: f32, c: f32) -> f32 {
    a.mul_add(b, c)
}

/// A weight block's 32 values (Q4_0 already minus 8), `d` and (Q4_1) `m`.
fn weight(ty: DType, w: &[u8], ib: usize) -> ([i32; 32], f32, f32) {
    let mut v = [0i32; 32];
    match ty {
        DType::Q4_0 | DType::Q4_1 => {
            let (d, m, qs, off) = if ty == DType::Q4_0 {
                let x = BlockQ4_0::read_at(w, ib);
                (x.d, 0u16, x.qs, 8)
            } else {
                let x = BlockQ4_1::read_at(w, ib);
                (x.d, x.m, x.qs, 0)
            };
            for j in 0..16 {
                v[j] = (qs[j] & 0x0F) as i32 - off;
                v[j + 16] = (qs[j] >> 4) as i32 - off;
            }
            (v, fp16_to_f32(d), fp16_to_f32(m))
        }
        DType::Q8_0 => {
            let x = BlockQ8_0::read_at(w, ib);
            for j in 0..32 {
                v[j] = x.qs[j] as i32;
            }
            (v, fp16_to_f32(x.d), 0.0)
        }
        _ => panic!("arm_order: no 32-element dot for {}", ty.name()),
    }
}

/// An activation block's 32 quants, `d` and (Q8_1) `s`.
fn act(ty: DType, a: &[u8], ib: usize) -> ([i32; 32], f32, f32) {
    let mut v = [0i32; 32];
    if ty == DType::Q4_1 {
        let y = BlockQ8_1::read_at(a, ib);
        for j in 0..32 {
            v[j] = y.qs[j] as i32;
        }
        (v, fp16_to_f32(y.d), fp16_to_f32(y.s))
    } else {
        let y = BlockQ8_0::read_at(a, ib);
        for j in 0..32 {
            v[j] = y.qs[j] as i32;
        }
        (v, fp16_to_f32(y.d), 0.0)
    }
}

fn act_type(ty: DType) -> DType {
    if ty == DType::Q4_1 { DType::Q8_1 } else { DType::Q8_0 }
}

/// The SDOT lanes of one block: lane l sums elements 4l..4l+4 and 16+4l..16+4l+4 (exact).
fn lanes(x: &[i32; 32], y: &[i32; 32]) -> [i32; 4] {
    let mut l = [0i32; 4];
    for e in 0..32 {
        l[(e % 16) / 4] += x[e] * y[e];
    }
    l
}

fn isum(x: &[i32; 32], y: &[i32; 32]) -> i32 {
    x.iter().zip(y).map(|(a, b)| a * b).sum()
}

/// FADDP, FADDP: `(l0 + l1) + (l2 + l3)`.
fn addv(v: [f32; 4]) -> f32 {
    (v[0] + v[1]) + (v[2] + v[3])
}

/// The scalar loop's odd last block added to `sumf`, as clang contracted each type's line:
/// Q4_0 `sumf += sumi*dx*dy` -> fma(sumi * dx, dy, sumf); Q4_1 `sumf += (dx*dy)*sumi + mx*sy`
/// -> sumf + fma(dx * dy, sumi, mx * sy); Q8_0 `sumf += sumi*(dx*dy)` -> fma(sumi, dx * dy, sumf).
pub fn tail(ty: DType, sumf: f32, w: &[u8], a: &[u8], ib: usize) -> f32 {
    let (x, dx, mx) = weight(ty, w, ib);
    let (y, dy, sy) = act(ty, a, ib);
    let s = isum(&x, &y) as f32;
    match ty {
        DType::Q4_0 => fma(s * dx, dy, sumf),
        DType::Q4_1 => sumf + fma(dx * dy, s, mx * sy),
        _ => fma(s, dx * dy, sumf),
    }
}

/// `ggml_vec_dot_{q4_0_q8_0, q4_1_q8_1, q8_0_q8_0}` with `nrc == 1` on aarch64 NEON.
pub fn dot(ty: DType, n: usize, w: &[u8], a: &[u8]) -> f32 {
    check_vec_dot(ty, act_type(ty), n, w.len(), a.len());
    let nb = n / 32;
    let mut sumv = [[0f32; 4]; 2];
    let mut summs = 0f32;
    for ib in 0..nb - nb % 2 {
        let (x, dx, mx) = weight(ty, w, ib);
        let (y, dy, sy) = act(ty, a, ib);
        if ty == DType::Q4_1 && ib % 2 == 0 {
            let (_, _, mx1) = weight(ty, w, ib + 1);
            let (_, _, sy1) = act(ty, a, ib + 1);
            summs += fma(mx, sy, mx1 * sy1);
        }
        let d = dx * dy;
        let p = lanes(&x, &y);
        let acc = &mut sumv[ib % 2];
        for l in 0..4 {
            acc[l] = fma(p[l] as f32, d, acc[l]);
        }
    }
    let mut sumf = addv(sumv[0]) + addv(sumv[1]);
    if ty == DType::Q4_1 {
        sumf += summs;
    }
    if nb % 2 == 1 {
        sumf = tail(ty, sumf, w, a, nb - 1);
    }
    sumf
}

/// The same with `nrc == 2` (SMMLA): `out[i][j]` is activation row `a[i]` against weight row
/// `w[j]` (ggml's `s[i * bs + j]`).
pub fn dot_pair(ty: DType, n: usize, w: [&[u8]; 2], a: [&[u8]; 2]) -> [[f32; 2]; 2] {
    for i in 0..2 {
        check_vec_dot(ty, act_type(ty), n, w[i].len(), a[i].len());
    }
    // Lanes in SMMLA order: [x0.y0, x0.y1, x1.y0, x1.y1]; the minimum terms in the order of
    // the stored result, [x0.y0, x1.y0, x0.y1, x1.y1].
    let mut sumv = [0f32; 4];
    let mut summs = [0f32; 4];
    for ib in 0..n / 32 {
        let [x0, x1] = [0, 1].map(|j| weight(ty, w[j], ib));
        let [y0, y1] = [0, 1].map(|i| act(ty, a[i], ib));
        if ty == DType::Q4_1 {
            let t = [x0.2 * y0.2, x1.2 * y0.2, x0.2 * y1.2, x1.2 * y1.2];
            for l in 0..4 {
                summs[l] += t[l];
            }
        }
        let pairs = [(&x0, &y0), (&x0, &y1), (&x1, &y0), (&x1, &y1)];
        for (l, (x, y)) in pairs.iter().enumerate() {
            sumv[l] = fma(isum(&x.0, &y.0) as f32, x.1 * y.1, sumv[l]);
        }
    }
    let mut out = [sumv[0], sumv[2], sumv[1], sumv[3]];
    if ty == DType::Q4_1 {
        for l in 0..4 {
            out[l] += summs[l];
        }
    }
    [[out[0], out[1]], [out[2], out[3]]]
}
