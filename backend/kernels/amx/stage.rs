//! Safe entry points to the tile kernels of [`super::gemm`] for the matrix product driver
//! (`ops::matmul::amx`): operands as slices, their lengths checked against what the kernel
//! reads, and the tile configuration as a session value the kernel calls require.
//!
//! A session ([`I8Session`], [`KsSession`], [`AttnSession`], [`Bf16Session`]) exists only where the process drives AMX
//! ([`super::available`]) and AVX-512F is present, stays on the thread that began it, and
//! records on that thread which configuration is loaded: a product runs only while its own
//! configuration is the thread's current one (a nested session of the other kind would make
//! the tile loads read other shapes), else it panics.

use std::cell::Cell;
use std::marker::PhantomData;

use super::gemm::{self, ColsI8, Block32, RowsI8, BF16_BTILE, I8_BTILE, I8_KBLOCK};
use super::attn::{self, PAIR};
use super::ksuper::{self, ColsKs, RowsKs, STEPS, TILE};
use super::ks_cols::SB_TILES_BYTES;
use super::rows::BF16_ATILE;
use super::tile::TileSession;
pub use crate::kernels::prefetch::Spread;

/// Which configuration this thread's newest live session loaded.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Config {
    None,
    I8,
    KSuper,
    Attn,
    Bf16,
}

thread_local! {
    static CURRENT: Cell<Config> = const { Cell::new(Config::None) };
}

/// The tile unit may be driven here: AMX for this process, AVX-512F for the int8 kernel's
/// scaling.
fn usable() -> bool {
    super::available() && std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("avx512vnni") && std::arch::is_x86_feature_detected!("avx512bw")
}

/// A loaded configuration on this thread; restores the previous one (tiles and record) when
/// dropped. Not `Send`: the configuration belongs to the thread.
struct Session {
    previous: Config,
    _tiles: TileSession,
    _thread: PhantomData<*const ()>,
}

impl Session {
    fn begin(cfg: Config) -> Session {
        assert!(usable(), "SMEPilot: a tile session where the process does not drive AMX");
        // SAFETY: `usable` checked that AMX is available and permitted for this process
        // (`gemm::*_session`'s contract); the session restores the previous configuration
        // when dropped.
        let tiles = unsafe {
            match cfg {
                Config::I8 => gemm::i8_session(),
                Config::KSuper => ksuper::session(),
                Config::Attn => attn::session(),
                _ => gemm::bf16_session(),
            }
        };
        Session { previous: CURRENT.replace(cfg), _tiles: tiles, _thread: PhantomData }
    }

    fn is_current(&self, cfg: Config) -> bool {
        CURRENT.get() == cfg
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        CURRENT.set(self.previous);
    }
}

/// The int8 kernel's configuration, loaded on this thread.
pub struct I8Session(Session);

/// The bf16 kernel's configuration, loaded on this thread.
pub struct Bf16Session(Session);

/// The int8 kernel's column operand, as [`ColsI8`] describes it: `tiles * nb` B tiles, and
/// `tiles * nb * 16` scales and minimum factors (only read when the rows have a minimum).
pub struct I8Cols<'a> {
    pub q: &'a [u8],
    pub d: &'a [f32],
    pub s: &'a [f32],
    pub nb: usize,
}

/// 16 rows of the int8 kernel's row operand, as [`RowsI8`] describes them: block b of row
/// r at `q[r * stride + b * block_step ..][..32]`, scales `d[b * 16 + r]`, minimum factors
/// likewise (None: no minimum term).
pub struct I8Rows<'a> {
    pub q: &'a [u8],
    pub stride: usize,
    pub block_step: usize,
    pub d: &'a [f32],
    pub m: Option<&'a [f32]>,
}

impl I8Rows<'_> {
    /// Holds `nb` blocks of 16 rows (what a product reads).
    fn holds(&self, nb: usize) -> bool {
        let q_end = (nb > 0).then(|| 15 * self.stride + (nb - 1) * self.block_step + I8_KBLOCK).unwrap_or(0);
        q_end <= self.q.len() && nb * 16 <= self.d.len() && self.m.is_none_or(|m| nb * 16 <= m.len())
    }

    fn raw(&self) -> RowsI8 {
        RowsI8 {
            q: self.q.as_ptr(),
            stride: self.stride,
            block_step: self.block_step,
            d: self.d.as_ptr(),
            m: self.m.map_or(std::ptr::null(), |m| m.as_ptr()),
        }
    }
}

impl I8Session {
    /// Loads the int8 kernel's configuration. Panics where the process does not drive AMX.
    pub fn begin() -> I8Session {
        I8Session(Session::begin(Config::I8))
    }

    /// [`gemm::i8_block`]: one or two row tiles `w` against column tiles `mt`, `mt + 1`,
    /// into `acc` (rows 0 .. 16 x w.len()). Panics if `w` holds neither one nor two tiles,
    /// or an operand is shorter than the kernel reads.
    pub fn block(&self, act: &I8Cols, mt: usize, w: &[I8Rows], acc: &mut Block32, pf: &Spread) {
        let nb = act.nb;
        let tiles = (mt + 2) * nb;
        let min = w.iter().any(|w| w.m.is_some());
        assert!(matches!(w.len(), 1 | 2), "SMEPilot: int8 block of {} row tiles", w.len());
        assert!(
            tiles * I8_BTILE <= act.q.len() && tiles * 16 <= act.d.len() && (!min || tiles * 16 <= act.s.len()),
            "SMEPilot: int8 column operand too short for tiles {mt}, {}",
            mt + 1
        );
        assert!(w.iter().all(|w| w.holds(nb)), "SMEPilot: int8 row tile too short for {nb} blocks");
        assert!(self.0.is_current(Config::I8), "SMEPilot: int8 product while another tile configuration is loaded");
        let a = ColsI8 { q: act.q.as_ptr(), d: act.d.as_ptr(), s: act.s.as_ptr(), nb };
        let (w0, w1) = (w[0].raw(), w[w.len() - 1].raw());
        // SAFETY: this session loaded I8_CONFIG on this thread and it is still the current
        // one (checked); AVX-512F is present (checked at `begin`); the column operand holds
        // tiles mt and mt + 1 with their scales (and sums, read only with minimums), and the
        // row tiles hold nb blocks of 16 rows with their scales and minimum factors (checked
        // above), so every read of the kernel stays within the slices.
        unsafe {
            match w.len() {
                2 => gemm::i8_block::<true>(&a, mt, [&w0, &w1], acc, pf),
                _ => gemm::i8_block::<false>(&a, mt, [&w0, &w0], acc, pf),
            }
        }
    }
}

/// An open tile session of the K-quant super-block kernel ([`super::ksuper`]).
pub struct KsSession(Session);

/// The super-block kernel's column operand: `tiles` column tiles of `nsb` super-blocks
/// (B tiles, scales and, with minimums, -dmin and minimum pairs), as `ColsKs` lays them out.
pub struct KsCols<'a> {
    pub q: &'a [u8],
    pub d: &'a [f32],
    pub nmin: &'a [f32],
    pub mins: &'a [u32],
    pub nsb: usize,
}

/// One row tile of the super-block kernel's row operand, as `RowsKs` lays it out.
pub struct KsRows<'a> {
    pub q: &'a [u8],
    pub d: &'a [f32],
    pub bsums: Option<&'a [u32]>,
}

impl KsSession {
    pub fn begin() -> KsSession {
        KsSession(Session::begin(Config::KSuper))
    }

    /// One or two row tiles `rows` against column tile `ct` of `cols` into `acc`'s column
    /// half `half` (block entries `half` and `2 + half`, overwritten).
    pub fn block(&self, cols: &KsCols, ct: usize, rows: &[KsRows], acc: &mut Block32, half: usize, pf: &Spread) {
        let nsb = cols.nsb;
        let min = rows[0].bsums.is_some();
        assert!(matches!(rows.len(), 1 | 2), "SMEPilot: super-block product of {} row tiles", rows.len());
        assert!(half < 2 && rows.iter().all(|r| r.bsums.is_some() == min), "SMEPilot: super-block rows disagree on minimums");
        assert!(
            (ct + 1) * nsb * SB_TILES_BYTES <= cols.q.len() && (ct + 1) * nsb * 16 <= cols.d.len() && (!min || ((ct + 1) * nsb * 16 <= cols.nmin.len() && (ct + 1) * nsb * 64 <= cols.mins.len())),
            "SMEPilot: K-quant column operand too short for tile {ct}"
        );
        assert!(
            rows.iter().all(|r| nsb * STEPS * TILE <= r.q.len() && nsb * 16 <= r.d.len() && r.bsums.is_none_or(|b| nsb * 64 <= b.len())),
            "SMEPilot: K-quant row tile too short for {nsb} super-blocks"
        );
        assert!(self.0.is_current(Config::KSuper), "SMEPilot: K-quant product while another tile configuration is loaded");
        let c = ColsKs { q: cols.q.as_ptr(), d: cols.d.as_ptr(), nmin: cols.nmin.as_ptr(), mins: cols.mins.as_ptr(), nsb };
        let raw = |r: &KsRows| RowsKs { q: r.q.as_ptr(), d: r.d.as_ptr(), bsums: r.bsums.map_or(std::ptr::null(), |b| b.as_ptr()) };
        let (r0, r1) = (raw(&rows[0]), raw(&rows[rows.len() - 1]));
        let (top, bottom) = acc.0.split_at_mut(2);
        // SAFETY: this session loaded the kernel's configuration on this thread and it is still
        // the current one (checked); column tile ct and the row tiles hold nsb super-blocks
        // with sums exactly where minimums are (checked above), which is all `ks_block` reads;
        // AVX-512F/VNNI: sessions exist only where `usable` found them.
        unsafe {
            match rows.len() {
                2 => ksuper::ks_block::<true>(&c, ct, [&r0, &r1], [&mut top[half], &mut bottom[half]], pf),
                _ => ksuper::ks_block::<false>(&c, ct, [&r0, &r0], [&mut top[half], &mut bottom[half]], pf),
            }
        }
    }
}

/// An open tile session of the attention kernels ([`super::attn`]).
pub struct AttnSession(Session);

impl AttnSession {
    pub fn begin() -> AttnSession {
        AttnSession(Session::begin(Config::Attn))
    }

    fn check(&self) {
        assert!(self.0.is_current(Config::Attn), "SMEPilot: attention product while another tile configuration is loaded");
    }

    /// Scores of 16 queries (`q`: `steps` A pairs) against `blocks` (1 ..= 4) key blocks of
    /// `k` (`steps` B pairs each, `k_block` bytes apart) into `out` (16 rows of 64 floats;
    /// column blocks past `blocks` untouched).
    pub fn scores(&self, q: &[u8], k: &[u8], k_block: usize, steps: usize, blocks: usize, out: &mut [f32]) {
        assert!((1..=4).contains(&blocks) && (blocks == 1 || k_block >= steps * PAIR), "SMEPilot: attention scores of {blocks} blocks");
        assert!(q.len() >= steps * PAIR && k.len() >= (blocks - 1) * k_block + steps * PAIR && out.len() >= 16 * 64, "SMEPilot: attention scores operands too short");
        self.check();
        // SAFETY: this session loaded the kernels' configuration on this thread and it is
        // current (checked); the operands hold what `attn::scores` reads and writes (checked).
        unsafe { attn::scores(q.as_ptr(), k.as_ptr(), k_block, steps, blocks, out.as_mut_ptr()) }
    }

    /// `o += P V` for 16 rows of `dv` floats: `p` `steps` A pairs, `v` `steps` steps of
    /// `dv / 16` B pairs, `v_step` bytes apart.
    pub fn pv(&self, p: &[u8], v: &[u8], v_step: usize, steps: usize, dv: usize, o: &mut [f32]) {
        assert!(dv.is_multiple_of(16) && dv > 0 && steps > 0, "SMEPilot: attention P V of {dv} channels");
        assert!(p.len() >= steps * PAIR && v.len() >= (steps - 1) * v_step + dv / 16 * PAIR && o.len() >= 16 * dv, "SMEPilot: attention P V operands too short");
        self.check();
        // SAFETY: as in `scores`.
        unsafe { attn::pv(p.as_ptr(), v.as_ptr(), v_step, steps, dv, o.as_mut_ptr()) }
    }
}

/// 16 f32 rows of `x` (`stride` floats apart, 32 of each) into one A pair of the attention
/// kernels (`out`, `attn::PAIR` bytes).
pub fn attn_a_pair(x: &[f32], stride: usize, out: &mut [u8]) {
    assert!(out.len() >= PAIR && x.len() >= 15 * stride + 32, "SMEPilot: attention A pair operands");
    assert!(usable(), "SMEPilot: attention tiles where the process does not drive AMX");
    // SAFETY: AVX-512F (usable); the rows and the pair are within the slices (checked).
    unsafe { attn::a_pair(x.as_ptr(), stride, out.as_mut_ptr()) }
}

/// A scores B pair from 16 f16 key rows (`nkeys` of them, `row_stride` bytes apart, 32
/// dimensions of each from the slice's start).
pub fn attn_k_pair(k: &[u8], row_stride: usize, nkeys: usize, out: &mut [u8]) {
    // The gather's offsets are 32-bit.
    assert!(nkeys <= 16 && out.len() >= PAIR && (nkeys == 0 || k.len() >= (nkeys - 1) * row_stride + 64) && 15 * row_stride + 64 <= i32::MAX as usize, "SMEPilot: attention K pair operands");
    assert!(usable(), "SMEPilot: attention tiles where the process does not drive AMX");
    // SAFETY: AVX-512F (usable); every key row read and the pair are within the slices.
    unsafe { attn::k_pair(k.as_ptr(), row_stride, nkeys, out.as_mut_ptr()) }
}

/// A P V B pair from `nkeys` (<= 32) f16 V rows, `row_stride` bytes apart, 16 channels of
/// each from the slice's start.
pub fn attn_v_pair(v: &[u8], row_stride: usize, nkeys: usize, out: &mut [u8]) {
    assert!(nkeys <= 32 && out.len() >= PAIR && (nkeys == 0 || v.len() >= (nkeys - 1) * row_stride + 32), "SMEPilot: attention V pair operands");
    assert!(usable(), "SMEPilot: attention tiles where the process does not drive AMX");
    // SAFETY: as above.
    unsafe { attn::v_pair(v.as_ptr(), row_stride, nkeys, out.as_mut_ptr()) }
}

impl Bf16Session {
    /// Loads the bf16 kernel's configuration. Panics where the process does not drive AMX.
    pub fn begin() -> Bf16Session {
        Bf16Session(Session::begin(Config::Bf16))
    }

    /// [`gemm::bf16_block`]: weight tiles `w0`, `w1` (`ksteps` A tiles each) against
    /// activation tiles `b0`, `b1` (`ksteps` B tiles each), into `acc`. Panics if an operand
    /// is shorter than the kernel reads.
    pub fn block(&self, w0: &[u8], w1: &[u8], b0: &[u8], b1: &[u8], ksteps: usize, acc: &mut Block32) {
        assert!(
            w0.len().min(w1.len()) >= ksteps * BF16_ATILE && b0.len().min(b1.len()) >= ksteps * BF16_BTILE,
            "SMEPilot: bf16 operands too short for {ksteps} steps"
        );
        assert!(self.0.is_current(Config::Bf16), "SMEPilot: bf16 product while another tile configuration is loaded");
        // SAFETY: this session loaded tile::ALL_16X64 on this thread and it is still the current
        // one (checked); every operand holds ksteps 1 KB tiles (checked), which is all the
        // kernel loads.
        unsafe { gemm::bf16_block(w0.as_ptr(), w1.as_ptr(), b0.as_ptr(), b1.as_ptr(), ksteps, acc) }
    }
}

impl Block32 {
    /// Row `i` (activation row, below 32) of the block transposed into `out`: `out[r]` =
    /// the result for weight row r, for every r below `out.len()` (at most 32); what
    /// `store_transposed` writes for that row.
    #[inline]
    pub fn store_row(&self, i: usize, out: &mut [f32]) {
        assert!(i < 32 && out.len() <= 32, "SMEPilot: row {i} of {} outside a 32 x 32 block", out.len());
        let (mt, ii) = (i / 16, i % 16);
        for (r, o) in out.iter_mut().enumerate() {
            *o = self.0[(r / 16) * 2 + mt][r % 16][ii];
        }
    }

    /// Row `i` (below 32) of the block into `out`: `out[c]` = the result for row i and
    /// column c, for every c below `out.len()` (at most 32).
    #[inline]
    pub fn copy_row(&self, i: usize, out: &mut [f32]) {
        assert!(i < 32 && out.len() <= 32, "SMEPilot: row {i} of {} outside a 32 x 32 block", out.len());
        let (rt, r) = (i / 16, i % 16);
        let (lo, hi) = out.split_at_mut(out.len().min(16));
        lo.copy_from_slice(&self.0[rt * 2][r][..lo.len()]);
        hi.copy_from_slice(&self.0[rt * 2 + 1][r][..hi.len()]);
    }
}
