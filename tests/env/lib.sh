# Shared helpers for the local environment scripts. Source it; do not run it.
# Every component script (k8s.sh, openbao.sh, ...) takes `up` or `down`, keeps its
# state under $ENV_DIR/<component>/, and on `up` writes $ENV_DIR/<component>.env with
# `export NAME=value` lines that up.sh gathers into $ENV_DIR/env.sh.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
ENV_DIR=${VAULTSYNC_ENV_DIR:-$ROOT/target/env}
# Built and downloaded binaries, keyed by version, survive `make clean` and fresh clones.
CACHE_DIR=${VAULTSYNC_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/vaultsync}
TOOLS_VENV=$CACHE_DIR/venv
BIN_DIR=$CACHE_DIR/bin
mkdir -p "$ENV_DIR" "$CACHE_DIR" "$BIN_DIR"
export PATH="$BIN_DIR:$TOOLS_VENV/bin:$PATH"

# Fixed loopback ports, chosen away from the usual defaults so a developer's own
# services do not collide with the environment.
ETCD_PORT=${ETCD_PORT:-23790}
ETCD_PEER_PORT=${ETCD_PEER_PORT:-23800}
APISERVER_PORT=${APISERVER_PORT:-16443}
KCM_PORT=${KCM_PORT:-10357}
BAO_PORT=${BAO_PORT:-18200}
PG_PORT=${PG_PORT:-15432}
# Key Vault listens on 443, the port real vault URLs imply: SDKs that compare the vault URL
# with the challenge resource (the Python SDK compares the port too) then accept it as is.
KEYVAULT_PORT=${KEYVAULT_PORT:-443}
# The vault URL suffix for the port: none for 443.
if [[ $KEYVAULT_PORT == 443 ]]; then KEYVAULT_PORT_SUFFIX=""; else KEYVAULT_PORT_SUFFIX=":$KEYVAULT_PORT"; fi
TOKEN_PORT=${TOKEN_PORT:-18444}
# The node's pod network (tests/env/node.sh) and the machine's address on its bridge,
# where pods reach the loopback services above through TCP proxies. The Key Vault's and
# the token endpoint's certificate names it too.
POD_SUBNET=${NODE_POD_SUBNET:-10.245.0.0/24}
POD_HOST_IP=${POD_SUBNET%.*}.1

log() { printf '[env] %s\n' "$*" >&2; }

# die COMPONENT MESSAGE: a failure names the component and the fix.
die() { local comp=$1; shift; printf '[env] FAILED %s: %s\n' "$comp" "$*" >&2; exit 1; }

# step NAME COMMAND...: runs one step, printing what it does and how long it took.
step() {
  local name=$1; shift
  local start=$SECONDS
  log "-> $name"
  "$@"
  log "   $name done in $((SECONDS - start))s"
}

# wait_for COMPONENT SECONDS COMMAND...: polls COMMAND until it succeeds.
wait_for() {
  local comp=$1 timeout=$2; shift 2
  local deadline=$((SECONDS + timeout))
  until "$@" >/dev/null 2>&1; do
    if ((SECONDS >= deadline)); then
      return 1
    fi
    sleep 0.5
  done
}

# is_running PIDFILE: the process recorded in PIDFILE is alive.
is_running() { [[ -f $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

# start_bg PIDFILE LOGFILE COMMAND...: starts a daemon in its own session so that
# stop_pid can end it and all its children.
start_bg() {
  local pidfile=$1 logfile=$2; shift 2
  setsid "$@" >"$logfile" 2>&1 < /dev/null &
  echo $! >"$pidfile"
}

# stop_pid PIDFILE: ends the process group started by start_bg and waits for it.
stop_pid() {
  local pidfile=$1 pid
  [[ -f $pidfile ]] || return 0
  pid=$(cat "$pidfile")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL -- "-$pid" 2>/dev/null || true
  fi
  rm -f "$pidfile"
}
