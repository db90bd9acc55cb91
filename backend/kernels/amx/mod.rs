//! Intel AMX kernels: tile primitives ([`tile`]) and the matrix-multiplication kernels built
//! on them. Used only when [`available`] says the tile unit may be used on this process.

pub mod gemm;
pub mod rows;
pub mod tile;

#[cfg(test)]
mod probe;

use std::sync::OnceLock;

/// AMX int8 and bf16 are present, enabled by the OS, permitted for this process
/// (`ARCH_REQ_XCOMP_PERM`), and not disabled by `SMEPILOT_DISABLE_AMX`. Decided once.
pub fn available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        let f = crate::platform::CpuFeatures::detect();
        let disabled = crate::config::get().is_ok_and(|c| c.disable_amx);
        f.amx_tile && f.amx_int8 && f.amx_bf16 && !disabled && crate::platform::os::request_amx_permission()
    })
}
