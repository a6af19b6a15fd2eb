//! Builds the eBPF programs in `ebpf/` (crate skiff-ebpf) for bpfel-unknown-none
//! with the nightly toolchain and bpf-linker (scripts/setup.sh installs both);
//! `src/ebpf/attach.rs` embeds the resulting object. aya-build runs the nested
//! cargo in its own target dir under OUT_DIR, so it never waits on our lock.

fn main() {
    // The nested cargo's progress lines would otherwise surface as
    // `cargo:warning`s on every rebuild; compiler diagnostics still do.
    std::env::set_var("CARGO_TERM_QUIET", "true");
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../ebpf");
    let ebpf = aya_build::Package {
        name: "skiff-ebpf",
        root_dir: root,
        ..Default::default()
    };
    if let Err(e) = aya_build::build_ebpf([ebpf], aya_build::Toolchain::default()) {
        panic!(
            "building the eBPF programs failed (needs `rustup toolchain install nightly \
             --component rust-src` and `cargo install bpf-linker`, see scripts/setup.sh): {e:#}"
        );
    }
}
