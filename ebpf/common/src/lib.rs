//! `#[repr(C)]` map keys and values shared by the eBPF programs and user space.
#![no_std]

/// A service frontend key: virtual IPv4 address and port in network byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Service4Key {
    /// Virtual IPv4 address, network byte order.
    pub addr: u32,
    /// Port, network byte order.
    pub port: u16,
    /// IP protocol number (6 TCP, 17 UDP).
    pub proto: u8,
    /// Padding, always zero.
    pub pad: u8,
}
