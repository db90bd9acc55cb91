//! Plans cached per shape, corrected by measured times.
//!
//! Each shape keeps the model's prediction for every mode and an average of the times
//! measured in each mode it ran. A mode's estimate is its measured time once it has one;
//! before that, its prediction scaled by how far off the model has been for that mode on
//! other shapes. The planner picks the lowest estimate, so when a prediction was wrong the
//! measured time of the chosen mode exceeds the next mode's estimate and the next call
//! tries that one: a wrong choice flips within a call or two and then stays on the better
//! mode.

use std::collections::HashMap;

use super::model::{self, MatShape, Prediction};
use super::profile::MachineProfile;
use super::{Mode, ModeSetting, Plan};

/// Weight of a new measurement in a mode's running average (the first samples are
/// averaged plainly).
const EMA: f64 = 0.3;
/// Modes whose estimate is within this factor of the best are measured too, so a mode
/// the model underrates is still found: later occurrences of the shape in a graph take the
/// chosen mode and those modes in turn until each has `EXPLORE_SAMPLES` measurements. Turns
/// keep the samples of competing modes close in time (the host's speed drifts), and two
/// samples keep one lucky or unlucky call from deciding.
const EXPLORE_WITHIN: f64 = 3.0;
const EXPLORE_SAMPLES: u32 = 2;
/// A mode already measured gets its further samples only while its measurement is within
/// this factor of the best: one call is enough to rule out a mode 2.5x slower (such as the
/// vector path of a BF16 product at M = 16), while a mode that is close, or measured in an
/// unlucky moment, is sampled again.
const RESAMPLE_WITHIN: f64 = 2.0;
/// Every this many decisions of a shape, the runner-up mode runs once if its estimate is
/// within `REVISIT_WITHIN` of the chosen one's, so a measurement taken in a bad moment
/// (a cold first graph, a slow phase of the host) does not rule a mode out for good.
const REVISIT_EVERY: u64 = 1024;
const REVISIT_WITHIN: f64 = 1.5;

/// Moves a running geometric mean of measured / predicted towards one more observation.
fn blend_ratio(ratio: &mut f64, measured: f64, predicted: f64) {
    if predicted > 0.0 && measured > 0.0 {
        let r = (measured / predicted).clamp(1e-3, 1e3);
        *ratio = (ratio.ln() + EMA * (r.ln() - ratio.ln())).exp();
    }
}

#[derive(Clone, Debug)]
struct Entry {
    pred: [Option<Prediction>; 3],
    measured: [Option<f64>; 3],
    samples: [u32; 3],
    decisions: u64,
}

pub struct Planner {
    profile: MachineProfile,
    setting: ModeSetting,
    shapes: HashMap<MatShape, Entry>,
    /// Per mode, the running geometric mean of measured / predicted.
    ratio: [f64; 3],
    /// The same per op class of the other ops (for the trace's estimates only).
    other_ratio: Vec<(&'static str, f64)>,
    /// MUL_MAT_ID's expert shapes and their crossover rows (`expert_plan`).
    crossovers: HashMap<MatShape, Option<usize>>,
}

/// The plan of one node and what the planner expected of it.
#[derive(Clone, Copy, Debug)]
pub struct Decision {
    pub plan: Plan,
    pub mode: Mode,
    /// The roofline model's prediction for the chosen mode.
    pub predicted: f64,
    /// The planner's corrected estimate (measurements included).
    pub estimate: f64,
}

impl Planner {
    pub fn new(profile: MachineProfile, setting: ModeSetting) -> Planner {
        Planner { profile, setting, shapes: HashMap::new(), crossovers: HashMap::new(), ratio: [1.0; 3], other_ratio: Vec::new() }
    }

    pub fn profile(&self) -> &MachineProfile {
        &self.profile
    }

    fn entry(&mut self, s: &MatShape) -> &mut Entry {
        let p = &self.profile;
        self.shapes.entry(*s).or_insert_with(|| Entry { pred: model::best(p, s).1, measured: [None; 3], samples: [0; 3], decisions: 0 })
    }

    fn estimate(&self, e: &Entry, mode: Mode) -> Option<f64> {
        let i = mode.index();
        e.pred[i].map(|p| e.measured[i].unwrap_or(p.secs * self.ratio[i]))
    }

    /// The plan for shape `s`: the forced mode where it can run (else vector), or the
    /// mode with the lowest estimate.
    pub fn decide(&mut self, s: &MatShape) -> Decision {
        self.decide_nth(s, 0)
    }

    /// As [`decide`](Self::decide) for the `occurrence`-th node of shape `s` in one graph
    /// (from 0): with `auto`, while modes within `EXPLORE_WITHIN` of the best lack
    /// `EXPLORE_SAMPLES` measurements, occurrences take the chosen mode and those in turn.
    pub fn decide_nth(&mut self, s: &MatShape, occurrence: usize) -> Decision {
        let e = {
            let e = self.entry(s);
            e.decisions += 1;
            e.clone()
        };
        let mut mode = match self.setting {
            ModeSetting::Forced(m) if e.pred[m.index()].is_some() => m,
            ModeSetting::Forced(_) => Mode::Vector,
            ModeSetting::Auto | ModeSetting::Model => {
                let mut best = (Mode::Vector, self.estimate(&e, Mode::Vector).unwrap_or(f64::INFINITY));
                for m in [Mode::Matrix, Mode::Coop] {
                    if let Some(t) = self.estimate(&e, m) {
                        if t < best.1 * 0.98 {
                            best = (m, t);
                        }
                    }
                }
                best.0
            }
        };
        if self.setting == ModeSetting::Auto && occurrence > 0 {
            let best = self.estimate(&e, mode).unwrap_or(f64::INFINITY);
            // The chosen mode, then the modes still short of samples (on the stack: this
            // runs for every node of every graph).
            let mut turns = [mode; 3];
            let mut n = 1;
            for m in Mode::ALL {
                let reach = if e.samples[m.index()] == 0 { EXPLORE_WITHIN } else { RESAMPLE_WITHIN };
                if m != mode && e.samples[m.index()] < EXPLORE_SAMPLES && self.estimate(&e, m).is_some_and(|t| t <= best * reach) {
                    turns[n] = m;
                    n += 1;
                }
            }
            if n > 1 && occurrence < n * EXPLORE_SAMPLES as usize {
                mode = turns[occurrence % n];
            }
        }
        if self.setting == ModeSetting::Auto && e.decisions.is_multiple_of(REVISIT_EVERY) {
            let chosen = self.estimate(&e, mode).unwrap_or(f64::INFINITY);
            let runner_up = Mode::ALL
                .into_iter()
                .filter(|&m| m != mode)
                .filter_map(|m| self.estimate(&e, m).map(|t| (m, t)))
                .min_by(|a, b| a.1.total_cmp(&b.1));
            if let Some((m, _)) = runner_up.filter(|&(_, t)| t <= chosen * REVISIT_WITHIN) {
                mode = m;
            }
        }
        let p = e.pred[mode.index()].or(e.pred[0]).unwrap_or_else(|| model::best(&self.profile, s).0);
        Decision {
            plan: Plan::forced(mode, p.matrix_threads),
            mode,
            predicted: p.secs,
            estimate: self.estimate(&e, mode).unwrap_or(p.secs),
        }
    }

    /// The plan of a MUL_MAT_ID node whose experts are products of shape `s` (`s.m`: the
    /// most rows one expert can get): experts from the model's crossover on (the unit beside
    /// the vector kernels, per item), every expert with the matrix or coop mode forced (coop:
    /// one thread per unit drives it, the others take the vector kernels), none with the
    /// vector mode or where the unit cannot run the product. Fixed by the model: expert loads
    /// change every graph, so no measurement feeds back.
    pub fn expert_plan(&mut self, s: &MatShape) -> Plan {
        let drivers = self.profile.matrix_drivers(s.threads);
        let vector = Plan::forced(Mode::Vector, 0);
        if s.matrix_block.is_none() || drivers == 0 {
            return vector;
        }
        match self.setting {
            ModeSetting::Forced(Mode::Vector) => vector,
            ModeSetting::Forced(Mode::Matrix) => Plan::forced(Mode::Matrix, drivers),
            ModeSetting::Forced(Mode::Coop) => Plan::forced(Mode::Coop, drivers.min(s.threads.saturating_sub(1)).max(1)),
            ModeSetting::Auto | ModeSetting::Model => {
                let p = &self.profile;
                let min_rows = *self.crossovers.entry(*s).or_insert_with(|| model::expert_crossover(p, s));
                match min_rows {
                    Some(r) => Plan { expert_min_rows: r, ..Plan::forced(Mode::Matrix, drivers) },
                    None => vector,
                }
            }
        }
    }

    /// Feeds back the measured time of shape `s` run in `mode`.
    pub fn record(&mut self, s: &MatShape, mode: Mode, secs: f64) {
        if self.setting == ModeSetting::Model {
            return;
        }
        let i = mode.index();
        let e = self.entry(s);
        let Some(pred) = e.pred[i] else { return };
        let first = e.measured[i].is_none();
        e.samples[i] = e.samples[i].saturating_add(1);
        let w = EMA.max(1.0 / e.samples[i] as f64);
        e.measured[i] = Some(e.measured[i].map_or(secs, |m| m + w * (secs - m)));
        if first {
            blend_ratio(&mut self.ratio[i], secs, pred.secs);
        }
    }

    /// For an op that is not a planned product: its estimate from the model's prediction
    /// and the op class's measured / predicted ratio so far, returned before `measured`
    /// joins that ratio.
    pub fn observe_other(&mut self, class: &'static str, predicted: f64, measured: f64) -> f64 {
        let i = match self.other_ratio.iter().position(|c| c.0 == class) {
            Some(i) => i,
            None => {
                self.other_ratio.push((class, 1.0));
                self.other_ratio.len() - 1
            }
        };
        let ratio = &mut self.other_ratio[i].1;
        let estimate = predicted * *ratio;
        blend_ratio(ratio, measured, predicted);
        estimate
    }

    /// Measured / predicted per mode over the shapes seen so far (for the trace).
    pub fn ratios(&self) -> [f64; 3] {
        self.ratio
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn the_model_setting_ignores_measurements() {
        let s = MatShape { m: 512, n: 3072, k: 3072, ty: crate::dtype::DType::Q4_0, threads: 2, matrix_block: Some((32, 32)) };
        let mut p = Planner::new(synthetic::amx_like(), ModeSetting::Model);
        let first = p.decide(&s);
        // However slow the chosen mode is measured, the model's choice stands, and no
        // occurrence explores another mode.
        for n in 0..8 {
            p.record(&s, first.mode, first.predicted * 100.0);
            let d = p.decide_nth(&s, n);
            assert_eq!((d.mode, d.estimate), (first.mode, first.predicted), "occurrence {n}");
        }
    }
    use super::super::profile::synthetic;
    use super::*;
    use crate::dtype::DType;

    fn prefill() -> MatShape {
        MatShape { m: 512, n: 3072, k: 3072, ty: DType::Q4_0, threads: 2, matrix_block: Some((32, 32)) }
    }

    #[test]
    fn a_wrong_prediction_flips_to_the_better_mode_within_a_few_calls() {
        let mut p = Planner::new(synthetic::amx_like(), ModeSetting::Auto);
        let s = prefill();
        let d = p.decide(&s);
        assert_eq!(d.mode, Mode::Matrix);
        // The machine turns out to run the matrix path 10x slower than modelled.
        let vector_secs = p.entry(&s).pred[0].unwrap().secs;
        let mut modes = Vec::new();
        for _ in 0..6 {
            let d = p.decide(&s);
            modes.push(d.mode);
            let secs = match d.mode {
                Mode::Matrix => d.predicted * 10.0,
                Mode::Coop => vector_secs * 2.0,
                Mode::Vector => vector_secs,
            };
            p.record(&s, d.mode, secs);
        }
        assert_eq!(modes[0], Mode::Matrix);
        let first_vector = modes.iter().position(|&m| m == Mode::Vector).expect("flips to vector");
        assert!(first_vector <= 2, "{modes:?}");
        assert!(modes[first_vector..].iter().all(|&m| m == Mode::Vector), "{modes:?}");
    }

    #[test]
    fn a_mode_the_model_underrates_is_tried_and_then_kept() {
        let mut p = Planner::new(synthetic::amx_like(), ModeSetting::Auto);
        let s = prefill();
        let pred = p.entry(&s).pred;
        let (tm, tc) = (pred[1].unwrap().secs, pred[2].unwrap().secs);
        assert!(tc > tm && tc < tm * EXPLORE_WITHIN, "coop within reach of matrix: {tm} {tc}");
        // In truth coop runs in half the matrix time. One graph with four nodes of the shape:
        // the first takes the predicted best, the next ones try the other modes in reach.
        let truth = |m: Mode| match m {
            Mode::Matrix => tm,
            Mode::Coop => tm * 0.5,
            Mode::Vector => tm * 10.0,
        };
        let first: Vec<Mode> = (0..4).map(|i| p.decide_nth(&s, i).mode).collect();
        assert_eq!(first[0], Mode::Matrix);
        assert!(first[1..].contains(&Mode::Coop), "{first:?}");
        for m in first {
            p.record(&s, m, truth(m));
        }
        for i in 0..4 {
            assert_eq!(p.decide_nth(&s, i).mode, Mode::Coop, "occurrence {i}");
        }
    }

    #[test]
    fn competing_modes_take_turns_until_each_has_two_samples() {
        let mut p = Planner::new(synthetic::amx_like(), ModeSetting::Auto);
        let s = prefill();
        let graph: Vec<Mode> = (0..12).map(|i| p.decide_nth(&s, i).mode).collect();
        let count = |m: Mode, upto: usize| graph[..upto].iter().filter(|&&g| g == m).count();
        // Matrix (predicted best) and coop (within reach) alternate for the first samples.
        assert_eq!(&graph[..2], &[Mode::Matrix, Mode::Coop], "{graph:?}");
        assert!(count(Mode::Coop, 6) >= 2 && count(Mode::Matrix, 6) >= 2, "{graph:?}");
        assert!(graph[6..].iter().all(|&m| m == Mode::Matrix), "{graph:?}");
        // One coop sample far too slow, one right: the mean of the two, not the first, counts.
        let tm = p.entry(&s).pred[1].unwrap().secs;
        for m in &graph[..6] {
            let secs = match m {
                Mode::Coop if p.entry(&s).samples[2] == 0 => tm * 1.6,
                Mode::Coop => tm * 0.2,
                _ => tm,
            };
            p.record(&s, *m, secs);
        }
        assert_eq!(p.decide_nth(&s, 0).mode, Mode::Coop);
        // Enough samples everywhere: no more turns.
        assert!((0..12).all(|i| p.decide_nth(&s, i).mode == Mode::Coop));
    }

    #[test]
    fn a_mode_measured_far_slower_is_not_sampled_again() {
        let mut p = Planner::new(synthetic::amx_like(), ModeSetting::Auto);
        let s = prefill();
        let tm = p.entry(&s).pred[1].unwrap().secs;
        // Matrix measured as predicted; coop's first sample 2.5x slower.
        p.record(&s, Mode::Matrix, tm);
        p.record(&s, Mode::Matrix, tm);
        p.record(&s, Mode::Coop, tm * 2.5);
        assert!((0..12).all(|i| p.decide_nth(&s, i).mode == Mode::Matrix));
        // At 1.8x it still gets its second sample.
        let mut p = Planner::new(synthetic::amx_like(), ModeSetting::Auto);
        p.record(&s, Mode::Matrix, tm);
        p.record(&s, Mode::Matrix, tm);
        p.record(&s, Mode::Coop, tm * 1.8);
        assert!((0..12).any(|i| p.decide_nth(&s, i).mode == Mode::Coop));
    }

    #[test]
    fn a_mode_measured_in_a_bad_moment_is_revisited() {
        let mut p = Planner::new(synthetic::amx_like(), ModeSetting::Auto);
        let s = prefill();
        let tm = p.entry(&s).pred[1].unwrap().secs;
        // Coop's one measurement came out 1.3x matrix (a bad moment); in truth it is 0.8x.
        p.record(&s, Mode::Coop, tm * 1.3);
        let mut coop_runs = 0;
        for _ in 0..5 * REVISIT_EVERY {
            let d = p.decide(&s);
            let secs = if d.mode == Mode::Coop { coop_runs += 1; tm * 0.8 } else { tm };
            p.record(&s, d.mode, secs);
        }
        assert!(coop_runs > REVISIT_EVERY as usize, "coop was revisited and then kept ({coop_runs} runs)");
    }

    #[test]
    fn a_right_prediction_is_kept() {
        let mut p = Planner::new(synthetic::amx_like(), ModeSetting::Auto);
        let s = prefill();
        for _ in 0..5 {
            let d = p.decide(&s);
            assert_eq!(d.mode, Mode::Matrix);
            p.record(&s, d.mode, d.predicted * 1.1);
        }
    }

    #[test]
    fn forced_modes_are_obeyed_where_they_can_run() {
        let s = prefill();
        for m in Mode::ALL {
            let mut p = Planner::new(synthetic::amx_like(), ModeSetting::Forced(m));
            assert_eq!(p.decide(&s).mode, m);
        }
        let mut p = Planner::new(synthetic::no_matrix(), ModeSetting::Forced(Mode::Matrix));
        assert_eq!(p.decide(&MatShape { threads: 4, ..s }).mode, Mode::Vector);
    }

    #[test]
    fn model_errors_on_one_shape_correct_the_estimates_of_others() {
        let mut p = Planner::new(synthetic::amx_like(), ModeSetting::Auto);
        let a = prefill();
        let d = p.decide(&a);
        p.record(&a, d.mode, d.predicted * 2.0);
        let b = MatShape { n: 8192, ..a };
        let db = p.decide(&b);
        assert!(db.estimate > db.predicted * 1.2, "{db:?}");
    }

    #[test]
    fn plans_give_each_shared_unit_one_driver_and_the_other_cores_vector_work() {
        let f = crate::calibrate::read_profile_file(&crate::calibrate::profile_path("m4-pro")).unwrap();
        let units = f.profile.matrix.as_ref().unwrap().units;
        for setting in [ModeSetting::Auto, ModeSetting::Forced(Mode::Matrix), ModeSetting::Forced(Mode::Coop)] {
            let mut p = Planner::new(f.profile.clone(), setting);
            for m in [1, 16, 512] {
                let s = MatShape { m, n: 3072, k: 3072, ty: DType::F16, threads: f.profile.cores, matrix_block: f.matrix_block };
                let d = p.decide(&s);
                match d.mode {
                    Mode::Vector => assert_eq!(d.plan.matrix_threads, 0),
                    Mode::Matrix | Mode::Coop => assert_eq!(d.plan.matrix_threads, units, "{setting:?} M={m}: {d:?}"),
                }
            }
            // Decode goes to the vector units unless a mode is forced; prefill to coop.
            if setting == ModeSetting::Auto {
                let decode = MatShape { m: 1, n: 3072, k: 3072, ty: DType::Q4_0, threads: f.profile.cores, matrix_block: f.matrix_block };
                assert_eq!(p.decide(&decode).mode, Mode::Vector);
                assert_eq!(p.decide(&MatShape { m: 512, ..decode }).mode, Mode::Coop);
            }
        }
    }
}
