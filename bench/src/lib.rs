//! Shared plumbing for skiff's benchmarks: child processes that are killed by
//! their PID when dropped, an in-process HTTPS client for the API server, and
//! latency summaries. Benchmarks print figures; they never assert on them
//! (DESIGN §8).

#![forbid(unsafe_code)]

pub mod https;
pub mod process;
pub mod stats;
