//! The vocabulary the planner, the executor and the ops share: how a matrix product runs
//! ([`Mode`], [`Plan`]) and what the planner sees of one ([`MatShape`]). A leaf module, so
//! that none of them depends on another for it.

use crate::dtype::DType;

/// How a matrix product runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mode {
    /// AVX-512 / NEON kernels on every thread.
    Vector,
    /// The matrix unit (AMX tiles, SME), weights staged into its layout.
    Matrix,
    /// Output tiles split between threads driving the matrix unit and threads running the
    /// vector kernels.
    Coop,
}

impl Mode {
    pub const ALL: [Mode; 3] = [Mode::Vector, Mode::Matrix, Mode::Coop];

    pub fn name(self) -> &'static str {
        match self {
            Mode::Vector => "vector",
            Mode::Matrix => "matrix",
            Mode::Coop => "coop",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// SMEPILOT_MODE: let the planner choose, or force one mode (for ablations).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModeSetting {
    /// The planner's choice, corrected by measured node times.
    Auto,
    /// The roofline model's choice alone: nothing measured feeds back, so the same shape
    /// always runs the same way (reproducible runs; emulators, whose times mean nothing).
    Model,
    Forced(Mode),
}

impl ModeSetting {
    pub fn parse(v: &str) -> Option<ModeSetting> {
        Some(match v {
            "" | "auto" => ModeSetting::Auto,
            "model" => ModeSetting::Model,
            "vector" => ModeSetting::Forced(Mode::Vector),
            "matrix" => ModeSetting::Forced(Mode::Matrix),
            "coop" => ModeSetting::Forced(Mode::Coop),
            _ => return None,
        })
    }
}

/// What one node runs with: the mode, and for cooperative execution how many of the
/// threads drive the matrix unit (the others run vector kernels).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Plan {
    /// None: no planner (tests, benchmarks): the op's static rule decides.
    pub mode: Option<Mode>,
    pub matrix_threads: usize,
    /// MUL_MAT_ID: the fewest rows an expert needs to run on the matrix unit (the
    /// planner's crossover for the node's expert shape); 0: every expert when the mode is
    /// matrix or coop.
    pub expert_min_rows: usize,
}

impl Plan {
    pub const STATIC: Plan = Plan { mode: None, matrix_threads: 0, expert_min_rows: 0 };

    pub fn forced(mode: Mode, matrix_threads: usize) -> Plan {
        Plan { mode: Some(mode), matrix_threads, expert_min_rows: 0 }
    }
}

/// A 2-D matrix product as the planner sees it: `m` activation rows, `n` weight rows of
/// `k` elements of `ty`, on `threads` threads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MatShape {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub ty: DType,
    pub threads: usize,
    /// Where the matrix path can run this product (type, shape, a usable unit): the output
    /// block (activation rows, weight rows) one call of its kernel computes.
    pub matrix_block: Option<(usize, usize)>,
}

impl MatShape {
    pub fn elems(&self) -> f64 {
        (self.n * self.k) as f64
    }

    pub fn weight_bytes(&self) -> f64 {
        (self.n * self.ty.row_bytes(self.k)) as f64
    }

    pub fn flops(&self) -> f64 {
        2.0 * (self.m * self.n * self.k) as f64
    }
}
