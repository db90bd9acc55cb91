//! `smepilot`: the planner's command line.
//!
//! * `smepilot calibrate [--cached | --profile NAME]`: measures this machine's profile (or
//!   shows the cached one, or a profile file's), saves it where the backend loads it, and
//!   prints the figures.
//! * `smepilot plan -m model.gguf [--profile NAME] [--batch 1,16,512] [--threads N]
//!   [--svg out.svg]`: reads the model's matrix-product weights, prints the planner's
//!   prediction for every mode and its choice per shape and batch size, and draws the
//!   roofline chart with each shape on it. `--profile` plans another machine from its
//!   profile file: a bare name is `bench-scripts/profiles/NAME.txt` (e.g. `m4-pro`, the
//!   published Apple M4 Pro figures), anything else a path; SMEPILOT_PROFILE does the same.

mod gguf;

use std::collections::BTreeMap;

use smepilot_engine::dtype::DType;
use smepilot_engine::ops::matrix_block_for_type;
use smepilot_engine::planner::chart::{self, Point};
use smepilot_engine::planner::model::{self, MatShape};
use smepilot_engine::calibrate::{self, ProfileFile};
use smepilot_engine::plan::Mode;
use smepilot_engine::planner::profile::MachineProfile;

/// Writes a line to stdout; a closed pipe (`smepilot calibrate | head -3`) ends the
/// program quietly instead of panicking.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write;
        if let Err(e) = writeln!(std::io::stdout(), $($arg)*) {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                std::process::exit(0);
            }
            eprintln!("smepilot: writing to stdout: {e}");
            std::process::exit(2);
        }
    }};
}

const USAGE: &str = "usage: smepilot calibrate [--cached | --profile NAME|PATH]\n       smepilot plan -m model.gguf [--profile NAME|PATH] [--batch 1,16,512] [--threads N] [--svg out.svg]";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // A malformed SMEPILOT_* setting is named here, as the plugin would.
    if let Err(e) = smepilot_engine::config::get() {
        eprintln!("smepilot: {e}");
        std::process::exit(2);
    }
    let code = match args.first().map(String::as_str) {
        Some("calibrate") => calibrate_cmd(&args[1..]),
        Some("plan") => plan_cmd(&args[1..]),
        _ => Err(USAGE.to_string()),
    };
    if let Err(e) = code {
        eprintln!("smepilot: {e}");
        std::process::exit(2);
    }
}

/// The profile file `--profile` names, read and checked.
fn profile_file(arg: &str) -> Result<ProfileFile, String> {
    calibrate::read_profile_file(&calibrate::profile_path(arg)).map_err(|e| format!("--profile {arg}: {e}"))
}

/// The profile to plan with: `--profile`'s, else SMEPILOT_PROFILE's, else this machine's
/// (cached or measured); the file it came from, if any.
fn planning_profile(arg: Option<&str>) -> Result<(MachineProfile, Option<ProfileFile>), String> {
    let file = match arg {
        Some(a) => Some(profile_file(a)?),
        None => smepilot_engine::config::get().ok().and_then(|c| c.profile.clone()),
    };
    Ok(match file {
        Some(f) => (calibrate::with_settings(f.profile.clone()), Some(f)),
        None => (calibrate::with_settings(calibrate::load_or_measure(|msg| eprintln!("smepilot: {msg}"))), None),
    })
}

fn calibrate_cmd(args: &[String]) -> Result<(), String> {
    let cached = match args {
        [] => false,
        [a] if a == "--cached" => true,
        [a, name] if a == "--profile" => {
            let f = profile_file(name)?;
            outln!("{}", f.describe());
            for src in f.published.iter().flatten() {
                outln!("  source: {src}");
            }
            outln!("{}", calibrate::report(&f.profile).trim_end());
            return Ok(());
        }
        _ => return Err(USAGE.to_string()),
    };
    let path = calibrate::cache_path();
    let profile = match (cached, path.as_ref().and_then(|p| std::fs::read_to_string(p).ok()).and_then(|t| calibrate::parse(&t))) {
        (true, Some(p)) => p,
        _ => {
            let t0 = std::time::Instant::now();
            let p = calibrate::measure();
            let secs = t0.elapsed().as_secs_f64();
            // Saved before anything is printed: a reader that has gone must not lose it.
            if let Some(path) = &path {
                calibrate::save(path, &p).map_err(|e| format!("{}: {e}", path.display()))?;
            }
            outln!("calibrated in {secs:.2} s");
            p
        }
    };
    if let Some(path) = &path {
        outln!("profile: {}", path.display());
    }
    outln!("{}", calibrate::report(&profile).trim_end());
    Ok(())
}

/// A distinct matrix-product weight of the model: name pattern (layer number as `*`),
/// K, N, type, and how many tensors share it.
struct Weight {
    name: String,
    k: usize,
    n: usize,
    ty: DType,
    count: usize,
}

fn model_weights(path: &str) -> Result<Vec<Weight>, String> {
    let tensors = gguf::read_tensor_infos(path)?;
    let tied = !tensors.iter().any(|t| t.name == "output.weight");
    let mut groups: BTreeMap<(String, usize, usize, u32), usize> = BTreeMap::new();
    for t in &tensors {
        let two_d = t.dims.len() >= 2 && t.dims[2..].iter().all(|&d| d == 1);
        let matmul = t.name.ends_with(".weight") && !t.name.contains("norm") && (t.name != "token_embd.weight" || tied);
        if !two_d || !matmul {
            continue;
        }
        let pattern: Vec<String> = t.name.split('.').map(|p| if p.parse::<u32>().is_ok() { "*".into() } else { p.to_string() }).collect();
        let mut name = pattern.join(".");
        if t.name == "token_embd.weight" {
            name = "output (tied to token_embd)".into();
        }
        *groups.entry((name, t.dims[0] as usize, t.dims[1] as usize, t.ggml_type)).or_default() += 1;
    }
    groups
        .into_iter()
        .map(|((name, k, n, kind), count)| {
            let ty = DType::from_ggml(kind).ok_or_else(|| format!("{name}: ggml type {kind} is not one SMEPilot runs"))?;
            Ok(Weight { name, k, n, ty, count })
        })
        .collect()
}

fn plan_cmd(args: &[String]) -> Result<(), String> {
    let (mut model_path, mut batches, mut threads, mut svg, mut profile_arg) = (None, vec![1usize, 16, 512], None, None, None);
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{a} needs a value\n{USAGE}"));
        match a.as_str() {
            "-m" | "--model" => model_path = Some(value()?.clone()),
            "--batch" => {
                let v = value()?;
                batches = v.split(',').map(|b| b.trim().parse::<usize>().ok().filter(|&b| b > 0)).collect::<Option<_>>().ok_or_else(|| format!("--batch {v:?}: positive integers separated by commas"))?;
            }
            "-t" | "--threads" => threads = Some(value()?.parse::<usize>().ok().filter(|&t| t > 0).ok_or_else(|| format!("{a}: a positive integer"))?),
            "--svg" => svg = Some(value()?.clone()),
            "--profile" => profile_arg = Some(value()?.clone()),
            _ => return Err(format!("unknown argument {a:?}\n{USAGE}")),
        }
    }
    let model_path = model_path.ok_or_else(|| format!("-m model.gguf is required\n{USAGE}"))?;
    let weights = model_weights(&model_path)?;
    if weights.is_empty() {
        return Err(format!("{model_path}: no matrix-product weights found"));
    }
    let (profile, file) = planning_profile(profile_arg.as_deref())?;
    let threads = threads.unwrap_or(profile.cores);
    // The matrix path's output block: the profile file's where it gives one (a machine this
    // process does not run on), else this machine's unit's.
    let block = |ty: DType, k: usize| match file.as_ref().and_then(|f| f.matrix_block) {
        Some(b) => profile.matrix.as_ref().and(profile.kernel(ty)).filter(|c| c.stage_ns.is_finite()).map(|_| b),
        None => matrix_block_for_type(ty, k),
    };
    if let Some(f) = &file {
        outln!("machine profile: {}", f.describe());
        for src in f.published.iter().flatten() {
            outln!("  source: {src}");
        }
    }
    outln!("plan for {model_path} on {} ({threads} threads); predicted us per call", profile.cpu);
    outln!("{:<28} {:>6} {:>7} {:>6} {:>3} {:>5} {:>11} {:>11} {:>11} {:>7} {:>10} {:>9}", "weight", "K", "N", "type", "x", "M", "vector", "matrix", "coop", "choice", "drivers", "flop/B");
    let mut points = Vec::new();
    for &m in &batches {
        let mut total = 0.0;
        for w in &weights {
            let s = MatShape { m, n: w.n, k: w.k, ty: w.ty, threads, matrix_block: block(w.ty, w.k) };
            let (best, all) = model::best(&profile, &s);
            let us = |i: usize| all[i].map_or("-".to_string(), |p| format!("{:.1}", p.secs * 1e6));
            let intensity = s.flops() / s.weight_bytes();
            // Threads on the matrix units, and for coop the weight rows they take.
            let drivers = match best.mode {
                Mode::Vector => "-".to_string(),
                Mode::Matrix => best.matrix_threads.to_string(),
                Mode::Coop => format!("{} ({:.0}%)", best.matrix_threads, best.matrix_share * 100.0),
            };
            outln!(
                "{:<28} {:>6} {:>7} {:>6} {:>3} {:>5} {:>11} {:>11} {:>11} {:>7} {:>10} {:>9.2}",
                w.name, w.k, w.n, w.ty.name(), w.count, m, us(0), us(1), us(2), best.mode.name(), drivers, intensity
            );
            total += best.secs * w.count as f64;
            points.push(Point { label: format!("{} {}x{} {} M={m}", w.name, w.k, w.n, w.ty.name()), intensity, perf: s.flops() / best.secs, mode: best.mode });
        }
        outln!("  M = {m}: matrix products {:.1} ms per batch, {:.1} tokens/s if nothing else ran", total * 1e3, m as f64 / total);
    }
    if let Some(path) = svg {
        std::fs::write(&path, chart::roofline_svg(&profile, threads, &points)).map_err(|e| format!("{path}: {e}"))?;
        outln!("chart: {path} ({} points; {})", points.len(), Mode::ALL.map(|m| format!("{} = {}", m.name(), chart::mode_colour(m))).join(", "));
    }
    Ok(())
}
