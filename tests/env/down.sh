#!/usr/bin/env bash
# Stops everything tests/env/up.sh started, in reverse order, leaving no process behind.
source "$(dirname "$0")/lib.sh"
cd "$ROOT"
step "stop the demo operator" bash tests/env/demo.sh stop || log "stopping the demo operator failed; see $ENV_DIR/operator.log"
for comp in node keyvault openbao postgres k8s; do
  step "stop $comp" bash "tests/env/$comp.sh" down || log "stopping $comp failed; see $ENV_DIR/$comp/"
done
rm -f "$ENV_DIR/env.sh"
log "environment down"
