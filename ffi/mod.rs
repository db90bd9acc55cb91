//! The C side: bindgen bindings of the pinned ggml headers and the reg / device /
//! buffer type / buffer / backend vtables implemented in Rust. Nothing else in the
//! crate speaks C.
//!
//! No panic may unwind out of an `extern "C"` function into ggml: each entry point that does
//! more than return a constant runs its body in [`guard`], which logs the panic and returns
//! a failure value (null, false, GGML_STATUS_FAILED).

#[allow(
    non_camel_case_types,
    non_upper_case_globals,
    non_snake_case,
    dead_code,
    clippy::all
)]
pub mod sys {
    include!(concat!(env!("OUT_DIR"), "/ggml_bindings.rs"));
}

mod buffer;
mod convert;
mod kv_buffer;
mod registry;
mod stream;
#[cfg(test)]
mod tests;

use smepilot_engine::config::LogLevel;

/// The body of an `extern "C"` entry point: a panic must not unwind into ggml (Rust
/// would abort the host process there), so it is logged and `failed` returned instead.
pub(crate) fn guard<T>(entry: &str, failed: T, body: impl FnOnce() -> T) -> T {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(body)) {
        Ok(v) => v,
        Err(payload) => {
            let msg = payload
                .downcast_ref::<&str>()
                .copied()
                .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
                .unwrap_or("(a panic without a message)");
            smepilot_engine::smelog!(Error, "{entry} failed: panic: {msg}");
            failed
        }
    }
}

/// The engine's log sink in the plugin: ggml's logger, so that the host's callback
/// (llama_log_set / ggml_log_set) receives SMEPilot's messages like ggml's own.
fn ggml_log_sink(level: LogLevel, msg: &str) {
    let level = match level {
        LogLevel::Error => sys::ggml_log_level_GGML_LOG_LEVEL_ERROR,
        LogLevel::Warn => sys::ggml_log_level_GGML_LOG_LEVEL_WARN,
        LogLevel::Info => sys::ggml_log_level_GGML_LOG_LEVEL_INFO,
        LogLevel::Debug | LogLevel::Off => sys::ggml_log_level_GGML_LOG_LEVEL_DEBUG,
    };
    // ggml's messages carry their own newline; a NUL would end the C string early.
    let text = std::ffi::CString::new(format!("smepilot: {}\n", msg.replace('\0', " ")))
        .expect("NULs were replaced");
    // SAFETY: the format "%s" takes exactly one argument, a NUL-terminated string, which
    // `text` is and outlives the call; ggml_log_internal is thread-safe (it formats into
    // its own buffer and calls the callback).
    unsafe { sys::ggml_log_internal(level, c"%s".as_ptr(), text.as_ptr()) };
}

/// Routes the engine's messages through ggml's logger (at registration).
pub(crate) fn install_log_sink() {
    smepilot_engine::config::set_log_sink(Some(ggml_log_sink));
}
