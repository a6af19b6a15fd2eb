//! eBPF programs of the skiff data path (built for bpfel-unknown-none).
//!
//! - `sock`: socket-level ClusterIP load balancing on cgroup hooks: the backend
//!   is chosen once per connect()/sendmsg() and the address rewritten, so no
//!   packet is ever NATed on this path.
//! - `tc`: NodePort / externalIPs / LoadBalancer IPs on node interfaces: DNAT
//!   with a Maglev lookup, a connection table, reverse NAT and SNAT.
//!
//! The maps (`maps`) are pinned by name; layouts live in `skiff-common`.
#![no_std]
#![no_main]

mod maps;
mod sock;
mod tc;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
