//! Software prefetch: bytes a thread will read soon pulled toward its core's L2 while it
//! computes something else (the hardware prefetchers follow a stream only within a page
//! and only once it is being read).

/// Asks for every 64-byte line of `bytes` to be brought into L2. A hint: no effect on
/// results, and none at all on targets without a prefetch instruction.
#[inline]
pub fn to_l2(bytes: &[u8]) {
    #[cfg(target_arch = "x86_64")]
    for line in bytes.chunks(64) {
        // SAFETY: PREFETCHT1 only reads the address as a hint (it cannot fault), and the
        // address is within `bytes`; SSE is baseline on x86_64.
        unsafe { std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T1 }>(line.as_ptr() as *const i8) };
    }
    #[cfg(target_arch = "aarch64")]
    for line in bytes.chunks(64) {
        // SAFETY: PRFM is a hint that cannot fault; the address is within `bytes`.
        unsafe { std::arch::asm!("prfm pldl2keep, [{}]", in(reg) line.as_ptr(), options(nostack, readonly, preserves_flags)) };
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    let _ = bytes;
}

/// A byte range pulled toward L2 a few lines per step of a kernel's loop, so the requests
/// stay within what the core keeps in flight (asking for a whole range at once stalls).
#[derive(Clone, Copy)]
pub struct Spread<'a> {
    bytes: &'a [u8],
    per_step: usize,
}

impl<'a> Spread<'a> {
    /// Nothing to prefetch.
    pub const NONE: Spread<'static> = Spread { bytes: &[], per_step: 0 };

    /// `bytes` over a loop of `steps` steps.
    pub fn new(bytes: &'a [u8], steps: usize) -> Spread<'a> {
        Spread { bytes, per_step: bytes.len().div_ceil(64).div_ceil(steps.max(1)) * 64 }
    }

    /// `bytes` cut into `parts` consecutive whole-line spreads of `steps` steps each: part i.
    pub fn part(bytes: &'a [u8], parts: usize, i: usize, steps: usize) -> Spread<'a> {
        let per = bytes.len().div_ceil(64).div_ceil(parts.max(1)) * 64;
        let start = (i * per).min(bytes.len());
        Spread::new(&bytes[start..(start + per).min(bytes.len())], steps)
    }

    /// Step i's lines.
    #[inline(always)]
    pub fn step(&self, i: usize) {
        let start = (i * self.per_step).min(self.bytes.len());
        to_l2(&self.bytes[start..(start + self.per_step).min(self.bytes.len())]);
    }
}
