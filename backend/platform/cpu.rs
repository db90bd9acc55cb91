//! What this CPU offers: vector extensions and the matrix unit.

#[derive(Clone, Debug, Default)]
pub struct CpuFeatures {
    pub avx512f: bool,
    pub avx512bw: bool,
    pub avx512vl: bool,
    pub avx512_vnni: bool,
    pub avx512_bf16: bool,
    pub avx512_fp16: bool,
    /// AVX2 with FMA and F16C: the kernels' second tier, for CPUs without AVX-512.
    pub avx2_fma_f16c: bool,
    pub amx_tile: bool,
    pub amx_int8: bool,
    pub amx_bf16: bool,
    /// Arm SME / SME2 (detected on aarch64 Linux).
    pub sme: bool,
    pub sme2: bool,
    pub cores: usize,
}

impl CpuFeatures {
    pub fn detect() -> CpuFeatures {
        let mut f = CpuFeatures {
            cores: crate::platform::os::allowed_cpus().len(),
            ..Default::default()
        };
        #[cfg(target_arch = "x86_64")]
        {
            f.avx512f = is_x86_feature_detected!("avx512f");
            f.avx512bw = is_x86_feature_detected!("avx512bw");
            f.avx512vl = is_x86_feature_detected!("avx512vl");
            f.avx512_vnni = is_x86_feature_detected!("avx512vnni");
            f.avx512_bf16 = is_x86_feature_detected!("avx512bf16");
            f.avx512_fp16 = is_x86_feature_detected!("avx512fp16");
            f.avx2_fma_f16c = is_x86_feature_detected!("avx2")
                && is_x86_feature_detected!("fma")
                && is_x86_feature_detected!("f16c");
            let amx = amx_cpuid();
            f.amx_tile = amx.0;
            f.amx_int8 = amx.1;
            f.amx_bf16 = amx.2;
        }
        #[cfg(all(target_arch = "aarch64", target_os = "linux"))]
        {
            // The kernel's hwcaps (is_aarch64_feature_detected! for SME is unstable on Rust
            // 1.95): HWCAP2_SME is bit 23, HWCAP2_SME2 bit 37 (arch/arm64 uapi hwcap.h).
            // SAFETY: getauxval has no preconditions; unknown entries read as 0.
            let hwcap2 = unsafe { libc::getauxval(libc::AT_HWCAP2) } as u64;
            f.sme = hwcap2 & (1 << 23) != 0;
            f.sme2 = hwcap2 & (1 << 37) != 0;
        }
        f
    }

    /// Everything the AVX-512 tier is compiled with: F, BW, VL and VNNI, plus AVX2, FMA
    /// and F16C.
    pub fn avx512_tier(&self) -> bool {
        self.avx512f && self.avx512bw && self.avx512vl && self.avx512_vnni && self.avx2_fma_f16c
    }
}

/// (amx-tile, amx-int8, amx-bf16) from CPUID leaf 7 and the OS-enabled XCR0 tile state.
#[cfg(target_arch = "x86_64")]
fn amx_cpuid() -> (bool, bool, bool) {
    use std::arch::x86_64::__cpuid_count;
    // CPUID is available on every x86_64 CPU.
    let max_leaf = __cpuid_count(0, 0).eax;
    if max_leaf < 7 {
        return (false, false, false);
    }
    let edx = __cpuid_count(7, 0).edx;
    let (tile, bf16, int8) = (
        edx & (1 << 24) != 0,
        edx & (1 << 22) != 0,
        edx & (1 << 25) != 0,
    );
    // OSXSAVE (CPUID.1:ECX bit 27) must be set before XGETBV may be executed.
    let osxsave = __cpuid_count(1, 0).ecx & (1 << 27) != 0;
    if !tile || !osxsave {
        return (false, false, false);
    }
    let xcr0 = xgetbv0();
    // XTILECFG (bit 17) and XTILEDATA (bit 18) enabled by the OS.
    let os_ok = xcr0 & (3 << 17) == (3 << 17);
    (os_ok, os_ok && int8, os_ok && bf16)
}

#[cfg(target_arch = "x86_64")]
fn xgetbv0() -> u64 {
    let (eax, edx): (u32, u32);
    // SAFETY: XGETBV with ECX=0 reads XCR0; the caller checked OSXSAVE, so it is legal.
    unsafe {
        std::arch::asm!("xgetbv", in("ecx") 0u32, out("eax") eax, out("edx") edx, options(nomem, nostack, preserves_flags))
    };
    ((edx as u64) << 32) | eax as u64
}
