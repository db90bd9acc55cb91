//! Element types SMEPilot knows, with ggml's numbering (`enum ggml_type`).
//! Kept free of FFI so the engine and its tests build without ggml.

#[allow(non_camel_case_types)] // ggml's names
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum DType {
    F32 = 0,
    F16 = 1,
    Q4_0 = 2,
    Q4_1 = 3,
    Q8_0 = 8,
    Q8_1 = 9,
    Q4_K = 12,
    Q5_K = 13,
    Q6_K = 14,
    Q8_K = 15,
    I8 = 24,
    I16 = 25,
    I32 = 26,
    I64 = 27,
    BF16 = 30,
}

impl DType {
    /// Maps ggml's type id; `None` for the types SMEPilot does not handle.
    pub fn from_ggml(id: u32) -> Option<DType> {
        use DType::*;
        Some(match id {
            0 => F32,
            1 => F16,
            2 => Q4_0,
            3 => Q4_1,
            8 => Q8_0,
            9 => Q8_1,
            12 => Q4_K,
            13 => Q5_K,
            14 => Q6_K,
            15 => Q8_K,
            24 => I8,
            25 => I16,
            26 => I32,
            27 => I64,
            30 => BF16,
            _ => return None,
        })
    }

    /// Elements per block (1 for plain types).
    pub const fn block_size(self) -> usize {
        use DType::*;
        match self {
            Q4_0 | Q4_1 | Q8_0 | Q8_1 => 32,
            Q4_K | Q5_K | Q6_K | Q8_K => 256,
            _ => 1,
        }
    }

    /// Bytes per block (per element for plain types).
    pub const fn block_bytes(self) -> usize {
        use DType::*;
        match self {
            F32 | I32 => 4,
            F16 | BF16 | I16 => 2,
            I8 => 1,
            I64 => 8,
            Q4_0 => 18,
            Q4_1 => 20,
            Q8_0 => 34,
            Q8_1 => 36,
            Q4_K => 144,
            Q5_K => 176,
            Q6_K => 210,
            Q8_K => 292,
        }
    }

    /// Bytes of a row of `n` elements; `n` must be a multiple of the block size.
    pub const fn row_bytes(self, n: usize) -> usize {
        n / self.block_size() * self.block_bytes()
    }

    pub const fn is_quantized(self) -> bool {
        self.block_size() > 1
    }

    pub fn name(self) -> &'static str {
        use DType::*;
        match self {
            F32 => "f32",
            F16 => "f16",
            BF16 => "bf16",
            Q4_0 => "q4_0",
            Q4_1 => "q4_1",
            Q8_0 => "q8_0",
            Q8_1 => "q8_1",
            Q4_K => "q4_K",
            Q5_K => "q5_K",
            Q6_K => "q6_K",
            Q8_K => "q8_K",
            I8 => "i8",
            I16 => "i16",
            I32 => "i32",
            I64 => "i64",
        }
    }
}
