//! The roofline planner: per matrix-product shape, predicts the time of vector-only,
//! matrix-only and cooperative execution on this machine's measured profile, picks the
//! fastest, and corrects its predictions with measured times as the graph runs.
//!
//! * [`profile`]: what the machine is (engines, peaks, bandwidths, kernel costs).
//!//! * [`model`]: the roofline prediction per (shape, mode).
//! * [`adapt`]: plans cached per shape, corrected online by measured times.
//!
pub mod adapt;
pub mod chart;
pub mod model;
pub mod profile;

pub use crate::plan::{Mode, ModeSetting, Plan};
