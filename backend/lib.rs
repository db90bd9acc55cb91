//! The SMEPilot engine: element types, tensor views, operators, kernels, the planner,
//! the executor and its thread pool. It knows nothing of ggml's C types and builds and
//! tests on its own; the plugin crate above it translates ggml's graphs into its nodes.

#![deny(unsafe_op_in_unsafe_fn)]

pub mod calibrate;
pub mod config;
pub mod dtype;
pub mod exec;
pub mod kernels;
pub mod kv_layout;
pub mod ops;
pub mod packed_copies;
pub mod plan;
pub mod planner;
pub mod platform;
pub mod tensor;
pub mod threadpool;
pub mod trace;
