//! Register-only throughput loops for calibration: the vector units' fp32 FMA and int8 dot
//! peaks, eight independent accumulators so latency does not bound them.

/// Defines `$name(iters)`: `iters` x 8 independent `$op zmm1X, zmm0, zmm0`.
macro_rules! burst {
    ($(#[$doc:meta])* $name:ident, $zero:literal, $op:literal) => {
        $(#[$doc])*
        #[cfg(target_arch = "x86_64")]
        pub unsafe fn $name(iters: usize) {
            // SAFETY: this function's `# Safety` contract: the CPU has AVX-512F (and VNNI for
            // `vpdpbusd`), which the caller checked; the asm touches no memory, only the
            // registers it declares clobbered.
            unsafe {
                std::arch::asm!(
                    concat!($zero, " zmm0, zmm0, zmm0"),
                    "2:",
                    concat!($op, " zmm16, zmm0, zmm0"),
                    concat!($op, " zmm17, zmm0, zmm0"),
                    concat!($op, " zmm18, zmm0, zmm0"),
                    concat!($op, " zmm19, zmm0, zmm0"),
                    concat!($op, " zmm20, zmm0, zmm0"),
                    concat!($op, " zmm21, zmm0, zmm0"),
                    concat!($op, " zmm22, zmm0, zmm0"),
                    concat!($op, " zmm23, zmm0, zmm0"),
                    "dec {n}",
                    "jnz 2b",
                    n = inout(reg) iters.max(1) => _,
                    out("zmm0") _, out("zmm16") _, out("zmm17") _, out("zmm18") _, out("zmm19") _,
                    out("zmm20") _, out("zmm21") _, out("zmm22") _, out("zmm23") _,
                    options(nostack, nomem),
                );
            }
        }
    };
}

burst!(
    /// `iters` x 8 `vfmadd231ps zmm` (16 lanes, 2 flops each).
    ///
    /// # Safety
    /// The CPU has AVX-512F.
    fma_burst, "vxorps", "vfmadd231ps"
);

burst!(
    /// `iters` x 8 `vpdpbusd zmm` (16 lanes, 4 multiply-adds each).
    ///
    /// # Safety
    /// The CPU has AVX-512F and AVX512-VNNI.
    vnni_burst, "vpxord", "vpdpbusd"
);

/// Defines `$name(iters)`: `iters` x 8 independent `$op ymmX, ymm0, ymm0` (AVX2 machines).
macro_rules! burst256 {
    ($(#[$doc:meta])* $name:ident, $zero:literal, $op:literal) => {
        $(#[$doc])*
        #[cfg(target_arch = "x86_64")]
        pub unsafe fn $name(iters: usize) {
            // SAFETY: this function's `# Safety` contract: the CPU has AVX2 (and FMA for
            // `vfmadd231ps`), which the caller checked; the asm touches no memory, only the
            // registers it declares clobbered.
            unsafe {
                std::arch::asm!(
                    concat!($zero, " ymm0, ymm0, ymm0"),
                    "2:",
                    concat!($op, " ymm8, ymm0, ymm0"),
                    concat!($op, " ymm9, ymm0, ymm0"),
                    concat!($op, " ymm10, ymm0, ymm0"),
                    concat!($op, " ymm11, ymm0, ymm0"),
                    concat!($op, " ymm12, ymm0, ymm0"),
                    concat!($op, " ymm13, ymm0, ymm0"),
                    concat!($op, " ymm14, ymm0, ymm0"),
                    concat!($op, " ymm15, ymm0, ymm0"),
                    "dec {n}",
                    "jnz 2b",
                    n = inout(reg) iters.max(1) => _,
                    out("ymm0") _, out("ymm8") _, out("ymm9") _, out("ymm10") _, out("ymm11") _,
                    out("ymm12") _, out("ymm13") _, out("ymm14") _, out("ymm15") _,
                    options(nostack, nomem),
                );
            }
        }
    };
}

burst256!(
    /// `iters` x 8 `vfmadd231ps ymm` (8 lanes, 2 flops each).
    ///
    /// # Safety
    /// The CPU has AVX2 and FMA.
    fma256_burst, "vxorps", "vfmadd231ps"
);

burst256!(
    /// `iters` x 8 `vpmaddubsw ymm` (16 lanes, 2 multiply-adds each: the AVX2 kernels' dot).
    ///
    /// # Safety
    /// The CPU has AVX2.
    maddubs256_burst, "vpxor", "vpmaddubsw"
);
