//! Calibration: measures this machine's profile in a few seconds and caches it under
//! `~/.cache/smepilot/`, keyed by CPU model, core count and kernel revision.
//!
//! Measured: DRAM read bandwidth for 1 .. N threads; what the vector threads still read
//! while a matrix unit streams; the matrix unit's product-only peaks; the vector units'
//! fp32 and int8 peaks; and, per weight type, what SMEPilot's own kernels cost on one core
//! with cache-resident weights (vector path at 1 and 4 activation rows, matrix path at 32
//! and 128 rows: staging per weight element and the tile kernel's rate).

use std::path::PathBuf;
use std::time::Instant;

use crate::planner::profile::{KernelCost, MachineProfile, MatrixUnits};
use crate::plan::{Mode, Plan};
use crate::dtype::DType;
use crate::exec::Executor;
use crate::kernels::packed::{self, Layout, PackedRef};
use crate::kernels::quant::TypeKernels;
use crate::kernels::registry;
#[cfg(target_arch = "x86_64")]
use crate::kernels::registry::Tier;
use crate::ops::{Node, Op};
use crate::kernels::roofs;
use crate::tensor::TensorRef;

/// Bump when a kernel changes what it costs: older cached profiles are then ignored.
pub const KERNEL_REV: u32 = 14;

/// Weight types whose kernel costs are measured.
pub const TYPES: [DType; 9] = [DType::Q4_0, DType::Q8_0, DType::Q4_K, DType::Q6_K, DType::BF16, DType::F16, DType::Q4_1, DType::Q5_K, DType::F32];

/// The CPU's model name (from /proc/cpuinfo), for the cache key and the report.
pub fn cpu_model() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |name: &str| {
        info.lines()
            .find(|l| l.split(':').next().is_some_and(|k| k.trim() == name))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
    };
    field("model name")
        .or_else(|| Some(format!("arm implementer {} part {}", field("CPU implementer")?, field("CPU part")?)))
        .unwrap_or_else(|| std::env::consts::ARCH.to_string())
}

fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf29ce484222325u64, |h, b| (h ^ b as u64).wrapping_mul(0x100000001b3))
}

/// Where this machine's profile is cached: `$XDG_CACHE_HOME` or `~/.cache`, then
/// `smepilot/profile-<hash of CPU model, cores, kernel revision>.txt`.
pub fn cache_path() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    let cores = crate::platform::os::allowed_cpus().len();
    #[cfg(target_arch = "x86_64")]
    let matrix = crate::kernels::amx::available();
    #[cfg(not(target_arch = "x86_64"))]
    let matrix = false;
    // The matrix unit's availability and the tile engine of the int8 types are part of the
    // key: a profile measured with SMEPILOT_DISABLE_AMX=1 must not hide the unit from later
    // runs, nor the bf16 engine's staging costs stand for the int8 engine's.
    let int8 = crate::config::get().map_or(true, |c| c.amx_int8);
    let key = format!("{}|{cores}|{KERNEL_REV}|{}|{matrix}|{int8}", cpu_model(), env!("CARGO_PKG_VERSION"));
    Some(base.join("smepilot").join(format!("profile-{:016x}.txt", fnv(&key))))
}

/// The cached profile, or a new calibration (saved for next time). `say` reports which,
/// so the first use on a machine says that it calibrated.
pub fn load_or_measure(say: impl Fn(&str)) -> MachineProfile {
    let path = cache_path();
    if let Some(p) = path.as_ref().and_then(|p| std::fs::read_to_string(p).ok()).and_then(|t| parse(&t)) {
        return p;
    }
    let t0 = Instant::now();
    let p = measure();
    let secs = t0.elapsed().as_secs_f64();
    let saved = path.as_ref().and_then(|path| save(path, &p).ok().map(|_| path.display().to_string()));
    say(&format!(
        "calibrated this machine in {secs:.1} s ({}); `smepilot calibrate` prints the figures",
        saved.map_or("not cached: no writable ~/.cache".to_string(), |p| format!("cached in {p}"))
    ));
    p
}

/// Writes the profile to `path` through a temporary file and a rename, so a process
/// reading the cache never sees half a file.
pub fn save(path: &std::path::Path, p: &MachineProfile) -> std::io::Result<()> {
    std::fs::create_dir_all(path.parent().unwrap_or(std::path::Path::new(".")))?;
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, to_text(p))?;
    std::fs::rename(&tmp, path)
}

/// The process's profile: the file SMEPILOT_PROFILE names (read and checked with the
/// settings; a published one is logged as such), else loaded from the cache or measured on
/// first use (logged).
pub fn shared_profile() -> &'static MachineProfile {
    static PROFILE: std::sync::OnceLock<MachineProfile> = std::sync::OnceLock::new();
    PROFILE.get_or_init(|| match crate::config::get().ok().and_then(|c| c.profile.as_ref()) {
        Some(file) => {
            crate::smelog!(Warn, "machine profile: {} ({}), not calibrated", file.describe(), file.profile.cpu);
            with_settings(file.profile.clone())
        }
        None => with_settings(load_or_measure(|msg| crate::smelog!(Warn, "{msg}"))),
    })
}

/// The profile as the settings restrict it (SMEPILOT_MATRIX_UNITS; on Arm,
/// SMEPILOT_DISABLE_SME drops the matrix unit); the cache keeps the machine's own figures.
pub fn with_settings(mut p: MachineProfile) -> MachineProfile {
    let Ok(cfg) = crate::config::get() else { return p };
    if cfg!(target_arch = "aarch64") && cfg.disable_sme {
        p.matrix = None;
    }
    match cfg.matrix_units {
        Some(units) => p.with_matrix_units(units),
        None => p,
    }
}

/// Measures the profile now.
pub fn measure() -> MachineProfile {
    let cores = crate::platform::os::allowed_cpus().len().max(1);
    let dram_read = dram_by_threads(cores);
    let (kernels, fits) = kernel_costs();
    let (matrix, dram_beside_matrix) = matrix_units(cores, fits);
    let (vec_fp32_peak, vec_int8_peak) = vector_peaks();
    MachineProfile {
        cpu: cpu_model(),
        cores,
        matrix,
        vec_fp32_peak,
        vec_int8_peak,
        dram_read,
        dram_beside_matrix,
        kernels,
        node_overhead: node_overhead(cores),
        attn_row_ns: attention_ns(1, 1024),
        attn_blocked_ns: attention_ns(64, 512),
        mixed_efficiency: 1.0,
    }
}

/// ns per query row x key x (dk + dv) of flash attention on one core: `n_q` query rows of
/// 8 heads against `n_kv` keys of 2 KV heads, head size 128, F16 K/V, no key masked.
fn attention_ns(n_q: usize, n_kv: usize) -> f64 {
    let (d, heads, kv_heads) = (128usize, 8usize, 2usize);
    let mut q = vec![0f32; d * n_q * heads];
    q.iter_mut().enumerate().for_each(|(i, v)| *v = ((i % 7) as f32 - 3.0) * 0.1);
    let f16 = |x: f32| half::f16::from_f32(x).to_bits();
    let mut k: Vec<u16> = (0..d * n_kv * kv_heads).map(|i| f16(((i % 5) as f32 - 2.0) * 0.1)).collect();
    let mut v: Vec<u16> = (0..d * n_kv * kv_heads).map(|i| f16(((i % 3) as f32 - 1.0) * 0.1)).collect();
    let mut mask = vec![0u16; n_kv * n_q];
    let mut out = vec![0f32; d * heads * n_q];
    let node = Node {
        op: Op::FlashAttn { scale: 1.0 / (d as f32).sqrt(), max_bias: 0.0, softcap: 0.0 },
        dst: tensor(DType::F32, [d, heads, n_q, 1], out.as_mut_ptr() as *mut u8),
        src: [
            Some(tensor(DType::F32, [d, n_q, heads, 1], q.as_mut_ptr() as *mut u8)),
            Some(tensor(DType::F16, [d, n_kv, kv_heads, 1], k.as_mut_ptr() as *mut u8)),
            Some(tensor(DType::F16, [d, n_kv, kv_heads, 1], v.as_mut_ptr() as *mut u8)),
            Some(tensor(DType::F16, [n_kv, n_q, 1, 1], mask.as_mut_ptr() as *mut u8)),
            None,
        ],
    };
    debug_assert!(crate::ops::supports(&node).is_ok());
    let mut exec = Executor::new(1);
    let secs = time_plan(&mut exec, &node, Plan::STATIC, 5);
    secs * 1e9 / (n_q * heads * n_kv * 2 * d) as f64
}

/// Seconds per node of a graph of tiny nodes on all cores: what dispatch and the barrier
/// after every node cost.
fn node_overhead(cores: usize) -> f64 {
    let mut buf = vec![1f32; 16];
    let t = tensor(DType::F32, [16, 1, 1, 1], buf.as_mut_ptr() as *mut u8);
    let node = Node { op: Op::Scale { scale: 1.0, bias: 0.0 }, dst: t, src: [Some(t), None, None, None, None] };
    let nodes = vec![node; 500];
    let plans = vec![Plan::STATIC; nodes.len()];
    let mut exec = Executor::new(cores);
    exec.compute_with_plans(&nodes, &plans).expect("calibration graph failed");
    (0..5)
        .map(|_| {
            let t0 = Instant::now();
            exec.compute_with_plans(&nodes, &plans).expect("calibration graph failed");
            t0.elapsed().as_secs_f64() / nodes.len() as f64
        })
        .fold(f64::INFINITY, f64::min)
}

/// DRAM read bandwidth for 1 ..= cores threads: measured at 1, 2, 4, ... and `cores`
/// (at most 1 GiB of buffers in all), linear in between.
fn dram_by_threads(cores: usize) -> Vec<f64> {
    let mut at: Vec<usize> = std::iter::successors(Some(1usize), |t| Some(t * 2)).take_while(|&t| t < cores).collect();
    at.push(cores);
    let measured: Vec<(usize, f64)> = at.iter().map(|&t| (t, roofs::dram_read_bw_sized(t, (64 << 20).min((1 << 30) / t), 6))).collect();
    (1..=cores)
        .map(|t| {
            let hi = measured.iter().position(|&(m, _)| m >= t).unwrap_or(measured.len() - 1);
            let (t1, b1) = measured[hi];
            if hi == 0 || t1 == t {
                return b1;
            }
            let (t0, b0) = measured[hi - 1];
            b0 + (b1 - b0) * (t - t0) as f64 / (t1 - t0) as f64
        })
        .collect()
}

#[cfg(target_arch = "x86_64")]
fn matrix_units(cores: usize, fits: TileFits) -> (Option<MatrixUnits>, f64) {
    let per_unit = registry::MatrixUnit::Amx.cores_per_unit();
    let (int8_kernel, act_i8_ns) = fits.int8.map_or((0.0, 0.0), |f| (1.0 / f.flop, f.act * 1e9));
    match (roofs::amx_rate(1, true, 64), roofs::amx_rate(1, false, 64), fits.bf16) {
        (Some(bf16_peak), Some(int8_peak), Some(f)) => (
            Some(MatrixUnits { units: cores / per_unit, cores_per_unit: per_unit, bf16_peak, int8_peak, bf16_kernel: 1.0 / f.flop, act_ns: f.act * 1e9, int8_kernel, act_i8_ns }),
            roofs::dram_beside_tiles(cores, (64 << 20).min((1 << 30) / cores)).unwrap_or(0.0),
        ),
        _ => (None, 0.0),
    }
}

/// Arm: the SME units' figures come from [`sme_unit_rates`] (SMEPILOT_PROFILE replaces
/// them with a file's).
#[cfg(target_arch = "aarch64")]
fn matrix_units(cores: usize, fits: TileFits) -> (Option<MatrixUnits>, f64) {
    (sme_unit_rates(cores, fits), 0.0)
}

/// The SME units from the tile kernels' fits ([`kernel_costs`] times the process's SME
/// engine in matrix mode) and the units the registry found. There is no product-only probe
/// for SME: the measured kernel rate stands for the peak as well, which only makes the
/// planner's matrix estimates conservative.
#[cfg(target_arch = "aarch64")]
fn sme_unit_rates(cores: usize, fits: TileFits) -> Option<MatrixUnits> {
    let Some(registry::MatrixUnit::Sme(unit)) = registry::active().matrix else { return None };
    let f = fits.bf16?;
    let kernel = 1.0 / f.flop;
    let (int8_kernel, act_i8_ns) = fits.int8.map_or((0.0, 0.0), |f| (1.0 / f.flop, f.act * 1e9));
    let per_unit = unit.cores_per_unit.clamp(1, cores.max(1));
    Some(MatrixUnits {
        units: cores.div_ceil(per_unit),
        cores_per_unit: per_unit,
        bf16_peak: kernel,
        int8_peak: int8_kernel.max(kernel),
        bf16_kernel: kernel,
        act_ns: f.act * 1e9,
        int8_kernel,
        act_i8_ns,
    })
}

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
fn matrix_units(_: usize, _: TileFits) -> (Option<MatrixUnits>, f64) {
    (None, 0.0)
}

/// The process's table entry of `ty`: calibration measures the kernels the process runs.
fn kernels(ty: DType) -> Option<&'static TypeKernels> {
    registry::active().kernels(ty)
}

/// fp32 FMA and int8 dot peaks of one core on the process's tier, ops/s.
fn vector_peaks() -> (f64, f64) {
    let tier = registry::active().tier;
    #[cfg(target_arch = "x86_64")]
    if tier == Tier::Avx512 {
        const ITERS: usize = 2_000_000;
        let time = |f: &dyn Fn()| {
            let t0 = Instant::now();
            f();
            t0.elapsed().as_secs_f64()
        };
        // SAFETY: the AVX-512 tier runs only where AVX-512 F and VNNI were detected; the
        // loops touch registers only.
        let fma = time(&|| unsafe { crate::kernels::peak::fma_burst(ITERS) });
        let dot = time(&|| unsafe { crate::kernels::peak::vnni_burst(ITERS) });
        // 8 instructions per iteration, 16 lanes: FMA 2 flops per lane, VNNI 4 x 2 ops per lane.
        return ((ITERS * 8 * 16 * 2) as f64 / fma, (ITERS * 8 * 16 * 8) as f64 / dot);
    }
    #[cfg(target_arch = "x86_64")]
    if tier == Tier::Avx2 {
        const ITERS: usize = 2_000_000;
        let time = |f: &dyn Fn()| {
            let t0 = Instant::now();
            f();
            t0.elapsed().as_secs_f64()
        };
        // SAFETY: the AVX2 tier runs only where AVX2 and FMA were detected; the loops
        // touch registers only.
        let fma = time(&|| unsafe { crate::kernels::peak::fma256_burst(ITERS) });
        let dot = time(&|| unsafe { crate::kernels::peak::maddubs256_burst(ITERS) });
        // 8 instructions per iteration: FMA 8 lanes x 2 flops; vpmaddubsw 32 products, 2 ops each.
        return ((ITERS * 8 * 8 * 2) as f64 / fma, (ITERS * 8 * 32 * 2) as f64 / dot);
    }
    let _ = tier;
    // Portable estimate: a plain multiply-add loop the compiler vectorizes for the baseline.
    let mut acc = [1f32; 64];
    let n = 4_000_000;
    let t0 = Instant::now();
    for i in 0..n {
        let x = std::hint::black_box(1.0 + i as f32 * 1e-9);
        for a in acc.iter_mut() {
            // Multiply then add: `mul_add` is a libm call where the baseline lacks FMA.
            *a = *a * x + 1e-7;
        }
    }
    std::hint::black_box(acc);
    let fp32 = (n * 64 * 2) as f64 / t0.elapsed().as_secs_f64();
    (fp32, fp32 * 2.0)
}

/// Random valid weight rows of `ty` (quantized from random f32, or K-quant blocks with
/// sane scales where the table has no quantizer); `seed` picks the stream. Shared with the
/// matmul benchmarks.
pub fn random_weights(ty: DType, n: usize, k: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9e3779b97f4a7c15) | 1;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let rb = ty.row_bytes(k);
    let mut out = vec![0u8; n * rb];
    if let Some(q) = kernels(ty).and_then(|t| t.from_f32) {
        let mut row = vec![0f32; k];
        for r in 0..n {
            row.iter_mut().for_each(|v| *v = (next() % 2001) as f32 / 1000.0 - 1.0);
            q(&row, &mut out[r * rb..(r + 1) * rb]);
        }
        return out;
    }
    out.iter_mut().for_each(|b| *b = next() as u8);
    let scale = half::f16::from_f32(0.01).to_bits().to_le_bytes();
    for blk in out.chunks_mut(ty.block_bytes()) {
        match ty {
            DType::Q4_K | DType::Q5_K => {
                blk[0..2].copy_from_slice(&scale);
                blk[2..4].copy_from_slice(&scale);
            }
            DType::Q6_K => blk[208..210].copy_from_slice(&scale),
            _ => {}
        }
    }
    out
}

/// A contiguous tensor of `ty` and shape `ne` at `data`, which must hold the whole shape
/// (`row_bytes * ne[1] * ne[2] * ne[3]` bytes, its `len`) while nodes using it run.
pub fn tensor(ty: DType, ne: [usize; 4], data: *mut u8) -> TensorRef {
    let row = ty.row_bytes(ne[0]);
    TensorRef { ty, ne, nb: [ty.block_bytes(), row, row * ne[1], row * ne[1] * ne[2]], data, len: row * ne[1] * ne[2] * ne[3], packed: None }
}

/// Best seconds of `reps` runs of `node` with `plan` (after one warm-up run).
fn time_plan(exec: &mut Executor, node: &Node, plan: Plan, reps: usize) -> f64 {
    let plan = [plan];
    exec.compute_with_plans(std::slice::from_ref(node), &plan).expect("calibration graph failed");
    (0..reps)
        .map(|_| {
            let t0 = Instant::now();
            exec.compute_with_plans(std::slice::from_ref(node), &plan).expect("calibration graph failed");
            t0.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}

/// Best seconds of `reps` runs of `node` in `mode` on one thread.
fn time_mode(exec: &mut Executor, node: &Node, mode: Mode, reps: usize) -> f64 {
    time_plan(exec, node, Plan::forced(mode, 1), reps)
}

/// A tile kernel's fitted costs: seconds per activation element (converting activations
/// into its B tiles) and seconds per flop of its products.
#[derive(Clone, Copy, Debug)]
struct TileFit {
    act: f64,
    flop: f64,
}

/// The fits of the two tile kernels (None where the kernel does not run here).
#[derive(Clone, Copy, Debug, Default)]
struct TileFits {
    bf16: Option<TileFit>,
    int8: Option<TileFit>,
}

/// Per type, the kernel costs on one core with cache-resident weights (2048 columns; 128
/// rows for the vector path, 512 for the matrix path), and the fits of the tile kernels.
/// A matrix-path time is modelled as staging per weight element, plus converting the
/// activations per activation element, plus the tile products. One type per tile kernel
/// (BF16 for bf16, Q8_0 for int8) is timed at three shapes, which gives all three terms;
/// the other types of that kernel take its activation and product terms, and their
/// staging follows from one shape.
fn kernel_costs() -> (Vec<KernelCost>, TileFits) {
    const K: usize = 2048;
    let mut exec = Executor::new(1);
    let mut x: Vec<f32> = (0..K * 128).map(|i| ((i * 7919) % 2001) as f32 / 1000.0 - 1.0).collect();
    let mut d = vec![0f32; 512 * 128];
    let mut fits = TileFits::default();
    let mut out = Vec::new();
    let fitted_first = [DType::BF16, DType::Q8_0];
    for ty in fitted_first.into_iter().chain(TYPES.into_iter().filter(|t| !fitted_first.contains(t))) {
        let tile_int8 = crate::ops::tile_int8_type(ty);
        let mut w = random_weights(ty, 512, K, 1);
        let mut packed_copy = vec![0u8; w.len()];
        let mut time = |m: usize, n: usize, mode: Mode| -> Option<f64> {
            let layout = Layout::for_weights(ty, K, n);
            if let Some(l) = layout {
                packed::pack(l, ty, &w[..ty.row_bytes(K) * n], &mut packed_copy[..ty.row_bytes(K) * n], n, K);
            }
            let node = Node {
                op: Op::MulMat,
                dst: tensor(DType::F32, [n, m, 1, 1], d.as_mut_ptr() as *mut u8),
                src: [
                    Some(TensorRef {
                        packed: layout.map(|l| PackedRef { layout: l, data: packed_copy.as_ptr(), len: packed_copy.len() }),
                        ..tensor(ty, [K, n, 1, 1], w.as_mut_ptr())
                    }),
                    Some(tensor(DType::F32, [K, m, 1, 1], x.as_mut_ptr() as *mut u8)),
                    None,
                    None,
                    None,
                ],
            };
            crate::ops::supports(&node).ok()?;
            if mode == Mode::Matrix && !crate::ops::mat_shape(&node, 1, registry::active()).is_some_and(|s| s.matrix_block.is_some()) {
                return None;
            }
            Some(time_mode(&mut exec, &node, mode, if mode == Mode::Matrix { 7 } else { 15 }))
        };
        let (Some(v1), Some(v4)) = (time(1, 128, Mode::Vector), time(4, 128, Mode::Vector)) else { continue };
        let (elems, k) = ((128 * K) as f64, K as f64);
        let mut stage_ns = f64::INFINITY;
        if let Some(t32) = time(32, 512, Mode::Matrix) {
            let fit = if tile_int8 { &mut fits.int8 } else { &mut fits.bf16 };
            let fits_here = ty == if tile_int8 { DType::Q8_0 } else { DType::BF16 };
            if fits_here {
                if let (Some(t128), Some(t128s)) = (time(128, 512, Mode::Matrix), time(128, 128, Mode::Matrix)) {
                    // t(m, n) / k = n stage + m act + 2 m n flop at (32, 512), (128, 512)
                    // and (128, 128), solved by Cramer's rule.
                    let rows = [[512.0, 32.0, 32768.0, t32 / k], [512.0, 128.0, 131072.0, t128 / k], [128.0, 128.0, 32768.0, t128s / k]];
                    let [stage, act, f] = solve3(rows);
                    let f = if f > 0.0 { f } else { (t128 - t32) / (2.0 * 96.0 * 512.0 * k) };
                    // Noise can push a term below zero; staging costs at least a copy.
                    let (stage, act) = (stage.max(0.05 * t32 / (512.0 * k)), act.max(0.0));
                    *fit = Some(TileFit { act, flop: f });
                    stage_ns = stage * 1e9;
                }
            } else if let Some(f) = *fit {
                let rest = t32 - 32.0 * k * f.act - 2.0 * 32.0 * 512.0 * k * f.flop;
                stage_ns = (rest.max(t32 * 0.05) / (512.0 * k)) * 1e9;
            }
        }
        out.push(KernelCost { ty, vec_m1_ns: v1 / elems * 1e9, vec_m4_ns: v4 / elems * 1e9, stage_ns, tile_int8 });
    }
    (out, fits)
}

/// Solves the 3 x 3 system `rows[i][..3] . x = rows[i][3]` (Cramer's rule).
fn solve3(r: [[f64; 4]; 3]) -> [f64; 3] {
    let det = |c: [[f64; 3]; 3]| {
        c[0][0] * (c[1][1] * c[2][2] - c[1][2] * c[2][1]) - c[0][1] * (c[1][0] * c[2][2] - c[1][2] * c[2][0])
            + c[0][2] * (c[1][0] * c[2][1] - c[1][1] * c[2][0])
    };
    let a = r.map(|row| [row[0], row[1], row[2]]);
    let d = det(a);
    std::array::from_fn(|j| {
        let mut c = a;
        for i in 0..3 {
            c[i][j] = r[i][3];
        }
        det(c) / d
    })
}

/// The profile as text, one `key value...` per line (the cache format).
pub fn to_text(p: &MachineProfile) -> String {
    let mut s = format!("cpu {}\ncores {}\nnode_overhead {:e}\n", p.cpu, p.cores, p.node_overhead);
    let list = |v: &[f64]| v.iter().map(|x| format!("{x:e}")).collect::<Vec<_>>().join(" ");
    s += &format!("dram_read {}\n", list(&p.dram_read));
    s += &format!("dram_beside_matrix {:e}\n", p.dram_beside_matrix);
    s += &format!("vector {:e} {:e}\n", p.vec_fp32_peak, p.vec_int8_peak);
    if let Some(m) = &p.matrix {
        s += &format!(
            "matrix {} {} {:e} {:e} {:e} {:e} {:e} {:e}\n",
            m.units, m.cores_per_unit, m.bf16_peak, m.int8_peak, m.bf16_kernel, m.act_ns, m.int8_kernel, m.act_i8_ns
        );
    }
    s += &format!("mixed_efficiency {:e}\n", p.mixed_efficiency);
    for c in &p.kernels {
        s += &format!("kernel {} {:e} {:e} {:e} {}\n", c.ty.name(), c.vec_m1_ns, c.vec_m4_ns, c.stage_ns, if c.tile_int8 { "int8" } else { "bf16" });
    }
    s += &format!("attention {:e} {:e}\n", p.attn_row_ns, p.attn_blocked_ns);
    s
}

/// A profile read from a file (SMEPILOT_PROFILE, `smepilot plan --profile`): the cache
/// format, plus `#` comment lines, an optional `matrix_block` line, and the marker of a
/// published profile.
#[derive(Clone, Debug, PartialEq)]
pub struct ProfileFile {
    pub path: PathBuf,
    pub profile: MachineProfile,
    /// Where a comment line starts with `PUBLISHED`, the figures are someone's published
    /// ones, not measured here: the `source:` comment lines (possibly none).
    pub published: Option<Vec<String>>,
    /// `matrix_block ROWS COLS`: the output block one call of the machine's tile kernel
    /// computes (activation rows, weight rows), for planning a machine this process does
    /// not run on (the running process takes its own unit's block).
    pub matrix_block: Option<(usize, usize)>,
}

impl ProfileFile {
    /// "published profile" or "profile file", then the path, for logs (the sources are
    /// in the file's header, and in [`Self::published`]).
    pub fn describe(&self) -> String {
        match &self.published {
            Some(sources) => format!(
                "published profile {} (PUBLISHED figures, not measured here; {} source(s) in its header)",
                self.path.display(),
                sources.len()
            ),
            None => format!("profile file {}", self.path.display()),
        }
    }
}

/// The published profiles of the source tree (`bench-scripts/profiles`).
pub fn published_profiles_dir() -> PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../bench-scripts/profiles")
}

/// A profile argument (`smepilot plan --profile`): a bare name (no path separator, no
/// extension) is `bench-scripts/profiles/NAME.txt`, anything else a path.
pub fn profile_path(arg: &str) -> PathBuf {
    if arg.contains(['/', '\\', '.']) {
        return PathBuf::from(arg);
    }
    let local = PathBuf::from("bench-scripts/profiles").join(format!("{arg}.txt"));
    if local.is_file() {
        return local;
    }
    published_profiles_dir().join(format!("{arg}.txt"))
}

/// Reads and checks a profile file; the error names the line at fault where there is one.
pub fn read_profile_file(path: &std::path::Path) -> Result<ProfileFile, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let (profile, published, matrix_block) = parse_text(&text)?;
    Ok(ProfileFile { path: path.to_path_buf(), profile, published, matrix_block })
}

/// Parses [`to_text`]'s output; None if anything is missing or malformed.
pub fn parse(text: &str) -> Option<MachineProfile> {
    parse_text(text).ok().map(|(p, _, _)| p)
}

type Parsed = (MachineProfile, Option<Vec<String>>, Option<(usize, usize)>);

/// The profile, the published marker's sources and the matrix block of a profile text;
/// the error says which line is malformed, or which figure is missing or unusable.
fn parse_text(text: &str) -> Result<Parsed, String> {
    let mut p = MachineProfile {
        cpu: String::new(),
        cores: 0,
        matrix: None,
        vec_fp32_peak: 0.0,
        vec_int8_peak: 0.0,
        dram_read: Vec::new(),
        dram_beside_matrix: 0.0,
        kernels: Vec::new(),
        node_overhead: 0.0,
        attn_row_ns: f64::NAN,
        attn_blocked_ns: f64::NAN,
        mixed_efficiency: 1.0,
    };
    let (mut marked, mut sources, mut block) = (false, Vec::new(), None);
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        let bad = |what: &str| format!("line {}: {what}: {raw:?}", i + 1);
        if line.is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix('#') {
            let comment = comment.trim();
            if comment.starts_with("PUBLISHED") {
                marked = true;
            } else if let Some(src) = comment.strip_prefix("source:").or_else(|| comment.strip_prefix("sources:")) {
                sources.push(src.trim().to_string());
            }
            continue;
        }
        let (key, rest) = line.split_once(' ').ok_or_else(|| bad("a key without figures"))?;
        let rest = rest.trim();
        let nums = |n: usize, what: &str| -> Result<Vec<f64>, String> {
            let v: Vec<f64> = rest.split_whitespace().map(|v| v.parse::<f64>().ok()).collect::<Option<_>>().ok_or_else(|| bad(&format!("`{key}` takes numbers")))?;
            if n > 0 && v.len() != n {
                return Err(bad(&format!("`{key}` takes {n} number(s): {what}")));
            }
            Ok(v)
        };
        let count = |v: f64| (v >= 1.0 && v.fract() == 0.0).then_some(v as usize);
        match key {
            "cpu" => p.cpu = rest.to_string(),
            "cores" => p.cores = count(nums(1, "the core count")?[0]).ok_or_else(|| bad("`cores` is a positive integer"))?,
            "node_overhead" => p.node_overhead = nums(1, "seconds per node")?[0],
            "dram_read" => p.dram_read = nums(0, "")?,
            "dram_beside_matrix" => p.dram_beside_matrix = nums(1, "bytes/s")?[0],
            "mixed_efficiency" => p.mixed_efficiency = nums(1, "a fraction")?[0],
            "vector" => {
                let v = nums(2, "fp32 and int8 peaks per core")?;
                (p.vec_fp32_peak, p.vec_int8_peak) = (v[0], v[1]);
            }
            "matrix" => {
                let v = nums(8, "units, cores per unit, bf16 and int8 peaks, bf16 kernel rate, act ns, int8 kernel rate, int8 act ns")?;
                let [units, per, bf16_peak, int8_peak, bf16_kernel, act_ns, int8_kernel, act_i8_ns] = v[..] else { unreachable!("eight numbers checked") };
                let (units, cores_per_unit) = count(units).zip(count(per)).ok_or_else(|| bad("units and cores per unit are positive integers"))?;
                p.matrix = Some(MatrixUnits { units, cores_per_unit, bf16_peak, int8_peak, bf16_kernel, act_ns, int8_kernel, act_i8_ns });
            }
            "matrix_block" => {
                let v = nums(2, "activation rows and weight rows")?;
                block = Some(count(v[0]).zip(count(v[1])).ok_or_else(|| bad("block sizes are positive integers"))?);
            }
            "attention" => {
                let v = nums(2, "per-row and blocked ns")?;
                (p.attn_row_ns, p.attn_blocked_ns) = (v[0], v[1]);
            }
            "kernel" => {
                let f: Vec<&str> = rest.split_whitespace().collect();
                let &[name, m1, m4, stage, engine] = f.as_slice() else { return Err(bad("`kernel` takes a type, three ns figures and int8 or bf16")) };
                let ty = TYPES.into_iter().find(|t| t.name() == name).ok_or_else(|| bad(&format!("unknown weight type {name:?}")))?;
                let tile_int8 = match engine {
                    "int8" => true,
                    "bf16" => false,
                    _ => return Err(bad("the tile kernel is int8 or bf16")),
                };
                let v: Vec<f64> = [m1, m4, stage].iter().map(|v| v.parse().ok()).collect::<Option<_>>().ok_or_else(|| bad("`kernel` figures are numbers"))?;
                p.kernels.push(KernelCost { ty, vec_m1_ns: v[0], vec_m4_ns: v[1], stage_ns: v[2], tile_int8 });
            }
            _ => return Err(bad(&format!("unknown key {key:?}"))),
        }
    }
    check(&p)?;
    Ok((p, marked.then_some(sources), block))
}

/// Every figure the planner divides by is finite and positive, and every weight type has
/// its kernel costs (a damaged or partial cache is measured again, not trusted). Staging
/// may be zero (a published roofline with packed layouts reused) or infinite (no matrix
/// path for the type).
fn check(p: &MachineProfile) -> Result<(), String> {
    let pos = |v: f64| v.is_finite() && v > 0.0;
    let nonneg = |v: f64| v.is_finite() && v >= 0.0;
    let need = |ok: bool, what: &str| if ok { Ok(()) } else { Err(format!("missing or unusable figure: {what}")) };
    need(p.cores > 0, "cores")?;
    need(p.dram_read.len() == p.cores, &format!("dram_read needs one figure per thread count 1..={}, has {}", p.cores, p.dram_read.len()))?;
    need(p.dram_read.iter().all(|&b| pos(b)), "dram_read (positive bytes/s)")?;
    need(nonneg(p.dram_beside_matrix), "dram_beside_matrix")?;
    need(pos(p.vec_fp32_peak) && pos(p.vec_int8_peak), "vector peaks")?;
    need(nonneg(p.node_overhead), "node_overhead")?;
    need(p.mixed_efficiency > 0.0 && p.mixed_efficiency <= 1.0, "mixed_efficiency (above 0, at most 1)")?;
    if let Some(m) = &p.matrix {
        need(pos(m.bf16_peak) && pos(m.int8_peak) && pos(m.bf16_kernel), "matrix peaks and bf16 kernel rate")?;
        need(nonneg(m.act_ns) && nonneg(m.int8_kernel) && nonneg(m.act_i8_ns), "matrix activation costs and int8 kernel rate")?;
    }
    need(pos(p.attn_row_ns) && pos(p.attn_blocked_ns), "attention")?;
    for ty in TYPES {
        let c = p.kernel(ty).ok_or_else(|| format!("missing figure: kernel {}", ty.name()))?;
        need(pos(c.vec_m1_ns) && pos(c.vec_m4_ns) && c.stage_ns >= 0.0, &format!("kernel {}", ty.name()))?;
    }
    Ok(())
}

/// The profile as a human-readable report (`smepilot calibrate`).
pub fn report(p: &MachineProfile) -> String {
    let mut s = format!("CPU: {} ({} cores)\nper-node dispatch and barrier: {:.1} us\n", p.cpu, p.cores, p.node_overhead * 1e6);
    for (i, bw) in p.dram_read.iter().enumerate() {
        s += &format!("DRAM read, {} thread(s): {:.1} GB/s\n", i + 1, bw / 1e9);
    }
    match &p.matrix {
        Some(m) => {
            s += &format!(
                "matrix units: {} ({} core(s) each); per unit: bf16 peak {:.0} GFLOP/s, int8 peak {:.0} GOPS\n",
                m.units, m.cores_per_unit, m.bf16_peak / 1e9, m.int8_peak / 1e9
            );
            s += &format!("SMEPilot's tile kernels, one unit: bf16 {:.0} GFLOP/s (activations into tiles {:.2} ns per element)", m.bf16_kernel / 1e9, m.act_ns);
            s += &if m.int8_kernel > 0.0 {
                format!(", int8 with per-block scales {:.0} GOPS (activations quantized into tiles {:.2} ns per element)\n", m.int8_kernel / 1e9, m.act_i8_ns)
            } else {
                ", no int8 kernel\n".to_string()
            };
            s += &format!("DRAM read left to the vector cores while a matrix unit streams: {:.1} GB/s\n", p.dram_beside_matrix / 1e9);
        }
        None => s += "matrix units: none\n",
    }
    s += &format!("vector peaks per core: fp32 {:.0} GFLOP/s, int8 {:.0} GOPS\n", p.vec_fp32_peak / 1e9, p.vec_int8_peak / 1e9);
    s += "kernel costs, one core, cache-resident (ns per weight element):\n  type   vector M=1  vector M=4  matrix staging  tile kernel\n";
    for c in &p.kernels {
        s += &format!("  {:6} {:10.3}  {:10.3}  {:14.3}  {}\n", c.ty.name(), c.vec_m1_ns, c.vec_m4_ns, c.stage_ns, if c.tile_int8 { "int8" } else { "bf16" });
    }
    s += &format!(
        "flash attention, one core (ns per query row x key x head element): per-row path {:.4}, blocked path {:.4}\n",
        p.attn_row_ns, p.attn_blocked_ns
    );
    s
}

#[cfg(test)]
mod tests {
    use crate::planner::profile::synthetic;
    use super::*;

    #[test]
    fn solve3_solves() {
        let x = solve3([[512.0, 32.0, 32768.0, 512.0 * 2.0 + 32.0 * 3.0 + 32768.0 * 0.5], [512.0, 128.0, 131072.0, 1024.0 + 384.0 + 65536.0], [128.0, 128.0, 32768.0, 256.0 + 384.0 + 16384.0]]);
        assert!((x[0] - 2.0).abs() < 1e-9 && (x[1] - 3.0).abs() < 1e-9 && (x[2] - 0.5).abs() < 1e-9, "{x:?}");
    }

    #[test]
    fn the_cache_format_round_trips() {
        let mut mixed = synthetic::sme_shared();
        mixed.mixed_efficiency = 0.9;
        for p in [synthetic::amx_like(), synthetic::sme_shared(), synthetic::no_matrix(), mixed] {
            assert_eq!(parse(&to_text(&p)), Some(p));
        }
        assert_eq!(parse("cores two\n"), None);
        // A cache cut short, or with a non-finite figure, is not trusted.
        let text = to_text(&synthetic::amx_like());
        let cut: String = text.lines().take(text.lines().count() - 1).map(|l| format!("{l}\n")).collect();
        assert_eq!(parse(&cut), None);
        assert_eq!(parse(&text.replace("dram_read 1.6e10", "dram_read NaN")), None);
        // Caches written before mixed_efficiency existed still load, at 1.
        let old: String = text.lines().filter(|l| !l.starts_with("mixed_efficiency")).map(|l| format!("{l}\n")).collect();
        assert_eq!(parse(&old).map(|p| p.mixed_efficiency), Some(1.0));
    }

    #[test]
    fn a_malformed_profile_names_its_line() {
        let text = to_text(&synthetic::sme_shared());
        let lines: Vec<&str> = text.lines().collect();
        let at = |key: &str| lines.iter().position(|l| l.starts_with(key)).unwrap() + 1;
        for (key, bad, want) in [
            ("vector", "vector 1e11", "takes 2 number"),
            ("matrix", "matrix 1.5 4 2e12 4e12 1e12 0.5 2e12 0.6", "positive integers"),
            ("kernel q6_K", "kernel q6_K 0.1 0.2 0.3 fp8", "int8 or bf16"),
            ("cores", "cores 4 4", "takes 1 number"),
            ("dram_read", "dram_read fast", "takes numbers"),
        ] {
            let broken = text.replace(lines[at(key) - 1], bad);
            let e = parse_text(&broken).unwrap_err();
            assert!(e.starts_with(&format!("line {}:", at(key))) && e.contains(want), "{key}: {e}");
        }
        let e = parse_text(&format!("{text}turbo 1\n")).unwrap_err();
        assert!(e.contains(&format!("line {}", lines.len() + 1)) && e.contains("turbo"), "{e}");
        // A figure missing altogether is named.
        let e = parse_text(&text.replace("attention", "# attention")).unwrap_err();
        assert!(e.contains("attention"), "{e}");
        let e = parse_text(&text.replace(lines[at("dram_read") - 1], "dram_read 1e9")).unwrap_err();
        assert!(e.contains("dram_read"), "{e}");
    }

    #[test]
    fn comments_and_the_published_marker_are_read() {
        let body = to_text(&synthetic::sme_shared());
        let (p, published, block) = parse_text(&format!("# PUBLISHED, not measured\n# source: a paper\n\n# source: a blog\n{body}matrix_block 32 16\n")).unwrap();
        assert_eq!(p, synthetic::sme_shared());
        assert_eq!(published, Some(vec!["a paper".to_string(), "a blog".to_string()]));
        assert_eq!(block, Some((32, 16)));
        let (_, published, block) = parse_text(&format!("# measured on the lab machine\n# source: smepilot calibrate\n{body}")).unwrap();
        assert_eq!((published, block), (None, None));
        let dir = std::env::temp_dir().join(format!("smepilot-profile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("p.txt");
        std::fs::write(&path, format!("# PUBLISHED\n# source: x\n{body}")).unwrap();
        let f = read_profile_file(&path).unwrap();
        assert!(f.describe().starts_with("published profile") && f.describe().contains("1 source"), "{}", f.describe());
        std::fs::write(&path, &body).unwrap();
        assert!(read_profile_file(&path).unwrap().describe().starts_with("profile file"));
        let e = read_profile_file(&dir.join("absent.txt")).unwrap_err();
        assert!(e.contains("absent.txt"), "{e}");
        let _ = std::fs::remove_dir_all(dir);
    }

    /// The published M4 Pro profile holds the figures its header cites.
    #[test]
    fn the_published_m4_pro_profile_matches_its_sources() {
        assert_eq!(profile_path("m4-pro").file_name().unwrap(), "m4-pro.txt");
        assert_eq!(profile_path("./x.txt"), PathBuf::from("./x.txt"));
        let f = read_profile_file(&profile_path("m4-pro")).unwrap();
        let sources = f.published.as_ref().expect("marked PUBLISHED");
        assert!(sources.iter().any(|s| s.contains("2606.16332")) && sources.iter().any(|s| s.contains("m4-sme-exploration")), "{sources:?}");
        let p = &f.profile;
        let m = p.matrix.as_ref().unwrap();
        let close = |a: f64, b: f64| (a / b - 1.0).abs() < 1e-3;
        assert_eq!((m.units, m.cores_per_unit, p.cores), (2, 5, 14));
        assert!(close(m.bf16_kernel * m.units as f64, 2.92e12), "SME 2.92 TFLOP/s over the units");
        assert!(close(p.vec_fp32_peak * p.cores as f64, 1.85e12), "CPU cores 1.85 TFLOP/s");
        assert!(close(p.mixed_efficiency * (2.92e12 + 1.85e12), 4.27e12), "mixed 4.27 TFLOP/s");
        assert!(close(m.bf16_peak, 2.0e12) && close(m.int8_peak, 4.0e12), "per-unit FMOPA / SMOPA peaks");
        assert!(p.dram_read.iter().all(|&b| close(b, 247e9)) && close(p.dram_beside_matrix, 247e9));
        assert_eq!(f.matrix_block, Some((32, 32)));
        // Every type at the paper's fp32-equivalent roofs, as the header says.
        assert!(close(m.int8_kernel, m.bf16_kernel));
        for c in &p.kernels {
            let peak = p.vec_fp32_peak;
            assert!(close(c.vec_m1_ns, 2.0 / peak * 1e9) && close(c.vec_m4_ns, 8.0 / peak * 1e9) && c.stage_ns == 0.0, "{c:?}");
        }
    }

    /// A real calibration: every figure positive and finite where the path exists (the
    /// vector path for every type; the matrix path for the types the unit runs). No bound
    /// on its speed: under emulation every figure is orders of magnitude lower.
    #[test]
    fn calibration_measures_every_figure() {
        // The tile-engine switch the product tests flip is process-wide: hold it still.
        let _lock = crate::ops::tests::MUL_MAT_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let p = measure();
        assert!(p.dram_read.iter().all(|&b| b > 0.0 && b.is_finite()), "{p:?}");
        assert!(p.vec_fp32_peak > 0.0 && p.vec_int8_peak > 0.0 && p.vec_fp32_peak.is_finite() && p.vec_int8_peak.is_finite(), "{p:?}");
        assert!(p.attn_row_ns > 0.0 && p.attn_blocked_ns > 0.0 && p.attn_row_ns.is_finite() && p.attn_blocked_ns.is_finite(), "{p:?}");
        for c in &p.kernels {
            assert!(c.vec_m1_ns > 0.0 && c.vec_m4_ns > 0.0 && c.vec_m1_ns.is_finite(), "{c:?}");
            if p.matrix.is_some() && c.ty != DType::F32 && crate::ops::matrix_block_for_type(c.ty, 2048).is_some() {
                assert!(c.stage_ns > 0.0 && c.stage_ns.is_finite(), "{c:?}");
            }
        }
        assert_eq!(p.kernels.len(), TYPES.len());
        assert_eq!(parse(&to_text(&p)).as_ref(), Some(&p));
    }
}
