#!/usr/bin/env bash
# The node's private mount namespace (started by tests/env/node.sh under
# `unshare --mount --propagation private`): containerd, its shims, runc and the kubelet
# are entered into it, so every mount a pod needs (overlay root filesystems, Secret and
# token volumes, network namespaces) exists only here and disappears with it; none ever
# shows on the machine's own mount table.
#
# The kubelet sets kernel tunables at start (vm.overcommit_memory=1, kernel.panic=10,
# kernel.panic_on_oops=1, ...) for the whole machine. Here each one that differs is
# shadowed by a file holding the value the kubelet expects, so it finds nothing to change
# and the machine's settings stay as they are.
set -euo pipefail
state=$1
mkdir -p "$state/sysctl" "$state/log-containers"
while read -r key want; do
  f=/proc/sys/${key//.//}
  [[ -e $f ]] || continue
  have=$(<"$f")
  if [[ $have != "$want" ]]; then
    printf '%s\n' "$want" >"$state/sysctl/$key"
    mount --bind -o ro "$state/sysctl/$key" "$f"
    echo "shadowed $key: the machine keeps $have, the kubelet sees $want"
  fi
done <<'TUNABLES'
vm.overcommit_memory 1
vm.panic_on_oom 0
kernel.panic 10
kernel.panic_on_oops 1
kernel.keys.root_maxkeys 1000000
kernel.keys.root_maxbytes 25000000
TUNABLES
# The kubelet links every container log into /var/log/containers; keep those links here.
# If the machine has no such directory, an empty one is made as the mount point and
# node.sh down removes it again.
if [[ ! -d /var/log/containers ]]; then
  mkdir -p /var/log/containers
  touch "$state/made-var-log-containers"
fi
mount --bind "$state/log-containers" /var/log/containers
touch "$state/mount-ns.ready"
exec sleep infinity
