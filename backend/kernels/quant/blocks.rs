//! Block layouts of ggml's quantized types, mirroring `ggml-common.h` byte for byte.
//!
//! fp16 fields are stored as their raw `u16` bits. Tensor data arrives as `&[u8]` with no
//! alignment promise, so blocks are never referenced in place: [`Block::read`] copies one out
//! with an unaligned read and [`Block::write`] copies one back.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};
use crate::dtype::DType;
use core::mem::size_of;

/// Elements per block of Q4_0.
pub const QK4_0: usize = 32;
/// Elements per block of Q4_1.
pub const QK4_1: usize = 32;
/// Elements per block of Q8_0.
pub const QK8_0: usize = 32;
/// Elements per block of Q8_1.
pub const QK8_1: usize = 32;
/// Elements per super-block of the K-quants.
pub const QK_K: usize = 256;
/// Bytes of packed 6-bit scales/mins in Q4_K and Q5_K.
pub const K_SCALE_SIZE: usize = 12;

/// `block_q4_0`: x = d * (q - 8), q in 0..16.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct BlockQ4_0 {
    pub d: u16,
    /// Element j in the low nibble of `qs[j]`, element j + 16 in the high nibble.
    pub qs: [u8; QK4_0 / 2],
}

/// `block_q4_1`: x = d * q + m, q in 0..16.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct BlockQ4_1 {
    pub d: u16,
    pub m: u16,
    pub qs: [u8; QK4_1 / 2],
}

/// `block_q8_0`: x = d * q.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct BlockQ8_0 {
    pub d: u16,
    pub qs: [i8; QK8_0],
}

/// `block_q8_1`: x = d * q, and `s` = d * sum(q) (as fp16).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct BlockQ8_1 {
    pub d: u16,
    pub s: u16,
    pub qs: [i8; QK8_1],
}

/// `block_q4_K`: 8 sub-blocks of 32; x = d * sc * q - dmin * m, with 6-bit sc/m.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct BlockQ4K {
    pub d: u16,
    pub dmin: u16,
    pub scales: [u8; K_SCALE_SIZE],
    pub qs: [u8; QK_K / 2],
}

/// `block_q5_K`: like Q4_K with a fifth bit per element in `qh`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct BlockQ5K {
    pub d: u16,
    pub dmin: u16,
    pub scales: [u8; K_SCALE_SIZE],
    pub qh: [u8; QK_K / 8],
    pub qs: [u8; QK_K / 2],
}

/// `block_q6_K`: 16 sub-blocks of 16; x = d * sc * (q - 32), q 6-bit, sc signed 8-bit.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct BlockQ6K {
    pub ql: [u8; QK_K / 2],
    pub qh: [u8; QK_K / 4],
    pub scales: [i8; QK_K / 16],
    pub d: u16,
}

/// `block_q8_K`: activation-only type; f32 scale and per-16 sums of the quants.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct BlockQ8K {
    pub d: f32,
    pub qs: [i8; QK_K],
    pub bsums: [i16; QK_K / 16],
}

const _: () = assert!(size_of::<BlockQ4_0>() == DType::Q4_0.block_bytes());
const _: () = assert!(size_of::<BlockQ4_1>() == DType::Q4_1.block_bytes());
const _: () = assert!(size_of::<BlockQ8_0>() == DType::Q8_0.block_bytes());
const _: () = assert!(size_of::<BlockQ8_1>() == DType::Q8_1.block_bytes());
const _: () = assert!(size_of::<BlockQ4K>() == DType::Q4_K.block_bytes());
const _: () = assert!(size_of::<BlockQ5K>() == DType::Q5_K.block_bytes());
const _: () = assert!(size_of::<BlockQ6K>() == DType::Q6_K.block_bytes());
const _: () = assert!(size_of::<BlockQ8K>() == DType::Q8_K.block_bytes());
const _: () = assert!(DType::Q4_0.block_size() == QK4_0 && DType::Q4_1.block_size() == QK4_1);
const _: () = assert!(DType::Q8_0.block_size() == QK8_0 && DType::Q8_1.block_size() == QK8_1);
const _: () = assert!(DType::Q4_K.block_size() == QK_K && DType::Q8_K.block_size() == QK_K);

/// A ggml block type. Its bytes are ggml's: `#[repr(C)]`, no padding, valid for every bit
/// pattern, which zerocopy's derives check at compile time.
pub trait Block: FromBytes + IntoBytes + Immutable + KnownLayout + Copy + 'static {
    /// The ggml type this block belongs to.
    const DTYPE: DType;
    /// Bytes of one block (`== DTYPE.block_bytes()`).
    const BYTES: usize = size_of::<Self>();
    /// Elements of one block (`== DTYPE.block_size()`).
    const ELEMS: usize;

    /// The all-zero block.
    fn zeroed() -> Self {
        Self::new_zeroed()
    }

    /// Copies the block out of the first `BYTES` bytes of `bytes` (any alignment).
    /// Panics if `bytes` is shorter than a block.
    fn read(bytes: &[u8]) -> Self {
        Self::read_from_prefix(&bytes[..Self::BYTES]).expect("a whole block").0
    }

    /// Copies the block into the first `BYTES` bytes of `out` (any alignment).
    /// Panics if `out` is shorter than a block.
    fn write(&self, out: &mut [u8]) {
        out[..Self::BYTES].copy_from_slice(self.as_bytes());
    }

    /// The `i`-th block of a row of blocks. Panics if the row is too short.
    fn read_at(bytes: &[u8], i: usize) -> Self {
        Self::read(&bytes[i * Self::BYTES..])
    }

    /// Writes the `i`-th block of a row of blocks. Panics if the row is too short.
    fn write_at(&self, out: &mut [u8], i: usize) {
        self.write(&mut out[i * Self::BYTES..]);
    }
}

impl Block for BlockQ4_0 {
    const DTYPE: DType = DType::Q4_0;
    const ELEMS: usize = QK4_0;
}
impl Block for BlockQ4_1 {
    const DTYPE: DType = DType::Q4_1;
    const ELEMS: usize = QK4_1;
}
impl Block for BlockQ8_0 {
    const DTYPE: DType = DType::Q8_0;
    const ELEMS: usize = QK8_0;
}
impl Block for BlockQ8_1 {
    const DTYPE: DType = DType::Q8_1;
    const ELEMS: usize = QK8_1;
}
impl Block for BlockQ4K {
    const DTYPE: DType = DType::Q4_K;
    const ELEMS: usize = QK_K;
}
impl Block for BlockQ5K {
    const DTYPE: DType = DType::Q5_K;
    const ELEMS: usize = QK_K;
}
impl Block for BlockQ6K {
    const DTYPE: DType = DType::Q6_K;
    const ELEMS: usize = QK_K;
}
impl Block for BlockQ8K {
    const DTYPE: DType = DType::Q8_K;
    const ELEMS: usize = QK_K;
}

/// Unpacks the 6-bit scale and min of sub-block `j` (0..8) of a Q4_K / Q5_K block
/// (`get_scale_min_k4` in ggml-quants.c).
#[inline]
pub fn get_scale_min_k4(j: usize, q: &[u8; K_SCALE_SIZE]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// All 8 (scale, min) pairs of a Q4_K / Q5_K block.
#[inline]
pub fn scales_mins_k4(q: &[u8; K_SCALE_SIZE]) -> ([u8; 8], [u8; 8]) {
    let mut sc = [0u8; 8];
    let mut m = [0u8; 8];
    for j in 0..8 {
        (sc[j], m[j]) = get_scale_min_k4(j, q);
    }
    (sc, m)
}

/// fp16 bits -> f32 (exact).
#[inline]
pub fn fp16_to_f32(h: u16) -> f32 {
    half::f16::from_bits(h).to_f32()
}

/// f32 -> fp16 bits, round to nearest even (like F16C `vcvtps2ph` / `GGML_CPU_FP32_TO_FP16`).
#[inline]
pub fn f32_to_fp16(x: f32) -> u16 {
    half::f16::from_f32(x).to_bits()
}

/// bf16 bits -> f32 (exact; `GGML_BF16_TO_FP32`).
#[inline]
pub fn bf16_to_f32(h: u16) -> f32 {
    f32::from_bits((h as u32) << 16)
}

/// f32 -> bf16 bits exactly as `GGML_FP32_TO_BF16`: round to nearest even, NaNs made quiet,
/// subnormals kept.
#[inline]
pub fn f32_to_bf16(x: f32) -> u16 {
    let u = x.to_bits();
    if (u & 0x7fff_ffff) > 0x7f80_0000 {
        return ((u >> 16) | 64) as u16;
    }
    (u.wrapping_add(0x7fff + ((u >> 16) & 1)) >> 16) as u16
}
