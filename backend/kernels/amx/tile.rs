//! Intel AMX tile primitives in stable Rust (`asm!`): the tile configuration and the handful
//! of tile instructions the kernels use.
//!
//! Robust configuration: the 64-byte palette lives in a Rust value and `ldtilecfg` reads it
//! through an `asm!` block that is not `nomem`, so the compiler must complete every store to
//! the palette before the instruction (ggml's C path breaks when GCC 12 drops those stores).
//! Each kernel loads its own configuration on the thread that runs it; nothing depends on a
//! configuration left behind by another kernel or thread.

/// `ldtilecfg` palette 1: per tile register, its rows and bytes per row.
#[repr(C, align(64))]
#[derive(Clone, Copy, Debug, Default)]
pub struct TileConfig {
    palette: u8,
    start_row: u8,
    _reserved: [u8; 14],
    colsb: [u16; 16],
    rows: [u8; 16],
}

const _: () = assert!(std::mem::size_of::<TileConfig>() == 64);

/// Maximum rows of a tile register.
pub const MAX_ROWS: usize = 16;
/// Maximum bytes per row of a tile register.
pub const MAX_COLSB: usize = 64;

impl TileConfig {
    /// A configuration with every tile unused.
    pub const fn new() -> TileConfig {
        TileConfig {
            palette: 1,
            start_row: 0,
            _reserved: [0; 14],
            colsb: [0; 16],
            rows: [0; 16],
        }
    }

    /// Shapes tile register `t` as `rows` x `colsb` bytes.
    pub const fn with(mut self, t: usize, rows: usize, colsb: usize) -> TileConfig {
        assert!(t < 8 && rows <= MAX_ROWS && colsb <= MAX_COLSB && colsb.is_multiple_of(4));
        self.rows[t] = rows as u8;
        self.colsb[t] = colsb as u16;
        self
    }

    /// Loads this configuration on the calling thread (zeroes all tile registers).
    ///
    /// # Safety
    /// The CPU has AMX and the process holds the XTILEDATA permission
    /// (`crate::platform::os::request_amx_permission` via [`super::available`]).
    #[inline]
    pub unsafe fn load(&self) {
        // SAFETY (caller): AMX present and permitted; `self` is a valid 64-byte palette.
        unsafe { std::arch::asm!("ldtilecfg [{}]", in(reg) self as *const TileConfig, options(nostack, preserves_flags)) };
    }
}

/// Releases the tile state (back to the init state, so context switches stay cheap).
///
/// # Safety
/// As [`TileConfig::load`].
#[inline]
pub unsafe fn release() {
    // SAFETY (caller): as `TileConfig::load`, AMX present and XTILEDATA permitted.
    unsafe { std::arch::asm!("tilerelease", options(nostack, preserves_flags)) };
}

/// The calling thread's tile configuration (`sttilecfg`; palette 0 if none is loaded).
///
/// # Safety
/// As [`TileConfig::load`].
#[inline]
pub unsafe fn current() -> TileConfig {
    let mut c = TileConfig::default();
    // SAFETY (caller): as `TileConfig::load`, AMX present and XTILEDATA permitted; `c` is a
    // writable, 64-byte aligned palette of 64 bytes.
    unsafe { std::arch::asm!("sttilecfg [{}]", in(reg) &mut c as *mut TileConfig, options(nostack, preserves_flags)) };
    c
}

/// A kernel's hold on the tile unit of the calling thread: loads the kernel's configuration
/// and, when dropped, puts back whatever configuration the thread had before (or releases the
/// tiles if it had none).
///
/// Why: the pool's thread 0 is the caller's thread, which llama.cpp's CPU backend also uses
/// for its own AMX kernels; ggml configures tiles once per thread and trusts them to stay, so
/// leaving ours loaded, or releasing them, makes its next tile instruction fault (#UD).
/// Tile *data* is not preserved: ggml reloads its tiles for every kernel call.
pub struct TileSession {
    previous: TileConfig,
}

impl TileSession {
    /// # Safety
    /// As [`TileConfig::load`].
    pub unsafe fn begin(cfg: &TileConfig) -> TileSession {
        // SAFETY (caller): as `TileConfig::load`, AMX present and XTILEDATA permitted.
        let previous = unsafe { current() };
        // SAFETY (caller): as above; `cfg` is a valid palette.
        unsafe { cfg.load() };
        TileSession { previous }
    }
}

impl Drop for TileSession {
    fn drop(&mut self) {
        // SAFETY: a session exists only after `begin`, whose caller guaranteed AMX is usable.
        unsafe {
            if self.previous.palette == 0 {
                release();
            } else {
                self.previous.load();
            }
        }
    }
}

/// Every tile 16 rows x 64 bytes: the bf16 kernel's, the K-quant kernel's and attention's
/// configuration.
pub const ALL_16X64: TileConfig = TileConfig::new()
    .with(0, 16, 64)
    .with(1, 16, 64)
    .with(2, 16, 64)
    .with(3, 16, 64)
    .with(4, 16, 64)
    .with(5, 16, 64)
    .with(6, 16, 64)
    .with(7, 16, 64);

/// `tilezero tmm{T}`.
///
/// # Safety
/// A configuration is loaded on this thread.
#[inline(always)]
pub unsafe fn zero<const T: u8>() {
    // SAFETY (caller): a configuration is loaded on this thread.
    unsafe { std::arch::asm!("tilezero tmm{t}", t = const T, options(nostack, preserves_flags)) };
}

/// `tileloadd tmm{T}, [ptr + stride]`: loads the configured rows of tile T, `stride` bytes apart.
///
/// # Safety
/// A configuration is loaded; `ptr + r * stride` is readable for the tile's row bytes, for
/// every configured row r.
#[inline(always)]
pub unsafe fn load<const T: u8>(ptr: *const u8, stride: usize) {
    // SAFETY (caller): a configuration is loaded; `ptr + r * stride` is readable for the
    // tile's row bytes, for every configured row r.
    unsafe {
        std::arch::asm!(
            "tileloadd tmm{t}, [{p} + {s} * 1]",
            t = const T, p = in(reg) ptr, s = in(reg) stride,
            options(nostack, preserves_flags, readonly)
        )
    };
}

/// `tilestored [ptr + stride], tmm{T}`.
///
/// # Safety
/// A configuration is loaded; `ptr + r * stride` is writable for the tile's row bytes.
#[inline(always)]
pub unsafe fn store<const T: u8>(ptr: *mut u8, stride: usize) {
    // SAFETY (caller): a configuration is loaded; `ptr + r * stride` is writable for the
    // tile's row bytes, for every configured row r.
    unsafe {
        std::arch::asm!(
            "tilestored [{p} + {s} * 1], tmm{t}",
            t = const T, p = in(reg) ptr, s = in(reg) stride,
            options(nostack, preserves_flags)
        )
    };
}

/// `tdpbssd tmm{C}, tmm{A}, tmm{B}`: C (i32) += A (i8, rows x 4k) . B (i8, k rows x 4n, VNNI).
///
/// # Safety
/// A configuration is loaded whose shapes make the product valid.
#[inline(always)]
pub unsafe fn dpbssd<const C: u8, const A: u8, const B: u8>() {
    // SAFETY (caller): a configuration is loaded whose shapes make the product valid.
    unsafe {
        std::arch::asm!(
            "tdpbssd tmm{c}, tmm{a}, tmm{b}",
            c = const C, a = const A, b = const B,
            options(nostack, preserves_flags, nomem)
        )
    };
}

/// `tdpbf16ps tmm{C}, tmm{A}, tmm{B}`: C (f32) += A (bf16 pairs) . B (bf16 pairs, VNNI).
///
/// # Safety
/// As [`dpbssd`].
#[inline(always)]
pub unsafe fn dpbf16ps<const C: u8, const A: u8, const B: u8>() {
    // SAFETY (caller): a configuration is loaded whose shapes make the product valid.
    unsafe {
        std::arch::asm!(
            "tdpbf16ps tmm{c}, tmm{a}, tmm{b}",
            c = const C, a = const A, b = const B,
            options(nostack, preserves_flags, nomem)
        )
    };
}
