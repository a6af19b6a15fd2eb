//! Shared plumbing for skiff's benchmarks: child processes that are killed by
//! their PID when dropped, an in-process HTTPS client for the API server,
//! latency summaries and the proxy benchmarks' namespace backend/client. Benchmarks print figures; they never assert on them
//! (DESIGN §8).

#![forbid(unsafe_code)]

pub mod https;
pub mod netlab;
pub mod process;
pub mod stats;
