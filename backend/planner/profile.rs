//! A machine profile: the engines the planner can use and what each costs, measured by
//! [`crate::calibrate`] or written by hand (the synthetic profiles of the tests).
//!
//! One description serves AMX (one matrix unit per core) and SME (one unit shared by a
//! cluster of cores, as on Apple M4): `MatrixUnits::cores_per_unit` says which.

use crate::dtype::DType;

/// The matrix units of the machine.
#[derive(Clone, Debug, PartialEq)]
pub struct MatrixUnits {
    /// How many units, and how many cores share each (1 for AMX).
    pub units: usize,
    pub cores_per_unit: usize,
    /// Product-only peaks of one unit, ops/s (2 per multiply-add).
    pub bf16_peak: f64,
    pub int8_peak: f64,
    /// What SMEPilot's bf16 tile kernel reaches on one unit with cache-resident operands
    /// (tile loads included), ops/s.
    pub bf16_kernel: f64,
    /// ns per activation element to convert activations into B tiles, once per call.
    pub act_ns: f64,
    /// The int8 tile kernel (per-block scaled, as the quantized types run it): its rate,
    /// ops/s, and ns per activation element to quantize activations into its B tiles.
    /// Zero rate: no int8 tile engine, those types run on the bf16 kernel.
    pub int8_kernel: f64,
    pub act_i8_ns: f64,
}

impl MatrixUnits {
    /// Rate of the tile kernel `c`'s type runs on, ops/s, and its activation cost, ns per
    /// element.
    pub fn kernel_for(&self, c: &KernelCost) -> (f64, f64) {
        if c.tile_int8 && self.int8_kernel > 0.0 {
            (self.int8_kernel, self.act_i8_ns)
        } else {
            (self.bf16_kernel, self.act_ns)
        }
    }
}

/// Costs of SMEPilot's kernels for one weight type, per weight element, one core, with
/// cache-resident weights (DRAM is accounted for separately).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct KernelCost {
    pub ty: DType,
    /// Vector kernels: ns per weight element for one activation row, and for a pass of
    /// four activation rows (larger M runs ceil(M / 4) passes over each weight group).
    pub vec_m1_ns: f64,
    pub vec_m4_ns: f64,
    /// Matrix path: ns per weight element to stage weights into tiles (dequantize to bf16,
    /// or split into int8 tiles, in tile order), once per call.
    pub stage_ns: f64,
    /// Whether the type's tile products run on the int8 kernel (else the bf16 one).
    pub tile_int8: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub struct MachineProfile {
    pub cpu: String,
    pub cores: usize,
    pub matrix: Option<MatrixUnits>,
    /// Vector peaks per core, ops/s: fp32 FMA, int8 dot (VNNI / SDOT).
    pub vec_fp32_peak: f64,
    pub vec_int8_peak: f64,
    /// DRAM read bandwidth, bytes/s, with 1, 2, ... `cores` threads reading.
    pub dram_read: Vec<f64>,
    /// Bytes/s the vector threads still read while the other cores' matrix units stream
    /// from DRAM (the shared-bandwidth contention the paper describes); total over them.
    pub dram_beside_matrix: f64,
    pub kernels: Vec<KernelCost>,
    /// Seconds every node costs beyond its work with all cores (dispatch and the barrier).
    pub node_overhead: f64,
    /// Flash attention (F16 K/V, cache-resident), ns per query row x key x (dk + dv)
    /// element on one core: the per-row path (decode) and the blocked path (prefill).
    pub attn_row_ns: f64,
    pub attn_blocked_ns: f64,
    /// Fraction of the summed matrix and vector rates that the two reach running at once
    /// (caches, bandwidth and power are shared): the paper's mixed peak over the sum of the
    /// SME and CPU peaks. 1 where not measured.
    pub mixed_efficiency: f64,
}

impl MachineProfile {
    /// DRAM read bandwidth with `threads` threads reading.
    pub fn bandwidth(&self, threads: usize) -> f64 {
        let i = threads.clamp(1, self.dram_read.len().max(1)) - 1;
        self.dram_read.get(i).copied().unwrap_or(10e9)
    }

    pub fn kernel(&self, ty: DType) -> Option<&KernelCost> {
        self.kernels.iter().find(|c| c.ty == ty)
    }

    /// Threads that can drive a matrix unit at once out of `threads`: one per unit, so a
    /// unit shared by a cluster's cores never has a second driver queueing on it.
    pub fn matrix_drivers(&self, threads: usize) -> usize {
        self.matrix.as_ref().map_or(0, |m| threads.min(m.units))
    }

    /// The profile restricted to at most `units` matrix units, the cores spread over
    /// them (SMEPILOT_MATRIX_UNITS): each unit then counts as shared by its cores.
    pub fn with_matrix_units(mut self, units: usize) -> MachineProfile {
        if let Some(m) = self.matrix.as_mut() {
            m.units = m.units.min(units.max(1));
            m.cores_per_unit = self.cores.div_ceil(m.units);
        }
        self
    }
}

/// Synthetic profiles for the planner's tests (and for reasoning about other machines).
pub mod synthetic {
    use super::*;

    fn kernels(stage_ns: f64) -> Vec<KernelCost> {
        [DType::Q4_0, DType::Q8_0, DType::Q4_K, DType::Q6_K, DType::BF16, DType::F16, DType::Q4_1, DType::Q5_K, DType::F32]
            .iter()
            .map(|&ty| KernelCost { ty, vec_m1_ns: 0.06, vec_m4_ns: 0.12, stage_ns, tile_int8: matches!(ty, DType::Q4_0 | DType::Q8_0 | DType::Q4_1) })
            .collect()
    }

    /// Like this Xeon: 2 cores, one AMX unit each, about 25 GB/s from DRAM.
    pub fn amx_like() -> MachineProfile {
        MachineProfile {
            cpu: "synthetic AMX, 2 cores".into(),
            cores: 2,
            matrix: Some(MatrixUnits { units: 2, cores_per_unit: 1, bf16_peak: 2.2e12, int8_peak: 4.4e12, bf16_kernel: 0.6e12, act_ns: 0.5, int8_kernel: 0.8e12, act_i8_ns: 0.6 }),
            vec_fp32_peak: 270e9,
            vec_int8_peak: 240e9,
            dram_read: vec![16e9, 25e9],
            dram_beside_matrix: 9e9,
            kernels: kernels(0.25),
            node_overhead: 2e-6,
            attn_row_ns: 0.5,
            attn_blocked_ns: 0.1,
            mixed_efficiency: 1.0,
        }
    }

    /// Like an Apple M4 performance cluster: 4 cores sharing one SME unit.
    pub fn sme_shared() -> MachineProfile {
        MachineProfile {
            cpu: "synthetic SME, 4 cores sharing one unit".into(),
            cores: 4,
            matrix: Some(MatrixUnits { units: 1, cores_per_unit: 4, bf16_peak: 2.0e12, int8_peak: 4.0e12, bf16_kernel: 1.2e12, act_ns: 0.5, int8_kernel: 2.0e12, act_i8_ns: 0.6 }),
            vec_fp32_peak: 100e9,
            vec_int8_peak: 200e9,
            dram_read: vec![60e9, 90e9, 110e9, 120e9],
            dram_beside_matrix: 60e9,
            kernels: kernels(0.15),
            node_overhead: 2e-6,
            attn_row_ns: 0.5,
            attn_blocked_ns: 0.1,
            mixed_efficiency: 1.0,
        }
    }

    /// A CPU with vector units only.
    pub fn no_matrix() -> MachineProfile {
        MachineProfile {
            cpu: "synthetic, no matrix unit, 4 cores".into(),
            cores: 4,
            matrix: None,
            vec_fp32_peak: 270e9,
            vec_int8_peak: 240e9,
            dram_read: vec![16e9, 25e9, 30e9, 32e9],
            dram_beside_matrix: 0.0,
            kernels: kernels(0.25),
            node_overhead: 2e-6,
            attn_row_ns: 0.5,
            attn_blocked_ns: 0.1,
            mixed_efficiency: 1.0,
        }
    }
}
