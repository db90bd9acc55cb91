//! Intel AMX kernels: tile primitives ([`tile`]) and the matrix-multiplication kernels built
//! on them. Used only when [`available`] says the tile unit may be used on this process.

mod cols_avx512;
pub mod attn;
pub mod gemm;
pub mod ks_cols;
pub mod ksuper;
pub mod rows;
pub mod stage;
pub mod tile;

#[cfg(test)]
mod probe;

/// AMX int8 and bf16 are present, enabled by the OS, permitted for this process
/// (`ARCH_REQ_XCOMP_PERM`), and not disabled by `SMEPILOT_DISABLE_AMX`: the process's
/// kernel set drives AMX (decided once, by the registry).
pub fn available() -> bool {
    crate::kernels::registry::active().matrix == Some(crate::kernels::registry::MatrixUnit::Amx)
}
