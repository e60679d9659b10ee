#!/usr/bin/env bash
# OpenBao in dev mode (in memory, unsealed, root token `root`) on 127.0.0.1:$BAO_PORT,
# configured for the tests:
#   secret/      KV v2 (the dev default)          kv1/        KV v1
#   approle/     AppRole auth                     pki/        PKI, internal root CA, role `web`
#   database/    PostgreSQL connection `app` (the local cluster, postgres.sh) and role `app`
#   kubernetes/  Kubernetes auth against the local apiserver (k8s.sh), reviewing tokens
#                with the ServiceAccount kube-system/vault-auth (system:auth-delegator)
# Dev mode forgets everything on restart, so a fresh server is configured again; a
# running, fully configured server is reused as it is.
# Usage: openbao.sh up|down|check   (check: smoke test of every engine against the server)
# Writes $ENV_DIR/openbao.env (VAULT_ADDR/VAULT_TOKEN and BAO_ADDR/BAO_TOKEN).
source "$(dirname "$0")/lib.sh"

STATE=$ENV_DIR/openbao
PIDFILE=$STATE/bao.pid
LOGFILE=$STATE/bao.log
CONFIGURED=$STATE/configured # holds the pid of the server it was configured on
CA_FILE=$STATE/pki-ca.pem
REVIEWER_UID=$STATE/k8s-reviewer-uid
ROOT_TOKEN=root
ADDR=http://127.0.0.1:$BAO_PORT
export BAO_ADDR=$ADDR BAO_TOKEN=$ROOT_TOKEN VAULT_ADDR=$ADDR VAULT_TOKEN=$ROOT_TOKEN
unset BAO_NAMESPACE VAULT_NAMESPACE
mkdir -p "$STATE"

FIX="see $LOGFILE; restart with: bash tests/env/openbao.sh down && bash tests/env/openbao.sh up"

# bao_do WHAT ARGS...: runs `bao ARGS...`, and on failure names WHAT and the fix.
bao_do() {
  local what=$1 out; shift
  out=$(bao "$@" 2>&1) || die openbao "$what failed: $out ($FIX)"
}

healthy() { curl -sf -o /dev/null "$ADDR/v1/sys/health"; }

start_server() {
  command -v bao >/dev/null || die openbao "no bao binary on PATH; run tests/env/tools.sh up"
  if healthy; then
    die openbao "something else already answers on $ADDR; stop it or choose another BAO_PORT"
  fi
  log "starting bao server -dev on $ADDR (log: $LOGFILE)"
  rm -f "$CONFIGURED"
  start_bg "$PIDFILE" "$LOGFILE" "$(command -v bao)" server -dev \
    -dev-root-token-id="$ROOT_TOKEN" -dev-listen-address="127.0.0.1:$BAO_PORT" -dev-no-store-token
  if ! wait_for openbao 30 healthy; then
    tail -n 20 "$LOGFILE" >&2
    stop_pid "$PIDFILE"
    die openbao "bao server did not become healthy on $ADDR within 30s (log: $LOGFILE); is port $BAO_PORT taken (ss -ltnp | grep $BAO_PORT)?"
  fi
}

# --- configuration, each step idempotent --------------------------------------------
mounted() { # mounted secrets|auth PATH/
  bao "$1" list -format=json 2>/dev/null | jq -e --arg p "$2" 'has($p)' >/dev/null
}

configure_kv() {
  [[ $(bao secrets list -format=json | jq -r '."secret/".options.version // ""') == 2 ]] ||
    die openbao "secret/ is not a KV v2 mount as dev mode should make it ($FIX)"
  mounted secrets kv1/ || bao_do "enabling KV v1 at kv1/" secrets enable -path=kv1 -version=1 kv
}

configure_approle() {
  mounted auth approle/ || bao_do "enabling AppRole auth" auth enable approle
}

configure_pki() {
  mounted secrets pki/ || bao_do "enabling PKI at pki/" secrets enable pki
  bao_do "tuning pki/ max lease ttl" secrets tune -max-lease-ttl=87600h pki
  if [[ -z $(bao read -field=certificate pki/cert/ca 2>/dev/null || true) ]]; then
    bao_do "generating the PKI root CA" write pki/root/generate/internal \
      common_name="vaultsync local root CA" issuer_name=root ttl=87600h
  fi
  bao read -field=certificate pki/cert/ca >"$CA_FILE" || die openbao "reading the PKI CA failed ($FIX)"
  bao_do "writing PKI role web" write pki/roles/web \
    allow_any_name=true allow_localhost=true allow_ip_sans=true allow_subdomains=true \
    enforce_hostnames=false max_ttl=720h ttl=24h
}

configure_database() {
  [[ -f $ENV_DIR/postgres.env ]] ||
    die openbao "postgresql is not up ($ENV_DIR/postgres.env missing): run tests/env/postgres.sh up"
  local DATABASE_URL
  DATABASE_URL=$(source "$ENV_DIR/postgres.env" && echo "$DATABASE_URL")
  [[ $DATABASE_URL =~ ^postgres(ql)?://([^:@/]+):([^@/]+)@([^:/]+):([0-9]+)/([^?]+) ]] ||
    die openbao "cannot parse DATABASE_URL from $ENV_DIR/postgres.env; rerun tests/env/postgres.sh up"
  local user=${BASH_REMATCH[2]} password=${BASH_REMATCH[3]} host=${BASH_REMATCH[4]}
  local port=${BASH_REMATCH[5]} db=${BASH_REMATCH[6]}
  if [[ ${FRESH_SERVER:-} == 1 ]]; then
    # A dev server forgets its leases when it stops: drop the database users that an
    # earlier server created (their tables go to the admin), or they would pile up.
    psql -X -q "$DATABASE_URL" >/dev/null 2>&1 <<'SQL' || log "could not drop the database users of an earlier openbao (ignored)"
DO $$DECLARE r record; BEGIN
  FOR r IN SELECT rolname FROM pg_roles WHERE rolname LIKE 'v-%' LOOP
    EXECUTE format('REASSIGN OWNED BY %I TO CURRENT_USER; DROP OWNED BY %I; DROP ROLE %I',
                   r.rolname, r.rolname, r.rolname);
  END LOOP;
END$$;
SQL
  fi
  mounted secrets database/ || bao_do "enabling the database engine" secrets enable database
  # The admin password is not rotated: postgres.env keeps working for the tests.
  bao_do "configuring database connection app (is postgresql up? bash tests/env/postgres.sh up)" \
    write database/config/app plugin_name=postgresql-database-plugin \
    connection_url="postgresql://{{username}}:{{password}}@$host:$port/$db?sslmode=disable" \
    username="$user" password="$password" allowed_roles="*" verify_connection=true
  bao_do "writing database role app" write database/roles/app db_name=app \
    creation_statements="CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}'; GRANT ALL PRIVILEGES ON DATABASE \"$db\" TO \"{{name}}\"; GRANT USAGE, CREATE ON SCHEMA public TO \"{{name}}\";" \
    revocation_statements="REASSIGN OWNED BY \"{{name}}\" TO \"$user\"; DROP OWNED BY \"{{name}}\"; DROP ROLE IF EXISTS \"{{name}}\";" \
    default_ttl=1h max_ttl=24h
}

load_k8s_env() {
  [[ -f $ENV_DIR/k8s.env ]] ||
    die openbao "kubernetes control plane is not up ($ENV_DIR/k8s.env missing): run tests/env/k8s.sh up"
  # shellcheck disable=SC1091
  source "$ENV_DIR/k8s.env"
  [[ -n ${KUBECONFIG:-} && -n ${K8S_API_URL:-} && -f ${K8S_CA_FILE:-/nonexistent} ]] ||
    die openbao "$ENV_DIR/k8s.env lacks KUBECONFIG, K8S_API_URL or K8S_CA_FILE: rerun tests/env/k8s.sh up"
  export KUBECONFIG
  kubectl get --raw /readyz >/dev/null 2>&1 ||
    die openbao "the kubernetes apiserver at $K8S_API_URL does not answer: run tests/env/k8s.sh up"
}

# The reviewer's token: a legacy ServiceAccount token Secret (filled by the
# controller-manager's token controller, never expires), else a 24h token.
reviewer_jwt() {
  local jwt
  for _ in $(seq 1 20); do
    jwt=$(kubectl -n kube-system get secret vault-auth-token -o jsonpath='{.data.token}' 2>/dev/null | base64 -d 2>/dev/null || true)
    [[ -n $jwt ]] && { echo "$jwt"; return; }
    sleep 0.5
  done
  log "the token controller did not fill secret kube-system/vault-auth-token in 10s; using a 24h token instead (rerun up after it expires)"
  kubectl -n kube-system create token vault-auth --duration=24h
}

configure_kubernetes() {
  load_k8s_env
  local out
  out=$(kubectl apply -f - 2>&1 <<'EOF'
apiVersion: v1
kind: ServiceAccount
metadata:
  name: vault-auth
  namespace: kube-system
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: vault-auth-delegator
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: ClusterRole
  name: system:auth-delegator
subjects:
  - kind: ServiceAccount
    name: vault-auth
    namespace: kube-system
---
apiVersion: v1
kind: Secret
metadata:
  name: vault-auth-token
  namespace: kube-system
  annotations:
    kubernetes.io/service-account.name: vault-auth
type: kubernetes.io/service-account-token
EOF
  ) || die openbao "creating the token reviewer ServiceAccount kube-system/vault-auth failed: $out (is tests/env/k8s.sh up?)"
  local jwt
  jwt=$(reviewer_jwt) || die openbao "could not get a token for kube-system/vault-auth: $jwt"
  mounted auth kubernetes/ || bao_do "enabling Kubernetes auth" auth enable kubernetes
  bao_do "configuring Kubernetes auth against $K8S_API_URL" write auth/kubernetes/config \
    kubernetes_host="$K8S_API_URL" kubernetes_ca_cert="@$K8S_CA_FILE" \
    token_reviewer_jwt="$jwt" disable_local_ca_jwt=true disable_iss_validation=true
  reviewer_uid >"$REVIEWER_UID"
}

# The uid of the reviewer ServiceAccount: it changes when the cluster is recreated,
# and then the reviewer token configured in openbao is worthless.
reviewer_uid() { kubectl -n kube-system get serviceaccount vault-auth -o jsonpath='{.metadata.uid}' 2>/dev/null || true; }
reviewer_changed() {
  local uid
  uid=$(reviewer_uid)
  [[ -z $uid || $uid != "$(cat "$REVIEWER_UID" 2>/dev/null)" ]]
}

write_env() {
  cat >"$ENV_DIR/openbao.env.tmp" <<EOF
export VAULT_ADDR="$ADDR"
export VAULT_TOKEN="$ROOT_TOKEN"
export BAO_ADDR="$ADDR"
export BAO_TOKEN="$ROOT_TOKEN"
export BAO_PKI_CA_FILE="$CA_FILE"
EOF
  mv "$ENV_DIR/openbao.env.tmp" "$ENV_DIR/openbao.env"
}

up() {
  if is_running "$PIDFILE" && healthy; then
    if [[ -f $CONFIGURED && $(cat "$CONFIGURED") == $(cat "$PIDFILE") ]]; then
      log "openbao already running and configured on $ADDR (reusing)"
      write_env
      if [[ -f $ENV_DIR/k8s.env ]] && (load_k8s_env 2>/dev/null && reviewer_changed); then
        step "openbao: Kubernetes auth again (the cluster was recreated)" configure_kubernetes
      fi
      return 0
    fi
    log "openbao running on $ADDR but not fully configured: configuring"
  else
    stop_pid "$PIDFILE"
    start_server
    FRESH_SERVER=1
  fi
  step "openbao: KV v2 at secret/, KV v1 at kv1/" configure_kv
  step "openbao: AppRole auth" configure_approle
  step "openbao: PKI root CA and role web" configure_pki
  step "openbao: database engine (postgresql connection app, role app)" configure_database
  write_env # usable from here on even if the Kubernetes part fails
  step "openbao: Kubernetes auth against the local apiserver" configure_kubernetes
  cat "$PIDFILE" >"$CONFIGURED"
  log "openbao ready on $ADDR (token $ROOT_TOKEN)"
}

down() {
  if is_running "$PIDFILE"; then log "stopping openbao"; fi
  stop_pid "$PIDFILE"
  rm -f "$CONFIGURED" "$REVIEWER_UID" "$ENV_DIR/openbao.env"
}

# --- smoke test -----------------------------------------------------------------------
check() {
  healthy || die openbao "not running on $ADDR: run tests/env/openbao.sh up"
  local v
  bao_do "kv v2 put" kv put -mount=secret env-check-kv/demo value=v2-ok
  v=$(bao kv get -mount=secret -field=value env-check-kv/demo 2>&1 || true)
  [[ $v == v2-ok ]] || die openbao "kv v2 get returned '$v'"
  bao_do "kv v1 put" kv put -mount=kv1 env-check-kv/demo value=v1-ok
  v=$(bao kv get -mount=kv1 -field=value env-check-kv/demo 2>&1 || true)
  [[ $v == v1-ok ]] || die openbao "kv v1 get returned '$v'"
  log "check: KV v1 and v2 ok"

  local cert
  cert=$(bao write -field=certificate pki/issue/web common_name=app.local ip_sans=127.0.0.1 ttl=1h) ||
    die openbao "pki issue failed"
  openssl verify -CAfile "$CA_FILE" <(echo "$cert") >/dev/null || die openbao "issued certificate does not verify against $CA_FILE"
  log "check: PKI issue ok ($(echo "$cert" | openssl x509 -noout -subject))"

  local creds user pass lease
  creds=$(bao read -format=json database/creds/app) || die openbao "bao read database/creds/app failed"
  user=$(jq -r .data.username <<<"$creds") pass=$(jq -r .data.password <<<"$creds") lease=$(jq -r .lease_id <<<"$creds")
  # The table it creates is handed to the admin when the lease is revoked.
  v=$(PGPASSWORD=$pass psql -X -q -h 127.0.0.1 -p "$PG_PORT" -U "$user" -d app -Atc \
    "CREATE TABLE \"env_check_$user\"(x int); SELECT current_user") ||
    die openbao "psql login with the issued credentials failed"
  [[ $v == "$user" ]] || die openbao "psql says current_user='$v', expected '$user'"
  bao_do "revoking the database lease" lease revoke "$lease"
  if PGPASSWORD=$pass psql -X -h 127.0.0.1 -p "$PG_PORT" -U "$user" -d app -Atc 'SELECT 1' >/dev/null 2>&1; then
    die openbao "the revoked database user $user can still log in"
  fi
  (source "$ENV_DIR/postgres.env" && psql -X -q "$DATABASE_URL" -c "DROP TABLE \"env_check_$user\"") ||
    die openbao "the table created by $user was not handed over on revocation"
  log "check: database creds ok (logged in as $user, revoked)"

  bao_do "writing approle role" write auth/approle/role/env-check token_ttl=5m
  local role_id secret_id
  role_id=$(bao read -field=role_id auth/approle/role/env-check/role-id)
  secret_id=$(bao write -f -field=secret_id auth/approle/role/env-check/secret-id)
  bao_do "approle login" write auth/approle/login role_id="$role_id" secret_id="$secret_id"
  bao_do "deleting approle role" delete auth/approle/role/env-check
  log "check: AppRole login ok"

  if [[ ! -f $ENV_DIR/k8s.env ]]; then
    log "check: Kubernetes auth skipped ($ENV_DIR/k8s.env missing)"
  else
    load_k8s_env
    local ns=env-check-$$ jwt
    kubectl create namespace "$ns" --dry-run=client -o yaml | kubectl apply -f - >/dev/null
    kubectl -n "$ns" create serviceaccount app --dry-run=client -o yaml | kubectl apply -f - >/dev/null
    bao policy write env-check - >/dev/null <<EOF
path "secret/data/$ns/*" { capabilities = ["read"] }
EOF
    bao_do "writing kubernetes role env-check" write auth/kubernetes/role/env-check \
      bound_service_account_names=app bound_service_account_namespaces="$ns" \
      audience=vault token_policies=env-check ttl=10m
    bao_do "kv put for the k8s check" kv put -mount=secret "$ns/demo" value=k8s-ok
    jwt=$(kubectl -n "$ns" create token app --audience vault --duration=10m) || die openbao "kubectl create token failed"
    local token
    token=$(bao write -field=token auth/kubernetes/login role=env-check jwt="$jwt" 2>&1) ||
      die openbao "kubernetes login failed: $token"
    v=$(BAO_TOKEN=$token bao kv get -mount=secret -field=value "$ns/demo" 2>&1 || true)
    [[ $v == k8s-ok ]] ||
      die openbao "the kubernetes-auth token could not read secret/$ns/demo: $v"
    if BAO_TOKEN=$token bao kv get -mount=secret env-check-kv/demo >/dev/null 2>&1; then
      die openbao "the kubernetes-auth token reads outside its policy"
    fi
    # A token for another audience must be refused.
    jwt=$(kubectl -n "$ns" create token app --audience other --duration=10m)
    if bao write auth/kubernetes/login role=env-check jwt="$jwt" >/dev/null 2>&1; then
      die openbao "kubernetes login accepted a token with the wrong audience"
    fi
    bao kv metadata delete -mount=secret "$ns/demo" >/dev/null
    bao delete auth/kubernetes/role/env-check >/dev/null
    bao policy delete env-check >/dev/null
    kubectl delete namespace "$ns" --wait=false >/dev/null
    log "check: Kubernetes auth ok (login as $ns/app, policy enforced, wrong audience refused)"
  fi
  bao kv metadata delete -mount=secret env-check-kv/demo >/dev/null
  bao kv delete -mount=kv1 env-check-kv/demo >/dev/null
  log "check: all ok"
}

case ${1:-} in
  up) up ;;
  down) down ;;
  check) check ;;
  *) die openbao "usage: $0 up|down|check" ;;
esac
