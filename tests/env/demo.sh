#!/usr/bin/env bash
# `make demo`: vaultsync on the local environment of real components, step by step.
#
#   tests/env/demo.sh [run]   bring up the environment, install the CRDs, (re)start the
#                             operator in the background, seed OpenBao (KV secrets and a
#                             database role) and the local Azure Key Vault (a secret, a JSON
#                             secret, a certificate with its chain, an RSA key; a workload
#                             identity for service account demo/app), apply the samples of
#                             config/samples/, show the synced Secrets of both kinds, the
#                             certificate chain's order, a database lease that logs in to
#                             PostgreSQL, and a rotation
#   tests/env/demo.sh stop    stop the demo operator (tests/env/down.sh calls it)
#
# Idempotent: a second run re-seeds (policy, roles, the Key Vault client and grant; KV
# secrets that already have their keys and Key Vault objects that already exist are kept,
# so the one rotation shown is the demo's own; the local Key Vault holds its objects in
# memory only, so after it restarts they are seeded anew), re-applies and restarts the
# operator, which carries the database lease on from status without issuing new
# credentials. The operator keeps running afterwards (log $ENV_DIR/operator.log, pid
# $ENV_DIR/operator.pid); `make env-down` stops it through `demo.sh stop`.
# Secret values are never printed: only key names and sizes.
source "$(dirname "$0")/lib.sh"
cd "$ROOT"

NS=demo
SAMPLES=config/samples
OP_PID=$ENV_DIR/operator.pid
OP_LOG=$ENV_DIR/operator.log
# The env's operator config plus `watchNamespaces: [demo]`, so that the demo operator,
# left running, never touches the namespaces of `make test`.
OP_CONFIG=$ENV_DIR/demo-operator.yaml
# The samples `make demo` applies; every other sample in $SAMPLES is only validated (the
# PKI one needs a policy the demo tenant lacks).
APPLY=(vaultsecret-kv.yaml vaultsecret-template.yaml vaultsecret-api.yaml vaultsecret-database.yaml
  azurekeyvaultsecret-secret.yaml azurekeyvaultsecret-multi-key-value.yaml
  azurekeyvaultsecret-certificate.yaml azurekeyvaultsecret-key.yaml)
# The database source: VaultSecret, Secret and OpenBao database role.
DB_VS=db-creds DB_ROLE=$NS
# The local Azure Key Vault: the vault the samples name (the env's $AZURE_KEYVAULT_URL) and
# the REST API version the demo seeds it with.
AKV_VAULT=default AKV_API=2025-07-01
# The clientId of azurekeyvaultsecret-key.yaml, which logs in as service account $NS/app.
AKV_KEY_CLIENT=00000000-0000-0000-0000-000000000001
# The certificate chain the demo imports as `web-certificate` (subjects are no secret).
CERT_DNS=web.demo.example
CERT_SUBJECTS=("/O=vaultsync demo/CN=$CERT_DNS" "/O=vaultsync demo/CN=vaultsync demo intermediate CA"
  "/O=vaultsync demo/CN=vaultsync demo root CA")
# AzureKeyVaultSecret name -> the Key Vault object version seeded for it.
declare -A AKV_VERSION=()

OP_STARTED=0 STEP="" STEP_NO=0 STEPS=9 STEP_START=$SECONDS TOTAL_START=$SECONDS

say() { printf '[demo] %s\n' "$*"; }
# run COMMAND...: prints COMMAND, quoted so it can be pasted, and runs it.
run() {
  local a line='[demo] $'
  for a in "$@"; do
    if [[ $a =~ ^[][A-Za-z0-9_./:=,@%+-]+$ ]]; then line+=" $a"; else line+=" '${a//\'/\'\\\'\'}'"; fi
  done
  printf '%s\n' "$line"
  "$@"
}

begin() {
  ((STEP_NO > 0)) && say "   done in $((SECONDS - STEP_START))s"
  STEP_NO=$((STEP_NO + 1)) STEP=$1 STEP_START=$SECONDS
  echo
  say "==> [$STEP_NO/$STEPS] $STEP"
}

operator_alive() { is_running "$OP_PID"; }

show_operator_log() {
  [[ -f $OP_LOG ]] || return 0
  say "last lines of the operator log ($OP_LOG):" >&2
  tail -n 25 "$OP_LOG" | sed 's/^/    /' >&2
}

# fail MESSAGE: names the step, shows the operator's log when it is involved, exits.
fail() {
  trap - ERR
  echo >&2
  say "FAILED at step $STEP_NO/$STEPS ($STEP): $*" >&2
  if ((OP_STARTED)); then
    if ! operator_alive; then
      say "the operator (pid $(cat "$OP_PID" 2>/dev/null || echo ?)) is not running any more" >&2
    fi
    show_operator_log
  fi
  exit 1
}
trap 'fail "command failed (line $LINENO): $BASH_COMMAND"' ERR
set -E

# wait_until SECONDS WHAT COMMAND...: polls COMMAND; fails the step after SECONDS, or at
# once when the operator has died.
wait_until() {
  local timeout=$1 what=$2; shift 2
  local deadline=$((SECONDS + timeout))
  until "$@" >/dev/null 2>&1; do
    if ((OP_STARTED)) && ! operator_alive; then
      fail "the operator exited while waiting for $what"
    fi
    ((SECONDS < deadline)) || return 1
    sleep 0.5
  done
}

metrics_address() { awk '$1 == "metricsAddress:" { print $2; exit }' "$OP_CONFIG"; }

# Stops a demo operator started earlier, but only if the pid file really names one.
stop_operator() {
  [[ -f $OP_PID ]] || return 0
  local pid
  pid=$(cat "$OP_PID")
  if kill -0 "$pid" 2>/dev/null && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q 'vaultsync run'; then
    say "stopping the demo operator (pid $pid)"
    stop_pid "$OP_PID"
  else
    rm -f "$OP_PID"
  fi
}

# --- steps ------------------------------------------------------------------------------

step_env() {
  begin "local environment (kube-apiserver, OpenBao, PostgreSQL, Azure Key Vault on loopback)"
  if [[ ${VAULTSYNC_DEMO_ENV_UP:-} == "done" ]]; then
    say "brought up by 'make env-up' above"
  else
    run bash tests/env/up.sh || fail "bringing up the environment failed (see the [env] messages above)"
  fi
  [[ -f $ENV_DIR/env.sh ]] || fail "$ENV_DIR/env.sh is missing: run make env-up"
  # shellcheck disable=SC1091
  source "$ENV_DIR/env.sh"
  kubectl get --raw /readyz >/dev/null 2>&1 ||
    fail "the kube-apiserver at ${K8S_API_URL:-?} does not answer: run make env-down && make env-up"
  curl -fsS -o /dev/null "$VAULT_ADDR/v1/sys/health" ||
    fail "OpenBao at $VAULT_ADDR does not answer: run make env-down && make env-up"
  [[ -n ${AZURE_KEYVAULT_URL:-} && -n ${AZURE_KEYVAULT_ADMIN_TOKEN:-} && -f ${AZURE_KEYVAULT_CA_FILE:-} ]] ||
    fail "$ENV_DIR/env.sh lacks the local Key Vault (AZURE_KEYVAULT_*): run make env-down && make env-up"
  [[ $(akv GET secrets "maxresults=1" </dev/null 2>/dev/null | tail -n 1) == 200 ]] ||
    fail "the local Key Vault at $AZURE_KEYVAULT_URL does not answer the admin token: run bash tests/env/keyvault.sh status (or make env-down && make env-up)"
  say "kube-apiserver $K8S_API_URL, OpenBao $VAULT_ADDR, Key Vault $AZURE_KEYVAULT_URL"
}

step_crds() {
  begin "install the CRDs (VaultSecret, AzureKeyVaultSecret)"
  run kubectl apply --server-side --force-conflicts --field-manager=vaultsync-demo -f crds/ ||
    fail "the apiserver refused crds/ (run make crds if they are stale)"
  run kubectl wait --for=condition=Established --timeout=60s \
    crd/vaultsecrets.vaultsync.dev crd/azurekeyvaultsecrets.vaultsync.dev ||
    fail "the CRDs did not become Established within 60s"
}

step_operator() {
  begin "build and (re)start the operator in the background"
  run cargo build || fail "cargo build failed (see the compiler messages above)"
  stop_operator
  {
    cat "$VAULTSYNC_CONFIG"
    if ! grep -q '^watchNamespaces:' "$VAULTSYNC_CONFIG"; then
      echo "# Added by tests/env/demo.sh: the demo operator watches only namespace $NS."
      echo "watchNamespaces: [$NS]"
    fi
  } >"$OP_CONFIG.tmp"
  mv "$OP_CONFIG.tmp" "$OP_CONFIG"
  local addr
  addr=$(metrics_address)
  [[ -n $addr ]] || fail "no metricsAddress in $VAULTSYNC_CONFIG"
  if (exec 3<>"/dev/tcp/${addr%:*}/${addr##*:}") 2>/dev/null; then
    fail "$addr (metricsAddress) is already in use by another process (see: ss -ltnp 'sport = :${addr##*:}'); stop it, or pick another port: VAULTSYNC_METRICS_PORT=<port> make demo"
  fi
  say "\$ target/debug/vaultsync run --config $OP_CONFIG   # \$VAULTSYNC_CONFIG + watchNamespaces: [$NS]"
  # NO_COLOR: plain text in the log file.
  NO_COLOR=1 start_bg "$OP_PID" "$OP_LOG" "$ROOT/target/debug/vaultsync" run --config "$OP_CONFIG"
  OP_STARTED=1
  say "operator pid $(cat "$OP_PID"), log $OP_LOG"
  wait_until 60 "the operator to be ready" curl -fsS -o /dev/null "http://$addr/readyz" ||
    fail "the operator is not ready on http://$addr/readyz after 60s"
  say "operator ready: http://$addr/readyz"
}

# bao_put PATH KEY...: writes random values for KEYs at secret/PATH (values go through
# stdin, never the command line or the terminal) and prints the new version.
bao_put() {
  local path=$1; shift
  local json
  json=$(python3 - "$@" <<'PY'
import json, secrets, sys
keys = sys.argv[1:]
print(json.dumps({k: ("app" if k == "username" else secrets.token_urlsafe(18)) for k in keys}))
PY
  )
  bao kv put -mount=secret -format=json "$path" - <<<"$json" | jq -r .data.version
}

# bao_ensure PATH KEY...: keeps secret/PATH when it has all KEYs (a rerun then changes no
# data, so the restarted operator has nothing to rotate), else writes random values.
# Prints "VERSION kept" or "VERSION written".
bao_ensure() {
  local path=$1; shift
  local keys version
  keys=$(printf '%s\n' "$@" | jq -R . | jq -sc .)
  version=$(bao kv get -mount=secret -format=json "$path" 2>/dev/null |
    jq -r --argjson keys "$keys" 'if (.data.data | keys) as $k | ($keys - $k) == [] then .data.metadata.version else empty end' 2>/dev/null || true)
  if [[ -n $version ]]; then
    echo "$version kept"
  else
    echo "$(bao_put "$path" "$@") written"
  fi
}

step_seed() {
  begin "seed OpenBao: namespace $NS, service account app, policy and role $NS, KV secrets, database role $DB_ROLE"
  if [[ $(kubectl get namespace "$NS" -o jsonpath='{.status.phase}' 2>/dev/null) == Terminating ]]; then
    say "namespace $NS is being deleted; waiting for it to go"
    kubectl wait --for=delete namespace/"$NS" --timeout=120s >/dev/null ||
      fail "namespace $NS is stuck in Terminating"
  fi
  say "\$ kubectl create namespace $NS --dry-run=client -o yaml | kubectl apply -f -"
  kubectl create namespace "$NS" --dry-run=client -o yaml | kubectl apply -f -
  say "\$ kubectl -n $NS create serviceaccount app --dry-run=client -o yaml | kubectl apply -f -"
  kubectl -n "$NS" create serviceaccount app --dry-run=client -o yaml | kubectl apply -f -
  wait_until 60 "service account $NS/default" kubectl -n "$NS" get serviceaccount default ||
    fail "the service-account controller did not create $NS/default within 60s (see $ENV_DIR/k8s/kube-controller-manager.log)"

  say "\$ bao policy write $NS -   # read secret/data/$NS/* and database/creds/$DB_ROLE; renew and revoke its own leases"
  bao policy write "$NS" - >/dev/null <<EOF || fail "bao policy write $NS failed"
path "secret/data/$NS/*"         { capabilities = ["read"] }
path "database/creds/$DB_ROLE"   { capabilities = ["read"] }
path "sys/leases/renew/database/creds/$DB_ROLE/*"   { capabilities = ["update"] }
path "sys/leases/revoke/database/creds/$DB_ROLE/*"  { capabilities = ["update"] }
path "auth/token/renew-self"     { capabilities = ["update"] }
path "auth/token/revoke-self"    { capabilities = ["update"] }
EOF
  # `app` for the samples that set spec.vault.auth; `default` for vaultsecret-kv.yaml, which
  # relies on the config's defaultAuth (role "{namespace}", service account default).
  run bao write -format=json auth/kubernetes/role/"$NS" \
    bound_service_account_names=app,default bound_service_account_namespaces="$NS" \
    audience=vault token_policies="$NS" token_no_default_policy=true token_ttl=10m >/dev/null ||
    fail "writing the Kubernetes auth role $NS failed (is auth/kubernetes configured? make env-down && make env-up)"
  say "role $NS: Kubernetes auth for service accounts $NS/app and $NS/default, audience vault, policy $NS"

  local out
  out=$(bao_ensure "$NS/db" username password) || fail "bao kv put secret/$NS/db failed"
  DB_VERSION=${out% *}
  say "secret/$NS/db  (username, password): version $DB_VERSION ${out#* } (random values, never shown)"
  out=$(bao_ensure "$NS/api" token) || fail "bao kv put secret/$NS/api failed"
  API_VERSION=${out% *}
  say "secret/$NS/api (token):              version $API_VERSION ${out#* }"

  # The env's role `app` with short TTLs: the same statements on the same connection.
  say "\$ bao read database/roles/app | bao write database/roles/$DB_ROLE -   # its statements, default_ttl=2m max_ttl=10m"
  bao read -format=json database/roles/app |
    jq '.data | {db_name, creation_statements, revocation_statements, default_ttl: "2m", max_ttl: "10m"}' |
    bao write database/roles/"$DB_ROLE" - >/dev/null ||
    fail "creating database role $DB_ROLE from database/roles/app failed (is the database engine set up? make env-down && make env-up)"
  say "database role $DB_ROLE: PostgreSQL users with a 2m lease, renewable up to 10m"
  forget_stale_lease
}

# A dev-mode OpenBao forgets its leases when it restarts (make env-down, env-up), and
# env-up then drops the database users it had created. If the lease that status records
# is unknown to OpenBao, the Secret's credentials are dead: deleting the copy makes the
# operator issue new ones at once, instead of at the lease's renewal point.
forget_stale_lease() {
  local id
  id=$(kubectl -n "$NS" get vaultsecret "$DB_VS" -o jsonpath='{.status.lease.id}' 2>/dev/null || true)
  [[ -n $id ]] || return 0
  if ! bao write -format=json sys/leases/lookup lease_id="$id" >/dev/null 2>&1; then
    say "the lease recorded by VaultSecret $DB_VS is unknown to OpenBao (restarted?): deleting Secret $DB_VS so that new credentials are issued"
    kubectl -n "$NS" delete secret "$DB_VS" --ignore-not-found >/dev/null
  fi
}

# --- the local Azure Key Vault --------------------------------------------------------------

# akv METHOD PATH [QUERY]: one request to the local Key Vault as the env's admin. A body, if
# any, comes from stdin, so values never reach a command line; the token goes through a
# file descriptor, not the command line either. Prints the response body, then a line with
# the HTTP status. Bodies of secrets hold values: callers only pass them to jq.
akv() {
  local method=$1 path=$2 query=${3:+&$3} data=()
  [[ $method == GET ]] || data=(-H 'Content-Type: application/json' --data-binary @-)
  curl -sS --max-time 30 --cacert "$AZURE_KEYVAULT_CA_FILE" -X "$method" \
    -H @<(printf 'Authorization: Bearer %s\n' "$AZURE_KEYVAULT_ADMIN_TOKEN") "${data[@]}" \
    -w '\n%{http_code}' "$AZURE_KEYVAULT_URL/$path?api-version=$AKV_API$query"
}

# The version at the end of the id of a secret, certificate or key bundle (stdin).
akv_version() { jq -r '(.id // .key.kid // "") | split("/") | last'; }

# akv_ensure KIND NAME FITS CREATE...: keeps KIND/NAME (secrets, certificates or keys) when
# it exists and its bundle passes the jq test FITS (a rerun then changes no data), else runs
# CREATE..., which writes it through akv. Prints "VERSION kept" or "VERSION written".
akv_ensure() {
  local kind=$1 name=$2 fits=$3 out code body
  shift 3
  out=$(akv GET "$kind/$name" </dev/null) || return 1
  code=${out##*$'\n'} body=${out%$'\n'*}
  if [[ $code == 200 ]] && jq -e "$fits" >/dev/null 2>&1 <<<"$body"; then
    echo "$(akv_version <<<"$body") kept"
    return 0
  fi
  if [[ $code != 200 && $code != 404 ]]; then
    # Not a bundle (no value): the error, which says why.
    say "GET $kind/$name: HTTP $code: $(jq -c '.error // .' <<<"$body" 2>/dev/null || echo "$body")" >&2
    return 1
  fi
  out=$("$@") || return 1
  code=${out##*$'\n'} body=${out%$'\n'*}
  if [[ $code != 2?? ]]; then
    say "writing $kind/$name: HTTP $code: $(jq -c '.error // .' <<<"$body" 2>/dev/null || echo "$body")" >&2
    return 1
  fi
  echo "$(akv_version <<<"$body") written"
}

put_token() {
  openssl rand -base64 32 | tr -d '\n' | jq -Rsc '{value: ., contentType: "text/plain"}' |
    akv PUT secrets/contoso-external-service-token
}

put_app_settings() {
  { openssl rand -hex 16; openssl rand -base64 24; } |
    jq -Rnc '[inputs] as [$password, $key]
      | {value: ({"database-password": $password, "api-key": $key, "log-level": "info"} | tojson),
         contentType: "application/x-json"}' |
    akv PUT secrets/app-settings
}

# make_chain DIR: a fresh root -> intermediate -> leaf chain (RSA 2048) and DIR/web.pfx with
# the leaf's key, the leaf and its issuers in shuffled order (root before intermediate), under
# an empty password.
make_chain() {
  local d=$1 k
  (
    cd "$d"
    printf 'basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\nsubjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n' >ca.ext
    printf 'basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\nsubjectAltName=DNS:%s\nsubjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n' "$CERT_DNS" >leaf.ext
    for k in root intermediate leaf; do
      openssl genpkey -quiet -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$k.key"
    done
    openssl req -x509 -new -key root.key -subj "${CERT_SUBJECTS[2]}" -days 3650 -sha256 \
      -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" -out root.pem
    openssl req -new -key intermediate.key -subj "${CERT_SUBJECTS[1]}" |
      openssl x509 -req -CA root.pem -CAkey root.key -set_serial "0x$(openssl rand -hex 8)" \
        -days 1825 -sha256 -extfile ca.ext -out intermediate.pem
    openssl req -new -key leaf.key -subj "${CERT_SUBJECTS[0]}" |
      openssl x509 -req -CA intermediate.pem -CAkey intermediate.key -set_serial "0x$(openssl rand -hex 8)" \
        -days 397 -sha256 -extfile leaf.ext -out leaf.pem
    cat root.pem intermediate.pem >issuers.pem
    openssl pkcs12 -export -inkey leaf.key -in leaf.pem -certfile issuers.pem -passout pass: -out web.pfx
  ) >"$d/openssl.log" 2>&1 || {
    tail -n 5 "$d/openssl.log" | sed 's/^/    /' >&2
    return 1
  }
}

# The chain's keys live in a temporary directory only while it is imported.
import_certificate() {
  local d rc=0
  d=$(mktemp -d)
  make_chain "$d" && base64 -w0 "$d/web.pfx" |
    jq -Rsc '{value: ., policy: {key_props: {exportable: true}, secret_props: {contentType: "application/x-pkcs12"}}}' |
    akv POST certificates/web-certificate/import || rc=$?
  rm -rf "$d"
  return "$rc"
}

create_key() { echo '{"kty": "RSA", "key_size": 2048}' | akv POST keys/signing-key/create; }

step_seed_keyvault() {
  begin "seed the local Azure Key Vault (vault $AKV_VAULT): a secret, a JSON secret, a certificate chain, an RSA key; a workload identity for $NS/app"
  [[ $AZURE_KEYVAULT_URL == "https://$AKV_VAULT.vault.azure.net"* ]] ||
    fail "AZURE_KEYVAULT_URL ($AZURE_KEYVAULT_URL) is not vault $AKV_VAULT, which the samples name"
  say "\$ curl --cacert \$AZURE_KEYVAULT_CA_FILE -H 'Authorization: Bearer \$AZURE_KEYVAULT_ADMIN_TOKEN' $AZURE_KEYVAULT_URL/...?api-version=$AKV_API --data @-"
  say "  (objects that exist are kept; new values come from openssl rand through stdin, never shown)"
  local out
  out=$(akv_ensure secrets contoso-external-service-token '.value | length > 0' put_token) ||
    fail "seeding secret contoso-external-service-token failed"
  AKV_VERSION[external-service-token]=${out% *}
  say "secret contoso-external-service-token (text/plain): version ${out% *} ${out#* } (random value, never shown)"
  out=$(akv_ensure secrets app-settings \
    '.contentType == "application/x-json" and (.value | fromjson | type == "object")' put_app_settings) ||
    fail "seeding secret app-settings failed"
  AKV_VERSION[app-settings]=${out% *}
  say "secret app-settings (application/x-json, 3 entries): version ${out% *} ${out#* }"
  out=$(akv_ensure certificates web-certificate '.id != null' import_certificate) ||
    fail "seeding certificate web-certificate failed"
  AKV_VERSION[web-certificate]=${out% *}
  say "certificate web-certificate (PFX: key, leaf $CERT_DNS, issuers):  version ${out% *} ${out#* }"
  out=$(akv_ensure keys signing-key '.key.kty == "RSA"' create_key) ||
    fail "seeding key signing-key failed"
  AKV_VERSION[signing-key]=${out% *}
  say "key signing-key (RSA 2048, made in the vault):            version ${out% *} ${out#* }"

  # azurekeyvaultsecret-key.yaml logs in as $NS/app with its own client id; the others use
  # the config's defaultAuth (the namespace's `default` account as vaultsync-namespace-reader).
  run bash tests/env/keyvault.sh register-client "$AKV_KEY_CLIENT" --federated "system:serviceaccount:$NS:app" ||
    fail "registering client $AKV_KEY_CLIENT failed"
  run bash tests/env/keyvault.sh grant "$AKV_VAULT" "$AKV_KEY_CLIENT" keys=get ||
    fail "granting $AKV_KEY_CLIENT keys=get on vault $AKV_VAULT failed"
  say "client $AKV_KEY_CLIENT: workload identity of $NS/app, may get keys of vault $AKV_VAULT"
}

step_samples() {
  begin "apply the samples of $SAMPLES/"
  local f path validate_only=()
  for f in "${APPLY[@]}"; do
    [[ -f $SAMPLES/$f ]] || fail "$SAMPLES/$f is missing"
  done
  for path in "$SAMPLES"/*.yaml; do
    f=${path##*/}
    [[ " ${APPLY[*]} " == *" $f "* ]] || validate_only+=("$f")
  done
  for f in "${APPLY[@]}" "${validate_only[@]}"; do
    kubectl apply --dry-run=server -n "$NS" -f "$SAMPLES/$f" >/dev/null ||
      fail "the apiserver refused $SAMPLES/$f (see the message above)"
    say "\$ kubectl apply --dry-run=server -n $NS -f $SAMPLES/$f   -> accepted"
  done
  for f in "${APPLY[@]}"; do
    run kubectl apply -n "$NS" -f "$SAMPLES/$f"
  done
  say "validated, not applied: ${validate_only[*]}"
  say "  (the PKI sample needs pki/issue/web in the tenant's policy)"
}

# vs_synced NAME VERSION: Ready=True and the Secret holds source version VERSION.
vs_synced() {
  local got
  got=$(kubectl -n "$NS" get vaultsecret "$1" \
    -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}/{.status.sourceVersion}')
  [[ $got == "True/$2" ]]
}

# Each resource's Ready condition: status, reason and message.
describe_state() {
  kubectl -n "$NS" get vaultsecret,azurekeyvaultsecret -o json | jq -r '.items[] | "  \(.kind)/\(.metadata.name): " +
    ([(.status.conditions // [])[] | select(.type == "Ready")] | first
      | if . == null then "no Ready condition yet" else "Ready=\(.status) \(.reason): \(.message)" end)' >&2 || true
}

# akvs_synced NAME VERSION: Ready=True, status names Key Vault object version VERSION, and
# the Secret that status names holds it.
akvs_synced() {
  local got secret
  got=$(kubectl -n "$NS" get azurekeyvaultsecret "$1" \
    -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}/{.status.secretName}/{.status.sourceVersion}')
  [[ $got == True/?*/"$2" ]] || return 1
  secret=${got#True/} secret=${secret%%/*}
  [[ $(kubectl -n "$NS" get secret "$secret" -o jsonpath='{.metadata.annotations.vaultsync\.dev/source-version}') == "$2" ]]
}

# vs_current NAME: Ready=True, and its Secret holds the source version that status names
# (for a database source, the lease), so status and Secret describe the same credentials.
vs_current() {
  local got secret
  got=$(kubectl -n "$NS" get vaultsecret "$1" \
    -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}/{.status.secretName}/{.status.sourceVersion}')
  [[ $got == True/?*/?* ]] || return 1
  secret=${got#True/} secret=${secret%%/*}
  [[ $(kubectl -n "$NS" get secret "$secret" -o jsonpath='{.metadata.annotations.vaultsync\.dev/source-version}') == "${got##*/}" ]]
}

# pg_login: logs in to PostgreSQL with the username and password of Secret $DB_VS and
# checks that the session runs as that user. Values stay in variables, never printed.
pg_login() {
  local user password rest
  user=$(kubectl -n "$NS" get secret "$DB_VS" -o jsonpath='{.data.username}' | base64 -d) || return 1
  password=$(kubectl -n "$NS" get secret "$DB_VS" -o jsonpath='{.data.password}' | base64 -d) || return 1
  [[ -n $user && -n $password ]] || return 1
  rest=${DATABASE_URL#*@}
  [[ $(PGPASSWORD=$password PGCONNECT_TIMEOUT=5 psql -X "postgres://$user@$rest" -tAc 'select current_user' 2>/dev/null) == "$user" ]]
}

# Key names and value sizes of each synced Secret; values are decoded only to count bytes.
SIZES_PY=$(cat <<'PY'
import base64, json, sys
s = json.load(sys.stdin)
m = s["metadata"]
ann = m.get("annotations") or {}
owner = ", ".join(f"{o['kind']}/{o['name']}" for o in m.get("ownerReferences") or []) or "none"
print(f"  Secret {m['namespace']}/{m['name']} ({s.get('type', 'Opaque')}), owner {owner}, "
      f"source version {ann.get('vaultsync.dev/source-version', '-')}, "
      f"expires at {ann.get('vaultsync.dev/expires-at', '-')}")
data = s.get("data") or {}
width = max([10] + [len(k) for k in data])
for key, value in sorted(data.items()):
    print(f"    {key:<{width}} {len(base64.b64decode(value)):>5} bytes")
PY
)

# show_secrets [KINDS]: the Secrets of the resources of KINDS (default: both kinds).
show_secrets() {
  local kinds=${1:-vaultsecret,azurekeyvaultsecret} names name
  names=$(kubectl -n "$NS" get "$kinds" -o jsonpath='{range .items[*]}{.status.secretName}{"\n"}{end}' | sort -u)
  for name in $names; do
    kubectl -n "$NS" get secret "$name" -o json | python3 -c "$SIZES_PY"
  done
}

# show_chain SECRET: the certificates of tls.crt in SECRET, in order, by subject and issuer
# (names are no secret); checks that there are 3, the leaf first, each signed by the next,
# and that tls.key is the leaf's key. Certificates and key go through pipes, never shown.
show_chain() {
  local secret=$1 pem line block="" blocks=() i subjects=() issuers=()
  pem=$(kubectl -n "$NS" get secret "$secret" -o jsonpath='{.data.tls\.crt}' | base64 -d) ||
    fail "reading tls.crt of Secret $NS/$secret failed"
  while IFS= read -r line; do
    block+=$line$'\n'
    if [[ $line == '-----END CERTIFICATE-----' ]]; then blocks+=("$block"); block=""; fi
  done <<<"$pem"
  say "tls.crt of Secret $secret holds ${#blocks[@]} certificates (openssl x509 -noout -subject -issuer on each):"
  for i in "${!blocks[@]}"; do
    subjects[i]=$(openssl x509 -noout -subject -nameopt compat <<<"${blocks[i]}") ||
      fail "certificate $((i + 1)) of tls.crt in Secret $NS/$secret does not parse"
    issuers[i]=$(openssl x509 -noout -issuer -nameopt compat <<<"${blocks[i]}")
    printf '    %d. %s\n       %s\n' $((i + 1)) "${subjects[i]}" "${issuers[i]}"
  done
  ((${#blocks[@]} == 3)) || fail "tls.crt of Secret $NS/$secret holds ${#blocks[@]} certificates, not 3 (leaf, intermediate, root)"
  for i in 0 1 2; do
    [[ ${subjects[i]} == "subject=${CERT_SUBJECTS[i]}" ]] ||
      fail "certificate $((i + 1)) of tls.crt in Secret $NS/$secret is ${subjects[i]#subject=}, not ${CERT_SUBJECTS[i]}"
  done
  openssl verify -CAfile <(printf '%s' "${blocks[2]}") -untrusted <(printf '%s' "${blocks[1]}") \
    <(printf '%s' "${blocks[0]}") >/dev/null ||
    fail "the chain in tls.crt of Secret $NS/$secret does not verify (leaf <- intermediate <- root)"
  cmp -s <(openssl x509 -noout -pubkey <<<"${blocks[0]}") \
    <(kubectl -n "$NS" get secret "$secret" -o jsonpath='{.data.tls\.key}' | base64 -d | openssl pkey -pubout 2>/dev/null) ||
    fail "tls.key of Secret $NS/$secret is not the key of the leaf certificate"
  say "leaf first, each certificate signed by the next (openssl verify: OK), tls.key is the leaf's key"
}

step_show() {
  begin "wait until the VaultSecrets and AzureKeyVaultSecrets are Ready, then show them"
  local pairs=("db $DB_VERSION" "db-url $DB_VERSION" "api $API_VERSION") p
  for p in "${pairs[@]}"; do
    # shellcheck disable=SC2086
    wait_until 60 "VaultSecret ${p% *}" vs_synced $p || {
      describe_state
      fail "VaultSecret $NS/${p% *} did not become Ready with source version ${p#* } within 60s"
    }
  done
  wait_until 60 "VaultSecret $DB_VS" vs_current "$DB_VS" || {
    describe_state
    fail "VaultSecret $NS/$DB_VS (database credentials) did not become Ready within 60s"
  }
  local name
  for name in external-service-token app-settings web-certificate signing-key; do
    wait_until 60 "AzureKeyVaultSecret $name" akvs_synced "$name" "${AKV_VERSION[$name]}" || {
      describe_state
      fail "AzureKeyVaultSecret $NS/$name did not become Ready with Key Vault version ${AKV_VERSION[$name]} within 60s"
    }
  done
  say "all Ready after $((SECONDS - STEP_START))s"
  run kubectl get vs -n "$NS"
  run kubectl get akvs -n "$NS" -o wide
  say "synced Secrets (key names and value sizes only, never values):"
  show_secrets
  show_chain web-tls-from-akv
  say "public.pem of Secret signing-public-key: $(kubectl -n "$NS" get secret signing-public-key -o jsonpath='{.data.public\.pem}' |
    base64 -d | openssl pkey -pubin -noout -text 2>/dev/null | head -n 1) (a public key only; the private key stays in Key Vault)"
  say "the database lease, from status (the lease id is no credential; username and password live only in the Secret):"
  run kubectl get vs "$DB_VS" -n "$NS" -o jsonpath='{.status.lease}'
  echo
  say "\$ PGPASSWORD=<password from Secret $DB_VS> psql 'postgres://<username from Secret $DB_VS>@${DATABASE_URL#*@}' -c 'select current_user'"
  wait_until 20 "a PostgreSQL login with the synced credentials" pg_login ||
    fail "the credentials in Secret $NS/$DB_VS do not log in to PostgreSQL at ${DATABASE_URL#*@}"
  say "login with the synced credentials: ok"
}

# rotated_event SINCE: a SecretRotated Event about VaultSecret db observed at or after
# SINCE (RFC 3339). Matched by time, not by text: Events of one operator process are
# aggregated into a series that keeps its first message.
rotated_event() {
  kubectl -n "$NS" get events --field-selector reason=SecretRotated,involvedObject.name=db -o json |
    jq -e --arg since "$1" '[.items[] | (.series.lastObservedTime // .eventTime // .lastTimestamp // "")
      | select(. != "") | sub("\\.[0-9]+"; "") | select(. >= $since)] | length > 0' >/dev/null
}

step_rotate() {
  begin "rotation: change the password in OpenBao, watch vaultsync pick it up"
  local before new start since
  before=$(kubectl -n "$NS" get vaultsecret db -o jsonpath='{.status.sourceVersion}')
  start=$SECONDS
  since=$(date -u +%Y-%m-%dT%H:%M:%SZ)
  new=$(bao_put "$NS/db" username password) || fail "bao kv put secret/$NS/db failed"
  say "\$ bao kv put secret/$NS/db username=... password=...   -> version $new (was $before)"
  say "waiting for the next refresh (refreshInterval 10s)..."
  wait_until 45 "the rotation" vs_synced db "$new" || {
    describe_state
    fail "VaultSecret $NS/db did not pick up version $new within 45s"
  }
  wait_until 20 "the SecretRotated event" rotated_event "$since" ||
    fail "VaultSecret $NS/db holds version $new but no SecretRotated event says so"
  say "rotated in $((SECONDS - start))s"
  run kubectl -n "$NS" get vaultsecret db \
    -o custom-columns='NAME:.metadata.name,SOURCE VERSION:.status.sourceVersion,LAST SYNC:.status.lastSyncTime,NEXT REFRESH:.status.nextRefreshTime,EXPIRES:.status.expiresAt'
  run kubectl get events -n "$NS" --field-selector reason=SecretRotated
  wait_until 20 "db-url to follow" vs_synced db-url "$new" || true
  say "Secrets of the VaultSecrets now (sizes only):"
  show_secrets vaultsecret
}

step_explore() {
  begin "explore further"
  local addr
  addr=$(metrics_address)
  local env=${ENV_DIR#"$ROOT"/}
  say "The operator keeps running (pid $(cat "$OP_PID")), watching namespace $NS. Try:"
  cat <<EOF

  source $env/env.sh                 # KUBECONFIG, BAO_ADDR/BAO_TOKEN, VAULTSYNC_CONFIG, PATH
  kubectl get vaultsync -A                 # both kinds (category vaultsync)
  kubectl describe vs -n $NS db           # status, conditions, events
  kubectl get vs -n $NS $DB_VS -o jsonpath='{.status.lease}'   # renewed at 67% of its 2m
  kubectl delete vs -n $NS $DB_VS     # the finalizer revokes the lease, then it goes
  kubectl explain vaultsecret.spec         # every field, documented
  kubectl delete secret -n $NS db         # drift: vaultsync puts it back at once
  bao kv put secret/$NS/api token=\$(openssl rand -hex 16)   # a rotation within 10s
  target/debug/vaultsync check -f $SAMPLES/vaultsecret-kv.yaml -n $NS   # dry run: key names, sizes

  kubectl get akvs -n $NS -o wide         # the Azure Key Vault side: Ready, reason, Secret
  kubectl describe akvs -n $NS web-certificate   # status, conditions, events
  # a new version of the Key Vault secret (the value through stdin); the operator reads it
  # at the next refresh (its default refreshInterval: 1h), or at once after a spec change,
  # such as this patch, which also makes it read every 10s:
  openssl rand -hex 16 | jq -Rc '{value: .}' | curl -sS --cacert "\$AZURE_KEYVAULT_CA_FILE" \\
    -H "Authorization: Bearer \$AZURE_KEYVAULT_ADMIN_TOKEN" -H 'Content-Type: application/json' \\
    -X PUT --data @- -o /dev/null -w '%{http_code}\\n' \\
    "\$AZURE_KEYVAULT_URL/secrets/contoso-external-service-token?api-version=$AKV_API"
  kubectl patch akvs -n $NS external-service-token --type merge -p '{"spec":{"refreshInterval":"10s"}}'
  target/debug/vaultsync check -f $SAMPLES/azurekeyvaultsecret-secret.yaml -n $NS   # dry run

  metrics:  curl -s http://$addr/metrics | grep '^vaultsync_'
  log:      tail -f $env/operator.log
  samples:  $SAMPLES/   (the PKI sample is validated, not applied)
  stop:     make env-down                  # the operator and the whole environment
            bash tests/env/demo.sh stop    # the operator only
EOF
  say "   done in $((SECONDS - STEP_START))s"
  echo
  say "demo finished in $((SECONDS - TOTAL_START))s"
}

case ${1:-run} in
  run)
    step_env
    step_crds
    step_operator
    step_seed
    step_seed_keyvault
    step_samples
    step_show
    step_rotate
    step_explore
    ;;
  stop)
    trap - ERR
    if is_running "$OP_PID"; then stop_operator; say "demo operator stopped"; else rm -f "$OP_PID"; say "no demo operator running"; fi
    ;;
  *) echo "usage: $0 [run|stop]" >&2; exit 2 ;;
esac
