//! The roofline model: the time of one matrix product in each mode, from the machine
//! profile. A mode's time is the larger of its compute time (the kernels' measured costs,
//! spread over the threads that run them) and its memory time (the weights streamed once
//! from DRAM at the bandwidth of the threads that read them).
//!
//! * vector: every thread runs the vector kernels on its share of the weight rows;
//! * matrix: one thread per matrix unit stages weights into tiles and runs the tile kernel
//!   (on AMX every core has a unit; on SME the cores of a cluster share one, so the others
//!   idle);
//! * coop: some threads drive the matrix units (at most one per unit), the rest run vector
//!   kernels, on disjoint weight tiles; the split is the whole number of tiles nearest to
//!   where both sides finish together (their rates add, scaled by the profile's
//!   `mixed_efficiency`), and the vector side's share of the weights must come through what
//!   DRAM leaves it while the matrix units stream.

use super::profile::MachineProfile;
use super::Mode;
pub use crate::plan::MatShape;
use crate::dtype::DType;

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Prediction {
    pub mode: Mode,
    pub secs: f64,
    /// Threads driving the matrix unit (coop; all drivers for matrix, 0 for vector).
    pub matrix_threads: usize,
    /// Fraction of the weight rows the matrix side takes: for coop a whole number of the
    /// unit's tiles (weight rows of its output block) out of the product's.
    pub matrix_share: f64,
    /// Whether DRAM, not the engines, sets the time.
    pub memory_bound: bool,
}



/// One thread's seconds for the whole product on the vector kernels (cache-resident).
fn vector_work(p: &MachineProfile, s: &MatShape) -> f64 {
    // A type the profile has no figures for: the slowest vector cost it knows (the
    // vector path runs every product, so it always has a prediction).
    let slowest = || p.kernels.iter().copied().max_by(|a, b| a.vec_m4_ns.total_cmp(&b.vec_m4_ns));
    let Some(c) = p.kernel(s.ty).copied().or_else(slowest) else { return 1e-9 * s.elems() * s.m as f64 };
    let per_elem = if s.m == 1 { c.vec_m1_ns } else { s.m.div_ceil(4) as f64 * c.vec_m4_ns };
    s.elems() * per_elem * 1e-9
}

/// One matrix unit's seconds for the whole product: staging plus tile products over the
/// shape padded to the unit's output blocks.
fn matrix_work(p: &MachineProfile, s: &MatShape) -> f64 {
    let (mu, c, (bm, bn)) = match (&p.matrix, p.kernel(s.ty), s.matrix_block) {
        (Some(mu), Some(c), Some(block)) => (mu, *c, block),
        _ => return f64::INFINITY,
    };
    let padded = 2.0 * (s.m.next_multiple_of(bm) * s.n.next_multiple_of(bn) * s.k) as f64;
    s.elems() * c.stage_ns * 1e-9 + padded / mu.kernel_for(&c).0
}

/// Converting the activations into the B tiles of the type's tile kernel, split over
/// `threads`.
fn act_secs(p: &MachineProfile, s: &MatShape, threads: usize) -> f64 {
    let ns = match (&p.matrix, p.kernel(s.ty)) {
        (Some(mu), Some(c)) => mu.kernel_for(c).1,
        (Some(mu), None) => mu.act_ns,
        (None, _) => 0.0,
    };
    (s.m * s.k) as f64 * ns * 1e-9 / threads.max(1) as f64
}

/// The predicted time of `mode`, or None where the mode cannot run this product.
pub fn predict(p: &MachineProfile, s: &MatShape, mode: Mode) -> Option<Prediction> {
    let t = s.threads.max(1);
    let bytes = s.weight_bytes();
    match mode {
        Mode::Vector => Some(bounded(p, mode, vector_work(p, s) / t as f64, bytes / p.bandwidth(t), 0, 0.0)),
        Mode::Matrix => {
            let d = p.matrix_drivers(t);
            let w = matrix_work(p, s);
            if d == 0 || !w.is_finite() {
                return None;
            }
            // Every thread converts activations, drivers or not (the others then idle).
            Some(bounded(p, mode, w / d as f64 + act_secs(p, s, t), bytes / p.bandwidth(d), d, 1.0))
        }
        Mode::Coop => {
            let mu = p.matrix.as_ref()?;
            let tiles = coop_tiles(s)?;
            // Matrix-side thread counts worth trying, never more than one per unit: with
            // private units any count up to them; with shared units one driver per unit (a
            // second would queue on the same unit).
            let most = p.matrix_drivers(t).min(t.saturating_sub(1));
            let fewest = if mu.cores_per_unit == 1 { 1 } else { most };
            let mut found: Option<Prediction> = None;
            for tm in fewest.max(1)..=most {
                let (per_m, per_v) = coop_tile_secs(p, s, tm)?;
                // Whole tiles to the matrix side: either side of where both finish together.
                let even = (tiles as f64 * per_v / (per_m + per_v)).floor() as usize;
                for j in [even, even + 1] {
                    let q = coop_split(p, s, tm, j.clamp(1, tiles - 1))?;
                    if found.is_none_or(|f| q.secs < f.secs) {
                        found = Some(q);
                    }
                }
            }
            found
        }
    }
}

/// A prediction from compute and memory seconds: the larger, plus the per-node overhead.
fn bounded(p: &MachineProfile, mode: Mode, secs: f64, mem: f64, matrix_threads: usize, matrix_share: f64) -> Prediction {
    Prediction { mode, secs: secs.max(mem) + p.node_overhead, matrix_threads, matrix_share, memory_bound: mem >= secs }
}

/// The weight tiles (the unit's output block's weight rows) coop splits the product into;
/// None where it cannot be split (no matrix path, fewer than two tiles).
pub fn coop_tiles(s: &MatShape) -> Option<usize> {
    let tiles = s.n.div_ceil(s.matrix_block?.1);
    (tiles >= 2).then_some(tiles)
}

/// Seconds per weight tile on the matrix side (`tm` drivers) and on the vector side (the
/// other threads), while both run.
fn coop_tile_secs(p: &MachineProfile, s: &MatShape, tm: usize) -> Option<(f64, f64)> {
    let (t, tiles) = (s.threads.max(1), coop_tiles(s)? as f64);
    let (wm, wv) = (matrix_work(p, s), vector_work(p, s));
    if !wm.is_finite() || !wv.is_finite() || tm == 0 || tm >= t {
        return None;
    }
    let eff = p.mixed_efficiency.clamp(0.01, 1.0);
    Some((wm / tiles / tm as f64 / eff, wv / tiles / (t - tm) as f64 / eff))
}

/// Coop with `tm` threads driving the units and `j` of the product's weight tiles on them
/// (the rest on the vector kernels of the other threads).
pub fn coop_split(p: &MachineProfile, s: &MatShape, tm: usize, j: usize) -> Option<Prediction> {
    let (t, tiles) = (s.threads.max(1), coop_tiles(s)?);
    if tm > p.matrix_drivers(t) || j == 0 || j >= tiles {
        return None;
    }
    let (per_m, per_v) = coop_tile_secs(p, s, tm)?;
    let bytes = s.weight_bytes();
    let share = j as f64 / tiles as f64;
    let comp = (j as f64 * per_m).max((tiles - j) as f64 * per_v) + act_secs(p, s, t);
    let beside = if p.dram_beside_matrix > 0.0 { (1.0 - share) * bytes / p.dram_beside_matrix } else { 0.0 };
    Some(bounded(p, Mode::Coop, comp, (bytes / p.bandwidth(t)).max(beside), tm, share))
}

/// Every mode's prediction, and the fastest (ties, within 2%, go to the simpler mode:
/// vector, then matrix, then coop).
pub fn best(p: &MachineProfile, s: &MatShape) -> (Prediction, [Option<Prediction>; 3]) {
    let all = Mode::ALL.map(|m| predict(p, s, m));
    let fallback = Prediction { mode: Mode::Vector, secs: f64::MAX, matrix_threads: 0, matrix_share: 0.0, memory_bound: false };
    let mut best = all[0].unwrap_or(fallback);
    for q in all.iter().flatten() {
        if q.secs < best.secs * 0.98 {
            best = *q;
        }
    }
    (best, all)
}

/// The fewest rows (up to `s.m`) for which one thread driving the matrix unit runs an
/// expert's product (`s.n` x `s.k` of `s.ty`) faster than one thread on the vector kernels:
/// MUL_MAT_ID runs its experts side by side, one work item per thread. None where the unit
/// never wins or cannot run the product.
pub fn expert_crossover(p: &MachineProfile, s: &MatShape) -> Option<usize> {
    s.matrix_block?;
    (1..=s.m).find(|&m| {
        let one = MatShape { m, threads: 1, ..*s };
        matrix_work(p, &one) + act_secs(p, &one, 1) < vector_work(p, &one)
    })
}

/// Prediction of a non-matmul op from its bytes moved and its compute seconds (already
/// spread over `threads`): the larger of the two, plus the per-node overhead.
pub fn predict_other(p: &MachineProfile, bytes: f64, compute_secs: f64, threads: usize) -> f64 {
    (bytes / p.bandwidth(threads.max(1))).max(compute_secs) + p.node_overhead
}

/// Bytes of a tensor of `ty` with `nelements`, for the op model.
pub fn tensor_bytes(ty: DType, nelements: usize) -> f64 {
    (nelements / ty.block_size() * ty.block_bytes()) as f64
}

#[cfg(test)]
mod tests {
    use super::super::profile::synthetic;
    use super::*;

    fn shape(m: usize, ty: DType, threads: usize) -> MatShape {
        MatShape { m, n: 3072, k: 3072, ty, threads, matrix_block: Some((32, 32)) }
    }

    #[test]
    fn amx_profile_decode_goes_to_vector_and_is_memory_bound() {
        let p = synthetic::amx_like();
        for ty in [DType::Q4_0, DType::BF16, DType::Q4_K] {
            let (b, _) = best(&p, &shape(1, ty, 2));
            assert_eq!(b.mode, Mode::Vector, "{ty:?}: {b:?}");
        }
        let (b, _) = best(&p, &shape(1, DType::BF16, 2));
        assert!(b.memory_bound, "{b:?}");
    }

    /// An expert of Qwen3-30B-A3B's shape goes to the unit from a row count on: one
    /// vector thread wins below it, the unit at and above it; never without a unit.
    #[test]
    fn expert_crossover_splits_experts_by_rows() {
        let p = synthetic::amx_like();
        let s = MatShape { m: 512, n: 768, k: 2048, ty: DType::Q4_0, threads: 2, matrix_block: Some((32, 32)) };
        let r = expert_crossover(&p, &s).expect("the unit wins for large experts");
        assert!(r > 1 && r < 512, "crossover at {r}");
        let one = |m| MatShape { m, threads: 1, ..s };
        let unit = |m| matrix_work(&p, &one(m)) + act_secs(&p, &one(m), 1);
        assert!(unit(r - 1) >= vector_work(&p, &one(r - 1)) && unit(r) < vector_work(&p, &one(r)));
        assert_eq!(expert_crossover(&synthetic::no_matrix(), &s), None);
        assert_eq!(expert_crossover(&p, &MatShape { matrix_block: None, ..s }), None);
    }

    #[test]
    fn amx_profile_prefill_goes_to_matrix_on_every_core() {
        let p = synthetic::amx_like();
        let (b, all) = best(&p, &shape(512, DType::Q4_0, 2));
        assert_eq!(b.mode, Mode::Matrix, "{all:?}");
        assert_eq!(b.matrix_threads, 2);
        // Private units: splitting cores between engines cannot beat all cores on the
        // faster engine when compute bounds both.
        assert!(all[Mode::Coop.index()].unwrap().secs > b.secs);
    }

    #[test]
    fn sme_profile_drives_the_shared_unit_with_one_thread_and_the_rest_vector() {
        let p = synthetic::sme_shared();
        let (b, all) = best(&p, &shape(512, DType::BF16, 4));
        assert_eq!(b.mode, Mode::Coop, "{all:?}");
        assert_eq!(b.matrix_threads, 1);
        let m = all[Mode::Matrix.index()].unwrap();
        assert_eq!(m.matrix_threads, 1, "matrix-only mode uses one driver per unit");
        assert!(b.matrix_share > 0.5 && b.matrix_share < 1.0, "{b:?}");
        // Decode stays on the vector units there too.
        assert_eq!(best(&p, &shape(1, DType::Q4_0, 4)).0.mode, Mode::Vector);
    }

    #[test]
    fn one_shared_unit_on_the_amx_profile_turns_prefill_to_coop() {
        // SMEPILOT_MATRIX_UNITS=1 on the 2-core AMX profile: matrix-only leaves a core idle,
        // so the idle core's vector work adds to the unit's (the SME case on this machine).
        let p = synthetic::amx_like().with_matrix_units(1);
        assert_eq!(p.matrix.as_ref().unwrap().cores_per_unit, 2);
        let (b, all) = best(&p, &shape(512, DType::BF16, 2));
        assert_eq!(b.mode, Mode::Coop, "{all:?}");
        assert_eq!((b.matrix_threads, all[Mode::Matrix.index()].unwrap().matrix_threads), (1, 1));
        assert!(all[Mode::Vector.index()].unwrap().secs > b.secs);
    }

    #[test]
    fn no_matrix_profile_never_uses_the_matrix_unit() {
        let p = synthetic::no_matrix();
        for m in [1, 16, 512] {
            let (b, all) = best(&p, &shape(m, DType::BF16, 4));
            assert_eq!(b.mode, Mode::Vector);
            assert!(all[1].is_none() && all[2].is_none());
        }
    }

    #[test]
    fn shapes_the_matrix_path_cannot_run_stay_on_vector() {
        let p = synthetic::amx_like();
        let s = MatShape { matrix_block: None, ..shape(512, DType::Q4_0, 2) };
        let (b, all) = best(&p, &s);
        assert_eq!(b.mode, Mode::Vector);
        assert!(all[1].is_none() && all[2].is_none());
    }

    /// The published Apple M4 Pro profile and its tile kernel's output block.
    fn m4_pro() -> (MachineProfile, (usize, usize)) {
        let f = crate::calibrate::read_profile_file(&crate::calibrate::profile_path("m4-pro")).expect("bench-scripts/profiles/m4-pro.txt");
        assert!(f.published.is_some(), "m4-pro.txt is marked PUBLISHED");
        (f.profile, f.matrix_block.expect("m4-pro.txt gives its matrix block"))
    }

    /// Llama-3.2-3B's products (K, N): attention q and o, k and v, FFN up and gate, down,
    /// and the output projection.
    const LLAMA_3B: [(usize, usize); 5] = [(3072, 3072), (3072, 1024), (3072, 8192), (8192, 3072), (3072, 128256)];

    fn on(p: &MachineProfile, m: usize, (k, n): (usize, usize), ty: DType, block: (usize, usize)) -> MatShape {
        MatShape { m, n, k, ty, threads: p.cores, matrix_block: Some(block) }
    }

    #[test]
    fn published_profile_memory_bound_work_goes_vector_only() {
        let (p, block) = m4_pro();
        let mut decode = 0;
        for ty in crate::calibrate::TYPES {
            for kn in LLAMA_3B {
                for threads in [p.cores, 8, 4] {
                    // Decode: a GEMV stays on the vector units (on all cores, memory-bound; on
                    // 4, some types' kernels are slower than DRAM, and the unit's padded tiles
                    // slower still).
                    let s = MatShape { threads, ..on(&p, 1, kn, ty, block) };
                    let (b, all) = best(&p, &s);
                    assert_eq!(b.mode, Mode::Vector, "{ty:?} {kn:?} {threads} threads: {all:?}");
                    assert!(b.memory_bound || threads < p.cores, "{ty:?} {kn:?}: {b:?}");
                    decode += 1;
                }
                // Any batch the vector units run memory-bound: no unit can beat DRAM.
                for m in 2..=64 {
                    let (b, all) = best(&p, &on(&p, m, kn, ty, block));
                    if all[Mode::Vector.index()].unwrap().memory_bound {
                        assert_eq!(b.mode, Mode::Vector, "{ty:?} M={m}: {all:?}");
                    }
                }
            }
        }
        assert!(decode > 0);
    }

    /// The paper's rule between the ridges: work compute-bound on the vector units that the
    /// matrix units run at DRAM speed goes to the matrix units alone (the cores could only
    /// add contention for the same bandwidth). Checked with the paper's roofline (useful
    /// flops: an output block of one activation row) and with SMEPilot's SME block (32 rows:
    /// there the padded tile's intensity, at least 16 flops per byte even for F32 weights,
    /// is above the matrix ridge of 2.92e12 / 247e9 = 11.8, so few or no shapes qualify).
    #[test]
    fn published_profile_ridge_crossing_work_goes_matrix_only() {
        let (p, block) = m4_pro();
        for (rows, must_find) in [(1, true), (block.0, false)] {
            let mut found = 0;
            for ty in crate::calibrate::TYPES {
                for kn in LLAMA_3B {
                    for m in 1..=64 {
                        let s = on(&p, m, kn, ty, (rows, block.1));
                        let (b, all) = best(&p, &s);
                        let (v, mx) = (all[Mode::Vector.index()].unwrap(), all[Mode::Matrix.index()].unwrap());
                        if v.memory_bound || !mx.memory_bound {
                            continue;
                        }
                        found += 1;
                        // Matrix-only, unless the vector units tie with it (within the 2%
                        // that goes to the simpler mode).
                        let tie = b.mode == Mode::Vector && v.secs <= mx.secs / 0.98;
                        assert!(b.mode == Mode::Matrix || tie, "{ty:?} {kn:?} M={m} block rows {rows}: {all:?}");
                        assert_eq!(b.matrix_threads, if tie { 0 } else { p.matrix_drivers(p.cores) });
                    }
                }
            }
            assert!(found > 0 || !must_find, "no ridge-crossing shape with {rows}-row blocks");
        }
    }

    #[test]
    fn published_profile_compute_bound_work_goes_coop_split_in_whole_tiles() {
        let (p, block) = m4_pro();
        let units = p.matrix.as_ref().unwrap().units;
        for ty in crate::calibrate::TYPES {
            for kn in LLAMA_3B {
                for m in [128, 256, 512] {
                    let s = on(&p, m, kn, ty, block);
                    let (b, all) = best(&p, &s);
                    let (v, mx) = (all[Mode::Vector.index()].unwrap(), all[Mode::Matrix.index()].unwrap());
                    assert!(!v.memory_bound && !mx.memory_bound, "compute-bound on both: {all:?}");
                    assert_eq!(b.mode, Mode::Coop, "{ty:?} {kn:?} M={m}: {all:?}");
                    assert!(b.secs < v.secs.min(mx.secs));
                    // One driver per unit; the other cores take vector tiles.
                    assert_eq!(b.matrix_threads, units);
                    // The split is a whole number of tiles, and moving one tile either way
                    // is no faster.
                    let tiles = coop_tiles(&s).unwrap();
                    let j = (b.matrix_share * tiles as f64).round() as usize;
                    assert!((b.matrix_share * tiles as f64 - j as f64).abs() < 1e-9 && j >= 1 && j < tiles, "{b:?} of {tiles} tiles");
                    for other in [j - 1, j + 1] {
                        if let Some(q) = coop_split(&p, &s, units, other) {
                            assert!(q.secs >= b.secs, "{other} tiles beat {j}: {q:?} vs {b:?}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn a_shared_unit_never_gets_a_second_driver() {
        let (m4, block) = m4_pro();
        let profiles = [synthetic::amx_like(), synthetic::sme_shared(), synthetic::amx_like().with_matrix_units(1), m4.clone(), m4.with_matrix_units(1)];
        for p in &profiles {
            let mu = p.matrix.as_ref().unwrap();
            for threads in 1..=16 {
                for (m, ty) in [(1, DType::Q4_0), (16, DType::BF16), (512, DType::Q4_0), (512, DType::F16)] {
                    let s = MatShape { m, n: 3072, k: 3072, ty, threads, matrix_block: Some(block) };
                    let (_, all) = best(p, &s);
                    for q in all.iter().flatten() {
                        assert!(q.matrix_threads <= mu.units, "{}: {q:?}", p.cpu);
                    }
                    if let Some(c) = all[Mode::Coop.index()] {
                        assert!(c.matrix_threads >= 1 && c.matrix_threads < threads, "{}: {c:?}", p.cpu);
                        if mu.cores_per_unit > 1 {
                            assert_eq!(c.matrix_threads, mu.units.min(threads - 1), "{}", p.cpu);
                        }
                    }
                    // Past the units, a further driver is refused outright.
                    assert!(coop_split(p, &s, mu.units + 1, 1).is_none());
                }
            }
        }
    }
}
