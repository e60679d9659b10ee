#!/usr/bin/env bash
# The project's local Azure Key Vault (tests/env/keyvault/server.py) and the local Entra ID token
# endpoint (tests/env/token-endpoint.py), both HTTPS on loopback with certificates from one local
# CA ($ENV_DIR/keyvault/ca.pem):
#   - Key Vault on https://<vault>.vault.azure.net:$KEYVAULT_PORT for the vaults in
#     $KEYVAULT_VAULTS (default: default team-a team-b bench akv2k8s-test). `up` adds a marked block to
#     /etc/hosts so those names resolve to 127.0.0.1 (the SDKs check that the vault host is under
#     the challenge resource vault.azure.net, and that check stays on); `down` removes it.
#     State is in memory: restarting the server empties the vaults.
#   - the token endpoint on https://127.0.0.1:$TOKEN_PORT (AZURE_AUTHORITY_HOST), issuing RS256
#     JWTs signed with $ENV_DIR/keyvault/jwt-signing.key, which the vault verifies.
# Both run with the Python of $CACHE_DIR/keyvault-venv (pinned `cryptography`).
#
# Usage:
#   keyvault.sh up | down | status
#   keyvault.sh grant VAULT IDENTITY [all | KIND=PERM[,PERM...] ...]
#       KIND is secrets, keys or certificates; PERM an access-policy permission (get, list, set,
#       delete, purge, recover, create, import, update, ...) or `all`. VAULT may be `*` (every
#       vault). IDENTITY is a client id (the token's appid). The kinds named replace that
#       identity's permissions for those kinds; other kinds are kept. `all` alone = everything.
#       e.g. keyvault.sh grant team-a app-123 secrets=get,list keys=get certificates=get
#   keyvault.sh revoke VAULT IDENTITY
#   keyvault.sh register-client CLIENT_ID [--secret S] [--federated SUBJECT]... [--issuer ISS]
#       [--audience AUD] [--tenant T]   (replaces the registration; SUBJECT may use `*` for one
#       segment, e.g. system:serviceaccount:*:default)
#   keyvault.sh throttle VAULT REQUESTS [SECONDS] | throttle VAULT off   (rate limit per vault)
# grant/revoke/register-client/throttle edit JSON files atomically under a lock, so parallel
# tests may call them; the servers re-read the files when they change.
source "$(dirname "$0")/lib.sh"

COMP=keyvault
STATE=$ENV_DIR/keyvault
VENV=$CACHE_DIR/keyvault-venv
PY=$VENV/bin/python
# Pinned: bump it and the next `up` reinstalls.
CRYPTOGRAPHY_VERSION=${CRYPTOGRAPHY_VERSION:-46.0.3}
KEYVAULT_VAULTS=${KEYVAULT_VAULTS:-default team-a team-b bench akv2k8s-test}
read -r -a VAULTS <<<"$KEYVAULT_VAULTS"
TENANT=vaultsync-tenant
CLIENT_ID=vaultsync-local
CLIENT_SECRET=vaultsync-local-secret
ADMIN_CLIENT=vaultsync-admin
READER_CLIENT=vaultsync-namespace-reader
READER_SUBJECT='system:serviceaccount:*:default'
CLIENTS_FILE=$STATE/clients.json
GRANTS_FILE=$STATE/grants.json
SETTINGS_FILE=$STATE/settings.json
LOCK=$STATE/admin.lock
TOKEN_URL=https://127.0.0.1:$TOKEN_PORT
HEALTH_URL=https://127.0.0.1:$KEYVAULT_PORT/healthz
SERVER_PY=$ROOT/tests/env/keyvault/server.py
ENDPOINT_PY=$ROOT/tests/env/token-endpoint.py
ADMIN_PY=$ROOT/tests/env/keyvault/admin.py
HOSTS_FILE=${KEYVAULT_HOSTS_FILE:-/etc/hosts}
HOSTS_BEGIN='# BEGIN vaultsync local key vault'
HOSTS_END='# END vaultsync local key vault'

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
vault_hosts() { local v; for v in "${VAULTS[@]}"; do printf '%s.vault.azure.net\n' "$v"; done; }

# --- Python venv ----------------------------------------------------------------------------
install_venv() {
  local wanted
  wanted="python=$(python3 -c 'import sys; print(sys.version.split()[0])') cryptography==$CRYPTOGRAPHY_VERSION"
  if [[ -x $PY && -f $VENV/.vaultsync-stamp && $(cat "$VENV/.vaultsync-stamp") == "$wanted" ]]; then
    return 0
  fi
  local piplog=$CACHE_DIR/keyvault-pip.log
  exec 8>"$CACHE_DIR/keyvault-venv.lock"
  flock 8
  rm -rf "$VENV"
  { python3 -m venv "$VENV" && "$PY" -m pip install -q --disable-pip-version-check \
    "cryptography==$CRYPTOGRAPHY_VERSION"; } >"$piplog" 2>&1 || {
    tail -n 20 "$piplog" >&2
    die $COMP "creating $VENV with cryptography==$CRYPTOGRAPHY_VERSION failed (log: $piplog); check access to PyPI and that python3-venv is installed (tools.sh up), then rerun"
  }
  echo "$wanted" >"$VENV/.vaultsync-stamp"
  flock -u 8
}

# --- certificates and the token signing key -------------------------------------------------
# One CA (ca.pem, what clients trust) signs one server certificate used by both servers, for
# 127.0.0.1, ::1, the node's bridge address (pods reach both there), localhost,
# *.vault.azure.net and each vault host.
wanted_sans() {
  local sans="IP:127.0.0.1, IP:::1, IP:$POD_HOST_IP, DNS:localhost, DNS:*.vault.azure.net" h
  while read -r h; do sans+=", DNS:$h"; done < <(vault_hosts)
  echo "$sans"
}

certs_ok() {
  local f
  for f in ca.pem ca.key server.crt server.key jwt-signing.key jwt-signing.pub.pem; do
    [[ -s $STATE/$f ]] || return 1
  done
  [[ -f $STATE/server.sans && $(cat "$STATE/server.sans") == "$(wanted_sans)" ]] || return 1
  openssl x509 -in "$STATE/server.crt" -noout -checkend 86400 >/dev/null 2>&1 &&
    openssl verify -CAfile "$STATE/ca.pem" "$STATE/server.crt" >/dev/null 2>&1
}

make_certs() {
  local d=$STATE/certs.tmp sans
  sans=$(wanted_sans)
  rm -rf "$d" && mkdir -p "$d"
  cat >"$d/ca.cnf" <<'EOF'
[req]
distinguished_name = dn
prompt = no
x509_extensions = v3_ca
[dn]
CN = vaultsync local environment CA
[v3_ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
EOF
  cat >"$d/server.ext" <<EOF
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = $sans
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
EOF
  {
    # Keep an existing CA, so clients that trust it keep working.
    if [[ -s $STATE/ca.pem && -s $STATE/ca.key ]]; then
      cp "$STATE/ca.pem" "$STATE/ca.key" "$d/"
    else
      openssl req -x509 -new -newkey rsa:2048 -nodes -sha256 -days 3650 \
        -config "$d/ca.cnf" -keyout "$d/ca.key" -out "$d/ca.pem"
    fi &&
      openssl req -new -newkey rsa:2048 -nodes -sha256 -subj "/CN=vault.azure.net" \
        -keyout "$d/server.key" -out "$d/server.csr" &&
      openssl x509 -req -in "$d/server.csr" -CA "$d/ca.pem" -CAkey "$d/ca.key" -CAcreateserial \
        -sha256 -days 825 -extfile "$d/server.ext" -out "$d/server.crt" &&
      if [[ -s $STATE/jwt-signing.key ]]; then cp "$STATE/jwt-signing.key" "$d/"; else
        openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$d/jwt-signing.key"
      fi &&
      openssl pkey -in "$d/jwt-signing.key" -pubout -out "$d/jwt-signing.pub.pem"
  } >"$STATE/openssl.log" 2>&1 || die $COMP "creating the local CA, server certificate and token signing key failed (log: $STATE/openssl.log); check that openssl works (tools.sh up installs it)"
  chmod 600 "$d/ca.key" "$d/server.key" "$d/jwt-signing.key"
  local f
  for f in ca.pem ca.key server.crt server.key jwt-signing.key jwt-signing.pub.pem; do mv -f "$d/$f" "$STATE/$f"; done
  echo "$sans" >"$STATE/server.sans"
  rm -rf "$d"
}

# --- /etc/hosts ------------------------------------------------------------------------------
# Rewritten in place (not renamed over): in containers /etc/hosts is often a bind mount.
hosts_block() {
  echo "$HOSTS_BEGIN"
  local h
  while read -r h; do echo "127.0.0.1 $h"; done < <(vault_hosts)
  echo "$HOSTS_END"
}

strip_hosts_block() { sed "/^$HOSTS_BEGIN\$/,/^$HOSTS_END\$/d" "$HOSTS_FILE"; }

hosts_add() {
  local block current
  block=$(hosts_block)
  current=$(sed -n "/^$HOSTS_BEGIN\$/,/^$HOSTS_END\$/p" "$HOSTS_FILE" 2>/dev/null || true)
  [[ $current == "$block" ]] && return 0
  [[ -w $HOSTS_FILE ]] || die $COMP "$HOSTS_FILE is not writable, so the vault names cannot resolve to 127.0.0.1: run this as root (sudo bash tests/env/keyvault.sh up), or add these lines to $HOSTS_FILE yourself:
$block"
  local new
  new=$(strip_hosts_block; echo "$block")
  printf '%s\n' "$new" >"$HOSTS_FILE" || die $COMP "writing $HOSTS_FILE failed; add the block yourself:
$block"
  log "   added the vault names to $HOSTS_FILE"
}

hosts_remove() {
  grep -qx "$HOSTS_BEGIN" "$HOSTS_FILE" 2>/dev/null || return 0
  [[ -w $HOSTS_FILE ]] || { log "cannot remove the vaultsync block from $HOSTS_FILE (not writable): remove it by hand"; return 0; }
  local new
  new=$(strip_hosts_block)
  printf '%s\n' "$new" >"$HOSTS_FILE"
}

# --- JSON state files: clients, grants, settings ------------------------------------------
admin() { "$PY" "$ADMIN_PY" --clients "$CLIENTS_FILE" --grants "$GRANTS_FILE" --settings "$SETTINGS_FILE" "$@"; }

locked() {
  exec 7>"$LOCK"
  flock 7
  "$@"
  flock -u 7
}

seed() {
  admin seed --tenant "$TENANT" --client "$CLIENT_ID" --secret "$CLIENT_SECRET" \
    --admin "$ADMIN_CLIENT" --reader "$READER_CLIENT" --reader-subject "$READER_SUBJECT" ||
    die $COMP "cannot write $CLIENTS_FILE / $GRANTS_FILE: fix or delete them and rerun"
}

# --- servers ---------------------------------------------------------------------------------
token_ready() { curl -sf --max-time 3 --cacert "$STATE/ca.pem" "$TOKEN_URL/health" >/dev/null; }
vault_ready() { curl -sf --max-time 3 --cacert "$STATE/ca.pem" "$HEALTH_URL" >/dev/null; }

start_server() { # NAME PIDFILE LOG READY_FN PORT URL COMMAND...
  local name=$1 pidfile=$2 logfile=$3 ready=$4 port=$5 url=$6
  shift 6
  if is_running "$pidfile" && "$ready"; then
    log "   $name already running on $url (pid $(cat "$pidfile"))"
    return 0
  fi
  stop_pid "$pidfile"
  port_in_use "$port" &&
    die $COMP "port $port ($name) is taken by another process (see: ss -ltnp | grep :$port); stop it or set the port variable in tests/env/lib.sh"
  start_bg "$pidfile" "$logfile" "$@"
  if ! wait_for $COMP 30 "$ready"; then
    tail -n 20 "$logfile" >&2 || true
    stop_pid "$pidfile"
    die $COMP "$name did not become ready on $url within 30s (log: $logfile); fix the error shown and rerun"
  fi
  log "   $name ready on $url"
}

start_token_endpoint() {
  start_server "token endpoint" "$STATE/token.pid" "$STATE/token-endpoint.log" token_ready \
    "$TOKEN_PORT" "$TOKEN_URL" \
    "$PY" -u "$ENDPOINT_PY" --host 127.0.0.1 --port "$TOKEN_PORT" \
    --cert "$STATE/server.crt" --key "$STATE/server.key" --clients "$CLIENTS_FILE" \
    --k8s-env "$ENV_DIR/k8s.env" --state-dir "$STATE/token-state" \
    --signing-key "$STATE/jwt-signing.key"
}

start_vault() {
  local args=() v
  for v in "${VAULTS[@]}"; do args+=(--vault "$v"); done
  start_server "key vault" "$STATE/vault.pid" "$STATE/keyvault.log" vault_ready \
    "$KEYVAULT_PORT" "https://127.0.0.1:$KEYVAULT_PORT" \
    "$PY" -u "$SERVER_PY" --host 127.0.0.1 --port "$KEYVAULT_PORT" \
    --cert "$STATE/server.crt" --key "$STATE/server.key" "${args[@]}" --tenant "$TENANT" \
    --token-key "$STATE/jwt-signing.pub.pem" --grants "$GRANTS_FILE" --settings "$SETTINGS_FILE"
}

# The whole path a client takes: the name resolves, TLS verifies, the challenge is right.
check_challenge() {
  local url="https://${VAULTS[0]}.vault.azure.net:$KEYVAULT_PORT/secrets?api-version=2025-07-01" hdr
  hdr=$(curl -s -o /dev/null -D - --max-time 5 --cacert "$STATE/ca.pem" "$url" 2>&1 | tr -d '\r') ||
    true
  [[ $hdr == *"HTTP/1.1 401"* && $hdr == *'WWW-Authenticate: Bearer authorization="https://login.microsoftonline.com/'"$TENANT"'", resource="https://vault.azure.net"'* ]] ||
    die $COMP "$url did not answer 401 with the Key Vault challenge (got: $(head -n 1 <<<"$hdr")); check that ${VAULTS[0]}.vault.azure.net resolves to 127.0.0.1 (getent hosts ${VAULTS[0]}.vault.azure.net) and see $STATE/keyvault.log"
}

mint_admin_token() {
  "$PY" "$ENDPOINT_PY" mint --signing-key "$STATE/jwt-signing.key" --tenant "$TENANT" \
    --client-id "$ADMIN_CLIENT" --lifetime $((30 * 86400)) ||
    die $COMP "minting the admin token failed (see the error above)"
}

write_env() {
  local token
  token=$(mint_admin_token)
  cat >"$ENV_DIR/keyvault.env.tmp" <<EOF
export KEYVAULT_PORT=$KEYVAULT_PORT
export AZURE_KEYVAULT_URL=https://${VAULTS[0]}.vault.azure.net$KEYVAULT_PORT_SUFFIX
export AZURE_KEYVAULT_VAULTS="${VAULTS[*]}"
export AZURE_KEYVAULT_CA_FILE=$STATE/ca.pem
export AZURE_KEYVAULT_ADMIN_TOKEN=$token
export AZURE_KEYVAULT_RESOLVE=
export AZURE_KEYVAULT_SH=$ROOT/tests/env/keyvault.sh
export AZURE_KEYVAULT_GRANTS_FILE=$GRANTS_FILE
export AZURE_KEYVAULT_SETTINGS_FILE=$SETTINGS_FILE
export AZURE_CLIENTS_FILE=$CLIENTS_FILE
export AZURE_AUTHORITY_HOST=$TOKEN_URL
export AZURE_TENANT_ID=$TENANT
export AZURE_CLIENT_ID=$CLIENT_ID
export AZURE_CLIENT_SECRET=$CLIENT_SECRET
EOF
  mv "$ENV_DIR/keyvault.env.tmp" "$ENV_DIR/keyvault.env"
}

# The Lowkey-era component (tests/env/lowkey.sh, removed) ran the token endpoint from
# $ENV_DIR/lowkey; stop it so the port is free.
stop_legacy() {
  if [[ -d $ENV_DIR/lowkey ]]; then
    stop_pid "$ENV_DIR/lowkey/token.pid"
    stop_pid "$ENV_DIR/lowkey/lowkey.pid"
    rm -rf "$ENV_DIR/lowkey" "$ENV_DIR/lowkey.env"
  fi
}

up() {
  mkdir -p "$STATE"
  [[ -f $SERVER_PY && -f $ENDPOINT_PY ]] || die $COMP "missing $SERVER_PY or $ENDPOINT_PY"
  local tool
  for tool in openssl curl flock; do
    command -v $tool >/dev/null || die $COMP "$tool is needed: run tests/env/tools.sh up"
  done
  stop_legacy
  step "key vault: python venv (cryptography==$CRYPTOGRAPHY_VERSION)" install_venv
  if ! certs_ok; then
    # Running servers would still present the old certificate.
    stop_pid "$STATE/token.pid"
    stop_pid "$STATE/vault.pid"
    step "key vault: CA, server certificate, token signing key" make_certs
  fi
  step "key vault: clients and grants" locked seed
  step "key vault: /etc/hosts names for ${VAULTS[*]}" locked hosts_add
  step "key vault: token endpoint" start_token_endpoint
  step "key vault: server" start_vault
  step "key vault: challenge check through https://${VAULTS[0]}.vault.azure.net:$KEYVAULT_PORT" check_challenge
  write_env
}

down() {
  stop_pid "$STATE/vault.pid"
  stop_pid "$STATE/token.pid"
  stop_legacy
  locked hosts_remove
  rm -f "$ENV_DIR/keyvault.env"
}

status() {
  local v t
  v=$(vault_ready && echo up || echo DOWN)
  t=$(token_ready && echo up || echo DOWN)
  printf '  %-22s %s\n' "Key Vault" "$v (https://{${KEYVAULT_VAULTS// /,}}.vault.azure.net:$KEYVAULT_PORT)"
  printf '  %-22s %s\n' "token endpoint" "$t ($TOKEN_URL)"
  if [[ $v == DOWN || $t == DOWN ]]; then
    log "key vault or token endpoint down: run bash tests/env/keyvault.sh up (logs in $STATE/)"
    return 1
  fi
}

need_state() {
  [[ -x $PY && -d $STATE ]] || die $COMP "the local Key Vault is not set up: run bash tests/env/keyvault.sh up"
}

cmd=${1:-}
shift || true
case $cmd in
  up) up ;;
  down) down ;;
  status) status ;;
  grant | revoke | register-client | throttle)
    need_state
    locked admin "$cmd" --default-tenant "$TENANT" "$@" ;;
  *) echo "usage: $0 up|down|status|grant|revoke|register-client|throttle (see the header)" >&2; exit 2 ;;
esac
