//! SMEPilot: a ggml backend plugin that runs llama.cpp's compute graphs on the CPU's
//! matrix unit (Intel AMX, Arm SME) and vector cores.
//!
//! `ffi` is the only module that speaks C (ggml's vtables); `backend` is the engine.

pub mod backend;
mod ffi;
