//! `#[repr(C)]` map keys and values shared by the eBPF programs and user space,
//! and the pure decision logic both sides need (backend selection, flow hashing,
//! the Maglev table). Everything here is `no_std` so the eBPF crate can use it;
//! the Maglev table *builder* and the aya `Pod` impls need the `user` feature.
#![no_std]

#[cfg(any(test, feature = "user"))]
extern crate std;

#[cfg(any(test, feature = "user"))]
pub mod maglev;
pub mod maps;
pub mod select;
pub mod service;

pub use maps::*;
pub use service::*;
