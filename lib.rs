//! SMEPilot: a ggml backend plugin that runs llama.cpp's compute graphs on the CPU's
//! matrix unit (Intel AMX, Arm SME) and vector cores.
//!
//! `ffi` speaks C (ggml's vtables) and translates ggml's graphs into the engine's nodes;
//! the engine itself is the `smepilot-engine` crate (`backend/`).

pub use smepilot_engine as backend;
mod ffi;
