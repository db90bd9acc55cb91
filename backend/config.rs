//! Settings from the environment, read once. A malformed value is an error that names
//! the variable; the plugin then refuses to register rather than guess.

use std::sync::OnceLock;

use super::kernels::registry::Tier;
use super::plan::ModeSetting;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    Off,
    Error,
    Warn,
    Info,
    Debug,
}

#[derive(Clone, Debug)]
pub struct Config {
    pub log: LogLevel,
    /// SMEPILOT_DISABLE_AMX=1: behave as on a CPU without a matrix unit.
    pub disable_amx: bool,
    /// SMEPILOT_DISABLE_SME=1: leave Arm's SME unit alone (the NEON kernels run).
    pub disable_sme: bool,
    /// SMEPILOT_PROFILE=path: the machine profile (roofs, units) read from a file instead
    /// of calibrated, e.g. a published one for a machine that cannot be measured here. Read
    /// and checked with the other settings: a missing or malformed file is a settings error
    /// naming the line at fault.
    pub profile: Option<crate::calibrate::ProfileFile>,
    /// SMEPILOT_AMX_INT8 (default 1): Q4_0, Q4_1 and Q8_0 products on the int8 tile kernel,
    /// activations quantized per 32-block and block scales applied in ggml-cpu's order (the
    /// same numbers as stock's AMX kernel); 0 unpacks them to bf16 for the bf16 tile kernel.
    pub amx_int8: bool,
    /// SMEPILOT_AMX_ATTN (default 0): 1 puts prefill attention's products on the bf16 tiles
    /// with split operands; by default they stay on the vector units in ggml-cpu's exact
    /// order (stock's bits: a model whose products all give stock's bits stays exact).
    pub amx_attn: bool,
    /// SMEPILOT_BATCH_INVARIANT (default 0): 1 runs prefill attention in the per-row path's
    /// arithmetic (`ops::attention::state`), so that a query row's result does not depend
    /// on the batch; by default it follows ggml-cpu's tiled arithmetic (stock's bits).
    pub batch_invariant: bool,
    /// SMEPILOT_FUSE (default 1): 0 runs every node on its own, never two as one pass
    /// (`ops::fuse`; the same bits either way, for ablations).
    pub fuse: bool,
    /// SMEPILOT_SME_INT8 (default 1 on SME2): Q4_0, Q4_1 and Q8_0 products on the int8 SME
    /// kernel, in ggml-cpu's aarch64 order (stock's bits); 0 takes the f16 kernel (weights
    /// and activations dequantized to f16: fewer instructions per product, not stock's
    /// bits). SME1 CPUs take the f16 kernel unless this is 1.
    pub sme_int8: Option<bool>,
    /// SMEPILOT_THREADS: default thread count before llama.cpp sets one.
    pub threads: Option<usize>,
    /// SMEPILOT_DECLINE_OPS=SOFT_MAX,ROPE: ops (ggml names) reported unsupported, so
    /// the scheduler runs them elsewhere. For fallback tests and for bisecting.
    pub decline_ops: Vec<String>,
    /// SMEPILOT_MODE=vector|matrix|coop|auto: matrix products in one forced mode (for
    /// ablations and to pin behaviour), or as the planner chooses (auto, the default).
    pub mode: ModeSetting,
    /// SMEPILOT_TRACE=1: one line per executed op and a summary per graph on stderr.
    pub trace: bool,
    /// SMEPILOT_MATRIX_UNITS=N: drive at most N matrix units, each then shared by
    /// cores / N cores (matrix-only work runs on N threads, coop gives the rest vector
    /// work). Leaves cores free of tile work (AMX lowers the clock of the cores that use
    /// it), and reproduces a shared-unit machine (Apple M4: one SME unit per cluster).
    pub matrix_units: Option<usize>,
    /// SMEPILOT_TIER=scalar|avx2|avx512|neon: the kernel tier to run instead of the fastest
    /// this CPU offers (SMEPILOT_FORCE_SCALAR=1 is SMEPILOT_TIER=scalar). A tier the CPU
    /// lacks is refused when the plugin registers.
    pub tier: Option<Tier>,
    /// SMEPILOT_KV=packed|standard (default packed): the layout of the KV caches llama.cpp
    /// places in SMEPilot's buffer (`kv_layout`); standard leaves them in the CPU backend's
    /// buffer in ggml's layout.
    pub kv_packed: bool,
    /// SMEPILOT_ATTN=auto|parallel|pipelined (default auto): how prefill attention's threads
    /// share its stages (`ops::attention`): every thread every stage, or pairs with the
    /// matrix stages on one thread and softmax on the other.
    pub attn: AttnSchedule,
}

/// How prefill attention's threads share its stages (SMEPILOT_ATTN).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttnSchedule {
    /// The planner's choice.
    Auto,
    /// Every thread runs every stage of its tasks.
    Parallel,
    /// Threads in pairs: one the matrix stages (Q K^T, P V), the other softmax and mask.
    Pipelined,
}

/// ggml op names SMEPilot may claim, i.e. what SMEPILOT_DECLINE_OPS may name.
pub const DECLINABLE_OPS: &[&str] = &[
    "GET_ROWS",
    "SET_ROWS",
    "CPY",
    "CONT",
    "DUP",
    "ADD",
    "MUL",
    "SCALE",
    "RMS_NORM",
    "SILU",
    "SWIGLU",
    "ROPE",
    "SOFT_MAX",
    "MUL_MAT",
    "FLASH_ATTN_EXT",
];

fn flag(var: &impl Fn(&str) -> Option<String>, name: &str) -> Result<bool, String> {
    match var(name) {
        None => Ok(false),
        Some(v) => match v.as_str() {
            "" | "0" | "false" | "no" | "off" => Ok(false),
            "1" | "true" | "yes" | "on" => Ok(true),
            _ => Err(format!("{name}={v:?} is not a boolean (use 1 or 0)")),
        },
    }
}

impl Config {
    pub fn from_env() -> Result<Config, String> {
        Config::parse(|name| std::env::var(name).ok())
    }

    /// Parses the settings from `var` (the environment, or a table in tests).
    pub fn parse(var: impl Fn(&str) -> Option<String>) -> Result<Config, String> {
        let log = match var("SMEPILOT_LOG").as_deref() {
            None | Some("") | Some("warn") => LogLevel::Warn,
            Some("off") => LogLevel::Off,
            Some("error") => LogLevel::Error,
            Some("info") => LogLevel::Info,
            Some("debug") => LogLevel::Debug,
            Some(v) => {
                return Err(format!(
                    "SMEPILOT_LOG={v:?} is not one of off, error, warn, info, debug"
                ))
            }
        };
        let threads = match var("SMEPILOT_THREADS") {
            None => None,
            Some(v) => match v.parse::<usize>() {
                Ok(n) if n >= 1 => Some(n),
                _ => return Err(format!("SMEPILOT_THREADS={v:?} is not a positive integer")),
            },
        };
        let decline_ops = match var("SMEPILOT_DECLINE_OPS") {
            None => Vec::new(),
            Some(v) => {
                let ops: Vec<String> = v
                    .split(',')
                    .map(|s| s.trim().to_uppercase())
                    .filter(|s| !s.is_empty())
                    .collect();
                if let Some(bad) = ops.iter().find(|o| !DECLINABLE_OPS.contains(&o.as_str())) {
                    return Err(format!(
                        "SMEPILOT_DECLINE_OPS names {bad:?}, which is not one of {}",
                        DECLINABLE_OPS.join(", ")
                    ));
                }
                ops
            }
        };
        let mode = match var("SMEPILOT_MODE") {
            None => ModeSetting::Auto,
            Some(v) => ModeSetting::parse(&v.to_lowercase())
                .ok_or_else(|| format!("SMEPILOT_MODE={v:?} is not one of vector, matrix, coop, auto, model"))?,
        };
        let matrix_units = match var("SMEPILOT_MATRIX_UNITS") {
            None => None,
            Some(v) => match v.parse::<usize>() {
                Ok(n) if n >= 1 => Some(n),
                _ => return Err(format!("SMEPILOT_MATRIX_UNITS={v:?} is not a positive integer")),
            },
        };
        let tier = match var("SMEPILOT_TIER") {
            None => None,
            Some(v) => Some(Tier::parse(&v.to_lowercase()).ok_or_else(|| {
                format!(
                    "SMEPILOT_TIER={v:?} is not one of {}",
                    Tier::ALL.map(|t| t.name()).join(", ")
                )
            })?),
        };
        let tier = match (flag(&var, "SMEPILOT_FORCE_SCALAR")?, tier) {
            (false, t) => t,
            (true, None | Some(Tier::Scalar)) => Some(Tier::Scalar),
            (true, Some(t)) => {
                return Err(format!(
                    "SMEPILOT_FORCE_SCALAR=1 contradicts SMEPILOT_TIER={:?}",
                    t.name()
                ))
            }
        };
        let kv_packed = match var("SMEPILOT_KV").as_deref() {
            None | Some("") | Some("packed") => true,
            Some("standard") => false,
            Some(v) => return Err(format!("SMEPILOT_KV={v:?} is not one of packed, standard")),
        };
        let attn = match var("SMEPILOT_ATTN").as_deref() {
            None | Some("") | Some("auto") => AttnSchedule::Auto,
            Some("parallel") => AttnSchedule::Parallel,
            Some("pipelined") => AttnSchedule::Pipelined,
            Some(v) => return Err(format!("SMEPILOT_ATTN={v:?} is not one of auto, parallel, pipelined")),
        };
        Ok(Config {
            kv_packed,
            attn,
            tier,
            mode,
            matrix_units,
            trace: flag(&var, "SMEPILOT_TRACE")?,
            log,
            disable_amx: flag(&var, "SMEPILOT_DISABLE_AMX")?,
            disable_sme: flag(&var, "SMEPILOT_DISABLE_SME")?,
            profile: match var("SMEPILOT_PROFILE") {
                None => None,
                Some(v) if v.is_empty() => return Err("SMEPILOT_PROFILE is set but empty (give a profile file's path)".into()),
                Some(v) => Some(crate::calibrate::read_profile_file(std::path::Path::new(&v)).map_err(|e| format!("SMEPILOT_PROFILE={v:?}: {e}"))?),
            },
            amx_int8: var("SMEPILOT_AMX_INT8").is_none() || flag(&var, "SMEPILOT_AMX_INT8")?,
            amx_attn: flag(&var, "SMEPILOT_AMX_ATTN")?,
            batch_invariant: flag(&var, "SMEPILOT_BATCH_INVARIANT")?,
            fuse: var("SMEPILOT_FUSE").is_none() || flag(&var, "SMEPILOT_FUSE")?,
            sme_int8: match var("SMEPILOT_SME_INT8") {
                None => None,
                Some(_) => Some(flag(&var, "SMEPILOT_SME_INT8")?),
            },
            threads,
            decline_ops,
        })
    }
}

static CONFIG: OnceLock<Result<Config, String>> = OnceLock::new();

/// The process's configuration (parsed on first use).
pub fn get() -> Result<&'static Config, &'static str> {
    CONFIG
        .get_or_init(Config::from_env)
        .as_ref()
        .map_err(|e| e.as_str())
}

pub fn log_enabled(level: LogLevel) -> bool {
    get().map_or(level <= LogLevel::Warn, |c| level <= c.log)
}

/// Where `smelog!` messages go: the message without prefix or newline, and its level.
pub type LogSink = fn(LogLevel, &str);

static LOG_SINK: std::sync::RwLock<Option<LogSink>> = std::sync::RwLock::new(None);

/// Sends every later `smelog!` message to `sink` (None: back to stderr). The plugin
/// installs ggml's logger, so that the host's log callback (llama_log_set) sees them.
pub fn set_log_sink(sink: Option<LogSink>) {
    *LOG_SINK.write().unwrap_or_else(|e| e.into_inner()) = sink;
}

/// Writes one message to the sink: stderr as "smepilot: <message>" unless one was set.
pub fn log(level: LogLevel, msg: &str) {
    let sink = *LOG_SINK.read().unwrap_or_else(|e| e.into_inner());
    match sink {
        Some(sink) => sink(level, msg),
        None => eprintln!("smepilot: {msg}"),
    }
}

#[macro_export]
macro_rules! smelog {
    ($lvl:ident, $($arg:tt)*) => {
        if $crate::config::log_enabled($crate::config::LogLevel::$lvl) {
            $crate::config::log($crate::config::LogLevel::$lvl, &format!($($arg)*));
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(pairs: &[(&str, &str)]) -> Result<Config, String> {
        Config::parse(|n| {
            pairs
                .iter()
                .find(|(k, _)| *k == n)
                .map(|(_, v)| v.to_string())
        })
    }

    #[test]
    fn defaults_when_unset() {
        let c = parse(&[]).unwrap();
        assert_eq!(c.log, LogLevel::Warn);
        assert!(!c.disable_amx && c.threads.is_none() && c.decline_ops.is_empty());
        assert!(c.mode == ModeSetting::Auto && !c.trace && c.matrix_units.is_none());
        assert!(c.tier.is_none() && c.kv_packed && c.attn == AttnSchedule::Auto && !c.batch_invariant);
    }

    #[test]
    fn valid_values_parse() {
        let c = parse(&[
            ("SMEPILOT_LOG", "info"),
            ("SMEPILOT_DISABLE_AMX", "1"),
            ("SMEPILOT_THREADS", "3"),
            ("SMEPILOT_DECLINE_OPS", "soft_max, ROPE"),
            ("SMEPILOT_MATRIX_UNITS", "1"),
        ])
        .unwrap();
        assert_eq!(c.matrix_units, Some(1));
        assert!(parse(&[("SMEPILOT_BATCH_INVARIANT", "1")]).unwrap().batch_invariant);
        assert_eq!(parse(&[("SMEPILOT_TIER", "AVX2")]).unwrap().tier, Some(Tier::Avx2));
        assert_eq!(parse(&[("SMEPILOT_FORCE_SCALAR", "1")]).unwrap().tier, Some(Tier::Scalar));
        let e = parse(&[("SMEPILOT_FORCE_SCALAR", "1"), ("SMEPILOT_TIER", "avx2")]).unwrap_err();
        assert!(e.contains("SMEPILOT_FORCE_SCALAR") && e.contains("avx2"), "{e}");
        assert_eq!(c.log, LogLevel::Info);
        assert!(c.disable_amx);
        assert_eq!(c.threads, Some(3));
        assert_eq!(
            c.decline_ops,
            vec!["SOFT_MAX".to_string(), "ROPE".to_string()]
        );
    }

    #[test]
    fn bad_values_name_the_variable() {
        for (k, v) in [
            ("SMEPILOT_LOG", "loud"),
            ("SMEPILOT_DISABLE_AMX", "maybe"),
            ("SMEPILOT_THREADS", "0"),
            ("SMEPILOT_DECLINE_OPS", "SOFTMAX"),
            ("SMEPILOT_MODE", "fast"),
            ("SMEPILOT_TRACE", "verbose"),
            ("SMEPILOT_MATRIX_UNITS", "0"),
            ("SMEPILOT_MATRIX_UNITS", "all"),
            ("SMEPILOT_TIER", "sse2"),
            ("SMEPILOT_FORCE_SCALAR", "yes please"),
            ("SMEPILOT_KV", "head-major"),
            ("SMEPILOT_ATTN", "overlapped"),
            ("SMEPILOT_BATCH_INVARIANT", "sometimes"),
        ] {
            let e = parse(&[(k, v)]).unwrap_err();
            assert!(e.contains(k) && e.contains(v), "{e}");
        }
    }

    #[test]
    fn the_profile_file_is_read_with_the_settings() {
        let dir = std::env::temp_dir().join(format!("smepilot-config-profile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let text = crate::calibrate::to_text(&crate::planner::profile::synthetic::sme_shared());
        let good = dir.join("good.txt");
        std::fs::write(&good, format!("# PUBLISHED\n# source: test\n{text}")).unwrap();
        let c = parse(&[("SMEPILOT_PROFILE", good.to_str().unwrap())]).unwrap();
        let f = c.profile.expect("profile read");
        assert_eq!(f.profile, crate::planner::profile::synthetic::sme_shared());
        assert_eq!(f.published, Some(vec!["test".to_string()]));
        // Malformed: the variable and the line are named, and the settings are refused.
        let bad = dir.join("bad.txt");
        std::fs::write(&bad, text.replacen("vector ", "vector x", 1)).unwrap();
        let line = text.lines().position(|l| l.starts_with("vector ")).unwrap() + 1;
        let e = parse(&[("SMEPILOT_PROFILE", bad.to_str().unwrap())]).unwrap_err();
        assert!(e.contains("SMEPILOT_PROFILE") && e.contains("bad.txt") && e.contains(&format!("line {line}:")), "{e}");
        let e = parse(&[("SMEPILOT_PROFILE", dir.join("missing.txt").to_str().unwrap())]).unwrap_err();
        assert!(e.contains("SMEPILOT_PROFILE") && e.contains("missing.txt"), "{e}");
        assert!(parse(&[("SMEPILOT_PROFILE", "")]).unwrap_err().contains("SMEPILOT_PROFILE"));
        let _ = std::fs::remove_dir_all(dir);
    }
}

#[cfg(test)]
mod log_tests {
    use super::*;
    use std::sync::Mutex;

    static CAUGHT: Mutex<Vec<(LogLevel, String)>> = Mutex::new(Vec::new());

    fn catch(level: LogLevel, msg: &str) {
        CAUGHT.lock().unwrap().push((level, msg.to_string()));
    }

    #[test]
    fn smelog_goes_to_the_sink_that_is_set() {
        set_log_sink(Some(catch));
        crate::smelog!(Error, "sink test {}", 42);
        crate::smelog!(Warn, "sink test warn");
        // Below the default level (warn; SMEPILOT_LOG is not set in tests): filtered out
        // before it reaches the sink.
        crate::smelog!(Debug, "sink test debug");
        set_log_sink(None);
        crate::smelog!(Error, "sink test after reset");
        // Other tests may log meanwhile: look at this test's messages only.
        let caught: Vec<_> = CAUGHT
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, m)| m.starts_with("sink test"))
            .cloned()
            .collect();
        let want_debug = log_enabled(LogLevel::Debug);
        let mut want = vec![
            (LogLevel::Error, "sink test 42".to_string()),
            (LogLevel::Warn, "sink test warn".to_string()),
        ];
        if want_debug {
            want.push((LogLevel::Debug, "sink test debug".to_string()));
        }
        assert_eq!(caught, want);
    }
}
