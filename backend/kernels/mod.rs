//! Kernels, by family, each with a scalar reference tier; [`registry`] gathers one
//! [`KernelSet`] per tier the CPU runs.

#[cfg(target_arch = "x86_64")]
pub mod amx;
pub mod attn;
pub mod attn_rows;
pub mod packed;
pub mod peak;
pub mod prefetch;
pub mod quant;
pub mod registry;
pub mod rope;
pub mod roofs;
#[cfg(target_arch = "aarch64")]
pub mod sme;
pub mod vmath;

pub use registry::{KernelSet, Tier};
