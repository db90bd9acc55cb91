//! Kernels: per-type tables (quant) and helpers, each with a scalar reference tier.

pub mod f16;
pub mod quant;
