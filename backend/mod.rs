//! The engine: types, tensor views, operators, kernels, executor and thread pool.

pub mod config;
pub mod cpu;
pub mod dtype;
pub mod exec;
pub mod kernels;
pub mod ops;
pub mod planner;
pub mod tensor;
pub mod threadpool;
