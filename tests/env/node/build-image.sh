#!/usr/bin/env bash
# Builds the test images without a container engine, as OCI image layout tarballs that
# `ctr -n k8s.io images import` reads (written by oci-image.py beside this file):
#
#   build-image.sh operator OUT.tar IMAGE_NAME BINARY   the operator, laid out like the
#       Dockerfile's distroless cc-debian12:nonroot stage (BINARY: target/release/vaultsync)
#   build-image.sh utility OUT.tar IMAGE_NAME           Debian's busybox-static, for test pods
#
# The images are reproducible (same inputs, same digest). OUT.tar.inputs keeps a key of
# everything that went in, so a second run with nothing changed only hashes the inputs.
# Prints one line per image: "built NAME (sha256:..., N MiB)" or "up to date NAME (...)".
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SELF=$HERE/$(basename "${BASH_SOURCE[0]}")

die() { echo "build-image: $1: $2" >&2; exit 1; }

usage() {
  echo "usage: $0 operator OUT.tar IMAGE_NAME BINARY" >&2
  echo "       $0 utility OUT.tar IMAGE_NAME" >&2
  exit 2
}

# apt_install PKG...: installs Debian packages, saying so; retries once after apt-get update.
apt_install() {
  local log
  log=$(mktemp)
  echo "build-image: installing $* (Debian packages) with apt-get" >&2
  export DEBIAN_FRONTEND=noninteractive
  if ! apt-get install -y -qq --no-install-recommends "$@" >"$log" 2>&1; then
    apt-get update -qq >>"$log" 2>&1 || true
    apt-get install -y -qq --no-install-recommends "$@" >>"$log" 2>&1 ||
      die "$1" "apt-get install $* failed (needs root and Debian's package mirror):$(echo; tail -n 5 "$log")"
  fi
  rm -f "$log"
}

# The accounts and mount points of distroless's :nonroot images, owned by root except the
# nonroot home; every image runs as nonroot.
base_layout() {
  cat >"$WORK/passwd" <<'EOF'
root:x:0:0:root:/root:/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin
nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin
EOF
  cat >"$WORK/group" <<'EOF'
root:x:0:
nobody:x:65534:
nonroot:x:65532:
EOF
  BASE=(--file "$WORK/passwd:/etc/passwd:0644" --file "$WORK/group:/etc/group:0644"
    --dir /tmp:1777 --dir /home/nonroot:0700:65532:65532 --user 65532:65532)
}

# build OUT NAME OCI-IMAGE-ARGS...: writes OUT with oci-image.py unless OUT.inputs shows the
# same inputs made it. The key hashes file contents, not the (temporary) source paths.
build() {
  local out=$1 name=$2 key digest verb prev=
  shift 2
  key=$({
    echo "$name"
    sha256sum <"$HERE/oci-image.py"
    sha256sum <"$SELF"
    for a in "$@"; do
      if [[ $prev == --file ]]; then echo "$(sha256sum <"${a%%:*}") ${a#*:}"; else echo "$a"; fi
      prev=$a
    done
  } | sha256sum | cut -d' ' -f1)
  if [[ -f $out && -f $out.inputs && $(sed -n 1p "$out.inputs") == "$key" ]]; then
    digest=$(sed -n 2p "$out.inputs") verb="up to date"
  else
    mkdir -p "$(dirname "$out")"
    rm -f "$out.inputs"
    digest=$(python3 "$HERE/oci-image.py" "$out" "$name" "$@") ||
      die oci-image.py "writing $out failed (see the Python error above)"
    printf '%s\n%s\n' "$key" "$digest" >"$out.inputs"
    verb=built
  fi
  echo "$verb $name ($digest, $(stat -c %s "$out" | awk '{printf "%.1f", $1 / 1048576}') MiB)"
}

operator() {
  local out=$1 name=$2 bin=$3 ldd_out a b c rest certs=/etc/ssl/certs/ca-certificates.crt
  local files=()
  [[ -f $bin && -x $bin ]] ||
    die operator "$bin is not an executable file (build it: cargo build --release --locked --bin vaultsync)"
  command -v ldd >/dev/null || die ldd "ldd not found: apt-get install libc-bin"
  # The shared libraries at the paths the loader searches, and the loader at the exact path
  # the binary names (PT_INTERP); oci-image.py reads through symlinks, so real files go in.
  ldd_out=$(ldd "$bin" 2>&1) || [[ $ldd_out == *"not a dynamic executable"* ]] ||
    die ldd "ldd $bin failed: $ldd_out"
  if grep -q "not found" <<<"$ldd_out"; then
    die ldd "$bin needs libraries this machine lacks (install their Debian packages): $(grep 'not found' <<<"$ldd_out" | tr -s ' \t' ' ')"
  fi
  while read -r a b c rest; do
    if [[ $b == "=>" && $c == /* ]]; then files+=(--file "$c:$c:0755"); fi
    if [[ $a == /* ]]; then files+=(--file "$a:$a:0755"); fi
  done <<<"$ldd_out"
  if [[ ! -s $certs ]]; then
    apt_install ca-certificates
    [[ -s $certs ]] || die ca-certificates "$certs is still missing after installing ca-certificates (run update-ca-certificates)"
  fi
  printf '%s\n' "passwd: files" "group: files" "hosts: files dns" >"$WORK/nsswitch.conf"
  base_layout
  build "$out" "$name" "${BASE[@]}" "${files[@]}" \
    --file "$bin:/vaultsync:0755" \
    --file "$certs:$certs:0644" \
    --file "$WORK/nsswitch.conf:/etc/nsswitch.conf:0644" \
    --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --env SSL_CERT_FILE=$certs \
    --label org.opencontainers.image.title=vaultsync \
    --label "org.opencontainers.image.description=Kubernetes operator that syncs short-lived Secrets from Vault/OpenBao" \
    --label org.opencontainers.image.licenses=Apache-2.0 \
    --expose 8080/tcp \
    --entrypoint /vaultsync --cmd run --cmd=--config --cmd /etc/vaultsync/config.yaml
}

utility() {
  local out=$1 name=$2 bb applet args=()
  local applets=(sh sha256sum cat sleep echo env ls date test printf wget head tail grep sed tr
    wc cut id true false mkdir rm timeout sort uniq awk base64 nc hostname uname)
  bb=$(dpkg -L busybox-static 2>/dev/null | grep -m1 '/bin/busybox$' || true)
  if [[ -z $bb ]]; then
    apt_install busybox-static
    bb=$(dpkg -L busybox-static 2>/dev/null | grep -m1 '/bin/busybox$') ||
      die busybox-static "no bin/busybox in the busybox-static package (dpkg -L busybox-static)"
  fi
  [[ -x $bb ]] || die busybox-static "$bb is missing (reinstall: apt-get install --reinstall busybox-static)"
  for applet in "${applets[@]}"; do args+=(--symlink "/bin/$applet:busybox"); done
  base_layout
  build "$out" "$name" "${BASE[@]}" --file "$bb:/bin/busybox:0755" "${args[@]}" --entrypoint /bin/sh
}

[[ $# -ge 1 ]] || usage
command -v python3 >/dev/null || die python3 "python3 not found: apt-get install python3"
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
case $1 in
  operator) [[ $# -eq 4 ]] || usage; operator "$2" "$3" "$4" ;;
  utility) [[ $# -eq 3 ]] || usage; utility "$2" "$3" ;;
  *) usage ;;
esac
