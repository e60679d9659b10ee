#!/usr/bin/env bash
# Prints what the local environment is running and how to reach it.
source "$(dirname "$0")/lib.sh"
[[ -f $ENV_DIR/env.sh ]] || die env "the environment is not up: run make env-up"
source "$ENV_DIR/env.sh"
echo "vaultsync local environment (all on loopback):"
printf '  %-22s %s\n' "kube-apiserver" "$(kubectl version -o json 2>/dev/null | python3 -c 'import json,sys; print(json.load(sys.stdin)["serverVersion"]["gitVersion"])' 2>/dev/null || echo DOWN) ($K8S_API_URL)"
printf '  %-22s %s\n' "OpenBao" "$(curl -fsS "$VAULT_ADDR/v1/sys/health" >/dev/null 2>&1 && echo up || echo DOWN) ($VAULT_ADDR)"
printf '  %-22s %s\n' "PostgreSQL" "$(pg_isready -q -d "$DATABASE_URL" && echo up || echo DOWN) (127.0.0.1:$PG_PORT)"
bash "$ROOT/tests/env/keyvault.sh" status || true
bash "$ROOT/tests/env/node.sh" status || true
echo
echo "  source $ENV_DIR/env.sh   # KUBECONFIG, VAULT_ADDR/VAULT_TOKEN, AZURE_KEYVAULT_URL, DATABASE_URL, PATH"
echo "  kubectl get namespaces; bao kv list secret/"
echo "  curl --cacert \$AZURE_KEYVAULT_CA_FILE -H \"Authorization: Bearer \$AZURE_KEYVAULT_ADMIN_TOKEN\" \"\$AZURE_KEYVAULT_URL/secrets?api-version=2025-07-01\""
