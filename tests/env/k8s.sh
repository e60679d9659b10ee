#!/usr/bin/env bash
# The Kubernetes control plane of the local environment (DESIGN.md §5): etcd,
# kube-apiserver and kube-controller-manager on loopback, built from the
# k8s.io/kubernetes Go module through the wrapper module in tests/env/k8s/.
#
#   tests/env/k8s.sh up     build once (cached in $BIN_DIR), start, wait, write $ENV_DIR/k8s.env
#   tests/env/k8s.sh down   stop all three; certificates stay, etcd data is wiped on the next up
#   tests/env/k8s.sh build [BINARY...]   build only (default: the control plane's three)
#
# No node of its own: API objects and the controllers a node needs (garbage collector,
# namespaces, service accounts, deployments, replica sets, endpoints, node lifecycle).
# tests/env/node.sh adds a node (kubelet, kube-scheduler),
# built here with `k8s.sh build kube-scheduler kubelet`. The apiserver is its own service-account
# token issuer (https://127.0.0.1:$APISERVER_PORT) and accepts the audiences `vault` and
# `api://AzureADTokenExchange` besides its own.
source "$(dirname "$0")/lib.sh"

MOD_DIR=$ROOT/tests/env/k8s
# The version is the one the wrapper module requires: go.mod is the single source.
K8S_VERSION=$(awk '$1 == "k8s.io/kubernetes" { print $2; exit }' "$MOD_DIR/go.mod")
# Keyed by version, one file per binary: a missing binary is built alone, the others are
# kept. After editing tests/env/k8s/cmd, delete this directory to rebuild.
K8S_BIN=$BIN_DIR/k8s-$K8S_VERSION
# The control plane, built by `up`; the node's binaries (tests/env/node.sh) by `build`.
BINARIES=(etcd kube-apiserver kube-controller-manager)
NODE_BINARIES=(kube-scheduler kubelet)

STATE=$ENV_DIR/k8s
PKI=$STATE/pki
KUBECONFIG_FILE=$STATE/kubeconfig
API_URL=https://127.0.0.1:$APISERVER_PORT
SERVICE_CIDR=10.96.0.0/16
mkdir -p "$STATE"

# curl against the apiserver as cluster admin.
api() {
  curl -sS --fail --max-time 5 --cacert "$PKI/ca.crt" \
    --cert "$PKI/admin.crt" --key "$PKI/admin.key" "$@"
}

# build [BINARY...]: builds those of BINARY (default: the control plane) that are not in
# $K8S_BIN yet, in one go build, and adds them next to the ones already there.
build() {
  local b missing=()
  (($#)) || set -- "${BINARIES[@]}"
  for b in "$@"; do
    [[ -d $MOD_DIR/cmd/$b ]] || die k8s "unknown binary $b; tests/env/k8s/cmd has: $(ls "$MOD_DIR/cmd" | tr '\n' ' ')"
    [[ -x $K8S_BIN/$b ]] || missing+=("$b")
  done
  ((${#missing[@]})) || return 0

  command -v go >/dev/null ||
    die k8s "go is not on PATH; install Go >= $(awk '$1 == "go" { print $2 }' "$MOD_DIR/go.mod") (https://go.dev/dl) and rerun"
  local buildlog=$STATE/build.log tmp=$K8S_BIN.tmp.$$
  local v=k8s.io/component-base/version minor=${K8S_VERSION#v1.}
  minor=${minor%%.*}
  local pkgs=() names
  for b in "${missing[@]}"; do pkgs+=("./cmd/$b"); done
  names=$(printf '%s, ' "${missing[@]}")
  names=${names%, }
  log "building $names $K8S_VERSION into $K8S_BIN"
  log "  first time only: 5-25 minutes on 2 cores; follow it with: tail -f $buildlog"
  rm -rf "$tmp" && mkdir -p "$tmp"
  local start=$SECONDS
  # Niced: the machine's cores are shared with other builds and tests.
  if ! (cd "$MOD_DIR" && nice -n 10 go build -v -trimpath -buildvcs=false \
    -ldflags="-s -w -X $v.gitVersion=$K8S_VERSION -X $v.gitMajor=1 -X $v.gitMinor=$minor -X $v.gitTreeState=clean" \
    -o "$tmp/" "${pkgs[@]}") >"$buildlog" 2>&1; then
    rm -rf "$tmp"
    tail -n 20 "$buildlog" >&2
    die k8s "building $names failed; see $buildlog (needs Go >= $(awk '$1 == "go" { print $2 }' "$MOD_DIR/go.mod") and access to the Go module proxy)"
  fi
  # One rename per binary: running binaries and concurrent readers never see a partial file.
  mkdir -p "$K8S_BIN"
  for b in "${missing[@]}"; do mv -f "$tmp/$b" "$K8S_BIN/$b"; done
  rm -rf "$tmp"
  log "  built in $((SECONDS - start))s"
}

# sign NAME SUBJECT EXTENSIONS: a key and a certificate signed by the local CA.
sign() {
  local dir=$1 name=$2 subj=$3 ext=$4
  openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$dir/$name.key" 2>/dev/null
  openssl req -new -key "$dir/$name.key" -subj "$subj" -out "$dir/$name.csr"
  printf '%s\n' "$ext" >"$dir/$name.ext"
  openssl x509 -req -in "$dir/$name.csr" -CA "$dir/ca.crt" -CAkey "$dir/ca.key" \
    -set_serial "0x$(openssl rand -hex 16)" -days 3650 -sha256 \
    -extfile "$dir/$name.ext" -out "$dir/$name.crt" 2>/dev/null
  rm -f "$dir/$name.csr" "$dir/$name.ext"
}

# pki: generated once, kept across down/up so clients that trusted the CA keep working.
pki() {
  [[ -f $PKI/.complete ]] && return 0
  command -v openssl >/dev/null || die k8s "openssl is not on PATH; install it (apt-get install openssl)"
  local tmp=$PKI.tmp.$$
  rm -rf "$tmp" && mkdir -p "$tmp"
  local rc=0
  set +e
  (
    set -e
    umask 077
    openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$tmp/ca.key" 2>/dev/null
    openssl req -x509 -new -key "$tmp/ca.key" -subj "/CN=vaultsync-local-ca" -days 3650 -sha256 \
      -set_serial "0x$(openssl rand -hex 16)" \
      -addext "basicConstraints=critical,CA:TRUE" \
      -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" \
      -addext "subjectKeyIdentifier=hash" -out "$tmp/ca.crt"
    local common="subjectKeyIdentifier=hash
authorityKeyIdentifier=keyid
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment"
    sign "$tmp" apiserver "/CN=kube-apiserver" "$common
extendedKeyUsage=serverAuth
subjectAltName=IP:127.0.0.1,IP:::1,DNS:localhost,IP:10.96.0.1,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
    sign "$tmp" admin "/O=system:masters/CN=kubernetes-admin" "$common
extendedKeyUsage=clientAuth"
    # Service-account token signing key pair (RS256).
    openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$tmp/sa.key" 2>/dev/null
    openssl pkey -in "$tmp/sa.key" -pubout -out "$tmp/sa.pub"
    chmod 644 "$tmp"/*.crt "$tmp/sa.pub"
  )
  rc=$?
  set -e
  ((rc == 0)) || { rm -rf "$tmp"; die k8s "generating certificates with openssl failed (see the messages above)"; }
  touch "$tmp/.complete"
  rm -rf "$PKI"
  mv "$tmp" "$PKI"
}

write_kubeconfig() {
  local b64='base64 -w0'
  cat >"$KUBECONFIG_FILE.tmp" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: vaultsync-local
  cluster:
    server: $API_URL
    certificate-authority-data: $($b64 <"$PKI/ca.crt")
users:
- name: admin
  user:
    client-certificate-data: $($b64 <"$PKI/admin.crt")
    client-key-data: $($b64 <"$PKI/admin.key")
contexts:
- name: vaultsync-local
  context:
    cluster: vaultsync-local
    user: admin
    namespace: default
current-context: vaultsync-local
EOF
  chmod 600 "$KUBECONFIG_FILE.tmp"
  mv "$KUBECONFIG_FILE.tmp" "$KUBECONFIG_FILE"
}

write_env() {
  cat >"$ENV_DIR/k8s.env.tmp" <<EOF
export KUBECONFIG="$KUBECONFIG_FILE"
export K8S_API_URL="$API_URL"
export K8S_CA_FILE="$PKI/ca.crt"
export K8S_SA_ISSUER="$API_URL"
EOF
  mv "$ENV_DIR/k8s.env.tmp" "$ENV_DIR/k8s.env"
}

etcd_healthy() { curl -sS --fail --max-time 2 "http://127.0.0.1:$ETCD_PORT/health" | grep -q '"health":"true"'; }
api_ready() { api "$API_URL/readyz" | grep -qx ok; }
kcm_healthy() { curl -sS --fail --max-time 2 --cacert "$PKI/ca.crt" "https://127.0.0.1:$KCM_PORT/healthz" | grep -qx ok; }

# The flags the running control plane was started with are those of this script: a
# control plane started by an older version of it is restarted.
FLAGS_SUM=$(sha256sum <"${BASH_SOURCE[0]}" | cut -c1-16)
healthy() {
  is_running "$STATE/etcd.pid" && is_running "$STATE/kube-apiserver.pid" &&
    is_running "$STATE/kube-controller-manager.pid" && api_ready && kcm_healthy &&
    [[ $(cat "$STATE/started-by" 2>/dev/null) == "$FLAGS_SUM" ]]
}

# alive_and COMPONENT CHECK: our process is still running and CHECK passes, so a
# stranger listening on the same port never passes for our component.
alive_and() { is_running "$STATE/$1.pid" && "$2"; }

# await COMPONENT CHECK SECONDS: waits, or stops everything and fails naming the log.
await() {
  local comp=$1 check=$2 timeout=$3
  if ! wait_for k8s "$timeout" alive_and "$comp" "$check"; then
    local state="did not become ready within ${timeout}s"
    is_running "$STATE/$comp.pid" || state="exited"
    tail -n 15 "$STATE/$comp.log" >&2 || true
    down
    die k8s "$comp $state; see $STATE/$comp.log (a port in use? a stale process? try: bash tests/env/k8s.sh down && bash tests/env/k8s.sh up)"
  fi
}

port_free() {
  local name=$1 port=$2
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    die k8s "port $port ($name) on 127.0.0.1 is already in use by another process (see: ss -ltnp 'sport = :$port'); stop it or set $name to a free port"
  fi
}

start_etcd() {
  rm -rf "$STATE/etcd"
  start_bg "$STATE/etcd.pid" "$STATE/etcd.log" "$K8S_BIN/etcd" \
    --name=vaultsync \
    --data-dir="$STATE/etcd" \
    --listen-client-urls="http://127.0.0.1:$ETCD_PORT" \
    --advertise-client-urls="http://127.0.0.1:$ETCD_PORT" \
    --listen-peer-urls="http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-advertise-peer-urls="http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster="vaultsync=http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster-state=new \
    --unsafe-no-fsync \
    --log-level=warn
  await etcd etcd_healthy 30
}

start_apiserver() {
  # No service proxy: the endpoint reconciler is off because a loopback advertise address
  # is not a valid endpoint (pods reach the apiserver at 10.96.0.1 through the node's TCP
  # proxy, tests/env/node.sh), and the apiserver dials webhooks and service proxies at
  # the endpoints' pod addresses (--enable-aggregator-routing), not at ClusterIPs.
  start_bg "$STATE/kube-apiserver.pid" "$STATE/kube-apiserver.log" "$K8S_BIN/kube-apiserver" \
    --etcd-servers="http://127.0.0.1:$ETCD_PORT" \
    --bind-address=127.0.0.1 \
    --advertise-address=127.0.0.1 \
    --secure-port="$APISERVER_PORT" \
    --tls-cert-file="$PKI/apiserver.crt" \
    --tls-private-key-file="$PKI/apiserver.key" \
    --client-ca-file="$PKI/ca.crt" \
    --authorization-mode=Node,RBAC \
    --service-account-issuer="$API_URL" \
    --service-account-key-file="$PKI/sa.pub" \
    --service-account-signing-key-file="$PKI/sa.key" \
    --api-audiences="$API_URL,vault,api://AzureADTokenExchange" \
    --service-cluster-ip-range="$SERVICE_CIDR" \
    --endpoint-reconciler-type=none \
    --enable-aggregator-routing=true \
    --profiling=false
  await kube-apiserver api_ready 120
  # The bootstrap controller creates default, kube-system, kube-public, kube-node-lease.
  wait_for k8s 30 api "$API_URL/api/v1/namespaces/kube-system" ||
    die k8s "kube-apiserver is ready but namespace kube-system is missing; see $STATE/kube-apiserver.log"
  # Let relying parties (OpenBao JWT auth, the local token endpoint) read the OIDC
  # discovery document and JWKS without credentials, as a public issuer would.
  api -o /dev/null -X POST -H 'Content-Type: application/json' \
    "$API_URL/apis/rbac.authorization.k8s.io/v1/clusterrolebindings" -d '{
      "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
      "metadata": {"name": "vaultsync-local:service-account-issuer-discovery"},
      "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                  "name": "system:service-account-issuer-discovery"},
      "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group",
                    "name": "system:unauthenticated"}]}' ||
    die k8s "could not create the issuer discovery ClusterRoleBinding; see $STATE/kube-apiserver.log"
}

# What a node needs besides API objects: Deployments make ReplicaSets make pods, Services
# get endpoints, the node lifecycle controller lifts the node's not-ready taint.
KCM_CONTROLLERS=garbage-collector-controller,namespace-controller,serviceaccount-controller,serviceaccount-token-controller,root-ca-certificate-publisher-controller,clusterrole-aggregation-controller,deployment-controller,replicaset-controller,endpoints-controller,endpointslice-controller,endpointslice-mirroring-controller,node-lifecycle-controller,disruption-controller,pod-garbage-collector-controller

start_kcm() {
  start_bg "$STATE/kube-controller-manager.pid" "$STATE/kube-controller-manager.log" \
    "$K8S_BIN/kube-controller-manager" \
    --kubeconfig="$KUBECONFIG_FILE" \
    --authentication-kubeconfig="$KUBECONFIG_FILE" \
    --authorization-kubeconfig="$KUBECONFIG_FILE" \
    --authentication-skip-lookup=true \
    --client-ca-file="$PKI/ca.crt" \
    --bind-address=127.0.0.1 \
    --secure-port="$KCM_PORT" \
    --tls-cert-file="$PKI/apiserver.crt" \
    --tls-private-key-file="$PKI/apiserver.key" \
    --controllers="$KCM_CONTROLLERS" \
    --use-service-account-credentials=false \
    --service-account-private-key-file="$PKI/sa.key" \
    --root-ca-file="$PKI/ca.crt" \
    --leader-elect=false \
    --kube-api-qps=100 \
    --kube-api-burst=200 \
    --profiling=false
  await kube-controller-manager kcm_healthy 60
  # The service-account controller is working once `default` has its ServiceAccount.
  wait_for k8s 60 api "$API_URL/api/v1/namespaces/default/serviceaccounts/default" ||
    die k8s "kube-controller-manager did not create the default ServiceAccount; see $STATE/kube-controller-manager.log"
}

up() {
  build
  pki
  write_kubeconfig
  if healthy; then
    log "kubernetes control plane already running at $API_URL; reusing it"
    write_env
    return 0
  fi
  # Partly running or stale: start over from a clean slate.
  down
  port_free ETCD_PORT "$ETCD_PORT"
  port_free ETCD_PEER_PORT "$ETCD_PEER_PORT"
  port_free APISERVER_PORT "$APISERVER_PORT"
  port_free KCM_PORT "$KCM_PORT"
  start_etcd
  start_apiserver
  start_kcm
  echo "$FLAGS_SUM" >"$STATE/started-by"
  write_env
  log "kubernetes $K8S_VERSION control plane up at $API_URL (KUBECONFIG=$KUBECONFIG_FILE)"
}

down() {
  stop_pid "$STATE/kube-controller-manager.pid"
  stop_pid "$STATE/kube-apiserver.pid"
  stop_pid "$STATE/etcd.pid"
  rm -f "$ENV_DIR/k8s.env"
}

case ${1:-} in
  up) up ;;
  down) down ;;
  build) shift; build "$@" ;;
  *) echo "usage: $0 up|down|build [BINARY...]  (BINARY: ${BINARIES[*]} ${NODE_BINARIES[*]})" >&2; exit 2 ;;
esac
