//! The C side: bindgen bindings of the pinned ggml headers and the reg / device /
//! buffer type / buffer / backend vtables implemented in Rust. Nothing else in the
//! crate speaks C.

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
mod registry;
mod stream;
