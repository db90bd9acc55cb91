//! The machine under the engine: CPU features and the operating-system calls the
//! engine needs (affinity, the AMX tile permission). Nothing here speaks ggml.

pub mod cpu;
pub mod memory;
pub mod os;
pub mod topology;

pub use cpu::CpuFeatures;
