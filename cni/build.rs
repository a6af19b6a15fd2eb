//! Links the `skiff-cni` binary as a position-dependent executable.
//!
//! A runtime starts the plugin once per pod operation, so its start-up is part
//! of every ADD. As a PIE the dynamic loader first applies ~9,000 relative
//! relocations, copying-on-write every page of `.data.rel.ro` it touches —
//! about 0.15 ms of CPU per run on the CNI bench machine. Linked at a fixed
//! address those are resolved by the linker instead. (The library, and every
//! other binary of the workspace, are unaffected.) The cost: no ASLR for the
//! binary's own image; shared libraries, heap and stacks are still randomised.

fn main() {
    println!("cargo:rustc-link-arg-bin=skiff-cni=-no-pie");
    println!("cargo:rerun-if-changed=build.rs");
}
