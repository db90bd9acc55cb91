//! The roofline planner: per matrix-product shape, predicts the time of vector-only,
//! matrix-only and cooperative execution on this machine's measured profile, picks the
//! fastest, and corrects its predictions with measured times as the graph runs.
//!
//! * [`profile`]: what the machine is (engines, peaks, bandwidths, kernel costs).
//! * [`calibrate`]: measures a profile and caches it under `~/.cache/smepilot/`.
//! * [`model`]: the roofline prediction per (shape, mode).
//! * [`adapt`]: plans cached per shape, corrected online by measured times.
//! * [`trace`]: `SMEPILOT_TRACE=1` lines per op and per graph.

pub mod adapt;
pub mod calibrate;
pub mod chart;
pub mod model;
pub mod profile;
pub mod trace;

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
    Auto,
    Forced(Mode),
}

impl ModeSetting {
    pub fn parse(v: &str) -> Option<ModeSetting> {
        Some(match v {
            "" | "auto" => ModeSetting::Auto,
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
}

impl Plan {
    pub const STATIC: Plan = Plan { mode: None, matrix_threads: 0 };

    pub fn forced(mode: Mode, matrix_threads: usize) -> Plan {
        Plan { mode: Some(mode), matrix_threads }
    }
}
