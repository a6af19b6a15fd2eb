//! eBPF programs of the skiff data path (built for bpfel-unknown-none).
//!
//! Until the socket load balancer lands (issue 7) this holds a pass-through
//! cgroup/connect4 program that proves the toolchain builds and links.
#![no_std]
#![no_main]

use aya_ebpf::{macros::cgroup_sock_addr, programs::SockAddrContext};

/// Allows every connect(); the service lookup replaces this in issue 7.
#[cgroup_sock_addr(connect4)]
pub fn skiff_connect4(_ctx: SockAddrContext) -> i32 {
    1
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
