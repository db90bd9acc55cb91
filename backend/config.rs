//! Settings from the environment, read once. A malformed value is an error that names
//! the variable; the plugin then refuses to register rather than guess.

use std::sync::OnceLock;

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
    /// SMEPILOT_THREADS: default thread count before llama.cpp sets one.
    pub threads: Option<usize>,
    /// SMEPILOT_DECLINE_OPS=SOFT_MAX,ROPE: ops (ggml names) reported unsupported, so
    /// the scheduler runs them elsewhere. For fallback tests and for bisecting.
    pub decline_ops: Vec<String>,
}

/// ggml op names SMEPilot may claim, i.e. what SMEPILOT_DECLINE_OPS may name.
pub const DECLINABLE_OPS: &[&str] = &[
    "GET_ROWS", "SET_ROWS", "CPY", "CONT", "DUP", "ADD", "MUL", "SCALE", "RMS_NORM", "SILU", "SWIGLU", "ROPE",
    "SOFT_MAX", "MUL_MAT", "FLASH_ATTN_EXT",
];

fn flag(name: &str) -> Result<bool, String> {
    match std::env::var(name) {
        Err(_) => Ok(false),
        Ok(v) => match v.as_str() {
            "" | "0" | "false" | "no" | "off" => Ok(false),
            "1" | "true" | "yes" | "on" => Ok(true),
            _ => Err(format!("{name}={v:?} is not a boolean (use 1 or 0)")),
        },
    }
}

impl Config {
    pub fn from_env() -> Result<Config, String> {
        let log = match std::env::var("SMEPILOT_LOG").as_deref() {
            Err(_) | Ok("") | Ok("warn") => LogLevel::Warn,
            Ok("off") => LogLevel::Off,
            Ok("error") => LogLevel::Error,
            Ok("info") => LogLevel::Info,
            Ok("debug") => LogLevel::Debug,
            Ok(v) => return Err(format!("SMEPILOT_LOG={v:?} is not one of off, error, warn, info, debug")),
        };
        let threads = match std::env::var("SMEPILOT_THREADS") {
            Err(_) => None,
            Ok(v) => match v.parse::<usize>() {
                Ok(n) if n >= 1 => Some(n),
                _ => return Err(format!("SMEPILOT_THREADS={v:?} is not a positive integer")),
            },
        };
        let decline_ops = match std::env::var("SMEPILOT_DECLINE_OPS") {
            Err(_) => Vec::new(),
            Ok(v) => {
                let ops: Vec<String> = v.split(',').map(|s| s.trim().to_uppercase()).filter(|s| !s.is_empty()).collect();
                if let Some(bad) = ops.iter().find(|o| !DECLINABLE_OPS.contains(&o.as_str())) {
                    return Err(format!(
                        "SMEPILOT_DECLINE_OPS names {bad:?}, which is not one of {}",
                        DECLINABLE_OPS.join(", ")
                    ));
                }
                ops
            }
        };
        Ok(Config { log, disable_amx: flag("SMEPILOT_DISABLE_AMX")?, threads, decline_ops })
    }
}

static CONFIG: OnceLock<Result<Config, String>> = OnceLock::new();

/// The process's configuration (parsed on first use).
pub fn get() -> Result<&'static Config, &'static str> {
    CONFIG.get_or_init(Config::from_env).as_ref().map_err(|e| e.as_str())
}

pub fn log_enabled(level: LogLevel) -> bool {
    get().map_or(level <= LogLevel::Warn, |c| level <= c.log)
}

#[macro_export]
macro_rules! smelog {
    ($lvl:ident, $($arg:tt)*) => {
        if $crate::backend::config::log_enabled($crate::backend::config::LogLevel::$lvl) {
            eprintln!("smepilot: {}", format!($($arg)*));
        }
    };
}
