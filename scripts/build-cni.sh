#!/usr/bin/env bash
# Builds the skiff-cni plugin binary the way it ships: statically linked and
# position-dependent, as the reference CNI plugins ship as static Go binaries.
# A runtime starts the plugin once per pod operation, so its start-up is part
# of every ADD; a static binary skips the dynamic loader (cni/README.md, "What
# an ADD costs"). Prints the binary's path on stdout (cargo's output goes to
# stderr), e.g. to install it as /opt/cni/bin/skiff.
#
# Idempotent: cargo rebuilds only what changed. The binary lands in
# target/<host triple>/release/skiff-cni, where cni-bench and the CNI tests
# look for it. `--target` keeps the flags off build scripts, proc macros and
# the rest of the workspace (whose target/release stays dynamically linked);
# the CARGO_PROFILE_RELEASE_* settings apply to this build only: whole-program
# LTO in one codegen unit (a smaller, denser text, so fewer page faults at
# every start) and no debug info (a 4 MB binary to install instead of 27 MB;
# symbols stay, so perf still names functions).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"

host=$(rustc -vV | sed -n 's/^host: //p')
[[ -n $host ]] || {
  echo "[build-cni] error: rustc -vV names no host triple" >&2
  exit 1
}
RUSTFLAGS="-C target-feature=+crt-static -C relocation-model=static" \
  CARGO_PROFILE_RELEASE_LTO=fat CARGO_PROFILE_RELEASE_CODEGEN_UNITS=1 \
  CARGO_PROFILE_RELEASE_DEBUG=0 \
  cargo build --release --target "$host" -p skiff-cni --bin skiff-cni >&2
bin="${CARGO_TARGET_DIR:-$PWD/target}/$host/release/skiff-cni"
[[ -x $bin ]] || {
  echo "[build-cni] error: $bin missing after the build" >&2
  exit 1
}
echo "$bin"
