//! SMEPILOT_TRACE=1: one line per executed op (op, shape, types, mode, the roofline
//! model's prediction, the planner's estimate and the measured µs) and a summary per graph
//! (time per op class, share of time per engine, how much of it each predicted within 30%).
//!
//! The estimate is what the planner expected before the op ran: the model's prediction
//! corrected by earlier measurements (of the shape in that mode once it has run, else the
//! mode's or op class's measured / predicted ratio so far).

use std::fmt::Write;

use crate::planner::model;
use crate::plan::MatShape;
use crate::planner::profile::MachineProfile;
use crate::plan::Mode;
use crate::ops::{Node, Op};

/// What the executor knows of one node after running it.
pub struct OpRecord<'a> {
    pub node: &'a Node,
    pub mode: Mode,
    pub predicted: f64,
    pub estimate: f64,
    pub measured: f64,
    /// Threads that drove the matrix unit (matrix and coop modes; 0: every thread).
    pub drivers: usize,
}

/// The model's prediction for a node that is not a planned matrix product: bytes moved
/// against DRAM, and its work on the vector units (flash attention at its calibrated
/// cost, other ops as flops at the vector peak).
pub fn predict_node(p: &MachineProfile, node: &Node, threads: usize) -> f64 {
    let t = threads.max(1) as f64;
    let bytes_of = |t: &crate::tensor::TensorRef| model::tensor_bytes(t.ty, t.nelements());
    let bytes: f64 = match node.op {
        // Only the rows fetched or stored move, not the whole table or cache.
        Op::GetRows => 2.0 * bytes_of(&node.dst),
        Op::SetRows => 2.0 * bytes_of(node.src(0)),
        // Only the experts some (slot, token) picks are read: with picks spread evenly,
        // n (1 - (1 - 1/n)^picks) of the n experts.
        Op::MulMatId => {
            let (w, ids) = (node.src(0), node.src(2));
            let (n_exp, picks) = (w.ne[2].max(1) as f64, (ids.ne[0] * ids.ne[1]) as f64);
            let read = n_exp * (1.0 - (1.0 - 1.0 / n_exp).powf(picks));
            bytes_of(w) * read / n_exp + bytes_of(node.src(1)) + bytes_of(&node.dst)
        }
        _ => bytes_of(&node.dst) + node.src.iter().flatten().map(bytes_of).sum::<f64>(),
    };
    let at_peak = |flops: f64| flops / (p.vec_fp32_peak * t);
    let compute_secs = match node.op {
        Op::FlashAttn { .. } => {
            let (q, k, v) = (node.src(0), node.src(1), node.src(2));
            let (n_q, n_kv) = (q.ne[1], k.ne[1]);
            let units = (n_q * q.ne[2] * q.ne[3] * n_kv * (k.ne[0] + v.ne[0])) as f64;
            let ns = if crate::ops::attention::takes_blocked_path(node, crate::kernels::registry::active()) {
                // The blocked path skips key blocks the causal mask hides: query i of a
                // batch of n_q sees the keys up to its own, about n_kv - n_q / 2 on average.
                let seen = if node.src[3].is_some() && n_q <= n_kv { (n_kv as f64 - n_q as f64 / 2.0) / n_kv as f64 } else { 1.0 };
                units * seen * p.attn_blocked_ns
            } else {
                units * p.attn_row_ns
            };
            ns * 1e-9 / t
        }
        Op::MulMat => {
            let (w, x) = (node.src(0), node.src(1));
            at_peak(2.0 * (w.ne[0] * w.ne[1]) as f64 * x.nrows() as f64)
        }
        // One weight matrix per (slot, token).
        Op::MulMatId => {
            let (w, ids) = (node.src(0), node.src(2));
            at_peak(2.0 * (w.ne[0] * w.ne[1]) as f64 * (ids.ne[0] * ids.ne[1]) as f64)
        }
        _ => at_peak(4.0 * node.dst.nelements() as f64),
    };
    model::predict_other(p, bytes, compute_secs, threads)
}

pub fn shape_text(node: &Node, shape: Option<&MatShape>) -> String {
    if let Some(s) = shape {
        return format!("m={} n={} k={} {}", s.m, s.n, s.k, s.ty.name());
    }
    let mut out = format!("{:?} {}", node.dst.ne, node.dst.ty.name());
    for s in node.src.iter().flatten() {
        let _ = write!(out, " <- {:?} {}", s.ne, s.ty.name());
    }
    out
}

/// MUL_MAT_ID's experts as the node ran them (its `report`: unit experts in the high 32
/// bits, vector experts in the low), and the fewest rows for which the plan put an expert
/// on the unit (`all`: forced; `none`: vector only; `static`: no planner).
pub fn experts_note(plan: &crate::plan::Plan, report: u64) -> String {
    use crate::plan::Mode;
    let from = match (plan.mode, plan.expert_min_rows) {
        (Some(Mode::Vector), _) => "none".to_string(),
        (Some(_), 0) => "all".to_string(),
        (Some(_), r) => r.to_string(),
        (None, _) => "static".to_string(),
    };
    format!(" experts unit={} vector={} unit_min_rows={from}", report >> 32, report & 0xFFFF_FFFF)
}

/// A node computed within the pass of an earlier node (`ops::fuse`): its time is in that
/// node's line.
pub fn in_pass_line(node: &Node) -> String {
    format!("smepilot trace: {:<14} {:<44} in the gate+up+swiglu pass above", node.op.name(), shape_text(node, None))
}

pub fn op_line(r: &OpRecord, shape: Option<&MatShape>) -> String {
    let mut line = format!(
        "smepilot trace: {:<14} {:<44} mode={:<6} pred={:>9.1}us est={:>9.1}us meas={:>9.1}us",
        r.node.op.name(),
        shape_text(r.node, shape),
        r.mode.name(),
        r.predicted * 1e6,
        r.estimate * 1e6,
        r.measured * 1e6
    );
    if r.mode != Mode::Vector {
        let _ = write!(line, " drivers={}", if r.drivers == 0 { "all".to_string() } else { r.drivers.to_string() });
    }
    line
}

/// Per-graph totals: time per op class, time per engine, and how much of the time went to
/// ops whose prediction was within 30% of the measurement.
#[derive(Default)]
pub struct GraphSummary {
    classes: Vec<(&'static str, f64, f64)>,
    engines: [f64; 3],
    total: f64,
    within_30: f64,
    estimate_within_30: f64,
}

/// Whether `predicted` is within 30% of `measured`.
pub fn within_30(predicted: f64, measured: f64) -> bool {
    predicted > 0.0 && (measured / predicted - 1.0).abs() <= 0.3
}

impl GraphSummary {
    pub fn add(&mut self, r: &OpRecord) {
        let name = r.node.op.name();
        match self.classes.iter_mut().find(|c| c.0 == name) {
            Some(c) => {
                c.1 += r.measured;
                c.2 += r.predicted;
            }
            None => self.classes.push((name, r.measured, r.predicted)),
        }
        self.engines[r.mode.index()] += r.measured;
        self.total += r.measured;
        if within_30(r.predicted, r.measured) {
            self.within_30 += r.measured;
        }
        if within_30(r.estimate, r.measured) {
            self.estimate_within_30 += r.measured;
        }
    }

    pub fn line(&self, nodes: usize) -> String {
        let mut out = format!("smepilot trace: graph of {nodes} ops, {:.1} us:", self.total * 1e6);
        let mut classes = self.classes.clone();
        classes.sort_by(|a, b| b.1.total_cmp(&a.1));
        for (name, meas, pred) in classes {
            let _ = write!(out, " {name} {:.1}% (pred {:.0} / meas {:.0} us);", 100.0 * meas / self.total, pred * 1e6, meas * 1e6);
        }
        let share = |i: usize| 100.0 * self.engines[i] / self.total.max(1e-12);
        let _ = write!(
            out,
            " engines: vector {:.1}%, matrix {:.1}%, coop {:.1}%; within 30% for {:.1}% of the time as estimated, {:.1}% as the model alone predicted",
            share(0),
            share(1),
            share(2),
            100.0 * self.estimate_within_30 / self.total.max(1e-12),
            100.0 * self.within_30 / self.total.max(1e-12)
        );
        out
    }
}
