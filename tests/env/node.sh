#!/usr/bin/env bash
# One real node for the local control plane (tests/env/k8s.sh), so pods run:
# containerd + runc + the bridge CNI plugin from Debian, a kubelet and a kube-scheduler
# built from the same k8s.io/kubernetes module as the control plane.
#
#   tests/env/node.sh up      build/install what is missing, start, wait for Node `localhost`
#                             Ready and for a smoke pod to run to completion
#   tests/env/node.sh down    remove the node completely: pods, containers, mounts, cgroups,
#                             the bridge, the Node object; certificates and built images stay
#   tests/env/node.sh status  what runs, the Node's condition, the pods on it
#
# It needs the control plane up (bash tests/env/k8s.sh up) and never restarts it.
#
# What it leaves alone on the machine: no iptables rule (makeIPTablesUtilChains: false,
# bridge without ipMasq), net.ipv4.ip_forward stays as it is (bridge without isGateway;
# checked), no address on a real interface, no kernel tunable (the kubelet's are shadowed in
# the node's own mount namespace, see tests/env/node/mount-ns.sh), no mount in the machine's
# mount table (all in that namespace), cgroups only under /vaultsync-node in each hierarchy,
# and the kubelet's eviction thresholds are tiny so it never decides the machine is short of
# disk or memory. Its ports are on 127.0.0.1 only.
source "$(dirname "$0")/lib.sh"

K8S_STATE=$ENV_DIR/k8s
PKI=$K8S_STATE/pki
ADMIN_KUBECONFIG=$K8S_STATE/kubeconfig
API_URL=https://127.0.0.1:$APISERVER_PORT
K8S_VERSION=$(awk '$1 == "k8s.io/kubernetes" { print $2; exit }' "$ROOT/tests/env/k8s/go.mod")
K8S_BIN=$BIN_DIR/k8s-$K8S_VERSION
NODE_LIB=$ROOT/tests/env/node

NODE_NAME=localhost
KUBELET_PORT=${KUBELET_PORT:-10350}
KUBELET_HEALTHZ_PORT=${KUBELET_HEALTHZ_PORT:-10348}
SCHEDULER_PORT=${SCHEDULER_PORT:-10359}
BRIDGE=${NODE_BRIDGE:-vsbr0}
# Pods reach the machine's loopback services through addresses on the bridge and a TCP
# proxy (socat) per service: the apiserver as the `kubernetes` Service (10.96.0.1:443, in
# the apiserver certificate's names), OpenBao at $HOST_IP:8200, the local Key Vault at
# $HOST_IP:$KEYVAULT_PORT and its token endpoint at $HOST_IP:$TOKEN_PORT (pods name the
# vault hosts with hostAliases, as /etc/hosts does on the machine). Nothing is forwarded or
# NATed: the packets are addressed to the machine itself.
HOST_IP=$POD_HOST_IP
APISERVER_SERVICE_IP=10.96.0.1
BAO_IN_CLUSTER=http://$HOST_IP:8200
CGROUP_ROOT=/vaultsync-node

STATE=$ENV_DIR/node
NODE_PKI=$STATE/pki
CTRD=$STATE/containerd
CTRD_SOCK=$CTRD/containerd.sock
KUBELET_DIR=$STATE/kubelet
CNI_DIR=$STATE/cni
IMAGES_CACHE=$CACHE_DIR/images

# Images built here, imported into containerd under these exact names (no registry).
PAUSE_IMAGE=vaultsync.local/pause:$K8S_VERSION
SMOKE_IMAGE=vaultsync.local/node-smoke:1
SMOKE_POD=vaultsync-node-smoke
OPERATOR_REPO=vaultsync.local/vaultsync
UTILITY_IMAGE=vaultsync.local/utility:1
mkdir -p "$STATE"

kc() { KUBECONFIG=$ADMIN_KUBECONFIG kubectl "$@"; }
ctr_() { ctr --address "$CTRD_SOCK" --namespace k8s.io "$@"; }
ns_pid() { cat "$STATE/mount-ns.pid" 2>/dev/null; }
# in_ns COMMAND...: runs COMMAND inside the node's mount namespace.
in_ns() { nsenter --mount="/proc/$(ns_pid)/ns/mnt" -- "$@"; }

api_ready() {
  curl -sS --fail --max-time 5 --cacert "$PKI/ca.crt" --cert "$PKI/admin.crt" --key "$PKI/admin.key" \
    "$API_URL/readyz" 2>/dev/null | grep -qx ok
}

# ---------------------------------------------------------------------------------------
# prerequisites

need_control_plane() {
  [[ -f $ADMIN_KUBECONFIG && -f $PKI/ca.key ]] && api_ready ||
    die node "the control plane is not up at $API_URL; start it first: bash tests/env/k8s.sh up (or make env-up)"
  command -v kubectl >/dev/null || die node "kubectl is not on PATH; run: bash tests/env/tools.sh up"
}

build_binaries() {
  bash "$ROOT/tests/env/k8s.sh" build kube-scheduler kubelet
}

install_packages() {
  local missing=()
  command -v containerd >/dev/null && command -v ctr >/dev/null || missing+=(containerd)
  command -v runc >/dev/null || [[ -x /usr/sbin/runc ]] || missing+=(runc)
  [[ -x /usr/lib/cni/bridge && -x /usr/lib/cni/host-local && -x /usr/lib/cni/loopback ]] ||
    missing+=(containernetworking-plugins)
  for t in nsenter unshare ip gcc socat; do command -v $t >/dev/null || missing+=("$t"); done
  ((${#missing[@]})) || { log "   containerd, runc, CNI plugins, gcc, socat already installed"; return 0; }
  local pkgs=() p
  for p in "${missing[@]}"; do
    case $p in
      nsenter | unshare) pkgs+=(util-linux) ;;
      ip) pkgs+=(iproute2) ;;
      gcc) pkgs+=(gcc libc6-dev) ;;
      *) pkgs+=("$p") ;;
    esac
  done
  command -v apt-get >/dev/null ||
    die node "missing ${pkgs[*]} and no apt-get here; install them with the system's package manager"
  log "   installing ${pkgs[*]} from Debian"
  # policy-rc.d or not, nothing is started: Debian's containerd service is not used.
  if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${pkgs[@]}" \
    >"$STATE/apt.log" 2>&1; then
    apt-get update -qq >>"$STATE/apt.log" 2>&1 || true
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${pkgs[@]}" \
      >>"$STATE/apt.log" 2>&1 ||
      die node "apt-get install ${pkgs[*]} failed; see $STATE/apt.log (run apt-get update, check the Debian mirror)"
  fi
}

# ---------------------------------------------------------------------------------------
# images: built once into $IMAGES_CACHE, keyed by what they are built from

build_images() {
  mkdir -p "$IMAGES_CACHE"
  local mod pause_src key tmp
  mod=$(cd "$ROOT/tests/env/k8s" && go list -m -f '{{.Dir}}' k8s.io/kubernetes 2>/dev/null || true)
  if [[ -z $mod ]]; then
    (cd "$ROOT/tests/env/k8s" && go mod download k8s.io/kubernetes) >"$STATE/gomod.log" 2>&1 || true
    mod=$(cd "$ROOT/tests/env/k8s" && go list -m -f '{{.Dir}}' k8s.io/kubernetes 2>/dev/null || true)
  fi
  [[ -n $mod ]] ||
    die node "cannot find the k8s.io/kubernetes module source; see $STATE/gomod.log (needs the Go module proxy): cd tests/env/k8s && go mod download k8s.io/kubernetes"
  pause_src=$mod/build/pause/linux/pause.c
  [[ -f $pause_src ]] || die node "$pause_src is missing (a partial Go module cache?); run: go clean -modcache -n and retry"

  # Keyed by what goes in: the module's version, the image writer, the smoke program.
  key=$(sha256sum <"$NODE_LIB/oci-image.py" | cut -c1-12)
  PAUSE_TAR=$IMAGES_CACHE/pause-$K8S_VERSION-$key.tar
  if [[ ! -f $PAUSE_TAR ]]; then
    tmp=$(mktemp -d)
    gcc -Os -Wall -Werror -static -DVERSION="$K8S_VERSION-vaultsync" -o "$tmp/pause" "$pause_src" 2>"$STATE/gcc.log" ||
      die node "compiling pause.c failed; see $STATE/gcc.log (needs gcc and libc6-dev for -static)"
    python3 "$NODE_LIB/oci-image.py" "$PAUSE_TAR" "$PAUSE_IMAGE" --file "$tmp/pause:/pause:0755" \
      --entrypoint /pause --user 65535:65535 >/dev/null || die node "writing the pause image failed"
    rm -rf "$tmp"
    log "   built $PAUSE_IMAGE -> $PAUSE_TAR"
  fi

  key=$(cat "$NODE_LIB/smoke.c" "$NODE_LIB/oci-image.py" | sha256sum | cut -c1-12)
  SMOKE_TAR=$IMAGES_CACHE/node-smoke-$key.tar
  if [[ ! -f $SMOKE_TAR ]]; then
    tmp=$(mktemp -d)
    gcc -O2 -Wall -static -o "$tmp/smoke" "$NODE_LIB/smoke.c" 2>"$STATE/gcc.log" ||
      die node "compiling tests/env/node/smoke.c failed; see $STATE/gcc.log (needs gcc and libc6-dev)"
    python3 "$NODE_LIB/oci-image.py" "$SMOKE_TAR" "$SMOKE_IMAGE" --file "$tmp/smoke:/smoke:0755" \
      --entrypoint /smoke --user 65532:65532 >/dev/null || die node "writing the smoke image failed"
    rm -rf "$tmp"
    log "   built $SMOKE_IMAGE -> $SMOKE_TAR"
  fi
}

# The operator's image, from the release binary of this checkout (the Dockerfile's runtime
# layout, without a container engine), tagged with the binary's digest; and the utility
# image (busybox) that test workloads run.
build_operator_images() {
  local target bin sum key
  (cd "$ROOT" && cargo build --release --locked --bin vaultsync) >"$STATE/cargo-release.log" 2>&1 ||
    fail "release build" "$STATE/cargo-release.log" "cargo build --release --locked --bin vaultsync failed"
  target=$(cd "$ROOT" && cargo metadata --format-version 1 --no-deps |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
  bin=$target/release/vaultsync
  sum=$(sha256sum <"$bin" | cut -c1-12)
  key=$(cat "$NODE_LIB/build-image.sh" "$NODE_LIB/oci-image.py" | sha256sum | cut -c1-12)
  OPERATOR_IMAGE=$OPERATOR_REPO:dev-$sum
  OPERATOR_TAR=$IMAGES_CACHE/vaultsync-$sum-$key.tar
  if [[ ! -f $OPERATOR_TAR ]]; then
    rm -f "$IMAGES_CACHE"/vaultsync-*
    bash "$NODE_LIB/build-image.sh" operator "$OPERATOR_TAR" "$OPERATOR_IMAGE" "$bin" >&2 ||
      die node "building the operator image failed (see above)"
  fi
  UTILITY_TAR=$IMAGES_CACHE/utility-$key.tar
  if [[ ! -f $UTILITY_TAR ]]; then
    bash "$NODE_LIB/build-image.sh" utility "$UTILITY_TAR" "$UTILITY_IMAGE" >&2 ||
      die node "building the utility image failed (see above)"
  fi
}

import_images() {
  local tar
  for tar in "$PAUSE_TAR" "$SMOKE_TAR" "$OPERATOR_TAR" "$UTILITY_TAR"; do
    ctr_ images import --snapshotter overlayfs "$tar" >>"$STATE/import.log" 2>&1 ||
      die node "ctr images import $tar failed; see $STATE/import.log and $CTRD/containerd.log"
  done
  # Listed first, then searched: `grep -q` stopping early would break ctr's pipe, which
  # pipefail reports as a failure even when the image is there.
  local images
  images=$(ctr_ images ls -q)
  grep -qx "$PAUSE_IMAGE" <<<"$images" ||
    die node "$PAUSE_IMAGE is not in containerd after the import; see $STATE/import.log"
}

# ---------------------------------------------------------------------------------------
# certificates and configuration

sign() {
  local name=$1 subj=$2 ext=$3
  openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$NODE_PKI/$name.key" 2>/dev/null
  openssl req -new -key "$NODE_PKI/$name.key" -subj "$subj" -out "$NODE_PKI/$name.csr"
  printf '%s\n' "$ext" >"$NODE_PKI/$name.ext"
  openssl x509 -req -in "$NODE_PKI/$name.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" \
    -set_serial "0x$(openssl rand -hex 16)" -days 3650 -sha256 \
    -extfile "$NODE_PKI/$name.ext" -out "$NODE_PKI/$name.crt" 2>/dev/null
  rm -f "$NODE_PKI/$name.csr" "$NODE_PKI/$name.ext"
}

# Client certificates signed by the environment's CA, remade when the CA changed.
node_pki() {
  local ca_sum
  ca_sum=$(sha256sum <"$PKI/ca.crt" | cut -c1-16)
  [[ -f $NODE_PKI/.ca-$ca_sum ]] && return 0
  rm -rf "$NODE_PKI" && mkdir -p "$NODE_PKI"
  chmod 700 "$NODE_PKI"
  local common="subjectKeyIdentifier=hash
authorityKeyIdentifier=keyid
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=clientAuth"
  sign kubelet "/O=system:nodes/CN=system:node:$NODE_NAME" "$common"
  sign scheduler "/CN=system:kube-scheduler" "$common"
  touch "$NODE_PKI/.ca-$ca_sum"
}

write_kubeconfig() {
  local file=$1 name=$2
  cat >"$file.tmp" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: vaultsync-local
  cluster:
    server: $API_URL
    certificate-authority: $PKI/ca.crt
users:
- name: $name
  user:
    client-certificate: $NODE_PKI/$name.crt
    client-key: $NODE_PKI/$name.key
contexts:
- name: $name
  context: {cluster: vaultsync-local, user: $name}
current-context: $name
EOF
  chmod 600 "$file.tmp"
  mv "$file.tmp" "$file"
}

write_configs() {
  mkdir -p "$CTRD" "$CNI_DIR/net.d" "$KUBELET_DIR" "$STATE/pod-logs"
  write_kubeconfig "$STATE/kubelet.kubeconfig" kubelet
  write_kubeconfig "$STATE/scheduler.kubeconfig" scheduler

  cat >"$CTRD/config.toml" <<EOF
# containerd for the vaultsync node (tests/env/node.sh): its own root, state and socket.
version = 2
root = "$CTRD/root"
state = "$CTRD/state"
oom_score = 0
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.internal.v1.tracing", "io.containerd.tracing.processor.v1.otlp"]

[grpc]
  address = "$CTRD_SOCK"
[ttrpc]
  address = "$CTRD_SOCK.ttrpc"
[debug]
  address = ""
  level = "info"
[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "$CTRD/opt"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  # The machine withholds CAP_SYS_RESOURCE: without this every sandbox fails with
  # "can't get final child's PID from pipe".
  restrict_oom_score_adj = true
  disable_apparmor = true
  enable_selinux = false
  # Network namespaces under state (inside the node's mount namespace), not /var/run/netns.
  netns_mounts_under_state_dir = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    discard_unpacked_layers = false
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        BinaryName = "$(command -v runc || echo /usr/sbin/runc)"
        Root = "$CTRD/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$CNI_DIR/net.d"
    max_conf_num = 1
EOF

  # A bridge of its own with no address and no gateway: ip_forward is never needed (the
  # bridge plugin turns it on for isGateway) and no NAT rule is written (ipMasq).
  cat >"$CNI_DIR/net.d/10-vaultsync.conflist" <<EOF
{
  "cniVersion": "0.4.0",
  "name": "vaultsync",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$BRIDGE",
      "isGateway": false,
      "isDefaultGateway": false,
      "ipMasq": false,
      "hairpinMode": false,
      "ipam": {
        "type": "host-local",
        "dataDir": "$CNI_DIR/ipam",
        "ranges": [[{"subnet": "$POD_SUBNET", "rangeStart": "${POD_SUBNET%.*}.10", "gateway": "$HOST_IP"}]],
        "routes": [{"dst": "$APISERVER_SERVICE_IP/32", "gw": "$HOST_IP"}]
      }
    }
  ]
}
EOF

  cat >"$STATE/kubelet.yaml" <<EOF
# kubelet for the vaultsync node (tests/env/node.sh).
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: 127.0.0.1
port: $KUBELET_PORT
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $KUBELET_HEALTHZ_PORT
# The apiserver reaches the kubelet (logs, exec) without a client certificate: it has no
# --kubelet-client-certificate, and it must not be restarted for one. The kubelet listens
# on 127.0.0.1 only, where every process is already root.
authentication:
  anonymous: {enabled: true}
  webhook: {enabled: false}
  x509: {clientCAFile: "$PKI/ca.crt"}
authorization: {mode: AlwaysAllow}
containerRuntimeEndpoint: unix://$CTRD_SOCK
cgroupDriver: cgroupfs
cgroupRoot: $CGROUP_ROOT
failCgroupV1: false
failSwapOn: false
makeIPTablesUtilChains: false
hairpinMode: none
podLogsDir: $STATE/pod-logs
registerNode: true
maxPods: 30
serializeImagePulls: false
# Secret volumes follow a changed Secret within seconds (the default is up to a minute).
syncFrequency: 10s
# Never decide the machine is short of memory or disk: the pods here are small, and
# eviction or image garbage collection would only disturb tests (or delete imported images).
evictionHard:
  memory.available: "50Mi"
  nodefs.available: "1%"
  nodefs.inodesFree: "1%"
  imagefs.available: "1%"
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
protectKernelDefaults: false
EOF
}

# ---------------------------------------------------------------------------------------
# processes

ns_alive() { is_running "$STATE/mount-ns.pid" && [[ -f $STATE/mount-ns.ready ]] && node_ns >/dev/null; }
containerd_ready() { is_running "$CTRD/containerd.pid" && ctr --address "$CTRD_SOCK" version >/dev/null 2>&1; }
kubelet_healthy() {
  is_running "$STATE/kubelet.pid" &&
    curl -sS --fail --max-time 2 "http://127.0.0.1:$KUBELET_HEALTHZ_PORT/healthz" 2>/dev/null | grep -qx ok
}
scheduler_healthy() {
  is_running "$STATE/kube-scheduler.pid" &&
    curl -sSk --fail --max-time 2 "https://127.0.0.1:$SCHEDULER_PORT/healthz" 2>/dev/null | grep -qx ok
}
node_ready() {
  [[ $(kc get node "$NODE_NAME" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null) == True ]]
}

# fail COMPONENT LOG FIX: prints the log's tail and dies naming the component and the fix.
fail() {
  local comp=$1 logf=$2 fix=$3
  [[ -f $logf ]] && { tail -n 15 "$logf" >&2 || true; }
  die node "$comp: $fix (log: $logf; clean up with: bash tests/env/node.sh down)"
}

port_free() {
  local name=$1 port=$2
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    die node "port $port ($name) on 127.0.0.1 is in use by another process (ss -ltnp 'sport = :$port'); stop it or set $name"
  fi
}

# Cgroups: one directory /vaultsync-node in each v1 hierarchy, the kubelet's cgroupRoot.
cgroup_dirs() {
  local d
  for d in /sys/fs/cgroup/*/ /sys/fs/cgroup/; do
    [[ -d $d && -f $d/cgroup.procs ]] && echo "${d%/}$CGROUP_ROOT"
  done
}

make_cgroups() {
  local d parent
  for d in $(cgroup_dirs); do
    mkdir -p "$d"
    parent=$(dirname "$d")
    # A new cpuset is empty until given its parent's CPUs and memory nodes.
    if [[ -f $d/cpuset.cpus && -z $(<"$d/cpuset.cpus") ]]; then
      cat "$parent/cpuset.cpus" >"$d/cpuset.cpus"
      cat "$parent/cpuset.mems" >"$d/cpuset.mems"
    fi
  done
}

start_mount_ns() {
  rm -f "$STATE/mount-ns.ready"
  start_bg "$STATE/mount-ns.pid" "$STATE/mount-ns.log" \
    unshare --mount --propagation private -- bash "$NODE_LIB/mount-ns.sh" "$STATE/ns"
  # mount-ns.sh writes its ready file into its state dir
  wait_for node 10 test -f "$STATE/ns/mount-ns.ready" ||
    fail "mount namespace" "$STATE/mount-ns.log" "unshare --mount failed (needs root with CAP_SYS_ADMIN and util-linux)"
  touch "$STATE/mount-ns.ready"
}

start_containerd() {
  mkdir -p "$CTRD/root" "$CTRD/state" "$CTRD/runc" "$CTRD/opt"
  start_bg "$CTRD/containerd.pid" "$CTRD/containerd.log" \
    nsenter --mount="/proc/$(ns_pid)/ns/mnt" -- containerd --config "$CTRD/config.toml"
  wait_for node 30 containerd_ready ||
    fail containerd "$CTRD/containerd.log" "containerd did not answer on $CTRD_SOCK within 30s"
}

start_kubelet() {
  start_bg "$STATE/kubelet.pid" "$STATE/kubelet.log" \
    nsenter --mount="/proc/$(ns_pid)/ns/mnt" -- "$K8S_BIN/kubelet" \
    --config="$STATE/kubelet.yaml" \
    --kubeconfig="$STATE/kubelet.kubeconfig" \
    --hostname-override="$NODE_NAME" \
    --root-dir="$KUBELET_DIR" \
    --cert-dir="$KUBELET_DIR/pki"
  wait_for node 60 kubelet_healthy ||
    fail kubelet "$STATE/kubelet.log" "the kubelet did not report healthy on 127.0.0.1:$KUBELET_HEALTHZ_PORT within 60s"
}

start_scheduler() {
  start_bg "$STATE/kube-scheduler.pid" "$STATE/kube-scheduler.log" "$K8S_BIN/kube-scheduler" \
    --kubeconfig="$STATE/scheduler.kubeconfig" \
    --authentication-kubeconfig="$STATE/scheduler.kubeconfig" \
    --authorization-kubeconfig="$STATE/scheduler.kubeconfig" \
    --authentication-skip-lookup=true \
    --client-ca-file="$PKI/ca.crt" \
    --bind-address=127.0.0.1 \
    --secure-port="$SCHEDULER_PORT" \
    --leader-elect=false \
    --profiling=false
  wait_for node 60 scheduler_healthy ||
    fail kube-scheduler "$STATE/kube-scheduler.log" "kube-scheduler did not report healthy on 127.0.0.1:$SCHEDULER_PORT within 60s"
}

# The bridge, made before the first pod so it carries the machine's addresses for pods:
# $HOST_IP/24 (pods' neighbour) and $APISERVER_SERVICE_IP/32 (the `kubernetes` Service).
# Its MAC address is fixed: left to itself, a bridge takes the lowest MAC of its ports, so
# it changed when a pod's veth came or went, and a pod that had just learnt the old one
# could not reach $HOST_IP until its neighbour entry expired (CI: a pod's connections to
# the Key Vault proxy timed out for ~18 s while other tests' pods were deleted).
make_bridge() {
  ip link add "$BRIDGE" address 02:76:73:62:72:30 type bridge
  ip addr add "$HOST_IP/24" dev "$BRIDGE"
  ip addr add "$APISERVER_SERVICE_IP/32" dev "$BRIDGE"
  ip link set "$BRIDGE" up
}

# proxy NAME LISTEN_IP:PORT TARGET_PORT: a TCP proxy from a bridge address to 127.0.0.1.
# socat's listen backlog is 5 unless told: pods of several tests connecting at once
# could find it full.
proxy() {
  local name=$1 listen=$2 target=$3
  start_bg "$STATE/proxy-$name.pid" "$STATE/proxy-$name.log" \
    socat "TCP-LISTEN:${listen#*:},bind=${listen%:*},fork,reuseaddr,backlog=128" "TCP:127.0.0.1:$target"
  wait_for node 10 bash -c "exec 3<>/dev/tcp/${listen%:*}/${listen#*:}" ||
    fail "proxy $name" "$STATE/proxy-$name.log" "socat did not listen on $listen"
}

start_proxies() {
  proxy apiserver "$APISERVER_SERVICE_IP:443" "$APISERVER_PORT"
  proxy openbao "$HOST_IP:8200" "$BAO_PORT"
  proxy keyvault "$HOST_IP:$KEYVAULT_PORT" "$KEYVAULT_PORT"
  proxy entra "$HOST_IP:$TOKEN_PORT" "$TOKEN_PORT"
}

PROXIES=(apiserver openbao keyvault entra)
proxies_alive() {
  local p
  for p in "${PROXIES[@]}"; do is_running "$STATE/proxy-$p.pid" || return 1; done
}

wait_node_ready() {
  wait_for node 120 node_ready || {
    kc get node "$NODE_NAME" -o jsonpath='{range .status.conditions[*]}{.type}={.status} {.reason}: {.message}{"\n"}{end}' >&2 || true
    fail kubelet "$STATE/kubelet.log" "Node $NODE_NAME did not become Ready within 120s (containerd: $CTRD/containerd.log)"
  }
}

# The smoke pod: the smoke image, run as in a Pod Security "restricted" namespace, reading
# its projected service-account token (a volume the kubelet mounts), to completion.
smoke_pod() {
  kc -n default delete pod "$SMOKE_POD" --ignore-not-found --wait=true --timeout=60s >/dev/null 2>&1 || true
  kc apply -f - >/dev/null <<EOF || die node "creating the smoke pod failed (see the message above)"
apiVersion: v1
kind: Pod
metadata:
  name: $SMOKE_POD
  namespace: default
  labels: {app.kubernetes.io/name: vaultsync-node-smoke}
spec:
  restartPolicy: Never
  terminationGracePeriodSeconds: 1
  tolerations:
  - {key: node.kubernetes.io/not-ready, operator: Exists, effect: NoSchedule}
  securityContext:
    runAsNonRoot: true
    runAsUser: 65532
    runAsGroup: 65532
    seccompProfile: {type: RuntimeDefault}
  containers:
  - name: smoke
    image: $SMOKE_IMAGE
    imagePullPolicy: Never
    args: [/var/run/secrets/kubernetes.io/serviceaccount/token, /var/run/secrets/kubernetes.io/serviceaccount/ca.crt]
    resources:
      requests: {cpu: 10m, memory: 8Mi}
      limits: {memory: 32Mi}
    securityContext:
      allowPrivilegeEscalation: false
      readOnlyRootFilesystem: true
      capabilities: {drop: [ALL]}
EOF
  local phase="" deadline=$((SECONDS + 120))
  while ((SECONDS < deadline)); do
    phase=$(kc -n default get pod "$SMOKE_POD" -o jsonpath='{.status.phase}' 2>/dev/null || true)
    [[ $phase == Succeeded || $phase == Failed ]] && break
    sleep 1
  done
  if [[ $phase != Succeeded ]]; then
    kc -n default describe pod "$SMOKE_POD" 2>&1 | tail -n 25 >&2 || true
    fail "smoke pod" "$STATE/kubelet.log" "pod default/$SMOKE_POD ended as '${phase:-Pending}' (scheduler: $STATE/kube-scheduler.log, containerd: $CTRD/containerd.log)"
  fi
  local out
  out=$(kc -n default logs "$SMOKE_POD" 2>&1) ||
    fail "smoke pod logs" "$STATE/kubelet.log" "kubectl logs (apiserver -> kubelet on $NODE_NAME:$KUBELET_PORT) failed: $out"
  grep -q '^read [1-9][0-9]* bytes from /var/run/secrets/kubernetes.io/serviceaccount/token$' <<<"$out" ||
    fail "smoke pod" "$STATE/kubelet.log" "unexpected output from the smoke pod: $out"
  log "   $(head -n1 <<<"$out" | sed 's/^vaultsync node smoke: //'); $(grep -c '^read' <<<"$out") volume files read"
  kc -n default delete pod "$SMOKE_POD" --wait=false >/dev/null 2>&1 || true
}

# The chart's values for this environment (README: "Install on the local node").
chart_values() {
  cat <<EOF
# charts/vaultsync on the local environment's node (written by tests/env/node.sh up):
#   helm install vaultsync charts/vaultsync -n vaultsync-system -f \$VAULTSYNC_CHART_VALUES
image:
  repository: $OPERATOR_REPO
  tag: ${OPERATOR_IMAGE##*:}
  # Imported into the node's containerd; there is no registry.
  pullPolicy: Never
logFormat: text
defaults:
  minRefreshInterval: 5s
vault:
  default:
    # OpenBao on the machine, through the node's TCP proxy on the pod bridge.
    address: $BAO_IN_CLUSTER
    tokenAudience: vault
    kvVersions: {secret: 2, kv1: 1}
    defaultAuth:
      kubernetes: {mount: kubernetes, role: "{namespace}", serviceAccountName: default}
EOF
}

prepare() {
  node_pki
  write_configs
  make_cgroups
}

# A node started by another version of this script (other flags or configuration) is
# started again.
STARTED_BY=$(cat "${BASH_SOURCE[0]}" "$NODE_LIB/mount-ns.sh" | sha256sum | cut -c1-16)
healthy() {
  ns_alive && containerd_ready && kubelet_healthy && scheduler_healthy && node_ready && proxies_alive &&
    [[ $(cat "$STATE/started-by" 2>/dev/null) == "$STARTED_BY" ]]
}

ip_forward() { cat /proc/sys/net/ipv4/ip_forward; }

up() {
  local fwd_before
  fwd_before=$(ip_forward)
  step "node: control plane reachable" need_control_plane
  step "node: build kube-scheduler and kubelet $K8S_VERSION (cached in $K8S_BIN)" build_binaries
  step "node: containerd, runc, CNI plugins from Debian" install_packages
  step "node: pause and smoke images (cached in $IMAGES_CACHE)" build_images
  step "node: release build, operator and utility images (cached in $IMAGES_CACHE)" build_operator_images
  if healthy; then
    log "node $NODE_NAME already running; reusing it"
    step "node: import images" import_images
  else
    # Partly running or stale: start from a clean slate.
    step "node: clean up leftovers" down_quiet
    port_free KUBELET_PORT "$KUBELET_PORT"
    port_free KUBELET_HEALTHZ_PORT "$KUBELET_HEALTHZ_PORT"
    port_free SCHEDULER_PORT "$SCHEDULER_PORT"
    if ip link show "$BRIDGE" >/dev/null 2>&1; then
      die node "a network interface $BRIDGE already exists and is not this node's; remove it (ip link del $BRIDGE) or set NODE_BRIDGE"
    fi
    step "node: certificates, configuration, cgroups ($STATE, $CGROUP_ROOT)" prepare
    step "node: bridge $BRIDGE ($HOST_IP, $APISERVER_SERVICE_IP)" make_bridge
    step "node: TCP proxies for pods (apiserver $APISERVER_SERVICE_IP:443, openbao $BAO_IN_CLUSTER, key vault and token endpoint at $HOST_IP)" start_proxies
    step "node: private mount namespace" start_mount_ns
    step "node: containerd ($CTRD_SOCK)" start_containerd
    step "node: import images" import_images
    step "node: kubelet (node $NODE_NAME, 127.0.0.1:$KUBELET_PORT)" start_kubelet
    step "node: kube-scheduler (127.0.0.1:$SCHEDULER_PORT)" start_scheduler
    step "node: Node $NODE_NAME Ready" wait_node_ready
    echo "$STARTED_BY" >"$STATE/started-by"
  fi
  step "node: smoke pod runs to completion" smoke_pod
  [[ $(ip_forward) == "$fwd_before" ]] ||
    die node "net.ipv4.ip_forward changed from $fwd_before to $(ip_forward) while the node started; set it back (sysctl -w net.ipv4.ip_forward=$fwd_before) and report it"
  cat >"$ENV_DIR/node.env.tmp" <<EOF
export VAULTSYNC_NODE="$NODE_NAME"
export VAULTSYNC_NODE_CONTAINERD="$CTRD_SOCK"
export VAULTSYNC_NODE_VAULT_ADDR="$BAO_IN_CLUSTER"
# Pods reach the local Key Vault at this address (hostAliases for the vault hosts) and its
# token endpoint at this authority; the machine reaches both there too.
export VAULTSYNC_NODE_HOST_IP="$HOST_IP"
export VAULTSYNC_NODE_AZURE_AUTHORITY="https://$HOST_IP:$TOKEN_PORT"
export VAULTSYNC_IMAGE="$OPERATOR_IMAGE"
export UTILITY_IMAGE="$UTILITY_IMAGE"
export VAULTSYNC_CHART_VALUES="$ENV_DIR/chart-values.yaml"
EOF
  chart_values >"$ENV_DIR/chart-values.yaml"
  mv "$ENV_DIR/node.env.tmp" "$ENV_DIR/node.env"
  log "node $NODE_NAME up: pods run (images: ctr --address $CTRD_SOCK -n k8s.io images import FILE.tar; logs in $STATE)"
}

# ---------------------------------------------------------------------------------------
# teardown

# The node's mount namespace, only if the recorded process still holds one of its own: a
# stale pid file naming some other process must never select the machine's namespace.
node_ns() {
  local pid ns
  pid=$(ns_pid) || return 1
  ns=$(readlink "/proc/$pid/ns/mnt" 2>/dev/null) || return 1
  [[ $ns != "$(readlink /proc/1/ns/mnt)" && $ns != "$(readlink /proc/$$/ns/mnt)" ]] || return 1
  [[ $(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) == "sleep infinity " ]] || return 1
  echo "$ns"
}

# Processes in the node's mount namespace: containerd, shims, kubelet (the containers
# have namespaces of their own; they are found by their cgroups, see cgroup_members).
ns_members() {
  local ns pid p
  pid=$(ns_pid) || return 0
  ns=$(node_ns) || return 0
  for p in /proc/[0-9]*; do
    [[ ${p#/proc/} == "$pid" ]] && continue
    [[ $(readlink "$p/ns/mnt" 2>/dev/null) == "$ns" ]] && echo "${p#/proc/}"
  done
  return 0
}

delete_pods() {
  api_ready 2>/dev/null || return 0
  local pods
  pods=$(kc get pods -A --field-selector "spec.nodeName=$NODE_NAME" -o name 2>/dev/null | wc -l)
  ((pods)) || return 0
  log "   deleting $pods pod(s) bound to $NODE_NAME"
  if kubelet_healthy; then
    # Graceful while the kubelet runs, so it tears down sandboxes (CNI DEL, volumes).
    kc delete pods -A --field-selector "spec.nodeName=$NODE_NAME" --grace-period=2 --wait=true --timeout=60s \
      >/dev/null 2>&1 || true
  fi
  kc delete pods -A --field-selector "spec.nodeName=$NODE_NAME" --grace-period=0 --force --wait=false \
    >/dev/null 2>&1 || true
}

remove_containers() {
  containerd_ready || return 0
  local id
  for id in $(ctr_ tasks ls -q 2>/dev/null); do
    ctr_ tasks kill -s SIGKILL "$id" >/dev/null 2>&1 || true
  done
  sleep 0.5
  for id in $(ctr_ tasks ls -q 2>/dev/null); do
    ctr_ tasks delete -f "$id" >/dev/null 2>&1 || true
  done
  for id in $(ctr_ containers ls -q 2>/dev/null); do
    ctr_ containers delete "$id" >/dev/null 2>&1 || true
  done
}

# Processes in the node's cgroups: whatever containers are left running.
cgroup_members() {
  local d
  for d in $(cgroup_dirs); do
    [[ -d $d ]] && find "$d" -name cgroup.procs -exec cat {} + 2>/dev/null
  done | sort -un
  return 0
}

stop_namespace() {
  local pids p
  # Containers first (none are left when the runtime shut them down), then the runtime.
  pids=$(cgroup_members)
  if [[ -n $pids ]]; then
    log "   killing $(wc -w <<<"$pids") container process(es) left in $CGROUP_ROOT"
    kill -KILL $pids 2>/dev/null || true
    sleep 0.5
  fi
  pids=$(ns_members)
  if [[ -n $pids ]]; then
    kill -TERM $pids 2>/dev/null || true
    for _ in $(seq 1 50); do
      pids=$(ns_members)
      [[ -z $pids ]] && break
      sleep 0.1
    done
    [[ -n $pids ]] && kill -KILL $pids 2>/dev/null || true
  fi
  if node_ns >/dev/null; then
    stop_pid "$STATE/mount-ns.pid"
  fi
  rm -f "$STATE/mount-ns.pid" "$STATE/mount-ns.ready"
}

remove_cgroups() {
  local d
  for d in $(cgroup_dirs); do
    [[ -d $d ]] || continue
    # Deepest first; a cgroup with a live process refuses, and is reported below.
    find "$d" -depth -type d -exec rmdir {} + 2>/dev/null || true
    [[ -d $d ]] && log "   WARNING: cgroup $d still has processes: $(find "$d" -name cgroup.procs -exec cat {} + | tr '\n' ' ')"
  done
  return 0
}

down_quiet() {
  delete_pods
  local p
  for p in "${PROXIES[@]}"; do stop_pid "$STATE/proxy-$p.pid"; done
  stop_pid "$STATE/kube-scheduler.pid"
  stop_pid "$STATE/kubelet.pid"
  remove_containers
  stop_pid "$CTRD/containerd.pid"
  # Shims and anything else left in the namespace, then the namespace and all its mounts.
  stop_namespace
  # The bridge the CNI plugin made for this node's configuration (up refuses to start if an
  # interface of that name existed before).
  if ip link show "$BRIDGE" >/dev/null 2>&1 && [[ -f $CNI_DIR/net.d/10-vaultsync.conflist ]]; then
    ip link del "$BRIDGE" 2>/dev/null || log "   WARNING: could not delete bridge $BRIDGE: ip link del $BRIDGE"
  fi
  remove_cgroups
  if api_ready 2>/dev/null; then
    kc delete node "$NODE_NAME" --ignore-not-found --wait=false >/dev/null 2>&1 || true
  fi
  if [[ -f $STATE/ns/made-var-log-containers ]]; then
    rmdir /var/log/containers 2>/dev/null || true
  fi
  # The runc shim keeps its sockets in /run/containerd/s whatever the state directory;
  # it removes them on exit, the empty directories go here (rmdir leaves a used one).
  rmdir /run/containerd/s /run/containerd 2>/dev/null || true
  # No mount of ours can be left on the machine (they lived in the namespace); check anyway
  # before removing the runtime state.
  if findmnt -rn -o TARGET | grep -q "^$STATE/"; then
    log "   WARNING: mounts left under $STATE (findmnt | grep $STATE); runtime state kept"
  else
    rm -rf "$CTRD/root" "$CTRD/state" "$CTRD/runc" "$CTRD/opt" "$KUBELET_DIR" "$CNI_DIR/ipam" \
      "$STATE/pod-logs" "$STATE/ns"
  fi
  rm -f "$ENV_DIR/node.env"
}

down() {
  step "node: stop and remove the node" down_quiet
  log "node $NODE_NAME down"
}

status() {
  local s
  printf '  %-22s %s\n' "mount namespace" "$(ns_alive && echo "up (pid $(ns_pid))" || echo DOWN)"
  printf '  %-22s %s\n' "containerd" "$(containerd_ready && echo up || echo DOWN) ($CTRD_SOCK)"
  printf '  %-22s %s\n' "kubelet" "$(kubelet_healthy && echo up || echo DOWN) (127.0.0.1:$KUBELET_PORT)"
  printf '  %-22s %s\n' "kube-scheduler" "$(scheduler_healthy && echo up || echo DOWN) (127.0.0.1:$SCHEDULER_PORT)"
  if api_ready 2>/dev/null; then
    s=$(kc get node "$NODE_NAME" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null || echo absent)
    printf '  %-22s %s\n' "Node $NODE_NAME" "Ready=${s:-absent}"
    printf '  %-22s %s\n' "pods on the node" "$(kc get pods -A --field-selector "spec.nodeName=$NODE_NAME" -o name 2>/dev/null | wc -l)"
  else
    printf '  %-22s %s\n' "Node $NODE_NAME" "unknown (control plane down)"
  fi
  printf '  %-22s %s\n' "bridge $BRIDGE" "$(ip link show "$BRIDGE" >/dev/null 2>&1 && echo present || echo absent)"
  printf '  %-22s %s\n' "net.ipv4.ip_forward" "$(ip_forward)"
  healthy
}

case ${1:-} in
  up) up ;;
  down) down ;;
  status) status ;;
  *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
