//! Helpers shared by the control plane's integration tests.
//!
//! Each test binary includes this with `mod support;` and uses a different
//! subset of it, hence the `dead_code` allowance.
#![allow(dead_code)]

pub mod etcd;
