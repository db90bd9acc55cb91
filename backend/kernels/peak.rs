//! Register-only throughput loops for calibration: the vector units' fp32 FMA and int8 dot
//! peaks, eight independent accumulators so latency does not bound them.

/// `iters` x 8 `vfmadd231ps zmm` (16 lanes, 2 flops each).
///
/// # Safety
/// The CPU has AVX-512F.
#[cfg(target_arch = "x86_64")]
pub unsafe fn fma_burst(iters: usize) {
    std::arch::asm!(
        "vxorps zmm0, zmm0, zmm0",
        "2:",
        "vfmadd231ps zmm16, zmm0, zmm0",
        "vfmadd231ps zmm17, zmm0, zmm0",
        "vfmadd231ps zmm18, zmm0, zmm0",
        "vfmadd231ps zmm19, zmm0, zmm0",
        "vfmadd231ps zmm20, zmm0, zmm0",
        "vfmadd231ps zmm21, zmm0, zmm0",
        "vfmadd231ps zmm22, zmm0, zmm0",
        "vfmadd231ps zmm23, zmm0, zmm0",
        "dec {n}",
        "jnz 2b",
        n = inout(reg) iters.max(1) => _,
        out("zmm0") _, out("zmm16") _, out("zmm17") _, out("zmm18") _, out("zmm19") _,
        out("zmm20") _, out("zmm21") _, out("zmm22") _, out("zmm23") _,
        options(nostack, nomem),
    );
}

/// `iters` x 8 `vpdpbusd zmm` (16 lanes, 4 multiply-adds each).
///
/// # Safety
/// The CPU has AVX-512F and AVX512-VNNI.
#[cfg(target_arch = "x86_64")]
pub unsafe fn vnni_burst(iters: usize) {
    std::arch::asm!(
        "vpxord zmm0, zmm0, zmm0",
        "2:",
        "vpdpbusd zmm16, zmm0, zmm0",
        "vpdpbusd zmm17, zmm0, zmm0",
        "vpdpbusd zmm18, zmm0, zmm0",
        "vpdpbusd zmm19, zmm0, zmm0",
        "vpdpbusd zmm20, zmm0, zmm0",
        "vpdpbusd zmm21, zmm0, zmm0",
        "vpdpbusd zmm22, zmm0, zmm0",
        "vpdpbusd zmm23, zmm0, zmm0",
        "dec {n}",
        "jnz 2b",
        n = inout(reg) iters.max(1) => _,
        out("zmm0") _, out("zmm16") _, out("zmm17") _, out("zmm18") _, out("zmm19") _,
        out("zmm20") _, out("zmm21") _, out("zmm22") _, out("zmm23") _,
        options(nostack, nomem),
    );
}
