//! The NEON tier of the per-type table (aarch64 with the dot-product instructions; I8MM
//! and BF16 where present).
//!
//! Entries without a NEON version are the scalar functions.

use super::{scalar, DenseKernels, Table};
use crate::platform::CpuFeatures;

/// The NEON table and the tier's full name, when this CPU runs it.
pub fn table(f: &CpuFeatures) -> Option<(&'static Table, &'static str)> {
    f.neon_tier().then_some((&scalar::TABLE, "neon"))
}

/// The tier's register-blocked dots.
pub fn dense_kernels(_f: &CpuFeatures) -> DenseKernels {
    DenseKernels::NONE
}
