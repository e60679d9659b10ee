#!/usr/bin/env bash
# Prints what the local environment is running and how to reach it.
source "$(dirname "$0")/lib.sh"
[[ -f $ENV_DIR/env.sh ]] || die env "the environment is not up: run make env-up"
source "$ENV_DIR/env.sh"
echo "vaultsync local environment (all on loopback):"
printf '  %-22s %s\n' "kube-apiserver" "$(kubectl version -o json 2>/dev/null | python3 -c 'import json,sys; print(json.load(sys.stdin)["serverVersion"]["gitVersion"])' 2>/dev/null || echo DOWN) ($K8S_API_URL)"
printf '  %-22s %s\n' "OpenBao" "$(curl -fsS "$VAULT_ADDR/v1/sys/health" >/dev/null 2>&1 && echo up || echo DOWN) ($VAULT_ADDR)"
printf '  %-22s %s\n' "PostgreSQL" "$(pg_isready -q -d "$DATABASE_URL" && echo up || echo DOWN) (127.0.0.1:$PG_PORT)"
if [[ -n ${LOWKEY_UNAVAILABLE:-} ]]; then
  printf '  %-22s %s\n' "Lowkey Vault" "UNAVAILABLE: $LOWKEY_UNAVAILABLE"
else
  printf '  %-22s %s\n' "Lowkey Vault" "$(curl -fsS --cacert "$LOWKEY_CA_FILE" -o /dev/null "$LOWKEY_URL/ping" 2>/dev/null && echo up || echo DOWN) ($LOWKEY_URL)"
fi
printf '  %-22s %s\n' "token endpoint" "$(curl -fsS --cacert "$LOWKEY_CA_FILE" -o /dev/null "$AZURE_AUTHORITY_HOST/health" 2>/dev/null && echo up || echo DOWN) ($AZURE_AUTHORITY_HOST)"
echo
echo "  source $ENV_DIR/env.sh   # KUBECONFIG, VAULT_ADDR/VAULT_TOKEN, LOWKEY_URL, DATABASE_URL, PATH"
echo "  kubectl get namespaces; bao kv list secret/"
