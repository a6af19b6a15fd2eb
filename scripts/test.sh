#!/usr/bin/env bash
# Runs every check and test of the workspace; this is README's test command and
# what CI runs (.ci/run). Stops at the first failing step.
#
# The eBPF crate (ebpf/, skiff-ebpf) builds only for bpfel-unknown-none with
# nightly and -Z build-std, so the host steps leave it out and the last two
# steps lint and build it for its own target.
set -euo pipefail
cd "$(dirname "$0")/.."

export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}

# CI builds once, from scratch, on a machine whose free disk varies (a run
# has failed with "No space left on device"). There, no incremental caches
# (several GB for this workspace, and no use to a single build) and no line
# tables (about 70 of each test binary's 110 MB; a failing assertion still
# names its file and line, only backtraces lose them).
ci() { [[ ${CI:-} == true ]]; }
if ci; then
  export CARGO_INCREMENTAL=0 CARGO_PROFILE_DEV_DEBUG=0
fi

BPF_FLAGS=(-p skiff-ebpf --release --target bpfel-unknown-none -Z build-std=core)
summary=()

step() {
  local start=$SECONDS
  printf '\n==> %s\n' "$*"
  "$@"
  summary+=("$(printf '%5ss  %s' $((SECONDS - start)) "$*")")
}

finish() {
  local rc=$?
  printf '\n==> step times\n'
  # Free disk at the end: the first thing to check when a build step fails.
  df -h . | tail -n 1 | awk '{printf "    disk: %s used, %s free\n", $3, $4}'
  if ((${#summary[@]})); then
    printf '%s\n' "${summary[@]}"
  fi
  if [[ $rc -ne 0 ]]; then
    printf '==> FAILED (exit %s) after %ss\n' "$rc" "$SECONDS"
  else
    printf '==> all steps passed in %ss\n' "$SECONDS"
  fi
}
trap finish EXIT

step scripts/setup.sh
step cargo fmt --all -- --check
step cargo clippy --workspace --exclude skiff-ebpf --all-targets -- -D warnings
step cargo build --workspace --exclude skiff-ebpf --all-targets
# The CNI plugin as it ships (static); the CNI tests run this binary.
step scripts/build-cni.sh
# --no-fail-fast: report every failing test binary, not just the first.
step cargo test --workspace --exclude skiff-ebpf --no-fail-fast
# The host debug build is done with; under CI, free its disk for the fuzz
# build (its own target dir, every dependency again with coverage flags).
if ci; then
  step rm -rf target/debug
fi
# The DNS packet handler under libFuzzer for a bounded time (dns/fuzz is its
# own workspace, built with nightly by cargo-fuzz from scripts/setup.sh).
step bash -c 'cd dns && cargo +nightly fuzz run --dev --sanitizer none packet -- -max_total_time=60'
step cargo +nightly clippy "${BPF_FLAGS[@]}" -- -D warnings
step cargo +nightly build "${BPF_FLAGS[@]}"
