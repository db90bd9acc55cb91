//! Kernels: per-type tables (quant) and helpers, each with a scalar reference tier.

#[cfg(target_arch = "x86_64")]
pub mod amx;
pub mod attn;
pub mod f16;
pub mod packed;
pub mod peak;
pub mod quant;
pub mod roofs;
pub mod vmath;
