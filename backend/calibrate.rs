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
pub const KERNEL_REV: u32 = 7;

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

/// The process's profile: loaded from the cache or measured on first use (logged).
pub fn shared_profile() -> &'static MachineProfile {
    static PROFILE: std::sync::OnceLock<MachineProfile> = std::sync::OnceLock::new();
    PROFILE.get_or_init(|| with_settings(load_or_measure(|msg| crate::smelog!(Warn, "{msg}"))))
}

/// The profile as the settings restrict it (SMEPILOT_MATRIX_UNITS); the cache keeps
/// the machine's own figures.
pub fn with_settings(p: MachineProfile) -> MachineProfile {
    match crate::config::get().ok().and_then(|c| c.matrix_units) {
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

#[cfg(not(target_arch = "x86_64"))]
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
    for c in &p.kernels {
        s += &format!("kernel {} {:e} {:e} {:e} {}\n", c.ty.name(), c.vec_m1_ns, c.vec_m4_ns, c.stage_ns, if c.tile_int8 { "int8" } else { "bf16" });
    }
    s += &format!("attention {:e} {:e}\n", p.attn_row_ns, p.attn_blocked_ns);
    s
}

/// Parses [`to_text`]'s output; None if anything is missing or malformed.
pub fn parse(text: &str) -> Option<MachineProfile> {
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
    };
    for line in text.lines() {
        let (key, rest) = line.split_once(' ')?;
        let nums = || rest.split_whitespace().map(|v| v.parse::<f64>().ok()).collect::<Option<Vec<f64>>>();
        match key {
            "cpu" => p.cpu = rest.to_string(),
            "cores" => p.cores = rest.parse().ok()?,
            "node_overhead" => p.node_overhead = rest.parse().ok()?,
            "dram_read" => p.dram_read = nums()?,
            "dram_beside_matrix" => p.dram_beside_matrix = rest.parse().ok()?,
            "vector" => {
                let v = nums()?;
                (p.vec_fp32_peak, p.vec_int8_peak) = (*v.first()?, *v.get(1)?);
            }
            "matrix" => {
                let v = nums()?;
                let &[units, per, bf16_peak, int8_peak, bf16_kernel, act_ns, int8_kernel, act_i8_ns] = v.as_slice() else { return None };
                p.matrix = Some(MatrixUnits { units: units as usize, cores_per_unit: per as usize, bf16_peak, int8_peak, bf16_kernel, act_ns, int8_kernel, act_i8_ns });
            }
            "attention" => {
                let v = nums()?;
                let &[row, blocked] = v.as_slice() else { return None };
                (p.attn_row_ns, p.attn_blocked_ns) = (row, blocked);
            }
            "kernel" => {
                let (name, vals) = rest.split_once(' ')?;
                let ty = TYPES.into_iter().find(|t| t.name() == name)?;
                let (vals, engine) = vals.rsplit_once(' ')?;
                let tile_int8 = match engine {
                    "int8" => true,
                    "bf16" => false,
                    _ => return None,
                };
                let v: Vec<f64> = vals.split_whitespace().map(|v| v.parse().ok()).collect::<Option<_>>()?;
                let &[vec_m1_ns, vec_m4_ns, stage_ns] = v.as_slice() else { return None };
                p.kernels.push(KernelCost { ty, vec_m1_ns, vec_m4_ns, stage_ns, tile_int8 });
            }
            _ => return None,
        }
    }
    valid(&p).then_some(p)
}

/// Every figure the planner divides by is finite and positive, and every weight type has
/// its kernel costs (a damaged or partial cache is measured again, not trusted).
fn valid(p: &MachineProfile) -> bool {
    let pos = |v: f64| v.is_finite() && v > 0.0;
    let matrix_ok = p.matrix.as_ref().is_none_or(|m| m.units > 0 && pos(m.bf16_peak) && pos(m.int8_peak) && pos(m.bf16_kernel) && m.act_ns.is_finite() && m.act_ns >= 0.0
        && m.int8_kernel.is_finite() && m.int8_kernel >= 0.0 && m.act_i8_ns.is_finite() && m.act_i8_ns >= 0.0);
    p.cores > 0
        && p.dram_read.len() == p.cores
        && p.dram_read.iter().all(|&b| pos(b))
        && p.dram_beside_matrix.is_finite()
        && p.dram_beside_matrix >= 0.0
        && pos(p.vec_fp32_peak)
        && pos(p.vec_int8_peak)
        && p.node_overhead.is_finite()
        && p.node_overhead >= 0.0
        && matrix_ok
        && pos(p.attn_row_ns)
        && pos(p.attn_blocked_ns)
        && TYPES.iter().all(|&ty| p.kernel(ty).is_some_and(|c| pos(c.vec_m1_ns) && pos(c.vec_m4_ns) && (c.stage_ns > 0.0)))
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
        for p in [synthetic::amx_like(), synthetic::sme_shared(), synthetic::no_matrix()] {
            assert_eq!(parse(&to_text(&p)), Some(p));
        }
        assert_eq!(parse("cores two\n"), None);
        // A cache cut short, or with a non-finite figure, is not trusted.
        let text = to_text(&synthetic::amx_like());
        let cut: String = text.lines().take(text.lines().count() - 1).map(|l| format!("{l}\n")).collect();
        assert_eq!(parse(&cut), None);
        assert_eq!(parse(&text.replace("dram_read 1.6e10", "dram_read NaN")), None);
    }

    /// A real calibration: every figure positive and finite where the path exists (the
    /// vector path for every type; the matrix path for all but F32 with AMX). No bound on
    /// its speed: under emulation every figure is orders of magnitude lower.
    #[test]
    fn calibration_measures_every_figure() {
        let p = measure();
        assert!(p.dram_read.iter().all(|&b| b > 0.0 && b.is_finite()), "{p:?}");
        assert!(p.vec_fp32_peak > 0.0 && p.vec_int8_peak > 0.0 && p.vec_fp32_peak.is_finite() && p.vec_int8_peak.is_finite(), "{p:?}");
        assert!(p.attn_row_ns > 0.0 && p.attn_blocked_ns > 0.0 && p.attn_row_ns.is_finite() && p.attn_blocked_ns.is_finite(), "{p:?}");
        for c in &p.kernels {
            assert!(c.vec_m1_ns > 0.0 && c.vec_m4_ns > 0.0 && c.vec_m1_ns.is_finite(), "{c:?}");
            if p.matrix.is_some() && c.ty != DType::F32 {
                assert!(c.stage_ns > 0.0 && c.stage_ns.is_finite(), "{c:?}");
            }
        }
        assert_eq!(p.kernels.len(), TYPES.len());
        assert_eq!(parse(&to_text(&p)).as_ref(), Some(&p));
    }
}
