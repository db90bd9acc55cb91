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
    /// Arm dot-product instructions (SDOT/UDOT, Armv8.2): the NEON tier's baseline.
    pub dotprod: bool,
    /// Arm int8 matrix multiply (SMMLA) and BF16 (BFDOT/BFMMLA) in NEON.
    pub i8mm: bool,
    pub arm_bf16: bool,
    /// Arm half-precision arithmetic in NEON.
    pub fp16: bool,
    /// Arm SVE / SVE2 outside streaming mode.
    pub sve: bool,
    pub sve2: bool,
    /// Arm SME / SME2.
    pub sme: bool,
    pub sme2: bool,
    /// The streaming vector length in bytes (16 to 256) where SME is present, else 0.
    pub svl_bytes: usize,
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
        #[cfg(target_arch = "aarch64")]
        {
            use std::arch::is_aarch64_feature_detected as has;
            f.dotprod = has!("dotprod");
            f.i8mm = has!("i8mm");
            f.arm_bf16 = has!("bf16");
            f.fp16 = has!("fp16");
            f.sve = has!("sve");
            f.sve2 = has!("sve2");
            (f.sme, f.sme2) = sme_detect();
            if f.sme {
                f.svl_bytes = streaming_vector_bytes();
            }
        }
        f
    }

    /// Everything the AVX-512 tier is compiled with: F, BW, VL and VNNI, plus AVX2, FMA
    /// and F16C.
    pub fn avx512_tier(&self) -> bool {
        self.avx512f && self.avx512bw && self.avx512vl && self.avx512_vnni && self.avx2_fma_f16c
    }

    /// Everything the NEON tier is compiled with: Advanced SIMD (every aarch64 CPU) and the
    /// dot-product instructions. I8MM and BF16 are used where present.
    pub fn neon_tier(&self) -> bool {
        cfg!(target_arch = "aarch64") && self.dotprod
    }
}

/// (SME, SME2) from the kernel's hwcaps (`is_aarch64_feature_detected!` for SME is unstable
/// on Rust 1.95): HWCAP2_SME is bit 23, HWCAP2_SME2 bit 37 (arch/arm64 uapi hwcap.h).
#[cfg(all(target_arch = "aarch64", target_os = "linux"))]
fn sme_detect() -> (bool, bool) {
    // SAFETY: getauxval has no preconditions; unknown entries read as 0.
    let hwcap2 = unsafe { libc::getauxval(libc::AT_HWCAP2) } as u64;
    (hwcap2 & (1 << 23) != 0, hwcap2 & (1 << 37) != 0)
}

/// (SME, SME2) from the `hw.optional.arm.FEAT_SME*` sysctls (macOS on Apple M4).
#[cfg(all(target_arch = "aarch64", target_vendor = "apple"))]
fn sme_detect() -> (bool, bool) {
    fn sysctl_flag(name: &std::ffi::CStr) -> bool {
        let mut v: u32 = 0;
        let mut len = std::mem::size_of::<u32>();
        // SAFETY: `name` is NUL-terminated; `v` and `len` describe a writable u32.
        let rc = unsafe { libc::sysctlbyname(name.as_ptr(), (&raw mut v).cast(), &mut len, std::ptr::null_mut(), 0) };
        rc == 0 && v != 0
    }
    (sysctl_flag(c"hw.optional.arm.FEAT_SME"), sysctl_flag(c"hw.optional.arm.FEAT_SME2"))
}

/// No SME detection on other aarch64 systems.
#[cfg(all(target_arch = "aarch64", not(target_os = "linux"), not(target_vendor = "apple")))]
fn sme_detect() -> (bool, bool) {
    (false, false)
}

/// The streaming vector length in bytes: `RDSVL`, legal outside streaming mode on a CPU
/// with SME.
#[cfg(target_arch = "aarch64")]
fn streaming_vector_bytes() -> usize {
    let svl: u64;
    // SAFETY: called only where SME was detected; RDSVL reads a constant of the CPU and
    // changes no state.
    unsafe { std::arch::asm!(".arch_extension sme", "rdsvl {0}, #1", out(reg) svl, options(nomem, nostack, preserves_flags)) };
    svl as usize
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
